//! A response as it crosses from the app runtime to the connection: semantic pieces ([`Out`]) — the head
//! (status and fields), body bytes (small ones copied, a large one borrowed from the app's `bytes`
//! object), a file, the end, trailers — and [`ResponseSender`], the app side's half that
//! every runtime shares: it drops the body of a response that may not have one, holds a body to its
//! declared length, counts what was sent (the access log's `%(b)s`), and notices a client that went away.
//!
//! No protocol bytes are made here: the connection's driver frames the pieces (`http::framing` for
//! HTTP/1), on the I/O thread.

use std::fs::File;

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
// SAFETY: as above; a shared `&AppBytes` only ever reads the immutable buffer.
unsafe impl Sync for AppBytes {}

/// An app's bytes as a buffer another owner can hold (HTTP/2 sends them without a copy).
impl AsRef<[u8]> for AppBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

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

/// A response head as the app side hands it over: status, reason phrase and fields (validated;
/// connection-management fields removed: the connection's driver owns those).
pub struct ResponseHead<'a> {
    pub status: u16,
    /// The app's reason phrase (`"OK"` of WSGI's `"200 OK"`); None for the standard phrase.
    pub reason: Option<&'a str>,
    pub headers: Fields<'a>,
    /// The body length the app declared (its `Content-Length` field, which is also in `headers`).
    pub content_length: Option<u64>,
    /// The connection must not carry another request after this response (the server answered an error
    /// in the app's place).
    pub close: bool,
}

/// A head's fields as the runtime holds them: text (WSGI's `str` pairs) or bytes (ASGI's, which may
/// carry latin-1 octets that are not UTF-8).
#[derive(Clone, Copy)]
pub enum Fields<'a> {
    Text(&'a [(String, String)]),
    Bytes(&'a [(Vec<u8>, Vec<u8>)]),
}

impl<'a> Fields<'a> {
    pub fn iter(self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let (text, bytes) = match self {
            Fields::Text(t) => (t, &[][..]),
            Fields::Bytes(b) => (&[][..], b),
        };
        text.iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .chain(bytes.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }
}

impl ResponseHead<'_> {
    /// A response with no body allowed, whatever the app sends (RFC 9110 §6.4.1): 1xx, 204, 304.
    pub fn forbids_body(&self) -> bool {
        self.status < 200 || self.status == 204 || self.status == 304
    }
}

/// What crosses of a response head, beside its packed reason and fields (see [`Packed`]).
#[derive(Clone, Copy, Debug)]
pub struct HeadInfo {
    pub status: u16,
    pub content_length: Option<u64>,
    pub close: bool,
    /// How many bytes at the start of the piece's buffer the packed reason and fields take.
    pub packed_len: usize,
}

/// Pack a head's reason phrase and fields into `buf`: a flag and u16 length for the reason, then for each
/// field a u16 name length, the name, a u32 value length, the value.
///
/// One buffer rather than the app's list of strings, because the I/O thread frees what it receives:
/// memory one thread allocates and another frees drains the first thread's allocator cache, and the
/// strings of a head freed on the I/O thread sent the app threads to glibc's slow path (`_int_malloc`,
/// twice its share in a profile, and its arena lock) on every request. Hello under gthread, CPU per
/// request: 12.6 µs before the exchange was semantic, 13.9 µs with the head's strings crossing (4
/// interleaved repeats), 12.3 µs packed with the body into the piece's one buffer
/// (bench/results/2026-12-02-ab-issue15.md).
fn pack(buf: &mut Vec<u8>, head: &ResponseHead<'_>) {
    match head.reason {
        Some(r) => {
            buf.push(1);
            buf.extend_from_slice(&(r.len().min(u16::MAX as usize) as u16).to_le_bytes());
            buf.extend_from_slice(&r.as_bytes()[..r.len().min(u16::MAX as usize)]);
        }
        None => buf.push(0),
    }
    for (n, v) in head.headers.iter() {
        let n = &n[..n.len().min(u16::MAX as usize)];
        buf.extend_from_slice(&(n.len() as u16).to_le_bytes());
        buf.extend_from_slice(n);
        buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        buf.extend_from_slice(v);
    }
}

/// Bytes a packed head takes, to size the buffer once.
fn packed_size(head: &ResponseHead<'_>) -> usize {
    3 + head.reason.map_or(0, str::len)
        + head
            .headers
            .iter()
            .map(|(n, v)| 6 + n.len() + v.len())
            .sum::<usize>()
}

/// A packed head read back: the reason phrase, then the fields in order.
#[derive(Clone)]
pub struct Packed<'a> {
    pub reason: Option<&'a [u8]>,
    rest: &'a [u8],
}

