//! Name patterns of retention rules, immutable tags and access rules:
//! globs over repository names and tags.
//!
//! `*` matches within one path component (no `/`), `**` matches across
//! components (any run of characters, `/` included), `?` matches one
//! character other than `/`. Everything else matches itself. So
//! `team-a/*` matches `team-a/api` but not `team-a/api/v2`, `team-a/**`
//! matches both, and `v*` matches the tags `v1` and `v1.2.3`.

use std::fmt;

/// A compiled glob.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `?`
    One,
    /// `*`
    Component,
    /// `**`
    Any,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pattern: String,
    reason: &'static str,
}

impl Pattern {
    /// Compile `source`. Empty patterns and `***` are refused: neither
    /// says anything a reader could trust.
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        let err = |reason| PatternError {
            pattern: source.to_owned(),
            reason,
        };
        if source.is_empty() {
            return Err(err("empty"));
        }
        if source.contains("***") {
            return Err(err("`***` means nothing more than `**`"));
        }
        if source.len() > 512 {
            return Err(err("longer than 512 characters"));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            let wild = match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    Part::Any
                }
                '*' => Part::Component,
                '?' => Part::One,
                c => {
                    literal.push(c);
                    continue;
                }
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(wild);
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Pattern {
            source: source.to_owned(),
            parts,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        matches(&self.parts, name.as_bytes())
    }
}

/// Dynamic programming over (pattern part, name position), from the ends:
/// `ok[j]` for part `i` says whether `parts[i..]` matches `name[j..]`.
/// Time is parts × name length whatever the wildcards (plain backtracking
/// is exponential in the number of stars).
fn matches(parts: &[Part], name: &[u8]) -> bool {
    let n = name.len();
    // After the last part, only the empty rest matches.
    let mut next: Vec<bool> = (0..=n).map(|j| j == n).collect();
    for part in parts.iter().rev() {
        let mut ok = vec![false; n + 1];
        for j in (0..=n).rev() {
            ok[j] = match part {
                Part::Literal(l) => {
                    let l = l.as_bytes();
                    name[j..].starts_with(l) && next[j + l.len()]
                }
                Part::One => match name.get(j) {
                    Some(b'/') | None => false,
                    Some(_) => {
                        // One character, which may be several bytes.
                        let width = 1 + name[j + 1..]
                            .iter()
                            .take_while(|b| (**b & 0xC0) == 0x80)
                            .count();
                        next[j + width]
                    }
                },
                // Match nothing here, or one more byte and stay on `*`.
                Part::Component => next[j] || (j < n && name[j] != b'/' && ok[j + 1]),
                Part::Any => next[j] || (j < n && ok[j + 1]),
            };
        }
        next = ok;
    }
    next[0]
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn m(p: &str, name: &str) -> bool {
        Pattern::parse(p).unwrap().matches(name)
    }

    #[test]
    fn stars_stay_within_a_component_double_stars_cross() {
        assert!(m("team-a/*", "team-a/api"));
        assert!(!m("team-a/*", "team-a/api/v2"));
        assert!(m("team-a/**", "team-a/api/v2"));
        assert!(m("team-a/**", "team-a/api"));
        assert!(!m("team-a/**", "team-b/api"));
        assert!(!m("team-a/**", "team-a"), "the slash is literal");
        assert!(m("**", "anything/at/all"));
        assert!(m("*", "top"));
        assert!(!m("*", "a/b"));
        assert!(m("**/cache", "docker.io/library/cache"));
        assert!(m("*/library/*", "docker.io/library/alpine"));
    }

    #[test]
    fn tags() {
        assert!(m("v*", "v1"));
        assert!(m("v*", "v1.2.3"));
        assert!(!m("v*", "latest"));
        assert!(m("release-?", "release-1"));
        assert!(!m("release-?", "release-10"));
        assert!(m("latest", "latest"));
        assert!(!m("latest", "latest2"));
        assert!(m("*-rc*", "1.0-rc2"));
        assert!(!m("*-rc*", "1.0"));
    }

    #[test]
    fn refused() {
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a/***").is_err());
        assert!(Pattern::parse(&"a".repeat(600)).is_err());
    }

    #[test]
    fn many_stars_stay_fast() {
        let p = Pattern::parse("*a*a*a*a*a*a*a*b").unwrap();
        assert!(!p.matches(&"a".repeat(120)));
        let p = Pattern::parse("**a**a**a**a**b").unwrap();
        assert!(!p.matches(&"a".repeat(200)));
    }
}
