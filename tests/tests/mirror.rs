//! The pull-through cache end to end: kura mirroring a real CNCF
//! distribution (`docker-registry`), a fault-injecting upstream
//! (`kura_tests::faulty`), a TLS upstream behind a private CA, and a real
//! forward proxy (tinyproxy).
//!
//! Needs (Debian): docker-registry, skopeo, apache2-utils (htpasswd),
//! openssl, tinyproxy. Missing tools fail the tests with an explanation.
//!
//! Run with `cargo test -p kura-tests --test mirror -- --test-threads=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use kura_tests::api::{send, Resp};
use kura_tests::faulty::{Fault, Faulty};
use kura_tests::image::{
    oci_blobs, oci_ref, ImageSpec, OciLayout, RandomReader, OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR,
    OCI_MANIFEST,
};
use kura_tests::mirror::{mirror_yaml, start_mirror, upstream, Mirror, ACCEPT_ALL};
use kura_tests::peers::Skopeo;
use kura_tests::stream::{eventually, stream_hash, Streamed};
use kura_tests::upstream::{Access, Distribution, DistributionOptions, TestCa, TinyProxy};
use kura_tests::{http_client, sha256, Kura};
use serde_json::{json, Value};
use sha2::Digest as _;

const MIB: u64 = 1024 * 1024;

/// kura mirroring one upstream named `up.local`.
fn simple_mirror(url: &str, fields: &str) -> Mirror {
    start_mirror(&mirror_yaml(&[upstream("up.local", url, fields)], ""), &[])
}

fn host(k: &Kura) -> String {
    format!("127.0.0.1:{}", k.port)
}

// ----- HTTP helpers -----------------------------------------------------------

/// GET accepting every manifest type. The answer is not checked against
/// kura's own rules (`Api::send`): a mirror passes on what upstreams say.
fn get(url: &str) -> Resp {
    send(http_client().get(url).header("accept", ACCEPT_ALL))
}

fn head(url: &str) -> Resp {
    send(http_client().head(url).header("accept", ACCEPT_ALL))
}

// ----- storage checks ---------------------------------------------------------

