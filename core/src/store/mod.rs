//! The registry's state in storage, shared by hosted and mirrored
//! repositories: where things live ([`layout`]), a memory of recent
//! manifests ([`memo`]), and the storage operations both kinds of
//! repository use (manifests, links, tags, the catalog, referrers, blob
//! reads; see `repo`).

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::config::RegistryConfig;
use crate::error::{ErrorCode, RegistryError};
use crate::io::body::ByteStream;
use crate::io::storage::Storage;
use crate::metrics::Metrics;
use crate::model::reference::{Reference, RepositoryName};
use crate::model::upload::UploadId;

pub(crate) mod changes;
pub mod fsck;
pub(crate) mod layout;
pub(crate) mod lease;
pub(crate) mod marks;
pub(crate) mod memo;
mod repo;
pub(crate) mod sweep;

pub(crate) use crate::error::Result;

/// Storage and what the registry keeps beside it in memory. Hosted
/// repositories (`crate::hosted`) and the mirror (`crate::mirror`) both
/// work on one.
pub(crate) struct Store<S, H> {
    pub(crate) storage: Arc<S>,
    pub(crate) host: Arc<H>,
    pub(crate) config: RegistryConfig,
    /// Repositories known to have a catalog marker, to skip rewriting it.
    pub(crate) cataloged: Mutex<HashSet<RepositoryName>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) recent: memo::ManifestCache,
    /// Upload sessions with a request writing to them, and how many.
    pub(crate) uploads_writing: Mutex<HashMap<UploadId, usize>>,
    /// This process among those sharing the storage: how leases it wrote
    /// are told from other processes' (random, from the host).
    pub(crate) process: UploadId,
    /// Digests pushes are using and a collection is deleting (see
    /// `crate::hosted::gc`).
    pub(crate) gc_guard: Mutex<marks::Guard>,
    /// The longest grace period a collection in this process has used:
    /// marks in `gc_guard` younger than it are kept.
    pub(crate) gc_longest_grace: std::sync::atomic::AtomicU64,
    /// Tag pulls recorded for retention rules: key → when (ms).
    pub(crate) pulls_noted: Mutex<HashMap<String, u64>>,
    /// Links a probe rewrote: key → when (ms).
    pub(crate) probes_noted: Mutex<HashMap<String, u64>>,
    /// Numbers this process's in-use records (see [`sweep`]).
    pub(crate) in_use_counter: std::sync::atomic::AtomicU64,
}

impl<S, H: crate::io::host::Host> Store<S, H> {
    pub(crate) fn new(
        storage: Arc<S>,
        host: Arc<H>,
        config: RegistryConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut raw = [0u8; 16];
        host.fill_random(&mut raw);
        Store {
            process: UploadId::from_random(raw),
            storage,
            host,
            recent: memo::ManifestCache::new(config.manifest_cache_bytes),
            config,
            cataloged: Mutex::default(),
            metrics,
            uploads_writing: Mutex::default(),
            gc_guard: Mutex::default(),
            gc_longest_grace: std::sync::atomic::AtomicU64::new(0),
            pulls_noted: Mutex::default(),
            probes_noted: Mutex::default(),
            in_use_counter: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// One page of a listing, and the `n` and `last` of the next if any.
pub(crate) struct Page {
    entries: Vec<String>,
    next: Option<(usize, String)>,
}

pub(crate) fn manifest_unknown(name: &RepositoryName, reference: &Reference) -> RegistryError {
    RegistryError::new(
        ErrorCode::ManifestUnknown,
        format!("manifest {reference} is not in {name}"),
    )
}

/// The objects at `keys`, one after another, as one stream (upload chunks
/// and fill spools joined into a blob); a missing object fails the stream.
pub(crate) fn join_objects<S: Storage>(storage: Arc<S>, keys: Vec<String>) -> ByteStream {
    let parts = futures::stream::iter(keys).then(move |key| {
        let storage = storage.clone();
        async move {
            match storage.get(&key, None).await {
                Ok(Some((_, body))) => S::body_stream(body),
                Ok(None) => error_stream(io::Error::other(format!("{key} missing"))),
                Err(e) => error_stream(io::Error::other(e.to_string())),
            }
        }
    });
    Box::pin(parts.flatten())
}

pub(crate) fn error_stream(e: io::Error) -> ByteStream {
    Box::pin(futures::stream::once(async move { Err(e) }))
}
