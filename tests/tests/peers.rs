//! kura against real peers: skopeo (push and pull, OCI and Docker schema 2,
//! single images and multi-platform indexes), podman and containerd pulls,
//! an S3 backend (s3s-fs), a SIGKILL in the middle of an upload, and RSS
//! while moving a 1 GiB blob.
//!
//! Needs: skopeo, podman, containerd (Debian packages) and s3s-fs
//! (`cargo install s3s-fs@0.17.0 --locked --features binary --ignore-rust-version`).
//! Missing tools fail the tests with an explanation rather than skipping.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kura_tests::image::{
    oci_blobs, oci_ref, read_dir_transport, Image, ImageSpec, MultiPlatform, OciLayout,
    RandomReader, DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST,
};
use kura_tests::peers::{Containerd, Podman, Skopeo};
use kura_tests::s3::S3Server;
use kura_tests::{http_client, sha256, Kura, KuraOptions};
use serde_json::Value;

const MIB: usize = 1024 * 1024;

fn host(kura: &Kura) -> String {
    format!("127.0.0.1:{}", kura.port)
}

/// GET a manifest with an Accept header; returns (status, content-type,
/// Docker-Content-Digest, body).
fn get_manifest(
    kura: &Kura,
    repo: &str,
    reference: &str,
    accept: &str,
) -> (u16, String, String, Vec<u8>) {
    let resp = http_client()
        .get(format!("{}/v2/{repo}/manifests/{reference}", kura.url))
        .header("Accept", accept)
        .send()
        .expect("GET manifest");
    let status = resp.status().as_u16();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (ct, dcd) = (h("content-type"), h("docker-content-digest"));
    (
        status,
        ct,
        dcd,
        resp.bytes().expect("manifest body").to_vec(),
    )
}

fn head_blob(kura: &Kura, repo: &str, digest: &str) -> (u16, Option<u64>) {
    let resp = http_client()
        .head(format!("{}/v2/{repo}/blobs/{digest}", kura.url))
        .send()
        .expect("HEAD blob");
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (resp.status().as_u16(), len)
}

