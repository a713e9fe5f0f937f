//! The response side of a WSGI call: `start_response` (with PEP 3333's `exc_info` rules), the `write()`
//! callable, and the framing of the body (the app's Content-Length, a length we know because the whole body
//! is in hand, chunked on HTTP/1.1, or close-delimited on HTTP/1.0 and after a 2xx to CONNECT).
//!
//! Everything is serialized on the Python thread and handed to the I/O thread as ready-to-write bytes, so
//! the I/O thread only copies buffers to sockets.

use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::http;
use crate::worker::exchange::{FileBody, Out, Payload, ZERO_COPY_MIN};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body may be sent (HEAD, 1xx, 204, 304).
    NoBody,
    /// Content-Length: at most this many bytes are still to be sent.
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length: the body ends when the connection closes.
    UntilClose,
}

#[pyclass(module = "ferricorn")]
pub struct Responder {
    reply: mpsc::Sender<Out>,
    version_minor: u8,
    head_only: bool,
    /// The request is a CONNECT: a 2xx to it has no framing (RFC 9110 §9.3.6).
    connect: bool,
    keep_alive: bool,
    status: Option<String>,
    pub status_code: u16,
    pub headers: Vec<(String, String)>,
    content_length: Option<u64>,
    headers_sent: bool,
    framing: Framing,
    pub body_sent: u64,
    /// The client is gone: nothing more is sent.
    pub disconnected: bool,
    stopping: Arc<AtomicBool>,
}

/// The client went away while the response was being sent.
pub struct Disconnected;

impl Responder {
    /// `stopping` is the worker's flag: once it is set, every head written says `Connection: close`.
    pub fn new(
        reply: mpsc::Sender<Out>,
        version_minor: u8,
        method: &str,
        keep_alive: bool,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Responder {
            reply,
            version_minor,
            head_only: method == "HEAD",
            connect: method == "CONNECT",
            keep_alive,
            status: None,
            status_code: 0,
            headers: Vec::new(),
            content_length: None,
            headers_sent: false,
            framing: Framing::NoBody,
            body_sent: 0,
            disconnected: false,
            stopping,
        }
    }

    pub fn started(&self) -> bool {
        self.status.is_some()
    }

    pub fn headers_sent(&self) -> bool {
        self.headers_sent
    }

