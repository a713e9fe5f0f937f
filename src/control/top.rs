//! `ferricornctl top`: a live screen of a running server, refreshed every second, as `top` and
//! `uwsgitop` are: the workers, every busy thread with the request it runs and for how long (oldest
//! first, the stuck ones highlighted), the request rate and latency percentiles of the last interval,
//! waiting connections and restarts. A key dumps the Python stack of the selected thread.
//!
//! It is a client of the control socket only (`show workers`, `show metrics`, and `show stacks` on
//! demand), so it costs the server what those commands cost. Keys: `q` quits, `j`/`k` or the arrows
//! move the selection, `s` (or Enter) shows the selected thread's stack, Esc or `s` hides it.
//! `--once` prints one screen without taking over the terminal.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::client::{fresh_stacks, Connection};
use super::json::Json;

/// The options of `top`, after the word.
pub struct Options {
    pub interval: Duration,
    /// Requests running at least this long are shown as stuck.
    pub stuck: f64,
    pub once: bool,
}

pub const USAGE: &str =
    "ferricornctl [-s SOCKET] top [--interval SECONDS] [--stuck SECONDS] [--once]";

pub fn parse_options(words: &[String]) -> Result<Options, String> {
    let mut o = Options {
        interval: Duration::from_secs(1),
        stuck: 5.0,
        once: false,
    };
    let mut i = 0;
    while i < words.len() {
        let number = |i: usize| -> Result<f64, String> {
            let w = words
                .get(i + 1)
                .ok_or_else(|| format!("{} needs a number of seconds", words[i]))?;
            match w.parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(format!(
                    "{}: '{w}' is not a positive number of seconds",
                    words[i]
                )),
            }
        };
        match words[i].as_str() {
            "--interval" | "-i" => {
                o.interval = Duration::from_secs_f64(number(i)?.max(0.1));
                i += 1;
            }
            "--stuck" => {
                o.stuck = number(i)?;
                i += 1;
            }
            "--once" => o.once = true,
            other => return Err(format!("top: unknown option '{other}' (usage: {USAGE})")),
        }
        i += 1;
    }
    Ok(o)
}

/// One busy thread, a row of the screen.
struct Busy {
    pid: i64,
    thread: i64,
    age: f64,
    what: String,
}

/// The latency at quantile `q` from cumulative bucket counts (the last one is `+Inf`), interpolated
/// linearly inside its bucket as Prometheus' `histogram_quantile` does.
pub fn quantile(bounds: &[f64], cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev_count = 0u64;
    let mut prev_bound = 0.0;
    for (i, &c) in cumulative.iter().enumerate() {
        if c as f64 >= rank {
            let Some(&upper) = bounds.get(i) else {
                // In +Inf: the highest finite bound is all that can be said.
                return bounds.last().copied();
            };
            let in_bucket = (c - prev_count) as f64;
            if in_bucket == 0.0 {
                return Some(upper);
            }
            return Some(
                prev_bound + (upper - prev_bound) * (rank - prev_count as f64) / in_bucket,
            );
        }
        prev_count = c;
        prev_bound = bounds.get(i).copied().unwrap_or(prev_bound);
    }
    bounds.last().copied()
}

fn ms(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.2}s")
    } else {
        format!("{:.1}ms", secs * 1000.0)
    }
}

fn num_array(v: Option<&Json>) -> Vec<f64> {
    v.and_then(Json::as_array)
        .unwrap_or(&[])
        .iter()
        .filter_map(Json::as_f64)
        .collect()
}

/// What the screen shows, kept between refreshes for the rates.
struct State {
    previous: Option<(Instant, f64, Vec<u64>)>,
    rate: Option<f64>,
    window: Vec<u64>,
    selected: usize,
    stack: Option<Vec<String>>,
    message: String,
}

const RED: &str = "\x1b[1;37;41m";
const REVERSE: &str = "\x1b[7m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

fn text(v: Option<&Json>) -> String {
    match v {
        None | Some(Json::Null) => "-".into(),
        Some(Json::Str(s)) => s.clone(),
        Some(o) => o.encode(),
    }
}

