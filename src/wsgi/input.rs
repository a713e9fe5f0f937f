//! `wsgi.input`: the request body as a stream. Bytes come from what was prefetched with the head and then
//! from the connection's body channel, chunk by chunk, so a large upload is never held whole in memory.
//! The first read past the prefetched bytes is what tells the I/O thread to start reading the body (and to
//! send `100 Continue` if the client waits for it).

use std::sync::Mutex;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::exchange::{BodyChunk, BodyStream};

#[pyclass(module = "ferricorn")]
pub struct WsgiInput {
    buf: Vec<u8>,
    pos: usize,
    stream: Option<Mutex<BodyStream>>,
}

impl WsgiInput {
    pub fn new(prefetched: Vec<u8>, stream: Option<BodyStream>) -> WsgiInput {
        WsgiInput {
            buf: prefetched,
            pos: 0,
            stream: stream.map(Mutex::new),
        }
    }

    fn available(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Pull one more chunk from the connection. False at the end of the body.
    fn fill(&mut self, py: Python<'_>) -> PyResult<bool> {
        let Some(stream) = self.stream.as_ref() else {
            return Ok(false);
        };
        let chunk = {
            let mut guard = stream
                .lock()
                .map_err(|_| PyOSError::new_err("request body stream poisoned"))?;
            if let Some(start) = guard.start.take() {
                let _ = start.send(());
            }
            let rx = &mut guard.rx;
            py.detach(|| rx.blocking_recv())
        };
        match chunk {
            Some(BodyChunk::Data(d)) => {
                if self.pos == self.buf.len() {
                    // Nothing left unread: the chunk becomes the buffer, uncopied.
                    self.buf = d;
                    self.pos = 0;
                    return Ok(true);
                }
                if self.pos > 64 * 1024 {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                }
                self.buf.extend_from_slice(&d);
                Ok(true)
            }
            Some(BodyChunk::End) | None => {
                self.stream = None;
                Ok(false)
            }
            Some(BodyChunk::Failed(msg)) => {
                self.stream = None;
                Err(PyOSError::new_err(msg))
            }
        }
    }

    fn take<'py>(&mut self, py: Python<'py>, n: usize) -> Bound<'py, PyBytes> {
        let n = n.min(self.available());
        let out = PyBytes::new(py, &self.buf[self.pos..self.pos + n]);
        self.pos += n;
        out
    }

    fn read_line<'py>(
        &mut self,
        py: Python<'py>,
        limit: Option<usize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut scanned = 0;
        loop {
            let avail = &self.buf[self.pos..];
            let window = limit.map_or(avail.len(), |l| l.min(avail.len()));
            if let Some(i) = memchr::memchr(b'\n', &avail[scanned..window]) {
                return Ok(self.take(py, scanned + i + 1));
            }
            scanned = window;
            if limit.is_some_and(|l| self.available() >= l) {
                return Ok(self.take(py, limit.unwrap_or(0)));
            }
            if !self.fill(py)? {
                let n = self.available();
                return Ok(self.take(py, n));
            }
        }
    }
}

fn size_arg(size: Option<isize>) -> Option<usize> {
    match size {
        Some(n) if n >= 0 => Some(n as usize),
        _ => None,
    }
}

#[pymethods]
impl WsgiInput {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        match size_arg(size) {
            None => {
                while self.fill(py)? {}
                let n = self.available();
                Ok(self.take(py, n))
            }
            Some(n) => {
                while self.available() < n && self.fill(py)? {}
                Ok(self.take(py, n))
            }
        }
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<isize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.read_line(py, size_arg(size))
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<isize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let hint = size_arg(hint).filter(|h| *h > 0);
        let mut total = 0;
        loop {
            let line = self.read_line(py, None)?;
            let len = line.as_bytes().len();
            if len == 0 {
                break;
            }
            out.append(line)?;
            total += len;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(out)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.read_line(py, None)?;
        Ok(if line.as_bytes().is_empty() {
            None
        } else {
            Some(line)
        })
    }
}
