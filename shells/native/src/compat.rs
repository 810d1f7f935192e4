//! Reading a `registry:2` (CNCF distribution) `config.yml`, so a mirror set
//! up from the usual recipe moves to kura by pointing at the same file.
//!
//! The file is recognised by its top-level `version:` key, which kura's own
//! format does not have. Keys with a kura equivalent are translated; every
//! other key is reported in a warning and ignored.
//!
//! Where the file is silent, registry:2's defaults apply, not kura's: an
//! operator moving a file over keeps the registry they had. The ones that
//! differ from kura's:
//! - deletes are refused unless `storage.delete.enabled: true`;
//! - nothing is mirrored without a `proxy` section (kura's own default
//!   mirrors four public registries);
//! - abandoned uploads are removed after 168h
//!   (`storage.maintenance.uploadpurging.age`), not 24h;
//! - `storage.filesystem` without `rootdirectory` is `/var/lib/registry`.

use serde_yaml_ng::{Mapping, Value};

/// What a registry:2 file means in kura's configuration format.
#[derive(Debug)]
pub struct Translated {
    /// kura configuration keys, as YAML.
    pub config: Value,
    /// One per ignored key, and per value whose meaning shifts.
    pub warnings: Vec<String>,
    /// Dotted paths in `config` holding registry:2's default for a key the
    /// file leaves unset.
    pub defaults: Vec<String>,
}

/// registry:2's `storage.maintenance.uploadpurging.age` default.
const UPLOAD_PURGE_AGE_SECS: u64 = 168 * 3600;
/// registry:2's `storage.filesystem.rootdirectory` default.
const FILESYSTEM_ROOT: &str = "/var/lib/registry";

/// The kura configuration equivalent to a registry:2 file. `None` if `doc`
/// is not in registry:2's format.
pub fn translate(doc: &Value) -> anyhow::Result<Option<Translated>> {
    let Some(top) = doc.as_mapping() else {
        return Ok(None);
    };
    if !top.contains_key("version") {
        return Ok(None);
    }
    let mut t = Translation::default();
    for (k, v) in top {
        let key = k.as_str().unwrap_or("?");
        match key {
            "version" => {}
            "http" => t.http(v),
            "storage" => t.storage(v)?,
            "proxy" => t.proxy(v)?,
            "auth" => t.auth(v),
            "log" => t.log(v),
            other => t.ignore(other),
        }
    }
    // registry:2 refuses to start without exactly one driver.
    match t.drivers.as_slice() {
        [_] => {}
        [] => anyhow::bail!("storage: no driver given (kura takes filesystem or s3)"),
        many => anyhow::bail!("storage: one driver only, not {}", many.join(" and ")),
    }
    t.registry2_default(&["registry", "delete_enabled"], Value::from(false));
    t.registry2_default(&["mirror", "upstreams"], Value::Sequence(Vec::new()));
    t.registry2_default(
        &["registry", "upload_max_idle_secs"],
        Value::from(UPLOAD_PURGE_AGE_SECS),
    );
    // registry:2 collects garbage only when an operator runs it offline.
    t.registry2_default(&["gc", "interval_secs"], Value::from(0));
    Ok(Some(Translated {
        config: Value::Mapping(t.out),
        warnings: t.warnings,
        defaults: t.defaults,
    }))
}

#[derive(Default)]
struct Translation {
    out: Mapping,
    warnings: Vec<String>,
    defaults: Vec<String>,
    /// The storage drivers the file names.
    drivers: Vec<String>,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping()?.get(key)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A mapping's entries with string keys, in file order. A key is read
/// through a YAML tag (`! key` is the string "key", as Go's yaml reads it);
/// the value comes with its key, since looking a tagged key up again by its
/// string would not find it.
fn entries(v: &Value) -> Vec<(String, &Value)> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v)))
                .collect()
        })
        .unwrap_or_default()
}

