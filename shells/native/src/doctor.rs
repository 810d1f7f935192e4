//! `kura doctor`: check what breaks mirrors in the field, one line each,
//! and exit non-zero when something is wrong. The checks use the code
//! `kura serve` runs: the same configuration loader, storage, upstream
//! client (proxy, `NO_PROXY`, CA files) and token handshake.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kura_core::{Storage, UpstreamAuth};

use crate::client::{explain, ClientTls};
use crate::config::{Config, Overrides};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// The lines printed so far, and whether any failed.
#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, verdict: Verdict, what: &str, detail: impl AsRef<str>) {
        let tag = match verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        // A closed pipe (`kura doctor | head`) is not worth a panic.
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{tag}  {what}: {}", detail.as_ref());
    }
}

/// A certificate closer to its end than this is warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
/// Clock skew against an upstream's `Date` that is warned about, and that
/// fails (tokens and S3 signatures stop working around 15 minutes).
const SKEW_WARNING_SECS: u64 = 60;
const SKEW_FAILURE_SECS: u64 = 300;

/// Run every check; `Ok(true)` when none failed.
pub async fn run(
    config_file: Option<&Path>,
    server: Option<&str>,
    tls: &ClientTls,
) -> anyhow::Result<bool> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut r = Report::default();
    let config = match Config::load(config_file, &Overrides::default()) {
        Ok(c) => {
            let from = config_file
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            r.line(
                Verdict::Ok,
                "config",
                format!(
                    "{from} parses ({} upstreams, listen {})",
                    c.mirror.upstreams.len(),
                    c.listen
                ),
            );
            for w in &c.warnings {
                r.line(Verdict::Warn, "config", w);
            }
            c
        }
        Err(e) => {
            r.line(Verdict::Fail, "config", format!("{e:#}"));
            return Ok(false);
        }
    };
    check_clock(&mut r);
    check_tls(&mut r, &config);
    check_storage(&mut r, &config).await;
    let mut upstream_dates = Vec::new();
    check_upstreams(&mut r, &config, &mut upstream_dates).await;
    check_skew(&mut r, &upstream_dates);
    if let Some(server) = server {
        check_server(&mut r, server, tls).await;
    }
    Ok(!r.failed)
}

fn check_clock(r: &mut Report) {
    // 2025-01-01: a clock before this was never set.
    const EARLIEST: u64 = 1_735_689_600;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now < EARLIEST {
        r.line(
            Verdict::Fail,
            "clock",
            format!("the system clock says {now} s since 1970, before 2025: set it (NTP)"),
        );
    } else {
        r.line(
            Verdict::Ok,
            "clock",
            httpdate::fmt_http_date(SystemTime::now()),
        );
    }
}

fn check_tls(r: &mut Report, config: &Config) {
    let Some(tls) = &config.tls else {
        r.line(Verdict::Ok, "tls", "not configured (plain HTTP)");
        return;
    };
    if tls.self_signed {
        r.line(
            Verdict::Warn,
            "tls",
            "a self-signed certificate is generated at start: clients must be told to trust it",
        );
        return;
    }
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return;
    };
    if let Err(e) = crate::tls::server_config_from_files(cert, key) {
        r.line(Verdict::Fail, "tls", format!("{e:#}"));
        return;
    }
    match not_after(cert) {
        Ok(end) => {
            let left = end.duration_since(SystemTime::now());
            let when = httpdate::fmt_http_date(end);
            match left {
                Err(_) => r.line(
                    Verdict::Fail,
                    "tls",
                    format!("{} expired on {when}", cert.display()),
                ),
                Ok(left) if left < EXPIRY_WARNING => r.line(
                    Verdict::Warn,
                    "tls",
                    format!(
                        "{} expires in {} days ({when}): renew it",
                        cert.display(),
                        left.as_secs() / 86400
                    ),
                ),
                Ok(left) => r.line(
                    Verdict::Ok,
                    "tls",
                    format!(
                        "{} and its key load; it expires in {} days ({when})",
                        cert.display(),
                        left.as_secs() / 86400
                    ),
                ),
            }
        }
        Err(e) => r.line(Verdict::Fail, "tls", format!("{}: {e:#}", cert.display())),
    }
}

/// When the first certificate of a PEM file stops being valid.
fn not_after(cert: &Path) -> anyhow::Result<SystemTime> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_file_iter(cert)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no certificate"))??;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let ts = parsed.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap_or(0)))
}