/// The registry serves `image` under `repo:tag` byte for byte.
fn assert_registry_has_image(kura: &Kura, repo: &str, tag: &str, image: &Image) {
    let (status, ct, dcd, body) = get_manifest(kura, repo, tag, OCI_MANIFEST);
    assert_eq!(status, 200, "GET {repo}:{tag}");
    assert_eq!(ct, OCI_MANIFEST);
    assert_eq!(dcd, image.manifest.digest);
    assert_eq!(
        body, image.manifest_bytes,
        "manifest bytes changed on the way in"
    );
    for d in image.layers.iter().chain([&image.config]) {
        assert_eq!(
            head_blob(kura, repo, &d.digest),
            (200, Some(d.size)),
            "blob {} in {repo}",
            d.digest
        );
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
    layout: PathBuf,
    image: Image,
    multi: MultiPlatform,
}

/// An OCI layout with `v1` (3 layers of `layer_size`) and `multi` (an index
/// over linux/amd64 and linux/arm64 images with distinct layers).
fn fixture(seed: u64, layer_size: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    let mut layout = OciLayout::create(&dir).unwrap();
    let image = layout
        .add_image("v1", &ImageSpec::new(3, layer_size, seed))
        .unwrap();
    let multi = layout
        .add_index(
            "multi",
            &[
                ImageSpec::new(2, layer_size, seed + 1),
                ImageSpec::new(2, layer_size, seed + 2).platform("linux", "arm64"),
            ],
        )
        .unwrap();
    // Distinct layers everywhere: no digest shared between the images.
    let mut seen = BTreeSet::new();
    for l in image
        .layers
        .iter()
        .chain(multi.images.iter().flat_map(|i| i.layers.iter()))
    {
        assert!(
            seen.insert(l.digest.clone()),
            "layer {} generated twice",
            l.digest
        );
    }
    // The generator wrote what it claims.
    let all: BTreeSet<String> = image
        .all_digests()
        .union(&multi.all_digests())
        .cloned()
        .collect();
    assert_eq!(oci_blobs(&dir).unwrap(), all);
    Fixture {
        tmp,
        layout: dir,
        image,
        multi,
    }
}

/// skopeo push and pull through kura, comparing every digest.
fn skopeo_round_trip(kura: &Kura, prefix: &str, seed: u64) {
    let t = Instant::now();
    let step = |what: &str| eprintln!("[{prefix} {:>6.1}s] {what}", t.elapsed().as_secs_f64());
    let f = fixture(seed, 2 * MIB);
    step("generated layout");
    let sk = Skopeo::new().unwrap();
    let host = host(kura);
    let src = f.layout.display().to_string();
    let out = f.tmp.path();

    // --- one image, OCI manifest, uncompressed layers kept as they are.
    let repo = format!("{prefix}/single");
    let remote = format!("docker://{host}/{repo}:v1");
    sk.copy(&["--preserve-digests"], &format!("oci:{src}:v1"), &remote)
        .unwrap();
    assert_registry_has_image(kura, &repo, "v1", &f.image);
    step("pushed image");

    // Back out to an OCI layout.
    let oci_out = out.join("oci-out");
    sk.copy(
        &[
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
        ],
        &remote,
        &format!("oci:{}:v1", oci_out.display()),
    )
    .unwrap();
    assert_eq!(
        oci_ref(&oci_out, "v1").unwrap().digest,
        f.image.manifest.digest
    );
    assert_eq!(
        oci_blobs(&oci_out).unwrap(),
        f.image.all_digests(),
        "blobs pulled into oci:"
    );

    // And to a dir: (manifest.json plus one file per blob).
    let dir_out = out.join("dir-out");
    sk.copy(
        &["--preserve-digests"],
        &remote,
        &format!("dir:{}", dir_out.display()),
    )
    .unwrap();
    let d = read_dir_transport(&dir_out).unwrap();
    assert_eq!(d.manifest_digest, f.image.manifest.digest);
    assert_eq!(d.manifest_bytes, f.image.manifest_bytes);
    let mut expected = f.image.all_digests();
    expected.remove(&f.image.manifest.digest);
    assert_eq!(d.blobs, expected, "blobs pulled into dir:");

    step("pulled image to oci: and dir:");
    // What skopeo sees remotely.
    let raw = sk
        .run(&["inspect", "--raw", "--tls-verify=false", &remote])
        .unwrap();
    assert_eq!(raw, f.image.manifest_bytes);

    // --- two-platform index with --all.
    let repo = format!("{prefix}/multi");
    let remote = format!("docker://{host}/{repo}:v1");
    sk.copy(
        &["--all", "--preserve-digests"],
        &format!("oci:{src}:multi"),
        &remote,
    )
    .unwrap();
    let (status, ct, dcd, body) =
        get_manifest(kura, &repo, "v1", &format!("{OCI_INDEX}, {OCI_MANIFEST}"));
    assert_eq!(
        (status, ct.as_str(), dcd.as_str()),
        (200, OCI_INDEX, f.multi.index.digest.as_str())
    );
    assert_eq!(body, f.multi.index_bytes);
    for image in &f.multi.images {
        assert_registry_has_image(kura, &repo, &image.manifest.digest, image);
    }
    let oci_multi = out.join("oci-multi");
    sk.copy(
        &[
            "--all",
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
        ],
        &remote,
        &format!("oci:{}:multi", oci_multi.display()),
    )
    .unwrap();
    assert_eq!(
        oci_ref(&oci_multi, "multi").unwrap().digest,
        f.multi.index.digest
    );
    assert_eq!(
        oci_blobs(&oci_multi).unwrap(),
        f.multi.all_digests(),
        "blobs pulled with --all"
    );

    step("pushed and pulled the index");
    // --- Docker schema 2: skopeo converts (and compresses) on the way in.
    let repo = format!("{prefix}/docker");
    let remote = format!("docker://{host}/{repo}:v1");
    sk.copy(&["--format", "v2s2"], &format!("oci:{src}:v1"), &remote)
        .unwrap();
    let raw = sk
        .run(&["inspect", "--raw", "--tls-verify=false", &remote])
        .unwrap();
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(
        m["mediaType"],
        DOCKER_MANIFEST_V2,
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), f.image.layers.len());
    for l in layers {
        assert!(
            l["mediaType"]
                .as_str()
                .unwrap()
                .starts_with("application/vnd.docker.image.rootfs.diff.tar"),
            "{l}"
        );
    }
    let v2s2_digest = sha256(&raw);
    let inspect: Value =
        serde_json::from_slice(&sk.run(&["inspect", "--tls-verify=false", &remote]).unwrap())
            .unwrap();
    assert_eq!(inspect["Digest"], v2s2_digest.as_str());
    let (status, ct, dcd, body) = get_manifest(kura, &repo, "v1", DOCKER_MANIFEST_V2);
    assert_eq!(
        (status, ct.as_str(), dcd.as_str()),
        (200, DOCKER_MANIFEST_V2, v2s2_digest.as_str())
    );
    assert_eq!(body, raw);
    let dir_v2s2 = out.join("dir-v2s2");
    sk.copy(
        &["--preserve-digests"],
        &remote,
        &format!("dir:{}", dir_v2s2.display()),
    )
    .unwrap();
    let d = read_dir_transport(&dir_v2s2).unwrap();
    assert_eq!(
        d.manifest_digest, v2s2_digest,
        "pulled manifest is not the one pushed"
    );
    let mut expected: BTreeSet<String> = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    expected.insert(m["config"]["digest"].as_str().unwrap().to_owned());
    assert_eq!(d.blobs, expected);
    // The layers were recompressed, but the content is the same: the config
    // still lists the original uncompressed digests as diff_ids.
    let config: Value = serde_json::from_slice(
        &std::fs::read(
            dir_v2s2.join(
                m["config"]["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:"),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let originals: Vec<&str> = f.image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(diff_ids, originals);
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );
    step("pushed and pulled v2s2");
}

#[test]
fn skopeo_round_trip_local_disk() {
    let kura = Kura::start().unwrap();
    skopeo_round_trip(&kura, "skopeo-local", 100);
    // It all went to the data directory.
    assert!(kura.data_dir.join("blobs/sha256").is_dir());
}

#[test]
fn skopeo_round_trip_s3() {
    let s3 = S3Server::start("kura").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = s3.write_kura_config(&tmp.path().join("kura.yaml")).unwrap();
    let kura = Kura::start_with(KuraOptions {
        config: Some(config),
        data_dir: Some(tmp.path().join("data")),
        ..Default::default()
    })
    .unwrap();
    skopeo_round_trip(&kura, "skopeo-s3", 200);
    // The blobs are in the bucket, not on local disk.
    let keys = s3.object_keys().unwrap();
    let blob_keys = keys
        .iter()
        .filter(|k| k.starts_with("blobs/sha256/"))
        .count();
    assert!(
        blob_keys >= 10,
        "expected blobs in the bucket, found keys {keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("repositories/skopeo-s3/single/_manifests/tags/v1")),
        "{keys:?}"
    );
    assert!(
        !kura.data_dir.join("blobs").exists(),
        "S3 mode wrote blobs to the local data dir"
    );
    // Restart: everything is still served from S3.
    let mut kura = kura;
    kura.restart().unwrap();
    let (status, _, dcd, _) = get_manifest(&kura, "skopeo-s3/multi", "v1", OCI_INDEX);
    assert_eq!(status, 200);
    assert!(dcd.starts_with("sha256:"));
}

/// Push the fixture's `v1` and `multi` with skopeo (digests preserved).
fn push_fixture(kura: &Kura, f: &Fixture, repo: &str) {
    let sk = Skopeo::new().unwrap();
    let src = f.layout.display().to_string();
    let h = host(kura);
    sk.copy(
        &["--preserve-digests"],
        &format!("oci:{src}:v1"),
        &format!("docker://{h}/{repo}:v1"),
    )
    .unwrap();
    sk.copy(
        &["--all", "--preserve-digests"],
        &format!("oci:{src}:multi"),
        &format!("docker://{h}/{repo}:multi"),
    )
    .unwrap();
}

#[test]
fn podman_pull() {
    let kura = Kura::start().unwrap();
    let f = fixture(300, 2 * MIB);
    push_fixture(&kura, &f, "podman/app");
    let podman = Podman::new().unwrap();
    let h = host(&kura);

    let reference = format!("{h}/podman/app:v1");
    podman
        .run(&["pull", "--quiet", "--tls-verify=false", &reference])
        .unwrap();
    let out = podman
        .run(&[
            "image",
            "inspect",
            "--format",
            "{{.Digest}} {{.Id}} {{.Os}}/{{.Architecture}}",
            &reference,
        ])
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        fields,
        [
            f.image.manifest.digest.as_str(),
            f.image.config.hex(),
            "linux/amd64"
        ],
        "podman image inspect"
    );
    // Layers were unpacked: podman knows all of them by diff_id.
    let out = podman
        .run(&[
            "image",
            "inspect",
            "--format",
            "{{json .RootFS.Layers}}",
            &reference,
        ])
        .unwrap();
    let layers: Vec<String> = serde_json::from_slice(&out).unwrap();
    let originals: Vec<String> = f.image.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layers, originals);

    // The index: podman picks linux/amd64 from it.
    let reference = format!("{h}/podman/app:multi");
    podman
        .run(&["pull", "--quiet", "--tls-verify=false", &reference])
        .unwrap();
    let out = podman
        .run(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{.Architecture}}",
            &reference,
        ])
        .unwrap();
    let amd64 = &f.multi.images[0];
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        format!("{} amd64", amd64.config.hex())
    );
    // By digest, too.
    let by_digest = format!("{h}/podman/app@{}", f.multi.images[1].manifest.digest);
    podman
        .run(&[
            "pull",
            "--quiet",
            "--tls-verify=false",
            "--arch",
            "arm64",
            &by_digest,
        ])
        .unwrap();
    let out = podman
        .run(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{.Architecture}}",
            &by_digest,
        ])
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        format!("{} arm64", f.multi.images[1].config.hex())
    );
}

