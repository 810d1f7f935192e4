//! Reading a `registry:2` (CNCF distribution) `config.yml`, so a mirror set
//! up from the usual recipe moves to kura by pointing at the same file.
//!
//! The file is recognised by its top-level `version:` key, which kura's own
//! format does not have. Keys with a kura equivalent are translated; every
//! other key is reported in a warning and ignored.

use serde_yaml::{Mapping, Value};

/// The kura configuration equivalent to a registry:2 file, with one warning
/// per ignored key. `None` if `doc` is not in registry:2's format.
pub fn translate(doc: &Value) -> anyhow::Result<Option<(Value, Vec<String>)>> {
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
    Ok(Some((Value::Mapping(t.out), t.warnings)))
}

#[derive(Default)]
struct Translation {
    out: Mapping,
    warnings: Vec<String>,
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

fn keys(v: &Value) -> Vec<String> {
    v.as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
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
        for key in keys(v) {
            let val = get(v, &key).expect("key listed");
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
                    for tkey in keys(val) {
                        let tv = get(val, &tkey).and_then(text);
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
        for key in keys(v) {
            let val = get(v, &key).expect("key listed");
            match key.as_str() {
                "filesystem" => {
                    for fkey in keys(val) {
                        match (fkey.as_str(), get(val, &fkey).and_then(text)) {
                            ("rootdirectory", Some(dir)) => {
                                self.set(&["data_dir"], Value::from(dir))
                            }
                            (other, _) => self.ignore(&format!("storage.filesystem.{other}")),
                        }
                    }
                }
                "s3" => self.s3(val),
                "delete" => {
                    if let Some(enabled) = get(val, "enabled").and_then(Value::as_bool) {
                        self.set(&["registry", "delete_enabled"], Value::from(enabled));
                    }
                }
                "inmemory" => anyhow::bail!(
                    "storage.inmemory: kura keeps no registry in memory only; use filesystem or s3"
                ),
                other => self.ignore(&format!("storage.{other}")),
            }
        }
        Ok(())
    }

    fn s3(&mut self, v: &Value) {
        for key in keys(v) {
            let val = get(v, &key).expect("key listed");
            let s = text(val);
            let target = match key.as_str() {
                "bucket" => "bucket",
                "region" => "region",
                "regionendpoint" => "endpoint",
                "accesskey" => "access_key_id",
                "secretkey" => "secret_access_key",
                "rootdirectory" => "prefix",
                "forcepathstyle" => {
                    self.set(
                        &["storage", "s3", "path_style"],
                        Value::from(val.as_bool().unwrap_or(true)),
                    );
                    continue;
                }
                "secure" => {
                    self.set(
                        &["storage", "s3", "allow_http"],
                        Value::from(val.as_bool() == Some(false)),
                    );
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
    }

    fn proxy(&mut self, v: &Value) -> anyhow::Result<()> {
        let Some(url) = get(v, "remoteurl").and_then(text) else {
            anyhow::bail!("proxy: remoteurl is required");
        };
        let name = upstream_name(&url);
        let mut up = Mapping::new();
        up.insert("name".into(), Value::from(name.clone()));
        up.insert("url".into(), Value::from(url));
        for key in keys(v) {
            let val = get(v, &key).and_then(text);
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
        for key in keys(v) {
            let val = get(v, &key).expect("key listed");
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
        for key in keys(v) {
            let val = get(v, &key).and_then(text);
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
        "registry-1.docker.io" | "index.docker.io" | "registry.hub.docker.com" | "docker.io" => {
            "docker.io".into()
        }
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

    #[test]
    fn recipe_translates() {
        let doc: Value = serde_yaml::from_str(RECIPE).unwrap();
        let (out, warnings) = translate(&doc).unwrap().expect("recognised");
        let g = |path: &[&str]| -> Option<Value> {
            let mut v = &out;
            for p in path {
                v = get(v, p)?;
            }
            Some(v.clone())
        };
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
    }

    #[test]
    fn kura_files_are_not_translated() {
        let doc: Value = serde_yaml::from_str("listen: 127.0.0.1:5000\n").unwrap();
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
