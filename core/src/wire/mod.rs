//! The `/v2/` HTTP API: routing paths into typed routes, query and header
//! parsing, and the headers every response carries.
//!
//! Framework-agnostic: it works on `http` crate types, so a shell only
//! converts its own request and response types.

pub(crate) mod response;

use std::ops::Range;

use http::{HeaderMap, Method, Uri};

use crate::error::{ErrorCode, RegistryError};
use crate::model::digest::Digest;
use crate::model::reference::{Reference, RepositoryName};
pub use crate::model::upload::UploadId;

/// Names the registry API version; clients probe `/v2/` for it.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
/// The value of [`API_VERSION_HEADER`]: the Docker Registry HTTP API V2,
/// which the OCI distribution spec carries on.
pub const API_VERSION: &str = "registry/2.0";
/// The digest of the content a manifest or blob response (or a push) is
/// about.
pub const CONTENT_DIGEST_HEADER: &str = "docker-content-digest";
/// The id of the upload session a blob upload response belongs to.
pub const UPLOAD_UUID_HEADER: &str = "docker-upload-uuid";
/// The digest of a pushed manifest's `subject`: tells the client this
/// registry indexes referrers, so it need not maintain the fallback
/// referrers tag itself.
pub const OCI_SUBJECT_HEADER: &str = "oci-subject";
/// The tags a manifest push by digest applied (`?tag=` parameters).
pub const OCI_TAG_HEADER: &str = "oci-tag";
/// Lists the filters a referrers response applied (`artifactType`).
pub const OCI_FILTERS_APPLIED_HEADER: &str = "oci-filters-applied";

/// What a `/v2/` path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepositoryName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepositoryName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepositoryName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    Uploads(RepositoryName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepositoryName, UploadId),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepositoryName, Digest),
}

