//! The settings table: every setting declared once (config-file name, command-line flags, default,
//! how a value is checked and stored, one line of help, manual section). The clap command, the
//! config-file entry point [`apply_setting`], `--print-config` and `--help` are all generated from
//! [`SETTINGS`], so adding a setting means adding one entry here (and its field on `Config`).

use std::fmt;
use std::net::IpAddr;

use super::bind::{BindAddress, BindError};
use super::{Config, Network, WorkerClass};

/// gunicorn's ceiling on the request line: a larger value is accepted and this one used.
pub const MAX_REQUEST_LINE: usize = 8190;
/// gunicorn's ceiling on the number of header fields: a larger value is accepted and this one used.
pub const MAX_HEADERS: usize = 32768;
/// Ceiling for second counts: keeps `seconds * 1e9` (nanosecond arithmetic elsewhere) inside a u64.
pub const MAX_SECONDS: u64 = u32::MAX as u64;

/// gunicorn's default access log line.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str =
    r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

/// Values of `--header-map`: what to do with a header name containing `_`.
pub const HEADER_MAP_MODES: &[&str] = &["drop", "refuse", "dangerous"];

/// Values of `--proxy-protocol` (gunicorn's spellings `true`/`false`, `1`/`0`, `none` are read too).
pub const PROXY_PROTOCOL_MODES: &[&str] = &["off", "v1", "v2", "auto"];
/// `--asgi-loop`'s values, as gunicorn's asgi worker names them.
pub const ASGI_LOOPS: &[&str] = &["auto", "asyncio", "uvloop"];
/// `--asgi-lifespan`'s values.
pub const ASGI_LIFESPAN_MODES: &[&str] = &["auto", "on", "off"];

/// Values of `--http2-cleartext` (a config file's `True`/`False` are `prior-knowledge`/`off`, as gunicorn).
pub const HTTP2_CLEARTEXT_MODES: &[&str] = &["off", "prior-knowledge", "upgrade", "both"];
/// Protocols `--http-protocols` names (`h3` is accepted for gunicorn configs and not served).
pub const HTTP_PROTOCOLS: &[&str] = &["h1", "h2", "h3"];
/// RFC 9113 §6.5.2's bounds: a window of at most 2^31-1, frames of 2^14 to 2^24-1 bytes.
pub const HTTP2_MAX_WINDOW: i64 = (1 << 31) - 1;
pub const HTTP2_FRAME_SIZES: (i64, i64) = (1 << 14, (1 << 24) - 1);

/// Values of `--reload-engine`.
pub const RELOAD_ENGINES: &[&str] = &["auto", "poll", "inotify"];

/// Levels accepted by `--log-level`, most verbose first.
pub const LOG_LEVELS: &[&str] = &["debug", "info", "warning", "error", "critical"];

/// A value handed to a setting. The command line always gives `Str` (or `List` for repeatable flags,
/// `Bool(true)` for switches); a Python config file may give any of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingValue {
    /// Python `None`: clears optional settings.
    None,
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<String>),
    /// A Python dict of strings (`secure_scheme_headers` and `static_map` take one).
    Map(Vec<(String, String)>),
}

impl SettingValue {
    fn type_name(&self) -> &'static str {
        match self {
            SettingValue::None => "None",
            SettingValue::Bool(_) => "a boolean",
            SettingValue::Int(_) => "an integer",
            SettingValue::Str(_) => "a string",
            SettingValue::List(_) => "a list",
            SettingValue::Map(_) => "a dict",
        }
    }
}

impl From<&str> for SettingValue {
    fn from(s: &str) -> Self {
        SettingValue::Str(s.to_string())
    }
}

impl From<String> for SettingValue {
    fn from(s: String) -> Self {
        SettingValue::Str(s)
    }
}

impl From<i64> for SettingValue {
    fn from(n: i64) -> Self {
        SettingValue::Int(n)
    }
}

impl From<bool> for SettingValue {
    fn from(b: bool) -> Self {
        SettingValue::Bool(b)
    }
}

impl From<Vec<String>> for SettingValue {
    fn from(v: Vec<String>) -> Self {
        SettingValue::List(v)
    }
}

/// What is wrong with a value. The message does not name the setting: the caller adds
/// "argument -w/--workers: " or the config-file setting name in front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueError {
    InvalidInt(String),
    /// `max` is `None` when only the lower bound matters to the user.
    OutOfRange {
        value: String,
        min: i64,
        max: Option<i64>,
    },
    InvalidBool(String),
    InvalidChoice {
        value: String,
        choices: &'static [&'static str],
    },
    UnsupportedWorkerClass(String),
    NotKeyValue(String),
    Bind(BindError),
    InvalidIp(String),
    NotADirectory(String),
    /// A complete message (`no such user: 'x'`).
    Invalid(String),
    WrongType {
        expected: &'static str,
        got: &'static str,
    },
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::InvalidInt(s) => write!(f, "invalid int value: '{s}'"),
            ValueError::OutOfRange {
                value,
                min,
                max: Some(max),
            } => write!(
                f,
                "invalid value: {value} (must be between {min} and {max})"
            ),
            ValueError::OutOfRange {
                value,
                min,
                max: None,
            } => write!(f, "invalid value: {value} (must be at least {min})"),
            ValueError::InvalidBool(s) => {
                write!(f, "invalid boolean: '{s}' (use true or false)")
            }
            ValueError::InvalidChoice { value, choices } => write!(
                f,
                "invalid choice: '{value}' (choose from {})",
                choices.join(", ")
            ),
            ValueError::UnsupportedWorkerClass(s) => write!(
                f,
                "worker class '{s}' is not supported (ferricorn provides sync, gthread and asgi)"
            ),
            ValueError::NotKeyValue(s) => write!(f, "invalid value: '{s}' (expected KEY=VALUE)"),
            ValueError::Bind(e) => write!(f, "{e}"),
            ValueError::InvalidIp(s) => {
                write!(
                    f,
                    "'{s}' is not an IP address (use * to trust every address)"
                )
            }
            ValueError::NotADirectory(s) => write!(f, "can't chdir to '{s}': not a directory"),
            ValueError::Invalid(msg) => f.write_str(msg),
            ValueError::WrongType { expected, got } => write!(f, "expected {expected}, got {got}"),
        }
    }
}

impl std::error::Error for ValueError {}

/// Manual sections, in the order `--help` shows them (gunicorn's section names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    ConfigFile,
    Debugging,
    ServerSocket,
    WorkerProcesses,
    Security,
    Ssl,
    Http2,
    ServerMechanics,
    Logging,
    ProcessNaming,
    Diagnostics,
}

impl Section {
    pub const ALL: [Section; 11] = [
        Section::ConfigFile,
        Section::Debugging,
        Section::ServerSocket,
        Section::WorkerProcesses,
        Section::Security,
        Section::Ssl,
        Section::Http2,
        Section::ServerMechanics,
        Section::Logging,
        Section::ProcessNaming,
        Section::Diagnostics,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Section::ConfigFile => "Config File",
            Section::Debugging => "Debugging",
            Section::ServerSocket => "Server Socket",
            Section::WorkerProcesses => "Worker Processes",
            Section::Security => "Security",
            Section::Ssl => "SSL",
            Section::Http2 => "HTTP/2",
            Section::ServerMechanics => "Server Mechanics",
            Section::Logging => "Logging",
            Section::ProcessNaming => "Process Naming",
            Section::Diagnostics => "Diagnostics (ferricorn only)",
        }
    }
}

/// How a setting appears on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A flag without a value that turns the setting on.
    Switch,
    /// A flag without a value that turns the setting off (`--no-sendfile`).
    SwitchOff,
    /// A flag with one value; given again, the last one wins.
    Value,
    /// A flag with one value that may be repeated; the values form a list.
    Repeated,
    /// A flag whose value may be left out; alone it gives the setting `Bool(true)`.
    OptionalValue,
    /// The positional argument (`APP_MODULE`).
    Positional,
    /// Not on the command line at all: config file only.
    FileOnly,
}

/// One setting. `cli` lists its flags as gunicorn writes them (`["-w", "--workers"]`): the first long
/// flag is the main one, further long flags are shown aliases.
#[derive(Debug)]
pub struct Setting {
    /// The name used in a config file and by `--print-config`.
    pub name: &'static str,
    pub section: Section,
    pub kind: Kind,
    pub cli: &'static [&'static str],
    /// Extra long spellings accepted but not shown in `--help`.
    pub hidden_aliases: &'static [&'static str],
    /// Placeholder for the value in `--help`.
    pub meta: &'static str,
    /// The default as `--help` shows it.
    pub default: &'static str,
    pub help: &'static str,
    /// Check a value and store it in the config.
    pub apply: fn(&mut Config, SettingValue) -> Result<(), ValueError>,
    /// The current value as `--print-config` prints it (Python's `str()` of gunicorn's value).
    pub show: fn(&Config) -> String,
}

impl Setting {
    /// The flags joined as in error messages: `-w/--workers`, or the placeholder for the positional.
    pub fn display_flags(&self) -> String {
        if self.cli.is_empty() {
            return if self.kind == Kind::Positional {
                self.meta.to_string()
            } else {
                self.name.to_string()
            };
        }
        self.cli.join("/")
    }

    /// Whether `flag` (`-w`, `--workers`, an alias) belongs to this setting.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.cli.contains(&flag)
            || self
                .hidden_aliases
                .iter()
                .any(|a| flag.strip_prefix("--") == Some(*a))
    }
}

/// Look a setting up by its config-file name.
pub fn find_setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// Apply one setting by its config-file name. `Ok(false)` for a name that is not a setting (gunicorn
/// ignores such names in a config file); `Err` names the setting and says what is wrong.
pub fn apply_setting(cfg: &mut Config, name: &str, value: SettingValue) -> Result<bool, String> {
    let Some(setting) = find_setting(name) else {
        return Ok(false);
    };
    (setting.apply)(cfg, value).map_err(|e| format!("invalid value for setting '{name}': {e}"))?;
    Ok(true)
}

/// Accept gunicorn's spellings of the two worker classes ferricorn has.
pub fn parse_worker_class(s: &str) -> Result<WorkerClass, ValueError> {
    let short = s.strip_prefix("egg:gunicorn#").unwrap_or(s);
    match short {
        "sync" | "gunicorn.workers.sync.SyncWorker" => Ok(WorkerClass::Sync),
        "gthread" | "gunicorn.workers.gthread.ThreadWorker" => Ok(WorkerClass::Gthread),
        // The names ASGI apps' configs already carry: uvicorn's gunicorn workers and gunicorn's own.
        "asgi"
        | "uvicorn.workers.UvicornWorker"
        | "uvicorn.workers.UvicornH11Worker"
        | "uvicorn_worker.UvicornWorker"
        | "uvicorn_worker.UvicornH11Worker"
        | "gunicorn.workers.gasgi.ASGIWorker" => Ok(WorkerClass::Asgi),
        _ if green_class(s).is_some() => Ok(WorkerClass::Gthread),
        _ => Err(ValueError::UnsupportedWorkerClass(s.to_string())),
    }
}

