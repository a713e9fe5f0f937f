//! Protocol violations found while reading a request, and the single table
//! that maps each of them to the status code and short text sent back.
//!
//! Statuses follow gunicorn's answers so that clients and proxies see the
//! same behaviour when ferricorn replaces it: every framing or syntax error is
//! a 400, header-size limits are 431, an unknown transfer coding is 501 and an
//! expectation other than `100-continue` is 417. A request the client cuts off (it closes its side
//! inside the head or the body) is a 400 too: the client may still be reading.

use std::fmt;

/// Why a request (or a response the application tried to send) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HttpError {
    /// The request line did not end within `limit_request_line` bytes.
    RequestLineTooLong,
    /// The request line is not `method SP target SP version CRLF`.
    InvalidRequestLine,
    /// The method is not a token, or breaks the conventional-method rule.
    InvalidMethod,
    /// The request-target is malformed, not ASCII, or in a form the method
    /// does not allow (`*` outside OPTIONS, authority-form outside CONNECT).
    InvalidTarget,
    /// The version is not `HTTP/<digit>.<digit>`.
    InvalidVersion,
    /// A well-formed version other than HTTP/1.x.
    UnsupportedVersion,
    /// More header fields than `limit_request_fields`.
    TooManyHeaders,
    /// One header field line is longer than `limit_request_field_size`.
    HeaderFieldTooLarge,
    /// The header section as a whole exceeds what the limits allow.
    HeaderSectionTooLarge,
    /// A field line without a colon.
    InvalidHeaderLine,
    /// A field name that is empty or holds a non-token byte (including
    /// whitespace before the colon).
    InvalidHeaderName,
    /// A field name with `_`, refused under `HeaderMap::Refuse`.
    UnderscoreInHeaderName,
    /// A field value holding CR, LF, NUL or another control byte.
    InvalidHeaderValue,
    /// A line of the head ended with LF alone instead of CRLF.
    BareLineFeed,
    /// A field line continued with leading whitespace (obs-fold).
    ObsoleteFolding,
    /// Content-Length is not a plain decimal number that fits in 64 bits.
    InvalidContentLength,
    /// Content-Length appears more than once.
    DuplicateContentLength,
    /// Both Content-Length and Transfer-Encoding were sent.
    ContentLengthWithTransferEncoding,
    /// Transfer-Encoding holds an empty or non-token element.
    InvalidTransferEncoding,
    /// A syntactically valid transfer coding this server does not know.
    UnsupportedTransferCoding,
    /// Transfer-Encoding does not end with exactly one `chunked`.
    ChunkedNotFinal,
    /// Transfer-Encoding on an HTTP/1.0 request.
    TransferEncodingOnHttp10,
    /// An HTTP/1.1 request without Host.
    MissingHost,
    /// Host appears more than once.
    DuplicateHost,
    /// Host is not `host [":" port]`.
    InvalidHost,
    /// Content-Type appears more than once.
    DuplicateContentType,
    /// A trusted proxy's scheme headers disagree (e.g. `X-Forwarded-Proto: https` with
    /// `X-Forwarded-Ssl: off`).
    ContradictorySchemeHeaders,
    /// Expect holds something other than `100-continue`.
    ExpectationFailed,
    /// A chunk-size that is empty, not hexadecimal, or overflows 64 bits.
    InvalidChunkSize,
    /// A chunk extension that breaks the RFC 9112 grammar (bare CR included).
    InvalidChunkExtension,
    /// A chunk-size line longer than the decoder accepts.
    ChunkLineTooLong,
    /// Chunk data not followed by CRLF: more data than its size announced.
    InvalidChunk,
    /// A trailer field that may not be sent in a trailer section.
    ForbiddenTrailer,
    /// The trailer section exceeds its size or field-count limits.
    TrailersTooLarge,
    /// The client ended the connection (or its sending side) inside a request head.
    IncompleteHead,
    /// The client ended the connection (or its sending side) before the body its framing announced.
    IncompleteBody,
    /// The application's status string is not `NNN reason`.
    InvalidResponseStatus,
}

