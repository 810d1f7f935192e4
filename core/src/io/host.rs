//! What the core needs from its host besides storage: time and randomness.
//!
//! `wasm32-unknown-unknown` has neither a clock nor an entropy source in
//! `std`, so the host supplies both (the native shell from the OS, a Worker
//! from `Date.now()` and `crypto.getRandomValues`).

use crate::io::body::BoxFuture;
use crate::{MaybeSend, MaybeSync};

/// The host's clock, entropy, task spawner and timer, which the core
/// cannot have on its own on every target (see the module docs).
pub trait Host: MaybeSend + MaybeSync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> u64;
    /// Fill `out` with cryptographically secure random bytes. Upload session
    /// ids come from here, and they must not be guessable.
    fn fill_random(&self, out: &mut [u8]);
    /// Run `task` to completion independently of the request that started
    /// it (a cache fill must finish even if its first client goes away).
    fn spawn(&self, task: BoxFuture<'static, ()>);
    /// A future that completes after `ms` milliseconds (retry backoff).
    fn sleep(&self, ms: u64) -> BoxFuture<'static, ()>;
    /// Whether one request's future may be woken by work done for another
    /// request. `false` for a Cloudflare Worker: each request has its own
    /// I/O context, and a request resumed from another's context would do
    /// its I/O there. A request waiting for another's manifest fetch then
    /// polls on [`Host::sleep`] instead of being woken. The core's own blob
    /// fill (reached through `Registry::handle`) still wakes the requests
    /// that stream from it: such a host serves blob misses through
    /// `Registry::handle_edge` and `follow_fill`, which poll.
    fn wakes_across_requests(&self) -> bool {
        true
    }

    /// Tell the operator about something they should act on (credentials
    /// withheld from a foreign token realm). Hosts without a log drop it.
    fn warn(&self, message: &str) {
        let _ = message;
    }
}
