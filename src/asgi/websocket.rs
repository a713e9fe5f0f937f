//! The app's side of a websocket session (ASGI websocket spec 2.4): `websocket.connect`, `.receive`
//! and `.disconnect` from `receive()`; `websocket.accept`, `.send` and `.close` for `send()`. The
//! connection's side (handshake, frames, pings, 1012 on a restart) is `worker::ws`; a refusal with a
//! body of its own (`websocket.http.response.*`) is an ordinary response, sent by `request`.

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

use crate::exchange::{WsChannels, WsFromClient, WsToClient};

/// Where the session stands, for the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `websocket.connect` not handed to the app yet.
    Connecting,
    /// The app has the connect; it has not accepted or refused.
    Handshake,
    Open,
    /// The app closed (or refused); `receive()` answers the disconnect.
    Closed,
    /// The client is gone: its disconnect was handed to the app.
    Gone,
}

pub struct Ws {
    pub stage: Stage,
    rx: Option<mpsc::Receiver<WsFromClient>>,
    tx: Option<mpsc::Sender<WsToClient>>,
    /// A `receive_later` holds the stream.
    pub waiting: bool,
    /// The close code once known, for a `receive()` after the end.
    code: u16,
}

/// What a `send()` of a websocket message asks of the request.
pub enum Sent {
    Done,
    /// The queue to the connection is full: wait for room with this message.
    Wait(WsToClient),
}

fn message<'py>(py: Python<'py>, kind: &str) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("type", kind)?;
    Ok(d)
}

impl Ws {
    pub fn new(ch: WsChannels) -> Ws {
        Ws {
            stage: Stage::Connecting,
            rx: Some(ch.from_client),
            tx: Some(ch.to_client),
            waiting: false,
            code: 1006,
        }
    }

