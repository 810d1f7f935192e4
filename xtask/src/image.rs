//! `cargo xtask image [--out DIR] [--tag TAG]`: a container image of kura,
//! written as an OCI image layout without a Docker daemon.
//!
//! The layout (default `target/image`) holds one linux/amd64 image with one
//! gzip'd tar layer:
//!
//! - `/usr/bin/kura`: the release binary, debug info stripped (symbols stay,
//!   so a panic's backtrace still names functions);
//! - the shared libraries it links, found with `ldd` and copied from this
//!   machine at the paths the dynamic loader looks in, the loader itself at
//!   `/lib64/ld-linux-x86-64.so.2`, and their Debian copyright files;
//! - `/etc/ssl/certs/ca-certificates.crt` (where rustls' native roots look
//!   first; `SSL_CERT_FILE` names it too);
//! - `/etc/passwd`, `/etc/group` with the user `kura` (65532:65532), and an
//!   `/etc/nsswitch.conf` (hosts from files, then DNS);
//! - `/etc/kura/config.yaml` from `packaging/config.yaml`;
//! - `/var/lib/kura` owned by kura (a volume), `/tmp` (1777).
//!
//! The binary is dynamically linked: this machine has only the
//! `x86_64-unknown-linux-gnu` target, and glibc's own libraries are what the
//! binary was linked and tested against. docs/container.md says more.
//!
//! The layer is reproducible: entries sorted, owners and modes set, every
//! mtime (and the config's `created`) from `SOURCE_DATE_EPOCH` or else the
//! time of the HEAD commit. Two builds of the same tree give the same digests.
//!
//! [`image_test`] builds the image and runs `tests/tests/container.rs`:
//! the image pushed into kura with skopeo, pulled and run by containerd.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{cargo, root, run};

/// The user the container runs as (distroless' `nonroot` number).
pub const UID: u64 = 65532;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Where the CA bundle goes (Debian's path, first on rustls-native-certs' list).
const CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The environment variable naming the layout for `tests/tests/container.rs`.
pub const LAYOUT_ENV: &str = "XTASK_IMAGE_LAYOUT";

/// `cargo xtask image [--out DIR] [--tag TAG]`.
pub fn main(args: &[&str]) -> anyhow::Result<()> {
    let flag = |name: &str| {
        args.iter()
            .position(|a| *a == name)
            .and_then(|i| args.get(i + 1))
            .copied()
    };
    let out = flag("--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/image"));
    let tag = flag("--tag").unwrap_or(env!("CARGO_PKG_VERSION"));
    build(&out, tag)?;
    Ok(())
}

