//! The core's blob fill against upstream bodies that break: cut mid-way
//! (resumed with `Range: bytes=N-`, whatever the upstream answers to it),
//! cut every time (a bounded number of resumes), and stalled (the body
//! idle timeout). The upstream is a scripted `Fetch`: each blob `GET` gets
//! the next answer of its script. The end-to-end versions, against a real
//! kura and a real misbehaving server, are in tests/tests/hostile_upstream.rs.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use common::{within, TestHost};
use futures::executor::block_on;
use futures::StreamExt;
use http::{Method, Request, StatusCode};
use kura_core::storage::{MemoryStorage, Storage};
use kura_core::{body, Body, ByteStream, Digest, Fetch, FetchError, Registry, UpstreamConfig};

/// One answer to a blob `GET`.
#[derive(Clone)]
enum Answer {
    /// `200` announcing the whole blob, sending bytes `..at`, then failing
    /// as a reset connection does.
    CutAt(usize),
    /// `206` with bytes `from..` and this `Content-Range` start (a correct
    /// upstream names `from`).
    Partial { from: usize, says: usize },
    /// `200` with every byte (an upstream that ignores `Range`).
    Whole,
    /// `200` announcing the whole blob, sending bytes `..at`, then nothing,
    /// ever.
    StallAt(usize),
}

struct Script {
    blob: Bytes,
    answers: Mutex<VecDeque<Answer>>,
    /// `Range` headers of the blob `GET`s, in order.
    ranges: Mutex<Vec<Option<String>>>,
}

struct ScriptedFetch(Arc<Script>);

#[async_trait]
impl Fetch for ScriptedFetch {
    type Body = ByteStream;

    async fn fetch(&self, req: Request<()>) -> Result<http::Response<ByteStream>, FetchError> {
        let s = &self.0;
        let len = s.blob.len();
        let ok = |status: u16, body: ByteStream| {
            Ok(http::Response::builder()
                .status(status)
                .header("content-length", len.to_string())
                .body(body)
                .unwrap())
        };
        if req.method() != Method::GET || !req.uri().path().contains("/blobs/") {
            return ok(404, body::empty());
        }
        s.ranges.lock().unwrap().push(
            req.headers()
                .get("range")
                .map(|v| v.to_str().unwrap().to_owned()),
        );
        let answer = s
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Whole);
        let cut = |at: usize, then: ByteStream| -> ByteStream {
            Box::pin(futures::stream::iter([Ok(s.blob.slice(..at))]).chain(then))
        };
        match answer {
            Answer::Whole => ok(200, body::once(s.blob.clone())),
            Answer::CutAt(at) => ok(
                200,
                cut(
                    at,
                    Box::pin(futures::stream::iter([Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "connection reset by peer",
                    ))])),
                ),
            ),
            Answer::StallAt(at) => ok(200, cut(at, Box::pin(futures::stream::pending()))),
            Answer::Partial { from, says } => Ok(http::Response::builder()
                .status(206)
                .header("content-length", (len - from).to_string())
                .header("content-range", format!("bytes {says}-{}/{len}", len - 1))
                .body(body::once(s.blob.slice(from..)))
                .unwrap()),
        }
    }

    fn body_stream(body: ByteStream) -> ByteStream {
        body
    }
}

fn blob(len: usize) -> Bytes {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into()
}

struct Setup {
    script: Arc<Script>,
    mirror: Registry<MemoryStorage, TestHost, ScriptedFetch>,
    digest: Digest,
}

fn setup(answers: Vec<Answer>, idle_ms: u64) -> Setup {
    let data = blob(300_000);
    let digest = Digest::sha256(&data);
    let script = Arc::new(Script {
        blob: data,
        answers: Mutex::new(answers.into()),
        ranges: Mutex::default(),
    });
    let mut config = UpstreamConfig::new("up.local", "http://upstream.invalid");
    config.body_idle_timeout_ms = idle_ms;
    let mirror = Registry::builder(MemoryStorage::new(), TestHost::at(1_000_000))
        .mirror(ScriptedFetch(script.clone()), vec![config])
        .build()
        .unwrap();
    Setup {
        script,
        mirror,
        digest,
    }
}

