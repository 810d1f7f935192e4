//! Garbage collection, retention and immutable tags on real stores, with
//! real clients: skopeo pushes and pulls through a running kura while
//! `kura gc` collects beside it (local disk and S3 via s3s-fs), and the
//! collections `kura serve` runs on its own schedule.
//!
//! Needs (Debian): skopeo; s3s-fs (scripts/test-env.sh).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kura_tests::api::Reg;
use kura_tests::image::{oci_blobs, ImageSpec, OciLayout};
use kura_tests::peers::Skopeo;
use kura_tests::s3::S3Server;
use kura_tests::{kura_bin, Kura, KuraOptions};

/// `kura gc` with `args`: its exit status and standard output.
fn kura_gc(args: &[&str]) -> (i32, String) {
    let out = Command::new(kura_bin())
        .arg("gc")
        .args(args)
        .output()
        .expect("running kura gc");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        format!("{stdout}\n(stderr: {stderr})"),
    )
}

/// The digests under a local store's `blobs/`.
fn stored_blobs(data: &Path) -> BTreeSet<String> {
    kura_tests::blobstore::files_under(&data.join("blobs/sha256"))
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            (name.len() == 64 && !name.contains('#')).then(|| format!("sha256:{name}"))
        })
        .collect()
}

/// Push with the layout's own digests (skopeo would otherwise compress
/// the uncompressed test layers on the way).
fn push(skopeo: &Skopeo, layout: &Path, tag: &str, dest: &str, all: bool) {
    let src = format!("oci:{}:{tag}", layout.display());
    let extra: &[&str] = if all {
        &["--all", "--preserve-digests"]
    } else {
        &["--preserve-digests"]
    };
    skopeo
        .copy(extra, &src, &format!("docker://{dest}"))
        .unwrap_or_else(|e| panic!("pushing {tag} to {dest}: {e:#}"));
}

/// Pull `image` into a fresh OCI layout and return its verified blobs.
fn pull(skopeo: &Skopeo, image: &str, all: bool) -> anyhow::Result<BTreeSet<String>> {
    let out = tempfile::tempdir()?;
    let dir = out.path().join("oci");
    let extra: &[&str] = if all {
        &["--all", "--preserve-digests"]
    } else {
        &["--preserve-digests"]
    };
    skopeo.copy(
        extra,
        &format!("docker://{image}"),
        &format!("oci:{}:pulled", dir.display()),
    )?;
    oci_blobs(&dir)
}

struct Pushed {
    _dir: tempfile::TempDir,
    layout: PathBuf,
    /// Three layers; its first two are `small`'s.
    big: kura_tests::image::Image,
    small: kura_tests::image::Image,
    lone: kura_tests::image::Image,
    multi: kura_tests::image::MultiPlatform,
}

fn images() -> Pushed {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let mut l = OciLayout::create(&layout).unwrap();
    let big = l.add_image("big", &ImageSpec::new(3, 150_000, 7)).unwrap();
    let small = l
        .add_image("small", &ImageSpec::new(2, 150_000, 7))
        .unwrap();
    let lone = l.add_image("lone", &ImageSpec::new(2, 80_000, 9)).unwrap();
    let multi = l
        .add_index(
            "multi",
            &[
                ImageSpec::new(1, 50_000, 11),
                ImageSpec::new(1, 50_000, 12).platform("linux", "arm64"),
            ],
        )
        .unwrap();
    assert_eq!(big.layers[..2], small.layers[..], "shared layers");
    Pushed {
        _dir: dir,
        layout,
        big,
        small,
        lone,
        multi,
    }
}

fn push_all(skopeo: &Skopeo, p: &Pushed, host: &str) {
    push(
        skopeo,
        &p.layout,
        "big",
        &format!("{host}/team/app:big"),
        false,
    );
    push(
        skopeo,
        &p.layout,
        "small",
        &format!("{host}/team/app:small"),
        false,
    );
    push(
        skopeo,
        &p.layout,
        "lone",
        &format!("{host}/team/app:lone"),
        false,
    );
    push(
        skopeo,
        &p.layout,
        "multi",
        &format!("{host}/team/multi:v1"),
        true,
    );
}

/// What the collection of `p` after `big` and `lone` lost their tags
/// removes: their manifests, configs, big's third layer, lone's layers.
fn garbage_of(p: &Pushed) -> BTreeSet<String> {
    let mut g: BTreeSet<String> = p.lone.all_digests();
    g.insert(p.big.manifest.digest.clone());
    g.insert(p.big.config.digest.clone());
    g.insert(p.big.layers[2].digest.clone());
    g
}

