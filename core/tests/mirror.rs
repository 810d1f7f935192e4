//! The pull-through cache over in-memory storage, with another in-process
//! registry as the upstream (the end-to-end tests against distribution are
//! in tests/tests/mirror.rs).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
mod common;

use bytes::Bytes;
use common::{within, TestHost};
use futures::executor::block_on;
use futures::StreamExt;
use http::{Method, Request, StatusCode};
use kura_core::storage::{MemoryStorage, PutMode, Storage, StorageError};
use kura_core::UpstreamConfig;
use kura_core::{body, Body, ByteStream, Digest, Host, Registry, RegistryConfig};
use kura_core::{Fetch, FetchError};
use serde_json::json;

type Upstream = Registry<MemoryStorage, TestHost>;

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Blob bodies come back with one byte flipped.
    WrongBytes,
    /// Everything answers 503.
    Down,
    /// The referrers API answers 404, like registries that predate it.
    NoReferrersApi,
}

/// The upstream side: an in-process registry, counting blob GETs.
struct Shared {
    upstream: Arc<Upstream>,
    blob_gets: AtomicUsize,
    fault: Mutex<Fault>,
    /// Answers that replace the upstream's for matching requests.
    rules: Mutex<Vec<Rule>>,
    /// Every request: method, URL, Authorization.
    log: Mutex<Vec<(Method, String, Option<String>)>>,
}

/// Requests whose method is `method` (any if `None`) and whose path
/// contains `path` get `answer`.
struct Rule {
    method: Option<Method>,
    path: String,
    answer: Answer,
    /// How many more requests it answers (`None`: all).
    times: Option<u32>,
}

