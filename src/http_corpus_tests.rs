//! Runs the request corpus converted from gunicorn's parser tests
//! (`shared/http-corpus/`, see its README) through the parser and the chunked
//! decoder: every valid case must yield the listed requests, also when fed one
//! byte at a time, and every invalid case must be refused with its status.
//!
//! The corpus is found through `FERRICORN_HTTP_CORPUS` or by looking for
//! `shared/http-corpus` in the ancestors of the crate directory; without it
//! the test reports that it could not run and passes.

use crate::control::json::Json;
use crate::http::body::ChunkedDecoder;
use crate::http::errors::HttpError;
use crate::http::parse::{parse_request, BodyKind, HeaderMap, Parsed, ParserOptions, RequestHead};
use std::path::PathBuf;

/// Valid cases of the snapshot that ferricorn refuses, with the status.
const EXPECT_REFUSED: &[(&str, u16, &str)] = &[
    // The corpus README: gunicorn 27 refuses these two too.
    ("009", 400, "Transfer-Encoding with Content-Length"),
    ("027", 400, "non-ASCII bytes in the request target"),
    // gunicorn hands a gzip-coded body to the app undecoded, as if it were
    // the content; ferricorn refuses the coding (docs/gunicorn-compat.md).
    ("025", 501, "Transfer-Encoding: gzip, then chunked"),
    ("025_line", 501, "Transfer-Encoding: gzip,chunked"),
    (
        "rfc9112_smuggle_gzip_chunked_01",
        501,
        "Transfer-Encoding: gzip, chunked",
    ),
];

/// Cases that cannot be checked by parsing alone.
const SKIP: &[(&str, &str)] = &[("099", "declares a longer body than the case holds")];

/// Where the check differs from gunicorn on purpose, with the reason.
const PATH_NOT_COMPARED: &[(&str, &str)] = &[(
    "rfc9112_target_authority_connect_01",
    "gunicorn reports urlsplit's path \"443\" for CONNECT example.com:443; \
     ferricorn reports the authority as the path",
)];

#[test]
fn gunicorn_corpus() {
    let Some(dir) = corpus_dir() else {
        eprintln!("gunicorn corpus not found (set FERRICORN_HTTP_CORPUS): not run");
        return;
    };
    let load = |name: &str| {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Json::parse(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
    };
    let valid = load("valid.json");
    let invalid = load("invalid.json");

    let mut tally = Tally::default();
    for case in valid.items() {
        let name = case.field("name").text();
        let outcome = if let Some((_, why)) = SKIP.iter().find(|(n, _)| *n == name) {
            Outcome::Skip(why.to_string())
        } else if let Some((_, status, why)) = EXPECT_REFUSED.iter().find(|(n, ..)| *n == name) {
            run_invalid(case, Some(*status), why)
        } else {
            run_valid(case)
        };
        tally.record("valid", name, outcome);
    }
    for case in invalid.items() {
        let status = case.field("status").number().map(|s| s as u16);
        let error = case.field("error").text();
        tally.record(
            "invalid",
            case.field("name").text(),
            run_invalid(case, status, error),
        );
    }

    eprintln!("{}", tally.lines.join("\n"));
    eprintln!(
        "gunicorn corpus: {} passed, {} failed, {} skipped",
        tally.passed,
        tally.failed.len(),
        tally.skipped
    );
    assert!(
        tally.failed.is_empty(),
        "corpus failures:\n{}",
        tally.failed.join("\n")
    );
}

#[derive(Default)]
struct Tally {
    passed: usize,
    skipped: usize,
    failed: Vec<String>,
    lines: Vec<String>,
}

enum Outcome {
    Pass,
    /// Passed; the note says how (shown with `--nocapture`).
    PassNoted(String),
    Skip(String),
    Fail(String),
}

impl Tally {
    fn record(&mut self, set: &str, name: &str, outcome: Outcome) {
        match outcome {
            Outcome::Pass => self.passed += 1,
            Outcome::PassNoted(note) => {
                self.passed += 1;
                self.lines.push(format!("ok   {set}/{name}: {note}"));
            }
            Outcome::Skip(why) => {
                self.skipped += 1;
                self.lines.push(format!("skip {set}/{name}: {why}"));
            }
            Outcome::Fail(why) => {
                self.lines.push(format!("FAIL {set}/{name}: {why}"));
                self.failed.push(format!("{set}/{name}: {why}"));
            }
        }
    }
}

fn corpus_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FERRICORN_HTTP_CORPUS") {
        return Some(PathBuf::from(dir));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|a| a.join("shared").join("http-corpus"))
        .find(|d| d.join("valid.json").is_file())
}

