//! kura started with a mirror configuration, for the mirror's end-to-end
//! tests (`tests/tests/mirror.rs`, `tests/tests/hostile_upstream.rs`).

use std::ops::{Deref, DerefMut};

use crate::{Kura, KuraOptions};

/// Every manifest media type, for GETs that take whatever the upstream has.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A kura and the directory holding its config file. Dropping it checks
/// that kura never panicked, whatever the test did to it.
pub struct Mirror {
    kura: Kura,
    _cfg: tempfile::TempDir,
}

impl Deref for Mirror {
    type Target = Kura;
    fn deref(&self) -> &Kura {
        &self.kura
    }
}

impl DerefMut for Mirror {
    fn deref_mut(&mut self) -> &mut Kura {
        &mut self.kura
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let log = self.kura.log_text();
        if !std::thread::panicking() {
            assert!(!log.contains("panicked"), "kura panicked; log:\n{log}");
        }
    }
}

/// One `mirror.upstreams` entry: `fields` are extra YAML lines (indented by
/// six spaces) such as `      tag_ttl_secs: 0\n`.
pub fn upstream(name: &str, url: &str, fields: &str) -> String {
    format!("    - name: {name}\n      url: {url}\n{fields}")
}

/// A config with these upstreams; `top` holds extra `mirror:` keys
/// (indented by two spaces) such as `  default: up.local\n`.
pub fn mirror_yaml(upstreams: &[String], top: &str) -> String {
    format!("mirror:\n{top}  upstreams:\n{}", upstreams.concat())
}

/// kura started with `yaml` as its config file and `env` set.
pub fn start_mirror(yaml: &str, env: &[(&str, &str)]) -> Mirror {
    let cfg = tempfile::tempdir().expect("tempdir");
    let path = cfg.path().join("kura.yml");
    std::fs::write(&path, yaml).expect("writing kura.yml");
    let kura = Kura::start_with(KuraOptions {
        config: Some(path),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("starting kura with\n{yaml}\n{e:#}"));
    Mirror { kura, _cfg: cfg }
}
