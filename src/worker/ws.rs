//! Websocket sessions (RFC 6455) on the I/O thread, for runtimes that serve them (ASGI): the handler of
//! connections the HTTP/1 driver hands on after an `Upgrade: websocket` request. The handshake is
//! checked here, the request goes to the app as a job with the session's channels, and the app decides:
//! accept (`101 Switching Protocols`), close (403), or answer with a response of its own
//! (`websocket.http.response`, framed as any HTTP/1 response). Once accepted, frames are read and
//! written here (tungstenite's framing), messages cross to the app in both directions with
//! backpressure, pings keep the session alive (`--ws-ping-interval`, `--ws-ping-timeout`), and a
//! stopping worker closes it with 1012 (service restart).

use std::future::Future;
use std::pin::Pin;
use std::rc::Weak;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::driver::{UpgradeHandler, Upgraded};
use super::h1::write::{write_piece, Framed};
use super::IoState;
use crate::exchange::{
    ConnInfo, Job, Out, Progress, RequestBody, WsChannels, WsFromClient, WsToClient, REPLY_QUEUE,
};
use crate::http::framing::H1Response;
use crate::http::{self, RequestHead};

/// Messages in flight each way between the connection and the app: enough to keep both busy, few
/// enough that a client that floods the session is held back by TCP rather than buffered.
const WS_QUEUE: usize = 16;
/// How long a session closing has to get the peer's close frame back.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

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
    let (in_tx, in_rx) = mpsc::channel::<WsFromClient>(WS_QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<WsToClient>(WS_QUEUE);
    let (reply_tx, mut reply_rx) = mpsc::channel::<Out>(REPLY_QUEUE);
    let job = Job {
        head: up.head.clone(),
        conn: ConnInfo {
            peer: up.peer.clone(),
            server: up.server.clone(),
            https: up.https,
            sendfile: false,
        },
        body: RequestBody {
            prefetched: Vec::new(),
            stream: None,
        },
        reply: reply_tx,
        progress: Arc::new(Progress::default()),
        websocket: Some(WsChannels {
            from_client: in_rx,
            to_client: out_tx,
        }),
    };
    let mut claim = io.admission.claim(false);
    if io.admission.place(job, &up.peer, &mut claim).is_none() {
        return;
    }
    // The handshake: the app accepts, closes, or answers with a response of its own.
    let mut h1 = H1Response::new(up.head.version_minor, &up.head.method, false);
    let mut frame = Framed::new();
    let accepted = loop {
        tokio::select! {
            // The app's word on the handshake first: a refusal's response is queued before the app's
            // channels close.
            biased;
            said = out_rx.recv() => match said {
                Some(WsToClient::Accept { subprotocol, headers }) => {
                    if up.stream.write_all(&switching(&up.head, subprotocol, &headers)).await.is_err() {
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
    let config = WebSocketConfig::default()
        .max_message_size(Some(io.ctx.cfg.websocket_max_message_size))
        .max_frame_size(Some(io.ctx.cfg.websocket_max_message_size));
    let leftover = std::mem::take(&mut up.leftover);
    let mut ws =
        WebSocketStream::from_partially_read(up.stream, leftover, Role::Server, Some(config)).await;
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
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if in_tx.send(WsFromClient::Text(t.as_str().to_string())).await.is_err() {
                        break Closing::Server(1000, "");
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    if in_tx.send(WsFromClient::Binary(b.to_vec())).await.is_err() {
                        break Closing::Server(1000, "");
                    }
                }
                Some(Ok(Message::Pong(_))) => pong_due = None,
                // tungstenite answers pings itself; the answer goes out on the next flush.
                Some(Ok(Message::Ping(_))) => {
                    let _ = ws.flush().await;
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_string()))
                        .unwrap_or((1005, String::new()));
                    // The close reply goes out with this flush.
                    let _ = ws.flush().await;
                    break Closing::Client(code, reason);
                }
                Some(Ok(Message::Frame(_))) => {}
                Some(Err(e)) => {
                    io.ctx.log.debug(&format!("Websocket from {} failed: {e}", up.peer.label()));
                    // What the client did wrong, as its close code (RFC 6455 §7.4.1).
                    use tokio_tungstenite::tungstenite::Error;
                    match e {
                        Error::Capacity(_) => break Closing::Server(1009, "message too big"),
                        Error::Protocol(_) => break Closing::Server(1002, "protocol error"),
                        Error::Utf8(_) => break Closing::Server(1007, "invalid UTF-8"),
                        _ => break Closing::Client(1006, String::new()),
                    }
                }
                None => break Closing::Client(1006, String::new()),
            },
            said = out_rx.recv() => {
                let sent = match said {
                    Some(WsToClient::Text(t)) => ws.send(Message::text(t)).await,
                    Some(WsToClient::Binary(b)) => ws.send(Message::binary(b)).await,
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
                    if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
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
    /// The server: a stopping worker (1012), a ping without a pong (1011).
    Server(u16, &'static str),
}

/// Send a close frame and wait, briefly, for the peer's.
async fn close<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = ws.send(Message::Close(Some(frame))).await;
    let _ = timeout(CLOSE_GRACE, async {
        while let Some(Ok(msg)) = ws.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
        // The server closes the TCP connection first (RFC 6455 §7.1.1), and reads what still comes
        // (after a violation: the rest of bytes that do not parse) until the peer closes its end, so
        // that bytes left unread do not turn the close into a reset that can lose the close frame on
        // the peer's side.
        let stream = ws.get_mut();
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The `101 Switching Protocols` answer to an accepted handshake.
fn switching(
    head: &RequestHead,
    subprotocol: Option<String>,
    extra: &[(Vec<u8>, Vec<u8>)],
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
    http::write_header(&mut out, b"Server", b"ferricorn");
    http::write_date_header(&mut out);
    for (name, value) in extra {
        let lower = name.to_ascii_lowercase();
        // The server owns the handshake's own fields.
        if matches!(
            lower.as_slice(),
            b"upgrade" | b"connection" | b"sec-websocket-accept" | b"sec-websocket-protocol"
        ) {
            continue;
        }
        http::write_header(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out
}
