//! `ferricornctl`: send one command to a server's control socket and print the answer, as a table for
//! people or as JSON (`--json`) for programs. It speaks gunicorn's protocol, so it can also drive a
//! gunicorn that has a control socket.
//!
//! Every answer names the server it came from (its pid and addresses, asked before the command), and
//! without `-s` the socket is chosen among the default one and the servers' own sockets beside it
//! ([`choose_default_socket`]), so a command cannot reach another server than the user thinks unseen.
//!
//! Exit status: 0 on success, 1 when the server cannot be reached or answers with an error, 2 for a bad
//! command line.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use clap::{value_parser, Arg, ArgAction, Command};
use pyo3::prelude::*;

use super::json::Json;
use super::protocol::{self, Request, Show};
use super::ControlCommand;

const PROG: &str = "ferricornctl";
const USAGE_ERROR: i32 = 2;
const FAILURE: i32 = 1;

/// The console script's body. Returns the exit status.
#[pyfunction]
pub fn ctl(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| {
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        let status = main(&argv, &mut out, &mut err);
        let _ = out.flush();
        let _ = err.flush();
        status
    })
}

fn command() -> Command {
    let mut commands = String::from("Commands:\n");
    let width = protocol::COMMANDS
        .iter()
        .map(|(c, _)| c.len())
        .max()
        .unwrap_or(0);
    let doctor = (
        "doctor [OPTIONS]",
        "Diagnose worker timeouts: settings vs nginx, host, logs, database, probes (see doctor --help)",
    );
    let top = (
        "top [--stuck S] [--once]",
        "A live screen: busy threads by age (stuck ones highlighted), rate, latency, waiting; s shows a stack, q quits",
    );
    for (c, h) in protocol::COMMANDS.iter().chain([&top, &doctor]) {
        commands.push_str(&hanging(&format!("  {c:width$}  "), h, HELP_WIDTH));
    }
    commands.push_str(
        "\nExamples:\n  ferricornctl show workers\n  ferricornctl -s /run/app/ferricorn.ctl worker add 2\n  \
         ferricornctl --json show stats\n  ferricornctl shutdown quick",
    );
    Command::new(PROG)
        .about("Control a running ferricorn server through its control socket")
        // The command list is laid out for this width; wider, clap would re-wrap its lines.
        .max_term_width(HELP_WIDTH)
        .disable_version_flag(true)
        .after_help(commands)
        .arg(
            Arg::new("socket")
                .short('s')
                .long("socket")
                .value_name("PATH")
                .help(
                    "The server's control socket [default: $XDG_RUNTIME_DIR/ferricorn.ctl, \
                     else ~/.ferricorn/ferricorn.ctl; when no server answers there, the one \
                     server's ferricorn.PID.ctl beside it]",
                ),
        )
        .arg(
            Arg::new("json")
                .short('j')
                .long("json")
                .action(ArgAction::SetTrue)
                .help("Print the reply as JSON"),
        )
        .arg(
            Arg::new("command")
                .short('c')
                .long("command")
                .value_name("COMMAND")
                .help("The command as one string (gunicornc's form), instead of words"),
        )
        .arg(
            Arg::new("timeout")
                .short('t')
                .long("timeout")
                .value_name("SECONDS")
                .value_parser(value_parser!(f64))
                .default_value("10")
                .help("Give up on a server that does not answer within this time"),
        )
        .arg(
            Arg::new("version")
                .short('v')
                .long("version")
                .action(ArgAction::SetTrue)
                .help("Show the version and exit"),
        )
        .arg(
            Arg::new("words")
                .value_name("COMMAND")
                .num_args(1..)
                .help("What to do: see Commands below"),
        )
}

/// Columns of `--help`.
const HELP_WIDTH: usize = 80;

