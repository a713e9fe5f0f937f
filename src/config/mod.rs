//! Configuration: the resolved [`Config`] the server runs with, and how it is produced from the
//! settings table (`settings`), the command line and `*_CMD_ARGS` environment variables (`cli`),
//! the config file's values (`file`; the file itself is executed by `python::config_file`),
//! bind-address parsing (`bind`) and `--print-config`.
//!
//! Precedence, lowest first, as in gunicorn: built-in defaults (some taken from `PORT`,
//! `WEB_CONCURRENCY`, `FORWARDED_ALLOW_IPS`), the config file, `GUNICORN_CMD_ARGS`,
//! `FERRICORN_CMD_ARGS`, then the real command line ([`resolve`]).

pub mod bind;
pub mod cli;
pub mod control_socket;
pub mod file;
pub mod ids;
pub mod network;
pub mod observability;
pub mod settings;
pub mod shell_words;
pub mod tls;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

pub use bind::{BindAddress, BindError};
pub use cli::{
    from_args, help_or_version, help_text, parse_command_line, CliError, CommandLine, Origin,
};
pub use file::{config_location, resolve, ConfigSource, FileSettings};
pub use network::Network;
pub use settings::{
    apply_setting, find_setting, Kind, Section, Setting, SettingValue, ValueError, SETTINGS,
};

/// One `--static-map` mount: requests whose path begins with `prefix` are answered from files under `root`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticMount {
    /// A URL path beginning and ending with `/` (`/static/`).
    pub prefix: String,
    /// The directory, canonical (absolute, without symlinks), as the worker compares resolved files to it.
    pub root: PathBuf,
}

/// The worker implementation, after gunicorn's rule that a sync worker with more than one thread
/// is a threaded worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WorkerClass {
    #[default]
    Sync,
    Gthread,
    /// ASGI: one asyncio event loop per worker, on a Python thread, running requests as tasks.
    Asgi,
}

impl WorkerClass {
    /// The class that runs when `self` is asked for with `--threads threads`: a sync worker with more
    /// than one thread is a threaded worker.
    pub fn with_threads(self, threads: usize) -> WorkerClass {
        match self {
            WorkerClass::Sync if threads > 1 => WorkerClass::Gthread,
            other => other,
        }
    }

    /// Its name in the log (`Using worker: …`) and in `ferricornctl doctor`.
    pub fn name(self) -> &'static str {
        match self {
            WorkerClass::Sync => "sync",
            WorkerClass::Gthread => "gthread",
            WorkerClass::Asgi => "asgi",
        }
    }

    /// The Python threads a worker of this class runs requests on, given `--threads`: one for sync,
    /// `--threads` (at least one) for gthread. A worker's capacity.
    pub fn threads(self, configured: usize) -> usize {
        match self {
            WorkerClass::Sync | WorkerClass::Asgi => 1,
            WorkerClass::Gthread => configured.max(1),
        }
    }

    /// Requests a worker of this class runs at once: its threads, or for ASGI (one event loop running
    /// requests as tasks) `--worker-connections`, as gunicorn's asgi worker limits them.
    pub fn capacity(self, threads: usize, worker_connections: usize) -> usize {
        match self {
            WorkerClass::Asgi => worker_connections.max(1),
            other => other.threads(threads),
        }
    }
}

