//! The registry over in-memory storage: the protocol flows end to end,
//! without HTTP. (The HTTP-level suite against the real binary is in
//! tests/tests/{pull,push,discovery,management,errors,…}.rs.)

use std::sync::atomic::Ordering;

mod common;

use common::api::*;

use common::TestHost;
use futures::executor::block_on;
use http::{Method, StatusCode};
use kura_core::storage::{MemoryStorage, Storage};
use kura_core::{Digest, Registry, RegistryConfig};
use serde_json::json;

fn registry() -> Reg {
    Registry::new(
        MemoryStorage::new(),
        TestHost::at(1_000),
        RegistryConfig::default(),
    )
}

fn blob_keys(reg: &Reg) -> Vec<String> {
    block_on(reg.storage().list("blobs/")).unwrap()
}

#[test]
fn base_and_unknown_routes() {
    let reg = registry();
    let r = call(&reg, Method::GET, "/v2/", &[], "");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");
    let r = call(&reg, Method::GET, "/v3/x", &[], "");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&reg, Method::PATCH, "/v2/", &[], "");
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "UNSUPPORTED");
}

#[test]
fn monolithic_push_pull_and_ranges() {
    let reg = registry();
    let bytes = data(10_000, 1);
    let d = push_blob(&reg, "a/b", &bytes);
    let r = call(&reg, Method::GET, &format!("/v2/a/b/blobs/{d}"), &[], "");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), bytes.as_slice());
    assert_eq!(r.header("docker-content-digest"), d.to_string());
    assert_eq!(r.header("content-length"), "10000");

    let r = call(&reg, Method::HEAD, &format!("/v2/a/b/blobs/{d}"), &[], "");
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), "10000");

    let r = call(
        &reg,
        Method::GET,
        &format!("/v2/a/b/blobs/{d}"),
        &[("range", "bytes=100-199")],
        "",
    );
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.as_ref(), &bytes[100..200]);
    assert_eq!(r.header("content-range"), "bytes 100-199/10000");

    let r = call(
        &reg,
        Method::GET,
        &format!("/v2/a/b/blobs/{d}"),
        &[("range", "bytes=10000-")],
        "",
    );
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), "bytes */10000");

    // Another repository cannot read it without a mount.
    let r = call(&reg, Method::GET, &format!("/v2/other/blobs/{d}"), &[], "");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "BLOB_UNKNOWN");
}

fn start(reg: &Reg, repo: &str) -> String {
    let r = call(
        reg,
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        "",
    );
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), "0-0");
    r.header("location").to_owned()
}

#[test]
fn chunked_upload_with_resumed_hash() {
    let reg = registry();
    let bytes = data(300_000, 2);
    let loc = start(&reg, "chunky");
    let mut off = 0;
    for chunk in bytes.chunks(70_001) {
        let cr = format!("{}-{}", off, off + chunk.len() - 1);
        let r = call(
            &reg,
            Method::PATCH,
            &loc,
            &[("content-range", &cr)],
            chunk.to_vec(),
        );
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        off += chunk.len();
        assert_eq!(r.header("range"), format!("0-{}", off - 1));
    }
    let r = call(&reg, Method::GET, &loc, &[], "");
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("range"), format!("0-{}", bytes.len() - 1));

    let d = Digest::sha256(&bytes);
    let r = call(&reg, Method::PUT, &format!("{loc}?digest={d}"), &[], "");
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = call(&reg, Method::GET, &format!("/v2/chunky/blobs/{d}"), &[], "");
    assert_eq!(r.body.as_ref(), bytes.as_slice());
    // The session is gone, and so are its chunks.
    assert_eq!(
        call(&reg, Method::GET, &loc, &[], "").code(),
        "BLOB_UPLOAD_UNKNOWN"
    );
    assert!(block_on(reg.storage().list("uploads/")).unwrap().is_empty());
}

