//! systemd integration: socket activation (`LISTEN_FDS`/`LISTEN_PID`) and readiness notification
//! (`sd_notify` over the `NOTIFY_SOCKET` datagram socket), so `Type=notify` units and `.socket` units
//! work. Both protocols are a few lines of plain Unix; no library is needed.

use std::io;
use std::os::fd::RawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

use pyo3::prelude::*;

/// The first descriptor systemd passes.
pub const LISTEN_FDS_START: RawFd = 3;

/// The variables of the socket-activation protocol, removed once read so that nothing started later
/// (the app, a subprocess) believes the sockets are its own.
const ACTIVATION_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// What [`listen_fds`] decides from the two variables: the descriptors, or none when `LISTEN_PID`
/// names another process (the variables were inherited from a parent that was the target).
pub fn activation_fds(listen_pid: Option<&str>, listen_fds: Option<&str>, pid: u32) -> Vec<RawFd> {
    let for_us = listen_pid.and_then(|p| p.trim().parse::<u32>().ok()) == Some(pid);
    let n = listen_fds
        .and_then(|n| n.trim().parse::<RawFd>().ok())
        .unwrap_or(0);
    if !for_us || n <= 0 {
        return Vec::new();
    }
    (LISTEN_FDS_START..LISTEN_FDS_START + n).collect()
}

/// The listening sockets systemd passed to this process (empty when not socket-activated). When they
/// are for us, the variables are removed from the environment (C's and Python's `os.environ`), and the
/// descriptors are made close-on-exec like every socket ferricorn opens itself.
pub fn listen_fds(py: Python<'_>) -> Vec<RawFd> {
    let pid_var = std::env::var("LISTEN_PID").ok();
    let fds_var = std::env::var("LISTEN_FDS").ok();
    let fds = activation_fds(pid_var.as_deref(), fds_var.as_deref(), std::process::id());
    if fds.is_empty() {
        return fds;
    }
    if let Ok(environ) = py.import("os").and_then(|os| os.getattr("environ")) {
        for var in ACTIVATION_VARS {
            // `os.environ.pop` unsets the C variable too.
            let _ = environ.call_method1("pop", (var, py.None()));
        }
    }
    for var in ACTIVATION_VARS {
        std::env::remove_var(var);
    }
    for &fd in &fds {
        // SAFETY: fcntl on a descriptor number; an invalid one only yields an error, reported later
        // when the socket is adopted.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    fds
}

/// `NOTIFY_SOCKET` as read when the master started (None: not run by systemd with `Type=notify`).
static NOTIFY_SOCKET: OnceLock<Option<String>> = OnceLock::new();

/// Read `NOTIFY_SOCKET` once. Later calls to [`notify`] use this value.
pub fn init_notify() -> bool {
    NOTIFY_SOCKET
        .get_or_init(|| {
            std::env::var("NOTIFY_SOCKET")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .is_some()
}

/// Send `state` (newline-separated `KEY=VALUE` lines such as `READY=1`) to systemd. A no-op when
/// `NOTIFY_SOCKET` is not set; failures are returned for the caller to log at debug level.
pub fn notify(state: &str) -> io::Result<()> {
    let Some(Some(path)) = NOTIFY_SOCKET.get() else {
        return Ok(());
    };
    send_to(path, state)
}

/// One datagram to a notification socket: a path, or `@name` for Linux's abstract namespace.
pub fn send_to(path: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds, which systemd wants beside `RELOADING=1`.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_only_for_our_pid() {
        assert_eq!(activation_fds(Some("42"), Some("2"), 42), vec![3, 4]);
        assert!(activation_fds(Some("41"), Some("2"), 42).is_empty());
        assert!(activation_fds(None, Some("2"), 42).is_empty());
        assert!(activation_fds(Some("42"), Some("0"), 42).is_empty());
        assert!(activation_fds(Some("42"), Some("x"), 42).is_empty());
        assert!(activation_fds(Some("42"), None, 42).is_empty());
    }

    #[test]
    fn datagrams_reach_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("fcn-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1\nSTATUS=x").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
        std::fs::remove_dir_all(&dir).unwrap();

        let name = format!("fcn-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
