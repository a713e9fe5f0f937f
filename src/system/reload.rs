//! `--reload`: a worker restarts itself when a source file it loaded changes.
//!
//! Each worker runs one watcher thread, started right after fork. Once a second it lists the files of
//! the Python modules the worker has imported (`sys.modules`, `.pyc` mapped back to `.py`) plus the
//! `--reload-extra-file` entries, and adds a watch for any new one: with inotify (the `notify` crate)
//! on the file's directory, so editors that replace a file by renaming a new one over it are seen too;
//! with `--reload-engine poll`, on the file itself. The first change to a watched file (or to a new file
//! matching an extra glob pattern) logs `Worker reloading: FILE modified` and sends the worker SIGTERM:
//! it finishes its requests and exits, and the master starts a fresh one, which imports the new code.
//! A file whose modification time is later than the worker's start when it is first seen counts as
//! changed, so an edit made while the app was still importing is not missed.
//!
//! The master is not involved, as in gunicorn. With `--preload` the master imported the app before
//! forking, so restarted workers run the same code: reload and preload do not combine.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use notify::{Event, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use pyo3::prelude::*;

use crate::config::settings::is_glob_pattern;
use crate::log::ErrorLog;

/// How often the module list is read again (and the poll engine looks at files).
const INTERVAL: Duration = Duration::from_secs(1);

/// Start the watcher thread of a worker. Errors are logged; the worker serves on without reloading.
pub fn start(engine: &str, extra: &[String], log: &ErrorLog) {
    log.warning("Reloader is on. Use in development only!");
    let engine = engine.to_string();
    let extra = extra.to_vec();
    let thread_log = log.clone();
    let started = SystemTime::now();
    let spawned = std::thread::Builder::new()
        .name("ferricorn-reload".into())
        .spawn(move || {
            block_signals();
            if let Err(e) = watch(&engine, &extra, started, &thread_log) {
                thread_log.error(&format!("Reloader stopped: {e}"));
            }
        });
    if let Err(e) = spawned {
        log.error(&format!("Cannot start the reloader: {e}"));
    }
}

/// Signals belong to the worker's main thread; the watcher (and the thread `notify` starts from it)
/// must never be the one a signal interrupts.
fn block_signals() {
    let all = nix::sys::signal::SigSet::all();
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&all),
        None,
    );
}

/// A glob pattern of `--reload-extra-file` and the directory to watch for it.
struct ExtraPattern {
    pattern: glob::Pattern,
    base: PathBuf,
    recursive: bool,
}

impl ExtraPattern {
    fn new(entry: &str) -> Option<ExtraPattern> {
        let pattern = glob::Pattern::new(entry).ok()?;
        let path = Path::new(entry);
        let mut base = PathBuf::new();
        let mut rest = 0;
        let comps: Vec<_> = path.components().collect();
        for (i, c) in comps.iter().enumerate() {
            if is_glob_pattern(&c.as_os_str().to_string_lossy()) {
                rest = comps.len() - i;
                break;
            }
            base.push(c);
        }
        if base.as_os_str().is_empty() {
            base.push(".");
        }
        Some(ExtraPattern {
            pattern,
            base,
            recursive: rest > 1 || entry.contains("**"),
        })
    }

    fn matches(&self, path: &Path) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        self.pattern.matches_path_with(path, opts)
    }
}

enum AnyWatcher {
    Inotify(RecommendedWatcher),
    Poll(PollWatcher),
}

impl AnyWatcher {
    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> notify::Result<()> {
        match self {
            AnyWatcher::Inotify(w) => w.watch(path, mode),
            AnyWatcher::Poll(w) => w.watch(path, mode),
        }
    }

    fn is_poll(&self) -> bool {
        matches!(self, AnyWatcher::Poll(_))
    }
}

fn new_watcher(
    engine: &str,
    tx: mpsc::Sender<notify::Result<Event>>,
    log: &ErrorLog,
) -> Result<AnyWatcher, String> {
    let poll = |tx| {
        PollWatcher::new(tx, notify::Config::default().with_poll_interval(INTERVAL))
            .map(AnyWatcher::Poll)
            .map_err(|e| format!("cannot start the poll reloader: {e}"))
    };
    match engine {
        "poll" => poll(tx),
        "inotify" => RecommendedWatcher::new(tx, notify::Config::default())
            .map(AnyWatcher::Inotify)
            .map_err(|e| format!("cannot start the inotify reloader: {e}")),
        _ => match RecommendedWatcher::new(tx.clone(), notify::Config::default()) {
            Ok(w) => Ok(AnyWatcher::Inotify(w)),
            Err(e) => {
                log.warning(&format!(
                    "inotify is not available ({e}); the reloader polls instead"
                ));
                poll(tx)
            }
        },
    }
}

