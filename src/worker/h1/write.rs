//! Writing a response on an HTTP/1 connection: the pieces framed by `http::framing`, written with one
//! vectored write each, and file bodies with sendfile(2).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::{AsyncWriteExt, Interest};

use super::Stream;
use crate::exchange::{Piece, ResponseHead};
use crate::http::framing::{H1Response, HeadFacts};

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
pub(super) fn facts<'a>(head: &'a ResponseHead, total: Option<u64>, stopping: bool) -> HeadFacts<'a> {
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
pub(super) async fn write_piece<S: Stream>(
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

/// Unsent bytes a TCP socket may hold while a file is sent (`TCP_NOTSENT_LOWAT`).
const FILE_UNSENT_LIMIT: libc::c_int = 64 * 1024;

/// Keep at most `FILE_UNSENT_LIMIT` of a file queued unsent in the socket. Without a limit one sendfile
/// call queues megabytes, and the kernel transmits them as the client's ACKs come back — on loopback, on
/// the client's CPU (the bench's file row: wrk at 100% of a core, the worker at a quarter). With the
/// limit, each call's data leaves at once from the worker's own thread and the client only receives:
/// 2.5k → 5.2k req/s for the 1 MiB file (bench/README.md). On a unix socket the option does not exist and
/// the call fails harmlessly.
fn limit_unsent(fd: RawFd) {
    let limit = FILE_UNSENT_LIMIT;
    // SAFETY: `fd` is an open socket for the duration of the call; the option value is a c_int we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&limit as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Send `count` bytes of `file` from `offset` with sendfile(2), waiting for the socket to drain as needed.
pub(super) async fn send_file<S: Stream>(
    stream: &mut S,
    file: &std::fs::File,
    offset: u64,
    count: u64,
) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    stream.flush().await?;
    let out_fd: RawFd = stream.as_raw_fd();
    limit_unsent(out_fd);
    let in_fd = file.as_raw_fd();
    let mut off = offset as libc::off_t;
    let end = offset + count;
    while (off as u64) < end {
        stream.writable().await?;
        let want = ((end - off as u64) as usize).min(1 << 30);
        let res = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: both fds are open for the duration of the call; `off` is ours.
            let n = unsafe { libc::sendfile(out_fd, in_fd, &mut off, want) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match res {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than announced",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
