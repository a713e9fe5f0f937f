//! `-D/--daemon`: detach from the terminal. (`--capture-output`, which points the standard output and
//! error at the error log file, is the log's own: `log::ErrorLog::capture_output`.)

use std::io;

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
    crate::log::redirect(null_fd, libc::STDIN_FILENO)?;
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: isatty only inspects the descriptor.
        if !inherit_stdio || unsafe { libc::isatty(fd) } == 1 {
            crate::log::redirect(null_fd, fd)?;
        }
    }
    Ok(())
}

/// Write out what Python buffered for stdout and stderr before the descriptors under them change.
pub fn flush_python_streams(py: Python<'_>) {
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
