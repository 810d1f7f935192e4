//! Client authentication: who a request comes from (HTTP basic against an
//! htpasswd file or a robot's token, or a bearer token), and the token
//! service that hands out bearer tokens. What a principal may do is
//! kura-core's access policy ([`kura_core::access`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use base64::Engine;
use http::HeaderMap;
use kura_core::access::token::{self, ResourceActions, TokenIssuer, TokenVerifier};
use kura_core::access::{AccessPolicy, AccessRule, Principal, Rights, Subject};
use kura_core::pattern::Pattern;
use sha2::Digest as _;

use crate::config::{AuthConfig, ScopeSection};

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

/// A robot account: a token (only its hash is kept), limits, an expiry.
struct Robot {
    name: String,
    token_sha256: [u8; 32],
    scope: Option<Vec<(Pattern, Rights)>>,
    expires: Option<SystemTime>,
}

/// How bearer tokens are checked, and where clients get them.
pub struct Tokens {
    /// `None` for an external issuer's tokens: kura issues none.
    pub issuer: Option<TokenIssuer>,
    pub verifier: TokenVerifier,
    /// Where clients are sent for a token; `None`: kura's own
    /// `/auth/token` on the address the client used.
    pub realm: Option<String>,
    pub service: String,
}

/// Why credentials were refused.
#[derive(Debug)]
pub struct BadCredentials;

/// Decides who sent a request.
pub struct Authenticator {
    htpasswd: Option<(PathBuf, RwLock<Htpasswd>)>,
    robots: Vec<Robot>,
    /// User → the groups they are in.
    groups: HashMap<String, Vec<String>>,
    pub policy: AccessPolicy,
    pub realm: String,
    pub tokens: Option<Tokens>,
    /// bcrypt costs tens of milliseconds by design; clients send the same
    /// credentials on every request, so successful checks are remembered
    /// briefly (keyed by a hash of the header, never the password itself).
    verified: Mutex<HashMap<[u8; 32], (Instant, String)>>,
}

const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// The policy of a file without rules: authenticated callers may do
/// anything, anonymous ones pull if `anonymous_pull`.
fn default_rules(anonymous_pull: bool) -> Vec<AccessRule> {
    let all = Pattern::parse("**").expect("literal pattern");
    let mut rules = vec![AccessRule::new(
        all.clone(),
        vec![Subject::Authenticated],
        Rights::ALL,
    )];
    if anonymous_pull {
        rules.push(AccessRule::new(all, vec![Subject::Anonymous], Rights::PULL));
    }
    rules
}