/// Build the release binary and write the image layout to `out`, the image
/// named `tag` in index.json. Returns the manifest's digest.
pub fn build(out: &Path, tag: &str) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    let bin = build_binary()?;
    let epoch = source_date_epoch();

    let mut fs = Tree::default();
    // The binary, debug info stripped into a temporary copy.
    let tmp = tempfile::tempdir()?;
    let stripped = tmp.path().join("kura");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin))
    .context("strip (binutils) is needed")?;
    fs.file("usr/bin/kura", 0o755, 0, std::fs::read(&stripped)?);

    // The shared libraries, at the paths ldd (the loader) resolves them to.
    let mut host_files = Vec::new();
    for lib in linked_libraries(&bin)? {
        let data = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        fs.file(&rel(&lib), 0o755, 0, data);
        host_files.push(lib);
    }
    let ca = Path::new(CA_FILE);
    let pem = std::fs::read(ca)
        .with_context(|| format!("reading {CA_FILE} (Debian: apt-get install ca-certificates)"))?;
    fs.file(&rel(ca), 0o644, 0, pem);
    // Copyright notices of what we ship from the host (glibc, libgcc, the
    // CA bundle).
    let mut packages: Vec<String> = host_files.iter().filter_map(|f| package_of(f)).collect();
    packages.push("ca-certificates".into());
    packages.sort();
    packages.dedup();
    for p in packages {
        let c = PathBuf::from(format!("/usr/share/doc/{p}/copyright"));
        if let Ok(data) = std::fs::read(&c) {
            fs.file(&rel(&c), 0o644, 0, data);
        }
    }

    fs.file(
        "etc/passwd",
        0o644,
        0,
        format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\n\
             kura:x:{UID}:{UID}:kura:/var/lib/kura:/usr/sbin/nologin\n"
        )
        .into_bytes(),
    );
    fs.file(
        "etc/group",
        0o644,
        0,
        format!("root:x:0:\nkura:x:{UID}:\n").into_bytes(),
    );
    fs.file(
        "etc/nsswitch.conf",
        0o644,
        0,
        b"passwd: files\ngroup: files\nhosts: files dns\n".to_vec(),
    );
    let config = std::fs::read(root().join("packaging/config.yaml"))
        .context("reading packaging/config.yaml")?;
    fs.file("etc/kura/config.yaml", 0o644, 0, config);
    fs.dir("var/lib/kura", 0o755, UID);
    fs.dir("tmp", 0o1777, 0);
    fs.dir("root", 0o700, 0);

    let tar = fs.tar(epoch)?;
    let diff_id = digest(&tar);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar)?;
    let layer = gz.finish()?;

    let created = rfc3339(epoch);
    let labels = json!({
        "org.opencontainers.image.title": "kura",
        "org.opencontainers.image.description":
            "kura: an OCI / Docker registry and pull-through cache",
        "org.opencontainers.image.version": env!("CARGO_PKG_VERSION"),
        "org.opencontainers.image.licenses": env!("CARGO_PKG_LICENSE"),
        "org.opencontainers.image.created": created,
    });
    let mut labels = labels;
    if let Some(rev) = git(&["rev-parse", "HEAD"]) {
        labels["org.opencontainers.image.revision"] = json!(rev);
    }
    let config = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": format!("{UID}:{UID}"),
            "Env": [
                "PATH=/usr/bin:/bin",
                format!("SSL_CERT_FILE={CA_FILE}"),
            ],
            "Entrypoint": ["/usr/bin/kura", "serve", "--config", "/etc/kura/config.yaml"],
            "WorkingDir": "/var/lib/kura",
            "ExposedPorts": {"5000/tcp": {}},
            "Volumes": {"/var/lib/kura": {}},
            "StopSignal": "SIGTERM",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "cargo xtask image"}],
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [descriptor(OCI_LAYER, &layer)],
        "annotations": {
            "org.opencontainers.image.version": env!("CARGO_PKG_VERSION"),
            "org.opencontainers.image.created": created,
        },
    }))?;
    let mut entry = descriptor(OCI_MANIFEST, &manifest);
    entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry],
    }))?;

    prepare_out(out)?;
    let blobs = out.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for blob in [&layer, &config, &manifest] {
        std::fs::write(blobs.join(hex_of(blob)), blob)?;
    }
    std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(out.join("index.json"), &index)?;

    let manifest_digest = digest(&manifest);
    let size = layer.len() + config.len() + manifest.len();
    eprintln!(
        "xtask: image {} in {}:\n  tag {tag} (oci:{}:{tag})\n  manifest {manifest_digest}\n  \
         layer {} ({} compressed, {} unpacked)\n  {:.1}s",
        kib(size),
        out.display(),
        out.display(),
        digest(&layer),
        kib(layer.len()),
        kib(tar.len()),
        started.elapsed().as_secs_f64(),
    );
    Ok(manifest_digest)
}

/// Build the image into `target/image` and run the container tests
/// (`tests/tests/container.rs`) against it.
pub fn image_test() -> anyhow::Result<()> {
    let out = root().join("target/image");
    build(&out, env!("CARGO_PKG_VERSION"))?;
    run(Command::new(cargo())
        .args(["test", "-p", "kura-tests", "--test", "container", "--"])
        .args(["--ignored", "--test-threads=1"])
        .env(LAYOUT_ENV, &out))
}

