//! The pull-through cache: which upstream a request belongs to, and the
//! policy for serving it.
//!
//! - Content addressed by digest is immutable: once verified and stored it
//!   is served from storage.
//! - Tags are trusted for the upstream's `tag_ttl_ms`, then revalidated with
//!   a HEAD (free of Docker Hub's pull quota); the manifest is fetched again
//!   only when the digest changed.
//! - When the upstream fails (down, 5xx, 429), cached tags are served up to
//!   `max_stale_ms` old, marked with a `Warning` header.
//! - Concurrent misses share one upstream fetch. A blob fill runs as its own
//!   task (it completes even if every client leaves), spools into the upload
//!   area in fixed-size chunks, and every client follows it: from storage
//!   for spooled chunks, from memory for the unspooled tail. Memory is one
//!   chunk per blob being filled, whatever the blob size or client count.
//! - Nothing becomes visible under a digest before its bytes verified; the
//!   last byte is held back from clients until then, so a lying or
//!   truncated upstream yields a broken response, never a complete wrong
//!   blob.

pub(crate) mod edge;
pub(crate) mod upstream;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use futures::StreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, WARNING};
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};

use crate::config::STALE_DEADLINE_MS;
use crate::error::{ErrorCode, RegistryError};
use crate::io::body::{self, Body, ByteStream, CollectError};
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage};
use crate::metrics::{self, Metrics};
use crate::mirror::upstream::{Upstream, UpstreamConfig, UpstreamError};
use crate::model::digest::{self, Digest, Hasher};
use crate::model::manifest;
use crate::model::reference::{Reference, RepositoryName, Tag};
use crate::model::upload::{UploadId, UploadState};
use crate::store::layout;
use crate::store::memo::CachedTag;
use crate::store::{error_stream, join_objects, manifest_unknown, Result, Store};
use crate::wire::response::{blob_response, satisfiable_range, set, Response};
use crate::wire::{self, Route};

/// Spooled chunk size on backends that cannot append (one object per
/// chunk): the most memory one blob fill holds.
const SPOOL_CHUNK: usize = 8 * 1024 * 1024;
/// Write size on backends that can append (one growing object).
const APPEND_CHUNK: usize = 512 * 1024;

/// Names the upstream a mirrored response came from (its configured name,
/// such as `docker.io`).
pub const OCI_NAMESPACE_HEADER: &str = "oci-namespace";
/// Says how a mirrored response was served: `hit`, `miss`, `revalidated`
/// or `stale`.
pub const CACHE_HEADER: &str = "x-kura-cache";

/// The mirror at work on one request: the storage it shares with hosted
/// repositories, and the upstreams with what is known about them.
pub(crate) struct Mirror<'a, S, H, F> {
    pub(crate) store: &'a Store<S, H>,
    pub(crate) mirrors: &'a Mirrors<F, H>,
}

/// The configured upstreams and the fills in progress.
pub(crate) struct Mirrors<F, H> {
    upstreams: Vec<Arc<Upstream<F, H>>>,
    default: Option<usize>,
    /// When mirrored blobs were last used, for eviction.
    recency: Recency,
    /// Recent upstream 404s and until when they stand (host clock).
    missing: Mutex<HashMap<MissingKey, u64>>,
    manifest_flights: Flights,
    /// Fills by the repository (as stored) they fill for and the digest:
    /// a fill started for one repository is never followed by a request for
    /// another, which the upstream may not let have the blob.
    blob_flights: Arc<Mutex<HashMap<FlightKey, Arc<BlobFlight>>>>,
}

type FlightKey = (RepositoryName, Digest);

/// Where a mirrored request goes.
pub struct MirrorTarget<F, H> {
    /// The upstream the repository is mirrored from.
    pub upstream: Arc<Upstream<F, H>>,
    /// The name the upstream knows (`library/alpine`).
    pub remote: RepositoryName,
    /// The name kura stores it under (`docker.io/library/alpine`).
    pub local: RepositoryName,
}

impl<F: Fetch, H: Host> Mirrors<F, H> {
    pub(crate) fn none() -> Self {
        Mirrors {
            upstreams: Vec::new(),
            default: None,
            recency: Recency::default(),
            missing: Mutex::default(),
            manifest_flights: Flights::default(),
            blob_flights: Arc::default(),
        }
    }

    pub(crate) fn new(
        fetch: Arc<F>,
        host: Arc<H>,
        metrics: Arc<Metrics>,
        configs: Vec<UpstreamConfig>,
        default: Option<String>,
    ) -> Result<Self, UpstreamError> {
        let mut upstreams = Vec::new();
        for c in configs {
            // The name doubles as a path prefix and a storage key component.
            if c.name.contains('/') || RepositoryName::parse(&c.name).is_err() {
                return Err(UpstreamError::Invalid(format!(
                    "upstream name {:?} must be one lowercase name component such as docker.io",
                    c.name
                )));
            }
            if upstreams
                .iter()
                .any(|u: &Arc<Upstream<F, H>>| u.config.name == c.name)
            {
                return Err(UpstreamError::Invalid(format!(
                    "upstream {:?} configured twice",
                    c.name
                )));
            }
            upstreams.push(Arc::new(Upstream::new(
                c,
                fetch.clone(),
                host.clone(),
                metrics.clone(),
            )?));
        }
        let default = match default {
            None => None,
            Some(d) => Some(
                upstreams
                    .iter()
                    .position(|u| u.config.name == d)
                    .ok_or_else(|| {
                        UpstreamError::Invalid(format!("default upstream {d:?} is not configured"))
                    })?,
            ),
        };
        Ok(Mirrors {
            upstreams,
            default,
            recency: Recency::default(),
            missing: Mutex::default(),
            manifest_flights: Flights::default(),
            blob_flights: Arc::default(),
        })
    }

    fn lock_missing(&self) -> std::sync::MutexGuard<'_, HashMap<MissingKey, u64>> {
        self.missing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn by_name(&self, name: &str) -> Option<&Arc<Upstream<F, H>>> {
        self.upstreams.iter().find(|u| u.config.name == name)
    }

