//! Parsing the distribution-spec grammar (`kura_core::reference`,
//! `kura_core::digest::Digest::parse`): repository names, tags, digests and
//! manifest references (the `<reference>` of `/manifests/<reference>`, a tag
//! or a digest), valid and invalid, as every request path needs.
//!
//! `cargo bench -p kura-benches --bench reference`

use std::fmt;

use divan::{black_box, Bencher};
use kura_core::reference::{MAX_NAME_LEN, MAX_TAG_LEN};
use kura_core::{Digest, Reference, RepositoryName, Tag};

fn main() {
    divan::main();
}

/// One input, shown by `label` (some inputs are hundreds of characters).
struct Case {
    label: &'static str,
    input: String,
    valid: bool,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label)
    }
}

fn case(label: &'static str, input: impl Into<String>, valid: bool) -> Case {
    Case {
        label,
        input: input.into(),
        valid,
    }
}

/// A valid name of exactly `len` characters: `ghcr.io/org/component-name/…`.
fn long_name(len: usize) -> String {
    let mut s = String::from("ghcr.io/org");
    while s.len() < len {
        s.push_str("/component-name");
    }
    s.truncate(len);
    assert!(s.ends_with(|c: char| c.is_ascii_alphanumeric()));
    s
}

const HEX: &str = "9b8f2c2b0e0a7f6c4d3e1a5b7c9d0e2f4a6b8c0d1e3f5a7b9c1d3e5f7a9b0c2d";

fn sha512() -> String {
    format!("sha512:{}", "0123456789abcdef".repeat(8))
}

fn names() -> Vec<Case> {
    vec![
        case("short", "alpine", true),
        case("library", "library/alpine", true),
        case("nested", "ghcr.io/org/team/app", true),
        case("max_255", long_name(MAX_NAME_LEN), true),
        case("invalid_uppercase_last", "ghcr.io/org/team/App", false),
        case("invalid_empty_component", "team//app", false),
        case("invalid_too_long", long_name(MAX_NAME_LEN + 1), false),
    ]
}

fn tags() -> Vec<Case> {
    vec![
        case("latest", "latest", true),
        case("semver", "v1.2.3-alpine3.20", true),
        case("max_128", "a".repeat(MAX_TAG_LEN), true),
        case("invalid_leading_dot", ".hidden", false),
        case("invalid_too_long", "a".repeat(MAX_TAG_LEN + 1), false),
    ]
}

fn digests() -> Vec<Case> {
    vec![
        case("sha256", format!("sha256:{HEX}"), true),
        case("sha512", sha512(), true),
        case(
            "invalid_uppercase_hex",
            format!("sha256:{}", HEX.to_uppercase()),
            false,
        ),
        case("invalid_short_hex", format!("sha256:{}", &HEX[1..]), false),
        case("invalid_algorithm", format!("md5:{HEX}"), false),
    ]
}

fn references() -> Vec<Case> {
    vec![
        case("tag", "3.20", true),
        case("digest", format!("sha256:{HEX}"), true),
        case("invalid_tag", "-rc1", false),
        case("invalid_digest", "sha256:abc", false),
    ]
}

/// Check the case is what its label says, then time only the parse.
fn bench_parse<T, E>(bencher: Bencher, case: &Case, parse: fn(&str) -> Result<T, E>) {
    assert_eq!(
        parse(&case.input).is_ok(),
        case.valid,
        "{}: {:?}",
        case.label,
        case.input
    );
    bencher.bench(|| parse(black_box(&case.input)));
}

#[divan::bench(args = names())]
fn repository_name(bencher: Bencher, case: &Case) {
    bench_parse(bencher, case, RepositoryName::parse);
}

#[divan::bench(args = tags())]
fn tag(bencher: Bencher, case: &Case) {
    bench_parse(bencher, case, Tag::parse);
}

#[divan::bench(args = digests())]
fn digest(bencher: Bencher, case: &Case) {
    bench_parse(bencher, case, Digest::parse);
}

#[divan::bench(args = references())]
fn reference(bencher: Bencher, case: &Case) {
    bench_parse(bencher, case, Reference::parse);
}
