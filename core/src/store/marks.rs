//! Marks this process keeps for garbage collection: digests pushes are
//! about to use, and the batch a collection is deleting. They close, within
//! one process, the race between a push that names a blob and a
//! collection that found it unreferenced (see `crate::hosted::gc`).

use std::collections::{HashMap, HashSet};

use super::Store;
use crate::io::host::Host;
use crate::model::digest::Digest;

/// What this process knows that storage does not yet show: digests a push
/// is about to use, and a collector's batch being deleted.
#[derive(Default)]
pub(crate) struct Guard {
    /// Digest → when a push last marked it (ms).
    pub(crate) touched: HashMap<Digest, u64>,
    pub(crate) deleting: HashSet<Digest>,
}

/// Past this many marks, those older than the longest grace period a
/// collection has used are dropped.
const GUARD_PRUNE_AT: usize = 100_000;

impl<S, H: Host> Store<S, H> {
    /// Mark `digest` as about to be used by a push (uploaded, mounted,
    /// linked, named by a manifest). If a collection in this process is
    /// deleting it right now, wait for that delete to end first, so that
    /// what the push writes next is not deleted after it.
    /// Returns when it was marked before, if it was.
    pub(crate) async fn touch_blob(&self, digest: &Digest) -> Option<u64> {
        loop {
            {
                let mut g = self.gc_guard.lock().unwrap_or_else(|p| p.into_inner());
                if !g.deleting.contains(digest) {
                    let now = self.host.now_unix_ms();
                    if g.touched.len() >= GUARD_PRUNE_AT {
                        let horizon = now.saturating_sub(
                            self.gc_longest_grace
                                .load(std::sync::atomic::Ordering::Relaxed)
                                .max(crate::config::DEFAULT_GC_GRACE_MS),
                        );
                        g.touched.retain(|_, at| *at >= horizon);
                    }
                    return g.touched.insert(digest.clone(), now);
                }
            }
            self.host.sleep(5).await;
        }
    }

    /// Whether a push marked `digest` after `since_ms`.
    pub(crate) fn touched_since(&self, digest: &Digest, since_ms: u64) -> bool {
        let g = self.gc_guard.lock().unwrap_or_else(|p| p.into_inner());
        g.touched.get(digest).is_some_and(|at| *at > since_ms)
    }
}

/// Deletes a claimed batch from the guard however the delete ended (its
/// future dropped included), so no push waits for it forever.
pub(crate) struct Unclaim<'a> {
    pub(crate) guard: &'a std::sync::Mutex<Guard>,
    pub(crate) digests: Vec<Digest>,
}

impl Drop for Unclaim<'_> {
    fn drop(&mut self) {
        let mut g = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        for d in &self.digests {
            g.deleting.remove(d);
        }
    }
}
