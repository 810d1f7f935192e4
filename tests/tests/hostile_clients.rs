//! Clients that are slow, stall or leave: a reader at 10 KB/s does not
//! hold up the other readers of the same fill nor grow kura's memory;
//! thousands of connections that send half a request and stall do not stop
//! new requests from being served, and are closed after the header
//! timeout; past `server.max_connections` new connections wait for a free
//! slot; abandoned upload sessions are purged.
//!
//! Run with `cargo test -p kura-tests --test hostile_clients`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kura_tests::api::{send_lenient, Reg};
use kura_tests::faulty::Faulty;
use kura_tests::image::XorShift;
use kura_tests::stream::{eventually, stream_hash};
use kura_tests::{http_client, Kura, KuraOptions};
use reqwest::Method;

const MIB: u64 = 1024 * 1024;

/// kura with `yaml` as its config file.
fn kura_with(yaml: &str) -> (Kura, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kura.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let k = Kura::start_with(KuraOptions {
        config: Some(cfg),
        ..Default::default()
    })
    .unwrap();
    (k, dir)
}

fn mirror_yaml(upstream: &str, extra: &str) -> String {
    format!("mirror:\n  upstreams:\n    - name: up.local\n      url: {upstream}\n{extra}")
}

/// `GET /v2/` on a fresh connection: how long until the answer.
fn probe(port: u16) -> Result<Duration, String> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: kura\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[..12] != b"HTTP/1.1 200" {
        return Err(format!("answered {:?}", String::from_utf8_lossy(&head)));
    }
    Ok(t.elapsed())
}

/// kura's resident set size, KiB.
fn rss_kib(k: &Kura) -> u64 {
    k.rss_kib().map(|(now, _)| now).unwrap_or(0)
}

