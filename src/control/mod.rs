//! The control socket: a unix socket on which the master answers `ferricornctl` (and gunicorn's
//! `gunicornc`): who is busy with what, worker counts, reload, reopen, shutdown.
//!
//! The master starts no threads, so the server runs inside its loop: every socket is non-blocking and
//! registered with one epoll instance whose descriptor the master polls beside its signal pipe
//! ([`ControlServer::fd`]). [`ControlServer::handle_ready`] accepts, reads, answers and writes only what
//! is ready, and closes connections that stall past a deadline, so a stuck or silent client never holds
//! up supervision. What the commands need from the master is the [`ControlTarget`] trait.
//!
//! `protocol` is the wire format and command grammar, `json` the value type, `client` is `ferricornctl`,
//! `doctor` its `doctor` command (the worker-timeout runbook, client side only).

pub mod client;
pub mod doctor;
pub mod json;
pub mod protocol;
pub mod top;

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::config::control_socket::{
    default_socket_path, default_socket_path_from_env, DEFAULT_MODE, SOCKET_NAME,
};
use crate::log::ErrorLog;
use crate::scoreboard::WorkerState;
use json::Json;
use protocol::{Request, Show};

/// Runs a command-line entry point on `args` in-process, for unit tests: (exit code, stdout, stderr).
#[cfg(test)]
pub(crate) fn run_cli(
    main: fn(&[String], &mut dyn std::io::Write, &mut dyn std::io::Write) -> i32,
    prog: &str,
    args: &[&str],
) -> (i32, String, String) {
    let argv: Vec<String> = std::iter::once(prog)
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = main(&argv, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Open control connections at most; more are closed as soon as they are accepted.
const MAX_CONNECTIONS: usize = 16;
/// A connection may sit idle between requests this long (an interactive client waits for its user).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A request must arrive in full, and a reply be taken by the client, within this time.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests answered per connection per call, so one client cannot keep the master busy.
const REQUESTS_PER_TURN: usize = 8;
/// The epoll token of the listening socket (connections use their descriptor).
const LISTENER_TOKEN: u64 = u64::MAX;

/// Where a server whose default socket is held by another live server puts its own: beside it, named
/// after its pid (`ferricorn.4242.ctl`), so that every server has one and none takes another's.
pub fn own_socket_path(default: &Path, pid: u32) -> PathBuf {
    default.with_file_name(format!("ferricorn.{pid}.ctl"))
}

/// Whether a file name is one [`own_socket_path`] makes.
fn is_own_socket_name(name: &str) -> bool {
    name.strip_prefix("ferricorn.")
        .and_then(|r| r.strip_suffix(".ctl"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// The sockets of other live servers beside the default one (see [`own_socket_path`]), sorted.
pub fn sockets_beside(default: &Path) -> Vec<PathBuf> {
    let Some(dir) = default.parent() else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(is_own_socket_name))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .filter(|p| p != default && live_server(p).is_some())
        .collect();
    out.sort();
    out
}

/// Some(pid) when a server accepts on the socket `path` (`Some(None)` when the kernel did not say
/// who), None when nobody does.
pub fn live_server(path: &Path) -> Option<Option<i32>> {
    match occupant(path) {
        Occupant::Live(pid) => Some(pid),
        Occupant::Stale => None,
    }
}

/// A request one thread of a worker is running.
#[derive(Clone, Debug, PartialEq)]
pub struct BusyThread {
    pub thread: usize,
    pub method: String,
    pub path: String,
    pub client: String,
    pub elapsed_secs: f64,
    /// An event loop's task (`-k asgi`, where `thread` is the request's entry): what it waits for.
    pub task_state: Option<&'static str>,
}

/// One worker as `show workers` reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerInfo {
    pub pid: i32,
    /// 1 for the first worker the master started, 2 for the next... (gunicorn's `age`).
    pub spawn_order: u64,
    /// Seconds since the worker was started.
    pub age_secs: f64,
    pub state: WorkerState,
    /// Told to stop (remove, reload) and not gone yet.
    pub retiring: bool,
    /// WORKER TIMEOUT was declared for it.
    pub aborted: bool,
    pub requests: u64,
    pub rss_bytes: Option<u64>,
    /// Seconds since its I/O loop last beat.
    pub heartbeat_age_secs: f64,
    pub in_flight: Vec<BusyThread>,
}

/// A thread's request in flight with its Python stack, as `show stacks` reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadStack {
    pub request: BusyThread,
    /// The stack (faulthandler's layout, most recent call first), when the worker's latest snapshot
    /// was taken during this request.
    pub stack: Option<Vec<String>>,
}

/// A request a worker finished recently (`show stacks`).
#[derive(Clone, Debug, PartialEq)]
pub struct RecentRequest {
    pub thread: usize,
    pub method: String,
    pub path: String,
    pub started_secs_ago: f64,
    pub finished_secs_ago: f64,
}

/// One worker as `show stacks` reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerStacks {
    pub pid: i32,
    /// The wall-clock time (Unix seconds) at which the ages below hold, so that a client can compare
    /// them with another clock's times (the database's).
    pub ages_at: f64,
    /// Seconds since the worker wrote its latest snapshot; None before its first one. Each `show stacks`
    /// asks every worker for a new one, which it writes within about half a second.
    pub snapshot_age_secs: Option<f64>,
    pub threads: Vec<ThreadStack>,
    /// Oldest first.
    pub recent: Vec<RecentRequest>,
}

/// `show stats` (the uptime is the control server's own: it starts with the master).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub pid: u32,
    pub workers_current: usize,
    pub workers_target: usize,
    pub workers_spawned: u64,
    pub workers_retiring: usize,
    pub reloads: u64,
    pub busy_workers: usize,
    pub busy_threads: usize,
    /// Requests served by the workers running now.
    pub requests: u64,
    /// App threads of the target number of workers: requests that can run at once.
    pub capacity: usize,
    /// The most app threads busy at once, and the most connections waiting at once (listen backlog plus
    /// inside workers), since the master started; sampled about once a second.
    pub peak_busy_threads: usize,
    pub peak_waiting: u64,
}

