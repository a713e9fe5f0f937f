//! Fuzz what a static-file request reads from the client (`http::static_files`): the path below a mount,
//! `Range`, `Accept-Encoding`, entity-tag lists and HTTP dates. Beyond "no panic":
//!
//! - a decoded path is relative, has no `..`, `.` or empty segment, no NUL and no backslash, and decoding
//!   it again (with `%` escaped) gives it back — so joined to a root it stays below it, whatever was sent;
//! - a range is within the representation (`first <= last < len`), and a representation of no bytes is
//!   never given a part;
//! - the codings accepted are a subset of br and gzip without repeats;
//! - an entity tag always matches a list that holds it (strong and weak), and a weak match follows from a
//!   strong one; a date that parses formats back to one that parses the same.
//!
//! Input: two bytes of representation length (×97, so lengths 0 to about 6 MB), then the fields
//! separated by `\n`: path, Range, Accept-Encoding, an entity-tag list, a date.
#![no_main]

use ferricorn_fuzz::http::static_files::{
    accepted_codings, byte_range, decode_path, etag_matches, format_date, parse_date, RangeAnswer,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = u64::from(u16::from_le_bytes(*len)) * 97;
    let mut fields = rest.split(|&b| b == b'\n');
    let path = fields.next().unwrap_or_default();
    let range = fields.next().unwrap_or_default();
    let codings = fields.next().unwrap_or_default();
    let tags = fields.next().unwrap_or_default();
    let date = fields.next().unwrap_or_default();

    if let Ok(p) = decode_path(path) {
        assert!(!p.starts_with(b"/"));
        assert!(!p.contains(&0) && !p.contains(&b'\\'));
        for segment in p.split(|&b| b == b'/') {
            if !p.is_empty() {
                assert!(!matches!(segment, b"" | b"." | b".."), "{p:?}");
            }
        }
        let mut escaped = Vec::new();
        for &b in &p {
            if b == b'%' {
                escaped.extend_from_slice(b"%25");
            } else {
                escaped.push(b);
            }
        }
        assert_eq!(decode_path(&escaped).as_deref(), Ok(&p[..]));
    }

    match byte_range(range, len) {
        RangeAnswer::Part { first, last } => assert!(first <= last && last < len),
        RangeAnswer::Full | RangeAnswer::Unsatisfiable => {}
    }

    let accepted = accepted_codings(Some(codings));
    assert!(accepted.len() <= 2);
    if accepted.len() == 2 {
        assert_ne!(accepted[0], accepted[1]);
    }

    // A tag made of the list's own bytes where it can be one.
    if let Ok(text) = std::str::from_utf8(tags) {
        if !text.contains('"') {
            let tag = format!("\"{text}\"");
            let list = format!("W/\"x\", {tag}");
            assert!(etag_matches(list.as_bytes(), &tag, false));
            assert!(etag_matches(list.as_bytes(), &tag, true));
        }
        if etag_matches(tags, text, false) {
            assert!(etag_matches(tags, text, true));
        }
    }

    if let Some(secs) = parse_date(date) {
        assert_eq!(parse_date(format_date(secs).as_bytes()), Some(secs));
    }
});
