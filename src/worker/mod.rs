//! A worker process, after fork: load the app, then run the I/O loop (tokio, on the main thread) beside the
//! Python threads that run the app — one for `sync`, `--threads` for `gthread`.
//!
//! Capacity is counted in requests: a worker accepts a new connection only while fewer requests are
//! running or about to run than it has Python threads, so no request waits inside a busy worker while
//! another worker is idle. Keep-alive connections it already holds may still queue a request; that is the
//! price of keep-alive and stays bounded by the connections the worker holds.

pub mod conn;
pub mod exchange;
mod loopback;
mod pool;
pub mod proxy;
mod stop;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use pyo3::prelude::*;
use tokio::sync::Notify;

use crate::config::{Config, WorkerClass};
use crate::http::ParserOptions;
use crate::log::{AccessLog, ErrorLog};
use crate::python::hooks::HookRunner;
use crate::scoreboard::{WorkerHandle, WorkerState};
use crate::signals::{self, SignalPipe};
use crate::sock::{ListenAddr, Listener};
use exchange::{Job, Peer, ServerAddr};
use pyo3::types::PyTuple;

/// Exit code of a worker whose app could not be loaded; the master stops with "Worker failed to boot."
pub const WORKER_BOOT_ERROR: i32 = 3;

/// Extra Python threads a worker may start, on demand, to serve loopback calls while its ordinary threads
/// are all busy.
const MAX_OVERFLOW_THREADS: usize = 4;
/// A request must have run this long before the worker looks for loopback calls: a fast load never pays
/// for the scan.
const LOOPBACK_SUSPECT_AGE: Duration = Duration::from_millis(100);
/// At most one loopback warning per worker in this period (the others are counted).
const LOOPBACK_WARNING_PERIOD: Duration = Duration::from_secs(10);

/// How an accepted connection was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Within capacity: the connection holds a unit of it from accept.
    Claimed,
    /// Accepted while the worker was full because a loopback call was waiting somewhere; this is not it,
    /// so its first request waits for ordinary capacity.
    Held,
    /// The loopback call itself: served on the overflow lane, outside ordinary capacity.
    Overflow,
    /// Accepted beyond capacity for fairness (see `FAST_REQUEST`): its requests queue like a kept-alive
    /// connection's.
    Queued,
}

/// A worker whose requests finish faster than this on average, and none of whose running requests is
/// older, will run a new connection soon even when all its threads are busy. Such a worker keeps accepting
/// while connections wait in the backlog: otherwise its own kept-alive connections would win every freed
/// thread and the backlog would never be served.
const FAST_REQUEST: Duration = Duration::from_millis(20);

/// The overflow lane: its own queue and lazily started threads, so a loopback call never waits behind
/// the busy ordinary threads.
struct OverflowLane {
    tx: crossbeam_channel::Sender<Job>,
    rx: crossbeam_channel::Receiver<Job>,
    spawned: Cell<usize>,
    in_flight: Cell<usize>,
    first_index: usize,
}

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
    /// Each app thread's `PyThreadState`, so a stuck thread's stack can be dumped without the GIL.
    pub tstates: Vec<AtomicPtr<libc::c_void>>,
}

impl WorkerContext {
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

/// State of the I/O thread (single-threaded runtime, so plain cells).
pub struct IoState {
    in_use: Cell<usize>,
    limit: usize,
    connections: Cell<usize>,
    /// Requests have run since the heap was last given back to the system (see `supervise`).
    trim_due: Cell<bool>,
    max_connections: usize,
    capacity_changed: Notify,
    pub shutdown_signal: Notify,
    pub shutting_down: Cell<bool>,
    pub queue: crossbeam_channel::Sender<Job>,
    pub parser: ParserOptions,
    keepalive: Duration,
    pub header_timeout: Duration,
    overflow: OverflowLane,
    pub forwarded: exchange::ForwardedTrust,
    /// `--proxy-protocol` and `--proxy-allow-from`; None when off.
    pub proxy: Option<proxy::ProxySettings>,
    /// Some worker has a loopback call open: a full worker still accepts, to find and serve it.
    loopback_mode: Cell<bool>,
    listen_ports: Vec<loopback::ListenPort>,
    listen_fds: Vec<std::os::fd::RawFd>,
    last_loopback_warning: Cell<Option<tokio::time::Instant>>,
    /// Accepting beyond capacity for fairness (see `FAST_REQUEST`), refreshed by the watch task.
    fair_accept: Cell<bool>,
    /// Moving average of request durations (dispatch to last byte), ns; 0 = none yet.
    avg_request_ns: Cell<u64>,
    loopback_warnings_suppressed: Cell<u64>,
    /// `--timeout` for a request in Python; None when off.
    pub request_timeout: Option<Duration>,
    /// `--slow-request-threshold`; None when off.
    pub slow_threshold: Option<Duration>,
    /// When a graceful stop ends for the requests still running (see `stop`).
    stop_deadline: Cell<Option<tokio::time::Instant>>,
    /// Threads stuck in a request that passed `--timeout`: (thread, that request's start), see `stop`.
    lost_threads: RefCell<Vec<(usize, u64)>>,
    board: WorkerHandle,
    ctx: Arc<WorkerContext>,
}

impl IoState {
    fn can_accept(&self) -> bool {
        self.connections.get() < self.max_connections
            && (self.has_free_thread() || self.loopback_mode.get() || self.fair_accept.get())
    }

