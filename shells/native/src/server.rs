//! The HTTP server: axum in front of the core's registry.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body as AxumBody;
use axum::extract::State;
use axum::Router;
use futures::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode};
use kura_core::wire::{self, Route};
use kura_core::{Body, ByteStream, ErrorCode, Registry, RegistryConfig, RegistryError};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::fetch::HttpFetch;
use crate::file_window::{SendFile, Window};
use crate::host::SystemHost;
use crate::metrics::ServerMetrics;
use crate::storage::ObjectStorage;
use kura_core::access::{Decision, Granted};

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
    registry_config.retention = config
        .retention
        .iter()
        .enumerate()
        .map(|(i, r)| r.to_core(i))
        .collect::<anyhow::Result<_>>()?;
    registry_config.gc_grace_ms = config.gc.grace_secs.saturating_mul(1000);
    registry_config.immutable_tags = config
        .immutable_tags
        .iter()
        .enumerate()
        .map(|(i, r)| r.to_core(i))
        .collect::<anyhow::Result<_>>()?;
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
        Some(a) => Some(Authenticator::from_config(a, Some(&config.data_dir))?),
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
///
/// Hostile or broken clients are bounded by `limits`: at most
/// `max_connections` at once (at the limit the loop stops accepting and
/// new connections wait in the kernel's listen queue), a connection that
/// has not sent its first bytes, or an HTTP/1 request's headers, within
/// `header_read_timeout_secs` is closed, and so is one on which nothing
/// moved for `idle_timeout_secs` while kura waited on the client.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: &crate::config::ServerSection,
    shutdown: impl std::future::Future<Output = ()>,
) where
    L: axum::serve::Listener,
    L::Io: SendFile + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let header_timeout = Duration::from_secs(limits.header_read_timeout_secs);
    let idle_timeout = Duration::from_secs(limits.idle_timeout_secs);
    let max_connections = connection_limit(limits.max_connections, raise_open_file_limit());
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut last_full_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        if slots.available_permits() == 0
            && last_full_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            last_full_warning = Some(Instant::now());
            tracing::warn!(
                max_connections,
                "connection limit reached: new connections wait until one closes \
                 (server.max_connections)"
            );
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let io = Guarded::new(io, header_timeout, idle_timeout);
        let sends_files = io.sends_files;
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(
            crate::file_window::SENDS_FILES.scope(sends_files, async move {
                // A client going away mid-request is not an error here.
                let _ = conn.await;
                drop(slot);
            }),
        );
    }
    drop(listener);
    graceful.shutdown().await;
}

/// File descriptors kept for everything but client connections: storage
/// files, upstream connections, the listener, logs.
const RESERVED_FDS: u64 = 256;

/// The connection limit in force: the configured one, lowered to what the
/// open-file limit `nofile` leaves after [`RESERVED_FDS`] (past it accept
/// fails with EMFILE, and so would opening a blob).
fn connection_limit(configured: usize, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return configured;
    };
    let fits = nofile.saturating_sub(RESERVED_FDS).max(1);
    if (configured as u64) <= fits {
        return configured;
    }
    tracing::warn!(
        configured,
        open_file_limit = nofile,
        max_connections = fits,
        "server.max_connections lowered to fit the open-file limit"
    );
    fits as usize
}

/// Raise the soft open-file limit (RLIMIT_NOFILE) to the hard one: every
/// connection is a file descriptor, and the usual soft default (1024) is
/// far below what a registry serving a fleet needs. Returns the soft limit
/// in force, `None` where there is none to read.
#[cfg(unix)]
fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    // rlim_t is not u64 on every platform.
    #[allow(clippy::unnecessary_cast)]
    let (soft, hard) = (lim.rlim_cur as u64, lim.rlim_max as u64);
    if soft >= hard {
        return Some(soft);
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads the struct it is given, nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        tracing::info!(
            from = soft,
            to = hard,
            "raised the open-file limit to its hard limit"
        );
        Some(hard)
    } else {
        // An unlimited hard limit cannot be the soft one (Linux caps it
        // at fs.nr_open, macOS at OPEN_MAX): keep what there is.
        let e = io::Error::last_os_error();
        tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
        Some(soft)
    }
}

