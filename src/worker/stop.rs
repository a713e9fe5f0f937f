//! The end of a worker's graceful stop (TERM, HUP, TTOU, `--max-requests`, a request past `--timeout`):
//! what becomes of the requests still running when `--graceful-timeout` runs out, and of requests that no
//! thread will ever run because every thread is stuck in a request that passed `--timeout`.
//!
//! The master kills a worker that is still there when `--graceful-timeout` is up. A request cut off by
//! that SIGKILL leaves its client with a connection closed without an answer (behind nginx, a 502) and
//! the log with nothing but the kill. So the worker ends first: `cut_off_margin` before the deadline, each
//! connection whose request is still running answers it `503 Service Unavailable` with `Connection:
//! close` if no byte of its response has gone out (else it can only close), logs the request (error log
//! with the Python stack of its thread, access log), and closes; then the worker exits by itself. The
//! master's SIGKILL stays the backstop for a worker that cannot get there (its I/O loop stopped, a
//! `worker_exit` hook that never returns), and the master then says so (arbiter `stop`).
//!
//! A stopping worker whose every thread is stuck in a request past `--timeout` cannot run a request that
//! waits for a thread (one that came in on a kept-alive connection): it is answered 503 at once instead
//! of at the deadline, and no thread runs it later even if one comes back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::watch::OwnAnswer;
use super::IoState;
use crate::exchange::{Peer, Progress, Ticket};
use crate::http::RequestHead;

/// How long before `--graceful-timeout` is up the worker answers what still runs: a quarter of it, at most
/// a second (the master kills at the deadline itself; the answers and the exit need only milliseconds).
pub fn cut_off_margin(graceful: Duration) -> Duration {
    (graceful / 4).min(Duration::from_secs(1))
}

/// The longest a cut-off answer may take to write: a client that does not read gets its connection
/// closed instead, before the master's deadline.
fn write_limit(graceful: Duration) -> Duration {
    (cut_off_margin(graceful) / 2).max(Duration::from_millis(50))
}

/// Why a connection answers its request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutOff {
    /// The worker's graceful stop is about to run out.
    Deadline,
    /// The worker is stopping and every one of its threads is stuck in a request past `--timeout`.
    NoThread,
}

impl IoState {
    /// When a graceful stop starting now ends for the requests still running (see `cut_off_margin`).
    pub fn stop_deadline_from_now(&self) -> Instant {
        let graceful = Duration::from_secs(self.ctx.cfg.graceful_timeout);
        Instant::now() + graceful - cut_off_margin(graceful)
    }

    /// Thread `thread` is stuck in the request it started at `started_ns` (it passed `--timeout`).
    pub fn note_lost_thread(&self, thread: usize, started_ns: u64) {
        self.lost_threads.borrow_mut().push((thread, started_ns));
        // The worker may have been stopping already: wake the requests that wait for a thread.
        self.shutdown_signal.notify_waiters();
    }

    /// Every ordinary thread is still running a request that passed `--timeout`.
    fn all_threads_stuck(&self) -> bool {
        let lost = self.lost_threads.borrow();
        // The ordinary threads' entries: `0..--threads`, then any added ones (elastic threads).
        let threads: Vec<usize> = self
            .ctx
            .threads
            .tids()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        if threads.is_empty() || lost.len() < threads.len() {
            return false;
        }
        let running = self.board.requests_in_flight();
        threads.into_iter().all(|t| {
            lost.iter().any(|&(lt, started)| {
                lt == t
                    && running
                        .iter()
                        .any(|(rt, r)| *rt == t && r.started_ns == started)
            })
        })
    }

