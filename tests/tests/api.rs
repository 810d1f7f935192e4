//! HTTP-level tests of kura's `/v2/` API against a running `kura serve`.
//!
//! Organised after the OCI distribution-spec's four workflow categories
//! (pull, push, content discovery, content management), then error
//! handling and hostile input, authentication, TLS, graceful shutdown and
//! `kura config check`.
//!
//! Every request goes through [`Api::send`] (or [`Api::raw`] for request
//! targets an HTTP client library would normalise), which checks the
//! invariants that hold for every response: no 5xx, the
//! `Docker-Distribution-API-Version` header, and for errors a JSON body
//! `{"errors":[{"code":…}]}` with a known code.

use std::collections::BTreeSet;
use std::io::{Cursor, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kura_tests::{http_client, init_crypto, kura_bin, sha256, signal, Kura, KuraOptions};
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The error codes the distribution spec lists.
const SPEC_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];
/// Codes outside the spec's list that distribution (and so kura) uses:
/// malformed tags, bad `n`, unsatisfiable ranges.
const DISTRIBUTION_CODES: &[&str] = &["TAG_INVALID", "PAGINATION_NUMBER_INVALID", "RANGE_INVALID"];

// ----- responses and the invariants every response must satisfy ------------

#[derive(Debug)]
struct Resp {
    method: String,
    target: String,
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A header that must be there.
    #[track_caller]
    fn hdr(&self, name: &str) -> &str {
        self.header(name).unwrap_or_else(|| {
            panic!(
                "{} {}: no {name} header; headers {:?}",
                self.method, self.target, self.headers
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: body is not JSON ({e}): {}",
                self.method,
                self.target,
                self.text()
            )
        })
    }

    /// The codes of an error body, checking its shape.
    #[track_caller]
    fn codes(&self) -> Vec<String> {
        let v = self.json();
        let errors = v["errors"].as_array().unwrap_or_else(|| {
            panic!(
                "{} {}: error body without an errors array: {}",
                self.method,
                self.target,
                self.text()
            )
        });
        assert!(
            !errors.is_empty(),
            "{} {}: empty errors array",
            self.method,
            self.target
        );
        errors
            .iter()
            .map(|e| {
                e["code"]
                    .as_str()
                    .unwrap_or_else(|| {
                        panic!(
                            "{} {}: error without a code: {}",
                            self.method,
                            self.target,
                            self.text()
                        )
                    })
                    .to_owned()
            })
            .collect()
    }

    #[track_caller]
    fn code(&self) -> String {
        self.codes().remove(0)
    }

    /// Assert the status; returns self for chaining.
    #[track_caller]
    fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status,
            status,
            "{} {}: expected {status}, got {} with headers {:?} and body {}",
            self.method,
            self.target,
            self.status,
            self.headers,
            self.text()
        );
        self
    }

    /// Assert an error status and code.
    #[track_caller]
    fn error(self, status: u16, code: &str) -> Self {
        let r = self.expect(status);
        assert_eq!(
            r.code(),
            code,
            "{} {}: wrong error code in {}",
            r.method,
            r.target,
            r.text()
        );
        r
    }

    #[track_caller]
    fn tags(&self) -> Vec<String> {
        strings(&self.json()["tags"])
    }

    /// The target of a `Link: <…>; rel="next"` header.
    #[track_caller]
    fn next_link(&self) -> Option<String> {
        let link = self.header("link")?;
        assert!(
            link.contains("rel=\"next\""),
            "Link header without rel=\"next\": {link}"
        );
        let start = link.find('<').expect("Link has <") + 1;
        let end = link.find('>').expect("Link has >");
        Some(link[start..end].to_owned())
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().expect("string").to_owned())
            .collect(),
        other => panic!("expected a list of strings, got {other}"),
    }
}

/// What holds for every response kura gives.
#[track_caller]
fn check(r: &Resp) {
    assert!(
        r.status < 500,
        "{} {} answered {} (no request may cause a 5xx): {}",
        r.method,
        r.target,
        r.status,
        r.text()
    );
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{} {} ({}): Docker-Distribution-API-Version missing",
        r.method,
        r.target,
        r.status
    );
    if r.status >= 400 && r.method != "HEAD" {
        let ct = r.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "{} {}: error with Content-Type {ct:?}",
            r.method,
            r.target
        );
        for code in r.codes() {
            assert!(
                SPEC_CODES.contains(&code.as_str()) || DISTRIBUTION_CODES.contains(&code.as_str()),
                "{} {}: unknown error code {code}",
                r.method,
                r.target
            );
        }
    }
}

// ----- a client bound to one registry ---------------------------------------

#[derive(Clone)]
struct Api {
    base: String,
    port: u16,
    client: Client,
    auth: Option<(String, String)>,
}

impl Api {
    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{}", self.base, path)
        }
    }

    fn as_user(&self, user: &str, pass: &str) -> Api {
        Api {
            auth: Some((user.into(), pass.into())),
            ..self.clone()
        }
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        match &self.auth {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        }
    }

    #[track_caller]
    fn send(&self, rb: RequestBuilder) -> Resp {
        let req = rb.build().expect("request builds");
        let method = req.method().to_string();
        let target = match req.url().query() {
            Some(q) => format!("{}?{q}", req.url().path()),
            None => req.url().path().to_owned(),
        };
        let r = self
            .client
            .execute(req)
            .unwrap_or_else(|e| panic!("{method} {target}: {e:?}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r
            .bytes()
            .unwrap_or_else(|e| panic!("{method} {target}: reading body: {e}"))
            .to_vec();
        let resp = Resp {
            method,
            target,
            status,
            headers,
            body,
        };
        check(&resp);
        resp
    }

    #[track_caller]
    fn get(&self, path: &str) -> Resp {
        self.send(self.req(Method::GET, path))
    }

    #[track_caller]
    fn head(&self, path: &str) -> Resp {
        let r = self.send(self.req(Method::HEAD, path));
        assert!(r.body.is_empty(), "HEAD {path} returned a body");
        r
    }

    #[track_caller]
    fn delete(&self, path: &str) -> Resp {
        self.send(self.req(Method::DELETE, path))
    }

    #[track_caller]
    fn post(&self, path: &str, body: &[u8]) -> Resp {
        self.send(
            self.req(Method::POST, path)
                .header("content-type", "application/octet-stream")
                .body(body.to_vec()),
        )
    }

    /// A request exactly as written, over a fresh TCP connection: for paths
    /// with `..`, `%2e` and friends that an HTTP client would normalise.
    #[track_caller]
    fn raw(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.raw_bytes(method, target, &headers, body)
    }

    /// [`Api::raw`] with header values as bytes (not necessarily ASCII).
    #[track_caller]
    fn raw_bytes(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Resp {
        assert!(
            self.base.starts_with("http://"),
            "raw requests are plain HTTP only"
        );
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        )
        .into_bytes();
        for (k, v) in headers {
            req.extend_from_slice(k.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        s.write_all(&req).expect("writing request");
        s.write_all(body).expect("writing body");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("reading response");
        let resp = parse_raw(method, target, &buf);
        check(&resp);
        resp
    }

    // ----- push helpers ------------------------------------------------------

    /// Push a blob monolithically (`POST ?digest=`); returns its digest.
    #[track_caller]
    fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self
            .post(&format!("/v2/{repo}/blobs/uploads/?digest={d}"), data)
            .expect(201);
        assert_eq!(r.hdr("docker-content-digest"), d);
        d
    }

    /// Open an upload session; returns its Location.
    #[track_caller]
    fn start_upload(&self, repo: &str) -> String {
        let r = self
            .post(&format!("/v2/{repo}/blobs/uploads/"), b"")
            .expect(202);
        let loc = r.hdr("location").to_owned();
        assert!(
            loc.contains(&format!("/v2/{repo}/blobs/uploads/")),
            "odd upload location {loc}"
        );
        loc
    }

    /// PATCH a chunk; `range` is the inclusive Content-Range to send.
    #[track_caller]
    fn patch(&self, loc: &str, data: &[u8], range: Option<(u64, u64)>) -> Resp {
        let mut rb = self
            .req(Method::PATCH, loc)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec());
        if let Some((a, b)) = range {
            rb = rb.header("content-range", format!("{a}-{b}"));
        }
        self.send(rb)
    }

    /// PUT that closes an upload session.
    #[track_caller]
    fn put_upload(&self, loc: &str, digest: &str, data: &[u8], range: Option<(u64, u64)>) -> Resp {
        let mut rb = self
            .req(Method::PUT, &with_query(loc, &format!("digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec());
        if let Some((a, b)) = range {
            rb = rb.header("content-range", format!("{a}-{b}"));
        }
        self.send(rb)
    }

    #[track_caller]
    fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Resp {
        let mut rb = self
            .req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .body(body.to_vec());
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        self.send(rb)
    }

    /// Push a manifest with its own mediaType as Content-Type; returns its digest.
    #[track_caller]
    fn push_manifest(&self, repo: &str, reference: &str, body: &[u8]) -> String {
        let v: Value = serde_json::from_slice(body).expect("manifest is JSON");
        let ct = v["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_owned();
        let r = self
            .put_manifest(repo, reference, Some(&ct), body)
            .expect(201);
        let d = sha256(body);
        assert_eq!(r.hdr("docker-content-digest"), d);
        assert_eq!(r.hdr("location"), format!("/v2/{repo}/manifests/{d}"));
        d
    }

    /// Push an image's blobs and its manifest under `tag`.
    #[track_caller]
    fn push_image(&self, repo: &str, tag: &str, seed: &str) -> Image {
        let img = Image::new(seed);
        self.push_blob(repo, &img.config);
        for l in &img.layers {
            self.push_blob(repo, l);
        }
        let d = self.push_manifest(repo, tag, &img.manifest);
        assert_eq!(d, img.digest);
        img
    }
}

fn with_query(loc: &str, q: &str) -> String {
    if loc.contains('?') {
        format!("{loc}&{q}")
    } else {
        format!("{loc}?{q}")
    }
}

fn parse_raw(method: &str, target: &str, buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "{method} {target}: no complete response head in {:?}",
                String::from_utf8_lossy(buf)
            )
        });
    let head = std::str::from_utf8(&buf[..split]).expect("ASCII response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':').expect("header line");
        headers.append(
            HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
            HeaderValue::from_str(v.trim()).unwrap(),
        );
    }
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_str().unwrap_or("").contains("chunked"));
    if chunked && method != "HEAD" {
        body = dechunk(&body);
    }
    Resp {
        method: method.to_owned(),
        target: target.to_owned(),
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = std::str::from_utf8(&b[..eol]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// ----- a running registry -----------------------------------------------------

struct Reg {
    kura: Kura,
    api: Api,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Reg {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Reg {
    fn start() -> Reg {
        Self::with(KuraOptions::default(), None)
    }

    fn with(opts: KuraOptions, dir: Option<tempfile::TempDir>) -> Reg {
        let kura = Kura::start_with(opts).expect("kura starts");
        let api = Api {
            base: kura.url.clone(),
            port: kura.port,
            client: http_client(),
            auth: None,
        };
        Reg {
            kura,
            api,
            _dir: dir,
        }
    }

    /// A registry started with `--config` holding `yaml`.
    fn with_config(yaml: &str) -> Reg {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("kura.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        Self::with(
            KuraOptions {
                config: Some(cfg),
                ..Default::default()
            },
            Some(dir),
        )
    }
}

// ----- content ------------------------------------------------------------------

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn desc(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

struct Image {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
    manifest: Vec<u8>,
    digest: String,
}

impl Image {
    fn new(seed: &str) -> Image {
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let h = seed
            .bytes()
            .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
        let layers = vec![noise(3000, h), noise(1500, h + 1)];
        let manifest = image_manifest(&config, &layers);
        let digest = sha256(&manifest);
        Image {
            config,
            layers,
            manifest,
            digest,
        }
    }
}

/// An OCI image manifest, pretty-printed with a trailing newline so that any
/// re-serialisation by the registry would change the bytes.
fn image_manifest(config: &[u8], layers: &[Vec<u8>]) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, config),
        "layers": layers.iter().map(|l| desc(OCI_LAYER, l)).collect::<Vec<_>>(),
    });
    let mut v = serde_json::to_vec_pretty(&m).unwrap();
    v.push(b'\n');
    v
}

fn index_of(children: &[(&str, &[u8])]) -> Vec<u8> {
    let manifests: Vec<Value> = children
        .iter()
        .enumerate()
        .map(|(i, (mt, bytes))| {
            let mut d = desc(mt, bytes);
            d["platform"] =
                json!({"architecture": if i == 0 { "amd64" } else { "arm64" }, "os": "linux"});
            d
        })
        .collect();
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
        .unwrap()
}

const ZERO_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

// =============================================================================
// Pull
// =============================================================================

#[test]
fn pull_base_endpoint() {
    let reg = Reg::start();
    let r = reg.get("/v2/").expect(200);
    assert_eq!(r.hdr("docker-distribution-api-version"), "registry/2.0");
    reg.head("/v2/").expect(200);
    reg.get("/v2").expect(200);
}

#[test]
fn pull_manifest_by_tag_and_by_digest() {
    let reg = Reg::start();
    let repo = "pull/manifest";
    let img = reg.push_image(repo, "v1", "pull-manifest");
    let len = img.manifest.len().to_string();
    for reference in ["v1", img.digest.as_str()] {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let r = reg.get(&path).expect(200);
        assert_eq!(
            r.body, img.manifest,
            "manifest bytes must come back exactly as pushed"
        );
        assert_eq!(r.hdr("docker-content-digest"), img.digest);
        assert_eq!(r.hdr("content-type"), OCI_MANIFEST);
        assert_eq!(r.hdr("content-length"), len);

        let h = reg.head(&path).expect(200);
        assert_eq!(h.hdr("docker-content-digest"), img.digest);
        assert_eq!(h.hdr("content-type"), OCI_MANIFEST);
        assert_eq!(
            h.hdr("content-length"),
            len,
            "HEAD reports the size GET would send"
        );

        // On the wire: a HEAD response carries Content-Length but no body.
        let raw = reg.raw("HEAD", &path, &[], b"").expect(200);
        assert_eq!(raw.hdr("content-length"), len);
        assert!(
            raw.body.is_empty(),
            "HEAD sent {} body bytes",
            raw.body.len()
        );
    }
}

#[test]
fn pull_docker_manifest_keeps_its_media_type() {
    let reg = Reg::start();
    let repo = "pull/docker";
    let config = br#"{"architecture":"arm64","os":"linux"}"#.to_vec();
    let layer = noise(777, 3);
    reg.push_blob(repo, &config);
    reg.push_blob(repo, &layer);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG, &config),
        "layers": [desc(DOCKER_LAYER, &layer)],
    }))
    .unwrap();
    let d = reg.push_manifest(repo, "docker", &m);
    for reference in ["docker", d.as_str()] {
        let r = reg
            .get(&format!("/v2/{repo}/manifests/{reference}"))
            .expect(200);
        assert_eq!(r.hdr("content-type"), DOCKER_MANIFEST);
        assert_eq!(r.body, m);
    }
}

