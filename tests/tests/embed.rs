//! kura-core embedded by someone else: `core/examples/embed.rs` (a plain
//! hyper server with its own directory storage) takes a push from skopeo
//! and serves it back byte for byte, with the tag list.
//!
//! Needs (Debian): skopeo.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use kura_tests::image::{oci_blobs, oci_ref, ImageSpec, OciLayout};
use kura_tests::peers::Skopeo;
use kura_tests::{free_port, workspace_root};

/// The example's binary, built on first use with the tests' profile.
fn example_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "kura-core", "--example", "embed"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build");
        assert!(
            status.success(),
            "cargo build -p kura-core --example embed failed"
        );
    });
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("examples/embed")
}

struct Embedded {
    child: Child,
    host: String,
    data: tempfile::TempDir,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Embedded {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let child = Command::new(example_bin())
        .args([&host, data.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the embed example");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&host).is_err() {
        assert!(Instant::now() < deadline, "the example never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    Embedded { child, host, data }
}

#[test]
fn skopeo_pushes_to_and_pulls_from_the_embedded_registry() {
    let reg = start();
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src_dir = work.path().join("src");
    let mut src = OciLayout::create(&src_dir).unwrap();
    // Layers big enough for skopeo to stream them in several writes.
    let img = src
        .add_image("v1", &ImageSpec::new(3, 3 * 1024 * 1024, 901))
        .unwrap();
    let oci = |dir: &Path, tag: &str| format!("oci:{}:{tag}", dir.display());
    sk.copy(
        &["--preserve-digests"],
        &oci(&src_dir, "v1"),
        &format!("docker://{}/demo/app:v1", reg.host),
    )
    .unwrap();
    let pulled = work.path().join("pulled");
    sk.copy(
        &[
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
        ],
        &format!("docker://{}/demo/app:v1", reg.host),
        &oci(&pulled, "v1"),
    )
    .unwrap();
    assert_eq!(oci_ref(&pulled, "v1").unwrap().digest, img.manifest.digest);
    assert_eq!(oci_blobs(&pulled).unwrap(), img.all_digests());

    // The data is the example's own files; no staging file is left behind.
    let tmp = reg.data.path().join(".tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staging files left: {left:?}");

    // Discovery works too: the tag list comes from the directory.
    let tags = sk
        .run(&[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{}/demo/app", reg.host),
        ])
        .unwrap();
    let tags: serde_json::Value = serde_json::from_slice(&tags).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
}
