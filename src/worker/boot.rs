//! A worker's boot, in the child right after fork: signals, the `post_fork` and `post_worker_init` hooks,
//! the app (loaded here unless preloaded), the access log, the Python threads; then the I/O loop
//! (`io_loop`) until the worker exits, and the `worker_exit` hook.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize};
use std::sync::Arc;

use nix::sys::signal::Signal;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::admission::{self, OverflowLane};
use super::inline;
use super::io_loop::{io_inline, io_main, IoParts};
use super::{exit, WorkerContext, WORKER_BOOT_ERROR};
use crate::config::{Config, WorkerClass};
use crate::exchange::Ticket;
use crate::log::{AccessLog, ErrorLog};
use crate::python::hooks::HookRunner;
use crate::scoreboard::WorkerHandle;
use crate::signals::{self, SignalPipe};
use crate::sock::Listener;

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
    /// The TLS material the master read (`--certfile`), when the server speaks TLS.
    pub tls: Option<Arc<crate::tls::Material>>,
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
        tls,
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
    // Added threads (elastic threads) take the entries after the overflow lane's.
    let pool = crate::runtime::pool::Threads::new(
        threads,
        cfg.max_threads_per_worker(),
        threads + admission::MAX_OVERFLOW_THREADS,
    );
    let capacity = cfg
        .worker_class
        .capacity(cfg.threads, cfg.worker_connections);
    // The worker class's runtime; nothing else in the worker knows which one it is. A sync worker's one
    // app thread drives the I/O loop itself between requests (`inline`), woken through the context's
    // wake hook.
    let inline = cfg.worker_class == WorkerClass::Sync;
    let runtime: Arc<dyn crate::runtime::AppRuntime> = match cfg.worker_class {
        WorkerClass::Asgi => Arc::new(crate::asgi::AsgiRuntime::new()),
        WorkerClass::Gthread | WorkerClass::Sync => Arc::new(crate::wsgi::WsgiRuntime),
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
        tstates: (0..pool.entries())
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect(),
        threads: pool,
        empty_tickets: AtomicUsize::new(0),
        runtime,
        io_handle: std::sync::OnceLock::new(),
        on_wake: std::sync::OnceLock::new(),
    });
    let (tx, rx) = crossbeam_channel::unbounded::<Arc<Ticket>>();
    let code = py.detach(|| {
        let parts = IoParts {
            listeners,
            queue: tx,
            overflow: OverflowLane::new(threads),
            capacity,
            sigpipe,
            tls: tls.as_deref(),
        };
        let code = if inline {
            log.debug(&format!(
                "Worker (pid:{pid}) serving: 1 app thread (sync, driving the I/O loop), up to {} connections",
                cfg.worker_connections
            ));
            io_inline(
                &ctx,
                parts,
                |baton| {
                    let waiter = Box::new(inline::InlineWaiter::new(baton));
                    ctx.runtime
                        .spawn_waiting_thread(ctx.clone(), 0, rx, "app", waiter)
                },
            )
        } else {
            if let Err(code) = start_threads(&ctx, threads, &rx) {
                return code;
            }
            let max = ctx.threads.max;
            log.debug(&format!(
                "Worker (pid:{pid}) serving: {threads} app thread{} ({}), up to {} connections",
                if threads == 1 { "" } else { "s" },
                cfg.worker_class.name(),
                cfg.worker_connections
            ));
            if max > threads {
                log.debug(&format!(
                    "Worker (pid:{pid}) adds threads up to {max} (--max-threads) while requests wait and its busy threads wait on I/O"
                ));
            }
            // The run queue's receiving end stays with the I/O side only if it may start more threads.
            let grow = (max > threads).then_some(rx);
io_main(&ctx, parts, grow)
        };
        ctx.runtime.stop(
            &ctx,
            std::time::Duration::from_secs(ctx.cfg.graceful_timeout.max(1)),
        );
        code
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

/// Start the app threads that wait on the run queue.
fn start_threads(
    ctx: &Arc<WorkerContext>,
    threads: usize,
    rx: &crossbeam_channel::Receiver<Arc<Ticket>>,
) -> Result<(), i32> {
    for i in 0..threads {
        if let Err(e) = ctx.runtime.spawn_thread(ctx.clone(), i, rx.clone(), "app") {
            // The runtime logged why (an ASGI app's lifespan startup failed, say): the worker
            // cannot serve, as when the app fails to import.
            ctx.log.error(&format!("Cannot start app thread: {e}"));
            return Err(WORKER_BOOT_ERROR);
        }
    }
    Ok(())
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