#[test]
fn pull_blob_get_and_head() {
    let reg = Reg::start();
    let data = noise(100_000, 11);
    let d = reg.push_blob("pull/blob", &data);
    let path = format!("/v2/pull/blob/blobs/{d}");
    let r = reg.get(&path).expect(200);
    assert_eq!(r.body, data);
    assert_eq!(r.hdr("docker-content-digest"), d);
    assert_eq!(r.hdr("content-length"), data.len().to_string());

    let h = reg.head(&path).expect(200);
    assert_eq!(h.hdr("docker-content-digest"), d);
    assert_eq!(h.hdr("content-length"), data.len().to_string());

    let raw = reg.raw("HEAD", &path, &[], b"").expect(200);
    assert_eq!(raw.hdr("content-length"), data.len().to_string());
    assert!(raw.body.is_empty(), "HEAD sent a body");

    // A digest with the ':' percent-encoded addresses the same blob.
    let enc = path.replace("sha256:", "sha256%3A");
    assert_eq!(reg.raw("GET", &enc, &[], b"").expect(200).body, data);
}

#[test]
fn pull_blob_range_requests() {
    let reg = Reg::start();
    let data = noise(1000, 12);
    let d = reg.push_blob("pull/range", &data);
    let path = format!("/v2/pull/range/blobs/{d}");
    let ranged = |range: &str| reg.send(reg.req(Method::GET, &path).header("range", range));

    let cases: &[(&str, usize, usize)] = &[
        ("bytes=0-99", 0, 100),
        ("bytes=100-199", 100, 200),
        ("bytes=0-0", 0, 1),
        ("bytes=999-999", 999, 1000),
        ("bytes=990-", 990, 1000),
        ("bytes=900-5000", 900, 1000), // end past the size is clipped
        ("bytes=-10", 990, 1000),      // suffix: the last 10 bytes
        ("bytes=-1", 999, 1000),
        ("bytes=-5000", 0, 1000), // suffix longer than the blob: all of it
    ];
    for &(range, start, end) in cases {
        let r = ranged(range).expect(206);
        assert_eq!(r.body, &data[start..end], "{range}");
        assert_eq!(
            r.hdr("content-range"),
            format!("bytes {}-{}/1000", start, end - 1),
            "{range}"
        );
        assert_eq!(
            r.hdr("content-length"),
            (end - start).to_string(),
            "{range}"
        );
        assert_eq!(r.hdr("docker-content-digest"), d, "{range}");
    }

    for range in [
        "bytes=1000-",
        "bytes=5000-6000",
        "bytes=1000-1000",
        "bytes=-0",
        "bytes=50-10",
    ] {
        let r = ranged(range).expect(416);
        assert_eq!(r.hdr("content-range"), "bytes */1000", "{range}");
    }
    // HEAD ignores Range.
    let h = reg
        .send(reg.req(Method::HEAD, &path).header("range", "bytes=0-9"))
        .expect(200);
    assert_eq!(h.hdr("content-length"), "1000");
}

/// RFC 9110 §14.2: "An origin server MUST ignore a Range header field that
/// contains a range unit it does not understand."
#[test]
fn pull_blob_range_with_unknown_unit_is_ignored() {
    let reg = Reg::start();
    let data = noise(1000, 13);
    let d = reg.push_blob("pull/range2", &data);
    let path = format!("/v2/pull/range2/blobs/{d}");
    let r = reg.send(reg.req(Method::GET, &path).header("range", "items=0-5"));
    assert_eq!(
        r.status,
        200,
        "Range with an unknown unit must be ignored: got {} {}",
        r.status,
        r.text()
    );
    assert_eq!(r.body, data);
}

/// RFC 9110: a server MAY ignore Range (200) or serve several ranges as
/// multipart (206); 416 means none of the ranges overlap the blob, which is
/// false here.
#[test]
fn pull_blob_satisfiable_multi_range_is_not_416() {
    let reg = Reg::start();
    let data = noise(1000, 14);
    let d = reg.push_blob("pull/range3", &data);
    let path = format!("/v2/pull/range3/blobs/{d}");
    let r = reg.send(
        reg.req(Method::GET, &path)
            .header("range", "bytes=0-9,20-29"),
    );
    assert!(
        r.status == 200 || r.status == 206,
        "a satisfiable multi-range request may be ignored (200) or served (206), not {}: {}",
        r.status,
        r.text()
    );
    if r.status == 200 {
        assert_eq!(r.body, data);
    }
}

#[test]
fn pull_unknown_content_is_404() {
    let reg = Reg::start();
    let img = reg.push_image("pull/known", "v1", "pull-unknown");
    let unknown = sha256(b"never pushed");

    reg.get(&format!("/v2/pull/known/blobs/{unknown}"))
        .error(404, "BLOB_UNKNOWN");
    reg.head(&format!("/v2/pull/known/blobs/{unknown}"))
        .expect(404);
    reg.get(&format!("/v2/pull/known/manifests/{unknown}"))
        .error(404, "MANIFEST_UNKNOWN");
    reg.head(&format!("/v2/pull/known/manifests/{unknown}"))
        .expect(404);
    reg.get("/v2/pull/known/manifests/nosuchtag")
        .error(404, "MANIFEST_UNKNOWN");
    reg.head("/v2/pull/known/manifests/nosuchtag").expect(404);
    // A blob's digest does not name a manifest.
    let config_digest = sha256(&img.config);
    reg.get(&format!("/v2/pull/known/manifests/{config_digest}"))
        .error(404, "MANIFEST_UNKNOWN");

    // A repository that does not exist at all.
    let r = reg.get("/v2/pull/never/manifests/latest").expect(404);
    assert!(
        ["MANIFEST_UNKNOWN", "NAME_UNKNOWN"].contains(&r.code().as_str()),
        "{}",
        r.text()
    );
    let r = reg
        .get(&format!("/v2/pull/never/blobs/{}", sha256(&img.config)))
        .expect(404);
    assert!(
        ["BLOB_UNKNOWN", "NAME_UNKNOWN"].contains(&r.code().as_str()),
        "{}",
        r.text()
    );
}

#[test]
fn pull_content_is_scoped_to_its_repository() {
    let reg = Reg::start();
    let img = reg.push_image("iso/a", "v1", "isolation");
    reg.get(&format!("/v2/iso/a/manifests/{}", img.digest))
        .expect(200);
    reg.get(&format!("/v2/iso/b/manifests/{}", img.digest))
        .expect(404);
    reg.get("/v2/iso/b/manifests/v1").expect(404);
    let layer = sha256(&img.layers[0]);
    reg.get(&format!("/v2/iso/a/blobs/{layer}")).expect(200);
    reg.get(&format!("/v2/iso/b/blobs/{layer}"))
        .error(404, "BLOB_UNKNOWN");
    // A prefix or nested name is a different repository too.
    reg.get(&format!("/v2/iso/blobs/{layer}")).expect(404);
    reg.get(&format!("/v2/iso/a/b/blobs/{layer}")).expect(404);
}

// =============================================================================
// Push
// =============================================================================

#[test]
fn push_monolithic_single_post() {
    let reg = Reg::start();
    let data = noise(5000, 21);
    let d = sha256(&data);
    let r = reg
        .post(&format!("/v2/push/mono/blobs/uploads/?digest={d}"), &data)
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    let loc = r.hdr("location").to_owned();
    assert_eq!(
        reg.get(&loc).expect(200).body,
        data,
        "Location is a pullable blob URL"
    );
    // Pushing the same blob again is fine.
    reg.post(&format!("/v2/push/mono/blobs/uploads/?digest={d}"), &data)
        .expect(201);
    // The empty blob.
    let e = reg.push_blob("push/mono", b"");
    let r = reg.get(&format!("/v2/push/mono/blobs/{e}")).expect(200);
    assert!(r.body.is_empty());
    assert_eq!(r.hdr("content-length"), "0");
}

