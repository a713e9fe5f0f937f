//! What serving a file from disk needs of the protocol, as pure functions over the request's bytes: the
//! path below a static mount (percent-decoded once, with everything that could leave the root refused),
//! a `Range` (RFC 9110 §14), `Accept-Encoding` for a precompressed sibling (§12.5.3), the validators of
//! conditional requests (entity-tag lists, HTTP dates: §13), content types by extension, and whether a
//! name carries a content hash (Django's `ManifestStaticFilesStorage`, `name.<12 hex>.ext`).
//!
//! The worker's static files (`worker::static_files`) open and send the file; everything that reads
//! outside input is here, so the fuzz targets drive it without Python.

use std::time::SystemTime;

use super::parse::hex_digit as hex;

/// Why a path below a mount is refused (see [`decode_path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits: 400.
    BadEscape,
    /// A NUL byte (`%00`): no file has one in its name.
    Nul,
    /// A backslash, raw or encoded: a separator on other systems, never part of a served name.
    Backslash,
    /// A `..` segment, raw or encoded: it would climb out of the mount.
    DotDot,
}

impl PathError {
    /// The status a refused path is answered with: only a malformed escape is the client's syntax error;
    /// the rest is a name that is not served, told as plainly as a missing file.
    pub fn status(self) -> u16 {
        match self {
            PathError::BadEscape => 400,
            _ => 404,
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::BadEscape => "a malformed percent-escape",
            PathError::Nul => "a NUL byte",
            PathError::Backslash => "a backslash",
            PathError::DotDot => "a '..' segment",
        })
    }
}

/// The file path below a mount for the rest of a request path after the mount's prefix (still
/// percent-encoded): decoded exactly once, split at `/` (an encoded `%2F` too, so it cannot hide a
/// `..`), empty and `.` segments dropped, and refused if any segment is `..` or the name holds a NUL or a
/// backslash. The result is relative, joined with `/`, and has no `..`: joined to the mount's root it
/// cannot name anything above it except through a symlink, which the caller checks.
pub fn decode_path(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            decoded.push(h * 16 + l);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    if decoded.contains(&0) {
        return Err(PathError::Nul);
    }
    if decoded.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    let mut out = Vec::with_capacity(decoded.len());
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => return Err(PathError::DotDot),
            s => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(s);
            }
        }
    }
    Ok(out)
}

/// What a `Range` field asks of a representation of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole representation (200): no range, one the server ignores (another unit, a syntax error,
    /// several ranges), or one that covers it from its first byte only by a suffix longer than it.
    Full,
    /// Bytes `first..=last` (206), within the representation.
    Part { first: u64, last: u64 },
    /// No byte of it can be sent (416, `Content-Range: bytes */len`).
    Unsatisfiable,
}

/// Decimal digits only, without overflow.
fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |p| p + 1);
    &s[start..end.max(start)]
}

/// A single byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`) against a representation of `len` bytes.
/// Several ranges are answered with the whole representation (a multipart body is not written), as a
/// server may (RFC 9110 §14.2); a field that does not parse is ignored.
pub fn byte_range(field: &[u8], len: u64) -> RangeAnswer {
    let field = trim(field);
    let Some(eq) = field.iter().position(|&b| b == b'=') else {
        return RangeAnswer::Full;
    };
    if !trim(&field[..eq]).eq_ignore_ascii_case(b"bytes") {
        return RangeAnswer::Full;
    }
    let mut specs = field[eq + 1..]
        .split(|&b| b == b',')
        .map(trim)
        .filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return RangeAnswer::Full;
    };
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (trim(&spec[..dash]), trim(&spec[dash + 1..]));
    if a.is_empty() {
        // A suffix: the last n bytes.
        let Some(n) = number(b) else {
            return RangeAnswer::Full;
        };
        if n == 0 || len == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Part {
            first: len.saturating_sub(n),
            last: len - 1,
        };
    }
    let Some(first) = number(a) else {
        return RangeAnswer::Full;
    };
    let last = if b.is_empty() {
        None
    } else {
        match number(b) {
            Some(last) if last >= first => Some(last),
            _ => return RangeAnswer::Full,
        }
    };
    if first >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Part {
        first,
        last: last.map_or(len - 1, |l| l.min(len - 1)),
    }
}

/// A content coding a precompressed sibling may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Brotli,
    Gzip,
}

