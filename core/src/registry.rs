//! Hosted repositories: the registry operations of the distribution spec
//! over a [`Storage`] backend.

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::header::{
    HeaderName, HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    LINK, LOCATION, RANGE,
};
use http::{Method, Request, StatusCode};

use crate::api::{self, Route};
use crate::body::{self, Body, ByteStream, CollectError};
use crate::cache::Mirrors;
use crate::digest::{self, Algorithm, Digest, Hasher};
use crate::error::{ErrorCode, RegistryError};
use crate::fetch::{Fetch, NoFetch};
use crate::host::Host;
use crate::layout;
use crate::manifest::{self, media_type, Descriptor};
use crate::manifest_cache::{CachedManifest, ManifestCache};
use crate::metrics::Metrics;
use crate::reference::{Reference, RepositoryName, Tag};
use crate::storage::{PutMode, Storage, StorageError};
use crate::upload::{Chunk, UploadId, UploadState};
use crate::upstream::{UpstreamConfig, UpstreamError};

/// A response from the registry; `B` is the storage backend's body type,
/// so stored bytes reach the host's HTTP layer untouched.
pub type Response<B> = http::Response<Body<B>>;

/// Most tags one manifest push may apply (`?tag=`); the spec asks for at
/// least 10.
const MAX_TAGS_PER_PUSH: usize = 100;
pub(crate) type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// What an operator tunes about a registry. [`Default`] has a registry
/// that allows deletes, takes manifests up to 4 MiB, pages up to 10,000
/// entries, keeps 16 MiB of recent manifests and records a mirrored
/// blob's use at most every five minutes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// Allow DELETE of manifests, tags and blobs.
    pub delete_enabled: bool,
    /// Largest manifest accepted, in bytes (OCI asks registries to take at
    /// least 4 MiB).
    pub max_manifest_size: usize,
    /// Largest page of tags or repositories returned for one request.
    pub max_page_size: usize,
    /// Memory for recently served manifests and mirrored tag lookups.
    pub manifest_cache_bytes: usize,
    /// How often, at most, the last use of one mirrored blob is written to
    /// storage (eviction goes by it; memory has every use in between).
    pub access_record_interval_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            delete_enabled: true,
            max_manifest_size: 4 * 1024 * 1024,
            max_page_size: 10_000,
            manifest_cache_bytes: 16 * 1024 * 1024,
            access_record_interval_ms: 5 * 60 * 1000,
        }
    }
}

/// A registry: hosted repositories over storage `S` and, when built with
/// [`RegistryBuilder::mirror`], a pull-through cache of
/// upstream registries reached with `F`. `H` is the host's clock,
/// randomness and task spawner. Every operation takes `&self`.
pub struct Registry<S, H, F = NoFetch> {
    pub(crate) storage: Arc<S>,
    pub(crate) host: Arc<H>,
    pub(crate) config: RegistryConfig,
    /// Repositories known to have a catalog marker, to skip rewriting it.
    cataloged: Mutex<HashSet<RepositoryName>>,
    pub(crate) mirrors: Mirrors<F, H>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) recent: ManifestCache,
    /// Upload sessions with a request writing to them, and how many.
    uploads_writing: Mutex<HashMap<UploadId, usize>>,
}

impl<S: Storage, H: Host> Registry<S, H, NoFetch> {
    /// A registry of hosted repositories only.
    pub fn new(storage: S, host: H, config: RegistryConfig) -> Self {
        Self::build(
            storage,
            Arc::new(host),
            config,
            Mirrors::none(),
            Arc::default(),
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
            storage: Arc::new(storage),
            host,
            recent: ManifestCache::new(config.manifest_cache_bytes),
            config,
            cataloged: Mutex::new(HashSet::new()),
            mirrors,
            metrics,
            uploads_writing: Mutex::default(),
        }
    }

