//! permessage-deflate (RFC 7692) for websocket sessions: the negotiation of the
//! `Sec-WebSocket-Extensions` offer, and the per-message codec.
//!
//! Negotiation takes the first `permessage-deflate` offer whose parameters are all understood and
//! can be honoured, and declines the rest (RFC 7692 §7.1): an unknown or repeated parameter, a value
//! where none belongs, or a window size outside 8–15 declines that offer. `server_max_window_bits=8`
//! is declined too (zlib cannot make a raw deflate stream with a 256-byte window), 9–15 are used as
//! asked. `server_no_context_takeover` resets the compressor after each message;
//! `client_no_context_takeover` is acknowledged and the decompressor reset after each message.
//! `client_max_window_bits` needs no answer: the decompressor's window is always the largest (15),
//! which reads any smaller window the client chooses.
//!
//! The codec compresses a whole message with a sync flush and strips its `00 00 ff ff` tail (with a
//! window of at most 12 bits whatever was agreed: a smaller window than the agreed one is always
//! allowed, and it keeps a session's memory small); it
//! decompresses a message's frames as they come, the tail appended at the last one, and stops with
//! [`Inflate::TooBig`] as soon as the decompressed size passes the session's limit, so a small
//! compressed message cannot make a big one in memory.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The four octets a sync flush ends with, left off on the wire (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The compressor's window at most, in bits.
const COMPRESS_WINDOW_BITS: u8 = 12;

/// What was agreed with the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// Reset the compressor after each message (`server_no_context_takeover`).
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message (`client_no_context_takeover`).
    pub client_no_context_takeover: bool,
    /// The compressor's window, in bits (`server_max_window_bits`; 15 when not asked).
    pub server_max_window_bits: u8,
    /// Whether the client named `server_max_window_bits` (the answer names it back).
    server_window_asked: bool,
}

impl Params {
    /// The `Sec-WebSocket-Extensions` value of the answer.
    pub fn response(&self) -> String {
        let mut out = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if self.server_window_asked {
            out.push_str("; server_max_window_bits=");
            out.push_str(&self.server_max_window_bits.to_string());
        }
        out
    }
}

/// The agreement for the `Sec-WebSocket-Extensions` values of a handshake request (the field may
/// come more than once), or None when no permessage-deflate offer can be taken.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Params> {
    for value in values {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for offer in split_unquoted(value, ',') {
            let mut parts = split_unquoted(offer, ';').into_iter();
            let name = parts.next().unwrap_or_default().trim();
            if !name.eq_ignore_ascii_case("permessage-deflate") {
                continue;
            }
            if let Some(params) = accept(parts) {
                return Some(params);
            }
        }
    }
    None
}

/// One offer's parameters taken, or None to decline it.
fn accept<'a>(params: impl Iterator<Item = &'a str>) -> Option<Params> {
    let mut out = Params {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        server_window_asked: false,
    };
    let mut seen: Vec<String> = Vec::new();
    for param in params {
        let param = param.trim();
        if param.is_empty() {
            return None;
        }
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                (k.trim().to_ascii_lowercase(), Some(v))
            }
            None => (param.to_ascii_lowercase(), None),
        };
        if seen.contains(&key) {
            return None;
        }
        match (key.as_str(), value) {
            ("server_no_context_takeover", None) => out.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => out.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => {
                let bits = window_bits(v)?;
                if bits < 9 {
                    return None;
                }
                out.server_max_window_bits = bits;
                out.server_window_asked = true;
            }
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
        seen.push(key);
    }
    Some(out)
}

/// A window size as RFC 7692 writes it: 8–15, digits only, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) || v.starts_with('0') {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// `s` split at `sep`, except inside a quoted string.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

/// Why a compressed message could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Inflate {
    /// Not a deflate stream.
    Corrupt,
    /// Its decompressed size passed the limit.
    TooBig,
}

/// A session's compressor and decompressor.
pub struct Codec {
    params: Params,
    compress: Compress,
    decompress: Decompress,
    /// The client's stream ended with a final block: a new one begins at its next message.
    ended: bool,
}

impl Codec {
    pub fn new(params: Params) -> Codec {
        // Any window up to the agreed one is the compressor's to choose, and the client's
        // decompressor reads it: a 4 KiB one instead of 32 KiB makes the compressor's window
        // arrays smaller, for a little less compression of big messages.
        let compress = Compress::new_with_window_bits(
            Compression::default(),
            false,
            params.server_max_window_bits.min(COMPRESS_WINDOW_BITS),
        );
        Codec {
            params,
            compress,
            decompress: Decompress::new_with_window_bits(false, 15),
            ended: false,
        }
    }

