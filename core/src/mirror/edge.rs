//! Blob misses whose bytes the host moves.
//!
//! A host that can split a stream without touching its bytes (a Worker
//! hands the upstream's `ReadableStream` to the client and to an R2 put
//! that checks the sha256) should not let the core relay every byte. For
//! such hosts, the `Registry` facade offers, in order: `handle_edge` (a
//! miss comes back as a [`BlobMiss`], nothing fetched yet), `claim_fill`
//! (the one claim every host takes, `claim`), `fetch_blob` (the upstream's
//! response, body untouched), `blob_miss_response` (the client's headers
//! around the host's body), `commit_blob` (link and catalog once storage
//! holds the verified blob) inside `FillLease::hold`, then
//! `FillLease::settle`; followers wait with `follow_fill`.
//!
//! The core still decides everything (routing, whether it is a miss, who
//! fills, which upstream request, what a verified blob is linked as); the
//! host moves bytes. "Verified before visible" becomes the host's storage
//! contract: the object at [`BlobMiss::key`] must only appear if its bytes
//! hash to [`BlobMiss::digest`] (R2's `sha256` put option, or a digest
//! checked before a multipart upload completes).
//!
//! Hosts whose concurrent requests must not wake each other (a Worker: each
//! request has its own I/O context, and a request resumed from another's
//! context does its I/O there) say so with `Host::wakes_across_requests`:
//! manifest followers then poll on `Host::sleep`, and blob misses go
//! through this module, whose `follow_fill` always polls.

use http::header::HeaderValue;
use http::{HeaderName, Method, Request, StatusCode};

use crate::error::UpstreamError;
use crate::error::{ErrorCode, RegistryError};
use crate::io::body::{Body, ByteStream};
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::metrics;
use crate::mirror::Mirror;
use crate::mirror::{MirrorTarget, CACHE_HEADER, OCI_NAMESPACE_HEADER};
use crate::model::digest::Digest;
use crate::model::reference::RepositoryName;
use crate::store::changes::Change;
use crate::store::layout;
use crate::wire::response::{blob_response, Response};
use crate::wire::{self, Route};

/// What [`crate::Registry::handle_edge`] made of a request.
pub enum Edge<B, F, H> {
    /// The answer, as [`crate::Registry::handle`] gives it.
    Response(Response<B>),
    /// A mirrored blob that is not stored: the host fetches and stores it.
    BlobMiss(BlobMiss<F, H>),
}

/// A `GET` or `HEAD` of a mirrored blob that storage does not hold.
pub struct BlobMiss<F, H> {
    /// The upstream, and the repository's names there and here.
    pub(crate) target: MirrorTarget<F, H>,
    pub(crate) digest: Digest,
    pub(crate) head: bool,
    pub(crate) range: Option<String>,
}

impl<F, H> BlobMiss<F, H> {
    /// The blob the client asked for.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// `HEAD`: the client wants the headers only.
    pub fn is_head(&self) -> bool {
        self.head
    }

    /// The client's `Range` header, when it asks for one byte range.
    pub fn range(&self) -> Option<&str> {
        self.range.as_deref()
    }

    /// The repository as stored here (`docker.io/library/alpine`).
    pub fn repository(&self) -> &RepositoryName {
        &self.target.local
    }

    /// The repository as the upstream names it (`library/alpine`).
    pub fn upstream_repository(&self) -> &RepositoryName {
        &self.target.remote
    }

    /// Where the verified bytes go (and what [`crate::Registry::commit_blob`]
    /// expects to find).
    pub fn key(&self) -> String {
        layout::blob(&self.digest)
    }
}

