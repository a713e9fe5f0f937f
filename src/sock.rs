//! Listening sockets: bound by the master (or inherited as a file descriptor) and shared with every worker
//! through fork. How they are created (`--reuse-port`, `--umask` of unix socket files, their owner when
//! the workers switch user) is a [`SocketPolicy`] the master's boot fixes before the first bind.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::BindAddress;
use crate::log::ErrorLog;

/// What a listener is bound to, as printed in `Listening at:` and used for `SERVER_NAME`/`SERVER_PORT`.
#[derive(Clone, Debug)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(SocketAddr::V4(a)) => write!(f, "http://{}:{}", a.ip(), a.port()),
            ListenAddr::Tcp(SocketAddr::V6(a)) => write!(f, "http://[{}]:{}", a.ip(), a.port()),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

pub struct Listener {
    pub socket: Socket,
    pub addr: ListenAddr,
    /// Unix socket files we created are removed on shutdown; inherited ones are not ours to remove.
    owns_path: bool,
}

impl Listener {
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Remove the socket file of a unix listener this process bound.
    pub fn unlink(&self) {
        if let (ListenAddr::Unix(p), true) = (&self.addr, self.owns_path) {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[derive(Debug)]
pub enum BindError {
    Resolve(String, io::Error),
    InUse(String),
    Other(String, io::Error),
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Resolve(a, e) => write!(f, "Invalid address: {a}: {e}"),
            BindError::InUse(a) => write!(f, "Can't connect to {a}"),
            BindError::Other(a, e) => write!(f, "Can't bind {a}: {e}"),
        }
    }
}

/// Settings the listeners need when they are created (`--reuse-port`, `--umask`, the workers' user and
/// group), fixed once by the master's boot before anything is bound ([`set_policy`]).
#[derive(Debug, Default)]
pub struct SocketPolicy {
    pub reuse_port: bool,
    pub umask: u32,
    /// Owner for unix socket files, when the workers switch user or group.
    pub owner: Option<(Option<u32>, Option<u32>)>,
}

static SOCKET_POLICY: OnceLock<SocketPolicy> = OnceLock::new();

/// Fix how listeners are created from now on; the first call wins.
pub fn set_policy(policy: SocketPolicy) {
    let _ = SOCKET_POLICY.set(policy);
}

/// How many times an address in use is retried, a second apart, before giving up (as gunicorn).
const BIND_ATTEMPTS: usize = 5;

/// Bind every address. An address still in use after the retries is fatal.
pub fn bind_all(
    binds: &[BindAddress],
    backlog: i32,
    log: &ErrorLog,
) -> Result<Vec<Listener>, BindError> {
    let mut out = Vec::with_capacity(binds.len());
    for bind in binds {
        out.push(bind_one(bind, backlog, log)?);
    }
    Ok(out)
}

fn bind_one(bind: &BindAddress, backlog: i32, log: &ErrorLog) -> Result<Listener, BindError> {
    match bind {
        BindAddress::Fd(fd) => from_fd(*fd),
        BindAddress::Unix(path) => bind_unix(path, backlog),
        BindAddress::Tcp { host, port } => {
            let shown = format!("{host}:{port}");
            let addr = resolve(host, *port).map_err(|e| BindError::Resolve(shown.clone(), e))?;
            let mut attempt = 0;
            loop {
                match bind_tcp(addr, backlog) {
                    Ok(l) => return Ok(l),
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                        log.error(&format!("Connection in use: {shown}"));
                        attempt += 1;
                        if attempt >= BIND_ATTEMPTS {
                            return Err(BindError::InUse(shown));
                        }
                        log.error("Retrying in 1 second.");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(e) => return Err(BindError::Other(shown, e)),
                }
            }
        }
    }
}

fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    // A name such as `localhost` may resolve to both families; prefer IPv4 as a plain
    // `socket.bind((host, port))` on an AF_INET socket would.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address found"))
}

fn bind_tcp(addr: SocketAddr, backlog: i32) -> io::Result<Listener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    before_tcp_bind(&socket)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an inet socket"))?;
    Ok(Listener {
        socket,
        addr: ListenAddr::Tcp(local),
        owns_path: false,
    })
}

fn bind_unix(path: &std::path::Path, backlog: i32) -> Result<Listener, BindError> {
    let shown = format!("unix:{}", path.display());
    // A socket file left by a previous run blocks bind(); remove it, but never a regular file.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        } else {
            return Err(BindError::Other(
                shown,
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "path exists and is not a socket",
                ),
            ));
        }
    }
    let err = |e| BindError::Other(shown.clone(), e);
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
    let addr = SockAddr::unix(path).map_err(err)?;
    bind_unix_file(&socket, &addr, path).map_err(err)?;
    socket.listen(backlog).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(Listener {
        socket,
        addr: ListenAddr::Unix(path.to_path_buf()),
        owns_path: true,
    })
}

