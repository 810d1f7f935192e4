//! The host-side blob fill API (`Registry::handle_edge` and friends): a mirrored blob that is
//! not stored comes back as a miss, the upstream answer is handed over
//! unread, and a committed blob is served as a hit from then on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
mod common;

use bytes::Bytes;
use common::TestHost;
use futures::executor::block_on;
use http::{Method, Request, StatusCode};
use kura_core::storage::{MemoryStorage, PutMode, Storage};
use kura_core::UpstreamConfig;
use kura_core::{body, Body, ByteStream, Digest, Registry, RegistryConfig};
use kura_core::{Edge, FillClaim};
use kura_core::{Fetch, FetchError};

type Upstream = Registry<MemoryStorage, TestHost>;

/// Fetch served by an in-process registry, counting requests by method.
struct LocalFetch {
    upstream: Arc<Upstream>,
    blob_gets: Arc<AtomicUsize>,
    blob_heads: Arc<AtomicUsize>,
}

#[async_trait]
impl Fetch for LocalFetch {
    type Body = ByteStream;

    async fn fetch(&self, req: Request<()>) -> Result<http::Response<ByteStream>, FetchError> {
        let path = req.uri().path_and_query().unwrap().as_str().to_owned();
        if path.contains("/blobs/") {
            match *req.method() {
                Method::GET => self.blob_gets.fetch_add(1, Ordering::SeqCst),
                _ => self.blob_heads.fetch_add(1, Ordering::SeqCst),
            };
        }
        let inner = Request::builder()
            .method(req.method())
            .uri(path)
            .body(body::empty())
            .unwrap();
        let (parts, b) = self.upstream.handle(inner).await.into_parts();
        let stream = match b {
            Body::Empty => body::empty(),
            Body::Full(b) => body::once(b),
            Body::Stream(s) | Body::Relay(s) => s,
        };
        Ok(http::Response::from_parts(parts, stream))
    }

    fn body_stream(body: ByteStream) -> ByteStream {
        body
    }
}

struct Setup {
    upstream: Arc<Upstream>,
    blob_gets: Arc<AtomicUsize>,
    blob_heads: Arc<AtomicUsize>,
    mirror: Registry<MemoryStorage, TestHost, LocalFetch>,
}

fn setup() -> Setup {
    let upstream = Arc::new(Registry::new(
        MemoryStorage::new(),
        TestHost::at(0),
        RegistryConfig::default(),
    ));
    let blob_gets = Arc::new(AtomicUsize::new(0));
    let blob_heads = Arc::new(AtomicUsize::new(0));
    let fetch = LocalFetch {
        upstream: upstream.clone(),
        blob_gets: blob_gets.clone(),
        blob_heads: blob_heads.clone(),
    };
    let mut config = UpstreamConfig::new("docker.io", "http://upstream.invalid");
    config.tag_ttl_ms = 60_000;
    config.max_stale_ms = 3_600_000;
    config.not_found_ttl_ms = 0;
    let mirror = Registry::builder(MemoryStorage::new(), TestHost::at(1_000_000))
        .mirror(fetch, vec![config])
        .default_upstream(Some("docker.io".into()))
        .build()
        .unwrap();
    Setup {
        upstream,
        blob_gets,
        blob_heads,
        mirror,
    }
}

/// Push a blob into the upstream's `library/alpine` (what Docker Hub calls
/// `alpine`).
fn push_blob(up: &Upstream, data: &'static [u8]) -> Digest {
    let d = Digest::sha256(data);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/v2/library/alpine/blobs/uploads/?digest={d}"))
        .body(body::once(Bytes::from_static(data)))
        .unwrap();
    let resp = block_on(up.handle(req));
    assert_eq!(resp.status(), StatusCode::CREATED);
    d
}

fn request(method: Method, uri: &str, range: Option<&str>) -> Request<ByteStream> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(r) = range {
        b = b.header("range", r);
    }
    b.body(body::empty()).unwrap()
}

async fn collect(b: Body<ByteStream>) -> Bytes {
    match b {
        Body::Empty => Bytes::new(),
        Body::Full(b) => b,
        Body::Stream(s) | Body::Relay(s) => body::collect_limited(s, usize::MAX).await.unwrap(),
    }
}

