//! HTTP/1 framing of a response the app described semantically (status, fields, body pieces, end): the
//! status line, the fields the server adds (`Server`, `Date`, the length or `Transfer-Encoding: chunked`,
//! `Connection`), how the body is delimited — the app's Content-Length, a length known because the whole
//! body is in hand, chunked on HTTP/1.1, or the connection's end on HTTP/1.0 and after a 2xx to CONNECT —
//! and whether the connection may carry another request afterwards.
//!
//! It runs on the I/O side, beside the connection, so the app side never writes HTTP/1 bytes and an
//! HTTP/2 driver can frame the same pieces its own way. Pure: bytes are appended to buffers the caller
//! writes.

use super::response::{reason_phrase, write_date_header, write_last_chunk};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body may be sent (HEAD, 1xx, 204, 304).
    NoBody,
    /// Content-Length: at most this many bytes are still to be sent.
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length, or a CONNECT tunnel: the body ends when the connection closes.
    UntilClose,
}

/// What the framing of a response depends on in its head.
pub struct HeadFacts<'a> {
    pub status: u16,
    /// The app's reason phrase (validated); None for the standard one.
    pub reason: Option<&'a [u8]>,
    /// The length the app declared in `headers`.
    pub content_length: Option<u64>,
    /// The whole body's length, when it is in hand as the head goes out.
    pub total: Option<u64>,
    /// The connection must close after this response (the app's side says so, or the worker stops).
    pub close: bool,
}

/// The framing of one response on an HTTP/1 connection.
pub struct H1Response {
    version_minor: u8,
    head_only: bool,
    /// The request is a CONNECT: a 2xx to it has no framing (RFC 9110 §9.3.6).
    connect: bool,
    keep_alive: bool,
    framing: Framing,
}

impl H1Response {
    /// For a request of `method` on HTTP/1.`version_minor`; `keep_alive` says whether the client and the
    /// server's settings allow another request after this one.
    pub fn new(version_minor: u8, method: &str, keep_alive: bool) -> H1Response {
        H1Response {
            version_minor,
            head_only: method == "HEAD",
            connect: method == "CONNECT",
            keep_alive,
            framing: Framing::NoBody,
        }
    }

