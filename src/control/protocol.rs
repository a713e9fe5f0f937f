//! The control socket's wire protocol and command grammar, shared by the server (in the master) and
//! `ferricornctl`.
//!
//! The protocol is gunicorn's (so `gunicornc` can drive ferricorn and `ferricornctl` can drive gunicorn):
//! every message is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.
//!
//! ```text
//! request:  {"id": 1, "command": "worker add", "args": ["2"]}
//! reply:    {"id": 1, "status": "ok", "data": {"added": 2, "previous": 1, "total": 3}}
//!           {"id": 1, "status": "error", "error": "Unknown command: frob"}
//! ```
//!
//! The command is the words of `command` (split on white space) followed by `args`. A connection may
//! carry any number of requests, each answered in order.

use super::json::{obj, Json};
use super::{BusyThread, ControlCommand, ListenerInfo, Outcome, Stats, WorkerInfo, WorkerStacks};
use crate::scoreboard::WorkerState;

/// Largest message `ferricornctl` accepts from a server.
pub const MAX_REPLY: usize = 16 * 1024 * 1024;
/// Largest request the server accepts: commands are a few words.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A message with its length prefix.
pub fn frame(msg: &Json) -> Vec<u8> {
    let payload = msg.encode();
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload.as_bytes());
    out
}

/// Why a buffer does not hold a usable message.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    TooLarge(usize),
}

/// Take one complete message off the front of `buf`: `Ok(None)` while more bytes are needed.
pub fn take_frame(buf: &mut Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let payload = buf[4..4 + len].to_vec();
    buf.drain(..4 + len);
    Ok(Some(payload))
}

pub fn request(id: i64, words: &[String]) -> Json {
    obj([
        ("id", id.into()),
        ("command", words.join(" ").into()),
        ("args", Json::Arr(Vec::new())),
    ])
}

pub fn ok_reply(id: Json, data: Json) -> Json {
    obj([("id", id), ("status", "ok".into()), ("data", data)])
}

pub fn error_reply(id: Json, error: &str) -> Json {
    obj([
        ("id", id),
        ("status", "error".into()),
        ("error", error.into()),
    ])
}

/// What a `show` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    All,
    Workers,
    Stats,
    Config,
    Listeners,
    /// Each thread's request in flight with its Python stack, and the recently finished requests.
    Stacks,
    /// gunicorn's dirty-worker pool, which ferricorn does not have: always reported as not running.
    Dirty,
    /// The metrics' totals: requests by status class, the duration histogram, waiting, restarts.
    Metrics,
    /// Liveness and readiness, as `/healthz` and `/readyz` answer them.
    Health,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Show(Show),
    Action(ControlCommand),
    Help,
}

/// Every command with a line of help, in the order `help` lists them.
pub const COMMANDS: &[(&str, &str)] = &[
    (
        "show workers",
        "Each worker: pid, age, state, requests served, memory, and each request in flight",
    ),
    ("show stats", "Uptime, worker counts, reloads, busy threads"),
    ("show config", "The settings the server runs with"),
    ("show listeners", "The bound sockets"),
    (
        "show stacks",
        "The Python stack of every request in flight, and each worker's recent requests",
    ),
    (
        "show metrics",
        "Request counts by status, the latency histogram, waiting connections, restarts by cause",
    ),
    (
        "show health",
        "Liveness (every worker's I/O loop and threads alive) and readiness (false once stopping)",
    ),
    ("show all", "The master and its workers"),
    ("worker add [N]", "Run N more workers (default 1)"),
    (
        "worker remove [N]",
        "Run N fewer workers, retiring the oldest (default 1)",
    ),
    (
        "worker kill PID",
        "Stop one worker gracefully; a new one replaces it",
    ),
    (
        "reload",
        "Start fresh workers, then retire the old ones (as HUP)",
    ),
    ("reopen", "Reopen the log files (as USR1)"),
    (
        "shutdown [graceful|quick]",
        "Stop the server (as TERM, or INT for quick)",
    ),
    ("help", "This list"),
];

/// The words of a command line: split on white space, with single or double quotes grouping words.
pub fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

fn count_arg(words: &[String], i: usize) -> Result<usize, String> {
    match words.get(i) {
        None => Ok(1),
        Some(w) => match w.parse::<i64>() {
            // As gunicorn: a count below 1 means 1.
            Ok(n) => Ok(usize::try_from(n.max(1)).unwrap_or(usize::MAX)),
            Err(_) => Err(format!("Invalid argument: '{w}' is not a number")),
        },
    }
}

