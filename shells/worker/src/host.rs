//! The core's host capabilities from the Workers runtime.

use std::time::Duration;

use kura_core::BoxFuture;

pub struct WorkerHost;

impl kura_core::Host for WorkerHost {
    /// `Date.now()`. Workers advance it only across I/O, which is all the
    /// core needs (tag ages, token expiry, upload session times).
    fn now_unix_ms(&self) -> u64 {
        js_sys::Date::now() as u64
    }

    fn fill_random(&self, out: &mut [u8]) {
        // crypto.getRandomValues takes at most 65536 bytes per call.
        for chunk in out.chunks_mut(65536) {
            crate::js::get_random_values(chunk);
        }
    }

    /// Only the core's own blob fill spawns, and the Worker never lets a
    /// blob miss reach it (see `Registry::handle_edge`); kept correct anyway.
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        wasm_bindgen_futures::spawn_local(task);
    }

    /// Each request has its own I/O context: a request woken from another's
    /// would do its I/O there.
    fn wakes_across_requests(&self) -> bool {
        false
    }

    fn sleep(&self, ms: u64) -> BoxFuture<'static, ()> {
        Box::pin(worker::Delay::from(Duration::from_millis(ms)))
    }
}
