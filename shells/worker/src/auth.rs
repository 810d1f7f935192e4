//! Who may pull through the Worker. The owner's pull tokens (the secret
//! `PULL_TOKENS`) and `ANONYMOUS_PULL` become rules of kura-core's access
//! policy ([`kura_core::access`], the engine the native binary enforces
//! too); this module turns a request's `Authorization` header into a
//! [`Principal`] and the policy's [`Decision`] into a [`Verdict`] the
//! Worker answers with.
//!
//! Clients present a token in one of two ways:
//! - HTTP Basic, any user name, the token as the password: what
//!   `docker login`, containerd, podman and skopeo send once a request was
//!   answered `401` with `WWW-Authenticate: Basic realm="kura"`;
//! - `Authorization: Bearer <token>`: the token itself (curl). The Worker
//!   issues no tokens of its own.
//!
//! Plain Rust (no JS), unit-tested natively like `config` and `route`.

use std::collections::BTreeMap;
use std::fmt;

use http::Method;
use kura_core::access::{AccessPolicy, AccessRule, Decision, Granted, Principal, Rights, Subject};
use kura_core::pattern::Pattern;
use kura_core::Digest;

/// The `WWW-Authenticate` value of every 401.
pub const CHALLENGE: &str = "Basic realm=\"kura\"";

/// The principal's name for a `PULL_TOKENS` that is one token, not an
/// object of named ones.
pub const SINGLE_TOKEN_NAME: &str = "token";

/// Shorter tokens are refused: the Worker's URL is public and every guess
/// is one request.
pub const MIN_TOKEN_LEN: usize = 16;

/// The owner's pull tokens by name; only their SHA-256 is kept (so the
/// configuration can be printed, and comparisons are of equal lengths).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PullTokens(Vec<PullToken>);

#[derive(Clone, PartialEq, Eq)]
struct PullToken {
    name: String,
    /// Lowercase hex of the token's SHA-256.
    sha256: String,
}

impl fmt::Debug for PullTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|t| &t.name))
            .finish()
    }
}

impl PullTokens {
    /// `PULL_TOKENS`: one token, or a JSON object `{"name": "token", ...}`
    /// naming one per client. Errors name the variable and the client,
    /// never a token.
    pub fn parse(raw: &str) -> Result<PullTokens, String> {
        let raw = raw.trim();
        let single = !raw.starts_with('{');
        let named: Vec<(String, String)> = if !single {
            let map: BTreeMap<String, String> = serde_json::from_str(raw).map_err(|_| {
                "PULL_TOKENS is neither one token nor a JSON object of {\"name\": \"token\"}"
                    .to_owned()
            })?;
            if map.is_empty() {
                return Err("PULL_TOKENS is an empty object: nobody could pull".into());
            }
            map.into_iter()
                .map(|(n, t)| (n.trim().to_owned(), t.trim().to_owned()))
                .collect()
        } else {
            vec![(SINGLE_TOKEN_NAME.to_owned(), raw.to_owned())]
        };
        let mut tokens: Vec<PullToken> = Vec::with_capacity(named.len());
        for (name, token) in named {
            let whose = if single {
                "the token".to_owned()
            } else {
                format!("the token of {name:?}")
            };
            if name.is_empty() {
                return Err("PULL_TOKENS: a token with an empty name".into());
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "PULL_TOKENS: {whose} is shorter than {MIN_TOKEN_LEN} characters \
                     (make one with `openssl rand -hex 32`)"
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "PULL_TOKENS: {whose} has characters other than visible ASCII \
                     (make one with `openssl rand -hex 32`)"
                ));
            }
            let sha256 = Digest::sha256(token.as_bytes()).hex().to_owned();
            if let Some(same) = tokens.iter().find(|t| t.sha256 == sha256) {
                return Err(format!(
                    "PULL_TOKENS: {:?} and {name:?} have the same token",
                    same.name
                ));
            }
            tokens.push(PullToken { name, sha256 });
        }
        Ok(PullTokens(tokens))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The clients' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|t| t.name.as_str())
    }

    /// The name of the token `presented` is, if any. Every token is
    /// compared, each in full (hashes of equal length, folded without an
    /// early exit), so the time taken does not say how much of a guess
    /// was right.
    fn holder(&self, presented: &[u8]) -> Option<&str> {
        let digest = Digest::sha256(presented);
        let presented = digest.hex().as_bytes();
        let mut found = None;
        for t in &self.0 {
            let diff = t
                .sha256
                .as_bytes()
                .iter()
                .zip(presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(t.name.as_str());
            }
        }
        found
    }
}

