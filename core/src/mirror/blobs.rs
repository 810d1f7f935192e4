//! Mirrored blob reads: hits from storage (under the repositories the
//! upstream vouched for), misses joined to the fill for (repository,
//! digest).

use std::sync::Arc;

use http::StatusCode;

use super::{mark, Mirror, MirrorTarget};
use crate::error::UpstreamError;
use crate::error::{ErrorCode, RegistryError};
use crate::io::body::Body;
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::model::digest::Digest;
use crate::store::layout;
use crate::store::Result;
use crate::wire::response::{blob_response, satisfiable_range, Response};
use crate::wire::{self};

use super::claim::{FillClaim, FillFollower};
use super::fill::Fill;
use super::flight::{follow, BlobFlight, FlightError, Start};

impl<S: Storage, H: Host, F: Fetch> Mirror<'_, S, H, F> {
    pub(super) async fn mirror_blob(
        &self,
        t: &MirrorTarget<F, H>,
        digest: &Digest,
        range: Option<&str>,
        head: bool,
    ) -> Result<Response<S::Body>> {
        let stored = self
            .store
            .storage
            .head(&layout::blob(digest))
            .await?
            .is_some();
        if stored {
            let linked = self
                .store
                .storage
                .head(&layout::layer_link(&t.local, digest))
                .await?
                .is_some();
            if !linked {
                // Stored for another repository: the bytes are verified, but
                // only the upstream's yes lets this repository have them. A
                // denial (Docker Hub answers 401 for repositories that do
                // not exist) is a no; an unreachable upstream is no answer.
                match t.upstream.blob_head(&t.remote, &digest.to_string()).await {
                    Ok(_) => {}
                    Err(UpstreamError::NotFound | UpstreamError::Denied(_)) => {
                        return Err(RegistryError::new(
                            ErrorCode::BlobUnknown,
                            format!("blob {digest} not in {}", t.remote),
                        ))
                    }
                    Err(e) => return Err(self.upstream_failure(t, e, ErrorCode::BlobUnknown)),
                }
                self.store.link_blob(&t.local, digest).await?;
            }
            match self.store.get_blob(&t.local, digest, range, head).await {
                Ok(resp) => {
                    self.record_use(digest).await;
                    return Ok(mark(resp, "hit"));
                }
                // Evicted between the look and the read: a miss after all,
                // which the upstream fills again. (Found by the crash
                // campaign: a 404 for a blob the upstream has.)
                Err(e)
                    if e.code == ErrorCode::BlobUnknown
                        && self
                            .store
                            .storage
                            .head(&layout::blob(digest))
                            .await?
                            .is_none() => {}
                Err(e) => return Err(e),
            }
        }

        if head && !self.filling(t, digest) {
            // A cold HEAD asks the upstream with a HEAD: no download.
            let resp = t
                .upstream
                .blob_head(&t.remote, &digest.to_string())
                .await
                .map_err(|e| self.upstream_failure(t, e, ErrorCode::BlobUnknown))?;
            let len = wire::header(resp.headers(), "content-length")
                .and_then(|v| v.trim().parse::<u64>().ok());
            let resp = blob_response(StatusCode::OK, Body::Empty, digest, len, None);
            return Ok(mark(resp, "miss"));
        }
        let flight = self.blob_flight(t, digest).await;
        let started = flight.started().await.map_err(|e| match e {
            FlightError::Upstream(e) => self.upstream_failure(t, e, ErrorCode::BlobUnknown),
            FlightError::Broken(msg) => RegistryError::new(ErrorCode::Unavailable, msg),
        })?;
        let Start::Bytes { size } = started else {
            // Over without a byte: stored meanwhile (by a fill that ended
            // since this request found the blob missing). Serve it as a hit
            // would be served.
            return Box::pin(self.mirror_blob(t, digest, range, head)).await;
        };
        let (status, start, end, content_range) = match (range, size) {
            (Some(r), Some(size)) if !head => {
                let rg = satisfiable_range(r, size)?;
                let cr = format!("bytes {}-{}/{size}", rg.start, rg.end - 1);
                (
                    StatusCode::PARTIAL_CONTENT,
                    rg.start,
                    Some(rg.end),
                    Some(cr),
                )
            }
            _ => (StatusCode::OK, 0, size, None),
        };
        let body = if head {
            Body::Empty
        } else {
            Body::Relay(follow(
                flight,
                self.store.storage.clone(),
                layout::blob(digest),
                start,
                end,
            ))
        };
        let len = end.map(|e| e - start);
        let resp = blob_response(status, body, digest, len, content_range);
        Ok(mark(resp, "miss"))
    }

    /// Whether `digest` is being filled for this repository.
    pub(super) fn filling(&self, t: &MirrorTarget<F, H>, digest: &Digest) -> bool {
        self.mirrors
            .fills
            .is_filling(&(t.local.clone(), digest.clone()))
    }

    /// Join the fill of `digest`, or start it: what `claim_fill` decides,
    /// carried out by the core's own fill task.
    async fn blob_flight(&self, t: &MirrorTarget<F, H>, digest: &Digest) -> Arc<BlobFlight> {
        let claim = self.claim_fill(&t.local, digest).await;
        let flight = match &claim {
            FillClaim::Lead(lease) => lease.flight.clone(),
            FillClaim::Follow(f) => f.flight.clone(),
        };
        let fill = Fill {
            storage: self.store.storage.clone(),
            upstream: t.upstream.clone(),
            remote: t.remote.clone(),
            records_changes: self.store.config.records_changes,
        };
        match claim {
            FillClaim::Lead(lease) => self.store.host.spawn(Box::pin(fill.lead(lease))),
            FillClaim::Follow(FillFollower {
                elsewhere: Some(e), ..
            }) => self.store.host.spawn(Box::pin(fill.follow(e))),
            FillClaim::Follow(_) => {}
        }
        flight
    }
}
