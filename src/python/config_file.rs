//! Executing a config file in the master and reading what it defined, as gunicorn does: a file is run
//! as a module named `__config__` (registered in `sys.modules`, with `__file__` set), a
//! `python:MODULE` config is imported, and then every module-level name is looked at. Names of
//! settings become [`FileSettings`] (checked and applied by `config::resolve`), names of server hooks
//! become [`Hooks`], names gunicorn knows but ferricorn does not support get a warning, and all other
//! names are ignored.
//!
//! [`configure`] reads every source of settings in gunicorn's order (the file is one of them), at
//! start-up, for `ferricornctl doctor -c`, and again on `HUP` ([`reconfigure`]).

use std::path::Path;

use pyo3::exceptions::PySystemExit;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyList, PyModule, PyString, PyTraceback, PyTuple};

use super::format_exception;
use crate::config::file::{bad_file_value, GUNICORN_SETTING_NAMES};
use crate::config::{
    find_setting, Action, Config, ConfigError, ConfigSource, FileSettings, SettingValue, PROG,
    VERSION,
};

/// The module name a config file runs under, as in gunicorn (hooks defined in the file report it as
/// their `__module__`).
const MODULE_NAME: &str = "__config__";

/// How many positional parameters a hook must declare (gunicorn counts positional-only and
/// positional-or-keyword parameters, defaults included; `*args` does not count).
#[derive(Clone, Copy, Debug)]
enum Arity {
    Exactly(usize),
    Between(usize, usize),
}

impl Arity {
    fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exactly(want) => n == want,
            Arity::Between(lo, hi) => (lo..=hi).contains(&n),
        }
    }

    fn describe(self) -> String {
        match self {
            Arity::Exactly(1) => "exactly 1 positional parameter".to_string(),
            Arity::Exactly(n) => format!("exactly {n} positional parameters"),
            Arity::Between(lo, hi) => format!("{lo} to {hi} positional parameters"),
        }
    }
}

