//! ferricorn's core: everything after `argv`. The Python package only calls [`run`].
//!
//! Layout mirrors the processes: `config` (settings, command line), `sock` (listeners), `arbiter` (the
//! master), `scoreboard` (shared state between master and workers), `worker` (I/O loop and Python threads),
//! `http` (parsing and serialization), `wsgi` (the bridge to the app), `python` (interpreter and app
//! loading), `log` (error and access logs), `signals` (self-pipe), `system` (service helpers), `control`
//! (control socket, `ferricornctl`). They form layers, drawn in docs/architecture.md and checked by
//! tests/test_layers.py; no module uses this root's own items.

pub mod arbiter;
pub mod asgi;
pub mod config;
pub mod control;
pub mod exchange;
pub mod log;
pub mod metrics;
pub mod python;
pub mod runtime;
pub mod scoreboard;
pub mod signals;
pub mod snapshot;
pub mod sock;
pub mod system;
pub mod tls;
pub mod worker;
pub mod wsgi;

/// HTTP/1.x as pure protocol code, in its own crate (`crates/ferricorn-http`).
pub use ferricorn_http as http;

/// gunicorn's parser corpus through the HTTP crate (it uses the control socket's JSON reader, so it lives
/// here rather than in `crates/ferricorn-http`).
#[cfg(test)]
mod http_corpus_tests;

use std::io::Write;
use std::sync::Arc;

use pyo3::prelude::*;

use config::Action;

pub use config::VERSION;

/// Exit status for a bad command line or configuration value.
const USAGE_ERROR: i32 = 2;

/// The console script's body: read the command line and the config file, then run the server.
/// Returns the exit status.
#[pyfunction]
fn run(py: Python<'_>, argv: Vec<String>) -> i32 {
    let env = |k: &str| std::env::var(k).ok();
    let (action, hooks) = match python::config_file::configure(py, &argv, &env) {
        Ok(done) => done,
        Err(e) => {
            // Empty for a config file that called `sys.exit()`.
            if !e.message.is_empty() {
                eprintln!("{}", e.message);
            }
            return e.exit_code;
        }
    };
    let cfg = match action {
        Action::Run(cfg) => cfg,
        Action::Help(text) | Action::Version(text) => {
            // A closed stdout (`ferricorn --help | head`) is not an error worth reporting.
            let _ = writeln!(std::io::stdout(), "{}", text.trim_end());
            return 0;
        }
        Action::PrintConfig(cfg) => {
            let out = cfg.print_config_with(&hooks.print_config_lines(py));
            let _ = write!(std::io::stdout(), "{out}");
            return 0;
        }
    };
    serve(py, cfg, hooks, argv)
}