    fn disconnect<'py>(
        &mut self,
        py: Python<'py>,
        code: u16,
        reason: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.stage = Stage::Gone;
        self.code = code;
        self.rx = None;
        let d = message(py, "websocket.disconnect")?;
        d.set_item("code", code)?;
        d.set_item("reason", reason)?;
        Ok(d)
    }

    /// The message for what came from the connection (None: it is gone).
    pub fn arrived<'py>(
        &mut self,
        py: Python<'py>,
        msg: Option<WsFromClient>,
        rx: Option<mpsc::Receiver<WsFromClient>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.waiting = false;
        self.rx = rx;
        match msg {
            Some(WsFromClient::Text(t)) => {
                let d = message(py, "websocket.receive")?;
                d.set_item("text", t)?;
                d.set_item("bytes", py.None())?;
                Ok(d)
            }
            Some(WsFromClient::Binary(b)) => {
                let d = message(py, "websocket.receive")?;
                d.set_item("bytes", PyBytes::new(py, &b))?;
                d.set_item("text", py.None())?;
                Ok(d)
            }
            Some(WsFromClient::Closed { code, reason }) => self.disconnect(py, code, &reason),
            None => self.disconnect(py, 1006, ""),
        }
    }

    /// The next message if it is here (None: wait with `take_rx`).
    pub fn receive_now<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        if self.waiting {
            return Err(PyRuntimeError::new_err(
                "receive() called while another receive() is waiting",
            ));
        }
        match self.stage {
            Stage::Connecting => {
                self.stage = Stage::Handshake;
                return message(py, "websocket.connect").map(Some);
            }
            Stage::Gone => {
                let code = self.code;
                return self.disconnect(py, code, "").map(Some);
            }
            _ => {}
        }
        let Some(rx) = self.rx.as_mut() else {
            let code = self.code;
            return self.disconnect(py, code, "").map(Some);
        };
        match rx.try_recv() {
            Ok(m) => {
                let rx = self.rx.take();
                self.arrived(py, Some(m), rx).map(Some)
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => self.disconnect(py, 1006, "").map(Some),
        }
    }

    /// The stream, for a wait on the I/O thread (given back by `arrived`).
    pub fn take_rx(&mut self) -> Option<mpsc::Receiver<WsFromClient>> {
        let rx = self.rx.take();
        self.waiting = rx.is_some();
        rx
    }

    pub fn sender(&self) -> Option<mpsc::Sender<WsToClient>> {
        self.tx.clone()
    }

    fn offer(&mut self, out: WsToClient) -> PyResult<Sent> {
        let Some(tx) = &self.tx else {
            return Err(PyOSError::new_err("websocket closed"));
        };
        match tx.try_send(out) {
            Ok(()) => Ok(Sent::Done),
            Err(TrySendError::Full(out)) => Ok(Sent::Wait(out)),
            Err(TrySendError::Closed(_)) => {
                self.stage = Stage::Gone;
                Err(PyOSError::new_err("websocket closed"))
            }
        }
    }

    /// A websocket `send()` message (`http_started`: the app began a `websocket.http.response`).
    pub fn send(
        &mut self,
        kind: &str,
        msg: &Bound<'_, PyDict>,
        fields: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<Vec<(Vec<u8>, Vec<u8>)>>,
    ) -> PyResult<Sent> {
        if self.stage == Stage::Gone {
            return Err(PyOSError::new_err("websocket closed"));
        }
        match kind {
            "websocket.accept" => {
                if self.stage != Stage::Handshake {
                    return Err(PyRuntimeError::new_err(format!(
                        "Expected ASGI message 'websocket.accept' only after 'websocket.connect' and before anything else, in stage {:?}",
                        self.stage
                    )));
                }
                let subprotocol = match msg.get_item("subprotocol")? {
                    Some(p) if !p.is_none() => Some(p.extract::<String>().map_err(|_| {
                        PyTypeError::new_err("websocket.accept's subprotocol must be a str")
                    })?),
                    _ => None,
                };
                let headers = match msg.get_item("headers")? {
                    Some(h) => fields(&h)?,
                    None => Vec::new(),
                };
                self.stage = Stage::Open;
                self.offer(WsToClient::Accept {
                    subprotocol,
                    headers,
                })
            }
            "websocket.send" => {
                if self.stage != Stage::Open {
                    return Err(PyRuntimeError::new_err(
                        "Expected ASGI message 'websocket.accept' before 'websocket.send'",
                    ));
                }
                let text = msg.get_item("text")?.filter(|t| !t.is_none());
                let bytes = msg.get_item("bytes")?.filter(|b| !b.is_none());
                let out = match (text, bytes) {
                    (Some(t), None) => WsToClient::Text(
                        t.cast::<PyString>()
                            .map_err(|_| {
                                PyTypeError::new_err("websocket.send's text must be a str")
                            })?
                            .to_cow()?
                            .into_owned(),
                    ),
                    (None, Some(b)) => WsToClient::Binary(
                        b.cast::<PyBytes>()
                            .map_err(|_| {
                                PyTypeError::new_err("websocket.send's bytes must be bytes")
                            })?
                            .as_bytes()
                            .to_vec(),
                    ),
                    _ => {
                        return Err(PyValueError::new_err(
                            "websocket.send needs exactly one of 'bytes' and 'text'",
                        ))
                    }
                };
                self.offer(out)
            }
            "websocket.close" => {
                if self.stage == Stage::Closed {
                    return Ok(Sent::Done);
                }
                let code: u16 = match msg.get_item("code")? {
                    Some(c) if !c.is_none() => c.extract().map_err(|_| {
                        PyTypeError::new_err("websocket.close's code must be an int")
                    })?,
                    _ => 1000,
                };
                let reason: String = match msg.get_item("reason")? {
                    Some(r) if !r.is_none() => r.extract()?,
                    _ => String::new(),
                };
                self.stage = Stage::Closed;
                self.code = code;
                let sent = self.offer(WsToClient::Close { code, reason });
                // Nothing more goes out: the connection closes once the close is out.
                sent
            }
            other => Err(PyRuntimeError::new_err(format!(
                "Unexpected ASGI message '{other}' sent to a websocket scope"
            ))),
        }
    }

    /// The app's task ended: the session ends with it (the connection closes it with 1000, or refuses
    /// a handshake never answered with 403). `failed`: the app raised on an open session (1011).
    pub fn end(&mut self, failed: bool) {
        if failed && self.stage == Stage::Open {
            if let Some(tx) = &self.tx {
                let _ = tx.try_send(WsToClient::Close {
                    code: 1011,
                    reason: String::new(),
                });
            }
        }
        self.tx = None;
        self.rx = None;
    }
}
