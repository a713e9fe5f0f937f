//! The command line: the clap command built from the settings table, reading the real arguments and
//! the `GUNICORN_CMD_ARGS` / `FERRICORN_CMD_ARGS` variables, the environment-dependent defaults,
//! one-line error messages, and the `--help` / `--version` texts.
//!
//! clap only splits words here: every value reaches it as a plain string and is checked by the
//! table's own `apply`, so a config file and the command line accept and refuse the same things,
//! and every error is worded by us rather than by clap's multi-line report.

use std::fmt;

use clap::builder::Styles;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, ColorChoice, Command};

use super::file::resolve;
use super::settings::{find_setting, Kind, Setting, SettingValue, ValueError, SETTINGS};
use super::shell_words::{self, SplitError};
use super::{Action, Config, ConfigError, PROG};

/// Variables holding extra arguments, lowest precedence first; the real command line comes last.
pub const CMD_ARGS_VARS: [&str; 2] = ["GUNICORN_CMD_ARGS", "FERRICORN_CMD_ARGS"];

/// Where a group of arguments came from, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    CommandLine,
    EnvVar(&'static str),
}

/// A command-line problem. Displayed as the text after `ferricorn: error: `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CliError {
    UnknownArgument {
        origin: Origin,
        arg: String,
        suggestion: Option<String>,
    },
    MissingValue {
        origin: Origin,
        flag: String,
    },
    UnexpectedValue {
        origin: Origin,
        flag: String,
        value: String,
    },
    BadValue {
        origin: Origin,
        flag: String,
        error: ValueError,
    },
    BadEnvDefault {
        var: &'static str,
        error: ValueError,
    },
    Split {
        origin: Origin,
        error: SplitError,
    },
    /// A clap error of a kind we do not word ourselves; holds the first line of its message.
    Other {
        origin: Origin,
        message: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::CommandLine => Ok(()),
            Origin::EnvVar(var) => write!(f, "{var}: "),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::UnknownArgument {
                origin,
                arg,
                suggestion,
            } => {
                if arg.starts_with('-') {
                    write!(f, "{origin}unrecognized argument: '{arg}'")?;
                } else {
                    write!(
                        f,
                        "{origin}unexpected extra argument: '{arg}' (only one APP_MODULE is taken)"
                    )?;
                }
                match suggestion {
                    Some(s) => write!(f, " (did you mean '{s}'?)"),
                    None => Ok(()),
                }
            }
            CliError::MissingValue { origin, flag } => {
                write!(f, "{origin}argument {flag}: expected one argument")
            }
            CliError::UnexpectedValue {
                origin,
                flag,
                value,
            } => write!(f, "{origin}argument {flag}: takes no value (got '{value}')"),
            CliError::BadValue {
                origin,
                flag,
                error,
            } => write!(f, "{origin}argument {flag}: {error}"),
            CliError::BadEnvDefault { var, error } => {
                write!(f, "environment variable {var}: {error}")
            }
            CliError::Split { origin, error } => write!(f, "{origin}{error}"),
            CliError::Other { origin, message } => write!(f, "{origin}{message}"),
        }
    }
}

impl std::error::Error for CliError {}

/// The settings one group of arguments gave, in table order.
#[derive(Clone, Debug)]
struct Given {
    origin: Origin,
    values: Vec<(&'static Setting, SettingValue)>,
    help: bool,
    version: bool,
}

/// Everything the command line and the `*_CMD_ARGS` variables said, not yet applied. Keeping it
/// separate from [`Config`] lets a config file be applied in between (defaults, then the file,
/// then these), which is gunicorn's order.
#[derive(Clone, Debug)]
pub struct CommandLine {
    groups: Vec<Given>,
    /// `-h/--help` was given somewhere.
    pub help: bool,
    /// `-v/--version` was given somewhere.
    pub version: bool,
}

impl CommandLine {
    /// Whether any group set the setting with this config-file name.
    pub fn given(&self, name: &str) -> bool {
        self.value(name).is_some()
    }

    /// The value that wins for a setting (the last group that set it), e.g. `config` to find the
    /// config file before anything else is applied.
    pub fn value(&self, name: &str) -> Option<&SettingValue> {
        self.groups
            .iter()
            .rev()
            .flat_map(|g| g.values.iter())
            .find(|(s, _)| s.name == name)
            .map(|(_, v)| v)
    }