/// For a worker class of gunicorn's greenlet workers (gevent, eventlet), its short name. ferricorn runs
/// such a config as gthread with elastic threads up to `--worker-connections` (`Config::max_threads_per_worker`),
/// without monkey-patching: a blocking call holds a thread, not a greenlet (docs/gunicorn-compat.md).
pub fn green_class(s: &str) -> Option<&'static str> {
    match s.strip_prefix("egg:gunicorn#").unwrap_or(s) {
        "gevent" | "gunicorn.workers.ggevent.GeventWorker" => Some("gevent"),
        "eventlet" | "gunicorn.workers.geventlet.EventletWorker" => Some("eventlet"),
        _ => None,
    }
}

/// What is wrong with the elastic capacity settings taken together (each alone was checked when set):
/// a ceiling below its base, or `--max-threads` for a class that has no thread pool. One line, named
/// after the flag, as the caller prints it (exit status 2).
pub fn check_elastic(c: &Config) -> Result<(), String> {
    if let Some(max) = c.max_threads {
        if c.worker_class != WorkerClass::Gthread {
            return Err(format!(
                "argument --max-threads: the {} worker class runs no thread pool (use -k gthread, or --threads N)",
                c.worker_class.name()
            ));
        }
        if max < c.threads {
            return Err(format!(
                "argument --max-threads: {max} is below --threads {} (the threads a worker starts with)",
                c.threads
            ));
        }
    }
    if c.max_workers != 0 && c.max_workers < c.workers {
        return Err(format!(
            "argument --max-workers: {} is below --workers {} (0 turns elastic workers off)",
            c.max_workers, c.workers
        ));
    }
    Ok(())
}

// ---- value conversions shared by the table entries ----

/// Integers as Python's `int(x, 0)` reads them (decimal, or 0x / 0o / 0b), checked against a range.
fn int(v: SettingValue, min: i64, max: i64) -> Result<i64, ValueError> {
    let n: i128 = match v {
        SettingValue::Int(n) => i128::from(n),
        SettingValue::Str(s) => parse_int(&s)?,
        other => {
            return Err(ValueError::WrongType {
                expected: "an integer",
                got: other.type_name(),
            })
        }
    };
    if n < i128::from(min) || n > i128::from(max) {
        return Err(ValueError::OutOfRange {
            value: n.to_string(),
            min,
            // Bounds that only exist to keep arithmetic safe are not worth mentioning.
            max: (max < i64::from(u32::MAX)).then_some(max),
        });
    }
    // In range of i64 by the check above.
    Ok(n as i64)
}

fn parse_int(s: &str) -> Result<i128, ValueError> {
    let bad = || ValueError::InvalidInt(s.to_string());
    let t = s.trim();
    let (neg, unsigned) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    // Too many digits even for i128: report it as out of range rather than malformed.
    let n = i128::from_str_radix(digits, radix).unwrap_or(i128::MAX);
    Ok(if neg { -n } else { n })
}

/// `0600`: octal digits after a leading zero (gunicorn reads file modes this way).
fn is_legacy_octal(s: &str) -> bool {
    s.len() > 1 && s.starts_with('0') && s[1..].chars().all(|c| c.is_ascii_digit())
}

fn string(v: SettingValue) -> Result<String, ValueError> {
    match v {
        SettingValue::Str(s) => Ok(s.trim().to_string()),
        other => Err(ValueError::WrongType {
            expected: "a string",
            got: other.type_name(),
        }),
    }
}

fn opt_string(v: SettingValue) -> Result<Option<String>, ValueError> {
    match v {
        SettingValue::None => Ok(None),
        v => string(v).map(Some),
    }
}

fn boolean(v: SettingValue) -> Result<bool, ValueError> {
    match v {
        SettingValue::Bool(b) => Ok(b),
        SettingValue::Int(0) => Ok(false),
        SettingValue::Int(1) => Ok(true),
        SettingValue::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(ValueError::InvalidBool(s)),
        },
        other => Err(ValueError::WrongType {
            expected: "a boolean",
            got: other.type_name(),
        }),
    }
}

/// A list of strings; a single string is a one-element list (gunicorn's legacy form).
fn strings(v: SettingValue) -> Result<Vec<String>, ValueError> {
    match v {
        SettingValue::None => Ok(Vec::new()),
        SettingValue::Str(s) => Ok(vec![s.trim().to_string()]),
        SettingValue::List(l) => Ok(l.into_iter().map(|s| s.trim().to_string()).collect()),
        other => Err(ValueError::WrongType {
            expected: "a list of strings",
            got: other.type_name(),
        }),
    }
}

/// A comma-separated list (a list's items are split too); blanks are dropped.
fn comma_list(v: SettingValue) -> Result<Vec<String>, ValueError> {
    Ok(strings(v)?
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

fn key_value(s: &str) -> Result<(String, String), ValueError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(ValueError::NotKeyValue(s.to_string())),
    }
}

fn usize_in(v: SettingValue, min: usize, max: usize) -> Result<usize, ValueError> {
    // Every bound used here fits in i64 on the platforms we build for.
    let clamp = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let n = int(v, clamp(min), clamp(max))?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// The limits configured above gunicorn's ceilings, each as the WARNING the master logs at startup.
/// gunicorn takes such a value and uses its ceiling instead (a unit file written for it must still
/// boot), and so does the parser (`http::ParserOptions` clamps); the line says which value is used.
/// `limit_request_field_size` has no ceiling, in gunicorn either.
pub fn limits_above_maximum(c: &Config) -> Vec<String> {
    [
        ("limit_request_line", c.limit_request_line, MAX_REQUEST_LINE),
        ("limit_request_fields", c.limit_request_fields, MAX_HEADERS),
    ]
    .into_iter()
    .filter(|(_, value, max)| value > max)
    .map(|(name, value, max)| format!("{name} {value} is above its maximum, {max}: {max} is used"))
    .collect()
}

fn seconds(v: SettingValue) -> Result<u64, ValueError> {
    // MAX_SECONDS fits in i64, and the result is non-negative.
    Ok(int(v, 0, MAX_SECONDS as i64)? as u64)
}

fn count(v: SettingValue) -> Result<u64, ValueError> {
    Ok(int(v, 0, i64::MAX)? as u64)
}

fn bind_list(v: SettingValue) -> Result<Vec<BindAddress>, ValueError> {
    strings(v)?
        .iter()
        .map(|s| BindAddress::try_parse(s).map_err(ValueError::Bind))
        .collect()
}

/// `*` or IP addresses, stored in canonical text form so they compare equal to a peer address
/// formatted by the standard library (`0:0::1` becomes `::1`).
fn ip_list(v: SettingValue) -> Result<Vec<String>, ValueError> {
    comma_list(v)?
        .into_iter()
        .map(|s| {
            if s == "*" {
                return Ok(s);
            }
            s.parse::<IpAddr>()
                .map(|ip| ip.to_string())
                .map_err(|_| ValueError::InvalidIp(s))
        })
        .collect()
}

/// One of `choices`, case-insensitively.
fn choice(v: SettingValue, choices: &'static [&'static str]) -> Result<String, ValueError> {
    let text = string(v)?;
    let lower = text.to_ascii_lowercase();
    if choices.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(ValueError::InvalidChoice {
            value: text,
            choices,
        })
    }
}

/// `--http-protocols`: a comma-separated list of [`HTTP_PROTOCOLS`] in order of preference, no
/// duplicates; empty is `h1`.
fn http_protocols(v: SettingValue) -> Result<Vec<String>, ValueError> {
    let list: Vec<String> = comma_list(v)?
        .into_iter()
        .map(|p| p.to_ascii_lowercase())
        .collect();
    for (i, p) in list.iter().enumerate() {
        if !HTTP_PROTOCOLS.contains(&p.as_str()) {
            return Err(ValueError::InvalidChoice {
                value: p.clone(),
                choices: HTTP_PROTOCOLS,
            });
        }
        if list[..i].contains(p) {
            return Err(ValueError::Invalid(format!("'{p}' is listed twice")));
        }
    }
    if list.is_empty() {
        return Ok(vec!["h1".to_string()]);
    }
    Ok(list)
}

/// `--http2-cleartext`: one of [`HTTP2_CLEARTEXT_MODES`]; a boolean is `prior-knowledge`/`off`.
fn http2_cleartext(v: SettingValue) -> Result<String, ValueError> {
    match v {
        SettingValue::None | SettingValue::Bool(false) => Ok("off".to_string()),
        SettingValue::Bool(true) => Ok("prior-knowledge".to_string()),
        v => choice(v, HTTP2_CLEARTEXT_MODES),
    }
}

/// A u32 HTTP/2 setting within `min..=max`.
fn h2_u32(v: SettingValue, min: i64, max: i64) -> Result<u32, ValueError> {
    // The bounds are within u32.
    Ok(int(v, min, max)? as u32)
}

/// `--proxy-protocol`: one of [`PROXY_PROTOCOL_MODES`]; a boolean (or the bare flag) is `auto`/`off`.
fn proxy_protocol(v: SettingValue) -> Result<String, ValueError> {
    let text = match v {
        SettingValue::None | SettingValue::Bool(false) => return Ok("off".to_string()),
        SettingValue::Bool(true) => return Ok("auto".to_string()),
        v => string(v)?,
    };
    match text.to_ascii_lowercase().as_str() {
        "off" | "false" | "0" | "none" => Ok("off".to_string()),
        "auto" | "true" | "1" => Ok("auto".to_string()),
        mode @ ("v1" | "v2") => Ok(mode.to_string()),
        _ => Err(ValueError::InvalidChoice {
            value: text,
            choices: PROXY_PROTOCOL_MODES,
        }),
    }
}

/// `*`, IP addresses and networks (`10.0.0.0/8`), stored in canonical text form.
fn network_list(v: SettingValue) -> Result<Vec<String>, ValueError> {
    comma_list(v)?
        .into_iter()
        .map(|s| {
            if s == "*" {
                return Ok(s);
            }
            Network::parse(&s)
                .map(|n| n.to_string())
                .map_err(ValueError::Invalid)
        })
        .collect()
}

