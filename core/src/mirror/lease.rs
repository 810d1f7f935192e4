//! Who fills a blob when several processes share one storage: a lease
//! object, taken with a create-only put, renewed while its holder fills,
//! deleted when the fill is over.
//!
//! Storage is the only coordinator. A process whose request misses first
//! takes the lease for (repository, digest) and fills as it would alone;
//! its spool (the upload-area objects the fill writes as bytes arrive) is
//! named in the lease, so a process that finds the lease taken follows the
//! fill from those objects as they land instead of asking the upstream
//! again. A holder that stops renewing (killed, or cut off from storage)
//! is taken over once the lease has not changed for its lifetime.
//!
//! Lifetimes are judged by what a watcher saw change on its own clock, not
//! by the holder's timestamps, so clocks of different machines need not
//! agree.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage, StorageError};
use crate::model::digest::Digest;
use crate::model::reference::RepositoryName;
use crate::model::upload::UploadId;
use crate::store::layout;

use super::flight::{BlobFlight, Spooled};
pub(crate) use crate::store::lease::{take, ReleaseOnDrop, Stamp, Taken};

/// What a lease object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    /// The holder's spool: where its bytes land.
    pub(crate) spool: String,
    /// The upstream answered: followers may answer their clients.
    #[serde(default)]
    pub(crate) started: bool,
    /// The blob's size, when the upstream said.
    #[serde(default)]
    pub(crate) size: Option<u64>,
    /// Every byte is spooled and hashed to the digest (the commit may still
    /// be under way).
    #[serde(default)]
    pub(crate) verified: bool,
    /// The holder writes its bytes to the spool (the core moves them). A
    /// holder that stores them itself (a Worker) does not: its followers
    /// have no spool to read, and do not list one. (Records of versions
    /// that did not say came from spooling holders.)
    #[serde(default = "spools_unless_said")]
    pub(crate) spools: bool,
    /// The holder's clock at the last renewal. Only its changing matters.
    pub(crate) renewed_ms: u64,
}

fn spools_unless_said() -> bool {
    true
}

