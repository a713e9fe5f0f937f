//! permessage-deflate (`ferricorn_ws::deflate`): the negotiation of arbitrary
//! `Sec-WebSocket-Extensions` values and the decompression of arbitrary compressed messages under a
//! size limit.
//!
//! Input: a byte that sets how many of the following bytes are header values (split at `\n` into
//! several fields), a byte that sets the limit (0 to 64 KiB) and seeds the frame splits, then the
//! compressed data, cut into messages and frames at random points. Checked besides "no panic":
//! - an agreement's window is 9–15, and its answer, offered again, is agreed the same;
//! - a frame's inflation never leaves more than the limit in the message, and a message past it
//!   (a zip bomb) stops at one byte over with no more room taken than that;
//! - a message inflated in one frame and in several agrees when both succeed;
//! - the data itself, compressed by the codec, inflates back to it.

#![no_main]

use ferricorn_fuzz::ws::deflate::{negotiate, Codec, Inflate, Params};
use ferricorn_fuzz::{default_deflate, split, Rng};
use libfuzzer_sys::fuzz_target;

/// One message's frames inflated in order; the message so far and how it ended.
fn inflate(codec: &mut Codec, frames: &[&[u8]], limit: usize) -> (Vec<u8>, Result<(), Inflate>) {
    let mut out = Vec::new();
    for f in frames {
        let r = codec.inflate(f, &mut out, limit);
        check(&out, &r, limit);
        if r.is_err() {
            return (out, r);
        }
    }
    let r = codec.finish(&mut out, limit);
    check(&out, &r, limit);
    (out, r)
}

fn check(out: &[u8], r: &Result<(), Inflate>, limit: usize) {
    match r {
        Ok(()) | Err(Inflate::Corrupt) => assert!(out.len() <= limit, "past the limit"),
        Err(Inflate::TooBig) => assert_eq!(out.len(), limit + 1, "TooBig not at the limit"),
    }
}

fuzz_target!(|data: &[u8]| {
    let [head_len, knob, rest @ ..] = data else {
        return;
    };
    let (head, body) = rest.split_at(usize::from(*head_len).min(rest.len()));

    let agreed: Option<Params> = negotiate(head.split(|&b| b == b'\n'));
    if let Some(p) = &agreed {
        assert!((9..=15).contains(&p.server_max_window_bits));
        let answer = p.response();
        assert!(answer.starts_with("permessage-deflate"));
        assert_eq!(negotiate([answer.as_bytes()]).as_ref(), Some(p), "{answer}");
    }
    let params = agreed.unwrap_or_else(default_deflate);

    let limit = match knob & 0x0f {
        0 => 0,
        n => 1usize << (n + 1).min(16),
    };
    let mut rng = Rng::new(*knob);
    let mut one = Codec::new(params.clone());
    let mut many = Codec::new(params.clone());
    for message in split(body, &mut rng, 512) {
        let frames = split(message, &mut rng, 64);
        let (a, ra) = inflate(&mut one, &[message], limit);
        let (b, rb) = inflate(&mut many, &frames, limit);
        if ra.is_ok() && rb.is_ok() {
            assert_eq!(a, b, "one frame and several disagree");
        }
        if ra.is_err() || rb.is_err() {
            // The session ends at a bad message.
            break;
        }
    }

    // The codec's own output reads back (a fresh pair: each side's context is its own).
    let mut tx = Codec::new(params.clone());
    let mut rx = Codec::new(params);
    let wire = tx.compress(body);
    let (back, r) = inflate(&mut rx, &split(&wire, &mut rng, 256), body.len());
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(back, body);
});