fn blob_path(data: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    data.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn file_digest(path: &Path) -> String {
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Panic if any stored blob's bytes do not match its name; how many were
/// checked.
fn assert_blob_store_verifies(data: &Path) -> usize {
    let scan = kura_tests::blobstore::scan(data);
    assert!(
        scan.bad.is_empty(),
        "blobs that do not match their names: {:?}",
        scan.bad
    );
    scan.checked
}

/// `skopeo copy` keeping digests as they are: `--preserve-digests`, and for
/// an `oci:` destination, uncompressed layers stay uncompressed.
fn copy(sk: &Skopeo, extra: &[&str], src: &str, dest: &str) -> anyhow::Result<()> {
    let mut args = vec!["--preserve-digests"];
    if dest.starts_with("oci:") {
        args.push("--dest-oci-accept-uncompressed-layers");
    }
    args.extend_from_slice(extra);
    sk.copy(&args, src, dest)
}

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

fn new_access(up: &Distribution, before: usize) -> Vec<Access> {
    up.access_log().split_off(before)
}

/// A small OCI image as raw bytes: (config, layer, manifest).
fn tiny_image(seed: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let layer = kura_tests::image::layer_tar(0, 4096, seed);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
        "history": [{"created_by": format!("tiny {seed}")}],
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    (config, layer, manifest)
}

// ----- 1. cold and warm pulls ------------------------------------------------------

#[test]
fn cold_then_warm_pull_is_identical_to_upstream_and_served_from_cache() {
    let up = Distribution::start().unwrap();
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let src_dir = w.join("src");
    let mut src = OciLayout::create(&src_dir).unwrap();
    let img = src
        .add_image("v1", &ImageSpec::new(3, 700 * 1024, 101))
        .unwrap();
    let multi = src
        .add_index(
            "multi",
            &[
                ImageSpec::new(2, 300 * 1024, 201),
                ImageSpec::new(2, 300 * 1024, 202).platform("linux", "arm64"),
            ],
        )
        .unwrap();
    copy(
        &sk,
        &[],
        &oci(&src_dir, "v1"),
        &format!("docker://{}/team/app1:v1", up.host),
    )
    .unwrap();
    copy(
        &sk,
        &["--all"],
        &oci(&src_dir, "multi"),
        &format!("docker://{}/team/multi1:v1", up.host),
    )
    .unwrap();

    // Direct pulls from the upstream: the reference.
    copy(
        &sk,
        &[],
        &format!("docker://{}/team/app1:v1", up.host),
        &oci(&w.join("direct"), "v1"),
    )
    .unwrap();
    copy(
        &sk,
        &["--all"],
        &format!("docker://{}/team/multi1:v1", up.host),
        &oci(&w.join("direct-multi"), "v1"),
    )
    .unwrap();
    let direct = oci_ref(&w.join("direct"), "v1").unwrap();
    let direct_blobs = oci_blobs(&w.join("direct")).unwrap();
    assert_eq!(direct.digest, img.manifest.digest);
    assert_eq!(direct_blobs, img.all_digests());

    let k = simple_mirror(&up.url, "");
    let kh = host(&k);

    // Cold pull.
    let before = up.access_log().len();
    copy(
        &sk,
        &[],
        &format!("docker://{kh}/up.local/team/app1:v1"),
        &oci(&w.join("cold"), "v1"),
    )
    .unwrap();
    let cold_access = new_access(&up, before);
    assert_eq!(
        oci_ref(&w.join("cold"), "v1").unwrap().digest,
        direct.digest
    );
    assert_eq!(oci_blobs(&w.join("cold")).unwrap(), direct_blobs);
    let mut wanted: Vec<String> = img.layers.iter().map(|l| l.digest.clone()).collect();
    wanted.push(img.config.digest.clone());
    for d in &wanted {
        let n = cold_access
            .iter()
            .filter(|a| a.method == "GET" && a.path() == format!("/v2/team/app1/blobs/{d}"))
            .count();
        assert_eq!(
            n, 1,
            "cold pull: blob {d} fetched {n} times from upstream; upstream requests: {cold_access:#?}"
        );
    }

    // Warm pull: nothing from upstream (tag within its TTL, blobs cached).
    let before = up.access_log().len();
    let sent_before = k.metric("kura_sent_from_file_bytes_total");
    copy(
        &sk,
        &[],
        &format!("docker://{kh}/up.local/team/app1:v1"),
        &oci(&w.join("warm"), "v1"),
    )
    .unwrap();
    let warm_access = new_access(&up, before);
    assert!(
        !warm_access.iter().any(|a| a.path().contains("/blobs/")),
        "warm pull fetched blobs upstream: {warm_access:#?}"
    );
    assert!(
        warm_access.is_empty(),
        "warm pull (tag within its TTL) still asked the upstream: {warm_access:#?}"
    );
    assert_eq!(
        oci_ref(&w.join("warm"), "v1").unwrap().digest,
        direct.digest
    );
    assert_eq!(oci_blobs(&w.join("warm")).unwrap(), direct_blobs);
    // On a plain connection the kernel sent the cached layers straight
    // from their files (sendfile), and skopeo verified every digest.
    let layer_bytes: u64 = img.layers.iter().map(|l| l.size).sum();
    let sent = k.metric("kura_sent_from_file_bytes_total") - sent_before;
    assert!(
        sent >= layer_bytes,
        "warm pull: {sent} bytes sent from files, the layers have {layer_bytes}"
    );

    // The two-platform index, --all.
    let direct_multi = oci_ref(&w.join("direct-multi"), "v1").unwrap();
    let direct_multi_blobs = oci_blobs(&w.join("direct-multi")).unwrap();
    assert_eq!(direct_multi.digest, multi.index.digest);
    assert_eq!(direct_multi_blobs, multi.all_digests());
    let before = up.access_log().len();
    copy(
        &sk,
        &["--all"],
        &format!("docker://{kh}/up.local/team/multi1:v1"),
        &oci(&w.join("cold-multi"), "v1"),
    )
    .unwrap();
    let cold_multi = new_access(&up, before);
    let cold_ref = oci_ref(&w.join("cold-multi"), "v1").unwrap();
    assert_eq!(cold_ref.digest, direct_multi.digest);
    assert_eq!(cold_ref.media_type, OCI_INDEX);
    assert_eq!(
        oci_blobs(&w.join("cold-multi")).unwrap(),
        direct_multi_blobs
    );
    for i in &multi.images {
        // Child manifests keep their digests (fetched by digest).
        assert!(
            cold_multi.iter().any(|a| a.method == "GET"
                && a.path() == format!("/v2/team/multi1/manifests/{}", i.manifest.digest)),
            "child manifest {} not fetched by digest: {cold_multi:#?}",
            i.manifest.digest
        );
        for d in i.layers.iter().map(|l| &l.digest).chain([&i.config.digest]) {
            let n = cold_multi
                .iter()
                .filter(|a| a.method == "GET" && a.path() == format!("/v2/team/multi1/blobs/{d}"))
                .count();
            assert_eq!(n, 1, "cold --all pull fetched {d} {n} times");
        }
    }
    let before = up.access_log().len();
    copy(
        &sk,
        &["--all"],
        &format!("docker://{kh}/up.local/team/multi1:v1"),
        &oci(&w.join("warm-multi"), "v1"),
    )
    .unwrap();
    let warm_multi = new_access(&up, before);
    assert!(
        warm_multi.is_empty(),
        "warm --all pull asked the upstream: {warm_multi:#?}"
    );
    assert_eq!(
        oci_ref(&w.join("warm-multi"), "v1").unwrap().digest,
        direct_multi.digest
    );
    assert_eq!(
        oci_blobs(&w.join("warm-multi")).unwrap(),
        direct_multi_blobs
    );
    assert_blob_store_verifies(&k.data_dir);
}

// ----- 2. routing ------------------------------------------------------------------

#[test]
fn routing_by_ns_prefix_and_default_and_hosted_pushes() {
    let up = Distribution::start().unwrap();
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src_dir = work.path().join("src");
    let mut src = OciLayout::create(&src_dir).unwrap();
    let img = src
        .add_image("v1", &ImageSpec::new(1, 64 * 1024, 301))
        .unwrap();
    copy(
        &sk,
        &[],
        &oci(&src_dir, "v1"),
        &format!("docker://{}/team/route:v1", up.host),
    )
    .unwrap();
    let layer = img.layers[0].digest.clone();

    let k = simple_mirror(&up.url, "");
    let u = &k.url;

    // ?ns= (containerd's mirror requests).
    let r = get(&format!("{u}/v2/team/route/manifests/v1?ns=up.local"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.hdr("oci-namespace"), "up.local");
    assert_eq!(r.hdr("x-kura-cache"), "miss");
    assert_eq!(sha256(&r.body), img.manifest.digest);
    assert_eq!(r.hdr("docker-content-digest"), img.manifest.digest);
    assert_eq!(r.hdr("content-type"), OCI_MANIFEST);
    let r = get(&format!("{u}/v2/team/route/blobs/{layer}?ns=up.local"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.hdr("oci-namespace"), "up.local");
    assert_eq!(sha256(&r.body), layer);

    // Path prefix: the same cache.
    let r = get(&format!("{u}/v2/up.local/team/route/manifests/v1"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.hdr("oci-namespace"), "up.local");
    assert_eq!(r.hdr("x-kura-cache"), "hit");
    assert_eq!(sha256(&r.body), img.manifest.digest);
    let r = get(&format!("{u}/v2/up.local/team/route/blobs/{layer}"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.hdr("x-kura-cache"), "hit");
    assert_eq!(sha256(&r.body), layer);
    let r = head(&format!(
        "{u}/v2/up.local/team/route/manifests/{}",
        img.manifest.digest
    ));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.hdr("oci-namespace"), "up.local");

    // Unknown upstreams are never contacted: 404 NAME_UNKNOWN.
    let before = up.access_log().len();
    for path in [
        "/v2/team/route/manifests/v1?ns=nope.example",
        "/v2/nope.example/team/route/manifests/v1",
        "/v2/nope.example/team/route/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "/v2/team/route/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000?ns=other.io",
    ] {
        let r = get(&format!("{u}{path}"));
        assert_eq!(r.status, 404, "GET {path}: {}", r.describe());
        assert_eq!(r.code(), "NAME_UNKNOWN", "GET {path}: {}", r.describe());
    }
    // Without a default, a bare name is hosted: not looked up upstream.
    let r = get(&format!("{u}/v2/team/route/manifests/v1"));
    assert_eq!(r.status, 404, "{}", r.describe());
    assert_eq!(r.header("oci-namespace"), None);
    assert!(
        new_access(&up, before).is_empty(),
        "unknown namespaces / hosted names reached the upstream"
    );

    // Hosted names accept pushes.
    let c = http_client();
    let (config, layer_bytes, manifest) = tiny_image(302);
    for blob in [&config, &layer_bytes] {
        let r = send(
            c.post(format!(
                "{u}/v2/hosted/app/blobs/uploads/?digest={}",
                sha256(blob)
            ))
            .header("content-type", "application/octet-stream")
            .body(blob.clone()),
        );
        assert_eq!(r.status, 201, "hosted blob push: {}", r.describe());
    }
    let r = send(
        c.put(format!("{u}/v2/hosted/app/manifests/v1"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone()),
    );
    assert_eq!(r.status, 201, "hosted manifest push: {}", r.describe());
    let r = get(&format!("{u}/v2/hosted/app/manifests/v1"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, manifest);
    assert_eq!(r.header("oci-namespace"), None);
    assert_eq!(r.header("x-kura-cache"), None);

    // Pushes into mirrored names: 405 UNSUPPORTED.
    let refused = |what: &str, rb: reqwest::blocking::RequestBuilder| {
        let r = send(rb);
        assert_eq!(r.status, 405, "{what}: {}", r.describe());
        assert_eq!(r.code(), "UNSUPPORTED", "{what}: {}", r.describe());
    };
    refused(
        "POST upload (prefix)",
        c.post(format!("{u}/v2/up.local/team/route/blobs/uploads/")),
    );
    refused(
        "POST monolithic upload (prefix)",
        c.post(format!(
            "{u}/v2/up.local/team/route/blobs/uploads/?digest={}",
            sha256(&config)
        ))
        .body(config.clone()),
    );
    refused(
        "POST upload (ns=)",
        c.post(format!("{u}/v2/team/route/blobs/uploads/?ns=up.local")),
    );
    refused(
        "PUT manifest (prefix)",
        c.put(format!("{u}/v2/up.local/team/route/manifests/v2"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone()),
    );
    refused(
        "DELETE manifest (prefix)",
        c.delete(format!(
            "{u}/v2/up.local/team/route/manifests/{}",
            img.manifest.digest
        )),
    );
    // The cached content is untouched.
    let r = get(&format!("{u}/v2/up.local/team/route/manifests/v1"));
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), img.manifest.digest);

    // With `default`, bare names go to that upstream.
    let kd = start_mirror(
        &mirror_yaml(
            &[upstream("up.local", &up.url, "")],
            "  default: up.local\n",
        ),
        &[],
    );
    let r = get(&format!("{}/v2/team/route/manifests/v1", kd.url));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.hdr("oci-namespace"), "up.local");
    assert_eq!(sha256(&r.body), img.manifest.digest);
    let r = get(&format!("{}/v2/team/route/blobs/{layer}", kd.url));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(sha256(&r.body), layer);
    // ... and are then read-only.
    let r = send(c.post(format!("{}/v2/hosted/app/blobs/uploads/", kd.url)));
    assert_eq!(r.status, 405, "{}", r.describe());
    // A bare-name pull through skopeo.
    copy(
        &sk,
        &[],
        &format!("docker://{}/team/route:v1", host(&kd)),
        &oci(&work.path().join("bare"), "v1"),
    )
    .unwrap();
    assert_eq!(
        oci_ref(&work.path().join("bare"), "v1").unwrap().digest,
        img.manifest.digest
    );
}

// ----- 3. one upstream fetch for many concurrent clients ----------------------

#[test]
fn concurrent_cold_gets_of_a_large_blob_make_one_upstream_fetch() {
    const SIZE: u64 = 200 * MIB;
    const CLIENTS: usize = 64;
    const SEED: u64 = 303;
    let up = Distribution::start().unwrap();
    let digest = RandomReader::digest_of(SEED, SIZE);
    up.push_blob("team/big3", &digest, SIZE, RandomReader::new(SEED, SIZE))
        .unwrap();
    assert_eq!(up.blob_gets("team/big3"), 0);

    let k = simple_mirror(&up.url, "");
    let url = format!("{}/v2/up.local/team/big3/blobs/{digest}", k.url);
    let progress = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, progress, barrier) = (url.clone(), progress.clone(), barrier.clone());
            std::thread::spawn(move || {
                let c = http_client();
                barrier.wait();
                stream_hash(&c, &url, Some(&progress), |_| true)
            })
        })
        .collect();
    barrier.wait();
    // A late joiner: once the first few MB have arrived somewhere.
    assert!(
        eventually(120, || progress.load(Ordering::SeqCst) >= 4 * MIB),
        "no bytes arrived"
    );
    let at_join = progress.load(Ordering::SeqCst);
    let late = {
        let url = url.clone();
        std::thread::spawn(move || stream_hash(&http_client(), &url, None, |_| true))
    };
    let results: Vec<Streamed> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let late = late.join().unwrap();
    let elapsed = started.elapsed();
    let (rss, peak) = k.rss_kib().unwrap_or((0, 0));

    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.status, 200, "client {i}: {r:?}");
        assert!(r.error.is_none(), "client {i}: {r:?}");
        assert_eq!(r.received, SIZE, "client {i}: {r:?}");
        assert_eq!(r.digest, digest, "client {i}: {r:?}");
    }
    assert_eq!(late.status, 200, "late joiner: {late:?}");
    assert!(late.error.is_none(), "late joiner: {late:?}");
    assert_eq!(late.received, SIZE, "late joiner: {late:?}");
    assert_eq!(late.digest, digest, "late joiner: {late:?}");
    let gets = up.blob_gets_of("team/big3", &digest);
    assert_eq!(
        gets, 1,
        "{CLIENTS} concurrent cold GETs + a late joiner caused {gets} upstream GETs"
    );
    let mut caches = BTreeMap::new();
    for r in &results {
        *caches.entry(r.cache.clone()).or_insert(0) += 1;
    }
    eprintln!(
        "{CLIENTS}×{} MiB in {elapsed:?}; x-kura-cache {caches:?}; late joiner started after \
         {} MiB total, got {:?}; kura RSS {} MiB, peak {} MiB",
        SIZE / MIB,
        at_join / MIB,
        late.cache,
        rss / 1024,
        peak / 1024
    );
    // The fill spools to storage in fixed-size chunks: memory does not
    // grow with the blob size.
    assert!(
        peak < SIZE / 1024,
        "kura's peak RSS {} MiB is not below the blob size {} MiB",
        peak / 1024,
        SIZE / MIB
    );
    assert!(eventually(10, || blob_path(&k.data_dir, &digest).exists()));
    assert_eq!(file_digest(&blob_path(&k.data_dir, &digest)), digest);
    // And a later GET is a hit.
    let r = stream_hash(&http_client(), &url, None, |_| true);
    assert_eq!((r.status, r.cache.as_str()), (200, "hit"));
    assert_eq!(r.digest, digest);
    assert_eq!(up.blob_gets_of("team/big3", &digest), 1);
}

