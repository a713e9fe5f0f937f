//! The thread loop of a runtime that runs one request per Python thread at a time (WSGI): take a ticket
//! from the run queue, begin the request's [`RequestScope`], hand the job to the runtime's [`Handler`].
//!
//! A thread stays attached to the interpreter for its whole life and only detaches (releases the GIL)
//! while it waits, so each request costs one GIL hand-over rather than a thread-state setup. How it waits
//! is a [`Waiter`]: on the run queue ([`Blocking`]), or — a sync worker's one thread — driving the worker's
//! I/O itself until a request is ready (`worker::inline`).
//!
//! [`Threads`] is the pool's membership as it changes: the worker's I/O side adds threads and asks
//! for retirements (`worker::elastic` decides when); an idle added thread takes a retirement and ends.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;

use super::{RequestScope, RunQueue, WorkerContext};
use crate::exchange::{Job, Ticket};

/// How an app thread waits for its next request, with the GIL released.
pub trait Waiter: Send {
    /// The next ticket of `queue` within `max`; `Disconnected` once the worker serves no more.
    fn next(
        &mut self,
        queue: &RunQueue,
        max: std::time::Duration,
    ) -> Result<Arc<Ticket>, crossbeam_channel::RecvTimeoutError>;

    /// The thread is about to run a request `next` gave it (the GIL held).
    fn begins(&mut self) {}

    /// Whether a short request may be followed by the next queued one without going through `next`.
    fn batches(&self) -> bool {
        true
    }
}

/// Waiting on the run queue, which the worker's I/O thread fills.
pub struct Blocking;

impl Waiter for Blocking {
    fn next(
        &mut self,
        queue: &RunQueue,
        max: std::time::Duration,
    ) -> Result<Arc<Ticket>, crossbeam_channel::RecvTimeoutError> {
        queue.recv_timeout(max)
    }
}

impl Waiter for Box<dyn Waiter> {
    fn next(
        &mut self,
        queue: &RunQueue,
        max: std::time::Duration,
    ) -> Result<Arc<Ticket>, crossbeam_channel::RecvTimeoutError> {
        (**self).next(queue, max)
    }
    fn begins(&mut self) {
        (**self).begins()
    }
    fn batches(&self) -> bool {
        (**self).batches()
    }
}

/// A runtime's per-thread request runner.
pub trait Handler {
    /// Run `job` to its end on this thread (the GIL held); `scope` is its bookkeeping, ended when dropped.
    fn handle(&mut self, py: Python<'_>, job: Job, scope: RequestScope<&WorkerContext>);
}

/// Requests a thread takes from the queue in a row without letting go of the GIL. Letting go between
/// requests hands the GIL to another thread of the worker and back — a futex wake and wait each way, more
/// than a small request itself costs — while a request is already waiting. Every `BATCH` requests (and
/// whenever the queue is empty) the thread detaches anyway, so pyo3's deferred reference drops (bodies
/// the I/O thread has written) are applied.
const BATCH: u32 = 8;
/// Only requests shorter than this are followed without detaching. A longer one means the other threads
/// have had time to take requests of their own and wait for the GIL: keeping it would make them wait a
/// whole switch interval (5 ms). Measured (bench/README.md): hello 15.1 → 13.7 µs CPU per request with
/// batching; Flask JSON (60–90 µs per request) got slower with it (87 → 105 µs), hence the limit.
const SHORT_REQUEST: std::time::Duration = std::time::Duration::from_micros(20);

/// How often an idle app thread shows it is alive.
const ALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A worker's ordinary app threads (not the overflow lane's): the `base` it starts with, which never
/// retire, and those added up to `max`, whose entries (scoreboard, `tstates`) start at `first_added`,
/// after the overflow lane's.
pub struct Threads {
    pub base: usize,
    pub max: usize,
    pub first_added: usize,
    running: AtomicUsize,
    /// Retirements asked for and not yet taken by an idle added thread.
    retire: AtomicUsize,
    /// Entries of added threads not in use, lowest last (taken with `pop`).
    free: Mutex<Vec<usize>>,
    /// Each entry's kernel thread id while a thread runs on it (0: none), for its CPU use.
    tids: Vec<AtomicI32>,
}

impl Threads {
    /// `base` threads on entries `0..base`; up to `max - base` more on entries from `first_added`.
    pub fn new(base: usize, max: usize, first_added: usize) -> Threads {
        let max = max.max(base);
        Threads {
            base,
            max,
            first_added,
            running: AtomicUsize::new(0),
            retire: AtomicUsize::new(0),
            free: Mutex::new((first_added..first_added + (max - base)).rev().collect()),
            tids: (0..first_added + (max - base))
                .map(|_| AtomicI32::new(0))
                .collect(),
        }
    }

    /// Entries a worker's threads may use: for `WorkerContext::tstates`.
    pub fn entries(&self) -> usize {
        self.tids.len()
    }

    /// Ordinary threads running now (retirements asked for not yet taken still count).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Whether entry `index` belongs to an ordinary thread (not the overflow lane's).
    fn ordinary(&self, index: usize) -> bool {
        index < self.base || index >= self.first_added
    }

