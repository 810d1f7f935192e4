//! Keeping the cache under its size, least recently used first.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::lease::{take, ReleaseOnDrop, Stamp, Taken};
use super::Mirror;
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage};
use crate::metrics::{self};
use crate::model::digest::Digest;
use crate::store::changes::Change;
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
    /// This pass listed the whole cache (there was no ledger yet, or its
    /// daily rebuild was due); other passes read only what changed.
    pub full_listing: bool,
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
        use std::sync::atomic::Ordering;
        let storage = &self.store.storage;
        let now = self.store.host.now_unix_ms();
        let (keys, changes) = self.changes(&HashSet::new()).await?;
        let mut folded: HashSet<String> = keys.into_iter().collect();
        // Changes are trusted only while they are recorded, and since this
        // process last rebuilt the ledger (before it started, a process
        // sharing the storage may not have recorded them).
        let trusted =
            self.store.config.records_changes && self.mirrors.ledger_rebuilt.load(Ordering::SeqCst);
        let ledger = match storage.read(layout::LEDGER).await? {
            Some(raw) if trusted => Ledger::decode(&raw)
                .filter(|l| l.built_ms <= now && now - l.built_ms < LEDGER_REBUILD_MS),
            _ => None,
        };
        let (mut ledger, legacy) = match ledger {
            Some(l) => (l, Vec::new()),
            None => {
                report.full_listing = true;
                self.rebuild(now).await?
            }
        };
        for c in &changes {
            ledger.fold(c);
        }
        // This process's uses not sampled into storage yet.
        for (digest, entry) in ledger.blobs.iter_mut() {
            if let Ok(d) = Digest::parse(digest) {
                entry.1 = entry.1.max(self.used_here(&d));
            }
        }
        report.cached_bytes = ledger.total();
        if report.cached_bytes > max_size {
            let in_flight = self.mirrors.fills.digests();
            let mut candidates: Vec<(u64, u64, String)> = ledger
                .blobs
                .iter()
                .map(|(d, (size, used))| (*used, *size, d.clone()))
                .collect();
            candidates.sort();
            let mut over = report.cached_bytes - max_size;
            let mut victims = Vec::new();
            for (used, size, digest) in candidates {
                if over == 0 {
                    break;
                }
                let Ok(d) = Digest::parse(&digest) else {
                    ledger.blobs.remove(&digest);
                    continue;
                };
                if now.saturating_sub(used) < grace_ms || in_flight.contains(&d) {
                    continue;
                }
                victims.push((d, used));
                over = over.saturating_sub(size);
            }
            for (d, used) in victims {
                // Changes written since this pass looked, read right before
                // each delete: a victim used or kept (pushed to a hosted
                // repository) since is spared.
                let (more, late) = self.changes(&folded).await?;
                folded.extend(more);
                for c in &late {
                    ledger.fold(c);
                }
                let key = d.to_string();
                let Some(&(size, now_used)) = ledger.blobs.get(&key) else {
                    continue;
                };
                if now_used != used {
                    continue;
                }
                ledger.blobs.remove(&key);
                // Gone already (deleted behind kura's back, or a change
                // folded twice after a crash): nothing to free.
                if storage.head(&layout::blob(&d)).await?.is_none() {
                    continue;
                }
                storage.delete(&layout::blob(&d)).await?;
                self.mirrors.recency.lock_blobs().remove(&d);
                report.evicted_blobs += 1;
                report.evicted_bytes += size;
            }
        }
        // The ledger first, then the changes it holds: a crash between them
        // folds them again, which changes nothing but a phantom blob
        // dropped at its eviction.
        storage
            .put(layout::LEDGER, ledger.encode(), PutMode::Overwrite)
            .await?;
        if report.full_listing {
            self.mirrors.ledger_rebuilt.store(true, Ordering::SeqCst);
        }
        // The ledger holds what these said now.
        for key in folded.into_iter().chain(legacy) {
            storage.delete(&key).await?;
        }
        metrics::add(&self.store.metrics.evictions, report.evicted_blobs as u64);
        self.store
            .metrics
            .cache_size_bytes
            .store(ledger.total(), Ordering::Relaxed);
        Ok(report)
    }

    /// The changes under `cache/changes/` not in `seen`: their keys, and the
    /// changes (unreadable ones are skipped, and deleted with the rest).
    async fn changes(&self, seen: &HashSet<String>) -> Result<(Vec<String>, Vec<Change>)> {
        let mut keys = Vec::new();
        let mut changes = Vec::new();
        for key in self.store.storage.list(layout::CHANGES_PREFIX).await? {
            if seen.contains(&key) {
                continue;
            }
            if let Some(raw) = self.store.storage.read(&key).await? {
                changes.extend(Change::decode(&raw));
            }
            keys.push(key);
        }
        Ok((keys, changes))
    }

    /// The ledger from a full listing of the cache: what is evictable
    /// (mirrored layers nothing else links), what is kept, and when each
    /// was last used (the previous ledger's record, an older kura's
    /// `access/` record, or when it was written, whichever is latest).
    /// Also returns the `access/` keys read, to delete once the ledger is
    /// saved.
    async fn rebuild(&self, now: u64) -> Result<(Ledger, Vec<String>)> {
        let storage = &self.store.storage;
        let previous = storage
            .read(layout::LEDGER)
            .await?
            .and_then(|raw| Ledger::decode(&raw))
            .unwrap_or_default();
        let mut mirrored = HashSet::new();
        let mut kept = BTreeSet::new();
        for key in storage.list("repositories/").await? {
            let (name, digest, is_layer) = match layout::repository_key(&key) {
                Some(layout::RepositoryKey::Layer(n, d)) => (n, d, true),
                Some(layout::RepositoryKey::Manifest(n, d)) => (n, d, false),
                None => continue,
            };
            if self.mirrors.is_mirrored_local(&name) && is_layer {
                mirrored.insert(digest);
            } else {
                kept.insert(digest.to_string());
            }
        }
        let recorded: HashSet<Digest> = storage
            .list(layout::ACCESS_PREFIX)
            .await?
            .iter()
            .filter_map(|k| layout::access_digest(k))
            .collect();
        let mut ledger = Ledger {
            built_ms: now,
            blobs: BTreeMap::new(),
            kept,
        };
        for e in storage.list_meta("blobs/").await? {
            let Some(digest) = layout::blob_digest(&e.key) else {
                continue;
            };
            let name = digest.to_string();
            if !mirrored.contains(&digest) || ledger.kept.contains(&name) {
                continue;
            }
            let mut used = e.modified_ms;
            if let Some((_, before)) = previous.blobs.get(&name) {
                used = used.max(*before);
            }
            if recorded.contains(&digest) {
                used = used.max(self.recorded_use(&digest).await?);
            }
            ledger.blobs.insert(name, (e.size, used));
        }
        let legacy = recorded.iter().map(layout::access).collect();
        Ok((ledger, legacy))
    }
}

