//! Counters for operators, rendered in the Prometheus text format (the
//! shells serve them at `/metrics`). Plain atomics: no dependency, and
//! they work on wasm32.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The registry's counters since it started, for [`Metrics::render`].
#[derive(Default)]
pub struct Metrics {
    /// `(route, status)` → count.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Mirrored manifests served from the cache (`kura_cache_hits_total`).
    pub(crate) manifest_hits: AtomicU64,
    /// Mirrored manifests fetched from upstream (`kura_cache_misses_total`).
    pub(crate) manifest_misses: AtomicU64,
    /// Tags a HEAD upstream confirmed unchanged
    /// (`kura_cache_revalidations_total`).
    pub(crate) manifest_revalidations: AtomicU64,
    /// Cached tags served because the upstream failed
    /// (`kura_cache_stale_total`).
    pub(crate) stale_served: AtomicU64,
    /// Mirrored blobs served from the cache (`kura_cache_hits_total`).
    pub(crate) blob_hits: AtomicU64,
    /// Mirrored blobs fetched from upstream (`kura_cache_misses_total`).
    pub(crate) blob_misses: AtomicU64,
    /// Requests that joined an upstream fetch already in flight
    /// (`kura_singleflight_joins_total`).
    pub(crate) singleflight_joins: AtomicU64,
    /// Blob fills followed from another process's spool instead of
    /// fetched (`kura_fills_followed_elsewhere_total`).
    pub(crate) fills_followed_elsewhere: AtomicU64,
    /// Blob fills taken over from a process that stopped renewing its
    /// lease (`kura_fills_taken_over_total`).
    pub(crate) fills_taken_over: AtomicU64,
    /// Upstream requests that failed (`kura_upstream_errors_total`).
    pub(crate) upstream_errors: AtomicU64,
    /// Blob bytes served from the cache (`kura_cache_bytes_served_total`).
    pub(crate) bytes_from_cache: AtomicU64,
    /// Blob bytes fetched from upstreams (`kura_upstream_bytes_total`).
    pub(crate) bytes_from_upstream: AtomicU64,
    /// Blob fills abandoned because the upstream failed or lied
    /// (`kura_fills_failed_total`).
    pub(crate) fills_failed: AtomicU64,
    /// Blobs evicted to keep the cache under its size
    /// (`kura_cache_evictions_total`).
    pub(crate) evictions: AtomicU64,
    /// Bytes of mirrored blobs in storage as of the last eviction pass: a
    /// gauge (`kura_cache_size_bytes`).
    pub(crate) cache_size_bytes: AtomicU64,
    /// Token requests sent without the upstream's credentials because the
    /// realm is foreign (`kura_upstream_credentials_withheld_total`).
    pub(crate) credentials_withheld: AtomicU64,
    /// Requests answered 404 from a recent upstream 404, without asking
    /// again (`kura_upstream_not_found_cached_total`).
    pub(crate) not_found_cached: AtomicU64,
    /// Blob fills from upstream running now (`kura_fills_in_flight`).
    pub(crate) fills_in_flight: AtomicU64,
    /// Garbage collections run (`kura_gc_runs_total`).
    pub(crate) gc_runs: AtomicU64,
    /// Blobs garbage collection deleted (`kura_gc_deleted_total`).
    pub(crate) gc_deleted_blobs: AtomicU64,
    /// Untagged manifests garbage collection deleted.
    pub(crate) gc_deleted_manifests: AtomicU64,
    /// Tags retention rules removed.
    pub(crate) gc_deleted_tags: AtomicU64,
    /// Bytes of the blobs garbage collection deleted
    /// (`kura_gc_deleted_bytes_total`).
    pub(crate) gc_deleted_bytes: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub(crate) fn request(&self, route: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route, status))
            .or_default() += 1;
    }

    /// Every counter and gauge now, with its stable name and help: what
    /// [`Metrics::render`] prints, for hosts that encode metrics with a
    /// library of their own (the native binary uses prometheus-client).
    pub fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            out.push(Sample {
                name: "kura_http_requests",
                help: "Requests answered, by route and status.",
                kind: SampleKind::Counter,
                labels: vec![
                    ("route", (*route).to_owned()),
                    ("status", status.to_string()),
                ],
                value: *n,
            });
        }
        let counters: [(&'static str, Option<&'static str>, &'static str, &AtomicU64); 21] = [
            (
                "kura_cache_hits",
                Some("manifest"),
                "Mirrored content served from the cache.",
                &self.manifest_hits,
            ),
            (
                "kura_cache_hits",
                Some("blob"),
                "Mirrored content served from the cache.",
                &self.blob_hits,
            ),
            (
                "kura_cache_misses",
                Some("manifest"),
                "Mirrored content fetched from upstream.",
                &self.manifest_misses,
            ),
            (
                "kura_cache_misses",
                Some("blob"),
                "Mirrored content fetched from upstream.",
                &self.blob_misses,
            ),
            (
                "kura_cache_revalidations",
                None,
                "Tags confirmed unchanged by a HEAD upstream.",
                &self.manifest_revalidations,
            ),
            (
                "kura_cache_stale",
                None,
                "Cached tags served because the upstream failed.",
                &self.stale_served,
            ),
            (
                "kura_singleflight_joins",
                None,
                "Requests that joined an upstream fetch already in flight.",
                &self.singleflight_joins,
            ),
            (
                "kura_fills_followed_elsewhere",
                None,
                "Blob fills followed from another process sharing the storage.",
                &self.fills_followed_elsewhere,
            ),
            (
                "kura_fills_taken_over",
                None,
                "Blob fills taken over from a process that stopped renewing its lease.",
                &self.fills_taken_over,
            ),
            (
                "kura_upstream_errors",
                None,
                "Upstream requests that failed.",
                &self.upstream_errors,
            ),
            (
                "kura_cache_bytes_served",
                None,
                "Blob bytes served from the cache.",
                &self.bytes_from_cache,
            ),
            (
                "kura_upstream_bytes",
                None,
                "Blob bytes fetched from upstreams.",
                &self.bytes_from_upstream,
            ),
            (
                "kura_fills_failed",
                None,
                "Blob fills abandoned (upstream failed or lied).",
                &self.fills_failed,
            ),
            (
                "kura_cache_evictions",
                None,
                "Blobs evicted to keep the cache under its size.",
                &self.evictions,
            ),
            (
                "kura_upstream_credentials_withheld",
                None,
                "Token requests sent without the upstream's credentials because the realm is foreign.",
                &self.credentials_withheld,
            ),
            (
                "kura_upstream_not_found_cached",
                None,
                "Requests answered 404 from a recent upstream 404, without asking again.",
                &self.not_found_cached,
            ),
            (
                "kura_gc_runs",
                None,
                "Garbage collections run (dry runs included).",
                &self.gc_runs,
            ),
            (
                "kura_gc_deleted",
                Some("blob"),
                "Objects garbage collection deleted: blobs, untagged manifests, tags removed by retention rules.",
                &self.gc_deleted_blobs,
            ),
            (
                "kura_gc_deleted",
                Some("manifest"),
                "Objects garbage collection deleted: blobs, untagged manifests, tags removed by retention rules.",
                &self.gc_deleted_manifests,
            ),
            (
                "kura_gc_deleted",
                Some("tag"),
                "Objects garbage collection deleted: blobs, untagged manifests, tags removed by retention rules.",
                &self.gc_deleted_tags,
            ),
            (
                "kura_gc_deleted_bytes",
                None,
                "Bytes of the blobs garbage collection deleted.",
                &self.gc_deleted_bytes,
            ),
        ];
        for (name, kind_label, help, c) in counters {
            out.push(Sample {
                name,
                help,
                kind: SampleKind::Counter,
                labels: kind_label
                    .map(|k| vec![("kind", k.to_owned())])
                    .unwrap_or_default(),
                value: c.load(Ordering::Relaxed),
            });
        }
        out.push(Sample {
            name: "kura_cache_size_bytes",
            help: "Bytes of mirrored blobs in storage (as of the last eviction pass).",
            kind: SampleKind::Gauge,
            labels: Vec::new(),
            value: self.cache_size_bytes.load(Ordering::Relaxed),
        });
        out.push(Sample {
            name: "kura_fills_in_flight",
            help: "Blob fills from upstream running in this process now.",
            kind: SampleKind::Gauge,
            labels: Vec::new(),
            value: self.fills_in_flight.load(Ordering::Relaxed),
        });
        out
    }

    /// Every sample in the Prometheus text exposition format (version
    /// 0.0.4); counters get the `_total` suffix.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut described = std::collections::HashSet::new();
        for s in self.samples() {
            let name = match s.kind {
                SampleKind::Counter => format!("{}_total", s.name),
                SampleKind::Gauge => s.name.to_owned(),
            };
            if described.insert(s.name) {
                let kind = match s.kind {
                    SampleKind::Counter => "counter",
                    SampleKind::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP {name} {}", s.help);
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            if s.labels.is_empty() {
                let _ = writeln!(out, "{name} {}", s.value);
            } else {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| {
                        format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
                    })
                    .collect();
                let _ = writeln!(out, "{name}{{{}}} {}", labels.join(","), s.value);
            }
        }
        out
    }
}

