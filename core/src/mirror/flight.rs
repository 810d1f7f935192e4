//! A fill in flight, as the requests of one process see it: who fills
//! which blob here (`Fills`), how far its bytes have come, where they are
//! (spooled, or still in memory), and each client's stream over them from
//! its offset.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::StreamExt;

use super::FlightKey;
use crate::error::UpstreamError;
use crate::io::body::{self, ByteStream};
use crate::io::storage::Storage;
use crate::metrics::Metrics;
use crate::model::digest::Digest;
use crate::store::{error_stream, Result};

/// Who fills which blob: one fill per repository (as stored) and digest,
/// whether the core moves the bytes (`Fill`) or the host does (the edge's
/// `FillLease`). A fill started for one repository is never followed by a
/// request for another, which the upstream may not let have the blob.
///
/// In memory, for one process. This is the seam where a lease held in
/// storage goes when several processes share one cache.
#[derive(Default)]
pub(crate) struct Fills {
    flights: Mutex<HashMap<FlightKey, Arc<BlobFlight>>>,
    /// Where the number of fills is shown (`kura_fills_in_flight`).
    metrics: Arc<Metrics>,
    /// Bytes of other processes' fills held in memory for clients here,
    /// across every followed fill (at most `FOLLOWED_IN_MEMORY_TOTAL`).
    followed_in_memory: std::sync::atomic::AtomicU64,
}

/// How many bytes of other processes' fills a process holds in memory for
/// its clients, across every fill it follows (`watch` holds up to 64 MiB
/// of each).
const FOLLOWED_IN_MEMORY_TOTAL: u64 = 256 * 1024 * 1024;

/// What [`Fills::claim`] decided for a request.
pub(crate) enum Claim {
    /// Nobody was filling the blob: the caller fills it, then settles.
    Lead(Arc<BlobFlight>),
    /// Another request is filling it.
    Follow(Arc<BlobFlight>),
}

impl Fills {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Fills {
        Fills {
            metrics,
            ..Fills::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlightKey, Arc<BlobFlight>>> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Join the fill of `key`, or start one (stamped `now_ms`).
    pub(crate) fn claim(&self, key: FlightKey, now_ms: u64) -> Claim {
        let mut flights = self.lock();
        if let Some(f) = flights.get(&key) {
            return Claim::Follow(f.clone());
        }
        let flight = Arc::new(BlobFlight::default());
        flight.moved(now_ms);
        flights.insert(key, flight.clone());
        self.show_count(&flights);
        Claim::Lead(flight)
    }

    /// Count `n` more bytes of followed fills in memory, if the budget
    /// allows.
    pub(super) fn hold_followed(&self, n: u64) -> bool {
        use std::sync::atomic::Ordering;
        self.followed_in_memory
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held + n <= FOLLOWED_IN_MEMORY_TOTAL).then_some(held + n)
            })
            .is_ok()
    }

    pub(super) fn release_followed(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let _ = self
            .followed_in_memory
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                Some(held.saturating_sub(n))
            });
    }

    pub(crate) fn is_filling(&self, key: &FlightKey) -> bool {
        self.lock().contains_key(key)
    }

    /// Digests being filled, for any repository.
    pub(crate) fn digests(&self) -> std::collections::HashSet<Digest> {
        self.lock().keys().map(|(_, d)| d.clone()).collect()
    }

    /// The fill is over: requests from now on find the blob stored, or
    /// (after a failure) start a fresh fill. A newer fill under the same
    /// key stays.
    pub(crate) fn release(&self, key: &FlightKey, flight: &Arc<BlobFlight>) {
        let mut flights = self.lock();
        if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(key);
            self.show_count(&flights);
        }
    }

    fn show_count(&self, flights: &HashMap<FlightKey, Arc<BlobFlight>>) {
        self.metrics
            .fills_in_flight
            .store(flights.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Release `flight` and tell its followers how it ended.
    pub(crate) fn settle(
        &self,
        key: &FlightKey,
        flight: &Arc<BlobFlight>,
        outcome: Result<(), FlightError>,
    ) {
        // Out of the map first: a request arriving from now on finds the
        // blob stored, or (after a failure) starts a fresh fill.
        self.release(key, flight);
        flight.update(|s| s.outcome = Some(outcome));
    }
}

/// Why a fill failed: the upstream's answer, or bytes that broke on the
/// way (cut short, the wrong digest, storage refusing them).
#[derive(Debug, Clone)]
pub(crate) enum FlightError {
    Upstream(UpstreamError),
    Broken(String),
}

impl std::fmt::Display for FlightError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlightError::Upstream(e) => e.fmt(f),
            FlightError::Broken(m) => f.write_str(m),
        }
    }
}

