//! The client for upstream registries: Docker token auth, basic auth,
//! redirects to blob CDNs, retries, and Docker Hub's `library/` names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64_lite::encode as b64;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, LOCATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode, Uri};

use crate::config::UpstreamConfig;
use crate::config::DOWN_WINDOW_MS;
use crate::error::UpstreamError;
use crate::io::body::{self, CollectError};
use crate::io::fetch::{Fetch, FetchError};
use crate::io::host::Host;
use crate::metrics::{self, Metrics};
use crate::model::manifest::ALL_MEDIA_TYPES;
use crate::model::reference::RepositoryName;

/// What kura remembers of an upstream's health (host clock, ms).
#[derive(Debug, Default, Clone, Copy)]
struct Health {
    /// Known down until then (timeouts, unreachable).
    down_until: u64,
    /// Asked by the upstream (429 `Retry-After`) not to call until then.
    throttled_until: u64,
}

const MAX_REDIRECTS: usize = 5;
const MAX_ATTEMPTS: u32 = 3;
/// Longest `Retry-After` one request waits out before asking again; a
/// longer pause fails it at once (with the pause passed on to the client).
const SHORT_PAUSE_MS: u64 = 2_000;
/// Longest wait between two attempts of one request.
const MAX_BACKOFF_MS: u64 = 10_000;
const TOKEN_BODY_LIMIT: usize = 64 * 1024;

/// The client for one upstream registry, with what its requests share:
/// bearer tokens by scope, and whether the upstream is down or asked
/// for a pause.
pub(crate) struct Upstream<F, H> {
    /// The upstream as configured.
    pub(crate) config: UpstreamConfig,
    fetch: Arc<F>,
    host: Arc<H>,
    metrics: Arc<Metrics>,
    base: Uri,
    /// Bearer tokens by scope, with their expiry (host clock, ms).
    tokens: Mutex<HashMap<String, (String, u64)>>,
    health: Mutex<Health>,
}

