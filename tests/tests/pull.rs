//! The distribution spec's pull workflow against a running `kura serve`:
//! the base endpoint, manifests by tag and by digest (OCI and Docker schema
//! 2, bytes and media type kept), blob GET and HEAD, range requests (RFC
//! 9110: unknown units, several ranges), 404s for unknown content, and
//! content visible only in its own repository.
//!
//! Needs nothing but the kura binary. Every request goes through
//! [`kura_tests::api::Api`], which checks what holds for every response (no
//! 5xx, `Docker-Distribution-API-Version`, error bodies with known codes).

use kura_tests::api::{
    desc, noise, Reg, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_MANIFEST,
};
use kura_tests::sha256;
use reqwest::Method;
use serde_json::json;

#[test]
fn pull_base_endpoint() {
    let reg = Reg::start();
    let r = reg.get("/v2/").expect(200);
    assert_eq!(r.hdr("docker-distribution-api-version"), "registry/2.0");
    reg.head("/v2/").expect(200);
    reg.get("/v2").expect(200);
}

#[test]
fn pull_manifest_by_tag_and_by_digest() {
    let reg = Reg::start();
    let repo = "pull/manifest";
    let img = reg.push_image(repo, "v1", "pull-manifest");
    let len = img.manifest.len().to_string();
    for reference in ["v1", img.digest.as_str()] {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let r = reg.get(&path).expect(200);
        assert_eq!(
            r.body, img.manifest,
            "manifest bytes must come back exactly as pushed"
        );
        assert_eq!(r.hdr("docker-content-digest"), img.digest);
        assert_eq!(r.hdr("content-type"), OCI_MANIFEST);
        assert_eq!(r.hdr("content-length"), len);

        let h = reg.head(&path).expect(200);
        assert_eq!(h.hdr("docker-content-digest"), img.digest);
        assert_eq!(h.hdr("content-type"), OCI_MANIFEST);
        assert_eq!(
            h.hdr("content-length"),
            len,
            "HEAD reports the size GET would send"
        );

        // On the wire: a HEAD response carries Content-Length but no body.
        let raw = reg.raw("HEAD", &path, &[], b"").expect(200);
        assert_eq!(raw.hdr("content-length"), len);
        assert!(
            raw.body.is_empty(),
            "HEAD sent {} body bytes",
            raw.body.len()
        );
    }
}

#[test]
fn pull_docker_manifest_keeps_its_media_type() {
    let reg = Reg::start();
    let repo = "pull/docker";
    let config = br#"{"architecture":"arm64","os":"linux"}"#.to_vec();
    let layer = noise(777, 3);
    reg.push_blob(repo, &config);
    reg.push_blob(repo, &layer);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG, &config),
        "layers": [desc(DOCKER_LAYER, &layer)],
    }))
    .unwrap();
    let d = reg.push_manifest(repo, "docker", &m);
    for reference in ["docker", d.as_str()] {
        let r = reg
            .get(&format!("/v2/{repo}/manifests/{reference}"))
            .expect(200);
        assert_eq!(r.hdr("content-type"), DOCKER_MANIFEST);
        assert_eq!(r.body, m);
    }
}

#[test]
fn pull_blob_get_and_head() {
    let reg = Reg::start();
    let data = noise(100_000, 11);
    let d = reg.push_blob("pull/blob", &data);
    let path = format!("/v2/pull/blob/blobs/{d}");
    let r = reg.get(&path).expect(200);
    assert_eq!(r.body, data);
    assert_eq!(r.hdr("docker-content-digest"), d);
    assert_eq!(r.hdr("content-length"), data.len().to_string());

    let h = reg.head(&path).expect(200);
    assert_eq!(h.hdr("docker-content-digest"), d);
    assert_eq!(h.hdr("content-length"), data.len().to_string());

    let raw = reg.raw("HEAD", &path, &[], b"").expect(200);
    assert_eq!(raw.hdr("content-length"), data.len().to_string());
    assert!(raw.body.is_empty(), "HEAD sent a body");

    // A digest with the ':' percent-encoded addresses the same blob.
    let enc = path.replace("sha256:", "sha256%3A");
    assert_eq!(reg.raw("GET", &enc, &[], b"").expect(200).body, data);
}

