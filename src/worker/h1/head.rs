//! Reading a request head on an HTTP/1 connection: the idle (keep-alive) and header timeouts, the
//! reservation grace of a fresh connection, parsing only once a head can be complete.

use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::{HeadOutcome, READ_SIZE, RESERVATION_GRACE};
use crate::http::{self, HttpError, Parsed};
use crate::worker::admission::Claim;
use crate::worker::transport::Transport;
use crate::worker::IoState;

fn head_complete(buf: &[u8], scanned_from: usize) -> bool {
    let start = scanned_from.saturating_sub(3);
    memchr::memmem::find(&buf[start..], b"\r\n\r\n").is_some()
        || memchr::memmem::find(&buf[start..], b"\n\n").is_some()
}

pub(super) async fn read_head<S: Transport>(
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