    /// Apply every group in precedence order; a later group replaces what an earlier one set.
    pub fn apply(&self, cfg: &mut Config) -> Result<(), CliError> {
        for group in &self.groups {
            for (setting, value) in &group.values {
                (setting.apply)(cfg, value.clone()).map_err(|error| CliError::BadValue {
                    origin: group.origin,
                    flag: setting.display_flags(),
                    error,
                })?;
            }
        }
        Ok(())
    }
}

/// A setting whose default gunicorn takes from an environment variable.
struct EnvDefault {
    setting: &'static str,
    var: &'static str,
    /// Turns the variable's text into the setting's value; `None` leaves the built-in default.
    value: fn(&str) -> Option<String>,
}

const ENV_DEFAULTS: &[EnvDefault] = &[
    EnvDefault {
        setting: "bind",
        var: "PORT",
        value: |port| {
            let port = port.trim();
            (!port.is_empty()).then(|| format!("0.0.0.0:{port}"))
        },
    },
    EnvDefault {
        setting: "workers",
        var: "WEB_CONCURRENCY",
        value: |n| (!n.trim().is_empty()).then(|| n.to_string()),
    },
    EnvDefault {
        setting: "forwarded_allow_ips",
        var: "FORWARDED_ALLOW_IPS",
        // Empty is meaningful here: trust no proxy.
        value: |ips| Some(ips.to_string()),
    },
];

/// Apply the environment-dependent defaults, skipping settings for which `given` says a higher
/// source has a value (so a bad `WEB_CONCURRENCY` does not matter when `-w` is given).
pub fn apply_env_defaults(
    cfg: &mut Config,
    env: &dyn Fn(&str) -> Option<String>,
    given: &dyn Fn(&str) -> bool,
) -> Result<(), CliError> {
    for d in ENV_DEFAULTS {
        if given(d.setting) {
            continue;
        }
        let (Some(raw), Some(setting)) = (env(d.var), find_setting(d.setting)) else {
            continue;
        };
        let Some(value) = (d.value)(&raw) else {
            continue;
        };
        (setting.apply)(cfg, SettingValue::Str(value))
            .map_err(|error| CliError::BadEnvDefault { var: d.var, error })?;
    }
    Ok(())
}

/// Read `argv` (argv[0] is the program name) and the `*_CMD_ARGS` variables without applying
/// anything.
pub fn parse_command_line(
    argv: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CommandLine, CliError> {
    let mut groups = Vec::with_capacity(CMD_ARGS_VARS.len() + 1);
    for var in CMD_ARGS_VARS {
        let Some(text) = env(var) else { continue };
        let origin = Origin::EnvVar(var);
        let words = shell_words::split(&text).map_err(|error| CliError::Split { origin, error })?;
        groups.push(parse_words(origin, words)?);
    }
    groups.push(parse_words(
        Origin::CommandLine,
        argv.iter().skip(1).cloned().collect(),
    )?);
    Ok(CommandLine {
        help: groups.iter().any(|g| g.help),
        version: groups.iter().any(|g| g.version),
        groups,
    })
}

/// `--help` or `--version`, which win over everything else and need no config file.
pub fn help_or_version(cl: &CommandLine, version: &str) -> Option<Action> {
    if cl.help {
        Some(Action::Help(help_text(version)))
    } else if cl.version {
        Some(Action::Version(format!("{PROG} (version {version})")))
    } else {
        None
    }
}

/// Read the command line and the environment into what to do next, without a config file (the
/// server itself uses [`parse_command_line`] and `file::resolve`, with the file in between). `env`
/// looks variables up; `version` is printed by `-v` and `--help`.
pub fn from_args(
    argv: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    version: &str,
) -> Result<Action, ConfigError> {
    let cl = parse_command_line(argv, env)?;
    match help_or_version(&cl, version) {
        Some(action) => Ok(action),
        None => resolve(&cl, env, None),
    }
}

fn parse_words(origin: Origin, words: Vec<String>) -> Result<Given, CliError> {
    let argv = std::iter::once(PROG.to_string()).chain(words);
    let m = command("")
        .try_get_matches_from(argv)
        .map_err(|e| from_clap(origin, &e))?;
    let mut values = Vec::new();
    for s in SETTINGS {
        if s.kind == Kind::FileOnly || m.value_source(s.name) != Some(ValueSource::CommandLine) {
            continue;
        }
        let value = match s.kind {
            Kind::Switch => SettingValue::Bool(true),
            Kind::SwitchOff => SettingValue::Bool(false),
            Kind::Repeated => SettingValue::List(strings(&m, s.name)),
            Kind::OptionalValue => strings(&m, s.name)
                .pop()
                .map_or(SettingValue::Bool(true), SettingValue::Str),
            Kind::Value | Kind::Positional | Kind::FileOnly => match strings(&m, s.name).pop() {
                Some(v) => SettingValue::Str(v),
                None => continue,
            },
        };
        values.push((s, value));
    }
    Ok(Given {
        origin,
        values,
        help: flag(&m, "help"),
        version: flag(&m, "version"),
    })
}

fn strings(m: &ArgMatches, id: &str) -> Vec<String> {
    match m.try_get_many::<String>(id) {
        Ok(Some(vals)) => vals.cloned().collect(),
        _ => Vec::new(),
    }
}

fn flag(m: &ArgMatches, id: &str) -> bool {
    matches!(m.try_get_one::<bool>(id), Ok(Some(true)))
}

/// Word a clap error ourselves, on one line.
fn from_clap(origin: Origin, e: &clap::Error) -> CliError {
    let ctx = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let arg = ctx(ContextKind::InvalidArg).unwrap_or_default();
    match e.kind() {
        ErrorKind::UnknownArgument => CliError::UnknownArgument {
            origin,
            arg,
            suggestion: ctx(ContextKind::SuggestedArg),
        },
        ErrorKind::InvalidValue
            if ctx(ContextKind::InvalidValue)
                .unwrap_or_default()
                .is_empty() =>
        {
            CliError::MissingValue {
                origin,
                flag: flags_of(&arg),
            }
        }
        ErrorKind::TooManyValues => CliError::UnexpectedValue {
            origin,
            flag: flags_of(&arg),
            value: ctx(ContextKind::InvalidValue).unwrap_or_default(),
        },
        _ => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            CliError::Other {
                origin,
                message: first.strip_prefix("error: ").unwrap_or(first).to_string(),
            }
        }
    }
}

/// clap names an argument as `--workers <INT>`; turn that into our `-w/--workers`.
fn flags_of(clap_arg: &str) -> String {
    let flag = clap_arg.split_whitespace().next().unwrap_or(clap_arg);
    SETTINGS
        .iter()
        .find(|s| s.has_flag(flag))
        .map_or_else(|| flag.to_string(), Setting::display_flags)
}

/// The clap command for the whole table. `version` only appears in the help text.
pub fn command(version: &str) -> Command {
    let mut cmd = Command::new(PROG)
        .about(intro(version))
        .after_help(AFTER_HELP)
        // Help and version are ordinary flags so that we decide what happens and when.
        .disable_help_flag(true)
        .disable_version_flag(true)
        // A setting given twice keeps the last value, like argparse.
        .args_override_self(true)
        // argparse accepts unambiguous prefixes of long options (`--work 4`).
        .infer_long_args(true)
        .max_term_width(100)
        .styles(Styles::plain())
        .color(ColorChoice::Never)
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::SetTrue)
                .help("Show this manual and exit"),
        )
        .arg(
            Arg::new("version")
                .short('v')
                .long("version")
                .action(ArgAction::SetTrue)
                .help("Show the version and exit"),
        );
    for s in SETTINGS {
        if let Some(arg) = arg_for(s) {
            cmd = cmd.arg(arg);
        }
    }
    cmd
}

