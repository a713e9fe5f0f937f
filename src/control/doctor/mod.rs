//! `ferricornctl doctor`: the worker-timeout runbook as one command. It gathers what a person would
//! look at during an incident — the server's effective settings (control socket or config file), the
//! nginx configuration in front of it, the host's memory, swap, load and OOM kills, the error and
//! access logs of the last minutes, the latency of a few URLs, and when asked the database's sessions
//! and locks — and prints findings, each with a severity, its evidence and the fix.
//!
//! One file per source (`config`, `nginx`, `host`, `logs`, `access`, `probe`, `database`, which has
//! its own rules since they tie its sessions to the server's requests), the rules in `findings`, and
//! here the command line, the gathering (every source bounded in time; a source that
//! cannot be read becomes an info line) and the output (text, or JSON with `--json`).
//!
//! Exit status: 0 when nothing is critical or a warning, 1 when something is, 2 for a bad command line.

pub mod access;
pub mod config;
pub mod database;
pub mod findings;
pub mod host;
pub mod kubernetes;
pub mod logs;
pub mod nginx;
pub mod probe;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{value_parser, Arg, ArgAction, Command};

use super::json::{obj, Json};
use config::ServerInfo;
use findings::{Finding, Inputs, Severity};

const PROG: &str = "ferricornctl doctor";
pub const USAGE_ERROR: i32 = 2;
/// Exit status when a finding is critical or a warning.
pub const FOUND: i32 = 1;

