//! One HTTP request as an ASGI app sees it (ASGI 3.0, HTTP spec 2.4): the `scope`; `receive()`'s
//! `http.request` messages (the body streamed as the app asks for it, `more_body`) and
//! `http.disconnect` (once the response is done, or as soon as the client goes away); `send()`'s
//! `http.response.start`, `.body` (streaming), `.trailers`, `.pathsend` and `.zerocopy`, turned into the exchange's
//! semantic pieces. What cannot go out now waits without blocking the loop: a piece for a slow client
//! (backpressure), body bytes not read yet — each wait is a task on the worker's I/O thread that
//! resolves an asyncio future through the loop's bridge.
//!
//! The app gets `receive` and `send` of this object itself: each call answers with a ready-made
//! awaitable ([`Ready`]) when the message is here or the piece is queued — the common case, which then
//! costs no coroutine, no future and no trip through the loop — and otherwise with a future of the
//! loop that the I/O thread resolves.

use std::ops::Deref;
use std::sync::Arc;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use tokio::sync::{mpsc, oneshot};

use super::bridge::{LoopShared, Wake};
use super::websocket::{self, Ws};
use crate::exchange::response::{Interim, Offer, ResponseSender};
use crate::exchange::{
    BodyChunk, ConnInfo, Fields, Job, Out, ResponseHead, TaskControl, TaskEvent, WsToClient,
    ZERO_COPY_MIN,
};
use crate::http::{self, RequestHead};
use crate::runtime::{hooks, Outcome, RequestScope, WorkerContext};
use crate::scoreboard::Wait;

/// Where the response stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// No `http.response.start` yet.
    Idle,
    /// Started; the head has not gone out (it goes with the first body).
    Started,
    /// The head went out; more body to come.
    Streaming,
    /// The body ended; trailers to come (`trailers: True` in the start message).
    Trailers,
    Done,
}

/// A message waiting for room in the queue to the connection.
enum Pending {
    Out(Out),
    Ws(WsToClient),
}

/// The loop's way to a request's task for the connection's timers (see `TaskControl`).
struct TaskLink {
    id: u64,
    shared: Arc<LoopShared>,
}

impl TaskControl for TaskLink {
    fn event(&self, event: TaskEvent) -> Result<(), usize> {
        // A loop that has not come back for a beat will not run the event either: then it is the
        // loop's thread that is stuck.
        let beat = std::time::Duration::from_secs(1);
        if self
            .shared
            .away(crate::scoreboard::now_ns())
            .is_none_or(|away| away > beat)
        {
            return Err(self.shared.index());
        }
        self.shared.post(Wake::Event { id: self.id, event });
        Ok(())
    }
}

/// A worker context kept alive by the request (its scope outlives any one call).
pub struct Ctx(Arc<WorkerContext>);

impl Deref for Ctx {
    type Target = WorkerContext;
    fn deref(&self) -> &WorkerContext {
        &self.0
    }
}

#[pyclass(module = "ferricorn")]
pub struct AsgiRequest {
    #[pyo3(get)]
    id: u64,
    shared: Arc<LoopShared>,
    head: Arc<RequestHead>,
    conn: ConnInfo,
    scope: Option<RequestScope<Ctx>>,
    slot: usize,
    /// The body read with the head, not handed to the app yet.
    prefetched: Option<Vec<u8>>,
    start: Option<oneshot::Sender<()>>,
    body_rx: Option<mpsc::Receiver<BodyChunk>>,
    /// A `receive_later` holds the body stream.
    body_waiting: bool,
    sender: ResponseSender,
    stage: Stage,
    status: u16,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    content_length: Option<u64>,
    trailers_expected: bool,
    /// What the queue to the connection had no room for: `send_later` waits for room.
    pending: Option<Pending>,
    /// A websocket session (the request was a handshake).
    ws: Option<Ws>,
    hook_req: Option<Py<PyAny>>,
}

/// `{"type": "http.disconnect"}`.
pub fn disconnect_message(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(intern!(py, "type"), intern!(py, "http.disconnect"))?;
    Ok(d)
}

/// The head as the app set it.
fn head_of<'a>(
    status: u16,
    headers: &'a [(Vec<u8>, Vec<u8>)],
    content_length: Option<u64>,
) -> ResponseHead<'a> {
    ResponseHead {
        status,
        reason: None,
        headers: Fields::Bytes(headers),
        content_length,
        close: false,
    }
}

fn request_message<'py>(py: Python<'py>, body: &[u8], more: bool) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(intern!(py, "type"), intern!(py, "http.request"))?;
    d.set_item(intern!(py, "body"), PyBytes::new(py, body))?;
    d.set_item(intern!(py, "more_body"), more)?;
    Ok(d)
}

