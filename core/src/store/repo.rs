//! Storage operations hosted and mirrored repositories share: manifests by
//! reference, blob reads, links, tags, the catalog, referrers.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, LINK};
use http::StatusCode;

use crate::error::{ErrorCode, RegistryError};
use crate::io::body::Body;
use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage};
use crate::model::digest::Digest;
use crate::model::manifest::{self, media_type, Descriptor};
use crate::model::reference::{Reference, RepositoryName, Tag};
use crate::store::layout;
use crate::store::memo::CachedManifest;
use crate::store::{manifest_unknown, Page, Result, Store};
use crate::wire;
use crate::wire::response::{
    blob_response, json_response, response, satisfiable_range, set, Response,
};

impl<S: Storage, H: Host> Store<S, H> {
    pub(crate) async fn resolve(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<Digest> {
        match reference {
            Reference::Digest(d) => Ok(d.clone()),
            Reference::Tag(t) => {
                let raw = self
                    .storage
                    .read(&layout::tag(name, t))
                    .await?
                    .ok_or_else(|| manifest_unknown(name, reference))?;
                let text = std::str::from_utf8(&raw)
                    .map_err(|_| RegistryError::internal("corrupt tag link"))?;
                Digest::parse(text.trim()).map_err(|_| RegistryError::internal("corrupt tag link"))
            }
        }
    }

    pub(crate) async fn get_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<Response<S::Body>> {
        let digest = self.resolve(name, reference).await?;
        self.manifest_response(name, &digest, reference).await
    }

    /// The manifest `digest` of `name` (asked for as `reference`), from
    /// memory when it was served recently.
    pub(crate) async fn manifest_response(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        reference: &Reference,
    ) -> Result<Response<S::Body>> {
        let digest = digest.clone();
        let CachedManifest { media_type, bytes } = match self.recent.manifest(name, &digest) {
            // Remembered, and still there: another process (a collection,
            // `kura gc`, an instance on the same bucket) may have deleted
            // it, and deleted content never comes back through a cache.
            Some(m)
                if self
                    .storage
                    .head(&layout::manifest_revision(name, &digest))
                    .await?
                    .is_some() =>
            {
                m
            }
            Some(_) => {
                self.recent.forget(name, &digest);
                return Err(manifest_unknown(name, reference));
            }
            None => {
                let seen = self.recent.epoch();
                let media_type = self
                    .storage
                    .read(&layout::manifest_revision(name, &digest))
                    .await?
                    .ok_or_else(|| manifest_unknown(name, reference))?;
                let bytes = self
                    .storage
                    .read(&layout::blob(&digest))
                    .await?
                    .ok_or_else(|| manifest_unknown(name, reference))?;
                let m = CachedManifest { media_type, bytes };
                self.recent.put_manifest(name, &digest, m.clone(), seen);
                m
            }
        };
        let mut resp = response(StatusCode::OK, Body::Full(bytes.clone()));
        let h = resp.headers_mut();
        set(
            h,
            CONTENT_TYPE,
            String::from_utf8_lossy(&media_type).as_ref(),
        );
        set(h, CONTENT_LENGTH, &bytes.len().to_string());
        set(h, wire::CONTENT_DIGEST_HEADER, &digest.to_string());
        set(h, ETAG, &format!("\"{digest}\""));
        Ok(resp)
    }

    /// Store verified manifest bytes in `name`, with the referrers entry of
    /// its subject and `tags`. Bytes first, then the revision link, then the
    /// tags: a crash at any point leaves nothing pointing at data that is
    /// not there. A tag records `digest` as given, so it answers with the
    /// algorithm the manifest was pushed under.
    pub(crate) async fn store_manifest(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        bytes: Bytes,
        parsed: &manifest::Manifest,
        tags: &[Tag],
    ) -> Result<()> {
        let size = bytes.len() as u64;
        // A manifest's bytes are never evicted, even if a client once
        // fetched them as a layer through the mirror.
        self.keep_blob(digest).await?;
        self.storage
            .put(&layout::blob(digest), bytes, PutMode::Overwrite)
            .await?;
        self.storage
            .put(
                &layout::manifest_revision(name, digest),
                Bytes::from(parsed.media_type()),
                PutMode::Overwrite,
            )
            .await?;
        // The same bytes may come again with another media type: the
        // cached answer must not outlive the revision it was read from.
        self.recent.forget(name, digest);
        if let Some(subject) = &parsed.subject {
            let desc = serde_json::to_vec(&parsed.referrer_descriptor(digest.clone(), size))
                .expect("descriptor serializes");
            self.storage
                .put(
                    &layout::referrer(name, &subject.digest, digest),
                    desc.into(),
                    PutMode::Overwrite,
                )
                .await?;
        }
        for t in tags {
            self.storage
                .put(
                    &layout::tag(name, t),
                    Bytes::from(digest.to_string()),
                    PutMode::Overwrite,
                )
                .await?;
        }
        self.ensure_cataloged(name).await
    }

    pub(crate) async fn get_blob(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        range: Option<&str>,
        head_only: bool,
    ) -> Result<Response<S::Body>> {
        let unknown = || {
            RegistryError::new(
                ErrorCode::BlobUnknown,
                format!("blob {digest} is not in {name}"),
            )
        };
        if self
            .storage
            .head(&layout::layer_link(name, digest))
            .await?
            .is_none()
        {
            return Err(unknown());
        }
        let key = layout::blob(digest);
        let (status, body, len, content_range) = match range {
            // HEAD reports the whole blob; no need to open it.
            _ if head_only => {
                let size = self.storage.head(&key).await?.ok_or_else(unknown)?.size;
                (StatusCode::OK, Body::Empty, size, None)
            }
            None => {
                let (meta, body) = self.storage.get(&key, None).await?.ok_or_else(unknown)?;
                (StatusCode::OK, Body::Stream(body), meta.size, None)
            }
            Some(value) => {
                let size = self.storage.head(&key).await?.ok_or_else(unknown)?.size;
                let r = satisfiable_range(value, size)?;
                let (_, body) = self
                    .storage
                    .get(&key, Some(r.clone()))
                    .await?
                    .ok_or_else(unknown)?;
                let cr = format!("bytes {}-{}/{size}", r.start, r.end - 1);
                (
                    StatusCode::PARTIAL_CONTENT,
                    Body::Stream(body),
                    r.end - r.start,
                    Some(cr),
                )
            }
        };
        Ok(blob_response(
            status,
            body,
            digest,
            Some(len),
            content_range,
        ))
    }

    pub(crate) async fn link_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        self.storage
            .put(
                &layout::layer_link(name, digest),
                Bytes::new(),
                PutMode::Overwrite,
            )
            .await?;
        self.ensure_cataloged(name).await
    }

