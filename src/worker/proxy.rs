//! PROXY protocol (`--proxy-protocol`, `--proxy-allow-from`): a TCP load balancer in front of the server
//! opens each connection with a header naming the client it relays, so the app sees that client as
//! `REMOTE_ADDR`/`REMOTE_PORT` rather than the balancer.
//!
//! Both versions of haproxy's specification are read: version 1, one text line of at most 107 bytes
//! (`PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, `TCP6`, or `UNKNOWN`), and version 2, a 12-byte binary
//! signature, a version/command byte, a family/transport byte, a 16-bit length and that many bytes of
//! addresses and TLVs. The header is looked for only at the very start of a connection, before its first
//! request; `auto` tells the versions apart by their first bytes.
//!
//! As in gunicorn, a header is optional: a connection that starts with anything else is plain HTTP. A
//! header from a peer outside `--proxy-allow-from` is refused with 403 (a unix-socket peer is always
//! allowed); a malformed one with 400; either way the connection is closed. The connection's own
//! endpoints stand where the header says they do (v1 `UNKNOWN`, v2 `LOCAL`, v2 `UNSPEC` or a family
//! other than TCP over IPv4/IPv6). TLVs are skipped unread.
//!
//! The parsing is incremental and stateless — [`ProxySettings::inspect`] looks at everything received
//! so far and says whether more is needed — so a header that arrives one byte at a time is read exactly
//! like one that arrives whole. [`read_header`] drives it on a socket, within the header timeout.

use std::cell::Cell;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Network;
use crate::exchange::{Peer, ProxyEnd};

/// The 12 bytes a version 2 header starts with.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What a version 1 header starts with.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 line, CRLF included (`PROXY UNKNOWN` with two full IPv6 addresses and ports).
pub const V1_MAX_LINE: usize = 107;
/// The fixed part of a version 2 header, before its addresses.
const V2_FIXED: usize = 16;
/// How much is read from the socket at a time while the header is incomplete.
const READ_CHUNK: usize = 4096;

/// Which versions a listener takes (`--proxy-protocol`; `off` has no `ProxySettings` at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    V1,
    V2,
    Auto,
}

impl Mode {
    fn v1(self) -> bool {
        matches!(self, Mode::V1 | Mode::Auto)
    }
    fn v2(self) -> bool {
        matches!(self, Mode::V2 | Mode::Auto)
    }
}

/// The peers allowed to send a header.
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    any: bool,
    networks: Vec<Network>,
}

impl AllowList {
    /// From the entries of `--proxy-allow-from` (`*`, addresses, networks; checked when the setting
    /// was read, so an entry that does not parse here is simply skipped).
    pub fn new<S: AsRef<str>>(entries: &[S]) -> AllowList {
        AllowList {
            any: entries.iter().any(|e| e.as_ref().trim() == "*"),
            networks: entries
                .iter()
                .filter_map(|e| Network::parse(e.as_ref().trim()).ok())
                .collect(),
        }
    }

    /// Whether the peer with this address may send a header. A unix-socket peer (no address) is the
    /// local proxy itself; an IPv4 peer seen through an IPv6 socket counts as its IPv4 address.
    pub fn allows(&self, peer_ip: &str) -> bool {
        if self.any || peer_ip.is_empty() {
            return true;
        }
        match peer_ip.parse::<IpAddr>() {
            Ok(ip) => self.networks.iter().any(|n| n.contains(ip)),
            Err(_) => false,
        }
    }
}

/// A connection's PROXY protocol settings, when it is on.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub mode: Mode,
    pub allow: AllowList,
}

impl ProxySettings {
    /// None when `--proxy-protocol` is off.
    pub fn new(cfg: &crate::config::Config) -> Option<ProxySettings> {
        let mode = match cfg.proxy_protocol.as_str() {
            "v1" => Mode::V1,
            "v2" => Mode::V2,
            "auto" => Mode::Auto,
            _ => return None,
        };
        Some(ProxySettings {
            mode,
            allow: AllowList::new(&cfg.proxy_allow_ips),
        })
    }

