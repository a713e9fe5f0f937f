//! The Kubernetes side of `ferricornctl doctor` (`--kubernetes FILE|DIR`): the manifests a cluster runs
//! ferricorn with — Deployments (and other workloads with a pod template), Services,
//! HorizontalPodAutoscalers, ServiceMonitors — read from YAML files (several documents each, `kind:
//! List` too), and the rules that tie their numbers to the server's settings.
//!
//! The settings are the ones the container really starts with: its `command`/`args` (after
//! Kubernetes' `$(VAR)` expansion, through `sh -c` and `python -m`), its environment (`WEB_CONCURRENCY`
//! from the downward API's `resourceFieldRef`, `GUNICORN_CMD_ARGS`, `PORT`), resolved by the server's
//! own configuration code; a config file the container names is read from doctor's `--config` (a local
//! copy), since the image's is out of reach. The rules are here, not in `findings`, because each one
//! compares a manifest field with a setting: the grace period with the stop's length, the memory limit
//! with `--max-worker-memory` × workers, probes with the master's listener and its paths, the HPA's
//! metric with what the server exports, the ServiceMonitor with the Service's ports.

use std::collections::BTreeMap;
use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

use super::findings::{finding, secs, Finding, Severity};
use crate::config::{Action, BindAddress, Config, FileSettings};
use crate::control::json::{obj, Json};

/// Seconds between the end of `--graceful-timeout` and the master's exit (it kills what is left and
/// reaps for up to 2 s): the margin the grace period needs on top.
pub const EXIT_MARGIN_SECS: f64 = 5.0;
/// A liveness probe must fail this long before the kubelet restarts the container: a worker past
/// `--timeout` fails `/healthz` until the master has replaced it, about a second.
pub const LIVENESS_WINDOW_SECS: f64 = 10.0;
/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECS: f64 = 30.0;
const MIB: f64 = 1024.0 * 1024.0;

/// One object of a manifest.
#[derive(Clone, Debug)]
pub struct Object {
    pub kind: String,
    pub name: String,
    /// `FILE` and, for a file of several documents, `#N` (1-based).
    pub at: String,
    pub doc: Yaml,
}

impl Object {
    fn label(&self) -> String {
        format!("{} {} ({})", self.kind, self.name, self.at)
    }
}

/// The `.yaml`/`.yml` files of `path` (a directory, not recursively, sorted) or `path` itself.
fn files_of(path: &str) -> Result<Vec<String>, String> {
    let p = Path::new(path);
    if p.is_dir() {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map_err(|e| format!("cannot read {path}: {e}"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .map(|f| f.display().to_string())
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(format!("{path}: no .yaml or .yml file in it"));
        }
        Ok(v)
    } else if p.is_file() {
        Ok(vec![path.to_string()])
    } else {
        Err(format!("{path} is not a readable file or directory"))
    }
}

/// Parse the text of one file into its objects (documents without a `kind` are skipped).
pub fn parse(text: &str, file: &str) -> Result<Vec<Object>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("{file}: {e}"))?;
    let several = docs.len() > 1;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let at = if several {
            format!("{file}#{}", i + 1)
        } else {
            file.to_string()
        };
        let items: Vec<Yaml> = if doc["kind"].as_str() == Some("List") {
            doc["items"].as_vec().cloned().unwrap_or_default()
        } else {
            vec![doc]
        };
        for item in items {
            // A kustomization lists files; it is not an object of the cluster.
            let Some(kind) = item["kind"]
                .as_str()
                .filter(|k| *k != "Kustomization")
                .map(str::to_string)
            else {
                continue;
            };
            let name = text_of(&item["metadata"]["name"]).unwrap_or_else(|| "-".to_string());
            out.push(Object {
                kind,
                name,
                at: at.clone(),
                doc: item,
            });
        }
    }
    Ok(out)
}

/// Read every file (directories expanded); the source line's detail or why not.
pub fn read(paths: &[String]) -> Result<(Vec<Object>, Vec<String>), String> {
    let mut files = Vec::new();
    for p in paths {
        files.extend(files_of(p)?);
    }
    let mut objects = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("cannot read {f}: {e}"))?;
        objects.extend(parse(&text, f)?);
    }
    Ok((objects, files))
}

/// A scalar as text (YAML may give `8000`, `"8000"` or `true`).
fn text_of(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn number(y: &Yaml) -> Option<f64> {
    match y {
        Yaml::Integer(i) => Some(*i as f64),
        Yaml::Real(s) | Yaml::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    }
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], Vec::as_slice)
}

