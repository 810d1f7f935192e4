//! Byte streams and response bodies.

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

/// A stream of bytes moving through the core (request bodies, data being
/// written to storage). Errors are `io::Error` so that any host can carry its
/// own failure inside, and the core can recognise its own (see
/// [`crate::model::digest::DigestMismatch`]).
#[cfg(not(target_arch = "wasm32"))]
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;
/// A stream of bytes moving through the core (request bodies, data being
/// written to storage). Errors are `io::Error` so that any host can carry its
/// own failure inside, and the core can recognise its own (see
/// [`crate::model::digest::DigestMismatch`]). Not `Send` on wasm32, where JS
/// handles are `!Send`.
#[cfg(target_arch = "wasm32")]
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + 'static>>;

/// A boxed future: `Send` natively, not on wasm32 (see [`crate::MaybeSend`]).
#[cfg(not(target_arch = "wasm32"))]
pub type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
/// A boxed future: `Send` natively, not on wasm32 (see [`crate::MaybeSend`]).
#[cfg(target_arch = "wasm32")]
pub type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// A response body. `Stream` carries the storage backend's own body type so a
/// host can hand it to its HTTP layer untouched (an R2 object body in a
/// Worker, a file stream natively).
pub enum Body<B> {
    /// No body.
    Empty,
    /// Bytes already in memory (manifests, JSON documents, error bodies).
    Full(Bytes),
    /// The storage backend's own body.
    Stream(B),
    /// Bytes produced by the core (a cache fill followed as it arrives).
    Relay(ByteStream),
}

impl<B> Body<B> {
    /// Convert the storage backend's body with `f`, leaving every other kind
    /// as it is: how a host turns a backend's body type into its own.
    pub fn map_stream<C>(self, f: impl FnOnce(B) -> C) -> Body<C> {
        match self {
            Body::Empty => Body::Empty,
            Body::Full(b) => Body::Full(b),
            Body::Stream(s) => Body::Stream(f(s)),
            Body::Relay(s) => Body::Relay(s),
        }
    }

    /// The body as one byte stream, the backend's body converted with `f`
    /// (typically [`crate::Storage::body_stream`]): for a host whose HTTP
    /// layer takes any stream of bytes. The length is in the response's
    /// `Content-Length` already.
    pub fn into_stream(self, f: impl FnOnce(B) -> ByteStream) -> ByteStream {
        match self {
            Body::Empty => empty(),
            Body::Full(b) => once(b),
            Body::Stream(s) => f(s),
            Body::Relay(s) => s,
        }
    }
}

impl<B> std::fmt::Debug for Body<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Empty => f.write_str("Body::Empty"),
            Body::Full(b) => write!(f, "Body::Full({} bytes)", b.len()),
            Body::Stream(_) => f.write_str("Body::Stream(..)"),
            Body::Relay(_) => f.write_str("Body::Relay(..)"),
        }
    }
}

/// A stream over one in-memory buffer.
pub fn once(bytes: Bytes) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(bytes) }))
}

/// An empty stream.
pub fn empty() -> ByteStream {
    Box::pin(futures::stream::empty())
}

/// Collect a stream into memory, failing once more than `limit` bytes arrive.
/// Only for bodies the protocol bounds (manifests, small metadata).
pub async fn collect_limited(mut stream: ByteStream, limit: usize) -> Result<Bytes, CollectError> {
    use futures::StreamExt;
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(CollectError::Io)?;
        if buf.len() + chunk.len() > limit {
            return Err(CollectError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Why [`collect_limited`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// More than the limit arrived.
    #[error("body larger than allowed")]
    TooLarge,
    /// The stream itself failed.
    #[error("reading body: {0}")]
    Io(io::Error),
}
