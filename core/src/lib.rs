//! `kura-core`: the registry brain of kura.
//!
//! Everything a registry decides lives here: the distribution-spec grammar
//! ([`mod@reference`]), content addressing ([`digest`]), manifest validation
//! ([`manifest`]), `/v2/` routing ([`wire`]), hosted repositories and the
//! pull-through cache behind one [`Registry`]. Hosts bring the bytes: a
//! [`Storage`] backend, a [`Host`] (clock, randomness, tasks) and, for
//! mirroring, a [`Fetch`] HTTP client. Nothing in this crate opens a socket
//! or a file, reads a clock, or needs an async runtime, so it builds for
//! `wasm32-unknown-unknown`. `docs/library.md` in the repository walks
//! through embedding it.
//!
//! Inside, dependencies point one way: `model` (pure types) and `wire`
//! (HTTP shapes) at the bottom, `io` (the host's seams), `store` (the
//! storage layout and the operations every repository shares), then
//! `hosted` and `mirror` side by side, and the [`Registry`] facade on top.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod access;
pub mod config;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hosted;
mod io;
mod metrics;
mod mirror;
mod model;
mod registry;
mod store;
pub mod wire;

pub use io::{body, storage};
pub use model::{digest, manifest, pattern, reference};
pub use store::fsck;

pub use body::{Body, BoxFuture, ByteStream};
pub use config::{RegistryConfig, UpstreamConfig};
pub use digest::{Algorithm, Digest};
pub use error::{ErrorCode, ErrorSource, RegistryError, UpstreamError};
pub use hosted::{Garbage, GcOptions, GcReport, ImmutableTags, RetentionRule};
pub use io::fetch::{Fetch, FetchError, NoFetch};
pub use io::host::Host;
pub use metrics::{Metrics, Sample, SampleKind};
pub use mirror::claim::{FillClaim, FillFollower, FillLease, Followed};
pub use mirror::edge::{BlobMiss, Edge};
pub use mirror::upstream::UpstreamAuth;
pub use mirror::{EvictionReport, CACHE_HEADER, OCI_NAMESPACE_HEADER};
pub use reference::{Reference, RepositoryName, Tag};
pub use registry::{error_response, Registry, RegistryBuilder, Response};
pub use storage::Storage;

/// `Send` on native targets, nothing on wasm32 where JS handles are `!Send`.
///
/// Core traits and futures use this bound so one definition serves the
/// multi-threaded native runtime and the single-threaded JS hosts.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + ?Sized> MaybeSend for T {}
/// `Send` on native targets, nothing on wasm32 where JS handles are `!Send`.
///
/// Core traits and futures use this bound so one definition serves the
/// multi-threaded native runtime and the single-threaded JS hosts.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSend for T {}

/// `Sync` on native targets, nothing on wasm32.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSync: Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Sync + ?Sized> MaybeSync for T {}
/// `Sync` on native targets, nothing on wasm32.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSync for T {}