impl Translation {
    fn ignore(&mut self, path: &str) {
        self.warnings.push(format!(
            "registry:2 key `{path}` has no kura equivalent; ignored"
        ));
    }

    /// Set `path` to registry:2's default `value` unless the file set it.
    fn registry2_default(&mut self, path: &[&str], value: Value) {
        let mut m = Some(&self.out);
        let mut present = true;
        for p in path {
            match m.and_then(|m| m.get(*p)) {
                Some(next) => m = next.as_mapping(),
                None => {
                    present = false;
                    break;
                }
            }
        }
        if !present {
            self.set(path, value);
            self.defaults.push(path.join("."));
        }
    }

    fn set(&mut self, path: &[&str], value: Value) {
        let mut m = &mut self.out;
        for (i, p) in path.iter().enumerate() {
            if i + 1 == path.len() {
                m.insert(Value::from(*p), value);
                return;
            }
            let entry = m
                .entry(Value::from(*p))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if !entry.is_mapping() {
                *entry = Value::Mapping(Mapping::new());
            }
            m = entry.as_mapping_mut().expect("just made a mapping");
        }
    }

    fn http(&mut self, v: &Value) {
        for (key, val) in entries(v) {
            match key.as_str() {
                "addr" => {
                    if let Some(addr) = text(val) {
                        // ":5000" listens on every interface in Go.
                        let addr = if addr.starts_with(':') {
                            format!("0.0.0.0{addr}")
                        } else {
                            addr.replace("localhost:", "127.0.0.1:")
                        };
                        self.set(&["listen"], Value::from(addr));
                    }
                }
                "tls" => {
                    for (tkey, tv) in entries(val) {
                        let tv = text(tv);
                        match (tkey.as_str(), tv) {
                            ("certificate", Some(c)) => self.set(&["tls", "cert"], Value::from(c)),
                            ("key", Some(k)) => self.set(&["tls", "key"], Value::from(k)),
                            (other, _) => self.ignore(&format!("http.tls.{other}")),
                        }
                    }
                }
                other => self.ignore(&format!("http.{other}")),
            }
        }
    }

    fn storage(&mut self, v: &Value) -> anyhow::Result<()> {
        for (key, val) in entries(v) {
            match key.as_str() {
                "filesystem" => {
                    self.drivers.push(key.clone());
                    let mut root = None;
                    for (fkey, fval) in entries(val) {
                        match (fkey.as_str(), text(fval)) {
                            ("rootdirectory", Some(dir)) => root = Some(dir),
                            (other, _) => self.ignore(&format!("storage.filesystem.{other}")),
                        }
                    }
                    match root {
                        Some(dir) => self.set(&["data_dir"], Value::from(dir)),
                        None => self.registry2_default(&["data_dir"], Value::from(FILESYSTEM_ROOT)),
                    }
                }
                "s3" => {
                    self.drivers.push(key.clone());
                    self.s3(val)?
                }
                "delete" => {
                    for (dkey, dval) in entries(val) {
                        match dkey.as_str() {
                            // registry:2 deletes only for a YAML `true`;
                            // anything else (`"true"` too) leaves them off.
                            "enabled" => {
                                if !dval.is_bool() {
                                    self.warnings.push(format!(
                                        "registry:2 `storage.delete.enabled: {}` is not true or false; deletes stay off, as in registry:2",
                                        text(dval).unwrap_or_default()
                                    ));
                                }
                                self.set(
                                    &["registry", "delete_enabled"],
                                    Value::from(dval.as_bool() == Some(true)),
                                );
                            }
                            other => self.ignore(&format!("storage.delete.{other}")),
                        }
                    }
                }
                "maintenance" => self.maintenance(val)?,
                "inmemory" => anyhow::bail!(
                    "storage.inmemory: kura keeps no registry in memory only; use filesystem or s3"
                ),
                // registry:2's storage parameters besides the driver.
                "cache" | "redirect" | "tag" => self.ignore(&format!("storage.{key}")),
                // Any other key names a driver: serving from local disk
                // instead would look like a registry that lost its content.
                driver => anyhow::bail!(
                    "storage.{driver}: kura stores on local disk (filesystem) or S3 (s3) only"
                ),
            }
        }
        Ok(())
    }

