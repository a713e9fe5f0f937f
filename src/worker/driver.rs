//! Connection drivers and what a connection becomes after one: a `ConnectionDriver` serves one accepted
//! connection, on any `Transport`, until it ends — HTTP/1 (`h1::Http1`) today, HTTP/2 beside it next.
//! Keep-alive is the driver's own business (a kept-alive connection stays in its loop); what it returns is
//! how the connection left it (`ConnEnd`): closed, or handed on to another protocol after an upgrade
//! (websockets). `Upgrades` is where a handed-on connection goes: the handlers the worker holds, one per
//! protocol. The WSGI worker registers none (WSGI has no upgrade), so an upgrade it meets is closed.

use std::fmt;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::h1::client_text;
use super::transport::Transport;
use super::IoState;
use crate::exchange::{Peer, ServerAddr};
use crate::http::RequestHead;
use crate::tls::TlsInfo;

/// Serves one accepted connection until it ends.
pub trait ConnectionDriver {
    /// `claimed`: the connection holds a unit of the worker's capacity from accept (see `admission`).
    /// On `ConnEnd::Closed` the driver has closed the connection and told `admission`; on
    /// `ConnEnd::Upgrade` the connection is still open and counted, and `finish` takes it from there.
    fn serve<T: Transport>(
        &self,
        stream: T,
        peer: Arc<Peer>,
        server: Arc<ServerAddr>,
        io: Rc<IoState>,
        claimed: bool,
    ) -> impl Future<Output = ConnEnd<T>>;
}

/// How a connection left its driver.
pub enum ConnEnd<T> {
    /// Done: closed by either side, idle past keep-alive, refused, or the worker stopping.
    Closed,
    /// The client asked to switch protocols and the worker serves that protocol: the stream goes on.
    Upgrade(Upgrade<T>),
}

/// A connection handed on to another protocol. The request that asked for the switch is not answered
/// yet: the protocol's handler answers it (`101 Switching Protocols`, or a refusal), as a websocket app
/// decides whether to accept.
pub struct Upgrade<T> {
    pub stream: T,
    /// Bytes read from the stream after the request's head: the new protocol's first bytes.
    pub leftover: Vec<u8>,
    /// The protocol asked for (the request's `Upgrade` token, e.g. `websocket`).
    pub protocol: String,
    /// The request that asked for it.
    pub head: Arc<RequestHead>,
    /// The client as the app sees it (behind a PROXY header, the one it names).
    pub peer: Arc<Peer>,
    pub server: Arc<ServerAddr>,
    /// The scheme is https (TLS, or a trusted proxy says so): `wss` for a websocket.
    pub https: bool,
}

impl<T> fmt::Debug for Upgrade<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrade")
            .field("protocol", &self.protocol)
            .field("leftover", &self.leftover.len())
            .finish_non_exhaustive()
    }
}

/// The stream of an upgraded connection, whatever its transport: bytes both ways, and the socket for
/// socket options where there is one.
pub trait UpgradedIo: AsyncRead + AsyncWrite + Unpin {
    fn raw_fd(&self) -> Option<RawFd>;
    fn tls(&self) -> Option<&Arc<TlsInfo>>;
}

impl<T: Transport> UpgradedIo for T {
    fn raw_fd(&self) -> Option<RawFd> {
        Transport::raw_fd(self)
    }
    fn tls(&self) -> Option<&Arc<TlsInfo>> {
        Transport::tls(self)
    }
}

/// A handler may answer over the upgraded stream as over any connection (a refused handshake is an
/// HTTP/1 response).
impl Transport for Box<dyn UpgradedIo> {
    fn raw_fd(&self) -> Option<RawFd> {
        (**self).raw_fd()
    }
    fn tls(&self) -> Option<&Arc<TlsInfo>> {
        (**self).tls()
    }
}

/// An upgraded connection as a handler receives it.
pub type Upgraded = Upgrade<Box<dyn UpgradedIo>>;

/// Serves connections upgraded to one protocol.
pub trait UpgradeHandler {
    /// The protocol served, as the `Upgrade` header names it (compared without regard to case).
    fn protocol(&self) -> &str;
    /// Serve the connection until it ends; dropping the stream closes it.
    fn serve(&self, up: Upgraded) -> Pin<Box<dyn Future<Output = ()> + '_>>;
}

/// The upgrade handlers of a worker.
#[derive(Default)]
pub struct Upgrades {
    handlers: Vec<Box<dyn UpgradeHandler>>,
}

impl Upgrades {
    pub fn register(&mut self, handler: Box<dyn UpgradeHandler>) {
        self.handlers.push(handler);
    }

    /// Whether a connection may be handed on to `protocol`: a driver asks before it ends with `Upgrade`.
    pub fn serves(&self, protocol: &str) -> bool {
        self.handler(protocol).is_some()
    }

    fn handler(&self, protocol: &str) -> Option<&dyn UpgradeHandler> {
        self.handlers
            .iter()
            .find(|h| h.protocol().eq_ignore_ascii_case(protocol))
            .map(|h| h.as_ref())
    }

