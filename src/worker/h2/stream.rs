//! One HTTP/2 stream: one request through the same path as an HTTP/1 request — its head checked by
//! `fhttp::h2_request_head` (HTTP/1's header policy), a small body read before the app runs, the job
//! placed and watched by `worker::watch` (the run queue, loopback calls, `--timeout`, the slow
//! threshold, a stopping worker's cut-off) — and its response's semantic pieces sent as HEADERS, DATA
//! and trailers. Flow control both ways: the client's window is released as the app reads the body
//! (a bounded queue between), and a response piece waits for the client's window before it is sent,
//! so a slow reader holds one piece, not the whole response. A stream the client resets ends here at
//! once: a request still queued is withdrawn, a running one reads an error from `wsgi.input` (ASGI:
//! `http.disconnect`).

use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::Arc;

use ::h2::server::SendResponse;
use ::h2::{Reason, RecvStream, SendStream};
use bytes::Bytes;
use tokio::time::{timeout, Instant};

use super::Conn;
use crate::exchange::{BodyChunk, ConnInfo, FileBody, HeadInfo, Out, Piece};
use crate::http::{self as fhttp, HttpError, RequestHead};
use crate::worker::admission::Claim;
use crate::worker::static_files::{self, Body};
use crate::worker::watch::{
    client_left, job, reserve, wait_start, JobEnds, OwnAnswer, Tick, Watch,
};
use crate::worker::IoState;
use ::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response};

/// A body up to this size (by its `Content-Length`) is read whole before the app is called, as an
/// HTTP/1 read-ahead: most form posts and JSON bodies. The default stream window is as large.
const PREFETCH_LIMIT: u64 = 64 * 1024;
/// A file body is read and sent in blocks of this size.
const FILE_BLOCK: usize = 64 * 1024;

/// Where the response stands.
enum Reply {
    /// No head sent yet.
    Head(SendResponse<Bytes>),
    /// The head went out; the body goes on.
    Body(SendStream<Bytes>),
    /// The stream is over (ended or reset).
    Done,
}

impl Reply {
    fn reset(&mut self, reason: Reason) {
        match std::mem::replace(self, Reply::Done) {
            Reply::Head(mut r) => r.send_reset(reason),
            Reply::Body(mut s) => s.send_reset(reason),
            Reply::Done => {}
        }
    }

    /// Resolves when the client resets the stream.
    async fn client_reset(&mut self) -> Reason {
        let got = std::future::poll_fn(|cx| match self {
            Reply::Head(r) => r.poll_reset(cx),
            Reply::Body(s) => s.poll_reset(cx),
            Reply::Done => std::task::Poll::Pending,
        })
        .await;
        got.unwrap_or(Reason::CANCEL)
    }
}

impl OwnAnswer for Reply {
    async fn send(&mut self, status: u16, body: &str) -> bool {
        let Reply::Head(r) = self else {
            return false;
        };
        let response = Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .header("content-length", body.len())
            .header("server", "ferricorn")
            .body(());
        let Ok(response) = response else {
            return false;
        };
        let sent = r
            .send_response(response, false)
            .and_then(|mut s| s.send_data(Bytes::copy_from_slice(body.as_bytes()), true));
        *self = Reply::Done;
        sent.is_ok()
    }
}

/// What an event of the exchange leads to.
enum Step {
    Continue,
    Finished,
    /// The stream ends now (reset, or the response could not be completed).
    Close,
}

/// Serve one stream until its response has ended or it was reset.
pub(super) async fn run(
    io: Rc<IoState>,
    conn: Rc<Conn>,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let mut claim = io.admission.claim(false);
    let mut reply = Reply::Head(respond);
    exchange(&io, &conn, request, &mut reply, &mut claim).await;
    drop(claim);
    conn.live.set(conn.live.get().saturating_sub(1));
    conn.changed.notify_one();
}