impl Coding {
    /// Its name in `Content-Encoding`.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The suffix of the sibling file that holds the file in this coding.
    pub fn suffix(self) -> &'static str {
        match self {
            Coding::Brotli => ".br",
            Coding::Gzip => ".gz",
        }
    }
}

/// A weight (`q=0.5`) in thousandths; None when it does not parse.
fn weight(s: &[u8]) -> Option<u16> {
    match s {
        [b'1'] | [b'1', b'.'] => Some(1000),
        [b'1', b'.', rest @ ..] if rest.len() <= 3 && rest.iter().all(|&b| b == b'0') => Some(1000),
        [b'0'] | [b'0', b'.'] => Some(0),
        [b'0', b'.', rest @ ..] if rest.len() <= 3 && rest.iter().all(u8::is_ascii_digit) => {
            let mut n = 0u16;
            for i in 0..3 {
                n = n * 10 + rest.get(i).map_or(0, |d| u16::from(d - b'0'));
            }
            Some(n)
        }
        _ => None,
    }
}

/// The codings of a precompressed sibling the client accepts, best first (`br` before `gzip` at equal
/// weight). A coding with weight 0 is refused; `*` stands for any coding the field does not name; a
/// weight that does not parse refuses its coding (identity is always acceptable, so nothing is lost).
pub fn accepted_codings(field: Option<&[u8]>) -> Vec<Coding> {
    let Some(field) = field else {
        return Vec::new();
    };
    let (mut br, mut gzip, mut any) = (None, None, None);
    for item in field.split(|&b| b == b',') {
        let mut parts = item.split(|&b| b == b';');
        let name = trim(parts.next().unwrap_or_default());
        let mut q = Some(1000);
        for param in parts {
            let param = trim(param);
            if param.len() >= 2 && param[..2].eq_ignore_ascii_case(b"q=") {
                q = weight(trim(&param[2..]));
            }
        }
        let q = q.unwrap_or(0);
        if name.eq_ignore_ascii_case(b"br") {
            br = Some(q);
        } else if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip") {
            gzip = Some(gzip.map_or(q, |g: u16| g.max(q)));
        } else if name == b"*" {
            any = Some(q);
        }
    }
    let mut out: Vec<(u16, Coding)> = [(br, Coding::Brotli), (gzip, Coding::Gzip)]
        .into_iter()
        .filter_map(|(q, c)| Some((q.or(any)?, c)))
        .filter(|(q, _)| *q > 0)
        .collect();
    // Stable: at equal weight br stays first.
    out.sort_by_key(|(q, _)| std::cmp::Reverse(*q));
    out.into_iter().map(|(_, c)| c).collect()
}

/// The entity-tags of an `If-None-Match` / `If-Match` list: `*` matches any; otherwise whether one of
/// them matches `etag` (a quoted strong tag, `"…"`), weakly (a `W/` tag counts as its opaque part) or
/// strongly (a weak tag never matches). A list that stops parsing matches nothing after that point.
pub fn etag_matches(field: &[u8], etag: &str, weak: bool) -> bool {
    let field = trim(field);
    if field == b"*" {
        return true;
    }
    let want = etag.as_bytes();
    let mut rest = field;
    loop {
        while let [b' ' | b'\t' | b',', tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            return false;
        }
        let is_weak = rest.len() >= 2 && &rest[..2] == b"W/";
        if is_weak {
            rest = &rest[2..];
        }
        let [b'"', tail @ ..] = rest else {
            return false;
        };
        let Some(close) = tail.iter().position(|&b| b == b'"') else {
            return false;
        };
        let tag = &rest[..close + 2];
        if tag == want && (weak || !is_weak) {
            return true;
        }
        rest = &tail[close + 1..];
    }
}

