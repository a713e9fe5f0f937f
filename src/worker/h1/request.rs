//! One request's exchange with the app, on its HTTP/1 connection: the request goes to `admission` as a
//! job, and until its response has ended this module serves the events around it — response pieces to
//! frame and write, the app asking for the body (`100 Continue`, then pumping it to the runtime), the
//! 0.1 s looks at a ticket still waiting (loopback calls), `--timeout`'s 504 and
//! `--slow-request-threshold`, and a stopping worker's cut-off.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::{timeout, Instant};

use super::body::{drain, BodyError, BodyStart, BodyState};
use super::refuse;
use super::write::{facts, write_piece, write_pieces, Framed, BATCH_MAX};
use crate::exchange::{BodyChunk, ConnInfo, FileBody, Out, Peer, Piece, Progress, ServerAddr};
use crate::http::framing::H1Response;
use crate::http::{self, HttpError, RequestHead};
use crate::worker::admission::Claim;
use crate::worker::transport::Transport;
use crate::worker::watch::{client_left, job, reserve, wait_start, H1Answer, JobEnds, Tick, Watch};
use crate::worker::IoState;

/// A parsed request, ready for the app.
pub(super) struct Request<'a> {
    pub head: Arc<RequestHead>,
    pub start: BodyStart,
    /// `wsgi.url_scheme` is https.
    pub https: bool,
    /// The connection's own peer, which tells a loopback call.
    pub conn_peer: &'a Arc<Peer>,
    /// The client the app sees (different behind a PROXY header).
    pub peer: &'a Arc<Peer>,
    pub server: &'a Arc<ServerAddr>,
    /// When the request was handed to the app side.
    pub dispatched: Instant,
    /// The connection's framing buffers, reused request after request.
    pub frame: &'a mut Framed,
}

/// How a request's exchange ended.
pub(super) struct Ended {
    /// The connection may carry another request.
    pub keep: bool,
    /// The request ran on the overflow lane (a loopback call), not on the worker's threads.
    pub on_overflow: bool,
}

/// What an event of the exchange leads to.
enum Step {
    Continue,
    /// The response is complete: the connection may carry another request if this says so.
    Finished(bool),
    /// The connection must close now.
    Close,
}

/// The state of one exchange while its response is not complete.
struct Exchange<'a> {
    io: &'a IoState,
    head: Arc<RequestHead>,
    peer: &'a Arc<Peer>,
    progress: Arc<Progress>,
    body: BodyState,
    expect_continue: bool,
    continue_sent: bool,
    /// The response's HTTP/1 framing, decided as its pieces arrive (see `http::framing`).
    h1: H1Response,
    frame: &'a mut Framed,
    /// Placement, the ticket's looks, `--timeout` and the slow threshold (see `watch`).
    watch: Watch,
    /// The body could not be read to its end: whatever the app answers, the connection ends after it,
    /// because the framing of anything that follows is unknown.
    framing_lost: bool,
    /// A body that turned out malformed after the app started is answered with the parser's status
    /// instead of whatever the app makes of the failed read — as long as no response byte went out.
    body_error: Option<HttpError>,
    response_started: bool,
    dispatched: Instant,
    /// Whether, and when next, the socket is looked at for a client that went away.
    watch_gone: bool,
    gone_check: Instant,
}

/// How often a connection whose runtime wants to know (see `AppRuntime::watches_disconnect`) looks
/// whether its client went away while the app runs.
const GONE_POLL: Duration = Duration::from_millis(100);