#[test]
fn push_post_then_put() {
    let reg = Reg::start();
    let data = noise(20_000, 22);
    let d = sha256(&data);
    let loc = reg.start_upload("push/postput");
    let r = reg.put_upload(&loc, &d, &data, None).expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    let blob_loc = r.hdr("location").to_owned();
    assert_eq!(reg.get(&blob_loc).expect(200).body, data);
    assert_eq!(blob_loc, format!("/v2/push/postput/blobs/{d}"));
    // The session is closed.
    reg.get(&loc).error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.put_upload(&loc, &d, &data, None)
        .error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn push_chunked_final_put_without_body() {
    let reg = Reg::start();
    let data = noise(10_000, 23);
    let d = sha256(&data);
    let mut loc = reg.start_upload("push/chunked");
    let bounds = [0usize, 1000, 1001, 4096, 10_000];
    for w in bounds.windows(2) {
        let (a, b) = (w[0], w[1]);
        let r = reg
            .patch(&loc, &data[a..b], Some((a as u64, b as u64 - 1)))
            .expect(202);
        assert_eq!(r.hdr("range"), format!("0-{}", b - 1));
        loc = r.hdr("location").to_owned();
        let s = reg.get(&loc).expect(204);
        assert_eq!(
            s.hdr("range"),
            format!("0-{}", b - 1),
            "upload status after {b} bytes"
        );
        assert_eq!(s.hdr("location"), loc);
    }
    let r = reg.put_upload(&loc, &d, b"", None).expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    assert_eq!(reg.get(r.hdr("location")).expect(200).body, data);
    reg.get(&loc).error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn push_chunked_final_chunk_in_put() {
    let reg = Reg::start();
    let data = noise(9000, 24);
    let d = sha256(&data);
    // With a Content-Range on the closing PUT.
    let loc = reg.start_upload("push/chunked2");
    let r = reg.patch(&loc, &data[..4000], Some((0, 3999))).expect(202);
    let loc = r.hdr("location").to_owned();
    let r = reg
        .put_upload(&loc, &d, &data[4000..], Some((4000, 8999)))
        .expect(201);
    assert_eq!(reg.get(r.hdr("location")).expect(200).body, data);

    // Without one.
    let data = noise(9000, 25);
    let d = sha256(&data);
    let loc = reg.start_upload("push/chunked2");
    let loc = reg
        .patch(&loc, &data[..5], Some((0, 4)))
        .expect(202)
        .hdr("location")
        .to_owned();
    let loc = reg
        .patch(&loc, &data[5..10], Some((5, 9)))
        .expect(202)
        .hdr("location")
        .to_owned();
    let r = reg.put_upload(&loc, &d, &data[10..], None).expect(201);
    assert_eq!(reg.get(r.hdr("location")).expect(200).body, data);
}

#[test]
fn push_streamed_patch_without_content_range() {
    let reg = Reg::start();
    let data = noise(300_000, 26);
    let d = sha256(&data);
    let mut loc = reg.start_upload("push/streamed");
    let mut sent = 0;
    for part in [&data[..100_000], &data[100_000..]] {
        // A reader body goes out with chunked transfer encoding: no length.
        let body = reqwest::blocking::Body::new(Cursor::new(part.to_vec()));
        let r = reg
            .send(
                reg.req(Method::PATCH, &loc)
                    .header("content-type", "application/octet-stream")
                    .body(body),
            )
            .expect(202);
        sent += part.len();
        assert_eq!(r.hdr("range"), format!("0-{}", sent - 1));
        loc = r.hdr("location").to_owned();
    }
    reg.put_upload(&loc, &d, b"", None).expect(201);
    assert_eq!(
        reg.get(&format!("/v2/push/streamed/blobs/{d}"))
            .expect(200)
            .body,
        data
    );
}

#[test]
fn push_out_of_order_chunks_are_416() {
    let reg = Reg::start();
    let data = noise(40, 27);
    let d = sha256(&data);
    let loc = reg.start_upload("push/order");
    let loc = reg
        .patch(&loc, &data[..10], Some((0, 9)))
        .expect(202)
        .hdr("location")
        .to_owned();

    for (a, b) in [(20u64, 29u64), (0, 9), (5, 14), (11, 20)] {
        let r = reg
            .patch(&loc, &data[a as usize..=b as usize], Some((a, b)))
            .expect(416);
        assert_eq!(
            r.hdr("range"),
            "0-9",
            "416 tells where the upload is ({a}-{b})"
        );
    }
    let s = reg.get(&loc).expect(204);
    assert_eq!(s.hdr("range"), "0-9");
    let loc = s.hdr("location").to_owned();
    // The session is still usable after the 416s.
    let loc = reg
        .patch(&loc, &data[10..20], Some((10, 19)))
        .expect(202)
        .hdr("location")
        .to_owned();
    // A final chunk out of order in the closing PUT is 416 as well.
    reg.put_upload(&loc, &d, &data[30..], Some((30, 39)))
        .expect(416);
    reg.put_upload(&loc, &d, &data[20..], Some((20, 39)))
        .expect(201);
    assert_eq!(
        reg.get(&format!("/v2/push/order/blobs/{d}"))
            .expect(200)
            .body,
        data
    );
}

#[test]
fn push_chunk_length_not_matching_content_range() {
    let reg = Reg::start();
    let data = noise(100, 28);
    let loc = reg.start_upload("push/badlen");
    let loc = reg
        .patch(&loc, &data[..10], Some((0, 9)))
        .expect(202)
        .hdr("location")
        .to_owned();
    // Content-Range says 100 bytes, the body has 10; and the other way round.
    for (range, body) in [((10u64, 109u64), &data[10..20]), ((10, 14), &data[10..20])] {
        let r = reg.patch(&loc, body, Some(range));
        assert!(
            r.status == 400 || r.status == 416,
            "{range:?}: {} {}",
            r.status,
            r.text()
        );
        assert!(
            ["SIZE_INVALID", "BLOB_UPLOAD_INVALID", "RANGE_INVALID"].contains(&r.code().as_str()),
            "{}",
            r.text()
        );
        assert_eq!(
            reg.get(&loc).expect(204).hdr("range"),
            "0-9",
            "a rejected chunk is not kept"
        );
    }
    // Malformed Content-Range values.
    for bad in [
        "garbage",
        "10-",
        "-9",
        "9-5",
        "bytes=a-b",
        "10-18446744073709551616",
    ] {
        let r = reg.send(
            reg.req(Method::PATCH, &loc)
                .header("content-range", bad)
                .body(data[10..20].to_vec()),
        );
        assert!(
            r.status == 400 || r.status == 416,
            "Content-Range {bad:?}: {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(reg.get(&loc).expect(204).hdr("range"), "0-9");
}

/// A Content-Range ending at u64::MAX announces a chunk length that does
/// not fit in a u64: a client error, not a crash.
#[test]
fn push_content_range_at_u64_max() {
    let reg = Reg::start();
    let loc = reg.start_upload("push/maxrange");
    for (method, target) in [
        ("PATCH", loc.clone()),
        (
            "PUT",
            with_query(&loc, &format!("digest={}", sha256(b"abc"))),
        ),
    ] {
        let r = reg.raw(
            method,
            &target,
            &[("content-range", "0-18446744073709551615")],
            b"abc",
        );
        assert!(
            r.status == 400 || r.status == 416,
            "{method}: {} {}",
            r.status,
            r.text()
        );
    }
    // The session is intact and still at offset 0.
    reg.get(&loc).expect(204);
    assert_eq!(
        reg.patch(&loc, b"abc", Some((0, 2)))
            .expect(202)
            .hdr("range"),
        "0-2"
    );
}

/// A Content-Range that is not visible ASCII is still a Content-Range: it
/// must be rejected, not ignored (ignoring it turns an out-of-order chunk
/// into one appended at the current offset).
#[test]
fn push_non_ascii_content_range_is_rejected() {
    let reg = Reg::start();
    let loc = reg.start_upload("push/nonascii");
    let r = reg.raw_bytes("PATCH", &loc, &[("content-range", b"100-102\xff")], b"abc");
    assert!(
        r.status == 400 || r.status == 416,
        "PATCH with Content-Range \"100-102\\xff\" at offset 0: {} (Range {:?})",
        r.status,
        r.header("range")
    );
    let s = reg.get(&loc).expect(204);
    assert_eq!(
        reg.patch(s.hdr("location"), b"abc", Some((0, 2)))
            .expect(202)
            .hdr("range"),
        "0-2",
        "nothing was stored by the rejected chunk"
    );
}

#[test]
fn push_digest_mismatch_is_rejected_and_not_stored() {
    let reg = Reg::start();
    let repo = "push/mismatch";
    let data = noise(4000, 29);
    let claimed = sha256(b"something else entirely");
    let blob = format!("/v2/{repo}/blobs/{claimed}");
    // `what` names the case in the failure message.
    let assert_absent = |what: &str| {
        let r = reg.get(&blob);
        assert_eq!(
            r.status, 404,
            "{what}: a blob that failed verification is retrievable"
        );
        assert_eq!(r.code(), "BLOB_UNKNOWN", "{what}");
        assert_eq!(reg.head(&blob).status, 404, "{what}: HEAD finds the blob");
    };

    // Single POST.
    reg.post(
        &format!("/v2/{repo}/blobs/uploads/?digest={claimed}"),
        &data,
    )
    .error(400, "DIGEST_INVALID");
    assert_absent("single post");
    // POST then PUT.
    let loc = reg.start_upload(repo);
    reg.put_upload(&loc, &claimed, &data, None)
        .error(400, "DIGEST_INVALID");
    assert_absent("post-put");
    // One PATCH then PUT (the registry may rename the single chunk).
    let loc = reg.start_upload(repo);
    let loc = reg
        .patch(&loc, &data, Some((0, 3999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.put_upload(&loc, &claimed, b"", None)
        .error(400, "DIGEST_INVALID");
    assert_absent("one chunk");
    // Several PATCHes then PUT.
    let loc = reg.start_upload(repo);
    let loc = reg
        .patch(&loc, &data[..1000], Some((0, 999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    let loc = reg
        .patch(&loc, &data[1000..], Some((1000, 3999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.put_upload(&loc, &claimed, b"", None)
        .error(400, "DIGEST_INVALID");
    assert_absent("chunks");
    // A chunk plus a final body.
    let loc = reg.start_upload(repo);
    let loc = reg
        .patch(&loc, &data[..1000], Some((0, 999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.put_upload(&loc, &claimed, &data[1000..], Some((1000, 3999)))
        .error(400, "DIGEST_INVALID");
    assert_absent("chunk and final body");
    // Large enough to be written in parts (> 8 MiB).
    let big = noise(9 * 1024 * 1024 + 17, 30);
    reg.post(&format!("/v2/{repo}/blobs/uploads/?digest={claimed}"), &big)
        .error(400, "DIGEST_INVALID");
    assert_absent("big single post");
    let loc = reg.start_upload(repo);
    reg.put_upload(&loc, &claimed, &big, None)
        .error(400, "DIGEST_INVALID");
    assert_absent("big post-put");
}

/// Claiming the digest of a blob another repository holds, with other
/// bytes, must neither link that blob here nor damage it.
#[test]
fn push_digest_mismatch_against_existing_blob() {
    let reg = Reg::start();
    let good = noise(2000, 31);
    let d = reg.push_blob("push/owner", &good);
    let bad = noise(2000, 32);
    reg.post(&format!("/v2/push/thief/blobs/uploads/?digest={d}"), &bad)
        .error(400, "DIGEST_INVALID");
    let loc = reg.start_upload("push/thief");
    let loc = reg
        .patch(&loc, &bad, Some((0, 1999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.put_upload(&loc, &d, b"", None)
        .error(400, "DIGEST_INVALID");
    reg.get(&format!("/v2/push/thief/blobs/{d}"))
        .error(404, "BLOB_UNKNOWN");
    assert_eq!(
        reg.get(&format!("/v2/push/owner/blobs/{d}"))
            .expect(200)
            .body,
        good
    );
}

#[test]
fn push_invalid_digest_syntax() {
    let reg = Reg::start();
    let repo = "push/baddigest";
    let data = b"hello";
    let hex = &sha256(data)[7..];
    for bad in [
        "sha256:zz".to_owned(),
        "notadigest".to_owned(),
        "sha256:".to_owned(),
        format!("sha256:{}", &hex[..63]),
        format!("SHA256:{hex}"),
        format!("sha256:{}", hex.to_uppercase()),
        "md5:5d41402abc4b2a76b9719d911017c592".to_owned(),
    ] {
        reg.post(&format!("/v2/{repo}/blobs/uploads/?digest={bad}"), data)
            .error(400, "DIGEST_INVALID");
        let loc = reg.start_upload(repo);
        reg.put_upload(&loc, &bad, data, None)
            .error(400, "DIGEST_INVALID");
        reg.get(&format!("/v2/{repo}/blobs/{bad}"))
            .error(400, "DIGEST_INVALID");
    }
    // Closing PUT without any digest.
    let loc = reg.start_upload(repo);
    reg.send(reg.req(Method::PUT, &loc).body(data.to_vec()))
        .error(400, "DIGEST_INVALID");
    // A manifest read of a reference that is neither tag nor digest asks
    // for something that cannot exist (as the conformance suite expects);
    // a write of one is the client's error.
    reg.get(&format!("/v2/{repo}/manifests/sha256:zz"))
        .error(404, "MANIFEST_UNKNOWN");
    reg.send(
        reg.req(Method::PUT, &format!("/v2/{repo}/manifests/sha256:zz"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(b"{}".to_vec()),
    )
    .error(400, "DIGEST_INVALID");
    reg.get(&format!("/v2/{repo}/referrers/sha256:zz"))
        .error(400, "DIGEST_INVALID");
}

#[test]
fn push_sha512_blobs() {
    let reg = Reg::start();
    use sha2::Digest as _;
    let data = noise(70_000, 33);
    let d = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&data)));
    // Single POST.
    let r = reg
        .post(&format!("/v2/push/sha512/blobs/uploads/?digest={d}"), &data)
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    assert_eq!(
        reg.get(&format!("/v2/push/sha512/blobs/{d}"))
            .expect(200)
            .body,
        data
    );
    // Chunked, announcing the algorithm (end-4c).
    let r = reg
        .post(
            "/v2/push/sha512b/blobs/uploads/?digest-algorithm=sha512",
            b"",
        )
        .expect(202);
    let loc = r.hdr("location").to_owned();
    let loc = reg
        .patch(&loc, &data[..30_000], Some((0, 29_999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    let loc = reg
        .patch(&loc, &data[30_000..], Some((30_000, 69_999)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.put_upload(&loc, &d, b"", None).expect(201);
    assert_eq!(
        reg.get(&format!("/v2/push/sha512b/blobs/{d}"))
            .expect(200)
            .body,
        data
    );
}

#[test]
fn push_cross_repository_mount() {
    let reg = Reg::start();
    let data = noise(6000, 34);
    let d = reg.push_blob("mount/src", &data);

    let r = reg
        .post(
            &format!("/v2/mount/dst/blobs/uploads/?mount={d}&from=mount/src"),
            b"",
        )
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    let loc = r.hdr("location").to_owned();
    assert_eq!(reg.get(&loc).expect(200).body, data);
    assert_eq!(
        reg.get(&format!("/v2/mount/dst/blobs/{d}"))
            .expect(200)
            .body,
        data
    );

    // From a repository that lacks the blob: a new upload session instead.
    let r = reg
        .post(
            &format!("/v2/mount/other/blobs/uploads/?mount={d}&from=mount/empty"),
            b"",
        )
        .expect(202);
    let loc = r.hdr("location").to_owned();
    assert!(loc.contains("/v2/mount/other/blobs/uploads/"), "{loc}");
    reg.get(&format!("/v2/mount/other/blobs/{d}"))
        .error(404, "BLOB_UNKNOWN");
    reg.put_upload(&loc, &d, &data, None).expect(201);
    assert_eq!(
        reg.get(&format!("/v2/mount/other/blobs/{d}"))
            .expect(200)
            .body,
        data
    );

    // An unknown digest: also a session.
    let unknown = sha256(b"not here");
    reg.post(
        &format!("/v2/mount/third/blobs/uploads/?mount={unknown}&from=mount/src"),
        b"",
    )
    .expect(202);
    reg.get(&format!("/v2/mount/third/blobs/{unknown}"))
        .expect(404);
    // Without `from`, the registry may mount (201) or open a session (202).
    let r = reg.post(&format!("/v2/mount/fourth/blobs/uploads/?mount={d}"), b"");
    assert!(
        r.status == 201 || r.status == 202,
        "mount without from: {}",
        r.status
    );
    // Bad mount parameters.
    reg.post(
        "/v2/mount/fifth/blobs/uploads/?mount=sha256:zz&from=mount/src",
        b"",
    )
    .error(400, "DIGEST_INVALID");
    reg.post(
        &format!("/v2/mount/fifth/blobs/uploads/?mount={d}&from=Mount/SRC"),
        b"",
    )
    .error(400, "NAME_INVALID");
}

#[test]
fn push_cancel_upload() {
    let reg = Reg::start();
    let data = noise(100, 35);
    let loc = reg.start_upload("push/cancel");
    let loc = reg
        .patch(&loc, &data, Some((0, 99)))
        .expect(202)
        .hdr("location")
        .to_owned();
    reg.delete(&loc).expect(204);
    reg.get(&loc).error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.patch(&loc, &data, Some((100, 199)))
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.put_upload(&loc, &sha256(&data), b"", None)
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.delete(&loc).error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.get(&format!("/v2/push/cancel/blobs/{}", sha256(&data)))
        .expect(404);
}

#[test]
fn push_upload_sessions_belong_to_their_repository() {
    let reg = Reg::start();
    let loc = reg.start_upload("sess/a");
    let id = loc.rsplit('/').next().unwrap().to_owned();
    let other = format!("/v2/sess/b/blobs/uploads/{id}");
    reg.get(&other).error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.patch(&other, b"abc", Some((0, 2)))
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.put_upload(&other, &sha256(b"abc"), b"abc", None)
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.delete(&other).error(404, "BLOB_UPLOAD_UNKNOWN");
    // Still alive where it was opened.
    reg.get(&loc).expect(204);

    // Ids that were never issued, well-formed or not.
    for id in [
        "0123456789abcdef0123456789abcdef",
        "nope",
        "ABCDEF0123456789ABCDEF0123456789",
    ] {
        let p = format!("/v2/sess/a/blobs/uploads/{id}");
        reg.get(&p).error(404, "BLOB_UPLOAD_UNKNOWN");
        reg.patch(&p, b"x", None).error(404, "BLOB_UPLOAD_UNKNOWN");
        reg.delete(&p).error(404, "BLOB_UPLOAD_UNKNOWN");
    }
}

#[test]
fn push_manifest_by_tag_and_by_digest() {
    let reg = Reg::start();
    let repo = "push/manifest";
    let img = Image::new("push-manifest");
    reg.push_blob(repo, &img.config);
    for l in &img.layers {
        reg.push_blob(repo, l);
    }
    // By tag.
    let r = reg
        .put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), img.digest);
    let loc = r.hdr("location").to_owned();
    assert_eq!(
        reg.get(&loc).expect(200).body,
        img.manifest,
        "Location is a pullable manifest URL"
    );
    // By digest.
    let other = image_manifest(&img.config, &img.layers[..1]);
    let od = sha256(&other);
    let r = reg
        .put_manifest(repo, &od, Some(OCI_MANIFEST), &other)
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), od);
    assert_eq!(r.hdr("location"), format!("/v2/{repo}/manifests/{od}"));
    assert_eq!(
        reg.get(&format!("/v2/{repo}/manifests/{od}"))
            .expect(200)
            .body,
        other
    );
    assert_eq!(
        reg.get(&format!("/v2/{repo}/tags/list")).expect(200).tags(),
        vec!["v1"],
        "push by digest makes no tag"
    );
    // Re-pointing a tag.
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &other)
        .expect(201);
    let r = reg.get(&format!("/v2/{repo}/manifests/v1")).expect(200);
    assert_eq!(r.hdr("docker-content-digest"), od);
    // The old manifest is still there by digest.
    reg.get(&format!("/v2/{repo}/manifests/{}", img.digest))
        .expect(200);
    // Without Content-Type the body's mediaType decides.
    let third = image_manifest(&img.layers[1], &img.layers[..1]);
    reg.push_blob(repo, &img.layers[1]);
    reg.put_manifest(repo, "noct", None, &third).expect(201);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/manifests/noct"))
            .expect(200)
            .hdr("content-type"),
        OCI_MANIFEST
    );
}

#[test]
fn push_manifest_by_sha512_digest_with_tags() {
    use sha2::Digest as _;
    let reg = Reg::start();
    let repo = "push/sha512tags";
    let img = Image::new("push-sha512-tags");
    reg.push_blob(repo, &img.config);
    for l in &img.layers {
        reg.push_blob(repo, l);
    }
    let d = format!(
        "sha512:{}",
        hex::encode(sha2::Sha512::digest(&img.manifest))
    );
    let r = reg
        .put_manifest(
            repo,
            &format!("{d}?tag=1.0&tag=latest&tag=1.0"),
            Some(OCI_MANIFEST),
            &img.manifest,
        )
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), d);
    let applied: BTreeSet<&str> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(str::trim)
        .collect();
    assert_eq!(applied, BTreeSet::from(["1.0", "latest"]), "OCI-Tag");
    // A tag answers with the algorithm the manifest was pushed under.
    for tag in ["1.0", "latest"] {
        let r = reg.get(&format!("/v2/{repo}/manifests/{tag}")).expect(200);
        assert_eq!(r.hdr("docker-content-digest"), d, "GET {tag}");
        assert_eq!(r.body, img.manifest);
        let r = reg.head(&format!("/v2/{repo}/manifests/{tag}")).expect(200);
        assert_eq!(r.hdr("docker-content-digest"), d, "HEAD {tag}");
    }
    let r = reg.get(&format!("/v2/{repo}/manifests/{d}")).expect(200);
    assert_eq!(r.hdr("docker-content-digest"), d);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/tags/list")).expect(200).tags(),
        vec!["1.0", "latest"]
    );
    // Every blob GET and HEAD names its digest too.
    for l in &img.layers {
        let ld = sha256(l);
        for r in [
            reg.get(&format!("/v2/{repo}/blobs/{ld}")).expect(200),
            reg.head(&format!("/v2/{repo}/blobs/{ld}")).expect(200),
        ] {
            assert_eq!(r.hdr("docker-content-digest"), ld);
        }
    }
    // One bad tag refuses the whole push: nothing is stored.
    let other = image_manifest(&img.config, &img.layers[..1]);
    let od = sha256(&other);
    reg.put_manifest(
        repo,
        &format!("{od}?tag=ok&tag=-bad"),
        Some(OCI_MANIFEST),
        &other,
    )
    .error(400, "TAG_INVALID");
    reg.get(&format!("/v2/{repo}/manifests/{od}"))
        .error(404, "MANIFEST_UNKNOWN");
    reg.get(&format!("/v2/{repo}/manifests/ok"))
        .error(404, "MANIFEST_UNKNOWN");
}

#[test]
fn push_manifest_referencing_missing_blobs() {
    let reg = Reg::start();
    let repo = "push/missing";
    let img = Image::new("missing-blobs");
    // Nothing pushed: config missing.
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    // Config present, one layer missing.
    reg.push_blob(repo, &img.config);
    reg.push_blob(repo, &img.layers[0]);
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    // The missing layer exists, but in another repository.
    reg.push_blob("push/elsewhere", &img.layers[1]);
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    reg.put_manifest(repo, &img.digest, Some(OCI_MANIFEST), &img.manifest)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    // Nothing was recorded.
    reg.get(&format!("/v2/{repo}/manifests/v1")).expect(404);
    reg.get(&format!("/v2/{repo}/manifests/{}", img.digest))
        .expect(404);
    // A descriptor whose size does not match the blob.
    reg.push_blob(repo, &img.layers[1]);
    let mut v: Value = serde_json::from_slice(&img.manifest).unwrap();
    v["layers"][0]["size"] = json!(img.layers[0].len() + 1);
    let r = reg
        .put_manifest(
            repo,
            "badsize",
            Some(OCI_MANIFEST),
            &serde_json::to_vec(&v).unwrap(),
        )
        .expect(400);
    assert!(
        ["MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "SIZE_INVALID"].contains(&r.code().as_str()),
        "{}",
        r.text()
    );
    // With everything present it goes through.
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
}

#[test]
fn push_manifest_digest_mismatch() {
    let reg = Reg::start();
    let repo = "push/mdigest";
    let img = Image::new("manifest-digest");
    reg.push_blob(repo, &img.config);
    for l in &img.layers {
        reg.push_blob(repo, l);
    }
    let wrong = sha256(b"not this manifest");
    reg.put_manifest(repo, &wrong, Some(OCI_MANIFEST), &img.manifest)
        .error(400, "DIGEST_INVALID");
    reg.get(&format!("/v2/{repo}/manifests/{wrong}"))
        .expect(404);
    reg.get(&format!("/v2/{repo}/manifests/{}", img.digest))
        .expect(404);
}

#[test]
fn push_invalid_manifests() {
    let reg = Reg::start();
    let repo = "push/invalid";
    let config = b"{}".to_vec();
    reg.push_blob(repo, &config);
    let bodies: Vec<(Option<&str>, Vec<u8>)> = vec![
        (Some(OCI_MANIFEST), b"not json".to_vec()),
        (Some(OCI_MANIFEST), b"".to_vec()),
        (Some(OCI_MANIFEST), b"[]".to_vec()),
        (Some(OCI_MANIFEST), b"{}".to_vec()),
        (Some(OCI_MANIFEST), b"{\"schemaVersion\":2,".to_vec()),
        (None, br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#.to_vec()),
        (Some(OCI_MANIFEST), serde_json::to_vec(&json!({"schemaVersion": 3, "mediaType": OCI_MANIFEST, "config": desc(OCI_EMPTY, &config), "layers": []})).unwrap()),
        (Some(OCI_MANIFEST), serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []})).unwrap()),
        (Some(OCI_MANIFEST), serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": "sha256:abc", "size": 2}, "layers": []})).unwrap()),
        (Some(OCI_INDEX), serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "layers": []})).unwrap()),
        (Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), serde_json::to_vec(&json!({"schemaVersion": 1, "name": "x"})).unwrap()),
    ];
    for (i, (ct, body)) in bodies.iter().enumerate() {
        reg.put_manifest(repo, &format!("bad{i}"), *ct, body)
            .error(400, "MANIFEST_INVALID");
        reg.get(&format!("/v2/{repo}/manifests/bad{i}")).expect(404);
    }
}

#[test]
fn push_manifest_content_type_must_match_media_type() {
    let reg = Reg::start();
    let repo = "push/ctype";
    let img = Image::new("content-type");
    reg.push_blob(repo, &img.config);
    for l in &img.layers {
        reg.push_blob(repo, l);
    }
    for ct in [
        DOCKER_MANIFEST,
        OCI_INDEX,
        "text/plain",
        "application/vnd.oci.image.manifest.v2+json",
    ] {
        reg.put_manifest(repo, "v1", Some(ct), &img.manifest)
            .error(400, "MANIFEST_INVALID");
    }
    reg.get(&format!("/v2/{repo}/manifests/v1")).expect(404);
    // Parameters on the right type are fine.
    reg.put_manifest(
        repo,
        "v1",
        Some(&format!("{OCI_MANIFEST}; charset=utf-8")),
        &img.manifest,
    )
    .expect(201);
}

#[test]
fn push_manifest_size_limit() {
    let reg = Reg::start();
    let repo = "push/big";
    let config = b"{}".to_vec();
    reg.push_blob(repo, &config);
    let manifest_of = |total: usize| -> Vec<u8> {
        let mut v = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_EMPTY, &config),
            "layers": [],
            "annotations": {"pad": ""}
        });
        let base = serde_json::to_vec(&v).unwrap().len();
        v["annotations"]["pad"] = json!("x".repeat(total - base));
        let b = serde_json::to_vec(&v).unwrap();
        assert_eq!(b.len(), total);
        b
    };
    // 4 MiB is the size the spec says registries should accept.
    let at_limit = manifest_of(4 * 1024 * 1024);
    reg.put_manifest(repo, "four-mib", Some(OCI_MANIFEST), &at_limit)
        .expect(201);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/manifests/four-mib"))
            .expect(200)
            .body,
        at_limit
    );
    let over = manifest_of(4 * 1024 * 1024 + 1);
    reg.put_manifest(repo, "too-big", Some(OCI_MANIFEST), &over)
        .expect(413);
    reg.get(&format!("/v2/{repo}/manifests/too-big"))
        .expect(404);
}

#[test]
fn push_index_requires_its_manifests() {
    let reg = Reg::start();
    let repo = "push/index";
    let a = Image::new("index-a");
    let b = Image::new("index-b");
    let index = index_of(&[(OCI_MANIFEST, &a.manifest), (OCI_MANIFEST, &b.manifest)]);
    reg.put_manifest(repo, "multi", Some(OCI_INDEX), &index)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    reg.push_image(repo, "a", "index-a");
    // One child still missing.
    reg.put_manifest(repo, "multi", Some(OCI_INDEX), &index)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    // A child that exists only in another repository does not count.
    reg.push_image("push/index-other", "b", "index-b");
    reg.put_manifest(repo, "multi", Some(OCI_INDEX), &index)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    reg.get(&format!("/v2/{repo}/manifests/multi")).expect(404);

    reg.push_image(repo, "b", "index-b");
    let r = reg
        .put_manifest(repo, "multi", Some(OCI_INDEX), &index)
        .expect(201);
    assert_eq!(r.hdr("docker-content-digest"), sha256(&index));
    let g = reg.get(&format!("/v2/{repo}/manifests/multi")).expect(200);
    assert_eq!(g.hdr("content-type"), OCI_INDEX);
    assert_eq!(g.body, index);
}

#[test]
fn push_invalid_repository_names() {
    let reg = Reg::start();
    let d = sha256(b"x");
    let long = "a".repeat(256);
    let long_nested = format!("{}b", "abc/".repeat(64)); // 257 characters
    let names = [
        "Upper",
        "a/Upper",
        "a/../b",
        "..",
        "a/..",
        "./a",
        "a//b",
        "a/b/",
        "_a",
        "a/_b",
        "a-",
        "-a",
        "a.",
        "a..b",
        "a___b",
        "a%2fb",
        "a:b",
        "a@b",
        "é",
        long.as_str(),
        long_nested.as_str(),
    ];
    for name in names {
        for (method, path) in [
            ("GET", format!("/v2/{name}/tags/list")),
            ("GET", format!("/v2/{name}/manifests/latest")),
            ("HEAD", format!("/v2/{name}/manifests/latest")),
            ("GET", format!("/v2/{name}/blobs/{d}")),
            ("POST", format!("/v2/{name}/blobs/uploads/")),
            (
                "POST",
                format!("/v2/{name}/blobs/uploads/?digest={}", sha256(b"")),
            ),
            ("PUT", format!("/v2/{name}/manifests/latest")),
            ("DELETE", format!("/v2/{name}/blobs/{d}")),
            ("GET", format!("/v2/{name}/referrers/{d}")),
        ] {
            let path = path.replace('é', "%C3%A9");
            let r = reg.raw(method, &path, &[], b"");
            if method == "HEAD" {
                assert_eq!(r.status, 400, "{method} {path}");
            } else {
                r.error(400, "NAME_INVALID");
            }
        }
    }
    // A leading slash makes an empty first component.
    reg.raw("GET", "/v2//a/tags/list", &[], b"")
        .error(400, "NAME_INVALID");
}

/// The longest names the grammar allows (255 characters) must work end to
/// end, including on disk.
#[test]
fn push_longest_repository_names() {
    let reg = Reg::start();
    let flat = "a".repeat(255);
    let nested = format!("{}abc", "abcd/".repeat(50)); // 253
    let nested = format!("{nested}de"); // 255
    assert_eq!(flat.len(), 255);
    assert_eq!(nested.len(), 255);
    for name in [&flat, &nested] {
        let img = reg.push_image(name, "latest", "long-name");
        assert_eq!(
            reg.get(&format!("/v2/{name}/manifests/latest"))
                .expect(200)
                .body,
            img.manifest
        );
        assert_eq!(
            reg.get(&format!("/v2/{name}/tags/list")).expect(200).tags(),
            vec!["latest"]
        );
        let loc = reg.start_upload(name);
        reg.patch(&loc, b"abc", Some((0, 2))).expect(202);
    }
    let cat = reg.get("/v2/_catalog").expect(200).json();
    let repos = strings(&cat["repositories"]);
    assert!(
        repos.contains(&flat) && repos.contains(&nested),
        "{repos:?}"
    );
}

#[test]
fn push_invalid_and_boundary_tags() {
    let reg = Reg::start();
    let repo = "push/tags";
    let img = reg.push_image(repo, "base", "tags");
    let long_ok = format!("_{}", "a".repeat(127));
    let too_long = "a".repeat(129);
    for tag in [
        "-bad",
        ".bad",
        "bad+tag",
        "bad~tag",
        "bad%2Ftag",
        "%2e%2e",
        too_long.as_str(),
        "bad%00",
    ] {
        // A read of a reference that cannot exist is a missing manifest
        // (the conformance suite probes for missing manifests this way);
        // a write of one is the client's error.
        reg.raw("GET", &format!("/v2/{repo}/manifests/{tag}"), &[], b"")
            .error(404, "MANIFEST_UNKNOWN");
        reg.raw("HEAD", &format!("/v2/{repo}/manifests/{tag}"), &[], b"")
            .expect(404);
        let r = reg.raw(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("content-type", OCI_MANIFEST)],
            &img.manifest,
        );
        r.error(400, "TAG_INVALID");
    }
    for tag in [
        "v1.0",
        "_underscore",
        "UPPER-case_1.2",
        long_ok.as_str(),
        "0",
    ] {
        reg.put_manifest(repo, tag, Some(OCI_MANIFEST), &img.manifest)
            .expect(201);
        reg.get(&format!("/v2/{repo}/manifests/{tag}")).expect(200);
    }
    let tags = reg.get(&format!("/v2/{repo}/tags/list")).expect(200).tags();
    assert!(
        tags.contains(&long_ok) && tags.contains(&"UPPER-case_1.2".to_owned()),
        "{tags:?}"
    );
}

// =============================================================================
// Content discovery
// =============================================================================

/// Tags in the order the spec demands (lexical, i.e. byte order).
const TAGS: &[&str] = &["1.0", "C", "_x", "a", "b", "c10", "c2", "latest"];

fn tagged_repo(reg: &Reg, repo: &str) {
    let img = reg.push_image(repo, "latest", "tags-list");
    // Push in a scrambled order.
    for t in ["c2", "a", "_x", "1.0", "c10", "C", "b"] {
        reg.put_manifest(repo, t, Some(OCI_MANIFEST), &img.manifest)
            .expect(201);
    }
}

#[test]
fn discovery_tags_list() {
    let reg = Reg::start();
    let repo = "disc/tags";
    tagged_repo(&reg, repo);
    let r = reg.get(&format!("/v2/{repo}/tags/list")).expect(200);
    assert!(r.hdr("content-type").starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["name"], repo);
    assert_eq!(r.tags(), TAGS);
    assert!(r.header("link").is_none(), "no Link when everything fits");
    // Unknown repository.
    reg.get("/v2/disc/nothing/tags/list")
        .error(404, "NAME_UNKNOWN");
}

#[test]
fn discovery_tags_pagination() {
    let reg = Reg::start();
    let repo = "disc/pages";
    tagged_repo(&reg, repo);
    let list = |q: &str| reg.get(&format!("/v2/{repo}/tags/list?{q}"));

    // Follow Link headers from n=3 to the end.
    for n in [1usize, 2, 3, 7, 8] {
        let mut url = format!("/v2/{repo}/tags/list?n={n}");
        let mut all = Vec::new();
        let mut pages = 0;
        loop {
            let r = reg.get(&url).expect(200);
            let page = r.tags();
            assert!(page.len() <= n, "page of {} for n={n}", page.len());
            all.extend(page);
            pages += 1;
            assert!(pages <= TAGS.len() + 1, "pagination does not end");
            match r.next_link() {
                Some(next) => url = next,
                None => break,
            }
        }
        assert_eq!(all, TAGS, "n={n}: pages joined give the whole list");
    }

    let r = list("n=3").expect(200);
    assert_eq!(r.tags(), &TAGS[..3]);
    let link = r.hdr("link");
    assert!(
        link.starts_with(&format!("</v2/{repo}/tags/list?")) && link.ends_with("rel=\"next\""),
        "{link}"
    );

    // n=0: an empty list and no Link (spec: MUST).
    let r = list("n=0").expect(200);
    assert!(r.tags().is_empty(), "{}", r.text());
    assert!(r.header("link").is_none());
    // n larger than the count.
    let r = list("n=100").expect(200);
    assert_eq!(r.tags(), TAGS);
    assert!(r.header("link").is_none());
    // n equal to the count.
    let r = list(&format!("n={}", TAGS.len())).expect(200);
    assert_eq!(r.tags(), TAGS);
    // last = the last tag: nothing follows.
    let r = list("n=5&last=latest").expect(200);
    assert!(r.tags().is_empty());
    assert!(r.header("link").is_none());
    // last between two tags, with and without n.
    assert_eq!(list("last=b5").expect(200).tags(), ["c10", "c2", "latest"]);
    let r = list("n=1&last=b5").expect(200);
    assert_eq!(r.tags(), ["c10"]);
    assert!(r.next_link().is_some());
    // last before the first tag; last is exclusive.
    assert_eq!(list("last=0").expect(200).tags(), TAGS);
    assert_eq!(list("n=2&last=a").expect(200).tags(), ["b", "c10"]);
    assert!(list("last=zzz").expect(200).tags().is_empty());

    for bad in [
        "n=-1",
        "n=abc",
        "n=1.5",
        "n=",
        "n=99999999999999999999999999",
        "n=0x10",
    ] {
        let r = list(bad).expect(400);
        assert!(
            ["PAGINATION_NUMBER_INVALID", "UNSUPPORTED"].contains(&r.code().as_str()),
            "{bad}: {}",
            r.text()
        );
    }
}

#[test]
fn discovery_bad_query_encoding_is_400() {
    let reg = Reg::start();
    let repo = "disc/enc";
    tagged_repo(&reg, repo);
    let d = reg.push_blob(repo, b"abc");
    // Malformed percent-encoding, and encodings that decode to non-UTF-8:
    // a malformed request is a 400, whatever the parameter.
    let cases = [
        ("GET", format!("/v2/{repo}/tags/list?n=%zz")),
        ("GET", format!("/v2/{repo}/tags/list?last=%ff")),
        ("GET", format!("/v2/{repo}/tags/list?last=%")),
        ("GET", "/v2/_catalog?last=%ff".to_owned()),
        ("GET", format!("/v2/{repo}/referrers/{d}?artifactType=%ff")),
        ("POST", format!("/v2/{repo}/blobs/uploads/?digest=%zz")),
        (
            "POST",
            format!("/v2/{repo}/blobs/uploads/?mount=%zz&from={repo}"),
        ),
        (
            "POST",
            format!("/v2/{repo}/blobs/uploads/?mount={d}&from=%ff"),
        ),
    ];
    let mut wrong = Vec::new();
    for (method, target) in &cases {
        let r = reg.raw(method, target, &[], b"");
        if r.status != 400 {
            wrong.push(format!("{method} {target} -> {} {}", r.status, r.text()));
        }
    }
    assert!(
        wrong.is_empty(),
        "malformed query encodings not answered with 400:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn discovery_catalog() {
    let reg = Reg::start();
    let mut repos = vec![
        "zeta", "alpha", "cat/a", "cat/b", "cat/b/c", "cat-a", "cat/b.d",
    ];
    for r in &repos {
        reg.push_blob(r, r.as_bytes());
    }
    // A repository with only a manifest counts as well.
    reg.push_image("manifest/only", "v1", "catalog");
    repos.push("manifest/only");
    repos.sort();
    let r = reg.get("/v2/_catalog").expect(200);
    assert_eq!(strings(&r.json()["repositories"]), repos);
    assert!(r.header("link").is_none());

    for n in [1, 3, 7, 8, 50] {
        let mut url = format!("/v2/_catalog?n={n}");
        let mut all = Vec::new();
        loop {
            let r = reg.get(&url).expect(200);
            let page = strings(&r.json()["repositories"]);
            assert!(page.len() <= n);
            all.extend(page);
            assert!(
                all.len() <= repos.len(),
                "pagination repeats entries: {all:?}"
            );
            match r.next_link() {
                Some(next) => url = next,
                None => break,
            }
        }
        assert_eq!(all, repos, "n={n}");
    }
    let r = reg.get("/v2/_catalog?n=0").expect(200);
    assert!(strings(&r.json()["repositories"]).is_empty());
    assert!(r.header("link").is_none());
    assert_eq!(
        strings(&reg.get("/v2/_catalog?n=2&last=cat/b").expect(200).json()["repositories"]),
        ["cat/b.d", "cat/b/c"]
    );
    reg.get("/v2/_catalog?n=abc").expect(400);
}

#[test]
fn discovery_referrers() {
    let reg = Reg::start();
    let repo = "disc/referrers";
    let subject = reg.push_image(repo, "v1", "referrers-subject");
    let empty = b"{}".to_vec();
    reg.push_blob(repo, &empty);
    let sbom = b"{\"sbom\":true}".to_vec();
    reg.push_blob(repo, &sbom);
    let sig_config = b"{\"sig\":1}".to_vec();
    reg.push_blob(repo, &sig_config);
    let subject_desc = json!({"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.manifest.len()});

    // An artifact with artifactType, and an empty config.
    let a = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": desc(OCI_EMPTY, &empty),
        "layers": [desc("application/vnd.example.sbom.v1+json", &sbom)],
        "subject": subject_desc,
        "annotations": {"org.example.kind": "sbom"}
    }))
    .unwrap();
    let ad = sha256(&a);
    let r = reg
        .put_manifest(repo, &ad, Some(OCI_MANIFEST), &a)
        .expect(201);
    assert_eq!(r.hdr("oci-subject"), subject.digest);
    // An artifact typed by its config's media type.
    let b = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.example.signature.config", &sig_config),
        "layers": [],
        "subject": subject_desc,
        "annotations": {"org.example.kind": "signature"}
    }))
    .unwrap();
    let bd = sha256(&b);
    let r = reg
        .put_manifest(repo, &bd, Some(OCI_MANIFEST), &b)
        .expect(201);
    assert_eq!(r.hdr("oci-subject"), subject.digest);
    // An index can refer too.
    let idx = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.example.bundle",
        "manifests": [],
        "subject": subject_desc
    }))
    .unwrap();
    let id = sha256(&idx);
    let r = reg
        .put_manifest(repo, &id, Some(OCI_INDEX), &idx)
        .expect(201);
    assert_eq!(r.hdr("oci-subject"), subject.digest);

    let path = format!("/v2/{repo}/referrers/{}", subject.digest);
    let r = reg.get(&path).expect(200);
    assert_eq!(r.hdr("content-type"), OCI_INDEX);
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{v}");
    let find = |d: &str| {
        list.iter()
            .find(|m| m["digest"] == d)
            .unwrap_or_else(|| panic!("{d} not listed in {v}"))
            .clone()
    };
    let ea = find(&ad);
    assert_eq!(ea["mediaType"], OCI_MANIFEST);
    assert_eq!(ea["size"], a.len());
    assert_eq!(ea["artifactType"], "application/vnd.example.sbom");
    assert_eq!(ea["annotations"]["org.example.kind"], "sbom");
    let eb = find(&bd);
    assert_eq!(
        eb["artifactType"], "application/vnd.example.signature.config",
        "config mediaType stands in for artifactType"
    );
    assert_eq!(eb["annotations"]["org.example.kind"], "signature");
    let ei = find(&id);
    assert_eq!(ei["mediaType"], OCI_INDEX);
    assert_eq!(ei["artifactType"], "application/vnd.example.bundle");
    assert!(r.header("oci-filters-applied").is_none());

    // Filtering by artifactType.
    let r = reg
        .send(reg.req(
            Method::GET,
            &format!("{path}?artifactType=application%2Fvnd.example.sbom"),
        ))
        .expect(200);
    assert_eq!(r.hdr("oci-filters-applied"), "artifactType");
    assert_eq!(r.hdr("content-type"), OCI_INDEX);
    let v = r.json();
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["digest"], ad);
    let r = reg
        .send(reg.req(
            Method::GET,
            &format!("{path}?artifactType=application/vnd.example.none"),
        ))
        .expect(200);
    assert_eq!(r.hdr("oci-filters-applied"), "artifactType");
    assert!(r.json()["manifests"].as_array().unwrap().is_empty());

    // A digest with no referrers, and a subject that does not exist.
    for d in [sha256(&subject.config), ZERO_DIGEST.to_owned()] {
        let r = reg.get(&format!("/v2/{repo}/referrers/{d}")).expect(200);
        assert_eq!(r.hdr("content-type"), OCI_INDEX);
        let v = r.json();
        assert_eq!(v["schemaVersion"], 2);
        assert!(v["manifests"].as_array().unwrap().is_empty(), "{v}");
    }
    // Referrers are per repository.
    let r = reg.get(&format!("/v2/disc/other/referrers/{}", subject.digest));
    if r.status == 200 {
        assert!(r.json()["manifests"].as_array().unwrap().is_empty());
    } else {
        r.expect(404);
    }

    // Deleting a referrer takes it off the list.
    reg.delete(&format!("/v2/{repo}/manifests/{ad}"))
        .expect(202);
    let v = reg.get(&path).expect(200).json();
    let digests: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests.len(), 2, "{v}");
    assert!(!digests.contains(&ad.as_str()));
}

