//! `kura doctor` against real failures, and kura's client commands
//! (`doctor --server`, `prefetch`) against a TLS kura with a private CA:
//! an upstream with token auth (`kura_tests::faulty`), tinyproxy in
//! front of it, a dead proxy with and without `NO_PROXY`, wrong
//! credentials, an unwritable data directory, TLS files that do not match.
//!
//! Needs tinyproxy and openssl (Debian packages).

use std::path::Path;
use std::process::{Command, Output};

use kura_tests::api::Api;
use kura_tests::faulty::Faulty;
use kura_tests::upstream::{TestCa, TinyProxy};
use kura_tests::{free_port, kura_bin, Kura, KuraOptions};

/// Proxy variables cleared, so the machine's own do not leak in.
const CLEAN_ENV: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn doctor(config: &Path, env: &[(&str, &str)], extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(kura_bin());
    cmd.arg("doctor").arg("--config").arg(config).args(extra);
    for k in CLEAN_ENV {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out: Output = cmd.output().expect("running kura doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write_config(dir: &Path, name: &str, yaml: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p
}

fn upstream_yaml(data: &Path, url: &str, extra_upstream: &str, extra_mirror: &str) -> String {
    format!(
        "data_dir: {}\nmirror:\n{extra_mirror}  upstreams:\n    - name: up.local\n      url: {url}\n{extra_upstream}",
        data.display()
    )
}

#[test]
fn doctor_checks_upstream_auth_proxies_and_storage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let f = Faulty::start().unwrap();
    f.token_auth(Some(("alice", "s3cret")));

    // Everything right: the token handshake with the credentials works.
    let good = write_config(
        dir.path(),
        "good.yaml",
        &upstream_yaml(
            &data,
            &f.url,
            "      username: alice\n      password: s3cret\n",
            "",
        ),
    );
    let (ok, out) = doctor(&good, &[], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("ok    config:"), "{out}");
    assert!(out.contains("ok    storage:"), "{out}");
    assert!(
        out.contains("upstream up.local")
            && out.contains("token auth works with the configured credentials"),
        "{out}"
    );
    assert!(out.contains("direct (no proxy"), "{out}");
    let basic = f
        .token_requests()
        .iter()
        .filter(|(_, auth)| auth.is_some())
        .count();
    assert!(basic >= 1, "the token server never saw the credentials");

    // Wrong password: the token server refuses, doctor says so and fails.
    let wrong = write_config(
        dir.path(),
        "wrong.yaml",
        &upstream_yaml(
            &data,
            &f.url,
            "      username: alice\n      password: nope\n",
            "",
        ),
    );
    let (ok, out) = doctor(&wrong, &[], &[]);
    assert!(!ok, "wrong credentials passed:\n{out}");
    assert!(
        out.contains("FAIL  upstream up.local") && out.contains("credentials were refused"),
        "{out}"
    );

    // Through tinyproxy (the corporate-proxy case): it works, and the
    // proxy relayed the check.
    let proxy = TinyProxy::start().unwrap();
    let (ok, out) = doctor(&good, &[("HTTP_PROXY", proxy.url.as_str())], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("proxy {} (HTTP_PROXY)", proxy.url)),
        "{out}"
    );
    assert!(
        proxy.relayed().iter().any(|r| r.url.contains("/v2/")),
        "tinyproxy relayed nothing: {}",
        proxy.log_text()
    );

    // A proxy that is down: the upstream is unreachable...
    let dead_proxy = format!("http://127.0.0.1:{}", free_port());
    let (ok, out) = doctor(&good, &[("HTTP_PROXY", dead_proxy.as_str())], &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  upstream up.local"), "{out}");
    // ...unless NO_PROXY exempts the upstream's host.
    let (ok, out) = doctor(
        &good,
        &[
            ("HTTP_PROXY", dead_proxy.as_str()),
            ("NO_PROXY", "127.0.0.1"),
        ],
        &[],
    );
    assert!(ok, "NO_PROXY was not applied:\n{out}");
    assert!(out.contains("except NO_PROXY 127.0.0.1"), "{out}");

    // Storage that cannot be written: a data directory under a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let unwritable = write_config(
        dir.path(),
        "unwritable.yaml",
        &upstream_yaml(&file.join("data"), &f.url, "", ""),
    );
    let (ok, out) = doctor(&unwritable, &[], &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  storage:"), "{out}");

    // A configuration that does not parse.
    let broken = write_config(dir.path(), "broken.yaml", "mirror:\n  upstreamz: []\n");
    let (ok, out) = doctor(&broken, &[], &[]);
    assert!(!ok && out.contains("FAIL  config:"), "{out}");
}

#[test]
fn doctor_reads_tls_files_and_their_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate().unwrap();
    let other = TestCa::generate().unwrap();
    let data = dir.path().join("data");
    let cfg = |name: &str, cert: &Path, key: &Path| {
        write_config(
            dir.path(),
            name,
            &format!(
                "data_dir: {}\nmirror:\n  upstreams: []\ntls:\n  cert: {}\n  key: {}\n",
                data.display(),
                cert.display(),
                key.display()
            ),
        )
    };
    let (ok, out) = doctor(&cfg("ok.yaml", &ca.cert, &ca.key), &[], &[]);
    assert!(ok, "a warning is not a failure:\n{out}");
    // The test CA's certificates last two days: close to their end.
    assert!(
        out.contains("warn  tls:") && out.contains("expires in 1 days") && out.contains("renew it"),
        "{out}"
    );
    // A key from another certificate.
    let (ok, out) = doctor(&cfg("mismatch.yaml", &ca.cert, &other.key), &[], &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  tls:"), "{out}");
}

#[test]
fn client_commands_trust_a_private_ca_only_when_told() {
    let ca = TestCa::generate().unwrap();
    let k = Kura::start_with(KuraOptions {
        extra_args: vec![
            "--tls-cert".into(),
            ca.cert.display().to_string(),
            "--tls-key".into(),
            ca.key.display().to_string(),
        ],
        https: true,
        ..Default::default()
    })
    .unwrap();
    let server = format!("https://127.0.0.1:{}", k.port);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "hosted.yaml",
        &format!(
            "data_dir: {}\nmirror:\n  upstreams: []\n",
            dir.path().join("d").display()
        ),
    );
    let ca_file = ca.ca_pem.display().to_string();

    // doctor --server: not trusted without the CA, with a sentence that
    // says what to do.
    let (ok, out) = doctor(&cfg, &[], &["--server", &server]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("cannot be verified") && out.contains("--ca-file"),
        "{out}"
    );
    let (ok, out) = doctor(&cfg, &[], &["--server", &server, "--ca-file", &ca_file]);
    assert!(ok, "{out}");
    assert!(out.contains("answers the registry API"), "{out}");
    let (ok, out) = doctor(&cfg, &[], &["--server", &server, "--tls-verify=false"]);
    assert!(ok, "{out}");

    // prefetch: the same.
    kura_tests::init_crypto();
    let trusting = reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca.ca_pem).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let api = Api {
        base: server.clone(),
        port: k.port,
        client: trusting,
        auth: None,
    };
    api.push_image("team/tls", "v1", "doctor-tls");
    let prefetch = |extra: &[&str]| {
        let out = Command::new(kura_bin())
            .args(["prefetch", "--server", &server])
            .args(extra)
            .arg("team/tls:v1")
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = prefetch(&[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("cannot be verified") && out.contains("--ca-file"),
        "{out}"
    );
    let (ok, out) = prefetch(&["--ca-file", &ca_file]);
    assert!(ok, "{out}");
    let (ok, out) = prefetch(&["--tls-verify=false"]);
    assert!(ok, "{out}");
}
