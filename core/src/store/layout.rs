//! Where the registry keeps things in storage.
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>                            blob and manifest bytes, shared by all repositories
//! repositories/<name>/_layers/<alg>/<hex>                  "this repository has this blob" (empty)
//! repositories/<name>/_manifests/revisions/<alg>/<hex>     "this repository has this manifest" (its media type)
//! repositories/<name>/_manifests/tags/<tag>                the digest the tag points at
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex>   a referrer's descriptor (JSON), by subject
//! repositories/<name>/_pulls/<tag>                         when a hosted tag was last pulled (ms, decimal; for retention rules)
//! repositories/<name>/_cache/tags/<tag>                    mirrored tags: when last checked upstream (JSON)
//! repositories/<name>/_cache/tag-lists/<page>              a mirrored tag list page and when it was fetched (JSON)
//! repositories/<name>/_cache/tag-checks/<tag>              the lease of an upstream check of a tag in progress
//! repositories/<name>/_fills/<alg>/<hex>                   the lease of a blob fill in progress (JSON)
//! catalog/<name>/_repository                              one marker per repository, for _catalog
//! access/<alg>/<hex>                                       when a mirrored blob was last used (ms, decimal): older kura, read once by eviction
//! cache/changes/<ms>-<random>                              a blob filled, used or kept by a hosted repository since the last eviction pass (JSON)
//! cache/ledger                                             the evictor's record of cached blobs: sizes, last uses, what is kept (JSON)
//! leases/evictor                                           held by the process running an eviction pass
//! leases/gc                                                held by the process running a garbage collection
//! gc/pending                                               when a collection first found each candidate unreferenced, on storage without write times (JSON)
//! gc/sweep                                                 what the collection in progress may delete: its process, when, digests (JSON)
//! gc/in-use/<process>-<n>                                  digests a push in progress is making referenced: when, digests (JSON)
//! uploads/<id>/state                                        upload session state (JSON)
//! uploads/<id>/chunk-<offset>-<nonce>                       one received chunk
//! ```
//!
//! Every variable part comes from a validated type ([`RepositoryName`],
//! [`Tag`], [`Digest`], [`UploadId`]), whose grammar excludes `..`, empty
//! components and anything but `[a-zA-Z0-9._-]` and `/`, so no key can
//! escape its prefix. Name components cannot start with `_`, so `_layers`
//! and friends never collide with a nested repository name.

use crate::model::digest::Digest;
use crate::model::reference::{RepositoryName, Tag};
use crate::model::upload::UploadId;