fn scope(sections: &[ScopeSection], at: &str) -> anyhow::Result<Option<Vec<(Pattern, Rights)>>> {
    if sections.is_empty() {
        return Ok(None);
    }
    sections
        .iter()
        .map(|s| {
            Ok((
                Pattern::parse(&s.repositories).map_err(|e| anyhow::anyhow!("{at}: {e}"))?,
                Rights::parse(s.rights.iter().map(String::as_str))
                    .map_err(|e| anyhow::anyhow!("{at}: {e}"))?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

impl Authenticator {
    /// From the `auth` section. `data_dir`: where kura's token signing
    /// key lives when the file names none (created there if missing);
    /// `None` checks the section without touching the disk (an
    /// in-memory key).
    pub fn from_config(a: &AuthConfig, data_dir: Option<&Path>) -> anyhow::Result<Self> {
        let htpasswd = match &a.htpasswd {
            Some(p) => Some((
                p.clone(),
                RwLock::new(
                    Htpasswd::load(p).with_context(|| format!("htpasswd {}", p.display()))?,
                ),
            )),
            None => None,
        };
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        for (group, members) in &a.groups {
            for m in members {
                groups.entry(m.clone()).or_default().push(group.clone());
            }
        }
        let rules = if a.rules.is_empty() {
            default_rules(a.anonymous_pull)
        } else {
            let mut rules = Vec::new();
            for (i, r) in a.rules.iter().enumerate() {
                let at = format!("rules[{i}]");
                let subjects = r
                    .subjects
                    .iter()
                    .map(|s| Subject::parse(s).map_err(|e| anyhow::anyhow!("{at}.subjects: {e}")))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                rules.push(AccessRule::new(
                    Pattern::parse(&r.repositories)
                        .map_err(|e| anyhow::anyhow!("{at}.repositories: {e}"))?,
                    subjects,
                    Rights::parse(r.rights.iter().map(String::as_str))
                        .map_err(|e| anyhow::anyhow!("{at}.rights: {e}"))?,
                ));
            }
            if a.anonymous_pull {
                bail!("anonymous_pull and rules: say it in the rules (subjects: [anonymous], rights: [pull])");
            }
            rules
        };
        let mut robots = Vec::new();
        for (i, r) in a.robots.iter().enumerate() {
            let at = format!("robots[{i}]");
            let raw = hex::decode(r.token_sha256.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .with_context(|| format!("{at}.token_sha256: 64 hex digits expected"))?;
            let expires = r
                .expires
                .as_deref()
                .map(|e| {
                    humantime::parse_rfc3339_weak(e)
                        .with_context(|| format!("{at}.expires: {e:?} is not an RFC 3339 time"))
                })
                .transpose()?;
            robots.push(Robot {
                name: r.name.clone(),
                token_sha256: raw.try_into().expect("32 bytes"),
                scope: scope(&r.scope, &format!("{at}.scope"))?,
                expires,
            });
        }
        let tokens = match &a.token {
            None => None,
            Some(t) => Some(Self::tokens(t, data_dir)?),
        };
        if htpasswd.is_none()
            && robots.is_empty()
            && tokens.as_ref().is_none_or(|t| t.issuer.is_some())
        {
            bail!(
                "no way to authenticate: give htpasswd, robots, or token.issuer_keys / token.jwks"
            );
        }
        Ok(Authenticator {
            htpasswd,
            robots,
            groups,
            policy: AccessPolicy::new(rules),
            realm: a.realm.clone(),
            tokens,
            verified: Mutex::new(HashMap::new()),
        })
    }

    fn tokens(t: &crate::config::TokenSection, data_dir: Option<&Path>) -> anyhow::Result<Tokens> {
        let external = !t.issuer_keys.is_empty() || t.jwks.is_some();
        if external {
            if t.realm.is_none() {
                bail!(
                    "token: an external issuer needs its realm (the URL clients get tokens from)"
                );
            }
            let mut v = TokenVerifier::new(&t.issuer, &t.service);
            for k in &t.issuer_keys {
                let pem = std::fs::read(k)
                    .with_context(|| format!("token.issuer_keys {}", k.display()))?;
                v = v
                    .with_pem(&pem, None)
                    .with_context(|| format!("token.issuer_keys {}", k.display()))?;
            }
            if let Some(j) = &t.jwks {
                let json =
                    std::fs::read(j).with_context(|| format!("token.jwks {}", j.display()))?;
                v = v
                    .with_jwks(&json)
                    .with_context(|| format!("token.jwks {}", j.display()))?;
            }
            return Ok(Tokens {
                issuer: None,
                verifier: v,
                realm: t.realm.clone(),
                service: t.service.clone(),
            });
        }
        let pem = match (&t.signing_key, data_dir) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("token.signing_key {}", path.display()))?,
            (None, Some(dir)) => {
                let path = dir.join("token-signing-key.pem");
                match std::fs::read_to_string(&path) {
                    Ok(pem) => pem,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let pem = rcgen::KeyPair::generate()?.serialize_pem();
                        std::fs::create_dir_all(dir)?;
                        write_private(&path, &pem)?;
                        tracing::info!(key = %path.display(), "generated the token signing key");
                        pem
                    }
                    Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
                }
            }
            (None, None) => rcgen::KeyPair::generate()?.serialize_pem(),
        };
        let pair = rcgen::KeyPair::from_pem(&pem).context("token signing key")?;
        let public = pair.public_key_pem();
        let kid = hex::encode(&sha2::Sha256::digest(public.as_bytes())[..8]);
        let issuer = TokenIssuer::new(pem.as_bytes(), &kid, &t.issuer, &t.service, t.lifetime_secs)
            .context("token signing key (P-256, PKCS#8 PEM)")?;
        let verifier =
            TokenVerifier::new(&t.issuer, &t.service).with_pem(public.as_bytes(), Some(&kid))?;
        Ok(Tokens {
            issuer: Some(issuer),
            verifier,
            realm: t.realm.clone(),
            service: t.service.clone(),
        })
    }

    /// Reload the htpasswd file if it changed since `seen` (its
    /// modification time and length); returns what was seen now.
    pub fn reload_htpasswd(&self, seen: Option<(SystemTime, u64)>) -> Option<(SystemTime, u64)> {
        let (path, users) = self.htpasswd.as_ref()?;
        let meta = std::fs::metadata(path).ok()?;
        let now = (meta.modified().ok()?, meta.len());
        if seen.is_some() && seen != Some(now) {
            match Htpasswd::load(path) {
                Ok(h) => {
                    *users.write().unwrap_or_else(|p| p.into_inner()) = h;
                    self.verified
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                    tracing::info!(file = %path.display(), "reloaded htpasswd");
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "htpasswd not reloaded; keeping the previous users")
                }
            }
        }
        Some(now)
    }

    /// Who sent a request with `headers`: anonymous without credentials;
    /// an error for credentials that do not check out.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, BadCredentials> {
        let Some(value) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(Principal::anonymous());
        };
        // Scheme names are case-insensitive (RFC 9110 §11.1): `BASIC` is
        // Basic too.
        let Some((scheme, credentials)) = value.trim_start().split_once(' ') else {
            return Err(BadCredentials);
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            let tokens = self.tokens.as_ref().ok_or(BadCredentials)?;
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut p = tokens
                .verifier
                .verify(credentials.trim(), now)
                .map_err(|_| BadCredentials)?;
            p.groups = self.groups_of(p.user.as_deref());
            return Ok(p);
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(BadCredentials);
        }
        self.basic(value, credentials)
    }

    fn groups_of(&self, user: Option<&str>) -> Vec<String> {
        user.and_then(|u| self.groups.get(u))
            .cloned()
            .unwrap_or_default()
    }

    fn basic(&self, header: &str, encoded: &str) -> Result<Principal, BadCredentials> {
        let key: [u8; 32] = sha2::Sha256::digest(header.as_bytes()).into();
        {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, user)) = cache.get(&key) {
                if at.elapsed() < VERIFIED_TTL {
                    let user = user.clone();
                    drop(cache);
                    return Ok(self.principal_of(&user));
                }
                cache.remove(&key);
            }
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| BadCredentials)?;
        let text = String::from_utf8(raw).map_err(|_| BadCredentials)?;
        let (user, password) = text.split_once(':').ok_or(BadCredentials)?;
        let ok = if let Some(robot) = self.robots.iter().find(|r| r.name == user) {
            let digest: [u8; 32] = sha2::Sha256::digest(password.as_bytes()).into();
            let same = digest
                .iter()
                .zip(robot.token_sha256.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            // Expiry is checked on every request, not cached.
            same && robot.expires.is_none_or(|e| SystemTime::now() < e)
        } else {
            let users = self
                .htpasswd
                .as_ref()
                .map(|(_, u)| u.read().unwrap_or_else(|p| p.into_inner()));
            let hash = users.as_ref().and_then(|u| u.users.get(user).cloned());
            hash.is_some_and(|h| bcrypt::verify(password, &h).unwrap_or(false))
        };
        if !ok {
            return Err(BadCredentials);
        }
        if !self.robots.iter().any(|r| r.name == user) {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), user.to_owned()));
        }
        Ok(self.principal_of(user))
    }

    fn principal_of(&self, user: &str) -> Principal {
        let mut p = Principal::user(user, self.groups_of(Some(user)));
        if let Some(robot) = self.robots.iter().find(|r| r.name == user) {
            p.scope = robot.scope.clone();
        }
        p
    }

    /// The `WWW-Authenticate` value of a 401 for a request to `path`
    /// (method `method`) that arrived for `host` (its Host header).
    pub fn challenge(
        &self,
        method: &http::Method,
        path: &str,
        host: Option<&str>,
        https: bool,
    ) -> String {
        let Some(t) = &self.tokens else {
            return format!("Basic realm=\"{}\"", self.realm.replace('"', ""));
        };
        let realm = t.realm.clone().unwrap_or_else(|| {
            let scheme = if https { "https" } else { "http" };
            format!("{scheme}://{}/auth/token", host.unwrap_or("localhost"))
        });
        let mut value = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            realm.replace('"', ""),
            t.service.replace('"', "")
        );
        let route = kura_core::wire::Route::parse(path).ok().flatten();
        if let Some(name) = route.as_ref().and_then(|r| r.name()) {
            let actions = match kura_core::wire::required_access(method, route.as_ref()) {
                kura_core::wire::Access::Pull => "pull",
                kura_core::wire::Access::Push => "pull,push",
                kura_core::wire::Access::Delete => "delete",
            };
            value.push_str(&format!(",scope=\"repository:{name}:{actions}\""));
        }
        value
    }

    /// The token service: a token for `who` granting what they may do of
    /// each `scope` asked for (`repository:NAME:ACTIONS`). Scopes they may
    /// do nothing in are left out, as the Docker token spec has it.
    pub fn issue(&self, who: &Principal, scopes: &[String]) -> anyhow::Result<(String, u64)> {
        let tokens = self
            .tokens
            .as_ref()
            .context("token auth is not configured")?;
        let issuer = tokens
            .issuer
            .as_ref()
            .context("tokens come from the external issuer")?;
        let mut access: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in scopes.iter().flat_map(|s| s.split(' ')) {
            let Some((name, requested)) = token::parse_scope(s) else {
                continue;
            };
            let granted = token::grantable(&requested, self.policy.rights(who, name.as_str()));
            if !granted.is_empty() {
                let entry = access.entry(name.to_string()).or_default();
                for a in granted {
                    if !entry.contains(&a) {
                        entry.push(a);
                    }
                }
            }
        }
        let access = access
            .into_iter()
            .map(|(name, actions)| ResourceActions {
                kind: "repository".into(),
                name,
                actions,
            })
            .collect();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).context("randomness for the token id")?;
        let subject = who.user.clone().unwrap_or_default();
        let t = issuer.issue(&subject, access, now, &hex::encode(jti))?;
        Ok((t, issuer.lifetime_secs()))
    }
}