    /// The storage backend the registry was built on.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The host capabilities the registry was built with.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The registry's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The configuration the registry was built with.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Answer one `/v2/` request. Never fails: errors become OCI error
    /// responses.
    pub async fn handle(&self, req: Request<ByteStream>) -> Response<S::Body> {
        let head = req.method() == Method::HEAD;
        let kind = match api::route(req.method(), req.uri().path()) {
            Ok(Some(r)) => r.kind(),
            _ => "other",
        };
        let mut resp = match self.dispatch(req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        self.metrics.request(kind, resp.status().as_u16());
        if head {
            // Keep Content-Length: HEAD reports the size of what GET sends.
            *resp.body_mut() = Body::Empty;
        }
        resp.headers_mut().insert(
            api::API_VERSION_HEADER,
            HeaderValue::from_static(api::API_VERSION),
        );
        resp
    }

    async fn dispatch(&self, req: Request<ByteStream>) -> Result<Response<S::Body>> {
        let route = api::route(req.method(), req.uri().path())?.ok_or_else(|| {
            RegistryError::new(ErrorCode::Unsupported, "not a registry API path")
                .with_status(StatusCode::NOT_FOUND)
        })?;
        let (parts, body) = req.into_parts();
        if let Some(name) = route.name() {
            if let Some(target) = self.mirrors.target(name, &parts.uri)? {
                return self.dispatch_mirror(route, target, &parts).await;
            }
        }
        let m = &parts.method;
        let is = |allowed: &[Method]| allowed.contains(m);
        let allow = route.allowed_methods();
        match route {
            Route::Base if is(&[Method::GET, Method::HEAD]) => {
                Ok(json_response(StatusCode::OK, Bytes::from_static(b"{}")))
            }
            Route::Catalog if is(&[Method::GET, Method::HEAD]) => self.catalog(&parts.uri).await,
            Route::Tags(name) if is(&[Method::GET, Method::HEAD]) => {
                self.tags(&name, &parts.uri).await
            }
            Route::Manifest(name, r) if is(&[Method::GET, Method::HEAD]) => {
                self.get_manifest(&name, &r).await
            }
            Route::Manifest(name, r) if is(&[Method::PUT]) => {
                let ct = api::header(&parts.headers, "content-type");
                self.put_manifest(&name, &r, &parts.uri, ct, body).await
            }
            Route::Manifest(name, r) if is(&[Method::DELETE]) => {
                self.delete_manifest(&name, &r).await
            }
            Route::Blob(name, d) if is(&[Method::GET, Method::HEAD]) => {
                let range =
                    api::header(&parts.headers, "range").filter(|r| api::single_byte_range(r));
                self.get_blob(&name, &d, range, m == Method::HEAD).await
            }
            Route::Blob(name, d) if is(&[Method::DELETE]) => self.delete_blob(&name, &d).await,
            Route::Uploads(name) if is(&[Method::POST]) => {
                self.start_upload(&name, &parts.uri, body).await
            }
            Route::Upload(name, id) if is(&[Method::GET]) => self.upload_status(&name, &id).await,
            Route::Upload(name, id) if is(&[Method::PATCH]) => {
                let cr = api::header_strict(&parts.headers, "content-range")?;
                self.patch_upload(&name, &id, cr, body).await
            }
            Route::Upload(name, id) if is(&[Method::PUT]) => {
                let cr = api::header_strict(&parts.headers, "content-range")?;
                self.finish_upload(&name, &id, &parts.uri, cr, body).await
            }
            Route::Upload(name, id) if is(&[Method::DELETE]) => {
                self.cancel_upload(&name, &id).await
            }
            Route::Referrers(name, d) if is(&[Method::GET, Method::HEAD]) => {
                self.referrers(&name, &d, &parts.uri).await
            }
            _ => Err(RegistryError::new(
                ErrorCode::Unsupported,
                format!("method {m} not allowed here"),
            )
            .with_header(http::header::ALLOW, allow)),
        }
    }

    // ----- manifests -------------------------------------------------------

    pub(crate) async fn resolve(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<Digest> {
        match reference {
            Reference::Digest(d) => Ok(d.clone()),
            Reference::Tag(t) => {
                let raw = self
                    .storage
                    .read(&layout::tag(name, t))
                    .await?
                    .ok_or_else(|| manifest_unknown(name, reference))?;
                let text = std::str::from_utf8(&raw)
                    .map_err(|_| RegistryError::internal("corrupt tag link"))?;
                Digest::parse(text.trim()).map_err(|_| RegistryError::internal("corrupt tag link"))
            }
        }
    }

    pub(crate) async fn get_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<Response<S::Body>> {
        let digest = self.resolve(name, reference).await?;
        self.manifest_response(name, &digest, reference).await
    }

    /// The manifest `digest` of `name` (asked for as `reference`), from
    /// memory when it was served recently.
    pub(crate) async fn manifest_response(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        reference: &Reference,
    ) -> Result<Response<S::Body>> {
        let digest = digest.clone();
        let CachedManifest { media_type, bytes } = match self.recent.manifest(name, &digest) {
            Some(m) => m,
            None => {
                let seen = self.recent.epoch();
                let media_type = self
                    .storage
                    .read(&layout::manifest_revision(name, &digest))
                    .await?
                    .ok_or_else(|| manifest_unknown(name, reference))?;
                let bytes = self
                    .storage
                    .read(&layout::blob(&digest))
                    .await?
                    .ok_or_else(|| manifest_unknown(name, reference))?;
                let m = CachedManifest { media_type, bytes };
                self.recent.put_manifest(name, &digest, m.clone(), seen);
                m
            }
        };
        let mut resp = response(StatusCode::OK, Body::Full(bytes.clone()));
        let h = resp.headers_mut();
        set(
            h,
            CONTENT_TYPE,
            String::from_utf8_lossy(&media_type).as_ref(),
        );
        set(h, CONTENT_LENGTH, &bytes.len().to_string());
        set(h, api::CONTENT_DIGEST_HEADER, &digest.to_string());
        set(h, ETAG, &format!("\"{digest}\""));
        Ok(resp)
    }

    async fn put_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
        uri: &http::Uri,
        content_type: Option<&str>,
        body: ByteStream,
    ) -> Result<Response<S::Body>> {
        // A push by digest may tag it too (`?tag=a&tag=b`): every tag is
        // checked before anything is stored.
        let mut tags = match reference {
            Reference::Tag(t) => vec![t.clone()],
            Reference::Digest(_) => api::query_params(uri, "tag")?
                .iter()
                .map(|t| Tag::parse(t))
                .collect::<Result<Vec<_>, _>>()?,
        };
        tags.dedup();
        if tags.len() > MAX_TAGS_PER_PUSH {
            return Err(RegistryError::new(
                ErrorCode::TagInvalid,
                format!("at most {MAX_TAGS_PER_PUSH} tags per push"),
            )
            .with_status(StatusCode::URI_TOO_LONG));
        }
        let bytes = body::collect_limited(body, self.config.max_manifest_size)
            .await
            .map_err(|e| match e {
                CollectError::TooLarge => RegistryError::new(
                    ErrorCode::SizeInvalid,
                    format!(
                        "manifest larger than {} bytes",
                        self.config.max_manifest_size
                    ),
                )
                .with_status(StatusCode::PAYLOAD_TOO_LARGE),
                CollectError::Io(e) => {
                    RegistryError::new(ErrorCode::ManifestInvalid, format!("reading manifest: {e}"))
                }
            })?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::compute(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(RegistryError::new(
                        ErrorCode::DigestInvalid,
                        format!("manifest digest is {actual}, not {d}"),
                    ));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256(&bytes),
        };
        let parsed = manifest::parse(&bytes, content_type)
            .map_err(|e| RegistryError::new(ErrorCode::ManifestInvalid, e.to_string()))?;

        for d in parsed.required_blobs() {
            self.check_blob_reference(name, d).await?;
        }
        for d in &parsed.manifests {
            if self
                .storage
                .head(&layout::manifest_revision(name, &d.digest))
                .await?
                .is_none()
            {
                return Err(RegistryError::new(
                    ErrorCode::ManifestBlobUnknown,
                    format!("referenced manifest {} is not in {name}", d.digest),
                ));
            }
        }

        self.store_manifest(name, &digest, bytes, &parsed, &tags)
            .await?;

        let mut resp = response(StatusCode::CREATED, Body::Empty);
        let h = resp.headers_mut();
        set(h, LOCATION, &format!("/v2/{name}/manifests/{digest}"));
        set(h, api::CONTENT_DIGEST_HEADER, &digest.to_string());
        set(h, CONTENT_LENGTH, "0");
        if matches!(reference, Reference::Digest(_)) && !tags.is_empty() {
            let applied: Vec<&str> = tags.iter().map(Tag::as_str).collect();
            set(
                h,
                HeaderName::from_static(api::OCI_TAG_HEADER),
                &applied.join(", "),
            );
        }
        if let Some(subject) = &parsed.subject {
            set(h, api::OCI_SUBJECT_HEADER, &subject.digest.to_string());
        }
        Ok(resp)
    }

    /// Store verified manifest bytes in `name`, with the referrers entry of
    /// its subject and `tags`. Bytes first, then the revision link, then the
    /// tags: a crash at any point leaves nothing pointing at data that is
    /// not there. A tag records `digest` as given, so it answers with the
    /// algorithm the manifest was pushed under.
    pub(crate) async fn store_manifest(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        bytes: Bytes,
        parsed: &manifest::Manifest,
        tags: &[Tag],
    ) -> Result<()> {
        let size = bytes.len() as u64;
        self.storage
            .put(&layout::blob(digest), bytes, PutMode::Overwrite)
            .await?;
        self.storage
            .put(
                &layout::manifest_revision(name, digest),
                Bytes::from(parsed.media_type()),
                PutMode::Overwrite,
            )
            .await?;
        // The same bytes may come again with another media type: the
        // cached answer must not outlive the revision it was read from.
        self.recent.forget(name, digest);
        if let Some(subject) = &parsed.subject {
            let desc = serde_json::to_vec(&parsed.referrer_descriptor(digest.clone(), size))
                .expect("descriptor serializes");
            self.storage
                .put(
                    &layout::referrer(name, &subject.digest, digest),
                    desc.into(),
                    PutMode::Overwrite,
                )
                .await?;
        }
        for t in tags {
            self.storage
                .put(
                    &layout::tag(name, t),
                    Bytes::from(digest.to_string()),
                    PutMode::Overwrite,
                )
                .await?;
        }
        self.ensure_cataloged(name).await
    }

    async fn check_blob_reference(&self, name: &RepositoryName, d: &Descriptor) -> Result<()> {
        let unknown = || {
            RegistryError::new(
                ErrorCode::ManifestBlobUnknown,
                format!("blob {} is not in {name}", d.digest),
            )
        };
        if self
            .storage
            .head(&layout::layer_link(name, &d.digest))
            .await?
            .is_none()
        {
            return Err(unknown());
        }
        let meta = self
            .storage
            .head(&layout::blob(&d.digest))
            .await?
            .ok_or_else(unknown)?;
        if meta.size != d.size {
            return Err(RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!(
                    "descriptor of {} says {} bytes, the blob has {}",
                    d.digest, d.size, meta.size
                ),
            ));
        }
        Ok(())
    }