#[derive(Clone)]
enum Answer {
    /// This status with these headers and an empty body.
    Status(u16, Vec<(&'static str, String)>),
    /// Wait until the gate opens, then answer as the upstream does.
    Hold(futures::future::Shared<futures::channel::oneshot::Receiver<()>>),
    /// This status, headers and body.
    Body(u16, Vec<(&'static str, String)>, Bytes),
    /// No response: the fetch fails with this message.
    Fail(String),
}

impl Shared {
    fn rule(&self, method: Option<Method>, path: &str, answer: Answer) {
        self.rules.lock().unwrap().push(Rule {
            method,
            path: path.to_owned(),
            answer,
            times: None,
        });
    }

    fn rule_times(&self, method: Option<Method>, path: &str, answer: Answer, times: u32) {
        self.rules.lock().unwrap().push(Rule {
            method,
            path: path.to_owned(),
            answer,
            times: Some(times),
        });
    }

    fn clear_rules(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Requests so far with this method whose path contains `path`.
    fn seen(&self, method: &Method, path: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p, _)| m == method && p.contains(path))
            .count()
    }
}

/// A gate for [`Answer::Hold`]: requests wait until the sender is used or
/// dropped.
fn gate() -> (
    futures::channel::oneshot::Sender<()>,
    futures::future::Shared<futures::channel::oneshot::Receiver<()>>,
) {
    use futures::FutureExt;
    let (tx, rx) = futures::channel::oneshot::channel();
    (tx, rx.shared())
}

/// Fetch served by [`Shared`].
struct LocalFetch(Arc<Shared>);

impl std::ops::Deref for LocalFetch {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[async_trait]
impl Fetch for LocalFetch {
    type Body = ByteStream;

    async fn fetch(&self, req: Request<()>) -> Result<http::Response<ByteStream>, FetchError> {
        let fault = *self.fault.lock().unwrap();
        if fault == Fault::Down {
            return Ok(http::Response::builder()
                .status(503)
                .body(body::empty())
                .unwrap());
        }
        let path = req.uri().path_and_query().unwrap().as_str().to_owned();
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        self.log
            .lock()
            .unwrap()
            .push((req.method().clone(), req.uri().to_string(), auth));
        // A held request, once let go, is answered by the next rule that
        // matches, else by the upstream.
        let mut held = false;
        loop {
            let answer = {
                let mut rules = self.rules.lock().unwrap();
                let found = rules.iter_mut().find(|r| {
                    r.method.as_ref().is_none_or(|m| m == req.method())
                        && path.contains(&r.path)
                        && r.times != Some(0)
                        && !(held && matches!(r.answer, Answer::Hold(_)))
                });
                found.map(|r| {
                    if let Some(n) = r.times.as_mut() {
                        *n -= 1;
                    }
                    r.answer.clone()
                })
            };
            match answer {
                Some(Answer::Status(code, headers)) => {
                    let mut b = http::Response::builder().status(code);
                    for (k, v) in headers {
                        b = b.header(k, v);
                    }
                    return Ok(b.body(body::empty()).unwrap());
                }
                Some(Answer::Body(code, headers, bytes)) => {
                    let mut b = http::Response::builder().status(code);
                    for (k, v) in headers {
                        b = b.header(k, v);
                    }
                    return Ok(b.body(body::once(bytes)).unwrap());
                }
                Some(Answer::Fail(message)) => return Err(FetchError::other(message)),
                Some(Answer::Hold(gate)) => {
                    let _ = gate.await;
                    held = true;
                }
                None => break,
            }
        }
        if fault == Fault::NoReferrersApi && path.contains("/referrers/") {
            return Ok(http::Response::builder()
                .status(404)
                .body(body::empty())
                .unwrap());
        }
        let is_blob_get = req.method() == Method::GET && path.contains("/blobs/");
        if is_blob_get {
            self.blob_gets.fetch_add(1, Ordering::SeqCst);
        }
        let mut inner = Request::builder().method(req.method()).uri(path);
        for (k, v) in req.headers() {
            inner = inner.header(k, v);
        }
        let resp = self
            .upstream
            .handle(inner.body(body::empty()).unwrap())
            .await;
        let (parts, b) = resp.into_parts();
        let mut stream: ByteStream = match b {
            Body::Empty => body::empty(),
            Body::Full(b) => body::once(b),
            Body::Stream(s) | Body::Relay(s) => s,
        };
        if fault == Fault::WrongBytes && is_blob_get {
            let all = body::collect_limited(stream, usize::MAX).await.unwrap();
            let mut v = all.to_vec();
            if let Some(b) = v.last_mut() {
                *b ^= 0xff;
            }
            stream = body::once(v.into());
        }
        Ok(http::Response::from_parts(parts, stream))
    }

    fn body_stream(body: ByteStream) -> ByteStream {
        body
    }
}

type Mirror = Registry<MemoryStorage, TestHost, LocalFetch>;

struct Setup {
    upstream: Arc<Upstream>,
    fetch: Arc<Shared>,
    mirror: Mirror,
}

/// A mirror's registry configuration: eviction passes run here, so fills
/// and uses are recorded for them.
fn evicting() -> RegistryConfig {
    let mut c = RegistryConfig::default();
    c.records_changes = true;
    c
}

fn setup(tag_ttl_ms: u64) -> Setup {
    let upstream = Arc::new(Registry::new(
        MemoryStorage::new(),
        TestHost::at(0),
        RegistryConfig::default(),
    ));
    let fetch = Arc::new(Shared {
        upstream: upstream.clone(),
        blob_gets: AtomicUsize::new(0),
        fault: Mutex::new(Fault::None),
        rules: Mutex::default(),
        log: Mutex::default(),
    });
    let mut config = UpstreamConfig::new("up.local", "http://upstream.invalid");
    config.tag_ttl_ms = tag_ttl_ms;
    config.max_stale_ms = 3_600_000;
    config.not_found_ttl_ms = 0;
    let host = TestHost::at(1_000_000);
    let mirror = Registry::builder(MemoryStorage::new(), host)
        .config(evicting())
        .mirror(LocalFetch(fetch.clone()), vec![config])
        .build()
        .unwrap();
    Setup {
        upstream,
        fetch,
        mirror,
    }
}

struct Resp {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Result<Bytes, std::io::Error>,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    fn bytes(&self) -> &[u8] {
        self.body.as_ref().expect("complete body")
    }
}

async fn call_async<S: Storage<Body = ByteStream>, H: Host, F: Fetch>(
    reg: &Registry<S, H, F>,
    method: Method,
    uri: &str,
    body: Bytes,
) -> Resp {
    let req = Request::builder().method(method).uri(uri);
    let stream = if body.is_empty() {
        body::empty()
    } else {
        body::once(body)
    };
    let resp = reg.handle(req.body(stream).unwrap()).await;
    let (parts, b) = resp.into_parts();
    let body = match b {
        Body::Empty => Ok(Bytes::new()),
        Body::Full(b) => Ok(b),
        Body::Stream(mut s) | Body::Relay(mut s) => {
            let mut out = Vec::new();
            let mut result = Ok(());
            while let Some(c) = s.next().await {
                match c {
                    Ok(c) => out.extend_from_slice(&c),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            result.map(|()| out.into())
        }
    };
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn call<S: Storage<Body = ByteStream>, H: Host, F: Fetch>(
    reg: &Registry<S, H, F>,
    method: Method,
    uri: &str,
) -> Resp {
    block_on(call_async(reg, method, uri, Bytes::new()))
}

fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

/// Push an image (config + `layers`) to the upstream under `repo:tag`.
fn push_image(up: &Upstream, repo: &str, tag: &str, layers: &[Vec<u8>]) -> (Digest, Vec<Digest>) {
    let mut descs = Vec::new();
    let mut digests = Vec::new();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    for blob in std::iter::once(&config).chain(layers) {
        let d = Digest::sha256(blob);
        let r = block_on(call_async(
            up,
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            blob.clone().into(),
        ));
        assert_eq!(r.status, StatusCode::CREATED);
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": blob.len()}));
        digests.push(d);
    }
    let mut config_desc = descs.remove(0);
    config_desc["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config_desc, "layers": descs,
    }))
    .unwrap();
    let md = Digest::sha256(&m);
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(body::once(m.into()))
        .unwrap();
    assert_eq!(block_on(up.handle(req)).status(), StatusCode::CREATED);
    (md, digests)
}

#[test]
fn cold_then_warm_pull() {
    let s = setup(60_000);
    let layer = data(3 * 1024 * 1024 + 17, 1);
    let (md, digests) = push_image(&s.upstream, "team/app", "v1", std::slice::from_ref(&layer));

    let r = call(&s.mirror, Method::GET, "/v2/up.local/team/app/manifests/v1");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-content-digest"), md.to_string());
    assert_eq!(r.header("x-kura-cache"), "miss");
    assert_eq!(r.header("oci-namespace"), "up.local");
    for pass in ["miss", "hit"] {
        let r = call(
            &s.mirror,
            Method::GET,
            &format!("/v2/up.local/team/app/blobs/{}", digests[1]),
        );
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-kura-cache"), pass);
        assert!(r.bytes() == layer.as_slice());
    }
    assert_eq!(
        s.fetch.blob_gets.load(Ordering::SeqCst),
        1,
        "second pull came from the cache"
    );
    // ns= routing reaches the same cache.
    let r = call(
        &s.mirror,
        Method::GET,
        &format!("/v2/team/app/blobs/{}?ns=up.local", digests[1]),
    );
    assert_eq!(r.header("x-kura-cache"), "hit");
    let r = call(
        &s.mirror,
        Method::GET,
        "/v2/team/app/manifests/v1?ns=up.local",
    );
    assert_eq!(r.header("x-kura-cache"), "hit");
    // Unknown upstreams are refused, never fetched.
    let r = call(
        &s.mirror,
        Method::GET,
        "/v2/team/app/manifests/v1?ns=evil.example",
    );
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Mirrors are read-only.
    let r = call(
        &s.mirror,
        Method::POST,
        "/v2/up.local/team/app/blobs/uploads/",
    );
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn concurrent_cold_gets_share_one_fetch() {
    let s = setup(60_000);
    let layer = data(20 * 1024 * 1024 + 3, 2);
    let (_, digests) = push_image(&s.upstream, "big", "v1", std::slice::from_ref(&layer));
    let uri = format!("/v2/up.local/big/blobs/{}", digests[1]);
    let results = block_on(futures::future::join_all(
        (0..16).map(|_| call_async(&s.mirror, Method::GET, &uri, Bytes::new())),
    ));
    for r in &results {
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.bytes() == layer.as_slice());
    }
    assert_eq!(s.fetch.blob_gets.load(Ordering::SeqCst), 1);
    // A range on a cached blob.
    let r = block_on(call_async(&s.mirror, Method::GET, &uri, Bytes::new()));
    assert_eq!(r.header("x-kura-cache"), "hit");
}

#[test]
fn lying_upstream_caches_nothing() {
    let s = setup(60_000);
    let layer = data(100_000, 3);
    let (_, digests) = push_image(&s.upstream, "lie", "v1", std::slice::from_ref(&layer));
    *s.fetch.fault.lock().unwrap() = Fault::WrongBytes;
    let uri = format!("/v2/up.local/lie/blobs/{}", digests[1]);
    let r = call(&s.mirror, Method::GET, &uri);
    assert!(r.body.is_err(), "a wrong blob must not arrive complete");
    assert!(block_on(s.mirror.storage().list("blobs/"))
        .unwrap()
        .is_empty());
    // Healed: the next pull works and is cached.
    *s.fetch.fault.lock().unwrap() = Fault::None;
    let r = call(&s.mirror, Method::GET, &uri);
    assert!(r.bytes() == layer.as_slice());
    let r = call(&s.mirror, Method::GET, &uri);
    assert_eq!(r.header("x-kura-cache"), "hit");
}

#[test]
fn tags_revalidate_and_go_stale_when_upstream_is_down() {
    let s = setup(0);
    let (md1, _) = push_image(&s.upstream, "app", "v1", &[data(1000, 4)]);
    assert_eq!(
        call(&s.mirror, Method::GET, "/v2/up.local/app/manifests/v1").header("x-kura-cache"),
        "miss"
    );
    let r = call(&s.mirror, Method::GET, "/v2/up.local/app/manifests/v1");
    assert_eq!(r.header("x-kura-cache"), "revalidated");
    assert_eq!(r.header("docker-content-digest"), md1.to_string());
    // The tag moves upstream.
    let (md2, _) = push_image(&s.upstream, "app", "v1", &[data(1000, 5)]);
    let r = call(&s.mirror, Method::GET, "/v2/up.local/app/manifests/v1");
    assert_eq!(r.header("docker-content-digest"), md2.to_string());
    // Upstream down: the cached tag is served, marked stale.
    *s.fetch.fault.lock().unwrap() = Fault::Down;
    let r = call(&s.mirror, Method::GET, "/v2/up.local/app/manifests/v1");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-kura-cache"), "stale");
    assert!(r.header("warning").starts_with("110"));
    assert_eq!(r.header("docker-content-digest"), md2.to_string());
    // Something never cached cannot be served.
    let r = call(&s.mirror, Method::GET, "/v2/up.local/app/manifests/v9");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// A mirror of `s`'s upstream over `storage`, its clock at `now_ms`: a
/// process started (or restarted) on storage another one used.
fn mirror_on(
    s: &Setup,
    storage: Arc<MemoryStorage>,
    now_ms: u64,
) -> Registry<Arc<MemoryStorage>, TestHost, LocalFetch> {
    mirror_with(s, storage, now_ms, |_| {})
}

/// [`mirror_on`] with its own host, on any storage.
fn mirror_on_host<St: Storage<Body = ByteStream>>(
    s: &Setup,
    storage: Arc<St>,
    host: TestHost,
) -> Registry<Arc<St>, TestHost, LocalFetch> {
    let mut config = UpstreamConfig::new("up.local", "http://upstream.invalid");
    config.tag_ttl_ms = 60_000;
    config.not_found_ttl_ms = 0;
    Registry::builder(storage, host)
        .config(evicting())
        .mirror(LocalFetch(s.fetch.clone()), vec![config])
        .build()
        .unwrap()
}

/// [`mirror_on`] with the upstream's configuration edited.
fn mirror_with(
    s: &Setup,
    storage: Arc<MemoryStorage>,
    now_ms: u64,
    edit: impl FnOnce(&mut UpstreamConfig),
) -> Registry<Arc<MemoryStorage>, TestHost, LocalFetch> {
    let mut config = UpstreamConfig::new("up.local", "http://upstream.invalid");
    config.tag_ttl_ms = 60_000;
    config.max_stale_ms = 3_600_000;
    config.not_found_ttl_ms = 0;
    edit(&mut config);
    Registry::builder(storage, TestHost::at(now_ms))
        .config(evicting())
        .mirror(LocalFetch(s.fetch.clone()), vec![config])
        .build()
        .unwrap()
}

fn at<S: Storage, F: Fetch>(reg: &Registry<S, TestHost, F>, now_ms: u64) {
    reg.host().clock.store(now_ms, Ordering::SeqCst);
}

/// Where a blob's bytes are stored. The layout is written out here, not
/// taken from the core, so that a change to the on-storage format fails.
fn blob_key(d: &Digest) -> String {
    format!(
        "blobs/{}/{}/{}",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

/// The link that says repository `name` has blob `d`.
fn layer_link_key(name: &kura_core::RepositoryName, d: &Digest) -> String {
    format!(
        "repositories/{name}/_layers/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

/// Layer digests sorted by their storage key (the order a listing gives).
fn in_key_order(mut digests: Vec<Digest>) -> Vec<Digest> {
    digests.sort_by_key(blob_key);
    digests
}

// The blob that should go is, on purpose, both the most recently written and
// the last in key order: an eviction by write time or by listing order
// picks another one.
#[test]
fn eviction_goes_by_last_use_across_a_restart() {
    let s = setup(60_000);
    let layers: Vec<Vec<u8>> = (0..3).map(|i| data(100_000, 40 + i)).collect();
    let (_, digests) = push_image(&s.upstream, "lru", "v1", &layers);
    let ordered = in_key_order(digests[1..].to_vec());
    let (a, b, victim) = (&ordered[0], &ordered[1], &ordered[2]);
    let storage = Arc::new(MemoryStorage::new());
    let first = mirror_on(&s, storage.clone(), 0);
    let blob_url = |d: &Digest| format!("/v2/up.local/lru/blobs/{d}");
    // Filled in key order, so the victim is also the newest write.
    for (i, d) in [a, b, victim].into_iter().enumerate() {
        at(&first, 2_000_000 + i as u64 * 1_000);
        let r = call(&first, Method::GET, &blob_url(d));
        assert_eq!(
            (r.status, r.header("x-kura-cache")),
            (StatusCode::OK, "miss")
        );
    }
    // Then the two older ones are used again: a GET and a HEAD.
    at(&first, 3_000_000);
    assert_eq!(
        call(&first, Method::GET, &blob_url(a)).header("x-kura-cache"),
        "hit"
    );
    at(&first, 3_001_000);
    assert_eq!(
        call(&first, Method::HEAD, &blob_url(b)).header("x-kura-cache"),
        "hit"
    );
    drop(first);

    // A new process on the same storage knows nothing in memory.
    let second = mirror_on(&s, storage.clone(), 10_000_000);
    let report = block_on(second.evict(200_000, 1_000)).unwrap();
    assert_eq!(report.cached_bytes, 300_000);
    assert_eq!(report.evicted_blobs, 1, "{report:?}");
    let stored = |d: &Digest| block_on(storage.head(&blob_key(d))).unwrap().is_some();
    assert!(!stored(victim), "the least recently used blob must go");
    assert!(stored(a) && stored(b), "recently used blobs must stay");
    assert_eq!(
        call(&second, Method::HEAD, &blob_url(a)).header("x-kura-cache"),
        "hit"
    );
}

/// Use records an older kura left (`access/<alg>/<hex>`, one per blob)
/// count in the first eviction pass, which lists the whole cache and
/// builds the ledger; then they are gone (orphans too), and later passes
/// do not list the cache again.
#[test]
fn eviction_takes_older_use_records_into_its_ledger_once() {
    let s = setup(60_000);
    let layers: Vec<Vec<u8>> = (0..2).map(|i| data(50_000, 70 + i)).collect();
    let (_, digests) = push_image(&s.upstream, "rec", "v1", &layers);
    let (a, b) = (&digests[1], &digests[2]);
    let storage = Arc::new(MemoryStorage::new());
    let mirror = mirror_on(&s, storage.clone(), 1_000_000);
    for (d, t) in [(a, 1_000_000), (b, 2_000_000)] {
        at(&mirror, t);
        let r = call(&mirror, Method::GET, &format!("/v2/up.local/rec/blobs/{d}"));
        assert_eq!(r.status, StatusCode::OK);
    }
    let record = |d: &Digest| format!("access/{}/{}", d.algorithm().as_str(), d.hex());
    let orphan = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
    // An older kura saw `a` used last.
    for (d, ms) in [(a, "3000000"), (&orphan, "5")] {
        block_on(storage.put(
            &record(d),
            Bytes::from(ms),
            kura_core::storage::PutMode::Overwrite,
        ))
        .unwrap();
    }
    let later = mirror_on(&s, storage.clone(), 10_000_000);
    let report = block_on(later.evict(60_000, 1_000)).unwrap();
    assert!(report.full_listing, "{report:?}");
    assert_eq!(report.evicted_blobs, 1, "{report:?}");
    let present = |key: &str| block_on(storage.head(key)).unwrap().is_some();
    assert!(
        present(&blob_key(a)),
        "the older record's recent use must count"
    );
    assert!(!present(&blob_key(b)));
    assert!(!present(&record(a)) && !present(&record(&orphan)));
    let report = block_on(later.evict(60_000, 1_000)).unwrap();
    assert!(!report.full_listing, "{report:?}");
}

type Gate = futures::future::Shared<futures::channel::oneshot::Receiver<()>>;

/// `S`, noting which prefixes are listed and counting reads (heads and
/// gets), and gets of upload-area objects (a fill's spool) apart; if
/// gated, blob commits (writes under `blobs/`, renames) wait until the
/// gate's `open` is dropped.
struct Counting<S> {
    inner: Arc<S>,
    /// Writes of keys containing the `&str` wait for the gate.
    gate: Option<(Gate, &'static str)>,
    /// Writes waiting at the gate so far.
    gated: AtomicUsize,
    listed: Mutex<Vec<String>>,
    reads: AtomicUsize,
    spool_gets: AtomicUsize,
    /// The next read of this key finds it deleted: an eviction pass
    /// between a request's look and its read.
    vanish_on_get: Mutex<Option<String>>,
}

impl<S> Counting<S> {
    fn new(inner: Arc<S>) -> Self {
        Counting {
            inner,
            gate: None,
            gated: AtomicUsize::new(0),
            listed: Mutex::default(),
            reads: AtomicUsize::new(0),
            spool_gets: AtomicUsize::new(0),
            vanish_on_get: Mutex::default(),
        }
    }

    fn gated(inner: Arc<S>, gate: Gate) -> Self {
        Self::gated_on(inner, gate, "blobs/")
    }

    fn gated_on(inner: Arc<S>, gate: Gate, keys: &'static str) -> Self {
        Counting {
            gate: Some((gate, keys)),
            ..Counting::new(inner)
        }
    }

    async fn commit_gate(&self, key: &str) {
        if let Some((g, keys)) = &self.gate {
            if key.contains(keys) {
                self.gated.fetch_add(1, Ordering::SeqCst);
                let _ = g.clone().await;
            }
        }
    }
}

#[async_trait]
impl<S: Storage<Body = ByteStream>> Storage for Counting<S> {
    type Body = ByteStream;
    async fn head(
        &self,
        key: &str,
    ) -> Result<Option<kura_core::storage::ObjectMeta>, StorageError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.head(key).await
    }
    async fn get(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<(kura_core::storage::ObjectMeta, ByteStream)>, StorageError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if key.starts_with("uploads/") {
            self.spool_gets.fetch_add(1, Ordering::SeqCst);
        }
        let vanish = {
            let mut v = self.vanish_on_get.lock().unwrap();
            if v.as_deref() == Some(key) {
                v.take()
            } else {
                None
            }
        };
        if let Some(key) = vanish {
            self.inner.delete(&key).await?;
        }
        self.inner.get(key, range).await
    }
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        self.commit_gate(key).await;
        self.inner.put(key, data, mode).await
    }
    async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64, StorageError> {
        self.commit_gate(key).await;
        self.inner.put_stream(key, data).await
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.commit_gate(to).await;
        self.inner.rename(from, to).await
    }
    fn can_append(&self) -> bool {
        self.inner.can_append()
    }
    async fn append(&self, key: &str, offset: u64, parts: Vec<Bytes>) -> Result<(), StorageError> {
        self.inner.append(key, offset, parts).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.listed.lock().unwrap().push(prefix.to_owned());
        self.inner.list(prefix).await
    }
    async fn list_meta(
        &self,
        prefix: &str,
    ) -> Result<Vec<kura_core::storage::ListEntry>, StorageError> {
        self.listed.lock().unwrap().push(prefix.to_owned());
        self.inner.list_meta(prefix).await
    }
    fn body_stream(body: ByteStream) -> ByteStream {
        body
    }
}

/// After the first pass (which lists the cache), an eviction pass lists
/// only the changes and reads only them and the ledger, however many blobs
/// are cached; it still evicts by last use, and a blob pushed into a
/// hosted repository since is never evicted.
#[test]
fn an_eviction_pass_reads_what_changed_not_the_whole_cache() {
    let s = setup(60_000);
    let layers: Vec<Vec<u8>> = (0..30).map(|i| data(1_000, 500 + i)).collect();
    let (_, digests) = push_image(&s.upstream, "many", "v1", &layers);
    let layers_d = &digests[1..];
    let storage = Arc::new(Counting::new(Arc::new(MemoryStorage::new())));
    let mirror = mirror_on_host(&s, storage.clone(), TestHost::at(1_000_000));
    let url = |d: &Digest| format!("/v2/up.local/many/blobs/{d}");
    for (i, d) in layers_d.iter().enumerate() {
        at(&mirror, 1_000_000 + i as u64 * 1_000);
        assert_eq!(call(&mirror, Method::GET, &url(d)).status, StatusCode::OK);
    }
    let first = block_on(mirror.evict(u64::MAX, 0)).unwrap();
    assert!(first.full_listing);
    assert_eq!(first.cached_bytes, 30_000);

    // Two blobs used again (the two oldest), one pushed to a hosted repo.
    at(&mirror, 5_000_000);
    for d in &layers_d[..2] {
        assert_eq!(
            call(&mirror, Method::GET, &url(d)).header("x-kura-cache"),
            "hit"
        );
    }
    let hosted = &layers_d[2];
    let pushed = block_on(call_async(
        &mirror,
        Method::POST,
        &format!("/v2/mine/blobs/uploads/?digest={hosted}"),
        layers[2].clone().into(),
    ));
    assert_eq!(pushed.status, StatusCode::CREATED);

    storage.listed.lock().unwrap().clear();
    storage.reads.store(0, Ordering::SeqCst);
    at(&mirror, 6_000_000);
    // 29 evictable, 1 kept: down to 5 blobs' worth.
    let report = block_on(mirror.evict(5_000, 0)).unwrap();
    assert!(!report.full_listing, "{report:?}");
    assert_eq!(report.cached_bytes, 29_000, "{report:?}");
    assert_eq!(report.evicted_blobs, 24, "{report:?}");
    let listed = storage.listed.lock().unwrap().clone();
    assert!(
        listed.iter().all(|p| p == "cache/changes/"),
        "listed more than the changes: {listed:?}"
    );
    // The ledger, three changes (two uses, one kept) and one existence
    // check per evicted blob; not one read per cached blob.
    let reads = storage.reads.load(Ordering::SeqCst);
    assert!(reads <= 1 + 3 + 24 + 2, "{reads} reads");
    let stored = |d: &Digest| block_on(storage.head(&blob_key(d))).unwrap().is_some();
    assert!(
        stored(&layers_d[0]) && stored(&layers_d[1]),
        "used last: kept"
    );
    assert!(stored(hosted), "a hosted blob is never evicted");
    assert!(stored(&layers_d[29]) && !stored(&layers_d[3]));
    assert_eq!(
        call(&mirror, Method::GET, &format!("/v2/mine/blobs/{hosted}")).status,
        StatusCode::OK
    );
}

#[test]
fn eviction_counts_a_manifest_pull_as_a_use_of_its_layers() {
    let s = setup(60_000);
    let one = data(100_000, 60);
    let two = data(100_000, 61);
    let (_, d1) = push_image(&s.upstream, "img/one", "v1", std::slice::from_ref(&one));
    let (_, d2) = push_image(&s.upstream, "img/two", "v1", std::slice::from_ref(&two));
    // `kept` sorts first and is filled first: only its manifest's pull can
    // save it.
    let ((kept, kept_repo), (victim, victim_repo)) = if blob_key(&d1[1]) < blob_key(&d2[1]) {
        ((&d1[1], "img/one"), (&d2[1], "img/two"))
    } else {
        ((&d2[1], "img/two"), (&d1[1], "img/one"))
    };
    let mirror = mirror_on(&s, Arc::new(MemoryStorage::new()), 2_000_000);
    let r = call(
        &mirror,
        Method::GET,
        &format!("/v2/up.local/{kept_repo}/blobs/{kept}"),
    );
    assert_eq!(r.status, StatusCode::OK);
    at(&mirror, 2_001_000);
    let r = call(
        &mirror,
        Method::GET,
        &format!("/v2/up.local/{victim_repo}/blobs/{victim}"),
    );
    assert_eq!(r.status, StatusCode::OK);
    // A client that has the layer pulls only the manifest.
    at(&mirror, 3_000_000);
    let r = call(
        &mirror,
        Method::GET,
        &format!("/v2/up.local/{kept_repo}/manifests/v1"),
    );
    assert_eq!(r.status, StatusCode::OK);

    at(&mirror, 10_000_000);
    let report = block_on(mirror.evict(150_000, 1_000)).unwrap();
    assert_eq!(report.evicted_blobs, 1, "{report:?}");
    let kept_url = format!("/v2/up.local/{kept_repo}/blobs/{kept}");
    assert_eq!(
        call(&mirror, Method::HEAD, &kept_url).header("x-kura-cache"),
        "hit"
    );
    let victim_url = format!("/v2/up.local/{victim_repo}/blobs/{victim}");
    assert_eq!(
        call(&mirror, Method::HEAD, &victim_url).header("x-kura-cache"),
        "miss"
    );
}

#[test]
fn eviction_keeps_the_cache_under_its_size_and_hosted_blobs() {
    let s = setup(60_000);
    let layers: Vec<Vec<u8>> = (0..4).map(|i| data(100_000, 10 + i)).collect();
    let (_, digests) = push_image(&s.upstream, "ev", "v1", &layers);
    for (i, d) in digests[1..].iter().enumerate() {
        at(&s.mirror, 2_000_000 + i as u64 * 1000);
        assert_eq!(
            call(
                &s.mirror,
                Method::GET,
                &format!("/v2/up.local/ev/blobs/{d}")
            )
            .status,
            StatusCode::OK
        );
    }
    // A hosted blob is never evicted.
    let hosted = block_on(call_async(
        &s.mirror,
        Method::POST,
        &format!(
            "/v2/mine/blobs/uploads/?digest={}",
            Digest::sha256(&layers[0])
        ),
        layers[0].clone().into(),
    ));
    assert_eq!(hosted.status, StatusCode::CREATED);

    at(&s.mirror, 10_000_000);
    let report = block_on(s.mirror.evict(150_000, 1_000)).unwrap();
    // Four mirrored layers, one of them also hosted (so protected).
    assert_eq!(report.cached_bytes, 300_000);
    assert_eq!(report.evicted_blobs, 2, "{report:?}");
    assert_eq!(report.evicted_bytes, 200_000);
    // Nothing used within the grace period is evicted, whatever the size.
    for d in &digests[2..] {
        call(
            &s.mirror,
            Method::GET,
            &format!("/v2/up.local/ev/blobs/{d}"),
        );
    }
    let report = block_on(s.mirror.evict(0, 1_000)).unwrap();
    assert_eq!(report.evicted_blobs, 0, "{report:?}");
    assert_eq!(
        call(
            &s.mirror,
            Method::GET,
            &format!("/v2/mine/blobs/{}", Digest::sha256(&layers[0]))
        )
        .status,
        StatusCode::OK
    );
}

/// Push an artifact manifest referring to `subject` into the upstream.
fn push_artifact(
    up: &Upstream,
    repo: &str,
    subject: &Digest,
    subject_len: usize,
    artifact_type: &str,
) -> Digest {
    let empty = b"{}".to_vec();
    let d = Digest::sha256(&empty);
    let r = block_on(call_async(
        up,
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        empty.into(),
    ));
    assert_eq!(r.status, StatusCode::CREATED);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": d.to_string(), "size": 2},
        "layers": [],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject.to_string(), "size": subject_len},
    }))
    .unwrap();
    let md = Digest::sha256(&m);
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/v2/{repo}/manifests/{md}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(body::once(m.into()))
        .unwrap();
    assert_eq!(block_on(up.handle(req)).status(), StatusCode::CREATED);
    md
}

#[test]
fn referrers_pass_through() {
    let s = setup(60_000);
    let (subject, _) = push_image(&s.upstream, "sig", "v1", &[data(10, 6)]);
    let sbom = push_artifact(
        &s.upstream,
        "sig",
        &subject,
        500,
        "application/vnd.example.sbom",
    );
    let sig = push_artifact(
        &s.upstream,
        "sig",
        &subject,
        500,
        "application/vnd.example.signature",
    );
    let r = call(
        &s.mirror,
        Method::GET,
        &format!("/v2/up.local/sig/referrers/{subject}"),
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type"),
        "application/vnd.oci.image.index.v1+json"
    );
    let v: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
    let mut got: Vec<String> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want = vec![sbom.to_string(), sig.to_string()];
    want.sort();
    assert_eq!(got, want);
    let r = call(
        &s.mirror,
        Method::GET,
        &format!("/v2/up.local/sig/referrers/{subject}?artifactType=application/vnd.example.sbom"),
    );
    let v: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], json!(sbom.to_string()));
    assert_eq!(r.header("oci-filters-applied"), "artifactType");
}

#[test]
fn referrers_fall_back_to_the_tag_schema() {
    let s = setup(60_000);
    let (subject, _) = push_image(&s.upstream, "old", "v1", &[data(10, 7)]);
    *s.fetch.fault.lock().unwrap() = Fault::NoReferrersApi;
    // A registry without the API keeps referrers in an index tagged <alg>-<hex>.
    let (child, _) = push_image(&s.upstream, "old", "child", &[data(10, 8)]);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": child.to_string(), "size": 1, "artifactType": "application/vnd.example.sbom"}],
    }))
    .unwrap();
    let tag = format!("sha256-{}", subject.hex());
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/v2/old/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(body::once(index.into()))
        .unwrap();
    let put = block_on(s.upstream.handle(req));
    assert_eq!(put.status(), StatusCode::CREATED);
    let r = call(
        &s.mirror,
        Method::GET,
        &format!("/v2/up.local/old/referrers/{subject}"),
    );
    assert_eq!(r.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
    assert_eq!(v["manifests"][0]["digest"], json!(child.to_string()));
    // No referrers at all: an empty index, never a 404.
    let (other, _) = push_image(&s.upstream, "old", "v2", &[data(10, 9)]);
    let r = call(
        &s.mirror,
        Method::GET,
        &format!("/v2/up.local/old/referrers/{other}"),
    );
    assert_eq!(r.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
    assert_eq!(v["manifests"], json!([]));
}

// ----- across repositories, concurrency and failure ---------------------------

fn get_async<'a, S: Storage<Body = ByteStream>, F: Fetch>(
    reg: &'a Registry<S, TestHost, F>,
    uri: &'a str,
) -> impl std::future::Future<Output = Resp> + 'a {
    call_async(reg, Method::GET, uri, Bytes::new())
}

