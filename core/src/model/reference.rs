//! Repository names, tags and manifest references, with the
//! distribution-spec grammar applied strictly.
//!
//! A value of these types is always valid: it can be used as a storage key
//! component without escaping, because the grammar admits no `/` in tags, no
//! empty or dot-only path components, and nothing outside ASCII.

use std::fmt;
use std::str::FromStr;

use crate::model::digest::{Digest, DigestError};

/// The longest repository name accepted. The spec leaves the exact limit to
/// registries; 255 matches distribution and keeps storage keys short.
pub const MAX_NAME_LEN: usize = 255;
/// A tag is at most 128 characters (`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
pub const MAX_TAG_LEN: usize = 128;

/// Why a string is not a [`RepositoryName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("repository name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    /// A `/`-separated component breaks the grammar (truncated).
    #[error("repository name component {0:?} does not match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*")]
    InvalidComponent(String),
}

/// Why a string is not a [`Tag`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// The tag is empty.
    #[error("tag is empty")]
    Empty,
    /// The tag is longer than [`MAX_TAG_LEN`].
    #[error("tag is longer than {MAX_TAG_LEN} characters")]
    TooLong,
    /// The tag breaks the grammar (truncated).
    #[error("tag {0:?} does not match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    Invalid(String),
}

/// A repository name such as `library/alpine`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepositoryName(String);

impl RepositoryName {
    /// Validate a name against the distribution-spec grammar: `/`-separated
    /// components of lowercase alphanumerics joined by `.`, `_`, `__` or `-`
    /// runs, at most [`MAX_NAME_LEN`] bytes in all.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        for component in s.split('/') {
            if !valid_component(component.as_bytes()) {
                return Err(NameError::InvalidComponent(truncate(component)));
            }
        }
        Ok(RepositoryName(s.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &[u8]) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let run = i;
        while i < c.len() && alnum(c[i]) {
            i += 1;
        }
        if i == run {
            return false; // empty component, or separator not followed by alnum
        }
        if i == c.len() {
            return true;
        }
        match c[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < c.len() && c[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < c.len() && c[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RepositoryName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A tag such as `3.20` or `latest`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    /// Validate a tag against `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    pub fn parse(s: &str) -> Result<Self, TagError> {
        let b = s.as_bytes();
        if b.is_empty() {
            return Err(TagError::Empty);
        }
        if b.len() > MAX_TAG_LEN {
            return Err(TagError::TooLong);
        }
        let first_ok = b[0].is_ascii_alphanumeric() || b[0] == b'_';
        let rest_ok = b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if first_ok && rest_ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(TagError::Invalid(truncate(s)))
        }
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag.
    Tag(Tag),
    /// A digest.
    Digest(Digest),
}

/// Why a string is neither a [`Tag`] nor a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// No `:`, and not a valid tag.
    #[error(transparent)]
    Tag(#[from] TagError),
    /// Has a `:`, and is not a valid digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

impl Reference {
    /// A reference containing `:` is a digest (tags cannot contain it).
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.contains(':') {
            Ok(Reference::Digest(Digest::parse(s)?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// Echo at most a short prefix of bad input back in error messages.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    // On wasm32, `#[test]` is wasm-bindgen-test's (run in Node by
    // wasm-bindgen-test-runner); natively it is the built-in one.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn names_accepted() {
        for ok in [
            "a",
            "library/alpine",
            "a0/b-c/d.e/f_g/h__i",
            "foo---bar",
            "ghcr.io/owner/app", // dots are legal in components
            "0",
        ] {
            assert!(RepositoryName::parse(ok).is_ok(), "{ok}");
        }
        let long = vec!["a"; 128].join("/"); // 255 chars
        assert_eq!(long.len(), 255);
        assert!(RepositoryName::parse(&long).is_ok());
    }

    #[test]
    fn names_rejected() {
        for bad in [
            "",
            "/",
            "a/",
            "/a",
            "a//b",
            "..",
            "a/../b",
            "a/./b",
            ".a",
            "a.",
            "a..b",
            "a___b",
            "a._b",
            "a-",
            "-a",
            "_a",
            "A",
            "library/Alpine",
            "a b",
            "a%2fb",
            "a\\b",
            "ä",
            "a:b",
            "a\0",
        ] {
            assert!(RepositoryName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(256);
        assert_eq!(RepositoryName::parse(&long), Err(NameError::TooLong));
    }

    #[test]
    fn tags() {
        for ok in ["latest", "3.20", "_x", "A-b.C_d", &"t".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".a",
            "-a",
            "a/b",
            "a:b",
            "a b",
            "ä",
            &"t".repeat(129),
            "..",
        ] {
            assert!(Tag::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn references() {
        assert!(matches!(Reference::parse("v1"), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(Reference::parse(&d), Ok(Reference::Digest(_))));
        assert!(matches!(
            Reference::parse("sha256:xyz"),
            Err(ReferenceError::Digest(_))
        ));
    }

    #[test]
    fn long_input_is_truncated_in_errors() {
        let bad = "B".repeat(10_000);
        let msg = RepositoryName::parse(&bad).unwrap_err().to_string();
        assert!(msg.len() < 200);
    }
}