impl State {
    /// Take a new reading of `show metrics` for the rate and the interval's histogram.
    fn observe(&mut self, metrics: &Json) {
        let total = metrics
            .get("requests")
            .and_then(Json::as_f64)
            .unwrap_or(0.0);
        let cumulative: Vec<u64> = num_array(metrics.get("duration_cumulative"))
            .into_iter()
            .map(|x| x as u64)
            .collect();
        let now = Instant::now();
        if let Some((t, before, hist)) = &self.previous {
            let dt = now.duration_since(*t).as_secs_f64();
            if dt > 0.0 {
                self.rate = Some((total - before).max(0.0) / dt);
            }
            self.window = cumulative
                .iter()
                .zip(hist.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
        }
        self.previous = Some((now, total, cumulative));
    }

    fn busy_rows(workers: &Json) -> Vec<Busy> {
        let mut rows = Vec::new();
        for w in workers
            .get("workers")
            .and_then(Json::as_array)
            .unwrap_or(&[])
        {
            let pid = w.get("pid").and_then(Json::as_i64).unwrap_or(0);
            for r in w.get("in_flight").and_then(Json::as_array).unwrap_or(&[]) {
                let client = match r.get("client").and_then(Json::as_str) {
                    Some("") | None => "-".to_string(),
                    Some(c) => c.to_string(),
                };
                rows.push(Busy {
                    pid,
                    thread: r.get("thread").and_then(Json::as_i64).unwrap_or(0),
                    age: r.get("elapsed").and_then(Json::as_f64).unwrap_or(0.0),
                    what: format!(
                        "{} {} from {client}",
                        text(r.get("method")),
                        text(r.get("path"))
                    ),
                });
            }
        }
        rows.sort_by(|a, b| b.age.total_cmp(&a.age));
        rows
    }

    /// The screen's lines (escape codes for highlighting included when `color`).
    fn frame(
        &self,
        server: &str,
        workers: &Json,
        metrics: &Json,
        o: &Options,
        color: bool,
    ) -> Vec<String> {
        let paint = |code: &str, s: String| {
            if color {
                format!("{code}{s}{RESET}")
            } else {
                s
            }
        };
        let get = |k: &str| metrics.get(k).and_then(Json::as_f64).unwrap_or(0.0);
        let mut out = Vec::new();
        let clock = chrono::Local::now().format("%H:%M:%S");
        out.push(paint(
            BOLD,
            format!("ferricorn top  {server}  {clock}   q quit, j/k select, s stack"),
        ));
        let worker_list = workers
            .get("workers")
            .and_then(Json::as_array)
            .unwrap_or(&[]);
        out.push(format!(
            "Workers {}   threads busy {}/{}   waiting: {} in backlog, {} in workers   rate {}",
            worker_list.len(),
            get("busy_threads"),
            get("total_threads"),
            get("waiting_backlog"),
            get("waiting_inside"),
            match self.rate {
                Some(r) => format!("{r:.1} req/s"),
                None => "- req/s".into(),
            }
        ));
        let bounds = num_array(metrics.get("duration_buckets"));
        let (hist, label) = if self.window.last().is_some_and(|n| *n > 0) {
            (self.window.clone(), "last interval")
        } else {
            (
                num_array(metrics.get("duration_cumulative"))
                    .into_iter()
                    .map(|x| x as u64)
                    .collect(),
                "since start",
            )
        };
        let pct = |q: f64| quantile(&bounds, &hist, q).map_or("-".to_string(), ms);
        out.push(format!(
            "Latency p50 {}  p90 {}  p99 {}  ({label}, {} requests)",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            hist.last().copied().unwrap_or(0)
        ));
        let by_status = metrics
            .get("requests_by_status")
            .and_then(Json::as_object)
            .unwrap_or(&[]);
        let statuses: Vec<String> = by_status
            .iter()
            .filter(|(_, v)| v.as_f64().unwrap_or(0.0) > 0.0)
            .map(|(k, v)| format!("{k} {}", text(Some(v))))
            .collect();
        let restarts: Vec<String> = metrics
            .get("restarts")
            .and_then(Json::as_object)
            .unwrap_or(&[])
            .iter()
            .filter(|(_, v)| v.as_f64().unwrap_or(0.0) > 0.0)
            .map(|(k, v)| format!("{k} {}", text(Some(v))))
            .collect();
        out.push(format!(
            "Requests {} ({})   timeouts {}  slow {}  loopback {}   restarts: {}",
            get("requests"),
            if statuses.is_empty() {
                "-".into()
            } else {
                statuses.join(", ")
            },
            get("timeouts"),
            get("slow_requests"),
            get("loopback_calls"),
            if restarts.is_empty() {
                "none".into()
            } else {
                restarts.join(", ")
            }
        ));
        out.push(String::new());
        out.push(paint(
            REVERSE,
            format!(
                "  {:<8} {:<10} {:>8} {:>9}  {:>6} {:>8}  {}",
                "PID", "STATE", "REQS", "RSS", "THREAD", "AGE", "REQUEST"
            ),
        ));
        let busy = Self::busy_rows(workers);
        for (i, b) in busy.iter().enumerate() {
            let w = worker_list
                .iter()
                .find(|w| w.get("pid").and_then(Json::as_i64) == Some(b.pid));
            let stuck = b.age >= o.stuck;
            let line = format!(
                "{} {:<8} {:<10} {:>8} {:>9}  {:>6} {:>7.1}s  {}{}",
                if i == self.selected { ">" } else { " " },
                b.pid,
                w.map_or("-".into(), |w| text(w.get("state"))),
                w.map_or("-".into(), |w| text(w.get("requests"))),
                w.and_then(|w| w.get("rss").and_then(Json::as_f64))
                    .map_or("-".into(), |r| format!("{:.1}M", r / 1048576.0)),
                b.thread,
                b.age,
                b.what,
                if stuck { "  STUCK" } else { "" }
            );
            out.push(if stuck { paint(RED, line) } else { line });
        }
        for w in worker_list {
            let pid = w.get("pid").and_then(Json::as_i64).unwrap_or(0);
            if busy.iter().any(|b| b.pid == pid) {
                continue;
            }
            out.push(format!(
                "  {:<8} {:<10} {:>8} {:>9}  {:>6} {:>8}  {}",
                pid,
                text(w.get("state")),
                text(w.get("requests")),
                w.get("rss")
                    .and_then(Json::as_f64)
                    .map_or("-".into(), |r| format!("{:.1}M", r / 1048576.0)),
                "-",
                "-",
                "idle"
            ));
        }
        if !self.message.is_empty() {
            out.push(String::new());
            out.push(self.message.clone());
        }
        if let Some(stack) = &self.stack {
            out.push(String::new());
            out.extend(stack.iter().cloned());
        }
        out
    }
}

/// The selected thread's stack from a fresh `show stacks`.
fn stack_of(path: &Path, timeout: Duration, pid: i64, thread: i64) -> Vec<String> {
    let reply = match fresh_stacks(path, timeout) {
        Ok(r) => r,
        Err(e) => return vec![format!("Cannot read the stacks: {e}")],
    };
    let workers = reply
        .get("data")
        .and_then(|d| d.get("workers"))
        .and_then(Json::as_array)
        .unwrap_or(&[]);
    for w in workers {
        if w.get("pid").and_then(Json::as_i64) != Some(pid) {
            continue;
        }
        for t in w.get("threads").and_then(Json::as_array).unwrap_or(&[]) {
            if t.get("thread").and_then(Json::as_i64) != Some(thread) {
                continue;
            }
            let mut out = vec![format!(
                "Stack of worker {pid}, thread {thread}: {} {} (most recent call first; Esc hides it)",
                text(t.get("method")),
                text(t.get("path"))
            )];
            match t.get("stack").and_then(Json::as_array) {
                Some(lines) => out.extend(lines.iter().map(|l| format!("  {}", text(Some(l))))),
                None => out.push("  (no stack: the request started after the snapshot)".into()),
            }
            return out;
        }
    }
    vec![format!(
        "Worker {pid}, thread {thread} runs no request any more"
    )]
}

/// The terminal in raw mode (no echo, no line buffering) until dropped.
struct RawTerminal {
    fd: i32,
    saved: libc::termios,
}

impl RawTerminal {
    fn enter(fd: i32) -> Option<RawTerminal> {
        // SAFETY: tcgetattr fills a termios we own; fd is the process's stdin.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 0;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: setting attributes on our own terminal from a termios we own.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes read at enter.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

fn terminal_size(fd: i32) -> (usize, usize) {
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 {
        (ws.ws_col as usize, ws.ws_row.max(5) as usize)
    } else {
        (120, 40)
    }
}

/// Cut a line to `width` visible characters, escape codes kept.
fn clip(line: &str, width: usize) -> String {
    let mut out = String::new();
    let mut visible = 0;
    let mut in_escape = false;
    for c in line.chars() {
        if in_escape {
            out.push(c);
            if c.is_ascii_alphabetic() {
                in_escape = false;
            }
            continue;
        }
        if c == '\x1b' {
            in_escape = true;
            out.push(c);
            continue;
        }
        if visible < width {
            out.push(c);
            visible += 1;
        }
    }
    if line.contains('\x1b') {
        out.push_str(RESET);
    }
    out
}

/// Run the screen until `q` (or the server goes away). Returns the exit status.
pub fn run(
    path: &Path,
    server: &str,
    timeout: Duration,
    o: &Options,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let mut conn = match Connection::open(path, timeout) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "ferricornctl: {e}");
            return 1;
        }
    };
    let mut state = State {
        previous: None,
        rate: None,
        window: Vec::new(),
        selected: 0,
        stack: None,
        message: String::new(),
    };
    let stdin = std::io::stdin();
    let raw = if o.once {
        None
    } else {
        RawTerminal::enter(stdin.as_raw_fd())
    };
    let interactive = raw.is_some();
    if interactive {
        // The alternate screen, cursor hidden.
        let _ = write!(out, "\x1b[?1049h\x1b[?25l");
    }
    let status = loop {
        let fetch = |conn: &mut Connection, words: &[&str]| -> Result<Json, String> {
            let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
            let reply = conn.request(&words)?;
            if reply.get("status").and_then(Json::as_str) != Some("ok") {
                return Err(text(reply.get("error")));
            }
            Ok(reply.get("data").cloned().unwrap_or(Json::Null))
        };
        let (workers, metrics) = match (
            fetch(&mut conn, &["show", "workers"]),
            fetch(&mut conn, &["show", "metrics"]),
        ) {
            (Ok(w), Ok(m)) => (w, m),
            (Err(e), _) | (_, Err(e)) => {
                let _ = writeln!(err, "ferricornctl: {e}");
                break 1;
            }
        };
        state.observe(&metrics);
        let busy = State::busy_rows(&workers);
        if state.selected >= busy.len() {
            state.selected = busy.len().saturating_sub(1);
        }
        let (width, height) = terminal_size(out_fd());
        let lines = state.frame(server, &workers, &metrics, o, interactive || o.once);
        if interactive {
            let mut screen = String::from("\x1b[H\x1b[2J");
            for l in lines.iter().take(height.saturating_sub(1)) {
                screen.push_str(&clip(l, width));
                screen.push_str("\r\n");
            }
            let _ = out.write_all(screen.as_bytes());
        } else {
            for l in &lines {
                let _ = writeln!(out, "{l}");
            }
        }
        let _ = out.flush();
        if !interactive {
            break 0;
        }
        // Keys until the next refresh.
        let until = Instant::now() + o.interval;
        let mut quit = false;
        let mut redraw = false;
        while !quit && !redraw {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: stdin.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if n <= 0 {
                continue;
            }
            let mut buf = [0u8; 16];
            let got = match stdin.lock().read(&mut buf) {
                Ok(0) | Err(_) => {
                    quit = true;
                    0
                }
                Ok(n) => n,
            };
            let keys = &buf[..got];
            match keys {
                [b'q', ..] | [b'Q', ..] | [3, ..] => quit = true,
                [b'j', ..] | [0x1b, b'[', b'B', ..] => {
                    state.selected = (state.selected + 1).min(busy.len().saturating_sub(1));
                    redraw = true;
                }
                [b'k', ..] | [0x1b, b'[', b'A', ..] => {
                    state.selected = state.selected.saturating_sub(1);
                    redraw = true;
                }
                [b's', ..] | [b'\r', ..] | [b'\n', ..] => {
                    if state.stack.is_some() && keys[0] == b's' {
                        state.stack = None;
                    } else if let Some(b) = busy.get(state.selected) {
                        state.message.clear();
                        state.stack = Some(stack_of(path, timeout, b.pid, b.thread));
                    } else {
                        state.message = "No busy thread to show".into();
                    }
                    redraw = true;
                }
                [0x1b] => {
                    state.stack = None;
                    redraw = true;
                }
                _ => {}
            }
        }
        if quit {
            break 0;
        }
    };
    if interactive {
        let _ = write!(out, "\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
    }
    drop(raw);
    status
}

fn out_fd() -> i32 {
    std::io::stdout().as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let bounds = [0.01, 0.1, 1.0];
        // 10 under 10 ms, 10 more under 100 ms, none above: p50 at the first bucket's top.
        let c = [10, 20, 20, 20];
        assert_eq!(quantile(&bounds, &c, 0.5), Some(0.01));
        let p75 = quantile(&bounds, &c, 0.75).unwrap();
        assert!((p75 - 0.055).abs() < 1e-9, "{p75}");
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        // Everything above the last bound.
        assert_eq!(quantile(&bounds, &[0, 0, 0, 5], 0.5), Some(1.0));
    }

    #[test]
    fn options_and_clipping() {
        let w = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let o = parse_options(&w(&["--stuck", "2.5", "--once"])).unwrap();
        assert_eq!(o.stuck, 2.5);
        assert!(o.once);
        assert!(parse_options(&w(&["--stuck"])).is_err());
        assert!(parse_options(&w(&["--stuck", "-1"])).is_err());
        assert!(parse_options(&w(&["--frob"])).is_err());
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("\x1b[7mabcdef", 2), "\x1b[7mab\x1b[0m");
    }
}
