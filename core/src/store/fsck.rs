//! Checking storage against what the layout promises: the work behind
//! `kura fsck`.
//!
//! Three steps, so that a host verifies blobs with whatever parallelism it
//! has: [`crate::Registry::fsck_inventory`] lists the store; the host runs
//! [`verify_blob`] on every [`Inventory::blobs`] entry (in any order, as
//! many at once as it likes); [`crate::Registry::fsck_check`] reads links,
//! tags and manifests against those verdicts and says what is damaged, what
//! was left over by interrupted work and what is merely worth knowing.
//! [`crate::Registry::fsck_repair`] then removes only what is provably
//! garbage or corrupt.
//!
//! What counts as damage differs between hosted and mirrored repositories:
//! a mirror's layer blobs come and go (eviction deletes them, the next pull
//! fills them again), so a mirrored link without its blob is normal, while
//! a hosted one is lost data. Manifests are never evicted, so a tag or a
//! manifest revision without its bytes is damage in both.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use futures::StreamExt;

use crate::io::host::Host;
use crate::io::storage::{ListEntry, Storage};
use crate::model::digest::{Digest, Hasher};
use crate::model::manifest;
use crate::model::reference::{RepositoryName, Tag};
use crate::model::upload::{UploadId, UploadState};
use crate::store::layout;
use crate::store::{Result, Store};

/// Everything [`crate::Registry::fsck_check`] looks at, listed once.
#[derive(Debug, Default)]
pub struct Inventory {
    blobs: Vec<(Digest, u64)>,
    strays: Vec<String>,
    repositories: Vec<ListEntry>,
    uploads: Vec<ListEntry>,
}

impl Inventory {
    /// Every blob in the store and its size, to verify with [`verify_blob`].
    pub fn blobs(&self) -> &[(Digest, u64)] {
        &self.blobs
    }

    /// The bytes of every blob together.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, size)| size).sum()
    }
}

/// What reading a blob back found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCheck {
    /// Its bytes hash to its digest.
    Intact,
    /// Its bytes hash to something else.
    Corrupt {
        /// What they hash to.
        actual: Digest,
    },
    /// Gone since it was listed (deleted by a process sharing the store).
    Missing,
    /// Storage failed to read it.
    Unreadable(String),
}

/// Read blob `digest` back from storage and hash it.
pub async fn verify_blob<S: Storage>(storage: &S, digest: &Digest) -> BlobCheck {
    let body = match storage.get(&layout::blob(digest), None).await {
        Ok(Some((_, body))) => body,
        Ok(None) => return BlobCheck::Missing,
        Err(e) => return BlobCheck::Unreadable(e.to_string()),
    };
    let mut stream = S::body_stream(body);
    let mut hasher = Hasher::new(digest.algorithm());
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => hasher.update(&bytes),
            Err(e) => return BlobCheck::Unreadable(e.to_string()),
        }
    }
    let actual = hasher.finish();
    if &actual == digest {
        BlobCheck::Intact
    } else {
        BlobCheck::Corrupt { actual }
    }
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth knowing; nothing is wrong (an orphan blob, an evicted layer).
    Note,
    /// Left by interrupted work (a crash, an abandoned upload): takes
    /// space, serves nothing wrong.
    Leftover,
    /// Wrong bytes, or something acknowledged that is gone.
    Damage,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Note => "note",
            Severity::Leftover => "leftover",
            Severity::Damage => "DAMAGE",
        })
    }
}

