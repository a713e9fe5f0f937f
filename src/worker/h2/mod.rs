//! The HTTP/2 connection driver (`Http2`): one client connection whose streams are requests, on the
//! `h2` crate's frame layer (HPACK, flow control, stream states, SETTINGS and PING), under the same
//! admission, timers and logs as HTTP/1. This module owns the connection: the h2 builder and its
//! limits, the stream loop (each stream a task, `stream.rs`), the idle timeout, and GOAWAY when the
//! worker stops. How a connection comes here: over TLS, ALPN agreed on `h2` (`worker/tls.rs`); in
//! cleartext, `plain` finds the client preface from a trusted peer when `--http2-cleartext` allows
//! prior knowledge.
//!
//! Attack limits (each is the h2 builder's; the numbers and why):
//! - rapid reset (CVE-2023-44487): a stream the client resets stays counted here until its request
//!   is done in the app (a ticket still queued is withdrawn, so it never runs), and no new stream is
//!   taken while as many as `--http2-max-concurrent-streams` are live; streams the client resets before
//!   they are taken count towards `max_pending_accept_reset_streams` (`PENDING_RESETS`), past which the
//!   connection ends with GOAWAY `ENHANCE_YOUR_CALM`. Streams the server must reset for the client's
//!   protocol errors are capped by `max_local_error_reset_streams` (`LOCAL_ERROR_RESETS`).
//! - CONTINUATION floods and HPACK bombs (CVE-2024-27316 class): the decoded header list is bounded by
//!   `--http2-max-header-list-size` (a larger one is answered 431), and h2 ends a connection whose
//!   CONTINUATION frames exceed what that size can need.
//! - SETTINGS and PING floods: h2 acknowledges them only as fast as the client reads, so a client that
//!   floods without reading is stopped by its own unread acknowledgements (TCP backpressure), with
//!   nothing queued per frame.
//! - a slow or zero-window reader: each piece of a response waits for the client's window, at most
//!   the header timeout (as an HTTP/1 write), and a stream holds at most `SEND_BUFFER` queued in h2.

mod cork;
mod stream;

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::driver::{self, ConnEnd, ConnectionDriver};
use super::h1::client_text;
use super::transport::Transport;
use super::IoState;
use crate::exchange::{Peer, ServerAddr};
use crate::tls::TlsInfo;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame's header: length (3), type, flags, stream (4).
const FRAME_HEAD: usize = 9;
/// The whole preface must arrive within this of its first byte (as gunicorn's budget): a trusted
/// peer that trickles it is refused, not waited for.
const PREFACE_TIME: Duration = Duration::from_secs(1);
/// Streams the client resets before the driver takes them, at most: past this the client is
/// resetting faster than any real client cancels, and the connection ends (ENHANCE_YOUR_CALM).
const PENDING_RESETS: usize = 32;
/// Streams reset for the client's own protocol errors, at most, before the connection ends.
const LOCAL_ERROR_RESETS: usize = 256;
/// Response bytes h2 may hold queued per stream: the driver only sends what the client's window
/// allows, so this is a ceiling, not a buffer it fills.
const SEND_BUFFER: usize = 256 * 1024;
/// The connection's receive window: request bodies of all streams in flight together. At least the
/// stream window, so one stream can use all of its own.
const CONNECTION_WINDOW_MIN: u32 = 1 << 20;

/// The HTTP/2 connection driver: `serve` below.
pub struct Http2;

impl ConnectionDriver for Http2 {
    fn serve<T: Transport>(
        &self,
        stream: T,
        peer: Arc<Peer>,
        server: Arc<ServerAddr>,
        io: Rc<IoState>,
        claimed: bool,
    ) -> impl std::future::Future<Output = ConnEnd<T>> {
        serve(stream, peer, server, io, claimed)
    }
}

/// What a connection's stream tasks share.
pub(super) struct Conn {
    /// The connection's own peer: trust (`--forwarded-allow-ips`) and loopback calls are judged by it.
    pub peer: Arc<Peer>,
    /// The client the app sees: the one a PROXY header named (`--proxy-protocol`), else `peer`.
    pub client: Arc<Peer>,
    pub server: Arc<ServerAddr>,
    pub tls: Option<Arc<TlsInfo>>,
    /// Streams whose task still runs (their request may still be in the app after a reset).
    pub live: Cell<usize>,
    pub changed: Notify,
    /// Streams whose response is still to come from the app: the connection's writes wait for them
    /// (`cork`).
    cork: Rc<cork::Cork>,
}

