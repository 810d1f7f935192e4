//! `kura config check`: a valid file prints the effective configuration
//! (defaults included), and an unknown key is an error naming it. (A
//! registry:2 `config.yml` is in `config.rs`.)
//!
//! Needs nothing but the kura binary.

use std::process::Command;

use kura_tests::kura_bin;
use serde_json::{json, Value};

fn config_check(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("kura.yaml");
    std::fs::write(&f, yaml).unwrap();
    let mut cmd = Command::new(kura_bin());
    cmd.args(["config", "check"]).arg(&f);
    for (k, _) in std::env::vars() {
        if k.starts_with("KURA_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("running kura config check")
}

#[test]
fn config_check_valid_file() {
    let out = config_check("listen: 127.0.0.1:6553\nregistry:\n  delete_enabled: false\n  max_manifest_size: 1234567\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = {
        // The effective configuration is YAML; check the values we set and a default.
        let mut m = serde_json::Map::new();
        for line in stdout.lines() {
            if let Some((k, val)) = line.trim().split_once(": ") {
                m.insert(
                    k.to_owned(),
                    json!(val.trim().trim_matches('\'').trim_matches('"')),
                );
            }
        }
        Value::Object(m)
    };
    assert_eq!(v["listen"], "127.0.0.1:6553", "{stdout}");
    assert_eq!(v["delete_enabled"], "false", "{stdout}");
    assert_eq!(v["max_manifest_size"], "1234567", "{stdout}");
    assert!(
        v.get("data_dir").is_some(),
        "defaults are shown too: {stdout}"
    );
}

#[test]
fn config_check_unknown_key() {
    for (yaml, key) in [
        ("registry:\n  delete_enabeld: false\n", "delete_enabeld"),
        ("listne: 127.0.0.1:5000\n", "listne"),
        ("auth:\n  htpasswd: /x\n  anonymous: true\n", "anonymous"),
    ] {
        let out = config_check(yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{yaml:?} accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(key),
            "{yaml:?}: the error should name {key}: {stderr}"
        );
    }
}
