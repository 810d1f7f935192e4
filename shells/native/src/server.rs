//! The HTTP server: axum in front of the core's registry.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body as AxumBody;
use axum::extract::State;
use axum::Router;
use futures::TryStreamExt;
use http::{HeaderValue, Request, Response, StatusCode};
use kura_core::wire::{self, Route};
use kura_core::{Body, ByteStream, ErrorCode, Registry, RegistryConfig, RegistryError};

use crate::auth::{Authenticator, Decision, Htpasswd};
use crate::config::Config;
use crate::fetch::HttpFetch;
use crate::host::SystemHost;
use crate::metrics::ServerMetrics;
use crate::storage::ObjectStorage;

pub type KuraRegistry = Registry<ObjectStorage, SystemHost, HttpFetch>;

pub struct App {
    pub registry: KuraRegistry,
    pub auth: Option<Authenticator>,
    pub metrics: Arc<ServerMetrics>,
    /// The configuration it runs with (the status page shows parts).
    pub config: Config,
}

pub fn build_storage(config: &Config) -> anyhow::Result<ObjectStorage> {
    match &config.storage.s3 {
        None => ObjectStorage::local(&config.data_dir)
            .with_context(|| format!("opening data directory {}", config.data_dir.display())),
        Some(s3) => {
            let mut b = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(&s3.bucket)
                .with_region(&s3.region)
                .with_allow_http(s3.allow_http)
                .with_virtual_hosted_style_request(!s3.path_style);
            if let Some(e) = &s3.endpoint {
                b = b.with_endpoint(e);
            }
            if let (Some(k), Some(s)) = (&s3.access_key_id, &s3.secret_access_key) {
                b = b.with_access_key_id(k).with_secret_access_key(s);
            }
            let store = b.build().context("configuring S3 storage")?;
            let store: Arc<dyn object_store::ObjectStore> = match &s3.prefix {
                Some(p) => Arc::new(object_store::prefix::PrefixStore::new(store, p.as_str())),
                None => Arc::new(store),
            };
            Ok(ObjectStorage::new(store))
        }
    }
}

pub fn build_app(config: &Config) -> anyhow::Result<Arc<App>> {
    let storage = build_storage(config)?;
    let mut registry_config = RegistryConfig::default();
    registry_config.delete_enabled = config.registry.delete_enabled;
    registry_config.max_manifest_size = config.registry.max_manifest_size;
    registry_config.fill_lease_ms = config.mirror.fill_lease_secs.max(1) * 1000;
    // With a size bound, eviction passes run: tell them what changed.
    registry_config.records_changes = config.mirror.max_size.is_some();
    let upstreams = config.mirror.upstreams.iter().map(|u| u.to_core());
    let metrics = Arc::new(ServerMetrics::new());
    let registry = Registry::builder(storage, SystemHost)
        .config(registry_config)
        .mirror(
            HttpFetch::new(&config.mirror, metrics.clone())?,
            upstreams.collect(),
        )
        .default_upstream(config.mirror.default.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("mirror configuration: {e}"))?;
    let auth = match &config.auth {
        None => None,
        Some(a) => Some(Authenticator::new(
            Htpasswd::load(&a.htpasswd)?,
            a.anonymous_pull,
            a.realm.clone(),
        )),
    };
    Ok(Arc::new(App {
        registry,
        auth,
        metrics,
        config: config.clone(),
    }))
}

/// Serve `router` on every connection `listener` accepts until `shutdown`
/// completes, then let open connections finish their requests.
///
/// Like `axum::serve` (HTTP/1.1 with keep-alive and upgrades, HTTP/2 by
/// prior knowledge or ALPN), plus HTTP/1 half-close: a client that shuts
/// down its sending side after the request (`nc -N`, scripted health
/// checks) still gets the response.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) where
    L: axum::serve::Listener,
    L::Io: Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().half_close(true).timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (io, _) = listener.accept() => {
                let service = TowerToHyperService::new(router.clone());
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // A client going away mid-request is not an error here.
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/", axum::routing::get(crate::status::page))
        .route("/_kura/status", axum::routing::get(crate::status::json))
        .fallback(handle)
        .with_state(app)
}

/// Whether a request for the operator's pages (`/metrics`, the status
/// page) may see them: whoever may pull may (anyone, with anonymous pulls
/// on). Otherwise the 401 challenge to answer.
pub fn operator_access(app: &App, headers: &http::HeaderMap) -> Option<Response<AxumBody>> {
    let auth = app.auth.as_ref()?;
    if auth.decide(headers, wire::Access::Pull, false) == Decision::Allow {
        return None;
    }
    Some(challenge(auth))
}

