//! Garbage collection, retention rules and immutable tags over memory
//! storage, through the registry's own API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod common;

use common::api::*;
use common::TestHost;
use futures::executor::block_on;
use http::{Method, StatusCode};
use kura_core::pattern::Pattern;
use kura_core::storage::{MemoryStorage, Storage};
use kura_core::{
    Digest, Garbage, GcOptions, GcReport, ImmutableTags, Registry, RegistryConfig, RetentionRule,
    UpstreamConfig,
};
use serde_json::json;

const GRACE: u64 = 60_000;
const START: u64 = 1_700_000_000_000;

/// A registry whose storage keeps write times from the same clock as its
/// host, so tests can age what they pushed.
fn registry_with(config: RegistryConfig) -> (Reg, Arc<AtomicU64>) {
    let clock = Arc::new(AtomicU64::new(START));
    let c = clock.clone();
    let storage = MemoryStorage::with_clock(Arc::new(move || c.load(Ordering::SeqCst)));
    (Registry::new(storage, TestHost::at(START), config), clock)
}

fn registry() -> (Reg, Arc<AtomicU64>) {
    registry_with(RegistryConfig::default())
}

fn advance(reg: &Reg, clock: &AtomicU64, ms: u64) {
    let now = clock.fetch_add(ms, Ordering::SeqCst) + ms;
    reg.host().clock.store(now, Ordering::SeqCst);
}

fn gc(reg: &Reg, grace_ms: u64) -> GcReport {
    let mut opts = GcOptions::default();
    opts.grace_ms = grace_ms;
    block_on(reg.collect_garbage(&opts)).unwrap()
}

fn dry(reg: &Reg, grace_ms: u64) -> GcReport {
    let mut opts = GcOptions::default();
    opts.grace_ms = grace_ms;
    opts.dry_run = true;
    block_on(reg.collect_garbage(&opts)).unwrap()
}

struct Image {
    manifest: Digest,
    blobs: Vec<Digest>,
}

/// Push an image of `layers` (seeds) to `repo`, tagged `tag` (or by
/// digest when `None`).
fn push_image<S: Storage>(
    reg: &Registry<S, TestHost>,
    repo: &str,
    tag: Option<&str>,
    layers: &[u32],
) -> Image {
    let config = format!("{{\"layers\":{layers:?}}}").into_bytes();
    let config_d = push_blob(reg, repo, &config);
    let mut descs = Vec::new();
    let mut blobs = vec![config_d.clone()];
    for seed in layers {
        let bytes = data(1000 + *seed as usize, *seed);
        let d = push_blob(reg, repo, &bytes);
        descs.push((d.clone(), bytes.len()));
        blobs.push(d);
    }
    let m = image_manifest(&config_d, config.len(), &descs);
    let digest = Digest::sha256(&m);
    let reference = tag.map_or(digest.to_string(), str::to_owned);
    let r = call(
        reg,
        Method::PUT,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("content-type", OCI_MANIFEST)],
        m,
    );
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    Image {
        manifest: digest,
        blobs,
    }
}

/// An image pushed as `repo:tag`, then its manifest deleted through the
/// API: garbage once the grace period has passed.
fn garbage_image<S: Storage>(
    reg: &Registry<S, TestHost>,
    repo: &str,
    tag: &str,
    layers: &[u32],
) -> Image {
    let image = push_image(reg, repo, Some(tag), layers);
    assert_eq!(
        status(reg, Method::DELETE, &format!("/v2/{repo}/manifests/{tag}")),
        StatusCode::ACCEPTED
    );
    image
}

fn status<S: Storage>(reg: &Registry<S, TestHost>, method: Method, uri: &str) -> StatusCode {
    call(reg, method, uri, &[], "").status
}

fn assert_pullable<S: Storage>(
    reg: &Registry<S, TestHost>,
    repo: &str,
    reference: &str,
    image: &Image,
) {
    let r = call(
        reg,
        Method::GET,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[],
        "",
    );
    assert_eq!(r.status, StatusCode::OK, "{repo}:{reference}: {}", r.text());
    for b in &image.blobs {
        let r = call(reg, Method::GET, &format!("/v2/{repo}/blobs/{b}"), &[], "");
        assert_eq!(r.status, StatusCode::OK, "{repo} blob {b}");
        assert_eq!(Digest::sha256(&r.body), *b);
    }
}

