//! The HTTP/1 connection driver: one client connection on a worker's I/O thread: read and parse request heads (with the idle and header
//! timeouts), refuse malformed requests, hand each request to the Python threads, stream its body to
//! `wsgi.input` on demand, write the response pieces as they come, and keep the connection alive or close it.
//!
//! Requests on one connection are handled strictly one after another, so pipelined requests are answered in
//! order without any reordering logic: the next head is parsed from the buffer only after the previous
//! response is complete.

//!
//! Its parts: `head` reads request heads, `body` reads and drains request bodies, `request` runs one
//! request's exchange with the app runtime, `write` frames and writes response pieces. A request under a
//! `--static-map` prefix never reaches the app: `worker::static_files` answers it here.

mod body;
mod head;
mod request;
pub(super) mod write;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::driver::{ConnEnd, ConnectionDriver, Upgrade};
use super::transport::Transport;
use super::{proxy, IoState};
use crate::exchange::{Peer, ServerAddr};
use crate::http::{self, HttpError, RequestHead};
use body::{body_in_buffer, start_body};
use head::read_head;

/// How long a freshly accepted connection keeps its claim on the worker's capacity while its first request
/// head arrives. A client slower than this stops counting as "about to run", so a trickling client cannot
/// stop the worker from accepting others.
pub(super) const RESERVATION_GRACE: Duration = Duration::from_millis(200);
/// Body left unread by the app is drained (to keep the connection) up to this much; beyond it the
/// connection is closed instead, so an unwanted upload never costs more than this.
const DRAIN_LIMIT: u64 = 1024 * 1024;
const READ_SIZE: usize = 16 * 1024;
/// The staged close (see `close_staged`) reads what the client still sends for at most this long...
const LINGER_TIME: Duration = Duration::from_secs(2);
/// ...and at most this much: enough for the rest of a typical upload in flight, while a client that never
/// stops sending costs a bounded amount of reading before the connection is closed under it.
const LINGER_LIMIT: usize = 1024 * 1024;
/// How much body is read before the app is called (see `start_body`). Most form posts and JSON bodies fit,
/// so the app gets them with the request instead of pulling them across threads piece by piece; it bounds
/// the memory a connection can hold before its request runs.
const PREFETCH_LIMIT: usize = 256 * 1024;

