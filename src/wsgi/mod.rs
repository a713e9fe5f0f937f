//! The WSGI runtime: app threads that each run one request at a time through the app — environ,
//! `start_response`, iterating the result, `close()`, errors — and stream the response to the I/O side as
//! semantic pieces. One implementation of [`crate::runtime::AppRuntime`].

pub mod environ;
pub mod file_wrapper;
pub mod input;
pub mod response;

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::config::WorkerClass;
use crate::exchange::Job;
use crate::runtime::hooks;
use crate::runtime::pool::{self, Handler};
use crate::runtime::{AppRuntime, Outcome, RequestScope, RunQueue, WorkerContext};
use environ::EnvironBuilder;
use file_wrapper::FileWrapper;
use input::WsgiInput;
use response::Responder;

/// gunicorn's body for an error the app caused.
const ERROR_500_BODY: &[u8] = b"<html><head><title>Internal Server Error</title></head><body><h1><p>Internal Server Error</p></h1></body></html>";

/// `wsgi.errors`: text written here goes to the error log as is.
#[pyclass(module = "ferricorn")]
pub struct ErrorStream {
    log: crate::log::ErrorLog,
}

#[pymethods]
impl ErrorStream {
    fn write(&self, s: &str) {
        self.log.write_raw(s.as_bytes());
    }
    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            let line = line?;
            self.log.write_raw(line.extract::<String>()?.as_bytes());
        }
        Ok(())
    }
    fn flush(&self) {}
}

/// The WSGI runtime (worker classes `sync` and `gthread`).
pub struct WsgiRuntime;

impl AppRuntime for WsgiRuntime {
    fn name(&self) -> &'static str {
        "wsgi"
    }

    fn spawn_thread(
        &self,
        ctx: Arc<WorkerContext>,
        index: usize,
        queue: RunQueue,
        label: &str,
    ) -> std::io::Result<()> {
        self.spawn_waiting_thread(ctx, index, queue, label, Box::new(pool::Blocking))
    }

    fn spawn_waiting_thread(
        &self,
        ctx: Arc<WorkerContext>,
        index: usize,
        queue: RunQueue,
        label: &str,
        waiter: Box<dyn pool::Waiter>,
    ) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(format!("ferricorn-{label}-{index}"))
            .spawn(move || {
                pool::python_thread(ctx, index, queue, waiter, |py, ctx| {
                    WsgiRunner::new(py, ctx.clone())
                })
            })
            .map(|_| ())
    }
}

/// One Python thread's request runner.
pub struct WsgiRunner {
    ctx: Arc<WorkerContext>,
    environ: EnvironBuilder,
}

impl WsgiRunner {
    pub fn new(py: Python<'_>, ctx: Arc<WorkerContext>) -> PyResult<WsgiRunner> {
        let cfg = &ctx.cfg;
        let base = PyDict::new(py);
        base.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
        base.set_item(
            "wsgi.errors",
            Py::new(
                py,
                ErrorStream {
                    log: ctx.log.clone(),
                },
            )?,
        )?;
        base.set_item(
            "wsgi.multithread",
            cfg.worker_class == WorkerClass::Gthread && cfg.max_threads_per_worker() > 1,
        )?;
        base.set_item(
            "wsgi.multiprocess",
            cfg.workers > 1 || cfg.max_workers_for(cfg.workers) > 1,
        )?;
        base.set_item("wsgi.run_once", false)?;
        base.set_item("wsgi.file_wrapper", py.get_type::<FileWrapper>())?;
        base.set_item("wsgi.input_terminated", true)?;
        base.set_item(
            "SERVER_SOFTWARE",
            concat!("ferricorn/", env!("CARGO_PKG_VERSION")),
        )?;
        let environ = EnvironBuilder::new(py, base);
        Ok(WsgiRunner { ctx, environ })
    }
}

impl Handler for WsgiRunner {
    fn handle(&mut self, py: Python<'_>, job: Job, scope: RequestScope<&WorkerContext>) {
        let Job {
            head,
            conn,
            body,
            reply,
            progress: _,
            websocket: _,
        } = job;
        let responder = match Py::new(py, Responder::new(reply, &head.method)) {
            Ok(r) => r,
            Err(e) => {
                self.ctx.log.error(&format!("Cannot create response: {e}"));
                return;
            }
        };
        let input = match Py::new(py, WsgiInput::new(body.prefetched, body.stream)) {
            Ok(i) => i,
            Err(e) => {
                self.ctx
                    .log
                    .error(&format!("Cannot create wsgi.input: {e}"));
                return;
            }
        };
        let environ = self
            .environ
            .build(py, &head, &conn, input.into_bound(py).into_any());
        let environ = environ.and_then(|env| {
            env.set_item(
                "wsgi.early_hints",
                responder.bind(py).getattr("early_hints")?,
            )?;
            Ok(env)
        });
        let hook_req = hooks::pre_request(py, &self.ctx, &head);
        let outcome = match environ {
            Ok(env) => {
                let outcome = self.run_app(py, &env, &responder);
                if let Err(err) = &outcome {
                    self.app_failed(py, &responder, &head.method, &head.target, err);
                }
                Some(env)
            }
            Err(err) => {
                self.app_failed(py, &responder, &head.method, &head.target, &err);
                None
            }
        };

        if let Some(req) = hook_req {
            let r = responder.borrow(py);
            let sent = hooks::Sent {
                status: r.status_code,
                headers: r.headers(),
                body_sent: r.body_sent(),
            };
            hooks::post_request(py, &self.ctx, req, outcome.as_ref(), &sent);
        }
        scope.set_status(responder.borrow(py).status_code);
        if self.ctx.access_log.is_some() {
            let r = responder.borrow(py);
            let env = outcome.as_ref();
            // `{var}e` names come lower-cased and match environ keys case-insensitively, as in gunicorn.
            let lookup = |key: &str| -> Option<String> {
                env?.iter()
                    .find(|(k, _)| {
                        k.extract::<String>()
                            .is_ok_and(|k| k.eq_ignore_ascii_case(key))
                    })
                    .and_then(|(_, v)| v.str().ok().map(|s| s.to_string()))
            };
            scope.log(&Outcome {
                status: r.status_code,
                headers: r.headers(),
                body_sent: r.headers_sent().then_some(r.body_sent()),
                environ: Some(&lookup),
            });
        }
    }
}