impl Route {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(..) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::Uploads(..) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }

    /// The methods the route answers (the `Allow` of a 405).
    pub fn allowed_methods(&self) -> &'static str {
        match self {
            Route::Base | Route::Catalog | Route::Tags(..) | Route::Referrers(..) => "GET, HEAD",
            Route::Manifest(..) => "GET, HEAD, PUT, DELETE",
            Route::Blob(..) => "GET, HEAD, DELETE",
            Route::Uploads(..) => "POST",
            Route::Upload(..) => "GET, PATCH, PUT, DELETE",
        }
    }

    /// The repository the route addresses, if any.
    pub fn name(&self) -> Option<&RepositoryName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::Uploads(n)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }

    /// Parse a request path. `Ok(None)` for paths outside the API (404);
    /// `Err` for API paths with an invalid name, tag or digest.
    pub fn parse(path: &str) -> Result<Option<Route>, RegistryError> {
        let Some(rest) = path.strip_prefix("/v2") else {
            return Ok(None);
        };
        if rest.is_empty() || rest == "/" {
            return Ok(Some(Route::Base));
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Ok(None);
        };
        if rest == "_catalog" {
            return Ok(Some(Route::Catalog));
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let name = |upto: usize| RepositoryName::parse(&segs[..upto].join("/"));
        if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
            return Ok(Some(Route::Tags(name(n - 2)?)));
        }
        // `/blobs/uploads/` and `/blobs/uploads` start a session; a last
        // segment with ':' is a digest, so `<repo>/blobs/uploads` could be a
        // repository named "…/blobs" — ids never contain ':'.
        if n >= 3
            && segs[n - 3] == "blobs"
            && segs[n - 2] == "uploads"
            && !segs[n - 1].contains(':')
        {
            let name = name(n - 3)?;
            if segs[n - 1].is_empty() {
                return Ok(Some(Route::Uploads(name)));
            }
            let id = UploadId::parse(segs[n - 1]).ok_or_else(|| {
                RegistryError::new(ErrorCode::BlobUploadUnknown, "unknown upload id")
            })?;
            return Ok(Some(Route::Upload(name, id)));
        }
        if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
            return Ok(Some(Route::Uploads(name(n - 2)?)));
        }
        if n >= 3 {
            let last = percent_decode(segs[n - 1]).ok_or_else(|| {
                RegistryError::new(
                    ErrorCode::DigestInvalid,
                    "bad percent-encoding in reference",
                )
            })?;
            match segs[n - 2] {
                "manifests" => {
                    let name = name(n - 2)?;
                    return Ok(Some(Route::Manifest(name, Reference::parse(&last)?)));
                }
                "blobs" => {
                    let name = name(n - 2)?;
                    return Ok(Some(Route::Blob(name, Digest::parse(&last)?)));
                }
                "referrers" => {
                    let name = name(n - 2)?;
                    return Ok(Some(Route::Referrers(name, Digest::parse(&last)?)));
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

/// Route a request: [`Route::parse`], with one rule that depends on the
/// method. A `GET` or `HEAD` of a manifest whose reference is neither a
/// valid tag nor a valid digest asks for something that cannot exist, so it
/// is answered like any missing manifest: 404 `MANIFEST_UNKNOWN` (the
/// distribution-spec conformance suite probes for missing manifests this
/// way). A `PUT` or `DELETE` of such a reference keeps the 400 with the tag
/// or digest code: there the client sent something wrong.
pub fn route(method: &Method, path: &str) -> Result<Option<Route>, RegistryError> {
    match Route::parse(path) {
        Err(e)
            if (*method == Method::GET || *method == Method::HEAD)
                && matches!(e.code, ErrorCode::TagInvalid | ErrorCode::DigestInvalid) =>
        {
            let segs: Vec<&str> = path.split('/').collect();
            let n = segs.len();
            // `/v2/<name>/manifests/<reference>`: the name must be valid
            // for the request to be a manifest read at all.
            let is_manifest = n >= 5
                && segs[n - 2] == "manifests"
                && RepositoryName::parse(&segs[2..n - 2].join("/")).is_ok();
            if is_manifest {
                Err(RegistryError::new(
                    ErrorCode::ManifestUnknown,
                    format!(
                        "manifest reference {:?} is neither a tag nor a digest",
                        segs[n - 1]
                    ),
                ))
            } else {
                Err(e)
            }
        }
        other => other,
    }
}

/// What a request needs to be allowed to do, for the host's access control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read: `GET` and `HEAD`.
    Pull,
    /// Write: pushes, uploads, and cancelling an upload.
    Push,
    /// Delete a manifest, tag or blob.
    Delete,
}

/// The access a request needs: reads are [`Access::Pull`], deleting an
/// upload session is part of a push, any other `DELETE` is
/// [`Access::Delete`], and everything else [`Access::Push`]. `route` is
/// `None` for a path that did not parse; the method alone decides then.
pub fn required_access(method: &Method, route: Option<&Route>) -> Access {
    match (method, route) {
        (&Method::GET | &Method::HEAD, _) => Access::Pull,
        (&Method::DELETE, Some(Route::Upload(..))) => Access::Push,
        (&Method::DELETE, _) => Access::Delete,
        _ => Access::Push,
    }
}

/// The value of query parameter `key`, percent-decoded. `Some(Err)` when it
/// is present but not valid UTF-8 after decoding.
pub(crate) fn query_param(uri: &Uri, key: &str) -> Option<Result<String, RegistryError>> {
    let query = uri.query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k).as_deref() == Some(key)).then(|| {
            percent_decode(&v.replace('+', " ")).ok_or_else(|| {
                // Answer with the code of what the parameter carries.
                let code = match key {
                    "digest" | "mount" => ErrorCode::DigestInvalid,
                    "from" | "ns" => ErrorCode::NameInvalid,
                    "n" | "last" => ErrorCode::PaginationNumberInvalid,
                    _ => ErrorCode::Unsupported,
                };
                RegistryError::new(code, format!("bad encoding of query parameter {key}"))
                    .with_status(http::StatusCode::BAD_REQUEST)
            })
        })
    })
}

/// Every value of query parameter `key` (`?tag=a&tag=b`), percent-decoded
/// (`+` is a space); an error for a value that is not UTF-8 once decoded.
pub fn query_params(uri: &Uri, key: &str) -> Result<Vec<String>, RegistryError> {
    let Some(query) = uri.query() else {
        return Ok(Vec::new());
    };
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k).as_deref() == Some(key)).then_some(v)
        })
        .map(|v| {
            percent_decode(&v.replace('+', " ")).ok_or_else(|| {
                RegistryError::new(
                    ErrorCode::Unsupported,
                    format!("bad encoding of query parameter {key}"),
                )
                .with_status(http::StatusCode::BAD_REQUEST)
            })
        })
        .collect()
}