/// `text` after `lead`, wrapped at `width` columns with later lines indented under its start.
fn hanging(lead: &str, text: &str, width: usize) -> String {
    let indent = " ".repeat(lead.chars().count());
    let mut out = String::new();
    let mut line = lead.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line = indent.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The index of the `doctor` word when it is the command (after the global options), so that its own
/// options are read by its own parser.
fn doctor_position(argv: &[String]) -> Option<usize> {
    command_position(argv, "doctor")
}

/// The index of the word `name` when it is the command (after the global options).
fn command_position(argv: &[String], name: &str) -> Option<usize> {
    let mut i = 1;
    while let Some(a) = argv.get(i) {
        match a.as_str() {
            "-s" | "--socket" | "-t" | "--timeout" | "-c" | "--command" => i += 2,
            "--" => return None,
            a if a.starts_with('-') => i += 1,
            w if w == name => return Some(i),
            _ => return None,
        }
    }
    None
}

fn main(argv: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    if let Some(i) = doctor_position(argv) {
        // `ferricornctl -s X doctor --json` and `ferricornctl doctor -s X --json` mean the same.
        let mut args = vec![format!("{PROG} doctor")];
        args.extend(argv[1..i].iter().cloned());
        args.extend(argv[i + 1..].iter().cloned());
        return super::doctor::main(&args, out, err);
    }
    // `top`'s own options (`--stuck`) are read by its own parser, after the global ones.
    let (argv, top_args) = match command_position(argv, "top") {
        Some(i) => (&argv[..=i], Some(&argv[i + 1..])),
        None => (argv, None),
    };
    let matches = match command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            let text = e.render().to_string();
            if e.use_stderr() {
                let _ = write!(err, "{text}");
            } else {
                let _ = write!(out, "{text}");
            }
            return e.exit_code();
        }
    };
    if matches.get_flag("version") {
        let _ = writeln!(out, "{PROG} (ferricorn {})", crate::config::VERSION);
        return 0;
    }
    let usage = |err: &mut dyn Write, msg: &str| {
        let _ = writeln!(
            err,
            "{PROG}: error: {msg}\nTry '{PROG} --help' for the commands."
        );
        USAGE_ERROR
    };
    let positional: Vec<String> = matches
        .get_many::<String>("words")
        .map(|w| w.cloned().collect())
        .unwrap_or_default();
    let words = match (matches.get_one::<String>("command"), positional.is_empty()) {
        (Some(_), false) => {
            return usage(err, "give the command either with -c or as words, not both")
        }
        (Some(c), true) => protocol::split_words(c),
        (None, _) => positional,
    };
    if words.is_empty() {
        return usage(err, "no command given");
    }
    let top = if let Some(args) = top_args {
        match super::top::parse_options(args) {
            Ok(o) => Some(o),
            Err(e) => return usage(err, &e),
        }
    } else {
        None
    };
    let request = match top {
        Some(_) => Request::Help,
        None => match protocol::parse_command(&words) {
            Ok(r) => r,
            Err(e) => return usage(err, &e),
        },
    };
    let timeout = *matches.get_one::<f64>("timeout").unwrap_or(&10.0);
    if !(timeout.is_finite() && timeout > 0.0) {
        return usage(err, "the timeout must be a positive number of seconds");
    }
    let (path, notes) = match matches.get_one::<String>("socket") {
        Some(p) => (crate::system::absolute(Path::new(p)), Vec::new()),
        None => match choose_default_socket() {
            Ok(chosen) => chosen,
            Err(e) => {
                let _ = writeln!(err, "{PROG}: {e}");
                return FAILURE;
            }
        },
    };
    let json = matches.get_flag("json");
    let timeout = Duration::from_secs_f64(timeout);
    if let Some(options) = top {
        let server = match Connection::open(&path, timeout).and_then(|mut c| c.describe_server()) {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(err, "{PROG}: {e}");
                return FAILURE;
            }
        };
        return super::top::run(&path, &server, timeout, &options, out, err);
    }
    let talk = || -> Result<(String, Json), String> {
        let mut conn = Connection::open(&path, timeout)?;
        let server = conn.describe_server()?;
        let reply = if request == Request::Show(Show::Stacks) {
            fresh_stacks(&path, timeout)?
        } else {
            conn.request(&words)?
        };
        Ok((server, reply))
    };
    let (server, reply) = match talk() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "{PROG}: {e}");
            return FAILURE;
        }
    };
    for note in notes {
        let _ = writeln!(err, "{PROG}: note: {note}");
    }
    // Which server answered: the first line for people; on stderr with --json, so the output stays JSON.
    if json {
        let _ = writeln!(err, "{PROG}: server {server}");
    } else {
        let _ = writeln!(out, "Server: {server}");
    }
    if reply.get("status").and_then(Json::as_str) != Some("ok") {
        let msg = reply
            .get("error")
            .and_then(Json::as_str)
            .unwrap_or("the server answered with an error");
        let _ = writeln!(err, "{PROG}: error: {msg}");
        return FAILURE;
    }
    let data = reply.get("data").cloned().unwrap_or(Json::Obj(Vec::new()));
    // gunicorn answers a failed `worker kill` with success: false inside an ok reply.
    if data.get("success").and_then(Json::as_bool) == Some(false) {
        let msg = data
            .get("error")
            .and_then(Json::as_str)
            .unwrap_or("the command failed");
        let _ = writeln!(err, "{PROG}: error: {msg}");
        return FAILURE;
    }
    let text = if json {
        data.pretty()
    } else {
        human(&request, &data)
    };
    let _ = writeln!(out, "{}", text.trim_end());
    // `show health` is a probe: its status says whether the server is ready.
    if request == Request::Show(Show::Health)
        && data.get("ready").and_then(Json::as_bool) != Some(true)
    {
        return FAILURE;
    }
    0
}

