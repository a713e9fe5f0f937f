//! A worker process, after fork: load the app, then run the I/O loop (tokio, on the main thread) beside the
//! Python threads that run the app — one for `sync`, `--threads` for `gthread`.
//!
//! Which connections it accepts and where each request runs (its threads, their queue, or the overflow
//! lane for loopback calls) is `admission`'s job; this module boots the worker and runs its I/O loop.

mod admission;
pub mod conn;
pub mod exchange;
mod loopback;
mod pool;
pub mod proxy;
mod snapshot;
mod stop;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use pyo3::prelude::*;
use tokio::sync::Notify;

use crate::config::Config;
use crate::http::ParserOptions;
use crate::log::{AccessLog, ErrorLog};
use crate::python::hooks::HookRunner;
use crate::scoreboard::{WorkerHandle, WorkerState};
use crate::signals::{self, SignalPipe};
use crate::sock::{ListenAddr, Listener};
use admission::{Admission, OverflowLane};
use exchange::{Peer, ServerAddr, Ticket};
use pyo3::types::PyTuple;

/// Exit code of a worker whose app could not be loaded; the master stops with "Worker failed to boot."
pub const WORKER_BOOT_ERROR: i32 = 3;

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
    /// Tickets in the run queue whose request moved to the overflow lane (see `admission`): the queue's
    /// length less these is what waits for a thread.
    pub empty_tickets: AtomicUsize,
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
    pub admission: Admission,
    /// Requests have run since the heap was last given back to the system (see `supervise`).
    trim_due: Cell<bool>,
    pub shutdown_signal: Notify,
    pub shutting_down: Cell<bool>,
    pub parser: ParserOptions,
    keepalive: Duration,
    pub header_timeout: Duration,
    pub forwarded: exchange::ForwardedTrust,
    /// `--proxy-protocol` and `--proxy-allow-from`; None when off.
    pub proxy: Option<proxy::ProxySettings>,
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
    /// A request of this worker took `d` from dispatch to its last byte.
    pub fn request_done(&self, d: Duration) {
        self.trim_due.set(true);
        self.admission.record_duration(d);
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
    let threads = cfg.worker_class.threads(cfg.threads);
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
        tstates: (0..threads + admission::MAX_OVERFLOW_THREADS)
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect(),
        empty_tickets: AtomicUsize::new(0),
    });
    let (tx, rx) = crossbeam_channel::unbounded::<Arc<Ticket>>();
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
        log.debug(&format!(
            "Worker (pid:{pid}) serving: {threads} app thread{} ({}), up to {} connections",
            if threads == 1 { "" } else { "s" },
            cfg.worker_class.name(),
            cfg.worker_connections
        ));
        let overflow = OverflowLane::new(threads);
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
    queue: crossbeam_channel::Sender<Arc<Ticket>>,
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
    let listen_ports = listeners
        .iter()
        .filter_map(|l| match l.addr {
            ListenAddr::Tcp(a) => Some(loopback::ListenPort {
                ip: a.ip(),
                port: a.port(),
            }),
            ListenAddr::Unix(_) => None,
        })
        .collect();
    let (tcp_fds, unix_fds) = listeners
        .iter()
        .partition::<Vec<&Listener>, _>(|l| matches!(l.addr, ListenAddr::Tcp(_)));
    let listen_fds = admission::ListenFds {
        tcp: tcp_fds.iter().map(|l| l.fd()).collect(),
        unix: unix_fds.iter().map(|l| l.fd()).collect(),
    };
    let io = Rc::new(IoState {
        admission: Admission::new(
            ctx.clone(),
            threads,
            queue,
            overflow,
            listen_ports,
            listen_fds,
        ),
        trim_due: Cell::new(false),
        shutdown_signal: Notify::new(),
        shutting_down: Cell::new(false),
        parser: parser_options(cfg),
        keepalive: Duration::from_secs(cfg.keepalive),
        header_timeout,
        forwarded: exchange::ForwardedTrust::new(cfg),
        proxy: proxy::ProxySettings::new(cfg),
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
        let watcher = io.clone();
        tokio::task::spawn_local(async move { admission::watch(&watcher.admission).await });
        supervise(ctx, &io, sigpipe).await
    })
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
        if io.admission.can_accept() {
            return true;
        }
        tokio::select! {
            _ = io.admission.changed.notified() => {}
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
                    _ = io.admission.changed.notified() => continue,
                    _ = io.shutdown_signal.notified() => return,
                };
                match accepted {
                    Ok((stream, addr)) => {
                        let peer = Arc::new($peer(&stream, &addr));
                        let claimed = io.admission.accepted(&peer);
                        tokio::task::spawn_local(conn::serve(
                            stream,
                            peer,
                            server.clone(),
                            io.clone(),
                            claimed,
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

fn tcp_peer(stream: &tokio::net::TcpStream, addr: &std::net::SocketAddr) -> Peer {
    // An IPv4 client of an IPv6 listener shows as `::ffff:a.b.c.d`: judge its IPv4 address.
    let ip = addr.ip().to_canonical();
    Peer {
        ip: addr.ip().to_string(),
        port: addr.port(),
        proxy: None,
        local_pid: None,
        // A client connecting to an address of this host from the same address is on this host; a
        // loopback client needs no system call to tell.
        same_host: ip.is_loopback()
            || stream
                .local_addr()
                .is_ok_and(|local| local.ip().to_canonical() == ip),
    }
}

/// A unix-socket client: no address, but its process is known, which tells a loopback call.
fn unix_peer(stream: &tokio::net::UnixStream, _addr: &tokio::net::unix::SocketAddr) -> Peer {
    Peer {
        ip: String::new(),
        port: 0,
        proxy: None,
        local_pid: stream.peer_cred().ok().and_then(|c| c.pid()),
        same_host: true,
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
                snapshot::answer_if_asked(ctx);
                io.check_recycle();
                if io.trim_due.get() && io.admission.connections() == 0 {
                    // A burst of connections leaves freed buffers in the heap's free lists, which glibc
                    // keeps mapped; with no connection left, give them back so an idle worker's memory
                    // returns to its idle size instead of staying at its peak.
                    io.trim_due.set(false);
                    // SAFETY: malloc_trim only releases free memory; it is safe to call from any thread.
                    unsafe { libc::malloc_trim(0) };
                }
                if io.shutting_down.get() && io.admission.connections() == 0 {
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
                            ctx.log.debug(&format!(
                                "Worker (pid:{}) got SIGTERM: finishing its {} open connection(s) within --graceful-timeout {}s",
                                std::process::id(),
                                io.admission.connections(),
                                ctx.cfg.graceful_timeout
                            ));
                            io.begin_stop();
                            if io.admission.connections() == 0 {
                                return 0;
                            }
                        }
                        Signal::SIGINT | Signal::SIGQUIT => {
                            ctx.log.debug(&format!(
                                "Worker (pid:{}) got {}: stopping now",
                                std::process::id(),
                                sig.as_str()
                            ));
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
