//! The request body on an HTTP/1 connection: read ahead before the app runs (small bodies go with the
//! request), decoded piece by piece for the app (length or chunked), drained after the response so the
//! connection can carry the next request.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::{timeout, Instant};

use super::{refuse, DRAIN_LIMIT, PREFETCH_LIMIT};
use crate::exchange::{Peer, BODY_CHUNK};
use crate::http::{self, BodyKind, ChunkedDecoder, HttpError, RequestHead};
use crate::worker::transport::Transport;
use crate::worker::IoState;

/// The request body still on the socket.
pub(super) enum BodyState {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    Done,
}

#[derive(Debug)]
pub(super) enum BodyError {
    /// A bounded wait for body bytes ended before any arrived (the caller has a timer to serve).
    Pending,
    Io,
    Timeout,
    Closed,
    Http(HttpError),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Pending => f.write_str("waiting for the request body"),
            BodyError::Io => f.write_str("error reading the request body"),
            BodyError::Timeout => f.write_str("timed out reading the request body"),
            BodyError::Closed => f.write_str("client closed the connection before the body ended"),
            BodyError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl BodyError {
    /// The protocol violation to answer with, if the client can still read an answer: a malformed body,
    /// or one cut off by the client closing its side.
    pub(super) fn http(&self) -> Option<HttpError> {
        match self {
            BodyError::Http(e) => Some(*e),
            BodyError::Closed => Some(HttpError::IncompleteBody),
            BodyError::Pending | BodyError::Io | BodyError::Timeout => None,
        }
    }
}

impl BodyState {
    pub(super) fn is_done(&self) -> bool {
        matches!(self, BodyState::Done)
    }

    /// The next piece of decoded body, reading from the socket as needed; None at the end of the body.
    pub(super) async fn next<S: Transport>(
        &mut self,
        stream: &mut S,
        buf: &mut Vec<u8>,
        read_timeout: Duration,
    ) -> Result<Option<Vec<u8>>, BodyError> {
        loop {
            match self {
                BodyState::Done => return Ok(None),
                BodyState::Length(remaining) => {
                    if *remaining == 0 {
                        *self = BodyState::Done;
                        return Ok(None);
                    }
                    if !buf.is_empty() {
                        let n = (*remaining).min(buf.len() as u64).min(BODY_CHUNK as u64) as usize;
                        let piece = take_front(buf, n);
                        *remaining -= n as u64;
                        if *remaining == 0 {
                            *self = BodyState::Done;
                        }
                        return Ok(Some(piece));
                    }
                }
                BodyState::Chunked(dec) => {
                    if !buf.is_empty() {
                        let mut out = Vec::new();
                        let (consumed, done) =
                            dec.decode(buf, &mut out).map_err(BodyError::Http)?;
                        buf.drain(..consumed);
                        if done {
                            *self = BodyState::Done;
                        }
                        if !out.is_empty() {
                            return Ok(Some(out));
                        }
                        if done {
                            return Ok(None);
                        }
                        if consumed > 0 {
                            continue;
                        }
                    }
                }
            }
            buf.reserve(BODY_CHUNK);
            match timeout(read_timeout, stream.read_buf(buf)).await {
                Err(_) => return Err(BodyError::Timeout),
                Ok(Err(_)) => return Err(BodyError::Io),
                Ok(Ok(0)) => return Err(BodyError::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// The body as the request starts: what is still on the socket, and what was read ahead.
pub(super) struct BodyStart {
    pub body: BodyState,
    pub prefetched: Vec<u8>,
    pub expect_continue: bool,
}

/// Read (and so validate) the start of the body before the app runs, without holding any capacity: a
/// small body — the common POST — goes to Python whole with the request, saving a round trip between the
/// threads per read, and a malformed one is refused before the app is ever called. A client that waits
/// for `100 Continue` sends nothing until the app asks, so its body is left for the app to pull. The
/// whole read-ahead must arrive within the header timeout: a client trickling its body ties up nothing
/// but its own connection. None when the connection must close (after answering, where there is an
/// answer).
pub(super) async fn start_body<S: Transport>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    io: &IoState,
    peer: &Peer,
) -> Option<BodyStart> {
    let mut body = match head.body {
        BodyKind::Empty => BodyState::Done,
        BodyKind::Length(n) => BodyState::Length(n),
        BodyKind::Chunked => BodyState::Chunked(Box::new(ChunkedDecoder::new(&io.parser))),
    };
    let expect_continue = head.expect_continue && !body.is_done();
    let mut prefetched = Vec::new();
    if !expect_continue {
        let deadline = Instant::now() + io.header_timeout;
        if let BodyState::Length(n) = body {
            // A body of known length that fits is read into one buffer of its size: no piecing together.
            if n <= PREFETCH_LIMIT as u64 {
                let n = n as usize;
                while buf.len() < n {
                    buf.reserve(n - buf.len());
                    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                        Ok(Ok(0)) => {
                            let e = HttpError::IncompleteBody;
                            refuse(stream, io, peer, &e, &http::error_response(&e)).await;
                            return None;
                        }
                        Ok(Err(_)) | Err(_) => return None,
                        Ok(Ok(_)) => {}
                    }
                }
                return Some(BodyStart {
                    body: BodyState::Done,
                    prefetched: take_front(buf, n),
                    expect_continue,
                });
            }
        }
        while !body.is_done() && prefetched.len() < PREFETCH_LIMIT {
            let next = tokio::time::timeout_at(deadline, body.next(stream, buf, io.header_timeout));
            match next.await {
                Ok(Ok(Some(d))) if prefetched.is_empty() => prefetched = d,
                Ok(Ok(Some(d))) => prefetched.extend_from_slice(&d),
                Ok(Ok(None)) => break,
                Ok(Err(e @ (BodyError::Http(_) | BodyError::Closed))) => {
                    let e = e.http().unwrap_or(HttpError::IncompleteBody);
                    refuse(stream, io, peer, &e, &http::error_response(&e)).await;
                    return None;
                }
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
    Some(BodyStart {
        body,
        prefetched,
        expect_continue,
    })
}

/// `start_body` needs nothing from the socket: the read-ahead is already buffered.
pub(super) fn body_in_buffer(head: &RequestHead, buf: &[u8]) -> bool {
    match head.body {
        BodyKind::Empty => true,
        BodyKind::Length(n) => buf.len() as u64 >= n.min(PREFETCH_LIMIT as u64),
        BodyKind::Chunked => false,
    }
}

/// Split off the first `n` bytes of `buf`. The body piece is usually most of the buffer and what follows
/// (a pipelined request, if anything) is short, so the piece keeps the allocation and the rest is copied.
pub(super) fn take_front(buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    if n == buf.len() {
        return std::mem::take(buf);
    }
    if n >= buf.len() - n {
        let rest = buf.split_off(n);
        return std::mem::replace(buf, rest);
    }
    let piece = buf[..n].to_vec();
    buf.drain(..n);
    piece
}

pub(super) async fn drain<S: Transport>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    mut body: BodyState,
    read_timeout: Duration,
) -> bool {
    let mut drained = 0u64;
    while drained <= DRAIN_LIMIT {
        match body.next(stream, buf, read_timeout).await {
            Ok(Some(d)) => drained += d.len() as u64,
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
    false
}
