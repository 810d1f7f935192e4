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

    /// Every counter in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP kura_http_requests_total Requests answered, by route and status."
        );
        let _ = writeln!(out, "# TYPE kura_http_requests_total counter");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "kura_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let counters: [(&str, &str, &str, &AtomicU64); 16] = [
            (
                "kura_cache_hits_total",
                "kind=\"manifest\"",
                "Mirrored content served from the cache.",
                &self.manifest_hits,
            ),
            (
                "kura_cache_hits_total",
                "kind=\"blob\"",
                "",
                &self.blob_hits,
            ),
            (
                "kura_cache_misses_total",
                "kind=\"manifest\"",
                "Mirrored content fetched from upstream.",
                &self.manifest_misses,
            ),
            (
                "kura_cache_misses_total",
                "kind=\"blob\"",
                "",
                &self.blob_misses,
            ),
            (
                "kura_cache_revalidations_total",
                "",
                "Tags confirmed unchanged by a HEAD upstream.",
                &self.manifest_revalidations,
            ),
            (
                "kura_cache_stale_total",
                "",
                "Cached tags served because the upstream failed.",
                &self.stale_served,
            ),
            (
                "kura_singleflight_joins_total",
                "",
                "Requests that joined an upstream fetch already in flight.",
                &self.singleflight_joins,
            ),
            (
                "kura_fills_followed_elsewhere_total",
                "",
                "Blob fills followed from another process sharing the storage.",
                &self.fills_followed_elsewhere,
            ),
            (
                "kura_fills_taken_over_total",
                "",
                "Blob fills taken over from a process that stopped renewing its lease.",
                &self.fills_taken_over,
            ),
            (
                "kura_upstream_errors_total",
                "",
                "Upstream requests that failed.",
                &self.upstream_errors,
            ),
            (
                "kura_cache_bytes_served_total",
                "",
                "Blob bytes served from the cache.",
                &self.bytes_from_cache,
            ),
            (
                "kura_upstream_bytes_total",
                "",
                "Blob bytes fetched from upstreams.",
                &self.bytes_from_upstream,
            ),
            (
                "kura_fills_failed_total",
                "",
                "Blob fills abandoned (upstream failed or lied).",
                &self.fills_failed,
            ),
            (
                "kura_cache_evictions_total",
                "",
                "Blobs evicted to keep the cache under its size.",
                &self.evictions,
            ),
            (
                "kura_upstream_credentials_withheld_total",
                "",
                "Token requests sent without the upstream's credentials because the realm is foreign.",
                &self.credentials_withheld,
            ),
            (
                "kura_upstream_not_found_cached_total",
                "",
                "Requests answered 404 from a recent upstream 404, without asking again.",
                &self.not_found_cached,
            ),
        ];
        let mut described = std::collections::HashSet::new();
        for (name, labels, help, c) in counters {
            if described.insert(name) {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} counter");
            }
            let v = c.load(Ordering::Relaxed);
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
        let _ = writeln!(out, "# HELP kura_cache_size_bytes Bytes of mirrored blobs in storage (as of the last eviction pass).");
        let _ = writeln!(out, "# TYPE kura_cache_size_bytes gauge");
        let _ = writeln!(
            out,
            "kura_cache_size_bytes {}",
            self.cache_size_bytes.load(Ordering::Relaxed)
        );
        out
    }
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
    }
}
