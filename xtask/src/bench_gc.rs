//! `cargo xtask bench --only gc`: online garbage collection of hosted
//! repositories, on local disk and on S3 (s3s-fs), while kura serves.
//!
//! For each backend a `kura serve` is filled through its own HTTP API
//! (monolithic `POST ?digest=` blob uploads and manifest `PUT`s, several
//! clients at once): repositories of small OCI images, each image a config,
//! three layers of its own and a base layer shared by its repository. Then,
//! as a CI cleanup would, half the images become garbage: a third have
//! their tag deleted, a third their manifest deleted by digest, and a third
//! were pushed by digest, never tagged. The shared base layer stays live.
//!
//! Pull clients then fetch live images (the manifest by tag, then every
//! blob) at a fixed pace, first with kura idle, then while `kura gc
//! --grace 0s` runs as its own process against the same store; every
//! request's latency is recorded. Afterwards every live image must pull
//! byte for byte, every garbage blob, link and manifest must be gone from
//! storage, the counts `kura gc` printed must be exactly the garbage that
//! was made, and a dry run must find nothing left. A collection that
//! deletes too little or too much fails the bench rather than giving a
//! figure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use kura_tests::api::{image_manifest, noise};
use kura_tests::image::OCI_MANIFEST;
use kura_tests::s3::{S3Front, S3Server};
use kura_tests::{free_port, sha256};
use reqwest::blocking::Client;

use crate::chaos::Server;

/// Blobs of one image that no other image has: its config, its own three
/// layers and its manifest.
const OWN_BLOBS: usize = 5;
/// Clients pushing (and verifying) at once.
const PUSHERS: usize = 4;
/// Pull clients during the latency measurement, each starting one pull
/// (a manifest and five blobs) every [`PULL_EVERY`]: at most 1,200
/// requests/s in all. A paced load rather than a closed loop, so that
/// latency shows what the collection does to serving rather than how deep
/// a queue of clients is (a client that falls behind does not burst to
/// catch up). Each request on a connection of its own (see [`pull_loop`]).
const PULL_CLIENTS: usize = 4;
const PULL_EVERY: Duration = Duration::from_millis(20);

/// The store and the measurement windows.
struct Shape {
    repos: usize,
    /// Images per repository: the first half stay tagged, the rest become
    /// garbage.
    images: usize,
    /// Seconds of pulls with kura idle before the collection starts.
    idle: Duration,
}

impl Shape {
    fn new(quick: bool) -> Shape {
        if quick {
            Shape {
                repos: 10,
                images: 20,
                idle: Duration::from_secs(2),
            }
        } else {
            Shape {
                repos: 40,
                images: 50,
                idle: Duration::from_secs(10),
            }
        }
    }

    fn live_per_repo(&self) -> usize {
        self.images / 2
    }

    fn blobs(&self) -> usize {
        self.repos * (self.images * OWN_BLOBS + 1)
    }

    fn garbage_images(&self) -> usize {
        self.repos * (self.images - self.live_per_repo())
    }

    fn live_blobs(&self) -> usize {
        self.repos * (self.live_per_repo() * OWN_BLOBS + 1)
    }

    /// What a correct collection removes: (manifests, links, blobs).
    fn expected_removals(&self) -> (usize, usize, usize) {
        let garbage = (self.live_per_repo()..self.images).map(Fate::of);
        // Revisions left to the collector: all but those deleted by digest.
        let manifests = self.repos * garbage.filter(|f| *f != Fate::ManifestDeleted).count();
        // Links: the config and the image's own layers (the base stays).
        let links = self.garbage_images() * (OWN_BLOBS - 1);
        (manifests, links, self.garbage_images() * OWN_BLOBS)
    }
}

/// What happens to an image after the push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Live,
    /// Pushed under a tag, then the tag deleted.
    TagDeleted,
    /// Pushed under a tag, then `DELETE /manifests/<digest>`.
    ManifestDeleted,
    /// Pushed by digest, never tagged.
    NeverTagged,
}

