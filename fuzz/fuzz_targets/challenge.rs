//! `WWW-Authenticate` challenges, and the trust decision on the token
//! realm one names. Input: the header value.
//!
//! Asserts: the scheme is matched case-insensitively; Bearer parameter
//! keys are trimmed, lower-cased and non-empty; re-encoding the parameters
//! (values quoted and escaped) parses back to the same map; a realm on
//! the upstream's own host is trusted unless the scheme forbids it, a
//! plain-HTTP realm is never trusted for an HTTPS upstream, a non-HTTP(S)
//! realm never; listing the realm's host trusts it whenever the scheme
//! allows.
#![no_main]

use std::mem::discriminant;

use http::Uri;
use kura_core::fuzzing::{parse_challenge, realm_trusted, ParsedChallenge};
use libfuzzer_sys::fuzz_target;

const UPSTREAMS: [&str; 4] = [
    "https://registry-1.docker.io",
    "https://ghcr.io:443",
    "http://10.0.0.7:5000",
    "https://[::1]:8443",
];

fn quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn check_realm(realm: &Uri) {
    let scheme = realm.scheme_str().map(str::to_ascii_lowercase);
    let host = realm.host().map(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    });
    for up in UPSTREAMS {
        let upstream: Uri = up.parse().unwrap();
        let up_https = upstream.scheme_str() == Some("https");
        let verdict = realm_trusted(&upstream, realm, &[]);
        let scheme_ok = match scheme.as_deref() {
            Some("https") => true,
            Some("http") => !up_https,
            _ => false,
        };
        if !scheme_ok {
            assert!(verdict.is_err(), "{realm} trusted for {up}");
            continue;
        }
        let Some(host) = &host else {
            assert!(verdict.is_err(), "{realm} has no host, trusted for {up}");
            continue;
        };
        let up_host = upstream
            .host()
            .unwrap()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if *host == up_host.to_ascii_lowercase() {
            assert_eq!(verdict, Ok(()), "{realm} on {up}'s own host");
        }
        // An operator listing the realm's host trusts it. (`http` takes
        // hosts with unbalanced brackets, such as `2]` from `[::x@2]`; no
        // operator lists those.)
        let raw = realm.host().unwrap();
        if raw.starts_with('[') != raw.ends_with(']') {
            continue;
        }
        let listed = [raw.to_owned()];
        assert_eq!(
            realm_trusted(&upstream, realm, &listed),
            Ok(()),
            "{realm} listed for {up}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(s) = kura_fuzz::text(data) else {
        return;
    };
    let parsed = parse_challenge(s);
    assert_eq!(
        discriminant(&parse_challenge(&s.to_ascii_uppercase())),
        discriminant(&parsed)
    );
    let ParsedChallenge::Bearer(params) = parsed else {
        return;
    };
    for k in params.keys() {
        assert!(!k.is_empty(), "{s:?}");
        assert_eq!(k.trim(), k);
        assert_eq!(&k.to_ascii_lowercase(), k);
        assert!(!k.contains('=') && !k.contains(','), "{k:?}");
    }

    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    let encoded: Vec<String> = keys
        .iter()
        .map(|k| format!("{k}={}", quote(&params[*k])))
        .collect();
    let again = format!("Bearer {}", encoded.join(", "));
    assert_eq!(
        parse_challenge(&again),
        ParsedChallenge::Bearer(params.clone()),
        "{again:?}"
    );

    if let Some(realm) = params.get("realm").and_then(|r| r.parse::<Uri>().ok()) {
        check_realm(&realm);
    }
});
