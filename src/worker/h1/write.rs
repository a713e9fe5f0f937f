//! Writing a response on an HTTP/1 connection: the pieces framed by `http::framing`, written with one
//! vectored write each (or several pieces already queued together in one, `write_pieces`), and file
//! bodies with sendfile(2).

use std::io::{self, IoSlice};

use tokio::io::AsyncWriteExt;

use crate::exchange::{HeadInfo, Piece};
use crate::http::framing::{H1Response, HeadFacts};
use crate::worker::transport::Transport;

/// The HTTP/1 bytes around a piece's body: the head and a chunk's size line before it, the chunk's end (and
/// the last chunk) after it. Kept for the whole response, so its buffers are reused piece after piece.
pub(in crate::worker) struct Framed {
    pub pre: Vec<u8>,
    pub post: Vec<u8>,
}

impl Framed {
    /// Room for a typical head without growing the buffer.
    pub(in crate::worker) fn new() -> Framed {
        Framed {
            pre: Vec::with_capacity(256),
            post: Vec::new(),
        }
    }

    /// Frame `piece`; returns how many of its body bytes go out.
    pub(in crate::worker) fn piece(
        &mut self,
        h1: &mut H1Response,
        piece: &Piece,
        stopping: bool,
    ) -> usize {
        self.pre.clear();
        self.post.clear();
        if let (Some(head), Some(fields)) = (&piece.head, piece.fields()) {
            h1.write_head(
                &mut self.pre,
                &facts(head, fields.reason, piece.total, stopping),
                fields,
            );
        }
        let n = h1.body(piece.body_len(), &mut self.pre, &mut self.post);
        if piece.end {
            h1.end(&mut self.post, &piece.trailers);
        }
        n
    }
}

/// What the HTTP/1 framing needs of an app's response head.
pub(super) fn facts<'a>(
    head: &HeadInfo,
    reason: Option<&'a [u8]>,
    total: Option<u64>,
    stopping: bool,
) -> HeadFacts<'a> {
    HeadFacts {
        status: head.status,
        reason,
        content_length: head.content_length,
        total,
        close: head.close || stopping,
    }
}

/// Bodies up to this size are copied beside the head rather than written from their own buffer.
const SMALL_BODY: usize = 4 * 1024;

/// Write a framed piece with vectored writes — the framing, then the first `body` bytes of the piece's
/// body, then the framing after it — so a body borrowed from the app goes out beside the head without
/// being copied next to it.
pub(in crate::worker) async fn write_piece<S: Transport>(
    stream: &mut S,
    frame: &mut Framed,
    piece: &Piece,
    body: usize,
) -> io::Result<()> {
    if body == 0 && frame.post.is_empty() {
        return stream.write_all(&frame.pre).await;
    }
    // A small body all in the piece's buffer goes out with the head in one plain write: copying a few
    // hundred bytes costs less than a vectored write of mostly empty parts.
    if body <= SMALL_BODY && body == piece.data().len() && piece.borrowed.is_none() {
        frame.pre.extend_from_slice(piece.data());
        frame.pre.extend_from_slice(&frame.post);
        return stream.write_all(&frame.pre).await;
    }
    let [data, borrowed, after] = body_parts(piece, body);
    let mut parts = [
        IoSlice::new(&frame.pre),
        IoSlice::new(data),
        IoSlice::new(borrowed),
        IoSlice::new(after),
        IoSlice::new(&frame.post),
    ];
    write_all_vectored(stream, &mut parts).await
}

/// The piece's body as it is written: its copied part, its borrowed part and what follows, cut to the
/// `body` bytes the framing allows (normally the whole body: the app side already keeps a body within
/// what the response may carry).
fn body_parts(piece: &Piece, body: usize) -> [&[u8]; 3] {
    let mut allowed = body;
    let mut take = |b: &'_ [u8]| -> usize {
        let n = b.len().min(allowed);
        allowed -= n;
        n
    };
    let borrowed = piece.borrowed.as_ref().map_or(&[][..], |b| b.as_slice());
    let data = piece.data();
    let data = &data[..take(data)];
    let borrowed = &borrowed[..take(borrowed)];
    let after = &piece.after[..take(&piece.after)];
    [data, borrowed, after]
}

/// Write every part, in as many vectored writes as the socket takes.
async fn write_all_vectored<S: Transport>(
    stream: &mut S,
    parts: &mut [IoSlice<'_>],
) -> io::Result<()> {
    let mut left = parts;
    IoSlice::advance_slices(&mut left, 0);
    while !left.is_empty() {
        let n = stream.write_vectored(left).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    Ok(())
}

/// At most this many queued pieces go out in one vectored write (5 buffers each, far below `IOV_MAX`).
pub(in crate::worker) const BATCH_MAX: usize = 16;

/// Frame `pieces` (in order, the response's next ones) and write them with one vectored write: the
/// framing of every piece goes into one buffer, the bodies are written from where they are.
///
/// Pieces the app queued back to back (an ASGI app's `more_body` messages sent in one step of its
/// task, any runtime's pieces queued faster than they are written) then cost the I/O thread one
/// `writev` instead of one each: on a loopback connection each write is a transmit, a receive and a
/// wake-up of the client (`sock_def_readable`), and the writes were 74% of the I/O thread's samples for the ASGI 100 KiB
/// streamed row (4 pieces of 25 KiB). Measured on that row: `writev` per request 3.97 → 1.00 and the
/// worker's CPU per request 62 → 49 µs (one worker, `perf stat`); A/B with 2 workers, 3 interleaved
/// repeats, 1.09× req/s, CPU per request 56.8 → 51.0 µs, p99 7.38 → 6.73 ms
/// (bench/results/2026-12-04-asgiperf2-ab-batchwrite.md); with 5 repeats 1.17×, CPU per request
/// 66.5 → 55.0 µs, p99 7.11 → 6.41 ms (`-batchwrite-5x.md`). The pieces are already queued when the I/O
/// thread wakes for the first, so holding them back on the app side (tried) saved no write and cost
/// the event loop an extra turn per response.
pub(in crate::worker) async fn write_pieces<S: Transport>(
    stream: &mut S,
    frame: &mut Framed,
    h1: &mut H1Response,
    pieces: &[Box<Piece>],
    stopping: bool,
) -> io::Result<()> {
    // Each piece's framing before and after its body, as ranges of `arena`, and its body length.
    let mut arena: Vec<u8> = Vec::with_capacity(64 * pieces.len() + 256);
    let mut spans = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let body = frame.piece(h1, piece, stopping);
        let pre = arena.len()..arena.len() + frame.pre.len();
        arena.extend_from_slice(&frame.pre);
        let post = arena.len()..arena.len() + frame.post.len();
        arena.extend_from_slice(&frame.post);
        spans.push((pre, body, post));
    }
    let mut parts: Vec<IoSlice<'_>> = Vec::with_capacity(5 * pieces.len());
    for (piece, (pre, body, post)) in pieces.iter().zip(spans) {
        let [data, borrowed, after] = body_parts(piece, body);
        for part in [&arena[pre], data, borrowed, after, &arena[post]] {
            if !part.is_empty() {
                parts.push(IoSlice::new(part));
            }
        }
    }
    write_all_vectored(stream, &mut parts).await
}