fn no_more(words: &[String], i: usize) -> Result<(), String> {
    match words.get(i) {
        None => Ok(()),
        Some(w) => Err(format!("Unexpected argument: '{w}'")),
    }
}

/// Read a command from its words (case-insensitive, as gunicorn).
pub fn parse_command(words: &[String]) -> Result<Request, String> {
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let word = |i: usize| lower.get(i).map(String::as_str);
    let req = match word(0) {
        None => return Err("Empty command".into()),
        Some("show") => {
            let target = match word(1) {
                None => {
                    return Err(
                        "Missing show target (workers|stats|config|listeners|stacks|metrics|health|all)".into(),
                    )
                }
                Some("all") => Show::All,
                Some("workers") => Show::Workers,
                Some("stats") => Show::Stats,
                Some("config") => Show::Config,
                Some("listeners") => Show::Listeners,
                Some("stacks") => Show::Stacks,
                Some("dirty") => Show::Dirty,
                Some("metrics") => Show::Metrics,
                Some("health") => Show::Health,
                Some(other) => return Err(format!("Unknown show target: {other}")),
            };
            no_more(words, 2)?;
            Request::Show(target)
        }
        Some("worker") => {
            let cmd = match word(1) {
                None => return Err("Missing worker action (add|remove|kill)".into()),
                Some("add") => ControlCommand::AddWorkers(count_arg(words, 2)?),
                Some("remove") => ControlCommand::RemoveWorkers(count_arg(words, 2)?),
                Some("kill") => {
                    let Some(w) = words.get(2) else {
                        return Err("Missing PID for worker kill".into());
                    };
                    match w.parse::<i32>() {
                        Ok(pid) if pid > 0 => ControlCommand::KillWorker(pid),
                        _ => return Err(format!("Invalid argument: '{w}' is not a process id")),
                    }
                }
                Some(other) => return Err(format!("Unknown worker action: {other}")),
            };
            no_more(words, 3)?;
            Request::Action(cmd)
        }
        Some("dirty") => {
            return Err("ferricorn has no dirty workers (gunicorn's dirty_apps)".into())
        }
        Some("reload") => {
            no_more(words, 1)?;
            Request::Action(ControlCommand::Reload)
        }
        Some("reopen") => {
            no_more(words, 1)?;
            Request::Action(ControlCommand::Reopen)
        }
        Some("shutdown") => {
            let graceful = match word(1) {
                None | Some("graceful") => true,
                Some("quick") => false,
                Some(other) => {
                    return Err(format!(
                        "Unknown shutdown mode: {other} (use graceful or quick)"
                    ))
                }
            };
            no_more(words, 2)?;
            Request::Action(ControlCommand::Shutdown { graceful })
        }
        Some("help") => Request::Help,
        Some(other) => return Err(format!("Unknown command: {other}")),
    };
    Ok(req)
}

pub use crate::scoreboard::state_name;

/// Seconds rounded to hundredths, as gunicorn reports them.
fn secs(x: f64) -> Json {
    Json::Float((x * 100.0).round() / 100.0)
}

/// Seconds rounded to milliseconds.
fn millis(x: f64) -> Json {
    Json::Float((x * 1000.0).round() / 1000.0)
}

/// A request in flight; `task_state` only for an event loop's task (`thread` is then its entry).
fn busy_json(b: &BusyThread) -> Json {
    let mut j = obj([
        ("thread", b.thread.into()),
        ("method", b.method.as_str().into()),
        ("path", b.path.as_str().into()),
        ("client", b.client.as_str().into()),
        ("elapsed", secs(b.elapsed_secs)),
    ]);
    if let (Some(state), Json::Obj(fields)) = (b.task_state, &mut j) {
        fields.push(("task_state".into(), state.into()));
    }
    j
}

/// One worker. The first five keys are gunicorn's (`age` is its spawn order, as there); the rest are
/// ferricorn's: `uptime` in seconds, the scoreboard `state`, `retiring` (told to stop, not yet gone),
/// `requests` served, `rss` in bytes, and `in_flight`, each thread's request.
fn worker_json(w: &WorkerInfo) -> Json {
    obj([
        ("pid", w.pid.into()),
        ("age", w.spawn_order.into()),
        ("booted", (w.state != WorkerState::Booting).into()),
        ("aborted", w.aborted.into()),
        ("last_heartbeat", secs(w.heartbeat_age_secs)),
        ("uptime", secs(w.age_secs)),
        ("state", state_name(w.state).into()),
        ("retiring", w.retiring.into()),
        ("requests", w.requests.into()),
        ("rss", w.rss_bytes.into()),
        (
            "in_flight",
            Json::Arr(w.in_flight.iter().map(busy_json).collect()),
        ),
    ])
}

