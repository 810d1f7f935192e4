//! kura on a full disk: local storage on a small tmpfs made by the test.
//! Writes that meet ENOSPC are answered `507 Insufficient Storage` with an
//! OCI error body, nothing partial becomes visible, eviction makes room
//! for the mirror again, and when space returns pulls and pushes work
//! again without a restart.
//!
//! Needs root (or CAP_SYS_ADMIN) for `mount -t tmpfs`; where mounting is
//! not permitted the test says so and passes without running.
//!
//! Run with `cargo test -p kura-tests --test disk_full`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kura_tests::api::{image_manifest, send_lenient, with_query, Reg, Resp, OCI_MANIFEST};
use kura_tests::faulty::Faulty;
use kura_tests::image::XorShift;
use kura_tests::stream::eventually;
use kura_tests::{sha256, KuraOptions};
use reqwest::Method;
use sha2::Digest as _;

const MIB: usize = 1024 * 1024;

/// A tmpfs mounted for the test; unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with the reason printed) where mounting is not permitted.
    fn mount(size_mib: usize) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("running mount");
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs {
            dir,
            _parent: parent,
        })
    }

    fn resize(&self, size_mib: usize) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size_mib}m")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "remounting the tmpfs with {size_mib} MiB");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a kura still being killed may hold files open.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A write refused for want of space: 507 with an OCI error body.
#[track_caller]
fn assert_full(r: &Resp, what: &str) {
    assert_eq!(r.status, 507, "{what} on a full disk: {}", r.describe());
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "{what}: {}",
        r.describe()
    );
    assert_eq!(r.code(), "UNAVAILABLE", "{what}: {}", r.describe());
    assert!(r.text().contains("storage is full"), "{}", r.describe());
}

/// Prints the end of kura's log if the test fails.
struct LogOnPanic(PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "kura's log (end):\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

/// A refusal that says what happened: a 5xx other than 500 (507 or 503)
/// with an OCI error body.
#[track_caller]
fn assert_refused(r: &Resp, what: &str) {
    assert!(
        matches!(r.status, 503 | 507) && r.failure.is_none(),
        "{what}: a clear 5xx, not a 500 or a broken 200: {}",
        r.describe()
    );
    assert_eq!(r.code(), "UNAVAILABLE", "{what}: {}", r.describe());
}

/// Write zeros to `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Whatever part of a page is left.
    while let Ok(n) = f.write(&chunk[..512]) {
        if n == 0 {
            break;
        }
    }
}

/// Push `data` in one request (`POST ?digest=`).
fn push(reg: &Reg, repo: &str, data: &[u8]) -> Resp {
    let d = sha256(data);
    send_lenient(
        reg.req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        )
        .header("content-type", "application/octet-stream")
        .body(data.to_vec()),
    )
}

/// Push `data` as a session: POST, one PATCH, PUT. The first answer that
/// is not a success is returned.
fn push_chunked(reg: &Reg, repo: &str, data: &[u8]) -> Resp {
    let r = send_lenient(reg.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/")));
    if r.status != 202 {
        return r;
    }
    patch_and_put(reg, r.hdr("location"), data)
}

/// One PATCH of `data` to the session at `loc`, then the closing PUT.
fn patch_and_put(reg: &Reg, loc: &str, data: &[u8]) -> Resp {
    let r = send_lenient(
        reg.req(Method::PATCH, loc)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec()),
    );
    if r.status != 202 {
        return r;
    }
    let loc = r.hdr("location").to_owned();
    send_lenient(
        reg.req(
            Method::PUT,
            &with_query(&loc, &format!("digest={}", sha256(data))),
        )
        .header("content-type", "application/octet-stream"),
    )
}

fn pull(reg: &Reg, repo: &str, digest: &str) -> Resp {
    send_lenient(reg.req(Method::GET, &format!("/v2/{repo}/blobs/{digest}")))
}

