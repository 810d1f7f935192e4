//! registry:2's `config.yml`, translated to kura's configuration
//! (`compat::translate`, then `Config::load` of the same file). Input: the
//! file.
//!
//! Asserts: only a mapping with a top-level `version:` is translated; the
//! translation is a mapping in kura's format (which is never taken for
//! registry:2's) and every path it marks as a registry:2 default is set in
//! it; a file that loads renders as YAML that loads to the same rendering.
#![no_main]

use kura_fuzz::{check_rendering, compat, load_config_text};
use libfuzzer_sys::fuzz_target;
use serde_yaml_ng::Value;

fn at<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(v, |v, k| v.as_mapping()?.get(k))
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_yaml_ng::from_slice::<Value>(data) else {
        return;
    };
    let is_registry2 = doc.as_mapping().is_some_and(|m| m.contains_key("version"));
    match compat::translate(&doc) {
        Ok(Some(t)) => {
            assert!(is_registry2);
            assert!(
                t.config.is_mapping() || t.config.is_null(),
                "{:?}",
                t.config
            );
            assert!(matches!(compat::translate(&t.config), Ok(None)));
            for path in &t.defaults {
                assert!(
                    at(&t.config, path).is_some(),
                    "default {path} not in {:?}",
                    t.config
                );
            }
        }
        Ok(None) => assert!(!is_registry2),
        Err(e) => {
            assert!(is_registry2);
            let _ = format!("{e:#}");
        }
    }
    if let Ok(config) = load_config_text(data) {
        check_rendering(&config);
    }
});
