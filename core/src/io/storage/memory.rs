//! In-memory storage for tests and ephemeral use.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{ListEntry, ObjectMeta, PutMode, Storage, StorageError};
use crate::io::body::{self, ByteStream};

/// The clock of [`MemoryStorage::with_clock`]: milliseconds since the epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A [`Storage`] in a map in memory: gone with the process. Appends work.
/// Listings know when an object was written only when the store was made
/// [`with_clock`](MemoryStorage::with_clock).
#[derive(Default)]
pub struct MemoryStorage {
    objects: Mutex<BTreeMap<String, Bytes>>,
    clock: Option<Clock>,
    /// When each object was last written, by `clock`.
    written: Mutex<BTreeMap<String, u64>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose listings carry write times read from `clock`
    /// (a test's clock, so that it can age objects).
    pub fn with_clock(clock: Clock) -> Self {
        MemoryStorage {
            clock: Some(clock),
            ..Self::default()
        }
    }

    fn stamp(&self, key: &str) {
        if let Some(clock) = &self.clock {
            let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            written.insert(key.to_owned(), clock());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every critical section is a single insert/remove), so poisoning
        // is safe to ignore.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Total bytes stored.
    pub fn total_size(&self) -> u64 {
        self.lock().values().map(|b| b.len() as u64).sum()
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl Storage for MemoryStorage {
    type Body = ByteStream;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        Ok(self.lock().get(key).map(|b| ObjectMeta {
            size: b.len() as u64,
        }))
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<(ObjectMeta, ByteStream)>, StorageError> {
        let Some(data) = self.lock().get(key).cloned() else {
            return Ok(None);
        };
        let meta = ObjectMeta {
            size: data.len() as u64,
        };
        let slice = match range {
            Some(r) => {
                let end = r.end.min(meta.size) as usize;
                let start = (r.start as usize).min(end);
                data.slice(start..end)
            }
            None => data,
        };
        Ok(Some((meta, body::once(slice))))
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        Ok(self.lock().get(key).cloned())
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        let mut map = self.lock();
        if mode == PutMode::Create && map.contains_key(key) {
            return Err(StorageError::AlreadyExists);
        }
        map.insert(key.to_owned(), data);
        drop(map);
        self.stamp(key);
        Ok(())
    }

    async fn put_stream(&self, key: &str, mut data: ByteStream) -> Result<u64, StorageError> {
        let mut buf = BytesMut::new();
        while let Some(chunk) = data.next().await {
            buf.extend_from_slice(&chunk.map_err(StorageError::Input)?);
        }
        let n = buf.len() as u64;
        self.lock().insert(key.to_owned(), buf.freeze());
        self.stamp(key);
        Ok(n)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let mut map = self.lock();
        let data = map.remove(from).ok_or(StorageError::NotFound)?;
        map.insert(to.to_owned(), data);
        drop(map);
        self.stamp(to);
        Ok(())
    }

    fn can_append(&self) -> bool {
        true
    }

    async fn append(&self, key: &str, offset: u64, parts: Vec<Bytes>) -> Result<(), StorageError> {
        let mut map = self.lock();
        let current = map.remove(key).unwrap_or_default();
        let len = current.len() as u64;
        if len != offset {
            map.insert(key.to_owned(), current);
            return Err(StorageError::AppendOffset { offset, len });
        }
        let added: usize = parts.iter().map(Bytes::len).sum();
        // Grow in place unless a reader still holds the old bytes.
        let mut grown = current.try_into_mut().unwrap_or_else(|shared| {
            let mut b = BytesMut::with_capacity((shared.len() + added) * 2);
            b.extend_from_slice(&shared);
            b
        });
        for p in &parts {
            grown.extend_from_slice(p);
        }
        map.insert(key.to_owned(), grown.freeze());
        drop(map);
        self.stamp(key);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.lock().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .lock()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn list_meta(&self, prefix: &str) -> Result<Vec<ListEntry>, StorageError> {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self
            .lock()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ListEntry {
                key: k.clone(),
                size: v.len() as u64,
                modified_ms: written.get(k).copied().unwrap_or(0),
            })
            .collect())
    }

    fn body_stream(body: ByteStream) -> ByteStream {
        body
    }
}

#[cfg(test)]
mod tests {
    // On wasm32, `#[test]` is wasm-bindgen-test's (run in Node by
    // wasm-bindgen-test-runner); natively it is the built-in one.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::{ObjectMeta, PutMode, Storage, StorageError};
    use super::MemoryStorage;
    use crate::io::body::ByteStream;
    use bytes::Bytes;

    #[test]
    fn conformance() {
        futures::executor::block_on(super::super::conformance::run(&MemoryStorage::new()));
    }

    /// A backend that implements only what the trait requires: the default
    /// `read`, `rename`, `list_meta` and `append` must keep the contract.
    struct Minimal(MemoryStorage);

    #[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
    #[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
    impl Storage for Minimal {
        type Body = ByteStream;
        async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
            self.0.head(key).await
        }
        async fn get(
            &self,
            key: &str,
            range: Option<std::ops::Range<u64>>,
        ) -> Result<Option<(ObjectMeta, ByteStream)>, StorageError> {
            self.0.get(key, range).await
        }
        async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
            self.0.put(key, data, mode).await
        }
        async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64, StorageError> {
            self.0.put_stream(key, data).await
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.0.delete(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
            self.0.list(prefix).await
        }
        fn body_stream(body: ByteStream) -> ByteStream {
            body
        }
    }

    #[test]
    fn default_methods_keep_the_contract() {
        futures::executor::block_on(super::super::conformance::run(&Minimal(
            MemoryStorage::new(),
        )));
    }
}
