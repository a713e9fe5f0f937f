//! What joins an event loop to the rest of the worker. The loop must never block on the worker, so
//! everything reaches it through one eventfd it watches with `add_reader`: new requests (the run queue,
//! filled by the I/O thread), waits the I/O thread finished for it (room for a response piece, body
//! bytes, a client gone — each resolves an asyncio future), and the connection's timers (`--timeout`,
//! `--slow-request-threshold`). A wake is written only when none is pending, so a burst of requests
//! costs the loop one read.
//!
//! The loop beats (`tick`) at least every 0.1 s; the watchdog (`AsgiRuntime::check`) reads the beat.
//! The beat is a timer of the loop's own (`BEAT` in `_asgi.py`), so how late it fires is the loop's
//! lag: the time a callback that was due waited for the loop to come back.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use tokio::sync::mpsc;

use super::request::AsgiRequest;
use super::{Slots, LOOP_MODULE};
use crate::exchange::{BodyChunk, TaskEvent};
use crate::log::Level;
use crate::runtime::{RunQueue, WorkerContext};
use crate::scoreboard::now_ns;

/// Await stacks by scoreboard entry, as a loop answers `show stacks`.
pub type EntryStacks = Vec<(usize, String)>;

/// The period of the loop's beat timer; must match `BEAT` in `python/ferricorn/_asgi.py`.
const BEAT_NS: u64 = 100_000_000;

/// Something for the loop, other than a new request.
pub enum Wake {
    /// A response piece that waited for room was queued (`ok`), or the client is gone.
    Sent {
        req: Py<AsgiRequest>,
        fut: Py<PyAny>,
        ok: bool,
    },
    /// Body bytes arrived (None: the body stream ended without its end, the client is gone); the
    /// stream goes back to its request.
    Body {
        req: Py<AsgiRequest>,
        fut: Py<PyAny>,
        chunk: Option<BodyChunk>,
        rx: mpsc::Receiver<BodyChunk>,
    },
    /// A websocket message arrived (None: the session is gone); the stream goes back to its request.
    Ws {
        req: Py<AsgiRequest>,
        fut: Py<PyAny>,
        msg: Option<crate::exchange::WsFromClient>,
        rx: mpsc::Receiver<crate::exchange::WsFromClient>,
    },
    /// The client went away: `receive()` answers `http.disconnect`.
    Gone { fut: Py<PyAny> },
    /// A connection's timer for request `id`.
    Event { id: u64, event: TaskEvent },
}

/// The state one loop shares with the I/O thread and the watchdog.
pub struct LoopShared {
    pub ctx: Arc<WorkerContext>,
    /// The loop thread's index in `WorkerContext::tstates`.
    index: usize,
    queue: RunQueue,
    wake_fd: OwnedFd,
    /// A wake is written and not read yet.
    armed: AtomicBool,
    wakes_tx: crossbeam_channel::Sender<Wake>,
    wakes_rx: crossbeam_channel::Receiver<Wake>,
    /// When the loop last ran its callbacks (monotonic ns); 0 while it does not serve (startup, stop).
    tick_ns: AtomicU64,
    /// When the beat timer last fired (0 while the loop does not serve), and the most it was late
    /// since the watchdog last read it ([`LoopShared::take_lag`]).
    beat_ns: AtomicU64,
    late_max_ns: AtomicU64,
    blocked_reported: AtomicBool,
    stuck_reported: AtomicBool,
    /// A `show stacks` waiting for the loop's tasks' await stacks (by scoreboard entry).
    stacks_tx: Mutex<Option<tokio::sync::oneshot::Sender<EntryStacks>>>,
    started: Mutex<Option<std::sync::mpsc::Sender<Result<(), String>>>>,
    stop_asked: AtomicBool,
    stopped: Mutex<bool>,
    stopped_cv: Condvar,
    pub slots: Arc<Slots>,
    state: Arc<Mutex<Option<Py<PyAny>>>>,
    /// The worker's own loop (it runs the lifespan); else an overflow loop for loopback calls.
    main: bool,
    next_id: AtomicU64,
    /// The loop's `create_future` (set by `LoopBridge::bind_loop`): the futures that waits resolve.
    create_future: std::sync::OnceLock<Py<PyAny>>,
}

