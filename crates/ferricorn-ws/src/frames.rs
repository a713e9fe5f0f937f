//! The websocket frame and message layer (RFC 6455 §5) of an accepted session: frames read from the
//! connection are checked and joined into messages, messages and control frames written out, with
//! permessage-deflate ([`crate::deflate`]) when the handshake agreed on it.
//!
//! What the peer did wrong comes back as a [`ReadError::Violation`] with the close code it earns
//! (RFC 6455 §7.4.1): 1002 for a protocol error (reserved bits or opcodes, an unmasked frame, a
//! control frame that is fragmented or longer than 125 bytes, a continuation with no message to
//! continue or a new message before the last one ended, a bad close frame or close code), 1007 for a
//! text message or close reason that is not UTF-8 (checked as the bytes arrive, so a bad sequence
//! fails the session without waiting for its frame's or message's end) or compressed data that does not
//! inflate, 1009 for a message past the size limit. The limit applies to the decompressed size, and a
//! frame's declared length is checked before its payload is read.
//!
//! [`WsConn::read`] is cancel-safe: all state lives in the connection, and its only await is one read
//! of the socket, so the session may drop it in a `select!` and call it again.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::deflate::{Codec, Inflate};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// How much the read buffer grows by when it has to.
const READ_CHUNK: usize = 64 * 1024;

/// What the peer sent.
#[derive(Debug)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// A close frame: its code and reason, when it had them.
    Close(Option<(u16, String)>),
}

/// Why nothing more can be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer broke the protocol: the session closes with this code and reason.
    Violation(u16, &'static str),
    /// The connection ended or failed.
    Gone,
}

fn protocol(why: &'static str) -> ReadError {
    ReadError::Violation(1002, why)
}

/// A message being put together from its frames.
struct Partial {
    text: bool,
    compressed: bool,
    data: Vec<u8>,
    /// How much of `data` is known to be valid UTF-8 (text messages).
    checked: usize,
}

