//! A real S3-compatible server for the tests: `s3s-fs`, which keeps objects
//! as files under a directory (a bucket is a sub-directory) and checks
//! SigV4 signatures.
//!
//! Install: `cargo install s3s-fs@0.17.0 --locked --features binary --ignore-rust-version`.
//! The binary is looked up in `$KURA_TEST_S3S_FS`, then `PATH`, then
//! `$CARGO_HOME/bin` (`~/.cargo/bin`). Tests that need it fail with an
//! explanation if it is missing: CI installs it, so a silent skip would hide
//! a broken setup.
//!
//! The native shell's unit tests include this file by path (they run the
//! storage conformance suite against S3 on s3s-fs, and the `kura` package
//! cannot depend on this one), so it uses nothing of this crate and no
//! dependency beyond `anyhow` and `tempfile`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub const ACCESS_KEY: &str = "kura-test-access";
pub const SECRET_KEY: &str = "kura-test-secret-key";

/// Path of `s3s-fs`, or a panic saying how to install it.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KURA_TEST_S3S_FS") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("s3s-fs");
            if p.is_file() {
                return p;
            }
        }
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(p) = cargo_home.map(|h| h.join("bin/s3s-fs")) {
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "s3s-fs not found (looked in $KURA_TEST_S3S_FS, PATH and $CARGO_HOME/bin). The S3 tests need a real \
         S3-compatible server; install it with:\n    \
         cargo install s3s-fs@0.17.0 --locked --features binary --ignore-rust-version"
    );
}

/// A running `s3s-fs` with one bucket.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub endpoint: String,
    pub bucket: String,
    /// The directory s3s-fs serves; the bucket is `root/<bucket>`.
    pub root: PathBuf,
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl S3Server {
    /// Start `s3s-fs` on a free loopback port with an empty bucket `bucket`.
    pub fn start(bucket: &str) -> anyhow::Result<S3Server> {
        let bin = s3s_fs_bin();
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("s3");
        std::fs::create_dir_all(root.join(bucket))?;
        let log = tmp.path().join("s3s-fs.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let logf = std::fs::File::create(&log)?;
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut s = S3Server {
            child: Some(child),
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_owned(),
            root,
            log,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = s.child.as_mut().expect("running").try_wait()? {
                bail!(
                    "s3s-fs exited with {status} at startup; log:\n{}",
                    s.log_text()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("s3s-fs did not listen within 20s; log:\n{}", s.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The bucket's directory on disk.
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.join(&self.bucket)
    }

    /// A kura YAML config selecting this server's bucket, written to `path`.
    pub fn write_kura_config(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let yaml = format!(
            "storage:\n  s3:\n    bucket: {}\n    endpoint: {}\n    region: us-east-1\n    access_key_id: {ACCESS_KEY}\n    \
             secret_access_key: {SECRET_KEY}\n    path_style: true\n    allow_http: true\n",
            self.bucket, self.endpoint
        );
        std::fs::write(path, yaml)?;
        Ok(path.to_path_buf())
    }

    /// Keys (paths relative to the bucket, `/`-separated) of the regular
    /// files in the bucket directory. s3s-fs may keep its own bookkeeping
    /// files next to objects; callers filter by prefix.
    pub fn object_keys(&self) -> anyhow::Result<Vec<String>> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
            for e in std::fs::read_dir(dir)? {
                let e = e?;
                let p = e.path();
                if e.file_type()?.is_dir() {
                    walk(base, &p, out)?;
                } else {
                    out.push(
                        p.strip_prefix(base)
                            .expect("under base")
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(&self.bucket_dir(), &self.bucket_dir(), &mut out)?;
        out.sort();
        Ok(out)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// haproxy in front of s3s-fs, changing how it answers create-only puts.
///
/// `one_at_a_time`: s3s-fs checks `If-None-Match: *` and then writes,
/// without a lock (its `put_object`), so two create-only puts of one key
/// racing each other can both succeed; S3 and R2 decide such races
/// atomically. Serialized, s3s-fs decides them as S3 does.
///
/// `ignoring_conditions` and `refusing_conditions`: a store that does not
/// know conditional writes, as seen by a client. (The header cannot just
/// be dropped on the way: it is part of the request's SigV4 signature.)
pub struct S3Front {
    child: Child,
    /// `http://127.0.0.1:PORT`: use it as the S3 endpoint.
    pub endpoint: String,
    /// haproxy's log: one line per request (`option httplog`).
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl S3Front {
    /// One create-only put at a time to `server` (`HOST:PORT`), everything
    /// else passes freely.
    pub fn one_at_a_time(server: &str) -> anyhow::Result<S3Front> {
        S3Front::start(
            "  acl create_only hdr_cnt(if-none-match) gt 0\n  \
             use_backend one_at_a_time if create_only\n  default_backend direct\n",
            server,
        )
    }

    /// Every create-only put answered `200 OK` by the proxy (it never
    /// reaches `server`): a store that takes a put whatever its
    /// `If-None-Match` says. Nothing is written, which is all the same to a
    /// client that does not read the object back.
    pub fn ignoring_conditions(server: &str) -> anyhow::Result<S3Front> {
        S3Front::start(
            "  acl create_only hdr_cnt(if-none-match) gt 0\n  \
             http-request return status 200 hdr ETag '\"0\"' if create_only\n  \
             default_backend direct\n",
            server,
        )
    }

    /// Every create-only put answered `501 NotImplemented`, as S3-compatible
    /// stores without conditional writes answer.
    pub fn refusing_conditions(server: &str) -> anyhow::Result<S3Front> {
        S3Front::start(
            "  acl create_only hdr_cnt(if-none-match) gt 0\n  \
             http-request return status 501 content-type application/xml string \
             '<Error><Code>NotImplemented</Code><Message>conditional writes</Message></Error>' \
             if create_only\n  default_backend direct\n",
            server,
        )
    }

    fn start(frontend_rules: &str, server: &str) -> anyhow::Result<S3Front> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  log stdout format raw local0\n\
                 defaults\n  log global\n  option httplog\n  mode http\n  timeout connect 5s\n  timeout client 120s\n  \
                 timeout server 120s\n  timeout queue 120s\nfrontend s3\n  bind 127.0.0.1:{port}\n\
                 {frontend_rules}\
                 backend direct\n  server s3s-fs {server}\n\
                 backend one_at_a_time\n  server s3s-fs {server} maxconn 1\n"
            ),
        )?;
        let log = dir.path().join("requests.log");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning haproxy (Debian package haproxy)")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("haproxy did not listen within 20s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(S3Front {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        })
    }

    /// Requests passed or answered so far, by method (`GET`, `PUT`, ...).
    /// haproxy logs a request when it ends: wait for clients to finish.
    pub fn requests(&self) -> std::collections::BTreeMap<String, usize> {
        let mut by_method = std::collections::BTreeMap::new();
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        for line in text.lines() {
            // `... "GET /bucket/key?x HTTP/1.1"`
            let Some((_, request)) = line.split_once('"') else {
                continue;
            };
            if let Some(method) = request.split(' ').next().filter(|m| !m.is_empty()) {
                *by_method.entry(method.to_owned()).or_insert(0) += 1;
            }
        }
        by_method
    }
}

impl Drop for S3Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
