//! `cargo xtask soak [--minutes M] [--quick] [--svg PATH]`: kura under mixed
//! load for M minutes (default 30): wrk on warm manifests and blobs,
//! skopeo pulls through the mirror and pushes of new tags, and a stream of
//! mirror misses (new upstream images pulled cold, then evicted by a small
//! size bound). Every request must succeed; kura's resident memory and
//! open file descriptors are sampled every 2 s and plotted to an SVG.
//! `--quick` uses the debug build (CI); the recorded run uses release.
//! `--gc` runs the garbage-collection soak instead (`soak_gc.rs`): M
//! minutes (default 10) on local disk and M/2 on S3.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kura_tests::api::{image_manifest, noise};
use kura_tests::image::{ImageSpec, OciLayout};
use kura_tests::peers::Skopeo;
use kura_tests::upstream::Distribution;
use kura_tests::{free_port, sha256};

use crate::chaos::Server;

const MIB: usize = 1024 * 1024;
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

pub fn soak(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut minutes = None;
    let mut quick = false;
    let mut gc = false;
    let mut serve_only = false;
    let mut svg = root.join("target/soak.svg");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--minutes" => minutes = Some(it.next().context("--minutes M")?.parse::<f64>()?),
            "--quick" => quick = true,
            "--gc" => gc = true,
            "--serve-only" => serve_only = true,
            "--svg" => svg = PathBuf::from(it.next().context("--svg PATH")?),
            other => bail!("soak: unknown argument {other}"),
        }
    }
    if gc {
        return crate::soak_gc::gc_soak(root, minutes.unwrap_or(10.0), quick, serve_only);
    }
    let minutes = minutes.unwrap_or(30.0);
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let built = crate::bench::build_kura(root, quick)?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let bin = w.join("kura");
    std::fs::copy(&built, &bin)?;

    let up = Distribution::start()?;
    let sk = Skopeo::new()?;
    // Images skopeo pulls through the mirror (warm after the first pull,
    // refilled whenever eviction took them).
    let mut seeded = Vec::new();
    for i in 0..4 {
        let config = format!("{{\"soak\":{i}}}").into_bytes();
        let layers = vec![noise(2 * MIB, 10 + i), noise(300 * 1024, 20 + i)];
        up.push_image(&format!("soak/base{i}"), "v1", &config, &layers)?;
        seeded.push(i);
    }
    // What skopeo pushes, from a local OCI layout.
    let layout_dir = w.join("layout");
    let mut layout = OciLayout::create(&layout_dir)?;
    for i in 0..3 {
        layout.add_image(&format!("p{i}"), &ImageSpec::new(2, 512 * 1024, 300 + i))?;
    }

    let port = free_port();
    let config = w.join("kura.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {}\n\
             mirror:\n  max_size: 16MiB\n  evict_interval_secs: 5\n  eviction_grace_secs: 1\n  \
             upstreams:\n    - name: up.local\n      url: {}\n",
            w.join("data").display(),
            up.url
        ),
    )?;
    let kura = Server::start(&bin, &config, port, w)?;
    let base = format!("http://127.0.0.1:{port}");
    let host = format!("127.0.0.1:{port}");
    // A warm hosted image for wrk.
    sk.copy(
        &[],
        &format!("oci:{}:p0", layout_dir.display()),
        &format!("docker://{host}/soak/warm:v1"),
    )?;
    let client = kura_tests::http_client();
    let warm_manifest = client
        .get(format!("{base}/v2/soak/warm/manifests/v1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()?
        .error_for_status()?
        .text()?;
    let warm_manifest: serde_json::Value = serde_json::from_str(&warm_manifest)?;
    let warm_layer = warm_manifest["layers"][0]["digest"]
        .as_str()
        .context("warm layer")?
        .to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let mut threads = Vec::new();

    // wrk: warm manifests and blobs for the whole run.
    let secs = duration.as_secs().max(1);
    for (url, accept) in [
        (
            format!("{base}/v2/soak/warm/manifests/v1"),
            Some("application/vnd.oci.image.manifest.v1+json"),
        ),
        (format!("{base}/v2/soak/warm/blobs/{warm_layer}"), None),
    ] {
        threads.push(std::thread::spawn(move || wrk(&url, secs, accept)));
    }

    // skopeo: pulls through the mirror and pushes of new tags.
    {
        let (stop, counts, errors) = (stop.clone(), counts.clone(), errors.clone());
        let (host, layout_dir, out) = (host.clone(), layout_dir.clone(), w.join("pulled"));
        std::fs::create_dir_all(&out)?;
        threads.push(std::thread::spawn(move || {
            let sk = Skopeo::new().expect("skopeo");
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let pull = sk.copy(
                    &[],
                    &format!("docker://{host}/up.local/soak/base{}:v1", n % 4),
                    &format!("oci:{}:x", out.join(format!("{}", n % 4)).display()),
                );
                let push = sk.copy(
                    &[],
                    &format!("oci:{}:p{}", layout_dir.display(), n % 3),
                    &format!("docker://{host}/soak/pushed:t{n}"),
                );
                for (what, r, c) in [
                    ("skopeo pull", pull, &counts.skopeo_pulls),
                    ("skopeo push", push, &counts.skopeo_pushes),
                ] {
                    match r {
                        Ok(()) => {
                            c.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => errors.lock().unwrap().push(format!("{what}: {e:#}")),
                    }
                }
            }
            Ok(WrkRun::default())
        }));
    }

    // Mirror misses: a new upstream image every second, pulled cold and
    // compared byte for byte.
    {
        let (stop, counts, errors) = (stop.clone(), counts.clone(), errors.clone());
        let base = base.clone();
        let up_url = up.url.clone();
        threads.push(std::thread::spawn(move || {
            let client = kura_tests::http_client();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let config = format!("{{\"miss\":{n}}}").into_bytes();
                let layers = vec![noise(MIB, 1000 + n)];
                let repo = format!("soak/miss{n}");
                let result = (|| -> anyhow::Result<()> {
                    kura_tests::upstream::push_image_at(&up_url, &repo, "v1", &config, &layers)?;
                    let m = client
                        .get(format!("{base}/v2/up.local/{repo}/manifests/v1"))
                        .header("accept", "application/vnd.oci.image.manifest.v1+json")
                        .send()?
                        .error_for_status()?
                        .bytes()?;
                    ensure!(m.as_ref() == image_manifest(&config, &layers).as_slice());
                    for blob in std::iter::once(&config).chain(&layers) {
                        let d = sha256(blob);
                        let got = client
                            .get(format!("{base}/v2/up.local/{repo}/blobs/{d}"))
                            .send()?
                            .error_for_status()?
                            .bytes()?;
                        ensure!(sha256(&got) == d, "blob {d} of {repo} differs");
                    }
                    Ok(())
                })();
                match result {
                    Ok(()) => {
                        counts.misses.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => errors.lock().unwrap().push(format!("mirror miss: {e:#}")),
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Ok(WrkRun::default())
        }));
    }

    // Samples of kura's memory and descriptors.
    let pid = kura.pid().context("kura running")?;
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        samples.push(sample(pid, started.elapsed())?);
        let left = duration.saturating_sub(started.elapsed());
        std::thread::sleep(SAMPLE_EVERY.min(left.max(Duration::from_millis(10))));
    }
    samples.push(sample(pid, started.elapsed())?);
    stop.store(true, Ordering::SeqCst);
    let mut wrk_total = WrkRun::default();
    for t in threads {
        match t.join() {
            Ok(Ok(r)) => {
                wrk_total.requests += r.requests;
                wrk_total.errors += r.errors;
            }
            Ok(Err(e)) => errors.lock().unwrap().push(format!("{e:#}")),
            Err(_) => errors.lock().unwrap().push("a load thread panicked".into()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let errors = errors.lock().unwrap();
    let total_errors = errors.len() as u64 + wrk_total.errors;

    if let Some(dir) = svg.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&svg, plot(&samples))?;
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    println!();
    println!("| soak | |");
    println!("|---|---|");
    println!("| minutes | {:.1} |", elapsed / 60.0);
    println!(
        "| wrk requests (warm manifest + warm blob) | {} |",
        wrk_total.requests
    );
    println!(
        "| skopeo pulls through the mirror | {} |",
        counts.skopeo_pulls.load(Ordering::SeqCst)
    );
    println!(
        "| skopeo pushes | {} |",
        counts.skopeo_pushes.load(Ordering::SeqCst)
    );
    println!(
        "| mirror misses pulled cold and verified | {} |",
        counts.misses.load(Ordering::SeqCst)
    );
    println!("| errors | {total_errors} |");
    println!(
        "| RSS start → end (peak) | {:.1} → {:.1} MiB ({:.1}) |",
        first.rss_kib as f64 / 1024.0,
        last.rss_kib as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!(
        "| open descriptors start → end (max) | {} → {} ({max_fds}) |",
        first.fds, last.fds
    );
    println!(
        "| samples (every {}s) | {} |",
        SAMPLE_EVERY.as_secs(),
        samples.len()
    );
    println!("plot: {}", svg.display());
    ensure!(
        total_errors == 0,
        "soak: {total_errors} errors:\n{}",
        errors.join("\n")
    );
    drop(kura);
    Ok(())
}

#[derive(Default)]
struct Counts {
    skopeo_pulls: AtomicU64,
    skopeo_pushes: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct WrkRun {
    requests: u64,
    errors: u64,
}

/// wrk for `secs`; its request count and every error it saw (socket
/// errors, non-2xx answers).
fn wrk(url: &str, secs: u64, accept: Option<&str>) -> anyhow::Result<WrkRun> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c4", &format!("-d{secs}s"), "--timeout", "30s"]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    let out = cmd.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed: {text}");
    parse_wrk_counts(&text).with_context(|| format!("wrk output:\n{text}"))
}

fn parse_wrk_counts(text: &str) -> anyhow::Result<WrkRun> {
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .context("no request count")?
        .0
        .trim()
        .parse()?;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>()?;
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let n = part
                    .split_whitespace()
                    .last()
                    .context("socket error count")?;
                errors += n.parse::<u64>()?;
            }
        }
    }
    Ok(WrkRun { requests, errors })
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
}

fn sample(pid: u32, at: Duration) -> anyhow::Result<Sample> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("kura is not running")?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(Sample { at, rss_kib, fds })
}

