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
pub mod pool;
mod scope;

use std::sync::Arc;

use crate::exchange::Ticket;
pub use context::WorkerContext;
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
}
