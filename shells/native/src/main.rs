//! `kura`: an OCI / Docker registry.

mod auth;
mod banner;
mod client;
mod compat;
mod config;
mod doctor;
mod fetch;
mod file_window;
mod fsck;
mod gc;
mod host;
mod metrics;
mod prefetch;
mod server;
mod status;
mod storage;
mod tls;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat, Overrides, TlsConfig};

#[derive(Parser)]
#[command(
    name = "kura",
    version,
    about = "An OCI / Docker registry and pull-through cache"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve(ServeArgs),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Warm a running kura's cache: pull images through it, all platforms
    /// or one, showing progress per layer.
    Prefetch(PrefetchArgs),
    /// Check what breaks mirrors in the field: the configuration, storage,
    /// each upstream (through the proxy, with its credentials), TLS files,
    /// the clock. Exits 1 if any check fails.
    Doctor(DoctorArgs),
    /// Verify the store: every blob's digest, every tag, link, manifest
    /// reference and referrer; report interrupted uploads and fills. Exit
    /// status 0 clean, 1 damage repaired, 4 damage left, 8 could not check.
    Fsck(FsckArgs),
    /// Collect the garbage of hosted repositories: tags retention rules do
    /// not keep, untagged manifests, blobs nothing references, each once
    /// unreferenced and unwritten for the grace period. Safe beside a
    /// running kura serve; give it the same configuration file.
    Gc(GcArgs),
    /// Robot accounts for CI.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a robot token: prints the token (give it to the CI system, as
    /// its password) and the `auth.robots` entry holding only its hash.
    New {
        /// The robot's user name.
        #[arg(long)]
        name: String,
        /// Limit it to these repositories and rights, e.g. 'ci/**:pull,push'
        /// (repeatable); without it, the access rules alone decide.
        #[arg(long)]
        scope: Vec<String>,
        /// When it stops working (RFC 3339, e.g. 2027-06-30T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
    },
}

#[derive(Args)]
struct GcArgs {
    /// The configuration whose storage to collect (as `kura serve
    /// --config` takes it); without it, the built-in defaults and KURA_*
    /// variables.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Collect this data directory (local disk) instead of the configured one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// List what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long something must have been unreferenced and unwritten (e.g.
    /// 30m, 2h, 0s) [default: gc.grace_secs].
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// List every removal, not only the first few.
    #[arg(long, short = 'v')]
    verbose: bool,
}

