//! What the master tells about itself: the `--metrics-bind` listener served inside its loop, the
//! metrics snapshot a scrape reads (scoreboard totals, dead workers' totals, restarts by cause,
//! starvation seconds, RSS), liveness and readiness, and the graceful stop's readiness window
//! (`--shutdown-delay`).

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{oom, Arbiter, Halt, MasterKill, WorkerProc};
use crate::config::{Config, WorkerClass};
use crate::log::ErrorLog;
use crate::metrics::health::{self, Health, WorkerView};
use crate::metrics::server::{MetricsServer, Observed, INHERITED_FD_ENV};
use crate::metrics::{statsd, Cause, Snapshot, WorkerSample};
use crate::scoreboard::{now_ns, StopReason};

/// Open the metrics listener `--metrics-bind` asks for; one that cannot be bound stops the start.
pub(super) fn open(cfg: &Config, log: &ErrorLog) -> std::io::Result<Option<MetricsServer>> {
    let Some(addr) = &cfg.metrics_bind else {
        return Ok(None);
    };
    // A master started by USR2 serves on the old master's listener, which it inherited.
    let inherited = std::env::var(INHERITED_FD_ENV).ok();
    std::env::remove_var(INHERITED_FD_ENV);
    if let Some(fd) = inherited.and_then(|v| v.parse::<RawFd>().ok()) {
        match MetricsServer::adopt(fd) {
            Ok(server) => {
                log.info(&format!(
                    "Metrics listening at {} (/metrics, /healthz, /readyz), taken over from the master that started this one",
                    server.address
                ));
                return Ok(Some(server));
            }
            Err(e) => log.warning(&format!(
                "Cannot serve metrics on the inherited listener: {e}; binding {}",
                addr.spec()
            )),
        }
    }
    match MetricsServer::bind(addr) {
        Ok(server) => {
            log.info(&format!(
                "Metrics listening at {} (/metrics, /healthz, /readyz)",
                server.address
            ));
            Ok(Some(server))
        }
        // A master started by USR2 from an older build (which hands no listener over) finds the
        // address held by the old master: run without the listener rather than fail the upgrade.
        Err(e)
            if e.kind() == std::io::ErrorKind::AddrInUse
                && std::env::var_os(crate::system::REEXEC_ENV).is_some() =>
        {
            log.warning(&format!(
                "Metrics address {} is still held by the old master: this master runs without it (restart to serve metrics again)",
                addr.spec()
            ));
            Ok(None)
        }
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {}: {e}", addr.spec()),
        )),
    }
}

impl Arbiter {
    /// TERM (or `shutdown graceful`): readiness turns false at once; with `--shutdown-delay` the server
    /// goes on serving that long (so a load balancer sees `/readyz` fail and stops sending) before the
    /// stop proper closes the listeners. A second TERM during the delay stops at once.
    pub(super) fn begin_graceful_stop(&mut self) -> Result<(), Halt> {
        let halt = Halt {
            reason: None,
            status: 0,
            graceful: true,
        };
        self.stopping = true;
        if self.cfg.shutdown_delay == 0 || self.drain_until.is_some() {
            return Err(halt);
        }
        self.drain_until = Some(Instant::now() + Duration::from_secs(self.cfg.shutdown_delay));
        self.log.info(&format!(
            "Graceful stop: not ready any more; serving {}s more (--shutdown-delay) before the listeners close",
            self.cfg.shutdown_delay
        ));
        Ok(())
    }

    /// The end of `--shutdown-delay`: the graceful stop proper.
    pub(super) fn drain_over(&mut self) -> Result<(), Halt> {
        match self.drain_until {
            Some(t) if Instant::now() >= t => Err(Halt {
                reason: None,
                status: 0,
                graceful: true,
            }),
            _ => Ok(()),
        }
    }

    pub(super) fn serve_metrics(&mut self) {
        if let Some(mut server) = self.metrics.take() {
            server.handle_ready(self);
            self.metrics = Some(server);
        }
    }

