//! Who fills a missing blob, for every host: the one claim behind `handle`
//! and `handle_edge` alike.
//!
//! [`crate::Registry::claim_fill`] decides whether a request fills a blob
//! ([`FillClaim::Lead`], with a [`FillLease`] to hold while filling and to
//! settle at the end) or follows the request that does
//! ([`FillClaim::Follow`]): first in this process (an in-memory map,
//! `flight::Fills`), then among the processes sharing the storage (a lease
//! object, `lease`). A follower of another process's fill watches it
//! (`watch`) and leads instead if that process dies. Who carries a
//! decision out depends on the host: the core's fill task (`fill::Fill`,
//! behind `handle`) or the host itself (`edge`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{ErrorCode, RegistryError};
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::metrics::{self, Metrics};
use crate::mirror::Mirror;
use crate::model::digest::Digest;
use crate::model::reference::RepositoryName;
use crate::model::upload::UploadId;
use crate::store::layout;

use super::flight::{BlobFlight, Claim, Fills, FlightError};
use super::lease::{Claimed, LeaseRecord, StoredLease};
use super::watch::{Watched, Watcher};

/// What [`crate::Registry::claim_fill`] decided: one request per
/// (repository, digest) fills, the others follow it. Processes sharing the
/// storage (instances on one bucket, Worker isolates on one R2 bucket) take
/// part too, through a lease object in storage (see `lease`).
pub enum FillClaim<S: Storage, H: Host> {
    /// Nobody is filling the blob: this request fills it (inside
    /// [`FillLease::hold`]) and settles the lease (dropping the lease
    /// unsettled fails the fill).
    Lead(FillLease<S, H>),
    /// Another request, here or in another process, is filling it: wait
    /// with [`crate::Registry::follow_fill`], then look again.
    Follow(FillFollower<S, H>),
}

/// The right, and the duty, to fill one blob.
pub struct FillLease<S: Storage, H: Host> {
    pub(crate) fills: Arc<Fills>,
    pub(crate) key: (RepositoryName, Digest),
    pub(crate) flight: Arc<BlobFlight>,
    pub(crate) host: Arc<H>,
    pub(crate) metrics: Arc<Metrics>,
    settled: AtomicBool,
    /// This process's name for the fill: in the lease in storage, and the
    /// upload session a spooling fill writes to.
    pub(crate) spool: UploadId,
    /// The lease in storage, when the storage takes create-only puts.
    pub(crate) stored: Option<Arc<StoredLease<S, H>>>,
    /// Held only to wait for another process's fill (`Elsewhere`): whatever
    /// ends the wait, requests here look again.
    pub(crate) waits_elsewhere: bool,
}

impl<S: Storage, H: Host> FillLease<S, H> {
    /// Bytes moved: followers tell a slow fill from an abandoned one by
    /// when this was last called.
    pub fn progress(&self) {
        self.flight.moved(self.host.now_unix_ms());
    }

    /// Run the host's fill (its upstream read, storage write and commit),
    /// renewing the lease in storage meanwhile, so that other processes go
    /// on waiting for it instead of taking it over. The renewals run in
    /// this future, on the host's timer: no task of their own.
    pub async fn hold<T>(&self, fill: impl std::future::Future<Output = T>) -> T {
        let Some(stored) = &self.stored else {
            return fill.await;
        };
        let renewing = async {
            let every = (stored.lifetime_ms / 4).max(1);
            let mut lost = false;
            loop {
                self.host.sleep(every).await;
                // This process is alive as long as the fill runs: its
                // spool must outlive every janitor, whatever the lease.
                if stored.spooling.load(Ordering::Relaxed) {
                    stored.touch_spool().await;
                }
                // A fill that moves no bytes (its upstream stalled) does
                // not renew, so that other processes take it over instead of
                // waiting on it as long as its client stays. Once every
                // byte hashed, the commit (joining parts on S3 can take
                // minutes) counts as progress.
                let idle = if self.flight.lock().hashed {
                    0
                } else {
                    self.host
                        .now_unix_ms()
                        .saturating_sub(self.flight.moved_ms())
                };
                if lost || idle > STALLED_FILL_MS {
                    continue;
                }
                // Taken over (this fill was slow to be seen): go on, the
                // blob is verified either way, but renew no more.
                lost = !stored.renew(&self.flight).await;
            }
        };
        futures::pin_mut!(fill, renewing);
        match futures::future::select(fill, renewing).await {
            futures::future::Either::Left((done, _)) => done,
            futures::future::Either::Right(((), fill)) => fill.await,
        }
    }

    /// The fill is over: `Ok` once the blob is stored and committed
    /// ([`crate::Registry::commit_blob`]), else why not. The lease in
    /// storage goes first, then followers here learn the outcome; later
    /// requests find the blob, or start a fresh fill. Only the first call
    /// counts.
    pub async fn settle(&self, outcome: Result<(), String>) {
        self.settle_flight(outcome.map_err(FlightError::Broken))
            .await
    }