/// `show stacks`: per worker, `ages_at` (the Unix time at which its ages hold), `snapshot_age`
/// (seconds; null before the worker's first snapshot),
/// `threads` (each request in flight, with `stack` as a list of lines, or null when the latest snapshot
/// predates the request) and `recent` (finished requests, oldest first, with `started`/`finished` in
/// seconds ago).
pub fn stacks_data(workers: &[WorkerStacks]) -> Json {
    let items = workers
        .iter()
        .map(|w| {
            let threads = w
                .threads
                .iter()
                .map(|t| {
                    let mut j = busy_json(&t.request);
                    if let Json::Obj(pairs) = &mut j {
                        // Milliseconds here: `doctor` compares these with the database's times.
                        for (k, v) in pairs.iter_mut() {
                            if k == "elapsed" {
                                *v = millis(t.request.elapsed_secs);
                            }
                        }
                        pairs.push((
                            "stack".to_string(),
                            t.stack.as_ref().map_or(Json::Null, |lines| {
                                Json::Arr(lines.iter().map(|l| l.as_str().into()).collect())
                            }),
                        ));
                    }
                    j
                })
                .collect();
            let recent = w
                .recent
                .iter()
                .map(|r| {
                    obj([
                        ("thread", r.thread.into()),
                        ("method", r.method.as_str().into()),
                        ("path", r.path.as_str().into()),
                        ("started", millis(r.started_secs_ago)),
                        ("finished", millis(r.finished_secs_ago)),
                    ])
                })
                .collect();
            obj([
                ("pid", w.pid.into()),
                ("ages_at", millis(w.ages_at)),
                (
                    "snapshot_age",
                    w.snapshot_age_secs.map(secs).unwrap_or(Json::Null),
                ),
                ("threads", Json::Arr(threads)),
                ("recent", Json::Arr(recent)),
            ])
        })
        .collect();
    obj([("workers", Json::Arr(items))])
}

pub fn workers_data(workers: &[WorkerInfo]) -> Json {
    obj([
        (
            "workers",
            Json::Arr(workers.iter().map(worker_json).collect()),
        ),
        ("count", workers.len().into()),
    ])
}

pub fn stats_data(s: &Stats, uptime_secs: f64) -> Json {
    obj([
        ("uptime", secs(uptime_secs)),
        ("pid", s.pid.into()),
        ("workers_current", s.workers_current.into()),
        ("workers_target", s.workers_target.into()),
        ("workers_spawned", s.workers_spawned.into()),
        ("workers_retiring", s.workers_retiring.into()),
        ("reloads", s.reloads.into()),
        ("busy_workers", s.busy_workers.into()),
        ("busy_threads", s.busy_threads.into()),
        ("requests", s.requests.into()),
        ("capacity", s.capacity.into()),
        ("peak_busy_threads", s.peak_busy_threads.into()),
        ("peak_waiting", s.peak_waiting.into()),
    ])
}

/// A setting's `--print-config` text as a JSON value: Python's `True`/`False`/`None` and integers
/// become JSON ones, anything else stays a string.
fn setting_value(text: &str) -> Json {
    match text {
        "True" => Json::Bool(true),
        "False" => Json::Bool(false),
        "None" => Json::Null,
        t => match t.parse::<i64>() {
            Ok(n) if n.to_string() == t => Json::Int(n),
            _ => Json::Str(t.to_string()),
        },
    }
}

/// The inverse of [`setting_value`], for printing.
pub fn setting_text(v: &Json) -> String {
    match v {
        Json::Bool(true) => "True".into(),
        Json::Bool(false) => "False".into(),
        Json::Null => "None".into(),
        Json::Str(s) => s.clone(),
        other => other.encode(),
    }
}

pub fn config_data(settings: &[(String, String)]) -> Json {
    let mut pairs: Vec<&(String, String)> = settings.iter().collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    Json::Obj(
        pairs
            .into_iter()
            .map(|(k, v)| (k.clone(), setting_value(v)))
            .collect(),
    )
}

pub fn listeners_data(listeners: &[ListenerInfo]) -> Json {
    let items = listeners
        .iter()
        .map(|l| {
            obj([
                ("address", l.address.as_str().into()),
                ("fd", l.fd.into()),
                ("type", l.kind.into()),
            ])
        })
        .collect();
    obj([
        ("listeners", Json::Arr(items)),
        ("count", listeners.len().into()),
    ])
}

