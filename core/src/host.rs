//! What the core needs from its host besides storage: time and randomness.
//!
//! `wasm32-unknown-unknown` has neither a clock nor an entropy source in
//! `std`, so the host supplies both (the native shell from the OS, a Worker
//! from `Date.now()` and `crypto.getRandomValues`).

use crate::{MaybeSend, MaybeSync};

pub trait Host: MaybeSend + MaybeSync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> u64;
    /// Fill `out` with cryptographically secure random bytes. Upload session
    /// ids come from here, and they must not be guessable.
    fn fill_random(&self, out: &mut [u8]);
}