/// The request's head, or why it is refused.
fn head_of(request: &::http::request::Parts, io: &IoState) -> Result<RequestHead, HttpError> {
    let uri = &request.uri;
    let authority = uri.authority().map(|a| a.as_str());
    let target = if request.method == Method::CONNECT {
        authority.unwrap_or("")
    } else {
        uri.path_and_query().map_or("", |p| p.as_str())
    };
    // RFC 9113 §8.2.3: a client may split `Cookie` into one field per cookie; the app sees one.
    let mut cookies: Vec<u8> = Vec::new();
    let mut fields: Vec<(&str, &[u8])> = Vec::with_capacity(request.headers.len() + 1);
    for (name, value) in &request.headers {
        if name == header::COOKIE {
            if !cookies.is_empty() {
                cookies.extend_from_slice(b"; ");
            }
            cookies.extend_from_slice(value.as_bytes());
        } else {
            fields.push((name.as_str(), value.as_bytes()));
        }
    }
    if !cookies.is_empty() {
        fields.push(("cookie", &cookies));
    }
    fhttp::h2_request_head(
        request.method.as_str(),
        target,
        authority,
        &fields,
        &io.parser,
    )
}

async fn exchange(
    io: &IoState,
    conn: &Conn,
    request: Request<RecvStream>,
    reply: &mut Reply,
    claim: &mut Claim<'_>,
) {
    let (parts, mut recv) = request.into_parts();
    // The connection's own peer decides trust and loopback calls; the client a PROXY header named is
    // the one the app, the log and the answers see (as on HTTP/1).
    let peer = &conn.peer;
    let client = &conn.client;
    // Over TLS the scheme is https whatever a proxy's headers say (they are still checked).
    let checked = head_of(&parts, io).and_then(|head| {
        let https = io.forwarded.https(&head, peer)? || conn.tls.is_some();
        Ok((Arc::new(head), https))
    });
    drop(parts);
    let (head, https) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            // As HTTP/1 refuses it: the status from `http`'s table, one WARNING naming the client.
            io.ctx
                .log
                .warning(&format!("Invalid request from ip={}: {e}", peer.ip));
            reply.send(e.status(), &format!("{e}\n")).await;
            return;
        }
    };
    // A path under a `--static-map` mount is answered here, on the I/O thread, without Python (as on
    // HTTP/1).
    if let Some((mount, rest)) = static_files::mount_for(&io.ctx.cfg.static_map, &head.path) {
        claim.release();
        serve_static(io, client, &head, mount, rest, reply).await;
        return;
    }
    // A small body is read before the app runs, without holding capacity.
    let mut prefetched = Vec::new();
    let mut body_done = recv.is_end_stream();
    if let fhttp::BodyKind::Length(n) = head.body {
        if n <= PREFETCH_LIMIT && !body_done {
            let deadline = Instant::now() + io.header_timeout;
            loop {
                match tokio::time::timeout_at(deadline, recv.data()).await {
                    Ok(Some(Ok(data))) => {
                        let _ = recv.flow_control().release_capacity(data.len());
                        prefetched.extend_from_slice(&data);
                    }
                    Ok(None) => {
                        body_done = true;
                        break;
                    }
                    // Reset by the client, or a body that does not match its length: h2 reset it.
                    Ok(Some(Err(_))) => return,
                    Err(_) => break,
                }
                if recv.is_end_stream() {
                    body_done = true;
                    break;
                }
            }
        }
    }
    let dispatched = Instant::now();
    let info = ConnInfo {
        peer: client.clone(),
        server: conn.server.clone(),
        https,
        sendfile: false,
        tls: conn.tls.clone(),
    };
    let (job, ends) = job(head.clone(), info, prefetched, !body_done);
    let JobEnds {
        reply: mut reply_rx,
        progress,
        start: mut start_rx,
        body: mut body_tx,
    } = ends;
    let mut watch = Watch::new(io);
    if !watch.place(io, job, peer, claim) {
        reply.reset(Reason::REFUSED_STREAM);
        return;
    }
    // With the whole request in the app, its response will come without anything more from the
    // client: until it begins, the connection's writes wait for it (see `cork`). A request whose body
    // is still to come is not waited for (the client may be waiting for another response first).
    let mut expecting = body_done.then(|| super::cork::Expecting::new(conn));
    let mut response_started = false;
    let mut ran = true;
    let mut reset: Option<Reason> = None;
    loop {
        let pumping = start_rx.is_none() && body_tx.is_some();
        let mut body_finished = false;
        let step = tokio::select! {
            biased;
            out = reply_rx.recv() => {
                if matches!(out, Some(Out::Piece(_) | Out::File(_))) {
                    response_started = true;
                }
                if let Some(e) = expecting.as_mut() {
                    e.begun();
                }
                on_out(io, reply, claim, out).await
            }
            reason = reply.client_reset() => {
                // The client cancelled the request: one still queued never runs; a running one is told.
                if let Some(ticket) = watch.waiting.take() {
                    ran = io.admission.withdraw(&ticket).is_none();
                }
                reset = Some(reason);
                *reply = Reply::Done;
                Step::Close
            }
            r = wait_start(start_rx.as_mut()) => {
                start_rx = None;
                if r.is_err() {
                    // The app finished with `wsgi.input` without reading past the prefetched part.
                    body_finished = true;
                }
                Step::Continue
            }
            _ = tokio::time::sleep_until(watch.check), if watch.armed() => {
                let tick = watch
                    .tick(io, &progress, &head, client, peer, claim, response_started, reply)
                    .await;
                match tick {
                    Tick::Continue => Step::Continue,
                    Tick::TimedOut => {
                        if response_started {
                            io.ctx.log.error(&format!(
                                "{} {} from {} (HTTP/2 stream) passed --timeout after its response had begun: the stream was reset (RST_STREAM CANCEL)",
                                head.method, head.target, client.label()
                            ));
                        }
                        reply.reset(Reason::CANCEL);
                        Step::Close
                    }
                }
            }
            // The worker is stopping and cannot finish this request (see `stop`).
            why = io.cut_off(watch.waiting.as_deref()) => {
                crate::worker::stop::answer_cut_off(
                    reply,
                    io,
                    &head,
                    client,
                    &progress,
                    watch.waiting.as_deref(),
                    response_started,
                    why,
                    dispatched,
                )
                .await;
                reply.reset(Reason::CANCEL);
                Step::Close
            }
            permit = reserve(body_tx.as_ref()), if pumping => {
                match permit {
                    // The app dropped `wsgi.input`: stop pumping.
                    Err(_) => body_finished = true,
                    Ok(permit) => {
                        let deadline = watch.read_deadline(io);
                        match tokio::time::timeout_at(deadline, recv.data()).await {
                            // A timer is due first: the permit goes back unused.
                            Err(_) => {}
                            Ok(Some(Ok(data))) => {
                                // The window opens again as the app takes the body.
                                let _ = recv.flow_control().release_capacity(data.len());
                                permit.send(BodyChunk::Data(data.to_vec()));
                            }
                            Ok(None) => {
                                permit.send(BodyChunk::End);
                                body_finished = true;
                            }
                            Ok(Some(Err(e))) => {
                                let why = match e.reason() {
                                    Some(r) if e.is_reset() => format!("the client reset the stream ({r:?})"),
                                    _ => format!("the request body failed: {e}"),
                                };
                                permit.send(BodyChunk::Failed(why));
                                body_finished = true;
                            }
                        }
                    }
                }
                Step::Continue
            }
        };
        if let Some(reason) = reset {
            if let Some(tx) = body_tx.take() {
                let _ = tx.try_send(BodyChunk::Failed(format!(
                    "the client reset the stream ({reason:?})"
                )));
            }
        }
        if body_finished {
            body_tx = None;
        }
        match step {
            Step::Continue => {}
            Step::Finished => break,
            Step::Close => {
                client_left(&progress);
                break;
            }
        }
    }
    if watch.on_overflow {
        io.admission.overflow_done();
    } else if ran {
        io.request_done(dispatched.elapsed());
    }
    claim.release();
    io.check_recycle();
}

