//! Hostile upstreams, end to end: a real kura mirroring
//! `kura_tests::faulty` (a registry that misbehaves on purpose), read by
//! real clients (reqwest, skopeo). Each case checks what the clients got,
//! that the answer came within a bounded time, and that nothing bad became
//! visible: every file under the data directory's `blobs/` hashes to its
//! name (`kura_tests::blobstore`).
//!
//! 1. a blob dripped at one byte a second (the body idle timeout);
//! 2. a connection reset half way through a blob (resumed with `Range`);
//! 3. redirect loops;
//! 4. manifests over the 4 MiB limit;
//! 5. a token service answering 500 or garbage;
//! 6. a tag whose digest changes between `HEAD` and `GET`.
//!
//! Needs skopeo (Debian). Run with
//! `cargo test -p kura-tests --test hostile_upstream`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kura_tests::api::{send, Resp};
use kura_tests::blobstore;
use kura_tests::faulty::{Fault, Faulty, TokenAnswer};
use kura_tests::image::{XorShift, OCI_MANIFEST};
use kura_tests::mirror::{mirror_yaml, start_mirror, upstream, Mirror, ACCEPT_ALL};
use kura_tests::peers::Skopeo;
use kura_tests::stream::{eventually, stream_hash, Streamed};
use kura_tests::{http_client, init_crypto, sha256, Kura};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// kura mirroring `upstreams`, each `(name, url, extra YAML lines indented
/// by six spaces)`.
fn mirror(upstreams: &[(&str, &str, &str)]) -> Mirror {
    let entries: Vec<String> = upstreams
        .iter()
        .map(|(name, url, fields)| upstream(name, url, fields))
        .collect();
    start_mirror(&mirror_yaml(&entries, ""), &[])
}

// ----- checks ------------------------------------------------------------------

/// Scan the data directory's blobs; panic on any whose bytes do not match
/// its name. Returns how many were checked.
fn assert_no_bad_blobs(k: &Kura, case: &str) -> usize {
    let scan = blobstore::scan(&k.data_dir);
    assert!(
        scan.bad.is_empty(),
        "{case}: {} bad blob(s) visible in storage: {:?}",
        scan.bad.len(),
        scan.bad
    );
    eprintln!("{case}: bad blobs visible: 0 of {} checked", scan.checked);
    scan.checked
}

fn blob_stored(k: &Kura, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    k.data_dir
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .exists()
}

/// The sum of a metric's samples (every label set).
fn metric(k: &Kura, name: &str) -> u64 {
    let text = http_client()
        .get(format!("{}/metrics", k.url))
        .send()
        .and_then(|r| r.text())
        .expect("GET /metrics");
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn get(url: &str) -> Resp {
    send(http_client().get(url).header("accept", ACCEPT_ALL))
}

fn head(url: &str) -> Resp {
    send(http_client().head(url).header("accept", ACCEPT_ALL))
}

/// An answer that says "the upstream failed" the OCI way: 502 or 503 with
/// an error body naming `UNAVAILABLE`.
fn assert_upstream_error(r: &Resp, what: &str) {
    assert!(
        matches!(r.status, 502 | 503),
        "{what}: want 502/503, got {}",
        r.describe()
    );
    assert_eq!(r.code(), "UNAVAILABLE", "{what}: {}", r.describe());
}

/// A client that gives up after `secs` (so a hang fails the test instead
/// of stalling it).
fn client_within(secs: u64) -> reqwest::blocking::Client {
    init_crypto();
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(secs))
        .build()
        .expect("http client")
}

/// A blob GET through kura that the upstream spoils: the client must not
/// get a complete body. kura cuts the connection once it has sent the
/// `200` head (the bytes streamed as they came), or answers an error if
/// the failure came first.
fn assert_cut(r: &Streamed, size: u64, what: &str) {
    match r.status {
        200 => assert!(
            r.error.is_some() && r.received < size,
            "{what}: want a cut connection, not a complete or merely unfinished body: {r:?}"
        ),
        // A request joining a fill just as it fails: a 200 whose body
        // errors before its first byte, which hyper turns into a closed
        // connection without a head.
        0 => assert!(r.error.is_some() && r.received == 0, "{what}: {r:?}"),
        s => assert!(s >= 500, "{what}: {r:?}"),
    }
}

// ----- 1. slow drip ---------------------------------------------------------------

