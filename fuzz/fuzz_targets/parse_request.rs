//! Fuzz `parse_request`: it must never panic, and whatever it accepts must hold together.
//!
//! Input: one byte choosing the parser options (see `options_from`), then the request bytes.
//! Checked for a complete head:
//! - `consumed` lies within the input, and the same head comes back from exactly `consumed` bytes and from
//!   the input with more bytes appended (what follows a head never changes it);
//! - strict prefixes of the head are `Partial`: a server fed the bytes in any split sees no error
//!   before the head is whole;
//! - the fields are what a WSGI environ may safely carry (token names, no CR/LF/NUL in values, `_`
//!   names only under `--header-map dangerous`, one framing);
//! - the head written back out in canonical form parses to the same head;
//! - with an absolute-form target, the Host field holds the target's host (userinfo left out);
//! - the protocol an upgrade asks for (`RequestHead::upgrade`) is a non-empty, trimmed piece of the
//!   Upgrade field of an HTTP/1.1 request that lists `upgrade` in Connection.
//!
//! For `Partial`: the input is no longer than `max_head_size`, so a caller's buffer stays bounded.
#![no_main]

use ferricorn_fuzz::http::{
    max_head_size, parse_request, BodyKind, HeaderMap, Parsed, ParserOptions, RequestHead,
};
use ferricorn_fuzz::options_from;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (opts, buf) = options_from(data);
    match parse_request(buf, &opts) {
        Ok(Parsed::Partial) => {
            assert!(
                buf.len() <= max_head_size(&opts),
                "Partial past the head limit"
            );
        }
        Ok(Parsed::Complete { head, consumed }) => check_complete(buf, &opts, &head, consumed),
        Err(_) => {}
    }
});

fn check_complete(buf: &[u8], opts: &ParserOptions, head: &RequestHead, consumed: usize) {
    assert!(consumed > 0 && consumed <= buf.len());
    assert!(consumed <= max_head_size(opts));
    let head_bytes = &buf[..consumed];
    if let Some(protocol) = head.upgrade() {
        assert!(head.version_minor >= 1, "upgrade asked on HTTP/1.0");
        assert!(!protocol.is_empty() && protocol.trim() == protocol);
        let field = head
            .header("upgrade")
            .expect("an upgrade without an Upgrade field");
        let p = protocol.as_bytes();
        assert!(
            field.windows(p.len()).any(|w| w == p),
            "the protocol is not in the Upgrade field"
        );
    }

    let exact = parse_request(head_bytes, opts);
    assert_eq!(
        exact,
        Ok(Parsed::Complete {
            head: head.clone(),
            consumed
        }),
        "the head alone parses differently"
    );
    let mut longer = head_bytes.to_vec();
    longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n\x00\xff");
    assert_eq!(
        parse_request(&longer, opts),
        Ok(Parsed::Complete {
            head: head.clone(),
            consumed
        }),
        "bytes after the head changed it"
    );

    // Strict prefixes: each of the last 24 (where the end of the head is recognised) and 40 spread over
    // the rest, which keeps long heads cheap.
    let stride = (consumed / 40).max(1);
    let spread = (0..consumed).step_by(stride);
    for k in spread.chain(consumed.saturating_sub(24)..consumed) {
        let r = parse_request(&head_bytes[..k], opts);
        assert_eq!(r, Ok(Parsed::Partial), "prefix of {k} bytes: {r:?}");
    }

    check_fields(opts, head);
    check_absolute_host(head);
    check_round_trip(opts, head);
}

/// RFC 9112 §3.2.2: the host of an absolute-form target replaces the Host field, exactly once.
fn check_absolute_host(head: &RequestHead) {
    if head.method == "CONNECT" || head.target.starts_with('/') || head.target == "*" {
        return;
    }
    let rest = match head.target.split_once("://") {
        Some((_, rest)) => rest,
        None => panic!("absolute-form without ://: {:?}", head.target),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let hosts: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(hosts, vec![host.as_bytes()], "Host for {:?}", head.target);
}

fn check_fields(opts: &ParserOptions, head: &RequestHead) {
    let token = |s: &[u8]| {
        !s.is_empty()
            && s.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    assert!(token(head.method.as_bytes()), "method {:?}", head.method);
    assert!(
        head.target.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "target {:?}",
        head.target
    );
    assert!(head.version_minor <= 1);
    let mut content_length = 0;
    let mut transfer_encoding = false;
    for (name, value) in &head.headers {
        assert!(token(name.as_bytes()), "field name {name:?}");
        if opts.header_map != HeaderMap::Dangerous {
            assert!(!name.contains('_'), "field name {name:?} kept");
        }
        assert!(
            value
                .iter()
                .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
            "field value {value:?}"
        );
        assert!(
            !value.starts_with(b" ")
                && !value.starts_with(b"\t")
                && !value.ends_with(b" ")
                && !value.ends_with(b"\t"),
            "untrimmed value {value:?}"
        );
        if name.eq_ignore_ascii_case("content-length") {
            content_length += 1;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        }
    }
    assert!(
        content_length <= 1,
        "{content_length} Content-Length fields"
    );
    if transfer_encoding {
        assert_eq!(content_length, 0, "Content-Length with Transfer-Encoding");
        assert_eq!(head.body, BodyKind::Chunked);
        assert_eq!(head.version_minor, 1, "Transfer-Encoding on HTTP/1.0");
    }
    if head.body == BodyKind::Chunked {
        assert!(transfer_encoding);
    }
    if let BodyKind::Length(n) = head.body {
        assert!(n > 0 && content_length == 1);
    }
}

/// Write the head out canonically (single spaces, `name:value` lines, CRLF) and parse it again.
fn check_round_trip(opts: &ParserOptions, head: &RequestHead) {
    let mut out = Vec::new();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(format!(" HTTP/{}.{}\r\n", head.version.0, head.version.1).as_bytes());
    // With an absolute-form target the parser puts the target's host in the Host field (RFC 9112
    // §3.2.2), replacing the one sent or adding one at the end where none was needed. The canonical form
    // sends that field empty (the parse fills it in again; an empty Host is valid), and leaves out one the
    // parser may have added itself, so that no line and no field count grows past what the original met.
    let absolute = head.method != "CONNECT" && !head.target.starts_with('/') && head.target != "*";
    let last = head.headers.len().wrapping_sub(1);
    for (i, (name, value)) in head.headers.iter().enumerate() {
        let host = absolute && name.eq_ignore_ascii_case("host");
        if host
            && i == last
            && name == "Host"
            && (head.version_minor == 0 || opts.permit_missing_host)
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        if !host {
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // No line of the canonical form is longer than the line (or folded lines) it came from, so it is
    // within the limits the original met. (A space after the colon could push a field that was exactly
    // at the size limit over it.)
    match parse_request(&out, opts) {
        Ok(Parsed::Complete {
            head: again,
            consumed,
        }) => {
            assert_eq!(consumed, out.len());
            assert_eq!(&again, head, "canonical form parses differently");
        }
        other => panic!(
            "canonical form {:?} not accepted: {other:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}