impl WsgiRunner {
    /// Call the app and send its response. Errors are returned for the caller to log and answer.
    fn run_app(
        &self,
        py: Python<'_>,
        env: &Bound<'_, PyDict>,
        responder: &Py<Responder>,
    ) -> PyResult<()> {
        let result = self.ctx.app.bind(py).call1((env, responder.bind(py)))?;
        let sent = self.send_result(py, &result, responder);
        // PEP 3333: close() is called however the iteration ended.
        let closed = match result.getattr_opt("close") {
            Ok(Some(close)) => close.call0().map(|_| ()),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        sent?;
        closed
    }

    fn send_result(
        &self,
        py: Python<'_>,
        result: &Bound<'_, PyAny>,
        responder: &Py<Responder>,
    ) -> PyResult<()> {
        let disconnected = || pyo3::exceptions::PyOSError::new_err("client disconnected");
        // A list or tuple of bytes is the whole body in hand: send head, body and end in one write, with
        // a Content-Length we can compute.
        if let Ok(list) = result.cast::<PyList>() {
            return self.send_sequence(py, list.iter().collect(), responder);
        }
        if let Ok(tuple) = result.cast::<PyTuple>() {
            return self.send_sequence(py, tuple.iter().collect(), responder);
        }
        if let Ok(wrapper) = result.cast::<FileWrapper>() {
            let mut r = responder.borrow_mut(py);
            if !r.started() {
                return Err(pyo3::exceptions::PyAssertionError::new_err(
                    "start_response() was not called",
                ));
            }
            if !r.headers_sent() && self.ctx.cfg.sendfile != Some(false) {
                if let Some((file, offset, len)) =
                    file_wrapper::sendfile_source(py, &wrapper.borrow())
                {
                    return r
                        .send_file(py, file, offset, len)
                        .map_err(|_| disconnected());
                }
            }
        }
        for item in result.try_iter()? {
            let item = item?;
            let bytes = item
                .cast::<PyBytes>()
                .map_err(|_| pyo3::exceptions::PyTypeError::new_err("the app must yield bytes"))?;
            let mut r = responder.borrow_mut(py);
            if !r.started() {
                return Err(pyo3::exceptions::PyAssertionError::new_err(
                    "start_response() was not called",
                ));
            }
            if bytes.as_bytes().is_empty() {
                continue;
            }
            if r.send_body(py, bytes).is_err() {
                return Ok(());
            }
        }
        let mut r = responder.borrow_mut(py);
        if !r.started() {
            return Err(pyo3::exceptions::PyAssertionError::new_err(
                "start_response() was not called",
            ));
        }
        let _ = r.finish(py);
        Ok(())
    }

    fn send_sequence(
        &self,
        py: Python<'_>,
        items: Vec<Bound<'_, PyAny>>,
        responder: &Py<Responder>,
    ) -> PyResult<()> {
        let mut parts = Vec::with_capacity(items.len());
        for item in items {
            parts.push(item.cast_into::<PyBytes>().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err("the app must return bytes")
            })?);
        }
        let mut r = responder.borrow_mut(py);
        if !r.started() {
            return Err(pyo3::exceptions::PyAssertionError::new_err(
                "start_response() was not called",
            ));
        }
        let _ = r.send_complete(py, &parts);
        Ok(())
    }

    /// The app raised (or broke the protocol): log it as gunicorn does, and answer 500 if the head has not
    /// gone out yet; otherwise the connection is cut, since the response cannot be completed.
    fn app_failed(
        &self,
        py: Python<'_>,
        responder: &Py<Responder>,
        method: &str,
        target: &str,
        err: &PyErr,
    ) {
        let tb = crate::python::format_exception(py, err);
        self.ctx
            .log
            .exception(&format!("Error handling request {method} {target}\n{tb}"));
        let mut r = responder.borrow_mut(py);
        if r.disconnected() {
            return;
        }
        if r.headers_sent() {
            r.abort(py);
            return;
        }
        r.set_error(500);
        let _ = r.send_complete(py, &[PyBytes::new(py, ERROR_500_BODY)]);
    }
}
