//! The Debian package (`cargo xtask deb`, xtask/src/deb.rs) on this
//! machine: `dpkg -i` it, check what dpkg recorded (files, the conffile,
//! dependencies, the unit), `kura config check` the packaged
//! `/etc/kura/config.yaml`, run the installed `/usr/bin/kura` twice: on its
//! defaults as a stand-in Docker Hub (push, pull back), and on the packaged
//! config mirroring it (listen address, data directory and Docker Hub's URL
//! moved to loopback and a temporary directory with `KURA_LISTEN`,
//! `KURA_DATA_DIR` and `KURA_MIRROR__UPSTREAMS`, so the machine's
//! `/var/lib/kura` is never touched), pull through it, stop both with
//! SIGTERM, reinstall over an edited config (kept: a conffile), remove
//! (config kept) and purge (all gone).
//!
//! Needs root and dpkg, and the package's path in `KURA_DEB`. It is
//! `#[ignore]`d in the plain workspace run (it installs into the machine's
//! root file system); `cargo xtask test` builds the package and runs it:
//! `KURA_DEB=target/debian/kura_<version>_amd64.deb cargo test -p kura-tests
//! --test package -- --ignored --test-threads=1`. Without root or dpkg it
//! passes with a message saying it was skipped. If kura is already
//! installed (in any state dpkg knows), it fails rather than replace or
//! purge that installation.
//!
//! systemd is not PID 1 where these tests run, so the unit is not started;
//! it is checked with `systemd-analyze verify` when that is available.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kura_tests::api::{Api, Image, Resp, OCI_MANIFEST};
use kura_tests::{free_port, have, sha256, signal, workspace_root};

const BIN: &str = "/usr/bin/kura";
const CONFIG: &str = "/etc/kura/config.yaml";
const UNIT: &str = "/lib/systemd/system/kura.service";
const DOC_DIR: &str = "/usr/share/doc/kura";

/// A command's output; panics with its stderr if it fails.
#[track_caller]
fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dpkg(args: &[&str]) -> String {
    ok(Command::new("dpkg").args(args))
}

/// dpkg's status of kura (`install ok installed`, `deinstall ok
/// config-files`, …), or `None` when dpkg does not know the package.
fn status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "kura"])
        .stderr(Stdio::null())
        .output()
        .expect("running dpkg-query");
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !s.ends_with(" not-installed")).then_some(s)
}

fn query(field: &str) -> String {
    ok(Command::new("dpkg-query").args(["-W", &format!("-f=${{{field}}}"), "kura"]))
}

/// Purges kura when dropped, so a failing test leaves no package behind.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if status().is_some() {
            let out = Command::new("dpkg").args(["--purge", "kura"]).output();
            eprintln!("cleanup: dpkg --purge kura: {out:?}");
        }
    }
}

/// Why this test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if !have("dpkg") || !have("dpkg-query") {
        return Some("dpkg".into());
    }
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("root (dpkg -i)".into());
    }
    None
}

/// The installed kura, running with `args` and `env` (and no `KURA_*`
/// variables of the test's own environment).
struct Serving {
    child: std::process::Child,
    api: Api,
    log: PathBuf,
}

