//! Response serialization: the status line, the cached Date field, chunked
//! framing, the checks an application's status and fields must pass before
//! they reach the wire, and the complete responses the server sends on its own
//! (refused requests, timeouts, overload).

use super::errors::HttpError;
use super::parse::{is_field_value_byte, is_token};
use std::cell::Cell;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The standard reason phrase for `code`, or `""` for an unregistered code.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// RFC 9110 §7.6.1 hop-by-hop fields, which a WSGI application may not set
/// (PEP 3333): the server alone manages the connection.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP_BY_HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    ];
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// A field name is a non-empty RFC 9110 token.
pub fn valid_header_name(name: &[u8]) -> bool {
    is_token(name)
}

/// A field value holds no CR, LF, NUL or other control byte except HTAB;
/// anything else could split the response or be read differently by a proxy.
pub fn valid_header_value(value: &[u8]) -> bool {
    value.iter().all(|&b| is_field_value_byte(b))
}

/// Append `HTTP/1.<minor> <status>\r\n`. `status` is the application's status
/// string: three digits, then a space and a reason phrase without control
/// bytes. A bare three-digit code gets the standard phrase. Returns the code.
pub fn write_status_line(
    buf: &mut Vec<u8>,
    version_minor: u8,
    status: &str,
) -> Result<u16, HttpError> {
    let s = status.as_bytes();
    let (code, reason) = match s {
        [a, b, c, rest @ ..] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
            match rest {
                [] => (code, reason_phrase(code).as_bytes()),
                [b' ', reason @ ..] => (code, reason),
                _ => return Err(HttpError::InvalidResponseStatus),
            }
        }
        _ => return Err(HttpError::InvalidResponseStatus),
    };
    // RFC 9110 §15: status codes are 100-599; reason-phrase is
    // HTAB / SP / VCHAR / obs-text, so a CR or LF cannot split the response.
    if !(100..=599).contains(&code) || !valid_header_value(reason) {
        return Err(HttpError::InvalidResponseStatus);
    }
    buf.extend_from_slice(if version_minor == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    let mut digits = itoa::Buffer::new();
    buf.extend_from_slice(digits.format(code).as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(reason);
    buf.extend_from_slice(b"\r\n");
    Ok(code)
}

/// Append `name: value\r\n`. The caller validates both (see
/// [`valid_header_name`] and [`valid_header_value`]).
pub fn write_header(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

/// Append `Content-Length: <n>\r\n`.
pub fn write_content_length(buf: &mut Vec<u8>, n: u64) {
    let mut digits = itoa::Buffer::new();
    write_header(buf, b"Content-Length", digits.format(n).as_bytes());
}

/// Length of an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
const IMF_FIXDATE_LEN: usize = 29;

thread_local! {
    /// The formatted date and the second it was formatted for; refreshed at
    /// most once a second per thread.
    static DATE_CACHE: Cell<(u64, [u8; IMF_FIXDATE_LEN])> = const { Cell::new((u64::MAX, [0; IMF_FIXDATE_LEN])) };
}

/// Append `Date: <IMF-fixdate>\r\n` for the current second.
pub fn write_date_header(buf: &mut Vec<u8>) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    buf.extend_from_slice(b"Date: ");
    DATE_CACHE.with(|cache| {
        let (cached_secs, mut text) = cache.get();
        if cached_secs != secs {
            let date = httpdate::HttpDate::from(UNIX_EPOCH + Duration::from_secs(secs));
            if write!(&mut text[..], "{date}").is_err() {
                // Only years past 9999 do not fit; write them uncached.
                let _ = write!(buf, "{date}\r\n");
                return;
            }
            cache.set((secs, text));
        }
        buf.extend_from_slice(&text);
        buf.extend_from_slice(b"\r\n");
    });
}

/// Append one chunk: hex size, CRLF, data, CRLF. Empty data writes nothing,
/// since an empty chunk would end the body.
pub fn write_chunk(buf: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    buf.reserve(data.len() + 20);
    write_chunk_size(buf, data.len());
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
}

/// Append the size line of a chunk of `n` (> 0) bytes; the data and its CRLF follow.
pub fn write_chunk_size(buf: &mut Vec<u8>, mut n: usize) {
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    while n > 0 {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
    }
    buf.extend_from_slice(&hex[i..]);
    buf.extend_from_slice(b"\r\n");
}

/// Append the last chunk and an empty trailer section.
pub fn write_last_chunk(buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"0\r\n\r\n");
}

/// The complete answer to a refused request: always HTTP/1.1 (the request's
/// own version may be what was wrong) and always closing the connection,
/// since the rest of the input cannot be framed.
pub fn error_response(err: &HttpError) -> Vec<u8> {
    simple_response(err.status(), err.message(), true)
}