fn stored<S: Storage>(reg: &Registry<S, TestHost>, d: &Digest) -> bool {
    let key = format!("blobs/sha256/{}/{}", &d.hex()[..2], d.hex());
    block_on(reg.storage().head(&key)).unwrap().is_some()
}

#[test]
fn unreferenced_content_goes_after_the_grace_period_and_live_content_stays() {
    let (reg, clock) = registry();
    let a = push_image(&reg, "team/app", Some("v1"), &[1, 2]);
    let b = push_image(&reg, "team/app", Some("v2"), &[2, 3]);
    let untagged = push_image(&reg, "team/app", None, &[4]);
    let orphan = push_blob(&reg, "team/app", &data(500, 9));
    // The same layer in another repository keeps its blob there.
    let other = push_image(&reg, "team/other", Some("latest"), &[3]);
    assert_eq!(
        status(&reg, Method::DELETE, "/v2/team/app/manifests/v2"),
        StatusCode::ACCEPTED
    );

    advance(&reg, &clock, GRACE / 2);
    let r = gc(&reg, GRACE);
    assert!(
        r.removed.is_empty(),
        "within the grace period: {:?}",
        r.removed
    );
    assert!(r.pending > 0);

    advance(&reg, &clock, GRACE);
    let r = gc(&reg, GRACE);
    assert_eq!(r.manifests, 2, "{:?}", r.removed);
    assert!(r.removed.contains(&Garbage::Manifest {
        repository: kura_core::RepositoryName::parse("team/app").unwrap(),
        digest: b.manifest.clone(),
    }));
    // Only in b (layer 3 and its config) or the untagged image, or never
    // referenced: their blobs go, and their manifests' bytes.
    let layer3 = &b.blobs[2];
    for gone in [&b.blobs[0], &untagged.blobs[0], &untagged.blobs[1], &orphan] {
        assert!(!stored(&reg, gone), "{gone} should be collected");
    }
    assert!(!stored(&reg, &b.manifest) && !stored(&reg, &untagged.manifest));
    assert_eq!(
        status(&reg, Method::GET, &format!("/v2/team/app/blobs/{layer3}")),
        StatusCode::NOT_FOUND,
        "the link went"
    );
    assert!(stored(&reg, layer3), "team/other still links layer 3");
    assert_pullable(&reg, "team/app", "v1", &a);
    assert_pullable(&reg, "team/other", "latest", &other);
    // b's config, the untagged image's config and layer, the orphan, and
    // both manifests' bytes.
    assert_eq!(r.blobs, 6, "{:?}", r.removed);

    let again = gc(&reg, GRACE);
    assert!(again.removed.is_empty(), "{:?}", again.removed);
    let fsck = fsck(&reg);
    assert!(fsck.findings.is_empty(), "{:?}", fsck.findings);
}

#[test]
fn index_children_and_referrers_of_live_subjects_stay_until_the_index_goes() {
    let (reg, clock) = registry();
    let amd = push_image(&reg, "team/multi", None, &[10]);
    let arm = push_image(&reg, "team/multi", None, &[11]);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd.manifest.to_string(), "size": 1,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm.manifest.to_string(), "size": 1,
             "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }))
    .unwrap();
    let index_d = Digest::sha256(&index);
    let r = call(
        &reg,
        Method::PUT,
        "/v2/team/multi/manifests/v1",
        &[("content-type", "application/vnd.oci.image.index.v1+json")],
        index.clone(),
    );
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    // A signature: an untagged manifest whose subject is the index.
    let empty = push_blob(&reg, "team/multi", b"{}");
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2},
        "layers": [],
        "subject": {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_d.to_string(), "size": index.len()},
    }))
    .unwrap();
    let sig_d = Digest::sha256(&sig);
    let r = call(
        &reg,
        Method::PUT,
        &format!("/v2/team/multi/manifests/{sig_d}"),
        &[("content-type", OCI_MANIFEST)],
        sig,
    );
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    advance(&reg, &clock, 2 * GRACE);
    let r = gc(&reg, GRACE);
    assert!(r.removed.is_empty(), "all live: {:?}", r.removed);
    assert_pullable(&reg, "team/multi", &amd.manifest.to_string(), &amd);
    assert_pullable(&reg, "team/multi", &arm.manifest.to_string(), &arm);
    let referrers = call(
        &reg,
        Method::GET,
        &format!("/v2/team/multi/referrers/{index_d}"),
        &[],
        "",
    );
    assert_eq!(referrers.json()["manifests"].as_array().unwrap().len(), 1);

    assert_eq!(
        status(&reg, Method::DELETE, "/v2/team/multi/manifests/v1"),
        StatusCode::ACCEPTED
    );
    advance(&reg, &clock, 2 * GRACE);
    let r = gc(&reg, GRACE);
    assert_eq!(
        r.manifests, 4,
        "index, both children, the signature: {:?}",
        r.removed
    );
    assert!(block_on(reg.storage().list("blobs/")).unwrap().is_empty());
    let referrers = call(
        &reg,
        Method::GET,
        &format!("/v2/team/multi/referrers/{index_d}"),
        &[],
        "",
    );
    assert!(referrers.json()["manifests"].as_array().unwrap().is_empty());
}

