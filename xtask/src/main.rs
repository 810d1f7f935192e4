//! `cargo xtask`: the project's own tasks.
//!
//! - `cargo xtask test` — install test peers if missing, check formatting and
//!   lints, prove kura-core builds for wasm32, run every test, then the
//!   benchmark harness at small sizes.
//! - `cargo xtask wasm` — build kura-core for `wasm32-unknown-unknown` and
//!   the wasm-bindgen package (`wasm-js [--dev]` builds only that;
//!   `wasm-js-test` and `core-wasm-test` run the edge tests alone).
//! - `cargo xtask edge-dev --upstream URL [--port PORT]` — the Worker under
//!   wrangler's local runtime (`shells/worker/dev.mjs`, devtools off) with a
//!   local R2, mirroring URL; `worker-test`
//!   runs the Worker's tests alone.
//! - `cargo xtask deb [--out DIR]` — the Debian package (binary, hardened
//!   systemd unit, /etc/kura/config.yaml as a conffile) in target/debian/
//!   (see `deb.rs`, docs/debian-package.md).
//! - `cargo xtask image [--out DIR] [--tag TAG]` — a container image of kura
//!   as an OCI image layout (default `target/image`), built without a Docker
//!   daemon (see `image.rs`, docs/container.md).
//! - `cargo xtask bench [--quick]` — kura beside registry:2 and an nginx
//!   ceiling; writes docs/benchmarks.md (see `bench.rs`).
//! - `cargo xtask chaos [--rounds N] [--seed S]` — the crash campaign: kura
//!   SIGKILLed under concurrent pulls, pushes and evictions, `kura fsck`
//!   after every kill (see `chaos.rs`, docs/reliability.md).
//! - `cargo xtask soak [--minutes M] [--quick] [--svg PATH]` — mixed load
//!   (wrk, skopeo pulls and pushes, mirror misses) with zero errors allowed;
//!   memory and descriptors sampled and plotted (see `soak.rs`).
//!   `soak --gc [--minutes M] [--quick]`: pushes, pulls and garbage
//!   collections at once, M minutes on local disk and M/2 on S3, zero
//!   failures allowed (see `soak_gc.rs`).
//! - `cargo xtask fuzz [--minutes M] [--seconds S] [--target NAME]` — the
//!   libFuzzer targets in fuzz/ on nightly, each in turn; a table of
//!   executions and crashes (see `fuzz.rs`).

mod bench;
mod bench_gc;
mod chaos;
mod deb;
mod edge;
mod fuzz;
mod image;
mod soak;
mod soak_gc;
mod wan;
mod worker;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(&rest),
        Some("wasm") => wasm()
            .and_then(|()| edge::build_wasm_js(true))
            .and_then(|()| worker::build_worker()),
        Some("worker-test") => worker::worker_test(),
        Some("edge-dev") => {
            let flag = |name: &str| {
                rest.iter()
                    .position(|a| *a == name)
                    .and_then(|i| rest.get(i + 1))
                    .copied()
            };
            let upstream = flag("--upstream").context("edge-dev needs --upstream URL")?;
            let port = flag("--port").unwrap_or("8787").parse().context("--port")?;
            worker::edge_dev(upstream, port)
        }
        Some("wasm-js") => edge::build_wasm_js(!rest.contains(&"--dev")),
        Some("wasm-js-test") => edge::wasm_js_test(),
        Some("core-wasm-test") => edge::core_wasm_test(),
        Some("bench") => bench::bench(&root(), &rest),
        Some("chaos") => chaos::chaos(&root(), &rest),
        Some("soak") => soak::soak(&root(), &rest),
        Some("fuzz") => fuzz::fuzz(&root(), &rest),
        Some("image") => image::main(&rest),
        Some("deb") => deb::deb_command(&rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <test [--no-setup] [-- cargo test args]|wasm|wasm-js [--dev]|worker-test|edge-dev --upstream URL [--port P]|wasm-js-test|core-wasm-test|bench [--quick] [--only PHASE] [--perf]|deb [--out DIR]|image [--out DIR] [--tag TAG]|chaos [--rounds N] [--seed S]|soak [--gc [--serve-only]] [--minutes M] [--quick] [--svg PATH]|fuzz [--minutes M] [--seconds S] [--target NAME]>"
            );
            std::process::exit(2);
        }
    }
}

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is in the workspace")
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Run `cmd` in the workspace root; its failure is an error.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn test(args: &[&str]) -> anyhow::Result<()> {
    let (flags, test_args) = match args.iter().position(|a| *a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    if !flags.contains(&"--no-setup") {
        run(Command::new("bash").arg("scripts/test-env.sh"))?;
    }
    run(Command::new(cargo()).args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new(cargo()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    wasm()?;
    // kura-core is published on its own: its docs build without warnings and
    // it packages (crates.io metadata, no path-only dependencies).
    run(Command::new(cargo())
        .args(["doc", "-p", "kura-core", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    run(Command::new(cargo()).args([
        "package",
        "-p",
        "kura-core",
        "--no-verify",
        "--allow-dirty",
    ]))?;
    run_tests(
        Command::new(cargo())
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(test_args),
    )?;
    // The edge: kura-core's unit tests on wasm32 (in Node), then the
    // wasm-bindgen package under `node --test`.
    edge::core_wasm_test()?;
    edge::wasm_js_test()?;
    // The Cloudflare Worker in wrangler's local runtime with its local R2.
    worker::worker_test()?;
    // The container image, pushed with skopeo and run under containerd.
    image::image_test()?;
    deb::deb_test()?;
    // The fuzz targets, built once and run a few seconds each: they build,
    // and the seeds and a first round of mutations pass.
    fuzz::campaign(&root(), fuzz::CI_SECONDS, None)?;
    // The crash campaign, short: five SIGKILLs under load, fsck after each.
    chaos::chaos(&root(), &["--rounds", "5"])?;
    // The soak, short: half a minute of mixed load, zero errors.
    soak::soak(&root(), &["--quick", "--minutes", "0.5"])?;
    // The garbage-collection soak, short: pushes, pulls and collections at
    // once, on local disk (6 s with kura serve collecting, 6 s with kura gc
    // beside it) and on S3 (3 s each).
    soak::soak(&root(), &["--gc", "--quick", "--minutes", "0.2"])?;
    // The benchmark harness at small sizes: it must run end to end and
    // produce its table (no timing is asserted).
    bench::bench(&root(), &["--quick"])
}

/// Run cargo test, passing its output through, and close with one line
/// totalling every test binary (cargo's own last line is only the last
/// binary's, often the doc-tests with nothing in them).
fn run_tests(cmd: &mut Command) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().context("piped stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split([';', '.'])
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)
                            .and_then(|n| n.trim().parse().ok())
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
            ignored += count("ignored");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// kura-core must stay buildable for the edge. This machine kind has no
/// `rustup target add`; `scripts/test-env.sh` links a `wasm` toolchain.
fn wasm() -> anyhow::Result<()> {
    let mut cmd = edge::wasm_command("cargo");
    run(cmd.args([
        "build",
        "-p",
        "kura-core",
        "--target",
        "wasm32-unknown-unknown",
    ]))
}
