//! Docker token auth and access rules against a running `kura serve`,
//! with real clients: skopeo and podman log in and push and pull with
//! kura's own tokens, containerd pulls with credentials, and each denied
//! case answers what the clients understand (401 with a challenge they
//! follow, 403 DENIED, an immutable or protected tag refused).
//!
//! Needs (Debian): skopeo, podman, containerd.

use std::path::Path;

use kura_tests::api::{Api, Reg};
use kura_tests::image::{oci_blobs, ImageSpec, OciLayout};
use kura_tests::peers::{Containerd, Podman, Skopeo};
use kura_tests::KuraOptions;

const PASSWORD: &str = "s3cret-pass";

/// A registry with users alice (group team), bob (no group) and admin
/// (group admins), rules per repository, and kura's own token service.
fn registry() -> Reg {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt_hash(PASSWORD);
    let pw = dir.path().join("htpasswd");
    std::fs::write(&pw, format!("alice:{hash}\nbob:{hash}\nadmin:{hash}\n")).unwrap();
    let cfg = dir.path().join("kura.yaml");
    std::fs::write(
        &cfg,
        format!(
            "auth:
  htpasswd: {}
  groups:
    team: [alice]
    admins: [admin]
  rules:
    - repositories: team/**
      subjects: [group:team]
      rights: [pull, push]
    - repositories: public/**
      subjects: [\"*\"]
      rights: [pull]
    - repositories: \"**\"
      subjects: [group:admins]
      rights: [\"*\"]
  token: {{}}
",
            pw.display()
        ),
    )
    .unwrap();
    Reg::with(
        KuraOptions {
            config: Some(cfg),
            ..Default::default()
        },
        Some(dir),
    )
}

fn bcrypt_hash(pw: &str) -> String {
    let out = std::process::Command::new("htpasswd")
        .args(["-nbB", "x", pw])
        .output()
        .expect("running htpasswd (apache2-utils)");
    let line = String::from_utf8(out.stdout).unwrap();
    line.trim().strip_prefix("x:").unwrap().to_owned()
}

fn layout(
    dir: &Path,
) -> (
    std::path::PathBuf,
    kura_tests::image::Image,
    kura_tests::image::Image,
) {
    let path = dir.join("layout");
    let mut l = OciLayout::create(&path).unwrap();
    let one = l.add_image("one", &ImageSpec::new(2, 30_000, 31)).unwrap();
    let two = l.add_image("two", &ImageSpec::new(1, 30_000, 32)).unwrap();
    (path, one, two)
}

/// `skopeo login` as `user` (the password every test user has).
fn login(skopeo: &Skopeo, user: &str, host: &str) {
    skopeo
        .run(&[
            "login",
            "--tls-verify=false",
            "-u",
            user,
            "-p",
            PASSWORD,
            host,
        ])
        .unwrap();
}

fn copy(skopeo: &Skopeo, src: &str, dest: &str) -> anyhow::Result<()> {
    skopeo.copy(&["--preserve-digests"], src, dest)
}

fn pulled(skopeo: &Skopeo, image: &str) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let out = tempfile::tempdir()?;
    let dir = out.path().join("oci");
    copy(
        skopeo,
        &format!("docker://{image}"),
        &format!("oci:{}:x", dir.display()),
    )?;
    oci_blobs(&dir)
}

#[test]
fn the_token_flow_seen_on_the_wire() {
    let reg = registry();
    let anon = Api::for_kura(&reg.kura);
    // A stranger is sent to the token service, with the scope it needs.
    let r = anon
        .get("/v2/team/app/tags/list")
        .error(401, "UNAUTHORIZED");
    let challenge = r.hdr("www-authenticate");
    let realm = format!("http://127.0.0.1:{}/auth/token", reg.kura.port);
    assert_eq!(
        challenge,
        format!("Bearer realm=\"{realm}\",service=\"kura\",scope=\"repository:team/app:pull\"")
    );
    let client = kura_tests::http_client();
    let token_for = |user: Option<&str>, scope: &str| {
        let mut rb = client.get(format!("{realm}?service=kura&scope={scope}"));
        if let Some(u) = user {
            rb = rb.basic_auth(u, Some(PASSWORD));
        }
        rb.send().unwrap()
    };
    // Wrong password: no token.
    let r = client
        .get(format!(
            "{realm}?service=kura&scope=repository:team/app:pull"
        ))
        .basic_auth("alice", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let token = |resp: reqwest::blocking::Response| -> String {
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
        assert_eq!(v["expires_in"], 300);
        v["token"].as_str().unwrap().to_owned()
    };
    let alice = token(token_for(Some("alice"), "repository:team/app:pull,push"));
    let bearer = |t: &str, path: &str| {
        client
            .get(format!("{}{path}", reg.kura.url))
            .bearer_auth(t)
            .send()
            .unwrap()
    };
    assert_eq!(bearer(&alice, "/v2/").status(), 200);
    assert_eq!(
        bearer(&alice, "/v2/team/app/tags/list").status(),
        404,
        "allowed; no such repository yet"
    );
    // Another repository the rules allow: a 401 naming its scope, so the
    // client fetches a token for it.
    let r = bearer(&alice, "/v2/team/web/tags/list");
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("repository:team/web:pull"));
    // A repository the rules do not allow: 403.
    let secret = token(token_for(Some("alice"), "repository:secret/x:pull"));
    assert_eq!(bearer(&secret, "/v2/secret/x/tags/list").status(), 403);
    // A token for anonymous callers carries what they may do.
    let public = token(token_for(None, "repository:public/x:pull"));
    assert_eq!(bearer(&public, "/v2/public/x/tags/list").status(), 404);
    let tampered = format!("{}x", &alice[..alice.len() - 1]);
    assert_eq!(bearer(&tampered, "/v2/team/app/tags/list").status(), 401);
}

#[test]
fn skopeo_and_podman_log_in_push_and_pull_with_kuras_tokens() {
    let reg = registry();
    let host = format!("127.0.0.1:{}", reg.kura.port);
    let dir = tempfile::tempdir().unwrap();
    let (layout, one, _) = layout(dir.path());
    let src = |tag: &str| format!("oci:{}:{tag}", layout.display());

    let skopeo = Skopeo::new().unwrap();
    // Without logging in: refused, with the registry's reason.
    let err = copy(
        &skopeo,
        &src("one"),
        &format!("docker://{host}/team/app:v1"),
    )
    .expect_err("an anonymous push went through");
    assert!(
        format!("{err:#}").to_lowercase().contains("unauthorized"),
        "{err:#}"
    );

    login(&skopeo, "alice", &host);
    copy(
        &skopeo,
        &src("one"),
        &format!("docker://{host}/team/app:v1"),
    )
    .unwrap();
    assert_eq!(
        pulled(&skopeo, &format!("{host}/team/app:v1")).unwrap(),
        one.all_digests()
    );
    // alice may push, not move a tag (no overwrite right)...
    let err = copy(
        &skopeo,
        &src("two"),
        &format!("docker://{host}/team/app:v1"),
    )
    .expect_err("a tag moved without the overwrite right");
    assert!(format!("{err:#}").contains("overwrite"), "{err:#}");
    // ...nor push outside her team.
    let err = copy(
        &skopeo,
        &src("one"),
        &format!("docker://{host}/public/app:v1"),
    )
    .expect_err("pushed to a pull-only repository");
    let text = format!("{err:#}").to_lowercase();
    assert!(
        text.contains("denied") || text.contains("unauthorized"),
        "{text}"
    );

    // podman, as bob: may pull public content only.
    let admin = Skopeo::new().unwrap();
    login(&admin, "admin", &host);
    copy(
        &admin,
        &src("two"),
        &format!("docker://{host}/public/tool:v1"),
    )
    .unwrap();
    let podman = Podman::new().unwrap();
    let authfile = dir.path().join("podman-auth.json");
    let authfile = authfile.to_str().unwrap();
    podman
        .run(&[
            "login",
            "--authfile",
            authfile,
            "--tls-verify=false",
            "-u",
            "bob",
            "-p",
            PASSWORD,
            &host,
        ])
        .unwrap();
    podman
        .run(&[
            "pull",
            "--authfile",
            authfile,
            "--tls-verify=false",
            &format!("{host}/public/tool:v1"),
        ])
        .unwrap();
    let err = podman
        .run(&[
            "pull",
            "--authfile",
            authfile,
            "--tls-verify=false",
            &format!("{host}/team/app:v1"),
        ])
        .expect_err("bob pulled team content");
    let text = format!("{err:#}").to_lowercase();
    assert!(
        text.contains("denied") || text.contains("unauthorized"),
        "{text}"
    );
    // And anonymous podman pulls public content.
    let anon = Podman::new().unwrap();
    anon.run(&[
        "pull",
        "--tls-verify=false",
        &format!("{host}/public/tool:v1"),
    ])
    .unwrap();
    // bob pushes nowhere.
    let err = podman
        .run(&[
            "push",
            "--authfile",
            authfile,
            "--tls-verify=false",
            &format!("{host}/public/tool:v1"),
            &format!("{host}/public/tool:v2"),
        ])
        .expect_err("bob pushed");
    let text = format!("{err:#}").to_lowercase();
    assert!(
        text.contains("denied") || text.contains("unauthorized"),
        "{text}"
    );
    // Every request after the logins went with a bearer token from kura.
    let log = reg.kura.log_text();
    for user in ["alice", "bob", "admin"] {
        assert!(
            log.contains(&format!("token issued user=\"{user}\"")),
            "no token issued to {user}:\n{log}"
        );
    }
}

#[test]
fn containerd_pulls_with_credentials() {
    let reg = registry();
    let host = format!("127.0.0.1:{}", reg.kura.port);
    let dir = tempfile::tempdir().unwrap();
    let (layout, one, _) = layout(dir.path());
    let admin = Skopeo::new().unwrap();
    login(&admin, "admin", &host);
    copy(
        &admin,
        &format!("oci:{}:one", layout.display()),
        &format!("docker://{host}/team/app:v1"),
    )
    .unwrap();

    let ctrd = Containerd::start().unwrap();
    let image = format!("{host}/team/app:v1");
    let err = ctrd
        .ctr(&["image", "pull", "--plain-http", &image])
        .expect_err("containerd pulled without credentials");
    assert!(
        format!("{err:#}").to_lowercase().contains("unauthorized")
            || format!("{err:#}").contains("401"),
        "{err:#}"
    );
    let user = format!("alice:{PASSWORD}");
    ctrd.ctr(&["image", "pull", "--plain-http", "--user", &user, &image])
        .unwrap();
    let listed = ctrd.ctr(&["image", "ls", "-q"]).unwrap();
    assert!(listed.contains(&image), "{listed}");
    let content = ctrd.ctr(&["content", "ls", "-q"]).unwrap();
    for d in one.all_digests() {
        assert!(
            content.contains(&d),
            "{d} not in containerd's content store:\n{content}"
        );
    }
}