    /// Whether `local`, a repository name as stored, holds mirrored content:
    /// [`Mirrors::target`] stores every mirrored repository as
    /// `<upstream>/<name upstream>`, so that and only that shape is a
    /// mirror's. A hosted repository named just `docker.io` is not.
    pub(crate) fn is_mirrored_local(&self, local: &RepositoryName) -> bool {
        match local.as_str().split_once('/') {
            Some((first, rest)) => !rest.is_empty() && self.by_name(first).is_some(),
            None => false,
        }
    }

    /// Route a repository name to an upstream: `?ns=<registry>`, then a
    /// `<registry>/` prefix, then the default upstream. `None` means
    /// hosted. Only configured upstreams are ever contacted.
    pub(crate) fn target(
        &self,
        name: &RepositoryName,
        uri: &Uri,
    ) -> Result<Option<MirrorTarget<F, H>>> {
        if self.upstreams.is_empty() {
            return Ok(None);
        }
        let not_mirrored = |ns: &str| {
            RegistryError::new(
                ErrorCode::NameUnknown,
                format!("registry {ns:?} is not mirrored here"),
            )
            .with_status(StatusCode::NOT_FOUND)
        };
        let (upstream, remote) = if let Some(ns) = wire::query_param(uri, "ns") {
            let ns = ns?;
            (
                self.by_name(&ns).ok_or_else(|| not_mirrored(&ns))?,
                name.clone(),
            )
        } else {
            let (first, rest) = name.as_str().split_once('/').unwrap_or((name.as_str(), ""));
            match self.by_name(first) {
                Some(u) if !rest.is_empty() => (u, RepositoryName::parse(rest)?),
                // A first component with a dot names a registry host.
                None if first.contains('.') && !rest.is_empty() => return Err(not_mirrored(first)),
                _ => match self.default {
                    Some(i) => (&self.upstreams[i], name.clone()),
                    None => return Ok(None),
                },
            }
        };
        let local = RepositoryName::parse(&format!(
            "{}/{}",
            upstream.config.name,
            upstream.config.upstream_name(remote.as_str())
        ))?;
        Ok(Some(MirrorTarget {
            upstream: upstream.clone(),
            remote,
            local,
        }))
    }
}

/// What the upstream recently said does not exist (404), per repository
/// as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MissingKey {
    Manifest(RepositoryName, Reference),
    Blob(RepositoryName, Digest),
}

/// Most 404s remembered at once; past it, expired ones are dropped, then
/// all (a flood of made-up names must not grow memory).
const MISSING_MAX: usize = 10_000;

impl<S: Storage, H: Host, F: Fetch> Mirror<'_, S, H, F> {
    /// The 404 to answer for `key` without asking the upstream, if it said
    /// 404 within its `not_found_ttl_ms` and the content has not been stored
    /// since (content by digest can arrive through another reference).
    async fn known_missing(&self, key: &MissingKey) -> Result<Option<RegistryError>> {
        let now = self.store.host.now_unix_ms();
        let remembered = {
            let mut missing = self.mirrors.lock_missing();
            match missing.get(key) {
                Some(&until) if until > now => true,
                Some(_) => {
                    missing.remove(key);
                    false
                }
                None => false,
            }
        };
        if !remembered {
            return Ok(None);
        }
        let stored = match key {
            MissingKey::Manifest(local, Reference::Digest(d)) => self
                .store
                .storage
                .head(&layout::manifest_revision(local, d))
                .await?
                .is_some(),
            MissingKey::Blob(local, d) => self
                .store
                .storage
                .head(&layout::layer_link(local, d))
                .await?
                .is_some(),
            // The upstream's word on a tag stands until it expires.
            MissingKey::Manifest(_, Reference::Tag(_)) => false,
        };
        if stored {
            self.mirrors.lock_missing().remove(key);
            return Ok(None);
        }
        metrics::inc(&self.store.metrics.not_found_cached);
        Ok(Some(match key {
            MissingKey::Manifest(local, r) => manifest_unknown(local, r),
            MissingKey::Blob(_, d) => RegistryError::new(
                ErrorCode::BlobUnknown,
                format!("blob {d} not found upstream"),
            ),
        }))
    }

    fn remember_missing(&self, key: MissingKey, ttl_ms: u64) {
        if ttl_ms == 0 {
            return;
        }
        let now = self.store.host.now_unix_ms();
        let mut missing = self.mirrors.lock_missing();
        if missing.len() >= MISSING_MAX {
            missing.retain(|_, until| *until > now);
            if missing.len() >= MISSING_MAX {
                missing.clear();
            }
        }
        missing.insert(key, now.saturating_add(ttl_ms));
    }
}

/// Largest upstream tag list page read (Docker Hub answers some
/// repositories with thousands of tags in one page).
const TAG_LIST_LIMIT: usize = 16 * 1024 * 1024;

/// One page of a mirrored tag list, as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct TagListCache {
    checked_ms: u64,
    tags: Vec<String>,
    /// The `n` (if the upstream gave one) and `last` of the next page.
    next: Option<(Option<usize>, String)>,
}

/// `n` and `last` from an upstream's `Link: <…?n=…&last=…>; rel="next"`.
fn next_page(link: &str) -> Option<(Option<usize>, String)> {
    let inner = link.split_once('<')?.1.split_once('>')?;
    if !inner.1.contains("next") {
        return None;
    }
    let uri: Uri = inner.0.parse().ok()?;
    let last = wire::query_param(&uri, "last")?.ok()?;
    let n = wire::query_param(&uri, "n").and_then(|v| v.ok()?.parse().ok());
    Some((n, last))
}

