//! TLS and HTTP versions of a running `kura serve`: `--tls-self-signed`,
//! `--tls-cert`/`--tls-key` with a certificate from a private CA, and, seen
//! from curl, h2c with prior knowledge, h2 over TLS chosen by ALPN, and
//! HTTP/1.1 keep-alive.
//!
//! Needs `openssl` (to make the CA) and `curl` (a client that is not ours).

use std::process::Command;
use std::time::{Duration, Instant};

use kura_tests::api::{Api, Reg};
use kura_tests::{http_client, init_crypto, Kura, KuraOptions};
use reqwest::blocking::Client;

fn tls_api(kura: &Kura, ca_pem: &[u8]) -> Api {
    init_crypto();
    let cert = reqwest::Certificate::from_pem(ca_pem).expect("PEM certificate");
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .tls_certs_only([cert])
        .build()
        .expect("TLS client");
    Api {
        base: kura.url.clone(),
        port: kura.port,
        client,
        auth: None,
    }
}

#[track_caller]
fn tls_round_trip(api: &Api) {
    assert!(api.base.starts_with("https://"));
    api.get("/v2/").expect(200);
    let img = api.push_image("tls/repo", "v1", "tls");
    assert_eq!(
        api.get("/v2/tls/repo/manifests/v1").expect(200).body,
        img.manifest
    );
}

#[test]
fn tls_self_signed() {
    let kura = Kura::start_with(KuraOptions {
        extra_args: vec!["--tls-self-signed".into()],
        https: true,
        ..Default::default()
    })
    .expect("kura starts with TLS");
    let cert_path = kura.data_dir.join("self-signed.crt");
    // The port opens before the certificate is written: wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pem = loop {
        if let Ok(p) = std::fs::read(&cert_path) {
            if p.windows(25).any(|w| w == b"-----END CERTIFICATE-----") {
                break p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            cert_path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let api = tls_api(&kura, &pem);
    tls_round_trip(&api);
    // Not trusting the certificate fails the handshake; plain HTTP gets no registry answer.
    let untrusted = Client::builder()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .unwrap();
    assert!(untrusted.get(format!("{}/v2/", kura.url)).send().is_err());
    let plain = http_client()
        .get(format!("http://127.0.0.1:{}/v2/", kura.port))
        .send();
    assert!(
        plain.map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP answered 200 on the TLS port"
    );
}

/// `curl` (a client that is not ours) with `flags`, fetching `urls` in
/// order; returns (`%{http_version}`, `%{http_code}`, `%{num_connects}`)
/// per URL, and the last body.
fn curl_w(flags: &[&str], urls: &[&str]) -> (Vec<(String, String, String)>, Vec<u8>) {
    let body = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = std::process::Command::new("curl");
    cmd.arg("-sS")
        .args(["-w", "%{http_version} %{http_code} %{num_connects}\\n"])
        .args(flags);
    for u in urls {
        cmd.arg("-o").arg(body.path()).arg(u);
    }
    let out = cmd.output().expect("running curl");
    assert!(
        out.status.success(),
        "curl {flags:?} {urls:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "curl -w output: {l:?}");
            (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
        })
        .collect();
    (lines, std::fs::read(body.path()).unwrap())
}

#[test]
fn http2_cleartext_and_tls_and_http1_keep_alive() {
    let reg = Reg::start();
    let img = reg.push_image("proto/repo", "v1", "h2");
    let manifest = format!("{}/v2/proto/repo/manifests/{}", reg.base, img.digest);
    // h2c with prior knowledge (what gRPC-style clients and some proxies use).
    let (w, body) = curl_w(&["--http2-prior-knowledge"], &[&manifest]);
    assert_eq!(w, [("2".into(), "200".into(), "1".into())]);
    assert_eq!(body, img.manifest);
    // HTTP/1.1: the second request reuses the first connection.
    let (w, _) = curl_w(&["--http1.1"], &[&manifest, &manifest]);
    assert_eq!(
        w,
        [
            ("1.1".into(), "200".into(), "1".into()),
            ("1.1".into(), "200".into(), "0".into())
        ],
        "the connection is kept alive"
    );
    // h2 over TLS, negotiated by ALPN.
    let tls = Kura::start_with(KuraOptions {
        extra_args: vec!["--tls-self-signed".into()],
        https: true,
        ..Default::default()
    })
    .expect("kura starts with TLS");
    let cert = tls.data_dir.join("self-signed.crt");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&cert).is_ok_and(|p| p.contains("END CERTIFICATE")) {
        assert!(Instant::now() < deadline, "no self-signed certificate");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cert = cert.display().to_string();
    let (w, _) = curl_w(
        &["--cacert", &cert, "--http2"],
        &[&format!("{}/v2/", tls.url)],
    );
    assert_eq!(w[0].0, "2", "ALPN chose h2");
    assert_eq!(w[0].1, "200");
    let (w, _) = curl_w(
        &["--cacert", &cert, "--http1.1"],
        &[&format!("{}/v2/", tls.url)],
    );
    assert_eq!(w[0].0, "1.1");
}

#[test]
fn tls_cert_and_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=kura test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);

    let kura = Kura::start_with(KuraOptions {
        extra_args: vec![
            "--tls-cert".into(),
            d.join("server.crt").display().to_string(),
            "--tls-key".into(),
            d.join("server.key").display().to_string(),
        ],
        https: true,
        ..Default::default()
    })
    .expect("kura starts with TLS files");
    let api = tls_api(&kura, &std::fs::read(d.join("ca.crt")).unwrap());
    tls_round_trip(&api);
}
