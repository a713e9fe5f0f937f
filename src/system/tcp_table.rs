//! The kernel's table of TCP sockets (`/proc/net/tcp`, `/proc/net/tcp6`) and which of them a process
//! holds (`/proc/PID/fd`). The kernel is the only place that knows which process owns which end of a
//! connection, and two parts of ferricorn need that: a worker finding its own loopback calls
//! (`worker::loopback`, reading `/proc/self`), and `ferricornctl doctor` tying a worker's database
//! connections to the PostgreSQL backends that serve them (reading `/proc/<worker pid>`).
//!
//! `/proc/PID/net/tcp` is the table of the process's network namespace, so a worker in a container is
//! read in its own namespace. On a host with tens of thousands of sockets that text takes the kernel
//! milliseconds to write and us to parse, so a worker asks the kernel through netlink's sock_diag
//! (`connections_to`) for only the connections to given ports, filtered in the kernel; the `/proc`
//! table is the fallback where netlink is not available. Reading another process's `fd` directory needs the rights to inspect it
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

/// The TCP connections in this process's network namespace whose remote port is one of `ports` and whose
/// state is in `states` (a bit mask of `1 << state`), of both families, asked of the kernel through
/// netlink sock_diag (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY` dumps with a bytecode filter on the
/// destination port, so the kernel sends only the matching sockets). An error means netlink cannot be
/// used here (a kernel without sock_diag, a sandbox): the caller reads [`table`] instead.
pub fn connections_to(ports: &[u16], states: u32) -> io::Result<Vec<TcpEntry>> {
    let sock = diag::Socket::open()?;
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for &port in ports {
            sock.dump(family, port, states, &mut out)?;
        }
    }
    Ok(out)
}

/// Netlink sock_diag: the request and the parsing of the kernel's answer (linux/inet_diag.h layouts).
mod diag {
    use super::TcpEntry;
    use std::io;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const INET_DIAG_REQ_BYTECODE: u16 = 1;
    /// Bytecode comparisons of the destination port (`>=`, `<=`; `INET_DIAG_BC_D_EQ` is newer, 4.16).
    const INET_DIAG_BC_D_GE: u8 = 4;
    const INET_DIAG_BC_D_LE: u8 = 5;
    const NLMSG_HDR: usize = 16;
    /// `struct inet_diag_msg`: family, state, timer, retrans, the socket id (ports, addresses, interface,
    /// cookie), expires, queues, uid, inode.
    const DIAG_MSG: usize = 72;

    pub struct Socket(OwnedFd);

