//! What changed in the cache since the last eviction pass.
//!
//! An eviction pass must not list the whole bucket (it may hold millions of
//! objects) to learn what a few requests changed. So each change is one
//! small object under `cache/changes/`, written where it happens: a
//! mirrored blob filled, a mirrored blob used (sampled, see `Recency`), a
//! blob linked into a hosted repository (never to be evicted). The evictor
//! folds them into its ledger and deletes them: a pass costs what changed.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{layout, Result, Store};
use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage, StorageError};
use crate::model::digest::Digest;

/// One change, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub(crate) enum Change {
    /// A mirrored layer was filled: stored, verified, linked.
    Filled {
        digest: String,
        size: u64,
        at_ms: u64,
    },
    /// A mirrored layer was used (served, or referenced by a pulled
    /// manifest).
    Used { digest: String, at_ms: u64 },
    /// A hosted repository links the blob: it is never evicted. Written
    /// before the link, so that a crash between them keeps a blob too many,
    /// never one too few.
    Kept { digest: String },
}

impl Change {
    pub(crate) fn decode(raw: &[u8]) -> Option<Change> {
        serde_json::from_slice(raw).ok()
    }
}

/// Write `change` for the next eviction pass.
pub(crate) async fn record<S: Storage, H: Host>(
    storage: &S,
    host: &H,
    change: &Change,
) -> std::result::Result<(), StorageError> {
    let mut nonce = [0u8; 8];
    host.fill_random(&mut nonce);
    let key = layout::change(host.now_unix_ms(), &hex::encode(nonce));
    let raw = serde_json::to_vec(change).unwrap_or_default();
    storage
        .put(&key, Bytes::from(raw), PutMode::Overwrite)
        .await
}

impl<S: Storage, H: Host> Store<S, H> {
    /// Write `change` for the next eviction pass, if passes read changes
    /// ([`crate::RegistryConfig::records_changes`]).
    pub(crate) async fn record_change(&self, change: &Change) -> Result<()> {
        if !self.config.records_changes {
            return Ok(());
        }
        Ok(record(&*self.storage, &*self.host, change).await?)
    }

    /// Record that a hosted repository keeps `digest`: call before the
    /// blob is written or linked, so that no eviction pass that reads the
    /// record afterwards deletes it.
    /// It also marks the digest for garbage collection in this process
    /// (see `crate::hosted::gc`): the push about to write or link it wins.
    pub(crate) async fn keep_blob(&self, digest: &Digest) -> Result<()> {
        self.touch_blob(digest).await;
        self.record_change(&Change::Kept {
            digest: digest.to_string(),
        })
        .await
    }
}