/// A complete HTTP/1.1 response with a `text/plain` body, for answers the
/// server makes itself (500, 503, 504...).
pub fn simple_response(code: u16, body: &str, close: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(160 + body.len());
    buf.extend_from_slice(b"HTTP/1.1 ");
    let mut digits = itoa::Buffer::new();
    buf.extend_from_slice(digits.format(code).as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(reason_phrase(code).as_bytes());
    buf.extend_from_slice(b"\r\n");
    write_date_header(&mut buf);
    buf.extend_from_slice(b"Content-Type: text/plain\r\n");
    write_content_length(&mut buf, body.len() as u64);
    if close {
        buf.extend_from_slice(b"Connection: close\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(body.as_bytes());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(minor: u8, s: &str) -> Result<(u16, String), HttpError> {
        let mut buf = Vec::new();
        let code = write_status_line(&mut buf, minor, s)?;
        Ok((code, String::from_utf8_lossy(&buf).into_owned()))
    }

    #[test]
    fn status_lines() {
        assert_eq!(status(1, "200 OK"), Ok((200, "HTTP/1.1 200 OK\r\n".into())));
        assert_eq!(
            status(0, "404 Not Found"),
            Ok((404, "HTTP/1.0 404 Not Found\r\n".into()))
        );
        assert_eq!(
            status(1, "204"),
            Ok((204, "HTTP/1.1 204 No Content\r\n".into()))
        );
        assert_eq!(status(1, "299 "), Ok((299, "HTTP/1.1 299 \r\n".into())));
        assert_eq!(
            status(1, "200 Très bien"),
            Ok((200, "HTTP/1.1 200 Très bien\r\n".into()))
        );
        for bad in [
            "",
            "20",
            "2000 OK",
            "20x OK",
            "OK 200",
            "200\tOK",
            "200 OK\r\nX: y",
            "099 Low",
            "600 High",
            " 200 OK",
        ] {
            assert_eq!(
                status(1, bad),
                Err(HttpError::InvalidResponseStatus),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn field_checks() {
        assert!(valid_header_name(b"X-Custom|Pipe"));
        assert!(!valid_header_name(b""));
        assert!(!valid_header_name(b"X Y"));
        assert!(!valid_header_name(b"X:Y"));
        assert!(valid_header_value(b"a\tb c \xe9"));
        assert!(valid_header_value(b""));
        for bad in [&b"a\rb"[..], b"a\nb", b"a\x00", b"\x7f", b"\x1b[0m"] {
            assert!(!valid_header_value(bad), "{bad:?}");
        }
        assert!(is_hop_by_hop("Transfer-Encoding"));
        assert!(is_hop_by_hop("KEEP-ALIVE"));
        assert!(!is_hop_by_hop("Content-Length"));
    }

    #[test]
    fn date_header() {
        let mut buf = Vec::new();
        write_date_header(&mut buf);
        write_date_header(&mut buf);
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.len(), 3);
        for line in &lines[..2] {
            let date = line.strip_prefix("Date: ").unwrap();
            assert_eq!(date.len(), IMF_FIXDATE_LEN);
            assert!(date.ends_with(" GMT"));
            assert!(httpdate::parse_http_date(date).is_ok());
        }
    }

    #[test]
    fn chunks() {
        let mut buf = Vec::new();
        write_chunk(&mut buf, b"");
        write_chunk(&mut buf, b"hello");
        write_chunk(&mut buf, &[b'x'; 255]);
        write_last_chunk(&mut buf);
        let mut expected = b"5\r\nhello\r\nff\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 255]);
        expected.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(buf, expected);

        let mut d = super::super::body::ChunkedDecoder::new(&Default::default());
        let mut out = Vec::new();
        assert_eq!(d.decode(&buf, &mut out), Ok((buf.len(), true)));
        assert_eq!(out.len(), 260);
    }

    #[test]
    fn canned_responses() {
        let r = String::from_utf8(error_response(&HttpError::TooManyHeaders)).unwrap();
        assert!(r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\nDate: "));
        assert!(r.contains("\r\nContent-Type: text/plain\r\nContent-Length: 22\r\nConnection: close\r\n\r\nToo many header fields"));
        let r = String::from_utf8(simple_response(503, "busy", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(r.ends_with("Content-Length: 4\r\n\r\nbusy"));
        assert!(!r.contains("Connection"));
        // The head must itself parse as a valid response head.
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(matches!(
            resp.parse(r.as_bytes()),
            Ok(httparse::Status::Complete(_))
        ));
    }
}