async fn check_storage(r: &mut Report, config: &Config) {
    let what = match &config.storage.s3 {
        Some(s3) => format!("s3://{}", s3.bucket),
        None => config.data_dir.display().to_string(),
    };
    if config.storage.s3.is_none() {
        // Creates the directory if missing, as `kura serve` would.
        if let Err(e) = check_local_rename(&config.data_dir) {
            r.line(Verdict::Fail, "storage", format!("{what}: {e:#}"));
            return;
        }
    }
    let app = match crate::server::build_app(config) {
        Ok(a) => a,
        Err(e) => {
            r.line(Verdict::Fail, "storage", format!("{what}: {e:#}"));
            return;
        }
    };
    let storage = app.registry.storage();
    let key = format!("_doctor/{}", std::process::id());
    let data = bytes::Bytes::from_static(b"kura doctor");
    let round_trip = async {
        storage
            .put(&key, data.clone(), kura_core::storage::PutMode::Overwrite)
            .await?;
        let back = storage.read(&key).await?;
        storage.delete(&key).await?;
        Ok::<_, kura_core::storage::StorageError>(back)
    };
    match round_trip.await {
        Ok(Some(back)) if back == data => {}
        Ok(_) => {
            r.line(
                Verdict::Fail,
                "storage",
                format!("{what}: an object written did not read back"),
            );
            return;
        }
        Err(e) => {
            r.line(
                Verdict::Fail,
                "storage",
                format!("{what}: writing, reading and deleting an object failed: {e}"),
            );
            return;
        }
    }
    // The probe `kura serve` runs at start.
    let shared = match app.registry.shares_fills().await {
        Ok(true) => "; create-only writes work (instances can share fills)",
        Ok(false) if config.storage.shared => {
            r.line(
                Verdict::Fail,
                "storage",
                format!(
                    "{what}: storage.shared is set but the store does not refuse a \
                     create-only write over an existing object"
                ),
            );
            return;
        }
        Ok(false) => "; no create-only writes (fills are not shared with other instances)",
        Err(e) => {
            r.line(
                Verdict::Warn,
                "storage",
                format!("{what}: probing create-only writes failed: {e}"),
            );
            ""
        }
    };
    r.line(
        Verdict::Ok,
        "storage",
        format!("{what} is writable, atomic writes work{shared}"),
    );
}

/// Write a file beside the data directory's contents and rename it into
/// place, as every write of a blob does.
fn check_local_rename(data_dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let tmp = data_dir.join(format!(".kura-doctor-{}.tmp", std::process::id()));
    let dst = data_dir.join(format!(".kura-doctor-{}", std::process::id()));
    std::fs::write(&tmp, b"kura doctor").with_context(|| format!("writing {}", tmp.display()))?;
    let renamed =
        std::fs::rename(&tmp, &dst).with_context(|| format!("renaming into {}", dst.display()));
    let _ = std::fs::remove_file(&tmp);
    renamed?;
    let back = std::fs::read(&dst);
    let _ = std::fs::remove_file(&dst);
    if back.ok().as_deref() != Some(b"kura doctor".as_slice()) {
        anyhow::bail!("a renamed file did not read back");
    }
    Ok(())
}

/// The proxy upstream traffic uses, in words.
fn proxy_words(config: &Config) -> String {
    let env = crate::fetch::first_env;
    let no_proxy = config
        .mirror
        .no_proxy
        .clone()
        .or_else(|| env(&["NO_PROXY", "no_proxy"]));
    let proxy = config
        .mirror
        .proxy
        .clone()
        .map(|p| format!("proxy {p} (mirror.proxy)"))
        .or_else(|| {
            env(&["HTTPS_PROXY", "https_proxy"]).map(|p| format!("proxy {p} (HTTPS_PROXY)"))
        })
        .or_else(|| env(&["HTTP_PROXY", "http_proxy"]).map(|p| format!("proxy {p} (HTTP_PROXY)")))
        .or_else(|| env(&["ALL_PROXY", "all_proxy"]).map(|p| format!("proxy {p} (ALL_PROXY)")));
    match (proxy, no_proxy) {
        (None, _) => "direct (no proxy configured or in the environment)".into(),
        (Some(p), None) => p,
        (Some(p), Some(n)) => format!("{p}, except NO_PROXY {n}"),
    }
}