/// What is wrong, naming every object by its digest or name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A blob whose bytes do not hash to its digest.
    CorruptBlob {
        /// The blob.
        digest: Digest,
        /// What its bytes hash to.
        actual: Digest,
    },
    /// A blob storage could not read.
    UnreadableBlob {
        /// The blob.
        digest: Digest,
        /// Storage's error.
        error: String,
    },
    /// A manifest revision whose bytes are not a valid manifest.
    BadManifest {
        /// The repository.
        repository: RepositoryName,
        /// The manifest.
        digest: Digest,
        /// Why it does not parse.
        error: String,
    },
    /// A manifest revision whose bytes are gone (or corrupt).
    DanglingRevision {
        /// The repository.
        repository: RepositoryName,
        /// The manifest.
        digest: Digest,
    },
    /// A tag that names no stored manifest of its repository.
    DanglingTag {
        /// The repository.
        repository: RepositoryName,
        /// The tag.
        tag: Tag,
        /// What it points at; `None` when it does not hold a digest.
        digest: Option<Digest>,
    },
    /// A hosted manifest's config or layer, linked in its repository, whose
    /// bytes are gone.
    MissingReference {
        /// The repository.
        repository: RepositoryName,
        /// The manifest.
        manifest: Digest,
        /// The blob it needs.
        digest: Digest,
    },
    /// A hosted manifest's config or layer that its repository does not
    /// link: pulls of the manifest fail with `BLOB_UNKNOWN` (a client
    /// deleted the blob from the repository, or it was lost).
    UnlinkedReference {
        /// The repository.
        repository: RepositoryName,
        /// The manifest.
        manifest: Digest,
        /// The blob it needs.
        digest: Digest,
    },
    /// A repository's link to a blob whose bytes are gone: lost data in a
    /// hosted repository, an evicted layer in a mirrored one.
    DanglingLayerLink {
        /// The repository.
        repository: RepositoryName,
        /// The blob.
        digest: Digest,
    },
    /// A referrers entry for a manifest the repository does not have.
    DanglingReferrer {
        /// The repository.
        repository: RepositoryName,
        /// The manifest referred to.
        subject: Digest,
        /// The referrer that is gone.
        referrer: Digest,
    },
    /// An upload session or cache-fill spool nobody finished.
    InterruptedUpload {
        /// The session.
        id: UploadId,
        /// Bytes it holds.
        bytes: u64,
        /// Since its last write, ms (0 if storage does not say).
        idle_ms: u64,
        /// A cache fill's spool rather than a client's upload.
        fill: bool,
    },
    /// The lease of a cache fill that nobody has renewed for two lease
    /// lifetimes: its filler died.
    AbandonedFillLease {
        /// The repository.
        repository: RepositoryName,
        /// The blob that was being filled.
        digest: Digest,
        /// Since it was last written, ms.
        idle_ms: u64,
    },
    /// An object under `blobs/` or `repositories/` that is not part of the
    /// layout (written by something other than kura).
    StrayObject,
    /// A blob that no repository links or references.
    OrphanBlob {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CorruptBlob { digest, actual } => {
                write!(f, "blob {digest} is corrupt: its bytes hash to {actual}")
            }
            Problem::UnreadableBlob { digest, error } => {
                write!(f, "blob {digest} cannot be read: {error}")
            }
            Problem::BadManifest {
                repository,
                digest,
                error,
            } => write!(f, "{repository}@{digest} is not a valid manifest: {error}"),
            Problem::DanglingRevision { repository, digest } => {
                write!(f, "{repository}@{digest}: the manifest's bytes are missing")
            }
            Problem::DanglingTag {
                repository,
                tag,
                digest: Some(d),
            } => write!(f, "{repository}:{tag} points at {d}, which is not stored"),
            Problem::DanglingTag {
                repository,
                tag,
                digest: None,
            } => write!(f, "{repository}:{tag} does not hold a digest"),
            Problem::MissingReference {
                repository,
                manifest,
                digest,
            } => write!(
                f,
                "{repository}@{manifest} needs blob {digest}, whose bytes are missing"
            ),
            Problem::UnlinkedReference {
                repository,
                manifest,
                digest,
            } => write!(
                f,
                "{repository}@{manifest} needs blob {digest}, which {repository} does not link"
            ),
            Problem::DanglingLayerLink { repository, digest } => {
                write!(
                    f,
                    "{repository} links blob {digest}, whose bytes are missing"
                )
            }
            Problem::DanglingReferrer {
                repository,
                subject,
                referrer,
            } => write!(
                f,
                "{repository}: referrer {referrer} of {subject} is not stored"
            ),
            Problem::InterruptedUpload {
                id,
                bytes,
                idle_ms,
                fill,
            } => write!(
                f,
                "{} {id}: {bytes} bytes, idle {}s",
                if *fill {
                    "interrupted cache fill"
                } else {
                    "unfinished upload"
                },
                idle_ms / 1000
            ),
            Problem::AbandonedFillLease {
                repository,
                digest,
                idle_ms,
            } => write!(
                f,
                "abandoned fill of {repository}@{digest} (idle {}s)",
                idle_ms / 1000
            ),
            Problem::StrayObject => f.write_str("not part of kura's layout"),
            Problem::OrphanBlob { digest, size } => {
                write!(f, "blob {digest} ({size} bytes) is in no repository")
            }
        }
    }
}

