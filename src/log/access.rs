//! The access log: compiling `--access-logformat` once, rendering one line
//! per request in gunicorn's output, and writing it.
//!
//! The format uses Python's `%(name)s` mapping syntax. Names are gunicorn's
//! atoms; a name that is no atom, or an atom without a value, renders as
//! `-`. Text values get `"` turned into `\"` and nothing else changed, which
//! is all gunicorn does: raw request bytes (latin-1) come out as the UTF-8
//! of their latin-1 characters, control bytes pass through.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use memchr::{memchr, memchr2};

use super::sink::Sink;
use super::time::{push_stamp, Style};
use crate::http::parse::hex_digit as hex;

pub const DEFAULT_ACCESS_LOG_FORMAT: &str =
    r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

/// What one finished request contributes to its access log line.
pub struct AccessRecord<'a> {
    /// Client address without the port.
    pub remote_addr: &'a str,
    pub method: &'a str,
    /// The request target exactly as received.
    pub target: &'a str,
    /// The path part of the target, still percent-encoded, without the
    /// query and without SCRIPT_NAME; `U` shows it decoded.
    pub path: &'a str,
    pub query: &'a str,
    /// `HTTP/1.1`
    pub version: &'a str,
    pub status: u16,
    /// Body bytes sent; `None` renders `b` as `-`.
    pub response_length: Option<u64>,
    /// Names as received; values are raw bytes, read as latin-1.
    pub request_headers: &'a [(String, Vec<u8>)],
    pub response_headers: &'a [(String, String)],
    pub start: SystemTime,
    pub duration: Duration,
    /// Looks up a WSGI environ variable for `{var}e`. It is given the name
    /// lowercased and should compare it with each key lowercased.
    pub environ: Option<&'a EnvironLookup<'a>>,
}

impl<'a> AccessRecord<'a> {
    /// The record of a response to `head`, without environ lookups (`{var}e` renders `-` until
    /// `environ` is set).
    pub fn of_request(
        head: &'a crate::http::RequestHead,
        remote_addr: &'a str,
        status: u16,
        response_length: Option<u64>,
        response_headers: &'a [(String, String)],
        start: SystemTime,
        duration: Duration,
    ) -> AccessRecord<'a> {
        AccessRecord {
            remote_addr,
            method: &head.method,
            target: &head.target,
            path: &head.path,
            query: &head.query,
            version: head.protocol(),
            status,
            response_length,
            request_headers: &head.headers,
            response_headers,
            start,
            duration,
            environ: None,
        }
    }
}

/// `name -> value` for the WSGI environ, used by `{var}e` atoms.
pub type EnvironLookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Atom {
    RemoteAddr,
    Ident,
    User,
    Time,
    RequestLine,
    Method,
    Path,
    Query,
    Protocol,
    Status,
    BodyLen,
    BodyLenOrDash,
    Referer,
    UserAgent,
    Seconds,
    Millis,
    Micros,
    DecimalSeconds,
    Pid,
    RequestHeader(Box<str>),
    ResponseHeader(Box<str>),
    Environ(Box<str>),
    Missing,
}

impl Atom {
    fn from_key(key: &str) -> Atom {
        if key.starts_with('{') {
            // Braced names match without regard to case, the suffix letter
            // included.
            let lower = key.to_lowercase();
            let inner = &lower[1..];
            if let Some(name) = inner.strip_suffix("}i") {
                return Atom::RequestHeader(name.into());
            }
            if let Some(name) = inner.strip_suffix("}o") {
                return Atom::ResponseHeader(name.into());
            }
            if let Some(name) = inner.strip_suffix("}e") {
                return Atom::Environ(name.into());
            }
            return Atom::Missing;
        }
        match key {
            "h" => Atom::RemoteAddr,
            "l" => Atom::Ident,
            "u" => Atom::User,
            "t" => Atom::Time,
            "r" => Atom::RequestLine,
            "m" => Atom::Method,
            "U" => Atom::Path,
            "q" => Atom::Query,
            "H" => Atom::Protocol,
            "s" => Atom::Status,
            "B" => Atom::BodyLen,
            "b" => Atom::BodyLenOrDash,
            "f" => Atom::Referer,
            "a" => Atom::UserAgent,
            "T" => Atom::Seconds,
            "M" => Atom::Millis,
            "D" => Atom::Micros,
            "L" => Atom::DecimalSeconds,
            "p" => Atom::Pid,
            _ => Atom::Missing,
        }
    }
}

