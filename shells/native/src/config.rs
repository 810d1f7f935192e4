//! kura's configuration: defaults, then a YAML file, then `KURA_*`
//! environment variables, then command-line flags. Unknown keys are errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use figment::providers::{Env, Serialized};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Local-disk storage root, used unless `storage.s3` is set.
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    pub tls: Option<TlsConfig>,
    pub auth: Option<AuthConfig>,
    pub registry: RegistrySection,
    pub mirror: MirrorConfig,
    pub log: LogConfig,
    pub server: ServerSection,
    pub gc: GcSection,
    /// Which tags of hosted repositories garbage collection keeps.
    pub retention: Vec<RetentionSection>,
    /// Tags that never move once pushed.
    pub immutable_tags: Vec<ImmutableSection>,
    /// Keys of a registry:2 file that were ignored.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// Where each value came from.
    #[serde(skip)]
    pub origins: Origins,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:5000".parse().expect("literal address"),
            data_dir: PathBuf::from("kura-data"),
            storage: StorageConfig::default(),
            tls: None,
            auth: None,
            registry: RegistrySection::default(),
            mirror: MirrorConfig::default(),
            log: LogConfig::default(),
            server: ServerSection::default(),
            gc: GcSection::default(),
            retention: Vec::new(),
            immutable_tags: Vec::new(),
            warnings: Vec::new(),
            origins: Origins::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
    /// Several kura instances use this storage: refuse to start unless it
    /// takes create-only writes, which is how they share blob fills.
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// e.g. `http://127.0.0.1:9000` for MinIO or another S3-compatible server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible
    /// servers want. `false` uses virtual-hosted style (`bucket.endpoint`).
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Allow a plain-HTTP endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// Key prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Generate a self-signed certificate at startup (for trying things out).
    #[serde(default)]
    pub self_signed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// An htpasswd file with bcrypt hashes (`htpasswd -B`), reloaded when
    /// it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<PathBuf>,
    /// Let clients without credentials pull (every repository; `rules`
    /// say it per repository instead).
    #[serde(default)]
    pub anonymous_pull: bool,
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Group → its members.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Who may do what where. Without rules: anyone who authenticates may
    /// do anything, and anonymous callers may pull if `anonymous_pull`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AccessRuleSection>,
    /// Robot accounts for CI: a name and the SHA-256 of a token (`kura
    /// token new` makes both), a scope, an expiry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub robots: Vec<RobotSection>,
    /// Docker token auth: clients get short-lived bearer tokens from a
    /// token service (kura's own, or an external issuer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSection>,
}

/// One access rule as written in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRuleSection {
    /// Repositories (a glob: `team-a/**`).
    pub repositories: String,
    /// `*`, `authenticated`, `anonymous`, `group:NAME`, `user:NAME`.
    pub subjects: Vec<String>,
    /// `pull`, `push`, `delete`, `overwrite`, or `*`.
    pub rights: Vec<String>,
}

/// A robot account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobotSection {
    pub name: String,
    /// Hex SHA-256 of the token; the token itself is never stored.
    pub token_sha256: String,
    /// Limits on top of the rules; none: the rules alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<ScopeSection>,
    /// When the token stops working (RFC 3339, `2027-06-30T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSection {
    pub repositories: String,
    pub rights: Vec<String>,
}

/// Docker token auth.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// The token service clients are sent to. Default: kura's own,
    /// `/auth/token` on the address the client used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// The `service` tokens are for (their audience).
    #[serde(default = "default_service")]
    pub service: String,
    /// The issuer tokens name (`iss`).
    #[serde(default = "default_service")]
    pub issuer: String,
    /// Seconds kura's tokens last.
    #[serde(default = "default_token_lifetime")]
    pub lifetime_secs: u64,
    /// kura's signing key (PEM, P-256, PKCS#8). Default: one generated in
    /// the data directory. Instances behind one name share one key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<PathBuf>,
    /// Accept tokens of an external issuer instead, verified with these
    /// public keys (PEM, EC or RSA)...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuer_keys: Vec<PathBuf>,
    /// ...or the keys of this JWKS document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<PathBuf>,
}

fn default_service() -> String {
    "kura".into()
}

fn default_token_lifetime() -> u64 {
    300
}