/// `ctr image ls` rows as (ref, type, digest).
fn ctr_images(c: &Containerd) -> Vec<(String, String, String)> {
    c.ctr(&["image", "ls"])
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| (f[0].to_owned(), f[1].to_owned(), f[2].to_owned()))
        })
        .collect()
}

#[test]
fn containerd_pull() {
    let kura = Kura::start().unwrap();
    let f = fixture(400, 2 * MIB);
    push_fixture(&kura, &f, "ctr/app");
    let mut ctrd = Containerd::start().unwrap();
    let h = host(&kura);

    // Pull and unpack with the default snapshotter (overlayfs). It works in
    // this sandbox (root, / on a real filesystem); if a machine cannot mount
    // overlay, switch to `--snapshotter native`.
    let reference = format!("{h}/ctr/app:v1");
    ctrd.ctr(&["image", "pull", "--plain-http", &reference])
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_text()));
    let images = ctr_images(&ctrd);
    let row = images
        .iter()
        .find(|r| r.0 == reference)
        .unwrap_or_else(|| panic!("{images:?}"));
    assert_eq!(
        (row.1.as_str(), row.2.as_str()),
        (OCI_MANIFEST, f.image.manifest.digest.as_str())
    );
    // Every blob is in containerd's content store, with the right size.
    let content = ctrd.ctr(&["content", "ls"]).unwrap();
    for d in f
        .image
        .layers
        .iter()
        .chain([&f.image.config, &f.image.manifest])
    {
        let line = content
            .lines()
            .find(|l| l.starts_with(&d.digest))
            .unwrap_or_else(|| panic!("{} not in\n{content}", d.digest));
        assert!(line.split_whitespace().nth(1).is_some(), "{line}");
    }
    // Unpacked: one committed snapshot per layer.
    let snaps = ctrd.ctr(&["snapshots", "ls"]).unwrap();
    let committed = snaps.lines().filter(|l| l.contains("Committed")).count();
    assert_eq!(committed, f.image.layers.len(), "{snaps}");
    // `ctr image check`: everything present.
    let check = ctrd.ctr(&["image", "check"]).unwrap();
    assert!(
        check
            .lines()
            .any(|l| l.starts_with(&reference) && l.contains("complete")),
        "{check}"
    );

    // The index, all platforms fetched (only linux/amd64 unpacked).
    let reference = format!("{h}/ctr/app:multi");
    ctrd.ctr(&[
        "image",
        "pull",
        "--plain-http",
        "--all-platforms",
        &reference,
    ])
    .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_text()));
    let images = ctr_images(&ctrd);
    let row = images
        .iter()
        .find(|r| r.0 == reference)
        .unwrap_or_else(|| panic!("{images:?}"));
    assert_eq!(
        (row.1.as_str(), row.2.as_str()),
        (OCI_INDEX, f.multi.index.digest.as_str())
    );
    let content = ctrd.ctr(&["content", "ls"]).unwrap();
    for d in f.multi.all_digests() {
        assert!(
            content.lines().any(|l| l.starts_with(&d)),
            "{d} not in content store:\n{content}"
        );
    }
    ctrd.stop();
}

