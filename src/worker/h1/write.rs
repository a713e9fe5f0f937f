//! Writing a response on an HTTP/1 connection: the pieces framed by `http::framing`, written with one
//! vectored write each, and file bodies with sendfile(2).

use std::io::{self, IoSlice};

use tokio::io::AsyncWriteExt;

use crate::exchange::{Piece, ResponseHead};
use crate::http::framing::{H1Response, HeadFacts};
use crate::worker::transport::Transport;

/// The HTTP/1 bytes around a piece's body: the head and a chunk's size line before it, the chunk's end (and
/// the last chunk) after it. Kept for the whole response, so its buffers are reused piece after piece.
pub(super) struct Framed {
    pub pre: Vec<u8>,
    pub post: Vec<u8>,
}

impl Framed {
    /// Room for a typical head without growing the buffer.
    pub(super) fn new() -> Framed {
        Framed {
            pre: Vec::with_capacity(256),
            post: Vec::new(),
        }
    }

    /// Frame `piece`; returns how many of its body bytes go out.
    pub(super) fn piece(&mut self, h1: &mut H1Response, piece: &Piece, stopping: bool) -> usize {
        self.pre.clear();
        self.post.clear();
        if let Some(head) = &piece.head {
            h1.write_head(&mut self.pre, &facts(head, piece.total, stopping));
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
    head: &'a ResponseHead,
    total: Option<u64>,
    stopping: bool,
) -> HeadFacts<'a> {
    HeadFacts {
        status: head.status,
        status_text: head.status_text.as_deref(),
        headers: &head.headers,
        content_length: head.content_length,
        total,
        close: head.close || stopping,
    }
}

/// Write a framed piece with vectored writes — the framing, then the first `body` bytes of the piece's
/// body, then the framing after it — so a body borrowed from the app goes out beside the head without
/// being copied next to it.
pub(super) async fn write_piece<S: Transport>(
    stream: &mut S,
    frame: &Framed,
    piece: &Piece,
    body: usize,
) -> io::Result<()> {
    if body == 0 && frame.post.is_empty() {
        return stream.write_all(&frame.pre).await;
    }
    // Normally the whole body: the app side already keeps a body within what the response may carry.
    let mut allowed = body;
    let mut take = |b: &'_ [u8]| -> usize {
        let n = b.len().min(allowed);
        allowed -= n;
        n
    };
    let borrowed = piece.borrowed.as_ref().map_or(&[][..], |b| b.as_slice());
    let data = &piece.data[..take(&piece.data)];
    let borrowed = &borrowed[..take(borrowed)];
    let after = &piece.after[..take(&piece.after)];
    let mut parts = [
        IoSlice::new(&frame.pre),
        IoSlice::new(data),
        IoSlice::new(borrowed),
        IoSlice::new(after),
        IoSlice::new(&frame.post),
    ];
    let mut left = &mut parts[..];
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