/// An upstream that sends a blob's first bytes and then one byte a second
/// is given up after the upstream's `body_idle_timeout_secs`: the leading
/// client and a follower of the fill both see their connection cut (the
/// `200` head is already out), kura logs why, nothing is cached, and once
/// the upstream is healthy the blob is fetched again and served right.
#[test]
fn a_dripping_upstream_is_cut_off_within_the_idle_timeout_and_nothing_is_cached() {
    let f = Faulty::start().unwrap();
    let data = XorShift::new(601).bytes(256 * KIB as usize);
    let size = data.len() as u64;
    let digest = f.add_blob(data);
    f.set_fault(
        &digest,
        Fault::Drip {
            after: 64 * KIB,
            every_ms: 1000,
        },
    );
    let k = mirror(&[("up.local", &f.url, "      body_idle_timeout_secs: 2\n")]);
    let url = format!("{}/v2/up.local/team/drip/blobs/{digest}", k.url);

    let started = Instant::now();
    let lead_progress = Arc::new(AtomicU64::new(0));
    let lead = {
        let (url, p) = (url.clone(), lead_progress.clone());
        std::thread::spawn(move || {
            // Reads of a drip each succeed: stop after 30 s, whatever.
            stream_hash(&client_within(60), &url, Some(&p), |_| {
                started.elapsed() < Duration::from_secs(30)
            })
        })
    };
    // The follower joins once the drip has begun.
    assert!(
        eventually(20, || lead_progress.load(Ordering::SeqCst) >= 32 * KIB),
        "the first bytes never arrived"
    );
    let follower = {
        let url = url.clone();
        std::thread::spawn(move || {
            stream_hash(&client_within(60), &url, None, |_| {
                started.elapsed() < Duration::from_secs(30)
            })
        })
    };
    let lead = lead.join().unwrap();
    let follower = follower.join().unwrap();
    let took = started.elapsed();
    eprintln!("drip: lead {lead:?}\nfollower {follower:?}\nafter {took:?}");
    assert_cut(&lead, size, "leader of a dripping fill");
    assert_cut(&follower, size, "follower of a dripping fill");
    // Two idle windows of 2 s at most (the drip may start mid-window), and
    // some slack; a dripped 192 KiB would take two days.
    assert!(
        took < Duration::from_secs(15),
        "cut off only after {took:?}"
    );
    let log = k.log_text();
    assert!(
        log.lines().any(|l| l.contains(&digest)
            && l.contains("failed")
            && l.contains("body_idle_timeout_secs")),
        "no log line says why the fill was given up; log:\n{log}"
    );
    assert!(!blob_stored(&k, &digest), "a dripped blob was stored");
    assert_no_bad_blobs(&k, "drip");

    // Healthy again: fetched afresh, served whole and right, then cached.
    f.clear_fault(&digest);
    let gets = f.blob_gets("team/drip", &digest);
    let r = stream_hash(&client_within(60), &url, None, |_| true);
    assert_eq!((r.status, r.error.as_deref()), (200, None), "{r:?}");
    assert_eq!((r.received, r.digest.as_str()), (size, digest.as_str()));
    assert_eq!(f.blob_gets("team/drip", &digest), gets + 1);
    assert!(eventually(10, || blob_stored(&k, &digest)));
    assert_no_bad_blobs(&k, "drip, healed");
}

// ----- 2. connection reset mid-blob -------------------------------------------------

/// `GET /v2/<repo>/blobs/<digest>` requests the upstream saw: `(Range
/// header, status)`.
fn blob_requests(f: &Faulty, repo: &str, digest: &str) -> Vec<(Option<String>, u16)> {
    let path = format!("/v2/{repo}/blobs/{digest}");
    f.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .map(|r| (r.range, r.status))
        .collect()
}

/// The one resumed request of a fill whose first request was cut: its
/// `Range` start.
fn resumed_at(seen: &[(Option<String>, u16)], status: u16, what: &str) -> u64 {
    assert_eq!(
        seen.len(),
        2,
        "{what}: one request and one resume: {seen:?}"
    );
    assert_eq!(seen[0], (None, 200), "{what}: {seen:?}");
    let (Some(range), s) = &seen[1] else {
        panic!("{what}: the second request has no Range: {seen:?}")
    };
    assert_eq!(*s, status, "{what}: {seen:?}");
    let from = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{what}: not bytes=N-: {range:?}"));
    assert!(from > 0, "{what}: resumed from byte 0: {seen:?}");
    from
}