/// GET every uri at once while the upstream is held: each request must
/// be waiting (on the upstream, or on the one request that asks it) when
/// `open` is dropped; then all run to their answers.
fn held_gets<S: Storage<Body = ByteStream>, F: Fetch>(
    reg: &Registry<S, TestHost, F>,
    uris: &[&str],
    open: futures::channel::oneshot::Sender<()>,
) -> Vec<Resp> {
    block_on(async {
        let mut calls: Vec<_> = uris.iter().map(|u| Box::pin(get_async(reg, u))).collect();
        for c in calls.iter_mut() {
            assert!(futures::poll!(c.as_mut()).is_pending());
        }
        drop(open);
        futures::future::join_all(calls).await
    })
}

#[test]
fn a_fill_for_one_repository_is_never_followed_by_another() {
    let s = setup(60_000);
    let one = data(300_000, 70);
    let two = data(300_000, 71);
    let (_, d1) = push_image(&s.upstream, "owner/has", "v1", std::slice::from_ref(&one));
    let (_, d2) = push_image(&s.upstream, "owner/has", "v2", std::slice::from_ref(&two));
    // The upstream has no `owner/not` at all: it answers 404 for it.

    // While a fill for owner/has is held upstream, owner/not asks for the
    // same digest: it must not be streamed owner/has's blob.
    let (open, held) = gate();
    s.fetch.rule(
        Some(Method::GET),
        &format!("/v2/owner/has/blobs/{}", d1[1]),
        Answer::Hold(held),
    );
    let has = format!("/v2/up.local/owner/has/blobs/{}", d1[1]);
    let not = format!("/v2/up.local/owner/not/blobs/{}", d1[1]);
    let (a, b) = block_on(async {
        let mut a = Box::pin(get_async(&s.mirror, &has));
        assert!(futures::poll!(a.as_mut()).is_pending());
        // It may finish at once (its own fill, answered 404), or not.
        let mut b = Box::pin(futures::future::maybe_done(get_async(&s.mirror, &not)));
        let _ = futures::poll!(b.as_mut());
        drop(open);
        let a = a.await;
        b.as_mut().await;
        (a, b.as_mut().take_output().unwrap())
    });
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.bytes() == one.as_slice());
    assert_eq!(
        b.status,
        StatusCode::NOT_FOUND,
        "served another repository's fill"
    );
    assert!(!String::from_utf8_lossy(b.body.as_deref().unwrap_or(b"")).is_empty());

    // The reverse: a slow 404 for owner/not must not fail owner/has.
    s.fetch.clear_rules();
    let (open, held) = gate();
    s.fetch.rule(
        Some(Method::GET),
        &format!("/v2/owner/not/blobs/{}", d2[1]),
        Answer::Hold(held),
    );
    let has = format!("/v2/up.local/owner/has/blobs/{}", d2[1]);
    let not = format!("/v2/up.local/owner/not/blobs/{}", d2[1]);
    let (b, a) = block_on(async {
        let mut b = Box::pin(get_async(&s.mirror, &not));
        assert!(futures::poll!(b.as_mut()).is_pending());
        let mut a = Box::pin(futures::future::maybe_done(get_async(&s.mirror, &has)));
        let _ = futures::poll!(a.as_mut());
        drop(open);
        let b = b.await;
        a.as_mut().await;
        (b, a.as_mut().take_output().unwrap())
    });
    assert_eq!(b.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.status,
        StatusCode::OK,
        "a slow 404 elsewhere failed a real pull"
    );
    assert!(a.bytes() == two.as_slice());
}

