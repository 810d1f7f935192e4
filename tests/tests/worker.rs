//! The Cloudflare Worker shell (`shells/worker`) end to end: the Worker
//! built by worker-build, running in the local Workers runtime
//! (`shells/worker/dev.mjs`: what `wrangler dev --local` runs, workerd with
//! its local R2 persisted to a temp dir, minus the devtools inspector),
//! mirroring CNCF distribution (`docker-registry`) and a lying upstream
//! (`kura_tests::faulty`), pulled with skopeo; and who may pull through it
//! (pull tokens from `.dev.vars`, where `wrangler dev` reads secrets, and
//! anonymous pull).
//!
//! Needs: `worker-build` and the wasm32 toolchain (../shared/toolchain or
//! `rustup target add wasm32-unknown-unknown`), Node >= 20.3 with npm (the
//! test runs `npm ci` in shells/worker when node_modules is missing), and
//! docker-registry + skopeo from Debian. Without worker-build or node the
//! tests pass with a message saying they were skipped.
//!
//! They are `#[ignore]`d in the plain workspace run: a cold release build of
//! the Worker takes minutes on two cores. `cargo xtask` runs them:
//! `cargo test -p kura-tests --test worker -- --ignored --test-threads=1`.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use kura_tests::api::{send_lenient, Resp};
use kura_tests::faulty::{Fault, Faulty};
use kura_tests::image::{
    layer_tar, oci_blobs, oci_ref, ImageSpec, OciLayout, XorShift, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER_TAR, OCI_MANIFEST, REF_NAME,
};
use kura_tests::peers::{Containerd, Podman, Skopeo};
use kura_tests::upstream::{Access, Distribution};
use kura_tests::{free_port, have, http_client, sha256, workspace_root};
use serde_json::json;

const MIB: usize = 1024 * 1024;
/// Small limits so that the tests exercise R2 multipart: blobs above 8 MiB
/// go in 5 MiB parts (R2's smallest).
const SINGLE_PUT_MAX: usize = 8 * MIB;
const PART: usize = 5 * MIB;
/// The Worker's answer to requests without (the right) credentials.
const CHALLENGE: &str = "Basic realm=\"kura\"";
/// Pull tokens, as an owner would `wrangler secret put` them.
const TOKEN_CI: &str = "ci-4f0c2a9d1e7b3c5a8d6e0f1a2b3c4d5e";
const TOKEN_LAPTOP: &str = "laptop-9a8b7c6d5e4f30211f2e3d4c5b6a7980";
const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

fn worker_dir() -> PathBuf {
    workspace_root().join("shells/worker")
}

/// Why the Worker cannot be built and run here, if it cannot.
fn unavailable() -> Option<String> {
    if !have("worker-build") {
        return Some(
            "worker-build is not on PATH (cargo install worker-build --version 0.8.7)".into(),
        );
    }
    if !have("node") || !have("npm") {
        return Some("node and npm are not on PATH (Node >= 20.3)".into());
    }
    None
}

/// Skip (passing, with a message) when the Worker toolchain is missing.
macro_rules! require_worker_tools {
    () => {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: the Worker tests need {why}");
            return;
        }
    };
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if std::env::var_os("KURA_WORKER_LOG").is_some() {
        eprintln!(
            "{cmd:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// shells/worker/dev.mjs (wrangler's local runtime without its inspector),
/// with wrangler in shells/worker/node_modules (`npm ci` if missing), and the
/// Worker built with the storage conformance route into `build-test/`
/// (not `build/`, which is what gets deployed). Once per test binary.
fn prepared() -> &'static Result<(PathBuf, PathBuf), String> {
    static PREPARED: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    PREPARED.get_or_init(|| {
        let dir = worker_dir();
        if !dir.join("node_modules/wrangler/bin/wrangler.js").exists() {
            run(Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir))?;
        }
        let launcher = dir.join("dev.mjs");
        // A Worker built elsewhere (the measurement below, on the deployed
        // build): `KURA_WORKER_SHIM=shells/worker/build/worker/shim.mjs`.
        if let Some(shim) = std::env::var_os("KURA_WORKER_SHIM") {
            return Ok((launcher, workspace_root().join(shim)));
        }
        let started = Instant::now();
        let mut build = Command::new("sh");
        build
            // No wasm-opt: the slowest step, and not what is tested here.
            .args(["build.sh", "--out-dir", "build-test", "--no-opt"])
            .args(["--features", "conformance"])
            .current_dir(&dir)
            // The nested cargo picks its own toolchain (see build.sh).
            .env_remove("RUSTC")
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN");
        run(&mut build)?;
        eprintln!("worker built in {:.1}s", started.elapsed().as_secs_f64());
        Ok((launcher, dir.join("build-test/worker/shim.mjs")))
    })
}

/// The Worker in wrangler's local runtime (`dev.mjs`: `wrangler dev --local`
/// without the devtools inspector, see there why) with these vars (and
/// secrets: `launch`), its R2 persisted in a temporary directory (or a
/// shared one: `start_on`), its Cron Trigger run by a GET of
/// `/__scheduled`. Killed (with workerd) on drop.
struct Worker {
    child: Option<Child>,
    url: String,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// An open mirror (`ANONYMOUS_PULL`): these tests are about the cache;
    /// who may pull is `pull_tokens_*` and `anonymous_pull_*` below.
    fn start(vars: &[(&str, String)]) -> Worker {
        Worker::start_on(vars, None)
    }

    /// With its local R2 (and everything else wrangler persists) in `state`,
    /// which other Workers may share: each is its own workerd process, so
    /// its own isolate, on one bucket.
    fn start_on(vars: &[(&str, String)], state: Option<&Path>) -> Worker {
        let mut vars = vars.to_vec();
        vars.push(("ANONYMOUS_PULL", "true".to_owned()));
        Worker::launch(&vars, &[], state)
    }

