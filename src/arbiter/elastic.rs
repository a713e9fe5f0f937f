//! Elastic workers (`--max-workers`): while starvation lasts (every app thread of every worker busy and
//! connections waiting), the master adds a worker, one at a time, up to `--max-workers`; once no
//! starvation has been seen for `--elastic-idle-timeout` and the busiest moment of that period would
//! have fit in one worker fewer, it retires the newest added worker gracefully. The workers that
//! `--workers`, `TTIN` and `TTOU` ask for are the base: only the added ones are retired here, and the
//! ceiling is never below the base.
//!
//! Threads come first: a gthread worker whose busy threads wait on I/O adds threads itself
//! (`worker::elastic`) within a fraction of a second, which raises the capacity the master sees, so
//! starvation that outlasts `STEP` is what threads did not relieve — typically views that compute,
//! where another process (another GIL, another core) is the relief.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::Arbiter;

/// How long starvation must last before a worker is added, and the least time between two additions:
/// long enough for a worker's threads to have grown first and for the last added worker to boot and
/// take connections (a worker in `Booting` also holds the next addition back).
pub const STEP: Duration = Duration::from_secs(2);

/// The master's elastic-workers state.
pub struct WorkerScaling {
    /// Workers added beyond the base, running now.
    pub added: usize,
    starved_since: Option<Instant>,
    last_change: Option<Instant>,
    /// Since when no starvation has been seen, and the most threads busy at once since then.
    quiet_since: Instant,
    peak_busy: usize,
    /// Scale events since the master started (`ferricorn_scale_events_total`).
    pub ups: u64,
    pub downs: u64,
}

impl Default for WorkerScaling {
    fn default() -> Self {
        WorkerScaling {
            added: 0,
            starved_since: None,
            last_change: None,
            quiet_since: Instant::now(),
            peak_busy: 0,
            ups: 0,
            downs: 0,
        }
    }
}

impl Arbiter {
    /// Workers the master keeps now: the base (`--workers`, TTIN/TTOU) and those added under
    /// starvation, within `--max-workers`.
    pub(super) fn target_workers(&self) -> usize {
        (self.num_workers + self.scaling.added).min(self.cfg.max_workers_for(self.num_workers))
    }

    /// Once a tick, after the starvation check: `busy` threads of `capacity`, starved or not.
    pub(super) fn scale_workers(&mut self, starved: bool, busy: usize, capacity: usize) {
        let now = Instant::now();
        // TTOU or a reload may have lowered the ceiling under the added workers.
        self.scaling.added = self.target_workers() - self.num_workers;
        let ceiling = self.cfg.max_workers_for(self.num_workers);
        if ceiling <= self.num_workers {
            return;
        }
        if starved {
            self.scaling.quiet_since = now;
            self.scaling.peak_busy = capacity;
            let since = *self.scaling.starved_since.get_or_insert(now);
            let booting = self.workers.values().any(|w| {
                self.board.worker(w.slot).state() == crate::scoreboard::WorkerState::Booting
            });
            let due = now.duration_since(since) >= STEP
                && self
                    .scaling
                    .last_change
                    .is_none_or(|t| now.duration_since(t) >= STEP);
            if due && !booting && self.target_workers() < ceiling {
                let from = self.target_workers();
                self.scaling.added += 1;
                self.scaling.ups += 1;
                self.scaling.last_change = Some(now);
                self.log.info(&format!(
                    "Workers: {from} -> {} (up to --max-workers {ceiling}): all {capacity} threads have been busy with connections waiting for {:.1}s",
                    from + 1,
                    now.duration_since(since).as_secs_f64()
                ));
            }
            return;
        }
        self.scaling.starved_since = None;
        self.scaling.peak_busy = self.scaling.peak_busy.max(busy);
        let idle_after = Duration::from_secs(self.cfg.elastic_idle_timeout.max(1));
        if self.scaling.added == 0 || now.duration_since(self.scaling.quiet_since) < idle_after {
            return;
        }
        // The newest worker goes: would the busiest moment of the period have fit without it?
        let Some((&pid, newest)) = self.workers.iter().max_by_key(|(_, w)| w.age) else {
            return;
        };
        let its_threads = self
            .board
            .worker(newest.slot)
            .threads(self.cfg.worker_class.threads(self.cfg.threads));
        let peak = self.scaling.peak_busy;
        self.scaling.quiet_since = now;
        self.scaling.peak_busy = busy;
        if peak + its_threads > capacity {
            return;
        }
        let from = self.target_workers();
        self.scaling.added -= 1;
        self.scaling.downs += 1;
        self.scaling.last_change = Some(now);
        self.log.info(&format!(
            "Workers: {from} -> {}: no starvation for {}s and at most {peak} of {capacity} threads busy at once (--elastic-idle-timeout); retiring worker {pid}, the newest",
            from - 1,
            idle_after.as_secs()
        ));
        self.retire(
            pid,
            Some(Signal::SIGTERM),
            Some(crate::metrics::Cause::ScaleDown),
        );
    }
}