fn string_map(y: &Yaml) -> BTreeMap<String, String> {
    y.as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((text_of(k)?, text_of(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// A Kubernetes quantity (`500m`, `2`, `1Gi`, `768Mi`, `1e9`, `512M`) in base units (cores, bytes).
pub fn quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    const SUFFIXES: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let (digits, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, f)| s.strip_suffix(suffix).map(|d| (d, *f)))
        .or_else(|| s.strip_suffix('E').map(|d| (d, 1e18)))
        .unwrap_or((s, 1.0));
    if digits.is_empty()
        || !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '+')
    {
        return None;
    }
    let v = digits.parse::<f64>().ok()? * factor;
    (v.is_finite() && v >= 0.0).then_some(v)
}

fn quantity_of(y: &Yaml) -> Option<f64> {
    text_of(y).as_deref().and_then(quantity)
}

/// A probe's or a Service's port: a number or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl PortRef {
    fn of(y: &Yaml) -> Option<PortRef> {
        match y {
            Yaml::Integer(i) => u16::try_from(*i).ok().map(PortRef::Number),
            Yaml::String(s) => Some(match s.parse::<u16>() {
                Ok(n) => PortRef::Number(n),
                Err(_) => PortRef::Name(s.clone()),
            }),
            _ => None,
        }
    }

    fn show(&self) -> String {
        match self {
            PortRef::Number(n) => n.to_string(),
            PortRef::Name(s) => s.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ProbeAction {
    Http { path: String, port: Option<PortRef> },
    Tcp { port: Option<PortRef> },
    Other(&'static str),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub action: ProbeAction,
    pub period: f64,
    pub timeout: f64,
    pub failure_threshold: f64,
}

impl Probe {
    fn of(y: &Yaml) -> Option<Probe> {
        y.as_hash()?;
        let action = if !y["httpGet"].is_badvalue() {
            ProbeAction::Http {
                path: text_of(&y["httpGet"]["path"]).unwrap_or_else(|| "/".to_string()),
                port: PortRef::of(&y["httpGet"]["port"]),
            }
        } else if !y["tcpSocket"].is_badvalue() {
            ProbeAction::Tcp {
                port: PortRef::of(&y["tcpSocket"]["port"]),
            }
        } else if !y["grpc"].is_badvalue() {
            ProbeAction::Other("grpc")
        } else {
            ProbeAction::Other("exec")
        };
        Some(Probe {
            action,
            period: number(&y["periodSeconds"]).unwrap_or(10.0),
            timeout: number(&y["timeoutSeconds"]).unwrap_or(1.0),
            failure_threshold: number(&y["failureThreshold"]).unwrap_or(3.0),
        })
    }
}

/// Where an environment variable's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum EnvValue {
    Literal(String),
    /// The downward API: `resource` (`limits.cpu`, ...) divided by `divisor`, rounded up.
    Resource {
        resource: String,
        divisor: String,
    },
    /// A Secret, a ConfigMap, a field of the pod: unknown here.
    Elsewhere,
}

/// One container of a workload's pod template.
#[derive(Clone, Debug)]
pub struct Container {
    /// `Deployment web (deploy/kubernetes/deployment.yaml), container web`.
    pub place: String,
    pub workload: String,
    pub name: String,
    pub pod_labels: BTreeMap<String, String>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// Whether `command` was given (without it the image's entrypoint runs `args`).
    pub has_command: bool,
    pub env: Vec<(String, EnvValue)>,
    /// Container ports: name and number.
    pub ports: Vec<(Option<String>, u16)>,
    pub cpu_limit: Option<f64>,
    pub cpu_request: Option<f64>,
    /// Bytes.
    pub memory_limit: Option<f64>,
    pub memory_request: Option<f64>,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
    /// Seconds a preStop hook sleeps (`sleep` action, or an exec of `sleep N`); 0 without one.
    pub prestop_sleep: f64,
    /// A preStop hook that is not a plain sleep: its length is unknown.
    pub prestop_other: bool,
    /// `terminationGracePeriodSeconds`, None for the default.
    pub grace: Option<f64>,
}

const WORKLOADS: [&str; 4] = ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"];

fn words(y: &Yaml) -> Vec<String> {
    list(y).iter().filter_map(text_of).collect()
}

/// The seconds of a `sleep N` command (`["sleep", "5"]`, `["/bin/sh", "-c", "sleep 5"]`).
fn sleep_seconds(cmd: &[String]) -> Option<f64> {
    let flat: Vec<String> = match cmd {
        [sh, c, script] if sh.ends_with("sh") && c == "-c" => {
            crate::config::shell_words::split(script).ok()?
        }
        other => other.to_vec(),
    };
    match flat.as_slice() {
        [sleep, n] if sleep.rsplit('/').next() == Some("sleep") => {
            n.trim_end_matches('s').parse::<f64>().ok()
        }
        _ => None,
    }
}

/// Every container of every workload.
pub fn containers(objects: &[Object]) -> Vec<Container> {
    let mut out = Vec::new();
    for o in objects
        .iter()
        .filter(|o| WORKLOADS.contains(&o.kind.as_str()))
    {
        let pod = &o.doc["spec"]["template"];
        let spec = &pod["spec"];
        for c in list(&spec["containers"]) {
            let name = text_of(&c["name"]).unwrap_or_else(|| "-".to_string());
            let env = list(&c["env"])
                .iter()
                .filter_map(|e| {
                    let key = text_of(&e["name"])?;
                    let from = &e["valueFrom"];
                    let value = if let Some(v) = text_of(&e["value"]) {
                        EnvValue::Literal(v)
                    } else if !from["resourceFieldRef"].is_badvalue() {
                        let r = &from["resourceFieldRef"];
                        EnvValue::Resource {
                            resource: text_of(&r["resource"]).unwrap_or_default(),
                            divisor: text_of(&r["divisor"]).unwrap_or_else(|| "1".to_string()),
                        }
                    } else if from.is_badvalue() {
                        EnvValue::Literal(String::new())
                    } else {
                        EnvValue::Elsewhere
                    };
                    Some((key, value))
                })
                .collect();
            let ports = list(&c["ports"])
                .iter()
                .filter_map(|p| {
                    let n = u16::try_from(p["containerPort"].as_i64()?).ok()?;
                    Some((text_of(&p["name"]), n))
                })
                .collect();
            let res = &c["resources"];
            let pre = &c["lifecycle"]["preStop"];
            let (prestop_sleep, prestop_other) = if !pre["sleep"].is_badvalue() {
                (number(&pre["sleep"]["seconds"]).unwrap_or(0.0), false)
            } else if !pre["exec"].is_badvalue() {
                match sleep_seconds(&words(&pre["exec"]["command"])) {
                    Some(s) => (s, false),
                    None => (0.0, true),
                }
            } else {
                (0.0, pre.as_hash().is_some())
            };
            out.push(Container {
                place: format!("{}, container {name}", o.label()),
                workload: format!("{} {}", o.kind, o.name),
                name,
                pod_labels: string_map(&pod["metadata"]["labels"]),
                command: words(&c["command"]),
                args: words(&c["args"]),
                has_command: c["command"].as_vec().is_some(),
                env,
                ports,
                cpu_limit: quantity_of(&res["limits"]["cpu"]),
                cpu_request: quantity_of(&res["requests"]["cpu"]),
                memory_limit: quantity_of(&res["limits"]["memory"]),
                memory_request: quantity_of(&res["requests"]["memory"]),
                liveness: Probe::of(&c["livenessProbe"]),
                readiness: Probe::of(&c["readinessProbe"]),
                prestop_sleep,
                prestop_other,
                grace: number(&spec["terminationGracePeriodSeconds"]),
            });
        }
    }
    out
}

/// Kubernetes' expansion of `$(VAR)` in a command or its arguments, with the container's
/// environment; `$$` is a literal `$`, an unknown reference stays as written.
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn is_server_word(w: &str) -> bool {
    matches!(w.rsplit('/').next(), Some("ferricorn" | "gunicorn"))
}

/// The server's argv in the container's command line: from the word naming ferricorn (or gunicorn,
/// which an image may link to it), through `sh -c '... exec ferricorn ...'` and `python -m
/// ferricorn`. `args` alone starting with a flag are taken as the arguments of an image whose
/// entrypoint is the server. None when the container does not run the server.
pub fn server_argv(c: &Container, env: &BTreeMap<String, String>) -> Option<Vec<String>> {
    let mut line: Vec<String> = c
        .command
        .iter()
        .chain(&c.args)
        .map(|w| expand(w, env))
        .collect();
    if let [sh, flag, script, ..] = line.as_slice() {
        if sh.ends_with("sh") && flag == "-c" {
            line = crate::config::shell_words::split(script).ok()?;
        }
    }
    let start = line.iter().enumerate().find_map(|(i, w)| {
        if is_server_word(w) {
            Some(i)
        } else if w == "-m" && line.get(i + 1).is_some_and(|m| m == "ferricorn") {
            Some(i + 1)
        } else {
            None
        }
    });
    let start = match start {
        Some(i) => i,
        None if !c.has_command && line.first().is_some_and(|w| w.starts_with('-')) => {
            let mut argv = vec!["ferricorn".to_string()];
            argv.extend(line);
            return Some(argv);
        }
        None => return None,
    };
    // The command ends at a shell operator, alone or stuck to a word (`app:app;`).
    let mut argv = Vec::new();
    for w in &line[start..] {
        if matches!(w.as_str(), "&&" | "||" | ";" | "|" | "&") {
            break;
        }
        if let Some(last) = w.strip_suffix(';') {
            argv.push(last.to_string());
            break;
        }
        argv.push(w.clone());
    }
    Some(argv)
}

/// The container's environment as the server sees it (downward-API values computed from the
/// container's own resources; values from elsewhere are absent).
fn environment(c: &Container) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (k, v) in &c.env {
        let value = match v {
            EnvValue::Literal(s) => Some(expand(s, &env)),
            EnvValue::Resource { resource, divisor } => resource_value(c, resource, divisor),
            EnvValue::Elsewhere => None,
        };
        if let Some(v) = value {
            env.insert(k.clone(), v);
        }
    }
    env
}

/// The downward API's value of a resource field, rounded up as Kubernetes does. A limit that is not
/// set is the node's allocatable amount: unknown here.
fn resource_value(c: &Container, resource: &str, divisor: &str) -> Option<String> {
    let amount = match resource {
        "limits.cpu" => c.cpu_limit?,
        "requests.cpu" => c.cpu_request.or(c.cpu_limit)?,
        "limits.memory" => c.memory_limit?,
        "requests.memory" => c.memory_request.or(c.memory_limit)?,
        _ => return None,
    };
    let d = quantity(divisor).filter(|d| *d > 0.0)?;
    Some(format!("{}", ((amount / d) - 1e-9).ceil().max(1.0) as u64))
}

/// What the server in one container runs with.
#[derive(Clone, Debug)]
pub struct Server {
    pub argv: Vec<String>,
    pub cfg: Config,
    /// The config file the container names, when it was not read (no local copy given).
    pub unread_config: Option<String>,
}

/// Resolve the container's settings as `ferricorn` would at its start. `local_config` stands in for
/// a config file the container names.
pub fn resolve(
    argv: &[String],
    env: &BTreeMap<String, String>,
    local_config: Option<&str>,
) -> Result<Server, String> {
    let lookup = |k: &str| env.get(k).cloned();
    let cl = crate::config::parse_command_line(argv, &lookup)
        .map_err(|e| crate::config::ConfigError::from(e).message)?;
    if cl.help || cl.version {
        return Err("its command line asks for --help or --version, not a server".to_string());
    }
    let named = match cl.value("config") {
        Some(crate::config::SettingValue::Str(s)) if !s.trim().is_empty() => {
            Some(s.trim().to_string())
        }
        _ => None,
    };
    let loaded: Option<FileSettings> = match local_config {
        Some(file) => Some(
            pyo3::Python::attach(|py| crate::python::config_file::load(py, file))
                .map_err(|e| e.message)?
                .settings,
        ),
        None => None,
    };
    let action = crate::config::resolve(&cl, &lookup, loaded.as_ref()).map_err(|e| e.message)?;
    let cfg = match action {
        Action::Run(c) | Action::PrintConfig(c) => c,
        _ => return Err("its command line does not start a server".to_string()),
    };
    Ok(Server {
        argv: argv.to_vec(),
        cfg,
        unread_config: named.filter(|_| local_config.is_none()),
    })
}

fn tcp_port(b: &BindAddress) -> Option<(&str, u16)> {
    match b {
        BindAddress::Tcp { host, port } => Some((host.as_str(), *port)),
        _ => None,
    }
}

fn loopback(host: &str) -> bool {
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// The metric families the server exports (from its own exposition).
pub fn exported_metrics() -> Vec<(String, String)> {
    let snapshot = crate::metrics::Snapshot {
        workers: vec![crate::metrics::WorkerSample {
            loop_lag_seconds: Some(0.0),
            rss_bytes: Some(0),
            ..Default::default()
        }],
        ..Default::default()
    };
    crate::metrics::render(&snapshot)
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// Whether an HPA's metric name is one the server exports, as is or as a Prometheus adapter commonly
/// renames a counter (`_total` dropped, or `_per_second` for its rate).
fn known_metric(name: &str, exported: &[(String, String)]) -> bool {
    exported.iter().any(|(n, kind)| {
        n == name
            || (kind == "counter"
                && n.strip_suffix("_total").is_some_and(|base| {
                    name == base || name.strip_suffix("_per_second") == Some(base)
                }))
            || (kind == "histogram"
                && name
                    .strip_prefix(n.as_str())
                    .is_some_and(|s| matches!(s, "_bucket" | "_sum" | "_count")))
    })
}

/// Requests one worker runs at once (threads, or an asgi worker's connections).
fn per_worker(cfg: &Config) -> usize {
    cfg.worker_class
        .with_threads(cfg.threads)
        .capacity(cfg.threads, cfg.worker_connections)
}

/// One ferricorn container with its resolved settings.
pub struct Judged {
    pub container: Container,
    pub server: Result<Server, String>,
}

impl Judged {
    fn port_of(&self, p: &PortRef) -> Option<u16> {
        match p {
            PortRef::Number(n) => Some(*n),
            PortRef::Name(name) => self
                .container
                .ports
                .iter()
                .find(|(n, _)| n.as_deref() == Some(name.as_str()))
                .map(|(_, p)| *p),
        }
    }
}

/// What `--kubernetes` found and concluded.
pub struct Analysis {
    pub containers: Vec<Judged>,
    pub objects: usize,
    pub findings: Vec<Finding>,
}

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / MIB)
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Read the manifests' containers, resolve each server's settings, and apply every rule.
pub fn analyze(objects: &[Object], local_config: Option<&str>) -> Analysis {
    let mut out = Vec::new();
    let judged: Vec<Judged> = containers(objects)
        .into_iter()
        .filter_map(|c| {
            let env = environment(&c);
            let argv = server_argv(&c, &env)?;
            let server = resolve(&argv, &env, local_config);
            Some(Judged {
                container: c,
                server,
            })
        })
        .collect();
    for j in &judged {
        container_rules(j, &mut out);
    }
    service_rules(objects, &judged, &mut out);
    hpa_rules(objects, &judged, &mut out);
    if judged.is_empty() {
        out.push(finding(
            "k8s-no-ferricorn",
            Severity::Info,
            "No container of the manifests runs ferricorn".to_string(),
            vec![format!(
                "{} object(s) read; a container counts when its command or args name ferricorn (or gunicorn), or its args alone start with a flag",
                objects.len()
            )],
            "Give the file with the Deployment (--kubernetes can be repeated, or name a directory).".to_string(),
        ));
    }
    out.sort_by_key(|f| f.severity);
    Analysis {
        objects: objects.len(),
        containers: judged,
        findings: out,
    }
}

fn container_rules(j: &Judged, out: &mut Vec<Finding>) {
    let c = &j.container;
    let at = &c.place;
    let s = match &j.server {
        Ok(s) => s,
        Err(e) => {
            out.push(finding(
                "k8s-command-invalid",
                Severity::Critical,
                format!("The container's command line does not start ferricorn ({at})"),
                vec![e.clone()],
                "Correct the flag in the container's args (or env) as the message says; the pod would exit with status 2 and restart in a loop.".to_string(),
            ));
            return;
        }
    };
    let cfg = &s.cfg;
    if let Some(file) = &s.unread_config {
        out.push(finding(
            "k8s-config-file-unread",
            Severity::Info,
            format!("The container reads the config file {file}, which is not here ({at})"),
            vec!["its settings are judged from the command line and environment alone".to_string()],
            format!(
                "Give doctor a local copy: --config path/to/{}",
                Path::new(file)
                    .file_name()
                    .map_or("ferricorn.conf.py".into(), |f| f.to_string_lossy())
            ),
        ));
    }
    let workers = cfg.workers as f64;

    // Stopping: preStop, then TERM; the server's drain delay and graceful timeout, then its exit.
    let grace = c.grace.unwrap_or(DEFAULT_GRACE_SECS);
    let grace_said = match c.grace {
        Some(g) => format!("terminationGracePeriodSeconds {}s", secs(g)),
        None => "terminationGracePeriodSeconds not set: Kubernetes' default 30s".to_string(),
    };
    let needed = c.prestop_sleep + cfg.shutdown_delay as f64 + cfg.graceful_timeout as f64;
    let wanted = needed + EXIT_MARGIN_SECS;
    let parts = format!(
        "preStop {}s + --shutdown-delay {}s + --graceful-timeout {}s",
        secs(c.prestop_sleep),
        cfg.shutdown_delay,
        cfg.graceful_timeout
    );
    if grace < wanted {
        let short = grace < needed;
        out.push(finding(
            "k8s-grace-period-short",
            if short { Severity::Critical } else { Severity::Warning },
            if short {
                format!("The kubelet kills the pod before ferricorn's graceful stop ends: {grace_said} < {parts} = {}s ({at})", secs(needed))
            } else {
                format!("terminationGracePeriodSeconds leaves less than {}s for ferricorn's exit: {grace_said}, {parts} = {}s ({at})", secs(EXIT_MARGIN_SECS), secs(needed))
            },
            vec![
                format!("the kubelet sends SIGKILL {}s after the pod's deletion began (the preStop hook counts)", secs(grace)),
                "ferricorn keeps serving --shutdown-delay, then gives the requests in flight --graceful-timeout, then kills what is left and exits within a few seconds".to_string(),
                "a request cut off by the SIGKILL gets a reset connection and no log line says which it was".to_string(),
            ],
            format!(
                "Set terminationGracePeriodSeconds: {} ({parts} + {}s), or lower --graceful-timeout to {}.",
                secs(wanted.ceil()),
                secs(EXIT_MARGIN_SECS),
                secs((grace - c.prestop_sleep - cfg.shutdown_delay as f64 - EXIT_MARGIN_SECS).max(1.0).floor())
            ),
        ));
    }
    if c.prestop_sleep == 0.0 && cfg.shutdown_delay == 0 && !c.prestop_other {
        out.push(finding(
            "k8s-no-drain-delay",
            Severity::Warning,
            format!("Nothing keeps the pod serving while the cluster stops routing to it ({at})"),
            vec![
                "a terminating pod leaves the Service's endpoints at once, but kube-proxy and ingress controllers apply that seconds later".to_string(),
                "meanwhile ferricorn has closed its listeners on TERM: those requests get a refused connection".to_string(),
            ],
            "Add `lifecycle: {preStop: {sleep: {seconds: 5}}}` (Kubernetes 1.30+), or --shutdown-delay=5, and count it in terminationGracePeriodSeconds.".to_string(),
        ));
    }

    // Memory: recycle workers (--max-worker-memory) before the container's limit is reached.
    let m = cfg.max_worker_memory as f64;
    match c.memory_limit {
        Some(limit) if m == 0.0 => out.push(finding(
            "k8s-no-max-worker-memory",
            Severity::Warning,
            format!("A memory limit of {} without --max-worker-memory ({at})", mib(limit)),
            vec![
                "a worker that grows is never recycled: the kernel's OOM killer ends it at the limit, and with cgroup v2 (Kubernetes 1.28+) every process of the container with it".to_string(),
                "the container restarts with all its requests in flight; its log shows no WORKER TIMEOUT, only the restart".to_string(),
            ],
            format!(
                "Add --max-worker-memory={} (MiB: the limit shared by {} worker(s) and one being replaced).",
                (limit / MIB / (workers + 1.0)).floor(),
                cfg.workers
            ),
        )),
        Some(limit) if limit / MIB < (workers + 1.0) * m => {
            let below = limit / MIB < workers * m;
            out.push(finding(
                "k8s-memory-limit-low",
                if below { Severity::Critical } else { Severity::Warning },
                if below {
                    format!(
                        "Memory limit {} < {} worker(s) x --max-worker-memory {} MiB: the container is OOM-killed before a worker is recycled ({at})",
                        mib(limit), cfg.workers, cfg.max_worker_memory
                    )
                } else {
                    format!(
                        "Memory limit {} leaves no room for a worker being replaced: {} worker(s) + 1, {} MiB each, is {} MiB ({at})",
                        mib(limit), cfg.workers, cfg.max_worker_memory, (workers + 1.0) * m
                    )
                },
                vec![
                    "a worker past --max-worker-memory finishes its requests while its replacement boots: for a while there is one worker more".to_string(),
                    "at the limit the kernel's OOM killer ends the whole container (cgroup v2), not one worker".to_string(),
                ],
                format!(
                    "Set limits.memory to at least {}Mi, or --max-worker-memory={}.",
                    ((workers + 1.0) * m).ceil(),
                    (limit / MIB / (workers + 1.0)).floor()
                ),
            ));
        }
        Some(_) => {}
        None => out.push(finding(
            "k8s-no-memory-limit",
            Severity::Info,
            format!("No memory limit ({at})"),
            vec!["the node's memory is the limit: under pressure the pod can be evicted or another process OOM-killed".to_string()],
            if m > 0.0 {
                format!("Set limits.memory to at least {}Mi ({} worker(s) + 1 x --max-worker-memory).", ((workers + 1.0) * m).ceil(), cfg.workers)
            } else {
                "Set a memory limit and --max-worker-memory below it (limit / (workers + 1)).".to_string()
            },
        )),
    }

    // Listeners: the app's binds and the master's metrics listener, as the pod's IP reaches them.
    let app_ports: Vec<u16> = cfg
        .binds
        .iter()
        .filter_map(tcp_port)
        .map(|(_, p)| p)
        .collect();
    let binds: Vec<String> = cfg.binds.iter().map(ToString::to_string).collect();
    if !cfg.binds.is_empty()
        && cfg
            .binds
            .iter()
            .all(|b| tcp_port(b).is_some_and(|(h, _)| loopback(h)))
    {
        out.push(finding(
            "k8s-bind-loopback",
            Severity::Critical,
            format!(
                "ferricorn listens on {} only: nothing outside the pod reaches it ({at})",
                binds.join(", ")
            ),
            vec![
                "the Service and the kubelet connect to the pod's IP, not to its loopback address"
                    .to_string(),
                "without --bind (or PORT) the default is 127.0.0.1:8000".to_string(),
            ],
            format!(
                "Add --bind=0.0.0.0:{} to the args.",
                app_ports.first().copied().unwrap_or(8000)
            ),
        ));
    }
    let metrics = cfg.metrics_bind.as_ref().and_then(tcp_port);
    let metrics_said = cfg.metrics_bind.as_ref().map_or_else(
        || "no --metrics-bind".to_string(),
        |m| format!("--metrics-bind {m}"),
    );
    let mut metrics_loopback_said = false;
    let mut metrics_loopback = |out: &mut Vec<Finding>, who: &str| {
        if let Some((h, p)) = metrics.filter(|(h, _)| loopback(h)) {
            if !std::mem::replace(&mut metrics_loopback_said, true) {
                out.push(finding(
                    "k8s-metrics-loopback",
                    Severity::Critical,
                    format!("The metrics listener is on {h}:{p}, out of reach of {who} ({at})"),
                    vec!["the kubelet and Prometheus connect to the pod's IP".to_string()],
                    format!("Use --metrics-bind=0.0.0.0:{p}."),
                ));
            }
        }
    };

    // Probes: on the master's listener, each on its own path.
    for (field, probe, expected, other) in [
        ("livenessProbe", &c.liveness, "/healthz", "/readyz"),
        ("readinessProbe", &c.readiness, "/readyz", "/healthz"),
    ] {
        let live = field == "livenessProbe";
        let Some(probe) = probe else {
            out.push(finding(
                if live { "k8s-no-liveness-probe" } else { "k8s-no-readiness-probe" },
                if live { Severity::Info } else { Severity::Warning },
                format!("No {field} ({at})"),
                vec![if live {
                    "a worker stuck past --timeout is replaced by the master; a master that stops answering is not noticed".to_string()
                } else {
                    "the pod gets traffic as soon as its process runs, before any worker has imported the app, and until the listeners close on a stop".to_string()
                }],
                format!("Add `{field}: {{httpGet: {{path: {expected}, port: {}}}}}`{}.", metrics.map_or(9100, |(_, p)| p), if metrics.is_none() { " with --metrics-bind=0.0.0.0:9100" } else { "" }),
            ));
            continue;
        };
        match &probe.action {
            ProbeAction::Http { path, port } => {
                let number = port.as_ref().and_then(|p| j.port_of(p));
                let shown = port.as_ref().map_or("?".to_string(), PortRef::show);
                let fix_port = match metrics {
                    Some((_, p)) => format!("`{field}: {{httpGet: {{path: {expected}, port: {p}}}}}`"),
                    None => format!("--metrics-bind=0.0.0.0:9100 and `{field}: {{httpGet: {{path: {expected}, port: 9100}}}}`"),
                };
                if number.is_some() && number == metrics.map(|(_, p)| p) {
                    metrics_loopback(out, "the kubelet's probes");
                    let path = path.split('?').next().unwrap_or_default();
                    if path != expected {
                        let (severity, why) = if path == other {
                            (Severity::Warning, if live {
                                "/readyz also fails while no worker serves yet (a slow app import) and during every graceful stop: the kubelet restarts a pod that is booting or stopping".to_string()
                            } else {
                                "/healthz passes while the workers still boot and during a graceful stop: the pod gets requests it cannot serve".to_string()
                            })
                        } else if path == "/metrics" {
                            (Severity::Warning, "/metrics answers whatever the workers' state: the probe cannot fail".to_string())
                        } else {
                            (Severity::Critical, format!("the metrics listener answers {path} with 404: the probe never passes"))
                        };
                        out.push(finding(
                            "k8s-probe-path",
                            severity,
                            format!("{field} asks for {path} on the metrics listener ({at})"),
                            vec![why],
                            format!("Use path {expected} for the {field}."),
                        ));
                    }
                } else if number.is_some_and(|n| app_ports.contains(&n)) {
                    out.push(finding(
                        "k8s-probe-app-port",
                        if live { Severity::Critical } else { Severity::Warning },
                        format!("{field} probes the app's port {shown} ({at})"),
                        vec![
                            "the probe waits for a free app thread like any request: when every thread is busy it times out".to_string(),
                            if live {
                                "under load the kubelet then restarts the container, with every request in flight, before anything is logged as a timeout".to_string()
                            } else {
                                "under load the pod leaves the Service exactly when it is busiest, moving its load to the others".to_string()
                            },
                            metrics_said.clone(),
                        ],
                        format!("Probe the master's listener instead: {fix_port}."),
                    ));
                } else {
                    out.push(finding(
                        "k8s-probe-port-unknown",
                        Severity::Critical,
                        format!("{field} probes port {shown}, where ferricorn does not listen ({at})"),
                        vec![
                            format!("ferricorn listens on {} and {metrics_said}", if binds.is_empty() { "-".to_string() } else { binds.join(", ") }),
                            match (port, number) {
                                (Some(PortRef::Name(n)), None) => format!("no container port is named {n}"),
                                _ => "the probe's connection is refused: it never passes".to_string(),
                            },
                        ],
                        format!("Use {fix_port}."),
                    ));
                }
            }
            ProbeAction::Tcp { port } => out.push(finding(
                "k8s-probe-tcp",
                Severity::Info,
                format!("{field} only opens a TCP connection (port {}) ({at})", port.as_ref().map_or("?".to_string(), PortRef::show)),
                vec!["the master holds the listening sockets: a connection is accepted into the backlog even when every worker is stuck".to_string()],
                format!("Use `httpGet: {{path: {expected}, port: {}}}` on the metrics listener.", metrics.map_or(9100, |(_, p)| p)),
            )),
            ProbeAction::Other(_) => {}
        }
        if live && probe.failure_threshold * probe.period < LIVENESS_WINDOW_SECS {
            out.push(finding(
                "k8s-liveness-hair-trigger",
                Severity::Warning,
                format!(
                    "livenessProbe restarts the container after {}s of failures (failureThreshold {} x periodSeconds {}) ({at})",
                    secs(probe.failure_threshold * probe.period),
                    secs(probe.failure_threshold),
                    secs(probe.period)
                ),
                vec![
                    "a worker stuck past --timeout fails /healthz until the master has replaced it, which it does by itself and logs (WORKER TIMEOUT with the stack)".to_string(),
                    "a shorter window turns one stuck request into a restart of every worker, with their requests in flight".to_string(),
                ],
                format!("Set periodSeconds: 10 and failureThreshold: 3 (at least {}s).", secs(LIVENESS_WINDOW_SECS)),
            ));
        }
    }

    // Workers from the CPU limit.
    if let Some((_, value)) = c.env.iter().rev().find(|(k, _)| k == "WEB_CONCURRENCY") {
        let env = environment(c);
        let from_env = env
            .get("WEB_CONCURRENCY")
            .and_then(|v| v.trim().parse::<usize>().ok());
        if let EnvValue::Resource { resource, divisor } = value {
            let cpu = resource.ends_with(".cpu");
            let unset = match resource.as_str() {
                "limits.cpu" => c.cpu_limit.is_none(),
                "requests.cpu" => c.cpu_request.is_none() && c.cpu_limit.is_none(),
                _ => false,
            };
            if unset {
                out.push(finding(
                    "k8s-web-concurrency-no-cpu-limit",
                    Severity::Warning,
                    format!("WEB_CONCURRENCY comes from {resource}, which is not set ({at})"),
                    vec!["without a limit the downward API gives the node's allocatable CPUs: one worker per core of whatever node the pod lands on, and memory to match".to_string()],
                    "Set resources.limits.cpu (the workers follow it), or give -w explicitly.".to_string(),
                ));
            } else if cpu && quantity(divisor).is_some_and(|d| (d - 1.0).abs() > 1e-9) {
                out.push(finding(
                    "k8s-web-concurrency-divisor",
                    Severity::Critical,
                    format!("WEB_CONCURRENCY is {resource} divided by {divisor}: {} worker(s) ({at})", from_env.map_or("?".to_string(), |n| n.to_string())),
                    vec!["the downward API divides the CPU amount by the divisor and rounds up: a divisor of 1m gives millicores".to_string()],
                    "Use `divisor: \"1\"` (whole cores, rounded up).".to_string(),
                ));
            }
        }
        if from_env.is_some_and(|n| n != cfg.workers) {
            out.push(finding(
                "k8s-web-concurrency-ignored",
                Severity::Info,
                format!("WEB_CONCURRENCY is set but -w/--workers (or the config file) wins: {} worker(s) ({at})", cfg.workers),
                vec![format!("WEB_CONCURRENCY would give {}", from_env.unwrap_or(0))],
                "Drop one of the two, so that the manifest says what runs.".to_string(),
            ));
        }
    }
    if let Some(cpu) = c.cpu_limit {
        let cores = cpu.ceil().max(1.0);
        if workers > 2.0 * cores + 1.0 {
            out.push(finding(
                "k8s-workers-above-cpu",
                Severity::Warning,
                format!("{} workers on a CPU limit of {} ({at})", cfg.workers, secs(cpu)),
                vec!["the CFS quota is shared by every worker: past about two per core they throttle each other, and a request's time in Python grows toward --timeout under load".to_string()],
                format!("Take the workers from the limit (WEB_CONCURRENCY from resourceFieldRef limits.cpu, divisor 1) or use at most {} and more --threads.", 2.0 * cores + 1.0),
            ));
        }
    }
}

/// Services and ServiceMonitors against the containers' ports.
fn service_rules(objects: &[Object], judged: &[Judged], out: &mut Vec<Finding>) {
    let services: Vec<&Object> = objects.iter().filter(|o| o.kind == "Service").collect();
    for svc in &services {
        let selector = string_map(&svc.doc["spec"]["selector"]);
        let backends: Vec<&Judged> = judged
            .iter()
            .filter(|j| selects(&selector, &j.container.pod_labels))
            .collect();
        if backends.is_empty() {
            if !judged.is_empty() && !selector.is_empty() {
                out.push(finding(
                    "k8s-service-selector",
                    Severity::Warning,
                    format!("{} selects no pod of the workloads here", svc.label()),
                    vec![
                        format!(
                            "selector: {}",
                            selector
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        format!(
                            "pod labels: {}",
                            judged
                                .iter()
                                .map(|j| format!(
                                    "{}: {}",
                                    j.container.workload,
                                    j.container
                                        .pod_labels
                                        .iter()
                                        .map(|(k, v)| format!("{k}={v}"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    ],
                    "Make the Service's selector match the pod template's labels.".to_string(),
                ));
            }
            continue;
        }
        for port in list(&svc.doc["spec"]["ports"]) {
            let target = PortRef::of(&port["targetPort"]).or_else(|| PortRef::of(&port["port"]));
            let Some(target) = target else { continue };
            let name = text_of(&port["name"]).unwrap_or_else(|| target.show());
            for j in &backends {
                let Ok(s) = &j.server else { continue };
                let mut listening: Vec<u16> = s
                    .cfg
                    .binds
                    .iter()
                    .filter_map(tcp_port)
                    .map(|(_, p)| p)
                    .collect();
                listening.extend(
                    s.cfg
                        .metrics_bind
                        .as_ref()
                        .and_then(tcp_port)
                        .map(|(_, p)| p),
                );
                let number = j.port_of(&target);
                if !number.is_some_and(|n| listening.contains(&n)) {
                    out.push(finding(
                        "k8s-service-port",
                        Severity::Critical,
                        format!("{} port {name} targets {}, where ferricorn does not listen ({})", svc.label(), target.show(), j.container.place),
                        vec![match number {
                            None => format!("no container port is named {}", target.show()),
                            Some(n) => format!("port {n}; ferricorn listens on {}", listening.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")),
                        }],
                        "Point targetPort at the container port of --bind (or of --metrics-bind for scraping).".to_string(),
                    ));
                }
            }
        }
    }
    for sm in objects.iter().filter(|o| o.kind == "ServiceMonitor") {
        let selector = string_map(&sm.doc["spec"]["selector"]["matchLabels"]);
        let matched: Vec<&&Object> = services
            .iter()
            .filter(|s| selects(&selector, &string_map(&s.doc["metadata"]["labels"])))
            .collect();
        if matched.is_empty() {
            if !services.is_empty() {
                out.push(finding(
                    "k8s-servicemonitor-no-service",
                    Severity::Warning,
                    format!("{} selects no Service here by its labels", sm.label()),
                    vec![format!("matchLabels: {}", selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "))],
                    "Give the Service the labels the ServiceMonitor's selector names (its metadata.labels, not its selector).".to_string(),
                ));
            }
            continue;
        }
        for ep in list(&sm.doc["spec"]["endpoints"]) {
            let path = text_of(&ep["path"]).unwrap_or_else(|| "/metrics".to_string());
            if path != "/metrics" {
                out.push(finding(
                    "k8s-servicemonitor-path",
                    Severity::Critical,
                    format!("{} scrapes {path}; the metrics are at /metrics", sm.label()),
                    vec!["the metrics listener answers other paths with 404 (or with health answers that are not metrics)".to_string()],
                    "Use `path: /metrics` (or leave it out).".to_string(),
                ));
            }
            let Some(port_name) = text_of(&ep["port"]) else {
                continue;
            };
            for svc in &matched {
                let port = list(&svc.doc["spec"]["ports"])
                    .iter()
                    .find(|p| text_of(&p["name"]).as_deref() == Some(port_name.as_str()));
                let Some(port) = port else {
                    out.push(finding(
                        "k8s-servicemonitor-port",
                        Severity::Critical,
                        format!("{} scrapes port {port_name}, which {} does not name", sm.label(), svc.label()),
                        vec![format!("the Service's ports: {}", list(&svc.doc["spec"]["ports"]).iter().filter_map(|p| text_of(&p["name"])).collect::<Vec<_>>().join(", "))],
                        "Name the Service's metrics port as the ServiceMonitor's endpoint says (or the other way round).".to_string(),
                    ));
                    continue;
                };
                let target =
                    PortRef::of(&port["targetPort"]).or_else(|| PortRef::of(&port["port"]));
                let selector = string_map(&svc.doc["spec"]["selector"]);
                for j in judged
                    .iter()
                    .filter(|j| selects(&selector, &j.container.pod_labels))
                {
                    let Ok(s) = &j.server else { continue };
                    let metrics = s.cfg.metrics_bind.as_ref().and_then(tcp_port);
                    let number = target.as_ref().and_then(|t| j.port_of(t));
                    if metrics.is_none() || number != metrics.map(|(_, p)| p) {
                        out.push(finding(
                            "k8s-servicemonitor-port",
                            Severity::Critical,
                            format!("{} scrapes port {port_name}, which is not ferricorn's metrics listener ({})", sm.label(), j.container.place),
                            vec![match metrics {
                                None => "the container has no --metrics-bind: there is no /metrics to scrape".to_string(),
                                Some((_, p)) => format!("the Service's port {port_name} leads to port {}; --metrics-bind is on {p}", number.map_or("?".to_string(), |n| n.to_string())),
                            }],
                            match metrics {
                                None => "Add --metrics-bind=0.0.0.0:9100, a container port and a Service port for it.".to_string(),
                                Some((_, p)) => format!("Point the Service port's targetPort at {p} (the metrics listener)."),
                            },
                        ));
                    } else {
                        let (h, p) = metrics.unwrap_or(("", 0));
                        if loopback(h) {
                            out.push(finding(
                                "k8s-metrics-loopback",
                                Severity::Critical,
                                format!("The metrics listener is on {h}:{p}, out of reach of Prometheus ({})", j.container.place),
                                vec!["Prometheus connects to the pod's IP".to_string()],
                                format!("Use --metrics-bind=0.0.0.0:{p}."),
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// HorizontalPodAutoscalers: their target, their metric and its target value.
fn hpa_rules(objects: &[Object], judged: &[Judged], out: &mut Vec<Finding>) {
    let exported = exported_metrics();
    for hpa in objects
        .iter()
        .filter(|o| o.kind == "HorizontalPodAutoscaler")
    {
        let target = &hpa.doc["spec"]["scaleTargetRef"];
        let workload = format!(
            "{} {}",
            text_of(&target["kind"]).unwrap_or_default(),
            text_of(&target["name"]).unwrap_or_default()
        );
        let scaled: Vec<&Judged> = judged
            .iter()
            .filter(|j| j.container.workload == workload)
            .collect();
        if scaled.is_empty() && !judged.is_empty() {
            out.push(finding(
                "k8s-hpa-target-missing",
                Severity::Warning,
                format!(
                    "{} scales {workload}, which is not among the workloads here",
                    hpa.label()
                ),
                vec![format!(
                    "ferricorn runs in: {}",
                    judged
                        .iter()
                        .map(|j| j.container.workload.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                )],
                "Point scaleTargetRef at the Deployment that runs ferricorn.".to_string(),
            ));
        }
        for m in list(&hpa.doc["spec"]["metrics"]) {
            let kind = text_of(&m["type"]).unwrap_or_default();
            let spec = match kind.as_str() {
                "Pods" => &m["pods"],
                "Object" => &m["object"],
                "External" => &m["external"],
                "Resource" | "ContainerResource" => {
                    let r = if kind == "Resource" {
                        &m["resource"]
                    } else {
                        &m["containerResource"]
                    };
                    if text_of(&r["name"]).as_deref() == Some("cpu") {
                        out.push(finding(
                            "k8s-hpa-cpu",
                            Severity::Info,
                            format!("{} scales on CPU", hpa.label()),
                            vec!["requests that wait on a database or another service hold app threads with the CPU idle: CPU stays low while requests queue".to_string()],
                            "Scale on busy threads (ferricorn_threads_busy as a pods metric, docs/kubernetes.md), alone or beside CPU.".to_string(),
                        ));
                    }
                    continue;
                }
                _ => continue,
            };
            let Some(name) = text_of(&spec["metric"]["name"]) else {
                continue;
            };
            if !name.starts_with("ferricorn_") && kind == "External" {
                continue;
            }
            if !known_metric(&name, &exported) {
                let similar: Vec<&str> = exported
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .filter(|n| n.contains("threads_busy"))
                    .collect();
                out.push(finding(
                    "k8s-hpa-metric-unknown",
                    Severity::Critical,
                    format!("{} scales on {name}, which ferricorn does not export", hpa.label()),
                    vec![
                        "the HPA reads <unknown> for it and never scales".to_string(),
                        format!("busy threads are exported as {}", similar.join(" and ")),
                    ],
                    "Use `metric: {name: ferricorn_threads_busy}` with the Prometheus adapter rule of docs/kubernetes.md.".to_string(),
                ));
                continue;
            }
            let per_pod =
                name == "ferricorn_threads_busy" || name == "ferricorn_requests_in_flight";
            let value = quantity_of(&spec["target"]["averageValue"]);
            if let (true, Some(v)) = (per_pod, value) {
                for j in &scaled {
                    let Ok(s) = &j.server else { continue };
                    let cap = (s.cfg.workers * per_worker(&s.cfg)) as f64;
                    if v >= cap * 0.9 {
                        let never = v >= cap;
                        out.push(finding(
                            "k8s-hpa-target-unreachable",
                            if never { Severity::Critical } else { Severity::Warning },
                            format!(
                                "{} waits for {} busy threads per pod; a pod has {} ({} worker(s) x {}) ({})",
                                hpa.label(), secs(v), cap, s.cfg.workers, per_worker(&s.cfg), j.container.place
                            ),
                            vec![if never {
                                "busy threads cannot exceed the capacity: the HPA never adds a pod, however long requests wait".to_string()
                            } else {
                                "the HPA adds pods only once requests already wait for a thread".to_string()
                            }],
                            format!("Set averageValue: \"{}\" (75% of the threads of a pod).", secs((cap * 0.75).floor().max(1.0))),
                        ));
                    }
                }
            }
        }
    }
}

impl Analysis {
    /// The source line of the report.
    pub fn summary(&self, files: &[String]) -> String {
        let settings: Vec<String> = self
            .containers
            .iter()
            .map(|j| match &j.server {
                Ok(s) => format!(
                    "{}: {} worker(s) x {} ({}), graceful timeout {}s",
                    j.container.place,
                    s.cfg.workers,
                    per_worker(&s.cfg),
                    s.cfg.worker_class.name(),
                    s.cfg.graceful_timeout
                ),
                Err(_) => format!("{}: its command line is refused", j.container.place),
            })
            .collect();
        format!(
            "{} file(s), {} object(s){}{}",
            files.len(),
            self.objects,
            if settings.is_empty() { "" } else { "; " },
            settings.join("; ")
        )
    }

    pub fn json(&self, files: &[String]) -> Json {
        let containers = self
            .containers
            .iter()
            .map(|j| {
                let c = &j.container;
                let base = [
                    ("place", c.place.as_str().into()),
                    (
                        "memory_limit_bytes",
                        c.memory_limit.map(Json::Float).unwrap_or(Json::Null),
                    ),
                    (
                        "cpu_limit",
                        c.cpu_limit.map(Json::Float).unwrap_or(Json::Null),
                    ),
                    (
                        "termination_grace_period_seconds",
                        Json::Float(c.grace.unwrap_or(DEFAULT_GRACE_SECS)),
                    ),
                    ("prestop_sleep_seconds", Json::Float(c.prestop_sleep)),
                ];
                let mut pairs: Vec<(&str, Json)> = base.into_iter().collect();
                match &j.server {
                    Ok(s) => pairs.extend([
                        (
                            "argv",
                            Json::Arr(s.argv.iter().map(|a| a.as_str().into()).collect()),
                        ),
                        ("workers", s.cfg.workers.into()),
                        ("worker_class", s.cfg.worker_class.name().into()),
                        ("capacity_per_worker", per_worker(&s.cfg).into()),
                        ("timeout", s.cfg.timeout.into()),
                        ("graceful_timeout", s.cfg.graceful_timeout.into()),
                        ("shutdown_delay", s.cfg.shutdown_delay.into()),
                        ("max_worker_memory_mib", s.cfg.max_worker_memory.into()),
                        (
                            "binds",
                            Json::Arr(s.cfg.binds.iter().map(|b| b.spec().into()).collect()),
                        ),
                        (
                            "metrics_bind",
                            s.cfg.metrics_bind.as_ref().map(BindAddress::spec).into(),
                        ),
                    ]),
                    Err(e) => pairs.push(("error", e.as_str().into())),
                }
                Json::Obj(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            })
            .collect();
        obj([
            (
                "files",
                Json::Arr(files.iter().map(|f| f.as_str().into()).collect()),
            ),
            ("objects", self.objects.into()),
            ("containers", Json::Arr(containers)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: [&str; 4] = [
        include_str!("../../../deploy/kubernetes/deployment.yaml"),
        include_str!("../../../deploy/kubernetes/service.yaml"),
        include_str!("../../../deploy/kubernetes/hpa.yaml"),
        include_str!("../../../deploy/kubernetes/servicemonitor.yaml"),
    ];

    fn objects(texts: &[&str]) -> Vec<Object> {
        texts
            .iter()
            .enumerate()
            .flat_map(|(i, t)| parse(t, &format!("f{i}.yaml")).unwrap())
            .collect()
    }

    fn ids(a: &Analysis) -> Vec<&'static str> {
        a.findings.iter().map(|f| f.id).collect()
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1Gi"), Some(1024.0 * MIB));
        assert_eq!(quantity("768Mi"), Some(768.0 * MIB));
        assert_eq!(quantity("1e9"), Some(1e9));
        assert_eq!(quantity("512M"), Some(512e6));
        assert_eq!(quantity("Mi"), None);
        assert_eq!(quantity("-1"), None);
        assert_eq!(quantity("x"), None);
    }

    #[test]
    fn expansion_and_argv() {
        let env: BTreeMap<String, String> = [("P".to_string(), "9000".to_string())].into();
        assert_eq!(expand("-b=0.0.0.0:$(P)", &env), "-b=0.0.0.0:9000");
        assert_eq!(expand("$$(P) $(Q) $", &env), "$(P) $(Q) $");
        let c = |command: &[&str], args: &[&str]| {
            let mut c = containers(&objects(&[SHIPPED[0]])).remove(0);
            c.command = command.iter().map(|s| s.to_string()).collect();
            c.has_command = !command.is_empty();
            c.args = args.iter().map(|s| s.to_string()).collect();
            server_argv(&c, &env)
        };
        assert_eq!(
            c(
                &["sh", "-c"],
                &["migrate && exec ferricorn -w 2 app:app; echo"]
            )
            .unwrap(),
            vec!["ferricorn", "-w", "2", "app:app"]
        );
        assert_eq!(
            c(&["python", "-m", "ferricorn"], &["app:app"]).unwrap(),
            vec!["ferricorn", "app:app"]
        );
        assert_eq!(c(&[], &["-w", "3"]).unwrap(), vec!["ferricorn", "-w", "3"]);
        assert_eq!(c(&["nginx"], &["-g", "daemon off;"]), None);
    }

    #[test]
    fn shipped_manifests_are_quiet() {
        let a = analyze(&objects(&SHIPPED), None);
        assert!(a.findings.is_empty(), "{:#?}", a.findings);
        assert_eq!(a.containers.len(), 1);
        let s = a.containers[0].server.as_ref().unwrap();
        assert_eq!(s.cfg.workers, 2, "WEB_CONCURRENCY from limits.cpu");
    }

    #[test]
    fn each_rule_fires() {
        let dep = SHIPPED[0];
        let cases: [(&str, &str, &str); 9] = [
            (
                "terminationGracePeriodSeconds: 45",
                "terminationGracePeriodSeconds: 30",
                "k8s-grace-period-short",
            ),
            (
                "memory: 1Gi\n          livenessProbe",
                "memory: 512Mi\n          livenessProbe",
                "k8s-memory-limit-low",
            ),
            (
                "path: /healthz\n              port: metrics",
                "path: /healthz\n              port: http",
                "k8s-probe-app-port",
            ),
            ("path: /readyz", "path: /ready", "k8s-probe-path"),
            (
                "--bind=0.0.0.0:8000",
                "--bind=127.0.0.1:8000",
                "k8s-bind-loopback",
            ),
            (
                "divisor: \"1\"",
                "divisor: 1m",
                "k8s-web-concurrency-divisor",
            ),
            (
                "periodSeconds: 10",
                "periodSeconds: 3",
                "k8s-liveness-hair-trigger",
            ),
            (
                "--max-worker-memory=256",
                "--max-worker-memory=0",
                "k8s-no-max-worker-memory",
            ),
            ("- --timeout=30", "- --timeout=abc", "k8s-command-invalid"),
        ];
        for (from, to, id) in cases {
            assert!(dep.contains(from), "{from}");
            let changed = dep.replace(from, to);
            let a = analyze(
                &objects(&[&changed, SHIPPED[1], SHIPPED[2], SHIPPED[3]]),
                None,
            );
            assert!(ids(&a).contains(&id), "{id}: {:#?}", a.findings);
        }
        let hpa = SHIPPED[2].replace("ferricorn_threads_busy", "ferricorn_busy_threads");
        let a = analyze(&objects(&[dep, &hpa]), None);
        assert_eq!(ids(&a), vec!["k8s-hpa-metric-unknown"]);
        let hpa = SHIPPED[2].replace("averageValue: \"6\"", "averageValue: \"8\"");
        assert_eq!(
            ids(&analyze(&objects(&[dep, &hpa]), None)),
            vec!["k8s-hpa-target-unreachable"]
        );
        let sm = SHIPPED[3].replace("port: metrics", "port: http");
        let a = analyze(&objects(&[dep, SHIPPED[1], &sm]), None);
        assert_eq!(ids(&a), vec!["k8s-servicemonitor-port"]);
    }

    #[test]
    fn exported_names() {
        let e = exported_metrics();
        assert!(known_metric("ferricorn_threads_busy", &e));
        assert!(known_metric("ferricorn_requests_per_second", &e));
        assert!(known_metric("ferricorn_asgi_event_loop_lag_seconds", &e));
        assert!(!known_metric("ferricorn_busy_threads", &e));
    }

    #[test]
    fn any_cut_or_mangled_manifest_is_judged_without_panic() {
        // Every prefix of the Deployment, and copies with one byte replaced at many places: the
        // YAML either parses or is refused, and whatever parses is judged.
        let dep = SHIPPED[0].as_bytes();
        let mut texts: Vec<String> = (0..dep.len())
            .step_by(7)
            .map(|n| String::from_utf8_lossy(&dep[..n]).into_owned())
            .collect();
        for (i, b) in [b':', b'-', b' ', b'"', b'[', b'\n', b'{', b'&', b'*']
            .iter()
            .cycle()
            .take(400)
            .enumerate()
        {
            let mut v = dep.to_vec();
            let at = (i * 131) % v.len();
            v[at] = *b;
            texts.push(String::from_utf8_lossy(&v).into_owned());
        }
        for t in texts {
            if let Ok(objs) = parse(&t, "cut.yaml") {
                let _ = analyze(&objs, None);
            }
        }
    }
}
