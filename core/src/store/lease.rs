//! Leases in storage: an object taken with a create-only put says which
//! process does a job that only one may do at a time (an eviction pass, a
//! garbage collection, an upstream check of a tag), for every process
//! sharing the storage. No lock is held anywhere else.

use std::sync::Arc;

use bytes::Bytes;

use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage, StorageError};
use crate::model::upload::UploadId;

/// What a create-only put of a lease object found.
pub(crate) enum Taken {
    /// The put succeeded: this process holds the lease.
    Held,
    /// Another process holds it; what it wrote, if it could be read.
    Elsewhere(Option<Bytes>),
    /// Storage cannot take create-only puts (or failed to).
    Uncoordinated,
}

/// Put `record` at `key` unless something is there.
pub(crate) async fn take<S: Storage>(storage: &S, key: &str, record: Bytes) -> Taken {
    match storage.put(key, record, PutMode::Create).await {
        Ok(()) => Taken::Held,
        Err(StorageError::AlreadyExists) => {
            Taken::Elsewhere(storage.read(key).await.ok().flatten())
        }
        Err(_) => Taken::Uncoordinated,
    }
}

/// What a lease that only says who took it and when holds:
/// `"<process> <ms>"` (tag checks, eviction passes).
pub(crate) struct Stamp {
    /// The process (`Store::process`) that took it; empty if unreadable.
    pub(crate) holder: String,
    /// Its clock when it did; 0 if unreadable.
    pub(crate) at_ms: u64,
}

impl Stamp {
    pub(crate) fn encode(holder: &UploadId, at_ms: u64) -> Bytes {
        Bytes::from(format!("{holder} {at_ms}"))
    }

    pub(crate) fn decode(raw: Option<&[u8]>) -> Stamp {
        let parsed = raw
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.trim().split_once(' '))
            .and_then(|(holder, ms)| Some((holder.to_owned(), ms.parse().ok()?)));
        let (holder, at_ms) = parsed.unwrap_or_default();
        Stamp { holder, at_ms }
    }
}

/// Deletes a lease object when dropped, however the work under it ended
/// (its request dropped half way included), on a task of the host's: a
/// drop cannot wait.
pub(crate) struct ReleaseOnDrop<S: Storage, H: Host> {
    pub(crate) storage: Arc<S>,
    pub(crate) host: Arc<H>,
    pub(crate) key: String,
}

impl<S: Storage, H: Host> ReleaseOnDrop<S, H> {
    /// Leave the lease as it is (it is no longer this holder's).
    pub(crate) fn forget(mut self) {
        self.key.clear();
    }

    /// Delete the lease now (the usual end), not on a task later.
    pub(crate) async fn release(mut self) {
        let key = std::mem::take(&mut self.key);
        let _ = self.storage.delete(&key).await;
    }
}

impl<S: Storage, H: Host> Drop for ReleaseOnDrop<S, H> {
    fn drop(&mut self) {
        if self.key.is_empty() {
            return;
        }
        let (storage, key) = (self.storage.clone(), std::mem::take(&mut self.key));
        self.host.spawn(Box::pin(async move {
            let _ = storage.delete(&key).await;
        }));
    }
}
