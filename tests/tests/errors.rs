//! Errors and hostile input against a running `kura serve`: unknown paths
//! and methods (404 and 405 with `Allow`), clients that half-close their
//! connection, and hostile requests (path traversal, odd encodings, bad
//! headers, absurd or deeply nested manifests): always a 4xx with an error
//! code, never a 5xx, and nothing written outside the data directory.
//!
//! Needs nothing but the kura binary. Requests go through
//! [`kura_tests::api::Api`] (raw ones over a plain TCP connection), which
//! checks every response's invariants.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use kura_tests::api::{noise, Reg, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST};
use kura_tests::KuraOptions;
use serde_json::json;

#[test]
fn errors_methods_and_unknown_paths() {
    let reg = Reg::start();
    let d = reg.push_blob("err/m", b"abc");
    for (method, path, status) in [
        ("GET", "/nothing-here".to_owned(), 404),
        ("GET", "/v3/".to_owned(), 404),
        ("GET", "/v2x".to_owned(), 404),
        ("GET", "/v2/err/m/unknown/x".to_owned(), 404),
        ("GET", "/v2/err/m".to_owned(), 404),
        ("DELETE", "/v2/".to_owned(), 405),
        ("POST", "/v2/".to_owned(), 405),
        ("PUT", "/v2/_catalog".to_owned(), 405),
        ("POST", "/v2/err/m/manifests/latest".to_owned(), 405),
        ("PATCH", format!("/v2/err/m/blobs/{d}"), 405),
        ("PUT", format!("/v2/err/m/blobs/{d}"), 405),
        ("GET", "/v2/err/m/blobs/uploads/".to_owned(), 405),
        ("DELETE", "/v2/err/m/tags/list".to_owned(), 405),
        ("BREW", "/v2/".to_owned(), 405),
    ] {
        let r = reg.raw(method, &path, &[], b"").expect(status);
        assert_eq!(r.code(), "UNSUPPORTED", "{method} {path}");
        if status == 405 {
            // RFC 9110: a 405 lists what the resource does allow.
            let allow = r.hdr("allow").to_owned();
            assert!(
                !allow.is_empty() && !allow.split(", ").any(|m| m == method),
                "{method} {path}: Allow {allow:?}"
            );
        }
    }
    let r = reg
        .raw("PUT", "/v2/err/m/blobs/uploads/", &[], b"")
        .expect(405);
    assert_eq!(r.hdr("allow"), "POST");
}

/// A client that shuts down its sending side after the request (scripted
/// health checks, `nc -N`) still gets the response.
#[test]
fn errors_half_closed_clients_get_their_answer() {
    let reg = Reg::start();
    let mut s = TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: kura\r\n\r\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "answer: {text:?}");
}