#[test]
fn a_cached_blob_reaches_another_repository_only_on_the_upstreams_yes() {
    let s = setup(60_000);
    let layer = data(50_000, 72);
    let (_, digests) = push_image(&s.upstream, "owner/has", "v1", std::slice::from_ref(&layer));
    let d = &digests[1];
    let r = call(
        &s.mirror,
        Method::GET,
        &format!("/v2/up.local/owner/has/blobs/{d}"),
    );
    assert_eq!(r.status, StatusCode::OK);
    let other = format!("/v2/up.local/owner/other/blobs/{d}");
    let linked = || {
        let name = kura_core::RepositoryName::parse("up.local/owner/other").unwrap();
        block_on(s.mirror.storage().head(&layer_link_key(&name, d)))
            .unwrap()
            .is_some()
    };
    // Docker Hub answers 401 for repositories that do not exist: a no.
    for (status, want) in [
        (401, StatusCode::NOT_FOUND),
        (403, StatusCode::NOT_FOUND),
        (503, StatusCode::SERVICE_UNAVAILABLE),
        (500, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        s.fetch.clear_rules();
        s.fetch
            .rule(None, "/v2/owner/other/", Answer::Status(status, Vec::new()));
        for method in [Method::GET, Method::HEAD] {
            let r = call(&s.mirror, method.clone(), &other);
            assert_eq!(
                r.status, want,
                "{method} with the upstream answering {status}"
            );
        }
        assert!(!linked(), "linked on a {status}");
    }
    let catalog = call(&s.mirror, Method::GET, "/v2/_catalog");
    assert!(
        !String::from_utf8_lossy(catalog.bytes()).contains("owner/other"),
        "{:?}",
        String::from_utf8_lossy(catalog.bytes())
    );
    // A yes: the upstream has it there too.
    s.fetch.clear_rules();
    let r = block_on(call_async(
        &*s.upstream,
        Method::POST,
        &format!("/v2/owner/other/blobs/uploads/?mount={d}&from=owner/has"),
        Bytes::new(),
    ));
    assert_eq!(r.status, StatusCode::CREATED);
    let r = call(&s.mirror, Method::GET, &other);
    assert_eq!(
        (r.status, r.header("x-kura-cache")),
        (StatusCode::OK, "hit")
    );
    assert!(linked());
}

#[test]
fn credentials_never_follow_a_redirect_to_plain_http() {
    let s = setup(60_000);
    let (_, digests) = push_image(&s.upstream, "sec/app", "v1", &[data(10_000, 73)]);
    let d = &digests[1];
    let mirror = mirror_with(&s, Arc::new(MemoryStorage::new()), 1_000_000, |c| {
        c.url = "https://up.invalid:5000".into();
        c.username = Some("user".into());
        c.password = Some("secret".into());
    });
    let path = format!("/v2/sec/app/blobs/{d}");
    s.fetch.rule_times(
        Some(Method::GET),
        &path,
        Answer::Status(401, vec![("www-authenticate", "Basic realm=\"up\"".into())]),
        1,
    );
    s.fetch.rule_times(
        Some(Method::GET),
        &path,
        Answer::Status(
            307,
            vec![("location", format!("http://up.invalid:5000{path}?cdn=1"))],
        ),
        1,
    );
    let r = call(
        &mirror,
        Method::GET,
        &format!("/v2/up.local/sec/app/blobs/{d}"),
    );
    assert_eq!(r.status, StatusCode::OK);
    let log = s.fetch.log.lock().unwrap().clone();
    let https_with_auth = log
        .iter()
        .any(|(_, url, auth)| url.starts_with("https://") && auth.is_some());
    assert!(
        https_with_auth,
        "the upstream itself gets the credentials: {log:?}"
    );
    let plain: Vec<_> = log
        .iter()
        .filter(|(_, url, _)| url.starts_with("http://"))
        .collect();
    assert!(!plain.is_empty(), "the redirect was followed: {log:?}");
    for (_, url, auth) in plain {
        assert_eq!(auth, &None, "credentials sent over plain HTTP to {url}");
    }
}

#[test]
fn followers_of_a_tag_check_get_the_leaders_answer() {
    let s = setup(0);
    push_image(&s.upstream, "app", "v1", &[data(1000, 74)]);
    let uri = "/v2/up.local/app/manifests/v1";
    assert_eq!(call(&s.mirror, Method::GET, uri).status, StatusCode::OK);
    // The tag is deleted upstream; five clients revalidate it at once.
    let r = block_on(call_async(
        &*s.upstream,
        Method::DELETE,
        "/v2/app/manifests/v1",
        Bytes::new(),
    ));
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let (open, held) = gate();
    s.fetch
        .rule(Some(Method::HEAD), "/manifests/v1", Answer::Hold(held));
    let answers = held_gets(&s.mirror, &[uri; 5], open);
    for r in &answers {
        assert_eq!(
            (r.status, r.header("x-kura-cache")),
            (StatusCode::NOT_FOUND, ""),
            "every client gets the upstream's 404, none a stale manifest"
        );
    }

    // A leader whose client hangs up: a follower asks again instead of
    // reporting a healthy upstream as down.
    push_image(&s.upstream, "app", "v2", &[data(1000, 75)]);
    let uri = "/v2/up.local/app/manifests/v2";
    assert_eq!(call(&s.mirror, Method::GET, uri).status, StatusCode::OK);
    s.fetch.clear_rules();
    let (open, held) = gate();
    s.fetch
        .rule(Some(Method::HEAD), "/manifests/v2", Answer::Hold(held));
    let r = block_on(async {
        let mut leader = Box::pin(get_async(&s.mirror, uri));
        assert!(futures::poll!(leader.as_mut()).is_pending());
        let mut follower = Box::pin(get_async(&s.mirror, uri));
        assert!(futures::poll!(follower.as_mut()).is_pending());
        drop(leader);
        drop(open);
        follower.await
    });
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-kura-cache"), "revalidated");
}

/// On a host whose requests must not wake each other (a Worker), the
/// followers of a manifest fetch poll on the host's timer instead of being
/// woken by the leader, and still share its one upstream request.
#[test]
fn isolated_requests_share_a_manifest_fetch_by_polling() {
    let s = setup(60_000);
    let (digest, _) = push_image(&s.upstream, "app", "v1", &[data(1000, 77)]);
    s.mirror.host().isolated.store(true, Ordering::SeqCst);
    let (open, held) = gate();
    s.fetch
        .rule_times(Some(Method::GET), "/manifests/v1", Answer::Hold(held), 1);
    let uri = "/v2/up.local/app/manifests/v1";
    let answers = held_gets(&s.mirror, &[uri; 5], open);
    for r in &answers {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("docker-content-digest"), digest.to_string());
    }
    assert_eq!(s.fetch.seen(&Method::GET, "/manifests/v1"), 1);
    assert!(
        s.mirror.host().polls.load(Ordering::SeqCst) > 0,
        "the followers must wait by polling"
    );
}