    async fn delete_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<Response<S::Body>> {
        self.check_delete_enabled("GET, HEAD, PUT")?;
        match reference {
            Reference::Tag(t) => {
                let key = layout::tag(name, t);
                if self.storage.head(&key).await?.is_none() {
                    return Err(manifest_unknown(name, reference));
                }
                self.storage.delete(&key).await?;
            }
            Reference::Digest(d) => {
                let rev = layout::manifest_revision(name, d);
                if self.storage.head(&rev).await?.is_none() {
                    self.recent.forget(name, d);
                    return Err(manifest_unknown(name, reference));
                }
                // Tags first, so no tag is ever left pointing at a deleted
                // revision; the blob itself stays for garbage collection.
                for key in self.storage.list(&layout::tags_prefix(name)).await? {
                    if let Some(raw) = self.storage.read(&key).await? {
                        if raw.as_ref() == d.to_string().as_bytes() {
                            self.storage.delete(&key).await?;
                        }
                    }
                }
                if let Some(bytes) = self.storage.read(&layout::blob(d)).await? {
                    if let Ok(m) = manifest::parse(&bytes, None) {
                        if let Some(subject) = m.subject {
                            self.storage
                                .delete(&layout::referrer(name, &subject.digest, d))
                                .await?;
                        }
                    }
                }
                self.storage.delete(&rev).await?;
                self.recent.forget(name, d);
            }
        }
        Ok(accepted())
    }