const MANUAL: &str = "\
Sources (each optional; one that cannot be read is an info line, not an error):
  ferricorn   the running server's settings and live counters through its
              control socket (-s, or the default socket), or a config file
              resolved as `ferricorn -c FILE` would (--config)
  nginx       --nginx-config FILE (a config file with its includes, or saved
              `nginx -T` output), else the output of `nginx -T` (--nginx-bin,
              default: nginx on PATH or /usr/sbin/nginx)
  kubernetes  --kubernetes FILE|DIR (repeatable): manifests (YAML, several
              documents a file): Deployments, Services, HPAs, ServiceMonitors;
              each ferricorn container's settings from its command, args and
              env (WEB_CONCURRENCY from the downward API), with --config as
              the config file the container names
  host        load average, memory and swap (/proc/meminfo), OOM kills
              (/proc/vmstat and the server's memory cgroup)
  error log   the server's errorlog (or --error-log) of the last --since
              minutes: WORKER TIMEOUT with the request and its stack, slow
              requests, starvation, OOM kills, slow boots, grouped by path;
              stacks are judged as database, network, app code or response
  access log  the server's accesslog (or --access-log): static or media files
              answered by the app
  probes      --probe URL (repeatable): --probe-count plain HTTP/1.1 GETs
              each, p50/p99 latency
  database    PostgreSQL, only when asked: --database-url URL, or
              --django-settings [MODULE] (DATABASES['default'] of the Django
              settings, imported with the server's environment and raw_env,
              chdir and pythonpath; MODULE defaults to the server's
              DJANGO_SETTINGS_MODULE, else this one's). Read with psql
              (--psql): pg_stat_activity, pg_blocking_pids(), pg_locks; each
              backend is tied to the worker holding the other end of its
              connection and to the request in flight that sent its query
              (from `show stacks`), or that was running when its
              transaction began

Findings (id: when):
  nginx-timeout-shorter       proxy_read_timeout <= ferricorn's timeout:
                              nginx answers 504 while the worker keeps
                              running (critical; warning with < 2s margin)
  nginx-send-timeout-shorter  proxy_send_timeout <= timeout
  nginx-upstream-mismatch     no proxied location reaches ferricorn
  nginx-upstream-keepalive    nginx keeps upstream connections longer than
                              ferricorn's keepalive
  route-causes-timeouts       one path has most (>50%) of the timeouts and
                              slow requests
  timeouts-across-routes      they are spread over many paths
  stuck-in-database, stuck-on-external-call, stuck-in-app-code,
  stuck-sending-response, timeouts-without-stack
                              where the stuck threads were, from their stacks
  sync-workers-waiting-on-io  sync workers while requests wait on I/O
  sync-with-threads           worker_class sync with threads > 1 (gthread)
  capacity-below-concurrency  all threads busy while connections waited
  static-served-by-app        nginx proxies /static/, or the access log
                              shows static files answered by the app
  swap-in-use, memory-low, cpu-saturated, oom-kills, oom-kills-cgroup,
  oom-kills-host, max-requests-without-jitter, graceful-timeout-short,
  graceful-timeout-vs-nginx, slow-request-threshold-off, slow-boot,
  crash-loop, loopback-calls, memory-recycles,
  probe-errors, probe-slow, probe-latency, source-skipped
  k8s-grace-period-short      terminationGracePeriodSeconds < preStop +
                              --shutdown-delay + --graceful-timeout (+5s)
  k8s-memory-limit-low        memory limit < (workers + 1) x
                              --max-worker-memory (critical below workers x)
  k8s-probe-app-port          a probe on the app's port, not the metrics
                              listener's (liveness: critical)
  k8s-probe-path, k8s-probe-port-unknown, k8s-probe-tcp,
  k8s-liveness-hair-trigger, k8s-no-liveness-probe, k8s-no-readiness-probe,
  k8s-no-drain-delay, k8s-no-max-worker-memory, k8s-no-memory-limit,
  k8s-bind-loopback, k8s-metrics-loopback, k8s-web-concurrency-no-cpu-limit,
  k8s-web-concurrency-divisor, k8s-web-concurrency-ignored,
  k8s-workers-above-cpu, k8s-service-selector, k8s-service-port,
  k8s-servicemonitor-port, k8s-servicemonitor-path,
  k8s-servicemonitor-no-service, k8s-hpa-metric-unknown,
  k8s-hpa-target-unreachable, k8s-hpa-target-missing, k8s-hpa-cpu,
  k8s-command-invalid, k8s-config-file-unread, k8s-no-ferricorn
                              docs/kubernetes.md explains each
  db-request-blocked          a request in flight waits on a lock: which
                              backend holds it, and from which request
  db-request-slow-query       a request in flight waits on its own query
                              longer than --query-threshold
  db-blocked, db-slow-queries, db-idle-in-transaction
                              the same for sessions not tied to a request
  db-request-unmatched        a request in the driver with no backend found
  database-role-limited       the role cannot see other roles' sessions

Exit status: 0 when no finding is critical or a warning, 1 when one is, 2 for
a bad command line.

Examples:
  ferricornctl doctor
  ferricornctl doctor -s /run/app/ferricorn.ctl --probe http://127.0.0.1:8080/
  ferricornctl doctor --config gunicorn.conf.py --since 30 --json \\
      --nginx-config /etc/nginx/sites-enabled/app --error-log /var/log/app.log
  ferricornctl doctor --no-nginx --kubernetes deploy/kubernetes/
  ferricornctl doctor --database-url postgresql://app@127.0.0.1/app
  ferricornctl doctor -s /run/app/ferricorn.ctl --django-settings";

pub fn command() -> Command {
    Command::new(PROG)
        .about(
            "Diagnose worker timeouts: compare ferricorn's settings with nginx's, read the host's \
             state, the logs of the last minutes and the database's sessions, probe URLs, and print \
             findings with their fixes",
        )
        .disable_version_flag(true)
        // The manual below is laid out for 80 columns; wider, clap would re-wrap its lines.
        .max_term_width(80)
        .after_help(MANUAL)
        .arg(
            Arg::new("socket")
                .short('s')
                .long("socket")
                .value_name("PATH")
                .conflicts_with("config")
                .help("The server's control socket [default: as ferricornctl]"),
        )
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .help("Read the settings from this config file instead of a running server"),
        )
        .arg(
            Arg::new("nginx_config")
                .long("nginx-config")
                .value_name("FILE")
                .conflicts_with_all(["nginx_bin", "no_nginx"])
                .help("nginx's configuration file, or saved `nginx -T` output"),
        )
        .arg(
            Arg::new("nginx_bin")
                .long("nginx-bin")
                .value_name("PATH")
                .conflicts_with("no_nginx")
                .help("Run `PATH -T` for nginx's configuration [default: nginx on PATH]"),
        )
        .arg(
            Arg::new("no_nginx")
                .long("no-nginx")
                .action(ArgAction::SetTrue)
                .help("Do not look at nginx"),
        )
        .arg(
            Arg::new("kubernetes")
                .long("kubernetes")
                .value_name("FILE")
                .action(ArgAction::Append)
                .help("Kubernetes manifests to check against the settings (a YAML file or a directory of them; repeatable)"),
        )
        .arg(
            Arg::new("error_log")
                .long("error-log")
                .value_name("FILE")
                .help("The error log [default: the server's errorlog setting]"),
        )
        .arg(
            Arg::new("access_log")
                .long("access-log")
                .value_name("FILE")
                .help("The access log [default: the server's accesslog setting]"),
        )
        .arg(
            Arg::new("since")
                .long("since")
                .value_name("MINUTES")
                .value_parser(value_parser!(u64).range(1..))
                .default_value("60")
                .help("Read log lines of the last MINUTES minutes"),
        )
        .arg(
            Arg::new("probe")
                .long("probe")
                .value_name("URL")
                .action(ArgAction::Append)
                .help("Time GET requests to this http:// URL (repeatable)"),
        )
        .arg(
            Arg::new("probe_count")
                .long("probe-count")
                .value_name("N")
                .value_parser(value_parser!(u64).range(1..=1000))
                .default_value("5")
                .help("Requests per probe URL"),
        )
        .arg(
            Arg::new("probe_timeout")
                .long("probe-timeout")
                .value_name("SECONDS")
                .value_parser(value_parser!(f64))
                .default_value("10")
                .help("Give up on one probe request after this long"),
        )
        .arg(
            Arg::new("timeout")
                .short('t')
                .long("timeout")
                .value_name("SECONDS")
                .value_parser(value_parser!(f64))
                .default_value("10")
                .help("Give up on the control socket or `nginx -T` after this long"),
        )
        .arg(
            Arg::new("database_url")
                .long("database-url")
                .value_name("URL")
                .conflicts_with("django_settings")
                .help("PostgreSQL to read sessions and locks from (postgresql://USER@HOST:PORT/DB)"),
        )
        .arg(
            Arg::new("django_settings")
                .long("django-settings")
                .value_name("MODULE")
                .num_args(0..=1)
                .default_missing_value("")
                .help("Take the database from these Django settings [default MODULE: the server's DJANGO_SETTINGS_MODULE]"),
        )
        .arg(
            Arg::new("psql")
                .long("psql")
                .value_name("PATH")
                .help("The psql client [default: psql on PATH, else /usr/lib/postgresql/*/bin/psql]"),
        )
        .arg(
            Arg::new("query_threshold")
                .long("query-threshold")
                .value_name("SECONDS")
                .value_parser(value_parser!(f64))
                .default_value("1")
                .help("Report queries and idle transactions older than this"),
        )
        .arg(
            Arg::new("json")
                .short('j')
                .long("json")
                .action(ArgAction::SetTrue)
                .help("Print the report as JSON"),
        )
        .arg(
            // Tests point the host-state rules at fake /proc and /sys files: swap and OOM kills cannot
            // be produced on demand on the machine that runs them.
            Arg::new("host_root")
                .long("host-root")
                .value_name("DIR")
                .hide(true),
        )
}

/// How a source fared.
#[derive(Clone, Debug)]
struct Source {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// Find a program on PATH, then in the sbin directories PATH often lacks.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Run `cmd` for at most `timeout`, looking every `nap` whether it ended (killed at the timeout): its
/// exit status (None when it was killed), standard output and standard error. Both pipes are read on
/// threads, so a full pipe cannot stall the child.
pub(crate) fn run_bounded(
    cmd: &mut Process,
    timeout: Duration,
    nap: Duration,
) -> std::io::Result<(Option<std::process::ExitStatus>, String, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = child.stdout.take().map(|o| reader(Box::new(o)));
    let err = child.stderr.take().map(|e| reader(Box::new(e)));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(nap),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// Run `bin -T` within `timeout`: its standard output, or why not.
fn nginx_dump(bin: &Path, timeout: Duration) -> Result<String, String> {
    let (status, stdout, stderr) = run_bounded(
        Process::new(bin).arg("-T"),
        timeout,
        Duration::from_millis(20),
    )
    .map_err(|e| format!("cannot run {} -T: {e}", bin.display()))?;
    match status {
        None => Err(format!(
            "{} -T did not finish within {:.0}s",
            bin.display(),
            timeout.as_secs_f64()
        )),
        Some(st) if !st.success() && stdout.trim().is_empty() => Err(format!(
            "{} -T failed: {}",
            bin.display(),
            stderr.lines().last().unwrap_or("no message").trim()
        )),
        Some(_) => Ok(stdout),
    }
}

/// A log path from the server's settings, made absolute the way the server opened it: relative to
/// the master's working directory.
fn resolve_log_path(p: &str, server: Option<&ServerInfo>) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let pid = server.and_then(|s| s.stats.as_ref()?.pid);
    let base = pid
        .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).ok())
        .or_else(|| server.and_then(|s| s.chdir.as_ref().map(PathBuf::from)))
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    base.join(path)
}