/// A push asks whether the repository has a layer (HEAD), skips its
/// upload, then pushes a manifest naming it. A collection in between must
/// not take the link: the manifest would name a blob the repository no
/// longer has.
#[test]
fn a_push_that_probed_a_blob_wins_against_a_collection() {
    let (reg, clock) = registry();
    let old = garbage_image(&reg, "team/app", "old", &[7]);
    advance(&reg, &clock, 2 * GRACE);
    let layer = &old.blobs[1];
    assert_eq!(
        status(&reg, Method::HEAD, &format!("/v2/team/app/blobs/{layer}")),
        StatusCode::OK
    );
    let r = gc(&reg, GRACE);
    assert!(
        !r.removed.iter().any(|g| matches!(g, Garbage::Link { digest, .. } | Garbage::Blob { digest, .. } if digest == layer)),
        "the probed layer was collected: {:?}",
        r.removed
    );
    assert_eq!(
        r.manifests, 1,
        "the old manifest itself goes: {:?}",
        r.removed
    );
    let again = push_image(&reg, "team/app", Some("new"), &[7]);
    assert_pullable(&reg, "team/app", "new", &again);
}

#[test]
fn untagged_manifests_can_be_kept() {
    let mut config = RegistryConfig::default();
    let mut rule = RetentionRule::new(Pattern::parse("scratch/**").unwrap());
    rule.untagged_older_than_ms = Some(GRACE);
    config.retention = vec![rule];
    let (reg, clock) = registry_with(config);
    let pinned = push_image(&reg, "team/app", None, &[1]);
    let scratch = push_image(&reg, "scratch/app", None, &[2]);
    advance(&reg, &clock, 2 * GRACE);
    let mut opts = GcOptions::default();
    opts.grace_ms = GRACE;
    opts.delete_untagged = false;
    let r = block_on(reg.collect_garbage(&opts)).unwrap();
    // Kept where no rule says otherwise; collected where one does.
    assert_eq!(r.manifests, 1, "{:?}", r.removed);
    assert!(r.removed.contains(&Garbage::Manifest {
        repository: kura_core::RepositoryName::parse("scratch/app").unwrap(),
        digest: scratch.manifest.clone(),
    }));
    assert_pullable(&reg, "team/app", &pinned.manifest.to_string(), &pinned);
}

#[test]
fn storage_without_write_times_counts_from_the_first_pass_that_saw_it() {
    let reg: Reg = Registry::new(
        MemoryStorage::new(),
        TestHost::at(START),
        RegistryConfig::default(),
    );
    let orphan = push_blob(&reg, "team/app", &data(300, 1));
    let r = gc(&reg, GRACE);
    // The link; its blob is referenced by it.
    assert!(r.removed.is_empty() && r.pending == 1, "{r:?}");
    reg.host().clock.fetch_add(GRACE - 1, Ordering::SeqCst);
    assert!(gc(&reg, GRACE).removed.is_empty());
    reg.host().clock.fetch_add(1, Ordering::SeqCst);
    let r = gc(&reg, GRACE);
    assert_eq!((r.links, r.blobs), (1, 1), "{:?}", r.removed);
    assert!(!stored(&reg, &orphan));
    assert!(block_on(reg.storage().read("gc/pending"))
        .unwrap()
        .is_none());
}