    /// Queue a piece for the I/O thread. Blocks (with the GIL released) only when the client reads more
    /// slowly than the app produces.
    pub fn send(&mut self, py: Python<'_>, out: Out) -> Result<(), Disconnected> {
        if self.disconnected {
            return Err(Disconnected);
        }
        let res = match self.reply.try_send(out) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(out)) => {
                let reply = &self.reply;
                py.detach(|| reply.blocking_send(out))
                    .map_err(|_| Disconnected)
            }
            Err(TrySendError::Closed(_)) => Err(Disconnected),
        };
        if res.is_err() {
            self.disconnected = true;
        }
        res
    }

    /// Serialize the head, deciding the framing. `known_total` is the body length when the whole body is
    /// already in hand.
    fn write_head(&mut self, buf: &mut Vec<u8>, known_total: Option<u64>) {
        let status = self
            .status
            .as_deref()
            .unwrap_or("500 Internal Server Error");
        let code = self.status_code;
        let no_body = self.head_only || code < 200 || code == 204 || code == 304;
        // A 2xx to CONNECT carries neither Content-Length nor Transfer-Encoding: what follows its head is
        // the tunnel, so the app's bytes go out as they are and the connection's end ends them (the parser
        // never keeps a CONNECT's connection alive).
        let tunnel = self.connect && (200..300).contains(&code);
        self.framing = if tunnel {
            Framing::UntilClose
        } else if let Some(n) = self.content_length {
            if no_body {
                Framing::NoBody
            } else {
                Framing::Length(n)
            }
        } else if no_body {
            Framing::NoBody
        } else if let Some(n) = known_total {
            Framing::Length(n)
        } else if self.version_minor >= 1 {
            Framing::Chunked
        } else {
            Framing::UntilClose
        };
        // Decided as late as possible: a worker that began to stop while the app ran closes after this.
        if self.framing == Framing::UntilClose || self.stopping.load(Ordering::Acquire) {
            self.keep_alive = false;
        }
        // The status was validated by start_response; the fallback above is well-formed too.
        let _ = http::write_status_line(buf, self.version_minor, status);
        let mut has_date = false;
        let mut has_server = false;
        for (name, value) in &self.headers {
            if tunnel && name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            if name.eq_ignore_ascii_case("date") {
                has_date = true;
            } else if name.eq_ignore_ascii_case("server") {
                has_server = true;
            }
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        if !has_server {
            buf.extend_from_slice(b"Server: ferricorn\r\n");
        }
        if !has_date {
            http::write_date_header(buf);
        }
        if self.content_length.is_none() {
            match (self.framing, known_total) {
                (Framing::Length(n), _) | (Framing::NoBody, Some(n))
                    if code >= 200 && code != 204 && code != 304 =>
                {
                    buf.extend_from_slice(b"Content-Length: ");
                    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    buf.extend_from_slice(b"\r\n");
                }
                (Framing::Chunked, _) => buf.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
                _ => {}
            }
        }
        if !self.keep_alive {
            buf.extend_from_slice(b"Connection: close\r\n");
        } else if self.version_minor == 0 {
            buf.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        self.headers_sent = true;
    }

    /// Append body bytes under the chosen framing (truncating past a declared Content-Length, as a client
    /// would misread anything beyond it). A large body is borrowed from the app's object, not copied.
    fn frame_body(&mut self, out: &mut Payload, bytes: &Bound<'_, PyBytes>) {
        let len = bytes.as_bytes().len();
        let n = match self.framing {
            Framing::NoBody => return,
            Framing::Length(left) => {
                let n = (len as u64).min(left);
                self.framing = Framing::Length(left - n);
                n as usize
            }
            Framing::Chunked | Framing::UntilClose => len,
        };
        if n == 0 {
            return;
        }
        self.body_sent += n as u64;
        let chunked = self.framing == Framing::Chunked;
        if chunked {
            http::write_chunk_size(out.buf_mut(), n);
        }
        out.push_app(bytes, n);
        if chunked {
            out.push(b"\r\n");
        }
    }

    /// Send one piece of body (the head first if it has not gone yet).
    pub fn send_body(
        &mut self,
        py: Python<'_>,
        bytes: &Bound<'_, PyBytes>,
    ) -> Result<(), Disconnected> {
        let len = bytes.as_bytes().len();
        if self.headers_sent && len == 0 {
            return Ok(());
        }
        let mut out = Payload::with_capacity(if len < ZERO_COPY_MIN { len + 256 } else { 256 });
        if !self.headers_sent {
            self.write_head(&mut out.head, None);
        }
        self.frame_body(&mut out, bytes);
        if out.is_empty() {
            return Ok(());
        }
        self.send(py, Out::Bytes(Box::new(out)))
    }

    /// Send the whole response at once (head, the complete body and the end): one message, one write.
    pub fn send_complete(
        &mut self,
        py: Python<'_>,
        parts: &[Bound<'_, PyBytes>],
    ) -> Result<(), Disconnected> {
        let total: usize = parts.iter().map(|p| p.as_bytes().len()).sum();
        let mut out = Payload::with_capacity(if total < ZERO_COPY_MIN {
            total + 256
        } else {
            256
        });
        if !self.headers_sent {
            self.write_head(&mut out.head, Some(total as u64));
        }
        for p in parts {
            self.frame_body(&mut out, p);
        }
        self.end_and_send(py, out)
    }

    /// The whole body as a file, sent with sendfile (its length is the file's unless the app declared
    /// one), ending the response. Head, file and end travel as one message, so the I/O thread knows before
    /// a long send that Python is done with the request and its thread is free for the next.
    pub fn send_file(
        &mut self,
        py: Python<'_>,
        file: std::fs::File,
        offset: u64,
        len: u64,
    ) -> Result<(), Disconnected> {
        let mut head = Vec::with_capacity(256);
        if !self.headers_sent {
            self.write_head(&mut head, Some(len));
        }
        let count = match self.framing {
            Framing::Length(left) => left.min(len),
            Framing::UntilClose => len,
            Framing::NoBody => 0,
            Framing::Chunked => {
                // A head already sent as chunked cannot carry a raw file; frame it through Python instead.
                return Err(Disconnected);
            }
        };
        if let Framing::Length(left) = self.framing {
            self.framing = Framing::Length(left - count);
        }
        self.body_sent += count;
        // A file shorter than the declared length ends the connection (see `end_body`); nothing to write.
        let mut rest = Payload::default();
        self.end_body(&mut rest);
        debug_assert!(rest.is_empty());
        self.send(
            py,
            Out::File(Box::new(FileBody {
                head,
                file,
                offset,
                count,
                keep_alive: self.keep_alive,
            })),
        )
    }

    pub fn is_chunked(&self) -> bool {
        self.framing == Framing::Chunked
    }

    fn end_body(&mut self, out: &mut Payload) {
        match self.framing {
            Framing::Chunked => http::write_last_chunk(out.buf_mut()),
            // Fewer bytes than the declared Content-Length: the client would wait for the rest, so the
            // connection must close to end the response.
            Framing::Length(left) if left > 0 => self.keep_alive = false,
            _ => {}
        }
    }

    /// End the response after streaming: the last chunk (if chunked) and the end marker.
    pub fn finish(&mut self, py: Python<'_>) -> Result<(), Disconnected> {
        let mut out = Payload::default();
        if !self.headers_sent {
            self.write_head(&mut out.head, Some(0));
        }
        self.end_and_send(py, out)
    }

    /// Close the body in `out` (last chunk, or note a short Content-Length) and send it as the response's
    /// last piece.
    fn end_and_send(&mut self, py: Python<'_>, mut out: Payload) -> Result<(), Disconnected> {
        self.end_body(&mut out);
        if out.is_empty() {
            return self.send(
                py,
                Out::Done {
                    keep_alive: self.keep_alive,
                },
            );
        }
        out.end = Some(self.keep_alive);
        self.send(py, Out::Bytes(Box::new(out)))
    }

    /// Replace whatever the app set with an error response (only before the head went out).
    pub fn set_error(&mut self, code: u16) {
        self.status = Some(format!("{code} {}", http::reason_phrase(code)));
        self.status_code = code;
        self.headers = vec![("Content-Type".into(), "text/html".into())];
        self.content_length = None;
        self.keep_alive = false;
    }

    pub fn abort(&mut self, py: Python<'_>) {
        let _ = self.send(py, Out::Abort);
    }

    fn set_status_and_headers(
        &mut self,
        status: String,
        headers: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let code = parse_status(&status)?;
        if code < 200 {
            // RFC 9110 §15.2: a 1xx is interim, and the request still needs its final answer. Sent as the
            // answer, it would leave the client taking the next response on the connection for this
            // request's. The app's error is logged and the client gets a 500.
            return Err(PyValueError::new_err(format!(
                "status '{status}' is not a final response: start_response() needs a status of 200 or \
                 more (1xx responses are interim)"
            )));
        }
        let mut out = Vec::new();
        let mut content_length = None;
        for item in headers.try_iter()? {
            let item = item?;
            let tuple = item.cast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err("response headers must be a list of (name, value) tuples")
            })?;
            if tuple.len() != 2 {
                return Err(PyTypeError::new_err(
                    "a response header must be a (name, value) tuple",
                ));
            }
            let name: String = tuple
                .get_item(0)?
                .extract()
                .map_err(|_| PyTypeError::new_err("header name must be a str"))?;
            let value: String = tuple.get_item(1)?.extract().map_err(|_| {
                PyTypeError::new_err(format!("value of header {name:?} must be a str"))
            })?;
            let name = name.trim().to_string();
            if !http::valid_header_name(name.as_bytes()) {
                return Err(PyValueError::new_err(format!(
                    "invalid header name {name:?}"
                )));
            }
            let value = value.trim().to_string();
            if !http::valid_header_value(value.as_bytes()) {
                return Err(PyValueError::new_err(format!(
                    "invalid value for header {name:?}"
                )));
            }
            if name.eq_ignore_ascii_case("content-length") {
                let n = value.parse::<u64>().map_err(|_| {
                    PyValueError::new_err(format!("invalid Content-Length {value:?}"))
                })?;
                content_length = Some(n);
            } else if http::is_hop_by_hop(&name) {
                // Connection management belongs to the server, as in gunicorn.
                continue;
            }
            out.push((name, value));
        }
        self.status = Some(status);
        self.status_code = code;
        self.headers = out;
        self.content_length = content_length;
        Ok(())
    }
}

