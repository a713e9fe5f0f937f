//! Loading the WSGI application from `APP_MODULE`: `module`, `module:name`, `module:factory()` or
//! `module:factory(arg, kw=1)`, with gunicorn's rules and messages.
//!
//! The object part is parsed with Python's own `ast` module, because the arguments are Python literals and
//! only Python parses those exactly.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// Why the app could not be loaded. `Import` carries a Python traceback; `Invalid` is a one-line reason.
#[derive(Debug)]
pub enum AppLoadError {
    Import(String),
    Invalid(String),
}

impl std::fmt::Display for AppLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppLoadError::Import(s) | AppLoadError::Invalid(s) => f.write_str(s),
        }
    }
}

enum Target {
    Name(String),
    Call {
        name: String,
        args: Py<PyTuple>,
        kwargs: Py<PyDict>,
    },
}

fn parse_target(py: Python<'_>, obj: &str) -> Result<Target, AppLoadError> {
    let bad = || {
        AppLoadError::Invalid(format!(
            "Failed to parse {obj:?} as an attribute name or function call."
        ))
    };
    let ast = py
        .import("ast")
        .map_err(|e| AppLoadError::Import(super::format_exception(py, &e)))?;
    let expr = ast
        .call_method1("parse", (obj, "<app>", "eval"))
        .and_then(|m| m.getattr("body"))
        .map_err(|_| bad())?;
    let name_t = ast.getattr("Name").map_err(|_| bad())?;
    let call_t = ast.getattr("Call").map_err(|_| bad())?;
    if expr.is_instance(&name_t).unwrap_or(false) {
        let id: String = expr
            .getattr("id")
            .and_then(|v| v.extract())
            .map_err(|_| bad())?;
        return Ok(Target::Name(id));
    }
    if !expr.is_instance(&call_t).unwrap_or(false) {
        return Err(bad());
    }
    let func = expr.getattr("func").map_err(|_| bad())?;
    if !func.is_instance(&name_t).unwrap_or(false) {
        return Err(AppLoadError::Invalid(format!(
            "Function reference must be a simple name: {obj:?}"
        )));
    }
    let name: String = func
        .getattr("id")
        .and_then(|v| v.extract())
        .map_err(|_| bad())?;
    let bad_args = || {
        AppLoadError::Invalid(format!(
            "Failed to parse arguments as literal values: {obj:?}"
        ))
    };
    let mut args = Vec::new();
    for a in expr
        .getattr("args")
        .and_then(|a| a.try_iter().map(|i| i.collect::<Vec<_>>()))
        .map_err(|_| bad())?
    {
        args.push(literal(&ast, a.map_err(|_| bad())?).map_err(|_| bad_args())?);
    }
    let kwargs = PyDict::new(py);
    for kw in expr
        .getattr("keywords")
        .and_then(|a| a.try_iter().map(|i| i.collect::<Vec<_>>()))
        .map_err(|_| bad())?
    {
        let kw = kw.map_err(|_| bad())?;
        let key = kw.getattr("arg").map_err(|_| bad())?;
        let value =
            literal(&ast, kw.getattr("value").map_err(|_| bad())?).map_err(|_| bad_args())?;
        kwargs.set_item(key, value).map_err(|_| bad())?;
    }
    let args = PyTuple::new(py, args).map_err(|_| bad())?;
    Ok(Target::Call {
        name,
        args: args.unbind(),
        kwargs: kwargs.unbind(),
    })
}

fn literal<'py>(
    ast: &Bound<'py, PyModule>,
    node: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    ast.call_method1("literal_eval", (node,))
}

/// Import the module and find (or build) the application callable.
pub fn load(py: Python<'_>, uri: &str) -> Result<Py<PyAny>, AppLoadError> {
    let (module, obj) = match uri.split_once(':') {
        Some((m, o)) => (m, o),
        None => (uri, "application"),
    };
    let target = parse_target(py, obj)?;
    let importlib = py
        .import("importlib")
        .map_err(|e| AppLoadError::Import(super::format_exception(py, &e)))?;
    let module_obj = match importlib.call_method1("import_module", (module,)) {
        Ok(m) => m,
        Err(e) => {
            if e.is_instance_of::<pyo3::exceptions::PyImportError>(py)
                && module.ends_with(".py")
                && std::path::Path::new(module).exists()
            {
                let stem = module.trim_end_matches(".py");
                return Err(AppLoadError::Invalid(format!(
                    "Failed to find application, did you mean '{stem}:{obj}'?"
                )));
            }
            return Err(AppLoadError::Import(super::format_exception(py, &e)));
        }
    };
    let name = match &target {
        Target::Name(n) => n.as_str(),
        Target::Call { name, .. } => name.as_str(),
    };
    let found = module_obj.getattr(name).map_err(|_| {
        AppLoadError::Invalid(format!("Failed to find attribute {name:?} in {module:?}."))
    })?;
    let app = match target {
        Target::Name(_) => found,
        Target::Call { args, kwargs, .. } => found
            .call(args.bind(py), Some(kwargs.bind(py)))
            .map_err(|e| AppLoadError::Import(super::format_exception(py, &e)))?,
    };
    if app.is_none() {
        return Err(AppLoadError::Invalid(format!(
            "Failed to find application object: {obj:?}"
        )));
    }
    if !app.is_callable() {
        return Err(AppLoadError::Invalid(
            "Application object must be callable.".into(),
        ));
    }
    Ok(app.unbind())
}
