//! Who may do what to which repository: access rules over repository
//! globs, for every host (the native binary, the Worker, an embedder).
//!
//! A host authenticates a request its own way (a password, a token) into
//! a [`Principal`]; [`AccessPolicy::rights`] says what that principal may
//! do in a repository, as the union of every rule that matches the
//! repository and names the principal, narrowed by the scope of a token
//! it presented. [`AccessPolicy::decide`] turns that into an answer for
//! one request; the rights granted travel with the request
//! ([`Granted`], in its extensions) so that the registry can refuse what
//! only it can tell apart: moving an existing tag needs the `overwrite`
//! right on top of `push`.

use std::fmt;

#[cfg(feature = "tokens")]
pub mod token;

use http::Method;

use crate::model::pattern::Pattern;
use crate::model::reference::RepositoryName;
use crate::wire::{self, Route};

/// What may be done in a repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Rights {
    /// Read manifests, blobs, tag lists, referrers.
    pub pull: bool,
    /// Upload blobs, push manifests, create tags.
    pub push: bool,
    /// Delete manifests, tags and blobs.
    pub delete: bool,
    /// Point an existing tag at another manifest.
    pub overwrite: bool,
}

impl Rights {
    /// Nothing.
    pub const NONE: Rights = Rights {
        pull: false,
        push: false,
        delete: false,
        overwrite: false,
    };
    /// Pull only.
    pub const PULL: Rights = Rights {
        pull: true,
        ..Rights::NONE
    };
    /// Everything.
    pub const ALL: Rights = Rights {
        pull: true,
        push: true,
        delete: true,
        overwrite: true,
    };

    /// Rights from names (`pull`, `push`, `delete`, `overwrite`, or `*`
    /// for all); `None` names the first word that is none of those.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Rights, String> {
        let mut r = Rights::NONE;
        for n in names {
            match n.trim() {
                "pull" => r.pull = true,
                "push" => r.push = true,
                "delete" => r.delete = true,
                "overwrite" => r.overwrite = true,
                "*" => r = Rights::ALL,
                other => {
                    return Err(format!(
                        "{other:?} is not a right (pull, push, delete, overwrite, *)"
                    ))
                }
            }
        }
        Ok(r)
    }

    /// Both.
    pub fn union(self, o: Rights) -> Rights {
        Rights {
            pull: self.pull || o.pull,
            push: self.push || o.push,
            delete: self.delete || o.delete,
            overwrite: self.overwrite || o.overwrite,
        }
    }

    /// What both allow.
    pub fn intersect(self, o: Rights) -> Rights {
        Rights {
            pull: self.pull && o.pull,
            push: self.push && o.push,
            delete: self.delete && o.delete,
            overwrite: self.overwrite && o.overwrite,
        }
    }

    /// Whether these include what `access` needs.
    pub fn allow(self, access: wire::Access) -> bool {
        match access {
            wire::Access::Pull => self.pull,
            wire::Access::Push => self.push,
            wire::Access::Delete => self.delete,
        }
    }

    /// The names of the rights held, as Docker token scopes spell actions
    /// (`pull`, `push`, `delete`; `overwrite` is kura's own).
    pub fn names(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (held, name) in [
            (self.pull, "pull"),
            (self.push, "push"),
            (self.delete, "delete"),
            (self.overwrite, "overwrite"),
        ] {
            if held {
                out.push(name);
            }
        }
        out
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// Whom a rule is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Everyone, without credentials too (`*`).
    Anyone,
    /// Anyone who authenticated (`authenticated`).
    Authenticated,
    /// Requests without credentials (`anonymous`).
    Anonymous,
    /// One user or robot (`user:NAME`, or a bare name).
    User(String),
    /// Members of a group (`group:NAME`).
    Group(String),
}

impl Subject {
    /// `*`, `authenticated`, `anonymous`, `group:NAME`, `user:NAME` or a
    /// bare user name.
    pub fn parse(s: &str) -> Result<Subject, String> {
        let s = s.trim();
        Ok(match s {
            "" => return Err("an empty subject".into()),
            "*" => Subject::Anyone,
            "authenticated" => Subject::Authenticated,
            "anonymous" => Subject::Anonymous,
            _ => match s.split_once(':') {
                Some(("group", g)) if !g.is_empty() => Subject::Group(g.to_owned()),
                Some(("user", u)) if !u.is_empty() => Subject::User(u.to_owned()),
                Some(_) => return Err(format!("{s:?}: expected group:NAME or user:NAME")),
                None => Subject::User(s.to_owned()),
            },
        })
    }

    fn covers(&self, who: &Principal) -> bool {
        match self {
            Subject::Anyone => true,
            Subject::Authenticated => who.user.is_some(),
            Subject::Anonymous => who.user.is_none(),
            Subject::User(u) => who.user.as_deref() == Some(u.as_str()),
            Subject::Group(g) => who.user.is_some() && who.groups.iter().any(|m| m == g),
        }
    }
}