/// The tag list answer for `requested` (the name as the client wrote it),
/// with a `Link` to the next page through this registry.
fn tag_list_response<B>(
    requested: &RepositoryName,
    page: &TagListCache,
    ns: Option<&str>,
) -> Response<B> {
    let body = serde_json::json!({ "name": requested.as_str(), "tags": page.tags });
    let mut resp = crate::wire::response::json_response(StatusCode::OK, body.to_string().into());
    if let Some((n, last)) = &page.next {
        let mut query = Vec::new();
        if let Some(n) = n {
            query.push(format!("n={n}"));
        }
        query.push(format!("last={}", wire::percent_encode(last)));
        if let Some(ns) = ns {
            query.push(format!("ns={}", wire::percent_encode(ns)));
        }
        set(
            resp.headers_mut(),
            http::header::LINK,
            &format!(
                "</v2/{requested}/tags/list?{}>; rel=\"next\"",
                query.join("&")
            ),
        );
    }
    resp
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TagCache {
    digest: Digest,
    checked_ms: u64,
}

impl<S: Storage, H: Host, F: Fetch> Mirror<'_, S, H, F> {
    pub(crate) async fn dispatch(
        &self,
        route: Route,
        t: MirrorTarget<F, H>,
        parts: &http::request::Parts,
    ) -> Result<Response<S::Body>> {
        let m = &parts.method;
        let read = *m == Method::GET || *m == Method::HEAD;
        let route_kind = route.clone();
        let missing = match &route {
            Route::Manifest(_, r) if read => Some(MissingKey::Manifest(t.local.clone(), r.clone())),
            Route::Blob(_, d) if read => Some(MissingKey::Blob(t.local.clone(), d.clone())),
            _ => None,
        };
        if let Some(key) = &missing {
            if let Some(e) = self.known_missing(key).await? {
                return Err(e);
            }
        }
        let answer = match route {
            Route::Manifest(_, r) if read => {
                match self.cold_manifest_head(&t, &r, *m == Method::HEAD).await {
                    Ok(Some(resp)) => Ok(resp),
                    Ok(None) => self.mirror_manifest(&t, &r).await,
                    Err(e) => Err(e),
                }
            }
            Route::Blob(_, d) if read => {
                let range =
                    wire::header(&parts.headers, "range").filter(|r| wire::single_byte_range(r));
                self.mirror_blob(&t, &d, range, *m == Method::HEAD).await
            }
            _ => Err(RegistryError::internal("not a manifest or blob read")),
        };
        if let (Some(key), Err(e)) = (missing, &answer) {
            if e.status == StatusCode::NOT_FOUND {
                self.remember_missing(key, t.upstream.config.not_found_ttl_ms);
            }
        }
        let mut resp = match route_kind.clone() {
            Route::Manifest(..) | Route::Blob(..) if read => answer?,
            Route::Tags(ref name) if read => self.mirror_tags(&t, name, &parts.uri).await?,
            Route::Referrers(_, d) if read => self.mirror_referrers(&t, &d, &parts.uri).await?,
            _ => {
                return Err(RegistryError::new(
                    ErrorCode::Unsupported,
                    format!(
                        "{} is a read-only mirror of {}",
                        t.remote, t.upstream.config.name
                    ),
                )
                .with_header(http::header::ALLOW, "GET, HEAD"))
            }
        };
        set(
            resp.headers_mut(),
            HeaderName::from_static(OCI_NAMESPACE_HEADER),
            &t.upstream.config.name,
        );
        self.count_cache_outcome(&resp, *m == Method::HEAD);
        if let (Route::Manifest(..), Body::Full(bytes)) = (&route_kind, resp.body()) {
            // A client that pulls a manifest uses its layers, even the
            // ones it already has and will not fetch.
            if let Some(d) = wire::header(resp.headers(), wire::CONTENT_DIGEST_HEADER)
                .and_then(|d| Digest::parse(d).ok())
            {
                self.record_manifest_use(&d, bytes).await;
            }
        }
        Ok(resp)
    }

    fn count_cache_outcome(&self, resp: &Response<S::Body>, head: bool) {
        let how = resp
            .headers()
            .get(CACHE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let blob = resp
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v == "application/octet-stream");
        let m = &self.store.metrics;
        match (how, blob) {
            ("hit", true) => {
                metrics::inc(&m.blob_hits);
                if !head {
                    let len = wire::header(resp.headers(), "content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    metrics::add(&m.bytes_from_cache, len);
                }
            }
            ("miss", true) => metrics::inc(&m.blob_misses),
            ("hit", false) => metrics::inc(&m.manifest_hits),
            ("miss", false) => metrics::inc(&m.manifest_misses),
            ("revalidated", _) => metrics::inc(&m.manifest_revalidations),
            ("stale", _) => metrics::inc(&m.stale_served),
            _ => {}
        }
    }

    /// An upstream failure as the client sees it, counted.
    pub(crate) fn upstream_failure(&self, e: UpstreamError, unknown: ErrorCode) -> RegistryError {
        if !matches!(e, UpstreamError::NotFound) {
            metrics::inc(&self.store.metrics.upstream_errors);
            // The details (addresses, URLs, the upstream's words) are for
            // the operator; the client learns what kind of failure it was.
            self.store
                .host
                .warn(&format!("upstream request failed: {e}"));
        }
        upstream_failure(e, unknown)
    }

    /// The upstream sent something no registry should (a manifest too big,
    /// cut short, malformed, or not matching its digest): a 502, the
    /// details logged.
    fn bad_gateway(&self, t: &MirrorTarget<F, H>, what: String) -> RegistryError {
        metrics::inc(&self.store.metrics.upstream_errors);
        let name = &t.upstream.config.name;
        self.store
            .host
            .warn(&format!("upstream {name} ({}): {what}", t.remote));
        RegistryError::new(
            ErrorCode::Unavailable,
            format!("upstream {name} sent an invalid response: {what}"),
        )
        .with_status(StatusCode::BAD_GATEWAY)
    }

    // ----- manifests -------------------------------------------------------

    /// A `HEAD` of a manifest the cache has never seen is answered with an
    /// upstream `HEAD` (free of Docker Hub's pull limit, where a `GET`
    /// counts), storing nothing. `None` when the cache knows the reference:
    /// the usual path answers it (and revalidates a tag with a `HEAD`).
    async fn cold_manifest_head(
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
            .map_err(|e| self.upstream_failure(e, ErrorCode::ManifestUnknown))?;
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
        let mut resp = crate::wire::response::response(StatusCode::OK, Body::Empty);
        let out = resp.headers_mut();
        set(out, CONTENT_TYPE, media_type);
        set(out, CONTENT_LENGTH, len);
        set(out, wire::CONTENT_DIGEST_HEADER, &digest.to_string());
        set(out, http::header::ETAG, &format!("\"{digest}\""));
        Ok(Some(mark(resp, "miss")))
    }

    async fn mirror_manifest(
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
                            metrics::inc(&self.store.metrics.singleflight_joins);
                            // The leader's failure is ours too; its success
                            // (or its leaving) sends us back to storage.
                            if let Ok(Some(Err(e))) = rx.await {
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
                    let cached = self.tag_cache(&t.local, tag).await?;
                    let now = self.store.host.now_unix_ms();
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
                            metrics::inc(&self.store.metrics.singleflight_joins);
                            match rx.await {
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
                            let answer = self.revalidate_tag(t, tag, cached).await;
                            lead.finish(answer.as_ref().map(|_| ()));
                            return answer;
                        }
                    }
                }
            }
        }
    }

    async fn tag_cache(&self, local: &RepositoryName, tag: &Tag) -> Result<Option<TagCache>> {
        if let Some(c) = self.store.recent.tag(local, tag) {
            return Ok(Some(TagCache {
                digest: c.digest,
                checked_ms: c.checked_ms,
            }));
        }
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
        self.remember_tag(local, tag, &c);
        Ok(Some(c))
    }

    fn remember_tag(&self, local: &RepositoryName, tag: &Tag, c: &TagCache) {
        self.store.recent.put_tag(
            local,
            tag,
            CachedTag {
                digest: c.digest.clone(),
                checked_ms: c.checked_ms,
            },
        );
    }

    async fn revalidate_tag(
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
    async fn ask_upstream_for_tag(
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
                    self.write_tag_cache(&t.local, tag, &cached.digest).await?;
                    return Ok(mark(
                        self.store.get_manifest(&t.local, &reference).await?,
                        "revalidated",
                    ));
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
            Err(e) => Err(self.upstream_failure(e, ErrorCode::ManifestUnknown)),
        }
    }

    async fn stale(
        &self,
        t: &MirrorTarget<F, H>,
        reference: &Reference,
    ) -> Result<Response<S::Body>> {
        let resp = self.store.get_manifest(&t.local, reference).await?;
        Ok(mark_stale(resp, t))
    }

    async fn write_tag_cache(
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
    async fn fetch_manifest(
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
            .map_err(|e| self.upstream_failure(e, ErrorCode::ManifestUnknown))?;
        let content_type = wire::header(resp.headers(), "content-type").map(str::to_owned);
        let announced =
            wire::header(resp.headers(), wire::CONTENT_DIGEST_HEADER).map(|d| d.trim().to_owned());
        let bytes = body::collect_limited(
            F::body_stream(resp.into_body()),
            self.store.config.max_manifest_size,
        )
        .await
        .map_err(|e| match e {
            CollectError::TooLarge => self.bad_gateway(
                t,
                format!(
                    "manifest larger than {} bytes",
                    self.store.config.max_manifest_size
                ),
            ),
            CollectError::Io(e) => self.bad_gateway(t, format!("reading the manifest failed: {e}")),
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

    // ----- tag lists -------------------------------------------------------

    /// A mirrored repository's tag list: the upstream's, page by page as the
    /// client asks (`n`, `last`), cached per page for the tag TTL and served
    /// stale (up to `max_stale_ms`) when the upstream fails. The answer
    /// names the repository as the client did, whatever the upstream calls
    /// it.
    async fn mirror_tags(
        &self,
        t: &MirrorTarget<F, H>,
        requested: &RepositoryName,
        uri: &Uri,
    ) -> Result<Response<S::Body>> {
        let (n, last) = self.store.page_query(uri)?;
        let key = layout::tag_list_cache(&t.local, &layout::tag_list_page(n, last.as_deref()));
        let cached = match self.store.storage.read(&key).await? {
            Some(raw) => serde_json::from_slice::<TagListCache>(&raw).ok(),
            None => None,
        };
        let ns = wire::query_param(uri, "ns").transpose()?;
        let answer = |page: &TagListCache, how: &'static str| {
            let mut resp = tag_list_response(requested, page, ns.as_deref());
            resp = if how == "stale" {
                mark_stale(resp, t)
            } else {
                mark(resp, how)
            };
            resp
        };
        let now = self.store.host.now_unix_ms();
        if let Some(c) = &cached {
            if now.saturating_sub(c.checked_ms) < t.upstream.config.tag_ttl_ms {
                return Ok(answer(c, "hit"));
            }
        }
        let stale_ok =
            |c: &TagListCache| now.saturating_sub(c.checked_ms) <= t.upstream.config.max_stale_ms;
        let fetched = match t.upstream.tags(&t.remote, n, last.as_deref()).await {
            Ok(resp) => self.read_tag_list(t, resp, n, last.as_deref()).await,
            Err(UpstreamError::NotFound) => {
                return Err(RegistryError::new(
                    ErrorCode::NameUnknown,
                    format!("repository {requested} not known upstream"),
                ))
            }
            Err(e) => Err(e),
        };
        match fetched {
            Ok(page) => {
                let json = serde_json::to_vec(&page).expect("tag list serializes");
                self.store
                    .storage
                    .put(&key, json.into(), PutMode::Overwrite)
                    .await?;
                Ok(answer(
                    &page,
                    if cached.is_some() {
                        "revalidated"
                    } else {
                        "miss"
                    },
                ))
            }
            Err(e) => match cached {
                Some(c) if e.allows_stale() && stale_ok(&c) => {
                    metrics::inc(&self.store.metrics.upstream_errors);
                    Ok(answer(&c, "stale"))
                }
                _ => Err(self.upstream_failure(e, ErrorCode::NameUnknown)),
            },
        }
    }

    /// The page of tags in an upstream's tag list response, with where its
    /// next page starts.
    async fn read_tag_list(
        &self,
        t: &MirrorTarget<F, H>,
        resp: http::Response<F::Body>,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagListCache, UpstreamError> {
        #[derive(serde::Deserialize)]
        struct Wire {
            tags: Option<Vec<String>>,
        }
        let next = wire::header(resp.headers(), "link").and_then(next_page);
        let bytes = body::collect_limited(F::body_stream(resp.into_body()), TAG_LIST_LIMIT)
            .await
            .map_err(|e| match e {
                CollectError::TooLarge => {
                    UpstreamError::Invalid(format!("tag list larger than {TAG_LIST_LIMIT} bytes"))
                }
                CollectError::Io(e) => UpstreamError::Unavailable(format!("reading tag list: {e}")),
            })?;
        let wire: Wire = serde_json::from_slice(&bytes).map_err(|e| {
            UpstreamError::Invalid(format!("{} tag list: {e}", t.upstream.config.name))
        })?;
        // Tags that are not valid tags could not be pulled through here.
        // The spec orders tags lexically; some upstreams (distribution 2.8
        // without `n`) send them in storage order.
        let mut tags: Vec<String> = wire
            .tags
            .unwrap_or_default()
            .into_iter()
            .filter(|tag| Tag::parse(tag).is_ok())
            .collect();
        tags.sort();
        // Upstreams without pagination (distribution 2.8) ignore `n` and
        // `last` and send everything: page here.
        let mut next = next;
        if let Some(last) = last {
            tags.retain(|tag| tag.as_str() > last);
        }
        if let Some(n) = n {
            if tags.len() > n {
                tags.truncate(n);
                next = tags.last().map(|l| (Some(n), l.clone()));
            }
        }
        Ok(TagListCache {
            checked_ms: self.store.host.now_unix_ms(),
            tags,
            next,
        })
    }

    // ----- referrers -------------------------------------------------------

    /// Referrers come from the upstream's referrers API, else from the
    /// referrers tag schema (`<alg>-<hex>`, for registries without the API),
    /// else from what the cache holds when the upstream is unreachable.
    async fn mirror_referrers(
        &self,
        t: &MirrorTarget<F, H>,
        subject: &Digest,
        uri: &Uri,
    ) -> Result<Response<S::Body>> {
        let filter = wire::query_param(uri, "artifactType").transpose()?;
        let limit = self.store.config.max_manifest_size;
        let index = |resp: http::Response<F::Body>| async move {
            let ct = wire::header(resp.headers(), "content-type")
                .unwrap_or("")
                .to_owned();
            let filtered = resp
                .headers()
                .contains_key(wire::OCI_FILTERS_APPLIED_HEADER);
            let bytes = body::collect_limited(F::body_stream(resp.into_body()), limit)
                .await
                .ok()?;
            let parsed = manifest::parse(&bytes, Some(&ct)).ok()?;
            parsed.kind.is_index().then_some((parsed, filtered))
        };
        let api_answer = match t
            .upstream
            .referrers(&t.remote, &subject.to_string(), filter.as_deref())
            .await
        {
            Ok(resp) => index(resp).await,
            Err(UpstreamError::Unavailable(_)) => {
                return self.store.referrers(&t.local, subject, uri).await
            }
            // 404, 400, 405…: no referrers API there.
            Err(_) => None,
        };
        let (parsed, upstream_filtered) = match api_answer {
            Some(found) => found,
            None => {
                let tag = format!("{}-{}", subject.algorithm().as_str(), subject.hex());
                let fallback = match Tag::parse(&tag) {
                    Ok(_) => match t.upstream.manifest(&t.remote, &tag, Method::GET).await {
                        Ok(resp) => index(resp).await,
                        Err(UpstreamError::Unavailable(_)) => {
                            return self.store.referrers(&t.local, subject, uri).await
                        }
                        Err(_) => None,
                    },
                    Err(_) => None,
                };
                fallback.unwrap_or_else(|| {
                    let empty = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
                    (manifest::parse(empty, None).expect("literal index"), false)
                })
            }
        };
        let manifests: Vec<&manifest::Descriptor> = parsed
            .manifests
            .iter()
            .filter(|d| {
                upstream_filtered
                    || filter
                        .as_ref()
                        .is_none_or(|f| d.artifact_type.as_deref() == Some(f.as_str()))
            })
            .collect();
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::media_type::OCI_INDEX,
            "manifests": manifests,
        });
        let bytes = Bytes::from(body.to_string());
        let mut resp = crate::wire::response::response(StatusCode::OK, Body::Full(bytes.clone()));
        let h = resp.headers_mut();
        set(h, CONTENT_TYPE, manifest::media_type::OCI_INDEX);
        set(h, CONTENT_LENGTH, &bytes.len().to_string());
        if filter.is_some() {
            set(
                h,
                HeaderName::from_static(wire::OCI_FILTERS_APPLIED_HEADER),
                "artifactType",
            );
        }
        Ok(resp)
    }

    // ----- blobs -----------------------------------------------------------

    async fn mirror_blob(
        &self,
        t: &MirrorTarget<F, H>,
        digest: &Digest,
        range: Option<&str>,
        head: bool,
    ) -> Result<Response<S::Body>> {
        let stored = self
            .store
            .storage
            .head(&layout::blob(digest))
            .await?
            .is_some();
        if stored {
            let linked = self
                .store
                .storage
                .head(&layout::layer_link(&t.local, digest))
                .await?
                .is_some();
            if !linked {
                // Stored for another repository: the bytes are verified, but
                // only the upstream's yes lets this repository have them. A
                // denial (Docker Hub answers 401 for repositories that do
                // not exist) is a no; an unreachable upstream is no answer.
                match t.upstream.blob_head(&t.remote, &digest.to_string()).await {
                    Ok(_) => {}
                    Err(UpstreamError::NotFound | UpstreamError::Denied(_)) => {
                        return Err(RegistryError::new(
                            ErrorCode::BlobUnknown,
                            format!("blob {digest} not in {}", t.remote),
                        ))
                    }
                    Err(e) => return Err(self.upstream_failure(e, ErrorCode::BlobUnknown)),
                }
                self.store.link_blob(&t.local, digest).await?;
            }
            let resp = self.store.get_blob(&t.local, digest, range, head).await?;
            self.record_use(digest).await;
            return Ok(mark(resp, "hit"));
        }

        if head && !self.filling(t, digest) {
            // A cold HEAD asks the upstream with a HEAD: no download.
            let resp = t
                .upstream
                .blob_head(&t.remote, &digest.to_string())
                .await
                .map_err(|e| self.upstream_failure(e, ErrorCode::BlobUnknown))?;
            let len = wire::header(resp.headers(), "content-length")
                .and_then(|v| v.trim().parse::<u64>().ok());
            let resp = blob_response(StatusCode::OK, Body::Empty, digest, len, None);
            return Ok(mark(resp, "miss"));
        }
        let flight = self.blob_flight(t, digest);
        let size = flight.started().await.map_err(|e| match e {
            FlightError::Upstream(e) => self.upstream_failure(e, ErrorCode::BlobUnknown),
            FlightError::Broken(msg) => RegistryError::new(ErrorCode::Unavailable, msg),
        })?;
        let (status, start, end, content_range) = match (range, size) {
            (Some(r), Some(size)) if !head => {
                let rg = satisfiable_range(r, size)?;
                let cr = format!("bytes {}-{}/{size}", rg.start, rg.end - 1);
                (
                    StatusCode::PARTIAL_CONTENT,
                    rg.start,
                    Some(rg.end),
                    Some(cr),
                )
            }
            _ => (StatusCode::OK, 0, size, None),
        };
        let body = if head {
            Body::Empty
        } else {
            Body::Relay(follow(
                flight,
                self.store.storage.clone(),
                layout::blob(digest),
                start,
                end,
            ))
        };
        let len = end.map(|e| e - start);
        let resp = blob_response(status, body, digest, len, content_range);
        Ok(mark(resp, "miss"))
    }

    /// Whether `digest` is being filled for this repository.
    fn filling(&self, t: &MirrorTarget<F, H>, digest: &Digest) -> bool {
        self.mirrors
            .blob_flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&(t.local.clone(), digest.clone()))
    }

    /// Join the fill of `digest`, or start it.
    fn blob_flight(&self, t: &MirrorTarget<F, H>, digest: &Digest) -> Arc<BlobFlight> {
        let mut flights = self
            .mirrors
            .blob_flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (t.local.clone(), digest.clone());
        if let Some(f) = flights.get(&key) {
            metrics::inc(&self.store.metrics.singleflight_joins);
            return f.clone();
        }
        let flight = Arc::new(BlobFlight::default());
        flights.insert(key, flight.clone());
        drop(flights);

        let mut raw = [0u8; 16];
        self.store.host.fill_random(&mut raw);
        let fill = Fill {
            storage: self.store.storage.clone(),
            upstream: t.upstream.clone(),
            host: self.store.host.clone(),
            remote: t.remote.clone(),
            local: t.local.clone(),
            digest: digest.clone(),
            spool: UploadId::from_random(raw),
            flight: flight.clone(),
            flights: self.mirrors.blob_flights.clone(),
            metrics: self.store.metrics.clone(),
        };
        self.store.host.spawn(Box::pin(fill.run()));
        flight
    }
}