/// Everything visible in kura's storage is whole: every file under
/// `blobs/<alg>/<xx>/<hex>` hashes to `<hex>`, and every layer link,
/// manifest revision and tag names a blob that is there. (Eviction deletes
/// mirrored layers and keeps their links by design: a read finds the blob
/// gone and fills it again. So layer links under `repositories/up.local/`
/// may name a missing blob.) Returns the number of blobs checked.
fn assert_consistent(data: &Path) -> usize {
    let mut blobs = BTreeSet::new();
    let mut bad = Vec::new();
    for f in files(&data.join("blobs")) {
        let rel = f.strip_prefix(data).unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        if parts.len() != 4 || parts[1] != "sha256" {
            bad.push(format!("unexpected file {rel}"));
            continue;
        }
        let hex = parts[3];
        let actual = hex::encode(sha2::Sha256::digest(std::fs::read(&f).unwrap()));
        if actual != hex || &hex[..2] != parts[2] {
            bad.push(format!("{rel} holds bytes hashing to {actual}"));
        }
        blobs.insert(format!("sha256:{hex}"));
    }
    for f in files(&data.join("repositories")) {
        let rel = f.strip_prefix(data).unwrap().to_string_lossy().into_owned();
        let named = if rel.contains("/_layers/sha256/") || rel.contains("/_manifests/revisions/") {
            Some(format!(
                "sha256:{}",
                f.file_name().unwrap().to_string_lossy()
            ))
        } else if rel.contains("/_manifests/tags/") {
            let text = std::fs::read_to_string(&f).unwrap();
            let at = text.find("sha256:").map(|i| text[i..i + 71].to_owned());
            if at.is_none() {
                bad.push(format!("tag {rel} names no digest: {text:?}"));
            }
            at
        } else {
            None
        };
        let evictable = rel.starts_with("repositories/up.local/") && rel.contains("/_layers/");
        if let Some(d) = named {
            if !blobs.contains(&d) && !evictable {
                bad.push(format!("{rel} points at {d}, which is not stored"));
            }
        }
    }
    assert!(bad.is_empty(), "storage after ENOSPC:\n{}", bad.join("\n"));
    blobs.len()
}

/// Every file under `dir`, at any depth, skipping object_store's staging
/// files (`name#n`, invisible to readers, removed on failure).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if !p.to_string_lossy().contains('#') {
            out.push(p);
        }
    }
    out
}

