//! The error log as `ferricornctl doctor` reads it: the lines of the last N minutes that say why
//! requests were slow or stuck (`WORKER TIMEOUT` with its request and stack, slow-request warnings,
//! starvation warnings), why workers died (OOM kills, memory recycling, slow boots, crash loops), grouped
//! by request path, each stack classified by where it waits (database driver, network, app code).
//!
//! The formats are the ones `src/worker/mod.rs` and `src/arbiter/mod.rs` write (see
//! docs/diagnostics.md): `[2026-11-23 11:18:31 +0000] [pid] [LEVEL] message`, with Python stacks on
//! the following lines, which do not start with `[`. Only the end of a large log is read
//! ([`MAX_READ`]), which is plenty for a window of minutes.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The most of a log that is read, from its end.
pub const MAX_READ: u64 = 32 * 1024 * 1024;

#[derive(Debug)]
pub enum LogError {
    Open(std::io::Error),
    NotAFile,
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Open(e) => write!(f, "{e}"),
            LogError::NotAFile => f.write_str("not a regular file"),
        }
    }
}

/// The last [`MAX_READ`] bytes of a regular file (a FIFO or device would block or never end), and
/// whether the start was cut off. The first, partial line of a cut read is dropped.
pub fn read_tail(path: &Path) -> Result<(String, bool), LogError> {
    let meta = std::fs::metadata(path).map_err(LogError::Open)?;
    if !meta.is_file() {
        return Err(LogError::NotAFile);
    }
    let mut f = std::fs::File::open(path).map_err(LogError::Open)?;
    let cut = meta.len() > MAX_READ;
    if cut {
        f.seek(SeekFrom::Start(meta.len() - MAX_READ))
            .map_err(LogError::Open)?;
    }
    let mut bytes = Vec::new();
    f.take(MAX_READ)
        .read_to_end(&mut bytes)
        .map_err(LogError::Open)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if cut {
        let start = text.find('\n').map_or(text.len(), |i| i + 1);
        text.drain(..start);
    }
    Ok((text, cut))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Seconds since the epoch of a civil time with a `+hhmm` offset.
fn epoch(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, offset: &str) -> Option<i64> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = offset.get(1..5)?;
    let oh: i64 = digits.get(..2)?.parse().ok()?;
    let om: i64 = digits.get(2..)?.parse().ok()?;
    let local =
        days_from_civil(y, mo, d) * 86400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s);
    Some(local - sign * (oh * 3600 + om * 60))
}

/// `2026-11-23 11:18:31 +0000` (the error log's stamp).
pub fn parse_error_time(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once(' ')?;
    let (time, offset) = rest.split_once(' ')?;
    let mut d = date.split('-');
    let (y, mo, day) = (d.next()?, d.next()?, d.next()?);
    let mut t = time.split(':');
    let (h, mi, sec) = (t.next()?, t.next()?, t.next()?);
    epoch(
        y.parse().ok()?,
        mo.parse().ok()?,
        day.parse().ok()?,
        h.parse().ok()?,
        mi.parse().ok()?,
        sec.parse().ok()?,
        offset,
    )
}

/// `23/Nov/2026:11:19:42 +0000` (the access log's `%(t)s`, without its brackets).
pub fn parse_access_time(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (stamp, offset) = s.split_once(' ')?;
    let mut parts = stamp.splitn(4, ['/', ':']);
    let (day, mon, year) = (parts.next()?, parts.next()?, parts.next()?);
    let mut t = parts.next()?.split(':');
    let (h, mi, sec) = (t.next()?, t.next()?, t.next()?);
    let mo = MONTHS.iter().position(|m| *m == mon)? as u32 + 1;
    epoch(
        year.parse().ok()?,
        mo,
        day.parse().ok()?,
        h.parse().ok()?,
        mi.parse().ok()?,
        sec.parse().ok()?,
        offset,
    )
}

/// One frame of a faulthandler-style stack: `File "path", line N in function`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub file: String,
    pub line: u32,
    pub function: String,
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} in {}", self.file, self.line, self.function)
    }
}