/// A response piece from the app runtime (None: the runtime dropped the request).
async fn on_out(io: &IoState, reply: &mut Reply, claim: &mut Claim<'_>, out: Option<Out>) -> Step {
    match out {
        Some(Out::Piece(piece)) => {
            if piece.end {
                // Python is done with the request: what remains is the I/O thread's alone.
                claim.release();
            }
            let end = piece.end;
            match timeout(io.header_timeout, send_piece(reply, *piece)).await {
                Ok(true) if end => Step::Finished,
                Ok(true) => Step::Continue,
                // The client does not open its window within the timeout (or the stream broke): a
                // stalled reader does not hold the app.
                _ => {
                    reply.reset(Reason::CANCEL);
                    Step::Close
                }
            }
        }
        Some(Out::File(body)) => {
            claim.release();
            match timeout(io.header_timeout * 4, send_file(reply, *body)).await {
                Ok(true) => Step::Finished,
                _ => {
                    reply.reset(Reason::CANCEL);
                    Step::Close
                }
            }
        }
        Some(Out::Interim(interim)) => {
            if let Reply::Head(r) = reply {
                let mut b = Response::builder().status(interim.status);
                for (n, v) in &interim.headers {
                    b = b.header(n.as_slice(), v.as_slice());
                }
                if let Ok(resp) = b.body(()) {
                    let _ = r.send_informational(resp);
                }
            }
            Step::Continue
        }
        Some(Out::Abort) | None => {
            reply.reset(Reason::INTERNAL_ERROR);
            Step::Close
        }
    }
}

