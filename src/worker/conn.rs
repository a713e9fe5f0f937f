//! One client connection on a worker's I/O thread: read and parse request heads (with the idle and header
//! timeouts), refuse malformed requests, hand each request to the Python threads, stream its body to
//! `wsgi.input` on demand, write the response pieces as they come, and keep the connection alive or close it.
//!
//! Requests on one connection are handled strictly one after another, so pipelined requests are answered in
//! order without any reordering logic: the next head is parsed from the buffer only after the previous
//! response is complete.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};

use super::exchange::{
    BodyChunk, BodyStream, FileBody, Job, Out, Payload, Peer, Progress, RequestBody, ServerAddr,
    BODY_CHUNK, BODY_QUEUE, REPLY_QUEUE,
};
use super::{proxy, Admission, IoState};
use crate::http::{self, BodyKind, ChunkedDecoder, HttpError, Parsed, RequestHead};
use crate::scoreboard::now_ns;
use std::sync::atomic::Ordering;

/// A byte stream the worker serves: TCP or a unix socket.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + AsRawFd {
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>>;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

impl Stream for tokio::net::TcpStream {
    async fn writable(&self) -> io::Result<()> {
        tokio::net::TcpStream::writable(self).await
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        tokio::net::TcpStream::try_io(self, interest, f)
    }
}

impl Stream for tokio::net::UnixStream {
    async fn writable(&self) -> io::Result<()> {
        tokio::net::UnixStream::writable(self).await
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        tokio::net::UnixStream::try_io(self, interest, f)
    }
}

/// How long a freshly accepted connection keeps its claim on the worker's capacity while its first request
/// head arrives. A client slower than this stops counting as "about to run", so a trickling client cannot
/// stop the worker from accepting others.
const RESERVATION_GRACE: Duration = Duration::from_millis(200);
/// Body left unread by the app is drained (to keep the connection) up to this much; beyond it the
/// connection is closed instead, so an unwanted upload never costs more than this.
const DRAIN_LIMIT: u64 = 1024 * 1024;
const READ_SIZE: usize = 16 * 1024;
/// How often a queued request is checked for having started in Python (its timeout clock starts then).
const TIMEOUT_POLL: Duration = Duration::from_millis(250);
/// How much body is read before the app is called (see `start_body`). Most form posts and JSON bodies fit,
/// so the app gets them with the request instead of pulling them across threads piece by piece; it bounds
/// the memory a connection can hold before its request runs.
const PREFETCH_LIMIT: usize = 256 * 1024;

enum HeadOutcome {
    /// Shared: the Python thread reads it, and the connection keeps it to log a 504 of its own.
    Head(Arc<RequestHead>),
    /// Clean end: the client closed or idled out between requests.
    Closed,
    /// The client sent something that is not a request, or timed out mid-head: answer (if a status is
    /// given) and close.
    Refused(Option<HttpError>),
}

/// The connection's claim on worker capacity, if it still holds one.
struct Claim<'a> {
    io: &'a IoState,
    held: bool,
}

