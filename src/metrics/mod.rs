//! Observability: what the server exports about itself. `statsd` sends gunicorn's statsd metrics;
//! the rest serves Prometheus from the master.
//!
//! The numbers come from the scoreboard: workers add each finished request (method, status class,
//! duration bucket) and each event (timeout, slow request, loopback call) to their own slot; the master
//! folds a dead worker's totals into its own, counts worker restarts by [`Cause`], and, on a scrape,
//! builds a [`Snapshot`] that [`render`] writes in the text exposition format (`text`). `server` is the
//! master's listener for `--metrics-bind` (`/metrics`, `/healthz`, `/readyz`), served inside the master's
//! loop without blocking it; `health` judges liveness and readiness.

pub mod health;
pub mod server;
pub mod statsd;
pub mod text;

use crate::scoreboard::{Event, RequestStats, DURATION_BUCKETS, METHODS, STATUS_CLASSES};

/// Why a worker was replaced (or went away), for `ferricorn_worker_restarts_total{cause=...}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A request ran past `--timeout` (the worker retired itself after its 504, or the master aborted it),
    /// or it was still loading the app after `--timeout`.
    Timeout,
    /// The kernel's OOM killer ended it (the kernel log names its pid).
    Oom,
    /// Ended by a signal not sent by ferricorn (SIGKILL from elsewhere, or a TERM that the master did not
    /// send), or an exit with status 0 that nobody asked for.
    OutsideKill,
    /// It served `--max-requests`.
    MaxRequests,
    /// Its memory passed `--max-worker-memory`.
    MaxWorkerMemory,
    /// It exited with an error status or died of a fault (SIGSEGV, SIGABRT...).
    Crash,
    /// Replaced by a reload (HUP, `ferricornctl reload`).
    Reload,
    /// Retired because the worker count went down (TTOU, `worker remove`).
    ScaleDown,
    /// Stopped by `ferricornctl worker kill`.
    Control,
}

impl Cause {
    pub const ALL: [Cause; 9] = [
        Cause::Timeout,
        Cause::Oom,
        Cause::OutsideKill,
        Cause::MaxRequests,
        Cause::MaxWorkerMemory,
        Cause::Crash,
        Cause::Reload,
        Cause::ScaleDown,
        Cause::Control,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Cause::Timeout => "timeout",
            Cause::Oom => "oom",
            Cause::OutsideKill => "outside_kill",
            Cause::MaxRequests => "max_requests",
            Cause::MaxWorkerMemory => "max_worker_memory",
            Cause::Crash => "crash",
            Cause::Reload => "reload",
            Cause::ScaleDown => "scale_down",
            Cause::Control => "control",
        }
    }
}

/// Restart counts, indexed like [`Cause::ALL`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restarts([u64; 9]);

impl Restarts {
    pub fn count(&mut self, cause: Cause) {
        if let Some(i) = Cause::ALL.iter().position(|c| *c == cause) {
            self.0[i] += 1;
        }
    }

    pub fn get(&self, cause: Cause) -> u64 {
        Cause::ALL
            .iter()
            .position(|c| *c == cause)
            .map_or(0, |i| self.0[i])
    }
}

/// One worker's gauges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerSample {
    pub pid: i32,
    pub rss_bytes: Option<u64>,
    pub busy_threads: u64,
    /// App threads it runs requests on now (elastic threads change it).
    pub threads: u64,
    pub waiting: u64,
    /// ASGI: the event loop's lag (seconds); None for a worker without a loop.
    pub loop_lag_seconds: Option<f64>,
}

/// Everything a scrape reports, read by the master at the scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub worker_class: String,
    /// Since the master started: dead workers' totals plus the live ones'.
    pub requests: RequestStats,
    pub busy_threads: u64,
    pub total_threads: u64,
    /// Connections in the listen backlogs, and requests queued inside workers for a thread.
    pub waiting_backlog: u64,
    pub waiting_inside: u64,
    pub workers: Vec<WorkerSample>,
    pub workers_target: u64,
    /// Workers the master added under starvation and retired after, since it started (`--max-workers`).
    pub workers_added: u64,
    pub workers_retired: u64,
    pub restarts: Restarts,
    pub starvation_seconds: f64,
    pub live: bool,
    pub ready: bool,
    pub uptime_seconds: f64,
}

/// The help of each event counter of its own, indexed like `scoreboard::Event` (the elastic threads'
/// events follow, in `ferricorn_scale_events_total`).
const EVENT_FAMILIES: [(&str, &str); 3] = [
    (
        "ferricorn_request_timeouts_total",
        "Requests that ran past --timeout (answered 504; the worker retires)",
    ),
    (
        "ferricorn_slow_requests_total",
        "Requests still running at --slow-request-threshold",
    ),
    (
        "ferricorn_loopback_calls_total",
        "Requests recognised as loopback calls (the app calling its own server) and run on the overflow lane",
    ),
];