/// The HTTP/2 head of an app's response: its status and fields, less the fields HTTP/2 forbids
/// (connection-specific ones), with `server` and `date` as HTTP/1 adds them and the length when the
/// whole body is known.
fn response_head<'a>(
    info: &HeadInfo,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    total: Option<u64>,
) -> Option<Response<()>> {
    let mut b = Response::builder().status(info.status);
    let (mut has_server, mut has_date, mut has_length) = (false, false, false);
    for (name, value) in fields {
        let Ok(name) = HeaderName::from_bytes(name) else {
            continue;
        };
        if fhttp::is_hop_by_hop(name.as_str()) || name == "proxy-connection" {
            continue;
        }
        has_server |= name == header::SERVER;
        has_date |= name == header::DATE;
        has_length |= name == header::CONTENT_LENGTH;
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        b = b.header(name, value);
    }
    if !has_server {
        b = b.header(header::SERVER, "ferricorn");
    }
    if !has_date {
        let mut line = Vec::with_capacity(40);
        fhttp::write_date_header(&mut line);
        if let Some(v) = line
            .strip_prefix(b"Date: ")
            .and_then(|v| v.strip_suffix(b"\r\n"))
        {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                b = b.header(header::DATE, v);
            }
        }
    }
    let forbids_body = info.status < 200 || info.status == 204 || info.status == 304;
    if let (false, false, Some(n)) = (has_length, forbids_body, info.content_length.or(total)) {
        b = b.header(header::CONTENT_LENGTH, n);
    }
    b.body(()).ok()
}

/// Send the head if there is one (`END_STREAM` on it when `end`); the stream to send the body on.
fn start(
    reply: &mut Reply,
    head: Option<Response<()>>,
    end: bool,
) -> Option<&mut SendStream<Bytes>> {
    if let Some(response) = head {
        let Reply::Head(r) = reply else {
            return None;
        };
        match r.send_response(response, end) {
            Ok(s) if !end => *reply = Reply::Body(s),
            _ => {
                *reply = Reply::Done;
                return None;
            }
        }
    }
    match reply {
        Reply::Body(s) => Some(s),
        _ => None,
    }
}

/// Send one piece; false when the stream broke.
async fn send_piece(reply: &mut Reply, mut piece: Piece) -> bool {
    let head = match piece.head.as_ref().zip(piece.fields()) {
        Some((info, fields)) => match response_head(info, fields, piece.total) {
            Some(r) => Some(r),
            None => return false,
        },
        None => None,
    };
    let packed = piece.head.map_or(0, |h| h.packed_len);
    let mut parts: Vec<Bytes> = Vec::with_capacity(3);
    let buf = Bytes::from(std::mem::take(&mut piece.buf));
    let data = buf.slice(packed.min(buf.len())..);
    if !data.is_empty() {
        parts.push(data);
    }
    if let Some(borrowed) = piece.borrowed.take() {
        parts.push(Bytes::from_owner(borrowed));
    }
    if !piece.after.is_empty() {
        parts.push(Bytes::from(std::mem::take(&mut piece.after)));
    }
    let trailers = trailer_map(&piece.trailers);
    let end_with_data = piece.end && trailers.is_none();
    let headers_only = parts.is_empty() && end_with_data;
    let had_head = head.is_some();
    let Some(tx) = start(reply, head, headers_only) else {
        // Sent with END_STREAM on the head, or the stream is gone.
        return headers_only && had_head;
    };
    let count = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        if !send_data(tx, part, end_with_data && i + 1 == count).await {
            return false;
        }
    }
    if count == 0 && end_with_data && tx.send_data(Bytes::new(), true).is_err() {
        return false;
    }
    if piece.end {
        if let Some(t) = trailers {
            if tx.send_trailers(t).is_err() {
                return false;
            }
        }
        *reply = Reply::Done;
    }
    true
}