    pub(crate) async fn ensure_cataloged(&self, name: &RepositoryName) -> Result<()> {
        if self
            .cataloged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
        {
            return Ok(());
        }
        self.storage
            .put(
                &layout::catalog_entry(name),
                Bytes::new(),
                PutMode::Overwrite,
            )
            .await?;
        self.cataloged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        Ok(())
    }

    pub(crate) async fn tags(
        &self,
        name: &RepositoryName,
        uri: &http::Uri,
    ) -> Result<Response<S::Body>> {
        if self
            .storage
            .head(&layout::catalog_entry(name))
            .await?
            .is_none()
        {
            return Err(RegistryError::new(
                ErrorCode::NameUnknown,
                format!("repository {name} not known"),
            ));
        }
        let all: Vec<String> = self
            .storage
            .list(&layout::tags_prefix(name))
            .await?
            .iter()
            .filter_map(|k| layout::tag_of(name, k))
            .map(|t| t.as_str().to_owned())
            .collect();
        let Page {
            entries: page,
            next,
        } = self.paginate(all, uri)?;
        let body = serde_json::json!({ "name": name.as_str(), "tags": page });
        let mut resp = json_response(StatusCode::OK, body.to_string().into());
        if let Some((n, last)) = next {
            let link = format!(
                "</v2/{name}/tags/list?n={n}&last={}>; rel=\"next\"",
                wire::percent_encode(&last)
            );
            set(resp.headers_mut(), LINK, &link);
        }
        Ok(resp)
    }

