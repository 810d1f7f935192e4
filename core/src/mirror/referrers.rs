//! Mirrored referrers: the upstream's referrers API, else what the cache
//! holds.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, Method, StatusCode, Uri};

use super::{Mirror, MirrorTarget};
use crate::error::UpstreamError;
use crate::io::body::{self, Body};
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::model::digest::Digest;
use crate::model::manifest;
use crate::model::reference::Tag;
use crate::store::Result;
use crate::wire::response::{set, Response};
use crate::wire::{self};

impl<S: Storage, H: Host, F: Fetch> Mirror<'_, S, H, F> {
    /// Referrers come from the upstream's referrers API, else from the
    /// referrers tag schema (`<alg>-<hex>`, for registries without the API),
    /// else from what the cache holds when the upstream is unreachable.
    pub(super) async fn mirror_referrers(
        &self,
        t: &MirrorTarget<F, H>,
        subject: &Digest,
        uri: &Uri,
    ) -> Result<Response<S::Body>> {
        let filter = wire::query_param(uri, "artifactType").transpose()?;
        let limit = self.store.config.max_manifest_size;
        let index = |resp: http::Response<F::Body>| async move {
            let ct = wire::header(resp.headers(), "content-type")
                .unwrap_or("")
                .to_owned();
            let filtered = resp
                .headers()
                .contains_key(wire::OCI_FILTERS_APPLIED_HEADER);
            let bytes = body::collect_limited(F::body_stream(resp.into_body()), limit)
                .await
                .ok()?;
            let parsed = manifest::parse(&bytes, Some(&ct)).ok()?;
            parsed.kind.is_index().then_some((parsed, filtered))
        };
        let api_answer = match t
            .upstream
            .referrers(&t.remote, &subject.to_string(), filter.as_deref())
            .await
        {
            Ok(resp) => index(resp).await,
            Err(UpstreamError::Unavailable { .. }) => {
                return self.store.referrers(&t.local, subject, uri).await
            }
            // 404, 400, 405…: no referrers API there.
            Err(_) => None,
        };
        let (parsed, upstream_filtered) = match api_answer {
            Some(found) => found,
            None => {
                let tag = format!("{}-{}", subject.algorithm().as_str(), subject.hex());
                let fallback = match Tag::parse(&tag) {
                    Ok(_) => match t.upstream.manifest(&t.remote, &tag, Method::GET).await {
                        Ok(resp) => index(resp).await,
                        Err(UpstreamError::Unavailable { .. }) => {
                            return self.store.referrers(&t.local, subject, uri).await
                        }
                        Err(_) => None,
                    },
                    Err(_) => None,
                };
                fallback.unwrap_or_else(|| {
                    let empty = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
                    (manifest::parse(empty, None).expect("literal index"), false)
                })
            }
        };
        let manifests: Vec<&manifest::Descriptor> = parsed
            .manifests
            .iter()
            .filter(|d| {
                upstream_filtered
                    || filter
                        .as_ref()
                        .is_none_or(|f| d.artifact_type.as_deref() == Some(f.as_str()))
            })
            .collect();
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::media_type::OCI_INDEX,
            "manifests": manifests,
        });
        let bytes = Bytes::from(body.to_string());
        let mut resp = crate::wire::response::response(StatusCode::OK, Body::Full(bytes.clone()));
        let h = resp.headers_mut();
        set(h, CONTENT_TYPE, manifest::media_type::OCI_INDEX);
        set(h, CONTENT_LENGTH, &bytes.len().to_string());
        if filter.is_some() {
            set(
                h,
                HeaderName::from_static(wire::OCI_FILTERS_APPLIED_HEADER),
                "artifactType",
            );
        }
        Ok(resp)
    }
}