#[test]
fn single_chunk_then_put_with_final_chunk() {
    let reg = registry();
    let bytes = data(5000, 3);
    // One PATCH and an empty PUT: the chunk is renamed into place.
    let loc = start(&reg, "one");
    call(&reg, Method::PATCH, &loc, &[], bytes.clone());
    let d = Digest::sha256(&bytes);
    assert_eq!(
        call(&reg, Method::PUT, &format!("{loc}?digest={d}"), &[], "").status,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&reg, Method::GET, &format!("/v2/one/blobs/{d}"), &[], "")
            .body
            .as_ref(),
        bytes.as_slice()
    );

    // A PATCH and a PUT carrying the rest.
    let loc = start(&reg, "two");
    call(&reg, Method::PATCH, &loc, &[], bytes[..1000].to_vec());
    let r = call(
        &reg,
        Method::PUT,
        &format!("{loc}?digest={d}"),
        &[("content-range", "1000-4999")],
        bytes[1000..].to_vec(),
    );
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        call(&reg, Method::GET, &format!("/v2/two/blobs/{d}"), &[], "")
            .body
            .as_ref(),
        bytes.as_slice()
    );
}

#[test]
fn sha512_uploads_are_verified() {
    let reg = registry();
    let bytes = data(9000, 4);
    let d = Digest::compute(kura_core::Algorithm::Sha512, &bytes);
    let loc = start(&reg, "five12");
    call(&reg, Method::PATCH, &loc, &[], bytes[..4000].to_vec());
    call(&reg, Method::PATCH, &loc, &[], bytes[4000..].to_vec());
    let r = call(&reg, Method::PUT, &format!("{loc}?digest={d}"), &[], "");
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        call(&reg, Method::GET, &format!("/v2/five12/blobs/{d}"), &[], "")
            .body
            .as_ref(),
        bytes.as_slice()
    );
}

#[test]
fn digest_mismatch_commits_nothing() {
    let reg = registry();
    let bytes = data(1000, 5);
    let wrong = Digest::sha256(b"other");
    // Monolithic.
    let r = call(
        &reg,
        Method::POST,
        &format!("/v2/m/blobs/uploads/?digest={wrong}"),
        &[],
        bytes.clone(),
    );
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "DIGEST_INVALID");
    // Chunked, one chunk and several.
    for parts in [1, 3] {
        let loc = start(&reg, "m");
        for c in bytes.chunks(bytes.len() / parts + 1) {
            call(&reg, Method::PATCH, &loc, &[], c.to_vec());
        }
        let r = call(&reg, Method::PUT, &format!("{loc}?digest={wrong}"), &[], "");
        assert_eq!(r.code(), "DIGEST_INVALID");
    }
    assert!(blob_keys(&reg).is_empty(), "{:?}", blob_keys(&reg));
    assert_eq!(
        call(&reg, Method::HEAD, &format!("/v2/m/blobs/{wrong}"), &[], "").status,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn out_of_order_chunk_is_416() {
    let reg = registry();
    let loc = start(&reg, "ooo");
    call(
        &reg,
        Method::PATCH,
        &loc,
        &[("content-range", "0-9")],
        vec![1u8; 10],
    );
    let r = call(
        &reg,
        Method::PATCH,
        &loc,
        &[("content-range", "20-29")],
        vec![1u8; 10],
    );
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("range"), "0-9");
    // A chunk whose body is shorter than its Content-Range is refused too.
    let r = call(
        &reg,
        Method::PATCH,
        &loc,
        &[("content-range", "10-29")],
        vec![1u8; 5],
    );
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        call(&reg, Method::GET, &loc, &[], "").header("range"),
        "0-9"
    );
}

