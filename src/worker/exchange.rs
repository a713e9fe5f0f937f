//! What crosses between a worker's I/O thread and its Python threads: the `Job` handed to Python (a parsed
//! request, its body source and a reply channel), the body chunks streamed to `wsgi.input`, and the
//! response pieces (`Out`) streamed back to the connection.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::sync::{mpsc, oneshot};

use crate::http::RequestHead;
use crate::scoreboard::now_ns;

/// The client of a connection as the app sees it (`REMOTE_ADDR`, `REMOTE_PORT`).
#[derive(Clone, Debug)]
pub struct Peer {
    pub ip: String,
    pub port: u16,
    /// Set when a PROXY protocol header named the client: the proxy's side of it.
    pub proxy: Option<ProxyEnd>,
    /// The client's process, for a unix-socket client (`SO_PEERCRED`): how a loopback call over a unix
    /// socket is known (see `admission`).
    pub local_pid: Option<i32>,
    /// The TCP client is on this host (a loopback address, or the address it connected to): only such a
    /// client can be a loopback call.
    pub same_host: bool,
}

impl Peer {
    /// `127.0.0.1:5555`, or `-` for a unix-socket client, as log lines name a client.
    pub fn label(&self) -> String {
        if self.ip.is_empty() {
            "-".to_string()
        } else {
            format!("{}:{}", self.ip, self.port)
        }
    }
}

/// What a PROXY header says of the proxy (`PROXY_PROTOCOL`, `PROXY_ADDR`, `PROXY_PORT`, as gunicorn).
#[derive(Clone, Debug)]
pub struct ProxyEnd {
    /// `TCP4` or `TCP6`.
    pub protocol: &'static str,
    /// The address the client connected to.
    pub ip: String,
    pub port: u16,
}

/// The listener a request came in on: the fallback for `SERVER_NAME`/`SERVER_PORT` without a Host header.
#[derive(Clone, Debug)]
pub struct ServerAddr {
    pub name: String,
    pub port: String,
}

/// A piece of request body for `wsgi.input`.
pub enum BodyChunk {
    Data(Vec<u8>),
    End,
    /// The client went away or sent a malformed body: `wsgi.input` raises.
    Failed(String),
}

/// Body still to come from the socket. The I/O thread starts pumping (and sends `100 Continue` where the
/// client asked for it) only once `start` fires, i.e. when the app first reads past what was prefetched.
pub struct BodyStream {
    pub start: Option<oneshot::Sender<()>>,
    pub rx: mpsc::Receiver<BodyChunk>,
}

/// The request body as handed to Python: what was already read with the head (a small body is usually read
/// whole before dispatch) and, if more is to come, the stream.
pub struct RequestBody {
    pub prefetched: Vec<u8>,
    pub stream: Option<BodyStream>,
}

/// Bodies at least this large are written straight from the app's `bytes` object instead of being copied
/// into the response buffer: below it one copy and one contiguous write cost less than a reference handed
/// across threads and a vectored write (measured in bench/README.md's optimisation log).
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

/// Bytes for the socket, written with one vectored write: what Rust serialized (the head, chunk framing)
/// around at most one body borrowed from the app.
#[derive(Default)]
pub struct Payload {
    pub head: Vec<u8>,
    pub body: Option<AppBytes>,
    pub tail: Vec<u8>,
    /// Set when these bytes finish the response: whether the connection may carry another request. Saves
    /// the I/O thread a second wake-up for a separate `Done`.
    pub end: Option<bool>,
}

impl Payload {
    pub fn with_capacity(n: usize) -> Payload {
        Payload {
            head: Vec::with_capacity(n),
            ..Payload::default()
        }
    }

    /// The buffer serialized bytes go to now: after the borrowed body once there is one.
    pub fn buf_mut(&mut self) -> &mut Vec<u8> {
        if self.body.is_some() {
            &mut self.tail
        } else {
            &mut self.head
        }
    }

    /// Append serialized bytes after whatever is already there.
    pub fn push(&mut self, data: &[u8]) {
        self.buf_mut().extend_from_slice(data);
    }

