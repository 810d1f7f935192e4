//! Which tags of a hosted repository to keep: retention rules, applied by
//! garbage collection, and immutable tags, enforced on every push.
//!
//! Rules combine the way zot's and Harbor's users expect: the first rule
//! whose repository pattern matches a repository governs it, and within
//! that rule a tag stays if *any* of its conditions keeps it (the newest
//! N, a name pattern, pushed or pulled recently). A rule with no tag
//! condition keeps every tag. Repositories no rule matches keep every
//! tag. Immutable tags are always kept.

use crate::model::pattern::Pattern;
use crate::model::reference::{RepositoryName, Tag};

/// Which tags of the repositories matching `repositories` garbage
/// collection keeps, and how old an untagged manifest there may grow.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetentionRule {
    /// The repositories this rule governs (a glob: `team-a/**`).
    pub repositories: Pattern,
    /// Keep the N most recently pushed tags.
    pub keep_newest: Option<usize>,
    /// Keep tags matching any of these globs (`v*`, `latest`).
    pub keep_tags: Vec<Pattern>,
    /// Keep tags pushed within this many milliseconds.
    pub keep_pushed_within_ms: Option<u64>,
    /// Keep tags pulled within this many milliseconds.
    pub keep_pulled_within_ms: Option<u64>,
    /// Untagged manifests are removed only once pushed at least this many
    /// milliseconds ago (and unreferenced for the collection's grace
    /// period); without it, the grace period alone decides.
    pub untagged_older_than_ms: Option<u64>,
}

impl RetentionRule {
    /// A rule for `repositories` that keeps every tag until conditions are
    /// set.
    pub fn new(repositories: Pattern) -> Self {
        RetentionRule {
            repositories,
            keep_newest: None,
            keep_tags: Vec::new(),
            keep_pushed_within_ms: None,
            keep_pulled_within_ms: None,
            untagged_older_than_ms: None,
        }
    }

    /// Whether the rule says anything about tags (else it keeps them all).
    pub fn selects_tags(&self) -> bool {
        self.keep_newest.is_some()
            || !self.keep_tags.is_empty()
            || self.keep_pushed_within_ms.is_some()
            || self.keep_pulled_within_ms.is_some()
    }
}

/// Tags matching `tags` in repositories matching `repositories` never
/// move once pushed: a push that would point one at another manifest, and
/// a DELETE of one, are refused with `DENIED`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImmutableTags {
    /// The repositories (a glob).
    pub repositories: Pattern,
    /// The tags (a glob).
    pub tags: Pattern,
}

impl ImmutableTags {
    /// Tags matching `tags` in repositories matching `repositories`.
    pub fn new(repositories: Pattern, tags: Pattern) -> Self {
        ImmutableTags { repositories, tags }
    }
}

/// The rule governing `name`: the first that matches.
pub(crate) fn rule_for<'a>(
    rules: &'a [RetentionRule],
    name: &RepositoryName,
) -> Option<&'a RetentionRule> {
    rules.iter().find(|r| r.repositories.matches(name.as_str()))
}

/// Whether `tag` of `name` is immutable.
pub(crate) fn is_immutable(rules: &[ImmutableTags], name: &RepositoryName, tag: &Tag) -> bool {
    rules
        .iter()
        .any(|r| r.repositories.matches(name.as_str()) && r.tags.matches(tag.as_str()))
}

/// A tag as retention sees it.
#[derive(Debug, Clone)]
pub(crate) struct TagFacts {
    pub(crate) tag: Tag,
    /// When it was last pushed (its object's write time); 0 if unknown.
    pub(crate) pushed_ms: u64,
    /// When it was last pulled; 0 if never recorded.
    pub(crate) pulled_ms: u64,
    pub(crate) immutable: bool,
}