    /// With exactly these vars, and `secrets` in `.dev.vars` beside the
    /// configuration: where `wrangler dev` takes what `wrangler secret put`
    /// gives a deployed Worker.
    fn launch(vars: &[(&str, String)], secrets: &[(&str, String)], state: Option<&Path>) -> Worker {
        let (launcher, shim) = match prepared() {
            Ok(p) => p,
            Err(e) => panic!("preparing the Worker: {e}"),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut toml = format!(
            "name = \"kura-test\"\nmain = {main:?}\ncompatibility_date = \"2025-11-01\"\n\n\
             [[r2_buckets]]\nbinding = \"BUCKET\"\nbucket_name = \"kura-test\"\n\n[vars]\n",
            main = shim.display().to_string()
        );
        for (k, v) in vars {
            toml.push_str(&format!("{k} = '''{v}'''\n"));
        }
        let config = dir.path().join("wrangler.toml");
        std::fs::write(&config, &toml).expect("writing wrangler.toml");
        if !secrets.is_empty() {
            let dev_vars: String = secrets
                .iter()
                .map(|(k, v)| format!("{k}='{v}'\n"))
                .collect();
            std::fs::write(dir.path().join(".dev.vars"), dev_vars).expect("writing .dev.vars");
        }
        let port = free_port();
        let log = dir.path().join("wrangler.log");
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new("node");
        cmd.arg(launcher)
            .args(["--ip", "127.0.0.1"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--config")
            .arg(&config)
            .arg("--test-scheduled")
            .arg("--persist-to")
            .arg(state.map_or_else(|| dir.path().join("state"), Path::to_path_buf))
            .current_dir(dir.path())
            .env("WRANGLER_SEND_METRICS", "false")
            .env("WRANGLER_SEND_ERROR_REPORTS", "false")
            .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out);
        // Its own process group: wrangler and the workerd it starts go
        // together on drop.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("spawning wrangler");
        let mut w = Worker {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            port,
            log,
            _dir: dir,
        };
        w.wait_ready();
        w
    }

    /// Until the Worker answers `/v2/`: 401 with its challenge (what it
    /// answers callers without credentials, open mirror or not), 200, or
    /// the 500 of a Worker whose configuration is refused.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        kura_tests::init_crypto();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("wrangler exited with {status}; log:\n{}", self.log_text());
            }
            if let Ok(r) = client.get(format!("{}/v2/", self.url)).send() {
                let status = r.status().as_u16();
                let challenged = status == 401
                    && r.headers()
                        .get("www-authenticate")
                        .is_some_and(|v| v == CHALLENGE);
                let refused = status == 500
                    && r.text()
                        .is_ok_and(|t| t.contains("kura-worker configuration"));
                if status == 200 || challenged || refused {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the Worker did not answer within 120s; log:\n{}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// For a failure message: how the Worker answers HEADs of `paths` now
    /// (each within 10 s), one line each.
    fn probe(&self, paths: &[String]) -> String {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut out = String::new();
        for path in paths {
            let started = Instant::now();
            let answer = match client
                .head(format!("{}{path}", self.url))
                .header("Accept", ACCEPT_ALL)
                .send()
            {
                Ok(r) => r.status().to_string(),
                Err(e) => format!("no answer ({e})"),
            };
            out.push_str(&format!(
                "  HEAD {path}: {answer} after {:.1}s\n",
                started.elapsed().as_secs_f64()
            ));
        }
        out
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pids of the workerd processes of this wrangler (its process group).
    fn workerd_pids(&self) -> Vec<u32> {
        let Some(pgid) = self.child.as_ref().map(|c| c.id()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if head.contains("(workerd")
                && f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
            {
                out.push(pid);
            }
        }
        out
    }

    /// Open file descriptors of this wrangler's workerd processes, summed.
    fn workerd_fds(&self) -> usize {
        self.workerd_pids()
            .iter()
            .map(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|d| d.count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// CPU seconds used so far by the processes of this wrangler (its own
    /// process group): `(workerd, all)`. From /proc, in clock ticks.
    fn cpu_seconds(&self) -> (f64, f64) {
        let Some(pgid) = self.child.as_ref().map(|c| c.id()) else {
            return (0.0, 0.0);
        };
        let (mut workerd, mut all) = (0u64, 0u64);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ... utime(14) stime(15)
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() < 13 || f[2].parse::<u32>().ok() != Some(pgid) {
                continue;
            }
            let ticks = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
            all += ticks;
            if head.contains("(workerd") {
                workerd += ticks;
            }
        }
        let hz = 100.0; // USER_HZ on Linux
        (workerd as f64 / hz, all as f64 / hz)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The group we created: wrangler and its workerd.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.wait();
        }
        if std::thread::panicking() || std::env::var_os("KURA_WORKER_LOG").is_some() {
            eprintln!("----- wrangler log -----\n{}", self.log_text());
        }
    }
}

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// `skopeo copy` keeping digests, uncompressed layers allowed in `oci:`.
fn copy(sk: &Skopeo, extra: &[&str], src: &str, dest: &str) {
    let mut args = vec!["--preserve-digests"];
    if dest.starts_with("oci:") {
        args.push("--dest-oci-accept-uncompressed-layers");
    }
    args.extend_from_slice(extra);
    if let Err(e) = sk.copy(&args, src, dest) {
        panic!("skopeo copy {src} {dest}: {e:#}");
    }
}

fn new_access(up: &Distribution, before: usize) -> Vec<Access> {
    up.access_log().split_off(before)
}

fn blob_gets(access: &[Access]) -> Vec<&Access> {
    access
        .iter()
        .filter(|a| a.method == "GET" && a.path().contains("/blobs/sha256:"))
        .collect()
}

/// A GET of `url` (with a `Range`, if given); no response, or a body that
/// breaks off, is an answer too (see `Resp::failure`).
fn get_blob(url: &str, range: Option<&str>) -> Resp {
    let mut rb = http_client().get(url).header("accept", ACCEPT_ALL);
    if let Some(r) = range {
        rb = rb.header("range", r);
    }
    send_lenient(rb)
}

fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn limits() -> Vec<(&'static str, String)> {
    vec![
        ("R2_SINGLE_PUT_MAX_BYTES", SINGLE_PUT_MAX.to_string()),
        ("R2_PART_BYTES", PART.to_string()),
    ]
}

#[test]
#[ignore = "builds and runs the Worker (minutes cold); cargo xtask runs it"]
fn skopeo_pulls_through_the_worker_byte_identical_and_warm_pulls_stay_in_r2() {
    require_worker_tools!();
    let up = Distribution::start().unwrap();
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let src_dir = w.join("src");
    let mut src = OciLayout::create(&src_dir).unwrap();
    // 12 MiB goes through R2 multipart (5 MiB parts), the rest single puts.
    let img = src
        .add_image("v1", &ImageSpec::new(3, 300 * 1024, 901))
        .unwrap();
    let big = src
        .add_image("big", &ImageSpec::new(1, 12 * MIB, 902))
        .unwrap();
    let multi = src
        .add_index(
            "multi",
            &[
                ImageSpec::new(2, 200 * 1024, 903),
                ImageSpec::new(2, 200 * 1024, 904).platform("linux", "arm64"),
            ],
        )
        .unwrap();
    for (tag, repo, all) in [
        ("v1", "team/app:v1", false),
        ("big", "team/app:big", false),
        ("multi", "team/multi:v1", true),
    ] {
        let extra: &[&str] = if all { &["--all"] } else { &[] };
        copy(
            &sk,
            extra,
            &oci(&src_dir, tag),
            &format!("docker://{}/{repo}", up.host),
        );
    }

    let upstreams = json!([{ "name": "up.local", "url": up.url, "tag_ttl_secs": 300 }]);
    let mut vars = vec![
        ("UPSTREAMS", upstreams.to_string()),
        ("DEFAULT_UPSTREAM", String::new()),
        // Hostname routing: requests to localhost:PORT mirror up.local.
        ("HOSTS", json!({ "localhost": "up.local" }).to_string()),
    ];
    vars.extend(limits());
    let worker = Worker::start(&vars);
    let wh = worker.host();

    // kura-core's storage conformance suite against the local R2.
    let r = get_blob(&format!("{}/_kura/conformance", worker.url), None);
    assert_eq!(
        r.status,
        200,
        "storage conformance on R2: {}",
        String::from_utf8_lossy(&r.body)
    );

    // Cold pulls by path prefix: every blob fetched upstream exactly once.
    for (tag, image, repo) in [("v1", &img, "team/app"), ("big", &big, "team/app")] {
        let before = up.access_log().len();
        let dest = w.join(format!("cold-{tag}"));
        copy(
            &sk,
            &[],
            &format!("docker://{wh}/up.local/{repo}:{tag}"),
            &oci(&dest, tag),
        );
        assert_eq!(oci_ref(&dest, tag).unwrap().digest, image.manifest.digest);
        assert_eq!(oci_blobs(&dest).unwrap(), image.all_digests());
        let access = new_access(&up, before);
        let mut wanted: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
        wanted.push(&image.config.digest);
        for d in wanted {
            let n = blob_gets(&access)
                .iter()
                .filter(|a| a.path() == format!("/v2/{repo}/blobs/{d}"))
                .count();
            assert_eq!(
                n, 1,
                "cold pull of {tag}: {d} fetched {n} times: {access:#?}"
            );
        }
    }

    // Warm pulls, by hostname this time (localhost:PORT/team/app): the same
    // cached repository, and nothing from upstream (tags within their TTL).
    for (tag, image) in [("v1", &img), ("big", &big)] {
        let before = up.access_log().len();
        let dest = w.join(format!("warm-{tag}"));
        copy(
            &sk,
            &[],
            &format!("docker://localhost:{}/team/app:{tag}", worker.port),
            &oci(&dest, tag),
        );
        assert_eq!(oci_ref(&dest, tag).unwrap().digest, image.manifest.digest);
        assert_eq!(oci_blobs(&dest).unwrap(), image.all_digests());
        let access = new_access(&up, before);
        assert!(
            access.is_empty(),
            "warm pull of {tag} asked the upstream: {access:#?}"
        );
    }

    // The two-platform index, --all: cold, then warm with no blob GETs.
    let before = up.access_log().len();
    let cold = w.join("multi-cold");
    copy(
        &sk,
        &["--all"],
        &format!("docker://{wh}/up.local/team/multi:v1"),
        &oci(&cold, "v1"),
    );
    assert_eq!(oci_ref(&cold, "v1").unwrap().digest, multi.index.digest);
    assert_eq!(oci_blobs(&cold).unwrap(), multi.all_digests());
    let cold_access = new_access(&up, before);
    let fetched: BTreeSet<&str> = blob_gets(&cold_access).iter().map(|a| a.path()).collect();
    assert_eq!(
        fetched.len(),
        blob_gets(&cold_access).len(),
        "a blob was fetched twice: {cold_access:#?}"
    );
    let before = up.access_log().len();
    let warm = w.join("multi-warm");
    copy(
        &sk,
        &["--all"],
        &format!("docker://{wh}/up.local/team/multi:v1"),
        &oci(&warm, "v1"),
    );
    assert_eq!(oci_blobs(&warm).unwrap(), multi.all_digests());
    let warm_access = new_access(&up, before);
    assert!(
        blob_gets(&warm_access).is_empty(),
        "warm --all pull fetched blobs upstream: {warm_access:#?}"
    );

    // Tag lists come from the upstream, named as the client asked, for
    // skopeo as for a plain GET (the core's rule, in the Worker too).
    let out = sk
        .run(&[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{wh}/up.local/team/app"),
        ])
        .unwrap();
    let tags: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(tags["Tags"], json!(["big", "v1"]), "{tags}");
    let client = http_client();
    let list = client
        .get(format!("{}/v2/up.local/team/app/tags/list", worker.url))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["name"], "up.local/team/app");
    // A manifest reference that is neither tag nor digest: 404.
    let r = client
        .get(format!(
            "{}/v2/up.local/team/app/manifests/.INVALID_MANIFEST_NAME",
            worker.url
        ))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // A blob cached for team/app is not served through a repository the
    // upstream does not have it in.
    let r = client
        .get(format!(
            "{}/v2/up.local/team/multi/blobs/{}",
            worker.url, img.layers[0].digest
        ))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "served under another repository");

    // A warm blob straight from R2: byte-identical, marked a hit.
    let layer = &big.layers[0];
    let r = get_blob(
        &format!("{}/v2/up.local/team/app/blobs/{}", worker.url, layer.digest),
        None,
    );
    assert_eq!((r.status, r.cache()), (200, "hit"), "{:?}", r.failure);
    assert_eq!(
        (r.body.len() as u64, &r.digest()),
        (layer.size, &layer.digest)
    );
    let r = get_blob(
        &format!("{}/v2/up.local/team/app/blobs/{}", worker.url, layer.digest),
        Some("bytes=5242870-5242889"),
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body.len(), 20, "a range across the first part boundary");
    let log = worker.log_text();
    assert!(!log.contains("panicked"), "the Worker panicked:\n{log}");
}

/// An OCI layout at `dir` holding one image tagged `tag` whose layers have
/// these sizes (uncompressed tars of pseudo-random bytes from `seed`).
/// Returns the manifest's digest and every digest of the image.
fn image_with_layers(
    dir: &Path,
    tag: &str,
    sizes: &[usize],
    seed: u64,
) -> (String, String, BTreeSet<String>) {
    let layout = OciLayout::create(dir).unwrap();
    let layers: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(n, &size)| {
            let tar = layer_tar(n, size, seed + n as u64);
            layout.write_blob(OCI_LAYER_TAR, &tar).unwrap()
        })
        .collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.digest.as_str()).collect::<Vec<_>>(),
        },
    });
    let config = layout
        .write_blob(OCI_CONFIG, &serde_json::to_vec(&config).unwrap())
        .unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": layers.iter().map(|l| l.to_json()).collect::<Vec<_>>(),
    });
    let manifest = layout
        .write_blob(OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap())
        .unwrap();
    let mut reference = manifest.to_json();
    reference["annotations"] = json!({ REF_NAME: tag });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [reference],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let mut all: BTreeSet<String> = layers.into_iter().map(|l| l.digest).collect();
    all.insert(config.digest.clone());
    all.insert(manifest.digest.clone());
    (manifest.digest, config.digest, all)
}