/// The `%`-conversion after the name: flags, width, precision, and whether
/// it was `s` or one of `d`/`i`/`u`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Spec {
    left: bool,
    zero: bool,
    plus: bool,
    space: bool,
    width: usize,
    precision: Option<usize>,
    integer: bool,
}

impl Spec {
    fn is_plain(&self) -> bool {
        self.width == 0 && self.precision.is_none() && !self.plus && !self.space
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(Box<[u8]>),
    Field(Atom, Spec),
}

/// Keeps a typo in the format from turning every line into megabytes.
const MAX_WIDTH: usize = 4096;

enum Parsed {
    Field(Atom, Spec, usize),
    Percent(usize),
    /// Not a conversion this module understands: the `%` stays as text.
    Text,
}

fn parse_number(b: &[u8], mut j: usize) -> (usize, usize) {
    let mut n: usize = 0;
    while let Some(d) = b.get(j).filter(|c| c.is_ascii_digit()) {
        n = n.saturating_mul(10).saturating_add(usize::from(d - b'0'));
        j += 1;
    }
    (n.min(MAX_WIDTH), j)
}

/// Parses the conversion starting at the `%` at `at`.
fn parse_conversion(fmt: &str, at: usize) -> Parsed {
    let b = fmt.as_bytes();
    let mut j = at + 1;
    match b.get(j) {
        Some(b'%') => return Parsed::Percent(j + 1),
        Some(b'(') => {}
        // Without a name Python would format the whole atom table; no
        // format means that, so keep such text as it is.
        _ => return Parsed::Text,
    }
    // Names may hold balanced parentheses, as in Python.
    let key_start = j + 1;
    let mut depth = 1;
    while depth > 0 {
        j += 1;
        match b.get(j) {
            None => return Parsed::Text,
            Some(b'(') => depth += 1,
            Some(b')') => depth -= 1,
            Some(_) => {}
        }
    }
    let key = &fmt[key_start..j];
    j += 1;
    let mut spec = Spec::default();
    while let Some(&c) = b.get(j) {
        match c {
            b'-' => spec.left = true,
            b'0' => spec.zero = true,
            b'+' => spec.plus = true,
            b' ' => spec.space = true,
            b'#' => {}
            _ => break,
        }
        j += 1;
    }
    (spec.width, j) = parse_number(b, j);
    if b.get(j) == Some(&b'.') {
        let (p, next) = parse_number(b, j + 1);
        spec.precision = Some(p);
        j = next;
    }
    if matches!(b.get(j), Some(b'h' | b'l' | b'L')) {
        j += 1;
    }
    match b.get(j) {
        Some(b's') => {}
        Some(b'd' | b'i' | b'u') => spec.integer = true,
        _ => return Parsed::Text,
    }
    Parsed::Field(Atom::from_key(key), spec, j + 1)
}

/// Splits the format into literal text and fields. Where Python would raise
/// (a `%` without a name, an unterminated name, a conversion other than `s`,
/// `d`, `i` or `u`) the text is kept as written instead: a bad format should
/// show in the log rather than lose the line.
fn compile(fmt: &str) -> Vec<Part> {
    let b = fmt.as_bytes();
    let mut parts = Vec::new();
    let mut literal = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some(off) = memchr(b'%', &b[i..]) else {
            literal.extend_from_slice(&b[i..]);
            break;
        };
        literal.extend_from_slice(&b[i..i + off]);
        i += off;
        match parse_conversion(fmt, i) {
            Parsed::Field(atom, spec, next) => {
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal).into()));
                }
                parts.push(Part::Field(atom, spec));
                i = next;
            }
            Parsed::Percent(next) => {
                literal.push(b'%');
                i = next;
            }
            Parsed::Text => {
                literal.push(b'%');
                i += 1;
            }
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal.into()));
    }
    parts
}

