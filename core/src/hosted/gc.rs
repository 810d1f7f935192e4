//! Online garbage collection of hosted repositories, while they serve.
//!
//! A pass takes the GC lease (one collector at a time among the processes
//! sharing the storage; requests take no lock), applies the retention
//! rules (tags), then *plans*: from every tag of every hosted repository
//! it marks the manifests reachable (an index's children, the referrers of
//! a live subject) and the blobs they name. What is left is a candidate:
//! an untagged, unreachable manifest; a repository's link to a blob no
//! live manifest names; a blob no repository links. A candidate is
//! deletable once it has been unreferenced for the grace period, measured
//! from the last time it was written (pushed, uploaded, mounted, or
//! touched by a push that asked whether it exists) or, on storage that
//! keeps no write times, from when a pass first found it unreferenced.
//!
//! Then it announces what it may delete (`gc/sweep`), lists the pushes in
//! progress (`gc/in-use/`), plans again from a fresh listing, and deletes
//! only what both plans found deletable and no push in progress names: a
//! push that referenced something in between wins, in this process or in
//! another sharing the storage (`kura gc` beside `kura serve`, several
//! instances on one bucket). `crate::store::sweep` says why that order
//! closes the race; within one process, marks (`crate::store::marks`) do
//! the same without storage. A probe of a blob (the HEAD a push sends
//! before it skips an upload) rewrites the link, so that the manifest
//! which follows within the grace period finds it.
//!
//! Mirrored repositories are not collected: their links keep their blobs,
//! and the mirror's own size bound evicts them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::retention::{self, TagFacts};
use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage};
use crate::model::digest::Digest;
use crate::model::manifest;
use crate::model::reference::{RepositoryName, Tag};
use crate::store::layout::{self, Entry};
use crate::store::lease::{take, ReleaseOnDrop, Stamp, Taken};
use crate::store::marks::Unclaim;
use crate::store::{Result, Store};

/// How long a collection may hold the GC lease before another process
/// takes it as dead.
const GC_LEASE_MS: u64 = 30 * 60 * 1000;

/// Blobs deleted per storage request (S3's DeleteObjects takes 1,000).
const DELETE_BATCH: usize = 1000;

/// Tags and manifests read at once while marking.
const READS_AT_ONCE: usize = 16;

/// How a collection runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GcOptions {
    /// How long something must have been unreferenced before it goes.
    pub grace_ms: u64,
    /// Only report what would go.
    pub dry_run: bool,
    /// Collect untagged manifests nothing live references (zot's default;
    /// distribution's `--delete-untagged`). Off, they are kept, except in
    /// repositories whose retention rule sets `untagged_older_than_ms`.
    pub delete_untagged: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace_ms: crate::config::DEFAULT_GC_GRACE_MS,
            dry_run: false,
            delete_untagged: true,
        }
    }
}

/// One thing a collection removed (or, dry, would remove).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Garbage {
    /// A tag a retention rule does not keep.
    Tag {
        /// Its repository.
        repository: RepositoryName,
        /// The tag.
        tag: Tag,
    },
    /// An untagged manifest nothing live references.
    Manifest {
        /// Its repository.
        repository: RepositoryName,
        /// The manifest.
        digest: Digest,
    },
    /// A repository's link to a blob no live manifest there names.
    Link {
        /// The repository.
        repository: RepositoryName,
        /// The blob.
        digest: Digest,
    },
    /// A blob no repository links.
    Blob {
        /// The blob.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
    },
}

impl Garbage {
    /// What a collection sweeping this names in `gc/sweep`: a tag is
    /// removed before planning, and names nothing.
    fn digest(&self) -> Option<&Digest> {
        match self {
            Garbage::Tag { .. } => None,
            Garbage::Manifest { digest, .. }
            | Garbage::Link { digest, .. }
            | Garbage::Blob { digest, .. } => Some(digest),
        }
    }
}