/// A gauge with one sample per worker: its name, its help and the sample's value.
type PerWorkerGauge = (&'static str, &'static str, fn(&WorkerSample) -> u64);

/// The exposition of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut t = text::Text::default();
    let class = s.worker_class.as_str();

    t.family(
        "ferricorn_requests_total",
        "counter",
        "Requests finished, by worker class, method and status class",
    );
    for (m, row) in s.requests.cells.iter().enumerate() {
        for (st, cell) in row.iter().enumerate() {
            if cell.0 == 0 {
                continue;
            }
            t.sample(
                "ferricorn_requests_total",
                &[
                    ("worker_class", class),
                    ("method", METHODS[m]),
                    ("status", STATUS_CLASSES[st]),
                ],
                cell.0 as f64,
            );
        }
    }

    t.family(
        "ferricorn_request_duration_seconds",
        "histogram",
        "Time a request spent in the app, from a thread taking it to the runtime's end",
    );
    for (m, row) in s.requests.cells.iter().enumerate() {
        for (st, (count, sum_us, buckets)) in row.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            let base = [
                ("worker_class", class),
                ("method", METHODS[m]),
                ("status", STATUS_CLASSES[st]),
            ];
            let mut cumulative = 0u64;
            for (le, n) in DURATION_BUCKETS.iter().zip(buckets.iter()) {
                cumulative += n;
                let mut le_text = String::new();
                text::push_value(&mut le_text, *le);
                let labels = [base[0], base[1], base[2], ("le", le_text.as_str())];
                t.sample(
                    "ferricorn_request_duration_seconds_bucket",
                    &labels,
                    cumulative.min(*count) as f64,
                );
            }
            let labels = [base[0], base[1], base[2], ("le", "+Inf")];
            t.sample(
                "ferricorn_request_duration_seconds_bucket",
                &labels,
                *count as f64,
            );
            t.sample(
                "ferricorn_request_duration_seconds_sum",
                &base,
                *sum_us as f64 / 1e6,
            );
            t.sample(
                "ferricorn_request_duration_seconds_count",
                &base,
                *count as f64,
            );
        }
    }

    for (i, (name, help)) in EVENT_FAMILIES.iter().enumerate() {
        t.family(name, "counter", help);
        t.sample(name, &[], s.requests.events[i] as f64);
    }
    t.family(
        "ferricorn_scale_events_total",
        "counter",
        "Changes of capacity: a worker added or retired app threads (--max-threads), the master added or retired workers (--max-workers)",
    );
    for (kind, n) in [
        ("threads_up", s.requests.events[Event::ThreadsUp as usize]),
        (
            "threads_down",
            s.requests.events[Event::ThreadsDown as usize],
        ),
        ("workers_up", s.workers_added),
        ("workers_down", s.workers_retired),
    ] {
        t.sample("ferricorn_scale_events_total", &[("kind", kind)], n as f64);
    }

    t.family(
        "ferricorn_requests_in_flight",
        "gauge",
        "Requests running in an app thread now",
    );
    t.sample("ferricorn_requests_in_flight", &[], s.busy_threads as f64);
    t.family(
        "ferricorn_requests_waiting",
        "gauge",
        "Connections waiting: in the listen backlog, or accepted and queued inside a worker for a thread",
    );
    t.sample(
        "ferricorn_requests_waiting",
        &[("where", "backlog")],
        s.waiting_backlog as f64,
    );
    t.sample(
        "ferricorn_requests_waiting",
        &[("where", "worker")],
        s.waiting_inside as f64,
    );
    t.family(
        "ferricorn_threads_busy",
        "gauge",
        "App threads running a request",
    );
    t.sample("ferricorn_threads_busy", &[], s.busy_threads as f64);
    t.family(
        "ferricorn_threads_total",
        "gauge",
        "App threads of the running workers (the capacity; elastic threads change it)",
    );
    t.sample("ferricorn_threads_total", &[], s.total_threads as f64);
    t.family("ferricorn_workers", "gauge", "Workers running now");
    t.sample("ferricorn_workers", &[], s.workers.len() as f64);
    t.family(
        "ferricorn_workers_target",
        "gauge",
        "Workers the master keeps (--workers, TTIN/TTOU, and those --max-workers added under starvation)",
    );
    t.sample("ferricorn_workers_target", &[], s.workers_target as f64);
    t.family(
        "ferricorn_worker_restarts_total",
        "counter",
        "Workers that ended and were replaced or retired, by cause",
    );
    for c in Cause::ALL {
        t.sample(
            "ferricorn_worker_restarts_total",
            &[("cause", c.label())],
            s.restarts.get(c) as f64,
        );
    }
    t.family(
        "ferricorn_starvation_seconds_total",
        "counter",
        "Seconds during which every app thread was busy while connections waited",
    );
    t.sample(
        "ferricorn_starvation_seconds_total",
        &[],
        (s.starvation_seconds * 1000.0).round() / 1000.0,
    );
    t.family(
        "ferricorn_worker_rss_bytes",
        "gauge",
        "Resident memory of each worker",
    );
    for w in &s.workers {
        if let Some(rss) = w.rss_bytes {
            let pid = w.pid.to_string();
            t.sample("ferricorn_worker_rss_bytes", &[("pid", &pid)], rss as f64);
        }
    }
    if s.workers.iter().any(|w| w.loop_lag_seconds.is_some()) {
        t.family(
            "ferricorn_asgi_event_loop_lag_seconds",
            "gauge",
            "How late the event loop ran a callback that was due, at worst over the last half second (or how long it has been blocked now), per worker",
        );
        for w in &s.workers {
            if let Some(lag) = w.loop_lag_seconds {
                let pid = w.pid.to_string();
                t.sample(
                    "ferricorn_asgi_event_loop_lag_seconds",
                    &[("pid", &pid)],
                    (lag * 1e6).round() / 1e6,
                );
            }
        }
    }
    let per_worker: [PerWorkerGauge; 2] = [
        (
            "ferricorn_worker_threads_busy",
            "App threads running a request, per worker",
            |w| w.busy_threads,
        ),
        (
            "ferricorn_worker_threads",
            "App threads a worker runs requests on now, per worker (elastic threads change it)",
            |w| w.threads,
        ),
    ];
    for (name, help, get) in per_worker {
        t.family(name, "gauge", help);
        for w in &s.workers {
            let pid = w.pid.to_string();
            t.sample(name, &[("pid", &pid)], get(w) as f64);
        }
    }
    t.family(
        "ferricorn_up",
        "gauge",
        "1 while /healthz passes: every worker's I/O loop and app threads alive",
    );
    t.sample("ferricorn_up", &[], if s.live { 1.0 } else { 0.0 });
    t.family(
        "ferricorn_ready",
        "gauge",
        "1 while /readyz passes: a worker serves and no graceful stop has begun",
    );
    t.sample("ferricorn_ready", &[], if s.ready { 1.0 } else { 0.0 });
    t.family(
        "ferricorn_uptime_seconds",
        "gauge",
        "Seconds since the master started",
    );
    t.sample(
        "ferricorn_uptime_seconds",
        &[],
        (s.uptime_seconds * 10.0).round() / 10.0,
    );
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_and_cumulative_buckets() {
        let mut s = Snapshot {
            worker_class: "gthread".into(),
            ..Snapshot::default()
        };
        // GET 2xx: 1 in the first bucket, 1 in the 0.1 s bucket, 1 above every bound.
        s.requests.cells[0][1] = (3, 1_000_000, {
            let mut b = [0u64; DURATION_BUCKETS.len()];
            b[0] = 1;
            b[4] = 1;
            b
        });
        s.restarts.count(Cause::Timeout);
        s.workers.push(WorkerSample {
            pid: 42,
            rss_bytes: Some(1024),
            busy_threads: 1,
            threads: 4,
            waiting: 0,
            loop_lag_seconds: Some(0.25),
        });
        s.requests.events[Event::ThreadsUp as usize] = 2;
        s.workers_added = 1;
        let text = render(&s);
        assert!(text.contains(
            "ferricorn_requests_total{worker_class=\"gthread\",method=\"GET\",status=\"2xx\"} 3\n"
        ));
        assert!(text.contains("ferricorn_request_duration_seconds_bucket{worker_class=\"gthread\",method=\"GET\",status=\"2xx\",le=\"0.005\"} 1\n"));
        assert!(text.contains("ferricorn_request_duration_seconds_bucket{worker_class=\"gthread\",method=\"GET\",status=\"2xx\",le=\"0.1\"} 2\n"));
        assert!(text.contains("ferricorn_request_duration_seconds_bucket{worker_class=\"gthread\",method=\"GET\",status=\"2xx\",le=\"120\"} 2\n"));
        assert!(text.contains("ferricorn_request_duration_seconds_bucket{worker_class=\"gthread\",method=\"GET\",status=\"2xx\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("ferricorn_request_duration_seconds_sum{worker_class=\"gthread\",method=\"GET\",status=\"2xx\"} 1\n"));
        assert!(text.contains("ferricorn_worker_restarts_total{cause=\"timeout\"} 1\n"));
        assert!(text.contains("ferricorn_worker_restarts_total{cause=\"oom\"} 0\n"));
        assert!(text.contains("ferricorn_worker_rss_bytes{pid=\"42\"} 1024\n"));
        assert!(text.contains("ferricorn_asgi_event_loop_lag_seconds{pid=\"42\"} 0.25\n"));
        assert!(text.contains("ferricorn_worker_threads{pid=\"42\"} 4\n"));
        assert!(text.contains("ferricorn_scale_events_total{kind=\"threads_up\"} 2\n"));
        assert!(text.contains("ferricorn_scale_events_total{kind=\"workers_up\"} 1\n"));
        assert!(text.contains("ferricorn_scale_events_total{kind=\"workers_down\"} 0\n"));
        // Every sample's family was declared before it.
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{line}");
            }
        }
    }
}