impl Fate {
    fn of(i: usize) -> Fate {
        match i % 3 {
            0 => Fate::TagDeleted,
            1 => Fate::ManifestDeleted,
            _ => Fate::NeverTagged,
        }
    }
}

/// One generated image; the same every time for the same (repo, index).
struct Img {
    repo: String,
    tag: String,
    fate: Fate,
    config: Vec<u8>,
    /// The repository's base layer first, then the image's own three.
    layers: Vec<Vec<u8>>,
    manifest: Vec<u8>,
    digest: String,
}

impl Img {
    fn new(shape: &Shape, r: usize, i: usize) -> Img {
        let seed = (r * 100_000 + i) as u64;
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"bench": "gc", "repo": r, "image": i}},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .expect("JSON");
        let mut layers = vec![base_layer(r)];
        for k in 0..3u64 {
            let size = 1024 + (seed.wrapping_mul(7919).wrapping_add(k * 131) % 3072) as usize;
            layers.push(noise(size, 1 + seed * 8 + k));
        }
        let manifest = image_manifest(&config, &layers);
        let fate = if i < shape.live_per_repo() {
            Fate::Live
        } else {
            Fate::of(i)
        };
        Img {
            repo: repo_name(r),
            tag: format!("v{i}"),
            fate,
            digest: sha256(&manifest),
            config,
            layers,
            manifest,
        }
    }

    /// The config and every layer, the shared base included.
    fn blobs(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.config.as_slice()).chain(self.layers.iter().map(Vec::as_slice))
    }

    /// Blobs no other image has: config, own layers, manifest.
    fn own_blobs(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.config.as_slice())
            .chain(self.layers[1..].iter().map(Vec::as_slice))
            .chain(std::iter::once(self.manifest.as_slice()))
    }
}

fn repo_name(r: usize) -> String {
    format!("gcbench/app{r:02}")
}

fn base_layer(r: usize) -> Vec<u8> {
    noise(8 * 1024, 0xba5e_0000 + r as u64)
}

/// Run the phase on both backends; the report section (markdown).
pub(crate) fn gc(kura_bin: &Path, work: &Path, quick: bool) -> anyhow::Result<String> {
    let shape = Shape::new(quick);
    check_unique(&shape)?;
    eprintln!("bench: gc on local disk");
    let local = run_backend(kura_bin, &work.join("gc-local"), &shape, None)?;
    eprintln!("bench: gc on S3 (s3s-fs)");
    let s3 = S3Server::start("gcbench")?;
    let on_s3 = run_backend(kura_bin, &work.join("gc-s3"), &shape, Some(&s3))?;
    Ok(render(&shape, quick, &local, &on_s3))
}

/// Every generated blob is distinct, so the expected counts are exact.
fn check_unique(shape: &Shape) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for r in 0..shape.repos {
        seen.insert(sha256(&base_layer(r)));
        for i in 0..shape.images {
            for b in Img::new(shape, r, i).own_blobs() {
                seen.insert(sha256(b));
            }
        }
    }
    ensure!(
        seen.len() == shape.blobs(),
        "generated {} distinct blobs, meant {}",
        seen.len(),
        shape.blobs()
    );
    Ok(())
}

struct Outcome {
    push_secs: f64,
    gc_wall_secs: f64,
    summary: GcSummary,
    idle: Latency,
    during: Latency,
    /// S3 requests `kura gc` made, by method (S3 only).
    requests: Option<std::collections::BTreeMap<String, usize>>,
}

impl Outcome {
    fn deletions(&self) -> u64 {
        self.summary.manifests + self.summary.links + self.summary.blobs
    }

    fn per_minute(&self) -> f64 {
        self.deletions() as f64 / self.gc_wall_secs * 60.0
    }
}

