//! TLS on the worker's I/O thread: the handshake of each accepted connection and the stream it then
//! runs on (`TlsConn`, a `Transport`).
//!
//! A handshake holds the unit of capacity a plain connection holds until its first request
//! (`Admission::reserve`, when one is free), so that a burst of connections arriving together spreads
//! over the workers instead of all going to the first one awake (before, one worker took all 16 of
//! h2load's connections about half the time, and served them on its one I/O thread while the other
//! idled). It keeps the unit only while the client keeps up: until `CLIENT_HELLO_GRACE` after accept for
//! the ClientHello, then until `h1::RESERVATION_GRACE` for the rest. A client that opens TCP and sends no
//! ClientHello (or half of one) gives it back within 20 ms, so it never keeps a Python thread from the
//! others, and it is cut off after the handshake timeout (`--timeout`, as for a request head).
//! Handshakes in progress are bounded together with the open connections by `--worker-connections`. Plain HTTP sent
//! to the TLS port is answered `400` in plain text and closed. The ALPN protocols offered are chosen
//! here, from `--http-protocols` (`h2`, `http/1.1`, in its order); a connection that agreed on `h2` runs the
//! HTTP/2 driver, any other the HTTP/1 one.
//!
//! A file body on a TLS connection is read in Rust and written through the stream (`Transport`'s
//! default `send_file`): the kernel cannot encrypt what sendfile(2) copies.
//!
//! With `--proxy-protocol` the load balancer's PROXY header comes first, in the clear, then the
//! ClientHello (that is how balancers send it): the header is read from the TCP stream before the
//! handshake — peeked at until complete, then exactly its bytes taken, so rustls reads from the first byte
//! after it — and the connection carries what it named to the driver (`Transport::proxy_read`). A
//! refused header is answered in the clear, as on a plain listener. A connection that starts with its
//! ClientHello may still send the header inside the TLS stream, where gunicorn reads it.
//!
//! A worker that begins to stop gives a handshake in progress the grace it gives an idle connection
//! (`IoState::stop_idle_grace`): the client's request is on its way, and it is answered (with
//! `Connection: close`) rather than dropped; the worker waits for it (`IoState::open_connections`).

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;

use super::admission::Claim;
use super::driver;
use super::h1::client_text;
use super::proxy::{Proxied, ProxySettings, Step};
use super::transport::Transport;
use super::IoState;
use super::{h1, h2};
use crate::exchange::{Peer, ServerAddr};
use crate::tls::{Material, TlsInfo, ALPN_H2};

/// The first byte of a TLS handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;

/// A worker's TLS acceptor: the server config built from the master's material, and the handshakes in
/// progress.
pub struct TlsAcceptor {
    config: Arc<rustls::ServerConfig>,
    server_cert: Arc<str>,
    suppress_ragged_eofs: bool,
    pending: Cell<usize>,
}

impl TlsAcceptor {
    pub fn new(material: &Material, cfg: &crate::config::Config) -> Result<TlsAcceptor, String> {
        Ok(TlsAcceptor {
            config: material.server_config(&cfg.alpn_protocols())?,
            server_cert: material.server_pem.clone(),
            suppress_ragged_eofs: cfg.suppress_ragged_eofs,
            pending: Cell::new(0),
        })
    }

    /// Handshakes in progress (they count against `--worker-connections` with the open connections).
    pub fn pending(&self) -> usize {
        self.pending.get()
    }
}

/// A socket whose first byte can be looked at without taking it.
pub(super) trait Peek: AsyncRead + AsyncWrite + AsRawFd + Unpin {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>>;
    fn try_peek(&self, buf: &mut [u8]) -> io::Result<usize>;
}

macro_rules! peek_for {
    ($t:ty) => {
        impl Peek for $t {
            async fn readable(&self) -> io::Result<()> {
                <$t>::readable(self).await
            }
            fn try_peek(&self, buf: &mut [u8]) -> io::Result<usize> {
                self.try_io(tokio::io::Interest::READABLE, || {
                    // SAFETY: the fd is open for the call; `buf` is ours and its length is passed.
                    let n = unsafe {
                        libc::recv(
                            self.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            libc::MSG_PEEK,
                        )
                    };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                })
            }
        }
    };
}

peek_for!(tokio::net::TcpStream);
peek_for!(tokio::net::UnixStream);