    /// A request of this worker took `d` from dispatch to its last byte: update the moving average.
    pub fn record_duration(&self, d: Duration) {
        self.trim_due.set(true);
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let avg = self.avg_request_ns.get();
        self.avg_request_ns.set(if avg == 0 {
            ns.max(1)
        } else {
            (avg * 7 + ns) / 8
        });
    }

    /// See `FAST_REQUEST`.
    fn should_accept_for_fairness(&self) -> bool {
        let fast = FAST_REQUEST.as_nanos() as u64;
        let avg = self.avg_request_ns.get();
        !self.has_free_thread()
            && avg > 0
            && avg < fast
            && self.board.oldest_request().is_none_or(|(_, r)| {
                crate::scoreboard::now_ns().saturating_sub(r.started_ns) < fast
            })
            && self
                .listen_fds
                .iter()
                .any(|fd| crate::sock::accept_queue_len(*fd) > 0)
    }

    pub fn board_handle(&self) -> WorkerHandle {
        self.board
    }

    pub fn has_free_thread(&self) -> bool {
        self.in_use.get() < self.limit
    }

    /// Decide how a connection just accepted is admitted (see `Admission`).
    fn admit(&self, peer: &Peer) -> Admission {
        if self.has_free_thread() {
            self.acquire();
            return Admission::Claimed;
        }
        // Held is for connections taken only to look for a loopback call. A connection that lost the last
        // free thread to a kept-alive request in the same instant (or was taken for fairness) simply
        // queues, as a kept-alive request does.
        let admission = if self.is_loopback_call(peer) {
            Admission::Overflow
        } else if self.loopback_mode.get() && !self.fair_accept.get() {
            self.board.add_held();
            Admission::Held
        } else {
            Admission::Queued
        };
        self.ctx.log.debug(&format!(
            "Accepted {}:{} while full: {admission:?}",
            peer.ip, peer.port
        ));
        admission
    }

    /// Whether `peer` is the client end of a loopback call some worker has published.
    pub fn is_loopback_call(&self, peer: &Peer) -> bool {
        let local = peer
            .ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || self.listen_ports.iter().any(|l| l.ip == ip));
        local && self.board.board().loopback_owner(peer.port).is_some()
    }

    /// A held connection's first request: wait for a free thread — unless the connection turns out to be
    /// a loopback call (its owner may publish it only after we accepted it), which goes to the overflow
    /// lane instead. A stopping worker still serves it: its request was already read.
    pub async fn wait_for_admission(&self, peer: &Peer) -> Admission {
        loop {
            if self.has_free_thread() {
                return Admission::Claimed;
            }
            if self.is_loopback_call(peer) {
                return Admission::Overflow;
            }
            tokio::select! {
                _ = self.capacity_changed.notified() => {}
                _ = self.shutdown_signal.notified() => {}
                _ = tokio::time::sleep(loopback::SCAN_INTERVAL) => {}
            }
        }
    }

    /// Queue a loopback call on the overflow lane, starting one more overflow thread if all are busy.
    pub fn dispatch_overflow(&self, job: Job) -> bool {
        let lane = &self.overflow;
        if lane.in_flight.get() >= lane.spawned.get() && lane.spawned.get() < MAX_OVERFLOW_THREADS {
            let index = lane.first_index + lane.spawned.get();
            let ctx = self.ctx.clone();
            let rx = lane.rx.clone();
            let started = std::thread::Builder::new()
                .name(format!("ferricorn-loopback-{index}"))
                .spawn(move || pool::python_thread(ctx, index, rx));
            match started {
                Ok(_) => lane.spawned.set(lane.spawned.get() + 1),
                Err(e) => self
                    .ctx
                    .log
                    .error(&format!("Cannot start a thread for a loopback call: {e}")),
            }
        }
        lane.in_flight.set(lane.in_flight.get() + 1);
        lane.tx.send(job).is_ok()
    }

