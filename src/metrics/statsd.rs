//! statsd, as gunicorn sends it: the same metric names and types under `--statsd-prefix`, with
//! `--dogstatsd-tags` appended (`|#tags`), to `--statsd-host` over UDP or a unix datagram socket.
//!
//! One socket is opened by the master before the first fork and inherited by every worker. Each send is
//! one non-blocking datagram (`MSG_DONTWAIT`): a statsd server that is slow, gone or not started yet
//! costs a dropped datagram, never a wait. Workers send per request, as gunicorn does
//! (`runtime::RequestScope`, at the request's end), the three lines of a request in one datagram
//! (newline-separated, which statsd, dogstatsd, telegraf and statsd_exporter all read); the master sends
//! `gunicorn.workers` when the count changes and `gunicorn.backlog` each tick with
//! `--enable-backlog-metric`; every process counts its error-log records (`gunicorn.log.*`).

use std::fmt::Write as _;
use std::net::ToSocketAddrs;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::observability::StatsdAddress;
use crate::config::Config;
use crate::log::{Counted, ErrorLog};

/// The largest datagram built; more lines than fit are sent in further datagrams.
const MAX_DATAGRAM: usize = 1400;

/// The process's statsd client (None until [`init`], or when `--statsd-host` is unset).
static CLIENT: OnceLock<Statsd> = OnceLock::new();

pub struct Statsd {
    sock: Socket,
    /// Set for a unix socket: each datagram is addressed, so a server started later still gets them.
    to: Option<SockAddr>,
    prefix: String,
    /// `|#tags`, or empty.
    suffix: String,
    dropped: AtomicU64,
}

/// A statsd metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `|c|@1.0`, as gunicorn writes its increments.
    Counter,
    /// `|g`.
    Gauge,
    /// `|ms` (gunicorn's histogram: a timer).
    Timer,
}

impl Statsd {
    fn open(addr: &StatsdAddress, prefix: &str, tags: &str) -> std::io::Result<Statsd> {
        let (sock, to) = match addr {
            StatsdAddress::Udp { host, port } => {
                let target = (host.as_str(), *port)
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))?;
                let sock = Socket::new(Domain::for_address(target), Type::DGRAM, None)?;
                sock.connect(&target.into())?;
                (sock, None)
            }
            StatsdAddress::Unix(path) => {
                let sock = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
                (sock, Some(SockAddr::unix(path)?))
            }
        };
        sock.set_nonblocking(true)?;
        Ok(Statsd {
            sock,
            to,
            prefix: prefix.to_string(),
            suffix: if tags.is_empty() {
                String::new()
            } else {
                format!("|#{tags}")
            },
            dropped: AtomicU64::new(0),
        })
    }

    /// One line: `{prefix}{name}:{value}|{type}{|#tags}`.
    fn line(&self, out: &mut String, name: &str, value: f64, kind: Kind) {
        let _ = write!(out, "{}{name}:", self.prefix);
        if value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = write!(out, "{}", value as i64);
        } else {
            let _ = write!(out, "{value}");
        }
        out.push_str(match kind {
            Kind::Counter => "|c|@1.0",
            Kind::Gauge => "|g",
            Kind::Timer => "|ms",
        });
        out.push_str(&self.suffix);
    }

    /// Send `metrics`, as few datagrams as fit. Never blocks; a datagram the socket does not take now
    /// is dropped (and counted).
    pub fn send(&self, metrics: &[(&str, f64, Kind)]) {
        let mut datagram = String::with_capacity(256);
        let mut line = String::with_capacity(96);
        for (name, value, kind) in metrics {
            line.clear();
            self.line(&mut line, name, *value, *kind);
            if !datagram.is_empty() && datagram.len() + 1 + line.len() > MAX_DATAGRAM {
                self.send_one(datagram.as_bytes());
                datagram.clear();
            }
            if !datagram.is_empty() {
                datagram.push('\n');
            }
            datagram.push_str(&line);
        }
        if !datagram.is_empty() {
            self.send_one(datagram.as_bytes());
        }
    }

    fn send_one(&self, bytes: &[u8]) {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let (addr, len) = match &self.to {
            Some(a) => (a.as_ptr() as *const libc::sockaddr, a.len()),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: sending from a buffer we own on a socket we own, to an address we own (or none on a
        // connected socket).
        let n = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                flags,
                addr,
                len,
            )
        };
        if n < 0 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Datagrams this process could not send.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// gunicorn's three metrics of a finished request.
    pub fn request(&self, duration: Duration, status: u16) {
        let mut status_name = String::with_capacity(32);
        let _ = write!(status_name, "gunicorn.request.status.{status}");
        self.send(&[
            (
                "gunicorn.request.duration",
                duration.as_secs_f64() * 1000.0,
                Kind::Timer,
            ),
            ("gunicorn.requests", 1.0, Kind::Counter),
            (&status_name, 1.0, Kind::Counter),
        ]);
    }
}

