//! Elastic threads: a gthread worker adds app threads while requests wait for its busy ones (in its run
//! queue or, not accepted yet, in the listen backlog) *and* those busy threads wait with the GIL
//! released (on I/O: a socket, a database, `time.sleep`), and retires the added ones once they have not
//! been needed for `--elastic-idle-timeout`. Up to `--max-threads`
//! (`Config::max_threads_per_worker`); the `--threads` the worker started with never retire.
//!
//! Whether more threads would help is measured, not assumed. Over `GROW_WINDOW` of requests waiting, the
//! worker sums what its ordinary threads asked of the CPUs: time on a CPU plus time runnable but waiting
//! for one (the kernel's per-thread `schedstat`; without it, the thread CPU clock). A thread waiting for
//! the GIL sleeps and asks for nothing, so the sum is the demand on the GIL (and on the machine) of the
//! Python code running: close to one CPU when the views compute — where another thread would only
//! queue for the GIL — and a small fraction when they wait. Threads are added only below `GIL_BOUND`.
//!
//! Everything here runs on the I/O thread, from admission's watcher (every 50 ms): it reads the run queue
//! and capacity (`Admission`), starts threads through the runtime, and asks `runtime::pool::Threads` for
//! retirements, which idle added threads take. Each change is one INFO line (from how many threads to how
//! many, and why) and a counted event (`ferricorn_scale_events_total`).

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::Admission;
use crate::runtime::{RunQueue, WorkerContext};
use crate::scoreboard::Event;

/// How long requests must have waited for a thread, without a break, before threads are added; the
/// CPU demand of the busy threads is measured over this span. Longer than it takes to recognise a
/// queued loopback call (about 0.25 s, `admission`): such a call moves to the overflow lane and is
/// warned about rather than hidden by a new thread. Long enough for the kernel's accounting to mean
/// something and to ignore a burst the threads absorb by themselves; short enough that a pool sized
/// for an eighth of the load reaches it in about 1.5 s (each step may double the threads).
pub const GROW_WINDOW: Duration = Duration::from_millis(500);

/// The busy threads wanted less than this many CPUs over the window: the GIL was free most of the time,
/// so more threads would run more requests. At or above it, they compute (or wait for a CPU to compute
/// on), and a thread more would wait for the GIL like the others. Below one CPU, because the thread
/// holding the GIL also loses it at times to the I/O thread's wake-ups and to the GIL hand-over. On a
/// machine whose CPUs are saturated by other work, threads woken from their I/O wait on the run queue
/// too, so growth stops earlier there: conservative, since another thread would wait for a CPU as well.
pub const GIL_BOUND: f64 = 0.8;

/// How long a loopback call just published may take to leave the run queue: its connection looks every
/// `admission::WAIT_POLL`, twice for a late timer.
const LOOPBACK_MOVE: Duration =
    Duration::from_millis(2 * super::admission::WAIT_POLL.as_millis() as u64);

/// At most one line per this period saying that threads were not added because the views compute.
const COMPUTE_NOTE_PERIOD: Duration = Duration::from_secs(60);

/// After threads were added, the next measurement waits this long: a new thread's start (attaching to
/// the interpreter, building its runner) is CPU work that says nothing about the views.
const SETTLE: Duration = Duration::from_millis(100);

/// One measurement of the busy threads' demand: since when, and each thread's demand so far.
struct Window {
    since: Instant,
    /// (entry, kernel thread id, ns on or waiting for a CPU)
    samples: Vec<(usize, i32, u64)>,
}

/// The I/O thread's elastic-threads state.
pub struct Elastic {
    ctx: Arc<WorkerContext>,
    /// The run queue's receiving end, for the threads it starts.
    rx: RunQueue,
    window: RefCell<Option<Window>>,
    /// Since when the added threads are judged for retirement (the last change, or the last look).
    quiet_since: Cell<Instant>,
    idle_after: Duration,
    last_compute_note: Cell<Option<Instant>>,
    last_growth: Cell<Option<Instant>>,
}

