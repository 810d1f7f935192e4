//! The core's host capabilities from the operating system.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kura_core::BoxFuture;

pub struct SystemHost;

impl kura_core::Host for SystemHost {
    fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn fill_random(&self, out: &mut [u8]) {
        // Without an entropy source upload ids would be guessable; refusing
        // to run is better than that.
        getrandom::fill(out).expect("the OS random source failed");
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        tokio::spawn(task);
    }

    fn sleep(&self, ms: u64) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(Duration::from_millis(ms)))
    }

    fn warn(&self, message: &str) {
        tracing::warn!("{message}");
    }
}
