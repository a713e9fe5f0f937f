//! Request body decoding: the chunked transfer coding (RFC 9112 §7.1) with its
//! extensions and trailer section, as a push decoder whose state stays small
//! however the bytes are split across reads.

use super::errors::HttpError;
use super::parse::{
    is_field_value_byte, is_token, is_token_byte, trim_ows, HeaderMap, ParserOptions,
};
use memchr::memchr;

/// Longest chunk-size line (extensions included) the decoder buffers.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section, in bytes.
pub const MAX_TRAILER_SECTION: usize = 64 * 1024;

/// Trailer fields refused per RFC 9110 §6.5.1: they frame the message, route
/// it, authenticate it, or modify how the request is handled, and a hop that
/// merges trailers into the header section would let a client inject them
/// after a proxy has vetted the head.
const FORBIDDEN_TRAILERS: &[&str] = &[
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "cookie",
    "expect",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "max-forwards",
    "pragma",
    "proxy-authorization",
    "range",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    Size,
    /// This many data bytes of the current chunk are still to come.
    Data(u64),
    /// The CR, then the LF, that must follow chunk data.
    DataCr,
    DataLf,
    /// Reading trailer lines after the last chunk.
    Trailer,
    Done,
}

/// Decodes a chunked body pushed to it in arbitrary pieces.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// The part of a chunk-size or trailer line seen so far.
    line: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
    trailer_bytes: usize,
    field_size_limit: usize,
    fields_limit: usize,
    header_map: HeaderMap,
}

impl ChunkedDecoder {
    /// A decoder whose trailer limits follow the head's limits in `opts`.
    pub fn new(opts: &ParserOptions) -> Self {
        ChunkedDecoder {
            state: State::Size,
            line: Vec::new(),
            trailers: Vec::new(),
            trailer_bytes: 0,
            field_size_limit: opts.field_size_limit(),
            fields_limit: opts.fields_limit(),
            header_map: opts.header_map,
        }
    }

    /// Whether the last chunk and the trailer section have been read.
    pub fn is_finished(&self) -> bool {
        self.state == State::Done
    }

    /// The trailer fields received after the last chunk, names as sent.
    pub fn trailers(&self) -> &[(String, Vec<u8>)] {
        &self.trailers
    }

    /// Consume bytes from `input`, appending decoded payload to `out`.
    /// Returns how many bytes of `input` were used and whether the body is
    /// complete; once it is, the bytes after `consumed` belong to the next
    /// request.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), HttpError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => return Ok((pos, true)),
                State::Data(left) => {
                    let avail = input.len() - pos;
                    if avail == 0 {
                        return Ok((pos, false));
                    }
                    let n = left.min(avail as u64) as usize;
                    out.extend_from_slice(&input[pos..pos + n]);
                    pos += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                }
                State::DataCr | State::DataLf => {
                    let Some(&b) = input.get(pos) else {
                        return Ok((pos, false));
                    };
                    // Anything but CRLF here means the chunk carried more data
                    // than its size said: the framing cannot be trusted.
                    let (want, next) = if self.state == State::DataCr {
                        (b'\r', State::DataLf)
                    } else {
                        (b'\n', State::Size)
                    };
                    if b != want {
                        return Err(HttpError::InvalidChunk);
                    }
                    pos += 1;
                    self.state = next;
                }
                State::Size | State::Trailer => {
                    let (limit, too_long) = if self.state == State::Size {
                        (MAX_CHUNK_LINE, HttpError::ChunkLineTooLong)
                    } else {
                        (self.field_size_limit, HttpError::TrailersTooLarge)
                    };
                    let rest = &input[pos..];
                    let Some(i) = memchr(b'\n', rest) else {
                        // The line will be at least one byte (LF) longer.
                        if self.line.len() + rest.len() + 1 > limit {
                            return Err(too_long);
                        }
                        self.line.extend_from_slice(rest);
                        return Ok((input.len(), false));
                    };
                    let piece = &rest[..=i];
                    if self.line.len() + piece.len() > limit {
                        return Err(too_long);
                    }
                    pos += piece.len();
                    if self.line.is_empty() {
                        self.end_line(piece)?;
                    } else {
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(piece);
                        let res = self.end_line(&line);
                        line.clear();
                        self.line = line;
                        res?;
                    }
                }
            }
        }
    }

    /// Act on a complete line (LF included) read in the Size or Trailer state.
    fn end_line(&mut self, line: &[u8]) -> Result<(), HttpError> {
        if self.state == State::Size {
            let size = parse_chunk_size_line(line)?;
            self.state = if size == 0 {
                State::Trailer
            } else {
                State::Data(size)
            };
            return Ok(());
        }
        let Some(content) = line.strip_suffix(b"\r\n") else {
            return Err(HttpError::BareLineFeed);
        };
        if content.is_empty() {
            self.state = State::Done;
            return Ok(());
        }
        self.trailer_bytes += line.len();
        if self.trailers.len() >= self.fields_limit || self.trailer_bytes > MAX_TRAILER_SECTION {
            return Err(HttpError::TrailersTooLarge);
        }
        if let [b' ' | b'\t', ..] = content {
            return Err(HttpError::ObsoleteFolding);
        }
        let colon = memchr(b':', content).ok_or(HttpError::InvalidHeaderLine)?;
        let name = &content[..colon];
        if !is_token(name) {
            return Err(HttpError::InvalidHeaderName);
        }
        let name = std::str::from_utf8(name).map_err(|_| HttpError::InvalidHeaderName)?;
        let value = trim_ows(&content[colon + 1..]);
        if !value.iter().all(|&b| is_field_value_byte(b)) {
            return Err(HttpError::InvalidHeaderValue);
        }
        if FORBIDDEN_TRAILERS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(name))
        {
            return Err(HttpError::ForbiddenTrailer);
        }
        if name.contains('_') {
            match self.header_map {
                HeaderMap::Drop => return Ok(()),
                HeaderMap::Refuse => return Err(HttpError::UnderscoreInHeaderName),
                HeaderMap::Dangerous => {}
            }
        }
        self.trailers.push((name.to_owned(), value.to_vec()));
        Ok(())
    }
}

