//! A fault-injecting upstream registry: a `std::net::TcpListener` thread
//! speaking just enough HTTP/1.1 (keep-alive, `Content-Length` bodies) to
//! serve `/v2/`, manifests and blobs from memory, with faults switchable
//! at run time per reference (a blob digest, a manifest tag or digest):
//!
//! - [`Fault::WrongBytes`]: the right length, one byte flipped;
//! - [`Fault::Truncate`]: the full `Content-Length`, then only some bytes and
//!   a closed connection;
//! - [`Fault::Status`]: an error status (500, 429 with `Retry-After`, ...);
//! - [`Fault::Stall`]: send some bytes, then wait until the fault is cleared
//!   and send the rest;
//! - [`Fault::Redirect`]: a `307` to another URL (a blob CDN), or to
//!   itself (a redirect loop);
//! - [`Fault::Reset`]: send some bytes, then reset the connection (RST);
//! - [`Fault::Drip`]: send some bytes, then one byte at a time, slowly;
//! - [`Fault::Oversize`]: a manifest body of any size, generated as it is
//!   sent (nothing that big is held), the bytes sent counted;
//! - [`Fault::GetServes`]: a `GET` answers with another manifest than a
//!   `HEAD` does (a tag that moved between the two).
//!
//! With [`Faulty::serve_ranges`], blob `GET`s with `Range: bytes=N-` are
//! answered `206` (otherwise the `Range` is ignored: a `200` with every
//! byte, as registries without range support do). The token endpoint can
//! be made to fail ([`Faulty::token_answer`]).
//!
//! A token mode behaves like Docker Hub with auth.docker.io: `/v2/` requests
//! without a token it issued get `401` with a `WWW-Authenticate: Bearer`
//! challenge pointing at its own `/token` endpoint (optionally protected by
//! basic credentials). Every request is recorded.

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::image::{layer_tar, Descriptor, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};
use crate::sha256;

/// What goes wrong when a reference is requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Full length, but one byte differs (the digest does not match).
    WrongBytes,
    /// Announce the full length, send `at` bytes, close the connection.
    Truncate { at: u64 },
    /// Answer with this status and an error body.
    Status { code: u16, retry_after: Option<u64> },
    /// Send `after` bytes, then wait until the fault is cleared (or changed)
    /// and send the rest.
    Stall { after: u64 },
    /// `307 Temporary Redirect` to this URL (a blob CDN).
    Redirect { location: String },
    /// Announce the full length, send `at` bytes, then reset the
    /// connection (`SO_LINGER` 0: an RST, not a FIN).
    Reset { at: u64 },
    /// Send `after` bytes, then one byte every `every_ms` until every byte
    /// is sent, the client goes away, or the fault is cleared (the rest
    /// then follows at once).
    Drip { after: u64, every_ms: u64 },
    /// Serve a manifest body of `len` bytes (a JSON object padded with
    /// spaces, made as it is sent), with a `Content-Length` if
    /// `content_length`, else ended by closing the connection.
    Oversize { len: u64, content_length: bool },
    /// A `GET` serves the repository's manifest `reference` instead (a
    /// `HEAD` is answered as usual), announcing `announce` as its
    /// `Docker-Content-Digest` if given (a lie), else its real digest.
    GetServes {
        reference: String,
        announce: Option<String>,
    },
}

/// How the token endpoint answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAnswer {
    /// A token, as a token server does.
    Token,
    /// This status with an error body.
    Status(u16),
    /// `200` with this body (garbage, or JSON without a token).
    Body(Vec<u8>),
}

/// One request the fixture received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The status answered.
    pub status: u16,
    pub at: Instant,
}

