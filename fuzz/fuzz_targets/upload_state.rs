//! Upload sessions as stored: the state document, the session id from the
//! request path, and the saved hash state inside the document.
//!
//! Asserts: accepted state re-encodes to a fixed point (what the registry
//! writes back, it reads back the same); its `Range` header is `0-n`; an
//! accepted id is 32 lowercase hex digits and displays as itself; a
//! restored hash state can be saved, restored again and finished, giving
//! the same digest as the original after the same further bytes.
#![no_main]

use kura_core::digest::Hasher;
use kura_core::fuzzing::{reencode_upload_state, upload_range_header};
use kura_core::wire::UploadId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(encoded) = reencode_upload_state(data) {
        let again = reencode_upload_state(&encoded).expect("re-encoded state decodes");
        assert_eq!(again, encoded);
        let range = upload_range_header(data).unwrap();
        let end = range.strip_prefix("0-").expect("range starts at 0");
        assert!(end.parse::<u64>().is_ok(), "{range:?}");
    }

    let Some(s) = kura_fuzz::text(data) else {
        return;
    };
    if let Some(id) = UploadId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert_eq!(id.to_string(), s);
        assert!(s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }
    // The saved state is the whole input, or the "hasher" field of a JSON
    // document (how it is stored).
    let saved = serde_json::from_str::<serde_json::Value>(s)
        .ok()
        .and_then(|v| v.get("hasher")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| s.to_owned());
    if let Some(h) = Hasher::restore(&saved) {
        let resaved = h.save();
        let mut copy = Hasher::restore(&resaved).expect("saved state restores");
        assert_eq!(copy.algorithm(), h.algorithm());
        assert_eq!(copy.save(), resaved);
        let mut h = h;
        h.update(b"more bytes");
        copy.update(b"more bytes");
        assert_eq!(h.finish(), copy.finish());
    }
});
