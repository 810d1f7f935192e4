//! What the core tests share: a deterministic host, and requests.

pub mod api;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::executor::block_on;
use kura_core::{BoxFuture, Host};

/// A settable clock, distinct (not unpredictable) random bytes, spawn on a
/// thread, and no real waiting for retry backoff (longer sleeps are real).
pub struct TestHost {
    pub clock: AtomicU64,
    counter: AtomicU64,
    /// Act like a Worker: no request may be woken by another's work.
    pub isolated: AtomicBool,
    /// Short sleeps taken (each yields once) while `isolated`.
    pub polls: AtomicU64,
    /// What the core warned the operator about.
    pub warnings: std::sync::Mutex<Vec<String>>,
}

impl TestHost {
    /// Another process's host: its random bytes differ from every other
    /// host's made with another `seed`. (Not every test file uses it.)
    #[allow(dead_code)]
    pub fn seeded(self, seed: u64) -> Self {
        self.counter.store(seed << 32, Ordering::SeqCst);
        self
    }

    pub fn at(now_ms: u64) -> Self {
        TestHost {
            clock: AtomicU64::new(now_ms),
            counter: AtomicU64::new(1),
            isolated: AtomicBool::new(false),
            polls: AtomicU64::new(0),
            warnings: std::sync::Mutex::default(),
        }
    }
}

impl Host for TestHost {
    fn now_unix_ms(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }
    fn fill_random(&self, out: &mut [u8]) {
        let n = self.counter.fetch_add(1, Ordering::SeqCst).to_le_bytes();
        for (i, b) in out.iter_mut().enumerate() {
            *b = n[i % 8] ^ (i as u8);
        }
    }
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        std::thread::spawn(move || block_on(task));
    }
    fn warn(&self, message: &str) {
        self.warnings.lock().unwrap().push(message.to_owned());
    }
    fn wakes_across_requests(&self) -> bool {
        !self.isolated.load(Ordering::SeqCst)
    }
    fn sleep(&self, ms: u64) -> BoxFuture<'static, ()> {
        // Retry backoffs (under a second) pass at once; longer waits (the
        // deadline for a stale answer) take real time, on a thread.
        if ms < 1_000 {
            if self.isolated.load(Ordering::SeqCst) {
                // A polling wait must give the others a turn.
                self.polls.fetch_add(1, Ordering::SeqCst);
                let mut yielded = false;
                return Box::pin(futures::future::poll_fn(move |cx| {
                    if yielded {
                        return std::task::Poll::Ready(());
                    }
                    yielded = true;
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }));
            }
            return Box::pin(async {});
        }
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            let _ = tx.send(());
        });
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Run `f` on its own thread; fail (not hang) if it takes over `secs`.
/// (Not every test file uses it.)
#[allow(dead_code)]
pub fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("no answer within {secs} s"))
}
