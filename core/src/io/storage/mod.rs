//! The storage driver interface: a small object store.
//!
//! Keys are `/`-separated strings built by the registry's storage layout
//! (see docs/storage.md); backends treat them as opaque. The registry layout (blobs by digest, repository links,
//! tags, upload sessions) is built above this trait, so every backend has
//! the same semantics, checked by the conformance suite (`conformance`, with
//! the `conformance` feature).

use std::io;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::ErrorSource;
use crate::io::body::ByteStream;
use crate::{MaybeSend, MaybeSync};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod memory;

pub use memory::MemoryStorage;

/// What [`Storage::head`] and [`Storage::get`] tell about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's length in bytes.
    pub size: u64,
}

/// One object of a [`Storage::list_meta`] listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// The object's key.
    pub key: String,
    /// The object's length in bytes.
    pub size: u64,
    /// When the object was last written, ms since the Unix epoch; 0 if the
    /// backend does not know.
    pub modified_ms: u64,
}

/// Whether [`Storage::put`] may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Fail with [`StorageError::AlreadyExists`] if the key exists.
    Create,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The object does not exist (where absence is an error, as for the
    /// source of a [`Storage::rename`]).
    #[error("object not found")]
    NotFound,
    /// A [`PutMode::Create`] put found the key taken.
    #[error("object already exists")]
    AlreadyExists,
    /// The data stream given to a put failed; nothing was written.
    #[error("input stream failed: {0}")]
    Input(io::Error),
    /// An append at an offset other than the object's length.
    #[error("append at offset {offset}, but the object holds {len} bytes")]
    AppendOffset {
        /// Where the append asked to write.
        offset: u64,
        /// The object's length.
        len: u64,
    },
    /// The backend does not offer this operation.
    #[error("storage backend does not support {0}")]
    Unsupported(&'static str),
    /// Any other failure of the backend, with the backend's own error
    /// kept as the source.
    #[error("storage backend: {0}")]
    Backend(#[source] ErrorSource),
}

impl StorageError {
    /// A [`StorageError::Backend`] with `e` as its source (an error, or
    /// a message).
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StorageError::Backend(ErrorSource::new(e))
    }
}

/// A backend's own I/O failure (its file system's, its socket's) is a
/// [`StorageError::Backend`], so a backend can use `?` on it. A failed
/// *input* stream is not: a backend maps that to [`StorageError::Input`]
/// before `?`.
impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        StorageError::backend(e)
    }
}