pub fn all_data(master_pid: u32, workers: &[WorkerInfo]) -> Json {
    let web: Vec<Json> = workers
        .iter()
        .map(|w| {
            obj([
                ("pid", w.pid.into()),
                ("type", "web".into()),
                ("age", w.spawn_order.into()),
                ("booted", (w.state != WorkerState::Booting).into()),
                ("last_heartbeat", secs(w.heartbeat_age_secs)),
                ("state", state_name(w.state).into()),
            ])
        })
        .collect();
    obj([
        (
            "arbiter",
            obj([
                ("pid", master_pid.into()),
                ("type", "arbiter".into()),
                ("role", "master".into()),
            ]),
        ),
        ("web_worker_count", web.len().into()),
        ("web_workers", Json::Arr(web)),
        ("dirty_arbiter", Json::Null),
        ("dirty_workers", Json::Arr(Vec::new())),
        ("dirty_worker_count", 0i64.into()),
    ])
}

pub fn dirty_data() -> Json {
    obj([
        ("enabled", false.into()),
        ("pid", Json::Null),
        ("workers", Json::Arr(Vec::new())),
        ("apps", Json::Arr(Vec::new())),
    ])
}

pub fn help_data() -> Json {
    let commands = COMMANDS
        .iter()
        .map(|(c, h)| (c.to_string(), Json::from(*h)))
        .collect();
    obj([("commands", Json::Obj(commands))])
}

/// An action's reply, in gunicorn's shape.
pub fn outcome_data(cmd: &ControlCommand, outcome: &Outcome) -> Json {
    match (cmd, outcome) {
        (ControlCommand::AddWorkers(_), Outcome::Workers { previous, total }) => obj([
            ("added", total.saturating_sub(*previous).into()),
            ("previous", (*previous).into()),
            ("total", (*total).into()),
        ]),
        (ControlCommand::RemoveWorkers(_), Outcome::Workers { previous, total }) => obj([
            ("removed", previous.saturating_sub(*total).into()),
            ("previous", (*previous).into()),
            ("total", (*total).into()),
        ]),
        (_, Outcome::Killed(pid)) => obj([("success", true.into()), ("killed", (*pid).into())]),
        (ControlCommand::Reload, _) => obj([("status", "reloading".into())]),
        (ControlCommand::Reopen, _) => obj([("status", "reopening".into())]),
        (ControlCommand::Shutdown { graceful }, _) => obj([
            ("status", "shutting_down".into()),
            ("mode", if *graceful { "graceful" } else { "quick" }.into()),
        ]),
        _ => obj([("status", "ok".into())]),
    }
}

/// `show metrics`: the totals of a metrics snapshot.
pub fn metrics_data(s: &crate::metrics::Snapshot) -> Json {
    use crate::scoreboard::{DURATION_BUCKETS, STATUS_CLASSES};
    let mut by_status = Vec::new();
    for (i, class) in STATUS_CLASSES.iter().enumerate() {
        let n: u64 = s.requests.cells.iter().map(|row| row[i].0).sum();
        by_status.push((class.to_string(), Json::from(n)));
    }
    let (buckets, over) = s.requests.histogram();
    let mut cumulative = 0u64;
    let mut hist: Vec<Json> = buckets
        .iter()
        .map(|n| {
            cumulative += n;
            Json::from(cumulative)
        })
        .collect();
    hist.push(Json::from(cumulative + over));
    let sum_us: u64 = s.requests.cells.iter().flatten().map(|c| c.1).sum();
    let restarts = crate::metrics::Cause::ALL
        .iter()
        .map(|c| (c.label().to_string(), Json::from(s.restarts.get(*c))))
        .collect();
    obj([
        ("worker_class", s.worker_class.as_str().into()),
        ("requests", s.requests.total().into()),
        ("requests_by_status", Json::Obj(by_status)),
        (
            "duration_buckets",
            Json::Arr(DURATION_BUCKETS.iter().map(|b| Json::Float(*b)).collect()),
        ),
        ("duration_cumulative", Json::Arr(hist)),
        ("duration_sum", Json::Float(sum_us as f64 / 1e6)),
        ("busy_threads", s.busy_threads.into()),
        ("total_threads", s.total_threads.into()),
        ("waiting_backlog", s.waiting_backlog.into()),
        ("waiting_inside", s.waiting_inside.into()),
        ("timeouts", s.requests.events[0].into()),
        ("slow_requests", s.requests.events[1].into()),
        ("loopback_calls", s.requests.events[2].into()),
        ("starvation_seconds", secs(s.starvation_seconds)),
        ("restarts", Json::Obj(restarts)),
        ("live", s.live.into()),
        ("ready", s.ready.into()),
    ])
}