/// Options of one run, read from the command line.
struct Options {
    socket: Option<String>,
    config: Option<String>,
    nginx_config: Option<String>,
    nginx_bin: Option<String>,
    no_nginx: bool,
    kubernetes: Vec<String>,
    error_log: Option<String>,
    access_log: Option<String>,
    since_minutes: u64,
    probes: Vec<String>,
    probe_count: usize,
    probe_timeout: Duration,
    timeout: Duration,
    json: bool,
    host_root: PathBuf,
    database: Option<DatabaseChoice>,
    psql: Option<String>,
    query_threshold: f64,
}

/// Where the database step's connection comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DatabaseChoice {
    Url(String),
    /// Django's settings; the module, or the one the server's environment names.
    Django(Option<String>),
}

fn positive_secs(v: f64) -> Option<Duration> {
    (v.is_finite() && v > 0.0 && v < 86400.0).then(|| Duration::from_secs_f64(v))
}

/// The command's body: `argv[0]` is the program name. Returns the exit status.
pub fn main(argv: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let m = match command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            let text = e.render().to_string();
            if e.use_stderr() {
                let _ = write!(err, "{text}");
            } else {
                let _ = write!(out, "{text}");
            }
            return if e.use_stderr() { USAGE_ERROR } else { 0 };
        }
    };
    let get = |k: &str| m.get_one::<String>(k).cloned();
    let usage = |err: &mut dyn Write, msg: &str| {
        let _ = writeln!(err, "{PROG}: error: {msg}");
        USAGE_ERROR
    };
    let (Some(timeout), Some(probe_timeout)) = (
        m.get_one::<f64>("timeout").copied().and_then(positive_secs),
        m.get_one::<f64>("probe_timeout")
            .copied()
            .and_then(positive_secs),
    ) else {
        return usage(err, "timeouts must be a positive number of seconds");
    };
    let Some(query_threshold) = m
        .get_one::<f64>("query_threshold")
        .copied()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 86400.0)
    else {
        return usage(
            err,
            "--query-threshold must be a number of seconds, 0 or more",
        );
    };
    let database = match (get("database_url"), get("django_settings")) {
        (Some(url), _) => {
            if let Err(e) = database::target_from_url(&url) {
                return usage(err, &e);
            }
            Some(DatabaseChoice::Url(url))
        }
        (None, Some(module)) => Some(DatabaseChoice::Django(
            Some(module).filter(|m| !m.is_empty()),
        )),
        (None, None) => None,
    };
    let opts = Options {
        socket: get("socket"),
        config: get("config"),
        nginx_config: get("nginx_config"),
        nginx_bin: get("nginx_bin"),
        no_nginx: m.get_flag("no_nginx"),
        kubernetes: m
            .get_many::<String>("kubernetes")
            .map(|v| v.cloned().collect())
            .unwrap_or_default(),
        error_log: get("error_log"),
        access_log: get("access_log"),
        since_minutes: m.get_one::<u64>("since").copied().unwrap_or(60),
        probes: m
            .get_many::<String>("probe")
            .map(|v| v.cloned().collect())
            .unwrap_or_default(),
        probe_count: m
            .get_one::<u64>("probe_count")
            .map_or(5, |n| usize::try_from(*n).unwrap_or(5)),
        probe_timeout,
        timeout,
        json: m.get_flag("json"),
        host_root: get("host_root").map_or_else(|| PathBuf::from("/"), PathBuf::from),
        database,
        psql: get("psql"),
        query_threshold,
    };
    let report = diagnose(&opts);
    let text = if opts.json {
        report.json().pretty()
    } else {
        report.human()
    };
    let _ = writeln!(out, "{}", text.trim_end());
    report.exit_status()
}