/// A stack line: `  File "/srv/app/views.py", line 12 in view`.
pub fn parse_frame(line: &str) -> Option<Frame> {
    let rest = line.trim_start().strip_prefix("File \"")?;
    let (file, rest) = rest.split_once("\", line ")?;
    let (num, function) = rest.split_once(" in ")?;
    Some(Frame {
        file: file.to_string(),
        line: num.trim().parse().ok()?,
        function: function.trim().to_string(),
    })
}

/// Where a stuck request's thread was, judged from its stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WaitKind {
    /// Inside a database driver or ORM query code: a slow query or a lock.
    Database,
    /// Inside socket, HTTP client or cache-client code: an external call.
    Network,
    /// In the app's own code: computing, or a blocking call made from it (its top frame names it).
    AppCode,
    /// No Python frame: the thread was in ferricorn, sending the response to a slow client.
    NoPython,
    /// No stack was logged (a worker killed by the master, or a truncated log).
    Unknown,
}

impl WaitKind {
    pub fn name(self) -> &'static str {
        match self {
            WaitKind::Database => "database",
            WaitKind::Network => "network",
            WaitKind::AppCode => "app code",
            WaitKind::NoPython => "response transfer",
            WaitKind::Unknown => "unknown",
        }
    }
}

/// Path fragments of database drivers and ORMs.
const DB_MARKERS: &[&str] = &[
    "/psycopg/",
    "/psycopg2/",
    "/psycopg_c/",
    "/psycopg_pool/",
    "/django/db/",
    "/sqlalchemy/",
    "/pymysql/",
    "/MySQLdb/",
    "/asyncpg/",
    "/sqlite3/",
    "/oracledb/",
    "/cx_Oracle",
    "/pymongo/",
];
/// Path fragments of network clients.
const NET_MARKERS: &[&str] = &[
    "/socket.py",
    "/ssl.py",
    "/selectors.py",
    "/http/client.py",
    "/urllib/request.py",
    "/requests/",
    "/urllib3/",
    "/httpx/",
    "/httpcore/",
    "/aiohttp/",
    "/redis/",
    "/smtplib.py",
    "/django/core/cache/",
    "/django/core/mail/",
];

/// The innermost frame that belongs to a driver or a network client decides; otherwise app code.
pub fn classify(stack: &[Frame], had_no_python_marker: bool) -> WaitKind {
    if had_no_python_marker && stack.is_empty() {
        return WaitKind::NoPython;
    }
    if stack.is_empty() {
        return WaitKind::Unknown;
    }
    for f in stack {
        if DB_MARKERS.iter().any(|m| f.file.contains(m)) {
            return WaitKind::Database;
        }
        if NET_MARKERS.iter().any(|m| f.file.contains(m)) {
            return WaitKind::Network;
        }
    }
    WaitKind::AppCode
}

/// A request named by a timeout or slow-request line.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestEvent {
    pub time: i64,
    pub method: String,
    /// The path without its query string (what events are grouped by).
    pub path: String,
    /// The request target as logged, query included.
    pub target: String,
    pub worker: i32,
    pub stack: Vec<Frame>,
    pub no_python_frame: bool,
}

impl RequestEvent {
    /// An event as the log line names it; its stack follows on later lines, if at all.
    fn new(time: i64, method: String, target: String, worker: i32) -> RequestEvent {
        RequestEvent {
            time,
            path: path_of(&target),
            method,
            target,
            worker,
            stack: Vec::new(),
            no_python_frame: false,
        }
    }

    pub fn kind(&self) -> WaitKind {
        classify(&self.stack, self.no_python_frame)
    }

    /// The innermost frame outside Python's and ferricorn's own files: the app line to look at.
    pub fn app_frame(&self) -> Option<&Frame> {
        app_frame(&self.stack)
    }
}