impl Claim<'_> {
    fn release(&mut self) {
        if self.held {
            self.held = false;
            self.io.release();
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

pub async fn serve<S: Stream>(
    mut stream: S,
    peer: Arc<Peer>,
    server: Arc<ServerAddr>,
    io: Rc<IoState>,
    admission: Admission,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
    // A connection admitted within capacity holds one unit of it from accept.
    let mut claim = Claim {
        io: &io,
        held: admission == Admission::Claimed,
    };
    let mut overflow = admission == Admission::Overflow;
    let mut held = admission == Admission::Held;
    let mut first = true;
    // PROXY protocol (`--proxy-protocol`, see `proxy`): a load balancer's header before the first request
    // names the client the app sees. The connection's own peer still decides loopback calls and
    // `--forwarded-allow-ips`, as gunicorn judges forwarded headers by the socket peer.
    let mut client = peer.clone();
    let mut refused = false;
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
                if let Some(err) = err {
                    refuse(&mut stream, &io, &peer, &err, &err.response()).await;
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
            HeadOutcome::Closed => break,
            HeadOutcome::Refused(err) => {
                if let Some(err) = err {
                    refuse(&mut stream, &io, &peer, &err, &http::error_response(&err)).await;
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
            break;
        };
        if held {
            // Accepted while full, to look for a loopback call: wait for a free thread, or until this
            // connection is known to be such a call.
            let admitted = io.wait_for_admission(&peer).await;
            held = false;
            io.board_handle().remove_held();
            if admitted == Admission::Overflow {
                overflow = true;
            }
        }
        if overflow {
            io.warn_loopback(&head.method, &head.target, &peer);
        } else {
            // The request runs now: it holds one unit of capacity until its response is complete, whether
            // it converts the accept-time claim or takes a new one.
            if !claim.held {
                io.acquire();
                claim.held = true;
            }
        }
        let dispatched = Instant::now();
        let keep = handle_request(
            &mut stream,
            &mut buf,
            head,
            start,
            https,
            &client,
            &server,
            &io,
            overflow,
            &mut claim,
        )
        .await;
        if overflow {
            io.overflow_done();
        } else {
            io.record_duration(dispatched.elapsed());
        }
        claim.release();
        io.check_recycle();
        // A stopping worker still answers what arrives on a kept-alive connection (with
        // `Connection: close`) rather than closing it under a client that may be sending right now.
        if !keep {
            break;
        }
    }
    if held {
        io.board_handle().remove_held();
    }
    drop(claim);
    // Dropping the stream closes it, which sends the FIN: a shutdown(2) first would only cost one more
    // system call per connection.
    drop(stream);
    io.connection_closed();
}

/// Answer a request that breaks the protocol, and say so in the error log as gunicorn does: one WARNING
/// naming the client and what was wrong, so a misbehaving client or proxy is visible without a capture.
async fn refuse<S: Stream>(
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

async fn read_head<S: Stream>(
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
                Ok(0) | Err(_) => {
                    // EOF mid-head is a truncated request: close without an answer, as there is no
                    // complete request to answer.
                    return if buf.is_empty() { HeadOutcome::Closed } else { HeadOutcome::Refused(None) };
                }
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(wake) => {
                if wake == grace && claim.held && grace < deadline {
                    claim.release();
                    continue;
                }
                return if buf.is_empty() { HeadOutcome::Closed } else { HeadOutcome::Refused(None) };
            }
            _ = io.shutdown_signal.notified(), if buf.is_empty() => {}
        }
    }
}

/// True when the buffer holds more than a request line may be and still no line end: refuse now rather
/// than buffer up to the whole head size first.
fn no_line_within_limit(buf: &[u8], io: &IoState) -> bool {
    let limit = io.parser.limit_request_line;
    limit > 0 && buf.len() > limit + 2 && memchr::memchr(b'\n', &buf[..limit + 2]).is_none()
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

impl BodyState {
    fn is_done(&self) -> bool {
        matches!(self, BodyState::Done)
    }

    /// The next piece of decoded body, reading from the socket as needed; None at the end of the body.
    async fn next<S: Stream>(
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
async fn start_body<S: Stream>(
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
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
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
                Ok(Err(BodyError::Http(e))) => {
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

#[allow(clippy::too_many_arguments)]
async fn handle_request<S: Stream>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head: Arc<RequestHead>,
    start: BodyStart,
    https: bool,
    peer: &Arc<Peer>,
    server: &Arc<ServerAddr>,
    io: &IoState,
    overflow: bool,
    claim: &mut Claim<'_>,
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
    let queued = if overflow {
        io.dispatch_overflow(job)
    } else {
        io.queue.send(job).is_ok()
    };
    if !queued {
        return false;
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
                            send_file(stream, &file, offset, count).await
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
            _ = tokio::time::sleep_until(timeout_check), if watched => {
                let started = progress.started_ns.load(Ordering::Acquire);
                if started == 0 {
                    timeout_check = Instant::now() + TIMEOUT_POLL;
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
            why = io.cut_off(&progress, overflow) => {
                super::stop::answer_cut_off(
                    stream, io, &head, peer, &progress, response_started, why, dispatched,
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
                            if let BodyError::Http(e) = e {
                                body_error = Some(e);
                            }
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

async fn drain<S: Stream>(
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
async fn write_payload<S: Stream>(stream: &mut S, payload: &Payload) -> io::Result<()> {
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

/// Unsent bytes a TCP socket may hold while a file is sent (`TCP_NOTSENT_LOWAT`).
const FILE_UNSENT_LIMIT: libc::c_int = 64 * 1024;

/// Keep at most `FILE_UNSENT_LIMIT` of a file queued unsent in the socket. Without a limit one sendfile
/// call queues megabytes, and the kernel transmits them as the client's ACKs come back — on loopback, on
/// the client's CPU (the bench's file row: wrk at 100% of a core, the worker at a quarter). With the
/// limit, each call's data leaves at once from the worker's own thread and the client only receives:
/// 2.5k → 5.2k req/s for the 1 MiB file (bench/README.md). On a unix socket the option does not exist and
/// the call fails harmlessly.
fn limit_unsent(fd: RawFd) {
    let limit = FILE_UNSENT_LIMIT;
    // SAFETY: `fd` is an open socket for the duration of the call; the option value is a c_int we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&limit as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Send `count` bytes of `file` from `offset` with sendfile(2), waiting for the socket to drain as needed.
async fn send_file<S: Stream>(
    stream: &mut S,
    file: &std::fs::File,
    offset: u64,
    count: u64,
) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    stream.flush().await?;
    let out_fd: RawFd = stream.as_raw_fd();
    limit_unsent(out_fd);
    let in_fd = file.as_raw_fd();
    let mut off = offset as libc::off_t;
    let end = offset + count;
    while (off as u64) < end {
        stream.writable().await?;
        let want = ((end - off as u64) as usize).min(1 << 30);
        let res = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: both fds are open for the duration of the call; `off` is ours.
            let n = unsafe { libc::sendfile(out_fd, in_fd, &mut off, want) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match res {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than announced",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