/// The upstream resets the connection after 2 MiB of a 6 MiB blob: the
/// fill resumes with `Range: bytes=N-` (the hash carried on over the rest),
/// both the leading client and a follower get every byte, identical to the
/// upstream's, in one uninterrupted response, and the blob is stored once
/// verified. An upstream that ignores the `Range` (a `200` with every
/// byte) works too: the bytes kura has are skipped. One that resets every
/// time is given up after a bounded number of resumes, caching nothing.
/// skopeo pulls an image through such an upstream.
#[test]
fn a_blob_cut_mid_way_resumes_with_a_range_request() {
    let f = Faulty::start().unwrap();
    f.serve_ranges(true);
    let k = mirror(&[("up.local", &f.url, "")]);

    // 206 to the Range request; a leader and a follower.
    let data = XorShift::new(602).bytes(6 * MIB as usize);
    let size = data.len() as u64;
    let digest = f.add_blob(data);
    f.set_fault_times(&digest, Fault::Reset { at: 2 * MIB }, 1);
    let url = format!("{}/v2/up.local/team/reset/blobs/{digest}", k.url);
    let clients: Vec<_> = (0..2)
        .map(|n| {
            let url = url.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50 * n));
                stream_hash(&client_within(60), &url, None, |_| true)
            })
        })
        .collect();
    for (n, c) in clients.into_iter().enumerate() {
        let r = c.join().unwrap();
        assert_eq!(
            (r.status, r.error.as_deref()),
            (200, None),
            "client {n}: {r:?}"
        );
        assert_eq!(r.content_length, Some(size), "client {n}: {r:?}");
        assert_eq!((r.received, r.digest.as_str()), (size, digest.as_str()));
    }
    let seen = blob_requests(&f, "team/reset", &digest);
    let from = resumed_at(&seen, 206, "206");
    assert!(from <= 2 * MIB, "resumed past what was sent: {from}");
    assert_eq!(metric(&k, "kura_fills_failed_total"), 0);
    assert!(eventually(10, || blob_stored(&k, &digest)));
    let log = k.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(&digest) && l.contains(&format!("bytes={from}-"))),
        "no log line tells of the resume; log:\n{log}"
    );
    // A hit from now on.
    let r = stream_hash(&client_within(60), &url, None, |_| true);
    assert_eq!((r.status, r.cache.as_str()), (200, "hit"));
    assert_eq!(r.digest, digest);
    assert_eq!(blob_requests(&f, "team/reset", &digest).len(), 2);

    // The upstream ignores the Range: a 200 with every byte.
    f.serve_ranges(false);
    let data = XorShift::new(603).bytes(5 * MIB as usize);
    let size = data.len() as u64;
    let digest = f.add_blob(data);
    f.set_fault_times(&digest, Fault::Reset { at: 3 * MIB }, 1);
    let url = format!("{}/v2/up.local/team/reset200/blobs/{digest}", k.url);
    let r = stream_hash(&client_within(60), &url, None, |_| true);
    assert_eq!((r.status, r.error.as_deref()), (200, None), "{r:?}");
    assert_eq!((r.received, r.digest.as_str()), (size, digest.as_str()));
    resumed_at(&blob_requests(&f, "team/reset200", &digest), 200, "200");
    assert!(eventually(10, || blob_stored(&k, &digest)));

    // Reset every time, each connection bringing at most 1 MiB of 8: a
    // bounded number of resumes (5), then the client's connection is cut
    // and nothing is cached.
    f.serve_ranges(true);
    let data = XorShift::new(604).bytes(8 * MIB as usize);
    let size = data.len() as u64;
    let digest = f.add_blob(data);
    f.set_fault(&digest, Fault::Reset { at: MIB });
    let url = format!("{}/v2/up.local/team/resets/blobs/{digest}", k.url);
    let started = Instant::now();
    let r = stream_hash(&client_within(60), &url, None, |_| true);
    assert_cut(&r, size, "reset every time");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let tries = blob_requests(&f, "team/resets", &digest).len();
    assert_eq!(tries, 1 + 5, "requests for a blob reset every time");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!blob_stored(&k, &digest));
    assert_eq!(metric(&k, "kura_fills_failed_total"), 1);

    // skopeo through an upstream that resets each layer once.
    let img = f.add_image("team/img", "v1", &[3 * MIB as usize, 2 * MIB as usize], 605);
    for l in &img.layers {
        f.set_fault_times(&l.digest, Fault::Reset { at: MIB }, 1);
    }
    let sk = Skopeo::new().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:v1", out.path().display());
    sk.copy(
        &[
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
        ],
        &format!("docker://127.0.0.1:{}/up.local/team/img:v1", k.port),
        &dest,
    )
    .expect("skopeo copy through a resetting upstream");
    for l in &img.layers {
        let hex = l.digest.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(out.path().join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(sha256(&bytes), l.digest);
        resumed_at(&blob_requests(&f, "team/img", &l.digest), 206, "skopeo");
    }
    assert_no_bad_blobs(&k, "reset");
}

