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
use kura_core::{Edge, FillClaim, Followed};
use kura_core::{Fetch, FetchError, Host};

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
    assert_eq!(fills_in_flight(&s), 0);
    let FillClaim::Lead(lease) = block_on(s.mirror.claim_fill(&m)) else {
        panic!("the first claim must lead");
    };
    let FillClaim::Follow(f) = block_on(s.mirror.claim_fill(&m)) else {
        panic!("a second claim must follow");
    };
    // One fill, however many wait for it (the operator's gauge).
    assert_eq!(fills_in_flight(&s), 1);
    // The follower waits until the leader settles.
    let (followed, ()) = block_on(async {
        let mut follow = Box::pin(s.mirror.follow_fill(f));
        assert!(futures::poll!(follow.as_mut()).is_pending());
        let settle = lease.settle(Err("upstream broke".into()));
        futures::join!(follow, settle)
    });
    let e = followed.expect_err("the leader's failure is the follower's");
    assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(e.message.contains("upstream broke"), "{}", e.message);
    assert_eq!(fills_in_flight(&s), 0);
    // Settled: the next request leads a fresh fill.
    assert!(matches!(
        block_on(s.mirror.claim_fill(&m)),
        FillClaim::Lead(_)
    ));
}

/// `kura_fills_in_flight` as the registry's metrics show it now.
fn fills_in_flight(s: &Setup) -> u64 {
    s.mirror
        .metrics()
        .samples()
        .into_iter()
        .find(|x| x.name == "kura_fills_in_flight")
        .expect("the gauge is always there")
        .value
}