impl HttpError {
    /// The status code a server answers with for this violation.
    pub fn status(&self) -> u16 {
        use HttpError::*;
        match self {
            TooManyHeaders | HeaderFieldTooLarge | HeaderSectionTooLarge | TrailersTooLarge => 431,
            UnsupportedTransferCoding => 501,
            ExpectationFailed => 417,
            InvalidResponseStatus => 500,
            // gunicorn answers an over-long request line with 400 rather than
            // 414, and a non-1.x version with 400 rather than 505.
            RequestLineTooLong
            | InvalidRequestLine
            | InvalidMethod
            | InvalidTarget
            | InvalidVersion
            | UnsupportedVersion
            | InvalidHeaderLine
            | InvalidHeaderName
            | UnderscoreInHeaderName
            | InvalidHeaderValue
            | BareLineFeed
            | ObsoleteFolding
            | InvalidContentLength
            | DuplicateContentLength
            | ContentLengthWithTransferEncoding
            | InvalidTransferEncoding
            | ChunkedNotFinal
            | TransferEncodingOnHttp10
            | MissingHost
            | DuplicateHost
            | InvalidHost
            | DuplicateContentType
            | ContradictorySchemeHeaders
            | InvalidChunkSize
            | InvalidChunkExtension
            | ChunkLineTooLong
            | InvalidChunk
            | ForbiddenTrailer
            | IncompleteHead
            | IncompleteBody => 400,
        }
    }

    /// A short human-readable text for the response body and the log.
    pub fn message(&self) -> &'static str {
        use HttpError::*;
        match self {
            RequestLineTooLong => "Request line is too large",
            InvalidRequestLine => "Invalid HTTP request line",
            InvalidMethod => "Invalid HTTP method",
            InvalidTarget => "Invalid request target",
            InvalidVersion => "Invalid HTTP version",
            UnsupportedVersion => "Unsupported HTTP version",
            TooManyHeaders => "Too many header fields",
            HeaderFieldTooLarge => "Header field is too large",
            HeaderSectionTooLarge => "Header section is too large",
            InvalidHeaderLine => "Invalid header line",
            InvalidHeaderName => "Invalid header name",
            UnderscoreInHeaderName => "Header name with underscore refused",
            InvalidHeaderValue => "Invalid header value",
            BareLineFeed => "Line not terminated by CRLF",
            ObsoleteFolding => "Obsolete line folding is not accepted",
            InvalidContentLength => "Invalid Content-Length",
            DuplicateContentLength => "Duplicate Content-Length",
            ContentLengthWithTransferEncoding => "Content-Length with Transfer-Encoding",
            InvalidTransferEncoding => "Invalid Transfer-Encoding",
            UnsupportedTransferCoding => "Unsupported transfer coding",
            ChunkedNotFinal => "Transfer-Encoding must end with a single chunked",
            TransferEncodingOnHttp10 => "Transfer-Encoding on HTTP/1.0",
            MissingHost => "Missing Host header",
            DuplicateHost => "Duplicate Host header",
            InvalidHost => "Invalid Host header",
            DuplicateContentType => "Duplicate Content-Type",
            ContradictorySchemeHeaders => "Contradictory scheme headers",
            ExpectationFailed => "Unsupported expectation",
            InvalidChunkSize => "Invalid chunk size",
            InvalidChunkExtension => "Invalid chunk extension",
            ChunkLineTooLong => "Chunk size line is too large",
            InvalidChunk => "Chunk data not terminated by CRLF",
            ForbiddenTrailer => "Forbidden trailer field",
            TrailersTooLarge => "Trailer section is too large",
            IncompleteHead => "Request ended before its head was complete",
            IncompleteBody => "Request ended before its body was complete",
            InvalidResponseStatus => "Invalid response status",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.status())
    }
}

impl std::error::Error for HttpError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_map_to_gunicorn_statuses() {
        assert_eq!(HttpError::RequestLineTooLong.status(), 400);
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
        assert_eq!(HttpError::HeaderFieldTooLarge.status(), 431);
        assert_eq!(HttpError::UnsupportedTransferCoding.status(), 501);
        assert_eq!(HttpError::ExpectationFailed.status(), 417);
        assert_eq!(
            HttpError::MissingHost.to_string(),
            "Missing Host header (400)"
        );
    }
}
