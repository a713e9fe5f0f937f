//! The database step of the worker-timeout runbook, for PostgreSQL: which queries run long, who blocks
//! whom, which sessions sit idle in a transaction — and which of ferricorn's requests in flight are
//! behind them. A finding reads "GET /lock-wait/ has waited 41 s on a row lock held by backend 812
//! (idle in transaction since 12:01:05, from GET /lock-hold/)".
//!
//! Three sources meet here:
//! - PostgreSQL, through `psql` (one query, answered as one JSON value): `pg_stat_activity` with
//!   `pg_blocking_pids()` for every client backend, and the locks being waited for (`pg_locks`).
//!   `psql` rather than a Rust client: it is on every machine that runs the runbook by hand, and it
//!   speaks every authentication method and reads `.pgpass`, service files and `PG*` variables as the
//!   operator has them set up, where a driver linked in would need its own TLS and SCRAM code.
//! - ferricorn's `show stacks`: each request in flight with its Python stack, and each worker's recently
//!   finished requests.
//! - the kernel: each worker's TCP connections (`/proc/<pid>/fd` and `/proc/<pid>/net/tcp`, through
//!   `system::tcp_table`). A backend belongs to the worker that holds the other end of its connection:
//!   `pg_stat_activity.client_addr`/`client_port` is the worker's local address.
//!
//! Within one worker, a backend running a query is tied to the request whose thread is inside the
//! database driver, when only one such request can have sent it (it started before the query did). A
//! transaction is tied to the request that was running in the worker when it began — in flight or
//! among the worker's recent ones — when there was exactly one. Anything less certain is said as such.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use super::findings::{Finding, Severity};
use super::logs::{self, Frame, WaitKind};
use crate::control::json::{obj, Json};
use crate::system::tcp_table::{self, TcpEntry};

/// Ages measured in two places are compared with this much leeway. They are put on one clock (see
/// [`workers_from_stacks`]), to the millisecond: "started before" allows for the rounding
/// ([`SLACK_SECS`]); "still running after" allows more ([`LATE_SECS`]), for a database host whose clock
/// is a little off, or for the fallback, whose ferricorn times come out a few milliseconds early.
const SLACK_SECS: f64 = 0.005;
const LATE_SECS: f64 = 0.03;
/// Query text shown per session.
const QUERY_CHARS: usize = 300;

/// How to reach the database: `psql`'s arguments and environment. The password never goes on the
/// command line (where `ps` shows it): it is passed in `PGPASSWORD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// What the report calls it: the URL without its password, or the Django settings it came from.
    pub display: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `postgresql://` (or `postgres://`) URL as psql takes it, with the password moved to
/// `PGPASSWORD` (from the user part or a `password=` parameter).
pub fn target_from_url(url: &str) -> Result<Target, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "--database-url must be a postgresql:// URL, got '{url}'"
        ));
    };
    if !matches!(scheme, "postgresql" | "postgres") {
        return Err(format!(
            "--database-url must be a postgresql:// URL, got a {scheme}:// one"
        ));
    }
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let mut password = None;
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, pass)) => {
                password = Some(percent_decode(pass));
                format!("{name}@{host}")
            }
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let mut kept = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("password", v)) => password = Some(percent_decode(v)),
            _ => kept.push(pair),
        }
    }
    let clean = format!(
        "{scheme}://{authority}{path}{}",
        if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        }
    );
    let mut env = Vec::new();
    if let Some(p) = password {
        env.push(("PGPASSWORD".to_string(), p));
    }
    Ok(Target {
        display: clean.clone(),
        args: vec!["-d".to_string(), clean],
        env,
    })
}

/// Django's `DATABASES["default"]` entry, as strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DjangoDb {
    pub settings_module: String,
    pub engine: String,
    pub name: String,
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: String,
    pub options: Vec<(String, String)>,
}

/// Connection options of Django's `OPTIONS` that have a libpq environment variable.
const OPTION_ENV: &[(&str, &str)] = &[
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("service", "PGSERVICE"),
    ("passfile", "PGPASSFILE"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
];

pub fn target_from_django(db: &DjangoDb) -> Result<Target, String> {
    if !db.engine.contains("postgresql") && !db.engine.contains("postgis") {
        return Err(format!(
            "DATABASES['default'] of {} uses {}, not PostgreSQL",
            db.settings_module,
            if db.engine.is_empty() {
                "no ENGINE"
            } else {
                &db.engine
            }
        ));
    }
    let mut env = Vec::new();
    for (var, value) in [
        ("PGHOST", &db.host),
        ("PGPORT", &db.port),
        ("PGUSER", &db.user),
        ("PGDATABASE", &db.name),
        ("PGPASSWORD", &db.password),
    ] {
        if !value.is_empty() {
            env.push((var.to_string(), value.clone()));
        }
    }
    for (k, v) in &db.options {
        if let Some((_, var)) = OPTION_ENV.iter().find(|(o, _)| o == k) {
            env.push((var.to_string(), v.clone()));
        }
    }
    let host = if db.host.is_empty() {
        "local socket".to_string()
    } else {
        db.host.clone()
    };
    let port = if db.port.is_empty() {
        String::new()
    } else {
        format!(":{}", db.port)
    };
    Ok(Target {
        display: format!(
            "Django settings {}: {}@{host}{port}/{}",
            db.settings_module, db.user, db.name
        ),
        args: Vec::new(),
        env,
    })
}

/// Read `DATABASES["default"]` by importing the settings module in this process, with the server's
/// environment (`env`: the master's own, then `raw_env`), working directory and `pythonpath` — as the
/// server's own import of the app would see them. Only the settings module is imported (no
/// `django.setup()`, no app loading); this process's environment is put back afterwards.
pub fn django_database(
    module: Option<&str>,
    raw_env: &[String],
    chdir: Option<&str>,
    pythonpath: &[String],
) -> Result<DjangoDb, String> {
    use pyo3::prelude::*;
    use pyo3::types::{PyDict, PyList};
    const CODE: &std::ffi::CStr = c"
import os, sys

def read(module, raw_env, chdir, pythonpath):
    saved = dict(os.environ)
    try:
        return _read(module, raw_env, chdir, pythonpath)
    finally:
        # The settings were computed at import; psql must not inherit the server's environment.
        os.environ.clear()
        os.environ.update(saved)

def _read(module, raw_env, chdir, pythonpath):
    for item in raw_env:
        key, sep, value = item.partition('=')
        if sep:
            os.environ[key] = value
    if module:
        os.environ['DJANGO_SETTINGS_MODULE'] = module
    module = os.environ.get('DJANGO_SETTINGS_MODULE', '')
    if not module:
        raise LookupError('no DJANGO_SETTINGS_MODULE: not in the server\\'s environment or raw_env, nor in this one; give --django-settings MODULE')
    for p in reversed([chdir] + list(pythonpath)):
        if p and p not in sys.path:
            sys.path.insert(0, p)
    try:
        from django.conf import settings
    except ImportError as e:
        raise LookupError('cannot import django: %s' % e)
    try:
        db = settings.DATABASES.get('default')
    except Exception as e:
        raise LookupError('cannot import the settings %s: %s: %s' % (module, type(e).__name__, e))
    if not db:
        raise LookupError('%s has no DATABASES[\"default\"]' % module)
    out = {k: '' if db.get(k) is None else str(db.get(k)) for k in ('ENGINE', 'NAME', 'USER', 'PASSWORD', 'HOST', 'PORT')}
    out['OPTIONS'] = [(str(k), str(v)) for k, v in (db.get('OPTIONS') or {}).items()]
    out['MODULE'] = module
    return out
";
    Python::attach(|py| -> Result<DjangoDb, String> {
        let m = PyModule::from_code(
            py,
            CODE,
            c"ferricorn_doctor_django.py",
            c"ferricorn_doctor_django",
        )
        .map_err(|e| e.to_string())?;
        let env = PyList::new(py, raw_env).map_err(|e| e.to_string())?;
        let paths = PyList::new(py, pythonpath).map_err(|e| e.to_string())?;
        let res = m
            .getattr("read")
            .and_then(|f| f.call1((module, env, chdir.unwrap_or(""), paths)))
            .map_err(|e| {
                let v = e.value(py);
                v.str()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| e.to_string())
            })?;
        let d = res.cast::<PyDict>().map_err(|e| e.to_string())?;
        let get = |k: &str| -> String {
            d.get_item(k)
                .ok()
                .flatten()
                .and_then(|v| v.extract::<String>().ok())
                .unwrap_or_default()
        };
        let options = d
            .get_item("OPTIONS")
            .ok()
            .flatten()
            .and_then(|v| v.extract::<Vec<(String, String)>>().ok())
            .unwrap_or_default();
        Ok(DjangoDb {
            settings_module: get("MODULE"),
            engine: get("ENGINE"),
            name: get("NAME"),
            user: get("USER"),
            password: get("PASSWORD"),
            host: get("HOST"),
            port: get("PORT"),
            options,
        })
    })
}

/// The environment of process `pid` as `KEY=VALUE` items (empty when it cannot be read: another
/// user's process).
pub fn process_environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|x| !x.is_empty())
                .map(|x| String::from_utf8_lossy(x).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `psql` on PATH, else the newest one of Debian's PostgreSQL packages.
pub fn find_psql() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("psql"))
        .find(|p| p.is_file())
        .or_else(|| {
            let mut found: Vec<PathBuf> = glob::glob("/usr/lib/postgresql/*/bin/psql")
                .ok()?
                .flatten()
                .collect();
            found.sort_by_key(|p| {
                p.components()
                    .nth(4)
                    .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
                    .unwrap_or(0)
            });
            found.pop()
        })
}