/// Every setting, resolved. Field names follow gunicorn's setting names where they differ from
/// the flag (`keepalive` is `--keep-alive`, `preload_app` is `--preload`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub app_uri: Option<String>,
    pub binds: Vec<BindAddress>,
    pub workers: usize,
    /// The class that will run, resolved from `worker_class_name` and `threads`.
    pub worker_class: WorkerClass,
    /// The class as the user spelled it (`--print-config` shows this, like gunicorn).
    pub worker_class_name: String,
    pub threads: usize,
    pub timeout: u64,
    pub graceful_timeout: u64,
    pub keepalive: u64,
    pub backlog: i32,
    pub worker_connections: usize,
    /// `--max-threads`: the elastic ceiling of a gthread worker's threads; None = auto (see
    /// [`Config::max_threads_per_worker`]).
    pub max_threads: Option<usize>,
    /// `--max-workers`: the most workers the master runs under starvation; 0 = off.
    pub max_workers: usize,
    /// `--elastic-idle-timeout`: seconds an added thread or worker must have been unneeded before it
    /// is retired.
    pub elastic_idle_timeout: u64,
    pub chdir: Option<PathBuf>,
    pub pythonpath: Vec<String>,
    pub raw_env: Vec<(String, String)>,
    pub accesslog: Option<String>,
    pub access_log_format: String,
    /// `-` is standard error.
    pub errorlog: String,
    /// One of [`settings::LOG_LEVELS`], lower-case.
    pub loglevel: String,
    /// As configured: 0 means no limit, and above 8190 the parser uses 8190 (as gunicorn does; see
    /// [`settings::limits_above_maximum`]).
    pub limit_request_line: usize,
    /// At least 1 (a configured 0 is stored as 32768); above 32768 the parser uses 32768.
    pub limit_request_fields: usize,
    /// 0 means the default, 8190 (gunicorn's documentation says "unlimited", its parser uses 8190).
    pub limit_request_field_size: usize,
    /// Canonical IP addresses, or `*`.
    pub forwarded_allow_ips: Vec<String>,
    pub proc_name: Option<String>,
    // ---- process and service settings (see `system`) ----
    /// `--user`: workers switch to this uid (None: they keep the master's).
    pub uid: Option<u32>,
    /// `--group`: workers switch to this gid (None: the user's primary group when `uid` switches).
    pub gid: Option<u32>,
    pub initgroups: bool,
    /// Applied while unix socket files are created; 0..=0o777.
    pub umask: u32,
    pub daemon: bool,
    pub enable_stdio_inheritance: bool,
    pub reuse_port: bool,
    /// `wsgi.file_wrapper` bodies go out with sendfile(2) unless this is `Some(false)` (`--no-sendfile`);
    /// None, gunicorn's default, means on.
    pub sendfile: Option<bool>,
    /// Accepted and checked for gunicorn compatibility; the heartbeat lives in the scoreboard.
    pub worker_tmp_dir: Option<PathBuf>,
    pub capture_output: bool,
    pub reload: bool,
    /// One of [`settings::RELOAD_ENGINES`].
    pub reload_engine: String,
    /// Absolute paths and glob patterns.
    pub reload_extra_files: Vec<String>,
    pub pidfile: Option<PathBuf>,
    /// The control socket's path as given; None means the default under `$XDG_RUNTIME_DIR`.
    pub control_socket: Option<String>,
    pub control_socket_mode: u32,
    /// `--no-control-socket`.
    pub control_socket_disable: bool,
    /// `--statsd-host`: where per-request and server metrics go as statsd datagrams; None = off.
    pub statsd_host: Option<observability::StatsdAddress>,
    /// `--statsd-prefix`, with the trailing dot gunicorn adds (empty: no prefix).
    pub statsd_prefix: String,
    /// `--dogstatsd-tags`, comma-separated, appended to every datagram as `|#tags`.
    pub dogstatsd_tags: String,
    /// `--enable-backlog-metric`: the master sends `gunicorn.backlog` every tick.
    pub enable_backlog_metric: bool,
    /// `--metrics-bind`: the Prometheus and health listener of the master; None = off.
    pub metrics_bind: Option<BindAddress>,
    /// `--shutdown-delay`: seconds between a graceful stop's start (readiness off) and the listeners
    /// closing.
    pub shutdown_delay: u64,
    pub check_config: bool,
    pub print_config: bool,
    pub config_file: Option<String>,
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    /// Seconds after which a running request is logged with its stack; 0 = off.
    pub slow_request_threshold: u64,
    /// Seconds an asgi worker's event loop may stay away before a WARNING names what blocks it; 0 = off.
    pub asgi_block_threshold: u64,
    /// `--asgi-disconnect-grace-period`: seconds a task may run on after its client left mid-request.
    pub asgi_disconnect_grace_period: u64,
    /// `--asgi-loop`: auto, asyncio or uvloop.
    pub asgi_loop: String,
    /// `--asgi-lifespan`: auto, on or off.
    pub asgi_lifespan: String,
    /// `--root-path`: the ASGI scope's `root_path`.
    pub root_path: String,
    /// `--websocket-max-message-size`: the largest websocket message taken, in bytes.
    pub websocket_max_message_size: usize,
    /// `--ws-ping-interval` and `--ws-ping-timeout`, seconds (an interval of 0: no pings).
    pub ws_ping_interval: u64,
    pub ws_ping_timeout: u64,
    /// Negotiate permessage-deflate with websocket clients that offer it.
    pub ws_per_message_deflate: bool,
    /// MiB of RSS past which a worker is recycled; 0 = off.
    pub max_worker_memory: u64,
    pub preload_app: bool,
    pub permit_missing_host: bool,
    /// gunicorn's parser relaxations, all off by default.
    pub permit_obsolete_folding: bool,
    pub strip_header_spaces: bool,
    pub permit_unconventional_http_method: bool,
    pub permit_unconventional_http_version: bool,
    pub casefold_http_method: bool,
    /// One of [`settings::HEADER_MAP_MODES`]: `drop`, `refuse` or `dangerous`.
    pub header_map: String,
    /// Upper-case header name and the value that marks a request as HTTPS.
    pub secure_scheme_headers: Vec<(String, String)>,
    /// `--static-map`: URL prefixes served from directories by the I/O thread, longest prefix first.
    pub static_map: Vec<StaticMount>,
    /// One of [`settings::PROXY_PROTOCOL_MODES`]: `off`, `v1`, `v2` or `auto`.
    pub proxy_protocol: String,
    /// `*`, canonical IP addresses and networks (`10.0.0.0/8`).
    pub proxy_allow_ips: Vec<String>,
    // ---- TLS (see `crate::tls`; values checked by `tls.rs` here) ----
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub keyfile_password: Option<String>,
    pub ca_certs: Option<PathBuf>,
    /// 0, 1 or 2: client certificates not asked for, optional, required (Python's `ssl.CERT_*`).
    pub cert_reqs: u8,
    /// As given; [`tls::min_version`] reads it.
    pub ssl_version: String,
    /// An OpenSSL cipher string, as given; [`tls::cipher_suites`] reads it.
    pub ciphers: Option<String>,
    pub do_handshake_on_connect: bool,
    pub suppress_ragged_eofs: bool,
    /// `h1`, `h2` (and `h3`, not served) in order of preference.
    pub http_protocols: Vec<String>,
    /// One of `settings::HTTP2_CLEARTEXT_MODES`.
    pub http2_cleartext: String,
    pub http2_max_concurrent_streams: u32,
    pub http2_initial_window_size: u32,
    pub http2_max_frame_size: u32,
    /// 0: no limit.
    pub http2_max_header_list_size: u32,
}