/// One rule: `subjects` may do `rights` in repositories matching
/// `repositories`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AccessRule {
    /// The repositories (a glob, as the client names them: a mirrored
    /// repository with its registry prefix, `docker.io/library/*`).
    pub repositories: Pattern,
    /// Whom it is for.
    pub subjects: Vec<Subject>,
    /// What they may do.
    pub rights: Rights,
}

impl AccessRule {
    /// `subjects` may do `rights` in `repositories`.
    pub fn new(repositories: Pattern, subjects: Vec<Subject>, rights: Rights) -> Self {
        AccessRule {
            repositories,
            subjects,
            rights,
        }
    }
}

/// Who sent a request, as the host authenticated it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The user or robot; `None` without credentials.
    pub user: Option<String>,
    /// The groups the user is in.
    pub groups: Vec<String>,
    /// A token's limits: in repositories matching the pattern, at most the
    /// rights given (and nothing elsewhere). `None`: no limit beyond the
    /// rules (a password).
    pub scope: Option<Vec<(Pattern, Rights)>>,
}

impl Principal {
    /// Nobody: a request without credentials.
    pub fn anonymous() -> Principal {
        Principal::default()
    }

    /// `user`, in `groups`, with no token limits.
    pub fn user(user: impl Into<String>, groups: Vec<String>) -> Principal {
        Principal {
            user: Some(user.into()),
            groups,
            scope: None,
        }
    }
}

/// The rights a request was granted, put in its extensions by the host
/// that checked them; the registry refuses what they do not cover and
/// only it can see (moving an existing tag). A request without one was
/// not access-controlled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted(pub Rights);

/// What to answer a request, from [`AccessPolicy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on, with these rights in the repository (if it names one).
    Allow(Rights),
    /// 401 with a challenge: credentials (other ones) may help.
    Challenge,
    /// 403 `DENIED`: the principal is known and may not.
    Deny,
}

/// The rules of a registry.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// Every rule; what a principal may do is the union of those that
    /// apply.
    pub rules: Vec<AccessRule>,
}

impl AccessPolicy {
    /// Rules `rules`.
    pub fn new(rules: Vec<AccessRule>) -> Self {
        AccessPolicy { rules }
    }

    /// What `who` may do in `repository`.
    pub fn rights(&self, who: &Principal, repository: &str) -> Rights {
        let granted = self
            .rules
            .iter()
            .filter(|r| r.repositories.matches(repository))
            .filter(|r| r.subjects.iter().any(|s| s.covers(who)))
            .fold(Rights::NONE, |acc, r| acc.union(r.rights));
        match &who.scope {
            None => granted,
            Some(scope) => {
                let allowed = scope
                    .iter()
                    .filter(|(p, _)| p.matches(repository))
                    .fold(Rights::NONE, |acc, (_, r)| acc.union(*r));
                granted.intersect(allowed)
            }
        }
    }

    /// Whether `who` may pull every repository (a rule for `**` says
    /// so): then the catalog, which names them all, is theirs to read.
    fn pulls_everywhere(&self, who: &Principal) -> bool {
        who.scope.is_none()
            && self.rules.iter().any(|r| {
                r.repositories.as_str() == "**"
                    && r.rights.pull
                    && r.subjects.iter().any(|s| s.covers(who))
            })
    }