impl<F: Fetch, H: Host> Upstream<F, H> {
    /// The client for `config`; fails if its URL has no scheme or host.
    pub(crate) fn new(
        config: UpstreamConfig,
        fetch: Arc<F>,
        host: Arc<H>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UpstreamError> {
        let base: Uri =
            config.url.trim_end_matches('/').parse().map_err(|e| {
                UpstreamError::Invalid(format!("upstream url {:?}: {e}", config.url))
            })?;
        if base.scheme().is_none() || base.authority().is_none() {
            return Err(UpstreamError::Invalid(format!(
                "upstream url {:?} needs a scheme and host",
                config.url
            )));
        }
        Ok(Upstream {
            config,
            fetch,
            host,
            metrics,
            base,
            tokens: Mutex::new(HashMap::new()),
            health: Mutex::default(),
        })
    }

    /// GET or HEAD a manifest.
    pub(crate) async fn manifest(
        &self,
        repo: &RepositoryName,
        reference: &str,
        method: Method,
    ) -> Result<Response<F::Body>, UpstreamError> {
        self.request(repo, &format!("manifests/{reference}"), method, None)
            .await
    }

    /// GET a blob, or a byte range of it (`bytes=a-b`).
    pub(crate) async fn blob(
        &self,
        repo: &RepositoryName,
        digest: &str,
        range: Option<String>,
    ) -> Result<Response<F::Body>, UpstreamError> {
        self.request(repo, &format!("blobs/{digest}"), Method::GET, range)
            .await
    }

    /// A page of the repository's tag list (`n` and `last` as the client
    /// asked; the upstream may cap `n`).
    pub(crate) async fn tags(
        &self,
        repo: &RepositoryName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Response<F::Body>, UpstreamError> {
        let mut query = Vec::new();
        if let Some(n) = n {
            query.push(format!("n={n}"));
        }
        if let Some(last) = last {
            query.push(format!("last={}", crate::wire::percent_encode(last)));
        }
        let suffix = if query.is_empty() {
            "tags/list".to_owned()
        } else {
            format!("tags/list?{}", query.join("&"))
        };
        self.request(repo, &suffix, Method::GET, None).await
    }

    /// The OCI 1.1 referrers of `digest`, optionally filtered upstream.
    pub(crate) async fn referrers(
        &self,
        repo: &RepositoryName,
        digest: &str,
        artifact_type: Option<&str>,
    ) -> Result<Response<F::Body>, UpstreamError> {
        let query = artifact_type
            .map(|t| format!("?artifactType={}", crate::wire::percent_encode(t)))
            .unwrap_or_default();
        self.request(
            repo,
            &format!("referrers/{digest}{query}"),
            Method::GET,
            None,
        )
        .await
    }

    /// HEAD a blob: does the upstream have it for this repository?
    pub(crate) async fn blob_head(
        &self,
        repo: &RepositoryName,
        digest: &str,
    ) -> Result<Response<F::Body>, UpstreamError> {
        self.request(repo, &format!("blobs/{digest}"), Method::HEAD, None)
            .await
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the upstream should not be asked now, if it should not: it asked
    /// for a pause, or it recently timed out or could not be reached. Cached
    /// content is served at once meanwhile.
    pub(crate) fn known_down(&self) -> Option<UpstreamError> {
        let now = self.host.now_unix_ms();
        let h = *self.lock_health();
        if h.throttled_until > now {
            return Some(UpstreamError::Throttled {
                retry_after_ms: h.throttled_until - now,
            });
        }
        (h.down_until > now).then(|| UpstreamError::unavailable("recently unreachable"))
    }

    /// Remember that the upstream could not be reached (or hung) just now.
    pub(crate) fn mark_down(&self) {
        let until = self.host.now_unix_ms().saturating_add(DOWN_WINDOW_MS);
        let mut h = self.lock_health();
        h.down_until = h.down_until.max(until);
    }

    async fn request(
        &self,
        repo: &RepositoryName,
        suffix: &str,
        method: Method,
        range: Option<String>,
    ) -> Result<Response<F::Body>, UpstreamError> {
        // A pause the upstream asked for holds for every request to it: a
        // short one is waited out, a long one fails the request at once
        // (stale content is served meanwhile, see `known_down`).
        if let Some(UpstreamError::Throttled { retry_after_ms }) = self.known_down() {
            if retry_after_ms > SHORT_PAUSE_MS {
                return Err(UpstreamError::Throttled { retry_after_ms });
            }
            self.host.sleep(retry_after_ms).await;
        }
        let name = self.config.upstream_name(repo.as_str());
        let base = self.base.to_string();
        let url = format!("{}/v2/{name}/{suffix}", base.trim_end_matches('/'));
        let scope = format!("repository:{name}:pull");
        let mut attempt = 0;
        let mut authed_once = false;
        loop {
            attempt += 1;
            let resp = self
                .send_following_redirects(&url, &method, &scope, range.as_deref())
                .await;
            let resp = match resp {
                Ok(r) => {
                    self.lock_health().down_until = 0;
                    r
                }
                // The upstream answered, with redirects that lead nowhere:
                // asking again would only go round again, and the upstream
                // is not down.
                Err(SendError::Redirects(why)) => {
                    self.lock_health().down_until = 0;
                    return Err(UpstreamError::Invalid(why));
                }
                // A timeout already took the whole read timeout: trying
                // again would only multiply the wait.
                Err(SendError::Fetch(FetchError::Timeout)) => {
                    self.mark_down();
                    return Err(UpstreamError::unavailable("timed out"));
                }
                Err(SendError::Fetch(_)) if attempt < MAX_ATTEMPTS => {
                    self.backoff(attempt, None).await;
                    continue;
                }
                Err(SendError::Fetch(e)) => {
                    self.mark_down();
                    return Err(UpstreamError::unavailable_from("no response", e));
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !authed_once {
                authed_once = true;
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(Challenge::parse);
                drop(resp);
                match challenge {
                    Some(Challenge::Bearer(params)) => {
                        self.obtain_token(&params, &scope).await?;
                        continue;
                    }
                    Some(Challenge::Basic) if self.config.username.is_some() => {
                        // Basic credentials are sent from the start once
                        // the upstream asked for them.
                        self.lock_tokens()
                            .insert(scope.clone(), (String::new(), u64::MAX));
                        continue;
                    }
                    _ => return Err(UpstreamError::Denied(401)),
                }
            }
            if status.is_success() {
                return Ok(resp);
            }
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| s * 1000);
            match status {
                StatusCode::NOT_FOUND => return Err(UpstreamError::NotFound),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(UpstreamError::Denied(status.as_u16()))
                }
                // A pause asked for is one for the whole upstream, not a
                // wait for this request.
                s if s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::SERVICE_UNAVAILABLE => {
                    if let Some(ms) = retry_after.filter(|ms| *ms > 0) {
                        let until = self.host.now_unix_ms().saturating_add(ms);
                        {
                            let mut h = self.lock_health();
                            h.throttled_until = h.throttled_until.max(until);
                        }
                        if ms > SHORT_PAUSE_MS || attempt >= MAX_ATTEMPTS {
                            return Err(UpstreamError::Throttled { retry_after_ms: ms });
                        }
                        self.host.sleep(ms).await;
                    } else if attempt < MAX_ATTEMPTS {
                        self.backoff(attempt, None).await;
                    } else {
                        return Err(UpstreamError::unavailable(format!("upstream answered {s}")));
                    }
                }
                s if s.is_server_error() && attempt < MAX_ATTEMPTS => {
                    self.backoff(attempt, None).await;
                }
                s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                    return Err(UpstreamError::unavailable(format!("upstream answered {s}")))
                }
                s => return Err(UpstreamError::Status(s.as_u16())),
            }
        }
    }

    async fn backoff(&self, attempt: u32, retry_after_ms: Option<u64>) {
        let ms = retry_after_ms.unwrap_or(100 * 4u64.pow(attempt.saturating_sub(1)));
        self.host.sleep(ms.min(MAX_BACKOFF_MS)).await;
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, u64)>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Authorization header for `scope`, if any.
    fn authorization(&self, scope: &str) -> Option<String> {
        let now = self.host.now_unix_ms();
        let mut tokens = self.lock_tokens();
        match tokens.get(scope) {
            Some((t, _)) if t.is_empty() => self.basic(),
            Some((t, exp)) if *exp > now => Some(format!("Bearer {t}")),
            Some(_) => {
                tokens.remove(scope);
                None
            }
            None => None,
        }
    }

    fn basic(&self) -> Option<String> {
        let user = self.config.username.as_deref()?;
        let pass = self.config.password.as_deref().unwrap_or("");
        Some(format!(
            "Basic {}",
            b64(format!("{user}:{pass}").as_bytes())
        ))
    }

    async fn send_following_redirects(
        &self,
        url: &str,
        method: &Method,
        scope: &str,
        range: Option<&str>,
    ) -> Result<Response<F::Body>, SendError> {
        let origin: Uri = url
            .parse()
            .map_err(|e| FetchError::other(format!("bad url {url}: {e}")))?;
        let mut current = origin.clone();
        let mut visited = Vec::new();
        for _ in 0..=MAX_REDIRECTS {
            let mut b = Request::builder()
                .method(method.clone())
                .uri(current.clone());
            if current.path().contains("/manifests/") {
                b = b.header(ACCEPT, ALL_MEDIA_TYPES.join(", "));
            }
            if let Some(r) = range {
                b = b.header(RANGE, r);
            }
            // Credentials go only to the upstream itself, never to the CDN
            // a blob redirect points at, nor to the same host over plain
            // HTTP after an HTTPS one.
            if same_origin(&current, &origin) {
                if let Some(auth) = self.authorization(scope) {
                    b = b.header(AUTHORIZATION, auth);
                }
            }
            let req = b.body(()).map_err(FetchError::other)?;
            let resp = self.fetch.fetch(req).await?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| SendError::Redirects("redirect without Location".into()))?;
            let next =
                resolve(&current, location).map_err(|e| SendError::Redirects(e.to_string()))?;
            visited.push(current);
            if visited.contains(&next) {
                return Err(SendError::Redirects(format!(
                    "redirect loop: {} redirects back to {next}",
                    visited.last().map(Uri::to_string).unwrap_or_default()
                )));
            }
            current = next;
        }
        Err(SendError::Redirects(format!(
            "more than {MAX_REDIRECTS} redirects, the last to {current}"
        )))
    }

    /// Ask the challenge's realm for a token for `default_scope` (none if
    /// empty); `Ok(true)` when the upstream's credentials went with it.
    async fn obtain_token(
        &self,
        params: &HashMap<String, String>,
        default_scope: &str,
    ) -> Result<bool, UpstreamError> {
        let realm = params
            .get("realm")
            .ok_or_else(|| UpstreamError::Invalid("Bearer challenge without realm".into()))?;
        let realm_uri: Uri = realm
            .parse()
            .map_err(|_| UpstreamError::Invalid(format!("bad token realm {realm:?}")))?;
        if realm_uri.scheme().is_none() || realm_uri.authority().is_none() {
            return Err(UpstreamError::Invalid(format!(
                "token realm {realm:?} is not an absolute URL"
            )));
        }
        let mut query = Vec::new();
        if let Some(s) = params.get("service") {
            query.push(format!("service={}", crate::wire::percent_encode(s)));
        }
        if !default_scope.is_empty() {
            query.push(format!(
                "scope={}",
                crate::wire::percent_encode(default_scope)
            ));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{sep}{}", query.join("&"));
        let mut b = Request::builder().method(Method::GET).uri(&url);
        let mut credentials_sent = false;
        if let Some(basic) = self.basic() {
            match realm_trust(&self.base, &realm_uri, &self.config.token_realms) {
                RealmTrust::Trusted => {
                    b = b.header(AUTHORIZATION, basic);
                    credentials_sent = true;
                }
                RealmTrust::Foreign(why) => {
                    // Ask for an anonymous token instead: public content
                    // still pulls, and the password stays home.
                    metrics::inc(&self.metrics.credentials_withheld);
                    self.host.warn(&format!(
                        "upstream {}: credentials withheld from token realm {realm:?} ({why}); \
                         asking for an anonymous token (list the realm's host under \
                         token_realms to trust it)",
                        self.config.name
                    ));
                }
            }
        }
        let req = b
            .body(())
            .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        let resp = self
            .fetch
            .fetch(req)
            .await
            .map_err(|e| UpstreamError::unavailable_from("token server", e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(if status.is_server_error() {
                UpstreamError::unavailable(format!("token server answered {status}"))
            } else {
                UpstreamError::Denied(status.as_u16())
            });
        }
        let bytes = body::collect_limited(F::body_stream(resp.into_body()), TOKEN_BODY_LIMIT)
            .await
            .map_err(|e| match e {
                CollectError::TooLarge => UpstreamError::Invalid("token response too large".into()),
                CollectError::Io(e) => UpstreamError::unavailable_from("reading the token", e),
            })?;
        let token = parse_token(&bytes)?;
        let expires = self.host.now_unix_ms() + token.1.saturating_sub(10).max(1) * 1000;
        self.lock_tokens()
            .insert(default_scope.to_owned(), (token.0, expires));
        Ok(credentials_sent)
    }

    /// `GET /v2/` as the mirror would send it, answering the upstream's
    /// challenge with the configured credentials: what `kura doctor`
    /// checks. No retries: a check reports the first failure.
    pub(crate) async fn probe(&self) -> Result<UpstreamAuth, UpstreamError> {
        let url = format!("{}/v2/", self.base.to_string().trim_end_matches('/'));
        let mut auth = UpstreamAuth::None;
        loop {
            let resp = self
                .send_following_redirects(&url, &Method::GET, "", None)
                .await
                .map_err(|e| match e {
                    SendError::Fetch(e) => UpstreamError::unavailable_from("no response", e),
                    SendError::Redirects(why) => UpstreamError::Invalid(why),
                })?;
            let status = resp.status();
            if status.is_success() {
                return Ok(auth);
            }
            if status == StatusCode::UNAUTHORIZED && auth == UpstreamAuth::None {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(Challenge::parse);
                drop(resp);
                match challenge {
                    Some(Challenge::Bearer(params)) => {
                        let credentials = self.obtain_token(&params, "").await?;
                        auth = UpstreamAuth::Token { credentials };
                        continue;
                    }
                    Some(Challenge::Basic) if self.config.username.is_some() => {
                        self.lock_tokens()
                            .insert(String::new(), (String::new(), u64::MAX));
                        auth = UpstreamAuth::Basic;
                        continue;
                    }
                    _ => return Err(UpstreamError::Denied(401)),
                }
            }
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    UpstreamError::Denied(status.as_u16())
                }
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    UpstreamError::unavailable(format!("upstream answered {s}"))
                }
                s => UpstreamError::Status(s.as_u16()),
            });
        }
    }
}

