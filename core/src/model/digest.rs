//! Content digests (`algorithm:hex`) and streaming verification.
//!
//! sha256 is the registry's default; sha512 is accepted wherever a client
//! names it. Other algorithms are rejected as invalid rather than stored
//! unverified.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256, Sha512};

use crate::io::body::ByteStream;
use crate::model::reference::truncate;

/// A digest algorithm this registry can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    /// `sha256`, the default.
    Sha256,
    /// `sha512`.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears in a digest.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Why a string is not a [`Digest`]. Each variant carries the offending
/// text, truncated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not of the form `algorithm:hex`.
    #[error("digest {0:?} is not of the form algorithm:hex")]
    Malformed(String),
    /// An algorithm other than sha256 and sha512.
    #[error("digest algorithm {0:?} is not supported (sha256, sha512)")]
    UnsupportedAlgorithm(String),
    /// The hex part is not the algorithm's length in lowercase hex.
    #[error("digest {0:?} has the wrong length or non-lowercase-hex characters")]
    BadEncoding(String),
}

/// A validated digest. Holding one means the hex part is exactly the
/// algorithm's length in lowercase hex, so it is safe inside storage keys.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parse and validate `algorithm:hex`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(truncate(s)))?;
        // The spec's algorithm grammar is [a-z0-9]+([+._-][a-z0-9]+)*; we only
        // ever verify the two registered ones, so anything else is refused.
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ if alg.is_empty() || hex.is_empty() => {
                return Err(DigestError::Malformed(truncate(s)))
            }
            _ => return Err(DigestError::UnsupportedAlgorithm(truncate(alg))),
        };
        let ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(DigestError::BadEncoding(truncate(s)));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The algorithm the digest was computed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded hash, lowercase hex.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest of `data` under `algorithm`.
    pub fn compute(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    /// The sha256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Digest {
        Self::compute(Algorithm::Sha256, data)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hash whose state can be saved and restored.
///
/// Chunked uploads arrive over several requests (and maybe several kura
/// processes sharing storage). Saving the hash state with the upload session
/// means the final digest is known the moment the last chunk lands, without
/// reading the blob back.
#[derive(Clone)]
pub enum Hasher {
    /// A sha256 state.
    Sha256(Sha256),
    /// A sha512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hash for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// The algorithm being computed.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Hash `data` next.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything hashed so far.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }

    /// The state as text: `algorithm:hex-of-serialized-state`.
    pub fn save(&self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.serialize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.serialize())),
        }
    }

    /// Restore a state written by [`Hasher::save`]. `None` for anything else,
    /// including a state claiming more than [`MAX_RESTORED_LEN`] bytes hashed.
    pub fn restore(saved: &str) -> Option<Self> {
        let (alg, state) = saved.split_once(':')?;
        let raw = hex::decode(state).ok()?;
        // The serialized state is sha2's: the chaining words, then the count
        // of whole blocks hashed (little-endian u64 for sha256, u128 for
        // sha512), then the partial block. sha2 takes any count, and its
        // bit length (`8 * 64 * blocks`) then overflows in `finish`: a
        // panic with overflow checks, a wrong digest without.
        let blocks = |at: usize, len: usize| -> Option<u128> {
            let mut le = [0u8; 16];
            le[..len].copy_from_slice(raw.get(at..at + len)?);
            Some(u128::from_le_bytes(le))
        };
        match alg {
            "sha256" => {
                within_restore_limit(blocks(32, 8)?, 64)?;
                let arr = raw.as_slice().try_into().ok()?;
                Sha256::deserialize(arr).ok().map(Hasher::Sha256)
            }
            "sha512" => {
                within_restore_limit(blocks(64, 16)?, 128)?;
                let arr = raw.as_slice().try_into().ok()?;
                Sha512::deserialize(arr).ok().map(Hasher::Sha512)
            }
            _ => None,
        }
    }
}

/// The most bytes a restored [`Hasher`] state may have hashed: 64 PiB, far
/// beyond any upload, and far enough below sha256's 2^64-bit length counter
/// that hashing more after the restore cannot reach it.
pub const MAX_RESTORED_LEN: u64 = 1 << 56;

fn within_restore_limit(blocks: u128, block_size: u128) -> Option<()> {
    (blocks.checked_mul(block_size)? <= u128::from(MAX_RESTORED_LEN)).then_some(())
}

/// The error a [`verify`]ing stream ends with when the bytes do not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("content digest {actual} does not match expected {expected}")]
pub struct DigestMismatch {
    /// The digest the bytes should have had.
    pub expected: Digest,
    /// The digest they had.
    pub actual: Digest,
}

/// The error a [`verify`]ing stream ends with when the length is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("content length {actual} does not match expected {expected}")]
pub struct SizeMismatch {
    /// The length the bytes should have had.
    pub expected: u64,
    /// The bytes counted when the mismatch showed: all of them when too
    /// few came, up to the overrunning chunk when too many did.
    pub actual: u64,
}

/// Whether `err` is (or wraps) a verification failure from [`verify`].
pub fn is_verification_error(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|e| e.is::<DigestMismatch>() || e.is::<SizeMismatch>())
}

/// Pass `inner` through while hashing it. Instead of ending cleanly, the
/// stream yields a final error if the bytes do not hash to `expected` (or
/// their count is not `expected_len`). A storage backend that commits only
/// on a clean end of stream therefore never commits unverified bytes.
pub fn verify(inner: ByteStream, expected: Digest, expected_len: Option<u64>) -> ByteStream {
    Box::pin(Verify {
        inner,
        hasher: Some(Hasher::new(expected.algorithm())),
        expected,
        expected_len,
        seen: 0,
    })
}

