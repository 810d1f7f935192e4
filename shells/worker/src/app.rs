//! The Worker: one kura-core registry per isolate, R2 for storage, the
//! runtime's `fetch` for upstreams. Requests go to `Registry::handle_edge`;
//! blob misses are filled here (see `split`), everything else (manifests,
//! tag revalidation, stale-if-error, hits, ranges, errors) is the core's.
//! The Cron Trigger (`scheduled`) keeps R2 under `MAX_SIZE`.
//!
//! Access. Before a request costs anything (an R2 read, an upstream
//! request), `auth::Gate` checks its token against `PULL_TOKENS` and asks
//! kura-core's access policy; a Worker configured with neither tokens nor
//! `ANONYMOUS_PULL` answers every request with an error saying so.
//!
//! Single flight. Workers give each request its own I/O context: a request
//! woken from another request's context would do its I/O there (and its
//! response body would belong to the wrong request). So no request here
//! ever waits on another one's wakeup:
//! - blob fills: the core's single flight (`Registry::claim_fill`) picks
//!   the request that fills a missing blob, within the isolate and, through
//!   a lease object in R2 (a create-only put), across isolates; the filler
//!   renews the lease while it fills (`FillLease::hold`). Later requests
//!   wait with `Registry::follow_fill`, which polls on the host's timer (and
//!   R2, for another isolate's fill) until the fill is over, then answer
//!   from R2 like any hit. They do not get bytes while the fill runs: a
//!   branch of the leader's stream cannot cross into their context. An
//!   isolate that dies mid-fill stops renewing; its lease is taken over
//!   after `fill_lease_ms`.
//! - manifests: the core's own single flight; `WorkerHost` says requests
//!   must not wake each other, so its followers poll on the host's timer.
//!   Tag revalidations are shared across isolates by the core's tag-check
//!   lease in R2.

use std::cell::RefCell;
use std::rc::Rc;

use http::StatusCode;
use kura_core::access::Granted;
use kura_core::{error_response, Response};
use kura_core::{BlobMiss, Edge, FillClaim, FillLease, Followed};
use kura_core::{Body, ErrorCode, Registry, RegistryConfig, RegistryError};
use wasm_bindgen::{JsCast, JsValue};
use worker::{event, Context, Env};

use crate::auth::{Gate, Verdict, CHALLENGE};
use crate::config::Config;
use crate::fetch::WorkerFetch;
use crate::host::WorkerHost;
use crate::js::{describe, JsBody};
use crate::r2::R2Storage;
use crate::route;
use crate::split::{self, Progress, Sink};

/// The R2 bucket binding's name in wrangler.toml.
const BUCKET_BINDING: &str = "BUCKET";

type Kura = Registry<R2Storage, WorkerHost, WorkerFetch>;

struct App {
    registry: Kura,
    storage: R2Storage,
    config: Config,
    gate: Gate,
}

thread_local! {
    static APP: RefCell<Option<Rc<App>>> = const { RefCell::new(None) };
}

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, ctx: Context) -> worker::Result<web_sys::Response> {
    let app = match app(&env) {
        Ok(app) => app,
        Err(msg) => {
            let e = RegistryError::internal(format!("kura-worker configuration: {msg}"));
            return Ok(to_web(error_response::<JsBody>(&e)));
        }
    };
    Ok(handle(app, req, ctx).await)
}

/// The Cron Trigger: keep R2 under `MAX_SIZE`, least recently used first.
/// Isolates record their hits in R2 (sampled), so the run sees uses in all
/// of them; one run at a time evicts (the core's evictor lease in R2).
#[event(scheduled)]
async fn scheduled(_event: worker::ScheduledEvent, env: Env, _ctx: worker::ScheduleContext) {
    let app = match app(&env) {
        Ok(app) => app,
        Err(msg) => {
            worker::console_error!("kura-worker configuration: {msg}");
            return;
        }
    };
    let Some(max_size) = app.config.max_size else {
        return;
    };
    match app
        .registry
        .evict(max_size, app.config.eviction_grace_ms)
        .await
    {
        Ok(r) => worker::console_log!(
            "kura: eviction pass: {} blobs ({} bytes) evicted of {} cached bytes, bound {max_size}{}",
            r.evicted_blobs,
            r.evicted_bytes,
            r.cached_bytes,
            if r.skipped { "; skipped: another run is evicting" } else { "" }
        ),
        Err(e) => worker::console_error!("kura: eviction pass failed: {e}"),
    }
}

