//! A fill's bytes on their way into storage, for hosts whose storage cannot
//! check a digest itself: hashed as they arrive, spooled into the upload
//! area, offered to the fill's followers, and moved under the digest only
//! once every byte verified.
//!
//! Whoever reads the upstream's body (the core's own fill task today)
//! hands each chunk to [`Spool::write`], then calls [`Spool::verify`] and
//! [`Spool::commit`]; the spool decides where bytes go and when a follower
//! may read them.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::flight::{BlobFlight, Spooled};
use super::{APPEND_CHUNK, SPOOL_CHUNK};
use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage, StorageError};
use crate::metrics::{self, Metrics};
use crate::model::digest::{self, Digest, Hasher};
use crate::model::reference::RepositoryName;
use crate::model::upload::{UploadId, UploadState};
use crate::store::changes::{self, Change};
use crate::store::{join_objects, layout};

use super::flight::FlightError;

/// Where a spool writes, and who hears of it.
pub(crate) struct SpoolTarget<S, H> {
    pub(crate) storage: Arc<S>,
    pub(crate) host: Arc<H>,
    /// The repository as stored here, linked to the blob on commit.
    pub(crate) local: RepositoryName,
    pub(crate) digest: Digest,
    /// The upload-area session the chunks go to.
    pub(crate) id: UploadId,
    pub(crate) flight: Arc<BlobFlight>,
    pub(crate) metrics: Arc<Metrics>,
    /// Record the fill for eviction passes (`RegistryConfig::records_changes`).
    pub(crate) records_changes: bool,
    /// Names the source in errors (`upstream docker.io`).
    pub(crate) source: String,
}

/// One fill's bytes between the upstream and the stored blob.
pub(crate) struct Spool<S, H> {
    to: SpoolTarget<S, H>,
    /// The upstream's `Content-Length`, if it sent one.
    size: Option<u64>,
    hasher: Hasher,
    received: u64,
    unspooled: usize,
    chunks: usize,
    /// Bytes gathered before a write to storage.
    unit: usize,
}

fn store(e: StorageError) -> FlightError {
    FlightError::Broken(format!("storage: {e}"))
}

impl<S: Storage, H: Host> Spool<S, H> {
    /// Open the spool for a blob of `size` bytes (if known): its session is
    /// marked live for the janitor, and followers may answer their clients.
    pub(crate) async fn begin(
        to: SpoolTarget<S, H>,
        size: Option<u64>,
    ) -> Result<Self, FlightError> {
        let mut state = UploadState::new(&to.local, to.host.now_unix_ms());
        state.fill = true;
        to.storage
            .put(
                &layout::upload_state(&to.id),
                state.encode(),
                PutMode::Overwrite,
            )
            .await
            .map_err(store)?;
        to.flight.update(|s| {
            s.started = true;
            s.size = size;
        });
        let unit = if to.storage.can_append() {
            APPEND_CHUNK
        } else {
            SPOOL_CHUNK
        };
        Ok(Spool {
            hasher: Hasher::new(to.digest.algorithm()),
            to,
            size,
            received: 0,
            unspooled: 0,
            chunks: 0,
            unit,
        })
    }

    /// Bytes taken so far: where a resumed request starts.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// The blob's announced size, if the upstream said.
    pub(crate) fn size(&self) -> Option<u64> {
        self.size
    }

    pub(crate) fn broken(&self, m: String) -> FlightError {
        FlightError::Broken(format!("{} blob {}: {m}", self.to.source, self.to.digest))
    }

    /// The fill's source failed after the bytes received so far.
    pub(crate) fn body_failed(&self, e: &dyn std::fmt::Display) -> FlightError {
        self.broken(format!("body failed after {} bytes: {e}", self.received))
    }