fn arg_for(s: &'static Setting) -> Option<Arg> {
    let arg = Arg::new(s.name);
    let arg = match s.kind {
        Kind::FileOnly => return None,
        Kind::Positional => return Some(arg.value_name(s.meta).help(s.help)),
        Kind::Switch | Kind::SwitchOff => arg.action(ArgAction::SetTrue).help(s.help),
        Kind::Value | Kind::Repeated | Kind::OptionalValue => arg
            .action(if s.kind == Kind::Repeated {
                ArgAction::Append
            } else {
                ArgAction::Set
            })
            .value_name(s.meta)
            // So `-w -1` reaches our range check instead of looking like an unknown flag.
            .allow_negative_numbers(true)
            .help(format!("{} [default: {}]", s.help, s.default)),
    };
    // `--proxy-protocol` alone, as gunicorn's `nargs="?"`.
    let arg = if s.kind == Kind::OptionalValue {
        arg.num_args(0..=1)
    } else {
        arg
    };
    let mut arg = arg.help_heading(s.section.title());
    let mut longs = s.cli.iter().filter_map(|f| f.strip_prefix("--"));
    if let Some(long) = longs.next() {
        arg = arg.long(long);
    }
    for alias in longs {
        arg = arg.visible_alias(alias);
    }
    for alias in s.hidden_aliases {
        arg = arg.alias(*alias);
    }
    let short = s
        .cli
        .iter()
        .filter(|f| !f.starts_with("--"))
        .find_map(|f| f.strip_prefix('-')?.chars().next());
    if let Some(c) = short {
        arg = arg.short(c);
    }
    Some(arg)
}

fn intro(version: &str) -> String {
    let name = if version.is_empty() {
        PROG.to_string()
    } else {
        format!("{PROG} {version}")
    };
    format!(
        "{name}: a gunicorn-compatible WSGI HTTP server with a Rust core.\n\n\
         APP_MODULE names the application: `module:name`, `module` (which uses the name \
         `application`), or `module:factory()` / `module:factory(arg, key=value)` to call a \
         factory that returns it. Flags take the same names as gunicorn's."
    )
}

const AFTER_HELP: &str = "\
Environment:
  GUNICORN_CMD_ARGS    Extra arguments, read before the command line (which wins)
  FERRICORN_CMD_ARGS   The same, and it wins over GUNICORN_CMD_ARGS
  PORT                 Makes the default bind 0.0.0.0:$PORT
  WEB_CONCURRENCY      Default number of workers
  FORWARDED_ALLOW_IPS  Default for --forwarded-allow-ips

Examples:
  ferricorn myapp:app
  ferricorn -w 4 -b 0.0.0.0:8000 mysite.wsgi:application
  ferricorn -k gthread --threads 8 --access-logfile - 'myapp:create_app()'
  ferricorn -b unix:/run/myapp.sock --pid /run/myapp.pid myapp
  ferricorn --print-config -w 3 myapp:app";

/// The manual printed by `-h/--help`.
pub fn help_text(version: &str) -> String {
    command(version).render_help().to_string()
}