fn header_map(v: SettingValue) -> Result<Vec<(String, String)>, ValueError> {
    let pairs = match v {
        SettingValue::Map(m) => m,
        SettingValue::None => Vec::new(),
        v => comma_list(v)?
            .iter()
            .map(|s| key_value(s))
            .collect::<Result<_, _>>()?,
    };
    // Header names compare case-insensitively; gunicorn keeps them upper-case.
    Ok(pairs
        .into_iter()
        .map(|(k, v)| (k.trim().to_ascii_uppercase(), v.trim().to_string()))
        .collect())
}

/// `--static-map`'s mounts: `PREFIX=DIR` strings (a list, or one) or a dict of prefix to directory. A
/// prefix is a URL path (Django's relative `STATIC_URL`, `static/`, gets its leading slash) and always
/// ends with `/`; the directory must exist and is kept as its canonical path, resolved now against the
/// directory the server was started in, so `--chdir` or a later change of the current directory does
/// not move it. Longest prefix first, so the most specific mount wins.
fn static_mounts(v: SettingValue) -> Result<Vec<super::StaticMount>, ValueError> {
    let pairs = match v {
        SettingValue::Map(m) => m,
        v => strings(v)?
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once('=') {
                Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                None => Err(ValueError::Invalid(format!(
                    "invalid value: '{s}' (expected PREFIX=DIR, e.g. /static=/srv/app/static)"
                ))),
            })
            .collect::<Result<_, _>>()?,
    };
    let mut mounts: Vec<super::StaticMount> = Vec::new();
    for (prefix, dir) in pairs {
        let bad = |why: &str| ValueError::Invalid(format!("'{prefix}={dir}': {why}"));
        if prefix.contains("://") || prefix.starts_with("//") {
            return Err(bad(
                "the prefix is a URL of another host; give the path only (e.g. /static/)",
            ));
        }
        if prefix
            .bytes()
            .any(|b| b <= b' ' || b == b'%' || b == b'?' || b == b'#' || b >= 0x7f)
        {
            return Err(bad(
                "the prefix must be a plain URL path (no spaces, %, ? or #)",
            ));
        }
        let mut p = String::with_capacity(prefix.len() + 2);
        if !prefix.starts_with('/') {
            p.push('/');
        }
        p.push_str(&prefix);
        if !p.ends_with('/') {
            p.push('/');
        }
        if p.split('/').any(|seg| seg == ".." || seg == ".") {
            return Err(bad("the prefix may not have '.' or '..' segments"));
        }
        if dir.is_empty() {
            return Err(bad("no directory given"));
        }
        let root = match std::fs::canonicalize(&dir) {
            Ok(r) if r.is_dir() => r,
            Ok(_) => return Err(bad("not a directory")),
            Err(e) => return Err(bad(&format!("cannot use the directory: {e}"))),
        };
        if mounts.iter().any(|m| m.prefix == p) {
            return Err(bad(&format!("the prefix {p} is mapped twice")));
        }
        mounts.push(super::StaticMount { prefix: p, root });
    }
    mounts.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
    Ok(mounts)
}

// ---- how `--print-config` writes values: Python's str() of the equivalent gunicorn value ----

fn py_quote(s: &str) -> String {
    // Python's repr picks double quotes only when that avoids escaping.
    if s.contains('\'') && !s.contains('"') {
        format!("\"{s}\"")
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

fn py_list<I: IntoIterator<Item = String>>(items: I) -> String {
    let inner: Vec<String> = items.into_iter().map(|s| py_quote(&s)).collect();
    format!("[{}]", inner.join(", "))
}

fn py_opt(v: Option<&str>) -> String {
    v.unwrap_or("None").to_string()
}

fn py_bool(b: bool) -> String {
    if b { "True" } else { "False" }.to_string()
}

fn py_path(p: Option<&std::path::Path>) -> String {
    p.map_or_else(|| "None".to_string(), |p| p.display().to_string())
}

// ---- values of the process and service settings (see `system`) ----

/// A user or group: a name or numeric id (looked up now, so a typo is a usage error), or None.
fn id_value(
    v: SettingValue,
    lookup: fn(&str) -> Result<u32, String>,
) -> Result<Option<u32>, ValueError> {
    match v {
        SettingValue::None => Ok(None),
        SettingValue::Int(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| ValueError::OutOfRange {
                value: n.to_string(),
                min: 0,
                max: Some(i64::from(u32::MAX)),
            }),
        v => lookup(&string(v)?).map(Some).map_err(ValueError::Invalid),
    }
}

/// A file mode mask: Python's `int(x, 0)`, or octal after a leading 0 (`022`) as gunicorn reads it.
fn umask_value(v: SettingValue) -> Result<u32, ValueError> {
    let given = match &v {
        SettingValue::Str(s) => Some(s.trim().to_string()),
        _ => None,
    };
    let v = match given.as_deref() {
        Some(s) if is_legacy_octal(s) => SettingValue::Str(format!("0o{}", &s[1..])),
        _ => v,
    };
    match int(v, 0, 0o777) {
        Ok(n) => Ok(n as u32),
        Err(ValueError::OutOfRange { value, .. }) => Err(ValueError::Invalid(format!(
            "invalid umask: {value} (must be between 0 and 0o777, e.g. 022 or 0o27)"
        ))),
        // Name the value as the user wrote it, not as rewritten above.
        Err(ValueError::InvalidInt(_)) => Err(ValueError::InvalidInt(given.unwrap_or_default())),
        Err(e) => Err(e),
    }
}

/// Whether `entry` of `--reload-extra-file` is a glob pattern (gunicorn's rule: it holds `*`, `?` or `[`).
pub fn is_glob_pattern(entry: &str) -> bool {
    entry.contains(['*', '?', '['])
}

/// `--reload-extra-file`: paths made absolute against the directory ferricorn was started from (the
/// workers run after `--chdir`); a plain path must exist, a glob pattern may match nothing yet.
fn reload_files(v: SettingValue) -> Result<Vec<String>, ValueError> {
    let cwd = std::env::current_dir().unwrap_or_default();
    strings(v)?
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let abs = cwd.join(&s);
            if !is_glob_pattern(&s) && !abs.exists() {
                return Err(ValueError::Invalid(format!("file '{s}' does not exist")));
            }
            Ok(abs.to_string_lossy().into_owned())
        })
        .collect()
}

