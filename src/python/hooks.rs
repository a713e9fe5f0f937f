//! Calling gunicorn's server hooks from a config file (`on_starting`, `post_fork`, `pre_request`, ...)
//! with the objects hooks in the wild use: `server` (`cfg`, `log`, `pid`, `num_workers`), `worker`
//! (`pid`, `ppid`, `age`, `log`, `cfg`, `nr`, `alive`), `req` (`method`, `uri`, `path`, `query`,
//! `version`, `headers`) and `resp` (`status`, `status_code`, `headers`, `sent`).
//!
//! The objects are plain `types.SimpleNamespace` instances: hooks read attributes, and a namespace is the
//! cheapest thing that has them. A hook that raises is logged with its traceback; the caller decides
//! whether that stops anything (only `on_starting` and `when_ready` do, as in gunicorn).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use super::config_file::Hooks;
use crate::config::{settings::SETTINGS, Config};
use crate::log::ErrorLog;

/// `server.log` / `worker.log`: gunicorn's logger methods (`msg % args` formatting), writing to the error
/// log.
#[pyclass(module = "ferricorn")]
pub struct HookLog {
    log: ErrorLog,
}

impl HookLog {
    /// `msg % args`, as the `logging` methods format a message.
    fn render(msg: &Bound<'_, PyAny>, args: &Bound<'_, PyTuple>) -> PyResult<String> {
        Ok(if args.is_empty() {
            msg.str()?.to_string()
        } else {
            msg.rem(args)?.str()?.to_string()
        })
    }

    fn emit(
        &self,
        _py: Python<'_>,
        level: crate::log::Level,
        msg: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        self.log.log(level, &Self::render(msg, args)?);
        Ok(())
    }
}

#[pymethods]
impl HookLog {
    #[pyo3(signature = (msg, *args))]
    fn debug(
        &self,
        py: Python<'_>,
        msg: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        self.emit(py, crate::log::Level::Debug, msg, args)
    }
    #[pyo3(signature = (msg, *args))]
    fn info(
        &self,
        py: Python<'_>,
        msg: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        self.emit(py, crate::log::Level::Info, msg, args)
    }
    #[pyo3(signature = (msg, *args))]
    fn warning(
        &self,
        py: Python<'_>,
        msg: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        self.emit(py, crate::log::Level::Warning, msg, args)
    }
    #[pyo3(signature = (msg, *args))]
    fn error(
        &self,
        py: Python<'_>,
        msg: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        self.emit(py, crate::log::Level::Error, msg, args)
    }
    #[pyo3(signature = (msg, *args))]
    fn critical(
        &self,
        py: Python<'_>,
        msg: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        self.emit(py, crate::log::Level::Critical, msg, args)
    }
    /// Used by the `logging` handler below: a record already formatted, with its numeric level.
    fn write(&self, levelno: i32, msg: &str) {
        let level = match levelno {
            n if n >= 50 => crate::log::Level::Critical,
            n if n >= 40 => crate::log::Level::Error,
            n if n >= 30 => crate::log::Level::Warning,
            n if n >= 20 => crate::log::Level::Info,
            _ => crate::log::Level::Debug,
        };
        self.log.log(level, msg);
    }

    /// Like `error`, followed by the traceback of the exception being handled.
    #[pyo3(signature = (msg, *args))]
    fn exception(
        &self,
        py: Python<'_>,
        msg: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let text = Self::render(msg, args)?;
        let tb: String = py
            .import("traceback")?
            .call_method0("format_exc")?
            .extract()?;
        self.log.error(&format!("{text}\n{}", tb.trim_end()));
        Ok(())
    }
}

/// The hooks of the config file, with what calling them needs.
pub struct HookRunner {
    hooks: Hooks,
    log: ErrorLog,
    cfg_obj: Py<PyAny>,
    log_obj: Py<HookLog>,
}

/// Which hook failed, already logged.
pub struct HookFailed;

impl HookRunner {
    pub fn new(
        py: Python<'_>,
        hooks: Hooks,
        cfg: &Config,
        log: &ErrorLog,
    ) -> PyResult<Arc<HookRunner>> {
        Ok(Arc::new(HookRunner {
            hooks,
            log: log.clone(),
            cfg_obj: cfg_namespace(py, cfg)?,
            log_obj: Py::new(py, HookLog { log: log.clone() })?,
        }))
    }

    pub fn has(&self, name: &str) -> bool {
        self.hooks.get_hook(name).is_some()
    }

    /// Whether the config file defines any hook at all (most deployments define none, and then no hook
    /// object is ever built).
    pub fn any(&self) -> bool {
        super::config_file::HOOK_NAMES
            .iter()
            .any(|n| self.hooks.get_hook(n).is_some())
    }

    pub fn post_request_arity(&self) -> usize {
        self.hooks.post_request_arity
    }

