//! `cargo xtask soak --gc [--minutes M] [--quick]`: garbage collection
//! under load.
//!
//! Four runs, each on a fresh store and a fresh `kura serve`: on local disk
//! for M/2 minutes with the collections `kura serve` schedules itself
//! (`gc.interval_secs`), then M/2 minutes with `kura gc` started as a
//! separate process every interval beside a `kura serve` that collects
//! nothing itself; then the same two on S3 (s3s-fs) for M/4 minutes each.
//! Both paths matter: within one process a push's marks close the race
//! with a collection, between processes only records in storage do
//! (`gc/sweep`, `gc/in-use/`). The grace
//! period is a few seconds, so content is collectable moments after it
//! stops being referenced.
//!
//! Meanwhile skopeo pushers push images built from a pool of shared layers
//! (and sometimes a layer of their own) into three repositories, push again
//! images whose tags were deleted, move a tag of their own to new images,
//! copy tags from one repository to another (cross-repository mounts), and
//! delete their oldest tags through the API: content keeps becoming garbage
//! and being referenced again. skopeo pullers pull live tags and check
//! every blob against its digest. A tag is pinned while it is pulled, and
//! its owner neither moves nor deletes it then: a pull of a tag deleted
//! under it may rightly fail, and is not what the soak is about.
//!
//! Every failed push, pull, tag delete and collection is counted with its
//! error text, and so is every 5xx in kura's access log: one fails the
//! soak. At the end of each run the clients stop, the soak waits out the
//! grace period and a last collection runs (`kura serve`'s own, or a last
//! `kura gc`), then it checks that the tags are exactly those the clients
//! left, that every blob in storage is referenced by a live manifest or
//! younger than the grace period, that every referenced blob is there,
//! hashes to its digest and is served by its tag's repository, that every
//! live tag pulls, and (kura stopped) that `kura fsck` finds the store
//! clean.
//! On a failure the work directory is kept and its path printed: kura's log
//! with every request, `gc.log` with every `kura gc` run and what it
//! removed, and `failures.txt` with each failure's error and the log lines
//! that name its digests.
//!
//! The release build, grace 5 s, collections every 2 s, three pushers and
//! two pullers; `--quick` (CI): the debug build, grace 3 s, collections
//! every second, two pushers and one puller.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use kura_tests::api::OCI_LAYER;
use kura_tests::image::{
    layer_tar, oci_blobs, oci_ref, Descriptor, OciLayout, XorShift, OCI_CONFIG, OCI_INDEX,
    OCI_MANIFEST, REF_NAME,
};
use kura_tests::peers::Skopeo;
use kura_tests::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use kura_tests::{free_port, sha256};
use serde_json::json;

use crate::chaos::Server;

const REPOS: [&str; 3] = ["soak/a", "soak/b", "soak/c"];
/// Layers the images share.
const POOL: usize = 16;
/// Tags each pusher keeps besides its moving tag; past this it deletes its
/// oldest.
const KEEP: usize = 3;
/// Progress lines this often during the load.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

struct Settings {
    grace: Duration,
    interval_secs: u64,
    pushers: usize,
    pullers: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Local,
    S3,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Collector {
    /// `kura serve` collects on its schedule.
    Serve,
    /// `kura gc` runs beside it, a process of its own each time.
    Separate,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Local => "local disk",
            Backend::S3 => "S3 (s3s-fs)",
        }
    }
}

impl Collector {
    fn name(self) -> &'static str {
        match self {
            Collector::Serve => "in kura serve",
            Collector::Separate => "kura gc beside it",
        }
    }
}

