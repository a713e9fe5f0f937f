//! Signal delivery for the master and the workers: a self-pipe.
//!
//! The handler only writes the signal number to a non-blocking pipe; the owner's loop reads the pipe and acts
//! (logging, forking, killing) outside signal context. This is written by hand rather than with
//! `signal-hook` because its registry chains to the previously installed handler, which here is CPython's:
//! CPython would then raise `KeyboardInterrupt` in whatever Python code runs next — in a worker, the app.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static PIPE_WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: only async-signal-safe calls: errno access and write(2).
    unsafe {
        let errno = *libc::__errno_location();
        let fd = PIPE_WRITE_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            let byte = sig as u8;
            libc::write(fd, &byte as *const u8 as *const libc::c_void, 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// The read end of the self-pipe, plus the write end kept open for the handler.
pub struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
}

fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl SignalPipe {
    /// Create a fresh pipe and route `signals` to it. A forked worker calls this again, so it never shares
    /// the master's pipe.
    pub fn install(signals: &[Signal]) -> io::Result<SignalPipe> {
        let (read, write) = pipe_nonblocking()?;
        PIPE_WRITE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        let pipe = SignalPipe {
            read,
            _write: write,
        };
        pipe.route(signals)?;
        Ok(pipe)
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Route `signals` (back) to this pipe, e.g. after a temporary handler.
    pub fn route(&self, signals: &[Signal]) -> io::Result<()> {
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in signals {
            // SAFETY: the handler is async-signal-safe.
            unsafe { sigaction(*sig, &action) }.map_err(io::Error::from)?;
        }
        Ok(())
    }

    /// Every signal queued since the last call, in arrival order.
    pub fn drain(&self) -> Vec<Signal> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reading into a stack buffer from our own non-blocking fd.
            let n = unsafe {
                libc::read(
                    self.read.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if n <= 0 {
                break;
            }
            out.extend(
                buf[..n as usize]
                    .iter()
                    .filter_map(|b| Signal::try_from(*b as i32).ok()),
            );
        }
        out
    }

    /// Wait up to `timeout_ms` for the pipe to become readable (the master's sleep between ticks).
    pub fn wait(&self, timeout_ms: i32) {
        let mut pfd = libc::pollfd {
            fd: self.read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    }
}

/// Put `signals` back to their default disposition (a worker undoing the master's routing before it installs
/// its own).
pub fn reset_default(signals: &[Signal]) {
    let action = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in signals {
        // SAFETY: restoring the default disposition.
        let _ = unsafe { sigaction(*sig, &action) };
    }
}

/// gunicorn's lower-case names, as in `Handling signal: term`.
pub fn name(sig: Signal) -> String {
    sig.as_str().trim_start_matches("SIG").to_ascii_lowercase()
}

static BOOT_LOG_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_abort_while_booting(_sig: libc::c_int) {
    // The master gave up waiting for the app to import: show where the import is, then leave. The
    // dumper is the one faulthandler calls from its signal handlers.
    crate::python::stacks::dump_all_threads(BOOT_LOG_FD.load(Ordering::Relaxed));
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(1) };
}

/// While a worker imports the app, SIGABRT (the master's "boot took longer than --timeout") dumps the
/// Python stacks to `log_fd` and exits: the I/O loop that would otherwise handle it is not running yet.
pub fn abort_dumps_stack_while_booting(log_fd: RawFd) -> io::Result<()> {
    BOOT_LOG_FD.store(log_fd, Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(on_abort_while_booting),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only writes to an fd and exits.
    unsafe { sigaction(Signal::SIGABRT, &action) }
        .map(|_| ())
        .map_err(io::Error::from)
}

/// Block every signal; returns the previous mask for `restore`. Used around fork (see the arbiter).
pub fn block_all() -> SigSet {
    let mut old = SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&SigSet::all()),
        Some(&mut old),
    );
    old
}

/// Put back a mask saved by `block_all`; signals that arrived meanwhile are delivered now.
pub fn restore(mask: SigSet) {
    let _ =
        nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&mask), None);
}

/// Unblock every signal (a worker, once its own handlers and pipe are in place).
pub fn unblock_all() {
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_UNBLOCK,
        Some(&SigSet::all()),
        None,
    );
}