/// `No such file or directory`, without Rust's ` (os error 2)`.
fn describe(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Send one request and read its reply.
pub(crate) fn exchange(path: &Path, words: &[String], timeout: Duration) -> Result<Json, String> {
    Connection::open(path, timeout)?.request(words)
}

/// One connection to a control socket, for one or more requests.
pub(super) struct Connection<'a> {
    path: &'a Path,
    stream: std::os::unix::net::UnixStream,
    timeout: Duration,
    next_id: i64,
}

impl<'a> Connection<'a> {
    pub(super) fn open(path: &'a Path, timeout: Duration) -> Result<Connection<'a>, String> {
        let cannot_connect = |e: &std::io::Error| {
            format!(
                "cannot connect to {}: {} (is the server running with its control socket there? see -s)",
                path.display(),
                describe(e)
            )
        };
        let addr = socket2::SockAddr::unix(path).map_err(|e| cannot_connect(&e))?;
        let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .map_err(|e| cannot_connect(&e))?;
        sock.connect_timeout(&addr, timeout)
            .map_err(|e| cannot_connect(&e))?;
        let conn = Connection {
            path,
            stream: sock.into(),
            timeout,
            next_id: 1,
        };
        conn.stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| conn.broken(e))?;
        conn.stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| conn.broken(e))?;
        Ok(conn)
    }

    fn broken(&self, e: std::io::Error) -> String {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!(
                "no answer from {} within {:.0}s",
                self.path.display(),
                self.timeout.as_secs_f64()
            )
        } else {
            format!(
                "connection to {} failed: {}",
                self.path.display(),
                describe(&e)
            )
        }
    }

    pub(super) fn request(&mut self, words: &[String]) -> Result<Json, String> {
        let id = self.next_id;
        self.next_id += 1;
        self.stream
            .write_all(&protocol::frame(&protocol::request(id, words)))
            .map_err(|e| self.broken(e))?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!(
                    "{} closed the connection without answering",
                    self.path.display()
                )
            } else {
                self.broken(e)
            }
        })?;
        let len = u32::from_be_bytes(len) as usize;
        if len > protocol::MAX_REPLY {
            return Err(format!("reply too large ({len} bytes)"));
        }
        let mut payload = vec![0u8; len];
        self.stream
            .read_exact(&mut payload)
            .map_err(|e| self.broken(e))?;
        let text = String::from_utf8(payload).map_err(|_| "reply is not UTF-8".to_string())?;
        Json::parse(&text).map_err(|e| format!("unreadable reply: {e}"))
    }

    /// Which server this is, for the first line of the answer: `pid 1234, listening at
    /// http://127.0.0.1:8000 (control socket /run/app/ferricorn.ctl)`. Asked before the command, so
    /// that even `shutdown` names the server it stopped.
    pub(super) fn describe_server(&mut self) -> Result<String, String> {
        let pid = match super::peer_pid(std::os::fd::AsRawFd::as_raw_fd(&self.stream)) {
            Some(p) => format!("pid {p}"),
            None => "pid unknown".to_string(),
        };
        let reply = self.request(&["show".to_string(), "listeners".to_string()])?;
        let addresses: Vec<String> = reply
            .get("data")
            .and_then(|d| d.get("listeners"))
            .and_then(Json::as_array)
            .unwrap_or(&[])
            .iter()
            .filter_map(|l| l.get("address").and_then(Json::as_str))
            .map(str::to_string)
            .collect();
        let bind = if addresses.is_empty() {
            String::new()
        } else {
            format!(", listening at {}", addresses.join(", "))
        };
        Ok(format!(
            "{pid}{bind} (control socket {})",
            self.path.display()
        ))
    }
}