#[test]
fn manifests_tags_and_references() {
    let reg = registry();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = data(2000, 6);
    let cd = push_blob(&reg, "app", &config);
    let ld = push_blob(&reg, "app", &layer);
    let m = image_manifest(&cd, config.len(), &[(ld.clone(), layer.len())]);
    let md = Digest::sha256(&m);

    let r = call(
        &reg,
        Method::PUT,
        "/v2/app/manifests/v1",
        &[("content-type", OCI_MANIFEST)],
        m.clone(),
    );
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("location"), format!("/v2/app/manifests/{md}"));
    assert_eq!(r.header("docker-content-digest"), md.to_string());

    for reference in ["v1".to_owned(), md.to_string()] {
        let r = call(
            &reg,
            Method::GET,
            &format!("/v2/app/manifests/{reference}"),
            &[],
            "",
        );
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.as_ref(), m.as_slice(), "exact bytes");
        assert_eq!(r.header("content-type"), OCI_MANIFEST);
        assert_eq!(r.header("docker-content-digest"), md.to_string());
    }

    // Missing blob.
    let missing = image_manifest(&cd, config.len(), &[(Digest::sha256(b"nope"), 4)]);
    let r = call(
        &reg,
        Method::PUT,
        "/v2/app/manifests/v2",
        &[("content-type", OCI_MANIFEST)],
        missing,
    );
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    // Wrong size in the descriptor.
    let lying = image_manifest(&cd, config.len(), &[(ld.clone(), layer.len() + 1)]);
    let r = call(
        &reg,
        Method::PUT,
        "/v2/app/manifests/v2",
        &[("content-type", OCI_MANIFEST)],
        lying,
    );
    assert_eq!(r.code(), "MANIFEST_INVALID");
    // Blobs of another repository do not count.
    let r = call(
        &reg,
        Method::PUT,
        "/v2/elsewhere/manifests/v1",
        &[("content-type", OCI_MANIFEST)],
        m.clone(),
    );
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    // Digest in the URL must match the bytes.
    let url = format!("/v2/app/manifests/{}", Digest::sha256(b"x"));
    let r = call(
        &reg,
        Method::PUT,
        &url,
        &[("content-type", OCI_MANIFEST)],
        m.clone(),
    );
    assert_eq!(r.code(), "DIGEST_INVALID");

    // An index over it.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": md.to_string(), "size": m.len(), "platform": {"os": "linux", "architecture": "amd64"}}]
    }))
    .unwrap();
    let ct = [("content-type", "application/vnd.oci.image.index.v1+json")];
    let r = call(&reg, Method::PUT, "/v2/app/manifests/multi", &ct, index);
    assert_eq!(r.status, StatusCode::CREATED);

    // Delete by digest removes the tags pointing at it.
    let r = call(
        &reg,
        Method::DELETE,
        &format!("/v2/app/manifests/{md}"),
        &[],
        "",
    );
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        call(&reg, Method::GET, "/v2/app/manifests/v1", &[], "").code(),
        "MANIFEST_UNKNOWN"
    );
    let tags = call(&reg, Method::GET, "/v2/app/tags/list", &[], "").json();
    assert_eq!(tags["tags"], json!(["multi"]));
}

