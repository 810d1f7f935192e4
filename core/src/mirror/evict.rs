//! Keeping the cache under its size, least recently used first.

use super::lease::{take, ReleaseOnDrop, Stamp, Taken};
use super::Mirror;
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::metrics::{self};
use crate::store::layout;
use crate::store::Result;

/// How long an eviction pass may hold the evictor lease before another
/// process takes it as dead.
const EVICTOR_LEASE_MS: u64 = 30 * 60 * 1000;

/// What an eviction pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EvictionReport {
    /// Bytes of evictable mirrored blobs before the pass.
    pub cached_bytes: u64,
    /// Blobs deleted.
    pub evicted_blobs: usize,
    /// Bytes those blobs held.
    pub evicted_bytes: u64,
    /// Another process sharing the storage was evicting: this pass did
    /// nothing.
    pub skipped: bool,
}

impl<S: Storage, H: Host, F: Fetch> Mirror<'_, S, H, F> {
    /// Keep mirrored layer blobs under `max_size` bytes, least recently used
    /// first: by the last GET or HEAD of the blob, the last pull of a
    /// manifest referencing it, or its fill, whichever is latest (see
    /// `Recency`); a blob with no recorded use counts as used when it was
    /// written. Never evicted: anything a hosted repository links,
    /// manifests (small, and tags point at them), blobs being filled, and
    /// blobs used within the last `grace_ms` (they may be being served).
    pub(crate) async fn evict(&self, max_size: u64, grace_ms: u64) -> Result<EvictionReport> {
        let mut report = EvictionReport::default();
        if self.mirrors.upstreams.is_empty() {
            return Ok(report);
        }
        // One evictor at a time among the processes sharing the storage.
        let key = layout::EVICTOR_LEASE;
        let now = self.store.host.now_unix_ms();
        let stamp = Stamp::encode(&self.store.process, now);
        match take(&*self.store.storage, key, stamp.clone()).await {
            Taken::Held | Taken::Uncoordinated => {}
            Taken::Elsewhere(held) => {
                // A pass that started this long ago died with its process.
                if now.saturating_sub(Stamp::decode(held.as_deref()).at_ms) < EVICTOR_LEASE_MS {
                    report.skipped = true;
                    return Ok(report);
                }
                self.store
                    .storage
                    .put(key, stamp, crate::io::storage::PutMode::Overwrite)
                    .await?;
            }
        }
        let lease = ReleaseOnDrop {
            storage: self.store.storage.clone(),
            host: self.store.host.clone(),
            key: key.to_owned(),
        };
        let pass = self.evict_pass(max_size, grace_ms, report).await;
        lease.release().await;
        pass
    }

    async fn evict_pass(
        &self,
        max_size: u64,
        grace_ms: u64,
        mut report: EvictionReport,
    ) -> Result<EvictionReport> {
        let mut mirrored = std::collections::HashSet::new();
        let mut protected = std::collections::HashSet::new();
        for key in self.store.storage.list("repositories/").await? {
            let (name, digest, is_layer) = match layout::repository_key(&key) {
                Some(layout::RepositoryKey::Layer(n, d)) => (n, d, true),
                Some(layout::RepositoryKey::Manifest(n, d)) => (n, d, false),
                None => continue,
            };
            if self.mirrors.is_mirrored_local(&name) && is_layer {
                mirrored.insert(digest);
            } else {
                protected.insert(digest);
            }
        }
        let in_flight = self.mirrors.fills.digests();
        let now = self.store.host.now_unix_ms();
        let mut candidates = Vec::new();
        let mut stored = std::collections::HashSet::new();
        for e in self.store.storage.list_meta("blobs/").await? {
            let Some(digest) = layout::blob_digest(&e.key) else {
                continue;
            };
            stored.insert(digest.clone());
            if !mirrored.contains(&digest) || protected.contains(&digest) {
                continue;
            }
            report.cached_bytes += e.size;
            candidates.push((e.modified_ms, e.size, e.key, digest));
        }
        let mut total = report.cached_bytes;
        if total > max_size {
            // Only a pass that evicts reads when each blob was last used.
            for c in candidates.iter_mut() {
                c.0 = c.0.max(self.last_use(&c.3).await?);
            }
        }
        candidates.sort();
        for (used, size, key, digest) in candidates {
            if total <= max_size {
                break;
            }
            if now.saturating_sub(used) < grace_ms || in_flight.contains(&digest) {
                continue;
            }
            self.store.storage.delete(&key).await?;
            stored.remove(&digest);
            self.store.storage.delete(&layout::access(&digest)).await?;
            self.mirrors.recency.lock_blobs().remove(&digest);
            total -= size;
            report.evicted_blobs += 1;
            report.evicted_bytes += size;
        }
        // A crash between a blob's delete and its record's leaves the
        // record behind; nothing else would ever remove it.
        for key in self.store.storage.list(layout::ACCESS_PREFIX).await? {
            match layout::access_digest(&key) {
                Some(d) if stored.contains(&d) || in_flight.contains(&d) => {}
                _ => self.store.storage.delete(&key).await?,
            }
        }
        metrics::add(&self.store.metrics.evictions, report.evicted_blobs as u64);
        self.store
            .metrics
            .cache_size_bytes
            .store(total, std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }
}