/// A listening socket as `show listeners` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    /// As in `Listening at:` (`http://127.0.0.1:8000`, `unix:/run/app.sock`).
    pub address: String,
    /// `tcp`, `tcp6` or `unix`.
    pub kind: &'static str,
    pub fd: RawFd,
}

/// The commands that change something.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlCommand {
    AddWorkers(usize),
    RemoveWorkers(usize),
    KillWorker(i32),
    Reload,
    Reopen,
    Shutdown { graceful: bool },
}

/// What an action did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The target number of workers before and after.
    Workers {
        previous: usize,
        total: usize,
    },
    /// The worker that was told to stop.
    Killed(i32),
    Done,
}

/// What the control server needs from the master.
pub trait ControlTarget {
    /// Every worker still running (retiring ones included), oldest first.
    fn workers(&self) -> Vec<WorkerInfo>;
    fn stats(&self) -> Stats;
    /// Every setting as `(name, value)`, the value as `--print-config` writes it.
    fn config(&self) -> Vec<(String, String)>;
    fn listeners(&self) -> Vec<ListenerInfo>;
    /// Every worker's threads with their stacks (asking each worker for a fresh snapshot).
    fn stacks(&self) -> Vec<WorkerStacks> {
        Vec::new()
    }
    /// The metrics as a scrape would read them now (None where there are none).
    fn metrics(&self) -> Option<crate::metrics::Snapshot> {
        None
    }
    /// Liveness and readiness, as `/healthz` and `/readyz` judge them.
    fn health(&self) -> Option<crate::metrics::health::Health> {
        None
    }
    /// Carry out an action; `Err` is the message sent back to the client.
    fn command(&mut self, cmd: ControlCommand) -> Result<Outcome, String>;
}

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// When the current request or reply began to be pending (None while idle).
    busy_since: Option<Instant>,
    idle_since: Instant,
    /// Close once the output is written (after a protocol error or the client's end of input).
    closing: bool,
    /// The epoll interest now registered: writable (true) or readable (false).
    watching_write: bool,
}

pub struct ControlServer {
    path: PathBuf,
    /// Both closed by `Drop`, except in a forked child that already closed its copies.
    listener: ManuallyDrop<UnixListener>,
    epoll: ManuallyDrop<OwnedFd>,
    conns: HashMap<RawFd, Conn>,
    /// The socket file as created, so that only our own file is removed.
    file_id: (u64, u64),
    owner_pid: u32,
    started: Instant,
    log: ErrorLog,
    /// Set in a forked child, whose copies of the descriptors were closed.
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

/// Who holds an existing socket file.
#[derive(Debug, PartialEq, Eq)]
enum Occupant {
    /// Nobody accepts on it: a dead server's leftover.
    Stale,
    /// A server accepts on it; its pid when the kernel could tell.
    Live(Option<i32>),
}

/// The process at the other end of a connected unix socket (`SO_PEERCRED`): for a client, the one that
/// listens, i.e. the server's master. None when the kernel does not say.
pub(crate) fn peer_pid(fd: RawFd) -> Option<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `fd` is a socket the caller owns, and the buffer is ucred-sized.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid)
}