/// The deterministic version of the late joiner: the upstream stalls half
/// way, a second client arrives during the stall, and both get the whole
/// blob from the one upstream fetch.
#[test]
fn late_joiner_during_a_stalled_fill_gets_the_whole_blob() {
    let f = Faulty::start().unwrap();
    let data = kura_tests::image::XorShift::new(304).bytes(48 * MIB as usize);
    let slice = data[MIB as usize..2 * MIB as usize].to_vec();
    let digest = f.add_blob(data);
    f.set_fault(&digest, Fault::Stall { after: 24 * MIB });
    let k = simple_mirror(&f.url, "");
    let url = format!("{}/v2/up.local/team/late/blobs/{digest}", k.url);

    let first_progress = Arc::new(AtomicU64::new(0));
    let first = {
        let (url, p) = (url.clone(), first_progress.clone());
        std::thread::spawn(move || stream_hash(&http_client(), &url, Some(&p), |_| true))
    };
    assert!(
        eventually(60, || first_progress.load(Ordering::SeqCst) >= 16 * MIB),
        "first client stuck at {} bytes",
        first_progress.load(Ordering::SeqCst)
    );
    let late_progress = Arc::new(AtomicU64::new(0));
    let late = {
        let (url, p) = (url.clone(), late_progress.clone());
        std::thread::spawn(move || stream_hash(&http_client(), &url, Some(&p), |_| true))
    };
    // The late joiner catches up with what was already received.
    assert!(
        eventually(60, || late_progress.load(Ordering::SeqCst) >= 16 * MIB),
        "late joiner stuck at {} bytes",
        late_progress.load(Ordering::SeqCst)
    );
    assert!(!blob_path(&k.data_dir, &digest).exists());
    // A range of what already arrived, served during the stall.
    let r = send(
        http_client()
            .get(&url)
            .header("range", format!("bytes={}-{}", MIB, 2 * MIB - 1)),
    );
    assert_eq!(r.status, 206, "range during the fill: {}", r.describe());
    assert_eq!(
        r.hdr("content-range"),
        format!("bytes {}-{}/{}", MIB, 2 * MIB - 1, 48 * MIB)
    );
    assert!(r.body == slice, "range during the fill: wrong bytes");
    f.clear_fault(&digest);
    let first = first.join().unwrap();
    let late = late.join().unwrap();
    for (who, r) in [("first", &first), ("late joiner", &late)] {
        assert_eq!(r.status, 200, "{who}: {r:?}");
        assert_eq!(r.cache, "miss", "{who}: {r:?}");
        assert!(r.error.is_none(), "{who}: {r:?}");
        assert_eq!(r.received, 48 * MIB, "{who}: {r:?}");
        assert_eq!(r.content_length, Some(48 * MIB), "{who}: {r:?}");
        assert_eq!(r.digest, digest, "{who}: {r:?}");
    }
    assert_eq!(f.blob_gets("team/late", &digest), 1);
    assert!(eventually(10, || blob_path(&k.data_dir, &digest).exists()));
    assert_eq!(file_digest(&blob_path(&k.data_dir, &digest)), digest);
}

// ----- 4. upstream down ----------------------------------------------------------