    // ----- blobs -----------------------------------------------------------

    pub(crate) async fn get_blob(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        range: Option<&str>,
        head_only: bool,
    ) -> Result<Response<S::Body>> {
        let unknown = || {
            RegistryError::new(
                ErrorCode::BlobUnknown,
                format!("blob {digest} is not in {name}"),
            )
        };
        if self
            .storage
            .head(&layout::layer_link(name, digest))
            .await?
            .is_none()
        {
            return Err(unknown());
        }
        let key = layout::blob(digest);
        let (status, body, len, content_range) = match range {
            // HEAD reports the whole blob; no need to open it.
            _ if head_only => {
                let size = self.storage.head(&key).await?.ok_or_else(unknown)?.size;
                (StatusCode::OK, Body::Empty, size, None)
            }
            None => {
                let (meta, body) = self.storage.get(&key, None).await?.ok_or_else(unknown)?;
                (StatusCode::OK, Body::Stream(body), meta.size, None)
            }
            Some(value) => {
                let size = self.storage.head(&key).await?.ok_or_else(unknown)?.size;
                let r = satisfiable_range(value, size)?;
                let (_, body) = self
                    .storage
                    .get(&key, Some(r.clone()))
                    .await?
                    .ok_or_else(unknown)?;
                let cr = format!("bytes {}-{}/{size}", r.start, r.end - 1);
                (
                    StatusCode::PARTIAL_CONTENT,
                    Body::Stream(body),
                    r.end - r.start,
                    Some(cr),
                )
            }
        };
        Ok(blob_response(
            status,
            body,
            digest,
            Some(len),
            content_range,
        ))
    }

    async fn delete_blob(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Response<S::Body>> {
        self.check_delete_enabled("GET, HEAD")?;
        let link = layout::layer_link(name, digest);
        if self.storage.head(&link).await?.is_none() {
            return Err(RegistryError::new(
                ErrorCode::BlobUnknown,
                format!("blob {digest} is not in {name}"),
            ));
        }
        self.storage.delete(&link).await?;
        Ok(accepted())
    }

    pub(crate) async fn link_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        self.storage
            .put(
                &layout::layer_link(name, digest),
                Bytes::new(),
                PutMode::Overwrite,
            )
            .await?;
        self.ensure_cataloged(name).await
    }

    fn blob_created(&self, name: &RepositoryName, digest: &Digest) -> Response<S::Body> {
        let mut resp = response(StatusCode::CREATED, Body::Empty);
        let h = resp.headers_mut();
        set(h, LOCATION, &format!("/v2/{name}/blobs/{digest}"));
        set(h, api::CONTENT_DIGEST_HEADER, &digest.to_string());
        set(h, CONTENT_LENGTH, "0");
        resp
    }

    /// Store a whole blob from `body`, visible only if it hashes to `digest`.
    async fn store_blob(&self, digest: &Digest, body: ByteStream) -> Result<()> {
        let key = layout::blob(digest);
        let verified = digest::verify(body, digest.clone(), None);
        self.storage
            .put_stream(&key, verified)
            .await
            .map_err(upload_error)?;
        Ok(())
    }

    // ----- uploads ---------------------------------------------------------

    async fn start_upload(
        &self,
        name: &RepositoryName,
        uri: &http::Uri,
        body: ByteStream,
    ) -> Result<Response<S::Body>> {
        if let Some(mount) = api::query_param(uri, "mount") {
            let digest = Digest::parse(&mount?)?;
            if let Some(from) = api::query_param(uri, "from") {
                let from = RepositoryName::parse(&from?)?;
                let linked = self
                    .storage
                    .head(&layout::layer_link(&from, &digest))
                    .await?
                    .is_some();
                if linked && self.storage.head(&layout::blob(&digest)).await?.is_some() {
                    self.link_blob(name, &digest).await?;
                    return Ok(self.blob_created(name, &digest));
                }
            }
            // Not mountable: the spec says fall back to a normal session.
        } else if let Some(d) = api::query_param(uri, "digest") {
            let digest = Digest::parse(&d?)?;
            self.store_blob(&digest, body).await?;
            self.link_blob(name, &digest).await?;
            return Ok(self.blob_created(name, &digest));
        }

        let mut raw = [0u8; 16];
        self.host.fill_random(&mut raw);
        let id = UploadId::from_random(raw);
        let state = UploadState::new(name, self.host.now_unix_ms());
        self.storage
            .put(&layout::upload_state(&id), state.encode(), PutMode::Create)
            .await?;
        Ok(self.upload_response(StatusCode::ACCEPTED, name, &id, &state))
    }

    fn upload_response(
        &self,
        status: StatusCode,
        name: &RepositoryName,
        id: &UploadId,
        state: &UploadState,
    ) -> Response<S::Body> {
        let mut resp = response(status, Body::Empty);
        let h = resp.headers_mut();
        set(h, LOCATION, &format!("/v2/{name}/blobs/uploads/{id}"));
        set(h, api::UPLOAD_UUID_HEADER, id.as_str());
        set(h, RANGE, &state.range_header());
        set(h, CONTENT_LENGTH, "0");
        resp
    }

    async fn load_upload(&self, name: &RepositoryName, id: &UploadId) -> Result<UploadState> {
        let unknown =
            || RegistryError::new(ErrorCode::BlobUploadUnknown, format!("upload {id} unknown"));
        let raw = self
            .storage
            .read(&layout::upload_state(id))
            .await?
            .ok_or_else(unknown)?;
        let state = UploadState::decode(&raw).ok_or_else(unknown)?;
        if state.repository != name.as_str() {
            return Err(unknown());
        }
        Ok(state)
    }