#[derive(Args)]
struct FsckArgs {
    /// The configuration whose storage to check (as `kura serve --config`
    /// takes it); without it, the built-in defaults and KURA_* variables.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Check this data directory (local disk) instead of the configured one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Remove what is provably garbage or corrupt: corrupt blobs, the
    /// mirror's tags and manifests whose bytes are gone, referrers of
    /// missing manifests, abandoned fill leases, uploads idle longer than
    /// registry.upload_max_idle_secs, files of interrupted writes.
    #[arg(long)]
    repair: bool,
    /// Blobs verified at once.
    #[arg(long, default_value_t = default_jobs())]
    jobs: usize,
    /// List every finding, not only the first of each kind.
    #[arg(long, short = 'v')]
    verbose: bool,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[derive(Args)]
struct DoctorArgs {
    /// The configuration to check (as `kura serve --config` takes it);
    /// without it, the built-in defaults and KURA_* variables.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Also check that a running kura answers here (e.g. https://mirror:5000).
    #[arg(long)]
    server: Option<String>,
    #[command(flatten)]
    tls: client::ClientTls,
}

#[derive(Args)]
struct PrefetchArgs {
    /// The kura to warm.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    server: String,
    /// Read more images from a file, one per line (# comments allowed).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Only this platform of multi-platform images, e.g. linux/amd64.
    #[arg(long)]
    platform: Option<String>,
    /// Images such as docker.io/library/alpine:3.20 or ghcr.io/owner/app:v1.
    images: Vec<String>,
    #[command(flatten)]
    tls: client::ClientTls,
}

#[derive(Args)]
struct ServeArgs {
    /// YAML configuration file.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Local-disk storage directory [default: ./kura-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve TLS with this certificate (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key for --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve TLS with a generated self-signed certificate (written to
    /// <data-dir>/self-signed.crt).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_self_signed: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print the effective configuration.
    Check { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(Some(&file), &Overrides::default())?;
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", config.to_yaml_with_origins());
            Ok(())
        }
        Command::Prefetch(args) => {
            let mut images = args.images;
            if let Some(file) = &args.from {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                images.extend(
                    text.lines()
                        .map(|l| l.split('#').next().unwrap_or("").trim())
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
            }
            if images.is_empty() {
                anyhow::bail!("no images given");
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(prefetch::run(
                    &args.server,
                    images,
                    args.platform,
                    &args.tls,
                ))
        }
        Command::Doctor(args) => {
            let healthy = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(doctor::run(
                    args.config.as_deref(),
                    args.server.as_deref(),
                    &args.tls,
                ))?;
            if !healthy {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Fsck(args) => {
            let status = maintenance(args.config.as_deref(), &args.data_dir).and_then(|(c, rt)| {
                rt.block_on(fsck::run(
                    &c,
                    &fsck::FsckArgs {
                        repair: args.repair,
                        jobs: args.jobs,
                        verbose: args.verbose,
                    },
                ))
            });
            match status {
                Ok(code) => std::process::exit(code),
                Err(e) => {
                    eprintln!("kura fsck: {e:#}");
                    std::process::exit(fsck::FAILED);
                }
            }
        }
        Command::Token(TokenCommand::New {
            name,
            scope,
            expires,
        }) => {
            print!("{}", auth::new_robot(&name, &scope, expires.as_deref())?);
            Ok(())
        }
        Command::Gc(args) => {
            let status = maintenance(args.config.as_deref(), &args.data_dir).and_then(|(c, rt)| {
                rt.block_on(gc::run(
                    &c,
                    &gc::GcArgs {
                        dry_run: args.dry_run,
                        grace: args.grace,
                        verbose: args.verbose,
                    },
                ))
            });
            match status {
                Ok(code) => std::process::exit(code),
                Err(e) => {
                    eprintln!("kura gc: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        Command::Serve(args) => {
            let mut config = Config::load(
                args.config.as_deref(),
                &Overrides {
                    listen: args.listen,
                    data_dir: args.data_dir.clone(),
                },
            )?;
            if args.tls_self_signed {
                config.tls = Some(TlsConfig {
                    self_signed: true,
                    ..Default::default()
                });
            } else if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
                config.tls = Some(TlsConfig {
                    cert: Some(cert),
                    key: Some(key),
                    self_signed: false,
                });
            }
            init_logging(&config);
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(config))
        }
    }
}

/// The configuration at `file` (or the defaults), `data_dir` overriding
/// its directory, and a runtime: what a maintenance command (`kura fsck`,
/// `kura gc`) runs on.
fn maintenance(
    file: Option<&std::path::Path>,
    data_dir: &Option<PathBuf>,
) -> anyhow::Result<(Config, tokio::runtime::Runtime)> {
    let config = Config::load(
        file,
        &Overrides {
            listen: None,
            data_dir: data_dir.clone(),
        },
    )?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Run beside `kura serve` on the same machine, these yield the CPU to
    // it: nice 19, set before the runtime's threads exist (Linux keeps a
    // nice value per thread; new threads inherit it). Best effort.
    // SAFETY: setpriority only reads its arguments.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok((config, runtime))
}

fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colours only on a terminal: a file, journald or a container log
    // would keep the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = server::build_app(&config)?;
    let local_root = config.storage.s3.is_none().then(|| config.data_dir.clone());
    if let Some(root) = local_root.clone() {
        // In the background: a walk of the whole data directory, which
        // must not hold up the first answer on a store of millions of
        // files. Another instance (or this one, once serving) may be
        // writing: a staging file still written to has a fresh mtime.
        tokio::task::spawn_blocking(move || {
            match storage::sweep_staging_files(&root, Duration::from_secs(60)) {
                Ok((0, _)) => {}
                Ok((n, bytes)) => tracing::warn!(
                    files = n,
                    bytes,
                    "removed files of writes interrupted by an unclean shutdown; \
                     `kura fsck` checks the rest of the store"
                ),
                Err(e) => tracing::warn!(error = %e, "sweeping interrupted writes failed"),
            }
        });
    }
    match app.registry.shares_fills().await {
        Ok(true) => {}
        Ok(false) if config.storage.shared => anyhow::bail!(
            "storage.shared is set, but this storage does not refuse a create-only write over \
             an existing object (S3 `If-None-Match: *`), so instances sharing it cannot share \
             blob fills; use a store that supports conditional writes (see docs/storage.md)"
        ),
        Ok(false) => tracing::info!(
            "storage takes no create-only writes: blob fills are not shared with other instances"
        ),
        Err(e) if config.storage.shared => {
            anyhow::bail!("storage.shared: probing conditional writes failed: {e}")
        }
        Err(e) => tracing::warn!(error = %e, "probing conditional writes failed"),
    }
    match app.registry.purge_interrupted_fills().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            spools = n,
            "removed cache fills interrupted by an unclean shutdown; \
             `kura fsck` checks the rest of the store"
        ),
        Err(e) => tracing::warn!(error = %e, "removing interrupted cache fills failed"),
    }
    if !config.storage.shared {
        // Alone on this storage: a held eviction lease is a crash's.
        match app.registry.release_evictor_lease().await {
            Ok(false) => {}
            Ok(true) => tracing::warn!(
                "released the eviction lease of a pass interrupted by an unclean shutdown; \
                 `kura fsck` checks the rest of the store"
            ),
            Err(e) => tracing::warn!(error = %e, "releasing a stale eviction lease failed"),
        }
        match app.registry.release_gc_lease().await {
            Ok(false) => {}
            Ok(true) => tracing::warn!(
                "released the garbage collection lease of a pass interrupted by an unclean shutdown"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "releasing a stale garbage collection lease failed")
            }
        }
    }
    server::spawn_upload_janitor(
        app.clone(),
        Duration::from_secs(config.registry.upload_max_idle_secs),
        local_root,
    );
    if let Some(max) = config.mirror.max_size {
        server::spawn_evictor(
            app.clone(),
            max.0,
            Duration::from_secs(config.mirror.evict_interval_secs),
            config.mirror.eviction_grace_secs.saturating_mul(1000),
        );
    }
    gc::spawn(app.clone(), &config);
    if app.auth.is_some() {
        // A changed htpasswd file (a user added, a password rotated) is
        // picked up within seconds, without a restart.
        let app = app.clone();
        tokio::spawn(async move {
            let auth = app.auth.as_ref().expect("checked");
            let mut seen = auth.reload_htpasswd(None);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                seen = auth.reload_htpasswd(seen).or(seen);
            }
        });
    }
    let router = server::router(app);
    // TLS material first: once the port answers, the certificate exists.
    let tls_config = match &config.tls {
        None => None,
        Some(tls) if tls.self_signed => {
            let out = config.data_dir.join("self-signed.crt");
            let c = tls::self_signed(&out)?;
            tracing::info!(cert = %out.display(), "generated a self-signed certificate");
            Some(c)
        }
        Some(tls) => {
            let (cert, key) = (
                tls.cert.as_ref().expect("validated"),
                tls.key.as_ref().expect("validated"),
            );
            Some(tls::server_config_reloading(cert, key)?)
        }
    };
    // SIGHUP reloads TLS files (see tls.rs); with none to reload it must
    // not end the process, which is its default.
    if !matches!(&config.tls, Some(t) if !t.self_signed) {
        ignore_hangup();
    }
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = tcp.local_addr()?;
    for line in banner::lines(&config, addr, tls_config.is_some()) {
        tracing::info!("{line}");
    }
    match tls_config {
        None => {
            use axum::serve::ListenerExt;
            // Headers and body leave in separate writes: without
            // TCP_NODELAY, Nagle holds the second until the client's
            // delayed ACK, 40 ms later, on every reused connection.
            let tcp = tcp.tap_io(|t| {
                let _ = t.set_nodelay(true);
            });
            server::serve(tcp, router, &config.server, shutdown_signal()).await;
        }
        Some(server_config) => {
            let listener = tls::TlsListener::new(tcp, server_config)?;
            server::serve(listener, router, &config.server, shutdown_signal()).await;
        }
    }
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Log SIGHUP instead of dying of it (`systemctl reload` sends it).
fn ignore_hangup() {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangup) => {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP: no TLS files to reload");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP"),
    }
}

/// SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