#[test]
fn upstream_down_serves_cached_tags_stale_and_digests() {
    let mut up = Distribution::start().unwrap();
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src_dir = work.path().join("src");
    let mut src = OciLayout::create(&src_dir).unwrap();
    let img = src
        .add_image("v1", &ImageSpec::new(2, 128 * 1024, 401))
        .unwrap();
    copy(
        &sk,
        &[],
        &oci(&src_dir, "v1"),
        &format!("docker://{}/team/down:v1", up.host),
    )
    .unwrap();
    let k = simple_mirror(&up.url, "      tag_ttl_secs: 0\n");
    let kh = host(&k);
    copy(
        &sk,
        &[],
        &format!("docker://{kh}/up.local/team/down:v1"),
        &oci(&work.path().join("first"), "v1"),
    )
    .unwrap();

    up.kill();
    let u = &k.url;
    let r = get(&format!("{u}/v2/up.local/team/down/manifests/v1"));
    assert_eq!(r.status, 200, "tag with upstream down: {}", r.describe());
    assert_eq!(sha256(&r.body), img.manifest.digest);
    assert_eq!(r.hdr("x-kura-cache"), "stale", "{}", r.describe());
    assert!(
        r.hdr("warning").starts_with("110 "),
        "no Warning: 110 header: {}",
        r.describe()
    );
    let r = head(&format!("{u}/v2/up.local/team/down/manifests/v1"));
    assert_eq!(
        r.status,
        200,
        "HEAD tag with upstream down: {}",
        r.describe()
    );
    assert_eq!(r.hdr("docker-content-digest"), img.manifest.digest);
    let r = get(&format!("{u}/v2/team/down/manifests/v1?ns=up.local"));
    assert_eq!(
        r.status,
        200,
        "ns= tag with upstream down: {}",
        r.describe()
    );
    assert_eq!(r.hdr("x-kura-cache"), "stale");

    let r = get(&format!(
        "{u}/v2/up.local/team/down/manifests/{}",
        img.manifest.digest
    ));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.hdr("x-kura-cache"), "hit");
    for d in img
        .layers
        .iter()
        .map(|l| &l.digest)
        .chain([&img.config.digest])
    {
        let r = get(&format!("{u}/v2/up.local/team/down/blobs/{d}"));
        assert_eq!(r.status, 200, "blob {d}: {}", r.describe());
        assert_eq!(r.hdr("x-kura-cache"), "hit");
        assert_eq!(&sha256(&r.body), d);
    }
    // A whole pull works with the upstream gone.
    copy(
        &sk,
        &[],
        &format!("docker://{kh}/up.local/team/down:v1"),
        &oci(&work.path().join("offline"), "v1"),
    )
    .unwrap();
    assert_eq!(
        oci_ref(&work.path().join("offline"), "v1").unwrap().digest,
        img.manifest.digest
    );
    assert_eq!(
        oci_blobs(&work.path().join("offline")).unwrap(),
        img.all_digests()
    );
    // Something never cached: an error saying the upstream is unavailable.
    let r = get(&format!("{u}/v2/up.local/team/down/manifests/v2"));
    assert!(
        matches!(r.status, 502..=504),
        "uncached tag with upstream down: {}",
        r.describe()
    );
    assert_eq!(r.code(), "UNAVAILABLE", "{}", r.describe());
}

