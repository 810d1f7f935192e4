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

mod blobs;
pub(crate) mod claim;
pub(crate) mod edge;
mod evict;
mod fill;
mod flight;
mod lease;
mod manifests;
mod missing;
mod recency;
mod referrers;
mod spool;
mod tags;
pub(crate) mod upstream;
mod watch;

pub use evict::EvictionReport;
use flight::Fills;
use manifests::Flights;
use missing::MissingKey;
use recency::Recency;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::header::{CONTENT_TYPE, WARNING};
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};

use crate::config::UpstreamConfig;
use crate::error::UpstreamError;
use crate::error::{chain, ErrorCode, RegistryError};
use crate::io::body::Body;
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::metrics::{self, Metrics};
use crate::mirror::upstream::Upstream;
use crate::model::digest::Digest;
use crate::model::reference::RepositoryName;
use crate::store::{Result, Store};
use crate::wire::response::{set, Response};
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
    /// Upstream failures warned about recently (see [`WarnLimit`]).
    warned: WarnLimit,
    manifest_flights: Flights,
    /// Who fills which blob, for the core's own fills and the host's alike.
    fills: Arc<Fills>,
    /// An eviction pass of this process has rebuilt the ledger from a full
    /// listing: later passes may trust it and read only the changes (before
    /// this process, changes may not have been recorded).
    ledger_rebuilt: std::sync::atomic::AtomicBool,
}

type FlightKey = (RepositoryName, Digest);

/// Where a mirrored request goes.
pub(crate) struct MirrorTarget<F, H> {
    /// The upstream the repository is mirrored from.
    pub(crate) upstream: Arc<Upstream<F, H>>,
    /// The name the upstream knows (`library/alpine`).
    pub(crate) remote: RepositoryName,
    /// The name kura stores it under (`docker.io/library/alpine`).
    pub(crate) local: RepositoryName,
}

impl<F: Fetch, H: Host> Mirrors<F, H> {
    pub(crate) fn none(metrics: Arc<Metrics>) -> Self {
        Self::serving(Vec::new(), None, metrics)
    }

    /// `upstreams` (`default` indexes one), with nothing known about them yet.
    fn serving(
        upstreams: Vec<Arc<Upstream<F, H>>>,
        default: Option<usize>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Mirrors {
            upstreams,
            default,
            recency: Recency::default(),
            missing: Mutex::default(),
            warned: WarnLimit::default(),
            manifest_flights: Flights::default(),
            fills: Arc::new(Fills::new(metrics)),
            ledger_rebuilt: std::sync::atomic::AtomicBool::new(false),
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
        Ok(Self::serving(upstreams, default, metrics))
    }

    fn lock_missing(&self) -> std::sync::MutexGuard<'_, HashMap<MissingKey, u64>> {
        self.missing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn by_name(&self, name: &str) -> Option<&Arc<Upstream<F, H>>> {
        self.upstreams.iter().find(|u| u.config.name == name)
    }

    /// See [`Registry::probe_upstream`](crate::Registry::probe_upstream).
    pub(crate) async fn probe(&self, name: &str) -> Result<upstream::UpstreamAuth, UpstreamError> {
        match self.by_name(name) {
            Some(u) => u.probe().await,
            None => Err(UpstreamError::Invalid(format!(
                "no upstream named {name:?} is configured"
            ))),
        }
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
    pub(crate) fn upstream_failure(
        &self,
        t: &MirrorTarget<F, H>,
        e: UpstreamError,
        unknown: ErrorCode,
    ) -> RegistryError {
        if !matches!(e, UpstreamError::NotFound) {
            metrics::inc(&self.store.metrics.upstream_errors);
            // The details (addresses, URLs, the upstream's words) are for
            // the operator; the client learns what kind of failure it was.
            let now = self.store.host.now_unix_ms();
            let name = &t.upstream.config.name;
            let kind = format!("{name} {}", warn_kind(&e));
            if let Some(more) = self.mirrors.warned.admit(kind, now) {
                let more = match more {
                    0 => String::new(),
                    n => format!(" ({n} more like it since the last warning)"),
                };
                self.store
                    .host
                    .warn(&format!("upstream {name}: {}{more}", chain(&e)));
            }
        }
        RegistryError::from_upstream(&e, unknown)
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

/// How often, at most, the same kind of upstream failure is logged: while
/// an upstream is down or paused every request fails the same way, and one
/// line in ten seconds says as much as a thousand.
const WARN_EVERY_MS: u64 = 10_000;
/// Most kinds of failure tracked at once; past it the memory starts over.
const WARN_KINDS_MAX: usize = 1_000;

/// Which upstream failures were logged when, and how many since went
/// unlogged.
#[derive(Default)]
pub(crate) struct WarnLimit(Mutex<HashMap<String, (u64, u64)>>);

impl WarnLimit {
    /// `Some(n)`: log this one, `n` like it went unlogged before it;
    /// `None`: one like it was logged within [`WARN_EVERY_MS`].
    fn admit(&self, kind: String, now_ms: u64) -> Option<u64> {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= WARN_KINDS_MAX && !seen.contains_key(&kind) {
            seen.clear();
        }
        match seen.get_mut(&kind) {
            Some((last, skipped)) if now_ms.saturating_sub(*last) < WARN_EVERY_MS => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                *last = now_ms;
                Some(std::mem::take(skipped))
            }
            None => {
                seen.insert(kind, (now_ms, 0));
                Some(0)
            }
        }
    }
}

/// The kind of an upstream failure for [`WarnLimit`]: its words without
/// what changes from one request to the next (a pause's remaining time).
fn warn_kind(e: &UpstreamError) -> String {
    match e {
        UpstreamError::Throttled { .. } => "throttled".into(),
        other => other.to_string(),
    }
}