/// An image served by [`Faulty`].
#[derive(Debug, Clone)]
pub struct ServedImage {
    pub manifest: Descriptor,
    pub manifest_bytes: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl ServedImage {
    /// Config and layer digests.
    pub fn blob_digests(&self) -> Vec<String> {
        let mut v = vec![self.config.digest.clone()];
        v.extend(self.layers.iter().map(|l| l.digest.clone()));
        v
    }
}

struct Rule {
    fault: Fault,
    /// Applies this many more times; `None`: until cleared.
    remaining: Option<u32>,
}

struct TokenMode {
    basic: Option<(String, String)>,
    /// The realm the challenge names, if not this server's own `/token`.
    realm: Option<String>,
}

/// `(repo, reference)` → (media type, bytes).
type Manifests = HashMap<(String, String), (String, Arc<Vec<u8>>)>;

#[derive(Default)]
struct State {
    manifests: Manifests,
    /// digest → bytes (served for any repository).
    blobs: HashMap<String, Arc<Vec<u8>>>,
    faults: HashMap<String, Rule>,
    token: Option<TokenMode>,
    issued: HashSet<String>,
    requests: Vec<Request>,
    /// Query strings and Authorization headers of `/token` requests.
    token_requests: Vec<(String, Option<String>)>,
    /// Sent with every manifest and blob (Docker Hub's `ratelimit-*`).
    content_headers: Vec<(String, String)>,
    /// Answer `Range: bytes=N-` on blobs with `206`.
    ranges: bool,
    /// How `/token` answers (a token if `None`).
    token_answer: Option<TokenAnswer>,
    /// Body bytes written for each reference, over every response.
    sent: HashMap<String, u64>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    shutdown: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fault-injecting upstream. Stops when dropped.
pub struct Faulty {
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    /// Listeners of token realms on other addresses.
    realm_listeners: Mutex<Vec<(std::net::SocketAddr, JoinHandle<()>)>>,
}

impl Faulty {
    pub fn start() -> anyhow::Result<Faulty> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let accept = accept_loop(listener, shared.clone(), port);
        Ok(Faulty {
            port,
            url: format!("http://127.0.0.1:{port}"),
            shared,
            accept: Some(accept),
            realm_listeners: Mutex::default(),
        })
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.shared.lock());
        self.shared.changed.notify_all();
    }

    /// Send `name: value` with every manifest and blob from now on.
    pub fn add_content_header(&self, name: &str, value: &str) {
        self.update(|s| s.content_headers.push((name.to_owned(), value.to_owned())));
    }

    /// Serve `data` as a blob (for every repository); returns its digest.
    pub fn add_blob(&self, data: Vec<u8>) -> String {
        let d = sha256(&data);
        let data = Arc::new(data);
        self.update(|s| {
            s.blobs.insert(d.clone(), data);
        });
        d
    }

    /// Serve a manifest under its digest and, if given, a tag.
    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> String {
        let d = sha256(&bytes);
        let bytes = Arc::new(bytes);
        self.update(|s| {
            let v = (media_type.to_owned(), bytes);
            s.manifests.insert((repo.to_owned(), d.clone()), v.clone());
            if let Some(t) = tag {
                s.manifests.insert((repo.to_owned(), t.to_owned()), v);
            }
        });
        d
    }