    /// The answer to `method` on `path` from `who`. The catalog (which
    /// names every repository) is for principals who authenticated, or
    /// who may pull everywhere; `/v2/` challenges anonymous callers so
    /// that clients send their credentials; a repository's routes need
    /// the right the request needs there.
    pub fn decide(&self, who: &Principal, method: &Method, path: &str) -> Decision {
        let route = Route::parse(path).ok().flatten();
        let access = wire::required_access(method, route.as_ref());
        let refuse = || {
            if who.user.is_none() {
                Decision::Challenge
            } else {
                Decision::Deny
            }
        };
        let name: Option<&RepositoryName> = route.as_ref().and_then(Route::name);
        match (route.as_ref(), name) {
            (_, Some(name)) => {
                let rights = self.rights(who, name.as_str());
                if rights.allow(access) {
                    Decision::Allow(rights)
                } else {
                    refuse()
                }
            }
            // `/v2/` (the version check clients start with) challenges
            // callers without credentials, so that clients learn how to
            // authenticate.
            (Some(Route::Base), None) if who.user.is_none() => Decision::Challenge,
            (Some(Route::Base), None) => Decision::Allow(Rights::NONE),
            (Some(Route::Catalog), None) => {
                if who.user.is_some() || self.pulls_everywhere(who) {
                    Decision::Allow(Rights::NONE)
                } else {
                    Decision::Challenge
                }
            }
            // Not a registry path: the registry answers it (404).
            _ => Decision::Allow(Rights::NONE),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn rule(repos: &str, subjects: &[&str], rights: &[&str]) -> AccessRule {
        AccessRule::new(
            Pattern::parse(repos).unwrap(),
            subjects
                .iter()
                .map(|s| Subject::parse(s).unwrap())
                .collect(),
            Rights::parse(rights.iter().copied()).unwrap(),
        )
    }

    fn policy() -> AccessPolicy {
        AccessPolicy::new(vec![
            rule("public/**", &["*"], &["pull"]),
            rule("docker.io/**", &["*"], &["pull"]),
            rule("team-a/**", &["group:team-a"], &["pull", "push"]),
            rule("team-a/**", &["user:lead"], &["delete", "overwrite"]),
            rule("**", &["group:admins"], &["*"]),
        ])
    }

    fn alice() -> Principal {
        Principal::user("alice", vec!["team-a".into()])
    }

    #[test]
    fn rights_are_the_union_of_matching_rules() {
        let p = policy();
        assert_eq!(
            p.rights(&alice(), "team-a/api"),
            Rights::parse(["pull", "push"]).unwrap()
        );
        let lead = Principal::user("lead", vec!["team-a".into()]);
        assert_eq!(p.rights(&lead, "team-a/api"), Rights::ALL);
        assert_eq!(p.rights(&alice(), "team-b/api"), Rights::NONE);
        assert_eq!(p.rights(&Principal::anonymous(), "public/x"), Rights::PULL);
        assert_eq!(
            p.rights(&Principal::anonymous(), "team-a/api"),
            Rights::NONE
        );
        let admin = Principal::user("root", vec!["admins".into()]);
        assert_eq!(p.rights(&admin, "anything/at/all"), Rights::ALL);
    }

    #[test]
    fn a_token_scope_narrows_and_never_widens() {
        let p = policy();
        let mut ci = alice();
        ci.scope = Some(vec![(Pattern::parse("team-a/api").unwrap(), Rights::ALL)]);
        assert_eq!(
            p.rights(&ci, "team-a/api"),
            Rights::parse(["pull", "push"]).unwrap()
        );
        assert_eq!(
            p.rights(&ci, "team-a/web"),
            Rights::NONE,
            "outside the scope"
        );
        ci.scope = Some(vec![(Pattern::parse("**").unwrap(), Rights::PULL)]);
        assert_eq!(p.rights(&ci, "team-a/api"), Rights::PULL);
    }

    #[test]
    fn decisions_challenge_strangers_and_deny_the_known() {
        let p = policy();
        let anon = Principal::anonymous();
        assert_eq!(p.decide(&anon, &Method::GET, "/v2/"), Decision::Challenge);
        assert_eq!(
            p.decide(&anon, &Method::GET, "/v2/_catalog"),
            Decision::Challenge
        );
        assert!(matches!(
            p.decide(&anon, &Method::GET, "/v2/public/x/manifests/v1"),
            Decision::Allow(_)
        ));
        assert_eq!(
            p.decide(&anon, &Method::GET, "/v2/team-a/api/manifests/v1"),
            Decision::Challenge
        );
        assert_eq!(
            p.decide(&anon, &Method::PUT, "/v2/public/x/manifests/v1"),
            Decision::Challenge
        );
        assert_eq!(
            p.decide(&alice(), &Method::GET, "/v2/"),
            Decision::Allow(Rights::NONE)
        );
        assert!(matches!(
            p.decide(&alice(), &Method::POST, "/v2/team-a/api/blobs/uploads/"),
            Decision::Allow(r) if r.push && !r.overwrite
        ));
        assert_eq!(
            p.decide(&alice(), &Method::DELETE, "/v2/team-a/api/manifests/v1"),
            Decision::Deny
        );
        assert_eq!(
            p.decide(&alice(), &Method::PUT, "/v2/public/x/manifests/v1"),
            Decision::Deny,
            "public is pull-only for everyone"
        );
        // An upload session's cancel is part of a push.
        assert!(matches!(
            p.decide(
                &alice(),
                &Method::DELETE,
                "/v2/team-a/api/blobs/uploads/0123456789abcdef0123456789abcdef"
            ),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn parsing() {
        assert_eq!(
            Subject::parse("group:ci").unwrap(),
            Subject::Group("ci".into())
        );
        assert_eq!(Subject::parse("bob").unwrap(), Subject::User("bob".into()));
        assert!(Subject::parse("team:x").is_err());
        assert!(Subject::parse("group:").is_err());
        assert!(Rights::parse(["pull", "fly"]).is_err());
        assert_eq!(Rights::parse(["*"]).unwrap(), Rights::ALL);
        assert_eq!(Rights::ALL.to_string(), "pull,push,delete,overwrite");
    }
}
