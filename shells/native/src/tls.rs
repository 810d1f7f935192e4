//! TLS serving with rustls: certificates from PEM files or a self-signed one.
//!
//! Certificates from files are reloaded while serving (see
//! [`server_config_reloading`]): rustls asks our [`CertResolver`] for the
//! certificate at every handshake, so swapping what it holds changes what
//! new connections get and leaves established ones alone.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the certificate and key files are checked for changes.
pub const RELOAD_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Overrides [`RELOAD_POLL_INTERVAL`] (in milliseconds): a knob for the
/// end-to-end tests, read only here. Not `KURA_...`: every `KURA_*`
/// variable is a configuration key and unknown ones are refused.
const RELOAD_POLL_ENV: &str = "KURATEST_TLS_RELOAD_POLL_MS";

/// The certificate new handshakes get. Swapped whole on reload.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Self {
        CertResolver {
            current: RwLock::new(Arc::new(key)),
        }
    }

    /// Serve `key` to handshakes from now on.
    pub fn set(&self, key: CertifiedKey) {
        let key = Arc::new(key);
        match self.current.write() {
            Ok(mut cur) => *cur = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(cur) => cur.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// A certificate chain and its private key from PEM files, checked to
/// belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    certified_key(certs, &key_der).with_context(|| {
        format!(
            "certificate {} and private key {}",
            cert.display(),
            key.display()
        )
    })
}

fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> anyhow::Result<CertifiedKey> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key)
        .context("unsupported private key type")?;
    let ck = CertifiedKey::new(certs, signer);
    match ck.keys_match() {
        Ok(()) => Ok(ck),
        // The key cannot tell its public half (none of ring's key types;
        // rustls' own with_single_cert lets this pass too).
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(e) => {
            Err(anyhow::Error::new(e).context("the private key does not match the certificate"))
        }
    }
}

/// A server config for the PEM files `cert` and `key` as they are now (no
/// reloading); also how a configuration is checked without serving.
pub fn server_config_from_files(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let ck = load_certified_key(cert, key)?;
    Ok(server_config(Arc::new(CertResolver::new(ck))))
}

/// A server config for the PEM files `cert` and `key` that follows changes
/// to them: a background task reloads the pair when either file's
/// modification time, size or inode changes (checked every
/// [`RELOAD_POLL_INTERVAL`]; `std::fs::metadata` follows symlinks, so a
/// Kubernetes Secret volume swapping its `..data` link counts) and on
/// SIGHUP. A pair that fails to load or match is logged and the previous
/// certificate stays. Must be called inside the tokio runtime.
pub fn server_config_reloading(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let initial = load_certified_key(cert, key)?;
    let resolver = Arc::new(CertResolver::new(initial));
    // Listen for SIGHUP before the port opens, so an early one reloads
    // instead of killing the process.
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    let reloader = Reloader {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        resolver: resolver.clone(),
        seen: Fingerprint::of(cert, key),
    };
    let interval = std::env::var(RELOAD_POLL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(RELOAD_POLL_INTERVAL);
    #[cfg(unix)]
    tokio::spawn(reloader.run(interval, hangup));
    #[cfg(not(unix))]
    tokio::spawn(reloader.run(interval));
    Ok(server_config(resolver))
}

/// What a change of the certificate or key file is recognized by.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint([Option<FileStamp>; 2]);

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    dev_ino: (u64, u64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        // Follows symlinks: the stamp is the target's.
        let md = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: md.modified().ok(),
            len: md.len(),
            #[cfg(unix)]
            dev_ino: {
                use std::os::unix::fs::MetadataExt;
                (md.dev(), md.ino())
            },
        })
    }
}

impl Fingerprint {
    fn of(cert: &Path, key: &Path) -> Fingerprint {
        Fingerprint([FileStamp::of(cert), FileStamp::of(key)])
    }
}

struct Reloader {
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<CertResolver>,
    /// The files as they were at the last load attempt.
    seen: Fingerprint,
}

impl Reloader {
    #[cfg(unix)]
    async fn run(mut self, interval: Duration, mut hangup: tokio::signal::unix::Signal) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.poll().await,
                got = hangup.recv() => match got {
                    Some(()) => self.reload("SIGHUP").await,
                    // No more signals can arrive: keep polling.
                    None => loop {
                        tick.tick().await;
                        self.poll().await;
                    },
                },
            }
        }
    }

    #[cfg(not(unix))]
    async fn run(mut self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.poll().await;
        }
    }

    async fn poll(&mut self) {
        let (cert, key) = (self.cert.clone(), self.key.clone());
        let now = match tokio::task::spawn_blocking(move || Fingerprint::of(&cert, &key)).await {
            Ok(f) => f,
            Err(_) => return,
        };
        if now != self.seen {
            self.reload("files changed").await;
        }
    }

    /// Load the pair and serve it if it is good. Either way, remember the
    /// files as they are now, so a bad pair is tried again only once they
    /// change again (or on the next SIGHUP).
    async fn reload(&mut self, trigger: &'static str) {
        let (cert, key) = (self.cert.clone(), self.key.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            // Stamp first: a change racing the load is seen next time.
            let stamp = Fingerprint::of(&cert, &key);
            (stamp, load_certified_key(&cert, &key))
        })
        .await;
        let Ok((stamp, result)) = loaded else {
            return;
        };
        self.seen = stamp;
        match result {
            Ok(ck) => {
                let chain = ck.cert.len();
                self.resolver.set(ck);
                tracing::info!(
                    cert = %self.cert.display(),
                    chain,
                    trigger,
                    "reloaded the TLS certificate"
                );
            }
            Err(e) => tracing::warn!(
                cert = %self.cert.display(),
                key = %self.key.display(),
                trigger,
                error = %format!("{e:#}"),
                "TLS certificate not reloaded; still serving the previous one"
            ),
        }
    }
}

/// A certificate for localhost and the loopback addresses, written as PEM
/// to `cert_out` so clients can be told to trust it.
pub fn self_signed(cert_out: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    if let Some(dir) = cert_out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(cert_out, ck.cert.pem())
        .with_context(|| format!("writing {}", cert_out.display()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let certified =
        certified_key(vec![ck.cert.der().clone()], &key).context("the generated certificate")?;
    Ok(server_config(Arc::new(CertResolver::new(certified))))
}

fn server_config(resolver: Arc<CertResolver>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// A listener that yields connections after their TLS handshake. Handshakes
/// run in their own tasks so a slow client cannot hold up the others.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: rustls::ServerConfig) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // As on plain connections (see main.rs): no Nagle delay.
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let conn_tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = conn_tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