fn run_backend(
    bin: &Path,
    dir: &Path,
    shape: &Shape,
    s3: Option<&S3Server>,
) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(dir)?;
    let port = free_port();
    let data = dir.join("data");
    let config = dir.join("kura.yml");
    // `kura gc` reaches s3s-fs through haproxy, which counts its requests
    // (and lets one create-only put through at a time, as S3 decides them).
    let mut gc_config = config.clone();
    let mut front = None;
    let mut yaml = format!(
        "listen: 127.0.0.1:{port}\ndata_dir: {}\n\
         gc:\n  interval_secs: 0\n",
        data.display()
    );
    let storage_root = match s3 {
        Some(s3) => {
            let storage = dir.join("storage.yml");
            s3.write_kura_config(&storage)?;
            let storage = std::fs::read_to_string(&storage)?;
            let counted = S3Front::one_at_a_time(&format!("127.0.0.1:{}", s3.port))?;
            gc_config = dir.join("kura-gc.yml");
            std::fs::write(
                &gc_config,
                yaml.clone() + &storage.replace(&s3.endpoint, &counted.endpoint),
            )?;
            front = Some(counted);
            yaml.push_str(&storage);
            s3.bucket_dir()
        }
        None => data.clone(),
    };
    std::fs::write(&config, yaml)?;
    let _server = Server::start(bin, &config, port, dir)?;
    let base = format!("http://127.0.0.1:{port}");

    let started = Instant::now();
    fill(&base, shape)?;
    let push_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: gc: {} blobs pushed in {push_secs:.1} s, half made garbage",
        shape.blobs()
    );

    // Pulls while idle, then while `kura gc` runs beside the server.
    let live: Vec<Img> = (0..shape.repos)
        .flat_map(|r| (0..shape.live_per_repo()).map(move |i| (r, i)))
        .map(|(r, i)| Img::new(shape, r, i))
        .collect();
    let pulls: Vec<Pull> = live.iter().map(|img| Pull::of(&base, img)).collect();
    let stop = AtomicBool::new(false);
    let (samples, errors, idle_window, gc_window, gc_out) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..PULL_CLIENTS)
            .map(|c| {
                let (pulls, stop) = (&pulls, &stop);
                s.spawn(move || pull_loop(pulls, c * pulls.len() / PULL_CLIENTS, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let idle_from = Instant::now();
        std::thread::sleep(shape.idle);
        let idle_to = Instant::now();
        let gc = run_gc(bin, &gc_config, &["--grace", "0s"]);
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        let mut errors = Vec::new();
        for c in clients {
            let (s, e) = c.join().expect("pull client");
            samples.extend(s);
            errors.extend(e);
        }
        gc.map(|(from, to, out)| (samples, errors, (idle_from, idle_to), (from, to), out))
    })?;
    ensure!(
        errors.is_empty(),
        "{} pulls of live images failed while idle or during the collection, first: {}",
        errors.len(),
        errors[0]
    );
    let summary = parse_summary(&gc_out).with_context(|| format!("kura gc said:\n{gc_out}"))?;
    let gc_wall_secs = (gc_window.1 - gc_window.0).as_secs_f64();
    eprintln!("bench: gc: {gc_wall_secs:.2} s; kura gc: {summary:?}");
    // haproxy logs a request when it ends; the last ones may lag a little.
    let requests = front.as_ref().map(|f| {
        std::thread::sleep(Duration::from_millis(500));
        f.requests()
    });

    verify(&base, shape, &live, &storage_root)?;
    let (manifests, links, blobs) = shape.expected_removals();
    ensure!(
        (
            summary.tags,
            summary.manifests,
            summary.links,
            summary.blobs
        ) == (0, manifests as u64, links as u64, blobs as u64),
        "kura gc removed {} tags, {} manifests, {} links, {} blobs; the garbage made was \
         0 tags, {manifests} manifests, {links} links, {blobs} blobs",
        summary.tags,
        summary.manifests,
        summary.links,
        summary.blobs
    );
    let (_, _, again) = run_gc(bin, &gc_config, &["--grace", "0s", "--dry-run"])?;
    let again = parse_summary(&again).with_context(|| format!("kura gc said:\n{again}"))?;
    ensure!(
        again.manifests + again.links + again.blobs == 0
            && again.blobs_in_storage == shape.live_blobs() as u64,
        "after the collection a dry run still finds garbage or a wrong blob count: {again:?} \
         (live blobs: {})",
        shape.live_blobs()
    );

    let window = |(from, to): (Instant, Instant)| {
        Latency::of(
            samples
                .iter()
                .filter(|s| s.at >= from && s.at < to)
                .map(|s| s.ms),
        )
    };
    Ok(Outcome {
        push_secs,
        gc_wall_secs,
        summary,
        idle: window(idle_window),
        during: window(gc_window),
        requests,
    })
}

// ----- building the store ---------------------------------------------------

/// Push every image, then delete tags and manifests as a cleanup would.
fn fill(base: &str, shape: &Shape) -> anyhow::Result<()> {
    parallel(shape.repos, |client, r| {
        let repo = repo_name(r);
        push_blob(client, base, &repo, &base_layer(r))?;
        for i in 0..shape.images {
            let img = Img::new(shape, r, i);
            // The base layer is already there, as a client's HEAD would find.
            for b in std::iter::once(&img.config).chain(&img.layers[1..]) {
                push_blob(client, base, &repo, b)?;
            }
            let reference = match img.fate {
                Fate::NeverTagged => img.digest.clone(),
                _ => img.tag.clone(),
            };
            let url = format!("{base}/v2/{repo}/manifests/{reference}");
            let resp = client
                .put(&url)
                .header("content-type", OCI_MANIFEST)
                .body(img.manifest.clone())
                .send()?;
            expect_status(resp, 201, "PUT", &url)?;
        }
        Ok(())
    })?;
    parallel(shape.repos, |client, r| {
        for i in shape.live_per_repo()..shape.images {
            let img = Img::new(shape, r, i);
            let reference = match img.fate {
                Fate::TagDeleted => &img.tag,
                Fate::ManifestDeleted => &img.digest,
                Fate::Live | Fate::NeverTagged => continue,
            };
            let url = format!("{base}/v2/{}/manifests/{reference}", img.repo);
            expect_status(client.delete(&url).send()?, 202, "DELETE", &url)?;
        }
        Ok(())
    })
}

fn push_blob(client: &Client, base: &str, repo: &str, data: &[u8]) -> anyhow::Result<()> {
    let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={}", sha256(data));
    let resp = client
        .post(&url)
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()?;
    expect_status(resp, 201, "POST", &url).map(drop)
}

fn expect_status(
    resp: reqwest::blocking::Response,
    want: u16,
    method: &str,
    url: &str,
) -> anyhow::Result<Vec<u8>> {
    let status = resp.status().as_u16();
    let body = resp.bytes()?.to_vec();
    ensure!(
        status == want,
        "{method} {url}: HTTP {status} (wanted {want}): {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    Ok(body)
}

/// `f(client, i)` for every i below `n`, [`PUSHERS`] at a time.
fn parallel(
    n: usize,
    f: impl Fn(&Client, usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..PUSHERS)
            .map(|_| {
                s.spawn(|| {
                    let client = kura_tests::http_client();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        f(&client, i)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("worker thread"))
    })
}

// ----- pulls and their latency ------------------------------------------------

/// The requests of one pull of a live image, with the length each answer
/// must have.
struct Pull {
    manifest: (String, usize),
    blobs: Vec<(String, usize)>,
}

impl Pull {
    fn of(base: &str, img: &Img) -> Pull {
        Pull {
            manifest: (
                format!("{base}/v2/{}/manifests/{}", img.repo, img.tag),
                img.manifest.len(),
            ),
            blobs: img
                .blobs()
                .map(|b| {
                    (
                        format!("{base}/v2/{}/blobs/{}", img.repo, sha256(b)),
                        b.len(),
                    )
                })
                .collect(),
        }
    }
}

struct Sample {
    /// When the request was sent.
    at: Instant,
    ms: f64,
}

/// Pull images from `first` on, one pull every [`PULL_EVERY`], until
/// `stop`; every request's latency, and what went wrong.
fn pull_loop(pulls: &[Pull], first: usize, stop: &AtomicBool) -> (Vec<Sample>, Vec<String>) {
    // A fresh connection per request. On a reused one, a blob's body waits
    // for the client's delayed ACK of its headers (kura does not set
    // TCP_NODELAY and writes them separately): ~40 ms on every blob GET,
    // which would hide what the collection costs.
    kura_tests::init_crypto();
    let client = Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    let mut next = Instant::now();
    let mut i = first;
    while !stop.load(Ordering::Relaxed) {
        let pull = &pulls[i % pulls.len()];
        i += 1;
        for (n, (url, len)) in std::iter::once(&pull.manifest)
            .chain(&pull.blobs)
            .enumerate()
        {
            let at = Instant::now();
            let mut req = client.get(url);
            if n == 0 {
                req = req.header("accept", OCI_MANIFEST);
            }
            let got = req
                .send()
                .and_then(|r| Ok((r.status().as_u16(), r.bytes()?.len())));
            samples.push(Sample {
                at,
                ms: at.elapsed().as_secs_f64() * 1000.0,
            });
            match got {
                Ok((200, l)) if l == *len => {}
                Ok((status, l)) => errors.push(format!("GET {url}: {status}, {l} of {len} bytes")),
                Err(e) => errors.push(format!("GET {url}: {e}")),
            }
        }
        next += PULL_EVERY;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Behind: no burst to catch up.
            next = now;
        }
    }
    (samples, errors)
}

#[derive(Debug, Clone, Copy)]
struct Latency {
    requests: usize,
    p50_ms: f64,
    p99_ms: f64,
}

impl Latency {
    fn of(ms: impl Iterator<Item = f64>) -> Latency {
        let mut v: Vec<f64> = ms.collect();
        v.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if v.is_empty() {
                f64::NAN
            } else {
                v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
            }
        };
        Latency {
            requests: v.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
        }
    }
}

// ----- the collection -----------------------------------------------------------

/// `kura gc --config CONFIG ARGS`: when it started and ended, and what it
/// printed. A failure is an error.
fn run_gc(bin: &Path, config: &Path, args: &[&str]) -> anyhow::Result<(Instant, Instant, String)> {
    let from = Instant::now();
    let out = Command::new(bin)
        .arg("gc")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .context("running kura gc")?;
    let to = Instant::now();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "kura gc {args:?} failed with {}:\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((from, to, text))
}

/// The summary line of `kura gc`: "removed T tags, M manifests, L links,
/// B blobs (SIZE) in S s; R hosted repositories, N blobs in storage; …".
#[derive(Debug, Clone, Copy, PartialEq)]
struct GcSummary {
    tags: u64,
    manifests: u64,
    links: u64,
    blobs: u64,
    secs: f64,
    blobs_in_storage: u64,
}

fn parse_summary(out: &str) -> anyhow::Result<GcSummary> {
    let line = out
        .lines()
        .find(|l| {
            (l.starts_with("removed ") || l.starts_with("would remove ")) && l.contains(" tags, ")
        })
        .context("no summary line")?;
    // The number right before `marker`.
    let before = |marker: &str| -> anyhow::Result<&str> {
        let end = line
            .find(marker)
            .with_context(|| format!("no {marker:?} in {line:?}"))?;
        line[..end]
            .split_whitespace()
            .last()
            .with_context(|| format!("nothing before {marker:?} in {line:?}"))
    };
    let count = |marker: &str| -> anyhow::Result<u64> {
        before(marker)?
            .parse()
            .with_context(|| format!("the count before {marker:?} in {line:?}"))
    };
    Ok(GcSummary {
        tags: count(" tags, ")?,
        manifests: count(" manifests, ")?,
        links: count(" links, ")?,
        blobs: count(" blobs (")?,
        secs: before(" s; ")?.parse()?,
        blobs_in_storage: count(" blobs in storage")?,
    })
}

// ----- verification ---------------------------------------------------------------

/// Every live image pulls byte for byte (by tag and by digest); every
/// garbage blob, link and revision is gone from storage; the blobs left are
/// exactly the live ones.
fn verify(base: &str, shape: &Shape, live: &[Img], storage: &Path) -> anyhow::Result<()> {
    parallel(live.len(), |client, n| {
        let img = &live[n];
        for reference in [&img.tag, &img.digest] {
            let url = format!("{base}/v2/{}/manifests/{reference}", img.repo);
            let resp = client.get(&url).header("accept", OCI_MANIFEST).send()?;
            let body = expect_status(resp, 200, "GET", &url)?;
            ensure!(body == img.manifest, "GET {url}: not the manifest pushed");
        }
        for b in img.blobs() {
            let url = format!("{base}/v2/{}/blobs/{}", img.repo, sha256(b));
            let body = expect_status(client.get(&url).send()?, 200, "GET", &url)?;
            ensure!(body == b, "GET {url}: not the bytes pushed");
        }
        Ok(())
    })
    .context("a live image no longer pulls intact after the collection")?;

    let hex = |d: String| d.trim_start_matches("sha256:").to_owned();
    let mut left = Vec::new();
    for r in 0..shape.repos {
        for i in shape.live_per_repo()..shape.images {
            let img = Img::new(shape, r, i);
            let repo = storage.join("repositories").join(&img.repo);
            for b in img.own_blobs() {
                let h = hex(sha256(b));
                left.push(storage.join("blobs/sha256").join(&h[..2]).join(&h));
                left.push(repo.join("_layers/sha256").join(&h));
            }
            left.push(
                repo.join("_manifests/revisions/sha256")
                    .join(hex(img.digest)),
            );
        }
    }
    left.retain(|p| p.exists());
    ensure!(
        left.is_empty(),
        "{} garbage keys are still in storage after the collection, e.g. {}",
        left.len(),
        left[0].display()
    );
    let blobs = count_blob_files(&storage.join("blobs/sha256"))?;
    ensure!(
        blobs == shape.live_blobs(),
        "{blobs} blobs in storage after the collection; {} are live",
        shape.live_blobs()
    );
    Ok(())
}

/// Files named by a sha256 hex digest under `dir` (`<xx>/<hex>`).
fn count_blob_files(dir: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for fan in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let fan: PathBuf = fan?.path();
        if !fan.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&fan)? {
            let name = f?.file_name();
            let name = name.to_string_lossy();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                n += 1;
            }
        }
    }
    Ok(n)
}