/// An HTTP date (IMF-fixdate, or the two obsolete forms) as seconds since the epoch.
pub fn parse_date(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(trim(field)).ok()?;
    let t = httpdate::parse_http_date(text).ok()?;
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Seconds since the epoch as an IMF-fixdate (`Last-Modified`).
pub fn format_date(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// The content type of a file by its extension (case-insensitive), and whether a compressed sibling is
/// worth looking for (text formats; images, fonts and archives other than SVG are compressed already).
/// Unknown extensions are `application/octet-stream`.
pub fn content_type(name: &[u8]) -> (&'static str, bool) {
    let ext = match name.iter().rposition(|&b| b == b'.') {
        Some(dot) if !name[dot + 1..].contains(&b'/') => &name[dot + 1..],
        _ => b"",
    };
    let mut lower = [0u8; 12];
    if ext.len() > lower.len() {
        return ("application/octet-stream", false);
    }
    for (d, s) in lower.iter_mut().zip(ext) {
        *d = s.to_ascii_lowercase();
    }
    match &lower[..ext.len()] {
        b"html" | b"htm" => ("text/html; charset=utf-8", true),
        b"css" => ("text/css; charset=utf-8", true),
        b"js" | b"mjs" | b"cjs" => ("text/javascript; charset=utf-8", true),
        b"json" | b"map" => ("application/json", true),
        b"webmanifest" => ("application/manifest+json", true),
        b"xml" => ("application/xml", true),
        b"txt" => ("text/plain; charset=utf-8", true),
        b"csv" => ("text/csv; charset=utf-8", true),
        b"md" => ("text/markdown; charset=utf-8", true),
        b"svg" => ("image/svg+xml", true),
        b"wasm" => ("application/wasm", true),
        b"ttf" => ("font/ttf", true),
        b"otf" => ("font/otf", true),
        b"eot" => ("application/vnd.ms-fontobject", true),
        b"ico" => ("image/x-icon", true),
        b"woff" => ("font/woff", false),
        b"woff2" => ("font/woff2", false),
        b"png" => ("image/png", false),
        b"jpg" | b"jpeg" => ("image/jpeg", false),
        b"gif" => ("image/gif", false),
        b"webp" => ("image/webp", false),
        b"avif" => ("image/avif", false),
        b"bmp" => ("image/bmp", false),
        b"pdf" => ("application/pdf", false),
        b"zip" => ("application/zip", false),
        b"gz" => ("application/gzip", false),
        b"br" => ("application/x-brotli", false),
        b"tar" => ("application/x-tar", false),
        b"mp4" => ("video/mp4", false),
        b"webm" => ("video/webm", false),
        b"mp3" => ("audio/mpeg", false),
        b"ogg" => ("audio/ogg", false),
        b"wav" => ("audio/wav", false),
        _ => ("application/octet-stream", false),
    }
}

/// Whether a file's name carries a content hash as Django's `ManifestStaticFilesStorage` writes it:
/// `name.<12 lowercase hex>.ext` (or `name.<12 hex>` without an extension), the hash holding at least one
/// letter so that a 12-digit date or number in a name is not taken for one. Such a file never changes
/// under its name: it may be cached for good.
pub fn is_hashed_name(path: &[u8]) -> bool {
    let name = match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => &path[slash + 1..],
        None => path,
    };
    let parts: Vec<&[u8]> = name.split(|&b| b == b'.').collect();
    if parts.len() < 2 || parts[0].is_empty() {
        return false;
    }
    let hashed = |p: &[u8]| {
        p.len() == 12
            && p.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && p.iter().any(u8::is_ascii_lowercase)
    };
    let n = parts.len();
    hashed(parts[n - 1]) || (n >= 3 && hashed(parts[n - 2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_once_and_cannot_climb() {
        assert_eq!(decode_path(b"css/app.css").unwrap(), b"css/app.css");
        assert_eq!(decode_path(b"/css//./a%20b.css").unwrap(), b"css/a b.css");
        assert_eq!(decode_path(b"").unwrap(), b"");
        assert_eq!(decode_path(b"../etc/passwd"), Err(PathError::DotDot));
        assert_eq!(decode_path(b"a/%2e%2e/%2E%2E/x"), Err(PathError::DotDot));
        assert_eq!(decode_path(b"a%2f..%2fx"), Err(PathError::DotDot));
        assert_eq!(decode_path(b"a/.."), Err(PathError::DotDot));
        assert_eq!(decode_path(b"a%00.css"), Err(PathError::Nul));
        assert_eq!(decode_path(b"a\\..\\x"), Err(PathError::Backslash));
        assert_eq!(decode_path(b"a%5cx"), Err(PathError::Backslash));
        assert_eq!(decode_path(b"a%zz"), Err(PathError::BadEscape));
        assert_eq!(decode_path(b"a%2"), Err(PathError::BadEscape));
        // Decoded once: an encoded percent stays a percent.
        assert_eq!(decode_path(b"%252e%252e").unwrap(), b"%2e%2e");
        assert_eq!(decode_path(b"...").unwrap(), b"...");
        assert_eq!(PathError::BadEscape.status(), 400);
        assert_eq!(PathError::DotDot.status(), 404);
    }

    #[test]
    fn single_ranges() {
        use RangeAnswer::*;
        assert_eq!(byte_range(b"bytes=0-9", 100), Part { first: 0, last: 9 });
        assert_eq!(
            byte_range(b"bytes=90-", 100),
            Part {
                first: 90,
                last: 99
            }
        );
        assert_eq!(
            byte_range(b"bytes=90-1000", 100),
            Part {
                first: 90,
                last: 99
            }
        );
        assert_eq!(
            byte_range(b"bytes=-10", 100),
            Part {
                first: 90,
                last: 99
            }
        );
        assert_eq!(byte_range(b"bytes=-1000", 100), Part { first: 0, last: 99 });
        assert_eq!(
            byte_range(b" Bytes = 5 - 5 ", 100),
            Part { first: 5, last: 5 }
        );
        assert_eq!(byte_range(b"bytes=100-", 100), Unsatisfiable);
        assert_eq!(byte_range(b"bytes=-0", 100), Unsatisfiable);
        assert_eq!(byte_range(b"bytes=0-", 0), Unsatisfiable);
        assert_eq!(byte_range(b"bytes=9-0", 100), Full);
        assert_eq!(byte_range(b"bytes=0-1,5-6", 100), Full);
        assert_eq!(byte_range(b"items=0-1", 100), Full);
        assert_eq!(byte_range(b"bytes=x-1", 100), Full);
        assert_eq!(byte_range(b"bytes=99999999999999999999-", 100), Full);
        assert_eq!(byte_range(b"bytes=", 100), Full);
        assert_eq!(byte_range(b"bytes=0-0,", 10), Part { first: 0, last: 0 });
    }

    #[test]
    fn codings_by_weight() {
        use Coding::*;
        assert_eq!(accepted_codings(None), vec![]);
        assert_eq!(
            accepted_codings(Some(b"gzip, deflate, br")),
            vec![Brotli, Gzip]
        );
        assert_eq!(
            accepted_codings(Some(b"gzip;q=1, br;q=0.5")),
            vec![Gzip, Brotli]
        );
        assert_eq!(accepted_codings(Some(b"br;q=0, gzip")), vec![Gzip]);
        assert_eq!(accepted_codings(Some(b"*")), vec![Brotli, Gzip]);
        assert_eq!(accepted_codings(Some(b"*;q=0.1, br;q=0")), vec![Gzip]);
        assert_eq!(accepted_codings(Some(b"identity")), vec![]);
        assert_eq!(accepted_codings(Some(b"gzip;q=2")), vec![]);
        assert_eq!(accepted_codings(Some(b"GZIP ; Q=0.001")), vec![Gzip]);
    }

    #[test]
    fn entity_tags() {
        assert!(etag_matches(b"*", "\"a\"", false));
        assert!(etag_matches(b"\"x\", \"a\"", "\"a\"", false));
        assert!(etag_matches(b"W/\"a\"", "\"a\"", true));
        assert!(!etag_matches(b"W/\"a\"", "\"a\"", false));
        assert!(etag_matches(b"\"a,b\"", "\"a,b\"", false));
        assert!(!etag_matches(b"\"ab", "\"ab\"", true));
        assert!(!etag_matches(b"a", "\"a\"", true));
        assert!(!etag_matches(b"", "\"a\"", true));
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(
            parse_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(
            parse_date(b"Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(parse_date(b"Sun Nov  6 08:49:37 1994"), Some(784111777));
        assert_eq!(parse_date(b"yesterday"), None);
        assert_eq!(format_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn types_and_hashed_names() {
        assert_eq!(content_type(b"css/app.CSS").0, "text/css; charset=utf-8");
        assert_eq!(content_type(b"a.woff2"), ("font/woff2", false));
        assert_eq!(content_type(b"README").0, "application/octet-stream");
        assert_eq!(content_type(b"x.d/README").0, "application/octet-stream");
        assert!(is_hashed_name(b"css/base.5af66c1b1797.css"));
        assert!(!is_hashed_name(b"admin/js/core.0123456789ab.min.js"));
        assert!(is_hashed_name(b"app.min.0123456789ab.js"));
        assert!(is_hashed_name(b"LICENSE.0123456789ab"));
        assert!(!is_hashed_name(b"report.202401011230.csv"));
        assert!(!is_hashed_name(b"base.5AF66C1B1797.css"));
        assert!(!is_hashed_name(b"base.css"));
        assert!(!is_hashed_name(b".5af66c1b1797.css"));
    }
}