    /// Wait up to `d`, answering the metrics listener meanwhile (the stop's waits).
    pub(super) fn serve_metrics_for(&mut self, d: Duration) {
        let Some(fd) = self.metrics.as_ref().map(MetricsServer::fd) else {
            std::thread::sleep(d);
            return;
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        unsafe { libc::poll(&mut pfd, 1, d.as_millis() as i32) };
        self.serve_metrics();
    }

    /// Once a tick, from the starvation check: its seconds, and the backlog statsd gauge.
    pub(super) fn note_starvation(&mut self, starved: bool, backlog: u64) {
        let now = Instant::now();
        if let Some(last) = self.starvation_checked.replace(now) {
            if starved {
                // Bounded: a loop that stalled is not starvation of that whole length.
                self.starvation_secs += now.duration_since(last).as_secs_f64().min(2.0);
            }
        }
        if self.cfg.enable_backlog_metric {
            if let Some(s) = statsd::get() {
                // gunicorn sends it as a histogram.
                s.send(&[("gunicorn.backlog", backlog as f64, statsd::Kind::Timer)]);
            }
        }
    }

    /// A worker was reaped: its totals join the master's, and its death is counted under its cause
    /// (unless the master is stopping them all).
    pub(super) fn count_death(
        &mut self,
        proc: &WorkerProc,
        exitcode: Option<i32>,
        signal: Option<Signal>,
    ) {
        let handle = self.board.worker(proc.slot);
        self.retired_stats.add(&handle.request_stats());
        if self.halting {
            return;
        }
        let cause = if self.death_was_oom {
            Cause::Oom
        } else if matches!(
            proc.killed,
            Some(MasterKill::Timeout) | Some(MasterKill::SlowBoot)
        ) || proc.aborted
        {
            Cause::Timeout
        } else if let Some(c) = proc.cause {
            c
        } else {
            match handle.stop_reason() {
                StopReason::MaxRequests => Cause::MaxRequests,
                StopReason::Timeout => Cause::Timeout,
                StopReason::None => match signal {
                    Some(
                        Signal::SIGKILL
                        | Signal::SIGTERM
                        | Signal::SIGINT
                        | Signal::SIGQUIT
                        | Signal::SIGHUP,
                    ) => Cause::OutsideKill,
                    Some(_) => Cause::Crash,
                    None if exitcode != Some(0) => Cause::Crash,
                    None => Cause::OutsideKill,
                },
            }
        };
        self.restarts.count(cause);
    }

    fn procs(&self) -> impl Iterator<Item = (i32, &WorkerProc)> {
        self.workers
            .iter()
            .map(|(pid, w)| (*pid, w))
            .chain(self.retiring.iter().map(|(pid, w)| (*pid, w)))
    }

    /// What a scrape reports, read now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        // An ASGI worker's "threads" are the requests it runs at once (`--worker-connections`).
        let per_worker = self
            .cfg
            .worker_class
            .capacity(self.cfg.threads, self.cfg.worker_connections);
        let has_loop = self.cfg.worker_class == WorkerClass::Asgi;
        let mut s = Snapshot {
            worker_class: self
                .cfg
                .worker_class
                .with_threads(self.cfg.threads)
                .name()
                .to_string(),
            requests: self.retired_stats.clone(),
            workers_target: self.target_workers() as u64,
            workers_added: self.scaling.ups,
            workers_retired: self.scaling.downs,
            restarts: self.restarts.clone(),
            starvation_seconds: self.starvation_secs,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            ..Snapshot::default()
        };
        for (pid, w) in self.procs() {
            let handle = self.board.worker(w.slot);
            s.requests.add(&handle.request_stats());
            let busy = handle.requests_in_flight().len() as u64;
            let waiting = handle.waiting() as u64;
            s.busy_threads += busy;
            s.waiting_inside += waiting;
            let threads = handle.threads(per_worker) as u64;
            if self.workers.contains_key(&pid) {
                s.total_threads += threads;
            }
            s.workers.push(WorkerSample {
                pid,
                rss_bytes: oom::rss_bytes(pid),
                busy_threads: busy,
                threads,
                waiting,
                loop_lag_seconds: has_loop.then(|| handle.loop_lag_ns().0 as f64 / 1e9),
            });
        }
        s.waiting_backlog = self
            .listeners
            .iter()
            .map(|l| crate::sock::accept_queue_len(l.fd()) as u64)
            .sum();
        let h = self.judge_health();
        s.live = h.live;
        s.ready = h.ready;
        s
    }

    pub(crate) fn judge_health(&self) -> Health {
        let per_worker = self.cfg.worker_class.threads(self.cfg.threads);
        let views: Vec<WorkerView> = self
            .procs()
            .map(|(pid, w)| {
                let handle = self.board.worker(w.slot);
                let beats = handle.thread_beats(per_worker);
                WorkerView {
                    pid,
                    state: handle.state(),
                    heartbeat_ns: handle.last_heartbeat_ns(),
                    threads: beats
                        .into_iter()
                        .enumerate()
                        .map(|(t, b)| (b, handle.thread_request_started_ns(t)))
                        .collect(),
                    loop_overdue_ns: handle.loop_lag_ns().1,
                }
            })
            .collect();
        health::judge(now_ns(), &views, self.cfg.timeout, self.stopping)
    }
}

impl Observed for Arbiter {
    fn exposition(&mut self) -> String {
        crate::metrics::render(&self.snapshot())
    }

    fn health(&mut self) -> Health {
        self.judge_health()
    }
}