/// Called on a new TCP listener before `bind`: `--reuse-port`.
fn before_tcp_bind(socket: &Socket) -> io::Result<()> {
    let reuse = SOCKET_POLICY.get().is_some_and(|p| p.reuse_port);
    if reuse {
        if let Err(e) = socket.set_reuse_port(true) {
            // Kernels without SO_REUSEPORT: carry on without it, as gunicorn does.
            if !matches!(
                e.raw_os_error(),
                Some(libc::ENOPROTOOPT) | Some(libc::EINVAL)
            ) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Bind a unix listener with `--umask` applied to the socket file it creates, then give the file to the
/// workers' user and group when they switch.
fn bind_unix_file(socket: &Socket, addr: &SockAddr, path: &std::path::Path) -> io::Result<()> {
    let policy = SOCKET_POLICY.get();
    let mask = policy.map_or(0, |p| p.umask) as libc::mode_t;
    // SAFETY: umask only swaps the process's file-creation mask; the master is single-threaded here.
    let old = unsafe { libc::umask(mask) };
    let bound = socket.bind(addr);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    bound?;
    if let Some((uid, gid)) = policy.and_then(|p| p.owner) {
        std::os::unix::fs::chown(path, uid, gid)?;
    }
    Ok(())
}

/// Adopt an already listening socket (`fd://N`, systemd, re-exec).
pub fn from_fd(fd: RawFd) -> Result<Listener, BindError> {
    let shown = format!("fd://{fd}");
    // SAFETY: fstat on an fd number only reads; an invalid fd is reported as an error.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFSOCK {
        return Err(BindError::Other(
            shown,
            io::Error::new(io::ErrorKind::InvalidInput, "not a socket"),
        ));
    }
    // SAFETY: the fd is a socket handed to this process to own.
    let socket = unsafe { Socket::from_raw_fd(fd) };
    socket
        .set_nonblocking(true)
        .map_err(|e| BindError::Other(shown.clone(), e))?;
    let local = socket
        .local_addr()
        .map_err(|e| BindError::Other(shown.clone(), e))?;
    let addr = if let Some(a) = local.as_socket() {
        ListenAddr::Tcp(a)
    } else {
        ListenAddr::Unix(
            local
                .as_pathname()
                .map(|p| p.to_path_buf())
                .unwrap_or_default(),
        )
    };
    Ok(Listener {
        socket,
        addr,
        owns_path: false,
    })
}

/// How many connections wait in the kernel's accept queue of a listening socket.
pub fn accept_queue_len(fd: RawFd) -> u32 {
    // SAFETY: getsockopt fills a tcp_info we own; on a listening socket tcpi_unacked is the current
    // accept-queue length.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return 0;
    }
    info.tcpi_unacked
}

/// Whether a listening socket of any kind has a connection waiting to be accepted (no wait).
pub fn has_pending(fd: RawFd) -> bool {
    poll_now(fd, libc::POLLIN) & libc::POLLIN != 0
}

/// The events of `fd` now (`poll(2)` with a zero timeout, never blocking): the `revents` of those asked
/// for in `events` (and the error and hang-up ones the kernel always reports), 0 when none is ready.
pub fn poll_now(fd: RawFd, events: libc::c_short) -> libc::c_short {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd we own; a zero timeout never blocks.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    if rc > 0 {
        pfd.revents
    } else {
        0
    }
}

/// Listening sockets handed to a master started by `USR2`: their descriptor numbers, comma-separated.
pub const INHERITED_FDS_ENV: &str = "FERRICORN_FD";

/// The listeners a re-executed master inherited (`FERRICORN_FD`, or gunicorn's `GUNICORN_FD`), if any.
/// The variables are removed so they do not leak into the app's environment.
pub fn inherited() -> Option<Result<Vec<Listener>, BindError>> {
    let value = [INHERITED_FDS_ENV, "GUNICORN_FD"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))?;
    std::env::remove_var(INHERITED_FDS_ENV);
    std::env::remove_var("GUNICORN_FD");
    Some(
        value
            .split(',')
            .map(|fd| {
                fd.trim().parse::<RawFd>().map_err(|_| {
                    BindError::Other(
                        format!("{INHERITED_FDS_ENV}={value}"),
                        io::Error::new(io::ErrorKind::InvalidInput, "not a descriptor number"),
                    )
                })
            })
            .map(|fd| fd.and_then(from_fd))
            .collect(),
    )
}