enum HeadOutcome {
    /// Shared: the Python thread reads it, and the connection keeps it to log a 504 of its own.
    Head(Arc<RequestHead>),
    /// Clean end: the client closed or idled out between requests (the reason, for the debug log).
    Closed(&'static str),
    /// The client sent something that is not a request, or timed out mid-head: answer (if a status is
    /// given) and close.
    Refused(Option<HttpError>),
}

/// The HTTP/1 connection driver: `serve` below.
pub struct Http1;

impl ConnectionDriver for Http1 {
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

/// Serve an HTTP/1 connection: requests one after another while it is kept alive, until it closes.
pub async fn serve<S: Transport>(
    mut stream: S,
    peer: Arc<Peer>,
    server: Arc<ServerAddr>,
    io: Rc<IoState>,
    claimed: bool,
) -> ConnEnd<S> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
    let mut frame = write::Framed::new();
    // A connection accepted within capacity holds one unit of it from accept (see `admission`).
    let mut claim = io.admission.claim(claimed);
    let mut first = true;
    // `--log-level debug` follows each connection: accepted, then closed with its request count and why.
    // Asked once, so at other levels the connection pays nothing more.
    let trace = io.ctx.log.enabled(crate::log::Level::Debug);
    if trace {
        io.ctx.log.debug(&format!(
            "Connection from {} accepted on {}{}{} ({})",
            client_text(&peer),
            server.name,
            if server.port.is_empty() { "" } else { ":" },
            server.port,
            if claimed {
                "a thread is free for it"
            } else {
                "every thread is busy"
            }
        ));
    }
    let mut served = 0u64;
    let mut closed_because = "the request was refused";
    // PROXY protocol (`--proxy-protocol`, see `proxy`): a load balancer's header before the first request
    // names the client the app sees. The connection's own peer still decides loopback calls and
    // `--forwarded-allow-ips`, as gunicorn judges forwarded headers by the socket peer.
    let mut client = peer.clone();
    let mut refused = false;
    // Whether the server, not the client, ends the connection after sending something: then it closes in
    // stages, so that what the client still sends cannot turn into a reset that destroys the answer.
    let mut staged = true;
    if let Some(read) = stream.proxy_read() {
        if let Some(ends) = read {
            client = Arc::new(proxy::peer(ends));
        }
    } else if let Some(settings) = &io.proxy {
        let now = Instant::now();
        let waits = proxy::Waits {
            deadline: now + io.header_timeout,
            grace: now + RESERVATION_GRACE,
            slow: &mut || claim.release(),
            stopping: &io.shutting_down,
            stop_signal: &io.shutdown_signal,
        };
        match proxy::read_header(&mut stream, &mut buf, settings, &peer.ip, waits).await {
            proxy::Outcome::Accepted(Some(ends)) => client = Arc::new(proxy::peer(ends)),
            proxy::Outcome::Accepted(None) => {}
            proxy::Outcome::Refused(err) => {
                match err {
                    Some(err) => refuse(&mut stream, &io, &peer, &err, &err.response()).await,
                    None => {
                        staged = false;
                        closed_because = "no PROXY protocol header arrived";
                    }
                }
                refused = true;
            }
        }
    }
    loop {
        if refused {
            break;
        }
        let head = match read_head(&mut stream, &mut buf, &io, first, &mut claim).await {
            HeadOutcome::Head(h) => h,
            HeadOutcome::Closed(why) => {
                staged = false;
                closed_because = why;
                break;
            }
            HeadOutcome::Refused(err) => {
                match err {
                    Some(err) => {
                        refuse(&mut stream, &io, &peer, &err, &http::error_response(&err)).await
                    }
                    None => {
                        staged = false;
                        closed_because =
                            "the request head was incomplete (the client closed or was too slow)";
                    }
                }
                break;
            }
        };
        first = false;
        // Over TLS the scheme is https whatever a proxy's headers say (they are still checked).
        let https = match io.forwarded.https(&head, &peer) {
            Ok(https) => https || stream.tls().is_some(),
            Err(e) => {
                refuse(&mut stream, &io, &peer, &e, &http::error_response(&e)).await;
                break;
            }
        };
        // A protocol this worker serves besides HTTP/1 (a websocket handler): the connection is handed on
        // with the request unanswered, and the protocol's handler answers it (see `driver`).
        if let Some(protocol) = head.upgrade().filter(|p| io.upgrades.serves(p)) {
            let protocol = protocol.to_string();
            if trace {
                io.ctx.log.debug(&format!(
                    "Connection from {} handed on to {protocol} after {}",
                    client_text(&peer),
                    requests_text(served)
                ));
            }
            drop(claim);
            return ConnEnd::Upgrade(Upgrade {
                stream,
                leftover: std::mem::take(&mut buf),
                protocol,
                head,
                peer: client,
                server,
                https,
            });
        }
        // A path under a `--static-map` mount is answered here, on the I/O thread, without Python.
        if let Some((mount, rest)) =
            super::static_files::mount_for(&io.ctx.cfg.static_map, &head.path)
        {
            claim.release();
            let keep =
                super::static_files::serve(&mut stream, &io, &head, mount, rest, &client).await;
            served += 1;
            if !keep {
                closed_because = "a static answer ended it (the client asked, a request body, a failed write, or the worker is stopping)";
                break;
            }
            continue;
        }
        // A body still to come is read ahead without holding capacity.
        if !body_in_buffer(&head, &buf) {
            claim.release();
        }
        let Some(start) = start_body(&mut stream, &mut buf, &head, &io, &peer).await else {
            closed_because = "the request body did not arrive in full, or was malformed";
            break;
        };
        let dispatched = Instant::now();
        let asked_to_close = !head.keep_alive;
        let sent_no_body = matches!(head.body, http::BodyKind::Empty);
        let request = request::Request {
            head,
            start,
            https,
            conn_peer: &peer,
            peer: &client,
            server: &server,
            dispatched,
            frame: &mut frame,
        };
        let ended = request::run(&mut stream, &mut buf, &io, &mut claim, request).await;
        let keep = ended.keep;
        if ended.on_overflow {
            io.admission.overflow_done();
        } else {
            io.request_done(dispatched.elapsed());
        }
        claim.release();
        io.check_recycle();
        served += 1;
        // A stopping worker still answers what arrives on a kept-alive connection (with
        // `Connection: close`) rather than closing it under a client that may be sending right now.
        if !keep {
            // A client that asked to close, sent no body and nothing after its request has nothing on
            // its way: on a plain socket the close alone sends the FIN after the answer, without the
            // staged close's shutdown and reads until the client's FIN (bench/README.md, `Connection:
            // close`). TLS keeps the staged close, whose shutdown sends the close_notify alert.
            if asked_to_close && sent_no_body && buf.is_empty() && stream.tls().is_none() {
                staged = false;
            }
            closed_because = if asked_to_close {
                "the client asked for it (Connection: close, or HTTP/1.0 without keep-alive)"
            } else if io.ctx.cfg.keepalive == 0 {
                "keep-alive is off (--keep-alive 0)"
            } else if io.shutting_down.get() {
                "its last response ended it, the worker is stopping"
            } else {
                "its last response ended it (an error, a timeout, a failed write, or Connection: close from the app)"
            };
            break;
        }
    }
    if trace {
        io.ctx.log.debug(&format!(
            "Connection from {} closed after {}: {closed_because}",
            client_text(&peer),
            requests_text(served)
        ));
    }
    drop(claim);
    if staged {
        close_staged(&mut stream, &mut buf).await;
    }
    // Dropping the stream closes it. When the client ended the connection (or it idled out) nothing is on
    // its way, and the close alone sends the FIN.
    drop(stream);
    io.admission.connection_closed();
    ConnEnd::Closed
}

/// RFC 9112 §9.6's staged close, for a connection the server ends after an answer (a refusal, `--timeout`'s
/// 504, `Connection: close`, the `--max-requests` last response, CONNECT): send the FIN after the answer
/// (shutdown of the write side), then read and throw away what the client still sends — the rest of an
/// upload, pipelined requests — until it closes too or `LINGER_TIME` / `LINGER_LIMIT` run out. A plain
/// close with request bytes unread (or arriving later) makes the kernel answer with a reset, and a reset
/// destroys the response the client has not read yet: it sees ECONNRESET instead of the 400 or 504.
async fn close_staged<S: Transport>(stream: &mut S, buf: &mut Vec<u8>) {
    buf.clear();
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    while drained < LINGER_LIMIT {
        buf.clear();
        buf.reserve(READ_SIZE);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => drained += n,
        }
    }
    buf.clear();
}

/// `1 request`, `3 requests`.
fn requests_text(n: u64) -> String {
    format!("{n} request{}", if n == 1 { "" } else { "s" })
}

/// The client as the debug log names it.
pub(super) fn client_text(peer: &Peer) -> String {
    if peer.ip.is_empty() {
        "a unix socket client".to_string()
    } else if peer.ip.contains(':') {
        format!("[{}]:{}", peer.ip, peer.port)
    } else {
        format!("{}:{}", peer.ip, peer.port)
    }
}

/// Answer a request that breaks the protocol, and say so in the error log as gunicorn does: one WARNING
/// naming the client and what was wrong, so a misbehaving client or proxy is visible without a capture.
async fn refuse<S: Transport>(
    stream: &mut S,
    io: &IoState,
    peer: &Peer,
    what: &dyn std::fmt::Display,
    response: &[u8],
) {
    io.ctx
        .log
        .warning(&format!("Invalid request from ip={}: {what}", peer.ip));
    let _ = stream.write_all(response).await;
}
