//! The file descriptor a log writes to: stdout/stderr for `-`, otherwise a
//! path opened for appending, and re-opening that path for log rotation.
//!
//! The master and every forked worker write to the same file, so each line
//! goes out in one `write(2)` on an `O_APPEND` descriptor; the kernel then
//! keeps whole lines from different processes apart. Writes need no lock:
//! concurrent `write(2)` calls on one descriptor are already atomic for
//! regular files, which also lets a signal handler write to the same fd.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

#[derive(Debug)]
pub(crate) struct Sink {
    /// Stays the same number for the life of the sink, even across
    /// `reopen`, so a signal-safe writer may hold on to it.
    fd: RawFd,
    /// `None` for the standard streams, which are never re-opened or closed.
    path: Option<CString>,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn open_append(path: &CString) -> io::Result<RawFd> {
    // 0o666 before the umask, as for any file a Python process opens with
    // mode "a": with the usual umask of 022 the log ends up 0644.
    let mode: libc::c_uint = 0o666;
    loop {
        // SAFETY: `path` is a valid NUL-terminated string for the call.
        let ret = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
                mode,
            )
        };
        match cvt(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Points `target` at the file `src` refers to, keeping it close-on-exec
/// like every descriptor this module opens.
fn replace_fd(src: RawFd, target: RawFd) -> io::Result<()> {
    loop {
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        // SAFETY: both are descriptors this process owns.
        let ret = unsafe { libc::dup3(src, target, libc::O_CLOEXEC) };
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
        // SAFETY: both are descriptors this process owns.
        let ret = unsafe { libc::dup2(src, target) };
        match cvt(ret) {
            Ok(_) => break,
            // EBUSY: Linux reports a race with a concurrent open() this way.
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.raw_os_error() == Some(libc::EBUSY) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    // SAFETY: `target` was just made a valid descriptor.
    cvt(unsafe { libc::fcntl(target, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(())
}

impl Sink {
    /// `-` means the already open `std_fd`; anything else is a path.
    pub(crate) fn open(target: &str, std_fd: RawFd) -> io::Result<Sink> {
        if target == "-" {
            return Ok(Sink {
                fd: std_fd,
                path: None,
            });
        }
        let path = CString::new(target).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "log path contains a NUL byte")
        })?;
        let fd = open_append(&path)?;
        Ok(Sink {
            fd,
            path: Some(path),
        })
    }

    pub(crate) fn std(fd: RawFd) -> Sink {
        Sink { fd, path: None }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Opens the path again and swaps the new file in under the same fd
    /// number. Threads writing meanwhile land whole in either the old or the
    /// new file; nobody ever sees a closed descriptor.
    pub(crate) fn reopen(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let fresh = open_append(path)?;
        let swapped = replace_fd(fresh, self.fd);
        // SAFETY: `fresh` is ours and no longer needed either way.
        unsafe { libc::close(fresh) };
        swapped
    }

    /// Writes `buf` in one `write(2)`; only a short write (a full pipe, a
    /// signal) makes it continue with the rest.
    pub(crate) fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
            let n = unsafe { libc::write(self.fd, buf.as_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    // Someone made the shared stdout/stderr non-blocking;
                    // behave like the blocking write the caller expects.
                    io::ErrorKind::WouldBlock => {
                        let mut pfd = libc::pollfd {
                            fd: self.fd,
                            events: libc::POLLOUT,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut pfd, 1, -1) };
                        continue;
                    }
                    _ => return Err(err),
                }
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n as usize..];
        }
        Ok(())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.path.is_some() {
            // SAFETY: the fd was opened by this sink and is closed only here.
            unsafe { libc::close(self.fd) };
        }
    }
}