pub(crate) struct Spooled {
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) key: String,
}

#[derive(Default)]
pub(crate) struct FlightState {
    /// Upstream headers arrived.
    pub(super) started: bool,
    pub(super) size: Option<u64>,
    pub(super) received: u64,
    pub(super) spooled: Vec<Spooled>,
    /// Received but not yet spooled, as `(offset, bytes)`; when following
    /// another process's fill, the newest spooled bytes (up to
    /// `FOLLOWED_IN_MEMORY`), read once for every client here.
    pub(super) tail: Vec<(u64, Bytes)>,
    /// Readers may read to the end before the commit: another process's
    /// fill said every byte is spooled and hashed to the digest, and every
    /// byte is listed here. (This process's own fills wait for the commit,
    /// so that a finished GET means a stored blob.)
    pub(super) verified: bool,
    /// This process's fill hashed every byte to the digest (told to other
    /// processes through the lease).
    pub(super) hashed: bool,
    /// Bumped when another holder starts the fill again from byte 0: a
    /// reader that already has bytes of the old one must not go on with
    /// the new one's (the old bytes were never verified).
    pub(super) generation: u64,
    pub(super) outcome: Option<Result<(), FlightError>>,
    pub(super) wakers: Vec<oneshot::Sender<()>>,
}

#[derive(Default)]
pub(crate) struct BlobFlight {
    pub(super) state: Mutex<FlightState>,
    /// When bytes last moved (host clock, ms): how a follower of a fill it
    /// cannot see tells a slow one from one whose filler went away.
    moved_ms: std::sync::atomic::AtomicU64,
}

/// How a fill began, for a client waiting on it.
pub(super) enum Start {
    /// The upstream answered: bytes follow (`size` if it said).
    Bytes { size: Option<u64> },
    /// The fill ended well without a byte: the blob was stored meanwhile,
    /// or the wait for another process's fill is over. Look again.
    Over,
}

pub(super) enum Step {
    Done,
    Fail(String),
    Bytes(Bytes),
    Spool(String, Range<u64>),
    Stored(Range<u64>),
    Wait(oneshot::Receiver<()>),
}

impl FlightState {
    /// The blob is stored whole (committed by another process, perhaps
    /// before this one saw a byte of it): readers read it from storage.
    pub(super) fn stored(&mut self, size: u64) {
        self.started = true;
        self.size = Some(size);
        self.received = size;
    }

    /// Forget a fill's progress: another holder starts again from byte 0.
    pub(super) fn restart(&mut self) {
        self.generation += 1;
        self.verified = false;
        self.received = 0;
        self.spooled.clear();
        self.tail.clear();
    }
}

