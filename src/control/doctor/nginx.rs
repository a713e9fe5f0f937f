//! The nginx side of `ferricornctl doctor`: a small, tolerant reader of nginx configuration (a file
//! with its `include`s, or the dump `nginx -T` prints) and the few facts the rules need from it:
//! every location that proxies (its upstream addresses and its effective `proxy_read_timeout`,
//! `proxy_send_timeout`, `proxy_connect_timeout` after inheritance), upstream keep-alive, and which
//! location answers a `/static/` URL.
//!
//! Tolerant means: a configuration nginx would reject still yields what can be read (an unbalanced
//! brace closes or ends a block, an unknown directive is kept and ignored), because the doctor must
//! report on a broken setup too. Regular-expression locations are matched by a heuristic (a literal
//! prefix, or an extension list such as `\.(css|js)$`), not by a regex engine: enough for the static
//! files question, and said so in the output when a regex location could not be judged.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// nginx's built-in value of `proxy_read_timeout`, `proxy_send_timeout` and `proxy_connect_timeout`.
pub const DEFAULT_PROXY_TIMEOUT: f64 = 60.0;
/// nginx's built-in `keepalive_timeout` inside an `upstream` block.
pub const DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT: f64 = 60.0;
/// Nested `include`s deeper than this are taken for a loop and not followed.
const MAX_INCLUDE_DEPTH: usize = 16;
/// The header `nginx -T` prints before each file it dumps.
const DUMP_HEADER: &str = "# configuration file ";

#[derive(Debug)]
pub enum NginxError {
    Read { path: PathBuf, err: std::io::Error },
    Empty,
}

impl fmt::Display for NginxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NginxError::Read { path, err } => write!(f, "cannot read {}: {err}", path.display()),
            NginxError::Empty => f.write_str("no configuration in the input"),
        }
    }
}

/// One directive: `name args...;` or `name args... { block }`, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub block: Option<Vec<Directive>>,
    pub file: String,
    pub line: usize,
}

impl Directive {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Semi,
    Open,
    Close,
}

/// Words, quoted strings, `;`, `{`, `}` and `#` comments, as nginx splits its files. `${var}` stays
/// inside its word.
fn tokenize(text: &str) -> Vec<(Token, usize)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let mut word = String::new();
    let mut word_line = 1;
    let flush = |word: &mut String, out: &mut Vec<(Token, usize)>, at: usize| {
        if !word.is_empty() {
            out.push((Token::Word(std::mem::take(word)), at));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                flush(&mut word, &mut out, word_line);
                line += 1;
            }
            c if c.is_whitespace() => flush(&mut word, &mut out, word_line),
            '#' if word.is_empty() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            ';' => {
                flush(&mut word, &mut out, word_line);
                out.push((Token::Semi, line));
            }
            '{' if word.ends_with('$') => {
                // `${name}`: part of the word.
                word.push('{');
                for c in chars.by_ref() {
                    word.push(c);
                    if c == '}' {
                        break;
                    }
                }
            }
            '{' => {
                flush(&mut word, &mut out, word_line);
                out.push((Token::Open, line));
            }
            '}' => {
                flush(&mut word, &mut out, word_line);
                out.push((Token::Close, line));
            }
            '"' | '\'' if word.is_empty() => {
                word_line = line;
                let quote = c;
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                if n == '\n' {
                                    line += 1;
                                }
                                s.push(n);
                            }
                        }
                        c if c == quote => break,
                        c => {
                            if c == '\n' {
                                line += 1;
                            }
                            s.push(c);
                        }
                    }
                }
                out.push((Token::Word(s), word_line));
            }
            '\\' => {
                if word.is_empty() {
                    word_line = line;
                }
                word.push('\\');
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c => {
                if word.is_empty() {
                    word_line = line;
                }
                word.push(c);
            }
        }
    }
    flush(&mut word, &mut out, word_line);
    out
}