/// The parser options a case's gunicorn settings ask for, or the name of a
/// setting the parser does not have.
fn options(case: &Json) -> Result<ParserOptions, String> {
    let mut o = ParserOptions {
        permit_missing_host: true,
        ..ParserOptions::default()
    };
    for (key, value) in case.field("settings").entries() {
        let flag = || {
            value
                .flag()
                .ok_or_else(|| format!("setting {key} is not a bool"))
        };
        let size = || {
            value
                .number()
                .map(|n| n as usize)
                .ok_or_else(|| format!("setting {key} is not a number"))
        };
        match key.as_str() {
            "limit_request_line" => o.limit_request_line = size()?,
            "limit_request_fields" => o.limit_request_fields = size()?,
            "limit_request_field_size" => o.limit_request_field_size = size()?,
            "permit_obsolete_folding" => o.permit_obsolete_folding = flag()?,
            "strip_header_spaces" => o.strip_header_spaces = flag()?,
            "permit_unconventional_http_method" => o.permit_unconventional_http_method = flag()?,
            "permit_unconventional_http_version" => o.permit_unconventional_http_version = flag()?,
            "casefold_http_method" => o.casefold_http_method = flag()?,
            "header_map" => {
                o.header_map = match value.text() {
                    "drop" => HeaderMap::Drop,
                    "refuse" => HeaderMap::Refuse,
                    "dangerous" => HeaderMap::Dangerous,
                    other => return Err(format!("header_map {other:?}")),
                }
            }
            other => return Err(format!("needs setting {other}, not a parser option")),
        }
    }
    Ok(o)
}

fn run_valid(case: &Json) -> Outcome {
    let name = case.field("name").text();
    let opts = match options(case) {
        Ok(o) => o,
        Err(why) => return Outcome::Skip(why),
    };
    let raw = match base64_decode(case.field("raw_base64").text()) {
        Some(r) => r,
        None => return Outcome::Fail("bad base64".into()),
    };
    let mut pos = 0;
    for (i, want) in case.field("requests").items().enumerate() {
        let rest = &raw[pos..];
        let (head, consumed) = match parse_request(rest, &opts) {
            Ok(Parsed::Complete { head, consumed }) => (head, consumed),
            other => return Outcome::Fail(format!("request {i}: {other:?}")),
        };
        for k in 0..consumed {
            match parse_request(&rest[..k], &opts) {
                Ok(Parsed::Partial) => {}
                other => return Outcome::Fail(format!("request {i}, first {k} bytes: {other:?}")),
            }
        }
        if let Err(why) = compare_head(name, &head, want) {
            return Outcome::Fail(format!("request {i}: {why}"));
        }
        let body_start = pos + consumed;
        let (body, trailers, body_len) = match head.body {
            BodyKind::Empty => (Vec::new(), Vec::new(), 0),
            BodyKind::Length(n) => {
                let Some(end) = usize::try_from(n)
                    .ok()
                    .and_then(|n| body_start.checked_add(n))
                else {
                    return Outcome::Fail("body length overflows".into());
                };
                let Some(b) = raw.get(body_start..end) else {
                    return Outcome::Fail(format!("request {i}: body shorter than {n}"));
                };
                (b.to_vec(), Vec::new(), b.len())
            }
            BodyKind::Chunked => match decode_chunked(&raw[body_start..], &opts) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => return Outcome::Fail(format!("request {i}: chunked body incomplete")),
                Err(e) => return Outcome::Fail(format!("request {i}: chunked body: {e}")),
            },
        };
        if body != latin1(want.field("body").text()) {
            return Outcome::Fail(format!(
                "request {i}: body {:?}",
                String::from_utf8_lossy(&body)
            ));
        }
        let want_trailers: Vec<(String, Vec<u8>)> = want
            .field("trailers")
            .items()
            .map(|t| (t.at(0).text().to_owned(), latin1(t.at(1).text())))
            .collect();
        let got_trailers: Vec<(String, Vec<u8>)> = trailers
            .into_iter()
            .map(|(n, v)| (n.to_ascii_uppercase(), v))
            .collect();
        if got_trailers != want_trailers {
            return Outcome::Fail(format!("request {i}: trailers {got_trailers:?}"));
        }
        pos = body_start + body_len;
    }
    Outcome::Pass
}

type Decoded = (Vec<u8>, Vec<(String, Vec<u8>)>, usize);

/// Decode a chunked body at the start of `input` in one call and again one
/// byte at a time; both must agree. `None` if the input ends first.
fn decode_chunked(input: &[u8], opts: &ParserOptions) -> Result<Option<Decoded>, HttpError> {
    let mut whole = ChunkedDecoder::new(opts);
    let mut out = Vec::new();
    let (n, done) = whole.decode(input, &mut out)?;
    if !done {
        return Ok(None);
    }
    let mut bytewise = ChunkedDecoder::new(opts);
    let mut out2 = Vec::new();
    let mut pos = 0;
    while !bytewise.is_finished() && pos < input.len() {
        pos += bytewise.decode(&input[pos..=pos], &mut out2)?.0;
    }
    assert!(
        pos == n && out2 == out && bytewise.trailers() == whole.trailers(),
        "byte-by-byte decoding disagrees"
    );
    Ok(Some((out, whole.trailers().to_vec(), n)))
}

