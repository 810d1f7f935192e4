//! The status page (`/`) and its JSON (`/_kura/status`): what the mirror
//! saved, how each upstream is doing, what is being filled now. One
//! snapshot type feeds both; the page is plain HTML with its style inline
//! (no script, no external asset) and refreshes itself.

use std::fmt::Write;
use std::sync::Arc;

use axum::body::Body as AxumBody;
use axum::extract::State;
use http::{HeaderMap, HeaderValue, Response};
use kura_core::Sample;
use serde::Serialize;

use crate::metrics::unix_ms;
use crate::server::{operator_access, App};

/// Seconds between the page's reloads.
const REFRESH_SECS: u32 = 10;
/// Repositories listed.
const TOP: usize = 10;

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_secs: u64,
    pub storage: String,
    pub requests: u64,
    pub cache: CacheStatus,
    pub upstreams: Vec<UpstreamStatus>,
    pub top_repositories: Vec<RepositoryPulls>,
}

#[derive(Debug, Serialize)]
pub struct CacheStatus {
    /// Mirrored manifests and blobs served from the cache.
    pub hits: u64,
    /// Mirrored manifests and blobs fetched from upstream.
    pub misses: u64,
    /// hits / (hits + misses); `None` before the first mirrored request.
    pub hit_ratio: Option<f64>,
    pub bytes_from_cache: u64,
    pub bytes_from_upstream: u64,
    /// Mirrored blob bytes in storage as the last eviction pass counted
    /// them; `None` without `mirror.max_size` (no passes run).
    pub size_bytes: Option<u64>,
    pub max_size_bytes: Option<u64>,
    pub fills_in_flight: u64,
    pub evictions: u64,
}

#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub url: String,
    /// Names without a registry prefix go here.
    pub default: bool,
    /// `ok`, `failing` (the last answer was a failure), or `unused`.
    pub health: &'static str,
    pub requests: u64,
    pub failures: u64,
    pub last_ok_secs_ago: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_secs_ago: Option<u64>,
    /// Docker Hub's `ratelimit-limit` / `ratelimit-remaining`, as its last
    /// answer gave them (`100;w=21600`: 100 pulls per 21600 s).
    pub pull_quota_limit: Option<String>,
    pub pull_quota_remaining: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RepositoryPulls {
    pub name: String,
    /// Manifests pulled (an image pull by tag fetches one or two).
    pub manifest_pulls: u64,
}

fn sum(samples: &[Sample], name: &str) -> u64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// The `host[:port]` of an upstream URL, as the fetch records it.
fn authority(url: &str) -> String {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default()
}