// ----- crash safety ------------------------------------------------------

/// Start an upload session; returns its Location path.
fn start_session(kura: &Kura, repo: &str) -> String {
    let resp = http_client()
        .post(format!("{}/v2/{repo}/blobs/uploads/", kura.url))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with('/'), "Location {loc}");
    loc
}

/// Open a raw HTTP request and send its headers and the first `send` bytes
/// of a `total`-byte random body, leaving the request unfinished.
fn partial_request(
    kura: &Kura,
    method: &str,
    path: &str,
    seed: u64,
    total: u64,
    send: u64,
) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", kura.port)).unwrap();
    // kura must keep reading: a write stuck for a minute fails the test.
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n",
        kura.port
    )
    .unwrap();
    let mut body = RandomReader::new(seed, total);
    let mut buf = vec![0u8; MIB];
    let mut sent = 0u64;
    while sent < send {
        let n = body
            .read(&mut buf[..(send - sent).min(MIB as u64) as usize])
            .unwrap();
        s.write_all(&buf[..n]).unwrap();
        sent += n as u64;
    }
    s
}

/// Every file under `<data>/blobs`: (path, name matches content).
fn blob_files(data_dir: &Path) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let root = data_dir.join("blobs/sha256");
    let Ok(prefixes) = std::fs::read_dir(&root) else {
        return out;
    };
    for p in prefixes {
        let p = p.unwrap().path();
        if !p.is_dir() {
            out.push((p, false));
            continue;
        }
        for f in std::fs::read_dir(&p).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let in_right_dir =
                p.file_name().unwrap().to_string_lossy() == name.get(..2).unwrap_or("");
            let ok = in_right_dir
                && f.is_file()
                && sha256(&std::fs::read(&f).unwrap()) == format!("sha256:{name}");
            out.push((f, ok));
        }
    }
    out
}

fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push((e.path(), e.metadata().unwrap().len()));
            }
        }
    }
    out
}

/// Stream a `len`-byte random blob to a new session as `chunks` PATCH
/// requests (with Content-Range), then PUT ?digest=. Never holds the blob
/// in memory. Returns (PUT status, digest).
fn upload_streamed(kura: &Kura, repo: &str, seed: u64, len: u64, chunks: u64) -> (u16, String) {
    use std::sync::{Arc, Mutex};
    /// At most `left` bytes from a shared reader.
    struct Part {
        inner: Arc<Mutex<RandomReader>>,
        left: u64,
    }
    impl Read for Part {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let max = (buf.len() as u64).min(self.left) as usize;
            let n = self.inner.lock().unwrap().read(&mut buf[..max])?;
            self.left -= n as u64;
            Ok(n)
        }
    }
    let reader = Arc::new(Mutex::new(RandomReader::new(seed, len)));
    let mut loc = start_session(kura, repo);
    let chunk_len = len.div_ceil(chunks);
    let mut offset = 0;
    while offset < len {
        let n = chunk_len.min(len - offset);
        let body = reqwest::blocking::Body::sized(
            Part {
                inner: reader.clone(),
                left: n,
            },
            n,
        );
        let resp = http_client()
            .patch(format!("{}{loc}", kura.url))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{offset}-{}", offset + n - 1))
            .body(body)
            .send()
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            202,
            "PATCH of bytes {offset}..{}",
            offset + n
        );
        offset += n;
        assert_eq!(
            resp.headers()["range"].to_str().unwrap(),
            format!("0-{}", offset - 1)
        );
        loc = resp.headers()["location"].to_str().unwrap().to_owned();
    }
    let reader = reader.lock().unwrap();
    assert_eq!(reader.produced(), len, "the whole body was not sent");
    let d = reader.digest();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let resp = http_client()
        .put(format!("{}{loc}{sep}digest={d}", kura.url))
        .send()
        .unwrap();
    (resp.status().as_u16(), d)
}