impl<S: Storage, H: Host, F: Fetch> Mirror<'_, S, H, F> {
    /// A hit or a miss for a read of a mirrored blob; `None` for everything
    /// else, and whenever `handle` should answer (ranges and `HEAD`s of
    /// stored blobs, blobs stored for another repository, errors: a bad
    /// `ns=`, storage down).
    pub(crate) async fn mirrored_blob(
        &self,
        req: &Request<ByteStream>,
    ) -> Option<Edge<S::Body, F, H>> {
        let m = req.method();
        if *m != Method::GET && *m != Method::HEAD {
            return None;
        }
        let Ok(Some(Route::Blob(name, digest))) = Route::parse(req.uri().path()) else {
            return None;
        };
        let target = self.mirrors.target(&name, req.uri()).ok()??;
        let range = wire::header(req.headers(), "range")
            .filter(|r| wire::single_byte_range(r))
            .map(str::to_owned);
        let head = *m == Method::HEAD;
        if !head && range.is_none() {
            let link = layout::layer_link(&target.local, &digest);
            if let Ok(Some(_)) = self.store.storage.head(&link).await {
                if let Ok(Some((meta, body))) =
                    self.store.storage.get(&layout::blob(&digest), None).await
                {
                    let resp = blob_response(
                        StatusCode::OK,
                        Body::Stream(body),
                        &digest,
                        Some(meta.size),
                        None,
                    );
                    self.record_use(&digest).await;
                    metrics::inc(&self.store.metrics.blob_hits);
                    metrics::add(&self.store.metrics.bytes_from_cache, meta.size);
                    self.store.metrics.request("blob", 200);
                    return Some(Edge::Response(mark(resp, &target, "hit")));
                }
            }
        }
        match self.store.storage.head(&layout::blob(&digest)).await {
            Ok(None) => Some(Edge::BlobMiss(BlobMiss {
                target,
                digest,
                head,
                range,
            })),
            _ => None,
        }
    }

    /// Ask the upstream for a missing blob (`HEAD` for a `HEAD` miss). The
    /// response is a success; its body is the host's, unread. The whole
    /// blob is asked for even when the client wants a range, so that it can
    /// be stored.
    pub(crate) async fn fetch_blob(
        &self,
        miss: &BlobMiss<F, H>,
    ) -> Result<http::Response<F::Body>, RegistryError> {
        let t = &miss.target;
        let digest = miss.digest.to_string();
        let resp = if miss.head {
            t.upstream.blob_head(&t.remote, &digest).await
        } else {
            t.upstream.blob(&t.remote, &digest, None).await
        };
        resp.map_err(|e| match e {
            UpstreamError::NotFound => RegistryError::new(
                ErrorCode::BlobUnknown,
                format!("blob {} not found upstream", miss.digest),
            ),
            other => self.upstream_failure(t, other, ErrorCode::BlobUnknown),
        })
    }

    /// The response to a blob miss whose bytes the host streams as `body`
    /// (`size`: the upstream's `Content-Length`, if it sent one). A `HEAD`
    /// miss gets an empty body whatever is passed.
    pub(crate) fn blob_miss_response<B>(
        &self,
        miss: &BlobMiss<F, H>,
        size: Option<u64>,
        body: Body<B>,
    ) -> Response<B> {
        let body = if miss.head { Body::Empty } else { body };
        let resp = blob_response(StatusCode::OK, body, &miss.digest, size, None);
        metrics::inc(&self.store.metrics.blob_misses);
        self.store.metrics.request("blob", 200);
        mark(resp, &miss.target, "miss")
    }

    /// Record a blob the host has stored under [`BlobMiss::key`] after
    /// storage checked its digest: link it into the mirrored repository and
    /// list the repository in the catalog. Fails if the blob is not there.
    pub(crate) async fn commit_blob(&self, miss: &BlobMiss<F, H>) -> Result<(), RegistryError> {
        let Some(meta) = self.store.storage.head(&miss.key()).await? else {
            return Err(RegistryError::internal(format!(
                "blob {} was not stored",
                miss.digest
            )));
        };
        self.store
            .link_blob(&miss.target.local, &miss.digest)
            .await?;
        let filled = Change::Filled {
            digest: miss.digest.to_string(),
            size: meta.size,
            at_ms: self.store.host.now_unix_ms(),
        };
        // Advice for eviction: the blob is committed whatever happens here.
        let _ = self.store.record_change(&filled).await;
        Ok(())
    }
}

/// The headers `handle` gives a mirrored blob response: how it was served,
/// the upstream, the API version.
fn mark<B, F, H>(mut resp: Response<B>, t: &MirrorTarget<F, H>, how: &'static str) -> Response<B> {
    let h = resp.headers_mut();
    h.insert(
        HeaderName::from_static(CACHE_HEADER),
        HeaderValue::from_static(how),
    );
    if let Ok(v) = HeaderValue::from_str(&t.upstream.config.name) {
        h.insert(HeaderName::from_static(OCI_NAMESPACE_HEADER), v);
    }
    h.insert(
        wire::API_VERSION_HEADER,
        HeaderValue::from_static(wire::API_VERSION),
    );
    resp
}