impl Default for Config {
    /// Built-in defaults. The environment-dependent ones (`PORT`, `WEB_CONCURRENCY`,
    /// `FORWARDED_ALLOW_IPS`) are applied by [`from_args`].
    fn default() -> Self {
        Config {
            app_uri: None,
            binds: vec![BindAddress::Tcp {
                host: "127.0.0.1".to_string(),
                port: bind::DEFAULT_PORT,
            }],
            workers: 1,
            worker_class: WorkerClass::Sync,
            worker_class_name: "sync".to_string(),
            threads: 1,
            timeout: 30,
            graceful_timeout: 30,
            keepalive: 2,
            backlog: 2048,
            worker_connections: 1000,
            max_threads: None,
            max_workers: 0,
            elastic_idle_timeout: 30,
            chdir: None,
            pythonpath: Vec::new(),
            raw_env: Vec::new(),
            accesslog: None,
            access_log_format: settings::DEFAULT_ACCESS_LOG_FORMAT.to_string(),
            errorlog: "-".to_string(),
            loglevel: "info".to_string(),
            limit_request_line: 4094,
            limit_request_fields: 100,
            limit_request_field_size: 8190,
            forwarded_allow_ips: vec!["127.0.0.1".to_string(), "::1".to_string()],
            proc_name: None,
            uid: None,
            gid: None,
            initgroups: false,
            umask: 0,
            daemon: false,
            enable_stdio_inheritance: false,
            reuse_port: false,
            sendfile: None,
            worker_tmp_dir: None,
            capture_output: false,
            reload: false,
            reload_engine: "auto".to_string(),
            reload_extra_files: Vec::new(),
            pidfile: None,
            control_socket: None,
            control_socket_mode: control_socket::DEFAULT_MODE,
            control_socket_disable: false,
            statsd_host: None,
            statsd_prefix: String::new(),
            dogstatsd_tags: String::new(),
            enable_backlog_metric: false,
            metrics_bind: None,
            shutdown_delay: 0,
            check_config: false,
            print_config: false,
            config_file: None,
            max_requests: 0,
            max_requests_jitter: 0,
            slow_request_threshold: 0,
            asgi_block_threshold: 1,
            asgi_disconnect_grace_period: 3,
            asgi_loop: "auto".to_string(),
            asgi_lifespan: "auto".to_string(),
            root_path: String::new(),
            websocket_max_message_size: 16 * 1024 * 1024,
            ws_ping_interval: 20,
            ws_ping_timeout: 20,
            ws_per_message_deflate: true,
            max_worker_memory: 0,
            preload_app: false,
            permit_missing_host: false,
            permit_obsolete_folding: false,
            strip_header_spaces: false,
            permit_unconventional_http_method: false,
            permit_unconventional_http_version: false,
            casefold_http_method: false,
            header_map: "drop".to_string(),
            secure_scheme_headers: [
                ("X-FORWARDED-PROTOCOL", "ssl"),
                ("X-FORWARDED-PROTO", "https"),
                ("X-FORWARDED-SSL", "on"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            static_map: Vec::new(),
            proxy_protocol: "off".to_string(),
            proxy_allow_ips: vec!["127.0.0.1".to_string(), "::1".to_string()],
            certfile: None,
            keyfile: None,
            keyfile_password: None,
            ca_certs: None,
            cert_reqs: 0,
            ssl_version: "TLS".to_string(),
            ciphers: None,
            do_handshake_on_connect: false,
            suppress_ragged_eofs: true,
            http_protocols: vec!["h1".to_string()],
            http2_cleartext: "off".to_string(),
            http2_max_concurrent_streams: 100,
            http2_initial_window_size: 65535,
            http2_max_frame_size: 16384,
            http2_max_header_list_size: 65536,
        }
    }
}

impl Config {
    /// Whether the server speaks TLS (gunicorn's `is_ssl`: a certificate or a key is set).
    pub fn is_ssl(&self) -> bool {
        self.certfile.is_some() || self.keyfile.is_some()
    }

    /// `h2` is in `--http-protocols`.
    pub fn http2(&self) -> bool {
        self.http_protocols.iter().any(|p| p == "h2")
    }

    /// Cleartext connections from trusted peers must open with the HTTP/2 preface (gunicorn's
    /// `prior_knowledge_allowed`): `--http2-cleartext` prior-knowledge or both, h2 on, no TLS.
    pub fn h2c_prior_knowledge(&self) -> bool {
        self.http2()
            && !self.is_ssl()
            && matches!(self.http2_cleartext.as_str(), "prior-knowledge" | "both")
    }

    /// The ALPN protocols a TLS server offers, in `--http-protocols`' order (`h3` is not offered).
    pub fn alpn_protocols(&self) -> Vec<&'static [u8]> {
        self.http_protocols
            .iter()
            .filter_map(|p| match p.as_str() {
                "h2" => Some(&b"h2"[..]),
                "h1" => Some(&b"http/1.1"[..]),
                _ => None,
            })
            .collect()
    }

    /// Every setting as `name = value`, one per line, sorted by name with the names padded to one
    /// width (gunicorn's `--print-config` layout). Ends with a newline.
    pub fn print_config(&self) -> String {
        self.print_config_with(&[])
    }

    /// [`Config::print_config`] with more `(name, value)` lines sorted in among the settings (the
    /// server hooks a config file defined, which live outside `Config`).
    pub fn print_config_with(&self, extra: &[(&str, String)]) -> String {
        let lines = self.settings_with(extra);
        let width = lines.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        lines
            .iter()
            .map(|(name, value)| format!("{name:width$} = {value}\n"))
            .collect()
    }

    /// The record gunicorn logs at `debug` level when the master starts (and after each `HUP`): the line
    /// `Current configuration:`, then `  name: value` per setting, sorted by name, with `extra` (the
    /// server hooks) among them. No trailing newline.
    pub fn current_configuration_with(&self, extra: &[(&str, String)]) -> String {
        let mut out = String::from("Current configuration:");
        for (name, value) in self.settings_with(extra) {
            out.push_str("\n  ");
            out.push_str(name);
            out.push_str(": ");
            out.push_str(&value);
        }
        out
    }

    /// Every setting's `(name, shown value)` and `extra`, sorted by name.
    fn settings_with<'a>(&self, extra: &[(&'a str, String)]) -> Vec<(&'a str, String)> {
        let mut lines: Vec<(&str, String)> = SETTINGS
            .iter()
            .map(|s| (s.name, (s.show)(self)))
            .chain(extra.iter().cloned())
            .collect();
        lines.sort_by_key(|(name, _)| *name);
        lines
    }

    /// The most app threads one worker runs its requests on: `--threads` for sync and asgi; for
    /// gthread `--max-threads`, or by default [`AUTO_THREADS_FACTOR`] × `--threads` — and up to
    /// `--worker-connections` for a gevent or eventlet config. Never above `--worker-connections` (a
    /// thread more than the connections a worker holds could never run a request), never below
    /// `--threads`.
    pub fn max_threads_per_worker(&self) -> usize {
        let base = self.worker_class.threads(self.threads);
        if self.worker_class != WorkerClass::Gthread {
            return base;
        }
        let ceiling = match self.max_threads {
            Some(n) => n,
            None if self.green_class().is_some() => self.worker_connections,
            None => base.saturating_mul(AUTO_THREADS_FACTOR),
        };
        ceiling.min(self.worker_connections).max(base)
    }

    /// `gevent` or `eventlet` when the configured worker class is one of gunicorn's greenlet workers
    /// (run as gthread with elastic threads).
    pub fn green_class(&self) -> Option<&'static str> {
        settings::green_class(&self.worker_class_name)
    }

    /// The workers the master may run at most: `--max-workers`, or `base` (the `--workers`/TTIN
    /// count) when it is off or below it.
    pub fn max_workers_for(&self, base: usize) -> usize {
        self.max_workers.max(base)
    }

    /// Re-derive `worker_class` after `worker_class_name` or `threads` changed. Called by the
    /// table entries of both, so the order in which they are set does not matter.
    pub fn resolve_worker_class(&mut self) {
        if let Ok(requested) = settings::parse_worker_class(&self.worker_class_name) {
            self.worker_class = requested.with_threads(self.threads);
        }
    }
}