    fn maintenance(&mut self, v: &Value) -> anyhow::Result<()> {
        for (key, val) in entries(v) {
            if key != "uploadpurging" {
                self.ignore(&format!("storage.maintenance.{key}"));
                continue;
            }
            for (pkey, pval) in entries(val) {
                match pkey.as_str() {
                    "age" => {
                        let age = text(pval).unwrap_or_default();
                        let secs = parse_go_duration(&age).ok_or_else(|| {
                            anyhow::anyhow!(
                                "storage.maintenance.uploadpurging.age: cannot read duration {age:?}"
                            )
                        })?;
                        self.set(&["registry", "upload_max_idle_secs"], Value::from(secs));
                        self.warnings.push(format!(
                            "registry:2 `storage.maintenance.uploadpurging.age: {age}` becomes registry.upload_max_idle_secs: {secs} (kura counts from a session's last activity, not its start)"
                        ));
                    }
                    "enabled" if go_bool(pval) == Some(false) => self.warnings.push(
                        "registry:2 `storage.maintenance.uploadpurging.enabled: false` has no kura equivalent: kura always removes upload sessions idle longer than registry.upload_max_idle_secs".into(),
                    ),
                    "enabled" => {}
                    other => self.ignore(&format!("storage.maintenance.uploadpurging.{other}")),
                }
            }
        }
        Ok(())
    }

    fn s3(&mut self, v: &Value) -> anyhow::Result<()> {
        for (key, val) in entries(v) {
            let s = text(val);
            let target = match key.as_str() {
                "bucket" => "bucket",
                "region" => "region",
                "regionendpoint" => "endpoint",
                "accesskey" => "access_key_id",
                "secretkey" => "secret_access_key",
                "rootdirectory" => "prefix",
                // registry:2 reads both as Go booleans, strings included,
                // and refuses anything else.
                "forcepathstyle" | "secure" => {
                    let b = go_bool(val).ok_or_else(|| {
                        anyhow::anyhow!("storage.s3.{key}: not a boolean: {val:?}")
                    })?;
                    let (target, value) = if key == "secure" {
                        ("allow_http", !b)
                    } else {
                        ("path_style", b)
                    };
                    self.set(&["storage", "s3", target], Value::from(value));
                    continue;
                }
                other => {
                    self.ignore(&format!("storage.s3.{other}"));
                    continue;
                }
            };
            if let Some(s) = s {
                let s = if target == "prefix" {
                    s.trim_matches('/').to_owned()
                } else {
                    s
                };
                self.set(&["storage", "s3", target], Value::from(s));
            }
        }
        Ok(())
    }

    fn proxy(&mut self, v: &Value) -> anyhow::Result<()> {
        let Some(url) = get(v, "remoteurl").and_then(text) else {
            anyhow::bail!("proxy: remoteurl is required");
        };
        let name = upstream_name(&url);
        let mut up = Mapping::new();
        up.insert("name".into(), Value::from(name.clone()));
        up.insert("url".into(), Value::from(url));
        for (key, val) in entries(v) {
            let val = text(val);
            match (key.as_str(), val) {
                ("remoteurl", _) => {}
                ("username", Some(u)) => {
                    up.insert("username".into(), Value::from(u));
                }
                ("password", Some(p)) => {
                    up.insert("password".into(), Value::from(p));
                }
                ("ttl", Some(ttl)) => {
                    // registry:2 expires cached content after ttl; kura keeps
                    // content (bounded by size) and revalidates tags, so the
                    // nearest meaning is how stale content may be served.
                    let secs = parse_go_duration(&ttl).ok_or_else(|| {
                        anyhow::anyhow!("proxy.ttl: cannot read duration {ttl:?}")
                    })?;
                    up.insert("max_stale_secs".into(), Value::from(secs));
                    self.warnings.push(format!(
                        "registry:2 `proxy.ttl: {ttl}` becomes mirror.upstreams[0].max_stale_secs: {secs} (kura revalidates tags every tag_ttl_secs)"
                    ));
                }
                (other, _) => self.ignore(&format!("proxy.{other}")),
            }
        }
        self.set(
            &["mirror", "upstreams"],
            Value::Sequence(vec![Value::Mapping(up)]),
        );
        // registry:2 in proxy mode mirrors every name it is asked for.
        self.set(&["mirror", "default"], Value::from(name));
        Ok(())
    }