/// The table. Order within a section is the order of `--help`.
pub static SETTINGS: &[Setting] = &[
    // ---- Config File ----
    Setting {
        name: "config",
        section: Section::ConfigFile,
        kind: Kind::Value,
        cli: &["-c", "--config"],
        hidden_aliases: &[],
        meta: "CONFIG",
        default: "none",
        help: "Python configuration file to read: PATH, file:PATH or python:MODULE",
        apply: |c, v| {
            c.config_file = opt_string(v)?;
            Ok(())
        },
        show: |c| py_opt(c.config_file.as_deref()),
    },
    Setting {
        name: "wsgi_app",
        section: Section::ConfigFile,
        kind: Kind::Positional,
        cli: &[],
        hidden_aliases: &[],
        meta: "APP_MODULE",
        default: "none",
        help:
            "The WSGI application: module:name, module (uses `application`), or module:factory(...)",
        apply: |c, v| {
            c.app_uri = opt_string(v)?;
            Ok(())
        },
        show: |c| py_opt(c.app_uri.as_deref()),
    },
    // ---- Debugging ----
    Setting {
        name: "check_config",
        section: Section::Debugging,
        kind: Kind::Switch,
        cli: &["--check-config"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Load the configuration and the application, report problems, then exit",
        apply: |c, v| {
            c.check_config = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.check_config),
    },
    Setting {
        name: "print_config",
        section: Section::Debugging,
        kind: Kind::Switch,
        cli: &["--print-config"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Print the value of every setting, then exit",
        apply: |c, v| {
            c.print_config = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.print_config),
    },
    Setting {
        name: "reload",
        section: Section::Debugging,
        kind: Kind::Switch,
        cli: &["--reload"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Restart a worker when a Python file it loaded, or a --reload-extra-file, changes (development only)",
        apply: |c, v| {
            c.reload = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.reload),
    },
    Setting {
        name: "reload_engine",
        section: Section::Debugging,
        kind: Kind::Value,
        cli: &["--reload-engine"],
        hidden_aliases: &[],
        meta: "STRING",
        default: "auto",
        help: "How --reload watches files: auto (inotify, else polling), inotify or poll",
        apply: |c, v| {
            let engine = string(v)?.to_ascii_lowercase();
            if !RELOAD_ENGINES.contains(&engine.as_str()) {
                return Err(ValueError::InvalidChoice {
                    value: engine,
                    choices: RELOAD_ENGINES,
                });
            }
            c.reload_engine = engine;
            Ok(())
        },
        show: |c| c.reload_engine.clone(),
    },
    Setting {
        name: "reload_extra_files",
        section: Section::Debugging,
        kind: Kind::Repeated,
        cli: &["--reload-extra-file"],
        hidden_aliases: &[],
        meta: "FILES",
        default: "none",
        help: "Another file or glob pattern (templates, settings) that --reload watches; repeat for more",
        apply: |c, v| {
            c.reload_extra_files = reload_files(v)?;
            Ok(())
        },
        show: |c| py_list(c.reload_extra_files.iter().cloned()),
    },
    // ---- Server Socket ----
    Setting {
        name: "bind",
        section: Section::ServerSocket,
        kind: Kind::Repeated,
        cli: &["-b", "--bind"],
        hidden_aliases: &[],
        meta: "ADDRESS",
        default: "127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set",
        help: "Where to listen: HOST, HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N; repeat for more",
        apply: |c, v| {
            c.binds = bind_list(v)?;
            Ok(())
        },
        show: |c| py_list(c.binds.iter().map(BindAddress::spec)),
    },
    Setting {
        name: "backlog",
        section: Section::ServerSocket,
        kind: Kind::Value,
        cli: &["--backlog"],
        hidden_aliases: &[],
        meta: "INT",
        default: "2048",
        help: "How many connections may wait to be accepted",
        apply: |c, v| {
            // The range check keeps the value inside i32.
            c.backlog = int(v, 0, i64::from(i32::MAX))? as i32;
            Ok(())
        },
        show: |c| c.backlog.to_string(),
    },
    // ---- Worker Processes ----
    Setting {
        name: "workers",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["-w", "--workers"],
        hidden_aliases: &[],
        meta: "INT",
        default: "$WEB_CONCURRENCY, else 1",
        help: "Number of worker processes serving requests",
        apply: |c, v| {
            c.workers = usize_in(v, 1, 65536)?;
            Ok(())
        },
        show: |c| c.workers.to_string(),
    },
    Setting {
        name: "worker_class",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["-k", "--worker-class"],
        hidden_aliases: &[],
        meta: "STRING",
        default: "sync",
        help: "Worker type: sync, gthread or asgi (gunicorn's and uvicorn's dotted names are accepted too; gevent and eventlet run as gthread with elastic threads)",
        apply: |c, v| {
            let name = string(v)?;
            parse_worker_class(&name)?;
            c.worker_class_name = name;
            c.resolve_worker_class();
            Ok(())
        },
        show: |c| c.worker_class_name.clone(),
    },
    Setting {
        name: "threads",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--threads"],
        hidden_aliases: &[],
        meta: "INT",
        default: "1",
        help: "Request-handling threads per worker; above 1, a sync worker becomes gthread",
        apply: |c, v| {
            c.threads = usize_in(v, 1, 65536)?;
            c.resolve_worker_class();
            Ok(())
        },
        show: |c| c.threads.to_string(),
    },
    Setting {
        name: "worker_connections",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--worker-connections"],
        hidden_aliases: &[],
        meta: "INT",
        default: "1000",
        help: "Most connections one worker holds open at a time (idle keep-alive ones included)",
        apply: |c, v| {
            c.worker_connections = usize_in(v, 1, usize::MAX)?;
            Ok(())
        },
        show: |c| c.worker_connections.to_string(),
    },
    // ---- elastic capacity (ferricorn only) ----
    Setting {
        name: "max_threads",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--max-threads"],
        hidden_aliases: &[],
        meta: "INT",
        default: "auto: 4 x --threads (--worker-connections for gevent/eventlet)",
        help: "Most threads a gthread worker grows to while requests wait and its busy threads wait on I/O rather than compute; idle ones retire after --elastic-idle-timeout. Equal to --threads: a fixed pool",
        apply: |c, v| {
            c.max_threads = match v {
                SettingValue::None => None,
                SettingValue::Str(s) if s.trim().eq_ignore_ascii_case("auto") => None,
                v => Some(usize_in(v, 1, 65536)?),
            };
            Ok(())
        },
        show: |c| c.max_threads.map_or("auto".to_string(), |n| n.to_string()),
    },
    Setting {
        name: "max_workers",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--max-workers"],
        hidden_aliases: &[],
        meta: "INT",
        default: "0 (off)",
        help: "Most workers the master runs: it adds one while every thread is busy and connections wait, and retires the extra ones after --elastic-idle-timeout without starvation; 0 = a fixed --workers",
        apply: |c, v| {
            c.max_workers = usize_in(v, 0, 65536)?;
            Ok(())
        },
        show: |c| c.max_workers.to_string(),
    },
    Setting {
        name: "elastic_idle_timeout",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--elastic-idle-timeout"],
        hidden_aliases: &[],
        meta: "SECONDS",
        default: "30",
        help: "Seconds a thread or worker added beyond --threads/--workers must have been unneeded before it is retired",
        apply: |c, v| {
            c.elastic_idle_timeout = int(v, 1, 86400)? as u64;
            Ok(())
        },
        show: |c| c.elastic_idle_timeout.to_string(),
    },
    // ---- the ASGI worker (`-k asgi`) ----
    Setting {
        name: "asgi_loop",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--asgi-loop"],
        hidden_aliases: &[],
        meta: "STRING",
        default: "auto",
        help: "Event loop of the asgi worker: auto (uvloop when installed), asyncio or uvloop",
        apply: |c, v| {
            c.asgi_loop = choice(v, ASGI_LOOPS)?;
            Ok(())
        },
        show: |c| c.asgi_loop.clone(),
    },
    Setting {
        name: "asgi_lifespan",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--asgi-lifespan"],
        hidden_aliases: &[],
        meta: "STRING",
        default: "auto",
        help: "ASGI lifespan events: auto (if the app supports them), on (the app must), off",
        apply: |c, v| {
            c.asgi_lifespan = choice(v, ASGI_LIFESPAN_MODES)?;
            Ok(())
        },
        show: |c| c.asgi_lifespan.clone(),
    },
    Setting {
        name: "asgi_disconnect_grace_period",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--asgi-disconnect-grace-period"],
        hidden_aliases: &[],
        meta: "SECONDS",
        default: "3",
        help: "When a client leaves before its response is complete, cancel the request's task if it still runs this many seconds later; 0 = at once",
        apply: |c, v| {
            c.asgi_disconnect_grace_period = seconds(v)?;
            Ok(())
        },
        show: |c| c.asgi_disconnect_grace_period.to_string(),
    },
    Setting {
        name: "websocket_max_message_size",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--websocket-max-message-size"],
        hidden_aliases: &["ws-max-size"],
        meta: "BYTES",
        default: "16777216",
        help: "Largest websocket message (and frame) the asgi worker takes; a larger one closes the session with 1009",
        apply: |c, v| {
            c.websocket_max_message_size = usize_in(v, 1, usize::MAX)?;
            Ok(())
        },
        show: |c| c.websocket_max_message_size.to_string(),
    },
    Setting {
        name: "ws_ping_interval",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--ws-ping-interval"],
        hidden_aliases: &[],
        meta: "SECONDS",
        default: "20",
        help: "Ping every websocket session this often (0 = never)",
        apply: |c, v| {
            c.ws_ping_interval = seconds(v)?;
            Ok(())
        },
        show: |c| c.ws_ping_interval.to_string(),
    },
    Setting {
        name: "ws_ping_timeout",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--ws-ping-timeout"],
        hidden_aliases: &[],
        meta: "SECONDS",
        default: "20",
        help: "Close a websocket session (1011) whose client does not answer a ping within this long",
        apply: |c, v| {
            c.ws_ping_timeout = seconds(v)?;
            Ok(())
        },
        show: |c| c.ws_ping_timeout.to_string(),
    },
    Setting {
        name: "ws_per_message_deflate",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--ws-per-message-deflate"],
        hidden_aliases: &[],
        meta: "BOOL",
        default: "true",
        help: "Offer websocket clients permessage-deflate compression (RFC 7692): true or false",
        apply: |c, v| {
            c.ws_per_message_deflate = boolean(v)?;
            Ok(())
        },
        show: |c| c.ws_per_message_deflate.to_string(),
    },
    Setting {
        name: "root_path",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--root-path"],
        hidden_aliases: &[],
        meta: "STRING",
        default: "''",
        help: "The ASGI root_path: the prefix under which a proxy mounts the app",
        apply: |c, v| {
            c.root_path = opt_string(v)?.unwrap_or_default();
            Ok(())
        },
        show: |c| py_quote(&c.root_path),
    },
    Setting {
        name: "max_requests",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--max-requests"],
        hidden_aliases: &[],
        meta: "INT",
        default: "0 (never)",
        help: "Replace a worker after it has served this many requests; 0 never does",
        apply: |c, v| {
            c.max_requests = count(v)?;
            Ok(())
        },
        show: |c| c.max_requests.to_string(),
    },
    Setting {
        name: "max_requests_jitter",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--max-requests-jitter"],
        hidden_aliases: &[],
        meta: "INT",
        default: "0",
        help:
            "Add a random 0..N to each worker's --max-requests so they are not all replaced at once",
        apply: |c, v| {
            c.max_requests_jitter = count(v)?;
            Ok(())
        },
        show: |c| c.max_requests_jitter.to_string(),
    },
    Setting {
        name: "slow_request_threshold",
        section: Section::Diagnostics,
        kind: Kind::Value,
        cli: &["--slow-request-threshold"],
        hidden_aliases: &[],
        meta: "SECONDS",
        default: "0 (off)",
        help: "Log a warning with the Python stack of any request still running after this long; it continues",
        apply: |c, v| {
            c.slow_request_threshold = seconds(v)?;
            Ok(())
        },
        show: |c| c.slow_request_threshold.to_string(),
    },
    Setting {
        name: "asgi_block_threshold",
        section: Section::Diagnostics,
        kind: Kind::Value,
        cli: &["--asgi-block-threshold"],
        hidden_aliases: &[],
        meta: "SECONDS",
        default: "1",
        help: "Warn, with the loop thread's Python stack, when an asgi worker's event loop has not come back for this long (a blocking call in an async view); 0 = off",
        apply: |c, v| {
            c.asgi_block_threshold = seconds(v)?;
            Ok(())
        },
        show: |c| c.asgi_block_threshold.to_string(),
    },
    Setting {
        name: "max_worker_memory",
        section: Section::Diagnostics,
        kind: Kind::Value,
        cli: &["--max-worker-memory"],
        hidden_aliases: &[],
        meta: "MiB",
        default: "0 (off)",
        help: "Recycle a worker gracefully, after its current requests, once its RSS passes this many MiB",
        apply: |c, v| {
            c.max_worker_memory = count(v)?;
            Ok(())
        },
        show: |c| c.max_worker_memory.to_string(),
    },
    Setting {
        name: "timeout",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["-t", "--timeout"],
        hidden_aliases: &[],
        meta: "INT",
        default: "30",
        help: "Seconds a request may run in Python: then it is answered 504, logged with its stack, and its worker replaced; 0 turns this off",
        apply: |c, v| {
            c.timeout = seconds(v)?;
            Ok(())
        },
        show: |c| c.timeout.to_string(),
    },
    Setting {
        name: "graceful_timeout",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--graceful-timeout"],
        hidden_aliases: &[],
        meta: "INT",
        default: "30",
        help: "Seconds workers get to finish their requests on a graceful stop or restart",
        apply: |c, v| {
            c.graceful_timeout = seconds(v)?;
            Ok(())
        },
        show: |c| c.graceful_timeout.to_string(),
    },
    Setting {
        name: "keepalive",
        section: Section::WorkerProcesses,
        kind: Kind::Value,
        cli: &["--keep-alive"],
        hidden_aliases: &[],
        meta: "INT",
        default: "2",
        help: "Seconds an idle keep-alive connection waits for its next request",
        apply: |c, v| {
            c.keepalive = seconds(v)?;
            Ok(())
        },
        show: |c| c.keepalive.to_string(),
    },
    // ---- Security ----
    Setting {
        name: "limit_request_line",
        section: Section::Security,
        kind: Kind::Value,
        cli: &["--limit-request-line"],
        hidden_aliases: &[],
        meta: "INT",
        default: "4094",
        help: "Longest request line accepted, in bytes (0 means no limit; above 8190, 8190 is used)",
        apply: |c, v| {
            // Kept as given, as gunicorn keeps it: the parser uses the ceiling, and startup says so
            // (`limits_above_maximum`).
            c.limit_request_line = usize_in(v, 0, usize::MAX)?;
            Ok(())
        },
        show: |c| c.limit_request_line.to_string(),
    },
    Setting {
        name: "limit_request_fields",
        section: Section::Security,
        kind: Kind::Value,
        cli: &["--limit-request-fields"],
        hidden_aliases: &[],
        meta: "INT",
        default: "100",
        help: "Most header fields accepted in one request (0 or above 32768 means 32768)",
        apply: |c, v| {
            // gunicorn treats 0 as its ceiling; storing the ceiling spares the parser a special case.
            // A value above it is kept as given, like the request line's.
            c.limit_request_fields = match usize_in(v, 0, usize::MAX)? {
                0 => MAX_HEADERS,
                n => n,
            };
            Ok(())
        },
        show: |c| c.limit_request_fields.to_string(),
    },
    Setting {
        name: "limit_request_field_size",
        section: Section::Security,
        kind: Kind::Value,
        cli: &["--limit-request-field_size"],
        hidden_aliases: &["limit-request-field-size"],
        meta: "INT",
        default: "8190",
        help: "Longest header field accepted, in bytes (0 means the default, 8190, as in gunicorn)",
        apply: |c, v| {
            c.limit_request_field_size = usize_in(v, 0, usize::MAX)?;
            Ok(())
        },
        show: |c| c.limit_request_field_size.to_string(),
    },
    Setting {
        name: "permit_missing_host",
        section: Section::Security,
        kind: Kind::Switch,
        cli: &["--permit-missing-host"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Accept HTTP/1.1 requests without a Host header instead of answering 400",
        apply: |c, v| {
            c.permit_missing_host = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.permit_missing_host),
    },
    Setting {
        name: "permit_obsolete_folding",
        section: Section::Security,
        kind: Kind::Switch,
        cli: &["--permit-obsolete-folding"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Accept header lines continued with leading whitespace (obs-fold) instead of answering 400",
        apply: |c, v| {
            c.permit_obsolete_folding = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.permit_obsolete_folding),
    },
    Setting {
        name: "strip_header_spaces",
        section: Section::Security,
        kind: Kind::Switch,
        cli: &["--strip-header-spaces"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Accept spaces between a header name and its colon (unsafe behind proxies)",
        apply: |c, v| {
            c.strip_header_spaces = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.strip_header_spaces),
    },
    Setting {
        name: "permit_unconventional_http_method",
        section: Section::Security,
        kind: Kind::Switch,
        cli: &["--permit-unconventional-http-method"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Accept any token as method, not only 3 to 20 upper-case characters",
        apply: |c, v| {
            c.permit_unconventional_http_method = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.permit_unconventional_http_method),
    },
    Setting {
        name: "permit_unconventional_http_version",
        section: Section::Security,
        kind: Kind::Switch,
        cli: &["--permit-unconventional-http-version"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Accept HTTP/0.x and HTTP/2+ request lines instead of answering 400",
        apply: |c, v| {
            c.permit_unconventional_http_version = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.permit_unconventional_http_version),
    },
    Setting {
        name: "casefold_http_method",
        section: Section::Security,
        kind: Kind::Switch,
        cli: &["--casefold-http-method"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Upper-case the request method before the application sees it",
        apply: |c, v| {
            c.casefold_http_method = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.casefold_http_method),
    },
    Setting {
        name: "header_map",
        section: Section::Security,
        kind: Kind::Value,
        cli: &["--header-map"],
        hidden_aliases: &[],
        meta: "STRING",
        default: "drop",
        help: "Header names with _: drop them, refuse the request (400), or pass them on (dangerous)",
        apply: |c, v| {
            let mode = string(v)?.to_ascii_lowercase();
            if !HEADER_MAP_MODES.contains(&mode.as_str()) {
                return Err(ValueError::InvalidChoice {
                    value: mode,
                    choices: HEADER_MAP_MODES,
                });
            }
            c.header_map = mode;
            Ok(())
        },
        show: |c| c.header_map.clone(),
    },
    // ---- Server Mechanics ----
    Setting {
        name: "preload_app",
        section: Section::ServerMechanics,
        kind: Kind::Switch,
        cli: &["--preload"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Import the application in the master, before the workers are forked",
        apply: |c, v| {
            c.preload_app = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.preload_app),
    },
    Setting {
        name: "chdir",
        section: Section::ServerMechanics,
        kind: Kind::Value,
        cli: &["--chdir"],
        hidden_aliases: &[],
        meta: "DIR",
        default: "the current directory",
        help: "Change to this directory before the application is loaded",
        apply: |c, v| {
            c.chdir = match opt_string(v)? {
                None => None,
                Some(d) if std::path::Path::new(&d).is_dir() => Some(d.into()),
                Some(d) => return Err(ValueError::NotADirectory(d)),
            };
            Ok(())
        },
        show: |c| py_path(c.chdir.as_deref()),
    },
    Setting {
        name: "raw_env",
        section: Section::ServerMechanics,
        kind: Kind::Repeated,
        cli: &["-e", "--env"],
        hidden_aliases: &[],
        meta: "KEY=VALUE",
        default: "none",
        help: "Set an environment variable for the application; repeat for more",
        apply: |c, v| {
            c.raw_env = strings(v)?
                .iter()
                .map(|s| key_value(s))
                .collect::<Result<_, _>>()?;
            Ok(())
        },
        show: |c| py_list(c.raw_env.iter().map(|(k, v)| format!("{k}={v}"))),
    },
    Setting {
        name: "pidfile",
        section: Section::ServerMechanics,
        kind: Kind::Value,
        cli: &["-p", "--pid"],
        hidden_aliases: &[],
        meta: "FILE",
        default: "none",
        help: "Write the master's process id to this file",
        apply: |c, v| {
            c.pidfile = opt_string(v)?.map(Into::into);
            Ok(())
        },
        show: |c| py_path(c.pidfile.as_deref()),
    },
    Setting {
        name: "control_socket",
        section: Section::ServerMechanics,
        kind: Kind::Value,
        cli: &["--control-socket"],
        hidden_aliases: &[],
        meta: "PATH",
        default: "$XDG_RUNTIME_DIR/ferricorn.ctl, else ~/.ferricorn/ferricorn.ctl (ferricorn.PID.ctl beside it when another server holds it)",
        help: "Unix socket on which the master answers ferricornctl (workers, requests in flight, reload...)",
        apply: |c, v| {
            c.control_socket = opt_string(v)?.filter(|p| !p.is_empty());
            Ok(())
        },
        show: |c| match &c.control_socket {
            Some(p) => p.clone(),
            None => super::control_socket::default_socket_path_from_env()
                .display()
                .to_string(),
        },
    },
    Setting {
        name: "control_socket_mode",
        section: Section::ServerMechanics,
        kind: Kind::Value,
        cli: &["--control-socket-mode"],
        hidden_aliases: &[],
        meta: "INT",
        default: "0600 (the owner only)",
        help: "Permissions of the control socket file, in octal like chmod (0660 lets the group in)",
        apply: |c, v| {
            // As gunicorn: a leading 0 means octal ("0600"), besides Python's 0o/0x prefixes.
            let v = match v {
                SettingValue::Str(s) if is_legacy_octal(s.trim()) => {
                    SettingValue::Str(format!("0o{}", &s.trim()[1..]))
                }
                v => v,
            };
            c.control_socket_mode = int(v, 0, 0o777)? as u32;
            Ok(())
        },
        show: |c| c.control_socket_mode.to_string(),
    },
    Setting {
        name: "control_socket_disable",
        section: Section::ServerMechanics,
        kind: Kind::Switch,
        cli: &["--no-control-socket"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Do not open the control socket",
        apply: |c, v| {
            c.control_socket_disable = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.control_socket_disable),
    },
    // ---- observability: statsd as gunicorn, the metrics listener, readiness on a graceful stop ----
    Setting {
        name: "statsd_host",
        section: Section::Logging,
        kind: Kind::Value,
        cli: &["--statsd-host"],
        hidden_aliases: &[],
        meta: "STATSD_ADDR",
        default: "None",
        help: "Send statsd metrics (gunicorn's names) to HOST:PORT over UDP, or to unix:PATH",
        apply: |c, v| {
            c.statsd_host = match opt_string(v)?.filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => Some(
                    super::observability::StatsdAddress::parse(&s).map_err(ValueError::Invalid)?,
                ),
            };
            Ok(())
        },
        show: |c| match &c.statsd_host {
            Some(a) => a.to_string(),
            None => "None".to_string(),
        },
    },
    Setting {
        name: "statsd_prefix",
        section: Section::Logging,
        kind: Kind::Value,
        cli: &["--statsd-prefix"],
        hidden_aliases: &[],
        meta: "STATSD_PREFIX",
        default: "''",
        help: "Prefix of every statsd metric name (a trailing dot is added)",
        apply: |c, v| {
            let p = opt_string(v)?.unwrap_or_default();
            // As gunicorn: the prefix ends with exactly one dot, whatever it ended with.
            let trimmed = p.trim_end_matches('.');
            c.statsd_prefix = if trimmed.is_empty() {
                p
            } else {
                format!("{trimmed}.")
            };
            Ok(())
        },
        show: |c| c.statsd_prefix.clone(),
    },
    Setting {
        name: "dogstatsd_tags",
        section: Section::Logging,
        kind: Kind::Value,
        cli: &["--dogstatsd-tags"],
        hidden_aliases: &[],
        meta: "DOGSTATSD_TAGS",
        default: "''",
        help: "Datadog tags for every statsd metric, comma-separated (env:prod,app:web)",
        apply: |c, v| {
            c.dogstatsd_tags = super::observability::check_dogstatsd_tags(
                &opt_string(v)?.unwrap_or_default(),
            )
            .map_err(ValueError::Invalid)?;
            Ok(())
        },
        show: |c| c.dogstatsd_tags.clone(),
    },
    Setting {
        name: "enable_backlog_metric",
        section: Section::Logging,
        kind: Kind::Switch,
        cli: &["--enable-backlog-metric"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Send the listen backlog as the statsd metric gunicorn.backlog every second",
        apply: |c, v| {
            c.enable_backlog_metric = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.enable_backlog_metric),
    },
    Setting {
        name: "metrics_bind",
        section: Section::Diagnostics,
        kind: Kind::Value,
        cli: &["--metrics-bind"],
        hidden_aliases: &[],
        meta: "ADDRESS",
        default: "None (off)",
        help: "Serve Prometheus metrics (/metrics), /healthz and /readyz from the master on this address (HOST:PORT or unix:PATH), never the app's",
        apply: |c, v| {
            c.metrics_bind = match opt_string(v)?.filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => Some(
                    super::observability::parse_metrics_bind(&s).map_err(ValueError::Invalid)?,
                ),
            };
            Ok(())
        },
        show: |c| match &c.metrics_bind {
            Some(a) => a.spec(),
            None => "None".to_string(),
        },
    },
    Setting {
        name: "shutdown_delay",
        section: Section::Diagnostics,
        kind: Kind::Value,
        cli: &["--shutdown-delay"],
        hidden_aliases: &[],
        meta: "SECONDS",
        default: "0",
        help: "On a graceful stop (TERM), answer /readyz with 503 and keep serving this long before the listeners close, so a load balancer stops sending first",
        apply: |c, v| {
            c.shutdown_delay = seconds(v)?;
            Ok(())
        },
        show: |c| c.shutdown_delay.to_string(),
    },
    Setting {
        name: "pythonpath",
        section: Section::ServerMechanics,
        kind: Kind::Value,
        cli: &["--pythonpath"],
        hidden_aliases: &[],
        meta: "DIRS",
        default: "none",
        help: "Comma-separated directories put first on the Python module search path",
        apply: |c, v| {
            c.pythonpath = comma_list(v)?;
            Ok(())
        },
        show: |c| {
            if c.pythonpath.is_empty() {
                "None".to_string()
            } else {
                c.pythonpath.join(",")
            }
        },
    },
    Setting {
        name: "forwarded_allow_ips",
        section: Section::ServerMechanics,
        kind: Kind::Value,
        cli: &["--forwarded-allow-ips"],
        hidden_aliases: &[],
        meta: "STRING",
        default: "$FORWARDED_ALLOW_IPS, else 127.0.0.1,::1",
        help:
            "Comma-separated proxy addresses whose X-Forwarded-* headers are trusted; * trusts all",
        apply: |c, v| {
            c.forwarded_allow_ips = ip_list(v)?;
            Ok(())
        },
        show: |c| py_list(c.forwarded_allow_ips.iter().cloned()),
    },
    Setting {
        name: "secure_scheme_headers",
        section: Section::ServerMechanics,
        kind: Kind::FileOnly,
        cli: &[],
        hidden_aliases: &[],
        meta: "DICT",
        default: "X-FORWARDED-PROTOCOL=ssl, X-FORWARDED-PROTO=https, X-FORWARDED-SSL=on",
        help: "Headers (and values) from a trusted proxy that mark a request as HTTPS",
        apply: |c, v| {
            c.secure_scheme_headers = header_map(v)?;
            Ok(())
        },
        show: |c| {
            let items: Vec<String> = c
                .secure_scheme_headers
                .iter()
                .map(|(k, v)| format!("{}: {}", py_quote(k), py_quote(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        },
    },
    Setting {
        name: "proxy_protocol",
        section: Section::ServerMechanics,
        kind: Kind::OptionalValue,
        cli: &["--proxy-protocol"],
        hidden_aliases: &[],
        meta: "MODE",
        default: "off",
        help: "Read a PROXY protocol header (from a load balancer) before the first request: off, v1, v2 or auto (either; the bare flag)",
        apply: |c, v| {
            c.proxy_protocol = proxy_protocol(v)?;
            Ok(())
        },
        show: |c| c.proxy_protocol.clone(),
    },
    Setting {
        name: "proxy_allow_ips",
        section: Section::ServerMechanics,
        kind: Kind::Value,
        cli: &["--proxy-allow-from"],
        hidden_aliases: &[],
        meta: "STRING",
        default: "127.0.0.1,::1",
        help: "Comma-separated addresses or networks (10.0.0.0/8) that may send a PROXY protocol header; * allows all",
        apply: |c, v| {
            c.proxy_allow_ips = network_list(v)?;
            Ok(())
        },
        show: |c| py_list(c.proxy_allow_ips.iter().cloned()),
    },
    Setting {
        name: "certfile",
        section: Section::Ssl,
        kind: Kind::Value,
        cli: &["--certfile"],
        hidden_aliases: &[],
        meta: "FILE",
        default: "none",
        help: "Serve HTTPS with this certificate chain (PEM; the server's certificate first); the key may be in it too",
        apply: |c, v| {
            c.certfile = opt_string(v)?.map(Into::into);
            Ok(())
        },
        show: |c| py_path(c.certfile.as_deref()),
    },
    Setting {
        name: "keyfile",
        section: Section::Ssl,
        kind: Kind::Value,
        cli: &["--keyfile"],
        hidden_aliases: &[],
        meta: "FILE",
        default: "none",
        help: "The certificate's private key (PEM: PKCS#8, RSA or EC; encrypted PKCS#8 with --keyfile-password)",
        apply: |c, v| {
            c.keyfile = opt_string(v)?.map(Into::into);
            Ok(())
        },
        show: |c| py_path(c.keyfile.as_deref()),
    },
    Setting {
        name: "keyfile_password",
        section: Section::Ssl,
        kind: Kind::Value,
        cli: &["--keyfile-password"],
        hidden_aliases: &["ssl-keyfile-password"],
        meta: "PASSWORD",
        default: "none",
        help: "Password of an encrypted --keyfile (better set in a config file than on the command line)",
        apply: |c, v| {
            // Not trimmed: a password may end in a space.
            c.keyfile_password = match v {
                SettingValue::None => None,
                SettingValue::Str(s) => Some(s),
                other => {
                    return Err(ValueError::WrongType {
                        expected: "a string",
                        got: other.type_name(),
                    })
                }
            };
            Ok(())
        },
        show: |c| {
            if c.keyfile_password.is_some() {
                "'********'".to_string()
            } else {
                "None".to_string()
            }
        },
    },
    Setting {
        name: "ca_certs",
        section: Section::Ssl,
        kind: Kind::Value,
        cli: &["--ca-certs"],
        hidden_aliases: &[],
        meta: "FILE",
        default: "none",
        help: "CA certificates (PEM) that client certificates are checked against (with --cert-reqs 1 or 2)",
        apply: |c, v| {
            c.ca_certs = opt_string(v)?.map(Into::into);
            Ok(())
        },
        show: |c| py_path(c.ca_certs.as_deref()),
    },
    Setting {
        name: "cert_reqs",
        section: Section::Ssl,
        kind: Kind::Value,
        cli: &["--cert-reqs"],
        hidden_aliases: &[],
        meta: "INT",
        default: "0",
        help: "Client certificates: 0 not asked for, 1 optional (checked when sent), 2 required",
        apply: |c, v| {
            c.cert_reqs = int(v, 0, 2)? as u8;
            Ok(())
        },
        show: |c| c.cert_reqs.to_string(),
    },
    Setting {
        name: "ssl_version",
        section: Section::Ssl,
        kind: Kind::Value,
        cli: &["--ssl-version"],
        hidden_aliases: &[],
        meta: "VERSION",
        default: "TLS",
        help: "Lowest TLS version served: TLS (or TLSv1_2, SSLv23, TLS_SERVER) for 1.2 and 1.3, TLSv1_3 for 1.3 only",
        apply: |c, v| {
            let s = match v {
                SettingValue::Int(n) => n.to_string(),
                v => string(v)?,
            };
            super::tls::min_version(&s).map_err(ValueError::Invalid)?;
            c.ssl_version = s;
            Ok(())
        },
        show: |c| c.ssl_version.clone(),
    },
    Setting {
        name: "ciphers",
        section: Section::Ssl,
        kind: Kind::Value,
        cli: &["--ciphers"],
        hidden_aliases: &[],
        meta: "CIPHERS",
        default: "none",
        help: "OpenSSL cipher string (ECDHE+AESGCM:ECDHE+CHACHA20); a suite the server does not offer is refused by name",
        apply: |c, v| {
            let spec = opt_string(v)?;
            if let Some(spec) = &spec {
                super::tls::cipher_suites(spec).map_err(ValueError::Invalid)?;
            }
            c.ciphers = spec;
            Ok(())
        },
        show: |c| py_opt(c.ciphers.as_deref()),
    },
    Setting {
        name: "http_protocols",
        section: Section::Http2,
        kind: Kind::Value,
        cli: &["--http-protocols"],
        hidden_aliases: &[],
        meta: "STRING",
        default: "h1",
        help: "HTTP versions served, in order of preference (h1, h2; e.g. h2,h1): over TLS the ALPN offer, in cleartext see --http2-cleartext",
        apply: |c, v| {
            c.http_protocols = http_protocols(v)?;
            Ok(())
        },
        show: |c| py_list(c.http_protocols.iter().cloned()),
    },
    Setting {
        name: "http2_cleartext",
        section: Section::Http2,
        kind: Kind::Value,
        cli: &["--http2-cleartext"],
        hidden_aliases: &[],
        meta: "STRING",
        default: "off",
        help: "HTTP/2 without TLS (h2c) from peers in --forwarded-allow-ips: off, prior-knowledge (the connection opens with the HTTP/2 preface), upgrade, both; needs h2 in --http-protocols",
        apply: |c, v| {
            c.http2_cleartext = http2_cleartext(v)?;
            Ok(())
        },
        show: |c| c.http2_cleartext.clone(),
    },
    Setting {
        name: "http2_max_concurrent_streams",
        section: Section::Http2,
        kind: Kind::Value,
        cli: &["--http2-max-concurrent-streams"],
        hidden_aliases: &[],
        meta: "INT",
        default: "100",
        help: "Streams (requests) one HTTP/2 connection may have open at once",
        apply: |c, v| {
            c.http2_max_concurrent_streams = h2_u32(v, 0, HTTP2_MAX_WINDOW)?;
            Ok(())
        },
        show: |c| c.http2_max_concurrent_streams.to_string(),
    },
    Setting {
        name: "http2_initial_window_size",
        section: Section::Http2,
        kind: Kind::Value,
        cli: &["--http2-initial-window-size"],
        hidden_aliases: &[],
        meta: "INT",
        default: "65535",
        help: "Request body bytes a client may send on one HTTP/2 stream before the app reads them (flow-control window; at most 2147483647)",
        apply: |c, v| {
            c.http2_initial_window_size = h2_u32(v, 0, HTTP2_MAX_WINDOW)?;
            Ok(())
        },
        show: |c| c.http2_initial_window_size.to_string(),
    },
    Setting {
        name: "http2_max_frame_size",
        section: Section::Http2,
        kind: Kind::Value,
        cli: &["--http2-max-frame-size"],
        hidden_aliases: &[],
        meta: "INT",
        default: "16384",
        help: "Largest HTTP/2 frame payload the server accepts (16384 to 16777215)",
        apply: |c, v| {
            c.http2_max_frame_size = h2_u32(v, HTTP2_FRAME_SIZES.0, HTTP2_FRAME_SIZES.1)?;
            Ok(())
        },
        show: |c| c.http2_max_frame_size.to_string(),
    },
    Setting {
        name: "http2_max_header_list_size",
        section: Section::Http2,
        kind: Kind::Value,
        cli: &["--http2-max-header-list-size"],
        hidden_aliases: &[],
        meta: "INT",
        default: "65536",
        help: "Largest HTTP/2 request header list, decompressed, in bytes (0 = no limit, not recommended); a larger one is refused with 431",
        apply: |c, v| {
            c.http2_max_header_list_size = h2_u32(v, 0, i64::from(u32::MAX))?;
            Ok(())
        },
        show: |c| c.http2_max_header_list_size.to_string(),
    },
    Setting {
        name: "do_handshake_on_connect",
        section: Section::Ssl,
        kind: Kind::Switch,
        cli: &["--do-handshake-on-connect"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Accepted for gunicorn: the TLS handshake always runs on the I/O thread right after accept, never in a Python thread",
        apply: |c, v| {
            c.do_handshake_on_connect = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.do_handshake_on_connect),
    },
    Setting {
        name: "suppress_ragged_eofs",
        section: Section::Ssl,
        kind: Kind::Switch,
        cli: &["--suppress-ragged-eofs"],
        hidden_aliases: &[],
        meta: "",
        default: "on",
        help: "A client that closes without TLS close_notify has simply closed (the default; a config file's False treats it as a broken connection)",
        apply: |c, v| {
            c.suppress_ragged_eofs = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.suppress_ragged_eofs),
    },
    Setting {
        name: "daemon",
        section: Section::ServerMechanics,
        kind: Kind::Switch,
        cli: &["-D", "--daemon"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Detach from the terminal and run in the background (pair with --pid and --error-logfile)",
        apply: |c, v| {
            c.daemon = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.daemon),
    },
    Setting {
        name: "user",
        section: Section::ServerMechanics,
        kind: Kind::Value,
        cli: &["-u", "--user"],
        hidden_aliases: &[],
        meta: "USER",
        default: "the current user",
        help: "Run the workers as this user (a name or a numeric id); the master keeps its own",
        apply: |c, v| {
            c.uid = id_value(v, super::ids::lookup_user)?;
            Ok(())
        },
        show: |c| {
            c.uid
                .unwrap_or_else(|| nix::unistd::geteuid().as_raw())
                .to_string()
        },
    },
    Setting {
        name: "group",
        section: Section::ServerMechanics,
        kind: Kind::Value,
        cli: &["-g", "--group"],
        hidden_aliases: &[],
        meta: "GROUP",
        default: "the current group, or the --user's own group",
        help: "Run the workers in this group (a name or a numeric id)",
        apply: |c, v| {
            c.gid = id_value(v, super::ids::lookup_group)?;
            Ok(())
        },
        show: |c| {
            c.gid
                .unwrap_or_else(|| nix::unistd::getegid().as_raw())
                .to_string()
        },
    },
    Setting {
        name: "umask",
        section: Section::ServerMechanics,
        kind: Kind::Value,
        cli: &["-m", "--umask"],
        hidden_aliases: &[],
        meta: "INT",
        default: "0",
        help: "File mode mask for the unix socket files ferricorn creates (octal: 007, 0o27)",
        apply: |c, v| {
            c.umask = umask_value(v)?;
            Ok(())
        },
        show: |c| c.umask.to_string(),
    },
    Setting {
        name: "initgroups",
        section: Section::ServerMechanics,
        kind: Kind::Switch,
        cli: &["--initgroups"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Give the workers every group of the --user as supplementary groups",
        apply: |c, v| {
            c.initgroups = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.initgroups),
    },
    Setting {
        name: "sendfile",
        section: Section::ServerMechanics,
        kind: Kind::SwitchOff,
        cli: &["--no-sendfile"],
        hidden_aliases: &[],
        meta: "",
        default: "on",
        help: "Do not send wsgi.file_wrapper bodies with sendfile(2): read them through the file object in Python, like any other body",
        apply: |c, v| {
            c.sendfile = match v {
                SettingValue::None => None,
                v => Some(boolean(v)?),
            };
            Ok(())
        },
        show: |c| c.sendfile.map_or_else(|| "None".to_string(), py_bool),
    },
    Setting {
        name: "static_map",
        section: Section::ServerMechanics,
        kind: Kind::Repeated,
        cli: &["--static-map"],
        hidden_aliases: &[],
        meta: "PREFIX=DIR",
        default: "none",
        help: "Serve the files under DIR at URL prefix PREFIX from the I/O thread, without Python (repeat for more; in a config file also a dict such as {STATIC_URL: STATIC_ROOT})",
        apply: |c, v| {
            c.static_map = static_mounts(v)?;
            Ok(())
        },
        show: |c| {
            py_list(
                c.static_map
                    .iter()
                    .map(|m| format!("{}={}", m.prefix, m.root.display())),
            )
        },
    },
    Setting {
        name: "reuse_port",
        section: Section::ServerMechanics,
        kind: Kind::Switch,
        cli: &["--reuse-port"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Set SO_REUSEPORT on the listening sockets, so other servers may bind the same port",
        apply: |c, v| {
            c.reuse_port = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.reuse_port),
    },
    Setting {
        name: "worker_tmp_dir",
        section: Section::ServerMechanics,
        kind: Kind::Value,
        cli: &["--worker-tmp-dir"],
        hidden_aliases: &[],
        meta: "DIR",
        default: "none",
        help: "Accepted for gunicorn: ferricorn's worker heartbeat is shared memory, not a file here",
        apply: |c, v| {
            c.worker_tmp_dir = match opt_string(v)? {
                None => None,
                Some(d) if std::path::Path::new(&d).is_dir() => Some(d.into()),
                Some(d) => {
                    return Err(ValueError::Invalid(format!("'{d}' is not a directory")));
                }
            };
            Ok(())
        },
        show: |c| py_path(c.worker_tmp_dir.as_deref()),
    },
    // ---- Logging ----
    Setting {
        name: "accesslog",
        section: Section::Logging,
        kind: Kind::Value,
        cli: &["--access-logfile"],
        hidden_aliases: &[],
        meta: "FILE",
        default: "none (no access log)",
        help: "Write the access log to this file; - means standard output",
        apply: |c, v| {
            c.accesslog = opt_string(v)?;
            Ok(())
        },
        show: |c| py_opt(c.accesslog.as_deref()),
    },
    Setting {
        name: "access_log_format",
        section: Section::Logging,
        kind: Kind::Value,
        cli: &["--access-logformat"],
        hidden_aliases: &[],
        meta: "STRING",
        default: DEFAULT_ACCESS_LOG_FORMAT,
        help: "Layout of an access log line, written with %(x)s atoms as in gunicorn",
        apply: |c, v| {
            c.access_log_format = string(v)?;
            Ok(())
        },
        show: |c| c.access_log_format.clone(),
    },
    Setting {
        name: "errorlog",
        section: Section::Logging,
        kind: Kind::Value,
        cli: &["--error-logfile", "--log-file"],
        hidden_aliases: &[],
        meta: "FILE",
        default: "- (standard error)",
        help: "Write the error log to this file; - means standard error",
        apply: |c, v| {
            c.errorlog = string(v)?;
            Ok(())
        },
        show: |c| c.errorlog.clone(),
    },
    Setting {
        name: "capture_output",
        section: Section::Logging,
        kind: Kind::Switch,
        cli: &["--capture-output"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "Send stdout and stderr of every process (print() in the app) to the --error-logfile file",
        apply: |c, v| {
            c.capture_output = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.capture_output),
    },
    Setting {
        name: "enable_stdio_inheritance",
        section: Section::Logging,
        kind: Kind::Switch,
        cli: &["-R", "--enable-stdio-inheritance"],
        hidden_aliases: &[],
        meta: "",
        default: "off",
        help: "With --daemon, keep stdout and stderr (unless they are a terminal) instead of /dev/null",
        apply: |c, v| {
            c.enable_stdio_inheritance = boolean(v)?;
            Ok(())
        },
        show: |c| py_bool(c.enable_stdio_inheritance),
    },
    Setting {
        name: "loglevel",
        section: Section::Logging,
        kind: Kind::Value,
        cli: &["--log-level"],
        hidden_aliases: &[],
        meta: "LEVEL",
        default: "info",
        help: "Least severe message the error log keeps: debug, info, warning, error or critical",
        apply: |c, v| {
            let level = string(v)?.to_ascii_lowercase();
            if !LOG_LEVELS.contains(&level.as_str()) {
                return Err(ValueError::InvalidChoice {
                    value: level,
                    choices: LOG_LEVELS,
                });
            }
            c.loglevel = level;
            Ok(())
        },
        show: |c| c.loglevel.clone(),
    },
    // ---- Process Naming ----
    Setting {
        name: "proc_name",
        section: Section::ProcessNaming,
        kind: Kind::Value,
        cli: &["-n", "--name"],
        hidden_aliases: &[],
        meta: "STRING",
        default: "none",
        help: "Name shown for the server's processes by ps and top",
        apply: |c, v| {
            c.proc_name = opt_string(v)?;
            Ok(())
        },
        show: |c| py_opt(c.proc_name.as_deref()),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_flags_are_unique() {
        let mut names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SETTINGS.len());
        let mut flags: Vec<&str> = SETTINGS
            .iter()
            .flat_map(|s| s.cli.iter().copied())
            .collect();
        flags.sort_unstable();
        let n = flags.len();
        flags.dedup();
        assert_eq!(flags.len(), n);
    }

    #[test]
    fn table_is_well_formed() {
        for s in SETTINGS {
            assert!(!s.help.is_empty() && !s.help.contains('\n'), "{}", s.name);
            assert!(!s.default.is_empty(), "{}", s.name);
            match s.kind {
                Kind::Positional | Kind::FileOnly => assert!(s.cli.is_empty(), "{}", s.name),
                _ => {
                    assert!(s.cli.iter().any(|f| f.starts_with("--")), "{}", s.name);
                    for f in s.cli {
                        assert!(
                            f.starts_with("--") || (f.len() == 2 && f.starts_with('-')),
                            "{f}"
                        );
                    }
                }
            }
            if matches!(s.kind, Kind::Value | Kind::Repeated | Kind::Positional) {
                assert!(!s.meta.is_empty(), "{}", s.name);
            }
        }
    }

    #[test]
    fn ints() {
        assert_eq!(int("42".into(), 0, 100), Ok(42));
        assert_eq!(int(" 0x10 ".into(), 0, 100), Ok(16));
        assert_eq!(int("0o10".into(), 0, 100), Ok(8));
        assert_eq!(int("+7".into(), 0, 100), Ok(7));
        assert_eq!(int(SettingValue::Int(5), 0, 100), Ok(5));
        assert_eq!(
            int("abc".into(), 0, 100),
            Err(ValueError::InvalidInt("abc".into()))
        );
        assert_eq!(
            int("".into(), 0, 100),
            Err(ValueError::InvalidInt("".into()))
        );
        assert_eq!(
            int("1.5".into(), 0, 100),
            Err(ValueError::InvalidInt("1.5".into()))
        );
        assert!(matches!(
            int("-1".into(), 0, 100),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            int("99999999999999999999999999999999999999999".into(), 0, 100),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            int(SettingValue::Bool(true), 0, 100),
            Err(ValueError::WrongType { .. })
        ));
    }

    #[test]
    fn booleans() {
        for t in ["true", "True", " yes", "1", "on"] {
            assert_eq!(boolean(t.into()), Ok(true));
        }
        for f in ["false", "FALSE", "no", "0", "off"] {
            assert_eq!(boolean(f.into()), Ok(false));
        }
        assert_eq!(boolean(SettingValue::Bool(true)), Ok(true));
        assert!(boolean("maybe".into()).is_err());
    }

    #[test]
    fn worker_classes() {
        for s in [
            "sync",
            "egg:gunicorn#sync",
            "gunicorn.workers.sync.SyncWorker",
        ] {
            assert_eq!(parse_worker_class(s), Ok(WorkerClass::Sync));
        }
        for s in [
            "gthread",
            "egg:gunicorn#gthread",
            "gunicorn.workers.gthread.ThreadWorker",
        ] {
            assert_eq!(parse_worker_class(s), Ok(WorkerClass::Gthread));
        }
        for s in [
            "gevent",
            "eventlet",
            "egg:gunicorn#gevent",
            "gunicorn.workers.ggevent.GeventWorker",
            "gunicorn.workers.geventlet.EventletWorker",
        ] {
            assert_eq!(parse_worker_class(s), Ok(WorkerClass::Gthread));
            assert!(green_class(s).is_some());
        }
        assert_eq!(green_class("gthread"), None);
        for s in ["tornado", "gevent_pywsgi", "uvicorn.workers.Unknown"] {
            let e = parse_worker_class(s).unwrap_err().to_string();
            assert!(
                e.contains(&format!("worker class '{s}' is not supported")),
                "{e}"
            );
        }
    }

    #[test]
    fn apply_setting_by_name() {
        let mut c = Config::default();
        assert_eq!(apply_setting(&mut c, "workers", 4i64.into()), Ok(true));
        assert_eq!(c.workers, 4);
        assert_eq!(apply_setting(&mut c, "workers", "5".into()), Ok(true));
        assert_eq!(c.workers, 5);
        assert_eq!(
            apply_setting(&mut c, "no_such_thing", "x".into()),
            Ok(false)
        );
        let e = apply_setting(&mut c, "workers", 0i64.into()).unwrap_err();
        assert!(
            e.contains("'workers'") && e.contains("between 1 and"),
            "{e}"
        );
        let e = apply_setting(&mut c, "bind", "h:99999".into()).unwrap_err();
        assert!(e.contains("bind"), "{e}");

        assert_eq!(
            apply_setting(
                &mut c,
                "bind",
                SettingValue::List(vec!["unix:/a".into(), "[::1]:9".into()])
            ),
            Ok(true)
        );
        assert_eq!(
            c.binds,
            vec![
                BindAddress::Unix("/a".into()),
                BindAddress::Tcp {
                    host: "::1".into(),
                    port: 9
                }
            ]
        );
        assert_eq!(apply_setting(&mut c, "bind", "h".into()), Ok(true));
        assert_eq!(c.binds.len(), 1);

        assert_eq!(apply_setting(&mut c, "preload_app", true.into()), Ok(true));
        assert!(c.preload_app);
        assert_eq!(
            apply_setting(&mut c, "pidfile", SettingValue::None),
            Ok(true)
        );
        assert_eq!(c.pidfile, None);
        assert_eq!(apply_setting(&mut c, "accesslog", "-".into()), Ok(true));
        assert_eq!(c.accesslog.as_deref(), Some("-"));
        assert_eq!(
            apply_setting(&mut c, "accesslog", SettingValue::None),
            Ok(true)
        );
        assert_eq!(c.accesslog, None);
        assert!(apply_setting(&mut c, "threads", SettingValue::List(vec![])).is_err());

        assert_eq!(
            apply_setting(
                &mut c,
                "secure_scheme_headers",
                SettingValue::Map(vec![("x-forwarded-proto".into(), "https".into())])
            ),
            Ok(true)
        );
        assert_eq!(
            c.secure_scheme_headers,
            vec![("X-FORWARDED-PROTO".to_string(), "https".to_string())]
        );
        assert_eq!(
            apply_setting(&mut c, "raw_env", SettingValue::List(vec!["A=1".into()])),
            Ok(true)
        );
        assert_eq!(c.raw_env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(
            apply_setting(&mut c, "wsgi_app", "pkg.mod:app".into()),
            Ok(true)
        );
        assert_eq!(c.app_uri.as_deref(), Some("pkg.mod:app"));
    }

    #[test]
    fn control_socket_settings() {
        let mut c = Config::default();
        assert_eq!(c.control_socket_mode, 0o600);
        for (given, mode) in [("0660", 0o660), ("0o640", 0o640), ("384", 0o600)] {
            assert_eq!(
                apply_setting(&mut c, "control_socket_mode", given.into()),
                Ok(true)
            );
            assert_eq!(c.control_socket_mode, mode, "{given}");
        }
        assert!(apply_setting(&mut c, "control_socket_mode", "0999".into()).is_err());
        assert!(apply_setting(&mut c, "control_socket_mode", 0o1000i64.into()).is_err());
        assert_eq!(
            apply_setting(&mut c, "control_socket", "/run/x.ctl".into()),
            Ok(true)
        );
        assert_eq!(c.control_socket.as_deref(), Some("/run/x.ctl"));
        assert_eq!(
            apply_setting(&mut c, "control_socket_disable", true.into()),
            Ok(true)
        );
        assert!(c.control_socket_disable);
    }

    #[test]
    fn worker_class_follows_threads_in_either_order() {
        let mut c = Config::default();
        apply_setting(&mut c, "threads", 4i64.into()).unwrap();
        assert_eq!(c.worker_class, WorkerClass::Gthread);
        apply_setting(&mut c, "threads", 1i64.into()).unwrap();
        assert_eq!(c.worker_class, WorkerClass::Sync);
        apply_setting(&mut c, "worker_class", "gthread".into()).unwrap();
        assert_eq!(c.worker_class, WorkerClass::Gthread);
        apply_setting(&mut c, "worker_class", "sync".into()).unwrap();
        assert_eq!(c.worker_class, WorkerClass::Sync);
    }

    #[test]
    fn parser_relaxations() {
        let mut c = Config::default();
        assert_eq!(c.header_map, "drop");
        for name in [
            "permit_obsolete_folding",
            "strip_header_spaces",
            "permit_unconventional_http_method",
            "permit_unconventional_http_version",
            "casefold_http_method",
        ] {
            let s = find_setting(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!((s.show)(&c), "False", "{name}");
            assert_eq!(apply_setting(&mut c, name, true.into()), Ok(true));
            assert_eq!((s.show)(&c), "True", "{name}");
        }
        assert!(c.permit_obsolete_folding && c.strip_header_spaces && c.casefold_http_method);
        assert!(c.permit_unconventional_http_method && c.permit_unconventional_http_version);
        assert_eq!(
            apply_setting(&mut c, "header_map", "Refuse".into()),
            Ok(true)
        );
        assert_eq!(c.header_map, "refuse");
        let e = apply_setting(&mut c, "header_map", "keep".into()).unwrap_err();
        assert!(e.contains("choose from drop, refuse, dangerous"), "{e}");
        assert_eq!(c.header_map, "refuse");
    }

    #[test]
    fn forwarded_ips_are_canonical() {
        let mut c = Config::default();
        apply_setting(&mut c, "forwarded_allow_ips", " 10.0.0.1 , 0:0::1,".into()).unwrap();
        assert_eq!(c.forwarded_allow_ips, vec!["10.0.0.1", "::1"]);
        apply_setting(&mut c, "forwarded_allow_ips", "*".into()).unwrap();
        assert_eq!(c.forwarded_allow_ips, vec!["*"]);
        let e = apply_setting(&mut c, "forwarded_allow_ips", "10.0.0.0/8".into()).unwrap_err();
        assert!(e.contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn proxy_protocol_values() {
        let mut c = Config::default();
        let show = |c: &Config| (find_setting("proxy_protocol").unwrap().show)(c);
        assert_eq!(show(&c), "off");
        for (value, mode) in [
            (SettingValue::Bool(true), "auto"),
            (SettingValue::Bool(false), "off"),
            ("v1".into(), "v1"),
            (" AUTO ".into(), "auto"),
            ("none".into(), "off"),
            (SettingValue::None, "off"),
        ] {
            apply_setting(&mut c, "proxy_protocol", value.clone()).unwrap();
            assert_eq!(c.proxy_protocol, mode, "{value:?}");
        }
        let e = apply_setting(&mut c, "proxy_protocol", "yes".into()).unwrap_err();
        assert!(e.contains("choose from off, v1, v2, auto"), "{e}");
        assert!(apply_setting(&mut c, "proxy_protocol", SettingValue::Int(1)).is_err());

        apply_setting(&mut c, "proxy_allow_ips", " 10.0.0.0/8 , 0:0::1,".into()).unwrap();
        assert_eq!(c.proxy_allow_ips, vec!["10.0.0.0/8", "::1"]);
        assert_eq!(
            (find_setting("proxy_allow_ips").unwrap().show)(&c),
            "['10.0.0.0/8', '::1']"
        );
        apply_setting(
            &mut c,
            "proxy_allow_ips",
            SettingValue::List(vec!["*".into()]),
        )
        .unwrap();
        assert_eq!(c.proxy_allow_ips, vec!["*"]);
        for bad in ["10.0.0.1/8", "nope", "10.0.0.0/33"] {
            let e = apply_setting(&mut c, "proxy_allow_ips", bad.into()).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn py_quoting() {
        assert_eq!(py_quote("a"), "'a'");
        assert_eq!(py_quote("it's"), "\"it's\"");
        assert_eq!(py_quote(r#"'""#), r#"'\'"'"#);
        assert_eq!(
            py_list(vec!["a".to_string(), "b".to_string()]),
            "['a', 'b']"
        );
        assert_eq!(py_list(Vec::<String>::new()), "[]");
    }
}
