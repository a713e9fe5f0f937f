//! Liveness and readiness, judged from the scoreboard by the master (`/healthz`, `/readyz`, and the
//! control socket's `show health`).
//!
//! A worker is alive when its I/O loop beat within [`LOOP_STALE`] and every app thread that reports
//! (the thread pool beats each second while idle, with the interpreter's lock held) either beat within
//! [`THREAD_STALE`] or is running a request younger than `--timeout`. Liveness is every booted worker
//! alive (and at least one worker up or booting); readiness is liveness with at least one worker
//! serving, and not stopping: a graceful stop turns it false first (`--shutdown-delay` keeps the
//! listeners open that long after). An ASGI worker is also not alive while its event loop has been
//! blocked for [`EVENT_LOOP_STALE_NS`]: no request of that worker moves meanwhile, though its I/O
//! loop still beats.

use crate::scoreboard::WorkerState;

/// The I/O loop beats every 0.5 s.
pub const LOOP_STALE_NS: u64 = 5_000_000_000;
/// Idle app threads beat every second.
pub const THREAD_STALE_NS: u64 = 5_000_000_000;
/// An event loop's beat timer fires every 0.1 s; this long overdue, the loop is blocked.
pub const EVENT_LOOP_STALE_NS: u64 = 5_000_000_000;