/// Isolates on one bucket: two Workers, each its own workerd process (the
/// local runtime runs one isolate per Worker; two processes on one
/// persisted R2 are the closest it comes to many isolates at one location),
/// share the lease of a fill in R2. Four clients, spread over both, ask for
/// a blob the upstream is slow to send: one upstream GET, four right
/// bodies. Then a Cron Trigger run on one Worker evicts least recently
/// used first under MAX_SIZE, by the uses both recorded: the blob the
/// other Worker served last stays.
#[test]
#[ignore = "builds and runs the Worker (minutes cold); cargo xtask runs it"]
fn isolates_on_one_bucket_fill_a_blob_once_and_a_cron_run_evicts_by_their_uses() {
    require_worker_tools!();
    let f = Faulty::start().unwrap();
    let upstreams = json!([{ "name": "up.local", "url": f.url }]);
    let mut vars = vec![
        ("UPSTREAMS", upstreams.to_string()),
        ("DEFAULT_UPSTREAM", "up.local".to_owned()),
        ("MAX_SIZE", (12 * MIB).to_string()),
        ("EVICTION_GRACE_SECS", "0".to_owned()),
    ];
    vars.extend(limits());
    let state = tempfile::tempdir().unwrap();
    let workers = [
        Worker::start_on(&vars, Some(state.path())),
        Worker::start_on(&vars, Some(state.path())),
    ];
    let url = |w: usize, d: &str| format!("{}/v2/team/fleet/blobs/{d}", workers[w].url);

    // 9 MiB (R2 multipart), the upstream stalling after 1 MiB until told.
    let data = XorShift::new(931).bytes(9 * MIB);
    let big = f.add_blob(data);
    f.set_fault(&big, Fault::Stall { after: MIB as u64 });
    let barrier = Arc::new(Barrier::new(4));
    let clients: Vec<_> = [0, 1, 1, 0]
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let (url, barrier) = (url(w, &big), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                // The leader first, the others once its lease is in R2.
                std::thread::sleep(Duration::from_millis(300 * i as u64));
                get_blob(&url, None)
            })
        })
        .collect();
    assert!(eventually(20, || f.blob_gets("team/fleet", &big) == 1));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        f.blob_gets("team/fleet", &big),
        1,
        "the other Worker asked the upstream too while the fill was stalled"
    );
    f.clear_fault(&big);
    for (i, c) in clients.into_iter().enumerate() {
        let r = c.join().unwrap();
        assert_eq!(r.status, 200, "client {i}: {:?}", r.failure);
        assert!(r.failure.is_none(), "client {i}: {:?}", r.failure);
        assert_eq!(r.digest(), big, "client {i}: wrong bytes");
    }
    assert_eq!(f.blob_gets("team/fleet", &big), 1, "one upstream GET");
    for w in 0..2 {
        let r = get_blob(&url(w, &big), None);
        assert_eq!((r.status, r.cache()), (200, "hit"), "worker {w}");
    }

    // 9 + 3 × 5 MiB cached, in the order big, x, y, z (x and z filled by
    // the first Worker, y by the second); then x served by the second.
    let small: Vec<String> = (0..3)
        .map(|n| f.add_blob(XorShift::new(940 + n).bytes(5 * MIB)))
        .collect();
    let (x, y, z) = (&small[0], &small[1], &small[2]);
    for (w, d) in [(0, x), (1, y), (0, z), (1, x)] {
        std::thread::sleep(Duration::from_millis(50));
        let r = get_blob(&url(w, d), None);
        assert_eq!((r.status, &r.digest()), (200, d));
        assert!(r.failure.is_none(), "{:?}", r.failure);
    }
    let gets = |d: &str| f.blob_gets("team/fleet", d);
    assert_eq!((gets(x), gets(y), gets(z)), (1, 1, 1));
    // 24 MiB over a 12 MiB bound: big (9) and y (5) go, least recently
    // used first; x stays, used last on the Worker that is not evicting.
    let cron = http_client()
        .get(format!("{}/__scheduled?cron=*+*+*+*+*", workers[0].url))
        .send()
        .expect("running the Cron Trigger");
    assert_eq!(cron.status().as_u16(), 200);
    assert!(
        eventually(20, || workers[0].log_text().contains("eviction pass")),
        "no eviction pass logged:\n{}",
        workers[0].log_text()
    );
    for (d, kept) in [(&big, false), (x, true), (y, false), (z, true)] {
        let before = gets(d);
        let r = get_blob(&url(1, d), None);
        assert_eq!((r.status, &r.digest()), (200, d));
        let (cache, refetched) = (r.cache(), gets(d) > before);
        assert_eq!(
            (cache == "hit", refetched),
            (kept, !kept),
            "{d}: expected {} ({cache}); log:\n{}",
            if kept { "kept" } else { "evicted" },
            workers[0].log_text()
        );
    }
}