fn default_realm() -> String {
    "kura".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// Allow DELETE of manifests, tags and blobs.
    pub delete_enabled: bool,
    pub max_manifest_size: usize,
    /// Upload sessions idle longer than this many seconds are removed.
    pub upload_max_idle_secs: u64,
}

impl Default for RegistrySection {
    fn default() -> Self {
        let core = kura_core::RegistryConfig::default();
        RegistrySection {
            delete_enabled: core.delete_enabled,
            max_manifest_size: core.max_manifest_size,
            upload_max_idle_secs: 24 * 3600,
        }
    }
}

/// Client connections: what one client, or many, may hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Connections served at once; at the limit kura stops accepting (new
    /// connections wait in the kernel's queue) until one closes. Capped by
    /// the open-file limit.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (and, on a new
    /// connection, its first bytes) before the connection is closed.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may go without a byte moving either way while
    /// kura waits on the client (a stalled body, a client that stopped
    /// reading) before it is closed.
    pub idle_timeout_secs: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            max_connections: 10_000,
            header_read_timeout_secs: 30,
            idle_timeout_secs: 300,
        }
    }
}

/// Garbage collection of hosted repositories, inside `kura serve` and by
/// `kura gc`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcSection {
    /// Seconds between collections inside `kura serve`; 0 turns them off
    /// (`kura gc` still runs).
    pub interval_secs: u64,
    /// Seconds something stays unreferenced before it goes.
    pub grace_secs: u64,
    /// Collect untagged manifests nothing live references.
    pub delete_untagged: bool,
}

impl Default for GcSection {
    fn default() -> Self {
        GcSection {
            interval_secs: 3600,
            grace_secs: kura_core::config::DEFAULT_GC_GRACE_MS / 1000,
            delete_untagged: true,
        }
    }
}

/// One retention rule, as written in the file (durations as `30d`, `12h`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Repositories it governs: a glob (`ci/**`).
    pub repositories: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_newest: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_pushed_within: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_pulled_within: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untagged_older_than: Option<String>,
}

/// Immutable tags, as written in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImmutableSection {
    pub repositories: String,
    pub tags: String,
}

fn pattern(field: &str, s: &str) -> anyhow::Result<kura_core::pattern::Pattern> {
    kura_core::pattern::Pattern::parse(s).map_err(|e| anyhow::anyhow!("{field}: {e}"))
}

fn duration_ms(field: &str, s: &Option<String>) -> anyhow::Result<Option<u64>> {
    s.as_deref()
        .map(|s| {
            humantime::parse_duration(s)
                .map(|d| d.as_millis() as u64)
                .map_err(|e| {
                    anyhow::anyhow!("{field}: {s:?} is not a duration like 30d or 12h ({e})")
                })
        })
        .transpose()
}

impl RetentionSection {
    pub fn to_core(&self, i: usize) -> anyhow::Result<kura_core::RetentionRule> {
        let at = |f: &str| format!("retention[{i}].{f}");
        let mut r =
            kura_core::RetentionRule::new(pattern(&at("repositories"), &self.repositories)?);
        r.keep_newest = self.keep_newest;
        r.keep_tags = self
            .keep_tags
            .iter()
            .map(|t| pattern(&at("keep_tags"), t))
            .collect::<anyhow::Result<_>>()?;
        r.keep_pushed_within_ms = duration_ms(&at("keep_pushed_within"), &self.keep_pushed_within)?;
        r.keep_pulled_within_ms = duration_ms(&at("keep_pulled_within"), &self.keep_pulled_within)?;
        r.untagged_older_than_ms =
            duration_ms(&at("untagged_older_than"), &self.untagged_older_than)?;
        Ok(r)
    }
}

impl ImmutableSection {
    pub fn to_core(&self, i: usize) -> anyhow::Result<kura_core::ImmutableTags> {
        Ok(kura_core::ImmutableTags::new(
            pattern(
                &format!("immutable_tags[{i}].repositories"),
                &self.repositories,
            )?,
            pattern(&format!("immutable_tags[{i}].tags"), &self.tags)?,
        ))
    }
}

