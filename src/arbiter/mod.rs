//! The master process ("arbiter"): owns the listening sockets, the scoreboard and the signals, forks the
//! workers and keeps their number right. It never serves a client and starts no threads, so every fork
//! happens from a single-threaded process. Its loop wakes once a second (or on a signal) to handle signals,
//! reap workers, enforce `--timeout` from the scoreboard and spawn replacements.

pub mod boot;
mod control;
mod daemon;
mod elastic;
mod observe;
mod oom;
mod starvation;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use pyo3::prelude::*;

use crate::config::Config;
use crate::log::ErrorLog;
use crate::python::hooks::{HookFailed, HookRunner};
use crate::scoreboard::{now_ns, Scoreboard, WorkerState};
use crate::signals::{self, SignalPipe};
use crate::sock::Listener;
use crate::worker::{self, WORKER_BOOT_ERROR};
use pyo3::types::PyTuple;

const MASTER_SIGNALS: [Signal; 10] = [
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCHLD,
];

/// Why the master itself sent a worker SIGKILL, so that its death is reported as what it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MasterKill {
    /// After `WORKER TIMEOUT` (and SIGABRT) the worker did not stop.
    Timeout,
    /// It was still loading the app after `--timeout` (and SIGABRT) and did not stop.
    SlowBoot,
    /// It did not stop within `--graceful-timeout` of being told to (TERM, HUP, TTOU, recycling).
    Graceful,
}

struct WorkerProc {
    slot: usize,
    /// WORKER TIMEOUT was logged and SIGABRT sent; the next tick escalates to SIGKILL.
    aborted: bool,
    /// Spawn order, to retire the oldest first.
    age: u64,
    /// The master itself sent SIGKILL, and why, so a SIGKILL death is not a mystery.
    killed: Option<MasterKill>,
    /// Resident memory at the last tick, reported if the worker is killed.
    last_rss: u64,
    /// The cgroup's OOM kill count when the worker was spawned: a higher count at its death by SIGKILL
    /// means the OOM killer struck some process of the cgroup during its life (see oom.rs).
    oom_kills_at_spawn: Option<u64>,
    spawned_at: Instant,
    /// Why the master retired it (reload, scale-down, memory, `worker kill`), for the restart causes.
    cause: Option<crate::metrics::Cause>,
    /// When the master told it to stop (TTOU, HUP, memory limit) or it began stopping by itself.
    retired_at: Option<Instant>,
}

/// A worker that dies sooner than this after its spawn counts towards the crash-loop backoff.
const FAST_DEATH: Duration = Duration::from_secs(1);
/// The longest the master waits before spawning after repeated fast deaths.
const MAX_SPAWN_BACKOFF: Duration = Duration::from_secs(10);

/// Why the master stops, and with which exit status.
struct Halt {
    reason: Option<String>,
    status: i32,
    graceful: bool,
}

pub struct Arbiter {
    cfg: Arc<Config>,
    log: ErrorLog,
    listeners: Vec<Listener>,
    board: Scoreboard,
    workers: BTreeMap<i32, WorkerProc>,
    /// Workers told to stop (TTOU, HUP) that have not exited yet: no longer counted, still reaped.
    retiring: Vec<(i32, WorkerProc)>,
    num_workers: usize,
    sigpipe: SignalPipe,
    spawned: u64,
    preloaded: Option<Py<PyAny>>,
    oom: oom::OomCounter,
    kernel_log: oom::KernelLog,
    hooks: Arc<HookRunner>,
    /// The command line, for `HUP`.
    argv: Vec<String>,
    /// The new master started by `USR2`, while it runs.
    reexec_pid: i32,
    /// For a master started by `USR2`: the old master, until it exits.
    reexec_parent: Option<i32>,
    /// Consecutive workers that died right after boot, and when the next may be spawned.
    fast_deaths: u32,
    next_spawn_at: Option<Instant>,
    /// Episodes of every thread busy while connections wait (starvation.rs).
    starvation: starvation::Watch,
    /// Highest number of app threads seen busy at once, and of connections seen waiting (backlog plus
    /// inside workers) at once, since the master started: `show stats` reports them so that
    /// `ferricornctl doctor` can compare the observed concurrency with the capacity.
    peak_busy_threads: usize,
    peak_waiting: u64,
    /// The control socket (`--control-socket`) and what its commands left for the loop: control.rs.
    control: Option<crate::control::ControlServer>,
    control_pending: control::Pending,
    reloads: u64,
    /// The worker count last logged at debug level (`N workers`, as gunicorn).
    logged_worker_count: Option<usize>,
    /// `--metrics-bind`'s listener (observe.rs).
    metrics: Option<crate::metrics::server::MetricsServer>,
    /// A graceful stop has begun: readiness is off. Set at TERM (before `--shutdown-delay`) and kept.
    stopping: bool,
    /// The end of `--shutdown-delay`, while it runs.
    drain_until: Option<Instant>,
    /// The master is stopping its workers for good: their deaths are not restarts.
    halting: bool,
    /// Worker restarts by cause, and the request totals of workers that are gone.
    restarts: crate::metrics::Restarts,
    retired_stats: crate::scoreboard::RequestStats,
    /// Seconds of starvation so far, and when it was last looked at.
    starvation_secs: f64,
    starvation_checked: Option<Instant>,
    started: Instant,
    /// The last death reported was named an OOM kill by the kernel log.
    death_was_oom: bool,
    /// Workers added under starvation (`--max-workers`, elastic.rs).
    scaling: elastic::WorkerScaling,
    /// The TLS material new workers serve (`--certfile`): read again on `HUP`, kept when the new files
    /// are broken.
    tls: Option<Arc<crate::tls::Material>>,
}

