//! A worker's shared state, fixed after boot and read by its I/O thread and by the app runtime's threads:
//! the configuration, logs, the scoreboard slot, the app object, the hooks, the stop and `--max-requests`
//! flags, the app threads' membership (`pool::Threads`, changing with elastic threads) and their
//! interpreter states (for stack dumps without the GIL).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::config::Config;
use crate::log::{AccessLog, ErrorLog};
use crate::python::hooks::HookRunner;
use crate::scoreboard::WorkerHandle;

/// Everything a worker needs, fixed after boot and shared by the I/O thread and the Python threads.
pub struct WorkerContext {
    pub cfg: Arc<Config>,
    pub log: ErrorLog,
    pub access_log: Option<AccessLog>,
    pub board: WorkerHandle,
    pub app: Py<PyAny>,
    /// Set by the I/O thread when the worker starts a graceful stop: responses then say `Connection: close`.
    pub shutting_down: Arc<AtomicBool>,
    /// Set by the Python thread that served the `--max-requests`-th request: the I/O thread then retires
    /// the worker gracefully.
    pub recycle: AtomicBool,
    /// Requests this worker may serve before it is recycled (`--max-requests` plus jitter); 0 = no limit.
    pub max_requests: u64,
    pub served: std::sync::atomic::AtomicU64,
    pub hooks: Arc<HookRunner>,
    /// The `worker` object passed to hooks (None when the config file defines none).
    pub hook_worker: Option<Py<PyAny>>,
    /// The ordinary app threads as they come and go (elastic threads).
    pub threads: super::pool::Threads,
    /// Each app thread's `PyThreadState`, so a stuck thread's stack can be dumped without the GIL.
    pub tstates: Vec<AtomicPtr<libc::c_void>>,
    /// Tickets in the run queue whose request moved to the overflow lane (see `admission`): the queue's
    /// length less these is what waits for a thread.
    pub empty_tickets: AtomicUsize,
    /// The app runtime the worker class chose: it starts the threads that run the requests.
    pub runtime: Arc<dyn super::AppRuntime>,
    /// The I/O thread's runtime, once it runs: where an app thread that must not block (an event loop)
    /// starts its waits for the connection (room for a response piece, body bytes, a client gone).
    pub io_handle: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Notified after the runtime's own wake whenever requests are queued ([`WorkerContext::wake`]): set
    /// once by a worker whose app thread waits somewhere the runtime does not know of (a sync worker's
    /// thread waits in the I/O loop it drives).
    pub on_wake: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
}

impl WorkerContext {
    /// Requests were just put in a run queue: the runtime wakes its threads ([`super::AppRuntime::wake`]),
    /// then the registered wake hook, if any.
    pub fn wake(&self) {
        self.runtime.wake();
        if let Some(hook) = self.on_wake.get() {
            hook.notify_one();
        }
    }

    /// Call a one-argument worker hook (`worker_int`, `worker_abort`) with the GIL, if defined.
    pub fn worker_hook(&self, name: &str) {
        let Some(w) = &self.hook_worker else { return };
        if !self.hooks.has(name) {
            return;
        }
        Python::attach(|py| {
            if let Ok(args) = PyTuple::new(py, [w.bind(py).clone()]) {
                let _ = self.hooks.call(py, name, args);
            }
        });
    }
}
