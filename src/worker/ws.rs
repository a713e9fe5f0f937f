//! Websocket sessions (RFC 6455) on the I/O thread, for runtimes that serve them (ASGI): the handler of
//! connections the HTTP/1 driver hands on after an `Upgrade: websocket` request. The handshake is
//! checked here, the request goes to the app as a job with the session's channels, and the app decides:
//! accept (`101 Switching Protocols`), close (403), or answer with a response of its own
//! (`websocket.http.response`, framed as any HTTP/1 response). permessage-deflate is agreed in the
//! `101` when the client offers it ([`super::ws_deflate`], `--ws-per-message-deflate`). Once
//! accepted, frames are read and written through [`super::ws_frames`], messages cross to the app in
//! both directions with backpressure, pings are answered and keep the session alive
//! (`--ws-ping-interval`, `--ws-ping-timeout`), a client that breaks the protocol gets the close code
//! it earns (1002, 1007, 1009), and a stopping worker closes the session with 1012 (service restart).

use std::future::Future;
use std::pin::Pin;
use std::rc::Weak;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tungstenite::handshake::derive_accept_key;

use super::driver::{UpgradeHandler, Upgraded};
use super::h1::write::{write_piece, Framed};
use super::ws_deflate;
use super::ws_frames::{self, Incoming, ReadError, WsConn};
use super::IoState;
use crate::exchange::{
    ConnInfo, Job, Out, Progress, RequestBody, WsChannels, WsFromClient, WsToClient, REPLY_QUEUE,
};
use crate::http::framing::H1Response;
use crate::http::{self, RequestHead};
use crate::scoreboard::now_ns;

/// Messages in flight each way between the connection and the app: enough to keep both busy, few
/// enough that a client that floods the session is held back by TCP rather than buffered.
const WS_QUEUE: usize = 16;
/// How long a session closing has to get the peer's close frame back.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How often an unanswered handshake is held against `--timeout`.
const HANDSHAKE_POLL: Duration = Duration::from_millis(250);
/// How long the app may be quiet before a session its client broke is closed.
const REPLY_QUIET: Duration = Duration::from_millis(50);

/// The `websocket` upgrade handler of a worker whose runtime serves websockets.
pub struct WebsocketHandler {
    io: Weak<IoState>,
}

impl WebsocketHandler {
    pub fn new(io: Weak<IoState>) -> WebsocketHandler {
        WebsocketHandler { io }
    }
}

impl UpgradeHandler for WebsocketHandler {
    fn protocol(&self) -> &str {
        "websocket"
    }

    fn serve(&self, up: Upgraded) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(async move {
            if let Some(io) = self.io.upgrade() {
                session(up, &io).await;
            }
        })
    }
}

/// Why a handshake request is refused before it reaches the app (RFC 6455 §4.2.1).
fn bad_handshake(head: &RequestHead) -> Option<(u16, &'static str)> {
    if head.method != "GET" {
        return Some((400, "A websocket handshake must be a GET request.\n"));
    }
    if head
        .header("sec-websocket-key")
        .is_none_or(|k| k.is_empty())
    {
        return Some((400, "Missing Sec-WebSocket-Key.\n"));
    }
    if head.header("sec-websocket-version") != Some(b"13") {
        return Some((
            426,
            "Unsupported websocket version: this server speaks 13.\n",
        ));
    }
    None
}