async fn check_upstreams(r: &mut Report, config: &Config, dates: &mut Vec<(String, SystemTime)>) {
    if config.mirror.upstreams.is_empty() {
        r.line(Verdict::Ok, "upstreams", "none configured (hosted only)");
        return;
    }
    r.line(Verdict::Ok, "proxy", proxy_words(config));
    // The registry the mirror runs, with its fetch: proxy, NO_PROXY, CA
    // files, timeouts and token handshake as `kura serve` has them.
    let app = match crate::server::build_app(config) {
        Ok(a) => a,
        Err(e) => {
            r.line(Verdict::Fail, "upstreams", format!("{e:#}"));
            return;
        }
    };
    // The clock check needs a `Date`: asked separately, plainly.
    let client = crate::fetch::upstream_client(&config.mirror).ok();
    for u in &config.mirror.upstreams {
        let what = format!("upstream {}", u.name);
        let mut result = app.registry.probe_upstream(&u.name).await;
        // A pooled connection the proxy or the upstream closed meanwhile
        // fails once ("connection closed before message completed"): ask
        // again before calling the upstream unavailable.
        if matches!(result, Err(kura_core::UpstreamError::Unavailable { .. })) {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            result = app.registry.probe_upstream(&u.name).await;
        }
        match result {
            Ok(auth) => {
                let how = match auth {
                    UpstreamAuth::None => "no authentication asked".to_owned(),
                    UpstreamAuth::Basic => format!(
                        "basic auth as {} accepted",
                        u.username.as_deref().unwrap_or("?")
                    ),
                    UpstreamAuth::Token { credentials: true } => format!(
                        "token auth works with the configured credentials ({})",
                        u.username.as_deref().unwrap_or("?")
                    ),
                    UpstreamAuth::Token { credentials: false } if u.username.is_some() => {
                        r.line(
                            Verdict::Warn,
                            &what,
                            "the token realm is outside the upstream's domain: credentials \
                             were withheld and an anonymous token was used (list its host \
                             under token_realms to trust it)",
                        );
                        "anonymous token auth works".to_owned()
                    }
                    UpstreamAuth::Token { credentials: false } => {
                        "anonymous token auth works".to_owned()
                    }
                };
                r.line(Verdict::Ok, &what, format!("{} reachable; {how}", u.url));
            }
            Err(e) => {
                let mut words = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    let w = c.to_string();
                    if !words.contains(&w) {
                        words.push_str(": ");
                        words.push_str(&w);
                    }
                    cause = c.source();
                }
                let hint = match e {
                    kura_core::UpstreamError::Denied(_) if u.username.is_some() => {
                        " (the configured credentials were refused)"
                    }
                    kura_core::UpstreamError::Denied(_) => {
                        " (it wants credentials: set username and password)"
                    }
                    _ => "",
                };
                r.line(Verdict::Fail, &what, format!("{}: {words}{hint}", u.url));
            }
        }
        if let Some(client) = &client {
            if let Ok(resp) = client
                .get(format!("{}/v2/", u.url.trim_end_matches('/')))
                .send()
                .await
            {
                if let Some(date) = resp
                    .headers()
                    .get(http::header::DATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| httpdate::parse_http_date(v).ok())
                {
                    dates.push((u.name.clone(), date));
                }
            }
        }
    }
}

fn check_skew(r: &mut Report, dates: &[(String, SystemTime)]) {
    let now = SystemTime::now();
    for (name, date) in dates {
        let skew = match now.duration_since(*date) {
            Ok(d) => d.as_secs(),
            Err(e) => e.duration().as_secs(),
        };
        let verdict = if skew >= SKEW_FAILURE_SECS {
            Verdict::Fail
        } else if skew >= SKEW_WARNING_SECS {
            Verdict::Warn
        } else {
            continue;
        };
        r.line(
            verdict,
            "clock",
            format!("{skew} s away from upstream {name}'s clock: tokens and signatures fail with skew; sync the clock (NTP)"),
        );
    }
}

async fn check_server(r: &mut Report, server: &str, tls: &ClientTls) {
    let server = server.trim_end_matches('/');
    let client = match tls.builder().and_then(|b| Ok(b.build()?)) {
        Ok(c) => c,
        Err(e) => {
            r.line(Verdict::Fail, "server", format!("{e:#}"));
            return;
        }
    };
    match client.get(format!("{server}/v2/")).send().await {
        Ok(resp) if resp.status().is_success() || resp.status() == 401 => {
            let api = resp
                .headers()
                .get("docker-distribution-api-version")
                .is_some();
            if api {
                r.line(
                    Verdict::Ok,
                    "server",
                    format!("{server} answers the registry API ({})", resp.status()),
                );
            } else {
                r.line(Verdict::Fail, "server", format!("{server}/v2/ answered {} without Docker-Distribution-API-Version: not a registry", resp.status()));
            }
        }
        Ok(resp) => r.line(
            Verdict::Fail,
            "server",
            format!("{server}/v2/ answered {}", resp.status()),
        ),
        Err(e) => r.line(Verdict::Fail, "server", explain(server, &e)),
    }
}
