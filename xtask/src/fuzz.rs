//! `cargo xtask fuzz [--minutes M] [--seconds S] [--target NAME]`: the
//! libFuzzer campaign over the parsers (targets in `fuzz/fuzz_targets/`,
//! seeds in `fuzz/corpus/<target>/`).
//!
//! Every target is built once (`cargo +nightly fuzz build`), then each runs
//! in turn on one core for the given time (default 1 minute). The binaries
//! are run directly rather than through `cargo fuzz run`: other work in the
//! checkout touching kura-core would otherwise rebuild between targets and
//! eat the fuzzing time. New inputs go to `fuzz/scratch/<target>/`
//! (ignored by git, kept between campaigns), so the committed seeds stay a
//! small hand-made set. A crash, hang (10 s per input) or out-of-memory in
//! any target fails the campaign and names the input libFuzzer saved.
//!
//! Built without a sanitizer: the code under test is safe Rust (kura-core
//! forbids `unsafe`), what the targets look for is panics and broken
//! properties, and AddressSanitizer would halve the executions and lengthen
//! the build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context};

/// The toolchain cargo-fuzz needs (`-Z` flags for coverage instrumentation).
const TOOLCHAIN: &str = "+nightly";
/// `cargo install cargo-fuzz --version` that `scripts/test-env.sh` installs.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Per-target time in `cargo xtask test`.
pub const CI_SECONDS: u64 = 5;

/// What one target's run came to.
struct Outcome {
    target: String,
    executions: Option<u64>,
    seconds: f64,
    /// Inputs libFuzzer saved: crashes, hangs, out-of-memory.
    artifacts: Vec<String>,
}

pub fn fuzz(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut seconds = 60u64;
    let mut only = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--minutes" => seconds = 60 * it.next().context("--minutes M")?.parse::<u64>()?,
            "--seconds" => seconds = it.next().context("--seconds S")?.parse()?,
            "--target" => only = Some(*it.next().context("--target NAME")?),
            other => bail!("fuzz: unknown argument {other}"),
        }
    }
    ensure!(seconds > 0, "fuzz: the time per target must be positive");
    campaign(root, seconds, only)
}

/// Build every target, run each for `seconds` (or only `only`), print the
/// table, fail on any crash.
pub fn campaign(root: &Path, seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    check_tools()?;
    let mut targets = targets(root)?;
    if let Some(name) = only {
        ensure!(
            targets.iter().any(|t| t == name),
            "fuzz: no target {name} (have {})",
            targets.join(", ")
        );
        targets.retain(|t| t == name);
    }
    let build = Instant::now();
    crate::run(Command::new("cargo").args([TOOLCHAIN, "fuzz", "build", "-s", "none"]))?;
    eprintln!("fuzz: built in {:.0}s", build.elapsed().as_secs_f64());
    let bin_dir = root
        .join("fuzz/target")
        .join(host_triple()?)
        .join("release");

    let mut outcomes = Vec::new();
    for target in &targets {
        let outcome = run_target(root, &bin_dir, target, seconds)?;
        outcomes.push(outcome);
    }

    println!(
        "\n{:<18} {:>14} {:>9} {:>8}",
        "target", "executions", "seconds", "crashes"
    );
    for o in &outcomes {
        let execs = o.executions.map_or("?".to_owned(), |n| n.to_string());
        println!(
            "{:<18} {:>14} {:>9.1} {:>8}",
            o.target,
            execs,
            o.seconds,
            o.artifacts.len()
        );
    }
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.artifacts.is_empty())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    for o in &failed {
        for a in &o.artifacts {
            eprintln!(
                "fuzz: {} failed on {a}\n  reproduce: cargo +nightly fuzz run -s none {} {a}",
                o.target, o.target
            );
        }
    }
    bail!(
        "fuzz: {} of {} targets failed (log in fuzz/scratch/<target>.log)",
        failed.len(),
        outcomes.len()
    )
}

fn run_target(root: &Path, bin_dir: &Path, target: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let scratch = root.join("fuzz/scratch").join(target);
    let artifacts = root.join("fuzz/artifacts").join(target);
    std::fs::create_dir_all(&scratch)?;
    std::fs::create_dir_all(&artifacts)?;
    let log_path = root.join("fuzz/scratch").join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)?;
    eprintln!("fuzz: {target} for {seconds}s");
    let started = Instant::now();
    // The first corpus directory receives new inputs; the seeds are read only.
    let status = Command::new(bin_dir.join(target))
        .arg(&scratch)
        .arg(root.join("fuzz/corpus").join(target))
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg("-timeout=10")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .current_dir(root)
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("running fuzz target {target}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path)?;
    let executions = text
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok());
    let mut saved: Vec<String> = text
        .lines()
        .filter_map(|l| {
            l.split_once("Test unit written to ")
                .map(|(_, p)| p.trim().to_owned())
        })
        .collect();
    if !status.success() && saved.is_empty() {
        // libFuzzer died without saving an input (a crash in its own setup,
        // a signal): still a failure, shown by its log.
        saved.push(format!("(no input saved; see {})", log_path.display()));
    }
    Ok(Outcome {
        target: target.to_owned(),
        executions,
        seconds: elapsed,
        artifacts: saved,
    })
}

/// The fuzz targets: `fuzz/fuzz_targets/*.rs`, sorted.
fn targets(root: &Path) -> anyhow::Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path: PathBuf = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_owned());
            }
        }
    }
    names.sort();
    ensure!(!names.is_empty(), "no fuzz targets in {}", dir.display());
    Ok(names)
}

fn check_tools() -> anyhow::Result<()> {
    let works = |args: &[&str]| {
        Command::new("cargo")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    ensure!(
        works(&[TOOLCHAIN, "--version"]),
        "fuzz: the nightly toolchain is missing (rustup toolchain install nightly --profile minimal)"
    );
    ensure!(
        works(&[TOOLCHAIN, "fuzz", "--version"]),
        "fuzz: cargo-fuzz is missing (cargo install cargo-fuzz --version {CARGO_FUZZ_VERSION} --locked)"
    );
    Ok(())
}

/// Where cargo-fuzz puts the binaries: `fuzz/target/<host triple>/release`.
fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .args([TOOLCHAIN, "-vV"])
        .output()
        .context("rustc +nightly -vV")?;
    String::from_utf8(out.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("no host line in rustc -vV")
}
