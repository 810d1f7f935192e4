//! The facade an embedder holds: a [`Registry`] built from storage, a
//! host and (for mirroring) an HTTP client, answering `/v2/` requests by
//! handing each to the hosted repositories or to the mirror.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, StatusCode};

use crate::config::RegistryConfig;
use crate::config::UpstreamConfig;
use crate::error::UpstreamError;
use crate::error::{ErrorCode, RegistryError};
use crate::hosted::{GcOptions, GcReport};
use crate::io::body::{Body, ByteStream};
use crate::io::fetch::{Fetch, NoFetch};
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::metrics::Metrics;
use crate::mirror::claim::{FillClaim, FillFollower, Followed};
use crate::mirror::edge::{BlobMiss, Edge};
use crate::mirror::upstream::UpstreamAuth;
use crate::mirror::{EvictionReport, Mirror, Mirrors};
use crate::model::digest::Digest;
use crate::model::reference::Reference;
use crate::store::{fsck, Result, Store};
use crate::wire::response::json_response;
pub use crate::wire::response::{error_response, Response};
use crate::wire::{self, Route};

/// A registry: hosted repositories over storage `S` and, when built with
/// [`RegistryBuilder::mirror`], a pull-through cache of
/// upstream registries reached with `F`. `H` is the host's clock,
/// randomness and task spawner. Every operation takes `&self`.
pub struct Registry<S, H, F = NoFetch> {
    store: Store<S, H>,
    mirrors: Mirrors<F, H>,
}

impl<S: Storage, H: Host> Registry<S, H, NoFetch> {
    /// A registry of hosted repositories only.
    pub fn new(storage: S, host: H, config: RegistryConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        Self::build(
            storage,
            Arc::new(host),
            config,
            Mirrors::none(metrics.clone()),
            metrics,
        )
    }

    /// Start a registry over `storage` and `host`: hosted repositories with
    /// the default [`RegistryConfig`] until the builder says otherwise.
    pub fn builder(storage: S, host: H) -> RegistryBuilder<S, H, NoFetch> {
        RegistryBuilder {
            storage,
            host,
            config: RegistryConfig::default(),
            fetch: NoFetch,
            upstreams: Vec::new(),
            default_upstream: None,
        }
    }
}

/// Assembles a [`Registry`]: storage and host first, then what differs from
/// the defaults.
///
/// ```text
/// let registry = Registry::builder(storage, host)
///     .config(config)
///     .mirror(fetch, UpstreamConfig::public())
///     .default_upstream("docker.io")
///     .build()?;
/// ```
pub struct RegistryBuilder<S, H, F> {
    storage: S,
    host: H,
    config: RegistryConfig,
    fetch: F,
    upstreams: Vec<UpstreamConfig>,
    default_upstream: Option<String>,
}

impl<S: Storage, H: Host, F: Fetch> RegistryBuilder<S, H, F> {
    /// Limits and behaviour of the registry.
    pub fn config(mut self, config: RegistryConfig) -> Self {
        self.config = config;
        self
    }

    /// Mirror `upstreams` (a pull-through cache), reaching them with
    /// `fetch`; every other namespace stays hosted.
    pub fn mirror<G: Fetch>(
        self,
        fetch: G,
        upstreams: Vec<UpstreamConfig>,
    ) -> RegistryBuilder<S, H, G> {
        RegistryBuilder {
            storage: self.storage,
            host: self.host,
            config: self.config,
            fetch,
            upstreams,
            default_upstream: self.default_upstream,
        }
    }

    /// Send names without a registry prefix or `?ns=` to this upstream
    /// (Docker's `registry-mirrors` sends bare names); `None` hosts them.
    pub fn default_upstream(mut self, name: Option<String>) -> Self {
        self.default_upstream = name;
        self
    }

