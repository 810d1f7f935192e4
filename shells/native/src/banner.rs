//! What `kura serve` says first: its version, its storage, each mirrored
//! upstream and how clients reach it, and one pull command that works
//! against this listener.

use std::net::SocketAddr;

use crate::config::Config;

/// The lines, in order (logged one by one at start).
pub fn lines(config: &Config, addr: SocketAddr, tls: bool) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    // A wildcard address is not something a client can dial.
    let host = if addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    let storage = match &config.storage.s3 {
        Some(s3) => format!(
            "s3://{}{} ({})",
            s3.bucket,
            s3.prefix
                .as_deref()
                .map(|p| format!("/{p}"))
                .unwrap_or_default(),
            s3.endpoint.as_deref().unwrap_or("AWS")
        ),
        None => format!("local disk {}", config.data_dir.display()),
    };
    let mut out = vec![
        format!(
            "kura {} listening on {scheme}://{addr}",
            env!("CARGO_PKG_VERSION")
        ),
        format!(
            "storage: {storage}{}",
            config
                .mirror
                .max_size
                .map(|m| format!(", mirror cache bounded to {}", crate::status::bytes(m.0)))
                .unwrap_or_default()
        ),
    ];
    for u in &config.mirror.upstreams {
        let default = if config.mirror.default.as_deref() == Some(u.name.as_str()) {
            ", and names without a registry (the default: Docker's registry-mirrors)"
        } else {
            ""
        };
        out.push(format!(
            "mirror {} -> {}: clients pull {host}/{}/<name>, or <name> with containerd's ?ns={}{default}",
            u.name, u.url, u.name, u.name
        ));
    }
    if config.mirror.upstreams.is_empty() {
        out.push("no upstreams: a hosted registry only".into());
    } else {
        out.push("every other name is a hosted repository (pushes welcome)".into());
    }
    let example = match config.mirror.upstreams.first() {
        Some(u) if u.name == "docker.io" || config.mirror.default.is_some() => {
            format!("{host}/{}/library/alpine:latest", u.name)
        }
        Some(u) => format!("{host}/{}/<name>:<tag>", u.name),
        None => format!("{host}/<name>:<tag>"),
    };
    let flag = if tls { "" } else { "--tls-verify=false " };
    out.push(format!("try: podman pull {flag}{example}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    #[test]
    fn names_every_upstream_and_a_pull_that_works_here() {
        let config = Config::load(None, &Overrides::default()).unwrap();
        let text = lines(&config, "0.0.0.0:5000".parse().unwrap(), false).join("\n");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(text.contains("local disk kura-data"), "{text}");
        for u in ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"] {
            assert!(text.contains(&format!("mirror {u} -> ")), "{text}");
        }
        assert!(
            text.contains(
                "try: podman pull --tls-verify=false localhost:5000/docker.io/library/alpine:latest"
            ),
            "{text}"
        );
        let tls = lines(&config, "10.0.0.1:443".parse().unwrap(), true).join("\n");
        assert!(tls.contains("https://10.0.0.1:443"), "{tls}");
        assert!(tls.contains("try: podman pull 10.0.0.1:443/"), "{tls}");
    }
}