/// GET a blob and hash it as it streams; returns (status, bytes, digest).
fn get_blob_digest(
    kura: &Kura,
    repo: &str,
    digest: &str,
    mut on_chunk: impl FnMut(u64),
) -> (u16, u64, String) {
    use sha2::Digest;
    let mut resp = http_client()
        .get(format!("{}/v2/{repo}/blobs/{digest}", kura.url))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; MIB];
    let mut total = 0u64;
    loop {
        let n = resp.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
        on_chunk(total);
    }
    (
        status,
        total,
        format!("sha256:{}", hex::encode(h.finalize())),
    )
}

#[test]
fn crash_mid_upload_then_retry() {
    const TOTAL: u64 = 300 * MIB as u64;
    const SEED: u64 = 500;
    let repo = "crash/chunked";
    let mut kura = Kura::start().unwrap();
    let t = Instant::now();
    let step = |what: &str| eprintln!("[crash {:>6.1}s] {what}", t.elapsed().as_secs_f64());
    let loc = start_session(&kura, repo);

    // Half of a 300 MiB PATCH, then SIGKILL while kura is still reading it.
    let conn = partial_request(&kura, "PATCH", &loc, SEED, TOTAL, TOTAL / 2);
    std::thread::sleep(Duration::from_millis(200));
    kura.kill();
    drop(conn);
    // The premise: kura was killed while it was storing the chunk.
    let staged: u64 = files_under(&kura.data_dir).iter().map(|(_, n)| n).sum();
    assert!(
        staged >= 100 * MIB as u64,
        "only {staged} bytes on disk when kura was killed"
    );
    let full_digest = RandomReader::digest_of(SEED, TOTAL);
    kura.restart().unwrap();
    step("sent half, killed, restarted");

    // (a) Not visible, and nothing in the blob store is damaged.
    assert_eq!(head_blob(&kura, repo, &full_digest).0, 404);
    let bad: Vec<_> = blob_files(&kura.data_dir)
        .into_iter()
        .filter(|(_, ok)| !ok)
        .collect();
    assert!(
        bad.is_empty(),
        "files under blobs/ whose content does not match their name: {bad:?}"
    );
    // The interrupted session never recorded the unfinished chunk: it is
    // either gone or still at offset 0.
    let resp = http_client()
        .get(format!("{}{loc}", kura.url))
        .send()
        .unwrap();
    match resp.status().as_u16() {
        404 => {}
        204 => assert_eq!(resp.headers()["range"].to_str().unwrap(), "0-0"),
        s => panic!("GET {loc} after crash: {s}"),
    }
    // Finishing the interrupted session cannot produce the blob.
    let resp = http_client()
        .put(format!("{}{loc}?digest={full_digest}", kura.url))
        .send()
        .unwrap();
    assert!(
        resp.status().is_client_error(),
        "PUT on the interrupted session: {}",
        resp.status()
    );
    assert_eq!(head_blob(&kura, repo, &full_digest).0, 404);

    step("checked the store after the crash");
    // (b) From scratch with a new session: 201 and the right bytes.
    let (status, digest) = upload_streamed(&kura, repo, SEED, TOTAL, 1);
    assert_eq!(digest, full_digest);
    assert_eq!(status, 201, "PUT completing the retried upload");
    assert_eq!(head_blob(&kura, repo, &digest), (200, Some(TOTAL)));
    step("uploaded again");
    let (status, len, got) = get_blob_digest(&kura, repo, &digest, |_| {});
    step("downloaded");
    assert_eq!((status, len, got.as_str()), (200, TOTAL, digest.as_str()));
    let bad: Vec<_> = blob_files(&kura.data_dir)
        .into_iter()
        .filter(|(_, ok)| !ok)
        .collect();
    assert!(
        bad.is_empty(),
        "files under blobs/ whose content does not match their name: {bad:?}"
    );
}

