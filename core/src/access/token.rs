//! Docker token auth: the bearer tokens docker, containerd, podman and
//! skopeo fetch from a registry's token service (the `realm` of its
//! `WWW-Authenticate: Bearer` challenge) and send with every request.
//!
//! A token is a JWT whose `access` claim lists, per repository, the
//! actions granted (`pull`, `push`, `delete`; kura adds `overwrite`). kura
//! can issue them itself ([`TokenIssuer`], ES256, scoped by the access
//! rules) and verifies them ([`TokenVerifier`]) whoever issued them: its
//! own, or an external service's (cesanta/docker_auth style) given its
//! public keys or JWKS. Times come from the host's clock, not the
//! system's, so the module works wherever the core does.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Principal, Rights};
use crate::model::pattern::Pattern;
use crate::model::reference::RepositoryName;

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a JWT, a bad signature, an unknown key, a wrong issuer or
    /// audience.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Past its `exp`, or before its `nbf`.
    #[error("token expired or not yet valid")]
    Expired,
    /// A key that cannot be used.
    #[error("token key: {0}")]
    Key(String),
}

/// One entry of the `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    /// `repository` (others, such as `registry` for the catalog, grant
    /// nothing here).
    #[serde(rename = "type")]
    pub kind: String,
    /// The repository name.
    pub name: String,
    /// The actions granted.
    pub actions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    #[serde(default)]
    access: Vec<ResourceActions>,
}

/// A requested scope (`repository:team/app:pull,push`), parsed; `None`
/// for scopes kura does not grant (other resource types, bad names).
pub fn parse_scope(scope: &str) -> Option<(RepositoryName, Vec<String>)> {
    // The name may hold a port (`host:5000/app`): actions follow the last
    // colon, the type the first.
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if kind != "repository" {
        return None;
    }
    let name = RepositoryName::parse(name).ok()?;
    Some((
        name,
        actions.split(',').map(|a| a.trim().to_owned()).collect(),
    ))
}

/// The actions of `requested` that `rights` allow (`*` asks for all);
/// a push granted brings `overwrite` along when the rights hold it, as
/// clients never ask for it by name.
pub fn grantable(requested: &[String], rights: Rights) -> Vec<String> {
    let wants = |a: &str| requested.iter().any(|r| r == a || r == "*");
    let mut out = Vec::new();
    if wants("pull") && rights.pull {
        out.push("pull".to_owned());
    }
    if wants("push") && rights.push {
        out.push("push".to_owned());
        if rights.overwrite {
            out.push("overwrite".to_owned());
        }
    }
    if wants("delete") && rights.delete {
        out.push("delete".to_owned());
    }
    out
}

/// Issues kura's own tokens.
pub struct TokenIssuer {
    key: EncodingKey,
    kid: String,
    issuer: String,
    service: String,
    lifetime_secs: u64,
}

impl TokenIssuer {
    /// Sign with the P-256 private key in `pem` (PKCS#8); tokens say
    /// `issuer` and are for `service`, and last `lifetime_secs`.
    pub fn new(
        pem: &[u8],
        kid: &str,
        issuer: &str,
        service: &str,
        lifetime_secs: u64,
    ) -> Result<Self, TokenError> {
        Ok(TokenIssuer {
            key: EncodingKey::from_ec_pem(pem).map_err(|e| TokenError::Key(e.to_string()))?,
            kid: kid.to_owned(),
            issuer: issuer.to_owned(),
            service: service.to_owned(),
            lifetime_secs,
        })
    }

    /// How long tokens last.
    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs
    }

    /// A token for `subject` granting `access`, issued at `now_secs`;
    /// `jti` must be unique (random, from the host).
    pub fn issue(
        &self,
        subject: &str,
        access: Vec<ResourceActions>,
        now_secs: u64,
        jti: &str,
    ) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.service.clone(),
            exp: now_secs + self.lifetime_secs,
            // A little before now: the clocks of several instances differ.
            nbf: now_secs.saturating_sub(10),
            iat: now_secs,
            jti: jti.to_owned(),
            access,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TokenError::Key(e.to_string()))
    }
}

/// Checks tokens: signed by one of its keys, for its issuer and service,
/// within their times.
pub struct TokenVerifier {
    keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
    issuer: String,
    service: String,
}

/// Clocks of the issuer and of kura may differ this much.
const LEEWAY_SECS: u64 = 30;

