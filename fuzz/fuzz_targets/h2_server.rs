//! A client's arbitrary bytes into an HTTP/2 server connection: the `h2` crate's handshake and accept
//! loop under the driver's limits, over an in-memory `tokio::io::duplex` (`src/h2server.rs`), each
//! accepted request's head through `ferricorn_http::h2_request_head`.
//!
//! Input: an option byte (bit 0: prepend a valid client preface and an empty SETTINGS, so the fuzzer
//! starts among frames; bit 1: small limits; bits 2–3: how streams are answered — at once, after
//! reading the body, with a body larger than the window, or with a reset), a byte that seeds the split
//! points of the client's writes, then the client's bytes. Checked besides "no panic and the session
//! ends": a head the policy accepts carries no control byte or space in its method and target, no CR,
//! LF or NUL in a field value, a valid field name, and version 2.0; nothing is accepted without a
//! preface.

#![no_main]

use ferricorn_fuzz::h2server::serve;
use ferricorn_fuzz::{split, Rng};
use libfuzzer_sys::fuzz_target;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

fuzz_target!(|data: &[u8]| {
    let [opts, seed, rest @ ..] = data else {
        return;
    };
    let mut input = Vec::with_capacity(rest.len() + 33);
    if opts & 1 != 0 {
        input.extend_from_slice(PREFACE);
        input.extend_from_slice(EMPTY_SETTINGS);
    }
    input.extend_from_slice(rest);
    let mut rng = Rng::new(*seed);
    let pieces = split(&input, &mut rng, 4096)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let got = serve(pieces, *opts);
    if !input.starts_with(PREFACE) {
        assert_eq!(got.accepted, 0, "a request without the client preface");
    }
    assert!(got.heads_ok <= got.accepted);
});