    pub fn overflow_done(&self) {
        let lane = &self.overflow;
        lane.in_flight.set(lane.in_flight.get().saturating_sub(1));
    }

    /// One WARNING per loopback call (at most one per period; the rest are counted in the next one),
    /// naming the nested request, the request that made it, and what to change.
    pub fn warn_loopback(&self, method: &str, target: &str, peer: &Peer) {
        let now = tokio::time::Instant::now();
        if self
            .last_loopback_warning
            .get()
            .is_some_and(|t| now.duration_since(t) < LOOPBACK_WARNING_PERIOD)
        {
            self.loopback_warnings_suppressed
                .set(self.loopback_warnings_suppressed.get() + 1);
            return;
        }
        self.last_loopback_warning.set(Some(now));
        let outer = self
            .board
            .board()
            .loopback_owner(peer.port)
            .and_then(|w| {
                let pid = w.pid();
                w.oldest_request().map(|(_, r)| {
                    format!(
                        "{} {} (worker {pid}, running for {:.1}s)",
                        r.method,
                        r.path,
                        r.age_secs()
                    )
                })
            })
            .unwrap_or_else(|| "a request of this server".to_string());
        let suppressed = self.loopback_warnings_suppressed.replace(0);
        let more = if suppressed > 0 {
            format!(" ({suppressed} more since the last warning)")
        } else {
            String::new()
        };
        self.ctx.log.warning(&format!(
            "Loopback call: {method} {target} from {}:{} was sent to this server by its own request {outer} while every worker thread was busy; it is served on extra capacity so it cannot deadlock{more}. Run more workers or threads (--workers, --threads), or call the view's function instead of its URL.",
            peer.ip, peer.port
        ));
    }

    pub fn acquire(&self) {
        self.in_use.set(self.in_use.get() + 1);
        // A stopping worker stays Stopping: the master starts its replacement when it sees that state,
        // and a request on a kept-alive connection on the way out must not hide it.
        if !self.shutting_down.get() {
            self.board.set_state(WorkerState::Busy);
        }
        self.capacity_changed.notify_waiters();
    }

    pub fn release(&self) {
        let n = self.in_use.get().saturating_sub(1);
        self.in_use.set(n);
        if n == 0 && !self.shutting_down.get() {
            self.board.set_state(WorkerState::Idle);
        }
        self.capacity_changed.notify_waiters();
    }

    pub fn connection_closed(&self) {
        self.connections
            .set(self.connections.get().saturating_sub(1));
        self.capacity_changed.notify_waiters();
    }

    /// Stop taking connections and requests; exit once the open ones are done (or the deadline passes).
    pub fn begin_stop(&self) {
        if self.shutting_down.get() {
            return;
        }
        self.shutting_down.set(true);
        self.ctx.shutting_down.store(true, Ordering::SeqCst);
        self.board.set_state(WorkerState::Stopping);
        self.stop_deadline.set(Some(self.stop_deadline_from_now()));
        self.shutdown_signal.notify_waiters();
    }

    /// A request ran past `--timeout` in Python. Log gunicorn's line, then the request and the stack of the
    /// thread running it (read without the GIL, so it shows even if the code swallows exceptions or sits in
    /// C), and retire the worker: its other requests finish, the stuck thread dies with the process.
    pub fn request_timed_out(&self, thread: usize, elapsed_ns: u64) {
        let log = &self.ctx.log;
        let pid = std::process::id();
        log.critical(&format!("WORKER TIMEOUT (pid:{pid})"));
        let secs = elapsed_ns as f64 / 1e9;
        let limit = self.ctx.cfg.timeout;
        match self
            .board
            .requests_in_flight()
            .into_iter()
            .find(|(t, _)| *t == thread)
        {
            Some((_, r)) => {
                log.critical(&format!(
                    "Request exceeded --timeout {limit}s: {} (running for {secs:.1}s, worker {pid}, thread {thread})",
                    r.summary(),
                ));
                self.note_lost_thread(thread, r.started_ns);
            }
            None => log.critical(&format!(
                "A request exceeded --timeout {limit}s (running for {secs:.1}s, worker {pid}, thread {thread})"
            )),
        }
        self.log_with_stack(
            crate::log::Level::Critical,
            "Python stack of the thread running it (most recent call first):",
            thread,
        );
        self.ctx.worker_hook("worker_abort");
        self.begin_stop();
    }

