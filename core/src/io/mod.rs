//! What the host brings: byte streams, storage, an HTTP client, a clock.
//! The seams an embedder implements.

pub mod body;
pub(crate) mod fetch;
pub(crate) mod host;
pub mod storage;