impl LeaseRecord {
    fn decode(raw: &[u8]) -> Option<LeaseRecord> {
        serde_json::from_slice(raw).ok()
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// What [`StoredLease::claim`] found.
pub(crate) enum Claimed {
    /// This process holds the lease: it fills.
    Held,
    /// Another process holds it.
    Elsewhere(LeaseRecord),
    /// Storage cannot take create-only puts (or failed to): fill without a
    /// lease, as a process alone on its storage does.
    Uncoordinated,
}

/// The lease object of one fill, seen from one process.
pub(crate) struct StoredLease<S, H> {
    pub(crate) storage: Arc<S>,
    pub(crate) host: Arc<H>,
    pub(crate) key: String,
    /// This process's spool, named in the lease while it holds it.
    pub(crate) spool: UploadId,
    /// How long a lease may stay unchanged before it is taken over.
    pub(crate) lifetime_ms: u64,
    /// This process's fill writes to its spool (see [`LeaseRecord::spools`]).
    pub(crate) spooling: std::sync::atomic::AtomicBool,
}

impl<S: Storage, H: Host> StoredLease<S, H> {
    pub(crate) fn new(
        storage: Arc<S>,
        host: Arc<H>,
        local: &RepositoryName,
        digest: &Digest,
        spool: UploadId,
        lifetime_ms: u64,
    ) -> Self {
        StoredLease {
            storage,
            host,
            key: layout::fill_lease(local, digest),
            spool,
            lifetime_ms,
            spooling: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn record(&self, flight: &BlobFlight) -> LeaseRecord {
        let s = flight.lock();
        LeaseRecord {
            spool: self.spool.to_string(),
            started: s.started,
            size: s.size,
            verified: s.hashed,
            spools: self.spooling.load(std::sync::atomic::Ordering::Relaxed),
            renewed_ms: self.host.now_unix_ms(),
        }
    }

    /// Take the lease if nobody holds it.
    pub(crate) async fn claim(&self, flight: &BlobFlight) -> Claimed {
        match take(&*self.storage, &self.key, self.record(flight).encode()).await {
            Taken::Held => Claimed::Held,
            Taken::Uncoordinated => Claimed::Uncoordinated,
            // Unreadable, or released between the put and the read: an
            // empty record, which the caller reads as released.
            Taken::Elsewhere(raw) => {
                Claimed::Elsewhere(raw.as_deref().and_then(LeaseRecord::decode).unwrap_or(
                    LeaseRecord {
                        spool: String::new(),
                        started: false,
                        size: None,
                        verified: false,
                        spools: false,
                        renewed_ms: 0,
                    },
                ))
            }
        }
    }

    pub(crate) async fn read(&self) -> Result<Option<LeaseRecord>, StorageError> {
        Ok(self
            .storage
            .read(&self.key)
            .await?
            .as_deref()
            .and_then(LeaseRecord::decode))
    }

    /// Write the holder's progress into the lease (which renews it), unless
    /// another process has taken it over. Returns whether this process
    /// still holds it.
    pub(crate) async fn renew(&self, flight: &BlobFlight) -> bool {
        match self.read().await {
            Ok(Some(r)) if r.spool != self.spool.as_str() => return false,
            Ok(None) => return false,
            _ => {}
        }
        let _ = self
            .storage
            .put(&self.key, self.record(flight).encode(), PutMode::Overwrite)
            .await;
        true
    }

    /// Mark this process's spool as live, so that no process's janitor
    /// takes it for a dead one's.
    pub(crate) async fn touch_spool(&self) {
        let state = layout::upload_state(&self.spool);
        if let Ok(Some(raw)) = self.storage.read(&state).await {
            if let Some(mut s) = crate::model::upload::UploadState::decode(&raw) {
                s.updated_ms = self.host.now_unix_ms();
                let _ = self
                    .storage
                    .put(&state, s.encode(), PutMode::Overwrite)
                    .await;
            }
        }
    }

    /// The fill is over: the lease goes (after the blob was committed, so a
    /// watcher that finds no lease and no blob knows the fill failed).
    pub(crate) async fn release(&self) {
        if let Ok(Some(r)) = self.read().await {
            if r.spool == self.spool.as_str() {
                let _ = self.storage.delete(&self.key).await;
            }
        }
    }

    /// Delete a lease nobody renews (still as it was `seen`) and take it.
    /// `false` if another process took it first.
    pub(crate) async fn take_over(&self, flight: &BlobFlight, seen: &LeaseRecord) -> bool {
        // Unless another watcher took it over meanwhile: its fresh lease is
        // not ours to delete.
        match self.read().await {
            Ok(Some(now)) if now != *seen => return false,
            _ => {}
        }
        let _ = self.storage.delete(&self.key).await;
        matches!(self.claim(flight).await, Claimed::Held)
    }
}

/// The spooled parts of another process's fill, in offset order, and how
/// many bytes from offset 0 they hold without a gap.
pub(crate) async fn spooled_parts<S: Storage>(
    storage: &S,
    spool: &UploadId,
) -> Result<(Vec<Spooled>, u64), StorageError> {
    let mut parts: Vec<Spooled> = storage
        .list_meta(&layout::upload_dir(spool))
        .await?
        .into_iter()
        .filter_map(|e| {
            let offset = layout::spool_part_offset(&e.key)?;
            Some(Spooled {
                offset,
                len: e.size,
                key: e.key,
            })
        })
        .filter(|p| p.len > 0)
        .collect();
    parts.sort_by_key(|p| p.offset);
    let mut contiguous = 0;
    for p in &parts {
        if p.offset > contiguous {
            break;
        }
        contiguous = contiguous.max(p.offset + p.len);
    }
    Ok((parts, contiguous))
}