/// A full listing rebuilds the ledger at least this often: what changes
/// cannot tell (a blob deleted behind kura's back, a hosted link gone) is
/// set right within a day.
const LEDGER_REBUILD_MS: u64 = 24 * 3600 * 1000;

/// What eviction passes know of the cache between them ([`layout::LEDGER`]),
/// kept up to date by folding in `Change`s, so that a pass costs what
/// changed instead of a listing of the whole cache.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    /// When a full listing last rebuilt it (the evictor's clock).
    built_ms: u64,
    /// Evictable mirrored layers: digest → (size, last use).
    blobs: BTreeMap<String, (u64, u64)>,
    /// Never evicted: linked by a hosted repository, or as a manifest.
    kept: BTreeSet<String>,
}

impl Ledger {
    fn decode(raw: &[u8]) -> Option<Ledger> {
        serde_json::from_slice(raw).ok()
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    fn fold(&mut self, change: &Change) {
        match change {
            Change::Filled {
                digest,
                size,
                at_ms,
            } => {
                if !self.kept.contains(digest) {
                    let e = self.blobs.entry(digest.clone()).or_insert((*size, 0));
                    *e = (*size, e.1.max(*at_ms));
                }
            }
            Change::Used { digest, at_ms } => {
                if let Some(e) = self.blobs.get_mut(digest) {
                    e.1 = e.1.max(*at_ms);
                }
            }
            Change::Kept { digest } => {
                self.blobs.remove(digest);
                self.kept.insert(digest.clone());
            }
        }
    }

    fn total(&self) -> u64 {
        self.blobs.values().map(|(size, _)| size).sum()
    }
}