/// Run one request through the app runtime and write its response.
pub(super) async fn run<S: Transport>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    io: &IoState,
    claim: &mut Claim<'_>,
    req: Request<'_>,
) -> Ended {
    let Request {
        head,
        start,
        https,
        conn_peer,
        peer,
        server,
        dispatched,
        frame,
    } = req;
    let BodyStart {
        body,
        prefetched,
        expect_continue,
    } = start;
    let conn = ConnInfo {
        peer: peer.clone(),
        server: server.clone(),
        https,
        sendfile: stream.sendfile_capable(),
        tls: stream.tls().cloned(),
    };
    let (job, ends) = job(head.clone(), conn, prefetched, !body.is_done());
    let JobEnds {
        reply: mut reply_rx,
        progress,
        start: mut start_rx,
        body: mut body_tx,
    } = ends;
    let mut x = Exchange {
        io,
        h1: H1Response::new(
            head.version_minor,
            &head.method,
            head.keep_alive && io.ctx.cfg.keepalive > 0,
        ),
        head,
        peer,
        progress,
        body,
        expect_continue,
        continue_sent: false,
        frame,
        watch: Watch::new(io),
        framing_lost: false,
        body_error: None,
        response_started: false,
        dispatched,
        watch_gone: io.ctx.runtime.watches_disconnect(),
        gone_check: Instant::now() + GONE_POLL,
    };
    if !x.watch.place(io, job, conn_peer, claim) {
        return x.ended(false);
    }

    // What the runtime queued after a batch of pieces that is not a piece (see `on_out`): taken next.
    let mut held: Option<Out> = None;
    let keep_alive = loop {
        if let Some(out) = held.take() {
            match x
                .on_out(stream, claim, Some(out), &mut reply_rx, &mut held)
                .await
            {
                Step::Continue => continue,
                Step::Finished(keep) => break keep,
                Step::Close => {
                    client_left(&x.progress);
                    return x.ended(false);
                }
            }
        }
        let pumping = start_rx.is_none() && body_tx.is_some();
        // The pump branch borrows `body_tx` for the whole select; it is dropped after it instead.
        let mut body_finished = false;
        let step = tokio::select! {
            biased;
            out = reply_rx.recv() => x.on_out(stream, claim, out, &mut reply_rx, &mut held).await,
            r = wait_start(start_rx.as_mut()) => {
                start_rx = None;
                if r.is_err() {
                    // The app finished with `wsgi.input` without reading past the prefetched part.
                    body_finished = true;
                    Step::Continue
                } else {
                    x.send_continue(stream).await
                }
            }
            _ = tokio::time::sleep_until(x.watch.check), if x.watch.armed() => {
                let tick = x.watch.tick(
                    io,
                    &x.progress,
                    &x.head,
                    peer,
                    conn_peer,
                    claim,
                    x.response_started,
                    &mut H1Answer(&mut *stream),
                ).await;
                match tick {
                    Tick::Continue => Step::Continue,
                    Tick::TimedOut => Step::Close,
                }
            }
            // The worker is stopping and cannot finish this request (see `stop`).
            why = io.cut_off(x.watch.waiting.as_deref()) => {
                crate::worker::stop::answer_cut_off(
                    &mut H1Answer(&mut *stream),
                    io,
                    &x.head,
                    peer,
                    &x.progress,
                    x.watch.waiting.as_deref(),
                    x.response_started,
                    why,
                    x.dispatched,
                )
                .await;
                Step::Close
            }
            // The runtime tells the app when its client goes away (ASGI's `http.disconnect`): look at
            // the socket now and then while the app runs. Dropping the reply channel is the news.
            _ = tokio::time::sleep_until(x.gone_check), if x.watch_gone && x.body.is_done() => {
                x.gone_check = Instant::now() + GONE_POLL;
                if stream.client_gone() {
                    Step::Close
                } else {
                    Step::Continue
                }
            }
            permit = reserve(body_tx.as_ref()), if pumping => {
                match permit {
                    // The app dropped `wsgi.input`: stop pumping; the rest is drained after the response.
                    Err(_) => body_finished = true,
                    Ok(permit) => {
                        if let Some(chunk) = x.read_body(stream, buf).await {
                            body_finished = !matches!(chunk, BodyChunk::Data(_));
                            permit.send(chunk);
                        }
                    }
                }
                Step::Continue
            }
        };
        if body_finished {
            body_tx = None;
        }
        match step {
            Step::Continue => {}
            Step::Finished(keep) => break keep,
            Step::Close => {
                client_left(&x.progress);
                return x.ended(false);
            }
        }
    };
    if !keep_alive || x.framing_lost {
        return x.ended(false);
    }
    if x.body.is_done() {
        return x.ended(true);
    }
    // The client was told to wait for 100 Continue and never got it: it may not send the body at all, so
    // the framing of what follows is unknown.
    if x.expect_continue && !x.continue_sent {
        return x.ended(false);
    }
    let body = std::mem::replace(&mut x.body, BodyState::Done);
    let keep = drain(stream, buf, body, io.header_timeout).await;
    x.ended(keep)
}