/// A non-blocking connect answers at once: refused for a stale file, accepted (or pending, when the
/// backlog is full) for a live one, whose process the kernel names (`SO_PEERCRED`).
fn occupant(path: &Path) -> Occupant {
    let Ok(sock) = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None) else {
        return Occupant::Stale;
    };
    let Ok(addr) = socket2::SockAddr::unix(path) else {
        return Occupant::Stale;
    };
    if sock.set_nonblocking(true).is_err() {
        return Occupant::Stale;
    }
    match sock.connect(&addr) {
        Ok(()) => Occupant::Live(peer_pid(sock.as_raw_fd())),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::EINPROGRESS)
            ) =>
        {
            Occupant::Live(None)
        }
        Err(_) => Occupant::Stale,
    }
}

impl ControlServer {
    /// Create the socket at `path` with permissions `mode` (creating a missing parent directory with
    /// mode 0700). A stale socket file left by a dead server is replaced; a live one only when its server
    /// is this process's parent: the master that re-executed itself into this one (USR2), which keeps
    /// its now unnamed socket until it exits and then leaves this one's file in place.
    pub fn bind(path: &Path, mode: u32, log: ErrorLog) -> io::Result<ControlServer> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
        }
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                match occupant(path) {
                    Occupant::Stale => {}
                    Occupant::Live(Some(pid)) if pid == nix::unistd::getppid().as_raw() => {
                        log.info(&format!(
                            "Control socket taken over from the master that started this one \
                             (pid {pid})"
                        ));
                    }
                    Occupant::Live(pid) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            match pid {
                                Some(pid) => {
                                    format!("another server (pid {pid}) is listening on it")
                                }
                                None => "another server is listening on it".to_string(),
                            },
                        ))
                    }
                }
                fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Created with no permission for others from the start, then set to `mode`. The master has a
        // single thread, so changing the process umask around bind() affects nothing else.
        // SAFETY: umask has no preconditions.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound?;
        let result = (|| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
            listener.set_nonblocking(true)?;
            let meta = fs::symlink_metadata(path)?;
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
            Ok((epoll, (meta.dev(), meta.ino())))
        })();
        let (epoll, file_id) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(e);
            }
        };
        log.info(&format!("Control socket listening at {}", path.display()));
        Ok(ControlServer {
            path: path.to_path_buf(),
            listener: ManuallyDrop::new(listener),
            epoll: ManuallyDrop::new(epoll),
            conns: HashMap::new(),
            file_id,
            owner_pid: std::process::id(),
            started: Instant::now(),
            log,
            abandoned: std::cell::Cell::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Readable whenever the server has something to do: poll it beside the signal pipe.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// In a freshly forked worker: close this process's copies of the server's descriptors (the master
    /// keeps serving on its own), and never remove the socket file from here.
    pub fn close_in_child(&self) {
        self.abandoned.set(true);
        let fds = [self.epoll.as_raw_fd(), self.listener.as_raw_fd()]
            .into_iter()
            .chain(self.conns.keys().copied());
        for fd in fds {
            // SAFETY: closing descriptors this (child) process inherited and will never use; the owning
            // values are not dropped in the child (the worker never returns to the master's code).
            unsafe { libc::close(fd) };
        }
    }

    /// Do whatever is ready without blocking: accept, read and answer requests, write replies, and close
    /// connections past their deadline. Call it after each wait of the master loop (ready or not: the
    /// deadlines are checked here).
    pub fn handle_ready(&mut self, target: &mut dyn ControlTarget) {
        self.accept_all();
        let fds: Vec<RawFd> = self.conns.keys().copied().collect();
        let now = Instant::now();
        for fd in fds {
            let Some(mut conn) = self.conns.remove(&fd) else {
                continue;
            };
            let keep = self.serve(&mut conn, target);
            let expired = match conn.busy_since {
                Some(t) => now.duration_since(t) > IO_TIMEOUT,
                None => now.duration_since(conn.idle_since) > IDLE_TIMEOUT,
            };
            if !keep || expired {
                if expired && keep {
                    self.log
                        .debug("Control connection closed: no progress before its deadline");
                }
                continue; // dropping the stream closes it and removes it from the epoll set
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
        // Bounded, so a flood of connections cannot hold the master here.
        for _ in 0..64 {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.conns.len() >= MAX_CONNECTIONS && !self.evict_idle() {
                self.log
                    .warning("Control connection refused: too many control requests in progress");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
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
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    busy_since: None,
                    idle_since: Instant::now(),
                    closing: false,
                    watching_write: false,
                },
            );
        }
    }

    /// Close the connection idle the longest, to make room for a new one (silent clients must not lock
    /// the operator out). False when every connection is in the middle of a request.
    fn evict_idle(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| c.busy_since.is_none())
            .min_by_key(|(_, c)| c.idle_since)
            .map(|(fd, _)| *fd);
        match oldest {
            Some(fd) => {
                self.conns.remove(&fd);
                self.log
                    .debug("Control connection closed: idle, and its place was needed");
                true
            }
            None => false,
        }
    }

    /// One turn of a connection. False when it is finished (closed by the peer, an error, or done).
    fn serve(&self, conn: &mut Conn, target: &mut dyn ControlTarget) -> bool {
        if !flush(conn) {
            return false;
        }
        let mut eof = false;
        if conn.output.is_empty() && !conn.closing {
            // Read what is there, but no more than one request's worth beyond what is buffered.
            let mut buf = [0u8; 16 * 1024];
            while conn.input.len() <= protocol::MAX_REQUEST + 4 {
                match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return false,
                }
            }
            for _ in 0..REQUESTS_PER_TURN {
                match protocol::take_frame(&mut conn.input, protocol::MAX_REQUEST) {
                    Ok(None) => break,
                    Ok(Some(payload)) => {
                        let reply = self.answer(&payload, target);
                        conn.output.extend_from_slice(&protocol::frame(&reply));
                    }
                    Err(protocol::FrameError::TooLarge(n)) => {
                        let reply = protocol::error_reply(
                            Json::Int(0),
                            &format!("Message too large: {n} bytes"),
                        );
                        conn.output.extend_from_slice(&protocol::frame(&reply));
                        conn.input.clear();
                        conn.closing = true;
                        break;
                    }
                }
            }
            if eof {
                conn.closing = true;
            }
            if !flush(conn) {
                return false;
            }
        }
        if conn.closing && conn.output.is_empty() {
            return false;
        }
        let pending = !conn.input.is_empty() || !conn.output.is_empty();
        match (pending, conn.busy_since) {
            (true, None) => conn.busy_since = Some(Instant::now()),
            (false, Some(_)) => {
                conn.busy_since = None;
                conn.idle_since = Instant::now();
            }
            _ => {}
        }
        true
    }

    /// The reply to one request.
    fn answer(&self, payload: &[u8], target: &mut dyn ControlTarget) -> Json {
        let msg = match std::str::from_utf8(payload)
            .map_err(|_| "invalid JSON: not UTF-8".to_string())
            .and_then(Json::parse)
        {
            Ok(m @ Json::Obj(_)) => m,
            Ok(_) => return protocol::error_reply(Json::Int(0), "invalid request: not an object"),
            Err(e) => return protocol::error_reply(Json::Int(0), &e),
        };
        let id = msg.get("id").cloned().unwrap_or(Json::Int(0));
        let mut words =
            protocol::split_words(msg.get("command").and_then(Json::as_str).unwrap_or(""));
        if let Some(args) = msg.get("args").and_then(Json::as_array) {
            words.extend(args.iter().map(|a| match a {
                Json::Str(s) => s.clone(),
                other => other.encode(),
            }));
        }
        let request = match protocol::parse_command(&words) {
            Ok(r) => r,
            Err(e) => return protocol::error_reply(id, &e),
        };
        let data = match request {
            Request::Show(Show::Workers) => protocol::workers_data(&target.workers()),
            Request::Show(Show::Stats) => {
                protocol::stats_data(&target.stats(), self.started.elapsed().as_secs_f64())
            }
            Request::Show(Show::Config) => {
                // The socket actually in use, which is not the configured default when another server
                // held that (see `own_socket_path`).
                let mut settings = target.config();
                for (name, value) in settings.iter_mut() {
                    if name == "control_socket" {
                        *value = self.path.display().to_string();
                    }
                }
                protocol::config_data(&settings)
            }
            Request::Show(Show::Listeners) => protocol::listeners_data(&target.listeners()),
            Request::Show(Show::Stacks) => protocol::stacks_data(&target.stacks()),
            Request::Show(Show::All) => protocol::all_data(std::process::id(), &target.workers()),
            Request::Show(Show::Dirty) => protocol::dirty_data(),
            Request::Show(Show::Metrics) => match target.metrics() {
                Some(m) => protocol::metrics_data(&m),
                None => return protocol::error_reply(id, "No metrics here"),
            },
            Request::Show(Show::Health) => match target.health() {
                Some(h) => protocol::health_data(&h),
                None => return protocol::error_reply(id, "No health here"),
            },
            Request::Help => protocol::help_data(),
            Request::Action(cmd) => match target.command(cmd.clone()) {
                Ok(outcome) => {
                    self.log
                        .info(&format!("Control command: {}", words.join(" ")));
                    protocol::outcome_data(&cmd, &outcome)
                }
                Err(e) => return protocol::error_reply(id, &e),
            },
        };
        protocol::ok_reply(id, data)
    }
}

