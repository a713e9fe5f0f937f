//! The master's metrics listener (`--metrics-bind`): `/metrics` (Prometheus text), `/healthz`
//! (liveness) and `/readyz` (readiness), HTTP/1 with one answer per connection.
//!
//! The master starts no threads, so this runs inside its loop, as the control socket does: every socket
//! is non-blocking and registered with one epoll instance whose descriptor the master polls
//! ([`MetricsServer::fd`]); [`MetricsServer::handle_ready`] accepts, reads, answers and writes only
//! what is ready. A connection has [`DEADLINE`] from its accept to its last byte written, at most
//! [`MAX_CONNECTIONS`] are open (the oldest is dropped for a new one), and a request head is at most
//! [`MAX_HEAD`] bytes: a slow or silent scraper costs a buffer, never a wait of the master. The listener
//! is never one of the app's: it is bound apart, and workers close their copy after fork.

use std::collections::HashMap;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use super::health::Health;
use crate::config::BindAddress;

pub const MAX_CONNECTIONS: usize = 32;
pub const DEADLINE: Duration = Duration::from_secs(5);
pub const MAX_HEAD: usize = 8 * 1024;
const LISTENER_TOKEN: u64 = u64::MAX;

/// What the listener needs from the master.
pub trait Observed {
    /// The Prometheus exposition, read now.
    fn exposition(&mut self) -> String;
    fn health(&mut self) -> Health;
}

struct Conn {
    sock: Socket,
    input: Vec<u8>,
    output: Vec<u8>,
    answered: bool,
    since: Instant,
    watching_write: bool,
}

pub struct MetricsServer {
    /// Both closed by `Drop`, except in a forked child that already closed its copies.
    listener: ManuallyDrop<Socket>,
    epoll: ManuallyDrop<OwnedFd>,
    conns: HashMap<RawFd, Conn>,
    /// The address as bound (the port chosen by the kernel for `:0`).
    pub address: String,
    unix_path: Option<PathBuf>,
    owner_pid: u32,
    abandoned: std::cell::Cell<bool>,
}

