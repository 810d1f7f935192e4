//! Pushing and deleting manifests and blobs.

use http::header::{HeaderName, CONTENT_LENGTH, LOCATION};
use http::StatusCode;

use crate::error::{ErrorCode, RegistryError};
use crate::io::body::{self, Body, ByteStream, CollectError};
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::model::digest::{self, Digest};
use crate::model::manifest::{self, Descriptor};
use crate::model::reference::{Reference, RepositoryName, Tag};
use crate::store::layout;
use crate::store::{manifest_unknown, Result, Store};
use crate::wire;
use crate::wire::response::{accepted, response, set, Response};

/// Most tags one manifest push may apply (`?tag=`); the spec asks for at
/// least 10.
const MAX_TAGS_PER_PUSH: usize = 100;

impl<S: Storage, H: Host> Store<S, H> {
    pub(crate) async fn put_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
        uri: &http::Uri,
        content_type: Option<&str>,
        body: ByteStream,
        granted: Option<crate::access::Rights>,
    ) -> Result<Response<S::Body>> {
        // A push by digest may tag it too (`?tag=a&tag=b`): every tag is
        // checked before anything is stored.
        let mut tags = match reference {
            Reference::Tag(t) => vec![t.clone()],
            Reference::Digest(_) => wire::query_params(uri, "tag")?
                .iter()
                .map(|t| Tag::parse(t))
                .collect::<Result<Vec<_>, _>>()?,
        };
        tags.dedup();
        if tags.len() > MAX_TAGS_PER_PUSH {
            return Err(RegistryError::new(
                ErrorCode::TagInvalid,
                format!("at most {MAX_TAGS_PER_PUSH} tags per push"),
            )
            .with_status(StatusCode::URI_TOO_LONG));
        }
        let bytes = body::collect_limited(body, self.config.max_manifest_size)
            .await
            .map_err(|e| match e {
                CollectError::TooLarge => RegistryError::new(
                    ErrorCode::SizeInvalid,
                    format!(
                        "manifest larger than {} bytes",
                        self.config.max_manifest_size
                    ),
                )
                .with_status(StatusCode::PAYLOAD_TOO_LARGE),
                CollectError::Io(e) => {
                    RegistryError::new(ErrorCode::ManifestInvalid, format!("reading manifest: {e}"))
                }
            })?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::compute(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(RegistryError::new(
                        ErrorCode::DigestInvalid,
                        format!("manifest digest is {actual}, not {d}"),
                    ));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256(&bytes),
        };
        let parsed = manifest::parse(&bytes, content_type)
            .map_err(|e| RegistryError::new(ErrorCode::ManifestInvalid, e.to_string()))?;

        self.check_immutable_tags(name, &tags, Some(&digest))
            .await?;
        if granted.is_some_and(|r| !r.overwrite) {
            self.check_no_tag_moves(name, &tags, &digest).await?;
        }
        // Announced before they are checked: a collection in this process
        // or another spares them from here on (`crate::store::sweep`).
        let named: Vec<&Digest> = std::iter::once(&digest)
            .chain(parsed.required_blobs().map(|d| &d.digest))
            .chain(parsed.manifests.iter().map(|d| &d.digest))
            .collect();
        let in_use = self.announce_use(&named).await?;
        for d in parsed.required_blobs() {
            self.check_blob_reference(name, d).await?;
        }
        for d in &parsed.manifests {
            if self
                .storage
                .head(&layout::manifest_revision(name, &d.digest))
                .await?
                .is_none()
            {
                return Err(RegistryError::new(
                    ErrorCode::ManifestBlobUnknown,
                    format!("referenced manifest {} is not in {name}", d.digest),
                ));
            }
        }

        self.store_manifest(name, &digest, bytes, &parsed, &tags)
            .await?;
        self.relink_collected(name, &parsed).await?;
        in_use.release().await;

        let mut resp = response(StatusCode::CREATED, Body::Empty);
        let h = resp.headers_mut();
        set(h, LOCATION, &format!("/v2/{name}/manifests/{digest}"));
        set(h, wire::CONTENT_DIGEST_HEADER, &digest.to_string());
        set(h, CONTENT_LENGTH, "0");
        if matches!(reference, Reference::Digest(_)) && !tags.is_empty() {
            let applied: Vec<&str> = tags.iter().map(Tag::as_str).collect();
            set(
                h,
                HeaderName::from_static(wire::OCI_TAG_HEADER),
                &applied.join(", "),
            );
        }
        if let Some(subject) = &parsed.subject {
            set(h, wire::OCI_SUBJECT_HEADER, &subject.digest.to_string());
        }
        Ok(resp)
    }

    pub(crate) async fn check_blob_reference(
        &self,
        name: &RepositoryName,
        d: &Descriptor,
    ) -> Result<()> {
        let unknown = || {
            RegistryError::new(
                ErrorCode::ManifestBlobUnknown,
                format!("blob {} is not in {name}", d.digest),
            )
        };
        if self
            .storage
            .head(&layout::layer_link(name, &d.digest))
            .await?
            .is_none()
        {
            return Err(unknown());
        }
        let meta = self
            .storage
            .head(&layout::blob(&d.digest))
            .await?
            .ok_or_else(unknown)?;
        if meta.size != d.size {
            return Err(RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!(
                    "descriptor of {} says {} bytes, the blob has {}",
                    d.digest, d.size, meta.size
                ),
            ));
        }
        Ok(())
    }

    /// A collection in another process may have removed a link this push
    /// checked, between the check and the manifest landing (this
    /// process's collections wait for the push's marks): put back each
    /// link whose blob is still there, and fail the push if a blob is gone.
    async fn relink_collected(
        &self,
        name: &RepositoryName,
        parsed: &manifest::Manifest,
    ) -> Result<()> {
        for d in parsed.required_blobs() {
            if self
                .storage
                .head(&layout::layer_link(name, &d.digest))
                .await?
                .is_some()
            {
                continue;
            }
            if self.storage.head(&layout::blob(&d.digest)).await?.is_none() {
                return Err(RegistryError::new(
                    ErrorCode::ManifestBlobUnknown,
                    format!(
                        "blob {} was garbage collected while this manifest was pushed; push it again",
                        d.digest
                    ),
                ));
            }
            self.link_blob(name, &d.digest).await?;
        }
        Ok(())
    }

    /// Refuse to point an existing tag at another manifest, for a pusher
    /// without the `overwrite` right.
    async fn check_no_tag_moves(
        &self,
        name: &RepositoryName,
        tags: &[Tag],
        digest: &Digest,
    ) -> Result<()> {
        for t in tags {
            if let Some(raw) = self.storage.read(&layout::tag(name, t)).await? {
                if raw.trim_ascii() != digest.to_string().as_bytes() {
                    return Err(RegistryError::new(
                        ErrorCode::Denied,
                        format!("tag {t} of {name} exists; moving it needs the overwrite right"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Refuse to move or remove an immutable tag: `target` is the manifest
    /// a push points `tags` at (`None` for a DELETE).
    pub(crate) async fn check_immutable_tags(
        &self,
        name: &RepositoryName,
        tags: &[Tag],
        target: Option<&Digest>,
    ) -> Result<()> {
        let rules = &self.config.immutable_tags;
        if rules.is_empty() {
            return Ok(());
        }
        for t in tags {
            if !crate::hosted::retention::is_immutable(rules, name, t) {
                continue;
            }
            let Some(raw) = self.storage.read(&layout::tag(name, t)).await? else {
                continue;
            };
            let same = target.is_some_and(|d| raw.trim_ascii() == d.to_string().as_bytes());
            if !same {
                return Err(RegistryError::new(
                    ErrorCode::Denied,
                    format!("tag {t} of {name} is immutable"),
                ));
            }
        }
        Ok(())
    }

    pub(crate) async fn delete_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<Response<S::Body>> {
        self.check_delete_enabled("GET, HEAD, PUT")?;
        match reference {
            Reference::Tag(t) => {
                let key = layout::tag(name, t);
                if self.storage.head(&key).await?.is_none() {
                    return Err(manifest_unknown(name, reference));
                }
                self.check_immutable_tags(name, std::slice::from_ref(t), None)
                    .await?;
                self.storage.delete(&key).await?;
                self.storage.delete(&layout::tag_pull(name, t)).await?;
            }
            Reference::Digest(d) => {
                let rev = layout::manifest_revision(name, d);
                if self.storage.head(&rev).await?.is_none() {
                    self.recent.forget(name, d);
                    return Err(manifest_unknown(name, reference));
                }
                // Tags first, so no tag is ever left pointing at a deleted
                // revision; the blob itself stays for garbage collection.
                let mut pointing = Vec::new();
                for key in self.storage.list(&layout::tags_prefix(name)).await? {
                    if let Some(raw) = self.storage.read(&key).await? {
                        if raw.as_ref() == d.to_string().as_bytes() {
                            pointing.push(key);
                        }
                    }
                }
                let tags: Vec<Tag> = pointing
                    .iter()
                    .filter_map(|k| layout::tag_of(name, k))
                    .collect();
                self.check_immutable_tags(name, &tags, None).await?;
                for key in pointing {
                    self.storage.delete(&key).await?;
                }
                if let Some(bytes) = self.storage.read(&layout::blob(d)).await? {
                    if let Ok(m) = manifest::parse(&bytes, None) {
                        if let Some(subject) = m.subject {
                            self.storage
                                .delete(&layout::referrer(name, &subject.digest, d))
                                .await?;
                        }
                    }
                }
                self.storage.delete(&rev).await?;
                self.recent.forget(name, d);
            }
        }
        Ok(accepted())
    }

    pub(crate) async fn delete_blob(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Response<S::Body>> {
        self.check_delete_enabled("GET, HEAD")?;
        let link = layout::layer_link(name, digest);
        if self.storage.head(&link).await?.is_none() {
            return Err(RegistryError::new(
                ErrorCode::BlobUnknown,
                format!("blob {digest} is not in {name}"),
            ));
        }
        self.storage.delete(&link).await?;
        Ok(accepted())
    }

    pub(crate) fn blob_created(&self, name: &RepositoryName, digest: &Digest) -> Response<S::Body> {
        let mut resp = response(StatusCode::CREATED, Body::Empty);
        let h = resp.headers_mut();
        set(h, LOCATION, &format!("/v2/{name}/blobs/{digest}"));
        set(h, wire::CONTENT_DIGEST_HEADER, &digest.to_string());
        set(h, CONTENT_LENGTH, "0");
        resp
    }

    /// Store a whole blob from `body`, visible only if it hashes to `digest`.
    pub(crate) async fn store_blob(&self, digest: &Digest, body: ByteStream) -> Result<()> {
        let key = layout::blob(digest);
        let verified = digest::verify(body, digest.clone(), None);
        self.storage
            .put_stream(&key, verified)
            .await
            .map_err(RegistryError::from_upload)?;
        Ok(())
    }

    /// `allow`: what the resource still answers when deletes are off.
    pub(crate) fn check_delete_enabled(&self, allow: &'static str) -> Result<()> {
        if self.config.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::new(
                ErrorCode::Unsupported,
                "deletes are disabled on this registry",
            )
            .with_header(http::header::ALLOW, allow))
        }
    }
}