#[test]
fn tag_pagination() {
    let reg = registry();
    let config = b"{}".to_vec();
    let cd = push_blob(&reg, "p", &config);
    let m = image_manifest(&cd, config.len(), &[]);
    for t in ["b", "a", "d", "c", "e"] {
        let r = call(
            &reg,
            Method::PUT,
            &format!("/v2/p/manifests/{t}"),
            &[("content-type", OCI_MANIFEST)],
            m.clone(),
        );
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = call(&reg, Method::GET, "/v2/p/tags/list?n=2", &[], "");
    assert_eq!(r.json()["tags"], json!(["a", "b"]));
    assert_eq!(
        r.header("link"),
        "</v2/p/tags/list?n=2&last=b>; rel=\"next\""
    );
    let r = call(&reg, Method::GET, "/v2/p/tags/list?n=2&last=d", &[], "");
    assert_eq!(r.json()["tags"], json!(["e"]));
    assert_eq!(r.header("link"), "");
    let r = call(&reg, Method::GET, "/v2/p/tags/list?n=0", &[], "");
    assert_eq!(r.json()["tags"], json!([]));
    let r = call(&reg, Method::GET, "/v2/p/tags/list?n=-1", &[], "");
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(&reg, Method::GET, "/v2/nope/tags/list", &[], "");
    assert_eq!(r.code(), "NAME_UNKNOWN");
    let r = call(&reg, Method::GET, "/v2/_catalog", &[], "");
    assert_eq!(r.json()["repositories"], json!(["p"]));
}

#[test]
fn referrers() {
    let reg = registry();
    let config = b"{}".to_vec();
    let cd = push_blob(&reg, "r", &config);
    let subject = image_manifest(&cd, 2, &[]);
    let sd = Digest::sha256(&subject);
    call(
        &reg,
        Method::PUT,
        "/v2/r/manifests/v1",
        &[("content-type", OCI_MANIFEST)],
        subject.clone(),
    );
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd.to_string(), "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": sd.to_string(), "size": subject.len()},
    }))
    .unwrap();
    let ad = Digest::sha256(&artifact);
    let r = call(
        &reg,
        Method::PUT,
        &format!("/v2/r/manifests/{ad}"),
        &[("content-type", OCI_MANIFEST)],
        artifact,
    );
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("oci-subject"), sd.to_string());

    let r = call(&reg, Method::GET, &format!("/v2/r/referrers/{sd}"), &[], "");
    assert_eq!(
        r.header("content-type"),
        "application/vnd.oci.image.index.v1+json"
    );
    let list = r.json();
    assert_eq!(list["manifests"][0]["digest"], json!(ad.to_string()));
    assert_eq!(
        list["manifests"][0]["artifactType"],
        json!("application/vnd.example.sbom")
    );
    let r = call(
        &reg,
        Method::GET,
        &format!("/v2/r/referrers/{sd}?artifactType=other"),
        &[],
        "",
    );
    assert_eq!(r.json()["manifests"], json!([]));
    assert_eq!(r.header("oci-filters-applied"), "artifactType");

    call(
        &reg,
        Method::DELETE,
        &format!("/v2/r/manifests/{ad}"),
        &[],
        "",
    );
    let r = call(&reg, Method::GET, &format!("/v2/r/referrers/{sd}"), &[], "");
    assert_eq!(r.json()["manifests"], json!([]));
}

#[test]
fn mount_and_delete() {
    let reg = registry();
    let bytes = data(100, 7);
    let d = push_blob(&reg, "src", &bytes);
    let r = call(
        &reg,
        Method::POST,
        &format!("/v2/dst/blobs/uploads/?mount={d}&from=src"),
        &[],
        "",
    );
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        call(&reg, Method::GET, &format!("/v2/dst/blobs/{d}"), &[], "")
            .body
            .as_ref(),
        bytes.as_slice()
    );
    // Not mountable: a new session instead.
    let r = call(
        &reg,
        Method::POST,
        &format!("/v2/dst2/blobs/uploads/?mount={d}&from=nothere"),
        &[],
        "",
    );
    assert_eq!(r.status, StatusCode::ACCEPTED);

    assert_eq!(
        call(&reg, Method::DELETE, &format!("/v2/dst/blobs/{d}"), &[], "").status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        call(&reg, Method::GET, &format!("/v2/dst/blobs/{d}"), &[], "").code(),
        "BLOB_UNKNOWN"
    );
    assert_eq!(
        call(&reg, Method::GET, &format!("/v2/src/blobs/{d}"), &[], "").status,
        StatusCode::OK
    );
}

#[test]
fn deletes_can_be_disabled() {
    let mut config = RegistryConfig::default();
    config.delete_enabled = false;
    let reg = Registry::new(MemoryStorage::new(), TestHost::at(1_000), config);
    let d = push_blob(&reg, "x", b"abc");
    let r = call(&reg, Method::DELETE, &format!("/v2/x/blobs/{d}"), &[], "");
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "UNSUPPORTED");
}

