//! `/v2/` requests, routed and answered by a real `Registry` over memory
//! storage. Input: up to four requests separated by `\n===\n`, each
//!
//! ```text
//! METHOD /v2/path?query
//! header: value
//!
//! body
//! ```
//!
//! In a request line, `{upload}` stands for the id of the upload session
//! the last response named and `{digest}` for the last
//! `Docker-Content-Digest`, so a seed can push a blob in steps.
//!
//! Asserts: the router's verdict agrees with the response (a path outside
//! the API is a 404, an invalid name, tag or digest a 4xx); client input
//! never causes a 5xx (memory storage cannot fail); every response carries
//! the API version header; a HEAD has no body; a GET's body has the
//! announced length and a blob or manifest fetched whole hashes to the
//! digest it was asked for and the one announced. The percent codec used
//! for paths and queries: decoding accepts only `%XX` escapes, and decodes
//! what encoding produced.
#![no_main]

use bytes::Bytes;
use futures::executor::block_on;
use futures::StreamExt;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use kura_core::fuzzing::{percent_decode, percent_encode, query_param, query_params};
use kura_core::storage::memory::MemoryStorage;
use kura_core::wire::{self, Route};
use kura_core::{Body, ByteStream, Digest, Reference, Registry, RegistryConfig, RepositoryName};
use kura_fuzz::host::FuzzHost;
use libfuzzer_sys::fuzz_target;

struct Parsed<'a> {
    method: &'a str,
    target: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
}

fn parse_request(req: &[u8]) -> Option<Parsed<'_>> {
    let (head, body) = match req.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&req[..i], &req[i + 2..]),
        None => (req, &b""[..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.lines();
    let (method, target) = lines.next()?.split_once(' ')?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim(), v.trim()))
        .collect();
    Some(Parsed {
        method,
        target,
        headers,
        body,
    })
}

fn collect(body: Body<ByteStream>) -> Vec<u8> {
    let stream = match body {
        Body::Empty => return Vec::new(),
        Body::Full(b) => return b.to_vec(),
        Body::Stream(s) | Body::Relay(s) => s,
    };
    block_on(stream.fold(Vec::new(), |mut out, chunk| {
        out.extend_from_slice(&chunk.expect("memory storage body"));
        async move { out }
    }))
}

/// The percent codec on one path or query component.
fn check_percent(s: &str) {
    if let Some(d) = percent_decode(s) {
        let b = s.as_bytes();
        for (i, _) in s.match_indices('%') {
            let escape = b.get(i + 1..i + 3);
            assert!(
                escape.is_some_and(|e| e.iter().all(u8::is_ascii_hexdigit)),
                "{s:?} decoded to {d:?} with a bad escape at {i}"
            );
        }
    }
    assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
}

fuzz_target!(|data: &[u8]| {
    let host = FuzzHost::default();
    let registry = Registry::new(MemoryStorage::new(), host, RegistryConfig::default());
    let mut upload = String::from("0123456789abcdef0123456789abcdef");
    let mut last_digest = Digest::sha256(b"").to_string();

    let mut rest = data;
    for _ in 0..4 {
        let (req, next) = match rest.windows(5).position(|w| w == b"\n===\n") {
            Some(i) => (&rest[..i], &rest[i + 5..]),
            None => (rest, &b""[..]),
        };
        rest = next;
        let Some(p) = parse_request(req) else {
            continue;
        };
        let target = p
            .target
            .replace("{upload}", &upload)
            .replace("{digest}", &last_digest);
        let (Ok(method), Ok(uri)) = (
            Method::from_bytes(p.method.as_bytes()),
            target.parse::<Uri>(),
        ) else {
            continue;
        };

        for part in uri
            .path()
            .split('/')
            .chain(uri.query().into_iter().flat_map(|q| q.split('&')))
        {
            check_percent(part);
        }
        for key in [
            "n",
            "last",
            "digest",
            "mount",
            "from",
            "tag",
            "ns",
            "artifactType",
        ] {
            let _ = query_param(&uri, key);
            let _ = query_params(&uri, key);
        }

        let routed = wire::route(&method, uri.path());
        if let Ok(Some(route)) = &routed {
            if let Some(name) = route.name() {
                assert_eq!(RepositoryName::parse(name.as_str()).as_ref(), Ok(name));
            }
            let _ = wire::required_access(&method, Some(route));
        }

        let mut builder = Request::builder().method(method.clone()).uri(uri.clone());
        for (n, v) in &p.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                builder = builder.header(n, v);
            }
        }
        let body: ByteStream = Box::pin(futures::stream::iter([Ok::<_, std::io::Error>(
            Bytes::copy_from_slice(p.body),
        )]));
        let Ok(request) = builder.body(body) else {
            continue;
        };

        let resp = block_on(registry.handle(request));
        registry.host().run_spawned();
        let status = resp.status();
        assert!(!status.is_server_error(), "{method} {uri}: {status}");
        assert_eq!(
            resp.headers()
                .get(wire::API_VERSION_HEADER)
                .map(|v| v.as_bytes()),
            Some(wire::API_VERSION.as_bytes())
        );
        match &routed {
            Ok(None) => assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}"),
            Err(_) => assert!(status.is_client_error(), "{method} {uri}: {status}"),
            Ok(Some(_)) => {}
        }

        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let announced = header(wire::CONTENT_DIGEST_HEADER).and_then(|d| Digest::parse(&d).ok());
        let length = header("content-length").and_then(|l| l.parse::<usize>().ok());
        if let Some(id) = header(wire::UPLOAD_UUID_HEADER) {
            upload = id;
        }
        if let Some(d) = &announced {
            last_digest = d.to_string();
        }
        let body = collect(resp.into_body());
        if method == Method::HEAD {
            assert!(body.is_empty(), "HEAD {uri} has a body");
            continue;
        }
        if method != Method::GET || status != StatusCode::OK {
            continue;
        }
        if let Some(len) = length {
            assert_eq!(body.len(), len, "GET {uri}: Content-Length");
        }
        let asked = match &routed {
            Ok(Some(Route::Blob(_, d))) => Some(d),
            Ok(Some(Route::Manifest(_, Reference::Digest(d)))) => Some(d),
            _ => None,
        };
        let fetched_whole = matches!(&routed, Ok(Some(Route::Blob(..) | Route::Manifest(..))));
        if fetched_whole {
            if let Some(d) = asked.or(announced.as_ref()) {
                assert_eq!(&Digest::compute(d.algorithm(), &body), d, "GET {uri}");
            }
            if let (Some(a), Some(d)) = (asked, &announced) {
                assert_eq!(a, d, "GET {uri}: announced digest");
            }
        }
    }
});