/// The one query: every other client backend with what blocks it, the locks waited for, and what the
/// role may see. Ages are taken against `clock_timestamp()`, so they are as of the moment of reading.
const QUERY: &str = "
SELECT json_build_object(
  'user', current_user,
  'superuser', (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
  'read_all_stats', pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'),
  'server_port', inet_server_port(),
  'now', extract(epoch FROM clock_timestamp()),
  'version', current_setting('server_version'),
  'sessions', COALESCE((
    SELECT json_agg(json_build_object(
      'pid', a.pid,
      'user', a.usename,
      'application', a.application_name,
      'database', a.datname,
      'client_addr', host(a.client_addr),
      'client_port', a.client_port,
      'state', a.state,
      'wait_event_type', a.wait_event_type,
      'wait_event', a.wait_event,
      'xact_age', extract(epoch FROM clock_timestamp() - a.xact_start),
      'query_age', extract(epoch FROM clock_timestamp() - a.query_start),
      'state_age', extract(epoch FROM clock_timestamp() - a.state_change),
      'blocked_by', pg_blocking_pids(a.pid),
      'query', left(a.query, 300)
    ) ORDER BY a.pid)
    FROM pg_stat_activity a
    WHERE a.pid <> pg_backend_pid()
      AND (a.backend_type = 'client backend'
           -- another role's session, to a role without pg_read_all_stats: only its user shows
           -- (and its database: background processes have none)
           OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL AND a.datid IS NOT NULL))), '[]'::json),
  'waits', COALESCE((
    SELECT json_agg(json_build_object(
      'pid', l.pid, 'locktype', l.locktype, 'mode', l.mode,
      'relation', CASE WHEN l.relation IS NOT NULL THEN l.relation::regclass::text END))
    FROM pg_locks l WHERE NOT l.granted), '[]'::json)
)";

/// One client backend, as `pg_stat_activity` shows it to the role.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Session {
    pub pid: i64,
    pub user: String,
    pub application: String,
    pub client: Option<(IpAddr, u16)>,
    /// None when the role may not see it (another role's session without `pg_read_all_stats`).
    pub state: Option<String>,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
    pub xact_age: Option<f64>,
    pub query_age: Option<f64>,
    pub state_age: Option<f64>,
    pub blocked_by: Vec<i64>,
    pub query: String,
    pub hidden: bool,
}

/// A lock a backend waits for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockWait {
    pub locktype: String,
    pub mode: String,
    pub relation: Option<String>,
}

/// What the query returned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DbState {
    pub user: String,
    pub superuser: bool,
    pub read_all_stats: bool,
    pub server_port: Option<u16>,
    /// The database's clock (Unix seconds) when the ages of the sessions were taken.
    pub now: Option<f64>,
    pub version: String,
    pub sessions: Vec<Session>,
    pub waits: HashMap<i64, LockWait>,
}

impl DbState {
    pub fn hidden(&self) -> usize {
        self.sessions.iter().filter(|s| s.hidden).count()
    }

    fn session(&self, pid: i64) -> Option<&Session> {
        self.sessions.iter().find(|s| s.pid == pid)
    }
}

/// Parse the query's answer.
pub fn parse_state(text: &str) -> Result<DbState, String> {
    let j = Json::parse(text.trim()).map_err(|e| format!("unreadable answer from psql: {e}"))?;
    let s = |v: Option<&Json>| v.and_then(Json::as_str).map(str::to_string);
    let mut state = DbState {
        user: s(j.get("user")).unwrap_or_default(),
        superuser: j.get("superuser").and_then(Json::as_bool).unwrap_or(false),
        read_all_stats: j
            .get("read_all_stats")
            .and_then(Json::as_bool)
            .unwrap_or(false),
        server_port: j
            .get("server_port")
            .and_then(Json::as_i64)
            .and_then(|p| u16::try_from(p).ok()),
        version: s(j.get("version")).unwrap_or_default(),
        now: j.get("now").and_then(Json::as_f64),
        ..DbState::default()
    };
    for x in j.get("sessions").and_then(Json::as_array).unwrap_or(&[]) {
        let Some(pid) = x.get("pid").and_then(Json::as_i64) else {
            continue;
        };
        let query = s(x.get("query")).unwrap_or_default();
        let client = match (
            s(x.get("client_addr")).and_then(|a| a.parse::<IpAddr>().ok()),
            x.get("client_port")
                .and_then(Json::as_i64)
                .and_then(|p| u16::try_from(p).ok()),
        ) {
            (Some(ip), Some(port)) => Some((tcp_table::unmapped(ip), port)),
            _ => None,
        };
        let state_text = s(x.get("state"));
        state.sessions.push(Session {
            pid,
            user: s(x.get("user")).unwrap_or_default(),
            application: s(x.get("application")).unwrap_or_default(),
            client,
            hidden: query == "<insufficient privilege>" || state_text.is_none(),
            state: state_text,
            wait_event_type: s(x.get("wait_event_type")),
            wait_event: s(x.get("wait_event")),
            xact_age: x.get("xact_age").and_then(Json::as_f64),
            query_age: x.get("query_age").and_then(Json::as_f64),
            state_age: x.get("state_age").and_then(Json::as_f64),
            blocked_by: x
                .get("blocked_by")
                .and_then(Json::as_array)
                .unwrap_or(&[])
                .iter()
                .filter_map(Json::as_i64)
                .collect(),
            query,
        });
    }
    for x in j.get("waits").and_then(Json::as_array).unwrap_or(&[]) {
        if let Some(pid) = x.get("pid").and_then(Json::as_i64) {
            state.waits.entry(pid).or_insert(LockWait {
                locktype: s(x.get("locktype")).unwrap_or_default(),
                mode: s(x.get("mode")).unwrap_or_default(),
                relation: s(x.get("relation")),
            });
        }
    }
    Ok(state)
}