/// A real-sized image: four layers of 80 to 125 MiB, pulled cold by skopeo
/// (which fetches them at once, so four fills run together). The small
/// blobs of the other tests hid that each fill used to cost workerd
/// thousands of sockets (see `split.rs`): a pull like this one ran it out
/// of file descriptors and hung. Checks the bytes, that each layer came
/// from upstream once and ends up in R2, and that workerd's open file
/// descriptors stay bounded while the pull runs.
#[test]
#[ignore = "builds and runs the Worker (minutes cold); cargo xtask runs it"]
fn a_large_multi_layer_image_pulls_through_the_worker_with_bounded_fds() {
    require_worker_tools!();
    /// Far above what a pull needs once fixed (tens to a few hundred), far
    /// below workerd's 20,000 and the thousands per fill seen before.
    const MAX_WORKERD_FDS: usize = 2000;
    /// A pull that takes longer is taken as hung.
    const PULL_DEADLINE: Duration = Duration::from_secs(240);
    let up = Distribution::start().unwrap();
    let sk = Skopeo::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let src = w.join("src");
    // 410 MiB. The two 125 MiB layers go through R2 multipart (32 MiB
    // parts), the two of 80 MiB are single puts.
    let sizes = [125 * MIB, 80 * MIB, 125 * MIB, 80 * MIB];
    let (manifest, config, digests) = image_with_layers(&src, "v1", &sizes, 941);
    copy(
        &sk,
        &[],
        &oci(&src, "v1"),
        &format!("docker://{}/team/large:v1", up.host),
    );
    let upstreams = json!([{ "name": "up.local", "url": up.url, "tag_ttl_secs": 300 }]);
    let worker = Worker::start(&[
        ("UPSTREAMS", upstreams.to_string()),
        ("DEFAULT_UPSTREAM", "up.local".to_owned()),
        ("R2_SINGLE_PUT_MAX_BYTES", (100 * MIB).to_string()),
        ("R2_PART_BYTES", (32 * MIB).to_string()),
    ]);
    assert!(
        !worker.workerd_pids().is_empty(),
        "no workerd process found in wrangler's process group"
    );
    let idle_fds = worker.workerd_fds();

    let dest = w.join("pulled");
    let out = std::fs::File::create(w.join("skopeo.log")).unwrap();
    let started = Instant::now();
    let mut pull = sk
        .command()
        // --debug: if the pull hangs, the log says which request it waits on.
        .args([
            "--debug",
            "copy",
            "--src-tls-verify=false",
            "--preserve-digests",
        ])
        .arg("--dest-oci-accept-uncompressed-layers")
        .arg(format!("docker://{}/team/large:v1", worker.host()))
        .arg(oci(&dest, "v1"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawning skopeo");
    let mut peak_fds = idle_fds;
    let status = loop {
        if let Some(status) = pull.try_wait().unwrap() {
            break status;
        }
        let fds = worker.workerd_fds();
        peak_fds = peak_fds.max(fds);
        let failure = if fds > MAX_WORKERD_FDS {
            Some(format!(
                "workerd has {fds} open file descriptors (idle: {idle_fds})"
            ))
        } else if started.elapsed() > PULL_DEADLINE {
            Some(format!("the pull did not finish within {PULL_DEADLINE:?}"))
        } else {
            None
        };
        if let Some(why) = failure {
            let probes = worker.probe(&[
                "/v2/".to_owned(),
                "/v2/team/large/manifests/v1".to_owned(),
                format!("/v2/team/large/blobs/{config}"),
            ]);
            let _ = pull.kill();
            let _ = pull.wait();
            panic!(
                "{why}, {:.0}s into the pull; the Worker now answers:\n{probes}skopeo:\n{}",
                started.elapsed().as_secs_f64(),
                std::fs::read_to_string(w.join("skopeo.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    assert!(
        status.success(),
        "skopeo copy failed ({status}):\n{}",
        std::fs::read_to_string(w.join("skopeo.log")).unwrap_or_default()
    );
    eprintln!(
        "cold pull of {} MiB: {:.1}s, workerd fds idle {idle_fds}, peak {peak_fds}",
        sizes.iter().sum::<usize>() / MIB,
        took.as_secs_f64()
    );
    assert_eq!(oci_ref(&dest, "v1").unwrap().digest, manifest);
    assert_eq!(oci_blobs(&dest).unwrap(), digests);

    // Every blob is now served from R2, and was fetched upstream once.
    for d in digests.iter().filter(|d| **d != manifest) {
        let url = format!("{}/v2/team/large/blobs/{d}", worker.url);
        assert!(
            eventually(30, || get_blob(&url, Some("bytes=0-0")).cache() == "hit"),
            "{d} is not served from R2"
        );
        let access = up.access_log();
        let n = blob_gets(&access)
            .iter()
            .filter(|a| a.path() == format!("/v2/team/large/blobs/{d}"))
            .count();
        assert_eq!(n, 1, "{d} fetched {n} times upstream");
    }
    let log = worker.log_text();
    assert!(!log.contains("panicked"), "the Worker panicked:\n{log}");
}

#[test]
#[ignore = "builds and runs the Worker (minutes cold); cargo xtask runs it"]
fn a_lying_upstream_is_never_cached_and_fills_are_single_flight() {
    require_worker_tools!();
    let f = Faulty::start().unwrap();
    // 3 MiB: one R2 put with its sha256 check; 10 MiB: multipart, checked
    // by a DigestStream before the upload completes.
    let img = f.add_image("team/lie", "v1", &[3 * MIB, 10 * MIB, 256 * 1024], 911);
    let upstreams = json!([{
        "name": "up.local", "url": f.url, "tag_ttl_secs": 1, "max_stale_secs": 3600,
    }]);
    let mut vars = vec![
        ("UPSTREAMS", upstreams.to_string()),
        ("DEFAULT_UPSTREAM", "up.local".to_owned()),
    ];
    vars.extend(limits());
    let worker = Worker::start(&vars);
    let blob_url = |d: &str| format!("{}/v2/team/lie/blobs/{d}", worker.url);

    // Wrong bytes for a digest, and a body cut short: whatever the client
    // got, nothing lands in R2. Asked twice while broken: both go upstream.
    let (small, large, last) = (&img.layers[0], &img.layers[1], &img.layers[2]);
    for (layer, fault) in [
        (small, Fault::WrongBytes),
        (large, Fault::WrongBytes),
        (last, Fault::Truncate { at: last.size / 3 }),
    ] {
        f.set_fault(&layer.digest, fault.clone());
        for attempt in 1..=2 {
            let r = get_blob(&blob_url(&layer.digest), None);
            assert!(
                !(r.status == 200 && r.failure.is_none() && r.digest() == layer.digest),
                "{fault:?} attempt {attempt}: the client got the right blob from a lying upstream"
            );
            assert_ne!(r.cache(), "hit", "{fault:?}: served from R2");
            // Let the fill settle before the next attempt.
            let gets = f.blob_gets("team/lie", &layer.digest);
            assert_eq!(gets, attempt, "{fault:?}: upstream GETs");
            std::thread::sleep(Duration::from_millis(500));
        }
        f.clear_fault(&layer.digest);
        // Healed: a miss (so nothing was cached), right bytes, then a hit.
        let r = get_blob(&blob_url(&layer.digest), None);
        assert_eq!(
            (r.status, r.cache()),
            (200, "miss"),
            "{fault:?}: {:?}",
            r.failure
        );
        assert!(r.failure.is_none(), "{fault:?}: {:?}", r.failure);
        assert_eq!(
            (r.body.len() as u64, &r.digest()),
            (layer.size, &layer.digest)
        );
        let gets = f.blob_gets("team/lie", &layer.digest);
        assert!(
            eventually(20, || get_blob(&blob_url(&layer.digest), None).cache()
                == "hit"),
            "{fault:?}: never became a hit"
        );
        let r = get_blob(&blob_url(&layer.digest), None);
        assert_eq!((r.status, &r.digest()), (200, &layer.digest));
        assert_eq!(
            f.blob_gets("team/lie", &layer.digest),
            gets,
            "a hit went upstream"
        );
    }

    // Single flight: four clients for one uncached blob while the upstream
    // stalls after 1 MiB. One upstream GET; all four get the right bytes.
    let data = XorShift::new(912).bytes(9 * MIB);
    let d = f.add_blob(data);
    f.set_fault(&d, Fault::Stall { after: MIB as u64 });
    let barrier = Arc::new(Barrier::new(4));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (url, barrier) = (blob_url(&d), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                // The leader first, the followers a moment later.
                std::thread::sleep(Duration::from_millis(200 * i));
                get_blob(&url, None)
            })
        })
        .collect();
    assert!(eventually(20, || f.blob_gets("team/lie", &d) == 1));
    std::thread::sleep(Duration::from_secs(2));
    f.clear_fault(&d);
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!(
            (r.status, &r.digest()),
            (200, &d),
            "{:?} {}",
            r.failure,
            r.cache()
        );
    }
    assert_eq!(f.blob_gets("team/lie", &d), 1, "single flight");

    // The same for a manifest by tag: the Worker lets one request at a time
    // work on a tag, so there is one upstream GET.
    f.add_manifest(
        "team/lie",
        Some("v2"),
        OCI_MANIFEST,
        img.manifest_bytes.clone(),
    );
    f.set_fault("v2", Fault::Stall { after: 10 });
    let murl2 = format!("{}/v2/team/lie/manifests/v2", worker.url);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = murl2.clone();
            std::thread::spawn(move || get_blob(&url, None))
        })
        .collect();
    assert!(eventually(20, || f
        .count("GET", "/v2/team/lie/manifests/v2")
        == 1));
    std::thread::sleep(Duration::from_millis(700));
    f.clear_fault("v2");
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!(
            (r.status, &r.digest()),
            (200, &img.manifest.digest),
            "{:?}",
            r.failure
        );
    }
    assert_eq!(
        f.count("GET", "/v2/team/lie/manifests/v2"),
        1,
        "manifest single flight"
    );

    // HEAD of an uncached blob: the upstream's HEAD, no GET, nothing stored.
    let d2 = f.add_blob(XorShift::new(913).bytes(100_000));
    let r = http_client().head(blob_url(&d2)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(f.blob_gets("team/lie", &d2), 0);
    // A range of an uncached blob: stored whole, the range served from R2.
    let r = get_blob(&blob_url(&d2), Some("bytes=10-19"));
    assert_eq!(r.status, 206, "{:?}", r.failure);
    assert_eq!(r.body, XorShift::new(913).bytes(100_000)[10..20]);
    assert_eq!(f.blob_gets("team/lie", &d2), 1);
    assert_eq!(get_blob(&blob_url(&d2), None).cache(), "hit");

    // Tags: a miss, a hit within the TTL, a HEAD revalidation after it, and
    // the cached manifest (marked stale) while the upstream fails.
    let murl = format!("{}/v2/team/lie/manifests/v1", worker.url);
    let manifest = |want: &str| {
        let r = get_blob(&murl, None);
        assert_eq!((r.status, r.cache()), (200, want), "{:?}", r.failure);
        assert_eq!(r.digest(), img.manifest.digest);
    };
    manifest("miss");
    manifest("hit");
    std::thread::sleep(Duration::from_millis(1500));
    manifest("revalidated");
    assert_eq!(f.count("HEAD", "/v2/team/lie/manifests/v1"), 1);
    assert_eq!(f.count("GET", "/v2/team/lie/manifests/v1"), 1);
    f.set_fault(
        "v1",
        Fault::Status {
            code: 503,
            retry_after: None,
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    let r = http_client()
        .get(&murl)
        .header("accept", ACCEPT_ALL)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-kura-cache"], "stale");
    assert!(r.headers().contains_key("warning"));
    assert_eq!(sha256(&r.bytes().unwrap()), img.manifest.digest);

    // Writes are refused at the edge.
    let r = http_client()
        .post(format!("{}/v2/team/lie/blobs/uploads/", worker.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let log = worker.log_text();
    assert!(!log.contains("panicked"), "the Worker panicked:\n{log}");
}

/// `Authorization` for `user:password` with HTTP Basic, as reqwest
/// encodes it.
fn basic(user: &str, password: &str) -> String {
    let req = http_client()
        .get("http://127.0.0.1/")
        .basic_auth(user, Some(password))
        .build()
        .unwrap();
    req.headers()["authorization"].to_str().unwrap().to_owned()
}

/// A GET of `url` with this `Authorization` (none for `None`).
fn get_as(url: &str, authorization: Option<&str>) -> Resp {
    let mut rb = http_client().get(url).header("accept", ACCEPT_ALL);
    if let Some(a) = authorization {
        rb = rb.header("authorization", a);
    }
    send_lenient(rb)
}

/// Docker distribution holding `team/private:v1` (two small layers), and
/// the image.
fn upstream_with_private_image(seed: u64) -> (Distribution, kura_tests::image::Image) {
    let up = Distribution::start().unwrap();
    let sk = Skopeo::new().unwrap();
    let src = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(src.path()).unwrap();
    let img = layout
        .add_image("v1", &ImageSpec::new(2, 200 * 1024, seed))
        .unwrap();
    copy(
        &sk,
        &[],
        &oci(src.path(), "v1"),
        &format!("docker://{}/team/private:v1", up.host),
    );
    (up, img)
}

/// Requests the upstream got for `team/private` since `before`.
fn private_requests(up: &Distribution, before: usize) -> Vec<Access> {
    new_access(up, before)
        .into_iter()
        .filter(|a| a.path().starts_with("/v2/team/private"))
        .collect()
}

/// The Worker's default as documented: `PULL_TOKENS` set with `wrangler
/// secret put` (here `.dev.vars`), no anonymous pull. Without a token, or
/// with a wrong one, every path answers 401 with the Basic challenge
/// clients need to send theirs, and nothing reaches the upstream (or R2);
/// with a token (Basic password under any user name, any spelling of the
/// scheme, or Bearer) the pull works end to end, for curl-like requests
/// and for skopeo with `--creds`.
#[test]
#[ignore = "builds and runs the Worker (minutes cold); cargo xtask runs it"]
fn pull_tokens_keep_strangers_out_and_let_holders_pull() {
    require_worker_tools!();
    let (up, img) = upstream_with_private_image(951);
    let upstreams = json!([{ "name": "up.local", "url": up.url, "tag_ttl_secs": 300 }]);
    let tokens = json!({ "ci": TOKEN_CI, "laptop": TOKEN_LAPTOP });
    let worker = Worker::launch(
        &[
            ("UPSTREAMS", upstreams.to_string()),
            ("DEFAULT_UPSTREAM", "up.local".to_owned()),
        ],
        &[("PULL_TOKENS", tokens.to_string())],
        None,
    );
    let manifest = format!("{}/v2/team/private/manifests/v1", worker.url);
    let blob = |d: &str| format!("{}/v2/team/private/blobs/{d}", worker.url);
    let before = up.access_log().len();

    // Strangers: 401 and the challenge everywhere, the metrics included.
    let wrong = [
        None,
        Some(basic("ci", "ci-not-the-token-0123456789abcdef")),
        Some(format!("Bearer {TOKEN_CI}x")),
        // The token as the user name is not the token as the password.
        Some(basic(TOKEN_CI, "")),
        Some(format!("Token {TOKEN_CI}")),
    ];
    for auth in &wrong {
        for url in [
            format!("{}/v2/", worker.url),
            manifest.clone(),
            blob(&img.layers[0].digest),
            format!("{}/metrics", worker.url),
        ] {
            let r = get_as(&url, auth.as_deref());
            assert_eq!(r.status, 401, "{url} with {auth:?}");
            assert_eq!(
                r.header("www-authenticate"),
                Some(CHALLENGE),
                "{url} with {auth:?}"
            );
            assert_eq!(r.json()["errors"][0]["code"], "UNAUTHORIZED", "{url}");
        }
    }
    let r = http_client().head(&manifest).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        private_requests(&up, before).is_empty(),
        "a refused request reached the upstream: {:#?}",
        private_requests(&up, before)
    );
    // Pushes are refused as before: the mirror is read-only for everyone.
    let r = http_client()
        .post(format!("{}/v2/team/private/blobs/uploads/", worker.url))
        .header("authorization", format!("Bearer {TOKEN_CI}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);

    // Holders: the version check, then the pull through to the upstream.
    let r = get_as(
        &format!("{}/v2/", worker.url),
        Some(&basic("any", TOKEN_CI)),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let upper = basic("x", TOKEN_LAPTOP).replacen("Basic", "BASIC", 1);
    let r = get_as(&manifest, Some(&upper));
    assert_eq!((r.status, r.cache()), (200, "miss"), "{:?}", r.failure);
    assert_eq!(r.digest(), img.manifest.digest);
    for (d, auth) in [
        (&img.layers[0].digest, format!("Bearer {TOKEN_CI}")),
        (&img.layers[1].digest, format!("bearer {TOKEN_LAPTOP}")),
        (
            &img.config.digest,
            basic("", TOKEN_CI).replacen("Basic", "basic", 1),
        ),
    ] {
        let r = get_as(&blob(d), Some(&auth));
        assert_eq!(r.status, 200, "{d} with {auth}: {:?}", r.failure);
        assert_eq!(&r.digest(), d, "{auth}");
    }
    let r = get_as(
        &format!("{}/metrics", worker.url),
        Some(&format!("Bearer {TOKEN_CI}")),
    );
    assert_eq!(r.status, 200);

    // skopeo: refused without credentials, byte-identical with them.
    let sk = Skopeo::new().unwrap();
    let src = format!("docker://{}/team/private:v1", worker.host());
    let e = sk
        .run(&["inspect", "--tls-verify=false", &src])
        .expect_err("skopeo inspected without credentials");
    let e = format!("{e:#}").to_ascii_lowercase();
    assert!(e.contains("401") || e.contains("unauthorized"), "{e}");
    let creds = format!("x:{TOKEN_CI}");
    let out = sk
        .run(&["inspect", "--tls-verify=false", "--creds", &creds, &src])
        .unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out["Digest"], img.manifest.digest.as_str());
    let dest = tempfile::tempdir().unwrap();
    copy(&sk, &["--src-creds", &creds], &src, &oci(dest.path(), "v1"));
    assert_eq!(
        oci_ref(dest.path(), "v1").unwrap().digest,
        img.manifest.digest
    );
    assert_eq!(oci_blobs(dest.path()).unwrap(), img.all_digests());
    let log = worker.log_text();
    assert!(!log.contains(TOKEN_CI), "a token in the log:\n{log}");
    assert!(!log.contains("panicked"), "the Worker panicked:\n{log}");
}

/// `ANONYMOUS_PULL = "true"`: anyone pulls, skopeo without credentials
/// too (it answers the Basic challenge with empty ones); tokens still
/// work, and a wrong token is still refused.
#[test]
#[ignore = "builds and runs the Worker (minutes cold); cargo xtask runs it"]
fn anonymous_pull_lets_anyone_pull() {
    require_worker_tools!();
    let (up, img) = upstream_with_private_image(952);
    let upstreams = json!([{ "name": "up.local", "url": up.url, "tag_ttl_secs": 300 }]);
    let worker = Worker::launch(
        &[
            ("UPSTREAMS", upstreams.to_string()),
            ("DEFAULT_UPSTREAM", "up.local".to_owned()),
            ("ANONYMOUS_PULL", "true".to_owned()),
        ],
        &[("PULL_TOKENS", TOKEN_CI.to_owned())],
        None,
    );
    let manifest = format!("{}/v2/team/private/manifests/v1", worker.url);
    let r = get_as(&manifest, None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.digest(), img.manifest.digest);
    let layer = format!(
        "{}/v2/team/private/blobs/{}",
        worker.url, img.layers[0].digest
    );
    let r = get_as(&layer, None);
    assert_eq!(r.status, 200, "{:?}", r.failure);
    assert_eq!(r.digest(), img.layers[0].digest);
    assert_eq!(get_as(&layer, Some(&basic("x", TOKEN_CI))).status, 200);
    let r = get_as(&layer, Some(&format!("Bearer {TOKEN_LAPTOP}")));
    assert_eq!(r.status, 401, "a wrong token is refused, not ignored");
    // Like the binary, /v2/ challenges callers without credentials (so
    // that clients that have some send them); the metrics are open.
    let r = get_as(&format!("{}/v2/", worker.url), None);
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some(CHALLENGE))
    );
    assert_eq!(get_as(&format!("{}/metrics", worker.url), None).status, 200);

    let sk = Skopeo::new().unwrap();
    let dest = tempfile::tempdir().unwrap();
    copy(
        &sk,
        &[],
        &format!("docker://{}/team/private:v1", worker.host()),
        &oci(dest.path(), "v1"),
    );
    assert_eq!(oci_blobs(dest.path()).unwrap(), img.all_digests());
}

/// containerd, as nodes pull: from the Worker by name with `ctr --user`
/// (containerd answers the Basic challenge), and through the Worker as
/// the mirror of another registry in `hosts.toml`, with the token in a
/// static `Authorization` header of the mirror's entry (what the README
/// tells node owners to write).
#[test]
#[ignore = "builds and runs the Worker (minutes cold); cargo xtask runs it"]
fn containerd_pulls_with_a_token_as_user_and_from_hosts_toml() {
    require_worker_tools!();
    let (up, img) = upstream_with_private_image(954);
    let upstreams = json!([{ "name": "up.local", "url": up.url }]);
    let worker = Worker::launch(
        &[
            ("UPSTREAMS", upstreams.to_string()),
            ("DEFAULT_UPSTREAM", "up.local".to_owned()),
        ],
        &[("PULL_TOKENS", json!({ "nodes": TOKEN_CI }).to_string())],
        None,
    );
    let ctrd = Containerd::start().unwrap();
    let pulled = |reference: &str| {
        let images = ctrd.ctr(&["image", "ls"]).unwrap();
        images
            .lines()
            .any(|l| l.starts_with(reference) && l.contains(&img.manifest.digest))
    };

    // hosts.toml: up.local mirrored by the Worker. The server itself is
    // unreachable, so only the mirror can answer.
    let hosts = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(hosts.path().join("up.local")).unwrap();
    let write_hosts = |token: &str| {
        let mirror = format!("http://{}", worker.host());
        let toml = format!(
            "server = \"http://127.0.0.1:1\"\n\n\
             [host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"{mirror}\".header]\n  authorization = \"Bearer {token}\"\n"
        );
        std::fs::write(hosts.path().join("up.local/hosts.toml"), toml).unwrap();
    };
    let hosts_dir = hosts.path().display().to_string();
    let mirrored = "up.local/team/private:v1";
    write_hosts("not-a-token-0123456789abcdef");
    let e = ctrd
        .ctr(&["image", "pull", "--hosts-dir", &hosts_dir, mirrored])
        .expect_err("containerd pulled through the mirror with a wrong token");
    assert!(!pulled(mirrored), "{e:#}");
    write_hosts(TOKEN_CI);
    ctrd.ctr(&["image", "pull", "--hosts-dir", &hosts_dir, mirrored])
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_text()));
    assert!(pulled(mirrored), "{}", ctrd.ctr(&["image", "ls"]).unwrap());

    // By the Worker's own name: refused without credentials, pulled with
    // `--user`.
    let direct = format!("{}/team/private:v1", worker.host());
    let e = ctrd
        .ctr(&["image", "pull", "--plain-http", &direct])
        .expect_err("containerd pulled without credentials");
    let e = format!("{e:#}").to_ascii_lowercase();
    assert!(e.contains("401") || e.contains("unauthorized"), "{e}");
    let user = format!("anyone:{TOKEN_CI}");
    ctrd.ctr(&["image", "pull", "--plain-http", "--user", &user, &direct])
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_text()));
    assert!(pulled(&direct), "{}", ctrd.ctr(&["image", "ls"]).unwrap());
}