/// An upstream that keeps failing the same way is one warning per ten
/// seconds, not one per request, and the next one says how many it stood
/// for.
#[test]
fn a_failing_upstream_is_warned_about_once_per_interval() {
    let s = setup(60_000);
    s.fetch.rule(
        Some(Method::GET),
        "/manifests/",
        Answer::Status(503, Vec::new()),
    );
    let warned = || {
        s.mirror
            .host()
            .warnings
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.starts_with("upstream up.local:"))
            .cloned()
            .collect::<Vec<_>>()
    };
    for i in 0..20 {
        let r = call(
            &s.mirror,
            Method::GET,
            &format!("/v2/up.local/app/manifests/t{i}"),
        );
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(warned().len(), 1, "{:?}", warned());
    at(&s.mirror, s.mirror.host().now_unix_ms() + 11_000);
    call(&s.mirror, Method::GET, "/v2/up.local/app/manifests/later");
    let w = warned();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[1].contains("(19 more like it"), "{w:?}");
}

/// A repository named two ways (a path prefix, `?ns=`) is one repository
/// as stored, so concurrent pulls under both spellings share one upstream
/// fetch.
#[test]
fn both_spellings_of_a_mirrored_name_share_one_fetch() {
    let s = setup(60_000);
    let (digest, _) = push_image(&s.upstream, "app", "v1", &[data(1000, 78)]);
    let (open, held) = gate();
    s.fetch
        .rule_times(Some(Method::GET), "/manifests/v1", Answer::Hold(held), 1);
    let uris = [
        "/v2/up.local/app/manifests/v1",
        "/v2/app/manifests/v1?ns=up.local",
    ];
    for r in held_gets(&s.mirror, &uris, open) {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("docker-content-digest"), digest.to_string());
    }
    assert_eq!(s.fetch.seen(&Method::GET, "/manifests/v1"), 1);
}

#[test]
fn concurrent_misses_share_a_failure() {
    let s = setup(60_000);
    push_image(&s.upstream, "app", "v1", &[data(1000, 76)]);
    // A tag that does not exist, asked by ten clients at once.
    let (open, held) = gate();
    s.fetch
        .rule(Some(Method::GET), "/manifests/nope", Answer::Hold(held));
    let uri = "/v2/up.local/app/manifests/nope";
    let answers = held_gets(&s.mirror, &[uri; 10], open);
    assert!(answers.iter().all(|r| r.status == StatusCode::NOT_FOUND));
    assert_eq!(s.fetch.seen(&Method::GET, "/manifests/nope"), 1);

    // An upstream answering 503: one client's retries, not ten clients'.
    s.fetch.clear_rules();
    let (open, held) = gate();
    s.fetch
        .rule_times(Some(Method::GET), "/manifests/down", Answer::Hold(held), 1);
    s.fetch.rule(
        Some(Method::GET),
        "/manifests/down",
        Answer::Status(503, Vec::new()),
    );
    let uri = "/v2/up.local/app/manifests/down";
    let answers = held_gets(&s.mirror, &[uri; 10], open);
    assert!(answers
        .iter()
        .all(|r| r.status == StatusCode::SERVICE_UNAVAILABLE));
    assert!(
        s.fetch.seen(&Method::GET, "/manifests/down") <= 3,
        "{} upstream GETs",
        s.fetch.seen(&Method::GET, "/manifests/down")
    );
}

#[test]
fn eviction_never_takes_a_hosted_repository_named_like_an_upstream() {
    let s = setup(60_000);
    let hosted = data(100_000, 77);
    let hd = Digest::sha256(&hosted);
    // `up.local` alone routes to hosting (only `up.local/<name>` is mirrored).
    let r = block_on(call_async(
        &s.mirror,
        Method::POST,
        &format!("/v2/up.local/blobs/uploads/?digest={hd}"),
        hosted.clone().into(),
    ));
    assert_eq!(r.status, StatusCode::CREATED);
    let (_, digests) = push_image(&s.upstream, "ev3", "v1", &[data(100_000, 78)]);
    let r = call(
        &s.mirror,
        Method::GET,
        &format!("/v2/up.local/ev3/blobs/{}", digests[1]),
    );
    assert_eq!(r.status, StatusCode::OK);
    at(&s.mirror, 10_000_000);
    let report = block_on(s.mirror.evict(0, 1_000)).unwrap();
    assert_eq!(
        report.evicted_blobs, 1,
        "only the mirrored layer: {report:?}"
    );
    let r = call(&s.mirror, Method::GET, &format!("/v2/up.local/blobs/{hd}"));
    assert_eq!(r.status, StatusCode::OK, "hosted data was evicted");
    assert!(r.bytes() == hosted.as_slice());
}

#[test]
fn cold_heads_ask_the_upstream_with_heads() {
    let s = setup(60_000);
    let layer = data(200_000, 79);
    let (md, digests) = push_image(&s.upstream, "hd/app", "v1", std::slice::from_ref(&layer));
    // A manifest by tag and by digest: an upstream HEAD each, no GET.
    for uri in [
        "/v2/up.local/hd/app/manifests/v1".to_owned(),
        format!("/v2/up.local/hd/app/manifests/{md}"),
    ] {
        let r = call(&s.mirror, Method::HEAD, &uri);
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert_eq!(r.header("docker-content-digest"), md.to_string());
        assert_eq!(
            r.header("content-type"),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert!(r.header("content-length").parse::<u64>().unwrap() > 0);
    }
    assert_eq!(s.fetch.seen(&Method::GET, "/manifests/"), 0);
    assert_eq!(s.fetch.seen(&Method::HEAD, "/manifests/"), 2);
    // A blob: its size from an upstream HEAD, nothing downloaded.
    let blob = format!("/v2/up.local/hd/app/blobs/{}", digests[1]);
    let r = call(&s.mirror, Method::HEAD, &blob);
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), layer.len().to_string());
    assert_eq!(r.header("docker-content-digest"), digests[1].to_string());
    assert_eq!(s.fetch.blob_gets.load(Ordering::SeqCst), 0);
    let missing = format!("/v2/up.local/hd/app/blobs/{}", Digest::sha256(b"nothing"));
    assert_eq!(
        call(&s.mirror, Method::HEAD, &missing).status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.fetch.blob_gets.load(Ordering::SeqCst), 0);
    // Nothing was stored: GETs are misses, and fetch.
    let r = call(&s.mirror, Method::GET, "/v2/up.local/hd/app/manifests/v1");
    assert_eq!(r.header("x-kura-cache"), "miss");
    let r = call(&s.mirror, Method::GET, &blob);
    assert_eq!(r.header("x-kura-cache"), "miss");
    assert!(r.bytes() == layer.as_slice());
    // Warm HEADs are answered here.
    let before = s.fetch.log.lock().unwrap().len();
    assert_eq!(
        call(&s.mirror, Method::HEAD, &blob).header("x-kura-cache"),
        "hit"
    );
    assert_eq!(s.fetch.log.lock().unwrap().len(), before);
}

#[test]
fn upstream_404s_are_remembered_for_a_while() {
    let s = setup(60_000);
    push_image(&s.upstream, "neg/app", "v1", &[data(1000, 80)]);
    let mirror = mirror_with(&s, Arc::new(MemoryStorage::new()), 1_000_000, |c| {
        c.not_found_ttl_ms = 10_000;
    });
    let tag = "/v2/up.local/neg/app/manifests/nope";
    let blob = format!("/v2/up.local/neg/app/blobs/{}", Digest::sha256(b"none"));
    for _ in 0..20 {
        assert_eq!(
            call(&mirror, Method::GET, tag).status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&mirror, Method::HEAD, tag).status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&mirror, Method::GET, &blob).status,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(s.fetch.seen(&Method::GET, "/manifests/nope"), 1);
    assert_eq!(s.fetch.seen(&Method::HEAD, "/manifests/nope"), 0);
    assert_eq!(s.fetch.seen(&Method::GET, "/blobs/"), 1);
    // Pushed upstream meanwhile: seen once the 404 has expired.
    push_image(&s.upstream, "neg/app", "nope", &[data(1000, 81)]);
    assert_eq!(
        call(&mirror, Method::GET, tag).status,
        StatusCode::NOT_FOUND
    );
    at(&mirror, 1_010_001);
    assert_eq!(call(&mirror, Method::GET, tag).status, StatusCode::OK);
    assert_eq!(s.fetch.seen(&Method::GET, "/manifests/nope"), 2);
    // Another repository's 404 is its own.
    let r = call(
        &mirror,
        Method::GET,
        "/v2/up.local/neg/other/manifests/nope",
    );
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(s.fetch.seen(&Method::GET, "/neg/other/manifests/nope"), 1);
}

#[test]
fn upstream_faults_are_502s_that_name_no_internal_address() {
    let s = setup(60_000);
    push_image(&s.upstream, "bad/app", "v1", &[data(1000, 82)]);
    let oci = || {
        vec![(
            "content-type",
            "application/vnd.oci.image.manifest.v1+json".to_owned(),
        )]
    };
    // Over the 4 MiB limit.
    let big = Bytes::from(vec![b' '; 5 * 1024 * 1024]);
    s.fetch.rule(
        Some(Method::GET),
        "/manifests/big",
        Answer::Body(200, oci(), big),
    );
    // Cut short: the JSON ends mid-way.
    let cut = Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.ima"#);
    s.fetch.rule(
        Some(Method::GET),
        "/manifests/cut",
        Answer::Body(200, oci(), cut),
    );
    for tag in ["big", "cut"] {
        let r = call(
            &s.mirror,
            Method::GET,
            &format!("/v2/up.local/bad/app/manifests/{tag}"),
        );
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{tag}: {:?}", r.body);
        let text = String::from_utf8_lossy(r.bytes()).to_string();
        assert!(text.contains("UNAVAILABLE"), "{tag}: {text}");
    }
    // An unreachable upstream: the address stays in the log, not the body.
    s.fetch.rule(
        None,
        "/manifests/gone",
        Answer::Fail("connect to http://10.9.8.7:5000/v2/bad/app/manifests/gone refused".into()),
    );
    let r = call(
        &s.mirror,
        Method::GET,
        "/v2/up.local/bad/app/manifests/gone",
    );
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(r.bytes()).to_string();
    assert!(!text.contains("10.9.8.7"), "{text}");
    assert!(!text.contains("upstream.invalid"), "{text}");
}

