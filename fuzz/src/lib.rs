//! Helpers of the fuzz targets around ferricorn's HTTP crate (`crates/ferricorn-http`) and websocket
//! crate (`crates/ferricorn-ws`): the parser and the chunked decoder depend only on httparse, memchr,
//! itoa and httpdate, the frame layer and permessage-deflate on tokio's I/O traits and flate2, so the
//! fuzz targets link no Python. A websocket session is driven in memory ([`read_session`]): the
//! client's bytes arrive in pieces, one per read of the socket. An HTTP/2 server connection on the `h2`
//! crate runs over an in-memory duplex pipe ([`h2server`]).

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

pub use ferricorn_ws as ws;

pub mod h2server;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ws::deflate::{self, Codec, Params};
use ws::frames::{Incoming, ReadError, WsConn};

/// A small deterministic generator for split points (xorshift), seeded from the input.
pub struct Rng(u32);

impl Rng {
    pub fn new(seed: u8) -> Rng {
        Rng(0x9E37_79B9 ^ (u32::from(seed) << 8 | u32::from(seed)))
    }
    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
    /// A number in `1..=max`.
    pub fn size(&mut self, max: usize) -> usize {
        1 + self.next_u32() as usize % max.max(1)
    }
}

/// `data` cut into pieces of random length (1 to `max` bytes each).
pub fn split<'a>(data: &'a [u8], rng: &mut Rng, max: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (a, b) = rest.split_at(rng.size(max).min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

/// A client connection in memory: each read gets (at most) the next piece, then end of stream; what
/// the server writes is dropped. Never pending, so futures on it finish in one poll.
pub struct Pieces(VecDeque<Vec<u8>>);

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(front) = self.0.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.drain(..n);
            if front.is_empty() {
                self.0.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pieces {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A future on [`Pieces`] run to its end (it never waits).
pub fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a read of in-memory pieces waited"),
    }
}

/// What a session read, in a form that compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<(u16, String)>),
}

impl From<Incoming> for Got {
    fn from(i: Incoming) -> Got {
        match i {
            Incoming::Text(t) => Got::Text(t),
            Incoming::Binary(b) => Got::Binary(b),
            Incoming::Ping(p) => Got::Ping(p),
            Incoming::Pong => Got::Pong,
            Incoming::Close(c) => Got::Close(c),
        }
    }
}

/// How a session's reading ended: the close code and reason of a violation, or None when the
/// connection ended.
pub type End = Option<(u16, &'static str)>;

/// A session server side (as `worker/ws.rs` makes it): `leftover` came with the handshake, then each
/// piece is one read of the socket. Everything it reads until it stops, and why it stopped.
pub fn read_session(
    leftover: &[u8],
    pieces: Vec<Vec<u8>>,
    max_message: usize,
    deflate: Option<Params>,
) -> (Vec<Got>, End) {
    let mut conn = WsConn::new(
        Pieces(pieces.into()),
        leftover.to_vec(),
        max_message,
        deflate.map(Codec::new),
    );
    let mut got = Vec::new();
    // Every message read takes at least one frame's bytes; bound the loop anyway.
    for _ in 0..1_000_000 {
        match run(conn.read()) {
            Ok(i) => got.push(i.into()),
            Err(ReadError::Violation(code, why)) => return (got, Some((code, why))),
            Err(ReadError::Gone) => return (got, None),
        }
    }
    panic!("a session read more messages than its input holds frames");
}

/// A client's frame (masked), as RFC 6455 §5.2 lays it out.
pub fn client_frame(out: &mut Vec<u8>, fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    out.push(if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 } | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
}

/// The permessage-deflate agreement of a plain `permessage-deflate` offer.
pub fn default_deflate() -> Params {
    deflate::negotiate([b"permessage-deflate".as_slice()]).expect("the plain offer is taken")
}