    /// Look at what the connection has sent so far (`buf` starts at its first byte).
    pub fn inspect(&self, buf: &[u8], peer_ip: &str) -> Result<Step, ProxyError> {
        let version = match detect(buf, self.mode) {
            Detected::Undecided => return Ok(Step::Incomplete),
            Detected::NotProxy => return Ok(Step::NotProxy),
            Detected::V1 => 1,
            Detected::V2 => 2,
        };
        // Checked as soon as the header is recognised, before anything in it is believed.
        if !self.allow.allows(peer_ip) {
            return Err(ProxyError::Forbidden);
        }
        let header = if version == 1 {
            parse_v1(buf)?
        } else {
            parse_v2(buf)?
        };
        Ok(header.map_or(Step::Incomplete, Step::Header))
    }
}

/// What the start of a connection turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not a PROXY header (plain HTTP, or a version the mode does not take): leave the bytes alone.
    NotProxy,
    /// More bytes are needed to decide or to complete the header.
    Incomplete,
    Header(Header),
}

/// The two ends a PROXY header names for a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proxied {
    /// The client the app sees (`REMOTE_ADDR`, `REMOTE_PORT`).
    pub client: SocketAddr,
    /// Where the client connected to on the proxy (`PROXY_ADDR`, `PROXY_PORT`).
    pub proxy: SocketAddr,
}

/// A complete, valid header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The ends the header names; None where the connection's own peer stands (v1 `UNKNOWN`, v2
    /// `LOCAL`, and families other than TCP over IPv4/IPv6).
    pub ends: Option<Proxied>,
    /// Bytes the header takes at the start of the connection.
    pub len: usize,
}

/// Why a header is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// A header from a peer outside `--proxy-allow-from`.
    Forbidden,
    /// A malformed version 1 line.
    InvalidLine(&'static str),
    /// A malformed version 2 header.
    InvalidHeader(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::Forbidden => 403,
            ProxyError::InvalidLine(_) | ProxyError::InvalidHeader(_) => 400,
        }
    }

    /// The complete answer to send before closing the connection.
    pub fn response(&self) -> Vec<u8> {
        crate::http::simple_response(self.status(), &self.to_string(), true)
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Forbidden => {
                f.write_str("PROXY protocol header not allowed from this address")
            }
            ProxyError::InvalidLine(why) => write!(f, "Invalid PROXY line: {why}"),
            ProxyError::InvalidHeader(why) => write!(f, "Invalid PROXY header: {why}"),
        }
    }
}

impl std::error::Error for ProxyError {}

#[derive(Debug, PartialEq, Eq)]
enum Detected {
    Undecided,
    NotProxy,
    V1,
    V2,
}

/// Which header the connection starts with, from as few bytes as tell it.
fn detect(buf: &[u8], mode: Mode) -> Detected {
    let mut undecided = false;
    for (wanted, sig, found) in [
        (mode.v2(), &V2_SIGNATURE[..], Detected::V2),
        (mode.v1(), V1_PREFIX, Detected::V1),
    ] {
        if !wanted {
            continue;
        }
        if buf.starts_with(sig) {
            return found;
        }
        if sig.starts_with(buf) {
            undecided = true;
        }
    }
    if undecided {
        Detected::Undecided
    } else {
        Detected::NotProxy
    }
}

