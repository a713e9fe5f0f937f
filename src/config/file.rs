//! The config file's place in the configuration: which file is read (`-c/--config`, else a default
//! file in the working directory), and [`resolve`], which layers the built-in defaults, the file's
//! settings and the command line into a [`Config`]. Executing the file is Python's job
//! (`python::config_file`); this part only sees the values it produced.

use std::path::Path;

use super::cli::{apply_env_defaults, CommandLine};
use super::settings::{Setting, SettingValue};
use super::{Action, Config, ConfigError, PROG, USAGE_EXIT_CODE};

/// Files looked for in the working directory when no config file is named, first match wins.
pub const DEFAULT_CONFIG_FILES: [&str; 2] = ["./ferricorn.conf.py", "./gunicorn.conf.py"];

/// Where a config comes from, as `-c/--config` spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// `PATH` or `file:PATH`: a Python file, executed.
    File(String),
    /// `python:MODULE`: a module imported from the Python path.
    Module(String),
}

impl ConfigSource {
    pub fn parse(location: &str) -> ConfigSource {
        if let Some(module) = location.strip_prefix("python:") {
            ConfigSource::Module(module.to_string())
        } else {
            let path = location.strip_prefix("file:").unwrap_or(location);
            ConfigSource::File(path.to_string())
        }
    }
}

/// The config to read: the one named by the command line or a `*_CMD_ARGS` variable (the
/// command line wins), else the first of [`DEFAULT_CONFIG_FILES`] for which `exists` holds.
pub fn config_location(cl: &CommandLine, exists: &dyn Fn(&Path) -> bool) -> Option<String> {
    match cl.value("config") {
        Some(SettingValue::Str(s)) => Some(s.trim().to_string()),
        _ => DEFAULT_CONFIG_FILES
            .iter()
            .find(|f| exists(Path::new(f)))
            .map(|f| f.to_string()),
    }
}

