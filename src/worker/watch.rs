//! What a connection does around one request while the app has it, whatever the protocol it came in:
//! the placement (`admission`), the looks at a ticket still waiting (a loopback call moves to the
//! overflow lane), `--timeout` (the connection answers 504 itself and the log names the request with
//! its Python stack) and `--slow-request-threshold` (a WARNING with the stack), and telling a task
//! that its client left. The HTTP/1 driver (`h1::request`) and the HTTP/2 one (`h2::stream`) both run
//! their requests through `Watch`; how an answer of the connection's own goes out is theirs
//! (`OwnAnswer`: an HTTP/1 response and a close, or a response on one HTTP/2 stream).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::admission::{Claim, Placed, WAIT_POLL};
use super::transport::Transport;
use super::IoState;
use crate::exchange::{BodyChunk, BodyStream, Job, Peer, Progress, TaskEvent, Ticket, BODY_QUEUE};
use crate::http::{self, RequestHead};
use crate::scoreboard::now_ns;

/// How often a queued request is checked for having started in Python (its timeout clock starts then).
const TIMEOUT_POLL: Duration = Duration::from_millis(250);

/// How a driver sends a short `text/plain` answer of its own (`--timeout`'s 504, a stopping worker's
/// 503) for a request whose response has not begun.
pub trait OwnAnswer {
    /// Send it; false when it could not be written.
    fn send(&mut self, status: u16, body: &str) -> impl std::future::Future<Output = bool>;
}

/// An HTTP/1 connection's own answer: the response with `Connection: close` (the connection closes
/// after it, since the app may still be writing the request's real response).
pub struct H1Answer<'a, S>(pub &'a mut S);

impl<S: Transport> OwnAnswer for H1Answer<'_, S> {
    async fn send(&mut self, status: u16, body: &str) -> bool {
        self.0
            .write_all(&http::simple_response(status, body, true))
            .await
            .is_ok()
    }
}

/// What a timer look found.
pub enum Tick {
    Continue,
    /// Past `--timeout`: answered 504 (if the response had not begun) and logged; the request's stream
    /// must end now.
    TimedOut,
}

/// The timers of one request in the app's hands.
pub struct Watch {
    /// The request's ticket, while no thread has taken it (see `admission`).
    pub waiting: Option<Arc<Ticket>>,
    /// The request runs on the overflow lane (a loopback call), not on the worker's threads.
    pub on_overflow: bool,
    /// When the timers are next looked at: the ticket (every `WAIT_POLL`), `--timeout`, the slow threshold.
    pub check: Instant,
    /// `--timeout` or `--slow-request-threshold` still watch the request's time in Python.
    watched: bool,
    slow_reported: bool,
}

impl Watch {
    /// `--timeout` is checked on the I/O thread, so the client gets an answer even when the app thread
    /// never comes back. Until Python has taken the request, the check just polls.
    pub fn new(io: &IoState) -> Watch {
        Watch {
            waiting: None,
            on_overflow: false,
            check: Instant::now() + TIMEOUT_POLL,
            watched: io.request_timeout.is_some() || io.slow_threshold.is_some(),
            slow_reported: false,
        }
    }

    /// Hand the request to `admission`. Until a thread takes it, the connection keeps its ticket and
    /// looks every `WAIT_POLL` whether it is a loopback call to move to the overflow lane (the invariant
    /// in `admission`). False when the worker's queues are gone (it is exiting).
    pub fn place(
        &mut self,
        io: &IoState,
        job: Job,
        conn_peer: &Peer,
        claim: &mut Claim<'_>,
    ) -> bool {
        match io.admission.place(job, conn_peer, claim) {
            Some(Placed::Threads(ticket)) => {
                self.waiting = Some(ticket);
                self.check = Instant::now() + WAIT_POLL;
                true
            }
            Some(Placed::Overflow) => {
                self.on_overflow = true;
                true
            }
            None => false,
        }
    }

    /// Whether a timer is armed (the select branch that calls `tick` is on).
    pub fn armed(&self) -> bool {
        self.watched || self.waiting.is_some()
    }

    /// How long a read the app waits for may take before the timers are due (so `--timeout` fires even
    /// while the client is slow to send the body the app waits for).
    pub fn read_deadline(&self, io: &IoState) -> Instant {
        if self.watched {
            self.check
        } else {
            Instant::now() + io.header_timeout
        }
    }