/// A new robot token and the `auth.robots` entry for it (YAML), for
/// `kura token new`. The token is 32 random bytes, hex; only its SHA-256
/// goes into the configuration.
pub fn new_robot(name: &str, scopes: &[String], expires: Option<&str>) -> anyhow::Result<String> {
    if name.is_empty() || name.contains(':') {
        bail!("a robot name must be non-empty and without ':' (it is the user name of basic auth)");
    }
    if let Some(e) = expires {
        humantime::parse_rfc3339_weak(e).with_context(|| format!("--expires {e:?}"))?;
    }
    let mut entry = format!("  - name: {name}\n    token_sha256: {{sha}}\n");
    if !scopes.is_empty() {
        entry.push_str("    scope:\n");
        for s in scopes {
            let (repos, rights) = s
                .rsplit_once(':')
                .with_context(|| format!("--scope {s:?}: expected REPOSITORIES:RIGHTS"))?;
            Pattern::parse(repos).map_err(|e| anyhow::anyhow!("--scope {s:?}: {e}"))?;
            Rights::parse(rights.split(',')).map_err(|e| anyhow::anyhow!("--scope {s:?}: {e}"))?;
            entry.push_str(&format!(
                "      - repositories: \"{repos}\"\n        rights: [{rights}]\n"
            ));
        }
    }
    if let Some(e) = expires {
        entry.push_str(&format!("    expires: {e}\n"));
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).context("randomness for the token")?;
    let token = hex::encode(raw);
    let sha = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    Ok(format!(
        "token (shown once; the CI system logs in as {name} with it as the password):\n{token}\n\nadd to auth.robots in the configuration:\n{}",
        entry.replace("{sha}", &sha)
    ))
}