/// One thing [`crate::Registry::fsck_check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// What it is.
    pub problem: Problem,
    /// The storage key it is about.
    pub key: String,
    /// Whether [`crate::Registry::fsck_repair`] removed it.
    pub repaired: bool,
}

/// What a check found, with counts of what it looked at.
#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    /// Everything found, damage first.
    pub findings: Vec<Finding>,
    /// Blobs verified.
    pub blobs: usize,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Repositories with anything stored.
    pub repositories: usize,
    /// Manifest revisions read and parsed.
    pub manifests: usize,
    /// Tags followed.
    pub tags: usize,
}

impl FsckReport {
    /// Findings of `severity` not repaired.
    pub fn remaining(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity && !f.repaired)
            .count()
    }

    /// Findings repaired.
    pub fn repaired(&self) -> usize {
        self.findings.iter().filter(|f| f.repaired).count()
    }
}

/// Options of a check and its repair.
#[derive(Debug, Clone)]
pub struct FsckOptions {
    /// Upload sessions idle longer than this are abandoned: repair deletes
    /// them. Shorter ones may have a client coming back.
    pub stale_upload_ms: u64,
}

impl Default for FsckOptions {
    fn default() -> Self {
        FsckOptions {
            stale_upload_ms: 24 * 3600 * 1000,
        }
    }
}

/// The parts of a repository's keys that the check reads.
#[derive(Default)]
struct RepositoryKeys {
    layers: BTreeMap<Digest, String>,
    revisions: BTreeMap<Digest, String>,
    tags: Vec<(Tag, String)>,
    referrers: Vec<(Digest, Digest, String)>,
    fills: Vec<(Digest, ListEntry)>,
}

/// The name a key under `repositories/` belongs to and the rest of the key
/// after `/_`. Name components cannot start with `_`, so the first `/_`
/// ends the name.
fn split_repository_key(key: &str) -> Option<(RepositoryName, &str)> {
    let rest = key.strip_prefix("repositories/")?;
    let at = rest.find("/_")?;
    let name = RepositoryName::parse(&rest[..at]).ok()?;
    Some((name, &rest[at + 2..]))
}