    /// Append the first `len` bytes of an app's body object, borrowed when large enough, else copied.
    pub fn push_app(&mut self, bytes: &Bound<'_, PyBytes>, len: usize) {
        if len >= ZERO_COPY_MIN && self.body.is_none() {
            self.body = Some(AppBytes::new(bytes, len));
        } else {
            self.push(&bytes.as_bytes()[..len]);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.body.is_none() && self.tail.is_empty()
    }
}

/// A response whose body is `count` bytes of `file` from `offset`, sent with sendfile(2) — the body never
/// passes through Python. It is the response's last piece: `keep_alive` says whether the connection
/// carries another request.
pub struct FileBody {
    /// The response head (empty if it went out before).
    pub head: Vec<u8>,
    pub file: File,
    pub offset: u64,
    pub count: u64,
    pub keep_alive: bool,
}

/// A response piece, in order. `Done` (or a `Payload` with `end`) ends the exchange; the connection stays
/// open only if it says so.
///
/// The pieces are boxed so that `Out` is two words: the reply channel allocates its slots 32 at a time,
/// and a block of 32 unboxed payloads (~3 KiB) is a "large" request for glibc, which consolidates its
/// free lists before serving one — on every request, as the channel is made per request (bench/README.md).
pub enum Out {
    Bytes(Box<Payload>),
    File(Box<FileBody>),
    Done {
        keep_alive: bool,
    },
    /// The response cannot be completed (the app failed after the head was sent): cut the connection.
    Abort,
}

pub struct Job {
    /// Shared with the connection, which logs the request itself if it answers for it (`--timeout`).
    pub head: Arc<RequestHead>,
    pub peer: Arc<Peer>,
    pub server: Arc<ServerAddr>,
    pub body: RequestBody,
    pub reply: mpsc::Sender<Out>,
    pub progress: Arc<Progress>,
    /// `wsgi.url_scheme` is https: a trusted proxy said so (see `ForwardedTrust`).
    pub https: bool,
}

/// A request in a run queue. Whoever takes the job out first runs it: a thread of the queue's pool, or —
/// while it still waits — its connection, which moves a loopback call to the overflow lane (see
/// `admission`). So a request never runs twice, and never waits where the I/O thread cannot reach it.
pub struct Ticket(Mutex<Option<Job>>);

impl Ticket {
    pub fn new(job: Job) -> Arc<Ticket> {
        Arc::new(Ticket(Mutex::new(Some(job))))
    }

    /// The job, if nobody took it yet.
    pub fn take(&self) -> Option<Job> {
        // The lock is never held across anything that can panic, but a poisoned one still holds the job.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// `--forwarded-allow-ips` and the secure scheme headers: which peers may tell the scheme, and how.
pub struct ForwardedTrust {
    any: bool,
    ips: Vec<String>,
    /// (lower-case header name, value meaning https)
    secure_headers: Vec<(String, String)>,
}

impl ForwardedTrust {
    pub fn new(cfg: &crate::config::Config) -> ForwardedTrust {
        ForwardedTrust {
            any: cfg.forwarded_allow_ips.iter().any(|ip| ip.trim() == "*"),
            ips: cfg
                .forwarded_allow_ips
                .iter()
                .map(|s| s.trim().to_string())
                .collect(),
            secure_headers: cfg
                .secure_scheme_headers
                .iter()
                .map(|(h, v)| (h.to_ascii_lowercase(), v.clone()))
                .collect(),
        }
    }

    fn trusts(&self, peer: &Peer) -> bool {
        // A unix-socket peer is the local proxy itself.
        self.any || peer.ip.is_empty() || self.ips.contains(&peer.ip)
    }

    /// Whether the request came in over https according to a trusted peer's headers. Headers that
    /// disagree are refused, as gunicorn does: the scheme would be a guess.
    pub fn https(&self, head: &RequestHead, peer: &Peer) -> Result<bool, crate::http::HttpError> {
        if self.secure_headers.is_empty() || !self.trusts(peer) {
            return Ok(false);
        }
        let mut seen: Option<bool> = None;
        for (name, value) in &head.headers {
            if let Some((_, want)) = self
                .secure_headers
                .iter()
                .find(|(h, _)| h.eq_ignore_ascii_case(name))
            {
                let https = value.as_slice() == want.as_bytes();
                if seen.is_some_and(|s| s != https) {
                    return Err(crate::http::HttpError::ContradictorySchemeHeaders);
                }
                seen = Some(https);
            }
        }
        Ok(seen.unwrap_or(false))
    }
}

/// Where a request stands in Python, written by the Python thread and read by the connection task that
/// enforces `--timeout` (the clock starts when Python takes the request, not when it was queued).
#[derive(Default)]
pub struct Progress {
    /// Monotonic ns when a Python thread started the request; 0 while it waits in the queue.
    pub started_ns: AtomicU64,
    /// The index of that thread.
    pub thread: AtomicUsize,
    /// The connection answered the request itself (504 for `--timeout`, 503 when a stopping worker cut
    /// it off) and logged that answer: whatever the app returns later was never sent, so the Python
    /// thread writes no access line for it.
    pub timed_out: AtomicBool,
}

impl Progress {
    pub fn start(&self, thread: usize) {
        self.thread.store(thread, Ordering::Relaxed);
        self.started_ns.store(now_ns(), Ordering::Release);
    }
}

/// Capacity of the reply channel: enough that a small response (head + body + done) never blocks the
/// Python thread, small enough that a streaming response to a slow client stays bounded.
pub const REPLY_QUEUE: usize = 8;
/// Capacity of the body channel, in chunks of at most `BODY_CHUNK` bytes.
pub const BODY_QUEUE: usize = 4;
pub const BODY_CHUNK: usize = 64 * 1024;

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