    /// One message's payload, compressed (the RSV1 frame's payload).
    pub fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let start = self.compress.total_in();
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.len().max(1024));
            }
            let done = (self.compress.total_in() - start) as usize;
            // A sync flush cannot fail on a stream this codec alone drives.
            if self
                .compress
                .compress_vec(&data[done..], &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            let done = (self.compress.total_in() - start) as usize;
            if done == data.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.is_empty() {
            // An empty message: a single empty block (RFC 7692 §7.2.3.6).
            out.push(0x00);
        }
        if self.params.server_no_context_takeover {
            self.compress.reset();
        }
        out
    }

    /// Decompress one frame of a compressed message into `out`, which may not grow past `limit`.
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), Inflate> {
        self.feed(input, out, limit)
    }

    /// The message's end: its stripped tail goes in, and the context is dropped when agreed.
    pub fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), Inflate> {
        let r = self.feed(&TAIL, out, limit);
        if self.ended || self.params.client_no_context_takeover {
            self.decompress.reset(false);
            self.ended = false;
        }
        r
    }

    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), Inflate> {
        loop {
            if self.ended {
                // After a final block nothing but the tail belongs to the message.
                return if input.is_empty() || input == TAIL {
                    Ok(())
                } else {
                    Err(Inflate::Corrupt)
                };
            }
            if out.len() == out.capacity() {
                // One byte past the limit is room enough to tell that it is passed.
                let room = (limit + 1).saturating_sub(out.len());
                if room == 0 {
                    return Err(Inflate::TooBig);
                }
                out.reserve_exact(room.min(out.len().max(16 * 1024)));
            }
            let (in_before, out_before) = (self.decompress.total_in(), out.len());
            let r = self
                .decompress
                .decompress_vec(input, out, FlushDecompress::Sync);
            // What inflated before a corrupt block counts too: past the limit, the message is too
            // big whatever follows (and a Corrupt message never holds more than the limit).
            if out.len() > limit {
                return Err(Inflate::TooBig);
            }
            let status = r.map_err(|_| Inflate::Corrupt)?;
            let used = (self.decompress.total_in() - in_before) as usize;
            input = &input[used..];
            if status == Status::StreamEnd {
                self.ended = true;
                continue;
            }
            let room_left = out.len() < out.capacity();
            if input.is_empty() && room_left {
                return Ok(());
            }
            if used == 0 && out.len() == out_before && room_left {
                return Err(Inflate::Corrupt);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str) -> Option<String> {
        negotiate([v.as_bytes()]).map(|p| p.response())
    }

    #[test]
    fn negotiation() {
        assert_eq!(
            offer("permessage-deflate").as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(
            offer("permessage-deflate; client_max_window_bits").as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(
            offer("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
                .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=\"10\"").as_deref(),
            Some("permessage-deflate; server_max_window_bits=10")
        );
        // declined offers: the next one is taken
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits=12")
                .as_deref(),
            Some("permessage-deflate")
        );
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate;",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
        assert_eq!(
            negotiate([b"foo".as_slice(), b"permessage-deflate".as_slice()]).map(|p| p.response()),
            Some("permessage-deflate".to_string())
        );
    }

    fn pair(params: &str) -> (Codec, Codec) {
        let p = negotiate([params.as_bytes()]).unwrap();
        (Codec::new(p.clone()), Codec::new(p))
    }

    #[test]
    fn round_trips_with_and_without_context() {
        for params in [
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=9",
        ] {
            let (mut tx, mut rx) = pair(params);
            for msg in [
                &b"hello hello hello"[..],
                b"",
                &[7u8; 100_000][..],
                b"hello hello",
            ] {
                let wire = tx.compress(msg);
                let mut out = Vec::new();
                // in two frames
                let cut = wire.len() / 2;
                rx.inflate(&wire[..cut], &mut out, 1 << 20).unwrap();
                rx.inflate(&wire[cut..], &mut out, 1 << 20).unwrap();
                rx.finish(&mut out, 1 << 20).unwrap();
                assert_eq!(out, msg, "{params}");
            }
        }
    }

    /// Found by the `websocket_deflate` fuzz target: data past the limit inflated in the same call
    /// that met a corrupt block came back as Corrupt with the message one byte over the limit.
    #[test]
    fn past_the_limit_before_a_corrupt_block_is_too_big() {
        // A stored block of 5 bytes, then a block of the reserved type 3.
        let data = b"\x00\x05\x00\xfa\xffhello\x07";
        let mut rx = Codec::new(negotiate([b"permessage-deflate".as_slice()]).unwrap());
        let mut out = Vec::new();
        assert_eq!(rx.inflate(data, &mut out, 4), Err(Inflate::TooBig));
        assert_eq!(out.len(), 5);
        // Within the limit, the same data is corrupt, and what came before it stays within it.
        let mut rx = Codec::new(negotiate([b"permessage-deflate".as_slice()]).unwrap());
        let mut out = Vec::new();
        assert_eq!(rx.inflate(data, &mut out, 100), Err(Inflate::Corrupt));
        assert!(out.len() <= 100);
    }

    #[test]
    fn the_limit_is_on_the_decompressed_size() {
        let (mut tx, mut rx) = pair("permessage-deflate");
        let wire = tx.compress(&vec![0u8; 10 << 20]);
        assert!(wire.len() < 20_000);
        let mut out = Vec::new();
        assert_eq!(rx.inflate(&wire, &mut out, 1 << 20), Err(Inflate::TooBig));
        assert!(out.capacity() <= (1 << 20) + 1);
        let mut out = Vec::new();
        assert_eq!(
            Codec::new(negotiate([b"permessage-deflate".as_slice()]).unwrap()).inflate(
                b"\xff\xff\xff\xff",
                &mut out,
                100
            ),
            Err(Inflate::Corrupt)
        );
    }
}