/// The default elastic ceiling of a gthread worker, in multiples of `--threads`. Threads are added only
/// while requests wait and the busy threads wait on I/O with the GIL released (`worker::elastic`), where
/// one more thread costs a stack and a thread state (tens of KiB resident), not CPU. Four times lets a
/// pool sized for the usual load absorb a fourfold burst of slow upstream calls; a view whose threads
/// each hold a scarce resource (a database connection) should pin the pool with `--max-threads`
/// equal to `--threads` (docs/gunicorn-compat.md).
pub const AUTO_THREADS_FACTOR: usize = 4;

/// What the caller should do after reading the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Run(Config),
    /// `--print-config`: print [`Config::print_config`] and exit 0.
    PrintConfig(Config),
    /// `-h/--help`: print the text and exit 0.
    Help(String),
    /// `-v/--version`: print the text and exit 0.
    Version(String),
}

/// A bad command line or setting. `message` is the whole line to print on standard error
/// (`ferricorn: error: argument -w/--workers: invalid int value: 'abc'`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub message: String,
    /// 2, as argparse uses for usage errors.
    pub exit_code: i32,
}

/// Exit status for usage errors.
pub const USAGE_EXIT_CODE: i32 = 2;

/// Program name in messages.
pub const PROG: &str = "ferricorn";

/// This build's version, as `--version` and the logs show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

impl From<CliError> for ConfigError {
    fn from(e: CliError) -> Self {
        ConfigError {
            message: format!("{PROG}: error: {e}"),
            exit_code: USAGE_EXIT_CODE,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}
