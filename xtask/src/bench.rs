//! `cargo xtask bench [--quick]`: kura beside the incumbent, on one machine,
//! in one run.
//!
//! Everything runs on loopback: an upstream (Debian's `docker-registry`,
//! CNCF distribution) loaded with generated images; the incumbent (a second
//! `docker-registry` in proxy mode); kura mirroring the same upstream on
//! local disk; and nginx with `sendfile on` serving the same blob file, the
//! most this machine can push through loopback. Measurements alternate
//! between the two mirrors round by round so machine noise hits both.
//!
//! Load generators: `wrk` (Debian) for request rates, latencies and
//! single-blob throughput: a C event loop whose own cost is small and the
//! same for every server; `curl --parallel` (Debian) for pulls, where the
//! point is many whole transfers at once. Neither is ours, so neither can
//! flatter kura.
//!
//! `--quick` runs the same harness at small sizes against a debug kura (CI
//! smoke test: it must produce the table; its numbers mean nothing).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kura_tests::image::{ImageSpec, OciLayout};
use kura_tests::peers::Skopeo;
use kura_tests::upstream::Distribution;

const MIB: usize = 1024 * 1024;
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

struct Plan {
    quick: bool,
    rounds: usize,
    /// Seconds per wrk run.
    secs: u64,
    small_layer: usize,
    medium_layer: usize,
    big_layer: usize,
    index_layer: usize,
    tiny_blob: usize,
    huge_blob: usize,
    /// Objects in the store of the startup phase.
    many_objects: usize,
    /// Bytes per second of the WAN phase's link.
    wan_rate: f64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                rounds: 1,
                secs: 1,
                small_layer: 256 * 1024,
                medium_layer: 2 * MIB,
                big_layer: 8 * MIB,
                index_layer: 256 * 1024,
                tiny_blob: 2 * MIB,
                huge_blob: 32 * MIB,
                many_objects: 10_000,
                wan_rate: 20e6,
            }
        } else {
            Plan {
                quick,
                rounds: 3,
                secs: 5,
                small_layer: 2 * MIB,
                medium_layer: 25 * MIB,
                big_layer: 125 * MIB,
                index_layer: 4 * MIB,
                tiny_blob: 10 * 1000 * 1000,
                huge_blob: 1024 * MIB,
                many_objects: 1_000_000,
                wan_rate: 50e6,
            }
        }
    }
}

pub fn bench(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let quick = args.contains(&"--quick");
    let plan = Plan::new(quick);
    // `--only warm|cold|herd|fleet|memory|wan|startup|gc` runs one phase; `--perf` records a
    // CPU profile (perf record -g) of every kura started, kept in
    // target/bench-perf/ for `perf report -i`.
    let only = args
        .iter()
        .position(|a| *a == "--only")
        .and_then(|i| args.get(i + 1))
        .copied();
    if args.contains(&"--perf") {
        let dir = root.join("target/bench-perf");
        std::fs::create_dir_all(&dir)?;
        PERF_DIR.set(dir).ok();
    }
    // The gc phase needs no upstream, images or load tools (bench_gc.rs).
    let gc_only = only == Some("gc");
    for (tool, package) in [
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("wrk", "wrk"),
        ("curl", "curl"),
        ("nginx", "nginx-light"),
    ] {
        ensure!(
            gc_only || kura_tests::have(tool),
            "{tool} is missing: apt-get install {package} (scripts/test-env.sh installs it)"
        );
    }
    let kura_bin = build_kura(root, quick)?;
    let work = tempfile::Builder::new().prefix("kura-bench").tempdir()?;
    let outcome = run_phases(root, &plan, only, &kura_bin, work.path());
    if outcome.is_err() {
        // The servers' logs say what went wrong; keep them.
        let kept = work.keep();
        return outcome.with_context(|| {
            format!(
                "the bench's work directory, with every server's log, is kept at {}",
                kept.display()
            )
        });
    }
    outcome
}

