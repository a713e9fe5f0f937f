//! Accepting connections: one loop per listening socket that takes a connection only while the worker has
//! capacity for it (`admission`), names its peer (`Peer`: address, or for a unix socket the client's
//! process) and spawns its connection task (`h1`) — on a TLS server after its handshake (`tls::serve`),
//! which holds the unit a plain connection would (`Admission::reserve`) only while its client keeps up.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::h2;
use super::tls;
use super::IoState;
use crate::exchange::{Peer, ServerAddr};
use crate::sock::ListenAddr;

pub(super) fn server_addr(addr: &ListenAddr) -> ServerAddr {
    match addr {
        ListenAddr::Tcp(a) => ServerAddr {
            name: a.ip().to_string(),
            port: a.port().to_string(),
        },
        ListenAddr::Unix(p) => ServerAddr {
            name: p.display().to_string(),
            port: String::new(),
        },
    }
}

/// Wait until the worker may take one more connection; false once it is stopping.
async fn wait_for_capacity(io: &IoState) -> bool {
    loop {
        if io.shutting_down.get() {
            return false;
        }
        // Handshakes in progress count against `--worker-connections` (and hold a unit of capacity only
        // while their client keeps up, `tls::serve`).
        if io.admission.can_accept() && io.open_connections() < io.ctx.cfg.worker_connections.max(1)
        {
            return true;
        }
        tokio::select! {
            _ = io.admission.changed.notified() => {}
            _ = io.shutdown_signal.notified() => {}
        }
    }
}

macro_rules! accept_loop {
    ($name:ident, $listener:ty, $peer:expr) => {
        pub(super) async fn $name(listener: $listener, server: Arc<ServerAddr>, io: Rc<IoState>) {
            loop {
                if !wait_for_capacity(&io).await {
                    return;
                }
                // Stop waiting in accept() as soon as capacity is gone (a kept-alive connection started a
                // request), so a connection is never taken while the worker cannot run it.
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = io.admission.changed.notified() => continue,
                    _ = io.shutdown_signal.notified() => return,
                };
                match accepted {
                    Ok((stream, addr)) => {
                        let peer = Arc::new($peer(&stream, &addr));
                        if io.tls.is_some() {
                            // The handshake holds a unit while it runs (when one is free), as a plain
                            // connection's first request does: the next connections of a burst are
                            // left to the other workers meanwhile.
                            let held = io.admission.reserve();
                            tokio::task::spawn_local(tls::serve(
                                stream,
                                peer,
                                server.clone(),
                                io.clone(),
                                held,
                            ));
                            continue;
                        }
                        let claimed = io.admission.accepted(&peer);
                        // HTTP/1, or HTTP/2 when the peer opens with its preface and
                        // `--http2-cleartext` allows it (`h2::plain`).
                        tokio::task::spawn_local(h2::plain(
                            stream,
                            peer,
                            server.clone(),
                            io.clone(),
                            claimed,
                        ));
                    }
                    Err(_) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    };
}

fn tcp_peer(stream: &tokio::net::TcpStream, addr: &std::net::SocketAddr) -> Peer {
    // An IPv4 client of an IPv6 listener shows as `::ffff:a.b.c.d`: judge its IPv4 address.
    let ip = addr.ip().to_canonical();
    Peer {
        ip: addr.ip().to_string(),
        port: addr.port(),
        proxy: None,
        local_pid: None,
        // A client connecting to an address of this host from the same address is on this host; a
        // loopback client needs no system call to tell.
        same_host: ip.is_loopback()
            || stream
                .local_addr()
                .is_ok_and(|local| local.ip().to_canonical() == ip),
    }
}

/// A unix-socket client: no address, but its process is known, which tells a loopback call.
fn unix_peer(stream: &tokio::net::UnixStream, _addr: &tokio::net::unix::SocketAddr) -> Peer {
    Peer {
        ip: String::new(),
        port: 0,
        proxy: None,
        local_pid: stream.peer_cred().ok().and_then(|c| c.pid()),
        same_host: true,
    }
}

accept_loop!(accept_tcp, tokio::net::TcpListener, tcp_peer);
accept_loop!(accept_unix, tokio::net::UnixListener, unix_peer);