/// `show health`.
pub fn health_data(h: &crate::metrics::health::Health) -> Json {
    let workers = h
        .workers
        .iter()
        .map(|w| {
            obj([
                ("pid", w.pid.into()),
                ("state", state_name(w.state).into()),
                ("alive", w.alive.into()),
                ("loop_age", secs(w.loop_age_secs)),
                ("threads_reporting", w.threads_reporting.into()),
                ("threads_alive", w.threads_alive.into()),
                ("problem", w.problem.as_str().into()),
            ])
        })
        .collect();
    obj([
        ("live", h.live.into()),
        ("ready", h.ready.into()),
        ("stopping", h.stopping.into()),
        ("reason", h.reason.as_str().into()),
        ("workers", Json::Arr(workers)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        split_words(s)
    }

    #[test]
    fn frames() {
        let msg = request(7, &words("show workers"));
        let mut buf = frame(&msg);
        buf.extend_from_slice(&[0, 0]);
        let payload = take_frame(&mut buf, MAX_REQUEST).unwrap().unwrap();
        assert_eq!(
            Json::parse(std::str::from_utf8(&payload).unwrap()).unwrap(),
            msg
        );
        assert_eq!(buf, vec![0, 0]);
        assert_eq!(take_frame(&mut buf, MAX_REQUEST), Ok(None));
        let mut big = (1u32 << 30).to_be_bytes().to_vec();
        assert_eq!(
            take_frame(&mut big, MAX_REQUEST),
            Err(FrameError::TooLarge(1 << 30))
        );
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse_command(&words("show workers")),
            Ok(Request::Show(Show::Workers))
        );
        assert_eq!(
            parse_command(&words("SHOW Stats")),
            Ok(Request::Show(Show::Stats))
        );
        assert_eq!(
            parse_command(&words("worker add")),
            Ok(Request::Action(ControlCommand::AddWorkers(1)))
        );
        assert_eq!(
            parse_command(&words("worker add 3")),
            Ok(Request::Action(ControlCommand::AddWorkers(3)))
        );
        assert_eq!(
            parse_command(&words("worker remove 0")),
            Ok(Request::Action(ControlCommand::RemoveWorkers(1)))
        );
        assert_eq!(
            parse_command(&words("worker kill 123")),
            Ok(Request::Action(ControlCommand::KillWorker(123)))
        );
        assert_eq!(
            parse_command(&words("shutdown")),
            Ok(Request::Action(ControlCommand::Shutdown { graceful: true }))
        );
        assert_eq!(
            parse_command(&words("shutdown quick")),
            Ok(Request::Action(ControlCommand::Shutdown {
                graceful: false
            }))
        );
        assert_eq!(parse_command(&words("help")), Ok(Request::Help));
        for bad in [
            "",
            "frob",
            "show",
            "show things",
            "worker",
            "worker add x",
            "worker kill",
            "worker kill -3",
            "shutdown now",
            "reload please",
            "show workers extra",
        ] {
            assert!(parse_command(&words(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn word_splitting() {
        assert_eq!(words("  show   workers "), vec!["show", "workers"]);
        assert_eq!(words("a 'b c' \"d\""), vec!["a", "b c", "d"]);
        assert_eq!(words("x ''"), vec!["x", ""]);
    }

    #[test]
    fn config_values() {
        let data = config_data(&[
            ("workers".into(), "3".into()),
            ("preload_app".into(), "False".into()),
            ("pidfile".into(), "None".into()),
            ("bind".into(), "['127.0.0.1:8000']".into()),
            ("proc_name".into(), "007".into()),
        ]);
        assert_eq!(data.get("workers"), Some(&Json::Int(3)));
        assert_eq!(data.get("preload_app"), Some(&Json::Bool(false)));
        assert_eq!(data.get("pidfile"), Some(&Json::Null));
        assert_eq!(data.get("proc_name"), Some(&Json::from("007")));
        for (k, v) in data.as_object().unwrap() {
            let back = setting_text(v);
            assert!(
                ["3", "False", "None", "['127.0.0.1:8000']", "007"].contains(&back.as_str()),
                "{k}"
            );
        }
    }
}