/// Why a request (with the redirects it was sent) got no usable answer.
enum SendError {
    /// No response.
    Fetch(FetchError),
    /// Redirects that lead nowhere: a loop, too many, or one without a
    /// usable `Location`. The upstream answered; asking again would go
    /// round again.
    Redirects(String),
}

impl From<FetchError> for SendError {
    fn from(e: FetchError) -> Self {
        SendError::Fetch(e)
    }
}

/// How an upstream let [`Registry::probe_upstream`](crate::Registry::probe_upstream)
/// in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamAuth {
    /// `/v2/` answered without a challenge.
    None,
    /// With the configured basic credentials.
    Basic,
    /// With a token from the challenge's realm; `credentials` says whether
    /// the configured credentials went to the realm (they do not when
    /// none are configured, or the realm is foreign to the upstream).
    Token {
        /// The configured credentials were sent to the realm.
        credentials: bool,
    },
}

/// Whether a token realm may receive an upstream's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RealmTrust {
    /// May receive the credentials.
    Trusted,
    /// Not trusted, and why.
    Foreign(&'static str),
}

/// Decide whether the token realm `realm`, named by the `WWW-Authenticate`
/// challenge of the upstream at `upstream`, may receive the upstream's
/// credentials. A challenge is just a header the upstream (or anything
/// between it and us) sends; following it blindly hands the password to
/// whatever host it names.
///
/// Trusted: a realm on the upstream's own host (any port); a realm sharing
/// the upstream's registrable domain by the public suffix list
/// (`auth.docker.io` for `registry-1.docker.io`), which never applies to IP
/// literals; a realm whose host (or `host:port`) is listed in `extra`.
/// Never trusted, whatever the host: plain HTTP when the upstream is HTTPS,
/// or a scheme other than HTTP(S).
pub(crate) fn realm_trust(upstream: &Uri, realm: &Uri, extra: &[String]) -> RealmTrust {
    let scheme = |u: &Uri| u.scheme_str().map(str::to_ascii_lowercase);
    let (up_scheme, realm_scheme) = (scheme(upstream), scheme(realm));
    match realm_scheme.as_deref() {
        Some("https") => {}
        Some("http") if up_scheme.as_deref() != Some("https") => {}
        Some("http") => return RealmTrust::Foreign("plain HTTP realm for an HTTPS upstream"),
        _ => return RealmTrust::Foreign("realm is not an HTTP(S) URL"),
    }
    let host = |u: &Uri| {
        u.host().map(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        })
    };
    let (Some(up_host), Some(realm_host)) = (host(upstream), host(realm)) else {
        return RealmTrust::Foreign("realm has no host");
    };
    if up_host == realm_host {
        return RealmTrust::Trusted;
    }
    let realm_port = realm.port_u16().unwrap_or(match realm_scheme.as_deref() {
        Some("https") => 443,
        _ => 80,
    });
    let listed = extra.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        // `[v6]` or `[v6]:port`; `host` or `host:port`; a bare IPv6
        // address (more than one colon, no brackets) has no port.
        let (h, port) = if let Some(rest) = entry.strip_prefix('[') {
            match rest.split_once(']') {
                Some((h, "")) => (h, None),
                Some((h, p)) => match p.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None => return false,
                },
                None => return false,
            }
        } else {
            match entry.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h, Some(p)),
                _ => (entry.as_str(), None),
            }
        };
        h == realm_host && port.is_none_or(|p| p.parse::<u16>() == Ok(realm_port))
    });
    if listed {
        return RealmTrust::Trusted;
    }
    let is_ip = |h: &str| h.parse::<std::net::IpAddr>().is_ok();
    if is_ip(&up_host) || is_ip(&realm_host) {
        return RealmTrust::Foreign("an IP-literal upstream trusts only itself");
    }
    match (psl::domain_str(&up_host), psl::domain_str(&realm_host)) {
        (Some(a), Some(b)) if a == b => RealmTrust::Trusted,
        _ => RealmTrust::Foreign("realm is outside the upstream's registrable domain"),
    }
}

