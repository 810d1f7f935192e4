//! `kura gc`: one garbage collection of hosted repositories, beside a
//! running `kura serve` or alone, and the collections `kura serve` runs on
//! its schedule. The collection itself is kura-core's
//! ([`kura_core::Registry::collect_garbage`]).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use kura_core::{Garbage, GcOptions, GcReport};

use crate::config::Config;
use crate::server::{self, App};

/// How many removals are listed one per line before the rest are only
/// counted (all with `--verbose`, and always in a dry run).
const LISTED: usize = 20;

pub struct GcArgs {
    pub dry_run: bool,
    /// Overrides `gc.grace_secs`.
    pub grace: Option<Duration>,
    pub verbose: bool,
}

/// The options a collection of `config` runs with.
pub fn options(config: &Config, grace: Option<Duration>, dry_run: bool) -> GcOptions {
    let mut opts = GcOptions::default();
    opts.grace_ms = grace.map_or(config.gc.grace_secs.saturating_mul(1000), |g| {
        g.as_millis() as u64
    });
    opts.delete_untagged = config.gc.delete_untagged;
    opts.dry_run = dry_run;
    opts
}

/// Collect the store `config` names once; returns the exit status.
pub async fn run(config: &Config, args: &GcArgs) -> anyhow::Result<i32> {
    if config.storage.s3.is_none() && !config.data_dir.is_dir() {
        anyhow::bail!(
            "data directory {} does not exist",
            config.data_dir.display()
        );
    }
    let app = server::build_app(config)?;
    let registry = &app.registry;
    let opts = options(config, args.grace, args.dry_run);
    let spinner = if std::io::stderr().is_terminal() {
        let s = ProgressBar::new_spinner();
        s.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template"));
        s.set_message("collecting");
        s.enable_steady_tick(Duration::from_millis(120));
        s
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let report = registry.collect_garbage(&opts).await;
    spinner.finish_and_clear();
    let report = report?;
    if report.skipped {
        eprintln!("kura gc: another process is collecting this store; nothing done");
        return Ok(0);
    }
    let expired = if args.dry_run {
        0
    } else {
        registry
            .purge_stale_uploads(config.registry.upload_max_idle_secs.saturating_mul(1000))
            .await?
    };
    print_report(&report, args.verbose || args.dry_run, started.elapsed());
    if expired > 0 {
        println!("expired {expired} upload sessions idle over registry.upload_max_idle_secs");
    }
    Ok(0)
}

fn print_report(r: &GcReport, list_all: bool, took: Duration) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    for (i, g) in r.removed.iter().enumerate() {
        if i == LISTED && !list_all {
            println!(
                "… and {} more (--verbose lists them)",
                r.removed.len() - LISTED
            );
            break;
        }
        println!("{verb} {}", describe(g));
    }
    for (repository, digest) in &r.unreadable {
        println!(
            "warning: manifest {digest} of {repository} could not be read; every link of {repository} was kept (`kura fsck` checks it)"
        );
    }
    let count = |kind: fn(&Garbage) -> bool| r.removed.iter().filter(|g| kind(g)).count();
    let bytes: u64 = r
        .removed
        .iter()
        .map(|g| match g {
            Garbage::Blob { size, .. } => *size,
            _ => 0,
        })
        .sum();
    println!(
        "{verb} {} tags, {} manifests, {} links, {} blobs ({}) in {:.1} s; {} hosted repositories, {} blobs in storage; {} unreferenced within the grace period; {} spared by pushes",
        count(|g| matches!(g, Garbage::Tag { .. })),
        count(|g| matches!(g, Garbage::Manifest { .. })),
        count(|g| matches!(g, Garbage::Link { .. })),
        count(|g| matches!(g, Garbage::Blob { .. })),
        HumanBytes(bytes),
        took.as_secs_f64(),
        r.repositories,
        r.blobs_seen,
        r.pending,
        r.spared,
    );
}

fn describe(g: &Garbage) -> String {
    match g {
        Garbage::Tag { repository, tag } => format!("tag {repository}:{tag} (retention)"),
        Garbage::Manifest { repository, digest } => {
            format!("manifest {repository}@{digest} (untagged)")
        }
        Garbage::Link { repository, digest } => format!("link {repository} → {digest}"),
        Garbage::Blob { digest, size } => format!("blob {digest} ({})", HumanBytes(*size)),
        _ => format!("{g:?}"),
    }
}

/// Collect garbage every `gc.interval_secs` inside `kura serve`.
pub fn spawn(app: Arc<App>, config: &Config) {
    let every = Duration::from_secs(config.gc.interval_secs);
    if every.is_zero() {
        return;
    }
    // Instances sharing a store collect in turn (the lease `leases/gc`);
    // pushes to any of them win against a collection in another
    // (kura_core's `store::sweep`).
    let opts = options(config, None, false);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        // The first tick fires at once: let the server settle first.
        tick.tick().await;
        loop {
            tick.tick().await;
            let started = Instant::now();
            match app.registry.collect_garbage(&opts).await {
                Ok(r) if r.skipped => {
                    tracing::debug!("another instance is collecting garbage; pass skipped")
                }
                Ok(r) => tracing::info!(
                    tags = r.tags,
                    manifests = r.manifests,
                    links = r.links,
                    blobs = r.blobs,
                    bytes = r.bytes,
                    pending = r.pending,
                    spared = r.spared,
                    seconds = started.elapsed().as_secs_f64(),
                    "garbage collection"
                ),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
        }
    });
}