/// A reader at 10 KB/s and three fast readers start a cold fill together:
/// the fast ones finish in about the time a lone reader takes, the fill
/// completes and is stored while the slow one has read a fraction, and
/// kura's memory stays far below the blob's size.
#[test]
fn a_slow_reader_holds_up_neither_the_fill_nor_the_other_readers() {
    const SIZE: usize = 64 * MIB as usize;
    let f = Faulty::start().unwrap();
    let mut rng = XorShift::new(77);
    let lone = f.add_blob(rng.bytes(SIZE));
    let shared = {
        let data = rng.bytes(SIZE);
        let prefix = data[..256 * 1024].to_vec();
        (f.add_blob(data), prefix)
    };
    let (k, _cfg) = kura_with(&mirror_yaml(&f.url, ""));
    let url = |d: &str| format!("{}/v2/up.local/lib/big/blobs/{d}", k.url);
    let rss_before = rss_kib(&k);

    // A lone reader of a cold blob of the same size: the time to beat.
    let t = Instant::now();
    let r = stream_hash(&http_client(), &url(&lone), None, |_| true);
    assert_eq!((r.status, r.digest.as_str()), (200, lone.as_str()));
    let lone_time = t.elapsed();

    // RSS sampled every 50 ms while the rest runs.
    let stop = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), k.pid());
        std::thread::spawn(move || {
            while stop.load(Ordering::SeqCst) == 0 {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let kib = s
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                        .unwrap_or(0);
                    peak.fetch_max(kib, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // The slow reader: raw HTTP, 1 KiB every 100 ms.
    let slow_received = Arc::new(AtomicU64::new(0));
    let slow_stop = Arc::new(AtomicU64::new(0));
    let slow = {
        let (port, digest, prefix) = (k.port, shared.0.clone(), shared.1.clone());
        let (received, stop) = (slow_received.clone(), slow_stop.clone());
        std::thread::spawn(move || -> Vec<u8> {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(
                s,
                "GET /v2/up.local/lib/big/blobs/{digest} HTTP/1.1\r\nHost: kura\r\n\r\n"
            )
            .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while stop.load(Ordering::SeqCst) == 0 {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "kura closed the slow reader's connection");
                got.extend_from_slice(&buf[..n]);
                received.fetch_add(n as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
            let body = got
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| got[i + 4..].to_vec())
                .unwrap_or_default();
            assert!(
                prefix.starts_with(&body) || body.starts_with(&prefix),
                "the slow reader got wrong bytes"
            );
            body
        })
    };
    let t = Instant::now();
    let fast: Vec<_> = (0..3)
        .map(|_| {
            let u = url(&shared.0);
            std::thread::spawn(move || {
                let r = stream_hash(&http_client(), &u, None, |_| true);
                (r, Instant::now())
            })
        })
        .collect();
    let mut fast_times = Vec::new();
    for h in fast {
        let (r, done) = h.join().unwrap();
        assert_eq!(
            (r.status, r.digest.as_str(), r.error.as_deref()),
            (200, shared.0.as_str(), None),
            "{r:?}"
        );
        fast_times.push(done - t);
    }
    let slowest_fast = *fast_times.iter().max().unwrap();
    // Stored whole while the slow reader is still near its start.
    let stored = k.data_dir.join(format!(
        "blobs/sha256/{}/{}",
        &shared.0[7..9],
        &shared.0[7..]
    ));
    assert!(
        eventually(10, || stored.exists()),
        "the fill did not complete while a slow reader was reading"
    );
    let slow_at_fill_end = slow_received.load(Ordering::SeqCst);
    // Watch a few seconds more: the slow reader keeps getting bytes.
    std::thread::sleep(Duration::from_secs(3));
    let slow_later = slow_received.load(Ordering::SeqCst);
    slow_stop.store(1, Ordering::SeqCst);
    let slow_body = slow.join().unwrap();
    stop.store(1, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak_kib = peak.load(Ordering::SeqCst);
    eprintln!(
        "lone reader {lone_time:?}; fast readers beside a 10 KB/s reader {fast_times:?}; \
         slow reader had {slow_at_fill_end} bytes when the blob was stored, {slow_later} \
         3 s later ({} body bytes checked); kura RSS {} MiB before, peak {} MiB",
        slow_body.len(),
        rss_before >> 10,
        peak_kib >> 10
    );
    assert!(
        slowest_fast <= lone_time * 3 + Duration::from_secs(2),
        "fast readers took {slowest_fast:?} beside a slow one; a lone reader {lone_time:?}"
    );
    assert!(
        slow_at_fill_end < 4 * MIB,
        "the 'slow' reader read {slow_at_fill_end} bytes"
    );
    assert!(
        slow_later > slow_at_fill_end,
        "the slow reader stopped getting bytes"
    );
    // Far under the 64 MiB blob: nothing is held per slow client.
    assert!(
        peak_kib < rss_before + 32 * 1024,
        "kura's RSS went from {rss_before} KiB to {peak_kib} KiB"
    );
}

/// How a hostile connection stalls.
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// Connects and sends nothing.
    Silent,
    /// Half a request line.
    RequestLine,
    /// The request line and some headers, no blank line.
    Headers,
    /// Part of HTTP/2's connection preface.
    Preface,
}

impl Stall {
    const ALL: [Stall; 4] = [
        Stall::Silent,
        Stall::RequestLine,
        Stall::Headers,
        Stall::Preface,
    ];

    fn bytes(self) -> &'static [u8] {
        match self {
            Stall::Silent => b"",
            Stall::RequestLine => b"GET /v2/lib",
            Stall::Headers => b"GET /v2/ HTTP/1.1\r\nHost: kura\r\nUser-Agent: slow",
            Stall::Preface => b"PRI * HTTP/2.0\r\n",
        }
    }
}

/// The client ports of the connections kura holds ESTABLISHED, asked of
/// `ss` so that nothing is read from them: a connection kura closed is in
/// FIN-WAIT (or gone) on its side, whatever the client has read.
fn established(kura_port: u16) -> std::collections::HashSet<u16> {
    let out = std::process::Command::new("ss")
        .args(["-Htan", "state", "established"])
        .arg(format!("( sport = :{kura_port} )"))
        .output()
        .expect("running ss (iproute2)");
    assert!(out.status.success(), "ss failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Whether kura has closed its end of `s`.
fn kura_closed(kura_port: u16, s: &TcpStream) -> bool {
    !established(kura_port).contains(&s.local_addr().unwrap().port())
}

/// Lower this process's soft open-file limit to `soft` (kura inherits it)
/// or put it back to the hard limit, with util-linux's prlimit.
fn set_own_nofile(soft: Option<u64>) {
    let pid = std::process::id().to_string();
    let hard = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .unwrap();
    let soft = soft.map_or(hard.clone(), |s| s.to_string());
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={soft}:{hard}")])
        .status()
        .unwrap();
    assert!(st.success(), "prlimit");
}

/// kura's soft and hard open-file limits.
fn nofile_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_owned(), f[4].to_owned())
}

/// 2400 connections that send part of a request (or nothing) and stall:
/// new requests are still answered at once, and kura closes the stalled
/// connections after `server.header_read_timeout_secs`.
#[test]
fn thousands_of_stalled_requests_do_not_stop_new_ones() {
    const HOSTILE: usize = 2400;
    // kura starts with a soft open-file limit below what this needs, and
    // raises it to the hard limit.
    set_own_nofile(Some(1024));
    let started = kura_with("server:\n  header_read_timeout_secs: 15\n");
    set_own_nofile(None);
    let (k, _cfg) = started;
    let (soft, hard) = nofile_of(k.pid());
    assert_eq!(soft, hard, "kura did not raise its open-file limit");
    assert!(
        k.log_text().contains("raised the open-file limit"),
        "{}",
        k.log_text()
    );

    // Opened from 8 threads: a listen queue that overflows costs a
    // connect a second (SYN retransmission), and these waits overlap.
    let t = Instant::now();
    let port = k.port;
    let openers: Vec<_> = (0..8)
        .map(|n| {
            std::thread::spawn(move || {
                (0..HOSTILE / 8)
                    .map(|i| {
                        let stall = Stall::ALL[(n + i) % Stall::ALL.len()];
                        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                        s.write_all(stall.bytes()).unwrap();
                        (stall, s)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let hostile: Vec<(Stall, TcpStream)> = openers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let opened = t.elapsed();
    // With every one of them open: fresh requests, one after another.
    let mut latencies: Vec<Duration> = (0..40)
        .map(|i| probe(k.port).unwrap_or_else(|e| panic!("probe {i}: {e}")))
        .collect();
    latencies.sort();
    let rss = rss_kib(&k);
    // The probes ran beside (nearly) all of them: kura held them open.
    let held = established(port);
    let held_during = hostile
        .iter()
        .filter(|(_, s)| held.contains(&s.local_addr().unwrap().port()))
        .count();
    eprintln!(
        "{HOSTILE} stalled connections opened in {opened:?}; 40 probes beside \
         {held_during} of them held by kura: median {:?}, max {:?}; kura RSS {} MiB",
        latencies[20],
        latencies[39],
        rss >> 10
    );
    assert!(
        latencies[39] < Duration::from_secs(1),
        "a request took {:?} beside {HOSTILE} stalled connections",
        latencies[39]
    );
    assert!(
        held_during >= HOSTILE * 5 / 6,
        "only {held_during} of {HOSTILE} stalled connections were held during the probes \
         (opening them took {opened:?})"
    );
    // After the header timeout every one is closed by kura.
    std::thread::sleep(Duration::from_secs(15).saturating_sub(t.elapsed()));
    let deadline = t + opened + Duration::from_secs(15 + 6);
    loop {
        let held = established(port);
        let open: Vec<Stall> = hostile
            .iter()
            .filter(|(_, s)| held.contains(&s.local_addr().unwrap().port()))
            .map(|(stall, _)| *stall)
            .collect();
        if open.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let mut by_kind = std::collections::BTreeMap::new();
            for s in &open {
                *by_kind.entry(format!("{s:?}")).or_insert(0) += 1;
            }
            panic!(
                "{} stalled connections still open {:?} after they started: {by_kind:?}",
                open.len(),
                t.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "all {HOSTILE} closed by kura {:?} after they started",
        t.elapsed()
    );
    probe(k.port).unwrap();
}

/// A request body that stalls, and a client that stops reading its
/// response, lose their connections after `server.idle_timeout_secs`.
#[test]
fn a_stalled_body_and_a_reader_that_stopped_are_cut_off() {
    let f = Faulty::start().unwrap();
    let digest = f.add_blob(XorShift::new(5).bytes(32 * MIB as usize));
    let (k, _cfg) = kura_with(&mirror_yaml(&f.url, "server:\n  idle_timeout_secs: 2\n"));
    // Warm the cache, so the read below is served from disk.
    let url = format!("{}/v2/up.local/lib/idle/blobs/{digest}", k.url);
    assert_eq!(
        stream_hash(&http_client(), &url, None, |_| true).status,
        200
    );

    let t = Instant::now();
    let mut body = TcpStream::connect(("127.0.0.1", k.port)).unwrap();
    body.write_all(
        b"POST /v2/team/idle/blobs/uploads/?digest=sha256:0000000000000000000000000000000000000000000000000000000000000000 HTTP/1.1\r\n\
          Host: kura\r\nContent-Length: 100000\r\n\r\nonly a little",
    )
    .unwrap();
    let mut reader = TcpStream::connect(("127.0.0.1", k.port)).unwrap();
    write!(
        reader,
        "GET /v2/up.local/lib/idle/blobs/{digest} HTTP/1.1\r\nHost: kura\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 4096];
    reader.read_exact(&mut first).unwrap();
    // Neither sends nor reads another byte.
    let mut cut = [false, false];
    assert!(
        eventually(15, || {
            cut[0] = cut[0] || kura_closed(k.port, &body);
            cut[1] = cut[1] || kura_closed(k.port, &reader);
            cut == [true, true]
        }),
        "after {:?}: stalled body cut {}, stopped reader cut {}",
        t.elapsed(),
        cut[0],
        cut[1]
    );
    eprintln!("both cut off {:?} after they stalled", t.elapsed());
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "cut before the idle timeout"
    );
    probe(k.port).unwrap();
}

/// At `server.max_connections` kura stops accepting: a new connection is
/// served once one of the others closes, and kura says so in its log.
#[test]
fn past_the_connection_limit_new_connections_wait_for_a_slot() {
    let (k, _cfg) = kura_with("server:\n  max_connections: 8\n");
    // The readiness probe's connection may still hold a slot a moment.
    std::thread::sleep(Duration::from_millis(200));
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", k.port)).unwrap())
        .collect();
    let waiting = std::thread::spawn({
        let port = k.port;
        move || probe(port)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(!waiting.is_finished(), "a ninth connection was served");
    assert!(
        eventually(5, || k.log_text().contains("connection limit reached")),
        "{}",
        k.log_text()
    );
    let t = Instant::now();
    drop(idle.pop());
    let served = waiting.join().unwrap().expect("served once a slot freed");
    eprintln!(
        "ninth connection served {:?} after a slot freed ({served:?} in all)",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// Upload sessions that got a chunk and were abandoned are purged after
/// `registry.upload_max_idle_secs`: their storage is gone and the session
/// answers BLOB_UPLOAD_UNKNOWN, while a session still in use stays.
#[test]
fn abandoned_uploads_are_purged() {
    let reg = Reg::with_config("registry:\n  upload_max_idle_secs: 2\n");
    let chunk = vec![7u8; 64 * 1024];
    let abandoned: Vec<String> = (0..3)
        .map(|_| {
            let loc = reg.start_upload("team/abandon");
            reg.patch(&loc, &chunk, None).expect(202);
            loc
        })
        .collect();
    let live = reg.start_upload("team/abandon");
    let mut live_loc = reg
        .patch(&live, &chunk, None)
        .expect(202)
        .hdr("location")
        .to_owned();
    let uploads = reg.kura.data_dir.join("uploads");
    let sessions = || std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    assert_eq!(sessions(), 4);
    let t = Instant::now();
    // The live session gets a chunk every half second meanwhile.
    let mut sent = 1;
    let purged = eventually(12, || {
        if t.elapsed() > Duration::from_millis(500 * sent) {
            let r = reg.patch(&live_loc, &chunk, None).expect(202);
            live_loc = r.hdr("location").to_owned();
            sent += 1;
        }
        sessions() == 1
    });
    assert!(
        purged,
        "{} upload sessions left after {:?}",
        sessions(),
        t.elapsed()
    );
    eprintln!(
        "abandoned sessions purged {:?} after their last chunk",
        t.elapsed()
    );
    for loc in &abandoned {
        let r = send_lenient(reg.req(Method::GET, loc));
        assert_eq!(r.status, 404, "{}", r.describe());
        assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN", "{}", r.describe());
        let r = send_lenient(
            reg.req(Method::PATCH, loc)
                .header("content-type", "application/octet-stream")
                .body(chunk.clone()),
        );
        assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN", "{}", r.describe());
    }
    // The session in use was kept and completes.
    let mut whole = Vec::new();
    for _ in 0..sent {
        whole.extend_from_slice(&chunk);
    }
    let digest = kura_tests::sha256(&whole);
    reg.put_upload(&live_loc, &digest, b"", None).expect(201);
}
