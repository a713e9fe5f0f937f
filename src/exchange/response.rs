//! A response as it crosses from the app runtime to the connection: semantic pieces ([`Out`]) — the head
//! (status and fields), body bytes (small ones copied, a large one borrowed from the app's `bytes`
//! object), a file, the end, trailers — and [`ResponseSender`], the app side's half that
//! every runtime shares: it drops the body of a response that may not have one, holds a body to its
//! declared length, counts what was sent (the access log's `%(b)s`), and notices a client that went away.
//!
//! No protocol bytes are made here: the connection's driver frames the pieces (`http::framing` for
//! HTTP/1), on the I/O thread.

use std::fs::File;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Bodies at least this large are written straight from the app's `bytes` object instead of being copied:
/// below it one copy and one contiguous write cost less than a reference handed across threads and a
/// vectored write (measured in bench/README.md's optimisation log).
pub const ZERO_COPY_MIN: usize = 16 * 1024;

/// Part of an app's `bytes` object, read by the I/O thread without the GIL and without a copy.
pub struct AppBytes {
    ptr: *const u8,
    len: usize,
    /// Keeps the object, and so `ptr`, alive. Dropped on the I/O thread without the GIL: pyo3 defers the
    /// decref to the next time a Python thread re-attaches, which the pool's threads do before every job.
    _owner: Py<PyBytes>,
}

// SAFETY: `bytes` objects are immutable and their buffer lives as long as the object, which `_owner` keeps
// alive; `Py` itself is Send. Nothing writes through `ptr`.
unsafe impl Send for AppBytes {}