    fn auth(&mut self, v: &Value) {
        for (key, val) in entries(v) {
            match key.as_str() {
                "htpasswd" => {
                    if let Some(path) = get(val, "path").and_then(text) {
                        self.set(&["auth", "htpasswd"], Value::from(path));
                        // registry:2 with htpasswd requires credentials for everything.
                        self.set(&["auth", "anonymous_pull"], Value::from(false));
                    }
                    if let Some(realm) = get(val, "realm").and_then(text) {
                        self.set(&["auth", "realm"], Value::from(realm));
                    }
                }
                other => self.ignore(&format!("auth.{other}")),
            }
        }
    }

    fn log(&mut self, v: &Value) {
        for (key, val) in entries(v) {
            let val = text(val);
            match (key.as_str(), val) {
                ("level", Some(l)) => {
                    let level = if l == "warning" { "warn".to_owned() } else { l };
                    self.set(&["log", "level"], Value::from(level));
                }
                ("formatter", Some(f)) => {
                    let format = if f == "json" { "json" } else { "text" };
                    self.set(&["log", "format"], Value::from(format));
                }
                (other, _) => self.ignore(&format!("log.{other}")),
            }
        }
    }
}

/// A boolean as Go's `strconv.ParseBool` reads it (registry:2's S3 driver
/// takes YAML booleans and such strings).
fn go_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The mirror name for an upstream URL: `docker.io` for Docker Hub, else
/// the host.
fn upstream_name(url: &str) -> String {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match host.as_str() {
        h if kura_core::config::is_docker_hub(h) => "docker.io".into(),
        h if kura_core::RepositoryName::parse(h).is_ok() => h.to_owned(),
        _ => "upstream".into(),
    }
}

