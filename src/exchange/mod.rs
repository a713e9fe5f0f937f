//! What crosses between a worker's I/O side and the app runtime that runs a request, whatever the
//! protocols on either side: a request goes in as a [`Job`] (its parsed head, its body as a stream, what
//! is known of the connection) inside a [`Ticket`] of a run queue; the response comes out as semantic
//! pieces ([`Out`]: a head of status and fields, body bytes or a file, the end, trailers),
//! which the connection's protocol driver frames (HTTP/1 today, in `http::framing`). So an app runtime
//! never writes protocol bytes, and a protocol driver never knows which runtime answered.
//!
//! `response` holds the app side's half of sending a response (the semantics every runtime shares:
//! bodies a response may not have, a declared length, a client that went away); [`Progress`] is what the
//! I/O side reads of a request while it runs (`--timeout`).

pub mod response;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::http::RequestHead;
use crate::scoreboard::now_ns;
pub use response::{
    AppBytes, Fields, FileBody, HeadInfo, Out, Packed, Piece, ResponseHead, ZERO_COPY_MIN,
};

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

/// What is known of the connection a request came on, for the app (`REMOTE_ADDR`, `wsgi.url_scheme`, ASGI's
/// `client`/`server`/`scheme`) and for the response path.
pub struct ConnInfo {
    /// The client the app sees (the PROXY header's, when there is one).
    pub peer: Arc<Peer>,
    pub server: Arc<ServerAddr>,
    /// The scheme is https: the transport is TLS, or a trusted proxy said so (`--forwarded-allow-ips`).
    pub https: bool,
    /// The transport sends files with sendfile(2); otherwise a file body is read and written by the I/O
    /// side (never by Python).
    pub sendfile: bool,
    /// What the TLS handshake told, when the connection is TLS (the environ's `SSL_*`, ASGI's `tls`).
    pub tls: Option<Arc<crate::tls::TlsInfo>>,
}

/// A websocket message from the client, or the end of the session.
pub enum WsFromClient {
    Text(String),
    Binary(Vec<u8>),
    /// The session ended: the client's close code (1006 when the connection broke without one), or the
    /// server's own (1012 when the worker restarts).
    Closed {
        code: u16,
        reason: String,
    },
}

/// What the app says on a websocket session.
pub enum WsToClient {
    /// Accept the handshake (`101 Switching Protocols`) with this subprotocol and these extra fields.
    Accept {
        subprotocol: Option<String>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Text(String),
    Binary(Vec<u8>),
    /// Close the session (before it was accepted: refuse the handshake with 403).
    Close {
        code: u16,
        reason: String,
    },
}

/// The two directions of a websocket session, on the app's side. A refusal with a body of its own
/// (`websocket.http.response`) goes out as an ordinary response, through the job's reply channel.
pub struct WsChannels {
    pub from_client: mpsc::Receiver<WsFromClient>,
    pub to_client: mpsc::Sender<WsToClient>,
}

/// One request for an app runtime.
pub struct Job {
    /// Shared with the connection, which logs the request itself if it answers for it (`--timeout`).
    pub head: Arc<RequestHead>,
    pub conn: ConnInfo,
    pub body: RequestBody,
    /// Where the response pieces go, in order.
    pub reply: mpsc::Sender<Out>,
    pub progress: Arc<Progress>,
    /// A websocket handshake (the connection was upgraded): the session's channels.
    pub websocket: Option<WsChannels>,
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
    /// Set when the request runs as a task of an event loop rather than holding a thread (ASGI): the
    /// connection's timers reach the task through it.
    pub task: std::sync::OnceLock<Box<dyn TaskControl>>,
}

/// A timer of the connection fired for a request that runs as a task.
#[derive(Clone, Copy, Debug)]
pub enum TaskEvent {
    /// Past `--timeout`: the task is cancelled, and the log names it with its await stack.
    TimedOut(std::time::Duration),
    /// Past `--slow-request-threshold`: the log shows where the task waits; it goes on.
    Slow(std::time::Duration),
    /// The client left before the response was complete: the task is cancelled if it still runs
    /// after `--asgi-disconnect-grace-period`.
    ClientGone,
}

/// How the I/O side reaches a request running as a task (see [`Progress::task`]).
pub trait TaskControl: Send + Sync {
    /// Hand the event to the task's loop. `Err(thread)`: the loop itself is stuck (it has not come back
    /// to run tasks), so the event is the thread's: the worker treats it as a stuck thread.
    fn event(&self, event: TaskEvent) -> Result<(), usize>;
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