/// Waits (real time, bounded) until no fill lease is left in `storage`: a
/// lease dropped unsettled is deleted on a host task.
fn no_fill_lease_left<S: Storage>(storage: &S) -> bool {
    for _ in 0..500 {
        let keys = block_on(storage.list("repositories/")).unwrap();
        if !keys.iter().any(|k| k.contains("/_fills/")) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
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
    let FillClaim::Lead(lease) = block_on(s.mirror.claim_fill(&m)) else {
        panic!("lead");
    };
    let FillClaim::Follow(f) = block_on(s.mirror.claim_fill(&m)) else {
        panic!("follow");
    };
    drop(lease);
    assert!(block_on(s.mirror.follow_fill(f)).is_err());
    assert!(
        no_fill_lease_left(s.mirror.storage()),
        "the dropped lease's storage lease is released"
    );

    let FillClaim::Lead(stalled) = block_on(s.mirror.claim_fill(&m)) else {
        panic!("a fresh lead after the drop");
    };
    stalled.progress();
    let FillClaim::Follow(f) = block_on(s.mirror.claim_fill(&m)) else {
        panic!("follow");
    };
    // A minute and a bit later by the host's clock, with no progress.
    let now = s.mirror.host().clock.load(Ordering::SeqCst);
    s.mirror.host().clock.store(now + 61_000, Ordering::SeqCst);
    assert!(
        block_on(s.mirror.follow_fill(f)).is_ok(),
        "a stalled fill is taken over: look again"
    );
    // Its lease in storage, never renewed (it did not fill inside `hold`),
    // is watched for a lifetime from now, then taken over too.
    let FillClaim::Follow(f) = block_on(s.mirror.claim_fill(&m)) else {
        panic!("the stalled request's storage lease is still there");
    };
    s.mirror
        .host()
        .clock
        .store(now + 61_000 + 20_000, Ordering::SeqCst);
    let followed = block_on(s.mirror.follow_fill(f));
    assert!(
        matches!(followed, Ok(Followed::Lead(_))),
        "the follower took the lease over and fills now: {followed:?}"
    );
    drop(stalled);
}

type Isolate = Registry<Arc<MemoryStorage>, TestHost, LocalFetch>;

/// Another isolate (or process) of the mirror on `storage`: its own memory,
/// its own host (clock at 1,000,000 ms, random bytes of its own), the same
/// upstream. Its fill leases last `lease_ms` unrenewed.
fn isolate(s: &Setup, storage: Arc<MemoryStorage>, seed: u64, lease_ms: u64) -> Isolate {
    let fetch = LocalFetch {
        upstream: s.upstream.clone(),
        blob_gets: s.blob_gets.clone(),
        blob_heads: s.blob_heads.clone(),
    };
    let mut config = UpstreamConfig::new("docker.io", "http://upstream.invalid");
    config.not_found_ttl_ms = 0;
    let mut registry = RegistryConfig::default();
    registry.fill_lease_ms = lease_ms;
    let host = TestHost::at(1_000_000).seeded(seed);
    host.isolated.store(true, Ordering::SeqCst);
    Registry::builder(storage, host)
        .config(registry)
        .mirror(fetch, vec![config])
        .default_upstream(Some("docker.io".into()))
        .build()
        .unwrap()
}

/// An upstream and two isolates of the mirror on one storage.
fn two_isolates(lease_ms: u64) -> (Setup, Arc<MemoryStorage>, Isolate, Isolate) {
    let s = setup();
    let storage = Arc::new(MemoryStorage::new());
    let a = isolate(&s, storage.clone(), 1, lease_ms);
    let b = isolate(&s, storage.clone(), 2, lease_ms);
    (s, storage, a, b)
}

fn miss_on(r: &Isolate, d: &Digest) -> kura_core::BlobMiss<LocalFetch, TestHost> {
    match block_on(r.handle_edge(request(Method::GET, &format!("/v2/alpine/blobs/{d}"), None))) {
        Edge::BlobMiss(m) => m,
        Edge::Response(r) => panic!("not a miss: {}", r.status()),
    }
}

/// What a Worker does with a miss it leads: fetch, store, commit.
async fn fill(r: &Isolate, miss: &kura_core::BlobMiss<LocalFetch, TestHost>) -> Result<(), String> {
    let up = r.fetch_blob(miss).await.map_err(|e| e.message)?;
    let bytes = collect(Body::Stream(up.into_body())).await;
    r.storage()
        .put(&miss.key(), bytes, PutMode::Overwrite)
        .await
        .map_err(|e| e.to_string())?;
    r.commit_blob(miss).await.map_err(|e| e.message)
}

fn metric(r: &Isolate, name: &str) -> u64 {
    r.metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Two isolates on one bucket miss the same blob: the second finds the
/// first's lease in storage, waits for its fill, and then serves the
/// stored blob. One upstream GET between them; the lease is gone after.
#[test]
fn two_isolates_on_one_storage_fill_a_blob_once() {
    let (s, storage, a, b) = two_isolates(20_000);
    let data: &'static [u8] = b"one fill for two isolates";
    let d = push_blob(&s.upstream, data);
    let (ma, mb) = (miss_on(&a, &d), miss_on(&b, &d));
    let FillClaim::Lead(lease) = block_on(a.claim_fill(&ma)) else {
        panic!("the first isolate leads");
    };
    let FillClaim::Follow(f) = block_on(b.claim_fill(&mb)) else {
        panic!("the second isolate must follow the lease it finds");
    };
    assert_eq!(metric(&b, "kura_fills_followed_elsewhere_total"), 1);
    let (followed, ()) = block_on(async {
        let mut follow = Box::pin(b.follow_fill(f));
        assert!(futures::poll!(follow.as_mut()).is_pending());
        let lead = async {
            let r = lease.hold(fill(&a, &ma)).await;
            lease.settle(r).await;
        };
        futures::join!(follow, lead)
    });
    followed.expect("the fill elsewhere succeeded: look again");
    let Edge::Response(resp) =
        block_on(b.handle_edge(request(Method::GET, &format!("/v2/alpine/blobs/{d}"), None)))
    else {
        panic!("the blob is stored now");
    };
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        block_on(collect(resp.into_body())),
        Bytes::from_static(data)
    );
    assert_eq!(s.blob_gets.load(Ordering::SeqCst), 1, "one upstream GET");
    assert!(no_fill_lease_left(&*storage));
}

/// An isolate that dies mid-fill (its lease neither renewed nor released)
/// holds the others up for the lease's lifetime, on their own clock; then
/// one of them takes the fill over.
#[test]
fn a_dead_isolates_fill_is_taken_over_after_its_lease_lifetime() {
    let (s, storage, a, b) = two_isolates(20_000);
    let d = push_blob(&s.upstream, b"orphaned fill");
    let FillClaim::Lead(lease) = block_on(a.claim_fill(&miss_on(&a, &d))) else {
        panic!("lead");
    };
    // Killed: no drop, no release.
    std::mem::forget(lease);
    let mb = miss_on(&b, &d);
    let FillClaim::Follow(f) = block_on(b.claim_fill(&mb)) else {
        panic!("follow the lease");
    };
    let mut follow = Box::pin(b.follow_fill(f));
    // Short of the lifetime, it waits.
    b.host().clock.store(1_000_000 + 19_000, Ordering::SeqCst);
    for _ in 0..20 {
        assert!(block_on(async { futures::poll!(follow.as_mut()) }).is_pending());
    }
    b.host().clock.store(1_000_000 + 20_000, Ordering::SeqCst);
    // Bounded, so that a follower that never takes over fails the test
    // instead of hanging it.
    let (ring, deadline) = futures::channel::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(10));
        let _ = ring.send(());
    });
    let followed = match block_on(futures::future::select(follow, deadline)) {
        futures::future::Either::Left((r, _)) => r.expect("taken over, not failed"),
        futures::future::Either::Right(_) => panic!("not taken over at the lease's lifetime"),
    };
    assert_eq!(metric(&b, "kura_fills_taken_over_total"), 1);
    let Followed::Lead(lease) = followed else {
        panic!("the survivor leads now, with the lease it took: {followed:?}");
    };
    let r = block_on(lease.hold(fill(&b, &mb)));
    block_on(lease.settle(r));
    assert_eq!(s.blob_gets.load(Ordering::SeqCst), 1);
    assert!(no_fill_lease_left(&*storage));
}