/// `chunk-size [chunk-ext] CRLF` (LF included in `line`).
fn parse_chunk_size_line(line: &[u8]) -> Result<u64, HttpError> {
    let Some(content) = line.strip_suffix(b"\r\n") else {
        return Err(HttpError::InvalidChunkSize);
    };
    let digits = content.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(HttpError::InvalidChunkSize);
    }
    let size = content[..digits].iter().try_fold(0u64, |acc, &b| {
        let d = (b as char)
            .to_digit(16)
            .ok_or(HttpError::InvalidChunkSize)?;
        acc.checked_mul(16)
            .and_then(|a| a.checked_add(u64::from(d)))
            .ok_or(HttpError::InvalidChunkSize)
    })?;
    let rest = &content[digits..];
    if !rest.is_empty() {
        // Whitespace may only come before an extension's ';' (BWS): "0 " or
        // "6_0" is a size a lenient parser might read differently.
        let after_ws = skip_ws(rest);
        if after_ws.first() != Some(&b';') {
            return Err(HttpError::InvalidChunkSize);
        }
        validate_chunk_ext(rest)?;
    }
    Ok(size)
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

/// RFC 9112 §7.1.1: `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`.
/// Extensions are ignored, but validating them keeps a bare CR or other
/// stray byte from being read as a line end by some other hop.
fn validate_chunk_ext(mut s: &[u8]) -> Result<(), HttpError> {
    let bad = HttpError::InvalidChunkExtension;
    while !s.is_empty() {
        s = skip_ws(s);
        s = s.strip_prefix(b";").ok_or(bad)?;
        s = skip_ws(s);
        let name_len = s.iter().take_while(|&&b| is_token_byte(b)).count();
        if name_len == 0 {
            return Err(bad);
        }
        s = &s[name_len..];
        let after_ws = skip_ws(s);
        if let Some(v) = after_ws.strip_prefix(b"=") {
            let v = skip_ws(v);
            let used = if v.first() == Some(&b'"') {
                quoted_string_len(v).ok_or(bad)?
            } else {
                v.iter().take_while(|&&b| is_token_byte(b)).count()
            };
            if used == 0 {
                return Err(bad);
            }
            s = &v[used..];
        }
    }
    Ok(())
}