#[test]
fn a_hung_upstream_delays_a_stale_tag_boundedly_and_once() {
    let s = Arc::new(setup(0));
    push_image(&s.upstream, "app", "v1", &[data(1000, 83)]);
    let uri = "/v2/up.local/app/manifests/v1";
    assert_eq!(call(&s.mirror, Method::GET, uri).status, StatusCode::OK);
    // The upstream accepts the connection and never answers.
    let (open, held) = gate();
    s.fetch
        .rule(Some(Method::HEAD), "/manifests/v1", Answer::Hold(held));
    let started = std::time::Instant::now();
    let r = within(30, {
        let s = s.clone();
        move || call(&s.mirror, Method::GET, uri)
    });
    assert_eq!(
        (r.status, r.header("x-kura-cache")),
        (StatusCode::OK, "stale")
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "stale after {:?}",
        started.elapsed()
    );
    // Known down now: the next request is answered at once, without asking.
    let heads = s.fetch.seen(&Method::HEAD, "/manifests/v1");
    let started = std::time::Instant::now();
    let r = within(30, {
        let s = s.clone();
        move || call(&s.mirror, Method::GET, uri)
    });
    assert_eq!(r.header("x-kura-cache"), "stale");
    assert!(started.elapsed() < std::time::Duration::from_millis(900));
    assert_eq!(s.fetch.seen(&Method::HEAD, "/manifests/v1"), heads);
    // After the window the upstream is asked again.
    drop(open);
    s.fetch.clear_rules();
    at(&s.mirror, 1_000_000 + kura_core::config::DOWN_WINDOW_MS + 1);
    let r = call(&s.mirror, Method::GET, uri);
    assert_eq!(r.header("x-kura-cache"), "revalidated");
}