/// Credentials that do not check out (a wrong token, a malformed header,
/// an unknown scheme).
#[derive(Debug, PartialEq, Eq)]
pub struct BadCredentials;

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it, with these rights in the request's extensions.
    Pass(Granted),
    /// `401` with [`CHALLENGE`]: no credentials, or wrong ones.
    Unauthorized,
    /// `403 DENIED`: a token holder asked for what the rules do not give.
    Denied(String),
}

/// The Worker's access check: its tokens and the core's policy.
#[derive(Debug, Clone)]
pub struct Gate {
    tokens: PullTokens,
    anonymous_pull: bool,
    policy: AccessPolicy,
}

impl Gate {
    /// Token holders pull every repository; with `anonymous_pull`, so does
    /// everyone else. Nobody pushes or deletes (a mirror at the edge).
    pub fn new(tokens: PullTokens, anonymous_pull: bool) -> Gate {
        let all = Pattern::parse("**").expect("a literal pattern");
        let mut rules = Vec::new();
        if !tokens.is_empty() {
            rules.push(AccessRule::new(
                all.clone(),
                vec![Subject::Authenticated],
                Rights::PULL,
            ));
        }
        if anonymous_pull {
            rules.push(AccessRule::new(all, vec![Subject::Anonymous], Rights::PULL));
        }
        Gate {
            tokens,
            anonymous_pull,
            policy: AccessPolicy::new(rules),
        }
    }

    /// Who sent a request with this `Authorization` value: anonymous
    /// without one, or with an empty password (skopeo and podman send
    /// `Basic` with empty credentials when they have none); the token's
    /// name for a token of ours.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, BadCredentials> {
        let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Principal::anonymous());
        };
        let (scheme, credentials) = value
            .split_once(|c: char| c.is_ascii_whitespace())
            .ok_or(BadCredentials)?;
        let credentials = credentials.trim();
        // Scheme names are case-insensitive (RFC 9110 §11.1).
        let token: Vec<u8> = if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64_decode(credentials).ok_or(BadCredentials)?;
            // user:password; the user name is anything.
            let colon = decoded
                .iter()
                .position(|&b| b == b':')
                .ok_or(BadCredentials)?;
            decoded[colon + 1..].to_vec()
        } else if scheme.eq_ignore_ascii_case("bearer") {
            credentials.as_bytes().to_vec()
        } else {
            return Err(BadCredentials);
        };
        if token.is_empty() {
            return Ok(Principal::anonymous());
        }
        match self.tokens.holder(&token) {
            Some(name) => Ok(Principal::user(name, Vec::new())),
            None => Err(BadCredentials),
        }
    }

    /// The verdict on `method` of `path` (the target the core will see,
    /// without the query) with this `Authorization` value.
    pub fn check(&self, authorization: Option<&str>, method: &Method, path: &str) -> Verdict {
        let Ok(who) = self.authenticate(authorization) else {
            return Verdict::Unauthorized;
        };
        match self.policy.decide(&who, method, path) {
            Decision::Allow(rights) => Verdict::Pass(Granted(rights)),
            Decision::Challenge => Verdict::Unauthorized,
            Decision::Deny => Verdict::Denied(format!(
                "{} may not {method} {path}",
                who.user.as_deref().unwrap_or("anonymous")
            )),
        }
    }

    /// The verdict on `/metrics`, the owner's page: as in the native
    /// binary, for whoever authenticated, and for anyone with anonymous
    /// pull on (the counters say how much is pulled, not what).
    pub fn check_operator(&self, authorization: Option<&str>) -> Verdict {
        match self.authenticate(authorization) {
            Ok(who) if who.user.is_some() || self.anonymous_pull => {
                Verdict::Pass(Granted(Rights::NONE))
            }
            _ => Verdict::Unauthorized,
        }
    }
}