// ----- the report -------------------------------------------------------------------

fn render(shape: &Shape, quick: bool, local: &Outcome, s3: &Outcome) -> String {
    let mut out = String::from("\n### Garbage collection (`--only gc`)\n\n");
    if quick {
        out.push_str(
            "**`--quick`: a small store and a debug build of kura, a smoke test of the \
             harness. These numbers are not results.**\n\n",
        );
    }
    out.push_str(&format!(
        "A store of {} blobs ({} repositories of {} images: config, three layers and \
         manifest of its own, and a base layer shared in the repository), pushed through \
         kura's API; then half the images made garbage ({} blobs: tags deleted, manifests \
         deleted by digest, images never tagged). `kura gc --grace 0s` runs as its own \
         process beside `kura serve`, on local disk and on s3s-fs. Meanwhile {} clients \
         each pull a live image (the manifest by tag, then its five blobs) every {} ms; \
         latency is per request, over the {} s before the collection (idle) and over the \
         collection. Afterwards every live image pulled byte for byte, every garbage key \
         was gone from storage, and the counts were exactly the garbage made.\n\n",
        shape.blobs(),
        shape.repos,
        shape.images,
        shape.garbage_images() * OWN_BLOBS,
        PULL_CLIENTS,
        PULL_EVERY.as_millis(),
        shape.idle.as_secs(),
    ));
    out.push_str("| measure | local disk | S3 (s3s-fs) |\n|---|---:|---:|\n");
    let mut row = |measure: &str, f: &dyn Fn(&Outcome) -> String| {
        out.push_str(&format!("| {measure} | {} | {} |\n", f(local), f(s3)));
    };
    row("store built through the API (s)", &|o| {
        format!("{:.1}", o.push_secs)
    });
    row("`kura gc` wall time (s)", &|o| {
        format!("{:.2}", o.gc_wall_secs)
    });
    row("collection time `kura gc` reports (s)", &|o| {
        format!("{:.1}", o.summary.secs)
    });
    row("removed: manifests / links / blobs", &|o| {
        format!(
            "{} / {} / {}",
            o.summary.manifests, o.summary.links, o.summary.blobs
        )
    });
    row("deletions per minute (wall time)", &|o| {
        format!("{:.0}", o.per_minute())
    });
    row("S3 requests `kura gc` made, by method", &|o| {
        o.requests.as_ref().map_or("–".to_owned(), |r| {
            // (haproxy also logs what it could not parse as `<BADREQ>`.)
            r.iter()
                .filter(|(m, _)| m.bytes().all(|b| b.is_ascii_uppercase()))
                .map(|(m, n)| format!("{m} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    });
    row("pull requests sampled: idle / during GC", &|o| {
        format!("{} / {}", o.idle.requests, o.during.requests)
    });
    row("pull p50, idle (ms)", &|o| format!("{:.2}", o.idle.p50_ms));
    row("pull p50, during GC (ms)", &|o| {
        format!("{:.2}", o.during.p50_ms)
    });
    row("pull p99, idle (ms)", &|o| format!("{:.2}", o.idle.p99_ms));
    row("pull p99, during GC (ms)", &|o| {
        format!("{:.2}", o.during.p99_ms)
    });
    row("pull p99, during GC ÷ idle", &|o| {
        format!("{:.2}", o.during.p99_ms / o.idle.p99_ms)
    });
    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let ratio = |o: &Outcome| o.during.p99_ms / o.idle.p99_ms;
    out.push_str(&format!(
        "\nTargets: ≥ 10,000 deletions per minute on S3: {} ({:.0}). Pull p99 during GC \
         within 1.5× of idle: local disk {} ({:.2}×), S3 {} ({:.2}×).\n",
        met(s3.per_minute() >= 10_000.0),
        s3.per_minute(),
        met(ratio(local) <= 1.5),
        ratio(local),
        met(ratio(s3) <= 1.5),
        ratio(s3),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_is_parsed() {
        let out = "removed blob sha256:ab (1.2 KiB)\n\
            removed 0 tags, 667 manifests, 4000 links, 5000 blobs (17.3 MiB) in 2.4 s; \
            40 hosted repositories, 10040 blobs in storage; 0 unreferenced within the grace \
            period; 0 spared by pushes\n";
        let s = parse_summary(out).unwrap();
        assert_eq!(
            s,
            GcSummary {
                tags: 0,
                manifests: 667,
                links: 4000,
                blobs: 5000,
                secs: 2.4,
                blobs_in_storage: 10040,
            }
        );
        let dry = "would remove 0 tags, 0 manifests, 0 links, 0 blobs (0 B) in 0.1 s; \
            40 hosted repositories, 5040 blobs in storage; 0 unreferenced within the grace \
            period; 0 spared by pushes\n";
        assert_eq!(parse_summary(dry).unwrap().blobs_in_storage, 5040);
        assert!(parse_summary("kura gc: another process is collecting").is_err());
    }

    #[test]
    fn half_the_blobs_are_garbage() {
        let shape = Shape::new(false);
        assert_eq!(shape.blobs(), 10_040);
        assert_eq!(shape.garbage_images() * OWN_BLOBS, 5_000);
        assert_eq!(shape.expected_removals(), (640, 4_000, 5_000));
    }
}
