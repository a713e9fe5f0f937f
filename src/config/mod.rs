#![allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerClass {
    Sync,
    Gthread,
}
#[derive(Clone, Debug)]
pub enum BindAddress {
    Tcp { host: String, port: u16 },
    Unix(std::path::PathBuf),
    Fd(i32),
}
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub app_uri: Option<String>,
    pub binds: Vec<BindAddress>,
    pub workers: usize,
    pub worker_class: WorkerClass,
    pub threads: usize,
    pub timeout: u64,
    pub graceful_timeout: u64,
    pub keepalive: u64,
    pub backlog: i32,
    pub worker_connections: usize,
    pub chdir: Option<std::path::PathBuf>,
    pub pythonpath: Vec<String>,
    pub raw_env: Vec<(String, String)>,
    pub accesslog: Option<String>,
    pub access_log_format: String,
    pub errorlog: String,
    pub loglevel: String,
    pub limit_request_line: usize,
    pub limit_request_fields: usize,
    pub limit_request_field_size: usize,
    pub forwarded_allow_ips: Vec<String>,
    pub proc_name: Option<String>,
    pub pidfile: Option<std::path::PathBuf>,
    pub check_config: bool,
    pub print_config: bool,
    pub config_file: Option<String>,
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    pub preload_app: bool,
    pub permit_missing_host: bool,
    pub secure_scheme_headers: Vec<(String, String)>,
}
impl Default for WorkerClass {
    fn default() -> Self {
        WorkerClass::Sync
    }
}
impl Config {
    pub fn print_config(&self) -> String {
        String::new()
    }
}
pub enum Action {
    Run(Config),
    PrintConfig(Config),
    Help(String),
    Version(String),
}
pub struct ConfigError {
    pub message: String,
    pub exit_code: i32,
}
pub fn from_args(argv: &[String], _env: &dyn Fn(&str) -> Option<String>, _version: &str) -> Result<Action, ConfigError> {
    let mut c = Config { workers: 1, threads: 1, timeout: 30, graceful_timeout: 30, keepalive: 2, backlog: 2048, worker_connections: 1000,
        errorlog: "-".into(), loglevel: "info".into(), limit_request_line: 4094, limit_request_fields: 100, limit_request_field_size: 8190,
        forwarded_allow_ips: vec!["127.0.0.1".into(), "::1".into()], access_log_format: "%(h)s %(l)s %(u)s %(t)s \"%(r)s\" %(s)s %(b)s \"%(f)s\" \"%(a)s\"".into(),
        secure_scheme_headers: vec![("X-FORWARDED-PROTOCOL".into(), "ssl".into()), ("X-FORWARDED-PROTO".into(), "https".into()), ("X-FORWARDED-SSL".into(), "on".into())],
        ..Default::default() };
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].as_str(); let v = argv.get(i + 1).cloned().unwrap_or_default();
        match a {
            "-b" => { let (h, p) = v.rsplit_once(':').unwrap(); c.binds.push(BindAddress::Tcp { host: h.into(), port: p.parse().unwrap() }); i += 1; }
            "-w" => { c.workers = v.parse().unwrap(); i += 1; }
            "-k" => { if v == "gthread" { c.worker_class = WorkerClass::Gthread }; i += 1; }
            "--threads" => { c.threads = v.parse().unwrap(); i += 1; }
            "-t" | "--timeout" => { c.timeout = v.parse().unwrap(); i += 1; }
            "--access-logfile" => { c.accesslog = Some(v); i += 1; }
            "--permit-missing-host" => { c.permit_missing_host = true; }
            _ => c.app_uri = Some(a.to_string()),
        }
        i += 1;
    }
    if c.threads > 1 { c.worker_class = WorkerClass::Gthread }
    if c.binds.is_empty() { c.binds.push(BindAddress::Tcp { host: "127.0.0.1".into(), port: 8000 }); }
    Ok(Action::Run(c))
}