impl LoopShared {
    pub fn new(
        ctx: Arc<WorkerContext>,
        index: usize,
        queue: RunQueue,
        slots: Arc<Slots>,
        state: Arc<Mutex<Option<Py<PyAny>>>>,
        main: bool,
    ) -> std::io::Result<LoopShared> {
        // SAFETY: eventfd takes an initial count and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (wakes_tx, wakes_rx) = crossbeam_channel::unbounded();
        Ok(LoopShared {
            ctx,
            index,
            queue,
            wake_fd,
            armed: AtomicBool::new(false),
            wakes_tx,
            wakes_rx,
            tick_ns: AtomicU64::new(0),
            beat_ns: AtomicU64::new(0),
            late_max_ns: AtomicU64::new(0),
            blocked_reported: AtomicBool::new(false),
            stuck_reported: AtomicBool::new(false),
            stacks_tx: Mutex::new(None),
            started: Mutex::new(None),
            stop_asked: AtomicBool::new(false),
            stopped: Mutex::new(false),
            stopped_cv: Condvar::new(),
            slots,
            state,
            main,
            next_id: AtomicU64::new(1),
            create_future: std::sync::OnceLock::new(),
        })
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A new future of the loop, for a wait that the I/O thread finishes.
    pub fn new_future<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.create_future.get() {
            Some(create) => create.bind(py).call0(),
            None => Err(pyo3::exceptions::PyRuntimeError::new_err(
                "the loop is not bound to its bridge",
            )),
        }
    }

    pub fn queue_is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Wake the loop, unless a wake is already on its way.
    pub fn signal(&self) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: an 8-byte write from a local to the eventfd this struct owns.
            unsafe {
                libc::write(
                    self.wake_fd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
    }

    /// Hand `wake` to the loop.
    pub fn post(&self, wake: Wake) {
        if self.wakes_tx.send(wake).is_ok() {
            self.signal();
        }
    }

    pub fn set_started(&self, tx: std::sync::mpsc::Sender<Result<(), String>>) {
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    fn report_started(&self, result: Result<(), String>) {
        if result.is_ok() {
            let now = now_ns();
            self.tick_ns.store(now, Ordering::Release);
            self.beat_ns.store(now, Ordering::Release);
        }
        if let Some(tx) = self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = tx.send(result);
        }
    }

    /// How long the loop has been away from its callbacks; None while it does not serve.
    pub fn away(&self, now: u64) -> Option<Duration> {
        let tick = self.tick_ns.load(Ordering::Acquire);
        (tick != 0).then(|| Duration::from_nanos(now.saturating_sub(tick)))
    }

    /// The loop's lag since the last call — how late its beat timer fired at worst, or how long it is
    /// overdue now if more — and how long it is overdue now. Zeros while the loop does not serve.
    pub fn take_lag(&self, now: u64) -> (Duration, Duration) {
        let late = self.late_max_ns.swap(0, Ordering::AcqRel);
        let beat = self.beat_ns.load(Ordering::Acquire);
        let overdue = if beat == 0 {
            0
        } else {
            now.saturating_sub(beat).saturating_sub(BEAT_NS)
        };
        (
            Duration::from_nanos(late.max(overdue)),
            Duration::from_nanos(overdue),
        )
    }

    /// Mark the current block as reported (or, with false, the loop as back); returns what it was.
    pub fn block_reported(&self, reported: bool) -> bool {
        if !reported {
            self.stuck_reported.store(false, Ordering::Release);
        }
        self.blocked_reported.swap(reported, Ordering::AcqRel)
    }

    /// Whether the worker was already told this loop is stuck (marks it so).
    pub fn stuck_reported(&self) -> bool {
        self.stuck_reported.swap(true, Ordering::AcqRel)
    }

    fn tstate(&self) -> *mut libc::c_void {
        self.ctx
            .tstates
            .get(self.index)
            .map(|t| t.load(Ordering::Acquire))
            .unwrap_or(std::ptr::null_mut())
    }

    /// The loop is blocked: one WARNING with the requests in flight and the loop thread's Python stack,
    /// read without the GIL (the blocking code holds it, or sits in C).
    pub fn warn_blocked(&self, away: Duration) {
        let ctx = &self.ctx;
        let loopback = if ctx.board.has_loopback_calls() {
            " The blocked thread has a connection open to this server: a view calls its own server with a synchronous client, and the nested request cannot run on the loop it blocks (it is served on an overflow loop); await an async client (httpx.AsyncClient) instead."
        } else {
            ""
        };
        let msg = format!(
            "Event loop of worker {} blocked for {:.1}s (--asgi-block-threshold {}s): a blocking call in an async view (time.sleep, a synchronous HTTP or database client, CPU-bound work) holds it, and no other request of this worker runs meanwhile. Requests in flight: {}.{loopback} Python stack of the loop thread (most recent call first):",
            std::process::id(),
            away.as_secs_f64(),
            ctx.cfg.asgi_block_threshold,
            ctx.board.requests_text(),
        );
        match crate::python::stacks::thread_stack(self.tstate()) {
            Some(stack) => ctx.log.log_with_text(Level::Warning, &msg, &stack),
            None => {
                ctx.log.warning(&msg);
                crate::python::stacks::dump_thread(ctx.log.raw_fd(), self.tstate());
            }
        }
    }

    /// Ask the loop for its tasks' await stacks (a newer ask replaces an unanswered one).
    pub fn ask_stacks(&self) -> tokio::sync::oneshot::Receiver<EntryStacks> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.stacks_tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        self.signal();
        rx
    }

