//! A slow link on loopback for the bench's WAN phase: a TCP proxy that
//! delays every byte by a fixed time in each direction and shares one
//! rate limit per direction among all its connections, as one WAN link
//! does.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What one direction of the link allows.
#[derive(Clone, Copy)]
pub struct Link {
    /// Bytes per second.
    pub rate: f64,
    /// One-way delay.
    pub delay: Duration,
}

/// Paces one direction: bytes leave no faster than the rate, in the order
/// they were offered, whichever connection they belong to.
struct Pacer {
    rate: f64,
    next_free: Mutex<Instant>,
}

impl Pacer {
    /// When `n` bytes may leave, the link then being busy with them.
    fn reserve(&self, n: usize) -> Instant {
        let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*next).max(Instant::now());
        *next = start + Duration::from_secs_f64(n as f64 / self.rate);
        start
    }
}

/// Most bytes moved at once: small enough to keep the pacing smooth.
const CHUNK: usize = 16 * 1024;

pub struct Shaper {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Shaper {
    /// Listen on a free loopback port and forward to `target`
    /// (`127.0.0.1:PORT`) through `link` in both directions.
    pub fn start(target: &str, link: Link) -> anyhow::Result<Shaper> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let up = Arc::new(Pacer {
            rate: link.rate,
            next_free: Mutex::new(Instant::now()),
        });
        let down = Arc::new(Pacer {
            rate: link.rate,
            next_free: Mutex::new(Instant::now()),
        });
        let target = target.to_owned();
        let stopped = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (client.try_clone(), server.try_clone());
                let (Ok(c2), Ok(s2)) = (c2, s2) else { continue };
                pump(client, server, up.clone(), link.delay);
                pump(s2, c2, down.clone(), link.delay);
            }
        });
        Ok(Shaper { port, stop })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Move bytes from `from` to `to` through the link: a chunk read at `t`
/// is sent once the link is free of earlier chunks (of every connection
/// in this direction), takes `len / rate` to cross, and arrives `delay`
/// later. A reader thread schedules, a writer thread delivers; between
/// them at most twice the link's bandwidth-delay product waits, so a fast
/// sender is held back as a real link holds it.
fn pump(mut from: TcpStream, mut to: TcpStream, pacer: Arc<Pacer>, delay: Duration) {
    let in_flight = (2.0 * pacer.rate * delay.as_secs_f64() / CHUNK as f64) as usize + 8;
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(in_flight);
    thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let start = pacer.reserve(n);
                    let arrives = start + Duration::from_secs_f64(n as f64 / pacer.rate) + delay;
                    if tx.send((arrives, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` ends the writer once it has delivered everything.
    });
    thread::spawn(move || {
        for (arrives, chunk) in rx {
            let now = Instant::now();
            if arrives > now {
                thread::sleep(arrives - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