    /// The registry, or why the upstreams cannot be mirrored (a name
    /// configured twice or not a registry name, a URL without scheme or
    /// host, a default upstream that is not configured).
    pub fn build(self) -> Result<Registry<S, H, F>, UpstreamError> {
        let host = Arc::new(self.host);
        let metrics = Arc::<Metrics>::default();
        let mirrors = Mirrors::new(
            Arc::new(self.fetch),
            host.clone(),
            metrics.clone(),
            self.upstreams,
            self.default_upstream,
        )?;
        Ok(Registry::build(
            self.storage,
            host,
            self.config,
            mirrors,
            metrics,
        ))
    }
}

impl<S: Storage, H: Host, F: Fetch> Registry<S, H, F> {
    fn build(
        storage: S,
        host: Arc<H>,
        config: RegistryConfig,
        mirrors: Mirrors<F, H>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Registry {
            store: Store::new(Arc::new(storage), host, config, metrics),
            mirrors,
        }
    }

    /// The storage backend the registry was built on.
    pub fn storage(&self) -> &S {
        &self.store.storage
    }

    /// The host capabilities the registry was built with.
    pub fn host(&self) -> &H {
        &self.store.host
    }

    /// The registry's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.store.metrics
    }

    /// The configuration the registry was built with.
    pub fn config(&self) -> &RegistryConfig {
        &self.store.config
    }

    /// Answer one `/v2/` request. Never fails: errors become OCI error
    /// responses.
    pub async fn handle(&self, req: Request<ByteStream>) -> Response<S::Body> {
        let head = req.method() == Method::HEAD;
        let kind = match wire::route(req.method(), req.uri().path()) {
            Ok(Some(r)) => r.kind(),
            _ => "other",
        };
        let mut resp = match self.dispatch(req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        self.store.metrics.request(kind, resp.status().as_u16());
        if head {
            // Keep Content-Length: HEAD reports the size of what GET sends.
            *resp.body_mut() = Body::Empty;
        }
        resp.headers_mut().insert(
            wire::API_VERSION_HEADER,
            HeaderValue::from_static(wire::API_VERSION),
        );
        resp
    }

    async fn dispatch(&self, req: Request<ByteStream>) -> Result<Response<S::Body>> {
        let route = wire::route(req.method(), req.uri().path())?.ok_or_else(|| {
            RegistryError::new(ErrorCode::Unsupported, "not a registry API path")
                .with_status(StatusCode::NOT_FOUND)
        })?;
        let (parts, body) = req.into_parts();
        if let Some(name) = route.name() {
            if let Some(target) = self.mirrors.target(name, &parts.uri)? {
                return self.mirror().dispatch(route, target, &parts).await;
            }
        }
        let m = &parts.method;
        let is = |allowed: &[Method]| allowed.contains(m);
        let allow = route.allowed_methods();
        match route {
            Route::Base if is(&[Method::GET, Method::HEAD]) => {
                Ok(json_response(StatusCode::OK, Bytes::from_static(b"{}")))
            }
            Route::Catalog if is(&[Method::GET, Method::HEAD]) => {
                self.store.catalog(&parts.uri).await
            }
            Route::Tags(name) if is(&[Method::GET, Method::HEAD]) => {
                self.store.tags(&name, &parts.uri).await
            }
            Route::Manifest(name, r) if is(&[Method::GET, Method::HEAD]) => {
                let resp = self.store.get_manifest(&name, &r).await?;
                if let Reference::Tag(t) = &r {
                    // A record for retention rules: a failure to write it
                    // must not fail the pull.
                    if let Err(e) = self.store.note_tag_pull(&name, t).await {
                        self.store
                            .host
                            .warn(&format!("recording a pull of {name}:{t}: {e}"));
                    }
                }
                Ok(resp)
            }
            Route::Manifest(name, r) if is(&[Method::PUT]) => {
                let ct = wire::header(&parts.headers, "content-type");
                let granted = parts
                    .extensions
                    .get::<crate::access::Granted>()
                    .map(|g| g.0);
                self.store
                    .put_manifest(&name, &r, &parts.uri, ct, body, granted)
                    .await
            }
            Route::Manifest(name, r) if is(&[Method::DELETE]) => {
                self.store.delete_manifest(&name, &r).await
            }
            Route::Blob(name, d) if is(&[Method::GET, Method::HEAD]) => {
                let range =
                    wire::header(&parts.headers, "range").filter(|r| wire::single_byte_range(r));
                let resp = self
                    .store
                    .get_blob(&name, &d, range, m == Method::HEAD)
                    .await?;
                if m == Method::HEAD {
                    match self.store.note_blob_probe(&name, &d).await {
                        Ok(true) => {}
                        // Collected under the probe: the push uploads it.
                        Ok(false) => {
                            return Err(RegistryError::new(
                                ErrorCode::BlobUnknown,
                                format!("blob {d} is not in {name}"),
                            )
                            .with_status(StatusCode::NOT_FOUND))
                        }
                        Err(e) => self
                            .store
                            .host
                            .warn(&format!("refreshing the link of {d} in {name}: {e}")),
                    }
                }
                Ok(resp)
            }
            Route::Blob(name, d) if is(&[Method::DELETE]) => {
                self.store.delete_blob(&name, &d).await
            }
            Route::Uploads(name) if is(&[Method::POST]) => {
                self.store.start_upload(&name, &parts.uri, body).await
            }
            Route::Upload(name, id) if is(&[Method::GET]) => {
                self.store.upload_status(&name, &id).await
            }
            Route::Upload(name, id) if is(&[Method::PATCH]) => {
                let cr = wire::header_strict(&parts.headers, "content-range")?;
                self.store.patch_upload(&name, &id, cr, body).await
            }
            Route::Upload(name, id) if is(&[Method::PUT]) => {
                let cr = wire::header_strict(&parts.headers, "content-range")?;
                self.store
                    .finish_upload(&name, &id, &parts.uri, cr, body)
                    .await
            }
            Route::Upload(name, id) if is(&[Method::DELETE]) => {
                self.store.cancel_upload(&name, &id).await
            }
            Route::Referrers(name, d) if is(&[Method::GET, Method::HEAD]) => {
                self.store.referrers(&name, &d, &parts.uri).await
            }
            _ => Err(RegistryError::new(
                ErrorCode::Unsupported,
                format!("method {m} not allowed here"),
            )
            .with_header(http::header::ALLOW, allow)),
        }
    }

    fn mirror(&self) -> Mirror<'_, S, H, F> {
        Mirror {
            store: &self.store,
            mirrors: &self.mirrors,
        }
    }

    // ----- maintenance (the host calls these on its own schedule) ----------

    /// Keep mirrored layer blobs under `max_size` bytes, least recently used
    /// first: by the last GET or HEAD of the blob, the last pull of a
    /// manifest referencing it, or its fill, whichever is latest; a blob
    /// with no recorded use counts as used when it was written. Never
    /// evicted: anything a hosted repository links, manifests (small, and
    /// tags point at them), blobs being filled, and blobs used within the
    /// last `grace_ms` (they may be being served).
    pub async fn evict(&self, max_size: u64, grace_ms: u64) -> Result<EvictionReport> {
        self.mirror().evict(max_size, grace_ms).await
    }

    /// Collect the garbage of hosted repositories while they serve: tags
    /// retention rules do not keep, untagged manifests nothing live
    /// references, links to blobs no live manifest names, blobs nothing
    /// links, each once unreferenced for `opts.grace_ms`. Mirrored
    /// repositories are left to [`Registry::evict`]. One collection at a
    /// time among the processes sharing the storage (a skipped pass says
    /// so); requests take no lock. See [`GcReport`] for what it tells.
    pub async fn collect_garbage(&self, opts: &GcOptions) -> Result<GcReport> {
        let mirrors = &self.mirrors;
        self.store
            .collect_garbage(opts, &|name| mirrors.is_mirrored_local(name))
            .await
    }

    /// Delete the garbage collection lease whoever holds it, and say
    /// whether there was one: as [`Registry::release_evictor_lease`], for
    /// a process alone on its storage, at startup.
    pub async fn release_gc_lease(&self) -> Result<bool> {
        let key = crate::store::layout::GC_LEASE;
        let held = self.store.storage.head(key).await?.is_some();
        if held {
            self.store.storage.delete(key).await?;
        }
        Ok(held)
    }

    /// Delete the eviction lease whoever holds it, and say whether there
    /// was one. Only for a process that knows it is alone on its storage,
    /// at startup: there a held lease is a pass its own predecessor was
    /// killed in, and waiting out the lease (half an hour, for processes
    /// sharing a store) would let the cache outgrow its bound meanwhile.
    pub async fn release_evictor_lease(&self) -> Result<bool> {
        let key = crate::store::layout::EVICTOR_LEASE;
        let held = self.store.storage.head(key).await?.is_some();
        if held {
            self.store.storage.delete(key).await?;
        }
        Ok(held)
    }

    /// Delete the spools of cache fills whose filler stopped renewing them
    /// two fill-lease lifetimes ago (see [`RegistryConfig::fill_lease_ms`]):
    /// leftovers of a crash, in this process or another sharing the
    /// storage. Returns how many.
    pub async fn purge_interrupted_fills(&self) -> Result<usize> {
        self.store.purge_interrupted_fills().await
    }

    /// Whether the storage takes create-only puts ([`crate::storage::PutMode::Create`]
    /// refusing an existing key), which is what lets every process sharing
    /// it fill each blob once between them (without, each process fills
    /// alone). Writes and deletes one probe object.
    pub async fn shares_fills(&self) -> Result<bool> {
        self.store.create_only_puts_work().await
    }

    /// Send `GET /v2/` to the upstream named `name` as the mirror would,
    /// answering its challenge with the configured credentials, and say
    /// how it let the request in (the check behind `kura doctor`).
    pub async fn probe_upstream(
        &self,
        name: &str,
    ) -> std::result::Result<UpstreamAuth, UpstreamError> {
        self.mirrors.probe(name).await
    }

    /// List the store for a check (see [`crate::fsck`]): then verify each
    /// of [`fsck::Inventory::blobs`] with [`fsck::verify_blob`], as many at
    /// once as the host likes, and hand the verdicts to
    /// [`Registry::fsck_check`].
    pub async fn fsck_inventory(&self) -> Result<fsck::Inventory> {
        self.store.fsck_inventory().await
    }

    /// Check links, tags, manifests, referrers, fill leases and upload
    /// sessions against the blobs' `verdicts`. Repositories of configured
    /// upstreams are judged as a mirror's (their layers may be evicted).
    pub async fn fsck_check(
        &self,
        inventory: fsck::Inventory,
        verdicts: &std::collections::HashMap<Digest, fsck::BlobCheck>,
    ) -> Result<fsck::FsckReport> {
        self.store
            .fsck_check(inventory, verdicts, |n| self.mirrors.is_mirrored_local(n))
            .await
    }

    /// Remove what `report` found that is provably garbage or corrupt:
    /// corrupt blobs, a mirror's tags and manifest revisions whose bytes
    /// are gone, referrers entries of missing manifests, abandoned fill
    /// leases, and upload sessions idle past `options.stale_upload_ms`.
    /// Each is checked again right before it goes. Marks what went.
    pub async fn fsck_repair(
        &self,
        report: &mut fsck::FsckReport,
        options: &fsck::FsckOptions,
    ) -> Result<()> {
        self.store
            .fsck_repair(report, options, |n| self.mirrors.is_mirrored_local(n))
            .await
    }

    /// Delete upload sessions not touched for `max_age_ms`. A session with
    /// a chunk arriving is active however long the chunk takes. Returns
    /// how many.
    pub async fn purge_stale_uploads(&self, max_age_ms: u64) -> Result<usize> {
        self.store.purge_stale_uploads(max_age_ms).await
    }

    // ----- blob misses for hosts that move the bytes (see docs/library.md) --

    /// Like [`Registry::handle`], but a read of a mirrored blob that is not
    /// stored is handed back as a [`BlobMiss`] instead of being filled by
    /// the core: the host fetches it with [`Registry::fetch_blob`], streams
    /// it to the client and to storage under [`BlobMiss::key`] (storage
    /// must only make it visible if its bytes hash to [`BlobMiss::digest`]),
    /// and records it with [`Registry::commit_blob`]. Everything else
    /// (manifests and their revalidation, stale serving, blob hits, ranges,
    /// errors) is [`Registry::handle`]'s answer.
    ///
    /// A whole-blob `GET` of a blob already linked into the mirrored
    /// repository is answered with two storage reads (the link, the blob)
    /// instead of the general path's five: that is the request a cache
    /// serves most, and every read is a round trip to an object store.
    pub async fn handle_edge(&self, req: Request<ByteStream>) -> Edge<S::Body, F, H> {
        match self.mirror().mirrored_blob(&req).await {
            Some(edge) => edge,
            None => Edge::Response(self.handle(req).await),
        }
    }

    /// Take part in the single flight for a miss the host will fill: the
    /// first request for a (repository, digest) gets the [`FillLease`](crate::FillLease) and
    /// fills; the others get a [`FillFollower`] for
    /// [`Registry::follow_fill`]. The core's own fills (behind
    /// [`Registry::handle`]) take the same claim, so a blob is never filled
    /// twice at once, in a process or among processes sharing the storage.
    pub async fn claim_fill(&self, miss: &BlobMiss<F, H>) -> FillClaim<S, H> {
        self.mirror()
            .claim_fill(&miss.target.local, &miss.digest)
            .await
    }

    /// Wait for the fill another request leads, here or in another process.
    /// [`Followed::LookAgain`]: the blob is stored now, or its filler went
    /// away and a fresh claim may lead. [`Followed::Lead`]: the filler in
    /// another process died and this request holds its lease now: fill.
    /// `Err`: the fill failed, answer with it. Waits with [`Host::sleep`],
    /// never by being woken from another request.
    pub async fn follow_fill(
        &self,
        follower: FillFollower<S, H>,
    ) -> Result<Followed<S, H>, RegistryError> {
        self.mirror().follow_fill(follower).await
    }

    /// Ask the upstream for a missing blob (`HEAD` for a `HEAD` miss). The
    /// response is a success; its body is the host's, unread. The whole
    /// blob is asked for even when the client wants a range, so that it can
    /// be stored.
    pub async fn fetch_blob(
        &self,
        miss: &BlobMiss<F, H>,
    ) -> Result<http::Response<F::Body>, RegistryError> {
        self.mirror().fetch_blob(miss).await
    }

    /// The response to a blob miss whose bytes the host streams as `body`
    /// (`size`: the upstream's `Content-Length`, if it sent one). A `HEAD`
    /// miss gets an empty body whatever is passed.
    pub fn blob_miss_response<B>(
        &self,
        miss: &BlobMiss<F, H>,
        size: Option<u64>,
        body: Body<B>,
    ) -> Response<B> {
        self.mirror().blob_miss_response(miss, size, body)
    }

    /// Record a blob the host has stored under [`BlobMiss::key`] after
    /// storage checked its digest: link it into the mirrored repository and
    /// list the repository in the catalog. Fails if the blob is not there.
    pub async fn commit_blob(&self, miss: &BlobMiss<F, H>) -> Result<(), RegistryError> {
        self.mirror().commit_blob(miss).await
    }
}
