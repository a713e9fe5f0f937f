//! `--capture-output`: the process's standard output and error point at the error log file, in the
//! master and in every worker forked after it, and follow the file when the log is reopened (`USR1`,
//! log rotation), so `print()` and anything else writing to them lands in the error log.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once `--capture-output` took over stdout and stderr in this process (inherited by workers).
static CAPTURING: AtomicBool = AtomicBool::new(false);

/// Make descriptors 1 and 2 refer to the error log file whose descriptor is `log_fd`.
pub(super) fn start(log_fd: RawFd) -> io::Result<()> {
    redirect(log_fd, libc::STDOUT_FILENO)?;
    redirect(log_fd, libc::STDERR_FILENO)?;
    CAPTURING.store(true, Ordering::SeqCst);
    Ok(())
}

/// After the error log was reopened under the same descriptor number: point stdout and stderr at the
/// new file as well, when they are captured.
pub(super) fn follow_reopened(log_fd: RawFd) {
    if CAPTURING.load(Ordering::SeqCst) {
        let _ = redirect(log_fd, libc::STDOUT_FILENO);
        let _ = redirect(log_fd, libc::STDERR_FILENO);
    }
}

/// Point descriptor `target` at what `src` is open on (dup2); nothing when they are the same.
pub fn redirect(src: RawFd, target: RawFd) -> io::Result<()> {
    if src == target {
        return Ok(());
    }
    // SAFETY: both are descriptors this process owns; dup2 atomically replaces `target`.
    if unsafe { libc::dup2(src, target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