/// An object store, as much of one as a registry needs.
///
/// Contract (checked by the conformance suite, feature `conformance`):
/// - `put` and `put_stream` are atomic: readers see the old object or the
///   whole new one, never a part. A `put_stream` whose input yields an error
///   leaves no object behind and returns [`StorageError::Input`] with that
///   error, so a verifying input stream ([`crate::model::digest::verify`]) makes
///   the put "verified before visible".
/// - `rename` moves an object atomically where the backend can (local disk);
///   elsewhere it may copy then delete, but the destination still appears
///   whole.
/// - `delete` of a missing key succeeds.
/// - `list` returns every key under a prefix, sorted, at any depth.
/// - Where `can_append` is true, `append` grows an object in place and a
///   `get` of the appended range returns those bytes.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Storage: MaybeSend + MaybeSync + 'static {
    /// The backend's own body for reads, handed to the host's HTTP layer
    /// without passing through the core.
    type Body: MaybeSend + 'static;

    /// The object's metadata, or `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;

    /// Read an object, or `range` of it (already clamped to its size by the
    /// caller). `None` when it does not exist.
    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<(ObjectMeta, Self::Body)>, StorageError>;

    /// Read a small object whole (links, tags, manifests, session state).
    /// The default collects [`Storage::get`]; backends with a cheaper
    /// whole-object read override it.
    async fn read(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let Some((_, body)) = self.get(key, None).await? else {
            return Ok(None);
        };
        let mut stream = Self::body_stream(body);
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            out.extend_from_slice(&chunk.map_err(StorageError::backend)?);
        }
        Ok(Some(out.freeze()))
    }

    /// Write `data` at `key` atomically, as `mode` allows.
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError>;

    /// Write a stream of any length without holding it in memory. Returns
    /// the number of bytes written.
    async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64, StorageError>;

    /// Move `from` to `to`, replacing `to`. The default copies through
    /// [`Storage::put_stream`] (so `to` appears whole) and then deletes
    /// `from`; backends that can move objects override it.
    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let Some((_, body)) = self.get(from, None).await? else {
            return Err(StorageError::NotFound);
        };
        self.put_stream(to, Self::body_stream(body)).await?;
        self.delete(from).await
    }

    /// Whether [`Storage::append`] works. Where it does (local disk,
    /// memory), cache fills stage a blob in one object that a rename turns
    /// into the blob, so every byte is written once. Object stores (S3, R2)
    /// cannot grow objects: the core stages fixed-size parts there and
    /// joins them when the blob is complete.
    fn can_append(&self) -> bool {
        false
    }

    /// Write `parts`, one after another, at `offset` of the object at
    /// `key` (several parts so the bytes need not be gathered into one
    /// buffer first). The object must hold
    /// exactly `offset` bytes ([`StorageError::AppendOffset`] otherwise);
    /// offset 0 creates it. Not atomic: a reader may see any prefix, so
    /// only staging objects are appended to, and their readers read only
    /// what the writer has reported written.
    async fn append(&self, key: &str, offset: u64, parts: Vec<Bytes>) -> Result<(), StorageError> {
        let _ = (key, offset, parts);
        Err(StorageError::Unsupported("append"))
    }

    /// Remove the object at `key`; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// Remove every object at `keys` (missing ones are not errors), as
    /// few requests as the backend allows: garbage collection deletes
    /// thousands. The default deletes one at a time; object stores with a
    /// batch delete (S3's DeleteObjects, R2's) override it.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }

    /// Every key under `prefix`, at any depth, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;

    /// Like [`Storage::list`], with each object's size and last-modified
    /// time (ms since the epoch, 0 if unknown). Backends whose listings
    /// carry sizes override it; the default asks for each object.
    async fn list_meta(&self, prefix: &str) -> Result<Vec<ListEntry>, StorageError> {
        let mut out = Vec::new();
        for key in self.list(prefix).await? {
            if let Some(meta) = self.head(&key).await? {
                out.push(ListEntry {
                    key,
                    size: meta.size,
                    modified_ms: 0,
                });
            }
        }
        Ok(out)
    }

    /// Turn a read body into a byte stream, for the few places the core must
    /// see the bytes (joining upload chunks).
    fn body_stream(body: Self::Body) -> ByteStream;
}

/// A shared backend is a backend: several registries (or a registry and the
/// host's own tooling) can hold one storage.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<S: Storage> Storage for std::sync::Arc<S> {
    type Body = S::Body;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        (**self).head(key).await
    }
    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<(ObjectMeta, Self::Body)>, StorageError> {
        (**self).get(key, range).await
    }
    async fn read(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        (**self).read(key).await
    }
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        (**self).put(key, data, mode).await
    }
    async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64, StorageError> {
        (**self).put_stream(key, data).await
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        (**self).rename(from, to).await
    }
    fn can_append(&self) -> bool {
        (**self).can_append()
    }
    async fn append(&self, key: &str, offset: u64, parts: Vec<Bytes>) -> Result<(), StorageError> {
        (**self).append(key, offset, parts).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        (**self).delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        (**self).delete_many(keys).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        (**self).list(prefix).await
    }
    async fn list_meta(&self, prefix: &str) -> Result<Vec<ListEntry>, StorageError> {
        (**self).list_meta(prefix).await
    }
    fn body_stream(body: Self::Body) -> ByteStream {
        S::body_stream(body)
    }
}