    impl Socket {
        pub fn open() -> io::Result<Socket> {
            // SAFETY: socket(2) with constant arguments; the result is checked before it is owned.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                    libc::NETLINK_SOCK_DIAG,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
            let sock = Socket(unsafe { OwnedFd::from_raw_fd(fd) });
            // The kernel answers at once; a bound on the wait so that a scan can never hang the loop.
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            // SAFETY: `tv` is a valid timeval for SO_RCVTIMEO and lives across the call.
            let rc = unsafe {
                libc::setsockopt(
                    sock.0.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(sock)
        }

        /// Dump `family`'s TCP sockets in `states` whose remote port is `port` into `out`.
        pub fn dump(
            &self,
            family: u8,
            port: u16,
            states: u32,
            out: &mut Vec<TcpEntry>,
        ) -> io::Result<()> {
            let req = request(family, port, states);
            // SAFETY: `req` is a valid buffer of its length; netlink's kernel address is the default
            // destination of an unconnected netlink socket.
            let sent = unsafe { libc::send(self.0.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // SAFETY: `buf` is a writable buffer of its length.
                let n = unsafe {
                    libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                if parse(&buf[..n as usize], out)? {
                    return Ok(());
                }
            }
        }
    }

    /// A `SOCK_DIAG_BY_FAMILY` dump request for TCP in `family`, with bytecode keeping only the sockets
    /// whose destination port is `port`.
    fn request(family: u8, port: u16, states: u32) -> Vec<u8> {
        // `dport >= port && dport <= port`: each comparison is an op (code, jump if true, jump if false)
        // followed by one carrying the port; true goes on to the next op (the last to the end: accept),
        // false jumps 4 bytes past the end (reject).
        let mut bytecode = Vec::with_capacity(16);
        for (code, reject) in [(INET_DIAG_BC_D_GE, 20u16), (INET_DIAG_BC_D_LE, 12)] {
            bytecode.extend_from_slice(&[code, 8]);
            bytecode.extend_from_slice(&reject.to_ne_bytes());
            bytecode.extend_from_slice(&[0, 0]);
            bytecode.extend_from_slice(&port.to_ne_bytes());
        }
        let attr_len = 4 + bytecode.len();
        let len = NLMSG_HDR + 56 + attr_len;
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
                                                  // struct inet_diag_req_v2: family, protocol, extensions, pad, states, socket id (ignored in a dump).
        m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
        m.extend_from_slice(&states.to_ne_bytes());
        m.extend_from_slice(&[0u8; 48]);
        m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        m.extend_from_slice(&bytecode);
        m
    }

    /// The messages of one datagram of the answer into `out`; `true` once the dump is done.
    fn parse(mut buf: &[u8], out: &mut Vec<TcpEntry>) -> io::Result<bool> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag message");
        while buf.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes(buf[0..4].try_into().map_err(|_| bad())?) as usize;
            let kind = u16::from_ne_bytes(buf[4..6].try_into().map_err(|_| bad())?);
            if len < NLMSG_HDR || len > buf.len() {
                return Err(bad());
            }
            let body = &buf[NLMSG_HDR..len];
            match kind as i32 {
                libc::NLMSG_DONE => return Ok(true),
                libc::NLMSG_ERROR => {
                    let errno = body
                        .get(0..4)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, i32::from_ne_bytes);
                    return Err(io::Error::from_raw_os_error(errno.saturating_neg()));
                }
                _ if kind == SOCK_DIAG_BY_FAMILY => out.push(entry(body).ok_or_else(bad)?),
                _ => {}
            }
            // Messages are aligned to 4 bytes.
            buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        }
        Ok(false)
    }

    /// One `struct inet_diag_msg`.
    fn entry(m: &[u8]) -> Option<TcpEntry> {
        if m.len() < DIAG_MSG {
            return None;
        }
        let be16 = |at: usize| u16::from_be_bytes([m[at], m[at + 1]]);
        let addr = |at: usize| -> Option<IpAddr> {
            Some(if i32::from(m[0]) == libc::AF_INET {
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&m[at..at + 4]).ok()?))
            } else {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&m[at..at + 16]).ok()?))
            })
        };
        Some(TcpEntry {
            local: (addr(8)?, be16(4)),
            remote: (addr(24)?, be16(6)),
            state: m[1],
            inode: u64::from(u32::from_ne_bytes(m[68..72].try_into().ok()?)),
        })
    }
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

    #[test]
    fn netlink_tells_the_connections_to_a_port_and_only_those() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _elsewhere = std::net::TcpStream::connect(other.local_addr().expect("addr"));
        let client_port = client.local_addr().expect("addr").port();
        let states = 1 << ESTABLISHED | 1 << SYN_SENT;
        let Ok(found) = connections_to(&[port], states) else {
            return; // no sock_diag here: the /proc table is used instead
        };
        assert!(found.iter().all(|e| e.remote.1 == port), "{found:?}");
        let inodes = socket_inodes(Path::new("/proc/self/fd")).expect("own fds");
        let mine: Vec<_> = found.iter().filter(|e| inodes.contains(&e.inode)).collect();
        assert_eq!(mine.len(), 1, "{found:?}");
        assert_eq!(
            mine[0].local,
            (IpAddr::V4(Ipv4Addr::LOCALHOST), client_port)
        );
        assert_eq!(mine[0].state, ESTABLISHED);
        // The same entry as the /proc table's.
        assert!(table(Path::new("/proc/self")).contains(mine[0]));
    }
}