/// `serve_only`: skip the runs with a separate `kura gc` process.
pub fn gc_soak(root: &Path, minutes: f64, quick: bool, serve_only: bool) -> anyhow::Result<()> {
    let settings = if quick {
        Settings {
            grace: Duration::from_secs(3),
            interval_secs: 1,
            pushers: 2,
            pullers: 1,
        }
    } else {
        Settings {
            grace: Duration::from_secs(5),
            interval_secs: 2,
            pushers: 3,
            pullers: 2,
        }
    };
    let built = crate::bench::build_kura(root, quick)?;
    let work = tempfile::tempdir()?;
    let bin = work.path().join("kura");
    std::fs::copy(&built, &bin)?;
    let seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let pool: Arc<Vec<Layer>> = Arc::new(
        (0..POOL)
            .map(|i| Layer::new(i, 24 * 1024 * (1 + i % 6), 7000 + i as u64))
            .collect(),
    );
    let local = Duration::from_secs_f64(minutes * 60.0);
    let runs = [
        (Backend::Local, Collector::Serve, local / 2),
        (Backend::Local, Collector::Separate, local / 2),
        (Backend::S3, Collector::Serve, local / 4),
        (Backend::S3, Collector::Separate, local / 4),
    ];
    eprintln!(
        "gc soak: {minutes} minutes on local disk, {} on S3, grace {} s, collections every {} s, \
         {} pushers, {} pullers, seed {seed}, work dir {}",
        minutes / 2.0,
        settings.grace.as_secs(),
        settings.interval_secs,
        settings.pushers,
        settings.pullers,
        work.path().display()
    );
    let started = Instant::now();
    let mut reports = Vec::new();
    for (i, (backend, collector, load)) in runs.into_iter().enumerate() {
        if serve_only && matches!(collector, Collector::Separate) {
            continue;
        }
        let dir = work.path().join(format!("run{}", i + 1));
        std::fs::create_dir_all(&dir)?;
        let report = run(&RunSpec {
            bin: &bin,
            dir: &dir,
            backend,
            collector,
            load,
            seed: seed.wrapping_add(i as u64 * 7919),
            pool: pool.clone(),
            settings: &settings,
        })
        .with_context(|| {
            format!(
                "gc soak run {} ({}, {}); work dir {}",
                i + 1,
                backend.name(),
                collector.name(),
                work.path().display()
            )
        })?;
        report.print();
        reports.push(report);
    }
    let total = started.elapsed();

    println!();
    println!(
        "| gc soak | {} |",
        reports
            .iter()
            .map(|r| format!("{}, collections {}", r.backend.name(), r.collector.name()))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---:|".repeat(reports.len()));
    let row = |name: &str, f: &dyn Fn(&RunReport) -> String| {
        println!(
            "| {name} | {} |",
            reports.iter().map(f).collect::<Vec<_>>().join(" | ")
        );
    };
    row("minutes of load", &|r| {
        format!("{:.1}", r.load.as_secs_f64() / 60.0)
    });
    row(
        "skopeo pushes (new, again after delete, tag moves, copies)",
        &|r| {
            format!(
                "{} ({}, {}, {}, {})",
                r.pushes(),
                r.stats.new.load(Ordering::SeqCst),
                r.stats.revived.load(Ordering::SeqCst),
                r.stats.moved.load(Ordering::SeqCst),
                r.stats.copied.load(Ordering::SeqCst)
            )
        },
    );
    row("slowest push", &|r| {
        format!(
            "{:.1} s",
            r.stats.push_ms_max.load(Ordering::SeqCst) as f64 / 1000.0
        )
    });
    row("tags deleted", &|r| {
        r.stats.deleted.load(Ordering::SeqCst).to_string()
    });
    row("skopeo pulls verified", &|r| {
        r.stats.pulls.load(Ordering::SeqCst).to_string()
    });
    row("collections (skipped: another held the lease)", &|r| {
        format!(
            "{} ({})",
            r.collections,
            r.stats.gc_skipped.load(Ordering::SeqCst)
        )
    });
    row("blobs deleted by collections", &|r| {
        r.blobs_deleted.to_string()
    });
    row("blobs the last collections deleted", &|r| {
        r.final_blobs.to_string()
    });
    row("live tags at the end", &|r| r.live_tags.to_string());
    row("blobs in storage at the end", &|r| {
        r.stored_at_end.to_string()
    });
    row("unreferenced blobs left past the grace period", &|r| {
        r.garbage_left.to_string()
    });
    row("kura fsck", &|r| r.fsck.clone());
    row("**failures**", &|r| format!("**{}**", r.failures.len()));
    println!("total wall time: {:.1} s", total.as_secs_f64());

    let failed: usize = reports.iter().map(|r| r.failures.len()).sum();
    if failed > 0 {
        let kept = work.keep();
        let mut text = String::new();
        for (i, r) in reports.iter().enumerate() {
            for f in &r.failures {
                text.push_str(&format!(
                    "run {} ({}, {}): {}\n",
                    i + 1,
                    r.backend.name(),
                    r.collector.name(),
                    f.headline()
                ));
            }
        }
        bail!(
            "gc soak: {failed} failures (work dir kept: {}; each run's failures.txt has the \
             log lines naming their digests):\n{text}",
            kept.display()
        );
    }
    Ok(())
}

struct RunSpec<'a> {
    bin: &'a Path,
    dir: &'a Path,
    backend: Backend,
    collector: Collector,
    load: Duration,
    seed: u64,
    pool: Arc<Vec<Layer>>,
    settings: &'a Settings,
}

/// What a run did, and what went wrong.
struct RunReport {
    backend: Backend,
    collector: Collector,
    load: Duration,
    /// The whole run: start, load, settling, checks.
    wall: Duration,
    stats: Arc<Stats>,
    collections: u64,
    blobs_deleted: u64,
    final_blobs: u64,
    live_tags: usize,
    stored_at_end: usize,
    garbage_left: usize,
    fsck: String,
    failures: Vec<Failure>,
}

impl RunReport {
    fn pushes(&self) -> u64 {
        let s = &self.stats;
        [&s.new, &s.revived, &s.moved, &s.copied]
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum()
    }

    fn print(&self) {
        eprintln!(
            "gc soak: {}, collections {}: {:.1} min of load ({:.0} s in all), {} pushes, {} tag deletes, {} pulls, {} collections \
             deleting {} blobs, {} live tags and {} blobs at the end, fsck {}, {} failures",
            self.backend.name(),
            self.collector.name(),
            self.load.as_secs_f64() / 60.0,
            self.wall.as_secs_f64(),
            self.pushes(),
            self.stats.deleted.load(Ordering::SeqCst),
            self.stats.pulls.load(Ordering::SeqCst),
            self.collections,
            self.blobs_deleted,
            self.live_tags,
            self.stored_at_end,
            self.fsck,
            self.failures.len()
        );
        for f in &self.failures {
            eprintln!("  {}", f.headline());
        }
    }
}

#[derive(Default)]
struct Stats {
    new: AtomicU64,
    revived: AtomicU64,
    moved: AtomicU64,
    copied: AtomicU64,
    deleted: AtomicU64,
    pulls: AtomicU64,
    push_ms_max: AtomicU64,
    /// `kura gc` runs that collected (the separate collector's).
    gc_runs: AtomicU64,
    gc_skipped: AtomicU64,
    gc_blobs: AtomicU64,
}

struct Failure {
    /// Seconds into the run, and the wall clock (UTC, as kura logs it).
    at_secs: f64,
    utc: String,
    op: String,
    class: &'static str,
    text: String,
}

impl Failure {
    fn headline(&self) -> String {
        // skopeo's last line says what failed; the rest is its invocation.
        let last = self
            .text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        format!(
            "{:.1}s ({}) {}: {}: {}",
            self.at_secs,
            self.utc,
            self.op,
            self.class,
            last.trim()
        )
    }
}

/// An image, as the layers and config it is built from: the same spec
/// always gives the same manifest digest.
#[derive(Clone, Debug)]
struct Spec {
    pool: Vec<usize>,
    /// Seed of a layer of its own.
    unique: Option<u64>,
    config: u64,
}

