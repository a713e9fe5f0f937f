//! The embedded interpreter: reading the config file, preparing `sys.path` and `os.environ`, forking
//! safely, loading the app, listing the directories imports read from, and rendering Python errors for
//! the error log.

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

/// What a directory the app's imports read from is, for a worker that cannot read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportDirRole {
    /// The standard library (where `os` was loaded from).
    Stdlib,
    /// The working directory (the app's directory, first on `sys.path`).
    AppDir,
    /// A `site-packages` or `dist-packages` directory: installed distributions.
    Packages,
    /// Any other `sys.path` entry (`--pythonpath`, `lib-dynload`, `PYTHONPATH`).
    Other,
}

impl ImportDirRole {
    pub fn describe(self) -> &'static str {
        match self {
            ImportDirRole::Stdlib => "the standard library",
            ImportDirRole::AppDir => "the app's directory",
            ImportDirRole::Packages => "the installed packages",
            ImportDirRole::Other => "the sys.path entry",
        }
    }
}

/// The directories imports read from, as this process sees them now: the standard library, the working
/// directory, and every `sys.path` entry that is a directory (zip files and missing entries are left
/// out). Asked before a worker changes its user, to check afterwards that it can still read them.
pub fn import_dirs(py: Python<'_>) -> PyResult<Vec<(std::path::PathBuf, ImportDirRole)>> {
    use std::path::{Path, PathBuf};
    let os = py.import("os")?;
    let cwd = PathBuf::from(os.call_method0("getcwd")?.extract::<String>()?);
    let stdlib = os
        .getattr("__file__")?
        .extract::<String>()
        .ok()
        .and_then(|f| Path::new(&f).parent().map(Path::to_path_buf));
    let mut out: Vec<(PathBuf, ImportDirRole)> = Vec::new();
    if let Some(dir) = &stdlib {
        out.push((dir.clone(), ImportDirRole::Stdlib));
    }
    out.push((cwd.clone(), ImportDirRole::AppDir));
    let entries: Vec<String> = py
        .import("sys")?
        .getattr("path")?
        .extract()
        .unwrap_or_default();
    for entry in entries {
        let path = if entry.is_empty() {
            cwd.clone()
        } else {
            cwd.join(&entry)
        };
        if !path.is_dir() || out.iter().any(|(p, _)| *p == path) {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let role = if name == "site-packages" || name == "dist-packages" {
            ImportDirRole::Packages
        } else {
            ImportDirRole::Other
        };
        out.push((path, role));
    }
    Ok(out)
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