    async fn upload_status(
        &self,
        name: &RepositoryName,
        id: &UploadId,
    ) -> Result<Response<S::Body>> {
        let state = self.load_upload(name, id).await?;
        Ok(self.upload_response(StatusCode::NO_CONTENT, name, id, &state))
    }

    /// Check a chunk's Content-Range against the session: 416 if it does not
    /// start where the upload is. Returns the chunk length it announces.
    fn check_chunk_range(
        &self,
        name: &RepositoryName,
        id: &UploadId,
        state: &UploadState,
        content_range: Option<&str>,
    ) -> Result<Option<u64>> {
        let Some(value) = content_range else {
            return Ok(None);
        };
        let range_error = |msg: String| {
            RegistryError::new(ErrorCode::RangeInvalid, msg)
                .with_header(RANGE, state.range_header())
                .with_header(LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
                .with_header(
                    HeaderName::from_static(api::UPLOAD_UUID_HEADER),
                    id.as_str(),
                )
        };
        let (start, end) = api::parse_content_range(value)
            .ok_or_else(|| range_error(format!("malformed Content-Range {value:?}")))?;
        if start != state.offset {
            return Err(range_error(format!(
                "chunk starts at {start}, upload is at {}",
                state.offset
            )));
        }
        let len = (end - start)
            .checked_add(1)
            .ok_or_else(|| range_error(format!("Content-Range {value:?} is too large")))?;
        Ok(Some(len))
    }

    /// Store `body` as the session's next chunk and advance `state`; with
    /// `persist`, write the state too. Returns the chunk's key (`None` for
    /// an empty body). A session removed while the chunk was being written
    /// (by a janitor elsewhere) stays removed: the chunk is dropped and the
    /// upload is unknown.
    async fn append_chunk(
        &self,
        id: &UploadId,
        state: &mut UploadState,
        body: ByteStream,
        expected_len: Option<u64>,
        persist: bool,
    ) -> Result<Option<String>> {
        let hasher = Hasher::restore(&state.hasher)
            .ok_or_else(|| RegistryError::internal("corrupt upload state"))?;
        let slot = Arc::new(Mutex::new(None));
        let stream = Box::pin(Hashing {
            inner: body,
            hasher: Some(hasher),
            len: 0,
            expected_len,
            done: slot.clone(),
        });
        let mut nonce = [0u8; 8];
        self.host.fill_random(&mut nonce);
        let nonce = hex::encode(nonce);
        let key = layout::upload_chunk(id, state.offset, &nonce);
        self.storage
            .put_stream(&key, stream)
            .await
            .map_err(upload_error)?;
        let (hasher, len) = slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| RegistryError::internal("chunk stream did not finish"))?;
        if len == 0 {
            self.storage.delete(&key).await?;
            return Ok(None);
        }
        if self
            .storage
            .head(&layout::upload_state(id))
            .await?
            .is_none()
        {
            self.storage.delete(&key).await?;
            return Err(RegistryError::new(
                ErrorCode::BlobUploadUnknown,
                format!("upload {id} was removed while the chunk arrived"),
            ));
        }
        state.chunks.push(Chunk {
            offset: state.offset,
            nonce,
        });
        state.offset += len;
        state.hasher = hasher.save();
        state.updated_ms = self.host.now_unix_ms();
        if persist {
            self.storage
                .put(
                    &layout::upload_state(id),
                    state.encode(),
                    PutMode::Overwrite,
                )
                .await?;
        }
        Ok(Some(key))
    }

    async fn patch_upload(
        &self,
        name: &RepositoryName,
        id: &UploadId,
        content_range: Option<&str>,
        body: ByteStream,
    ) -> Result<Response<S::Body>> {
        let _writing = self.writing(id);
        let mut state = self.load_upload(name, id).await?;
        let expected = self.check_chunk_range(name, id, &state, content_range)?;
        self.append_chunk(id, &mut state, body, expected, true)
            .await?;
        Ok(self.upload_response(StatusCode::ACCEPTED, name, id, &state))
    }

    async fn finish_upload(
        &self,
        name: &RepositoryName,
        id: &UploadId,
        uri: &http::Uri,
        content_range: Option<&str>,
        body: ByteStream,
    ) -> Result<Response<S::Body>> {
        let digest = match api::query_param(uri, "digest") {
            Some(d) => Digest::parse(&d?)?,
            None => {
                return Err(RegistryError::new(
                    ErrorCode::DigestInvalid,
                    "digest query parameter required",
                ))
            }
        };
        let _writing = self.writing(id);
        let mut state = self.load_upload(name, id).await?;
        let expected = self.check_chunk_range(name, id, &state, content_range)?;
        let (first, body) = peek(body).await.map_err(|e| {
            RegistryError::new(ErrorCode::BlobUploadInvalid, format!("reading body: {e}"))
        })?;

        if state.chunks.is_empty() {
            // Monolithic: nothing staged, so the body goes straight to its
            // final place through the verifier.
            let body = match expected {
                Some(n) => digest::verify(body, digest.clone(), Some(n)),
                None => body,
            };
            self.store_blob(&digest, body).await?;
        } else {
            // The final chunk joins the session only if the blob commits:
            // a failed PUT leaves the session as it was, so the client can
            // send it again (with the right digest).
            let last = match first {
                Some(_) => {
                    self.append_chunk(id, &mut state, body, expected, false)
                        .await?
                }
                None => None,
            };
            if let Err(e) = self.commit_chunks(id, &state, &digest).await {
                if let Some(key) = last {
                    self.storage.delete(&key).await?;
                }
                return Err(e);
            }
        }
        self.link_blob(name, &digest).await?;
        self.remove_upload(id).await?;
        Ok(self.blob_created(name, &digest))
    }