/// The certificate served, as the log tells it at boot and after `HUP`; a WARNING when it is outside
/// its validity (clients will refuse it).
pub fn log_tls_material(log: &ErrorLog, m: &crate::tls::Material) {
    log.info(&format!("Serving TLS with the certificate {}", m.summary));
    if let Some(why) = &m.out_of_date {
        log.warning(&format!("The TLS certificate is not valid now: {why}"));
    }
}

/// The requests a worker is running, for a log line: "requests still running: GET /a from 127.0.0.1:5555,
/// thread 0, running for 31.0s; …", or "no request in flight".
fn describe_requests(running: &[(usize, crate::scoreboard::RequestInFlight)]) -> String {
    if running.is_empty() {
        return "no request in flight".to_string();
    }
    let each: Vec<String> = running
        .iter()
        .map(|(t, r)| {
            format!(
                "{}, thread {t}, running for {:.1}s",
                r.summary(),
                r.age_secs()
            )
        })
        .collect();
    format!("requests still running: {}", each.join("; "))
}

impl Arbiter {
    pub fn new(
        cfg: Arc<Config>,
        log: ErrorLog,
        listeners: Vec<Listener>,
        preloaded: Option<Py<PyAny>>,
        hooks: Arc<HookRunner>,
    ) -> std::io::Result<Arbiter> {
        let board = Scoreboard::create()?;
        crate::snapshot::Snapshots::create()?;
        let sigpipe = SignalPipe::install(&MASTER_SIGNALS)?;
        let control = control::open(&cfg, &log)?;
        let metrics = observe::open(&cfg, &log)?;
        crate::metrics::statsd::init(&cfg, &log);
        Ok(Arbiter {
            num_workers: cfg.workers.max(1),
            cfg,
            log,
            listeners,
            board,
            workers: BTreeMap::new(),
            retiring: Vec::new(),
            sigpipe,
            spawned: 0,
            preloaded,
            oom: oom::OomCounter::for_self(),
            kernel_log: oom::KernelLog::open(),
            starvation: Default::default(),
            peak_busy_threads: 0,
            peak_waiting: 0,
            hooks,
            fast_deaths: 0,
            next_spawn_at: None,
            argv: Vec::new(),
            reexec_pid: 0,
            reexec_parent: std::env::var(crate::system::REEXEC_ENV)
                .ok()
                .and_then(|p| p.parse().ok())
                .filter(|p| *p == std::os::unix::process::parent_id() as i32),
            control,
            control_pending: Default::default(),
            reloads: 0,
            logged_worker_count: None,
            metrics,
            stopping: false,
            drain_until: None,
            halting: false,
            restarts: Default::default(),
            retired_stats: Default::default(),
            starvation_secs: 0.0,
            starvation_checked: None,
            started: Instant::now(),
            death_was_oom: false,
            scaling: Default::default(),
            tls: None,
        })
    }