impl Serving {
    fn start(args: &[&str], env: &[(&str, String)], log: PathBuf) -> Serving {
        let port = free_port();
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("KURA_") {
                cmd.env_remove(k);
            }
        }
        let out = std::fs::File::create(&log).expect("log file");
        cmd.args(args)
            .env("KURA_LISTEN", format!("127.0.0.1:{port}"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().expect("spawning /usr/bin/kura");
        let mut s = Serving {
            child,
            api: Api::at(&format!("http://127.0.0.1:{port}"), port),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("{cmd:?} exited with {st} at startup:\n{}", s.log_text());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{cmd:?} not listening after 30 s:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as systemd stops the service: kura must exit 0 promptly.
    fn terminate(mut self) {
        signal(self.child.id(), "TERM").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "kura still running 30 s after SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            exit.success(),
            "kura exited with {exit} on SIGTERM:\n{}",
            self.log_text()
        );
    }

    /// `repo:tag` pulled back: the manifest and every layer as pushed.
    #[track_caller]
    fn pull(&self, repo: &str, img: &Image) -> Resp {
        let manifest = self
            .api
            .send(
                self.api
                    .req(reqwest::Method::GET, &format!("/v2/{repo}/manifests/1.0"))
                    .header("accept", OCI_MANIFEST),
            )
            .expect(200);
        assert_eq!(
            manifest.body, img.manifest,
            "{repo}:1.0 pulled back differs from what was pushed"
        );
        for layer in img.layers.iter().chain([&img.config]) {
            let digest = sha256(layer);
            let blob = self
                .api
                .get(&format!("/v2/{repo}/blobs/{digest}"))
                .expect(200);
            assert!(blob.body == *layer, "{repo}@{digest} pulled back differs");
        }
        manifest
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "installs a Debian package into this machine: cargo xtask test runs it as root"]
fn debian_package_installs_serves_and_purges() {
    if let Some(what) = unavailable() {
        eprintln!("SKIPPED: the package test needs {what}");
        return;
    }
    let deb = std::env::var_os("KURA_DEB")
        .map(PathBuf::from)
        .expect("KURA_DEB must name the package: `cargo xtask deb` builds it and prints its path");
    assert!(deb.is_file(), "KURA_DEB={} is not a file", deb.display());
    if let Some(st) = status() {
        panic!(
            "kura is already installed here (dpkg status: {st}); this test installs and purges \
             its own copy and will not replace or purge yours. `dpkg --purge kura` first if \
             it may go."
        );
    }
    let var_lib_kura_before = Path::new("/var/lib/kura").exists();

    // --- Install. ----------------------------------------------------------
    let _installed = Installed;
    dpkg(&["-i", deb.to_str().unwrap()]);
    assert_eq!(status().as_deref(), Some("install ok installed"));

    let files = dpkg(&["-L", "kura"]);
    for path in [BIN, CONFIG, UNIT, &format!("{DOC_DIR}/copyright")] {
        assert!(
            files.lines().any(|l| l == path),
            "dpkg -L kura does not list {path}:\n{files}"
        );
    }
    // A conffile: dpkg records it with its checksum, keeps local edits on
    // upgrade and removes it only on purge.
    let conffiles = query("Conffiles");
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{CONFIG} "))),
        "dpkg does not know {CONFIG} as a conffile; Conffiles: {conffiles:?}"
    );
    // The packaged config is packaging/config.yaml, byte for byte.
    let packaged = std::fs::read_to_string(CONFIG).expect("reading the installed config");
    let source = std::fs::read_to_string(workspace_root().join("packaging/config.yaml")).unwrap();
    assert_eq!(packaged, source, "{CONFIG} is not packaging/config.yaml");
    let depends = query("Depends");
    assert!(
        depends.contains("libc6"),
        "Depends should name libc6: {depends:?}"
    );
    let version = query("Version");
    let reported = ok(Command::new(BIN).arg("--version"));
    assert_eq!(
        reported.trim().replacen('-', "~", 1).replace('+', "~"),
        format!("kura {version}"),
        "the installed binary is not the packaged version"
    );

    // --- The unit. ---------------------------------------------------------
    let unit = std::fs::read_to_string(UNIT).expect("reading the unit");
    for line in [
        "ExecStart=/usr/bin/kura serve --config /etc/kura/config.yaml",
        "DynamicUser=yes",
        "StateDirectory=kura",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "{UNIT} lacks `{line}`"
        );
    }
    if have("systemd-analyze") {
        // Unknown or misspelt settings, a missing ExecStart binary and
        // the like are reported on stderr.
        let out = Command::new("systemd-analyze")
            .args(["verify", UNIT])
            .output()
            .expect("running systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {UNIT}: {}\n{stderr}",
            out.status
        );
    } else {
        eprintln!("systemd-analyze is not installed: the unit is not verified");
    }

    // --- `kura config check` on the packaged config. -----------------------
    let mut check = Command::new(BIN);
    check.args(["config", "check", CONFIG]);
    for (k, _) in std::env::vars() {
        if k.starts_with("KURA_") {
            check.env_remove(k);
        }
    }
    let effective = ok(&mut check);
    for expected in [
        "listen: 0.0.0.0:5000",
        "data_dir: /var/lib/kura",
        "default: docker.io",
    ] {
        assert!(
            effective.lines().any(|l| l.trim() == expected),
            "`kura config check {CONFIG}` does not show `{expected}`:\n{effective}"
        );
    }

    // --- The installed binary. ---------------------------------------------
    // The packaged config mirrors Docker Hub for bare names
    // (`mirror.default: docker.io`), so nothing can be pushed through it
    // and this machine has no Docker Hub. The upstream is the installed
    // kura again, on its built-in defaults (which host bare names): an
    // image pushed there is pulled through the packaged configuration with
    // only its Docker Hub URL, listen address and data directory moved.
    let tmp = tempfile::tempdir().unwrap();
    let upstream_data = tmp.path().join("upstream");
    let hub = Serving::start(
        &["serve", "--data-dir", upstream_data.to_str().unwrap()],
        &[],
        tmp.path().join("upstream.log"),
    );
    hub.api.get("/v2/").expect(200);
    let img = hub.api.push_image("team/app", "1.0", "debian-package");
    hub.pull("team/app", &img);

    let data = tmp.path().join("data");
    let mirror = Serving::start(
        &["serve", "--config", CONFIG],
        &[
            ("KURA_DATA_DIR", data.display().to_string()),
            (
                "KURA_MIRROR__UPSTREAMS",
                format!("[{{name=\"docker.io\",url=\"{}\"}}]", hub.api.base),
            ),
        ],
        tmp.path().join("kura.log"),
    );
    mirror.api.get("/v2/").expect(200);
    // Bare names are Docker Hub's, read-only.
    let refused = mirror
        .api
        .post(
            &format!("/v2/team/app/blobs/uploads/?digest={}", sha256(b"x")),
            b"x",
        )
        .error(405, "UNSUPPORTED");
    assert!(
        refused.text().contains("mirror of docker.io"),
        "a push to a bare name should be refused as Docker Hub's: {}",
        refused.text()
    );
    let first = mirror.pull("team/app", &img);
    assert_eq!(first.cache(), "miss", "{}", first.describe());
    let again = mirror.pull("docker.io/team/app", &img);
    assert_eq!(again.cache(), "hit", "{}", again.describe());
    assert!(
        data.join("blobs").is_dir(),
        "nothing was stored in KURA_DATA_DIR ({}); log:\n{}",
        data.display(),
        mirror.log_text()
    );
    mirror.terminate();
    hub.terminate();
    assert_eq!(
        Path::new("/var/lib/kura").exists(),
        var_lib_kura_before,
        "running with KURA_DATA_DIR must not create /var/lib/kura"
    );

    // --- Reinstall over an edited config: the edit stays. -------------------
    let edited = format!("{packaged}# edited by the package test\n");
    std::fs::write(CONFIG, &edited).unwrap();
    dpkg(&["-i", deb.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(CONFIG).unwrap(),
        edited,
        "reinstalling the package replaced the edited {CONFIG}"
    );

    // --- Remove: the program goes, the config stays. ------------------------
    dpkg(&["--remove", "kura"]);
    assert_eq!(status().as_deref(), Some("deinstall ok config-files"));
    for gone in [BIN, UNIT, DOC_DIR] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is left after dpkg --remove"
        );
    }
    assert!(
        Path::new(CONFIG).is_file(),
        "dpkg --remove must keep the conffile {CONFIG}"
    );

    // --- Purge: nothing is left. -------------------------------------------
    dpkg(&["--purge", "kura"]);
    assert_eq!(status(), None, "kura is still known to dpkg after purge");
    for gone in [BIN, CONFIG, "/etc/kura", UNIT, DOC_DIR] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is left after dpkg --purge"
        );
    }
}
