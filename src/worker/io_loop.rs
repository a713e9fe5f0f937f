//! The worker's I/O loop: a single-threaded tokio runtime that runs the accept loops (`accept`),
//! admission's watcher and every connection, and `supervise` — the heartbeat the master reads, the
//! worker's signals, and the graceful stop. It runs on the main thread (`io_main`), or — a sync worker —
//! on its app thread between requests, handed to the main thread while a request runs long (`io_inline`,
//! `inline`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::Notify;

use super::accept::{accept_tcp, accept_unix, server_addr};
use super::admission::{self, Admission, OverflowLane};
use super::{driver, inline, loopback, proxy, snapshot, stop, IoState, WorkerContext};
use crate::config::Config;
use crate::exchange::Ticket;
use crate::http::ParserOptions;
use crate::scoreboard::WorkerState;
use crate::signals::SignalPipe;
use crate::sock::{ListenAddr, Listener};

/// What a worker's I/O loop is made of, gathered by the boot: its listeners, the run queue's sending
/// end, the overflow lane, its capacity, its signal pipe and the TLS material it serves (if any).
pub(super) struct IoParts<'a> {
    pub listeners: &'a [Listener],
    pub queue: crossbeam_channel::Sender<Arc<Ticket>>,
    pub overflow: OverflowLane,
    pub capacity: usize,
    pub sigpipe: SignalPipe,
    pub tls: Option<&'a crate::tls::Material>,
}

/// The I/O loop on this thread until the worker exits; the app threads wait on the run queue (`grow`:
/// its receiving end, when elastic threads may be added).
pub(super) fn io_main(
    ctx: &Arc<WorkerContext>,
    parts: IoParts<'_>,
    grow: Option<crate::runtime::RunQueue>,
) -> i32 {
    let listeners = parts.listeners;
    let Some((rt, local, io, sigpipe)) = build(ctx, parts, grow) else {
        return 1;
    };
    local.block_on(&rt, async {
        if !listen(ctx, listeners, &io) {
            return 1;
        }
        supervise(ctx, &io, sigpipe).await
    })
}

/// The I/O loop of a sync worker, driven by its app thread between requests (`inline`): set up here,
/// then `app.start` starts that thread with the loop's baton, and this thread stands by to drive the loop
/// while a request runs long (see `inline::Baton::stand_by`) until the worker exits.
pub(super) fn io_inline(
    ctx: &Arc<WorkerContext>,
    parts: IoParts<'_>,
    app: inline::Start<impl FnOnce(Arc<inline::Baton>) -> std::io::Result<()>>,
) -> i32 {
    let listeners = parts.listeners;
    // A sync worker has one thread and no more to add (`--max-threads` is refused for it).
    let Some((rt, local, io, sigpipe)) = build(ctx, parts, None) else {
        return 1;
    };
    if !local.block_on(&rt, async { listen(ctx, listeners, &io) }) {
        return 1;
    }
    let baton = inline::Baton::new(rt, local, app.ready);
    {
        let (ctx, done) = (ctx.clone(), baton.clone());
        // `io` moves into the task: from here on only the loop's driver touches the I/O state.
        baton.spawn(async move {
            let code = supervise(&ctx, &io, sigpipe).await;
            done.end(code);
        });
    }
    if let Err(e) = (app.start)(baton.clone()) {
        ctx.log.error(&format!("Cannot start app thread: {e}"));
        return super::WORKER_BOOT_ERROR;
    }
    baton.stand_by()
}

/// The worker's I/O runtime and state (and the signal pipe, for `supervise`).
fn build(
    ctx: &Arc<WorkerContext>,
    parts: IoParts<'_>,
    grow: Option<crate::runtime::RunQueue>,
) -> Option<(
    tokio::runtime::Runtime,
    tokio::task::LocalSet,
    Rc<IoState>,
    SignalPipe,
)> {
    let IoParts {
        listeners,
        queue,
        overflow,
        capacity,
        sigpipe,
        tls,
    } = parts;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            ctx.log.error(&format!("Cannot start the I/O loop: {e}"));
            return None;
        }
    };
    let _ = ctx.io_handle.set(rt.handle().clone());
    let cfg = &ctx.cfg;
    // The master checked the material; the config is built here, after fork, from what it read.
    let tls = match tls.map(|m| super::tls::TlsAcceptor::new(m, cfg)) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            ctx.log.error(&format!("Cannot set up TLS: {e}"));
            return None;
        }
    };
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
    let io = Rc::new_cyclic(|weak| IoState {
        admission: Admission::new(
            ctx.clone(),
            capacity,
            queue,
            overflow,
            listen_ports,
            listen_fds,
            grow.map(|rx| super::elastic::Elastic::new(ctx, rx)),
        ),
        trim_due: Cell::new(false),
        shutdown_signal: Notify::new(),
        shutting_down: Cell::new(false),
        parser: parser_options(cfg),
        keepalive: Duration::from_secs(cfg.keepalive),
        header_timeout,
        forwarded: super::forwarded::ForwardedTrust::new(cfg),
        proxy: proxy::ProxySettings::new(cfg),
        request_timeout: (cfg.timeout > 0).then(|| Duration::from_secs(cfg.timeout)),
        slow_threshold: (cfg.slow_request_threshold > 0)
            .then(|| Duration::from_secs(cfg.slow_request_threshold)),
        stop_deadline: Cell::new(None),
        lost_threads: RefCell::new(Vec::new()),
        board: ctx.board,
        ctx: ctx.clone(),
        upgrades: upgrades_for(ctx, weak),
        h2c_prior_knowledge: cfg.h2c_prior_knowledge(),
        tls,
    });
    Some((rt, tokio::task::LocalSet::new(), io, sigpipe))
}

/// Start the accept loops and admission's watcher (inside the loop's `LocalSet`). False when a listener
/// cannot be used (logged).
fn listen(ctx: &Arc<WorkerContext>, listeners: &[Listener], io: &Rc<IoState>) -> bool {
    ctx.board.set_state(WorkerState::Idle);
    for l in listeners {
        let Ok(sock) = l.socket.try_clone() else {
            ctx.log.error("Cannot use a listening socket");
            return false;
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
                        return false;
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
                        return false;
                    }
                }
            }
        }
    }
    let watcher = io.clone();
    tokio::task::spawn_local(async move { admission::watch(&watcher.admission).await });
    true
}

/// The upgrade handlers of the worker's runtime (websockets for ASGI; none for WSGI).
fn upgrades_for(ctx: &WorkerContext, io: &std::rc::Weak<IoState>) -> driver::Upgrades {
    let mut upgrades = driver::Upgrades::default();
    if ctx.runtime.serves_websockets() {
        upgrades.register(Box::new(super::ws::WebsocketHandler::new(io.clone())));
    }
    upgrades
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
                if let Some(stuck) = ctx.runtime.check(ctx) {
                    io.runtime_stuck(stuck);
                }
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
                if io.shutting_down.get() && io.open_connections() == 0 {
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
                            if io.open_connections() == 0 {
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