/// Trailer fields as HTTP/2 sends them (names the protocol cannot carry are dropped).
fn trailer_map(trailers: &[(String, String)]) -> Option<HeaderMap> {
    if trailers.is_empty() {
        return None;
    }
    let mut map = HeaderMap::new();
    for (n, v) in trailers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            if !fhttp::is_hop_by_hop(n.as_str()) {
                map.append(n, v);
            }
        }
    }
    (!map.is_empty()).then_some(map)
}

/// Send `data` as the client's window allows, waiting for it; false when the stream broke.
async fn send_data(tx: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> bool {
    while !data.is_empty() {
        tx.reserve_capacity(data.len());
        let granted = match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            _ => return false,
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        let last = data.is_empty() && end;
        if tx.send_data(chunk, last).is_err() {
            return false;
        }
    }
    true
}

/// A file body, read in blocks and sent as the window allows.
async fn send_file(reply: &mut Reply, body: FileBody) -> bool {
    let head = match body.head.as_ref().zip(body.fields()) {
        Some((info, fields)) => match response_head(info, fields, Some(body.count)) {
            Some(r) => Some(r),
            None => return false,
        },
        None => None,
    };
    let empty = body.count == 0;
    let had_head = head.is_some();
    let Some(tx) = start(reply, head, empty) else {
        return empty && had_head;
    };
    if !send_file_range(tx, &body.file, body.offset, body.count).await {
        return false;
    }
    *reply = Reply::Done;
    true
}

/// `count` bytes of `file` from `offset`, read in blocks and sent as the window allows, the last with
/// END_STREAM; false when the stream broke.
async fn send_file_range(
    tx: &mut SendStream<Bytes>,
    file: &std::fs::File,
    mut offset: u64,
    count: u64,
) -> bool {
    let end = offset + count;
    while offset < end {
        let n = ((end - offset) as usize).min(FILE_BLOCK);
        let mut block = vec![0u8; n];
        match file.read_at(&mut block, offset) {
            Ok(0) | Err(_) => return false,
            Ok(got) => {
                block.truncate(got);
                offset += got as u64;
                if !send_data(tx, Bytes::from(block), offset >= end).await {
                    return false;
                }
            }
        }
    }
    true
}

/// A request under a `--static-map` mount: `static_files` decides the answer, sent here as HEADERS
/// (with the length, `server` and `date` as for an app's response) and DATA, then logged as any
/// request. A request body is not read (h2 resets the stream's receiving side when it is dropped).
async fn serve_static(
    io: &IoState,
    peer: &crate::exchange::Peer,
    head: &RequestHead,
    mount: &crate::config::StaticMount,
    rest: &str,
    reply: &mut Reply,
) {
    let t0 = std::time::Instant::now();
    let started_at = std::time::SystemTime::now();
    let a = static_files::answer(io, head, mount, rest);
    let total = a.len();
    let info = HeadInfo {
        status: a.status,
        content_length: None,
        close: false,
        packed_len: 0,
    };
    let fields = a.fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()));
    let bodiless = head.method == "HEAD" || a.status == 304 || total == 0;
    let sent = match response_head(&info, fields, Some(total)) {
        None => false,
        Some(response) => timeout(io.header_timeout * 4, async {
            match start(reply, Some(response), bodiless) {
                None => bodiless,
                Some(tx) => match &a.body {
                    Body::Text(t) => send_data(tx, Bytes::from_static(t.as_bytes()), true).await,
                    Body::File {
                        file,
                        offset,
                        count,
                    } => send_file_range(tx, file, *offset, *count).await,
                },
            }
        })
        .await
        .unwrap_or(false),
    };
    if !sent {
        reply.reset(Reason::CANCEL);
    }
    *reply = Reply::Done;
    // As on HTTP/1: `record` counts no body for HEAD and 304.
    static_files::record(
        io,
        head,
        peer,
        &a,
        sent.then_some(total),
        started_at,
        t0.elapsed(),
    );
}
