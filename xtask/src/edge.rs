//! Edge builds and tests: the wasm-bindgen package (`shells/wasm-js`) and
//! kura-core's unit tests on wasm32.
//!
//! - [`build_wasm_js`] — `wasm-pack build --target web` into
//!   `shells/wasm-js/pkg/` (release: LTO, `opt-level = "s"`, wasm-opt `-Oz`).
//! - [`wasm_js_test`] — a dev build with the storage conformance export,
//!   then `node --test` on `shells/wasm-js/test/*.test.mjs`.
//! - [`core_wasm_test`] — kura-core's unit tests compiled for wasm32 and run
//!   in Node by `wasm-bindgen-test-runner`.
//!
//! On this machine kind the wasm32 toolchain is the rustup toolchain named
//! `wasm` (../shared/toolchain); elsewhere the default toolchain with
//! `rustup target add wasm32-unknown-unknown`. The tools: `wasm-pack`,
//! `wasm-bindgen-cli` (same version as the `wasm-bindgen` in Cargo.lock,
//! for `wasm-bindgen-test-runner`), `wasm-opt` (binaryen; without it release
//! builds skip optimisation), Node >= 20.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::{root, run};

const PACKAGE: &str = "shells/wasm-js";
const WASM_TARGET: &str = "wasm32-unknown-unknown";

fn on_path(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn require(tool: &str, hint: &str) -> anyhow::Result<()> {
    if !on_path(tool, "--version") {
        bail!("`{tool}` not found on PATH: {hint}");
    }
    Ok(())
}

/// The rustup toolchain `wasm` if this machine has one (no `rustup target
/// add` here), else whatever rustup picks.
fn wasm_toolchain() -> Option<&'static str> {
    let listed = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some("wasm"))
        })
        .unwrap_or(false);
    listed.then_some("wasm")
}

/// A command that builds for wasm32 with the right toolchain, without the
/// stable compiler that `cargo xtask` itself runs under.
pub(crate) fn wasm_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("RUSTC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN");
    if let Some(t) = wasm_toolchain() {
        cmd.env("RUSTUP_TOOLCHAIN", t);
    }
    cmd
}

fn wasm_pack_build(release: bool, features: &[&str]) -> anyhow::Result<()> {
    require(
        "wasm-pack",
        "cargo install wasm-pack --version 0.15.1 --locked (here: ../shared/toolchain/install-wasm-toolchain.sh)",
    )?;
    require(
        "wasm-bindgen",
        "cargo install wasm-bindgen-cli --version <the wasm-bindgen in Cargo.lock>",
    )?;
    let mut cmd = wasm_command("wasm-pack");
    cmd.args(["build", PACKAGE, "--target", "web", "--no-pack"]);
    if release {
        cmd.arg("--release");
        // Size over speed for the edge; the workspace's release profile is
        // tuned for the native binary, so override it for this build only.
        cmd.env("CARGO_PROFILE_RELEASE_LTO", "true")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
        if !on_path("wasm-opt", "--version") {
            // wasm-pack would try to download binaryen (no network here).
            eprintln!("xtask: wasm-opt not on PATH, building without it (larger .wasm)");
            cmd.arg("--no-opt");
        }
    } else {
        cmd.arg("--dev");
    }
    if !features.is_empty() {
        cmd.args(["--", "--features", &features.join(",")]);
    }
    run(&mut cmd)
}

fn gzipped_len(path: &Path) -> anyhow::Result<usize> {
    let out = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(path)
        .output()
        .context("running gzip")?;
    if !out.status.success() {
        bail!("gzip of {} failed", path.display());
    }
    Ok(out.stdout.len())
}

/// Build the npm package into `shells/wasm-js/pkg/` (the JS entry points in
/// `shells/wasm-js/js/` load it). A release build reports its size.
pub fn build_wasm_js(release: bool) -> anyhow::Result<()> {
    wasm_pack_build(release, &[])?;
    let wasm = root().join(PACKAGE).join("pkg/kura_wasm_bg.wasm");
    let len = std::fs::metadata(&wasm)
        .with_context(|| format!("{} after the build", wasm.display()))?
        .len();
    if release {
        println!(
            "kura-wasm: {} is {len} bytes, {} gzipped (-9)",
            wasm.display(),
            gzipped_len(&wasm)?
        );
    }
    Ok(())
}

/// Build the package (dev profile, with the storage conformance export) and
/// run its Node tests. The pull-through tests use Debian's `docker-registry`
/// as the upstream and are skipped, saying so, where it is missing.
pub fn wasm_js_test() -> anyhow::Result<()> {
    require("node", "Node.js >= 20 is needed for the package tests")?;
    wasm_pack_build(false, &["conformance"])?;
    let dir = root().join(PACKAGE).join("test");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".test.mjs"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.test.mjs in {}", dir.display());
    }
    run(Command::new("node")
        .args(["--test", "--test-reporter=spec"])
        .args(&files))
}

/// kura-core's unit tests (`--lib`: the integration tests in core/tests use
/// threads) on wasm32, in Node.
pub fn core_wasm_test() -> anyhow::Result<()> {
    require(
        "wasm-bindgen-test-runner",
        "it comes with wasm-bindgen-cli (cargo install wasm-bindgen-cli --version <the wasm-bindgen in Cargo.lock>)",
    )?;
    let mut cmd = wasm_command("cargo");
    cmd.env(
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
        "wasm-bindgen-test-runner",
    )
    .args(["test", "-p", "kura-core", "--lib", "--target", WASM_TARGET]);
    run(&mut cmd)
}
