//! The operator's view of a running mirror: `/_kura/status`, the status
//! page at `/` rendered by headless Chromium (a screenshot is saved to
//! `target/status-page.png`), and `/metrics`, after real pulls with skopeo
//! through kura from an upstream that sends Docker Hub's pull-quota
//! headers, and beside an upstream that is down.
//!
//! Needs skopeo and chromium (Debian packages; `scripts/test-env.sh`
//! installs both).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kura_tests::faulty::Faulty;
use kura_tests::peers::Skopeo;
use kura_tests::{free_port, http_client, workspace_root, Kura, KuraOptions};
use serde_json::Value;

const LAYERS: [usize; 2] = [300 * 1024, 700 * 1024];

fn status(k: &Kura) -> Value {
    let r = http_client()
        .get(format!("{}/_kura/status", k.url))
        .send()
        .expect("GET /_kura/status");
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().expect("body")).expect("status JSON")
}

fn upstream<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no upstream {name} in {s:#}"))
}

/// Chromium as the probe of this machine kind starts it: headless, no
/// sandbox (root), no background networking (the network is closed).
fn chromium(profile: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("running chromium (Debian package chromium)")
}

#[test]
fn the_status_page_shows_what_the_mirror_did() {
    let f = Faulty::start().unwrap();
    f.add_content_header("ratelimit-limit", "100;w=21600");
    f.add_content_header("ratelimit-remaining", "97;w=21600");
    let img = f.add_image("team/app", "v1", &LAYERS, 4242);
    // Nobody listens there.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("kura.yaml");
    std::fs::write(
        &path,
        format!(
            "mirror:\n  max_size: 1GiB\n  evict_interval_secs: 1\n  upstreams:\n    \
             - {{ name: up.local, url: \"{}\" }}\n    - {{ name: down.local, url: \"{dead}\" }}\n",
            f.url
        ),
    )
    .unwrap();
    let k = Kura::start_with(KuraOptions {
        config: Some(path),
        ..Default::default()
    })
    .unwrap();

    // Nothing yet: the page says so.
    let s = status(&k);
    assert_eq!(s["cache"]["hit_ratio"], Value::Null);
    assert_eq!(upstream(&s, "up.local")["health"], "unused");

    // Two pulls: the first fills, the second is served from the cache.
    let skopeo = Skopeo::new().unwrap();
    let out = tempfile::tempdir().unwrap();
    let src = format!("docker://127.0.0.1:{}/up.local/team/app:v1", k.port);
    for n in 0..2 {
        let dest = format!("oci:{}:{n}", out.path().join("img").display());
        skopeo.copy(&[], &src, &dest).expect("pull through kura");
    }
    // And one that fails: the upstream is down.
    let down = format!("docker://127.0.0.1:{}/down.local/team/app:v1", k.port);
    let dest = format!("oci:{}:x", out.path().join("down").display());
    assert!(skopeo.copy(&["--retry-times=0"], &down, &dest).is_err());

    let blob_bytes: u64 = img.layers.iter().chain([&img.config]).map(|d| d.size).sum();
    // The size is counted by the eviction pass (every second here).
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = status(&k);
        if s["cache"]["size_bytes"].as_u64().unwrap_or(0) >= blob_bytes || Instant::now() > deadline
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let c = &s["cache"];
    assert!(c["misses"].as_u64().unwrap() >= 3, "{s:#}");
    assert!(c["hits"].as_u64().unwrap() >= 3, "{s:#}");
    let ratio = c["hit_ratio"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio < 1.0, "{s:#}");
    assert_eq!(
        c["bytes_from_upstream"].as_u64().unwrap(),
        blob_bytes,
        "{s:#}"
    );
    assert!(
        c["bytes_from_cache"].as_u64().unwrap() >= blob_bytes,
        "{s:#}"
    );
    assert_eq!(c["size_bytes"].as_u64().unwrap(), blob_bytes, "{s:#}");
    assert_eq!(c["max_size_bytes"].as_u64().unwrap(), 1 << 30);
    assert_eq!(c["fills_in_flight"], 0);
    let up = upstream(&s, "up.local");
    assert_eq!(up["health"], "ok", "{s:#}");
    assert_eq!(up["pull_quota_remaining"], "97;w=21600");
    assert_eq!(up["pull_quota_limit"], "100;w=21600");
    let dn = upstream(&s, "down.local");
    assert_eq!(dn["health"], "failing", "{s:#}");
    assert!(
        dn["last_error"].as_str().unwrap().contains("onnect"),
        "the error names the failed connection: {s:#}"
    );
    let top = &s["top_repositories"][0];
    assert_eq!(top["name"], "up.local/team/app", "{s:#}");
    assert!(top["manifest_pulls"].as_u64().unwrap() >= 2);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));

    // The metrics agree, under their documented names.
    let metrics = http_client()
        .get(format!("{}/metrics", k.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let port = f.port;
    for line in [
        format!("kura_upstream_bytes_total {blob_bytes}"),
        format!("kura_upstream_requests_total{{upstream=\"127.0.0.1:{port}\",status=\"200\"}}"),
        "kura_http_request_duration_seconds_bucket{route=\"manifest\",method=\"GET\"".into(),
        "kura_upstream_request_duration_seconds_count{upstream=\"127.0.0.1:".into(),
        "kura_fills_in_flight 0".into(),
    ] {
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }

    // The page, as a browser renders it: its DOM, and a screenshot.
    let page = format!("{}/", k.url);
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(profile.path(), &["--dump-dom", &page]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "chromium --dump-dom: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let percent = format!("{:.1}%", ratio * 100.0);
    for expected in [
        percent.as_str(),
        "97 left of 100",
        "up.local/team/app",
        "down.local",
        "class=\"failing\"",
        "Fills in flight",
    ] {
        assert!(
            dom_text.contains(expected),
            "{expected:?} not on the rendered page:\n{dom_text}"
        );
    }
    let shot: PathBuf = workspace_root().join("target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let run = chromium(
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            // A phone's width: the page must read there too.
            "--window-size=412,915",
            &page,
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&run.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 10_000, "a blank page? {} bytes", png.len());
    eprintln!("status page screenshot: {}", shot.display());
}
