//! How kura's client commands (`prefetch`, `doctor --server`) reach a kura
//! over TLS: extra CA files, or no verification when asked for by name,
//! and certificate failures told as a sentence.

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgAction, Args};

/// TLS options of a client command.
#[derive(Args, Debug, Clone)]
pub struct ClientTls {
    /// Trust the certificates in this PEM file (a private CA, or the
    /// `self-signed.crt` a `kura serve --tls-self-signed` wrote), besides
    /// the system's roots. Repeatable.
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_files: Vec<PathBuf>,
    /// Verify the server's TLS certificate (`--tls-verify=false` skips
    /// the check, as skopeo's and podman's flag of that name does: for
    /// trying things out only).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    pub tls_verify: bool,
}

impl ClientTls {
    /// A client builder with these options applied.
    pub fn builder(&self) -> anyhow::Result<reqwest::ClientBuilder> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder();
        for file in &self.ca_files {
            let pem = std::fs::read(file)
                .with_context(|| format!("reading CA file {}", file.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("parsing CA file {}", file.display()))?;
            if certs.is_empty() {
                anyhow::bail!("no certificate in CA file {}", file.display());
            }
            for cert in certs {
                b = b.add_root_certificate(cert);
            }
        }
        if !self.tls_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        Ok(b)
    }
}

/// `e` in words: a TLS certificate failure says what is wrong and what to
/// pass; anything else is its error chain on one line.
pub fn explain(server: &str, e: &reqwest::Error) -> String {
    let chain = crate::fetch::error_chain(e);
    let lower = chain.to_ascii_lowercase();
    let reason = if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        Some("it is signed by a certificate authority this client does not trust (self-signed or a private CA)")
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        Some("it is not issued for the host name in the URL")
    } else if lower.contains("expired") {
        Some("it has expired")
    } else if lower.contains("notvalidyet") {
        Some("it is not valid yet (check this machine's clock)")
    } else if lower.contains("invalid peer certificate") || lower.contains("certificate") {
        Some("it was refused")
    } else {
        None
    };
    match reason {
        Some(reason) => format!(
            "the TLS certificate of {server} cannot be verified: {reason}. Pass \
             --ca-file FILE with the CA certificate that signed it (for `kura serve \
             --tls-self-signed`: the self-signed.crt in its data directory), or \
             --tls-verify=false to skip the check. ({chain})"
        ),
        None => chain,
    }
}
