//! One client connection on a worker's I/O thread: read and parse request heads (with the idle and header
//! timeouts), refuse malformed requests, hand each request to the Python threads, stream its body to
//! `wsgi.input` on demand, write the response pieces as they come, and keep the connection alive or close it.
//!
//! Requests on one connection are handled strictly one after another, so pipelined requests are answered in
//! order without any reordering logic: the next head is parsed from the buffer only after the previous
//! response is complete.

use std::io::{self, IoSlice};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};

use super::admission::{Claim, Placed, WAIT_POLL};
use super::driver::{ConnEnd, ConnectionDriver};
use super::exchange::{
    BodyChunk, BodyStream, FileBody, Job, Out, Payload, Peer, Progress, RequestBody, ServerAddr,
    BODY_CHUNK, BODY_QUEUE, REPLY_QUEUE,
};
use super::transport::Transport;
use super::{proxy, IoState};
use crate::http::{self, BodyKind, ChunkedDecoder, HttpError, Parsed, RequestHead};
use crate::scoreboard::now_ns;
use std::sync::atomic::Ordering;

/// How long a freshly accepted connection keeps its claim on the worker's capacity while its first request
/// head arrives. A client slower than this stops counting as "about to run", so a trickling client cannot
/// stop the worker from accepting others.
const RESERVATION_GRACE: Duration = Duration::from_millis(200);
/// Body left unread by the app is drained (to keep the connection) up to this much; beyond it the
/// connection is closed instead, so an unwanted upload never costs more than this.
const DRAIN_LIMIT: u64 = 1024 * 1024;
const READ_SIZE: usize = 16 * 1024;
/// The staged close (see `close_staged`) reads what the client still sends for at most this long...
const LINGER_TIME: Duration = Duration::from_secs(2);
/// ...and at most this much: enough for the rest of a typical upload in flight, while a client that never
/// stops sending costs a bounded amount of reading before the connection is closed under it.
const LINGER_LIMIT: usize = 1024 * 1024;
/// How often a queued request is checked for having started in Python (its timeout clock starts then).
const TIMEOUT_POLL: Duration = Duration::from_millis(250);
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
    if let Some(settings) = &io.proxy {
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
        let https = match io.forwarded.https(&head, &peer) {
            Ok(https) => https,
            Err(e) => {
                refuse(&mut stream, &io, &peer, &e, &http::error_response(&e)).await;
                break;
            }
        };
        // A body still to come is read ahead without holding capacity.
        if !body_in_buffer(&head, &buf) {
            claim.release();
        }
        let Some(start) = start_body(&mut stream, &mut buf, &head, &io, &peer).await else {
            closed_because = "the request body did not arrive in full, or was malformed";
            break;
        };
        let dispatched = Instant::now();
        let mut on_overflow = false;
        let asked_to_close = !head.keep_alive;
        let keep = handle_request(
            &mut stream,
            &mut buf,
            head,
            start,
            https,
            (&peer, &client),
            &server,
            &io,
            &mut claim,
            &mut on_overflow,
        )
        .await;
        if on_overflow {
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
            "Connection from {} closed after {served} request{}: {closed_because}",
            client_text(&peer),
            if served == 1 { "" } else { "s" }
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

fn head_complete(buf: &[u8], scanned_from: usize) -> bool {
    let start = scanned_from.saturating_sub(3);
    memchr::memmem::find(&buf[start..], b"\r\n\r\n").is_some()
        || memchr::memmem::find(&buf[start..], b"\n\n").is_some()
}

async fn read_head<S: Transport>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    io: &IoState,
    first: bool,
    claim: &mut Claim<'_>,
) -> HeadOutcome {
    let started = Instant::now();
    // Between requests the client may idle for `--keep-alive`; once it has sent a byte the whole head must
    // arrive within the header timeout.
    let mut idle_deadline = started + io.idle_timeout(first);
    let mut header_deadline: Option<Instant> = None;
    let mut scanned = 0;
    let max_head = http::max_head_size(&io.parser);
    loop {
        if !buf.is_empty() {
            // Parse only when the head can be complete (or a limit is certainly exceeded), so a client
            // sending one byte at a time costs one scan per byte, not one parse per byte.
            if head_complete(buf, scanned) || buf.len() > max_head || no_line_within_limit(buf, io)
            {
                match http::parse_request(buf, &io.parser) {
                    Ok(Parsed::Complete { head, consumed }) => {
                        buf.drain(..consumed);
                        return HeadOutcome::Head(Arc::new(head));
                    }
                    Ok(Parsed::Partial) => {}
                    Err(e) => return HeadOutcome::Refused(Some(e)),
                }
            }
            scanned = buf.len();
            // The head did not come in one piece: a slow client does not count as about to run, so
            // it must not keep the worker from accepting others.
            claim.release();
            if header_deadline.is_none() {
                header_deadline = Some(Instant::now() + io.header_timeout);
            }
        }
        if io.shutting_down.get() && buf.is_empty() {
            // Stopping: an idle connection gets a short grace for a request already on its way.
            idle_deadline = idle_deadline.min(Instant::now() + io.stop_idle_grace());
        }
        let deadline = header_deadline.unwrap_or(idle_deadline);
        let grace = if claim.held {
            started + RESERVATION_GRACE
        } else {
            deadline
        };
        let wake = grace.min(deadline);
        buf.reserve(READ_SIZE);
        tokio::select! {
            r = stream.read_buf(buf) => match r {
                // The client ended its side inside a head: a cut-off request (a truncating proxy, a
                // client that gave up). It may still be reading, so it gets its 400, and the log says so.
                // Blank lines alone are not a request begun (RFC 9112 §2.2).
                Ok(0) if buf.iter().any(|&b| b != b'\r' && b != b'\n') => {
                    return HeadOutcome::Refused(Some(HttpError::IncompleteHead));
                }
                Ok(0) => return HeadOutcome::Closed("the client closed it"),
                // A reset or another error: nobody is left to answer.
                Err(_) => {
                    return if buf.is_empty() {
                        HeadOutcome::Closed("the client closed it")
                    } else {
                        HeadOutcome::Refused(None)
                    };
                }
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(wake) => {
                if wake == grace && claim.held && grace < deadline {
                    claim.release();
                    continue;
                }
                return if !buf.is_empty() {
                    HeadOutcome::Refused(None)
                } else if io.shutting_down.get() {
                    HeadOutcome::Closed("the worker is stopping")
                } else if first {
                    HeadOutcome::Closed("no request arrived in time")
                } else {
                    HeadOutcome::Closed("idle for --keep-alive")
                };
            }
            _ = io.shutdown_signal.notified(), if buf.is_empty() => {}
        }
    }
}

/// True when the buffer holds more than a request line may be and still no line end: refuse now rather
/// than buffer up to the whole head size first.
fn no_line_within_limit(buf: &[u8], io: &IoState) -> bool {
    // The limit enforced, which is not the one configured above gunicorn's maximum.
    let limit = io.parser.request_line_limit();
    buf.len() > limit + 2 && memchr::memchr(b'\n', &buf[..limit + 2]).is_none()
}

/// The request body still on the socket.
enum BodyState {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    Done,
}

#[derive(Debug)]
enum BodyError {
    /// A bounded wait for body bytes ended before any arrived (the caller has a timer to serve).
    Pending,
    Io,
    Timeout,
    Closed,
    Http(HttpError),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Pending => f.write_str("waiting for the request body"),
            BodyError::Io => f.write_str("error reading the request body"),
            BodyError::Timeout => f.write_str("timed out reading the request body"),
            BodyError::Closed => f.write_str("client closed the connection before the body ended"),
            BodyError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl BodyError {
    /// The protocol violation to answer with, if the client can still read an answer: a malformed body,
    /// or one cut off by the client closing its side.
    fn http(&self) -> Option<HttpError> {
        match self {
            BodyError::Http(e) => Some(*e),
            BodyError::Closed => Some(HttpError::IncompleteBody),
            BodyError::Pending | BodyError::Io | BodyError::Timeout => None,
        }
    }
}

impl BodyState {
    fn is_done(&self) -> bool {
        matches!(self, BodyState::Done)
    }

    /// The next piece of decoded body, reading from the socket as needed; None at the end of the body.
    async fn next<S: Transport>(
        &mut self,
        stream: &mut S,
        buf: &mut Vec<u8>,
        read_timeout: Duration,
    ) -> Result<Option<Vec<u8>>, BodyError> {
        loop {
            match self {
                BodyState::Done => return Ok(None),
                BodyState::Length(remaining) => {
                    if *remaining == 0 {
                        *self = BodyState::Done;
                        return Ok(None);
                    }
                    if !buf.is_empty() {
                        let n = (*remaining).min(buf.len() as u64).min(BODY_CHUNK as u64) as usize;
                        let piece = take_front(buf, n);
                        *remaining -= n as u64;
                        if *remaining == 0 {
                            *self = BodyState::Done;
                        }
                        return Ok(Some(piece));
                    }
                }
                BodyState::Chunked(dec) => {
                    if !buf.is_empty() {
                        let mut out = Vec::new();
                        let (consumed, done) =
                            dec.decode(buf, &mut out).map_err(BodyError::Http)?;
                        buf.drain(..consumed);
                        if done {
                            *self = BodyState::Done;
                        }
                        if !out.is_empty() {
                            return Ok(Some(out));
                        }
                        if done {
                            return Ok(None);
                        }
                        if consumed > 0 {
                            continue;
                        }
                    }
                }
            }
            buf.reserve(BODY_CHUNK);
            match timeout(read_timeout, stream.read_buf(buf)).await {
                Err(_) => return Err(BodyError::Timeout),
                Ok(Err(_)) => return Err(BodyError::Io),
                Ok(Ok(0)) => return Err(BodyError::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Run one request through the Python threads and write its response. Returns whether the connection
/// may carry another request.
/// The body as the request starts: what is still on the socket, and what was read ahead.
struct BodyStart {
    body: BodyState,
    prefetched: Vec<u8>,
    expect_continue: bool,
}

/// Read (and so validate) the start of the body before the app runs, without holding any capacity: a
/// small body — the common POST — goes to Python whole with the request, saving a round trip between the
/// threads per read, and a malformed one is refused before the app is ever called. A client that waits
/// for `100 Continue` sends nothing until the app asks, so its body is left for the app to pull. The
/// whole read-ahead must arrive within the header timeout: a client trickling its body ties up nothing
/// but its own connection. None when the connection must close (after answering, where there is an
/// answer).
async fn start_body<S: Transport>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    io: &IoState,
    peer: &Peer,
) -> Option<BodyStart> {
    let mut body = match head.body {
        BodyKind::Empty => BodyState::Done,
        BodyKind::Length(n) => BodyState::Length(n),
        BodyKind::Chunked => BodyState::Chunked(Box::new(ChunkedDecoder::new(&io.parser))),
    };
    let expect_continue = head.expect_continue && !body.is_done();
    let mut prefetched = Vec::new();
    if !expect_continue {
        let deadline = Instant::now() + io.header_timeout;
        if let BodyState::Length(n) = body {
            // A body of known length that fits is read into one buffer of its size: no piecing together.
            if n <= PREFETCH_LIMIT as u64 {
                let n = n as usize;
                while buf.len() < n {
                    buf.reserve(n - buf.len());
                    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                        Ok(Ok(0)) => {
                            let e = HttpError::IncompleteBody;
                            refuse(stream, io, peer, &e, &http::error_response(&e)).await;
                            return None;
                        }
                        Ok(Err(_)) | Err(_) => return None,
                        Ok(Ok(_)) => {}
                    }
                }
                return Some(BodyStart {
                    body: BodyState::Done,
                    prefetched: take_front(buf, n),
                    expect_continue,
                });
            }
        }
        while !body.is_done() && prefetched.len() < PREFETCH_LIMIT {
            let next = tokio::time::timeout_at(deadline, body.next(stream, buf, io.header_timeout));
            match next.await {
                Ok(Ok(Some(d))) if prefetched.is_empty() => prefetched = d,
                Ok(Ok(Some(d))) => prefetched.extend_from_slice(&d),
                Ok(Ok(None)) => break,
                Ok(Err(e @ (BodyError::Http(_) | BodyError::Closed))) => {
                    let e = e.http().unwrap_or(HttpError::IncompleteBody);
                    refuse(stream, io, peer, &e, &http::error_response(&e)).await;
                    return None;
                }
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
    Some(BodyStart {
        body,
        prefetched,
        expect_continue,
    })
}

/// `start_body` needs nothing from the socket: the read-ahead is already buffered.
fn body_in_buffer(head: &RequestHead, buf: &[u8]) -> bool {
    match head.body {
        BodyKind::Empty => true,
        BodyKind::Length(n) => buf.len() as u64 >= n.min(PREFETCH_LIMIT as u64),
        BodyKind::Chunked => false,
    }
}

/// Run one request through the Python threads and write its response. `peers` are the connection's own
/// peer (which tells a loopback call) and the client the app sees (different behind a PROXY header).
/// Returns whether the connection may carry another request; `on_overflow` says where the request ran.
#[allow(clippy::too_many_arguments)]
async fn handle_request<S: Transport>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head: Arc<RequestHead>,
    start: BodyStart,
    https: bool,
    (conn_peer, peer): (&Arc<Peer>, &Arc<Peer>),
    server: &Arc<ServerAddr>,
    io: &IoState,
    claim: &mut Claim<'_>,
    on_overflow: &mut bool,
) -> bool {
    let BodyStart {
        mut body,
        prefetched,
        expect_continue,
    } = start;

    let (reply_tx, mut reply_rx) = mpsc::channel::<Out>(REPLY_QUEUE);
    let progress = Arc::new(Progress::default());
    // `--timeout` is checked here, on the I/O thread, so the client gets an answer even when the app thread
    // never comes back. Until Python has taken the request, the check just polls.
    let mut timeout_check = Instant::now() + TIMEOUT_POLL;
    // `--timeout` and `--slow-request-threshold` both watch the request's time in Python.
    let mut watched = io.request_timeout.is_some() || io.slow_threshold.is_some();
    let mut slow_reported = false;
    let mut start_rx: Option<oneshot::Receiver<()>> = None;
    let mut body_tx: Option<mpsc::Sender<BodyChunk>> = None;
    let stream_parts = if body.is_done() {
        None
    } else {
        let (s_tx, s_rx) = oneshot::channel();
        let (b_tx, b_rx) = mpsc::channel::<BodyChunk>(BODY_QUEUE);
        start_rx = Some(s_rx);
        body_tx = Some(b_tx);
        Some(BodyStream {
            start: Some(s_tx),
            rx: b_rx,
        })
    };
    let job = Job {
        head: head.clone(),
        peer: peer.clone(),
        server: server.clone(),
        body: RequestBody {
            prefetched,
            stream: stream_parts,
        },
        reply: reply_tx,
        progress: progress.clone(),
        https,
    };
    let dispatched = Instant::now();
    // Until a thread takes the request, the connection keeps its ticket and looks every `WAIT_POLL`
    // whether it is a loopback call to move to the overflow lane (the invariant in `admission`).
    let mut waiting = match io.admission.place(job, conn_peer, claim) {
        Some(Placed::Threads(ticket)) => Some(ticket),
        Some(Placed::Overflow) => {
            *on_overflow = true;
            None
        }
        None => return false,
    };
    if waiting.is_some() {
        timeout_check = Instant::now() + WAIT_POLL;
    }

    let mut continue_sent = false;
    // Set when the body could not be read to its end: whatever the app answers, the connection ends after
    // it because the framing of anything that follows is unknown.
    let mut framing_lost = false;
    // A body that turned out malformed after the app started is answered with the parser's status instead
    // of whatever the app makes of the failed read — as long as no response byte has gone out yet.
    let mut body_error: Option<HttpError> = None;
    let mut response_started = false;
    let keep_alive = loop {
        let pumping = start_rx.is_none() && body_tx.is_some();
        // The pump branch borrows `body_tx` for the whole select; it is dropped after it instead.
        let mut body_finished = false;
        tokio::select! {
            biased;
            out = reply_rx.recv() => {
                if matches!(out, Some(Out::Bytes(_) | Out::File(_))) {
                    if let (Some(e), false) = (&body_error, response_started) {
                        refuse(stream, io, peer, e, &http::error_response(e)).await;
                        return false;
                    }
                    response_started = true;
                }
                match out {
                    Some(Out::Bytes(bytes)) => {
                        if bytes.end.is_some() {
                            // Python is done with the request: the write that remains is the I/O thread's
                            // alone, so the thread's capacity is free for the next request now.
                            claim.release();
                        }
                        // A client that stops reading must not hold the app thread: give up after the
                        // timeout (the app's next send then fails and its iterable is closed).
                        let written = timeout(io.header_timeout, write_payload(stream, &bytes)).await;
                        if !matches!(written, Ok(Ok(()))) {
                            return false;
                        }
                        if let Some(keep_alive) = bytes.end {
                            break keep_alive;
                        }
                    }
                    Some(Out::File(body)) => {
                        // The file ends the response: Python is done, so a long download holds no thread.
                        claim.release();
                        let FileBody { head, file, offset, count, keep_alive } = *body;
                        let sent = timeout(io.header_timeout, async {
                            stream.write_all(&head).await?;
                            stream.send_file(&file, offset, count).await
                        })
                        .await;
                        if !matches!(sent, Ok(Ok(()))) {
                            return false;
                        }
                        break keep_alive;
                    }
                    Some(Out::Done { keep_alive }) => break keep_alive,
                    Some(Out::Abort) | None => return false,
                }
            }
            r = wait_start(start_rx.as_mut()) => {
                start_rx = None;
                if r.is_err() {
                    // The app finished with `wsgi.input` without reading past the prefetched part.
                    body_finished = true;
                } else if expect_continue && !continue_sent {
                    continue_sent = true;
                    if stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                        return false;
                    }
                }
            }
            _ = tokio::time::sleep_until(timeout_check), if watched || waiting.is_some() => {
                let started = progress.started_ns.load(Ordering::Acquire);
                if started == 0 {
                    if let Some(ticket) = &waiting {
                        if io.admission.recheck(ticket, conn_peer, claim) {
                            *on_overflow = true;
                            waiting = None;
                        }
                    }
                    let poll = if waiting.is_some() { WAIT_POLL } else { TIMEOUT_POLL };
                    timeout_check = Instant::now() + poll;
                    continue;
                }
                waiting = None;
                if !watched {
                    continue;
                }
                let elapsed = Duration::from_nanos(now_ns().saturating_sub(started));
                let thread = progress.thread.load(Ordering::Relaxed);
                if let Some(limit) = io.request_timeout.filter(|l| elapsed >= *l) {
                    io.request_timed_out(thread, elapsed.as_nanos() as u64);
                    if !response_started {
                        let body = format!(
                            "The request ran longer than the server's timeout ({} s).\n",
                            limit.as_secs()
                        );
                        progress.timed_out.store(true, Ordering::Release);
                        let _ = stream.write_all(&http::simple_response(504, &body, true)).await;
                        io.log_own_answer(&head, peer, 504, body.len(), elapsed);
                    }
                    return false;
                }
                if !slow_reported && io.slow_threshold.is_some_and(|s| elapsed >= s) {
                    slow_reported = true;
                    io.request_slow(thread, elapsed);
                }
                // Sleep until the nearest deadline still ahead.
                let next = [
                    io.request_timeout,
                    io.slow_threshold.filter(|_| !slow_reported),
                ]
                .into_iter()
                .flatten()
                .map(|d| d.saturating_sub(elapsed))
                .min();
                match next {
                    Some(d) => timeout_check = Instant::now() + d,
                    None => watched = false,
                }
            }
            // The worker is stopping and cannot finish this request (see `stop`).
            why = io.cut_off(waiting.as_deref()) => {
                super::stop::answer_cut_off(
                    stream,
                    io,
                    &head,
                    peer,
                    &progress,
                    waiting.as_deref(),
                    response_started,
                    why,
                    dispatched,
                )
                .await;
                return false;
            }
            permit = reserve(body_tx.as_ref()), if pumping => {
                match permit {
                    // The app dropped `wsgi.input`: stop pumping; the rest is drained after the response.
                    Err(_) => body_finished = true,
                    // Bounded by the next timer deadline, so `--timeout` fires even while the client is
                    // slow to send the body the app waits for.
                    Ok(permit) => match tokio::time::timeout_at(
                        if watched { timeout_check } else { Instant::now() + io.header_timeout },
                        body.next(stream, buf, io.header_timeout),
                    )
                    .await
                    .unwrap_or(Err(BodyError::Pending))
                    {
                        Ok(Some(data)) => permit.send(BodyChunk::Data(data)),
                        Ok(None) => {
                            permit.send(BodyChunk::End);
                            body_finished = true;
                        }
                        // Not an error: the timer is due; the permit goes back unused.
                        Err(BodyError::Pending) => {}
                        Err(e) => {
                            permit.send(BodyChunk::Failed(e.to_string()));
                            body_finished = true;
                            body = BodyState::Done;
                            framing_lost = true;
                            body_error = e.http();
                        }
                    },
                }
            }
        }
        if body_finished {
            body_tx = None;
        }
    };
    if !keep_alive || framing_lost {
        return false;
    }
    if body.is_done() {
        return true;
    }
    // The client was told to wait for 100 Continue and never got it: it may not send the body at all, so
    // the framing of what follows is unknown.
    if expect_continue && !continue_sent {
        return false;
    }
    drain(stream, buf, body, io.header_timeout).await
}

/// Split off the first `n` bytes of `buf`. The body piece is usually most of the buffer and what follows
/// (a pipelined request, if anything) is short, so the piece keeps the allocation and the rest is copied.
fn take_front(buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    if n == buf.len() {
        return std::mem::take(buf);
    }
    if n >= buf.len() - n {
        let rest = buf.split_off(n);
        return std::mem::replace(buf, rest);
    }
    let piece = buf[..n].to_vec();
    buf.drain(..n);
    piece
}

async fn wait_start(
    rx: Option<&mut oneshot::Receiver<()>>,
) -> Result<(), oneshot::error::RecvError> {
    match rx {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

async fn reserve(
    tx: Option<&mpsc::Sender<BodyChunk>>,
) -> Result<mpsc::Permit<'_, BodyChunk>, mpsc::error::SendError<()>> {
    match tx {
        Some(tx) => tx.reserve().await,
        None => std::future::pending().await,
    }
}

async fn drain<S: Transport>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    mut body: BodyState,
    read_timeout: Duration,
) -> bool {
    let mut drained = 0u64;
    while drained <= DRAIN_LIMIT {
        match body.next(stream, buf, read_timeout).await {
            Ok(Some(d)) => drained += d.len() as u64,
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
    false
}

/// Write a response piece: its parts with vectored writes, so a body borrowed from the app goes out beside
/// the head without being copied next to it.
async fn write_payload<S: Transport>(stream: &mut S, payload: &Payload) -> io::Result<()> {
    let body = payload.body.as_ref().map_or(&[][..], |b| b.as_slice());
    if body.is_empty() && payload.tail.is_empty() {
        return stream.write_all(&payload.head).await;
    }
    let mut parts = [
        IoSlice::new(&payload.head),
        IoSlice::new(body),
        IoSlice::new(&payload.tail),
    ];
    let mut left = &mut parts[..];
    IoSlice::advance_slices(&mut left, 0);
    while !left.is_empty() {
        let n = stream.write_vectored(left).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    Ok(())
}