/// One value of [`Metrics::samples`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The metric's stable name, without the `_total` a counter's
    /// exposition adds (`kura_cache_hits`).
    pub name: &'static str,
    /// One sentence on what it counts, the same for every label set.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: SampleKind,
    /// Label names and values (`kind="blob"`).
    pub labels: Vec<(&'static str, String)>,
    /// The count or level now.
    pub value: u64,
}

/// Whether a [`Sample`] only grows or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    /// Only grows, from 0 when the process started.
    Counter,
    /// A level now (bytes cached, fills running).
    Gauge,
}

#[cfg(test)]
mod tests {
    // On wasm32, `#[test]` is wasm-bindgen-test's (run in Node by
    // wasm-bindgen-test-runner); natively it is the built-in one.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request("blob", 200);
        m.request("blob", 200);
        inc(&m.blob_hits);
        add(&m.bytes_from_cache, 42);
        let text = m.render();
        assert!(text.contains("kura_http_requests_total{route=\"blob\",status=\"200\"} 2"));
        assert!(text.contains("kura_cache_hits_total{kind=\"blob\"} 1"));
        assert!(text.contains("kura_cache_bytes_served_total 42"));
        assert_eq!(text.matches("# TYPE kura_cache_hits_total").count(), 1);
        assert!(text.contains("# TYPE kura_fills_in_flight gauge"));
    }
}
