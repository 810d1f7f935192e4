//! Fixtures for the end-to-end tests: a kura process, free ports, and a
//! blocking HTTP client. The `/v2/` API client and its response type are in
//! [`api`]; peers (skopeo, podman, containerd, S3, upstream registries)
//! live in their own modules.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of the `kura` binary, built on first use with the same profile as
/// the tests (cargo cannot depend on another package's binary yet).
pub fn kura_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "kura", "--bin", "kura"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build -p kura failed");
    });
    // target/<profile>/deps/<test-binary> -> target/<profile>/kura
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    profile_dir.join("kura")
}

/// A loopback port nobody is listening on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// Install rustls' ring provider once (reqwest is built without one).
pub fn init_crypto() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A blocking HTTP client that does not follow redirects (tests look at
/// Location headers themselves).
pub fn http_client() -> reqwest::blocking::Client {
    init_crypto();
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(300))
        .build()
        .expect("http client")
}

/// A running `kura serve`.
pub struct Kura {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

#[derive(Default, Clone)]
pub struct KuraOptions {
    /// Storage directory; a fresh temporary one if `None`.
    pub data_dir: Option<PathBuf>,
    /// A config file to pass with `--config`.
    pub config: Option<PathBuf>,
    /// Extra arguments for `kura serve`.
    pub extra_args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Use `https://` in `url` (when TLS flags are passed).
    pub https: bool,
}

impl Kura {
    pub fn start() -> anyhow::Result<Kura> {
        Self::start_with(KuraOptions::default())
    }

    /// The value of an unlabelled metric on `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> u64 {
        let text = http_client()
            .get(format!("{}/metrics", self.url))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn start_with(opts: KuraOptions) -> anyhow::Result<Kura> {
        let (tmp, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir()?;
                let d = t.path().join("data");
                (Some(t), d)
            }
        };
        let log = data_dir.with_extension(format!("log-{}", std::process::id()));
        let port = free_port();
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        if let Some(c) = &opts.config {
            args.push("--config".into());
            args.push(c.display().to_string());
        }
        args.extend(opts.extra_args.iter().cloned());
        let scheme = if opts.https { "https" } else { "http" };
        let mut k = Kura {
            child: None,
            port,
            url: format!("{scheme}://127.0.0.1:{port}"),
            data_dir,
            log,
            args,
            _tmp: tmp,
        };
        k.spawn(&opts.env)?;
        Ok(k)
    }

    fn spawn(&mut self, env: &[(String, String)]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(kura_bin());
        cmd.args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawning kura")?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "kura exited with {status} during startup; log:\n{}",
                        self.log_text()
                    );
                }
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "kura did not start listening within 30s; log:\n{}",
            self.log_text()
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no cleanup, no flush — the crash case.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for exit (graceful shutdown).
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        signal(c.id(), "TERM")?;
        Ok(c.wait()?)
    }

    /// Start again with the same arguments and storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn(&[])
    }

    /// Resident set size now and at its peak, in KiB, from /proc.
    pub fn rss_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .context("no such field")?;
            Ok(line
                .split_whitespace()
                .nth(1)
                .context("no value")?
                .parse()?)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Kura {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Send a signal by name with `kill(1)` (keeps libc out of the tests).
pub fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if !st.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// sha256 of bytes as `sha256:<hex>`.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Whether a command is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub mod api;
pub mod blobstore;
pub mod faulty;
pub mod image;
pub mod mirror;
pub mod peers;
pub mod s3;
pub mod stream;
pub mod upstream;
