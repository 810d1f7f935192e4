//! The Cloudflare Worker (`shells/worker`): build it, test it, run it.
//!
//! - [`build_worker`] — `shells/worker/build.sh`: worker-build `--release`
//!   (LTO, opt-level s, wasm-opt -Oz) into `shells/worker/build/`, then the
//!   module's size (raw and gzip -9).
//! - [`worker_test`] — the worker's unit tests (config, access, routing), a
//!   wasm32 clippy of the crate, and the end-to-end tests
//!   (`tests/tests/worker.rs`: the Worker in wrangler's local runtime with
//!   its local R2, mirroring docker-registry and a lying upstream, pulled
//!   with skopeo and containerd; pull tokens from `.dev.vars`, anonymous
//!   pull, and the error of a Worker configured with neither).
//! - [`edge_dev`] — the Worker in wrangler's local runtime mirroring one
//!   upstream, on `127.0.0.1:<port>`, until interrupted.
//!
//! Both run the Worker with `shells/worker/dev.mjs` rather than the
//! `wrangler dev --local` CLI: the same local runtime, without the devtools
//! inspector, which costs wrangler one request to its loopback server per
//! 4 KiB the Worker fetches (see dev.mjs) and made cold pulls of large
//! layers hang.
//!
//! Builds use the workspace's target directory (`target/wasm32-unknown-unknown`),
//! like every other build. Needs worker-build 0.8.7 and a wasm32 toolchain
//! (here the rustup toolchain `wasm` from ../shared/toolchain; elsewhere
//! `rustup target add wasm32-unknown-unknown`), wasm-bindgen-cli matching
//! Cargo.lock, and Node >= 20.3 with npm (wrangler 4.86.0 is installed into
//! `shells/worker/node_modules` when missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::root;

fn worker_dir() -> PathBuf {
    root().join("shells/worker")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn require(tool: &str, hint: &str) -> anyhow::Result<()> {
    if !on_path(tool) {
        bail!("`{tool}` not found on PATH: {hint}");
    }
    Ok(())
}

/// A command that must not inherit the toolchain of the cargo running
/// xtask (build.sh and the nested cargo pick the wasm32 one).
fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("RUSTC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
}

/// wrangler in shells/worker/node_modules (which dev.mjs loads), installed
/// from the lockfile if missing.
fn install_wrangler() -> anyhow::Result<()> {
    let dir = worker_dir();
    if !dir.join("node_modules/wrangler/bin/wrangler.js").exists() {
        require("npm", "install Node >= 20.3 with npm")?;
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir))?;
    }
    Ok(())
}

/// Release build into `shells/worker/build/`; prints the module size.
pub fn build_worker() -> anyhow::Result<()> {
    require(
        "worker-build",
        "cargo install worker-build --version 0.8.7 --locked",
    )?;
    let dir = worker_dir();
    run(clean_env(&mut Command::new("sh"))
        .arg("build.sh")
        .current_dir(&dir))?;
    let wasm = dir.join("build/index_bg.wasm");
    let (raw, gz) = wasm_size(&wasm)?;
    println!(
        "kura-worker: {} ({} bytes, {} bytes gzip -9)",
        wasm.display(),
        raw,
        gz
    );
    Ok(())
}

/// Raw and `gzip -9` size of a file.
fn wasm_size(path: &Path) -> anyhow::Result<(u64, u64)> {
    let raw = std::fs::metadata(path)
        .with_context(|| format!("{} was not built", path.display()))?
        .len();
    let out = Command::new("gzip")
        .arg("-9")
        .arg("-c")
        .arg(path)
        .output()
        .context("running gzip")?;
    if !out.status.success() {
        bail!("gzip failed on {}", path.display());
    }
    Ok((raw, out.stdout.len() as u64))
}