impl TokenVerifier {
    /// Tokens of `issuer` for `service`; keys added with the `with_*`
    /// calls.
    pub fn new(issuer: &str, service: &str) -> Self {
        TokenVerifier {
            keys: Vec::new(),
            issuer: issuer.to_owned(),
            service: service.to_owned(),
        }
    }

    /// Accept tokens signed with the public key in `pem` (EC P-256 for
    /// ES256, or RSA for RS256), for any `kid`, or only `kid`.
    pub fn with_pem(mut self, pem: &[u8], kid: Option<&str>) -> Result<Self, TokenError> {
        let text = String::from_utf8_lossy(pem);
        let (key, alg) = if text.contains("RSA") || text.len() > 500 {
            match DecodingKey::from_rsa_pem(pem) {
                Ok(k) => (k, Algorithm::RS256),
                Err(_) => (
                    DecodingKey::from_ec_pem(pem).map_err(|e| TokenError::Key(e.to_string()))?,
                    Algorithm::ES256,
                ),
            }
        } else {
            match DecodingKey::from_ec_pem(pem) {
                Ok(k) => (k, Algorithm::ES256),
                Err(_) => (
                    DecodingKey::from_rsa_pem(pem).map_err(|e| TokenError::Key(e.to_string()))?,
                    Algorithm::RS256,
                ),
            }
        };
        self.keys.push((kid.map(str::to_owned), key, alg));
        Ok(self)
    }

    /// Accept tokens signed with any key of a JWKS document (`{"keys":
    /// [...]}`), matched by `kid`.
    pub fn with_jwks(mut self, json: &[u8]) -> Result<Self, TokenError> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(json).map_err(|e| TokenError::Key(format!("JWKS: {e}")))?;
        for jwk in &set.keys {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| TokenError::Key(e.to_string()))?;
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    jsonwebtoken::jwk::EllipticCurve::P384 => Algorithm::ES384,
                    _ => Algorithm::ES256,
                },
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => continue,
            };
            self.keys.push((jwk.common.key_id.clone(), key, alg));
        }
        if self.keys.is_empty() {
            return Err(TokenError::Key("JWKS has no usable key".into()));
        }
        Ok(self)
    }

    /// Who `token` says its bearer is, at `now_secs`: the subject, with a
    /// scope of exactly the repositories and actions it grants.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Principal, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let candidates = self.keys.iter().filter(|(kid, _, alg)| {
            *alg == header.alg && (kid.is_none() || header.kid.is_none() || *kid == header.kid)
        });
        let mut last = TokenError::Invalid(format!("no key for algorithm {:?}", header.alg));
        for (_, key, alg) in candidates {
            let mut v = Validation::new(*alg);
            // Times are checked below, against the host's clock.
            v.validate_exp = false;
            v.validate_nbf = false;
            v.required_spec_claims.clear();
            v.set_issuer(&[&self.issuer]);
            v.set_audience(&[&self.service]);
            match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(data) => {
                    let c = data.claims;
                    if now_secs > c.exp + LEEWAY_SECS || now_secs + LEEWAY_SECS < c.nbf {
                        return Err(TokenError::Expired);
                    }
                    return Ok(principal(c));
                }
                Err(e) => last = TokenError::Invalid(e.to_string()),
            }
        }
        Err(last)
    }
}

