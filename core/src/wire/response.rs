//! Building responses: status, OCI error bodies, the headers clients rely
//! on.

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG};
use http::StatusCode;

use crate::error::Result;
use crate::error::{ErrorCode, RegistryError};
use crate::io::body::Body;
use crate::model::digest::Digest;
use crate::wire;

/// A response from the registry; `B` is the storage backend's body type,
/// so stored bytes reach the host's HTTP layer untouched.
pub type Response<B> = http::Response<Body<B>>;

/// The byte range to serve for a `Range` header, or the 416 to answer.
pub(crate) fn satisfiable_range(value: &str, size: u64) -> Result<std::ops::Range<u64>> {
    wire::parse_range(value, size).map_err(|_| {
        RegistryError::new(
            ErrorCode::RangeInvalid,
            format!("range {value:?} not satisfiable for {size} bytes"),
        )
        .with_header(CONTENT_RANGE, format!("bytes */{size}"))
    })
}

/// A blob response with the headers clients rely on.
pub(crate) fn blob_response<B>(
    status: StatusCode,
    body: Body<B>,
    digest: &Digest,
    len: Option<u64>,
    content_range: Option<String>,
) -> Response<B> {
    let mut resp = response(status, body);
    let h = resp.headers_mut();
    set(h, CONTENT_TYPE, "application/octet-stream");
    if let Some(len) = len {
        set(h, CONTENT_LENGTH, &len.to_string());
    }
    set(h, wire::CONTENT_DIGEST_HEADER, &digest.to_string());
    set(h, ACCEPT_RANGES, "bytes");
    set(h, ETAG, &format!("\"{digest}\""));
    if let Some(cr) = content_range {
        set(h, CONTENT_RANGE, &cr);
    }
    resp
}

pub(crate) fn response<B>(status: StatusCode, body: Body<B>) -> Response<B> {
    let mut r = http::Response::new(body);
    *r.status_mut() = status;
    r
}

pub(crate) fn json_response<B>(status: StatusCode, bytes: Bytes) -> Response<B> {
    let len = bytes.len();
    let mut r = response(status, Body::Full(bytes));
    set(r.headers_mut(), CONTENT_TYPE, "application/json");
    set(r.headers_mut(), CONTENT_LENGTH, &len.to_string());
    r
}

pub(crate) fn accepted<B>() -> Response<B> {
    let mut r = response(StatusCode::ACCEPTED, Body::Empty);
    set(r.headers_mut(), CONTENT_LENGTH, "0");
    r
}

/// The OCI error response for `e`.
pub fn error_response<B>(e: &RegistryError) -> Response<B> {
    let mut r = json_response(e.status, Bytes::from(e.body_json()));
    for (name, value) in &e.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().insert(name.clone(), v);
        }
    }
    r.headers_mut().insert(
        wire::API_VERSION_HEADER,
        HeaderValue::from_static(wire::API_VERSION),
    );
    r
}

pub(crate) fn set<K: http::header::IntoHeaderName>(h: &mut http::HeaderMap, name: K, value: &str) {
    // Every value set here is built from validated parts (digests, names,
    // numbers); a value that still fails is dropped rather than panicking.
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}
