//! Fuzz `ChunkedDecoder`: it must never panic, and the way the bytes are split across `decode` calls must
//! not change anything it reports.
//!
//! Input: one byte choosing the options (trailer limits and `--header-map`), one byte seeding the split
//! points, then the body bytes. The body is decoded in one call and again in pieces; both runs must agree on
//! the error, the payload, the trailers and where the body ended. A finished body must also be exactly what
//! our own chunk writer produces for that payload (modulo extensions), checked by re-encoding the payload
//! and decoding it back.
#![no_main]

use ferricorn_fuzz::http::{
    write_chunk, write_last_chunk, ChunkedDecoder, HttpError, ParserOptions,
};
use ferricorn_fuzz::options_from;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Run {
    result: Result<(usize, bool), HttpError>,
    out: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
}

fn whole(opts: &ParserOptions, body: &[u8]) -> Run {
    let mut d = ChunkedDecoder::new(opts);
    let mut out = Vec::new();
    let result = d.decode(body, &mut out);
    Run {
        result,
        out,
        trailers: d.trailers().to_vec(),
    }
}

fn pieces(opts: &ParserOptions, body: &[u8], mut seed: u8) -> Run {
    let mut d = ChunkedDecoder::new(opts);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut result = Ok((0, false));
    while pos < body.len() {
        // Piece sizes from 1 to 16 bytes, or the rest, from a tiny LCG.
        seed = seed.wrapping_mul(37).wrapping_add(11);
        let want = if seed & 0x80 != 0 {
            body.len() - pos
        } else {
            1 + (seed & 0x0f) as usize
        };
        let end = (pos + want).min(body.len());
        let given = end - pos;
        match d.decode(&body[pos..end], &mut out) {
            Err(e) => {
                result = Err(e);
                break;
            }
            Ok((n, done)) => {
                assert!(n <= given);
                pos += n;
                if done {
                    result = Ok((pos, true));
                    break;
                }
                // An unfinished body takes every byte it is given.
                assert_eq!(n, given, "bytes left unused");
                result = Ok((pos, false));
            }
        }
    }
    if body.is_empty() {
        result = d.decode(body, &mut out);
    }
    Run {
        result,
        out,
        trailers: d.trailers().to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let (opts, rest) = options_from(data);
    let Some((&seed, body)) = rest.split_first() else {
        return;
    };
    let a = whole(&opts, body);
    let b = pieces(&opts, body, seed);
    assert_eq!(a, b, "split decoding differs");

    if let Ok((consumed, done)) = a.result {
        assert!(consumed <= body.len());
        if !done {
            assert_eq!(consumed, body.len(), "an unfinished body left bytes unused");
        }
    }

    // Whatever payload was decoded, our encoder's framing of it decodes back to it.
    let mut enc = Vec::new();
    for part in a.out.chunks(7) {
        write_chunk(&mut enc, part);
    }
    write_last_chunk(&mut enc);
    let again = whole(&opts, &enc);
    assert_eq!(again.result, Ok((enc.len(), true)));
    assert_eq!(again.out, a.out);
});