/// Pull-through mirroring of upstream registries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    pub upstreams: Vec<UpstreamSection>,
    /// Names without a registry prefix or `?ns=` go to this upstream (what
    /// Docker's `registry-mirrors` needs). Unset: such names are hosted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// HTTP(S) proxy for upstream traffic; unset: HTTPS_PROXY, HTTP_PROXY,
    /// ALL_PROXY and NO_PROXY from the environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_proxy: Option<String>,
    /// Extra PEM CA bundles trusted for upstream TLS (private registries).
    pub ca_files: Vec<PathBuf>,
    pub connect_timeout_secs: u64,
    pub read_timeout_secs: u64,
    /// Bound on mirrored blob bytes, e.g. `50GiB`; least recently used
    /// blobs are evicted above it. Unset: no bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
    pub evict_interval_secs: u64,
    /// A blob used this recently is never evicted (it may be being served).
    pub eviction_grace_secs: u64,
    /// How long a blob fill's lease in storage lasts unrenewed: instances
    /// sharing the storage take over a fill whose holder stopped renewing
    /// it for this long (it died).
    pub fill_lease_secs: u64,
}

/// A byte count written as a number or with a unit (`500MB`, `50GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Option<ByteSize> {
        kura_core::config::parse_byte_size(s).map(ByteSize)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!("not a size: {s:?} (e.g. 500MB, 50GiB)"))
            }),
        }
    }
}

impl Default for MirrorConfig {
    fn default() -> Self {
        // Out of the box kura mirrors the public registries people pull from
        // most, by name prefix (`docker.io/library/alpine:3.20`) and `?ns=`;
        // bare names stay hosted so pushes work. A config file's
        // `mirror.upstreams` replaces this list.
        let public = |r: &kura_core::config::PublicRegistry| UpstreamSection {
            name: r.name.into(),
            url: r.url.into(),
            username: None,
            password: None,
            tag_ttl_secs: kura_core::config::default_tag_ttl_secs(),
            max_stale_secs: kura_core::config::default_max_stale_secs(),
            token_realms: Vec::new(),
            not_found_ttl_secs: kura_core::config::default_not_found_ttl_secs(),
            body_idle_timeout_secs: kura_core::config::default_body_idle_timeout_secs(),
        };
        MirrorConfig {
            upstreams: kura_core::config::PUBLIC_REGISTRIES
                .iter()
                .map(public)
                .collect(),
            default: None,
            proxy: None,
            no_proxy: None,
            ca_files: Vec::new(),
            connect_timeout_secs: 10,
            read_timeout_secs: 60,
            max_size: None,
            evict_interval_secs: 60,
            eviction_grace_secs: kura_core::config::DEFAULT_EVICTION_GRACE_MS / 1000,
            fill_lease_secs: kura_core::config::DEFAULT_FILL_LEASE_MS / 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// The registry name clients use: `docker.io`, `ghcr.io`, `quay.io`.
    pub name: String,
    /// e.g. `https://registry-1.docker.io`
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Seconds a tag is served without asking the upstream.
    #[serde(default = "kura_core::config::default_tag_ttl_secs")]
    pub tag_ttl_secs: u64,
    /// How old cached tags may be when served because the upstream fails.
    #[serde(default = "kura_core::config::default_max_stale_secs")]
    pub max_stale_secs: u64,
    /// Token realm hosts (or `host:port`) trusted with the credentials
    /// besides the upstream's own host and registrable domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_realms: Vec<String>,
    /// Seconds an upstream 404 for a manifest or blob is remembered and
    /// answered without asking again (0: off).
    #[serde(default = "kura_core::config::default_not_found_ttl_secs")]
    pub not_found_ttl_secs: u64,
    /// Seconds a blob body from this upstream may deliver less than 1 KiB
    /// before its fill is given up (a stalled or dripping upstream; 0: off).
    #[serde(default = "kura_core::config::default_body_idle_timeout_secs")]
    pub body_idle_timeout_secs: u64,
}

impl UpstreamSection {
    pub fn to_core(&self) -> kura_core::UpstreamConfig {
        let mut u = kura_core::UpstreamConfig::new(&self.name, &self.url);
        u.username = self.username.clone();
        u.password = self.password.clone();
        u.tag_ttl_ms = self.tag_ttl_secs.saturating_mul(1000);
        u.max_stale_ms = self.max_stale_secs.saturating_mul(1000);
        u.token_realms = self.token_realms.clone();
        u.not_found_ttl_ms = self.not_found_ttl_secs.saturating_mul(1000);
        u.body_idle_timeout_ms = self.body_idle_timeout_secs.saturating_mul(1000);
        u
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `kura=debug,info`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where a configuration value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// kura's default.
    Default,
    /// registry:2's default, for a key a registry:2 file leaves unset.
    Registry2Default,
    File,
    Environment,
    CommandLine,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Origin::Default => "default",
            Origin::Registry2Default => "registry:2 default",
            Origin::File => "file",
            Origin::Environment => "environment",
            Origin::CommandLine => "command line",
        }
    }
}

/// The origin of every value not at kura's default, by dotted path.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// The file read, and whether it was in registry:2's format.
    pub file: Option<(PathBuf, bool)>,
    set: std::collections::BTreeMap<String, Origin>,
}