    /// The access line of an answer the connection sent itself: 504 for `--timeout`, 503 when a stopping
    /// worker cut the request off (the app's thread may never return to write one, and what it returns
    /// later was not sent).
    pub fn log_own_answer(
        &self,
        head: &crate::http::RequestHead,
        peer: &Peer,
        status: u16,
        body_len: usize,
        elapsed: Duration,
    ) {
        let Some(access) = &self.ctx.access_log else {
            return;
        };
        let headers = [
            ("Content-Type".to_string(), "text/plain".to_string()),
            ("Content-Length".to_string(), body_len.to_string()),
            ("Connection".to_string(), "close".to_string()),
        ];
        let now = std::time::SystemTime::now();
        access.log(&crate::log::AccessRecord::of_request(
            head,
            &peer.ip,
            status,
            Some(body_len as u64),
            &headers,
            now.checked_sub(elapsed).unwrap_or(now),
            elapsed,
        ));
    }

    /// A request is still running at `--slow-request-threshold`: one WARNING with the request and the
    /// current Python stack of its thread; the request goes on.
    pub fn request_slow(&self, thread: usize, elapsed: Duration) {
        let pid = std::process::id();
        let what = self
            .board
            .requests_in_flight()
            .into_iter()
            .find(|(t, _)| *t == thread)
            .map(|(_, r)| r.summary())
            .unwrap_or_else(|| "a request".to_string());
        self.log_with_stack(
            crate::log::Level::Warning,
            &format!(
                "Slow request: {what} still running after {:.1}s (--slow-request-threshold {}s; worker {pid}, thread {thread}). Its Python stack now (most recent call first):",
                elapsed.as_secs_f64(),
                self.ctx.cfg.slow_request_threshold,
            ),
            thread,
        );
    }

    /// A record and the Python stack of app thread `thread` after it, written in one piece.
    pub fn log_with_stack(&self, level: crate::log::Level, msg: &str, thread: usize) {
        let log = &self.ctx.log;
        match crate::python::stacks::thread_stack(self.tstate(thread)) {
            Some(stack) => log.log_with_text(level, msg, &stack),
            None => {
                log.log(level, msg);
                crate::python::stacks::dump_thread(log.raw_fd(), self.tstate(thread));
            }
        }
    }

    fn tstate(&self, thread: usize) -> *mut libc::c_void {
        self.ctx
            .tstates
            .get(thread)
            .map(|t| t.load(Ordering::Acquire))
            .unwrap_or(std::ptr::null_mut())
    }

    /// While stopping, how long an idle kept-alive connection is still read for a request on its way.
    pub fn stop_idle_grace(&self) -> Duration {
        self.keepalive
            .clamp(Duration::from_millis(500), Duration::from_secs(2))
    }

    /// The `--max-requests`-th request was taken: retire the worker once its requests are done.
    pub fn check_recycle(&self) {
        if self.ctx.recycle.load(Ordering::Acquire) && !self.shutting_down.get() {
            self.ctx
                .log
                .info("Autorestarting worker after current request.");
            self.begin_stop();
        }
    }

    /// How long a connection may sit without sending the first byte of its next request.
    pub fn idle_timeout(&self, first: bool) -> Duration {
        if first || self.keepalive.is_zero() {
            self.header_timeout
        } else {
            self.keepalive
        }
    }
}

/// What the master hands a worker it just forked.
pub struct Boot<'a> {
    pub cfg: Arc<Config>,
    pub log: ErrorLog,
    pub listeners: &'a [Listener],
    pub board: WorkerHandle,
    pub preloaded: Option<Py<PyAny>>,
    pub hooks: Arc<HookRunner>,
    /// Spawn order (gunicorn's `worker.age`).
    pub age: u64,
    pub num_workers: usize,
}