    /// [`Self::settle`], keeping an upstream's answer as it was.
    pub(crate) async fn settle_flight(&self, outcome: Result<(), FlightError>) {
        if self.settled.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(stored) = &self.stored {
            stored.release().await;
        }
        self.settle_here(outcome);
    }

    /// The fill's bytes go to this process's spool (the core moves them):
    /// followers elsewhere may read it, and renewals keep its session
    /// fresh for the janitor.
    pub(crate) fn spooling(&self) {
        if let Some(stored) = &self.stored {
            stored.spooling.store(true, Ordering::Relaxed);
        }
    }

    /// Write the fill's progress into the lease in storage now (not at the
    /// next renewal): followers elsewhere see the upstream's answer, or the
    /// last byte hashed, without waiting.
    pub(crate) async fn renew_now(&self) {
        if let Some(stored) = &self.stored {
            stored.renew(&self.flight).await;
        }
    }

    fn settle_here(&self, outcome: Result<(), FlightError>) {
        if let Err(e) = &outcome {
            metrics::inc(&self.metrics.fills_failed);
            self.host.warn(&format!(
                "fill of {} for {} failed: {e}",
                self.key.1, self.key.0
            ));
        }
        self.fills.settle(&self.key, &self.flight, outcome);
    }

    /// Settled as "look again" (not a failure): the blob is stored, or the
    /// fill this request waited for elsewhere is over or taken over.
    fn look_again(&self) {
        if !self.settled.swap(true, Ordering::SeqCst) {
            self.fills.settle(&self.key, &self.flight, Ok(()));
        }
    }
}

impl<S: Storage, H: Host> Drop for FillLease<S, H> {
    fn drop(&mut self) {
        if self.waits_elsewhere {
            // The waiting request went away; the fill elsewhere goes on.
            self.look_again();
            return;
        }
        if self.settled.swap(true, Ordering::SeqCst) {
            return;
        }
        // The request that held it went away (its client left before the
        // fill was handed to a task that outlives it). The lease in
        // storage is deleted on a task; if that never runs, it expires.
        if let Some(stored) = self.stored.take() {
            self.host
                .spawn(Box::pin(async move { stored.release().await }));
        }
        self.settle_here(Err(FlightError::Broken(
            "the filling request went away".into(),
        )));
    }
}

/// How a wait with [`crate::Registry::follow_fill`] ended.
pub enum Followed<S: Storage, H: Host> {
    /// The fill is over (or was abandoned): look again, from
    /// [`crate::Registry::handle_edge`]. The blob is stored, or a new
    /// claim starts a fresh fill.
    LookAgain,
    /// The process that filled went away: this request took its lease and
    /// fills now, as after [`FillClaim::Lead`].
    Lead(FillLease<S, H>),
}

impl<S: Storage, H: Host> std::fmt::Debug for Followed<S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Followed::LookAgain => f.write_str("LookAgain"),
            Followed::Lead(_) => f.write_str("Lead(..)"),
        }
    }
}

/// A wait for another request's fill.
pub struct FillFollower<S: Storage, H: Host> {
    fills: Arc<Fills>,
    key: (RepositoryName, Digest),
    pub(crate) flight: Arc<BlobFlight>,
    /// The fill is another process's: this request leads the wait here
    /// (its in-memory fill, which requests of this process follow) and
    /// watches the lease in storage.
    pub(crate) elsewhere: Option<Elsewhere<S, H>>,
}

pub(crate) struct Elsewhere<S: Storage, H: Host> {
    /// This process's side of the fill: settled when the watch ends, or
    /// made the lead when this process takes the fill over.
    pub(crate) here: FillLease<S, H>,
    pub(crate) lease: Arc<StoredLease<S, H>>,
    /// The lease as last read, and when (this process's clock).
    pub(crate) seen: LeaseRecord,
    pub(crate) seen_at: u64,
}

/// How a wait for another process's fill ended.
pub(crate) enum FollowEnd<S: Storage, H: Host> {
    /// The fill is over (the blob stored, or failed): `here` is settled
    /// with the outcome by the caller.
    Over {
        outcome: Result<(), FlightError>,
        here: FillLease<S, H>,
    },
    /// This process is to fill now.
    Lead(FillLease<S, H>),
}

impl<S: Storage, H: Host> Elsewhere<S, H> {
    /// Follow the fill until it is over, or the wait becomes this
    /// process's fill (its holder died, or gave up).
    pub(crate) async fn follow(self) -> FollowEnd<S, H> {
        let here = &self.here;
        let watcher = Watcher {
            storage: self.lease.storage.clone(),
            host: here.host.clone(),
            local: here.key.0.clone(),
            digest: here.key.1.clone(),
            flight: here.flight.clone(),
            fills: here.fills.clone(),
            metrics: here.metrics.clone(),
        };
        let watched = watcher
            .follow(&self.lease, self.seen.clone(), self.seen_at)
            .await;
        match watched {
            Watched::Over(outcome) => FollowEnd::Over {
                outcome,
                here: self.here,
            },
            Watched::Lead { coordinated } => {
                let mut here = self.here;
                here.waits_elsewhere = false;
                here.stored = coordinated.then_some(self.lease);
                FollowEnd::Lead(here)
            }
        }
    }
}

