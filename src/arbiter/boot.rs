//! What happens once in the master before its loop starts, and once in a worker between fork and
//! `worker::run`: the order of the Unix service steps (`system`), of the listeners (`sock`) and of the
//! interpreter's part (`python`).
//!
//! - `lib.rs` calls [`start_master`] once the configuration is known (before the app is preloaded and
//!   the sockets are bound), then [`listeners`] instead of binding directly; the returned [`Master`] is
//!   kept until the master exits (dropping it removes the pidfile).
//! - The arbiter calls [`worker_started`] in a freshly forked worker.

use std::path::{Path, PathBuf};

use pyo3::prelude::*;

use super::daemon;
use crate::config::Config;
use crate::log::ErrorLog;
use crate::sock::{self, BindError, Listener};
use crate::system::{self, pidfile, privileges, proctitle, reload, systemd};
use crate::worker::{self, WORKER_BOOT_ERROR};

/// What the master holds for its whole life: the pidfile (removed when this is dropped).
#[derive(Debug)]
pub struct Master {
    pidfile: Option<pidfile::Pidfile>,
}

impl Master {
    pub fn pidfile(&self) -> Option<&Path> {
        self.pidfile.as_ref().map(|p| p.path())
    }
}

/// Everything that happens once in the master before the app is preloaded and the sockets are bound,
/// in gunicorn's order: refuse a pidfile naming a live process (before detaching, so the refusal is
/// seen), detach (`--daemon`), capture stdout/stderr, write the pidfile, read `NOTIFY_SOCKET`, set the
/// title. `Err` holds the exit status; the reason was logged.
pub fn start_master(py: Python<'_>, cfg: &Config, log: &ErrorLog) -> Result<Master, i32> {
    if cfg.reload && cfg.preload_app {
        log.warning(
            "--reload with --preload: workers restart when files change, but they run the code the master imported at start",
        );
    }
    let pid_path = cfg
        .pidfile
        .as_deref()
        .map(|p| pidfile::effective_path(p, system::is_reexec()));
    if let Some(p) = &pid_path {
        if let Err(e) = pidfile::check(p) {
            log.error(&e.to_string());
            return Err(1);
        }
    }
    if cfg.daemon {
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            eprintln!(
                "Warning: you shouldn't specify `daemon = True` when launching by systemd with `Type = notify`"
            );
        }
        if let Err(e) = daemon::daemonize(py, cfg.enable_stdio_inheritance) {
            log.error(&format!("Cannot daemonize: {e}"));
            return Err(1);
        }
    }
    if cfg.capture_output && cfg.errorlog != "-" {
        daemon::flush_python_streams(py);
        if let Err(e) = log.capture_output() {
            log.error(&format!("Cannot capture output in {}: {e}", cfg.errorlog));
            return Err(1);
        }
    }
    let target = privileges::target(cfg.uid, cfg.gid, nix::unistd::getuid().as_raw());
    let owner = (target.uid.is_some() || target.gid.is_some()).then_some((target.uid, target.gid));
    sock::set_policy(sock::SocketPolicy {
        reuse_port: cfg.reuse_port,
        umask: cfg.umask,
        owner,
    });
    if let Some((uid, gid)) = owner {
        give_logs_to(cfg, uid, gid, log);
    }
    let pidfile = match &pid_path {
        Some(p) => match pidfile::Pidfile::create(p) {
            Ok(f) => Some(f),
            Err(e) => {
                log.error(&e.to_string());
                return Err(1);
            }
        },
        None => None,
    };
    systemd::init_notify();
    proctitle::set(
        &format!(
            "{}: master [{}]",
            crate::config::PROG,
            system::process_name(cfg)
        ),
        crate::config::PROG,
    );
    Ok(Master { pidfile })
}

/// Workers that run as another user must still be able to reopen the log files after rotation (and
/// open the access log, which they do themselves): the files are created if needed and handed to that
/// user, as gunicorn does.
fn give_logs_to(cfg: &Config, uid: Option<u32>, gid: Option<u32>, log: &ErrorLog) {
    let files = [Some(cfg.errorlog.as_str()), cfg.accesslog.as_deref()];
    for path in files.into_iter().flatten().filter(|p| *p != "-") {
        let created = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path);
        if created.is_ok() {
            if let Err(e) = std::os::unix::fs::chown(path, uid, gid) {
                log.warning(&format!("Cannot hand {path} to the workers' user: {e}"));
            }
        }
    }
}

