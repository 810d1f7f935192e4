//! Entry points for the fuzz targets in `fuzz/` (`cargo xtask fuzz`): the
//! crate-private parsers, each behind one thin function. Compiled only with
//! the `fuzzing` feature; not an API, and it may change with any commit.
//!
//! The functions return plain values rather than the internal types, so the
//! types themselves stay private.

use std::collections::HashMap;
use std::ops::Range;

use http::Uri;

use crate::error::RegistryError;
use crate::mirror::upstream::{realm_trust, Challenge, RealmTrust};
use crate::model::upload::UploadState;
use crate::wire;

/// `wire::parse_range`: the half-open range a `Range` header asks for in an
/// object of `size` bytes, `None` where the registry answers 416.
pub fn parse_range(value: &str, size: u64) -> Option<Range<u64>> {
    wire::parse_range(value, size).ok()
}

/// `wire::single_byte_range`: whether the registry honours the header at
/// all (other units and multiple ranges get the whole blob).
pub fn single_byte_range(value: &str) -> bool {
    wire::single_byte_range(value)
}

/// `wire::parse_content_range`: a chunk's inclusive start and end.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    wire::parse_content_range(value)
}

/// `wire::percent_decode`.
pub fn percent_decode(s: &str) -> Option<String> {
    wire::percent_decode(s)
}

/// `wire::percent_encode`.
pub fn percent_encode(s: &str) -> String {
    wire::percent_encode(s)
}

/// `wire::query_param`.
pub fn query_param(uri: &Uri, key: &str) -> Option<Result<String, RegistryError>> {
    wire::query_param(uri, key)
}

/// `wire::query_params`.
pub fn query_params(uri: &Uri, key: &str) -> Result<Vec<String>, RegistryError> {
    wire::query_params(uri, key)
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub enum ParsedChallenge {
    /// `Bearer`, with its parameters (keys lower-cased).
    Bearer(HashMap<String, String>),
    /// `Basic`.
    Basic,
    /// Any other scheme.
    Other,
}

/// `Challenge::parse`.
pub fn parse_challenge(value: &str) -> ParsedChallenge {
    match Challenge::parse(value) {
        Challenge::Bearer(p) => ParsedChallenge::Bearer(p),
        Challenge::Basic => ParsedChallenge::Basic,
        Challenge::Other => ParsedChallenge::Other,
    }
}

/// `realm_trust`: `Ok(())` when the realm may receive the upstream's
/// credentials, else why not.
pub fn realm_trusted(upstream: &Uri, realm: &Uri, extra: &[String]) -> Result<(), &'static str> {
    match realm_trust(upstream, realm, extra) {
        RealmTrust::Trusted => Ok(()),
        RealmTrust::Foreign(why) => Err(why),
    }
}

/// `UploadState::decode`, then `encode` of what it accepted: `None` where
/// the registry treats the session as unknown.
pub fn reencode_upload_state(bytes: &[u8]) -> Option<Vec<u8>> {
    UploadState::decode(bytes).map(|s| s.encode().to_vec())
}

/// `UploadState::range_header` of stored state `bytes`, if it decodes.
pub fn upload_range_header(bytes: &[u8]) -> Option<String> {
    UploadState::decode(bytes).map(|s| s.range_header())
}
