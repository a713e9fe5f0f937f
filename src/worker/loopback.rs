//! Finding loopback calls: connections this process opened to one of the server's own listening ports
//! (the app calling its own server over HTTP). While such a call waits for a free worker and every worker
//! is busy, nothing can serve it — the deadlock of the field report. Workers publish the client ports of
//! these connections in the scoreboard, so whichever worker accepts the nested request can recognise it
//! by its peer port and serve it on extra capacity.
//!
//! The kernel is the only place that knows which process owns the client end of a connection, so this
//! reads `/proc/self/fd` (our socket inodes) and asks the kernel who is connected to the listening ports
//! (netlink sock_diag, filtered on the port in the kernel; `/proc/net/tcp{,6}` where netlink cannot be
//! used), through `system::tcp_table`. It runs only while a worker is saturated and its listener has
//! connections waiting, at most every `SCAN_INTERVAL`, on a blocking thread beside the I/O loop
//! (`admission::watch`): with ~100 000 sockets on the host a scan took 0.6–1.1 s through `/proc` and
//! 85–115 ms through netlink on a busy 2-core machine (`bench/loopback_scan.py`).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::system::tcp_table::{self, TcpEntry, ESTABLISHED, SYN_SENT};

pub const SCAN_INTERVAL: Duration = Duration::from_millis(50);

/// A TCP port the server listens on, with its address (unspecified for `0.0.0.0` / `::`).
#[derive(Clone, Copy, Debug)]
pub struct ListenPort {
    pub ip: IpAddr,
    pub port: u16,
}

/// Client ports of this process's connections to one of `ports` on this host.
pub fn own_calls_to(ports: &[ListenPort]) -> Vec<u16> {
    if ports.is_empty() {
        return Vec::new();
    }
    let inodes = tcp_table::socket_inodes(Path::new("/proc/self/fd")).unwrap_or_default();
    let mut out: Vec<u16> = candidates(ports)
        .iter()
        .filter(|e| inodes.contains(&e.inode) && is_call_to(e, ports))
        .map(|e| e.local.1)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The connections that may be calls to `ports`: those the kernel tells for their port, or the whole
/// `/proc` table.
fn candidates(ports: &[ListenPort]) -> Vec<TcpEntry> {
    let mut numbers: Vec<u16> = ports.iter().map(|p| p.port).collect();
    numbers.sort_unstable();
    numbers.dedup();
    tcp_table::connections_to(&numbers, 1 << ESTABLISHED | 1 << SYN_SENT)
        .unwrap_or_else(|_| tcp_table::table(Path::new("/proc/self")))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

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

    /// How long one scan takes, by the kernel's filter and by the `/proc` table (run by hand on a host
    /// with many sockets: `bench/loopback_scan.py`).
    #[test]
    #[ignore]
    fn scan_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let ports = [ListenPort {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        }];
        let time = |f: &dyn Fn() -> usize| {
            let t0 = std::time::Instant::now();
            let mut n = 0;
            for _ in 0..20 {
                n = f();
            }
            (t0.elapsed() / 20, n)
        };
        let inodes = || tcp_table::socket_inodes(Path::new("/proc/self/fd")).unwrap_or_default();
        let netlink = time(&|| {
            let own = inodes();
            let found = tcp_table::connections_to(&[port], 1 << ESTABLISHED | 1 << SYN_SENT);
            let found = found.expect("sock_diag");
            found
                .iter()
                .filter(|e| own.contains(&e.inode) && is_call_to(e, &ports))
                .count()
        });
        let proc = time(&|| {
            let own = inodes();
            tcp_table::table(Path::new("/proc/self"))
                .iter()
                .filter(|e| own.contains(&e.inode) && is_call_to(e, &ports))
                .count()
        });
        let rows = tcp_table::table(Path::new("/proc/self")).len();
        println!(
            "{rows} sockets: netlink {:?} ({} found), /proc {:?} ({} found)",
            netlink.0, netlink.1, proc.0, proc.1
        );
        assert_eq!(netlink.1, 1);
        assert_eq!(proc.1, 1);
    }
}