fn challenge(auth: &Authenticator) -> Response<AxumBody> {
    let err = RegistryError::new(ErrorCode::Unauthorized, "authentication required");
    let mut resp = kura_core::error_response::<ByteStream>(&err);
    let challenge = format!("Basic realm=\"{}\"", auth.realm.replace('"', ""));
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    to_axum(resp)
}

/// Prometheus metrics: the binary's histograms and upstream counters and
/// the core's counters (names in docs/metrics.md).
async fn metrics(State(app): State<Arc<App>>, headers: http::HeaderMap) -> Response<AxumBody> {
    if let Some(denied) = operator_access(&app, &headers) {
        return denied;
    }
    let text = app.metrics.render(app.registry.metrics().samples());
    let mut resp = Response::new(AxumBody::from(text));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    resp
}

async fn handle(State(app): State<Arc<App>>, req: Request<AxumBody>) -> Response<AxumBody> {
    let started = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let route = wire::route(&method, uri.path()).ok().flatten();
    let resp = dispatch(&app, req).await;
    app.metrics.request(
        route.as_ref().map_or("other", Route::kind),
        &method,
        started,
    );
    if let (Some(Route::Manifest(name, _)), true) = (
        &route,
        method == http::Method::GET && resp.status() == StatusCode::OK,
    ) {
        app.metrics.pulled(&pulled_name(name.as_str(), uri.query()));
    }
    tracing::info!(
        target: "kura::access",
        %method,
        path = uri.path(),
        query = uri.query().unwrap_or(""),
        status = resp.status().as_u16(),
        length = resp.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("-"),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

async fn dispatch(app: &App, req: Request<AxumBody>) -> Response<AxumBody> {
    if let Some(auth) = &app.auth {
        let route = Route::parse(req.uri().path()).ok().flatten();
        let access = wire::required_access(req.method(), route.as_ref());
        let is_base = matches!(route, Some(Route::Base));
        if auth.decide(req.headers(), access, is_base) == Decision::Challenge {
            return challenge(auth);
        }
    }
    let (parts, body) = req.into_parts();
    let stream: ByteStream = Box::pin(body.into_data_stream().map_err(io::Error::other));
    let resp = app
        .registry
        .handle(Request::from_parts(parts, stream))
        .await;
    if resp.status() == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("internal error answered with 500");
    }
    to_axum(resp)
}

/// The repository a pull named, with containerd's `?ns=` registry in front.
fn pulled_name(name: &str, query: Option<&str>) -> String {
    let ns = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("ns="))
            .filter(|ns| !ns.is_empty())
    });
    match ns {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

fn to_axum(resp: Response<Body<ByteStream>>) -> Response<AxumBody> {
    resp.map(|b| match b {
        Body::Empty => AxumBody::empty(),
        Body::Full(bytes) => AxumBody::from(bytes),
        Body::Stream(s) | Body::Relay(s) => AxumBody::from_stream(s),
    })
}

/// Keep the mirror cache under its size bound (sparing blobs used in the
/// last `grace_ms`: they may be being served).
pub fn spawn_evictor(app: Arc<App>, max_size: u64, every: Duration, grace_ms: u64) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        loop {
            tick.tick().await;
            match app.registry.evict(max_size, grace_ms).await {
                Ok(r) if r.evicted_blobs > 0 => tracing::info!(
                    evicted_blobs = r.evicted_blobs,
                    evicted_bytes = r.evicted_bytes,
                    cached_bytes = r.cached_bytes,
                    max_size,
                    "evicted least recently used blobs"
                ),
                Ok(r) if r.skipped => {
                    tracing::debug!("another instance is evicting; pass skipped")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "eviction pass failed"),
            }
        }
    });
}

/// Remove abandoned upload sessions (and, on local disk, files of
/// interrupted writes) now and then.
pub fn spawn_upload_janitor(
    app: Arc<App>,
    max_idle: Duration,
    local_root: Option<std::path::PathBuf>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(
            Duration::from_secs(3600).min(max_idle.max(Duration::from_secs(60))),
        );
        loop {
            tick.tick().await;
            match app
                .registry
                .purge_stale_uploads(max_idle.as_millis() as u64)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "removed stale upload sessions"),
                Err(e) => tracing::warn!(error = %e, "upload cleanup failed"),
            }
            if let Some(root) = local_root.clone() {
                let swept = tokio::task::spawn_blocking(move || {
                    crate::storage::sweep_staging_files(&root, max_idle)
                })
                .await;
                if let Ok(Err(e)) = swept {
                    tracing::warn!(error = %e, "sweeping interrupted writes failed");
                }
            }
        }
    });
}
