//! docs/metrics.md and docs/grafana/kura-dashboard.json against what a
//! running kura serves: every metric the dashboard queries is on
//! `/metrics`, every metric on `/metrics` is in the doc's table (with the
//! same type), every metric in the table is on `/metrics`, and every field
//! of `/_kura/status` is described. So the names operators build on cannot
//! drift away from the code unnoticed.
//!
//! Label families (prometheus-client's histograms and upstream counters,
//! the core's per-route requests) print nothing, not even `# TYPE`, until
//! their first sample, so the test first makes the requests that fill
//! them: `/v2/`, a push, and a pull through the mirror from a local
//! upstream (manifest and blob, each a miss and then a hit).

use std::collections::{BTreeMap, BTreeSet};

use kura_tests::api::{Reg, OCI_MANIFEST};
use kura_tests::faulty::Faulty;
use kura_tests::{http_client, workspace_root};
use reqwest::Method;
use serde_json::Value;

const DOC: &str = "docs/metrics.md";
const DASHBOARD: &str = "docs/grafana/kura-dashboard.json";
/// The series a histogram `name` exposes besides `# TYPE name histogram`.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn read(rel: &str) -> String {
    let path = workspace_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `# TYPE name kind` lines: name → kind.
fn exposed(metrics: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                panic!("malformed TYPE line {line:?}");
            };
            let before = out.insert(name.to_owned(), kind.to_owned());
            assert!(before.is_none(), "{name} has two TYPE lines:\n{metrics}");
        }
    }
    out
}

/// The metrics table of the doc: rows whose first cell is a backticked
/// `kura_…` name; name → the type column.
fn documented(doc: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `name` | type | ..." splits into "", "`name`", "type", ...
        let Some(name) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
            .filter(|c| c.starts_with("kura_"))
        else {
            continue;
        };
        let kind = cells
            .get(2)
            .unwrap_or_else(|| panic!("{DOC}: row without a type: {line}"));
        let before = out.insert(name.to_owned(), (*kind).to_owned());
        assert!(before.is_none(), "{DOC}: {name} is in the table twice");
    }
    out
}

/// Every `kura_…` name in a PromQL expression.
fn names_in(expr: &str) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("kura_") {
        let starts_word = !rest[..at].chars().next_back().is_some_and(word);
        let tail = &rest[at..];
        let len = tail.find(|c: char| !word(c)).unwrap_or(tail.len());
        if starts_word {
            out.insert(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    out
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The name a dashboard query uses, as `/metrics` declares it: itself, or
/// the histogram whose `_bucket`, `_sum` or `_count` series it is.
fn declared<'a>(name: &'a str, exposed: &BTreeMap<String, String>) -> Option<&'a str> {
    if exposed.contains_key(name) {
        return Some(name);
    }
    HISTOGRAM_SUFFIXES.iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (exposed.get(base)? == "histogram").then_some(base)
    })
}

/// Field names of a JSON value at every depth (`cache.hits` gives `cache`
/// and `hits`; arrays of objects give their objects' fields).
fn field_names(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                out.insert(k.clone());
                field_names(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| field_names(i, out)),
        _ => {}
    }
}

/// A kura mirroring a local upstream, after requests that give every
/// label family a sample; its `/metrics` and `/_kura/status`.
fn busy_kura() -> (String, Value) {
    let upstream = Faulty::start().unwrap();
    let image = upstream.add_image("team/app", "v1", &[2048], 7);
    let reg = Reg::with_config(&format!(
        "mirror:\n  upstreams:\n    - {{ name: up.local, url: \"{}\" }}\n",
        upstream.url
    ));
    reg.get("/v2/").expect(200);
    reg.push_blob("hosted/thing", b"a blob pushed to a hosted repository");
    for expected in ["miss", "hit"] {
        let r = reg
            .send(
                reg.req(Method::GET, "/v2/up.local/team/app/manifests/v1")
                    .header("accept", OCI_MANIFEST),
            )
            .expect(200);
        assert_eq!(r.cache(), expected, "{}", r.describe());
        let layer = &image.layers[0].digest;
        let r = reg
            .get(&format!("/v2/up.local/team/app/blobs/{layer}"))
            .expect(200);
        assert_eq!(r.cache(), expected, "{}", r.describe());
    }
    let client = http_client();
    let get = |path: &str| {
        let r = client
            .get(format!("{}{path}", reg.kura.url))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status(), 200, "GET {path}");
        r.text().unwrap()
    };
    let metrics = get("/metrics");
    let status = serde_json::from_str(&get("/_kura/status")).expect("status JSON");
    (metrics, status)
}