    /// Call a server hook with the GIL, if the config defines it; `args` builds its arguments. Failures are
    /// logged by the runner.
    fn hook<F>(&self, name: &str, args: F) -> Result<(), HookFailed>
    where
        F: for<'py> FnOnce(Python<'py>, &HookRunner) -> PyResult<Bound<'py, PyTuple>>,
    {
        if !self.hooks.has(name) {
            return Ok(());
        }
        Python::attach(|py| match args(py, &self.hooks) {
            Ok(a) => self.hooks.call(py, name, a),
            Err(e) => {
                self.log.error(&format!(
                    "Cannot prepare the arguments of the {name} hook:\n{}",
                    crate::python::format_exception(py, &e)
                ));
                Err(HookFailed)
            }
        })
    }

    fn server_obj<'py>(&self, py: Python<'py>, hooks: &HookRunner) -> PyResult<Bound<'py, PyAny>> {
        hooks.server(py, std::process::id(), self.num_workers)
    }

    fn change_worker_count(&mut self, new: usize) {
        let old = self.num_workers;
        if new == old {
            return;
        }
        self.num_workers = new;
        let _ = self.hook("nworkers_changed", |py, h| {
            PyTuple::new(
                py,
                [
                    self.server_obj(py, h)?,
                    new.into_pyobject(py)?.into_any(),
                    old.into_pyobject(py)?.into_any(),
                ],
            )
        });
    }

    /// The master loop. Returns the process exit status.
    pub fn run(mut self, py: Python<'_>) -> i32 {
        // gunicorn reports the initial worker count too, with no old value.
        let n = self.num_workers;
        let _ = self.hook("nworkers_changed", |py, h| {
            PyTuple::new(
                py,
                [
                    self.server_obj(py, h)?,
                    n.into_pyobject(py)?.into_any(),
                    py.None().into_bound(py),
                ],
            )
        });
        let halt = py.detach(|| loop {
            if let Err(h) = self.manage_workers() {
                break h;
            }
            if let Err(h) = self.wait_and_serve_control(1000) {
                break h;
            }
            if let Err(h) = self.drain_over() {
                break h;
            }
            if let Err(h) = self.handle_signals() {
                break h;
            }
            if let Err(h) = self.reap_workers() {
                break h;
            }
            self.maybe_promote();
            self.murder_workers();
            self.sample_workers();
            self.check_starvation();
            crate::system::master_tick(
                self.workers
                    .values()
                    .map(|w| self.board.worker(w.slot).state()),
                self.target_workers(),
                &self.log,
            );
            self.kill_overdue_retirees();
        });
        self.halt(py, halt)
    }

    fn handle_signals(&mut self) -> Result<(), Halt> {
        for sig in self.sigpipe.drain() {
            if sig == Signal::SIGCHLD {
                // Frequent, so at debug level, as gunicorn does.
                self.log.debug("Handling signal: chld");
                continue;
            }
            self.log
                .info(&format!("Handling signal: {}", signals::name(sig)));
            match sig {
                Signal::SIGTERM => self.begin_graceful_stop()?,
                Signal::SIGINT | Signal::SIGQUIT => {
                    return Err(Halt {
                        reason: None,
                        status: 0,
                        graceful: false,
                    })
                }
                Signal::SIGHUP => {
                    crate::system::master_reloading(&self.log);
                    self.reload()
                }
                Signal::SIGTTIN => self.change_worker_count(self.num_workers + 1),
                Signal::SIGTTOU if self.num_workers > 1 => {
                    self.change_worker_count(self.num_workers - 1)
                }
                Signal::SIGUSR1 => {
                    let _ = self.log.reopen();
                    self.signal_workers(Signal::SIGUSR1);
                }
                // --daemon: WINCH stops the workers gracefully (TTIN brings them back), as gunicorn.
                Signal::SIGWINCH if self.cfg.daemon => {
                    self.log.info("graceful stop of workers");
                    self.change_worker_count(0);
                }
                Signal::SIGWINCH => self.log.debug("SIGWINCH ignored. Not daemonized"),
                Signal::SIGUSR2 => self.reexec(),
                _ => {}
            }
        }
        Ok(())
    }

    /// `USR2`: start a new master from the (possibly upgraded) installed program, handing it the listening
    /// sockets (their numbers in `FERRICORN_FD`, as gunicorn's `GUNICORN_FD`), so an upgrade drops no
    /// connection. This master keeps running until told to stop; the new one takes over when it goes.
    fn reexec(&mut self) {
        if self.reexec_pid != 0 {
            self.log.warning("USR2 signal ignored. Child exists.");
            return;
        }
        if self.reexec_parent.is_some() {
            self.log.warning("USR2 signal ignored. Parent exists.");
            return;
        }
        let _ = self.hook("pre_exec", |py, h| {
            PyTuple::new(py, [self.server_obj(py, h)?])
        });
        // The command that started this master, as the interpreter saw it (`python -m`, or a console
        // script run by its interpreter).
        let command = Python::attach(|py| -> PyResult<(String, Vec<String>)> {
            let sys = py.import("sys")?;
            let exe: String = sys.getattr("executable")?.extract()?;
            let argv: Vec<String> = sys.getattr("orig_argv")?.extract()?;
            Ok((exe, argv))
        });
        let (exe, argv) = match command {
            Ok(c) => c,
            Err(_) => {
                self.log
                    .error("Cannot find the command that started the master; USR2 ignored");
                return;
            }
        };
        let fds: Vec<String> = self.listeners.iter().map(|l| l.fd().to_string()).collect();
        let metrics_fd = self.metrics.as_ref().map(|m| m.listener_fd());
        let master = std::process::id().to_string();
        // SAFETY: the master is single-threaded; the child only adjusts descriptors and execs.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            for l in &self.listeners {
                // The sockets must survive the exec.
                // SAFETY: clearing FD_CLOEXEC on a descriptor we own.
                unsafe { libc::fcntl(l.fd(), libc::F_SETFD, 0) };
            }
            let mut command = std::process::Command::new(&exe);
            if let Some(fd) = metrics_fd {
                // SAFETY: clearing FD_CLOEXEC on a descriptor we own.
                unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
                command.env(crate::metrics::server::INHERITED_FD_ENV, fd.to_string());
            }
            use std::os::unix::process::CommandExt;
            let err = command
                .args(argv.iter().skip(1))
                .env(crate::sock::INHERITED_FDS_ENV, fds.join(","))
                .env(crate::system::REEXEC_ENV, &master)
                .exec();
            self.log
                .error(&format!("Cannot start the new master: {err}"));
            worker::exit(1);
        }
        if pid < 0 {
            self.log.error(&format!(
                "Cannot fork the new master: {}",
                std::io::Error::last_os_error()
            ));
            return;
        }
        self.reexec_pid = pid;
    }

    /// A master started by `USR2` becomes the only one when the old master exits.
    fn maybe_promote(&mut self) {
        let Some(parent) = self.reexec_parent else {
            return;
        };
        if std::os::unix::process::parent_id() as i32 == parent {
            return;
        }
        self.log.info("Master has been promoted.");
        self.reexec_parent = None;
        if let Some(p) = &self.cfg.pidfile {
            let interim = crate::system::pidfile::effective_path(p, true);
            if interim != *p {
                let _ = std::fs::rename(&interim, p);
            }
        }
        std::env::remove_var(crate::system::REEXEC_ENV);
    }

    /// `HUP`: start a fresh set of workers, then retire the old ones gracefully.
    /// The command line to read the configuration from again on `HUP`.
    pub fn reloading_from(mut self, argv: Vec<String>) -> Arbiter {
        self.argv = argv;
        self
    }

    /// The TLS material read at boot, for the workers.
    pub fn serving_tls(mut self, tls: Option<Arc<crate::tls::Material>>) -> Arbiter {
        self.tls = tls;
        self
    }

    /// `HUP`: the certificate and key read again from disk (a renewed certificate needs no restart).
    /// When the new files do not load, the workers keep serving the material they had, with an ERROR.
    fn reload_tls(&mut self) {
        match crate::tls::Material::load(&self.cfg) {
            Ok(Some(m)) => {
                log_tls_material(&self.log, &m);
                self.tls = Some(Arc::new(m));
            }
            Ok(None) => self.tls = None,
            Err(e) if self.tls.is_some() => self.log.error(&format!(
                "Reloading the TLS certificate failed; the current one stays: {e}"
            )),
            Err(e) => self.log.error(&format!(
                "Reloading the TLS certificate failed; the server stays without TLS: {e}"
            )),
        }
    }

    /// `HUP`, first half: the configuration (command line, environment, config file) read again, as
    /// gunicorn does. A configuration that no longer loads keeps the old one, with the reason logged.
    fn reload_config(&mut self) {
        if self.argv.is_empty() {
            return;
        }
        let loaded = Python::attach(|py| {
            let (cfg, hooks) = crate::python::config_file::reconfigure(py, &self.argv)?;
            // As at start, the settings now in force at debug level (the new level counts).
            let shown = (cfg.loglevel.parse() == Ok(crate::log::Level::Debug))
                .then(|| cfg.current_configuration_with(&hooks.print_config_lines(py)));
            crate::python::prepare(py, cfg.chdir.as_deref(), &cfg.pythonpath, &cfg.raw_env)
                .map_err(|e| crate::python::format_exception(py, &e))?;
            let runner = HookRunner::new(py, hooks, &cfg, &self.log)
                .map_err(|e| crate::python::format_exception(py, &e))?;
            Ok::<_, String>((cfg, runner, shown))
        });
        match loaded {
            Ok((cfg, hooks, shown)) => {
                if cfg.binds != self.cfg.binds {
                    self.log.warning(
                        "The bind addresses changed: that takes a restart, the old ones stay",
                    );
                }
                if let Ok(level) = cfg.loglevel.parse() {
                    self.log.set_level(level);
                }
                for warning in crate::config::settings::limits_above_maximum(&cfg) {
                    self.log.warning(&warning);
                }
                if let Some(text) = shown {
                    self.log.debug(&text);
                }
                let workers = cfg.workers.max(1);
                self.cfg = Arc::new(cfg);
                self.hooks = hooks;
                self.change_worker_count(workers);
            }
            Err(reason) => self.log.error(&format!(
                "Reloading the configuration failed; keeping the current one:\n{reason}"
            )),
        }
    }

    fn reload(&mut self) {
        self.log.info("Hang up: Master");
        self.reload_config();
        self.reload_tls();
        self.reloads += 1;
        let _ = self.hook("on_reload", |py, h| {
            PyTuple::new(py, [self.server_obj(py, h)?])
        });
        let old: Vec<i32> = self.workers.keys().copied().collect();
        // The fresh set starts from the base; starvation adds workers again if it lasts.
        self.scaling.added = 0;
        for _ in 0..self.num_workers {
            if let Err(h) = self.spawn_worker() {
                self.log
                    .error(&h.reason.unwrap_or_else(|| "spawn failed".into()));
            }
        }
        for pid in old {
            self.retire(
                pid,
                Some(Signal::SIGTERM),
                Some(crate::metrics::Cause::Reload),
            );
        }
    }

    fn signal_workers(&self, sig: Signal) {
        for pid in self.workers.keys() {
            self.kill_worker(*pid, sig);
        }
    }

    fn kill_worker(&self, pid: i32, sig: Signal) {
        let _ = kill(Pid::from_raw(pid), sig);
    }

    fn manage_workers(&mut self) -> Result<(), Halt> {
        // A worker that is stopping by itself (max-requests, a timed-out request) no longer counts: its
        // replacement starts now, while it finishes its requests.
        let stopping: Vec<i32> = self
            .workers
            .iter()
            .filter(|(_, w)| self.board.worker(w.slot).state() == WorkerState::Stopping)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in stopping {
            self.retire(pid, None, None);
        }
        // After workers died right after boot again and again, wait before the next spawn.
        if self.next_spawn_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        while self.workers.len() < self.target_workers() {
            self.spawn_worker()?;
        }
        // Too many (after TTOU): retire the oldest.
        while self.workers.len() > self.target_workers() {
            let Some((&pid, _)) = self.workers.iter().min_by_key(|(_, w)| w.age) else {
                break;
            };
            self.retire(
                pid,
                Some(Signal::SIGTERM),
                Some(crate::metrics::Cause::ScaleDown),
            );
        }
        // gunicorn's gauge line, whenever the number of workers counted changes.
        let count = self.workers.len();
        if self.logged_worker_count != Some(count) {
            self.logged_worker_count = Some(count);
            self.log.debug(&format!("{count} workers"));
            if let Some(statsd) = crate::metrics::statsd::get() {
                statsd.send(&[(
                    "gunicorn.workers",
                    count as f64,
                    crate::metrics::statsd::Kind::Gauge,
                )]);
            }
        }
        Ok(())
    }

    /// Stop counting a worker (it stays known until reaped), optionally telling it to stop.
    fn retire(&mut self, pid: i32, sig: Option<Signal>, cause: Option<crate::metrics::Cause>) {
        if let Some(sig) = sig {
            self.kill_worker(pid, sig);
        }
        if let Some(mut w) = self.workers.remove(&pid) {
            w.retired_at = Some(Instant::now());
            if w.cause.is_none() {
                w.cause = cause;
            }
            self.retiring.push((pid, w));
        }
    }

    /// A retiring worker gets `--graceful-timeout` (and a little slack) to finish; then it is killed.
    fn kill_overdue_retirees(&mut self) {
        let limit = Duration::from_secs(self.cfg.graceful_timeout) + Duration::from_secs(5);
        for (pid, w) in self.retiring.iter_mut() {
            if w.killed.is_none() && w.retired_at.is_some_and(|t| t.elapsed() > limit) {
                let running = describe_requests(&self.board.worker(w.slot).requests_in_flight());
                self.log.warning(&format!(
                    "Worker (pid:{pid}) did not stop within --graceful-timeout {}s: killing it ({running})",
                    self.cfg.graceful_timeout
                ));
                w.killed = Some(MasterKill::Graceful);
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }

    fn spawn_worker(&mut self) -> Result<(), Halt> {
        let Some(slot) = self.board.free_slot() else {
            self.log.error("No free scoreboard slot for a new worker");
            return Ok(());
        };
        self.spawned += 1;
        self.board.claim(slot, self.spawned as u32);
        let age = self.spawned;
        let _ = self.hook("pre_fork", |py, h| {
            PyTuple::new(
                py,
                [
                    self.server_obj(py, h)?,
                    h.worker(py, 0, std::process::id(), age)?,
                ],
            )
        });
        // Signals stay blocked from here until the new worker has its own pipe: one arriving in between
        // would otherwise run the master's handler in the child and land in the master's pipe.
        let blocked = signals::block_all();
        let pid = Python::attach(|py| match crate::python::fork(py) {
            Ok(0) => {
                boot::worker_started(py, &self.cfg, &self.log, self.preloaded.is_some());
                if let Some(c) = &self.control {
                    c.close_in_child();
                }
                if let Some(m) = &self.metrics {
                    m.close_in_child();
                }
                self.kernel_log.close_in_child();
                let handle = self.board.worker(slot);
                let preloaded = self.preloaded.as_ref().map(|a| a.clone_ref(py));
                worker::run(
                    py,
                    worker::Boot {
                        cfg: self.cfg.clone(),
                        log: self.log.clone(),
                        listeners: &self.listeners,
                        board: handle,
                        preloaded,
                        hooks: self.hooks.clone(),
                        age,
                        num_workers: self.num_workers,
                        tls: self.tls.clone(),
                    },
                )
            }
            other => other,
        });
        signals::restore(blocked);
        match pid {
            Ok(pid) => {
                self.board.set_pid(slot, pid);
                self.kernel_log.forget(pid);
                self.workers.insert(
                    pid,
                    WorkerProc {
                        slot,
                        aborted: false,
                        age: self.spawned,
                        killed: None,
                        last_rss: 0,
                        oom_kills_at_spawn: self.oom.count(),
                        spawned_at: Instant::now(),
                        cause: None,
                        retired_at: None,
                    },
                );
                Ok(())
            }
            Err(e) => {
                self.board.release(slot);
                Err(Halt {
                    reason: Some(format!("Cannot fork a worker: {e}")),
                    status: 1,
                    graceful: false,
                })
            }
        }
    }

    fn reap_workers(&mut self) -> Result<(), Halt> {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return Ok(()),
                Ok(s) => s,
            };
            let (pid, exitcode, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid.as_raw(), Some(code), None),
                WaitStatus::Signaled(pid, sig, _) => (pid.as_raw(), None, Some(sig)),
                _ => continue,
            };
            let proc = match self.workers.remove(&pid) {
                Some(w) => Some(w),
                None => self
                    .retiring
                    .iter()
                    .position(|(p, _)| *p == pid)
                    .map(|i| self.retiring.swap_remove(i).1),
            };
            if pid == self.reexec_pid && self.reexec_pid != 0 {
                self.reexec_pid = 0;
                self.log.info(&format!("New master (pid:{pid}) exited"));
                continue;
            }
            let Some(proc) = proc else {
                self.log
                    .debug(&format!("Reaped unknown child process (pid:{pid})"));
                continue;
            };
            self.death_was_oom = false;
            if let Some(sig) = signal {
                self.report_signaled(pid, sig, &proc);
            }
            self.count_death(&proc, exitcode, signal);
            let _ = self.hook("child_exit", |py, h| {
                PyTuple::new(
                    py,
                    [
                        self.server_obj(py, h)?,
                        h.worker(py, pid as u32, std::process::id(), proc.age)?,
                    ],
                )
            });
            self.board.release(proc.slot);
            self.note_death(&proc, exitcode, signal);
            if let Some(code) = exitcode.filter(|c| *c != 0) {
                self.log
                    .error(&format!("Worker (pid:{pid}) exited with code {code}."));
                if code == WORKER_BOOT_ERROR {
                    return Err(Halt {
                        reason: Some("Worker failed to boot.".into()),
                        status: WORKER_BOOT_ERROR,
                        graceful: true,
                    });
                }
            }
        }
    }

    /// Crash-loop backoff: a worker that failed within `FAST_DEATH` of its spawn (and was not told to stop)
    /// doubles the wait before the next spawn, up to `MAX_SPAWN_BACKOFF`; a worker that lived resets it.
    fn note_death(&mut self, proc: &WorkerProc, exitcode: Option<i32>, signal: Option<Signal>) {
        if exitcode == Some(WORKER_BOOT_ERROR) {
            return; // the master stops instead
        }
        let failed =
            exitcode.is_some_and(|c| c != 0) || (signal.is_some() && proc.killed.is_none());
        if proc.retired_at.is_some() || !failed || proc.spawned_at.elapsed() >= FAST_DEATH {
            if proc.spawned_at.elapsed() >= FAST_DEATH {
                self.fast_deaths = 0;
                self.next_spawn_at = None;
            }
            return;
        }
        self.fast_deaths += 1;
        let wait = Duration::from_millis(100)
            .saturating_mul(1u32 << self.fast_deaths.min(10))
            .min(MAX_SPAWN_BACKOFF);
        self.next_spawn_at = Some(Instant::now() + wait);
        self.log.warning(&format!(
            "Workers are dying right after they start ({} in a row): waiting {:.1}s before starting another",
            self.fast_deaths,
            wait.as_secs_f64()
        ));
    }

    /// Log a worker's death by signal as gunicorn does, and for SIGKILL say who sent it: the master (and
    /// why), the kernel's OOM killer (the kernel log names the pid), or someone else — with the request it
    /// was running and its last known memory — or that it cannot be told, rather than guess (oom.rs).
    fn report_signaled(&mut self, pid: i32, sig: Signal, proc: &WorkerProc) {
        let msg = format!("Worker (pid:{pid}) was sent {}!", sig.as_str());
        match sig {
            Signal::SIGTERM => return self.log.info(&msg),
            Signal::SIGKILL => {}
            _ => return self.log.warning(&msg),
        }
        let handle = self.board.worker(proc.slot);
        match proc.killed {
            Some(MasterKill::Timeout) => {
                return self.log.error(&format!(
                    "{msg} The master killed it after WORKER TIMEOUT (it did not stop by itself)."
                ))
            }
            Some(MasterKill::SlowBoot) => {
                return self.log.error(&format!(
                    "{msg} The master killed it: it was still loading the app after --timeout {}s and did not stop by itself.",
                    self.cfg.timeout
                ))
            }
            Some(MasterKill::Graceful) => {
                return self.log.error(&format!(
                    "{msg} The master killed it: it did not stop within --graceful-timeout {}s ({}).",
                    self.cfg.graceful_timeout,
                    describe_requests(&handle.requests_in_flight())
                ))
            }
            None => {}
        }
        let request = match handle.oldest_request() {
            Some((_, r)) => format!(
                "request in flight: {}, running for {:.1}s",
                r.summary(),
                r.age_secs()
            ),
            None => "no request in flight".to_string(),
        };
        let rss = if proc.last_rss == 0 {
            // Killed before the master's first sample of it (a second at most after its spawn).
            "RSS not sampled yet".to_string()
        } else {
            format!(
                "last RSS {:.1} MiB",
                proc.last_rss as f64 / (1024.0 * 1024.0)
            )
        };
        let counter = match (proc.oom_kills_at_spawn, self.oom.count(), self.oom.source()) {
            (Some(before), Some(now), Some(path)) => {
                Some((before, now, path.display().to_string()))
            }
            _ => None,
        };
        let cause = match self.kernel_log.names_oom_kill(pid) {
            Some(true) => {
                self.death_was_oom = true;
                return self.log.error(&format!(
                    "{msg} Out of memory: the kernel's OOM killer ended it ({rss}; {request})."
                ))
            }
            Some(false) => {
                // The cgroup's counter may have moved for a sibling: it does not make this death an OOM.
                let others = match &counter {
                    Some((before, now, _)) if now > before => {
                        " (the OOM kills the cgroup counted during its life were of other processes)"
                    }
                    _ => "",
                };
                Ok(format!(
                    "the kernel log ({}) names no OOM kill of pid {pid}{others}",
                    oom::KERNEL_LOG
                ))
            }
            None => match &counter {
                Some((before, now, path)) if now > before => Err(format!(
                    "the cgroup's OOM kill counter ({path}) rose from {before} to {now} during its life, but it counts every process of the cgroup and the kernel log ({}), which names the one killed, cannot be read here",
                    oom::KERNEL_LOG
                )),
                Some((_, _, path)) => Ok(format!("no OOM kill recorded in {path}")),
                None => Err(format!(
                    "no OOM record is readable here (no cgroup oom_kill counter, and the kernel log {} cannot be read)",
                    oom::KERNEL_LOG
                )),
            },
        };
        match cause {
            Ok(checked) => self.log.error(&format!(
                "{msg} Not sent by ferricorn, and {checked}: another process killed it ({rss}; {request})."
            )),
            Err(why) => self.log.error(&format!(
                "{msg} Not sent by ferricorn; who sent it is unknown: {why}. It may be the OOM killer or another process ({rss}; {request})."
            )),
        }
    }

    /// Once a tick: each worker's memory, to report if it is killed, and `--max-worker-memory`: a worker
    /// past the limit is retired gracefully (its current requests finish) and replaced.
    fn sample_workers(&mut self) {
        let limit = self.cfg.max_worker_memory * 1024 * 1024;
        let mut over = Vec::new();
        for (&pid, w) in self.workers.iter_mut() {
            // A dying process reads as 0: keep the last real sample for the report.
            if let Some(rss) = oom::rss_bytes(pid).filter(|r| *r > 0) {
                w.last_rss = rss;
                if limit > 0 && rss > limit {
                    over.push((pid, rss));
                }
            }
        }
        for (pid, rss) in over {
            self.log.warning(&format!(
                "Worker (pid:{pid}) uses {:.1} MiB, above --max-worker-memory {} MiB: replacing it after its current requests",
                rss as f64 / (1024.0 * 1024.0),
                self.cfg.max_worker_memory
            ));
            self.retire(
                pid,
                Some(Signal::SIGTERM),
                Some(crate::metrics::Cause::MaxWorkerMemory),
            );
        }
    }

    /// Starvation: every app thread of every worker is busy and connections wait (in the listen backlog
    /// or inside a worker). After a second of it, a WARNING names the requests holding the capacity, and
    /// says so again for every later episode (starvation.rs has the rules). The waiting requests are still
    /// served as threads free up.
    fn check_starvation(&mut self) {
        let mut capacity = 0;
        let mut busy = Vec::new();
        let mut inside = 0u64;
        for (&pid, w) in &self.workers {
            let handle = self.board.worker(w.slot);
            inside += handle.waiting() as u64;
            capacity += self.worker_capacity(handle);
            busy.extend(
                handle
                    .requests_in_flight()
                    .into_iter()
                    .filter(|(t, _)| !self.is_overflow_entry(*t))
                    .map(|(_, r)| (pid, r)),
            );
        }
        let backlog: u64 = self
            .listeners
            .iter()
            .map(|l| crate::sock::accept_queue_len(l.fd()) as u64)
            .sum();
        self.peak_busy_threads = self.peak_busy_threads.max(busy.len());
        self.peak_waiting = self.peak_waiting.max(backlog + inside);
        let starved = capacity > 0 && busy.len() >= capacity && backlog + inside > 0;
        self.note_starvation(starved, backlog);
        self.scale_workers(starved, busy.len(), capacity);
        let lasted = match self.starvation.observe(starved, Instant::now()) {
            starvation::Report::Nothing => return,
            starvation::Report::Ended(lasted) => {
                return self.log.info(&format!(
                    "Starvation is over: no connection waits for a worker thread any more (it lasted {:.1}s).",
                    lasted.as_secs_f64()
                ))
            }
            starvation::Report::Warn(lasted) => lasted,
        };
        busy.sort_by_key(|(_, r)| r.started_ns);
        let holders: Vec<String> = busy
            .iter()
            .map(|(pid, r)| {
                format!(
                    "{} {} ({:.1}s, worker {pid})",
                    r.method,
                    r.path,
                    r.age_secs()
                )
            })
            .collect();
        self.log.warning(&format!(
            "All {capacity} worker threads are busy and {} connections are waiting ({backlog} in the listen backlog, {inside} inside workers) for {:.1}s. Holding the capacity: {}. Find what these requests wait on, or raise --workers/--threads.",
            backlog + inside,
            lasted.as_secs_f64(),
            holders.join(", ")
        ));
    }

    /// The requests a worker runs at once now: its app threads as it last published them (they change
    /// with elastic threads), or for asgi `--worker-connections`.
    pub(super) fn worker_capacity(&self, handle: crate::scoreboard::WorkerHandle) -> usize {
        let configured = self
            .cfg
            .worker_class
            .capacity(self.cfg.threads, self.cfg.worker_connections);
        match self.cfg.worker_class {
            crate::config::WorkerClass::Asgi => configured,
            _ => handle.threads(configured),
        }
    }

    /// Whether scoreboard entry `t` of a worker is its overflow lane's (loopback calls, outside the
    /// capacity): for thread workers the entries right after `--threads` (added threads come after them).
    fn is_overflow_entry(&self, t: usize) -> bool {
        let base = self.cfg.worker_class.threads(self.cfg.threads);
        self.cfg.worker_class != crate::config::WorkerClass::Asgi
            && (base..base + worker::MAX_OVERFLOW_THREADS).contains(&t)
    }

    /// `--timeout`: a worker whose request has run too long, or whose I/O loop stopped beating, is
    /// aborted; if it is still there on the next tick, killed.
    fn murder_workers(&mut self) {
        if self.cfg.timeout == 0 {
            return;
        }
        // The worker enforces `--timeout` per request itself (504 to the client, the stack in the log) and
        // then stops gracefully; the master steps in only when that did not happen: the I/O loop stopped
        // beating, or a request is still there well after the worker should have given up on it.
        let limit = self.cfg.timeout * 1_000_000_000;
        let request_limit = limit + (self.cfg.graceful_timeout + 2) * 1_000_000_000;
        let now = now_ns();
        let mut to_abort = Vec::new();
        let mut slow_boots = Vec::new();
        for (&pid, w) in self.workers.iter_mut() {
            let handle = self.board.worker(w.slot);
            if handle.state() == WorkerState::Booting {
                // Still importing the app: not a request timeout, and said so.
                if now.saturating_sub(handle.booted_ns()) > limit {
                    if w.aborted {
                        w.killed = Some(MasterKill::SlowBoot);
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    } else {
                        w.aborted = true;
                        slow_boots.push(pid);
                    }
                }
                continue;
            }
            let stale_heartbeat = now.saturating_sub(handle.last_heartbeat_ns()) > limit;
            let oldest = handle.oldest_request();
            let stuck = oldest
                .as_ref()
                .filter(|(_, r)| now.saturating_sub(r.started_ns) > request_limit);
            if !stale_heartbeat && stuck.is_none() {
                continue;
            }
            if w.aborted {
                w.killed = Some(MasterKill::Timeout);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                continue;
            }
            w.aborted = true;
            // Name the request in flight whether the request or the I/O loop's heartbeat ran out.
            to_abort.push((pid, oldest.map(|(_, r)| r)));
        }
        for pid in slow_boots {
            self.log.error(&format!(
                "Worker (pid:{pid}) is still loading the app after --timeout {}s: a slow boot, not a request timeout. Python stack of the import (most recent call first):",
                self.cfg.timeout
            ));
            self.kill_worker(pid, Signal::SIGABRT);
        }
        for (pid, req) in to_abort {
            self.log.critical(&format!("WORKER TIMEOUT (pid:{pid})"));
            if let Some(r) = req {
                let secs = now.saturating_sub(r.started_ns) as f64 / 1e9;
                let client = if r.client.is_empty() {
                    "-".to_string()
                } else {
                    r.client.clone()
                };
                self.log.critical(&format!(
                    "Request in flight on worker {pid}: {} {} from {client}, running for {secs:.1}s",
                    r.method, r.path
                ));
            }
            self.kill_worker(pid, Signal::SIGABRT);
        }
    }

    /// Every worker the master still has, counted or retiring, with its scoreboard slot.
    fn all_workers(&self) -> Vec<(i32, usize)> {
        self.workers
            .iter()
            .map(|(pid, w)| (*pid, w.slot))
            .chain(self.retiring.iter().map(|(pid, w)| (*pid, w.slot)))
            .collect()
    }

    /// Stop the workers: TERM (graceful) or QUIT (quick), wait up to `--graceful-timeout`, then SIGKILL.
    /// As gunicorn, but said in the log: the requests a graceful stop waits for, and at the deadline the
    /// workers still there, with what they run, and that the master kills them. (Each worker answers its
    /// unfinished requests itself just before that deadline and exits, see worker/stop.rs; the SIGKILL is
    /// for a worker that could not.)
    fn stop(&mut self, graceful: bool) {
        // During a USR2 upgrade the other master still serves on these sockets: leave their files.
        if self.reexec_pid == 0 && self.reexec_parent.is_none() {
            for l in &self.listeners {
                l.unlink();
            }
        } else if let Some(m) = &mut self.metrics {
            m.keep_path();
        }
        self.listeners.clear();
        let mut quick = !graceful;
        self.signal_workers(if graceful {
            Signal::SIGTERM
        } else {
            Signal::SIGQUIT
        });
        for (pid, _) in &self.retiring {
            self.kill_worker(
                *pid,
                if graceful {
                    Signal::SIGTERM
                } else {
                    Signal::SIGQUIT
                },
            );
        }
        let deadline = Instant::now() + Duration::from_secs(self.cfg.graceful_timeout);
        if graceful {
            let running: Vec<String> = self
                .all_workers()
                .into_iter()
                .flat_map(|(pid, slot)| {
                    self.board
                        .worker(slot)
                        .requests_in_flight()
                        .into_iter()
                        .map(move |(_, r)| {
                            format!(
                                "{} (worker {pid}, running for {:.1}s)",
                                r.summary(),
                                r.age_secs()
                            )
                        })
                })
                .collect();
            if !running.is_empty() {
                let n = running.len();
                self.log.info(&format!(
                    "Waiting up to --graceful-timeout {}s for {n} request{} in flight: {}",
                    self.cfg.graceful_timeout,
                    if n == 1 { "" } else { "s" },
                    running.join("; ")
                ));
            }
        }
        while (!self.workers.is_empty() || !self.retiring.is_empty()) && Instant::now() < deadline {
            if !quick {
                let sigs = self.sigpipe.drain();
                if sigs
                    .iter()
                    .any(|s| *s == Signal::SIGINT || *s == Signal::SIGQUIT)
                {
                    self.log.info("Quick shutdown requested");
                    quick = true;
                    self.signal_workers(Signal::SIGQUIT);
                }
            }
            let _ = self.reap_workers();
            // Scrapes and health checks are still answered: readiness says the server is stopping.
            self.serve_metrics_for(Duration::from_millis(50));
        }
        // Whoever is still there is killed, and the log says so before the deaths are reported.
        let _ = self.reap_workers();
        for (pid, slot) in self.all_workers() {
            let running = describe_requests(&self.board.worker(slot).requests_in_flight());
            self.log.warning(&format!(
                "Worker (pid:{pid}) did not stop within --graceful-timeout {}s: killing it ({running})",
                self.cfg.graceful_timeout
            ));
        }
        for w in self.workers.values_mut() {
            w.killed.get_or_insert(MasterKill::Graceful);
        }
        for (_, w) in self.retiring.iter_mut() {
            w.killed.get_or_insert(MasterKill::Graceful);
        }
        self.signal_workers(Signal::SIGKILL);
        for (pid, _) in &self.retiring {
            self.kill_worker(*pid, Signal::SIGKILL);
        }
        let wait_until = Instant::now() + Duration::from_secs(2);
        while (!self.workers.is_empty() || !self.retiring.is_empty()) && Instant::now() < wait_until
        {
            let _ = self.reap_workers();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn halt(mut self, py: Python<'_>, halt: Halt) -> i32 {
        crate::system::master_stopping(&self.log);
        self.stopping = true;
        self.halting = true;
        // Answer what is pending and remove the socket file before the (possibly long) stop.
        drop(self.control.take());
        py.detach(|| self.stop(halt.graceful));
        let msg = "Shutting down: Master";
        if halt.status == 0 {
            self.log.info(msg);
        } else {
            self.log.error(msg);
        }
        if let Some(reason) = &halt.reason {
            if halt.status == 0 {
                self.log.info(&format!("Reason: {reason}"));
            } else {
                self.log.error(&format!("Reason: {reason}"));
            }
        }
        let _ = self.hook("on_exit", |py, h| {
            PyTuple::new(py, [self.server_obj(py, h)?])
        });
        halt.status
    }
}