impl AsgiRequest {
    /// A request the loop takes from its queue: its bookkeeping begins (the `--timeout` clock, the
    /// scoreboard entry), and `pre_request` runs.
    pub fn start(py: Python<'_>, shared: &Arc<LoopShared>, job: Job) -> PyResult<Py<AsgiRequest>> {
        let id = shared.next_id();
        let slot = shared.slots.take();
        let scope = RequestScope::begin(Ctx(shared.ctx.clone()), slot, &job);
        let Job {
            head,
            conn,
            body,
            reply,
            progress,
            websocket,
        } = job;
        let _ = progress.task.set(Box::new(TaskLink {
            id,
            shared: shared.clone(),
        }));
        let hook_req = hooks::pre_request(py, &shared.ctx, &head).map(Bound::unbind);
        let (start, body_rx) = match body.stream {
            Some(s) => (s.start, Some(s.rx)),
            None => (None, None),
        };
        let sender = ResponseSender::new(reply, &head.method);
        Py::new(
            py,
            AsgiRequest {
                id,
                shared: shared.clone(),
                head,
                conn,
                scope: Some(scope),
                slot,
                prefetched: Some(body.prefetched),
                start,
                body_rx,
                body_waiting: false,
                sender,
                stage: Stage::Idle,
                status: 0,
                headers: Vec::new(),
                content_length: None,
                trailers_expected: false,
                pending: None,
                ws: websocket.map(Ws::new),
                hook_req,
            },
        )
    }