/// What a collection found and did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GcReport {
    /// Another process was collecting: this pass did nothing.
    pub skipped: bool,
    /// Nothing was deleted: `removed` is what would have been.
    pub dry_run: bool,
    /// What was removed, in the order it was.
    pub removed: Vec<Garbage>,
    /// Tags removed by retention rules.
    pub tags: usize,
    /// Untagged manifests removed.
    pub manifests: usize,
    /// Links removed.
    pub links: usize,
    /// Blobs removed.
    pub blobs: usize,
    /// Bytes those blobs held.
    pub bytes: u64,
    /// Unreferenced, but not for the grace period yet.
    pub pending: usize,
    /// Found deletable, then referenced again before the delete (a push
    /// won the race).
    pub spared: usize,
    /// Hosted repositories looked at.
    pub repositories: usize,
    /// Blobs in storage when the pass listed them.
    pub blobs_seen: usize,
    /// Live manifests that could not be read or parsed: their repository's
    /// links were all kept.
    pub unreadable: Vec<(RepositoryName, Digest)>,
}

/// How often, at most, a probe of a blob (a push asking whether a
/// repository has it) rewrites the repository's link, so that collections
/// in other processes see it as recently used; more often with a grace
/// period under four times this (`RegistryConfig::gc_grace_ms`).
const LINK_REFRESH_MS: u64 = 10 * 60 * 1000;

impl<S: Storage, H: Host> Store<S, H> {
    /// A client asked whether `name` has blob `digest` (a HEAD that found
    /// it), which pushes do before they skip an upload: the manifest that
    /// follows will name it. Mark it for this process's collections and
    /// rewrite the link (at most every quarter of the grace period) for
    /// other processes'; then, if a collection elsewhere was sweeping the
    /// digest, wait it out. Returns whether the blob is still in `name`.
    pub(crate) async fn note_blob_probe(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool> {
        self.touch_blob(digest).await;
        let now = self.host.now_unix_ms();
        let link = layout::layer_link(name, digest);
        let every = (self.config.gc_grace_ms / 4).min(LINK_REFRESH_MS);
        {
            let mut noted = self.probes_noted.lock().unwrap_or_else(|p| p.into_inner());
            if noted
                .get(&link)
                .is_some_and(|at| now.saturating_sub(*at) < every)
            {
                return Ok(true);
            }
            if noted.len() >= 100_000 {
                noted.retain(|_, at| now.saturating_sub(*at) < every);
            }
            noted.insert(link.clone(), now);
        }
        // Rewritten only while it exists: a link a collection removed since
        // the request's look stays removed.
        if self.storage.head(&link).await?.is_none() {
            return Ok(false);
        }
        self.storage
            .put(&link, Bytes::new(), PutMode::Overwrite)
            .await?;
        let named = HashSet::from([digest.to_string()]);
        if !self.wait_out_sweep(&named).await? {
            return Ok(true);
        }
        // A collection elsewhere may have removed the link (the rewrite
        // then put back a link it had already removed) or the blob.
        self.probes_noted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&link);
        if self.storage.head(&layout::blob(digest)).await?.is_some() {
            return Ok(self.storage.head(&link).await?.is_some());
        }
        // Put back by the rewrite after the collection removed the blob.
        self.storage.delete(&link).await?;
        Ok(false)
    }

