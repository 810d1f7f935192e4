//! The Worker's configuration, from `wrangler.toml` vars and secrets.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `UPSTREAMS` | var, JSON array (or a TOML array of tables) | `[{"name","url","tag_ttl_secs","max_stale_secs","namespaces"}]`; unset: Docker Hub, ghcr.io, quay.io, registry.k8s.io |
//! | `DEFAULT_UPSTREAM` | var | where names without a registry prefix or `?ns=` go (`docker.io` unless set; `""` for none) |
//! | `HOSTS` | var, JSON object | hostname → upstream name: requests to that host are mirrored from that upstream |
//! | `UPSTREAM_CREDENTIALS` | secret, JSON object | upstream name → `{"username","password"}` |
//! | `PULL_TOKENS` | secret | who may pull: one token, or a JSON object `{"name": "token", ...}` (one per client; at least 16 visible ASCII characters each); clients send one as the Basic password (any user name) or as `Bearer` |
//! | `ANONYMOUS_PULL` | var | `"true"`: anyone may pull, without a token (default `"false"`). With neither this nor `PULL_TOKENS` the Worker serves nothing but an error saying so |
//! | `R2_SINGLE_PUT_MAX_BYTES` | var | blobs up to this size are stored with one R2 put (default 4 GiB) |
//! | `R2_PART_BYTES` | var | larger blobs go through an R2 multipart upload in parts of this size (default 256 MiB) |
//! | `MAX_SIZE` | var | keep cached layers in R2 under this many bytes (`50GiB`, `500MB`), least recently used evicted first by each Cron Trigger run; unset: R2 grows |
//! | `EVICTION_GRACE_SECS` | var | a blob used this recently is never evicted (default 600) |
//! | `FILL_LEASE_SECS` | var | how long an isolate that stopped renewing its fill's lease in R2 holds up the others (default 20) |
//!
//! Plain Rust (no JS): the Worker hands in a lookup function, tests a map.

use std::collections::BTreeMap;

use kura_core::UpstreamConfig;
use serde::Deserialize;

use crate::auth::PullTokens;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// R2's smallest multipart part (all parts but the last).
pub const R2_MIN_PART: u64 = 5 * MIB;
/// R2's largest single upload and largest part.
pub const R2_MAX_PUT: u64 = 5 * GIB;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// How clients name the registry: `docker.io`. Matched against `?ns=`
    /// and the first path component.
    pub name: String,
    pub url: String,
    #[serde(default = "kura_core::config::default_tag_ttl_secs")]
    pub tag_ttl_secs: u64,
    #[serde(default = "kura_core::config::default_max_stale_secs")]
    pub max_stale_secs: u64,
    /// Other names for the same registry (`index.docker.io`), accepted in
    /// `?ns=` and as path prefixes.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Token realm hosts (or `host:port`) trusted with the credentials
    /// besides the upstream's own host and registrable domain.
    #[serde(default)]
    pub token_realms: Vec<String>,
    /// Seconds an upstream 404 is remembered (0: off).
    #[serde(default = "kura_core::config::default_not_found_ttl_secs")]
    pub not_found_ttl_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    #[serde(default)]
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub upstreams: Vec<Upstream>,
    pub default_upstream: Option<String>,
    /// Lowercase hostname (no port) → upstream name.
    pub hosts: BTreeMap<String, String>,
    pub credentials: BTreeMap<String, Credentials>,
    /// Who may pull with a token.
    pub pull_tokens: PullTokens,
    /// Whether anyone may pull without one.
    pub anonymous_pull: bool,
    pub single_put_max: u64,
    pub part_size: u64,
    /// Eviction bound for the Cron Trigger, in bytes.
    pub max_size: Option<u64>,
    pub eviction_grace_ms: u64,
    pub fill_lease_ms: u64,
}

