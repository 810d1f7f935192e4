//! `kura fsck` on real stores: local disk written by a running kura that
//! mirrors a real distribution and hosts pushes, and S3 (s3s-fs). Bytes
//! are flipped on disk behind kura's back; fsck must name every damaged
//! blob by its digest, exit with the right status, repair only what it
//! can prove, and leave a store that heals when clients pull and push
//! again.
//!
//! Needs (Debian): docker-registry; s3s-fs (scripts/test-env.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kura_tests::api::{Api, Image};
use kura_tests::s3::S3Server;
use kura_tests::upstream::Distribution;
use kura_tests::{kura_bin, sha256, Kura, KuraOptions};

/// `kura fsck` with `args`: its exit status and standard output.
fn fsck(args: &[&str]) -> (i32, String) {
    let out = Command::new(kura_bin())
        .arg("fsck")
        .args(args)
        .output()
        .expect("running kura fsck");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        format!("{stdout}\n(stderr: {stderr})"),
    )
}

fn blob_file(data: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Flip one bit in the middle of a file, as a failing disk would.
fn flip_a_bit(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn fsck_names_flipped_blobs_repairs_what_it_can_prove_and_the_store_heals() {
    let up = Distribution::start().unwrap();
    let upstream_image = Image::new("fsck-upstream");
    up.push_image(
        "team/app",
        "v1",
        &upstream_image.config,
        &upstream_image.layers,
    )
    .unwrap();

    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("kura.yaml");
    std::fs::write(
        &cfg,
        format!(
            "registry:\n  upload_max_idle_secs: 1\nmirror:\n  upstreams:\n    - name: up.local\n      url: {}\n",
            up.url
        ),
    )
    .unwrap();
    let mut kura = Kura::start_with(KuraOptions {
        config: Some(cfg.clone()),
        ..Default::default()
    })
    .unwrap();
    let data = kura.data_dir.clone();
    let api = Api::for_kura(&kura);
    let hosted: Image = api.push_image("team/hosted", "v1", "fsck-hosted");
    // Pull the mirrored image through kura: manifest, config, layers.
    let pull = |api: &Api| {
        let m = api.get("/v2/up.local/team/app/manifests/v1");
        assert_eq!(m.digest(), upstream_image.digest);
        for blob in std::iter::once(&upstream_image.config).chain(&upstream_image.layers) {
            let r = api.get(&format!("/v2/up.local/team/app/blobs/{}", sha256(blob)));
            assert_eq!(sha256(&r.body), sha256(blob));
        }
    };
    pull(&api);
    // An upload a client gave up on.
    let abandoned = api.start_upload("team/hosted");
    api.patch(&abandoned, &[7u8; 1000], None);
    kura.terminate().unwrap();

    let data_arg = data.display().to_string();
    let cfg_arg = cfg.display().to_string();
    let base = [
        "--config",
        cfg_arg.as_str(),
        "--data-dir",
        data_arg.as_str(),
    ];
    let (code, out) = fsck(&base);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\nclean\n"), "{out}");
    assert!(out.contains("unfinished upload"), "{out}");
    // config + 2 layers + manifest, twice.
    assert!(out.contains("8 blobs"), "{out}");

    // A bit flips in a mirrored layer and in a hosted one.
    let mirrored = sha256(&upstream_image.layers[0]);
    let pushed = sha256(&hosted.layers[1]);
    flip_a_bit(&blob_file(&data, &mirrored));
    flip_a_bit(&blob_file(&data, &pushed));
    let (code, out) = fsck(&base);
    assert_eq!(code, 4, "{out}");
    for d in [&mirrored, &pushed] {
        assert!(
            out.contains(&format!("DAMAGE: blob {d} is corrupt")),
            "{d} not named:\n{out}"
        );
    }
    assert!(out.contains("DAMAGED: 2 problems"), "{out}");

    // Repair removes both corrupt blobs and the upload, idle past the
    // configured second.
    std::thread::sleep(Duration::from_millis(1100));
    let repair: Vec<&str> = base.iter().copied().chain(["--repair"]).collect();
    let (code, out) = fsck(&repair);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("repaired: 2 damaged objects removed"), "{out}");
    assert!(!blob_file(&data, &mirrored).exists());
    assert!(!blob_file(&data, &pushed).exists());
    assert!(
        !data.join("uploads").exists()
            || std::fs::read_dir(data.join("uploads")).unwrap().count() == 0,
        "{out}"
    );

    // The hosted layer is lost and the hosted manifest says so; the
    // mirror's missing layer is only a note (the next pull fills it).
    let (code, out) = fsck(&base);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains(&format!(
            "team/hosted@{} needs blob {pushed}, whose bytes are missing",
            hosted.digest
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "note: up.local/team/app links blob {mirrored}, whose bytes are missing"
        )),
        "{out}"
    );

    // A write interrupted by a crash long ago: kura serve sweeps it once
    // started (in the background: it answers first) and says to run fsck.
    let staging = data.join("blobs/sha256/00");
    std::fs::create_dir_all(&staging).unwrap();
    let leftover = staging.join("0000#12");
    std::fs::write(&leftover, b"half a blob").unwrap();
    let st = Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(&leftover)
        .status()
        .unwrap();
    assert!(st.success());
    // And an eviction pass it was killed in: alone on its storage, kura
    // releases the pass's lease instead of waiting it out.
    let lease = data.join("leases/evictor");
    std::fs::create_dir_all(lease.parent().unwrap()).unwrap();
    std::fs::write(&lease, "0123456789abcdef0123456789abcdef 1").unwrap();
    kura.restart().unwrap();
    assert!(kura_tests::stream::eventually(10, || !leftover.exists()));
    assert!(!lease.exists());
    assert!(kura.log_text().contains("released the eviction lease"));
    assert!(
        kura_tests::stream::eventually(10, || kura
            .log_text()
            .contains("removed files of writes interrupted")),
        "{}",
        kura.log_text()
    );
    let log = kura.log_text();
    assert!(
        log.contains("unclean shutdown") && log.contains("kura fsck"),
        "{log}"
    );

    // Clients heal the store: the mirror fills the layer again, the team
    // pushes theirs again.
    pull(&api);
    api.push_blob("team/hosted", &hosted.layers[1]);
    kura.terminate().unwrap();
    let (code, out) = fsck(&base);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn fsck_checks_and_repairs_an_s3_store() {
    let s3 = S3Server::start("fsck").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = s3.write_kura_config(&dir.path().join("kura.yaml")).unwrap();
    let mut kura = Kura::start_with(KuraOptions {
        config: Some(cfg.clone()),
        ..Default::default()
    })
    .unwrap();
    let api = Api::for_kura(&kura);
    let img = api.push_image("team/s3", "v1", "fsck-s3");
    kura.terminate().unwrap();

    let cfg_arg = cfg.display().to_string();
    let (code, out) = fsck(&["--config", &cfg_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 blobs"), "{out}");

    let layer = sha256(&img.layers[0]);
    let hex = layer.strip_prefix("sha256:").unwrap();
    let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
    flip_a_bit(&s3.bucket_dir().join(&key));
    let (code, out) = fsck(&["--config", &cfg_arg]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains(&format!("DAMAGE: blob {layer} is corrupt")),
        "{out}"
    );
    let (code, out) = fsck(&["--config", &cfg_arg, "--repair"]);
    assert_eq!(code, 1, "{out}");
    assert!(!s3.object_keys().unwrap().contains(&key));

    // Storage that cannot be reached, a data directory that does not
    // exist: status 8, not "clean".
    let (code, out) = fsck(&["--data-dir", "/nonexistent/kura-data"]);
    assert_eq!(code, 8, "{out}");
    assert!(!Path::new("/nonexistent").exists());
    drop(s3);
    let (code, out) = fsck(&["--config", &cfg_arg]);
    assert_eq!(code, 8, "{out}");
}