/// Open the client `--statsd-host` asks for (in the master, before the first fork) and count the error
/// log's records with it. A host that cannot be resolved only earns a warning, as statsd is never worth
/// refusing to start for.
pub fn init(cfg: &Config, log: &ErrorLog) {
    let Some(addr) = &cfg.statsd_host else {
        return;
    };
    match Statsd::open(addr, &cfg.statsd_prefix, &cfg.dogstatsd_tags) {
        Ok(client) => {
            if CLIENT.set(client).is_ok() {
                crate::log::count_records_with(count_record);
                log.debug(&format!("Sending statsd metrics to {addr}"));
            }
        }
        Err(e) => log.warning(&format!(
            "Cannot send statsd metrics to {addr}: {e}; running without statsd"
        )),
    }
}

/// The process's client, when statsd is on.
pub fn get() -> Option<&'static Statsd> {
    CLIENT.get()
}

fn count_record(what: Counted) {
    let Some(c) = get() else { return };
    let name = match what {
        Counted::Critical => "gunicorn.log.critical",
        Counted::Error => "gunicorn.log.error",
        Counted::Warning => "gunicorn.log.warning",
        Counted::Exception => "gunicorn.log.exception",
    };
    c.send(&[(name, 1.0, Kind::Counter)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn datagrams_as_gunicorn_writes_them() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let port = server.local_addr().unwrap().port();
        let addr = StatsdAddress::Udp {
            host: "127.0.0.1".into(),
            port,
        };
        let c = Statsd::open(&addr, "app.", "env:test,a").unwrap();
        c.request(Duration::from_micros(12_500), 201);
        let mut buf = [0u8; 2048];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "app.gunicorn.request.duration:12.5|ms|#env:test,a\n\
             app.gunicorn.requests:1|c|@1.0|#env:test,a\n\
             app.gunicorn.request.status.201:1|c|@1.0|#env:test,a"
        );
        let plain = Statsd::open(&addr, "", "").unwrap();
        plain.send(&[("gunicorn.workers", 3.0, Kind::Gauge)]);
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"gunicorn.workers:3|g");
        // Many lines are split into datagrams that each fit.
        let many: Vec<(&str, f64, Kind)> = (0..200)
            .map(|_| ("gunicorn.requests", 1.0, Kind::Counter))
            .collect();
        plain.send(&many);
        let mut lines = 0;
        while lines < 200 {
            let n = server.recv(&mut buf).unwrap();
            assert!(n <= MAX_DATAGRAM);
            lines += std::str::from_utf8(&buf[..n]).unwrap().lines().count();
        }
        assert_eq!(lines, 200);
    }

    #[test]
    fn a_missing_unix_server_drops_without_blocking() {
        let path = std::env::temp_dir().join(format!("fcn-statsd-{}.sock", std::process::id()));
        let c = Statsd::open(&StatsdAddress::Unix(path), "", "").unwrap();
        c.send(&[("gunicorn.requests", 1.0, Kind::Counter)]);
        assert_eq!(c.dropped(), 1);
    }
}