    /// Serve an upgraded connection with its protocol's handler. Err when none serves it: the stream is
    /// dropped (closed), and the protocol is returned for the log.
    pub async fn hand_over<T: Transport + 'static>(&self, up: Upgrade<T>) -> Result<(), String> {
        let Some(handler) = self.handler(&up.protocol) else {
            return Err(up.protocol);
        };
        let Upgrade {
            stream,
            leftover,
            protocol,
            head,
            peer,
            server,
            https,
        } = up;
        handler
            .serve(Upgrade {
                stream: Box::new(stream),
                leftover,
                protocol,
                head,
                peer,
                server,
                https,
            })
            .await;
        Ok(())
    }
}

/// An accepted connection's whole life: its driver, then what follows an upgrade.
pub async fn run<D: ConnectionDriver, T: Transport + 'static>(
    driver: D,
    stream: T,
    peer: Arc<Peer>,
    server: Arc<ServerAddr>,
    io: Rc<IoState>,
    claimed: bool,
) {
    if let ConnEnd::Upgrade(up) = driver
        .serve(stream, peer, server, io.clone(), claimed)
        .await
    {
        finish(up, &io).await;
    }
}

/// The rest of an upgraded connection: its handler serves it, or, with none, it is closed.
async fn finish<T: Transport + 'static>(up: Upgrade<T>, io: &IoState) {
    let client = client_text(&up.peer);
    if let Err(protocol) = io.upgrades.hand_over(up).await {
        io.ctx.log.debug(&format!(
            "Connection from {client} closed: it asked to switch to {protocol}, which this worker does not serve"
        ));
    }
    io.admission.connection_closed();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn run_local<F: Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    fn upgrade(stream: DuplexStream, protocol: &str) -> Upgrade<DuplexStream> {
        let raw =
            b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let head = match crate::http::parse_request(raw, &Default::default()) {
            Ok(crate::http::Parsed::Complete { head, .. }) => head,
            _ => panic!("the test request parses"),
        };
        Upgrade {
            stream,
            leftover: b"first frame".to_vec(),
            protocol: protocol.to_string(),
            head: Arc::new(head),
            peer: Arc::new(Peer {
                ip: "127.0.0.1".to_string(),
                port: 5555,
                proxy: None,
                local_pid: None,
                same_host: true,
            }),
            server: Arc::new(ServerAddr {
                name: "127.0.0.1".to_string(),
                port: "8000".to_string(),
            }),
            https: false,
        }
    }

    /// Answers the handshake, echoes the leftover, and notes what it was given.
    struct Echo {
        seen: Rc<RefCell<Vec<String>>>,
    }

    impl UpgradeHandler for Echo {
        fn protocol(&self) -> &str {
            "websocket"
        }
        fn serve(&self, mut up: Upgraded) -> Pin<Box<dyn Future<Output = ()> + '_>> {
            Box::pin(async move {
                self.seen
                    .borrow_mut()
                    .push(format!("{} {} {}", up.protocol, up.head.path, up.peer.port));
                assert_eq!(UpgradedIo::raw_fd(&up.stream), None);
                let _ = up
                    .stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
                    .await;
                let _ = up.stream.write_all(&up.leftover).await;
            })
        }
    }

    #[test]
    fn an_upgrade_goes_to_the_handler_of_its_protocol() {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut upgrades = Upgrades::default();
        upgrades.register(Box::new(Echo { seen: seen.clone() }));
        assert!(upgrades.serves("websocket"));
        assert!(upgrades.serves("WebSocket"));
        assert!(!upgrades.serves("h2c"));
        let got = run_local(async move {
            let (server, mut client) = tokio::io::duplex(1024);
            // The token is compared without regard to case (RFC 9110 §7.8).
            let served = upgrades.hand_over(upgrade(server, "WebSocket")).await;
            assert_eq!(served, Ok(()));
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        assert_eq!(got, b"HTTP/1.1 101 Switching Protocols\r\n\r\nfirst frame");
        assert_eq!(*seen.borrow(), ["WebSocket /chat 5555"]);
    }

    #[test]
    fn an_upgrade_nobody_serves_is_closed() {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut upgrades = Upgrades::default();
        upgrades.register(Box::new(Echo { seen: seen.clone() }));
        run_local(async move {
            let (server, mut client) = tokio::io::duplex(1024);
            assert_eq!(
                upgrades.hand_over(upgrade(server, "h2c")).await,
                Err("h2c".to_string())
            );
            // The stream was dropped: the client sees the end, with nothing written.
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert!(got.is_empty());
        });
        assert!(seen.borrow().is_empty());

        // A worker with no handler at all (WSGI) closes every upgrade.
        let none = Upgrades::default();
        assert!(!none.serves("websocket"));
        run_local(async move {
            let (server, _client) = tokio::io::duplex(64);
            assert!(none.hand_over(upgrade(server, "websocket")).await.is_err());
        });
    }
}