/// `<alg>/<hex>` as a digest.
fn path_digest(tail: &str) -> Option<Digest> {
    let (alg, hex) = tail.split_once('/')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

/// `<alg>-<hex>` as a digest.
fn dashed_digest(tail: &str) -> Option<Digest> {
    let (alg, hex) = tail.split_once('-')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

impl<S: Storage, H: Host> Store<S, H> {
    pub(crate) async fn fsck_inventory(&self) -> Result<Inventory> {
        let mut inventory = Inventory::default();
        for entry in self.storage.list_meta("blobs/").await? {
            match layout::blob_digest(&entry.key) {
                Some(d) => inventory.blobs.push((d, entry.size)),
                None => inventory.strays.push(entry.key),
            }
        }
        inventory.repositories = self.storage.list_meta("repositories/").await?;
        inventory.uploads = self.storage.list_meta(layout::UPLOADS_PREFIX).await?;
        Ok(inventory)
    }

    pub(crate) async fn fsck_check(
        &self,
        inventory: Inventory,
        verdicts: &HashMap<Digest, BlobCheck>,
        is_mirrored: impl Fn(&RepositoryName) -> bool,
    ) -> Result<FsckReport> {
        let now = self.host.now_unix_ms();
        let mut findings = Vec::new();
        let (mut manifests, mut tags) = (0, 0);
        let mut found = |severity, problem, key: String| {
            findings.push(Finding {
                severity,
                problem,
                key,
                repaired: false,
            })
        };

        // Blobs whose bytes are right, and those stored wrong: each wrong
        // one is reported once, here, not again by whatever points at it.
        let mut intact: HashMap<Digest, u64> = HashMap::new();
        let mut damaged: HashSet<Digest> = HashSet::new();
        for (digest, size) in &inventory.blobs {
            let key = layout::blob(digest);
            match verdicts.get(digest) {
                Some(BlobCheck::Intact) => {
                    intact.insert(digest.clone(), *size);
                }
                Some(BlobCheck::Corrupt { actual }) => {
                    damaged.insert(digest.clone());
                    found(
                        Severity::Damage,
                        Problem::CorruptBlob {
                            digest: digest.clone(),
                            actual: actual.clone(),
                        },
                        key,
                    )
                }
                Some(BlobCheck::Unreadable(error)) => {
                    damaged.insert(digest.clone());
                    found(
                        Severity::Damage,
                        Problem::UnreadableBlob {
                            digest: digest.clone(),
                            error: error.clone(),
                        },
                        key,
                    )
                }
                // Deleted since the listing (eviction in a running kura);
                // not verified: not there.
                Some(BlobCheck::Missing) | None => {}
            }
        }
        let stored = |d: &Digest| intact.contains_key(d) || damaged.contains(d);
        let blobs_checked = inventory.blobs.len();
        let bytes_checked = inventory.blob_bytes();
        for key in inventory.strays {
            found(Severity::Note, Problem::StrayObject, key);
        }

        let mut repositories: BTreeMap<RepositoryName, RepositoryKeys> = BTreeMap::new();
        for entry in inventory.repositories {
            let Some((name, tail)) = split_repository_key(&entry.key) else {
                found(Severity::Note, Problem::StrayObject, entry.key);
                continue;
            };
            let keys = repositories.entry(name).or_default();
            if let Some(rest) = tail.strip_prefix("layers/") {
                if let Some(d) = path_digest(rest) {
                    keys.layers.insert(d, entry.key);
                    continue;
                }
            } else if let Some(rest) = tail.strip_prefix("manifests/revisions/") {
                if let Some(d) = path_digest(rest) {
                    keys.revisions.insert(d, entry.key);
                    continue;
                }
            } else if let Some(rest) = tail.strip_prefix("manifests/tags/") {
                if let Ok(t) = Tag::parse(rest) {
                    keys.tags.push((t, entry.key));
                    continue;
                }
            } else if let Some(rest) = tail.strip_prefix("referrers/") {
                let parsed = rest.rsplit_once('/').and_then(|(subject, referrer)| {
                    Some((path_digest(subject)?, dashed_digest(referrer)?))
                });
                if let Some((subject, referrer)) = parsed {
                    keys.referrers.push((subject, referrer, entry.key));
                    continue;
                }
            } else if let Some(rest) = tail.strip_prefix("fills/") {
                if let Some(d) = path_digest(rest) {
                    keys.fills.push((d, entry));
                    continue;
                }
            } else if tail.starts_with("cache/") {
                // Mirror bookkeeping (tag check times, tag lists, leases of
                // tag checks): rebuilt from upstream when wrong.
                continue;
            }
            found(Severity::Note, Problem::StrayObject, entry.key);
        }

        // Blobs some repository links or some manifest references.
        let mut referenced: BTreeSet<Digest> = BTreeSet::new();
        let lease_dead_ms = 2 * self.config.fill_lease_ms;
        for (name, keys) in &repositories {
            let mirrored = is_mirrored(name);
            referenced.extend(keys.layers.keys().cloned());
            referenced.extend(keys.revisions.keys().cloned());
            for (digest, key) in &keys.revisions {
                if damaged.contains(digest) {
                    continue;
                }
                if !stored(digest) {
                    found(
                        Severity::Damage,
                        Problem::DanglingRevision {
                            repository: name.clone(),
                            digest: digest.clone(),
                        },
                        key.clone(),
                    );
                    continue;
                }
                let media_type = self.storage.read(key).await?;
                let media_type = media_type
                    .as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .map(str::to_owned);
                let Some(bytes) = self.storage.read(&layout::blob(digest)).await? else {
                    continue; // deleted since verified
                };
                manifests += 1;
                let parsed = match manifest::parse(&bytes, media_type.as_deref()) {
                    Ok(m) => m,
                    Err(e) => {
                        found(
                            Severity::Damage,
                            Problem::BadManifest {
                                repository: name.clone(),
                                digest: digest.clone(),
                                error: e.to_string(),
                            },
                            key.clone(),
                        );
                        continue;
                    }
                };
                for d in parsed.required_blobs() {
                    referenced.insert(d.digest.clone());
                    // A mirror fills layers on demand; a hosted repository
                    // had them all linked when the manifest was pushed.
                    if mirrored {
                        continue;
                    }
                    let problem = if !keys.layers.contains_key(&d.digest) {
                        Problem::UnlinkedReference {
                            repository: name.clone(),
                            manifest: digest.clone(),
                            digest: d.digest.clone(),
                        }
                    } else if !stored(&d.digest) {
                        Problem::MissingReference {
                            repository: name.clone(),
                            manifest: digest.clone(),
                            digest: d.digest.clone(),
                        }
                    } else {
                        continue;
                    };
                    found(Severity::Damage, problem, key.clone());
                }
                referenced.extend(parsed.manifests.iter().map(|d| d.digest.clone()));
            }
            for (tag, key) in &keys.tags {
                tags += 1;
                let raw = self.storage.read(key).await?;
                let Some(raw) = raw else { continue };
                let digest = std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|s| Digest::parse(s.trim()).ok());
                let points_at_manifest = digest
                    .as_ref()
                    .is_some_and(|d| keys.revisions.contains_key(d) && stored(d));
                if !points_at_manifest {
                    found(
                        Severity::Damage,
                        Problem::DanglingTag {
                            repository: name.clone(),
                            tag: tag.clone(),
                            digest,
                        },
                        key.clone(),
                    );
                }
            }
            for (digest, key) in &keys.layers {
                if !stored(digest) {
                    found(
                        if mirrored {
                            Severity::Note
                        } else {
                            Severity::Damage
                        },
                        Problem::DanglingLayerLink {
                            repository: name.clone(),
                            digest: digest.clone(),
                        },
                        key.clone(),
                    );
                }
            }
            for (subject, referrer, key) in &keys.referrers {
                if !keys.revisions.contains_key(referrer) {
                    found(
                        if mirrored {
                            Severity::Note
                        } else {
                            Severity::Damage
                        },
                        Problem::DanglingReferrer {
                            repository: name.clone(),
                            subject: subject.clone(),
                            referrer: referrer.clone(),
                        },
                        key.clone(),
                    );
                }
            }
            for (digest, entry) in &keys.fills {
                let idle_ms = now.saturating_sub(entry.modified_ms);
                if entry.modified_ms != 0 && idle_ms > lease_dead_ms {
                    found(
                        Severity::Leftover,
                        Problem::AbandonedFillLease {
                            repository: name.clone(),
                            digest: digest.clone(),
                            idle_ms,
                        },
                        entry.key.clone(),
                    );
                }
            }
        }

        // Upload sessions and fill spools, whole sessions at a time.
        let mut sessions: BTreeMap<UploadId, (u64, u64)> = BTreeMap::new();
        for entry in &inventory.uploads {
            match layout::upload_of(&entry.key) {
                Some(id) => {
                    let s = sessions.entry(id).or_default();
                    s.0 += entry.size;
                    s.1 = s.1.max(entry.modified_ms);
                }
                None => found(Severity::Note, Problem::StrayObject, entry.key.clone()),
            }
        }
        for (id, (bytes, modified_ms)) in sessions {
            let state = self.storage.read(&layout::upload_state(&id)).await?;
            let state = state.as_deref().and_then(UploadState::decode);
            let last = state
                .as_ref()
                .map_or(modified_ms, |s| s.updated_ms.max(modified_ms));
            found(
                Severity::Leftover,
                Problem::InterruptedUpload {
                    bytes,
                    idle_ms: if last == 0 {
                        0
                    } else {
                        now.saturating_sub(last)
                    },
                    fill: state.as_ref().is_some_and(|s| s.fill),
                    id: id.clone(),
                },
                layout::upload_dir(&id),
            );
        }

        for (digest, size) in &intact {
            if !referenced.contains(digest) {
                found(
                    Severity::Note,
                    Problem::OrphanBlob {
                        digest: digest.clone(),
                        size: *size,
                    },
                    layout::blob(digest),
                );
            }
        }

        findings.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.key.cmp(&b.key)));
        Ok(FsckReport {
            findings,
            blobs: blobs_checked,
            blob_bytes: bytes_checked,
            repositories: repositories.len(),
            manifests,
            tags,
        })
    }

    /// Remove what the check proved garbage or corrupt, marking each
    /// finding removed. Everything is looked at again right before it goes,
    /// so work done since the check (a fill committing the right bytes, a
    /// fill renewing its lease, a client resuming an upload) wins.
    pub(crate) async fn fsck_repair(
        &self,
        report: &mut FsckReport,
        options: &FsckOptions,
        is_mirrored: impl Fn(&RepositoryName) -> bool,
    ) -> Result<()> {
        let now = self.host.now_unix_ms();
        let lease_dead_ms = 2 * self.config.fill_lease_ms;
        for finding in &mut report.findings {
            let removed = match &finding.problem {
                // Wrong bytes can never be served: without them a mirror
                // fills the blob again, a client pushes it again.
                Problem::CorruptBlob { digest, .. } => {
                    if matches!(
                        verify_blob(&*self.storage, digest).await,
                        BlobCheck::Corrupt { .. }
                    ) {
                        self.storage.delete(&finding.key).await?;
                        true
                    } else {
                        false
                    }
                }
                // A mirror's tag or manifest without bytes is cache
                // metadata: without it the next pull asks the upstream.
                // A hosted one stays, naming what was lost.
                Problem::DanglingTag {
                    repository, tag, ..
                } if is_mirrored(repository) => {
                    // Read again: a pull may have stored the manifest and
                    // moved the tag since the check.
                    let still = self.tag_dangles(repository, &finding.key).await?;
                    if still {
                        self.storage.delete(&finding.key).await?;
                        self.storage
                            .delete(&layout::tag_cache(repository, tag))
                            .await?;
                    }
                    still
                }
                Problem::DanglingRevision { repository, digest } if is_mirrored(repository) => {
                    let gone = self.storage.head(&layout::blob(digest)).await?.is_none();
                    if gone {
                        self.storage.delete(&finding.key).await?;
                    }
                    gone
                }
                // An index entry for a manifest that is not there.
                Problem::DanglingReferrer {
                    repository,
                    referrer,
                    ..
                } => {
                    let rev = layout::manifest_revision(repository, referrer);
                    if self.storage.head(&rev).await?.is_none() {
                        self.storage.delete(&finding.key).await?;
                        true
                    } else {
                        false
                    }
                }
                Problem::AbandonedFillLease { .. } => {
                    let fresh = self
                        .storage
                        .list_meta(&finding.key)
                        .await?
                        .into_iter()
                        .find(|e| e.key == finding.key);
                    match fresh {
                        Some(e) if now.saturating_sub(e.modified_ms) > lease_dead_ms => {
                            self.storage.delete(&finding.key).await?;
                            true
                        }
                        Some(_) => false,
                        None => true,
                    }
                }
                Problem::InterruptedUpload { id, .. } => {
                    self.remove_if_stale(id, options.stale_upload_ms, now)
                        .await?
                }
                _ => false,
            };
            finding.repaired = removed;
        }
        Ok(())
    }

    /// Whether the tag at `key` (still) names no stored manifest of
    /// `repository`.
    async fn tag_dangles(&self, repository: &RepositoryName, key: &str) -> Result<bool> {
        let Some(raw) = self.storage.read(key).await? else {
            return Ok(false);
        };
        let Some(digest) = std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| Digest::parse(s.trim()).ok())
        else {
            return Ok(true);
        };
        let revision = layout::manifest_revision(repository, &digest);
        Ok(self.storage.head(&revision).await?.is_none()
            || self.storage.head(&layout::blob(&digest)).await?.is_none())
    }

    /// Delete upload session `id` if it has been idle for `max_age_ms` (a
    /// fill's spool: if its filler stopped renewing it), read afresh.
    /// Whether it is gone.
    async fn remove_if_stale(&self, id: &UploadId, max_age_ms: u64, now: u64) -> Result<bool> {
        let entries = self.storage.list_meta(&layout::upload_dir(id)).await?;
        if entries.is_empty() {
            return Ok(true);
        }
        if self
            .uploads_writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
        {
            return Ok(false);
        }
        let newest = entries.iter().map(|e| e.modified_ms).max().unwrap_or(0);
        let state = self.storage.read(&layout::upload_state(id)).await?;
        let state = state.as_deref().and_then(UploadState::decode);
        let last = state.as_ref().map_or(newest, |s| s.updated_ms.max(newest));
        let limit = match &state {
            Some(s) if s.fill => max_age_ms.min(2 * self.config.fill_lease_ms),
            _ => max_age_ms,
        };
        if last != 0 && now.saturating_sub(last) > limit {
            self.remove_upload(id).await?;
            return Ok(true);
        }
        Ok(false)
    }
}