    /// Take the next chunk of the blob.
    pub(crate) async fn write(&mut self, chunk: Bytes) -> Result<(), FlightError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.hasher.update(&chunk);
        metrics::add(&self.to.metrics.bytes_from_upstream, chunk.len() as u64);
        let offset = self.received;
        self.received += chunk.len() as u64;
        self.unspooled += chunk.len();
        if let Some(size) = self.size.filter(|s| self.received > *s) {
            return Err(self.broken(format!("more than the announced {size} bytes")));
        }
        let received = self.received;
        self.to.flight.update(|s| {
            s.received = received;
            s.tail.push((offset, chunk));
        });
        // For followers that judge a fill by its progress
        // (`Registry::follow_fill`), this one is as alive as any.
        self.to.flight.moved(self.to.host.now_unix_ms());
        if self.unspooled >= self.unit {
            self.spool_tail().await?;
        }
        Ok(())
    }

    /// Every byte arrived: spool the rest and check the length and the
    /// digest. Followers (here and in other processes) may have the last
    /// byte once this succeeds.
    pub(crate) async fn verify(&mut self) -> Result<(), FlightError> {
        if self.unspooled > 0 {
            self.spool_tail().await?;
        }
        if let Some(s) = self.size {
            if self.received != s {
                return Err(self.broken(format!("truncated: {} of {s} bytes", self.received)));
            }
        }
        let actual =
            std::mem::replace(&mut self.hasher, Hasher::new(self.to.digest.algorithm())).finish();
        if actual != self.to.digest {
            return Err(self.broken(format!("content has digest {actual}")));
        }
        self.to.flight.update(|s| s.hashed = true);
        Ok(())
    }

    /// Write the unspooled tail: appended to the one spool object where the
    /// backend can, else as one chunk object.
    async fn spool_tail(&mut self) -> Result<(), FlightError> {
        let index = self.chunks;
        self.chunks += 1;
        self.unspooled = 0;
        let (offset, parts) = {
            let s = self.to.flight.lock();
            let offset = s.tail.first().map(|(o, _)| *o).unwrap_or(s.received);
            let parts: Vec<Bytes> = s.tail.iter().map(|(_, b)| b.clone()).collect();
            (offset, parts)
        };
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let storage = &self.to.storage;
        if storage.can_append() {
            let key = layout::upload_data(&self.to.id);
            storage.append(&key, offset, parts).await.map_err(store)?;
            self.to.flight.update(|s| {
                match s.spooled.first_mut() {
                    Some(sp) => sp.len += len,
                    None => s.spooled.push(Spooled { offset, len, key }),
                }
                s.tail.clear();
            });
            return Ok(());
        }
        let mut data = BytesMut::with_capacity(len as usize);
        for p in &parts {
            data.extend_from_slice(p);
        }
        let key = layout::upload_chunk(&self.to.id, offset, &format!("{index:08x}"));
        storage
            .put(&key, data.freeze(), PutMode::Overwrite)
            .await
            .map_err(store)?;
        self.to.flight.update(|s| {
            s.spooled.push(Spooled { offset, len, key });
            s.tail.clear();
        });
        Ok(())
    }

    /// Move the verified spool into place and link it.
    pub(crate) async fn commit(&self) -> Result<(), FlightError> {
        self.commit_stored().await.map_err(store)
    }

    async fn commit_stored(&self) -> Result<(), StorageError> {
        let to = &self.to;
        let blob = layout::blob(&to.digest);
        let keys: Vec<String> = to
            .flight
            .lock()
            .spooled
            .iter()
            .map(|s| s.key.clone())
            .collect();
        match keys.as_slice() {
            [] => {
                to.storage
                    .put(&blob, Bytes::new(), PutMode::Overwrite)
                    .await?
            }
            [only] => {
                // One chunk, or the appended spool. Clients may be reading
                // it; renaming keeps open files readable on disk, and S3
                // copies before deleting.
                to.storage.rename(only, &blob).await?;
            }
            many => {
                let joined = join_objects(to.storage.clone(), many.to_vec());
                to.storage
                    .put_stream(
                        &blob,
                        digest::verify(joined, to.digest.clone(), Some(self.received)),
                    )
                    .await?;
            }
        }
        to.storage
            .put(
                &layout::layer_link(&to.local, &to.digest),
                Bytes::new(),
                PutMode::Overwrite,
            )
            .await?;
        to.storage
            .put(
                &layout::catalog_entry(&to.local),
                Bytes::new(),
                PutMode::Overwrite,
            )
            .await?;
        // The fill is the blob's first use.
        let filled = Change::Filled {
            digest: to.digest.to_string(),
            size: self.received,
            at_ms: to.host.now_unix_ms(),
        };
        if to.records_changes {
            changes::record(&*to.storage, &*to.host, &filled).await?;
        }
        Ok(())
    }
}