/// A crash must not leave partial files behind for ever: not in blobs/
/// (monolithic `POST ?digest=` streams straight to the blob's place), and
/// not in uploads/ once the janitor has removed the abandoned session.
#[test]
fn crash_leaves_no_partial_files() {
    const TOTAL: u64 = 64 * MIB as u64;
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("kura.yaml");
    // Sessions idle for more than a second are abandoned; the janitor runs
    // at startup.
    std::fs::write(&config, "registry:\n  upload_max_idle_secs: 1\n").unwrap();
    let mut kura = Kura::start_with(KuraOptions {
        config: Some(config),
        data_dir: Some(tmp.path().join("data")),
        ..Default::default()
    })
    .unwrap();
    let repo = "crash/leftovers";
    let mono_digest = RandomReader::digest_of(601, TOTAL);
    let mono = partial_request(
        &kura,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={mono_digest}"),
        601,
        TOTAL,
        TOTAL / 2,
    );
    let loc = start_session(&kura, repo);
    let chunked = partial_request(&kura, "PATCH", &loc, 602, TOTAL, TOTAL / 2);
    std::thread::sleep(Duration::from_millis(1500));
    kura.kill();
    drop((mono, chunked));
    // The premise: kura had started writing both bodies to disk.
    let staged: u64 = files_under(&kura.data_dir).iter().map(|(_, n)| n).sum();
    assert!(
        staged >= 16 * MIB as u64,
        "only {staged} bytes on disk when kura was killed"
    );
    kura.restart().unwrap();
    // Give the startup janitor a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let session_dir = kura
        .data_dir
        .join("uploads")
        .join(loc.rsplit('/').next().unwrap());
    while Instant::now() < deadline && session_dir.join("state").exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !session_dir.join("state").exists(),
        "the janitor did not remove the abandoned session"
    );
    assert_eq!(head_blob(&kura, repo, &mono_digest).0, 404);

    let blobs = blob_files(&kura.data_dir);
    let uploads = files_under(&kura.data_dir.join("uploads"));
    let bad: Vec<_> = blobs
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(p, _)| p.clone())
        .collect();
    assert!(
        bad.is_empty() && uploads.is_empty(),
        "partial files left after a crash and janitor run: under blobs/ {bad:?}; under uploads/ {uploads:?}"
    );
}

// ----- memory ------------------------------------------------------------

#[test]
fn rss_flat_with_1gib_blob() {
    const TOTAL: u64 = 1024 * MIB as u64;
    const LIMIT_KIB: u64 = 150 * 1024;
    let kura = Kura::start().unwrap();
    let t = Instant::now();
    let repo = "memory/big";
    let (rss0, _) = kura.rss_kib().unwrap();

    // Upload as two 512 MiB PATCH chunks, so the final PUT streams all of
    // it again through the digest verifier into the blob's place; sample
    // RSS meanwhile.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (put_status, digest, up_max) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut max = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((rss, _)) = kura.rss_kib() {
                    max = max.max(rss);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            max
        });
        let (status, digest) = upload_streamed(&kura, repo, 700, TOTAL, 2);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (status, digest, sampler.join().unwrap())
    });
    assert_eq!(put_status, 201);
    let (rss_up, hwm_up) = kura.rss_kib().unwrap();
    eprintln!("[rss {:>6.1}s] uploaded", t.elapsed().as_secs_f64());
    eprintln!(
        "kura RSS, 1 GiB upload (2 PATCH + PUT): start {rss0} KiB, max sampled {up_max} KiB, after {rss_up} KiB, peak (VmHWM) {hwm_up} KiB"
    );

    // Reset the peak so the download is measured on its own (Linux: writing
    // 5 to clear_refs resets VmHWM).
    let reset = std::fs::write(format!("/proc/{}/clear_refs", kura.pid()), "5").is_ok();
    let mut down_max = 0;
    let mut last = Instant::now();
    let (status, len, got) = get_blob_digest(&kura, repo, &digest, |_| {
        if last.elapsed() > Duration::from_millis(50) {
            if let Ok((rss, _)) = kura.rss_kib() {
                down_max = down_max.max(rss);
            }
            last = Instant::now();
        }
    });
    assert_eq!((status, len, got.as_str()), (200, TOTAL, digest.as_str()));
    eprintln!("[rss {:>6.1}s] downloaded", t.elapsed().as_secs_f64());
    let (rss_down, hwm_down) = kura.rss_kib().unwrap();
    eprintln!(
        "kura RSS, 1 GiB GET: max sampled {down_max} KiB, after {rss_down} KiB, peak (VmHWM{}) {hwm_down} KiB",
        if reset { ", reset before the GET" } else { ", whole process" }
    );
    assert!(
        hwm_up < LIMIT_KIB,
        "peak RSS during the 1 GiB upload: {hwm_up} KiB"
    );
    assert!(
        hwm_down < LIMIT_KIB,
        "peak RSS during the 1 GiB download: {hwm_down} KiB"
    );
    assert!(down_max < LIMIT_KIB && up_max < LIMIT_KIB);
}
