//! `/v2/` request routing: `kura_core::wire::Route::parse`, run on every
//! request before anything else.
//!
//! `cargo bench -p kura-benches --bench route`

use std::fmt;

use divan::{black_box, Bencher};
use kura_core::wire::Route;

fn main() {
    divan::main();
}

const HEX: &str = "9b8f2c2b0e0a7f6c4d3e1a5b7c9d0e2f4a6b8c0d1e3f5a7b9c1d3e5f7a9b0c2d";
const UPLOAD_ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

struct Case {
    label: &'static str,
    path: String,
    /// `Route::kind` of the expected route; `None` for an error.
    kind: Option<&'static str>,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label)
    }
}

fn case(label: &'static str, path: impl Into<String>, kind: Option<&'static str>) -> Case {
    Case {
        label,
        path: path.into(),
        kind,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("base", "/v2/", Some("base")),
        case(
            "manifest_by_tag",
            "/v2/library/alpine/manifests/3.20",
            Some("manifest"),
        ),
        case(
            "manifest_by_digest",
            format!("/v2/library/alpine/manifests/sha256:{HEX}"),
            Some("manifest"),
        ),
        case(
            "blob_by_digest",
            format!("/v2/library/alpine/blobs/sha256:{HEX}"),
            Some("blob"),
        ),
        case(
            "upload_session",
            format!("/v2/library/alpine/blobs/uploads/{UPLOAD_ID}"),
            Some("upload"),
        ),
        case("tags_list", "/v2/library/alpine/tags/list", Some("tags")),
        case(
            "nested_name",
            "/v2/ghcr.io/org/team/app/manifests/v1.2.3",
            Some("manifest"),
        ),
        case("invalid_name", "/v2/Library/Alpine/manifests/latest", None),
    ]
}

#[divan::bench(args = cases())]
fn parse(bencher: Bencher, case: &Case) {
    let kind = match Route::parse(&case.path) {
        Ok(Some(route)) => Some(route.kind()),
        Ok(None) => Some("not found"),
        Err(_) => None,
    };
    assert_eq!(kind, case.kind, "{}: {}", case.label, case.path);

    bencher.bench(|| Route::parse(black_box(&case.path)));
}