    /// Move the staged chunks to the blob's place, if they hash to `digest`.
    async fn commit_chunks(
        &self,
        id: &UploadId,
        state: &UploadState,
        digest: &Digest,
    ) -> Result<()> {
        if digest.algorithm() == Algorithm::Sha256 {
            let actual = Hasher::restore(&state.hasher)
                .ok_or_else(|| RegistryError::internal("corrupt upload state"))?
                .finish();
            if &actual != digest {
                return Err(RegistryError::new(
                    ErrorCode::DigestInvalid,
                    format!("uploaded content has digest {actual}, not {digest}"),
                ));
            }
            if let [only] = state.chunks.as_slice() {
                // The chunk's bytes were hashed on their way into storage:
                // renaming them is as good as writing them again, and free.
                let from = layout::upload_chunk(id, only.offset, &only.nonce);
                self.storage.rename(&from, &layout::blob(digest)).await?;
                return Ok(());
            }
        }
        // Several chunks (or a sha512 digest): join them through the verifier.
        let keys: Vec<String> = state
            .chunks
            .iter()
            .map(|c| layout::upload_chunk(id, c.offset, &c.nonce))
            .collect();
        let joined = join_objects(self.storage.clone(), keys);
        self.store_blob(digest, joined).await
    }

    async fn cancel_upload(
        &self,
        name: &RepositoryName,
        id: &UploadId,
    ) -> Result<Response<S::Body>> {
        self.load_upload(name, id).await?;
        self.remove_upload(id).await?;
        let mut resp = response(StatusCode::NO_CONTENT, Body::Empty);
        set(resp.headers_mut(), CONTENT_LENGTH, "0");
        Ok(resp)
    }

    async fn remove_upload(&self, id: &UploadId) -> Result<()> {
        // State last: while it exists the session can be found and cleaned.
        let state_key = layout::upload_state(id);
        for key in self.storage.list(&layout::upload_dir(id)).await? {
            if key != state_key {
                self.storage.delete(&key).await?;
            }
        }
        self.storage.delete(&state_key).await?;
        Ok(())
    }