#[test]
fn untagged_manifests_on_storage_without_write_times_go_after_the_grace_period() {
    let reg: Reg = Registry::new(
        MemoryStorage::new(),
        TestHost::at(START),
        RegistryConfig::default(),
    );
    let untagged = push_image(&reg, "team/app", None, &[5]);
    let r = gc(&reg, GRACE);
    assert!(r.removed.is_empty());
    assert_eq!(r.pending, 1, "the manifest waits; its blobs are its");
    reg.host().clock.fetch_add(GRACE, Ordering::SeqCst);
    let r = gc(&reg, GRACE);
    assert_eq!(r.manifests, 1, "{:?}", r.removed);
    assert!(!stored(&reg, &untagged.manifest));
}

#[test]
fn mirrored_repositories_are_left_to_eviction() {
    let clock = Arc::new(AtomicU64::new(START));
    let c = clock.clone();
    let storage = MemoryStorage::with_clock(Arc::new(move || c.load(Ordering::SeqCst)));
    let reg = Registry::builder(storage, TestHost::at(START))
        .mirror(
            kura_core::NoFetch,
            vec![UpstreamConfig::new("up.local", "http://127.0.0.1:9")],
        )
        .build()
        .unwrap();
    // What a fill leaves: the blob, and the mirrored repository's link.
    let bytes = bytes::Bytes::from(data(100, 3));
    let d = Digest::sha256(&bytes);
    let s = reg.storage();
    block_on(async {
        s.put(
            &format!("blobs/sha256/{}/{}", &d.hex()[..2], d.hex()),
            bytes,
            kura_core::storage::PutMode::Overwrite,
        )
        .await
        .unwrap();
        s.put(
            &format!("repositories/up.local/lib/x/_layers/sha256/{}", d.hex()),
            Default::default(),
            kura_core::storage::PutMode::Overwrite,
        )
        .await
        .unwrap();
    });
    clock.fetch_add(10 * GRACE, Ordering::SeqCst);
    reg.host()
        .clock
        .store(clock.load(Ordering::SeqCst), Ordering::SeqCst);
    let mut opts = GcOptions::default();
    opts.grace_ms = GRACE;
    let r = block_on(reg.collect_garbage(&opts)).unwrap();
    assert!(r.removed.is_empty(), "{:?}", r.removed);
    assert_eq!(r.repositories, 0, "no hosted repository");
}

#[test]
fn retention_keeps_what_any_condition_keeps_and_dry_runs_change_nothing() {
    let mut config = RegistryConfig::default();
    let mut rule = RetentionRule::new(Pattern::parse("ci/**").unwrap());
    rule.keep_newest = Some(2);
    rule.keep_tags = vec![Pattern::parse("release-*").unwrap()];
    config.retention = vec![rule];
    config.immutable_tags = vec![ImmutableTags::new(
        Pattern::parse("ci/**").unwrap(),
        Pattern::parse("pinned").unwrap(),
    )];
    let (reg, clock) = registry_with(config);
    let mut images = Vec::new();
    for (i, tag) in [
        "pinned",
        "build-1",
        "release-1",
        "build-2",
        "build-3",
        "build-4",
    ]
    .iter()
    .enumerate()
    {
        images.push((
            tag,
            push_image(&reg, "ci/app", Some(tag), &[100 + i as u32]),
        ));
        advance(&reg, &clock, 1_000);
    }
    // Not governed by the rule: kept whatever its age.
    let elsewhere = push_image(&reg, "other/app", Some("build-0"), &[200]);

    let before = block_on(reg.storage().list("")).unwrap();
    let d = dry(&reg, 0);
    let mut tags: Vec<String> = d
        .removed
        .iter()
        .filter_map(|g| match g {
            Garbage::Tag { tag, .. } => Some(tag.as_str().to_owned()),
            _ => None,
        })
        .collect();
    tags.sort();
    assert_eq!(tags, ["build-1", "build-2"]);
    assert_eq!(
        block_on(reg.storage().list("")).unwrap(),
        before,
        "a dry run wrote"
    );

    let r = gc(&reg, 0);
    assert_eq!(r.tags, 2);
    assert_eq!(r.manifests, 2, "untagged with grace 0: {:?}", r.removed);
    for (tag, image) in &images {
        let expect_gone = ["build-1", "build-2"].contains(tag);
        let s = status(&reg, Method::GET, &format!("/v2/ci/app/manifests/{tag}"));
        assert_eq!(s == StatusCode::NOT_FOUND, expect_gone, "{tag}");
        if !expect_gone {
            assert_pullable(&reg, "ci/app", tag, image);
        }
    }
    assert_pullable(&reg, "other/app", "build-0", &elsewhere);
}