fn run_phases(
    root: &Path,
    plan: &Plan,
    only: Option<&str>,
    kura_bin: &Path,
    w: &Path,
) -> anyhow::Result<()> {
    let quick = plan.quick;
    let phase = |p: &str| only.is_none_or(|o| o == p);
    let gc_only = only == Some("gc");
    if gc_only {
        let report = machine_line()? + &crate::bench_gc::gc(kura_bin, w, quick)?;
        return write_report(root, &report, true);
    }

    eprintln!("bench: generating images");
    let images = Images::generate(&w.join("oci"), plan, phase("memory"))?;
    eprintln!("bench: loading the upstream");
    let upstream = Distribution::start()?;
    images.push(&w.join("oci"), &upstream)?;

    let mut t = Table::default();
    let kura = MirrorKind::Kura(kura_bin.to_path_buf());
    let reg = MirrorKind::Registry2;

    // Warm serving: one long-lived instance of each, primed.
    if phase("warm") {
        eprintln!("bench: warm serving");
        let mut k = Mirror::start(&kura, w, "kura-warm", &upstream.url)?;
        let mut r = Mirror::start(&reg, w, "reg-warm", &upstream.url)?;
        let ceiling = Nginx::start(w, &images.big_layer_file)?;
        for m in [&k, &r] {
            images.pull(&m.url, &["big", "small", "multi"])?;
        }
        let blob = |base: &str| format!("{base}/v2/bench/big/blobs/{}", images.big_layer);
        let by_tag = |base: &str| format!("{base}/v2/bench/small/manifests/latest");
        let by_digest =
            |base: &str| format!("{base}/v2/bench/small/manifests/{}", images.small_manifest);
        let mut nginx_1 = Vec::new();
        for round in 0..plan.rounds {
            for (name, m) in alternate(round, [("kura", &k), ("registry:2", &r)]) {
                let cpu = m.cpu_secs()?;
                let one = wrk(&blob(&m.url), 1, 1, plan.secs, None)?;
                t.add("warm blob GET, 1 client (MB/s)", name, one.mb_per_sec());
                let eight = wrk(&blob(&m.url), 2, 8, plan.secs, None)?;
                t.add("warm blob GET, 8 clients (MB/s)", name, eight.mb_per_sec());
                // What serving those bytes cost the server (wrk's own CPU
                // is not in it).
                let served_gb = (one.bytes_per_sec + eight.bytes_per_sec) * plan.secs as f64 / 1e9;
                t.add(
                    "CPU-seconds per GB served, warm blobs",
                    name,
                    (m.cpu_secs()? - cpu) / served_gb,
                );
                let tag = wrk(&by_tag(&m.url), 2, 32, plan.secs, Some(ACCEPT))?;
                t.add(
                    "manifest GET by tag, 32 conns (req/s)",
                    name,
                    tag.req_per_sec,
                );
                t.add("manifest GET by tag, p50 (ms)", name, tag.p50_ms);
                t.add("manifest GET by tag, p99 (ms)", name, tag.p99_ms);
                let dig = wrk(&by_digest(&m.url), 2, 32, plan.secs, Some(ACCEPT))?;
                t.add(
                    "manifest GET by digest, 32 conns (req/s)",
                    name,
                    dig.req_per_sec,
                );
                t.add("manifest GET by digest, p50 (ms)", name, dig.p50_ms);
                t.add("manifest GET by digest, p99 (ms)", name, dig.p99_ms);
            }
            let one = wrk(&format!("{}/blob", ceiling.url), 1, 1, plan.secs, None)?;
            nginx_1.push(one.mb_per_sec());
            let eight = wrk(&format!("{}/blob", ceiling.url), 2, 8, plan.secs, None)?;
            t.add(
                "warm blob GET, 8 clients (MB/s)",
                "ceiling",
                eight.mb_per_sec(),
            );
        }
        for v in nginx_1 {
            t.add("warm blob GET, 1 client (MB/s)", "ceiling", v);
        }
        for m in [&mut k, &mut r] {
            t.add("peak RSS, warm serving (MiB)", m.label, m.hwm_mib()?);
            m.stop();
        }
        drop(ceiling);
    }

    // Cold: a fresh, empty instance per round.
    if phase("cold") {
        eprintln!("bench: cold pulls");
        for round in 0..plan.rounds {
            let direct = images.pull(&upstream.url, &["big"])?;
            t.add("cold pull of the big image (s)", "direct", direct);
            let layer = format!("/v2/bench/medium/blobs/{}", images.medium_layer);
            let (ttfb_ms, _) = curl_timing(&format!("{}{layer}", upstream.url))?;
            t.add("cold blob GET, time to first byte (ms)", "direct", ttfb_ms);
            for (name, kind) in alternate(round, [("kura", &kura), ("registry:2", &reg)]) {
                let mut m = Mirror::start(kind, w, &format!("cold-{round}"), &upstream.url)?;
                t.add("startup to first response (ms)", name, m.startup_ms);
                // One cold GET of a layer the big image does not have.
                let layer = format!("/v2/bench/medium/blobs/{}", images.medium_layer);
                let (ttfb_ms, _) = curl_timing(&format!("{}{layer}", m.url))?;
                t.add("cold blob GET, time to first byte (ms)", name, ttfb_ms);
                let cpu = m.cpu_secs()?;
                let secs = images.pull(&m.url, &["big"])?;
                t.add(
                    "CPU-seconds per GB served, cold pull",
                    name,
                    (m.cpu_secs()? - cpu) / (images.bytes_of("big") as f64 / 1e9),
                );
                t.add("cold pull of the big image (s)", name, secs);
                t.add("cold pull ÷ direct", name, secs / direct);
                t.add("peak RSS, cold pull (MiB)", name, m.hwm_mib()?);
                m.stop();
            }
        }
    }

    if phase("herd") {
        eprintln!("bench: 64 concurrent cold GETs of one blob");
        let big_size = images.bytes_of_blob(&images.big_layer);
        let blobs = [
            ("bench/medium", &images.medium_layer, images.medium_size),
            ("bench/big", &images.big_layer, big_size),
        ];
        for (repo, digest, size) in blobs {
            let of = format!("{} MiB", size / MIB as u64);
            // registry:2 answers some of a cold fan-out with 500s ("invalid
            // checksum digest format": its concurrent fills of one blob
            // collide), and goes on doing so when the GETs are repeated.
            // Those are counted, over every round, not fatal; kura may fail
            // none.
            let mut failed: BTreeMap<&'static str, f64> = BTreeMap::new();
            for round in 0..plan.rounds {
                for (name, kind) in alternate(round, [("kura", &kura), ("registry:2", &reg)]) {
                    let mut m = Mirror::start(kind, w, &format!("herd-{round}"), &upstream.url)?;
                    let before = upstream.blob_gets_of(repo, digest);
                    let url = format!("{}/v2/{repo}/blobs/{digest}", m.url);
                    let started = Instant::now();
                    let cold = curl_answers(&vec![url.clone(); 64], 64)?;
                    let secs = started.elapsed().as_secs_f64();
                    let gets = upstream.blob_gets_of(repo, digest) - before;
                    t.add(
                        &format!("64 concurrent cold GETs of {of}: upstream GETs"),
                        name,
                        gets as f64,
                    );
                    t.add(
                        &format!("64 concurrent cold GETs of {of}: last byte (s)"),
                        name,
                        secs,
                    );
                    t.add(
                        &format!("64 concurrent cold GETs of {of}: peak RSS (MiB)"),
                        name,
                        m.hwm_mib()?,
                    );
                    // The same 64 again, warm: what followers of a fill
                    // should come close to.
                    let started = Instant::now();
                    let warm = curl_answers(&vec![url; 64], 64)?;
                    t.add(
                        &format!("64 concurrent warm GETs of {of}: last byte (s)"),
                        name,
                        started.elapsed().as_secs_f64(),
                    );
                    let wrong: Vec<&(u16, u64)> = cold
                        .iter()
                        .chain(&warm)
                        .filter(|(code, got)| *code != 200 || *got != size)
                        .collect();
                    if !wrong.is_empty() {
                        eprintln!(
                            "bench: {name} failed {} of 128 GETs of {of} (round {round}): {:?}",
                            wrong.len(),
                            &wrong[..wrong.len().min(4)]
                        );
                    }
                    ensure!(
                        name != "kura" || wrong.is_empty(),
                        "kura answered {} of 128 GETs of the {of} blob with an error or the \
                         wrong length (status, bytes; the first few): {:?}; its log is in {}",
                        wrong.len(),
                        &wrong[..wrong.len().min(4)],
                        w.join(format!("kura-herd-{round}")).display()
                    );
                    *failed.entry(name).or_default() += wrong.len() as f64;
                    m.stop();
                }
            }
            for (name, n) in failed {
                t.add(
                    &format!("64 concurrent GETs of {of}, cold then warm: failed, all rounds"),
                    name,
                    n,
                );
            }
        }
    }

    if phase("fleet") {
        eprintln!("bench: cold fan-out over one and three instances on one S3 bucket");
        let s3 = kura_tests::s3::S3Server::start("bench")?;
        let proxy = kura_tests::s3::S3Front::one_at_a_time(&format!("127.0.0.1:{}", s3.port))?;
        let digest = &images.medium_layer;
        let mut run = 0;
        for round in 0..plan.rounds {
            for (instances, clients) in alternate(round, [(1usize, 64usize), (3, 64)])
                .into_iter()
                .chain(alternate(round, [(1, 256), (3, 256)]))
            {
                run += 1;
                // A fresh key prefix per run: every run starts cold.
                let file = w.join(format!("fleet-{run}.yml"));
                s3.write_kura_config(&file)?;
                let storage = std::fs::read_to_string(&file)?
                    .replace(&s3.endpoint, &proxy.endpoint)
                    + &format!("    prefix: run{run}\n  shared: true\n");
                let mut ms = (0..instances)
                    .map(|i| {
                        Mirror::start_with(
                            &kura,
                            w,
                            &format!("fleet-{run}-{i}"),
                            &upstream.url,
                            &storage,
                        )
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let before = upstream.blob_gets_of("bench/medium", digest);
                let storage_before: usize = proxy.requests().values().sum();
                let urls: Vec<String> = (0..clients)
                    .map(|i| format!("{}/v2/bench/medium/blobs/{digest}", ms[i % instances].url))
                    .collect();
                let started = Instant::now();
                let sizes = curl_parallel(&urls, clients)?;
                let secs = started.elapsed().as_secs_f64();
                ensure!(
                    sizes.iter().all(|s| *s == images.medium_size),
                    "fleet: a cold GET returned the wrong length: {sizes:?}"
                );
                let gets = upstream.blob_gets_of("bench/medium", digest) - before;
                // What the instances counted as fetched from the upstream
                // (followers count nothing: they read the holder's spool).
                let upstream_bytes: f64 = ms
                    .iter()
                    .map(|m| {
                        kura_tests::http_client()
                            .get(format!("{}/metrics", m.url))
                            .send()
                            .and_then(|r| r.text())
                            .unwrap_or_default()
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("kura_upstream_bytes_total ")?
                                    .trim()
                                    .parse::<f64>()
                                    .ok()
                            })
                            .unwrap_or(0.0)
                    })
                    .sum();
                // haproxy logs a request once it ends: the fills' last
                // requests (commit, lease release) end after the clients'.
                std::thread::sleep(std::time::Duration::from_millis(500));
                let requests = proxy.requests();
                let storage_requests = requests.values().sum::<usize>() - storage_before;
                eprintln!(
                    "bench: fleet run {run}: {instances} instance(s), {clients} clients: \
                     {secs:.2} s; storage requests so far by method: {requests:?}"
                );
                let rss = ms
                    .iter()
                    .map(Mirror::hwm_mib)
                    .collect::<anyhow::Result<Vec<f64>>>()?
                    .into_iter()
                    .fold(0.0, f64::max);
                let what = |m: &str| {
                    format!(
                        "{clients} cold GETs over {instances} instance(s) on one S3 bucket: {m}"
                    )
                };
                t.add(&what("upstream GETs"), "kura", gets as f64);
                t.add(
                    &what("upstream bytes (MiB)"),
                    "kura",
                    upstream_bytes / (1024.0 * 1024.0),
                );
                t.add(&what("last byte (s)"), "kura", secs);
                t.add(&what("peak RSS per instance (MiB)"), "kura", rss);
                t.add(
                    &what("storage requests per blob served"),
                    "kura",
                    storage_requests as f64 / clients as f64,
                );
                for m in ms.iter_mut() {
                    m.stop();
                }
            }
        }
    }

    if phase("memory") {
        eprintln!("bench: memory against blob size");
        for (name, kind) in [("kura", &kura), ("registry:2", &reg)] {
            for (label, image, size) in [
                ("tiny", &images.tiny_layer, images.tiny_size),
                ("huge", &images.huge_layer, images.huge_size),
            ] {
                let mut m = Mirror::start(kind, w, &format!("rss-{label}"), &upstream.url)?;
                let url = format!("{}/v2/bench/{label}/blobs/{image}", m.url);
                for _ in 0..2 {
                    let sizes = curl_parallel(std::slice::from_ref(&url), 1)?;
                    ensure!(sizes == [size], "{name}: {label} blob came back short");
                }
                let what = format!("peak RSS serving a {} blob (MiB)", human(size));
                t.add(&what, name, m.hwm_mib()?);
                m.stop();
            }
        }
    }

    if phase("wan") {
        // The seed's scenario: the upstream far away. Loopback hides what a
        // mirror is for.
        let link = crate::wan::Link {
            rate: plan.wan_rate,
            delay: Duration::from_millis(20),
        };
        eprintln!(
            "bench: the upstream behind a slow link ({} MB/s, 20 ms each way)",
            plan.wan_rate / 1e6
        );
        let upstream_addr = upstream.url.trim_start_matches("http://").to_owned();
        let layer = format!("/v2/bench/medium/blobs/{}", images.medium_layer);
        for round in 0..plan.rounds {
            let far = crate::wan::Shaper::start(&upstream_addr, link)?;
            let direct = images.pull(&far.url(), &["big"])?;
            t.add("WAN: pull of the big image, cold (s)", "direct", direct);
            t.add("WAN: pull of the big image, warm (s)", "direct", direct);
            let (ttfb, _) = curl_timing(&format!("{}{layer}", far.url()))?;
            t.add(
                "WAN: cold blob GET, time to first byte (ms)",
                "direct",
                ttfb,
            );
            for (name, kind) in alternate(round, [("kura", &kura), ("registry:2", &reg)]) {
                let mut m = Mirror::start(kind, w, &format!("wan-{round}"), &far.url())?;
                let (ttfb, _) = curl_timing(&format!("{}{layer}", m.url))?;
                t.add("WAN: cold blob GET, time to first byte (ms)", name, ttfb);
                let cold = images.pull(&m.url, &["big"])?;
                t.add("WAN: pull of the big image, cold (s)", name, cold);
                t.add("WAN: cold pull ÷ direct", name, cold / direct);
                let warm = images.pull(&m.url, &["big"])?;
                t.add("WAN: pull of the big image, warm (s)", name, warm);
                t.add("WAN: warm pull ÷ direct", name, warm / direct);
                m.stop();
            }
        }
    }

    if phase("startup") {
        eprintln!("bench: startup on a store of many objects");
        startup_at_scale(&kura, w, &upstream.url, plan, &mut t)?;
    }

    let mut report = t.render(plan)?;
    if phase("gc") {
        report.push_str(&crate::bench_gc::gc(kura_bin, w, quick)?);
    }
    write_report(root, &report, quick || only.is_some())
}