fn epoll_ctl(epoll: RawFd, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: a valid epoll descriptor and an event we own.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The metrics listener handed to a master started by `USR2`: its descriptor number.
pub const INHERITED_FD_ENV: &str = "FERRICORN_METRICS_FD";

impl MetricsServer {
    pub fn bind(addr: &BindAddress) -> io::Result<MetricsServer> {
        let (listener, unix_path) = match addr {
            BindAddress::Tcp { host, port } => {
                let target = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port))?
                    .next()
                    .ok_or_else(|| io::Error::other(format!("{host} has no address")))?;
                let s = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(&target.into())?;
                (s, None)
            }
            BindAddress::Unix(path) => {
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path)?;
                }
                let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
                s.bind(&SockAddr::unix(path)?)?;
                (s, Some(path.clone()))
            }
            BindAddress::Fd(_) => {
                return Err(io::Error::other(
                    "the metrics listener takes HOST:PORT or unix:PATH",
                ))
            }
        };
        listener.listen(64)?;
        Self::serve(listener, unix_path, addr.spec())
    }

    /// Serve on a listening socket a master started by `USR2` inherited from the old one (its number
    /// in [`INHERITED_FD_ENV`]): both masters answer on it until the old one exits.
    pub fn adopt(fd: RawFd) -> io::Result<MetricsServer> {
        // SAFETY: fstat on a descriptor number only reads; an invalid one is an error.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFSOCK
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{INHERITED_FD_ENV}={fd} is not a socket"),
            ));
        }
        // SAFETY: the descriptor was handed to this process to own, and is a socket (checked above).
        let listener = unsafe { Socket::from_raw_fd(fd) };
        listener.set_cloexec(true)?;
        let local = listener.local_addr()?;
        let unix_path = local.as_pathname().map(|p| p.to_path_buf());
        let spec = format!("fd://{fd}");
        Self::serve(listener, unix_path, spec)
    }

    /// The listening socket's descriptor, to hand to a master started by `USR2`.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Leave a unix socket's file in place when this server goes: a master started by `USR2` serves
    /// on it.
    pub fn keep_path(&mut self) {
        self.unix_path = None;
    }

    fn serve(
        listener: Socket,
        unix_path: Option<PathBuf>,
        spec: String,
    ) -> io::Result<MetricsServer> {
        listener.set_nonblocking(true)?;
        let address = match (&unix_path, listener.local_addr()?.as_socket()) {
            (Some(p), _) => format!("unix:{}", p.display()),
            (None, Some(a)) => format!("http://{a}"),
            (None, None) => spec,
        };
        // SAFETY: epoll_create1 has no preconditions; the result is checked.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just created and own.
        let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
        epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER_TOKEN,
        )?;
        Ok(MetricsServer {
            listener: ManuallyDrop::new(listener),
            epoll: ManuallyDrop::new(epoll),
            conns: HashMap::new(),
            address,
            unix_path,
            owner_pid: std::process::id(),
            abandoned: std::cell::Cell::new(false),
        })
    }

    /// Readable whenever the server has something to do: poll it beside the master's other descriptors.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// In a freshly forked worker: close this process's copies of the descriptors (the worker never
    /// serves metrics and must not keep the listener open).
    pub fn close_in_child(&self) {
        self.abandoned.set(true);
        let fds: Vec<RawFd> = [self.epoll.as_raw_fd(), self.listener.as_raw_fd()]
            .into_iter()
            .chain(self.conns.keys().copied())
            .collect();
        for fd in fds {
            // SAFETY: closing descriptors this child inherited and never uses; the owning values are
            // forgotten, not dropped, in the child (see Drop).
            unsafe { libc::close(fd) };
        }
    }

    /// Do whatever is ready, without blocking; close connections past their deadline.
    pub fn handle_ready(&mut self, target: &mut dyn Observed) {
        self.accept_all();
        let now = Instant::now();
        let fds: Vec<RawFd> = self.conns.keys().copied().collect();
        for fd in fds {
            let Some(mut conn) = self.conns.remove(&fd) else {
                continue;
            };
            if now.duration_since(conn.since) > DEADLINE || !serve(&mut conn, target) {
                continue; // dropping the socket closes it and takes it out of the epoll set
            }
            let want_write = !conn.output.is_empty();
            if want_write != conn.watching_write {
                let events = if want_write {
                    libc::EPOLLOUT as u32
                } else {
                    (libc::EPOLLIN | libc::EPOLLRDHUP) as u32
                };
                if epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_MOD,
                    fd,
                    events,
                    fd as u64,
                )
                .is_err()
                {
                    continue;
                }
                conn.watching_write = want_write;
            }
            self.conns.insert(fd, conn);
        }
    }

    fn accept_all(&mut self) {
        for _ in 0..64 {
            let sock = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                // The oldest goes: a crowd of silent clients cannot lock scrapers out.
                if let Some(fd) = self
                    .conns
                    .iter()
                    .min_by_key(|(_, c)| c.since)
                    .map(|(fd, _)| *fd)
                {
                    self.conns.remove(&fd);
                }
            }
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = sock.as_raw_fd();
            if epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd,
                (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                fd as u64,
            )
            .is_err()
            {
                continue;
            }
            self.conns.insert(
                fd,
                Conn {
                    sock,
                    input: Vec::new(),
                    output: Vec::new(),
                    answered: false,
                    since: Instant::now(),
                    watching_write: false,
                },
            );
        }
    }
}

