//! The ASGI runtime (worker class `asgi`, and the uvicorn and gunicorn ASGI worker names mapped to it):
//! each worker runs one asyncio event loop on a Python thread, and every request is a task of it. The
//! worker's I/O thread does all socket I/O, parsing, keep-alive and framing, as for WSGI; this module
//! is the loop's side of the exchange.
//!
//! - [`bridge`]: what joins the loop to the rest of the worker without the loop ever blocking — an
//!   eventfd the loop watches (`add_reader`), through which new requests and finished waits arrive,
//!   and the loop's heartbeat, which the watchdog reads.
//! - [`request`]: one request as the app sees it: its `scope`, `receive` and `send` (ASGI 3.0, HTTP
//!   spec 2.4), turned into the exchange's semantic pieces.
//! - `python/ferricorn/_asgi.py`: the loop itself (its tasks, lifespan, the await stack of a task),
//!   because it is Python's own machinery.
//!
//! Never hang silently: a request past `--timeout` is cancelled and named with its task's await stack;
//! a loop that does not come back for `--asgi-block-threshold` is named with its thread's stack (read
//! without the GIL), and one blocked past `--timeout` retires the worker as a stuck thread would.

pub mod bridge;
pub mod request;
pub mod websocket;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;

use crate::runtime::{AppRuntime, RunQueue, Stuck, WorkerContext};
use crate::scoreboard::{now_ns, MAX_THREADS};
use bridge::LoopShared;

/// The scoreboard entries that name requests in flight. A thread per request uses its own entry; here
/// many tasks share a loop thread, so each request takes a free entry while it runs (beyond
/// `MAX_THREADS` at once, the rest run unnamed).
#[derive(Default)]
pub struct Slots(Mutex<Vec<usize>>);

/// A request that runs without a scoreboard entry (all taken).
pub const NO_SLOT: usize = usize::MAX;

impl Slots {
    fn new() -> Slots {
        Slots(Mutex::new((0..MAX_THREADS).rev().collect()))
    }

    pub fn take(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or(NO_SLOT)
    }

    pub fn give(&self, slot: usize) {
        if slot != NO_SLOT {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(slot);
        }
    }
}

/// The ASGI runtime of one worker: its loops (the worker's own and, for loopback calls, overflow loops).
pub struct AsgiRuntime {
    loops: Mutex<Vec<Arc<LoopShared>>>,
    slots: Arc<Slots>,
    /// The lifespan's `state`, once the main loop's startup filled it: every loop's requests get a copy.
    state: Arc<Mutex<Option<Py<PyAny>>>>,
}

impl Default for AsgiRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl AsgiRuntime {
    pub fn new() -> AsgiRuntime {
        AsgiRuntime {
            loops: Mutex::new(Vec::new()),
            slots: Arc::new(Slots::new()),
            state: Arc::new(Mutex::new(None)),
        }
    }