fn compare_head(name: &str, head: &RequestHead, want: &Json) -> Result<(), String> {
    let check = |field: &str, got: &str| {
        let expected = want.field(field).text();
        if got == expected {
            Ok(())
        } else {
            Err(format!("{field} {got:?}, expected {expected:?}"))
        }
    };
    check("method", &head.method)?;
    check("target", &head.target)?;
    if !PATH_NOT_COMPARED.iter().any(|(n, _)| *n == name) {
        check("path", &head.path)?;
    }
    check("query", &head.query)?;
    check("fragment", &head.fragment)?;
    let version = want.field("version");
    let expected = (version.at(0).number(), version.at(1).number());
    if (
        Some(f64::from(head.version.0)),
        Some(f64::from(head.version.1)),
    ) != expected
    {
        return Err(format!("version {:?}", head.version));
    }
    let got: Vec<(String, Vec<u8>)> = head
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_uppercase(), v.clone()))
        .collect();
    let expected: Vec<(String, Vec<u8>)> = want
        .field("headers")
        .items()
        .map(|h| (h.at(0).text().to_owned(), latin1(h.at(1).text())))
        .collect();
    if got != expected {
        return Err(format!("headers {got:?}"));
    }
    Ok(())
}

/// Feed the case through parser and decoder, request after request, until
/// something is refused. The case passes if that happens with `status`, or
/// if the input runs out mid-message where gunicorn reports missing data.
fn run_invalid(case: &Json, status: Option<u16>, error: &str) -> Outcome {
    let opts = match options(case) {
        Ok(o) => o,
        Err(why) => return Outcome::Skip(why),
    };
    let Some(raw) = base64_decode(case.field("raw_base64").text()) else {
        return Outcome::Fail("bad base64".into());
    };
    let incomplete = || {
        if matches!(error, "NoMoreData" | "ChunkMissingTerminator") {
            Outcome::PassNoted(format!("input ended mid-message ({error})"))
        } else {
            Outcome::Fail(format!("input ended without refusal; expected {error}"))
        }
    };
    let refused = |e: HttpError| match status {
        Some(s) if s != e.status() => Outcome::Fail(format!(
            "refused with {} ({e:?}), expected {s} ({error})",
            e.status()
        )),
        _ => Outcome::PassNoted(format!("{} {e:?} ({error})", e.status())),
    };
    let mut pos = 0;
    while pos < raw.len() {
        let (head, consumed) = match parse_request(&raw[pos..], &opts) {
            Ok(Parsed::Complete { head, consumed }) => (head, consumed),
            Ok(Parsed::Partial) => return incomplete(),
            Err(e) => return refused(e),
        };
        pos += consumed;
        match head.body {
            BodyKind::Empty => {}
            BodyKind::Length(n) => {
                let left = (raw.len() - pos) as u64;
                if n > left {
                    return incomplete();
                }
                pos += n as usize;
            }
            BodyKind::Chunked => match decode_chunked(&raw[pos..], &opts) {
                Ok(Some((_, _, n))) => pos += n,
                Ok(None) => return incomplete(),
                Err(e) => return refused(e),
            },
        }
    }
    Outcome::Fail(format!("accepted; expected {error}"))
}

/// The corpus stores bytes as latin-1 text: one char per byte.
fn latin1(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
/// The corpus reads JSON with the control socket's parser; these accessors treat a missing field or a
/// value of another type as empty, which is all a test that then compares values needs.
trait CorpusJson {
    fn field(&self, key: &str) -> &Json;
    fn at(&self, i: usize) -> &Json;
    fn items(&self) -> std::slice::Iter<'_, Json>;
    fn entries(&self) -> std::slice::Iter<'_, (String, Json)>;
    fn text(&self) -> &str;
    fn number(&self) -> Option<f64>;
    fn flag(&self) -> Option<bool>;
}

static NULL: Json = Json::Null;

impl CorpusJson for Json {
    fn field(&self, key: &str) -> &Json {
        self.get(key).unwrap_or(&NULL)
    }
    fn at(&self, i: usize) -> &Json {
        self.as_array().and_then(|a| a.get(i)).unwrap_or(&NULL)
    }
    fn items(&self) -> std::slice::Iter<'_, Json> {
        self.as_array().unwrap_or(&[]).iter()
    }
    fn entries(&self) -> std::slice::Iter<'_, (String, Json)> {
        self.as_object().unwrap_or(&[]).iter()
    }
    fn text(&self) -> &str {
        self.as_str().unwrap_or("")
    }
    fn number(&self) -> Option<f64> {
        self.as_f64()
    }
    fn flag(&self) -> Option<bool> {
        self.as_bool()
    }
}

#[test]
fn json_and_base64_helpers() {
    let v =
        Json::parse(r#"{"a": [1, -2.5e1, true, null, "x\u00e9\n\ud83d\ude00"], "b": {}}"#).unwrap();
    assert_eq!(v.field("a").at(1).number(), Some(-25.0));
    assert_eq!(v.field("a").at(4).text(), "x\u{e9}\n\u{1f600}");
    assert_eq!(v.field("b"), &Json::Obj(vec![]));
    assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
    assert_eq!(base64_decode("aGk"), Some(b"hi".to_vec()));
}
