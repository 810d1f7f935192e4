//! Streamed downloads for tests that watch bytes arrive: a GET hashed as
//! it streams, and polling until something holds.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// What a streamed GET delivered.
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    pub cache: String,
    pub content_length: Option<u64>,
    pub received: u64,
    pub digest: String,
    /// The body ended with an error (connection broken).
    pub error: Option<String>,
}

/// GET `url`, hashing the body while streaming it (nothing kept), adding
/// the bytes received to `progress`. `on_progress` runs with the bytes
/// received so far after each read.
pub fn stream_hash(
    client: &reqwest::blocking::Client,
    url: &str,
    progress: Option<&AtomicU64>,
    mut on_progress: impl FnMut(u64) -> bool,
) -> Streamed {
    let mut resp = match client.get(url).send() {
        Ok(r) => r,
        Err(e) => {
            return Streamed {
                status: 0,
                cache: String::new(),
                content_length: None,
                received: 0,
                digest: String::new(),
                error: Some(format!("{e:#}")),
            }
        }
    };
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-kura-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let content_length = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0u64;
    let mut error = None;
    loop {
        match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                received += n as u64;
                if let Some(p) = progress {
                    p.fetch_add(n as u64, Ordering::SeqCst);
                }
                if !on_progress(received) {
                    break;
                }
            }
            Err(e) => {
                error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    Streamed {
        status,
        cache,
        content_length,
        received,
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        error,
    }
}

/// Poll until `f` holds (fills finish in their own task), at most `secs`.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