/// A tag the soak expects kura to hold.
#[derive(Clone)]
struct Live {
    repo: String,
    tag: String,
    /// The pusher that may move or delete it (`usize::MAX`: nobody).
    owner: usize,
    manifest: String,
    /// Config and layers.
    blobs: Vec<String>,
    spec: Spec,
    /// Pulls under way.
    pins: u32,
}

impl Live {
    fn digests(&self) -> BTreeSet<String> {
        std::iter::once(&self.manifest)
            .chain(&self.blobs)
            .cloned()
            .collect()
    }
}

/// What the clients of one run share.
struct Ctx {
    bin: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    host: String,
    base: String,
    seed: u64,
    pool: Arc<Vec<Layer>>,
    interval: Duration,
    started: Instant,
    stop: AtomicBool,
    live: Mutex<Vec<Live>>,
    /// Specs whose tags the seeding deleted, for pushers to push again.
    seed_retired: Vec<Spec>,
    stats: Arc<Stats>,
    failures: Mutex<Vec<Failure>>,
    gc_log: Mutex<std::fs::File>,
}

impl Ctx {
    fn fail(&self, op: &str, err: &anyhow::Error) {
        let text = format!("{err:#}");
        let f = Failure {
            at_secs: self.started.elapsed().as_secs_f64(),
            utc: utc_now(),
            op: op.to_owned(),
            class: classify(&text),
            text,
        };
        eprintln!("gc soak: FAILURE {}", f.headline());
        self.failures.lock().unwrap().push(f);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The pusher's own tags, besides its moving one.
    fn owned(&self, id: usize, moving: &str) -> usize {
        self.live
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.owner == id && l.tag != moving)
            .count()
    }

    /// Take out (to delete it) the pusher's oldest tag nobody is pulling.
    fn take_oldest(&self, id: usize, moving: &str) -> Option<Live> {
        let mut live = self.live.lock().unwrap();
        let i = live
            .iter()
            .position(|l| l.owner == id && l.tag != moving && l.pins == 0)?;
        Some(live.remove(i))
    }

    /// Take out (to move it) a tag, unless it is being pulled: `Err`.
    fn take_tag(&self, repo: &str, tag: &str) -> Result<Option<Live>, ()> {
        let mut live = self.live.lock().unwrap();
        match live.iter().position(|l| l.repo == repo && l.tag == tag) {
            None => Ok(None),
            Some(i) if live[i].pins > 0 => Err(()),
            Some(i) => Ok(Some(live.remove(i))),
        }
    }

    fn insert(&self, l: Live) {
        self.live.lock().unwrap().push(l);
    }

    fn pick_own(&self, id: usize, moving: &str, rng: &mut XorShift) -> Option<Live> {
        let live = self.live.lock().unwrap();
        let own: Vec<&Live> = live
            .iter()
            .filter(|l| l.owner == id && l.tag != moving)
            .collect();
        (!own.is_empty()).then(|| own[below(rng, own.len())].clone())
    }

    fn pin_random(&self, rng: &mut XorShift) -> Option<Live> {
        let mut live = self.live.lock().unwrap();
        if live.is_empty() {
            return None;
        }
        let i = below(rng, live.len());
        live[i].pins += 1;
        Some(live[i].clone())
    }

    fn unpin(&self, repo: &str, tag: &str) {
        let mut live = self.live.lock().unwrap();
        if let Some(l) = live.iter_mut().find(|l| l.repo == repo && l.tag == tag) {
            l.pins -= 1;
        }
    }

    fn log_gc(&self, text: &str) {
        let mut f = self.gc_log.lock().unwrap();
        let _ = f.write_all(text.as_bytes());
    }
}

