//! The error log: levels, `--log-level` filtering, and lines in the exact
//! shape operators already alert on,
//! `[2026-01-04 15:00:00 +0000] [123] [INFO] message`.
//!
//! A message with several lines (a traceback) follows the prefix unchanged
//! and the whole record goes out in one write, so records from the master
//! and the workers never interleave.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use super::sink::Sink;
use super::time::{push_stamp, Style};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl Level {
    const ALL: [Level; 5] = [
        Level::Debug,
        Level::Info,
        Level::Warning,
        Level::Error,
        Level::Critical,
    ];

    /// The name printed between brackets on each line.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }

    /// A level by its name, any case (`warning`).
    pub fn parse(name: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(name))
    }

    fn from_u8(v: u8) -> Level {
        Level::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(Level::Info)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Level, String> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("invalid log level {s:?}: expected debug, info, warning, error or critical")
            })
    }
}

/// Records counted for the metrics (statsd's `gunicorn.log.*`), whatever the log level lets through, as
/// gunicorn counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    Critical,
    Error,
    Warning,
    /// An error record about an exception (`Error handling request`).
    Exception,
}

/// Who counts the records of every error log of the process (set once, by `metrics::statsd`).
static COUNTER: std::sync::OnceLock<fn(Counted)> = std::sync::OnceLock::new();

/// Have `f` count every warning, error, critical and exception record from now on.
pub fn count_records_with(f: fn(Counted)) {
    let _ = COUNTER.set(f);
}

fn count(level: Level) {
    let Some(f) = COUNTER.get() else { return };
    match level {
        Level::Critical => f(Counted::Critical),
        Level::Error => f(Counted::Error),
        Level::Warning => f(Counted::Warning),
        _ => {}
    }
}

#[derive(Debug)]
struct Inner {
    sink: Sink,
    level: AtomicU8,
}

/// Cheap to clone; all clones share the descriptor and the level.
#[derive(Clone, Debug)]
pub struct ErrorLog {
    inner: Arc<Inner>,
}

/// Appends one complete record, newline included.
pub(crate) fn format_record(out: &mut Vec<u8>, now: SystemTime, pid: i32, level: Level, msg: &str) {
    push_stamp(out, Style::Error, now);
    out.extend_from_slice(b" [");
    out.extend_from_slice(itoa::Buffer::new().format(pid).as_bytes());
    out.extend_from_slice(b"] [");
    out.extend_from_slice(level.as_str().as_bytes());
    out.extend_from_slice(b"] ");
    out.extend_from_slice(msg.as_bytes());
    out.push(b'\n');
}

impl ErrorLog {
    fn from_sink(sink: Sink, level: Level) -> ErrorLog {
        ErrorLog {
            inner: Arc::new(Inner {
                sink,
                level: AtomicU8::new(level as u8),
            }),
        }
    }

    /// `-` is stderr; anything else is a path opened for appending (created
    /// if missing).
    pub fn open(target: &str, level: Level) -> io::Result<ErrorLog> {
        Ok(ErrorLog::from_sink(
            Sink::open(target, libc::STDERR_FILENO)?,
            level,
        ))
    }

    pub fn stderr(level: Level) -> ErrorLog {
        ErrorLog::from_sink(Sink::std(libc::STDERR_FILENO), level)
    }

    pub fn level(&self) -> Level {
        Level::from_u8(self.inner.level.load(Ordering::Relaxed))
    }

    /// For a configuration reload; every clone sees the new level.
    pub fn set_level(&self, level: Level) {
        self.inner.level.store(level as u8, Ordering::Relaxed);
    }

    pub fn enabled(&self, level: Level) -> bool {
        level >= self.level()
    }

    /// Write failures are dropped: there is nowhere left to report them.
    pub fn log(&self, level: Level, msg: &str) {
        count(level);
        self.write_record(level, msg);
    }

    /// An error record about an exception: counted as an exception rather than an error.
    pub fn exception(&self, msg: &str) {
        if let Some(f) = COUNTER.get() {
            f(Counted::Exception);
        }
        self.write_record(Level::Error, msg);
    }

    fn write_record(&self, level: Level, msg: &str) {
        if !self.enabled(level) {
            return;
        }
        let mut line = Vec::with_capacity(msg.len() + 64);
        // Asked every line rather than cached: workers are forked from the
        // master and must print their own pid.
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        format_record(&mut line, SystemTime::now(), pid, level, msg);
        let _ = self.inner.sink.write_all(&line);
    }

    /// A record followed by lines of text of its own (a Python stack), written in one piece so that
    /// other processes' lines cannot land inside it.
    pub fn log_with_text(&self, level: Level, msg: &str, text: &[u8]) {
        count(level);
        if !self.enabled(level) {
            return;
        }
        let mut line = Vec::with_capacity(msg.len() + text.len() + 64);
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        format_record(&mut line, SystemTime::now(), pid, level, msg);
        line.extend_from_slice(text);
        let _ = self.inner.sink.write_all(&line);
    }