    /// A websocket message for the app (see `Wake::Ws`).
    pub fn ws_arrived<'py>(
        &mut self,
        py: Python<'py>,
        msg: Option<crate::exchange::WsFromClient>,
        rx: mpsc::Receiver<crate::exchange::WsFromClient>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.set_wait(Wait::InApp);
        match self.ws.as_mut() {
            Some(ws) => ws.arrived(py, msg, Some(rx)),
            None => disconnect_message(py),
        }
    }

    /// A piece that waited for room is queued (`ok`), or the client is gone.
    pub fn piece_sent(&mut self, ok: bool) {
        if !ok {
            self.sender.disconnected = true;
        }
        self.set_wait(Wait::InApp);
    }

    /// The request's scoreboard entry (`NO_SLOT` once it ended).
    pub fn entry(&self) -> usize {
        self.slot
    }

    /// Tell `show workers` what this request's task waits for.
    fn set_wait(&self, wait: Wait) {
        if self.slot != super::NO_SLOT {
            self.shared.ctx.board.set_wait(self.slot, wait);
        }
    }

    /// The message for a piece of body that arrived; the stream comes back with it.
    pub fn body_arrived<'py>(
        &mut self,
        py: Python<'py>,
        chunk: Option<BodyChunk>,
        rx: mpsc::Receiver<BodyChunk>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.body_waiting = false;
        self.set_wait(Wait::InApp);
        self.body_rx = Some(rx);
        self.chunk_message(py, chunk)
    }

    fn chunk_message<'py>(
        &mut self,
        py: Python<'py>,
        chunk: Option<BodyChunk>,
    ) -> PyResult<Bound<'py, PyDict>> {
        match chunk {
            Some(BodyChunk::Data(data)) => request_message(py, &data, true),
            Some(BodyChunk::End) => {
                self.body_rx = None;
                request_message(py, b"", false)
            }
            // A malformed body (the connection answers it) or a client gone mid-body.
            Some(BodyChunk::Failed(_)) | None => {
                self.body_rx = None;
                self.sender.disconnected = true;
                disconnect_message(py)
            }
        }
    }

    fn io(&self) -> Option<&tokio::runtime::Handle> {
        self.shared.ctx.io_handle.get()
    }

    /// Queue `out`; Ok(false) when it must wait for room (`send_later`).
    fn offer(&mut self, out: Out) -> PyResult<bool> {
        match self.sender.offer(out) {
            Offer::Sent => Ok(true),
            Offer::Full(out) => {
                self.pending = Some(Pending::Out(out));
                Ok(false)
            }
            Offer::Gone => Err(PyOSError::new_err("client disconnected")),
        }
    }

    /// Queue `out` whatever it takes, without a future to wait on (the request is ending).
    fn push_last(&mut self, out: Out) {
        if let Offer::Full(out) = self.sender.offer(out) {
            let reply = self.sender.reply().clone();
            if let Some(io) = self.io() {
                io.spawn(async move {
                    let _ = reply.send(out).await;
                });
            }
        }
    }

    /// `http.response.informational` (status 1xx, e.g. 103 Early Hints) before the response starts;
    /// the connection sends it to HTTP/1.1 clients only.
    fn informational(&mut self, msg: &Bound<'_, PyDict>) -> PyResult<bool> {
        if self.stage != Stage::Idle {
            return Err(PyRuntimeError::new_err(
                "'http.response.informational' is only allowed before 'http.response.start'",
            ));
        }
        let status: u16 = msg
            .get_item(intern!(msg.py(), "status"))?
            .ok_or_else(|| PyValueError::new_err("http.response.informational without a status"))?
            .extract()?;
        if !(100..200).contains(&status) || status == 101 {
            return Err(PyValueError::new_err(format!(
                "http.response.informational status {status}: must be 1xx, not 101"
            )));
        }
        let headers = match msg.get_item(intern!(msg.py(), "headers"))? {
            Some(h) => Self::fields(&h, None)?,
            None => Vec::new(),
        };
        self.offer(Out::Interim(Box::new(Interim { status, headers })))
    }

    fn start_response(&mut self, msg: &Bound<'_, PyDict>) -> PyResult<()> {
        if self.stage != Stage::Idle {
            return Err(PyRuntimeError::new_err(
                "Expected ASGI message 'http.response.body', but got 'http.response.start'",
            ));
        }
        let status: u16 = msg
            .get_item(intern!(msg.py(), "status"))?
            .ok_or_else(|| PyValueError::new_err("http.response.start without a status"))?
            .extract()
            .map_err(|_| PyTypeError::new_err("status must be an int"))?;
        if !(200..=999).contains(&status) {
            // A 1xx is interim: sent as the answer, the client would take the next response for this one.
            return Err(PyValueError::new_err(format!(
                "status {status} is not a final response (200 or more)"
            )));
        }
        let mut headers = Vec::new();
        let mut content_length = None;
        if let Some(list) = msg.get_item(intern!(msg.py(), "headers"))? {
            headers = Self::fields(&list, Some(&mut content_length))?;
        }
        self.trailers_expected = match msg.get_item(intern!(msg.py(), "trailers"))? {
            Some(t) => t.is_truthy()?,
            None => false,
        };
        self.status = status;
        self.headers = headers;
        self.content_length = content_length;
        self.stage = Stage::Started;
        Ok(())
    }

    /// Header fields of a message: validated, connection management dropped (the server's).
    fn fields(
        list: &Bound<'_, PyAny>,
        mut content_length: Option<&mut Option<u64>>,
    ) -> PyResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in list.try_iter()? {
            let item = item?;
            let name = item.get_item(0)?;
            let value = item.get_item(1)?;
            let bytes = |o: &Bound<'_, PyAny>| -> PyResult<Vec<u8>> {
                o.cast::<PyBytes>()
                    .map(|b| b.as_bytes().to_vec())
                    .map_err(|_| PyTypeError::new_err("header names and values must be bytes"))
            };
            let name = bytes(&name)?;
            let value = bytes(&value)?;
            let trimmed = value.trim_ascii().to_vec();
            if !http::valid_header_name(&name) {
                return Err(PyValueError::new_err(format!(
                    "invalid header name {:?}",
                    String::from_utf8_lossy(&name)
                )));
            }
            if !http::valid_header_value(&trimmed) {
                return Err(PyValueError::new_err(format!(
                    "invalid value for header {:?}",
                    String::from_utf8_lossy(&name)
                )));
            }
            let text = String::from_utf8_lossy(&name);
            if text.eq_ignore_ascii_case("content-length") {
                if let Some(cl) = content_length.as_deref_mut() {
                    let n = std::str::from_utf8(&trimmed)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| {
                            PyValueError::new_err(format!(
                                "invalid Content-Length {:?}",
                                String::from_utf8_lossy(&trimmed)
                            ))
                        })?;
                    *cl = Some(n);
                }
            } else if http::is_hop_by_hop(&text) {
                continue;
            }
            out.push((name, trimmed));
        }
        Ok(out)
    }

    fn body(&mut self, msg: &Bound<'_, PyDict>) -> PyResult<bool> {
        if !matches!(self.stage, Stage::Started | Stage::Streaming) {
            return Err(self.out_of_order("http.response.body"));
        }
        let py = msg.py();
        let body = match msg.get_item(intern!(msg.py(), "body"))? {
            Some(b) => b
                .cast_into::<PyBytes>()
                .map_err(|_| PyTypeError::new_err("http.response.body's body must be bytes"))?,
            None => PyBytes::new(py, b""),
        };
        let more = match msg.get_item(intern!(msg.py(), "more_body"))? {
            Some(m) => m.is_truthy()?,
            None => false,
        };
        let len = body.as_bytes().len();
        let first = self.stage == Stage::Started;
        let end = !more && !self.trailers_expected;
        if !first && len == 0 && !end {
            self.stage = if more {
                Stage::Streaming
            } else {
                Stage::Trailers
            };
            return Ok(true);
        }
        // The whole body in the first message: its length is known, so HTTP/1 sends a length.
        let total = (first && end).then_some(len as u64);
        let capacity = if len < ZERO_COPY_MIN { len } else { 0 };
        let mut piece = if first {
            let head = head_of(self.status, &self.headers, self.content_length);
            self.sender.piece(Some(&head), total, capacity)
        } else {
            self.sender.piece(None, None, capacity)
        };
        self.sender.push(&mut piece, &body);
        piece.end = end;
        self.stage = if end {
            Stage::Done
        } else if more {
            Stage::Streaming
        } else {
            Stage::Trailers
        };
        if piece.head.is_none() && !piece.end && piece.body_len() == 0 {
            return Ok(true);
        }
        self.offer(Out::Piece(Box::new(piece)))
    }

    fn trailers(&mut self, msg: &Bound<'_, PyDict>) -> PyResult<bool> {
        if self.stage != Stage::Trailers {
            return Err(self.out_of_order("http.response.trailers"));
        }
        let fields = match msg.get_item(intern!(msg.py(), "headers"))? {
            Some(list) => Self::fields(&list, None)?,
            None => Vec::new(),
        };
        let more = match msg.get_item(intern!(msg.py(), "more_trailers"))? {
            Some(m) => m.is_truthy()?,
            None => false,
        };
        let mut piece = self.sender.piece(None, None, 0);
        piece.trailers = fields
            .into_iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(&n).into_owned(),
                    v.iter().map(|&b| b as char).collect(),
                )
            })
            .collect();
        if more {
            // Trailers go out together, with the last chunk: keep them for the last message.
            return Err(PyValueError::new_err(
                "more_trailers is not supported: send all trailers in one message",
            ));
        }
        piece.end = true;
        self.stage = Stage::Done;
        self.offer(Out::Piece(Box::new(piece)))
    }

    fn pathsend(&mut self, msg: &Bound<'_, PyDict>) -> PyResult<bool> {
        if self.stage != Stage::Started {
            return Err(self.out_of_order("http.response.pathsend"));
        }
        let path: std::path::PathBuf = msg
            .get_item(intern!(msg.py(), "path"))?
            .ok_or_else(|| PyValueError::new_err("http.response.pathsend without a path"))?
            .extract()?;
        let file = std::fs::File::open(&path)
            .map_err(|e| PyOSError::new_err(format!("{}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| PyOSError::new_err(format!("{}: {e}", path.display())))?
            .len();
        let head = head_of(self.status, &self.headers, self.content_length);
        let out = self.sender.file(Some(&head), file, 0, len);
        self.stage = Stage::Done;
        self.offer(out)
    }

    /// `http.response.zerocopy`: a file the app opened, from `offset` (else its current position) for
    /// `count` bytes (else to its end). The whole response in one message goes out with sendfile(2), as
    /// `pathsend` does; a piece among others (`more_body`, or after body messages) is read and sent as a
    /// body message — same bytes, copied.
    fn zerocopy(&mut self, msg: &Bound<'_, PyDict>) -> PyResult<bool> {
        use std::os::fd::FromRawFd;
        use std::os::unix::fs::FileExt;

        if !matches!(self.stage, Stage::Started | Stage::Streaming) {
            return Err(self.out_of_order("http.response.zerocopy"));
        }
        let py = msg.py();
        let fd: i32 = msg
            .get_item(intern!(msg.py(), "file"))?
            .ok_or_else(|| PyValueError::new_err("http.response.zerocopy without a file"))?
            .call_method0("fileno")?
            .extract()?;
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor number only reads it; a bad one is an error.
        let own = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if own < 0 {
            return Err(PyOSError::new_err(format!(
                "http.response.zerocopy: file descriptor {fd}: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: a descriptor we just created and now own.
        let file = unsafe { std::fs::File::from_raw_fd(own) };
        let size = file
            .metadata()
            .map_err(|e| PyOSError::new_err(format!("http.response.zerocopy: {e}")))?
            .len();
        let offset = match msg.get_item(intern!(msg.py(), "offset"))? {
            Some(o) if !o.is_none() => o.extract::<u64>()?,
            // SAFETY: lseek with SEEK_CUR and 0 only reads the descriptor's position.
            _ => u64::try_from(unsafe { libc::lseek(own, 0, libc::SEEK_CUR) }).unwrap_or(0),
        };
        let rest = size.saturating_sub(offset);
        let count = match msg.get_item(intern!(msg.py(), "count"))? {
            Some(c) if !c.is_none() => c.extract::<u64>()?.min(rest),
            _ => rest,
        };
        let more = match msg.get_item(intern!(msg.py(), "more_body"))? {
            Some(m) => m.is_truthy()?,
            None => false,
        };
        if self.stage == Stage::Started && !more && !self.trailers_expected {
            let head = head_of(self.status, &self.headers, self.content_length);
            let out = self.sender.file(Some(&head), file, offset, count);
            self.stage = Stage::Done;
            return self.offer(out);
        }
        let mut bytes = vec![0u8; usize::try_from(count).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut bytes, offset)
            .map_err(|e| PyOSError::new_err(format!("http.response.zerocopy: {e}")))?;
        let piece = PyDict::new(py);
        piece.set_item(intern!(py, "type"), intern!(py, "http.response.body"))?;
        piece.set_item(intern!(py, "body"), PyBytes::new(py, &bytes))?;
        piece.set_item(intern!(py, "more_body"), more)?;
        self.body(&piece)
    }

    fn out_of_order(&self, got: &str) -> PyErr {
        let expected = match self.stage {
            Stage::Idle => "'http.response.start'",
            Stage::Started | Stage::Streaming => "'http.response.body'",
            Stage::Trailers => "'http.response.trailers'",
            Stage::Done => "nothing: the response is complete",
        };
        PyRuntimeError::new_err(format!("Expected ASGI message {expected}, but got '{got}'"))
    }

    /// Answer 500 in the app's place (the head has not gone out), or cut the connection.
    fn fail_response(&mut self) {
        if self.sender.disconnected {
            return;
        }
        if self.sender.head_sent() {
            self.push_last(Out::Abort);
            return;
        }
        const BODY: &[u8] = b"Internal Server Error";
        let headers = vec![
            (
                b"content-type".to_vec(),
                b"text/plain; charset=utf-8".to_vec(),
            ),
            (
                b"content-length".to_vec(),
                BODY.len().to_string().into_bytes(),
            ),
        ];
        self.status = 500;
        self.headers = headers;
        self.content_length = Some(BODY.len() as u64);
        let head = ResponseHead {
            close: true,
            ..head_of(500, &self.headers, self.content_length)
        };
        let mut piece = self
            .sender
            .piece(Some(&head), Some(BODY.len() as u64), BODY.len());
        piece.buf.extend_from_slice(BODY);
        piece.end = true;
        self.sender.body_sent += BODY.len() as u64;
        self.stage = Stage::Done;
        self.push_last(Out::Piece(Box::new(piece)));
    }

    /// The request's end: its access line, `post_request`, its scoreboard entry freed.
    fn end(&mut self, py: Python<'_>) {
        let Some(scope) = self.scope.take() else {
            return;
        };
        let ctx = self.shared.ctx.clone();
        let want_text = ctx.access_log.is_some() || self.hook_req.is_some();
        let text: Vec<(String, String)> = if want_text {
            self.headers
                .iter()
                .map(|(n, v)| {
                    (
                        String::from_utf8_lossy(n).into_owned(),
                        v.iter().map(|&b| b as char).collect(),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let head_sent = self.sender.head_sent();
        scope.log(&Outcome {
            status: self.status,
            headers: &text,
            body_sent: head_sent.then_some(self.sender.body_sent),
            environ: None,
        });
        if let Some(req) = self.hook_req.take() {
            let sent = hooks::Sent {
                status: self.status,
                headers: &text,
                body_sent: self.sender.body_sent,
            };
            hooks::post_request(py, &ctx, req.into_bound(py), None, &sent);
        }
        drop(scope);
        self.shared.slots.give(self.slot);
        self.slot = super::NO_SLOT;
    }

    fn log_with(&self, level: crate::log::Level, msg: &str, stack: &str) {
        self.shared
            .ctx
            .log
            .log_with_text(level, msg, stack.as_bytes());
    }

    fn what(&self) -> String {
        format!(
            "{} {} from {}",
            self.head.method,
            self.head.target,
            self.conn.peer.label()
        )
    }
}

#[pymethods]
impl AsgiRequest {
    /// The request's `scope` (`state`: the lifespan's, copied for this request).
    #[pyo3(signature = (root_path, state=None))]
    fn scope<'py>(
        &self,
        py: Python<'py>,
        root_path: &str,
        state: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let head = &self.head;
        let d = PyDict::new(py);
        let ws = self.ws.is_some();
        d.set_item(
            intern!(py, "type"),
            if ws {
                intern!(py, "websocket")
            } else {
                intern!(py, "http")
            },
        )?;
        let asgi = PyDict::new(py);
        asgi.set_item(intern!(py, "version"), intern!(py, "3.0"))?;
        asgi.set_item(intern!(py, "spec_version"), intern!(py, "2.4"))?;
        d.set_item(intern!(py, "asgi"), asgi)?;
        d.set_item(
            intern!(py, "http_version"),
            match head.http_version() {
                "2" => intern!(py, "2"),
                "1.0" => intern!(py, "1.0"),
                _ => intern!(py, "1.1"),
            },
        )?;
        let scheme = match (ws, self.conn.https) {
            (false, false) => "http",
            (false, true) => "https",
            (true, false) => "ws",
            (true, true) => "wss",
        };
        d.set_item(intern!(py, "scheme"), scheme)?;
        if !ws {
            d.set_item(intern!(py, "method"), head.method.as_str())?;
        }
        let decoded = http::percent_decode(head.path.as_bytes());
        d.set_item(intern!(py, "path"), String::from_utf8_lossy(&decoded))?;
        d.set_item(
            intern!(py, "raw_path"),
            PyBytes::new(py, head.path.as_bytes()),
        )?;
        d.set_item(
            intern!(py, "query_string"),
            PyBytes::new(py, head.query.as_bytes()),
        )?;
        d.set_item(intern!(py, "root_path"), root_path)?;
        let headers = PyList::empty(py);
        for (name, value) in &head.headers {
            let name = name.to_ascii_lowercase();
            headers.append(PyTuple::new(
                py,
                [PyBytes::new(py, name.as_bytes()), PyBytes::new(py, value)],
            )?)?;
        }
        d.set_item(intern!(py, "headers"), headers)?;
        let peer = &self.conn.peer;
        if peer.ip.is_empty() {
            d.set_item(intern!(py, "client"), py.None())?;
        } else {
            d.set_item(intern!(py, "client"), (peer.ip.as_str(), peer.port))?;
        }
        let server = &self.conn.server;
        match server.port.parse::<u16>() {
            Ok(port) => d.set_item(intern!(py, "server"), (server.name.as_str(), port))?,
            Err(_) => d.set_item(intern!(py, "server"), (server.name.as_str(), py.None()))?,
        }
        let ext = PyDict::new(py);
        if ws {
            ext.set_item(intern!(py, "websocket.http.response"), PyDict::new(py))?;
            let offered: Vec<String> = head
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
                .flat_map(|(_, v)| {
                    String::from_utf8_lossy(v)
                        .split(',')
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect::<Vec<_>>()
                })
                .collect();
            d.set_item(intern!(py, "subprotocols"), offered)?;
        } else {
            ext.set_item(intern!(py, "http.response.trailers"), PyDict::new(py))?;
            ext.set_item(intern!(py, "http.response.pathsend"), PyDict::new(py))?;
            ext.set_item(intern!(py, "http.response.zerocopy"), PyDict::new(py))?;
        }
        if let Some(tls) = &self.conn.tls {
            ext.set_item(intern!(py, "tls"), tls_extension(py, tls)?)?;
        }
        d.set_item(intern!(py, "extensions"), ext)?;
        if let Some(state) = state {
            d.set_item(
                intern!(py, "state"),
                state.call_method0(intern!(py, "copy"))?,
            )?;
        }
        Ok(d)
    }

    /// The next message, if it is here now; None: await `receive_later`'s future.
    fn receive_now<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        if let Some(ws) = self.ws.as_mut() {
            return ws.receive_now(py);
        }
        if let Some(data) = self.prefetched.take() {
            return request_message(py, &data, self.body_rx.is_some()).map(Some);
        }
        if self.body_waiting {
            return Err(PyRuntimeError::new_err(
                "receive() called while another receive() is waiting",
            ));
        }
        if let Some(rx) = self.body_rx.as_mut() {
            // The app reads past what came with the head: the connection starts pumping (and sends
            // `100 Continue` if the client waits for it).
            if let Some(start) = self.start.take() {
                let _ = start.send(());
            }
            return match rx.try_recv() {
                Ok(chunk) => self.chunk_message(py, Some(chunk)).map(Some),
                Err(mpsc::error::TryRecvError::Empty) => Ok(None),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.chunk_message(py, None).map(Some)
                }
            };
        }
        if self.stage == Stage::Done || self.sender.disconnected || self.sender.reply().is_closed()
        {
            return disconnect_message(py).map(Some);
        }
        Ok(None)
    }

    /// Resolve `fut` with the next message once it arrives: body bytes, or the client gone.
    fn receive_later(slf: Bound<'_, Self>, fut: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let mut this = slf.borrow_mut();
        let shared = this.shared.clone();
        let Some(io) = this.io().cloned() else {
            return resolve_now(py, &fut, disconnect_message(py)?.into_any());
        };
        if let Some(ws) = this.ws.as_mut() {
            let Some(mut rx) = ws.take_rx() else {
                let msg = ws.arrived(py, None, None)?;
                return resolve_now(py, &fut, msg.into_any());
            };
            let req = slf.clone().unbind();
            this.set_wait(Wait::Message);
            io.spawn(async move {
                let msg = rx.recv().await;
                shared.post(Wake::Ws { req, fut, msg, rx });
            });
            return Ok(());
        }
        if let Some(mut rx) = this.body_rx.take() {
            this.body_waiting = true;
            this.set_wait(Wait::Body);
            let req = slf.clone().unbind();
            io.spawn(async move {
                let chunk = rx.recv().await;
                shared.post(Wake::Body {
                    req,
                    fut,
                    chunk,
                    rx,
                });
            });
            return Ok(());
        }
        let reply = this.sender.reply().clone();
        this.set_wait(Wait::Disconnect);
        io.spawn(async move {
            reply.closed().await;
            shared.post(Wake::Gone { fut });
        });
        Ok(())
    }

    /// `receive()` as the app gets it: an awaitable of the next message. A message that is here
    /// already (the body read with the head, the end of the response) is a ready-made awaitable, so
    /// the task goes on without a future or a trip through the loop; else a future of the loop that
    /// the I/O thread resolves.
    fn receive<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let now = slf.borrow_mut().receive_now(py)?;
        if let Some(msg) = now {
            return Ready::value(py, msg.into_any());
        }
        let fut = slf.borrow().shared.new_future(py)?;
        Self::receive_later(slf, fut.clone().unbind())?;
        Ok(fut)
    }

    /// `send(message)` as the app gets it: an awaitable of None. A message queued at once (there is
    /// room towards the client) is a ready-made awaitable; one that must wait for room is a future of
    /// the loop, which raises `OSError` if the client goes away meanwhile.
    fn send<'py>(
        slf: Bound<'py, Self>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let done = slf.borrow_mut().take_message(message)?;
        if done {
            return Ready::none(py);
        }
        let fut = slf.borrow().shared.new_future(py)?;
        Self::send_later(slf, fut.clone().unbind())?;
        Ok(fut)
    }

    /// Take one `send()` message. True: done; False: await `send_later`'s future (the client reads
    /// slowly). Raises OSError once the client is gone, RuntimeError for a message out of order.
    fn take_message(&mut self, msg: &Bound<'_, PyAny>) -> PyResult<bool> {
        let msg = msg
            .cast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("an ASGI message must be a dict"))?;
        let kind = msg
            .get_item(intern!(msg.py(), "type"))?
            .ok_or_else(|| PyValueError::new_err("an ASGI message needs a 'type'"))?;
        let kind = kind
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("an ASGI message's type must be a str"))?
            .to_cow()?
            .into_owned();
        if let Some(ws) = self.ws.as_mut() {
            let http = match kind.as_str() {
                "websocket.http.response.start" => Some(true),
                "websocket.http.response.body" => Some(false),
                _ => None,
            };
            let Some(start) = http else {
                return match ws.send(&kind, msg, |h| Self::fields(h, None))? {
                    websocket::Sent::Done => Ok(true),
                    websocket::Sent::Wait(m) => {
                        self.pending = Some(Pending::Ws(m));
                        Ok(false)
                    }
                };
            };
            // A refusal with a response of its own: only instead of an accept.
            if ws.stage != websocket::Stage::Handshake {
                return Err(PyRuntimeError::new_err(format!(
                    "'{kind}' is only allowed before 'websocket.accept'"
                )));
            }
            let done = if start {
                self.start_response(msg).map(|_| true)
            } else {
                self.body(msg)
            };
            if self.stage == Stage::Done {
                if let Some(ws) = self.ws.as_mut() {
                    ws.stage = websocket::Stage::Closed;
                }
            }
            return done;
        }
        if self.sender.disconnected {
            return Err(PyOSError::new_err("client disconnected"));
        }
        match kind.as_str() {
            "http.response.start" => self.start_response(msg).map(|_| true),
            "http.response.informational" => self.informational(msg),
            "http.response.body" => self.body(msg),
            "http.response.trailers" => self.trailers(msg),
            "http.response.pathsend" => self.pathsend(msg),
            "http.response.zerocopy" => self.zerocopy(msg),
            other => Err(PyRuntimeError::new_err(format!(
                "Unexpected ASGI message '{other}' sent to an http scope"
            ))),
        }
    }

    /// Resolve `fut` with None once the piece `send` could not queue is queued (an `OSError` once the
    /// client is gone).
    fn send_later(slf: Bound<'_, Self>, fut: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let mut this = slf.borrow_mut();
        let out = match this.pending.take() {
            None => return resolve_now(py, &fut, py.None().into_bound(py)),
            Some(Pending::Ws(m)) => {
                let shared = this.shared.clone();
                let sender = this.ws.as_ref().and_then(|w| w.sender());
                let (Some(io), Some(tx)) = (this.io().cloned(), sender) else {
                    return sent_outcome(py, &fut, false);
                };
                let req = slf.clone().unbind();
                this.set_wait(Wait::ClientRead);
                io.spawn(async move {
                    let ok = tx.send(m).await.is_ok();
                    shared.post(Wake::Sent { req, fut, ok });
                });
                return Ok(());
            }
            Some(Pending::Out(out)) => out,
        };
        let shared = this.shared.clone();
        let reply = this.sender.reply().clone();
        let Some(io) = this.io().cloned() else {
            return sent_outcome(py, &fut, false);
        };
        let req = slf.clone().unbind();
        this.set_wait(Wait::ClientRead);
        io.spawn(async move {
            let ok = reply.send(out).await.is_ok();
            shared.post(Wake::Sent { req, fut, ok });
        });
        Ok(())
    }

    /// The app returned (`error`: it raised; `cancelled`: its task was cancelled). Answers for an app
    /// that did not finish its response, logs as gunicorn does, and ends the request's bookkeeping.
    #[pyo3(signature = (error=None, cancelled=false))]
    fn finish(&mut self, py: Python<'_>, error: Option<Bound<'_, PyAny>>, cancelled: bool) {
        let log = self.shared.ctx.log.clone();
        if let Some(ws) = self.ws.as_mut() {
            let answered_http = self.stage != Stage::Idle;
            let handshake = matches!(
                ws.stage,
                websocket::Stage::Handshake | websocket::Stage::Connecting
            );
            match error {
                Some(err) => {
                    let err = PyErr::from_value(err);
                    let tb = crate::python::format_exception(py, &err);
                    log.error(&format!(
                        "Error handling websocket {}\n{tb}",
                        self.head.target
                    ));
                    // The 500 is queued before the session's channels close (see `worker::ws`).
                    let refuse = handshake || answered_http;
                    if refuse {
                        self.fail_response();
                    }
                    if let Some(ws) = self.ws.as_mut() {
                        ws.end(true);
                    }
                }
                None => ws.end(false),
            }
            if !answered_http {
                // The access line: 101 for a session, 403 for a handshake refused (or never answered).
                self.status = if handshake { 403 } else { 101 };
            }
            self.end(py);
            return;
        }
        if let Some(err) = error {
            let err = PyErr::from_value(err);
            let tb = crate::python::format_exception(py, &err);
            log.error(&format!(
                "Error handling request {} {}\n{tb}",
                self.head.method, self.head.target
            ));
            self.fail_response();
        } else if cancelled {
            // Cancelled for `--timeout` (the connection answered 504) or because the worker stops.
            if self.stage != Stage::Done {
                self.push_last(Out::Abort);
            }
        } else if self.stage != Stage::Done
            && (self.sender.disconnected || self.sender.reply().is_closed())
        {
            // The client went away and the app, told so, gave up: nothing to answer or complain about.
            self.push_last(Out::Abort);
        } else {
            match self.stage {
                Stage::Done => {}
                Stage::Idle => {
                    log.error(&format!(
                        "ASGI callable returned without starting response: {} {}",
                        self.head.method, self.head.target
                    ));
                    self.fail_response();
                }
                _ => {
                    log.error(&format!(
                        "ASGI callable returned without completing response: {} {}",
                        self.head.method, self.head.target
                    ));
                    self.fail_response();
                }
            }
        }
        self.end(py);
    }

    /// Log the `--timeout` of this request with its task's await stack (the task is cancelled next).
    fn timed_out(&self, elapsed: f64, stack: &str) {
        let pid = std::process::id();
        let log = &self.shared.ctx.log;
        log.critical(&format!(
            "WORKER TIMEOUT (pid:{pid}): a request's task ran past --timeout {}s and is cancelled; the worker goes on",
            self.shared.ctx.cfg.timeout
        ));
        self.log_with(
            crate::log::Level::Critical,
            &format!(
                "Request exceeded --timeout {}s: {} (running for {elapsed:.1}s, worker {pid}, task {}). Await stack of its task (most recent call first):",
                self.shared.ctx.cfg.timeout,
                self.what(),
                self.id
            ),
            stack,
        );
    }

    /// The client left mid-request and the task still runs after the grace period: it is cancelled
    /// next.
    fn client_left(&self, grace: f64) {
        self.shared.ctx.log.info(&format!(
            "Request {}: its client left {grace:.0}s ago and the task still runs: cancelled (--asgi-disconnect-grace-period {grace:.0}s)",
            self.what()
        ));
    }

    /// Log `--slow-request-threshold` for this request with its task's await stack.
    fn slow(&self, elapsed: f64, stack: &str) {
        self.log_with(
            crate::log::Level::Warning,
            &format!(
                "Slow request: {} still running after {elapsed:.1}s (--slow-request-threshold {}s; worker {}, task {}). Its await stack now (most recent call first):",
                self.what(),
                self.shared.ctx.cfg.slow_request_threshold,
                std::process::id(),
                self.id
            ),
            stack,
        );
    }
}

impl Drop for AsgiRequest {
    fn drop(&mut self) {
        // A request dropped without `finish` (its loop stopped): free its entry all the same.
        self.shared.slots.give(self.slot);
    }
}

fn resolve_now(py: Python<'_>, fut: &Py<PyAny>, value: Bound<'_, PyAny>) -> PyResult<()> {
    fut.bind(py)
        .call_method1(intern!(py, "set_result"), (value,))?;
    Ok(())
}

/// Settle a `send()` future that waited for room: None once the piece is queued, `OSError` when the
/// client went away first (a future already cancelled is left alone).
pub fn sent_outcome(py: Python<'_>, fut: &Py<PyAny>, ok: bool) -> PyResult<()> {
    let fut = fut.bind(py);
    if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    if ok {
        fut.call_method1(intern!(py, "set_result"), (py.None(),))?;
    } else {
        let err = PyOSError::new_err("client disconnected");
        fut.call_method1(intern!(py, "set_exception"), (err.value(py),))?;
    }
    Ok(())
}

/// A value that is already there, as an awaitable: `await` gives it at once, without suspending the
/// task (what `receive()` and `send()` return when nothing has to wait).
#[pyclass(frozen, module = "ferricorn")]
pub struct Ready {
    value: Option<Py<PyAny>>,
}

impl Ready {
    fn value<'py>(py: Python<'py>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        Ok(Bound::new(
            py,
            Ready {
                value: Some(value.unbind()),
            },
        )?
        .into_any())
    }

    /// The one awaitable of None.
    fn none(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        static NONE: PyOnceLock<Py<Ready>> = PyOnceLock::new();
        let none = NONE.get_or_try_init(py, || Py::new(py, Ready { value: None }))?;
        Ok(none.bind(py).clone().into_any())
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match &self.value {
            // The awaitable's result travels in StopIteration's value.
            Some(v) => Err(PyStopIteration::new_err((v.clone_ref(py),))),
            None => Ok(None),
        }
    }
}

/// The ASGI TLS extension's dict (asgiref's "TLS" extension spec): the server certificate, the
/// client's chain and name (RFC 4514), the version and cipher suite numbers. A client certificate that
/// fails verification is refused in the handshake, so `client_cert_error` is always None.
fn tls_extension<'py>(py: Python<'py>, tls: &crate::tls::TlsInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("server_cert", &*tls.server_cert)?;
    match &tls.client {
        Some(c) => {
            d.set_item("client_cert_chain", c.chain_pem.clone())?;
            d.set_item("client_cert_name", c.subject.as_str())?;
        }
        None => {
            d.set_item("client_cert_chain", PyList::empty(py))?;
            d.set_item("client_cert_name", py.None())?;
        }
    }
    d.set_item("client_cert_error", py.None())?;
    d.set_item("tls_version", (tls.version != 0).then_some(tls.version))?;
    d.set_item(
        "cipher_suite",
        (tls.cipher_suite != 0).then_some(tls.cipher_suite),
    )?;
    Ok(d)
}