/// When mirrored blobs were last used (host clock, ms).
///
/// Every use updates memory; storage gets the time at most once per blob per
/// [`RegistryConfig::access_record_interval_ms`](crate::RegistryConfig), as
/// [`layout::access`], so recency survives a restart and a later process
/// (or another process on the same storage) sees it. A pull of a manifest
/// counts as a use of everything it references, at most once per manifest
/// per interval (it is parsed to find them).
#[derive(Default)]
pub(crate) struct Recency {
    blobs: Mutex<HashMap<Digest, BlobUse>>,
    manifests: Mutex<HashMap<Digest, u64>>,
}

#[derive(Clone, Copy)]
struct BlobUse {
    used_ms: u64,
    /// The time last written to storage, 0 if never by this process.
    recorded_ms: u64,
}

impl Recency {
    fn lock_blobs(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, BlobUse>> {
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
                .storage
                .put(
                    &layout::access(digest),
                    Bytes::from(now.to_string()),
                    PutMode::Overwrite,
                )
                .await;
        }
    }

    /// Note a pull of the manifest `digest` (its bytes): a use of the blobs
    /// it references.
    async fn record_manifest_use(&self, digest: &Digest, bytes: &Bytes) {
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

    /// The last use of `digest` known to this process or recorded in
    /// storage (read once per process), or 0.
    async fn last_use(&self, digest: &Digest) -> Result<u64> {
        if let Some(u) = self.mirrors.recency.lock_blobs().get(digest) {
            return Ok(u.used_ms);
        }
        let recorded = self
            .store
            .storage
            .read(&layout::access(digest))
            .await?
            .and_then(|raw| std::str::from_utf8(&raw).ok()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if recorded > 0 {
            self.mirrors.recency.lock_blobs().insert(
                digest.clone(),
                BlobUse {
                    used_ms: recorded,
                    recorded_ms: recorded,
                },
            );
        }
        Ok(recorded)
    }
}

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
        let in_flight: std::collections::HashSet<Digest> = self
            .mirrors
            .blob_flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|(_, d)| d.clone())
            .collect();
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
            let used = self.last_use(&digest).await?.max(e.modified_ms);
            candidates.push((used, e.size, e.key, digest));
        }
        let mut total = report.cached_bytes;
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

