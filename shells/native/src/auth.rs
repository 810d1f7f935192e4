//! Client authentication: HTTP basic auth against an htpasswd file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use http::HeaderMap;
use kura_core::wire::Access;
use sha2::Digest as _;

/// Users and their bcrypt hashes.
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl Htpasswd {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                bail!("line {}: expected user:hash", n + 1);
            };
            if !(hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$")) {
                bail!(
                    "line {}: user {user:?} has a non-bcrypt hash (create it with htpasswd -B)",
                    n + 1
                );
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Htpasswd { users })
    }
}

/// Decides whether a request may proceed.
pub struct Authenticator {
    htpasswd: Htpasswd,
    anonymous_pull: bool,
    pub realm: String,
    /// bcrypt costs tens of milliseconds by design; clients send the same
    /// credentials on every request, so successful checks are remembered
    /// briefly (keyed by a hash of the header, never the password itself).
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

const VERIFIED_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No or wrong credentials: answer 401 with a challenge.
    Challenge,
}

impl Authenticator {
    pub fn new(htpasswd: Htpasswd, anonymous_pull: bool, realm: String) -> Self {
        Authenticator {
            htpasswd,
            anonymous_pull,
            realm,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// `is_base` marks `/v2/`: clients probe it to learn how to
    /// authenticate, so it challenges whenever there are no valid
    /// credentials, even with anonymous pulls on.
    pub fn decide(&self, headers: &HeaderMap, access: Access, is_base: bool) -> Decision {
        if self.valid_credentials(headers) {
            return Decision::Allow;
        }
        if access == Access::Pull && self.anonymous_pull && !is_base {
            return Decision::Allow;
        }
        Decision::Challenge
    }

    fn valid_credentials(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        // Scheme names are case-insensitive (RFC 9110 §11.1): `BASIC`
        // is Basic too.
        let Some((scheme, encoded)) = value.trim_start().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let key: [u8; 32] = sha2::Sha256::digest(value.as_bytes()).into();
        {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(at) = cache.get(&key) {
                if at.elapsed() < VERIFIED_TTL {
                    return true;
                }
                cache.remove(&key);
            }
        }
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(raw) else {
            return false;
        };
        let Some((user, password)) = text.split_once(':') else {
            return false;
        };
        let Some(hash) = self.htpasswd.users.get(user) else {
            return false;
        };
        if bcrypt::verify(password, hash).unwrap_or(false) {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(key, Instant::now());
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, pass: &str) -> HeaderMap {
        header_with_scheme("Basic", user, pass)
    }

    fn header_with_scheme(scheme: &str, user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(
            http::header::AUTHORIZATION,
            format!("{scheme} {v}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn scheme_names_are_case_insensitive() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let pw = Htpasswd::parse(&format!("alice:{hash}\n")).unwrap();
        let a = Authenticator::new(pw, false, "kura".into());
        for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
            assert_eq!(
                a.decide(
                    &header_with_scheme(scheme, "alice", "secret"),
                    Access::Push,
                    false
                ),
                Decision::Allow,
                "{scheme}"
            );
        }
        for scheme in ["Bearer", "Basicx", "Digest"] {
            assert_eq!(
                a.decide(
                    &header_with_scheme(scheme, "alice", "secret"),
                    Access::Push,
                    false
                ),
                Decision::Challenge,
                "{scheme}"
            );
        }
    }

    #[test]
    fn decisions() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let pw = Htpasswd::parse(&format!("# comment\nalice:{hash}\n")).unwrap();
        let a = Authenticator::new(pw, true, "kura".into());
        let none = HeaderMap::new();
        assert_eq!(a.decide(&none, Access::Pull, false), Decision::Allow);
        assert_eq!(a.decide(&none, Access::Pull, true), Decision::Challenge);
        assert_eq!(a.decide(&none, Access::Push, false), Decision::Challenge);
        assert_eq!(
            a.decide(&header("alice", "secret"), Access::Push, false),
            Decision::Allow
        );
        assert_eq!(
            a.decide(&header("alice", "secret"), Access::Delete, false),
            Decision::Allow,
            "cached"
        );
        assert_eq!(
            a.decide(&header("alice", "wrong"), Access::Push, false),
            Decision::Challenge
        );
        assert_eq!(
            a.decide(&header("bob", "secret"), Access::Push, false),
            Decision::Challenge
        );

        let pw = Htpasswd::parse(&format!("alice:{hash}\n")).unwrap();
        let strict = Authenticator::new(pw, false, "kura".into());
        assert_eq!(
            strict.decide(&none, Access::Pull, false),
            Decision::Challenge
        );
    }

    #[test]
    fn rejects_non_bcrypt() {
        assert!(Htpasswd::parse("alice:{SHA}abc\n").is_err());
        assert!(Htpasswd::parse("alice:$apr1$x$y\n").is_err());
        assert!(Htpasswd::parse("garbage\n").is_err());
    }
}
