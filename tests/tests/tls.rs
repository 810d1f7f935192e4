//! TLS and HTTP versions of a running `kura serve`: `--tls-self-signed`,
//! `--tls-cert`/`--tls-key` with a certificate from a private CA, and, seen
//! from curl, h2c with prior knowledge, h2 over TLS chosen by ALPN, and
//! HTTP/1.1 keep-alive; certificates reloaded from changed files or on
//! SIGHUP without dropping connections.
//!
//! Needs `openssl` (to make the CA) and `curl` (a client that is not ours).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kura_tests::api::{Api, Reg};
use kura_tests::upstream::TestCa;
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

// --- Certificate reload -----------------------------------------------------

/// The DER of the (first) certificate in a PEM file.
fn cert_der(pem_file: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(pem_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pem_file.display()))
        .to_vec()
}

/// Replace `dest` with `contents` the way cert-manager and certbot do: write
/// a new file next to it and rename it into place.
fn replace_atomically(dest: &Path, contents: &[u8]) {
    let tmp = dest.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// Put `ca`'s server certificate and key in place as `live/tls.crt` and
/// `live/tls.key`.
fn install_pair(live: &Path, ca: &TestCa) {
    replace_atomically(&live.join("tls.crt"), &std::fs::read(&ca.cert).unwrap());
    replace_atomically(&live.join("tls.key"), &std::fs::read(&ca.key).unwrap());
}

/// A TLS connection of our own (rustls, HTTP/1.1 by hand) so that the test
/// knows it is one and the same connection across requests, and can see the
/// certificate the server presented on it.
struct RawTls {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl RawTls {
    fn connect(port: u16, trusted_cas: &[&Path]) -> std::io::Result<RawTls> {
        init_crypto();
        let mut roots = rustls::RootCertStore::empty();
        for ca in trusted_cas {
            roots
                .add(rustls::pki_types::CertificateDer::from(cert_der(ca)))
                .unwrap();
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(RawTls {
            stream,
            buf: Vec::new(),
        })
    }

    /// The end-entity certificate the server presented.
    fn server_cert(&self) -> Vec<u8> {
        self.stream
            .conn
            .peer_certificates()
            .expect("handshake done")[0]
            .to_vec()
    }

    /// `GET path` on this connection; the status code. Errors if the
    /// server closed the connection.
    fn get(&mut self, path: &str) -> std::io::Result<u16> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.stream.write_all(req.as_bytes())?;
        self.stream.flush()?;
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad response head {head:?}"));
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
        while self.buf.len() < head_end + len {
            self.fill()?;
        }
        self.buf.drain(..head_end + len);
        Ok(status)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// The certificate a NEW connection gets (trusting all of `cas`).
fn presented(kura: &Kura, cas: &[&Path]) -> Vec<u8> {
    RawTls::connect(kura.port, cas)
        .unwrap_or_else(|e| panic!("TLS handshake with kura: {e}\nlog:\n{}", kura.log_text()))
        .server_cert()
}

/// Whether a fresh client trusting only `ca` gets `/v2/` (a new connection
/// every time: a new client has an empty pool).
fn trusted_by(kura: &Kura, ca: &Path) -> bool {
    tls_api(kura, &std::fs::read(ca).unwrap())
        .client
        .get(format!("{}/v2/", kura.url))
        .send()
        .is_ok_and(|r| r.status() == 200)
}

/// Wait until new connections get `want`; panic with the log after `within`.
fn wait_for_cert(kura: &Kura, cas: &[&Path], want: &[u8], within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while presented(kura, cas) != want {
        assert!(
            Instant::now() < deadline,
            "{what}: new connections still get the old certificate after {within:?}; log:\n{}",
            kura.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until the log has more than `before` lines containing `needle`.
fn wait_for_log(kura: &Kura, needle: &str, before: usize, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = kura.log_text();
        if log.matches(needle).count() > before {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no new {needle:?} in the log after {within:?}; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_with_live_pair(live: &Path, poll_ms: u64) -> Kura {
    Kura::start_with(KuraOptions {
        extra_args: vec![
            "--tls-cert".into(),
            live.join("tls.crt").display().to_string(),
            "--tls-key".into(),
            live.join("tls.key").display().to_string(),
        ],
        env: vec![("KURATEST_TLS_RELOAD_POLL_MS".into(), poll_ms.to_string())],
        https: true,
        ..Default::default()
    })
    .expect("kura starts with TLS files")
}

const RELOADED: &str = "reloaded the TLS certificate";
const NOT_RELOADED: &str = "TLS certificate not reloaded";

/// SIGHUP reloads: new connections get the new certificate, a connection
/// opened before keeps working; a broken key file is refused with a reason
/// in the log and the last good certificate stays.
#[test]
fn tls_reload_on_sighup_keeps_open_connections() {
    let (ca1, ca2) = (TestCa::generate().unwrap(), TestCa::generate().unwrap());
    let live = tempfile::tempdir().unwrap();
    install_pair(live.path(), &ca1);
    // Polling effectively off: only the signal can cause a reload here.
    let kura = start_with_live_pair(live.path(), 3_600_000);
    let both = [ca1.ca_pem.as_path(), ca2.ca_pem.as_path()];
    let (cert_a, cert_b) = (cert_der(&ca1.cert), cert_der(&ca2.cert));

    let mut old = RawTls::connect(kura.port, &both).expect("first connection");
    assert_eq!(old.get("/v2/").unwrap(), 200);
    assert!(
        old.server_cert() == cert_a,
        "kura starts with certificate A"
    );
    assert!(trusted_by(&kura, &ca1.ca_pem));
    assert!(!trusted_by(&kura, &ca2.ca_pem));

    install_pair(live.path(), &ca2);
    // Nothing reloads by itself with polling off.
    std::thread::sleep(Duration::from_millis(300));
    assert!(presented(&kura, &both) == cert_a);

    kura_tests::signal(kura.pid(), "HUP").unwrap();
    wait_for_cert(&kura, &both, &cert_b, Duration::from_secs(10), "SIGHUP");
    assert!(
        trusted_by(&kura, &ca2.ca_pem),
        "a client trusting CA 2 only"
    );
    assert!(
        !trusted_by(&kura, &ca1.ca_pem),
        "a client trusting CA 1 only must fail now"
    );
    // The connection from before the reload: same connection, still A.
    assert_eq!(
        old.get("/v2/")
            .expect("the old connection survives the reload"),
        200
    );
    assert!(old.server_cert() == cert_a);
    let log = kura.log_text();
    assert!(log.contains(RELOADED), "log:\n{log}");
    assert!(log.contains("SIGHUP"), "log:\n{log}");

    // A half-written key: refused, the log says why, B stays.
    let key = live.path().join("tls.key");
    replace_atomically(
        &key,
        b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0w\n",
    );
    kura_tests::signal(kura.pid(), "HUP").unwrap();
    let log = wait_for_log(&kura, NOT_RELOADED, 0, Duration::from_secs(10));
    let warning = log.lines().find(|l| l.contains(NOT_RELOADED)).unwrap();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("reading private key {}", key.display())),
        "the warning names the key and what failed: {warning}"
    );
    assert!(
        presented(&kura, &both) == cert_b,
        "the last good certificate stays"
    );
    assert!(trusted_by(&kura, &ca2.ca_pem));
    assert_eq!(old.get("/v2/").unwrap(), 200);
}

/// Without a signal, a change of the files is found by polling; a pair that
/// does not match is refused (and logged) until the next change fixes it.
#[test]
fn tls_reload_by_polling_the_files() {
    let cas: Vec<TestCa> = (0..3).map(|_| TestCa::generate().unwrap()).collect();
    let all: Vec<&Path> = cas.iter().map(|c| c.ca_pem.as_path()).collect();
    let live = tempfile::tempdir().unwrap();
    install_pair(live.path(), &cas[0]);
    let poll = Duration::from_millis(200);
    let kura = start_with_live_pair(live.path(), poll.as_millis() as u64);
    assert!(presented(&kura, &all) == cert_der(&cas[0].cert));
    let mut old = RawTls::connect(kura.port, &all).unwrap();
    assert_eq!(old.get("/v2/").unwrap(), 200);

    // Within a few poll intervals (generous for a loaded machine).
    install_pair(live.path(), &cas[1]);
    let b = cert_der(&cas[1].cert);
    wait_for_cert(&kura, &all, &b, poll * 25, "polling");
    assert!(kura.log_text().contains(RELOADED));
    assert_eq!(old.get("/v2/").unwrap(), 200);

    // The certificate renewed but the key left behind: not a pair.
    let refused = kura.log_text().matches(NOT_RELOADED).count();
    replace_atomically(
        &live.path().join("tls.crt"),
        &std::fs::read(&cas[2].cert).unwrap(),
    );
    let log = wait_for_log(&kura, NOT_RELOADED, refused, poll * 25);
    let warning = log.lines().rfind(|l| l.contains(NOT_RELOADED)).unwrap();
    assert!(
        warning.contains("does not match the certificate"),
        "the warning says why: {warning}"
    );
    // Several poll intervals later, still B, and the refusal is not repeated
    // while the files stay as they are.
    std::thread::sleep(poll * 5);
    assert!(
        presented(&kura, &all) == b,
        "the last good certificate stays"
    );
    assert_eq!(
        kura.log_text().matches(NOT_RELOADED).count(),
        refused + 1,
        "a bad pair is reported once, not at every poll"
    );

    // The key arrives: the next change is tried again and succeeds.
    replace_atomically(
        &live.path().join("tls.key"),
        &std::fs::read(&cas[2].key).unwrap(),
    );
    wait_for_cert(&kura, &all, &cert_der(&cas[2].cert), poll * 25, "retry");
    assert!(trusted_by(&kura, &cas[2].ca_pem));
    assert!(!trusted_by(&kura, &cas[1].ca_pem));
    assert_eq!(old.get("/v2/").unwrap(), 200);
}
