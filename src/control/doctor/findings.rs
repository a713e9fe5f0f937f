//! The rules of `ferricornctl doctor`: each looks at what the sources gathered and may produce a
//! [`Finding`] with a severity, the evidence it rests on and the fix. Rules never fail: a source that
//! is missing just means its rules stay silent.
//!
//! Severities: `critical` when clients get errors because of it now (or will on every occurrence),
//! `warning` for a likely cause of timeouts or a setting that works against the server, `info` for
//! context (probe latencies, skipped sources, counters that may predate the server).

use std::collections::BTreeMap;

use super::access::{is_static_path, AccessSummary};
use super::config::ServerInfo;
use super::host::HostState;
use super::logs::{LogSummary, RequestEvent, WaitKind};
use super::nginx::{Handler, NginxView, ProxyLocation};
use super::probe::ProbeResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// Stable identifier, for scripts and tests (`nginx-timeout-shorter`).
    pub id: &'static str,
    pub severity: Severity,
    pub title: String,
    pub evidence: Vec<String>,
    pub fix: String,
}

pub(super) fn finding(
    id: &'static str,
    severity: Severity,
    title: String,
    evidence: Vec<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        id,
        severity,
        title,
        evidence,
        fix: fix.into(),
    }
}

/// What the rules look at. Every source is optional.
#[derive(Default)]
pub struct Inputs<'a> {
    pub server: Option<&'a ServerInfo>,
    pub nginx: Option<&'a NginxView>,
    pub host: Option<&'a HostState>,
    pub log: Option<&'a LogSummary>,
    pub access: Option<&'a AccessSummary>,
    pub probes: &'a [ProbeResult],
    pub window_minutes: u64,
}

/// `1`, `2.5`: seconds without a useless `.0`.
pub(super) fn secs(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.1}")
    }
}

/// `host:port` split, brackets of IPv6 removed; None for a unix socket.
fn host_port(a: &str) -> Option<(String, u16)> {
    if a.starts_with("unix:") || a.starts_with("fd://") {
        return None;
    }
    let (h, p) = match a.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') || h.starts_with('[') => (h, p.parse().ok()?),
        // `::1` without a port, or a bare host
        _ => (a, 80),
    };
    let h = h
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    Some((h, p))
}

fn is_loopback(h: &str) -> bool {
    h == "localhost" || h == "::1" || h.starts_with("127.")
}

/// Whether nginx's upstream address reaches a ferricorn bind.
pub fn addr_matches(upstream: &str, bind: &str) -> bool {
    if let (Some(u), Some(b)) = (upstream.strip_prefix("unix:"), bind.strip_prefix("unix:")) {
        return u == b;
    }
    let (Some((uh, up)), Some((bh, bp))) = (host_port(upstream), host_port(bind)) else {
        return false;
    };
    if up != bp {
        return false;
    }
    matches!(bh.as_str(), "" | "0.0.0.0" | "::")
        || uh == bh
        || (is_loopback(&uh) && is_loopback(&bh))
}

/// The proxies that lead to this ferricorn, and whether that was decided by address (false: the
/// binds are unknown or nothing matched, so every proxy is taken).
fn relevant_proxies<'a>(
    nginx: &'a NginxView,
    server: Option<&ServerInfo>,
) -> (Vec<&'a ProxyLocation>, bool) {
    let binds = server.map(|s| s.binds.as_slice()).unwrap_or(&[]);
    let matched: Vec<&ProxyLocation> = nginx
        .proxies
        .iter()
        .filter(|p| {
            p.upstream
                .iter()
                .any(|u| binds.iter().any(|b| addr_matches(u, b)))
        })
        .collect();
    if matched.is_empty() {
        (nginx.proxies.iter().collect(), false)
    } else {
        (matched, true)
    }
}

fn where_set(t: &super::nginx::Timeout, name: &str) -> String {
    match &t.set_at {
        Some(at) => format!("{name} {}s set at {at}", secs(t.secs)),
        None => format!("{name} not set: nginx's default {}s", secs(t.secs)),
    }
}

