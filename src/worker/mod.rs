//! A worker process, after fork: load the app, then run the I/O loop (tokio, on the main thread) beside the
//! Python threads that run the app — one for `sync`, `--threads` for `gthread`.
//!
//! Which connections it accepts and where each request runs (its threads, their queue, or the overflow
//! lane for loopback calls) is `admission`'s job. The boot is `boot`, the accept loops `accept`, the I/O
//! loop and its supervision `io_loop`, one HTTP/1 connection `h1` (static files under `--static-map`
//! answered on it by `static_files`); this module holds what they share: the worker's context and the
//! I/O thread's state. A TLS server's handshakes are `tls`'s.

mod accept;
mod admission;
mod boot;
pub mod driver;
mod elastic;
mod forwarded;
pub mod h1;
mod h2;
mod inline;
mod io_loop;
mod loopback;
pub mod proxy;
mod snapshot;
mod static_files;
mod stop;
mod tls;
pub mod transport;
mod watch;
mod ws;
// The frame layer and permessage-deflate are the `ferricorn-ws` crate (fuzzed without Python).
use ferricorn_ws::{deflate as ws_deflate, frames as ws_frames};

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::exchange::Peer;
use crate::http::ParserOptions;
pub use crate::runtime::WorkerContext;
use crate::scoreboard::{WorkerHandle, WorkerState};
use admission::Admission;

pub use admission::MAX_OVERFLOW_THREADS;
pub use boot::{run, Boot};

/// Exit code of a worker whose app could not be loaded; the master stops with "Worker failed to boot."
pub const WORKER_BOOT_ERROR: i32 = 3;

/// State of the I/O thread (single-threaded runtime, so plain cells).
pub struct IoState {
    pub admission: Admission,
    /// Requests have run since the heap was last given back to the system (see `supervise`).
    trim_due: Cell<bool>,
    pub shutdown_signal: Notify,
    pub shutting_down: Cell<bool>,
    pub parser: ParserOptions,
    keepalive: Duration,
    pub header_timeout: Duration,
    pub forwarded: forwarded::ForwardedTrust,
    /// `--proxy-protocol` and `--proxy-allow-from`; None when off.
    pub proxy: Option<proxy::ProxySettings>,
    /// `--timeout` for a request in Python; None when off.
    pub request_timeout: Option<Duration>,
    /// `--slow-request-threshold`; None when off.
    pub slow_threshold: Option<Duration>,
    /// When a graceful stop ends for the requests still running (see `stop`).
    stop_deadline: Cell<Option<tokio::time::Instant>>,
    /// Threads stuck in a request that passed `--timeout`: (thread, that request's start), see `stop`.
    lost_threads: RefCell<Vec<(usize, u64)>>,
    board: WorkerHandle,
    ctx: Arc<WorkerContext>,
    /// Where a connection upgraded to another protocol goes (see `driver`).
    pub upgrades: driver::Upgrades,
    /// Cleartext connections from trusted peers are HTTP/2 with prior knowledge (`--http2-cleartext`).
    pub h2c_prior_knowledge: bool,
    /// The TLS acceptor, when the server speaks TLS (`--certfile`).
    tls: Option<tls::TlsAcceptor>,
}

impl IoState {
    /// A request of this worker took `d` from dispatch to its last byte.
    pub fn request_done(&self, d: Duration) {
        self.trim_due.set(true);
        self.admission.record_duration(d);
    }

    /// Stop taking connections and requests; exit once the open ones are done (or the deadline passes).
    pub fn begin_stop(&self) {
        if self.shutting_down.get() {
            return;
        }
        self.shutting_down.set(true);
        self.ctx.shutting_down.store(true, Ordering::SeqCst);
        self.board.set_state(WorkerState::Stopping);
        self.stop_deadline.set(Some(self.stop_deadline_from_now()));
        self.shutdown_signal.notify_waiters();
    }

    /// A request ran past `--timeout` in Python. Log gunicorn's line, then the request and the stack of the
    /// thread running it (read without the GIL, so it shows even if the code swallows exceptions or sits in
    /// C), and retire the worker: its other requests finish, the stuck thread dies with the process.
    /// `thread` is the request's entry in the scoreboard, `stuck` the app thread that runs it (the same
    /// for a thread per request; an event loop's thread for a task).
    /// A request past `--timeout`: a task is told (its loop cancels it and logs its await stack); a
    /// thread, or a task whose loop does not come back, is a stuck thread ([`Self::request_timed_out`]).
    pub fn past_timeout(&self, progress: &crate::exchange::Progress, elapsed: Duration) {
        let thread = progress.thread.load(Ordering::Relaxed);
        let ns = elapsed.as_nanos() as u64;
        match progress
            .task
            .get()
            .map(|t| t.event(crate::exchange::TaskEvent::TimedOut(elapsed)))
        {
            Some(Ok(())) => {}
            Some(Err(stuck)) => self.request_timed_out(thread, stuck, ns),
            None => self.request_timed_out(thread, thread, ns),
        }
    }