/// The tags `rule` removes from `tags`, with the reason each goes.
pub(crate) fn tags_to_remove(rule: &RetentionRule, tags: &[TagFacts], now_ms: u64) -> Vec<Tag> {
    if !rule.selects_tags() {
        return Vec::new();
    }
    // Newest first; ties (storage without write times) by name, so the
    // choice is stable from pass to pass.
    let mut by_age: Vec<&TagFacts> = tags.iter().collect();
    by_age.sort_by(|a, b| {
        b.pushed_ms
            .cmp(&a.pushed_ms)
            .then_with(|| a.tag.as_str().cmp(b.tag.as_str()))
    });
    let within = |at: u64, limit: Option<u64>| {
        limit.is_some_and(|l| at != 0 && now_ms.saturating_sub(at) <= l)
    };
    by_age
        .iter()
        .enumerate()
        .filter(|(rank, t)| {
            let kept = t.immutable
                || rule.keep_newest.is_some_and(|n| *rank < n)
                || rule.keep_tags.iter().any(|p| p.matches(t.tag.as_str()))
                || within(t.pushed_ms, rule.keep_pushed_within_ms)
                || within(t.pulled_ms, rule.keep_pulled_within_ms);
            !kept
        })
        .map(|(_, t)| t.tag.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;

    fn facts(tag: &str, pushed_days_ago: u64, pulled_days_ago: Option<u64>) -> TagFacts {
        let now = 100 * DAY;
        TagFacts {
            tag: Tag::parse(tag).unwrap(),
            pushed_ms: now - pushed_days_ago * DAY,
            pulled_ms: pulled_days_ago.map_or(0, |d| now - d * DAY),
            immutable: false,
        }
    }

    fn removed(rule: &RetentionRule, tags: &[TagFacts]) -> Vec<String> {
        let mut out: Vec<String> = tags_to_remove(rule, tags, 100 * DAY)
            .into_iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        out.sort();
        out
    }

    fn rule() -> RetentionRule {
        RetentionRule::new(Pattern::parse("team/**").unwrap())
    }

    #[test]
    fn any_condition_keeps_a_tag() {
        let tags = [
            facts("ci-5", 1, None),
            facts("ci-4", 2, None),
            facts("ci-3", 3, None),
            facts("ci-2", 40, Some(1)),
            facts("ci-1", 50, None),
            facts("v1.0", 90, None),
        ];
        let mut r = rule();
        r.keep_newest = Some(2);
        assert_eq!(removed(&r, &tags), ["ci-1", "ci-2", "ci-3", "v1.0"]);
        r.keep_tags = vec![Pattern::parse("v*").unwrap()];
        assert_eq!(removed(&r, &tags), ["ci-1", "ci-2", "ci-3"]);
        r.keep_pulled_within_ms = Some(7 * DAY);
        assert_eq!(removed(&r, &tags), ["ci-1", "ci-3"]);
        r.keep_pushed_within_ms = Some(30 * DAY);
        assert_eq!(removed(&r, &tags), ["ci-1"]);
    }

    #[test]
    fn a_rule_without_tag_conditions_keeps_every_tag() {
        let mut r = rule();
        r.untagged_older_than_ms = Some(DAY);
        assert!(removed(&r, &[facts("old", 99, None)]).is_empty());
    }

    #[test]
    fn immutable_tags_are_kept_and_unknown_times_keep_nothing_by_age() {
        let mut r = rule();
        r.keep_newest = Some(0);
        r.keep_pushed_within_ms = Some(DAY);
        let mut t = facts("release", 99, None);
        t.immutable = true;
        let mut unknown = facts("unknown", 0, None);
        unknown.pushed_ms = 0;
        assert_eq!(removed(&r, &[t, unknown]), ["unknown"]);
    }

    #[test]
    fn first_matching_rule_governs() {
        let mut a = RetentionRule::new(Pattern::parse("team/special").unwrap());
        a.keep_newest = Some(100);
        let b = RetentionRule::new(Pattern::parse("team/**").unwrap());
        let rules = [a, b];
        let n = |s| RepositoryName::parse(s).unwrap();
        assert_eq!(
            rule_for(&rules, &n("team/special")).unwrap().keep_newest,
            Some(100)
        );
        assert_eq!(
            rule_for(&rules, &n("team/other")).unwrap().keep_newest,
            None
        );
        assert!(rule_for(&rules, &n("elsewhere")).is_none());
        let imm = [ImmutableTags::new(
            Pattern::parse("team/**").unwrap(),
            Pattern::parse("v*").unwrap(),
        )];
        assert!(is_immutable(&imm, &n("team/x"), &Tag::parse("v1").unwrap()));
        assert!(!is_immutable(
            &imm,
            &n("team/x"),
            &Tag::parse("latest").unwrap()
        ));
        assert!(!is_immutable(&imm, &n("other"), &Tag::parse("v1").unwrap()));
    }
}