// ----- 3. redirect loops ---------------------------------------------------------------

/// A blob URL that redirects to itself, or two that redirect to each
/// other: a `502` naming an invalid upstream response, after a bounded
/// number of requests, at once (no retries, which would only go round
/// again), nothing cached, and the upstream not taken for down: its other
/// blobs are served right after.
#[test]
fn redirect_loops_are_a_clear_error_and_cache_nothing() {
    let f = Faulty::start().unwrap();
    let k = mirror(&[("up.local", &f.url, "")]);
    let blob = |seed: u64| f.add_blob(XorShift::new(seed).bytes(64 * KIB as usize));
    let (me, a, b, fine) = (blob(611), blob(612), blob(613), blob(614));
    let path = |d: &str| format!("/v2/team/loop/blobs/{d}");
    f.set_fault(
        &me,
        Fault::Redirect {
            location: format!("{}{}", f.url, path(&me)),
        },
    );
    // A relative Location to B, an absolute one back to A.
    f.set_fault(&a, Fault::Redirect { location: path(&b) });
    f.set_fault(
        &b,
        Fault::Redirect {
            location: format!("{}{}", f.url, path(&a)),
        },
    );
    for (what, d) in [("self", &me), ("A->B->A", &a)] {
        let before = f.requests().len();
        let started = Instant::now();
        let r = send(client_within(60).get(format!("{}/v2/up.local/team/loop/blobs/{d}", k.url)));
        let took = started.elapsed();
        eprintln!("redirect loop {what}: {} after {took:?}", r.describe());
        assert_upstream_error(&r, what);
        assert_eq!(r.status, 502, "{what}: {}", r.describe());
        assert!(
            r.text().contains("invalid response"),
            "{what}: {}",
            r.describe()
        );
        let asked = f.requests().len() - before;
        assert!(asked <= 6, "{what}: {asked} upstream requests for one loop");
        assert!(took < Duration::from_secs(5), "{what}: {took:?}");
        assert!(!blob_stored(&k, d));
        // The upstream is not down: another blob comes at once.
        let r = stream_hash(
            &client_within(60),
            &format!("{}/v2/up.local/team/loop/blobs/{fine}", k.url),
            None,
            |_| true,
        );
        assert_eq!((r.status, r.digest.as_str()), (200, fine.as_str()), "{r:?}");
    }
    let log = k.log_text();
    assert!(
        log.contains("redirect loop"),
        "the log does not say what went wrong:\n{log}"
    );
    assert_no_bad_blobs(&k, "redirect loop");
}

// ----- 4. oversized manifests -------------------------------------------------------------

