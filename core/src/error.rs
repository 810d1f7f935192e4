//! OCI error codes and the error type every registry operation returns.

use std::sync::Arc;

use http::StatusCode;

use crate::io::storage::StorageError;
use crate::model::digest::{DigestError, DigestMismatch, SizeMismatch};
use crate::model::reference::{NameError, ReferenceError, TagError};

/// What registry operations return.
pub(crate) type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The error codes of the distribution spec, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN`: blob unknown to the registry (404).
    BlobUnknown,
    /// `BLOB_UPLOAD_INVALID`: blob upload invalid (400).
    BlobUploadInvalid,
    /// `BLOB_UPLOAD_UNKNOWN`: blob upload unknown to the registry (404).
    BlobUploadUnknown,
    /// `DIGEST_INVALID`: the digest is malformed or did not match the
    /// uploaded content (400).
    DigestInvalid,
    /// `MANIFEST_BLOB_UNKNOWN`: the manifest references a manifest or blob
    /// unknown to the registry (400).
    ManifestBlobUnknown,
    /// `MANIFEST_INVALID`: manifest invalid (400).
    ManifestInvalid,
    /// `MANIFEST_UNKNOWN`: manifest unknown to the registry (404).
    ManifestUnknown,
    /// `NAME_INVALID`: invalid repository name (400).
    NameInvalid,
    /// `NAME_UNKNOWN`: repository name not known to the registry (404).
    NameUnknown,
    /// `SIZE_INVALID`: the given length did not match the content length
    /// (400).
    SizeInvalid,
    /// distribution's code for a malformed tag (not in the OCI list).
    TagInvalid,
    /// `UNAUTHORIZED`: authentication required (401).
    Unauthorized,
    /// `DENIED`: access to the resource is denied (403).
    Denied,
    /// `UNSUPPORTED`: the operation is unsupported (405).
    Unsupported,
    /// `TOOMANYREQUESTS`: too many requests (429).
    TooManyRequests,
    /// Not in the spec's list but used by distribution for bad `n`/`last`.
    PaginationNumberInvalid,
    /// A range that cannot be satisfied (416). The spec has no code for it;
    /// distribution answers these with `BLOB_UPLOAD_INVALID` for uploads.
    RangeInvalid,
    /// Storage or another internal component failed (500); never caused by
    /// client input.
    Internal,
    /// The upstream or storage is unavailable (503).
    Unavailable,
}

impl ErrorCode {
    /// The code as it appears in an error response body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Internal => "UNKNOWN",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status the code is answered with unless the error says
    /// otherwise ([`RegistryError::with_status`]).
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid
            | ErrorCode::TagInvalid
            | ErrorCode::PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A failed registry operation: what the client is told.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
#[non_exhaustive]
pub struct RegistryError {
    /// The distribution-spec error code.
    pub code: ErrorCode,
    /// The HTTP status; defaults to the code's, some cases differ (a 404 for
    /// an unknown route carries `UNSUPPORTED`, 413 for oversized bodies).
    pub status: StatusCode,
    /// For the client: the `message` of the error body.
    pub message: String,
    /// Extra headers for the error response (e.g. `Range` on a 416 upload).
    pub headers: Vec<(http::HeaderName, String)>,
}

impl RegistryError {
    /// An error with `code`'s own status and no extra headers.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RegistryError {
            code,
            status: code.status(),
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Answer with `status` instead of the code's.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Add a header to the error response.
    pub fn with_header(mut self, name: http::HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// An [`ErrorCode::Internal`] error (500): a failure that is not the
    /// client's.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The JSON body of the distribution spec's error response.
    pub fn body_json(&self) -> String {
        serde_json::json!({
            "errors": [{
                "code": self.code.as_str(),
                "message": self.message,
                "detail": null,
            }]
        })
        .to_string()
    }
}

impl From<NameError> for RegistryError {
    fn from(e: NameError) -> Self {
        RegistryError::new(ErrorCode::NameInvalid, e.to_string())
    }
}

impl From<TagError> for RegistryError {
    fn from(e: TagError) -> Self {
        RegistryError::new(ErrorCode::TagInvalid, e.to_string())
    }
}

impl From<DigestError> for RegistryError {
    fn from(e: DigestError) -> Self {
        RegistryError::new(ErrorCode::DigestInvalid, e.to_string())
    }
}

impl From<ReferenceError> for RegistryError {
    fn from(e: ReferenceError) -> Self {
        match e {
            ReferenceError::Tag(t) => t.into(),
            ReferenceError::Digest(d) => d.into(),
        }
    }
}

impl From<StorageError> for RegistryError {
    fn from(e: StorageError) -> Self {
        if storage_is_full(&e) {
            // Not a fault of kura's: the operator must free space (or the
            // cache evict), and the client may retry then.
            return RegistryError::new(ErrorCode::Unavailable, "storage is full")
                .with_status(StatusCode::INSUFFICIENT_STORAGE);
        }
        RegistryError::new(ErrorCode::Internal, format!("storage: {e}"))
    }
}

/// Whether the backend failed for want of space: its error is an
/// `io::Error` of kind `StorageFull` (ENOSPC) or `QuotaExceeded` (EDQUOT),
/// as a backend on a file system passes it on.
fn storage_is_full(e: &StorageError) -> bool {
    let StorageError::Backend(source) = e else {
        return false;
    };
    source.downcast_ref::<std::io::Error>().is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    })
}

/// `e` and every error behind it, `: `-separated: what an operator's log
/// wants (a client never sees this).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        // Some errors repeat their source's words in their own.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

/// The error behind another (a backend's, a client's), kept whole:
/// [`std::error::Error::source`] yields that error itself, so a caller can
/// downcast it to its own type. Shared, so errors that several waiters
/// receive stay cheap to clone.
///
/// Deliberately not an `Error` itself: an `Arc<dyn Error>` is one, and
/// would stand in the chain in place of what it holds.
#[derive(Debug, Clone)]
pub struct ErrorSource(Arc<dyn std::error::Error + Send + Sync>);

impl ErrorSource {
    /// Keep `e`: an error, or a message.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ErrorSource(Arc::from(e.into()))
    }
}

impl std::ops::Deref for ErrorSource {
    type Target = dyn std::error::Error + Send + Sync;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Why an upstream gave no usable answer, or an upstream could not be
/// set up.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The upstream answered 404.
    #[error("not found upstream")]
    NotFound,
    /// The upstream refused access (401 or 403, the status given).
    #[error("upstream denied access ({0})")]
    Denied(u16),
    /// The upstream is down, overloaded or unreachable (after retries).
    #[error("upstream unavailable: {reason}")]
    Unavailable {
        /// What happened, for the operator's log.
        reason: String,
        /// The client's or the body's error, when there was one.
        #[source]
        source: Option<ErrorSource>,
    },
    /// Any other unexpected status.
    #[error("upstream answered {0}")]
    Status(u16),
    /// The upstream's answer (a token response, an auth challenge, a
    /// redirect) made no sense, or its configuration is invalid.
    #[error("upstream sent an invalid response: {0}")]
    Invalid(String),
    /// The upstream asked for a pause (`429` with `Retry-After`); nothing is
    /// sent to it until `retry_after_ms` from now.
    #[error("upstream asked to wait {retry_after_ms} ms")]
    Throttled {
        /// What is left of the pause, in ms from now.
        retry_after_ms: u64,
    },
}

impl UpstreamError {
    /// [`UpstreamError::Unavailable`] for `reason`, with no error behind it.
    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        UpstreamError::Unavailable {
            reason: reason.into(),
            source: None,
        }
    }

    /// [`UpstreamError::Unavailable`] caused by `source`.
    pub(crate) fn unavailable_from(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        UpstreamError::Unavailable {
            reason: reason.into(),
            source: Some(ErrorSource::new(source)),
        }
    }

    /// Whether cached content may be served instead (stale-if-error).
    pub fn allows_stale(&self) -> bool {
        matches!(
            self,
            UpstreamError::Unavailable { .. }
                | UpstreamError::Status(_)
                | UpstreamError::Denied(_)
                | UpstreamError::Throttled { .. }
        )
    }
}

impl RegistryError {
    /// An upstream failure as the client sees it: what kind of failure it
    /// was, never the upstream's words or addresses (those are for the
    /// operator's log). `unknown` is the code for a 404
    /// (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, ...).
    pub(crate) fn from_upstream(e: &UpstreamError, unknown: ErrorCode) -> Self {
        match e {
            UpstreamError::NotFound => RegistryError::new(unknown, "not found upstream"),
            UpstreamError::Denied(s) => RegistryError::new(
                ErrorCode::Unavailable,
                format!("the upstream denied access ({s})"),
            ),
            UpstreamError::Unavailable { .. } => {
                RegistryError::new(ErrorCode::Unavailable, "the upstream is unavailable")
            }
            UpstreamError::Status(s) => {
                RegistryError::new(ErrorCode::Unavailable, format!("the upstream answered {s}"))
            }
            UpstreamError::Invalid(_) => RegistryError::new(
                ErrorCode::Unavailable,
                "the upstream sent an invalid response",
            )
            .with_status(StatusCode::BAD_GATEWAY),
            // Pass the upstream's pause on: the client should not retry sooner.
            UpstreamError::Throttled { retry_after_ms } => {
                RegistryError::new(ErrorCode::Unavailable, "the upstream asked for a pause")
                    .with_header(
                        http::header::RETRY_AFTER,
                        retry_after_ms.div_ceil(1000).max(1).to_string(),
                    )
            }
        }
    }

    /// A failed write of a client's bytes: bad bytes are the client's
    /// error (a digest or size that does not match, a body that broke off),
    /// anything else is ours.
    pub(crate) fn from_upload(e: StorageError) -> Self {
        match e {
            StorageError::Input(io) => {
                // The verifying stream's errors travel inside io::Error,
                // the only error a byte stream carries.
                if let Some(inner) = io.get_ref() {
                    if let Some(m) = inner.downcast_ref::<DigestMismatch>() {
                        return RegistryError::new(ErrorCode::DigestInvalid, m.to_string());
                    }
                    if let Some(m) = inner.downcast_ref::<SizeMismatch>() {
                        return RegistryError::new(ErrorCode::SizeInvalid, m.to_string());
                    }
                }
                RegistryError::new(
                    ErrorCode::BlobUploadInvalid,
                    format!("reading upload body: {io}"),
                )
            }
            other => other.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::io::fetch::FetchError;

    #[test]
    fn an_upstream_failure_keeps_its_cause_for_the_log_but_not_for_the_client() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "port 9 refused");
        let e = UpstreamError::unavailable_from("no response", FetchError::connect(refused));
        let log = chain(&e);
        assert!(log.contains("no response"), "{log}");
        assert!(log.contains("connection failed"), "{log}");
        assert!(log.contains("port 9 refused"), "{log}");
        // The client's own error is in the chain, as itself.
        let mut next = std::error::Error::source(&e);
        let mut refused = None;
        while let Some(s) = next {
            refused = refused.or(s.downcast_ref::<std::io::Error>().map(|io| io.kind()));
            next = s.source();
        }
        assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused));
        let client = RegistryError::from_upstream(&e, ErrorCode::BlobUnknown);
        assert_eq!(client.code, ErrorCode::Unavailable);
        assert!(!client.message.contains("port 9"), "{}", client.message);
    }

    #[test]
    fn a_storage_failure_keeps_the_backend_error() {
        let e = StorageError::backend(std::io::Error::other("disk on fire"));
        // The error itself, not its words: a caller can look at its kind.
        let source = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(|io| (io.kind(), io.to_string()));
        assert_eq!(
            source,
            Some((std::io::ErrorKind::Other, "disk on fire".to_owned()))
        );
    }

    #[test]
    fn a_bad_upload_is_the_clients_error() {
        let mismatch = DigestMismatch {
            expected: crate::Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap(),
            actual: crate::Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap(),
        };
        let e = StorageError::Input(std::io::Error::other(mismatch));
        assert_eq!(RegistryError::from_upload(e).code, ErrorCode::DigestInvalid);
        let e = StorageError::backend("full");
        assert_eq!(RegistryError::from_upload(e).code, ErrorCode::Internal);
    }

    #[test]
    fn a_full_store_is_507_not_500() {
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let e = RegistryError::from_upload(StorageError::backend(full));
        assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(
            e.body_json().contains("storage is full"),
            "{}",
            e.body_json()
        );
        let other = StorageError::backend(std::io::Error::other("disk on fire"));
        assert_eq!(
            RegistryError::from(other).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