    pub fn request_timed_out(&self, thread: usize, stuck: usize, elapsed_ns: u64) {
        let log = &self.ctx.log;
        let pid = std::process::id();
        self.board.count(crate::scoreboard::Event::Timeout);
        self.board
            .set_stop_reason(crate::scoreboard::StopReason::Timeout);
        log.critical(&format!("WORKER TIMEOUT (pid:{pid})"));
        let secs = elapsed_ns as f64 / 1e9;
        let limit = self.ctx.cfg.timeout;
        // A task that could not be cancelled: its loop does not come back.
        let (entry, stack_of) = if self.ctx.runtime.runs_tasks() {
            (
                "task",
                "Python stack of the event loop's thread, which does not come back (most recent call first):",
            )
        } else {
            (
                "thread",
                "Python stack of the thread running it (most recent call first):",
            )
        };
        match self
            .board
            .requests_in_flight()
            .into_iter()
            .find(|(t, _)| *t == thread)
        {
            Some((_, r)) => {
                log.critical(&format!(
                    "Request exceeded --timeout {limit}s: {} (running for {secs:.1}s, worker {pid}, {entry} {thread})",
                    r.summary(),
                ));
                self.note_lost_thread(thread, r.started_ns);
            }
            None => log.critical(&format!(
                "A request exceeded --timeout {limit}s (running for {secs:.1}s, worker {pid}, {entry} {thread})"
            )),
        }
        self.log_with_stack(crate::log::Level::Critical, stack_of, stuck);
        self.ctx.worker_hook("worker_abort");
        self.begin_stop();
    }

    /// The runtime says one of its threads is stuck (an event loop that has not come back past
    /// `--timeout`): log it with the thread's stack and the requests in flight, and retire the worker as
    /// for a request past `--timeout`.
    pub fn runtime_stuck(&self, stuck: crate::runtime::Stuck) {
        if self.shutting_down.get() {
            return;
        }
        let log = &self.ctx.log;
        let pid = std::process::id();
        log.critical(&format!("WORKER TIMEOUT (pid:{pid})"));
        log.critical(&format!(
            "{} past --timeout {}s; requests in flight: {}",
            stuck.what,
            self.ctx.cfg.timeout,
            self.board.requests_text()
        ));
        self.log_with_stack(
            crate::log::Level::Critical,
            "Python stack of the stuck thread (most recent call first):",
            stuck.thread,
        );
        self.ctx.worker_hook("worker_abort");
        self.begin_stop();
    }

    /// The access line of an answer the connection sent itself: 504 for `--timeout`, 503 when a stopping
    /// worker cut the request off (the app's thread may never return to write one, and what it returns
    /// later was not sent).
    pub fn log_own_answer(
        &self,
        head: &crate::http::RequestHead,
        peer: &Peer,
        status: u16,
        body_len: usize,
        elapsed: Duration,
    ) {
        let Some(access) = &self.ctx.access_log else {
            return;
        };
        let headers = [
            ("Content-Type".to_string(), "text/plain".to_string()),
            ("Content-Length".to_string(), body_len.to_string()),
            ("Connection".to_string(), "close".to_string()),
        ];
        let now = std::time::SystemTime::now();
        access.log(&crate::log::AccessRecord::of_request(
            head,
            &peer.ip,
            status,
            Some(body_len as u64),
            &headers,
            now.checked_sub(elapsed).unwrap_or(now),
            elapsed,
        ));
    }

    /// A request is still running at `--slow-request-threshold`: one WARNING with the request and the
    /// current Python stack of its thread; the request goes on.
    pub fn request_slow(&self, thread: usize, stuck: usize, elapsed: Duration) {
        let pid = std::process::id();
        self.board.count(crate::scoreboard::Event::SlowRequest);
        let what = self
            .board
            .requests_in_flight()
            .into_iter()
            .find(|(t, _)| *t == thread)
            .map(|(_, r)| r.summary())
            .unwrap_or_else(|| "a request".to_string());
        self.log_with_stack(
            crate::log::Level::Warning,
            &format!(
                "Slow request: {what} still running after {:.1}s (--slow-request-threshold {}s; worker {pid}, thread {thread}). Its Python stack now (most recent call first):",
                elapsed.as_secs_f64(),
                self.ctx.cfg.slow_request_threshold,
            ),
            stuck,
        );
    }

    /// A record and the Python stack of app thread `thread` after it, written in one piece.
    pub fn log_with_stack(&self, level: crate::log::Level, msg: &str, thread: usize) {
        let log = &self.ctx.log;
        match crate::python::stacks::thread_stack(self.tstate(thread)) {
            Some(stack) => log.log_with_text(level, msg, &stack),
            None => {
                log.log(level, msg);
                crate::python::stacks::dump_thread(log.raw_fd(), self.tstate(thread));
            }
        }
    }

    fn tstate(&self, thread: usize) -> *mut libc::c_void {
        self.ctx
            .tstates
            .get(thread)
            .map(|t| t.load(Ordering::Acquire))
            .unwrap_or(std::ptr::null_mut())
    }

    /// Connections the worker holds: those counted by admission, and TLS handshakes in progress (which
    /// hold no capacity but are on their way to becoming connections). A stopping worker waits for them.
    pub fn open_connections(&self) -> usize {
        self.admission.connections() + self.tls.as_ref().map_or(0, |t| t.pending())
    }

    /// While stopping, how long an idle kept-alive connection is still read for a request on its way.
    pub fn stop_idle_grace(&self) -> Duration {
        self.keepalive
            .clamp(Duration::from_millis(500), Duration::from_secs(2))
    }

    /// The `--max-requests`-th request was taken: retire the worker once its requests are done.
    pub fn check_recycle(&self) {
        if self.ctx.recycle.load(Ordering::Acquire) && !self.shutting_down.get() {
            self.board
                .set_stop_reason(crate::scoreboard::StopReason::MaxRequests);
            self.ctx
                .log
                .info("Autorestarting worker after current request.");
            self.begin_stop();
        }
    }

    /// How long a connection may sit without sending the first byte of its next request.
    pub fn idle_timeout(&self, first: bool) -> Duration {
        if first || self.keepalive.is_zero() {
            self.header_timeout
        } else {
            self.keepalive
        }
    }
}

/// Leave the process without running Python's finalisation: app threads may be mid-request, and
/// finalising an interpreter under them can hang. Logs are written unbuffered, so nothing is lost.
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process immediately; nothing runs after it.
    unsafe { libc::_exit(code) }
}