impl Origins {
    /// Record every leaf of `v` (a mapping of configuration keys) under
    /// `origin`; later records win, as later providers do in [`Config::load`].
    fn record(&mut self, v: &serde_yaml_ng::Value, origin: Origin) {
        fn walk(
            v: &serde_yaml_ng::Value,
            path: &str,
            origin: Origin,
            set: &mut std::collections::BTreeMap<String, Origin>,
        ) {
            match v.as_mapping() {
                Some(m) if !m.is_empty() || path.is_empty() => {
                    for (k, child) in m {
                        let key = match k {
                            serde_yaml_ng::Value::String(s) => s.clone(),
                            other => serde_yaml_ng::to_string(other)
                                .unwrap_or_default()
                                .trim_end()
                                .to_owned(),
                        };
                        let p = if path.is_empty() {
                            key
                        } else {
                            format!("{path}.{key}")
                        };
                        walk(child, &p, origin, set);
                    }
                }
                // Not a mapping at all (an empty file): nothing set.
                _ if path.is_empty() => {}
                _ => {
                    // A value set here replaces any recorded below it.
                    let below = format!("{path}.");
                    set.retain(|k, _| !k.starts_with(&below));
                    set.insert(path.to_owned(), origin);
                }
            }
        }
        walk(v, "", origin, &mut self.set);
    }

    /// Where the value at `path` came from: its own record or the nearest
    /// recorded parent (a list set whole), else kura's default.
    pub fn of(&self, path: &str) -> Origin {
        let mut p = path;
        loop {
            if let Some(o) = self.set.get(p) {
                return *o;
            }
            match p.rsplit_once('.') {
                Some((parent, _)) => p = parent,
                None => return Origin::Default,
            }
        }
    }
}