/// Directives from tokens, without following includes. An extra `}` is skipped; a block still open at
/// the end is closed.
fn build(tokens: &[(Token, usize)], pos: &mut usize, file: &str, nested: bool) -> Vec<Directive> {
    let mut out = Vec::new();
    let mut words: Vec<(String, usize)> = Vec::new();
    while *pos < tokens.len() {
        let (tok, line) = &tokens[*pos];
        *pos += 1;
        match tok {
            Token::Word(w) => words.push((w.clone(), *line)),
            Token::Semi | Token::Open => {
                let block = if *tok == Token::Open {
                    Some(build(tokens, pos, file, true))
                } else {
                    None
                };
                if let Some(((name, at), args)) = words.split_first().map(|(n, a)| (n.clone(), a)) {
                    out.push(Directive {
                        name,
                        args: args.iter().map(|(w, _)| w.clone()).collect(),
                        block,
                        file: file.to_string(),
                        line: at,
                    });
                }
                words.clear();
            }
            Token::Close => {
                // A directive left without its `;` before the brace still counts.
                if let Some(((name, at), args)) = words.split_first().map(|(n, a)| (n.clone(), a)) {
                    out.push(Directive {
                        name,
                        args: args.iter().map(|(w, _)| w.clone()).collect(),
                        block: None,
                        file: file.to_string(),
                        line: at,
                    });
                }
                words.clear();
                if nested {
                    return out;
                }
            }
        }
    }
    out
}

/// Where included files come from: the files of an `nginx -T` dump, or the file system.
enum Files {
    Dump(Vec<(String, String)>),
    Disk,
}

impl Files {
    /// The files an `include` pattern names, with their text, in name order (as nginx's glob).
    fn matching(&self, pattern: &str) -> Vec<(String, String)> {
        match self {
            Files::Dump(files) => {
                let Ok(p) = glob::Pattern::new(pattern) else {
                    return Vec::new();
                };
                let mut found: Vec<(String, String)> = files
                    .iter()
                    .filter(|(name, _)| p.matches(name))
                    .cloned()
                    .collect();
                found.sort();
                found
            }
            Files::Disk => {
                let Ok(paths) = glob::glob(pattern) else {
                    return Vec::new();
                };
                let mut found: Vec<(String, String)> = paths
                    .flatten()
                    .filter(|p| p.is_file())
                    .filter_map(|p| {
                        let text = std::fs::read_to_string(&p).ok()?;
                        Some((p.display().to_string(), text))
                    })
                    .collect();
                found.sort();
                found
            }
        }
    }
}

/// Replace each `include` with the directives of the files it names (relative patterns are relative
/// to the main file's directory, nginx's configuration prefix).
fn splice(dirs: Vec<Directive>, files: &Files, prefix: &Path, depth: usize) -> Vec<Directive> {
    let mut out = Vec::new();
    for mut d in dirs {
        if d.name == "include" && d.block.is_none() {
            if depth >= MAX_INCLUDE_DEPTH {
                continue;
            }
            let Some(pattern) = d.args.first() else {
                continue;
            };
            let full = if Path::new(pattern).is_absolute() {
                pattern.clone()
            } else {
                prefix.join(pattern).display().to_string()
            };
            for (name, text) in files.matching(&full) {
                let tokens = tokenize(&text);
                let parsed = build(&tokens, &mut 0, &name, false);
                out.extend(splice(parsed, files, prefix, depth + 1));
            }
            continue;
        }
        if let Some(block) = d.block.take() {
            d.block = Some(splice(block, files, prefix, depth));
        }
        out.push(d);
    }
    out
}

/// The files of an `nginx -T` dump, main file first; None when `text` is not such a dump.
fn split_dump(text: &str) -> Option<Vec<(String, String)>> {
    let mut files: Vec<(String, String)> = Vec::new();
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if let Some(rest) = trimmed.strip_prefix(DUMP_HEADER) {
            let name = rest.strip_suffix(':').unwrap_or(rest);
            files.push((name.to_string(), String::new()));
        } else if let Some((_, body)) = files.last_mut() {
            body.push_str(line);
        }
    }
    (!files.is_empty()).then_some(files)
}

