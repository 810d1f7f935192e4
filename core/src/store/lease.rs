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

/// How many times [`take`] tries again when the lease it found taken was
/// gone by the time it read it.
const TAKE_ATTEMPTS: usize = 4;

/// Put `record` at `key` unless something is there.
pub(crate) async fn take<S: Storage>(storage: &S, key: &str, record: Bytes) -> Taken {
    for _ in 0..TAKE_ATTEMPTS {
        match storage.put(key, record.clone(), PutMode::Create).await {
            Ok(()) => return Taken::Held,
            Err(StorageError::AlreadyExists) => match storage.read(key).await {
                Ok(Some(held)) => return Taken::Elsewhere(Some(held)),
                // Released between the put and the read. Callers take an
                // unreadable lease for a dead holder's and break it, which
                // here would break the lease of whoever took it since:
                // try to take it again instead.
                Ok(None) => continue,
                Err(_) => return Taken::Elsewhere(None),
            },
            Err(_) => return Taken::Uncoordinated,
        }
    }
    Taken::Elsewhere(None)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::storage::memory::MemoryStorage;
    use crate::io::storage::{ListEntry, ObjectMeta};
    use crate::ByteStream;
    use std::ops::Range;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A storage whose lease holder releases its lease right after the
    /// first create-only put finds it taken (before the read of it).
    struct ReleasedMeanwhile {
        inner: MemoryStorage,
        released: AtomicBool,
    }

    #[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
    #[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
    impl Storage for ReleasedMeanwhile {
        type Body = <MemoryStorage as Storage>::Body;

        async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
            self.inner.head(key).await
        }
        async fn get(
            &self,
            key: &str,
            range: Option<Range<u64>>,
        ) -> Result<Option<(ObjectMeta, Self::Body)>, StorageError> {
            self.inner.get(key, range).await
        }
        async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
            let r = self.inner.put(key, data, mode).await;
            if matches!(r, Err(StorageError::AlreadyExists))
                && !self.released.swap(true, Ordering::SeqCst)
            {
                self.inner.delete(key).await?;
            }
            r
        }
        async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64, StorageError> {
            self.inner.put_stream(key, data).await
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.inner.delete(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
            self.inner.list(prefix).await
        }
        async fn list_meta(&self, prefix: &str) -> Result<Vec<ListEntry>, StorageError> {
            self.inner.list_meta(prefix).await
        }
        fn body_stream(body: Self::Body) -> ByteStream {
            MemoryStorage::body_stream(body)
        }
    }

    /// A lease released between a failed take and the read of it is taken,
    /// not reported as an unreadable one (which callers break as a dead
    /// holder's, breaking whoever took it since: two tag checks, or two
    /// collectors, at once).
    #[test]
    fn a_lease_released_while_being_taken_is_taken() {
        futures::executor::block_on(async {
            let storage = ReleasedMeanwhile {
                inner: MemoryStorage::new(),
                released: AtomicBool::new(false),
            };
            let key = "leases/check";
            storage
                .put(key, Bytes::from_static(b"other 1"), PutMode::Create)
                .await
                .unwrap();
            let taken = take(&storage, key, Bytes::from_static(b"me 2")).await;
            assert!(
                matches!(taken, Taken::Held),
                "the released lease was not taken"
            );
            assert_eq!(storage.read(key).await.unwrap().unwrap(), &b"me 2"[..]);
            // Held by a live holder: reported with its record.
            let taken = take(&storage, key, Bytes::from_static(b"third 3")).await;
            assert!(matches!(taken, Taken::Elsewhere(Some(b)) if b == b"me 2"[..]));
        });
    }
}