macro_rules! hooks {
    ($($(#[$doc:meta])* $name:ident: $arity:expr,)*) => {
        /// The server hooks a config file defined (gunicorn's list), each validated: callable, and
        /// declaring the number of parameters it is called with. A hook may also be given as an
        /// import string (`"pkg.module.function"`), which is resolved when the file is read. They
        /// are collected here for the arbiter and workers to call.
        #[derive(Debug, Default)]
        pub struct Hooks {
            $($(#[$doc])* pub $name: Option<Py<PyAny>>,)*
            /// How many parameters `post_request` declares (2, 3 or 4; 0 when there is none): it is
            /// called with that many of `(worker, req, environ, resp)`.
            pub post_request_arity: usize,
        }

        /// Every hook with the number of parameters it must declare.
        const HOOKS: &[(&str, Arity)] = &[$((stringify!($name), $arity),)*];

        /// The names of every server hook.
        pub const HOOK_NAMES: &[&str] = &[$(stringify!($name),)*];

        impl Hooks {
            fn slot(&mut self, name: &str) -> Option<&mut Option<Py<PyAny>>> {
                match name {
                    $(stringify!($name) => Some(&mut self.$name),)*
                    _ => None,
                }
            }

            fn get(&self, name: &str) -> Option<&Py<PyAny>> {
                match name {
                    $(stringify!($name) => self.$name.as_ref(),)*
                    _ => None,
                }
            }
        }
    };
}

hooks! {
    /// `on_starting(server)`: in the master, before it binds sockets.
    on_starting: Arity::Exactly(1),
    /// `on_reload(server)`: in the master, on SIGHUP.
    on_reload: Arity::Exactly(1),
    /// `when_ready(server)`: in the master, once the sockets are listening.
    when_ready: Arity::Exactly(1),
    /// `pre_fork(server, worker)`: in the master, before a worker is forked.
    pre_fork: Arity::Exactly(2),
    /// `post_fork(server, worker)`: in the new worker, right after the fork.
    post_fork: Arity::Exactly(2),
    /// `post_worker_init(worker)`: in the worker, after the app is loaded.
    post_worker_init: Arity::Exactly(1),
    /// `worker_int(worker)`: in the worker, on SIGINT or SIGQUIT.
    worker_int: Arity::Exactly(1),
    /// `worker_abort(worker)`: in the worker, on SIGABRT (sent on a timeout).
    worker_abort: Arity::Exactly(1),
    /// `pre_exec(server)`: in the master, before a new master is executed (USR2).
    pre_exec: Arity::Exactly(1),
    /// `pre_request(worker, req)`: in the worker, before the app is called.
    pre_request: Arity::Exactly(2),
    /// `post_request(worker, req[, environ[, resp]])`: in the worker, after the app returned.
    post_request: Arity::Between(2, 4),
    /// `child_exit(server, worker)`: in the master, after a worker exited.
    child_exit: Arity::Exactly(2),
    /// `worker_exit(server, worker)`: in the worker, as it exits.
    worker_exit: Arity::Exactly(2),
    /// `nworkers_changed(server, new_value, old_value)`: in the master, when the worker count changes.
    nworkers_changed: Arity::Exactly(3),
    /// `on_exit(server)`: in the master, just before it exits.
    on_exit: Arity::Exactly(1),
    /// `ssl_context(config, default_ssl_context_factory)`: gunicorn builds its TLS context with it. A
    /// Python `SSLContext` cannot configure rustls: the hook is checked, warned about and never called.
    ssl_context: Arity::Exactly(2),
}

impl Hooks {
    /// The hook called `name`, if the config file defined it.
    pub fn get_hook(&self, name: &str) -> Option<&Py<PyAny>> {
        self.get(name)
    }

    /// One `(name, value)` line per hook for `--print-config`: `<qualified_name()>` for a hook the
    /// file defined, `None` otherwise.
    pub fn print_config_lines(&self, py: Python<'_>) -> Vec<(&'static str, String)> {
        HOOKS
            .iter()
            .map(|(name, _)| {
                let shown = match self.get(name) {
                    Some(f) => {
                        let f = f.bind(py);
                        let qualname = f
                            .getattr("__qualname__")
                            .and_then(|q| q.extract::<String>())
                            .unwrap_or_else(|_| short_repr(f));
                        format!("<{qualname}()>")
                    }
                    None => "None".to_string(),
                };
                (*name, shown)
            })
            .collect()
    }

    /// Check `value` as the hook `name` and keep it. `Ok(false)` when `name` is not a hook.
    fn set(&mut self, name: &str, value: &Bound<'_, PyAny>) -> Result<bool, String> {
        let Some(&(_, arity)) = HOOKS.iter().find(|(n, _)| *n == name) else {
            return Ok(false);
        };
        let checked = if value.is_none() {
            None
        } else {
            let func = if let Ok(path) = value.cast::<PyString>() {
                import_object(value.py(), &path.to_string())?
            } else {
                value.clone()
            };
            if !func.is_callable() {
                return Err(format!("{} is not callable", short_repr(&func)));
            }
            let n = positional_parameters(&func)?;
            if !arity.accepts(n) {
                return Err(format!(
                    "a hook must declare {}, this one declares {n}",
                    arity.describe()
                ));
            }
            if name == "post_request" {
                self.post_request_arity = n;
            }
            Some(func.unbind())
        };
        if let Some(slot) = self.slot(name) {
            *slot = checked;
        }
        Ok(true)
    }
}

/// A config file's settings and hooks.
#[derive(Debug)]
pub struct LoadedConfig {
    pub settings: FileSettings,
    pub hooks: Hooks,
}

/// Execute the config at `location` (`PATH`, `file:PATH` or `python:MODULE`) and collect what it
/// defined. The working directory is put first on `sys.path` beforehand, so the file can import
/// modules from it and `python:MODULE` finds packages there.
///
/// Errors are whole messages for standard error: a file that is missing or raises (its traceback
/// included) exits with 1; a value that cannot be used is one line naming the setting, exit 2.
pub fn load(py: Python<'_>, location: &str) -> Result<LoadedConfig, ConfigError> {
    let namespace = execute(py, location)?;
    let mut settings = FileSettings {
        location: location.to_string(),
        values: Vec::new(),
    };
    let mut hooks = Hooks::default();
    for (key, value) in namespace.iter() {
        let Ok(name) = key.extract::<String>() else {
            continue;
        };
        let bad = |problem: String| bad_file_value(location, &name, &problem);
        if let Some(setting) = find_setting(&name) {
            settings
                .values
                .push((setting, setting_value(&value).map_err(bad)?));
            continue;
        }
        let is_hook = hooks.set(&name, &value).map_err(bad)?;
        if is_hook && name == "ssl_context" && !value.is_none() {
            eprintln!(
                "{PROG}: warning: {location}: setting 'ssl_context' cannot apply: ferricorn's TLS is \
                 rustls, not Python's ssl module, so an SSLContext is never built and the hook is not \
                 called; use certfile, keyfile, ca_certs, cert_reqs, ciphers and ssl_version instead"
            );
        }
        if !is_hook && GUNICORN_SETTING_NAMES.contains(&name.as_str()) {
            eprintln!(
                "{PROG}: warning: {location}: setting '{name}' is not supported by {PROG} and is \
                 ignored"
            );
        }
    }
    Ok(LoadedConfig { settings, hooks })
}

fn execute<'py>(py: Python<'py>, location: &str) -> Result<Bound<'py, PyDict>, ConfigError> {
    let failed = |e: PyErr| failure(py, location, e);
    super::put_cwd_on_path(py).map_err(failed)?;
    let module = match ConfigSource::parse(location) {
        ConfigSource::Module(name) => py
            .import("importlib")
            .and_then(|m| m.call_method1("import_module", (name,)))
            .and_then(|m| Ok(m.cast_into::<PyModule>()?)),
        ConfigSource::File(path) => {
            if !Path::new(&path).exists() {
                return Err(ConfigError {
                    message: format!("{PROG}: error: config file {path} does not exist"),
                    exit_code: 1,
                });
            }
            if !(path.ends_with(".py") || path.ends_with(".pyc")) {
                eprintln!(
                    "{PROG}: warning: config file {path} does not end in .py; reading it as Python"
                );
            }
            exec_file(py, &path)
        }
    };
    Ok(module.map_err(failed)?.dict())
}

/// The error for a config that raised: its traceback (without the import machinery's frames) and
/// exit status 1. A `SystemExit` keeps its meaning: `sys.exit(3)` in the file exits with 3.
fn failure(py: Python<'_>, location: &str, err: PyErr) -> ConfigError {
    if err.is_instance_of::<PySystemExit>(py) {
        let code = err.value(py).getattr("code").ok();
        return match code {
            Some(c) if c.is_none() => ConfigError {
                message: String::new(),
                exit_code: 0,
            },
            Some(c) if c.is_instance_of::<PyInt>() => ConfigError {
                message: String::new(),
                exit_code: c.extract().unwrap_or(1),
            },
            other => ConfigError {
                message: other.map(|c| c.to_string()).unwrap_or_default(),
                exit_code: 1,
            },
        };
    }
    let err = without_import_frames(py, err);
    ConfigError {
        message: format!(
            "{PROG}: error: cannot load config {location}:\n{}",
            format_exception(py, &err)
        ),
        exit_code: 1,
    }
}

/// Drop the leading traceback entries that belong to `importlib` (loading the file, importing the
/// module), so the traceback starts in the user's code, as for an ordinary import.
fn without_import_frames(py: Python<'_>, err: PyErr) -> PyErr {
    let is_importlib = |tb: &Bound<'_, PyTraceback>| -> bool {
        tb.getattr("tb_frame")
            .and_then(|f| f.getattr("f_code"))
            .and_then(|c| c.getattr("co_filename"))
            .and_then(|n| n.extract::<String>())
            .is_ok_and(|name| {
                name.starts_with("<frozen importlib.") || name.ends_with("/importlib/__init__.py")
            })
    };
    let mut tb = err.traceback(py);
    while let Some(t) = tb.as_ref().filter(|t| is_importlib(t)) {
        tb = t
            .getattr("tb_next")
            .ok()
            .and_then(|n| n.cast_into::<PyTraceback>().ok());
    }
    let value = err.into_value(py).into_bound(py);
    // Should the exception refuse the shorter traceback, it keeps its own.
    let _ = value.setattr("__traceback__", tb);
    PyErr::from_value(value.into_any())
}

/// Run a file as the module `__config__`.
fn exec_file<'py>(py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyModule>> {
    let abs = py
        .import("os")?
        .getattr("path")?
        .call_method1("abspath", (path,))?;
    let util = py.import("importlib.util")?;
    let spec = if path.ends_with(".pyc") {
        util.call_method1("spec_from_file_location", (MODULE_NAME, &abs))?
    } else {
        // An explicit source loader, so that any file name is read as Python source.
        let loader = py
            .import("importlib.machinery")?
            .getattr("SourceFileLoader")?
            .call1((MODULE_NAME, &abs))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("loader", loader)?;
        util.call_method(
            "spec_from_file_location",
            (MODULE_NAME, &abs),
            Some(&kwargs),
        )?
    };
    let module = util.call_method1("module_from_spec", (&spec,))?;
    // Registered before it runs, as an import would be: dataclasses and pickling in the file look
    // their module up there.
    py.import("sys")?
        .getattr("modules")?
        .set_item(MODULE_NAME, &module)?;
    spec.getattr("loader")?
        .call_method1("exec_module", (&module,))?;
    Ok(module.cast_into::<PyModule>()?)
}