/// A manifest may name a subject the registry does not have (yet).
#[test]
fn discovery_referrer_to_missing_subject() {
    let reg = Reg::start();
    let repo = "disc/dangling";
    let empty = b"{}".to_vec();
    reg.push_blob(repo, &empty);
    let missing = sha256(b"a manifest pushed later");
    let a = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sig",
        "config": desc(OCI_EMPTY, &empty),
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": missing, "size": 123}
    }))
    .unwrap();
    let r = reg
        .put_manifest(repo, "sig", Some(OCI_MANIFEST), &a)
        .expect(201);
    assert_eq!(r.hdr("oci-subject"), missing);
    let v = reg
        .get(&format!("/v2/{repo}/referrers/{missing}"))
        .expect(200)
        .json();
    assert_eq!(v["manifests"][0]["digest"], sha256(&a));
}

// =============================================================================
// Content management
// =============================================================================

#[test]
fn management_delete_tag() {
    let reg = Reg::start();
    let repo = "mgmt/tag";
    let img = reg.push_image(repo, "v1", "delete-tag");
    reg.put_manifest(repo, "v2", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
    reg.delete(&format!("/v2/{repo}/manifests/v1")).expect(202);
    reg.get(&format!("/v2/{repo}/manifests/v1"))
        .error(404, "MANIFEST_UNKNOWN");
    reg.head(&format!("/v2/{repo}/manifests/v1")).expect(404);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/manifests/{}", img.digest))
            .expect(200)
            .body,
        img.manifest
    );
    reg.get(&format!("/v2/{repo}/manifests/v2")).expect(200);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/tags/list")).expect(200).tags(),
        ["v2"]
    );
    reg.delete(&format!("/v2/{repo}/manifests/v1"))
        .error(404, "MANIFEST_UNKNOWN");
}