/// Standard base64 (RFC 4648 §4), padding optional; `None` for anything
/// else. What Basic credentials are encoded with.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    // Padded, then all of it; unpadded, none.
    const PADDED: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    const UNPADDED: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    let engine = if text.ends_with('=') {
        &PADDED
    } else {
        &UNPADDED
    };
    engine.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CI: &str = "0123456789abcdef-ci";
    const LAPTOP: &str = "0123456789abcdef-laptop";

    fn basic(user: &str, password: &str) -> String {
        use base64::Engine as _;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    fn tokens() -> PullTokens {
        PullTokens::parse(&format!(r#"{{"ci": "{CI}", "laptop": " {LAPTOP}\n"}}"#)).unwrap()
    }

    const MANIFEST: &str = "/v2/docker.io/library/alpine/manifests/3.20";

    #[test]
    fn base64_as_basic_credentials_use_it() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("Og==").unwrap(), b":");
        assert_eq!(base64_decode("").unwrap(), b"");
        for bad in ["Y", "YQ=", "Y===", "YQ==YQ==", "dXN!cjpw", "YQ=\n"] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
        assert_eq!(basic("user", "pass"), "Basic dXNlcjpwYXNz");
    }

    #[test]
    fn one_token_or_named_ones_never_echoed() {
        let one = PullTokens::parse(&format!("  {CI}\n")).unwrap();
        assert_eq!(one.names().collect::<Vec<_>>(), [SINGLE_TOKEN_NAME]);
        assert_eq!(one.holder(CI.as_bytes()), Some(SINGLE_TOKEN_NAME));
        let named = tokens();
        assert_eq!(named.names().collect::<Vec<_>>(), ["ci", "laptop"]);
        assert_eq!(named.holder(LAPTOP.as_bytes()), Some("laptop"));
        assert_eq!(named.holder(b"0123456789abcdef-cj"), None);
        assert_eq!(named.holder(b""), None);
        assert_eq!(format!("{named:?}"), r#"["ci", "laptop"]"#);
        for (raw, needle) in [
            (r#"{"ci": "#.to_owned() + CI, "JSON object"),
            ("{}".to_owned(), "empty"),
            (r#"{"ci": "short-secret"}"#.to_owned(), "\"ci\" is shorter"),
            ("short-secret".to_owned(), "the token is shorter"),
            (
                format!(r#"{{"ci": "{CI}", "other": "{CI}"}}"#),
                "same token",
            ),
            (format!(r#"{{"": "{CI}"}}"#), "empty name"),
            (format!(r#"{{"ci": "{CI} with spaces"}}"#), "visible ASCII"),
            (r#"{"ci": 12345678901234567890}"#.to_owned(), "JSON object"),
        ] {
            let e = PullTokens::parse(&raw).unwrap_err();
            assert!(e.contains(needle), "{raw}: {e}");
            assert!(e.contains("PULL_TOKENS"), "{e}");
            assert!(
                !e.contains(CI) && !e.contains("short-secret"),
                "leaked: {e}"
            );
        }
    }

    #[test]
    fn tokens_as_basic_password_or_bearer_any_user_any_scheme_case() {
        let g = Gate::new(tokens(), false);
        let who = |h: &str| g.authenticate(Some(h)).map(|p| p.user);
        for header in [
            basic("any", CI),
            basic("", CI),
            // A password may hold colons; the user name may not.
            basic("x", CI).replace("Basic", "BASIC"),
            basic("x", CI).replace("Basic", "basic"),
            format!("Bearer {CI}"),
            format!("bearer  {CI} "),
            format!("BEARER\t{CI}"),
        ] {
            assert_eq!(who(&header), Ok(Some("ci".into())), "{header}");
        }
        assert_eq!(who(&format!("Bearer {LAPTOP}")), Ok(Some("laptop".into())));
        for wrong in [
            basic("ci", "0123456789abcdef-cj"),
            // The token as the user name is not a password.
            basic(CI, "x"),
            basic("x", &format!("{CI}x")),
            format!("Bearer {CI}x"),
            format!("Token {CI}"),
            format!("Basic {CI}"),
            "Basic".into(),
            "Bearer".into(),
            "Basic bm9jb2xvbg==".into(), // "nocolon"
        ] {
            assert_eq!(who(&wrong), Err(BadCredentials), "{wrong}");
        }
        // No credentials: anonymous (skopeo without any sends `Basic Og==`).
        for none in [
            None,
            Some(""),
            Some("  "),
            Some("Basic Og=="),
            Some(&basic("me", "")),
        ] {
            assert_eq!(g.authenticate(none), Ok(Principal::anonymous()), "{none:?}");
        }
    }

    #[test]
    fn only_token_holders_pull_and_strangers_are_challenged() {
        let g = Gate::new(tokens(), false);
        let ok = format!("Bearer {CI}");
        let pull = Verdict::Pass(Granted(Rights::PULL));
        assert_eq!(g.check(Some(&ok), &Method::GET, MANIFEST), pull);
        assert_eq!(
            g.check(Some(&basic("x", LAPTOP)), &Method::HEAD, MANIFEST),
            pull
        );
        // /v2/ challenges strangers, so that clients send their token.
        assert_eq!(g.check(None, &Method::GET, "/v2/"), Verdict::Unauthorized);
        assert_eq!(
            g.check(Some(&ok), &Method::GET, "/v2/"),
            Verdict::Pass(Granted(Rights::NONE))
        );
        for auth in [None, Some("Bearer 0123456789abcdef-no"), Some("Basic Og==")] {
            assert_eq!(
                g.check(auth, &Method::GET, MANIFEST),
                Verdict::Unauthorized,
                "{auth:?}"
            );
            assert_eq!(
                g.check(auth, &Method::GET, "/v2/_catalog"),
                Verdict::Unauthorized
            );
            assert_eq!(g.check_operator(auth), Verdict::Unauthorized);
        }
        assert_eq!(
            g.check_operator(Some(&ok)),
            Verdict::Pass(Granted(Rights::NONE))
        );
        // Pull only, for token holders too.
        assert!(matches!(
            g.check(Some(&ok), &Method::PUT, MANIFEST),
            Verdict::Denied(m) if m.contains("ci may not PUT")
        ));
        assert_eq!(
            g.check(None, &Method::DELETE, MANIFEST),
            Verdict::Unauthorized
        );
    }

    #[test]
    fn anonymous_pull_lets_anyone_pull_and_tokens_still_count() {
        let open = Gate::new(PullTokens::default(), true);
        let pull = Verdict::Pass(Granted(Rights::PULL));
        assert_eq!(open.check(None, &Method::GET, MANIFEST), pull);
        assert_eq!(open.check(Some("Basic Og=="), &Method::GET, MANIFEST), pull);
        // Like the binary: /v2/ still challenges, which clients without
        // credentials shrug off.
        assert_eq!(
            open.check(None, &Method::GET, "/v2/"),
            Verdict::Unauthorized
        );
        assert_eq!(
            open.check_operator(None),
            Verdict::Pass(Granted(Rights::NONE))
        );
        // Credentials that are not a token are refused, not ignored.
        assert_eq!(
            open.check(Some(&format!("Bearer {CI}")), &Method::GET, MANIFEST),
            Verdict::Unauthorized
        );
        assert_eq!(
            open.check(None, &Method::POST, "/v2/a/b/blobs/uploads/"),
            Verdict::Unauthorized
        );
        let both = Gate::new(tokens(), true);
        assert_eq!(both.check(None, &Method::GET, MANIFEST), pull);
        assert_eq!(
            both.check(Some(&basic("x", CI)), &Method::GET, MANIFEST),
            pull
        );
        assert_eq!(
            both.check(
                Some(&basic("x", "0123456789abcdef-no")),
                &Method::GET,
                MANIFEST
            ),
            Verdict::Unauthorized
        );
    }
}
