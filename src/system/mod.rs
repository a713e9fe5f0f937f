//! The operating-system side of running as a Unix service, as helpers that know nothing of the
//! listeners, the workers or the app: the pidfile, process titles, user and group switching, systemd
//! (socket activation's descriptors, readiness notification), `--reload`'s file watcher, and reading
//! the kernel's TCP table. The order in which the master and a new worker use them is `arbiter::boot`.
//!
//! The master calls [`master_tick`] once per loop, [`master_reloading`] on HUP and [`master_stopping`]
//! when it starts to shut down.

pub mod pidfile;
pub mod privileges;
pub mod proctitle;
pub mod reload;
pub mod systemd;
pub mod tcp_table;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::Config;
use crate::log::ErrorLog;
use crate::scoreboard::WorkerState;

/// `p` made absolute against the current directory (without touching the filesystem), so a path given
/// relative keeps meaning the same file after a later `chdir`; `p` itself if the directory is unknown.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Set (to the old master's pid) in the environment of a master started by re-executing a running one
/// (USR2): such a master writes `PIDFILE.2` and calls itself `NAME.2` until the old one is gone.
pub const REEXEC_ENV: &str = "FERRICORN_PID";

/// Whether this master was started by re-executing a running one (see [`REEXEC_ENV`]).
pub fn is_reexec() -> bool {
    std::env::var_os(REEXEC_ENV).is_some_and(|v| !v.is_empty())
}

/// The NAME in `ferricorn: master [NAME]`: `--name`, else the app as given, with `.2` for a
/// re-executed master.
pub fn process_name(cfg: &Config) -> String {
    let base = cfg
        .proc_name
        .clone()
        .or_else(|| cfg.app_uri.clone())
        .unwrap_or_else(|| crate::config::PROG.to_string());
    if is_reexec() {
        format!("{base}.2")
    } else {
        base
    }
}

/// `READY=1` was sent for the current set of workers.
static READY_SENT: AtomicBool = AtomicBool::new(false);

fn notify(state: &str, log: &ErrorLog) {
    if let Err(e) = systemd::notify(state) {
        log.debug(&format!("Cannot notify systemd ({state:?}): {e}"));
    }
}

/// Once per master loop: tell systemd `READY=1` when the workers (all `wanted` of them) have loaded the
/// app, at start and again after a HUP.
pub fn master_tick<I>(states: I, wanted: usize, log: &ErrorLog)
where
    I: IntoIterator<Item = WorkerState>,
{
    if READY_SENT.load(Ordering::Relaxed) {
        return;
    }
    let mut up = 0;
    for s in states {
        match s {
            WorkerState::Idle | WorkerState::Busy => up += 1,
            _ => return,
        }
    }
    if up < wanted.max(1) {
        return;
    }
    READY_SENT.store(true, Ordering::Relaxed);
    notify(
        &format!(
            "READY=1\nSTATUS=Serving with {up} worker{}\nMAINPID={}",
            if up == 1 { "" } else { "s" },
            std::process::id()
        ),
        log,
    );
}

/// HUP: `RELOADING=1`; `READY=1` follows when the new workers are up.
pub fn master_reloading(log: &ErrorLog) {
    READY_SENT.store(false, Ordering::Relaxed);
    notify(
        &format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=Reloading: starting new workers",
            systemd::monotonic_usec()
        ),
        log,
    );
}

/// The master starts to shut down: `STOPPING=1`.
pub fn master_stopping(log: &ErrorLog) {
    notify(
        "STOPPING=1\nSTATUS=Stopping: waiting for the workers to finish",
        log,
    );
}