/// The settings a config file gave, checked against nothing yet (that happens in [`resolve`]).
#[derive(Clone, Debug, Default)]
pub struct FileSettings {
    /// The location as given (`conf.py`, `python:pkg.conf`, `./gunicorn.conf.py`), for messages
    /// and for the `config` setting.
    pub location: String,
    pub values: Vec<(&'static Setting, SettingValue)>,
}

impl FileSettings {
    fn sets(&self, name: &str) -> bool {
        self.values.iter().any(|(s, _)| s.name == name)
    }
}

/// Build the configuration in gunicorn's order, lowest first: built-in defaults, the defaults
/// taken from the environment (`PORT`, `WEB_CONCURRENCY`, ...), the config file, then the
/// `*_CMD_ARGS` variables and the command line. An environment default is skipped when the file
/// or the command line sets that setting.
pub fn resolve(
    cl: &CommandLine,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<&FileSettings>,
) -> Result<Action, ConfigError> {
    let mut cfg = Config::default();
    apply_env_defaults(&mut cfg, env, &|name| {
        cl.given(name) || file.is_some_and(|f| f.sets(name))
    })?;
    if let Some(file) = file {
        cfg.config_file = Some(file.location.clone());
        for (setting, value) in &file.values {
            (setting.apply)(&mut cfg, value.clone())
                .map_err(|e| bad_file_value(&file.location, setting.name, &e.to_string()))?;
        }
    }
    cl.apply(&mut cfg)?;
    super::settings::check_elastic(&cfg).map_err(|e| ConfigError {
        message: format!("{PROG}: error: {e}"),
        exit_code: USAGE_EXIT_CODE,
    })?;
    Ok(if cfg.print_config {
        Action::PrintConfig(cfg)
    } else {
        Action::Run(cfg)
    })
}

/// The one-line error for a config file value that cannot be used (exit status 2).
pub fn bad_file_value(location: &str, name: &str, problem: &str) -> ConfigError {
    ConfigError {
        message: format!("{PROG}: error: {location}: setting '{name}': {problem}"),
        exit_code: USAGE_EXIT_CODE,
    }
}

/// Every setting name gunicorn 27 reads from a config file. A name in this list that ferricorn
/// neither has in its settings table nor collects as a server hook is reported as ignored, so
/// that a gunicorn config (`daemon = True`, `certfile = ...`) is not half-applied in silence.
pub const GUNICORN_SETTING_NAMES: &[&str] = &[
    "access_log_format",
    "accesslog",
    "asgi_disconnect_grace_period",
    "asgi_lifespan",
    "asgi_loop",
    "backlog",
    "bind",
    "ca_certs",
    "capture_output",
    "casefold_http_method",
    "cert_reqs",
    "certfile",
    "chdir",
    "check_config",
    "child_exit",
    "ciphers",
    "config",
    "control_socket",
    "control_socket_disable",
    "control_socket_mode",
    "daemon",
    "default_proc_name",
    "dirty_apps",
    "dirty_graceful_timeout",
    "dirty_post_fork",
    "dirty_threads",
    "dirty_timeout",
    "dirty_worker_exit",
    "dirty_worker_init",
    "dirty_workers",
    "disable_redirect_access_to_syslog",
    "do_handshake_on_connect",
    "dogstatsd_tags",
    "enable_backlog_metric",
    "enable_stdio_inheritance",
    "errorlog",
    "forwarded_allow_ips",
    "forwarder_headers",
    "graceful_timeout",
    "group",
    "header_map",
    "http2_cleartext",
    "http2_initial_window_size",
    "http2_max_concurrent_streams",
    "http2_max_frame_size",
    "http2_max_header_list_size",
    "http_parser",
    "http_protocols",
    "initgroups",
    "keepalive",
    "keyfile",
    "limit_request_field_size",
    "limit_request_fields",
    "limit_request_line",
    "logconfig",
    "logconfig_dict",
    "logconfig_json",
    "logger_class",
    "loglevel",
    "max_requests",
    "max_requests_jitter",
    "nworkers_changed",
    "on_dirty_starting",
    "on_exit",
    "on_reload",
    "on_starting",
    "paste",
    "permit_obsolete_folding",
    "permit_unconventional_http_method",
    "permit_unconventional_http_version",
    "pidfile",
    "post_fork",
    "post_request",
    "post_worker_init",
    "pre_exec",
    "pre_fork",
    "pre_request",
    "preload_app",
    "print_config",
    "proc_name",
    "protocol",
    "proxy_allow_ips",
    "proxy_protocol",
    "pythonpath",
    "raw_env",
    "raw_paste_global_conf",
    "reload",
    "reload_engine",
    "reload_extra_files",
    "reuse_port",
    "root_path",
    "secure_scheme_headers",
    "sendfile",
    "spew",
    "ssl_context",
    "ssl_version",
    "statsd_host",
    "statsd_prefix",
    "strip_header_spaces",
    "suppress_ragged_eofs",
    "syslog",
    "syslog_addr",
    "syslog_facility",
    "syslog_prefix",
    "threads",
    "timeout",
    "tmp_upload_dir",
    "umask",
    "user",
    "uwsgi_allow_ips",
    "websocket_max_message_size",
    "when_ready",
    "worker_abort",
    "worker_class",
    "worker_connections",
    "worker_exit",
    "worker_int",
    "worker_tmp_dir",
    "workers",
    "wsgi_app",
];

#[cfg(test)]
mod tests {
    use super::super::cli::parse_command_line;
    use super::super::settings::find_setting;
    use super::super::{BindAddress, WorkerClass};
    use super::*;