impl<'a> Packed<'a> {
    fn read(buf: &'a [u8]) -> Packed<'a> {
        let (reason, rest) = match buf {
            [1, a, b, rest @ ..] => {
                let n = (u16::from_le_bytes([*a, *b]) as usize).min(rest.len());
                (Some(&rest[..n]), &rest[n..])
            }
            [_, rest @ ..] => (None, rest),
            [] => (None, buf),
        };
        Packed { reason, rest }
    }
}

impl<'a> Iterator for Packed<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let r = self.rest;
        let n = u16::from_le_bytes([*r.first()?, *r.get(1)?]) as usize;
        let name = r.get(2..2 + n)?;
        let at = 2 + n;
        let v = u32::from_le_bytes(r.get(at..at + 4)?.try_into().ok()?) as usize;
        let value = r.get(at + 4..at + 4 + v)?;
        self.rest = &r[at + 4 + v..];
        Some((name, value))
    }
}

/// A piece of the response, in order. Its body is the buffer's bytes after the packed head, then
/// `borrowed`, then `after`.
#[derive(Default)]
pub struct Piece {
    /// The head, on the response's first piece (packed at the start of `buf`).
    pub head: Option<HeadInfo>,
    /// On the piece with the head: the whole body's length, when the app handed over all of it at once
    /// (so HTTP/1 can send a length instead of chunks).
    pub total: Option<u64>,
    /// The packed head, if any, then copied body bytes: one allocation for both (see [`pack`]).
    pub buf: Vec<u8>,
    pub borrowed: Option<AppBytes>,
    pub after: Vec<u8>,
    /// The response ends with this piece. Carried here rather than as a piece of its own, which would cost
    /// the I/O thread a second wake-up.
    pub end: bool,
    /// Trailer fields, on the last piece (sent where the protocol and the client allow).
    pub trailers: Vec<(String, String)>,
}

impl Piece {
    fn packed_len(&self) -> usize {
        self.head.map_or(0, |h| h.packed_len)
    }

    /// The head's reason phrase and fields, on the first piece.
    pub fn fields(&self) -> Option<Packed<'_>> {
        self.head.map(|h| Packed::read(&self.buf[..h.packed_len]))
    }

    /// The copied body bytes at the front of the body.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.packed_len()..]
    }

    pub fn body_len(&self) -> usize {
        self.data().len() + self.borrowed.as_ref().map_or(0, |b| b.len) + self.after.len()
    }

    /// Append the first `len` bytes of an app's body object: borrowed when large enough, else copied.
    fn push_app(&mut self, bytes: &Bound<'_, PyBytes>, len: usize) {
        if len >= ZERO_COPY_MIN && self.borrowed.is_none() {
            self.borrowed = Some(AppBytes::new(bytes, len));
        } else if self.borrowed.is_some() {
            self.after.extend_from_slice(&bytes.as_bytes()[..len]);
        } else {
            self.buf.extend_from_slice(&bytes.as_bytes()[..len]);
        }
    }
}

/// A response whose body is `count` bytes of `file` from `offset`: sent with sendfile(2) where the transport
/// can, else read and written by the I/O side — never through Python. It ends the response.
pub struct FileBody {
    /// The head, if it did not go out before (packed in `packed`).
    pub head: Option<HeadInfo>,
    pub packed: Vec<u8>,
    pub file: File,
    pub offset: u64,
    pub count: u64,
}

impl FileBody {
    pub fn fields(&self) -> Option<Packed<'_>> {
        self.head.map(|_| Packed::read(&self.packed))
    }
}

/// What crosses to the connection, in order; a piece with `end` (or a file) ends the response.
///
/// The pieces are boxed so that `Out` is two words: the reply channel allocates its slots 32 at a time,
/// and a block of 32 unboxed pieces is a "large" request for glibc, which consolidates its free lists
/// before serving one — on every request, as the channel is made per request (bench/README.md).
pub enum Out {
    Piece(Box<Piece>),
    File(Box<FileBody>),
    /// An interim response before the final one (103 Early Hints): sent to HTTP/1.1 clients while the
    /// final head has not gone out, dropped otherwise.
    Interim(Box<Interim>),
    /// The response cannot be completed (the app failed after the head was sent): cut the connection.
    Abort,
}

