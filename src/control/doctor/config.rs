//! The ferricorn side of `ferricornctl doctor`: the settings the server runs with, from the running
//! master's control socket (`show config`, `show stats`, `show listeners`), or from a config file
//! resolved exactly as `ferricorn -c FILE` would resolve it (the file is executed, as by the server).
//! Both become one [`ServerInfo`]; the live numbers (`show stats`) exist only for a running server.

use std::path::Path;
use std::time::Duration;

use crate::config::settings::parse_worker_class;
use crate::config::WorkerClass;
use crate::control::json::Json;
use crate::control::protocol;

/// Why the server's settings could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The control socket could not be reached, did not answer, or answered with an error.
    Socket(String),
    /// The config file could not be read or resolved.
    File(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Socket(e) | ConfigError::File(e) => f.write_str(e),
        }
    }
}

/// Live numbers from `show stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveStats {
    pub pid: Option<u32>,
    pub workers_current: u64,
    pub busy_threads: u64,
    /// Requests that can run at once; None from a server that does not report it.
    pub capacity: Option<u64>,
    pub peak_busy_threads: Option<u64>,
    pub peak_waiting: Option<u64>,
}

/// What the rules need from the server's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// `control socket PATH` or `config file PATH`.
    pub origin: String,
    pub timeout: u64,
    pub graceful_timeout: u64,
    pub keepalive: u64,
    pub workers: u64,
    pub threads: u64,
    /// `--worker-connections`: an asgi worker's capacity.
    pub worker_connections: u64,
    /// The worker class as configured (`sync`, `gthread`, ...).
    pub worker_class: String,
    /// What runs: gthread for `gthread`, and for `sync` with more than one thread (gunicorn's rule).
    pub class: WorkerClass,
    /// `127.0.0.1:8000`, `[::1]:8000`, `unix:/run/app.sock`.
    pub binds: Vec<String>,
    /// None for standard error (`-`) or unset.
    pub errorlog: Option<String>,
    pub accesslog: Option<String>,
    pub chdir: Option<String>,
    /// `raw_env` as `KEY=VALUE` items, and `pythonpath`'s directories: what the app's import sees.
    pub raw_env: Vec<String>,
    pub pythonpath: Vec<String>,
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    pub slow_request_threshold: u64,
    pub stats: Option<LiveStats>,
}

impl ServerInfo {
    /// Whether the workers run requests on several threads (gthread).
    pub fn threaded(&self) -> bool {
        self.class == WorkerClass::Gthread
    }

    /// Python threads per worker that run requests.
    pub fn app_threads(&self) -> u64 {
        let configured = usize::try_from(self.threads).unwrap_or(usize::MAX);
        self.class.threads(configured) as u64
    }

    /// Requests that can run at once: Python threads, or an asgi worker's tasks.
    pub fn capacity(&self) -> u64 {
        let threads = usize::try_from(self.threads).unwrap_or(usize::MAX);
        let connections = usize::try_from(self.worker_connections).unwrap_or(usize::MAX);
        self.workers.max(1) * self.class.capacity(threads, connections) as u64
    }
}

/// Items of a Python list's repr, as `--print-config` shows list settings: `['a', "b"]`.
fn py_list(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .chars()
    {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => {
                out.push(std::mem::take(&mut cur));
                quote = None;
            }
            (Some(_), c) => cur.push(c),
            _ => {}
        }
    }
    out
}

fn num(cfg: &Json, key: &str, default: u64) -> u64 {
    cfg.get(key)
        .and_then(Json::as_i64)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(default)
}

fn text(cfg: &Json, key: &str) -> Option<String> {
    match cfg.get(key) {
        Some(Json::Str(s)) if !s.is_empty() && s != "-" => Some(s.clone()),
        _ => None,
    }
}