/// Read a configuration: `text` is `nginx -T` output or the main file's own text (`path` names it,
/// for its includes and for messages).
pub fn parse(text: &str, path: &str) -> Result<Vec<Directive>, NginxError> {
    let (main_name, main_text, files) = match split_dump(text) {
        Some(files) => {
            let (name, body) = files[0].clone();
            (name, body, Files::Dump(files))
        }
        None => (path.to_string(), text.to_string(), Files::Disk),
    };
    let prefix = Path::new(&main_name)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let tokens = tokenize(&main_text);
    let dirs = build(&tokens, &mut 0, &main_name, false);
    let dirs = splice(dirs, &files, &prefix, 0);
    if dirs.is_empty() {
        return Err(NginxError::Empty);
    }
    Ok(dirs)
}

/// An nginx time (`60`, `60s`, `1m30s`, `500ms`, `2h`) in seconds.
pub fn parse_time(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "" | "s" => 1.0,
            "ms" => 0.001,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 7.0 * 86400.0,
            "M" => 30.0 * 86400.0,
            "y" => 365.0 * 86400.0,
            _ => return None,
        };
        total += n * factor;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// A timeout's effective value and where it was set (`file:line`, or None for nginx's default).
#[derive(Clone, Debug, PartialEq)]
pub struct Timeout {
    pub secs: f64,
    pub set_at: Option<String>,
}

/// A location that passes requests to an upstream with `proxy_pass`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyLocation {
    /// `server_name` (or the `listen` address when there is none) of the enclosing server.
    pub server: String,
    /// The location as written: `/`, `= /health/`, `~* \.php$`.
    pub location: String,
    /// `file:line` of the location block.
    pub at: String,
    pub proxy_pass: String,
    /// `host:port` or `unix:/path` of each server behind `proxy_pass`; empty when it holds variables.
    pub upstream: Vec<String>,
    pub upstream_name: Option<String>,
    pub read_timeout: Timeout,
    pub send_timeout: Timeout,
    pub connect_timeout: Timeout,
    /// `proxy_http_version 1.1` is in effect (needed for upstream keep-alive).
    pub http11: bool,
}

/// An `upstream` block.
#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<String>,
    /// `keepalive N`: idle connections nginx keeps open to the servers.
    pub keepalive: Option<u64>,
    pub keepalive_timeout: f64,
    pub at: String,
}

/// Who answers a URL in one server block.
#[derive(Clone, Debug, PartialEq)]
pub enum Handler {
    /// A location that proxies it (`location`, `file:line`, `proxy_pass` target).
    Proxied {
        location: String,
        at: String,
        pass: String,
    },
    /// nginx sends files (`alias`/`root`, maybe `try_files`) from this location.
    Files {
        location: String,
        at: String,
        how: String,
    },
    /// Some other handler (`return`, no location at all ...).
    Other { what: String },
}

/// One `server` block: its name and who answers `/static/` in it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerBlock {
    pub name: String,
    pub at: String,
    pub static_handler: Handler,
    /// Regex locations that could not be judged for `/static/` (the heuristic did not apply).
    pub unjudged_regex: Vec<String>,
}

/// What the doctor knows about nginx.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NginxView {
    pub proxies: Vec<ProxyLocation>,
    pub upstreams: Vec<Upstream>,
    pub servers: Vec<ServerBlock>,
}

/// The URL asked about for static files: a stylesheet under `/static/`, Django's `STATIC_URL`.
pub const STATIC_PROBE_URI: &str = "/static/ferricorn-doctor.css";

/// Inherited settings while walking down http → server → location.
#[derive(Clone, Default)]
struct Inherited {
    read: Option<Timeout>,
    send: Option<Timeout>,
    connect: Option<Timeout>,
    http11: bool,
    root: Option<String>,
}

