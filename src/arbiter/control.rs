//! The master's side of the control socket: opening it from the configuration, polling it together with
//! the signal pipe, and answering its commands from the master's own state ([`ControlTarget`]).
//!
//! Actions that fork or end the loop (reload, shutdown) are not run while the control server is handling
//! a request: they are left in [`Pending`] and carried out by the loop right after.

use std::io;
use std::path::Path;

use nix::sys::signal::Signal;

use super::{oom, Arbiter, Halt};
use crate::config::{Config, SETTINGS};
use crate::control::{
    self, BusyThread, ControlCommand, ControlServer, ControlTarget, ListenerInfo, Outcome,
    RecentRequest, Stats, ThreadStack, WorkerInfo, WorkerStacks,
};
use crate::log::ErrorLog;
use crate::scoreboard::{now_ns, WorkerState, MAX_WORKERS};
use crate::sock::ListenAddr;

/// What control commands asked the loop to do once the control server is done.
#[derive(Default)]
pub(super) struct Pending {
    reload: bool,
    halt: Option<Halt>,
}

/// Open the control socket the configuration asks for. An explicit `--control-socket` that cannot be
/// created stops the start. The default one, when another live server holds it, is replaced by a socket
/// of this server's own beside it (`ferricorn.PID.ctl`, see [`control::own_socket_path`]), with a
/// warning naming both; any other failure only earns a warning (the server runs without one).
pub(super) fn open(cfg: &Config, log: &ErrorLog) -> io::Result<Option<ControlServer>> {
    if cfg.control_socket_disable {
        log.debug("Control socket disabled");
        return Ok(None);
    }
    let (path, explicit) = match &cfg.control_socket {
        Some(p) => (crate::system::absolute(Path::new(p)), true),
        None => (control::default_socket_path_from_env(), false),
    };
    let without = |path: &Path, e: &io::Error| {
        log.warning(&format!(
            "Control socket not created at {}: {e}; running without one \
             (choose a path with --control-socket, or --no-control-socket)",
            path.display()
        ));
    };
    match ControlServer::bind(&path, cfg.control_socket_mode, log.clone()) {
        Ok(server) => Ok(Some(server)),
        Err(e) if explicit => Err(io::Error::new(
            e.kind(),
            format!("cannot create the control socket {}: {e}", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            // Never take a live server's socket (gunicorn would): a bare `ferricornctl` keeps reaching
            // that server, and this one is reached through its own.
            let own = control::own_socket_path(&path, std::process::id());
            let holder = match control::live_server(&path) {
                Some(Some(pid)) => format!("another server (pid {pid})"),
                _ => "another server".to_string(),
            };
            log.warning(&format!(
                "Control socket {} belongs to {holder}: this server's is {} instead \
                 (ferricornctl -s {}, or --control-socket PATH to choose one)",
                path.display(),
                own.display(),
                own.display()
            ));
            match ControlServer::bind(&own, cfg.control_socket_mode, log.clone()) {
                Ok(server) => Ok(Some(server)),
                Err(e) => {
                    without(&own, &e);
                    Ok(None)
                }
            }
        }
        Err(e) => {
            without(&path, &e);
            Ok(None)
        }
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Arbiter {
    /// The loop's sleep: wait up to `timeout_ms` for a signal or control socket activity, serve the
    /// control socket, then run what its commands left for the loop.
    pub(super) fn wait_and_serve_control(&mut self, timeout_ms: i32) -> Result<(), Halt> {
        let mut fds = [
            libc::pollfd {
                fd: self.sigpipe.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // poll() ignores a negative descriptor.
                fd: self.control.as_ref().map_or(-1, ControlServer::fd),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self
                    .metrics
                    .as_ref()
                    .map_or(-1, crate::metrics::server::MetricsServer::fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds we own.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if let Some(mut server) = self.control.take() {
            server.handle_ready(self);
            self.control = Some(server);
        }
        self.serve_metrics();
        if std::mem::take(&mut self.control_pending.reload) {
            self.reload();
        }
        match self.control_pending.halt.take() {
            Some(h) if h.graceful => self.begin_graceful_stop(),
            Some(h) => Err(h),
            None => Ok(()),
        }
    }
}

impl ControlTarget for Arbiter {
    fn workers(&self) -> Vec<WorkerInfo> {
        let now = now_ns();
        let tasks = self.cfg.worker_class == crate::config::WorkerClass::Asgi;
        let current = self.workers.iter().map(|(pid, w)| (*pid, w, false));
        let retiring = self.retiring.iter().map(|(pid, w)| (*pid, w, true));
        let mut out: Vec<WorkerInfo> = current
            .chain(retiring)
            .map(|(pid, w, retiring)| {
                let handle = self.board.worker(w.slot);
                let in_flight = handle
                    .requests_in_flight()
                    .into_iter()
                    .map(|(thread, r)| BusyThread {
                        thread,
                        elapsed_secs: secs(now.saturating_sub(r.started_ns)),
                        method: r.method,
                        path: r.path,
                        client: r.client,
                        task_state: tasks.then(|| r.wait.describe()),
                    })
                    .collect();
                WorkerInfo {
                    pid,
                    spawn_order: w.age,
                    age_secs: secs(now.saturating_sub(handle.booted_ns())),
                    state: handle.state(),
                    retiring,
                    aborted: w.aborted,
                    requests: handle.requests(),
                    rss_bytes: oom::rss_bytes(pid),
                    heartbeat_age_secs: secs(now.saturating_sub(handle.last_heartbeat_ns())),
                    in_flight,
                }
            })
            .collect();
        out.sort_by_key(|w| w.spawn_order);
        out
    }

    fn stats(&self) -> Stats {
        let mut s = Stats {
            pid: std::process::id(),
            workers_current: self.workers.len(),
            workers_target: self.target_workers(),
            workers_spawned: self.spawned,
            workers_retiring: self.retiring.len(),
            reloads: self.reloads,
            // As the workers' threads are now (elastic threads change them); a worker still to come
            // counts with the configured threads.
            capacity: self
                .workers
                .values()
                .map(|w| self.worker_capacity(self.board.worker(w.slot)))
                .sum::<usize>()
                + self.target_workers().saturating_sub(self.workers.len())
                    * self
                        .cfg
                        .worker_class
                        .capacity(self.cfg.threads, self.cfg.worker_connections),
            peak_busy_threads: self.peak_busy_threads,
            peak_waiting: self.peak_waiting,
            ..Stats::default()
        };
        let slots = self
            .workers
            .values()
            .chain(self.retiring.iter().map(|(_, w)| w));
        for w in slots {
            let handle = self.board.worker(w.slot);
            s.requests += handle.requests();
            if handle.state() == WorkerState::Busy {
                s.busy_workers += 1;
            }
            s.busy_threads += handle.requests_in_flight().len();
        }
        s
    }

    fn config(&self) -> Vec<(String, String)> {
        SETTINGS
            .iter()
            .map(|s| (s.name.to_string(), (s.show)(&self.cfg)))
            .collect()
    }

    fn listeners(&self) -> Vec<ListenerInfo> {
        self.listeners
            .iter()
            .map(|l| ListenerInfo {
                address: l.addr.to_string(),
                kind: match &l.addr {
                    ListenAddr::Tcp(a) if a.is_ipv6() => "tcp6",
                    ListenAddr::Tcp(_) => "tcp",
                    ListenAddr::Unix(_) => "unix",
                },
                fd: l.fd(),
            })
            .collect()
    }

    fn stacks(&self) -> Vec<WorkerStacks> {
        let Some(snaps) = crate::snapshot::Snapshots::get() else {
            return Vec::new();
        };
        let now = now_ns();
        let ages_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let ago = |ns: u64| secs(now.saturating_sub(ns));
        let tasks = self.cfg.worker_class == crate::config::WorkerClass::Asgi;
        let mut slots: Vec<(i32, u64, usize)> = self
            .workers
            .iter()
            .map(|(pid, w)| (*pid, w.age, w.slot))
            .chain(self.retiring.iter().map(|(pid, w)| (*pid, w.age, w.slot)))
            .collect();
        slots.sort_by_key(|(_, age, _)| *age);
        slots
            .into_iter()
            .map(|(pid, _, slot)| {
                // The next tick of the worker answers; this reply carries the previous snapshot.
                snaps.request(slot);
                let snapshot = snaps.read(slot, pid);
                let records = snapshot
                    .as_ref()
                    .map(|s| crate::snapshot::parse(&s.text))
                    .unwrap_or_default();
                let threads = self
                    .board
                    .worker(slot)
                    .requests_in_flight()
                    .into_iter()
                    .map(|(thread, r)| {
                        let stack = records.iter().find_map(|rec| match rec {
                            crate::snapshot::Record::Stack {
                                thread: t,
                                started_ns,
                                lines,
                            } if *t == thread && *started_ns == r.started_ns => Some(lines.clone()),
                            _ => None,
                        });
                        ThreadStack {
                            request: BusyThread {
                                thread,
                                elapsed_secs: ago(r.started_ns),
                                method: r.method,
                                path: r.path,
                                client: r.client,
                                task_state: tasks.then(|| r.wait.describe()),
                            },
                            stack,
                        }
                    })
                    .collect();
                let recent = records
                    .iter()
                    .filter_map(|rec| match rec {
                        crate::snapshot::Record::Finished(f) => Some(RecentRequest {
                            thread: f.thread,
                            method: f.method.clone(),
                            path: f.target.clone(),
                            started_secs_ago: ago(f.started_ns),
                            finished_secs_ago: ago(f.finished_ns),
                        }),
                        _ => None,
                    })
                    .collect();
                WorkerStacks {
                    pid,
                    ages_at,
                    snapshot_age_secs: snapshot.map(|s| ago(s.taken_ns)),
                    threads,
                    recent,
                }
            })
            .collect()
    }

    fn metrics(&self) -> Option<crate::metrics::Snapshot> {
        Some(self.snapshot())
    }

    fn health(&self) -> Option<crate::metrics::health::Health> {
        Some(self.judge_health())
    }

    fn command(&mut self, cmd: ControlCommand) -> Result<Outcome, String> {
        match cmd {
            ControlCommand::AddWorkers(n) => {
                let previous = self.num_workers;
                let total = previous.saturating_add(n).min(MAX_WORKERS);
                if total == previous {
                    return Err(format!("Already at the maximum of {MAX_WORKERS} workers"));
                }
                // The loop spawns them next (as after TTIN).
                self.change_worker_count(total);
                Ok(Outcome::Workers { previous, total })
            }
            ControlCommand::RemoveWorkers(n) => {
                let previous = self.num_workers;
                // The loop retires the oldest (as after TTOU); at least one worker stays.
                let total = previous.saturating_sub(n).max(1);
                self.change_worker_count(total);
                Ok(Outcome::Workers { previous, total })
            }
            ControlCommand::KillWorker(pid) => {
                let known =
                    self.workers.contains_key(&pid) || self.retiring.iter().any(|(p, _)| *p == pid);
                if !known {
                    return Err(format!("Worker {pid} not found"));
                }
                // Graceful, as gunicorn's `worker kill`; once it is reaped the loop starts a new one.
                if let Some(w) = self.workers.get_mut(&pid) {
                    w.cause.get_or_insert(crate::metrics::Cause::Control);
                }
                self.kill_worker(pid, Signal::SIGTERM);
                Ok(Outcome::Killed(pid))
            }
            ControlCommand::Reload => {
                self.control_pending.reload = true;
                Ok(Outcome::Done)
            }
            ControlCommand::Reopen => {
                self.log
                    .reopen()
                    .map_err(|e| format!("Cannot reopen the error log: {e}"))?;
                self.signal_workers(Signal::SIGUSR1);
                Ok(Outcome::Done)
            }
            ControlCommand::Shutdown { graceful } => {
                self.control_pending.halt = Some(Halt {
                    reason: None,
                    status: 0,
                    graceful,
                });
                Ok(Outcome::Done)
            }
        }
    }
}