#[test]
fn the_docs_and_the_dashboard_name_what_metrics_serves() {
    let doc = read(DOC);
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    let (metrics, status) = busy_kura();
    let exposed = exposed(&metrics);
    let documented = documented(&doc);
    assert!(
        exposed.len() >= 20,
        "fewer families than expected on /metrics:\n{metrics}"
    );

    // Everything /metrics declares is in the table, with its type, and
    // everything in the table is declared.
    let mut problems = Vec::new();
    for (name, kind) in &exposed {
        match documented.get(name) {
            None => problems.push(format!("{name} ({kind}) is on /metrics but not in {DOC}")),
            Some(doc_kind) if doc_kind != kind => problems.push(format!(
                "{name} is a {kind} on /metrics but a {doc_kind} in {DOC}"
            )),
            Some(_) => {}
        }
    }
    for name in documented.keys() {
        if !exposed.contains_key(name) {
            problems.push(format!("{name} is in {DOC} but not on /metrics"));
        }
    }

    // Every metric a panel queries is served.
    let mut queried = BTreeSet::new();
    let mut exprs = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            exprs += 1;
            let names = names_in(expr);
            if names.is_empty() {
                problems.push(format!("panel {title:?}: no kura metric in {expr:?}"));
            }
            for name in names {
                match declared(&name, &exposed) {
                    Some(base) => {
                        queried.insert(base.to_owned());
                    }
                    None => problems.push(format!(
                        "panel {title:?} queries {name}, which /metrics does not serve"
                    )),
                }
            }
        }
    }
    assert!(exprs >= 10, "{DASHBOARD}: only {exprs} queries found");
    for wanted in [
        "kura_http_requests_total",
        "kura_http_request_duration_seconds",
        "kura_cache_hits_total",
        "kura_cache_misses_total",
        "kura_cache_bytes_served_total",
        "kura_upstream_bytes_total",
        "kura_upstream_requests_total",
        "kura_upstream_request_duration_seconds",
        "kura_fills_in_flight",
        "kura_cache_size_bytes",
        "kura_cache_evictions_total",
        "kura_build_info",
        "kura_uptime_seconds",
    ] {
        if !queried.contains(wanted) {
            problems.push(format!("{DASHBOARD}: no panel shows {wanted}"));
        }
    }

    // The dashboard imports anywhere: its data source is a variable.
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    if !variables.contains(&"datasource") {
        problems.push(format!(
            "{DASHBOARD}: no `datasource` variable (has {variables:?})"
        ));
    }
    for panel in panels(&dashboard) {
        if panel["type"] != "row" && panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!(
                "{DASHBOARD}: panel {} does not use ${{datasource}}",
                panel["title"]
            ));
        }
    }

    // Every field of /_kura/status is described: `field`, `a.field`,
    // `.field` (shorthand beside its sibling), `field.x` or `field[]`.
    let mut fields = BTreeSet::new();
    field_names(&status, &mut fields);
    for field in fields {
        let forms = [
            format!("`{field}`"),
            format!(".{field}`"),
            format!("`{field}."),
            format!("`{field}[]"),
        ];
        if !forms.iter().any(|f| doc.contains(f.as_str())) {
            problems.push(format!("/_kura/status field {field} is not in {DOC}"));
        }
    }

    assert!(
        problems.is_empty(),
        "docs and /metrics disagree:\n  {}\n/metrics was:\n{metrics}",
        problems.join("\n  ")
    );
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        names_in(
            "histogram_quantile(0.95, sum by (le, route) \
             (rate(kura_http_request_duration_seconds_bucket{job=~\"$job\"}[5m]))) / xkura_no"
        ),
        BTreeSet::from(["kura_http_request_duration_seconds_bucket".to_owned()])
    );
    let exposed = BTreeMap::from([
        (
            "kura_http_request_duration_seconds".to_owned(),
            "histogram".to_owned(),
        ),
        ("kura_cache_size_bytes".to_owned(), "gauge".to_owned()),
    ]);
    assert_eq!(
        declared("kura_http_request_duration_seconds_count", &exposed),
        Some("kura_http_request_duration_seconds")
    );
    assert_eq!(
        declared("kura_cache_size_bytes", &exposed),
        Some("kura_cache_size_bytes")
    );
    assert_eq!(declared("kura_cache_size_bytes_count", &exposed), None);
}
