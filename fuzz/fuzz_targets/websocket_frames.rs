//! A client's bytes after a websocket handshake, read by ferricorn's own frame layer
//! (`ferricorn_ws::frames`, as the asgi worker's sessions read them), with and without
//! permessage-deflate and under a small message limit.
//!
//! Input: an option byte (bit 0: permessage-deflate agreed; bit 1: `client_no_context_takeover`;
//! bit 2: a 1 KiB limit instead of 64 KiB; bits 3–7: how many bytes came with the handshake), a byte
//! that seeds the split points, then the client's bytes. Checked besides "no panic and the read loop
//! ends":
//! - no message is longer than the limit, no ping payload or close reason longer than a control
//!   frame holds;
//! - the same bytes read in one piece and in random pieces give the same messages and end the same
//!   way (the UTF-8 check made as the bytes arrive agrees with the one at the frame's end);
//! - every message read, written back as a client's frames (compressed when agreed, fragmented at
//!   random points), reads back the same.

#![no_main]

use ferricorn_fuzz::ws::deflate::{negotiate, Codec};
use ferricorn_fuzz::ws::frames::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};
use ferricorn_fuzz::{client_frame, read_session, split, Got, Rng};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [opts, seed, rest @ ..] = data else {
        return;
    };
    let params = match (opts & 1 != 0, opts & 2 != 0) {
        (false, _) => None,
        (true, false) => negotiate([b"permessage-deflate".as_slice()]),
        (true, true) => negotiate([b"permessage-deflate; client_no_context_takeover".as_slice()]),
    };
    let limit = if opts & 4 != 0 { 1024 } else { 64 * 1024 };
    let at = usize::from(opts >> 3).min(rest.len());
    let (leftover, after) = rest.split_at(at);
    let mut rng = Rng::new(*seed);

    let whole = read_session(leftover, vec![after.to_vec()], limit, params.clone());
    let pieces = split(after, &mut rng, 64)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let pieced = read_session(leftover, pieces, limit, params.clone());
    assert_eq!(whole, pieced, "one piece and many disagree");

    let (got, _) = whole;
    let mut wire = Vec::new();
    // The client's compressor keeps its context (the server's decompressor does as well unless
    // client_no_context_takeover, which a fresh codec per message covers).
    let mut tx = params.as_ref().map(|p| Codec::new(p.clone()));
    for g in &got {
        match g {
            Got::Text(t) => assert!(t.len() <= limit),
            Got::Binary(b) => assert!(b.len() <= limit),
            Got::Ping(p) => assert!(p.len() <= 125),
            Got::Close(Some((_, reason))) => assert!(reason.len() <= 123),
            Got::Pong | Got::Close(None) => {}
        }
        let (opcode, payload) = match g {
            Got::Text(t) => (OP_TEXT, t.as_bytes().to_vec()),
            Got::Binary(b) => (OP_BINARY, b.clone()),
            Got::Ping(p) => (OP_PING, p.clone()),
            Got::Pong => (OP_PONG, Vec::new()),
            Got::Close(None) => (OP_CLOSE, Vec::new()),
            Got::Close(Some((code, reason))) => {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(reason.as_bytes());
                (OP_CLOSE, p)
            }
        };
        if opcode & 0x8 != 0 {
            client_frame(&mut wire, true, false, opcode, &payload);
            continue;
        }
        let (payload, compressed) = match tx.as_mut() {
            Some(codec) => {
                if opts & 2 != 0 {
                    *codec = Codec::new(params.clone().expect("agreed"));
                }
                (codec.compress(&payload), true)
            }
            None => (payload, false),
        };
        // Fragments of at most half the limit: a compressed frame may not be longer than the
        // limit, and incompressible data comes out a little longer than it went in.
        let mut frames = split(&payload, &mut rng, limit / 2);
        if frames.is_empty() {
            frames.push(&[]);
        }
        let last = frames.len() - 1;
        for (i, f) in frames.into_iter().enumerate() {
            let op = if i == 0 { opcode } else { OP_CONTINUATION };
            client_frame(&mut wire, i == last, compressed && i == 0, op, f);
        }
    }
    let (again, end) = read_session(&[], vec![wire], limit, params);
    // A close from the peer ends nothing by itself: the session stops reading after it.
    assert_eq!(end, None, "written back, the messages fail to read");
    assert_eq!(again, got, "written back, the messages read differently");
});