/// A manifest bigger than distribution's 4 MiB limit (256 MiB here) is
/// refused with a `502`, whether the upstream announces its length or
/// just streams until it closes; kura reads little of it (a bounded
/// number of bytes leave the upstream, not the 256 MiB), caches nothing,
/// and a `HEAD` announcing such a size is refused too.
#[test]
fn a_manifest_over_4_mib_is_refused_unbuffered_and_not_cached() {
    let f = Faulty::start().unwrap();
    let k = mirror(&[("up.local", &f.url, "")]);
    let small = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
    }))
    .unwrap();
    for (tag, content_length) in [("announced", true), ("streamed", false)] {
        f.add_manifest("team/huge", Some(tag), OCI_MANIFEST, small.clone());
        f.set_fault(
            tag,
            Fault::Oversize {
                len: 256 * MIB,
                content_length,
            },
        );
        let url = format!("{}/v2/up.local/team/huge/manifests/{tag}", k.url);
        let started = Instant::now();
        let r = send(client_within(60).get(&url).header("accept", ACCEPT_ALL));
        eprintln!("{tag}: {} after {:?}", r.describe(), started.elapsed());
        assert_upstream_error(&r, tag);
        assert_eq!(r.status, 502, "{tag}: {}", r.describe());
        assert!(r.text().contains("larger than"), "{tag}: {}", r.describe());
        assert!(started.elapsed() < Duration::from_secs(20));
        // Socket buffers hold a few MiB; a buffering mirror would take all.
        let sent = f.bytes_sent(tag);
        assert!(
            sent < 32 * MIB,
            "{tag}: {} MiB left the upstream",
            sent / MIB
        );
        let h = head(&url);
        assert_eq!(h.status, 502, "{tag}, HEAD: {}", h.describe());
    }
    let manifests = k.data_dir.join("repositories/up.local/team/huge");
    assert!(
        !manifests.exists() || walk_count(&manifests) == 0,
        "something of the refused manifests was stored under {}",
        manifests.display()
    );
    assert_no_bad_blobs(&k, "oversized manifest");
}

fn walk_count(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}

// ----- 5. a broken token service ----------------------------------------------------------