/// The first byte the client sends, without taking it; None when it closes first.
async fn first_byte<S: Peek>(stream: &S) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    loop {
        stream.readable().await?;
        match stream.try_peek(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(b[0])),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// An accepted connection on a TLS listener: the handshake (bounded in time; `held`: the unit of capacity
/// the accept loop reserved for it, given back if the client is slow), then
/// its driver as for any connection.
pub(super) async fn serve<S: Peek + 'static>(
    stream: S,
    peer: Arc<Peer>,
    server: Arc<ServerAddr>,
    io: Rc<IoState>,
    held: bool,
) {
    let mut claim = io.admission.claim(held);
    let Some(tls) = io.tls.as_ref() else {
        return;
    };
    tls.pending.set(tls.pending.get() + 1);
    let shaken = handshake(tls, stream, &peer, &io, &mut claim).await;
    tls.pending.set(tls.pending.get() - 1);
    io.admission.changed.notify_waiters();
    let Some(conn) = shaken else {
        return;
    };
    let claimed = io.admission.accepted_holding(&peer, claim.keep());
    // ALPN agreed on h2: the HTTP/2 driver; otherwise (http/1.1, or a client that offered no ALPN)
    // HTTP/1.
    if conn.tls().and_then(|t| t.alpn.as_deref()) == Some(ALPN_H2) {
        driver::run(h2::Http2, conn, peer, server, io, claimed).await;
    } else {
        driver::run(h1::Http1, conn, peer, server, io, claimed).await;
    }
}

/// Why a handshake did not complete, for the debug log.
enum Failed {
    TimedOut,
    Stopping,
    Closed,
    PlainHttp,
    Proxy(String),
    Error(io::Error),
}

async fn handshake<S: Peek>(
    tls: &TlsAcceptor,
    mut stream: S,
    peer: &Peer,
    io: &IoState,
    claim: &mut Claim<'_>,
) -> Option<TlsConn<S>> {
    let accepted = Instant::now();
    let mut limits = Limits {
        deadline: accepted + io.header_timeout,
        grace: accepted + CLIENT_HELLO_GRACE,
        claim,
    };
    let outcome: Result<TlsConn<S>, Failed> = async {
        let limits = &mut limits;
        let proxied = match &io.proxy {
            Some(settings) => proxy_header(&mut stream, settings, peer, io, limits).await?,
            None => None,
        };
        match within(limits, io, first_byte(&stream)).await? {
            Err(e) => return Err(Failed::Error(e)),
            Ok(None) => return Err(Failed::Closed),
            Ok(Some(b)) if b != HANDSHAKE_RECORD && b.is_ascii_alphabetic() => {
                refuse_plain_http(&mut stream).await;
                return Err(Failed::PlainHttp);
            }
            Ok(Some(_)) => {}
        }
        let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = within(limits, io, hello).await?.map_err(Failed::Error)?;
        // The ClientHello is in: the client is there, and the rest of the handshake is one round trip.
        limits.grace = accepted + h1::RESERVATION_GRACE;
        match within(limits, io, start.into_stream(tls.config.clone())).await? {
            Err(e) => Err(Failed::Error(e)),
            Ok(inner) => {
                let info = TlsInfo::of(inner.get_ref().1, &tls.server_cert);
                Ok(TlsConn {
                    inner,
                    info: Arc::new(info),
                    suppress_ragged_eofs: tls.suppress_ragged_eofs,
                    proxied,
                })
            }
        }
    }
    .await;
    match outcome {
        Ok(conn) => Some(conn),
        Err(why) => {
            if io.ctx.log.enabled(crate::log::Level::Debug) {
                let why = match why {
                    Failed::TimedOut => {
                        format!("no handshake within {}s", io.header_timeout.as_secs_f64())
                    }
                    Failed::Stopping => {
                        "the worker stopped before its handshake was done".to_string()
                    }
                    Failed::Closed => "the client closed before its ClientHello".to_string(),
                    Failed::PlainHttp => "it sent plain HTTP (answered 400)".to_string(),
                    Failed::Proxy(why) => format!("its PROXY header was refused: {why}"),
                    Failed::Error(e) => format!("the handshake failed: {e}"),
                };
                io.ctx.log.debug(&format!(
                    "TLS connection from {} closed: {why}",
                    client_text(peer)
                ));
            }
            None
        }
    }
}

