//! `-D/--daemon` (detach from the terminal) and `--capture-output` (the processes' standard output and
//! error go to the error log file).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::prelude::*;

/// Detach as a classic Unix daemon: fork (the command returns), start a new session, fork again (never
/// a session leader, so no terminal can be acquired), set the umask to 022 and point the standard
/// descriptors at `/dev/null`. The working directory is kept (`--chdir` already chose it). With
/// `inherit_stdio`, stdout and stderr are kept unless they are a terminal, so a shell redirection
/// (`ferricorn -D -R ... > out.log 2>&1`) still collects them. Only the final process returns.
pub fn daemonize(py: Python<'_>, inherit_stdio: bool) -> io::Result<()> {
    if crate::python::fork(py)? != 0 {
        // SAFETY: the original process leaves at once, without unwinding into the caller.
        unsafe { libc::_exit(0) };
    }
    nix::unistd::setsid().map_err(io::Error::from)?;
    if crate::python::fork(py)? != 0 {
        // SAFETY: as above, for the intermediate session leader.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o022) };
    flush_python_streams(py);
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io::Error::from)?;
    use std::os::fd::AsRawFd;
    let null_fd = null.as_raw_fd();
    redirect(null_fd, libc::STDIN_FILENO)?;
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: isatty only inspects the descriptor.
        if !inherit_stdio || unsafe { libc::isatty(fd) } == 1 {
            redirect(null_fd, fd)?;
        }
    }
    Ok(())
}

fn redirect(src: RawFd, target: RawFd) -> io::Result<()> {
    if src == target {
        return Ok(());
    }
    // SAFETY: both are descriptors this process owns; dup2 atomically replaces `target`.
    if unsafe { libc::dup2(src, target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Write out what Python buffered for stdout and stderr before the descriptors under them change.
fn flush_python_streams(py: Python<'_>) {
    if let Ok(sys) = py.import("sys") {
        for name in ["stdout", "stderr"] {
            if let Ok(stream) = sys.getattr(name) {
                if !stream.is_none() {
                    let _ = stream.call_method0("flush");
                }
            }
        }
    }
}

/// Set once `--capture-output` took over stdout and stderr in this process (inherited by workers).
static CAPTURING: AtomicBool = AtomicBool::new(false);

/// `--capture-output`: make descriptors 1 and 2 refer to the error log file, so `print()` and anything
/// else writing to the standard streams, in the master and in every worker forked later, lands in the
/// error log. `log_fd` is the error log's own descriptor.
pub fn capture_output(py: Python<'_>, log_fd: RawFd) -> io::Result<()> {
    flush_python_streams(py);
    redirect(log_fd, libc::STDOUT_FILENO)?;
    redirect(log_fd, libc::STDERR_FILENO)?;
    CAPTURING.store(true, Ordering::SeqCst);
    Ok(())
}

/// After the error log was reopened (`USR1`, log rotation) under the same descriptor number: point
/// stdout and stderr at the new file as well, when they are captured.
pub fn follow_reopened_log(log_fd: RawFd) {
    if CAPTURING.load(Ordering::SeqCst) {
        let _ = redirect(log_fd, libc::STDOUT_FILENO);
        let _ = redirect(log_fd, libc::STDERR_FILENO);
    }
}