fn mark<B>(mut resp: Response<B>, how: &'static str) -> Response<B> {
    resp.headers_mut().insert(
        HeaderName::from_static(CACHE_HEADER),
        HeaderValue::from_static(how),
    );
    resp
}

/// A response served from the cache because the upstream gave no usable
/// answer: `X-Kura-Cache: stale` and an RFC 7234 `Warning: 110`.
fn mark_stale<B, F, H>(resp: Response<B>, t: &MirrorTarget<F, H>) -> Response<B> {
    let mut resp = mark(resp, "stale");
    set(
        resp.headers_mut(),
        WARNING,
        &format!(
            "110 kura \"Response is stale: {} unavailable\"",
            t.upstream.config.name
        ),
    );
    resp
}

/// An upstream failure as the client sees it.
fn upstream_failure(e: UpstreamError, unknown: ErrorCode) -> RegistryError {
    match e {
        UpstreamError::NotFound => RegistryError::new(unknown, "not found upstream"),
        UpstreamError::Denied(s) => RegistryError::new(
            ErrorCode::Unavailable,
            format!("the upstream denied access ({s})"),
        ),
        UpstreamError::Unavailable(_) => {
            RegistryError::new(ErrorCode::Unavailable, "the upstream is unavailable")
        }
        UpstreamError::Status(s) => {
            RegistryError::new(ErrorCode::Unavailable, format!("the upstream answered {s}"))
        }
        UpstreamError::Invalid(_) => RegistryError::new(
            ErrorCode::Unavailable,
            "the upstream sent an invalid response",
        )
        .with_status(StatusCode::BAD_GATEWAY),
        // Pass the upstream's pause on: the client should not retry sooner.
        UpstreamError::Throttled { retry_after_ms } => {
            RegistryError::new(ErrorCode::Unavailable, "the upstream asked for a pause")
                .with_header(
                    http::header::RETRY_AFTER,
                    retry_after_ms.div_ceil(1000).max(1).to_string(),
                )
        }
    }
}

