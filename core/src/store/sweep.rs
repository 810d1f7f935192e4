//! How a push in one process and a garbage collection in another agree,
//! through storage alone, on what the collection may delete.
//!
//! A collection plans from listings and deletes some time later; a push in
//! another process that names a candidate in between would lose what it
//! named (within one process, [`super::marks`] closes that window). Two
//! records close it between processes:
//!
//! - the collector writes [`layout::GC_SWEEP`], every digest its first plan
//!   found deletable, *before* it lists the pushes in progress and then
//!   storage again to confirm the plan, and removes it once its deletes are
//!   done;
//! - a push writes an in-use record ([`layout::gc_in_use`]) naming every
//!   digest it is about to make referenced (the manifest, its blobs and
//!   children; a blob it uploads or mounts), *then* reads the sweep: if a
//!   sweep of another process names one of them, it waits for that sweep
//!   to end before it checks or writes anything. It removes its record
//!   once its writes are done.
//!
//! Why that is enough: the collector spares every digest of the in-use
//! records it lists. A push's record was either listed (spared); or
//! written after that listing, so after the sweep was written, so the push
//! read the sweep, waited it out and wrote after the collection's last
//! delete; or removed before that listing, so the push's writes were done
//! before the collector's confirming listing, which sees them.
//!
//! A probe (a HEAD of a blob, which a push sends before it skips the
//! upload) rewrites the repository's link so that it is young for a grace
//! period, then reads the sweep; if a sweep named the digest it waits it
//! out and answers from what is left. On storage that keeps no write
//! times, the rewrite is invisible to collections, and only the in-use
//! record of the manifest push that follows protects the link.
//!
//! It relies on storage reading and listing what was written before
//! (S3, R2 and local disk do), and on the hosts' clocks agreeing to well
//! within [`SWEEP_STALE_MS`] and [`IN_USE_STALE_MS`].

use std::collections::HashSet;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::lease::ReleaseOnDrop;
use super::{layout, Result, Store};
use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage};
use crate::model::digest::Digest;

/// A sweep this old is a dead collector's: pushes stop waiting for it.
/// The GC lease's own lifetime.
pub(crate) const SWEEP_STALE_MS: u64 = 30 * 60 * 1000;

/// An in-use record this old is a dead push's: collections ignore it and
/// remove it.
pub(crate) const IN_USE_STALE_MS: u64 = 6 * 3600 * 1000;

/// How often a waiting push looks at the sweep again.
const SWEEP_POLL_MS: u64 = 50;

/// In-use records read at once by a collection.
const READS_AT_ONCE: usize = 16;

/// [`layout::GC_SWEEP`]: what the collection in progress may delete.
#[derive(Serialize, Deserialize)]
struct SweepRecord {
    /// The collecting process (`Store::process`).
    holder: String,
    /// Its clock when it wrote this.
    at_ms: u64,
    digests: Vec<String>,
}

/// [`layout::gc_in_use`]: what a push in progress is making referenced.
#[derive(Serialize, Deserialize)]
struct InUseRecord {
    at_ms: u64,
    digests: Vec<String>,
}

/// A push's in-use record: removed when dropped (or by
/// [`InUse::release`]).
pub(crate) struct InUse<S: Storage, H: Host>(ReleaseOnDrop<S, H>);

impl<S: Storage, H: Host> InUse<S, H> {
    /// The push's writes are done: remove the record now.
    pub(crate) async fn release(self) {
        self.0.release().await
    }
}

/// A collection's sweep record: removed when dropped (or by
/// [`Sweep::end`]).
pub(crate) struct Sweep<S: Storage, H: Host>(ReleaseOnDrop<S, H>);

impl<S: Storage, H: Host> Sweep<S, H> {
    /// The collection's deletes are done: waiting pushes may go on.
    pub(crate) async fn end(self) {
        self.0.release().await
    }
}