/// A fill that outlasts its lease's lifetime is not taken over while its
/// holder renews the lease (`FillLease::hold`): the follower waits for the
/// blob, and the upstream is asked once.
#[test]
fn a_long_fill_inside_hold_keeps_its_lease() {
    let (s, storage, a, b) = two_isolates(2_000);
    let d = push_blob(&s.upstream, b"a slow upstream");
    let (ma, mb) = (miss_on(&a, &d), miss_on(&b, &d));
    let FillClaim::Lead(lease) = block_on(a.claim_fill(&ma)) else {
        panic!("lead");
    };
    let FillClaim::Follow(f) = block_on(b.claim_fill(&mb)) else {
        panic!("follow");
    };
    let (followed, ()) = block_on(async {
        let follow = b.follow_fill(f);
        let lead = async {
            let slow = async {
                // Five lifetimes pass on both clocks before the bytes come
                // (each turn of the follower's, under a second, is one of
                // these: it looks while the lifetime passes).
                for _ in 0..25 {
                    for h in [a.host(), b.host()] {
                        h.clock.fetch_add(400, Ordering::SeqCst);
                    }
                    a.host().sleep(10).await;
                }
                fill(&a, &ma).await
            };
            let r = lease.hold(slow).await;
            lease.settle(r).await;
        };
        futures::join!(follow, lead)
    });
    followed.unwrap();
    assert_eq!(metric(&b, "kura_fills_taken_over_total"), 0);
    assert!(
        block_on(storage.head(&mb.key())).unwrap().is_some(),
        "the follower was released by the stored blob"
    );
    assert_eq!(s.blob_gets.load(Ordering::SeqCst), 1);
}

/// A request waiting for another isolate's fill that goes away (its client
/// left) does not fail the requests of its isolate that waited with it:
/// they look again, and the fill elsewhere goes on.
#[test]
fn a_waiter_that_goes_away_does_not_fail_the_others_of_its_isolate() {
    let (s, _, a, b) = two_isolates(20_000);
    let d = push_blob(&s.upstream, b"waited for elsewhere");
    let FillClaim::Lead(_lease) = block_on(a.claim_fill(&miss_on(&a, &d))) else {
        panic!("lead");
    };
    let mb = miss_on(&b, &d);
    let FillClaim::Follow(waiter) = block_on(b.claim_fill(&mb)) else {
        panic!("follow the lease elsewhere");
    };
    let FillClaim::Follow(with_it) = block_on(b.claim_fill(&mb)) else {
        panic!("follow the waiter here");
    };
    drop(waiter);
    block_on(b.follow_fill(with_it)).expect("look again, not a failure");
}

/// A filler whose upstream stalls (no bytes for `STALLED_FILL_MS`) stops
/// renewing its lease: another isolate takes the fill over instead of
/// waiting as long as the stalled request lives.
#[test]
fn a_stalled_fill_stops_renewing_and_is_taken_over() {
    let (s, _, a, b) = two_isolates(2_000);
    let d = push_blob(&s.upstream, b"a stalled upstream");
    let FillClaim::Lead(lease) = block_on(a.claim_fill(&miss_on(&a, &d))) else {
        panic!("lead");
    };
    let FillClaim::Follow(f) = block_on(b.claim_fill(&miss_on(&b, &d))) else {
        panic!("follow");
    };
    let done = block_on(async {
        let stalled = lease.hold(std::future::pending::<()>());
        let follow = b.follow_fill(f);
        let clock = async {
            // A second on both clocks per 10 ms of real time (the
            // follower's longer pauses are real), for 400 seconds.
            for _ in 0..400 {
                for h in [a.host(), b.host()] {
                    h.clock.fetch_add(1_000, Ordering::SeqCst);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                a.host().sleep(10).await;
            }
        };
        futures::pin_mut!(stalled, follow, clock);
        let watched = futures::future::select(follow, clock);
        match futures::future::select(watched, stalled).await {
            futures::future::Either::Left((futures::future::Either::Left((r, _)), _)) => Some(r),
            _ => None,
        }
    });
    let followed = done.expect("the follower still waits on a stalled fill");
    let followed = followed.expect("taken over, not failed");
    assert!(
        matches!(followed, Followed::Lead(_)),
        "the follower fills now: {followed:?}"
    );
    assert_eq!(metric(&b, "kura_fills_taken_over_total"), 1);
}
