//! What upstreams recently said does not exist: 404s remembered for the
//! upstream's `not_found_ttl_ms`, per repository as stored, so a flood of
//! requests for a missing name costs the upstream one request.

use super::Mirror;
use crate::error::{ErrorCode, RegistryError};
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::metrics::{self};
use crate::model::digest::Digest;
use crate::model::reference::{Reference, RepositoryName};
use crate::store::layout;
use crate::store::{manifest_unknown, Result};

/// What the upstream recently said does not exist (404), per repository
/// as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum MissingKey {
    Manifest(RepositoryName, Reference),
    Blob(RepositoryName, Digest),
}

/// Most 404s remembered at once; past it, expired ones are dropped, then
/// all (a flood of made-up names must not grow memory).
pub(super) const MISSING_MAX: usize = 10_000;

impl<S: Storage, H: Host, F: Fetch> Mirror<'_, S, H, F> {
    /// The 404 to answer for `key` without asking the upstream, if it said
    /// 404 within its `not_found_ttl_ms` and the content has not been stored
    /// since (content by digest can arrive through another reference).
    pub(super) async fn known_missing(&self, key: &MissingKey) -> Result<Option<RegistryError>> {
        let now = self.store.host.now_unix_ms();
        let remembered = {
            let mut missing = self.mirrors.lock_missing();
            match missing.get(key) {
                Some(&until) if until > now => true,
                Some(_) => {
                    missing.remove(key);
                    false
                }
                None => false,
            }
        };
        if !remembered {
            return Ok(None);
        }
        let stored = match key {
            MissingKey::Manifest(local, Reference::Digest(d)) => self
                .store
                .storage
                .head(&layout::manifest_revision(local, d))
                .await?
                .is_some(),
            MissingKey::Blob(local, d) => self
                .store
                .storage
                .head(&layout::layer_link(local, d))
                .await?
                .is_some(),
            // The upstream's word on a tag stands until it expires.
            MissingKey::Manifest(_, Reference::Tag(_)) => false,
        };
        if stored {
            self.mirrors.lock_missing().remove(key);
            return Ok(None);
        }
        metrics::inc(&self.store.metrics.not_found_cached);
        Ok(Some(match key {
            MissingKey::Manifest(local, r) => manifest_unknown(local, r),
            MissingKey::Blob(_, d) => RegistryError::new(
                ErrorCode::BlobUnknown,
                format!("blob {d} not found upstream"),
            ),
        }))
    }

    pub(super) fn remember_missing(&self, key: MissingKey, ttl_ms: u64) {
        if ttl_ms == 0 {
            return;
        }
        let now = self.store.host.now_unix_ms();
        let mut missing = self.mirrors.lock_missing();
        if missing.len() >= MISSING_MAX {
            missing.retain(|_, until| *until > now);
            if missing.len() >= MISSING_MAX {
                missing.clear();
            }
        }
        missing.insert(key, now.saturating_add(ttl_ms));
    }
}
