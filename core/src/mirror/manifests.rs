//! Mirrored manifests: digests are immutable and served from storage; tags
//! are trusted for their TTL, then revalidated with a `HEAD`, served stale
//! when the upstream fails; concurrent misses share one upstream fetch.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::channel::oneshot;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, StatusCode};

use super::lease::{take, ReleaseOnDrop, Stamp, Taken};
use super::{mark, mark_stale, Mirror, MirrorTarget};
use crate::config::STALE_DEADLINE_MS;
use crate::error::UpstreamError;
use crate::error::{ErrorCode, RegistryError};
use crate::io::body::{self, Body, CollectError};
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage};
use crate::metrics::{self};
use crate::model::digest::Digest;
use crate::model::manifest;
use crate::model::reference::{Reference, RepositoryName, Tag};
use crate::store::layout;
use crate::store::memo::CachedTag;
use crate::store::{manifest_unknown, Result};
use crate::wire::response::{set, Response};
use crate::wire::{self};

/// How long a process waits for another's check of a tag before it asks
/// the upstream itself.
const TAG_CHECK_WAIT_MS: u64 = crate::config::STALE_DEADLINE_MS + 2_000;

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct TagCache {
    pub(super) digest: Digest,
    pub(super) checked_ms: u64,
}

impl<S: Storage, H: Host, F: Fetch> Mirror<'_, S, H, F> {
    /// A `HEAD` of a manifest the cache has never seen is answered with an
    /// upstream `HEAD` (free of Docker Hub's pull limit, where a `GET`
    /// counts), storing nothing. `None` when the cache knows the reference:
    /// the usual path answers it (and revalidates a tag with a `HEAD`).
    pub(super) async fn cold_manifest_head(
        &self,
        t: &MirrorTarget<F, H>,
        reference: &Reference,
        head: bool,
    ) -> Result<Option<Response<S::Body>>> {
        if !head {
            return Ok(None);
        }
        let known = match reference {
            Reference::Digest(d) => {
                self.store.recent.manifest(&t.local, d).is_some()
                    || self
                        .store
                        .storage
                        .head(&layout::manifest_revision(&t.local, d))
                        .await?
                        .is_some()
            }
            Reference::Tag(tag) => self.tag_cache(&t.local, tag).await?.is_some(),
        };
        if known {
            return Ok(None);
        }
        let upstream = t
            .upstream
            .manifest(&t.remote, &reference.to_string(), Method::HEAD)
            .await
            .map_err(|e| self.upstream_failure(t, e, ErrorCode::ManifestUnknown))?;
        let h = upstream.headers();
        let digest = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => wire::header(h, wire::CONTENT_DIGEST_HEADER)
                .and_then(|d| Digest::parse(d.trim()).ok()),
        };
        let (Some(digest), Some(media_type), Some(len)) = (
            digest,
            wire::header(h, "content-type"),
            wire::header(h, "content-length"),
        ) else {
            // Without the digest, type and size there is nothing to answer
            // with: fetch the manifest as for a GET.
            return Ok(None);
        };
        // A HEAD must not promise what a GET would refuse.
        let max = self.store.config.max_manifest_size;
        if len.trim().parse::<u64>().is_ok_and(|n| n > max as u64) {
            return Err(self.bad_gateway(
                t,
                format!("manifest larger than {max} bytes (Content-Length {len})"),
            ));
        }
        let mut resp = crate::wire::response::response(StatusCode::OK, Body::Empty);
        let out = resp.headers_mut();
        set(out, CONTENT_TYPE, media_type);
        set(out, CONTENT_LENGTH, len);
        set(out, wire::CONTENT_DIGEST_HEADER, &digest.to_string());
        set(out, http::header::ETAG, &format!("\"{digest}\""));
        Ok(Some(mark(resp, "miss")))
    }

    pub(super) async fn mirror_manifest(
        &self,
        t: &MirrorTarget<F, H>,
        reference: &Reference,
    ) -> Result<Response<S::Body>> {
        match reference {
            Reference::Digest(d) => {
                let mut fetched = false;
                loop {
                    if self.store.recent.manifest(&t.local, d).is_some()
                        || self
                            .store
                            .storage
                            .head(&layout::manifest_revision(&t.local, d))
                            .await?
                            .is_some()
                    {
                        let resp = self.store.get_manifest(&t.local, reference).await?;
                        return Ok(mark(resp, if fetched { "miss" } else { "hit" }));
                    }
                    match self
                        .mirrors
                        .manifest_flights
                        .join(format!("{}@{d}", t.local))
                    {
                        Joined::Follower(rx) => {
                            // The leader's failure is ours too; its success
                            // (or its leaving) sends us back to storage.
                            if let Ok(Some(Err(e))) = self.follow_leader(rx).await {
                                return Err(e);
                            }
                        }
                        Joined::Leader(lead) => {
                            let fetched_now =
                                self.fetch_manifest(t, &d.to_string(), Some(d), None).await;
                            lead.finish(fetched_now.as_ref().map(|_| ()));
                            fetched_now?;
                            fetched = true;
                        }
                    }
                }
            }
            Reference::Tag(tag) => {
                let ttl = t.upstream.config.tag_ttl_ms;
                let max_stale = t.upstream.config.max_stale_ms;
                let mut waited = false;
                loop {
                    let mut cached = self.tag_cache(&t.local, tag).await?;
                    let now = self.store.host.now_unix_ms();
                    if cached
                        .as_ref()
                        .is_some_and(|c| now.saturating_sub(c.checked_ms) >= ttl)
                    {
                        // Memory may be behind another process on the same
                        // storage that checked the tag since.
                        if let Some(stored) = self.stored_tag_cache(&t.local, tag).await? {
                            if cached
                                .as_ref()
                                .is_some_and(|c| stored.checked_ms > c.checked_ms)
                            {
                                self.remember_tag(&t.local, tag, &stored);
                                cached = Some(stored);
                            }
                        }
                    }
                    if let Some(c) = &cached {
                        let age = now.saturating_sub(c.checked_ms);
                        if age < ttl {
                            let resp = self.store.manifest_response(&t.local, &c.digest, reference);
                            return Ok(mark(resp.await?, "hit"));
                        }
                        // Another request just tried the upstream and failed.
                        if waited && age <= max_stale {
                            return self.stale(t, reference).await;
                        }
                    }
                    match self
                        .mirrors
                        .manifest_flights
                        .join(format!("{}:{tag}", t.local))
                    {
                        Joined::Follower(rx) => {
                            match self.follow_leader(rx).await {
                                // The leader's answer is everyone's: a tag
                                // deleted upstream is gone for all of them.
                                Ok(Some(Err(e))) => return Err(e),
                                // The leader got an answer: fresh in storage,
                                // or it served stale and so do we.
                                Ok(Some(Ok(()))) => waited = true,
                                // The leader's client left before an answer:
                                // someone asks again.
                                Ok(None) | Err(_) => waited = false,
                            }
                        }
                        Joined::Leader(lead) => {
                            let answer = self.check_tag_once(t, tag, cached).await;
                            lead.finish(answer.as_ref().map(|_| ()));
                            return answer;
                        }
                    }
                }
            }
        }
    }

    /// Count the join, then wait for what the leader sends: woken by it
    /// where the host allows, else polled on the host's timer (see
    /// `Host::wakes_across_requests`).
    async fn follow_leader(
        &self,
        mut rx: oneshot::Receiver<Outcome>,
    ) -> Result<Outcome, oneshot::Canceled> {
        metrics::inc(&self.store.metrics.singleflight_joins);
        let host = &self.store.host;
        if host.wakes_across_requests() {
            return rx.await;
        }
        let mut pause = 5;
        loop {
            if let Some(outcome) = rx.try_recv()? {
                return Ok(outcome);
            }
            host.sleep(pause).await;
            pause = (pause * 2).min(200);
        }
    }

    pub(super) async fn tag_cache(
        &self,
        local: &RepositoryName,
        tag: &Tag,
    ) -> Result<Option<TagCache>> {
        if let Some(c) = self.store.recent.tag(local, tag) {
            return Ok(Some(TagCache {
                digest: c.digest,
                checked_ms: c.checked_ms,
            }));
        }
        let c = self.stored_tag_cache(local, tag).await?;
        if let Some(c) = &c {
            self.remember_tag(local, tag, c);
        }
        Ok(c)
    }

    /// The tag's record in storage, as the last process to check it left it.
    pub(super) async fn stored_tag_cache(
        &self,
        local: &RepositoryName,
        tag: &Tag,
    ) -> Result<Option<TagCache>> {
        let Some(raw) = self
            .store
            .storage
            .read(&layout::tag_cache(local, tag))
            .await?
        else {
            return Ok(None);
        };
        let Ok(c) = serde_json::from_slice::<TagCache>(&raw) else {
            return Ok(None);
        };
        // The tag may have been written by an older fill; trust only a
        // complete chain tag -> revision.
        if self
            .store
            .storage
            .head(&layout::manifest_revision(local, &c.digest))
            .await?
            .is_none()
        {
            return Ok(None);
        }
        Ok(Some(c))
    }

    /// Ask the upstream about `tag` (see `revalidate_tag`), unless another
    /// process sharing the storage is asking it now: then wait for its
    /// answer to land in storage, and ask only if none comes.
    async fn check_tag_once(
        &self,
        t: &MirrorTarget<F, H>,
        tag: &Tag,
        cached: Option<TagCache>,
    ) -> Result<Response<S::Body>> {
        let storage = &self.store.storage;
        let host = &self.store.host;
        let key = layout::tag_check(&t.local, tag);
        let start = host.now_unix_ms();
        let since = cached.as_ref().map_or(0, |c| c.checked_ms);
        match take(&**storage, &key, Stamp::encode(&self.store.process, start)).await {
            Taken::Held => {
                // Released however the check ends, even if its request is
                // dropped half way (its client hung up).
                let lease = ReleaseOnDrop {
                    storage: storage.clone(),
                    host: host.clone(),
                    key,
                };
                // Another process may have checked (and released its lease)
                // since this request read the record.
                if let Some(c) = self.fresher_tag_check(t, tag, since).await? {
                    lease.release().await;
                    return self.answer_checked_tag(t, tag, &c).await;
                }
                let answer = self.revalidate_tag(t, tag, cached).await;
                lease.release().await;
                return answer;
            }
            Taken::Uncoordinated => return self.revalidate_tag(t, tag, cached).await,
            Taken::Elsewhere(stamp) => {
                let stamp = Stamp::decode(stamp.as_deref());
                let stamped = stamp.at_ms;
                // This process's own requests share one check already: a
                // lease of ours is left by a leader whose client hung up.
                let own = stamp.holder == self.store.process.as_str();
                let mut pause = 10;
                loop {
                    let now = host.now_unix_ms();
                    // A holder that went away (killed) left its lease.
                    if own
                        || now.saturating_sub(stamped) > 2 * TAG_CHECK_WAIT_MS
                        || now.saturating_sub(start) > TAG_CHECK_WAIT_MS
                    {
                        let _ = storage.delete(&key).await;
                        break;
                    }
                    host.sleep(pause).await;
                    pause = (pause * 3 / 2).min(200);
                    if let Some(c) = self.fresher_tag_check(t, tag, since).await? {
                        return self.answer_checked_tag(t, tag, &c).await;
                    }
                    if storage.head(&key).await?.is_none() {
                        // Released: its record may have landed since the
                        // read above. If not, the upstream failed the check
                        // (or dropped the tag): ask for ourselves.
                        if let Some(c) = self.fresher_tag_check(t, tag, since).await? {
                            return self.answer_checked_tag(t, tag, &c).await;
                        }
                        break;
                    }
                }
            }
        }
        self.revalidate_tag(t, tag, cached).await
    }

    /// The stored record of `tag`'s last check, if it is newer than
    /// `since_ms` (another process checked it meanwhile).
    async fn fresher_tag_check(
        &self,
        t: &MirrorTarget<F, H>,
        tag: &Tag,
        since_ms: u64,
    ) -> Result<Option<TagCache>> {
        Ok(self
            .stored_tag_cache(&t.local, tag)
            .await?
            .filter(|c| c.checked_ms > since_ms))
    }

    /// Serve `tag` as another process's check `c` found it.
    async fn answer_checked_tag(
        &self,
        t: &MirrorTarget<F, H>,
        tag: &Tag,
        c: &TagCache,
    ) -> Result<Response<S::Body>> {
        self.remember_tag(&t.local, tag, c);
        let reference = Reference::Tag(tag.clone());
        let resp = self
            .store
            .manifest_response(&t.local, &c.digest, &reference);
        Ok(mark(resp.await?, "hit"))
    }

    pub(super) fn remember_tag(&self, local: &RepositoryName, tag: &Tag, c: &TagCache) {
        self.store.recent.put_tag(
            local,
            tag,
            CachedTag {
                digest: c.digest.clone(),
                checked_ms: c.checked_ms,
            },
        );
    }

    pub(super) async fn revalidate_tag(
        &self,
        t: &MirrorTarget<F, H>,
        tag: &Tag,
        cached: Option<TagCache>,
    ) -> Result<Response<S::Body>> {
        let reference = Reference::Tag(tag.clone());
        let now = self.store.host.now_unix_ms();
        let Some(cached) = cached else {
            self.fetch_manifest(t, tag.as_str(), None, Some(tag))
                .await?;
            return Ok(mark(
                self.store.get_manifest(&t.local, &reference).await?,
                "miss",
            ));
        };
        let stale_ok = now.saturating_sub(cached.checked_ms) <= t.upstream.config.max_stale_ms;
        if !stale_ok {
            return self.ask_upstream_for_tag(t, tag, &cached, false).await;
        }
        // With a stale answer in hand, a hung or known-down upstream costs
        // at most STALE_DEADLINE_MS.
        if t.upstream.known_down().is_some() {
            metrics::inc(&self.store.metrics.upstream_errors);
            return self.stale(t, &reference).await;
        }
        let ask = Box::pin(self.ask_upstream_for_tag(t, tag, &cached, true));
        let raced = futures::future::select(ask, self.store.host.sleep(STALE_DEADLINE_MS)).await;
        match raced {
            futures::future::Either::Left((answer, _)) => answer,
            futures::future::Either::Right(((), _)) => {
                t.upstream.mark_down();
                metrics::inc(&self.store.metrics.upstream_errors);
                self.store.host.warn(&format!(
                    "upstream {}: no answer for {} within {STALE_DEADLINE_MS} ms; serving it stale",
                    t.upstream.config.name, t.remote
                ));
                self.stale(t, &reference).await
            }
        }
    }

    /// Revalidate a cached tag with a `HEAD`, fetching the manifest again
    /// if it moved.
    pub(super) async fn ask_upstream_for_tag(
        &self,
        t: &MirrorTarget<F, H>,
        tag: &Tag,
        cached: &TagCache,
        stale_ok: bool,
    ) -> Result<Response<S::Body>> {
        let reference = Reference::Tag(tag.clone());
        match t
            .upstream
            .manifest(&t.remote, tag.as_str(), Method::HEAD)
            .await
        {
            Ok(resp) => {
                let upstream_digest = wire::header(resp.headers(), wire::CONTENT_DIGEST_HEADER)
                    .and_then(|d| Digest::parse(d.trim()).ok());
                if upstream_digest.as_ref() == Some(&cached.digest) {
                    match self.store.get_manifest(&t.local, &reference).await {
                        Ok(resp) => {
                            self.write_tag_cache(&t.local, tag, &cached.digest).await?;
                            return Ok(mark(resp, "revalidated"));
                        }
                        // The stored tag or manifest went away behind this
                        // process's back (`kura fsck --repair`, a lost
                        // file): fetch it again below.
                        Err(e) if e.code == ErrorCode::ManifestUnknown => {}
                        Err(e) => return Err(e),
                    }
                }
                match self.fetch_manifest(t, tag.as_str(), None, Some(tag)).await {
                    Ok(_) => Ok(mark(
                        self.store.get_manifest(&t.local, &reference).await?,
                        "miss",
                    )),
                    Err(e) if stale_ok && e.code == ErrorCode::Unavailable => {
                        self.stale(t, &reference).await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) if e.allows_stale() && stale_ok => self.stale(t, &reference).await,
            Err(UpstreamError::NotFound) => Err(manifest_unknown(&t.remote, &reference)),
            Err(e) => Err(self.upstream_failure(t, e, ErrorCode::ManifestUnknown)),
        }
    }

    pub(super) async fn stale(
        &self,
        t: &MirrorTarget<F, H>,
        reference: &Reference,
    ) -> Result<Response<S::Body>> {
        let resp = self.store.get_manifest(&t.local, reference).await?;
        Ok(mark_stale(resp, t))
    }

    pub(super) async fn write_tag_cache(
        &self,
        local: &RepositoryName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<()> {
        let c = TagCache {
            digest: digest.clone(),
            checked_ms: self.store.host.now_unix_ms(),
        };
        let json = serde_json::to_vec(&c).expect("tag cache serializes");
        self.store
            .storage
            .put(
                &layout::tag_cache(local, tag),
                json.into(),
                PutMode::Overwrite,
            )
            .await?;
        self.remember_tag(local, tag, &c);
        Ok(())
    }

    /// Fetch a manifest from upstream, verify it, store it. A manifest whose
    /// bytes do not match the digest asked for or announced is refused.
    pub(super) async fn fetch_manifest(
        &self,
        t: &MirrorTarget<F, H>,
        reference: &str,
        expected: Option<&Digest>,
        tag: Option<&Tag>,
    ) -> Result<Digest> {
        let resp = t
            .upstream
            .manifest(&t.remote, reference, Method::GET)
            .await
            .map_err(|e| self.upstream_failure(t, e, ErrorCode::ManifestUnknown))?;
        let content_type = wire::header(resp.headers(), "content-type").map(str::to_owned);
        let announced =
            wire::header(resp.headers(), wire::CONTENT_DIGEST_HEADER).map(|d| d.trim().to_owned());
        let max = self.store.config.max_manifest_size;
        // Refused before a byte is read when the upstream says how big it
        // is; else the read stops at the limit. Either way the connection
        // is dropped, not drained.
        if let Some(len) = wire::header(resp.headers(), "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| *n > max as u64)
        {
            return Err(self.bad_gateway(
                t,
                format!("manifest larger than {max} bytes (Content-Length {len})"),
            ));
        }
        let bytes = body::collect_limited(F::body_stream(resp.into_body()), max)
            .await
            .map_err(|e| match e {
                CollectError::TooLarge => {
                    self.bad_gateway(t, format!("manifest larger than {max} bytes"))
                }
                CollectError::Io(e) => {
                    self.bad_gateway(t, format!("reading the manifest failed: {e}"))
                }
            })?;
        let lying = |what: String| self.bad_gateway(t, what);
        let digest = match expected {
            Some(d) => {
                let actual = Digest::compute(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(lying(format!("manifest {d} has digest {actual}")));
                }
                actual
            }
            None => Digest::sha256(&bytes),
        };
        if let Some(a) = announced {
            let a =
                Digest::parse(&a).map_err(|_| lying(format!("bad Docker-Content-Digest {a:?}")))?;
            if a.algorithm() == digest.algorithm() && a != digest {
                return Err(lying(format!("announced {a}, sent {digest}")));
            }
        }
        let parsed = manifest::parse(&bytes, content_type.as_deref())
            .map_err(|e| self.bad_gateway(t, format!("invalid manifest: {e}")))?;
        let tags = tag.map(std::slice::from_ref).unwrap_or_default();
        self.store
            .store_manifest(&t.local, &digest, bytes, &parsed, tags)
            .await?;
        if let Some(tag) = tag {
            self.write_tag_cache(&t.local, tag, &digest).await?;
        }
        Ok(digest)
    }
}

/// What a leader tells its followers: `Some(Ok)` it got an answer (look at
/// storage again), `Some(Err)` the answer is this error, `None` it left
/// before an answer (its client hung up): ask again.
pub(super) type Outcome = Option<Result<(), RegistryError>>;

#[derive(Default)]
pub(super) struct Flights {
    pub(super) waiting: Mutex<HashMap<String, Vec<oneshot::Sender<Outcome>>>>,
}

pub(super) enum Joined<'a> {
    Leader(Lead<'a>),
    Follower(oneshot::Receiver<Outcome>),
}

/// Held by the one request doing the upstream work; dropping it wakes the
/// followers with the outcome given to [`Lead::finish`], or with none if
/// the leader was cancelled.
pub(super) struct Lead<'a> {
    pub(super) flights: &'a Flights,
    pub(super) key: String,
    pub(super) outcome: Outcome,
}

impl Lead<'_> {
    pub(super) fn finish<T>(mut self, outcome: Result<T, &RegistryError>) {
        self.outcome = Some(outcome.map(|_| ()).map_err(Clone::clone));
    }
}

impl Flights {
    pub(super) fn join(&self, key: String) -> Joined<'_> {
        let mut map = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&key) {
            Some(waiters) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                Joined::Follower(rx)
            }
            None => {
                map.insert(key.clone(), Vec::new());
                Joined::Leader(Lead {
                    flights: self,
                    key,
                    outcome: None,
                })
            }
        }
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let waiters = self
            .flights
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key)
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(self.outcome.clone());
        }
    }
}