/// The files of every imported module, `.pyc`/`.pyo` mapped to the `.py` beside it as gunicorn does.
fn module_files() -> Vec<PathBuf> {
    Python::attach(|py| -> PyResult<Vec<PathBuf>> {
        let modules = py.import("sys")?.getattr("modules")?;
        // A copy: another thread may import (and so resize the dict) meanwhile.
        let values = py
            .import("builtins")?
            .getattr("list")?
            .call1((modules.call_method0("values")?,))?;
        let mut out = Vec::new();
        for m in values.try_iter()? {
            let Ok(file) = m?.getattr("__file__") else {
                continue;
            };
            let Ok(mut file) = file.extract::<String>() else {
                continue;
            };
            if file.ends_with(".pyc") || file.ends_with(".pyo") {
                file.pop();
            }
            out.push(PathBuf::from(file));
        }
        Ok(out)
    })
    .unwrap_or_default()
}

fn watch(
    engine: &str,
    extra: &[String],
    started: SystemTime,
    log: &ErrorLog,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    let mut watcher = new_watcher(engine, tx, log)?;
    let patterns: Vec<ExtraPattern> = extra
        .iter()
        .filter(|e| is_glob_pattern(e))
        .filter_map(|e| ExtraPattern::new(e))
        .collect();
    let literal: Vec<PathBuf> = extra
        .iter()
        .filter(|e| !is_glob_pattern(e))
        .map(|e| super::absolute(Path::new(e)))
        .collect();
    for p in &patterns {
        let mode = if p.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if let Err(e) = watcher.watch(&p.base, mode) {
            log.warning(&format!("Reloader cannot watch {}: {e}", p.base.display()));
        }
    }
    // Every path a watched file is known by (as imported, and with symlinks resolved).
    let mut files: HashSet<PathBuf> = HashSet::new();
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    loop {
        let mut candidates = module_files();
        candidates.extend(literal.iter().cloned());
        for file in candidates {
            let file = super::absolute(&file);
            if files.contains(&file) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            let real = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            files.insert(file.clone());
            files.insert(real.clone());
            if watcher.is_poll() {
                let _ = watcher.watch(&file, RecursiveMode::NonRecursive);
            } else {
                for dir in [file.parent(), real.parent()].into_iter().flatten() {
                    if dirs.insert(dir.to_path_buf()) {
                        let _ = watcher.watch(dir, RecursiveMode::NonRecursive);
                    }
                }
            }
            // Changed since the worker started (a time in the future is clock skew, not a change:
            // counting it would restart every new worker again).
            if meta
                .modified()
                .is_ok_and(|m| m > started && m <= SystemTime::now())
            {
                changed(&file, log);
                return Ok(());
            }
        }
        let deadline = std::time::Instant::now() + INTERVAL;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let event = match rx.recv_timeout(left) {
                Ok(Ok(event)) => event,
                Ok(Err(_)) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the file watcher ended".into())
                }
            };
            if matches!(event.kind, EventKind::Access(_)) {
                continue;
            }
            for path in &event.paths {
                if files.contains(path) || patterns.iter().any(|p| p.matches(path)) {
                    changed(path, log);
                    return Ok(());
                }
            }
        }
    }
}

fn changed(path: &Path, log: &ErrorLog) {
    log.info(&format!("Worker reloading: {} modified", path.display()));
    // The worker's own graceful stop: requests in flight finish, then the master replaces it.
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(is_glob_pattern("templates/*.html"));
        assert!(is_glob_pattern("conf/[ab].toml"));
        assert!(!is_glob_pattern("conf/app.toml"));
        let p = ExtraPattern::new("/srv/app/templates/*.html").unwrap();
        assert_eq!(p.base, PathBuf::from("/srv/app/templates"));
        assert!(!p.recursive);
        assert!(p.matches(Path::new("/srv/app/templates/index.html")));
        assert!(!p.matches(Path::new("/srv/app/templates/sub/index.html")));
        assert!(!p.matches(Path::new("/srv/app/templates/.hidden.html")));
        let p = ExtraPattern::new("/srv/app/**/*.toml").unwrap();
        assert_eq!(p.base, PathBuf::from("/srv/app"));
        assert!(p.recursive);
        assert!(p.matches(Path::new("/srv/app/a/b/c.toml")));
        let p = ExtraPattern::new("*.cfg").unwrap();
        assert_eq!(p.base, PathBuf::from("."));
    }
}
