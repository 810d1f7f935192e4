//! OCI error codes and the error type every registry operation returns.

use http::StatusCode;

use crate::io::storage::StorageError;
use crate::model::digest::DigestError;
use crate::model::reference::{NameError, ReferenceError, TagError};

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
        RegistryError::new(ErrorCode::Internal, format!("storage: {e}"))
    }
}