impl Inherited {
    fn apply(&mut self, block: &[Directive]) {
        for d in block {
            let first = d.args.first().map(String::as_str).unwrap_or("");
            let timeout = || {
                parse_time(first).map(|secs| Timeout {
                    secs,
                    set_at: Some(d.at()),
                })
            };
            match d.name.as_str() {
                "proxy_read_timeout" => self.read = timeout().or(self.read.take()),
                "proxy_send_timeout" => self.send = timeout().or(self.send.take()),
                "proxy_connect_timeout" => self.connect = timeout().or(self.connect.take()),
                "proxy_http_version" => self.http11 = first == "1.1",
                "root" => self.root = Some(first.to_string()),
                _ => {}
            }
        }
    }

    fn get(t: &Option<Timeout>) -> Timeout {
        t.clone().unwrap_or(Timeout {
            secs: DEFAULT_PROXY_TIMEOUT,
            set_at: None,
        })
    }
}

fn find<'a>(block: &'a [Directive], name: &str) -> Option<&'a Directive> {
    block.iter().find(|d| d.name == name)
}

/// `host:port` of `proxy_pass http://host:port/...`, `unix:/path` of `http://unix:/path:/uri`, or the
/// upstream name (`http://backend`).
fn pass_target(pass: &str) -> String {
    let rest = pass
        .strip_prefix("http://")
        .or_else(|| pass.strip_prefix("https://"))
        .unwrap_or(pass);
    if let Some(unix) = rest.strip_prefix("unix:") {
        let path = unix.split(':').next().unwrap_or(unix);
        return format!("unix:{path}");
    }
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// A location's pattern words as written (`= /x`, `/static/`).
fn location_text(d: &Directive) -> String {
    d.args.join(" ")
}

struct Loc<'a> {
    d: &'a Directive,
    modifier: &'a str,
    pattern: &'a str,
    inherited: Inherited,
}

fn collect_locations<'a>(block: &'a [Directive], inh: &Inherited, out: &mut Vec<Loc<'a>>) {
    for d in block.iter().filter(|d| d.name == "location") {
        let Some(body) = &d.block else { continue };
        let (modifier, pattern) = match d.args.as_slice() {
            [p] => match p.as_str() {
                // `location =/x` and `location ~\.css$` are written without a space too.
                p if p.starts_with("^~") => ("^~", &p[2..]),
                p if p.starts_with("~*") && p.len() > 2 => ("~*", &p[2..]),
                p if p.starts_with('~') && p.len() > 1 => ("~", &p[1..]),
                p if p.starts_with('=') && p.len() > 1 => ("=", &p[1..]),
                p => ("", p),
            },
            [m, p, ..] => (m.as_str(), p.as_str()),
            [] => continue,
        };
        let mut mine = inh.clone();
        mine.apply(body);
        out.push(Loc {
            d,
            modifier,
            pattern,
            inherited: mine.clone(),
        });
        collect_locations(body, &mine, out);
    }
}

