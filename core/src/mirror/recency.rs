//! When mirrored blobs were last used: every use in memory, sampled into
//! storage so that eviction sees it across restarts and processes.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::Mirror;
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::model::digest::Digest;
use crate::model::manifest;
use crate::store::changes::Change;
use crate::store::layout;
use crate::store::Result;

/// When mirrored blobs were last used (host clock, ms).
///
/// Every use updates memory; when eviction passes run
/// (`RegistryConfig::records_changes`), storage gets the time at most once
/// per blob per
/// [`RegistryConfig::access_record_interval_ms`](crate::RegistryConfig), as
/// a `Change::Used` for the next pass, so recency survives a restart and a
/// later process (or another process on the same storage) sees it. A pull
/// of a manifest counts as a use of everything it references, at most once
/// per manifest per interval (it is parsed to find them).
#[derive(Default)]
pub(crate) struct Recency {
    pub(super) blobs: Mutex<HashMap<Digest, BlobUse>>,
    pub(super) manifests: Mutex<HashMap<Digest, u64>>,
}

#[derive(Clone, Copy)]
pub(super) struct BlobUse {
    pub(super) used_ms: u64,
    /// The time last written to storage, 0 if never by this process.
    pub(super) recorded_ms: u64,
}

impl Recency {
    pub(super) fn lock_blobs(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, BlobUse>> {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: Storage, H: Host, F: Fetch> Mirror<'_, S, H, F> {
    /// Note a use of the mirrored blob `digest` (served, or filled).
    pub(crate) async fn record_use(&self, digest: &Digest) {
        let now = self.store.host.now_unix_ms();
        let interval = self.store.config.access_record_interval_ms;
        let persist = {
            let mut blobs = self.mirrors.recency.lock_blobs();
            let entry = blobs.entry(digest.clone()).or_insert(BlobUse {
                used_ms: now,
                recorded_ms: 0,
            });
            entry.used_ms = entry.used_ms.max(now);
            let due = entry.recorded_ms == 0 || now.saturating_sub(entry.recorded_ms) >= interval;
            if due {
                entry.recorded_ms = now.max(1);
            }
            due
        };
        if persist {
            // Recency is advice for eviction: failing to record it must not
            // fail the request that used the blob.
            let _ = self
                .store
                .record_change(&Change::Used {
                    digest: digest.to_string(),
                    at_ms: now,
                })
                .await;
        }
    }

    /// Note a pull of the manifest `digest` (its bytes): a use of the blobs
    /// it references.
    pub(super) async fn record_manifest_use(&self, digest: &Digest, bytes: &Bytes) {
        let now = self.store.host.now_unix_ms();
        {
            let mut manifests = self
                .mirrors
                .recency
                .manifests
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(at) = manifests.get(digest) {
                if now.saturating_sub(*at) < self.store.config.access_record_interval_ms {
                    return;
                }
            }
            manifests.insert(digest.clone(), now);
        }
        let Ok(parsed) = manifest::parse(bytes, None) else {
            return;
        };
        for d in parsed.required_blobs() {
            self.record_use(&d.digest).await;
        }
    }

    /// When this process last used `digest`, or 0.
    pub(super) fn used_here(&self, digest: &Digest) -> u64 {
        self.mirrors
            .recency
            .lock_blobs()
            .get(digest)
            .map_or(0, |u| u.used_ms)
    }

    /// The use an older kura recorded for `digest` (`access/` records), or 0.
    pub(super) async fn recorded_use(&self, digest: &Digest) -> Result<u64> {
        Ok(self
            .store
            .storage
            .read(&layout::access(digest))
            .await?
            .and_then(|raw| std::str::from_utf8(&raw).ok()?.trim().parse::<u64>().ok())
            .unwrap_or(0))
    }
}