struct Verify {
    inner: ByteStream,
    hasher: Option<Hasher>,
    expected: Digest,
    expected_len: Option<u64>,
    seen: u64,
}

impl Stream for Verify {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(hasher) = this.hasher.as_mut() else {
            return Poll::Ready(None);
        };
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                if let Some(want) = this.expected_len {
                    if this.seen > want {
                        this.hasher = None;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            SizeMismatch {
                                expected: want,
                                actual: this.seen,
                            },
                        ))));
                    }
                }
                hasher.update(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let actual = this.hasher.take().expect("checked above").finish();
                if let Some(want) = this.expected_len {
                    if this.seen != want {
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            SizeMismatch {
                                expected: want,
                                actual: this.seen,
                            },
                        ))));
                    }
                }
                if actual != this.expected {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        DigestMismatch {
                            expected: this.expected.clone(),
                            actual,
                        },
                    ))));
                }
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    // On wasm32, `#[test]` is wasm-bindgen-test's (run in Node by
    // wasm-bindgen-test-runner); natively it is the built-in one.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use futures::executor::block_on;
    use futures::StreamExt;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_and_display_round_trip() {
        let d = Digest::parse(EMPTY_SHA256).unwrap();
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(Digest::sha256(b""), d);
        let s512 = Digest::compute(Algorithm::Sha512, b"abc");
        assert_eq!(Digest::parse(&s512.to_string()).unwrap(), s512);
        assert!(s512.hex().starts_with("ddaf35a193617aba"));
    }

    #[test]
    fn parse_rejects() {
        let h = "a".repeat(64);
        for bad in [
            String::new(),
            "sha256".into(),
            "sha256:".into(),
            ":abc".into(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "a".repeat(65)),
            format!("sha256:{}", "g".repeat(64)),
            format!("sha512:{h}"),
            format!("md5:{h}"),
            format!("sha256:{h}/../x"),
            format!("SHA256:{h}"),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hasher_state_survives_save_and_restore() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            for split in [0, 1, 63, 64, 65, 127, 128, 129, 5000, 10_000] {
                let mut h = Hasher::new(alg);
                h.update(&data[..split]);
                let saved = h.save();
                let mut restored = Hasher::restore(&saved).expect("restore");
                restored.update(&data[split..]);
                assert_eq!(
                    restored.finish(),
                    Digest::compute(alg, &data),
                    "{alg:?} split {split}"
                );
            }
        }
        assert!(Hasher::restore("sha256:zz").is_none());
        assert!(Hasher::restore("sha256:00").is_none());
        assert!(Hasher::restore("md5:00").is_none());
    }

    #[test]
    fn restore_refuses_states_whose_length_would_overflow() {
        // Found by the `upload_state` fuzz target: a saved state with a huge
        // block count restored, then `finish` overflowed sha2's bit length.
        for (alg, count_at, count_len, block) in [
            (Algorithm::Sha256, 32, 8, 64u128),
            (Algorithm::Sha512, 64, 16, 128),
        ] {
            let mut h = Hasher::new(alg);
            h.update(&vec![7u8; 3 * block as usize + 5]);
            let saved = h.save();
            let (name, state) = saved.split_once(':').unwrap();
            let mut raw = hex::decode(state).unwrap();
            // The count sits where `restore` reads it: three whole blocks.
            let count = &mut raw[count_at..count_at + count_len];
            assert_eq!(count[0], 3, "{alg:?}");
            let with_count = |raw: &mut Vec<u8>, n: u128| {
                raw[count_at..count_at + count_len].copy_from_slice(&n.to_le_bytes()[..count_len]);
                format!("{name}:{}", hex::encode(&raw))
            };
            let limit = u128::from(MAX_RESTORED_LEN) / block;
            let mut at_limit = Hasher::restore(&with_count(&mut raw, limit)).expect("at the limit");
            at_limit.update(&[1; 1000]);
            let _ = at_limit.finish();
            assert!(Hasher::restore(&with_count(&mut raw, limit + 1)).is_none());
            let max = if count_len == 8 {
                u128::from(u64::MAX)
            } else {
                u128::MAX
            };
            assert!(
                Hasher::restore(&with_count(&mut raw, max)).is_none(),
                "{alg:?}"
            );
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        let v: Vec<io::Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures::stream::iter(v))
    }

    fn drain(s: ByteStream) -> (Vec<u8>, Option<io::Error>) {
        block_on(async move {
            let mut s = s;
            let mut out = Vec::new();
            while let Some(item) = s.next().await {
                match item {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(e) => return (out, Some(e)),
                }
            }
            (out, None)
        })
    }

    #[test]
    fn verify_passes_matching_bytes() {
        let d = Digest::sha256(b"hello world");
        let (out, err) = drain(verify(chunks(&[b"hello", b" ", b"world"]), d, Some(11)));
        assert_eq!(out, b"hello world");
        assert!(err.is_none());
    }

    #[test]
    fn verify_fails_at_end_on_mismatch() {
        let d = Digest::sha256(b"hello world");
        let (_, err) = drain(verify(chunks(&[b"hello", b" ", b"there"]), d, None));
        let err = err.expect("mismatch must surface");
        assert!(is_verification_error(&err));
        assert!(err.get_ref().unwrap().is::<DigestMismatch>());
    }

    #[test]
    fn verify_fails_on_length() {
        let d = Digest::sha256(b"hello world");
        let (_, err) = drain(verify(chunks(&[b"hello", b" world"]), d.clone(), Some(5)));
        assert!(err.unwrap().get_ref().unwrap().is::<SizeMismatch>());
        let (_, err) = drain(verify(chunks(&[b"hello"]), d, Some(11)));
        assert!(err.unwrap().get_ref().unwrap().is::<SizeMismatch>());
    }
}