    /// A single-platform OCI image with one layer per entry of
    /// `layer_sizes` (uncompressed tars of pseudo-random bytes from `seed`),
    /// served as `repo:tag`.
    pub fn add_image(
        &self,
        repo: &str,
        tag: &str,
        layer_sizes: &[usize],
        seed: u64,
    ) -> ServedImage {
        let mut layers = Vec::new();
        for (n, size) in layer_sizes.iter().enumerate() {
            let tar = layer_tar(n, *size, seed.wrapping_mul(7919).wrapping_add(n as u64));
            layers.push(Descriptor::of(OCI_LAYER_TAR, &tar));
            self.add_blob(tar);
        }
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": [{ "created_by": format!("faulty seed {seed}") }],
        }))
        .expect("config json");
        let config_desc = Descriptor::of(OCI_CONFIG, &config);
        self.add_blob(config);
        let manifest_bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        }))
        .expect("manifest json");
        let manifest = Descriptor::of(OCI_MANIFEST, &manifest_bytes);
        self.add_manifest(repo, Some(tag), OCI_MANIFEST, manifest_bytes.clone());
        ServedImage {
            manifest,
            manifest_bytes,
            config: config_desc,
            layers,
        }
    }

    /// Make requests for `reference` (a digest or a tag) fail this way
    /// until cleared.
    pub fn set_fault(&self, reference: &str, fault: Fault) {
        self.update(|s| {
            s.faults.insert(
                reference.to_owned(),
                Rule {
                    fault,
                    remaining: None,
                },
            );
        });
    }

    /// Make the next `times` requests for `reference` fail this way.
    pub fn set_fault_times(&self, reference: &str, fault: Fault, times: u32) {
        self.update(|s| {
            s.faults.insert(
                reference.to_owned(),
                Rule {
                    fault,
                    remaining: Some(times),
                },
            );
        });
    }

    /// Heal `reference` (a stalled response continues).
    pub fn clear_fault(&self, reference: &str) {
        self.update(|s| {
            s.faults.remove(reference);
        });
    }

    /// Require Bearer tokens issued by `/token`; the token endpoint itself
    /// requires `basic` credentials if given.
    pub fn token_auth(&self, basic: Option<(&str, &str)>) {
        self.update(|s| {
            s.token = Some(TokenMode {
                basic: basic.map(|(u, p)| (u.to_owned(), p.to_owned())),
                realm: None,
            });
        });
    }

    /// Like [`Faulty::token_auth`], but the challenge names a token realm
    /// served from another loopback address (`ip`, e.g. `127.0.0.2`), as a
    /// foreign host would: the same `/token` endpoint and request record,
    /// reached on a second listener. Returns the realm URL.
    pub fn token_auth_at(&self, basic: Option<(&str, &str)>, ip: &str) -> anyhow::Result<String> {
        let listener = TcpListener::bind((ip, 0))?;
        let addr = listener.local_addr()?;
        let realm = format!("http://{addr}/token");
        let accept = accept_loop(listener, self.shared.clone(), self.port);
        self.realm_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((addr, accept));
        self.update(|s| {
            s.token = Some(TokenMode {
                basic: basic.map(|(u, p)| (u.to_owned(), p.to_owned())),
                realm: Some(realm.clone()),
            });
        });
        Ok(realm)
    }

    /// Answer blob `GET`s with `Range: bytes=N-` (or `N-M`) with `206`
    /// and the bytes asked for, or (`false`, the default) ignore the range.
    pub fn serve_ranges(&self, on: bool) {
        self.update(|s| s.ranges = on);
    }

    /// How the token endpoint answers from now on.
    pub fn token_answer(&self, answer: TokenAnswer) {
        self.update(|s| s.token_answer = Some(answer));
    }

    /// Body bytes written so far for `reference` (a digest or a tag), over
    /// every response, as far as the client took them.
    pub fn bytes_sent(&self, reference: &str) -> u64 {
        self.shared.lock().sent.get(reference).copied().unwrap_or(0)
    }

    /// Every request so far (the `/token` endpoint included).
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Requests with this method whose path is exactly `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    /// `GET /v2/<repo>/blobs/<digest>` requests so far.
    pub fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        self.count("GET", &format!("/v2/{repo}/blobs/{digest}"))
    }

    /// `(query, Authorization)` of every `/token` request.
    pub fn token_requests(&self) -> Vec<(String, Option<String>)> {
        self.shared.lock().token_requests.clone()
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let realms = std::mem::take(
            &mut *self
                .realm_listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (addr, h) in realms {
            let _ = TcpStream::connect(addr);
            let _ = h.join();
        }
    }
}

/// Serve every connection `listener` accepts (each on its own thread) until
/// shutdown; `port` is the main listener's, which challenges name.
fn accept_loop(listener: TcpListener, s: Arc<Shared>, port: u16) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if s.shutdown.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let s = s.clone();
            std::thread::spawn(move || serve_connection(conn, s, port));
        }
    })
}

// ----- the HTTP side -------------------------------------------------------

struct Parsed {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
}

/// Read one request head; `None` when the peer closed or we shut down.
fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>, shared: &Shared) -> Option<Parsed> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let method = first.next()?.to_owned();
            let target = first.next()?.to_owned();
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_owned(), q.to_owned()),
                None => (target, String::new()),
            };
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            return Some(Parsed {
                method,
                path,
                query,
                headers,
            });
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match conn.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if shared.shutdown.load(Ordering::SeqCst) {
                    return None;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn serve_connection(mut conn: TcpStream, shared: Arc<Shared>, port: u16) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(req) = read_head(&mut conn, &mut buf, &shared) {
        // Requests here have no bodies worth reading; skip any announced.
        if let Some(len) = req
            .headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let mut left = len.saturating_sub(buf.len());
            buf.drain(..len.min(buf.len()));
            let mut sink = [0u8; 4096];
            while left > 0 {
                match conn.read(&mut sink[..left.min(4096)]) {
                    Ok(0) => return,
                    Ok(n) => left -= n,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        }
        let close = req
            .headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        match respond(&mut conn, &req, &shared, port) {
            Ok(true) if !close => {}
            _ => {
                let _ = conn.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// What to send for one request, decided under the lock.
enum Plan {
    Simple {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Content {
        media_type: String,
        digest: String,
        data: Arc<Vec<u8>>,
        fault: Option<Fault>,
        reference: String,
        /// Inclusive byte range to answer with `206`.
        range: Option<(u64, u64)>,
    },
}

fn error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"errors": [{"code": code, "message": message}]})).expect("json")
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim().trim_end_matches('=').as_bytes();
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn plan(req: &Parsed, state: &mut State, port: u16) -> Plan {
    let simple = |status: u16, headers: Vec<(String, String)>, body: Vec<u8>| Plan::Simple {
        status,
        headers,
        body,
    };
    let json_ct = || ("Content-Type".to_owned(), "application/json".to_owned());
    let auth = req.headers.get("authorization").cloned();

    if req.path == "/token" {
        let Some(mode) = &state.token else {
            return simple(
                404,
                vec![json_ct()],
                error_body("NOT_FOUND", "no token endpoint"),
            );
        };
        state.token_requests.push((req.query.clone(), auth.clone()));
        if let Some((u, p)) = &mode.basic {
            let ok = auth
                .as_deref()
                .and_then(|a| a.strip_prefix("Basic "))
                .and_then(b64_decode)
                .is_some_and(|raw| raw == format!("{u}:{p}").as_bytes());
            if !ok {
                return simple(
                    401,
                    vec![
                        json_ct(),
                        ("WWW-Authenticate".into(), "Basic realm=\"faulty\"".into()),
                    ],
                    error_body("UNAUTHORIZED", "token endpoint wants basic credentials"),
                );
            }
        }
        match state.token_answer.clone() {
            None | Some(TokenAnswer::Token) => {}
            Some(TokenAnswer::Status(code)) => {
                return simple(
                    code,
                    vec![json_ct()],
                    error_body("FAULT", "injected token failure"),
                )
            }
            Some(TokenAnswer::Body(body)) => return simple(200, vec![json_ct()], body),
        }
        let token = format!("tok-{}", state.issued.len() + 1);
        state.issued.insert(token.clone());
        let body = serde_json::to_vec(&json!({
            "token": token, "access_token": token, "expires_in": 300,
            "issued_at": "2024-01-01T00:00:00Z",
        }))
        .expect("json");
        return simple(200, vec![json_ct()], body);
    }

    let Some(rest) = req.path.strip_prefix("/v2/") else {
        return simple(
            404,
            vec![json_ct()],
            error_body("NOT_FOUND", "not a registry path"),
        );
    };
    if req.method != "GET" && req.method != "HEAD" {
        return simple(
            405,
            vec![json_ct()],
            error_body("UNSUPPORTED", "read-only upstream"),
        );
    }

    // Route first, so the challenge can name the repository's scope.
    let route = if rest.is_empty() {
        None
    } else if let Some((repo, r)) = rest.rsplit_once("/manifests/") {
        Some((repo.to_owned(), true, r.to_owned()))
    } else if let Some((repo, r)) = rest.rsplit_once("/blobs/") {
        Some((repo.to_owned(), false, r.to_owned()))
    } else {
        return simple(
            404,
            vec![json_ct()],
            error_body("NOT_FOUND", "unknown route"),
        );
    };

    if state.token.is_some() {
        let ok = auth
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| state.issued.contains(t.trim()));
        if !ok {
            let scope = route
                .as_ref()
                .map(|(repo, _, _)| format!(",scope=\"repository:{repo}:pull\""))
                .unwrap_or_default();
            return simple(
                401,
                vec![
                    json_ct(),
                    (
                        "WWW-Authenticate".into(),
                        format!(
                            "Bearer realm=\"{}\",service=\"faulty\"{scope}",
                            state
                                .token
                                .as_ref()
                                .and_then(|t| t.realm.clone())
                                .unwrap_or_else(|| format!("http://127.0.0.1:{port}/token"))
                        ),
                    ),
                ],
                error_body("UNAUTHORIZED", "authentication required"),
            );
        }
    }

    let Some((repo, is_manifest, reference)) = route else {
        return simple(200, vec![json_ct()], b"{}".to_vec());
    };
    let found = if is_manifest {
        state
            .manifests
            .get(&(repo.clone(), reference.clone()))
            .map(|(mt, b)| (mt.clone(), b.clone()))
    } else {
        state
            .blobs
            .get(&reference)
            .map(|b| ("application/octet-stream".to_owned(), b.clone()))
    };
    let Some((media_type, data)) = found else {
        let code = if is_manifest {
            "MANIFEST_UNKNOWN"
        } else {
            "BLOB_UNKNOWN"
        };
        return simple(404, vec![json_ct()], error_body(code, "unknown"));
    };
    let fault = match state.faults.get_mut(&reference) {
        Some(rule) => {
            let f = rule.fault.clone();
            if let Some(n) = rule.remaining.as_mut() {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.faults.remove(&reference);
                }
            }
            Some(f)
        }
        None => None,
    };
    if let Some(Fault::Status { code, retry_after }) = fault {
        let mut h = vec![json_ct()];
        if let Some(s) = retry_after {
            h.push(("Retry-After".into(), s.to_string()));
        }
        return simple(code, h, error_body("FAULT", "injected failure"));
    }
    if let Some(Fault::Redirect { location }) = fault {
        return simple(307, vec![("Location".into(), location)], Vec::new());
    }
    if let Some(Fault::GetServes {
        reference: other,
        announce,
    }) = &fault
    {
        if req.method == "GET" {
            let Some((mt, b)) = state.manifests.get(&(repo.clone(), other.clone())) else {
                return simple(
                    404,
                    vec![json_ct()],
                    error_body("MANIFEST_UNKNOWN", "unknown"),
                );
            };
            return Plan::Content {
                media_type: mt.clone(),
                digest: announce.clone().unwrap_or_else(|| sha256(b)),
                data: b.clone(),
                fault: None,
                reference,
                range: None,
            };
        }
    }
    // `bytes=N-` or `bytes=N-M`, for blobs, when ranges are served.
    let range = req
        .headers
        .get("range")
        .filter(|_| state.ranges && !is_manifest)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| {
            let len = data.len() as u64;
            let start = a.parse::<u64>().ok()?;
            let end = if b.is_empty() {
                len.checked_sub(1)?
            } else {
                b.parse::<u64>().ok()?.min(len.checked_sub(1)?)
            };
            (start <= end).then_some((start, end))
        });
    Plan::Content {
        media_type,
        digest: sha256(&data),
        data,
        fault,
        reference,
        range,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_head(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    len: u64,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Length: {len}\r\n",
        reason(status)
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())
}

/// Answer one request; `Ok(true)` if the connection may be reused.
fn respond(
    conn: &mut TcpStream,
    req: &Parsed,
    shared: &Shared,
    port: u16,
) -> std::io::Result<bool> {
    let head_only = req.method == "HEAD";
    let plan = {
        let mut s = shared.lock();
        let p = plan(req, &mut s, port);
        let status = match &p {
            Plan::Simple { status, .. } => *status,
            Plan::Content { range: None, .. } => 200,
            Plan::Content { range: Some(_), .. } => 206,
        };
        s.requests.push(Request {
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            authorization: req.headers.get("authorization").cloned(),
            range: req.headers.get("range").cloned(),
            status,
            at: Instant::now(),
        });
        p
    };
    match plan {
        Plan::Simple {
            status,
            headers,
            body,
        } => {
            write_head(conn, status, &headers, body.len() as u64)?;
            if !head_only {
                conn.write_all(&body)?;
            }
            Ok(true)
        }
        Plan::Content {
            media_type,
            digest,
            data,
            fault,
            reference,
            range,
        } => {
            let len = data.len() as u64;
            let mut headers = vec![
                ("Content-Type".to_owned(), media_type),
                ("Docker-Content-Digest".to_owned(), digest),
            ];
            let ranges = shared.lock().ranges;
            headers.push((
                "Accept-Ranges".to_owned(),
                if ranges { "bytes" } else { "none" }.to_owned(),
            ));
            headers.extend(shared.lock().content_headers.iter().cloned());
            if let Some((start, end)) = range {
                headers.push((
                    "Content-Range".to_owned(),
                    format!("bytes {start}-{end}/{len}"),
                ));
                write_head(conn, 206, &headers, end + 1 - start)?;
                if head_only {
                    return Ok(true);
                }
                // A reset holds for ranges too: `at` bytes of the range.
                if let Some(Fault::Reset { at }) = fault {
                    let to = (start + at).min(end + 1) as usize;
                    send(conn, &data, start as usize, to, None)?;
                    count_sent(shared, &reference, to as u64 - start);
                    return reset(conn);
                }
                let sent = send(conn, &data, start as usize, end as usize + 1, None);
                count_sent(shared, &reference, end + 1 - start);
                sent?;
                return Ok(true);
            }
            if let Some(Fault::Oversize {
                len: big,
                content_length,
            }) = fault
            {
                return send_oversize(
                    conn,
                    shared,
                    &reference,
                    &headers,
                    big,
                    content_length,
                    head_only,
                );
            }
            write_head(conn, 200, &headers, len)?;
            if head_only {
                return Ok(true);
            }
            match fault {
                None => {
                    send(conn, &data, 0, data.len(), None)?;
                    count_sent(shared, &reference, len);
                    Ok(true)
                }
                Some(Fault::WrongBytes) => {
                    send(conn, &data, 0, data.len(), Some(data.len() / 2))?;
                    Ok(true)
                }
                Some(Fault::Truncate { at }) => {
                    let at = (at as usize).min(data.len());
                    send(conn, &data, 0, at, None)?;
                    conn.flush()?;
                    Ok(false)
                }
                Some(Fault::Reset { at }) => {
                    let at = (at as usize).min(data.len());
                    send(conn, &data, 0, at, None)?;
                    count_sent(shared, &reference, at as u64);
                    reset(conn)
                }
                Some(Fault::Drip { after, every_ms }) => {
                    let after = (after as usize).min(data.len());
                    send(conn, &data, 0, after, None)?;
                    conn.flush()?;
                    count_sent(shared, &reference, after as u64);
                    let mut pos = after;
                    while pos < data.len() {
                        if shared.shutdown.load(Ordering::SeqCst) {
                            return Ok(false);
                        }
                        let still = shared
                            .lock()
                            .faults
                            .get(&reference)
                            .is_some_and(|r| matches!(r.fault, Fault::Drip { .. }));
                        if !still {
                            send(conn, &data, pos, data.len(), None)?;
                            count_sent(shared, &reference, (data.len() - pos) as u64);
                            return Ok(true);
                        }
                        std::thread::sleep(Duration::from_millis(every_ms));
                        conn.write_all(&data[pos..pos + 1])?;
                        conn.flush()?;
                        count_sent(shared, &reference, 1);
                        pos += 1;
                    }
                    Ok(true)
                }
                Some(Fault::Stall { after }) => {
                    let after = (after as usize).min(data.len());
                    send(conn, &data, 0, after, None)?;
                    conn.flush()?;
                    // Wait until healed (or changed), or shutdown.
                    let mut s = shared.lock();
                    loop {
                        if shared.shutdown.load(Ordering::SeqCst) {
                            return Ok(false);
                        }
                        let still = s
                            .faults
                            .get(&reference)
                            .is_some_and(|r| matches!(r.fault, Fault::Stall { .. }));
                        if !still {
                            break;
                        }
                        s = shared
                            .changed
                            .wait_timeout(s, Duration::from_millis(200))
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    drop(s);
                    send(conn, &data, after, data.len(), None)?;
                    Ok(true)
                }
                Some(
                    Fault::Status { .. }
                    | Fault::Redirect { .. }
                    | Fault::Oversize { .. }
                    | Fault::GetServes { .. },
                ) => {
                    unreachable!("answered above")
                }
            }
        }
    }
}

/// Reset the connection: give the bytes sent a moment to leave, then
/// close with a zero linger time, which sends an RST instead of a FIN.
fn reset(conn: &mut TcpStream) -> std::io::Result<bool> {
    conn.flush()?;
    std::thread::sleep(Duration::from_millis(100));
    let _ = socket2::SockRef::from(&*conn).set_linger(Some(Duration::ZERO));
    Ok(false)
}

fn count_sent(shared: &Shared, reference: &str, n: u64) {
    *shared.lock().sent.entry(reference.to_owned()).or_default() += n;
}

/// A manifest body of `len` bytes, `{"schemaVersion":2,` and spaces, then
/// `}`: sent a piece at a time, counted as it goes, never held whole.
fn send_oversize(
    conn: &mut TcpStream,
    shared: &Shared,
    reference: &str,
    headers: &[(String, String)],
    len: u64,
    content_length: bool,
    head_only: bool,
) -> std::io::Result<bool> {
    let mut head =
        "HTTP/1.1 200 OK\r\nDocker-Distribution-API-Version: registry/2.0\r\n".to_owned();
    if content_length {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    } else {
        head.push_str("Connection: close\r\n");
    }
    // Every header of the small manifest under the tag, its digest too (a
    // lie no client gets to check before the size).
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if head_only {
        return Ok(content_length);
    }
    const OPEN: &[u8] = b"{\"schemaVersion\":2,";
    let piece = vec![b' '; 64 * 1024];
    let mut pos = 0u64;
    while pos < len {
        if shared.shutdown.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let n = (len - pos).min(piece.len() as u64) as usize;
        let mut chunk = piece[..n].to_vec();
        if pos == 0 {
            let k = OPEN.len().min(n);
            chunk[..k].copy_from_slice(&OPEN[..k]);
        }
        if pos + n as u64 == len {
            chunk[n - 1] = b'}';
        }
        conn.write_all(&chunk)?;
        count_sent(shared, reference, n as u64);
        pos += n as u64;
    }
    Ok(content_length)
}

/// Write `data[from..to]` in 256 KiB pieces, flipping the byte at `flip`.
fn send(
    conn: &mut TcpStream,
    data: &[u8],
    from: usize,
    to: usize,
    flip: Option<usize>,
) -> std::io::Result<()> {
    const PIECE: usize = 256 * 1024;
    let mut pos = from;
    while pos < to {
        let end = (pos + PIECE).min(to);
        match flip {
            Some(f) if f >= pos && f < end => {
                let mut piece = data[pos..end].to_vec();
                piece[f - pos] ^= 0xff;
                conn.write_all(&piece)?;
            }
            _ => conn.write_all(&data[pos..end])?,
        }
        pos = end;
    }
    Ok(())
}