#[test]
fn kura_gc_beside_a_running_kura_frees_what_nothing_references_and_skopeo_still_pulls_the_rest() {
    let skopeo = Skopeo::new().unwrap();
    let reg = Reg::with_config("gc:\n  interval_secs: 0\n");
    let host = format!("127.0.0.1:{}", reg.kura.port);
    let data = reg.kura.data_dir.clone();
    let p = images();
    push_all(&skopeo, &p, &host);
    // Served once, so the running kura remembers it.
    let big_by_digest = format!("/v2/team/app/manifests/{}", p.big.manifest.digest);
    reg.get(&big_by_digest).expect(200);
    for tag in ["big", "lone"] {
        reg.delete(&format!("/v2/team/app/manifests/{tag}"))
            .expect(202);
    }
    let before = stored_blobs(&data);
    let garbage = garbage_of(&p);
    assert!(garbage.is_subset(&before));

    let data_arg = data.display().to_string();
    let (code, out) = kura_gc(&["--data-dir", &data_arg, "--grace", "0s", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    for d in &garbage {
        assert!(
            out.contains(d.as_str()),
            "dry run does not list {d}:\n{out}"
        );
    }
    assert!(out.contains("would remove 0 tags, 2 manifests"), "{out}");
    assert_eq!(stored_blobs(&data), before, "a dry run deleted");

    // Everything was written a moment ago: an hour's grace keeps it all.
    let (code, out) = kura_gc(&["--data-dir", &data_arg, "--grace", "1h"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("removed 0 tags, 0 manifests, 0 links, 0 blobs"),
        "{out}"
    );
    assert_eq!(stored_blobs(&data), before);

    let (code, out) = kura_gc(&["--data-dir", &data_arg, "--grace", "0s"]);
    assert_eq!(code, 0, "{out}");
    let after = stored_blobs(&data);
    assert_eq!(
        before.difference(&after).cloned().collect::<BTreeSet<_>>(),
        garbage,
        "exactly the garbage goes:\n{out}"
    );

    // The running kura answers from storage, not from what it remembered.
    reg.get(&big_by_digest).error(404, "MANIFEST_UNKNOWN");
    reg.get(&format!("/v2/team/app/blobs/{}", p.big.layers[2].digest))
        .error(404, "BLOB_UNKNOWN");
    let small = pull(&skopeo, &format!("{host}/team/app:small"), false).unwrap();
    assert_eq!(small, p.small.all_digests());
    let multi = pull(&skopeo, &format!("{host}/team/multi:v1"), true).unwrap();
    assert_eq!(multi, p.multi.all_digests());
    // Pushing what was collected works again.
    push(
        &skopeo,
        &p.layout,
        "big",
        &format!("{host}/team/app:big"),
        false,
    );
    assert_eq!(
        pull(&skopeo, &format!("{host}/team/app:big"), false).unwrap(),
        p.big.all_digests()
    );

    let fsck = Command::new(kura_bin())
        .args(["fsck", "--data-dir", &data_arg])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn kura_gc_on_s3_deletes_in_batches_and_the_bucket_keeps_only_live_content() {
    let skopeo = Skopeo::new().unwrap();
    let s3 = S3Server::start("gc-test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = s3.write_kura_config(&dir.path().join("kura.yaml")).unwrap();
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    yaml.push_str("gc:\n  interval_secs: 0\n");
    std::fs::write(&cfg, yaml).unwrap();
    let kura = Kura::start_with(KuraOptions {
        config: Some(cfg.clone()),
        ..Default::default()
    })
    .unwrap();
    let host = format!("127.0.0.1:{}", kura.port);
    let api = kura_tests::api::Api::for_kura(&kura);
    let p = images();
    push_all(&skopeo, &p, &host);
    for tag in ["big", "lone"] {
        api.delete(&format!("/v2/team/app/manifests/{tag}"))
            .expect(202);
    }
    let blob_keys = || -> BTreeSet<String> {
        s3.object_keys()
            .unwrap()
            .into_iter()
            .filter_map(|k| {
                let hex = k.strip_prefix("blobs/sha256/")?.split('/').nth(1)?;
                (hex.len() == 64).then(|| format!("sha256:{hex}"))
            })
            .collect()
    };
    let before = blob_keys();
    let cfg_arg = cfg.display().to_string();
    let (code, out) = kura_gc(&["--config", &cfg_arg, "--grace", "0s"]);
    assert_eq!(code, 0, "{out}");
    let after = blob_keys();
    assert_eq!(
        before.difference(&after).cloned().collect::<BTreeSet<_>>(),
        garbage_of(&p),
        "{out}"
    );
    assert_eq!(
        pull(&skopeo, &format!("{host}/team/app:small"), false).unwrap(),
        p.small.all_digests()
    );
    assert_eq!(
        pull(&skopeo, &format!("{host}/team/multi:v1"), true).unwrap(),
        p.multi.all_digests()
    );
}

#[test]
fn kura_serve_collects_on_its_schedule_and_counts_it() {
    let reg = Reg::with_config("gc:\n  interval_secs: 1\n  grace_secs: 1\n");
    let data = reg.kura.data_dir.clone();
    let kept = reg.push_image("team/app", "kept", "gc-kept");
    let dropped = reg.push_image("team/app", "dropped", "gc-dropped");
    reg.delete("/v2/team/app/manifests/dropped").expect(202);
    let gone = |d: &str| !stored_blobs(&data).contains(d);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gone(&dropped.digest) {
        assert!(
            Instant::now() < deadline,
            "not collected within 20 s; log:\n{}",
            reg.kura.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for layer in &dropped.layers {
        let d = kura_tests::sha256(layer);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(&d) {
            assert!(Instant::now() < deadline, "layer {d} stays");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let m = reg.get("/v2/team/app/manifests/kept").expect(200);
    assert_eq!(m.digest(), kept.digest);
    for layer in &kept.layers {
        let r = reg
            .get(&format!("/v2/team/app/blobs/{}", kura_tests::sha256(layer)))
            .expect(200);
        assert_eq!(r.body, *layer);
    }
    let metrics = kura_tests::http_client()
        .get(format!("{}/metrics", reg.kura.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let deleted: u64 = metrics
        .lines()
        .find(|l| l.starts_with("kura_gc_deleted_total{kind=\"blob\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no blob deletions counted:\n{metrics}"));
    assert!(deleted >= 3, "{deleted}");
    assert!(reg.kura.log_text().contains("garbage collection"));
}

#[test]
fn retention_rules_and_immutable_tags_with_skopeo() {
    let skopeo = Skopeo::new().unwrap();
    let reg = Reg::with_config(
        "gc:\n  interval_secs: 0\nretention:\n  - repositories: ci/**\n    keep_newest: 1\n    keep_tags: [\"release-*\"]\nimmutable_tags:\n  - repositories: ci/**\n    tags: release-*\n",
    );
    let host = format!("127.0.0.1:{}", reg.kura.port);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let mut l = OciLayout::create(&layout).unwrap();
    let one = l.add_image("one", &ImageSpec::new(1, 20_000, 21)).unwrap();
    let two = l.add_image("two", &ImageSpec::new(1, 20_000, 22)).unwrap();
    push(
        &skopeo,
        &layout,
        "one",
        &format!("{host}/ci/app:release-1"),
        false,
    );
    push(
        &skopeo,
        &layout,
        "one",
        &format!("{host}/ci/app:build-1"),
        false,
    );

    // An immutable tag does not move, and says why.
    let err = skopeo
        .copy(
            &[],
            &format!("oci:{}:two", layout.display()),
            &format!("docker://{host}/ci/app:release-1"),
        )
        .expect_err("an immutable tag moved");
    let text = format!("{err:#}");
    assert!(text.contains("immutable"), "{text}");
    reg.delete("/v2/ci/app/manifests/release-1")
        .error(403, "DENIED");
    // The same image again is no move.
    push(
        &skopeo,
        &layout,
        "one",
        &format!("{host}/ci/app:release-1"),
        false,
    );
    // Newest of all, so `keep_newest: 1` keeps it.
    std::thread::sleep(Duration::from_millis(20));
    push(
        &skopeo,
        &layout,
        "two",
        &format!("{host}/ci/app:build-2"),
        false,
    );

    let data_arg = reg.kura.data_dir.display().to_string();
    let dir_cfg = tempfile::tempdir().unwrap();
    let cfg = dir_cfg.path().join("kura.yaml");
    std::fs::write(
        &cfg,
        "retention:\n  - repositories: ci/**\n    keep_newest: 1\n    keep_tags: [\"release-*\"]\n",
    )
    .unwrap();
    let cfg_arg = cfg.display().to_string();
    let (code, out) = kura_gc(&[
        "--config",
        &cfg_arg,
        "--data-dir",
        &data_arg,
        "--grace",
        "0s",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("tag ci/app:build-1 (retention)"), "{out}");
    let mut tags = reg.get("/v2/ci/app/tags/list").expect(200).tags();
    tags.sort();
    assert_eq!(tags, ["build-2", "release-1"], "{out}");
    // build-1 pointed at release-1's manifest: nothing but the tag went.
    assert!(out.contains("removed 1 tags, 0 manifests"), "{out}");
    assert_eq!(
        pull(&skopeo, &format!("{host}/ci/app:release-1"), false).unwrap(),
        one.all_digests()
    );
    assert_eq!(
        pull(&skopeo, &format!("{host}/ci/app:build-2"), false).unwrap(),
        two.all_digests()
    );
}