fn serve(
    py: Python<'_>,
    cfg: config::Config,
    hooks: python::config_file::Hooks,
    argv: Vec<String>,
) -> i32 {
    let level = cfg
        .loglevel
        .parse::<log::Level>()
        .unwrap_or(log::Level::Info);
    let log = match log::ErrorLog::open(&cfg.errorlog, level) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "ferricorn: error: cannot open error log {}: {e}",
                cfg.errorlog
            );
            return USAGE_ERROR;
        }
    };
    if cfg.app_uri.is_none() {
        eprintln!("ferricorn: error: No application module specified.");
        return USAGE_ERROR;
    }
    // gunicorn's first debug record: every setting the server runs with.
    if log.enabled(log::Level::Debug) {
        log.debug(&cfg.current_configuration_with(&hooks.print_config_lines(py)));
    }
    // The TLS material is read and checked once here; workers build their TLS config from it.
    let tls = match tls::Material::load(&cfg) {
        Ok(m) => m.map(Arc::new),
        Err(e) => {
            eprintln!("ferricorn: error: {e}");
            return USAGE_ERROR;
        }
    };
    if let Err(e) = python::prepare(py, cfg.chdir.as_deref(), &cfg.pythonpath, &cfg.raw_env) {
        log.error(&format!(
            "Cannot prepare the Python environment:\n{}",
            python::format_exception(py, &e)
        ));
        return 1;
    }
    if cfg.check_config {
        return check_config(py, &cfg, &log);
    }
    // Pidfile, --daemon, --capture-output, process title (kept until the master exits).
    let _master = match arbiter::boot::start_master(py, &cfg, &log) {
        Ok(m) => m,
        Err(status) => return status,
    };
    let preloaded = if cfg.preload_app {
        match load_or_report(py, &cfg, &log) {
            Some(app) => Some(app),
            None => return worker::WORKER_BOOT_ERROR,
        }
    } else {
        None
    };

    let hooks = match python::hooks::HookRunner::new(py, hooks, &cfg, &log) {
        Ok(h) => h,
        Err(e) => {
            log.error(&format!(
                "Cannot prepare the server hooks:\n{}",
                python::format_exception(py, &e)
            ));
            return 1;
        }
    };
    // As in gunicorn, a failing `on_starting` or `when_ready` stops the server; other hooks only log.
    let server_hook = |name: &str| -> Result<(), python::hooks::HookFailed> {
        if !hooks.has(name) {
            return Ok(());
        }
        let args = hooks
            .server(py, std::process::id(), cfg.workers)
            .and_then(|s| pyo3::types::PyTuple::new(py, [s]))
            .map_err(|_| python::hooks::HookFailed)?;
        hooks.call(py, name, args)
    };
    if server_hook("on_starting").is_err() {
        return 1;
    }
    if let Err(e) = python::hooks::route_python_logging(py, &log) {
        log.warning(&format!(
            "Python logging will not reach the error log:\n{}",
            python::format_exception(py, &e)
        ));
    }

    log.info(&format!("Starting ferricorn {VERSION}"));
    for warning in config::settings::limits_above_maximum(&cfg) {
        log.warning(&warning);
    }
    let listeners = match arbiter::boot::listeners(py, &cfg, &log) {
        Ok(l) => l,
        Err(e) => {
            log.error(&e.to_string());
            return 1;
        }
    };
    let shown: Vec<String> = listeners.iter().map(|l| l.addr.to_string()).collect();
    log.debug("Arbiter booted");
    log.info(&format!(
        "Listening at: {} ({})",
        shown.join(","),
        std::process::id()
    ));
    log.info(&format!("Using worker: {}", cfg.worker_class.name()));
    if let Some(green) = cfg.green_class() {
        log.warning(&format!(
            "worker_class {:?} runs as gthread: each worker starts {} thread{} and adds threads up to {} (--worker-connections) while its views wait on I/O; nothing is monkey-patched, so a blocking call holds a thread instead of yielding to other greenlets, and {green}'s own APIs run as plain Python (docs/gunicorn-compat.md)",
            cfg.worker_class_name,
            cfg.threads,
            if cfg.threads == 1 { "" } else { "s" },
            cfg.max_threads_per_worker()
        ));
    }
    if let Some(m) = &tls {
        arbiter::log_tls_material(&log, m);
    }
    if server_hook("when_ready").is_err() {
        return 1;
    }
    let cfg = Arc::new(cfg);
    match arbiter::Arbiter::new(cfg, log.clone(), listeners, preloaded, hooks.clone()) {
        Ok(a) => a.reloading_from(argv).serving_tls(tls).run(py),
        Err(e) => {
            log.error(&format!("Cannot start the master: {e}"));
            1
        }
    }
}

fn load_or_report(py: Python<'_>, cfg: &config::Config, log: &log::ErrorLog) -> Option<Py<PyAny>> {
    let uri = cfg.app_uri.as_deref()?;
    match python::app::load(py, uri) {
        Ok(app) => Some(app),
        Err(e) => {
            log.error(&format!("Error while loading the application:\n{e}"));
            None
        }
    }
}

/// `--check-config`: load the configuration and the app, then exit 0 (good) or 1.
fn check_config(py: Python<'_>, cfg: &config::Config, log: &log::ErrorLog) -> i32 {
    for warning in config::settings::limits_above_maximum(cfg) {
        log.warning(&warning);
    }
    match load_or_report(py, cfg, log) {
        Some(_) => 0,
        None => 1,
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", VERSION)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(control::client::ctl, m)?)?;
    m.add_class::<wsgi::file_wrapper::FileWrapper>()?;
    Ok(())
}