/// The PROXY header before the ClientHello, peeked at until complete, then exactly its bytes taken:
/// `Some` with the ends it names (None: the connection's own). `None` when the connection starts with
/// something else: a header is optional, and one may still come inside the TLS stream (where gunicorn
/// reads it), for the driver to read.
async fn proxy_header<S: Peek>(
    stream: &mut S,
    settings: &ProxySettings,
    peer: &Peer,
    io: &IoState,
    limits: &mut Limits<'_, '_>,
) -> Result<Option<Option<Proxied>>, Failed> {
    let mut buf = vec![0u8; 1024]; // a version 1 line, or a version 2 header with its usual TLVs
    let mut seen = 0;
    loop {
        let n = within(limits, io, async {
            loop {
                stream.readable().await?;
                match stream.try_peek(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            }
        })
        .await?
        .map_err(Failed::Error)?;
        if n == 0 {
            return Err(Failed::Closed);
        }
        match settings.inspect(&buf[..n], &peer.ip) {
            Ok(Step::NotProxy) => return Ok(None),
            Ok(Step::Header(h)) => {
                let mut header = vec![0u8; h.len];
                within(limits, io, stream.read_exact(&mut header))
                    .await?
                    .map_err(Failed::Error)?;
                return Ok(Some(h.ends));
            }
            Ok(Step::Incomplete) => {
                if n == buf.len() {
                    // A version 2 header longer than the buffer (its TLVs): room for all of it.
                    buf.resize(buf.len() * 2, 0);
                } else if n == seen {
                    // The peek leaves the socket readable: wait a little for the rest to arrive.
                    within(limits, io, tokio::time::sleep(Duration::from_millis(5))).await?;
                }
                seen = n;
            }
            Err(e) => {
                let why = e.to_string();
                // As the HTTP/1 driver refuses one on a plain listener.
                io.ctx
                    .log
                    .warning(&format!("Invalid request from ip={}: {why}", peer.ip));
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(&e.response()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
                return Err(Failed::Proxy(why));
            }
        }
    }
}

/// How long after accept the unit a handshake holds (`Admission::reserve`) is kept while its
/// ClientHello is still to come. A client sends its ClientHello with the last packet of the TCP
/// handshake, so it is here at accept or within a lost packet's retransmission: one that sends nothing
/// (or half a hello) gives its unit back after this, and holds it no longer than that from the
/// connections behind it in the backlog.
const CLIENT_HELLO_GRACE: Duration = Duration::from_millis(20);

/// The bounds of a handshake: cut off at `deadline`; the unit of capacity taken at accept (`claim`, if
/// held) given back at `grace` (`CLIENT_HELLO_GRACE`, then `h1::RESERVATION_GRACE` once the
/// ClientHello is in, as a plain connection's first request gets).
struct Limits<'a, 'b> {
    deadline: Instant,
    grace: Instant,
    claim: &'a mut Claim<'b>,
}

/// Run `step` until the deadline, or — once the worker is stopping — for at most the stop's idle grace;
/// the claim is given back at the grace.
async fn within<F: std::future::Future>(
    limits: &mut Limits<'_, '_>,
    io: &IoState,
    step: F,
) -> Result<F::Output, Failed> {
    let sleep = tokio::time::sleep_until(limits.deadline);
    let grace = tokio::time::sleep_until(limits.grace);
    tokio::pin!(sleep, grace, step);
    let mut graced = false;
    loop {
        if io.shutting_down.get() && !graced {
            graced = true;
            let cut = Instant::now() + io.stop_idle_grace();
            if cut < sleep.deadline() {
                sleep.as_mut().reset(cut);
            }
        }
        tokio::select! {
            out = &mut step => return Ok(out),
            _ = &mut sleep => return Err(if graced { Failed::Stopping } else { Failed::TimedOut }),
            _ = io.shutdown_signal.notified(), if !graced => {}
            _ = &mut grace, if limits.claim.held => limits.claim.release(),
        }
    }
}

/// Plain HTTP on the TLS port: a plain-text 400 saying so, then the close (as nginx answers it).
async fn refuse_plain_http<S: AsyncWrite + Unpin>(stream: &mut S) {
    const BODY: &str = "This port serves HTTPS: use an https:// URL.\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A connection after its handshake: bytes through rustls, and what the handshake told.
pub struct TlsConn<S> {
    inner: tokio_rustls::server::TlsStream<S>,
    info: Arc<TlsInfo>,
    suppress_ragged_eofs: bool,
    /// The PROXY header read before the handshake (`--proxy-protocol`), and the ends it named.
    proxied: Option<Option<Proxied>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let suppress = self.suppress_ragged_eofs;
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            // A close without close_notify: an end like any other with `--suppress-ragged-eofs` (as
            // Python's ssl module reads it), else a broken connection.
            Poll::Ready(Err(e)) if suppress && e.kind() == io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Files are read in Rust and written through the stream (the default `send_file`); the socket is
/// there for socket options only.
impl<S: AsyncRead + AsyncWrite + AsRawFd + Unpin> Transport for TlsConn<S> {
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.inner.get_ref().0.as_raw_fd())
    }
    fn tls(&self) -> Option<&Arc<TlsInfo>> {
        Some(&self.info)
    }
    fn proxy_read(&self) -> Option<Option<Proxied>> {
        self.proxied
    }
    /// A client ends with close_notify before its FIN: the alert lies unread in the socket (the stream is
    /// not read while the app runs), so the FIN itself tells that it went.
    fn client_gone(&self) -> bool {
        super::transport::peer_shut_down(self.inner.get_ref().0.as_raw_fd())
    }
}