#[test]
fn stale_uploads_are_purged() {
    let reg = registry();
    let old = start(&reg, "s");
    call(&reg, Method::PATCH, &old, &[], vec![1u8; 100]);
    reg.host().clock.store(1_000 + 10_000, Ordering::SeqCst);
    let fresh = start(&reg, "s");
    assert_eq!(block_on(reg.purge_stale_uploads(5_000)).unwrap(), 1);
    assert_eq!(
        call(&reg, Method::GET, &old, &[], "").code(),
        "BLOB_UPLOAD_UNKNOWN"
    );
    assert_eq!(
        call(&reg, Method::GET, &fresh, &[], "").status,
        StatusCode::NO_CONTENT
    );
}

/// `kura fsck`'s three steps over this registry, with every blob verified.
fn problems(report: &kura_core::fsck::FsckReport) -> Vec<String> {
    report
        .findings
        .iter()
        .filter(|f| !f.repaired)
        .map(|f| format!("{} {}", f.severity, f.problem))
        .collect()
}

#[test]
fn fsck_finds_corrupt_and_dangling_content_and_repairs_only_what_it_can_prove() {
    use kura_core::fsck::{FsckOptions, Severity};
    use kura_core::storage::PutMode;
    let reg = registry();
    let config = b"{}".to_vec();
    let cd = push_blob(&reg, "team/app", &config);
    let layer = data(3000, 7);
    let ld = push_blob(&reg, "team/app", &layer);
    let m = image_manifest(&cd, config.len(), &[(ld.clone(), layer.len())]);
    let md = Digest::sha256(&m);
    let r = call(
        &reg,
        Method::PUT,
        "/v2/team/app/manifests/v1",
        &[("content-type", OCI_MANIFEST)],
        m,
    );
    assert_eq!(r.status, StatusCode::CREATED);

    let clean = fsck(&reg);
    assert_eq!(problems(&clean), Vec::<String>::new());
    assert_eq!((clean.blobs, clean.manifests, clean.tags), (3, 1, 1));

    // A flipped byte in the layer, a tag pointing at nothing, a blob no
    // repository links, and an upload abandoned half way.
    let mut bad = layer.clone();
    bad[1234] ^= 1;
    let store = reg.storage();
    let blob_key = |d: &Digest| format!("blobs/sha256/{}/{}", &d.hex()[..2], d.hex());
    block_on(store.put(&blob_key(&ld), bad.into(), PutMode::Overwrite)).unwrap();
    let ghost = Digest::sha256(b"never pushed");
    block_on(store.put(
        "repositories/team/app/_manifests/tags/ghost",
        ghost.to_string().into(),
        PutMode::Overwrite,
    ))
    .unwrap();
    let orphan = b"orphan".to_vec();
    let od = Digest::sha256(&orphan);
    block_on(store.put(&blob_key(&od), orphan.into(), PutMode::Overwrite)).unwrap();
    let upload = start(&reg, "team/app");
    call(&reg, Method::PATCH, &upload, &[], vec![9u8; 100]);

    let report = fsck(&reg);
    let found = problems(&report);
    assert_eq!(report.remaining(Severity::Damage), 2, "{found:#?}");
    assert!(
        found.contains(&format!(
            "DAMAGE blob {ld} is corrupt: its bytes hash to {}",
            Digest::sha256(&{
                let mut b = layer.clone();
                b[1234] ^= 1;
                b
            })
        )),
        "{found:#?}"
    );
    assert!(
        found.contains(&format!(
            "DAMAGE team/app:ghost points at {ghost}, which is not stored"
        )),
        "{found:#?}"
    );
    assert!(found.contains(&format!("note blob {od} (6 bytes) is in no repository")));
    assert_eq!(report.remaining(Severity::Leftover), 1, "{found:#?}");

    // Repair removes the corrupt blob; the upload is younger than the
    // stale limit and stays, and so does the hosted tag (it names what
    // was lost).
    let mut report = report;
    let options = FsckOptions {
        stale_upload_ms: 60_000,
    };
    block_on(reg.fsck_repair(&mut report, &options)).unwrap();
    assert_eq!(report.repaired(), 1, "{:#?}", problems(&report));
    assert!(block_on(store.head(&blob_key(&ld))).unwrap().is_none());
    assert_eq!(
        call(
            &reg,
            Method::GET,
            &format!("/v2/team/app/blobs/{ld}"),
            &[],
            ""
        )
        .code(),
        "BLOB_UNKNOWN"
    );

    // Past the stale limit the upload goes too. The layer is now missing
    // where the manifest needs it: damage a repair cannot undo, named.
    reg.host().clock.store(1_000 + 120_000, Ordering::SeqCst);
    let mut report = fsck(&reg);
    block_on(reg.fsck_repair(&mut report, &options)).unwrap();
    let left = problems(&report);
    assert_eq!(report.repaired(), 1, "{left:#?}");
    assert_eq!(
        call(&reg, Method::GET, &upload, &[], "").code(),
        "BLOB_UPLOAD_UNKNOWN"
    );
    assert!(
        left.contains(&format!(
            "DAMAGE team/app@{md} needs blob {ld}, whose bytes are missing"
        )),
        "{left:#?}"
    );
    assert!(
        left.contains(&format!(
            "DAMAGE team/app links blob {ld}, whose bytes are missing"
        )),
        "{left:#?}"
    );

    // A client pushes the layer again: only the ghost tag is left.
    push_blob(&reg, "team/app", &layer);
    let report = fsck(&reg);
    assert_eq!(
        report.remaining(Severity::Damage),
        1,
        "{:#?}",
        problems(&report)
    );

    // The repository's link to the config goes (a client's blob DELETE):
    // the bytes are there, but pulls of the manifest fail.
    assert_eq!(
        call(
            &reg,
            Method::DELETE,
            &format!("/v2/team/app/blobs/{cd}"),
            &[],
            ""
        )
        .status,
        StatusCode::ACCEPTED
    );
    let found = problems(&fsck(&reg));
    assert!(
        found.contains(&format!(
            "DAMAGE team/app@{md} needs blob {cd}, which team/app does not link"
        )),
        "{found:#?}"
    );
}