/// Bodies of 100 KiB and more are allocated and freed for every request (the request body, the `bytes`
/// objects an app builds). With glibc's defaults a freed block at the top of the heap over 128 KiB is
/// handed back to the kernel at once and faulted in again by the next request, and blocks over 128 KiB are
/// mmap'd and unmapped each time. Higher thresholds keep that memory for reuse while requests run; the
/// worker's idle tick still gives it back (`malloc_trim`) once no connection is left. 100 KiB echo: 68 → 56
/// µs of CPU per request (bench/README.md).
fn keep_heap_under_load() {
    const MMAP_THRESHOLD: libc::c_int = 4 * 1024 * 1024;
    const TRIM_THRESHOLD: libc::c_int = 8 * 1024 * 1024;
    // SAFETY: mallopt only changes allocator parameters; the worker has no other thread yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// The worker's main function, called in the child right after fork. Never returns.
pub fn run(py: Python<'_>, boot: Boot<'_>) -> ! {
    let Boot {
        cfg,
        log,
        listeners,
        board,
        preloaded,
        hooks,
        age,
        num_workers,
    } = boot;
    let pid = std::process::id();
    keep_heap_under_load();
    // The master's routing must not leak into the worker: take the signals over with a pipe of our own.
    let sigpipe = match SignalPipe::install(&[
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGABRT,
        Signal::SIGWINCH,
    ]) {
        Ok(p) => p,
        Err(e) => {
            log.error(&format!("Worker could not set up signals: {e}"));
            exit(1)
        }
    };
    signals::reset_default(&[
        Signal::SIGHUP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGUSR2,
    ]);
    // The master blocked signals across the fork; from here they reach the worker's own handlers.
    signals::unblock_all();
    board.set_pid(pid as i32);
    log.info(&format!("Booting worker with pid: {pid}"));
    let ppid = std::os::unix::process::parent_id();
    // The `worker` object hooks receive; built only when the config file defines hooks.
    let hook_worker = if hooks.any() {
        match hooks.worker(py, pid, ppid, age) {
            Ok(w) => Some(w.unbind()),
            Err(e) => {
                log.error(&format!(
                    "Cannot prepare hooks:\n{}",
                    crate::python::format_exception(py, &e)
                ));
                None
            }
        }
    } else {
        None
    };
    if let Some(w) = &hook_worker {
        let args = hooks
            .server(py, ppid, num_workers)
            .and_then(|s| PyTuple::new(py, [s, w.bind(py).clone()]));
        if let Ok(args) = args {
            let _ = hooks.call(py, "post_fork", args);
        }
    }

    let _ = signals::abort_dumps_stack_while_booting(log.raw_fd());
    let app = match preloaded {
        Some(app) => app,
        None => match load_app(py, &cfg, &log) {
            Some(app) => app,
            None => exit(WORKER_BOOT_ERROR),
        },
    };
    if let Some(w) = &hook_worker {
        if let Ok(args) = PyTuple::new(py, [w.bind(py).clone()]) {
            let _ = hooks.call(py, "post_worker_init", args);
        }
    }
    if let Err(e) = sigpipe.route(&[Signal::SIGABRT]) {
        log.error(&format!("Worker could not set up signals: {e}"));
        exit(1);
    }
    let access_log = match &cfg.accesslog {
        Some(target) => match AccessLog::open(target, &cfg.access_log_format) {
            Ok(l) => Some(l),
            Err(e) => {
                log.error(&format!("Cannot open access log {target}: {e}"));
                exit(WORKER_BOOT_ERROR)
            }
        },
        None => None,
    };
    let threads = match cfg.worker_class {
        WorkerClass::Sync => 1,
        WorkerClass::Gthread => cfg.threads.max(1),
    };
    let ctx = Arc::new(WorkerContext {
        cfg: cfg.clone(),
        log: log.clone(),
        access_log,
        board,
        app,
        shutting_down: Arc::new(AtomicBool::new(false)),
        recycle: AtomicBool::new(false),
        max_requests: max_requests_with_jitter(&cfg),
        served: std::sync::atomic::AtomicU64::new(0),
        hooks: hooks.clone(),
        hook_worker,
        tstates: (0..threads + MAX_OVERFLOW_THREADS)
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect(),
    });
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
    let (overflow_tx, overflow_rx) = crossbeam_channel::unbounded::<Job>();
    let code = py.detach(|| {
        for i in 0..threads {
            let ctx = ctx.clone();
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ferricorn-app-{i}"))
                .spawn(move || pool::python_thread(ctx, i, rx));
            if let Err(e) = spawned {
                log.error(&format!("Cannot start app thread: {e}"));
                return 1;
            }
        }
        drop(rx);
        let overflow = OverflowLane {
            tx: overflow_tx,
            rx: overflow_rx,
            spawned: Cell::new(0),
            in_flight: Cell::new(0),
            first_index: threads,
        };
        io_main(&ctx, listeners, tx, overflow, threads, sigpipe)
    });
    log.info(&format!("Worker exiting (pid: {pid})"));
    if let Some(w) = &ctx.hook_worker {
        Python::attach(|py| {
            let args = hooks
                .server(py, ppid, num_workers)
                .and_then(|s| PyTuple::new(py, [s, w.bind(py).clone()]));
            if let Ok(args) = args {
                let _ = hooks.call(py, "worker_exit", args);
            }
        });
    }
    exit(code)
}

/// `--max-requests` plus a random part of `--max-requests-jitter`, so workers do not all restart at once.
fn max_requests_with_jitter(cfg: &Config) -> u64 {
    if cfg.max_requests == 0 {
        return 0;
    }
    let jitter = if cfg.max_requests_jitter > 0 {
        // Each worker is a fresh process: its pid and the clock are spread enough for this purpose.
        let seed = crate::scoreboard::now_ns() ^ (u64::from(std::process::id()) << 32);
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (cfg.max_requests_jitter + 1)
    } else {
        0
    };
    cfg.max_requests + jitter
}

fn load_app(py: Python<'_>, cfg: &Config, log: &ErrorLog) -> Option<Py<PyAny>> {
    let Some(uri) = cfg.app_uri.as_deref() else {
        log.error("No application module specified.");
        return None;
    };
    let started = std::time::Instant::now();
    match crate::python::app::load(py, uri) {
        Ok(app) => {
            log.info(&format!(
                "Worker (pid:{}) loaded the app {uri} in {:.3}s",
                std::process::id(),
                started.elapsed().as_secs_f64()
            ));
            Some(app)
        }
        Err(crate::python::app::AppLoadError::Import(tb)) => {
            log.error(&format!("Exception in worker process\n{tb}"));
            None
        }
        Err(crate::python::app::AppLoadError::Invalid(msg)) => {
            log.error(&msg);
            None
        }
    }
}

/// Leave the process without running Python's finalisation: app threads may be mid-request, and
/// finalising an interpreter under them can hang. Logs are written unbuffered, so nothing is lost.
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process immediately; nothing runs after it.
    unsafe { libc::_exit(code) }
}

