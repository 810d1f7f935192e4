//! kura-core's Fetch over reqwest: the upstream HTTP client, with proxies
//! and extra CA roots.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use futures::TryStreamExt;
use kura_core::ByteStream;
use kura_core::{Fetch, FetchError};

use crate::config::MirrorConfig;
use crate::metrics::ServerMetrics;

pub struct HttpFetch {
    client: reqwest::Client,
    metrics: Arc<ServerMetrics>,
}

impl HttpFetch {
    pub fn new(config: &MirrorConfig, metrics: Arc<ServerMetrics>) -> anyhow::Result<Self> {
        Ok(HttpFetch {
            client: upstream_client(config)?,
            metrics,
        })
    }
}

/// The HTTP client for upstreams: `config`'s timeouts, proxy and CA files.
pub fn upstream_client(config: &MirrorConfig) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        // The core follows redirects itself, dropping credentials when
        // the host changes (blob CDNs).
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
        .read_timeout(Duration::from_secs(config.read_timeout_secs))
        .user_agent(concat!("kura/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    for proxy in proxies(config)? {
        b = b.proxy(proxy);
    }
    for file in &config.ca_files {
        let pem =
            std::fs::read(file).with_context(|| format!("reading CA file {}", file.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("parsing CA file {}", file.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().context("building the upstream HTTP client")
}

/// The first of the environment variables `names` that is set and not
/// empty (proxy variables come in upper and lower case).
pub fn first_env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// The configured proxy, else the conventional environment variables
/// (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, any case), so a
/// corporate proxy needs no kura-specific setting.
fn proxies(config: &MirrorConfig) -> anyhow::Result<Vec<reqwest::Proxy>> {
    let env = first_env;
    let no_proxy = config
        .no_proxy
        .clone()
        .or_else(|| env(&["NO_PROXY", "no_proxy"]))
        .and_then(|s| reqwest::NoProxy::from_string(&s));
    let mut out = Vec::new();
    if let Some(url) = &config.proxy {
        out.push(
            reqwest::Proxy::all(url)
                .context("mirror.proxy")?
                .no_proxy(no_proxy),
        );
        return Ok(out);
    }
    if let Some(url) = env(&["HTTPS_PROXY", "https_proxy"]) {
        out.push(
            reqwest::Proxy::https(&url)
                .context("HTTPS_PROXY")?
                .no_proxy(no_proxy.clone()),
        );
    }
    if let Some(url) = env(&["HTTP_PROXY", "http_proxy"]) {
        out.push(
            reqwest::Proxy::http(&url)
                .context("HTTP_PROXY")?
                .no_proxy(no_proxy.clone()),
        );
    }
    if let Some(url) = env(&["ALL_PROXY", "all_proxy"]) {
        out.push(
            reqwest::Proxy::all(&url)
                .context("ALL_PROXY")?
                .no_proxy(no_proxy),
        );
    }
    Ok(out)
}

#[async_trait]
impl Fetch for HttpFetch {
    type Body = ByteStream;

    async fn fetch(
        &self,
        req: http::Request<()>,
    ) -> Result<http::Response<ByteStream>, FetchError> {
        let (parts, ()) = req.into_parts();
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let started = Instant::now();
        let resp = self
            .client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .send()
            .await
            .map_err(|e| {
                self.metrics
                    .upstream_failed(&host, &error_chain(&e), started);
                if e.is_timeout() {
                    FetchError::Timeout
                } else if e.is_connect() {
                    FetchError::connect(e)
                } else {
                    FetchError::other(e)
                }
            })?;
        self.metrics
            .upstream_answered(&host, resp.status(), resp.headers(), started);
        let mut out = http::Response::builder().status(resp.status());
        if let Some(h) = out.headers_mut() {
            *h = resp.headers().clone();
        }
        let bytes = self.metrics.upstream_bytes(&host);
        let body: ByteStream = Box::pin(
            resp.bytes_stream()
                .inspect_ok(move |chunk| {
                    bytes.inc_by(chunk.len() as u64);
                })
                // reqwest's own words stop at "error decoding response
                // body"; the log line of a failed fill needs the cause
                // (a reset connection, a body cut short).
                .map_err(|e| io::Error::other(error_chain(&e))),
        );
        out.body(body).map_err(FetchError::other)
    }

    fn body_stream(body: ByteStream) -> ByteStream {
        body
    }
}

/// An error and its causes in one line (reqwest's own words stop at
/// "error sending request").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let words = c.to_string();
        if !out.contains(&words) {
            out.push_str(": ");
            out.push_str(&words);
        }
        cause = c.source();
    }
    out
}