/// The upstream asks for a token and its token service answers 500, HTML,
/// JSON without a token, or a token that is not a string: each pull gets a
/// clear OCI error, kura does not panic (checked on drop), and another
/// upstream of the same kura is served all along. Once the token service
/// heals, the pull works.
#[test]
fn a_broken_token_service_is_a_clear_error_and_other_upstreams_go_on() {
    let f = Faulty::start().unwrap();
    f.token_auth(None);
    let img = f.add_image("team/locked", "v1", &[64 * KIB as usize], 621);
    let other = Faulty::start().unwrap();
    let fine = other.add_image("team/open", "v1", &[64 * KIB as usize], 622);
    let k = mirror(&[("up.local", &f.url, ""), ("other.local", &other.url, "")]);
    let locked = format!("{}/v2/up.local/team/locked/manifests/v1", k.url);
    let open = |what: &str| {
        let r = get(&format!("{}/v2/other.local/team/open/manifests/v1", k.url));
        assert_eq!(r.status, 200, "other upstream, {what}: {}", r.describe());
        assert_eq!(sha256(&r.body), fine.manifest.digest);
        let r = get(&format!(
            "{}/v2/other.local/team/open/blobs/{}",
            k.url, fine.layers[0].digest
        ));
        assert_eq!(r.status, 200, "other upstream, {what}: {}", r.describe());
        assert_eq!(sha256(&r.body), fine.layers[0].digest);
    };
    let answers = [
        ("500", TokenAnswer::Status(500), 503),
        (
            "HTML",
            TokenAnswer::Body(b"<html>oops</html>".to_vec()),
            502,
        ),
        (
            "no token",
            TokenAnswer::Body(br#"{"expires_in":300}"#.to_vec()),
            502,
        ),
        (
            "token not a string",
            TokenAnswer::Body(br#"{"token":42}"#.to_vec()),
            502,
        ),
    ];
    for (what, answer, status) in answers {
        f.token_answer(answer);
        let started = Instant::now();
        let r = get(&locked);
        eprintln!(
            "token {what}: {} after {:?}",
            r.describe(),
            started.elapsed()
        );
        assert_upstream_error(&r, what);
        assert_eq!(r.status, status, "{what}: {}", r.describe());
        assert!(started.elapsed() < Duration::from_secs(10));
        let r = get(&format!(
            "{}/v2/up.local/team/locked/blobs/{}",
            k.url, img.layers[0].digest
        ));
        assert_upstream_error(&r, &format!("{what}, blob"));
        open(what);
    }
    assert!(!blob_stored(&k, &img.layers[0].digest));
    f.token_answer(TokenAnswer::Token);
    let r = get(&locked);
    assert_eq!(r.status, 200, "healed: {}", r.describe());
    assert_eq!(sha256(&r.body), img.manifest.digest);
    assert_no_bad_blobs(&k, "token service");
}

// ----- 6. a tag that moves between HEAD and GET ------------------------------------------

/// Every manifest response kura sends must hash to the
/// `Docker-Content-Digest` it sends with it.
fn assert_consistent(r: &Resp, what: &str) -> String {
    assert_eq!(r.status, 200, "{what}: {}", r.describe());
    let announced = r.hdr("docker-content-digest").to_owned();
    assert_eq!(
        sha256(&r.body),
        announced,
        "{what}: served bytes differ from the Docker-Content-Digest"
    );
    announced
}

/// The upstream answers `HEAD v1` with image A and `GET v1` with image B
/// (the tag moved between the two), then lies outright (B's bytes under
/// A's digest). Every answer kura gives has a body that hashes to its
/// `Docker-Content-Digest`; the tag it caches points at a manifest that is
/// stored and verifies (served stale once the upstream is down); skopeo
/// pulls a whole, verified image.
#[test]
fn a_tag_moving_between_head_and_get_is_never_served_inconsistently() {
    let f = Faulty::start().unwrap();
    let a = f.add_image("team/moving", "v1", &[32 * KIB as usize], 631);
    let b = f.add_image("team/moving", "next", &[32 * KIB as usize], 632);
    f.set_fault(
        "v1",
        Fault::GetServes {
            reference: b.manifest.digest.clone(),
            announce: None,
        },
    );
    let k = mirror(&[("up.local", &f.url, "      tag_ttl_secs: 0\n")]);
    let url = format!("{}/v2/up.local/team/moving/manifests/v1", k.url);

    // Cold: the HEAD is the upstream's (A), the GET what the upstream
    // then sends (B); each consistent in itself.
    let h = head(&url);
    assert_eq!(h.status, 200, "{}", h.describe());
    assert_eq!(h.hdr("docker-content-digest"), a.manifest.digest);
    let served = assert_consistent(&get(&url), "cold GET");
    assert_eq!(served, b.manifest.digest);
    // Revalidated (TTL 0): HEAD says A, the cache has B, the GET brings B.
    for n in 0..3 {
        let served = assert_consistent(&get(&url), &format!("revalidated GET {n}"));
        assert_eq!(served, b.manifest.digest);
        let h = head(&url);
        assert_eq!(h.status, 200, "{}", h.describe());
    }
    // skopeo pulls the tag while it moves: a whole image, verified.
    let sk = Skopeo::new().unwrap();
    let out = tempfile::tempdir().unwrap();
    sk.copy(
        &[
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
        ],
        &format!("docker://127.0.0.1:{}/up.local/team/moving:v1", k.port),
        &format!("oci:{}:v1", out.path().display()),
    )
    .expect("skopeo copy of a moving tag");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], b.manifest.digest.as_str());

    // The GET now lies: B's bytes announced as A. With B cached, the HEAD
    // (A) makes kura GET, and the lie is refused: the cached tag is served
    // stale, or an error; never B's bytes under A's name.
    f.set_fault(
        "v1",
        Fault::GetServes {
            reference: b.manifest.digest.clone(),
            announce: Some(a.manifest.digest.clone()),
        },
    );
    let r = get(&url);
    if r.status == 200 {
        assert_eq!(
            assert_consistent(&r, "lying GET, tag cached"),
            b.manifest.digest
        );
    } else {
        assert_upstream_error(&r, "lying GET, tag cached");
    }
    // A tag kura has not seen, lied about: refused.
    f.add_manifest(
        "team/moving",
        Some("w"),
        OCI_MANIFEST,
        a.manifest_bytes.clone(),
    );
    f.set_fault(
        "w",
        Fault::GetServes {
            reference: b.manifest.digest.clone(),
            announce: Some(a.manifest.digest.clone()),
        },
    );
    let r = get(&format!("{}/v2/up.local/team/moving/manifests/w", k.url));
    assert_upstream_error(&r, "lying GET, cold tag");
    assert_eq!(r.status, 502, "{}", r.describe());

    // The upstream goes down: the cached tag is served stale, and what it
    // points at is stored and verifies.
    f.set_fault(
        "v1",
        Fault::Status {
            code: 500,
            retry_after: None,
        },
    );
    let stale = get(&url);
    let d = assert_consistent(&stale, "stale");
    assert_eq!(stale.cache(), "stale", "{}", stale.describe());
    assert!(
        blob_stored(&k, &d),
        "the cached tag points at {d}, not stored"
    );
    assert_no_bad_blobs(&k, "moving tag");
}