impl Status {
    pub fn of(app: &App) -> Status {
        let samples = app.registry.metrics().samples();
        let hits = sum(&samples, "kura_cache_hits");
        let misses = sum(&samples, "kura_cache_misses");
        let now = unix_ms();
        let ago = |ms: u64| now.saturating_sub(ms) / 1000;
        let max_size = app.config.mirror.max_size.map(|m| m.0);
        let upstreams = app
            .config
            .mirror
            .upstreams
            .iter()
            .map(|u| {
                let state = app.metrics.upstream(&authority(&u.url));
                let health = match &state {
                    None => "unused",
                    Some(s) if s.failing() => "failing",
                    Some(_) => "ok",
                };
                let state = state.unwrap_or_default();
                UpstreamStatus {
                    name: u.name.clone(),
                    url: u.url.clone(),
                    default: app.config.mirror.default.as_deref() == Some(u.name.as_str()),
                    health,
                    requests: state.requests,
                    failures: state.failures,
                    last_ok_secs_ago: state.last_ok_ms.map(ago),
                    last_error_secs_ago: state.last_error.as_ref().map(|(at, _)| ago(*at)),
                    last_error: state.last_error.map(|(_, e)| e),
                    pull_quota_limit: state.ratelimit_limit,
                    pull_quota_remaining: state.ratelimit_remaining,
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: app.metrics.uptime_secs(),
            storage: match &app.config.storage.s3 {
                Some(s3) => format!("s3://{}", s3.bucket),
                None => app.config.data_dir.display().to_string(),
            },
            requests: sum(&samples, "kura_http_requests"),
            cache: CacheStatus {
                hits,
                misses,
                hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
                bytes_from_cache: sum(&samples, "kura_cache_bytes_served"),
                bytes_from_upstream: sum(&samples, "kura_upstream_bytes"),
                size_bytes: max_size.map(|_| sum(&samples, "kura_cache_size_bytes")),
                max_size_bytes: max_size,
                fills_in_flight: sum(&samples, "kura_fills_in_flight"),
                evictions: sum(&samples, "kura_cache_evictions"),
            },
            upstreams,
            top_repositories: app
                .metrics
                .top_repositories(TOP)
                .into_iter()
                .map(|(name, manifest_pulls)| RepositoryPulls {
                    name,
                    manifest_pulls,
                })
                .collect(),
        }
    }
}

pub async fn json(State(app): State<Arc<App>>, headers: HeaderMap) -> Response<AxumBody> {
    if let Some(denied) = operator_access(&app, &headers) {
        return denied;
    }
    let body = serde_json::to_vec_pretty(&Status::of(&app)).unwrap_or_default();
    let mut resp = Response::new(AxumBody::from(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub async fn page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response<AxumBody> {
    if let Some(denied) = operator_access(&app, &headers) {
        return denied;
    }
    let mut resp = Response::new(AxumBody::from(render(&Status::of(&app))));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    // Nothing on the page loads from elsewhere or runs.
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    resp
}

/// Text for HTML: `&`, `<`, `>` and quotes escaped.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `3725` → `1h 2m`.
fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 18px}
header h1{margin:0;font-size:1.3em}header p{margin:4px 0 0;color:#b8c0d0;font-size:.9em}
main{max-width:980px;margin:0 auto;padding:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border-radius:8px;padding:12px 14px;flex:1 1 200px;box-shadow:0 1px 2px #0002}
.card b{display:block;font-size:1.6em;margin-top:4px}
.card small{color:#5b6477}
h2{font-size:1.05em;margin:20px 4px 8px}
table{width:100%;border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden;box-shadow:0 1px 2px #0002}
th,td{text-align:left;padding:8px 10px;border-bottom:1px solid #e6e8ec;font-size:.92em;vertical-align:top}
th{background:#eef0f4}
.ok{color:#0a7a35;font-weight:600}.failing{color:#b3261e;font-weight:600}.unused{color:#5b6477}
.bar{height:8px;background:#e6e8ec;border-radius:4px;margin-top:8px}
.bar i{display:block;height:8px;background:#2f6fde;border-radius:4px}
.err{color:#b3261e;word-break:break-word}
@media (max-width:600px){.hide-narrow{display:none}th,td{padding:6px}}
";

/// The status page.
pub fn render(s: &Status) -> String {
    let mut h = String::new();
    let c = &s.cache;
    let ratio = c
        .hit_ratio
        .map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "–".into());
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
<meta name=viewport content=\"width=device-width,initial-scale=1\">\
<meta http-equiv=refresh content={REFRESH_SECS}>\
<title>kura status</title><style>{STYLE}</style></head><body>\
<header><h1>kura {}</h1><p>up {} · storage {} · {} requests · refreshes every {REFRESH_SECS}s · <a style=color:#b8c0d0 href=/_kura/status>JSON</a> · <a style=color:#b8c0d0 href=/metrics>metrics</a></p></header><main>",
        esc(s.version),
        duration(s.uptime_secs),
        esc(&s.storage),
        s.requests,
    );
    let size = match (c.size_bytes, c.max_size_bytes) {
        (Some(size), Some(max)) => {
            let pct = if max == 0 {
                100.0
            } else {
                (size as f64 / max as f64 * 100.0).min(100.0)
            };
            format!(
                "{} <small>of {}</small><div class=bar><i style=\"width:{pct:.1}%\"></i></div>",
                bytes(size),
                bytes(max)
            )
        }
        _ => "– <small>no mirror.max_size</small>".into(),
    };
    let _ = write!(
        h,
        "<div class=cards>\
<div class=card id=hit-ratio><small>Cache hit ratio</small><b>{ratio}</b><small>{} hits · {} misses</small></div>\
<div class=card id=saved><small>Served from cache</small><b>{}</b><small>{} fetched upstream</small></div>\
<div class=card id=size><small>Cache size</small><b>{size}</b></div>\
<div class=card id=fills><small>Fills in flight</small><b>{}</b><small>{} evicted</small></div>\
</div>",
        c.hits,
        c.misses,
        bytes(c.bytes_from_cache),
        bytes(c.bytes_from_upstream),
        c.fills_in_flight,
        c.evictions,
    );
    h.push_str(
        "<h2>Upstreams</h2><table id=upstreams><tr><th>Upstream</th><th>Health</th>\
<th class=hide-narrow>Requests</th><th>Pull quota</th><th>Last error</th></tr>",
    );
    for u in &s.upstreams {
        let quota = match (&u.pull_quota_remaining, &u.pull_quota_limit) {
            (Some(r), Some(l)) => {
                format!("{} left of {}", esc(quota_count(r)), esc(quota_count(l)))
            }
            (Some(r), None) => format!("{} left", esc(quota_count(r))),
            _ => "–".into(),
        };
        let last_error = match (&u.last_error, u.last_error_secs_ago) {
            (Some(e), Some(ago)) => format!(
                "<span class=err>{}</span> <small>{} ago</small>",
                esc(e),
                duration(ago)
            ),
            _ => "–".into(),
        };
        let _ = write!(
            h,
            "<tr><td><b>{}</b>{}<br><small>{}</small></td><td class={}>{}</td>\
<td class=hide-narrow>{} <small>({} failed)</small></td><td>{quota}</td><td>{last_error}</td></tr>",
            esc(&u.name),
            if u.default {
                " <small>(default)</small>"
            } else {
                ""
            },
            esc(&u.url),
            u.health,
            u.health,
            u.requests,
            u.failures,
        );
    }
    h.push_str("</table><h2>Top repositories</h2><table id=repositories><tr><th>Repository</th><th>Manifest pulls</th></tr>");
    if s.top_repositories.is_empty() {
        h.push_str("<tr><td colspan=2>No pulls yet.</td></tr>");
    }
    for r in &s.top_repositories {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(&r.name),
            r.manifest_pulls
        );
    }
    h.push_str("</table></main></body></html>\n");
    h
}

/// `76;w=21600` → `76`.
fn quota_count(v: &str) -> &str {
    v.split(';').next().unwrap_or(v).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_clients_are_escaped() {
        assert_eq!(esc("<script>\"&'"), "&lt;script&gt;&quot;&amp;&#39;");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12), "12 B");
        assert_eq!(duration(3725), "1h 2m");
        assert_eq!(quota_count("76;w=21600"), "76");
    }
}