impl Config {
    /// Read the configuration through `get` (a var or secret by name, as a
    /// string; JSON for the structured ones).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let json = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let upstreams: Vec<Upstream> = match json("UPSTREAMS") {
            Some(raw) => serde_json::from_str(&raw).map_err(|e| format!("UPSTREAMS: {e}"))?,
            None => defaults(),
        };
        let default_upstream = match get("DEFAULT_UPSTREAM") {
            Some(d) if d.trim().is_empty() => None,
            Some(d) => Some(d.trim().to_owned()),
            None => upstreams
                .iter()
                .any(|u| u.name == "docker.io")
                .then(|| "docker.io".to_owned()),
        };
        let hosts: BTreeMap<String, String> = match json("HOSTS") {
            Some(raw) => serde_json::from_str(&raw).map_err(|e| format!("HOSTS: {e}"))?,
            None => BTreeMap::new(),
        };
        let hosts = hosts
            .into_iter()
            .map(|(h, u)| (h.trim().to_ascii_lowercase(), u))
            .collect();
        let credentials = match json("UPSTREAM_CREDENTIALS") {
            Some(raw) => serde_json::from_str(&raw)
                // Never echo a secret back in an error.
                .map_err(|_| {
                    "UPSTREAM_CREDENTIALS is not a JSON object of {\"username\",\"password\"}"
                        .to_owned()
                })?,
            None => BTreeMap::new(),
        };
        let pull_tokens = match json("PULL_TOKENS") {
            Some(raw) => PullTokens::parse(&raw)?,
            None => PullTokens::default(),
        };
        let anonymous_pull = match get("ANONYMOUS_PULL").map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if v.is_empty() || v == "false" => false,
            Some(v) if v == "true" => true,
            Some(v) => {
                return Err(format!(
                    "ANONYMOUS_PULL: {v:?} is neither \"true\" nor \"false\""
                ))
            }
        };
        // A whole number (`unit` says of what, for the error), `default`
        // when unset.
        let number = |name: &str, default: u64, unit: &str| -> Result<u64, String> {
            match get(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}: {v:?} is not a number of {unit}")),
            }
        };
        let size = |name: &str, default: u64| number(name, default, "bytes");
        let ms = |name: &str, default_ms: u64| {
            number(name, default_ms / 1000, "seconds").map(|s| s.saturating_mul(1000))
        };
        let max_size = match get("MAX_SIZE").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(v) => Some(
                kura_core::config::parse_byte_size(&v)
                    .ok_or_else(|| format!("MAX_SIZE: {v:?} is not a size (50GiB, 500MB, 123)"))?,
            ),
        };
        let config = Config {
            upstreams,
            default_upstream,
            hosts,
            credentials,
            pull_tokens,
            anonymous_pull,
            single_put_max: size("R2_SINGLE_PUT_MAX_BYTES", 4 * GIB)?,
            part_size: size("R2_PART_BYTES", 256 * MIB)?,
            max_size,
            eviction_grace_ms: ms(
                "EVICTION_GRACE_SECS",
                kura_core::config::DEFAULT_EVICTION_GRACE_MS,
            )?,
            fill_lease_ms: ms("FILL_LEASE_SECS", kura_core::config::DEFAULT_FILL_LEASE_MS)?,
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        // No open default: a Worker's URL is public, and every pull through
        // it is paid by its owner (R2, requests, the upstream's quota).
        if self.pull_tokens.is_empty() && !self.anonymous_pull {
            return Err(NO_ACCESS.into());
        }
        let known = |n: &str| self.upstreams.iter().any(|u| u.name == n);
        if let Some(d) = &self.default_upstream {
            if !known(d) {
                return Err(format!("DEFAULT_UPSTREAM {d:?} is not in UPSTREAMS"));
            }
        }
        for (host, up) in &self.hosts {
            if !known(up) {
                return Err(format!(
                    "HOSTS: {host} maps to {up:?}, which is not in UPSTREAMS"
                ));
            }
        }
        for name in self.credentials.keys() {
            if !known(name) {
                return Err(format!(
                    "UPSTREAM_CREDENTIALS names {name:?}, which is not in UPSTREAMS"
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for u in &self.upstreams {
            for n in std::iter::once(&u.name).chain(&u.namespaces) {
                if !names.insert(n.as_str()) {
                    return Err(format!("UPSTREAMS: {n:?} is used twice"));
                }
            }
        }
        if !(R2_MIN_PART..=R2_MAX_PUT).contains(&self.part_size) {
            return Err(format!(
                "R2_PART_BYTES must be between {R2_MIN_PART} and {R2_MAX_PUT} (R2's part limits)"
            ));
        }
        if self.fill_lease_ms < 1000 {
            return Err("FILL_LEASE_SECS must be at least 1".into());
        }
        if self.single_put_max > R2_MAX_PUT {
            return Err(format!(
                "R2_SINGLE_PUT_MAX_BYTES must be at most {R2_MAX_PUT} (R2's largest single put)"
            ));
        }
        Ok(())
    }

    /// The core's upstream list, with credentials.
    pub fn core_upstreams(&self) -> Vec<UpstreamConfig> {
        self.upstreams
            .iter()
            .map(|u| {
                let creds = self.credentials.get(&u.name);
                let mut c = UpstreamConfig::new(&u.name, &u.url);
                c.username = creds.map(|c| c.username.clone());
                c.password = creds.map(|c| c.password.clone());
                c.tag_ttl_ms = u.tag_ttl_secs.saturating_mul(1000);
                c.max_stale_ms = u.max_stale_secs.saturating_mul(1000);
                c.token_realms = u.token_realms.clone();
                c.not_found_ttl_ms = u.not_found_ttl_secs.saturating_mul(1000);
                c
            })
            .collect()
    }
}

/// The answer of a Worker that says nothing about who may pull.
pub const NO_ACCESS: &str = "nobody may pull: set pull tokens with \
    `npx wrangler secret put PULL_TOKENS` (one token, or {\"name\": \"token\", ...}), \
    or set ANONYMOUS_PULL = \"true\" in wrangler.toml [vars] to let anyone pull \
    through this Worker at your expense";

/// The same public registries the native binary mirrors out of the box
/// (kura-core's list), with Docker Hub's other names as namespaces.
fn defaults() -> Vec<Upstream> {
    kura_core::config::PUBLIC_REGISTRIES
        .iter()
        .map(|r| Upstream {
            name: r.name.into(),
            url: r.url.into(),
            tag_ttl_secs: kura_core::config::default_tag_ttl_secs(),
            max_stale_secs: kura_core::config::default_max_stale_secs(),
            namespaces: r.aliases.iter().map(|s| s.to_string()).collect(),
            token_realms: Vec::new(),
            not_found_ttl_secs: kura_core::config::default_not_found_ttl_secs(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    /// With `vars`, and anonymous pull unless they say who may pull.
    fn config(vars: &[(&str, &str)]) -> Result<Config, String> {
        let mut map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if !map.contains_key("PULL_TOKENS") {
            map.entry("ANONYMOUS_PULL".into())
                .or_insert_with(|| "true".into());
        }
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn who_may_pull_must_be_said() {
        let e = Config::from_lookup(|_| None).unwrap_err();
        assert_eq!(e, NO_ACCESS);
        assert!(e.contains("wrangler secret put PULL_TOKENS") && e.contains("ANONYMOUS_PULL"));
        for anonymous in ["false", "FALSE", ""] {
            let e = config(&[("ANONYMOUS_PULL", anonymous)]).unwrap_err();
            assert_eq!(e, NO_ACCESS, "{anonymous:?}");
        }
        let e = config(&[("ANONYMOUS_PULL", "false"), ("PULL_TOKENS", "  ")]).unwrap_err();
        assert_eq!(e, NO_ACCESS, "a blank secret is no token");
        let c = config(&[("PULL_TOKENS", TOKEN)]).unwrap();
        assert!(!c.anonymous_pull);
        assert_eq!(c.pull_tokens.names().collect::<Vec<_>>(), ["token"]);
        let c = config(&[("ANONYMOUS_PULL", " True ")]).unwrap();
        assert!(c.anonymous_pull && c.pull_tokens.is_empty());
        let c = config(&[
            ("PULL_TOKENS", &format!(r#"{{"ci": "{TOKEN}"}}"#)),
            ("ANONYMOUS_PULL", "true"),
        ])
        .unwrap();
        assert!(c.anonymous_pull);
        assert_eq!(c.pull_tokens.names().collect::<Vec<_>>(), ["ci"]);
        let e = config(&[("ANONYMOUS_PULL", "yes")]).unwrap_err();
        assert!(e.contains("ANONYMOUS_PULL"), "{e}");
    }

    #[test]
    fn defaults_mirror_the_public_registries_with_docker_hub_as_default() {
        let c = config(&[]).unwrap();
        let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"]
        );
        assert_eq!(c.default_upstream.as_deref(), Some("docker.io"));
        assert_eq!(c.single_put_max, 4 * GIB);
        assert_eq!(c.part_size, 256 * MIB);
        assert_eq!(
            config(&[("DEFAULT_UPSTREAM", "")])
                .unwrap()
                .default_upstream,
            None
        );
    }

    #[test]
    fn upstreams_hosts_and_credentials() {
        let c = config(&[
            (
                "UPSTREAMS",
                r#"[{"name":"docker.io","url":"https://registry-1.docker.io","tag_ttl_secs":60,"namespaces":["index.docker.io"]},
                    {"name":"ghcr.io","url":"https://ghcr.io"}]"#,
            ),
            ("DEFAULT_UPSTREAM", "ghcr.io"),
            ("HOSTS", r#"{"Docker.Example.com":"docker.io","ghcr.example.com":"ghcr.io"}"#),
            ("UPSTREAM_CREDENTIALS", r#"{"docker.io":{"username":"u","password":"p"}}"#),
            ("R2_PART_BYTES", "5242880"),
        ])
        .unwrap();
        assert_eq!(c.hosts["docker.example.com"], "docker.io");
        assert_eq!(c.part_size, 5 * MIB);
        let core = c.core_upstreams();
        assert_eq!(core[0].tag_ttl_ms, 60_000);
        assert_eq!(core[0].max_stale_ms, 7 * 24 * 3600 * 1000);
        assert_eq!(core[0].username.as_deref(), Some("u"));
        assert_eq!(core[0].password.as_deref(), Some("p"));
        assert_eq!(core[1].username, None);
    }

    #[test]
    fn mistakes_are_named() {
        let up = r#"[{"name":"a.io","url":"https://a.io"}]"#;
        for (vars, needle) in [
            (vec![("UPSTREAMS", "[{]")], "UPSTREAMS"),
            (
                vec![("UPSTREAMS", up), ("DEFAULT_UPSTREAM", "b.io")],
                "DEFAULT_UPSTREAM",
            ),
            (
                vec![("UPSTREAMS", up), ("HOSTS", r#"{"x":"b.io"}"#)],
                "HOSTS",
            ),
            (
                vec![("UPSTREAM_CREDENTIALS", r#"{"docker.io":"hunter2"}"#)],
                "UPSTREAM_CREDENTIALS",
            ),
            (vec![("PULL_TOKENS", r#"{"ci":"hunter2"}"#)], "PULL_TOKENS"),
            (vec![("R2_PART_BYTES", "1000")], "R2_PART_BYTES"),
            (
                vec![("R2_SINGLE_PUT_MAX_BYTES", "x")],
                "R2_SINGLE_PUT_MAX_BYTES",
            ),
            (
                vec![(
                    "UPSTREAMS",
                    r#"[{"name":"a.io","url":"u","namespaces":["a.io"]}]"#,
                )],
                "twice",
            ),
            (
                vec![("UPSTREAMS", r#"[{"name":"a.io","url":"u","typo":1}]"#)],
                "typo",
            ),
        ] {
            let e = config(&vars).unwrap_err();
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains("hunter2"), "secret leaked: {e}");
        }
    }

    #[test]
    fn eviction_and_lease_settings() {
        let c = config(&[]).unwrap();
        assert_eq!(c.max_size, None);
        assert_eq!(c.eviction_grace_ms, 600_000);
        assert_eq!(c.fill_lease_ms, 20_000);
        let c = config(&[
            ("MAX_SIZE", "50GiB"),
            ("EVICTION_GRACE_SECS", "0"),
            ("FILL_LEASE_SECS", "5"),
        ])
        .unwrap();
        assert_eq!(c.max_size, Some(50 << 30));
        assert_eq!((c.eviction_grace_ms, c.fill_lease_ms), (0, 5_000));
        for (name, bad) in [
            ("MAX_SIZE", "lots"),
            ("EVICTION_GRACE_SECS", "ten"),
            ("FILL_LEASE_SECS", "0"),
        ] {
            let e = config(&[(name, bad)]).unwrap_err();
            assert!(e.contains(name), "{name}={bad}: {e}");
        }
    }
}