/// The bytes of blob or manifest `d`, stored once for every repository.
/// The two-character fan-out keeps directories small on filesystems.
pub(crate) fn blob(d: &Digest) -> String {
    format!(
        "blobs/{}/{}/{}",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

/// The digest a [`blob`] key stores.
pub(crate) fn blob_digest(key: &str) -> Option<Digest> {
    let rest = key.strip_prefix("blobs/")?;
    let mut parts = rest.split('/');
    let (alg, fan, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !hex.starts_with(fan) || fan.len() != 2 {
        return None;
    }
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

/// Held (created only if absent) by the process running an eviction pass.
pub(crate) const EVICTOR_LEASE: &str = "leases/evictor";

/// The prefix of every [`change`] key.
pub(crate) const CHANGES_PREFIX: &str = "cache/changes/";

/// One change to the cache since the last eviction pass, at `ms` (the
/// writer's clock, zero-padded so that keys list in time order per writer),
/// `nonce` telling writers apart.
pub(crate) fn change(ms: u64, nonce: &str) -> String {
    format!("{CHANGES_PREFIX}{ms:013}-{nonce}")
}

/// What eviction passes know of the cache between them.
pub(crate) const LEDGER: &str = "cache/ledger";

/// The prefix of every [`access`] key.
pub(crate) const ACCESS_PREFIX: &str = "access/";

/// When the mirrored blob `d` was last used: one small object per blob,
/// written (sampled) on use, so recency survives restarts and can be
/// shared by every process on the same storage.
pub(crate) fn access(d: &Digest) -> String {
    format!("{ACCESS_PREFIX}{}/{}", d.algorithm().as_str(), d.hex())
}

/// The digest an [`access`] key is about.
pub(crate) fn access_digest(key: &str) -> Option<Digest> {
    let (alg, hex) = key.strip_prefix(ACCESS_PREFIX)?.split_once('/')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

/// What a key under `repositories/` is, for a walk over all of them
/// (garbage collection lists them once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// [`layer_link`]
    Layer(Digest),
    /// [`manifest_revision`]
    Revision(Digest),
    /// [`tag`]
    Tag(Tag),
    /// [`referrer`]: the subject and the referring manifest.
    Referrer(Digest, Digest),
    /// [`tag_pull`]
    Pull(Tag),
    /// Anything else: the mirror's cache records, fill leases.
    Other,
}

/// The repository a key under `repositories/` belongs to, and what it is.
pub(crate) fn repository_entry(key: &str) -> Option<(RepositoryName, Entry)> {
    let rest = key.strip_prefix("repositories/")?;
    // Name components cannot start with `_`: the first `/_` ends the name.
    let (name, tail) = rest.split_once("/_")?;
    let name = RepositoryName::parse(name).ok()?;
    let digest = |t: &str| {
        let (alg, hex) = t.split_once('/')?;
        Digest::parse(&format!("{alg}:{hex}")).ok()
    };
    let entry = if let Some(t) = tail.strip_prefix("layers/") {
        digest(t).map(Entry::Layer)
    } else if let Some(t) = tail.strip_prefix("manifests/revisions/") {
        digest(t).map(Entry::Revision)
    } else if let Some(t) = tail.strip_prefix("manifests/tags/") {
        Tag::parse(t).ok().map(Entry::Tag)
    } else if let Some(t) = tail.strip_prefix("pulls/") {
        Tag::parse(t).ok().map(Entry::Pull)
    } else if let Some(t) = tail.strip_prefix("referrers/") {
        // <alg>/<hex>/<alg>-<hex>
        let (subject, referrer) = t.rsplit_once('/')?;
        let (alg, hex) = referrer.split_once('-')?;
        Some(Entry::Referrer(
            digest(subject)?,
            Digest::parse(&format!("{alg}:{hex}")).ok()?,
        ))
    } else {
        Some(Entry::Other)
    };
    Some((name, entry.unwrap_or(Entry::Other)))
}

/// When tag `tag` of hosted repository `name` was last pulled (ms,
/// decimal), for retention rules that keep recently pulled tags. Written
/// at most every few minutes per tag and process.
pub(crate) fn tag_pull(name: &RepositoryName, tag: &Tag) -> String {
    format!("repositories/{name}/_pulls/{tag}")
}

/// Held by the process running a garbage collection.
pub(crate) const GC_LEASE: &str = "leases/gc";

/// What garbage collection remembers between passes: when it first found
/// each object unreferenced, for storage that keeps no write times (JSON).
pub(crate) const GC_PENDING: &str = "gc/pending";

/// What the collection in progress may delete, written before it confirms
/// its plan (see `crate::store::sweep`).
pub(crate) const GC_SWEEP: &str = "gc/sweep";

/// Where pushes in progress say which digests they are making referenced.
pub(crate) const GC_IN_USE_PREFIX: &str = "gc/in-use/";

/// The in-use record of push `n` of `process`.
pub(crate) fn gc_in_use(process: &UploadId, n: u64) -> String {
    format!("{GC_IN_USE_PREFIX}{process}-{n}")
}

/// A key under `repositories/` that code reads back, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RepositoryKey {
    /// [`layer_link`]
    Layer(RepositoryName, Digest),
    /// [`manifest_revision`]
    Manifest(RepositoryName, Digest),
}

/// The inverse of [`layer_link`] and [`manifest_revision`]; `None` for any
/// other key.
pub(crate) fn repository_key(key: &str) -> Option<RepositoryKey> {
    let rest = key.strip_prefix("repositories/")?;
    // Name components cannot start with `_`, so the first `/_layers/` or
    // `/_manifests/` ends the name.
    let digest = |tail: &str| {
        let (alg, hex) = tail.split_once('/')?;
        Digest::parse(&format!("{alg}:{hex}")).ok()
    };
    if let Some((name, tail)) = rest.split_once("/_layers/") {
        return Some(RepositoryKey::Layer(
            RepositoryName::parse(name).ok()?,
            digest(tail)?,
        ));
    }
    if let Some((name, tail)) = rest.split_once("/_manifests/revisions/") {
        return Some(RepositoryKey::Manifest(
            RepositoryName::parse(name).ok()?,
            digest(tail)?,
        ));
    }
    None
}

/// The link that says repository `name` has blob `d`: storage serves a
/// blob only under the repositories that link it.
pub(crate) fn layer_link(name: &RepositoryName, d: &Digest) -> String {
    format!(
        "repositories/{name}/_layers/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

/// The link that says repository `name` has manifest `d`; its content is
/// the manifest's media type.
pub(crate) fn manifest_revision(name: &RepositoryName, d: &Digest) -> String {
    format!(
        "repositories/{name}/_manifests/revisions/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

/// The lease of a fill of blob `d` for repository `name`: whoever put it
/// (create-only) fills; every process sharing the storage sees it.
pub(crate) fn fill_lease(name: &RepositoryName, d: &Digest) -> String {
    format!(
        "repositories/{name}/_fills/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

/// The prefix of repository `name`'s [`tag`] keys, for listing its tags.
pub(crate) fn tags_prefix(name: &RepositoryName) -> String {
    format!("repositories/{name}/_manifests/tags/")
}

/// Tag `tag` of repository `name`; its content is the digest it points at.
pub(crate) fn tag(name: &RepositoryName, tag: &Tag) -> String {
    format!("{}{tag}", tags_prefix(name))
}

/// The tag a [`tag`] key of repository `name` is for.
pub(crate) fn tag_of(name: &RepositoryName, key: &str) -> Option<Tag> {
    Tag::parse(key.strip_prefix(&tags_prefix(name))?).ok()
}

/// When a mirrored tag was last checked upstream (JSON).
pub(crate) fn tag_cache(name: &RepositoryName, tag: &Tag) -> String {
    format!("repositories/{name}/_cache/tags/{tag}")
}

/// The lease of an upstream check of a mirrored tag in progress: processes
/// sharing the storage ask the upstream about a tag once between them.
pub(crate) fn tag_check(name: &RepositoryName, tag: &Tag) -> String {
    format!("repositories/{name}/_cache/tag-checks/{tag}")
}

/// A page of a mirrored repository's tag list, as last fetched upstream.
/// `page` names the query (`n` and `last`): [`tag_list_page`].
pub(crate) fn tag_list_cache(name: &RepositoryName, page: &str) -> String {
    format!("repositories/{name}/_cache/tag-lists/{page}")
}

/// A key component for the tag list page asked for with `n` and `last`:
/// `all` for the whole list, else a digest of the query (`last` is any
/// string a client sends; a digest keeps the key within the layout's
/// grammar and length).
pub(crate) fn tag_list_page(n: Option<usize>, last: Option<&str>) -> String {
    if n.is_none() && last.is_none() {
        return "all".into();
    }
    let query = format!(
        "n={}&last={}",
        n.map(|n| n.to_string()).unwrap_or_default(),
        last.unwrap_or("")
    );
    let d = Digest::sha256(query.as_bytes());
    format!("q-{}", &d.hex()[..32])
}

/// The prefix of the [`referrer`] entries of `subject` in repository
/// `name`: one listing answers the referrers API.
pub(crate) fn referrers_prefix(name: &RepositoryName, subject: &Digest) -> String {
    format!(
        "repositories/{name}/_referrers/{}/{}/",
        subject.algorithm().as_str(),
        subject.hex()
    )
}

/// The descriptor (JSON) of manifest `referrer`, filed under its
/// `subject`.
pub(crate) fn referrer(name: &RepositoryName, subject: &Digest, referrer: &Digest) -> String {
    format!(
        "{}{}-{}",
        referrers_prefix(name, subject),
        referrer.algorithm().as_str(),
        referrer.hex()
    )
}

/// The prefix of every [`catalog_entry`], for listing `_catalog`.
pub(crate) const CATALOG_PREFIX: &str = "catalog/";

const CATALOG_MARKER: &str = "/_repository";

/// A marker under the name's own path: no path component is longer than the
/// name's own (filesystems cap components at 255 bytes), and `_repository`
/// cannot be a name component, so `a` and `a/b` never clash.
pub(crate) fn catalog_entry(name: &RepositoryName) -> String {
    format!("{CATALOG_PREFIX}{name}{CATALOG_MARKER}")
}

/// The repository a [`catalog_entry`] key is for; `None` for any other
/// key.
pub(crate) fn catalog_name(key: &str) -> Option<RepositoryName> {
    let raw = key
        .strip_prefix(CATALOG_PREFIX)?
        .strip_suffix(CATALOG_MARKER)?;
    RepositoryName::parse(raw).ok()
}

/// The prefix of every upload session's objects.
pub(crate) const UPLOADS_PREFIX: &str = "uploads/";

/// The upload session an upload-area key belongs to.
pub(crate) fn upload_of(key: &str) -> Option<UploadId> {
    let (id, _) = key.strip_prefix(UPLOADS_PREFIX)?.split_once('/')?;
    UploadId::parse(id)
}

/// The prefix of everything stored for upload session `id`.
pub(crate) fn upload_dir(id: &UploadId) -> String {
    format!("{UPLOADS_PREFIX}{id}/")
}

/// Upload session `id`'s state ([`crate::model::upload::UploadState`], JSON).
pub(crate) fn upload_state(id: &UploadId) -> String {
    format!("{UPLOADS_PREFIX}{id}/state")
}

/// A session's bytes as one growing object, on backends that can append.
pub(crate) fn upload_data(id: &UploadId) -> String {
    format!("{UPLOADS_PREFIX}{id}/data")
}

/// A chunk of upload session `id` received at `offset`. The offset is
/// zero-padded so keys list in offset order; `nonce` makes each write's
/// key unique, so a racing request never overwrites a chunk the state
/// names.
pub(crate) fn upload_chunk(id: &UploadId, offset: u64, nonce: &str) -> String {
    format!("{UPLOADS_PREFIX}{id}/chunk-{offset:020}-{nonce}")
}

/// Where in the blob a spool object's bytes start: 0 for [`upload_data`],
/// the offset in the key of an [`upload_chunk`]; `None` for other keys.
pub(crate) fn spool_part_offset(key: &str) -> Option<u64> {
    let (_, name) = key.strip_prefix(UPLOADS_PREFIX)?.split_once('/')?;
    if name == "data" {
        return Some(0);
    }
    let (offset, _nonce) = name.strip_prefix("chunk-")?.split_once('-')?;
    offset.parse().ok()
}

#[cfg(test)]
mod tests {
    // On wasm32, `#[test]` is wasm-bindgen-test's (run in Node by
    // wasm-bindgen-test-runner); natively it is the built-in one.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn upload_and_tag_keys_round_trip() {
        let id = UploadId::parse("0123456789abcdef0123456789abcdef").unwrap();
        for key in [
            upload_state(&id),
            upload_data(&id),
            upload_chunk(&id, 7, "n"),
        ] {
            assert_eq!(upload_of(&key), Some(id.clone()), "{key}");
        }
        assert_eq!(spool_part_offset(&upload_data(&id)), Some(0));
        assert_eq!(
            spool_part_offset(&upload_chunk(&id, 9 << 20, "n")),
            Some(9 << 20)
        );
        assert_eq!(spool_part_offset(&upload_state(&id)), None);
        assert_eq!(upload_of("uploads/not-an-id/state"), None);
        assert_eq!(upload_of("uploads/0123456789abcdef0123456789abcdef"), None);
        let n = RepositoryName::parse("a/b").unwrap();
        let t = Tag::parse("v1.0").unwrap();
        assert_eq!(tag_of(&n, &tag(&n, &t)), Some(t));
        assert_eq!(tag_of(&n, "repositories/a/b/_manifests/tags/x/y"), None);
        assert_eq!(tag_of(&n, "repositories/a/c/_manifests/tags/v1"), None);
    }

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
    fn keys_read_back_round_trip() {
        let d = Digest::sha256(b"x");
        let n = RepositoryName::parse("docker.io/library/alpine").unwrap();
        assert_eq!(blob_digest(&blob(&d)), Some(d.clone()));
        assert_eq!(access_digest(&access(&d)), Some(d.clone()));
        assert_eq!(
            repository_key(&layer_link(&n, &d)),
            Some(RepositoryKey::Layer(n.clone(), d.clone()))
        );
        assert_eq!(
            repository_key(&manifest_revision(&n, &d)),
            Some(RepositoryKey::Manifest(n.clone(), d.clone()))
        );
        let t = Tag::parse("v1").unwrap();
        assert_eq!(repository_key(&tag(&n, &t)), None);
        assert_eq!(repository_key(&tag_cache(&n, &t)), None);
        assert_eq!(blob_digest("blobs/sha256/zz/abc"), None);
        assert_eq!(
            blob_digest(&format!("blobs/sha256/00/{}", d.hex())),
            None,
            "fan-out must match the digest"
        );
        assert_eq!(access_digest("access/sha256"), None);
    }

    #[test]
    fn repository_entries_round_trip() {
        let n = RepositoryName::parse("team/app").unwrap();
        let d = Digest::sha256(b"x");
        let s = Digest::sha256(b"subject");
        let t = Tag::parse("v1.0").unwrap();
        let cases = [
            (layer_link(&n, &d), Entry::Layer(d.clone())),
            (manifest_revision(&n, &d), Entry::Revision(d.clone())),
            (tag(&n, &t), Entry::Tag(t.clone())),
            (tag_pull(&n, &t), Entry::Pull(t.clone())),
            (referrer(&n, &s, &d), Entry::Referrer(s.clone(), d.clone())),
            (tag_cache(&n, &t), Entry::Other),
            (fill_lease(&n, &d), Entry::Other),
        ];
        for (key, entry) in cases {
            assert_eq!(repository_entry(&key), Some((n.clone(), entry)), "{key}");
        }
        assert_eq!(repository_entry("repositories/team/app"), None);
        assert_eq!(repository_entry("blobs/sha256/ab/cd"), None);
        assert_eq!(
            repository_entry("repositories/team/app/_layers/sha256/zz"),
            Some((n, Entry::Other)),
            "a damaged key is no link"
        );
    }

    #[test]
    fn blob_keys_fan_out() {
        let d = Digest::sha256(b"x");
        let k = blob(&d);
        assert!(k.starts_with(&format!("blobs/sha256/{}/", &d.hex()[..2])));
        assert!(k.ends_with(d.hex()));
    }
}