fn nginx_rules(i: &Inputs<'_>, out: &mut Vec<Finding>) {
    let (Some(nginx), Some(server)) = (i.nginx, i.server) else {
        return;
    };
    let (proxies, by_address) = relevant_proxies(nginx, Some(server));
    if !by_address && !server.binds.is_empty() && !nginx.proxies.is_empty() {
        let upstreams: Vec<String> = nginx
            .proxies
            .iter()
            .map(|p| {
                format!(
                    "location {} ({}) proxies to {}",
                    p.location,
                    p.at,
                    if p.upstream.is_empty() {
                        p.proxy_pass.clone()
                    } else {
                        p.upstream.join(", ")
                    }
                )
            })
            .collect();
        let mut evidence = vec![format!("ferricorn listens on {}", server.binds.join(", "))];
        evidence.extend(upstreams);
        out.push(finding(
            "nginx-upstream-mismatch",
            Severity::Warning,
            "nginx does not proxy to any address ferricorn listens on".to_string(),
            evidence,
            format!(
                "Point proxy_pass (or the upstream's server line) at {}, or bind ferricorn to the address nginx uses. The timeout rules below compare every proxied location, since none could be matched.",
                server.binds.join(" or ")
            ),
        ));
    }
    let t = server.timeout;
    let margin = |t: u64| (t / 10).max(5);
    // Locations that inherit one setting share one finding, and its fix names the line that sets it.
    for (name, id, pick) in [
        (
            "proxy_read_timeout",
            "nginx-timeout-shorter",
            (|p: &ProxyLocation| p.read_timeout.clone())
                as fn(&ProxyLocation) -> super::nginx::Timeout,
        ),
        (
            "proxy_send_timeout",
            "nginx-send-timeout-shorter",
            |p: &ProxyLocation| p.send_timeout.clone(),
        ),
    ] {
        let mut groups: Vec<(super::nginx::Timeout, Vec<&ProxyLocation>)> = Vec::new();
        for p in &proxies {
            let tv = pick(p);
            match groups.iter_mut().find(|(g, _)| *g == tv) {
                Some((_, v)) => v.push(p),
                None => groups.push((tv, vec![p])),
            }
        }
        for (tv, locs) in groups {
            let value = tv.secs;
            let places = locs
                .iter()
                .map(|p| format!("location {} ({})", p.location, p.at))
                .collect::<Vec<_>>()
                .join(", ");
            let server_name = locs.first().map_or("", |p| p.server.as_str());
            let set_here = match &tv.set_at {
                Some(at) => format!("change it at {at}"),
                None => format!("add it to the server block {server_name}"),
            };
            let read = name == "proxy_read_timeout";
            if t == 0 {
                if read {
                    out.push(finding(
                        id,
                        Severity::Warning,
                        format!(
                            "ferricorn has no timeout (timeout = 0): nginx's {name} {}s is the only limit ({places})",
                            secs(value)
                        ),
                        vec![
                            where_set(&tv, name),
                            "a stuck request gets nginx's 504 after that time while the worker keeps running it, and no stack is logged".to_string(),
                        ],
                        format!(
                            "Set ferricorn's timeout below nginx's: timeout = {} (then the worker answers 504 itself and logs the request and its stack).",
                            (value as u64).saturating_sub(5).max(1)
                        ),
                    ));
                }
                continue;
            }
            let tf = t as f64;
            let wanted = t + margin(t);
            if value <= tf {
                let (severity, consequence) = if read {
                    (
                        Severity::Critical,
                        format!(
                            "a request running longer than {}s gets nginx's 504 while the worker keeps running it until {t}s: ferricorn's 504, the request line and its Python stack never reach the client, and nginx's log has no stack",
                            secs(value)
                        ),
                    )
                } else {
                    (
                        Severity::Warning,
                        "an upload the app reads slowly makes nginx abort the request (504) while the worker still runs it".to_string(),
                    )
                };
                out.push(finding(
                    id,
                    severity,
                    format!(
                        "nginx gives up before ferricorn: {name} {}s <= timeout {t}s ({places})",
                        secs(value)
                    ),
                    vec![
                        where_set(&tv, name),
                        format!("ferricorn timeout = {t}s ({})", server.origin),
                        consequence,
                    ],
                    if read {
                        format!(
                            "Set `{name} {wanted}s;` (timeout + margin; {set_here}), or lower ferricorn's timeout below {}s (e.g. timeout = {}).",
                            secs(value),
                            (value as u64).saturating_sub(margin(value as u64)).max(1)
                        )
                    } else {
                        format!("Set `{name} {wanted}s;` ({set_here}).")
                    },
                ));
            } else if read && value < tf + 2.0 {
                out.push(finding(
                    id,
                    Severity::Warning,
                    format!(
                        "nginx's {name} {}s is barely above ferricorn's timeout {t}s ({places})",
                        secs(value)
                    ),
                    vec![
                        where_set(&tv, name),
                        "ferricorn checks timeouts a few times a second and then writes the 504; with less than 2s of margin nginx can still give up first".to_string(),
                    ],
                    format!("Set `{name} {wanted}s;` ({set_here})."),
                ));
            }
        }
    }
    // Upstream keep-alive that outlives ferricorn's: nginx reuses a connection the server just closed.
    if server.keepalive > 0 {
        let mut seen = Vec::new();
        for p in proxies.iter().filter(|p| p.http11) {
            let Some(u) = p
                .upstream_name
                .as_ref()
                .and_then(|n| nginx.upstreams.iter().find(|u| &u.name == n))
            else {
                continue;
            };
            if u.keepalive.is_none()
                || u.keepalive_timeout <= server.keepalive as f64
                || seen.contains(&u.name)
            {
                continue;
            }
            seen.push(u.name.clone());
            out.push(finding(
                "nginx-upstream-keepalive",
                Severity::Warning,
                format!(
                    "nginx keeps idle upstream connections {}s, ferricorn closes them after {}s (upstream {})",
                    secs(u.keepalive_timeout),
                    server.keepalive,
                    u.name
                ),
                vec![
                    format!("upstream {} at {} has `keepalive {}`", u.name, u.at, u.keepalive.unwrap_or(0)),
                    format!("ferricorn keepalive = {}s", server.keepalive),
                    "nginx may send a request on a connection ferricorn is closing: 502 'upstream prematurely closed connection'".to_string(),
                ],
                format!(
                    "In upstream {} set `keepalive_timeout {}s;` (below ferricorn's keepalive), or raise ferricorn's keepalive (--keep-alive) above {}s.",
                    u.name,
                    server.keepalive.saturating_sub(1).max(1),
                    secs(u.keepalive_timeout)
                ),
            ));
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn stack_line(e: &RequestEvent) -> String {
    match e.app_frame() {
        Some(f) => format!("{} {}: {f}", e.method, e.target),
        None if e.no_python_frame => format!("{} {}: <no Python frame>", e.method, e.target),
        None => format!("{} {}: no stack logged", e.method, e.target),
    }
}

fn kind_fix(kind: WaitKind, threaded: Option<bool>) -> String {
    match kind {
        WaitKind::Database => {
            let mut s = "The thread waits inside the database driver: find the query (ferricornctl doctor --database-url postgresql://… names it, and the lock holder behind it; by hand: SELECT pid, now() - query_start, wait_event_type, query FROM pg_stat_activity WHERE state <> 'idle'), add the missing index or cut the number of queries (select_related/prefetch_related), shorten transactions that hold locks, and set a statement timeout below ferricorn's timeout.".to_string();
            if threaded == Some(false) {
                s.push_str(" With sync workers one slow query blocks a whole worker: consider -k gthread --threads N.");
            }
            s
        }
        WaitKind::Network => "The thread waits on an external call: give every outgoing call connect and read timeouts shorter than ferricorn's timeout (requests: timeout=(3.05, 10)), retry only idempotent calls, move slow calls to a job queue.".to_string(),
        WaitKind::AppCode => "The thread is in the app's own code (computing, or a blocking call such as sleep): make that code faster or move the work to a job queue (Celery, RQ) and answer at once; check the host's CPU if many routes are affected.".to_string(),
        WaitKind::NoPython => "The thread was sending a response, not running Python: large or slow-to-take responses (files) hold workers. Serve static and media files from nginx (location /static/ { alias ...; }) or use X-Accel-Redirect.".to_string(),
        WaitKind::Unknown => "No stack was logged: the worker stopped responding as a whole (its heartbeat ran out), so the master killed it. Look for a stopped or swapped-out process, CPU starvation, or code that holds the GIL in C; check swap, memory and load below.".to_string(),
    }
}

fn log_rules(i: &Inputs<'_>, out: &mut Vec<Finding>) {
    let Some(log) = i.log else { return };
    let w = i.window_minutes;
    let threaded = i.server.map(|s| s.threaded());
    let events: Vec<&RequestEvent> = log.timeouts.iter().chain(&log.slow).collect();
    let by_path = log.by_path();
    let total: usize = by_path.iter().map(|(_, t, s)| t + s).sum();
    if let Some((path, t, s)) = by_path.first() {
        let share = (t + s) as f64 / total.max(1) as f64;
        if total >= 2 && share > 0.5 {
            let kinds = kind_counts(events.iter().copied().filter(|e| &e.path == path));
            let main_kind = kinds.first().map_or(WaitKind::Unknown, |(k, _)| *k);
            let mut evidence: Vec<String> = by_path
                .iter()
                .take(5)
                .map(|(p, t, s)| format!("{p}: {} timed out, {} slow", t, s))
                .collect();
            if let Some(e) = events
                .iter()
                .find(|e| &e.path == path && !e.stack.is_empty())
            {
                evidence.push(format!("stack: {}", stack_line(e)));
            }
            let total_t: usize = by_path.iter().map(|(_, t, _)| t).sum();
            let total_s: usize = by_path.iter().map(|(_, _, s)| s).sum();
            out.push(finding(
                "route-causes-timeouts",
                Severity::Warning,
                format!(
                    "One route causes most timeouts and slow requests: {path} ({t} of {total_t} timeouts, {s} of {total_s} slow requests in the last {w} min; waiting in {})",
                    main_kind.name()
                ),
                evidence,
                format!(
                    "Fix {path} before touching worker or timeout settings. {}",
                    kind_fix(main_kind, threaded)
                ),
            ));
        } else if total >= 3 && by_path.len() >= 3 {
            out.push(finding(
                "timeouts-across-routes",
                Severity::Warning,
                format!(
                    "Timeouts and slow requests are spread over {} routes in the last {w} min",
                    by_path.len()
                ),
                by_path
                    .iter()
                    .take(5)
                    .map(|(p, t, s)| format!("{p}: {t} timed out, {s} slow"))
                    .collect(),
                "Many unrelated routes slow at once points at something shared: too few workers or threads, the database or a cache being slow for everyone, or CPU/memory pressure on the host. Check the capacity, database and host findings.",
            ));
        }
    }
    // Where the threads were, by kind of wait.
    for (kind, n) in kind_counts(events.iter().copied()) {
        let of_kind: Vec<&&RequestEvent> = events.iter().filter(|e| e.kind() == kind).collect();
        let timeouts = log.timeouts.iter().filter(|e| e.kind() == kind).count();
        let (id, what) = match kind {
            WaitKind::Database => ("stuck-in-database", "waiting in the database driver"),
            WaitKind::Network => (
                "stuck-on-external-call",
                "waiting on an external call (socket, HTTP client, cache)",
            ),
            WaitKind::AppCode => (
                "stuck-in-app-code",
                "running the app's own code (CPU or a blocking call)",
            ),
            WaitKind::NoPython => (
                "stuck-sending-response",
                "sending a response (no Python frame)",
            ),
            WaitKind::Unknown => (
                "timeouts-without-stack",
                "without a stack (the master ended the worker)",
            ),
        };
        let mut paths: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &of_kind {
            *paths.entry(e.path.as_str()).or_default() += 1;
        }
        let mut evidence: Vec<String> = of_kind.iter().take(3).map(|e| stack_line(e)).collect();
        evidence.push(format!(
            "routes: {}",
            paths
                .iter()
                .map(|(p, n)| format!("{p} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out.push(finding(
            id,
            if timeouts > 0 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            format!(
                "{} {what} in the last {w} min ({} timed out)",
                plural(n, "request", "requests"),
                timeouts
            ),
            evidence,
            kind_fix(kind, threaded),
        ));
    }
    let unnamed = log.worker_timeouts.saturating_sub(log.timeouts.len());
    if unnamed > 0 {
        out.push(finding(
            "timeouts-without-stack",
            Severity::Critical,
            format!(
                "{} without a request named in the last {w} min",
                plural(unnamed, "WORKER TIMEOUT", "WORKER TIMEOUTs")
            ),
            vec!["the master declared these: the worker's I/O loop stopped beating (stopped, swapped out or starved process)".to_string()],
            kind_fix(WaitKind::Unknown, threaded),
        ));
    }
    // A sync worker that waits on I/O: threads would let it serve others meanwhile.
    let io_waits = events
        .iter()
        .filter(|e| matches!(e.kind(), WaitKind::Database | WaitKind::Network))
        .count();
    if let Some(server) = i.server.filter(|s| !s.threaded()) {
        if io_waits > 0 || !log.starvation.is_empty() {
            out.push(finding(
                "sync-workers-waiting-on-io",
                Severity::Warning,
                format!(
                    "sync workers (1 thread each, {} in all) while requests wait on I/O",
                    plural(server.workers as usize, "worker", "workers")
                ),
                vec![
                    format!(
                        "worker_class = {}, threads = {}",
                        server.worker_class, server.threads
                    ),
                    format!(
                        "{} waited in a database driver or on the network; {} in the last {w} min",
                        plural(io_waits, "request", "requests"),
                        plural(log.starvation.len(), "starvation warning", "starvation warnings")
                    ),
                ],
                "A sync worker's only thread is blocked while it waits, so one slow query holds the whole worker. Use threads: worker_class = 'gthread', threads = 2-4 per worker (ferricorn still times out each request under gthread).",
            ));
        }
    }
    if !log.starvation.is_empty() {
        starvation_finding(i, log, out);
    }
    if !log.oom_kills.is_empty() {
        let mut evidence: Vec<String> = log
            .oom_kills
            .iter()
            .take(3)
            .map(|k| {
                format!(
                    "worker {}: {}",
                    k.worker,
                    k.request.as_deref().unwrap_or("no request in flight")
                )
            })
            .collect();
        if log.memory_recycles > 0 {
            evidence.push(format!(
                "{} past --max-worker-memory as well",
                plural(
                    log.memory_recycles,
                    "worker was recycled",
                    "workers were recycled"
                )
            ));
        }
        out.push(finding(
            "oom-kills",
            Severity::Critical,
            format!(
                "The kernel's OOM killer ended {} in the last {w} min",
                plural(log.oom_kills.len(), "worker", "workers")
            ),
            evidence,
            "Fix the request named (stream or paginate instead of loading whole querysets or files), set --max-worker-memory below the memory limit divided by the workers, and lower workers/threads if the host is simply too small.",
        ));
    } else if log.memory_recycles > 0 {
        out.push(finding(
            "memory-recycles",
            Severity::Info,
            format!(
                "{} past --max-worker-memory in the last {w} min",
                plural(log.memory_recycles, "worker was recycled", "workers were recycled")
            ),
            Vec::new(),
            "Steady growth across requests is a leak or an unbounded cache; the recycling contains it while you look.",
        ));
    }
    if log.slow_boots > 0 {
        out.push(finding(
            "slow-boot",
            Severity::Critical,
            format!(
                "{} still loading the app after timeout in the last {w} min",
                plural(log.slow_boots, "worker was", "workers were")
            ),
            Vec::new(),
            "Take the slow step shown in the import stack out of import time (migrations, network calls, cache warm-ups), or use --preload.",
        ));
    }
    if log.crash_loops > 0 {
        out.push(finding(
            "crash-loop",
            Severity::Critical,
            "Workers die right after they start".to_string(),
            vec![format!(
                "{} in the last {w} min",
                plural(log.crash_loops, "crash-loop warning", "crash-loop warnings")
            )],
            "Read the error log just before the warning for the import error or the exit code.",
        ));
    }
    if log.loopback_calls > 0 {
        out.push(finding(
            "loopback-calls",
            Severity::Warning,
            format!(
                "The app calls its own URL ({} in the last {w} min)",
                plural(log.loopback_calls, "warning", "warnings")
            ),
            Vec::new(),
            "Call the view's function instead of its URL; over HTTP it needs a free thread and deadlocks gunicorn.",
        ));
    }
}

fn kind_counts<'a>(events: impl Iterator<Item = &'a RequestEvent>) -> Vec<(WaitKind, usize)> {
    let mut m: BTreeMap<WaitKind, usize> = BTreeMap::new();
    for e in events {
        *m.entry(e.kind()).or_default() += 1;
    }
    let mut v: Vec<(WaitKind, usize)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn starvation_finding(i: &Inputs<'_>, log: &LogSummary, out: &mut Vec<Finding>) {
    let w = i.window_minutes;
    let max_waiting = log.starvation.iter().map(|s| s.waiting).max().unwrap_or(0);
    let capacity = log
        .starvation
        .last()
        .map(|s| s.capacity)
        .or(i.server.map(ServerInfo::capacity))
        .unwrap_or(0);
    let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &log.starvation {
        for h in &s.holders {
            *holders.entry(h.as_str()).or_default() += 1;
        }
    }
    let mut top: Vec<(&str, usize)> = holders.into_iter().collect();
    top.sort_by_key(|b| std::cmp::Reverse(b.1));
    let mut evidence = vec![format!(
        "{} in the last {w} min; up to {max_waiting} connections waited",
        plural(
            log.starvation.len(),
            "starvation warning",
            "starvation warnings"
        )
    )];
    if !top.is_empty() {
        evidence.push(format!(
            "holding the capacity: {}",
            top.iter()
                .take(5)
                .map(|(p, n)| format!("{p} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let suggestion = capacity + max_waiting;
    out.push(finding(
        "capacity-below-concurrency",
        Severity::Warning,
        format!(
            "workers x threads ({capacity}) below the observed concurrency (up to {suggestion} requests at once)"
        ),
        evidence,
        format!(
            "First look at the requests holding the capacity: if they are stuck on something (see the other findings), more workers only postpone it. If they are ordinary, raise the capacity to at least {suggestion}: more threads (--threads) for I/O-bound apps, more workers (--workers, about the number of cores) for CPU-bound ones."
        ),
    ));
}

fn stats_rules(i: &Inputs<'_>, out: &mut Vec<Finding>) {
    let Some(server) = i.server else { return };
    if i.log.is_some_and(|l| !l.starvation.is_empty()) {
        return; // the log's finding already says it, with the requests named
    }
    let Some(stats) = &server.stats else { return };
    let capacity = stats.capacity.unwrap_or_else(|| server.capacity());
    if let (Some(busy), Some(waiting)) = (stats.peak_busy_threads, stats.peak_waiting) {
        if waiting > 0 && busy >= capacity {
            out.push(finding(
                "capacity-below-concurrency",
                Severity::Warning,
                format!(
                    "workers x threads ({capacity}) below the observed concurrency (up to {} requests at once since the server started)",
                    busy + waiting
                ),
                vec![format!(
                    "show stats: peak busy threads {busy} of {capacity}, peak waiting connections {waiting}"
                )],
                format!(
                    "Raise the capacity to at least {} (--threads for I/O-bound apps, --workers for CPU-bound ones) after checking that the busy requests are not stuck.",
                    busy + waiting
                ),
            ));
        }
    }
}

fn config_rules(i: &Inputs<'_>, out: &mut Vec<Finding>) {
    let Some(s) = i.server else { return };
    if s.worker_class == "sync" && s.threads > 1 {
        out.push(finding(
            "sync-with-threads",
            Severity::Info,
            format!(
                "worker_class = sync with threads = {}: runs as gthread",
                s.threads
            ),
            vec!["as in gunicorn, a sync worker with more than one thread is a threaded (gthread) worker".to_string()],
            "Write worker_class = 'gthread' so the configuration says what runs.",
        ));
    }
    if s.max_requests > 0 && s.max_requests_jitter == 0 {
        out.push(finding(
            "max-requests-without-jitter",
            Severity::Warning,
            format!(
                "max_requests = {} without max_requests_jitter: workers restart together",
                s.max_requests
            ),
            vec![if s.workers > 1 {
                format!(
                    "{} workers started together reach {} requests at about the same time and are all replaced at once",
                    s.workers, s.max_requests
                )
            } else {
                format!(
                    "with one worker only its own restart is at stake; with more workers (or after a reload, which starts them all at once) they reach {} requests together",
                    s.max_requests
                )
            }],
            format!(
                "Set max_requests_jitter = {} (about a tenth of max_requests).",
                (s.max_requests / 10).max(1)
            ),
        ));
    }
    if s.timeout > 0 && s.graceful_timeout < s.timeout {
        out.push(finding(
            "graceful-timeout-short",
            Severity::Warning,
            format!(
                "graceful_timeout {}s < timeout {}s: a reload or deploy cuts off requests the timeout allows",
                s.graceful_timeout, s.timeout
            ),
            vec![format!(
                "on HUP, a deploy or max_requests the old worker gets graceful_timeout to finish its requests; the ones still running then are cut off: {}",
                if i.nginx.is_some() {
                    "nginx passes on the 503 the worker answers them with (its own 502 for one whose response had begun)"
                } else {
                    "their clients get a 503 (a closed connection for one whose response had begun)"
                }
            )],
            format!("Set graceful_timeout >= timeout (graceful_timeout = {}).", s.timeout),
        ));
    }
    if let Some(n) = i.nginx {
        let (proxies, _) = relevant_proxies(n, Some(s));
        if let Some(p) = proxies
            .iter()
            .filter(|p| p.read_timeout.secs < s.graceful_timeout as f64)
            .min_by(|a, b| a.read_timeout.secs.total_cmp(&b.read_timeout.secs))
        {
            out.push(finding(
                "graceful-timeout-vs-nginx",
                Severity::Info,
                format!(
                    "graceful_timeout {}s > nginx proxy_read_timeout {}s (location {})",
                    s.graceful_timeout,
                    secs(p.read_timeout.secs),
                    p.location
                ),
                vec!["during a stop or reload, requests still running after nginx's read timeout get nginx's 504 even though the old worker finishes them".to_string()],
                "Keep graceful_timeout, timeout and proxy_read_timeout in this order: timeout <= graceful_timeout < proxy_read_timeout.",
            ));
        }
    }
    if s.slow_request_threshold == 0 && s.timeout > 2 {
        out.push(finding(
            "slow-request-threshold-off",
            Severity::Info,
            "Slow-request warnings are off".to_string(),
            vec!["without them a slow request is only seen when it times out".to_string()],
            format!(
                "Set slow_request_threshold = {} (about a third of timeout) to log a request's stack while it runs.",
                (s.timeout / 3).max(1)
            ),
        ));
    }
}

fn static_rules(i: &Inputs<'_>, out: &mut Vec<Finding>) {
    let mut evidence = Vec::new();
    if let Some(n) = i.nginx {
        let (proxies, by_address) = relevant_proxies(n, i.server);
        for srv in &n.servers {
            // Only servers that lead to this app matter.
            if by_address && !proxies.iter().any(|p| p.server == srv.name) {
                continue;
            }
            if let Handler::Proxied { location, at, pass } = &srv.static_handler {
                evidence.push(format!(
                    "nginx server {}: /static/ is answered by location {location} ({at}), which proxies it ({pass})",
                    srv.name
                ));
            }
        }
    }
    if let Some(a) = i.access {
        if a.static_requests > 0 {
            evidence.push(format!(
                "the access log shows {} for static or media files answered by ferricorn{}: {}",
                plural(a.static_requests, "request", "requests"),
                if a.untimed {
                    " (no times in the access log format: whole file)".to_string()
                } else {
                    format!(" in the last {} min", i.window_minutes)
                },
                a.examples.join(", ")
            ));
        }
    }
    if let Some(log) = i.log {
        let n = log
            .starvation
            .iter()
            .flat_map(|s| &s.holders)
            .filter(|h| is_static_path(h))
            .count();
        if n > 0 {
            evidence.push(format!(
                "starvation warnings name {} for static files among the requests holding the capacity",
                plural(n, "request", "requests")
            ));
        }
    }
    if !evidence.is_empty() {
        out.push(finding(
            "static-served-by-app",
            Severity::Warning,
            "Static files are served by the app, not by nginx".to_string(),
            evidence,
            "Run collectstatic and let nginx send them: `location /static/ { alias /path/to/STATIC_ROOT/; expires 30d; }` (and the same for /media/) in the server block, before `location /`. File responses hold a worker for the whole transfer.",
        ));
    }
    if let Some(n) = i.nginx {
        for srv in n.servers.iter().filter(|s| !s.unjudged_regex.is_empty()) {
            out.push(finding(
                "nginx-regex-not-judged",
                Severity::Info,
                format!("nginx server {}: regex locations not evaluated for /static/", srv.name),
                srv.unjudged_regex.clone(),
                "ferricornctl doctor matches only simple regex locations (a literal prefix or an extension list); check these by hand.",
            ));
        }
    }
}

fn host_rules(i: &Inputs<'_>, out: &mut Vec<Finding>) {
    let Some(h) = i.host else { return };
    let mib = |k: u64| k as f64 / 1024.0;
    if let Some(used) = h.swap_used_kib().filter(|u| *u > 0) {
        let total = h.swap_total_kib.unwrap_or(0);
        out.push(finding(
            "swap-in-use",
            Severity::Warning,
            format!("Swap in use: {:.0} MiB of {:.0} MiB", mib(used), mib(total)),
            vec![
                "a worker whose memory is swapped out stalls on every access; the master then sees its heartbeat stop (WORKER TIMEOUT without a stack)".to_string(),
                match (h.mem_available_kib, h.mem_total_kib) {
                    (Some(a), Some(t)) => format!("memory available {:.0} MiB of {:.0} MiB", mib(a), mib(t)),
                    _ => "memory figures not readable".to_string(),
                },
            ],
            "Give the host more memory or use less: fewer workers, --max-worker-memory to recycle growing workers, fix the requests that load too much.",
        ));
    }
    if let (Some(a), Some(t)) = (h.mem_available_kib, h.mem_total_kib) {
        if t > 0 && a * 10 < t {
            out.push(finding(
                "memory-low",
                Severity::Warning,
                format!(
                    "Memory nearly exhausted: {:.0} MiB available of {:.0} MiB",
                    mib(a),
                    mib(t)
                ),
                Vec::new(),
                "Lower workers or threads, find the process using the memory (ps, the RSS column of ferricornctl show workers), add memory.",
            ));
        }
    }
    if let Some((n, path)) = &h.cgroup_oom_kills {
        if *n > 0 {
            out.push(finding(
                "oom-kills-cgroup",
                Severity::Warning,
                format!(
                    "The server's memory cgroup recorded {}",
                    plural(*n as usize, "OOM kill", "OOM kills")
                ),
                vec![format!("oom_kill {n} in {path} (since the cgroup was created)")],
                "Compare with the error log's `Out of memory` lines to see which requests; raise the container's limit or lower workers, set --max-worker-memory below limit / workers.",
            ));
        }
    }
    if let Some(n) = h.host_oom_kills.filter(|n| *n > 0) {
        out.push(finding(
            "oom-kills-host",
            Severity::Info,
            format!(
                "The kernel recorded {} on this host since boot",
                plural(n as usize, "OOM kill", "OOM kills")
            ),
            vec![format!(
                "oom_kill {n} in /proc/vmstat (any process, any cgroup)"
            )],
            "If they are recent, `dmesg -T | grep -i 'killed process'` names the processes.",
        ));
    }
    if let Some([l1, _, _]) = h.load {
        let cpus = h.cpus.max(1) as f64;
        if l1 > cpus * 1.5 {
            out.push(finding(
                "cpu-saturated",
                Severity::Warning,
                format!("Load average {l1:.2} on {} CPUs", h.cpus),
                vec!["more runnable processes than CPUs: every request slows down, timeouts hit unrelated routes".to_string()],
                "Find what uses the CPU (top), keep workers near the number of CPUs the container really gets, move CPU-heavy work out of requests.",
            ));
        }
    }
}

fn probe_rules(i: &Inputs<'_>, out: &mut Vec<Finding>) {
    for p in i.probes {
        if let Some(e) = &p.error {
            out.push(finding(
                "probe-skipped",
                Severity::Info,
                format!("probe {}: {e}, skipped", p.url),
                Vec::new(),
                "Give an http:// URL on an address this host can reach.",
            ));
            continue;
        }
        let n = p.samples.len();
        let statuses: Vec<String> = p
            .samples
            .iter()
            .map(|s| match &s.status {
                Ok(c) => c.to_string(),
                Err(e) => e.to_string(),
            })
            .collect();
        let lat = match (p.p50(), p.p99()) {
            (Some(a), Some(b)) => format!("p50 {:.0} ms, p99 {:.0} ms", a * 1000.0, b * 1000.0),
            _ => "no response".to_string(),
        };
        let bad = p.failures() + p.server_errors();
        if bad > 0 {
            out.push(finding(
                "probe-errors",
                if bad == n {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                format!("probe {}: {bad} of {n} requests failed or got 5xx ({lat})", p.url),
                vec![format!("answers: {}", statuses.join(", "))],
                "Look at the error log lines at the time of the probe, and at nginx's error log for upstream errors.",
            ));
        } else if p.p50().is_some_and(|x| x > 1.0) {
            out.push(finding(
                "probe-slow",
                Severity::Warning,
                format!("probe {}: slow ({lat} over {n} requests)", p.url),
                vec![format!("answers: {}", statuses.join(", "))],
                "Set --slow-request-threshold to see where the time goes; compare with the access log duration (queueing shows as a gap).",
            ));
        } else {
            out.push(finding(
                "probe-latency",
                Severity::Info,
                format!("probe {}: {lat} over {n} requests", p.url),
                vec![format!("answers: {}", statuses.join(", "))],
                "",
            ));
        }
    }
}

/// Every rule, findings sorted by severity (critical first), then in rule order.
pub fn evaluate(i: &Inputs<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    nginx_rules(i, &mut out);
    log_rules(i, &mut out);
    stats_rules(i, &mut out);
    static_rules(i, &mut out);
    config_rules(i, &mut out);
    host_rules(i, &mut out);
    probe_rules(i, &mut out);
    out.sort_by_key(|f| f.severity);
    out
}

#[cfg(test)]
mod tests {
    use super::super::config::from_config_json;
    use super::super::{host, logs, nginx};
    use super::*;
    use crate::control::json::Json;

    fn server(extra: &str) -> ServerInfo {
        let text = format!(
            r#"{{"_": 0 {extra}, "bind": "['127.0.0.1:8000']", "timeout": 30, "graceful_timeout": 30, "workers": 2,
                "threads": 2, "worker_class": "gthread", "keepalive": 2, "max_requests": 1000,
                "max_requests_jitter": 100, "slow_request_threshold": 10}}"#
        );
        from_config_json(&Json::parse(&text).unwrap(), "test".into())
    }

    fn nginx_view(location_body: &str) -> NginxView {
        let conf = format!(
            "http {{ upstream app {{ server 127.0.0.1:8000; }} server {{ server_name t; location /static/ {{ alias /srv/s/; }} location / {{ proxy_pass http://app; {location_body} }} }} }}"
        );
        nginx::analyze(&nginx::parse(&conf, "t.conf").unwrap())
    }

    fn ids(f: &[Finding]) -> Vec<&'static str> {
        f.iter().map(|f| f.id).collect()
    }

    #[test]
    fn aligned_setup_is_quiet() {
        let s = server("");
        let n = nginx_view("proxy_read_timeout 60s;");
        let f = evaluate(&Inputs {
            server: Some(&s),
            nginx: Some(&n),
            window_minutes: 60,
            ..Inputs::default()
        });
        assert!(f.is_empty(), "{f:#?}");
    }

    #[test]
    fn nginx_timeouts() {
        let s = server(r#", "timeout": 30"#);
        let n = nginx_view("proxy_read_timeout 20s; proxy_send_timeout 10;");
        let f = evaluate(&Inputs {
            server: Some(&s),
            nginx: Some(&n),
            ..Inputs::default()
        });
        assert_eq!(ids(&f)[0], "nginx-timeout-shorter");
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(
            f[0].fix
                .contains("proxy_read_timeout 35s;` (timeout + margin; change it at t.conf:1)"),
            "{}",
            f[0].fix
        );
        assert!(ids(&f).contains(&"nginx-send-timeout-shorter"));
        assert!(ids(&f).contains(&"graceful-timeout-vs-nginx"));
        // nginx's default 60s against a 90s timeout
        let s = server(r#", "timeout": 90, "graceful_timeout": 90"#);
        let f = evaluate(&Inputs {
            server: Some(&s),
            nginx: Some(&nginx_view("")),
            ..Inputs::default()
        });
        let t = f.iter().find(|f| f.id == "nginx-timeout-shorter").unwrap();
        assert!(t.evidence[0].contains("nginx's default 60s"), "{t:#?}");
    }

    #[test]
    fn upstream_mismatch_and_keepalive() {
        let s = server(r#", "bind": "['127.0.0.1:9000']""#);
        let f = evaluate(&Inputs {
            server: Some(&s),
            nginx: Some(&nginx_view("proxy_read_timeout 60s;")),
            ..Inputs::default()
        });
        assert_eq!(ids(&f), vec!["nginx-upstream-mismatch"]);
        let conf = "upstream app { server localhost:8000; keepalive 8; } server { location / { proxy_pass http://app; proxy_http_version 1.1; } location /static/ { root /x; } }";
        let n = nginx::analyze(&nginx::parse(conf, "k.conf").unwrap());
        let s = server("");
        let f = evaluate(&Inputs {
            server: Some(&s),
            nginx: Some(&n),
            ..Inputs::default()
        });
        assert_eq!(ids(&f), vec!["nginx-upstream-keepalive"]);
        assert!(f[0].fix.contains("keepalive_timeout 1s"), "{}", f[0].fix);
    }

    #[test]
    fn addresses() {
        assert!(addr_matches("127.0.0.1:8000", "0.0.0.0:8000"));
        assert!(addr_matches("localhost:8000", "127.0.0.1:8000"));
        assert!(addr_matches("[::1]:8000", "127.0.0.1:8000"));
        assert!(addr_matches("unix:/run/a.sock", "unix:/run/a.sock"));
        assert!(!addr_matches("unix:/run/a.sock", "unix:/run/b.sock"));
        assert!(!addr_matches("127.0.0.1:8001", "127.0.0.1:8000"));
        assert!(!addr_matches("10.0.0.2:8000", "127.0.0.1:8000"));
        assert!(addr_matches("web:8000", "[::]:8000"));
    }

    #[test]
    fn static_and_config_rules() {
        let conf = "server { location / { proxy_pass http://127.0.0.1:8000; } }";
        let n = nginx::analyze(&nginx::parse(conf, "s.conf").unwrap());
        let s = server(
            r#", "max_requests_jitter": 0, "worker_class": "sync", "threads": 4, "graceful_timeout": 5, "slow_request_threshold": 0"#,
        );
        let f = evaluate(&Inputs {
            server: Some(&s),
            nginx: Some(&n),
            ..Inputs::default()
        });
        let got = ids(&f);
        for id in [
            "static-served-by-app",
            "max-requests-without-jitter",
            "sync-with-threads",
            "graceful-timeout-short",
            "slow-request-threshold-off",
        ] {
            assert!(got.contains(&id), "{id} missing from {got:?}");
        }
        let short = |f: &[Finding]| {
            f.iter()
                .find(|f| f.id == "graceful-timeout-short")
                .map(|f| f.evidence.join(" "))
                .unwrap_or_default()
        };
        assert!(
            short(&f).contains("nginx passes on the 503"),
            "{}",
            short(&f)
        );
        // Without nginx in the report, nginx is not blamed.
        let f = evaluate(&Inputs {
            server: Some(&s),
            ..Inputs::default()
        });
        let text = short(&f);
        assert!(text.contains("their clients get a 503"), "{text}");
        assert!(!text.contains("nginx") && !text.contains("502"), "{text}");
    }

    #[test]
    fn log_rules_group_by_route_and_kind() {
        let line = |t: &str, path: &str, frame: &str| {
            format!(
                "[2026-11-23 11:18:31 +0000] [5] [CRITICAL] WORKER TIMEOUT (pid:5)\n\
                 [2026-11-23 11:18:31 +0000] [5] [CRITICAL] Request exceeded --timeout 4s: GET {path}{t} from 127.0.0.1:1 (running for 4.0s, worker 5, thread 0)\n\
                 [2026-11-23 11:18:31 +0000] [5] [CRITICAL] Python stack of the thread running it (most recent call first):\n\
                 Stack (most recent call first):\n  File \"{frame}\", line 3 in f\n"
            )
        };
        let text = [
            line(
                "?seconds=8",
                "/slow-query/",
                "/venv/lib/python3.11/site-packages/psycopg/cursor.py",
            ),
            line(
                "?seconds=9",
                "/slow-query/",
                "/venv/lib/python3.11/site-packages/psycopg/cursor.py",
            ),
            line("", "/report/", "/srv/app/views.py"),
        ]
        .concat();
        let log = logs::summarize(&text, 0, false);
        let s = server(r#", "worker_class": "sync", "threads": 1"#);
        let f = evaluate(&Inputs {
            server: Some(&s),
            log: Some(&log),
            window_minutes: 60,
            ..Inputs::default()
        });
        let route = f.iter().find(|f| f.id == "route-causes-timeouts").unwrap();
        assert!(
            route.title.contains("/slow-query/ (2 of 3 timeouts"),
            "{}",
            route.title
        );
        assert!(route.title.contains("database"), "{}", route.title);
        let db = f.iter().find(|f| f.id == "stuck-in-database").unwrap();
        assert_eq!(db.severity, Severity::Critical);
        assert!(ids(&f).contains(&"stuck-in-app-code"));
        assert!(ids(&f).contains(&"sync-workers-waiting-on-io"));
        // spread evenly: no dominant route
        let text = [
            line("", "/a/", "/srv/a.py"),
            line("", "/b/", "/srv/a.py"),
            line("", "/c/", "/srv/a.py"),
        ]
        .concat();
        let log = logs::summarize(&text, 0, false);
        let f = evaluate(&Inputs {
            log: Some(&log),
            ..Inputs::default()
        });
        assert!(!ids(&f).contains(&"route-causes-timeouts"));
        assert!(ids(&f).contains(&"timeouts-across-routes"));
    }

    #[test]
    fn host_rules_fire_on_swap_and_oom() {
        let h = host::HostState {
            cpus: 2,
            load: Some([5.0, 1.0, 1.0]),
            mem_total_kib: Some(1_000_000),
            mem_available_kib: Some(50_000),
            swap_total_kib: Some(100_000),
            swap_free_kib: Some(40_000),
            host_oom_kills: Some(2),
            cgroup_oom_kills: Some((1, "/sys/fs/cgroup/x/memory.events".into())),
            unreadable: Vec::new(),
        };
        let f = evaluate(&Inputs {
            host: Some(&h),
            ..Inputs::default()
        });
        assert_eq!(
            ids(&f),
            vec![
                "swap-in-use",
                "memory-low",
                "oom-kills-cgroup",
                "cpu-saturated",
                "oom-kills-host"
            ]
        );
        let quiet = host::HostState {
            cpus: 2,
            load: Some([0.5, 0.5, 0.5]),
            mem_total_kib: Some(1_000_000),
            mem_available_kib: Some(500_000),
            swap_total_kib: Some(0),
            swap_free_kib: Some(0),
            host_oom_kills: Some(0),
            cgroup_oom_kills: Some((0, "x".into())),
            unreadable: Vec::new(),
        };
        assert!(evaluate(&Inputs {
            host: Some(&quiet),
            ..Inputs::default()
        })
        .is_empty());
    }
}
