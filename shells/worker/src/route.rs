//! Which upstream a request means, before the core routes it.
//!
//! The core routes a mirrored request by `?ns=<registry>`, then by a
//! `<registry>/` path prefix, then to the default upstream. The Worker adds
//! two ways of naming a registry, both turned into the core's own here:
//!
//! - **Hostname**: `HOSTS` maps e.g. `ghcr.example.com` to `ghcr.io`. A
//!   request to that host that names no registry itself gets `ns=ghcr.io`,
//!   so `docker pull ghcr.example.com/owner/app` mirrors `ghcr.io/owner/app`.
//!   An explicit `?ns=` or registry prefix wins over the hostname.
//! - **Namespaces** (aliases): an upstream's `namespaces` (say
//!   `index.docker.io` for `docker.io`) are rewritten to its name, in `ns=`
//!   and as the first path component.
//!
//! Doing this in the shell keeps the core's routing (and its storage names,
//! `docker.io/library/alpine`) one thing: every spelling of a repository
//! ends up as the same core request.

use crate::config::Config;

/// Rewrite a request target (`/v2/...?query`) addressed to `host` so that
/// the core routes it. Targets outside `/v2/<name>/` are returned as is.
pub fn rewrite(config: &Config, host: Option<&str>, target: &str) -> String {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let Some(rest) = path.strip_prefix("/v2/") else {
        return target.to_owned();
    };
    if rest.is_empty() || rest == "_catalog" || !rest.contains('/') {
        return target.to_owned();
    }
    let canonical = |n: &str| -> Option<&str> {
        config
            .upstreams
            .iter()
            .find(|u| u.name == n || u.namespaces.iter().any(|a| a == n))
            .map(|u| u.name.as_str())
    };

    // An explicit ns= wins; aliases become the upstream's name.
    let mut has_ns = false;
    let mut params: Vec<String> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("ns", v)) => {
                has_ns = true;
                params.push(format!("ns={}", canonical(v).unwrap_or(v)));
            }
            _ => params.push(pair.to_owned()),
        }
    }

    let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let mut path = path.to_owned();
    if !has_ns {
        if let Some(name) = canonical(first) {
            path = format!("/v2/{name}/{tail}");
        } else if let Some(up) = host.and_then(|h| config.hosts.get(&hostname(h))) {
            params.push(format!("ns={up}"));
        }
    }
    if params.is_empty() {
        path
    } else {
        format!("{path}?{}", params.join("&"))
    }
}

/// The host part of a `Host` value, lowercase, without a port.
fn hostname(host: &str) -> String {
    let h = match host.rsplit_once(':') {
        // A numeric port; `[::1]` keeps its colons.
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    h.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_lookup(|k| match k {
            "HOSTS" => {
                Some(r#"{"docker.example.com":"docker.io","ghcr.example.com":"ghcr.io"}"#.into())
            }
            "ANONYMOUS_PULL" => Some("true".into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn hostnames_become_ns() {
        let c = config();
        let r = |host: &str, t: &str| rewrite(&c, Some(host), t);
        assert_eq!(
            r("ghcr.example.com", "/v2/owner/app/manifests/v1"),
            "/v2/owner/app/manifests/v1?ns=ghcr.io"
        );
        assert_eq!(
            r("GHCR.example.com:443", "/v2/owner/app/blobs/sha256:ab?x=1"),
            "/v2/owner/app/blobs/sha256:ab?x=1&ns=ghcr.io"
        );
        // Docker's registry-mirrors sends library/ names to the mirror host.
        assert_eq!(
            r("docker.example.com", "/v2/library/alpine/manifests/3.20"),
            "/v2/library/alpine/manifests/3.20?ns=docker.io"
        );
        // An explicit ns= or registry prefix wins.
        assert_eq!(
            r(
                "ghcr.example.com",
                "/v2/library/alpine/manifests/1?ns=docker.io"
            ),
            "/v2/library/alpine/manifests/1?ns=docker.io"
        );
        assert_eq!(
            r("ghcr.example.com", "/v2/quay.io/org/app/manifests/1"),
            "/v2/quay.io/org/app/manifests/1"
        );
        // Unknown hosts and non-repository paths are left alone.
        assert_eq!(
            r("kura.example.com", "/v2/a/b/tags/list"),
            "/v2/a/b/tags/list"
        );
        for t in ["/v2/", "/v2/_catalog?n=10", "/metrics", "/v2/x"] {
            assert_eq!(r("ghcr.example.com", t), t);
        }
    }

    #[test]
    fn namespaces_are_aliases() {
        let c = config();
        assert_eq!(
            rewrite(&c, None, "/v2/index.docker.io/library/alpine/manifests/3"),
            "/v2/docker.io/library/alpine/manifests/3"
        );
        assert_eq!(
            rewrite(
                &c,
                None,
                "/v2/library/alpine/manifests/3?ns=registry-1.docker.io"
            ),
            "/v2/library/alpine/manifests/3?ns=docker.io"
        );
        assert_eq!(
            rewrite(
                &c,
                Some("ghcr.example.com"),
                "/v2/docker.io/x/y/manifests/3"
            ),
            "/v2/docker.io/x/y/manifests/3"
        );
    }
}