/// A version 1 line; `buf` starts with `PROXY `. None while its CRLF has not arrived.
fn parse_v1(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    // The CR of a line of at most 107 bytes is among its first 106.
    let window = &buf[..buf.len().min(V1_MAX_LINE - 1)];
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if window.len() == V1_MAX_LINE - 1 {
            return Err(ProxyError::InvalidLine("no CRLF within 107 bytes"));
        }
        return Ok(None);
    };
    match buf.get(end..end + 2) {
        Some(b"\r\n") => {}
        // CR as the last byte received: its LF may still come.
        None if buf[end] == b'\r' => return Ok(None),
        _ => return Err(ProxyError::InvalidLine("the line does not end with CRLF")),
    }
    let len = end + 2;
    let line = &buf[V1_PREFIX.len()..end];
    let mut fields = line.split(|&b| b == b' ');
    let proto = fields.next().unwrap_or_default();
    if proto == b"UNKNOWN" {
        // The rest of the line is to be ignored: the connection's own endpoints stand.
        return Ok(Some(Header { ends: None, len }));
    }
    let v6 = match proto {
        b"TCP4" => false,
        b"TCP6" => true,
        _ => return Err(ProxyError::InvalidLine("unsupported protocol")),
    };
    let fields: Vec<&[u8]> = fields.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::InvalidLine("wrong number of fields"));
    };
    let src = v1_address(src, v6)?;
    let dst = v1_address(dst, v6)?;
    let sport = v1_port(sport)?;
    let dport = v1_port(dport)?;
    Ok(Some(Header {
        ends: Some(Proxied {
            client: SocketAddr::new(src, sport),
            proxy: SocketAddr::new(dst, dport),
        }),
        len,
    }))
}

fn v1_address(field: &[u8], v6: bool) -> Result<IpAddr, ProxyError> {
    let bad = || ProxyError::InvalidLine("invalid address");
    let text = std::str::from_utf8(field).map_err(|_| bad())?;
    // The standard parsers refuse leading zeros in IPv4 octets, as the specification does.
    if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| bad())
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| bad())
    }
}

/// A port: 0..=65535 in decimal, without leading zeros.
fn v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    let bad = || ProxyError::InvalidLine("invalid port");
    if field.is_empty()
        || field.len() > 5
        || !field.iter().all(u8::is_ascii_digit)
        || (field.len() > 1 && field[0] == b'0')
    {
        return Err(bad());
    }
    let n = field
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).map_err(|_| bad())
}

/// A version 2 header; `buf` starts with the signature. None until all of it has arrived; the fixed
/// part is checked as soon as it is in.
fn parse_v2(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let Some(fixed) = buf.get(..V2_FIXED) else {
        return Ok(None);
    };
    let (ver_cmd, fam_proto) = (fixed[12], fixed[13]);
    let addr_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::InvalidHeader("unsupported version"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::InvalidHeader("unsupported command")),
    };
    let (family, transport) = (fam_proto >> 4, fam_proto & 0x0f);
    if !local && (family > 3 || transport > 2) {
        return Err(ProxyError::InvalidHeader(
            "unsupported address family or protocol",
        ));
    }
    let len = V2_FIXED + addr_len;
    let Some(block) = buf.get(V2_FIXED..len) else {
        return Ok(None);
    };
    if local {
        // A connection the balancer made itself (a health check): its own endpoints stand, whatever
        // family is given.
        return Ok(Some(Header { ends: None, len }));
    }
    // What follows the addresses is TLVs, which are skipped.
    let ends = match (family, transport) {
        // TCP over IPv4: source, destination, source port, destination port.
        (1, 1) => {
            let a = block.get(..12).ok_or(ProxyError::InvalidHeader(
                "address block too short for IPv4",
            ))?;
            let v4 = |at: usize| IpAddr::V4(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]));
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            Some(Proxied {
                client: SocketAddr::new(v4(0), port(8)),
                proxy: SocketAddr::new(v4(4), port(10)),
            })
        }
        // TCP over IPv6.
        (2, 1) => {
            let a = block.get(..36).ok_or(ProxyError::InvalidHeader(
                "address block too short for IPv6",
            ))?;
            let v6 = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            Some(Proxied {
                client: SocketAddr::new(v6(0), port(32)),
                proxy: SocketAddr::new(v6(16), port(34)),
            })
        }
        // UNSPEC, UDP, unix sockets: as the specification allows, the connection's own endpoints.
        _ => None,
    };
    Ok(Some(Header { ends, len }))
}

/// How [`read_header`] waits, as the connection waits for a request head.
pub struct Waits<'a> {
    /// The whole header must be in by then.
    pub deadline: Instant,
    /// Until then a connection that has not sent its header counts as about to run; past it, or as soon
    /// as the header turns out to come in pieces, `slow` is called (once).
    pub grace: Instant,
    pub slow: &'a mut dyn FnMut(),
    /// The worker is stopping: a connection that has sent nothing is closed.
    pub stopping: &'a Cell<bool>,
    pub stop_signal: &'a Notify,
}