impl AppBytes {
    /// The first `len` bytes of `bytes` (`len` at most its length).
    pub fn new(bytes: &Bound<'_, PyBytes>, len: usize) -> AppBytes {
        let data = bytes.as_bytes();
        AppBytes {
            ptr: data.as_ptr(),
            len: len.min(data.len()),
            _owner: bytes.clone().unbind(),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: see the Send impl: the buffer is alive and immutable for as long as `self` is.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The status and fields of a response, as the app set them (validated; connection-management fields
/// removed: the connection's driver owns those).
#[derive(Debug, Default)]
pub struct ResponseHead {
    pub status: u16,
    /// The app's own status text (`"200 OK"`, as WSGI gives it), whose reason phrase the status line
    /// keeps; None for the standard phrase.
    pub status_text: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The body length the app declared (its `Content-Length` field, which is also in `headers`).
    pub content_length: Option<u64>,
    /// The connection must not carry another request after this response (the server answered an error
    /// in the app's place).
    pub close: bool,
}

impl ResponseHead {
    /// A response with no body allowed, whatever the app sends (RFC 9110 §6.4.1): 1xx, 204, 304.
    pub fn forbids_body(&self) -> bool {
        self.status < 200 || self.status == 204 || self.status == 304
    }
}

/// A piece of the response, in order. Its body is `data`, then `borrowed`, then `after`.
#[derive(Default)]
pub struct Piece {
    /// The head, on the response's first piece.
    pub head: Option<Arc<ResponseHead>>,
    /// On the piece with the head: the whole body's length, when the app handed over all of it at once
    /// (so HTTP/1 can send a length instead of chunks).
    pub total: Option<u64>,
    pub data: Vec<u8>,
    pub borrowed: Option<AppBytes>,
    pub after: Vec<u8>,
    /// The response ends with this piece. Carried here rather than as a piece of its own, which would cost
    /// the I/O thread a second wake-up.
    pub end: bool,
    /// Trailer fields, on the last piece (sent where the protocol and the client allow).
    pub trailers: Vec<(String, String)>,
}

impl Piece {
    pub fn body_len(&self) -> usize {
        self.data.len() + self.borrowed.as_ref().map_or(0, |b| b.len) + self.after.len()
    }

    /// Append the first `len` bytes of an app's body object: borrowed when large enough, else copied.
    fn push_app(&mut self, bytes: &Bound<'_, PyBytes>, len: usize) {
        if len >= ZERO_COPY_MIN && self.borrowed.is_none() {
            self.borrowed = Some(AppBytes::new(bytes, len));
        } else if self.borrowed.is_some() {
            self.after.extend_from_slice(&bytes.as_bytes()[..len]);
        } else {
            self.data.extend_from_slice(&bytes.as_bytes()[..len]);
        }
    }
}

/// A response whose body is `count` bytes of `file` from `offset`: sent with sendfile(2) where the transport
/// can, else read and written by the I/O side — never through Python. It ends the response.
pub struct FileBody {
    /// The head, if it did not go out before.
    pub head: Option<Arc<ResponseHead>>,
    pub file: File,
    pub offset: u64,
    pub count: u64,
}

/// What crosses to the connection, in order; a piece with `end` (or a file) ends the response.
///
/// The pieces are boxed so that `Out` is two words: the reply channel allocates its slots 32 at a time,
/// and a block of 32 unboxed pieces is a "large" request for glibc, which consolidates its free lists
/// before serving one — on every request, as the channel is made per request (bench/README.md).
pub enum Out {
    Piece(Box<Piece>),
    File(Box<FileBody>),
    /// The response cannot be completed (the app failed after the head was sent): cut the connection.
    Abort,
}

/// The client went away while the response was being sent.
#[derive(Debug)]
pub struct Disconnected;

/// The app side of one response, shared by the runtimes: it sends the pieces and keeps what the access log
/// and the hooks ask of the response afterwards.
pub struct ResponseSender {
    reply: mpsc::Sender<Out>,
    /// A HEAD request: the head goes out, the body never does.
    head_only: bool,
    head: Option<Arc<ResponseHead>>,
    /// The head is set but has not gone out yet (the next piece carries it).
    head_pending: bool,
    /// No body bytes go out (HEAD, 1xx, 204, 304).
    no_body: bool,
    /// What the declared length still allows.
    left: Option<u64>,
    /// Body bytes sent (within the declared length).
    pub body_sent: u64,
    /// The client is gone: nothing more is sent.
    pub disconnected: bool,
}

impl ResponseSender {
    pub fn new(reply: mpsc::Sender<Out>, method: &str) -> Self {
        ResponseSender {
            reply,
            head_only: method == "HEAD",
            head: None,
            head_pending: false,
            no_body: false,
            left: None,
            body_sent: 0,
            disconnected: false,
        }
    }

    /// Fix the response's head; the next piece carries it. Only before the head went out.
    pub fn set_head(&mut self, head: ResponseHead) {
        debug_assert!(!self.head_sent());
        self.no_body = self.head_only || head.forbids_body();
        self.left = head.content_length;
        self.head = Some(Arc::new(head));
        self.head_pending = true;
    }

    /// The head, once set.
    pub fn head(&self) -> Option<&ResponseHead> {
        self.head.as_deref()
    }

    pub fn head_sent(&self) -> bool {
        self.head.is_some() && !self.head_pending
    }

    /// A new piece, carrying the head if it has not gone out. `total` is the whole body's length when the
    /// app hands all of it over now.
    pub fn piece(&mut self, total: Option<u64>, capacity: usize) -> Piece {
        let mut piece = Piece {
            data: Vec::with_capacity(capacity),
            ..Piece::default()
        };
        if self.head_pending {
            self.head_pending = false;
            piece.head = self.head.clone();
            piece.total = total;
        }
        piece
    }

    /// Add body bytes to `piece`, dropping what the response may not carry: all of it for a response
    /// without a body, anything past a declared length (a client would misread it as the next response).
    pub fn push(&mut self, piece: &mut Piece, bytes: &Bound<'_, PyBytes>) {
        if self.no_body {
            return;
        }
        let len = bytes.as_bytes().len() as u64;
        let n = match &mut self.left {
            Some(left) => {
                let n = len.min(*left);
                *left -= n;
                n
            }
            None => len,
        };
        if n == 0 {
            return;
        }
        self.body_sent += n;
        piece.push_app(bytes, n as usize);
    }

    /// Queue a piece for the I/O side. Blocks (with the GIL released) only when the client reads more
    /// slowly than the app produces.
    pub fn send(&mut self, py: Python<'_>, out: Out) -> Result<(), Disconnected> {
        if self.disconnected {
            return Err(Disconnected);
        }
        let res = match self.reply.try_send(out) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(out)) => {
                let reply = &self.reply;
                py.detach(|| reply.blocking_send(out))
                    .map_err(|_| Disconnected)
            }
            Err(TrySendError::Closed(_)) => Err(Disconnected),
        };
        if res.is_err() {
            self.disconnected = true;
        }
        res
    }

    /// Send `piece` unless it says nothing.
    pub fn send_piece(&mut self, py: Python<'_>, piece: Piece) -> Result<(), Disconnected> {
        if piece.head.is_none() && !piece.end && piece.body_len() == 0 {
            return Ok(());
        }
        self.send(py, Out::Piece(Box::new(piece)))
    }

    /// The whole body as `len` bytes of `file` from `offset` (its length is the file's unless the app
    /// declared one), ending the response. Head, file and end travel as one message, so the I/O side knows
    /// before a long send that the app is done with the request. Only before the head went out.
    pub fn send_file(
        &mut self,
        py: Python<'_>,
        file: File,
        offset: u64,
        len: u64,
    ) -> Result<(), Disconnected> {
        // The count stays the file's (or the declared length) even without a body: HTTP/1 announces it as
        // the length of a HEAD response. The connection's framing sends none of it then.
        let count = self.left.map_or(len, |left| left.min(len));
        if let Some(left) = &mut self.left {
            *left -= count;
        }
        if !self.no_body {
            self.body_sent += count;
        }
        let head = if self.head_pending {
            self.head_pending = false;
            self.head.clone()
        } else {
            None
        };
        self.send(
            py,
            Out::File(Box::new(FileBody {
                head,
                file,
                offset,
                count,
            })),
        )
    }

    /// The response cannot be completed: the connection is cut.
    pub fn abort(&mut self, py: Python<'_>) {
        let _ = self.send(py, Out::Abort);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_slots_stay_small() {
        // 32 slots of the reply channel's block must stay under glibc's 1 KiB large-request size.
        assert!(
            std::mem::size_of::<Out>() <= 16,
            "{}",
            std::mem::size_of::<Out>()
        );
    }
}