/// podman with the Worker as the mirror of another registry in
/// `registries.conf`: the token given by `podman login` to the Worker's
/// host is sent to the mirror, as the README says.
#[test]
#[ignore = "builds and runs the Worker (minutes cold); cargo xtask runs it"]
fn podman_pulls_through_the_worker_as_a_mirror_after_podman_login() {
    require_worker_tools!();
    let (up, img) = upstream_with_private_image(955);
    let upstreams = json!([{ "name": "up.local", "url": up.url }]);
    let worker = Worker::launch(
        &[
            ("UPSTREAMS", upstreams.to_string()),
            ("DEFAULT_UPSTREAM", String::new()),
        ],
        &[("PULL_TOKENS", TOKEN_CI.to_owned())],
        None,
    );
    let podman = Podman::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "unqualified-search-registries = []\n\n[[registry]]\nprefix = \"up.local\"\n\
             location = \"up.local\"\n[[registry.mirror]]\nlocation = \"{}/up.local\"\n\
             insecure = true\n",
            worker.host()
        ),
    )
    .unwrap();
    let authfile = dir.path().join("auth.json");
    std::fs::write(&authfile, r#"{"auths": {}}"#).unwrap();
    let authfile = authfile.to_str().unwrap();
    let podman_run = |args: &[&str]| -> Result<Vec<u8>, String> {
        let out = podman
            .command()
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let reference = "up.local/team/private:v1";
    // Not logged in: the mirror refuses, and up.local itself does not
    // resolve.
    let e = podman_run(&["pull", "--quiet", "--authfile", authfile, reference])
        .expect_err("podman pulled without a token")
        .to_ascii_lowercase();
    assert!(e.contains("401") || e.contains("unauthorized"), "{e}");
    podman_run(&[
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "--username",
        "podman",
        "--password",
        TOKEN_CI,
        &worker.host(),
    ])
    .unwrap_or_else(|e| panic!("podman login: {e}"));
    podman_run(&["pull", "--quiet", "--authfile", authfile, reference])
        .unwrap_or_else(|e| panic!("podman pull: {e}"));
    let out = podman_run(&["image", "inspect", "--format", "{{.Digest}}", reference]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        img.manifest.digest.as_str()
    );
}

/// Neither `PULL_TOKENS` nor `ANONYMOUS_PULL`: no silent open mirror. Every
/// request gets a 500 telling the owner what to set, and nothing reaches
/// the upstream.
#[test]
#[ignore = "builds and runs the Worker (minutes cold); cargo xtask runs it"]
fn a_worker_that_says_nothing_about_access_refuses_to_serve() {
    require_worker_tools!();
    let (up, _img) = upstream_with_private_image(953);
    let upstreams = json!([{ "name": "up.local", "url": up.url }]);
    let worker = Worker::launch(
        &[
            ("UPSTREAMS", upstreams.to_string()),
            ("DEFAULT_UPSTREAM", "up.local".to_owned()),
        ],
        &[],
        None,
    );
    let before = up.access_log().len();
    for path in ["/v2/", "/v2/team/private/manifests/v1", "/metrics"] {
        for auth in [None, Some(format!("Bearer {TOKEN_CI}"))] {
            let r = get_as(&format!("{}{path}", worker.url), auth.as_deref());
            assert_eq!(r.status, 500, "{path}");
            let message = r.json()["errors"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            for needle in ["wrangler secret put PULL_TOKENS", "ANONYMOUS_PULL"] {
                assert!(message.contains(needle), "{path}: {message}");
            }
        }
    }
    assert!(private_requests(&up, before).is_empty());
}

/// Not a pass/fail test: what a warm blob request costs the local runtime.
/// Prints wall time per request (sequential, keep-alive) and the CPU time
/// the wrangler/workerd processes used per request. The CPU includes
/// workerd's HTTP handling, miniflare's R2 simulation (a Worker of its own
/// in the same workerd, plus SQLite and file reads) and moving the bytes;
/// the `GET /v2/` line (no storage at all) is the floor. Every request
/// carries a pull token, as a deployed Worker's do. Run on the deployed
/// build with `KURA_WORKER_SHIM=shells/worker/build/worker/shim.mjs`.
#[test]
#[ignore = "a measurement; run by hand"]
fn warm_blob_request_cost() {
    require_worker_tools!();
    let f = Faulty::start().unwrap();
    let small = f.add_blob(XorShift::new(921).bytes(4096));
    let large = f.add_blob(XorShift::new(922).bytes(8 * MIB));
    let upstreams = json!([{ "name": "up.local", "url": f.url }]);
    // As deployed by default: a pull token checked on every request.
    let worker = Worker::launch(
        &[
            ("UPSTREAMS", upstreams.to_string()),
            ("DEFAULT_UPSTREAM", "up.local".to_owned()),
        ],
        &[("PULL_TOKENS", TOKEN_CI.to_owned())],
        None,
    );
    let client = http_client();
    let url = |d: &str| format!("{}/v2/team/cost/blobs/{d}", worker.url);
    for d in [&small, &large] {
        let get = || send_lenient(client.get(url(d)).bearer_auth(TOKEN_CI));
        assert_eq!(get().digest(), *d);
        assert!(eventually(20, || get().cache() == "hit"));
    }
    let measure = |what: &str, head: bool, target: &str, n: usize, want: Option<&str>| {
        let (w0, a0) = worker.cpu_seconds();
        let started = Instant::now();
        for _ in 0..n {
            let rb = if head {
                client.head(target)
            } else {
                client.get(target)
            };
            let mut r = rb.bearer_auth(TOKEN_CI).send().unwrap();
            assert!(r.status().is_success(), "{what}: {}", r.status());
            let mut body = Vec::new();
            r.read_to_end(&mut body).unwrap();
            if let Some(d) = want {
                assert_eq!(sha256(&body), d);
            }
        }
        let wall = started.elapsed().as_secs_f64() / n as f64;
        std::thread::sleep(Duration::from_millis(300));
        let (w1, a1) = worker.cpu_seconds();
        println!(
            "{what:<34} n={n:<4} wall {:>6.2} ms/req   workerd CPU {:>6.2} ms/req   all wrangler processes {:>6.2} ms/req",
            wall * 1e3,
            (w1 - w0) * 1e3 / n as f64,
            (a1 - a0) * 1e3 / n as f64,
        );
    };
    let base = format!("{}/v2/", worker.url);
    for round in 1..=3 {
        println!("round {round}");
        measure("GET /v2/ (no storage)", false, &base, 400, None);
        measure(
            "GET warm blob 4 KiB (2 R2 reads)",
            false,
            &url(&small),
            400,
            Some(&small),
        );
        measure("HEAD warm blob (5 R2 heads)", true, &url(&small), 400, None);
        measure(
            "GET warm blob 8 MiB (2 R2 reads)",
            false,
            &url(&large),
            60,
            Some(&large),
        );
    }
}