    /// Call hook `name` if the config defines it. A hook that raises is logged with its traceback.
    pub fn call<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        args: Bound<'py, PyTuple>,
    ) -> Result<(), HookFailed> {
        let Some(hook) = self.hooks.get_hook(name) else {
            return Ok(());
        };
        match hook.bind(py).call1(args) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.log.error(&format!(
                    "Exception in {name} hook:\n{}",
                    super::format_exception(py, &e)
                ));
                Err(HookFailed)
            }
        }
    }

    fn namespace<'py>(py: Python<'py>, attrs: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
        py.import("types")?
            .getattr("SimpleNamespace")?
            .call((), Some(attrs))
    }

    /// The `server` object: the master as hooks see it.
    pub fn server<'py>(
        &self,
        py: Python<'py>,
        pid: u32,
        num_workers: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let d = PyDict::new(py);
        d.set_item("cfg", self.cfg_obj.bind(py))?;
        d.set_item("log", self.log_obj.bind(py))?;
        d.set_item("pid", pid)?;
        d.set_item("num_workers", num_workers)?;
        d.set_item("proc_name", "ferricorn")?;
        Self::namespace(py, &d)
    }

    /// The `worker` object for a worker (`pid` 0 before it is forked, as in gunicorn's `pre_fork`).
    pub fn worker<'py>(
        &self,
        py: Python<'py>,
        pid: u32,
        ppid: u32,
        age: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let d = PyDict::new(py);
        d.set_item("pid", pid)?;
        d.set_item("ppid", ppid)?;
        d.set_item("age", age)?;
        d.set_item("log", self.log_obj.bind(py))?;
        d.set_item("cfg", self.cfg_obj.bind(py))?;
        d.set_item("nr", 0)?;
        d.set_item("alive", true)?;
        d.set_item("booted", pid != 0)?;
        Self::namespace(py, &d)
    }

    /// The `req` object of `pre_request` / `post_request`.
    pub fn request<'py>(
        &self,
        py: Python<'py>,
        head: &crate::http::RequestHead,
    ) -> PyResult<Bound<'py, PyAny>> {
        let d = PyDict::new(py);
        d.set_item("method", head.method.as_str())?;
        d.set_item("uri", head.target.as_str())?;
        d.set_item("path", head.path.as_str())?;
        d.set_item("query", head.query.as_str())?;
        let version = if head.version.0 == 2 {
            (2u8, 0u8)
        } else {
            (1, head.version_minor)
        };
        d.set_item("version", version)?;
        let headers = PyList::empty(py);
        for (name, value) in &head.headers {
            let value: String = value.iter().map(|&b| b as char).collect();
            headers.append((name.to_ascii_uppercase(), value))?;
        }
        d.set_item("headers", headers)?;
        Self::namespace(py, &d)
    }

    /// The `resp` object of `post_request`.
    pub fn response<'py>(
        &self,
        py: Python<'py>,
        status_code: u16,
        headers: &[(String, String)],
        sent: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let d = PyDict::new(py);
        d.set_item(
            "status",
            format!("{status_code} {}", crate::http::reason_phrase(status_code)),
        )?;
        d.set_item("status_code", status_code)?;
        d.set_item("headers", headers.to_vec())?;
        d.set_item("sent", sent)?;
        Self::namespace(py, &d)
    }
}

/// `cfg` as hooks read it: one attribute per setting. Values are the `--print-config` renderings turned
/// back into Python values where they are literals (numbers, lists, None, booleans), else strings.
fn cfg_namespace(py: Python<'_>, cfg: &Config) -> PyResult<Py<PyAny>> {
    let ast = py.import("ast")?;
    let d = PyDict::new(py);
    for s in SETTINGS {
        let shown = (s.show)(cfg);
        let value = match ast.call_method1("literal_eval", (shown.as_str(),)) {
            Ok(v) => v,
            Err(_) => shown.into_pyobject(py)?.into_any(),
        };
        d.set_item(s.name, value)?;
    }
    Ok(HookRunner::namespace(py, &d)?.unbind())
}

/// A `logging.Handler` that hands records to the error log; the only Python it takes is the class body.
const LOGGING_HANDLER: &std::ffi::CStr = c"
import logging

class ErrorLogHandler(logging.Handler):
    def __init__(self, sink):
        super().__init__()
        self._sink = sink
        self.setFormatter(logging.Formatter('%(message)s'))

    def emit(self, record):
        try:
            self._sink.write(record.levelno, self.format(record))
        except Exception:
            self.handleError(record)
";

/// Make `logging.getLogger("gunicorn.error")` and `logging.getLogger("ferricorn.error")` write to the error
/// log with its format and level, so apps that log through gunicorn's logger keep working. Done in the
/// master before any fork, so every worker inherits it.
pub fn route_python_logging(py: Python<'_>, log: &ErrorLog) -> PyResult<()> {
    let module = PyModule::from_code(
        py,
        LOGGING_HANDLER,
        c"ferricorn_logging.py",
        c"ferricorn_logging",
    )?;
    let sink = Py::new(py, HookLog { log: log.clone() })?;
    let handler = module.getattr("ErrorLogHandler")?.call1((sink,))?;
    let logging = py.import("logging")?;
    let level = match log.level() {
        crate::log::Level::Debug => 10,
        crate::log::Level::Info => 20,
        crate::log::Level::Warning => 30,
        crate::log::Level::Error => 40,
        crate::log::Level::Critical => 50,
    };
    for name in ["gunicorn.error", "ferricorn.error"] {
        let logger = logging.call_method1("getLogger", (name,))?;
        logger.call_method1("addHandler", (&handler,))?;
        logger.call_method1("setLevel", (level,))?;
        logger.setattr("propagate", false)?;
    }
    Ok(())
}