async fn session(mut up: Upgraded, io: &IoState) {
    if let Some((status, body)) = bad_handshake(&up.head) {
        let mut resp = http::simple_response(status, body, true);
        if status == 426 {
            // `Sec-WebSocket-Version: 13` goes with a 426, after the status line.
            if let Some(at) = resp.windows(2).position(|w| w == b"\r\n") {
                resp.splice(
                    at + 2..at + 2,
                    b"Sec-WebSocket-Version: 13\r\n".iter().copied(),
                );
            }
        }
        let _ = up.stream.write_all(&resp).await;
        return;
    }
    // permessage-deflate, when offered and not turned off (`--ws-per-message-deflate`).
    let deflate = if io.ctx.cfg.ws_per_message_deflate {
        ws_deflate::negotiate(
            up.head
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|(_, v)| v.as_slice()),
        )
    } else {
        None
    };
    let (in_tx, in_rx) = mpsc::channel::<WsFromClient>(WS_QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<WsToClient>(WS_QUEUE);
    let (reply_tx, mut reply_rx) = mpsc::channel::<Out>(REPLY_QUEUE);
    let progress = Arc::new(Progress::default());
    let job = Job {
        head: up.head.clone(),
        conn: ConnInfo {
            peer: up.peer.clone(),
            server: up.server.clone(),
            https: up.https,
            sendfile: false,
            tls: up.stream.tls().cloned(),
        },
        body: RequestBody {
            prefetched: Vec::new(),
            stream: None,
        },
        reply: reply_tx,
        progress: progress.clone(),
        websocket: Some(WsChannels {
            from_client: in_rx,
            to_client: out_tx,
        }),
    };
    let mut claim = io.admission.claim(false);
    if io.admission.place(job, &up.peer, &mut claim).is_none() {
        return;
    }
    // The handshake: the app accepts, closes, or answers with a response of its own — within
    // `--timeout` of its task's start, as any request's answer.
    let mut h1 = H1Response::new(up.head.version_minor, &up.head.method, false);
    let mut frame = Framed::new();
    let mut check = Instant::now() + HANDSHAKE_POLL;
    let accepted = loop {
        tokio::select! {
            // The app's word on the handshake first: a refusal's response is queued before the app's
            // channels close.
            biased;
            _ = tokio::time::sleep_until(check), if io.request_timeout.is_some() => {
                check = Instant::now() + HANDSHAKE_POLL;
                if handshake_timed_out(&mut up, io, &progress).await {
                    return;
                }
                continue;
            }
            said = out_rx.recv() => match said {
                Some(WsToClient::Accept { subprotocol, headers }) => {
                    if up.stream.write_all(&switching(&up.head, subprotocol, &headers, deflate.as_ref())).await.is_err() {
                        return;
                    }
                    break true;
                }
                Some(WsToClient::Close { .. }) => {
                    let _ = up
                        .stream
                        .write_all(&http::simple_response(403, "", true))
                        .await;
                    return;
                }
                // The app's task ended without accepting: a response it left (a 500 for an error) is
                // answered, else the handshake is refused.
                None => {
                    match reply_rx.try_recv() {
                        Ok(Out::Piece(piece)) => {
                            let body = frame.piece(&mut h1, &piece, true);
                            let _ = timeout(
                                io.header_timeout,
                                write_piece(&mut up.stream, &mut frame, &piece, body),
                            )
                            .await;
                        }
                        _ => {
                            let _ = up
                                .stream
                                .write_all(&http::simple_response(403, "", true))
                                .await;
                        }
                    }
                    return;
                }
                // A message before the accept: the runtime refuses it to the app; nothing goes out.
                Some(_) => {}
            },
            out = reply_rx.recv() => match out {
                Some(Out::Piece(piece)) => {
                    let body = frame.piece(&mut h1, &piece, true);
                    let written =
                        timeout(io.header_timeout, write_piece(&mut up.stream, &mut frame, &piece, body)).await;
                    if piece.end || !matches!(written, Ok(Ok(()))) {
                        return;
                    }
                }
                _ => return,
            },
        }
    };
    if !accepted {
        return;
    }
    let leftover = std::mem::take(&mut up.leftover);
    let codec = deflate.map(ws_deflate::Codec::new);
    let mut ws = WsConn::new(
        up.stream,
        leftover,
        io.ctx.cfg.websocket_max_message_size,
        codec,
    );
    let cfg = &io.ctx.cfg;
    let ping_every = (cfg.ws_ping_interval > 0).then(|| Duration::from_secs(cfg.ws_ping_interval));
    let pong_within = Duration::from_secs(cfg.ws_ping_timeout.max(1));
    let mut next_ping = ping_every.map(|d| Instant::now() + d);
    let mut pong_due: Option<Instant> = None;
    let mut stopping = io.shutting_down.get();
    let end = loop {
        stopping |= io.shutting_down.get();
        if stopping {
            break Closing::Server(1012, "service restart");
        }
        let wake = [next_ping, pong_due].into_iter().flatten().min();
        tokio::select! {
            msg = ws.read() => match msg {
                Ok(Incoming::Text(t)) => {
                    if in_tx.send(WsFromClient::Text(t)).await.is_err() {
                        break Closing::Server(1000, "");
                    }
                }
                Ok(Incoming::Binary(b)) => {
                    if in_tx.send(WsFromClient::Binary(b)).await.is_err() {
                        break Closing::Server(1000, "");
                    }
                }
                Ok(Incoming::Pong) => pong_due = None,
                Ok(Incoming::Ping(data)) => {
                    if ws.send_control(ws_frames::OP_PONG, &data).await.is_err() {
                        break Closing::Client(1006, String::new());
                    }
                }
                Ok(Incoming::Close(frame)) => {
                    // The close is answered with the peer's own code.
                    let code = frame.as_ref().map(|(c, _)| *c);
                    let _ = ws.send_close(code, "").await;
                    let (code, reason) = frame.unwrap_or((1005, String::new()));
                    break Closing::Client(code, reason);
                }
                Err(ReadError::Violation(code, why)) => {
                    io.ctx.log.debug(&format!("Websocket from {} failed: {why}", up.peer.label()));
                    flush_replies(&mut ws, &mut out_rx).await;
                    break Closing::Server(code, why);
                }
                Err(ReadError::Gone) => break Closing::Client(1006, String::new()),
            },
            said = out_rx.recv() => {
                let sent = match said {
                    Some(WsToClient::Text(t)) => ws.send_message(ws_frames::OP_TEXT, t.as_bytes()).await,
                    Some(WsToClient::Binary(b)) => ws.send_message(ws_frames::OP_BINARY, &b).await,
                    Some(WsToClient::Close { code, reason }) => {
                        break Closing::App(code, reason);
                    }
                    Some(WsToClient::Accept { .. }) => Ok(()),
                    // The app's task ended without closing.
                    None => break Closing::App(1000, String::new()),
                };
                if sent.is_err() {
                    break Closing::Client(1006, String::new());
                }
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if wake.is_some() => {
                let now = Instant::now();
                if pong_due.is_some_and(|d| now >= d) {
                    io.ctx.log.debug(&format!("Websocket from {} timed out waiting for a pong", up.peer.label()));
                    break Closing::Server(1011, "keepalive ping timeout");
                }
                if next_ping.is_some_and(|d| now >= d) {
                    if ws.send_control(ws_frames::OP_PING, b"").await.is_err() {
                        break Closing::Client(1006, String::new());
                    }
                    pong_due = Some(now + pong_within);
                    next_ping = ping_every.map(|d| now + d);
                }
            }
            _ = io.shutdown_signal.notified() => stopping = true,
        }
    };
    match end {
        Closing::Client(code, reason) => {
            let _ = timeout(CLOSE_GRACE, ws.finish()).await;
            let _ = in_tx.send(WsFromClient::Closed { code, reason }).await;
        }
        Closing::App(code, reason) => {
            close(&mut ws, code, &reason).await;
            let _ = in_tx.send(WsFromClient::Closed { code, reason }).await;
        }
        Closing::Server(code, reason) => {
            close(&mut ws, code, reason).await;
            let _ = in_tx
                .send(WsFromClient::Closed {
                    code,
                    reason: reason.to_string(),
                })
                .await;
        }
    }
    // The app gets its `websocket.disconnect`; the session holds the worker's capacity until then.
    drop(in_tx);
    let _ = timeout(CLOSE_GRACE, out_rx.recv()).await;
    drop(claim);
}

/// How a session ended, and who said so.
enum Closing {
    /// The client closed (or the connection broke: 1006).
    Client(u16, String),
    /// The app closed, or its task ended (1000).
    App(u16, String),
    /// The server: a stopping worker (1012), a ping without a pong (1011), a client that broke the
    /// protocol (1002, 1007, 1009).
    Server(u16, &'static str),
}

/// Before a session that the client broke is closed: what the app still answers to the messages
/// that came before the violation goes out first. Its messages are sent until it has been quiet for
/// [`REPLY_QUIET`] (at most [`CLOSE_GRACE`]); a close from the app ends the wait.
async fn flush_replies<S>(ws: &mut WsConn<S>, out_rx: &mut mpsc::Receiver<WsToClient>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = timeout(CLOSE_GRACE, async {
        loop {
            let sent = match timeout(REPLY_QUIET, out_rx.recv()).await {
                Ok(Some(WsToClient::Text(t))) => {
                    ws.send_message(ws_frames::OP_TEXT, t.as_bytes()).await
                }
                Ok(Some(WsToClient::Binary(b))) => ws.send_message(ws_frames::OP_BINARY, &b).await,
                Ok(Some(WsToClient::Accept { .. })) => Ok(()),
                _ => return,
            };
            if sent.is_err() {
                return;
            }
        }
    })
    .await;
}

/// A handshake whose task has run past `--timeout` without answering it: the task is cancelled (and
/// named in the log with its await stack, as any request past `--timeout`) and the client gets a 504.
async fn handshake_timed_out(up: &mut Upgraded, io: &IoState, progress: &Progress) -> bool {
    let started = progress.started_ns.load(Ordering::Acquire);
    let Some(limit) = io.request_timeout else {
        return false;
    };
    if started == 0 {
        return false; // still waiting for room on the loop
    }
    let elapsed = Duration::from_nanos(now_ns().saturating_sub(started));
    if elapsed < limit {
        return false;
    }
    io.past_timeout(progress, elapsed);
    let body = format!(
        "The websocket handshake was not answered within the server's timeout ({} s).\n",
        limit.as_secs()
    );
    progress.timed_out.store(true, Ordering::Release);
    let _ = timeout(
        io.header_timeout,
        up.stream
            .write_all(&http::simple_response(504, &body, true)),
    )
    .await;
    io.log_own_answer(&up.head, &up.peer, 504, body.len(), elapsed);
    true
}

/// Send a close frame, wait, briefly, for the peer's, and end the connection.
async fn close<S>(ws: &mut WsConn<S>, code: u16, reason: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = ws.send_close(Some(code), reason).await;
    let _ = timeout(CLOSE_GRACE, async {
        // Messages that cross the close are dropped; a frame that does not parse ends the wait, and
        // a peer whose (bad) close frame this answers sends no other.
        while !ws.peer_closed() {
            match ws.read().await {
                Ok(Incoming::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        ws.finish().await;
    })
    .await;
}

/// The `101 Switching Protocols` answer to an accepted handshake.
fn switching(
    head: &RequestHead,
    subprotocol: Option<String>,
    extra: &[(Vec<u8>, Vec<u8>)],
    deflate: Option<&ws_deflate::Params>,
) -> Vec<u8> {
    let key = head.header("sec-websocket-key").unwrap_or_default();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    out.extend_from_slice(b"Sec-WebSocket-Accept: ");
    out.extend_from_slice(derive_accept_key(key).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = subprotocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(params) = deflate {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        out.extend_from_slice(params.response().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    http::write_header(&mut out, b"Server", b"ferricorn");
    http::write_date_header(&mut out);
    for (name, value) in extra {
        let lower = name.to_ascii_lowercase();
        // The server owns the handshake's own fields.
        if matches!(
            lower.as_slice(),
            b"upgrade"
                | b"connection"
                | b"sec-websocket-accept"
                | b"sec-websocket-protocol"
                | b"sec-websocket-extensions"
        ) {
            continue;
        }
        http::write_header(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out
}
