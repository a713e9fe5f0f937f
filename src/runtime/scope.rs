//! The bookkeeping every runtime does around one request, in one place: begun when a thread takes the
//! request, ended when the runtime is done with it (also when a runtime panics mid-request).
//!
//! Its end is also where a request is counted for the metrics, once for every runtime: the scoreboard
//! slot's counters and duration histogram (served by the master as Prometheus), and gunicorn's statsd
//! datagram when `--statsd-host` is set. A runtime tells the status with [`RequestScope::log`] or
//! [`RequestScope::set_status`]; one it never learnt is counted as `other`.

use std::ops::Deref;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::WorkerContext;
use crate::exchange::{Job, Peer, Progress};
use crate::http::RequestHead;
use crate::log::AccessRecord;

/// How a request ended, for its access-log line.
pub struct Outcome<'a> {
    pub status: u16,
    pub headers: &'a [(String, String)],
    /// Body bytes sent, or None when no response head went out.
    pub body_sent: Option<u64>,
    /// The request's variables by name (the WSGI environ), for `%({name}e)s`.
    pub environ: Option<&'a crate::log::EnvironLookup<'a>>,
}

/// One request while a runtime runs it. `C` holds the worker's context: a reference for a runtime that
/// runs the request within one call (a thread of `pool`), an `Arc` for one whose request outlives the
/// call that began it (a task of an event loop).
pub struct RequestScope<C: Deref<Target = WorkerContext>> {
    ctx: C,
    thread: usize,
    head: Arc<RequestHead>,
    peer: Arc<Peer>,
    progress: Arc<Progress>,
    started_at: SystemTime,
    t0: Instant,
    started_ns: u64,
    /// The response's status, once the runtime knows it (0 until then).
    status: AtomicU16,
}

impl<C: Deref<Target = WorkerContext>> RequestScope<C> {
    /// Thread `thread` takes `job`: its `--timeout` clock starts, the scoreboard names it, and it counts
    /// toward `--max-requests` (the last one answers with `Connection: close` and the worker retires).
    pub fn begin(ctx: C, thread: usize, job: &Job) -> RequestScope<C> {
        let started_at = SystemTime::now();
        let t0 = Instant::now();
        job.progress.start(thread);
        let peer = job.conn.peer.clone();
        let client = if peer.ip.is_empty() {
            String::new()
        } else {
            format!("{}:{}", peer.ip, peer.port)
        };
        let started_ns = crate::scoreboard::now_ns();
        ctx.board
            .request_started(thread, &job.head.method, &job.head.target, &client);
        let served = ctx.served.fetch_add(1, Ordering::AcqRel) + 1;
        if ctx.max_requests > 0 && served >= ctx.max_requests {
            ctx.shutting_down.store(true, Ordering::SeqCst);
            ctx.recycle.store(true, Ordering::Release);
        }
        RequestScope {
            ctx,
            thread,
            head: job.head.clone(),
            peer,
            progress: job.progress.clone(),
            started_at,
            t0,
            started_ns,
            status: AtomicU16::new(0),
        }
    }

    /// The status the app answered with, for the metrics (also set by [`RequestScope::log`]).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// Write the access-log line — unless the connection answered the request itself (`--timeout`'s 504,
    /// a stopping worker's 503) and logged that answer: what the app made of it never went out.
    pub fn log(&self, outcome: &Outcome<'_>) {
        self.status.store(outcome.status, Ordering::Relaxed);
        let Some(access) = &self.ctx.access_log else {
            return;
        };
        if self.progress.timed_out.load(Ordering::Acquire) {
            return;
        }
        let mut rec = AccessRecord::of_request(
            &self.head,
            &self.peer.ip,
            outcome.status,
            outcome.body_sent,
            outcome.headers,
            self.started_at,
            self.t0.elapsed(),
        );
        if access.wants_environ() {
            rec.environ = outcome.environ;
        }
        access.log(&rec);
    }
}

impl<C: Deref<Target = WorkerContext>> Drop for RequestScope<C> {
    fn drop(&mut self) {
        // For `show stacks`: which request a still-open transaction may have come from.
        crate::snapshot::History::get().record(
            self.thread,
            &self.head.method,
            &self.head.target,
            self.started_ns,
        );
        // The connection answered a request past `--timeout` itself: its 504 is what the client got.
        let status = if self.progress.timed_out.load(Ordering::Acquire) {
            504
        } else {
            self.status.load(Ordering::Relaxed)
        };
        let elapsed = self.t0.elapsed();
        self.ctx
            .board
            .record_request(&self.head.method, status, elapsed.as_nanos() as u64);
        if let Some(statsd) = crate::metrics::statsd::get() {
            statsd.request(elapsed, status);
        }
        self.ctx.board.request_finished(self.thread);
    }
}
