//! Latency probes for `ferricornctl doctor --probe URL`: N plain HTTP/1.1 `GET`s, one connection each,
//! timed from connect to the end of the response, summarized as p50/p99 and the statuses seen.
//!
//! Only `http://` is spoken (probe nginx or ferricorn on the loopback, not the TLS front). Every request
//! has a deadline that covers connect, write and every read, so a stuck server costs at most
//! `count × timeout`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Response bytes read at most per request; the rest is not waited for.
const MAX_RESPONSE: usize = 1024 * 1024;

/// Why a probe request (or the whole URL) gave no answer.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeError {
    /// The URL cannot be probed (not http://, no host, a bad port).
    Url(String),
    Resolve(String),
    Connect(String),
    Io(String),
    /// No complete answer within this many seconds.
    Timeout(f64),
    Closed,
    NotHttp,
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Url(e) => f.write_str(e),
            ProbeError::Resolve(h) => write!(f, "cannot resolve {h}"),
            ProbeError::Connect(e) => write!(f, "connect: {e}"),
            ProbeError::Io(e) => f.write_str(e),
            ProbeError::Timeout(s) => write!(f, "no complete answer within {s:.1}s"),
            ProbeError::Closed => f.write_str("connection closed without an answer"),
            ProbeError::NotHttp => f.write_str("not an HTTP response"),
        }
    }
}

/// A probe URL taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// For the `Host` header: as written in the URL.
    pub authority: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// `http://host[:port][/path]`; Err says why not.
pub fn parse_url(url: &str) -> Result<Target, ProbeError> {
    let bad = |m: String| ProbeError::Url(m);
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs can be probed".to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad("no host in the URL".to_string()));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in the host".to_string()))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad(format!("bad port '{p}'")))?,
            None => 80,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| bad(format!("bad port '{p}'")))?,
            ),
            None => (authority.to_string(), 80),
        }
    };
    Ok(Target {
        authority: authority.to_string(),
        host,
        port,
        path: path.to_string(),
    })
}

/// One request's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub secs: f64,
    /// The status code, or why there was none.
    pub status: Result<u16, ProbeError>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    pub url: String,
    /// The URL could not be used at all.
    pub error: Option<ProbeError>,
    pub samples: Vec<Sample>,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl ProbeResult {
    /// Latencies of the requests that got a response, sorted.
    pub fn latencies(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.status.is_ok())
            .map(|s| s.secs)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
    pub fn p50(&self) -> Option<f64> {
        percentile(&self.latencies(), 50.0)
    }
    pub fn p99(&self) -> Option<f64> {
        percentile(&self.latencies(), 99.0)
    }
    pub fn failures(&self) -> usize {
        self.samples.iter().filter(|s| s.status.is_err()).count()
    }
    pub fn server_errors(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| matches!(s.status, Ok(c) if c >= 500))
            .count()
    }
}

fn once(addr: &SocketAddr, t: &Target, timeout: Duration) -> Result<u16, ProbeError> {
    let deadline = Instant::now() + timeout;
    let timed_out = ProbeError::Timeout(timeout.as_secs_f64());
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| timed_out.clone())
    };
    let io = |e: std::io::Error| ProbeError::Io(e.to_string());
    let mut s = TcpStream::connect_timeout(addr, left()?)
        .map_err(|e| ProbeError::Connect(e.to_string()))?;
    s.set_write_timeout(Some(left()?)).map_err(io)?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferricornctl-doctor\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        t.path, t.authority
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        s.set_read_timeout(Some(left()?)).map_err(io)?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() >= MAX_RESPONSE {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out)
            }
            Err(e) => {
                if buf.is_empty() {
                    return Err(io(e));
                }
                break;
            }
        }
    }
    let head = String::from_utf8_lossy(&buf[..buf.len().min(256)]).into_owned();
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok());
    status.ok_or(if buf.is_empty() {
        ProbeError::Closed
    } else {
        ProbeError::NotHttp
    })
}

/// `count` requests to `url`, one after another.
pub fn probe(url: &str, count: usize, timeout: Duration) -> ProbeResult {
    let mut r = ProbeResult {
        url: url.to_string(),
        error: None,
        samples: Vec::new(),
    };
    let target = match parse_url(url) {
        Ok(t) => t,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    let addr = match (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map(|mut a| a.next())
    {
        Ok(Some(a)) => a,
        Ok(None) | Err(_) => {
            r.error = Some(ProbeError::Resolve(target.host.clone()));
            return r;
        }
    };
    for _ in 0..count {
        let start = Instant::now();
        let status = once(&addr, &target, timeout);
        r.samples.push(Sample {
            secs: start.elapsed().as_secs_f64(),
            status,
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/health/?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/health/?x=1")
        );
        let t = parse_url("http://example.com").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = parse_url("http://[::1]:81/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 81));
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http://x:abc/").is_err());
        assert!(parse_url("http:///").is_err());
    }

    #[test]
    fn percentiles() {
        let v = [1.0, 2.0, 3.0, 4.0, 100.0];
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 99.0), Some(100.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn against_a_tiny_server_and_a_silent_one() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut c, _) = l.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                c.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .unwrap();
            }
        });
        let r = probe(
            &format!("http://127.0.0.1:{port}/"),
            2,
            Duration::from_secs(5),
        );
        server.join().unwrap();
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.server_errors(), 2);
        assert!(r.p50().is_some());
        // accepts (backlog) but never answers: the deadline ends it
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let start = Instant::now();
        let r = probe(
            &format!("http://127.0.0.1:{port}/"),
            1,
            Duration::from_millis(300),
        );
        assert!(start.elapsed() < Duration::from_secs(3));
        assert_eq!(r.failures(), 1);
        assert!(r.p50().is_none());
        drop(silent);
    }
}
