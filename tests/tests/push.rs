//! The push workflow against a running `kura serve`: blob uploads
//! (monolithic POST, POST then PUT, chunked PATCHes, streamed PATCH; the
//! Content-Range rules and out-of-order chunks), digest mismatches and
//! invalid digests, sha512, cross-repository mounts, cancelled uploads and
//! upload sessions that belong to one repository; manifests by tag and by
//! digest, manifests naming missing blobs, invalid manifests, Content-Type
//! against mediaType, the size limit, indexes and their children; the
//! repository-name and tag grammars at and past their limits.
//!
//! Needs nothing but the kura binary. Requests go through
//! [`kura_tests::api::Api`], which checks every response's invariants.

use std::collections::BTreeSet;
use std::io::Cursor;

use kura_tests::api::{
    desc, image_manifest, index_of, noise, strings, with_query, Image, Reg, DOCKER_MANIFEST,
    OCI_EMPTY, OCI_INDEX, OCI_MANIFEST,
};
use kura_tests::sha256;
use reqwest::Method;
use serde_json::{json, Value};

#[test]
fn push_monolithic_single_post() {
    let reg = Reg::start();
    let data = noise(5000, 21);
    let d = sha256(&data);
    let r = reg
        .post(&format!("/v2/push/mono/blobs/uploads/?digest={d}"), &data)
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    let loc = r.hdr("location").to_owned();
    assert_eq!(
        reg.get(&loc).expect(200).body,
        data,
        "Location is a pullable blob URL"
    );
    // Pushing the same blob again is fine.
    reg.post(&format!("/v2/push/mono/blobs/uploads/?digest={d}"), &data)
        .expect(201);
    // The empty blob.
    let e = reg.push_blob("push/mono", b"");
    let r = reg.get(&format!("/v2/push/mono/blobs/{e}")).expect(200);
    assert!(r.body.is_empty());
    assert_eq!(r.hdr("content-length"), "0");
}