/// Resident memory (MiB) and open descriptors over time, as an SVG line
/// chart with its own axes (two series, each scaled to its own maximum).
fn plot(samples: &[Sample]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 300.0;
    const PAD: f64 = 50.0;
    let t_max = samples.last().map_or(1.0, |s| s.at.as_secs_f64()).max(1.0);
    let rss_max = samples
        .iter()
        .map(|s| s.rss_kib as f64 / 1024.0)
        .fold(1.0, f64::max)
        * 1.2;
    let fd_max = samples.iter().map(|s| s.fds as f64).fold(1.0, f64::max) * 1.2;
    let x = |t: f64| PAD + t / t_max * (W - 2.0 * PAD);
    let y = |v: f64, max: f64| H - PAD - v / max * (H - 2.0 * PAD);
    let line = |value: &dyn Fn(&Sample) -> f64, max: f64| {
        samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.at.as_secs_f64()), y(value(s), max)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let rss = line(&|s| s.rss_kib as f64 / 1024.0, rss_max);
    let fds = line(&|s| s.fds as f64, fd_max);
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{PAD}" y="20" font-size="14">kura soak: resident memory and open descriptors, sampled every {every}s</text>
<line x1="{PAD}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>
<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{bottom}" stroke="#1f77b4"/>
<line x1="{right}" y1="{PAD}" x2="{right}" y2="{bottom}" stroke="#d62728"/>
<text x="{PAD}" y="{below}">0</text>
<text x="{right}" y="{below}" text-anchor="end">{t_max:.0} s</text>
<text x="{left_label}" y="{PAD}" fill="#1f77b4" text-anchor="end">{rss_max:.0} MiB</text>
<text x="{left_label}" y="{bottom}" fill="#1f77b4" text-anchor="end">0</text>
<text x="{right_label}" y="{PAD}" fill="#d62728">{fd_max:.0} fds</text>
<text x="{right_label}" y="{bottom}" fill="#d62728">0</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{rss}"/>
<polyline fill="none" stroke="#d62728" stroke-width="2" points="{fds}"/>
<text x="{legend}" y="40" fill="#1f77b4">RSS (MiB)</text>
<text x="{legend2}" y="40" fill="#d62728">open fds</text>
</svg>
"##,
        every = SAMPLE_EVERY.as_secs(),
        bottom = H - PAD,
        right = W - PAD,
        below = H - PAD + 16.0,
        left_label = PAD - 4.0,
        right_label = W - PAD + 4.0,
        legend = PAD + 10.0,
        legend2 = PAD + 100.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_errors_are_counted() {
        let ok = "  1234 requests in 10.00s, 1.23GB read\nRequests/sec:   123.40\n";
        let r = parse_wrk_counts(ok).unwrap();
        assert_eq!((r.requests, r.errors), (1234, 0));
        let bad = format!(
            "{ok}  Socket errors: connect 1, read 2, write 0, timeout 3\n  Non-2xx or 3xx responses: 4\n"
        );
        let r = parse_wrk_counts(&bad).unwrap();
        assert_eq!((r.requests, r.errors), (1234, 10));
    }
}
