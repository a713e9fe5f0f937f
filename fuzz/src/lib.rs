//! Helpers of the fuzz targets around ferricorn's HTTP crate (`crates/ferricorn-http`): the parser and
//! the chunked decoder depend only on httparse, memchr, itoa and httpdate, so the fuzz targets link no
//! Python.

pub use ferricorn_http as http;

use http::{HeaderMap, ParserOptions};

/// Parser options drawn from the input's first byte, so one target covers the defaults, every relaxation
/// and tight limits. Returns the options and the bytes left for the request.
pub fn options_from(data: &[u8]) -> (ParserOptions, &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return (ParserOptions::default(), data);
    };
    let mut o = ParserOptions {
        permit_missing_host: sel & 0x01 != 0,
        permit_obsolete_folding: sel & 0x02 != 0,
        strip_header_spaces: sel & 0x04 != 0,
        permit_unconventional_http_method: sel & 0x08 != 0,
        permit_unconventional_http_version: sel & 0x10 != 0,
        casefold_http_method: sel & 0x08 != 0,
        header_map: match (sel >> 5) & 0x03 {
            0 | 1 => HeaderMap::Drop,
            2 => HeaderMap::Refuse,
            _ => HeaderMap::Dangerous,
        },
        ..ParserOptions::default()
    };
    if sel & 0x80 != 0 {
        // Small limits, so that the limit paths are reached with short inputs.
        o.limit_request_line = 40;
        o.limit_request_fields = 4;
        o.limit_request_field_size = 32;
    }
    (o, rest)
}