fn principal(c: Claims) -> Principal {
    let mut scope = Vec::new();
    for a in c.access {
        if a.kind != "repository" {
            continue;
        }
        // Repository names hold no glob characters: the pattern of a name
        // matches that name only.
        let Ok(pattern) = Pattern::parse(&a.name) else {
            continue;
        };
        if RepositoryName::parse(&a.name).is_err() {
            continue;
        }
        let rights = Rights {
            pull: a.actions.iter().any(|x| x == "pull" || x == "*"),
            push: a.actions.iter().any(|x| x == "push" || x == "*"),
            delete: a.actions.iter().any(|x| x == "delete" || x == "*"),
            overwrite: a.actions.iter().any(|x| x == "overwrite" || x == "*"),
        };
        scope.push((pattern, rights));
    }
    Principal {
        // Tokens for callers without credentials name nobody.
        user: Some(c.sub).filter(|s| !s.is_empty()),
        groups: Vec::new(),
        scope: Some(scope),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // P-256 keys made for these tests only (openssl ecparam -genkey -name
    // prime256v1 | openssl pkcs8 -topk8 -nocrypt).
    const PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBHTdgV3hAJbKOLWY
zrfxDZT8lQjIngXXyHTpY9YBpKChRANCAATvyQdofQATwR7H8dai6v1H88fDs89Z
UOi3oUzwjCtwhVFPXzOG+QUuIytKdQ+GNc7LUTLcNmXspKoAS1NmcWQY
-----END PRIVATE KEY-----
";
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE78kHaH0AE8Eex/HWour9R/PHw7PP
WVDot6FM8IwrcIVRT18zhvkFLiMrSnUPhjXOy1Ey3DZl7KSqAEtTZnFkGA==
-----END PUBLIC KEY-----
";
    const OTHER_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgEQUbCTnXe8u1WfZx
rXq0KcvWu8Fl6yhpmjYvYRijBkqhRANCAAS00nLc9wpTz5u6gQ/UTv0TD/R0k6kA
DpFAFYnPE/wFVaZEq4UyGWy/zs+PRNtaTea6VfvdIIgnjhEMur56jalT
-----END PRIVATE KEY-----
";

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(PRIVATE.as_bytes(), "k1", "kura", "registry", 300).unwrap()
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::new("kura", "registry")
            .with_pem(PUBLIC.as_bytes(), None)
            .unwrap()
    }

    fn access(name: &str, actions: &[&str]) -> Vec<ResourceActions> {
        vec![ResourceActions {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
        }]
    }

    #[test]
    fn issued_tokens_verify_with_their_scope() {
        let t = issuer()
            .issue(
                "alice",
                access("team/app", &["pull", "push"]),
                1_000_000,
                "j1",
            )
            .unwrap();
        let p = verifier().verify(&t, 1_000_100).unwrap();
        assert_eq!(p.user.as_deref(), Some("alice"));
        let scope = p.scope.unwrap();
        assert_eq!(scope.len(), 1);
        assert!(scope[0].0.matches("team/app") && !scope[0].0.matches("team/app2"));
        assert!(scope[0].1.push && !scope[0].1.delete);
    }

    #[test]
    fn expired_forged_and_foreign_tokens_are_refused() {
        let t = issuer()
            .issue("alice", access("a", &["pull"]), 1_000_000, "j")
            .unwrap();
        assert!(matches!(
            verifier().verify(&t, 1_000_000 + 300 + LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            verifier().verify(&t, 1_000_000 - 60),
            Err(TokenError::Expired)
        ));
        // Another service's token.
        let other = TokenIssuer::new(PRIVATE.as_bytes(), "k1", "kura", "elsewhere", 300)
            .unwrap()
            .issue("alice", access("a", &["pull"]), 1_000_000, "j")
            .unwrap();
        assert!(verifier().verify(&other, 1_000_000).is_err());
        // Signed with a key the verifier does not know.
        let forged = TokenIssuer::new(OTHER_PRIVATE.as_bytes(), "k1", "kura", "registry", 300)
            .unwrap()
            .issue("alice", access("a", &["*"]), 1_000_000, "j")
            .unwrap();
        assert!(verifier().verify(&forged, 1_000_000).is_err());
        // Header and claims of one token, signature of another.
        let good: Vec<&str> = t.split('.').collect();
        let bad: Vec<&str> = forged.split('.').collect();
        let spliced = format!("{}.{}.{}", good[0], bad[1], good[2]);
        assert!(verifier().verify(&spliced, 1_000_000).is_err());
        assert!(verifier().verify("not.a.token", 1_000_000).is_err());
    }

    #[test]
    fn anonymous_tokens_name_nobody() {
        let t = issuer()
            .issue("", access("public/x", &["pull"]), 1_000_000, "j")
            .unwrap();
        let p = verifier().verify(&t, 1_000_000).unwrap();
        assert_eq!(p.user, None);
        assert_eq!(p.scope.unwrap().len(), 1);
    }

    #[test]
    fn scopes_and_grants() {
        let (name, actions) = parse_scope("repository:team/app:pull,push").unwrap();
        assert_eq!(name.as_str(), "team/app");
        assert_eq!(actions, ["pull", "push"]);
        assert!(parse_scope("registry:catalog:*").is_none());
        let rights = Rights {
            pull: true,
            push: true,
            delete: false,
            overwrite: true,
        };
        assert_eq!(
            grantable(&["pull".into(), "push".into()], rights),
            ["pull", "push", "overwrite"]
        );
        assert_eq!(grantable(&["*".into()], Rights::PULL), ["pull"]);
        assert!(grantable(&["delete".into()], rights).is_empty());
    }
}
