//! A sync worker without a hand-off per request. Its one app thread is also the thread that drives the
//! worker's I/O loop between requests: with the GIL released it runs the loop (accepting, reading heads
//! and bodies of every connection, keep-alive, slow clients, timers) until a request is queued, then
//! takes the GIL and calls the app itself, and the loop it drives next writes the response. A request
//! that the connection parsed on this thread runs on this thread: no futex wake of a Python thread and no
//! eventfd wake of an I/O thread per request (bench/README.md, "The wake-up chain").
//!
//! While the app runs, nothing drives the loop — for at most [`TAKE_OVER_AFTER`]. The worker's main thread
//! stands by ([`Baton::stand_by`]): when one app call has lasted that long it takes the loop and drives it
//! until the app thread wants it back (meanwhile the app thread runs the requests that loop queues,
//! without waiting for the main thread to be scheduled), so everything that must go on while a request
//! runs still does — the heartbeat, `--timeout`'s 504, slow clients, graceful stop, other connections,
//! and accepting the loopback calls the overflow lane serves (the invariant in `admission`). Everything
//! the I/O side does is unchanged: requests are placed by `admission` in the same run queue, as
//! tickets, and the app thread takes them from there; only who drives the loop changes.
//!
//! The loop (a current-thread runtime and its `LocalSet`, with the I/O state in `Rc`s) is used by one
//! thread at a time: the baton's state says which, under a mutex, and the hand-over goes through that
//! mutex. The `LocalSet` is created on the main thread, which wakes none of its tasks while it does not
//! drive it, so wakes from the app thread outside the loop (response pieces) take the set's locked
//! remote queue.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;
use tokio::sync::Notify;

use crate::exchange::Ticket;
use crate::runtime::pool::Waiter;
use crate::runtime::RunQueue;

/// How long one app call may keep the loop without a driver before the main thread takes it over. The
/// longest any other connection, timer or accept waits for the app; a request shorter than this (hello:
/// ~10 µs, Flask: ~70 µs) costs no thread switch at all. The main thread looks this often while app
/// calls run (see `PARK_AFTER`).
const TAKE_OVER_AFTER: Duration = Duration::from_millis(1);

/// Looks in a row during which no app call began, after which the main thread sleeps until the next call
/// begins (the app thread wakes it then), so an idle worker does not wake every millisecond.
const PARK_AFTER: u32 = 50;

/// The I/O loop itself.
struct Core {
    rt: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
}

// SAFETY: `Core` is only used by the thread the baton's state names as the driver (`Driver::App` or
// `Driver::Standby`), which is set and read under the baton's mutex, so one thread at a time uses it and
// each hand-over is ordered by the mutex (the `Rc`s of the I/O state are never touched by two threads
// at once). The `LocalSet` is created on the main thread and that thread wakes none of its tasks while
// it is not the driver (it only waits on the baton), so tokio's owner-thread fast path — which pushes to
// the set's unlocked local queue — is taken only by the driver; the app thread's wakes from outside the
// loop go to the set's locked remote queue. The runtime itself is `Send + Sync`.
unsafe impl Send for Core {}
// SAFETY: as above: shared references are used only by the current driver.
unsafe impl Sync for Core {}

/// Who drives the loop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Driver {
    /// The app thread, between requests.
    App,
    /// Nobody: the app thread runs the app.
    Nobody,
    /// The main thread, while an app call runs long.
    Standby,
}

struct State {
    driver: Driver,
    /// App calls begun so far: the main thread tells a long call from a new one by it.
    calls: u64,
    /// The app thread is in an app call.
    in_app: bool,
    /// The app thread is gone (it could not prepare the app): the main thread drives for good.
    app_gone: bool,
    /// The main thread sleeps until the next app call begins.
    parked: bool,
    /// The app thread asked the main thread for the loop back.
    want_back: bool,
    /// The worker's I/O is over (`supervise` returned this exit code).
    ended: Option<i32>,
}

/// The right to drive the worker's I/O loop, passed between the app thread and the main thread.
pub struct Baton {
    core: Core,
    state: Mutex<State>,
    changed: Condvar,
    /// The app thread wants the loop back from the main thread.
    give_back: Notify,
    /// A request was queued: registered as the worker's wake hook (`WorkerContext::on_wake`).
    ready: Arc<Notify>,
    over: AtomicBool,
}

impl Baton {
    /// The baton for a loop set up on this (the main) thread. The app thread holds it from its start.
    pub fn new(rt: tokio::runtime::Runtime, local: tokio::task::LocalSet) -> Arc<Baton> {
        Arc::new(Baton {
            core: Core { rt, local },
            state: Mutex::new(State {
                driver: Driver::App,
                calls: 0,
                in_app: false,
                app_gone: false,
                parked: false,
                want_back: false,
                ended: None,
            }),
            changed: Condvar::new(),
            give_back: Notify::new(),
            ready: Arc::new(Notify::new()),
            over: AtomicBool::new(false),
        })
    }

    /// What wakes the app thread's wait in the loop when a request is queued: the worker registers it as
    /// its wake hook (`WorkerContext::on_wake`), so the runtime itself stays WSGI's.
    pub fn wake_hook(&self) -> Arc<Notify> {
        self.ready.clone()
    }

    /// Spawn a task on the loop, from the main thread before the app thread starts.
    pub fn spawn(&self, fut: impl Future<Output = ()> + 'static) {
        self.core.local.spawn_local(fut);
    }