/// CVE-2026-41888 (distribution): a tag DELETE went through with deletes
/// disabled. Here a tag DELETE and a manifest DELETE by digest are both
/// refused, and the tag still resolves.
#[test]
fn cve_2026_41888_tag_delete_honours_delete_enabled_false() {
    let mut config = RegistryConfig::default();
    config.delete_enabled = false;
    let reg = Registry::new(MemoryStorage::new(), TestHost::at(1_000), config);
    let cfg = b"{}".to_vec();
    let cd = push_blob(&reg, "x", &cfg);
    let m = image_manifest(&cd, cfg.len(), &[]);
    let md = Digest::sha256(&m);
    let r = call(
        &reg,
        Method::PUT,
        "/v2/x/manifests/v1",
        &[("content-type", OCI_MANIFEST)],
        m,
    );
    assert_eq!(r.status, StatusCode::CREATED);
    for reference in ["v1".to_owned(), md.to_string()] {
        let r = call(
            &reg,
            Method::DELETE,
            &format!("/v2/x/manifests/{reference}"),
            &[],
            "",
        );
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{reference}");
        assert_eq!(r.code(), "UNSUPPORTED");
    }
    let r = call(
        &reg,
        Method::GET,
        "/v2/x/manifests/v1",
        &[("accept", OCI_MANIFEST)],
        "",
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-content-digest"), md.to_string());
}