fn io_main(
    ctx: &Arc<WorkerContext>,
    listeners: &[Listener],
    queue: crossbeam_channel::Sender<Job>,
    overflow: OverflowLane,
    threads: usize,
    sigpipe: SignalPipe,
) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            ctx.log.error(&format!("Cannot start the I/O loop: {e}"));
            return 1;
        }
    };
    let cfg = &ctx.cfg;
    let header_timeout = if cfg.timeout > 0 {
        Duration::from_secs(cfg.timeout)
    } else {
        Duration::from_secs(30)
    };
    let io = Rc::new(IoState {
        in_use: Cell::new(0),
        limit: threads,
        connections: Cell::new(0),
        trim_due: Cell::new(false),
        max_connections: cfg.worker_connections.max(1),
        capacity_changed: Notify::new(),
        shutdown_signal: Notify::new(),
        shutting_down: Cell::new(false),
        queue,
        parser: parser_options(cfg),
        keepalive: Duration::from_secs(cfg.keepalive),
        header_timeout,
        overflow,
        forwarded: exchange::ForwardedTrust::new(cfg),
        proxy: proxy::ProxySettings::new(cfg),
        loopback_mode: Cell::new(false),
        listen_ports: listeners
            .iter()
            .filter_map(|l| match l.addr {
                ListenAddr::Tcp(a) => Some(loopback::ListenPort {
                    ip: a.ip(),
                    port: a.port(),
                }),
                ListenAddr::Unix(_) => None,
            })
            .collect(),
        listen_fds: listeners
            .iter()
            .filter(|l| matches!(l.addr, ListenAddr::Tcp(_)))
            .map(|l| l.fd())
            .collect(),
        last_loopback_warning: Cell::new(None),
        fair_accept: Cell::new(false),
        avg_request_ns: Cell::new(0),
        loopback_warnings_suppressed: Cell::new(0),
        request_timeout: (cfg.timeout > 0).then(|| Duration::from_secs(cfg.timeout)),
        slow_threshold: (cfg.slow_request_threshold > 0)
            .then(|| Duration::from_secs(cfg.slow_request_threshold)),
        stop_deadline: Cell::new(None),
        lost_threads: RefCell::new(Vec::new()),
        board: ctx.board,
        ctx: ctx.clone(),
    });
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        ctx.board.set_state(WorkerState::Idle);
        for l in listeners {
            let Ok(sock) = l.socket.try_clone() else {
                ctx.log.error("Cannot use a listening socket");
                return 1;
            };
            let server = Arc::new(server_addr(&l.addr));
            match &l.addr {
                ListenAddr::Tcp(_) => {
                    // Small responses go out in one segment; waiting for an ACK (Nagle) would add latency
                    // to each. Set once here: Linux gives accepted sockets the listener's TCP_NODELAY,
                    // which saves a system call per connection.
                    if let Err(e) = sock.set_tcp_nodelay(true) {
                        ctx.log
                            .warning(&format!("Cannot set TCP_NODELAY on {}: {e}", l.addr));
                    }
                    let std_l: std::net::TcpListener = sock.into();
                    match tokio::net::TcpListener::from_std(std_l) {
                        Ok(tl) => {
                            tokio::task::spawn_local(accept_tcp(tl, server, io.clone()));
                        }
                        Err(e) => {
                            ctx.log.error(&format!("Cannot listen: {e}"));
                            return 1;
                        }
                    }
                }
                ListenAddr::Unix(_) => {
                    let std_l: std::os::unix::net::UnixListener = sock.into();
                    match tokio::net::UnixListener::from_std(std_l) {
                        Ok(ul) => {
                            tokio::task::spawn_local(accept_unix(ul, server, io.clone()));
                        }
                        Err(e) => {
                            ctx.log.error(&format!("Cannot listen: {e}"));
                            return 1;
                        }
                    }
                }
            }
        }
        tokio::task::spawn_local(watch_loopback_calls(io.clone()));
        supervise(ctx, &io, sigpipe).await
    })
}

