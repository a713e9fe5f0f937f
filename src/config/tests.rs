//! End-to-end tests of `from_args`: flags, defaults, environment, precedence, errors, help and
//! `--print-config`. The environment is injected, so these never read the real one.

use std::collections::HashMap;

use super::*;

const VERSION: &str = "1.2.3";

fn argv(args: &[&str]) -> Vec<String> {
    std::iter::once("ferricorn")
        .chain(args.iter().copied())
        .map(String::from)
        .collect()
}

fn run_env(args: &[&str], vars: &[(&str, &str)]) -> Result<Action, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = move |k: &str| map.get(k).cloned();
    from_args(&argv(args), &env, VERSION)
}

fn cfg_env(args: &[&str], vars: &[(&str, &str)]) -> Config {
    match run_env(args, vars) {
        Ok(Action::Run(c)) | Ok(Action::PrintConfig(c)) => c,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn cfg(args: &[&str]) -> Config {
    cfg_env(args, &[])
}

fn err_env(args: &[&str], vars: &[(&str, &str)]) -> String {
    match run_env(args, vars) {
        Err(e) => {
            assert_eq!(e.exit_code, 2, "{}", e.message);
            assert!(!e.message.contains('\n'), "not one line: {:?}", e.message);
            assert!(e.message.starts_with("ferricorn: error: "), "{}", e.message);
            e.message
        }
        Ok(a) => panic!("{args:?} should fail, got {a:?}"),
    }
}

fn err(args: &[&str]) -> String {
    err_env(args, &[])
}

fn tcp(host: &str, port: u16) -> BindAddress {
    BindAddress::Tcp {
        host: host.into(),
        port,
    }
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults() {
    let c = cfg(&[]);
    assert_eq!(c, Config::default());
    assert_eq!(c.app_uri, None);
    assert_eq!(c.binds, vec![tcp("127.0.0.1", 8000)]);
    assert_eq!(c.workers, 1);
    assert_eq!(c.worker_class, WorkerClass::Sync);
    assert_eq!(c.threads, 1);
    assert_eq!(c.timeout, 30);
    assert_eq!(c.graceful_timeout, 30);
    assert_eq!(c.keepalive, 2);
    assert_eq!(c.backlog, 2048);
    assert_eq!(c.worker_connections, 1000);
    assert_eq!(c.chdir, None);
    assert!(c.pythonpath.is_empty());
    assert!(c.raw_env.is_empty());
    assert_eq!(c.accesslog, None);
    assert_eq!(
        c.access_log_format,
        r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#
    );
    assert_eq!(c.errorlog, "-");
    assert_eq!(c.loglevel, "info");
    assert_eq!(c.limit_request_line, 4094);
    assert_eq!(c.limit_request_fields, 100);
    assert_eq!(c.limit_request_field_size, 8190);
    assert_eq!(c.forwarded_allow_ips, vec!["127.0.0.1", "::1"]);
    assert_eq!(c.proc_name, None);
    assert_eq!(c.pidfile, None);
    assert!(!c.check_config && !c.print_config && !c.preload_app && !c.permit_missing_host);
    assert_eq!(c.config_file, None);
    assert_eq!((c.max_requests, c.max_requests_jitter), (0, 0));
    assert_eq!(
        c.secure_scheme_headers,
        pairs(&[
            ("X-FORWARDED-PROTOCOL", "ssl"),
            ("X-FORWARDED-PROTO", "https"),
            ("X-FORWARDED-SSL", "on"),
        ])
    );
}

#[test]
fn app_module_forms() {
    for app in [
        "myapp:app",
        "myapp",
        "pkg.mod:create()",
        "pkg.mod:create(1, kw=2)",
    ] {
        assert_eq!(cfg(&[app]).app_uri.as_deref(), Some(app));
    }
    assert_eq!(cfg(&["-w", "2", "a:b"]).app_uri.as_deref(), Some("a:b"));
    assert_eq!(cfg(&["--", "a:b"]).app_uri.as_deref(), Some("a:b"));
    let e = err(&["a:b", "c:d"]);
    assert!(e.contains("'c:d'"), "{e}");
}

#[test]
fn every_flag() {
    let tmp = std::env::temp_dir();
    let tmp_s = tmp.to_string_lossy().to_string();
    let c = cfg(&[
        "-b",
        "0.0.0.0:9000",
        "--bind",
        "unix:/tmp/s.sock",
        "-w",
        "4",
        "-k",
        "gthread",
        "--threads",
        "3",
        "-t",
        "60",
        "--graceful-timeout",
        "5",
        "--keep-alive",
        "7",
        "--backlog",
        "64",
        "--worker-connections",
        "50",
        "--chdir",
        &tmp_s,
        "--pythonpath",
        "a, b,,c",
        "-e",
        "A=1",
        "--env",
        "B=x=y",
        "--access-logfile",
        "-",
        "--access-logformat",
        "%(h)s %(r)s",
        "--error-logfile",
        "/tmp/err.log",
        "--log-level",
        "DEBUG",
        "--limit-request-line",
        "0",
        "--limit-request-fields",
        "200",
        "--limit-request-field_size",
        "0",
        "--forwarded-allow-ips",
        "10.0.0.1,10.0.0.2",
        "-n",
        "myproc",
        "-p",
        "/tmp/f.pid",
        "--check-config",
        "-c",
        "conf.py",
        "--max-requests",
        "1000",
        "--max-requests-jitter",
        "50",
        "--preload",
        "--permit-missing-host",
        "app:main",
    ]);
    assert_eq!(
        c.binds,
        vec![
            tcp("0.0.0.0", 9000),
            BindAddress::Unix("/tmp/s.sock".into())
        ]
    );
    assert_eq!(c.workers, 4);
    assert_eq!(c.worker_class, WorkerClass::Gthread);
    assert_eq!(c.threads, 3);
    assert_eq!(c.timeout, 60);
    assert_eq!(c.graceful_timeout, 5);
    assert_eq!(c.keepalive, 7);
    assert_eq!(c.backlog, 64);
    assert_eq!(c.worker_connections, 50);
    assert_eq!(c.chdir, Some(tmp));
    assert_eq!(c.pythonpath, vec!["a", "b", "c"]);
    assert_eq!(c.raw_env, pairs(&[("A", "1"), ("B", "x=y")]));
    assert_eq!(c.accesslog.as_deref(), Some("-"));
    assert_eq!(c.access_log_format, "%(h)s %(r)s");
    assert_eq!(c.errorlog, "/tmp/err.log");
    assert_eq!(c.loglevel, "debug");
    assert_eq!(c.limit_request_line, 0);
    assert_eq!(c.limit_request_fields, 200);
    assert_eq!(c.limit_request_field_size, 0);
    assert_eq!(c.forwarded_allow_ips, vec!["10.0.0.1", "10.0.0.2"]);
    assert_eq!(c.proc_name.as_deref(), Some("myproc"));
    assert_eq!(c.pidfile, Some("/tmp/f.pid".into()));
    assert!(c.check_config);
    assert_eq!(c.config_file.as_deref(), Some("conf.py"));
    assert_eq!(c.max_requests, 1000);
    assert_eq!(c.max_requests_jitter, 50);
    assert!(c.preload_app);
    assert!(c.permit_missing_host);
    assert_eq!(c.app_uri.as_deref(), Some("app:main"));
}

#[test]
fn spellings() {
    assert_eq!(cfg(&["--workers=3"]).workers, 3);
    assert_eq!(cfg(&["-w3"]).workers, 3);
    assert_eq!(cfg(&["--timeout", "0"]).timeout, 0);
    assert_eq!(cfg(&["--log-file", "x.log"]).errorlog, "x.log");
    assert_eq!(
        cfg(&["--limit-request-field-size", "10"]).limit_request_field_size,
        10
    );
    // Unambiguous prefixes, as argparse allows.
    assert_eq!(cfg(&["--graceful", "5"]).graceful_timeout, 5);
    assert!(err(&["--work", "5"]).contains("'--work'"));
    // Last one wins for single-valued settings.
    assert_eq!(cfg(&["-w", "2", "-w", "6"]).workers, 6);
    assert_eq!(
        cfg(&["--limit-request-fields", "0"]).limit_request_fields,
        32768
    );
    assert_eq!(cfg(&["--log-level", "critical"]).loglevel, "critical");
    assert_eq!(
        cfg(&["--forwarded-allow-ips", "*"]).forwarded_allow_ips,
        vec!["*"]
    );
}

#[test]
fn bind_forms() {
    assert_eq!(
        cfg(&["-b", "example.com"]).binds,
        vec![tcp("example.com", 8000)]
    );
    assert_eq!(cfg(&["-b", "[::1]:9"]).binds, vec![tcp("::1", 9)]);
    assert_eq!(cfg(&["-b", "[::1]"]).binds, vec![tcp("::1", 8000)]);
    assert_eq!(cfg(&["-b", "fd://3"]).binds, vec![BindAddress::Fd(3)]);
    for (bad, what) in [
        ("h:70000", "70000"),
        ("", "empty"),
        ("fd://x", "file descriptor"),
        ("h:abc", "abc"),
        ("::1", "brackets"),
    ] {
        let e = err(&["-b", bad]);
        assert!(
            e.contains("argument -b/--bind: ") && e.contains(what),
            "{e}"
        );
    }
}

#[test]
fn worker_classes() {
    for (k, want) in [
        ("sync", WorkerClass::Sync),
        ("gthread", WorkerClass::Gthread),
        ("gunicorn.workers.sync.SyncWorker", WorkerClass::Sync),
        (
            "gunicorn.workers.gthread.ThreadWorker",
            WorkerClass::Gthread,
        ),
        ("egg:gunicorn#sync", WorkerClass::Sync),
        ("egg:gunicorn#gthread", WorkerClass::Gthread),
        ("asgi", WorkerClass::Asgi),
        ("uvicorn.workers.UvicornWorker", WorkerClass::Asgi),
        ("uvicorn.workers.UvicornH11Worker", WorkerClass::Asgi),
        ("uvicorn_worker.UvicornWorker", WorkerClass::Asgi),
        ("gunicorn.workers.gasgi.ASGIWorker", WorkerClass::Asgi),
    ] {
        assert_eq!(cfg(&["-k", k]).worker_class, want, "{k}");
    }
    for k in ["gevent", "eventlet"] {
        let c = cfg(&["-k", k]);
        assert_eq!(c.worker_class, WorkerClass::Gthread, "{k}");
        assert_eq!(c.green_class(), Some(k));
        // Elastic threads up to the connections a worker holds.
        assert_eq!(c.max_threads_per_worker(), 1000);
        assert_eq!(
            cfg(&["-k", k, "--worker-connections", "50", "--threads", "4"])
                .max_threads_per_worker(),
            50
        );
    }
    for k in ["tornado", "uvicorn.workers.Unknown"] {
        let e = err(&["-k", k]);
        assert!(
            e.contains("argument -k/--worker-class: ")
                && e.contains(&format!("worker class '{k}' is not supported")),
            "{e}"
        );
    }
}

#[test]
fn sync_with_threads_is_gthread() {
    assert_eq!(cfg(&["--threads", "4"]).worker_class, WorkerClass::Gthread);
    assert_eq!(
        cfg(&["--threads", "4", "-k", "sync"]).worker_class,
        WorkerClass::Gthread
    );
    assert_eq!(
        cfg(&["-k", "gunicorn.workers.sync.SyncWorker", "--threads", "2"]).worker_class,
        WorkerClass::Gthread
    );
    assert_eq!(cfg(&["--threads", "1"]).worker_class, WorkerClass::Sync);
    assert_eq!(
        cfg(&["-k", "gthread", "--threads", "1"]).worker_class,
        WorkerClass::Gthread
    );
    // gunicorn prints the class as given.
    let c = cfg(&["--threads", "4"]);
    assert!(normalized(&c.print_config()).contains(&"worker_class = sync".to_string()));
}

#[test]
fn a_worker_class_knows_its_name_and_threads() {
    let c = cfg(&["--threads", "4"]);
    assert_eq!(
        (c.worker_class.name(), c.worker_class.threads(c.threads)),
        ("gthread", 4)
    );
    let c = cfg(&[]);
    assert_eq!(
        (c.worker_class.name(), c.worker_class.threads(c.threads)),
        ("sync", 1)
    );
    assert_eq!(WorkerClass::Gthread.threads(0), 1);
    assert_eq!(WorkerClass::Sync.threads(8), 1);
    assert_eq!(WorkerClass::Sync.with_threads(2), WorkerClass::Gthread);
    assert_eq!(WorkerClass::Gthread.with_threads(1), WorkerClass::Gthread);
}

#[test]
fn bad_values_name_the_flag() {
    assert_eq!(
        err(&["-w", "abc"]),
        "ferricorn: error: argument -w/--workers: invalid int value: 'abc'"
    );
    let cases: &[(&[&str], &str)] = &[
        (&["-w", "0"], "argument -w/--workers: "),
        (&["-w", "-1"], "argument -w/--workers: "),
        (&["--threads", "0"], "argument --threads: "),
        (&["-t", "x"], "argument -t/--timeout: "),
        (&["--timeout", "-5"], "argument -t/--timeout: "),
        (
            &["--graceful-timeout", "1.5"],
            "argument --graceful-timeout: ",
        ),
        (&["--keep-alive", ""], "argument --keep-alive: "),
        (&["--backlog", "99999999999"], "argument --backlog: "),
        (
            &["--worker-connections", "0"],
            "argument --worker-connections: ",
        ),
        (
            &["--limit-request-line", "8k"],
            "argument --limit-request-line: ",
        ),
        (
            &["--limit-request-fields=-1"],
            "argument --limit-request-fields: ",
        ),
        (
            &["--limit-request-field_size", "-1"],
            "argument --limit-request-field_size: ",
        ),
        (&["--max-requests", "many"], "argument --max-requests: "),
        (
            &["--max-requests-jitter", "-1"],
            "argument --max-requests-jitter: ",
        ),
        (
            &["--log-level", "loud"],
            "argument --log-level: invalid choice: 'loud'",
        ),
        (
            &["-e", "NOEQUALS"],
            "argument -e/--env: invalid value: 'NOEQUALS'",
        ),
        (&["-e", "=v"], "argument -e/--env: "),
        (
            &["--forwarded-allow-ips", "nope"],
            "argument --forwarded-allow-ips: ",
        ),
        (&["--chdir", "/no/such/dir/anywhere"], "argument --chdir: "),
        (&["-k", "nope"], "argument -k/--worker-class: "),
    ];
    for (args, want) in cases {
        let e = err(args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert!(err(&["--limit-request-line=-1"]).contains("argument --limit-request-line: "));
}

#[test]
fn command_line_errors_are_one_line() {
    let e = err(&["--bogus"]);
    assert!(e.contains("unrecognized argument: '--bogus'"), "{e}");
    let e = err(&["--wrkers", "2"]);
    assert!(
        e.contains("'--wrkers'") && e.contains("did you mean '--workers'"),
        "{e}"
    );
    assert_eq!(
        err(&["-w"]),
        "ferricorn: error: argument -w/--workers: expected one argument"
    );
    let e = err(&["--error-logfile"]);
    assert!(
        e.contains("argument --error-logfile/--log-file: expected one argument"),
        "{e}"
    );
    let e = err(&["--preload=yes"]);
    assert!(e.contains("argument --preload: takes no value"), "{e}");
    let e = err(&["-x"]);
    assert!(e.contains("'-x'"), "{e}");
    // An ambiguous prefix is refused rather than guessed.
    let e = err(&["--log", "x"]);
    assert!(e.contains("'--log'"), "{e}");
}

#[test]
fn port_env() {
    assert_eq!(
        cfg_env(&[], &[("PORT", "5000")]).binds,
        vec![tcp("0.0.0.0", 5000)]
    );
    // An explicit bind wins, and then PORT is not even looked at.
    assert_eq!(
        cfg_env(&["-b", "127.0.0.1:1"], &[("PORT", "5000")]).binds,
        vec![tcp("127.0.0.1", 1)]
    );
    assert_eq!(
        cfg_env(&["-b", "h"], &[("PORT", "junk")]).binds,
        vec![tcp("h", 8000)]
    );
    assert_eq!(
        cfg_env(&[], &[("PORT", "")]).binds,
        vec![tcp("127.0.0.1", 8000)]
    );
    let e = err_env(&[], &[("PORT", "junk")]);
    assert!(
        e.contains("environment variable PORT: ") && e.contains("junk"),
        "{e}"
    );
    let e = err_env(&[], &[("PORT", "70000")]);
    assert!(e.contains("PORT") && e.contains("out of range"), "{e}");
}

#[test]
fn web_concurrency_env() {
    assert_eq!(cfg_env(&[], &[("WEB_CONCURRENCY", "8")]).workers, 8);
    assert_eq!(
        cfg_env(&["-w", "2"], &[("WEB_CONCURRENCY", "8")]).workers,
        2
    );
    assert_eq!(
        cfg_env(&["-w", "2"], &[("WEB_CONCURRENCY", "x")]).workers,
        2
    );
    let e = err_env(&[], &[("WEB_CONCURRENCY", "x")]);
    assert!(
        e.contains("environment variable WEB_CONCURRENCY: invalid int value: 'x'"),
        "{e}"
    );
    let e = err_env(&[], &[("WEB_CONCURRENCY", "0")]);
    assert!(e.contains("WEB_CONCURRENCY"), "{e}");
}

#[test]
fn forwarded_allow_ips_env() {
    assert_eq!(
        cfg_env(&[], &[("FORWARDED_ALLOW_IPS", "10.1.1.1, 10.1.1.2")]).forwarded_allow_ips,
        vec!["10.1.1.1", "10.1.1.2"]
    );
    assert_eq!(
        cfg_env(&[], &[("FORWARDED_ALLOW_IPS", "*")]).forwarded_allow_ips,
        vec!["*"]
    );
    assert!(cfg_env(&[], &[("FORWARDED_ALLOW_IPS", "")])
        .forwarded_allow_ips
        .is_empty());
    assert_eq!(
        cfg_env(
            &["--forwarded-allow-ips", "1.1.1.1"],
            &[("FORWARDED_ALLOW_IPS", "*")]
        )
        .forwarded_allow_ips,
        vec!["1.1.1.1"]
    );
    let e = err_env(&[], &[("FORWARDED_ALLOW_IPS", "bogus")]);
    assert!(e.contains("FORWARDED_ALLOW_IPS"), "{e}");
}

#[test]
fn proxy_protocol_flags() {
    let c = cfg(&["app:x"]);
    assert_eq!(c.proxy_protocol, "off");
    assert_eq!(c.proxy_allow_ips, vec!["127.0.0.1", "::1"]);
    // Alone the flag means auto, as gunicorn's; it does not take the next flag as its value.
    assert_eq!(cfg(&["app:x", "--proxy-protocol"]).proxy_protocol, "auto");
    assert_eq!(
        cfg(&["--proxy-protocol", "-w", "2", "app:x"]).proxy_protocol,
        "auto"
    );
    for (given, mode) in [
        ("v1", "v1"),
        ("V2", "v2"),
        ("true", "auto"),
        ("false", "off"),
    ] {
        assert_eq!(
            cfg(&["--proxy-protocol", given, "app:x"]).proxy_protocol,
            mode
        );
    }
    assert_eq!(cfg(&["--proxy-protocol=v2", "app:x"]).proxy_protocol, "v2");
    let e = err(&["--proxy-protocol", "v3", "app:x"]);
    assert!(
        e.contains("argument --proxy-protocol: invalid choice: 'v3'"),
        "{e}"
    );
    let c = cfg(&["--proxy-allow-from", "10.0.0.0/8, 0:0::1,*", "app:x"]);
    assert_eq!(c.proxy_allow_ips, vec!["10.0.0.0/8", "::1", "*"]);
    let e = err(&["--proxy-allow-from", "10.0.0.1/8", "app:x"]);
    assert!(
        e.contains("argument --proxy-allow-from: ") && e.contains("host bits"),
        "{e}"
    );
}

#[test]
fn cmd_args_precedence() {
    let g = (
        "GUNICORN_CMD_ARGS",
        "-w 2 --timeout 10 -b 1.1.1.1:1 -b 2.2.2.2:2",
    );
    let f = ("FERRICORN_CMD_ARGS", "-w 3 --keep-alive 9");
    let c = cfg_env(&[], &[g]);
    assert_eq!((c.workers, c.timeout), (2, 10));
    assert_eq!(c.binds, vec![tcp("1.1.1.1", 1), tcp("2.2.2.2", 2)]);
    // FERRICORN_CMD_ARGS wins over GUNICORN_CMD_ARGS, settings it does not name stay.
    let c = cfg_env(&[], &[g, f]);
    assert_eq!((c.workers, c.timeout, c.keepalive), (3, 10, 9));
    // The real command line wins over both; a repeated flag replaces, not extends, the list.
    let c = cfg_env(&["-w", "4", "-b", "3.3.3.3:3"], &[g, f]);
    assert_eq!((c.workers, c.timeout, c.keepalive), (4, 10, 9));
    assert_eq!(c.binds, vec![tcp("3.3.3.3", 3)]);
    // CMD_ARGS beat the environment-derived defaults.
    let c = cfg_env(&[], &[("WEB_CONCURRENCY", "7"), g]);
    assert_eq!(c.workers, 2);
    let c = cfg_env(&[], &[("PORT", "1234"), ("FERRICORN_CMD_ARGS", "-b :80")]);
    assert_eq!(c.binds, vec![tcp("0.0.0.0", 80)]);
}

#[test]
fn cmd_args_quoting_and_errors() {
    let c = cfg_env(
        &[],
        &[(
            "GUNICORN_CMD_ARGS",
            r#"--access-logformat '%(h)s "%(r)s"' -n "my app" --preload"#,
        )],
    );
    assert_eq!(c.access_log_format, r#"%(h)s "%(r)s""#);
    assert_eq!(c.proc_name.as_deref(), Some("my app"));
    assert!(c.preload_app);
    let e = err_env(&[], &[("FERRICORN_CMD_ARGS", "-w 'abc")]);
    assert!(
        e.contains("FERRICORN_CMD_ARGS: ") && e.contains("quote"),
        "{e}"
    );
    let e = err_env(&[], &[("GUNICORN_CMD_ARGS", "-w abc")]);
    assert_eq!(
        e,
        "ferricorn: error: GUNICORN_CMD_ARGS: argument -w/--workers: invalid int value: 'abc'"
    );
    let e = err_env(&[], &[("FERRICORN_CMD_ARGS", "--nope")]);
    assert!(
        e.contains("FERRICORN_CMD_ARGS: unrecognized argument: '--nope'"),
        "{e}"
    );
    // Empty is fine.
    assert_eq!(
        cfg_env(&[], &[("FERRICORN_CMD_ARGS", "  ")]),
        Config::default()
    );
}

#[test]
fn help_lists_every_flag() {
    let text = match run_env(&["--help"], &[]) {
        Ok(Action::Help(t)) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(run_env(&["-h"], &[]), Ok(Action::Help(text.clone())));
    // Help wins even when a value would be refused.
    assert_eq!(
        run_env(&["-w", "abc", "-h"], &[]),
        Ok(Action::Help(text.clone()))
    );
    assert!(text.contains("1.2.3"), "{text}");
    // clap wraps long lines, so compare with runs of whitespace squeezed.
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let flat = squeeze(&text);
    for s in SETTINGS {
        for flag in s.cli {
            assert!(text.contains(flag), "help lacks {flag}");
        }
        if s.kind != Kind::FileOnly {
            assert!(
                flat.contains(&squeeze(s.help)),
                "help lacks help of {}",
                s.name
            );
        }
        if matches!(s.kind, Kind::Value | Kind::Repeated) {
            let default = squeeze(&format!("[default: {}]", s.default));
            assert!(flat.contains(&default), "help lacks default of {}", s.name);
        }
    }
    for word in ["-h, --help", "-v, --version", "APP_MODULE", "Examples:"] {
        assert!(text.contains(word), "help lacks {word}");
    }
    for section in Section::ALL {
        assert!(
            text.contains(&format!("{}:", section.title())),
            "{section:?}"
        );
    }
    assert!(!text.contains('\u{1b}'), "help has escape codes");
}

#[test]
fn version() {
    assert_eq!(
        run_env(&["-v"], &[]),
        Ok(Action::Version("ferricorn (version 1.2.3)".into()))
    );
    assert_eq!(
        run_env(&["--version", "app:x"], &[]),
        Ok(Action::Version("ferricorn (version 1.2.3)".into()))
    );
}

#[test]
fn current_configuration_record() {
    let c = match run_env(&["-w", "3", "-b", "[::1]:81", "app:x"], &[]) {
        Ok(Action::Run(c)) => c,
        other => panic!("{other:?}"),
    };
    let text = c.current_configuration_with(&[("on_starting", "None".to_string())]);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("Current configuration:"));
    let rest: Vec<&str> = lines.collect();
    assert_eq!(rest.len(), SETTINGS.len() + 1);
    assert!(
        rest.iter().all(|l| l.starts_with("  ") && l.contains(": ")),
        "{text}"
    );
    let names: Vec<&str> = rest
        .iter()
        .map(|l| l.trim_start().split(": ").next().unwrap_or(""))
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    for want in [
        "  workers: 3",
        "  bind: ['[::1]:81']",
        "  on_starting: None",
    ] {
        assert!(rest.contains(&want), "missing {want:?} in\n{text}");
    }
    assert!(!text.ends_with('\n'));
}

#[test]
fn print_config_action_and_format() {
    let c = match run_env(
        &["--print-config", "-w", "3", "-b", "[::1]:81", "app:x"],
        &[],
    ) {
        Ok(Action::PrintConfig(c)) => c,
        other => panic!("{other:?}"),
    };
    assert!(c.print_config);
    let out = c.print_config();
    assert!(out.ends_with('\n'));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), SETTINGS.len());
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.split(" = ").next().unwrap_or("").trim_end())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    // " = " sits in the same column on every line.
    let col = lines[0].find(" = ");
    assert!(lines.iter().all(|l| l.find(" = ") == col), "{out}");
    for want in [
        "workers = 3",
        "bind = ['[::1]:81']",
        "wsgi_app = app:x",
        "print_config = True",
        "preload_app = False",
        "accesslog = None",
        "forwarded_allow_ips = ['127.0.0.1', '::1']",
        "raw_env = []",
        "secure_scheme_headers = {'X-FORWARDED-PROTOCOL': 'ssl', 'X-FORWARDED-PROTO': 'https', 'X-FORWARDED-SSL': 'on'}",
        r#"access_log_format = %(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#,
        "errorlog = -",
        "loglevel = info",
    ] {
        assert!(normalized(&out).contains(&want.to_string()), "missing {want:?} in\n{out}");
    }
}

#[test]
fn check_config_runs() {
    match run_env(&["--check-config", "app:x"], &[]) {
        Ok(Action::Run(c)) => assert!(c.check_config),
        other => panic!("{other:?}"),
    }
}

#[test]
fn command_line_can_be_applied_after_a_config_file() {
    // The order the config-file step will use: defaults, environment defaults, file, command line.
    let env = |k: &str| match k {
        "WEB_CONCURRENCY" => Some("9".to_string()),
        _ => None,
    };
    let cl = match parse_command_line(&argv(&["-c", "x.py", "--threads", "2"]), &env) {
        Ok(cl) => cl,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(cl.value("config"), Some(&SettingValue::Str("x.py".into())));
    let mut c = Config::default();
    cli::apply_env_defaults(&mut c, &env, &|n| cl.given(n)).unwrap();
    assert_eq!(apply_setting(&mut c, "threads", 8i64.into()), Ok(true));
    assert_eq!(apply_setting(&mut c, "timeout", 99i64.into()), Ok(true));
    cl.apply(&mut c).unwrap();
    assert_eq!((c.threads, c.timeout, c.workers), (2, 99, 9));
    assert_eq!(c.worker_class, WorkerClass::Gthread);
}

/// `--print-config` lines with the padding before `=` collapsed, so checks do not depend on the width of
/// the longest setting name.
fn normalized(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| match l.split_once(" = ") {
            Some((name, value)) => format!("{} = {value}", name.trim_end()),
            None => l.to_string(),
        })
        .collect()
}

#[test]
fn limits_above_gunicorns_maximum_are_kept_and_named() {
    // gunicorn accepts these and uses its ceiling; so does ferricorn, with one warning each.
    let c = cfg(&[
        "--limit-request-line",
        "8200",
        "--limit-request-fields",
        "40000",
    ]);
    assert_eq!(
        (c.limit_request_line, c.limit_request_fields),
        (8200, 40000)
    );
    assert_eq!(
        super::settings::limits_above_maximum(&c),
        vec![
            "limit_request_line 8200 is above its maximum, 8190: 8190 is used",
            "limit_request_fields 40000 is above its maximum, 32768: 32768 is used",
        ]
    );
    let at_max = cfg(&[
        "--limit-request-line",
        "8190",
        "--limit-request-fields",
        "32768",
    ]);
    assert!(super::settings::limits_above_maximum(&at_max).is_empty());
    // 0 is gunicorn's "no limit" (request line) or its ceiling (fields): nothing to warn about.
    let zero = cfg(&["--limit-request-line", "0", "--limit-request-fields", "0"]);
    assert!(super::settings::limits_above_maximum(&zero).is_empty());
    // The parser enforces the ceilings.
    let opts = crate::http::ParserOptions {
        limit_request_line: c.limit_request_line,
        limit_request_fields: c.limit_request_fields,
        ..Default::default()
    };
    assert_eq!(
        (opts.request_line_limit(), opts.fields_limit()),
        (8190, 32768)
    );
}

#[test]
fn elastic_ceilings() {
    assert_eq!(cfg(&[]).max_threads_per_worker(), 1);
    assert_eq!(cfg(&["-k", "asgi"]).max_threads_per_worker(), 1);
    assert_eq!(cfg(&["--threads", "8"]).max_threads_per_worker(), 32);
    assert_eq!(
        cfg(&["--threads", "8", "--max-threads", "8"]).max_threads_per_worker(),
        8
    );
    assert_eq!(
        cfg(&["--threads", "8", "--max-threads", "auto"]).max_threads_per_worker(),
        32
    );
    assert_eq!(
        cfg(&["--threads", "8", "--worker-connections", "20"]).max_threads_per_worker(),
        20
    );
    // Never below the threads a worker starts with, whatever the connections.
    assert_eq!(
        cfg(&["--threads", "8", "--worker-connections", "4"]).max_threads_per_worker(),
        8
    );
    assert_eq!(
        cfg(&["-w", "2", "--max-workers", "5"]).max_workers_for(2),
        5
    );
    assert_eq!(cfg(&["-w", "2"]).max_workers_for(2), 2);
    // TTIN above the ceiling: the base wins.
    assert_eq!(
        cfg(&["-w", "2", "--max-workers", "5"]).max_workers_for(7),
        7
    );
    for (args, says) in [
        (
            &["--threads", "4", "--max-threads", "2"][..],
            "argument --max-threads: 2 is below --threads 4",
        ),
        (
            &["--max-threads", "3"][..],
            "argument --max-threads: the sync worker class runs no thread pool",
        ),
        (
            &["-w", "4", "--max-workers", "3"][..],
            "argument --max-workers: 3 is below --workers 4",
        ),
    ] {
        let e = err(args);
        assert!(
            e.starts_with("ferricorn: error: ") && e.contains(says),
            "{e}"
        );
    }
}