/// Whether a regex location matches `uri`: Some(answer) when the heuristic applies, None when the
/// pattern is beyond it.
fn regex_matches(pattern: &str, uri: &str, caseless: bool) -> Option<bool> {
    let fold = |s: &str| {
        if caseless {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let (pat, uri) = (fold(pattern), fold(uri));
    // An extension list at the end: `\.(css|js|png)$`, `\.css$`, optionally followed by `(\?.*)?`.
    let tail = pat
        .trim_end_matches("(\\?.*)?")
        .trim_end_matches("(\\?|$)")
        .to_string();
    if let Some(i) = tail.rfind("\\.") {
        let ext = tail[i + 2..].trim_end_matches('$');
        let ends_anchored = tail.ends_with('$');
        let alternatives: Option<Vec<&str>> = ext
            .strip_prefix('(')
            .and_then(|e| e.strip_suffix(')'))
            .map(|e| e.trim_start_matches("?:").split('|').collect())
            .or_else(|| {
                (!ext.is_empty() && ext.chars().all(|c| c.is_ascii_alphanumeric()))
                    .then(|| vec![ext])
            });
        if let Some(alts) = alternatives {
            if alts
                .iter()
                .all(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric()))
            {
                let head = &tail[..i];
                let uri_ext = uri.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
                let ext_ok = alts.contains(&uri_ext)
                    || (!ends_anchored && alts.iter().any(|a| uri.contains(&format!(".{a}"))));
                let head_ok = match literal_prefix(head) {
                    Some(prefix) => uri.starts_with(&prefix),
                    None => head.is_empty() || head == ".*" || head == "^.*",
                };
                return Some(ext_ok && head_ok);
            }
        }
    }
    // A literal prefix: `^/static/`, `^/(static)/` is beyond it.
    let prefix = literal_prefix(&pat)?;
    Some(uri.starts_with(&prefix))
}

/// `^/static/` → `/static/` (unescaping `\/` and `\.`); None when the pattern holds regex syntax
/// after the literal part or is not anchored.
fn literal_prefix(pat: &str) -> Option<String> {
    let body = pat.strip_prefix('^')?;
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' => {
                // The literal part ends at regex syntax; only `.*` or nothing may follow.
                let rest: String = std::iter::once(c).chain(chars).collect();
                return (rest == ".*" || rest == ".*$").then_some(out);
            }
            '$' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Who answers `uri` in a server: nginx's order (exact, longest prefix unless `^~`, first regex, the
/// longest prefix).
fn handler_for(locs: &[Loc<'_>], uri: &str, unjudged: &mut Vec<String>) -> Option<usize> {
    if let Some(i) = locs
        .iter()
        .position(|l| l.modifier == "=" && l.pattern == uri)
    {
        return Some(i);
    }
    let prefix = locs
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            (l.modifier.is_empty() || l.modifier == "^~") && uri.starts_with(l.pattern)
        })
        .max_by_key(|(_, l)| l.pattern.len())
        .map(|(i, _)| i);
    if let Some(i) = prefix.filter(|i| locs[*i].modifier == "^~") {
        return Some(i);
    }
    for (i, l) in locs.iter().enumerate() {
        if l.modifier == "~" || l.modifier == "~*" {
            match regex_matches(l.pattern, uri, l.modifier == "~*") {
                Some(true) => return Some(i),
                Some(false) => {}
                None => unjudged.push(format!("{} ({})", location_text(l.d), l.d.at())),
            }
        }
    }
    prefix
}

fn handler_of(loc: &Loc<'_>) -> Handler {
    let body = loc.d.block.as_deref().unwrap_or(&[]);
    let location = location_text(loc.d);
    for pass in ["proxy_pass", "uwsgi_pass", "fastcgi_pass", "scgi_pass"] {
        if let Some(p) = find(body, pass) {
            return Handler::Proxied {
                location,
                at: loc.d.at(),
                pass: format!("{pass} {}", p.args.join(" ")),
            };
        }
    }
    if let Some(a) = find(body, "alias") {
        return Handler::Files {
            location,
            at: loc.d.at(),
            how: format!("alias {}", a.args.join(" ")),
        };
    }
    if let Some(r) = find(body, "return") {
        return Handler::Other {
            what: format!(
                "return {} in location {location} ({})",
                r.args.join(" "),
                loc.d.at()
            ),
        };
    }
    match &loc.inherited.root {
        Some(root) => Handler::Files {
            location,
            at: loc.d.at(),
            how: format!("root {root}"),
        },
        None => Handler::Files {
            location,
            at: loc.d.at(),
            how: "nginx's default root (html)".to_string(),
        },
    }
}