/// The isolate's registry, built on the first request.
fn app(env: &Env) -> Result<Rc<App>, String> {
    if let Some(app) = APP.with(|a| a.borrow().clone()) {
        return Ok(app);
    }
    let var = |name: &str| -> Option<String> {
        let v = js_sys::Reflect::get(env, &JsValue::from_str(name)).ok()?;
        if v.is_undefined() || v.is_null() {
            None
        } else if let Some(s) = v.as_string() {
            Some(s)
        } else {
            // A TOML table or array in [vars] arrives as an object.
            js_sys::JSON::stringify(&v).ok()?.as_string()
        }
    };
    let config = Config::from_lookup(var)?;
    let bucket = js_sys::Reflect::get(env, &JsValue::from_str(BUCKET_BINDING))
        .ok()
        .filter(|b| b.is_object())
        .ok_or_else(|| format!("no R2 bucket bound as {BUCKET_BINDING}"))?;
    let storage = R2Storage {
        bucket: bucket.unchecked_into(),
        single_put_max: config.single_put_max,
        part_size: config.part_size,
    };
    let mut registry_config = RegistryConfig::default();
    // Mirrors are read-only; nothing hosted is pushed at the edge.
    registry_config.delete_enabled = false;
    registry_config.fill_lease_ms = config.fill_lease_ms;
    // With a size bound, the Cron Trigger evicts: tell it what changed.
    registry_config.records_changes = config.max_size.is_some();
    let registry = Registry::builder(storage.clone(), WorkerHost)
        .config(registry_config)
        .mirror(WorkerFetch, config.core_upstreams())
        .default_upstream(config.default_upstream.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let gate = Gate::new(config.pull_tokens.clone(), config.anonymous_pull);
    let app = Rc::new(App {
        registry,
        storage,
        config,
        gate,
    });
    APP.with(|a| *a.borrow_mut() = Some(app.clone()));
    Ok(app)
}

async fn handle(app: Rc<App>, req: web_sys::Request, ctx: Context) -> web_sys::Response {
    let url = req.url();
    let (host, target) = split_url(&url);
    let path = target.split('?').next().unwrap_or("");
    let authorization = req.headers().get("authorization").ok().flatten();
    if path == "/metrics" {
        if let Err(refused) = admit(app.gate.check_operator(authorization.as_deref())) {
            return refused;
        }
        let mut r = Response::new(Body::Full(app.registry.metrics().render().into()));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return to_web(r);
    }
    #[cfg(feature = "conformance")]
    if path == "/_kura/conformance" {
        kura_core::storage::conformance::run(&app.storage).await;
        return to_web(Response::new(Body::Full(
            "storage conformance: ok\n".into(),
        )));
    }
    let method = req.method();
    if method != "GET" && method != "HEAD" {
        let e = RegistryError::new(
            ErrorCode::Unsupported,
            "this edge mirror is read-only: push to the upstream registry",
        );
        return to_web(error_response(&e));
    }
    let target = route::rewrite(&app.config, host, target);
    let mut builder = http::Request::builder()
        .method(method.as_str())
        .uri(&target);
    if let Ok(Some(entries)) = js_sys::try_iter(&req.headers()) {
        for entry in entries.flatten() {
            let pair = js_sys::Array::from(&entry);
            if let (Some(k), Some(v)) = (pair.get(0).as_string(), pair.get(1).as_string()) {
                builder = builder.header(k, v);
            }
        }
    }
    let mut parts = match builder.body(()) {
        Ok(r) => r.into_parts().0,
        Err(e) => {
            let e = RegistryError::new(ErrorCode::Unsupported, format!("bad request: {e}"))
                .with_status(StatusCode::BAD_REQUEST);
            return to_web(error_response(&e));
        }
    };
    // On the target the core will route (aliases resolved), before
    // anything touches R2 or an upstream.
    let verdict = app
        .gate
        .check(authorization.as_deref(), &parts.method, parts.uri.path());
    match admit(verdict) {
        Ok(granted) => parts.extensions.insert(granted),
        Err(refused) => return refused,
    };
    // A fill another request led (or that failed) is looked at again.
    for _ in 0..3 {
        let req = http::Request::from_parts(parts.clone(), kura_core::body::empty());
        match app.registry.handle_edge(req).await {
            Edge::Response(resp) => return to_web(resp),
            Edge::BlobMiss(miss) => match blob_miss(&app, miss, &ctx).await {
                Missed::Answer(resp) => return resp,
                Missed::Again => continue,
            },
        }
    }
    let e = RegistryError::new(ErrorCode::Unavailable, "blob fill did not settle");
    to_web(error_response(&e))
}

/// The rights a request passed the gate with, or the answer to it.
fn admit(verdict: Verdict) -> Result<Granted, web_sys::Response> {
    let e = match verdict {
        Verdict::Pass(granted) => return Ok(granted),
        Verdict::Unauthorized => RegistryError::new(
            ErrorCode::Unauthorized,
            "authentication required: a pull token as the password (any user name), \
             or as a Bearer token",
        )
        .with_header(http::header::WWW_AUTHENTICATE, CHALLENGE),
        Verdict::Denied(why) => RegistryError::new(ErrorCode::Denied, why),
    };
    Err(to_web(error_response(&e)))
}

/// `https://host:port/path?q` → (`host:port`, `/path?q`).
fn split_url(url: &str) -> (Option<&str>, &str) {
    let Some((_, rest)) = url.split_once("://") else {
        return (None, url);
    };
    match rest.find('/') {
        Some(i) => (Some(&rest[..i]), &rest[i..]),
        None => (Some(rest), "/"),
    }
}

// ----- blob misses -------------------------------------------------------------

enum Missed {
    Answer(web_sys::Response),
    /// Look again: the blob is stored now, or a dead fill was cleared.
    Again,
}

/// Bytes moved: the core's followers judge the fill alive by it.
impl Progress for FillLease<R2Storage, WorkerHost> {
    fn advanced(&self, _bytes: u64) {
        self.progress();
    }
}

/// The first request for a blob leads the fill; the others wait for it.
async fn blob_miss(
    app: &Rc<App>,
    miss: BlobMiss<WorkerFetch, WorkerHost>,
    ctx: &Context,
) -> Missed {
    if miss.is_head() {
        // Headers only: ask the upstream, store nothing.
        return Missed::Answer(match app.registry.fetch_blob(&miss).await {
            Ok(up) => {
                let size = content_length(up.headers());
                to_web(app.registry.blob_miss_response(&miss, size, Body::Empty))
            }
            Err(e) => to_web(error_response(&e)),
        });
    }
    match app.registry.claim_fill(&miss).await {
        FillClaim::Lead(lease) => lead(app, miss, Rc::new(lease), ctx).await,
        // Waits on its own timer: no wakeups across requests.
        FillClaim::Follow(f) => match app.registry.follow_fill(f).await {
            Ok(Followed::LookAgain) => Missed::Again,
            // The isolate that filled went away; this request took its
            // lease over.
            Ok(Followed::Lead(lease)) => lead(app, miss, Rc::new(lease), ctx).await,
            Err(e) => Missed::Answer(to_web(error_response(&e))),
        },
    }
}

async fn lead(
    app: &Rc<App>,
    miss: BlobMiss<WorkerFetch, WorkerHost>,
    lease: Rc<FillLease<R2Storage, WorkerHost>>,
    ctx: &Context,
) -> Missed {
    // Renewing from here on: an upstream slow to answer must not look like
    // a dead filler to the other isolates.
    let up = match lease.hold(app.registry.fetch_blob(&miss)).await {
        Ok(up) => up,
        Err(e) => {
            lease.settle(Err(e.message.clone())).await;
            return Missed::Answer(to_web(error_response(&e)));
        }
    };
    let size = content_length(up.headers());
    let body = up.into_body().take();
    let (Some(size), Some(body_source)) = (size, body.clone()) else {
        // R2 needs the length up front: pass it through, uncached.
        lease
            .settle(Err("upstream sent no Content-Length; not cached".into()))
            .await;
        let body = Body::Stream(JsBody::new(body));
        return Missed::Answer(to_web(app.registry.blob_miss_response(&miss, size, body)));
    };
    let sink = lease
        .hold(Sink::start(
            &app.storage.bucket,
            &miss.key(),
            miss.digest(),
            size,
            app.storage.single_put_max,
            app.storage.part_size,
        ))
        .await;
    let sink = match sink {
        Ok(s) => s,
        Err(e) => {
            // R2 is unhappy: still serve the client.
            lease.settle(Err(format!("R2: {e}"))).await;
            let body = Body::Stream(JsBody::new(Some(body_source)));
            return Missed::Answer(to_web(app.registry.blob_miss_response(
                &miss,
                Some(size),
                body,
            )));
        }
    };
    let progress: Rc<dyn Progress> = lease.clone();
    if miss.range().is_some() {
        // A range of a blob not stored yet: store it whole first, then
        // answer the range from R2.
        let r = lease
            .hold(async {
                split::pump(body_source, size, None, sink, progress).await?;
                commit(app, &miss).await
            })
            .await;
        let ok = r.is_ok();
        lease.settle(r).await;
        return if ok {
            Missed::Again
        } else {
            Missed::Answer(to_web(error_response(&RegistryError::new(
                ErrorCode::Unavailable,
                "upstream fill failed",
            ))))
        };
    }
    let (readable, writer) = match split::client_stream(size) {
        Ok(c) => c,
        Err(e) => {
            lease.settle(Err(e.clone())).await;
            sink.abort(&JsValue::from_str(&e));
            drop(JsBody::new(Some(body_source)));
            return Missed::Answer(to_web(error_response(&RegistryError::internal(e))));
        }
    };
    let body = Body::Stream(JsBody::new(Some(readable)));
    let answer = to_web(app.registry.blob_miss_response(&miss, Some(size), body));
    let app = app.clone();
    // From here the fill settles itself, whatever happens to this request
    // (if the runtime drops it unfinished, the lease's drop fails it).
    ctx.wait_until(async move {
        let r = lease
            .hold(async {
                split::pump(body_source, size, Some(writer), sink, progress).await?;
                commit(&app, &miss).await
            })
            .await;
        lease.settle(r).await;
    });
    Missed::Answer(answer)
}

async fn commit(app: &App, miss: &BlobMiss<WorkerFetch, WorkerHost>) -> Result<(), String> {
    app.registry
        .commit_blob(miss)
        .await
        .map_err(|e| format!("recording the blob: {e}"))
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

// ----- responses ---------------------------------------------------------------------

fn to_web(resp: Response<JsBody>) -> web_sys::Response {
    let (parts, body) = resp.into_parts();
    let init = web_sys::ResponseInit::new();
    init.set_status(parts.status.as_u16());
    if let Ok(headers) = web_sys::Headers::new() {
        for (k, v) in &parts.headers {
            if let Ok(v) = v.to_str() {
                let _ = headers.append(k.as_str(), v);
            }
        }
        init.set_headers(&headers);
    }
    let made = match body {
        Body::Empty => web_sys::Response::new_with_opt_readable_stream_and_init(None, &init),
        Body::Full(bytes) => {
            let a = js_sys::Uint8Array::from(&bytes[..]);
            web_sys::Response::new_with_opt_buffer_source_and_init(Some(&a), &init)
        }
        Body::Stream(b) => {
            web_sys::Response::new_with_opt_readable_stream_and_init(b.take().as_ref(), &init)
        }
        Body::Relay(stream) => {
            // Bytes the core produced (its own fill, never reached here).
            use futures::StreamExt;
            let js = stream.map(|r| {
                r.map(|b| JsValue::from(js_sys::Uint8Array::from(&b[..])))
                    .map_err(|e| JsValue::from(js_sys::Error::new(&e.to_string())))
            });
            let raw = wasm_streams::ReadableStream::from_stream(js).into_raw();
            web_sys::Response::new_with_opt_readable_stream_and_init(Some(&raw), &init)
        }
    };
    made.unwrap_or_else(|e| {
        worker::console_error!("kura: building a response: {}", describe(&e));
        web_sys::Response::new_with_opt_str_and_init(Some("internal error"), &{
            let i = web_sys::ResponseInit::new();
            i.set_status(500);
            i
        })
        .expect("a plain response")
    })
}