/// Write a private key readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    o.mode(0o600);
    o.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use kura_core::access::Decision;

    fn header(scheme: &str, user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(
            http::header::AUTHORIZATION,
            format!("{scheme} {v}").parse().unwrap(),
        );
        h
    }

    fn auth(yaml: &str) -> (Authenticator, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("secret", 4).unwrap();
        let pw = dir.path().join("htpasswd");
        std::fs::write(&pw, format!("# users\nalice:{hash}\nbob:{hash}\n")).unwrap();
        let yaml = format!("htpasswd: {}\n{yaml}", pw.display());
        let a: AuthConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        (
            Authenticator::from_config(&a, Some(dir.path())).unwrap(),
            dir,
        )
    }

    #[test]
    fn scheme_names_are_case_insensitive() {
        let (a, _d) = auth("");
        for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
            let p = a.authenticate(&header(scheme, "alice", "secret")).unwrap();
            assert_eq!(p.user.as_deref(), Some("alice"), "{scheme}");
        }
        for scheme in ["Bearer", "Basicx", "Digest"] {
            assert!(
                a.authenticate(&header(scheme, "alice", "secret")).is_err(),
                "{scheme}"
            );
        }
    }

    #[test]
    fn passwords_robots_and_default_rules() {
        let token = "robot-token-123";
        let sha = hex::encode(sha2::Sha256::digest(token.as_bytes()));
        let (a, _d) = auth(&format!(
            "anonymous_pull: true\nrobots:\n  - name: ci\n    token_sha256: {sha}\n    scope:\n      - repositories: ci/**\n        rights: [pull, push]\n  - name: old\n    token_sha256: {sha}\n    expires: 2020-01-01T00:00:00Z\n"
        ));
        assert!(a.authenticate(&header("Basic", "alice", "wrong")).is_err());
        assert!(a.authenticate(&header("Basic", "carol", "secret")).is_err());
        assert!(a.authenticate(&header("Basic", "alice", "secret")).is_ok());
        assert!(
            a.authenticate(&header("Basic", "alice", "secret")).is_ok(),
            "cached"
        );
        let ci = a.authenticate(&header("Basic", "ci", token)).unwrap();
        assert!(a.authenticate(&header("Basic", "ci", "nope")).is_err());
        assert!(
            a.authenticate(&header("Basic", "old", token)).is_err(),
            "expired"
        );
        let p = &a.policy;
        assert!(matches!(
            p.decide(&ci, &Method::PUT, "/v2/ci/app/manifests/v1"),
            Decision::Allow(_)
        ));
        assert_eq!(
            p.decide(&ci, &Method::PUT, "/v2/other/manifests/v1"),
            Decision::Deny
        );
        let anon = Principal::anonymous();
        assert!(matches!(
            p.decide(&anon, &Method::GET, "/v2/x/manifests/v1"),
            Decision::Allow(_)
        ));
        assert_eq!(
            p.decide(&anon, &Method::PUT, "/v2/x/manifests/v1"),
            Decision::Challenge
        );
    }

    #[test]
    fn issued_tokens_carry_what_the_rules_allow() {
        let (a, dir) = auth(
            "groups:\n  team: [alice]\nrules:\n  - repositories: team/**\n    subjects: [group:team]\n    rights: [pull, push]\n  - repositories: public/**\n    subjects: [\"*\"]\n    rights: [pull]\ntoken: {}\n",
        );
        assert!(dir.path().join("token-signing-key.pem").exists());
        let alice = a.authenticate(&header("Basic", "alice", "secret")).unwrap();
        let (t, lifetime) = a
            .issue(
                &alice,
                &[
                    "repository:team/app:pull,push".into(),
                    "repository:secret/x:pull".into(),
                ],
            )
            .unwrap();
        assert_eq!(lifetime, 300);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        let bearer = a.authenticate(&h).unwrap();
        assert_eq!(bearer.user.as_deref(), Some("alice"));
        assert!(matches!(
            a.policy
                .decide(&bearer, &Method::PUT, "/v2/team/app/manifests/v1"),
            Decision::Allow(_)
        ));
        // Not asked for, so not in the token, though the rules allow it.
        assert_eq!(
            a.policy
                .decide(&bearer, &Method::GET, "/v2/team/web/manifests/v1"),
            Decision::Deny
        );
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}x").parse().unwrap(),
        );
        assert!(a.authenticate(&h).is_err());
        let c = a.challenge(
            &Method::PUT,
            "/v2/team/app/manifests/v1",
            Some("reg:5000"),
            false,
        );
        assert_eq!(
            c,
            "Bearer realm=\"http://reg:5000/auth/token\",service=\"kura\",scope=\"repository:team/app:pull,push\""
        );
        // The same key on the next start.
        let (b, _) = (
            Authenticator::from_config(
                &serde_yaml_ng::from_str(&format!(
                    "htpasswd: {}\ntoken: {{}}\n",
                    dir.path().join("htpasswd").display()
                ))
                .unwrap(),
                Some(dir.path()),
            )
            .unwrap(),
            (),
        );
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        assert!(b.authenticate(&h).is_ok());
    }

    #[test]
    fn htpasswd_reloads_when_it_changes() {
        let (a, dir) = auth("");
        let seen = a.reload_htpasswd(None);
        assert!(a.authenticate(&header("Basic", "carol", "pw")).is_err());
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(dir.path().join("htpasswd"), format!("carol:{hash}\n")).unwrap();
        a.reload_htpasswd(seen);
        assert!(a.authenticate(&header("Basic", "carol", "pw")).is_ok());
        assert!(
            a.authenticate(&header("Basic", "alice", "secret")).is_err(),
            "alice was removed"
        );
    }

    #[test]
    fn new_robot_tokens_log_in_as_their_entry_says() {
        let out = new_robot(
            "ci",
            &["ci/**:pull,push".into()],
            Some("2099-01-01T00:00:00Z"),
        )
        .unwrap();
        let token = out.lines().nth(1).unwrap().to_owned();
        let yaml = out.split("configuration:\n").nth(1).unwrap();
        let (a, _d) = auth(&format!("robots:\n{yaml}"));
        let who = a.authenticate(&header("Basic", "ci", &token)).unwrap();
        assert_eq!(who.user.as_deref(), Some("ci"));
        assert!(a.policy.rights(&who, "ci/app").push);
        assert!(!a.policy.rights(&who, "other/app").pull);
        assert!(new_robot("a:b", &[], None).is_err());
        assert!(new_robot("ci", &["nope".into()], None).is_err());
    }

    #[test]
    fn rejects_non_bcrypt() {
        assert!(Htpasswd::parse("alice:{SHA}abc\n").is_err());
        assert!(Htpasswd::parse("alice:$apr1$x$y\n").is_err());
        assert!(Htpasswd::parse("garbage\n").is_err());
    }
}
