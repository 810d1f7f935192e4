//! A small, bounded, in-memory cache of manifests and mirrored tag lookups.
//!
//! Manifest GETs are the most frequent request a registry serves (every
//! pull starts with one, and orchestrators poll them); answering from
//! storage costs several object reads each. Manifests are content
//! addressed, so a cached copy never goes stale; only a delete removes one,
//! and deletes go through [`ManifestCache::forget`]. Mirrored tag lookups
//! (which digest a tag had and when the upstream was last asked) are
//! written through: every storage write of one updates the cache too.
//!
//! The cache is per process. Instances sharing one bucket see each other's
//! new manifests and tags through storage; a manifest deleted through
//! another instance may be served from here until it is evicted.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use crate::model::digest::Digest;
use crate::model::reference::{RepositoryName, Tag};

/// A stored manifest as served: its media type and exact bytes.
#[derive(Clone)]
pub(crate) struct CachedManifest {
    pub media_type: Bytes,
    pub bytes: Bytes,
}

/// A mirrored tag: the digest it had when the upstream was last asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CachedTag {
    pub digest: Digest,
    pub checked_ms: u64,
}

struct Entry<T> {
    value: T,
    cost: usize,
    used: u64,
}

/// Least-recently-used map bounded by total cost. Eviction scans for the
/// oldest entry: cheap at the few thousand entries a budget of megabytes
/// holds, and it happens only when the budget is exceeded.
struct Lru<T> {
    entries: HashMap<String, Entry<T>>,
    total: usize,
    budget: usize,
    clock: u64,
}

impl<T: Clone> Lru<T> {
    fn new(budget: usize) -> Self {
        Lru {
            entries: HashMap::new(),
            total: 0,
            budget,
            clock: 0,
        }
    }

    fn get(&mut self, key: &str) -> Option<T> {
        self.clock += 1;
        let e = self.entries.get_mut(key)?;
        e.used = self.clock;
        Some(e.value.clone())
    }

    fn insert(&mut self, key: String, value: T, cost: usize) {
        if cost > self.budget / 4 {
            // One huge entry would push out everything else.
            self.remove(&key);
            return;
        }
        self.clock += 1;
        let entry = Entry {
            value,
            cost,
            used: self.clock,
        };
        if let Some(old) = self.entries.insert(key, entry) {
            self.total -= old.cost;
        }
        self.total += cost;
        while self.total > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.total -= old.cost;
        }
    }
}

pub(crate) struct ManifestCache {
    manifests: Mutex<Lru<CachedManifest>>,
    tags: Mutex<Lru<CachedTag>>,
    /// Bumped by every [`ManifestCache::forget`] (under the manifests
    /// lock): a reader that saw storage before a deletion must not put what
    /// it read back in after it.
    epoch: std::sync::atomic::AtomicU64,
}

/// When a reader started reading storage: see [`ManifestCache::epoch`].
#[derive(Clone, Copy)]
pub(crate) struct Epoch(u64);

/// Bookkeeping bytes charged per entry besides its content.
const ENTRY_OVERHEAD: usize = 128;