#[test]
fn pull_blob_range_requests() {
    let reg = Reg::start();
    let data = noise(1000, 12);
    let d = reg.push_blob("pull/range", &data);
    let path = format!("/v2/pull/range/blobs/{d}");
    let ranged = |range: &str| reg.send(reg.req(Method::GET, &path).header("range", range));

    let cases: &[(&str, usize, usize)] = &[
        ("bytes=0-99", 0, 100),
        ("bytes=100-199", 100, 200),
        ("bytes=0-0", 0, 1),
        ("bytes=999-999", 999, 1000),
        ("bytes=990-", 990, 1000),
        ("bytes=900-5000", 900, 1000), // end past the size is clipped
        ("bytes=-10", 990, 1000),      // suffix: the last 10 bytes
        ("bytes=-1", 999, 1000),
        ("bytes=-5000", 0, 1000), // suffix longer than the blob: all of it
    ];
    for &(range, start, end) in cases {
        let r = ranged(range).expect(206);
        assert_eq!(r.body, &data[start..end], "{range}");
        assert_eq!(
            r.hdr("content-range"),
            format!("bytes {}-{}/1000", start, end - 1),
            "{range}"
        );
        assert_eq!(
            r.hdr("content-length"),
            (end - start).to_string(),
            "{range}"
        );
        assert_eq!(r.hdr("docker-content-digest"), d, "{range}");
    }

    for range in [
        "bytes=1000-",
        "bytes=5000-6000",
        "bytes=1000-1000",
        "bytes=-0",
        "bytes=50-10",
    ] {
        let r = ranged(range).expect(416);
        assert_eq!(r.hdr("content-range"), "bytes */1000", "{range}");
    }
    // HEAD ignores Range.
    let h = reg
        .send(reg.req(Method::HEAD, &path).header("range", "bytes=0-9"))
        .expect(200);
    assert_eq!(h.hdr("content-length"), "1000");
}

/// RFC 9110 §14.2: "An origin server MUST ignore a Range header field that
/// contains a range unit it does not understand."
#[test]
fn pull_blob_range_with_unknown_unit_is_ignored() {
    let reg = Reg::start();
    let data = noise(1000, 13);
    let d = reg.push_blob("pull/range2", &data);
    let path = format!("/v2/pull/range2/blobs/{d}");
    let r = reg.send(reg.req(Method::GET, &path).header("range", "items=0-5"));
    assert_eq!(
        r.status,
        200,
        "Range with an unknown unit must be ignored: got {} {}",
        r.status,
        r.text()
    );
    assert_eq!(r.body, data);
}

/// RFC 9110: a server MAY ignore Range (200) or serve several ranges as
/// multipart (206); 416 means none of the ranges overlap the blob, which is
/// false here.
#[test]
fn pull_blob_satisfiable_multi_range_is_not_416() {
    let reg = Reg::start();
    let data = noise(1000, 14);
    let d = reg.push_blob("pull/range3", &data);
    let path = format!("/v2/pull/range3/blobs/{d}");
    let r = reg.send(
        reg.req(Method::GET, &path)
            .header("range", "bytes=0-9,20-29"),
    );
    assert!(
        r.status == 200 || r.status == 206,
        "a satisfiable multi-range request may be ignored (200) or served (206), not {}: {}",
        r.status,
        r.text()
    );
    if r.status == 200 {
        assert_eq!(r.body, data);
    }
}

#[test]
fn pull_unknown_content_is_404() {
    let reg = Reg::start();
    let img = reg.push_image("pull/known", "v1", "pull-unknown");
    let unknown = sha256(b"never pushed");

    reg.get(&format!("/v2/pull/known/blobs/{unknown}"))
        .error(404, "BLOB_UNKNOWN");
    reg.head(&format!("/v2/pull/known/blobs/{unknown}"))
        .expect(404);
    reg.get(&format!("/v2/pull/known/manifests/{unknown}"))
        .error(404, "MANIFEST_UNKNOWN");
    reg.head(&format!("/v2/pull/known/manifests/{unknown}"))
        .expect(404);
    reg.get("/v2/pull/known/manifests/nosuchtag")
        .error(404, "MANIFEST_UNKNOWN");
    reg.head("/v2/pull/known/manifests/nosuchtag").expect(404);
    // A blob's digest does not name a manifest.
    let config_digest = sha256(&img.config);
    reg.get(&format!("/v2/pull/known/manifests/{config_digest}"))
        .error(404, "MANIFEST_UNKNOWN");

    // A repository that does not exist at all.
    let r = reg.get("/v2/pull/never/manifests/latest").expect(404);
    assert!(
        ["MANIFEST_UNKNOWN", "NAME_UNKNOWN"].contains(&r.code().as_str()),
        "{}",
        r.text()
    );
    let r = reg
        .get(&format!("/v2/pull/never/blobs/{}", sha256(&img.config)))
        .expect(404);
    assert!(
        ["BLOB_UNKNOWN", "NAME_UNKNOWN"].contains(&r.code().as_str()),
        "{}",
        r.text()
    );
}

#[test]
fn pull_content_is_scoped_to_its_repository() {
    let reg = Reg::start();
    let img = reg.push_image("iso/a", "v1", "isolation");
    reg.get(&format!("/v2/iso/a/manifests/{}", img.digest))
        .expect(200);
    reg.get(&format!("/v2/iso/b/manifests/{}", img.digest))
        .expect(404);
    reg.get("/v2/iso/b/manifests/v1").expect(404);
    let layer = sha256(&img.layers[0]);
    reg.get(&format!("/v2/iso/a/blobs/{layer}")).expect(200);
    reg.get(&format!("/v2/iso/b/blobs/{layer}"))
        .error(404, "BLOB_UNKNOWN");
    // A prefix or nested name is a different repository too.
    reg.get(&format!("/v2/iso/blobs/{layer}")).expect(404);
    reg.get(&format!("/v2/iso/a/b/blobs/{layer}")).expect(404);
}