    /// A free entry for one more thread, if the ceiling allows it.
    pub fn take_entry(&self) -> Option<usize> {
        self.free.lock().ok()?.pop()
    }

    /// An entry taken with `take_entry` whose thread did not start (or has ended).
    pub fn give_back(&self, index: usize) {
        if let Ok(mut free) = self.free.lock() {
            free.push(index);
            // Lowest last: added threads keep to the first entries, which the scoreboard shows.
            free.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    /// Ask `n` added threads to end once idle.
    pub fn ask_to_retire(&self, n: usize) {
        self.retire.fetch_add(n, Ordering::AcqRel);
    }

    /// Retirements asked for and not taken yet are called off; how many.
    pub fn cancel_retirements(&self) -> usize {
        self.retire.swap(0, Ordering::AcqRel)
    }

    /// The kernel thread ids of the ordinary threads running now, with their entries.
    pub fn tids(&self) -> Vec<(usize, i32)> {
        self.tids
            .iter()
            .enumerate()
            .filter(|(i, _)| self.ordinary(*i))
            .map(|(i, t)| (i, t.load(Ordering::Acquire)))
            .filter(|(_, t)| *t != 0)
            .collect()
    }

    fn started(&self, index: usize) {
        if !self.ordinary(index) {
            return;
        }
        if let Some(t) = self.tids.get(index) {
            // SAFETY: gettid has no preconditions.
            t.store(unsafe { libc::gettid() }, Ordering::Release);
        }
        self.running.fetch_add(1, Ordering::AcqRel);
    }

    /// An idle thread on entry `index` takes a retirement if one is asked for and it was added.
    fn takes_retirement(&self, index: usize) -> bool {
        index >= self.first_added
            && self
                .retire
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
    }

    fn ended(&self, index: usize) {
        if !self.ordinary(index) {
            return;
        }
        if let Some(t) = self.tids.get(index) {
            t.store(0, Ordering::Release);
        }
        self.running.fetch_sub(1, Ordering::AcqRel);
        if index >= self.first_added {
            self.give_back(index);
        }
    }
}

/// The body of app thread `index`: `make` builds its handler once, attached to the interpreter; the
/// thread waits for each request with `waiter`.
pub fn python_thread<H: Handler, W: Waiter>(
    ctx: Arc<WorkerContext>,
    index: usize,
    rx: RunQueue,
    mut waiter: W,
    make: impl FnOnce(Python<'_>, &Arc<WorkerContext>) -> PyResult<H>,
) {
    let log = ctx.log.clone();
    ctx.threads.started(index);
    Python::attach(|py| {
        if let Some(slot) = ctx.tstates.get(index) {
            // SAFETY: called with the thread attached; the state lives as long as the thread.
            let tstate = unsafe { pyo3::ffi::PyThreadState_Get() };
            slot.store(tstate as *mut libc::c_void, Ordering::Release);
        }
        let mut runner = match make(py, &ctx) {
            Ok(r) => r,
            Err(e) => {
                log.error(&format!(
                    "Cannot prepare the app thread:\n{}",
                    crate::python::format_exception(py, &e)
                ));
                return;
            }
        };
        let mut in_a_row = 0;
        loop {
            let queued = if in_a_row > 0 && in_a_row < BATCH && waiter.batches() {
                rx.try_recv().ok()
            } else {
                None
            };
            let ticket = match queued {
                Some(ticket) => ticket,
                None => {
                    in_a_row = 0;
                    // Idle, the thread wakes each `ALIVE_EVERY` and beats its liveness entry once it
                    // holds the GIL again: the beat proves the thread and the interpreter run
                    // (`/healthz`).
                    ctx.board.thread_alive(index);
                    loop {
                        match py.detach(|| waiter.next(&rx, ALIVE_EVERY)) {
                            Ok(ticket) => break ticket,
                            Err(crossbeam_channel::RecvTimeoutError::Timeout)
                                if ctx.threads.takes_retirement(index) =>
                            {
                                return;
                            }
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                                ctx.board.thread_alive(index)
                            }
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                }
            };
            let Some(job) = ticket.take() else {
                // Its connection moved the request to the overflow lane (a loopback call).
                ctx.empty_tickets.fetch_sub(1, Ordering::Relaxed);
                continue;
            };
            waiter.begins();
            let started = std::time::Instant::now();
            // A bug on our side must cost one request (its connection closes when the reply channel
            // drops), not the thread.
            let run = || {
                let scope = RequestScope::begin(&*ctx, index, &job);
                runner.handle(py, job, scope)
            };
            if catch_unwind(AssertUnwindSafe(run)).is_err() {
                log.error("Internal error while handling a request; the connection was closed");
            }
            in_a_row = if started.elapsed() < SHORT_REQUEST {
                in_a_row + 1
            } else {
                0
            };
        }
    });
    // The thread state is gone with the thread: no stack dump may read it any more.
    if let Some(slot) = ctx.tstates.get(index) {
        slot.store(std::ptr::null_mut(), Ordering::Release);
    }
    ctx.board.thread_alive_clear(index);
    ctx.threads.ended(index);
}