impl Exchange<'_> {
    fn ended(&self, keep: bool) -> Ended {
        Ended {
            keep,
            on_overflow: self.watch.on_overflow,
        }
    }

    /// A response piece from the app runtime (None: the runtime dropped the request). Pieces queued
    /// behind a piece go out with it in one write (`write_pieces`); what follows them that is not a
    /// piece is left in `held`.
    async fn on_out<S: Transport>(
        &mut self,
        stream: &mut S,
        claim: &mut Claim<'_>,
        out: Option<Out>,
        reply_rx: &mut tokio::sync::mpsc::Receiver<Out>,
        held: &mut Option<Out>,
    ) -> Step {
        let io = self.io;
        if matches!(out, Some(Out::Piece(_) | Out::File(_))) {
            if let (Some(e), false) = (&self.body_error, self.response_started) {
                refuse(stream, io, self.peer, e, &http::error_response(e)).await;
                return Step::Close;
            }
            self.response_started = true;
        }
        // Decided as late as possible: a worker that began to stop while the app ran closes after this
        // response.
        let stopping = io.ctx.shutting_down.load(Ordering::Acquire);
        let h1 = &mut self.h1;
        match out {
            Some(Out::Piece(piece)) => {
                // Pieces already queued behind this one go out with it in one write (`write_pieces`).
                let mut batch: Vec<Box<Piece>> = Vec::new();
                while !batch.last().map_or(piece.end, |p| p.end) && batch.len() + 1 < BATCH_MAX {
                    match reply_rx.try_recv() {
                        Ok(Out::Piece(next)) => batch.push(next),
                        Ok(other) => {
                            *held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let end = batch.last().map_or(piece.end, |p| p.end);
                if end {
                    // Python is done with the request: the write that remains is the I/O thread's alone,
                    // so the thread's capacity is free for the next request now.
                    claim.release();
                }
                // A client that stops reading must not hold the app thread: give up after the timeout
                // (the app's next send then fails and its iterable is closed).
                let written = if batch.is_empty() {
                    let body = self.frame.piece(h1, &piece, stopping);
                    timeout(
                        io.header_timeout,
                        write_piece(stream, &mut *self.frame, &piece, body),
                    )
                    .await
                } else {
                    batch.insert(0, piece);
                    timeout(
                        io.header_timeout,
                        write_pieces(stream, &mut *self.frame, h1, &batch, stopping),
                    )
                    .await
                };
                if !matches!(written, Ok(Ok(()))) {
                    return Step::Close;
                }
                if end {
                    Step::Finished(h1.keep_alive())
                } else {
                    Step::Continue
                }
            }
            Some(Out::File(body)) => {
                // The file ends the response: Python is done, so a long download holds no thread.
                claim.release();
                let frame = &mut *self.frame;
                frame.pre.clear();
                frame.post.clear();
                if let (Some(info), Some(fields)) = (&body.head, body.fields()) {
                    let facts = facts(info, fields.reason, Some(body.count), stopping);
                    h1.write_head(&mut frame.pre, &facts, fields);
                }
                let FileBody {
                    file,
                    offset,
                    count,
                    ..
                } = *body;
                // A head that already went out chunked cannot carry a raw file.
                let Some(count) = h1.file(count) else {
                    return Step::Close;
                };
                // A file shorter than the declared length ends the connection (see `end`).
                h1.end(&mut frame.post, &[]);
                let sent = timeout(io.header_timeout, async {
                    stream.write_all(&frame.pre).await?;
                    stream.send_file(&file, offset, count).await
                })
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    return Step::Close;
                }
                Step::Finished(h1.keep_alive())
            }
            // Early Hints: only to a client that speaks HTTP/1.1, and only before the final head.
            Some(Out::Interim(interim)) => {
                if self.head.version_minor == 0 || self.response_started {
                    return Step::Continue;
                }
                let written = timeout(io.header_timeout, stream.write_all(&interim.to_h1())).await;
                if !matches!(written, Ok(Ok(()))) {
                    return Step::Close;
                }
                Step::Continue
            }
            Some(Out::Abort) | None => Step::Close,
        }
    }

    /// The app asked for the body: a client that waits for it is told to send it.
    async fn send_continue<S: Transport>(&mut self, stream: &mut S) -> Step {
        if self.expect_continue && !self.continue_sent {
            self.continue_sent = true;
            if stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return Step::Close;
            }
        }
        Step::Continue
    }

    /// The next piece of body for the app, read within the next timer deadline (so `--timeout` fires even
    /// while the client is slow to send the body the app waits for). None: the timer is due first.
    async fn read_body<S: Transport>(
        &mut self,
        stream: &mut S,
        buf: &mut Vec<u8>,
    ) -> Option<BodyChunk> {
        let io = self.io;
        let deadline = self.watch.read_deadline(io);
        let next =
            tokio::time::timeout_at(deadline, self.body.next(stream, buf, io.header_timeout))
                .await
                .unwrap_or(Err(BodyError::Pending));
        match next {
            Ok(Some(data)) => Some(BodyChunk::Data(data)),
            Ok(None) => Some(BodyChunk::End),
            Err(BodyError::Pending) => None,
            Err(e) => {
                self.body = BodyState::Done;
                self.framing_lost = true;
                self.body_error = e.http();
                Some(BodyChunk::Failed(e.to_string()))
            }
        }
    }
}