#[test]
fn tag_lists_pass_through_to_the_upstream_and_survive_its_outage() {
    let mut up = Distribution::start().unwrap();
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src_dir = work.path().join("src");
    let mut src = OciLayout::create(&src_dir).unwrap();
    src.add_image("v1", &ImageSpec::new(1, 4096, 411)).unwrap();
    for tag in ["1.0", "1.1", "2.0", "latest"] {
        copy(
            &sk,
            &[],
            &oci(&src_dir, "v1"),
            &format!("docker://{}/team/listed:{tag}", up.host),
        )
        .unwrap();
    }
    let k = simple_mirror(&up.url, "      tag_ttl_secs: 0\n");
    let u = &k.url;
    let all = ["1.0", "1.1", "2.0", "latest"];

    // Cold: nothing of the repository is cached, the list comes from the
    // upstream, named as the client named it.
    let list = |path: &str| {
        let r = get(&format!("{u}{path}"));
        assert_eq!(r.status, 200, "{path}: {}", r.describe());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        (v, r)
    };
    let (v, r) = list("/v2/up.local/team/listed/tags/list");
    assert_eq!(v["name"], "up.local/team/listed");
    assert_eq!(v["tags"], json!(all));
    assert_eq!(r.hdr("x-kura-cache"), "miss");
    let (v, _) = list("/v2/team/listed/tags/list?ns=up.local");
    assert_eq!(v["name"], "team/listed");
    assert_eq!(v["tags"], json!(all));

    // Pages: n and last go upstream; the next link points back here.
    let (v, r) = list("/v2/up.local/team/listed/tags/list?n=2");
    assert_eq!(v["tags"], json!(["1.0", "1.1"]));
    let link = r.hdr("link").to_owned();
    assert!(
        link.starts_with("</v2/up.local/team/listed/tags/list?") && link.contains("last=1.1"),
        "{link}"
    );
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let (v, _) = list(next);
    assert_eq!(v["tags"], json!(["2.0", "latest"]));

    // A real client lists them through the mirror.
    let out = sk
        .run(&[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{}/up.local/team/listed", host(&k)),
        ])
        .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["Tags"], json!(all), "{v}");

    // A new tag upstream shows once the TTL (0 here) has passed.
    copy(
        &sk,
        &[],
        &oci(&src_dir, "v1"),
        &format!("docker://{}/team/listed:3.0", up.host),
    )
    .unwrap();
    let (v, r) = list("/v2/up.local/team/listed/tags/list");
    assert_eq!(v["tags"], json!(["1.0", "1.1", "2.0", "3.0", "latest"]));
    assert_eq!(r.hdr("x-kura-cache"), "revalidated");

    // A manifest reference that is neither a tag nor a digest cannot
    // exist: 404, as for a hosted repository, without asking upstream.
    let before = up.access_log().len();
    let r = get(&format!(
        "{u}/v2/up.local/team/listed/manifests/.INVALID_MANIFEST_NAME"
    ));
    assert_eq!((r.status, r.code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let r = head(&format!(
        "{u}/v2/up.local/team/listed/manifests/.INVALID_MANIFEST_NAME"
    ));
    assert_eq!(r.status, 404);
    assert_eq!(up.access_log().len(), before);

    // Unknown upstream: 404 with the name the client asked for.
    let r = get(&format!("{u}/v2/up.local/team/nothing/tags/list"));
    assert_eq!(r.status, 404, "{}", r.describe());
    assert_eq!(r.code(), "NAME_UNKNOWN");
    assert!(
        !String::from_utf8_lossy(&r.body).contains("up.local/up.local"),
        "{}",
        r.describe()
    );

    // Upstream gone: the cached list, marked stale.
    up.kill();
    let (v, r) = list("/v2/up.local/team/listed/tags/list");
    assert_eq!(v["tags"], json!(["1.0", "1.1", "2.0", "3.0", "latest"]));
    assert_eq!(r.hdr("x-kura-cache"), "stale");
    assert!(r.hdr("warning").starts_with("110 "), "{}", r.describe());
    // A page never fetched cannot be served.
    let r = get(&format!("{u}/v2/up.local/team/listed/tags/list?n=1"));
    assert_eq!(r.code(), "UNAVAILABLE", "{}", r.describe());
}

// ----- 5. lying upstreams ----------------------------------------------------------

/// GET a blob through kura while the upstream lies; the client must never
/// receive a complete body.
fn assert_never_complete(url: &str, size: u64, what: &str) -> Streamed {
    let r = stream_hash(&http_client(), url, None, |_| true);
    if r.status == 200 {
        assert!(
            r.error.is_some() && r.received < size,
            "{what}: the client received a complete body from a lying upstream: {r:?}"
        );
    } else if r.status == 0 {
        // No response at all: a request that joins a fill just as it fails
        // gets a 200 whose body errors before its first byte, and hyper
        // then closes the connection without sending the head. Still
        // nothing complete reached the client.
        assert!(r.error.is_some() && r.received == 0, "{what}: {r:?}");
    } else {
        assert!(r.status >= 500, "{what}: {r:?}");
    }
    r
}

#[test]
fn lying_or_truncating_upstream_is_never_cached_and_heals() {
    let f = Faulty::start().unwrap();
    let img = f.add_image("team/lie", "v1", &[3 * MIB as usize, 2 * MIB as usize], 501);
    let k = simple_mirror(&f.url, "");
    let u = &k.url;
    let wrong = img.layers[0].clone();
    let short = img.layers[1].clone();

    // Wrong bytes for a digest.
    f.set_fault(&wrong.digest, Fault::WrongBytes);
    let url_wrong = format!("{u}/v2/up.local/team/lie/blobs/{}", wrong.digest);
    let r = assert_never_complete(&url_wrong, wrong.size, "wrong bytes");
    eprintln!("wrong bytes: {r:?}");
    // Truncated: Content-Length bigger than what is sent, then close.
    f.set_fault(&short.digest, Fault::Truncate { at: short.size / 3 });
    let url_short = format!("{u}/v2/up.local/team/lie/blobs/{}", short.digest);
    let r = assert_never_complete(&url_short, short.size, "truncated");
    eprintln!("truncated: {r:?}");
    // A second attempt while still broken: still never complete (nothing
    // was cached by the first).
    assert_never_complete(&url_wrong, wrong.size, "wrong bytes, again");
    assert_never_complete(&url_short, short.size, "truncated, again");
    // A manifest whose bytes do not match the digest asked for.
    f.set_fault(&img.manifest.digest, Fault::WrongBytes);
    let url_manifest = format!("{u}/v2/up.local/team/lie/manifests/{}", img.manifest.digest);
    let r = get(&url_manifest);
    assert!(
        matches!(r.status, 502..=504),
        "lying manifest: {}",
        r.describe()
    );
    // ... or by tag, announcing the real digest in Docker-Content-Digest.
    f.set_fault("v1", Fault::WrongBytes);
    let r = get(&format!("{u}/v2/up.local/team/lie/manifests/v1"));
    assert!(
        matches!(r.status, 502..=504),
        "lying manifest by tag: {}",
        r.describe()
    );

    std::thread::sleep(Duration::from_millis(300));
    for d in [&wrong.digest, &short.digest, &img.manifest.digest] {
        assert!(
            !blob_path(&k.data_dir, d).exists(),
            "{d} was stored although the upstream lied"
        );
    }
    assert_blob_store_verifies(&k.data_dir);

    // Healed: the next pulls succeed and are cached.
    f.clear_fault(&wrong.digest);
    f.clear_fault(&short.digest);
    f.clear_fault(&img.manifest.digest);
    f.clear_fault("v1");
    for (url, d) in [(&url_wrong, &wrong), (&url_short, &short)] {
        let r = stream_hash(&http_client(), url, None, |_| true);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.error.is_none(), "{r:?}");
        assert_eq!((r.received, &r.digest), (d.size, &d.digest));
        assert!(eventually(10, || blob_path(&k.data_dir, &d.digest).exists()));
        let gets = f.blob_gets("team/lie", &d.digest);
        let r = stream_hash(&http_client(), url, None, |_| true);
        assert_eq!((r.status, r.cache.as_str()), (200, "hit"));
        assert_eq!(r.digest, d.digest);
        assert_eq!(
            f.blob_gets("team/lie", &d.digest),
            gets,
            "a hit went upstream"
        );
    }
    let r = get(&url_manifest);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(sha256(&r.body), img.manifest.digest);
    let r = get(&format!("{u}/v2/up.local/team/lie/manifests/v1"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(sha256(&r.body), img.manifest.digest);
    assert_blob_store_verifies(&k.data_dir);
}

#[test]
fn upstream_500_and_429_are_retried_and_reported() {
    let f = Faulty::start().unwrap();
    let img = f.add_image("team/busy", "v1", &[256 * 1024, 256 * 1024], 502);
    let k = simple_mirror(&f.url, "");
    let u = &k.url;
    let broken = &img.layers[0].digest;
    let limited = &img.layers[1].digest;

    // 500 every time: a bounded number of retries, then 503, nothing stored.
    f.set_fault(
        broken,
        Fault::Status {
            code: 500,
            retry_after: None,
        },
    );
    let r = get(&format!("{u}/v2/up.local/team/busy/blobs/{broken}"));
    assert!(
        matches!(r.status, 502..=504),
        "upstream 500: {}",
        r.describe()
    );
    let tries = f.blob_gets("team/busy", broken);
    assert!(
        (2..=5).contains(&tries),
        "upstream 500: {tries} upstream attempts"
    );
    assert!(!blob_path(&k.data_dir, broken).exists());

    // 429 with Retry-After: 1 once: kura waits, retries, succeeds.
    f.set_fault_times(
        limited,
        Fault::Status {
            code: 429,
            retry_after: Some(1),
        },
        1,
    );
    let r = get(&format!("{u}/v2/up.local/team/busy/blobs/{limited}"));
    assert_eq!(r.status, 200, "429 once: {}", r.describe());
    assert_eq!(&sha256(&r.body), limited);
    let times: Vec<(u16, Instant)> = f
        .requests()
        .into_iter()
        .filter(|q| q.path == format!("/v2/team/busy/blobs/{limited}"))
        .map(|q| (q.status, q.at))
        .collect();
    assert_eq!(times.len(), 2, "429 once: {times:?}");
    assert_eq!(times[0].0, 429);
    let waited = times[1].1 - times[0].1;
    assert!(
        waited >= Duration::from_millis(900),
        "Retry-After: 1 not honoured, retried after {waited:?}"
    );

    // Healed.
    f.clear_fault(broken);
    let r = get(&format!("{u}/v2/up.local/team/busy/blobs/{broken}"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(&sha256(&r.body), broken);
}

// ----- 6. tag revalidation ------------------------------------------------------

#[test]
fn tags_are_revalidated_with_head_and_follow_upstream_changes() {
    let up = Distribution::start().unwrap();
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src_dir = work.path().join("src");
    let mut src = OciLayout::create(&src_dir).unwrap();
    let a = src
        .add_image("a", &ImageSpec::new(1, 64 * 1024, 601))
        .unwrap();
    let b = src
        .add_image("b", &ImageSpec::new(1, 64 * 1024, 602))
        .unwrap();
    let dest = format!("docker://{}/team/reval:v1", up.host);
    copy(&sk, &[], &oci(&src_dir, "a"), &dest).unwrap();

    let k = simple_mirror(&up.url, "      tag_ttl_secs: 0\n");
    let url = format!("{}/v2/up.local/team/reval/manifests/v1", k.url);
    let path = "/v2/team/reval/manifests/v1";
    let r = get(&url);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.hdr("x-kura-cache"), "miss");
    assert_eq!(sha256(&r.body), a.manifest.digest);

    for _ in 0..2 {
        let (heads, gets) = (up.count("HEAD", path), up.count("GET", path));
        let r = get(&url);
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.hdr("x-kura-cache"), "revalidated");
        assert_eq!(sha256(&r.body), a.manifest.digest);
        assert_eq!(up.count("HEAD", path), heads + 1, "no HEAD upstream");
        assert_eq!(up.count("GET", path), gets, "unchanged tag fetched again");
    }

    // The tag moves upstream.
    copy(&sk, &[], &oci(&src_dir, "b"), &dest).unwrap();
    let gets = up.count("GET", path);
    let r = get(&url);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(sha256(&r.body), b.manifest.digest, "old digest served");
    assert_eq!(r.hdr("docker-content-digest"), b.manifest.digest);
    assert_eq!(r.hdr("x-kura-cache"), "miss");
    assert_eq!(up.count("GET", path), gets + 1);
    let r = get(&url);
    assert_eq!(r.hdr("x-kura-cache"), "revalidated");
    assert_eq!(sha256(&r.body), b.manifest.digest);
    // Both revisions stay available by digest.
    for m in [&a.manifest.digest, &b.manifest.digest] {
        let r = get(&format!("{}/v2/up.local/team/reval/manifests/{m}", k.url));
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(&sha256(&r.body), m);
    }

    // With the default TTL the second GET does not ask the upstream at all.
    let k2 = simple_mirror(&up.url, "");
    let url2 = format!("{}/v2/up.local/team/reval/manifests/v1", k2.url);
    assert_eq!(get(&url2).hdr("x-kura-cache"), "miss");
    let before = up.access_log().len();
    let r = get(&url2);
    assert_eq!(r.hdr("x-kura-cache"), "hit");
    assert_eq!(sha256(&r.body), b.manifest.digest);
    assert!(new_access(&up, before).is_empty());
}

// ----- 7. crash in the middle of a fill ----------------------------------------

#[test]
fn sigkill_during_a_blob_fill_leaves_no_bad_blob() {
    const SIZE: u64 = 200 * MIB;
    let f = Faulty::start().unwrap();
    let data = kura_tests::image::XorShift::new(701).bytes(SIZE as usize);
    let digest = f.add_blob(data);
    f.set_fault(&digest, Fault::Stall { after: 120 * MIB });
    let mut k = simple_mirror(&f.url, "");
    let url = format!("{}/v2/up.local/team/crash/blobs/{digest}", k.url);

    let progress = Arc::new(AtomicU64::new(0));
    let client = {
        let (url, p) = (url.clone(), progress.clone());
        std::thread::spawn(move || stream_hash(&http_client(), &url, Some(&p), |_| true))
    };
    assert!(
        eventually(120, || progress.load(Ordering::SeqCst) >= 100 * MIB),
        "client stuck at {} bytes",
        progress.load(Ordering::SeqCst)
    );
    let spool = kura_tests::blobstore::files_under(&k.data_dir.join("uploads"));
    k.kill();
    let r = client.join().unwrap();
    assert!(
        r.error.is_some() && r.received < SIZE,
        "client of a killed kura: {r:?}"
    );
    eprintln!(
        "killed with {} MiB delivered, {} files in uploads/",
        r.received / MIB,
        spool.len()
    );

    k.restart().unwrap();
    let n = assert_blob_store_verifies(&k.data_dir);
    assert!(
        !blob_path(&k.data_dir, &digest).exists(),
        "a half-filled blob is visible after the crash"
    );
    let left = kura_tests::blobstore::files_under(&k.data_dir.join("uploads"));
    eprintln!(
        "{n} blobs in storage after the restart, all verified; {} files left in uploads/",
        left.len()
    );

    // The pull then succeeds (the upstream no longer stalls).
    f.clear_fault(&digest);
    let r = stream_hash(&http_client(), &url, None, |_| true);
    assert_eq!(r.status, 200, "{r:?}\nkura log:\n{}", k.log_text());
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!((r.received, &r.digest), (SIZE, &digest));
    assert!(eventually(20, || blob_path(&k.data_dir, &digest).exists()));
    assert_blob_store_verifies(&k.data_dir);
}

// ----- 8. upstream authentication -----------------------------------------------

#[test]
fn upstream_basic_auth_htpasswd() {
    let up = Distribution::start_with(DistributionOptions {
        htpasswd: Some(("alice".into(), "s3cret-pw".into())),
        ..Default::default()
    })
    .unwrap();
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src_dir = work.path().join("src");
    let mut src = OciLayout::create(&src_dir).unwrap();
    let img = src
        .add_image("v1", &ImageSpec::new(2, 64 * 1024, 801))
        .unwrap();
    copy(
        &sk,
        &["--dest-creds", "alice:s3cret-pw"],
        &oci(&src_dir, "v1"),
        &format!("docker://{}/team/basic:v1", up.host),
    )
    .unwrap();
    // The upstream really wants credentials.
    let r = get(&format!("{}/v2/team/basic/manifests/v1", up.url));
    assert_eq!(r.status, 401);

    let k = simple_mirror(
        &up.url,
        "      username: alice\n      password: s3cret-pw\n",
    );
    copy(
        &sk,
        &[],
        &format!("docker://{}/up.local/team/basic:v1", host(&k)),
        &oci(&work.path().join("pulled"), "v1"),
    )
    .unwrap();
    assert_eq!(
        oci_ref(&work.path().join("pulled"), "v1").unwrap().digest,
        img.manifest.digest
    );
    assert_eq!(
        oci_blobs(&work.path().join("pulled")).unwrap(),
        img.all_digests()
    );

    // Wrong password: an error, not content and not a crash.
    let bad = simple_mirror(&up.url, "      username: alice\n      password: wrong\n");
    let r = get(&format!("{}/v2/up.local/team/basic/manifests/v1", bad.url));
    assert!(
        r.status >= 400 && r.status != 500 && !r.code().is_empty(),
        "wrong upstream password: {}",
        r.describe()
    );
}

#[test]
fn upstream_token_auth_fetches_one_token() {
    let f = Faulty::start().unwrap();
    let img = f.add_image("team/tok", "v1", &[128 * 1024, 128 * 1024, 128 * 1024], 802);
    f.token_auth(Some(("bob", "t0ken-pw")));
    // The upstream really wants a token.
    let r = get(&format!("{}/v2/team/tok/manifests/v1", f.url));
    assert_eq!(r.status, 401);
    assert!(r.hdr("www-authenticate").starts_with("Bearer realm="));
    let before = f.requests().len();

    let k = simple_mirror(&f.url, "      username: bob\n      password: t0ken-pw\n");
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    copy(
        &sk,
        &[],
        &format!("docker://{}/up.local/team/tok:v1", host(&k)),
        &oci(&work.path().join("pulled"), "v1"),
    )
    .unwrap();
    assert_eq!(
        oci_ref(&work.path().join("pulled"), "v1").unwrap().digest,
        img.manifest.digest
    );
    let mut want: BTreeSet<String> = img.blob_digests().into_iter().collect();
    want.insert(img.manifest.digest.clone());
    assert_eq!(oci_blobs(&work.path().join("pulled")).unwrap(), want);

    let tokens = f.token_requests();
    assert_eq!(
        tokens.len(),
        1,
        "token endpoint hit {} times: {tokens:?}",
        tokens.len()
    );
    let (query, auth) = &tokens[0];
    assert!(
        query.contains("scope=repository%3Ateam%2Ftok%3Apull")
            || query.contains("scope=repository:team/tok:pull"),
        "token scope: {query}"
    );
    assert!(query.contains("service=faulty"), "token service: {query}");
    assert_eq!(
        auth.as_deref(),
        Some("Basic Ym9iOnQwa2VuLXB3"),
        "bob:t0ken-pw"
    );

    let reqs: Vec<_> = f.requests().split_off(before);
    let v2: Vec<_> = reqs.iter().filter(|q| q.path.starts_with("/v2/")).collect();
    let ok: Vec<_> = v2.iter().filter(|q| q.status == 200).collect();
    assert!(
        ok.len() >= 5,
        "expected manifest + config + 3 layers upstream, got {v2:#?}"
    );
    for q in &ok {
        assert_eq!(q.authorization.as_deref(), Some("Bearer tok-1"), "{q:?}");
    }
    let challenges = v2.iter().filter(|q| q.status == 401).count();
    assert_eq!(
        challenges, 1,
        "one challenge, then the cached token: {v2:#?}"
    );

    // A second repository pull with a different scope: its own token.
    let img2 = f.add_image("team/tok2", "v1", &[1024], 803);
    let r = get(&format!("{}/v2/up.local/team/tok2/manifests/v1", k.url));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(sha256(&r.body), img2.manifest.digest);
    assert_eq!(f.token_requests().len(), 2);

    // Wrong credentials at the token server: an error, never content.
    let bad = simple_mirror(&f.url, "      username: bob\n      password: nope\n");
    let r = get(&format!("{}/v2/up.local/team/tok/manifests/v1", bad.url));
    assert!(
        r.status >= 400 && r.status != 500 && !r.code().is_empty(),
        "wrong token credentials: {}",
        r.describe()
    );
}

/// Named after CVE-2026-33540 (distribution sent an upstream's
/// credentials to whatever token realm it named), so the class stays fixed.
#[test]
fn cve_2026_33540_upstream_credentials_never_go_to_a_foreign_token_realm() {
    let f = Faulty::start().unwrap();
    let img = f.add_image("team/realm", "v1", &[64 * 1024], 804);
    // The challenge names a realm on another host (another loopback
    // address), which issues tokens to anyone, as public registries do.
    let realm = f.token_auth_at(None, "127.0.0.2").unwrap();
    let creds = "      username: carol\n      password: s3cret-realm\n";
    let k = simple_mirror(&f.url, creds);
    let r = get(&format!("{}/v2/up.local/team/realm/manifests/v1", k.url));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(sha256(&r.body), img.manifest.digest);
    let tokens = f.token_requests();
    assert!(!tokens.is_empty(), "the realm was never asked");
    for (query, auth) in &tokens {
        assert_eq!(
            auth.as_deref(),
            None,
            "the upstream's credentials went to {realm} ({query})"
        );
    }
    // The operator hears of it: a metric and a log line.
    let metrics = String::from_utf8(get(&format!("{}/metrics", k.url)).body).unwrap();
    assert!(
        metrics.contains("kura_upstream_credentials_withheld_total 1"),
        "{metrics}"
    );
    assert!(
        k.log_text()
            .contains("credentials withheld from token realm"),
        "{}",
        k.log_text()
    );

    // Listed for this upstream: trusted with the credentials.
    let realm_host = realm
        .trim_start_matches("http://")
        .trim_end_matches("/token");
    let trusted = simple_mirror(
        &f.url,
        &format!("{creds}      token_realms: [\"{realm_host}\"]\n"),
    );
    let r = get(&format!(
        "{}/v2/up.local/team/realm/manifests/v1",
        trusted.url
    ));
    assert_eq!(r.status, 200, "{}", r.describe());
    let tokens = f.token_requests();
    assert_eq!(
        tokens.last().and_then(|(_, a)| a.as_deref()),
        Some("Basic Y2Fyb2w6czNjcmV0LXJlYWxt"),
        "carol:s3cret-realm, to a realm listed in token_realms"
    );
}

// ----- 9. TLS upstream with a private CA ----------------------------------------

#[test]
fn tls_upstream_with_private_ca() {
    let ca = TestCa::generate().unwrap();
    let up = Distribution::start_with(DistributionOptions {
        tls: Some((ca.cert.clone(), ca.key.clone())),
        ..Default::default()
    })
    .unwrap();
    assert!(up.url.starts_with("https://"));
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src_dir = work.path().join("src");
    let mut src = OciLayout::create(&src_dir).unwrap();
    let img = src
        .add_image("v1", &ImageSpec::new(1, 64 * 1024, 901))
        .unwrap();
    copy(
        &sk,
        &[],
        &oci(&src_dir, "v1"),
        &format!("docker://{}/team/tls:v1", up.host),
    )
    .unwrap();

    let yaml = mirror_yaml(
        &[upstream("up.local", &up.url, "")],
        &format!("  ca_files: [{}]\n", ca.ca_pem.display()),
    );
    let k = start_mirror(&yaml, &[]);
    copy(
        &sk,
        &[],
        &format!("docker://{}/up.local/team/tls:v1", host(&k)),
        &oci(&work.path().join("pulled"), "v1"),
    )
    .unwrap();
    assert_eq!(
        oci_ref(&work.path().join("pulled"), "v1").unwrap().digest,
        img.manifest.digest
    );
    assert_eq!(
        oci_blobs(&work.path().join("pulled")).unwrap(),
        img.all_digests()
    );

    // Without the CA: a clean 5xx registry error, and kura lives on.
    let untrusting = simple_mirror(&up.url, "");
    for path in [
        "/v2/up.local/team/tls/manifests/v1".to_owned(),
        format!("/v2/up.local/team/tls/blobs/{}", img.layers[0].digest),
    ] {
        let r = get(&format!("{}{path}", untrusting.url));
        assert!(
            matches!(r.status, 502..=504),
            "GET {path} from an untrusted upstream: {}\nkura log:\n{}",
            r.describe(),
            untrusting.log_text()
        );
        assert_eq!(r.code(), "UNAVAILABLE", "{}", r.describe());
    }
    assert_eq!(get(&format!("{}/v2/", untrusting.url)).status, 200);
    assert!(
        !untrusting.log_text().contains("panicked"),
        "kura panicked:\n{}",
        untrusting.log_text()
    );
}

// ----- 10. forward proxy -------------------------------------------------------

/// Pull an image through `k` and return what the upstream saw.
fn pull_through(k: &Kura, up: &Distribution, repo: &str, sk: &Skopeo, dest: &Path) -> Vec<Access> {
    let before = up.access_log().len();
    copy(
        sk,
        &[],
        &format!("docker://{}/up.local/{repo}:v1", host(k)),
        &oci(dest, "v1"),
    )
    .unwrap_or_else(|e| panic!("pull through kura: {e:#}\nkura log:\n{}", k.log_text()));
    new_access(up, before)
}

/// Every upstream request shows in the proxy's log, and nothing else.
fn assert_all_proxied(up_seen: &[Access], proxy: &TinyProxy, up: &Distribution, case: &str) {
    let mut want: Vec<(String, String)> = up_seen
        .iter()
        .map(|a| (a.method.clone(), format!("{}{}", up.url, a.target)))
        .collect();
    let mut got: Vec<(String, String)> = proxy
        .relayed()
        .into_iter()
        .map(|r| (r.method, r.url))
        .collect();
    want.sort();
    got.sort();
    assert!(
        !want.is_empty(),
        "{case}: the pull made no upstream request"
    );
    assert_eq!(
        got, want,
        "{case}: requests relayed by the proxy differ from those the upstream saw"
    );
}

#[test]
fn forward_proxy_from_env_and_config_and_no_proxy() {
    let up = Distribution::start().unwrap();
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let src_dir = w.join("src");
    let mut src = OciLayout::create(&src_dir).unwrap();
    let mut images = Vec::new();
    for (i, repo) in [
        "team/px-env",
        "team/px-cfg",
        "team/px-noenv",
        "team/px-nocfg",
    ]
    .iter()
    .enumerate()
    {
        let img = src
            .add_image(
                &format!("t{i}"),
                &ImageSpec::new(2, 32 * 1024, 1000 + i as u64),
            )
            .unwrap();
        copy(
            &sk,
            &[],
            &oci(&src_dir, &format!("t{i}")),
            &format!("docker://{}/{repo}:v1", up.host),
        )
        .unwrap();
        images.push(img);
    }
    let plain = mirror_yaml(&[upstream("up.local", &up.url, "")], "");
    // Make sure nothing inherited from the test's environment interferes.
    let clean: [(&str, &str); 6] = [
        ("NO_PROXY", ""),
        ("no_proxy", ""),
        ("HTTPS_PROXY", ""),
        ("https_proxy", ""),
        ("ALL_PROXY", ""),
        ("all_proxy", ""),
    ];

    // HTTP_PROXY from the environment.
    {
        let proxy = TinyProxy::start().unwrap();
        let mut env = clean.to_vec();
        env.push(("HTTP_PROXY", &proxy.url));
        let k = start_mirror(&plain, &env);
        let seen = pull_through(&k, &up, "team/px-env", &sk, &w.join("env"));
        assert_eq!(
            oci_ref(&w.join("env"), "v1").unwrap().digest,
            images[0].manifest.digest
        );
        assert_all_proxied(&seen, &proxy, &up, "HTTP_PROXY");
    }
    // mirror.proxy in the config.
    {
        let proxy = TinyProxy::start().unwrap();
        let yaml = mirror_yaml(
            &[upstream("up.local", &up.url, "")],
            &format!("  proxy: {}\n", proxy.url),
        );
        let k = start_mirror(&yaml, &clean);
        let seen = pull_through(&k, &up, "team/px-cfg", &sk, &w.join("cfg"));
        assert_eq!(
            oci_ref(&w.join("cfg"), "v1").unwrap().digest,
            images[1].manifest.digest
        );
        assert_all_proxied(&seen, &proxy, &up, "mirror.proxy");
    }
    // HTTP_PROXY with NO_PROXY=127.0.0.1: direct.
    {
        let proxy = TinyProxy::start().unwrap();
        let mut env = clean.to_vec();
        env.retain(|(k, _)| *k != "NO_PROXY");
        env.push(("HTTP_PROXY", &proxy.url));
        env.push(("NO_PROXY", "127.0.0.1"));
        let k = start_mirror(&plain, &env);
        let seen = pull_through(&k, &up, "team/px-noenv", &sk, &w.join("noenv"));
        assert!(!seen.is_empty());
        assert_eq!(
            oci_ref(&w.join("noenv"), "v1").unwrap().digest,
            images[2].manifest.digest
        );
        let relayed = proxy.relayed();
        assert!(
            relayed.is_empty(),
            "NO_PROXY=127.0.0.1 ignored: {relayed:?}"
        );
    }
    // mirror.proxy with mirror.no_proxy: direct.
    {
        let proxy = TinyProxy::start().unwrap();
        let yaml = mirror_yaml(
            &[upstream("up.local", &up.url, "")],
            &format!("  proxy: {}\n  no_proxy: \"127.0.0.1\"\n", proxy.url),
        );
        let k = start_mirror(&yaml, &clean);
        let seen = pull_through(&k, &up, "team/px-nocfg", &sk, &w.join("nocfg"));
        assert!(!seen.is_empty());
        assert_eq!(
            oci_ref(&w.join("nocfg"), "v1").unwrap().digest,
            images[3].manifest.digest
        );
        let relayed = proxy.relayed();
        assert!(relayed.is_empty(), "mirror.no_proxy ignored: {relayed:?}");
    }
}

/// An HTTPS upstream behind the proxy: HTTPS_PROXY, tunnelled with CONNECT
/// (the usual corporate setup for registry-1.docker.io and friends).
#[test]
fn https_upstream_through_proxy_uses_connect() {
    let ca = TestCa::generate().unwrap();
    let up = Distribution::start_with(DistributionOptions {
        tls: Some((ca.cert.clone(), ca.key.clone())),
        ..Default::default()
    })
    .unwrap();
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src_dir = work.path().join("src");
    let mut src = OciLayout::create(&src_dir).unwrap();
    let img = src
        .add_image("v1", &ImageSpec::new(2, 32 * 1024, 1101))
        .unwrap();
    copy(
        &sk,
        &[],
        &oci(&src_dir, "v1"),
        &format!("docker://{}/team/px-tls:v1", up.host),
    )
    .unwrap();
    let proxy = TinyProxy::start().unwrap();
    let yaml = mirror_yaml(
        &[upstream("up.local", &up.url, "")],
        &format!("  ca_files: [{}]\n", ca.ca_pem.display()),
    );
    let k = start_mirror(
        &yaml,
        &[
            ("HTTPS_PROXY", proxy.url.as_str()),
            ("HTTP_PROXY", ""),
            ("http_proxy", ""),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
            ("ALL_PROXY", ""),
            ("all_proxy", ""),
        ],
    );
    let seen = pull_through(&k, &up, "team/px-tls", &sk, &work.path().join("pulled"));
    assert!(!seen.is_empty());
    assert_eq!(
        oci_ref(&work.path().join("pulled"), "v1").unwrap().digest,
        img.manifest.digest
    );
    let relayed = proxy.relayed();
    assert!(
        !relayed.is_empty(),
        "HTTPS_PROXY ignored for an https upstream"
    );
    for r in &relayed {
        assert_eq!(
            (r.method.as_str(), r.url.as_str()),
            ("CONNECT", up.host.as_str()),
            "{relayed:?}"
        );
    }
}

/// A blob fill finishes in its own task even when its only client leaves.
#[test]
fn fill_completes_after_the_client_leaves() {
    let f = Faulty::start().unwrap();
    let data = kura_tests::image::XorShift::new(1201).bytes(32 * MIB as usize);
    let digest = f.add_blob(data);
    let k = simple_mirror(&f.url, "");
    let url = format!("{}/v2/up.local/team/leave/blobs/{digest}", k.url);
    // Read the first MiB, then hang up.
    let r = stream_hash(&http_client(), &url, None, |n| n < MIB);
    assert_eq!((r.status, r.cache.as_str()), (200, "miss"), "{r:?}");
    assert!(r.received < 32 * MIB);
    assert!(
        eventually(30, || blob_path(&k.data_dir, &digest).exists()),
        "the fill stopped with its client"
    );
    assert_eq!(file_digest(&blob_path(&k.data_dir, &digest)), digest);
    let r = stream_hash(&http_client(), &url, None, |_| true);
    assert_eq!((r.status, r.cache.as_str()), (200, "hit"), "{r:?}");
    assert_eq!(r.digest, digest);
    assert_eq!(f.blob_gets("team/leave", &digest), 1);
}

/// Blob redirects (Docker Hub sends blobs to a CDN) are followed, and the
/// upstream's credentials are not sent to the other host.
#[test]
fn blob_redirects_are_followed_without_leaking_credentials() {
    let registry = Faulty::start().unwrap();
    let cdn = Faulty::start().unwrap();
    let img = registry.add_image("team/cdn", "v1", &[512 * 1024], 1301);
    let layer = img.layers[0].digest.clone();
    cdn.add_blob(kura_tests::image::layer_tar(
        0,
        512 * 1024,
        1301u64.wrapping_mul(7919),
    ));
    registry.set_fault(
        &layer,
        Fault::Redirect {
            location: format!("{}/v2/cdn/blobs/{layer}?sig=abc", cdn.url),
        },
    );
    registry.token_auth(Some(("carol", "pw")));
    let k = simple_mirror(&registry.url, "      username: carol\n      password: pw\n");
    let r = get(&format!("{}/v2/up.local/team/cdn/blobs/{layer}", k.url));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(sha256(&r.body), layer);
    let at_cdn = cdn.requests();
    assert_eq!(at_cdn.len(), 1, "{at_cdn:?}");
    assert_eq!(at_cdn[0].query, "sig=abc");
    assert_eq!(
        at_cdn[0].authorization, None,
        "the upstream's credentials were sent to the CDN"
    );
    let at_registry: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|q| q.path == format!("/v2/team/cdn/blobs/{layer}"))
        .collect();
    assert_eq!(
        at_registry.last().map(|q| q.status),
        Some(307),
        "{at_registry:?}"
    );
}
