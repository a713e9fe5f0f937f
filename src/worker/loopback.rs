//! Finding loopback calls: connections this process opened to one of the server's own listening ports
//! (the app calling its own server over HTTP). While such a call waits for a free worker and every worker
//! is busy, nothing can serve it — the deadlock of the field report. Workers publish the client ports of
//! these connections in the scoreboard, so whichever worker accepts the nested request can recognise it
//! by its peer port and serve it on extra capacity.
//!
//! The kernel is the only place that knows which process owns the client end of a connection, so this
//! reads `/proc/self/fd` (our socket inodes) and `/proc/net/tcp{,6}` (who is connected to whom), through
//! `system::tcp_table`. It runs only while a worker is saturated and its listener has connections
//! waiting, at most every `SCAN_INTERVAL`.

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
    let mut out: Vec<u16> = tcp_table::table(Path::new("/proc/self"))
        .iter()
        .filter(|e| inodes.contains(&e.inode) && is_call_to(e, ports))
        .map(|e| e.local.1)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
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
}
