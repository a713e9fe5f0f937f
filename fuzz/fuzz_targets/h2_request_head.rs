//! Fuzz `h2_request_head`, the HTTP/2 request head under HTTP/1's header policy: it must never panic,
//! whatever the pseudo-headers and fields; a head it accepts carries only what an HTTP/1 request line
//! and header fields could (the target printable ASCII, names without CR/LF/NUL/`:`), has version 2.0,
//! and the same `:method`/`:path` sent as an HTTP/1 request parse to the same method, path and query.
//!
//! Input: one byte of options, then NUL-separated parts: method, target, authority (empty: none), and
//! field name/value pairs.
#![no_main]

use ferricorn_fuzz::http::{h2_request_head, parse_request, Parsed};
use ferricorn_fuzz::options_from;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (opts, rest) = options_from(data);
    let mut parts = rest.split(|&b| b == 0);
    let (Some(method), Some(target), Some(authority)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    // The h2 frame layer hands over text pseudo-headers; fields are names (ASCII) and raw values.
    let (Ok(method), Ok(target), Ok(authority)) = (
        std::str::from_utf8(method),
        std::str::from_utf8(target),
        std::str::from_utf8(authority),
    ) else {
        return;
    };
    let rest: Vec<&[u8]> = parts.collect();
    let mut fields: Vec<(&str, &[u8])> = Vec::new();
    for pair in rest.chunks(2) {
        let Ok(name) = std::str::from_utf8(pair[0]) else {
            return;
        };
        fields.push((name, pair.get(1).copied().unwrap_or(b"")));
    }
    let authority = (!authority.is_empty()).then_some(authority);
    let Ok(head) = h2_request_head(method, target, authority, &fields, &opts) else {
        return;
    };
    assert_eq!(head.version, (2, 0));
    assert!(head.target.bytes().all(|b| (0x21..0x7f).contains(&b)));
    for (name, value) in &head.headers {
        assert!(!name.is_empty());
        assert!(!name.bytes().any(|b| b"\r\n\0:".contains(&b)), "{name:?}");
        assert!(!value.iter().any(|b| b"\r\n\0".contains(b)), "{value:?}");
    }
    // The same request line over HTTP/1 means the same.
    let line = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    if let Ok(Parsed::Complete { head: h1, .. }) = parse_request(line.as_bytes(), &opts) {
        assert_eq!(
            (h1.method, h1.path, h1.query),
            (head.method, head.path, head.query)
        );
    }
});
