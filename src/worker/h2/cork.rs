//! Writes of an HTTP/2 connection held back while more responses are on their way, so the frames of
//! many streams leave in one write (and, over TLS, in one record) instead of one write per response.
//!
//! The h2 crate flushes whatever its streams queued each time the connection is polled, and a stream's
//! response arrives from the app threads one at a time: without this, every response of a multiplexed
//! connection is its own write(2) — on loopback the profile of h2load -c16 -m10 against hello spent
//! 31% of the worker's time in writev, about one per response. `Corked` sits between h2 and the
//! transport: while a stream of the connection is in the app with its response not yet begun
//! (`Cork::expecting`), what h2 writes is kept in a buffer and a flush is a no-op; the bytes go out
//! once no such stream remains, when they have waited `HOLD`, or when `LIMIT` bytes are held. The
//! streams' counter is kept by `stream.rs` (`Expecting`), which wakes the connection when it falls to
//! zero so the held bytes leave at once.
//!
//! Measured (bench/http2.py A/B against main 5e9b96d, h2load -c16 -m10, hello, 2 workers × 4 threads,
//! 3 interleaved repeats, 2026-12-04, bench/results/2026-12-04-h2-ab-cork.md): h2c 98,223 vs 64,389
//! req/s (1.52×), TLS 82,943 vs 56,812 (1.46×), and h2load's mean request time (median of the repeats)
//! 1.28 vs 1.93 ms over h2c, 1.50 vs 2.14 over TLS.

use std::cell::Cell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::tls::TlsInfo;
use crate::worker::transport::Transport;

/// Held bytes leave after this at the latest, whatever streams are still in the app: the delay a fast
/// response can take when a slow request runs beside it on the same connection. 2 ms was measured
/// beside it (bench/results/2026-12-04-h2-ab-hold2ms.md, a busy machine): 500 µs ÷ 2 ms = 0.98 on
/// hello (h2c and TLS), 0.93 and 0.80 on Flask with per-repeat ratios of 0.46–2.07 — within the noise,
/// and not worth four times the delay.
pub(super) const HOLD: Duration = Duration::from_micros(500);
/// Held bytes leave once this much is buffered (a large response is not copied whole into the buffer).
const LIMIT: usize = 64 * 1024;

/// What the connection's streams tell the writer: how many are in the app with their response not
/// yet begun.
#[derive(Default)]
pub(super) struct Cork {
    pub expecting: Cell<usize>,
}

/// The transport under h2, with its writes held as `Cork` says (see the module doc).
pub(super) struct Corked<S> {
    inner: S,
    cork: Rc<Cork>,
    buf: Vec<u8>,
    /// Where the unwritten part of `buf` starts.
    at: usize,
    /// When the bytes held now must leave, and the timer that wakes the connection then.
    due: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Corked<S> {
    pub(super) fn new(inner: S, cork: Rc<Cork>) -> Corked<S> {
        Corked {
            inner,
            cork,
            buf: Vec::new(),
            at: 0,
            due: None,
            timer: None,
        }
    }

    fn held(&self) -> usize {
        self.buf.len() - self.at
    }

    fn append(&mut self, bufs: &[IoSlice<'_>]) -> usize {
        if self.held() == 0 {
            self.buf.clear();
            self.at = 0;
        }
        let mut n = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            n += b.len();
        }
        n
    }
}

impl<S: AsyncWrite + Unpin> Corked<S> {
    /// Write the held bytes out; Ready once none are left.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.at < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.at += n;
        }
        self.buf.clear();
        self.at = 0;
        self.due = None;
        Poll::Ready(Ok(()))
    }

    /// Whether held bytes may stay held now; if so, the timer is set to wake the connection when they
    /// are due.
    fn hold(&mut self, cx: &mut Context<'_>) -> bool {
        if self.cork.expecting.get() == 0 || self.held() >= LIMIT {
            return false;
        }
        let Some(due) = self.due else {
            return true;
        };
        if Instant::now() >= due {
            return false;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        // Pending: the timer now wakes the connection's task at `due`.
        timer.as_mut().poll(cx).is_pending()
    }

    fn write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.cork.expecting.get() == 0 && self.held() == 0 {
            // Nothing to wait for: straight through, without a copy.
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        if self.held() + len > LIMIT {
            ready!(self.drain(cx))?;
            if self.cork.expecting.get() == 0 || len > LIMIT {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
        }
        if self.held() == 0 {
            self.due = Some(Instant::now() + HOLD);
        }
        Poll::Ready(Ok(self.append(bufs)))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_slices(cx, &[IoSlice::new(buf)])
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_slices(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.held() > 0 {
            if this.hold(cx) {
                return Poll::Ready(Ok(()));
            }
            ready!(this.drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: Transport> Transport for Corked<S> {
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.raw_fd()
    }
    fn tls(&self) -> Option<&Arc<TlsInfo>> {
        self.inner.tls()
    }
}

/// A stream counted in `Cork::expecting` until its response begins (or the stream ends): dropping it,
/// or `begun`, takes it off the count, and the last one wakes the connection so held bytes leave.
pub(super) struct Expecting<'a> {
    conn: Option<&'a super::Conn>,
}

impl<'a> Expecting<'a> {
    pub(super) fn new(conn: &'a super::Conn) -> Expecting<'a> {
        let cork = &conn.cork.expecting;
        cork.set(cork.get() + 1);
        Expecting { conn: Some(conn) }
    }

    /// The response began: the stream no longer holds back the connection's writes.
    pub(super) fn begun(&mut self) {
        if let Some(conn) = self.conn.take() {
            let cork = &conn.cork.expecting;
            let left = cork.get().saturating_sub(1);
            cork.set(left);
            if left == 0 {
                conn.changed.notify_one();
            }
        }
    }
}

impl Drop for Expecting<'_> {
    fn drop(&mut self) {
        self.begun();
    }
}