impl Elastic {
    pub fn new(ctx: &Arc<WorkerContext>, rx: RunQueue) -> Elastic {
        Elastic {
            ctx: ctx.clone(),
            rx,
            window: RefCell::new(None),
            quiet_since: Cell::new(Instant::now()),
            idle_after: Duration::from_secs(ctx.cfg.elastic_idle_timeout.max(1)),
            last_compute_note: Cell::new(None),
            last_growth: Cell::new(None),
        }
    }

    /// One look (admission's watcher): grow while requests wait on I/O-bound threads, retire what the
    /// last idle period did not need.
    pub fn tick(&self, adm: &Admission) {
        if self.ctx.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let pool = &self.ctx.threads;
        let limit = adm.limit();
        // Only while every thread is taken: then the backlogs are looked at too (a full worker
        // leaves new connections there, see `admission`).
        let waiting = if adm.has_free_thread() || limit >= pool.max {
            0
        } else {
            adm.waiting_connections()
        };
        let settled = self
            .last_growth
            .get()
            .is_none_or(|t| now.duration_since(t) >= SETTLE);
        if waiting > 0 && settled {
            let mut window = self.window.borrow_mut();
            match window.as_ref() {
                None => {
                    *window = Some(Window {
                        since: now,
                        samples: sample(pool.tids()),
                    })
                }
                // A loopback call just found may still be queued until its connection looks again:
                // give it that long (once per window, so calls found round after round cannot hold
                // growth off) to move to the overflow lane, which no thread more would do.
                Some(w)
                    if now.duration_since(w.since) < GROW_WINDOW + LOOPBACK_MOVE
                        && adm.loopback_call_found_within(LOOPBACK_MOVE) => {}
                Some(w) if now.duration_since(w.since) >= GROW_WINDOW => {
                    let waited = now.duration_since(w.since);
                    let demand = demand(w, &sample(pool.tids()), waited);
                    *window = None;
                    drop(window);
                    if demand < GIL_BOUND {
                        self.grow(adm, waiting, waited, demand);
                    } else {
                        self.note_compute(limit, waiting, demand, now);
                    }
                    return;
                }
                Some(_) => {}
            }
        } else {
            self.window.replace(None);
        }
        if now.duration_since(self.quiet_since.get()) < self.idle_after {
            return;
        }
        self.quiet_since.set(now);
        let peak = adm.take_peak();
        let target = peak.clamp(pool.base, limit);
        if target < limit {
            adm.set_limit(target);
            pool.ask_to_retire(limit - target);
            self.ctx.board.count(Event::ThreadsDown);
            self.ctx.log.info(&format!(
                "Worker (pid:{}) threads: {limit} -> {target}: at most {peak} request{} at once in the last {}s (--elastic-idle-timeout)",
                std::process::id(),
                if peak == 1 { "" } else { "s" },
                self.idle_after.as_secs()
            ));
        }
    }

    /// Add threads: as many as requests wait, at most doubling, up to the ceiling.
    fn grow(&self, adm: &Admission, waiting: usize, waited: Duration, demand: f64) {
        let pool = &self.ctx.threads;
        let limit = adm.limit();
        let wanted = waiting.min(limit.max(1)).min(pool.max - limit).max(1);
        // Threads asked to retire and still idle-waiting are kept instead of started anew.
        let mut added = pool.cancel_retirements().min(wanted);
        while added < wanted {
            let Some(index) = pool.take_entry() else {
                break;
            };
            match self
                .ctx
                .runtime
                .spawn_thread(self.ctx.clone(), index, self.rx.clone(), "app")
            {
                Ok(()) => added += 1,
                Err(e) => {
                    pool.give_back(index);
                    self.ctx
                        .log
                        .error(&format!("Cannot start one more app thread: {e}"));
                    break;
                }
            }
        }
        if added == 0 {
            return;
        }
        let new = limit + added;
        adm.set_limit(new);
        self.quiet_since.set(Instant::now());
        self.last_growth.set(Some(Instant::now()));
        adm.take_peak();
        self.ctx.board.count(Event::ThreadsUp);
        self.ctx.log.info(&format!(
            "Worker (pid:{}) threads: {limit} -> {new} (up to {}): {waiting} request{} waited {:.1}s for a thread while the busy threads used {demand:.2} of a CPU (they wait on I/O with the GIL released)",
            std::process::id(),
            pool.max,
            if waiting == 1 { "" } else { "s" },
            waited.as_secs_f64()
        ));
    }