/// Decode `%XX` escapes; `None` on bad escapes or non-UTF-8 results.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits exactly: `u8::from_str_radix` would also take
            // a sign (`%+A`).
            let digit = |j: usize| b.get(j).and_then(|&c| char::from(c).to_digit(16));
            let (hi, lo) = (digit(i + 1)?, digit(i + 2)?);
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encode a query value (for `Link` headers).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `Range` header that is malformed or does not overlap the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("range not satisfiable")]
pub(crate) struct BadRange;

/// Whether a `Range` header asks for one byte range. Other units and
/// multiple ranges are valid HTTP that a server may ignore (RFC 9110
/// §14.2): the whole blob is sent instead.
pub(crate) fn single_byte_range(value: &str) -> bool {
    value.trim().starts_with("bytes=") && !value.contains(',')
}

/// Parse a `Range: bytes=…` header against an object of `size` bytes.
///
/// Returns the half-open byte range to serve. Only single ranges are
/// supported (`a-b`, `a-`, `-n`); anything else, or a range that does not
/// overlap the object, is an error the caller answers with 416.
pub(crate) fn parse_range(value: &str, size: u64) -> Result<Range<u64>, BadRange> {
    let spec = value.trim().strip_prefix("bytes=").ok_or(BadRange)?.trim();
    if spec.contains(',') {
        return Err(BadRange);
    }
    let (a, b) = spec.split_once('-').ok_or(BadRange)?;
    let num = |s: &str| -> Result<u64, BadRange> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(BadRange);
        }
        s.parse().map_err(|_| BadRange)
    };
    let range = if a.is_empty() {
        let n = num(b)?;
        if n == 0 {
            return Err(BadRange);
        }
        size.saturating_sub(n)..size
    } else {
        let start = num(a)?;
        let end = if b.is_empty() {
            size
        } else {
            num(b)?.saturating_add(1).min(size)
        };
        if end < start {
            return Err(BadRange);
        }
        start..end
    };
    if range.start >= size || range.is_empty() {
        return Err(BadRange);
    }
    Ok(range)
}

/// Parse a chunk's `Content-Range`: distribution's `<start>-<end>`, also
/// accepting the RFC form `bytes <start>-<end>/<total|*>`. Returns the
/// inclusive start and end.
pub(crate) fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes ")
        .or_else(|| v.strip_prefix("bytes="))
        .unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (start, end) = (num(a)?, num(b)?);
    (end >= start).then_some((start, end))
}

/// A header that must be readable if present: `Err` when it is not visible
/// ASCII (rather than silently ignoring it).
pub(crate) fn header_strict<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, RegistryError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            RegistryError::new(
                ErrorCode::BlobUploadInvalid,
                format!("{name} header is not ASCII"),
            )
        }),
    }
}

