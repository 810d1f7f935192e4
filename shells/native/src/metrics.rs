//! What the binary measures beyond the core's counters, and `/metrics`:
//! request latency per route, each upstream's answers, durations and
//! bytes, and the state of each upstream for the status page. Encoded with
//! prometheus-client; the core's counters (`kura_core::Metrics::samples`)
//! are encoded beside them at each scrape, under the names they have on
//! every host.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kura_core::{Sample, SampleKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The content type of what [`ServerMetrics::render`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How many repositories the status page ranks; names beyond this many
/// distinct ones are not counted (a client inventing names must not grow
/// memory without bound).
const MAX_TRACKED_REPOSITORIES: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    /// One of the methods the API uses, else `other`: a client inventing
    /// methods must not grow the series without bound.
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    /// The upstream's `host[:port]` (a token realm's host for token
    /// requests).
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamStatusLabels {
    upstream: String,
    /// The HTTP status, or `error` when no answer came.
    status: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The binary's own measurements.
pub struct ServerMetrics {
    registry: Registry,
    request_seconds: Histograms<RouteLabels>,
    upstream_seconds: Histograms<UpstreamLabels>,
    upstream_requests: Family<UpstreamStatusLabels, Counter>,
    upstream_body_bytes: Family<UpstreamLabels, Counter>,
    upstreams: Mutex<BTreeMap<String, UpstreamState>>,
    repositories: Mutex<HashMap<String, u64>>,
    started: Instant,
}

/// What the last answers of one upstream host said.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpstreamState {
    pub requests: u64,
    pub failures: u64,
    /// Unix ms of the last answer that was not a failure.
    pub last_ok_ms: Option<u64>,
    /// Unix ms and words of the last failure: no answer, or a 5xx or 429.
    pub last_error: Option<(u64, String)>,
    /// Docker Hub's pull quota as its last answer gave it
    /// (`ratelimit-limit`, `ratelimit-remaining`: `100;w=21600`).
    pub ratelimit_limit: Option<String>,
    pub ratelimit_remaining: Option<String>,
}