/// `cargo build --release -p kura`; the path of the binary it made.
fn build_binary() -> anyhow::Result<PathBuf> {
    let cmd_line = ["build", "--release", "-p", "kura", "--bin", "kura"];
    eprintln!("xtask: cargo {}", cmd_line.join(" "));
    let out = Command::new(cargo())
        .args(cmd_line)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build")?;
    ensure!(out.status.success(), "cargo build --release -p kura failed");
    let mut exe = None;
    for line in out.stdout.split(|b| *b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "kura" {
            if let Some(e) = msg["executable"].as_str() {
                exe = Some(PathBuf::from(e));
            }
        }
    }
    exe.context("cargo build reported no kura executable")
}

/// The files `ldd` says `bin` loads (the loader included), as absolute
/// paths; vdso lines have none.
fn linked_libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    ensure!(
        out.status.success(),
        "ldd {} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            _ if line.contains("not found") => bail!("ldd: a library is missing: {line}"),
            _ => {} // linux-vdso.so.1 (0x...)
        }
    }
    ensure!(
        libs.iter().any(|l| l.ends_with("ld-linux-x86-64.so.2")),
        "ldd named no dynamic loader for {}:\n{text}",
        bin.display()
    );
    Ok(libs)
}

/// The Debian package owning `path`, if dpkg knows it.
fn package_of(path: &Path) -> Option<String> {
    let out = Command::new("dpkg-query")
        .arg("-S")
        .arg(path)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let first = text.lines().next()?;
    let pkg = first.split_once(':')?.0;
    Some(pkg.to_owned())
}

/// Empty `out` for a fresh layout; refuse to clear a directory that holds
/// something else.
fn prepare_out(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let empty = std::fs::read_dir(out)?.next().is_none();
        if !empty && !out.join("oci-layout").exists() {
            bail!(
                "{} exists and is not an OCI layout; not overwriting it",
                out.display()
            );
        }
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    Ok(())
}

/// `SOURCE_DATE_EPOCH`, else the HEAD commit's time, else 0.
fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| git(&["log", "-1", "--format=%ct"]).and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn rel(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_owned()
}

fn hex_of(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex_of(data))
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(data), "size": data.len()})
}

fn kib(n: usize) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

enum Node {
    Dir {
        mode: u32,
        owner: u64,
    },
    File {
        mode: u32,
        owner: u64,
        data: Vec<u8>,
    },
}

/// The image's file tree, keyed by path without the leading `/`.
#[derive(Default)]
struct Tree(BTreeMap<String, Node>);

impl Tree {
    fn parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            self.0.entry(dir.to_owned()).or_insert(Node::Dir {
                mode: 0o755,
                owner: 0,
            });
            at += i + 1;
        }
    }

    fn file(&mut self, path: &str, mode: u32, owner: u64, data: Vec<u8>) {
        self.parents(path);
        self.0
            .insert(path.to_owned(), Node::File { mode, owner, data });
    }

    fn dir(&mut self, path: &str, mode: u32, owner: u64) {
        self.parents(path);
        self.0.insert(path.to_owned(), Node::Dir { mode, owner });
    }

    /// The tree as a tar archive: entries in path order (a directory before
    /// what it holds), fixed owners, modes and mtimes.
    fn tar(&self, mtime: u64) -> anyhow::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, node) in &self.0 {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(mtime);
            match node {
                Node::Dir { mode, owner } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_uid(*owner);
                    h.set_gid(*owner);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
                }
                Node::File { mode, owner, data } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_uid(*owner);
                    h.set_gid(*owner);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())?;
                }
            }
        }
        Ok(b.into_inner()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_720_000 + 3661), "2025-12-03T01:01:01Z");
    }

    #[test]
    fn parents_come_first() {
        let mut t = Tree::default();
        t.file("usr/bin/kura", 0o755, 0, vec![1]);
        t.dir("var/lib/kura", 0o755, UID);
        let paths: Vec<&str> = t.0.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "usr",
                "usr/bin",
                "usr/bin/kura",
                "var",
                "var/lib",
                "var/lib/kura"
            ]
        );
    }
}