    pub(crate) async fn catalog(&self, uri: &http::Uri) -> Result<Response<S::Body>> {
        let mut all: Vec<String> = self
            .storage
            .list(layout::CATALOG_PREFIX)
            .await?
            .iter()
            .filter_map(|k| layout::catalog_name(k))
            .map(|n| n.as_str().to_owned())
            .collect();
        all.sort();
        let Page {
            entries: page,
            next,
        } = self.paginate(all, uri)?;
        let body = serde_json::json!({ "repositories": page });
        let mut resp = json_response(StatusCode::OK, body.to_string().into());
        if let Some((n, last)) = next {
            set(
                resp.headers_mut(),
                LINK,
                &format!(
                    "</v2/_catalog?n={n}&last={}>; rel=\"next\"",
                    wire::percent_encode(&last)
                ),
            );
        }
        Ok(resp)
    }

    /// The `n` (capped at the largest page) and `last` of a listing request.
    pub(crate) fn page_query(&self, uri: &http::Uri) -> Result<(Option<usize>, Option<String>)> {
        let bad_n = || {
            RegistryError::new(
                ErrorCode::PaginationNumberInvalid,
                "n must be a non-negative integer",
            )
        };
        let n = match wire::query_param(uri, "n") {
            None => None,
            Some(v) => {
                let v = v?;
                Some(
                    v.parse::<usize>()
                        .map_err(|_| bad_n())?
                        .min(self.config.max_page_size),
                )
            }
        };
        let last = wire::query_param(uri, "last").transpose()?;
        Ok((n, last))
    }

    /// Apply `n` and `last` to a sorted list. Returns the page and, when more
    /// entries follow, the `n` and `last` of the next page.
    pub(crate) fn paginate(&self, sorted: Vec<String>, uri: &http::Uri) -> Result<Page> {
        let (n, last) = self.page_query(uri)?;
        let rest: Vec<String> = match &last {
            Some(l) => sorted
                .into_iter()
                .filter(|t| t.as_str() > l.as_str())
                .collect(),
            None => sorted,
        };
        let n = n.unwrap_or(rest.len().min(self.config.max_page_size));
        if n == 0 {
            return Ok(Page {
                entries: Vec::new(),
                next: None,
            });
        }
        let more = rest.len() > n;
        let page: Vec<String> = rest.into_iter().take(n).collect();
        let next = more.then(|| (n, page.last().cloned().unwrap_or_default()));
        Ok(Page {
            entries: page,
            next,
        })
    }

    pub(crate) async fn referrers(
        &self,
        name: &RepositoryName,
        subject: &Digest,
        uri: &http::Uri,
    ) -> Result<Response<S::Body>> {
        let filter = wire::query_param(uri, "artifactType").transpose()?;
        let mut manifests = Vec::new();
        for key in self
            .storage
            .list(&layout::referrers_prefix(name, subject))
            .await?
        {
            let Some(raw) = self.storage.read(&key).await? else {
                continue;
            };
            let Ok(desc) = serde_json::from_slice::<Descriptor>(&raw) else {
                continue;
            };
            // A referrer whose manifest was deleted without cleanup is not listed.
            if self
                .storage
                .head(&layout::manifest_revision(name, &desc.digest))
                .await?
                .is_none()
            {
                continue;
            }
            if filter
                .as_ref()
                .is_none_or(|f| desc.artifact_type.as_deref() == Some(f.as_str()))
            {
                manifests.push(desc);
            }
        }
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": manifests,
        });
        let bytes = Bytes::from(body.to_string());
        let mut resp = response(StatusCode::OK, Body::Full(bytes.clone()));
        let h = resp.headers_mut();
        set(h, CONTENT_TYPE, media_type::OCI_INDEX);
        set(h, CONTENT_LENGTH, &bytes.len().to_string());
        if filter.is_some() {
            set(h, wire::OCI_FILTERS_APPLIED_HEADER, "artifactType");
        }
        Ok(resp)
    }
}