    /// Every session (or fill spool) in the upload area, from its keys (a
    /// session whose state is gone still has chunks to find).
    async fn upload_ids(&self) -> Result<Vec<UploadId>> {
        let keys = self.storage.list(layout::UPLOADS_PREFIX).await?;
        let ids: std::collections::BTreeSet<&str> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(layout::UPLOADS_PREFIX)?.split('/').next())
            .collect();
        Ok(ids.into_iter().filter_map(UploadId::parse).collect())
    }

    /// Delete the spools of cache fills: at startup they are all leftovers
    /// of a crash (a fill lives and dies with its process). Returns how many.
    pub async fn purge_interrupted_fills(&self) -> Result<usize> {
        let mut purged = 0;
        for id in self.upload_ids().await? {
            if let Some(raw) = self.storage.read(&layout::upload_state(&id)).await? {
                if UploadState::decode(&raw).is_some_and(|s| s.fill) {
                    self.remove_upload(&id).await?;
                    purged += 1;
                }
            }
        }
        Ok(purged)
    }

    /// Mark a session as receiving data until the guard drops.
    fn writing(&self, id: &UploadId) -> Writing<'_> {
        *self
            .uploads_writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_default() += 1;
        Writing {
            map: &self.uploads_writing,
            id: id.clone(),
        }
    }

    /// Delete upload sessions not touched for `max_age_ms`. A session with
    /// a chunk arriving is active however long the chunk takes. Returns
    /// how many.
    pub async fn purge_stale_uploads(&self, max_age_ms: u64) -> Result<usize> {
        let now = self.host.now_unix_ms();
        let mut purged = 0;
        for id in self.upload_ids().await? {
            if self
                .uploads_writing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&id)
            {
                continue;
            }
            let stale = match self.storage.read(&layout::upload_state(&id)).await? {
                Some(raw) => UploadState::decode(&raw)
                    .is_none_or(|s| now.saturating_sub(s.updated_ms) > max_age_ms),
                None => true, // chunks without state: a crash mid-cleanup
            };
            if stale {
                self.remove_upload(&id).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    // ----- discovery -------------------------------------------------------

    pub(crate) async fn ensure_cataloged(&self, name: &RepositoryName) -> Result<()> {
        if self
            .cataloged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
        {
            return Ok(());
        }
        self.storage
            .put(
                &layout::catalog_entry(name),
                Bytes::new(),
                PutMode::Overwrite,
            )
            .await?;
        self.cataloged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        Ok(())
    }

    pub(crate) async fn tags(
        &self,
        name: &RepositoryName,
        uri: &http::Uri,
    ) -> Result<Response<S::Body>> {
        if self
            .storage
            .head(&layout::catalog_entry(name))
            .await?
            .is_none()
        {
            return Err(RegistryError::new(
                ErrorCode::NameUnknown,
                format!("repository {name} not known"),
            ));
        }
        let prefix = layout::tags_prefix(name);
        let all: Vec<String> = self
            .storage
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .filter(|t| Tag::parse(t).is_ok())
            .collect();
        let Page {
            entries: page,
            next,
        } = self.paginate(all, uri)?;
        let body = serde_json::json!({ "name": name.as_str(), "tags": page });
        let mut resp = json_response(StatusCode::OK, body.to_string().into());
        if let Some((n, last)) = next {
            let link = format!(
                "</v2/{name}/tags/list?n={n}&last={}>; rel=\"next\"",
                api::percent_encode(&last)
            );
            set(resp.headers_mut(), LINK, &link);
        }
        Ok(resp)
    }

    async fn catalog(&self, uri: &http::Uri) -> Result<Response<S::Body>> {
        let mut all: Vec<String> = self
            .storage
            .list(layout::CATALOG_PREFIX)
            .await?
            .iter()
            .filter_map(|k| layout::catalog_name(k))
            .map(|n| n.as_str().to_owned())
            .collect();
        all.sort();
        let Page {
            entries: page,
            next,
        } = self.paginate(all, uri)?;
        let body = serde_json::json!({ "repositories": page });
        let mut resp = json_response(StatusCode::OK, body.to_string().into());
        if let Some((n, last)) = next {
            set(
                resp.headers_mut(),
                LINK,
                &format!(
                    "</v2/_catalog?n={n}&last={}>; rel=\"next\"",
                    api::percent_encode(&last)
                ),
            );
        }
        Ok(resp)
    }

    /// The `n` (capped at the largest page) and `last` of a listing request.
    pub(crate) fn page_query(&self, uri: &http::Uri) -> Result<(Option<usize>, Option<String>)> {
        let bad_n = || {
            RegistryError::new(
                ErrorCode::PaginationNumberInvalid,
                "n must be a non-negative integer",
            )
        };
        let n = match api::query_param(uri, "n") {
            None => None,
            Some(v) => {
                let v = v?;
                Some(
                    v.parse::<usize>()
                        .map_err(|_| bad_n())?
                        .min(self.config.max_page_size),
                )
            }
        };
        let last = api::query_param(uri, "last").transpose()?;
        Ok((n, last))
    }

    /// Apply `n` and `last` to a sorted list. Returns the page and, when more
    /// entries follow, the `n` and `last` of the next page.
    fn paginate(&self, sorted: Vec<String>, uri: &http::Uri) -> Result<Page> {
        let (n, last) = self.page_query(uri)?;
        let rest: Vec<String> = match &last {
            Some(l) => sorted
                .into_iter()
                .filter(|t| t.as_str() > l.as_str())
                .collect(),
            None => sorted,
        };
        let n = n.unwrap_or(rest.len().min(self.config.max_page_size));
        if n == 0 {
            return Ok(Page {
                entries: Vec::new(),
                next: None,
            });
        }
        let more = rest.len() > n;
        let page: Vec<String> = rest.into_iter().take(n).collect();
        let next = more.then(|| (n, page.last().cloned().unwrap_or_default()));
        Ok(Page {
            entries: page,
            next,
        })
    }

    pub(crate) async fn referrers(
        &self,
        name: &RepositoryName,
        subject: &Digest,
        uri: &http::Uri,
    ) -> Result<Response<S::Body>> {
        let filter = api::query_param(uri, "artifactType").transpose()?;
        let mut manifests = Vec::new();
        for key in self
            .storage
            .list(&layout::referrers_prefix(name, subject))
            .await?
        {
            let Some(raw) = self.storage.read(&key).await? else {
                continue;
            };
            let Ok(desc) = serde_json::from_slice::<Descriptor>(&raw) else {
                continue;
            };
            // A referrer whose manifest was deleted without cleanup is not listed.
            if self
                .storage
                .head(&layout::manifest_revision(name, &desc.digest))
                .await?
                .is_none()
            {
                continue;
            }
            if filter
                .as_ref()
                .is_none_or(|f| desc.artifact_type.as_deref() == Some(f.as_str()))
            {
                manifests.push(desc);
            }
        }
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": manifests,
        });
        let bytes = Bytes::from(body.to_string());
        let mut resp = response(StatusCode::OK, Body::Full(bytes.clone()));
        let h = resp.headers_mut();
        set(h, CONTENT_TYPE, media_type::OCI_INDEX);
        set(h, CONTENT_LENGTH, &bytes.len().to_string());
        if filter.is_some() {
            set(h, api::OCI_FILTERS_APPLIED_HEADER, "artifactType");
        }
        Ok(resp)
    }

    /// `allow`: what the resource still answers when deletes are off.
    fn check_delete_enabled(&self, allow: &'static str) -> Result<()> {
        if self.config.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::new(
                ErrorCode::Unsupported,
                "deletes are disabled on this registry",
            )
            .with_header(http::header::ALLOW, allow))
        }
    }
}

/// The byte range to serve for a `Range` header, or the 416 to answer.
pub(crate) fn satisfiable_range(value: &str, size: u64) -> Result<std::ops::Range<u64>> {
    api::parse_range(value, size).map_err(|_| {
        RegistryError::new(
            ErrorCode::RangeInvalid,
            format!("range {value:?} not satisfiable for {size} bytes"),
        )
        .with_header(CONTENT_RANGE, format!("bytes */{size}"))
    })
}

/// A blob response with the headers clients rely on.
pub(crate) fn blob_response<B>(
    status: StatusCode,
    body: Body<B>,
    digest: &Digest,
    len: Option<u64>,
    content_range: Option<String>,
) -> Response<B> {
    let mut resp = response(status, body);
    let h = resp.headers_mut();
    set(h, CONTENT_TYPE, "application/octet-stream");
    if let Some(len) = len {
        set(h, CONTENT_LENGTH, &len.to_string());
    }
    set(h, api::CONTENT_DIGEST_HEADER, &digest.to_string());
    set(h, ACCEPT_RANGES, "bytes");
    set(h, ETAG, &format!("\"{digest}\""));
    if let Some(cr) = content_range {
        set(h, CONTENT_RANGE, &cr);
    }
    resp
}

