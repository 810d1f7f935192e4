//! The pull-through cache over in-memory storage, with another in-process
//! registry as the upstream (the end-to-end tests against distribution are
//! in tests/tests/mirror.rs).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
mod common;

use bytes::Bytes;
use common::TestHost;
use futures::executor::block_on;
use futures::StreamExt;
use http::{Method, Request, StatusCode};
use kura_core::fetch::{Fetch, FetchError};
use kura_core::storage::{MemoryStorage, Storage};
use kura_core::upstream::UpstreamConfig;
use kura_core::{body, Body, ByteStream, Digest, Host, Registry, RegistryConfig};
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
    });
    let config = UpstreamConfig {
        name: "up.local".into(),
        url: "http://upstream.invalid".into(),
        username: None,
        password: None,
        tag_ttl_ms,
        max_stale_ms: 3_600_000,
        token_realms: Vec::new(),
    };
    let host = TestHost::at(1_000_000);
    let mirror = Registry::with_upstreams(
        MemoryStorage::new(),
        host,
        RegistryConfig::default(),
        LocalFetch(fetch.clone()),
        vec![config],
        None,
    )
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
    let config = UpstreamConfig {
        name: "up.local".into(),
        url: "http://upstream.invalid".into(),
        username: None,
        password: None,
        tag_ttl_ms: 60_000,
        max_stale_ms: 3_600_000,
        token_realms: Vec::new(),
    };
    Registry::with_upstreams(
        storage,
        TestHost::at(now_ms),
        RegistryConfig::default(),
        LocalFetch(s.fetch.clone()),
        vec![config],
        None,
    )
    .unwrap()
}

fn at<S: Storage, F: Fetch>(reg: &Registry<S, TestHost, F>, now_ms: u64) {
    reg.host().clock.store(now_ms, Ordering::SeqCst);
}

/// Layer digests sorted by their storage key (the order a listing gives).
fn in_key_order(mut digests: Vec<Digest>) -> Vec<Digest> {
    digests.sort_by_key(|d| kura_core::layout::blob(d));
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
    let stored = |d: &Digest| {
        block_on(storage.head(&kura_core::layout::blob(d)))
            .unwrap()
            .is_some()
    };
    assert!(!stored(victim), "the least recently used blob must go");
    assert!(stored(a) && stored(b), "recently used blobs must stay");
    assert_eq!(
        call(&second, Method::HEAD, &blob_url(a)).header("x-kura-cache"),
        "hit"
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
    let ((kept, kept_repo), (victim, victim_repo)) =
        if kura_core::layout::blob(&d1[1]) < kura_core::layout::blob(&d2[1]) {
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