/// Write what the socket takes now. False on a broken connection. `MSG_NOSIGNAL`: a client that went away
/// must not raise SIGPIPE in the master.
fn flush(conn: &mut Conn) -> bool {
    while !conn.output.is_empty() {
        // SAFETY: sending from a buffer we own on a descriptor we own.
        let n = unsafe {
            libc::send(
                conn.stream.as_raw_fd(),
                conn.output.as_ptr() as *const libc::c_void,
                conn.output.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            conn.output.drain(..n as usize);
            continue;
        }
        if n == 0 {
            return false;
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return true,
            _ => return false,
        }
    }
    true
}

impl Drop for ControlServer {
    /// Send what replies can still go out (a `shutdown` is answered before the master stops), then
    /// remove the socket file if it is still the one this server created.
    fn drop(&mut self) {
        if self.abandoned.get() {
            // A forked child that closed its copies already: closing again could hit reused numbers.
            std::mem::forget(std::mem::take(&mut self.conns));
            return;
        }
        if std::process::id() == self.owner_pid {
            for conn in self.conns.values_mut() {
                flush(conn);
            }
            if let Ok(meta) = fs::symlink_metadata(&self.path) {
                if (meta.dev(), meta.ino()) == self.file_id {
                    let _ = fs::remove_file(&self.path);
                }
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
    use crate::log::Level;
    use std::io::Write;

    struct Fake {
        target: usize,
    }

    impl ControlTarget for Fake {
        fn workers(&self) -> Vec<WorkerInfo> {
            vec![WorkerInfo {
                pid: 42,
                spawn_order: 1,
                age_secs: 3.0,
                state: WorkerState::Busy,
                retiring: false,
                aborted: false,
                requests: 5,
                rss_bytes: Some(1 << 20),
                heartbeat_age_secs: 0.1,
                in_flight: vec![BusyThread {
                    thread: 0,
                    method: "GET".into(),
                    path: "/slow".into(),
                    client: "127.0.0.1:5000".into(),
                    elapsed_secs: 1.25,
                    task_state: None,
                }],
            }]
        }
        fn stats(&self) -> Stats {
            Stats::default()
        }
        fn config(&self) -> Vec<(String, String)> {
            vec![("workers".into(), self.target.to_string())]
        }
        fn listeners(&self) -> Vec<ListenerInfo> {
            Vec::new()
        }
        fn command(&mut self, cmd: ControlCommand) -> Result<Outcome, String> {
            match cmd {
                ControlCommand::AddWorkers(n) => {
                    let previous = self.target;
                    self.target += n;
                    Ok(Outcome::Workers {
                        previous,
                        total: self.target,
                    })
                }
                _ => Err("not here".into()),
            }
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fcn-ctl-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn log() -> ErrorLog {
        ErrorLog::stderr(Level::Critical)
    }

    /// Send one request from a client thread while the test drives the server.
    fn call(server: &mut ControlServer, target: &mut Fake, words: &str) -> Json {
        let path = server.path().to_path_buf();
        let words = protocol::split_words(words);
        let client = std::thread::spawn(move || {
            let mut s = UnixStream::connect(path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&protocol::frame(&protocol::request(9, &words)))
                .unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut payload).unwrap();
            Json::parse(std::str::from_utf8(&payload).unwrap()).unwrap()
        });
        while !client.is_finished() {
            server.handle_ready(target);
            std::thread::sleep(Duration::from_millis(5));
        }
        client.join().unwrap()
    }

    #[test]
    fn own_sockets_beside_the_default() {
        let dir = temp_dir("beside");
        let default = dir.join(SOCKET_NAME);
        assert_eq!(
            own_socket_path(&default, 4242),
            dir.join("ferricorn.4242.ctl")
        );
        assert!(is_own_socket_name("ferricorn.1.ctl"));
        for name in [
            "ferricorn.ctl",
            "ferricorn..ctl",
            "ferricorn.12a.ctl",
            "gunicorn.1.ctl",
        ] {
            assert!(!is_own_socket_name(name), "{name}");
        }
        let a = ControlServer::bind(&own_socket_path(&default, 7), DEFAULT_MODE, log()).unwrap();
        let b = ControlServer::bind(&own_socket_path(&default, 12), DEFAULT_MODE, log()).unwrap();
        let _default = ControlServer::bind(&default, DEFAULT_MODE, log()).unwrap();
        // a stale one and an unrelated socket are not listed
        drop(UnixListener::bind(dir.join("ferricorn.99.ctl")).unwrap());
        let _other = UnixListener::bind(dir.join("other.ctl")).unwrap();
        assert_eq!(
            sockets_beside(&default),
            // sorted by name
            vec![b.path().to_path_buf(), a.path().to_path_buf()]
        );
        assert_eq!(live_server(a.path()), Some(Some(std::process::id() as i32)));
        assert_eq!(live_server(&dir.join("ferricorn.99.ctl")), None);
        let e = ControlServer::bind(&default, DEFAULT_MODE, log())
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains(&format!("(pid {})", std::process::id())),
            "{e}"
        );
    }

    #[test]
    fn socket_file_life() {
        let dir = temp_dir("life");
        let path = dir.join("sub").join("x.ctl");
        let server = ControlServer::bind(&path, DEFAULT_MODE, log()).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.join("sub")).unwrap().mode() & 0o777, 0o700);
        // A live socket is not taken over (except from the parent process).
        assert_eq!(
            occupant(&path),
            Occupant::Live(Some(std::process::id() as i32))
        );
        let e = ControlServer::bind(&path, DEFAULT_MODE, log())
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(server);
        assert!(!path.exists());
        assert_eq!(occupant(&path), Occupant::Stale);

        // A stale one (nobody listening) is replaced; a regular file is left alone.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = ControlServer::bind(&path, 0o660, log()).unwrap();
        assert_eq!(fs::symlink_metadata(&path).unwrap().mode() & 0o777, 0o660);
        drop(server);
        fs::write(&path, b"data").unwrap();
        let e = ControlServer::bind(&path, DEFAULT_MODE, log())
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"data");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn answers_requests() {
        let dir = temp_dir("answers");
        let mut server = ControlServer::bind(&dir.join("x.ctl"), DEFAULT_MODE, log()).unwrap();
        let mut target = Fake { target: 1 };
        let reply = call(&mut server, &mut target, "show workers");
        assert_eq!(reply.get("id"), Some(&Json::Int(9)));
        assert_eq!(reply.get("status").and_then(Json::as_str), Some("ok"));
        let w = &reply
            .get("data")
            .unwrap()
            .get("workers")
            .unwrap()
            .as_array()
            .unwrap()[0];
        assert_eq!(w.get("state").and_then(Json::as_str), Some("busy"));
        let r = &w.get("in_flight").unwrap().as_array().unwrap()[0];
        assert_eq!(r.get("path").and_then(Json::as_str), Some("/slow"));

        let reply = call(&mut server, &mut target, "worker add 2");
        assert_eq!(reply.get("data").unwrap().get("total"), Some(&Json::Int(3)));
        assert_eq!(target.target, 3);
        let reply = call(&mut server, &mut target, "reload");
        assert_eq!(reply.get("error").and_then(Json::as_str), Some("not here"));
        let reply = call(&mut server, &mut target, "frob");
        assert_eq!(reply.get("status").and_then(Json::as_str), Some("error"));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn silent_clients_are_evicted_for_new_ones() {
        let dir = temp_dir("evict");
        let mut server = ControlServer::bind(&dir.join("x.ctl"), DEFAULT_MODE, log()).unwrap();
        let mut target = Fake { target: 1 };
        let silent: Vec<UnixStream> = (0..MAX_CONNECTIONS + 4)
            .map(|_| UnixStream::connect(server.path()).unwrap())
            .collect();
        server.handle_ready(&mut target);
        assert_eq!(server.conns.len(), MAX_CONNECTIONS);
        let reply = call(&mut server, &mut target, "show config");
        assert_eq!(
            reply.get("data").unwrap().get("workers"),
            Some(&Json::Int(1))
        );
        drop(silent);
        let _ = fs::remove_dir_all(dir);
    }
}
