//! `cargo xtask chaos [--rounds N] [--seed S]`: the crash campaign.
//!
//! kura mirrors a real distribution and hosts pushes while clients pull
//! through the mirror, push images (chunked uploads, shared and unique
//! layers) and pull what was pushed, all at once. The mirror's size bound is
//! small, so eviction passes run all the time and pulls keep filling. Every
//! round kura is SIGKILLed at a random moment, `kura fsck` checks the store
//! it left (nothing may be corrupt or dangling), and kura starts again on
//! the same storage. Clients retry what the crash cut off; any answer with
//! wrong bytes, and any acknowledged push that cannot be pulled back
//! byte-identical, fails the campaign. At the end every image is pulled
//! once more and compared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kura_tests::api::{image_manifest, noise};
use kura_tests::image::OCI_MANIFEST;
use kura_tests::upstream::Distribution;
use kura_tests::{free_port, sha256};

const MIB: usize = 1024 * 1024;
/// Images the upstream holds; together larger than the mirror's bound.
const UPSTREAM_IMAGES: usize = 8;
const PULLERS: usize = 3;
const PUSHERS: usize = 2;

pub fn chaos(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut rounds = 100usize;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--rounds" => rounds = it.next().context("--rounds N")?.parse()?,
            "--seed" => seed = it.next().context("--seed S")?.parse()?,
            other => bail!("chaos: unknown argument {other}"),
        }
    }
    let built = crate::bench::build_kura(root, true)?;
    let work = tempfile::tempdir()?;
    // A copy: every restart runs the same binary, whatever is rebuilt meanwhile.
    let kura_bin = work.path().join("kura");
    std::fs::copy(&built, &kura_bin)?;
    eprintln!(
        "chaos: {rounds} rounds, seed {seed}, work dir {}",
        work.path().display()
    );

    let up = Distribution::start()?;
    let mut upstream = Vec::new();
    for i in 0..UPSTREAM_IMAGES {
        let config = format!("{{\"chaos\":{i}}}").into_bytes();
        // One layer shared by every image, one of its own of 1–4 MiB: fills
        // take long enough to be cut.
        let layers = vec![
            noise(64 * 1024, 1),
            noise(MIB + (i % 4) * MIB, 100 + i as u64),
        ];
        let repo = format!("chaos/img{i}");
        let digest = up.push_image(&repo, "v1", &config, &layers)?;
        upstream.push(Expected {
            path: format!("up.local/{repo}"),
            tag: "v1".into(),
            digest,
            manifest: image_manifest(&config, &layers),
            blobs: std::iter::once(config).chain(layers).collect(),
        });
    }

    let data = work.path().join("data");
    let config = work.path().join("kura.yaml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {}\n\
             registry:\n  upload_max_idle_secs: 3600\n\
             mirror:\n  max_size: 6MiB\n  evict_interval_secs: 1\n  eviction_grace_secs: 0\n  \
             fill_lease_secs: 2\n  upstreams:\n    - name: up.local\n      url: {}\n      tag_ttl_secs: 0\n",
            data.display(),
            up.url
        ),
    )?;
    let mut kura = Server::start(&kura_bin, &config, port, work.path())?;
    let base = format!("http://127.0.0.1:{port}");

    let state = Arc::new(Shared {
        stop: AtomicBool::new(false),
        upstream,
        pushed: Mutex::new(Vec::new()),
        stats: Stats::default(),
        failures: Mutex::new(Vec::new()),
    });
    let mut clients = Vec::new();
    for w in 0..PULLERS {
        let (s, b) = (state.clone(), base.clone());
        clients.push(std::thread::spawn(move || puller(&s, &b, seed ^ w as u64)));
    }
    for w in 0..PUSHERS {
        let (s, b) = (state.clone(), base.clone());
        clients.push(std::thread::spawn(move || {
            pusher(&s, &b, w, seed.wrapping_add(w as u64 * 7919))
        }));
    }
    {
        let (s, b) = (state.clone(), base.clone());
        clients.push(std::thread::spawn(move || {
            pushed_puller(&s, &b, seed.rotate_left(17))
        }));
    }

    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut in_flight_at_kill = BTreeMap::<&str, u64>::new();
    let mut fsck_damage = 0usize;
    let mut leftovers = 0usize;
    for round in 1..=rounds {
        std::thread::sleep(Duration::from_millis(200 + rng.below(1800)));
        let snapshot = state.stats.in_flight();
        kura.kill();
        for (what, n) in &snapshot {
            if *n > 0 {
                *in_flight_at_kill.entry(what).or_default() += 1;
            }
        }
        let report = fsck(&kura_bin, &config)?;
        leftovers += report.leftovers;
        if report.status != 0 {
            fsck_damage += report.damage.max(1);
            eprintln!(
                "chaos: round {round}: fsck exit {}:\n{}",
                report.status, report.output
            );
        }
        kura.restart()?;
        if round % 10 == 0 || round == rounds {
            eprintln!(
                "chaos: round {round}/{rounds}, {:.0}s: {}",
                started.elapsed().as_secs_f64(),
                state.stats.summary()
            );
        }
        let failures = state.failures.lock().unwrap();
        if !failures.is_empty() {
            bail!(
                "chaos: round {round}: wrong answers:\n{}",
                failures.join("\n")
            );
        }
        ensure!(fsck_damage == 0, "chaos: fsck found damage (see above)");
    }
    state.stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.join();
    }

    // Every image, once more, byte for byte, from the kura that survived.
    let client = client();
    let mut verified = 0;
    let pushed = state.pushed.lock().unwrap().clone();
    for e in state.upstream.iter().chain(&pushed) {
        pull_with_retries(&client, &base, e)
            .with_context(|| format!("final pull of {}:{}", e.path, e.tag))?;
        verified += 1;
    }
    kura.kill();
    let report = fsck(&kura_bin, &config)?;
    ensure!(
        report.status == 0,
        "final fsck exit {}:\n{}",
        report.status,
        report.output
    );
    let failures = state.failures.lock().unwrap();
    ensure!(
        failures.is_empty(),
        "wrong answers:\n{}",
        failures.join("\n")
    );
    let evictions = kura.logged("evicted least recently used blobs");
    let killed_evicting = kura.logged("released the eviction lease");

    println!();
    println!("| crash campaign | |");
    println!("|---|---|");
    println!("| rounds (SIGKILLs) | {rounds} |");
    println!("| seed | {seed} |");
    println!("| wall time | {:.0} s |", started.elapsed().as_secs_f64());
    for (what, n) in &in_flight_at_kill {
        println!("| kills with {what} in flight | {n} |");
    }
    println!("| eviction passes that deleted blobs (logged) | {evictions} |");
    println!("| kills during an eviction pass (its lease found at restart) | {killed_evicting} |");
    for (what, n) in state.stats.counts() {
        println!("| {what} | {n} |");
    }
    println!(
        "| acknowledged pushes, all pulled back byte-identical | {} |",
        pushed.len()
    );
    println!("| images verified at the end | {verified} |");
    println!("| leftovers reported by fsck after kills (interrupted uploads, fills, writes) | {leftovers} |");
    println!("| fsck damage (corrupt or dangling) | {fsck_damage} |");
    println!("| wrong bytes served, acknowledged pushes lost | 0 |");
    Ok(())
}

