//! The core's own blob fill, behind `Registry::handle`: the claim's
//! decision carried out as a task of the host's, the upstream's body read
//! into a spool, nothing visible under the digest until its bytes verified.

use std::sync::Arc;

use futures::StreamExt;

use super::claim::{Elsewhere, FillLease, FollowEnd};
use super::flight::FlightError;
use super::spool::{Spool, SpoolTarget};
use super::upstream::Upstream;
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::model::reference::RepositoryName;
use crate::store::layout;
use crate::wire::{self};

/// The core's own run of a fill, for hosts that leave moving the bytes to
/// it (`Registry::handle`): it carries out what `claim_fill` decided, as a
/// task of the host's. The lead reads the upstream's body into a
/// [`Spool`]; the first request of a process that finds another process
/// filling follows that fill's spool (and takes the fill over if it dies).
/// Which blob, for which repository, is the lease's.
pub(super) struct Fill<S, F, H> {
    pub(super) storage: Arc<S>,
    pub(super) upstream: Arc<Upstream<F, H>>,
    /// The repository as the upstream names it.
    pub(super) remote: RepositoryName,
    /// Record the fill for eviction passes (`RegistryConfig::records_changes`).
    pub(super) records_changes: bool,
}

impl<S: Storage, F: Fetch, H: Host> Fill<S, F, H> {
    /// Fill under `lease`, then settle it.
    pub(super) async fn lead(self, lease: FillLease<S, H>) {
        let outcome = lease.hold(self.fill(&lease)).await;
        // Tidy up before anyone hears how the fill ended: a client that saw
        // it fail finds nothing of it left. (Clients still reading spooled
        // chunks wait for the outcome, then read the stored blob.)
        if let Ok(keys) = self.storage.list(&layout::upload_dir(&lease.spool)).await {
            for k in keys {
                let _ = self.storage.delete(&k).await;
            }
        }
        lease.settle_flight(outcome).await;
    }

    /// Follow another process's fill: its spool feeds this process's
    /// clients. If its holder dies, or gives up before its first byte,
    /// this process fills instead.
    pub(super) async fn follow(self, e: Elsewhere<S, H>) {
        match e.follow().await {
            FollowEnd::Over { outcome, here } => here.settle_flight(outcome).await,
            FollowEnd::Lead(lease) => self.lead(lease).await,
        }
    }

    /// Fill from the upstream into this process's spool, telling followers
    /// elsewhere (through `lease`) when the upstream answered and when
    /// every byte hashed right.
    async fn fill(&self, lease: &FillLease<S, H>) -> Result<(), FlightError> {
        let (local, digest) = &lease.key;
        let resp = self
            .upstream
            .blob(&self.remote, &digest.to_string(), None)
            .await
            .map_err(FlightError::Upstream)?;
        let size = wire::header(resp.headers(), "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let target = SpoolTarget {
            storage: self.storage.clone(),
            host: lease.host.clone(),
            local: local.clone(),
            digest: digest.clone(),
            id: lease.spool.clone(),
            flight: lease.flight.clone(),
            metrics: lease.metrics.clone(),
            records_changes: self.records_changes,
            source: format!("upstream {}", self.upstream.config.name),
        };
        let mut spool = Spool::begin(target, size).await?;
        // Followers elsewhere answer their clients, from the spool, from
        // here on.
        lease.spooling();
        lease.renew_now().await;
        let mut body = F::body_stream(resp.into_body());
        while let Some(item) = body.next().await {
            let chunk = item.map_err(|e| spool.body_failed(&e))?;
            spool.write(chunk).await?;
        }
        spool.verify().await?;
        // Joining parts into the blob can take a while on S3: followers
        // elsewhere may serve the last byte meanwhile.
        lease.renew_now().await;
        spool.commit().await
    }
}