    /// The timers are due (`check`): a ticket still waiting is looked at; once the request runs,
    /// `--timeout` and `--slow-request-threshold`.
    #[allow(clippy::too_many_arguments)]
    pub async fn tick<A: OwnAnswer>(
        &mut self,
        io: &IoState,
        progress: &Progress,
        head: &RequestHead,
        peer: &Peer,
        conn_peer: &Peer,
        claim: &mut Claim<'_>,
        response_started: bool,
        answer: &mut A,
    ) -> Tick {
        let started = progress.started_ns.load(Ordering::Acquire);
        if started == 0 {
            if let Some(ticket) = &self.waiting {
                if io.admission.recheck(ticket, conn_peer, claim) {
                    self.on_overflow = true;
                    self.waiting = None;
                }
            }
            let poll = if self.waiting.is_some() {
                WAIT_POLL
            } else {
                TIMEOUT_POLL
            };
            self.check = Instant::now() + poll;
            return Tick::Continue;
        }
        self.waiting = None;
        if !self.watched {
            return Tick::Continue;
        }
        // A task that has begun its response is alive (a stream of server-sent events may run for
        // hours, as it does under uvicorn's gunicorn worker): `--timeout` measures a task until then.
        if response_started && progress.task.get().is_some() {
            self.watched = false;
            return Tick::Continue;
        }
        let elapsed = Duration::from_nanos(now_ns().saturating_sub(started));
        let thread = progress.thread.load(Ordering::Relaxed);
        if let Some(limit) = io.request_timeout.filter(|l| elapsed >= *l) {
            // A task is cancelled by its loop; a thread (or a loop that does not come back) is stuck.
            io.past_timeout(progress, elapsed);
            if !response_started {
                let body = format!(
                    "The request ran longer than the server's timeout ({} s).\n",
                    limit.as_secs()
                );
                progress.timed_out.store(true, Ordering::Release);
                answer.send(504, &body).await;
                io.log_own_answer(head, peer, 504, body.len(), elapsed);
            }
            return Tick::TimedOut;
        }
        if !self.slow_reported && io.slow_threshold.is_some_and(|s| elapsed >= s) {
            self.slow_reported = true;
            match progress
                .task
                .get()
                .map(|t| t.event(TaskEvent::Slow(elapsed)))
            {
                Some(Ok(())) => {}
                Some(Err(stuck)) => io.request_slow(thread, stuck, elapsed),
                None => io.request_slow(thread, thread, elapsed),
            }
        }
        // Sleep until the nearest deadline still ahead.
        let next = [
            io.request_timeout,
            io.slow_threshold.filter(|_| !self.slow_reported),
        ]
        .into_iter()
        .flatten()
        .map(|d| d.saturating_sub(elapsed))
        .min();
        match next {
            Some(d) => self.check = Instant::now() + d,
            None => self.watched = false,
        }
        Tick::Continue
    }
}

/// The request's stream ends before its response is complete: a task still running for it is told, so
/// it is cancelled after `--asgi-disconnect-grace-period` (a thread cannot be; it finishes).
pub fn client_left(progress: &Progress) {
    if progress.timed_out.load(Ordering::Acquire)
        || progress.started_ns.load(Ordering::Acquire) == 0
    {
        return;
    }
    if let Some(task) = progress.task.get() {
        let _ = task.event(TaskEvent::ClientGone);
    }
}

/// The channels of a request body still to come: the app's half (`BodyStream`, in the job), the signal
/// that the app first read past what was prefetched, and where the connection pumps the body to.
pub fn body_channels() -> (BodyStream, oneshot::Receiver<()>, mpsc::Sender<BodyChunk>) {
    let (s_tx, s_rx) = oneshot::channel();
    let (b_tx, b_rx) = mpsc::channel::<BodyChunk>(BODY_QUEUE);
    (
        BodyStream {
            start: Some(s_tx),
            rx: b_rx,
        },
        s_rx,
        b_tx,
    )
}

/// The app's first read past the prefetched body (pending when there is none to wait for).
pub async fn wait_start(
    rx: Option<&mut oneshot::Receiver<()>>,
) -> Result<(), oneshot::error::RecvError> {
    match rx {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// Room for the next body chunk in the app's queue (pending when nothing is pumped).
pub async fn reserve(
    tx: Option<&mpsc::Sender<BodyChunk>>,
) -> Result<mpsc::Permit<'_, BodyChunk>, mpsc::error::SendError<()>> {
    match tx {
        Some(tx) => tx.reserve().await,
        None => std::future::pending().await,
    }
}