#[test]
fn a_blob_miss_is_handed_to_the_host_and_a_commit_makes_it_a_hit() {
    let s = setup();
    let data: &'static [u8] = b"layer bytes that the host moves itself";
    let d = push_blob(&s.upstream, data);
    let uri = format!("/v2/alpine/blobs/{d}");

    // A miss: nothing fetched yet, and the core knows where it goes.
    let Edge::BlobMiss(miss) = block_on(s.mirror.handle_edge(request(Method::GET, &uri, None)))
    else {
        panic!("expected a blob miss");
    };
    assert_eq!(miss.digest(), &d);
    assert!(!miss.is_head());
    assert_eq!(miss.repository().as_str(), "docker.io/library/alpine");
    assert_eq!(miss.upstream_repository().as_str(), "alpine");
    assert_eq!(s.blob_gets.load(Ordering::SeqCst), 0);

    // The upstream answer comes back unread (library/ added by the core).
    let up = block_on(s.mirror.fetch_blob(&miss)).unwrap();
    assert_eq!(s.blob_gets.load(Ordering::SeqCst), 1);
    let size = up
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(size, Some(data.len() as u64));

    // Committing before the bytes are stored is refused.
    assert!(block_on(s.mirror.commit_blob(&miss)).is_err());

    // The host streams the body to the client and stores it.
    let bytes = block_on(body::collect_limited(up.into_body(), usize::MAX)).unwrap();
    let resp = s
        .mirror
        .blob_miss_response(&miss, size, Body::<ByteStream>::Full(bytes.clone()));
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-kura-cache"], "miss");
    assert_eq!(
        resp.headers()["docker-content-digest"],
        d.to_string().as_str()
    );
    assert_eq!(
        resp.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert_eq!(resp.headers()["oci-namespace"], "docker.io");
    block_on(
        s.mirror
            .storage()
            .put(&miss.key(), bytes, PutMode::Overwrite),
    )
    .unwrap();
    block_on(s.mirror.commit_blob(&miss)).unwrap();

    // From now on: a hit, served from storage, under both spellings.
    for uri in [
        uri.clone(),
        format!("/v2/docker.io/library/alpine/blobs/{d}"),
    ] {
        let Edge::Response(resp) = block_on(s.mirror.handle_edge(request(Method::GET, &uri, None)))
        else {
            panic!("expected a hit for {uri}");
        };
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        assert_eq!(resp.headers()["x-kura-cache"], "hit");
        assert_eq!(block_on(collect(resp.into_body())), data);
    }
    let Edge::Response(resp) = block_on(s.mirror.handle_edge(request(
        Method::GET,
        &uri,
        Some("bytes=6-10"),
    ))) else {
        panic!("expected a ranged hit");
    };
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(block_on(collect(resp.into_body())), &data[6..11]);
    assert_eq!(s.blob_gets.load(Ordering::SeqCst), 1, "hits stay local");

    // Stored, but for another repository: the core asks the upstream
    // whether this one has it (it does not), no shortcut.
    let Edge::Response(resp) = block_on(s.mirror.handle_edge(request(
        Method::GET,
        &format!("/v2/other/blobs/{d}"),
        None,
    ))) else {
        panic!("a stored blob is never a miss");
    };
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.blob_heads.load(Ordering::SeqCst), 1);

    // The catalog lists the mirrored repository.
    let Edge::Response(resp) = block_on(s.mirror.handle_edge(request(
        Method::GET,
        "/v2/_catalog",
        None,
    ))) else {
        panic!();
    };
    let body = block_on(collect(resp.into_body()));
    assert!(
        String::from_utf8_lossy(&body).contains("docker.io/library/alpine"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn head_misses_ask_the_upstream_with_head_and_unknown_blobs_are_404() {
    let s = setup();
    let d = push_blob(&s.upstream, b"head me");
    let Edge::BlobMiss(miss) = block_on(s.mirror.handle_edge(request(
        Method::HEAD,
        &format!("/v2/alpine/blobs/{d}"),
        Some("bytes=0-1"),
    ))) else {
        panic!("expected a miss");
    };
    assert!(miss.is_head());
    assert_eq!(miss.range(), Some("bytes=0-1"));
    let up = block_on(s.mirror.fetch_blob(&miss)).unwrap();
    assert_eq!(up.status(), StatusCode::OK);
    assert_eq!(
        (
            s.blob_heads.load(Ordering::SeqCst),
            s.blob_gets.load(Ordering::SeqCst)
        ),
        (1, 0)
    );
    let resp = s.mirror.blob_miss_response(
        &miss,
        Some(7),
        Body::<ByteStream>::Full(Bytes::from_static(b"ignored")),
    );
    assert!(matches!(resp.body(), Body::Empty));
    assert_eq!(resp.headers()["content-length"], "7");

    let unknown = Digest::sha256(b"not upstream");
    let Edge::BlobMiss(miss) = block_on(s.mirror.handle_edge(request(
        Method::GET,
        &format!("/v2/alpine/blobs/{unknown}"),
        None,
    ))) else {
        panic!("expected a miss");
    };
    let Err(e) = block_on(s.mirror.fetch_blob(&miss)) else {
        panic!("an unknown blob was found upstream");
    };
    assert_eq!(e.status, StatusCode::NOT_FOUND);
    assert_eq!(e.code.as_str(), "BLOB_UNKNOWN");
}

#[test]
fn only_mirrored_blob_reads_are_diverted() {
    let s = setup();
    let d = Digest::sha256(b"x");
    // Hosted names do not exist here (a default upstream takes every name),
    // but writes and non-blob routes are never diverted.
    for (m, uri) in [
        (Method::GET, "/v2/".to_owned()),
        (Method::DELETE, format!("/v2/alpine/blobs/{d}")),
        (Method::GET, "/v2/alpine/tags/list".to_owned()),
        (Method::GET, format!("/v2/alpine/blobs/{d}x")),
    ] {
        assert!(
            matches!(
                block_on(s.mirror.handle_edge(request(m.clone(), &uri, None))),
                Edge::Response(_)
            ),
            "{m} {uri}"
        );
    }
}

/// The miss for `d` in `library/alpine`, as `handle_edge` gives it.
fn miss(s: &Setup, d: &Digest) -> kura_core::BlobMiss<LocalFetch, TestHost> {
    match block_on(s.mirror.handle_edge(request(
        Method::GET,
        &format!("/v2/alpine/blobs/{d}"),
        None,
    ))) {
        Edge::BlobMiss(m) => m,
        Edge::Response(r) => panic!("not a miss: {}", r.status()),
    }
}

/// One request per (repository, digest) fills; the others wait for its
/// outcome on the host's timer, and learn a failure as theirs.
#[test]
fn a_host_driven_fill_has_one_leader_and_followers_learn_its_outcome() {
    let s = setup();
    s.mirror.host().isolated.store(true, Ordering::SeqCst);
    let d = push_blob(&s.upstream, b"lease me");
    let m = miss(&s, &d);
    let FillClaim::Lead(lease) = s.mirror.claim_fill(&m) else {
        panic!("the first claim must lead");
    };
    let FillClaim::Follow(f) = s.mirror.claim_fill(&m) else {
        panic!("a second claim must follow");
    };
    // The follower waits until the leader settles.
    let (followed, ()) = block_on(async {
        let mut follow = Box::pin(s.mirror.follow_fill(f));
        assert!(futures::poll!(follow.as_mut()).is_pending());
        let settle = async { lease.settle(Err("upstream broke".into())) };
        futures::join!(follow, settle)
    });
    let e = followed.expect_err("the leader's failure is the follower's");
    assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(e.message.contains("upstream broke"), "{}", e.message);
    // Settled: the next request leads a fresh fill.
    assert!(matches!(s.mirror.claim_fill(&m), FillClaim::Lead(_)));
}

/// A lease dropped unsettled (its request went away) fails the fill for
/// its followers at once; a filler that moves nothing for a minute is
/// taken over.
#[test]
fn an_abandoned_or_stalled_fill_does_not_strand_its_followers() {
    let s = setup();
    s.mirror.host().isolated.store(true, Ordering::SeqCst);
    let d = push_blob(&s.upstream, b"abandoned");
    let m = miss(&s, &d);
    let FillClaim::Lead(lease) = s.mirror.claim_fill(&m) else {
        panic!("lead");
    };
    let FillClaim::Follow(f) = s.mirror.claim_fill(&m) else {
        panic!("follow");
    };
    drop(lease);
    assert!(block_on(s.mirror.follow_fill(f)).is_err());

    let FillClaim::Lead(stalled) = s.mirror.claim_fill(&m) else {
        panic!("a fresh lead after the drop");
    };
    stalled.progress();
    let FillClaim::Follow(f) = s.mirror.claim_fill(&m) else {
        panic!("follow");
    };
    // A minute and a bit later by the host's clock, with no progress.
    let now = s.mirror.host().clock.load(Ordering::SeqCst);
    s.mirror.host().clock.store(now + 61_000, Ordering::SeqCst);
    assert!(
        block_on(s.mirror.follow_fill(f)).is_ok(),
        "a stalled fill is taken over: look again"
    );
    assert!(
        matches!(s.mirror.claim_fill(&m), FillClaim::Lead(_)),
        "the follower may lead now"
    );
    drop(stalled);
}