    /// The worker's I/O is over with `code` (called from the loop, by whichever thread drives it).
    pub fn end(&self, code: i32) {
        self.lock().ended = Some(code);
        self.over.store(true, Ordering::Release);
        self.changed.notify_all();
        self.ready.notify_one();
        self.give_back.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run the loop until `fut` completes. Only the driver the state names calls this.
    fn drive<F: Future>(&self, fut: F) -> F::Output {
        self.core.local.block_on(&self.core.rt, fut)
    }

    /// The main thread, until the worker's I/O is over: take the loop over while one app call lasts
    /// longer than `TAKE_OVER_AFTER` (or for good once the app thread is gone), give it back when the app
    /// thread asks. Returns the worker's exit code.
    pub fn stand_by(&self) -> i32 {
        let mut s = self.lock();
        let mut seen: Option<u64> = None;
        let mut last_calls = 0;
        let mut idle_looks = 0;
        loop {
            if let Some(code) = s.ended {
                return code;
            }
            let long_call = s.in_app && seen == Some(s.calls);
            if s.driver == Driver::Nobody && (long_call || s.app_gone) {
                s.driver = Driver::Standby;
                drop(s);
                self.drive(self.give_back.notified());
                s = self.lock();
                s.driver = Driver::Nobody;
                s.want_back = false;
                self.changed.notify_all();
                seen = None;
                continue;
            }
            seen = s.in_app.then_some(s.calls);
            // Parked only once no app call began for a while: under load the app thread never has to
            // wake this thread, it is looked at in time.
            if s.in_app || s.calls != last_calls {
                idle_looks = 0;
            } else {
                idle_looks += 1;
            }
            last_calls = s.calls;
            if idle_looks >= PARK_AFTER {
                idle_looks = 0;
                s.parked = true;
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                s.parked = false;
            } else {
                s = self
                    .changed
                    .wait_timeout(s, TAKE_OVER_AFTER)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }

    /// The app thread is about to call the app: the loop has no driver until it is back (or the main
    /// thread takes it), unless the main thread drives it already.
    fn release(&self) {
        let mut s = self.lock();
        if s.driver == Driver::App {
            s.driver = Driver::Nobody;
        }
        s.in_app = true;
        s.calls += 1;
        if s.parked {
            self.changed.notify_all();
        }
    }

    /// The app thread is back from the app: it drives the loop again (true), or — the main thread
    /// drives it — has asked for it back (false).
    fn reclaim(&self) -> bool {
        let mut s = self.lock();
        s.in_app = false;
        if s.driver == Driver::Standby {
            if !s.want_back {
                s.want_back = true;
                self.give_back.notify_one();
            }
            return false;
        }
        s.driver = Driver::App;
        true
    }

    /// Wait until the main thread has given the loop back (asked for by `reclaim`), then drive it.
    fn wait_back(&self) {
        let mut s = self.lock();
        while s.driver == Driver::Standby {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.driver = Driver::App;
    }

    /// The app thread ends: the main thread drives from now on.
    fn app_gone(&self) {
        let mut s = self.lock();
        s.app_gone = true;
        s.in_app = false;
        if s.driver == Driver::App {
            s.driver = Driver::Nobody;
        }
        self.changed.notify_all();
    }

    /// Until a request is queued or the I/O is over; `flush` first lets the loop run its ready tasks
    /// once (the response of the request just run is written by its connection's task).
    async fn until_ready(&self, queue: &RunQueue, flush: bool) {
        if flush {
            tokio::task::yield_now().await;
        }
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if !queue.is_empty() || self.over.load(Ordering::Acquire) {
                return;
            }
            ready.await;
        }
    }
}

/// How the sync worker's app thread waits for a request: by driving the I/O loop (see the module doc).
pub struct InlineWaiter {
    baton: Arc<Baton>,
    /// This thread drives the loop (it is between requests).
    holds: bool,
    /// A request ran since the loop was last driven: its response waits to be written.
    flush: bool,
}

impl InlineWaiter {
    pub fn new(baton: Arc<Baton>) -> InlineWaiter {
        InlineWaiter {
            baton,
            holds: true,
            flush: false,
        }
    }
}

impl Waiter for InlineWaiter {
    fn next(&mut self, queue: &RunQueue, max: Duration) -> Result<Arc<Ticket>, RecvTimeoutError> {
        if !self.holds {
            if !self.baton.reclaim() {
                // The main thread drives the loop (the last call ran long, or this thread was not
                // scheduled for a while): a request it queued meanwhile runs at once rather than after
                // the main thread has been scheduled to give the loop back.
                if let Ok(ticket) = queue.try_recv() {
                    return Ok(ticket);
                }
                self.baton.wait_back();
            }
            self.holds = true;
        }
        if self.baton.over.load(Ordering::Acquire) {
            return Err(RecvTimeoutError::Disconnected);
        }
        let flush = std::mem::take(&mut self.flush);
        let baton = &self.baton;
        let waited =
            baton.drive(async { tokio::time::timeout(max, baton.until_ready(queue, flush)).await });
        if waited.is_err() {
            return Err(RecvTimeoutError::Timeout);
        }
        match queue.try_recv() {
            Ok(ticket) => Ok(ticket),
            Err(crossbeam_channel::TryRecvError::Empty) => Err(RecvTimeoutError::Timeout),
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                Err(RecvTimeoutError::Disconnected)
            }
        }
    }

    fn begins(&mut self) {
        self.baton.release();
        self.holds = false;
        self.flush = true;
    }

    /// A request's response is written by the loop: the thread must drive it between requests.
    fn batches(&self) -> bool {
        false
    }
}

impl Drop for InlineWaiter {
    fn drop(&mut self) {
        self.baton.app_gone();
    }
}