#[test]
fn management_delete_manifest() {
    let reg = Reg::start();
    let repo = "mgmt/manifest";
    let img = reg.push_image(repo, "v1", "delete-manifest");
    reg.put_manifest(repo, "v2", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
    let keep = reg.push_image(repo, "keep", "delete-manifest-keep");
    let path = format!("/v2/{repo}/manifests/{}", img.digest);
    reg.delete(&path).expect(202);
    reg.get(&path).error(404, "MANIFEST_UNKNOWN");
    reg.head(&path).expect(404);
    // Tags that pointed at it are gone too.
    reg.get(&format!("/v2/{repo}/manifests/v1")).expect(404);
    reg.get(&format!("/v2/{repo}/manifests/v2")).expect(404);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/tags/list")).expect(200).tags(),
        ["keep"]
    );
    reg.get(&format!("/v2/{repo}/manifests/{}", keep.digest))
        .expect(200);
    reg.delete(&path).error(404, "MANIFEST_UNKNOWN");
    reg.delete(&format!("/v2/{repo}/manifests/{ZERO_DIGEST}"))
        .error(404, "MANIFEST_UNKNOWN");
    // Pushing it again works.
    reg.push_manifest(repo, "v1", &img.manifest);
    reg.get(&path).expect(200);
}

#[test]
fn management_delete_blob() {
    let reg = Reg::start();
    let repo = "mgmt/blob";
    let img = Image::new("delete-blob");
    reg.push_blob(repo, &img.config);
    let layer = reg.push_blob(repo, &img.layers[0]);
    reg.push_blob(repo, &img.layers[1]);
    reg.push_blob("mgmt/other", &img.layers[0]);
    let path = format!("/v2/{repo}/blobs/{layer}");
    reg.delete(&path).expect(202);
    reg.get(&path).error(404, "BLOB_UNKNOWN");
    reg.head(&path).expect(404);
    reg.delete(&path).error(404, "BLOB_UNKNOWN");
    // Other repositories keep their link.
    assert_eq!(
        reg.get(&format!("/v2/mgmt/other/blobs/{layer}"))
            .expect(200)
            .body,
        img.layers[0]
    );
    // A manifest can no longer reference it here.
    reg.put_manifest(repo, "v1", Some(OCI_MANIFEST), &img.manifest)
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    reg.delete(&format!("/v2/{repo}/blobs/{ZERO_DIGEST}"))
        .error(404, "BLOB_UNKNOWN");
}