/// `(token, expires_in seconds)` from a token server's JSON.
fn parse_token(bytes: &Bytes) -> Result<(String, u64), UpstreamError> {
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let t: TokenResponse = serde_json::from_slice(bytes)
        .map_err(|e| UpstreamError::Invalid(format!("token response: {e}")))?;
    let token = t
        .token
        .or(t.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| UpstreamError::Invalid("token response has no token".into()))?;
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(UpstreamError::Invalid(
            "token has characters not allowed in a header".into(),
        ));
    }
    // The distribution token spec's default lifetime is 60 seconds.
    Ok((token, t.expires_in.unwrap_or(60)))
}

/// Same scheme, host and port (RFC 6454 origins; default ports made
/// explicit, case folded).
fn same_origin(a: &Uri, b: &Uri) -> bool {
    let origin = |u: &Uri| {
        let scheme = u.scheme_str()?.to_ascii_lowercase();
        let host = u.host()?.to_ascii_lowercase();
        let port = u.port_u16().or(match scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        });
        Some((scheme, host, port))
    };
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

/// Resolve a `Location` header against the request URL.
fn resolve(base: &Uri, location: &str) -> Result<Uri, FetchError> {
    let bad = || FetchError::other(format!("bad redirect location {location:?}"));
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().map_err(|_| bad());
    }
    let scheme = base.scheme_str().ok_or_else(bad)?;
    let authority = base.authority().ok_or_else(bad)?;
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}").parse().map_err(|_| bad());
    }
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}")
            .parse()
            .map_err(|_| bad());
    }
    let dir = base.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    format!("{scheme}://{authority}{dir}/{location}")
        .parse()
        .map_err(|_| bad())
}