fn run(spec: &RunSpec) -> anyhow::Result<RunReport> {
    let s = spec.settings;
    let dir = spec.dir;
    let run_started = Instant::now();
    let s3 = match spec.backend {
        Backend::Local => None,
        Backend::S3 => Some(S3Server::start("gc-soak")?),
    };
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let port = free_port();
    let config = dir.join("kura.yaml");
    let mut yaml = format!(
        "listen: 127.0.0.1:{port}\ndata_dir: {}\nregistry:\n  delete_enabled: true\n\
         gc:\n  interval_secs: {}\n  grace_secs: {}\n  delete_untagged: true\n",
        data.display(),
        match spec.collector {
            Collector::Serve => s.interval_secs,
            Collector::Separate => 0,
        },
        s.grace.as_secs(),
    );
    if let Some(s3) = &s3 {
        yaml.push_str(&format!(
            "storage:\n  s3:\n    bucket: {}\n    endpoint: {}\n    region: us-east-1\n    \
             access_key_id: {ACCESS_KEY}\n    secret_access_key: {SECRET_KEY}\n    \
             path_style: true\n    allow_http: true\n",
            s3.bucket, s3.endpoint
        ));
    }
    std::fs::write(&config, yaml)?;
    let blobs_dir = match &s3 {
        None => data.join("blobs/sha256"),
        Some(s3) => s3.bucket_dir().join("blobs/sha256"),
    };
    let kura = Server::start(spec.bin, &config, port, dir)?;
    let log = dir.join("kura.log");

    let stats = Arc::new(Stats::default());
    let mut ctx = Ctx {
        bin: spec.bin.to_owned(),
        config: config.clone(),
        dir: dir.to_owned(),
        host: format!("127.0.0.1:{port}"),
        base: format!("http://127.0.0.1:{port}"),
        seed: spec.seed,
        pool: spec.pool.clone(),
        interval: Duration::from_secs(s.interval_secs),
        started: Instant::now(),
        stop: AtomicBool::new(false),
        live: Mutex::new(Vec::new()),
        seed_retired: Vec::new(),
        stats: stats.clone(),
        failures: Mutex::new(Vec::new()),
        gc_log: Mutex::new(std::fs::File::create(dir.join("gc.log"))?),
    };
    seed_images(&mut ctx)?;
    let ctx = Arc::new(ctx);

    let mut threads = Vec::new();
    for id in 0..s.pushers {
        let c = ctx.clone();
        threads.push(std::thread::spawn(move || pusher(&c, id)));
    }
    for id in 0..s.pullers {
        let c = ctx.clone();
        threads.push(std::thread::spawn(move || puller(&c, id)));
    }
    if spec.collector == Collector::Separate {
        let c = ctx.clone();
        threads.push(std::thread::spawn(move || collector(&c)));
    }
    let client = kura_tests::http_client();
    let load_started = Instant::now();
    let mut next_progress = PROGRESS_EVERY;
    while load_started.elapsed() < spec.load {
        let left = spec.load.saturating_sub(load_started.elapsed());
        std::thread::sleep(left.min(Duration::from_millis(500)));
        if load_started.elapsed() >= next_progress {
            next_progress += PROGRESS_EVERY;
            let (runs, blobs) = serve_gc_counts(&client, &ctx.base).unwrap_or((0, 0));
            eprintln!(
                "gc soak: {}, {}: {:.0}s: {} pushes, {} deletes, {} pulls, {} collections, {} blobs deleted, {} failures",
                spec.backend.name(),
                spec.collector.name(),
                load_started.elapsed().as_secs_f64(),
                [&stats.new, &stats.revived, &stats.moved, &stats.copied]
                    .iter()
                    .map(|c| c.load(Ordering::SeqCst))
                    .sum::<u64>(),
                stats.deleted.load(Ordering::SeqCst),
                stats.pulls.load(Ordering::SeqCst),
                runs + stats.gc_runs.load(Ordering::SeqCst),
                blobs + stats.gc_blobs.load(Ordering::SeqCst),
                ctx.failures.lock().unwrap().len()
            );
        }
    }
    ctx.stop.store(true, Ordering::SeqCst);
    for t in threads {
        match t.join() {
            Ok(r) => r?,
            Err(_) => bail!("a client thread panicked"),
        }
    }
    let load = load_started.elapsed();

    let end = settle(&ctx, s, spec.collector, &blobs_dir)?;
    let (serve_runs, serve_blobs) = serve_gc_counts(&client, &ctx.base)?;
    drop(kura);
    scan_log(&ctx, &log);
    let fsck = fsck(&ctx);

    let failures = std::mem::take(&mut *ctx.failures.lock().unwrap());
    if !failures.is_empty() {
        write_diagnosis(dir, &failures, &log)?;
    }
    Ok(RunReport {
        backend: spec.backend,
        collector: spec.collector,
        load,
        wall: run_started.elapsed(),
        collections: serve_runs + stats.gc_runs.load(Ordering::SeqCst),
        blobs_deleted: serve_blobs + stats.gc_blobs.load(Ordering::SeqCst),
        stats,
        final_blobs: end.final_blobs,
        live_tags: end.live_tags,
        stored_at_end: end.stored,
        garbage_left: end.garbage_left,
        fsck,
        failures,
    })
}

/// Before the load: a `base` image in each repository (never deleted),
/// and two images per repository whose tags are deleted at once, garbage
/// for the pushers to reference again.
fn seed_images(ctx: &mut Ctx) -> anyhow::Result<()> {
    let layout = OciLayout::create(&ctx.dir.join("seed"))?;
    let client = kura_tests::http_client();
    // Over the API rather than with skopeo: quicker, and nothing here races.
    let push = |built: &Built, repo: &str, tag: &str| -> anyhow::Result<()> {
        for d in &built.blobs {
            let bytes = std::fs::read(layout.dir.join("blobs/sha256").join(&d[7..]))?;
            client
                .post(format!("{}/v2/{repo}/blobs/uploads/?digest={d}", ctx.base))
                .body(bytes)
                .send()?
                .error_for_status()?;
        }
        let manifest = std::fs::read(layout.dir.join("blobs/sha256").join(&built.manifest[7..]))?;
        client
            .put(format!("{}/v2/{repo}/manifests/{tag}", ctx.base))
            .header("content-type", OCI_MANIFEST)
            .body(manifest)
            .send()?
            .error_for_status()?;
        Ok(())
    };
    for (r, repo) in REPOS.iter().enumerate() {
        let base = Spec {
            pool: vec![0, 1 + r],
            unique: None,
            config: 1000 + r as u64,
        };
        let built = build(&layout, &ctx.pool, &base)?;
        push(&built, repo, "base")?;
        ctx.insert(Live {
            repo: repo.to_string(),
            tag: "base".into(),
            owner: usize::MAX,
            manifest: built.manifest,
            blobs: built.blobs,
            spec: base,
            pins: 0,
        });
        for k in 0..2 {
            let spec = Spec {
                pool: vec![4 + r * 2 + k, 10 + r],
                unique: Some(2000 + (r * 2 + k) as u64),
                config: 2000 + (r * 2 + k) as u64,
            };
            let built = build(&layout, &ctx.pool, &spec)?;
            let tag = format!("gone{k}");
            push(&built, repo, &tag)?;
            delete_tag(&client, &ctx.base, repo, &tag)?;
            ctx.seed_retired.push(spec);
        }
    }
    Ok(())
}