    /// The loop thread's stack, read without the GIL (for a loop that cannot answer).
    pub fn thread_stack(&self) -> Option<String> {
        crate::python::stacks::thread_stack(self.tstate())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    pub fn ask_stop(&self) {
        self.stop_asked.store(true, Ordering::Release);
        self.signal();
    }

    fn set_stopped(&self) {
        self.tick_ns.store(0, Ordering::Release);
        self.beat_ns.store(0, Ordering::Release);
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stopped_cv.notify_all();
    }

    pub fn wait_stopped(&self, until: std::time::Instant) {
        let mut done = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            done = match self.stopped_cv.wait_timeout(done, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// The body of a loop thread: run `ferricorn._asgi.serve` until the loop stops.
pub fn loop_thread(shared: Arc<LoopShared>) {
    let ctx = shared.ctx.clone();
    Python::attach(|py| {
        if let Some(slot) = ctx.tstates.get(shared.index) {
            // SAFETY: called with the thread attached; the state lives as long as the thread.
            let tstate = unsafe { pyo3::ffi::PyThreadState_Get() };
            slot.store(tstate as *mut libc::c_void, Ordering::Release);
        }
        let run = || -> PyResult<()> {
            let module = py.import(LOOP_MODULE)?;
            let bridge = Py::new(
                py,
                LoopBridge {
                    shared: shared.clone(),
                },
            )?;
            let lifespan = if shared.main {
                ctx.cfg.asgi_lifespan.as_str()
            } else {
                "off"
            };
            module.call_method1(
                "serve",
                (
                    bridge,
                    ctx.app.clone_ref(py),
                    ctx.cfg.asgi_loop.as_str(),
                    lifespan,
                    ctx.cfg.root_path.as_str(),
                ),
            )?;
            Ok(())
        };
        if let Err(e) = run() {
            let tb = crate::python::format_exception(py, &e);
            ctx.log.error(&format!("The event loop failed:\n{tb}"));
            shared.report_started(Err("the event loop failed".to_string()));
        }
    });
    shared.set_stopped();
}

/// The loop's handle on its bridge (`ferricorn._asgi` calls these).
#[pyclass(frozen, module = "ferricorn")]
pub struct LoopBridge {
    shared: Arc<LoopShared>,
}

fn resolve(py: Python<'_>, fut: &Py<PyAny>, value: Bound<'_, PyAny>) -> PyResult<()> {
    let fut = fut.bind(py);
    if !fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
        fut.call_method1(pyo3::intern!(py, "set_result"), (value,))?;
    }
    Ok(())
}

#[pymethods]
impl LoopBridge {
    /// The eventfd the loop watches.
    #[getter]
    fn fd(&self) -> i32 {
        self.shared.wake_fd.as_raw_fd()
    }

    /// The lifespan's `state` of the worker's own loop (None before startup, or without lifespan).
    #[getter]
    fn state(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.clone_ref(py))
    }

    /// The loop is ready to serve (`error`: its startup failed, with this message).
    #[pyo3(signature = (error=None, state=None))]
    fn started(&self, error: Option<String>, state: Option<Py<PyAny>>) {
        if let Some(state) = state {
            *self.shared.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
        }
        self.shared.report_started(match error {
            None => Ok(()),
            Some(msg) => Err(msg),
        });
    }

    /// The loop whose futures `receive()` and `send()` return when they must wait.
    fn bind_loop(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let create = event_loop.getattr(pyo3::intern!(py, "create_future"))?;
        let _ = self.shared.create_future.set(create.unbind());
        Ok(())
    }

    /// The loop's heartbeat.
    fn tick(&self) {
        let now = now_ns();
        let shared = &self.shared;
        shared.tick_ns.store(now, Ordering::Release);
        let last = shared.beat_ns.swap(now, Ordering::AcqRel);
        if last != 0 {
            let late = now.saturating_sub(last).saturating_sub(BEAT_NS);
            shared.late_max_ns.fetch_max(late, Ordering::AcqRel);
        }
    }

    /// Everything that arrived: finished waits are resolved here; returned are new requests
    /// (`AsgiRequest`), timer events (`(id, "timeout" | "slow", seconds)`) and, once, `"stop"`.
    fn drain(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        let shared = &self.shared;
        let mut count = 0u64;
        // SAFETY: an 8-byte read into a local from the eventfd this bridge owns (non-blocking).
        unsafe {
            libc::read(
                shared.wake_fd.as_raw_fd(),
                (&mut count as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        // Cleared before looking, so a wake posted from here on is written again.
        shared.armed.store(false, Ordering::Release);
        shared.tick_ns.store(now_ns(), Ordering::Release);
        let mut out = Vec::new();
        while let Ok(wake) = shared.wakes_rx.try_recv() {
            match wake {
                Wake::Sent { req, fut, ok } => {
                    req.borrow_mut(py).piece_sent(ok);
                    request::sent_outcome(py, &fut, ok)?;
                }
                Wake::Body {
                    req,
                    fut,
                    chunk,
                    rx,
                } => {
                    let msg = req.borrow_mut(py).body_arrived(py, chunk, rx)?;
                    resolve(py, &fut, msg.into_any())?;
                }
                Wake::Ws { req, fut, msg, rx } => {
                    let msg = req.borrow_mut(py).ws_arrived(py, msg, rx)?;
                    resolve(py, &fut, msg.into_any())?;
                }
                Wake::Gone { fut } => {
                    resolve(py, &fut, request::disconnect_message(py)?.into_any())?;
                }
                Wake::Event { id, event } => {
                    let (kind, d) = match event {
                        TaskEvent::TimedOut(d) => ("timeout", d),
                        TaskEvent::Slow(d) => ("slow", d),
                        TaskEvent::ClientGone => (
                            "gone",
                            Duration::from_secs(shared.ctx.cfg.asgi_disconnect_grace_period),
                        ),
                    };
                    out.push(
                        PyTuple::new(
                            py,
                            [
                                id.into_pyobject(py)?.into_any(),
                                kind.into_pyobject(py)?.into_any(),
                                d.as_secs_f64().into_pyobject(py)?.into_any(),
                            ],
                        )?
                        .into_any()
                        .unbind(),
                    );
                }
            }
        }
        if shared.stop_asked.swap(false, Ordering::AcqRel) {
            out.push("stop".into_pyobject(py)?.into_any().unbind());
        }
        if shared
            .stacks_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            out.push("stacks".into_pyobject(py)?.into_any().unbind());
        }
        while let Ok(ticket) = shared.queue.try_recv() {
            match ticket.take() {
                Some(job) => out.push(AsgiRequest::start(py, shared, job)?.into_any()),
                // Its connection moved the request to the overflow lane (a loopback call).
                None => {
                    shared.ctx.empty_tickets.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        Ok(out)
    }

    /// The answer to [`LoopShared::ask_stacks`]: each running request with its task's await stack.
    fn stacks(&self, py: Python<'_>, tasks: Vec<(Py<AsgiRequest>, String)>) {
        let Some(tx) = self
            .shared
            .stacks_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let stacks = tasks
            .into_iter()
            .map(|(req, text)| (req.borrow(py).entry(), text))
            .filter(|(entry, _)| *entry != super::NO_SLOT)
            .collect();
        let _ = tx.send(stacks);
    }

    /// A log record (`level` as the log names them), optionally with a text block after it.
    #[pyo3(signature = (level, msg, text=None))]
    fn log(&self, level: &str, msg: &str, text: Option<&str>) {
        let level = Level::parse(level).unwrap_or(Level::Info);
        match text {
            Some(t) => self.shared.ctx.log.log_with_text(level, msg, t.as_bytes()),
            None => self.shared.ctx.log.log(level, msg),
        }
    }
}

use super::request;