/// What the start of a connection came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Go on with HTTP; the client the app sees is this one, or the connection's own peer if None.
    Accepted(Option<Proxied>),
    /// Answer with the error (if there is one: not for a timeout or a peer that went away) and close.
    Refused(Option<ProxyError>),
}

/// The client as the app sees it (`REMOTE_ADDR`, `REMOTE_PORT`).
pub fn peer(ends: Proxied) -> Peer {
    Peer {
        ip: ends.client.ip().to_string(),
        port: ends.client.port(),
        proxy: Some(ProxyEnd {
            protocol: if ends.client.is_ipv4() {
                "TCP4"
            } else {
                "TCP6"
            },
            ip: ends.proxy.ip().to_string(),
            port: ends.proxy.port(),
        }),
        local_pid: None,
        same_host: false,
    }
}

/// Read and take off `buf` the header a connection starts with, if any; bytes after it stay in `buf`.
/// Reads only while the header is undecided or incomplete, so at most the longest header plus one read.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    settings: &ProxySettings,
    peer_ip: &str,
    waits: Waits<'_>,
) -> Outcome {
    let mut slow = false;
    loop {
        if !buf.is_empty() {
            match settings.inspect(buf, peer_ip) {
                Ok(Step::NotProxy) => return Outcome::Accepted(None),
                Ok(Step::Header(h)) => {
                    buf.drain(..h.len);
                    return Outcome::Accepted(h.ends);
                }
                Ok(Step::Incomplete) => {
                    if !slow {
                        slow = true;
                        (waits.slow)();
                    }
                }
                Err(e) => return Outcome::Refused(Some(e)),
            }
        } else if waits.stopping.get() {
            return Outcome::Refused(None);
        }
        let wake = if slow {
            waits.deadline
        } else {
            waits.grace.min(waits.deadline)
        };
        buf.reserve(READ_CHUNK);
        tokio::select! {
            r = stream.read_buf(buf) => match r {
                Ok(0) | Err(_) => return Outcome::Refused(None),
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(wake) => {
                if wake >= waits.deadline {
                    return Outcome::Refused(None);
                }
                slow = true;
                (waits.slow)();
            }
            _ = waits.stop_signal.notified(), if buf.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn settings(mode: Mode, allow: &[&str]) -> ProxySettings {
        ProxySettings {
            mode,
            allow: AllowList::new(allow),
        }
    }

    fn auto() -> ProxySettings {
        settings(Mode::Auto, &["127.0.0.1", "::1"])
    }

    const LOCAL_PEER: &str = "127.0.0.1";
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    fn v2(ver_cmd: u8, fam: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    fn v2_ipv4(tlvs: &[u8]) -> Vec<u8> {
        let mut a = vec![192, 168, 1, 10, 192, 168, 1, 1];
        a.extend_from_slice(&12345u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a.extend_from_slice(tlvs);
        v2(0x21, 0x11, &a)
    }

    fn v2_ipv6() -> Vec<u8> {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut a = src.octets().to_vec();
        a.extend_from_slice(&dst.octets());
        a.extend_from_slice(&54321u16.to_be_bytes());
        a.extend_from_slice(&80u16.to_be_bytes());
        v2(0x21, 0x21, &a)
    }

    /// Feed `header` followed by `rest` one byte more at a time: every prefix shorter than the header is
    /// Incomplete (or already an error), and from the header's end on the same answer comes back.
    fn feed(s: &ProxySettings, header: &[u8], rest: &[u8]) -> Result<Step, ProxyError> {
        let mut all = header.to_vec();
        all.extend_from_slice(rest);
        for n in 1..header.len() {
            match s.inspect(&all[..n], LOCAL_PEER) {
                Ok(Step::Incomplete) => {}
                Err(e) => return Err(e),
                other => panic!("prefix of {n} bytes: {other:?}"),
            }
        }
        let whole = s.inspect(&all[..header.len()], LOCAL_PEER);
        for n in header.len()..=all.len() {
            assert_eq!(s.inspect(&all[..n], LOCAL_PEER), whole, "at {n} bytes");
        }
        whole
    }

    fn ends(client: (&str, u16), proxy: (&str, u16)) -> Option<Proxied> {
        Some(Proxied {
            client: SocketAddr::new(client.0.parse().unwrap(), client.1),
            proxy: SocketAddr::new(proxy.0.parse().unwrap(), proxy.1),
        })
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        assert_eq!(
            feed(&auto(), line, REQUEST),
            Ok(Step::Header(Header {
                ends: ends(("192.168.0.1", 56324), ("192.168.0.11", 443)),
                len: line.len()
            }))
        );
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        assert_eq!(
            feed(&settings(Mode::V1, &["127.0.0.1"]), line, REQUEST),
            Ok(Step::Header(Header {
                ends: ends(("2001:db8::1", 1), ("2001:db8::2", 65535)),
                len: line.len()
            }))
        );
        // The longest IPv6 line.
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(line.len(), 104);
        assert!(matches!(
            feed(&auto(), line.as_bytes(), b""),
            Ok(Step::Header(_))
        ));
    }

    #[test]
    fn v1_unknown_keeps_the_connection_peer() {
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN whatever may follow\r\n",
        ] {
            assert_eq!(
                feed(&auto(), line, REQUEST),
                Ok(Step::Header(Header {
                    ends: None,
                    len: line.len()
                }))
            );
        }
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(line.len(), V1_MAX_LINE);
        assert!(matches!(
            feed(&auto(), line.as_bytes(), b""),
            Ok(Step::Header(_))
        ));
    }

    #[test]
    fn v1_malformed() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 192.168.0.1 192.16...\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65iii 100000\r\n",
            b"PROXY TCP4 not-an-ip 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 65536\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +5 443\r\n",
            b"PROXY TCP4 192.168.0.01 192.168.0.11 1 443\r\n",
            b"PROXY TCP4 2001:db8::1 192.168.0.11 1 443\r\n",
            b"PROXY TCP6 192.168.0.1 2001:db8::2 1 443\r\n",
            b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 443\r\n",
            b"PROXY TCP4  192.168.0.1 192.168.0.11 1 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 1 443 \r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 1\r\n",
            b"PROXY UDP4 192.168.0.1 192.168.0.11 1 443\r\n",
            b"PROXY tcp4 192.168.0.1 192.168.0.11 1 443\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
            // bare LF, bare CR
            b"PROXY TCP4 192.168.0.1 192.168.0.11 1 443\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 1 443\rX",
        ];
        for line in bad {
            let got = feed(&auto(), line, REQUEST);
            assert!(
                matches!(got, Err(ProxyError::InvalidLine(_))),
                "{:?}: {got:?}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(got.unwrap_err().status(), 400);
        }
    }

    #[test]
    fn v1_line_is_bounded() {
        let s = auto();
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LINE - 2, b'x');
        // 105 bytes without CRLF: a CRLF next still makes a 107-byte line.
        assert_eq!(s.inspect(&line, LOCAL_PEER), Ok(Step::Incomplete));
        let mut longest = line.clone();
        longest.extend_from_slice(b"\r\n");
        assert!(matches!(
            s.inspect(&longest, LOCAL_PEER),
            Ok(Step::Header(_))
        ));
        // One byte more and the line can no longer end in time.
        line.push(b'x');
        assert!(matches!(
            s.inspect(&line, LOCAL_PEER),
            Err(ProxyError::InvalidLine(_))
        ));
        line.extend_from_slice(b"\r\n");
        assert!(matches!(
            s.inspect(&line, LOCAL_PEER),
            Err(ProxyError::InvalidLine(_))
        ));
    }

    #[test]
    fn v2_proxy_ipv4_ipv6_and_tlvs() {
        let h = v2_ipv4(&[]);
        assert_eq!(
            feed(&auto(), &h, REQUEST),
            Ok(Step::Header(Header {
                ends: ends(("192.168.1.10", 12345), ("192.168.1.1", 443)),
                len: 28
            }))
        );
        // TLVs (here ALPN and a NOOP) are part of the header and skipped.
        let h = v2_ipv4(&[0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00]);
        assert_eq!(
            feed(&settings(Mode::V2, &["127.0.0.1"]), &h, REQUEST),
            Ok(Step::Header(Header {
                ends: ends(("192.168.1.10", 12345), ("192.168.1.1", 443)),
                len: 36
            }))
        );
        let h = v2_ipv6();
        assert_eq!(
            feed(&auto(), &h, REQUEST),
            Ok(Step::Header(Header {
                ends: ends(("2001:db8::1", 54321), ("2001:db8::2", 80)),
                len: 52
            }))
        );
    }

    #[test]
    fn v2_local_and_unspec_keep_the_connection_peer() {
        for h in [
            v2(0x20, 0x00, &[]),
            // LOCAL with addresses (which are skipped), and with a family it does not need.
            v2(0x20, 0x11, &[1; 12]),
            v2(0x20, 0xff, &[1; 5]),
            // PROXY for UNSPEC, UDP and unix sockets: the specification's fallback.
            v2(0x21, 0x00, &[]),
            v2(0x21, 0x12, &[1; 12]),
            v2(0x21, 0x22, &[1; 36]),
            v2(0x21, 0x31, &[0; 216]),
        ] {
            let len = h.len();
            assert_eq!(
                feed(&auto(), &h, REQUEST),
                Ok(Step::Header(Header { ends: None, len })),
                "{:x?}",
                &h[12..16]
            );
        }
    }

    #[test]
    fn v2_malformed() {
        for (h, why) in [
            (v2(0x11, 0x11, &[1; 12]), "unsupported version"),
            (v2(0x31, 0x11, &[1; 12]), "unsupported version"),
            (v2(0x22, 0x11, &[1; 12]), "unsupported command"),
            (v2(0x2f, 0x11, &[1; 12]), "unsupported command"),
            (
                v2(0x21, 0x41, &[1; 12]),
                "unsupported address family or protocol",
            ),
            (
                v2(0x21, 0x13, &[1; 12]),
                "unsupported address family or protocol",
            ),
            (v2(0x21, 0x11, &[1; 11]), "address block too short for IPv4"),
            (v2(0x21, 0x21, &[1; 35]), "address block too short for IPv6"),
        ] {
            let got = feed(&auto(), &h, REQUEST);
            assert_eq!(
                got,
                Err(ProxyError::InvalidHeader(why)),
                "{:x?}",
                &h[12..16]
            );
        }
        // A bad fixed part is refused without waiting for the announced length.
        let h = v2(0x31, 0x11, &[1; 200]);
        assert!(settings(Mode::Auto, &["*"])
            .inspect(&h[..16], LOCAL_PEER)
            .is_err());
    }

    #[test]
    fn v2_longest_header() {
        let h = v2(0x21, 0x11, &vec![7u8; usize::from(u16::MAX)]);
        let s = auto();
        assert_eq!(
            s.inspect(&h[..h.len() - 1], LOCAL_PEER),
            Ok(Step::Incomplete)
        );
        assert_eq!(
            s.inspect(&h, LOCAL_PEER),
            Ok(Step::Header(Header {
                ends: ends(("7.7.7.7", 0x0707), ("7.7.7.7", 0x0707)),
                len: 16 + 65535
            }))
        );
    }

    #[test]
    fn not_proxy() {
        let s = auto();
        assert_eq!(s.inspect(b"G", LOCAL_PEER), Ok(Step::NotProxy));
        assert_eq!(s.inspect(REQUEST, LOCAL_PEER), Ok(Step::NotProxy));
        // Decided as soon as a byte leaves both signatures.
        assert_eq!(s.inspect(b"PROX", LOCAL_PEER), Ok(Step::Incomplete));
        assert_eq!(s.inspect(b"PROXI", LOCAL_PEER), Ok(Step::NotProxy));
        assert_eq!(s.inspect(b"PROXY\r\n", LOCAL_PEER), Ok(Step::NotProxy));
        assert_eq!(s.inspect(b"\r\n\r\n", LOCAL_PEER), Ok(Step::Incomplete));
        assert_eq!(s.inspect(b"\r\n\r\nGET", LOCAL_PEER), Ok(Step::NotProxy));
        // Each single version leaves the other's header to the HTTP parser.
        let v1 = settings(Mode::V1, &["127.0.0.1"]);
        let v2only = settings(Mode::V2, &["127.0.0.1"]);
        assert_eq!(v1.inspect(&v2_ipv4(&[]), LOCAL_PEER), Ok(Step::NotProxy));
        assert_eq!(v1.inspect(b"\r", LOCAL_PEER), Ok(Step::NotProxy));
        assert_eq!(
            v2only.inspect(b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n", LOCAL_PEER),
            Ok(Step::NotProxy)
        );
    }

    #[test]
    fn untrusted_peer_is_forbidden_on_detection() {
        let s = settings(Mode::Auto, &["10.0.0.0/8"]);
        assert_eq!(
            s.inspect(b"PROXY ", "192.168.0.1"),
            Err(ProxyError::Forbidden)
        );
        assert_eq!(
            s.inspect(V2_SIGNATURE, "192.168.0.1"),
            Err(ProxyError::Forbidden)
        );
        assert_eq!(ProxyError::Forbidden.status(), 403);
        // Not yet a header, or not one at all: nothing to forbid.
        assert_eq!(s.inspect(b"PROXY", "192.168.0.1"), Ok(Step::Incomplete));
        assert_eq!(s.inspect(REQUEST, "192.168.0.1"), Ok(Step::NotProxy));
        // Allowed: inside the network, a unix-socket peer, an IPv4 peer through an IPv6 socket.
        for peer in ["10.1.2.3", "", "::ffff:10.1.2.3"] {
            assert_eq!(s.inspect(b"PROXY ", peer), Ok(Step::Incomplete), "{peer}");
        }
        let any = settings(Mode::Auto, &["*"]);
        assert_eq!(any.inspect(b"PROXY ", "203.0.113.9"), Ok(Step::Incomplete));
    }

    #[test]
    fn error_responses() {
        let r = String::from_utf8(ProxyError::InvalidLine("invalid port").response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nInvalid PROXY line: invalid port"));
        let r = String::from_utf8(ProxyError::Forbidden.response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{r}");
    }

    // ---- the reader on a socket ----

    struct Run {
        outcome: Outcome,
        rest: Vec<u8>,
        slow_calls: usize,
    }

    /// Run `read_header` over an in-memory stream fed with `pieces` (a pause between them), then
    /// closed or left open.
    async fn run(s: &ProxySettings, pieces: Vec<Vec<u8>>, close: bool, timeout: Duration) -> Run {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let writer = tokio::task::spawn_local(async move {
            for p in pieces {
                client.write_all(&p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if !close {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
        let mut buf = Vec::new();
        let mut slow_calls = 0;
        let stopping = Cell::new(false);
        let stop = Notify::new();
        let now = Instant::now();
        let outcome = read_header(
            &mut server,
            &mut buf,
            s,
            LOCAL_PEER,
            Waits {
                deadline: now + timeout,
                grace: now + Duration::from_millis(50),
                slow: &mut || slow_calls += 1,
                stopping: &stopping,
                stop_signal: &stop,
            },
        )
        .await;
        writer.abort();
        Run {
            outcome,
            rest: buf,
            slow_calls,
        }
    }

    fn local<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    #[test]
    fn reader_byte_by_byte_leaves_the_request() {
        local(async {
            let mut data = b"PROXY TCP6 2001:db8::7 2001:db8::2 4242 443\r\n".to_vec();
            data.extend_from_slice(REQUEST);
            let pieces = data.iter().map(|&b| vec![b]).collect();
            let r = run(&auto(), pieces, false, Duration::from_secs(10)).await;
            let want = ends(("2001:db8::7", 4242), ("2001:db8::2", 443));
            assert_eq!(r.outcome, Outcome::Accepted(want));
            let Outcome::Accepted(Some(addr)) = r.outcome else {
                unreachable!()
            };
            let p = peer(addr);
            assert_eq!((p.ip.as_str(), p.port), ("2001:db8::7", 4242));
            let proxy = p.proxy.expect("a proxied peer");
            assert_eq!(
                (proxy.protocol, proxy.ip.as_str(), proxy.port),
                ("TCP6", "2001:db8::2", 443)
            );
            // The reader stops at the header's end: what follows is at most what came with it.
            assert!(REQUEST.starts_with(&r.rest));
            assert_eq!(r.slow_calls, 1);

            let mut data = v2_ipv4(&[0xe0, 0x00, 0x01, 0x00]);
            data.extend_from_slice(REQUEST);
            let r = run(&auto(), vec![data], false, Duration::from_secs(10)).await;
            assert_eq!(
                r.outcome,
                Outcome::Accepted(ends(("192.168.1.10", 12345), ("192.168.1.1", 443)))
            );
            assert_eq!(r.rest, REQUEST);
            assert_eq!(r.slow_calls, 0);
        });
    }

    #[test]
    fn reader_plain_http_and_refusals() {
        local(async {
            let r = run(
                &auto(),
                vec![REQUEST.to_vec()],
                false,
                Duration::from_secs(10),
            )
            .await;
            assert_eq!(r.outcome, Outcome::Accepted(None));
            assert_eq!(r.rest, REQUEST);

            let bad = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n".to_vec();
            let r = run(&auto(), vec![bad], false, Duration::from_secs(10)).await;
            assert!(matches!(
                r.outcome,
                Outcome::Refused(Some(ProxyError::InvalidLine(_)))
            ));

            let s = settings(Mode::Auto, &["10.0.0.1"]);
            let r = run(&s, vec![v2_ipv4(&[])], false, Duration::from_secs(10)).await;
            assert_eq!(r.outcome, Outcome::Refused(Some(ProxyError::Forbidden)));

            // Cut off mid-header: closed without an answer.
            let r = run(
                &auto(),
                vec![b"PROXY TCP4 1.2".to_vec()],
                true,
                Duration::from_secs(10),
            )
            .await;
            assert_eq!(r.outcome, Outcome::Refused(None));

            // Too slow: the header deadline.
            let t0 = Instant::now();
            let r = run(
                &auto(),
                vec![b"PROXY TCP4 1.2".to_vec()],
                false,
                Duration::from_millis(200),
            )
            .await;
            assert_eq!(r.outcome, Outcome::Refused(None));
            assert!(t0.elapsed() < Duration::from_secs(2));

            // Nothing at all: past the grace the connection stops counting as about to run.
            let r = run(&auto(), vec![], false, Duration::from_millis(200)).await;
            assert_eq!(r.outcome, Outcome::Refused(None));
            assert_eq!(r.slow_calls, 1);
        });
    }

    #[test]
    fn reader_closes_an_idle_connection_when_stopping() {
        local(async {
            let (_client, mut server) = tokio::io::duplex(1024);
            let stopping = Cell::new(false);
            let stop = Notify::new();
            let mut buf = Vec::new();
            let now = Instant::now();
            let s = auto();
            let mut on_slow = || {};
            let reader = read_header(
                &mut server,
                &mut buf,
                &s,
                LOCAL_PEER,
                Waits {
                    deadline: now + Duration::from_secs(60),
                    grace: now + Duration::from_secs(60),
                    slow: &mut on_slow,
                    stopping: &stopping,
                    stop_signal: &stop,
                },
            );
            let stopper = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                stopping.set(true);
                stop.notify_waiters();
                std::future::pending::<()>().await
            };
            let outcome = tokio::time::timeout(Duration::from_secs(5), async {
                tokio::select! {
                    o = reader => o,
                    _ = stopper => unreachable!(),
                }
            })
            .await
            .expect("the reader ends when the worker stops");
            assert_eq!(outcome, Outcome::Refused(None));
        });
    }
}
