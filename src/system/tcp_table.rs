//! The kernel's table of TCP sockets (`/proc/net/tcp`, `/proc/net/tcp6`) and which of them a process
//! holds (`/proc/PID/fd`). The kernel is the only place that knows which process owns which end of a
//! connection, and two parts of ferricorn need that: a worker finding its own loopback calls
//! (`worker::loopback`, reading `/proc/self`), and `ferricornctl doctor` tying a worker's database
//! connections to the PostgreSQL backends that serve them (reading `/proc/<worker pid>`).
//!
//! `/proc/PID/net/tcp` is the table of the process's network namespace, so a worker in a container is
//! read in its own namespace. Reading another process's `fd` directory needs the rights to inspect it
//! (the same user, or root); a process can always read its own.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// TCP states as `/proc/net/tcp` numbers them (include/net/tcp_states.h).
pub const ESTABLISHED: u8 = 0x01;
pub const SYN_SENT: u8 = 0x02;

/// One socket of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub state: u8,
    pub inode: u64,
}

/// Inodes of the sockets open in an `fd` directory (`/proc/self/fd`, `/proc/PID/fd`).
pub fn socket_inodes(fd_dir: &Path) -> io::Result<HashSet<u64>> {
    let mut out = HashSet::new();
    for entry in fs::read_dir(fd_dir)?.flatten() {
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
    Ok(out)
}

/// Every entry of `PROC/net/tcp` and `PROC/net/tcp6` (`proc` is `/proc/self` or `/proc/PID`); a file
/// that cannot be read (no IPv6) contributes nothing.
pub fn table(proc: &Path) -> Vec<TcpEntry> {
    let mut out = Vec::new();
    for (file, v6) in [("net/tcp", false), ("net/tcp6", true)] {
        let Ok(text) = fs::read_to_string(proc.join(file)) else {
            continue;
        };
        out.extend(text.lines().skip(1).filter_map(|l| parse_line(l, v6)));
    }
    out
}

/// The established TCP connections process `pid` holds, in its own network namespace.
pub fn connections_of(pid: i32) -> io::Result<Vec<TcpEntry>> {
    let proc = Path::new("/proc").join(pid.to_string());
    let inodes = socket_inodes(&proc.join("fd"))?;
    Ok(table(&proc)
        .into_iter()
        .filter(|e| e.state == ESTABLISHED && inodes.contains(&e.inode))
        .collect())
}

/// An IPv4 address seen through an IPv6 socket (`::ffff:127.0.0.1`) as the IPv4 address it is.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One line of /proc/net/tcp{,6}: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.
pub fn parse_line(line: &str, v6: bool) -> Option<TcpEntry> {
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
            let w = u32::from_str_radix(ip_hex.get(word * 8..word * 8 + 8)?, 16).ok()?;
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
        let mapped = "   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 99 1";
        let e = parse_line(mapped, true).expect("parsed mapped");
        assert_eq!(unmapped(e.local.0), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(parse_line("  sl  local_address rem_address   st", false).is_none());
        assert!(parse_line("   0: 0100007F:1F90", false).is_none());
        assert!(parse_line("   0: 00Z0:1F90 0100007F:C350 01 0 0 0 0 0 9", false).is_none());
        assert!(parse_line("   0: 0001:1F90 0001:C350 01 0 0 0 0 0 9", true).is_none());
    }

    #[test]
    fn a_process_sees_its_own_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let client_port = client.local_addr().expect("addr").port();
        let conns = connections_of(std::process::id() as i32).expect("own /proc");
        assert!(
            conns
                .iter()
                .any(|c| c.local.1 == client_port && c.remote.1 == port),
            "{conns:?} lacks {client_port} -> {port}"
        );
        assert!(connections_of(i32::MAX).is_err(), "no such process");
    }
}
