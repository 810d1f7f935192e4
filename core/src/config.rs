//! What every host of the core starts from: the public registries kura
//! mirrors when nothing else is configured, and how long it trusts what an
//! upstream said. The native binary, the Worker and the wasm package read
//! these instead of writing their own.

/// How long a mirrored tag is served without asking the upstream, in
/// seconds.
pub const DEFAULT_TAG_TTL_SECS: u64 = 300;

/// How old cached content may be when served because the upstream fails,
/// in seconds (a week).
pub const DEFAULT_MAX_STALE_SECS: u64 = 7 * 24 * 3600;

/// How long an upstream 404 is remembered, in seconds: long enough to
/// absorb a burst of pulls of a name that does not exist, short enough that
/// a freshly pushed tag shows up soon.
pub const DEFAULT_NOT_FOUND_TTL_SECS: u64 = 15;

/// How long a blob body from an upstream may go without delivering
/// [`BODY_IDLE_MIN_BYTES`] before the fill gives up on it, in seconds.
pub const DEFAULT_BODY_IDLE_TIMEOUT_SECS: u64 = 30;

/// What a blob body must deliver in every [`UpstreamConfig::body_idle_timeout_ms`]
/// to count as moving: a connection dripping a byte a second is as stuck
/// as a silent one, and both hold every client of the fill.
pub const BODY_IDLE_MIN_BYTES: u64 = 1024;

/// How long a blob fill's storage lease lasts unrenewed, in ms
/// ([`RegistryConfig::fill_lease_ms`]).
pub const DEFAULT_FILL_LEASE_MS: u64 = 20_000;

/// How recently a mirrored blob may have been used and still be evicted,
/// in ms: a blob used within the last ten minutes may be being served.
pub const DEFAULT_EVICTION_GRACE_MS: u64 = 10 * 60 * 1000;

/// How long garbage collection leaves something unreferenced before it
/// goes, by default: an hour (zot's `gcDelay` default too).
pub const DEFAULT_GC_GRACE_MS: u64 = 3600 * 1000;

/// A byte count as operators write one: a number of bytes, or a number with
/// a decimal (`kB`, `MB`, `GB`, `TB`) or binary (`KiB`, `MiB`, `GiB`, `TiB`)
/// unit, case and a space before the unit ignored. `None` if it is not one,
/// or overflows.
pub fn parse_byte_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let mult: u64 = match s[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000u64.pow(4),
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A public registry kura mirrors out of the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublicRegistry {
    /// The name clients use (`docker.io`): a path prefix and `?ns=` value.
    pub name: &'static str,
    /// Where its registry API lives.
    pub url: &'static str,
    /// Other names clients use for the same registry.
    pub aliases: &'static [&'static str],
}

/// The registries people pull from most.
pub const PUBLIC_REGISTRIES: &[PublicRegistry] = &[
    PublicRegistry {
        name: "docker.io",
        url: "https://registry-1.docker.io",
        aliases: &[
            "index.docker.io",
            "registry-1.docker.io",
            "registry.hub.docker.com",
        ],
    },
    PublicRegistry {
        name: "ghcr.io",
        url: "https://ghcr.io",
        aliases: &[],
    },
    PublicRegistry {
        name: "quay.io",
        url: "https://quay.io",
        aliases: &[],
    },
    PublicRegistry {
        name: "registry.k8s.io",
        url: "https://registry.k8s.io",
        aliases: &[],
    },
];

/// Whether `name` is Docker Hub under any of its names.
pub fn is_docker_hub(name: &str) -> bool {
    let hub = &PUBLIC_REGISTRIES[0];
    name == hub.name || hub.aliases.contains(&name)
}

/// [`DEFAULT_TAG_TTL_SECS`], as a function for `#[serde(default = ...)]`
/// in a shell's configuration file.
pub fn default_tag_ttl_secs() -> u64 {
    DEFAULT_TAG_TTL_SECS
}

/// [`DEFAULT_MAX_STALE_SECS`], for `#[serde(default = ...)]`.
pub fn default_max_stale_secs() -> u64 {
    DEFAULT_MAX_STALE_SECS
}

/// [`DEFAULT_NOT_FOUND_TTL_SECS`], for `#[serde(default = ...)]`.
pub fn default_not_found_ttl_secs() -> u64 {
    DEFAULT_NOT_FOUND_TTL_SECS
}

/// [`DEFAULT_BODY_IDLE_TIMEOUT_SECS`], for `#[serde(default = ...)]`.
pub fn default_body_idle_timeout_secs() -> u64 {
    DEFAULT_BODY_IDLE_TIMEOUT_SECS
}

/// Longest wait for an upstream when a stale answer could be given
/// instead (a tag past its TTL, still within `max_stale_ms`).
pub const STALE_DEADLINE_MS: u64 = 3_000;

/// How long an upstream that timed out or could not be reached is
/// considered down: requests that can be answered from the cache are, at
/// once, without asking it (a circuit breaker's open window).
pub const DOWN_WINDOW_MS: u64 = 10_000;