/// Held while a request writes to an upload session.
struct Writing<'a> {
    map: &'a Mutex<HashMap<UploadId, usize>>,
    id: UploadId,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.id);
            }
        }
    }
}

/// One page of a listing, and the `n` and `last` of the next if any.
struct Page {
    entries: Vec<String>,
    next: Option<(usize, String)>,
}

pub(crate) fn manifest_unknown(name: &RepositoryName, reference: &Reference) -> RegistryError {
    RegistryError::new(
        ErrorCode::ManifestUnknown,
        format!("manifest {reference} is not in {name}"),
    )
}

/// Map a failed blob write: bad client bytes are the client's error,
/// anything else is ours.
fn upload_error(e: StorageError) -> RegistryError {
    match e {
        StorageError::Input(io) => {
            if let Some(inner) = io.get_ref() {
                if let Some(m) = inner.downcast_ref::<digest::DigestMismatch>() {
                    return RegistryError::new(ErrorCode::DigestInvalid, m.to_string());
                }
                if let Some(m) = inner.downcast_ref::<digest::SizeMismatch>() {
                    return RegistryError::new(ErrorCode::SizeInvalid, m.to_string());
                }
            }
            RegistryError::new(
                ErrorCode::BlobUploadInvalid,
                format!("reading upload body: {io}"),
            )
        }
        other => other.into(),
    }
}

/// Hash a chunk on its way to storage; hand the hasher back at the end.
struct Hashing {
    inner: ByteStream,
    hasher: Option<Hasher>,
    len: u64,
    expected_len: Option<u64>,
    done: Arc<Mutex<Option<(Hasher, u64)>>>,
}

impl Stream for Hashing {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.hasher.is_none() {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.len += chunk.len() as u64;
                if this.expected_len.is_some_and(|n| this.len > n) {
                    this.hasher = None;
                    return Poll::Ready(Some(Err(size_mismatch(this.expected_len, this.len))));
                }
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let hasher = this.hasher.take().expect("checked above");
                if this.expected_len.is_some_and(|n| this.len != n) {
                    return Poll::Ready(Some(Err(size_mismatch(this.expected_len, this.len))));
                }
                *this.done.lock().unwrap_or_else(|p| p.into_inner()) = Some((hasher, this.len));
                Poll::Ready(None)
            }
        }
    }
}

/// The objects at `keys`, one after another, as one stream (upload chunks
/// and fill spools joined into a blob); a missing object fails the stream.
pub(crate) fn join_objects<S: Storage>(storage: Arc<S>, keys: Vec<String>) -> ByteStream {
    let parts = futures::stream::iter(keys).then(move |key| {
        let storage = storage.clone();
        async move {
            match storage.get(&key, None).await {
                Ok(Some((_, body))) => S::body_stream(body),
                Ok(None) => error_stream(io::Error::other(format!("{key} missing"))),
                Err(e) => error_stream(io::Error::other(e.to_string())),
            }
        }
    });
    Box::pin(parts.flatten())
}

pub(crate) fn error_stream(e: io::Error) -> ByteStream {
    Box::pin(futures::stream::once(async move { Err(e) }))
}

fn size_mismatch(expected: Option<u64>, actual: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        digest::SizeMismatch {
            expected: expected.unwrap_or(0),
            actual,
        },
    )
}

/// Read the first item of a stream, returning it and a stream that still
/// yields it.
async fn peek(mut body: ByteStream) -> io::Result<(Option<Bytes>, ByteStream)> {
    loop {
        match body.next().await {
            None => return Ok((None, body::empty())),
            Some(Err(e)) => return Err(e),
            Some(Ok(b)) if b.is_empty() => continue,
            Some(Ok(b)) => {
                let again = futures::stream::once({
                    let b = b.clone();
                    async move { Ok(b) }
                })
                .chain(body);
                return Ok((Some(b), Box::pin(again)));
            }
        }
    }
}

pub(crate) fn response<B>(status: StatusCode, body: Body<B>) -> Response<B> {
    let mut r = http::Response::new(body);
    *r.status_mut() = status;
    r
}

pub(crate) fn json_response<B>(status: StatusCode, bytes: Bytes) -> Response<B> {
    let len = bytes.len();
    let mut r = response(status, Body::Full(bytes));
    set(r.headers_mut(), CONTENT_TYPE, "application/json");
    set(r.headers_mut(), CONTENT_LENGTH, &len.to_string());
    r
}

fn accepted<B>() -> Response<B> {
    let mut r = response(StatusCode::ACCEPTED, Body::Empty);
    set(r.headers_mut(), CONTENT_LENGTH, "0");
    r
}

/// The OCI error response for `e`.
pub fn error_response<B>(e: &RegistryError) -> Response<B> {
    let mut r = json_response(e.status, Bytes::from(e.body_json()));
    for (name, value) in &e.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().insert(name.clone(), v);
        }
    }
    r.headers_mut().insert(
        api::API_VERSION_HEADER,
        HeaderValue::from_static(api::API_VERSION),
    );
    r
}

pub(crate) fn set<K: http::header::IntoHeaderName>(h: &mut http::HeaderMap, name: K, value: &str) {
    // Every value set here is built from validated parts (digests, names,
    // numbers); a value that still fails is dropped rather than panicking.
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}