/// kura on an empty store, then on one of `plan.many_objects` objects
/// (half blobs, half a mirrored repository's links to them, as a long-lived
/// mirror has), with a size bound so that its first eviction pass lists
/// the whole cache: time to the first answer on each, and that pass's
/// cost, from kura's log.
fn startup_at_scale(
    kura: &MirrorKind,
    w: &Path,
    upstream: &str,
    plan: &Plan,
    t: &mut Table,
) -> anyhow::Result<()> {
    use sha2::{Digest as _, Sha256};
    let bound = "  max_size: 1TiB\n";
    let mut empty = Mirror::start_bounded(kura, w, "startup-empty", upstream, bound)?;
    t.add(
        "startup to first response, empty store (ms)",
        "kura",
        empty.startup_ms,
    );
    empty.stop();

    let name = "startup-many";
    let data = w.join(format!("kura-{name}/data"));
    let blobs = plan.many_objects / 2;
    eprintln!("bench: writing {} objects", 2 * blobs);
    let links = data.join("repositories/up.local/bench/many/_layers/sha256");
    std::fs::create_dir_all(&links)?;
    for fan in 0..=255u8 {
        std::fs::create_dir_all(data.join(format!("blobs/sha256/{fan:02x}")))?;
    }
    for i in 0..blobs {
        let hex = hex::encode(Sha256::digest((i as u64).to_le_bytes()));
        let file = data.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
        std::fs::write(file, (i as u64).to_le_bytes())?;
        std::fs::write(links.join(&hex), b"")?;
    }
    let mut many = Mirror::start_bounded(kura, w, name, upstream, bound)?;
    t.add(
        &format!(
            "startup to first response, {} objects (ms)",
            thousands(2 * blobs)
        ),
        "kura",
        many.startup_ms,
    );
    let log = w.join(format!("kura-{name}/log"));
    let deadline = Instant::now() + Duration::from_secs(600);
    let seconds = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("eviction pass listed the whole cache"))
        {
            break line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("seconds="))
                .and_then(|v| v.parse::<f64>().ok())
                .context("no seconds= in the eviction log line")?;
        }
        ensure!(
            Instant::now() < deadline,
            "no full eviction pass logged within 10 minutes; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    t.add(
        &format!(
            "first eviction pass over {} objects (s)",
            thousands(2 * blobs)
        ),
        "kura",
        seconds,
    );
    t.add("peak RSS after that pass (MiB)", "kura", many.hwm_mib()?);
    many.stop();
    std::fs::remove_dir_all(w.join(format!("kura-{name}")))?;
    Ok(())
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Print the report and splice it into docs/benchmarks.md, or into
/// target/bench-partial.md for a `--quick` or `--only` run.
fn write_report(root: &Path, report: &str, partial: bool) -> anyhow::Result<()> {
    println!("{report}");
    let out = if partial {
        root.join("target/bench-partial.md")
    } else {
        root.join("docs/benchmarks.md")
    };
    let previous = std::fs::read_to_string(&out).unwrap_or_default();
    std::fs::write(&out, splice_report(&previous, report))?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

const BEGIN: &str = "<!-- cargo xtask bench: begin -->";
const END: &str = "<!-- cargo xtask bench: end -->";

/// The report between the markers of `previous`, keeping the hand-written
/// text around them (the analysis of the numbers); or a new document.
fn splice_report(previous: &str, report: &str) -> String {
    match (previous.find(BEGIN), previous.find(END)) {
        (Some(b), Some(e)) if b < e => format!(
            "{}{BEGIN}\n{report}{END}{}",
            &previous[..b],
            &previous[e + END.len()..]
        ),
        _ => format!("# Benchmarks\n\n{BEGIN}\n{report}{END}\n"),
    }
}

/// Odd rounds run the second first.
fn alternate<T>(round: usize, pair: [T; 2]) -> [T; 2] {
    let [a, b] = pair;
    if round.is_multiple_of(2) {
        [a, b]
    } else {
        [b, a]
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

pub(crate) fn build_kura(root: &Path, quick: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "-p", "kura", "--bin", "kura"]);
    if !quick {
        cmd.arg("--release");
    }
    let status = cmd.current_dir(root).status()?;
    ensure!(status.success(), "building kura failed");
    let profile = if quick { "debug" } else { "release" };
    Ok(root.join("target").join(profile).join("kura"))
}

// ----- images --------------------------------------------------------------

struct Images {
    small_manifest: String,
    big_layer: String,
    big_layer_file: PathBuf,
    medium_layer: String,
    medium_size: u64,
    tiny_layer: String,
    tiny_size: u64,
    huge_layer: String,
    huge_size: u64,
    /// tag → (manifest digest, every blob as (digest, size)).
    contents: BTreeMap<&'static str, Vec<(String, u64)>>,
}

impl Images {
    /// The size of blob `digest` (of any image).
    fn bytes_of_blob(&self, digest: &str) -> u64 {
        self.contents
            .values()
            .flatten()
            .find(|(d, _)| d == digest)
            .map_or(0, |(_, size)| *size)
    }

    /// The bytes of every blob of image `tag`.
    fn bytes_of(&self, tag: &str) -> u64 {
        self.contents
            .get(tag)
            .map_or(0, |blobs| blobs.iter().map(|(_, size)| size).sum())
    }

    fn generate(dir: &Path, plan: &Plan, with_huge: bool) -> anyhow::Result<Images> {
        let mut oci = OciLayout::create(dir)?;
        let blobs = |i: &kura_tests::image::Image| -> Vec<(String, u64)> {
            std::iter::once(&i.config)
                .chain(&i.layers)
                .map(|d| (d.digest.clone(), d.size))
                .collect()
        };
        let small = oci.add_image("small", &ImageSpec::new(1, plan.small_layer, 1))?;
        let medium = oci.add_image("medium", &ImageSpec::new(2, plan.medium_layer, 2))?;
        let big = oci.add_image("big", &ImageSpec::new(4, plan.big_layer, 3))?;
        let multi = oci.add_index(
            "multi",
            &[
                ImageSpec::new(1, plan.index_layer, 4),
                ImageSpec::new(1, plan.index_layer, 5).platform("linux", "arm64"),
            ],
        )?;
        let tiny = oci.add_image("tiny", &ImageSpec::new(1, plan.tiny_blob, 6))?;
        // The GiB blob takes a while to generate and push: only when used.
        let huge_size = if with_huge { plan.huge_blob } else { 1024 };
        let huge = oci.add_image("huge", &ImageSpec::new(1, huge_size, 7))?;
        let mut contents = BTreeMap::new();
        contents.insert("small", blobs(&small));
        contents.insert("medium", blobs(&medium));
        contents.insert("big", blobs(&big));
        contents.insert(
            "multi",
            multi.images.iter().flat_map(&blobs).collect::<Vec<_>>(),
        );
        contents.insert("tiny", blobs(&tiny));
        contents.insert("huge", blobs(&huge));
        let big_layer = big.layers[0].digest.clone();
        Ok(Images {
            small_manifest: small.manifest.digest.clone(),
            big_layer_file: dir.join("blobs/sha256").join(big.layers[0].hex()),
            big_layer,
            medium_layer: medium.layers[0].digest.clone(),
            medium_size: medium.layers[0].size,
            tiny_layer: tiny.layers[0].digest.clone(),
            tiny_size: tiny.layers[0].size,
            huge_layer: huge.layers[0].digest.clone(),
            huge_size: huge.layers[0].size,
            contents,
        })
    }

    fn push(&self, dir: &Path, upstream: &Distribution) -> anyhow::Result<()> {
        let skopeo = Skopeo::new()?;
        for tag in self.contents.keys() {
            let mut extra = vec!["--preserve-digests"];
            if *tag == "multi" {
                extra.push("--all");
            }
            skopeo.copy(
                &extra,
                &format!("oci:{}:{tag}", dir.display()),
                &format!("docker://{}/bench/{tag}:latest", upstream.host),
            )?;
        }
        Ok(())
    }

    /// Pull images from `base` the way a client does: the manifest by tag,
    /// then every blob, four at a time. Returns the seconds to the last byte.
    fn pull(&self, base: &str, tags: &[&str]) -> anyhow::Result<f64> {
        let started = Instant::now();
        for tag in tags {
            let manifest = curl_parallel(&[format!("{base}/v2/bench/{tag}/manifests/latest")], 1)?;
            ensure!(manifest[0] > 0, "empty manifest for {tag} from {base}");
            let blobs = &self.contents[tag];
            let urls: Vec<String> = blobs
                .iter()
                .map(|(d, _)| format!("{base}/v2/bench/{tag}/blobs/{d}"))
                .collect();
            let sizes = curl_parallel(&urls, 4)?;
            for ((d, want), got) in blobs.iter().zip(&sizes) {
                ensure!(
                    got == want,
                    "{base}: blob {d} of {tag}: {got} of {want} bytes"
                );
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

/// One GET of `url` with curl: (time to first byte in ms, whole transfer
/// in s).
fn curl_timing(url: &str) -> anyhow::Result<(f64, f64)> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_starttransfer} %{time_total}",
        ])
        .arg(url)
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(out.status.success(), "curl failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    ensure!(f.len() == 3 && f[0] == "200", "GET {url}: {text}");
    Ok((f[1].parse::<f64>()? * 1000.0, f[2].parse()?))
}

/// GET every URL (at most `parallel` at once, each body discarded) with
/// curl; the byte count of each, in order. Any non-200 is an error.
fn curl_parallel(urls: &[String], parallel: usize) -> anyhow::Result<Vec<u64>> {
    curl_answers(urls, parallel)?
        .into_iter()
        .zip(urls)
        .map(|((code, size), url)| {
            ensure!(code == 200, "GET {url}: HTTP {code}");
            Ok(size)
        })
        .collect()
}

/// GET every URL as [`curl_parallel`] does; the status and byte count of
/// each, in order, whatever the status.
fn curl_answers(urls: &[String], parallel: usize) -> anyhow::Result<Vec<(u16, u64)>> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--no-progress-meter",
        "--parallel",
        "--parallel-immediate",
    ])
    .arg("--parallel-max")
    .arg(parallel.max(1).to_string())
    .args(["-H", &format!("Accept: {ACCEPT}")])
    .args(["-w", "%{url} %{http_code} %{size_download}\\n"]);
    for u in urls {
        cmd.args(["-o", "/dev/null", u]);
    }
    let out = cmd.stderr(Stdio::inherit()).output()?;
    ensure!(out.status.success(), "curl failed: {}", out.status);
    // --parallel reports transfers as they finish; put them back in order.
    let mut done: BTreeMap<&str, Vec<(u16, u64)>> = BTreeMap::new();
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(url), Some(code), Some(size)) = (f.next(), f.next(), f.next()) else {
            bail!("unexpected curl output: {line}");
        };
        done.entry(url)
            .or_default()
            .push((code.parse()?, size.parse()?));
    }
    urls.iter()
        .map(|u| {
            done.get_mut(u.as_str())
                .and_then(Vec::pop)
                .with_context(|| format!("curl reported nothing for {u}"))
        })
        .collect()
}