/// The innermost frame of the app's own code (not a driver, a client library, or the standard
/// library), else the innermost frame.
pub fn app_frame(stack: &[Frame]) -> Option<&Frame> {
    stack
        .iter()
        .find(|f| {
            !f.file.starts_with('<')
                && !DB_MARKERS
                    .iter()
                    .chain(NET_MARKERS)
                    .any(|m| f.file.contains(m))
                && !f.file.contains("/lib/python3")
        })
        .or_else(|| stack.first())
}

/// A starvation warning: all threads busy while connections waited.
#[derive(Clone, Debug, PartialEq)]
pub struct Starvation {
    pub time: i64,
    pub capacity: u64,
    pub waiting: u64,
    /// Paths (no query) of the requests holding the capacity.
    pub holders: Vec<String>,
}

/// A worker the kernel's OOM killer ended, as the master attributed it.
#[derive(Clone, Debug, PartialEq)]
pub struct OomKill {
    pub time: i64,
    pub worker: i32,
    /// The request in flight, as logged (`GET /alloc?mb=1000 from 127.0.0.1:49222, running for 0.1s`).
    pub request: Option<String>,
}

/// What the error log says about the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogSummary {
    pub since: i64,
    /// Log lines (with a stamp) inside the window, and in the whole part read.
    pub lines_in_window: usize,
    pub lines_read: usize,
    pub cut: bool,
    /// `WORKER TIMEOUT` lines in the window, named or not.
    pub worker_timeouts: usize,
    /// Timed-out requests with their request line (and usually a stack).
    pub timeouts: Vec<RequestEvent>,
    pub slow: Vec<RequestEvent>,
    pub starvation: Vec<Starvation>,
    pub oom_kills: Vec<OomKill>,
    /// `--max-worker-memory` recycles.
    pub memory_recycles: usize,
    pub slow_boots: usize,
    pub crash_loops: usize,
    pub loopback_calls: usize,
}

/// Requests grouped by path: (path, timeouts, slow), most events first.
pub type PathCounts = Vec<(String, usize, usize)>;

impl LogSummary {
    pub fn by_path(&self) -> PathCounts {
        let mut m: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for e in &self.timeouts {
            m.entry(&e.path).or_default().0 += 1;
        }
        for e in &self.slow {
            m.entry(&e.path).or_default().1 += 1;
        }
        let mut v: PathCounts = m
            .into_iter()
            .map(|(p, (t, s))| (p.to_string(), t, s))
            .collect();
        v.sort_by(|a, b| (b.1 + b.2, b.1).cmp(&(a.1 + a.2, a.1)).then(a.0.cmp(&b.0)));
        v
    }
}

/// `[2026-11-23 11:18:31 +0000] [20823] [CRITICAL] message` → (time, pid, level, message).
fn split_line(line: &str) -> Option<(i64, i32, &str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (stamp, rest) = rest.split_once("] [")?;
    let (pid, rest) = rest.split_once("] [")?;
    let (level, msg) = rest.split_once("] ")?;
    Some((parse_error_time(stamp)?, pid.parse().ok()?, level, msg))
}

/// `GET /sleep?s=30 from 127.0.0.1:1234 ...` → (method, target).
fn request_words(s: &str) -> Option<(String, String)> {
    let mut w = s.split_whitespace();
    let method = w.next()?;
    let target = w.next()?;
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || w.next() != Some("from") {
        return None;
    }
    Some((method.to_string(), target.to_string()))
}

fn path_of(target: &str) -> String {
    target.split('?').next().unwrap_or(target).to_string()
}