    /// Resolves when the connection must answer its request itself (see the module doc); pending while
    /// the worker is not stopping. `queued` is the request's ticket while it waits in the run queue.
    pub async fn cut_off(&self, queued: Option<&Ticket>) -> CutOff {
        loop {
            // Created before the checks, so a stop that begins after them still wakes this wait.
            let signalled = self.shutdown_signal.notified();
            if self.shutting_down.get() {
                // Taken off the queue here: a stuck thread coming back at this moment either got it first
                // (it is then answered normally) or will never run it.
                if let Some(ticket) = queued {
                    if self.all_threads_stuck() && self.admission.withdraw(ticket).is_some() {
                        return CutOff::NoThread;
                    }
                }
                if let Some(deadline) = self.stop_deadline.get() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => return CutOff::Deadline,
                        _ = signalled => continue,
                    }
                }
            }
            signalled.await;
        }
    }

    /// After the deadline: give the connections a moment to write their answers and close, then let the
    /// worker exit.
    pub async fn finish_stop(&self) {
        let graceful = Duration::from_secs(self.ctx.cfg.graceful_timeout);
        let until = Instant::now() + write_limit(graceful) + Duration::from_millis(20);
        while self.admission.connections() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Resolves at the stop deadline; pending while the worker is not stopping.
pub async fn deadline(io: &IoState) {
    loop {
        let signalled = io.shutdown_signal.notified();
        if let Some(d) = io.stop_deadline.get() {
            tokio::time::sleep_until(d).await;
            return;
        }
        signalled.await;
    }
}

/// Answer (or, once its response has begun, just end) a request the worker cuts off, and log it: the
/// error log names the request and why, with the Python stack of the thread running it; the access log
/// has the 503.
#[allow(clippy::too_many_arguments)]
pub async fn answer_cut_off<A: OwnAnswer>(
    answer: &mut A,
    io: &IoState,
    head: &RequestHead,
    peer: &Peer,
    progress: &Progress,
    queued: Option<&Ticket>,
    response_started: bool,
    why: CutOff,
    dispatched: Instant,
) {
    let log = &io.ctx.log;
    let pid = std::process::id();
    let graceful = io.ctx.cfg.graceful_timeout;
    // A request no thread has taken is taken off the queue (`cut_off` did for `NoThread`); one a thread
    // runs is named with its thread.
    let never_run = match why {
        CutOff::NoThread => true,
        CutOff::Deadline => queued.is_some_and(|t| io.admission.withdraw(t).is_some()),
    };
    let waited = dispatched.elapsed().as_secs_f64();
    let outcome = if response_started {
        "its response had begun, so the connection was closed before its end"
    } else {
        "answered 503 and closed the connection"
    };
    let body = match why {
        CutOff::NoThread => {
            log.error(&format!(
                "Request not run: {} {} from {} came in while every thread of this stopping worker is stuck in a request past --timeout (worker {pid}); {outcome}, so the client can retry it on another worker.",
                head.method,
                head.target,
                peer.label(),
            ));
            "The server is stopping or restarting this worker and could not run this request; retry it.\n".to_string()
        }
        CutOff::Deadline if never_run => {
            log.error(&format!(
                "Request cut off at --graceful-timeout {graceful}s: {} {} from {} waited {waited:.1}s for a thread and was not run (worker {pid}); {outcome}.",
                head.method,
                head.target,
                peer.label(),
            ));
            format!(
                "The server is stopping or restarting this worker and this request did not run within its graceful timeout ({graceful} s).\n"
            )
        }
        CutOff::Deadline => {
            let thread = progress.thread.load(Ordering::Relaxed);
            let started = progress.started_ns.load(Ordering::Acquire);
            let secs = crate::scoreboard::now_ns().saturating_sub(started) as f64 / 1e9;
            let what = io
                .board
                .requests_in_flight()
                .into_iter()
                .find(|(t, r)| *t == thread && r.started_ns == started)
                .map(|(_, r)| r.summary())
                .unwrap_or_else(|| {
                    format!("{} {} from {}", head.method, head.target, peer.label())
                });
            io.log_with_stack(
                crate::log::Level::Error,
                &format!(
                    "Request cut off at --graceful-timeout {graceful}s: {what} (running for {secs:.1}s, worker {pid}, thread {thread}); {outcome}. Python stack of the thread running it (most recent call first):"
                ),
                thread,
            );
            format!(
                "The server is stopping or restarting this worker and this request did not finish within its graceful timeout ({graceful} s).\n"
            )
        }
    };
    if response_started {
        return;
    }
    // What the app returns later (if it ever does) is not sent: no access line for it.
    progress.timed_out.store(true, Ordering::Release);
    let limit = write_limit(Duration::from_secs(graceful));
    let _ = tokio::time::timeout(limit, answer.send(503, &body)).await;
    io.log_own_answer(head, peer, 503, body.len(), Duration::from_secs_f64(waited));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_off_comes_before_the_masters_deadline() {
        assert_eq!(
            cut_off_margin(Duration::from_secs(30)),
            Duration::from_secs(1)
        );
        assert_eq!(
            cut_off_margin(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(cut_off_margin(Duration::ZERO), Duration::ZERO);
        for g in [0, 1, 2, 3, 10, 30, 120] {
            let g = Duration::from_secs(g);
            // The answers are written and the worker is gone before the master's SIGKILL.
            assert!(cut_off_margin(g) <= g);
            if g >= Duration::from_secs(1) {
                assert!(write_limit(g) + Duration::from_millis(20) < cut_off_margin(g));
            }
        }
    }
}