impl BlobFlight {
    pub(crate) fn moved(&self, now_ms: u64) {
        self.moved_ms
            .store(now_ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn moved_ms(&self) -> u64 {
        self.moved_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How the fill ended, once it has.
    pub(crate) fn outcome(&self) -> Option<Result<(), FlightError>> {
        self.lock().outcome.clone()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut FlightState)) {
        let wakers = {
            let mut s = self.lock();
            f(&mut s);
            std::mem::take(&mut s.wakers)
        };
        for w in wakers {
            let _ = w.send(());
        }
    }

    /// Wait for the upstream's answer: the blob size if it said, or why not.
    pub(super) async fn started(&self) -> Result<Start, FlightError> {
        loop {
            let rx = {
                let mut s = self.lock();
                if s.started {
                    return Ok(Start::Bytes { size: s.size });
                }
                match &s.outcome {
                    Some(Err(e)) => return Err(e.clone()),
                    Some(Ok(())) => return Ok(Start::Over),
                    None => {}
                }
                let (tx, rx) = oneshot::channel();
                s.wakers.push(tx);
                rx
            };
            let _ = rx.await;
        }
    }

    /// Wait until the fill has an outcome.
    pub(super) async fn settled(&self) {
        loop {
            let rx = {
                let mut s = self.lock();
                if s.outcome.is_some() {
                    return;
                }
                let (tx, rx) = oneshot::channel();
                s.wakers.push(tx);
                rx
            };
            let _ = rx.await;
        }
    }

    /// What a client at `pos` (reading up to `end`) can do next.
    /// What a client at `pos` (reading up to `end`, having started at
    /// `start` in fill generation `generation`, `None` before its first
    /// step) can do next.
    pub(super) fn step(
        &self,
        pos: u64,
        end: Option<u64>,
        start: u64,
        generation: &mut Option<u64>,
    ) -> Step {
        let mut s = self.lock();
        match *generation {
            Some(g) if g != s.generation && pos > start => {
                return Step::Fail(
                    "the process filling the blob went away after sending part of it; \
                     ask again"
                        .into(),
                )
            }
            _ => *generation = Some(s.generation),
        }
        let done = matches!(s.outcome, Some(Ok(())));
        let end = end.or(if done || s.verified {
            Some(s.received)
        } else {
            s.size
        });
        // A client that has every verified byte is done, even if storing
        // the blob then failed.
        if s.verified && end.is_some_and(|e| pos >= e) {
            return Step::Done;
        }
        if let Some(Err(e)) = &s.outcome {
            return Step::Fail(e.to_string());
        }
        if end.is_some_and(|e| pos >= e) {
            return Step::Done;
        }
        if done {
            return Step::Stored(pos..end.unwrap_or(s.received));
        }
        // The last byte waits for verification.
        let readable = if s.verified {
            s.received
        } else {
            s.received.saturating_sub(1)
        }
        .min(end.unwrap_or(u64::MAX));
        if pos < readable {
            // Memory first: a follower's copy of the newest spooled bytes
            // overlaps the spool, and serves its clients without a read
            // each from storage.
            for (off, b) in &s.tail {
                let (off, len) = (*off, b.len() as u64);
                if pos >= off && pos < off + len {
                    let to = (off + len).min(readable);
                    return Step::Bytes(b.slice((pos - off) as usize..(to - off) as usize));
                }
            }
            for sp in &s.spooled {
                if pos >= sp.offset && pos < sp.offset + sp.len {
                    let to = (sp.offset + sp.len).min(readable);
                    return Step::Spool(sp.key.clone(), pos - sp.offset..to - sp.offset);
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        s.wakers.push(tx);
        Step::Wait(rx)
    }
}

/// A client's view of a fill: bytes from `start` to `end` as they arrive.
pub(super) fn follow<S: Storage>(
    flight: Arc<BlobFlight>,
    storage: Arc<S>,
    blob_key: String,
    start: u64,
    end: Option<u64>,
) -> ByteStream {
    let parts = futures::stream::unfold(Some((start, None)), move |state| {
        let flight = flight.clone();
        let storage = storage.clone();
        let blob_key = blob_key.clone();
        async move {
            let (mut pos, mut generation) = state?;
            loop {
                match flight.step(pos, end, start, &mut generation) {
                    Step::Done => return None,
                    Step::Fail(msg) => {
                        return Some((error_stream(std::io::Error::other(msg)), None))
                    }
                    Step::Bytes(b) => {
                        pos += b.len() as u64;
                        return Some((body::once(b), Some((pos, generation))));
                    }
                    Step::Spool(key, r) => match storage.get(&key, Some(r.clone())).await {
                        Ok(Some((_, body))) => {
                            pos += r.end - r.start;
                            return Some((S::body_stream(body), Some((pos, generation))));
                        }
                        // Spooled chunks go away once the blob is stored:
                        // wait for the flight to say so, then read that.
                        _ => flight.settled().await,
                    },
                    Step::Stored(r) => {
                        return match storage.get(&blob_key, Some(r)).await {
                            Ok(Some((_, body))) => Some((S::body_stream(body), None)),
                            Ok(None) => Some((
                                error_stream(std::io::Error::other("cached blob vanished")),
                                None,
                            )),
                            Err(e) => {
                                Some((error_stream(std::io::Error::other(e.to_string())), None))
                            }
                        };
                    }
                    Step::Wait(rx) => {
                        let _ = rx.await;
                    }
                }
            }
        }
    });
    Box::pin(parts.flatten())
}