// ----- servers -------------------------------------------------------------

enum MirrorKind {
    Kura(PathBuf),
    Registry2,
}

static PERF_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A mirror process of either kind, killed on drop.
struct Mirror {
    label: &'static str,
    child: Option<Child>,
    /// `perf record` attached to a kura, with `--perf`.
    profiler: Option<Child>,
    url: String,
    startup_ms: f64,
}

impl Mirror {
    fn start(kind: &MirrorKind, work: &Path, name: &str, upstream: &str) -> anyhow::Result<Mirror> {
        Self::start_with(kind, work, name, upstream, "")
    }

    /// [`Mirror::start`] with `mirror` YAML added to kura's `mirror:`
    /// section (a `max_size`, say).
    fn start_bounded(
        kind: &MirrorKind,
        work: &Path,
        name: &str,
        upstream: &str,
        mirror: &str,
    ) -> anyhow::Result<Mirror> {
        Self::start_configured(kind, work, name, upstream, mirror, "")
    }

    /// [`Mirror::start`] with `extra` top-level YAML in kura's config (a
    /// `storage:` section, say).
    fn start_with(
        kind: &MirrorKind,
        work: &Path,
        name: &str,
        upstream: &str,
        extra: &str,
    ) -> anyhow::Result<Mirror> {
        Self::start_configured(kind, work, name, upstream, "", extra)
    }

