//! The `/v2/` API from a client's side, shared by the API tests
//! (`tests/tests/{pull,push,discovery,management,errors,auth,tls,shutdown}.rs`)
//! and the mirror tests.
//!
//! - [`Resp`]: one response, read whole, with the accessors and assertions
//!   the tests use ([`Resp::expect`], [`Resp::error`], [`Resp::describe`]…).
//!   [`send`] gets one without checking anything (a mirror may pass on an
//!   upstream's answer); [`send_lenient`] also when there is no answer or
//!   its body breaks off.
//! - [`Api`]: a client bound to one kura. Every request goes through
//!   [`Api::send`] (or [`Api::raw`] for request targets an HTTP client
//!   library would normalise), which [`check`]s the invariants that hold for
//!   every response: no 5xx, the `Docker-Distribution-API-Version` header,
//!   and for errors a JSON body `{"errors":[{"code":…}]}` with a known code.
//! - [`Reg`]: a running `kura serve` with its [`Api`].
//! - Content to push: [`noise`], [`Image`], [`image_manifest`], [`index_of`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::{json, Value};

use crate::{sha256, Kura, KuraOptions};

pub use crate::image::{OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = crate::image::DOCKER_MANIFEST_V2;
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The error codes the distribution spec lists.
pub const SPEC_CODES: &[&str] = &[
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
pub const DISTRIBUTION_CODES: &[&str] =
    &["TAG_INVALID", "PAGINATION_NUMBER_INVALID", "RANGE_INVALID"];

// ----- responses and the invariants every response must satisfy ------------

/// One response, read whole. `method` and `target` (path and query) name
/// the request in failure messages.
#[derive(Debug)]
pub struct Resp {
    pub method: String,
    pub target: String,
    /// 0 when no response came ([`send_lenient`] only).
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// Why there was no response or the body ended early, with the bytes
    /// that did arrive in `body` ([`send_lenient`] only; `None` elsewhere).
    pub failure: Option<String>,
}

impl Resp {
    /// A header, if it is there (and visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A header that must be there.
    #[track_caller]
    pub fn hdr(&self, name: &str) -> &str {
        self.header(name).unwrap_or_else(|| {
            panic!(
                "{} {}: no {name} header; headers {:?}",
                self.method, self.target, self.headers
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// How kura served it (`x-kura-cache`: hit, miss, revalidated, stale),
    /// or "".
    pub fn cache(&self) -> &str {
        self.header("x-kura-cache").unwrap_or("")
    }

    /// The sha256 digest of the body that arrived.
    pub fn digest(&self) -> String {
        crate::sha256(&self.body)
    }

    /// Status, headers and the start of the body (and the failure, if
    /// any), for failure messages.
    pub fn describe(&self) -> String {
        let mut d = format!(
            "{} {}: status {} headers {:?} body {}",
            self.method,
            self.target,
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body[..self.body.len().min(600)])
        );
        if let Some(e) = &self.failure {
            d.push_str(&format!(" failure {e}"));
        }
        d
    }

    #[track_caller]
    pub fn json(&self) -> Value {
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
    pub fn codes(&self) -> Vec<String> {
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

    /// The first code of an error body, checking its shape.
    #[track_caller]
    pub fn code(&self) -> String {
        self.codes().remove(0)
    }

    /// Assert the status; returns self for chaining.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
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
    pub fn error(self, status: u16, code: &str) -> Self {
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
    pub fn tags(&self) -> Vec<String> {
        strings(&self.json()["tags"])
    }

    /// The target of a `Link: <…>; rel="next"` header.
    #[track_caller]
    pub fn next_link(&self) -> Option<String> {
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

/// Send a request and read the whole response, checking nothing (see
/// [`Api::send`] for a request to kura that must keep the rules). No
/// response, or a body cut short, is a panic.
#[track_caller]
pub fn send(rb: RequestBuilder) -> Resp {
    let r = send_lenient(rb);
    if let Some(e) = &r.failure {
        panic!("{} {}: {e}", r.method, r.target);
    }
    r
}

/// [`send`] where failing is an answer: no response at all is status 0,
/// a body that breaks off keeps the bytes that arrived, and
/// [`Resp::failure`] says what went wrong (for tests of upstreams that lie
/// or hang up).
pub fn send_lenient(rb: RequestBuilder) -> Resp {
    let (client, req) = rb.build_split();
    let req = req.expect("request builds");
    let method = req.method().to_string();
    let target = match req.url().query() {
        Some(q) => format!("{}?{q}", req.url().path()),
        None => req.url().path().to_owned(),
    };
    let mut r = match client.execute(req) {
        Ok(r) => r,
        Err(e) => {
            return Resp {
                method,
                target,
                status: 0,
                headers: HeaderMap::new(),
                body: Vec::new(),
                failure: Some(format!("{e:?}")),
            }
        }
    };
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let mut body = Vec::new();
    // On an error, what was read so far is in `body`.
    let failure = r
        .read_to_end(&mut body)
        .err()
        .map(|e| format!("reading body: {e:?}"));
    Resp {
        method,
        target,
        status,
        headers,
        body,
        failure,
    }
}

/// A JSON list of strings; `null` is an empty list.
pub fn strings(v: &Value) -> Vec<String> {
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
pub fn check(r: &Resp) {
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

/// A client bound to one registry, optionally with basic-auth credentials.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub port: u16,
    pub client: Client,
    pub auth: Option<(String, String)>,
}

impl Api {
    /// A client for the registry at `base` (`http://127.0.0.1:PORT`).
    pub fn at(base: &str, port: u16) -> Api {
        Api {
            base: base.to_owned(),
            port,
            client: crate::http_client(),
            auth: None,
        }
    }

    /// A client for a running kura.
    pub fn for_kura(k: &Kura) -> Api {
        Api::at(&k.url, k.port)
    }

    /// `path` on this registry (an absolute URL stays as it is).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{}", self.base, path)
        }
    }

    /// The same client sending these credentials.
    pub fn as_user(&self, user: &str, pass: &str) -> Api {
        Api {
            auth: Some((user.into(), pass.into())),
            ..self.clone()
        }
    }

    /// A request to `path`, with this client's credentials.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        match &self.auth {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        }
    }

    /// Send a request made with [`Api::req`] and [`check`] the response.
    #[track_caller]
    pub fn send(&self, rb: RequestBuilder) -> Resp {
        let resp = send(rb);
        check(&resp);
        resp
    }

    #[track_caller]
    pub fn get(&self, path: &str) -> Resp {
        self.send(self.req(Method::GET, path))
    }

    #[track_caller]
    pub fn head(&self, path: &str) -> Resp {
        let r = self.send(self.req(Method::HEAD, path));
        assert!(r.body.is_empty(), "HEAD {path} returned a body");
        r
    }

    #[track_caller]
    pub fn delete(&self, path: &str) -> Resp {
        self.send(self.req(Method::DELETE, path))
    }

    #[track_caller]
    pub fn post(&self, path: &str, body: &[u8]) -> Resp {
        self.send(
            self.req(Method::POST, path)
                .header("content-type", "application/octet-stream")
                .body(body.to_vec()),
        )
    }

    /// A request exactly as written, over a fresh TCP connection: for paths
    /// with `..`, `%2e` and friends that an HTTP client would normalise.
    #[track_caller]
    pub fn raw(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.raw_bytes(method, target, &headers, body)
    }

    /// [`Api::raw`] with header values as bytes (not necessarily ASCII).
    #[track_caller]
    pub fn raw_bytes(
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
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self
            .post(&format!("/v2/{repo}/blobs/uploads/?digest={d}"), data)
            .expect(201);
        assert_eq!(r.hdr("docker-content-digest"), d);
        d
    }

    /// Open an upload session; returns its Location.
    #[track_caller]
    pub fn start_upload(&self, repo: &str) -> String {
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
    pub fn patch(&self, loc: &str, data: &[u8], range: Option<(u64, u64)>) -> Resp {
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
    pub fn put_upload(
        &self,
        loc: &str,
        digest: &str,
        data: &[u8],
        range: Option<(u64, u64)>,
    ) -> Resp {
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
    pub fn put_manifest(
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
    pub fn push_manifest(&self, repo: &str, reference: &str, body: &[u8]) -> String {
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
    pub fn push_image(&self, repo: &str, tag: &str, seed: &str) -> Image {
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

/// `loc` with `q` added to its query.
pub fn with_query(loc: &str, q: &str) -> String {
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
        failure: None,
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

/// A running `kura serve` and a client for it (which `Reg` derefs to).
pub struct Reg {
    pub kura: Kura,
    pub api: Api,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Reg {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Reg {
    /// kura with its defaults and a fresh data directory.
    pub fn start() -> Reg {
        Self::with(KuraOptions::default(), None)
    }

    /// kura started with `opts`; `dir` (holding its config, say) lives as
    /// long as the registry.
    pub fn with(opts: KuraOptions, dir: Option<tempfile::TempDir>) -> Reg {
        let kura = Kura::start_with(opts).expect("kura starts");
        let api = Api::for_kura(&kura);
        Reg {
            kura,
            api,
            _dir: dir,
        }
    }

    /// A registry started with `--config` holding `yaml`.
    pub fn with_config(yaml: &str) -> Reg {
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
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
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

/// A descriptor of `data`.
pub fn desc(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

/// A small OCI image: a config, two layers and the manifest, all derived
/// from a seed.
pub struct Image {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

impl Image {
    pub fn new(seed: &str) -> Image {
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
pub fn image_manifest(config: &[u8], layers: &[Vec<u8>]) -> Vec<u8> {
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

/// An OCI index of `(media type, manifest bytes)` children, the first for
/// amd64 and the rest for arm64.
pub fn index_of(children: &[(&str, &[u8])]) -> Vec<u8> {
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

/// A well-formed digest of nothing stored.
pub const ZERO_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";