/// Go's `time.ParseDuration` subset registry configs use: `168h`, `1h30m`,
/// `90s`, `500ms`.
fn parse_go_duration(s: &str) -> Option<u64> {
    let mut total_ms: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0);
    }
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let n: f64 = rest[..n_end].parse().ok()?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..u_end] {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return None,
        };
        total_ms = total_ms.checked_add((n * factor) as u64)?;
        rest = &rest[u_end..];
    }
    Some(total_ms / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = r#"
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
  tls:
    certificate: /certs/domain.crt
    key: /certs/domain.key
health:
  storagedriver:
    enabled: true
proxy:
  remoteurl: https://registry-1.docker.io
  username: someone
  password: secret
  ttl: 168h
"#;

    fn at(v: &Value, path: &str) -> Option<Value> {
        let mut v = v;
        for p in path.split('.') {
            v = get(v, p)?;
        }
        Some(v.clone())
    }

    fn translated(yaml: &str) -> Translated {
        let doc: Value = serde_yaml_ng::from_str(yaml).unwrap();
        translate(&doc).unwrap().expect("recognised")
    }

    fn refused(yaml: &str) -> String {
        let doc: Value = serde_yaml_ng::from_str(yaml).unwrap();
        match translate(&doc) {
            Err(e) => e.to_string(),
            Ok(t) => panic!("{yaml:?} accepted: {t:?}"),
        }
    }

    #[test]
    fn recipe_translates() {
        let Translated {
            config: out,
            warnings,
            defaults,
        } = translated(RECIPE);
        let g = |path: &[&str]| at(&out, &path.join("."));
        assert_eq!(g(&["listen"]), Some(Value::from("0.0.0.0:5000")));
        assert_eq!(g(&["data_dir"]), Some(Value::from("/var/lib/registry")));
        assert_eq!(g(&["tls", "cert"]), Some(Value::from("/certs/domain.crt")));
        assert_eq!(g(&["registry", "delete_enabled"]), Some(Value::from(true)));
        assert_eq!(g(&["mirror", "default"]), Some(Value::from("docker.io")));
        let up = &g(&["mirror", "upstreams"]).unwrap()[0];
        assert_eq!(up["url"], Value::from("https://registry-1.docker.io"));
        assert_eq!(up["password"], Value::from("secret"));
        assert_eq!(up["max_stale_secs"], Value::from(168 * 3600u64));
        for ignored in ["log.fields", "storage.cache", "http.headers", "health"] {
            assert!(
                warnings.iter().any(|w| w.contains(&format!("`{ignored}`"))),
                "{ignored}: {warnings:?}"
            );
        }
        // Only what the recipe leaves unset takes registry:2's default.
        assert_eq!(
            defaults,
            ["registry.upload_max_idle_secs", "gc.interval_secs"]
        );
    }

    /// registry:2's defaults where they differ from kura's, for a file
    /// that sets nothing but a driver.
    #[test]
    fn silent_keys_keep_registry2_defaults() {
        let t = translated("version: 0.1\nstorage:\n  filesystem: {}\n");
        let c = &t.config;
        assert_eq!(at(c, "registry.delete_enabled"), Some(Value::from(false)));
        assert_eq!(at(c, "mirror.upstreams"), Some(Value::Sequence(vec![])));
        assert_eq!(
            at(c, "registry.upload_max_idle_secs"),
            Some(Value::from(168 * 3600u64))
        );
        assert_eq!(at(c, "data_dir"), Some(Value::from("/var/lib/registry")));
        let mut d = t.defaults.clone();
        d.sort();
        assert_eq!(
            d,
            [
                "data_dir",
                "gc.interval_secs",
                "mirror.upstreams",
                "registry.delete_enabled",
                "registry.upload_max_idle_secs"
            ]
        );
    }

    #[test]
    fn deletes_need_a_yaml_true() {
        let fs = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /r\n";
        for (delete, enabled, warned) in [
            ("  delete:\n    enabled: true\n", true, false),
            ("  delete:\n    enabled: false\n", false, false),
            // registry:2 reads only a YAML boolean.
            ("  delete:\n    enabled: \"true\"\n", false, true),
            ("  delete: {}\n", false, false),
        ] {
            let t = translated(&format!("{fs}{delete}"));
            assert_eq!(
                at(&t.config, "registry.delete_enabled"),
                Some(Value::from(enabled)),
                "{delete}"
            );
            assert_eq!(
                t.warnings
                    .iter()
                    .any(|w| w.contains("storage.delete.enabled")),
                warned,
                "{delete}: {:?}",
                t.warnings
            );
        }
    }

    #[test]
    fn s3_booleans_as_go_reads_them() {
        let t = translated(
            "version: 0.1\nstorage:\n  s3:\n    bucket: b\n    region: r\n    forcepathstyle: \"false\"\n    secure: \"false\"\n",
        );
        assert_eq!(
            at(&t.config, "storage.s3.path_style"),
            Some(Value::from(false))
        );
        assert_eq!(
            at(&t.config, "storage.s3.allow_http"),
            Some(Value::from(true))
        );
        let t = translated("version: 0.1\nstorage:\n  s3:\n    bucket: b\n    secure: true\n");
        assert_eq!(
            at(&t.config, "storage.s3.allow_http"),
            Some(Value::from(false))
        );
        assert_eq!(
            at(&t.config, "storage.s3.path_style"),
            None,
            "kura's default (true) is registry:2's"
        );
        let e =
            refused("version: 0.1\nstorage:\n  s3:\n    bucket: b\n    forcepathstyle: maybe\n");
        assert!(e.contains("storage.s3.forcepathstyle"), "{e}");
    }

    #[test]
    fn exactly_one_known_driver() {
        for (yaml, says) in [
            ("version: 0.1\nhttp:\n  addr: :5000\n", "no driver"),
            (
                "version: 0.1\nstorage:\n  delete:\n    enabled: true\n",
                "no driver",
            ),
            (
                "version: 0.1\nstorage:\n  gcs:\n    bucket: b\n",
                "storage.gcs",
            ),
            (
                "version: 0.1\nstorage:\n  filesystem: {}\n  s3:\n    bucket: b\n",
                "one driver only",
            ),
            (
                "version: 0.1\nstorage:\n  inmemory: {}\n",
                "storage.inmemory",
            ),
        ] {
            let e = refused(yaml);
            assert!(e.contains(says), "{yaml:?}: {e}");
        }
    }

    #[test]
    fn upload_purging() {
        let fs = "version: 0.1\nstorage:\n  filesystem: {}\n  maintenance:\n";
        let t = translated(&format!(
            "{fs}    uploadpurging:\n      enabled: true\n      age: 48h\n      interval: 24h\n      dryrun: false\n    readonly:\n      enabled: false\n"
        ));
        assert_eq!(
            at(&t.config, "registry.upload_max_idle_secs"),
            Some(Value::from(48 * 3600u64))
        );
        assert!(!t
            .defaults
            .contains(&"registry.upload_max_idle_secs".to_owned()));
        for ignored in [
            "storage.maintenance.uploadpurging.interval",
            "storage.maintenance.readonly",
        ] {
            assert!(
                t.warnings
                    .iter()
                    .any(|w| w.contains(&format!("`{ignored}`"))),
                "{ignored}: {:?}",
                t.warnings
            );
        }
        let t = translated(&format!("{fs}    uploadpurging:\n      enabled: false\n"));
        assert!(
            t.warnings
                .iter()
                .any(|w| w.contains("uploadpurging.enabled: false")),
            "{:?}",
            t.warnings
        );
        assert!(refused(&format!("{fs}    uploadpurging:\n      age: soon\n")).contains("age"));
    }

    #[test]
    fn tagged_keys_are_read_as_their_string() {
        // Found by the `registry2_config` fuzz target: a key with a YAML tag
        // was listed by its string, then not found by it (a panic).
        let t = translated(
            "version: 0.1\nstorage:\n  filesystem:\n  ! maintenance:\n    uploadpurging:\n      age: 2h\n  ! delete:\n    ! enabled: true\n",
        );
        assert_eq!(
            at(&t.config, "registry.upload_max_idle_secs"),
            Some(Value::from(2 * 3600u64))
        );
        assert_eq!(
            at(&t.config, "registry.delete_enabled"),
            Some(Value::from(true))
        );
        // The fuzzer's input: an unknown storage key, refused as one.
        let e = refused("version: 0.1\nstorage:\n  filesystem:\n  ! urging:\n      age: 500ms\n");
        assert!(e.contains("storage.urging"), "{e}");
    }

    #[test]
    fn kura_files_are_not_translated() {
        let doc: Value = serde_yaml_ng::from_str("listen: 127.0.0.1:5000\n").unwrap();
        assert!(translate(&doc).unwrap().is_none());
    }

    #[test]
    fn durations_and_names() {
        assert_eq!(parse_go_duration("168h"), Some(604_800));
        assert_eq!(parse_go_duration("1h30m"), Some(5400));
        assert_eq!(parse_go_duration("90s"), Some(90));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("5d"), None);
        assert_eq!(parse_go_duration("h"), None);
        assert_eq!(upstream_name("https://ghcr.io"), "ghcr.io");
        assert_eq!(upstream_name("http://127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(upstream_name("https://index.docker.io/v1/"), "docker.io");
    }
}
