//! Repository names, tags, references and digests: whatever parses
//! displays as exactly its input and parses again to the same value, and
//! the grammar's promises hold (no `/` in tags, no empty or dot-only name
//! components, ASCII only, length limits).
#![no_main]

use kura_core::reference::{MAX_NAME_LEN, MAX_TAG_LEN};
use kura_core::{Digest, Reference, RepositoryName, Tag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(s) = kura_fuzz::text(data) else {
        return;
    };

    if let Ok(name) = RepositoryName::parse(s) {
        assert_eq!(name.as_str(), s);
        assert_eq!(name.to_string(), s);
        assert!(s.len() <= MAX_NAME_LEN);
        assert!(s.is_ascii());
        for c in s.split('/') {
            assert!(!c.is_empty() && c != "." && c != "..", "{s:?}");
        }
        assert_eq!(s.parse::<RepositoryName>().as_ref(), Ok(&name));
    }

    if let Ok(tag) = Tag::parse(s) {
        assert_eq!(tag.as_str(), s);
        assert!(!s.is_empty() && s.len() <= MAX_TAG_LEN && s.is_ascii());
        assert!(!s.contains('/') && !s.contains(':'), "{s:?}");
        assert_eq!(Tag::parse(&tag.to_string()), Ok(tag));
    }

    if let Ok(d) = Digest::parse(s) {
        assert_eq!(d.to_string(), s);
        assert_eq!(format!("{d:?}"), s);
        assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(&d));
        assert_eq!(s, format!("{}:{}", d.algorithm().as_str(), d.hex()));
        // The serde form is the string form.
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    match Reference::parse(s) {
        Ok(r) => {
            assert_eq!(r.to_string(), s);
            assert_eq!(Reference::parse(&r.to_string()).as_ref(), Ok(&r));
            match &r {
                Reference::Tag(t) => assert_eq!(Tag::parse(s).as_ref(), Ok(t)),
                Reference::Digest(d) => assert_eq!(Digest::parse(s).as_ref(), Ok(d)),
            }
        }
        Err(_) => {
            assert!(Tag::parse(s).is_err() && Digest::parse(s).is_err(), "{s:?}");
        }
    }

    // Error messages echo a bounded prefix of the input: 80 bytes, each
    // escaped to at most 10 characters (`\u{10ffff}`) by `{:?}`.
    if let Err(e) = RepositoryName::parse(s) {
        assert!(e.to_string().len() < 1000);
    }
    if let Err(e) = Digest::parse(s) {
        assert!(e.to_string().len() < 1000);
    }
});