    /// Tag `tag` of `name` was pulled: recorded (at most every
    /// `access_record_interval_ms` per tag and process) when a retention
    /// rule keeps recently pulled tags there.
    pub(crate) async fn note_tag_pull(&self, name: &RepositoryName, tag: &Tag) -> Result<()> {
        let wanted = retention::rule_for(&self.config.retention, name)
            .is_some_and(|r| r.keep_pulled_within_ms.is_some());
        if !wanted {
            return Ok(());
        }
        let now = self.host.now_unix_ms();
        let key = layout::tag_pull(name, tag);
        {
            let mut noted = self.pulls_noted.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(at) = noted.get(&key) {
                if now.saturating_sub(*at) < self.config.access_record_interval_ms {
                    return Ok(());
                }
            }
            if noted.len() >= 100_000 {
                noted.clear();
            }
            noted.insert(key.clone(), now);
        }
        self.storage
            .put(&key, Bytes::from(now.to_string()), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    /// One garbage collection; see the module's documentation.
    /// `is_mirrored` tells mirrored repositories, which are left alone.
    pub(crate) async fn collect_garbage<M: IsMirrored>(
        &self,
        opts: &GcOptions,
        is_mirrored: &M,
    ) -> Result<GcReport> {
        self.gc_longest_grace
            .fetch_max(opts.grace_ms, std::sync::atomic::Ordering::Relaxed);
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        let lease = if opts.dry_run {
            None
        } else {
            let now = self.host.now_unix_ms();
            let stamp = Stamp::encode(&self.process, now);
            match take(&*self.storage, layout::GC_LEASE, stamp.clone()).await {
                Taken::Held | Taken::Uncoordinated => {}
                Taken::Elsewhere(held) => {
                    if now.saturating_sub(Stamp::decode(held.as_deref()).at_ms) < GC_LEASE_MS {
                        report.skipped = true;
                        return Ok(report);
                    }
                    self.storage
                        .put(layout::GC_LEASE, stamp, PutMode::Overwrite)
                        .await?;
                }
            }
            Some(ReleaseOnDrop {
                storage: self.storage.clone(),
                host: self.host.clone(),
                key: layout::GC_LEASE.to_owned(),
            })
        };
        let pass = self.gc_pass(opts, is_mirrored, report).await;
        if let Some(lease) = lease {
            // Another process may have taken over a lease this pass held
            // too long: leave its lease alone.
            let ours = self.storage.read(layout::GC_LEASE).await.ok().flatten();
            if Stamp::decode(ours.as_deref()).holder == self.process.as_str() {
                lease.release().await;
            } else {
                lease.forget();
            }
        }
        let report = pass?;
        use crate::metrics::add;
        let m = &self.metrics;
        add(&m.gc_runs, 1);
        if !report.dry_run {
            add(&m.gc_deleted_blobs, report.blobs as u64);
            add(&m.gc_deleted_bytes, report.bytes);
            add(&m.gc_deleted_manifests, report.manifests as u64);
            add(&m.gc_deleted_tags, report.tags as u64);
        }
        Ok(report)
    }

    /// Rewrite the GC lease if a quarter of its lifetime has passed since
    /// `renewed_ms` (and it is still this process's), so that a long pass
    /// (a big store on a slow bucket) is never taken for a dead one: a
    /// second collector beside it would announce its own sweep over this
    /// one's. Called between the steps of a pass.
    async fn keep_gc_lease(&self, renewed_ms: &mut u64) -> Result<()> {
        let now = self.host.now_unix_ms();
        if now.saturating_sub(*renewed_ms) < GC_LEASE_MS / 4 {
            return Ok(());
        }
        let held = self.storage.read(layout::GC_LEASE).await?;
        if Stamp::decode(held.as_deref()).holder == self.process.as_str() {
            let stamp = Stamp::encode(&self.process, now);
            self.storage
                .put(layout::GC_LEASE, stamp, PutMode::Overwrite)
                .await?;
        }
        *renewed_ms = now;
        Ok(())
    }

    async fn gc_pass<M: IsMirrored>(
        &self,
        opts: &GcOptions,
        is_mirrored: &M,
        mut report: GcReport,
    ) -> Result<GcReport> {
        let now = self.host.now_unix_ms();
        let mut renewed = now;
        let pending: BTreeMap<String, u64> = self
            .storage
            .read(layout::GC_PENDING)
            .await?
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default();
        let mut manifests = ManifestRefs::default();

        let mut repos = self.list_repositories().await?;
        report.repositories = repos.keys().filter(|n| !is_mirrored(n)).count();
        self.apply_retention(&mut repos, is_mirrored, now, opts.dry_run, &mut report)
            .await?;

        let ctx = PlanContext {
            now,
            grace_ms: opts.grace_ms,
            delete_untagged: opts.delete_untagged,
            pending: &pending,
            is_mirrored,
        };
        let first = self.plan(&ctx, &repos, &mut manifests).await?;
        report.pending = first.pending_count;
        report.blobs_seen = first.blobs_seen;
        report.unreadable = first.unreadable.clone();
        if opts.dry_run {
            report.removed.extend(first.deletable);
            return Ok(report);
        }

        if first.deletable.is_empty() {
            self.remember_pending(&first.pending, &pending).await?;
            return Ok(report);
        }
        self.keep_gc_lease(&mut renewed).await?;

        // Announce what may go, then list the pushes in progress and plan
        // again from a fresh listing: anything referenced since the first
        // plan (a push, a tag), or being referenced now, is spared. The
        // order matters (`crate::store::sweep`).
        let named = first
            .deletable
            .iter()
            .filter_map(Garbage::digest)
            .map(Digest::to_string)
            .collect();
        let sweep = self.begin_sweep(named).await?;
        let in_use = self.digests_in_use().await?;
        let fresh = self.list_repositories().await?;
        let second = self.plan(&ctx, &fresh, &mut manifests).await?;
        self.keep_gc_lease(&mut renewed).await?;
        let confirmed: HashSet<&Garbage> = second.deletable.iter().collect();
        let mut doomed = Vec::new();
        for g in first.deletable {
            let used = g.digest().is_some_and(|d| in_use.contains(&d.to_string()));
            if confirmed.contains(&g) && !used {
                doomed.push(g);
            } else {
                report.spared += 1;
            }
        }

        // Manifests first, then links, then blobs: nothing is ever left
        // pointing at something already gone.
        let touched_horizon = now.saturating_sub(opts.grace_ms);
        let mut keys = Vec::new();
        let mut gone = Vec::new();
        for g in &doomed {
            let Garbage::Manifest { repository, digest } = g else {
                continue;
            };
            if self.touched_since(digest, touched_horizon) {
                report.spared += 1;
                continue;
            }
            if let Some(repo) = fresh.get(repository) {
                for (subject, referrers) in &repo.referrers {
                    if referrers.contains(digest) {
                        keys.push(layout::referrer(repository, subject, digest));
                    }
                }
            }
            keys.push(layout::manifest_revision(repository, digest));
            gone.push(g);
        }
        self.storage.delete_many(&keys).await?;
        for g in gone {
            if let Garbage::Manifest { repository, digest } = g {
                self.recent.forget(repository, digest);
            }
            report.manifests += 1;
            report.removed.push(g.clone());
        }
        let mut keys = Vec::new();
        let mut gone = Vec::new();
        for g in &doomed {
            let Garbage::Link { repository, digest } = g else {
                continue;
            };
            if self.touched_since(digest, touched_horizon) {
                report.spared += 1;
                continue;
            }
            keys.push(layout::layer_link(repository, digest));
            gone.push(g);
        }
        self.storage.delete_many(&keys).await?;
        report.links += gone.len();
        report.removed.extend(gone.into_iter().cloned());
        let blobs: Vec<(&Digest, u64)> = doomed
            .iter()
            .filter_map(|g| match g {
                Garbage::Blob { digest, size } => Some((digest, *size)),
                _ => None,
            })
            .collect();
        for batch in blobs.chunks(DELETE_BATCH) {
            self.keep_gc_lease(&mut renewed).await?;
            // Claim the batch against this process's pushes: one that
            // marked a digest since the horizon keeps it; one that marks it
            // from now on waits until the delete is over.
            let claimed: Vec<(Digest, u64)> = {
                let mut g = self.gc_guard.lock().unwrap_or_else(|p| p.into_inner());
                let mut claimed = Vec::new();
                for (d, size) in batch {
                    if g.touched.get(*d).is_some_and(|at| *at > touched_horizon) {
                        report.spared += 1;
                    } else {
                        g.deleting.insert((*d).clone());
                        claimed.push(((*d).clone(), *size));
                    }
                }
                claimed
            };
            let release = Unclaim {
                guard: &self.gc_guard,
                digests: claimed.iter().map(|(d, _)| d.clone()).collect(),
            };
            let keys: Vec<String> = claimed.iter().map(|(d, _)| layout::blob(d)).collect();
            let deleted = self.storage.delete_many(&keys).await;
            drop(release);
            deleted?;
            for (digest, size) in claimed {
                report.blobs += 1;
                report.bytes += size;
                report.removed.push(Garbage::Blob { digest, size });
            }
        }

        sweep.end().await;
        self.remember_pending(&first.pending, &pending).await?;
        Ok(report)
    }

    /// Remember, for storage without write times, when each candidate
    /// still within its grace period was first found.
    async fn remember_pending(
        &self,
        now: &BTreeMap<String, u64>,
        before: &BTreeMap<String, u64>,
    ) -> Result<()> {
        if now == before {
            return Ok(());
        }
        if now.is_empty() {
            self.storage.delete(layout::GC_PENDING).await?;
        } else {
            let raw = serde_json::to_vec(now).unwrap_or_default();
            self.storage
                .put(layout::GC_PENDING, Bytes::from(raw), PutMode::Overwrite)
                .await?;
        }
        Ok(())
    }

    /// Every key under `repositories/`, by repository, with write times.
    async fn list_repositories(&self) -> Result<BTreeMap<RepositoryName, RepoKeys>> {
        let mut repos: BTreeMap<RepositoryName, RepoKeys> = BTreeMap::new();
        for e in self.storage.list_meta("repositories/").await? {
            let Some((name, entry)) = layout::repository_entry(&e.key) else {
                continue;
            };
            let keys = repos.entry(name).or_default();
            match entry {
                Entry::Layer(d) => {
                    keys.links.insert(d, e.modified_ms);
                }
                Entry::Revision(d) => {
                    keys.revisions.insert(d, e.modified_ms);
                }
                Entry::Tag(t) => keys.tags.push((t, e.modified_ms)),
                Entry::Referrer(subject, referrer) => {
                    keys.referrers.entry(subject).or_default().push(referrer)
                }
                Entry::Pull(t) => {
                    keys.pulls.insert(t);
                }
                Entry::Other => {}
            }
        }
        Ok(repos)
    }

    /// Remove the tags retention rules do not keep (from storage unless
    /// `dry_run`, and from `repos` either way, so the plan sees them gone).
    async fn apply_retention<M: IsMirrored>(
        &self,
        repos: &mut BTreeMap<RepositoryName, RepoKeys>,
        is_mirrored: &M,
        now: u64,
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<()> {
        for (name, keys) in repos.iter_mut() {
            if is_mirrored(name) {
                continue;
            }
            let Some(rule) = retention::rule_for(&self.config.retention, name) else {
                continue;
            };
            if !rule.selects_tags() || keys.tags.is_empty() {
                continue;
            }
            let mut facts = Vec::with_capacity(keys.tags.len());
            for (tag, pushed_ms) in &keys.tags {
                let pulled_ms = if keys.pulls.contains(tag) {
                    self.storage
                        .read(&layout::tag_pull(name, tag))
                        .await?
                        .and_then(|raw| std::str::from_utf8(&raw).ok()?.trim().parse().ok())
                        .unwrap_or(0)
                } else {
                    0
                };
                facts.push(TagFacts {
                    tag: tag.clone(),
                    pushed_ms: *pushed_ms,
                    pulled_ms,
                    immutable: retention::is_immutable(&self.config.immutable_tags, name, tag),
                });
            }
            let doomed = retention::tags_to_remove(rule, &facts, now);
            for tag in &doomed {
                if !dry_run {
                    self.storage.delete(&layout::tag(name, tag)).await?;
                    self.storage.delete(&layout::tag_pull(name, tag)).await?;
                }
                report.tags += usize::from(!dry_run);
                report.removed.push(Garbage::Tag {
                    repository: name.clone(),
                    tag: tag.clone(),
                });
            }
            keys.tags.retain(|(t, _)| !doomed.contains(t));
        }
        Ok(())
    }

    /// What is deletable now, and what is unreferenced but not for long
    /// enough.
    async fn plan<M: IsMirrored>(
        &self,
        ctx: &PlanContext<'_, M>,
        repos: &BTreeMap<RepositoryName, RepoKeys>,
        manifests: &mut ManifestRefs,
    ) -> Result<Plan> {
        let mut plan = Plan::default();
        // Digests something keeps that is not being deleted: every link and
        // revision of a mirrored repository, the live ones of hosted ones.
        let mut referenced: HashSet<Digest> = HashSet::new();
        for (name, keys) in repos {
            if (ctx.is_mirrored)(name) {
                referenced.extend(keys.links.keys().cloned());
                referenced.extend(keys.revisions.keys().cloned());
                continue;
            }
            let rule = retention::rule_for(&self.config.retention, name);
            let untagged_age = rule.and_then(|r| r.untagged_older_than_ms);
            let mut roots: HashSet<Digest> = HashSet::new();
            if !ctx.delete_untagged && untagged_age.is_none() {
                roots.extend(keys.revisions.keys().cloned());
            }
            // Several reads at once: on an object store each is a round trip.
            // Built before the first await: a closure over borrowed items
            // held across it would make the future not Send.
            let reads: Vec<_> = keys
                .tags
                .iter()
                .map(|(tag, _)| {
                    let key = layout::tag(name, tag);
                    let storage = self.storage.clone();
                    async move { storage.read(&key).await }
                })
                .collect();
            let reads = futures::stream::iter(reads)
                .buffer_unordered(READS_AT_ONCE)
                .collect::<Vec<_>>()
                .await;
            for raw in reads {
                if let Some(d) = raw?.and_then(|raw| {
                    std::str::from_utf8(&raw)
                        .ok()
                        .and_then(|s| Digest::parse(s.trim()).ok())
                }) {
                    roots.insert(d);
                }
            }
            // Marking, then the candidates not deletable yet as roots too
            // (a manifest kept for now keeps what it names), until stable.
            let mut doomed_manifests: Vec<(Digest, u64)>;
            // Kept for now, across the rounds: a round's waiting manifests
            // are roots, so live, in the next.
            let mut waiting: Vec<(String, u64, u64)> = Vec::new();
            let live = loop {
                let live = self.mark(name, keys, &roots, manifests).await?;
                doomed_manifests = Vec::new();
                let mut grown = false;
                for (d, mtime) in &keys.revisions {
                    if live.manifests.contains(d) {
                        continue;
                    }
                    let key = format!("m {name}@{d}");
                    let since = ctx.since(&key, *mtime);
                    let aged = untagged_age.is_none_or(|age| {
                        let pushed = if *mtime != 0 { *mtime } else { since };
                        ctx.now.saturating_sub(pushed) >= age
                    });
                    if ctx.old_enough(since, *mtime) && aged {
                        doomed_manifests.push((d.clone(), since));
                    } else {
                        waiting.push((key, *mtime, since));
                        grown |= roots.insert(d.clone());
                    }
                }
                if !grown {
                    break live;
                }
            };
            for (key, mtime, since) in waiting {
                plan.note_pending(key, mtime, since);
            }
            if !live.unreadable.is_empty() {
                plan.unreadable
                    .extend(live.unreadable.iter().map(|d| (name.clone(), d.clone())));
            }
            for (d, since) in &doomed_manifests {
                plan.inherit(d, *since);
                plan.deletable.push(Garbage::Manifest {
                    repository: name.clone(),
                    digest: d.clone(),
                });
            }
            let kept_revisions = keys
                .revisions
                .keys()
                .filter(|d| !doomed_manifests.iter().any(|(x, _)| x == *d));
            referenced.extend(kept_revisions.cloned());
            for (d, mtime) in &keys.links {
                // A repository with a live manifest that could not be read
                // keeps every link: what that manifest names is unknown.
                if live.blobs.contains(d) || !live.unreadable.is_empty() {
                    referenced.insert(d.clone());
                    continue;
                }
                let key = format!("l {name}@{d}");
                let since = ctx.since(&key, *mtime);
                if ctx.old_enough(since, *mtime) {
                    plan.inherit(d, since);
                    plan.deletable.push(Garbage::Link {
                        repository: name.clone(),
                        digest: d.clone(),
                    });
                } else {
                    plan.note_pending(key, *mtime, since);
                    referenced.insert(d.clone());
                }
            }
        }
        for e in self.storage.list_meta("blobs/").await? {
            let Some(d) = layout::blob_digest(&e.key) else {
                continue;
            };
            plan.blobs_seen += 1;
            if referenced.contains(&d) {
                continue;
            }
            let key = format!("b {d}");
            // Unreferenced since its last references did, when storage
            // cannot say when it was written.
            let since = match plan.inherited.get(&d) {
                Some(at) if e.modified_ms == 0 && !ctx.pending.contains_key(&key) => *at,
                _ => ctx.since(&key, e.modified_ms),
            };
            if ctx.old_enough(since, e.modified_ms) {
                plan.deletable.push(Garbage::Blob {
                    digest: d,
                    size: e.size,
                });
            } else {
                plan.note_pending(key, e.modified_ms, since);
            }
        }
        Ok(plan)
    }

    /// The manifests reachable in `name` from `roots` (an index's
    /// children, the referrers of a live manifest) and the blobs they name.
    async fn mark(
        &self,
        name: &RepositoryName,
        keys: &RepoKeys,
        roots: &HashSet<Digest>,
        manifests: &mut ManifestRefs,
    ) -> Result<Live> {
        let mut live = Live::default();
        let mut queue: Vec<Digest> = roots
            .iter()
            .filter(|d| keys.revisions.contains_key(*d))
            .cloned()
            .collect();
        while !queue.is_empty() {
            // Read the whole wave's manifests at once, then walk them.
            let wave: Vec<Digest> = std::mem::take(&mut queue)
                .into_iter()
                .filter(|d| !live.manifests.contains(d))
                .collect();
            manifests.prefetch(self, name, &wave).await?;
            for d in wave {
                if !live.manifests.insert(d.clone()) {
                    continue;
                }
                if let Some(referrers) = keys.referrers.get(&d) {
                    queue.extend(
                        referrers
                            .iter()
                            .filter(|r| keys.revisions.contains_key(*r))
                            .cloned(),
                    );
                }
                match manifests.get(self, name, &d).await? {
                    Some(refs) => {
                        live.blobs.extend(refs.blobs.iter().cloned());
                        queue.extend(
                            refs.children
                                .iter()
                                .filter(|c| keys.revisions.contains_key(*c))
                                .cloned(),
                        );
                    }
                    None => live.unreadable.push(d),
                }
            }
        }
        Ok(live)
    }
}

/// The keys of one repository.
#[derive(Default)]
struct RepoKeys {
    /// Tags and their write times.
    tags: Vec<(Tag, u64)>,
    /// Manifest revisions and their write times.
    revisions: HashMap<Digest, u64>,
    /// Blob links and their write times.
    links: HashMap<Digest, u64>,
    /// Subject → the manifests referring to it.
    referrers: HashMap<Digest, Vec<Digest>>,
    /// Tags with a recorded pull.
    pulls: HashSet<Tag>,
}

/// Which repositories are mirrored (the registry knows; hosted code does
/// not depend on the mirror). `Sync` natively, so that a collection's
/// future is `Send`; nothing on wasm32.
pub(crate) trait IsMirrored: Fn(&RepositoryName) -> bool + crate::MaybeSync {}
impl<T: Fn(&RepositoryName) -> bool + crate::MaybeSync> IsMirrored for T {}

struct PlanContext<'a, M> {
    now: u64,
    grace_ms: u64,
    delete_untagged: bool,
    pending: &'a BTreeMap<String, u64>,
    is_mirrored: &'a M,
}

impl<M: IsMirrored> PlanContext<'_, M> {
    /// Since when the candidate `key`, written at `mtime` (0: unknown), has
    /// been unreferenced: as a previous pass recorded it, else since it
    /// was written, else from now.
    fn since(&self, key: &str, mtime: u64) -> u64 {
        match self.pending.get(key) {
            Some(first) => (*first).max(mtime),
            None if mtime != 0 => mtime,
            None => self.now,
        }
    }

    fn old_enough(&self, since: u64, mtime: u64) -> bool {
        let age = |t: u64| self.now.saturating_sub(t) >= self.grace_ms;
        age(since) && (mtime == 0 || age(mtime))
    }
}

#[derive(Default)]
struct Plan {
    deletable: Vec<Garbage>,
    /// Candidates within their grace period on storage without write
    /// times, and since when (the next pass's `pending`).
    pending: BTreeMap<String, u64>,
    /// Candidates within their grace period.
    pending_count: usize,
    /// Digests whose deleted references had been unreferenced since when.
    inherited: HashMap<Digest, u64>,
    blobs_seen: usize,
    unreadable: Vec<(RepositoryName, Digest)>,
}

impl Plan {
    /// A reference to `d` unreferenced since `since` is deleted: the
    /// blob has been unreferenced at least since then if nothing else
    /// references it.
    fn inherit(&mut self, d: &Digest, since: u64) {
        let at = self.inherited.entry(d.clone()).or_insert(since);
        *at = (*at).max(since);
    }