#[test]
fn a_pause_asked_by_the_upstream_holds_for_all_its_requests() {
    let s = setup(0);
    let (_, digests) = push_image(&s.upstream, "app", "v1", &[data(1000, 84)]);
    let uri = "/v2/up.local/app/manifests/v1";
    assert_eq!(call(&s.mirror, Method::GET, uri).status, StatusCode::OK);
    let asked_before = s.fetch.log.lock().unwrap().len();
    s.fetch.rule(
        None,
        "/v2/app/",
        Answer::Status(429, vec![("retry-after", "30".into())]),
    );
    let started = std::time::Instant::now();
    // A cached tag: served stale.
    let r = call(&s.mirror, Method::GET, uri);
    assert_eq!(
        (r.status, r.header("x-kura-cache")),
        (StatusCode::OK, "stale")
    );
    // Nothing cached: 503, and the pause passed on.
    for cold in [
        "/v2/up.local/app/manifests/v2".to_owned(),
        format!("/v2/up.local/app/blobs/{}", digests[1]),
    ] {
        let r = call(&s.mirror, Method::GET, &cold);
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{cold}");
        let wait: u64 = r.header("retry-after").parse().unwrap_or(0);
        assert!((1..=30).contains(&wait), "{cold}: Retry-After {wait}");
    }
    // One 429 was enough: nobody asked again, and nobody waited.
    assert_eq!(s.fetch.log.lock().unwrap().len(), asked_before + 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // The pause over, the upstream is asked again.
    s.fetch.clear_rules();
    at(&s.mirror, 1_031_000);
    assert_eq!(
        call(&s.mirror, Method::GET, uri).header("x-kura-cache"),
        "revalidated"
    );
}

// ----- several processes on one storage ----------------------------------------

/// What a process killed while filling `d` for `repo` left: its lease,
/// renewed at `now`, and a spool of 4096 zero bytes (the wrong bytes).
fn left_by_a_dead_holder(
    storage: &MemoryStorage,
    repo: &str,
    d: &Digest,
    size: usize,
    started: bool,
    now: u64,
) {
    let dead = "0123456789abcdef0123456789abcdef";
    let lease =
        format!(r#"{{"spool":"{dead}","started":{started},"size":{size},"renewed_ms":{now}}}"#);
    block_on(storage.put(&fill_lease_key(repo, d), lease.into(), PutMode::Create)).unwrap();
    let chunk = format!("uploads/{dead}/chunk-{:020}-x", 0);
    block_on(storage.put(&chunk, Bytes::from(vec![0u8; 4096]), PutMode::Create)).unwrap();
}

/// What another process's fill of `d` for `repo` does at its end: store
/// and link the blob, then delete its `lease`.
async fn committed_elsewhere<S: Storage>(
    storage: &S,
    repo: &str,
    d: &Digest,
    blob: &[u8],
    lease: &str,
) {
    let name = kura_core::RepositoryName::parse(repo).unwrap();
    let bytes = Bytes::copy_from_slice(blob);
    let link = layer_link_key(&name, d);
    storage
        .put(&blob_key(d), bytes, PutMode::Overwrite)
        .await
        .unwrap();
    storage
        .put(&link, Bytes::new(), PutMode::Overwrite)
        .await
        .unwrap();
    storage.delete(lease).await.unwrap();
}

fn fill_lease_key(repo: &str, d: &Digest) -> String {
    format!("repositories/{repo}/_fills/sha256/{}", d.hex())
}

fn metric(reg: &Registry<Arc<MemoryStorage>, TestHost, LocalFetch>, name: &str) -> u64 {
    reg.metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Two mirrors on one storage (two processes on one bucket) miss the same
/// blob at once: one asks the upstream, the other follows its spool, and
/// both serve the whole blob.
#[test]
fn two_processes_on_one_storage_fetch_a_blob_once() {
    let s = setup(60_000);
    let layer = data(3 * 1024 * 1024 + 5, 80);
    let (_, d) = push_image(&s.upstream, "fleet/one", "v1", std::slice::from_ref(&layer));
    let storage = Arc::new(MemoryStorage::new());
    let a = mirror_on(&s, storage.clone(), 1_000_000);
    let b = mirror_on_host(&s, storage.clone(), TestHost::at(1_000_000).seeded(2));
    let (open, held) = gate();
    s.fetch.rule(
        Some(Method::GET),
        &format!("/v2/fleet/one/blobs/{}", d[1]),
        Answer::Hold(held),
    );
    let uri = format!("/v2/up.local/fleet/one/blobs/{}", d[1]);
    let (ra, rb) = block_on(async {
        let mut ga = Box::pin(get_async(&a, &uri));
        assert!(futures::poll!(ga.as_mut()).is_pending());
        // A's fill holds the lease before B asks.
        let lease = fill_lease_key("up.local/fleet/one", &d[1]);
        for _ in 0..500 {
            if storage.head(&lease).await.unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(storage.head(&lease).await.unwrap().is_some(), "no lease");
        let mut gb = Box::pin(get_async(&b, &uri));
        assert!(futures::poll!(gb.as_mut()).is_pending());
        // B's fill (on a thread of its own) finds A's lease and follows.
        for _ in 0..1000 {
            if metric(&b, "kura_fills_followed_elsewhere_total") == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        drop(open);
        futures::join!(ga, gb)
    });
    for (who, r) in [("a", &ra), ("b", &rb)] {
        assert_eq!(r.status, StatusCode::OK, "{who}");
        assert!(r.bytes() == layer.as_slice(), "{who}: wrong bytes");
        assert_eq!(r.header("x-kura-cache"), "miss", "{who}");
    }
    assert_eq!(s.fetch.blob_gets.load(Ordering::SeqCst), 1);
    assert_eq!(metric(&b, "kura_fills_followed_elsewhere_total"), 1);
    assert_eq!(metric(&a, "kura_fills_followed_elsewhere_total"), 0);
    // The lease is gone with the fill; both serve the blob as a hit.
    let lease = fill_lease_key("up.local/fleet/one", &d[1]);
    let mut gone = false;
    for _ in 0..500 {
        if block_on(storage.head(&lease)).unwrap().is_none() {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(gone, "the lease outlived its fill");
    assert_eq!(call(&b, Method::GET, &uri).header("x-kura-cache"), "hit");
}

/// A lease that nobody renews (its holder was killed) is taken over once
/// it has not changed for its lifetime on the follower's clock, and not
/// before; what the dead holder spooled is never served as the blob.
#[test]
fn a_fill_whose_holder_died_is_taken_over_after_the_lease_lifetime() {
    let s = setup(60_000);
    let layer = data(2 * 1024 * 1024 + 1, 81);
    let (_, d) = push_image(&s.upstream, "fleet/two", "v1", std::slice::from_ref(&layer));
    let storage = Arc::new(MemoryStorage::new());
    let now = 5_000_000;
    // What a killed process left: its lease, renewed "just now", and a
    // spool holding wrong bytes.
    left_by_a_dead_holder(
        &storage,
        "up.local/fleet/two",
        &d[1],
        layer.len(),
        false,
        now,
    );
    let b = mirror_on(&s, storage.clone(), now);
    let uri = format!("/v2/up.local/fleet/two/blobs/{}", d[1]);
    let r = block_on(async {
        let mut g = Box::pin(get_async(&b, &uri));
        assert!(futures::poll!(g.as_mut()).is_pending());
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            s.fetch.blob_gets.load(Ordering::SeqCst),
            0,
            "took a live lease over"
        );
        at(&b, now + 20_001);
        g.await
    });
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.bytes() == layer.as_slice(),
        "wrong bytes after the takeover"
    );
    assert_eq!(s.fetch.blob_gets.load(Ordering::SeqCst), 1);
    assert_eq!(metric(&b, "kura_fills_taken_over_total"), 1);
    assert!(block_on(storage.head(&blob_key(&d[1]))).unwrap().is_some());
}

/// Processes on one storage ask the upstream about a tag once per TTL
/// between them: one finds the check another made in storage, and one
/// that expires while another is checking waits for that answer.
#[test]
fn two_processes_on_one_storage_check_a_tag_once_per_ttl() {
    let s = setup(60_000);
    let (digest, _) = push_image(&s.upstream, "fleet/tag", "v1", &[data(1000, 82)]);
    let storage = Arc::new(MemoryStorage::new());
    let a = mirror_on(&s, storage.clone(), 1_000_000);
    let b = mirror_on_host(&s, storage.clone(), TestHost::at(1_000_000).seeded(3));
    let uri = "/v2/up.local/fleet/tag/manifests/v1";
    let heads = || s.fetch.seen(&Method::HEAD, "/manifests/v1");
    assert_eq!(call(&a, Method::GET, uri).header("x-kura-cache"), "miss");
    assert_eq!(call(&b, Method::GET, uri).header("x-kura-cache"), "hit");
    assert_eq!(s.fetch.seen(&Method::GET, "/manifests/v1"), 1);

    // Past the TTL: A checks, B finds A's check in storage.
    at(&a, 1_061_000);
    at(&b, 1_061_000);
    assert_eq!(
        call(&a, Method::GET, uri).header("x-kura-cache"),
        "revalidated"
    );
    let r = call(&b, Method::GET, uri);
    assert_eq!(r.header("x-kura-cache"), "hit");
    assert_eq!(r.header("docker-content-digest"), digest.to_string());
    assert_eq!(heads(), 1, "B asked the upstream again");

    // Past it again, both at once: B waits for A's check (its host's
    // short sleeps yield, so both run on this one thread).
    b.host().isolated.store(true, Ordering::SeqCst);
    at(&a, 1_122_000);
    at(&b, 1_122_000);
    let (open, held) = gate();
    s.fetch
        .rule(Some(Method::HEAD), "/manifests/v1", Answer::Hold(held));
    let (ra, rb) = block_on(async {
        let mut ga = Box::pin(get_async(&a, uri));
        assert!(futures::poll!(ga.as_mut()).is_pending());
        let mut gb = Box::pin(get_async(&b, uri));
        assert!(futures::poll!(gb.as_mut()).is_pending());
        drop(open);
        futures::join!(ga, gb)
    });
    assert_eq!(ra.header("x-kura-cache"), "revalidated");
    assert_eq!(
        (rb.status, rb.header("x-kura-cache")),
        (StatusCode::OK, "hit")
    );
    assert_eq!(heads(), 2);
}

/// A process that found a tag's check due, but takes the check's lease
/// only after another process checked and released it, serves that check
/// instead of asking the upstream again.
#[test]
fn a_tag_check_finished_elsewhere_while_taking_the_lease_is_not_repeated() {
    let s = setup(60_000);
    let (digest, _) = push_image(&s.upstream, "fleet/late", "v1", &[data(1000, 87)]);
    let storage = Arc::new(MemoryStorage::new());
    let (open, gate) = gate();
    let held = Arc::new(Counting::gated_on(
        storage.clone(),
        gate,
        "/_cache/tag-checks/",
    ));
    let a = mirror_on(&s, storage.clone(), 1_000_000);
    let b = mirror_on_host(&s, held.clone(), TestHost::at(1_000_000).seeded(8));
    let uri = "/v2/up.local/fleet/late/manifests/v1";
    assert_eq!(call(&a, Method::GET, uri).header("x-kura-cache"), "miss");
    assert_eq!(call(&b, Method::GET, uri).header("x-kura-cache"), "hit");
    at(&a, 1_061_000);
    at(&b, 1_061_000);
    let heads = || s.fetch.seen(&Method::HEAD, "/manifests/v1");
    let (a, b) = (&a, &b);
    std::thread::scope(|scope| {
        // B finds the check due and goes for the lease: held at the gate.
        let late = scope.spawn(move || call(b, Method::GET, uri));
        for _ in 0..1000 {
            if held.gated.load(Ordering::SeqCst) > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(
            held.gated.load(Ordering::SeqCst),
            1,
            "B never went for the lease"
        );
        // Meanwhile A checks, records the check and releases its lease.
        assert_eq!(
            call(a, Method::GET, uri).header("x-kura-cache"),
            "revalidated"
        );
        assert_eq!(heads(), 1);
        drop(open);
        let r = late.join().unwrap();
        assert_eq!(
            (r.status, r.header("x-kura-cache")),
            (StatusCode::OK, "hit")
        );
        assert_eq!(r.header("docker-content-digest"), digest.to_string());
    });
    assert_eq!(heads(), 1, "B asked the upstream again");
}

/// Eviction on one process goes by uses seen on every process sharing the
/// storage, and only one process evicts at a time.
#[test]
fn eviction_keeps_a_blob_another_process_used_last() {
    let s = setup(60_000);
    let layers: Vec<Vec<u8>> = (0..2).map(|i| data(100_000, 90 + i)).collect();
    let (_, digests) = push_image(&s.upstream, "lru2", "v1", &layers);
    let (old, new) = (&digests[1], &digests[2]);
    let storage = Arc::new(MemoryStorage::new());
    let a = mirror_on(&s, storage.clone(), 2_000_000);
    let b = mirror_on_host(&s, storage.clone(), TestHost::at(2_000_000).seeded(4));
    let blob_url = |d: &Digest| format!("/v2/up.local/lru2/blobs/{d}");
    assert_eq!(call(&a, Method::GET, &blob_url(old)).status, StatusCode::OK);
    // A uses it again: now A's own memory has a time for it.
    at(&a, 2_000_500);
    assert_eq!(
        call(&a, Method::GET, &blob_url(old)).header("x-kura-cache"),
        "hit"
    );
    at(&a, 2_001_000);
    assert_eq!(call(&a, Method::GET, &blob_url(new)).status, StatusCode::OK);
    // B pulls the blob A used first, after A's last use of either.
    at(&b, 2_002_000);
    assert_eq!(
        call(&b, Method::GET, &blob_url(old)).header("x-kura-cache"),
        "hit"
    );

    // While another process holds the evictor lease, A does nothing.
    let lease = "leases/evictor";
    block_on(storage.put(lease, Bytes::from("someone 2001500"), PutMode::Create)).unwrap();
    at(&a, 2_003_000);
    let report = block_on(a.evict(100_000, 0)).unwrap();
    assert!(report.skipped && report.evicted_blobs == 0, "{report:?}");
    block_on(storage.delete(lease)).unwrap();

    let report = block_on(a.evict(100_000, 0)).unwrap();
    assert_eq!(report.evicted_blobs, 1, "{report:?}");
    let stored = |d: &Digest| block_on(storage.head(&blob_key(d))).unwrap().is_some();
    assert!(stored(old), "evicted the blob another process used last");
    assert!(!stored(new));
    assert!(
        block_on(storage.head(lease)).unwrap().is_none(),
        "lease kept"
    );
}

/// A process that finds another's lease and then the blob committed before
/// it saw a byte of the fill serves the stored blob whole.
#[test]
fn a_fill_committed_elsewhere_before_a_byte_was_seen_is_served_whole() {
    let s = setup(60_000);
    let layer = data(500_000, 83);
    let (_, d) = push_image(
        &s.upstream,
        "fleet/three",
        "v1",
        std::slice::from_ref(&layer),
    );
    let storage = Arc::new(MemoryStorage::new());
    let now = 7_000_000;
    let lease = fill_lease_key("up.local/fleet/three", &d[1]);
    block_on(storage.put(
        &lease,
        format!(r#"{{"spool":"0123456789abcdef0123456789abcdee","renewed_ms":{now}}}"#).into(),
        PutMode::Create,
    ))
    .unwrap();
    let b = mirror_on_host(&s, storage.clone(), TestHost::at(now).seeded(5));
    let uri = format!("/v2/up.local/fleet/three/blobs/{}", d[1]);
    let r = block_on(async {
        let mut g = Box::pin(get_async(&b, &uri));
        assert!(futures::poll!(g.as_mut()).is_pending());
        // The other process commits and lets go.
        committed_elsewhere(&*storage, "up.local/fleet/three", &d[1], &layer, &lease).await;
        g.await
    });
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.bytes() == layer.as_slice(), "not the whole blob");
    assert_eq!(s.fetch.blob_gets.load(Ordering::SeqCst), 0);
}

/// Once the holder's bytes all hashed to the digest, a client in another
/// process gets the last one without waiting for the blob to be stored
/// (joining S3 parts into the blob takes as long as uploading it again).
#[test]
fn another_processes_client_gets_the_last_byte_once_verified_not_once_stored() {
    let s = setup(60_000);
    let layer = data(3 * 1024 * 1024 + 9, 84);
    let (_, d) = push_image(
        &s.upstream,
        "fleet/gate",
        "v1",
        std::slice::from_ref(&layer),
    );
    let (open, gate) = gate();
    let storage = Arc::new(Counting::gated(Arc::new(MemoryStorage::new()), gate));
    let registry = |host: TestHost| mirror_on_host(&s, storage.clone(), host);
    let a = registry(TestHost::at(1_000_000));
    let b = registry(TestHost::at(1_000_000).seeded(6));
    let uri = format!("/v2/up.local/fleet/gate/blobs/{}", d[1]);
    let lease = fill_lease_key("up.local/fleet/gate", &d[1]);
    let (tx, rx) = std::sync::mpsc::channel();
    let (a, b, uri) = (&a, &b, uri.as_str());
    std::thread::scope(|scope| {
        let holder = scope.spawn(move || call(a, Method::GET, uri));
        let mut held = false;
        for _ in 0..1000 {
            if block_on(storage.head(&lease)).unwrap().is_some() {
                held = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(held, "A took no lease");
        let tx = tx.clone();
        scope.spawn(move || {
            let _ = tx.send(call(b, Method::GET, uri));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("B's client waited for A's commit");
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.bytes() == layer.as_slice(), "wrong bytes");
        assert!(
            block_on(storage.head(&blob_key(&d[1]))).unwrap().is_none(),
            "stored already: the test proves nothing"
        );
        drop(open);
        let r = holder.join().unwrap();
        assert!(r.bytes() == layer.as_slice(), "A's client: wrong bytes");
    });
    assert!(block_on(storage.head(&blob_key(&d[1]))).unwrap().is_some());
    assert_eq!(s.fetch.blob_gets.load(Ordering::SeqCst), 1);
}

/// A client that read part of a fill whose holder then died gets an error,
/// not the rest from the process that takes the fill over: the bytes it has
/// were never verified, so they must not become part of a whole answer.
#[test]
fn a_reader_of_a_dead_holders_bytes_is_cut_off_at_the_takeover() {
    let s = setup(60_000);
    let layer = data(1024 * 1024 + 3, 85);
    let (_, d) = push_image(&s.upstream, "fleet/cut", "v1", std::slice::from_ref(&layer));
    let storage = Arc::new(MemoryStorage::new());
    let now = 9_000_000;
    left_by_a_dead_holder(
        &storage,
        "up.local/fleet/cut",
        &d[1],
        layer.len(),
        true,
        now,
    );
    let b = mirror_on_host(&s, storage.clone(), TestHost::at(now).seeded(7));
    let uri = format!("/v2/up.local/fleet/cut/blobs/{}", d[1]);
    let resp = block_on(async {
        let mut answer = Box::pin(b.handle(Request::get(&uri).body(body::empty()).unwrap()));
        // The holder is alive for a while (its spool grows: followers
        // serve it from then on), then dies.
        for i in 1..200u64 {
            if let std::task::Poll::Ready(resp) = futures::poll!(answer.as_mut()) {
                return resp;
            }
            let chunk = format!(
                "uploads/0123456789abcdef0123456789abcdef/chunk-{:020}-y",
                i * 4096
            );
            storage
                .put(&chunk, Bytes::from(vec![0u8; 4096]), PutMode::Create)
                .await
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("the follower never served the live holder's spool");
    });
    assert_eq!(resp.status(), StatusCode::OK);
    let (Body::Stream(mut stream) | Body::Relay(mut stream)) = resp.into_body() else {
        panic!("no body stream");
    };
    let first = block_on(stream.next()).unwrap().unwrap();
    assert!(first.iter().all(|b| *b == 0), "not the dead holder's bytes");
    at(&b, now + 20_001);
    let mut rest = Vec::new();
    let mut failed = false;
    while let Some(item) = block_on(stream.next()) {
        match item {
            Ok(chunk) => rest.extend_from_slice(&chunk),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(
        failed,
        "went on with the new holder's bytes after {} of the dead one's",
        first.len()
    );
}

/// Clients of a process following another's fill are served from one copy
/// in memory of what was spooled, not each with reads of their own from
/// storage (which, on S3, made the holder's commit queue behind them).
#[test]
fn a_followers_clients_share_one_read_of_the_spool() {
    const CLIENTS: usize = 6;
    let s = setup(60_000);
    let layer = data(3 * 1024 * 1024 + 11, 86);
    let (_, d) = push_image(
        &s.upstream,
        "fleet/share",
        "v1",
        std::slice::from_ref(&layer),
    );
    let (open, gate) = gate();
    let shared = Arc::new(Counting::gated(Arc::new(MemoryStorage::new()), gate));
    let counted = Arc::new(Counting::new(shared.clone()));
    let a = mirror_on_host(&s, shared.clone(), TestHost::at(1_000_000));
    let b = mirror_on_host(&s, counted.clone(), TestHost::at(1_000_000).seeded(7));
    let uri = format!("/v2/up.local/fleet/share/blobs/{}", d[1]);
    let lease = fill_lease_key("up.local/fleet/share", &d[1]);
    let (a, b, uri) = (&a, &b, uri.as_str());
    std::thread::scope(|scope| {
        let holder = scope.spawn(move || call(a, Method::GET, uri));
        let mut held = false;
        for _ in 0..1000 {
            if block_on(shared.head(&lease)).unwrap().is_some() {
                held = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(held, "A took no lease");
        // The commit is held: every byte B's clients get comes from the
        // spool (or from B's copy of it).
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| scope.spawn(move || call(b, Method::GET, uri)))
            .collect();
        for c in clients {
            let r = c.join().unwrap();
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.bytes() == layer.as_slice(), "wrong bytes");
        }
        assert!(
            block_on(shared.head(&blob_key(&d[1]))).unwrap().is_none(),
            "stored already: the test proves nothing"
        );
        drop(open);
        assert!(holder.join().unwrap().bytes() == layer.as_slice());
    });
    let reads = counted.spool_gets.load(Ordering::SeqCst);
    assert!(
        reads < CLIENTS,
        "{reads} reads of the spool for {CLIENTS} clients"
    );
    assert_eq!(s.fetch.blob_gets.load(Ordering::SeqCst), 1);
}

/// A registry whose storage nobody evicts from records nothing for
/// eviction (change records would pile up forever), and a pass run on it
/// anyway lists the whole cache every time.
#[test]
fn without_eviction_nothing_is_recorded_and_passes_list_everything() {
    let s = setup(60_000);
    let (_, d) = push_image(&s.upstream, "quiet", "v1", &[data(10_000, 90)]);
    let storage = Arc::new(MemoryStorage::new());
    let mut config = UpstreamConfig::new("up.local", "http://upstream.invalid");
    config.not_found_ttl_ms = 0;
    let mirror = Registry::builder(storage.clone(), TestHost::at(1_000_000))
        .mirror(LocalFetch(s.fetch.clone()), vec![config])
        .build()
        .unwrap();
    let url = format!("/v2/up.local/quiet/blobs/{}", d[1]);
    for _ in 0..2 {
        assert_eq!(call(&mirror, Method::GET, &url).status, StatusCode::OK);
    }
    let hosted = block_on(call_async(
        &mirror,
        Method::POST,
        &format!("/v2/mine/blobs/uploads/?digest={}", d[1]),
        data(10_000, 90).into(),
    ));
    assert_eq!(hosted.status, StatusCode::CREATED);
    let changes = block_on(storage.list("cache/")).unwrap();
    assert!(changes.is_empty(), "{changes:?}");
    for _ in 0..2 {
        let r = block_on(mirror.evict(u64::MAX, 0)).unwrap();
        assert!(r.full_listing, "{r:?}");
    }
}

/// A holder that stores the bytes itself (a Worker writing straight to R2)
/// says in its lease that it keeps no spool: a follower in another process
/// then watches only the lease and the blob, and never lists the upload
/// area (an R2 list is a costly operation). A holder that spools is read
/// from its spool.
#[test]
fn a_follower_lists_the_holders_spool_only_if_the_holder_spools() {
    for spools in [false, true] {
        let s = setup(60_000);
        let repo = format!("fleet/spools{spools}");
        let layer = data(200_000, 85);
        let (_, d) = push_image(&s.upstream, &repo, "v1", std::slice::from_ref(&layer));
        let storage = Arc::new(Counting::new(Arc::new(MemoryStorage::new())));
        let now = 8_000_000;
        let spool = "0123456789abcdef0123456789abcdee";
        let lease = fill_lease_key(&format!("up.local/{repo}"), &d[1]);
        let record = format!(
            r#"{{"spool":"{spool}","started":true,"size":{},"spools":{spools},"renewed_ms":{now}}}"#,
            layer.len()
        );
        block_on(storage.put(&lease, record.into(), PutMode::Create)).unwrap();
        let b = mirror_on_host(&s, storage.clone(), TestHost::at(now).seeded(7));
        let uri = format!("/v2/up.local/{repo}/blobs/{}", d[1]);
        let before = storage.reads.load(Ordering::SeqCst);
        let r = block_on(async {
            let mut g = Box::pin(get_async(&b, &uri));
            // The watcher (a task of the host's, on a thread) looks several
            // times: the blob's link, the lease, (if it spools) the spool.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while storage.reads.load(Ordering::SeqCst) < before + 20 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the watcher never looked"
                );
                assert!(futures::poll!(g.as_mut()).is_pending());
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            // The holder commits and lets go.
            let local = format!("up.local/{repo}");
            committed_elsewhere(&*storage, &local, &d[1], &layer, &lease).await;
            g.await
        });
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.bytes() == layer.as_slice(), "not the whole blob");
        assert_eq!(s.fetch.blob_gets.load(Ordering::SeqCst), 0);
        let listed_spool = storage
            .listed
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.contains(spool));
        assert_eq!(
            listed_spool, spools,
            "the spool listed: {listed_spool}, the holder spools: {spools}"
        );
    }
}

/// A request that finds its claim's blob committed by another process
/// (between its miss and its lease) serves the stored blob, and so does a
/// request of this process that joined that claim meanwhile: it must not
/// wait for a first byte that no fill will send.
#[test]
fn a_request_joining_a_claim_that_finds_the_blob_stored_serves_it() {
    let s = setup(60_000);
    let layer = data(300_000, 86);
    let repo = "up.local/fleet/joined";
    let (_, d) = push_image(
        &s.upstream,
        "fleet/joined",
        "v1",
        std::slice::from_ref(&layer),
    );
    let (open, gate) = gate();
    // The lease put waits at the gate: the window in which the other
    // process commits, and the second request joins.
    let storage = Arc::new(Counting::gated_on(
        Arc::new(MemoryStorage::new()),
        gate,
        "/_fills/",
    ));
    let reg = mirror_on_host(&s, storage.clone(), TestHost::at(9_000_000));
    let uri = format!("/v2/{repo}/blobs/{}", d[1]);
    let lease = fill_lease_key(repo, &d[1]);
    let (a, b) = block_on(async {
        let mut a = Box::pin(get_async(&reg, &uri));
        assert!(futures::poll!(a.as_mut()).is_pending());
        assert_eq!(
            storage.gated.load(Ordering::SeqCst),
            1,
            "A waits on its lease put"
        );
        let mut b = Box::pin(get_async(&reg, &uri));
        assert!(futures::poll!(b.as_mut()).is_pending());
        let joins = reg.metrics().render();
        assert!(
            joins.contains("kura_singleflight_joins_total 1"),
            "B joined A's claim"
        );
        committed_elsewhere(&*storage, repo, &d[1], &layer, &lease).await;
        drop(open);
        let both = futures::future::join(a, b);
        futures::pin_mut!(both);
        // Polled again and again (the claim's wakeups are not what is
        // tested), for ten seconds at most.
        for _ in 0..10_000 {
            if let std::task::Poll::Ready(r) = futures::poll!(both.as_mut()) {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("a request never answered");
    });
    for r in [a, b] {
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.bytes() == layer.as_slice(), "not the whole blob");
    }
    assert_eq!(s.fetch.blob_gets.load(Ordering::SeqCst), 0);
}

/// A blob evicted between a request's look (it is stored) and its read is
/// a miss, filled again from the upstream, not a 404 for a blob the
/// upstream has. (The crash campaign's eviction passes found the 404.)
#[test]
fn a_blob_evicted_between_look_and_read_is_filled_again() {
    let s = setup(60_000);
    let layer = data(100_000, 77);
    let (_, digests) = push_image(&s.upstream, "team/app", "v1", std::slice::from_ref(&layer));
    let storage = Arc::new(Counting::new(Arc::new(MemoryStorage::new())));
    let reg = mirror_on_host(&s, storage.clone(), TestHost::at(1_000));
    let url = format!("/v2/up.local/team/app/blobs/{}", digests[1]);
    let r = call(&reg, Method::GET, &url);
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-kura-cache"), "miss");
    *storage.vanish_on_get.lock().unwrap() = Some(blob_key(&digests[1]));
    let r = call(&reg, Method::GET, &url);
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(r.bytes())
    );
    assert!(r.bytes() == layer.as_slice());
    assert!(
        storage.vanish_on_get.lock().unwrap().is_none(),
        "the read happened"
    );
    assert_eq!(s.fetch.blob_gets.load(Ordering::SeqCst), 2, "filled again");
}

/// `kura fsck` on a mirror: a mirrored manifest whose bytes are gone is
/// damage (manifests are never evicted), and repair removes the tag and
/// revision, so the next pull asks the upstream; a missing layer is only a
/// note. A tag healed between check and repair is left alone.
#[test]
fn fsck_repairs_a_mirrors_dangling_tag_and_the_next_pull_refetches() {
    use kura_core::fsck::{self, FsckOptions, Problem, Severity};
    let s = setup(0);
    let layer = data(5_000, 9);
    let (md, digests) = push_image(&s.upstream, "team/app", "v1", std::slice::from_ref(&layer));
    let r = call(&s.mirror, Method::GET, "/v2/up.local/team/app/manifests/v1");
    assert_eq!(r.status, StatusCode::OK);
    let manifest_bytes = r.bytes().to_vec();
    let r = call(
        &s.mirror,
        Method::GET,
        &format!("/v2/up.local/team/app/blobs/{}", digests[1]),
    );
    assert_eq!(r.status, StatusCode::OK);
    let storage = s.mirror.storage();
    block_on(storage.delete(&blob_key(&md))).unwrap();
    block_on(storage.delete(&blob_key(&digests[1]))).unwrap();

    let check = || {
        block_on(async {
            let inventory = s.mirror.fsck_inventory().await.unwrap();
            let mut verdicts = std::collections::HashMap::new();
            for (d, _) in inventory.blobs() {
                verdicts.insert(d.clone(), fsck::verify_blob(storage, d).await);
            }
            s.mirror.fsck_check(inventory, &verdicts).await.unwrap()
        })
    };
    let report = check();
    let damage: Vec<&Problem> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Damage)
        .map(|f| &f.problem)
        .collect();
    assert_eq!(damage.len(), 2, "{damage:#?}");
    assert!(damage
        .iter()
        .any(|p| matches!(p, Problem::DanglingTag { digest: Some(d), .. } if *d == md)));
    assert!(report.findings.iter().any(|f| f.severity == Severity::Note
        && matches!(&f.problem, Problem::DanglingLayerLink { digest, .. } if *digest == digests[1])));

    // Healed meanwhile (as a pull would): the repair leaves the tag.
    block_on(storage.put(
        &blob_key(&md),
        manifest_bytes.clone().into(),
        kura_core::storage::PutMode::Overwrite,
    ))
    .unwrap();
    let mut healed = report.clone();
    block_on(s.mirror.fsck_repair(&mut healed, &FsckOptions::default())).unwrap();
    assert_eq!(healed.repaired(), 0);

    // Gone again: repaired, and the next pull goes to the upstream.
    block_on(storage.delete(&blob_key(&md))).unwrap();
    let mut report = check();
    block_on(s.mirror.fsck_repair(&mut report, &FsckOptions::default())).unwrap();
    assert_eq!(report.repaired(), 2, "{:#?}", report.findings);
    assert_eq!(check().remaining(Severity::Damage), 0);
    let r = call(&s.mirror, Method::GET, "/v2/up.local/team/app/manifests/v1");
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(r.bytes())
    );
    assert_eq!(r.bytes(), manifest_bytes.as_slice());
    assert_eq!(check().remaining(Severity::Damage), 0);
}