#[test]
fn management_delete_disabled() {
    let reg = Reg::with_config("registry:\n  delete_enabled: false\n");
    let repo = "mgmt/nodelete";
    let img = reg.push_image(repo, "v1", "no-delete");
    let layer = sha256(&img.layers[0]);
    for path in [
        format!("/v2/{repo}/manifests/v1"),
        format!("/v2/{repo}/manifests/{}", img.digest),
        format!("/v2/{repo}/blobs/{layer}"),
    ] {
        reg.delete(&path).error(405, "UNSUPPORTED");
    }
    reg.get(&format!("/v2/{repo}/manifests/v1")).expect(200);
    reg.get(&format!("/v2/{repo}/manifests/{}", img.digest))
        .expect(200);
    reg.get(&format!("/v2/{repo}/blobs/{layer}")).expect(200);
    // Cancelling an upload is not a content deletion.
    let loc = reg.start_upload(repo);
    reg.delete(&loc).expect(204);
}

// =============================================================================
// Errors and hostile input
// =============================================================================

#[test]
fn errors_methods_and_unknown_paths() {
    let reg = Reg::start();
    let d = reg.push_blob("err/m", b"abc");
    for (method, path, status) in [
        ("GET", "/".to_owned(), 404),
        ("GET", "/v3/".to_owned(), 404),
        ("GET", "/v2x".to_owned(), 404),
        ("GET", "/v2/err/m/unknown/x".to_owned(), 404),
        ("GET", "/v2/err/m".to_owned(), 404),
        ("DELETE", "/v2/".to_owned(), 405),
        ("POST", "/v2/".to_owned(), 405),
        ("PUT", "/v2/_catalog".to_owned(), 405),
        ("POST", "/v2/err/m/manifests/latest".to_owned(), 405),
        ("PATCH", format!("/v2/err/m/blobs/{d}"), 405),
        ("PUT", format!("/v2/err/m/blobs/{d}"), 405),
        ("GET", "/v2/err/m/blobs/uploads/".to_owned(), 405),
        ("DELETE", "/v2/err/m/tags/list".to_owned(), 405),
        ("BREW", "/v2/".to_owned(), 405),
    ] {
        let r = reg.raw(method, &path, &[], b"").expect(status);
        assert_eq!(r.code(), "UNSUPPORTED", "{method} {path}");
        if status == 405 {
            // RFC 9110: a 405 lists what the resource does allow.
            let allow = r.hdr("allow").to_owned();
            assert!(
                !allow.is_empty() && !allow.split(", ").any(|m| m == method),
                "{method} {path}: Allow {allow:?}"
            );
        }
    }
    let r = reg
        .raw("PUT", "/v2/err/m/blobs/uploads/", &[], b"")
        .expect(405);
    assert_eq!(r.hdr("allow"), "POST");
}