#[test]
fn retention_keeps_recently_pulled_tags() {
    let mut config = RegistryConfig::default();
    let mut rule = RetentionRule::new(Pattern::parse("ci/*").unwrap());
    rule.keep_newest = Some(1);
    rule.keep_pulled_within_ms = Some(10 * GRACE);
    config.retention = vec![rule];
    let (reg, clock) = registry_with(config);
    push_image(&reg, "ci/app", Some("old"), &[1]);
    push_image(&reg, "ci/app", Some("pulled"), &[2]);
    advance(&reg, &clock, 1_000);
    push_image(&reg, "ci/app", Some("newest"), &[3]);
    assert_eq!(
        status(&reg, Method::GET, "/v2/ci/app/manifests/pulled"),
        StatusCode::OK
    );
    let r = gc(&reg, GRACE);
    let tags: Vec<_> = r
        .removed
        .iter()
        .filter_map(|g| match g {
            Garbage::Tag { tag, .. } => Some(tag.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(tags, ["old"]);
    // Pulled long ago is not recently.
    advance(&reg, &clock, 11 * GRACE);
    let r = gc(&reg, GRACE);
    assert!(r.removed.contains(&Garbage::Tag {
        repository: kura_core::RepositoryName::parse("ci/app").unwrap(),
        tag: kura_core::Tag::parse("pulled").unwrap(),
    }));
}

#[test]
fn immutable_tags_refuse_moves_and_deletes() {
    let mut config = RegistryConfig::default();
    config.immutable_tags = vec![ImmutableTags::new(
        Pattern::parse("releases/**").unwrap(),
        Pattern::parse("v*").unwrap(),
    )];
    let (reg, _clock) = registry_with(config);
    let first = push_image(&reg, "releases/app", Some("v1"), &[1]);
    // The same manifest again is no move.
    push_image(&reg, "releases/app", Some("v1"), &[1]);
    let config_d = push_blob(&reg, "releases/app", b"{}");
    let other = image_manifest(&config_d, 2, &[]);
    for uri in [
        "/v2/releases/app/manifests/v1".to_owned(),
        format!(
            "/v2/releases/app/manifests/{}?tag=v1",
            Digest::sha256(&other)
        ),
    ] {
        let r = call(
            &reg,
            Method::PUT,
            &uri,
            &[("content-type", OCI_MANIFEST)],
            other.clone(),
        );
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}: {}", r.text());
        assert_eq!(r.code(), "DENIED");
        assert!(r.text().contains("immutable"), "{}", r.text());
    }
    for uri in [
        "/v2/releases/app/manifests/v1".to_owned(),
        format!("/v2/releases/app/manifests/{}", first.manifest),
    ] {
        let r = call(&reg, Method::DELETE, &uri, &[], "");
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(r.code(), "DENIED");
    }
    assert_pullable(&reg, "releases/app", "v1", &first);
    // Other tags and repositories move freely.
    let r = call(
        &reg,
        Method::PUT,
        "/v2/releases/app/manifests/latest",
        &[("content-type", OCI_MANIFEST)],
        other.clone(),
    );
    assert_eq!(r.status, StatusCode::CREATED);
    push_image(&reg, "scratch/app", Some("v1"), &[1]);
    push_blob(&reg, "scratch/app", b"{}");
    let r = call(
        &reg,
        Method::PUT,
        "/v2/scratch/app/manifests/v1",
        &[("content-type", OCI_MANIFEST)],
        other,
    );
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

/// Named after CVE-2026-35172 (distribution served deleted blobs from its
/// blob descriptor cache): content deleted through one process, or
/// collected by another, is never served again by a process that had it
/// in memory.
#[test]
fn cve_2026_35172_deleted_content_never_comes_back_through_a_cache() {
    let storage = Arc::new(MemoryStorage::new());
    let serving = Registry::new(
        storage.clone(),
        TestHost::at(START),
        RegistryConfig::default(),
    );
    let deleting = Registry::new(
        storage.clone(),
        TestHost::at(START).seeded(2),
        RegistryConfig::default(),
    );
    let image = push_image_arc(&serving);
    let uri = format!("/v2/team/app/manifests/{}", image.manifest);
    // Served twice: the second from this process's memory.
    for _ in 0..2 {
        assert_eq!(call_arc(&serving, Method::GET, &uri), StatusCode::OK);
    }
    assert_eq!(
        call_arc(&deleting, Method::DELETE, &uri),
        StatusCode::ACCEPTED
    );
    assert_eq!(call_arc(&serving, Method::GET, &uri), StatusCode::NOT_FOUND);
    assert_eq!(
        call_arc(&serving, Method::HEAD, &uri),
        StatusCode::NOT_FOUND
    );

    // Collected by the other process: neither manifest nor blobs answer.
    let mut opts = GcOptions::default();
    opts.grace_ms = 0;
    let r = block_on(deleting.collect_garbage(&opts)).unwrap();
    assert!(r.blobs >= 2, "{:?}", r.removed);
    for b in &image.blobs {
        let blob_uri = format!("/v2/team/app/blobs/{b}");
        assert_eq!(
            call_arc(&serving, Method::GET, &blob_uri),
            StatusCode::NOT_FOUND
        );
    }
}

type ArcReg = Registry<Arc<MemoryStorage>, TestHost>;

fn call_arc(reg: &ArcReg, method: Method, uri: &str) -> StatusCode {
    block_on(async {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(kura_core::body::empty())
            .unwrap();
        reg.handle(req).await.status()
    })
}

fn push_image_arc(reg: &ArcReg) -> Image {
    block_on(async {
        let mut blobs = Vec::new();
        let put = |uri: String, body: Vec<u8>, ct: Option<&'static str>| {
            let mut b = http::Request::builder().method(Method::POST).uri(uri);
            if let Some(ct) = ct {
                b = b.method(Method::PUT).header("content-type", ct);
            }
            b.body(kura_core::body::once(body.into())).unwrap()
        };
        let config = b"{\"a\":1}".to_vec();
        let layer = data(2000, 5);
        for bytes in [&config, &layer] {
            let d = Digest::sha256(bytes);
            let r = reg
                .handle(put(
                    format!("/v2/team/app/blobs/uploads/?digest={d}"),
                    bytes.clone(),
                    None,
                ))
                .await;
            assert_eq!(r.status(), StatusCode::CREATED);
            blobs.push(d);
        }
        let m = image_manifest(&blobs[0], config.len(), &[(blobs[1].clone(), layer.len())]);
        let manifest = Digest::sha256(&m);
        let r = reg
            .handle(put(
                format!("/v2/team/app/manifests/{manifest}"),
                m,
                Some(OCI_MANIFEST),
            ))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        Image { manifest, blobs }
    })
}

/// A pusher granted `push` but not `overwrite` creates tags and pushes
/// the same manifest again, and cannot move a tag.
#[test]
fn moving_a_tag_needs_the_overwrite_right() {
    use kura_core::access::{Granted, Rights};
    let (reg, _clock) = registry();
    push_image(&reg, "team/app", Some("v1"), &[1]);
    let config_d = push_blob(&reg, "team/app", b"{}");
    let other = image_manifest(&config_d, 2, &[]);
    let put = |tag: &str, rights: Rights| {
        block_on(async {
            let mut req = http::Request::builder()
                .method(Method::PUT)
                .uri(format!("/v2/team/app/manifests/{tag}"))
                .header("content-type", OCI_MANIFEST)
                .body(kura_core::body::once(other.clone().into()))
                .unwrap();
            req.extensions_mut().insert(Granted(rights));
            reg.handle(req).await.status()
        })
    };
    let push_only = Rights::parse(["pull", "push"]).unwrap();
    assert_eq!(put("v1", push_only), StatusCode::FORBIDDEN);
    assert_eq!(put("v2", push_only), StatusCode::CREATED, "a new tag");
    assert_eq!(
        put("v2", push_only),
        StatusCode::CREATED,
        "the same manifest again"
    );
    assert_eq!(put("v1", Rights::ALL), StatusCode::CREATED);
}

/// A value one thread leaves for another.
type Slot<T> = Arc<std::sync::Mutex<Option<T>>>;

/// Shared storage that runs a hook before the first batch delete of its
/// registry: the moment a collection has confirmed its plan and is about
/// to delete.
struct BeforeDelete {
    inner: Arc<MemoryStorage>,
    hook: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

#[async_trait::async_trait]
impl Storage for BeforeDelete {
    type Body = <MemoryStorage as Storage>::Body;

    async fn head(
        &self,
        key: &str,
    ) -> Result<Option<kura_core::storage::ObjectMeta>, kura_core::storage::StorageError> {
        self.inner.head(key).await
    }
    async fn get(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<
        Option<(kura_core::storage::ObjectMeta, Self::Body)>,
        kura_core::storage::StorageError,
    > {
        self.inner.get(key, range).await
    }
    async fn put(
        &self,
        key: &str,
        data: bytes::Bytes,
        mode: kura_core::storage::PutMode,
    ) -> Result<(), kura_core::storage::StorageError> {
        self.inner.put(key, data, mode).await
    }
    async fn put_stream(
        &self,
        key: &str,
        data: kura_core::ByteStream,
    ) -> Result<u64, kura_core::storage::StorageError> {
        self.inner.put_stream(key, data).await
    }
    async fn delete(&self, key: &str) -> Result<(), kura_core::storage::StorageError> {
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), kura_core::storage::StorageError> {
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.inner.delete_many(keys).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, kura_core::storage::StorageError> {
        self.inner.list(prefix).await
    }
    async fn list_meta(
        &self,
        prefix: &str,
    ) -> Result<Vec<kura_core::storage::ListEntry>, kura_core::storage::StorageError> {
        self.inner.list_meta(prefix).await
    }
    fn body_stream(body: Self::Body) -> kura_core::ByteStream {
        MemoryStorage::body_stream(body)
    }
}

/// Two processes on one storage with write times: one serving pushes, one
/// collecting (its storage runs `hook` just before it deletes), content of
/// an image pushed and deleted long ago, and the clock past the grace
/// period.
fn two_processes(
    hook: Box<dyn FnOnce() + Send>,
) -> (
    Arc<ArcReg>,
    Registry<BeforeDelete, TestHost>,
    Arc<MemoryStorage>,
    Image,
) {
    let clock = Arc::new(AtomicU64::new(START));
    let c = clock.clone();
    let storage = Arc::new(MemoryStorage::with_clock(Arc::new(move || {
        c.load(Ordering::SeqCst)
    })));
    let serving = Arc::new(Registry::new(
        storage.clone(),
        TestHost::at(START),
        RegistryConfig::default(),
    ));
    let old = garbage_image(&*serving, "team/app", "v1", &[1, 2]);
    let later = START + 2 * GRACE;
    clock.store(later, Ordering::SeqCst);
    serving.host().clock.store(later, Ordering::SeqCst);
    let collecting = Registry::new(
        BeforeDelete {
            inner: storage.clone(),
            hook: std::sync::Mutex::new(Some(hook)),
        },
        TestHost::at(later).seeded(2),
        RegistryConfig::default(),
    );
    (serving, collecting, storage, old)
}

/// Wait (really) until a push in progress has said what it uses (or has
/// finished), then give it time to write whatever it would write without
/// waiting.
fn until_in_use(storage: &Arc<MemoryStorage>, finished: impl Fn() -> bool) {
    // On a thread of its own: the hook runs inside the collection's
    // executor, which does not nest.
    let listed = |s: Arc<MemoryStorage>| {
        std::thread::spawn(move || block_on(s.list("gc/in-use/")).unwrap())
            .join()
            .unwrap()
    };
    for _ in 0..500 {
        if finished() || !listed(storage.clone()).is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(200));
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the push never said what it uses");
}

#[test]
fn a_push_in_another_process_waits_out_a_collection_that_was_deleting_its_blobs() {
    // The push starts once the collection has confirmed its plan (its
    // sweep announced) and is about to delete the old image's blobs and
    // links: the push uploads the same content again and tags it.
    let slot: Slot<Arc<ArcReg>> = Arc::default();
    let pushed: Slot<std::thread::JoinHandle<Image>> = Arc::default();
    let (s, p) = (slot.clone(), pushed.clone());
    let storage_seen: Slot<Arc<MemoryStorage>> = Arc::default();
    let st = storage_seen.clone();
    let hook = Box::new(move || {
        let serving = s.lock().unwrap().clone().unwrap();
        let push =
            std::thread::spawn(move || push_image(&*serving, "team/app", Some("v2"), &[1, 2]));
        let storage = st.lock().unwrap().clone().unwrap();
        until_in_use(&storage, || push.is_finished());
        *p.lock().unwrap() = Some(push);
    });
    let (serving, collecting, storage, old) = two_processes(hook);
    *slot.lock().unwrap() = Some(serving.clone());
    *storage_seen.lock().unwrap() = Some(storage.clone());

    let mut opts = GcOptions::default();
    opts.grace_ms = GRACE;
    let r = block_on(collecting.collect_garbage(&opts)).unwrap();
    assert!(r.blobs >= 3, "the old image was collected: {:?}", r.removed);
    let again = pushed
        .lock()
        .unwrap()
        .take()
        .expect("the hook ran")
        .join()
        .unwrap();
    assert_eq!(again.blobs, old.blobs, "the same content");
    assert_pullable(&*serving, "team/app", "v2", &again);
    assert!(
        block_on(storage.list("gc/")).unwrap().is_empty(),
        "sweep and in-use records are removed"
    );
    let fsck = fsck(&*serving);
    assert!(fsck.findings.is_empty(), "{:?}", fsck.findings);
}

#[test]
fn a_probe_in_another_process_during_a_sweep_answers_from_what_is_left() {
    // A push asks whether team/app has a layer while a collection elsewhere
    // is deleting it: the answer must not be "yes" (the push would skip the
    // upload and its manifest would name a blob that is gone).
    let slot: Slot<(Arc<ArcReg>, Digest)> = Arc::default();
    let answer: Slot<std::thread::JoinHandle<StatusCode>> = Arc::default();
    let (s, a) = (slot.clone(), answer.clone());
    let hook = Box::new(move || {
        let (serving, layer) = s.lock().unwrap().clone().unwrap();
        let uri = format!("/v2/team/app/blobs/{layer}");
        *a.lock().unwrap() = Some(std::thread::spawn(move || {
            status(&*serving, Method::HEAD, &uri)
        }));
        // The probe writes no in-use record: give it time to answer if it
        // does not wait.
        std::thread::sleep(std::time::Duration::from_millis(300));
    });
    let (serving, collecting, _storage, old) = two_processes(hook);
    let layer = old.blobs[1].clone();
    *slot.lock().unwrap() = Some((serving.clone(), layer.clone()));

    let mut opts = GcOptions::default();
    opts.grace_ms = GRACE;
    let r = block_on(collecting.collect_garbage(&opts)).unwrap();
    assert!(
        r.removed.contains(&Garbage::Blob {
            digest: layer.clone(),
            size: 1001,
        }),
        "{:?}",
        r.removed
    );
    let probed = answer
        .lock()
        .unwrap()
        .take()
        .expect("the hook ran")
        .join()
        .unwrap();
    assert_eq!(probed, StatusCode::NOT_FOUND, "the layer was collected");
    assert_eq!(
        status(
            &*serving,
            Method::GET,
            &format!("/v2/team/app/blobs/{layer}")
        ),
        StatusCode::NOT_FOUND
    );
    let fsck = fsck(&*serving);
    assert!(fsck.findings.is_empty(), "{:?}", fsck.findings);
}

#[test]
fn a_collection_spares_what_pushes_elsewhere_have_in_use_and_drops_stale_records() {
    let (reg, clock) = registry();
    let old = garbage_image(&reg, "team/app", "v1", &[1]);
    advance(&reg, &clock, 2 * GRACE);
    let now = reg.host().clock.load(Ordering::SeqCst);
    // A push in another process, under way; and one that died 7 hours ago.
    let record = |at: u64, d: &Digest| {
        bytes::Bytes::from(
            serde_json::to_vec(&json!({"at_ms": at, "digests": [d.to_string()]})).unwrap(),
        )
    };
    let put = |key: &str, raw| {
        block_on(
            reg.storage()
                .put(key, raw, kura_core::storage::PutMode::Create),
        )
        .unwrap()
    };
    put("gc/in-use/elsewhere-1", record(now, &old.blobs[1]));
    put(
        "gc/in-use/dead-1",
        record(now - 7 * 3600 * 1000, &old.blobs[0]),
    );
    let r = gc(&reg, GRACE);
    assert!(
        stored(&reg, &old.blobs[1]),
        "in use elsewhere: {:?}",
        r.removed
    );
    assert!(!stored(&reg, &old.blobs[0]), "named only by a dead push");
    assert!(r.spared >= 1);
    let left = block_on(reg.storage().list("gc/in-use/")).unwrap();
    assert_eq!(left, vec!["gc/in-use/elsewhere-1".to_owned()]);

    block_on(reg.storage().delete("gc/in-use/elsewhere-1")).unwrap();
    gc(&reg, GRACE);
    assert!(!stored(&reg, &old.blobs[1]), "the push is over");
}