/// Bytes free on the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_full_disk_is_507_leaves_nothing_partial_and_recovers_without_a_restart() {
    let Some(fs) = Tmpfs::mount(48) else {
        return;
    };
    let upstream = Faulty::start().unwrap();
    let mut rng = XorShift::new(2024);
    // Mirrored blobs of 4 MiB, more than the disk holds.
    let mirrored: Vec<String> = (0..16)
        .map(|_| upstream.add_blob(rng.bytes(4 * MIB)))
        .collect();
    let cfg = tempfile::tempdir().unwrap();
    let cfg_file = cfg.path().join("kura.yaml");
    std::fs::write(
        &cfg_file,
        format!(
            "mirror:\n  max_size: 12MiB\n  evict_interval_secs: 2\n  eviction_grace_secs: 0\n  \
             upstreams:\n    - name: up.local\n      url: {}\n",
            upstream.url
        ),
    )
    .unwrap();
    let reg = Reg::with(
        KuraOptions {
            data_dir: Some(fs.dir.clone()),
            config: Some(cfg_file),
            ..Default::default()
        },
        Some(cfg),
    );
    let _log = LogOnPanic(reg.kura.log.clone());

    // A hosted image with a tag, then 24 MiB of hosted blobs: half the disk.
    let layer = rng.bytes(MIB);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    assert_eq!(push(&reg, "team/app", &layer).status, 201);
    assert_eq!(push(&reg, "team/app", &config).status, 201);
    let manifest = image_manifest(&config, std::slice::from_ref(&layer));
    reg.put_manifest("team/app", "v1", Some(OCI_MANIFEST), &manifest)
        .expect(201);
    let mut pushed = vec![sha256(&layer), sha256(&config)];
    for _ in 0..6 {
        let blob = rng.bytes(4 * MIB);
        let r = push(&reg, "team/app", &blob);
        assert_eq!(r.status, 201, "{}", r.describe());
        pushed.push(sha256(&blob));
    }

    // Pulls through the mirror until the disk is full: the mirror's cache
    // grows past its bound faster than eviction passes run. The pull that
    // runs out of space mid-fill has had its 200 and its first bytes: its
    // body breaks off short of the Content-Length (a client retries), or
    // a pull that starts without room is refused; never a complete-looking
    // wrong answer.
    let t0 = Instant::now();
    let mut cached = Vec::new();
    let mut not_cached = None;
    for d in &mirrored {
        let r = pull(&reg, "up.local/lib/m", d);
        if r.status == 200 && r.failure.is_none() {
            assert_eq!(sha256(&r.body), *d, "a whole 200 must be right");
            cached.push(d.clone());
            continue;
        }
        eprintln!(
            "mirror pull {} failed on a full disk ({} cached before) after {:?}: status {} \
             {} of {} bytes, {:?}",
            cached.len() + 1,
            cached.len(),
            t0.elapsed(),
            r.status,
            r.body.len(),
            r.header("content-length").unwrap_or("-"),
            r.failure.as_deref().unwrap_or("")
        );
        if r.status == 200 {
            assert!(
                r.failure.is_some() && r.body.len() < 4 * MIB,
                "{}",
                r.describe()
            );
        } else {
            assert_refused(&r, "a mirror pull on a full disk");
        }
        not_cached = Some(d.clone());
        break;
    }
    let Some(not_cached) = not_cached else {
        panic!(
            "48 MiB took every pull; {} MiB free",
            free_bytes(&fs.dir) >> 20
        );
    };
    assert!(
        cached.len() * 4 > 12,
        "the cache must be over its bound now, for eviction to make room"
    );

    // Now take every byte left, with a file of the test's own: whatever
    // kura writes next meets ENOSPC at once.
    // A session opened while there was room, written to after.
    let r = send_lenient(reg.req(Method::POST, "/v2/team/app/blobs/uploads/"));
    assert_eq!(r.status, 202, "{}", r.describe());
    let session = r.hdr("location").to_owned();
    let filler = fs.dir.join("filler");
    fill(&filler);
    eprintln!("filled; {} KiB free", free_bytes(&fs.dir) >> 10);
    // A pull that starts without room is refused with an error body.
    let r = pull(&reg, "up.local/lib/m", &not_cached);
    assert_refused(&r, "a mirror pull starting on a full disk");

    // Pushes too, one request or a session; both paths write differently
    // (a staged file renamed, a file appended to).
    let big = rng.bytes(16 * MIB);
    // Several times: whether a client still sending sees the answer or a
    // reset is a matter of timing, unless kura reads the rest of the body.
    for _ in 0..5 {
        assert_full(&push(&reg, "team/app", &big), "POST ?digest=");
    }
    assert_full(
        &patch_and_put(&reg, &session, &big),
        "PATCH to an open session",
    );
    assert_full(
        &push_chunked(&reg, "team/app", &big),
        "a new upload session",
    );
    let n = assert_consistent(&fs.dir);
    eprintln!(
        "full: {n} blobs verified, {} KiB free",
        free_bytes(&fs.dir) >> 10
    );
    // What was stored before is served whole.
    for d in pushed.iter().chain(&cached).take(4) {
        let repo = if cached.contains(d) {
            "up.local/lib/m"
        } else {
            "team/app"
        };
        let r = pull(&reg, repo, d);
        assert_eq!((r.status, sha256(&r.body)), (200, d.clone()));
    }

    // Eviction brings the cache back under 12 MiB, which makes room: the
    // blob refused above is cached now.
    let started = Instant::now();
    assert!(
        eventually(30, || {
            let r = pull(&reg, "up.local/lib/m", &not_cached);
            r.status == 200 && sha256(&r.body) == not_cached
        }),
        "no room made for the mirror; log:\n{}",
        reg.kura.log_text()
    );
    eprintln!(
        "eviction made room within {:?}",
        started.elapsed().min(Duration::from_secs(30))
    );
    assert!(
        reg.kura
            .log_text()
            .contains("evicted least recently used blobs"),
        "{}",
        reg.kura.log_text()
    );
    assert_full(
        &push(&reg, "team/app", &big),
        "POST ?digest= after eviction",
    );
    assert_consistent(&fs.dir);

    // Space returns: the same kura takes the pushes and pulls it refused.
    std::fs::remove_file(&filler).unwrap();
    fs.resize(160);
    let r = push(&reg, "team/app", &big);
    assert_eq!(r.status, 201, "push after space returned: {}", r.describe());
    let big2 = rng.bytes(16 * MIB);
    let r = push_chunked(&reg, "team/app", &big2);
    assert_eq!(
        r.status,
        201,
        "chunked push after space returned: {}",
        r.describe()
    );
    for d in &mirrored[cached.len() + 1..] {
        let r = pull(&reg, "up.local/lib/m", d);
        assert_eq!(
            (r.status, sha256(&r.body)),
            (200, d.clone()),
            "{}",
            r.describe()
        );
    }
    for d in [sha256(&big), sha256(&big2)] {
        let r = pull(&reg, "team/app", &d);
        assert_eq!((r.status, sha256(&r.body)), (200, d));
    }
    let r = send_lenient(reg.req(Method::GET, "/v2/team/app/manifests/v1"));
    assert_eq!(
        (r.status, sha256(&r.body)),
        (200, sha256(&manifest)),
        "{}",
        r.describe()
    );
    let n = assert_consistent(&fs.dir);
    eprintln!("recovered: {n} blobs verified, {:?} in all", t0.elapsed());
    assert!(!reg.kura.log_text().contains("panicked"));
}