fn number_after(s: &str, key: &str) -> Option<u64> {
    let rest = &s[s.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[derive(Clone, Copy)]
enum StackOwner {
    Timeout(usize),
    Slow(usize),
}

/// Read the events of the window `[since, ∞)` from a log's text.
pub fn summarize(text: &str, since: i64, cut: bool) -> LogSummary {
    let mut s = LogSummary {
        since,
        cut,
        ..LogSummary::default()
    };
    let mut owner: Option<StackOwner> = None;
    for line in text.lines() {
        let Some((time, pid, level, msg)) = split_line(line) else {
            // A stack line (or a line of app output): it belongs to the request whose stack is open.
            let Some(o) = owner else { continue };
            let ev = match o {
                StackOwner::Timeout(i) => s.timeouts.get_mut(i),
                StackOwner::Slow(i) => s.slow.get_mut(i),
            };
            if let Some(ev) = ev {
                if let Some(f) = parse_frame(line) {
                    ev.stack.push(f);
                } else if line.trim() == "<no Python frame>" {
                    ev.no_python_frame = true;
                }
            }
            continue;
        };
        s.lines_read += 1;
        // A stack goes on across the header line that introduces it.
        if !msg.starts_with("Python stack of the thread running it") {
            owner = None;
        }
        if time < since {
            continue;
        }
        s.lines_in_window += 1;
        if msg.starts_with("WORKER TIMEOUT (pid:") {
            s.worker_timeouts += 1;
        } else if let Some(rest) = msg.strip_prefix("Request exceeded --timeout ") {
            let Some((method, target)) = rest.split_once(": ").and_then(|(_, r)| request_words(r))
            else {
                continue;
            };
            s.timeouts
                .push(RequestEvent::new(time, method, target, pid));
            owner = Some(StackOwner::Timeout(s.timeouts.len() - 1));
        } else if let Some(rest) = msg.strip_prefix("Request in flight on worker ") {
            // The master names the request of a worker that did not end it itself; the worker may have
            // logged it already.
            let Some((w, req)) = rest.split_once(": ") else {
                continue;
            };
            let worker: i32 = w.parse().unwrap_or(0);
            let Some((method, target)) = request_words(req) else {
                continue;
            };
            if !s
                .timeouts
                .iter()
                .any(|e| e.worker == worker && e.target == target)
            {
                s.timeouts
                    .push(RequestEvent::new(time, method, target, worker));
            }
        } else if let Some(rest) = msg.strip_prefix("Slow request: ") {
            let Some((method, target)) = request_words(rest) else {
                continue;
            };
            s.slow.push(RequestEvent::new(time, method, target, pid));
            owner = Some(StackOwner::Slow(s.slow.len() - 1));
        } else if msg.starts_with("All ") && msg.contains(" worker threads are busy and ") {
            let holders = msg
                .split_once("Holding the capacity: ")
                .map(|(_, h)| {
                    h.split("), ")
                        .filter_map(|item| {
                            let mut w = item.split_whitespace();
                            let _method = w.next()?;
                            Some(path_of(w.next()?))
                        })
                        .collect()
                })
                .unwrap_or_default();
            s.starvation.push(Starvation {
                time,
                capacity: number_after(msg, "All ").unwrap_or(0),
                waiting: number_after(msg, "busy and ").unwrap_or(0),
                holders,
            });
        } else if msg.contains("was sent SIGKILL! Out of memory") {
            s.oom_kills.push(OomKill {
                time,
                worker: number_after(msg, "Worker (pid:")
                    .and_then(|n| i32::try_from(n).ok())
                    .unwrap_or(0),
                request: msg
                    .split_once("request in flight: ")
                    .map(|(_, r)| r.trim_end_matches(").").to_string()),
            });
        } else if msg.contains("above --max-worker-memory") {
            s.memory_recycles += 1;
        } else if msg.contains("is still loading the app after --timeout") {
            s.slow_boots += 1;
        } else if msg.starts_with("Workers are dying right after they start") {
            s.crash_loops += 1;
        } else if msg.starts_with("Loopback call: ") {
            s.loopback_calls += 1;
        }
        let _ = level;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the server writes them (docs/diagnostics.md), plus a Django stack in psycopg.
    const LOG: &str = r#"[2026-11-23 11:18:20 +0000] [20823] [INFO] Booting worker with pid: 20823
[2026-11-23 11:18:31 +0000] [20823] [CRITICAL] WORKER TIMEOUT (pid:20823)
[2026-11-23 11:18:31 +0000] [20823] [CRITICAL] Request exceeded --timeout 2s: GET /sleep?s=30 from 127.0.0.1:36870 (running for 2.0s, worker 20823, thread 0)
[2026-11-23 11:18:31 +0000] [20823] [CRITICAL] Python stack of the thread running it (most recent call first):
Stack (most recent call first):
  File "/work/main/tests/apps/stuck.py", line 21 in sleeping_view
  File "/work/main/tests/apps/stuck.py", line 55 in application
[2026-11-23 11:18:32 +0000] [20823] [INFO] Worker exiting (pid: 20823)
[2026-11-23 11:19:01 +0000] [21381] [WARNING] Slow request: GET /slow-query/?seconds=8 from 127.0.0.1:56486 still running after 1.0s (--slow-request-threshold 1s; worker 21381, thread 0). Its Python stack now (most recent call first):
Stack (most recent call first):
  File "/usr/lib/python3/dist-packages/psycopg/connection.py", line 969 in wait
  File "/usr/lib/python3/dist-packages/psycopg/cursor.py", line 737 in execute
  File "/usr/lib/python3/dist-packages/django/db/backends/utils.py", line 105 in _execute
  File "/srv/app/shop/views.py", line 40 in slow_query
[2026-11-23 11:19:05 +0000] [21381] [CRITICAL] WORKER TIMEOUT (pid:21381)
[2026-11-23 11:19:05 +0000] [21381] [CRITICAL] Request exceeded --timeout 4s: GET /slow-query/?seconds=8 from 127.0.0.1:56486 (running for 4.0s, worker 21381, thread 0)
[2026-11-23 11:19:05 +0000] [21381] [CRITICAL] Python stack of the thread running it (most recent call first):
Stack (most recent call first):
  File "/usr/lib/python3/dist-packages/psycopg/connection.py", line 969 in wait
  File "/srv/app/shop/views.py", line 40 in slow_query
[2026-11-23 11:19:23 +0000] [21858] [WARNING] All 2 worker threads are busy and 3 connections are waiting (3 in the listen backlog, 0 inside workers) for 1.0s. Holding the capacity: GET /sleep?s=4 (2.0s, worker 21901), GET /report/?n=5 (2.0s, worker 21901). Find what these requests wait on, or raise --workers/--threads.
[2026-11-23 11:20:20 +0000] [24377] [ERROR] Worker (pid:24443) was sent SIGKILL! Out of memory: the kernel's OOM killer ended it (last RSS 18.1 MiB; request in flight: GET /alloc?mb=1000 from 127.0.0.1:49222, running for 0.1s).
[2026-11-23 11:22:01 +0000] [30428] [WARNING] Slow request: GET /download?size=41943040 from 127.0.0.1:42036 still running after 1.4s (--slow-request-threshold 1s; worker 30428, thread 0). Its Python stack now (most recent call first):
Stack (most recent call first):
  <no Python frame>
[2026-11-23 11:34:31 +0000] [6002] [CRITICAL] WORKER TIMEOUT (pid:6054)
[2026-11-23 11:34:32 +0000] [6002] [ERROR] Worker (pid:6054) was sent SIGKILL! The master killed it after WORKER TIMEOUT (it did not stop by itself).
[2026-11-23 11:35:00 +0000] [6002] [CRITICAL] WORKER TIMEOUT (pid:7000)
[2026-11-23 11:35:00 +0000] [6002] [CRITICAL] Request in flight on worker 7000: GET /recv from 127.0.0.1:5, running for 9.0s
[2026-11-23 11:35:01 +0000] [6002] [WARNING] Worker (pid:25017) uses 204.8 MiB, above --max-worker-memory 150 MiB: replacing it after its current requests
[2026-11-23 11:35:02 +0000] [25522] [ERROR] Worker (pid:25611) is still loading the app after --timeout 2s: a slow boot, not a request timeout. Python stack of the import (most recent call first):
Current thread 0x00007efe331d0b80 (most recent call first):
  File "/work/main/tests/apps/slowboot.py", line 8 in _load_models
"#;

    #[test]
    fn times() {
        assert_eq!(parse_error_time("1970-01-01 00:00:00 +0000"), Some(0));
        assert_eq!(
            parse_error_time("2026-11-23 11:18:31 +0000"),
            Some(1_795_432_711)
        );
        assert_eq!(
            parse_error_time("2026-11-23 12:18:31 +0100"),
            Some(1_795_432_711)
        );
        assert_eq!(
            parse_access_time("23/Nov/2026:11:18:31 +0000"),
            Some(1_795_432_711)
        );
        assert_eq!(parse_error_time("2026-13-23 11:18:31 +0000"), None);
        assert_eq!(parse_access_time("23/Foo/2026:11:18:31 +0000"), None);
        assert_eq!(parse_error_time("garbage"), None);
    }

    #[test]
    fn events_with_stacks() {
        let s = summarize(LOG, 0, false);
        assert_eq!(s.worker_timeouts, 4);
        assert_eq!(s.timeouts.len(), 3);
        let t = &s.timeouts[0];
        assert_eq!((t.method.as_str(), t.path.as_str()), ("GET", "/sleep"));
        assert_eq!(t.target, "/sleep?s=30");
        assert_eq!(t.stack.len(), 2);
        assert_eq!(t.stack[0].function, "sleeping_view");
        assert_eq!(t.kind(), WaitKind::AppCode);
        assert_eq!(s.timeouts[1].path, "/slow-query/");
        assert_eq!(s.timeouts[1].kind(), WaitKind::Database);
        assert_eq!(
            s.timeouts[1].app_frame().map(|f| f.function.as_str()),
            Some("slow_query")
        );
        // declared by the master: no stack
        assert_eq!(s.timeouts[2].path, "/recv");
        assert_eq!(s.timeouts[2].kind(), WaitKind::Unknown);
        assert_eq!(s.slow.len(), 2);
        assert_eq!(s.slow[0].kind(), WaitKind::Database);
        assert_eq!(s.slow[0].stack.len(), 4);
        assert_eq!(s.slow[1].kind(), WaitKind::NoPython);
        assert_eq!(s.starvation.len(), 1);
        assert_eq!(s.starvation[0].capacity, 2);
        assert_eq!(s.starvation[0].waiting, 3);
        assert_eq!(s.starvation[0].holders, vec!["/sleep", "/report/"]);
        assert_eq!(s.oom_kills.len(), 1);
        assert_eq!(s.oom_kills[0].worker, 24443);
        assert_eq!(
            s.oom_kills[0].request.as_deref(),
            Some("GET /alloc?mb=1000 from 127.0.0.1:49222, running for 0.1s")
        );
        assert_eq!(s.memory_recycles, 1);
        assert_eq!(s.slow_boots, 1);
        let by = s.by_path();
        assert_eq!(by[0], ("/slow-query/".to_string(), 1, 1));
    }

    #[test]
    fn window() {
        let since = parse_error_time("2026-11-23 11:19:00 +0000").unwrap();
        let s = summarize(LOG, since, false);
        assert_eq!(s.timeouts.len(), 2);
        assert_eq!(s.timeouts[0].path, "/slow-query/");
        // the stack of an event before the window is not given to the next one
        assert!(s.timeouts.iter().all(|t| t.stack.len() <= 2));
        let s = summarize(LOG, i64::MAX, false);
        assert_eq!(s.lines_in_window, 0);
        assert!(s.lines_read > 10);
    }

    #[test]
    fn tail_of_a_large_file() {
        let dir = std::env::temp_dir().join(format!("fcn-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("err.log");
        std::fs::write(&p, LOG).unwrap();
        let (text, cut) = read_tail(&p).unwrap();
        assert!(!cut);
        assert_eq!(text, LOG);
        assert!(matches!(read_tail(&dir), Err(LogError::NotAFile)));
        assert!(matches!(
            read_tail(&dir.join("nope")),
            Err(LogError::Open(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