/// An image a client must get back exactly.
#[derive(Clone)]
struct Expected {
    path: String,
    tag: String,
    digest: String,
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
}

struct Shared {
    stop: AtomicBool,
    upstream: Vec<Expected>,
    /// Pushes kura acknowledged (201 to the manifest PUT).
    pushed: Mutex<Vec<Expected>>,
    stats: Stats,
    failures: Mutex<Vec<String>>,
}

#[derive(Default)]
struct Stats {
    mirror_pulls: AtomicU64,
    pushes: AtomicU64,
    pushed_pulls: AtomicU64,
    retries: AtomicU64,
    blob_gets_in_flight: AtomicU64,
    uploads_in_flight: AtomicU64,
    manifest_puts_in_flight: AtomicU64,
}

impl Stats {
    fn in_flight(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("blob GETs", self.blob_gets_in_flight.load(Ordering::SeqCst)),
            ("uploads", self.uploads_in_flight.load(Ordering::SeqCst)),
            (
                "manifest PUTs",
                self.manifest_puts_in_flight.load(Ordering::SeqCst),
            ),
        ]
    }

    fn counts(&self) -> [(&'static str, u64); 4] {
        [
            ("mirror pulls verified", &self.mirror_pulls),
            ("pushes acknowledged", &self.pushes),
            ("pushed images pulled back and verified", &self.pushed_pulls),
            ("requests cut by kills and retried", &self.retries),
        ]
        .map(|(what, n)| (what, n.load(Ordering::SeqCst)))
    }

    fn summary(&self) -> String {
        self.counts()
            .iter()
            .map(|(what, n)| format!("{what} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Counts one operation in flight while alive.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicU64) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What went wrong with one request.
enum Outcome {
    /// Connection refused or cut, a 5xx: the crash; try again.
    Retry(String),
    /// A wrong answer from a running kura.
    Wrong(String),
}

fn client() -> reqwest::blocking::Client {
    kura_tests::init_crypto();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

/// GET `url`; the body of a 200, `Retry` for what a crash explains, `Wrong`
/// for a 4xx (the content must be there).
fn get(client: &reqwest::blocking::Client, url: &str) -> Result<Vec<u8>, Outcome> {
    let resp = client
        .get(url)
        .header("accept", ACCEPT)
        .send()
        .map_err(|e| Outcome::Retry(e.to_string()))?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(Outcome::Retry(format!("{url}: {status}")));
    }
    if !status.is_success() {
        let body = resp.text().unwrap_or_default();
        return Err(Outcome::Wrong(format!("{url}: {status} {body}")));
    }
    // A body cut by the crash is an error here (its length is known).
    resp.bytes()
        .map(|b| b.to_vec())
        .map_err(|e| Outcome::Retry(format!("{url}: body: {e}")))
}

/// Pull `e` once: its manifest, then every blob, each compared byte for
/// byte.
fn pull(
    client: &reqwest::blocking::Client,
    base: &str,
    e: &Expected,
    stats: &Stats,
) -> Result<(), Outcome> {
    let m = get(client, &format!("{base}/v2/{}/manifests/{}", e.path, e.tag))?;
    if m != e.manifest {
        return Err(Outcome::Wrong(format!(
            "{}:{}: manifest {} is not {}",
            e.path,
            e.tag,
            sha256(&m),
            e.digest
        )));
    }
    for blob in &e.blobs {
        let d = sha256(blob);
        let _f = InFlight::new(&stats.blob_gets_in_flight);
        let got = get(client, &format!("{base}/v2/{}/blobs/{d}", e.path))?;
        if got.len() != blob.len() || sha256(&got) != d {
            return Err(Outcome::Wrong(format!(
                "{}: blob {d}: got {} bytes hashing to {}",
                e.path,
                got.len(),
                sha256(&got)
            )));
        }
    }
    Ok(())
}

fn pull_with_retries(
    client: &reqwest::blocking::Client,
    base: &str,
    e: &Expected,
) -> anyhow::Result<()> {
    let stats = Stats::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match pull(client, base, e, &stats) {
            Ok(()) => return Ok(()),
            Err(Outcome::Wrong(w)) => bail!("{w}"),
            Err(Outcome::Retry(r)) if Instant::now() > deadline => bail!("still failing: {r}"),
            Err(Outcome::Retry(_)) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn record(state: &Shared, outcome: Outcome) {
    match outcome {
        Outcome::Retry(_) => {
            state.stats.retries.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        }
        Outcome::Wrong(w) => state.failures.lock().unwrap().push(w),
    }
}

fn puller(state: &Shared, base: &str, seed: u64) {
    let client = client();
    let mut rng = Rng(seed | 1);
    while !state.stop.load(Ordering::SeqCst) {
        let e = &state.upstream[rng.below(state.upstream.len() as u64) as usize];
        match pull(&client, base, e, &state.stats) {
            Ok(()) => {
                state.stats.mirror_pulls.fetch_add(1, Ordering::SeqCst);
            }
            Err(o) => record(state, o),
        }
    }
}

fn pushed_puller(state: &Shared, base: &str, seed: u64) {
    let client = client();
    let mut rng = Rng(seed | 1);
    while !state.stop.load(Ordering::SeqCst) {
        let pick = {
            let pushed = state.pushed.lock().unwrap();
            (!pushed.is_empty()).then(|| pushed[rng.below(pushed.len() as u64) as usize].clone())
        };
        let Some(e) = pick else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        match pull(&client, base, &e, &state.stats) {
            Ok(()) => {
                state.stats.pushed_pulls.fetch_add(1, Ordering::SeqCst);
            }
            Err(o) => record(state, o),
        }
    }
}

/// Push images with chunked uploads: a layer shared by every push and one
/// of its own; the manifest last. A push whose manifest PUT answered 201
/// must stay pullable forever.
fn pusher(state: &Shared, base: &str, worker: usize, seed: u64) {
    let client = client();
    let mut rng = Rng(seed | 1);
    let shared = noise(256 * 1024, 7);
    let mut n = 0u64;
    while !state.stop.load(Ordering::SeqCst) {
        n += 1;
        let repo = format!("team/w{worker}-{}", n % 5);
        let tag = format!("t{n}");
        let config = format!("{{\"worker\":{worker},\"n\":{n}}}").into_bytes();
        let own = noise(
            (512 * 1024 + rng.below(2 * MIB as u64)) as usize,
            seed.wrapping_add(n),
        );
        let layers = vec![shared.clone(), own];
        let result = (|| -> Result<(), Outcome> {
            for blob in std::iter::once(&config).chain(&layers) {
                let _f = InFlight::new(&state.stats.uploads_in_flight);
                upload(&client, base, &repo, blob)?;
            }
            let manifest = image_manifest(&config, &layers);
            let _f = InFlight::new(&state.stats.manifest_puts_in_flight);
            let resp = client
                .put(format!("{base}/v2/{repo}/manifests/{tag}"))
                .header("content-type", OCI_MANIFEST)
                .body(manifest.clone())
                .send()
                .map_err(|e| Outcome::Retry(e.to_string()))?;
            match resp.status().as_u16() {
                201 => {
                    state.pushed.lock().unwrap().push(Expected {
                        path: repo.clone(),
                        tag: tag.clone(),
                        digest: sha256(&manifest),
                        manifest,
                        blobs: std::iter::once(config.clone())
                            .chain(layers.iter().cloned())
                            .collect(),
                    });
                    state.stats.pushes.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
                s if s >= 500 => Err(Outcome::Retry(format!("manifest PUT: {s}"))),
                s => Err(Outcome::Wrong(format!(
                    "manifest PUT {repo}:{tag}: {s} {}",
                    resp.text().unwrap_or_default()
                ))),
            }
        })();
        if let Err(o) = result {
            record(state, o);
        }
    }
}

/// A chunked upload in two PATCHes and a closing PUT.
fn upload(
    client: &reqwest::blocking::Client,
    base: &str,
    repo: &str,
    blob: &[u8],
) -> Result<(), Outcome> {
    let cut = |e: reqwest::Error| Outcome::Retry(e.to_string());
    let check = |what: &str, resp: &reqwest::blocking::Response, want: u16| {
        let s = resp.status().as_u16();
        if s == want {
            Ok(())
        } else if s >= 500 {
            Err(Outcome::Retry(format!("{what}: {s}")))
        } else {
            Err(Outcome::Wrong(format!("{what} in {repo}: {s}")))
        }
    };
    let start = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .map_err(cut)?;
    check("upload start", &start, 202)?;
    let mut location = absolute(base, &start);
    let half = blob.len() / 2;
    for (from, part) in [(0, &blob[..half]), (half, &blob[half..])] {
        let resp = client
            .patch(&location)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{from}-{}", from + part.len() - 1))
            .body(part.to_vec())
            .send()
            .map_err(cut)?;
        // A session the crash interrupted may be gone or behind: start over.
        if resp.status().as_u16() == 404 || resp.status().as_u16() == 416 {
            return Err(Outcome::Retry(format!("chunk: {}", resp.status())));
        }
        check("chunk", &resp, 202)?;
        location = absolute(base, &resp);
    }
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = client
        .put(format!("{location}{sep}digest={}", sha256(blob)))
        .send()
        .map_err(cut)?;
    if resp.status().as_u16() == 404 {
        return Err(Outcome::Retry("upload finished by nobody".into()));
    }
    check("upload close", &resp, 201)
}

fn absolute(base: &str, resp: &reqwest::blocking::Response) -> String {
    let loc = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if loc.starts_with("http") {
        loc.to_owned()
    } else {
        format!("{base}{loc}")
    }
}

struct FsckRun {
    status: i32,
    damage: usize,
    leftovers: usize,
    output: String,
}

fn fsck(kura: &Path, config: &Path) -> anyhow::Result<FsckRun> {
    let out = Command::new(kura)
        .args(["fsck", "--verbose", "--config"])
        .arg(config)
        .output()
        .context("running kura fsck")?;
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let count = |prefix: &str| output.lines().filter(|l| l.starts_with(prefix)).count();
    Ok(FsckRun {
        status: out.status.code().unwrap_or(-1),
        damage: count("DAMAGE:"),
        leftovers: count("leftover:"),
        output: format!("{output}{}", String::from_utf8_lossy(&out.stderr)),
    })
}

/// The kura under test, restarted on the same storage after each kill.
pub(crate) struct Server {
    bin: PathBuf,
    config: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    pub(crate) fn start(
        bin: &Path,
        config: &Path,
        port: u16,
        work: &Path,
    ) -> anyhow::Result<Server> {
        let mut s = Server {
            bin: bin.to_owned(),
            config: config.to_owned(),
            port,
            log: work.join("kura.log"),
            child: None,
        };
        s.restart()?;
        Ok(s)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting kura")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "kura exited at startup with {st}; log: {}",
                    self.log.display()
                );
            }
            ensure!(Instant::now() < deadline, "kura not listening within 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Log lines containing `what`.
    fn logged(&self, what: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// xorshift: reproducible with `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
