//! Authentication against a running `kura serve` with an htpasswd file:
//! anonymous pulls with authenticated pushes, and a registry closed to
//! anonymous clients; wrong and garbage credentials get a Basic challenge.
//!
//! Needs `htpasswd` (Debian: apache2-utils) to write the bcrypt entry.

use std::path::{Path, PathBuf};
use std::process::Command;

use kura_tests::api::{Reg, Resp, OCI_MANIFEST};
use kura_tests::{sha256, KuraOptions};
use reqwest::Method;

fn htpasswd_config(dir: &Path, anonymous_pull: bool) -> PathBuf {
    let out = Command::new("htpasswd")
        .args(["-nbB", "user", "pass"])
        .output()
        .expect("running htpasswd");
    assert!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("user:$2"), "not a bcrypt entry: {line}");
    let pw = dir.join("htpasswd");
    std::fs::write(&pw, line.trim()).unwrap();
    let cfg = dir.join("kura.yaml");
    std::fs::write(
        &cfg,
        format!(
            "auth:\n  htpasswd: {}\n  anonymous_pull: {anonymous_pull}\n",
            pw.display()
        ),
    )
    .unwrap();
    cfg
}

fn auth_reg(anonymous_pull: bool) -> Reg {
    let dir = tempfile::tempdir().unwrap();
    let cfg = htpasswd_config(dir.path(), anonymous_pull);
    Reg::with(
        KuraOptions {
            config: Some(cfg),
            ..Default::default()
        },
        Some(dir),
    )
}

#[track_caller]
fn assert_challenge(r: Resp) {
    let r = if r.method == "HEAD" {
        r.expect(401)
    } else {
        r.error(401, "UNAUTHORIZED")
    };
    let ch = r.hdr("www-authenticate");
    assert!(ch.starts_with("Basic realm="), "challenge {ch:?}");
}

#[test]
fn auth_anonymous_pull_authenticated_push() {
    let reg = auth_reg(true);
    let user = reg.as_user("user", "pass");
    let img = user.push_image("auth/repo", "v1", "auth");

    // Anonymous pulls work.
    let anon = &reg.api;
    assert_eq!(
        anon.get("/v2/auth/repo/manifests/v1").expect(200).body,
        img.manifest
    );
    anon.head(&format!("/v2/auth/repo/manifests/{}", img.digest))
        .expect(200);
    assert_eq!(
        anon.get(&format!("/v2/auth/repo/blobs/{}", sha256(&img.config)))
            .expect(200)
            .body,
        img.config
    );
    anon.get("/v2/auth/repo/tags/list").expect(200);
    anon.get("/v2/_catalog").expect(200);

    // Anonymous writes are challenged.
    assert_challenge(anon.post("/v2/auth/repo/blobs/uploads/", b""));
    assert_challenge(anon.post(
        &format!("/v2/auth/repo/blobs/uploads/?digest={}", sha256(b"x")),
        b"x",
    ));
    assert_challenge(anon.put_manifest("auth/repo", "v2", Some(OCI_MANIFEST), &img.manifest));
    assert_challenge(anon.delete("/v2/auth/repo/manifests/v1"));
    assert_challenge(anon.delete(&format!("/v2/auth/repo/blobs/{}", sha256(&img.config))));
    // An upload session opened by the user cannot be driven anonymously.
    let loc = user.start_upload("auth/repo");
    assert_challenge(anon.patch(&loc, b"abc", Some((0, 2))));
    assert_challenge(anon.put_upload(&loc, &sha256(b"abc"), b"abc", None));
    assert_challenge(anon.delete(&loc));

    // Wrong credentials are challenged, for writes and for /v2/.
    for (u, p) in [
        ("user", "wrong"),
        ("nobody", "pass"),
        ("user", ""),
        ("", ""),
    ] {
        let bad = reg.as_user(u, p);
        assert_challenge(bad.post("/v2/auth/repo/blobs/uploads/", b""));
        assert_challenge(bad.get("/v2/"));
    }
    // Garbage Authorization headers.
    for h in [
        "Basic",
        "Basic !!!notbase64",
        "Bearer abc",
        "Basic dXNlcg==",
    ] {
        assert_challenge(
            anon.send(
                anon.req(Method::POST, "/v2/auth/repo/blobs/uploads/")
                    .header("authorization", h),
            ),
        );
    }

    // The user can do everything.
    user.get("/v2/").expect(200);
    user.put_manifest("auth/repo", "v2", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
    user.delete("/v2/auth/repo/manifests/v2").expect(202);
    user.delete(&loc).expect(204);
    // /v2/ without credentials tells clients how to authenticate.
    assert_challenge(anon.get("/v2/"));
}

#[test]
fn auth_without_anonymous_pull() {
    let reg = auth_reg(false);
    let user = reg.as_user("user", "pass");
    let img = user.push_image("auth/private", "v1", "auth-private");
    let anon = &reg.api;
    assert_challenge(anon.get("/v2/auth/private/manifests/v1"));
    assert_challenge(anon.head("/v2/auth/private/manifests/v1"));
    assert_challenge(anon.get(&format!("/v2/auth/private/blobs/{}", sha256(&img.config))));
    assert_challenge(anon.get("/v2/auth/private/tags/list"));
    assert_challenge(anon.get("/v2/_catalog"));
    assert_challenge(
        reg.as_user("user", "nope")
            .get("/v2/auth/private/manifests/v1"),
    );
    assert_eq!(
        user.get("/v2/auth/private/manifests/v1").expect(200).body,
        img.manifest
    );
}

#[test]
fn operator_pages_follow_the_pull_rules() {
    let client = kura_tests::http_client();
    let get = |reg: &Reg, path: &str, creds: Option<(&str, &str)>| {
        let mut rb = client.get(reg.url(path));
        if let Some((u, p)) = creds {
            rb = rb.basic_auth(u, Some(p));
        }
        rb.send().expect("request").status().as_u16()
    };
    let closed = auth_reg(false);
    let open = auth_reg(true);
    for path in ["/", "/_kura/status", "/metrics"] {
        assert_eq!(get(&closed, path, None), 401, "{path} without credentials");
        assert_eq!(get(&closed, path, Some(("user", "nope"))), 401, "{path}");
        assert_eq!(get(&closed, path, Some(("user", "pass"))), 200, "{path}");
        assert_eq!(get(&open, path, None), 200, "{path} with anonymous pulls");
    }
}