/// While the worker is saturated, connections wait to be accepted and one of its requests has been running
/// for a while, look for loopback calls this process has open and publish them; and follow whether any
/// worker has one (then a full worker keeps accepting, to find the nested request and serve it).
async fn watch_loopback_calls(io: Rc<IoState>) {
    let mut published = false;
    loop {
        let board = io.board;
        let suspect = !io.has_free_thread()
            && !io.listen_ports.is_empty()
            && board.oldest_request().is_some_and(|(_, r)| {
                crate::scoreboard::now_ns().saturating_sub(r.started_ns)
                    >= LOOPBACK_SUSPECT_AGE.as_nanos() as u64
            })
            // Only while something waits: in the accept queue, or held inside some worker (which is then
            // in loopback mode, as this one follows).
            && (io.loopback_mode.get()
                || board.board().any_held()
                || io
                    .listen_fds
                    .iter()
                    .any(|fd| crate::sock::accept_queue_len(*fd) > 0));
        let calls = if suspect {
            loopback::own_calls_to(&io.listen_ports)
        } else {
            Vec::new()
        };
        if !calls.is_empty() || published {
            io.ctx
                .log
                .debug(&format!("Loopback calls open in this worker: {calls:?}"));
            board.publish_loopback_ports(&calls);
            published = !calls.is_empty();
        }
        let fair = io.should_accept_for_fairness();
        if fair != io.fair_accept.get() {
            io.fair_accept.set(fair);
            io.capacity_changed.notify_waiters();
        }
        let mode = !io.has_free_thread()
            && (board.board().any_loopback_calls() || board.board().any_held());
        if mode != io.loopback_mode.get() {
            io.loopback_mode.set(mode);
            io.capacity_changed.notify_waiters();
        }
        tokio::select! {
            _ = tokio::time::sleep(loopback::SCAN_INTERVAL) => {}
            _ = io.shutdown_signal.notified() => return,
        }
    }
}

fn parser_options(cfg: &Config) -> ParserOptions {
    ParserOptions {
        limit_request_line: cfg.limit_request_line,
        limit_request_fields: cfg.limit_request_fields,
        limit_request_field_size: cfg.limit_request_field_size,
        permit_missing_host: cfg.permit_missing_host,
        permit_obsolete_folding: cfg.permit_obsolete_folding,
        strip_header_spaces: cfg.strip_header_spaces,
        permit_unconventional_http_method: cfg.permit_unconventional_http_method,
        permit_unconventional_http_version: cfg.permit_unconventional_http_version,
        casefold_http_method: cfg.casefold_http_method,
        // The setting only ever holds one of the three modes.
        header_map: match cfg.header_map.as_str() {
            "refuse" => crate::http::HeaderMap::Refuse,
            "dangerous" => crate::http::HeaderMap::Dangerous,
            _ => crate::http::HeaderMap::Drop,
        },
    }
}

