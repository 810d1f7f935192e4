//! `kura fsck`: verify every blob, follow every tag, link and manifest,
//! report what interrupted work left behind, and with `--repair` remove
//! what is provably garbage or corrupt.
//!
//! The checks themselves are kura-core's ([`kura_core::fsck`]); this shell
//! verifies blobs on as many tasks as `--jobs` asks, shows progress, adds
//! the local disk's own leftovers (files of interrupted writes), prints the
//! findings and turns them into an exit status.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use kura_core::fsck::{self, FsckOptions, FsckReport, Severity};

use crate::config::Config;
use crate::server;
use crate::storage;

/// The exit statuses, as e2fsck has them: operators and scripts know them.
pub const CLEAN: i32 = 0;
/// Damage was found and every damaged object was removed.
pub const REPAIRED: i32 = 1;
/// Damage remains.
pub const DAMAGED: i32 = 4;
/// The check could not run (storage unreachable, bad configuration).
pub const FAILED: i32 = 8;

/// How many leftovers and notes are printed one per line before the rest
/// are only counted.
const LISTED: usize = 20;

pub struct FsckArgs {
    pub repair: bool,
    pub jobs: usize,
    pub verbose: bool,
}

/// Check the store `config` names; returns the exit status.
pub async fn run(config: &Config, args: &FsckArgs) -> anyhow::Result<i32> {
    let local_root = config.storage.s3.is_none().then(|| config.data_dir.clone());
    // Before opening the store, which would create a missing directory: a
    // mistyped path must not check as an empty, clean store.
    if let Some(root) = &local_root {
        if !root.is_dir() {
            anyhow::bail!("data directory {} does not exist", root.display());
        }
    }
    let app = server::build_app(config)?;
    let registry = &app.registry;
    let started = Instant::now();
    let store_name = match &config.storage.s3 {
        Some(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix.as_deref().unwrap_or("")),
        None => config.data_dir.display().to_string(),
    };
    eprintln!("kura fsck: {store_name}");

    let inventory = registry.fsck_inventory().await?;
    let total_bytes = inventory.blob_bytes();
    let bar = progress_bar(total_bytes);
    let storage = registry.storage().clone();
    let blobs: Vec<_> = inventory.blobs().to_vec();
    let mut checks = futures::stream::iter(blobs)
        .map(|(digest, size)| {
            let storage = storage.clone();
            // A task each, so hashing runs on every core.
            tokio::spawn(async move {
                let verdict = fsck::verify_blob(&storage, &digest).await;
                (digest, size, verdict)
            })
        })
        .buffer_unordered(args.jobs.max(1));
    let mut verdicts = HashMap::new();
    while let Some(done) = checks.next().await {
        let (digest, size, verdict) = done?;
        bar.inc(size);
        verdicts.insert(digest, verdict);
    }
    bar.finish_and_clear();

    let mut report = registry.fsck_check(inventory, &verdicts).await?;
    let stale = Duration::from_secs(config.registry.upload_max_idle_secs);
    let options = FsckOptions {
        stale_upload_ms: stale.as_millis() as u64,
    };
    if args.repair {
        registry.fsck_repair(&mut report, &options).await?;
    }
    let staging = match &local_root {
        Some(root) => staging_files(root, args.repair.then_some(stale))?,
        None => Vec::new(),
    };

    print_report(&report, &staging, args.verbose);
    println!(
        "{} blobs ({}) verified, {} repositories, {} manifests, {} tags in {:.1}s",
        report.blobs,
        HumanBytes(report.blob_bytes),
        report.repositories,
        report.manifests,
        report.tags,
        started.elapsed().as_secs_f64()
    );
    let damaged_found = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Damage)
        .count();
    let damage_left = report.remaining(Severity::Damage);
    let status = if damaged_found == 0 {
        println!("clean");
        CLEAN
    } else if damage_left == 0 {
        println!("repaired: {damaged_found} damaged objects removed");
        REPAIRED
    } else {
        println!(
            "DAMAGED: {damage_left} problems{}",
            if args.repair {
                " remain that cannot be repaired without losing what they name"
            } else {
                "; `kura fsck --repair` removes corrupt blobs and the mirror's dangling tags"
            }
        );
        DAMAGED
    };
    Ok(status)
}

fn progress_bar(total_bytes: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total_bytes);
    bar.set_style(
        ProgressStyle::with_template(
            "verifying [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar
}

fn print_report(report: &FsckReport, staging: &[Staging], verbose: bool) {
    let mut shown: BTreeMap<Severity, usize> = BTreeMap::new();
    let mut hidden: BTreeMap<Severity, usize> = BTreeMap::new();
    for f in &report.findings {
        let n = shown.entry(f.severity).or_default();
        // Every damaged object is named; the rest up to a limit.
        if f.severity == Severity::Damage || verbose || *n < LISTED {
            *n += 1;
            let done = if f.repaired { " (removed)" } else { "" };
            println!("{}: {}{done}  [{}]", f.severity, f.problem, f.key);
        } else {
            *hidden.entry(f.severity).or_default() += 1;
        }
    }
    for s in staging
        .iter()
        .take(if verbose { usize::MAX } else { LISTED })
    {
        let done = if s.removed { " (removed)" } else { "" };
        println!(
            "leftover: file of an interrupted write, {} bytes, idle {}s{done}  [{}]",
            s.bytes,
            s.idle.as_secs(),
            s.path.display()
        );
    }
    if staging.len() > LISTED && !verbose {
        *hidden.entry(Severity::Leftover).or_default() += staging.len() - LISTED;
    }
    for (severity, n) in hidden {
        println!("{severity}: {n} more (--verbose lists them)");
    }
}

/// A file a local-disk write was staging when it stopped.
struct Staging {
    path: PathBuf,
    bytes: u64,
    idle: Duration,
    removed: bool,
}

/// Staging files under `root`; those idle longer than `remove_after`
/// (when given) are deleted. A write in progress keeps its file's mtime
/// fresh.
fn staging_files(root: &Path, remove_after: Option<Duration>) -> anyhow::Result<Vec<Staging>> {
    fn walk(dir: &Path, out: &mut Vec<Staging>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                walk(&entry.path(), out)?;
            } else if ft.is_file() && storage::is_staging_file(&entry.file_name().to_string_lossy())
            {
                let meta = entry.metadata()?;
                out.push(Staging {
                    path: entry.path(),
                    bytes: meta.len(),
                    idle: meta
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .unwrap_or_default(),
                    removed: false,
                });
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(root, &mut found)?;
    if let Some(limit) = remove_after {
        for s in &mut found {
            if s.idle > limit {
                std::fs::remove_file(&s.path)?;
                s.removed = true;
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}
