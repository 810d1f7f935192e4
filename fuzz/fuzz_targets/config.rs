//! kura's configuration file (`Config::load`). Input: the file.
//!
//! Asserts: a configuration that loads renders (`kura config check`) as
//! YAML that loads to the same rendering; a kura file (no top-level
//! `version:`) is never taken for a registry:2 one.
#![no_main]

use kura_fuzz::{check_rendering, compat, load_config_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(data) {
        let has_version = doc.as_mapping().is_some_and(|m| m.contains_key("version"));
        if !has_version {
            assert!(matches!(compat::translate(&doc), Ok(None)));
        }
    }
    if let Ok(config) = load_config_text(data) {
        check_rendering(&config);
    }
});
