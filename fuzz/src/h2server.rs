//! An HTTP/2 server connection in memory for the `h2_server` target: a client's arbitrary bytes go
//! through a `tokio::io::duplex` pipe into the `h2` crate's server handshake and accept loop, built
//! with the limits ferricorn's connection driver sets (`src/worker/h2/mod.rs`'s `builder`, which lives
//! in the Python-linked crate, so its numbers are repeated in [`builder`]). Each request the frame
//! layer accepts goes through `ferricorn_http::h2_request_head`, the HTTP/1 header policy the driver
//! applies to a stream's head, and is answered the way the input's option byte says: at once, after
//! reading (and releasing) its body, with a body larger than the client's window, or with a reset.

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::{self, ParserOptions};

/// The driver's own limits (src/worker/h2/mod.rs): streams reset by the client before they are taken,
/// streams reset for the client's errors, response bytes queued per stream, the connection window.
pub const PENDING_RESETS: usize = 32;
pub const LOCAL_ERROR_RESETS: usize = 256;
pub const SEND_BUFFER: usize = 256 * 1024;
pub const CONNECTION_WINDOW_MIN: u32 = 1 << 20;

/// The settings' values: gunicorn's defaults, or small ones (option bit 1) so limit paths are reached
/// with short inputs.
pub fn builder(small: bool) -> h2::server::Builder {
    let (streams, window, frame, header_list) = if small {
        (2, 1024, 16_384, 512)
    } else {
        (100, 65_535, 16_384, 65_536)
    };
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(streams)
        .initial_window_size(window)
        .initial_connection_window_size(window.max(CONNECTION_WINDOW_MIN))
        .max_frame_size(frame)
        .max_header_list_size(header_list)
        .max_pending_accept_reset_streams(PENDING_RESETS)
        .max_local_error_reset_streams(Some(LOCAL_ERROR_RESETS))
        .max_send_buffer_size(SEND_BUFFER);
    b
}

/// How the server answers each accepted stream.
#[derive(Clone, Copy)]
enum Answer {
    Now,
    ReadBody,
    Large,
    Reset,
}

/// What one session did (for the target's checks).
#[derive(Default, Debug)]
pub struct Session {
    pub accepted: usize,
    pub heads_ok: usize,
}

/// Serve `pieces` (the client's writes, in order) on one in-memory connection until it ends.
pub fn serve(pieces: Vec<Vec<u8>>, opts: u8) -> Session {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    rt.block_on(session(pieces, opts))
}

async fn session(pieces: Vec<Vec<u8>>, opts: u8) -> Session {
    let (client, server) = tokio::io::duplex(16 * 1024);
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    // The client: writes its bytes, then ends its side; everything the server writes is read and
    // dropped so the server never waits on a full pipe.
    let writer = tokio::spawn(async move {
        for p in pieces {
            if client_tx.write_all(&p).await.is_err() {
                return;
            }
        }
        let _ = client_tx.shutdown().await;
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0usize;
        while let Ok(n) = client_rx.read(&mut buf).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });

    let mut out = Session::default();
    let answer = match (opts >> 2) & 3 {
        0 => Answer::Now,
        1 => Answer::ReadBody,
        2 => Answer::Large,
        _ => Answer::Reset,
    };
    let mut conn = match builder(opts & 2 != 0).handshake::<_, Bytes>(server).await {
        Ok(c) => c,
        Err(_) => {
            writer.abort();
            reader.abort();
            return out;
        }
    };
    let popts = ParserOptions::default();
    while let Some(next) = conn.accept().await {
        let Ok((req, respond)) = next else { break };
        out.accepted += 1;
        let (parts, body) = req.into_parts();
        let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let fields: Vec<(&str, &[u8])> = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let head = http::h2_request_head(
            parts.method.as_str(),
            &target,
            authority.as_deref(),
            &fields,
            &popts,
        );
        if let Ok(head) = &head {
            out.heads_ok += 1;
            // Nothing a request line or a field line could not carry gets into the head.
            for b in head.target.bytes().chain(head.method.bytes()) {
                assert!(
                    b > b' ' && b != 0x7f,
                    "a control byte or space in {:?}",
                    head.target
                );
            }
            for (name, value) in &head.headers {
                assert!(!name.is_empty() && !name.bytes().any(|b| b <= b' ' || b == b':'));
                assert!(!value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0));
            }
            assert_eq!(head.version, (2, 0));
        }
        let ok = head.is_ok();
        tokio::spawn(answer_stream(respond, body, answer, ok));
    }
    // Let the streams' tasks and the client finish what the pipe still holds.
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
    writer.abort();
    reader.abort();
    out
}

async fn answer_stream(
    mut respond: h2::server::SendResponse<Bytes>,
    mut body: h2::RecvStream,
    answer: Answer,
    head_ok: bool,
) {
    if !head_ok {
        let res = ::http::Response::builder()
            .status(400)
            .body(())
            .expect("a response");
        let _ = respond.send_response(res, true);
        return;
    }
    match answer {
        Answer::Reset => {
            respond.send_reset(h2::Reason::CANCEL);
            return;
        }
        Answer::ReadBody => {
            // Read the body to its end, giving the window back as the driver does.
            while let Some(chunk) = body.data().await {
                let Ok(chunk) = chunk else { return };
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let _ = body.trailers().await;
        }
        Answer::Now | Answer::Large => {}
    }
    let res = ::http::Response::builder()
        .status(200)
        .body(())
        .expect("a response");
    let Ok(mut send) = respond.send_response(res, false) else {
        return;
    };
    let size = if matches!(answer, Answer::Large) {
        200_000
    } else {
        5
    };
    let mut left = size;
    // Each piece waits for the client's window, as the driver's responses do.
    while left > 0 {
        send.reserve_capacity(left.min(16_384));
        let cap = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) if n > 0 => n,
            _ => return,
        };
        let n = cap.min(left);
        if send
            .send_data(Bytes::from(vec![b'x'; n]), n == left)
            .is_err()
        {
            return;
        }
        left -= n;
    }
}
