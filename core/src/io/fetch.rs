//! The HTTP client capability: how the core talks to upstream registries.
//!
//! A host implements [`Fetch`] with its own client (reqwest natively, the
//! runtime's `fetch` in a Worker). The core builds requests, follows
//! redirects and does authentication itself, so hosts only move bytes.

use async_trait::async_trait;

use crate::error::ErrorSource;
use crate::io::body::ByteStream;
use crate::{MaybeSend, MaybeSync};

/// Why a request to an upstream got no response. An HTTP error status is a
/// response, not a `FetchError`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Could not connect, TLS failed, the connection dropped; the client's
    /// error is the source.
    #[error("connection failed: {0}")]
    Connect(#[source] ErrorSource),
    /// The host's timeout expired before the response came.
    #[error("request timed out")]
    Timeout,
    /// Anything else the host's client reports (or a request the core
    /// could not build), as the source.
    #[error("{0}")]
    Other(#[source] ErrorSource),
}

impl FetchError {
    /// A [`FetchError::Connect`] with `e` as its source.
    pub fn connect(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        FetchError::Connect(ErrorSource::new(e))
    }

    /// A [`FetchError::Other`] with `e` as its source.
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        FetchError::Other(ErrorSource::new(e))
    }
}

/// The HTTP client a host lends the core for mirroring.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Fetch: MaybeSend + MaybeSync + 'static {
    /// The host's response body type.
    type Body: MaybeSend + 'static;

    /// Send one request (GET or HEAD, no body). Must not follow redirects:
    /// the core does, to drop credentials when the host changes.
    async fn fetch(&self, req: http::Request<()>)
        -> Result<http::Response<Self::Body>, FetchError>;

    /// The bytes of a response body, as the stream the core reads (hashes,
    /// spools, relays).
    fn body_stream(body: Self::Body) -> ByteStream;
}

/// For registries without upstreams.
pub struct NoFetch;

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl Fetch for NoFetch {
    type Body = ByteStream;

    async fn fetch(
        &self,
        _req: http::Request<()>,
    ) -> Result<http::Response<ByteStream>, FetchError> {
        Err(FetchError::other("no upstreams configured"))
    }

    fn body_stream(body: ByteStream) -> ByteStream {
        body
    }
}