fn push_escaped(out: &mut Vec<u8>, s: &str) {
    let mut b = s.as_bytes();
    while let Some(q) = memchr(b'"', b) {
        out.extend_from_slice(&b[..q]);
        out.extend_from_slice(b"\\\"");
        b = &b[q + 1..];
    }
    out.extend_from_slice(b);
}

fn push_latin1_byte(out: &mut Vec<u8>, c: u8) {
    match c {
        b'"' => out.extend_from_slice(b"\\\""),
        0..=0x7f => out.push(c),
        _ => {
            out.push(0xc0 | (c >> 6));
            out.push(0x80 | (c & 0x3f));
        }
    }
}

fn push_escaped_latin1(out: &mut Vec<u8>, b: &[u8]) {
    for &c in b {
        push_latin1_byte(out, c);
    }
}

/// The path as WSGI's PATH_INFO holds it: `%XX` decoded to a byte and read
/// as latin-1; a `%` not followed by two hex digits stays.
fn push_path_info(out: &mut Vec<u8>, path: &str) {
    let b = path.as_bytes();
    let mut i = 0;
    while let Some(off) = memchr2(b'%', b'"', &b[i..]) {
        out.extend_from_slice(&b[i..i + off]);
        i += off;
        if b[i] == b'"' {
            out.extend_from_slice(b"\\\"");
            i += 1;
            continue;
        }
        let decoded = match (
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (Some(hi), Some(lo)) => Some((hi << 4) | lo),
            _ => None,
        };
        match decoded {
            Some(c) => {
                push_latin1_byte(out, c);
                i += 3;
            }
            None => {
                out.push(b'%');
                i += 1;
            }
        }
    }
    out.extend_from_slice(&b[i..]);
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn pid() -> i32 {
    // SAFETY: getpid has no preconditions. Asked each line because workers
    // are forked.
    unsafe { libc::getpid() }
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Base64 decoding as lenient as Python's non-validating decoder, so the
/// same headers yield a user name: bytes outside the alphabet are skipped,
/// a complete padding ends the input, and a dangling partial group fails.
fn decode_base64_lenient(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 3);
    let mut quad = 0u8;
    let mut carry = 0u8;
    let mut pads = 0u8;
    for &c in input {
        if c == b'=' {
            if quad >= 2 {
                pads += 1;
                if quad + pads >= 4 {
                    return Some(out);
                }
            }
            continue;
        }
        let Some(v) = sextet(c) else {
            continue;
        };
        pads = 0;
        match quad {
            0 => {
                carry = v;
                quad = 1;
            }
            1 => {
                out.push((carry << 2) | (v >> 4));
                carry = v & 0x0f;
                quad = 2;
            }
            2 => {
                out.push((carry << 4) | (v >> 2));
                carry = v & 0x03;
                quad = 3;
            }
            _ => {
                out.push((carry << 6) | v);
                quad = 0;
            }
        }
    }
    (quad == 0).then_some(out)
}

/// Every request header named `name`, joined with `,` the way repeated
/// headers are folded into one WSGI environ variable.
fn joined_header(headers: &[(String, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    let mut found: Option<Vec<u8>> = None;
    for (n, v) in headers {
        if n.eq_ignore_ascii_case(name) {
            match &mut found {
                None => found = Some(v.clone()),
                Some(acc) => {
                    acc.push(b',');
                    acc.extend_from_slice(v);
                }
            }
        }
    }
    found
}

/// The user name of `Authorization: Basic`; `None` when there is none or it
/// does not decode to UTF-8.
fn basic_auth_user(headers: &[(String, Vec<u8>)]) -> Option<String> {
    let auth = joined_header(headers, "authorization")?;
    // Any value starting with these letters, even without a space after.
    if !auth.get(..5)?.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let space = memchr(b' ', &auth)?;
    let decoded = decode_base64_lenient(&auth[space + 1..])?;
    let user = match memchr(b':', &decoded) {
        Some(colon) => &decoded[..colon],
        None => &decoded[..],
    };
    String::from_utf8(user.to_vec()).ok()
}

/// The value of an atom that is a number, for `%d`.
fn number(atom: &Atom, rec: &AccessRecord) -> Option<u64> {
    let d = rec.duration;
    Some(match atom {
        Atom::Status => u64::from(rec.status),
        Atom::BodyLen => rec.response_length.unwrap_or(0),
        Atom::BodyLenOrDash => rec.response_length?,
        Atom::Seconds => d.as_secs(),
        Atom::Millis => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        Atom::Micros => u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
        _ => return None,
    })
}

fn push_text(out: &mut Vec<u8>, atom: &Atom, rec: &AccessRecord) {
    if let Some(n) = number(atom, rec) {
        push_u64(out, n);
        return;
    }
    match atom {
        Atom::RemoteAddr => push_escaped(out, rec.remote_addr),
        Atom::User => match basic_auth_user(rec.request_headers) {
            Some(user) if !user.is_empty() => push_escaped(out, &user),
            _ => out.push(b'-'),
        },
        // The time the line is written, as gunicorn stamps it, but computed
        // from the record so that it does not depend on when logging runs.
        Atom::Time => push_stamp(
            out,
            Style::Access,
            rec.start.checked_add(rec.duration).unwrap_or(rec.start),
        ),
        Atom::RequestLine => {
            push_escaped(out, rec.method);
            out.push(b' ');
            push_escaped(out, rec.target);
            out.push(b' ');
            push_escaped(out, rec.version);
        }
        Atom::Method => push_escaped(out, rec.method),
        Atom::Path => push_path_info(out, rec.path),
        Atom::Query => push_escaped(out, rec.query),
        Atom::Protocol => push_escaped(out, rec.version),
        Atom::Referer | Atom::UserAgent => {
            let name = if *atom == Atom::Referer {
                "referer"
            } else {
                "user-agent"
            };
            match joined_header(rec.request_headers, name) {
                Some(v) => push_escaped_latin1(out, &v),
                None => out.push(b'-'),
            }
        }
        Atom::DecimalSeconds => {
            push_u64(out, rec.duration.as_secs());
            out.push(b'.');
            let micros = rec.duration.subsec_micros();
            let digits = itoa::Buffer::new().format(micros).len();
            out.extend(std::iter::repeat_n(b'0', 6 - digits.min(6)));
            push_u64(out, u64::from(micros));
        }
        Atom::Pid => {
            out.push(b'<');
            out.extend_from_slice(itoa::Buffer::new().format(pid()).as_bytes());
            out.push(b'>');
        }
        // Repeated headers: the last one wins.
        Atom::RequestHeader(name) => match rec
            .request_headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => push_escaped_latin1(out, v),
            None => out.push(b'-'),
        },
        Atom::ResponseHeader(name) => match rec
            .response_headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => push_escaped(out, v),
            None => out.push(b'-'),
        },
        Atom::Environ(name) => match rec.environ.and_then(|lookup| lookup(name)) {
            Some(v) => push_escaped(out, &v),
            None => out.push(b'-'),
        },
        // Numbers were handled above; what is left has no value.
        _ => out.push(b'-'),
    }
}

fn is_char_start(c: u8) -> bool {
    c & 0xc0 != 0x80
}

/// `%d` with flags as Python applies them to a non-negative integer.
fn push_integer(out: &mut Vec<u8>, n: u64, spec: &Spec) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n).as_bytes();
    let sign: &[u8] = if spec.plus {
        b"+"
    } else if spec.space {
        b" "
    } else {
        b""
    };
    let zeros = spec.precision.unwrap_or(0).saturating_sub(digits.len());
    let len = sign.len() + zeros + digits.len();
    let pad = spec.width.saturating_sub(len);
    if pad > 0 && !spec.left && !spec.zero {
        out.extend(std::iter::repeat_n(b' ', pad));
    }
    out.extend_from_slice(sign);
    if pad > 0 && !spec.left && spec.zero {
        out.extend(std::iter::repeat_n(b'0', pad));
    }
    out.extend(std::iter::repeat_n(b'0', zeros));
    out.extend_from_slice(digits);
    if pad > 0 && spec.left {
        out.extend(std::iter::repeat_n(b' ', pad));
    }
}