fn server_addr(addr: &ListenAddr) -> ServerAddr {
    match addr {
        ListenAddr::Tcp(a) => ServerAddr {
            name: a.ip().to_string(),
            port: a.port().to_string(),
        },
        ListenAddr::Unix(p) => ServerAddr {
            name: p.display().to_string(),
            port: String::new(),
        },
    }
}

/// Wait until the worker may take one more connection; false once it is stopping.
async fn wait_for_capacity(io: &IoState) -> bool {
    loop {
        if io.shutting_down.get() {
            return false;
        }
        if io.can_accept() {
            return true;
        }
        tokio::select! {
            _ = io.capacity_changed.notified() => {}
            _ = io.shutdown_signal.notified() => {}
        }
    }
}

macro_rules! accept_loop {
    ($name:ident, $listener:ty, $peer:expr) => {
        async fn $name(listener: $listener, server: Arc<ServerAddr>, io: Rc<IoState>) {
            loop {
                if !wait_for_capacity(&io).await {
                    return;
                }
                // Stop waiting in accept() as soon as capacity is gone (a kept-alive connection started a
                // request), so a connection is never taken while the worker cannot run it.
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = io.capacity_changed.notified() => continue,
                    _ = io.shutdown_signal.notified() => return,
                };
                match accepted {
                    Ok((stream, addr)) => {
                        io.connections.set(io.connections.get() + 1);
                        let peer = Arc::new($peer(&addr));
                        let admission = io.admit(&peer);
                        tokio::task::spawn_local(conn::serve(
                            stream,
                            peer,
                            server.clone(),
                            io.clone(),
                            admission,
                        ));
                    }
                    Err(_) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    };
}

fn tcp_peer(addr: &std::net::SocketAddr) -> Peer {
    Peer {
        ip: addr.ip().to_string(),
        port: addr.port(),
        proxy: None,
    }
}

fn unix_peer(_addr: &tokio::net::unix::SocketAddr) -> Peer {
    Peer {
        ip: String::new(),
        port: 0,
        proxy: None,
    }
}

accept_loop!(accept_tcp, tokio::net::TcpListener, tcp_peer);
accept_loop!(accept_unix, tokio::net::UnixListener, unix_peer);

/// The worker's control loop: heartbeat for the master, signals, and the graceful stop.
async fn supervise(ctx: &Arc<WorkerContext>, io: &Rc<IoState>, sigpipe: SignalPipe) -> i32 {
    // SAFETY: the pipe is owned by `sigpipe`, which lives until this function returns, after `sig_fd` is
    // dropped; the fd therefore stays open and the same for the AsyncFd's whole life.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            sigpipe.fd(),
            tokio::io::Interest::READABLE,
        )
    };
    let sig_fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            ctx.log.error(&format!("Cannot watch signals: {e}"));
            return 1;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                ctx.board.heartbeat();
                io.check_recycle();
                ctx.board.set_queued(io.queue.len() as u32);
                if io.trim_due.get() && io.connections.get() == 0 {
                    // A burst of connections leaves freed buffers in the heap's free lists, which glibc
                    // keeps mapped; with no connection left, give them back so an idle worker's memory
                    // returns to its idle size instead of staying at its peak.
                    io.trim_due.set(false);
                    // SAFETY: malloc_trim only releases free memory; it is safe to call from any thread.
                    unsafe { libc::malloc_trim(0) };
                }
                if io.shutting_down.get() && io.connections.get() == 0 {
                    return 0;
                }
            }
            _ = stop::deadline(io) => {
                io.finish_stop().await;
                return 0;
            }
            r = sig_fd.readable() => {
                let Ok(mut guard) = r else { continue };
                guard.clear_ready();
                for sig in sigpipe.drain() {
                    match sig {
                        Signal::SIGTERM => {
                            io.begin_stop();
                            if io.connections.get() == 0 {
                                return 0;
                            }
                        }
                        Signal::SIGINT | Signal::SIGQUIT => {
                            ctx.worker_hook("worker_int");
                            return 0;
                        }
                        Signal::SIGABRT => {
                            // The master gave up on the worker (its I/O loop stopped beating, or a
                            // timed-out request did not let it stop): show where every app thread is.
                            ctx.log.critical(&format!(
                                "Python stacks of worker {} at the timeout:",
                                std::process::id()
                            ));
                            crate::python::stacks::dump_all_threads(ctx.log.raw_fd());
                            ctx.worker_hook("worker_abort");
                            return 1;
                        }
                        Signal::SIGUSR1 => {
                            let _ = ctx.log.reopen();
                            if let Some(a) = &ctx.access_log {
                                let _ = a.reopen();
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
