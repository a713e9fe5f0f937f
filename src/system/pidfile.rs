//! `-p/--pid`: the master's process id in a file, with gunicorn's rules. A file naming a live process
//! refuses the start (a second server on the same pidfile is almost always a mistake); a file naming a
//! dead process, or holding no number, is stale and replaced. The file is written to a temporary name
//! and renamed into place, so a reader never sees it half-written, and is removed on exit only if it
//! still holds our pid (a newer master may have taken it over). A master started by a re-exec (its
//! parent master still running) writes `FILE.2` instead, as gunicorn does.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Why a pidfile could not be taken.
#[derive(Debug)]
pub enum PidfileError {
    /// The file names a process that is alive.
    Running {
        pid: i32,
        path: PathBuf,
    },
    /// The directory of the file does not exist.
    NoDirectory(PathBuf),
    Io(PathBuf, io::Error),
}

impl fmt::Display for PidfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PidfileError::Running { pid, path } => write!(
                f,
                "Already running on PID {pid} (or pid file '{}' is stale)",
                path.display()
            ),
            PidfileError::NoDirectory(dir) => {
                write!(f, "{} doesn't exist. Can't create pidfile.", dir.display())
            }
            PidfileError::Io(path, e) => write!(f, "Can't write pidfile {}: {e}", path.display()),
        }
    }
}

/// The path actually used: `FILE`, or `FILE.2` for a master started by a re-exec.
pub fn effective_path(configured: &Path, reexec: bool) -> PathBuf {
    if reexec {
        let mut s = configured.as_os_str().to_owned();
        s.push(".2");
        PathBuf::from(s)
    } else {
        configured.to_path_buf()
    }
}

/// The pid a file names if that process exists (`kill(pid, 0)` succeeds or is refused with EPERM,
/// which means it exists under another user). Missing files, unreadable numbers and dead processes
/// give `None`.
pub fn live_pid(path: &Path) -> Option<i32> {
    let text = fs::read_to_string(path).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => Some(pid),
        Err(_) => None,
    }
}

/// Refuse when the file names a live process other than this one.
pub fn check(path: &Path) -> Result<(), PidfileError> {
    match live_pid(path) {
        Some(pid) if pid != std::process::id() as i32 => Err(PidfileError::Running {
            pid,
            path: path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// A pidfile this process wrote; [`Pidfile::unlink`] (or drop) removes it.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    pid: i32,
}

impl Pidfile {
    /// Write this process's pid to `path` (mode 0644), after [`check`].
    pub fn create(path: &Path) -> Result<Pidfile, PidfileError> {
        check(path)?;
        let pid = std::process::id() as i32;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(PidfileError::NoDirectory(dir));
        }
        let io_err = |e| PidfileError::Io(path.to_path_buf(), e);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{pid}.tmp"));
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(format!("{pid}\n").as_bytes())?;
            f.set_permissions(fs::Permissions::from_mode(0o644))?;
            drop(f);
            fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        Ok(Pidfile {
            path: path.to_path_buf(),
            pid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the file if it still holds our pid and we are the process that wrote it (a forked child
    /// dropping its copy must not remove the master's file).
    pub fn unlink(&self) {
        if std::process::id() as i32 != self.pid {
            return;
        }
        let ours = fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            == Some(self.pid);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        self.unlink();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fcn-pid-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn create_and_unlink() {
        let d = tmpdir("create");
        let p = d.join("app.pid");
        let f = Pidfile::create(&p).unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        drop(f);
        assert!(!p.exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_a_live_pid_and_replaces_a_stale_one() {
        let d = tmpdir("live");
        let p = d.join("app.pid");
        // pid 1 is always alive.
        fs::write(&p, "1\n").unwrap();
        let e = Pidfile::create(&p).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Already running on PID 1 (or pid file"),
            "{e}"
        );
        // Not a number: stale.
        fs::write(&p, "garbage").unwrap();
        let f = Pidfile::create(&p).unwrap();
        // Someone else took the file over: it is not ours to remove.
        fs::write(&p, "1\n").unwrap();
        drop(f);
        assert!(p.exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_directory() {
        let e = Pidfile::create(Path::new("/nonexistent-fcn-dir/app.pid")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nonexistent-fcn-dir doesn't exist. Can't create pidfile."
        );
    }

    #[test]
    fn reexec_suffix() {
        assert_eq!(
            effective_path(Path::new("/run/app.pid"), true),
            PathBuf::from("/run/app.pid.2")
        );
        assert_eq!(
            effective_path(Path::new("/run/app.pid"), false),
            PathBuf::from("/run/app.pid")
        );
    }
}