fn push_field(out: &mut Vec<u8>, atom: &Atom, spec: &Spec, rec: &AccessRecord) {
    if spec.is_plain() {
        push_text(out, atom, rec);
        return;
    }
    if spec.integer {
        if let Some(n) = number(atom, rec) {
            push_integer(out, n, spec);
            return;
        }
    }
    // Text: precision cuts and width pads, both counted in characters.
    let start = out.len();
    push_text(out, atom, rec);
    if let Some(max) = spec.precision {
        let cut = out[start..]
            .iter()
            .enumerate()
            .filter(|(_, &c)| is_char_start(c))
            .nth(max)
            .map(|(i, _)| start + i);
        if let Some(cut) = cut {
            out.truncate(cut);
        }
    }
    let chars = out[start..].iter().filter(|&&c| is_char_start(c)).count();
    let pad = spec.width.saturating_sub(chars);
    if pad > 0 {
        if spec.left {
            out.extend(std::iter::repeat_n(b' ', pad));
        } else {
            out.splice(start..start, std::iter::repeat_n(b' ', pad));
        }
    }
}

#[derive(Debug)]
struct Inner {
    sink: Sink,
    parts: Vec<Part>,
    wants_environ: bool,
}

/// Cheap to clone; all clones share the descriptor and the compiled format.
#[derive(Clone, Debug)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

