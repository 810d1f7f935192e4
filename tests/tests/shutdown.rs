//! Graceful shutdown: on SIGTERM kura stops accepting connections but
//! finishes the download and the upload in flight, exits cleanly, and the
//! uploaded chunk is there for the restarted process.
//!
//! Needs Linux (`/proc`) and `kill(1)`.

use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kura_tests::api::{noise, Reg};
use kura_tests::{sha256, signal};

/// The process state letter from /proc (`Z` once it has exited).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[track_caller]
fn wait_exited(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while proc_state(pid).is_some_and(|s| s != 'Z' && s != 'X') {
        assert!(
            Instant::now() < deadline,
            "kura (pid {pid}) did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Once shutdown starts the listener closes.
#[track_caller]
fn wait_listener_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting connections after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_finishes_in_flight_download() {
    let mut reg = Reg::start();
    let data = noise(48 * 1024 * 1024, 51);
    let d = reg.push_blob("shutdown/get", &data);
    let pid = reg.kura.pid();

    let mut resp = reg
        .client
        .get(reg.url(&format!("/v2/shutdown/get/blobs/{d}")))
        .send()
        .expect("GET starts");
    assert_eq!(resp.status().as_u16(), 200);
    let mut got = vec![0u8; 1024 * 1024];
    resp.read_exact(&mut got).expect("first MiB");

    signal(pid, "TERM").unwrap();
    wait_listener_closed(reg.kura.port);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        proc_state(pid).is_some_and(|s| s != 'Z'),
        "kura exited with a download in flight"
    );

    resp.read_to_end(&mut got).expect("rest of the body");
    assert_eq!(
        got.len(),
        data.len(),
        "the in-flight download was cut short"
    );
    assert_eq!(sha256(&got), d);

    wait_exited(pid, Duration::from_secs(10));
    let status = reg.kura.terminate().expect("reaping kura");
    assert!(
        status.success(),
        "kura exited with {status}; log:\n{}",
        reg.kura.log_text()
    );
}

/// A request body that trickles in.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    started: Arc<AtomicBool>,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos > 0 {
            std::thread::sleep(Duration::from_millis(25));
        }
        self.started.store(true, Ordering::SeqCst);
        let n = buf.len().min(64 * 1024).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn shutdown_finishes_in_flight_upload() {
    let mut reg = Reg::start();
    let data = noise(2 * 1024 * 1024, 52);
    let d = sha256(&data);
    let loc = reg.start_upload("shutdown/put");
    let pid = reg.kura.pid();

    let started = Arc::new(AtomicBool::new(false));
    let body = Trickle {
        data: data.clone(),
        pos: 0,
        started: started.clone(),
    };
    let client = reg.client.clone();
    let url = reg.url(&loc);
    let upload = std::thread::spawn(move || {
        let r = client
            .patch(url)
            .header("content-type", "application/octet-stream")
            .body(reqwest::blocking::Body::new(body))
            .send()
            .expect("PATCH completes");
        (
            r.status().as_u16(),
            r.headers().clone(),
            r.text().unwrap_or_default(),
        )
    });
    while !started.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    signal(pid, "TERM").unwrap();
    wait_listener_closed(reg.kura.port);
    assert!(
        !upload.is_finished(),
        "the upload should still be running when shutdown starts"
    );

    let (status, headers, text) = upload.join().unwrap();
    assert_eq!(status, 202, "in-flight PATCH: {text}");
    assert_eq!(
        headers.get("range").unwrap(),
        &format!("0-{}", data.len() - 1)
    );
    wait_exited(pid, Duration::from_secs(10));
    let st = reg.kura.terminate().expect("reaping kura");
    assert!(
        st.success(),
        "kura exited with {st}; log:\n{}",
        reg.kura.log_text()
    );

    // The chunk was kept: finish the upload on a new process.
    reg.kura.restart().expect("restart");
    assert_eq!(
        reg.get(&loc).expect(204).hdr("range"),
        format!("0-{}", data.len() - 1)
    );
    reg.put_upload(&loc, &d, b"", None).expect(201);
    assert_eq!(
        reg.get(&format!("/v2/shutdown/put/blobs/{d}"))
            .expect(200)
            .body,
        data
    );
}

#[test]
fn sighup_without_tls_files_is_logged_not_fatal() {
    let reg = Reg::start();
    reg.get("/v2/").expect(200);
    signal(reg.kura.pid(), "HUP").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reg
        .kura
        .log_text()
        .contains("SIGHUP: no TLS files to reload")
    {
        assert!(
            Instant::now() < deadline,
            "no word of the SIGHUP; log:\n{}",
            reg.kura.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(proc_state(reg.kura.pid()).map(|s| s != 'Z'), Some(true));
    reg.get("/v2/").expect(200);
}