/// A client that shuts down its sending side after the request (scripted
/// health checks, `nc -N`) still gets the response.
#[test]
fn errors_half_closed_clients_get_their_answer() {
    let reg = Reg::start();
    let mut s = TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: kura\r\n\r\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "answer: {text:?}");
}

/// Path traversal, odd encodings and oversized input: always a 4xx with an
/// error code, never a 5xx, and nothing written outside the data directory.
#[test]
fn errors_hostile_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("nest").join("data");
    std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
    let reg = Reg::with(
        KuraOptions {
            data_dir: Some(data_dir.clone()),
            ..Default::default()
        },
        None,
    );
    let marker = format!("kuraevil{}", std::process::id());
    let good = noise(64, 41);
    let gd = reg.push_blob("h/a", &good);
    let hex = &gd[7..];
    let m = reg.push_image("h/a", "v1", "hostile");
    let up = reg.start_upload("h/a");
    let up_id = up.rsplit('/').next().unwrap().to_owned();
    let huge = "a/".repeat(5000) + "a";
    let huge_flat = "x".repeat(20_000);
    let huge_tag = "t".repeat(10_000);
    let trav = format!("..%2F..%2F..%2F..%2F{marker}");

    let requests: Vec<(&str, String)> = vec![
        ("GET", format!("/v2/h/a/%2e%2e/blobs/{gd}")),
        ("GET", format!("/v2/h/%2e%2e/%2e%2e/blobs/{gd}")),
        ("GET", format!("/v2/%2e%2e/%2e%2e/%2e%2e/{marker}")),
        ("GET", "/v2/../../../etc/passwd".to_owned()),
        ("GET", format!("/v2/h/a/../../h/a/blobs/{gd}")),
        (
            "GET",
            "/v2/h/a/blobs/..%2f..%2f..%2fetc%2fpasswd".to_owned(),
        ),
        ("GET", format!("/v2/h/a/blobs/sha256:{hex}%2f..%2f..")),
        ("GET", format!("/v2/h/a/blobs/sha256%3a{hex}%00")),
        ("GET", "/v2/h/a/blobs/%ff%fe".to_owned()),
        ("GET", "/v2/h/a/blobs/%".to_owned()),
        ("GET", "/v2/h/a/manifests/..%2f..%2fetc%2fpasswd".to_owned()),
        ("GET", "/v2/h/a/manifests/latest%00".to_owned()),
        ("GET", "/v2/h/a/manifests/%ff".to_owned()),
        ("GET", format!("/v2/h/a/manifests/{huge_tag}")),
        ("PUT", format!("/v2/h/a/manifests/{trav}")),
        ("PUT", format!("/v2/h/a%2f..%2f..%2f{marker}/manifests/v1")),
        ("DELETE", format!("/v2/h/a/manifests/{trav}")),
        ("POST", format!("/v2/h/a/blobs/uploads/{trav}")),
        ("PATCH", format!("/v2/h/a/blobs/uploads/{trav}")),
        ("PUT", format!("/v2/h/a/blobs/uploads/{trav}?digest={gd}")),
        ("DELETE", format!("/v2/h/a/blobs/uploads/{trav}")),
        ("GET", format!("/v2/h/a/blobs/uploads/{up_id}%2f..")),
        ("PATCH", format!("/v2/h/a/blobs/uploads/../../{marker}")),
        (
            "PUT",
            format!("/v2/h/a/blobs/uploads/{up_id}?digest=sha256:{hex}%2f..%2f{marker}"),
        ),
        (
            "POST",
            format!("/v2/h/a/blobs/uploads/?digest=..%2f..%2f{marker}"),
        ),
        (
            "POST",
            format!("/v2/h/a/blobs/uploads/?mount={gd}&from=..%2f..%2f{marker}"),
        ),
        (
            "POST",
            format!("/v2/h/a/blobs/uploads/?mount=..%2f{marker}&from=h/a"),
        ),
        ("GET", format!("/v2/h/a/referrers/..%2f{marker}")),
        ("GET", format!("/v2/{huge}/tags/list")),
        ("GET", format!("/v2/{huge_flat}/manifests/latest")),
        ("POST", format!("/v2/{huge}/blobs/uploads/")),
        ("GET", "/v2/h/a/tags/list?n=abc".to_owned()),
        ("GET", "/v2/h/a/tags/list?n=-5".to_owned()),
        ("GET", "/v2/h/a/tags/list?n=1e3".to_owned()),
        ("GET", "/v2/_catalog?n=%20".to_owned()),
        ("GET", "/v2/_catalog?n=18446744073709551616".to_owned()),
        ("GET", "/v2/h/a/blobs/uploads/".to_owned()),
        ("GET", "/v2/_catalog/x".to_owned()),
        ("GET", "/v2/h/a/tags".to_owned()),
        ("GET", "/v2/h/a/manifests/".to_owned()),
        ("GET", "/v2/h/a/blobs/".to_owned()),
        ("GET", "/v2/h/a/referrers/".to_owned()),
        ("GET", "/v2/h/a/blobs/uploads/x/y".to_owned()),
        ("GET", "/v2//blobs/uploads/".to_owned()),
        ("GET", "/v2/manifests/latest".to_owned()),
    ];
    for (method, path) in &requests {
        let r = reg.raw(method, path, &[("content-type", OCI_MANIFEST)], &m.manifest);
        assert!(
            (400..500).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.text()
        );
        let _ = r.code();
    }

    // Bad headers on real resources.
    let blob = format!("/v2/h/a/blobs/{gd}");
    for range in [
        "bytes=99999999999999999999999-",
        "bytes=--1",
        "bytes=0-1-2",
        "bytes= 5 - 3",
        "bytes=-99999999999999999999",
    ] {
        let r = reg.raw("GET", &blob, &[("range", range)], b"");
        assert!(
            r.status == 416 || r.status == 200 || r.status == 206,
            "Range {range:?}: {}",
            r.status
        );
    }
    for cr in [
        "bytes */*",
        "99999999999999999999-1",
        "1-0",
        "0--1",
        "a-b",
        "0-1/x",
        "bytes 0-",
    ] {
        let r = reg.raw("PATCH", &up, &[("content-range", cr)], b"abc");
        assert!(
            r.status == 400 || r.status == 416,
            "Content-Range {cr:?}: {} {}",
            r.status,
            r.text()
        );
    }
    // Manifests with absurd descriptors.
    for body in [
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": format!("sha256:{hex}/../../{marker}"), "size": 2}, "layers": []}),
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": gd, "size": -1}, "layers": []}),
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": gd, "size": 1e300}, "layers": []}),
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": gd, "size": 64}, "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": format!("../{marker}"), "size": 1}}),
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:../../x", "size": 1}]}),
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_EMPTY, "digest": gd, "size": 64}, "layers": [{"mediaType": OCI_LAYER, "digest": gd, "size": 64}], "annotations": {"a": 1}}),
        json!({"schemaVersion": "2"}),
        json!(null),
        json!("string"),
    ] {
        let r = reg.put_manifest("h/a", "absurd", None, &serde_json::to_vec(&body).unwrap());
        assert_eq!(r.status, 400, "{body}: {} {}", r.status, r.text());
    }
    // Deeply nested JSON.
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let r = reg.put_manifest("h/a", "deep", Some(OCI_MANIFEST), deep.as_bytes());
    r.error(400, "MANIFEST_INVALID");

    // The registry still works, and nothing landed outside the data dir.
    assert_eq!(reg.get(&blob).expect(200).body, good);
    let mut stray = Vec::new();
    walk(tmp.path(), &mut |p| {
        if !p.starts_with(&data_dir) && !p.to_string_lossy().contains(".log-") {
            stray.push(p.to_owned());
        }
        if p.to_string_lossy().contains(&marker) {
            stray.push(p.to_owned());
        }
    });
    assert!(
        stray.is_empty(),
        "files outside the data dir or named after the marker: {stray:?}"
    );
    for dir in [Path::new("/tmp"), Path::new("/"), Path::new("/etc")] {
        assert!(
            !dir.join(&marker).exists(),
            "{} was created",
            dir.join(&marker).display()
        );
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

// =============================================================================
// Authentication
// =============================================================================

fn htpasswd_config(dir: &Path, anonymous_pull: bool) -> PathBuf {
    let out = Command::new("htpasswd")
        .args(["-nbB", "user", "pass"])
        .output()
        .expect("running htpasswd");
    assert!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("user:$2"), "not a bcrypt entry: {line}");
    let pw = dir.join("htpasswd");
    std::fs::write(&pw, line.trim()).unwrap();
    let cfg = dir.join("kura.yaml");
    std::fs::write(
        &cfg,
        format!(
            "auth:\n  htpasswd: {}\n  anonymous_pull: {anonymous_pull}\n",
            pw.display()
        ),
    )
    .unwrap();
    cfg
}

fn auth_reg(anonymous_pull: bool) -> Reg {
    let dir = tempfile::tempdir().unwrap();
    let cfg = htpasswd_config(dir.path(), anonymous_pull);
    Reg::with(
        KuraOptions {
            config: Some(cfg),
            ..Default::default()
        },
        Some(dir),
    )
}

#[track_caller]
fn assert_challenge(r: Resp) {
    let r = if r.method == "HEAD" {
        r.expect(401)
    } else {
        r.error(401, "UNAUTHORIZED")
    };
    let ch = r.hdr("www-authenticate");
    assert!(ch.starts_with("Basic realm="), "challenge {ch:?}");
}

#[test]
fn auth_anonymous_pull_authenticated_push() {
    let reg = auth_reg(true);
    let user = reg.as_user("user", "pass");
    let img = user.push_image("auth/repo", "v1", "auth");

    // Anonymous pulls work.
    let anon = &reg.api;
    assert_eq!(
        anon.get("/v2/auth/repo/manifests/v1").expect(200).body,
        img.manifest
    );
    anon.head(&format!("/v2/auth/repo/manifests/{}", img.digest))
        .expect(200);
    assert_eq!(
        anon.get(&format!("/v2/auth/repo/blobs/{}", sha256(&img.config)))
            .expect(200)
            .body,
        img.config
    );
    anon.get("/v2/auth/repo/tags/list").expect(200);
    anon.get("/v2/_catalog").expect(200);

    // Anonymous writes are challenged.
    assert_challenge(anon.post("/v2/auth/repo/blobs/uploads/", b""));
    assert_challenge(anon.post(
        &format!("/v2/auth/repo/blobs/uploads/?digest={}", sha256(b"x")),
        b"x",
    ));
    assert_challenge(anon.put_manifest("auth/repo", "v2", Some(OCI_MANIFEST), &img.manifest));
    assert_challenge(anon.delete("/v2/auth/repo/manifests/v1"));
    assert_challenge(anon.delete(&format!("/v2/auth/repo/blobs/{}", sha256(&img.config))));
    // An upload session opened by the user cannot be driven anonymously.
    let loc = user.start_upload("auth/repo");
    assert_challenge(anon.patch(&loc, b"abc", Some((0, 2))));
    assert_challenge(anon.put_upload(&loc, &sha256(b"abc"), b"abc", None));
    assert_challenge(anon.delete(&loc));

    // Wrong credentials are challenged, for writes and for /v2/.
    for (u, p) in [
        ("user", "wrong"),
        ("nobody", "pass"),
        ("user", ""),
        ("", ""),
    ] {
        let bad = reg.as_user(u, p);
        assert_challenge(bad.post("/v2/auth/repo/blobs/uploads/", b""));
        assert_challenge(bad.get("/v2/"));
    }
    // Garbage Authorization headers.
    for h in [
        "Basic",
        "Basic !!!notbase64",
        "Bearer abc",
        "Basic dXNlcg==",
    ] {
        assert_challenge(
            anon.send(
                anon.req(Method::POST, "/v2/auth/repo/blobs/uploads/")
                    .header("authorization", h),
            ),
        );
    }

    // The user can do everything.
    user.get("/v2/").expect(200);
    user.put_manifest("auth/repo", "v2", Some(OCI_MANIFEST), &img.manifest)
        .expect(201);
    user.delete("/v2/auth/repo/manifests/v2").expect(202);
    user.delete(&loc).expect(204);
    // /v2/ without credentials tells clients how to authenticate.
    assert_challenge(anon.get("/v2/"));
}