/// Length of the quoted-string at the start of `s` (quotes included).
fn quoted_string_len(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while let Some(&b) = s.get(i) {
        match b {
            b'"' => return Some(i + 1),
            b'\\' => match s.get(i + 1) {
                Some(&e) if e == b'\t' || e == b' ' || (e >= 0x21 && e != 0x7f) => i += 2,
                _ => return None,
            },
            b'\t' | b' ' => i += 1,
            0x21..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool, ChunkedDecoder), HttpError> {
        let mut d = ChunkedDecoder::new(&ParserOptions::default());
        let mut out = Vec::new();
        let (n, done) = d.decode(input, &mut out)?;
        Ok((out, n, done, d))
    }

    fn decode_bytewise(input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = ChunkedDecoder::new(&ParserOptions::default());
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let (n, done) = d.decode(&input[pos..=pos], &mut out)?;
            pos += n;
            if done {
                return Ok((out, pos, true));
            }
            assert_eq!(n, 1);
        }
        Ok((out, pos, false))
    }

    #[test]
    fn chunks_extensions_trailers() {
        let body = b"5;a=b ; c\r\nhello\r\n6;q=\"x \\\" y\"\r\n world\r\n000\r\nVary: *\r\nX-Sum: \tabc \r\n\r\nNEXT";
        let (out, n, done, d) = decode_all(body).unwrap();
        assert_eq!(out, b"hello world");
        assert!(done && d.is_finished());
        assert_eq!(&body[n..], b"NEXT");
        assert_eq!(d.trailers()[1], ("X-Sum".to_owned(), b"abc".to_vec()));
        let (out, n2, done) = decode_bytewise(body).unwrap();
        assert_eq!((out.as_slice(), n2, done), (&b"hello world"[..], n, true));
    }

    #[test]
    fn incomplete_is_not_finished() {
        let (out, n, done, _) = decode_all(b"5\r\nhel").unwrap();
        assert_eq!((out.as_slice(), n, done), (&b"hel"[..], 6, false));
        let (_, _, done, _) = decode_all(b"0\r\n").unwrap();
        assert!(!done);
        let (_, n, done, _) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert!(done && n == 20);
    }

    #[test]
    fn bad_sizes() {
        for body in [
            &b"6_0\r\n"[..],
            b" 5\r\n",
            b"5 \r\n",
            b"-5\r\n",
            b"+5\r\n",
            b"0x5\r\n",
            b"\r\n",
            b";a\r\n",
            b"5\n",
            b"5\n;\r\n",
            b"10000000000000000\r\n",
        ] {
            assert_eq!(
                decode_all(body).err(),
                Some(HttpError::InvalidChunkSize),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(decode_all(b"FFFFFFFFFFFFFFFF\r\n").unwrap().1, 18);
    }

    #[test]
    fn bad_extensions() {
        for body in [
            &b"5;ext=val\rue\r\n"[..],
            b"5;\r\n",
            b"5;=v\r\n",
            b"5;a=\r\n",
            b"5;a=\"open\r\n",
            b"5;a \r\n",
            b"5;a=b c\r\n",
            b"5;a\x00\r\n",
        ] {
            assert_eq!(
                decode_all(body).err(),
                Some(HttpError::InvalidChunkExtension),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(decode_all(b"5 ; a = \"b\" ;c=d\r\n").is_ok());
    }

    #[test]
    fn data_longer_than_size() {
        assert_eq!(
            decode_all(b"3\r\nhello\r\n").err(),
            Some(HttpError::InvalidChunk)
        );
        assert_eq!(
            decode_all(b"5\r\nhello\n0\r\n\r\n").err(),
            Some(HttpError::InvalidChunk)
        );
    }

    #[test]
    fn bounded_lines() {
        let mut long = b"5;".to_vec();
        long.extend_from_slice(&vec![b'a'; MAX_CHUNK_LINE]);
        assert_eq!(decode_all(&long).err(), Some(HttpError::ChunkLineTooLong));
        let mut d = ChunkedDecoder::new(&ParserOptions::default());
        let mut out = Vec::new();
        let mut err = None;
        for _ in 0..MAX_CHUNK_LINE {
            if let Err(e) = d.decode(b"0", &mut out) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(HttpError::ChunkLineTooLong));

        let mut trailer = b"0\r\nX: ".to_vec();
        trailer.extend_from_slice(&[b'v'; 9000]);
        assert_eq!(
            decode_all(&trailer).err(),
            Some(HttpError::TrailersTooLarge)
        );
        let mut many = b"0\r\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        assert_eq!(decode_all(&many).err(), Some(HttpError::TrailersTooLarge));
    }

    #[test]
    fn trailer_rules() {
        for name in [
            "Content-Length",
            "host",
            "Transfer-Encoding",
            "TE",
            "Trailer",
            "Authorization",
        ] {
            let body = format!("0\r\n{name}: 1\r\n\r\n");
            assert_eq!(
                decode_all(body.as_bytes()).err(),
                Some(HttpError::ForbiddenTrailer),
                "{name}"
            );
        }
        assert_eq!(
            decode_all(b"0\r\nX: 1\r\n 2\r\n\r\n").err(),
            Some(HttpError::ObsoleteFolding)
        );
        assert_eq!(
            decode_all(b"0\r\nX : 1\r\n\r\n").err(),
            Some(HttpError::InvalidHeaderName)
        );
        assert_eq!(
            decode_all(b"0\r\nX: a\x01\r\n\r\n").err(),
            Some(HttpError::InvalidHeaderValue)
        );
        assert_eq!(
            decode_all(b"0\r\nX: a\n\r\n").err(),
            Some(HttpError::BareLineFeed)
        );
        assert_eq!(decode_all(b"0\r\n\n").err(), Some(HttpError::BareLineFeed));
        assert_eq!(
            decode_all(b"0\r\nnocolon\r\n\r\n").err(),
            Some(HttpError::InvalidHeaderLine)
        );
        let (_, _, done, d) = decode_all(b"0\r\nX_Y: 1\r\n\r\n").unwrap();
        assert!(done && d.trailers().is_empty());
    }
}