/// Build from a `show config` reply (or the same object made from a config file).
pub fn from_config_json(cfg: &Json, origin: String) -> ServerInfo {
    let worker_class = text(cfg, "worker_class").unwrap_or_else(|| "sync".to_string());
    let threads = num(cfg, "threads", 1);
    // A class this server does not know is read as sync, under the same rule for threads.
    let class = parse_worker_class(&worker_class)
        .unwrap_or(WorkerClass::Sync)
        .with_threads(usize::try_from(threads).unwrap_or(usize::MAX));
    ServerInfo {
        origin,
        timeout: num(cfg, "timeout", 30),
        graceful_timeout: num(cfg, "graceful_timeout", 30),
        keepalive: num(cfg, "keepalive", 2),
        workers: num(cfg, "workers", 1),
        threads,
        worker_connections: num(cfg, "worker_connections", 1000),
        worker_class,
        class,
        binds: text(cfg, "bind").map(|b| py_list(&b)).unwrap_or_default(),
        errorlog: text(cfg, "errorlog"),
        accesslog: text(cfg, "accesslog"),
        chdir: text(cfg, "chdir"),
        raw_env: text(cfg, "raw_env")
            .map(|e| py_list(&e))
            .unwrap_or_default(),
        pythonpath: text(cfg, "pythonpath")
            .filter(|p| p != "None")
            .map(|p| {
                p.split(',')
                    .map(|d| d.trim().to_string())
                    .filter(|d| !d.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        max_requests: num(cfg, "max_requests", 0),
        max_requests_jitter: num(cfg, "max_requests_jitter", 0),
        slow_request_threshold: num(cfg, "slow_request_threshold", 0),
        stats: None,
    }
}

fn data(reply: Json) -> Result<Json, String> {
    if reply.get("status").and_then(Json::as_str) != Some("ok") {
        return Err(reply
            .get("error")
            .and_then(Json::as_str)
            .unwrap_or("the server answered with an error")
            .to_string());
    }
    Ok(reply.get("data").cloned().unwrap_or(Json::Null))
}

/// Ask a running master.
pub fn from_socket(path: &Path, timeout: Duration) -> Result<ServerInfo, ConfigError> {
    let ask = |cmd: &str| {
        let words = protocol::split_words(cmd);
        super::super::client::exchange(path, &words, timeout).and_then(data)
    };
    let cfg = ask("show config").map_err(ConfigError::Socket)?;
    let mut info = from_config_json(&cfg, format!("control socket {}", path.display()));
    // The bound addresses (a port 0 in `bind` is a real port here).
    if let Ok(l) = ask("show listeners") {
        let bound: Vec<String> = l
            .get("listeners")
            .and_then(Json::as_array)
            .unwrap_or(&[])
            .iter()
            .filter_map(|x| x.get("address")?.as_str())
            .map(|a| a.strip_prefix("http://").unwrap_or(a).to_string())
            .collect();
        if !bound.is_empty() {
            info.binds = bound;
        }
    }
    if let Ok(s) = ask("show stats") {
        let n = |k: &str| {
            s.get(k)
                .and_then(Json::as_i64)
                .and_then(|v| u64::try_from(v).ok())
        };
        info.stats = Some(LiveStats {
            pid: n("pid").and_then(|p| u32::try_from(p).ok()),
            workers_current: n("workers_current").unwrap_or(0),
            busy_threads: n("busy_threads").unwrap_or(0),
            capacity: n("capacity"),
            peak_busy_threads: n("peak_busy_threads"),
            peak_waiting: n("peak_waiting"),
        });
    }
    Ok(info)
}

/// Resolve a config file as the server would (defaults, the file, `*_CMD_ARGS`).
pub fn from_file(path: &str) -> Result<ServerInfo, ConfigError> {
    let argv = vec!["ferricorn".to_string(), "-c".to_string(), path.to_string()];
    let env = |k: &str| std::env::var(k).ok();
    let resolved =
        pyo3::Python::attach(|py| crate::python::config_file::configure(py, &argv, &env));
    let cfg = match resolved {
        Ok((crate::config::Action::Run(c) | crate::config::Action::PrintConfig(c), _)) => c,
        Ok(_) => {
            return Err(ConfigError::File(
                "the file does not describe a server".to_string(),
            ))
        }
        Err(e) => return Err(ConfigError::File(e.message)),
    };
    let pairs: Vec<(String, String)> = crate::config::SETTINGS
        .iter()
        .map(|s| (s.name.to_string(), (s.show)(&cfg)))
        .collect();
    Ok(from_config_json(
        &protocol::config_data(&pairs),
        format!("config file {path}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_show_config() {
        let cfg = Json::parse(
            r#"{"bind": "['127.0.0.1:8000', 'unix:/run/a.sock']", "threads": 4, "worker_class": "sync",
                "timeout": 3, "workers": 2, "errorlog": "-", "accesslog": "/var/log/a.log",
                "max_requests": 1000, "max_requests_jitter": 0}"#,
        )
        .unwrap();
        let s = from_config_json(&cfg, "x".into());
        assert_eq!(s.binds, vec!["127.0.0.1:8000", "unix:/run/a.sock"]);
        assert!(s.threaded(), "sync with 4 threads runs gthread");
        assert_eq!(s.capacity(), 8);
        assert_eq!(s.errorlog, None);
        assert_eq!(s.accesslog.as_deref(), Some("/var/log/a.log"));
        assert_eq!(s.graceful_timeout, 30, "missing keys take the defaults");
        let s = from_config_json(&Json::parse(r#"{"workers": 3}"#).unwrap(), "x".into());
        assert!(!s.threaded());
        assert_eq!(s.capacity(), 3);
        assert!(s.binds.is_empty());
    }

    #[test]
    fn lists() {
        assert_eq!(py_list("[]"), Vec::<String>::new());
        assert_eq!(py_list("['a:1', \"b c\"]"), vec!["a:1", "b c"]);
    }
}