/// One turn of a connection; false when it is done or broken.
fn serve(conn: &mut Conn, target: &mut dyn Observed) -> bool {
    if !conn.answered {
        let mut buf = [0u8; 4096];
        loop {
            match (&conn.sock).read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    conn.input.extend_from_slice(&buf[..n]);
                    if conn.input.len() > MAX_HEAD {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        let complete = conn.input.windows(4).any(|w| w == b"\r\n\r\n")
            || conn.input.windows(2).any(|w| w == b"\n\n");
        if !complete && conn.input.len() <= MAX_HEAD {
            return true;
        }
        conn.output = answer(&conn.input, complete, target);
        conn.answered = true;
    }
    while !conn.output.is_empty() {
        // SAFETY: sending from a buffer we own on a socket we own; MSG_NOSIGNAL: a scraper that went
        // away must not raise SIGPIPE in the master.
        let n = unsafe {
            libc::send(
                conn.sock.as_raw_fd(),
                conn.output.as_ptr() as *const libc::c_void,
                conn.output.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            conn.output.drain(..n as usize);
            continue;
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return true,
            _ => return false,
        }
    }
    let _ = conn.sock.shutdown(std::net::Shutdown::Write);
    false
}

/// The whole answer to a request head.
fn answer(head: &[u8], complete: bool, target: &mut dyn Observed) -> Vec<u8> {
    if !complete {
        return response(
            431,
            "Request Header Fields Too Large",
            "text/plain",
            b"",
            false,
        );
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or(b"");
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("");
    let target_path = words.next().unwrap_or("");
    let path = target_path.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return response(
            405,
            "Method Not Allowed",
            "text/plain",
            b"GET or HEAD\n",
            false,
        );
    }
    match path {
        "/metrics" => {
            let body = target.exposition();
            response(
                200,
                "OK",
                super::text::CONTENT_TYPE,
                body.as_bytes(),
                head_only,
            )
        }
        "/healthz" | "/livez" | "/readyz" => {
            let h = target.health();
            // Liveness or readiness, one answer each: 200 when it holds, 503 when not.
            let ok = if path == "/readyz" { h.ready } else { h.live };
            let body = health_body(&h, ok);
            let (code, reason) = if ok {
                (200, "OK")
            } else {
                (503, "Service Unavailable")
            };
            response(
                code,
                reason,
                "text/plain; charset=utf-8",
                body.as_bytes(),
                head_only,
            )
        }
        _ => response(
            404,
            "Not Found",
            "text/plain",
            b"/metrics, /healthz or /readyz\n",
            head_only,
        ),
    }
}

/// `ok: 2 worker(s) serving` or `not ready: the server is stopping`, then one line per worker.
pub fn health_body(h: &Health, passed: bool) -> String {
    let mut out = format!("{}: {}\n", if passed { "ok" } else { "fail" }, h.reason);
    for w in &h.workers {
        out.push_str(&format!(
            "worker {} {}: loop beat {:.1}s ago, {}/{} threads alive{}{}\n",
            w.pid,
            crate::scoreboard::state_name(w.state),
            w.loop_age_secs,
            w.threads_alive,
            w.threads_reporting,
            if w.problem.is_empty() { "" } else { "; " },
            w.problem
        ));
    }
    out
}

fn response(code: u16, reason: &str, ctype: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if self.abandoned.get() {
            // A forked child that closed its copies: closing again could hit reused numbers.
            for (_, c) in self.conns.drain() {
                std::mem::forget(c);
            }
            return;
        }
        if std::process::id() == self.owner_pid {
            if let Some(p) = &self.unix_path {
                let _ = std::fs::remove_file(p);
            }
        }
        self.conns.clear();
        // SAFETY: dropped once, here, and never used afterwards.
        unsafe {
            ManuallyDrop::drop(&mut self.listener);
            ManuallyDrop::drop(&mut self.epoll);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Fixed(bool);

    impl Observed for Fixed {
        fn exposition(&mut self) -> String {
            "# TYPE x gauge\nx 1\n".into()
        }
        fn health(&mut self) -> Health {
            Health {
                live: true,
                ready: self.0,
                stopping: !self.0,
                workers: Vec::new(),
                reason: "because".into(),
            }
        }
    }

    fn get(server: &mut MetricsServer, target: &mut Fixed, req: &'static [u8]) -> String {
        let addr = server.address.trim_start_matches("http://").to_string();
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(req).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        });
        while !client.is_finished() {
            server.handle_ready(target);
            std::thread::sleep(Duration::from_millis(2));
        }
        client.join().unwrap()
    }

    #[test]
    fn routes() {
        let mut server = MetricsServer::bind(&BindAddress::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        })
        .unwrap();
        let mut t = Fixed(true);
        let r = get(
            &mut server,
            &mut t,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("version=0.0.4"));
        assert!(r.ends_with("x 1\n"));
        let r = get(&mut server, &mut t, b"GET /readyz HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let mut t = Fixed(false);
        let r = get(&mut server, &mut t, b"GET /readyz?x=1 HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("fail: because\n"), "{r}");
        let r = get(&mut server, &mut t, b"HEAD /healthz HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let r = get(&mut server, &mut t, b"GET /nope HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404"));
        let r = get(&mut server, &mut t, b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405"));
    }

    #[test]
    fn silent_clients_neither_block_nor_lock_out() {
        let mut server = MetricsServer::bind(&BindAddress::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        })
        .unwrap();
        let addr = server.address.trim_start_matches("http://").to_string();
        let silent: Vec<std::net::TcpStream> = (0..MAX_CONNECTIONS + 5)
            .map(|_| std::net::TcpStream::connect(&addr).unwrap())
            .collect();
        let mut t = Fixed(true);
        let started = Instant::now();
        server.handle_ready(&mut t);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(server.conns.len() <= MAX_CONNECTIONS);
        let r = get(&mut server, &mut t, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        drop(silent);
    }
}
