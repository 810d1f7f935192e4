//! What the fuzz targets share: the native shell's configuration parsers,
//! compiled from their own files, and a deterministic host for driving a
//! [`kura_core::Registry`].
//!
//! `shells/native` is a binary-only crate, so its `config.rs` and
//! `compat.rs` are included here by path rather than through a library
//! target added only for fuzzing. They name `crate::compat` and
//! `crate::auth`, which this crate root provides.

// The native modules are compiled whole; the fuzz targets use part of them.
#![allow(dead_code)]

#[path = "../../shells/native/src/compat.rs"]
pub mod compat;
#[path = "../../shells/native/src/config.rs"]
pub mod config;

/// Stands in for `shells/native/src/auth.rs`, whose `Authenticator` the
/// configuration's validation builds (reading the htpasswd file, the
/// token signing key and the issuer keys a configuration names). A fuzzed
/// configuration must not make the fuzzer read files (`/dev/zero`,
/// `/dev/stdin`), and those files' formats are not what the config targets
/// test.
pub mod auth {
    use std::path::Path;

    pub struct Authenticator;

    impl Authenticator {
        pub fn from_config(
            _auth: &crate::config::AuthConfig,
            _data_dir: Option<&Path>,
        ) -> anyhow::Result<Self> {
            Ok(Authenticator)
        }
    }
}

pub mod host {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use kura_core::{BoxFuture, Host};

    /// A fixed clock, counter-derived random bytes (upload ids are
    /// predictable, so a seed can name one), spawned tasks queued for
    /// [`FuzzHost::run_spawned`], and no waiting.
    pub struct FuzzHost {
        counter: AtomicU64,
        spawned: Mutex<Vec<BoxFuture<'static, ()>>>,
    }

    impl Default for FuzzHost {
        fn default() -> Self {
            FuzzHost {
                counter: AtomicU64::new(1),
                spawned: Mutex::default(),
            }
        }
    }

    impl FuzzHost {
        /// Run the tasks spawned so far to completion (outside the request
        /// that spawned them: `block_on` does not nest).
        pub fn run_spawned(&self) {
            loop {
                let tasks = std::mem::take(&mut *self.spawned.lock().unwrap());
                if tasks.is_empty() {
                    return;
                }
                for t in tasks {
                    futures::executor::block_on(t);
                }
            }
        }

        /// The upload id the `n`th (from 1) call to `fill_random` for 16
        /// bytes yields: what the registry names its `n`th upload session.
        pub fn nth_upload_id(n: u64) -> String {
            let mut out = [0u8; 16];
            fill(n, &mut out);
            out.iter().map(|b| format!("{b:02x}")).collect()
        }
    }

    fn fill(n: u64, out: &mut [u8]) {
        let n = n.to_le_bytes();
        for (i, b) in out.iter_mut().enumerate() {
            *b = n[i % 8] ^ (i as u8);
        }
    }

    impl Host for FuzzHost {
        fn now_unix_ms(&self) -> u64 {
            1_700_000_000_000
        }
        fn fill_random(&self, out: &mut [u8]) {
            fill(self.counter.fetch_add(1, Ordering::SeqCst), out);
        }
        fn spawn(&self, task: BoxFuture<'static, ()>) {
            self.spawned.lock().unwrap().push(task);
        }
        fn sleep(&self, _ms: u64) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
    }
}

/// The input as text: the targets parse strings, and a byte string that is
/// not UTF-8 never reaches them from the HTTP layer either (header values
/// are checked with `to_str`).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// `Config::load` of a file holding `text`, with no command-line overrides.
/// The file is this process's own, rewritten each time.
pub fn load_config_text(text: &[u8]) -> anyhow::Result<config::Config> {
    use std::sync::OnceLock;
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("kura-fuzz-config-{}.yaml", std::process::id()))
    });
    std::fs::write(path, text).expect("write the fuzz config file");
    config::Config::load(Some(path), &config::Overrides::default())
}

/// The configuration a loaded one renders as (`kura config check`) loads
/// again to the same rendering: what the operator is shown is what the
/// registry runs with.
pub fn check_rendering(loaded: &config::Config) {
    let shown = loaded.to_yaml();
    let again = load_config_text(shown.as_bytes())
        .unwrap_or_else(|e| panic!("rendered configuration does not load: {e:#}\n{shown}"));
    assert_eq!(again.to_yaml(), shown);
    let _ = loaded.to_yaml_with_origins();
}