/// What the master knows of one worker, for the judgement.
pub struct WorkerView {
    pub pid: i32,
    pub state: WorkerState,
    pub heartbeat_ns: u64,
    /// Per app thread: (last beat, start of its request in flight), 0 for none.
    pub threads: Vec<(u64, u64)>,
    /// ASGI: how long the event loop is overdue now (0 when it is not, or without a loop).
    pub loop_overdue_ns: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WorkerHealth {
    pub pid: i32,
    pub state: WorkerState,
    pub alive: bool,
    pub loop_age_secs: f64,
    /// Threads that report, and those of them alive.
    pub threads_reporting: usize,
    pub threads_alive: usize,
    /// Why it is not alive (empty when it is).
    pub problem: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub live: bool,
    pub ready: bool,
    pub stopping: bool,
    pub workers: Vec<WorkerHealth>,
    /// One line saying why, for the answer's body.
    pub reason: String,
}

pub fn judge(now: u64, workers: &[WorkerView], timeout_secs: u64, stopping: bool) -> Health {
    let timeout_ns = timeout_secs.saturating_mul(1_000_000_000);
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut out = Vec::new();
    for w in workers {
        let loop_age = now.saturating_sub(w.heartbeat_ns);
        let mut h = WorkerHealth {
            pid: w.pid,
            state: w.state,
            alive: true,
            loop_age_secs: secs(loop_age),
            threads_reporting: 0,
            threads_alive: 0,
            problem: String::new(),
        };
        if w.state == WorkerState::Booting {
            out.push(h);
            continue;
        }
        let mut problems = Vec::new();
        if loop_age > LOOP_STALE_NS {
            problems.push(format!("its I/O loop last beat {:.1}s ago", secs(loop_age)));
        }
        if w.loop_overdue_ns > EVENT_LOOP_STALE_NS {
            problems.push(format!(
                "its event loop has been blocked for {:.1}s (a blocking call in an async view)",
                secs(w.loop_overdue_ns)
            ));
        }
        for (i, &(beat, started)) in w.threads.iter().enumerate() {
            if beat == 0 {
                continue; // a runtime whose threads do not report
            }
            h.threads_reporting += 1;
            let fresh = now.saturating_sub(beat) <= THREAD_STALE_NS;
            let in_time =
                started != 0 && (timeout_ns == 0 || now.saturating_sub(started) <= timeout_ns);
            if fresh || in_time {
                h.threads_alive += 1;
            } else if started != 0 {
                problems.push(format!(
                    "thread {i} has run its request for {:.1}s, past --timeout {timeout_secs}s",
                    secs(now.saturating_sub(started))
                ));
            } else {
                problems.push(format!(
                    "thread {i} last beat {:.1}s ago",
                    secs(now.saturating_sub(beat))
                ));
            }
        }
        if !problems.is_empty() {
            h.alive = false;
            h.problem = problems.join("; ");
        }
        out.push(h);
    }
    let dead: Vec<&WorkerHealth> = out.iter().filter(|w| !w.alive).collect();
    let serving = out
        .iter()
        .filter(|w| w.alive && matches!(w.state, WorkerState::Idle | WorkerState::Busy))
        .count();
    let booting = out
        .iter()
        .filter(|w| w.state == WorkerState::Booting)
        .count();
    let live = dead.is_empty() && (serving > 0 || booting > 0);
    let ready = live && serving > 0 && !stopping;
    let reason = if let Some(w) = dead.first() {
        format!("worker {} is not alive: {}", w.pid, w.problem)
    } else if serving == 0 && booting == 0 {
        "no worker is running".to_string()
    } else if stopping {
        "the server is stopping".to_string()
    } else if serving == 0 {
        format!("{booting} worker(s) booting, none serving yet")
    } else {
        format!("{serving} worker(s) serving")
    };
    Health {
        live,
        ready,
        stopping,
        workers: out,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn w(state: WorkerState, beat: u64, threads: Vec<(u64, u64)>) -> WorkerView {
        WorkerView {
            pid: 7,
            state,
            heartbeat_ns: beat,
            threads,
            loop_overdue_ns: 0,
        }
    }

    #[test]
    fn judgements() {
        let now = 100 * S;
        let ok = judge(
            now,
            &[w(WorkerState::Idle, now - S, vec![(now - S, 0)])],
            30,
            false,
        );
        assert!(ok.live && ok.ready, "{ok:?}");
        // Stopping: alive, not ready.
        let stop = judge(now, &[w(WorkerState::Idle, now, vec![])], 30, true);
        assert!(stop.live && !stop.ready);
        // A stale loop.
        let stale = judge(now, &[w(WorkerState::Busy, now - 9 * S, vec![])], 30, false);
        assert!(!stale.live && !stale.ready);
        assert!(stale.reason.contains("I/O loop"), "{}", stale.reason);
        // A busy thread inside --timeout is alive; past it, not; a thread that never reported is
        // not judged.
        let busy = judge(
            now,
            &[w(
                WorkerState::Busy,
                now,
                vec![(now - 20 * S, now - 20 * S), (0, 0)],
            )],
            30,
            false,
        );
        assert!(busy.live);
        assert_eq!(busy.workers[0].threads_reporting, 1);
        let stuck = judge(
            now,
            &[w(
                WorkerState::Busy,
                now,
                vec![(now - 40 * S, now - 40 * S)],
            )],
            30,
            false,
        );
        assert!(!stuck.live);
        let silent = judge(
            now,
            &[w(WorkerState::Idle, now, vec![(now - 6 * S, 0)])],
            30,
            false,
        );
        assert!(!silent.live);
        // A blocked event loop, though the I/O loop beats.
        let mut blocked = w(WorkerState::Busy, now, vec![]);
        blocked.loop_overdue_ns = 6 * S;
        let blocked = judge(now, &[blocked], 30, false);
        assert!(!blocked.live && !blocked.ready);
        assert!(
            blocked
                .reason
                .contains("event loop has been blocked for 6.0s"),
            "{}",
            blocked.reason
        );
        let mut lagging = w(WorkerState::Busy, now, vec![]);
        lagging.loop_overdue_ns = S;
        assert!(judge(now, &[lagging], 30, false).live);
        // Booting only: alive, not ready; nothing at all: neither.
        let boot = judge(now, &[w(WorkerState::Booting, 0, vec![])], 30, false);
        assert!(boot.live && !boot.ready);
        let none = judge(now, &[], 30, false);
        assert!(!none.live && !none.ready);
    }
}
