//! The embedded interpreter: reading the config file, preparing `sys.path` and `os.environ`, forking
//! safely, loading the app and rendering Python errors for the error log.

pub mod app;
pub mod config_file;
pub mod hooks;
pub mod stacks;

use pyo3::prelude::*;
use pyo3::types::PyList;

/// The text of a Python exception with its traceback, as `traceback.format_exception` renders it.
pub fn format_exception(py: Python<'_>, err: &PyErr) -> String {
    let rendered = (|| -> PyResult<String> {
        let tb = py.import("traceback")?;
        let lines = tb.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let mut out = String::new();
        for line in lines.try_iter()? {
            out.push_str(&line?.extract::<String>()?);
        }
        Ok(out)
    })();
    match rendered {
        Ok(s) => s.trim_end().to_string(),
        Err(_) => err.to_string(),
    }
}

/// What gunicorn does in the master before any app code runs: change directory, put the working directory
/// and `--pythonpath` entries first on `sys.path`, and export `--env` pairs.
pub fn prepare(
    py: Python<'_>,
    chdir: Option<&std::path::Path>,
    pythonpath: &[String],
    raw_env: &[(String, String)],
) -> PyResult<()> {
    let os = py.import("os")?;
    if let Some(dir) = chdir {
        os.call_method1("chdir", (dir.to_string_lossy().as_ref(),))?;
    }
    put_cwd_on_path(py)?;
    let path = py.import("sys")?.getattr("path")?.cast_into::<PyList>()?;
    for (i, p) in pythonpath.iter().enumerate() {
        let p = p.trim();
        if !p.is_empty() {
            path.insert(i, p)?;
        }
    }
    let environ = os.getattr("environ")?;
    for (k, v) in raw_env {
        environ.set_item(k, v)?;
    }
    Ok(())
}

/// Put the working directory first on `sys.path` unless it is already there.
pub fn put_cwd_on_path(py: Python<'_>) -> PyResult<()> {
    let path = py.import("sys")?.getattr("path")?.cast_into::<PyList>()?;
    let cwd: String = py.import("os")?.call_method0("getcwd")?.extract()?;
    if !path.contains(&cwd)? {
        path.insert(0, &cwd)?;
    }
    Ok(())
}

/// Fork with CPython's fork protocol around the raw call, so the child gets a sane interpreter (import
/// lock reset, threading state cleaned) exactly as `os.fork()` would leave it. Returns the child's pid in
/// the parent and 0 in the child.
pub fn fork(_py: Python<'_>) -> std::io::Result<libc::pid_t> {
    // SAFETY: the GIL is held (we have a `Python` token), as PyOS_BeforeFork requires.
    unsafe { pyo3::ffi::PyOS_BeforeFork() };
    // SAFETY: the master starts no threads, so the child inherits a consistent single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child, directly after fork, with the GIL state inherited from the parent.
        unsafe { pyo3::ffi::PyOS_AfterFork_Child() };
    } else {
        // SAFETY: in the parent after fork (also on failure, to release the locks taken before).
        unsafe { pyo3::ffi::PyOS_AfterFork_Parent() };
    }
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pid)
}