// ----- single flight for manifests ------------------------------------------

/// What a leader tells its followers: `Some(Ok)` it got an answer (look at
/// storage again), `Some(Err)` the answer is this error, `None` it left
/// before an answer (its client hung up): ask again.
type Outcome = Option<Result<(), RegistryError>>;

#[derive(Default)]
struct Flights {
    waiting: Mutex<HashMap<String, Vec<oneshot::Sender<Outcome>>>>,
}

enum Joined<'a> {
    Leader(Lead<'a>),
    Follower(oneshot::Receiver<Outcome>),
}

/// Held by the one request doing the upstream work; dropping it wakes the
/// followers with the outcome given to [`Lead::finish`], or with none if
/// the leader was cancelled.
struct Lead<'a> {
    flights: &'a Flights,
    key: String,
    outcome: Outcome,
}

impl Lead<'_> {
    fn finish<T>(mut self, outcome: Result<T, &RegistryError>) {
        self.outcome = Some(outcome.map(|_| ()).map_err(Clone::clone));
    }
}

impl Flights {
    fn join(&self, key: String) -> Joined<'_> {
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

// ----- blob fills -------------------------------------------------------------

#[derive(Debug, Clone)]
enum FlightError {
    Upstream(UpstreamError),
    Broken(String),
}

impl std::fmt::Display for FlightError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlightError::Upstream(e) => e.fmt(f),
            FlightError::Broken(m) => f.write_str(m),
        }
    }
}