    fn note_pending(&mut self, key: String, mtime: u64, since: u64) {
        // Write times say it all where storage keeps them: only what it
        // cannot tell is remembered.
        if mtime == 0 {
            self.pending.insert(key, since);
        } else {
            self.pending.remove(&key);
        }
        self.pending_count += 1;
    }
}

#[derive(Default)]
struct Live {
    manifests: HashSet<Digest>,
    blobs: HashSet<Digest>,
    unreadable: Vec<Digest>,
}

/// What a manifest names, read once per collection (manifests never
/// change under their digest).
#[derive(Default)]
struct ManifestRefs {
    known: HashMap<Digest, Option<Arc<Refs>>>,
}

struct Refs {
    /// An index's manifests.
    children: Vec<Digest>,
    /// A manifest's config and layers.
    blobs: Vec<Digest>,
}

impl ManifestRefs {
    /// Read the manifests of `digests` not known yet, several at once.
    async fn prefetch<S: Storage, H: Host>(
        &mut self,
        store: &Store<S, H>,
        name: &RepositoryName,
        digests: &[Digest],
    ) -> Result<()> {
        let unknown: Vec<&Digest> = digests
            .iter()
            .filter(|d| !self.known.contains_key(*d))
            .collect();
        // Owned and built before the first await, so that the future is
        // Send whatever borrows them.
        let reads: Vec<_> = unknown
            .into_iter()
            .map(|d| {
                let (storage, name, d) = (store.storage.clone(), name.clone(), d.clone());
                async move {
                    let refs = Self::read(storage, &name, &d).await;
                    (d, refs)
                }
            })
            .collect();
        let read = futures::stream::iter(reads)
            .buffer_unordered(READS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        for (d, refs) in read {
            // Unreadable is not remembered: the next look may succeed.
            if let Some(refs) = refs? {
                self.known.insert(d, Some(refs));
            }
        }
        Ok(())
    }

    async fn read<S: Storage>(
        storage: Arc<S>,
        name: &RepositoryName,
        d: &Digest,
    ) -> Result<Option<Arc<Refs>>> {
        let (revision, blob) = (layout::manifest_revision(name, d), layout::blob(d));
        let (media_type, bytes) = futures::try_join!(storage.read(&revision), storage.read(&blob))?;
        let media_type = media_type.and_then(|b| String::from_utf8(b.to_vec()).ok());
        Ok(bytes.and_then(|bytes| {
            manifest::parse(&bytes, media_type.as_deref())
                .ok()
                .map(|m| {
                    Arc::new(Refs {
                        children: m.manifests.iter().map(|c| c.digest.clone()).collect(),
                        blobs: m
                            .config
                            .iter()
                            .chain(m.layers.iter())
                            .map(|b| b.digest.clone())
                            .collect(),
                    })
                })
        }))
    }

    async fn get<S: Storage, H: Host>(
        &mut self,
        store: &Store<S, H>,
        name: &RepositoryName,
        d: &Digest,
    ) -> Result<Option<Arc<Refs>>> {
        if let Some(known) = self.known.get(d) {
            return Ok(known.clone());
        }
        let refs = Self::read(store.storage.clone(), name, d).await?;
        // Unreadable is not remembered: the next look may succeed.
        if refs.is_some() {
            self.known.insert(d.clone(), refs.clone());
        }
        Ok(refs)
    }
}
