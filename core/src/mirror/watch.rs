//! Following another process's fill through storage: the lease names the
//! holder's spool, whose parts this process reads into its own in-memory
//! fill as they land (once, for all its clients); when the holder dies, or
//! gives up before its first byte, this process takes the lease and fills.
//!
//! Every host's followers use it. A holder that moves the bytes itself
//! (a Worker writing straight to R2) spools nothing and says so in its
//! lease, so its followers only watch the lease and the blob.

use std::sync::Arc;

use bytes::Bytes;

use super::flight::{BlobFlight, Fills, FlightError, FlightState, Spooled};
use super::lease::{spooled_parts, Claimed, LeaseRecord, StoredLease};
use crate::io::body;
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::metrics::{self, Metrics};
use crate::model::digest::Digest;
use crate::model::reference::RepositoryName;
use crate::model::upload::UploadId;
use crate::store::layout;

/// What a follower elsewhere needs: the storage the fills share, and this
/// process's side of the fill.
pub(crate) struct Watcher<S, H> {
    pub(crate) storage: Arc<S>,
    pub(crate) host: Arc<H>,
    /// The repository as stored here: a blob counts as filled once linked
    /// into it.
    pub(crate) local: RepositoryName,
    pub(crate) digest: Digest,
    pub(crate) flight: Arc<BlobFlight>,
    pub(crate) fills: Arc<Fills>,
    pub(crate) metrics: Arc<Metrics>,
}

/// How following another process's fill ended.
pub(crate) enum Watched {
    /// The fill is over: the blob is stored (`Ok`), or it failed.
    Over(Result<(), FlightError>),
    /// This process is to fill now: it holds the lease in storage
    /// (`coordinated`), or the storage stopped taking create-only puts.
    Lead { coordinated: bool },
}

/// How many of the newest bytes of another process's fill a follower holds
/// in memory for its clients (older ones they read from the spool): with
/// them, N clients of a follower cost one read of each spooled byte instead
/// of N, and the holder's commit does not queue behind those reads. (The
/// budget across all the fills a process follows is `flight::Fills`'.)
const FOLLOWED_IN_MEMORY: u64 = 64 * 1024 * 1024;

/// Bytes `range` of a spool, read from its `parts` (in offset order), as
/// `(offset, bytes)` pieces, one per part; `None` if a part is gone (the
/// blob was committed meanwhile) or unreadable.
async fn read_parts<S: Storage>(
    storage: &S,
    parts: &[Spooled],
    range: std::ops::Range<u64>,
) -> Option<Vec<(u64, Bytes)>> {
    let mut pieces = Vec::new();
    for p in parts {
        let (from, to) = (range.start.max(p.offset), range.end.min(p.offset + p.len));
        if from >= to {
            continue;
        }
        let (_, body) = storage
            .get(&p.key, Some(from - p.offset..to - p.offset))
            .await
            .ok()??;
        let bytes = body::collect_limited(S::body_stream(body), (to - from) as usize)
            .await
            .ok()?;
        if bytes.len() as u64 != to - from {
            return None;
        }
        pieces.push((from, bytes));
    }
    let read: u64 = pieces.iter().map(|(_, b)| b.len() as u64).sum();
    (read == range.end - range.start).then_some(pieces)
}

/// How one watch of another process's lease ended.
enum Seen {
    Over(Result<(), FlightError>),
    /// Its holder stopped renewing the lease; this process holds it now.
    TakenOver,
    /// Its holder gave up before a byte arrived.
    Released,
}

impl<S: Storage, H: Host> Watcher<S, H> {
    /// Follow the fill whose `lease` was read as `seen` at `seen_at` (this
    /// process's clock) until it is over, or this process is to fill
    /// instead.
    pub(crate) async fn follow(
        &self,
        lease: &StoredLease<S, H>,
        mut seen: LeaseRecord,
        mut seen_at: u64,
    ) -> Watched {
        // A holder that gives up before its first byte (the upstream said
        // no) releases the lease: ask again, and hear the upstream's answer
        // first hand.
        for _ in 0..3 {
            match self.watch(lease, seen.clone(), seen_at).await {
                Seen::Over(outcome) => return Watched::Over(outcome),
                Seen::TakenOver => return Watched::Lead { coordinated: true },
                Seen::Released => match lease.claim(&self.flight).await {
                    Claimed::Held => {
                        // Committed (and released) between the two looks:
                        // nothing to fill.
                        if let Some(size) = self.stored_here().await {
                            self.flight.update(|s| s.stored(size));
                            lease.release().await;
                            return Watched::Over(Ok(()));
                        }
                        return Watched::Lead { coordinated: true };
                    }
                    Claimed::Uncoordinated => return Watched::Lead { coordinated: false },
                    Claimed::Elsewhere(record) => {
                        seen = record;
                        seen_at = self.host.now_unix_ms();
                    }
                },
            }
        }
        let gave_up = "the fill was given up by one process after another";
        Watched::Over(Err(FlightError::Broken(gave_up.into())))
    }

    /// The blob's size if it is stored and linked into this repository
    /// (committed by a fill for it). Stored for another repository only,
    /// it is not this fill's to serve: the upstream has not said yes here.
    async fn stored_here(&self) -> Option<u64> {
        let link = layout::layer_link(&self.local, &self.digest);
        self.storage.head(&link).await.ok()??;
        let meta = self
            .storage
            .head(&layout::blob(&self.digest))
            .await
            .ok()??;
        Some(meta.size)
    }