/// Everything gathered and concluded.
struct Report {
    window_minutes: u64,
    now: i64,
    sources: Vec<Source>,
    server: Option<ServerInfo>,
    nginx: Option<nginx::NginxView>,
    kubernetes: Option<Json>,
    host: Option<host::HostState>,
    log: Option<(String, logs::LogSummary)>,
    access: Option<(String, access::AccessSummary)>,
    probes: Vec<probe::ProbeResult>,
    database: Option<Json>,
    findings: Vec<Finding>,
}

fn diagnose(o: &Options) -> Report {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let since = now - i64::try_from(o.since_minutes.saturating_mul(60)).unwrap_or(i64::MAX);
    let mut sources = Vec::new();
    let mut note = |name: &'static str, r: Result<String, String>| {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        sources.push(Source { name, ok, detail });
    };

    // ferricorn
    let socket_path = match (&o.config, &o.socket) {
        (Some(_), _) => None,
        (None, Some(p)) => Some(std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p))),
        (None, None) => Some(super::default_socket_path_from_env()),
    };
    let server = match (&o.config, &socket_path) {
        (Some(file), _) => config::from_file(file),
        (None, Some(path)) => config::from_socket(path, o.timeout),
        (None, None) => Err(config::ConfigError::Socket("no control socket".to_string())),
    };
    let server = match server {
        Ok(s) => {
            note(
                "ferricorn",
                Ok(format!(
                    "{}: timeout {}s, {} worker(s) x {} thread(s) ({}), listening on {}",
                    s.origin,
                    s.timeout,
                    s.workers,
                    s.app_threads(),
                    s.class.name(),
                    if s.binds.is_empty() {
                        "-".to_string()
                    } else {
                        s.binds.join(", ")
                    }
                )),
            );
            Some(s)
        }
        Err(e) => {
            note("ferricorn", Err(format!("{e}; skipped")));
            None
        }
    };

    // nginx
    let nginx_text: Result<(String, String), String> = if o.no_nginx {
        Err("not asked for (--no-nginx), skipped".to_string())
    } else if let Some(file) = &o.nginx_config {
        let p = Path::new(file);
        if p.is_file() {
            std::fs::read_to_string(p)
                .map(|t| (t, file.clone()))
                .map_err(|e| format!("cannot read {file}: {e}; skipped"))
        } else {
            Err(format!("{file} is not a readable file; skipped"))
        }
    } else {
        let bin = match &o.nginx_bin {
            Some(b) => Some(PathBuf::from(b)),
            None => which("nginx"),
        };
        match bin {
            None => Err("not found, skipped".to_string()),
            Some(b) => nginx_dump(&b, o.timeout)
                .map(|t| (t, format!("{} -T", b.display())))
                .map_err(|e| format!("{e}; skipped")),
        }
    };
    let nginx = match nginx_text.and_then(|(text, origin)| {
        nginx::parse(&text, &origin)
            .map(|d| (nginx::analyze(&d), origin.clone()))
            .map_err(|e| format!("{origin}: {e}; skipped"))
    }) {
        Ok((view, origin)) => {
            note(
                "nginx",
                Ok(format!(
                    "{origin}: {} proxied location(s), {} server block(s)",
                    view.proxies.len(),
                    view.servers.len()
                )),
            );
            Some(view)
        }
        Err(e) => {
            note("nginx", Err(e));
            None
        }
    };

    // kubernetes
    let mut k8s_findings = Vec::new();
    let mut kubernetes = None;
    if !o.kubernetes.is_empty() {
        match kubernetes::read(&o.kubernetes) {
            Ok((objects, files)) => {
                let a = kubernetes::analyze(&objects, o.config.as_deref());
                note("kubernetes", Ok(a.summary(&files)));
                kubernetes = Some(a.json(&files));
                k8s_findings = a.findings;
            }
            Err(e) => note("kubernetes", Err(format!("{e}; skipped"))),
        }
    }

    // host
    let pid = server.as_ref().and_then(|s| s.stats.as_ref()?.pid);
    let host = host::read_host(&o.host_root, pid);
    note(
        "host",
        if host.load.is_none() && host.mem_total_kib.is_none() {
            Err(format!(
                "cannot read {}; skipped",
                host.unreadable.join(", ")
            ))
        } else {
            let mib = |k: Option<u64>| {
                k.map_or("?".to_string(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
            };
            Ok(format!(
                "{} CPU(s), load {}, memory available {} of {}, swap used {}",
                host.cpus,
                host.load
                    .map_or("?".to_string(), |l| format!("{:.2}", l[0])),
                mib(host.mem_available_kib),
                mib(host.mem_total_kib),
                mib(host.swap_used_kib())
            ))
        },
    );

    // logs
    let log_path =
        |given: &Option<String>, setting: Option<&String>, what: &str| -> Result<PathBuf, String> {
            match (given, setting) {
                (Some(f), _) => Ok(PathBuf::from(f)),
                (None, Some(s)) => Ok(resolve_log_path(s, server.as_ref())),
                (None, None) if server.is_some() => {
                    Err(format!(
                "the server has no {what} file (standard error or unset); give --{}, skipped",
                if what == "error log" { "error-log FILE" } else { "access-log FILE" }
            ))
                }
                (None, None) => Err("the server's settings are unknown; skipped".to_string()),
            }
        };
    let log = match log_path(
        &o.error_log,
        server.as_ref().and_then(|s| s.errorlog.as_ref()),
        "error log",
    )
    .and_then(|p| {
        logs::read_tail(&p)
            .map(|(t, cut)| (p.display().to_string(), logs::summarize(&t, since, cut)))
            .map_err(|e| format!("{}: {e}; skipped", p.display()))
    }) {
        Ok((p, s)) => {
            note(
                "error log",
                Ok(format!(
                    "{p}: {} lines in the window, {} WORKER TIMEOUT, {} slow, {} starvation",
                    s.lines_in_window,
                    s.worker_timeouts,
                    s.slow.len(),
                    s.starvation.len()
                )),
            );
            Some((p, s))
        }
        Err(e) => {
            note("error log", Err(e));
            None
        }
    };
    let access = match log_path(
        &o.access_log,
        server.as_ref().and_then(|s| s.accesslog.as_ref()),
        "access log",
    )
    .and_then(|p| {
        logs::read_tail(&p)
            .map(|(t, _)| (p.display().to_string(), access::summarize(&t, since)))
            .map_err(|e| format!("{}: {e}; skipped", p.display()))
    }) {
        Ok((p, s)) => {
            note(
                "access log",
                Ok(format!(
                    "{p}: {} requests in the window, {} for static files",
                    s.requests, s.static_requests
                )),
            );
            Some((p, s))
        }
        Err(e) => {
            note("access log", Err(e));
            None
        }
    };

    let probes: Vec<probe::ProbeResult> = o
        .probes
        .iter()
        .map(|u| probe::probe(u, o.probe_count, o.probe_timeout))
        .collect();

    // database
    let mut db_findings = Vec::new();
    let mut database = None;
    if let Some(choice) = &o.database {
        let live = server
            .as_ref()
            .is_some_and(|s| s.stats.is_some())
            .then_some(socket_path.as_deref())
            .flatten();
        match database_step(o, choice, server.as_ref(), live) {
            Ok((detail, state, analysis)) => {
                note("database", Ok(detail));
                db_findings.extend(analysis.findings.iter().cloned());
                db_findings.extend(database::limited_role(&state, &analysis));
                database = Some(database::state_json(&state, &analysis));
            }
            Err(e) => note("database", Err(format!("{e}; skipped"))),
        }
    }

    let mut found = findings::evaluate(&Inputs {
        server: server.as_ref(),
        nginx: nginx.as_ref(),
        host: Some(&host),
        log: log.as_ref().map(|(_, s)| s),
        access: access.as_ref().map(|(_, s)| s),
        probes: &probes,
        window_minutes: o.since_minutes,
    });
    found.extend(db_findings);
    found.extend(k8s_findings);
    found.sort_by_key(|f| f.severity);
    for s in sources.iter().filter(|s| !s.ok) {
        found.push(Finding {
            id: "source-skipped",
            severity: Severity::Info,
            title: format!("{}: {}", s.name, s.detail),
            evidence: Vec::new(),
            fix: String::new(),
        });
    }
    Report {
        window_minutes: o.since_minutes,
        now,
        sources,
        host: Some(host),
        server,
        nginx,
        kubernetes,
        log,
        access,
        probes,
        database,
        findings: found,
    }
}

/// The database step: connect, read, tie sessions to the server's requests. `Ok` carries the source
/// line, what was read and what was concluded; `Err` the one line saying why not.
fn database_step(
    o: &Options,
    choice: &DatabaseChoice,
    server: Option<&ServerInfo>,
    live_socket: Option<&Path>,
) -> Result<(String, database::DbState, database::Analysis), String> {
    let target = match choice {
        DatabaseChoice::Url(url) => database::target_from_url(url)?,
        DatabaseChoice::Django(module) => {
            // The server's environment as its workers have it: the master's (a systemd unit's
            // EnvironmentFile, say), then raw_env on top.
            let mut env = server
                .and_then(|s| s.stats.as_ref()?.pid)
                .map(database::process_environ)
                .unwrap_or_default();
            env.extend(server.map_or(&[][..], |s| &s.raw_env).iter().cloned());
            let db = database::django_database(
                module.as_deref(),
                &env,
                server.and_then(|s| s.chdir.as_deref()),
                server.map_or(&[][..], |s| &s.pythonpath),
            )
            .map_err(|e| format!("Django settings: {e}"))?;
            database::target_from_django(&db)?
        }
    };
    let psql = match &o.psql {
        Some(p) => PathBuf::from(p),
        None => database::find_psql().ok_or_else(|| {
            format!(
                "{}: psql not found (install postgresql-client, or give --psql PATH)",
                target.display
            )
        })?,
    };
    // The stacks first: asking for them starts the workers' snapshots, which the query's time overlaps.
    let stacks = live_socket
        .map(|p| super::client::fresh_stacks(p, o.timeout).map(|reply| (reply, Instant::now())));
    let state = database::query(&psql, &target, o.timeout)
        .map_err(|e| format!("{}: {e}", target.display))?;
    let answered = Instant::now();
    let (workers, ferricorn_note) = match stacks {
        Some(Ok((reply, at))) if reply.get("status").and_then(Json::as_str) == Some("ok") => {
            let data = reply.get("data").cloned().unwrap_or(Json::Null);
            let later = answered.saturating_duration_since(at).as_secs_f64();
            let w = database::workers_from_stacks(&data, later, state.now);
            let n = w.len();
            (w, format!("{n} worker(s) matched by their connections"))
        }
        Some(Ok((reply, _))) => (
            Vec::new(),
            format!(
                "requests not matched: show stacks failed ({})",
                reply.get("error").and_then(Json::as_str).unwrap_or("error")
            ),
        ),
        Some(Err(e)) => (Vec::new(), format!("requests not matched: {e}")),
        None => (
            Vec::new(),
            "requests not matched: no running server (give -s)".to_string(),
        ),
    };
    let timeout = server.map_or(0, |s| s.timeout);
    let analysis = database::analyze(&state, &workers, o.query_threshold, timeout);
    let count =
        |f: &dyn Fn(&database::Session) -> bool| state.sessions.iter().filter(|s| f(s)).count();
    let detail = format!(
        "{}: PostgreSQL {} as {}: {} session(s), {} active, {} waiting on a lock, {} idle in transaction; {ferricorn_note}",
        target.display,
        state.version,
        state.user,
        state.sessions.len(),
        count(&|s| s.state.as_deref() == Some("active")),
        count(&|s| !s.blocked_by.is_empty()),
        count(&|s| s.state.as_deref().is_some_and(|st| st.starts_with("idle in transaction"))),
    );
    Ok((detail, state, analysis))
}

impl Report {
    fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }

    fn exit_status(&self) -> i32 {
        if self.count(Severity::Critical) + self.count(Severity::Warning) > 0 {
            FOUND
        } else {
            0
        }
    }

    fn human(&self) -> String {
        let mut lines = vec![format!(
            "ferricorn doctor: {} critical, {} warning(s), {} info (logs: last {} min)",
            self.count(Severity::Critical),
            self.count(Severity::Warning),
            self.count(Severity::Info),
            self.window_minutes
        )];
        for f in &self.findings {
            lines.push(String::new());
            lines.push(format!(
                "[{}] {}",
                f.severity.name().to_ascii_uppercase(),
                f.title
            ));
            for e in &f.evidence {
                lines.push(format!("    - {e}"));
            }
            if !f.fix.is_empty() {
                lines.push(format!("    Fix: {}", f.fix));
            }
        }
        lines.push(String::new());
        lines.push("Sources:".to_string());
        for s in &self.sources {
            lines.push(format!("  {:<11} {}", s.name, s.detail));
        }
        lines.join("\n")
    }

    fn json(&self) -> Json {
        let findings = self
            .findings
            .iter()
            .map(|f| {
                obj([
                    ("id", f.id.into()),
                    ("severity", f.severity.name().into()),
                    ("title", f.title.as_str().into()),
                    (
                        "evidence",
                        Json::Arr(f.evidence.iter().map(|e| e.as_str().into()).collect()),
                    ),
                    ("fix", f.fix.as_str().into()),
                ])
            })
            .collect();
        let sources = Json::Obj(
            self.sources
                .iter()
                .map(|s| {
                    (
                        s.name.replace(' ', "_"),
                        obj([("ok", s.ok.into()), ("detail", s.detail.as_str().into())]),
                    )
                })
                .collect(),
        );
        let server = self.server.as_ref().map_or(Json::Null, |s| {
            let stats = s.stats.as_ref().map_or(Json::Null, |st| {
                obj([
                    ("pid", st.pid.into()),
                    ("workers_current", st.workers_current.into()),
                    ("busy_threads", st.busy_threads.into()),
                    ("capacity", st.capacity.into()),
                    ("peak_busy_threads", st.peak_busy_threads.into()),
                    ("peak_waiting", st.peak_waiting.into()),
                ])
            });
            obj([
                ("origin", s.origin.as_str().into()),
                ("timeout", s.timeout.into()),
                ("graceful_timeout", s.graceful_timeout.into()),
                ("keepalive", s.keepalive.into()),
                ("workers", s.workers.into()),
                ("threads", s.threads.into()),
                ("worker_class", s.worker_class.as_str().into()),
                ("threaded", s.threaded().into()),
                ("capacity", s.capacity().into()),
                (
                    "binds",
                    Json::Arr(s.binds.iter().map(|b| b.as_str().into()).collect()),
                ),
                ("errorlog", s.errorlog.clone().into()),
                ("accesslog", s.accesslog.clone().into()),
                ("max_requests", s.max_requests.into()),
                ("max_requests_jitter", s.max_requests_jitter.into()),
                ("slow_request_threshold", s.slow_request_threshold.into()),
                ("stats", stats),
            ])
        });
        let timeout_json = |t: &nginx::Timeout| {
            obj([
                ("seconds", Json::Float(t.secs)),
                ("set_at", t.set_at.clone().into()),
            ])
        };
        let nginx = self.nginx.as_ref().map_or(Json::Null, |n| {
            obj([
                (
                    "proxies",
                    Json::Arr(
                        n.proxies
                            .iter()
                            .map(|p| {
                                obj([
                                    ("server", p.server.as_str().into()),
                                    ("location", p.location.as_str().into()),
                                    ("at", p.at.as_str().into()),
                                    ("proxy_pass", p.proxy_pass.as_str().into()),
                                    (
                                        "upstream",
                                        Json::Arr(
                                            p.upstream.iter().map(|u| u.as_str().into()).collect(),
                                        ),
                                    ),
                                    ("proxy_read_timeout", timeout_json(&p.read_timeout)),
                                    ("proxy_send_timeout", timeout_json(&p.send_timeout)),
                                    ("proxy_connect_timeout", timeout_json(&p.connect_timeout)),
                                ])
                            })
                            .collect(),
                    ),
                ),
                (
                    "static",
                    Json::Arr(
                        n.servers
                            .iter()
                            .map(|s| {
                                let (by, detail) = match &s.static_handler {
                                    nginx::Handler::Proxied { location, at, pass } => {
                                        ("proxied", format!("location {location} ({at}): {pass}"))
                                    }
                                    nginx::Handler::Files { location, at, how } => {
                                        ("nginx", format!("location {location} ({at}): {how}"))
                                    }
                                    nginx::Handler::Other { what } => ("other", what.clone()),
                                };
                                obj([
                                    ("server", s.name.as_str().into()),
                                    ("uri", nginx::STATIC_PROBE_URI.into()),
                                    ("served_by", by.into()),
                                    ("detail", detail.into()),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ])
        });
        let host = self.host.as_ref().map_or(Json::Null, |h| {
            obj([
                ("cpus", h.cpus.into()),
                (
                    "load",
                    h.load.map_or(Json::Null, |l| {
                        Json::Arr(l.iter().map(|x| Json::Float(*x)).collect())
                    }),
                ),
                ("mem_total_kib", h.mem_total_kib.into()),
                ("mem_available_kib", h.mem_available_kib.into()),
                ("swap_total_kib", h.swap_total_kib.into()),
                ("swap_used_kib", h.swap_used_kib().into()),
                ("host_oom_kills", h.host_oom_kills.into()),
                (
                    "cgroup_oom_kills",
                    h.cgroup_oom_kills.as_ref().map(|(n, _)| *n).into(),
                ),
            ])
        });
        let error_log = self.log.as_ref().map_or(Json::Null, |(p, s)| {
            let by_path = s
                .by_path()
                .into_iter()
                .map(|(path, t, sl)| {
                    obj([
                        ("path", path.into()),
                        ("timeouts", t.into()),
                        ("slow", sl.into()),
                    ])
                })
                .collect();
            obj([
                ("path", p.as_str().into()),
                ("lines_in_window", s.lines_in_window.into()),
                ("worker_timeouts", s.worker_timeouts.into()),
                ("timeouts", s.timeouts.len().into()),
                ("slow_requests", s.slow.len().into()),
                ("starvation_warnings", s.starvation.len().into()),
                ("oom_kills", s.oom_kills.len().into()),
                ("by_path", Json::Arr(by_path)),
            ])
        });
        let access_log = self.access.as_ref().map_or(Json::Null, |(p, s)| {
            obj([
                ("path", p.as_str().into()),
                ("requests", s.requests.into()),
                ("static_requests", s.static_requests.into()),
            ])
        });
        let probes = self
            .probes
            .iter()
            .map(|p| {
                obj([
                    ("url", p.url.as_str().into()),
                    ("error", p.error.as_ref().map(ToString::to_string).into()),
                    ("requests", p.samples.len().into()),
                    ("failures", p.failures().into()),
                    ("server_errors", p.server_errors().into()),
                    ("p50_seconds", p.p50().into()),
                    ("p99_seconds", p.p99().into()),
                    (
                        "statuses",
                        Json::Arr(
                            p.samples
                                .iter()
                                .map(|s| match &s.status {
                                    Ok(c) => Json::Int(i64::from(*c)),
                                    Err(e) => e.to_string().into(),
                                })
                                .collect(),
                        ),
                    ),
                ])
            })
            .collect();
        obj([
            ("time", self.now.into()),
            ("window_minutes", self.window_minutes.into()),
            ("exit_status", self.exit_status().into()),
            (
                "summary",
                obj([
                    ("critical", self.count(Severity::Critical).into()),
                    ("warning", self.count(Severity::Warning).into()),
                    ("info", self.count(Severity::Info).into()),
                ]),
            ),
            ("findings", Json::Arr(findings)),
            ("sources", sources),
            ("server", server),
            ("nginx", nginx),
            ("kubernetes", self.kubernetes.clone().unwrap_or(Json::Null)),
            ("host", host),
            ("error_log", error_log),
            ("access_log", access_log),
            ("probes", Json::Arr(probes)),
            ("database", self.database.clone().unwrap_or(Json::Null)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (i32, String, String) {
        crate::control::run_cli(main, PROG, args)
    }

    #[test]
    fn usage_errors() {
        assert_eq!(run(&["--bogus"]).0, USAGE_ERROR);
        assert_eq!(run(&["-s", "x", "--config", "y"]).0, USAGE_ERROR);
        assert_eq!(run(&["--since", "0"]).0, USAGE_ERROR);
        assert_eq!(run(&["--probe-timeout", "-1"]).0, USAGE_ERROR);
        let (code, out, _) = run(&["--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("nginx-timeout-shorter"), "{out}");
        assert!(out.contains("db-request-blocked"), "{out}");
        // Laid out for 80 columns, and no line re-wrapped by clap (a wrapped line would start a
        // line with a word at the indentation of neither column).
        for line in out.lines() {
            assert!(
                line.chars().count() <= 80,
                "longer than 80 columns: {line:?}"
            );
        }
        assert!(
            !out.contains("\n  else\n") && !out.contains("\n  the\n"),
            "{out}"
        );
        assert_eq!(run(&["--query-threshold", "-1"]).0, USAGE_ERROR);
        assert_eq!(run(&["--database-url", "mysql://x/y"]).0, USAGE_ERROR);
        assert_eq!(
            run(&["--database-url", "postgresql://x/y", "--django-settings"]).0,
            USAGE_ERROR
        );
    }

    #[test]
    fn nothing_readable_is_not_a_crash() {
        let empty = std::env::temp_dir().join(format!("fcn-doctor-empty-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&empty);
        let (code, out, _) = run(&[
            "-s",
            "/nonexistent/x.ctl",
            "--no-nginx",
            "--host-root",
            &empty.display().to_string(),
            "--json",
        ]);
        assert_eq!(code, 0, "{out}");
        let j = Json::parse(&out).unwrap();
        let f = j.get("findings").and_then(Json::as_array).unwrap();
        assert!(f
            .iter()
            .all(|f| f.get("severity").and_then(Json::as_str) == Some("info")));
        assert!(
            out.contains("cannot connect to /nonexistent/x.ctl"),
            "{out}"
        );
        let _ = std::fs::remove_dir_all(empty);
    }
}