    fn cl(args: &[&str], vars: &[(&str, &str)]) -> CommandLine {
        let argv: Vec<String> = std::iter::once("ferricorn")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        parse_command_line(&argv, &env_of(vars)).unwrap()
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn file(values: &[(&str, SettingValue)]) -> FileSettings {
        FileSettings {
            location: "conf.py".to_string(),
            values: values
                .iter()
                .map(|(n, v)| (find_setting(n).unwrap(), v.clone()))
                .collect(),
        }
    }

    fn run(args: &[&str], vars: &[(&str, &str)], f: &FileSettings) -> Config {
        match resolve(&cl(args, vars), &env_of(vars), Some(f)) {
            Ok(Action::Run(c)) | Ok(Action::PrintConfig(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sources() {
        assert_eq!(
            ConfigSource::parse("conf.py"),
            ConfigSource::File("conf.py".into())
        );
        assert_eq!(
            ConfigSource::parse("file:/etc/x.conf"),
            ConfigSource::File("/etc/x.conf".into())
        );
        assert_eq!(
            ConfigSource::parse("python:pkg.settings"),
            ConfigSource::Module("pkg.settings".into())
        );
    }

    #[test]
    fn location_named_or_default() {
        let none = |_: &Path| false;
        let all = |_: &Path| true;
        let only_gunicorn = |p: &Path| p.ends_with("gunicorn.conf.py");
        assert_eq!(config_location(&cl(&[], &[]), &none), None);
        assert_eq!(
            config_location(&cl(&[], &[]), &all).as_deref(),
            Some("./ferricorn.conf.py")
        );
        assert_eq!(
            config_location(&cl(&[], &[]), &only_gunicorn).as_deref(),
            Some("./gunicorn.conf.py")
        );
        // A named file is used whether or not a default exists (its absence is reported later).
        assert_eq!(
            config_location(&cl(&["-c", "x.py"], &[]), &none).as_deref(),
            Some("x.py")
        );
        let vars = [("GUNICORN_CMD_ARGS", "-c env.py")];
        assert_eq!(
            config_location(&cl(&[], &vars), &all).as_deref(),
            Some("env.py")
        );
        assert_eq!(
            config_location(&cl(&["--config=cli.py"], &vars), &all).as_deref(),
            Some("cli.py")
        );
    }

    #[test]
    fn file_between_defaults_and_command_line() {
        let f = file(&[
            ("workers", SettingValue::Int(3)),
            ("timeout", SettingValue::Int(77)),
            ("threads", SettingValue::Int(4)),
            (
                "bind",
                SettingValue::List(vec!["127.0.0.1:1".into(), "unix:/tmp/s".into()]),
            ),
            ("wsgi_app", SettingValue::Str("pkg:app".into())),
        ]);
        let c = run(&[], &[], &f);
        assert_eq!((c.workers, c.timeout, c.threads), (3, 77, 4));
        assert_eq!(c.worker_class, WorkerClass::Gthread);
        assert_eq!(c.binds.len(), 2);
        assert_eq!(c.app_uri.as_deref(), Some("pkg:app"));
        assert_eq!(c.config_file.as_deref(), Some("conf.py"));

        let vars = [
            ("GUNICORN_CMD_ARGS", "-w 5 -t 50"),
            ("FERRICORN_CMD_ARGS", "-w 6"),
        ];
        let c = run(&["-b", "127.0.0.1:2", "other:app"], &vars, &f);
        assert_eq!((c.workers, c.timeout, c.threads), (6, 50, 4));
        assert_eq!(
            c.binds,
            vec![BindAddress::Tcp {
                host: "127.0.0.1".into(),
                port: 2
            }]
        );
        assert_eq!(c.app_uri.as_deref(), Some("other:app"));
    }

    #[test]
    fn file_beats_environment_defaults() {
        let f = file(&[("workers", SettingValue::Int(3))]);
        let c = run(&[], &[("WEB_CONCURRENCY", "8"), ("PORT", "9000")], &f);
        assert_eq!(c.workers, 3);
        assert_eq!(
            c.binds,
            vec![BindAddress::Tcp {
                host: "0.0.0.0".into(),
                port: 9000
            }]
        );
        // A bad environment default does not matter when the file sets the setting.
        assert_eq!(run(&[], &[("WEB_CONCURRENCY", "x")], &f).workers, 3);
    }

    #[test]
    fn bad_file_value_is_one_line_exit_2() {
        let f = file(&[("workers", SettingValue::Str("abc".into()))]);
        let e = resolve(&cl(&[], &[]), &env_of(&[]), Some(&f)).unwrap_err();
        assert_eq!(e.exit_code, 2);
        assert_eq!(
            e.message,
            "ferricorn: error: conf.py: setting 'workers': invalid int value: 'abc'"
        );
    }

    #[test]
    fn print_config_from_the_file() {
        let f = file(&[("print_config", SettingValue::Bool(true))]);
        assert!(matches!(
            resolve(&cl(&[], &[]), &env_of(&[]), Some(&f)),
            Ok(Action::PrintConfig(_))
        ));
        assert!(matches!(
            resolve(&cl(&[], &[]), &env_of(&[]), None),
            Ok(Action::Run(c)) if c.config_file.is_none()
        ));
    }

    #[test]
    fn gunicorn_names_sorted_and_unique() {
        let mut sorted = GUNICORN_SETTING_NAMES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, GUNICORN_SETTING_NAMES);
    }
}
