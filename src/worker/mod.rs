//! A worker process, after fork: load the app, then run the I/O loop (tokio, on the main thread) beside the
//! Python threads that run the app — one for `sync`, `--threads` for `gthread`.
//!
//! Capacity is counted in requests: a worker accepts a new connection only while fewer requests are
//! running or about to run than it has Python threads, so no request waits inside a busy worker while
//! another worker is idle. Keep-alive connections it already holds may still queue a request; that is the
//! price of keep-alive and stays bounded by the connections the worker holds.

pub mod conn;
pub mod exchange;
mod pool;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use pyo3::prelude::*;
use tokio::sync::Notify;

use crate::config::{Config, WorkerClass};
use crate::http::ParserOptions;
use crate::log::{AccessLog, ErrorLog};
use crate::scoreboard::{WorkerHandle, WorkerState};
use crate::signals::{self, SignalPipe};
use crate::sock::{ListenAddr, Listener};
use exchange::{Job, Peer, ServerAddr};

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
    pub shutting_down: AtomicBool,
}

/// State of the I/O thread (single-threaded runtime, so plain cells).
pub struct IoState {
    in_use: Cell<usize>,
    limit: usize,
    connections: Cell<usize>,
    max_connections: usize,
    capacity_changed: Notify,
    pub shutdown_signal: Notify,
    pub shutting_down: Cell<bool>,
    pub queue: crossbeam_channel::Sender<Job>,
    pub parser: ParserOptions,
    keepalive: Duration,
    pub header_timeout: Duration,
    board: WorkerHandle,
}

impl IoState {
    fn has_capacity(&self) -> bool {
        self.in_use.get() < self.limit && self.connections.get() < self.max_connections
    }

    pub fn acquire(&self) {
        self.in_use.set(self.in_use.get() + 1);
        self.board.set_state(WorkerState::Busy);
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

    /// How long a connection may sit without sending the first byte of its next request.
    pub fn idle_timeout(&self, first: bool) -> Duration {
        if first || self.keepalive.is_zero() {
            self.header_timeout
        } else {
            self.keepalive
        }
    }
}

/// The worker's main function, called in the child right after fork. Never returns.
pub fn run(
    py: Python<'_>,
    cfg: Arc<Config>,
    log: ErrorLog,
    listeners: &[Listener],
    board: WorkerHandle,
    preloaded: Option<Py<PyAny>>,
) -> ! {
    let pid = std::process::id();
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
    board.set_pid(pid as i32);
    log.info(&format!("Booting worker with pid: {pid}"));

    let app = match preloaded {
        Some(app) => app,
        None => match load_app(py, &cfg, &log) {
            Some(app) => app,
            None => exit(WORKER_BOOT_ERROR),
        },
    };
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
        shutting_down: AtomicBool::new(false),
    });
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
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
        io_main(&ctx, listeners, tx, threads, sigpipe)
    });
    log.info(&format!("Worker exiting (pid: {pid})"));
    exit(code)
}

fn load_app(py: Python<'_>, cfg: &Config, log: &ErrorLog) -> Option<Py<PyAny>> {
    let Some(uri) = cfg.app_uri.as_deref() else {
        log.error("No application module specified.");
        return None;
    };
    let started = std::time::Instant::now();
    match crate::python::app::load(py, uri) {
        Ok(app) => {
            log.debug(&format!(
                "Loaded application {uri} in {:.3}s",
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
        max_connections: cfg.worker_connections.max(1),
        capacity_changed: Notify::new(),
        shutdown_signal: Notify::new(),
        shutting_down: Cell::new(false),
        queue,
        parser: parser_options(cfg),
        keepalive: Duration::from_secs(cfg.keepalive),
        header_timeout,
        board: ctx.board,
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
        supervise(ctx, &io, sigpipe).await
    })
}

fn parser_options(cfg: &Config) -> ParserOptions {
    ParserOptions {
        limit_request_line: cfg.limit_request_line,
        limit_request_fields: cfg.limit_request_fields,
        limit_request_field_size: cfg.limit_request_field_size,
        permit_missing_host: cfg.permit_missing_host,
        ..ParserOptions::default()
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
        if io.has_capacity() {
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
                        io.acquire();
                        let peer = Arc::new($peer(&stream, &addr));
                        tokio::task::spawn_local(conn::serve(
                            stream,
                            peer,
                            server.clone(),
                            io.clone(),
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
    // Small responses go out in one segment; waiting for an ACK (Nagle) would add latency to each.
    let _ = stream.set_nodelay(true);
    Peer {
        ip: addr.ip().to_string(),
        port: addr.port(),
    }
}

fn unix_peer(_stream: &tokio::net::UnixStream, _addr: &tokio::net::unix::SocketAddr) -> Peer {
    Peer {
        ip: String::new(),
        port: 0,
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
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                ctx.board.heartbeat();
                if io.shutting_down.get() && io.connections.get() == 0 {
                    return 0;
                }
                if let Some(d) = stop_deadline {
                    if tokio::time::Instant::now() >= d {
                        return 0;
                    }
                }
            }
            r = sig_fd.readable() => {
                let Ok(mut guard) = r else { continue };
                guard.clear_ready();
                for sig in sigpipe.drain() {
                    match sig {
                        Signal::SIGTERM => {
                            begin_stop(ctx, io);
                            stop_deadline = Some(
                                tokio::time::Instant::now() + Duration::from_secs(ctx.cfg.graceful_timeout),
                            );
                            if io.connections.get() == 0 {
                                return 0;
                            }
                        }
                        Signal::SIGINT | Signal::SIGQUIT => return 0,
                        Signal::SIGABRT => {
                            // The master gave up on a request: show where every app thread is before
                            // the worker goes.
                            ctx.log.critical(&format!(
                                "Python stacks of worker {} at the timeout:",
                                std::process::id()
                            ));
                            crate::python::stacks::dump_all_threads(ctx.log.raw_fd());
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

fn begin_stop(ctx: &WorkerContext, io: &IoState) {
    io.shutting_down.set(true);
    ctx.shutting_down.store(true, Ordering::SeqCst);
    ctx.board.set_state(WorkerState::Stopping);
    io.shutdown_signal.notify_waiters();
}
