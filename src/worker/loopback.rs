//! Finding loopback calls: connections this process opened to one of the server's own listening ports
//! (the app calling its own server over HTTP). While such a call waits for a free worker and every worker
//! is busy, nothing can serve it — the deadlock of the field report. Workers publish the client ports of
//! these connections in the scoreboard, so whichever worker accepts the nested request can recognise it
//! by its peer port and serve it on extra capacity.
//!
//! The kernel is the only place that knows which process owns the client end of a connection, so this
//! reads `/proc/self/fd` (our socket inodes) and `/proc/net/tcp{,6}` (who is connected to whom). It runs
//! only while a worker is saturated and its listener has connections waiting, at most every
//! `SCAN_INTERVAL`.

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

pub const SCAN_INTERVAL: Duration = Duration::from_millis(50);

/// A TCP port the server listens on, with its address (unspecified for `0.0.0.0` / `::`).
#[derive(Clone, Copy, Debug)]
pub struct ListenPort {
    pub ip: IpAddr,
    pub port: u16,
}

/// Inodes of every socket this process has open.
fn own_socket_inodes() -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return out;
    };
    for entry in dir.flatten() {
        if let Ok(target) = fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
            {
                out.insert(inode);
            }
        }
    }
    out
}

/// Client ports of this process's connections to one of `ports` on this host.
pub fn own_calls_to(ports: &[ListenPort]) -> Vec<u16> {
    if ports.is_empty() {
        return Vec::new();
    }
    let inodes = own_socket_inodes();
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(table) = fs::read_to_string(file) else {
            continue;
        };
        for line in table.lines().skip(1) {
            if let Some(entry) = parse_line(line, v6) {
                if inodes.contains(&entry.inode) && is_call_to(&entry, ports) {
                    out.push(entry.local.1);
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

struct TcpEntry {
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    state: u8,
    inode: u64,
}

const ESTABLISHED: u8 = 0x01;
const SYN_SENT: u8 = 0x02;

fn is_call_to(e: &TcpEntry, ports: &[ListenPort]) -> bool {
    if e.state != ESTABLISHED && e.state != SYN_SENT {
        return false;
    }
    let (rip, rport) = e.remote;
    ports.iter().any(|p| {
        p.port == rport
            && (rip == p.ip || rip.is_loopback() || rip == e.local.0 || {
                // An IPv4 peer seen through an IPv6 socket.
                matches!(rip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
            })
    })
}

/// One line of /proc/net/tcp{,6}: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.
fn parse_line(line: &str, v6: bool) -> Option<TcpEntry> {
    let mut f = line.split_whitespace();
    let _sl = f.next()?;
    let local = parse_addr(f.next()?, v6)?;
    let remote = parse_addr(f.next()?, v6)?;
    let state = u8::from_str_radix(f.next()?, 16).ok()?;
    let inode = f.nth(5)?.parse().ok()?;
    Some(TcpEntry {
        local,
        remote,
        state,
        inode,
    })
}

/// `0100007F:1F90` (IPv4, little-endian words) or 32 hex digits for IPv6.
fn parse_addr(s: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (ip_hex, port_hex) = s.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let ip = if v6 {
        if ip_hex.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for word in 0..4 {
            let w = u32::from_str_radix(&ip_hex[word * 8..word * 8 + 8], 16).ok()?;
            bytes[word * 4..word * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        let w = u32::from_str_radix(ip_hex, 16).ok()?;
        IpAddr::V4(Ipv4Addr::from(w.to_le_bytes()))
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_parse() {
        let line = "   3: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 20 4 30 10 -1";
        let e = parse_line(line, false).expect("parsed");
        assert_eq!(e.local, (IpAddr::V4(Ipv4Addr::LOCALHOST), 8080));
        assert_eq!(e.remote, (IpAddr::V4(Ipv4Addr::LOCALHOST), 50000));
        assert_eq!(e.state, ESTABLISHED);
        assert_eq!(e.inode, 123456);
        let v6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 99 1";
        let e = parse_line(v6, true).expect("parsed v6");
        assert_eq!(e.local.0, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn finds_its_own_connection_to_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let client_port = client.local_addr().expect("addr").port();
        let ports = [ListenPort {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        }];
        let found = own_calls_to(&ports);
        assert!(
            found.contains(&client_port),
            "{found:?} lacks {client_port}"
        );
        use std::os::fd::AsRawFd;
        assert_eq!(crate::sock::accept_queue_len(listener.as_raw_fd()), 1);
    }
}