/// Run the query through `psql` within `timeout`.
pub fn query(psql: &Path, target: &Target, timeout: Duration) -> Result<DbState, String> {
    let connect = timeout.as_secs().clamp(2, 30).to_string();
    let mut cmd = Process::new(psql);
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(&target.args)
        .args([
            "-c",
            &format!(
                "SET statement_timeout = {}",
                timeout.as_millis().clamp(1000, 60_000)
            ),
            "-c",
            QUERY,
        ])
        .env("PGCONNECT_TIMEOUT", connect)
        .env("PGAPPNAME", "ferricornctl doctor");
    for (k, v) in &target.env {
        cmd.env(k, v);
    }
    // Short naps: the moment of the answer is the clock the requests' ages are set to.
    let (status, stdout, stderr) = super::run_bounded(&mut cmd, timeout, Duration::from_millis(1))
        .map_err(|e| format!("cannot run {}: {e}", psql.display()))?;
    match status {
        None => Err(format!("no answer within {:.0}s", timeout.as_secs_f64())),
        Some(st) if !st.success() => Err(psql_error(&stderr)),
        Some(_) => parse_state(&stdout),
    }
}

/// psql's message in one line: `connection to server at "127.0.0.1", port 1 failed: Connection
/// refused` (without `psql: error:` and the hint lines).
fn psql_error(stderr: &str) -> String {
    let first = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("psql failed without a message");
    let msg = first
        .strip_prefix("psql: error: ")
        .or_else(|| first.strip_prefix("psql: "))
        .unwrap_or(first);
    msg.strip_prefix("ERROR:  ").unwrap_or(msg).to_string()
}

// ---- ferricorn's side ----

/// A request in flight, with its stack.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveRequest {
    pub thread: usize,
    pub method: String,
    pub path: String,
    pub age: f64,
    pub stack: Option<Vec<Frame>>,
}

impl LiveRequest {
    fn in_driver(&self) -> bool {
        self.stack
            .as_deref()
            .is_some_and(|s| logs::classify(s, false) == WaitKind::Database)
    }

    fn where_(&self) -> Option<String> {
        self.stack
            .as_deref()
            .and_then(logs::app_frame)
            .map(ToString::to_string)
    }
}

/// A request a worker finished.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PastRequest {
    pub thread: usize,
    pub method: String,
    pub path: String,
    pub started_ago: f64,
    pub finished_ago: f64,
}

/// One worker: its requests and its TCP connections.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerView {
    pub pid: i32,
    pub live: Vec<LiveRequest>,
    pub recent: Vec<PastRequest>,
    /// Established connections, or why they could not be read.
    pub conns: Result<Vec<TcpEntry>, String>,
}

/// The workers of a `show stacks` reply, their ages made relative to the moment the database took its
/// own, and each worker's connections read now.
///
/// Both sides give the wall-clock time their ages hold at (`ages_at`, the database's `now`): on one
/// host that is one clock, and comparing there is exact. Without them, or with clocks more than a
/// second apart (a database host whose clock is off), the ages are moved forward by `later`, the time
/// between the `show stacks` reply and psql's answer (a few milliseconds too much).
pub fn workers_from_stacks(data: &Json, later: f64, db_now: Option<f64>) -> Vec<WorkerView> {
    let f = |v: Option<&Json>| v.and_then(Json::as_f64).unwrap_or(0.0);
    let s = |v: Option<&Json>| v.and_then(Json::as_str).unwrap_or("").to_string();
    data.get("workers")
        .and_then(Json::as_array)
        .unwrap_or(&[])
        .iter()
        .filter_map(|w| {
            let pid = i32::try_from(w.get("pid")?.as_i64()?).ok()?;
            let later = match (w.get("ages_at").and_then(Json::as_f64), db_now) {
                (Some(at), Some(now)) if (now - at - later).abs() < 1.0 => now - at,
                _ => later,
            };
            let live = w
                .get("threads")
                .and_then(Json::as_array)
                .unwrap_or(&[])
                .iter()
                .map(|t| LiveRequest {
                    thread: t.get("thread").and_then(Json::as_i64).unwrap_or(0) as usize,
                    method: s(t.get("method")),
                    path: s(t.get("path")),
                    age: f(t.get("elapsed")) + later,
                    stack: t.get("stack").and_then(Json::as_array).map(|lines| {
                        lines
                            .iter()
                            .filter_map(|l| logs::parse_frame(l.as_str()?))
                            .collect()
                    }),
                })
                .collect();
            let recent = w
                .get("recent")
                .and_then(Json::as_array)
                .unwrap_or(&[])
                .iter()
                .map(|r| PastRequest {
                    thread: r.get("thread").and_then(Json::as_i64).unwrap_or(0) as usize,
                    method: s(r.get("method")),
                    path: s(r.get("path")),
                    started_ago: f(r.get("started")) + later,
                    finished_ago: f(r.get("finished")) + later,
                })
                .collect();
            let conns = tcp_table::connections_of(pid)
                .map_err(|e| format!("cannot read /proc/{pid}/fd: {e}"));
            Some(WorkerView {
                pid,
                live,
                recent,
                conns,
            })
        })
        .collect()
}

// ---- matching ----

/// Where a backend's session comes from.
#[derive(Clone, Debug, PartialEq)]
enum Origin {
    /// A request in flight in worker `pid`.
    Live { pid: i32, req: LiveRequest },
    /// A finished request of worker `pid`, running when the transaction began.
    Past { pid: i32, req: PastRequest },
    /// A connection of worker `pid` whose request cannot be told (`candidates` may name several).
    Worker { pid: i32, candidates: Vec<String> },
    /// Not a ferricorn worker's connection.
    Other(String),
}

fn request_name(method: &str, path: &str) -> String {
    format!("{method} {path}")
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Origin::Live { pid, req } => format!(
                "from {}, in flight for {} in worker {pid}",
                request_name(&req.method, &req.path),
                secs(req.age)
            ),
            Origin::Past { pid, req } => format!(
                "from {}, which finished {} ago in worker {pid}: the transaction outlived its request",
                request_name(&req.method, &req.path),
                secs(req.finished_ago)
            ),
            Origin::Worker { pid, candidates } if candidates.is_empty() => format!(
                "a connection of worker {pid}; none of its requests in flight or recently finished was running when the transaction began"
            ),
            Origin::Worker { pid, candidates } => format!(
                "a connection of worker {pid}, opened by one of: {}",
                candidates.join(", ")
            ),
            Origin::Other(s) => s.clone(),
        }
    }
}

/// `41 s`, `1.5 s`.
fn secs(x: f64) -> String {
    if x >= 10.0 {
        format!("{:.0} s", x)
    } else {
        format!("{:.1} s", x)
    }
}