/// Path traversal, odd encodings and oversized input: always a 4xx with an
/// error code, never a 5xx, and nothing written outside the data directory.
#[test]
fn errors_hostile_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("nest").join("data");
    std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
    let reg = Reg::with(
        KuraOptions {
            data_dir: Some(data_dir.clone()),
            ..Default::default()
        },
        None,
    );
    let marker = format!("kuraevil{}", std::process::id());
    let good = noise(64, 41);
    let gd = reg.push_blob("h/a", &good);
    let hex = &gd[7..];
    let m = reg.push_image("h/a", "v1", "hostile");
    let up = reg.start_upload("h/a");
    let up_id = up.rsplit('/').next().unwrap().to_owned();
    let huge = "a/".repeat(5000) + "a";
    let huge_flat = "x".repeat(20_000);
    let huge_tag = "t".repeat(10_000);
    let trav = format!("..%2F..%2F..%2F..%2F{marker}");

    let requests: Vec<(&str, String)> = vec![
        ("GET", format!("/v2/h/a/%2e%2e/blobs/{gd}")),
        ("GET", format!("/v2/h/%2e%2e/%2e%2e/blobs/{gd}")),
        ("GET", format!("/v2/%2e%2e/%2e%2e/%2e%2e/{marker}")),
        ("GET", "/v2/../../../etc/passwd".to_owned()),
        ("GET", format!("/v2/h/a/../../h/a/blobs/{gd}")),
        (
            "GET",
            "/v2/h/a/blobs/..%2f..%2f..%2fetc%2fpasswd".to_owned(),
        ),
        ("GET", format!("/v2/h/a/blobs/sha256:{hex}%2f..%2f..")),
        ("GET", format!("/v2/h/a/blobs/sha256%3a{hex}%00")),
        ("GET", "/v2/h/a/blobs/%ff%fe".to_owned()),
        ("GET", "/v2/h/a/blobs/%".to_owned()),
        ("GET", "/v2/h/a/manifests/..%2f..%2fetc%2fpasswd".to_owned()),
        ("GET", "/v2/h/a/manifests/latest%00".to_owned()),
        ("GET", "/v2/h/a/manifests/%ff".to_owned()),
        ("GET", format!("/v2/h/a/manifests/{huge_tag}")),
        ("PUT", format!("/v2/h/a/manifests/{trav}")),
        ("PUT", format!("/v2/h/a%2f..%2f..%2f{marker}/manifests/v1")),
        ("DELETE", format!("/v2/h/a/manifests/{trav}")),
        ("POST", format!("/v2/h/a/blobs/uploads/{trav}")),
        ("PATCH", format!("/v2/h/a/blobs/uploads/{trav}")),
        ("PUT", format!("/v2/h/a/blobs/uploads/{trav}?digest={gd}")),
        ("DELETE", format!("/v2/h/a/blobs/uploads/{trav}")),
        ("GET", format!("/v2/h/a/blobs/uploads/{up_id}%2f..")),
        ("PATCH", format!("/v2/h/a/blobs/uploads/../../{marker}")),
        (
            "PUT",
            format!("/v2/h/a/blobs/uploads/{up_id}?digest=sha256:{hex}%2f..%2f{marker}"),
        ),
        (
            "POST",
            format!("/v2/h/a/blobs/uploads/?digest=..%2f..%2f{marker}"),
        ),
        (
            "POST",
            format!("/v2/h/a/blobs/uploads/?mount={gd}&from=..%2f..%2f{marker}"),
        ),
        (
            "POST",
            format!("/v2/h/a/blobs/uploads/?mount=..%2f{marker}&from=h/a"),
        ),
        ("GET", format!("/v2/h/a/referrers/..%2f{marker}")),
        ("GET", format!("/v2/{huge}/tags/list")),
        ("GET", format!("/v2/{huge_flat}/manifests/latest")),
        ("POST", format!("/v2/{huge}/blobs/uploads/")),
        ("GET", "/v2/h/a/tags/list?n=abc".to_owned()),
        ("GET", "/v2/h/a/tags/list?n=-5".to_owned()),
        ("GET", "/v2/h/a/tags/list?n=1e3".to_owned()),
        ("GET", "/v2/_catalog?n=%20".to_owned()),
        ("GET", "/v2/_catalog?n=18446744073709551616".to_owned()),
        ("GET", "/v2/h/a/blobs/uploads/".to_owned()),
        ("GET", "/v2/_catalog/x".to_owned()),
        ("GET", "/v2/h/a/tags".to_owned()),
        ("GET", "/v2/h/a/manifests/".to_owned()),
        ("GET", "/v2/h/a/blobs/".to_owned()),
        ("GET", "/v2/h/a/referrers/".to_owned()),
        ("GET", "/v2/h/a/blobs/uploads/x/y".to_owned()),
        ("GET", "/v2//blobs/uploads/".to_owned()),
        ("GET", "/v2/manifests/latest".to_owned()),
    ];
    for (method, path) in &requests {
        let r = reg.raw(method, path, &[("content-type", OCI_MANIFEST)], &m.manifest);
        assert!(
            (400..500).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.text()
        );
        let _ = r.code();
    }

    // Bad headers on real resources.
    let blob = format!("/v2/h/a/blobs/{gd}");
    for range in [
        "bytes=99999999999999999999999-",
        "bytes=--1",
        "bytes=0-1-2",
        "bytes= 5 - 3",
        "bytes=-99999999999999999999",
    ] {
        let r = reg.raw("GET", &blob, &[("range", range)], b"");
        assert!(
            r.status == 416 || r.status == 200 || r.status == 206,
            "Range {range:?}: {}",
            r.status
        );
    }
    for cr in [
        "bytes */*",
        "99999999999999999999-1",
        "1-0",
        "0--1",
        "a-b",
        "0-1/x",
        "bytes 0-",
    ] {
        let r = reg.raw("PATCH", &up, &[("content-range", cr)], b"abc");
        assert!(
            r.status == 400 || r.status == 416,
            "Content-Range {cr:?}: {} {}",
            r.status,
            r.text()
        );
    }
    // Manifests with absurd descriptors.
    for body in [
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": format!("sha256:{hex}/../../{marker}"), "size": 2}, "layers": []}),
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": gd, "size": -1}, "layers": []}),
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": gd, "size": 1e300}, "layers": []}),
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": gd, "size": 64}, "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": format!("../{marker}"), "size": 1}}),
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:../../x", "size": 1}]}),
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": gd, "size": 64}, "layers": [{"mediaType": OCI_LAYER, "digest": gd, "size": 64}], "annotations": {"a": 1}}),
        json!({"schemaVersion": "2"}),
        json!(null),
        json!("string"),
    ] {
        let r = reg.put_manifest("h/a", "absurd", None, &serde_json::to_vec(&body).unwrap());
        assert_eq!(r.status, 400, "{body}: {} {}", r.status, r.text());
    }
    // Deeply nested JSON.
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let r = reg.put_manifest("h/a", "deep", Some(OCI_MANIFEST), deep.as_bytes());
    r.error(400, "MANIFEST_INVALID");

    // The registry still works, and nothing landed outside the data dir.
    assert_eq!(reg.get(&blob).expect(200).body, good);
    let mut stray = Vec::new();
    walk(tmp.path(), &mut |p| {
        if !p.starts_with(&data_dir) && !p.to_string_lossy().contains(".log-") {
            stray.push(p.to_owned());
        }
        if p.to_string_lossy().contains(&marker) {
            stray.push(p.to_owned());
        }
    });
    assert!(
        stray.is_empty(),
        "files outside the data dir or named after the marker: {stray:?}"
    );
    for dir in [Path::new("/tmp"), Path::new("/"), Path::new("/etc")] {
        assert!(
            !dir.join(&marker).exists(),
            "{} was created",
            dir.join(&marker).display()
        );
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}