fn pusher(ctx: &Ctx, id: usize) -> anyhow::Result<()> {
    let sk = Skopeo::new()?;
    let layout = OciLayout::create(&ctx.dir.join(format!("pusher{id}")))?;
    let client = kura_tests::http_client();
    let mut rng = XorShift::new(ctx.seed ^ ((id as u64 + 1) << 40));
    let moving_repo = REPOS[id % REPOS.len()];
    let moving = format!("w{id}-latest");
    let mut retired: Vec<Spec> = ctx.seed_retired.clone();
    let mut n = 0u64;
    while !ctx.stopped() {
        n += 1;
        if ctx.owned(id, &moving) > KEEP {
            if let Some(old) = ctx.take_oldest(id, &moving) {
                match delete_tag(&client, &ctx.base, &old.repo, &old.tag) {
                    Ok(()) => {
                        ctx.stats.deleted.fetch_add(1, Ordering::SeqCst);
                        retire(&mut retired, old.spec);
                    }
                    Err(e) => {
                        ctx.fail(&format!("DELETE tag {}:{}", old.repo, old.tag), &e);
                        ctx.insert(old);
                    }
                }
                continue;
            }
        }
        let tag = format!("w{id}-{n}");
        let roll = below(&mut rng, 100);
        if roll < 15 {
            // Move the moving tag: its old image becomes untagged garbage.
            let Ok(old) = ctx.take_tag(moving_repo, &moving) else {
                continue;
            };
            let spec = new_spec(&mut rng, ctx.seed, id, n);
            let r = timed(ctx, || {
                let built = build(&layout, &ctx.pool, &spec)?;
                push(&sk, &layout, &ctx.host, moving_repo, &moving)?;
                Ok(built)
            });
            match r {
                Ok(built) => {
                    ctx.stats.moved.fetch_add(1, Ordering::SeqCst);
                    ctx.insert(live(moving_repo, &moving, id, built, spec));
                    if let Some(old) = old {
                        retire(&mut retired, old.spec);
                    }
                }
                Err(e) => {
                    ctx.fail(&format!("push (tag move) {moving_repo}:{moving}"), &e);
                    if let Some(old) = old {
                        ctx.insert(old);
                    }
                }
            }
        } else if roll < 30 {
            // Copy one of its tags into another repository: skopeo mounts
            // what it knows is there.
            let Some(src) = ctx.pick_own(id, &moving, &mut rng) else {
                continue;
            };
            let others: Vec<&str> = REPOS.iter().copied().filter(|r| *r != src.repo).collect();
            let dest = others[below(&mut rng, others.len())];
            let r = timed(ctx, || {
                sk.copy(
                    &[],
                    &format!("docker://{}/{}:{}", ctx.host, src.repo, src.tag),
                    &format!("docker://{}/{dest}:{tag}", ctx.host),
                )
            });
            match r {
                Ok(()) => {
                    ctx.stats.copied.fetch_add(1, Ordering::SeqCst);
                    ctx.insert(Live {
                        repo: dest.into(),
                        tag,
                        owner: id,
                        pins: 0,
                        ..src
                    });
                }
                Err(e) => ctx.fail(
                    &format!("copy {}:{} to {dest}:{tag}", src.repo, src.tag),
                    &e,
                ),
            }
        } else {
            // A new image, or one whose tag was deleted, pushed again.
            let again = roll < 50 && !retired.is_empty();
            let spec = if again {
                let i = below(&mut rng, retired.len());
                retired.swap_remove(i)
            } else {
                new_spec(&mut rng, ctx.seed, id, n)
            };
            let repo = REPOS[below(&mut rng, REPOS.len())];
            let r = timed(ctx, || {
                let built = build(&layout, &ctx.pool, &spec)?;
                push(&sk, &layout, &ctx.host, repo, &tag)?;
                Ok(built)
            });
            match r {
                Ok(built) => {
                    let c = if again {
                        &ctx.stats.revived
                    } else {
                        &ctx.stats.new
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    ctx.insert(live(repo, &tag, id, built, spec));
                }
                Err(e) => {
                    let what = if again { "push (again)" } else { "push" };
                    ctx.fail(&format!("{what} {repo}:{tag}"), &e);
                }
            }
        }
    }
    Ok(())
}

fn puller(ctx: &Ctx, id: usize) -> anyhow::Result<()> {
    let sk = Skopeo::new()?;
    let out = ctx.dir.join(format!("puller{id}"));
    let mut rng = XorShift::new(ctx.seed ^ ((id as u64 + 1) << 50));
    while !ctx.stopped() {
        let Some(t) = ctx.pin_random(&mut rng) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let r = pull_and_verify(&sk, &ctx.host, &t, &out);
        ctx.unpin(&t.repo, &t.tag);
        match r {
            Ok(()) => {
                ctx.stats.pulls.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => ctx.fail(&format!("pull {}:{}", t.repo, t.tag), &e),
        }
    }
    Ok(())
}

/// `kura gc` every interval, each a process of its own.
fn collector(ctx: &Ctx) -> anyhow::Result<()> {
    while !ctx.stopped() {
        let until = Instant::now() + ctx.interval;
        while Instant::now() < until && !ctx.stopped() {
            std::thread::sleep(Duration::from_millis(50));
        }
        if ctx.stopped() {
            break;
        }
        match kura_gc(ctx)? {
            GcRun::Skipped => {
                ctx.stats.gc_skipped.fetch_add(1, Ordering::SeqCst);
            }
            GcRun::Done { blobs } => {
                ctx.stats.gc_runs.fetch_add(1, Ordering::SeqCst);
                ctx.stats.gc_blobs.fetch_add(blobs, Ordering::SeqCst);
            }
            GcRun::Failed(text) => ctx.fail("kura gc", &anyhow::anyhow!(text)),
        }
    }
    Ok(())
}

enum GcRun {
    Skipped,
    Done { blobs: u64 },
    Failed(String),
}

/// One `kura gc --verbose`, its output (every removal listed) appended to
/// gc.log between its start and end times.
fn kura_gc(ctx: &Ctx) -> anyhow::Result<GcRun> {
    let began = utc_now();
    let out = Command::new(&ctx.bin)
        .arg("gc")
        .arg("--config")
        .arg(&ctx.config)
        .arg("--verbose")
        .env("RUST_LOG", "warn")
        .output()
        .context("running kura gc")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ctx.log_gc(&format!(
        "== kura gc {began} .. {} ({})\n{stdout}{stderr}",
        utc_now(),
        out.status
    ));
    if out.status.success() && stderr.contains("another process is collecting") {
        return Ok(GcRun::Skipped);
    }
    let blobs = stdout.lines().find_map(|l| {
        l.strip_prefix("removed ")?
            .split(", ")
            .find_map(|part| part.split_once(" blobs ("))?
            .0
            .parse()
            .ok()
    });
    Ok(match blobs {
        Some(blobs) if out.status.success() => GcRun::Done { blobs },
        _ => GcRun::Failed(format!(
            "kura gc exited with {}:\n{stdout}{stderr}",
            out.status
        )),
    })
}

/// What the end of a run found.
struct End {
    final_blobs: u64,
    live_tags: usize,
    stored: usize,
    garbage_left: usize,
}

/// The end of a run: past the grace period, a last collection by the
/// run's collector, then the store checked against the tags the clients
/// left.
fn settle(ctx: &Ctx, s: &Settings, collector: Collector, blobs_dir: &Path) -> anyhow::Result<End> {
    std::thread::sleep(s.grace + Duration::from_millis(500));
    let client = kura_tests::http_client();
    // When the last collection began, at the latest.
    let final_started = SystemTime::now();
    let final_blobs = match collector {
        Collector::Separate => match kura_gc(ctx)? {
            GcRun::Done { blobs } => blobs,
            GcRun::Skipped => bail!("the last kura gc found the lease held; nothing else collects"),
            GcRun::Failed(text) => {
                ctx.fail("final kura gc", &anyhow::anyhow!(text));
                0
            }
        },
        Collector::Serve => {
            // kura serve collects without pause when a pass takes longer
            // than the interval (on S3 it may): a `kura gc` would mostly
            // find the lease held. Two more of its own passes end instead,
            // so one began after `final_started`.
            let (runs, blobs) = serve_gc_counts(&client, &ctx.base)?;
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let (now_runs, now_blobs) = serve_gc_counts(&client, &ctx.base)?;
                if now_runs >= runs + 2 {
                    break now_blobs - blobs;
                }
                if Instant::now() > deadline {
                    bail!("kura serve ran no collection in 120 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let live = ctx.live.lock().unwrap().clone();

    // The tags are those the clients left, each on its manifest.
    for repo in REPOS {
        let r = (|| -> anyhow::Result<()> {
            let v: serde_json::Value = serde_json::from_slice(
                &client
                    .get(format!("{}/v2/{repo}/tags/list?n=100000", ctx.base))
                    .send()?
                    .error_for_status()?
                    .bytes()?,
            )?;
            let got: BTreeSet<String> = v["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            let want: BTreeSet<String> = live
                .iter()
                .filter(|l| l.repo == repo)
                .map(|l| l.tag.clone())
                .collect();
            if got != want {
                bail!(
                    "tags differ: kura has {:?} the clients deleted or never pushed, and lacks {:?}",
                    got.difference(&want).collect::<Vec<_>>(),
                    want.difference(&got).collect::<Vec<_>>()
                );
            }
            Ok(())
        })();
        if let Err(e) = r {
            ctx.fail(&format!("final tags of {repo}"), &e);
        }
    }
    for l in &live {
        let r = (|| -> anyhow::Result<()> {
            let resp = client
                .get(format!("{}/v2/{}/manifests/{}", ctx.base, l.repo, l.tag))
                .header("accept", OCI_MANIFEST)
                .send()?
                .error_for_status()?;
            let d = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = resp.bytes()?;
            if d != l.manifest || sha256(&body) != l.manifest {
                bail!("serves {d} (body {}), not {}", sha256(&body), l.manifest);
            }
            Ok(())
        })();
        if let Err(e) = r {
            ctx.fail(&format!("final manifest of {}:{}", l.repo, l.tag), &e);
        }
    }

    // Every blob in storage is referenced or young; every referenced one
    // is there and verifies.
    let referenced: BTreeSet<String> = live.iter().flat_map(Live::digests).collect();
    let stored = stored_blobs(blobs_dir);
    let mut garbage_left = 0;
    for (d, (_, mtime)) in &stored {
        if referenced.contains(d) {
            continue;
        }
        let age = final_started
            .duration_since(*mtime)
            .unwrap_or(Duration::ZERO);
        if age >= s.grace {
            garbage_left += 1;
            ctx.fail(
                "final store",
                &anyhow::anyhow!(
                    "blob {d} is referenced by no live tag, written {:.1} s before the last collection began, \
                     and is still stored",
                    age.as_secs_f64()
                ),
            );
        }
    }
    for d in &referenced {
        match stored.get(d) {
            None => ctx.fail(
                "final store",
                &anyhow::anyhow!("blob {d}, referenced by a live tag, is missing"),
            ),
            Some((path, _)) => match std::fs::read(path) {
                Ok(bytes) if sha256(&bytes) == *d => {}
                Ok(bytes) => ctx.fail(
                    "final store",
                    &anyhow::anyhow!("blob {d} holds bytes hashing to {}", sha256(&bytes)),
                ),
                Err(e) => ctx.fail("final store", &anyhow::anyhow!("blob {d} unreadable: {e}")),
            },
        }
    }

    // Every blob of a live tag is served by the tag's repository: a
    // manifest whose layer lost its repository's link cannot be pulled,
    // whether or not the bytes are still stored for another repository.
    for l in &live {
        for d in &l.blobs {
            let r = client
                .head(format!("{}/v2/{}/blobs/{d}", ctx.base, l.repo))
                .send();
            match r {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => ctx.fail(
                    &format!("final blob of {}:{}", l.repo, l.tag),
                    &anyhow::anyhow!(
                        "HEAD /v2/{}/blobs/{d} answered {}{}",
                        l.repo,
                        r.status(),
                        if stored.contains_key(d) {
                            " though its bytes are stored: the repository's link is gone"
                        } else {
                            ""
                        }
                    ),
                ),
                Err(e) => ctx.fail(
                    &format!("final blob of {}:{}", l.repo, l.tag),
                    &anyhow::Error::from(e),
                ),
            }
        }
    }

    // Every live tag pulls (two at a time).
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut pullers = Vec::new();
        for i in 0..2 {
            let live = &live;
            pullers.push(scope.spawn(move || -> anyhow::Result<()> {
                let sk = Skopeo::new()?;
                let out = ctx.dir.join(format!("final-pull{i}"));
                for l in live.iter().skip(i).step_by(2) {
                    match pull_and_verify(&sk, &ctx.host, l, &out) {
                        Ok(()) => {
                            ctx.stats.pulls.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => ctx.fail(&format!("final pull {}:{}", l.repo, l.tag), &e),
                    }
                }
                Ok(())
            }));
        }
        for p in pullers {
            p.join()
                .map_err(|_| anyhow::anyhow!("a final puller panicked"))??;
        }
        Ok(())
    })?;
    Ok(End {
        final_blobs,
        live_tags: live.len(),
        stored: stored.len(),
        garbage_left,
    })
}

/// `kura fsck` on the stopped kura's store: its verdict line, and a
/// failure unless it exits clean.
fn fsck(ctx: &Ctx) -> String {
    let out = match Command::new(&ctx.bin)
        .arg("fsck")
        .arg("--config")
        .arg(&ctx.config)
        .env("RUST_LOG", "warn")
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            ctx.fail("kura fsck", &anyhow::anyhow!("running kura fsck: {e}"));
            return "not run".into();
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let count = |prefix: &str| stdout.lines().filter(|l| l.starts_with(prefix)).count();
    let verdict = format!(
        "{} ({} leftovers, {} notes listed)",
        if out.status.success() {
            "clean"
        } else {
            "NOT CLEAN"
        },
        count("leftover"),
        count("note")
    );
    if !out.status.success() {
        ctx.fail(
            "kura fsck",
            &anyhow::anyhow!(
                "exit {}:\n{}{stdout}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        );
    }
    verdict
}

/// kura's own account: every 5xx it answered, every collection that
/// failed, every panic.
fn scan_log(ctx: &Ctx, log: &Path) {
    let text = strip_ansi(&std::fs::read_to_string(log).unwrap_or_default());
    for line in text.lines() {
        let bad = (line.contains("kura::access") && line.contains("status=5"))
            || line.contains("garbage collection failed")
            || line.contains("panicked");
        if bad {
            ctx.fail("kura log", &anyhow::anyhow!("{line}"));
        }
    }
}

/// failures.txt: each failure's whole error, then every line of kura's
/// log and of gc.log that names one of its digests.
fn write_diagnosis(dir: &Path, failures: &[Failure], log: &Path) -> anyhow::Result<()> {
    let kura_log = strip_ansi(&std::fs::read_to_string(log).unwrap_or_default());
    let gc_log = std::fs::read_to_string(dir.join("gc.log")).unwrap_or_default();
    let mut out = String::new();
    for f in failures {
        out.push_str(&format!("==== {}\n{}\n", f.headline(), f.text));
        for hex in digests_in(&f.text) {
            out.push_str(&format!("---- kura.log lines naming {hex}\n"));
            for l in kura_log.lines().filter(|l| l.contains(&hex)) {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str(&format!("---- gc.log lines naming {hex}\n"));
            let mut run_header = "";
            for l in gc_log.lines() {
                if l.starts_with("== kura gc") {
                    run_header = l;
                } else if l.contains(&hex) {
                    out.push_str(&format!("{run_header}: {l}\n"));
                }
            }
        }
    }
    std::fs::write(dir.join("failures.txt"), out)?;
    Ok(())
}

/// The hex parts of the sha256 digests `text` names.
fn digests_in(text: &str) -> BTreeSet<String> {
    text.match_indices("sha256:")
        .filter_map(|(i, m)| {
            let hex = text.get(i + m.len()..i + m.len() + 64)?;
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| hex.to_owned())
        })
        .collect()
}

/// `(kura_gc_runs_total, kura_gc_deleted_total{kind="blob"})` of the
/// running kura: its own scheduled collections.
fn serve_gc_counts(client: &reqwest::blocking::Client, base: &str) -> anyhow::Result<(u64, u64)> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()?
        .error_for_status()?
        .text()?;
    let value = |prefix: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        value("kura_gc_runs_total "),
        value("kura_gc_deleted_total{kind=\"blob\"}"),
    ))
}

/// Digest → (file, write time) of every blob under `<store>/blobs/sha256`
/// (object_store's staging files, named with `#`, are not blobs).
fn stored_blobs(dir: &Path) -> BTreeMap<String, (PathBuf, SystemTime)> {
    kura_tests::blobstore::files_under(dir)
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let mtime = std::fs::metadata(&p).ok()?.modified().ok()?;
            Some((format!("sha256:{name}"), (p, mtime)))
        })
        .collect()
}

/// A layer as images carry them: a gzip'd tar. (skopeo compresses an
/// uncompressed layer it pushes, and then the image it pushed is not the
/// one the soak expects back.)
struct Layer {
    gz: Vec<u8>,
    /// The tar's digest.
    diff_id: String,
}

impl Layer {
    fn new(n: usize, size: usize, seed: u64) -> Layer {
        let tar = layer_tar(n, size, seed);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("writing to memory");
        Layer {
            gz: gz.finish().expect("writing to memory"),
            diff_id: sha256(&tar),
        }
    }
}

struct Built {
    manifest: String,
    /// Config and layers.
    blobs: Vec<String>,
}

/// Write `spec`'s image into `layout`, tagged `x` (the only tag there).
fn build(layout: &OciLayout, pool: &[Layer], spec: &Spec) -> anyhow::Result<Built> {
    let own = spec
        .unique
        .map(|u| Layer::new(POOL, 16 * 1024 * (1 + (u % 4) as usize), u));
    let parts: Vec<&Layer> = spec.pool.iter().map(|&i| &pool[i]).chain(&own).collect();
    let mut layers = Vec::new();
    for l in &parts {
        layers.push(layout.write_blob(OCI_LAYER, &l.gz)?);
    }
    let diff_ids: Vec<&str> = parts.iter().map(|l| l.diff_id.as_str()).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": { "kura.soak": spec.config.to_string() } },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = layout.write_blob(OCI_CONFIG, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
    });
    let manifest = layout.write_blob(OCI_MANIFEST, &serde_json::to_vec(&manifest)?)?;
    let mut entry = manifest.to_json();
    entry["annotations"] = json!({ REF_NAME: "x" });
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry] });
    std::fs::write(layout.dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(Built {
        manifest: manifest.digest,
        blobs: std::iter::once(config.digest)
            .chain(layers.into_iter().map(|l| l.digest))
            .collect(),
    })
}