/// Convert a Python value into what the settings table takes. The error is the problem, without
/// the setting's name.
fn setting_value(v: &Bound<'_, PyAny>) -> Result<SettingValue, String> {
    if v.is_none() {
        return Ok(SettingValue::None);
    }
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(SettingValue::Bool(b.is_true()));
    }
    if v.is_instance_of::<PyInt>() {
        return v
            .extract::<i64>()
            .map(SettingValue::Int)
            .map_err(|_| format!("integer {} is out of range", short_repr(v)));
    }
    if let Some(s) = text(v) {
        return Ok(SettingValue::Str(s));
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let items = v.try_iter().map_err(|_| unsupported(v))?;
        let mut out = Vec::new();
        for item in items {
            let item = item.map_err(|_| unsupported(v))?;
            out.push(text(&item).ok_or_else(|| {
                format!(
                    "expected a list of strings, got an item {} of type {}",
                    short_repr(&item),
                    type_name(&item)
                )
            })?);
        }
        return Ok(SettingValue::List(out));
    }
    if let Ok(d) = v.cast::<PyDict>() {
        let mut out = Vec::new();
        for (k, val) in d.iter() {
            match (text(&k), text(&val)) {
                (Some(k), Some(val)) => out.push((k, val)),
                _ => {
                    return Err(format!(
                        "expected a dict of strings, got the item {}: {}",
                        short_repr(&k),
                        short_repr(&val)
                    ))
                }
            }
        }
        return Ok(SettingValue::Map(out));
    }
    Err(unsupported(v))
}

