//! Client-side peers: skopeo, podman and a private containerd, each run
//! with private state under a temporary directory so tests never touch the
//! machine's own images or daemons.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Panic with an explanation if `cmd` is not installed (CI installs it; a
/// silent skip would hide a broken setup).
pub fn require(cmd: &str, package: &str) {
    assert!(
        crate::have(cmd),
        "`{cmd}` is not installed; these tests need it (Debian: apt-get install -y {package})"
    );
}

/// Run a command to completion; error (with its output) unless it succeeds.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `skopeo` with a private registries.conf and policy, so nothing from the
/// machine's configuration (mirrors, search registries) applies.
pub struct Skopeo {
    dir: tempfile::TempDir,
}

impl Skopeo {
    pub fn new() -> anyhow::Result<Self> {
        require("skopeo", "skopeo");
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("registries.conf"),
            "unqualified-search-registries = []\n",
        )?;
        std::fs::write(
            dir.path().join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        Ok(Skopeo { dir })
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new("skopeo");
        c.arg("--policy")
            .arg(self.dir.path().join("policy.json"))
            .arg("--registries-conf")
            .arg(self.dir.path().join("registries.conf"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.path().join("registries.conf"),
            )
            // Blob info cache and auth file stay private too.
            .env("HOME", self.dir.path())
            .env("XDG_RUNTIME_DIR", self.dir.path());
        c
    }

    /// `skopeo <args>`, failing with skopeo's output on error; returns stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        Ok(run(self.command().args(args))?.stdout)
    }

    /// `skopeo copy` with TLS verification off on both ends.
    pub fn copy(&self, extra: &[&str], src: &str, dest: &str) -> anyhow::Result<()> {
        let mut args = vec![
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ];
        args.extend_from_slice(extra);
        args.push(src);
        args.push(dest);
        self.run(&args).map(|_| ())
    }
}

/// `podman` with its own storage root, run root, registries.conf and
/// storage.conf under a temporary directory.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    pub fn new() -> anyhow::Result<Self> {
        require("podman", "podman");
        let dir = tempfile::tempdir()?;
        let p = dir.path();
        std::fs::create_dir_all(p.join("root"))?;
        std::fs::create_dir_all(p.join("runroot"))?;
        std::fs::create_dir_all(p.join("tmp"))?;
        std::fs::write(
            p.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )?;
        std::fs::write(
            p.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                p.join("runroot").display(),
                p.join("root").display()
            ),
        )?;
        std::fs::write(
            p.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        // Empty containers.conf: no machine-wide defaults apply.
        std::fs::write(
            p.join("containers.conf"),
            "[engine]\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\n",
        )?;
        Ok(Podman { dir })
    }

    pub fn command(&self) -> Command {
        let p = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_REGISTRIES_CONF", p.join("registries.conf"))
            .env("CONTAINERS_STORAGE_CONF", p.join("storage.conf"))
            .env("CONTAINERS_CONF", p.join("containers.conf"))
            .env("TMPDIR", p.join("tmp"))
            .arg("--root")
            .arg(p.join("root"))
            .arg("--runroot")
            .arg(p.join("runroot"))
            .arg("--tmpdir")
            .arg(p.join("tmp"))
            .arg("--storage-driver")
            .arg("overlay")
            .arg("--events-backend")
            .arg("none")
            .arg("--cgroup-manager")
            .arg("cgroupfs");
        c
    }

    pub fn run(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        Ok(run(self.command().args(args))?.stdout)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Unmount anything podman left mounted under its root, so the
        // temporary directory can be removed.
        let _ = self
            .command()
            .args(["image", "rm", "--all", "--force"])
            .output();
        unmount_under(self.dir.path());
    }
}

/// A private containerd (CRI plugin off) on its own socket, root and state.
pub struct Containerd {
    child: Option<Child>,
    pub socket: PathBuf,
    pub namespace: String,
    pub log: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> anyhow::Result<Self> {
        require("containerd", "containerd");
        require("ctr", "containerd");
        // A short path: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new().prefix("ctrd").tempdir_in("/tmp")?;
        let p = dir.path();
        let socket = p.join("c.sock");
        let config = p.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
                root = p.join("root").display(),
                state = p.join("state").display(),
                sock = socket.display(),
                opt = p.join("opt").display(),
            ),
        )?;
        let log = p.join("containerd.log");
        let logf = std::fs::File::create(&log)?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .context("spawning containerd")?;
        let mut c = Containerd {
            child: Some(child),
            socket,
            namespace: "kura-test".into(),
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.child.as_mut().expect("running").try_wait()? {
                bail!(
                    "containerd exited with {st} at startup; log:\n{}",
                    c.log_text()
                );
            }
            if c.socket.exists() && c.ctr(&["version"]).is_ok() {
                return Ok(c);
            }
            if Instant::now() > deadline {
                bail!("containerd not ready within 30s; log:\n{}", c.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr -a SOCK -n NS <args>`; returns stdout.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = run(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", &self.namespace])
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stop containerd: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = crate::signal(c.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        // Snapshotters may leave mounts under root; unmount before removal.
        unmount_under(self.dir.path());
    }
}

/// Lazily unmount every mount point under `dir` (deepest first).
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let root = dir.display().to_string();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.starts_with(&root))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = Command::new("umount").arg("-l").arg(t).status();
    }
}