impl UpstreamState {
    /// Whether the last thing heard from the upstream was a failure.
    pub fn failing(&self) -> bool {
        match (&self.last_error, self.last_ok_ms) {
            (Some((at, _)), Some(ok)) => *at >= ok,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

fn latency_buckets() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics::new()
    }
}

impl ServerMetrics {
    pub fn new() -> ServerMetrics {
        let mut registry = Registry::default();
        let request_seconds: Histograms<RouteLabels> =
            Family::new_with_constructor(latency_buckets);
        let upstream_seconds: Histograms<UpstreamLabels> =
            Family::new_with_constructor(latency_buckets);
        let upstream_requests = Family::<UpstreamStatusLabels, Counter>::default();
        let upstream_body_bytes = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "kura_http_request_duration_seconds",
            "Time from a request's arrival to its response's headers, by route and method",
            request_seconds.clone(),
        );
        registry.register(
            "kura_upstream_request_duration_seconds",
            "Time from sending a request upstream to its response's headers, by upstream host",
            upstream_seconds.clone(),
        );
        registry.register(
            "kura_upstream_requests",
            "Requests sent upstream, by upstream host and status (error: no answer)",
            upstream_requests.clone(),
        );
        registry.register(
            "kura_upstream_response_bytes",
            "Response body bytes read from upstreams (manifests, blobs, tokens), by upstream host",
            upstream_body_bytes.clone(),
        );
        ServerMetrics {
            registry,
            request_seconds,
            upstream_seconds,
            upstream_requests,
            upstream_body_bytes,
            upstreams: Mutex::default(),
            repositories: Mutex::default(),
            started: Instant::now(),
        }
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// A request answered: its route (`kura_core::wire::Route::kind`),
    /// method, and how long until the response's headers.
    pub fn request(&self, route: &'static str, method: &http::Method, started: Instant) {
        self.request_seconds
            .get_or_create(&RouteLabels {
                route,
                method: match method.as_str() {
                    "GET" => "GET",
                    "HEAD" => "HEAD",
                    "PUT" => "PUT",
                    "POST" => "POST",
                    "PATCH" => "PATCH",
                    "DELETE" => "DELETE",
                    "OPTIONS" => "OPTIONS",
                    _ => "other",
                },
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// A manifest pulled from `repository` (as the client named it).
    pub fn pulled(&self, repository: &str) {
        let mut repos = self.repositories.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = repos.get_mut(repository) {
            *n += 1;
        } else if repos.len() < MAX_TRACKED_REPOSITORIES {
            repos.insert(repository.to_owned(), 1);
        }
    }

    /// The `n` repositories pulled most, most first.
    pub fn top_repositories(&self, n: usize) -> Vec<(String, u64)> {
        let repos = self.repositories.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(String, u64)> = repos.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// An upstream answered `status` after `started` (headers in hand).
    pub fn upstream_answered(
        &self,
        host: &str,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        started: Instant,
    ) {
        self.upstream_seconds
            .get_or_create(&UpstreamLabels {
                upstream: host.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.upstream_requests
            .get_or_create(&UpstreamStatusLabels {
                upstream: host.to_owned(),
                status: status.as_u16().to_string(),
            })
            .inc();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let failed = status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS;
        let mut ups = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        let state = ups.entry(host.to_owned()).or_default();
        state.requests += 1;
        if failed {
            state.failures += 1;
            state.last_error = Some((unix_ms(), format!("answered {status}")));
        } else {
            state.last_ok_ms = Some(unix_ms());
        }
        if let Some(limit) = header("ratelimit-limit") {
            state.ratelimit_limit = Some(limit);
        }
        if let Some(remaining) = header("ratelimit-remaining") {
            state.ratelimit_remaining = Some(remaining);
        }
    }

    /// A request to an upstream got no answer.
    pub fn upstream_failed(&self, host: &str, error: &str, started: Instant) {
        self.upstream_seconds
            .get_or_create(&UpstreamLabels {
                upstream: host.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.upstream_requests
            .get_or_create(&UpstreamStatusLabels {
                upstream: host.to_owned(),
                status: "error".into(),
            })
            .inc();
        let mut ups = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        let state = ups.entry(host.to_owned()).or_default();
        state.requests += 1;
        state.failures += 1;
        state.last_error = Some((unix_ms(), error.to_owned()));
    }

    /// The counter of body bytes read from `host`, to add to as they come.
    pub fn upstream_bytes(&self, host: &str) -> Counter {
        self.upstream_body_bytes
            .get_or_create(&UpstreamLabels {
                upstream: host.to_owned(),
            })
            .clone()
    }

    /// What is known of the upstream host `host`.
    pub fn upstream(&self, host: &str) -> Option<UpstreamState> {
        self.upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned()
    }

    /// Everything, in the Prometheus text format: the binary's metrics,
    /// then the core's `samples`.
    pub fn render(&self, samples: Vec<Sample>) -> String {
        let mut out = String::new();
        let mut core = Registry::default();
        core.register_collector(Box::new(CoreSamples(samples)));
        let mut process = Registry::default();
        process.register_collector(Box::new(Process {
            uptime_secs: self.uptime_secs(),
        }));
        for r in [&self.registry, &core, &process] {
            // Writing to a String does not fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, r);
        }
        out
    }
}

/// The core's counters and gauges as they are at one scrape.
#[derive(Debug)]
struct CoreSamples(Vec<Sample>);

impl Collector for CoreSamples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        // One descriptor per name, its label sets under it.
        let mut names: Vec<&'static str> = Vec::new();
        for s in &self.0 {
            if !names.contains(&s.name) {
                names.push(s.name);
            }
        }
        for name in names {
            let group: Vec<&Sample> = self.0.iter().filter(|s| s.name == name).collect();
            let first = group[0];
            let metric_type = match first.kind {
                SampleKind::Counter => MetricType::Counter,
                SampleKind::Gauge => MetricType::Gauge,
            };
            let mut family = encoder.encode_descriptor(name, first.help, None, metric_type)?;
            for s in group {
                let labels: Vec<(&str, &str)> =
                    s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let metric = family.encode_family(&labels)?;
                match s.kind {
                    SampleKind::Counter => ConstCounter::new(s.value).encode(metric)?,
                    SampleKind::Gauge => {
                        ConstGauge::new(i64::try_from(s.value).unwrap_or(i64::MAX))
                            .encode(metric)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// The process: version and uptime.
#[derive(Debug)]
struct Process {
    uptime_secs: u64,
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut info = encoder.encode_descriptor(
            "kura_build_info",
            "The running kura's version (always 1).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64)
            .encode(info.encode_family(&[("version", env!("CARGO_PKG_VERSION"))].as_slice())?)?;
        let up = encoder.encode_descriptor(
            "kura_uptime_seconds",
            "Seconds since this process started.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(self.uptime_secs).unwrap_or(i64::MAX)).encode(up)?;
        let sent = encoder.encode_descriptor(
            "kura_sent_from_file_bytes",
            "Response bytes the kernel sent straight from stored files (sendfile, plain HTTP).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(crate::file_window::sent_from_files()).encode(sent)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_and_the_cores_counters_under_stable_names() {
        let m = ServerMetrics::new();
        let started = Instant::now();
        m.request("blob", &http::Method::GET, started);
        m.request("blob", &http::Method::from_bytes(b"BREW").unwrap(), started);
        let mut headers = http::HeaderMap::new();
        headers.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        m.upstream_answered("registry.test", http::StatusCode::OK, &headers, started);
        m.upstream_failed("down.test", "connection refused", started);
        m.upstream_bytes("registry.test").inc_by(42);
        let core = kura_core::Metrics::default();
        let text = m.render(core.samples());
        for line in [
            "kura_http_request_duration_seconds_count{route=\"blob\",method=\"GET\"} 1",
            "kura_http_request_duration_seconds_count{route=\"blob\",method=\"other\"} 1",
            "kura_upstream_requests_total{upstream=\"registry.test\",status=\"200\"} 1",
            "kura_upstream_requests_total{upstream=\"down.test\",status=\"error\"} 1",
            "kura_upstream_response_bytes_total{upstream=\"registry.test\"} 42",
            "kura_cache_hits_total{kind=\"blob\"} 0",
            "# TYPE kura_fills_in_flight gauge",
            "kura_fills_in_flight 0",
            "kura_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        // Every name the core renders itself, prometheus-client renders too.
        for line in core.render().lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(name), "{name} missing");
        }
        assert!(!m.upstream("registry.test").unwrap().failing());
        assert_eq!(
            m.upstream("registry.test")
                .unwrap()
                .ratelimit_remaining
                .as_deref(),
            Some("76;w=21600")
        );
        assert!(m.upstream("down.test").unwrap().failing());
    }

    #[test]
    fn repositories_are_ranked_and_bounded() {
        let m = ServerMetrics::new();
        for _ in 0..3 {
            m.pulled("docker.io/library/alpine");
        }
        m.pulled("team/app");
        for i in 0..MAX_TRACKED_REPOSITORIES + 10 {
            m.pulled(&format!("noise/{i}"));
        }
        let top = m.top_repositories(2);
        assert_eq!(top[0], ("docker.io/library/alpine".to_owned(), 3));
        assert_eq!(top[1], ("noise/0".to_owned(), 1));
        assert_eq!(
            m.repositories.lock().unwrap().len(),
            MAX_TRACKED_REPOSITORIES
        );
    }
}