/// A `str`, or a path object (`pathlib.Path`) as its text.
fn text(v: &Bound<'_, PyAny>) -> Option<String> {
    if let Ok(s) = v.cast::<PyString>() {
        return s.to_str().ok().map(str::to_string);
    }
    let os = v.py().import("os").ok()?;
    if !v.is_instance(&os.getattr("PathLike").ok()?).ok()? {
        return None;
    }
    os.call_method1("fspath", (v,))
        .ok()?
        .extract::<String>()
        .ok()
}

fn unsupported(v: &Bound<'_, PyAny>) -> String {
    format!(
        "unsupported value {} of type {}",
        short_repr(v),
        type_name(v)
    )
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// `repr(v)` on one line and at most 80 characters, for error messages.
fn short_repr(v: &Bound<'_, PyAny>) -> String {
    let full = v
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<object>".to_string());
    let line = full.replace(['\r', '\n'], " ");
    if line.chars().count() > 80 {
        format!("{}...", line.chars().take(77).collect::<String>())
    } else {
        line
    }
}

/// Resolve an import string `pkg.module.object`.
fn import_object<'py>(py: Python<'py>, path: &str) -> Result<Bound<'py, PyAny>, String> {
    let Some((module, object)) = path.rsplit_once('.') else {
        return Err(format!(
            "'{path}' is neither callable nor an import string of the form module.object"
        ));
    };
    let module = py.import(module).map_err(|e| {
        let reason = e.value(py).to_string();
        format!("cannot import '{module}': {reason}")
    })?;
    module.getattr(object).map_err(|_| {
        format!(
            "module '{}' has no attribute '{object}'",
            module.name().map(|n| n.to_string()).unwrap_or_default()
        )
    })
}

/// How many positional parameters `func` declares.
fn positional_parameters(func: &Bound<'_, PyAny>) -> Result<usize, String> {
    let count = || -> PyResult<usize> {
        let inspect = func.py().import("inspect")?;
        let parameter = inspect.getattr("Parameter")?;
        let positional = [
            parameter.getattr("POSITIONAL_ONLY")?,
            parameter.getattr("POSITIONAL_OR_KEYWORD")?,
        ];
        let signature = inspect.call_method1("signature", (func,))?;
        let mut n = 0;
        for p in signature
            .getattr("parameters")?
            .call_method0("values")?
            .try_iter()?
        {
            let kind = p?.getattr("kind")?;
            if positional.iter().any(|k| k.is(&kind)) {
                n += 1;
            }
        }
        Ok(n)
    };
    count().map_err(|e| {
        format!(
            "cannot read the parameters of {}: {}",
            short_repr(func),
            e.value(func.py())
        )
    })
}

