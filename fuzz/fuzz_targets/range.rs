//! `Range` (blob reads) and `Content-Range` (upload chunks). Input: the
//! object size on the first line (decimal; anything else is 1000), the
//! header value after it.
//!
//! Asserts: a served range is non-empty and inside the object; it is only
//! served for a header the registry treats as a single byte range; the
//! canonical `bytes=a-b` of a served range asks for the same range; a
//! chunk's range has start <= end and its canonical forms parse the same.
#![no_main]

use kura_core::fuzzing::{parse_content_range, parse_range, single_byte_range};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(s) = kura_fuzz::text(data) else {
        return;
    };
    let (size, value) = match s.split_once('\n') {
        Some((n, v)) => (n.trim().parse::<u64>().unwrap_or(1000), v),
        None => (1000, s),
    };

    if let Some(r) = parse_range(value, size) {
        assert!(
            r.start < r.end && r.end <= size,
            "{value:?} in {size}: {r:?}"
        );
        assert!(
            single_byte_range(value),
            "{value:?} served but not a single range"
        );
        let canonical = format!("bytes={}-{}", r.start, r.end - 1);
        assert_eq!(parse_range(&canonical, size), Some(r.clone()));
        // The same range asked for by suffix length, when it ends the object.
        if r.end == size {
            let suffix = format!("bytes=-{}", r.end - r.start);
            assert_eq!(parse_range(&suffix, size), Some(r));
        }
    }

    if let Some((start, end)) = parse_content_range(value) {
        assert!(start <= end, "{value:?}");
        for form in [
            format!("{start}-{end}"),
            format!("bytes {start}-{end}/*"),
            format!("bytes {start}-{end}/{}", end.saturating_add(1)),
        ] {
            assert_eq!(parse_content_range(&form), Some((start, end)), "{form:?}");
        }
    }
});