/// Command-line values that override the file and environment.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Build the effective configuration.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let mut warnings = Vec::new();
        let mut origins = Origins::default();
        if let Some(file) = file {
            // figment skips missing files silently; a named file must exist.
            if !file.is_file() {
                bail!("config file {} does not exist", file.display());
            }
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
                .with_context(|| format!("{} is not valid YAML", file.display()))?;
            match crate::compat::translate(&doc)
                .with_context(|| format!("{} (registry:2 format)", file.display()))?
            {
                Some(t) => {
                    warnings = t.warnings;
                    origins.file = Some((file.to_owned(), true));
                    origins.record(&t.config, Origin::File);
                    for path in &t.defaults {
                        origins.set.insert(path.clone(), Origin::Registry2Default);
                    }
                    fig = fig.merge(FileValues::new(file, t.config));
                }
                None => {
                    origins.file = Some((file.to_owned(), false));
                    origins.record(&doc, Origin::File);
                    fig = fig.merge(FileValues::new(file, doc));
                }
            }
        }
        let env = Env::prefixed("KURA_").split("__");
        origins.record(&provided(&env)?, Origin::Environment);
        origins.record(
            &provided(&Serialized::defaults(overrides))?,
            Origin::CommandLine,
        );
        let fig = fig.merge(env).merge(Serialized::defaults(overrides));
        let mut config: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid configuration: {}", msgs.join("; "))
        })?;
        config.warnings = warnings;
        config.origins = origins;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let s = &self.server;
        if s.max_connections == 0 || s.header_read_timeout_secs == 0 || s.idle_timeout_secs == 0 {
            bail!("server: max_connections, header_read_timeout_secs and idle_timeout_secs must be above 0");
        }
        if let Some(tls) = &self.tls {
            match (&tls.cert, &tls.key, tls.self_signed) {
                (Some(_), Some(_), false) | (None, None, true) => {}
                (None, None, false) => bail!("tls: give cert and key, or self_signed: true"),
                (_, _, true) => bail!("tls: self_signed cannot be combined with cert/key"),
                _ => bail!("tls: cert and key must be given together"),
            }
        }
        if let Some(s3) = &self.storage.s3 {
            if s3.bucket.is_empty() {
                bail!("storage.s3.bucket must not be empty");
            }
            if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
                bail!("storage.s3: access_key_id and secret_access_key go together");
            }
        }
        for (i, r) in self.retention.iter().enumerate() {
            r.to_core(i)?;
        }
        for (i, r) in self.immutable_tags.iter().enumerate() {
            r.to_core(i)?;
        }
        if let Some(auth) = &self.auth {
            crate::auth::Authenticator::from_config(auth, None).context("auth")?;
        }
        Ok(())
    }

    /// The configuration as YAML, secrets masked, followed by a comment
    /// naming where each value came from (for `kura config check`).
    pub fn to_yaml_with_origins(&self) -> String {
        let mut out = self.to_yaml();
        let shown = serde_yaml_ng::to_value(self.masked()).unwrap_or_default();
        let mut leaves = Vec::new();
        leaf_paths(&shown, "", &mut leaves);
        let width = leaves.iter().map(String::len).max().unwrap_or(0);
        match &self.origins.file {
            Some((f, true)) => out.push_str(&format!(
                "# Where each value comes from. File: {} (registry:2 format).\n\
                 # \"registry:2 default\": registry:2's behaviour for a key the file leaves unset.\n",
                f.display()
            )),
            Some((f, false)) => out.push_str(&format!(
                "# Where each value comes from. File: {}.\n",
                f.display()
            )),
            None => out.push_str("# Where each value comes from (no file):\n"),
        }
        for path in leaves {
            let origin = self.origins.of(&path).label();
            out.push_str(&format!("#   {path:<width$}  {origin}\n"));
        }
        out
    }

    /// The configuration as YAML, secrets masked.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(&self.masked())
            .unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    fn masked(&self) -> Config {
        let mut shown = self.clone();
        for u in &mut shown.mirror.upstreams {
            if u.password.is_some() {
                u.password = Some("********".into());
            }
        }
        if let Some(s3) = shown.storage.s3.as_mut() {
            if s3.secret_access_key.is_some() {
                s3.secret_access_key = Some("********".into());
            }
        }
        shown
    }
}

/// The keys a figment provider sets, as YAML.
/// A configuration file's values for figment, parsed here with
/// serde_yaml_ng (figment's own YAML provider is built on the unmaintained
/// serde_yaml); errors name the file.
struct FileValues {
    path: PathBuf,
    values: serde_yaml_ng::Value,
}

impl FileValues {
    fn new(path: &Path, values: serde_yaml_ng::Value) -> FileValues {
        FileValues {
            path: path.to_owned(),
            values,
        }
    }
}

impl figment::Provider for FileValues {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("YAML file").source(figment::Source::File(self.path.clone()))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        // An empty file sets nothing.
        if self.values.is_null() {
            return Ok(Default::default());
        }
        Serialized::defaults(&self.values).data()
    }
}

fn provided(p: &impl figment::Provider) -> anyhow::Result<serde_yaml_ng::Value> {
    let data = p
        .data()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let dict = data.into_values().next().unwrap_or_default();
    Ok(serde_yaml_ng::to_value(dict)?)
}