/// One to three layers of the pool and, every other time, one of its own.
fn new_spec(rng: &mut XorShift, seed: u64, id: usize, n: u64) -> Spec {
    let mut pool = Vec::new();
    for _ in 0..1 + below(rng, 3) {
        let i = below(rng, POOL);
        if !pool.contains(&i) {
            pool.push(i);
        }
    }
    let own = seed ^ ((id as u64) << 48) ^ n.wrapping_mul(0x9E37_79B9);
    Spec {
        pool,
        unique: (below(rng, 2) == 0).then_some(own),
        config: own,
    }
}

fn live(repo: &str, tag: &str, owner: usize, built: Built, spec: Spec) -> Live {
    Live {
        repo: repo.into(),
        tag: tag.into(),
        owner,
        manifest: built.manifest,
        blobs: built.blobs,
        spec,
        pins: 0,
    }
}

/// Keep a spec whose tag went, to push it again later.
fn retire(retired: &mut Vec<Spec>, spec: Spec) {
    if retired.len() >= 32 {
        retired.remove(0);
    }
    retired.push(spec);
}

/// Run a push, keeping the slowest's duration.
fn timed<T>(ctx: &Ctx, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let t = Instant::now();
    let r = f();
    ctx.stats
        .push_ms_max
        .fetch_max(t.elapsed().as_millis() as u64, Ordering::SeqCst);
    r
}