struct Spooled {
    offset: u64,
    len: u64,
    key: String,
}

#[derive(Default)]
struct FlightState {
    /// Upstream headers arrived.
    started: bool,
    size: Option<u64>,
    received: u64,
    spooled: Vec<Spooled>,
    /// Received but not yet spooled, as `(offset, bytes)`.
    tail: Vec<(u64, Bytes)>,
    outcome: Option<Result<(), FlightError>>,
    wakers: Vec<oneshot::Sender<()>>,
}

#[derive(Default)]
struct BlobFlight {
    state: Mutex<FlightState>,
}

enum Step {
    Done,
    Fail(String),
    Bytes(Bytes),
    Spool(String, Range<u64>),
    Stored(Range<u64>),
    Wait(oneshot::Receiver<()>),
}

impl BlobFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut FlightState)) {
        let wakers = {
            let mut s = self.lock();
            f(&mut s);
            std::mem::take(&mut s.wakers)
        };
        for w in wakers {
            let _ = w.send(());
        }
    }

    /// Wait for the upstream's answer: the blob size if it said, or why not.
    async fn started(&self) -> Result<Option<u64>, FlightError> {
        loop {
            let rx = {
                let mut s = self.lock();
                if s.started {
                    return Ok(s.size);
                }
                if let Some(Err(e)) = &s.outcome {
                    return Err(e.clone());
                }
                let (tx, rx) = oneshot::channel();
                s.wakers.push(tx);
                rx
            };
            let _ = rx.await;
        }
    }

    /// Wait until the fill has an outcome.
    async fn settled(&self) {
        loop {
            let rx = {
                let mut s = self.lock();
                if s.outcome.is_some() {
                    return;
                }
                let (tx, rx) = oneshot::channel();
                s.wakers.push(tx);
                rx
            };
            let _ = rx.await;
        }
    }

    /// What a client at `pos` (reading up to `end`) can do next.
    fn step(&self, pos: u64, end: Option<u64>) -> Step {
        let mut s = self.lock();
        if let Some(Err(e)) = &s.outcome {
            return Step::Fail(e.to_string());
        }
        let done = matches!(s.outcome, Some(Ok(())));
        let end = end.or(if done { Some(s.received) } else { s.size });
        if end.is_some_and(|e| pos >= e) {
            return Step::Done;
        }
        if done {
            return Step::Stored(pos..end.unwrap_or(s.received));
        }
        // The last byte waits for verification.
        let readable = s.received.saturating_sub(1).min(end.unwrap_or(u64::MAX));
        if pos < readable {
            for sp in &s.spooled {
                if pos >= sp.offset && pos < sp.offset + sp.len {
                    let to = (sp.offset + sp.len).min(readable);
                    return Step::Spool(sp.key.clone(), pos - sp.offset..to - sp.offset);
                }
            }
            for (off, b) in &s.tail {
                let (off, len) = (*off, b.len() as u64);
                if pos >= off && pos < off + len {
                    let to = (off + len).min(readable);
                    return Step::Bytes(b.slice((pos - off) as usize..(to - off) as usize));
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        s.wakers.push(tx);
        Step::Wait(rx)
    }
}

/// A client's view of a fill: bytes from `start` to `end` as they arrive.
fn follow<S: Storage>(
    flight: Arc<BlobFlight>,
    storage: Arc<S>,
    blob_key: String,
    start: u64,
    end: Option<u64>,
) -> ByteStream {
    let parts = futures::stream::unfold(Some(start), move |pos| {
        let flight = flight.clone();
        let storage = storage.clone();
        let blob_key = blob_key.clone();
        async move {
            let mut pos = pos?;
            loop {
                match flight.step(pos, end) {
                    Step::Done => return None,
                    Step::Fail(msg) => {
                        return Some((error_stream(std::io::Error::other(msg)), None))
                    }
                    Step::Bytes(b) => {
                        pos += b.len() as u64;
                        return Some((body::once(b), Some(pos)));
                    }
                    Step::Spool(key, r) => match storage.get(&key, Some(r.clone())).await {
                        Ok(Some((_, body))) => {
                            pos += r.end - r.start;
                            return Some((S::body_stream(body), Some(pos)));
                        }
                        // Spooled chunks go away once the blob is stored:
                        // wait for the flight to say so, then read that.
                        _ => flight.settled().await,
                    },
                    Step::Stored(r) => {
                        return match storage.get(&blob_key, Some(r)).await {
                            Ok(Some((_, body))) => Some((S::body_stream(body), None)),
                            Ok(None) => Some((
                                error_stream(std::io::Error::other("cached blob vanished")),
                                None,
                            )),
                            Err(e) => {
                                Some((error_stream(std::io::Error::other(e.to_string())), None))
                            }
                        };
                    }
                    Step::Wait(rx) => {
                        let _ = rx.await;
                    }
                }
            }
        }
    });
    Box::pin(parts.flatten())
}

/// The task that fills one blob from upstream.
struct Fill<S, F, H> {
    storage: Arc<S>,
    upstream: Arc<Upstream<F, H>>,
    host: Arc<H>,
    remote: RepositoryName,
    local: RepositoryName,
    digest: Digest,
    spool: UploadId,
    flight: Arc<BlobFlight>,
    flights: Arc<Mutex<HashMap<FlightKey, Arc<BlobFlight>>>>,
    metrics: Arc<Metrics>,
}

impl<S: Storage, F: Fetch, H: Host> Fill<S, F, H> {
    async fn run(self) {
        let outcome = self.fill().await;
        if outcome.is_err() {
            metrics::inc(&self.metrics.fills_failed);
        }
        // Out of the map first: a request arriving from now on finds the
        // blob stored, or (after a failure) starts a fresh fill.
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(self.local.clone(), self.digest.clone()));
        self.flight.update(|s| s.outcome = Some(outcome));
        // Clients still reading spooled chunks fall back to the stored blob.
        if let Ok(keys) = self.storage.list(&layout::upload_dir(&self.spool)).await {
            for k in keys {
                let _ = self.storage.delete(&k).await;
            }
        }
    }

    async fn fill(&self) -> Result<(), FlightError> {
        let resp = self
            .upstream
            .blob(&self.remote, &self.digest.to_string(), None)
            .await
            .map_err(FlightError::Upstream)?;
        let size = wire::header(resp.headers(), "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let broken = |m: String| {
            FlightError::Broken(format!(
                "upstream {} blob {}: {m}",
                self.upstream.config.name, self.digest
            ))
        };
        let store =
            |e: crate::io::storage::StorageError| FlightError::Broken(format!("storage: {e}"));
        // A state object marks the spool as a live session for the janitor.
        let mut state = UploadState::new(&self.local, self.host.now_unix_ms());
        state.fill = true;
        self.storage
            .put(
                &layout::upload_state(&self.spool),
                state.encode(),
                PutMode::Overwrite,
            )
            .await
            .map_err(store)?;
        self.flight.update(|s| {
            s.started = true;
            s.size = size;
        });

        let unit = if self.storage.can_append() {
            APPEND_CHUNK
        } else {
            SPOOL_CHUNK
        };
        let mut body = F::body_stream(resp.into_body());
        let mut hasher = Hasher::new(self.digest.algorithm());
        let mut received = 0u64;
        let mut unspooled = 0usize;
        let mut chunks = 0usize;
        loop {
            let item = body.next().await;
            let last = item.is_none();
            if let Some(item) = item {
                let chunk =
                    item.map_err(|e| broken(format!("body failed after {received} bytes: {e}")))?;
                if chunk.is_empty() {
                    continue;
                }
                hasher.update(&chunk);
                metrics::add(&self.metrics.bytes_from_upstream, chunk.len() as u64);
                let offset = received;
                received += chunk.len() as u64;
                unspooled += chunk.len();
                if size.is_some_and(|s| received > s) {
                    return Err(broken(format!(
                        "more than the announced {} bytes",
                        size.unwrap_or(0)
                    )));
                }
                self.flight.update(|s| {
                    s.received = received;
                    s.tail.push((offset, chunk));
                });
            }
            if unspooled >= unit || (last && unspooled > 0) {
                self.spool_tail(chunks).await.map_err(store)?;
                chunks += 1;
                unspooled = 0;
            }
            if last {
                break;
            }
        }
        if let Some(s) = size {
            if received != s {
                return Err(broken(format!("truncated: {received} of {s} bytes")));
            }
        }
        let actual = hasher.finish();
        if actual != self.digest {
            return Err(broken(format!("content has digest {actual}")));
        }
        self.commit(received).await.map_err(store)?;
        Ok(())
    }

    /// Write the unspooled tail: appended to the one spool object where the
    /// backend can, else as one chunk object.
    async fn spool_tail(&self, index: usize) -> Result<(), crate::io::storage::StorageError> {
        let (offset, parts) = {
            let s = self.flight.lock();
            let offset = s.tail.first().map(|(o, _)| *o).unwrap_or(s.received);
            let parts: Vec<Bytes> = s.tail.iter().map(|(_, b)| b.clone()).collect();
            (offset, parts)
        };
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if self.storage.can_append() {
            let key = layout::upload_data(&self.spool);
            self.storage.append(&key, offset, parts).await?;
            self.flight.update(|s| {
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
        let key = layout::upload_chunk(&self.spool, offset, &format!("{index:08x}"));
        self.storage
            .put(&key, data.freeze(), PutMode::Overwrite)
            .await?;
        self.flight.update(|s| {
            s.spooled.push(Spooled { offset, len, key });
            s.tail.clear();
        });
        Ok(())
    }

    /// Move the verified spool into place and link it.
    async fn commit(&self, size: u64) -> Result<(), crate::io::storage::StorageError> {
        let blob = layout::blob(&self.digest);
        let keys: Vec<String> = self
            .flight
            .lock()
            .spooled
            .iter()
            .map(|s| s.key.clone())
            .collect();
        match keys.as_slice() {
            [] => {
                self.storage
                    .put(&blob, Bytes::new(), PutMode::Overwrite)
                    .await?
            }
            [only] => {
                // One chunk, or the appended spool. Clients may be reading
                // it; renaming keeps open files readable on disk, and S3
                // copies before deleting.
                self.storage.rename(only, &blob).await?;
            }
            many => {
                let joined = join_objects(self.storage.clone(), many.to_vec());
                self.storage
                    .put_stream(
                        &blob,
                        digest::verify(joined, self.digest.clone(), Some(size)),
                    )
                    .await?;
            }
        }
        self.storage
            .put(
                &layout::layer_link(&self.local, &self.digest),
                Bytes::new(),
                PutMode::Overwrite,
            )
            .await?;
        self.storage
            .put(
                &layout::catalog_entry(&self.local),
                Bytes::new(),
                PutMode::Overwrite,
            )
            .await?;
        // The fill is the blob's first use (the registry's in-memory
        // recency learns it from its first read of this record).
        self.storage
            .put(
                &layout::access(&self.digest),
                Bytes::from(self.host.now_unix_ms().to_string()),
                PutMode::Overwrite,
            )
            .await?;
        Ok(())
    }
}
