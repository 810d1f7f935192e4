//! Upstream-side peers for the pull-through cache tests:
//!
//! - [`Distribution`]: CNCF distribution (`docker-registry serve`) on a free
//!   loopback port with its own root directory, its output (including the
//!   combined-format access log) in a file, optional htpasswd basic auth and
//!   optional TLS.
//! - [`TestCa`]: a private CA and a server certificate for `127.0.0.1`,
//!   generated with openssl for the test.
//! - [`TinyProxy`]: a forward proxy (`tinyproxy -d`) with a private config,
//!   logging every request it relays.
//!
//! Every process is killed when its guard drops.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::free_port;
use crate::peers::{require, run};

/// A private CA and a server certificate signed by it, valid for
/// `127.0.0.1` and `localhost`.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// The CA certificate (PEM): what a client must trust.
    pub ca_pem: PathBuf,
    /// The server certificate (PEM, leaf only).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

impl TestCa {
    pub fn generate() -> anyhow::Result<TestCa> {
        require("openssl", "openssl");
        let dir = tempfile::tempdir()?;
        let p = dir.path();
        let ca_key = p.join("ca.key");
        let ca_pem = p.join("ca.pem");
        let key = p.join("server.key");
        let csr = p.join("server.csr");
        let cert = p.join("server.pem");
        let ext = p.join("server.ext");
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj", "/CN=kura test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_pem))?;
        run(Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr))?;
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
             basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n",
        )?;
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca_pem)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert))?;
        Ok(TestCa {
            dir,
            ca_pem,
            cert,
            key,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// How to run a [`Distribution`].
#[derive(Default, Clone)]
pub struct DistributionOptions {
    /// Require these basic credentials (an htpasswd file with a bcrypt hash).
    pub htpasswd: Option<(String, String)>,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// One access-log line: `"METHOD PATH HTTP/1.1" STATUS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    pub status: u16,
}

impl Access {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// A running `docker-registry serve`.
pub struct Distribution {
    child: Option<Child>,
    pub port: u16,
    /// `http://127.0.0.1:PORT` (or `https://`).
    pub url: String,
    /// `127.0.0.1:PORT`, for image references.
    pub host: String,
    /// Storage root directory.
    pub root: PathBuf,
    /// stdout + stderr: logrus lines and the access log.
    pub log: PathBuf,
    /// Basic credentials it requires, if any.
    pub creds: Option<(String, String)>,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Distribution {
    pub fn start() -> anyhow::Result<Distribution> {
        Self::start_with(DistributionOptions::default())
    }

    pub fn start_with(opts: DistributionOptions) -> anyhow::Result<Distribution> {
        require("docker-registry", "docker-registry");
        let dir = tempfile::tempdir()?;
        let p = dir.path();
        let root = p.join("root");
        std::fs::create_dir_all(&root)?;
        let port = free_port();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: kura-tests-secret\n",
            root = root.display()
        );
        if let Some((cert, key)) = &opts.tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some((user, pass)) = &opts.htpasswd {
            require("htpasswd", "apache2-utils");
            let file = p.join("htpasswd");
            let out = run(Command::new("htpasswd").args(["-Bbn", user, pass]))?;
            std::fs::write(&file, &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kura-tests\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = p.join("config.yml");
        std::fs::write(&config_path, config)?;
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let mut d = Distribution {
            child: None,
            port,
            url: format!("{scheme}://127.0.0.1:{port}"),
            host: format!("127.0.0.1:{port}"),
            root,
            log: p.join("registry.log"),
            creds: opts.htpasswd.clone(),
            config: config_path,
            dir,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning docker-registry")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.as_mut().expect("spawned").try_wait()? {
                bail!(
                    "docker-registry exited with {st} at startup; log:\n{}",
                    self.log_text()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry not listening within 30s; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (the upstream goes away).
    /// Push an image of `config` and `layers` as `repo:tag` (see
    /// [`push_image_at`]). Returns the manifest's digest.
    pub fn push_image(
        &self,
        repo: &str,
        tag: &str,
        config: &[u8],
        layers: &[Vec<u8>],
    ) -> anyhow::Result<String> {
        push_image_at(&self.url, repo, tag, config, layers)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every access-log line so far, after the log stopped growing for a
    /// moment (distribution writes a line once the response is complete).
    pub fn access_log(&self) -> Vec<Access> {
        settle(&self.log);
        parse_access_log(&self.log_text())
    }

    /// Access-log entries with this method whose path starts with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|a| a.method == method && a.path().starts_with(prefix))
            .count()
    }

    /// `GET /v2/<repo>/blobs/...` requests so far.
    pub fn blob_gets(&self, repo: &str) -> usize {
        self.count("GET", &format!("/v2/{repo}/blobs/"))
    }

    /// `GET /v2/<repo>/blobs/<digest>` requests so far.
    pub fn blob_gets_of(&self, repo: &str, digest: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|a| a.method == "GET" && a.path() == format!("/v2/{repo}/blobs/{digest}"))
            .count()
    }

    /// A client for this registry's API (plain HTTP only; basic credentials
    /// are added by [`Distribution::push_blob`]).
    fn client(&self) -> reqwest::blocking::Client {
        crate::init_crypto();
        reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(300))
            .build()
            .expect("http client")
    }

    /// Monolithic blob upload of `len` bytes read from `data`
    /// (POST, then PUT `?digest=`). Returns the digest given.
    pub fn push_blob(
        &self,
        repo: &str,
        digest: &str,
        len: u64,
        data: impl Read + Send + 'static,
    ) -> anyhow::Result<()> {
        let c = self.client();
        let auth = |rb: reqwest::blocking::RequestBuilder| match &self.creds {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        };
        let resp = auth(c.post(format!("{}/v2/{repo}/blobs/uploads/", self.url))).send()?;
        ensure!(
            resp.status().as_u16() == 202,
            "POST upload: {}",
            resp.status()
        );
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .context("no Location")?
            .to_owned();
        let loc = if loc.starts_with('/') {
            format!("{}{loc}", self.url)
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let resp = auth(
            c.put(format!("{loc}{sep}digest={digest}"))
                .header("content-type", "application/octet-stream")
                .body(reqwest::blocking::Body::sized(data, len)),
        )
        .send()?;
        let status = resp.status();
        ensure!(
            status.as_u16() == 201,
            "PUT upload: {status}: {}",
            resp.text().unwrap_or_default()
        );
        Ok(())
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait until a log file has not grown for 150 ms (at most 3 s).
fn settle(path: &Path) {
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = size();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(150));
        let now = size();
        if now == last {
            return;
        }
        last = now;
    }
}

/// Lines in combined log format: `IP - - [date] "GET /v2/x HTTP/1.1" 200 ...`.
pub fn parse_access_log(text: &str) -> Vec<Access> {
    text.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("] \"")?;
            let (request, rest) = rest.split_once('"')?;
            let mut parts = request.split(' ');
            let method = parts.next()?.to_owned();
            let target = parts.next()?.to_owned();
            let status = rest.split_whitespace().next()?.parse().ok()?;
            Some(Access {
                method,
                target,
                status,
            })
        })
        .collect()
}

/// A request tinyproxy relayed: method and absolute URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub method: String,
    pub url: String,
}

/// `tinyproxy -d` with a private config on a free loopback port.
pub struct TinyProxy {
    child: Option<Child>,
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TinyProxy {
    pub fn start() -> anyhow::Result<TinyProxy> {
        require("tinyproxy", "tinyproxy");
        let dir = tempfile::tempdir()?;
        let p = dir.path();
        let port = free_port();
        let log = p.join("tinyproxy.log");
        let conf = p.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 600\nLogFile \"{}\"\nLogLevel Info\n\
                 MaxClients 200\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
                log.display()
            ),
        )?;
        let out = std::fs::File::create(p.join("stdout.log"))?;
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning tinyproxy")?;
        let mut t = TinyProxy {
            child: Some(child),
            port,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = t.child.as_mut().expect("spawned").try_wait()? {
                bail!(
                    "tinyproxy exited with {st}; log:\n{}",
                    std::fs::read_to_string(&t.log).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!("tinyproxy not listening within 15s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        settle(&self.log);
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every request relayed so far, from lines such as
    /// `CONNECT ... Request (file descriptor 5): GET http://h:p/v2/ HTTP/1.1`.
    pub fn relayed(&self) -> Vec<Relayed> {
        self.log_text()
            .lines()
            .filter_map(|l| {
                let (_, req) = l.split_once("Request (file descriptor ")?;
                let (_, req) = req.split_once("): ")?;
                let mut parts = req.split(' ');
                Some(Relayed {
                    method: parts.next()?.to_owned(),
                    url: parts.next()?.to_owned(),
                })
            })
            .collect()
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Push an image of `config` and `layers` as `repo:tag` to the registry at
/// `url` the way distribution takes it (POST, then PUT with the bytes: it
/// has no single-request upload). Returns the manifest's digest.
pub fn push_image_at(
    url: &str,
    repo: &str,
    tag: &str,
    config: &[u8],
    layers: &[Vec<u8>],
) -> anyhow::Result<String> {
    let client = crate::http_client();
    for blob in std::iter::once(config).chain(layers.iter().map(Vec::as_slice)) {
        let started = client
            .post(format!("{url}/v2/{repo}/blobs/uploads/"))
            .send()?;
        ensure!(
            started.status() == 202,
            "upload start: {}",
            started.status()
        );
        let location = started
            .headers()
            .get("location")
            .context("no Location")?
            .to_str()?
            .to_owned();
        let sep = if location.contains('?') { '&' } else { '?' };
        let done = client
            .put(format!("{location}{sep}digest={}", crate::sha256(blob)))
            .body(blob.to_vec())
            .send()?;
        ensure!(done.status() == 201, "upload: {}", done.status());
    }
    let manifest = crate::api::image_manifest(config, layers);
    let put = client
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("content-type", crate::image::OCI_MANIFEST)
        .body(manifest.clone())
        .send()?;
    ensure!(put.status() == 201, "manifest: {}", put.status());
    Ok(crate::sha256(&manifest))
}