/// The socket a bare `ferricornctl` (no `-s`) talks to, and what the user should know about the choice.
/// The default path first; a server that found it held put its own beside it (`ferricorn.PID.ctl`):
/// when nobody answers at the default path and exactly one such server lives, that one; when several
/// do, none (the user must choose).
fn choose_default_socket() -> Result<(std::path::PathBuf, Vec<String>), String> {
    let default = super::default_socket_path_from_env();
    let others = super::sockets_beside(&default);
    let listed = |paths: &[std::path::PathBuf]| {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if super::live_server(&default).is_some() {
        let notes = if others.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "other servers have control sockets beside it: {} (choose one with -s)",
                listed(&others)
            )]
        };
        return Ok((default, notes));
    }
    match others.as_slice() {
        [] => Ok((default, Vec::new())),
        [only] => Ok((
            only.clone(),
            vec![format!(
                "no server at {}; talking to the only one beside it",
                default.display()
            )],
        )),
        _ => Err(format!(
            "no server at {}, and several beside it: {}; choose one with -s",
            default.display(),
            listed(&others)
        )),
    }
}

/// `show stacks` until every worker's snapshot was taken after the first request (each request makes
/// the workers take a new one, within about half a second), or `timeout` (at most 3 s) has passed: the
/// last reply.
pub(crate) fn fresh_stacks(path: &Path, timeout: Duration) -> Result<Json, String> {
    let words = ["show".to_string(), "stacks".to_string()];
    let first = std::time::Instant::now();
    let patience = timeout.min(Duration::from_secs(3));
    loop {
        let reply = exchange(path, &words, timeout)?;
        // Ages are rounded to hundredths.
        let since = first.elapsed().as_secs_f64() + 0.01;
        let fresh = reply
            .get("data")
            .and_then(|d| d.get("workers"))
            .and_then(Json::as_array)
            .is_none_or(|ws| {
                ws.iter().all(|w| {
                    w.get("snapshot_age")
                        .and_then(Json::as_f64)
                        .is_some_and(|age| age <= since)
                })
            });
        if fresh || first.elapsed() >= patience {
            return Ok(reply);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- human-readable output ----

/// `45s`, `1m05s`, `2h03m`, `3d04h`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A request's running time: tenths of a second while short.
fn elapsed(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        duration(secs)
    }
}

fn mib(bytes: Option<f64>) -> String {
    match bytes {
        Some(b) => format!("{:.1} MiB", b / (1024.0 * 1024.0)),
        None => "-".to_string(),
    }
}

fn text_of(v: Option<&Json>) -> String {
    match v {
        None | Some(Json::Null) => "-".to_string(),
        Some(Json::Str(s)) => s.clone(),
        Some(other) => other.encode(),
    }
}

fn human(request: &Request, data: &Json) -> String {
    match request {
        Request::Show(Show::Workers) => format_workers(data),
        Request::Show(Show::Stats) => format_stats(data),
        Request::Show(Show::Config) => format_config(data),
        Request::Show(Show::Listeners) => format_listeners(data),
        Request::Show(Show::All) => format_all(data),
        Request::Show(Show::Stacks) => format_stacks(data),
        Request::Show(Show::Metrics) => format_metrics(data),
        Request::Show(Show::Health) => format_health(data),
        Request::Show(Show::Dirty) if data.get("enabled").and_then(Json::as_bool) != Some(true) => {
            "No dirty workers".to_string()
        }
        Request::Help => format_help(data),
        Request::Action(cmd) => format_action(cmd, data),
        Request::Show(Show::Dirty) => data.pretty(),
    }
}

fn format_workers(data: &Json) -> String {
    let workers = data.get("workers").and_then(Json::as_array).unwrap_or(&[]);
    if workers.is_empty() {
        return "No workers running".to_string();
    }
    let mut lines = vec![format!(
        "{:<8} {:<7} {:<16} {:>8}  {:>10}  {}",
        "PID", "AGE", "STATE", "REQUESTS", "RSS", "HEARTBEAT"
    )];
    let mut busy = 0;
    for w in workers {
        // ferricorn's `uptime` is the age in seconds; gunicorn only has `age`, a spawn counter.
        let age = match w.get("uptime").and_then(Json::as_f64) {
            Some(s) => duration(s),
            None => text_of(w.get("age")),
        };
        let mut state = match w.get("state").and_then(Json::as_str) {
            Some(s) => s.to_string(),
            None if w.get("booted").and_then(Json::as_bool) == Some(false) => "booting".into(),
            None => "running".into(),
        };
        if w.get("retiring").and_then(Json::as_bool) == Some(true) && state != "stopping" {
            state.push_str(", retiring");
        }
        if w.get("aborted").and_then(Json::as_bool) == Some(true) {
            state.push_str(", timed out");
        }
        let heartbeat = match w.get("last_heartbeat").and_then(Json::as_f64) {
            Some(s) => format!("{} ago", elapsed(s)),
            None => "-".into(),
        };
        let in_flight = w.get("in_flight").and_then(Json::as_array).unwrap_or(&[]);
        if !in_flight.is_empty() {
            busy += 1;
        }
        lines.push(format!(
            "{:<8} {:<7} {:<16} {:>8}  {:>10}  {}",
            text_of(w.get("pid")),
            age,
            state,
            text_of(w.get("requests")),
            mib(w.get("rss").and_then(Json::as_f64)),
            heartbeat
        ));
        for r in in_flight {
            // An event loop's requests are its tasks, with what each waits for.
            let task_state = r.get("task_state").and_then(Json::as_str);
            lines.push(format!(
                "         {} {}: {} {} from {}, running {}{}",
                if task_state.is_some() {
                    "task"
                } else {
                    "thread"
                },
                text_of(r.get("thread")),
                text_of(r.get("method")),
                text_of(r.get("path")),
                match r.get("client").and_then(Json::as_str) {
                    Some("") | None => "-".to_string(),
                    Some(c) => c.to_string(),
                },
                elapsed(r.get("elapsed").and_then(Json::as_f64).unwrap_or(0.0)),
                task_state.map(|s| format!(", {s}")).unwrap_or_default()
            ));
        }
    }
    lines.push(String::new());
    let count = data
        .get("count")
        .and_then(Json::as_i64)
        .unwrap_or(workers.len() as i64);
    let noun = if count == 1 { "worker" } else { "workers" };
    lines.push(format!("Total: {count} {noun}, {busy} busy"));
    lines.join("\n")
}

/// Recent requests listed per worker by `show stacks` (the reply has more).
const RECENT_SHOWN: usize = 5;

fn format_stacks(data: &Json) -> String {
    let workers = data.get("workers").and_then(Json::as_array).unwrap_or(&[]);
    if workers.is_empty() {
        return "No workers running".to_string();
    }
    let mut lines = Vec::new();
    for w in workers {
        if !lines.is_empty() {
            lines.push(String::new());
        }
        let taken = match w.get("snapshot_age").and_then(Json::as_f64) {
            Some(s) => format!("stacks taken {} ago", elapsed(s)),
            None => "no stacks yet: the worker did not answer in time".to_string(),
        };
        lines.push(format!("Worker {} ({taken})", text_of(w.get("pid"))));
        let threads = w.get("threads").and_then(Json::as_array).unwrap_or(&[]);
        if threads.is_empty() {
            lines.push("  no request in flight".to_string());
        }
        for t in threads {
            let task_state = t.get("task_state").and_then(Json::as_str);
            lines.push(format!(
                "  {} {}: {} {} from {}, running {}{}",
                if task_state.is_some() {
                    "task"
                } else {
                    "thread"
                },
                text_of(t.get("thread")),
                text_of(t.get("method")),
                text_of(t.get("path")),
                match t.get("client").and_then(Json::as_str) {
                    Some("") | None => "-".to_string(),
                    Some(c) => c.to_string(),
                },
                elapsed(t.get("elapsed").and_then(Json::as_f64).unwrap_or(0.0)),
                task_state.map(|s| format!(", {s}")).unwrap_or_default()
            ));
            match t.get("stack").and_then(Json::as_array) {
                Some(stack) => {
                    lines.extend(stack.iter().map(|l| format!("    {}", text_of(Some(l)))))
                }
                None => lines.push("    (no stack: the request started after the snapshot)".into()),
            }
        }
        let recent = w.get("recent").and_then(Json::as_array).unwrap_or(&[]);
        if !recent.is_empty() {
            lines.push("  recently finished (newest first):".to_string());
            for r in recent.iter().rev().take(RECENT_SHOWN) {
                let started = r.get("started").and_then(Json::as_f64).unwrap_or(0.0);
                let finished = r.get("finished").and_then(Json::as_f64).unwrap_or(0.0);
                lines.push(format!(
                    "    {} {} (thread {}, ended {} ago after {})",
                    text_of(r.get("method")),
                    text_of(r.get("path")),
                    text_of(r.get("thread")),
                    elapsed(finished),
                    elapsed((started - finished).max(0.0))
                ));
            }
        }
    }
    lines.join("\n")
}

fn format_metrics(data: &Json) -> String {
    let bounds: Vec<f64> = data
        .get("duration_buckets")
        .and_then(Json::as_array)
        .unwrap_or(&[])
        .iter()
        .filter_map(Json::as_f64)
        .collect();
    let cumulative: Vec<u64> = data
        .get("duration_cumulative")
        .and_then(Json::as_array)
        .unwrap_or(&[])
        .iter()
        .filter_map(Json::as_f64)
        .map(|x| x as u64)
        .collect();
    let pct = |q| {
        super::top::quantile(&bounds, &cumulative, q)
            .map_or("-".to_string(), |s| format!("{:.1}ms", s * 1000.0))
    };
    let pairs = |key: &str| {
        data.get(key)
            .and_then(Json::as_object)
            .unwrap_or(&[])
            .iter()
            .map(|(k, v)| format!("{k} {}", text_of(Some(v))))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = vec![
        format!("Requests:           {}", text_of(data.get("requests"))),
        format!("By status:          {}", pairs("requests_by_status")),
        format!(
            "Latency:            p50 {}, p90 {}, p99 {} (since start)",
            pct(0.5),
            pct(0.9),
            pct(0.99)
        ),
        format!(
            "Threads busy:       {}/{}",
            text_of(data.get("busy_threads")),
            text_of(data.get("total_threads"))
        ),
        format!(
            "Waiting:            {} in the listen backlog, {} inside workers",
            text_of(data.get("waiting_backlog")),
            text_of(data.get("waiting_inside"))
        ),
    ];
    for (key, label) in [
        ("timeouts", "Timeouts"),
        ("slow_requests", "Slow requests"),
        ("loopback_calls", "Loopback calls"),
        ("starvation_seconds", "Starvation seconds"),
    ] {
        let label = format!("{label}:");
        lines.push(format!("{label:<20}{}", text_of(data.get(key))));
    }
    lines.push(format!("Restarts by cause:  {}", pairs("restarts")));
    lines.join("\n")
}

fn format_health(data: &Json) -> String {
    let yes = |k: &str| data.get(k).and_then(Json::as_bool) == Some(true);
    let mut lines = vec![
        format!("Live:   {}", if yes("live") { "yes" } else { "NO" }),
        format!("Ready:  {}", if yes("ready") { "yes" } else { "NO" }),
        format!("Reason: {}", text_of(data.get("reason"))),
    ];
    for w in data.get("workers").and_then(Json::as_array).unwrap_or(&[]) {
        let problem = text_of(w.get("problem"));
        lines.push(format!(
            "  worker {} {}: {}, loop beat {} ago, {}/{} threads alive{}",
            text_of(w.get("pid")),
            text_of(w.get("state")),
            if w.get("alive").and_then(Json::as_bool) == Some(true) {
                "alive"
            } else {
                "NOT ALIVE"
            },
            elapsed(w.get("loop_age").and_then(Json::as_f64).unwrap_or(0.0)),
            text_of(w.get("threads_alive")),
            text_of(w.get("threads_reporting")),
            if problem.is_empty() || problem == "-" {
                String::new()
            } else {
                format!(": {problem}")
            }
        ));
    }
    lines.join("\n")
}

fn format_stats(data: &Json) -> String {
    const ROWS: &[(&str, &str)] = &[
        ("uptime", "Uptime"),
        ("pid", "PID"),
        ("workers_current", "Workers current"),
        ("workers_target", "Workers target"),
        ("workers_spawned", "Workers spawned"),
        ("workers_retiring", "Workers retiring"),
        ("workers_killed", "Workers killed"),
        ("reloads", "Reloads"),
        ("busy_workers", "Busy workers"),
        ("busy_threads", "Busy threads"),
        ("requests", "Requests served"),
        ("capacity", "Capacity"),
        ("peak_busy_threads", "Peak busy threads"),
        ("peak_waiting", "Peak waiting"),
    ];
    ROWS.iter()
        .filter_map(|(key, label)| {
            let v = data.get(key)?;
            let text = match (*key, v.as_f64()) {
                ("uptime", Some(s)) => duration(s),
                _ => text_of(Some(v)),
            };
            let label = format!("{label}:");
            Some(format!("{label:<20}{text}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `name = value`, names padded to one width: the layout of `--print-config`.
fn format_config(data: &Json) -> String {
    let members = data.as_object().unwrap_or(&[]);
    let width = members.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    members
        .iter()
        .map(|(k, v)| format!("{k:width$} = {}", protocol::setting_text(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn format_listeners(data: &Json) -> String {
    let listeners = data
        .get("listeners")
        .and_then(Json::as_array)
        .unwrap_or(&[]);
    if listeners.is_empty() {
        return "No listeners bound".to_string();
    }
    let mut lines = vec![format!("{:<40} {:<6} {}", "ADDRESS", "TYPE", "FD")];
    for l in listeners {
        lines.push(format!(
            "{:<40} {:<6} {}",
            text_of(l.get("address")),
            text_of(l.get("type")),
            text_of(l.get("fd"))
        ));
    }
    lines.join("\n")
}

fn format_all(data: &Json) -> String {
    let mut lines = vec![format!(
        "Master: pid {}",
        text_of(data.get("arbiter").and_then(|a| a.get("pid")))
    )];
    let workers = data
        .get("web_workers")
        .and_then(Json::as_array)
        .unwrap_or(&[]);
    lines.push(format!("Workers: {}", workers.len()));
    for w in workers {
        lines.push(format!(
            "  {:<8} {}",
            text_of(w.get("pid")),
            w.get("state").and_then(Json::as_str).unwrap_or(
                if w.get("booted").and_then(Json::as_bool) == Some(false) {
                    "booting"
                } else {
                    "running"
                }
            )
        ));
    }
    lines.join("\n")
}

fn format_help(data: &Json) -> String {
    let commands = data
        .get("commands")
        .and_then(Json::as_object)
        .unwrap_or(&[]);
    let width = commands.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    let mut lines = vec!["Commands:".to_string()];
    for (c, h) in commands {
        lines.push(format!("  {c:width$}  {}", text_of(Some(h))));
    }
    lines.join("\n")
}

fn format_action(cmd: &ControlCommand, data: &Json) -> String {
    let num = |k: &str| text_of(data.get(k));
    match cmd {
        ControlCommand::AddWorkers(_) if data.get("total").is_some() => format!(
            "Workers: {} -> {} (added {})",
            num("previous"),
            num("total"),
            num("added")
        ),
        ControlCommand::RemoveWorkers(_) if data.get("total").is_some() => format!(
            "Workers: {} -> {} (removed {})",
            num("previous"),
            num("total"),
            num("removed")
        ),
        ControlCommand::KillWorker(pid) => {
            format!("Worker {pid} told to stop (SIGTERM); a new worker will replace it")
        }
        ControlCommand::Reload => {
            "Reloading: new workers start, then the old ones stop gracefully".to_string()
        }
        ControlCommand::Reopen => "Reopening the log files".to_string(),
        ControlCommand::Shutdown { graceful } => format!(
            "Shutting down ({})",
            if *graceful { "graceful" } else { "quick" }
        ),
        _ => data.pretty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (i32, String, String) {
        crate::control::run_cli(main, PROG, args)
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(run(&[]).0, 2);
        assert_eq!(run(&["frob"]).0, 2);
        assert_eq!(run(&["worker", "add", "x"]).0, 2);
        assert_eq!(run(&["--bogus", "show", "workers"]).0, 2);
        assert_eq!(run(&["-c", "show workers", "show", "stats"]).0, 2);
        let (code, out, _) = run(&["--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("worker kill PID"), "{out}");
        // The command list fits 80 columns; a wrapped help text goes on under its own column.
        let commands = &out[out.find("Commands:").expect("commands")..];
        for line in commands.lines() {
            assert!(line.chars().count() <= HELP_WIDTH, "too long: {line:?}");
        }
        assert!(
            commands
                .contains("\n                             memory, and each request in flight\n"),
            "{commands}"
        );
        assert_eq!(
            hanging("  ab  ", "one two three", 14),
            "  ab  one two\n      three\n"
        );
    }

    #[test]
    fn unreachable_server_exits_1() {
        let (code, _, err) = run(&["-s", "/nonexistent/dir/x.ctl", "show", "workers"]);
        assert_eq!(code, 1);
        assert!(
            err.contains("cannot connect to /nonexistent/dir/x.ctl"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn workers_table() {
        let data = Json::parse(
            r#"{"workers": [
                {"pid": 41, "age": 1, "booted": true, "aborted": false, "last_heartbeat": 0.25,
                 "uptime": 65.0, "state": "busy", "retiring": false, "requests": 17, "rss": 47185920,
                 "in_flight": [{"thread": 0, "method": "GET", "path": "/sleep?s=30",
                                "client": "127.0.0.1:50312", "elapsed": 4.21}]},
                {"pid": 42, "age": 2, "booted": true, "aborted": false, "last_heartbeat": 0.1,
                 "uptime": 3.0, "state": "idle", "retiring": true, "requests": 0, "rss": null,
                 "in_flight": []}
            ], "count": 2}"#,
        )
        .unwrap();
        let text = format_workers(&data);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PID"), "{text}");
        assert!(
            lines[1].starts_with("41 ") && lines[1].contains("1m05s"),
            "{text}"
        );
        assert!(
            lines[1].contains("busy") && lines[1].contains("45.0 MiB"),
            "{text}"
        );
        assert!(
            lines[2].contains("thread 0: GET /sleep?s=30 from 127.0.0.1:50312, running 4.2s"),
            "{text}"
        );
        assert!(lines[3].contains("idle, retiring"), "{text}");
        assert!(text.ends_with("Total: 2 workers, 1 busy"), "{text}");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(5.4), "5s");
        assert_eq!(duration(65.0), "1m05s");
        assert_eq!(duration(7380.0), "2h03m");
        assert_eq!(duration(190800.0), "2d05h");
        assert_eq!(elapsed(2.449), "2.4s");
    }
}