/// How long a fill may move no bytes before its followers take it as
/// abandoned (its filler was killed) and one of them starts afresh.
pub(crate) const STALLED_FILL_MS: u64 = 60_000;

impl<S: Storage, H: Host, F: Fetch> Mirror<'_, S, H, F> {
    /// Who fills `digest` for the repository `local` (as stored here).
    pub(crate) async fn claim_fill(
        &self,
        local: &RepositoryName,
        digest: &Digest,
    ) -> FillClaim<S, H> {
        let key = (local.clone(), digest.clone());
        let fills = &self.mirrors.fills;
        let flight = match fills.claim(key.clone(), self.store.host.now_unix_ms()) {
            Claim::Lead(flight) => flight,
            Claim::Follow(flight) => {
                metrics::inc(&self.store.metrics.singleflight_joins);
                return FillClaim::Follow(FillFollower {
                    fills: fills.clone(),
                    key,
                    flight,
                    elsewhere: None,
                });
            }
        };
        // The holder's name in the lease, and its spool if the core moves
        // the bytes (a host that stores them itself has no spool to follow,
        // only the lease to watch).
        let mut raw = [0u8; 16];
        self.store.host.fill_random(&mut raw);
        let spool = UploadId::from_random(raw);
        let mut here = FillLease {
            fills: fills.clone(),
            key,
            flight,
            host: self.store.host.clone(),
            metrics: self.store.metrics.clone(),
            settled: AtomicBool::new(false),
            spool: spool.clone(),
            stored: None,
            waits_elsewhere: false,
        };
        let stored = Arc::new(StoredLease::new(
            self.store.storage.clone(),
            self.store.host.clone(),
            local,
            digest,
            spool,
            self.store.config.fill_lease_ms,
        ));
        // Held from before the put: if this request goes away while the put
        // is under way, the drop releases whatever of it landed (a release
        // deletes only a lease naming this process).
        here.stored = Some(stored.clone());
        match stored.claim(&here.flight).await {
            Claimed::Uncoordinated => {
                here.stored = None;
                FillClaim::Lead(here)
            }
            Claimed::Held => {
                // Committed (and its lease released) elsewhere since this
                // request found it missing: look again.
                if let Ok(Some(_)) = self.store.storage.head(&layout::blob(digest)).await {
                    here.settle(Ok(())).await;
                    return FillClaim::Follow(FillFollower {
                        fills: here.fills.clone(),
                        key: here.key.clone(),
                        flight: here.flight.clone(),
                        elsewhere: None,
                    });
                }
                FillClaim::Lead(here)
            }
            Claimed::Elsewhere(seen) => {
                here.stored = None;
                metrics::inc(&self.store.metrics.fills_followed_elsewhere);
                here.progress();
                here.waits_elsewhere = true;
                FillClaim::Follow(FillFollower {
                    fills: here.fills.clone(),
                    key: here.key.clone(),
                    flight: here.flight.clone(),
                    elsewhere: Some(Elsewhere {
                        seen_at: here.host.now_unix_ms(),
                        here,
                        lease: stored,
                        seen,
                    }),
                })
            }
        }
    }

    /// Wait for the fill with the host's timer, polling: a request must not
    /// be woken from another request's context (a Worker forbids it). For
    /// another process's fill, poll storage until it is over (the requests
    /// of this process waiting with this one then look again) or this
    /// process is to fill instead (its holder died, or gave up).
    pub(crate) async fn follow_fill(
        &self,
        f: FillFollower<S, H>,
    ) -> Result<Followed<S, H>, RegistryError> {
        if let Some(elsewhere) = f.elsewhere {
            return Ok(match elsewhere.follow().await {
                FollowEnd::Over { here, .. } => {
                    here.look_again();
                    Followed::LookAgain
                }
                FollowEnd::Lead(lease) => Followed::Lead(lease),
            });
        }
        let mut pause = 20;
        loop {
            match f.flight.outcome() {
                Some(Ok(())) => return Ok(Followed::LookAgain),
                Some(Err(e)) => {
                    return Err(RegistryError::new(
                        ErrorCode::Unavailable,
                        format!("upstream fill failed: {e}"),
                    ))
                }
                None => {}
            }
            let now = self.store.host.now_unix_ms();
            if now.saturating_sub(f.flight.moved_ms()) > STALLED_FILL_MS {
                f.fills.settle(
                    &f.key,
                    &f.flight,
                    Err(FlightError::Broken("the filling request went away".into())),
                );
                return Ok(Followed::LookAgain);
            }
            self.store.host.sleep(pause).await;
            pause = (pause * 3 / 2).min(1000);
        }
    }
}