    fn start_configured(
        kind: &MirrorKind,
        work: &Path,
        name: &str,
        upstream: &str,
        mirror: &str,
        extra: &str,
    ) -> anyhow::Result<Mirror> {
        let port = kura_tests::free_port();
        let (label, dir) = match kind {
            MirrorKind::Kura(_) => ("kura", work.join(format!("kura-{name}"))),
            MirrorKind::Registry2 => ("registry:2", work.join(format!("reg-{name}"))),
        };
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("log"))?;
        let mut cmd = match kind {
            MirrorKind::Kura(bin) => {
                let config = dir.join("kura.yml");
                std::fs::write(
                    &config,
                    format!(
                        "listen: 127.0.0.1:{port}\ndata_dir: {data}\n\
                         mirror:\n  default: up.local\n  upstreams:\n    \
                         - name: up.local\n      url: {upstream}\n{mirror}{extra}",
                        data = dir.join("data").display()
                    ),
                )?;
                let mut c = Command::new(bin);
                c.arg("serve").arg("--config").arg(config);
                c
            }
            MirrorKind::Registry2 => {
                let config = dir.join("config.yml");
                std::fs::write(
                    &config,
                    format!(
                        "version: 0.1\n\
                         log:\n  level: info\n  accesslog:\n    disabled: false\n\
                         storage:\n  filesystem:\n    rootdirectory: {data}\n\
                         http:\n  addr: 127.0.0.1:{port}\n  secret: kura-bench\n\
                         proxy:\n  remoteurl: {upstream}\n",
                        data = dir.join("data").display()
                    ),
                )?;
                let mut c = Command::new("docker-registry");
                c.arg("serve").arg(config);
                c
            }
        };
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {label}"))?;
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait()? {
                bail!("{label} exited at startup with {st}; see {}", dir.display());
            }
            if first_response(port) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{label} not answering within 30 s"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        let profiler = match (kind, PERF_DIR.get()) {
            (MirrorKind::Kura(_), Some(perf_dir)) => Some(
                Command::new("perf")
                    .args(["record", "-g", "-F", "999", "-o"])
                    .arg(perf_dir.join(format!("{name}.data")))
                    .arg("-p")
                    .arg(child.id().to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting perf record")?,
            ),
            _ => None,
        };
        Ok(Mirror {
            label,
            profiler,
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            startup_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// CPU time the process has used so far, user and system, in seconds
    /// (its own accounting: /proc/<pid>/stat).
    fn cpu_secs(&self) -> anyhow::Result<f64> {
        let pid = self.child.as_ref().context("stopped")?.id();
        process_cpu_secs(pid)
    }

    /// The process's peak resident set so far (VmHWM), in MiB.
    fn hwm_mib(&self) -> anyhow::Result<f64> {
        let pid = self.child.as_ref().context("stopped")?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmHWM")?
            .parse()?;
        Ok(kib / 1024.0)
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.profiler.take() {
            // perf writes its data on SIGINT.
            let _ = kura_tests::signal(p.id(), "INT");
            let _ = p.wait();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `GET /v2/` on the port gets any HTTP answer yet.
fn first_response(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 ")
}

/// nginx serving one file as `/blob` with sendfile: the ceiling.
struct Nginx {
    child: Child,
    url: String,
}

impl Nginx {
    fn start(work: &Path, file: &Path) -> anyhow::Result<Nginx> {
        let dir = work.join("nginx");
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::copy(file, dir.join("www/blob"))?;
        let port = kura_tests::free_port();
        let user = if running_as_root() {
            "user root;\n"
        } else {
            ""
        };
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "{user}daemon off;\nworker_processes auto;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log;\nevents {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  \
                 keepalive_requests 1000000;\n  default_type application/octet-stream;\n  \
                 client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  \
                 fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  \
                 server {{ listen 127.0.0.1:{port}; root {d}/www; }}\n}}\n",
                d = dir.display()
            ),
        )?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning nginx")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !first_response(port) {
            ensure!(Instant::now() < deadline, "nginx not answering");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Nginx {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master takes its workers down on SIGQUIT/SIGTERM; SIGKILL
        // would orphan them.
        let _ = kura_tests::signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

// ----- wrk -----------------------------------------------------------------

/// utime + stime of process `pid`, in seconds.
fn process_cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // fields count from after its closing one.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: f64 = fields
        .get(11)
        .zip(fields.get(12))
        .context("short stat")
        .and_then(|(u, s)| Ok(u.parse::<f64>()? + s.parse::<f64>()?))?;
    Ok(ticks / clock_ticks_per_sec())
}

/// sysconf(_SC_CLK_TCK), through getconf (100 on Linux everywhere here).
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

struct WrkResult {
    req_per_sec: f64,
    bytes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl WrkResult {
    fn mb_per_sec(&self) -> f64 {
        self.bytes_per_sec / 1e6
    }
}

fn wrk(
    url: &str,
    threads: u32,
    conns: u32,
    secs: u64,
    accept: Option<&str>,
) -> anyhow::Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .args(["--timeout", "30s"]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    let out = cmd.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "wrk failed: {text}");
    parse_wrk(&text).with_context(|| format!("wrk {url}:\n{text}"))
}

fn parse_wrk(text: &str) -> anyhow::Result<WrkResult> {
    ensure!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "errors during the run"
    );
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps: f64 = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let transfer = parse_size(field("Transfer/sec:").context("no Transfer/sec")?)?;
    let p50 = parse_ms(field("50%").context("no p50")?)?;
    let p99 = parse_ms(field("99%").context("no p99")?)?;
    Ok(WrkResult {
        req_per_sec: rps,
        bytes_per_sec: transfer,
        p50_ms: p50,
        p99_ms: p99,
    })
}

/// wrk's sizes: `245.12MB` (binary multiples).
fn parse_size(s: &str) -> anyhow::Result<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse()?;
    let mult = match unit {
        "B" | "" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => bail!("unknown wrk unit {u}"),
    };
    Ok(n * mult)
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.00s`, `1.00m`.
fn parse_ms(s: &str) -> anyhow::Result<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        u => bail!("unknown wrk time unit {u}"),
    })
}

// ----- the report ----------------------------------------------------------

#[derive(Default)]
struct Table {
    /// measure → column → samples, in insertion order of measures.
    rows: Vec<(String, BTreeMap<&'static str, Vec<f64>>)>,
}

impl Table {
    fn add(&mut self, measure: &str, column: &'static str, value: f64) {
        let i = match self.rows.iter().position(|(m, _)| m == measure) {
            Some(i) => i,
            None => {
                self.rows.push((measure.to_owned(), BTreeMap::new()));
                self.rows.len() - 1
            }
        };
        self.rows[i].1.entry(column).or_default().push(value);
    }

    fn render(&self, plan: &Plan) -> anyhow::Result<String> {
        let median = |v: Option<&Vec<f64>>| -> Option<f64> {
            let mut v = v?.clone();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let fmt = |v: Option<f64>| match v {
            None => "–".to_owned(),
            Some(v) if v >= 100.0 => format!("{v:.0}"),
            Some(v) if v >= 10.0 => format!("{v:.1}"),
            Some(v) => format!("{v:.2}"),
        };
        let mut out = String::new();
        out.push_str(&machine_line()?);
        if plan.quick {
            out.push_str(
                "\n**`--quick` run: small sizes and a debug build of kura, a smoke test of the \
                 harness. These numbers are not results.**\n",
            );
        }
        out.push_str(&format!(
            "\nProduced by `cargo xtask bench{}` ({} rounds, alternating which mirror goes \
             first; the median of the rounds is shown). Everything runs on this one machine \
             over loopback: the upstream (Debian's `docker-registry`, CNCF distribution 2.8), \
             registry:2 in proxy mode (`proxy.remoteurl`, same package), kura mirroring the \
             same upstream on local disk, and nginx with `sendfile on` as the ceiling for \
             serving a file. Load: `wrk` for rates and throughput (1 thread for 1 client, 2 \
             threads otherwise), `curl --parallel` for pulls. Blobs: {} for throughput, a \
             {}-layer image of {} per layer for the cold pull, a {} and a {} layer for the \
             64 concurrent cold GETs. The load generator shares the two cores with the \
             servers.\n\n",
            if plan.quick { " --quick" } else { "" },
            plan.rounds,
            human(plan.big_layer as u64),
            4,
            human(plan.big_layer as u64),
            human(plan.medium_layer as u64),
            human(plan.big_layer as u64),
        ));
        out.push_str(
            "| measure | registry:2 | kura | ceiling / direct | kura ÷ registry:2 | kura ÷ ceiling |\n\
             |---|---:|---:|---:|---:|---:|\n",
        );
        for (measure, cols) in &self.rows {
            let k = median(cols.get("kura"));
            let r = median(cols.get("registry:2"));
            let c = median(cols.get("ceiling").or(cols.get("direct")));
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "–".to_owned(),
            };
            out.push_str(&format!(
                "| {measure} | {} | {} | {} | {} | {} |\n",
                fmt(r),
                fmt(k),
                fmt(c),
                ratio(k, r),
                ratio(k, c),
            ));
        }
        Ok(out)
    }
}

fn machine_line() -> anyhow::Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Ok(format!(
        "Machine: {model}, {cores} cores, Linux {kernel}. Run: {date}.\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_parsed() {
        let text = "Running 1s test @ http://127.0.0.1:1/x\n  1 threads and 1 connections\n\
            \x20 Latency Distribution\n     50%  812.00us\n     75%    1.00ms\n     90%    2.00ms\n     99%    1.50s\n\
            \x20 1234 requests in 1.00s, 1.23GB read\nRequests/sec:   1234.50\nTransfer/sec:    245.12MB\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.req_per_sec, 1234.5);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert_eq!(r.p99_ms, 1500.0);
        assert!((r.bytes_per_sec - 245.12 * 1048576.0).abs() < 1.0);
        assert!(parse_wrk(&format!("{text}  Non-2xx or 3xx responses: 3\n")).is_err());
    }

    #[test]
    fn reports_replace_only_the_marked_part() {
        let fresh = splice_report("", "table 1\n");
        assert!(fresh.starts_with("# Benchmarks\n"));
        let edited = fresh.replace("# Benchmarks\n", "# Benchmarks\n\nintro\n") + "analysis\n";
        let again = splice_report(&edited, "table 2\n");
        assert!(again.contains("intro\n"));
        assert!(again.contains("analysis\n"));
        assert!(again.contains("table 2\n"));
        assert!(!again.contains("table 1"));
    }
}