/// Extract what the rules need from the parsed directives.
pub fn analyze(dirs: &[Directive]) -> NginxView {
    let mut view = NginxView::default();
    // Directives may sit at the top level when a bare site file (no `http {}`) was given.
    let http: Vec<&[Directive]> = match dirs.iter().filter(|d| d.name == "http").collect::<Vec<_>>()
    {
        found if !found.is_empty() => found
            .into_iter()
            .filter_map(|d| d.block.as_deref())
            .collect(),
        _ => vec![dirs],
    };
    for block in http {
        let mut inh = Inherited::default();
        inh.apply(block);
        for u in block.iter().filter(|d| d.name == "upstream") {
            let body = u.block.as_deref().unwrap_or(&[]);
            view.upstreams.push(Upstream {
                name: u.args.first().cloned().unwrap_or_default(),
                servers: body
                    .iter()
                    .filter(|d| d.name == "server")
                    .filter_map(|d| d.args.first().cloned())
                    .collect(),
                keepalive: find(body, "keepalive").and_then(|d| d.args.first()?.parse().ok()),
                keepalive_timeout: find(body, "keepalive_timeout")
                    .and_then(|d| parse_time(d.args.first()?))
                    .unwrap_or(DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT),
                at: u.at(),
            });
        }
        let upstream_by_name: HashMap<String, Upstream> = view
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), u.clone()))
            .collect();
        for s in block.iter().filter(|d| d.name == "server") {
            let body = s.block.as_deref().unwrap_or(&[]);
            let mut sinh = inh.clone();
            sinh.apply(body);
            let name = find(body, "server_name")
                .map(|d| d.args.join(" "))
                .or_else(|| find(body, "listen").map(|d| format!("listen {}", d.args.join(" "))))
                .unwrap_or_else(|| "(unnamed server)".to_string());
            let mut locs = Vec::new();
            collect_locations(body, &sinh, &mut locs);
            for l in &locs {
                let lbody = l.d.block.as_deref().unwrap_or(&[]);
                let Some(pass) = find(lbody, "proxy_pass").and_then(|d| d.args.first()) else {
                    continue;
                };
                let target = pass_target(pass);
                let (upstream, upstream_name) = if target.contains('$') {
                    (Vec::new(), None)
                } else if let Some(u) = upstream_by_name.get(&target) {
                    (u.servers.clone(), Some(u.name.clone()))
                } else {
                    (vec![target], None)
                };
                view.proxies.push(ProxyLocation {
                    server: name.clone(),
                    location: location_text(l.d),
                    at: l.d.at(),
                    proxy_pass: pass.clone(),
                    upstream,
                    upstream_name,
                    read_timeout: Inherited::get(&l.inherited.read),
                    send_timeout: Inherited::get(&l.inherited.send),
                    connect_timeout: Inherited::get(&l.inherited.connect),
                    http11: l.inherited.http11,
                });
            }
            let mut unjudged = Vec::new();
            let static_handler = match handler_for(&locs, STATIC_PROBE_URI, &mut unjudged) {
                Some(i) => handler_of(&locs[i]),
                None => Handler::Other {
                    what: "no location matches it (nginx answers 404)".to_string(),
                },
            };
            view.servers.push(ServerBlock {
                name,
                at: s.at(),
                static_handler,
                unjudged_regex: unjudged,
            });
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of `nginx -T` output for a Django deployment: main file, an include of a site file,
    /// timeouts at http, server and location level.
    const DUMP: &str = r#"# configuration file /etc/nginx/nginx.conf:
user www-data;
worker_processes auto;
events { worker_connections 768; }
http {
    sendfile on;
    proxy_read_timeout 20s;   # site-wide
    include /etc/nginx/mime.types;
    include /etc/nginx/sites-enabled/*;
}

# configuration file /etc/nginx/mime.types:
types {
    text/css css;
    application/javascript js;
}

# configuration file /etc/nginx/sites-enabled/django:
upstream django_app {
    server 127.0.0.1:8000 fail_timeout=0;
    keepalive 16;
}
server {
    listen 80;
    server_name example.com www.example.com;
    proxy_send_timeout 1m;
    location /static/ {
        alias /srv/app/static/;
        expires 30d;
    }
    location / {
        proxy_pass http://django_app;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_read_timeout 10;
    }
    location /reports/ {
        proxy_pass http://127.0.0.1:8001/;
    }
}
"#;

    #[test]
    fn dump_with_includes_and_inheritance() {
        let dirs = parse(DUMP, "-").unwrap();
        let view = analyze(&dirs);
        assert_eq!(view.upstreams.len(), 1);
        let u = &view.upstreams[0];
        assert_eq!(u.servers, vec!["127.0.0.1:8000"]);
        assert_eq!(u.keepalive, Some(16));
        assert_eq!(u.keepalive_timeout, 60.0);
        assert_eq!(view.proxies.len(), 2);
        let root = &view.proxies[0];
        assert_eq!(root.server, "example.com www.example.com");
        assert_eq!(root.location, "/");
        assert_eq!(root.upstream, vec!["127.0.0.1:8000"]);
        assert_eq!(root.upstream_name.as_deref(), Some("django_app"));
        // location's own value wins; send from the server; connect is nginx's default
        assert_eq!(root.read_timeout.secs, 10.0);
        assert_eq!(
            root.read_timeout.set_at.as_deref(),
            Some("/etc/nginx/sites-enabled/django:18")
        );
        assert_eq!(root.send_timeout.secs, 60.0);
        assert!(root.send_timeout.set_at.is_some());
        assert_eq!(
            root.connect_timeout,
            Timeout {
                secs: 60.0,
                set_at: None
            }
        );
        assert!(root.http11);
        let reports = &view.proxies[1];
        assert_eq!(reports.upstream, vec!["127.0.0.1:8001"]);
        // inherited from http
        assert_eq!(reports.read_timeout.secs, 20.0);
        assert_eq!(
            reports.read_timeout.set_at.as_deref(),
            Some("/etc/nginx/nginx.conf:6")
        );
        assert!(!reports.http11);
        assert_eq!(view.servers.len(), 1);
        match &view.servers[0].static_handler {
            Handler::Files { location, how, .. } => {
                assert_eq!(location, "/static/");
                assert_eq!(how, "alias /srv/app/static/");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn static_proxied_when_only_root_location() {
        let conf =
            "http { server { listen 8080; location / { proxy_pass http://127.0.0.1:8000; } } }";
        let view = analyze(&parse(conf, "/tmp/x.conf").unwrap());
        assert!(matches!(
            &view.servers[0].static_handler,
            Handler::Proxied { location, .. } if location == "/"
        ));
        assert_eq!(view.proxies[0].read_timeout.secs, DEFAULT_PROXY_TIMEOUT);
        assert_eq!(view.proxies[0].read_timeout.set_at, None);
    }

    #[test]
    fn location_matching_order() {
        let conf = r#"
            server {
                root /srv/www;
                location / { proxy_pass http://unix:/run/app.sock:; }
                location ~* \.(css|js|png)$ { expires 7d; }
            }"#;
        let view = analyze(&parse(conf, "site.conf").unwrap());
        assert_eq!(view.proxies[0].upstream, vec!["unix:/run/app.sock"]);
        match &view.servers[0].static_handler {
            Handler::Files { location, how, .. } => {
                assert_eq!(location, r"~* \.(css|js|png)$");
                assert_eq!(how, "root /srv/www");
            }
            other => panic!("{other:?}"),
        }
        // `^~` stops the regex search; `=` wins over all.
        let conf = r#"server {
                location ^~ /static/ { proxy_pass http://127.0.0.1:8000; }
                location ~ \.css$ { root /x; }
                location = /static/ferricorn-doctor.css { return 404; }
            }"#;
        let view = analyze(&parse(conf, "s.conf").unwrap());
        assert!(matches!(
            view.servers[0].static_handler,
            Handler::Other { .. }
        ));
        let conf = r#"server {
                location ^~ /static/ { proxy_pass http://127.0.0.1:8000; }
                location ~ \.css$ { root /x; }
            }"#;
        let view = analyze(&parse(conf, "s.conf").unwrap());
        assert!(matches!(
            view.servers[0].static_handler,
            Handler::Proxied { .. }
        ));
        // a regex beyond the heuristic is reported, not guessed
        let conf = r#"server { location / { proxy_pass http://a:1; } location ~ ^/(st|me)[a-z]+/ { root /x; } }"#;
        let view = analyze(&parse(conf, "s.conf").unwrap());
        assert!(matches!(
            view.servers[0].static_handler,
            Handler::Proxied { .. }
        ));
        assert_eq!(view.servers[0].unjudged_regex.len(), 1);
    }

    #[test]
    fn regex_heuristic() {
        assert_eq!(
            regex_matches(r"^/static/", "/static/a.css", false),
            Some(true)
        );
        assert_eq!(
            regex_matches(r"^/media/", "/static/a.css", false),
            Some(false)
        );
        assert_eq!(
            regex_matches(r"\.(CSS|js)$", "/static/a.css", true),
            Some(true)
        );
        assert_eq!(
            regex_matches(r"\.(CSS|js)$", "/static/a.css", false),
            Some(false)
        );
        assert_eq!(
            regex_matches(r"^/static/.*\.css$", "/static/a.css", false),
            Some(true)
        );
        assert_eq!(
            regex_matches(r"\.php$", "/static/a.css", false),
            Some(false)
        );
        assert_eq!(regex_matches(r"^/(a|b)/", "/static/a.css", false), None);
    }

    #[test]
    fn tolerant_of_broken_input() {
        // unbalanced braces, a missing `;` at the end, quotes and comments
        let conf = "http {\n  # comment { not a block\n  server { location / { proxy_pass \"http://127.0.0.1:9000\" } }\n }}\n proxy_read_timeout 5";
        let dirs = parse(conf, "broken.conf").unwrap();
        let view = analyze(&dirs);
        assert_eq!(view.proxies.len(), 1);
        assert_eq!(view.proxies[0].upstream, vec!["127.0.0.1:9000"]);
        assert!(matches!(
            parse("   # nothing\n", "x"),
            Err(NginxError::Empty)
        ));
        // variables in proxy_pass: no address claimed
        let view =
            analyze(&parse("server { location / { proxy_pass http://$backend; } }", "v").unwrap());
        assert!(view.proxies[0].upstream.is_empty());
        // `${var}` stays in its word
        let toks = tokenize("set $a ${b}c;");
        assert_eq!(toks[2].0, Token::Word("${b}c".into()));
    }

    #[test]
    fn includes_from_disk() {
        let dir = std::env::temp_dir().join(format!("fcn-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(
            dir.join("conf.d/app.conf"),
            "server { location / { proxy_pass http://localhost:8000; proxy_read_timeout 3s; } }",
        )
        .unwrap();
        let main = dir.join("nginx.conf");
        let text = "events {}\nhttp { include conf.d/*.conf; }\n";
        std::fs::write(&main, text).unwrap();
        let view = analyze(&parse(text, &main.display().to_string()).unwrap());
        assert_eq!(view.proxies.len(), 1);
        assert_eq!(view.proxies[0].read_timeout.secs, 3.0);
        assert!(view.proxies[0]
            .read_timeout
            .set_at
            .as_deref()
            .unwrap()
            .ends_with("conf.d/app.conf:1"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("60"), Some(60.0));
        assert_eq!(parse_time("60s"), Some(60.0));
        assert_eq!(parse_time("1m30s"), Some(90.0));
        assert_eq!(parse_time("500ms"), Some(0.5));
        assert_eq!(parse_time("2h"), Some(7200.0));
        assert_eq!(parse_time("x"), None);
        assert_eq!(parse_time("5q"), None);
        assert_eq!(parse_time(""), None);
    }
}