/// `12:01:05`: the local time `ago` seconds before now.
fn clock_ago(ago: f64) -> String {
    let t = chrono::Local::now() - chrono::Duration::milliseconds((ago * 1000.0) as i64);
    t.format("%H:%M:%S").to_string()
}

fn one_line(q: &str) -> String {
    let q: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
    if q.chars().count() > QUERY_CHARS {
        format!("{}...", q.chars().take(QUERY_CHARS).collect::<String>())
    } else {
        q
    }
}

/// Everything tied together.
pub struct Analysis {
    pub findings: Vec<Finding>,
    /// `backend pid -> worker pid` for the backends matched to a worker.
    pub owners: BTreeMap<i64, i32>,
    /// `backend pid -> request` for the backends tied to a request in flight.
    pub requests: BTreeMap<i64, String>,
    /// Requests in the database driver that no backend could be tied to.
    pub unmatched: usize,
}

struct Matcher<'a> {
    db: &'a DbState,
    workers: &'a [WorkerView],
    owner: HashMap<i64, usize>,
    /// Backend -> (worker index, index in its `live`).
    running: HashMap<i64, (usize, usize)>,
}

impl<'a> Matcher<'a> {
    fn new(db: &'a DbState, workers: &'a [WorkerView]) -> Matcher<'a> {
        let mut by_client: HashMap<(IpAddr, u16), usize> = HashMap::new();
        for (i, w) in workers.iter().enumerate() {
            for c in w.conns.as_deref().unwrap_or(&[]) {
                if db.server_port.is_none_or(|p| p == c.remote.1) {
                    by_client.insert((tcp_table::unmapped(c.local.0), c.local.1), i);
                }
            }
        }
        let owner: HashMap<i64, usize> = db
            .sessions
            .iter()
            .filter_map(|s| Some((s.pid, *by_client.get(&s.client?)?)))
            .collect();
        let mut m = Matcher {
            db,
            workers,
            owner,
            running: HashMap::new(),
        };
        m.match_running();
        m
    }

    /// Tie each backend running a query to the request in the driver that sent it, where only one can
    /// have: in the same worker, in the driver, started before the query, not tied to another backend.
    /// When a worker has more such backends than requests in the driver, some backend was not sent by
    /// a request (a thread of the app's own): then a pair is made only when neither side has another
    /// candidate.
    fn match_running(&mut self) {
        for (wi, w) in self.workers.iter().enumerate() {
            let backends: Vec<&Session> = self
                .db
                .sessions
                .iter()
                .filter(|s| {
                    !s.hidden
                        && s.state.as_deref() == Some("active")
                        && self.owner.get(&s.pid) == Some(&wi)
                })
                .collect();
            let requests: Vec<usize> = (0..w.live.len())
                .filter(|ri| w.live[*ri].in_driver())
                .collect();
            let fits =
                |b: &Session, ri: usize| w.live[ri].age + SLACK_SECS >= b.query_age.unwrap_or(0.0);
            let explained = backends.len() <= requests.len();
            let mut taken: HashSet<usize> = HashSet::new();
            let mut paired: HashSet<i64> = HashSet::new();
            loop {
                let mut progress = false;
                for b in &backends {
                    if paired.contains(&b.pid) {
                        continue;
                    }
                    let free: Vec<usize> = requests
                        .iter()
                        .copied()
                        .filter(|ri| !taken.contains(ri) && fits(b, *ri))
                        .collect();
                    let [ri] = free[..] else { continue };
                    let rivals = backends
                        .iter()
                        .filter(|o| o.pid != b.pid && !paired.contains(&o.pid) && fits(o, ri))
                        .count();
                    if explained || rivals == 0 {
                        taken.insert(ri);
                        paired.insert(b.pid);
                        self.running.insert(b.pid, (wi, ri));
                        progress = true;
                    }
                }
                if !progress {
                    break;
                }
            }
        }
    }

    fn request_of(&self, pid: i64) -> Option<(i32, &LiveRequest)> {
        let (wi, ri) = self.running.get(&pid)?;
        let w = &self.workers[*wi];
        Some((w.pid, &w.live[*ri]))
    }

    fn origin(&self, s: &Session) -> Origin {
        if let Some((pid, req)) = self.request_of(s.pid) {
            return Origin::Live {
                pid,
                req: req.clone(),
            };
        }
        if s.hidden {
            return Origin::Other(format!(
                "a session of role {} whose client this role may not see",
                s.user
            ));
        }
        let Some(&wi) = self.owner.get(&s.pid) else {
            let who = if s.application.is_empty() {
                format!("user {}", s.user)
            } else {
                format!("{}, user {}", s.application, s.user)
            };
            // "Not a worker's" only when every worker's connections were read.
            let known = !self.workers.is_empty() && self.workers.iter().all(|w| w.conns.is_ok());
            let not_ours = if known {
                ", not a connection of a ferricorn worker"
            } else {
                ""
            };
            return Origin::Other(match s.client {
                Some((ip, port)) => format!("from {ip}:{port} ({who}){not_ours}"),
                None => format!("from a local socket ({who}){not_ours}"),
            });
        };
        let w = &self.workers[wi];
        let began = s.xact_age.or(s.query_age).unwrap_or(0.0);
        let busy: HashSet<usize> = self
            .running
            .values()
            .filter(|(i, _)| *i == wi)
            .map(|(_, r)| *r)
            .collect();
        let live: Vec<&LiveRequest> = w
            .live
            .iter()
            .enumerate()
            .filter(|(ri, r)| !busy.contains(ri) && r.age + SLACK_SECS >= began)
            .map(|(_, r)| r)
            .collect();
        let past: Vec<&PastRequest> = w
            .recent
            .iter()
            .filter(|r| r.started_ago + SLACK_SECS >= began && r.finished_ago <= began + LATE_SECS)
            .collect();
        match (live.as_slice(), past.as_slice()) {
            ([r], []) => Origin::Live {
                pid: w.pid,
                req: (*r).clone(),
            },
            ([], [r]) => Origin::Past {
                pid: w.pid,
                req: (*r).clone(),
            },
            _ => Origin::Worker {
                pid: w.pid,
                candidates: live
                    .iter()
                    .map(|r| request_name(&r.method, &r.path))
                    .chain(past.iter().map(|r| request_name(&r.method, &r.path)))
                    .collect(),
            },
        }
    }

    /// What blocks `s`: the first backend of `pg_blocking_pids` that is not itself waiting on another
    /// (the head of the queue), else the first one.
    fn blocker(&self, s: &Session) -> Option<i64> {
        s.blocked_by
            .iter()
            .copied()
            .find(|b| self.db.session(*b).is_none_or(|x| x.blocked_by.is_empty()))
            .or_else(|| s.blocked_by.first().copied())
    }

    fn lock_name(&self, pid: i64) -> String {
        match self.db.waits.get(&pid) {
            Some(w) => match w.locktype.as_str() {
                "transactionid" | "tuple" => "a row lock".to_string(),
                "relation" => format!(
                    "a {} on {}",
                    w.mode,
                    w.relation.as_deref().unwrap_or("a table")
                ),
                "advisory" => "an advisory lock".to_string(),
                other => format!("a {other} lock"),
            },
            None => "a lock".to_string(),
        }
    }

    /// `idle in transaction since 12:01:05` / `running SELECT ... for 3.0 s`.
    fn holder_state(&self, h: &Session) -> String {
        match h.state.as_deref() {
            Some(st @ ("idle in transaction" | "idle in transaction (aborted)")) => {
                format!("{st} since {}", clock_ago(h.state_age.unwrap_or(0.0)))
            }
            Some("active") if !h.blocked_by.is_empty() => format!(
                "itself waiting on backend {}",
                h.blocked_by
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some("active") => format!("running a query for {}", secs(h.query_age.unwrap_or(0.0))),
            Some(other) => other.to_string(),
            None => "its state hidden from this role".to_string(),
        }
    }
}