fn builder(io: &IoState) -> ::h2::server::Builder {
    let cfg = &io.ctx.cfg;
    let mut b = ::h2::server::Builder::new();
    let header_list = match cfg.http2_max_header_list_size {
        0 => u32::MAX,
        n => n,
    };
    b.max_concurrent_streams(cfg.http2_max_concurrent_streams)
        .initial_window_size(cfg.http2_initial_window_size)
        .initial_connection_window_size(cfg.http2_initial_window_size.max(CONNECTION_WINDOW_MIN))
        .max_frame_size(cfg.http2_max_frame_size)
        .max_header_list_size(header_list)
        .max_pending_accept_reset_streams(PENDING_RESETS)
        .max_local_error_reset_streams(Some(LOCAL_ERROR_RESETS))
        .max_send_buffer_size(SEND_BUFFER);
    b
}

/// Serve an HTTP/2 connection until the client or the server ends it.
pub async fn serve<S: Transport>(
    stream: S,
    peer: Arc<Peer>,
    server: Arc<ServerAddr>,
    io: Rc<IoState>,
    claimed: bool,
) -> ConnEnd<S> {
    let trace = io.ctx.log.enabled(crate::log::Level::Debug);
    let tls = stream.tls().cloned();
    let client = match stream.proxy_read() {
        Some(Some(ends)) => Arc::new(super::proxy::peer(ends)),
        _ => peer.clone(),
    };
    // The connection's claim from accept keeps capacity for its first request while the preface and
    // SETTINGS are exchanged; each stream then claims its own unit when it is placed.
    let claim = io.admission.claim(claimed);
    let why = drive(stream, &peer, client, server, &io, tls, claim).await;
    if trace {
        io.ctx.log.debug(&format!(
            "HTTP/2 connection from {} closed: {why}",
            client_text(&peer)
        ));
    }
    io.admission.connection_closed();
    ConnEnd::Closed
}

async fn drive<S: Transport>(
    stream: S,
    peer: &Arc<Peer>,
    client: Arc<Peer>,
    server: Arc<ServerAddr>,
    io: &Rc<IoState>,
    tls: Option<Arc<TlsInfo>>,
    mut claim: super::admission::Claim<'_>,
) -> String {
    let stream = match opening(stream, io).await {
        Ok(stream) => stream,
        Err(why) => return why,
    };
    let held = Rc::new(cork::Cork::default());
    let stream = cork::Corked::new(stream, held.clone());
    let handshake = builder(io).handshake::<cork::Corked<Prefixed<S>>, Bytes>(stream);
    let mut h2 = match tokio::time::timeout(io.header_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return format!("the HTTP/2 handshake failed ({e})"),
        Err(_) => return "the HTTP/2 handshake timed out".to_string(),
    };
    claim.release();
    let conn = Rc::new(Conn {
        peer: peer.clone(),
        client,
        server,
        tls,
        live: Cell::new(0),
        changed: Notify::new(),
        cork: held,
    });
    let cap = (io.ctx.cfg.http2_max_concurrent_streams as usize).max(1);
    let mut served = 0u64;
    let mut goaway = false;
    let mut idle_since = Some(Instant::now());
    loop {
        if io.shutting_down.get() && !goaway && conn.live.get() == 0 {
            // GOAWAY once no stream is in flight: streams that arrive meanwhile are still served (as an
            // HTTP/1 connection's next request is, with `Connection: close`), and a stopping worker's
            // cut-off answers what still runs near --graceful-timeout. Not sooner, because a client may
            // take GOAWAY as the end of everything on the connection (Python's h2, under httpx, accepts
            // no frame after it), and the responses in flight would be lost. One GOAWAY naming the last
            // stream taken, with no PING after it (h2's two-step `graceful_shutdown` sends one, which
            // such a client reads as a protocol error): with no stream in flight nothing is cut, and a
            // stream the client opens meanwhile is above the last one named, so it knows to retry it.
            h2.abrupt_shutdown(::h2::Reason::NO_ERROR);
            goaway = true;
        }
        let idle_deadline = idle_since.map(|t| t + io.idle_timeout(served == 0));
        let taking = conn.live.get() < cap;
        // At the limit of live streams the connection is still driven (frames, windows), but no new
        // stream is taken until one ends.
        let next = std::future::poll_fn(|cx| {
            if taking {
                h2.poll_accept(cx)
            } else {
                h2.poll_closed(cx).map(|r| r.err().map(Err))
            }
        });
        // Biased: the connection is polled (its queued frames written) before a stream's end is
        // looked at, so a GOAWAY that follows never overtakes a response.
        tokio::select! {
            biased;
            accepted = next => match accepted {
                Some(Ok((request, respond))) => {
                    served += 1;
                    idle_since = None;
                    conn.live.set(conn.live.get() + 1);
                    tokio::task::spawn_local(stream::run(io.clone(), conn.clone(), request, respond));
                }
                Some(Err(e)) => return format!("after {served} streams: {e}"),
                None => return format!("after {served} streams, ended by either side"),
            },
            _ = conn.changed.notified() => {
                if conn.live.get() == 0 {
                    idle_since = Some(Instant::now());
                }
            }
            _ = io.shutdown_signal.notified(), if !goaway => {}
            _ = sleep_until_opt(idle_deadline) => {
                if goaway {
                    return format!("after {served} streams, idle while the worker stops");
                }
                if conn.live.get() == 0 {
                    // Idle: one GOAWAY, as for a stop (no stream is in flight).
                    h2.abrupt_shutdown(::h2::Reason::NO_ERROR);
                    goaway = true;
                }
                idle_since = None;
            }
        }
    }
}