    pub fn debug(&self, msg: &str) {
        self.log(Level::Debug, msg);
    }

    pub fn info(&self, msg: &str) {
        self.log(Level::Info, msg);
    }

    pub fn warning(&self, msg: &str) {
        self.log(Level::Warning, msg);
    }

    pub fn error(&self, msg: &str) {
        self.log(Level::Error, msg);
    }

    pub fn critical(&self, msg: &str) {
        self.log(Level::Critical, msg);
    }

    /// Text the app writes to `wsgi.errors`: written as is, without the record prefix, as gunicorn does.
    pub fn write_raw(&self, bytes: &[u8]) {
        let _ = self.inner.sink.write_all(bytes);
    }

    /// Re-opens the path (after log rotation renamed the file); a no-op for
    /// stderr. The descriptor number stays the same.
    pub fn reopen(&self) -> io::Result<()> {
        self.inner.sink.reopen()?;
        // `--capture-output`: stdout and stderr follow the error log to the new file.
        super::capture::follow_reopened(self.raw_fd());
        Ok(())
    }

    /// `--capture-output`: make this process's standard output and error (and those of every process
    /// forked after) write to this log's file, and follow it when the log is reopened. Python's own
    /// buffers should be flushed first.
    pub fn capture_output(&self) -> io::Result<()> {
        super::capture::start(self.raw_fd())
    }