impl<S: Storage, H: Host> Store<S, H> {
    /// Say, before a push checks or writes anything, that it is making
    /// `digests` referenced: for this process's collections (marks) and
    /// for other processes' (an in-use record); then wait out a
    /// collection elsewhere that may be deleting one of them. Keep the
    /// result until the push's writes are done.
    pub(crate) async fn announce_use(&self, digests: &[&Digest]) -> Result<InUse<S, H>> {
        let mut named = HashSet::new();
        for d in digests {
            self.touch_blob(d).await;
            named.insert(d.to_string());
        }
        let now = self.host.now_unix_ms();
        let n = self
            .in_use_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = layout::gc_in_use(&self.process, n);
        let record = InUseRecord {
            at_ms: now,
            digests: named.iter().cloned().collect(),
        };
        let raw = serde_json::to_vec(&record).unwrap_or_default();
        self.storage
            .put(&key, Bytes::from(raw), PutMode::Overwrite)
            .await?;
        let in_use = InUse(ReleaseOnDrop {
            storage: self.storage.clone(),
            host: self.host.clone(),
            key,
        });
        self.wait_out_sweep(&named).await?;
        Ok(in_use)
    }

    /// [`Store::announce_use`] for an upload of blob `digest`, when it
    /// needs one: only a blob already in storage can be in a collection's
    /// plan. One that is not yet is new when written (young for a grace
    /// period), and the pass that deleted it, if one did, deletes nothing
    /// twice. A look instead of three requests, for most uploads.
    pub(crate) async fn announce_upload(&self, digest: &Digest) -> Result<Option<InUse<S, H>>> {
        if self.storage.head(&layout::blob(digest)).await?.is_none() {
            self.touch_blob(digest).await;
            return Ok(None);
        }
        Ok(Some(self.announce_use(&[digest]).await?))
    }

    /// Wait while a collection in another process may delete one of
    /// `digests`. Returns whether it waited.
    pub(crate) async fn wait_out_sweep(&self, digests: &HashSet<String>) -> Result<bool> {
        let mut waited = false;
        loop {
            let Some(raw) = self.storage.read(layout::GC_SWEEP).await? else {
                return Ok(waited);
            };
            // Puts are whole: an unreadable record is not a sweep of ours.
            let Ok(sweep) = serde_json::from_slice::<SweepRecord>(&raw) else {
                return Ok(waited);
            };
            let now = self.host.now_unix_ms();
            if sweep.holder == self.process.as_str()
                || now.saturating_sub(sweep.at_ms) >= SWEEP_STALE_MS
                || !sweep.digests.iter().any(|d| digests.contains(d))
            {
                return Ok(waited);
            }
            waited = true;
            self.host.sleep(SWEEP_POLL_MS).await;
        }
    }

    /// A collection is about to confirm its plan: announce every digest it
    /// may delete. Keep the result until its deletes are done.
    pub(crate) async fn begin_sweep(&self, named: HashSet<String>) -> Result<Sweep<S, H>> {
        let record = SweepRecord {
            holder: self.process.to_string(),
            at_ms: self.host.now_unix_ms(),
            digests: named.into_iter().collect(),
        };
        let raw = serde_json::to_vec(&record).unwrap_or_default();
        self.storage
            .put(layout::GC_SWEEP, Bytes::from(raw), PutMode::Overwrite)
            .await?;
        Ok(Sweep(ReleaseOnDrop {
            storage: self.storage.clone(),
            host: self.host.clone(),
            key: layout::GC_SWEEP.to_owned(),
        }))
    }

    /// Every digest pushes in progress (in any process) are making
    /// referenced. Records of pushes dead for [`IN_USE_STALE_MS`] are
    /// removed instead.
    pub(crate) async fn digests_in_use(&self) -> Result<HashSet<String>> {
        let now = self.host.now_unix_ms();
        let keys = self.storage.list(layout::GC_IN_USE_PREFIX).await?;
        let reads: Vec<_> = keys
            .into_iter()
            .map(|key| {
                let storage = self.storage.clone();
                async move {
                    let raw = storage.read(&key).await;
                    (key, raw)
                }
            })
            .collect();
        let read = futures::stream::iter(reads)
            .buffer_unordered(READS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        let mut in_use = HashSet::new();
        let mut stale = Vec::new();
        for (key, raw) in read {
            // Gone since the listing: that push is done.
            let Some(raw) = raw? else { continue };
            match serde_json::from_slice::<InUseRecord>(&raw) {
                Ok(r) if now.saturating_sub(r.at_ms) < IN_USE_STALE_MS => in_use.extend(r.digests),
                _ => stale.push(key),
            }
        }
        if !stale.is_empty() {
            self.storage.delete_many(&stale).await?;
        }
        Ok(in_use)
    }
}