/// GET the blob through the mirror: status and the body (or how it broke).
fn get(s: &Setup) -> (StatusCode, Result<Bytes, std::io::Error>) {
    let uri = format!("/v2/up.local/r/blobs/{}", s.digest);
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .body(body::empty())
        .unwrap();
    block_on(async {
        let (parts, b) = s.mirror.handle(req).await.into_parts();
        let body = match b {
            Body::Empty => Ok(Bytes::new()),
            Body::Full(b) => Ok(b),
            Body::Stream(st) | Body::Relay(st) => body::collect_limited(st, usize::MAX)
                .await
                .map_err(|e| std::io::Error::other(format!("{e:?}"))),
        };
        (parts.status, body)
    })
}

/// Whether the blob is stored (once the fill settled).
fn stored(s: &Setup) -> bool {
    let hex = s.digest.hex().to_owned();
    let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
    block_on(s.mirror.storage().head(&key)).unwrap().is_some()
}

fn ranges(s: &Setup) -> Vec<Option<String>> {
    s.script.ranges.lock().unwrap().clone()
}

#[test]
fn a_cut_body_resumes_from_where_it_stopped_with_a_206() {
    let s = setup(
        vec![
            Answer::CutAt(100_000),
            Answer::Partial {
                from: 100_000,
                says: 100_000,
            },
        ],
        0,
    );
    let (status, body) = get(&s);
    assert_eq!(status, StatusCode::OK);
    assert!(body.unwrap() == s.script.blob, "the bytes differ");
    assert_eq!(ranges(&s), vec![None, Some("bytes=100000-".into())]);
    assert!(stored(&s));
}

#[test]
fn a_resume_answered_with_every_byte_skips_those_it_has() {
    let s = setup(vec![Answer::CutAt(123_457), Answer::Whole], 0);
    let (status, body) = get(&s);
    assert_eq!(status, StatusCode::OK);
    assert!(body.unwrap() == s.script.blob, "the bytes differ");
    assert_eq!(ranges(&s), vec![None, Some("bytes=123457-".into())]);
    assert!(stored(&s));
}

#[test]
fn a_206_that_starts_elsewhere_fails_the_fill_and_stores_nothing() {
    // The upstream sends the right bytes from 100,000 but says they start
    // at 0: kura cannot know which bytes it got, so it gives up.
    let s = setup(
        vec![
            Answer::CutAt(100_000),
            Answer::Partial {
                from: 100_000,
                says: 0,
            },
        ],
        0,
    );
    let (status, body) = get(&s);
    assert_eq!(
        status,
        StatusCode::OK,
        "the head went out with the first bytes"
    );
    assert!(body.is_err(), "a fill with a bad resume completed");
    assert_eq!(ranges(&s).len(), 2);
    assert!(!stored(&s));
}

#[test]
fn a_body_cut_every_time_is_resumed_a_bounded_number_of_times() {
    let cuts = (1..=10).map(|n| Answer::CutAt(n * 10_000)).collect();
    let s = setup(cuts, 0);
    let (_, body) = get(&s);
    assert!(body.is_err(), "a fill cut every time completed");
    // The first request and five resumes.
    assert_eq!(ranges(&s).len(), 6, "{:?}", ranges(&s));
    assert!(!stored(&s));
}

#[test]
fn a_stalled_body_is_given_up_after_the_idle_timeout() {
    let s = Arc::new(setup(vec![Answer::StallAt(50_000)], 1_000));
    let (status, body) = {
        let s = s.clone();
        within(10, move || get(&s))
    };
    assert_eq!(status, StatusCode::OK);
    let e = body.expect_err("a stalled fill completed");
    // Not resumed: an upstream too slow once is given up.
    assert_eq!(ranges(&s).len(), 1);
    assert!(!stored(&s));
    let warned = s.mirror.host().warnings.lock().unwrap().join("\n");
    assert!(warned.contains("body_idle_timeout_secs"), "{warned}\n{e}");
}