    fn note_compute(&self, limit: usize, waiting: usize, demand: f64, now: Instant) {
        if self
            .last_compute_note
            .get()
            .is_some_and(|t| now.duration_since(t) < COMPUTE_NOTE_PERIOD)
        {
            return;
        }
        self.last_compute_note.set(Some(now));
        self.ctx.log.info(&format!(
            "Worker (pid:{}) keeps {limit} threads although {waiting} request{} wait: the busy threads used {demand:.2} of a CPU (running or waiting for one), so they compute or the CPUs are busy, and a thread more would only wait",
            std::process::id(),
            if waiting == 1 { "" } else { "s" },
        ));
    }
}

/// Each thread's time on a CPU or waiting for one so far, in ns.
fn sample(tids: Vec<(usize, i32)>) -> Vec<(usize, i32, u64)> {
    tids.into_iter()
        .filter_map(|(i, tid)| cpu_demand_ns(tid).map(|ns| (i, tid, ns)))
        .collect()
}

/// CPUs the threads present at both samples asked for, on average over `span`.
fn demand(w: &Window, now: &[(usize, i32, u64)], span: Duration) -> f64 {
    let used: u64 = w
        .samples
        .iter()
        .filter_map(|(i, tid, before)| {
            now.iter()
                .find(|(j, t, _)| j == i && t == tid)
                .map(|(_, _, after)| after.saturating_sub(*before))
        })
        .sum();
    used as f64 / span.as_nanos().max(1) as f64
}

/// A thread's time on a CPU plus its time runnable on a run queue (`/proc/self/task/TID/schedstat`,
/// ns), or, where the kernel does not keep schedstat, its CPU time alone.
fn cpu_demand_ns(tid: i32) -> Option<u64> {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")) {
        let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
        if let (Some(Some(run)), Some(Some(wait))) = (fields.next(), fields.next()) {
            return Some(run + wait);
        }
    }
    // The CPU clock of another thread of this process, as glibc's pthread_getcpuclockid builds it:
    // the thread id (inverted, shifted) with the per-thread and scheduler-clock bits.
    let clock = ((!tid) << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; an invalid clock id (a thread that just
    // ended) is an error return, not undefined behaviour.
    let rc = unsafe { libc::clock_gettime(clock as libc::clockid_t, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_threads_demand_grows_while_it_computes_not_while_it_sleeps() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let a = cpu_demand_ns(tid).expect("own thread readable");
        std::thread::sleep(Duration::from_millis(50));
        let b = cpu_demand_ns(tid).expect("own thread readable");
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let c = cpu_demand_ns(tid).expect("own thread readable");
        assert!(b - a < 20_000_000, "sleeping used {} ns", b - a);
        assert!(c - b >= 40_000_000, "computing used {} ns", c - b);
    }

    #[test]
    fn demand_counts_only_threads_seen_twice() {
        let w = Window {
            since: Instant::now(),
            samples: vec![(0, 10, 1_000), (1, 11, 5_000), (2, 12, 0)],
        };
        // Thread 1 ended and entry 2 is another thread now: only thread 0's 100 ms count.
        let now = [(0, 10, 100_001_000), (2, 99, 500_000_000)];
        let d = demand(&w, &now, Duration::from_millis(200));
        assert!((d - 0.5).abs() < 1e-9, "{d}");
    }
}