impl ManifestCache {
    /// A cache holding at most about `budget` bytes of manifests (and a
    /// sixteenth of that again for tag lookups).
    pub(crate) fn new(budget: usize) -> Self {
        ManifestCache {
            manifests: Mutex::new(Lru::new(budget)),
            tags: Mutex::new(Lru::new(budget / 16)),
            epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn manifest_key(name: &RepositoryName, digest: &Digest) -> String {
        format!("{name}@{digest}")
    }

    fn tag_key(name: &RepositoryName, tag: &Tag) -> String {
        format!("{name}:{}", tag.as_str())
    }

    pub(crate) fn manifest(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Option<CachedManifest> {
        lock(&self.manifests).get(&Self::manifest_key(name, digest))
    }

    /// Take before reading a manifest from storage, to hand to
    /// [`ManifestCache::put_manifest`].
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Remember a manifest read from storage since `seen`, unless something
    /// was forgotten (deleted, replaced) since: then what was read may be
    /// gone already, and storage answers next time.
    pub(crate) fn put_manifest(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        m: CachedManifest,
        seen: Epoch,
    ) {
        let cost = m.bytes.len() + m.media_type.len() + ENTRY_OVERHEAD;
        let mut manifests = lock(&self.manifests);
        if self.epoch.load(std::sync::atomic::Ordering::SeqCst) != seen.0 {
            return;
        }
        manifests.insert(Self::manifest_key(name, digest), m, cost);
    }

    /// The manifest is gone from `name` (deleted) or changed (its media
    /// type re-pushed): forget it and every mirrored tag lookup, which may
    /// point at it.
    pub(crate) fn forget(&self, name: &RepositoryName, digest: &Digest) {
        {
            let mut manifests = lock(&self.manifests);
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            manifests.remove(&Self::manifest_key(name, digest));
        }
        let mut tags = lock(&self.tags);
        let prefix = format!("{name}:");
        let gone: Vec<String> = tags
            .entries
            .iter()
            .filter(|(k, e)| k.starts_with(&prefix) && e.value.digest == *digest)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            tags.remove(&k);
        }
    }

    pub(crate) fn tag(&self, name: &RepositoryName, tag: &Tag) -> Option<CachedTag> {
        lock(&self.tags).get(&Self::tag_key(name, tag))
    }

    pub(crate) fn put_tag(&self, name: &RepositoryName, tag: &Tag, t: CachedTag) {
        let key = Self::tag_key(name, tag);
        let cost = key.len() + ENTRY_OVERHEAD;
        lock(&self.tags).insert(key, t, cost);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the map consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    fn manifest(n: usize) -> CachedManifest {
        CachedManifest {
            media_type: Bytes::from_static(b"application/vnd.oci.image.manifest.v1+json"),
            bytes: Bytes::from(vec![b'x'; n]),
        }
    }

    fn digest(i: u8) -> Digest {
        Digest::compute(crate::model::digest::Algorithm::Sha256, &[i])
    }

    #[test]
    fn manifests_are_scoped_to_their_repository() {
        let c = ManifestCache::new(1 << 20);
        c.put_manifest(&name("a/b"), &digest(1), manifest(10), c.epoch());
        assert!(c.manifest(&name("a/b"), &digest(1)).is_some());
        assert!(c.manifest(&name("a/c"), &digest(1)).is_none());
        assert!(c.manifest(&name("a/b"), &digest(2)).is_none());
    }

    #[test]
    fn least_recently_used_goes_first_and_the_budget_holds() {
        let c = ManifestCache::new(4 * (1000 + 200));
        for i in 0..4 {
            c.put_manifest(&name("r"), &digest(i), manifest(1000), c.epoch());
        }
        // Touch 0, so 1 is the oldest.
        assert!(c.manifest(&name("r"), &digest(0)).is_some());
        c.put_manifest(&name("r"), &digest(9), manifest(1000), c.epoch());
        assert!(c.manifest(&name("r"), &digest(1)).is_none());
        for i in [0, 2, 3, 9] {
            assert!(c.manifest(&name("r"), &digest(i)).is_some(), "{i}");
        }
        let m = lock(&c.manifests);
        assert!(m.total <= m.budget);
    }

    #[test]
    fn oversized_entries_are_not_cached() {
        let c = ManifestCache::new(4000);
        c.put_manifest(&name("r"), &digest(1), manifest(2000), c.epoch());
        assert!(c.manifest(&name("r"), &digest(1)).is_none());
    }

    #[test]
    fn a_read_from_before_a_forget_is_not_cached() {
        let c = ManifestCache::new(1 << 20);
        let seen = c.epoch();
        // A deletion lands while the reader is reading storage.
        c.forget(&name("r"), &digest(1));
        c.put_manifest(&name("r"), &digest(1), manifest(10), seen);
        assert!(c.manifest(&name("r"), &digest(1)).is_none());
        c.put_manifest(&name("r"), &digest(1), manifest(10), c.epoch());
        assert!(c.manifest(&name("r"), &digest(1)).is_some());
    }

    #[test]
    fn forgetting_a_manifest_drops_tags_pointing_at_it() {
        let c = ManifestCache::new(1 << 20);
        let (r, t1, t2) = (
            name("r"),
            Tag::parse("one").unwrap(),
            Tag::parse("two").unwrap(),
        );
        c.put_manifest(&r, &digest(1), manifest(10), c.epoch());
        let at = |d| CachedTag {
            digest: d,
            checked_ms: 5,
        };
        c.put_tag(&r, &t1, at(digest(1)));
        c.put_tag(&r, &t2, at(digest(2)));
        c.forget(&r, &digest(1));
        assert!(c.manifest(&r, &digest(1)).is_none());
        assert_eq!(c.tag(&r, &t1), None);
        assert_eq!(c.tag(&r, &t2), Some(at(digest(2))));
    }
}