/// skopeo: the layout's `x` to `host/repo:tag`.
fn push(sk: &Skopeo, layout: &OciLayout, host: &str, repo: &str, tag: &str) -> anyhow::Result<()> {
    sk.copy(
        &[],
        &format!("oci:{}:x", layout.dir.display()),
        &format!("docker://{host}/{repo}:{tag}"),
    )
}

/// Pull `t` with skopeo into a fresh OCI layout: the manifest is the one
/// expected, every blob hashes to its name, and they are exactly its blobs.
fn pull_and_verify(sk: &Skopeo, host: &str, t: &Live, out: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(out);
    sk.copy(
        &[],
        &format!("docker://{host}/{}:{}", t.repo, t.tag),
        &format!("oci:{}:x", out.display()),
    )
    // The digest, for failures.txt to find the collections that removed it.
    .with_context(|| format!("the tag was pushed as manifest {}", t.manifest))?;
    let got = oci_ref(out, "x")?.digest;
    if got != t.manifest {
        bail!("pulled manifest {got}, expected {}", t.manifest);
    }
    let blobs = oci_blobs(out)?;
    let want = t.digests();
    if blobs != want {
        bail!(
            "pulled blobs differ: missing {:?}, unexpected {:?}",
            want.difference(&blobs).collect::<Vec<_>>(),
            blobs.difference(&want).collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn delete_tag(
    client: &reqwest::blocking::Client,
    base: &str,
    repo: &str,
    tag: &str,
) -> anyhow::Result<()> {
    let r = client
        .delete(format!("{base}/v2/{repo}/manifests/{tag}"))
        .send()?;
    let status = r.status();
    if status.as_u16() != 202 {
        bail!("DELETE answered {status}: {}", r.text().unwrap_or_default());
    }
    Ok(())
}

/// The registry error code an error's text names, as the soak counts them.
fn classify(text: &str) -> &'static str {
    let t = text.to_lowercase();
    if t.contains("manifest blob unknown") || t.contains("manifest_blob_unknown") {
        "MANIFEST_BLOB_UNKNOWN"
    } else if t.contains("blob unknown") || t.contains("blob_unknown") {
        "BLOB_UNKNOWN"
    } else if t.contains("manifest unknown") || t.contains("manifest_unknown") {
        "MANIFEST_UNKNOWN"
    } else {
        "error"
    }
}

fn below(rng: &mut XorShift, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// The time of day in UTC, as kura's log writes it (`HH:MM:SS.mmmZ`).
fn utc_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// `text` without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_are_told_apart() {
        assert_eq!(
            classify("writing manifest: manifest blob unknown: blob sha256:ab is not in soak/a"),
            "MANIFEST_BLOB_UNKNOWN"
        );
        assert_eq!(
            classify("reading blob: blob unknown to registry"),
            "BLOB_UNKNOWN"
        );
        assert_eq!(classify("manifest unknown"), "MANIFEST_UNKNOWN");
        assert_eq!(classify("connection refused"), "error");
    }

    #[test]
    fn digests_are_found_in_error_text() {
        let hex = "a".repeat(64);
        let text = format!("blob sha256:{hex} is not in soak/a; sha256:short");
        assert_eq!(digests_in(&text), BTreeSet::from([hex]));
    }

    #[test]
    fn colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[3mstatus\u{1b}[0m\u{1b}[2m=\u{1b}[0m500"),
            "status=500"
        );
    }
}