/// The dotted paths of `v`'s values: mapping entries, a list as one value.
fn leaf_paths(v: &serde_yaml_ng::Value, path: &str, out: &mut Vec<String>) {
    match v.as_mapping() {
        Some(m) if !m.is_empty() => {
            for (k, child) in m {
                let key = k.as_str().unwrap_or("?");
                let p = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                leaf_paths(child, &p, out);
            }
        }
        _ if !path.is_empty() => out.push(path.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("kura.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert!(c.storage.s3.is_none());
        let names: Vec<&str> = c.mirror.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"]
        );
        assert!(c.mirror.default.is_none(), "bare names stay hosted");
    }

    #[test]
    fn configured_upstreams_replace_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "mirror:\n  upstreams:\n    - name: up.local\n      url: http://127.0.0.1:1\n",
        );
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(c.mirror.upstreams.len(), 1);
        let f = write(dir.path(), "mirror:\n  upstreams: []\n");
        assert!(Config::load(Some(&f), &Overrides::default())
            .unwrap()
            .mirror
            .upstreams
            .is_empty());
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "listen: 127.0.0.1:6000\ndata_dir: /srv/kura\nregistry:\n  delete_enabled: false\n",
        );
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.data_dir, PathBuf::from("/srv/kura"));
        assert!(!c.registry.delete_enabled);
        let o = Overrides {
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            data_dir: None,
        };
        let c = Config::load(Some(&f), &o).unwrap();
        assert_eq!(c.listen.port(), 7000, "flags beat the file");
        assert_eq!(c.data_dir, PathBuf::from("/srv/kura"));
    }

    #[test]
    fn an_empty_file_sets_nothing_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "");
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        let f = write(dir.path(), "mirror:\n  max_size: lots\n");
        let err = Config::load(Some(&f), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mirror.max_size"), "{err}");
        assert!(err.contains(&f.display().to_string()), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "listne: 1.2.3.4:5\n",
            "storage:\n  s4: {}\n",
            "registry:\n  delete: true\n",
        ] {
            let f = write(dir.path(), text);
            let err = Config::load(Some(&f), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown field"), "{text:?}: {err}");
        }
    }

    #[test]
    fn missing_file_and_bad_tls() {
        assert!(Config::load(
            Some(Path::new("/nonexistent/kura.yaml")),
            &Overrides::default()
        )
        .is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "tls:\n  cert: /a\n");
        assert!(Config::load(Some(&f), &Overrides::default()).is_err());
    }

    #[test]
    fn gc_retention_and_immutable_tags() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!((c.gc.interval_secs, c.gc.grace_secs), (3600, 3600));
        assert!(c.gc.delete_untagged);
        let f = write(
            dir.path(),
            "gc:\n  interval_secs: 60\n  grace_secs: 10\nretention:\n  - repositories: ci/**\n    keep_newest: 5\n    keep_tags: [\"v*\"]\n    keep_pulled_within: 30d\n    untagged_older_than: 12h\nimmutable_tags:\n  - repositories: releases/**\n    tags: v*\n",
        );
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(c.gc.interval_secs, 60);
        let r = c.retention[0].to_core(0).unwrap();
        assert_eq!(r.keep_newest, Some(5));
        assert_eq!(r.keep_pulled_within_ms, Some(30 * 24 * 3600 * 1000));
        assert_eq!(r.untagged_older_than_ms, Some(12 * 3600 * 1000));
        assert!(r.repositories.matches("ci/app/x"));
        assert!(c.immutable_tags[0].to_core(0).unwrap().tags.matches("v1"));
        for (text, names) in [
            (
                "retention:\n  - repositories: ci/**\n    keep_pushed_within: soon\n",
                "retention[0].keep_pushed_within",
            ),
            (
                "retention:\n  - repositories: \"\"\n",
                "retention[0].repositories",
            ),
            (
                "immutable_tags:\n  - repositories: a/**\n    tags: \"v***\"\n",
                "immutable_tags[0].tags",
            ),
        ] {
            let f = write(dir.path(), text);
            let err = format!(
                "{:#}",
                Config::load(Some(&f), &Overrides::default()).unwrap_err()
            );
            assert!(err.contains(names), "{text}: {err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("50GiB"), Some(ByteSize(50 << 30)));
        assert_eq!(ByteSize::parse("500MB"), Some(ByteSize(500_000_000)));
        assert_eq!(ByteSize::parse("123"), Some(ByteSize(123)));
        assert_eq!(ByteSize::parse("1 kib"), Some(ByteSize(1024)));
        assert_eq!(ByteSize::parse("5 parsecs"), None);
        assert_eq!(ByteSize::parse("99999999999TiB"), None);
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "mirror:\n  max_size: 2GiB\n");
        assert_eq!(
            Config::load(Some(&f), &Overrides::default())
                .unwrap()
                .mirror
                .max_size,
            Some(ByteSize(2 << 30))
        );
    }

    #[test]
    fn registry2_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /srv/reg\nhttp:\n  addr: 127.0.0.1:5999\nproxy:\n  remoteurl: http://127.0.0.1:5100\nnotifications: {}\n",
        );
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5999");
        assert_eq!(c.data_dir, PathBuf::from("/srv/reg"));
        assert_eq!(c.mirror.default.as_deref(), Some("127.0.0.1"));
        assert_eq!(c.mirror.upstreams[0].url, "http://127.0.0.1:5100");
        assert!(
            c.warnings.iter().any(|w| w.contains("`notifications`")),
            "{:?}",
            c.warnings
        );
    }

    /// A registry:2 file that does not enable deletes runs without them,
    /// as registry:2 would, and says where each value came from.
    #[test]
    fn registry2_defaults_survive_loading() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /srv/reg\nhttp:\n  addr: :5000\n",
        );
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert!(!c.registry.delete_enabled);
        assert!(
            c.mirror.upstreams.is_empty(),
            "registry:2 mirrors nothing without proxy"
        );
        assert_eq!(c.registry.upload_max_idle_secs, 168 * 3600);
        let o = &c.origins;
        assert_eq!(o.of("registry.delete_enabled"), Origin::Registry2Default);
        assert_eq!(o.of("mirror.upstreams"), Origin::Registry2Default);
        assert_eq!(o.of("listen"), Origin::File);
        assert_eq!(o.of("data_dir"), Origin::File);
        assert_eq!(o.of("log.level"), Origin::Default);
        assert_eq!(o.of("registry.max_manifest_size"), Origin::Default);

        let f = write(
            dir.path(),
            "version: 0.1\nstorage:\n  filesystem: {}\n  delete:\n    enabled: true\n",
        );
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert!(c.registry.delete_enabled);
        assert_eq!(c.origins.of("registry.delete_enabled"), Origin::File);
        assert_eq!(c.origins.of("data_dir"), Origin::Registry2Default);
    }

    #[test]
    fn origins_of_a_kura_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "listen: 127.0.0.1:6000\nregistry:\n  delete_enabled: false\nmirror:\n  upstreams:\n    - name: up.local\n      url: http://127.0.0.1:1\n",
        );
        let o = Overrides {
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            data_dir: None,
        };
        let c = Config::load(Some(&f), &o).unwrap();
        let o = &c.origins;
        assert_eq!(o.of("listen"), Origin::CommandLine);
        assert_eq!(o.of("registry.delete_enabled"), Origin::File);
        assert_eq!(o.of("registry.max_manifest_size"), Origin::Default);
        assert_eq!(
            o.of("mirror.upstreams"),
            Origin::File,
            "a list is one value"
        );
        assert_eq!(o.of("mirror.read_timeout_secs"), Origin::Default);
        assert_eq!(o.of("data_dir"), Origin::Default);
    }

    /// `kura config check`'s output is the YAML of `to_yaml` plus one
    /// comment line per value naming its origin.
    #[test]
    fn origins_are_listed_after_the_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "version: 0.1\nstorage:\n  s3:\n    bucket: b\n    secretkey: hidden\n    accesskey: k\n",
        );
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        let out = c.to_yaml_with_origins();
        let reparsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap();
        let plain: serde_yaml_ng::Value = serde_yaml_ng::from_str(&c.to_yaml()).unwrap();
        assert_eq!(reparsed, plain, "{out}");
        assert!(!out.contains("hidden"), "{out}");
        let origin = |path: &str| -> String {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("#   {path} ")))
                .unwrap_or_else(|| panic!("no origin for {path}: {out}"));
            line[4 + path.len()..].trim().to_owned()
        };
        assert_eq!(origin("storage.s3.bucket"), "file");
        assert_eq!(origin("storage.s3.secret_access_key"), "file");
        assert_eq!(origin("storage.s3.region"), "default");
        assert_eq!(origin("registry.delete_enabled"), "registry:2 default");
        assert_eq!(origin("log.level"), "default");
        assert!(out.contains("(registry:2 format)"), "{out}");
    }

    #[test]
    fn s3_section_and_masking() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "storage:\n  s3:\n    bucket: b\n    endpoint: http://127.0.0.1:9000\n    access_key_id: k\n    secret_access_key: s\n    allow_http: true\n",
        );
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        let s3 = c.storage.s3.as_ref().unwrap();
        assert!(s3.path_style);
        assert_eq!(s3.region, "us-east-1");
        let y = c.to_yaml();
        assert!(
            y.contains("********") && !y.contains("secret_access_key: s\n"),
            "{y}"
        );
    }
}
