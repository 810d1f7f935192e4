//! Blob upload sessions.
//!
//! A session is a state object plus the chunks received so far, each in its
//! own storage object. Chunks are never appended in place (object stores
//! cannot append) and each has a unique key, so the state always names
//! chunks whose bytes produced its saved hash, even if two requests race.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::digest::Hasher;
use crate::model::reference::RepositoryName;

/// A session id: 32 lowercase hex characters from the host's random source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    /// Accept only what the registry makes (32 lowercase hex digits): the
    /// id comes back in request paths and becomes part of storage keys.
    pub fn parse(s: &str) -> Option<UploadId> {
        let ok = s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| UploadId(s.to_owned()))
    }

    /// The id for 16 random bytes from [`crate::Host::fill_random`].
    pub(crate) fn from_random(bytes: [u8; 16]) -> UploadId {
        UploadId(hex::encode(bytes))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A chunk of an upload session, stored at [`crate::store::layout::upload_chunk`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Chunk {
    /// Where in the upload the chunk's bytes start.
    pub(crate) offset: u64,
    /// Makes the chunk's key unique (hex).
    pub(crate) nonce: String,
}

/// An upload session as stored ([`crate::store::layout::upload_state`], JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UploadState {
    /// The repository the upload was started in.
    pub(crate) repository: String,
    /// When the session started (host clock, ms since the Unix epoch).
    pub(crate) started_ms: u64,
    /// When the session last received a chunk, for expiring abandoned
    /// sessions.
    pub(crate) updated_ms: u64,
    /// Bytes received so far.
    pub(crate) offset: u64,
    /// The chunks received so far, in offset order.
    pub(crate) chunks: Vec<Chunk>,
    /// sha256 state over all bytes received (see [`Hasher::save`]).
    pub(crate) hasher: String,
    /// A cache fill's spool rather than a client's upload: it cannot outlive
    /// the process that fills it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) fill: bool,
}

impl UploadState {
    /// A session for `repository` with nothing received yet.
    pub(crate) fn new(repository: &RepositoryName, now_ms: u64) -> Self {
        UploadState {
            repository: repository.as_str().to_owned(),
            started_ms: now_ms,
            updated_ms: now_ms,
            offset: 0,
            chunks: Vec::new(),
            hasher: Hasher::new(crate::model::digest::Algorithm::Sha256).save(),
            fill: false,
        }
    }

    /// Parse stored state; `None` if it is not ours or is damaged (then the
    /// session is treated as unknown rather than trusted).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let s: UploadState = serde_json::from_slice(bytes).ok()?;
        let nonces_ok = s.chunks.iter().all(|c| {
            !c.nonce.is_empty()
                && c.nonce.len() <= 32
                && c.nonce.bytes().all(|b| b.is_ascii_hexdigit())
        });
        let offsets_ok = s.chunks.windows(2).all(|w| w[0].offset < w[1].offset)
            && s.chunks.last().is_none_or(|c| c.offset < s.offset);
        (nonces_ok && offsets_ok && Hasher::restore(&s.hasher).is_some()).then_some(s)
    }

    /// The state as stored.
    pub(crate) fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).expect("state serializes").into()
    }

    /// The `Range` header value distribution uses: `0-<last byte>`, and
    /// `0-0` for an empty upload.
    pub(crate) fn range_header(&self) -> String {
        format!("0-{}", self.offset.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    // On wasm32, `#[test]` is wasm-bindgen-test's (run in Node by
    // wasm-bindgen-test-runner); natively it is the built-in one.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn ids() {
        let id = UploadId::from_random([0xab; 16]);
        assert_eq!(UploadId::parse(id.as_str()), Some(id));
        for bad in [
            "",
            "../../etc",
            &"A".repeat(32),
            &"a".repeat(31),
            &"a".repeat(33),
            "sha256:abc",
        ] {
            assert!(UploadId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn state_round_trip_and_damage() {
        let name = RepositoryName::parse("a/b").unwrap();
        let mut s = UploadState::new(&name, 5);
        s.offset = 10;
        s.chunks.push(Chunk {
            offset: 0,
            nonce: "00ff".into(),
        });
        let back = UploadState::decode(&s.encode()).unwrap();
        assert_eq!(back.offset, 10);
        assert_eq!(back.chunks, s.chunks);
        assert_eq!(back.range_header(), "0-9");
        assert_eq!(UploadState::new(&name, 0).range_header(), "0-0");

        let mut bad = s.clone();
        bad.chunks[0].nonce = "../x".into();
        assert!(UploadState::decode(&bad.encode()).is_none());
        let mut bad = s.clone();
        bad.hasher = "junk".into();
        assert!(UploadState::decode(&bad.encode()).is_none());
        assert!(UploadState::decode(b"{").is_none());
    }
}