    /// Follow another process's fill: its spooled parts become this
    /// flight's, so this process's clients read them as they land. `first`
    /// is the lease as read at `seen_at` (this process's clock).
    async fn watch(&self, lease: &StoredLease<S, H>, first: LeaseRecord, seen_at: u64) -> Seen {
        let mut held = 0;
        let watched = self.watch_spool(lease, first, seen_at, &mut held).await;
        // Clients here read the stored blob from now on (or this process
        // fills afresh, into a tail of its own).
        self.flight.update(|s| s.tail.clear());
        self.fills.release_followed(held);
        watched
    }

    /// [`Self::watch`], counting in `held` the followed bytes it keeps in
    /// memory.
    async fn watch_spool(
        &self,
        lease: &StoredLease<S, H>,
        first: LeaseRecord,
        seen_at: u64,
        held: &mut u64,
    ) -> Seen {
        // (Counted in `fills_followed_elsewhere` by the claim.)
        let mut seen = first;
        let mut seen_at = seen_at;
        let mut pause = 10;
        let mut spool = UploadId::parse(&seen.spool);
        // A lease may be a dead process's (killed, then this one started):
        // its spool is not served until the lease or the spool is seen to
        // change, so clients never start on bytes nobody will finish.
        let mut alive = false;
        let mut listed_first: Option<u64> = None;
        loop {
            if let Some(size) = self.stored_here().await {
                self.flight.update(|s| s.stored(size));
                return Seen::Over(Ok(()));
            }
            let now = self.host.now_unix_ms();
            match lease.read().await {
                Ok(Some(record)) => {
                    if record.spool != seen.spool {
                        // Taken over: the new holder starts from byte 0.
                        self.flight.update(FlightState::restart);
                        // (The restart dropped what was held in memory.)
                        self.fills.release_followed(std::mem::take(held));
                        spool = UploadId::parse(&record.spool);
                        listed_first = None;
                    }
                    if record != seen {
                        seen = record;
                        seen_at = now;
                        alive = true;
                        // Renewed: as alive as a fill that moved bytes, for
                        // requests here that judge it by that.
                        self.flight.moved(now);
                    } else if (now.saturating_sub(seen_at) >= lease.lifetime_ms
                        || now.saturating_sub(seen.renewed_ms) > 3 * lease.lifetime_ms)
                        // Another process may take it first: then follow that one.
                        && lease.take_over(&self.flight, &seen).await
                    {
                        metrics::inc(&self.metrics.fills_taken_over);
                        self.host.warn(&format!(
                            "the fill of {} for {} stopped renewing its lease; taking it over",
                            self.digest, self.local
                        ));
                        self.flight.update(FlightState::restart);
                        return Seen::TakenOver;
                    }
                }
                Ok(None) => {
                    // Released: committed (look again) or given up.
                    if let Some(size) = self.stored_here().await {
                        self.flight.update(|s| s.stored(size));
                        return Seen::Over(Ok(()));
                    }
                    if self.flight.lock().received == 0 {
                        return Seen::Released;
                    }
                    return Seen::Over(Err(FlightError::Broken(
                        "the process filling the blob gave up".into(),
                    )));
                }
                Err(_) => {}
            }
            let moved = match &spool {
                Some(id) if seen.spools => match spooled_parts(&*self.storage, id).await {
                    Ok((parts, contiguous)) => {
                        match listed_first {
                            None => listed_first = Some(contiguous),
                            Some(first) if contiguous > first => {
                                alive = true;
                                seen_at = now;
                            }
                            Some(_) => {}
                        }
                        // Bytes the holder said all hashed right are safe
                        // to serve whether or not it still lives.
                        let whole = seen.verified && seen.size == Some(contiguous);
                        let serve = alive || whole;
                        let had = self.flight.lock().received;
                        let moved = serve && contiguous > had;
                        let from = had.max(contiguous.saturating_sub(FOLLOWED_IN_MEMORY));
                        let newest = if moved && self.fills.hold_followed(contiguous - from) {
                            let read = read_parts(&*self.storage, &parts, from..contiguous).await;
                            match read {
                                Some(_) => *held += contiguous - from,
                                None => self.fills.release_followed(contiguous - from),
                            }
                            read
                        } else {
                            None
                        };
                        let mut dropped = 0;
                        if serve {
                            self.flight.update(|s| {
                                if let Some(pieces) = newest {
                                    s.tail.extend(pieces);
                                    // Oldest out, down to the budget.
                                    let keep_from = contiguous.saturating_sub(FOLLOWED_IN_MEMORY);
                                    s.tail.retain(|(off, b)| {
                                        let keep = off + b.len() as u64 > keep_from;
                                        if !keep {
                                            dropped += b.len() as u64;
                                        }
                                        keep
                                    });
                                }
                                s.started = seen.started;
                                s.size = seen.size;
                                s.received = contiguous;
                                s.spooled = parts;
                                // The holder's bytes all hashed right and all
                                // are listed: they may be read to the end. (An
                                // unknown size waits for the commit.)
                                s.verified = seen.verified
                                    && seen.size.is_some_and(|size| contiguous == size);
                            });
                        }
                        *held -= dropped.min(*held);
                        self.fills.release_followed(dropped);
                        moved
                    }
                    Err(_) => false,
                },
                _ => false,
            };
            if moved {
                self.flight.moved(now);
                pause = 10;
            } else {
                // Without a spool to read, only the blob or the lease can
                // change: look less often.
                pause = (pause * 3 / 2).min(if seen.spools { 250 } else { 1000 });
            }
            self.host.sleep(pause).await;
        }
    }
}