/// A 1xx response's status and fields (names and values checked by the runtime that made it).
pub struct Interim {
    pub status: u16,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Interim {
    /// The HTTP/1.1 head.
    pub fn to_h1(&self) -> Vec<u8> {
        let reason = match self.status {
            100 => "Continue",
            102 => "Processing",
            103 => "Early Hints",
            _ => "Informational",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// What became of a piece offered without waiting.
pub enum Offer {
    Sent,
    /// The queue is full (the client reads slowly): here is the piece back, to send once there is room.
    Full(Out),
    /// The client is gone.
    Gone,
}

/// The client went away while the response was being sent.
#[derive(Debug)]
pub struct Disconnected;

/// The app side of one response, shared by the runtimes: it sends the pieces and counts what went out.
pub struct ResponseSender {
    reply: mpsc::Sender<Out>,
    /// A HEAD request: the head goes out, the body never does.
    head_only: bool,
    head_sent: bool,
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
            head_sent: false,
            no_body: false,
            left: None,
            body_sent: 0,
            disconnected: false,
        }
    }

    pub fn head_sent(&self) -> bool {
        self.head_sent
    }

    /// Take `head` as the response's (the one time): what the body may carry follows from it.
    fn take_head(&mut self, head: &ResponseHead<'_>, buf: &mut Vec<u8>) -> HeadInfo {
        debug_assert!(!self.head_sent);
        self.head_sent = true;
        self.no_body = self.head_only || head.forbids_body();
        self.left = head.content_length;
        pack(buf, head);
        HeadInfo {
            status: head.status,
            content_length: head.content_length,
            close: head.close,
            packed_len: buf.len(),
        }
    }

    /// A new piece, carrying `head` if it is given (only before the head went out), with room for
    /// `capacity` body bytes. `total` is the whole body's length when the app hands all of it over now.
    pub fn piece(
        &mut self,
        head: Option<&ResponseHead<'_>>,
        total: Option<u64>,
        capacity: usize,
    ) -> Piece {
        let mut piece = Piece::default();
        match head.filter(|_| !self.head_sent) {
            Some(head) => {
                piece.buf = Vec::with_capacity(packed_size(head) + capacity);
                piece.head = Some(self.take_head(head, &mut piece.buf));
                piece.total = total;
            }
            None => piece.buf = Vec::with_capacity(capacity),
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

    /// Queue `out` without waiting: a runtime that must not block (an event loop) waits for room itself,
    /// on [`ResponseSender::reply`], when the queue is full.
    pub fn offer(&mut self, out: Out) -> Offer {
        if self.disconnected {
            return Offer::Gone;
        }
        match self.reply.try_send(out) {
            Ok(()) => Offer::Sent,
            Err(TrySendError::Full(out)) => Offer::Full(out),
            Err(TrySendError::Closed(_)) => {
                self.disconnected = true;
                Offer::Gone
            }
        }
    }

    /// The reply channel, for a runtime's own waits (room for a piece, the client gone).
    pub fn reply(&self) -> &mpsc::Sender<Out> {
        &self.reply
    }

    /// The whole body as `len` bytes of `file` from `offset` (its length is the file's unless the app
    /// declared one), ending the response, with `head` if it has not gone out. Head, file and end travel
    /// as one message, so the I/O side knows before a long send that the app is done with the request.
    pub fn send_file(
        &mut self,
        py: Python<'_>,
        head: Option<&ResponseHead<'_>>,
        file: File,
        offset: u64,
        len: u64,
    ) -> Result<(), Disconnected> {
        let out = self.file(head, file, offset, len);
        self.send(py, out)
    }

    /// The message `send_file` sends.
    pub fn file(
        &mut self,
        head: Option<&ResponseHead<'_>>,
        file: File,
        offset: u64,
        len: u64,
    ) -> Out {
        let mut packed = Vec::new();
        let info = match head.filter(|_| !self.head_sent) {
            Some(head) => {
                packed.reserve(packed_size(head));
                Some(self.take_head(head, &mut packed))
            }
            None => None,
        };
        // The count stays the file's (or the declared length) even without a body: HTTP/1 announces it as
        // the length of a HEAD response. The connection's framing sends none of it then.
        let count = self.left.map_or(len, |left| left.min(len));
        if let Some(left) = &mut self.left {
            *left -= count;
        }
        if !self.no_body {
            self.body_sent += count;
        }
        Out::File(Box::new(FileBody {
            head: info,
            packed,
            file,
            offset,
            count,
        }))
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
    fn a_packed_head_reads_back() {
        let headers = vec![
            ("Content-Type".to_string(), "text/plain".to_string()),
            ("X-Empty".to_string(), String::new()),
        ];
        let head = ResponseHead {
            status: 404,
            reason: Some("Not Here"),
            headers: Fields::Text(&headers),
            content_length: None,
            close: false,
        };
        let mut buf = Vec::new();
        pack(&mut buf, &head);
        assert_eq!(buf.len(), packed_size(&head));
        let p = Packed::read(&buf);
        assert_eq!(p.reason, Some(&b"Not Here"[..]));
        let fields: Vec<_> = p.collect();
        assert_eq!(
            fields,
            vec![
                (&b"Content-Type"[..], &b"text/plain"[..]),
                (&b"X-Empty"[..], &b""[..])
            ]
        );
        let none = ResponseHead {
            reason: None,
            headers: Fields::Text(&[]),
            ..head
        };
        let mut buf = Vec::new();
        pack(&mut buf, &none);
        let p = Packed::read(&buf);
        assert!(p.reason.is_none());
        assert_eq!(p.count(), 0);
    }

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