/// One complete frame taken from the buffer.
struct Frame {
    fin: bool,
    compressed: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// An accepted websocket connection, server side.
pub struct WsConn<S> {
    stream: S,
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` begin.
    pos: usize,
    max_message: usize,
    deflate: Option<Codec>,
    partial: Option<Partial>,
    /// A close frame came from the peer (a bad one too): no other is to be waited for.
    peer_closed: bool,
    /// Of a text frame still arriving: how much of its payload is checked as UTF-8 already, and the
    /// cut sequence at the end of that (so that bad text fails before its frame is complete).
    early: Option<(usize, Vec<u8>)>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    /// `leftover`: bytes read past the handshake request, the start of the first frame.
    pub fn new(stream: S, leftover: Vec<u8>, max_message: usize, deflate: Option<Codec>) -> Self {
        WsConn {
            stream,
            buf: leftover,
            pos: 0,
            max_message,
            deflate,
            partial: None,
            peer_closed: false,
            early: None,
        }
    }

    /// The next message, ping, pong or close from the peer.
    pub async fn read(&mut self) -> Result<Incoming, ReadError> {
        loop {
            while let Some(frame) = self.next_frame()? {
                if let Some(incoming) = self.take(frame)? {
                    return Ok(incoming);
                }
            }
            self.fill().await?;
        }
    }

    /// One read of the socket into the buffer (the only await of [`WsConn::read`]).
    async fn fill(&mut self) -> Result<(), ReadError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
            // A big message is through: its room is not kept for the rest of the session.
            self.buf = Vec::with_capacity(READ_CHUNK);
        }
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK.max(self.buf.len() / 2));
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => Err(ReadError::Gone),
            Ok(_) => Ok(()),
        }
    }

    /// The next complete frame in the buffer, checked; None until all of it has arrived. A header
    /// is checked as soon as it is complete, before its payload is waited for.
    fn next_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv1, rsv23, opcode) =
            (b[0] & 0x80 != 0, b[0] & 0x40 != 0, b[0] & 0x30, b[0] & 0x0F);
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if rsv23 != 0 {
            return Err(protocol("reserved bits set"));
        }
        let control = opcode & 0x8 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(protocol("reserved opcode")),
        }
        if rsv1 && (self.deflate.is_none() || opcode == OP_CONTINUATION || control) {
            return Err(protocol(
                "reserved bit 1 set without a compressed message to start",
            ));
        }
        if !masked {
            return Err(protocol("unmasked frame from a client"));
        }
        if control && (!fin || len > 125) {
            return Err(protocol("fragmented or oversized control frame"));
        }
        if !control {
            match (&self.partial, opcode) {
                (None, OP_CONTINUATION) => return Err(protocol("continuation without a message")),
                (Some(_), OP_TEXT | OP_BINARY) => {
                    return Err(protocol("new message before the last one ended"))
                }
                _ => {}
            }
            let so_far = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
            let compressed = rsv1 || self.partial.as_ref().is_some_and(|p| p.compressed);
            // A compressed frame cannot be longer than the limit either (it would inflate past it
            // but for stored blocks, which only add to it).
            if len > self.max_message as u64
                || (!compressed && so_far + len > self.max_message as u64)
            {
                return Err(ReadError::Violation(1009, "message too big"));
            }
        }
        let Ok(len) = usize::try_from(len) else {
            return Err(ReadError::Violation(1009, "message too big"));
        };
        if b.len() < at + 4 + len {
            let text = match (&self.partial, opcode) {
                (None, OP_TEXT) => !rsv1,
                (Some(p), OP_CONTINUATION) => p.text && !p.compressed,
                _ => false,
            };
            if text && b.len() > at + 4 {
                let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
                let (done, carry) = self.early.get_or_insert_with(|| match &self.partial {
                    Some(p) => (0, p.data[p.checked..].to_vec()),
                    None => (0, Vec::new()),
                });
                let avail = &b[at + 4..];
                let mut chunk = std::mem::take(carry);
                chunk.extend(
                    avail[*done..]
                        .iter()
                        .enumerate()
                        .map(|(i, byte)| byte ^ mask[(*done + i) % 4]),
                );
                *done = avail.len();
                match std::str::from_utf8(&chunk) {
                    Ok(_) => {}
                    Err(e) if e.error_len().is_some() => {
                        return Err(ReadError::Violation(1007, "invalid UTF-8"))
                    }
                    Err(e) => *carry = chunk[e.valid_up_to()..].to_vec(),
                }
            }
            // Room for the rest of the frame, so that it is read in large pieces.
            let need = at + 4 + len - b.len();
            if self.buf.capacity() - self.buf.len() < need {
                self.buf.reserve(need);
            }
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        let mut payload = b[at..at + len].to_vec();
        unmask(&mut payload, mask);
        self.pos += at + len;
        self.early = None;
        Ok(Some(Frame {
            fin,
            compressed: rsv1,
            opcode,
            payload,
        }))
    }

    /// A checked frame taken into the message state: a message or control frame when one is whole.
    fn take(&mut self, frame: Frame) -> Result<Option<Incoming>, ReadError> {
        match frame.opcode {
            OP_PING => return Ok(Some(Incoming::Ping(frame.payload))),
            OP_PONG => return Ok(Some(Incoming::Pong)),
            OP_CLOSE => {
                self.peer_closed = true;
                return close_frame(&frame.payload).map(|c| Some(Incoming::Close(c)));
            }
            OP_TEXT | OP_BINARY => {
                self.partial = Some(Partial {
                    text: frame.opcode == OP_TEXT,
                    compressed: frame.compressed,
                    data: Vec::new(),
                    checked: 0,
                });
            }
            _ => {}
        }
        let max = self.max_message;
        let Some(p) = self.partial.as_mut() else {
            return Err(protocol("continuation without a message"));
        };
        if p.compressed {
            let Some(codec) = self.deflate.as_mut() else {
                return Err(protocol("compressed frame without permessage-deflate"));
            };
            let mut r = codec.inflate(&frame.payload, &mut p.data, max);
            if r.is_ok() && frame.fin {
                r = codec.finish(&mut p.data, max);
            }
            match r {
                Ok(()) => {}
                Err(Inflate::TooBig) => return Err(ReadError::Violation(1009, "message too big")),
                Err(Inflate::Corrupt) => {
                    return Err(ReadError::Violation(
                        1007,
                        "compressed data does not inflate",
                    ))
                }
            }
        } else {
            p.data.extend_from_slice(&frame.payload);
        }
        if p.text {
            match std::str::from_utf8(&p.data[p.checked..]) {
                Ok(_) => p.checked = p.data.len(),
                Err(e) if e.error_len().is_some() || frame.fin => {
                    return Err(ReadError::Violation(1007, "invalid UTF-8"))
                }
                // A sequence cut at the fragment's end: the next fragment completes it.
                Err(e) => p.checked += e.valid_up_to(),
            }
        }
        if !frame.fin {
            return Ok(None);
        }
        let Some(p) = self.partial.take() else {
            return Ok(None);
        };
        if p.text {
            match String::from_utf8(p.data) {
                Ok(t) => Ok(Some(Incoming::Text(t))),
                Err(_) => Err(ReadError::Violation(1007, "invalid UTF-8")),
            }
        } else {
            Ok(Some(Incoming::Binary(p.data)))
        }
    }

    /// Whether the peer sent its close frame.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// A text or binary message, compressed when agreed.
    pub async fn send_message(&mut self, opcode: u8, data: &[u8]) -> io::Result<()> {
        match self.deflate.as_mut() {
            Some(codec) => {
                let payload = codec.compress(data);
                self.send_frame(opcode, true, &payload).await
            }
            None => self.send_frame(opcode, false, data).await,
        }
    }

    /// A ping, pong or close (`payload` at most 125 bytes).
    pub async fn send_control(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.send_frame(opcode, false, payload).await
    }

    /// A close frame with `code` and `reason` (cut to fit 125 bytes at a character boundary).
    pub async fn send_close(&mut self, code: Option<u16>, reason: &str) -> io::Result<()> {
        let mut payload = Vec::with_capacity(125);
        if let Some(code) = code {
            payload.extend_from_slice(&code.to_be_bytes());
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            payload.extend_from_slice(&reason.as_bytes()[..end]);
        }
        self.send_control(OP_CLOSE, &payload).await
    }

    async fn send_frame(&mut self, opcode: u8, compressed: bool, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 10);
        out.push(0x80 | if compressed { 0x40 } else { 0 } | opcode);
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// The end of the connection: the server closes its side first (RFC 6455 §7.1.1), then reads
    /// and drops what the peer still sends until it closes too, so that bytes left unread do not
    /// turn the close into a reset that can lose the close frame on the peer's side. The caller
    /// bounds how long this waits.
    pub async fn finish(&mut self) {
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {}
    }
}

/// A close frame's code and reason, checked (RFC 6455 §5.5.1, §7.4).
fn close_frame(payload: &[u8]) -> Result<Option<(u16, String)>, ReadError> {
    match payload.len() {
        0 => return Ok(None),
        1 => return Err(protocol("close frame of one byte")),
        _ => {}
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !allowed {
        return Err(protocol("close code a peer may not send"));
    }
    match std::str::from_utf8(&payload[2..]) {
        Ok(reason) => Ok(Some((code, reason.to_string()))),
        Err(_) => Err(ReadError::Violation(1007, "close reason not UTF-8")),
    }
}

/// XOR a client frame's payload with its masking key (RFC 6455 §5.3).
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmask_matches_the_bytewise_rule() {
        let mask = [1, 2, 3, 250];
        for n in [0, 1, 3, 4, 5, 17, 1000] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn close_frames() {
        assert!(matches!(close_frame(b""), Ok(None)));
        assert!(matches!(close_frame(b"\x03\xe8ok"), Ok(Some((1000, _)))));
        assert!(matches!(
            close_frame(b"\x03"),
            Err(ReadError::Violation(1002, _))
        ));
        assert!(matches!(
            close_frame(b"\x03\xed"),
            Err(ReadError::Violation(1002, _))
        ));
        assert!(matches!(
            close_frame(b"\x03\xe8\xff"),
            Err(ReadError::Violation(1007, _))
        ));
    }
}