fn fix_lock(holder: i64, timeout: u64) -> String {
    format!(
        "End the holder's transaction now with SELECT pg_terminate_backend({holder}) (it is rolled back), then find why it stays open: no slow work (HTTP calls, sleeps, file processing) inside transaction.atomic() or after select_for_update(), and set lock_timeout{} and idle_in_transaction_session_timeout on the database role so that a wait ends before ferricorn's timeout.",
        if timeout > 0 {
            format!(" below {timeout}s")
        } else {
            String::new()
        }
    )
}

/// The findings of the database step. `threshold` is in seconds; `timeout` is ferricorn's.
pub fn analyze(db: &DbState, workers: &[WorkerView], threshold: f64, timeout: u64) -> Analysis {
    let m = Matcher::new(db, workers);
    let mut out = Vec::new();
    let mut named: HashSet<i64> = HashSet::new();

    // 1. Requests in flight whose backend waits on a lock.
    for s in &db.sessions {
        let Some((wpid, req)) = m.request_of(s.pid) else {
            continue;
        };
        let Some(h) = m.blocker(s) else { continue };
        named.insert(s.pid);
        named.insert(h);
        let lock = m.lock_name(s.pid);
        let waited = s.query_age.unwrap_or(req.age);
        let (holder_desc, holder_query) = match db.session(h) {
            Some(hs) => (
                format!("{}, {}", m.holder_state(hs), m.origin(hs).describe()),
                (!hs.hidden).then(|| one_line(&hs.query)),
            ),
            None => ("not visible to this role".to_string(), None),
        };
        let mut evidence = vec![format!(
            "backend {} (worker {wpid}, thread {}) waits on {} ({}): {}",
            s.pid,
            req.thread,
            s.wait_event.as_deref().unwrap_or("lock"),
            lock,
            one_line(&s.query)
        )];
        if let Some(q) = holder_query {
            evidence.push(format!("backend {h}'s last query: {q}"));
        }
        if let Some(hs) = db.session(h) {
            if let Some(x) = hs.xact_age {
                evidence.push(format!(
                    "backend {h}'s transaction has been open {} (since {})",
                    secs(x),
                    clock_ago(x)
                ));
            }
        }
        if let Some(w) = req.where_() {
            evidence.push(format!("{} {}: {w}", req.method, req.path));
        }
        if s.blocked_by.len() > 1 {
            evidence.push(format!(
                "also blocked by backend(s) {}",
                s.blocked_by
                    .iter()
                    .filter(|b| **b != h)
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push(Finding {
            id: "db-request-blocked",
            severity: Severity::Critical,
            title: format!(
                "{} {} has waited {} on {lock} held by backend {h} ({holder_desc})",
                req.method,
                req.path,
                secs(waited)
            ),
            evidence,
            fix: fix_lock(h, timeout),
        });
    }

    // 2. Requests in flight whose query runs long (not blocked).
    for s in &db.sessions {
        let Some((wpid, req)) = m.request_of(s.pid) else {
            continue;
        };
        if named.contains(&s.pid) {
            continue;
        }
        let age = s.query_age.unwrap_or(0.0);
        if age < threshold {
            continue;
        }
        named.insert(s.pid);
        let mut evidence = vec![format!(
            "backend {} (worker {wpid}, thread {}), {}: {}",
            s.pid,
            req.thread,
            match (&s.wait_event_type, &s.wait_event) {
                (Some(t), Some(e)) => format!("waiting on {t}/{e}"),
                _ => "on CPU".to_string(),
            },
            one_line(&s.query)
        )];
        if let Some(w) = req.where_() {
            evidence.push(format!("{} {}: {w}", req.method, req.path));
        }
        out.push(Finding {
            id: "db-request-slow-query",
            severity: if timeout > 0 && req.age + 1.0 >= timeout as f64 / 2.0 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            title: format!(
                "{} {} has waited {} on its query (backend {}, running since {})",
                req.method,
                req.path,
                secs(age),
                s.pid,
                clock_ago(age)
            ),
            evidence,
            fix: format!(
                "Run EXPLAIN (ANALYZE, BUFFERS) on the query and add the missing index, or move the work out of the request; set statement_timeout{} so that a slow query fails before ferricorn's timeout instead of holding a thread.",
                if timeout > 0 { format!(" below {timeout}s") } else { String::new() }
            ),
        });
    }

    // 3. Other blocked backends (not a request's, or not tied to one).
    let blocked: Vec<&Session> = db
        .sessions
        .iter()
        .filter(|s| !s.hidden && !named.contains(&s.pid) && !s.blocked_by.is_empty())
        .collect();
    if !blocked.is_empty() {
        let mut evidence = Vec::new();
        let mut holders = Vec::new();
        for s in blocked.iter().take(5) {
            let Some(h) = m.blocker(s) else { continue };
            holders.push(h);
            let hs = db.session(h);
            evidence.push(format!(
                "backend {}, {}, has waited {} on {} held by backend {h} ({})",
                s.pid,
                m.origin(s).describe(),
                secs(s.query_age.unwrap_or(0.0)),
                m.lock_name(s.pid),
                hs.map_or("not visible to this role".to_string(), |hs| format!(
                    "{}, {}",
                    m.holder_state(hs),
                    m.origin(hs).describe()
                ))
            ));
        }
        named.extend(blocked.iter().map(|s| s.pid));
        named.extend(holders.iter().copied());
        let head = holders.first().copied().unwrap_or(0);
        out.push(Finding {
            id: "db-blocked",
            severity: Severity::Warning,
            title: format!(
                "{} database session(s) wait on a lock held by another",
                blocked.len()
            ),
            evidence,
            fix: fix_lock(head, timeout),
        });
    }

    // 4. Long queries not tied to a request.
    let slow: Vec<&Session> = db
        .sessions
        .iter()
        .filter(|s| {
            !s.hidden
                && !named.contains(&s.pid)
                && s.state.as_deref() == Some("active")
                && s.query_age.unwrap_or(0.0) >= threshold
        })
        .collect();
    if !slow.is_empty() {
        out.push(Finding {
            id: "db-slow-queries",
            severity: Severity::Warning,
            title: format!(
                "{} quer{} running longer than {}",
                slow.len(),
                if slow.len() == 1 { "y" } else { "ies" },
                secs(threshold)
            ),
            evidence: slow
                .iter()
                .take(5)
                .map(|s| {
                    format!(
                        "backend {} for {}, {}: {}",
                        s.pid,
                        secs(s.query_age.unwrap_or(0.0)),
                        m.origin(s).describe(),
                        one_line(&s.query)
                    )
                })
                .collect(),
            fix: "Run EXPLAIN (ANALYZE, BUFFERS) on each and add the missing index; set statement_timeout below ferricorn's timeout.".to_string(),
        });
        named.extend(slow.iter().map(|s| s.pid));
    }

    // 5. Idle in transaction, not named yet.
    let idle: Vec<&Session> = db
        .sessions
        .iter()
        .filter(|s| {
            !named.contains(&s.pid)
                && s.state
                    .as_deref()
                    .is_some_and(|st| st.starts_with("idle in transaction"))
                && s.state_age.unwrap_or(0.0) >= threshold
        })
        .collect();
    if !idle.is_empty() {
        out.push(Finding {
            id: "db-idle-in-transaction",
            severity: Severity::Warning,
            title: format!(
                "{} session(s) idle in a transaction for more than {}",
                idle.len(),
                secs(threshold)
            ),
            evidence: idle
                .iter()
                .take(5)
                .map(|s| {
                    format!(
                        "backend {} {} since {} ({}); last query: {}",
                        s.pid,
                        s.state.as_deref().unwrap_or("idle in transaction"),
                        clock_ago(s.state_age.unwrap_or(0.0)),
                        m.origin(s).describe(),
                        one_line(&s.query)
                    )
                })
                .collect(),
            fix: "A transaction left open holds its locks and blocks vacuum: commit or roll back before slow work, and set idle_in_transaction_session_timeout on the role.".to_string(),
        });
    }

    // 6. Requests in the driver that no backend could be tied to.
    let mut unmatched = Vec::new();
    for (wi, w) in workers.iter().enumerate() {
        for (ri, r) in w.live.iter().enumerate() {
            if r.in_driver() && r.age >= threshold && !m.running.values().any(|x| *x == (wi, ri)) {
                unmatched.push(format!(
                    "{} {} (worker {}, thread {}, {}){}",
                    r.method,
                    r.path,
                    w.pid,
                    r.thread,
                    secs(r.age),
                    match &w.conns {
                        Err(e) => format!(": {e}"),
                        Ok(c) if c.is_empty() => ": the worker has no TCP connection (a unix-socket connection cannot be matched)".to_string(),
                        Ok(_) => String::new(),
                    }
                ));
            }
        }
    }
    // With sessions hidden from the role, that is why: the role's own line says so.
    let unmatched_count = unmatched.len();
    if !unmatched.is_empty() && db.hidden() == 0 {
        out.push(Finding {
            id: "db-request-unmatched",
            severity: Severity::Info,
            title: format!(
                "{} request(s) in the database driver could not be tied to a backend",
                unmatched.len()
            ),
            evidence: unmatched,
            fix: "Backends are matched by the client address and port PostgreSQL sees, so the database must see the worker's own address (no NAT or pooler in between; TCP, not a unix socket), and this command must be allowed to read the workers' /proc/PID/fd (the same user, or root). With several requests of one worker in the driver at once, the one that sent a query cannot always be told.".to_string(),
        });
    }

    let owners = m
        .owner
        .iter()
        .map(|(b, wi)| (*b, workers[*wi].pid))
        .collect();
    let requests = m
        .running
        .keys()
        .filter_map(|b| {
            let (_, r) = m.request_of(*b)?;
            Some((*b, request_name(&r.method, &r.path)))
        })
        .collect();
    Analysis {
        findings: out,
        owners,
        requests,
        unmatched: unmatched_count,
    }
}

/// The info line for a role that cannot see other roles' sessions.
pub fn limited_role(db: &DbState, a: &Analysis) -> Option<Finding> {
    let hidden = db.hidden();
    (hidden > 0).then(|| Finding {
        id: "database-role-limited",
        severity: Severity::Info,
        title: format!(
            "database: role {} sees only its own sessions ({hidden} other session(s) hidden{}); grant it pg_read_all_stats (GRANT pg_read_all_stats TO {}) or connect as a superuser",
            db.user,
            if a.unmatched > 0 {
                format!(
                    ", so {} request(s) in the database driver cannot be tied to their backends",
                    a.unmatched
                )
            } else {
                String::new()
            },
            db.user
        ),
        evidence: Vec::new(),
        fix: String::new(),
    })
}

/// The `database` part of `--json`.
pub fn state_json(db: &DbState, a: &Analysis) -> Json {
    let opt = |x: Option<f64>| x.map_or(Json::Null, Json::Float);
    let sessions = db
        .sessions
        .iter()
        .map(|s| {
            obj([
                ("pid", s.pid.into()),
                ("user", s.user.as_str().into()),
                ("application", s.application.as_str().into()),
                (
                    "client",
                    s.client
                        .map_or(Json::Null, |(ip, port)| format!("{ip}:{port}").into()),
                ),
                ("state", s.state.clone().into()),
                ("wait_event_type", s.wait_event_type.clone().into()),
                ("wait_event", s.wait_event.clone().into()),
                ("xact_age", opt(s.xact_age)),
                ("query_age", opt(s.query_age)),
                ("state_age", opt(s.state_age)),
                (
                    "blocked_by",
                    Json::Arr(s.blocked_by.iter().map(|p| (*p).into()).collect()),
                ),
                ("query", s.query.as_str().into()),
                ("worker", a.owners.get(&s.pid).copied().into()),
                ("request", a.requests.get(&s.pid).cloned().into()),
            ])
        })
        .collect();
    obj([
        ("user", db.user.as_str().into()),
        ("superuser", db.superuser.into()),
        ("read_all_stats", db.read_all_stats.into()),
        ("version", db.version.as_str().into()),
        ("hidden_sessions", db.hidden().into()),
        ("sessions", Json::Arr(sessions)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Instant;

    #[test]
    fn urls_keep_the_password_off_the_command_line() {
        let t = target_from_url("postgresql://demo:p%40ss@127.0.0.1:5432/demo?sslmode=disable")
            .unwrap();
        assert_eq!(
            t.display,
            "postgresql://demo@127.0.0.1:5432/demo?sslmode=disable"
        );
        assert_eq!(
            t.args,
            vec![
                "-d",
                "postgresql://demo@127.0.0.1:5432/demo?sslmode=disable"
            ]
        );
        assert_eq!(t.env, vec![("PGPASSWORD".to_string(), "p@ss".to_string())]);
        let t = target_from_url("postgres://u@h/db?password=x&application_name=a").unwrap();
        assert_eq!(t.display, "postgres://u@h/db?application_name=a");
        assert_eq!(t.env[0].1, "x");
        let t = target_from_url("postgresql:///demo").unwrap();
        assert!(t.env.is_empty());
        assert!(target_from_url("mysql://x/y").is_err());
        assert!(target_from_url("demo").is_err());
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn django_settings_become_libpq_variables() {
        let db = DjangoDb {
            settings_module: "demo.settings".into(),
            engine: "django.db.backends.postgresql".into(),
            name: "demo".into(),
            user: "demo".into(),
            password: "s".into(),
            host: "127.0.0.1".into(),
            port: "55432".into(),
            options: vec![
                ("sslmode".into(), "require".into()),
                ("x".into(), "y".into()),
            ],
        };
        let t = target_from_django(&db).unwrap();
        assert!(t.args.is_empty());
        assert!(t.env.contains(&("PGPASSWORD".into(), "s".into())));
        assert!(t.env.contains(&("PGSSLMODE".into(), "require".into())));
        assert_eq!(
            t.display,
            "Django settings demo.settings: demo@127.0.0.1:55432/demo"
        );
        let lite = DjangoDb {
            engine: "django.db.backends.sqlite3".into(),
            ..db
        };
        assert!(target_from_django(&lite)
            .unwrap_err()
            .contains("not PostgreSQL"));
    }

    #[test]
    fn a_process_environment_is_read() {
        // The environment a process was started with (what a unit's EnvironmentFile gives a server).
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .env("FERRICORN_DOCTOR_TEST", "a=b")
            .spawn()
            .expect("sleep");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut env = Vec::new();
        while Instant::now() < deadline {
            env = process_environ(child.id());
            if env.iter().any(|e| e == "FERRICORN_DOCTOR_TEST=a=b") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            env.iter().any(|e| e == "FERRICORN_DOCTOR_TEST=a=b"),
            "{env:?}"
        );
        assert!(process_environ(u32::MAX).is_empty());
    }

    #[test]
    fn psql_errors_are_one_line() {
        assert_eq!(
            psql_error("psql: error: connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?\n"),
            "connection to server at \"127.0.0.1\", port 1 failed: Connection refused"
        );
        assert_eq!(psql_error(""), "psql failed without a message");
    }

    fn local(port: u16) -> (IpAddr, u16) {
        (IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    fn conn(port: u16) -> TcpEntry {
        TcpEntry {
            local: local(port),
            remote: local(5432),
            state: tcp_table::ESTABLISHED,
            inode: port as u64,
        }
    }

    fn driver_stack() -> Vec<Frame> {
        vec![
            Frame {
                file: "/venv/lib/python3.11/site-packages/psycopg/connection.py".into(),
                line: 9,
                function: "wait".into(),
            },
            Frame {
                file: "/srv/app/catalog/views.py".into(),
                line: 120,
                function: "lock_wait".into(),
            },
        ]
    }

    fn session(pid: i64, port: u16, state: &str) -> Session {
        Session {
            pid,
            user: "demo".into(),
            client: Some(local(port)),
            state: Some(state.into()),
            query: "SELECT 1".into(),
            ..Session::default()
        }
    }

    /// The example stack's lock: /lock-hold/ took the row in a transaction that outlived it, in worker 10;
    /// /lock-wait/ (worker 20, in the driver) waits for it.
    fn lock_scene() -> (DbState, Vec<WorkerView>) {
        let mut holder = session(812, 40001, "idle in transaction");
        holder.xact_age = Some(30.0);
        holder.state_age = Some(29.9);
        holder.query = "SELECT ... FOR UPDATE NOWAIT".into();
        let mut waiter = session(813, 40002, "active");
        waiter.query_age = Some(12.0);
        waiter.xact_age = Some(12.0);
        waiter.blocked_by = vec![812];
        waiter.wait_event_type = Some("Lock".into());
        waiter.wait_event = Some("transactionid".into());
        let other = Session {
            client: Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)), 5000)),
            application: "psql".into(),
            ..session(900, 5000, "idle")
        };
        let db = DbState {
            user: "postgres".into(),
            superuser: true,
            server_port: Some(5432),
            sessions: vec![holder, waiter, other],
            waits: [(
                813,
                LockWait {
                    locktype: "transactionid".into(),
                    mode: "ShareLock".into(),
                    relation: None,
                },
            )]
            .into_iter()
            .collect(),
            ..DbState::default()
        };
        let workers = vec![
            WorkerView {
                pid: 10,
                live: vec![],
                recent: vec![
                    PastRequest {
                        thread: 0,
                        method: "GET".into(),
                        path: "/health/".into(),
                        started_ago: 40.0,
                        finished_ago: 39.9,
                    },
                    PastRequest {
                        thread: 1,
                        method: "GET".into(),
                        path: "/lock-hold/?seconds=60".into(),
                        started_ago: 30.05,
                        finished_ago: 29.95,
                    },
                ],
                conns: Ok(vec![conn(40001)]),
            },
            WorkerView {
                pid: 20,
                live: vec![LiveRequest {
                    thread: 1,
                    method: "GET".into(),
                    path: "/lock-wait/".into(),
                    age: 12.1,
                    stack: Some(driver_stack()),
                }],
                recent: vec![],
                conns: Ok(vec![conn(40002)]),
            },
        ];
        (db, workers)
    }

    #[test]
    fn a_blocked_request_names_the_holder_and_its_request() {
        let (db, workers) = lock_scene();
        let a = analyze(&db, &workers, 1.0, 30);
        let f = &a.findings[0];
        assert_eq!(f.id, "db-request-blocked");
        assert!(
            f.title.starts_with("GET /lock-wait/ has waited 12 s on a row lock held by backend 812 (idle in transaction since "),
            "{}",
            f.title
        );
        assert!(
            f.title
                .contains("from GET /lock-hold/?seconds=60, which finished 30 s ago in worker 10: the transaction outlived its request)"),
            "{}",
            f.title
        );
        assert!(
            f.evidence
                .iter()
                .any(|e| e.contains("views.py:120 in lock_wait")),
            "{:?}",
            f.evidence
        );
        assert!(f.fix.contains("pg_terminate_backend(812)"));
        assert_eq!(a.owners.get(&812), Some(&10));
        assert_eq!(
            a.requests.get(&813).map(String::as_str),
            Some("GET /lock-wait/")
        );
        // The holder is named once, not again as an idle transaction.
        assert!(
            a.findings.iter().all(|f| f.id != "db-idle-in-transaction"),
            "{:?}",
            a.findings
        );
    }

    #[test]
    fn a_holder_in_flight_is_named_and_ambiguity_is_said() {
        let (db, mut workers) = lock_scene();
        // The holder's request is still running (it sleeps inside its transaction).
        workers[0].recent.clear();
        workers[0].live.push(LiveRequest {
            thread: 0,
            method: "POST".into(),
            path: "/lock-hold/".into(),
            age: 31.0,
            stack: Some(vec![Frame {
                file: "/srv/app/catalog/views.py".into(),
                line: 99,
                function: "lock_hold".into(),
            }]),
        });
        let a = analyze(&db, &workers, 1.0, 30);
        assert!(
            a.findings[0]
                .title
                .contains("from POST /lock-hold/, in flight for 31 s in worker 10)"),
            "{}",
            a.findings[0].title
        );
        // Two requests of that worker were running when the transaction began: both are named, neither
        // is blamed.
        workers[0].live.push(LiveRequest {
            thread: 1,
            method: "GET".into(),
            path: "/report/".into(),
            age: 35.0,
            stack: None,
        });
        let a = analyze(&db, &workers, 1.0, 30);
        assert!(
            a.findings[0].title.contains(
                "a connection of worker 10, opened by one of: POST /lock-hold/, GET /report/"
            ),
            "{}",
            a.findings[0].title
        );
    }

    #[test]
    fn slow_queries_and_what_cannot_be_matched() {
        let mut slow = session(700, 41000, "active");
        slow.query_age = Some(6.0);
        slow.query = "SELECT pg_sleep(8)".into();
        slow.wait_event_type = Some("Timeout".into());
        slow.wait_event = Some("PgSleep".into());
        let mut stray = session(701, 42000, "active");
        stray.query_age = Some(3.0);
        let db = DbState {
            server_port: Some(5432),
            sessions: vec![slow, stray],
            ..DbState::default()
        };
        let req = |path: &str, age: f64| LiveRequest {
            thread: 0,
            method: "GET".into(),
            path: path.into(),
            age,
            stack: Some(driver_stack()),
        };
        let workers = vec![
            WorkerView {
                pid: 10,
                live: vec![req("/slow-query/?seconds=8", 6.1)],
                recent: vec![],
                conns: Ok(vec![conn(41000)]),
            },
            WorkerView {
                pid: 11,
                live: vec![req("/other/", 5.0)],
                recent: vec![],
                conns: Err("cannot read /proc/11/fd: Permission denied".into()),
            },
        ];
        let a = analyze(&db, &workers, 1.0, 30);
        let ids: Vec<&str> = a.findings.iter().map(|f| f.id).collect();
        assert_eq!(
            ids,
            [
                "db-request-slow-query",
                "db-slow-queries",
                "db-request-unmatched"
            ]
        );
        let f = &a.findings[0];
        assert!(f.title.starts_with("GET /slow-query/?seconds=8 has waited 6.0 s on its query (backend 700, running since"), "{}", f.title);
        assert!(f.evidence[0].contains("waiting on Timeout/PgSleep: SELECT pg_sleep(8)"));
        assert!(
            a.findings[1].evidence[0]
                .starts_with("backend 701 for 3.0 s, from 127.0.0.1:42000 (user demo): SELECT 1"),
            "{:?}",
            a.findings[1].evidence
        );
        assert!(a.findings[2].evidence[0].contains("Permission denied"));
        // With every worker's connections read, a stranger is said to be one.
        let mut readable = workers.clone();
        readable[1].conns = Ok(Vec::new());
        let a = analyze(&db, &readable, 1.0, 30);
        assert!(
            a.findings[1].evidence[0].starts_with("backend 701 for 3.0 s, from 127.0.0.1:42000 (user demo), not a connection of a ferricorn worker: SELECT 1"),
            "{:?}",
            a.findings[1].evidence
        );
        // Without the workers' connections, nobody is said not to be a worker's.
        let a = analyze(&db, &[], 1.0, 30);
        assert!(
            a.findings[0].evidence[0]
                .ends_with("from 127.0.0.1:41000 (user demo): SELECT pg_sleep(8)"),
            "{:?}",
            a.findings[0].evidence
        );
        // A query younger than its request's start cannot be the request's: not matched.
        let mut db2 = db.clone();
        db2.sessions[0].query_age = Some(9.0);
        let a = analyze(&db2, &workers, 1.0, 30);
        assert!(a.findings.iter().all(|f| f.id != "db-request-slow-query"));
    }

    #[test]
    fn a_holder_hidden_from_the_role_is_not_guessed_at() {
        let (mut db, workers) = lock_scene();
        let h = &mut db.sessions[0];
        *h = Session {
            pid: 812,
            user: "postgres".into(),
            hidden: true,
            query: "<insufficient privilege>".into(),
            ..Session::default()
        };
        let a = analyze(&db, &workers, 1.0, 30);
        assert!(
            a.findings[0].title.ends_with("held by backend 812 (its state hidden from this role, a session of role postgres whose client this role may not see)"),
            "{}",
            a.findings[0].title
        );
        assert!(a.findings[0]
            .evidence
            .iter()
            .all(|e| !e.contains("insufficient")));
    }

    #[test]
    fn two_requests_of_one_worker_in_the_driver() {
        let (mut db, mut workers) = lock_scene();
        // /slow-query/ runs in the same worker as /lock-wait/, started after it.
        let mut slow = session(814, 40003, "active");
        slow.query_age = Some(5.0);
        slow.query = "SELECT pg_sleep(8)".into();
        db.sessions.push(slow);
        workers[1].conns.as_mut().unwrap().push(conn(40003));
        workers[1].live.push(LiveRequest {
            thread: 0,
            method: "GET".into(),
            path: "/slow-query/?seconds=8".into(),
            age: 5.1,
            stack: Some(driver_stack()),
        });
        let a = analyze(&db, &workers, 1.0, 30);
        assert_eq!(
            a.requests.get(&813).map(String::as_str),
            Some("GET /lock-wait/")
        );
        assert_eq!(
            a.requests.get(&814).map(String::as_str),
            Some("GET /slow-query/?seconds=8")
        );
        // A third active backend in that worker, more than its requests in the driver can explain: one
        // of them was sent by something else, and which one cannot be told, so nothing is paired.
        let mut stray = session(815, 40004, "active");
        stray.query_age = Some(4.0);
        db.sessions.push(stray);
        workers[1].conns.as_mut().unwrap().push(conn(40004));
        let a = analyze(&db, &workers, 1.0, 30);
        assert_eq!(a.requests.get(&813), None);
        assert_eq!(a.requests.get(&814), None);
        assert_eq!(a.requests.get(&815), None);
        assert!(a.findings.iter().any(|f| f.id == "db-request-unmatched"));
    }

    #[test]
    fn stacks_are_put_on_the_databases_clock() {
        let data = Json::parse(
            r#"{"workers": [{"pid": 1, "ages_at": 1000.0, "snapshot_age": 0.1,
                "threads": [{"thread": 0, "method": "GET", "path": "/a", "elapsed": 2.0,
                             "stack": ["Stack (most recent call first):", "  File \"/x/psycopg/c.py\", line 1 in wait"]}],
                "recent": [{"thread": 1, "method": "GET", "path": "/b", "started": 5.0, "finished": 4.0}]}]}"#,
        )
        .unwrap();
        // The database answered 0.25 s after the master's reply, by the common clock.
        let w = workers_from_stacks(&data, 0.3, Some(1000.25));
        assert!((w[0].live[0].age - 2.25).abs() < 1e-9);
        assert!(w[0].live[0].in_driver());
        assert!((w[0].recent[0].finished_ago - 4.25).abs() < 1e-9);
        // Clocks far apart: the measured delay instead.
        let w = workers_from_stacks(&data, 0.3, Some(5000.0));
        assert!((w[0].live[0].age - 2.3).abs() < 1e-9);
        let w = workers_from_stacks(&data, 0.3, None);
        assert!((w[0].recent[0].started_ago - 5.3).abs() < 1e-9);
    }

    #[test]
    fn the_answer_parses_and_hidden_sessions_are_counted() {
        let text = r#"{"user": "nopriv", "superuser": false, "read_all_stats": false, "server_port": 5432, "version": "15.8",
            "sessions": [{"pid": 5, "user": "demo", "application": "", "client_addr": null, "client_port": null, "state": null,
                          "wait_event_type": null, "wait_event": null, "xact_age": null, "query_age": null, "state_age": null,
                          "blocked_by": [], "query": "<insufficient privilege>"},
                         {"pid": 6, "user": "nopriv", "application": "x", "client_addr": "::ffff:127.0.0.1", "client_port": 4000,
                          "state": "idle in transaction", "wait_event_type": "Client", "wait_event": "ClientRead",
                          "xact_age": 3.5, "query_age": 3.4, "state_age": 3.4, "blocked_by": [7], "query": "BEGIN"}],
            "waits": [{"pid": 6, "locktype": "relation", "mode": "AccessExclusiveLock", "relation": "catalog_book"}]}"#;
        let db = parse_state(text).unwrap();
        assert_eq!(db.sessions.len(), 2);
        assert!(db.sessions[0].hidden);
        assert_eq!(db.sessions[1].client, Some(local(4000)));
        assert_eq!(db.sessions[1].blocked_by, vec![7]);
        assert_eq!(db.hidden(), 1);
        let a = analyze(&db, &[], 1.0, 30);
        let f = limited_role(&db, &a).unwrap();
        assert!(
            f.title
                .contains("role nopriv sees only its own sessions (1 other session(s) hidden)"),
            "{}",
            f.title
        );
        let m = Matcher::new(&db, &[]);
        assert_eq!(m.lock_name(6), "a AccessExclusiveLock on catalog_book");
        assert!(parse_state("not json").is_err());
    }
}