/// The listening sockets: the ones systemd passed (socket activation, which replaces `--bind` as in
/// gunicorn), else the configured addresses.
pub fn listeners(py: Python<'_>, cfg: &Config, log: &ErrorLog) -> Result<Vec<Listener>, BindError> {
    if let Some(inherited) = sock::inherited() {
        log.debug("Listening sockets inherited from the previous master (USR2)");
        return inherited;
    }
    let fds = systemd::listen_fds(py);
    if fds.is_empty() {
        return sock::bind_all(&cfg.binds, cfg.backlog, log);
    }
    log.debug(&format!(
        "Socket activation: {} socket(s) from systemd",
        fds.len()
    ));
    fds.into_iter().map(sock::from_fd).collect()
}

/// In a worker right after fork, before the app is loaded: its title, its user and group (and whether,
/// as that user, it can still read what imports need: [`check_import_dirs`]), and the reloader.
pub fn worker_started(py: Python<'_>, cfg: &Config, log: &ErrorLog, preloaded: bool) {
    proctitle::set(
        &format!(
            "{}: worker [{}]",
            crate::config::PROG,
            system::process_name(cfg)
        ),
        "ferricorn-wrk",
    );
    // What imports read, listed as the master's user, to check again as the worker's.
    let import_dirs = if cfg.uid.is_some() || cfg.gid.is_some() {
        crate::python::import_dirs(py).unwrap_or_default()
    } else {
        Vec::new()
    };
    if let Err(e) = privileges::switch(cfg.uid, cfg.gid, cfg.initgroups) {
        log.error(&format!("Cannot switch the worker's user or group: {e}"));
        worker::exit(WORKER_BOOT_ERROR);
    }
    check_import_dirs(&import_dirs, log, preloaded);
    if cfg.reload {
        reload::start(&cfg.reload_engine, &cfg.reload_extra_files, log);
    }
}

/// A worker that switched to `--user`/`--group` and cannot read a directory imports need says so, with
/// the user and the directory that stops it, rather than fail with a bare `ModuleNotFoundError` (`No
/// module named 'importlib'` for an unreadable standard library). An unreadable standard library stops
/// the worker as a boot failure (every module not imported yet would fail), unless the master loaded the
/// app (`--preload`); any other directory is a warning, and the app's import says the rest.
fn check_import_dirs(
    dirs: &[(PathBuf, crate::python::ImportDirRole)],
    log: &ErrorLog,
    preloaded: bool,
) {
    use crate::python::ImportDirRole;
    let blocked: Vec<(&PathBuf, ImportDirRole, String)> = dirs
        .iter()
        .filter_map(|(p, role)| privileges::unreadable(p).map(|why| (p, *role, why)))
        .collect();
    if blocked.is_empty() {
        return;
    }
    let has = |r: ImportDirRole| blocked.iter().any(|(_, role, _)| *role == r);
    let what = if has(ImportDirRole::Stdlib) {
        "the Python installation"
    } else if has(ImportDirRole::AppDir) {
        "the app's directory"
    } else {
        "directories on sys.path"
    };
    let list: Vec<String> = blocked
        .iter()
        .map(|(p, role, why)| format!("{} {} ({why})", role.describe(), p.display()))
        .collect();
    let head = format!(
        "Worker (pid:{}) runs as {} (--user/--group) and cannot read {what}: {}.",
        std::process::id(),
        privileges::identity(),
        list.join("; ")
    );
    let fix =
        "let that user read these directories, install Python and the app where it can read them, \
               or run the workers as another user";
    if has(ImportDirRole::Stdlib) && !preloaded {
        log.error(&format!(
            "{head} Every module not imported yet would fail to import (ModuleNotFoundError), so the \
             worker stops here: {fix}."
        ));
        worker::exit(WORKER_BOOT_ERROR);
    }
    let consequence = if preloaded {
        "The master loaded the app (--preload), but a module imported from there later fails with \
         ModuleNotFoundError"
    } else {
        "Modules there cannot be imported (ModuleNotFoundError)"
    };
    log.warning(&format!("{head} {consequence}: {fix}."));
}