/// The configuration in gunicorn's order: defaults, the config file (`-c`, else `./ferricorn.conf.py`
/// or `./gunicorn.conf.py` when present), `*_CMD_ARGS`, the command line. The server hooks the file
/// defined come back beside it.
pub fn configure(
    py: Python<'_>,
    argv: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Action, Hooks), ConfigError> {
    let cl = crate::config::parse_command_line(argv, env)?;
    if let Some(action) = crate::config::help_or_version(&cl, VERSION) {
        return Ok((action, Default::default()));
    }
    let loaded = match crate::config::config_location(&cl, &|p| p.exists()) {
        Some(location) => Some(load(py, &location)?),
        None => None,
    };
    let action = crate::config::resolve(&cl, env, loaded.as_ref().map(|l| &l.settings))?;
    Ok((action, loaded.map(|l| l.hooks).unwrap_or_default()))
}

/// `HUP`: read the command line, environment and config file again, as at start-up.
pub fn reconfigure(py: Python<'_>, argv: &[String]) -> Result<(Config, Hooks), String> {
    let env = |k: &str| std::env::var(k).ok();
    match configure(py, argv, &env) {
        Ok((Action::Run(cfg), hooks)) => Ok((cfg, hooks)),
        Ok(_) => Err("the command line no longer starts a server".to_string()),
        Err(e) => Err(e.message),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;

    fn with_value<R>(expr: &str, f: impl FnOnce(&Bound<'_, PyAny>) -> R) -> R {
        Python::initialize();
        Python::attach(|py| {
            let code = CString::new(expr).unwrap();
            let v = py.eval(&code, None, None).unwrap();
            f(&v)
        })
    }

    fn convert(expr: &str) -> Result<SettingValue, String> {
        with_value(expr, setting_value)
    }

    fn hook(name: &str, expr: &str) -> Result<usize, String> {
        with_value(expr, |v| {
            let mut hooks = Hooks::default();
            assert_eq!(hooks.set(name, v), Ok(true));
            Ok(hooks.post_request_arity)
        })
    }

    #[test]
    fn values() {
        use SettingValue::*;
        assert_eq!(convert("None"), Ok(None));
        assert_eq!(convert("True"), Ok(Bool(true)));
        assert_eq!(convert("4"), Ok(Int(4)));
        assert_eq!(convert("'x'"), Ok(Str("x".into())));
        assert_eq!(
            convert("__import__('pathlib').PurePosixPath('/a/b')"),
            Ok(Str("/a/b".into()))
        );
        assert_eq!(
            convert("['a', 'b']"),
            Ok(List(vec!["a".into(), "b".into()]))
        );
        assert_eq!(convert("('a',)"), Ok(List(vec!["a".into()])));
        assert_eq!(
            convert("{'K': 'v'}"),
            Ok(Map(vec![("K".into(), "v".into())]))
        );
        for (bad, says) in [
            ("1.5", "float"),
            ("2**70", "out of range"),
            ("['a', 1]", "list of strings"),
            ("{'a': 1}", "dict of strings"),
            ("b'x'", "bytes"),
            ("{'a'}", "set"),
        ] {
            let e = convert(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn hooks_are_checked() {
        assert_eq!(hook("on_starting", "lambda server: None"), Ok(0));
        assert_eq!(hook("on_starting", "None"), Ok(0));
        assert_eq!(
            hook("nworkers_changed", "lambda s, new, old=0: None"),
            Ok(0)
        );
        assert_eq!(hook("post_request", "lambda w, r, e: None"), Ok(3));
        assert_eq!(hook("post_request", "lambda w, r: None"), Ok(2));
        assert_eq!(hook("on_starting", "'os.path.basename'"), Ok(0));
        for (name, bad, says) in [
            ("on_starting", "lambda: None", "declares 0"),
            ("on_starting", "lambda *args: None", "declares 0"),
            ("pre_fork", "lambda a, b, c: None", "exactly 2"),
            ("post_request", "lambda w: None", "2 to 4"),
            ("when_ready", "7", "not callable"),
            ("when_ready", "'nodots'", "import string"),
            ("when_ready", "'no_such_module_here.f'", "cannot import"),
            ("when_ready", "'os.no_such_attribute'", "no attribute"),
        ] {
            let e = with_value(bad, |v| Hooks::default().set(name, v)).unwrap_err();
            assert!(e.contains(says), "{name} = {bad}: {e}");
        }
        assert_eq!(
            with_value("1", |v| Hooks::default().set("not_a_hook", v)),
            Ok(false)
        );
    }
}