/// What an operator tunes about a registry. [`Default`] has a registry
/// that allows deletes, takes manifests up to 4 MiB, pages up to 10,000
/// entries, keeps 16 MiB of recent manifests and records a mirrored
/// blob's use at most every five minutes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// Allow DELETE of manifests, tags and blobs.
    pub delete_enabled: bool,
    /// Largest manifest accepted, in bytes (OCI asks registries to take at
    /// least 4 MiB).
    pub max_manifest_size: usize,
    /// Largest page of tags or repositories returned for one request.
    pub max_page_size: usize,
    /// Memory for recently served manifests and mirrored tag lookups.
    pub manifest_cache_bytes: usize,
    /// How often, at most, the last use of one mirrored blob is written to
    /// storage (eviction goes by it; memory has every use in between).
    pub access_record_interval_ms: u64,
    /// How long the storage lease of a blob fill lasts unrenewed. Every
    /// process sharing the storage fills a blob once between them: the
    /// holder renews the lease every quarter of this; the others follow
    /// its spool, and take the fill over once the lease has not changed
    /// for this long (its holder died).
    pub fill_lease_ms: u64,
    /// Eviction passes ([`crate::Registry::evict`]) run on this storage, in
    /// this process or another sharing it: record what they must learn
    /// (blobs filled and used, blobs a hosted repository keeps) as small
    /// change objects, so that a pass reads what changed instead of
    /// listing the cache. Off (the default), nothing is recorded and every
    /// pass lists the whole cache. Every process sharing a storage should
    /// say the same.
    pub records_changes: bool,
    /// Which tags of hosted repositories garbage collection keeps
    /// ([`crate::Registry::collect_garbage`]); the first rule matching a
    /// repository governs it. None: every tag is kept.
    pub retention: Vec<crate::hosted::RetentionRule>,
    /// Tags that never move once pushed.
    pub immutable_tags: Vec<crate::hosted::ImmutableTags>,
    /// The grace period of the garbage collections of this storage (the
    /// shortest, if they differ): a push's probe of a blob (a HEAD)
    /// rewrites the repository's link at least every quarter of it, so
    /// that the manifest which follows the probe finds the link still
    /// there.
    pub gc_grace_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            delete_enabled: true,
            max_manifest_size: 4 * 1024 * 1024,
            max_page_size: 10_000,
            manifest_cache_bytes: 16 * 1024 * 1024,
            access_record_interval_ms: 5 * 60 * 1000,
            fill_lease_ms: DEFAULT_FILL_LEASE_MS,
            records_changes: false,
            retention: Vec::new(),
            immutable_tags: Vec::new(),
            gc_grace_ms: DEFAULT_GC_GRACE_MS,
        }
    }
}

/// One configured upstream registry.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// The registry's name as clients write it: `docker.io`, `ghcr.io`. It
    /// is matched against `?ns=` and the first path component.
    pub name: String,
    /// Base URL, e.g. `https://registry-1.docker.io`.
    pub url: String,
    /// The user for the upstream's basic or token auth; `None` pulls
    /// anonymously.
    pub username: Option<String>,
    /// The password (or access token) that goes with `username`.
    pub password: Option<String>,
    /// How long a tag is trusted before it is revalidated upstream.
    pub tag_ttl_ms: u64,
    /// How old cached content may be when served because the upstream
    /// fails.
    pub max_stale_ms: u64,
    /// Token realm hosts (`auth.example.com`, or `host:port`) trusted with
    /// this upstream's credentials besides the upstream's own host and
    /// registrable domain. A realm elsewhere gets
    /// no credentials (the token is asked for anonymously).
    pub token_realms: Vec<String>,
    /// How long an upstream 404 for a manifest or blob is remembered (and
    /// answered without asking again); 0 turns it off.
    pub not_found_ttl_ms: u64,
    /// A blob fill gives up on the upstream's body when it delivers less
    /// than [`BODY_IDLE_MIN_BYTES`] in this long (stalled, or dripping);
    /// its clients' connections are cut and nothing is cached. 0 turns it
    /// off.
    pub body_idle_timeout_ms: u64,
}

impl UpstreamConfig {
    /// The upstream `name` at `url`, anonymous, with the shared defaults of
    /// this module.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        UpstreamConfig {
            name: name.into(),
            url: url.into(),
            username: None,
            password: None,
            tag_ttl_ms: DEFAULT_TAG_TTL_SECS * 1000,
            max_stale_ms: DEFAULT_MAX_STALE_SECS * 1000,
            token_realms: Vec::new(),
            not_found_ttl_ms: DEFAULT_NOT_FOUND_TTL_SECS * 1000,
            body_idle_timeout_ms: DEFAULT_BODY_IDLE_TIMEOUT_SECS * 1000,
        }
    }

    /// The public registries of [`PUBLIC_REGISTRIES`], each
    /// with the shared defaults.
    pub fn public() -> Vec<Self> {
        PUBLIC_REGISTRIES
            .iter()
            .map(|r| Self::new(r.name, r.url))
            .collect()
    }

    /// Docker Hub keeps official images under `library/`.
    pub fn is_docker_hub(&self) -> bool {
        is_docker_hub(&self.name)
    }

    /// The repository name to ask the upstream for.
    pub fn upstream_name(&self, name: &str) -> String {
        if self.is_docker_hub() && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn docker_hub_by_every_name() {
        for n in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert!(is_docker_hub(n), "{n}");
        }
        assert!(!is_docker_hub("ghcr.io"));
        assert!(!is_docker_hub("docker.io.evil"));
    }
}