    /// The descriptor lines go to, for a writer that cannot take locks or
    /// allocate (a signal handler). Valid while any clone of this log lives.
    pub fn raw_fd(&self) -> RawFd {
        self.inner.sink.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::test_util::{read, TempDir};
    use std::process::Command;

    fn is_digits(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }

    /// Checks `[YYYY-MM-DD HH:MM:SS +HHMM] [pid] [LEVEL] ` and returns the rest.
    fn split_prefix(line: &str) -> (&str, &str, &str) {
        let b = line.as_bytes();
        assert!(b.len() > 29, "short line {line:?}");
        let stamp = &line[..27];
        let shape: String = stamp
            .bytes()
            .map(|c| if c.is_ascii_digit() { '9' } else { c as char })
            .collect();
        assert!(
            shape == "[9999-99-99 99:99:99 +9999]" || shape == "[9999-99-99 99:99:99 -9999]",
            "bad stamp {stamp:?}"
        );
        let rest = line[27..].strip_prefix(" [").expect("pid opener");
        let (pid, rest) = rest.split_once("] [").expect("pid closer");
        assert!(is_digits(pid), "pid {pid:?}");
        let (level, msg) = rest.split_once("] ").expect("level closer");
        (pid, level, msg)
    }

    #[test]
    fn level_parsing() {
        assert_eq!("debug".parse::<Level>(), Ok(Level::Debug));
        assert_eq!("INFO".parse::<Level>(), Ok(Level::Info));
        assert_eq!("Warning".parse::<Level>(), Ok(Level::Warning));
        assert_eq!("error".parse::<Level>(), Ok(Level::Error));
        assert_eq!("critical".parse::<Level>(), Ok(Level::Critical));
        assert!("warn".parse::<Level>().is_err());
        assert!("".parse::<Level>().is_err());
        assert!(Level::Debug < Level::Info && Level::Error < Level::Critical);
    }

    #[test]
    fn record_prefix_shape() {
        let mut out = Vec::new();
        format_record(
            &mut out,
            SystemTime::now(),
            123,
            Level::Info,
            "Booting worker with pid: 124",
        );
        let line = String::from_utf8(out).expect("utf8");
        let line = line.strip_suffix('\n').expect("newline");
        let (pid, level, msg) = split_prefix(line);
        assert_eq!(
            (pid, level, msg),
            ("123", "INFO", "Booting worker with pid: 124")
        );
    }

    #[test]
    fn record_matches_local_time_exactly() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_538_800);
        let c = crate::log::time::civil(1_767_538_800);
        let off = c.offset_secs.unsigned_abs() / 60;
        let expected = format!(
            "[{:04}-{:02}-{:02} {:02}:{:02}:{:02} {}{:02}{:02}] [7] [WARNING] a\nb\n",
            c.year,
            c.month,
            c.day,
            c.hour,
            c.minute,
            c.second,
            if c.offset_secs < 0 { '-' } else { '+' },
            off / 60,
            off % 60
        );
        let mut out = Vec::new();
        format_record(&mut out, t, 7, Level::Warning, "a\nb");
        assert_eq!(String::from_utf8(out).expect("utf8"), expected);
    }

    #[test]
    fn filters_below_level_and_writes_own_pid() {
        let dir = TempDir::new("levels");
        let path = dir.path("error.log");
        let log = ErrorLog::open(&path, Level::Warning).expect("open");
        assert!(!log.enabled(Level::Info) && log.enabled(Level::Warning));
        log.debug("d");
        log.info("i");
        log.warning("w");
        log.error("e");
        log.critical("c");
        let clone = log.clone();
        clone.set_level(Level::Debug);
        log.debug("now visible");
        let text = read(&path);
        let got: Vec<(String, String)> = text
            .lines()
            .map(|l| {
                let (pid, level, msg) = split_prefix(l);
                assert_eq!(pid, std::process::id().to_string());
                (level.to_string(), msg.to_string())
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("WARNING", "w"),
            ("ERROR", "e"),
            ("CRITICAL", "c"),
            ("DEBUG", "now visible"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    const CHILD_ENV: &str = "FERRICORN_LOG_TEST_CHILD";
    const RECORDS: usize = 200;

    fn traceback(tag: &str, i: usize) -> String {
        format!(
            "{tag} {i} Traceback (most recent call last):\n{tag} {i} {}\n{tag} {i} end",
            "x".repeat(3000)
        )
    }

    /// Checks that every record in `text` is whole: its three lines are
    /// adjacent and belong together.
    fn assert_unbroken(text: &str, writers: &[&str]) {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), writers.len() * RECORDS * 3);
        let mut seen = 0;
        for rec in lines.chunks(3) {
            let (_, level, first) = split_prefix(rec[0]);
            assert_eq!(level, "ERROR");
            let mut words = first.splitn(3, ' ');
            let tag = words.next().expect("tag");
            let i: usize = words.next().expect("index").parse().expect("number");
            assert!(writers.contains(&tag));
            let whole = format!("{first}\n{}\n{}", rec[1], rec[2]);
            assert_eq!(whole, traceback(tag, i));
            seen += 1;
        }
        assert_eq!(seen, writers.len() * RECORDS);
    }

    /// Does nothing in a normal run; when started by
    /// `no_interleaving_across_processes` it is one of the writers.
    #[test]
    fn child_writer() {
        let Ok(spec) = std::env::var(CHILD_ENV) else {
            return;
        };
        let (tag, path) = spec.split_once(':').expect("tag:path");
        let log = ErrorLog::open(path, Level::Info).expect("open");
        for i in 0..RECORDS {
            log.error(&traceback(tag, i));
        }
    }

    #[test]
    fn no_interleaving_across_processes() {
        let dir = TempDir::new("procs");
        let path = dir.path("shared.log");
        let exe = std::env::current_exe().expect("test binary");
        let tags = ["alpha", "bravo", "charlie"];
        let children: Vec<_> = tags
            .iter()
            .map(|tag| {
                Command::new(&exe)
                    .args([
                        "--exact",
                        "log::error::tests::child_writer",
                        "--test-threads=1",
                    ])
                    .env(CHILD_ENV, format!("{tag}:{path}"))
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn child")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().expect("wait").success());
        }
        assert_unbroken(&read(&path), &tags);
    }

    #[test]
    fn no_interleaving_across_threads() {
        let dir = TempDir::new("threads");
        let path = dir.path("shared.log");
        let log = ErrorLog::open(&path, Level::Info).expect("open");
        let tags = ["t1", "t2", "t3", "t4"];
        std::thread::scope(|s| {
            for tag in tags {
                let log = log.clone();
                s.spawn(move || {
                    for i in 0..RECORDS {
                        log.error(&traceback(tag, i));
                    }
                });
            }
        });
        assert_unbroken(&read(&path), &tags);
    }

    #[test]
    fn reopen_after_rename() {
        let dir = TempDir::new("rotate");
        let path = dir.path("error.log");
        let rotated = dir.path("error.log.1");
        let log = ErrorLog::open(&path, Level::Info).expect("open");
        let fd = log.raw_fd();
        log.info("before");
        std::fs::rename(&path, &rotated).expect("rename");
        log.info("after rename, old file");
        log.reopen().expect("reopen");
        assert_eq!(log.raw_fd(), fd);
        log.info("after reopen");
        let old: Vec<String> = read(&rotated)
            .lines()
            .map(|l| split_prefix(l).2.to_string())
            .collect();
        assert_eq!(old, ["before", "after rename, old file"]);
        let new: Vec<String> = read(&path)
            .lines()
            .map(|l| split_prefix(l).2.to_string())
            .collect();
        assert_eq!(new, ["after reopen"]);
        // The swapped-in descriptor must not leak into exec'd programs.
        // SAFETY: querying flags of a descriptor we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);
    }

    #[test]
    fn stderr_reopen_is_a_noop() {
        let log = ErrorLog::open("-", Level::Info).expect("stderr");
        assert_eq!(log.raw_fd(), libc::STDERR_FILENO);
        log.reopen().expect("noop");
        assert_eq!(ErrorLog::stderr(Level::Info).raw_fd(), libc::STDERR_FILENO);
    }

    #[test]
    fn open_failure_is_reported() {
        let dir = TempDir::new("missing");
        let path = dir.path("no/such/dir/error.log");
        assert!(ErrorLog::open(&path, Level::Info).is_err());
        assert!(ErrorLog::open("bad\0path", Level::Info).is_err());
    }
}
