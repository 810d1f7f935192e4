//! The container image of kura (`cargo xtask image`) for real: the OCI
//! layout pushed with skopeo into a running kura, pulled from it by a
//! private containerd (`ctr image pull --plain-http`), run with `ctr run`
//! (runc, host network), and used as a pull-through cache: skopeo pulls
//! images through the containerized kura from an upstream kura on loopback.
//!
//! The layout comes from `XTASK_IMAGE_LAYOUT` (set by `cargo xtask`), else
//! `target/image`. Needs root, containerd, runc and skopeo.
//!
//! `#[ignore]`d in the plain workspace run: the image needs a release build.
//! `cargo xtask test` builds it and runs
//! `cargo test -p kura-tests --test container -- --ignored --test-threads=1`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kura_tests::api::Reg;
use kura_tests::image::read_dir_transport;
use kura_tests::peers::{Containerd, Skopeo};
use kura_tests::{free_port, sha256, workspace_root};
use serde_json::Value;

/// The user the image runs kura as.
const UID: &str = "65532";
/// The name the containerized kura mirrors the upstream under.
const UPSTREAM: &str = "upstream.test";

/// The image layout and the tag its index.json gives the image.
fn layout() -> (PathBuf, String) {
    let dir = std::env::var_os("XTASK_IMAGE_LAYOUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/image"));
    let index = std::fs::read(dir.join("index.json")).unwrap_or_else(|e| {
        panic!(
            "no image layout at {} ({e}): run `cargo xtask image` first",
            dir.display()
        )
    });
    let index: Value = serde_json::from_slice(&index).expect("index.json is JSON");
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "one image in {}", dir.display());
    let tag = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("the image has a ref.name annotation")
        .to_owned();
    (dir, tag)
}

fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    std::fs::read(dir.join("blobs/sha256").join(hex)).expect("blob in the layout")
}

/// The manifest and config of the layout's image.
fn manifest_and_config(dir: &Path) -> (String, Value, Value) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest: Value = serde_json::from_slice(&blob(dir, &digest)).unwrap();
    let config: Value =
        serde_json::from_slice(&blob(dir, manifest["config"]["digest"].as_str().unwrap())).unwrap();
    (digest, manifest, config)
}

/// A container in containerd: its task killed and the container, its
/// snapshot and the image removed when dropped (also on a failed test), so
/// that no shim or kura outlives the test's containerd.
struct Container<'a> {
    ctrd: &'a Containerd,
    id: String,
    image: String,
    log: PathBuf,
}

impl Container<'_> {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `(pid, status)` of the container's task, from `ctr task ls`.
    fn task(&self) -> Option<(u32, String)> {
        let out = self.ctrd.ctr(&["task", "ls"]).ok()?;
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() >= 3 && f[0] == self.id {
                Some((f[1].parse().ok()?, f[2].to_owned()))
            } else {
                None
            }
        })
    }

    fn remove(&self) -> anyhow::Result<()> {
        if self.task().is_some() {
            let _ = self
                .ctrd
                .ctr(&["task", "kill", "--signal", "SIGKILL", &self.id]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.task().is_some_and(|t| t.1 != "STOPPED") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            self.ctrd.ctr(&["task", "rm", "--force", &self.id])?;
        }
        if self
            .ctrd
            .ctr(&["container", "ls", "-q"])?
            .lines()
            .any(|l| l == self.id)
        {
            self.ctrd.ctr(&["container", "rm", &self.id])?;
        }
        if self
            .ctrd
            .ctr(&["image", "ls", "-q"])?
            .lines()
            .any(|l| l == self.image)
        {
            self.ctrd.ctr(&["image", "rm", "--sync", &self.image])?;
        }
        Ok(())
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("removing container {}: {e:#}", self.id);
        }
    }
}