#[test]
fn push_post_then_put() {
    let reg = Reg::start();
    let data = noise(20_000, 22);
    let d = sha256(&data);
    let loc = reg.start_upload("push/postput");
    let r = reg.put_upload(&loc, &d, &data, None).expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    let blob_loc = r.hdr("location").to_owned();
    assert_eq!(reg.get(&blob_loc).expect(200).body, data);
    assert_eq!(blob_loc, format!("/v2/push/postput/blobs/{d}"));
    // The session is closed.
    reg.get(&loc).error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.put_upload(&loc, &d, &data, None)
        .error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn push_chunked_final_put_without_body() {
    let reg = Reg::start();
    let data = noise(10_000, 23);
    let d = sha256(&data);
    let mut loc = reg.start_upload("push/chunked");
    let bounds = [0usize, 1000, 1001, 4096, 10_000];
    for w in bounds.windows(2) {
        let (a, b) = (w[0], w[1]);
        let r = reg
            .patch(&loc, &data[a..b], Some((a as u64, b as u64 - 1)))
            .expect(202);
        assert_eq!(r.hdr("range"), format!("0-{}", b - 1));
        loc = r.hdr("location").to_owned();
        let s = reg.get(&loc).expect(204);
        assert_eq!(
            s.hdr("range"),
            format!("0-{}", b - 1),
            "upload status after {b} bytes"
        );
        assert_eq!(s.hdr("location"), loc);
    }
    let r = reg.put_upload(&loc, &d, b"", None).expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    assert_eq!(reg.get(r.hdr("location")).expect(200).body, data);
    reg.get(&loc).error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn push_chunked_final_chunk_in_put() {
    let reg = Reg::start();
    let data = noise(9000, 24);
    let d = sha256(&data);
    // With a Content-Range on the closing PUT.
    let loc = reg.start_upload("push/chunked2");
    let r = reg.patch(&loc, &data[..4000], Some((0, 3999))).expect(202);
    let loc = r.hdr("location").to_owned();
    let r = reg
        .put_upload(&loc, &d, &data[4000..], Some((4000, 8999)))
        .expect(201);
    assert_eq!(reg.get(r.hdr("location")).expect(200).body, data);

    // Without one.
    let data = noise(9000, 25);
    let d = sha256(&data);
    let loc = reg.start_upload("push/chunked2");
    let loc = reg
        .patch(&loc, &data[..5], Some((0, 4)))
        .expect(202)
        .hdr("location")
        .to_owned();
    let loc = reg
        .patch(&loc, &data[5..10], Some((5, 9)))
        .expect(202)
        .hdr("location")
        .to_owned();
    let r = reg.put_upload(&loc, &d, &data[10..], None).expect(201);
    assert_eq!(reg.get(r.hdr("location")).expect(200).body, data);
}

#[test]
fn push_streamed_patch_without_content_range() {
    let reg = Reg::start();
    let data = noise(300_000, 26);
    let d = sha256(&data);
    let mut loc = reg.start_upload("push/streamed");
    let mut sent = 0;
    for part in [&data[..100_000], &data[100_000..]] {
        // A reader body goes out with chunked transfer encoding: no length.
        let body = reqwest::blocking::Body::new(Cursor::new(part.to_vec()));
        let r = reg
            .send(
                reg.req(Method::PATCH, &loc)
                    .header("content-type", "application/octet-stream")
                    .body(body),
            )
            .expect(202);
        sent += part.len();
        assert_eq!(r.hdr("range"), format!("0-{}", sent - 1));
        loc = r.hdr("location").to_owned();
    }
    reg.put_upload(&loc, &d, b"", None).expect(201);
    assert_eq!(
        reg.get(&format!("/v2/push/streamed/blobs/{d}"))
            .expect(200)
            .body,
        data
    );
}

#[test]
fn push_out_of_order_chunks_are_416() {
    let reg = Reg::start();
    let data = noise(40, 27);
    let d = sha256(&data);
    let loc = reg.start_upload("push/order");
    let loc = reg
        .patch(&loc, &data[..10], Some((0, 9)))
        .expect(202)
        .hdr("location")
        .to_owned();

    for (a, b) in [(20u64, 29u64), (0, 9), (5, 14), (11, 20)] {
        let r = reg
            .patch(&loc, &data[a as usize..=b as usize], Some((a, b)))
            .expect(416);
        assert_eq!(
            r.hdr("range"),
            "0-9",
            "416 tells where the upload is ({a}-{b})"
        );
    }
    let s = reg.get(&loc).expect(204);
    assert_eq!(s.hdr("range"), "0-9");
    let loc = s.hdr("location").to_owned();
    // The session is still usable after the 416s.
    let loc = reg
        .patch(&loc, &data[10..20], Some((10, 19)))
        .expect(202)
        .hdr("location")
        .to_owned();
    // A final chunk out of order in the closing PUT is 416 as well.
    reg.put_upload(&loc, &d, &data[30..], Some((30, 39)))
        .expect(416);
    reg.put_upload(&loc, &d, &data[20..], Some((20, 39)))
        .expect(201);
    assert_eq!(
        reg.get(&format!("/v2/push/order/blobs/{d}"))
            .expect(200)
            .body,
        data
    );
}

#[test]
fn push_chunk_length_not_matching_content_range() {
    let reg = Reg::start();
    let data = noise(100, 28);
    let loc = reg.start_upload("push/badlen");
    let loc = reg
        .patch(&loc, &data[..10], Some((0, 9)))
        .expect(202)
        .hdr("location")
        .to_owned();
    // Content-Range says 100 bytes, the body has 10; and the other way round.
    for (range, body) in [((10u64, 109u64), &data[10..20]), ((10, 14), &data[10..20])] {
        let r = reg.patch(&loc, body, Some(range));
        assert!(
            r.status == 400 || r.status == 416,
            "{range:?}: {} {}",
            r.status,
            r.text()
        );
        assert!(
            ["SIZE_INVALID", "BLOB_UPLOAD_INVALID", "RANGE_INVALID"].contains(&r.code().as_str()),
            "{}",
            r.text()
        );
        assert_eq!(
            reg.get(&loc).expect(204).hdr("range"),
            "0-9",
            "a rejected chunk is not kept"
        );
    }
    // Malformed Content-Range values.
    for bad in [
        "garbage",
        "10-",
        "-9",
        "9-5",
        "bytes=a-b",
        "10-18446744073709551616",
    ] {
        let r = reg.send(
            reg.req(Method::PATCH, &loc)
                .header("content-range", bad)
                .body(data[10..20].to_vec()),
        );
        assert!(
            r.status == 400 || r.status == 416,
            "Content-Range {bad:?}: {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(reg.get(&loc).expect(204).hdr("range"), "0-9");
}

/// A Content-Range ending at u64::MAX announces a chunk length that does
/// not fit in a u64: a client error, not a crash.
#[test]
fn push_content_range_at_u64_max() {
    let reg = Reg::start();
    let loc = reg.start_upload("push/maxrange");
    for (method, target) in [
        ("PATCH", loc.clone()),
        (
            "PUT",
            with_query(&loc, &format!("digest={}", sha256(b"abc"))),
        ),
    ] {
        let r = reg.raw(
            method,
            &target,
            &[("content-range", "0-18446744073709551615")],
            b"abc",
        );
        assert!(
            r.status == 400 || r.status == 416,
            "{method}: {} {}",
            r.status,
            r.text()
        );
    }
    // The session is intact and still at offset 0.
    reg.get(&loc).expect(204);
    assert_eq!(
        reg.patch(&loc, b"abc", Some((0, 2)))
            .expect(202)
            .hdr("range"),
        "0-2"
    );
}

/// A Content-Range that is not visible ASCII is still a Content-Range: it
/// must be rejected, not ignored (ignoring it turns an out-of-order chunk
/// into one appended at the current offset).
#[test]
fn push_non_ascii_content_range_is_rejected() {
    let reg = Reg::start();
    let loc = reg.start_upload("push/nonascii");
    let r = reg.raw_bytes("PATCH", &loc, &[("content-range", b"100-102\xff")], b"abc");
    assert!(
        r.status == 400 || r.status == 416,
        "PATCH with Content-Range \"100-102\\xff\" at offset 0: {} (Range {:?})",
        r.status,
        r.header("range")
    );
    let s = reg.get(&loc).expect(204);
    assert_eq!(
        reg.patch(s.hdr("location"), b"abc", Some((0, 2)))
            .expect(202)
            .hdr("range"),
        "0-2",
        "nothing was stored by the rejected chunk"
    );
}

#[test]
fn push_digest_mismatch_is_rejected_and_not_stored() {
    let reg = Reg::start();
    let repo = "push/mismatch";
    let data = noise(4000, 29);
    let claimed = sha256(b"something else entirely");
    let blob = format!("/v2/{repo}/blobs/{claimed}");
    // `what` names the case in the failure message.
    let assert_absent = |what: &str| {
        let r = reg.get(&blob);
        assert_eq!(
            r.status, 404,
            "{what}: a blob that failed verification is retrievable"
        );
        assert_eq!(r.code(), "BLOB_UNKNOWN", "{what}");
        assert_eq!(reg.head(&blob).status, 404, "{what}: HEAD finds the blob");
    };

    // Single POST.
    reg.post(
        &format!("/v2/{repo}/blobs/uploads/?digest={claimed}"),
        &data,
    )
    .error(400, "DIGEST_INVALID");
    assert_absent("single post");
    // POST then PUT.
    let loc = reg.start_upload(repo);
    reg.put_upload(&loc, &claimed, &data, None)
        .error(400, "DIGEST_INVALID");
    assert_absent("post-put");
    // One PATCH then PUT (the registry may rename the single chunk).
    let loc = reg.start_upload(repo);
    let loc = reg
        .patch(&loc, &data, Some((0, 3999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.put_upload(&loc, &claimed, b"", None)
        .error(400, "DIGEST_INVALID");
    assert_absent("one chunk");
    // Several PATCHes then PUT.
    let loc = reg.start_upload(repo);
    let loc = reg
        .patch(&loc, &data[..1000], Some((0, 999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    let loc = reg
        .patch(&loc, &data[1000..], Some((1000, 3999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.put_upload(&loc, &claimed, b"", None)
        .error(400, "DIGEST_INVALID");
    assert_absent("chunks");
    // A chunk plus a final body.
    let loc = reg.start_upload(repo);
    let loc = reg
        .patch(&loc, &data[..1000], Some((0, 999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.put_upload(&loc, &claimed, &data[1000..], Some((1000, 3999)))
        .error(400, "DIGEST_INVALID");
    assert_absent("chunk and final body");
    // Large enough to be written in parts (> 8 MiB).
    let big = noise(9 * 1024 * 1024 + 17, 30);
    reg.post(&format!("/v2/{repo}/blobs/uploads/?digest={claimed}"), &big)
        .error(400, "DIGEST_INVALID");
    assert_absent("big single post");
    let loc = reg.start_upload(repo);
    reg.put_upload(&loc, &claimed, &big, None)
        .error(400, "DIGEST_INVALID");
    assert_absent("big post-put");
}

/// Claiming the digest of a blob another repository holds, with other
/// bytes, must neither link that blob here nor damage it.
#[test]
fn push_digest_mismatch_against_existing_blob() {
    let reg = Reg::start();
    let good = noise(2000, 31);
    let d = reg.push_blob("push/owner", &good);
    let bad = noise(2000, 32);
    reg.post(&format!("/v2/push/thief/blobs/uploads/?digest={d}"), &bad)
        .error(400, "DIGEST_INVALID");
    let loc = reg.start_upload("push/thief");
    let loc = reg
        .patch(&loc, &bad, Some((0, 1999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.put_upload(&loc, &d, b"", None)
        .error(400, "DIGEST_INVALID");
    reg.get(&format!("/v2/push/thief/blobs/{d}"))
        .error(404, "BLOB_UNKNOWN");
    assert_eq!(
        reg.get(&format!("/v2/push/owner/blobs/{d}"))
            .expect(200)
            .body,
        good
    );
}

#[test]
fn push_invalid_digest_syntax() {
    let reg = Reg::start();
    let repo = "push/baddigest";
    let data = b"hello";
    let hex = &sha256(data)[7..];
    for bad in [
        "sha256:zz".to_owned(),
        "notadigest".to_owned(),
        "sha256:".to_owned(),
        format!("sha256:{}", &hex[..63]),
        format!("SHA256:{hex}"),
        format!("sha256:{}", hex.to_uppercase()),
        "md5:5d41402abc4b2a76b9719d911017c592".to_owned(),
    ] {
        reg.post(&format!("/v2/{repo}/blobs/uploads/?digest={bad}"), data)
            .error(400, "DIGEST_INVALID");
        let loc = reg.start_upload(repo);
        reg.put_upload(&loc, &bad, data, None)
            .error(400, "DIGEST_INVALID");
        reg.get(&format!("/v2/{repo}/blobs/{bad}"))
            .error(400, "DIGEST_INVALID");
    }
    // Closing PUT without any digest.
    let loc = reg.start_upload(repo);
    reg.send(reg.req(Method::PUT, &loc).body(data.to_vec()))
        .error(400, "DIGEST_INVALID");
    // A manifest read of a reference that is neither tag nor digest asks
    // for something that cannot exist (as the conformance suite expects);
    // a write of one is the client's error.
    reg.get(&format!("/v2/{repo}/manifests/sha256:zz"))
        .error(404, "MANIFEST_UNKNOWN");
    reg.send(
        reg.req(Method::PUT, &format!("/v2/{repo}/manifests/sha256:zz"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(b"{}".to_vec()),
    )
    .error(400, "DIGEST_INVALID");
    reg.get(&format!("/v2/{repo}/referrers/sha256:zz"))
        .error(400, "DIGEST_INVALID");
}

#[test]
fn push_sha512_blobs() {
    let reg = Reg::start();
    use sha2::Digest as _;
    let data = noise(70_000, 33);
    let d = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&data)));
    // Single POST.
    let r = reg
        .post(&format!("/v2/push/sha512/blobs/uploads/?digest={d}"), &data)
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    assert_eq!(
        reg.get(&format!("/v2/push/sha512/blobs/{d}"))
            .expect(200)
            .body,
        data
    );
    // Chunked, announcing the algorithm (end-4c).
    let r = reg
        .post(
            "/v2/push/sha512b/blobs/uploads/?digest-algorithm=sha512",
            b"",
        )
        .expect(202);
    let loc = r.hdr("location").to_owned();
    let loc = reg
        .patch(&loc, &data[..30_000], Some((0, 29_999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    let loc = reg
        .patch(&loc, &data[30_000..], Some((30_000, 69_999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.put_upload(&loc, &d, b"", None).expect(201);
    assert_eq!(
        reg.get(&format!("/v2/push/sha512b/blobs/{d}"))
            .expect(200)
            .body,
        data
    );
}

#[test]
fn push_cross_repository_mount() {
    let reg = Reg::start();
    let data = noise(6000, 34);
    let d = reg.push_blob("mount/src", &data);

    let r = reg
        .post(
            &format!("/v2/mount/dst/blobs/uploads/?mount={d}&from=mount/src"),
            b"",
        )
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    let loc = r.hdr("location").to_owned();
    assert_eq!(reg.get(&loc).expect(200).body, data);
    assert_eq!(
        reg.get(&format!("/v2/mount/dst/blobs/{d}"))
            .expect(200)
            .body,
        data
    );

    // From a repository that lacks the blob: a new upload session instead.
    let r = reg
        .post(
            &format!("/v2/mount/other/blobs/uploads/?mount={d}&from=mount/empty"),
            b"",
        )
        .expect(202);
    let loc = r.hdr("location").to_owned();
    assert!(loc.contains("/v2/mount/other/blobs/uploads/"), "{loc}");
    reg.get(&format!("/v2/mount/other/blobs/{d}"))
        .error(404, "BLOB_UNKNOWN");
    reg.put_upload(&loc, &d, &data, None).expect(201);
    assert_eq!(
        reg.get(&format!("/v2/mount/other/blobs/{d}"))
            .expect(200)
            .body,
        data
    );

    // An unknown digest: also a session.
    let unknown = sha256(b"not here");
    reg.post(
        &format!("/v2/mount/third/blobs/uploads/?mount={unknown}&from=mount/src"),
        b"",
    )
    .expect(202);
    reg.get(&format!("/v2/mount/third/blobs/{unknown}"))
        .expect(404);
    // Without `from`, the registry may mount (201) or open a session (202).
    let r = reg.post(&format!("/v2/mount/fourth/blobs/uploads/?mount={d}"), b"");
    assert!(
        r.status == 201 || r.status == 202,
        "mount without from: {}",
        r.status
    );
    // Bad mount parameters.
    reg.post(
        "/v2/mount/fifth/blobs/uploads/?mount=sha256:zz&from=mount/src",
        b"",
    )
    .error(400, "DIGEST_INVALID");
    reg.post(
        &format!("/v2/mount/fifth/blobs/uploads/?mount={d}&from=Mount/SRC"),
        b"",
    )
    .error(400, "NAME_INVALID");
}

#[test]
fn push_cancel_upload() {
    let reg = Reg::start();
    let data = noise(100, 35);
    let loc = reg.start_upload("push/cancel");
    let loc = reg
        .patch(&loc, &data, Some((0, 99)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.delete(&loc).expect(204);
    reg.get(&loc).error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.patch(&loc, &data, Some((100, 199)))
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.put_upload(&loc, &sha256(&data), b"", None)
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.delete(&loc).error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.get(&format!("/v2/push/cancel/blobs/{}", sha256(&data)))
        .expect(404);
}

#[test]
fn push_upload_sessions_belong_to_their_repository() {
    let reg = Reg::start();
    let loc = reg.start_upload("sess/a");
    let id = loc.rsplit('/').next().unwrap().to_owned();
    let other = format!("/v2/sess/b/blobs/uploads/{id}");
    reg.get(&other).error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.patch(&other, b"abc", Some((0, 2)))
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.put_upload(&other, &sha256(b"abc"), b"abc", None)
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.delete(&other).error(404, "BLOB_UPLOAD_UNKNOWN");
    // Still alive where it was opened.
    reg.get(&loc).expect(204);

    // Ids that were never issued, well-formed or not.
    for id in [
        "0123456789abcdef0123456789abcdef",
        "nope",
        "ABCDEF0123456789ABCDEF0123456789",
    ] {
        let p = format!("/v2/sess/a/blobs/uploads/{id}");
        reg.get(&p).error(404, "BLOB_UPLOAD_UNKNOWN");
        reg.patch(&p, b"x", None).error(404, "BLOB_UPLOAD_UNKNOWN");
        reg.delete(&p).error(404, "BLOB_UPLOAD_UNKNOWN");
    }
}

#[test]
fn push_manifest_by_tag_and_by_digest() {
    let reg = Reg::start();
    let repo = "push/manifest";
    let img = Image::new("push-manifest");
    reg.push_blob(repo, &img.config);
    for l in &img.layers {
        reg.push_blob(repo, l);
    }
    // By tag.
    let r = reg
        .put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), img.digest);
    let loc = r.hdr("location").to_owned();
    assert_eq!(
        reg.get(&loc).expect(200).body,
        img.manifest,
        "Location is a pullable manifest URL"
    );
    // By digest.
    let other = image_manifest(&img.config, &img.layers[..1]);
    let od = sha256(&other);
    let r = reg
        .put_manifest(repo, &od, Some(OCI_MANIFEST), &other)
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), od);
    assert_eq!(r.hdr("location"), format!("/v2/{repo}/manifests/{od}"));
    assert_eq!(
        reg.get(&format!("/v2/{repo}/manifests/{od}"))
            .expect(200)
            .body,
        other
    );
    assert_eq!(
        reg.get(&format!("/v2/{repo}/tags/list")).expect(200).tags(),
        vec!["v1"],
        "push by digest makes no tag"
    );
    // Re-pointing a tag.
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &other)
        .expect(201);
    let r = reg.get(&format!("/v2/{repo}/manifests/v1")).expect(200);
    assert_eq!(r.hdr("docker-content-digest"), od);
    // The old manifest is still there by digest.
    reg.get(&format!("/v2/{repo}/manifests/{}", img.digest))
        .expect(200);
    // Without Content-Type the body's mediaType decides.
    let third = image_manifest(&img.layers[1], &img.layers[..1]);
    reg.push_blob(repo, &img.layers[1]);
    reg.put_manifest(repo, "noct", None, &third).expect(201);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/manifests/noct"))
            .expect(200)
            .hdr("content-type"),
        OCI_MANIFEST
    );
}

#[test]
fn push_manifest_by_sha512_digest_with_tags() {
    use sha2::Digest as _;
    let reg = Reg::start();
    let repo = "push/sha512tags";
    let img = Image::new("push-sha512-tags");
    reg.push_blob(repo, &img.config);
    for l in &img.layers {
        reg.push_blob(repo, l);
    }
    let d = format!(
        "sha512:{}",
        hex::encode(sha2::Sha512::digest(&img.manifest))
    );
    let r = reg
        .put_manifest(
            repo,
            &format!("{d}?tag=1.0&tag=latest&tag=1.0"),
            Some(OCI_MANIFEST),
            &img.manifest,
        )
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    let applied: BTreeSet<&str> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(str::trim)
        .collect();
    assert_eq!(applied, BTreeSet::from(["1.0", "latest"]), "OCI-Tag");
    // A tag answers with the algorithm the manifest was pushed under.
    for tag in ["1.0", "latest"] {
        let r = reg.get(&format!("/v2/{repo}/manifests/{tag}")).expect(200);
        assert_eq!(r.hdr("docker-content-digest"), d, "GET {tag}");
        assert_eq!(r.body, img.manifest);
        let r = reg.head(&format!("/v2/{repo}/manifests/{tag}")).expect(200);
        assert_eq!(r.hdr("docker-content-digest"), d, "HEAD {tag}");
    }
    let r = reg.get(&format!("/v2/{repo}/manifests/{d}")).expect(200);
    assert_eq!(r.hdr("docker-content-digest"), d);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/tags/list")).expect(200).tags(),
        vec!["1.0", "latest"]
    );
    // Every blob GET and HEAD names its digest too.
    for l in &img.layers {
        let ld = sha256(l);
        for r in [
            reg.get(&format!("/v2/{repo}/blobs/{ld}")).expect(200),
            reg.head(&format!("/v2/{repo}/blobs/{ld}")).expect(200),
        ] {
            assert_eq!(r.hdr("docker-content-digest"), ld);
        }
    }
    // One bad tag refuses the whole push: nothing is stored.
    let other = image_manifest(&img.config, &img.layers[..1]);
    let od = sha256(&other);
    reg.put_manifest(
        repo,
        &format!("{od}?tag=ok&tag=-bad"),
        Some(OCI_MANIFEST),
        &other,
    )
    .error(400, "TAG_INVALID");
    reg.get(&format!("/v2/{repo}/manifests/{od}"))
        .error(404, "MANIFEST_UNKNOWN");
    reg.get(&format!("/v2/{repo}/manifests/ok"))
        .error(404, "MANIFEST_UNKNOWN");
}

#[test]
fn push_manifest_referencing_missing_blobs() {
    let reg = Reg::start();
    let repo = "push/missing";
    let img = Image::new("missing-blobs");
    // Nothing pushed: config missing.
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    // Config present, one layer missing.
    reg.push_blob(repo, &img.config);
    reg.push_blob(repo, &img.layers[0]);
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    // The missing layer exists, but in another repository.
    reg.push_blob("push/elsewhere", &img.layers[1]);
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    reg.put_manifest(repo, &img.digest, Some(OCI_MANIFEST), &img.manifest)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    // Nothing was recorded.
    reg.get(&format!("/v2/{repo}/manifests/v1")).expect(404);
    reg.get(&format!("/v2/{repo}/manifests/{}", img.digest))
        .expect(404);
    // A descriptor whose size does not match the blob.
    reg.push_blob(repo, &img.layers[1]);
    let mut v: Value = serde_json::from_slice(&img.manifest).unwrap();
    v["layers"][0]["size"] = json!(img.layers[0].len() + 1);
    let r = reg
        .put_manifest(
            repo,
            "badsize",
            Some(OCI_MANIFEST),
            &serde_json::to_vec(&v).unwrap(),
        )
        .expect(400);
    assert!(
        ["MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "SIZE_INVALID"].contains(&r.code().as_str()),
        "{}",
        r.text()
    );
    // With everything present it goes through.
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
}

#[test]
fn push_manifest_digest_mismatch() {
    let reg = Reg::start();
    let repo = "push/mdigest";
    let img = Image::new("manifest-digest");
    reg.push_blob(repo, &img.config);
    for l in &img.layers {
        reg.push_blob(repo, l);
    }
    let wrong = sha256(b"not this manifest");
    reg.put_manifest(repo, &wrong, Some(OCI_MANIFEST), &img.manifest)
        .error(400, "DIGEST_INVALID");
    reg.get(&format!("/v2/{repo}/manifests/{wrong}"))
        .expect(404);
    reg.get(&format!("/v2/{repo}/manifests/{}", img.digest))
        .expect(404);
}

#[test]
fn push_invalid_manifests() {
    let reg = Reg::start();
    let repo = "push/invalid";
    let config = b"{}".to_vec();
    reg.push_blob(repo, &config);
    let bodies: Vec<(Option<&str>, Vec<u8>)> = vec![
        (Some(OCI_MANIFEST), b"not json".to_vec()),
        (Some(OCI_MANIFEST), b"".to_vec()),
        (Some(OCI_MANIFEST), b"[]".to_vec()),
        (Some(OCI_MANIFEST), b"{}".to_vec()),
        (Some(OCI_MANIFEST), b"{\"schemaVersion\":2,".to_vec()),
        (None, br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#.to_vec()),
        (Some(OCI_MANIFEST), serde_json::to_vec(&json!({"schemaVersion": 3, "mediaType": OCI_MANIFEST, "config": desc(OCI_EMPTY, &config), "layers": []})).unwrap()),
        (Some(OCI_MANIFEST), serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []})).unwrap()),
        (Some(OCI_MANIFEST), serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": "sha256:abc", "size": 2}, "layers": []})).unwrap()),
        (Some(OCI_INDEX), serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "layers": []})).unwrap()),
        (Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), serde_json::to_vec(&json!({"schemaVersion": 1, "name": "x"})).unwrap()),
    ];
    for (i, (ct, body)) in bodies.iter().enumerate() {
        reg.put_manifest(repo, &format!("bad{i}"), *ct, body)
            .error(400, "MANIFEST_INVALID");
        reg.get(&format!("/v2/{repo}/manifests/bad{i}")).expect(404);
    }
}

#[test]
fn push_manifest_content_type_must_match_media_type() {
    let reg = Reg::start();
    let repo = "push/ctype";
    let img = Image::new("content-type");
    reg.push_blob(repo, &img.config);
    for l in &img.layers {
        reg.push_blob(repo, l);
    }
    for ct in [
        DOCKER_MANIFEST,
        OCI_INDEX,
        "text/plain",
        "application/vnd.oci.image.manifest.v2+json",
    ] {
        reg.put_manifest(repo, "v1", Some(ct), &img.manifest)
            .error(400, "MANIFEST_INVALID");
    }
    reg.get(&format!("/v2/{repo}/manifests/v1")).expect(404);
    // Parameters on the right type are fine.
    reg.put_manifest(
        repo,
        "v1",
        Some(&format!("{OCI_MANIFEST}; charset=utf-8")),
        &img.manifest,
    )
    .expect(201);
}

#[test]
fn push_manifest_size_limit() {
    let reg = Reg::start();
    let repo = "push/big";
    let config = b"{}".to_vec();
    reg.push_blob(repo, &config);
    let manifest_of = |total: usize| -> Vec<u8> {
        let mut v = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_EMPTY, &config),
            "layers": [],
            "annotations": {"pad": ""}
        });
        let base = serde_json::to_vec(&v).unwrap().len();
        v["annotations"]["pad"] = json!("x".repeat(total - base));
        let b = serde_json::to_vec(&v).unwrap();
        assert_eq!(b.len(), total);
        b
    };
    // 4 MiB is the size the spec says registries should accept.
    let at_limit = manifest_of(4 * 1024 * 1024);
    reg.put_manifest(repo, "four-mib", Some(OCI_MANIFEST), &at_limit)
        .expect(201);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/manifests/four-mib"))
            .expect(200)
            .body,
        at_limit
    );
    let over = manifest_of(4 * 1024 * 1024 + 1);
    reg.put_manifest(repo, "too-big", Some(OCI_MANIFEST), &over)
        .expect(413);
    reg.get(&format!("/v2/{repo}/manifests/too-big"))
        .expect(404);
}

#[test]
fn push_index_requires_its_manifests() {
    let reg = Reg::start();
    let repo = "push/index";
    let a = Image::new("index-a");
    let b = Image::new("index-b");
    let index = index_of(&[(OCI_MANIFEST, &a.manifest), (OCI_MANIFEST, &b.manifest)]);
    reg.put_manifest(repo, "multi", Some(OCI_INDEX), &index)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    reg.push_image(repo, "a", "index-a");
    // One child still missing.
    reg.put_manifest(repo, "multi", Some(OCI_INDEX), &index)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    // A child that exists only in another repository does not count.
    reg.push_image("push/index-other", "b", "index-b");
    reg.put_manifest(repo, "multi", Some(OCI_INDEX), &index)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    reg.get(&format!("/v2/{repo}/manifests/multi")).expect(404);

    reg.push_image(repo, "b", "index-b");
    let r = reg
        .put_manifest(repo, "multi", Some(OCI_INDEX), &index)
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), sha256(&index));
    let g = reg.get(&format!("/v2/{repo}/manifests/multi")).expect(200);
    assert_eq!(g.hdr("content-type"), OCI_INDEX);
    assert_eq!(g.body, index);
}

#[test]
fn push_invalid_repository_names() {
    let reg = Reg::start();
    let d = sha256(b"x");
    let long = "a".repeat(256);
    let long_nested = format!("{}b", "abc/".repeat(64)); // 257 characters
    let names = [
        "Upper",
        "a/Upper",
        "a/../b",
        "..",
        "a/..",
        "./a",
        "a//b",
        "a/b/",
        "_a",
        "a/_b",
        "a-",
        "-a",
        "a.",
        "a..b",
        "a___b",
        "a%2fb",
        "a:b",
        "a@b",
        "é",
        long.as_str(),
        long_nested.as_str(),
    ];
    for name in names {
        for (method, path) in [
            ("GET", format!("/v2/{name}/tags/list")),
            ("GET", format!("/v2/{name}/manifests/latest")),
            ("HEAD", format!("/v2/{name}/manifests/latest")),
            ("GET", format!("/v2/{name}/blobs/{d}")),
            ("POST", format!("/v2/{name}/blobs/uploads/")),
            (
                "POST",
                format!("/v2/{name}/blobs/uploads/?digest={}", sha256(b"")),
            ),
            ("PUT", format!("/v2/{name}/manifests/latest")),
            ("DELETE", format!("/v2/{name}/blobs/{d}")),
            ("GET", format!("/v2/{name}/referrers/{d}")),
        ] {
            let path = path.replace('é', "%C3%A9");
            let r = reg.raw(method, &path, &[], b"");
            if method == "HEAD" {
                assert_eq!(r.status, 400, "{method} {path}");
            } else {
                r.error(400, "NAME_INVALID");
            }
        }
    }
    // A leading slash makes an empty first component.
    reg.raw("GET", "/v2//a/tags/list", &[], b"")
        .error(400, "NAME_INVALID");
}

/// The longest names the grammar allows (255 characters) must work end to
/// end, including on disk.
#[test]
fn push_longest_repository_names() {
    let reg = Reg::start();
    let flat = "a".repeat(255);
    let nested = format!("{}abc", "abcd/".repeat(50)); // 253
    let nested = format!("{nested}de"); // 255
    assert_eq!(flat.len(), 255);
    assert_eq!(nested.len(), 255);
    for name in [&flat, &nested] {
        let img = reg.push_image(name, "latest", "long-name");
        assert_eq!(
            reg.get(&format!("/v2/{name}/manifests/latest"))
                .expect(200)
                .body,
            img.manifest
        );
        assert_eq!(
            reg.get(&format!("/v2/{name}/tags/list")).expect(200).tags(),
            vec!["latest"]
        );
        let loc = reg.start_upload(name);
        reg.patch(&loc, b"abc", Some((0, 2))).expect(202);
    }
    let cat = reg.get("/v2/_catalog").expect(200).json();
    let repos = strings(&cat["repositories"]);
    assert!(
        repos.contains(&flat) && repos.contains(&nested),
        "{repos:?}"
    );
}

#[test]
fn push_invalid_and_boundary_tags() {
    let reg = Reg::start();
    let repo = "push/tags";
    let img = reg.push_image(repo, "base", "tags");
    let long_ok = format!("_{}", "a".repeat(127));
    let too_long = "a".repeat(129);
    for tag in [
        "-bad",
        ".bad",
        "bad+tag",
        "bad~tag",
        "bad%2Ftag",
        "%2e%2e",
        too_long.as_str(),
        "bad%00",
    ] {
        // A read of a reference that cannot exist is a missing manifest
        // (the conformance suite probes for missing manifests this way);
        // a write of one is the client's error.
        reg.raw("GET", &format!("/v2/{repo}/manifests/{tag}"), &[], b"")
            .error(404, "MANIFEST_UNKNOWN");
        reg.raw("HEAD", &format!("/v2/{repo}/manifests/{tag}"), &[], b"")
            .expect(404);
        let r = reg.raw(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("content-type", OCI_MANIFEST)],
            &img.manifest,
        );
        r.error(400, "TAG_INVALID");
    }
    for tag in [
        "v1.0",
        "_underscore",
        "UPPER-case_1.2",
        long_ok.as_str(),
        "0",
    ] {
        reg.put_manifest(repo, tag, Some(OCI_MANIFEST), &img.manifest)
            .expect(201);
        reg.get(&format!("/v2/{repo}/manifests/{tag}")).expect(200);
    }
    let tags = reg.get(&format!("/v2/{repo}/tags/list")).expect(200).tags();
    assert!(
        tags.contains(&long_ok) && tags.contains(&"UPPER-case_1.2".to_owned()),
        "{tags:?}"
    );
}