/// A header as a string, if present and visible ASCII.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    // On wasm32, `#[test]` is wasm-bindgen-test's (run in Node by
    // wasm-bindgen-test-runner); natively it is the built-in one.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn r(p: &str) -> Option<Route> {
        Route::parse(p).unwrap()
    }

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    #[test]
    fn routes() {
        let d = Digest::sha256(b"x");
        assert_eq!(r("/v2/"), Some(Route::Base));
        assert_eq!(r("/v2"), Some(Route::Base));
        assert_eq!(r("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(r("/v2/a/b/tags/list"), Some(Route::Tags(name("a/b"))));
        assert_eq!(
            r("/v2/a/manifests/latest"),
            Some(Route::Manifest(
                name("a"),
                Reference::parse("latest").unwrap()
            ))
        );
        assert_eq!(
            r(&format!("/v2/a/b/c/blobs/{d}")),
            Some(Route::Blob(name("a/b/c"), d.clone()))
        );
        let enc = d.to_string().replace(':', "%3A");
        assert_eq!(
            r(&format!("/v2/a/blobs/{enc}")),
            Some(Route::Blob(name("a"), d.clone()))
        );
        assert_eq!(r("/v2/a/blobs/uploads/"), Some(Route::Uploads(name("a"))));
        assert_eq!(r("/v2/a/blobs/uploads"), Some(Route::Uploads(name("a"))));
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            r(&format!("/v2/a/blobs/uploads/{id}")),
            Some(Route::Upload(name("a"), UploadId::parse(id).unwrap()))
        );
        // A repository whose last component is "blobs" or "manifests".
        assert_eq!(
            r(&format!("/v2/x/blobs/blobs/{d}")),
            Some(Route::Blob(name("x/blobs"), d.clone()))
        );
        assert_eq!(
            r("/v2/manifests/manifests/v1"),
            Some(Route::Manifest(
                name("manifests"),
                Reference::parse("v1").unwrap()
            ))
        );
        assert_eq!(
            r(&format!("/v2/a/referrers/{d}")),
            Some(Route::Referrers(name("a"), d))
        );
        assert_eq!(r("/v3/"), None);
        assert_eq!(r("/v2x"), None);
        assert_eq!(r("/v2/a/unknown/x"), None);
        assert_eq!(r("/"), None);
    }

    #[test]
    fn route_errors() {
        let code = |p: &str| Route::parse(p).unwrap_err().code;
        assert_eq!(code("/v2/A/manifests/latest"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/../manifests/latest"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a/../b/manifests/latest"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2//a/manifests/latest"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a/manifests/-bad"), ErrorCode::TagInvalid);
        assert_eq!(code("/v2/a/manifests/sha256:zz"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/latest"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/%zz"), ErrorCode::DigestInvalid);
        assert_eq!(
            code("/v2/a/blobs/uploads/..%2F.."),
            ErrorCode::BlobUploadUnknown
        );
        assert_eq!(
            code(&format!("/v2/{}/tags/list", "a".repeat(300))),
            ErrorCode::NameInvalid
        );
    }

    #[test]
    fn unreadable_manifest_references_are_unknown_manifests() {
        let code = |m: Method, p: &str| route(&m, p).unwrap_err().code;
        for p in [
            "/v2/a/b/manifests/.INVALID_MANIFEST_NAME",
            "/v2/a/manifests/-bad",
            "/v2/a/manifests/sha256:zz",
        ] {
            assert_eq!(code(Method::GET, p), ErrorCode::ManifestUnknown, "{p}");
            assert_eq!(code(Method::HEAD, p), ErrorCode::ManifestUnknown, "{p}");
        }
        assert_eq!(
            code(Method::PUT, "/v2/a/manifests/-bad"),
            ErrorCode::TagInvalid
        );
        assert_eq!(
            code(Method::DELETE, "/v2/a/manifests/sha256:zz"),
            ErrorCode::DigestInvalid
        );
        // Other invalid parts keep their codes.
        assert_eq!(
            code(Method::GET, "/v2/A/manifests/.x"),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a/blobs/latest"),
            ErrorCode::DigestInvalid
        );
        assert!(matches!(
            route(&Method::GET, "/v2/a/manifests/v1"),
            Ok(Some(Route::Manifest(..)))
        ));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Ok(90..100));
        assert_eq!(parse_range("bytes=90-1000", 100), Ok(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Ok(90..100));
        assert_eq!(parse_range("bytes=-1000", 100), Ok(0..100));
        for bad in [
            "bytes=100-",
            "bytes=5-4",
            "bytes=0-1,3-4",
            "bytes=-0",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(parse_range(bad, 100), Err(BadRange), "{bad}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Err(BadRange));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("5-4"), None);
        assert_eq!(parse_content_range("x-1"), None);
        assert_eq!(parse_content_range("-1"), None);
    }

    #[test]
    fn queries() {
        let uri: Uri = "/v2/a/tags/list?n=10&last=a%2Bb&x".parse().unwrap();
        assert_eq!(query_param(&uri, "n").unwrap().unwrap(), "10");
        assert_eq!(query_param(&uri, "last").unwrap().unwrap(), "a+b");
        assert_eq!(query_param(&uri, "x").unwrap().unwrap(), "");
        assert!(query_param(&uri, "y").is_none());
        assert_eq!(percent_encode("a+b/c"), "a%2Bb%2Fc");
    }

    #[test]
    fn percent_escapes_are_two_hex_digits() {
        assert_eq!(percent_decode("a%2Fb%3a").as_deref(), Some("a/b:"));
        // Found by the `route` fuzz target: `%+D` decoded to byte 0x0d.
        for bad in ["%+D", "%+0", "%-1", "% 1", "%1", "%", "%zz", "%1g", "x%+Dy"] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
    }
}