/// The client's preface and the header of its first frame, which must be SETTINGS (RFC 9113 §3.4): h2
/// would take any frame there, so it is looked at here, and anything else is a connection error
/// PROTOCOL_ERROR (the server's SETTINGS, then GOAWAY, as the RFC's preface exchange has it). What was
/// read is read again by h2. A stream that already read the preface (`plain`) holds it as its prefix.
async fn opening<S: Transport>(stream: S, io: &IoState) -> Result<Prefixed<S>, String> {
    use tokio::io::AsyncReadExt;
    let mut stream = Prefixed::new(stream, Vec::new());
    let mut got = Vec::with_capacity(1024);
    let want = PREFACE.len() + FRAME_HEAD;
    let deadline = Instant::now() + io.header_timeout;
    while got.len() < want {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            Ok(Ok(_)) => return Err("the client closed before its first frame".to_string()),
            Ok(Err(e)) => return Err(format!("reading the HTTP/2 preface failed ({e})")),
            Err(_) => return Err("the HTTP/2 preface timed out".to_string()),
        }
        let n = got.len().min(PREFACE.len());
        if got[..n] != PREFACE[..n] {
            // h2 answers a wrong preface itself (it closes the connection).
            break;
        }
    }
    if got.len() >= want && got.starts_with(PREFACE) {
        let head = &got[PREFACE.len()..want];
        // type SETTINGS (0x4) without ACK (flag 0x1) on stream 0
        let settings = head[3] == 0x4 && head[4] & 0x1 == 0 && head[5..9] == [0, 0, 0, 0];
        if !settings {
            // An empty SETTINGS frame, then GOAWAY(last stream 0, PROTOCOL_ERROR).
            let mut refusal = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
            refusal.extend_from_slice(&[0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            let _ = tokio::time::timeout(io.header_timeout, stream.write_all(&refusal)).await;
            let _ = stream.shutdown().await;
            return Err("the client's first frame after the preface was not SETTINGS".to_string());
        }
    }
    stream.unread(got);
    Ok(stream)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A cleartext connection: HTTP/2 when `--http2-cleartext` allows prior knowledge from this peer and
/// it opens with the preface, HTTP/1 otherwise. A trusted peer on such a port must speak HTTP/2 (as
/// gunicorn): anything else from it is answered 400 and closed, so a proxy misconfigured to send
/// HTTP/1 shows at once rather than being served the other protocol.
pub(super) async fn plain<S: Transport + 'static>(
    stream: S,
    peer: Arc<Peer>,
    server: Arc<ServerAddr>,
    io: Rc<IoState>,
    claimed: bool,
) {
    if !(io.h2c_prior_knowledge && io.forwarded.trusts(&peer)) {
        return driver::run(super::h1::Http1, stream, peer, server, io, claimed).await;
    }
    let mut stream = stream;
    let mut got = Vec::with_capacity(PREFACE.len());
    let mut claimed = claimed;
    // With `--proxy-protocol` the load balancer's header comes before the preface (as before an
    // HTTP/1 request, or a TLS handshake): read here, and carried to the driver.
    let mut proxied = None;
    if let Some(settings) = &io.proxy {
        let mut claim = io.admission.claim(claimed);
        let now = Instant::now();
        let waits = super::proxy::Waits {
            deadline: now + io.header_timeout,
            grace: now + super::h1::RESERVATION_GRACE,
            slow: &mut || claim.release(),
            stopping: &io.shutting_down,
            stop_signal: &io.shutdown_signal,
        };
        let outcome =
            super::proxy::read_header(&mut stream, &mut got, settings, &peer.ip, waits).await;
        claimed = claim.keep();
        match outcome {
            super::proxy::Outcome::Accepted(ends) => proxied = Some(ends),
            super::proxy::Outcome::Refused(err) => {
                if let Some(err) = err {
                    io.ctx
                        .log
                        .warning(&format!("Invalid request from ip={}: {err}", peer.ip));
                    let _ =
                        tokio::time::timeout(io.header_timeout, stream.write_all(&err.response()))
                            .await;
                    let _ = stream.shutdown().await;
                }
                return end_refused(stream, &io, claimed);
            }
        }
    }
    if read_preface(&mut stream, &mut got, &io).await {
        let mut stream = Prefixed::new(stream, got);
        stream.proxied = proxied;
        return driver::run(Http2, stream, peer, server, io, claimed).await;
    }
    if !got.is_empty() {
        io.ctx.log.warning(&format!(
            "Invalid request from ip={}: not the HTTP/2 connection preface (--http2-cleartext expects HTTP/2 from this peer)",
            peer.ip
        ));
        let body = "Invalid HTTP/2 connection preface\n";
        let _ = tokio::time::timeout(
            io.header_timeout,
            stream.write_all(&crate::http::simple_response(400, body, true)),
        )
        .await;
        let _ = stream.shutdown().await;
    }
    end_refused(stream, &io, claimed);
}

/// A cleartext connection refused before either driver took it: its claim and its count go back.
fn end_refused<S>(stream: S, io: &IoState, claimed: bool) {
    drop(stream);
    drop(io.admission.claim(claimed));
    io.admission.connection_closed();
}

/// Read the client's first bytes while they may still be the preface: true when all of it came.
async fn read_preface<S: Transport>(stream: &mut S, got: &mut Vec<u8>, io: &IoState) -> bool {
    use tokio::io::AsyncReadExt;
    let mut deadline = Instant::now() + io.header_timeout;
    if !got.is_empty() {
        // Bytes that came with a PROXY header.
        deadline = Instant::now() + PREFACE_TIME;
    }
    loop {
        let n = got.len().min(PREFACE.len());
        if got[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        let mut byte = [0u8; PREFACE.len()];
        let want = PREFACE.len() - n;
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut byte[..want])).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        if got.is_empty() {
            deadline = Instant::now() + PREFACE_TIME;
        }
        got.extend_from_slice(&byte[..n]);
    }
}

/// A transport whose first bytes were already read (the preface): they are read again first.
struct Prefixed<S> {
    inner: S,
    prefix: Vec<u8>,
    at: usize,
    /// The PROXY header's outcome when it was read before the preface (`plain`).
    proxied: Option<Option<super::proxy::Proxied>>,
}

impl<S> Prefixed<S> {
    fn new(inner: S, prefix: Vec<u8>) -> Prefixed<S> {
        Prefixed {
            inner,
            prefix,
            at: 0,
            proxied: None,
        }
    }

    /// Bytes read through this transport are to be read again, before what is still unread.
    fn unread(&mut self, mut bytes: Vec<u8>) {
        bytes.extend_from_slice(&self.prefix[self.at..]);
        self.prefix = bytes;
        self.at = 0;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
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

impl<S: Transport> Transport for Prefixed<S> {
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.raw_fd()
    }
    fn tls(&self) -> Option<&Arc<TlsInfo>> {
        self.inner.tls()
    }
    fn proxy_read(&self) -> Option<Option<super::proxy::Proxied>> {
        self.proxied.or_else(|| self.inner.proxy_read())
    }
    fn client_gone(&self) -> bool {
        self.inner.client_gone()
    }
}