thread_local! {
    /// Reused line buffer: one line per request should not mean one
    /// allocation per request.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Lines longer than this give their buffer back instead of keeping it.
const KEEP_BUFFER: usize = 16 * 1024;

impl AccessLog {
    /// `-` is stdout; anything else is a path opened for appending. The
    /// format is compiled here, once.
    pub fn open(target: &str, format: &str) -> io::Result<AccessLog> {
        let sink = Sink::open(target, libc::STDOUT_FILENO)?;
        let parts = compile(format);
        let wants_environ = parts
            .iter()
            .any(|p| matches!(p, Part::Field(Atom::Environ(_), _)));
        Ok(AccessLog {
            inner: Arc::new(Inner {
                sink,
                parts,
                wants_environ,
            }),
        })
    }

    fn render(&self, out: &mut Vec<u8>, rec: &AccessRecord) {
        for part in &self.inner.parts {
            match part {
                Part::Literal(text) => out.extend_from_slice(text),
                Part::Field(atom, spec) => push_field(out, atom, spec, rec),
            }
        }
    }

    /// The line without its newline.
    pub fn format_line(&self, rec: &AccessRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.render(&mut out, rec);
        out
    }

    /// Write failures are dropped: a request must not fail over its log line.
    pub fn log(&self, rec: &AccessRecord) {
        let write = |line: &mut Vec<u8>| {
            self.render(line, rec);
            line.push(b'\n');
            let _ = self.inner.sink.write_all(line);
        };
        let reused = LINE
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut line) => {
                    line.clear();
                    write(&mut line);
                    if line.capacity() > KEEP_BUFFER {
                        *line = Vec::new();
                    }
                    true
                }
                Err(_) => false,
            })
            .unwrap_or(false);
        if !reused {
            write(&mut Vec::with_capacity(256));
        }
    }

    /// Re-opens the path (after log rotation renamed the file); a no-op for
    /// stdout. The descriptor number stays the same.
    pub fn reopen(&self) -> io::Result<()> {
        self.inner.sink.reopen()
    }

    /// Whether the format has a `{var}e` atom; when not, callers need not
    /// build the environ lookup.
    pub fn wants_environ(&self) -> bool {
        self.inner.wants_environ
    }

    pub fn raw_fd(&self) -> RawFd {
        self.inner.sink.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::test_util::{read, TempDir};
    use std::time::UNIX_EPOCH;

    fn h(name: &str, value: &[u8]) -> (String, Vec<u8>) {
        (name.to_string(), value.to_vec())
    }

    struct Fixture {
        req: Vec<(String, Vec<u8>)>,
        resp: Vec<(String, String)>,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                req: vec![
                    h("Host", b"example.com"),
                    h("User-Agent", b"curl/8.0"),
                    h("Referer", b"http://ref/"),
                    // "alice:secret"
                    h("Authorization", b"Basic YWxpY2U6c2VjcmV0"),
                    h("X-Multi", b"one"),
                    h("x-multi", b"two"),
                ],
                resp: vec![
                    ("Content-Type".to_string(), "text/plain".to_string()),
                    ("X-Quote".to_string(), "say \"hi\"".to_string()),
                ],
            }
        }

        fn record(&self) -> AccessRecord<'_> {
            AccessRecord {
                remote_addr: "127.0.0.1",
                method: "GET",
                target: "/a%20b/c?x=1&y=%22",
                path: "/a%20b/c",
                query: "x=1&y=%22",
                version: "HTTP/1.1",
                status: 200,
                response_length: Some(1234),
                request_headers: &self.req,
                response_headers: &self.resp,
                start: UNIX_EPOCH + Duration::from_secs(971_186_136),
                duration: Duration::new(2, 3_456_789),
                environ: None,
            }
        }
    }

    fn line(format: &str, rec: &AccessRecord) -> String {
        let log = AccessLog::open("-", format).expect("stdout");
        String::from_utf8(log.format_line(rec)).expect("utf8")
    }

    fn stamp(t: SystemTime) -> String {
        let mut v = Vec::new();
        push_stamp(&mut v, Style::Access, t);
        String::from_utf8(v).expect("utf8")
    }

    #[test]
    fn default_format() {
        let f = Fixture::new();
        let rec = f.record();
        let t = stamp(rec.start + rec.duration);
        assert_eq!(
            line(DEFAULT_ACCESS_LOG_FORMAT, &rec),
            format!(
                "127.0.0.1 - alice {t} \"GET /a%20b/c?x=1&y=%22 HTTP/1.1\" 200 1234 \"http://ref/\" \"curl/8.0\""
            )
        );
    }

    #[test]
    fn every_atom() {
        let f = Fixture::new();
        let env = |name: &str| match name {
            "remote_port" => Some("5555".to_string()),
            "wsgi.url_scheme" => Some("http".to_string()),
            _ => None,
        };
        let mut rec = f.record();
        rec.environ = Some(&env);
        let pid = std::process::id();
        let cases: &[(&str, String)] = &[
            ("h", "127.0.0.1".into()),
            ("l", "-".into()),
            ("u", "alice".into()),
            ("t", stamp(rec.start + rec.duration)),
            ("r", "GET /a%20b/c?x=1&y=%22 HTTP/1.1".into()),
            ("m", "GET".into()),
            ("U", "/a b/c".into()),
            ("q", "x=1&y=%22".into()),
            ("H", "HTTP/1.1".into()),
            ("s", "200".into()),
            ("B", "1234".into()),
            ("b", "1234".into()),
            ("f", "http://ref/".into()),
            ("a", "curl/8.0".into()),
            ("T", "2".into()),
            ("M", "2003".into()),
            ("D", "2003456".into()),
            ("L", "2.003456".into()),
            ("p", format!("<{pid}>")),
            ("{Host}i", "example.com".into()),
            ("{HOST}i", "example.com".into()),
            ("{x-multi}i", "two".into()),
            ("{Missing}i", "-".into()),
            ("{content-type}o", "text/plain".into()),
            ("{X-Quote}O", "say \\\"hi\\\"".into()),
            ("{none}o", "-".into()),
            ("{REMOTE_PORT}e", "5555".into()),
            ("{wsgi.url_scheme}e", "http".into()),
            ("{nope}e", "-".into()),
        ];
        for (atom, want) in cases {
            assert_eq!(&line(&format!("%({atom})s"), &rec), want, "atom {atom}");
        }
    }

    #[test]
    fn time_atom_is_common_log_format() {
        let f = Fixture::new();
        let t = line("%(t)s", &f.record());
        let shape: String = t
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert!(
            shape.starts_with("[99/Oct/9999:99:99:99 ") && shape.len() == 28,
            "{t}"
        );
    }

    #[test]
    fn missing_values() {
        let f = Fixture::new();
        let mut rec = f.record();
        let none: Vec<(String, Vec<u8>)> = Vec::new();
        rec.request_headers = &none;
        rec.response_length = None;
        assert_eq!(
            line(
                "%(u)s %(f)s %(a)s %(b)s %(B)s %({x}e)s %(zz)s %(hh)s %({a}x)s",
                &rec
            ),
            "- - - - 0 - - - -"
        );
        // Present but empty stays empty.
        let empty = vec![h("Referer", b"")];
        rec.request_headers = &empty;
        assert_eq!(line("[%(f)s]", &rec), "[]");
        rec.query = "";
        assert_eq!(line("[%(q)s]", &rec), "[]");
    }

    #[test]
    fn wants_environ_only_with_environ_atom() {
        assert!(!AccessLog::open("-", DEFAULT_ACCESS_LOG_FORMAT)
            .expect("open")
            .wants_environ());
        assert!(AccessLog::open("-", "%(h)s %({REMOTE_PORT}e)s")
            .expect("open")
            .wants_environ());
    }

    #[test]
    fn escaping() {
        let f = Fixture::new();
        let mut rec = f.record();
        let headers = vec![
            h("User-Agent", b"evil\" agent"),
            // Latin-1 bytes come out as UTF-8; tab and other controls pass.
            h("Referer", b"caf\xe9\t\x01"),
            h("X-Back", b"a\\b"),
        ];
        rec.request_headers = &headers;
        rec.target = "/q\"x";
        rec.path = "/%22%e9%zz%4";
        assert_eq!(
            line(r#""%(a)s" "%(f)s" %({x-back}i)s "%(r)s" %(U)s"#, &rec),
            "\"evil\\\" agent\" \"caf\u{e9}\t\u{1}\" a\\b \"GET /q\\\"x HTTP/1.1\" /\\\"\u{e9}%zz%4"
        );
    }

    #[test]
    fn repeated_headers_fold_with_commas() {
        let f = Fixture::new();
        let mut rec = f.record();
        let headers = vec![h("User-Agent", b"a"), h("user-agent", b"b")];
        rec.request_headers = &headers;
        assert_eq!(line("%(a)s|%({user-agent}i)s", &rec), "a,b|b");
    }

    #[test]
    fn basic_auth_cases() {
        let user = |v: &[u8]| basic_auth_user(&[h("Authorization", v)]);
        assert_eq!(user(b"Basic dXNlcjpwYXNz"), Some("user".into()));
        assert_eq!(user(b"basic  d X N l cjpwYXNz"), Some("user".into()));
        assert_eq!(user(b"BASICfoo dXNlcjpwYXNz"), Some("user".into()));
        assert_eq!(user(b"Basic dXNlcjpwYXNz==="), Some("user".into()));
        // A complete padding ends the input.
        assert_eq!(user(b"Basic dXM=ZXI6cA=="), Some("us".into()));
        assert_eq!(user(b"Basic dXN=lcjpw"), Some("us".into()));
        // "user" without a colon is all user name.
        assert_eq!(user(b"Basic dXNlcg=="), Some("user".into()));
        assert_eq!(user(b"Basic dXNlcjpwYXN"), None);
        assert_eq!(user(b"Basic dXNlcjpwY"), None);
        assert_eq!(user(b"Basic dXNlcjpwYXNz=garbage"), None);
        assert_eq!(user(b"Bearer dXNlcjpwYXNz"), None);
        assert_eq!(user(b"Basic"), None);
        assert_eq!(user(b"Basic\tdXNlcjpwYXNz"), None);
        // Not UTF-8: "\xff:x"
        assert_eq!(user(b"Basic /zp4"), None);
        // Empty user name renders as '-'.
        let f = Fixture::new();
        let mut rec = f.record();
        let headers = vec![h("Authorization", b"Basic OnBhc3M=")];
        rec.request_headers = &headers;
        assert_eq!(line("%(u)s", &rec), "-");
        let headers = vec![h("Authorization", b"Basic YSJiOmM=")];
        rec.request_headers = &headers;
        assert_eq!(line("%(u)s", &rec), "a\\\"b");
    }

    #[test]
    fn python_conversions() {
        let f = Fixture::new();
        let rec = f.record();
        let cases = [
            ("%%|%(h)s%%", "%|127.0.0.1%"),
            ("%(h)-12s|", "127.0.0.1   |"),
            ("%(h)12s|", "   127.0.0.1|"),
            ("%(h).3s|", "127|"),
            ("%(h)05s|", "127.0.0.1|"),
            ("%(T)05d|", "00002|"),
            ("%(T)+d|", "+2|"),
            ("%(T).3d|", "002|"),
            ("%(T)-5d|", "2    |"),
            ("%(T) d|", " 2|"),
            ("%(T)ld|", "2|"),
            ("%(s)i %(D)u|", "200 2003456|"),
            ("%(s)10s|", "       200|"),
            ("%(zz)3s|", "  -|"),
            ("%(a(b)c)s|", "-|"),
            // Not conversions this module knows: kept as written.
            ("%s %d %(h)x %(h 100%", "%s %d %(h)x %(h 100%"),
            ("no atoms", "no atoms"),
            ("", ""),
            ("tail %", "tail %"),
        ];
        for (fmt, want) in cases {
            assert_eq!(line(fmt, &rec), want, "format {fmt:?}");
        }
        // Width counts characters, not bytes.
        let mut rec = f.record();
        rec.path = "/%e9";
        assert_eq!(line("%(U)4s|", &rec), "  /\u{e9}|");
        assert_eq!(line("%(U).1s|", &rec), "/|");
    }

    #[test]
    fn compiles_once_into_parts() {
        assert_eq!(
            compile("a %(h)s b%%"),
            vec![
                Part::Literal((*b"a ").into()),
                Part::Field(Atom::RemoteAddr, Spec::default()),
                Part::Literal((*b" b%").into()),
            ]
        );
    }

    #[test]
    fn decimal_seconds_pads_micros() {
        let f = Fixture::new();
        let mut rec = f.record();
        rec.duration = Duration::from_micros(7);
        assert_eq!(line("%(L)s %(T)s %(M)s %(D)s", &rec), "0.000007 0 0 7");
        rec.duration = Duration::new(61, 999_999_999);
        assert_eq!(
            line("%(L)s %(T)s %(M)s %(D)s", &rec),
            "61.999999 61 61999 61999999"
        );
    }

    #[test]
    fn writes_lines_and_reopens() {
        let dir = TempDir::new("access");
        let path = dir.path("access.log");
        let rotated = dir.path("access.log.1");
        let log = AccessLog::open(&path, "%(m)s %(U)s %(s)s").expect("open");
        let f = Fixture::new();
        let rec = f.record();
        log.log(&rec);
        std::fs::rename(&path, &rotated).expect("rename");
        log.reopen().expect("reopen");
        let clone = log.clone();
        clone.log(&rec);
        assert_eq!(read(&rotated), "GET /a b/c 200\n");
        assert_eq!(read(&path), "GET /a b/c 200\n");
    }

    #[test]
    fn threads_share_a_log_without_interleaving() {
        let dir = TempDir::new("access-threads");
        let path = dir.path("access.log");
        let log = AccessLog::open(&path, "%({x-tag}i)s %({x-pad}i)s").expect("open");
        let pad = "p".repeat(5000);
        std::thread::scope(|s| {
            for tag in ["a", "b", "c"] {
                let log = log.clone();
                let pad = pad.as_bytes();
                s.spawn(move || {
                    let headers = vec![h("X-Tag", tag.as_bytes()), h("X-Pad", pad)];
                    let f = Fixture::new();
                    let mut rec = f.record();
                    rec.request_headers = &headers;
                    for _ in 0..200 {
                        log.log(&rec);
                    }
                });
            }
        });
        let text = read(&path);
        assert_eq!(text.lines().count(), 600);
        for l in text.lines() {
            let (tag, rest) = l.split_once(' ').expect("two fields");
            assert!(["a", "b", "c"].contains(&tag));
            assert_eq!(rest, pad);
        }
    }
}