    /// Serialize the head into `buf` with the app's `fields` (validated, without connection-management
    /// ones), deciding the framing.
    pub fn write_head<'f>(
        &mut self,
        buf: &mut Vec<u8>,
        head: &HeadFacts<'_>,
        fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
    ) {
        let code = head.status;
        let no_body = self.head_only || code < 200 || code == 204 || code == 304;
        // A 2xx to CONNECT carries neither Content-Length nor Transfer-Encoding: what follows its head is
        // the tunnel, so the app's bytes go out as they are and the connection's end ends them (the parser
        // never keeps a CONNECT's connection alive).
        let tunnel = self.connect && (200..300).contains(&code);
        self.framing = if tunnel {
            Framing::UntilClose
        } else if let Some(n) = head.content_length {
            if no_body {
                Framing::NoBody
            } else {
                Framing::Length(n)
            }
        } else if no_body {
            Framing::NoBody
        } else if let Some(n) = head.total {
            Framing::Length(n)
        } else if self.version_minor >= 1 {
            Framing::Chunked
        } else {
            Framing::UntilClose
        };
        if self.framing == Framing::UntilClose || head.close {
            self.keep_alive = false;
        }
        buf.extend_from_slice(if self.version_minor == 0 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        buf.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
        buf.push(b' ');
        match head.reason {
            Some(reason) => buf.extend_from_slice(reason),
            None => buf.extend_from_slice(reason_phrase(code).as_bytes()),
        }
        buf.extend_from_slice(b"\r\n");
        let mut has_date = false;
        let mut has_server = false;
        for (name, value) in fields {
            if tunnel && name.eq_ignore_ascii_case(b"content-length") {
                continue;
            }
            if name.eq_ignore_ascii_case(b"date") {
                has_date = true;
            } else if name.eq_ignore_ascii_case(b"server") {
                has_server = true;
            }
            buf.extend_from_slice(name);
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n");
        }
        if !has_server {
            buf.extend_from_slice(b"Server: ferricorn\r\n");
        }
        if !has_date {
            write_date_header(buf);
        }
        if head.content_length.is_none() {
            match (self.framing, head.total) {
                (Framing::Length(n), _) | (Framing::NoBody, Some(n))
                    if code >= 200 && code != 204 && code != 304 =>
                {
                    buf.extend_from_slice(b"Content-Length: ");
                    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    buf.extend_from_slice(b"\r\n");
                }
                (Framing::Chunked, _) => buf.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
                _ => {}
            }
        }
        if !self.keep_alive {
            buf.extend_from_slice(b"Connection: close\r\n");
        } else if self.version_minor == 0 {
            buf.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        buf.extend_from_slice(b"\r\n");
    }

    /// Frame `len` bytes of body: returns how many of them go out (none without a body, at most what a
    /// length still allows); the chunk's size line goes to `before` and its end to `after`.
    pub fn body(&mut self, len: usize, before: &mut Vec<u8>, after: &mut Vec<u8>) -> usize {
        let n = match self.framing {
            Framing::NoBody => return 0,
            Framing::Length(left) => {
                let n = (len as u64).min(left);
                self.framing = Framing::Length(left - n);
                n as usize
            }
            Framing::Chunked | Framing::UntilClose => len,
        };
        if n > 0 && self.framing == Framing::Chunked {
            super::response::write_chunk_size(before, n);
            after.extend_from_slice(b"\r\n");
        }
        n
    }

    /// How many bytes of a file body of `count` bytes go out: the file is sent raw, so a chunked response
    /// cannot carry one (None).
    pub fn file(&mut self, count: u64) -> Option<u64> {
        match self.framing {
            Framing::Length(left) => {
                let n = left.min(count);
                self.framing = Framing::Length(left - n);
                Some(n)
            }
            Framing::UntilClose => Some(count),
            Framing::NoBody => Some(0),
            Framing::Chunked => None,
        }
    }

    /// End the body into `buf`: the last chunk with any trailer fields. A body shorter than its declared
    /// length ends the connection instead, since the client would wait for the rest.
    pub fn end(&mut self, buf: &mut Vec<u8>, trailers: &[(String, String)]) {
        match self.framing {
            Framing::Chunked if trailers.is_empty() => write_last_chunk(buf),
            Framing::Chunked => {
                buf.extend_from_slice(b"0\r\n");
                for (name, value) in trailers {
                    super::response::write_header(buf, name.as_bytes(), value.as_bytes());
                }
                buf.extend_from_slice(b"\r\n");
            }
            Framing::Length(left) if left > 0 => self.keep_alive = false,
            _ => {}
        }
    }

    /// The connection may carry another request after this response.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, content_length: Option<u64>, total: Option<u64>) -> HeadFacts<'static> {
        HeadFacts {
            status,
            reason: None,
            content_length,
            total,
            close: false,
        }
    }

    type Fields<'a> = std::iter::Copied<std::slice::Iter<'a, (&'a [u8], &'a [u8])>>;

    fn fields<'a>(f: &'a [(&'a [u8], &'a [u8])]) -> Fields<'a> {
        f.iter().copied()
    }

    const NONE: &[(&[u8], &[u8])] = &[];
    const LEN4: &[(&[u8], &[u8])] = &[(b"Content-Length", b"4")];
    const LEN3: &[(&[u8], &[u8])] = &[(b"Content-Length", b"3")];

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn known_total_gets_a_length() {
        let mut r = H1Response::new(1, "GET", true);
        let mut buf = Vec::new();
        r.write_head(&mut buf, &head(200, None, Some(5)), fields(NONE));
        let t = text(&buf);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(t.contains("Content-Length: 5\r\n"), "{t}");
        assert!(!t.contains("Connection"), "{t}");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(r.body(5, &mut a, &mut b), 5);
        assert!(a.is_empty() && b.is_empty());
        r.end(&mut b, &[]);
        assert!(b.is_empty() && r.keep_alive());
    }

    #[test]
    fn streamed_body_is_chunked_on_1_1_and_closes_on_1_0() {
        let mut r = H1Response::new(1, "GET", true);
        let mut buf = Vec::new();
        r.write_head(&mut buf, &head(200, None, None), fields(NONE));
        assert!(text(&buf).contains("Transfer-Encoding: chunked\r\n"));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(r.body(26, &mut a, &mut b), 26);
        assert_eq!(text(&a), "1a\r\n");
        assert_eq!(text(&b), "\r\n");
        let mut end = Vec::new();
        r.end(&mut end, &[("X-Sum".into(), "1".into())]);
        assert_eq!(text(&end), "0\r\nX-Sum: 1\r\n\r\n");
        assert!(r.keep_alive());

        let mut r = H1Response::new(0, "GET", true);
        let mut buf = Vec::new();
        r.write_head(&mut buf, &head(200, None, None), fields(NONE));
        assert!(text(&buf).contains("Connection: close\r\n"));
        assert!(!r.keep_alive());
    }

    #[test]
    fn declared_length_truncates_and_short_body_closes() {
        let mut r = H1Response::new(1, "GET", true);
        let mut buf = Vec::new();
        r.write_head(&mut buf, &head(200, Some(4), None), fields(LEN4));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(r.body(10, &mut a, &mut b), 4);
        assert_eq!(r.body(10, &mut a, &mut b), 0);

        let mut r = H1Response::new(1, "GET", true);
        r.write_head(&mut Vec::new(), &head(200, Some(4), None), fields(LEN4));
        r.body(2, &mut a, &mut b);
        r.end(&mut Vec::new(), &[]);
        assert!(!r.keep_alive());
    }

    #[test]
    fn head_and_no_content_carry_no_body() {
        let mut r = H1Response::new(1, "HEAD", true);
        let mut buf = Vec::new();
        r.write_head(&mut buf, &head(200, None, Some(7)), fields(NONE));
        assert!(text(&buf).contains("Content-Length: 7\r\n"));
        assert_eq!(r.body(7, &mut Vec::new(), &mut Vec::new()), 0);
        let mut r = H1Response::new(1, "GET", true);
        let mut buf = Vec::new();
        r.write_head(&mut buf, &head(204, None, Some(0)), fields(NONE));
        assert!(!text(&buf).contains("Content-Length"));
        assert_eq!(r.file(100), Some(0));
    }

    #[test]
    fn connect_tunnel_is_unframed_and_closes() {
        let mut r = H1Response::new(1, "CONNECT", true);
        let mut buf = Vec::new();
        r.write_head(&mut buf, &head(200, Some(3), None), fields(LEN3));
        let t = text(&buf);
        assert!(
            !t.contains("Content-Length") && t.contains("Connection: close"),
            "{t}"
        );
        assert_eq!(r.body(10, &mut Vec::new(), &mut Vec::new()), 10);
    }

    #[test]
    fn app_status_text_and_close_request() {
        let mut r = H1Response::new(1, "GET", true);
        let mut buf = Vec::new();
        let mut h = head(404, None, Some(0));
        h.reason = Some(b"Nope");
        h.close = true;
        r.write_head(&mut buf, &h, fields(NONE));
        let t = text(&buf);
        assert!(
            t.starts_with("HTTP/1.1 404 Nope\r\n") && t.contains("Connection: close"),
            "{t}"
        );
        assert!(!r.keep_alive());
    }
}