/// The Worker's tests: unit tests (native), clippy for wasm32, and the
/// end-to-end tests against wrangler's local runtime.
pub fn worker_test() -> anyhow::Result<()> {
    // The end-to-end tests skip themselves without these (for a plain
    // `cargo test --ignored` on a bare machine); here they must run.
    for tool in ["worker-build", "node", "npm"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is not installed: run scripts/test-env.sh");
        }
    }
    // The crate's native unit tests run in `cargo test --workspace`.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(crate::edge::wasm_command("cargo")
        .args([
            "clippy",
            "-p",
            "kura-worker",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .args(["--all-features", "--", "-D", "warnings"])
        .current_dir(root()))?;
    install_wrangler()?;
    run(Command::new(&cargo)
        .args(["test", "-p", "kura-tests", "--test", "worker", "--"])
        // The measurement (warm_blob_request_cost) is run by hand.
        .args([
            "--ignored",
            "--test-threads=1",
            "--skip",
            "warm_blob_request_cost",
        ])
        .current_dir(root()))
}

/// The registry name to mirror `url` under: Docker Hub's hosts are
/// `docker.io`, anything else its host name (without the port).
fn upstream_name(url: &str) -> anyhow::Result<String> {
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .context("the upstream URL needs a scheme, e.g. https://ghcr.io")?
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
    .to_ascii_lowercase();
    if host.is_empty() {
        bail!("no host in upstream URL {url:?}");
    }
    Ok(match host.as_str() {
        "registry-1.docker.io" | "index.docker.io" => "docker.io".into(),
        _ => host,
    })
}

/// The Worker in wrangler's local runtime (`dev.mjs`) on
/// `127.0.0.1:<port>` mirroring `upstream` (also the default, so
/// `127.0.0.1:<port>/library/alpine:3.20` works), R2 kept in
/// `shells/worker/.wrangler/state`. Open to anyone (`ANONYMOUS_PULL`: it
/// listens on loopback only); pull tokens in `shells/worker/.dev.vars`
/// work too. wrangler builds the Worker first (the build command in
/// wrangler.toml). Runs until interrupted.
pub fn edge_dev(upstream: &str, port: u16) -> anyhow::Result<()> {
    require(
        "worker-build",
        "cargo install worker-build --version 0.8.7 --locked",
    )?;
    require("node", "install Node >= 20.3")?;
    install_wrangler()?;
    let name = upstream_name(upstream)?;
    let upstreams = format!(
        r#"[{{"name":"{name}","url":"{}","tag_ttl_secs":300}}]"#,
        upstream.trim_end_matches('/')
    );
    let dir = worker_dir();
    eprintln!(
        "xtask: the Worker will mirror {upstream} as {name} on http://127.0.0.1:{port}\n\
         xtask:   skopeo inspect --tls-verify=false docker://127.0.0.1:{port}/<repository>:<tag>\n\
         xtask:   curl http://127.0.0.1:{port}/v2/<repository>/manifests/<tag>"
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("dev.mjs"))
        .args(["--ip", "127.0.0.1"])
        .arg("--port")
        .arg(port.to_string())
        .arg("--persist-to")
        .arg(dir.join(".wrangler/state"))
        .arg("--var")
        .arg(format!("UPSTREAMS:{upstreams}"))
        .arg("--var")
        .arg(format!("DEFAULT_UPSTREAM:{name}"))
        .arg("--var")
        .arg("HOSTS:{}")
        .arg("--var")
        .arg("ANONYMOUS_PULL:true")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("WRANGLER_SEND_ERROR_REPORTS", "false")
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .current_dir(&dir);
    run(clean_env(&mut cmd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names() {
        assert_eq!(
            upstream_name("https://registry-1.docker.io").unwrap(),
            "docker.io"
        );
        assert_eq!(upstream_name("https://ghcr.io/").unwrap(), "ghcr.io");
        assert_eq!(upstream_name("http://127.0.0.1:5000").unwrap(), "127.0.0.1");
        assert!(upstream_name("ghcr.io").is_err());
    }
}