fn parse_status(status: &str) -> PyResult<u16> {
    let bytes = status.as_bytes();
    let ok = bytes.len() >= 3
        && bytes[..3].iter().all(|b| b.is_ascii_digit())
        && (bytes.len() == 3 || bytes[3] == b' ')
        && http::valid_header_value(bytes);
    // RFC 9110 §15: 100-599; the status line could not be written for anything else.
    match status.get(..3).and_then(|c| c.parse::<u16>().ok()) {
        Some(code) if ok && (100..=599).contains(&code) => Ok(code),
        _ => Err(PyValueError::new_err(format!("invalid status {status:?}"))),
    }
}

#[pymethods]
impl Responder {
    /// `start_response(status, response_headers, exc_info=None)`; returns `write`.
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let this = slf.borrow();
            if let Some(info) = exc_info {
                if this.headers_sent {
                    // Too late to change the response: PEP 3333 says re-raise the original exception.
                    let value = info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
            } else if this.status.is_some() {
                return Err(PyAssertionError::new_err("Response headers already set!"));
            }
        }
        let status: String = status
            .extract()
            .map_err(|_| PyTypeError::new_err("status must be a str"))?;
        slf.borrow_mut().set_status_and_headers(status, headers)?;
        slf.getattr("write")
    }

    /// The legacy `write(data)` callable returned by `start_response`.
    fn write(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.status.is_none() {
            return Err(PyAssertionError::new_err("write() before start_response()"));
        }
        let bytes = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() argument must be bytes"))?;
        self.send_body(py, bytes)
            .map_err(|_| PyOSError::new_err("client disconnected"))
    }
}
