//! The seam between a worker and the app runtime that runs its requests. The worker's I/O side places each
//! request as a [`Job`](crate::exchange::Job) in a run queue; a runtime's threads take the jobs and answer
//! them through the job's reply channel in semantic pieces. WSGI (the `wsgi` module: threads that take the GIL
//! and call the app) is one runtime; an ASGI runtime (an asyncio loop on a Python thread) is another kind.
//! The worker picks the runtime from the worker class and knows nothing else of it.
//!
//! What every runtime must do around a request — start the `--timeout` clock, fill the scoreboard slot
//! that names the request (forensics, loopback calls), count it for `--max-requests`, write its
//! access-log line, remember it for `show stacks` — is done once here ([`RequestScope`]), not in a
//! runtime. [`pool`] is the thread loop for runtimes that run one request per thread at a time.

pub mod context;
pub mod hooks;
pub mod pool;
mod scope;

use std::sync::Arc;

use crate::exchange::Ticket;
pub use context::WorkerContext;

/// Task stacks by scoreboard entry, once the loops answer (see [`AppRuntime::task_stacks`]).
pub type TaskStacks =
    std::pin::Pin<Box<dyn std::future::Future<Output = Vec<(usize, String)>> + 'static>>;

/// The entry under which [`AppRuntime::task_stacks`] gives a blocked loop thread's stack.
pub const LOOP_STACK: usize = usize::MAX;
pub use scope::{Outcome, RequestScope};

/// The run queue's receiving end, shared by a runtime's threads.
pub type RunQueue = crossbeam_channel::Receiver<Arc<Ticket>>;

/// An app runtime: what runs the requests of a worker.
pub trait AppRuntime: Send + Sync {
    /// The runtime's name, for the log (`wsgi`).
    fn name(&self) -> &'static str;

    /// Start one app thread that takes jobs from `queue` until it closes. `index` is the thread's slot in
    /// the scoreboard and in `ctx.tstates`; `label` names the OS thread (`app`, or `loopback` for the
    /// overflow lane).
    fn spawn_thread(
        &self,
        ctx: Arc<WorkerContext>,
        index: usize,
        queue: RunQueue,
        label: &str,
    ) -> std::io::Result<()>;

    /// Start app thread `index` like [`AppRuntime::spawn_thread`], waiting for each request with `waiter`
    /// instead of on the queue alone (a sync worker's thread that drives the worker's I/O itself between
    /// requests). A runtime whose threads cannot says `Unsupported`.
    fn spawn_waiting_thread(
        &self,
        _ctx: Arc<WorkerContext>,
        _index: usize,
        _queue: RunQueue,
        _label: &str,
        _waiter: Box<dyn pool::Waiter>,
    ) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    /// Requests were just put in a run queue. A runtime whose threads wait somewhere else than on the
    /// queue (an event loop waits in its selector) wakes them here; one that blocks on the queue has
    /// nothing to do.
    fn wake(&self) {}

    /// The connection should tell the app as soon as its client goes away while a request runs (ASGI's
    /// `http.disconnect`): it then watches the socket for the end of the stream and drops the request's
    /// reply channel when it comes.
    fn watches_disconnect(&self) -> bool {
        false
    }

    /// Whether requests are tasks of an event loop (a scoreboard entry is then a task, not a thread).
    fn runs_tasks(&self) -> bool {
        false
    }

    /// For `show stacks`, in a runtime whose requests are tasks rather than threads: each task's stack
    /// by scoreboard entry, resolved later (the loop must take it). An entry of [`LOOP_STACK`] carries
    /// the stack of a loop's thread that is blocked and cannot answer. `None`: each request runs on
    /// the thread of its entry, whose stack is read directly.
    fn task_stacks(&self, _ctx: &WorkerContext) -> Option<TaskStacks> {
        None
    }

    /// Called on the I/O thread at each heartbeat tick: the runtime's own health (an event loop that
    /// does not come back). `Some` asks the worker to retire, as after a request past `--timeout`.
    fn check(&self, _ctx: &WorkerContext) -> Option<Stuck> {
        None
    }

    /// The runtime takes websocket sessions (`Job::websocket`): the worker then answers websocket
    /// handshakes instead of serving them as plain HTTP requests.
    fn serves_websockets(&self) -> bool {
        false
    }

    /// How the loopback warning (see `worker::admission`) says what held the request that made the
    /// call, and what to change.
    fn loopback_words(&self) -> (&'static str, &'static str) {
        (
            "while every worker thread was busy",
            "Run more workers or threads (--workers, --threads), or call the view's function instead of its URL.",
        )
    }

    /// The worker is about to exit (its connections are done): last words to the app (ASGI lifespan's
    /// shutdown), within `deadline`.
    fn stop(&self, _ctx: &WorkerContext, _deadline: std::time::Duration) {}
}

/// A runtime's thread that is stuck: the worker logs it with that thread's stack and retires.
pub struct Stuck {
    /// The thread's index in `WorkerContext::tstates`.
    pub thread: usize,
    /// What is stuck, for the CRITICAL line.
    pub what: String,
}