#[cfg(not(unix))]
fn raise_open_file_limit() -> Option<u64> {
    None
}

/// A client connection with deadlines on the client's side of it.
///
/// - Until its first [`PREFACE`] bytes arrived, the connection must get
///   them within the header timeout of being accepted. hyper's own header
///   timeout starts only after it has told HTTP/1 from HTTP/2 by those
///   bytes, so without this a client that connects and sends nothing (or
///   half of HTTP/2's preface) would hold its connection forever.
/// - After that, whenever kura waits to read from or write to the client,
///   some byte must have moved, either way, within the idle timeout: a
///   stalled request body or a client that stopped reading its response
///   loses the connection. Waits on anything else (storage, an upstream)
///   do not poll the connection and never count.
///
/// It is also where a stored file's bytes leave without a copy: on a
/// connection that can, bytes of a mapped window of a local file go out
/// with `sendfile` (`crate::file_window`), whatever protocol wrote them.
struct Guarded<I> {
    io: I,
    /// The connection sends windows of files itself.
    sends_files: bool,
    /// Preface bytes still to come.
    preface_left: usize,
    accepted: tokio::time::Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
    last_progress: tokio::time::Instant,
    /// Armed at a deadline that may have moved on since; checked, and
    /// re-armed, when it fires.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// HTTP/2's connection preface is 24 bytes; hyper reads that many (or up
/// to the first byte that differs) to pick the protocol.
const PREFACE: usize = 24;

impl<I> Guarded<I> {
    fn new(io: I, header_timeout: Duration, idle_timeout: Duration) -> Self
    where
        I: SendFile,
    {
        let now = tokio::time::Instant::now();
        Guarded {
            sends_files: io.sends_files(),
            io,
            preface_left: PREFACE,
            accepted: now,
            header_timeout,
            idle_timeout,
            last_progress: now,
            timer: Box::pin(tokio::time::sleep_until(now + header_timeout)),
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        if self.preface_left > 0 {
            self.accepted + self.header_timeout
        } else {
            self.last_progress + self.idle_timeout
        }
    }

    /// After the client's side was found pending: an error once the
    /// deadline passed (the waker is registered with the timer otherwise).
    fn check_deadline(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Error> {
        use std::task::Poll;
        loop {
            let deadline = self.deadline();
            if self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            if std::future::Future::poll(self.timer.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            if deadline <= tokio::time::Instant::now() {
                let what = if self.preface_left > 0 {
                    "no request within the header timeout"
                } else {
                    "no progress within the idle timeout"
                };
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
            }
            // Fired at a deadline that moved: arm the new one.
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    self.preface_left = self.preface_left.saturating_sub(n);
                    self.last_progress = tokio::time::Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check_deadline(cx).map(Err),
        }
    }
}

impl<I> tokio::io::AsyncWrite for Guarded<I>
where
    I: tokio::io::AsyncWrite + SendFile + Unpin,
{
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        // One path for a window's bytes, whichever way they come.
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        // Plain buffers up to the first one in a file window go in one
        // write; a window's bytes go on their own, from the file.
        let mut plain = bufs.len();
        if self.sends_files {
            let mut plain_bytes = 0;
            for (i, buf) in bufs.iter().enumerate() {
                if let Some((fd, offset)) = Window::find(buf) {
                    // Empty buffers before it are nothing to write.
                    if plain_bytes == 0 {
                        if let Some(r) = self.send_file(cx, fd, offset, buf.len()) {
                            return self.after_write(cx, r);
                        }
                        // Written as ordinary bytes below.
                        break;
                    }
                    plain = i;
                    break;
                }
                plain_bytes += buf.len();
            }
        }
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, &bufs[..plain]);
        self.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<I: SendFile> Guarded<I> {
    /// Send `len` bytes of `fd` from `offset`; `None` when the file cannot
    /// be sent this way (a filesystem without `sendfile` support): the
    /// caller writes the window's bytes instead, as it will from now on.
    fn send_file(
        &mut self,
        cx: &mut std::task::Context<'_>,
        fd: std::os::fd::RawFd,
        offset: u64,
        len: usize,
    ) -> Option<std::task::Poll<io::Result<usize>>> {
        let r = self.io.poll_send_file(cx, fd, offset, len);
        if let std::task::Poll::Ready(Err(e)) = &r {
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
            ) || e.kind() == io::ErrorKind::Unsupported
            {
                tracing::debug!(error = %e, "sendfile refused: writing blob bytes instead");
                self.sends_files = false;
                return None;
            }
        }
        Some(r)
    }
}

impl<I> Guarded<I> {
    fn after_write(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<io::Result<usize>>,
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_progress = tokio::time::Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.check_deadline(cx).map(Err),
            other => other,
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/", axum::routing::get(crate::status::page))
        .route("/_kura/status", axum::routing::get(crate::status::json))
        .route("/auth/token", axum::routing::get(token))
        .fallback(handle)
        .with_state(app)
}

/// Whether a request for the operator's pages (`/metrics`, the status
/// page) may see them: whoever authenticated may, and anyone when
/// `auth.anonymous_pull` is on. Otherwise the 401 challenge to answer.
pub fn operator_access(app: &App, headers: &http::HeaderMap) -> Option<Response<AxumBody>> {
    let auth = app.auth.as_ref()?;
    let anonymous_ok = app.config.auth.as_ref().is_some_and(|a| a.anonymous_pull);
    match auth.authenticate(headers) {
        Ok(who) if who.user.is_some() || anonymous_ok => None,
        _ => Some(basic_challenge(auth)),
    }
}

/// 401 with a Basic challenge (the operator's pages and the token
/// service take passwords, never tokens).
fn basic_challenge(auth: &Authenticator) -> Response<AxumBody> {
    let value = format!("Basic realm=\"{}\"", auth.realm.replace('"', ""));
    unauthorized(&value)
}

fn unauthorized(challenge: &str) -> Response<AxumBody> {
    let err = RegistryError::new(ErrorCode::Unauthorized, "authentication required");
    let mut resp = kura_core::error_response::<ByteStream>(&err);
    if let Ok(v) = HeaderValue::from_str(challenge) {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    to_axum(resp)
}

/// The challenge for a registry request: Basic, or with token auth the
/// token service to get a token from and the scope the request needs.
fn challenge(app: &App, auth: &Authenticator, req: &Request<AxumBody>) -> Response<AxumBody> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok());
    let value = auth.challenge(
        req.method(),
        req.uri().path(),
        host,
        app.config.tls.is_some(),
    );
    unauthorized(&value)
}

/// The token service (Docker token auth): `GET /auth/token?service=…&
/// scope=repository:NAME:ACTIONS` with the client's password (or none,
/// for what anonymous callers may do) answers a short-lived bearer token.
async fn token(State(app): State<Arc<App>>, req: Request<AxumBody>) -> Response<AxumBody> {
    let Some(auth) = app
        .auth
        .as_ref()
        .filter(|a| a.tokens.as_ref().is_some_and(|t| t.issuer.is_some()))
    else {
        let err = RegistryError::new(ErrorCode::Unsupported, "this registry issues no tokens")
            .with_status(StatusCode::NOT_FOUND);
        return to_axum(kura_core::error_response::<ByteStream>(&err));
    };
    // Bearer tokens do not buy more tokens: a password, or nothing.
    let who = match auth.authenticate(req.headers()) {
        Ok(who) if !is_bearer(req.headers()) => who,
        _ => return basic_challenge(auth),
    };
    let scopes = match wire::query_params(req.uri(), "scope") {
        Ok(s) => s,
        Err(e) => return to_axum(kura_core::error_response::<ByteStream>(&e)),
    };
    match auth.issue(&who, &scopes) {
        Ok((token, lifetime)) => {
            tracing::info!(
                target: "kura::access",
                user = who.user.as_deref().unwrap_or("anonymous"),
                scope = scopes.join(" "),
                "token issued"
            );
            let body = serde_json::json!({
                "token": token,
                "access_token": token,
                "expires_in": lifetime,
                // RFC 3339: containers/image refuses any other form.
                "issued_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            });
            let mut resp = Response::new(AxumBody::from(body.to_string()));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "issuing a token failed");
            let err = RegistryError::internal("issuing a token failed");
            to_axum(kura_core::error_response::<ByteStream>(&err))
        }
    }
}

fn is_bearer(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("bearer "))
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
    let mut req = req;
    if let Some(auth) = &app.auth {
        let who = match auth.authenticate(req.headers()) {
            Ok(who) => who,
            Err(_) => return challenge(app, auth, &req),
        };
        match auth.policy.decide(&who, req.method(), req.uri().path()) {
            Decision::Allow(rights) => {
                req.extensions_mut().insert(Granted(rights));
            }
            Decision::Challenge => return challenge(app, auth, &req),
            // A token without this repository's scope: 401 naming the
            // scope, so that the client fetches a token that has it (as
            // a copy between repositories does), if the rules allow it.
            Decision::Deny
                if who.scope.is_some() && is_bearer(req.headers()) && {
                    let mut unscoped = who.clone();
                    unscoped.scope = None;
                    matches!(
                        auth.policy
                            .decide(&unscoped, req.method(), req.uri().path()),
                        Decision::Allow(_)
                    )
                } =>
            {
                return challenge(app, auth, &req)
            }
            Decision::Deny => {
                let err = RegistryError::new(
                    ErrorCode::Denied,
                    format!(
                        "{} may not {} {}",
                        who.user.as_deref().unwrap_or("anonymous"),
                        req.method(),
                        req.uri().path()
                    ),
                );
                return to_axum(kura_core::error_response::<ByteStream>(&err));
            }
        }
    }
    let (parts, body) = req.into_parts();
    let sent_body = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || parts.headers.contains_key(http::header::TRANSFER_ENCODING);
    let body = Arc::new(tokio::sync::Mutex::new(body.into_data_stream()));
    let stream: ByteStream = Box::pin(futures::stream::unfold(body.clone(), |b| async move {
        let next = b.lock().await.next().await;
        next.map(|chunk| (chunk.map_err(io::Error::other), b))
    }));
    let resp = app
        .registry
        .handle(Request::from_parts(parts, stream))
        .await;
    match resp.status() {
        StatusCode::INTERNAL_SERVER_ERROR => {
            // The error's text is in the body the client gets; the
            // operator needs it too.
            let detail = match resp.body() {
                kura_core::Body::Full(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            };
            tracing::error!(%detail, "internal error answered with 500")
        }
        StatusCode::INSUFFICIENT_STORAGE => {
            tracing::warn!("storage is full: a write was refused with 507")
        }
        _ => {}
    }
    if sent_body && !resp.status().is_success() {
        tokio::spawn(drain(body));
    }
    to_axum(resp)
}

/// Most of a refused request's body read and dropped after the answer.
const DRAIN_MAX: usize = 128 * 1024 * 1024;
/// Longest a refused request's body is read after the answer.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Read and drop what is left of the body of a request answered before
/// it was read (a push refused at once: a full disk, a bad digest), while
/// the answer goes out. A connection closed with unread bytes is reset by
/// the kernel, and a client still sending its body would see the reset
/// instead of the error. Bounded: past [`DRAIN_MAX`] bytes or
/// [`DRAIN_TIME`] the connection is closed anyway.
async fn drain(body: Arc<tokio::sync::Mutex<axum::body::BodyDataStream>>) {
    let _ = tokio::time::timeout(DRAIN_TIME, async move {
        let mut body = body.lock().await;
        let mut read = 0;
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len();
            if read > DRAIN_MAX {
                break;
            }
        }
    })
    .await;
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
            let started = std::time::Instant::now();
            let pass = app.registry.evict(max_size, grace_ms).await;
            if let Ok(r) = &pass {
                if r.full_listing {
                    // The costly pass (at startup, then daily): say what
                    // it cost.
                    tracing::info!(
                        cached_bytes = r.cached_bytes,
                        evicted_blobs = r.evicted_blobs,
                        seconds = started.elapsed().as_secs_f64(),
                        "eviction pass listed the whole cache"
                    );
                }
            }
            match pass {
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
        // Often enough that a session goes within half its limit again
        // after turning stale; at least a second, at most an hour apart.
        let mut tick = tokio::time::interval(
            (max_idle / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file_window;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Write a response head and the windows of a 20 MiB file (with
    /// ordinary bytes between them) through `Guarded` over a loopback TCP
    /// connection wrapped by `wrap`; whether the reader got exactly those
    /// bytes, how many window bytes there were, and how many bytes were
    /// sent from the file meanwhile.
    async fn send_windows<I>(wrap: impl FnOnce(tokio::net::TcpStream) -> I) -> (bool, u64, u64)
    where
        I: tokio::io::AsyncWrite + SendFile + Unpin,
    {
        let data = file_window::tests::pattern(20 * 1024 * 1024 + 77);
        let (_dir, file) = file_window::tests::file_of(&data);
        let range = 4097..data.len() as u64;
        let chunks = file_window::tests::windows(file, range.clone(), true).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let (socket, _) = listener.accept().await.unwrap();
        let mut conn = Guarded::new(
            wrap(socket),
            Duration::from_secs(10),
            Duration::from_secs(10),
        );
        assert!(conn.sends_files);
        let before = file_window::sent_from_files();
        // Headers and the first window in one vectored write, as hyper
        // queues them; then the rest, window by window and between them
        // ordinary bytes.
        let head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let mut expected = head.clone();
        let mut first = chunks[0].clone();
        let mut head_left = &head[..];
        while !head_left.is_empty() || !first.is_empty() {
            let bufs = [io::IoSlice::new(head_left), io::IoSlice::new(&first)];
            let n = conn.write_vectored(&bufs).await.unwrap();
            let from_head = n.min(head_left.len());
            head_left = &head_left[from_head..];
            first = first.slice(n - from_head..);
        }
        expected.extend_from_slice(&chunks[0]);
        for c in &chunks[1..] {
            conn.write_all(b"--").await.unwrap();
            conn.write_all(c).await.unwrap();
            expected.extend_from_slice(b"--");
            expected.extend_from_slice(c);
        }
        conn.shutdown().await.unwrap();
        drop(conn);
        let got = reader.await.unwrap();
        let windows: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        assert_eq!(windows, range.end - range.start);
        (
            got == expected,
            windows,
            file_window::sent_from_files() - before,
        )
    }

    /// A window's bytes written to a plain connection leave from the file
    /// (`sendfile`), in order with the ordinary bytes around them.
    #[tokio::test]
    async fn a_plain_connection_sends_windows_from_their_file() {
        let (same, windows, sent) = send_windows(|s| s).await;
        assert!(same, "the bytes sent differ from the file's");
        assert!(
            sent >= windows,
            "the windows were copied, not sent from the file"
        );
    }

    /// A connection whose `sendfile` is refused (a filesystem without
    /// support for it) writes the windows' bytes instead.
    #[tokio::test]
    async fn a_refused_sendfile_falls_back_to_writing_the_bytes() {
        let (same, _, _) = send_windows(Refusing).await;
        assert!(same, "the bytes written differ from the file's");
    }

    /// A plain connection on which `sendfile` always fails with `EINVAL`.
    struct Refusing(tokio::net::TcpStream);

    impl SendFile for Refusing {
        fn sends_files(&self) -> bool {
            true
        }

        fn poll_send_file(
            &mut self,
            _: &mut std::task::Context<'_>,
            _: std::os::fd::RawFd,
            _: u64,
            _: usize,
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Ready(Err(io::Error::from_raw_os_error(libc::EINVAL)))
        }
    }

    impl tokio::io::AsyncWrite for Refusing {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}