fn wait_listening(port: u16, c: &Container) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || c.task().is_some_and(|t| t.1 == "STOPPED") {
            panic!(
                "the containerized kura is not listening on {port}; task {:?}; its output:\n{}",
                c.task(),
                c.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `/proc/PID/status` field's values (e.g. `Uid:` real, effective, saved, fs).
fn status_field(pid: u32, name: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// What the image declares: linux/amd64, a non-root user, `kura serve`
/// with the packaged config, the data volume and port.
#[test]
#[ignore = "needs the image layout from `cargo xtask image`"]
fn image_config() {
    let (dir, _) = layout();
    let (_, manifest, config) = manifest_and_config(&dir);
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    let c = &config["config"];
    assert_eq!(c["User"], format!("{UID}:{UID}"));
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!([
            "/usr/bin/kura",
            "serve",
            "--config",
            "/etc/kura/config.yaml"
        ])
    );
    assert!(c["Volumes"]["/var/lib/kura"].is_object(), "{c}");
    assert!(c["ExposedPorts"]["5000/tcp"].is_object(), "{c}");
    assert_eq!(
        c["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    // One layer, its diff_id the digest of the uncompressed tar.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    for d in [&manifest["config"], &layers[0]] {
        let digest = d["digest"].as_str().unwrap();
        let data = blob(&dir, digest);
        assert_eq!(sha256(&data), digest);
        assert_eq!(d["size"].as_u64().unwrap(), data.len() as u64);
    }
}

/// Push the image into kura with skopeo, pull it with containerd, run it,
/// and pull images through it.
#[test]
#[ignore = "needs the image layout from `cargo xtask image`, root, containerd and runc"]
fn runs_under_containerd() {
    let (dir, tag) = layout();
    let (manifest_digest, manifest, _) = manifest_and_config(&dir);
    let skopeo = Skopeo::new().unwrap();

    // The registry the image is pushed to, which is also the upstream the
    // containerized kura mirrors: it holds a small test image too.
    let reg = Reg::start();
    let host = format!("127.0.0.1:{}", reg.kura.port);
    let hello = reg.push_image("lib/hello", "v1", "container image test");
    skopeo
        .copy(
            &[],
            &format!("oci:{}:{tag}", dir.display()),
            &format!("docker://{host}/kura/kura:{tag}"),
        )
        .unwrap();
    let pushed = reg.get(&format!("/v2/kura/kura/manifests/{tag}"));
    assert_eq!(pushed.status, 200, "{}", pushed.describe());
    assert_eq!(
        sha256(&pushed.body),
        manifest_digest,
        "skopeo kept the manifest"
    );

    // containerd pulls it from kura and unpacks it.
    let ctrd = Containerd::start().unwrap();
    let image = format!("{host}/kura/kura:{tag}");
    ctrd.ctr(&["image", "pull", "--plain-http", &image])
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_text()));

    // Run it: host network, kura on a free loopback port, mirroring the
    // registry above (the packaged config plus KURA_* overrides).
    let port = free_port();
    let c = Container {
        ctrd: &ctrd,
        id: format!("kura-{}", std::process::id()),
        image: image.clone(),
        log: ctrd.dir().join("kura.log"),
    };
    let upstreams = format!(r#"[{{name="{UPSTREAM}",url="http://{host}"}}]"#);
    ctrd.ctr(&[
        "run",
        "--detach",
        "--net-host",
        "--log-uri",
        &format!("file://{}", c.log.display()),
        "--env",
        &format!("KURA_LISTEN=127.0.0.1:{port}"),
        "--env",
        &format!("KURA_MIRROR__UPSTREAMS={upstreams}"),
        "--env",
        &format!("KURA_MIRROR__DEFAULT={UPSTREAM}"),
        &image,
        &c.id,
    ])
    .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_text()));
    wait_listening(port, &c);
    let (pid, status) = c.task().expect("the task is listed");
    assert_eq!(status, "RUNNING", "{}", c.log_text());

    // Not root: real, effective, saved and filesystem ids are kura's.
    assert_eq!(status_field(pid, "Uid:"), [UID; 4], "{}", c.log_text());
    assert_eq!(status_field(pid, "Gid:"), [UID; 4], "{}", c.log_text());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cmdline),
        "/usr/bin/kura\0serve\0--config\0/etc/kura/config.yaml\0"
    );

    // Pull through the containerized kura: the small image by its mirrored
    // name and by a bare name (the default upstream), then kura's own image.
    let mirror = format!("127.0.0.1:{port}");
    for (name, want) in [
        (format!("{UPSTREAM}/lib/hello:v1"), &hello.digest),
        ("lib/hello:v1".to_owned(), &hello.digest),
        (format!("{UPSTREAM}/kura/kura:{tag}"), &manifest_digest),
    ] {
        let out = tempfile::tempdir().unwrap();
        skopeo
            .copy(
                &[],
                &format!("docker://{mirror}/{name}"),
                &format!("dir:{}", out.path().display()),
            )
            .unwrap_or_else(|e| panic!("{e:#}\nkura in the container:\n{}", c.log_text()));
        let got = read_dir_transport(out.path()).unwrap();
        assert_eq!(&got.manifest_digest, want, "{name}");
        let mut want_blobs = std::collections::BTreeSet::new();
        let m: Value = serde_json::from_slice(&got.manifest_bytes).unwrap();
        want_blobs.insert(m["config"]["digest"].as_str().unwrap().to_owned());
        for l in m["layers"].as_array().unwrap() {
            want_blobs.insert(l["digest"].as_str().unwrap().to_owned());
        }
        assert_eq!(got.blobs, want_blobs, "{name}: every blob, each verified");
    }

    // The cache is the container's /var/lib/kura, written by kura's user.
    let data = PathBuf::from(format!("/proc/{pid}/root/var/lib/kura"));
    let files = kura_tests::blobstore::files_under(&data);
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let stored = files
        .iter()
        .find(|f| f.file_name().is_some_and(|n| n == hex))
        .unwrap_or_else(|| {
            panic!(
                "kura's layer {layer} not under {}: {files:?}",
                data.display()
            )
        });
    assert_eq!(sha256(&std::fs::read(stored).unwrap()), layer);
    let owner = std::process::Command::new("stat")
        .args(["-c", "%u"])
        .arg(stored)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), UID);

    // SIGTERM (the image's StopSignal) stops kura promptly though it is
    // PID 1 in its namespace.
    ctrd.ctr(&["task", "kill", &c.id]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.task().is_some_and(|t| t.1 != "STOPPED") {
        assert!(
            Instant::now() < deadline,
            "kura did not stop on SIGTERM within 15s:\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Removed: no task, container or image left.
    c.remove().unwrap();
    assert!(c.task().is_none());
    assert!(!ctrd
        .ctr(&["container", "ls", "-q"])
        .unwrap()
        .contains(&c.id));
    assert!(!ctrd.ctr(&["image", "ls", "-q"]).unwrap().contains(&image));
}