    fn loops(&self) -> Vec<Arc<LoopShared>> {
        self.loops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl AppRuntime for AsgiRuntime {
    fn name(&self) -> &'static str {
        "asgi"
    }

    /// Start an event loop on a new thread. The worker's own loop (`label` `app`) runs the lifespan's
    /// startup first, and this returns only once it is done: the worker accepts no connection before,
    /// and a failed startup fails the worker's boot. An overflow loop (`loopback`) starts at once.
    fn spawn_thread(
        &self,
        ctx: Arc<WorkerContext>,
        index: usize,
        queue: RunQueue,
        label: &str,
    ) -> std::io::Result<()> {
        let main = label == "app";
        let shared = Arc::new(LoopShared::new(
            ctx.clone(),
            index,
            queue,
            self.slots.clone(),
            self.state.clone(),
            main,
        )?);
        self.loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(shared.clone());
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        shared.set_started(started_tx);
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("ferricorn-{label}-{index}"))
            .spawn(move || bridge::loop_thread(thread_shared))?;
        if !main {
            return Ok(());
        }
        match started_rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(std::io::Error::other(why)),
            Err(_) => Err(std::io::Error::other("the event loop thread ended")),
        }
    }

    fn wake(&self) {
        for l in self.loops.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if !l.queue_is_empty() {
                l.signal();
            }
        }
    }

    fn watches_disconnect(&self) -> bool {
        true
    }

    fn serves_websockets(&self) -> bool {
        true
    }

    fn runs_tasks(&self) -> bool {
        true
    }

    fn loopback_words(&self) -> (&'static str, &'static str) {
        (
            "with a synchronous client, which blocks the event loop that must serve the call",
            "Await an async client (httpx.AsyncClient) instead, run more workers, or call the view's function instead of its URL.",
        )
    }

    /// Each serving loop is asked for its tasks' await stacks; a loop away for more than half a second
    /// cannot answer, and its thread's stack (read without the GIL) is given instead.
    fn task_stacks(&self, _ctx: &WorkerContext) -> Option<crate::runtime::TaskStacks> {
        let now = now_ns();
        let mut asked = Vec::new();
        let mut blocked = Vec::new();
        for l in self.loops() {
            match l.away(now) {
                None => {}
                Some(away) if away > Duration::from_millis(500) => {
                    if let Some(stack) = l.thread_stack() {
                        blocked.push((
                            crate::runtime::LOOP_STACK,
                            format!(
                                "(the event loop has been blocked for {:.1}s; its thread's stack:)\n{stack}",
                                away.as_secs_f64()
                            ),
                        ));
                    }
                }
                Some(_) => asked.push(l.ask_stacks()),
            }
        }
        Some(Box::pin(async move {
            let mut out = blocked;
            for rx in asked {
                if let Ok(Ok(stacks)) = tokio::time::timeout(Duration::from_millis(500), rx).await {
                    out.extend(stacks);
                }
            }
            out
        }))
    }

    /// The watchdog: a loop that has not come back for `--asgi-block-threshold` is logged once per
    /// episode with its thread's stack; past `--timeout`, the worker retires. Each round also
    /// publishes the loops' worst lag to the scoreboard (the master's metrics and health read it).
    fn check(&self, ctx: &WorkerContext) -> Option<Stuck> {
        let threshold = Duration::from_secs(ctx.cfg.asgi_block_threshold);
        let timeout = Duration::from_secs(ctx.cfg.timeout);
        let now = now_ns();
        let loops = self.loops();
        let (lag, overdue) = loops.iter().map(|l| l.take_lag(now)).fold(
            Default::default(),
            |(a, b): (Duration, Duration), (c, d)| (a.max(c), b.max(d)),
        );
        ctx.board.set_loop_lag(lag, overdue);
        for l in loops {
            let Some(away) = l.away(now) else { continue };
            if away < threshold.max(Duration::from_millis(100)) {
                l.block_reported(false);
                continue;
            }
            if !threshold.is_zero() && !l.block_reported(true) {
                l.warn_blocked(away);
            }
            if !timeout.is_zero() && away >= timeout && !l.stuck_reported() {
                return Some(Stuck {
                    thread: l.index(),
                    what: format!(
                        "The event loop of worker {} has not come back for {:.1}s (a blocking call in an async view)",
                        std::process::id(),
                        away.as_secs_f64()
                    ),
                });
            }
        }
        None
    }

    /// Every loop stops: requests still running are cancelled, then the main loop runs the lifespan's
    /// shutdown. Waits at most `deadline`.
    fn stop(&self, _ctx: &WorkerContext, deadline: Duration) {
        let until = std::time::Instant::now() + deadline;
        let loops = self.loops();
        for l in &loops {
            l.ask_stop();
        }
        for l in &loops {
            l.wait_stopped(until);
        }
    }
}

/// The Python module the loops run (`python/ferricorn/_asgi.py`).
pub(crate) const LOOP_MODULE: &str = "ferricorn._asgi";
