//! Manifest parsing and validation. Input: the Content-Type on the first
//! line (empty for none), the body after it.
//!
//! Asserts: an accepted manifest is exactly one kind (an index has no
//! config or layers, an image manifest no manifests); it parses again,
//! as the same thing, when pushed with the media type the registry serves
//! it as (a client copying it elsewhere does that); generic Content-Types
//! mean the same as none; descriptors survive a JSON round trip.
#![no_main]

use kura_core::digest::Digest;
use kura_core::manifest::{self, Descriptor, Kind, Manifest};
use libfuzzer_sys::fuzz_target;

fn same(a: &Manifest, b: &Manifest) -> bool {
    a.kind == b.kind
        && a.config == b.config
        && a.layers == b.layers
        && a.manifests == b.manifests
        && a.subject == b.subject
        && a.artifact_type == b.artifact_type
        && a.annotations == b.annotations
}

fn descriptors(m: &Manifest) -> impl Iterator<Item = &Descriptor> {
    m.config
        .iter()
        .chain(&m.layers)
        .chain(&m.manifests)
        .chain(&m.subject)
}

fuzz_target!(|data: &[u8]| {
    let (ct, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let Ok(ct) = std::str::from_utf8(ct) else {
        return;
    };
    let ct = (!ct.is_empty()).then_some(ct);

    let parsed = manifest::parse(body, ct);
    let Ok(m) = parsed else {
        if let Err(e) = parsed {
            let _ = e.to_string();
        }
        return;
    };

    assert_eq!(Kind::from_media_type(m.media_type()), Some(m.kind));
    if m.kind.is_index() {
        assert!(m.config.is_none() && m.layers.is_empty());
    } else {
        assert!(m.config.is_some() && m.manifests.is_empty());
    }
    for d in descriptors(&m) {
        assert!(!d.media_type.is_empty());
        let json = serde_json::to_vec(d).unwrap();
        let back: Descriptor = serde_json::from_slice(&json).unwrap();
        assert_eq!(&back, d);
    }
    let required: Vec<&Descriptor> = m.required_blobs().collect();
    assert!(required.len() <= 1 + m.layers.len());
    // Only layers are exempt (a config is always needed).
    assert!(m
        .layers
        .iter()
        .filter(|d| !d.is_non_distributable())
        .all(|d| required.contains(&d)));
    assert!(required
        .iter()
        .skip(usize::from(m.config.is_some()))
        .all(|d| !d.is_non_distributable()));
    if let Some(t) = m.referrer_artifact_type() {
        assert!(!t.is_empty());
    }
    let entry = m.referrer_descriptor(Digest::sha256(body), body.len() as u64);
    assert_eq!(entry.media_type, m.media_type());

    // Served as `m.media_type()`, the bytes must be accepted as the same.
    let again = manifest::parse(body, Some(m.media_type()))
        .unwrap_or_else(|e| panic!("refused as its own media type: {e}"));
    assert!(same(&m, &again), "{m:?} / {again:?}");

    // Parameters and case do not change a Content-Type's meaning.
    let decorated = format!(" {}; charset=utf-8", m.media_type().to_ascii_uppercase());
    let again = manifest::parse(body, Some(&decorated)).expect("decorated media type");
    assert!(same(&m, &again));

    // Generic Content-Types defer to the body, as no Content-Type does.
    let generic = ct.map(|c| c.split(';').next().unwrap().trim().to_ascii_lowercase());
    if ct.is_none()
        || matches!(
            generic.as_deref(),
            Some("application/json" | "application/octet-stream")
        )
    {
        for g in [
            None,
            Some("application/json"),
            Some("application/octet-stream"),
        ] {
            let other = manifest::parse(body, g).expect("generic Content-Type");
            assert!(same(&m, &other));
        }
    }
});