/// An authentication challenge from `WWW-Authenticate`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// Docker token auth, with the challenge's parameters (`realm`,
    /// `service`, `scope`), keys lower-cased.
    Bearer(HashMap<String, String>),
    /// HTTP basic auth.
    Basic,
    /// Any other scheme: kura cannot answer it.
    Other,
}

impl Challenge {
    /// Lenient: scheme case-insensitive, values quoted or not, commas
    /// inside quotes kept, unknown parameters ignored.
    pub(crate) fn parse(value: &str) -> Challenge {
        let value = value.trim();
        let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::Other;
        }
        let mut params = HashMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            let key: String =
                std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
            if key.is_empty() {
                break;
            }
            if chars.next_if_eq(&'=').is_none() {
                continue;
            }
            let mut val = String::new();
            if chars.next_if_eq(&'"').is_some() {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                val.push(n);
                            }
                        }
                        '"' => break,
                        c => val.push(c),
                    }
                }
            } else {
                val = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                    .collect::<String>()
                    .trim()
                    .to_owned();
            }
            params.insert(key.trim().to_ascii_lowercase(), val);
        }
        Challenge::Bearer(params)
    }
}

/// Base64 for basic credentials (a dozen lines beat a dependency here).
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(crate) fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {

    /// Found by the `challenge` fuzz target: a listed bracketed host with
    /// one colon (`[00000u:2]`) was split as `host:port` and never matched.
    #[test]
    fn listed_bracketed_hosts_are_hosts() {
        let up: Uri = "https://registry.example".parse().unwrap();
        for (realm, listed, trusted) in [
            ("https://[00000u:2]/token", "[00000u:2]", true),
            ("https://[::1]:8443/token", "[::1]:8443", true),
            ("https://[::1]:8443/token", "[::1]", true),
            ("https://[::1]:8443/token", "[::1]:9999", false),
            ("https://auth.other:8443/token", "auth.other:8443", true),
            ("https://auth.other/token", "auth.other", true),
            ("https://auth.other/token", "auth.other:8443", false),
        ] {
            let realm: Uri = realm.parse().unwrap();
            assert_eq!(
                matches!(
                    realm_trust(&up, &realm, &[listed.to_owned()]),
                    RealmTrust::Trusted
                ),
                trusted,
                "{realm} listed as {listed}"
            );
        }
    }
    // On wasm32, `#[test]` is wasm-bindgen-test's (run in Node by
    // wasm-bindgen-test-runner); natively it is the built-in one.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        let Challenge::Bearer(p) = c else { panic!() };
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/alpine:pull,push");
        let Challenge::Bearer(p) = Challenge::parse("bearer realm=http://127.0.0.1:1/t, service=x")
        else {
            panic!()
        };
        assert_eq!(p["realm"], "http://127.0.0.1:1/t");
        assert_eq!(p["service"], "x");
        assert_eq!(Challenge::parse(r#"Basic realm="x""#), Challenge::Basic);
        assert_eq!(Challenge::parse("Negotiate"), Challenge::Other);
        let Challenge::Bearer(p) = Challenge::parse("Bearer") else {
            panic!()
        };
        assert!(p.is_empty());
        let Challenge::Bearer(p) = Challenge::parse(r#"Bearer realm="a\"b",,junk,x="#) else {
            panic!()
        };
        assert_eq!(p["realm"], "a\"b");
    }

    #[test]
    fn redirects() {
        let base: Uri = "https://registry.example/v2/a/blobs/sha256:x"
            .parse()
            .unwrap();
        assert_eq!(
            resolve(&base, "https://cdn.example/b?sig=1")
                .unwrap()
                .to_string(),
            "https://cdn.example/b?sig=1"
        );
        assert_eq!(
            resolve(&base, "/other").unwrap().to_string(),
            "https://registry.example/other"
        );
        assert_eq!(
            resolve(&base, "//cdn.example/x").unwrap().to_string(),
            "https://cdn.example/x"
        );
        assert_eq!(
            resolve(&base, "rel").unwrap().to_string(),
            "https://registry.example/v2/a/blobs/rel"
        );
    }

    #[test]
    fn origins() {
        let o = |a: &str, b: &str| same_origin(&a.parse().unwrap(), &b.parse().unwrap());
        assert!(o("https://r.example/v2/x", "https://r.example:443/other"));
        assert!(o("https://R.example/v2/x", "https://r.example/v2/y"));
        // A redirect from HTTPS to HTTP on the same host and port keeps
        // nothing secret.
        assert!(!o("https://r.example:5000/a", "http://r.example:5000/a"));
        assert!(!o("https://r.example/a", "https://cdn.example/a"));
        assert!(!o("https://r.example/a", "https://r.example:8443/a"));
    }

    #[test]
    fn tokens() {
        assert_eq!(
            parse_token(&Bytes::from_static(br#"{"token":"abc","expires_in":300}"#)).unwrap(),
            ("abc".into(), 300)
        );
        assert_eq!(
            parse_token(&Bytes::from_static(br#"{"access_token":"xyz"}"#)).unwrap(),
            ("xyz".into(), 60)
        );
        assert!(parse_token(&Bytes::from_static(br#"{"token":""}"#)).is_err());
        assert!(parse_token(&Bytes::from_static(b"{\"token\":\"a\\nb\"}")).is_err());
        assert!(parse_token(&Bytes::from_static(b"nope")).is_err());
    }

    #[test]
    fn base64() {
        assert_eq!(base64_lite::encode(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64_lite::encode(b"a"), "YQ==");
        assert_eq!(base64_lite::encode(b"ab"), "YWI=");
        assert_eq!(base64_lite::encode(b""), "");
    }

    #[test]
    fn credentials_go_only_where_the_upstream_lives() {
        let trust = |up: &str, realm: &str, extra: &[&str]| {
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            realm_trust(&up.parse().unwrap(), &realm.parse().unwrap(), &extra)
        };
        let ok = RealmTrust::Trusted;
        let hub = "https://registry-1.docker.io";
        assert_eq!(trust(hub, "https://auth.docker.io/token", &[]), ok);
        assert_eq!(trust("https://ghcr.io", "https://ghcr.io/token", &[]), ok);
        assert_eq!(
            trust(
                "https://Registry.Example.com",
                "https://registry.example.com:8443/t",
                &[]
            ),
            ok
        );
        // Another registrable domain, or one only sharing a public suffix.
        assert!(matches!(
            trust(hub, "https://auth.evil.io/token", &[]),
            RealmTrust::Foreign(_)
        ));
        assert!(matches!(
            trust("https://a.github.io", "https://b.github.io/token", &[]),
            RealmTrust::Foreign(_)
        ));
        assert!(matches!(
            trust("https://example.co.uk", "https://other.co.uk/t", &[]),
            RealmTrust::Foreign(_)
        ));
        // Never a downgrade to plain HTTP, even on the same host.
        assert!(matches!(
            trust("https://ghcr.io", "http://ghcr.io/token", &[]),
            RealmTrust::Foreign(_)
        ));
        assert!(matches!(
            trust(hub, "http://auth.docker.io/token", &["auth.docker.io"]),
            RealmTrust::Foreign(_)
        ));
        // An HTTP upstream may use an HTTPS realm on its host.
        assert_eq!(
            trust("http://127.0.0.1:5000", "https://127.0.0.1:5001/t", &[]),
            ok
        );
        // IP literals match only themselves.
        assert_eq!(
            trust("http://127.0.0.1:5000", "http://127.0.0.1:9/token", &[]),
            ok
        );
        assert!(matches!(
            trust("http://127.0.0.1:5000", "http://127.0.0.2:5000/token", &[]),
            RealmTrust::Foreign(_)
        ));
        assert!(matches!(
            trust("http://[::1]:5000", "http://127.0.0.1:5000/token", &[]),
            RealmTrust::Foreign(_)
        ));
        assert_eq!(
            trust("http://[::1]:5000", "http://[::1]:6000/token", &[]),
            ok
        );
        // Listed explicitly: by host, or by host and port.
        assert_eq!(
            trust(
                "http://127.0.0.1:5000",
                "http://127.0.0.2:7000/token",
                &["127.0.0.2"]
            ),
            ok
        );
        assert_eq!(
            trust(
                "http://127.0.0.1:5000",
                "http://127.0.0.2:7000/token",
                &["127.0.0.2:7000"]
            ),
            ok
        );
        assert!(matches!(
            trust(
                "http://127.0.0.1:5000",
                "http://127.0.0.2:7001/token",
                &["127.0.0.2:7000"]
            ),
            RealmTrust::Foreign(_)
        ));
        assert_eq!(
            trust(
                "https://quay.io",
                "https://auth.example.com/t",
                &["auth.example.com"]
            ),
            ok
        );
        assert!(matches!(
            trust("https://quay.io", "ftp://quay.io/t", &[]),
            RealmTrust::Foreign(_)
        ));
    }

    #[test]
    fn library_names() {
        let hub = UpstreamConfig {
            name: "docker.io".into(),
            url: "https://registry-1.docker.io".into(),
            username: None,
            password: None,
            tag_ttl_ms: 0,
            max_stale_ms: 0,
            token_realms: Vec::new(),
            not_found_ttl_ms: 0,
            body_idle_timeout_ms: 0,
        };
        assert_eq!(hub.upstream_name("alpine"), "library/alpine");
        assert_eq!(hub.upstream_name("bitnami/redis"), "bitnami/redis");
        let ghcr = UpstreamConfig {
            name: "ghcr.io".into(),
            ..hub
        };
        assert_eq!(ghcr.upstream_name("alpine"), "alpine");
    }
}
