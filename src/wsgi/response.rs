//! The response side of a WSGI call: `start_response` (with PEP 3333's `exc_info` rules), the `write()`
//! callable, and turning the app's status, headers and body into the semantic pieces of
//! [`crate::exchange::response`]. How the body is framed on the wire (a length, chunks, the connection's
//! end) is the connection's business, decided on the I/O side (`http::framing`).

use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::exchange::response::{Disconnected, Interim, ResponseSender};
use crate::exchange::{Fields, Out, Piece, ResponseHead, ZERO_COPY_MIN};
use crate::http;

#[pyclass(module = "ferricorn")]
pub struct Responder {
    sender: ResponseSender,
    /// The app's status (`"200 OK"`).
    status: Option<String>,
    pub status_code: u16,
    headers: Vec<(String, String)>,
    content_length: Option<u64>,
    /// The connection closes after this response (an error answered in the app's place).
    close: bool,
}

impl Responder {
    pub fn new(reply: tokio::sync::mpsc::Sender<Out>, method: &str) -> Self {
        Responder {
            sender: ResponseSender::new(reply, method),
            status: None,
            status_code: 0,
            headers: Vec::new(),
            content_length: None,
            close: false,
        }
    }

    /// `start_response` was called.
    pub fn started(&self) -> bool {
        self.status.is_some()
    }

    pub fn headers_sent(&self) -> bool {
        self.sender.head_sent()
    }

    /// The response's headers as the app set them.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Body bytes sent so far.
    pub fn body_sent(&self) -> u64 {
        self.sender.body_sent
    }

    pub fn disconnected(&self) -> bool {
        self.sender.disconnected
    }

    /// The head as the app set it (the reason phrase is what follows WSGI's status code).
    fn head_of<'a>(
        status: &'a Option<String>,
        code: u16,
        headers: &'a [(String, String)],
        content_length: Option<u64>,
        close: bool,
    ) -> ResponseHead<'a> {
        ResponseHead {
            status: code,
            reason: status.as_deref().and_then(|s| s.get(4..)),
            headers: Fields::Text(headers),
            content_length,
            close,
        }
    }

    /// A new piece (with the head, if it has not gone out) with room for `capacity` body bytes.
    fn piece(&mut self, total: Option<u64>, capacity: usize) -> Piece {
        let head = Self::head_of(
            &self.status,
            self.status_code,
            &self.headers,
            self.content_length,
            self.close,
        );
        self.sender.piece(Some(&head), total, capacity)
    }

    /// Send one piece of body (the head first if it has not gone yet).
    pub fn send_body(
        &mut self,
        py: Python<'_>,
        bytes: &Bound<'_, PyBytes>,
    ) -> Result<(), Disconnected> {
        let len = bytes.as_bytes().len();
        if self.headers_sent() && len == 0 {
            return Ok(());
        }
        let mut piece = self.piece(None, if len < ZERO_COPY_MIN { len } else { 0 });
        self.sender.push(&mut piece, bytes);
        self.sender.send_piece(py, piece)
    }

    /// Send the whole response at once (head, the complete body and the end): one message, one write.
    pub fn send_complete(
        &mut self,
        py: Python<'_>,
        parts: &[Bound<'_, PyBytes>],
    ) -> Result<(), Disconnected> {
        let total: usize = parts.iter().map(|p| p.as_bytes().len()).sum();
        let mut piece = self.piece(
            Some(total as u64),
            if total < ZERO_COPY_MIN { total } else { 0 },
        );
        for p in parts {
            self.sender.push(&mut piece, p);
        }
        piece.end = true;
        self.sender.send_piece(py, piece)
    }

    /// The whole body as a file (see `ResponseSender::send_file`), ending the response. Only before the
    /// head went out.
    pub fn send_file(
        &mut self,
        py: Python<'_>,
        file: std::fs::File,
        offset: u64,
        len: u64,
    ) -> Result<(), Disconnected> {
        let head = Self::head_of(
            &self.status,
            self.status_code,
            &self.headers,
            self.content_length,
            self.close,
        );
        self.sender.send_file(py, Some(&head), file, offset, len)
    }

    /// End the response after streaming.
    pub fn finish(&mut self, py: Python<'_>) -> Result<(), Disconnected> {
        let mut piece = self.piece(Some(0), 0);
        piece.end = true;
        self.sender.send_piece(py, piece)
    }

    /// Replace whatever the app set with an error response (only before the head went out).
    pub fn set_error(&mut self, code: u16) {
        self.status = Some(format!("{code} {}", http::reason_phrase(code)));
        self.status_code = code;
        self.headers = vec![("Content-Type".into(), "text/html".into())];
        self.content_length = None;
        self.close = true;
    }

    pub fn abort(&mut self, py: Python<'_>) {
        self.sender.abort(py);
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
    /// `environ["wsgi.early_hints"](headers)`: a `103 Early Hints` with these `(name, value)` headers,
    /// before the final response (gunicorn 25's extension). Ignored once the response has started; the
    /// connection sends it to HTTP/1.1 clients only. A client that is gone is not an error here.
    fn early_hints(&mut self, py: Python<'_>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.started() || self.headers_sent() {
            return Ok(());
        }
        let mut fields = Vec::new();
        for item in headers.try_iter()? {
            let (name, value): (String, String) = item?.extract().map_err(|_| {
                PyTypeError::new_err("early hints must be a list of (name, value) str tuples")
            })?;
            let (name, value) = (name.trim(), value.trim());
            if !http::valid_header_name(name.as_bytes())
                || !http::valid_header_value(value.as_bytes())
            {
                return Err(PyValueError::new_err(format!(
                    "invalid early hint header {name:?}: {value:?}"
                )));
            }
            fields.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        }
        let interim = Interim {
            status: 103,
            headers: fields,
        };
        let _ = self.sender.send(py, Out::Interim(Box::new(interim)));
        Ok(())
    }

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
                if this.headers_sent() {
                    // Too late to change the response: PEP 3333 says re-raise the original exception.
                    let value = info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
            } else if this.started() {
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
        if !self.started() {
            return Err(PyAssertionError::new_err("write() before start_response()"));
        }
        let bytes = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() argument must be bytes"))?;
        self.send_body(py, bytes)
            .map_err(|_| PyOSError::new_err("client disconnected"))
    }
}
