//! Where the registry keeps things in storage.
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>                            blob and manifest bytes, shared by all repositories
//! repositories/<name>/_layers/<alg>/<hex>                  "this repository has this blob" (empty)
//! repositories/<name>/_manifests/revisions/<alg>/<hex>     "this repository has this manifest" (its media type)
//! repositories/<name>/_manifests/tags/<tag>                the digest the tag points at
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex>   a referrer's descriptor (JSON), by subject
//! repositories/<name>/_cache/tags/<tag>                    mirrored tags: when last checked upstream (JSON)
//! catalog/<name>/_repository                              one marker per repository, for _catalog
//! uploads/<id>/state                                        upload session state (JSON)
//! uploads/<id>/chunk-<offset>-<nonce>                       one received chunk
//! ```
//!
//! Every variable part comes from a validated type ([`RepositoryName`],
//! [`Tag`], [`Digest`], [`UploadId`]), whose grammar excludes `..`, empty
//! components and anything but `[a-zA-Z0-9._-]` and `/`, so no key can
//! escape its prefix. Name components cannot start with `_`, so `_layers`
//! and friends never collide with a nested repository name.

use crate::digest::Digest;
use crate::reference::{RepositoryName, Tag};
use crate::upload::UploadId;

pub fn blob(d: &Digest) -> String {
    format!(
        "blobs/{}/{}/{}",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

pub fn repository(name: &RepositoryName) -> String {
    format!("repositories/{name}/")
}

pub fn layer_link(name: &RepositoryName, d: &Digest) -> String {
    format!(
        "repositories/{name}/_layers/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn manifest_revision(name: &RepositoryName, d: &Digest) -> String {
    format!(
        "repositories/{name}/_manifests/revisions/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn tags_prefix(name: &RepositoryName) -> String {
    format!("repositories/{name}/_manifests/tags/")
}

pub fn tag(name: &RepositoryName, tag: &Tag) -> String {
    format!("{}{tag}", tags_prefix(name))
}

/// When a mirrored tag was last checked upstream (JSON).
pub fn tag_cache(name: &RepositoryName, tag: &Tag) -> String {
    format!("repositories/{name}/_cache/tags/{tag}")
}

pub fn referrers_prefix(name: &RepositoryName, subject: &Digest) -> String {
    format!(
        "repositories/{name}/_referrers/{}/{}/",
        subject.algorithm().as_str(),
        subject.hex()
    )
}

pub fn referrer(name: &RepositoryName, subject: &Digest, referrer: &Digest) -> String {
    format!(
        "{}{}-{}",
        referrers_prefix(name, subject),
        referrer.algorithm().as_str(),
        referrer.hex()
    )
}

pub const CATALOG_PREFIX: &str = "catalog/";

const CATALOG_MARKER: &str = "/_repository";

/// A marker under the name's own path: no path component is longer than the
/// name's own (filesystems cap components at 255 bytes), and `_repository`
/// cannot be a name component, so `a` and `a/b` never clash.
pub fn catalog_entry(name: &RepositoryName) -> String {
    format!("{CATALOG_PREFIX}{name}{CATALOG_MARKER}")
}

pub fn catalog_name(key: &str) -> Option<RepositoryName> {
    let raw = key
        .strip_prefix(CATALOG_PREFIX)?
        .strip_suffix(CATALOG_MARKER)?;
    RepositoryName::parse(raw).ok()
}

pub const UPLOADS_PREFIX: &str = "uploads/";

pub fn upload_dir(id: &UploadId) -> String {
    format!("{UPLOADS_PREFIX}{id}/")
}

pub fn upload_state(id: &UploadId) -> String {
    format!("{UPLOADS_PREFIX}{id}/state")
}

/// A session's bytes as one growing object, on backends that can append.
pub fn upload_data(id: &UploadId) -> String {
    format!("{UPLOADS_PREFIX}{id}/data")
}

pub fn upload_chunk(id: &UploadId, offset: u64, nonce: &str) -> String {
    format!("{UPLOADS_PREFIX}{id}/chunk-{offset:020}-{nonce}")
}

#[cfg(test)]
mod tests {
    // On wasm32, `#[test]` is wasm-bindgen-test's (run in Node by
    // wasm-bindgen-test-runner); natively it is the built-in one.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn catalog_round_trip() {
        let n = RepositoryName::parse("a/b-c/d.e").unwrap();
        assert_eq!(catalog_entry(&n), "catalog/a/b-c/d.e/_repository");
        assert_eq!(catalog_name(&catalog_entry(&n)), Some(n));
        assert_eq!(catalog_name("catalog/A/_repository"), None);
        assert_eq!(catalog_name("catalog/a"), None);
        assert_eq!(catalog_name("other/a"), None);
    }

    #[test]
    fn blob_keys_fan_out() {
        let d = Digest::sha256(b"x");
        let k = blob(&d);
        assert!(k.starts_with(&format!("blobs/sha256/{}/", &d.hex()[..2])));
        assert!(k.ends_with(d.hex()));
    }
}