#[test]
fn auth_without_anonymous_pull() {
    let reg = auth_reg(false);
    let user = reg.as_user("user", "pass");
    let img = user.push_image("auth/private", "v1", "auth-private");
    let anon = &reg.api;
    assert_challenge(anon.get("/v2/auth/private/manifests/v1"));
    assert_challenge(anon.head("/v2/auth/private/manifests/v1"));
    assert_challenge(anon.get(&format!("/v2/auth/private/blobs/{}", sha256(&img.config))));
    assert_challenge(anon.get("/v2/auth/private/tags/list"));
    assert_challenge(anon.get("/v2/_catalog"));
    assert_challenge(
        reg.as_user("user", "nope")
            .get("/v2/auth/private/manifests/v1"),
    );
    assert_eq!(
        user.get("/v2/auth/private/manifests/v1").expect(200).body,
        img.manifest
    );
}

// =============================================================================
// TLS
// =============================================================================

fn tls_api(kura: &Kura, ca_pem: &[u8]) -> Api {
    init_crypto();
    let cert = reqwest::Certificate::from_pem(ca_pem).expect("PEM certificate");
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .tls_certs_only([cert])
        .build()
        .expect("TLS client");
    Api {
        base: kura.url.clone(),
        port: kura.port,
        client,
        auth: None,
    }
}

#[track_caller]
fn tls_round_trip(api: &Api) {
    assert!(api.base.starts_with("https://"));
    api.get("/v2/").expect(200);
    let img = api.push_image("tls/repo", "v1", "tls");
    assert_eq!(
        api.get("/v2/tls/repo/manifests/v1").expect(200).body,
        img.manifest
    );
}

#[test]
fn tls_self_signed() {
    let kura = Kura::start_with(KuraOptions {
        extra_args: vec!["--tls-self-signed".into()],
        https: true,
        ..Default::default()
    })
    .expect("kura starts with TLS");
    let cert_path = kura.data_dir.join("self-signed.crt");
    // The port opens before the certificate is written: wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pem = loop {
        if let Ok(p) = std::fs::read(&cert_path) {
            if p.windows(25).any(|w| w == b"-----END CERTIFICATE-----") {
                break p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            cert_path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let api = tls_api(&kura, &pem);
    tls_round_trip(&api);
    // Not trusting the certificate fails the handshake; plain HTTP gets no registry answer.
    let untrusted = Client::builder()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .unwrap();
    assert!(untrusted.get(format!("{}/v2/", kura.url)).send().is_err());
    let plain = http_client()
        .get(format!("http://127.0.0.1:{}/v2/", kura.port))
        .send();
    assert!(
        plain.map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP answered 200 on the TLS port"
    );
}

/// `curl` (a client that is not ours) with `flags`, fetching `urls` in
/// order; returns (`%{http_version}`, `%{http_code}`, `%{num_connects}`)
/// per URL, and the last body.
fn curl_w(flags: &[&str], urls: &[&str]) -> (Vec<(String, String, String)>, Vec<u8>) {
    let body = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = std::process::Command::new("curl");
    cmd.arg("-sS")
        .args(["-w", "%{http_version} %{http_code} %{num_connects}\\n"])
        .args(flags);
    for u in urls {
        cmd.arg("-o").arg(body.path()).arg(u);
    }
    let out = cmd.output().expect("running curl");
    assert!(
        out.status.success(),
        "curl {flags:?} {urls:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "curl -w output: {l:?}");
            (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
        })
        .collect();
    (lines, std::fs::read(body.path()).unwrap())
}

#[test]
fn http2_cleartext_and_tls_and_http1_keep_alive() {
    let reg = Reg::start();
    let img = reg.push_image("proto/repo", "v1", "h2");
    let manifest = format!("{}/v2/proto/repo/manifests/{}", reg.base, img.digest);
    // h2c with prior knowledge (what gRPC-style clients and some proxies use).
    let (w, body) = curl_w(&["--http2-prior-knowledge"], &[&manifest]);
    assert_eq!(w, [("2".into(), "200".into(), "1".into())]);
    assert_eq!(body, img.manifest);
    // HTTP/1.1: the second request reuses the first connection.
    let (w, _) = curl_w(&["--http1.1"], &[&manifest, &manifest]);
    assert_eq!(
        w,
        [
            ("1.1".into(), "200".into(), "1".into()),
            ("1.1".into(), "200".into(), "0".into())
        ],
        "the connection is kept alive"
    );
    // h2 over TLS, negotiated by ALPN.
    let tls = Kura::start_with(KuraOptions {
        extra_args: vec!["--tls-self-signed".into()],
        https: true,
        ..Default::default()
    })
    .expect("kura starts with TLS");
    let cert = tls.data_dir.join("self-signed.crt");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&cert).is_ok_and(|p| p.contains("END CERTIFICATE")) {
        assert!(Instant::now() < deadline, "no self-signed certificate");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cert = cert.display().to_string();
    let (w, _) = curl_w(
        &["--cacert", &cert, "--http2"],
        &[&format!("{}/v2/", tls.url)],
    );
    assert_eq!(w[0].0, "2", "ALPN chose h2");
    assert_eq!(w[0].1, "200");
    let (w, _) = curl_w(
        &["--cacert", &cert, "--http1.1"],
        &[&format!("{}/v2/", tls.url)],
    );
    assert_eq!(w[0].0, "1.1");
}

#[test]
fn tls_cert_and_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=kura test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);

    let kura = Kura::start_with(KuraOptions {
        extra_args: vec![
            "--tls-cert".into(),
            d.join("server.crt").display().to_string(),
            "--tls-key".into(),
            d.join("server.key").display().to_string(),
        ],
        https: true,
        ..Default::default()
    })
    .expect("kura starts with TLS files");
    let api = tls_api(&kura, &std::fs::read(d.join("ca.crt")).unwrap());
    tls_round_trip(&api);
}

// =============================================================================
// Graceful shutdown
// =============================================================================

/// The process state letter from /proc (`Z` once it has exited).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[track_caller]
fn wait_exited(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while proc_state(pid).is_some_and(|s| s != 'Z' && s != 'X') {
        assert!(
            Instant::now() < deadline,
            "kura (pid {pid}) did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Once shutdown starts the listener closes.
#[track_caller]
fn wait_listener_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting connections after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_finishes_in_flight_download() {
    let mut reg = Reg::start();
    let data = noise(48 * 1024 * 1024, 51);
    let d = reg.push_blob("shutdown/get", &data);
    let pid = reg.kura.pid();

    let mut resp = reg
        .client
        .get(reg.url(&format!("/v2/shutdown/get/blobs/{d}")))
        .send()
        .expect("GET starts");
    assert_eq!(resp.status().as_u16(), 200);
    let mut got = vec![0u8; 1024 * 1024];
    resp.read_exact(&mut got).expect("first MiB");

    signal(pid, "TERM").unwrap();
    wait_listener_closed(reg.kura.port);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        proc_state(pid).is_some_and(|s| s != 'Z'),
        "kura exited with a download in flight"
    );

    resp.read_to_end(&mut got).expect("rest of the body");
    assert_eq!(
        got.len(),
        data.len(),
        "the in-flight download was cut short"
    );
    assert_eq!(sha256(&got), d);

    wait_exited(pid, Duration::from_secs(10));
    let status = reg.kura.terminate().expect("reaping kura");
    assert!(
        status.success(),
        "kura exited with {status}; log:\n{}",
        reg.kura.log_text()
    );
}

/// A request body that trickles in.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    started: Arc<AtomicBool>,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos > 0 {
            std::thread::sleep(Duration::from_millis(25));
        }
        self.started.store(true, Ordering::SeqCst);
        let n = buf.len().min(64 * 1024).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn shutdown_finishes_in_flight_upload() {
    let mut reg = Reg::start();
    let data = noise(2 * 1024 * 1024, 52);
    let d = sha256(&data);
    let loc = reg.start_upload("shutdown/put");
    let pid = reg.kura.pid();

    let started = Arc::new(AtomicBool::new(false));
    let body = Trickle {
        data: data.clone(),
        pos: 0,
        started: started.clone(),
    };
    let client = reg.client.clone();
    let url = reg.url(&loc);
    let upload = std::thread::spawn(move || {
        let r = client
            .patch(url)
            .header("content-type", "application/octet-stream")
            .body(reqwest::blocking::Body::new(body))
            .send()
            .expect("PATCH completes");
        (
            r.status().as_u16(),
            r.headers().clone(),
            r.text().unwrap_or_default(),
        )
    });
    while !started.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    signal(pid, "TERM").unwrap();
    wait_listener_closed(reg.kura.port);
    assert!(
        !upload.is_finished(),
        "the upload should still be running when shutdown starts"
    );

    let (status, headers, text) = upload.join().unwrap();
    assert_eq!(status, 202, "in-flight PATCH: {text}");
    assert_eq!(
        headers.get("range").unwrap(),
        &format!("0-{}", data.len() - 1)
    );
    wait_exited(pid, Duration::from_secs(10));
    let st = reg.kura.terminate().expect("reaping kura");
    assert!(
        st.success(),
        "kura exited with {st}; log:\n{}",
        reg.kura.log_text()
    );

    // The chunk was kept: finish the upload on a new process.
    reg.kura.restart().expect("restart");
    assert_eq!(
        reg.get(&loc).expect(204).hdr("range"),
        format!("0-{}", data.len() - 1)
    );
    reg.put_upload(&loc, &d, b"", None).expect(201);
    assert_eq!(
        reg.get(&format!("/v2/shutdown/put/blobs/{d}"))
            .expect(200)
            .body,
        data
    );
}

// =============================================================================
// kura config check
// =============================================================================

fn config_check(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("kura.yaml");
    std::fs::write(&f, yaml).unwrap();
    let mut cmd = Command::new(kura_bin());
    cmd.args(["config", "check"]).arg(&f);
    for (k, _) in std::env::vars() {
        if k.starts_with("KURA_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("running kura config check")
}

#[test]
fn config_check_valid_file() {
    let out = config_check("listen: 127.0.0.1:6553\nregistry:\n  delete_enabled: false\n  max_manifest_size: 1234567\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = {
        // The effective configuration is YAML; check the values we set and a default.
        let mut m = serde_json::Map::new();
        for line in stdout.lines() {
            if let Some((k, val)) = line.trim().split_once(": ") {
                m.insert(
                    k.to_owned(),
                    json!(val.trim().trim_matches('\'').trim_matches('"')),
                );
            }
        }
        Value::Object(m)
    };
    assert_eq!(v["listen"], "127.0.0.1:6553", "{stdout}");
    assert_eq!(v["delete_enabled"], "false", "{stdout}");
    assert_eq!(v["max_manifest_size"], "1234567", "{stdout}");
    assert!(
        v.get("data_dir").is_some(),
        "defaults are shown too: {stdout}"
    );
}

#[test]
fn config_check_unknown_key() {
    for (yaml, key) in [
        ("registry:\n  delete_enabeld: false\n", "delete_enabeld"),
        ("listne: 127.0.0.1:5000\n", "listne"),
        ("auth:\n  htpasswd: /x\n  anonymous: true\n", "anonymous"),
    ] {
        let out = config_check(yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{yaml:?} accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(key),
            "{yaml:?}: the error should name {key}: {stderr}"
        );
    }
}
