//! The HTTP/1.x wire protocol of ferricorn: parsing request heads
//! ([`parse`]), decoding request bodies ([`body`]), writing responses
//! ([`response`]), framing a response the app described semantically ([`framing`]), the protocol violations shared by all three
//! ([`errors`]), and what serving a file needs of a request (path, range, codings, validators: [`static_files`]). Nothing here does I/O: callers push bytes in and get bytes out.

pub mod body;
pub mod errors;
pub mod framing;
pub mod parse;
pub mod response;
pub mod static_files;

pub use body::ChunkedDecoder;
pub use errors::HttpError;
pub use parse::{
    h2_request_head, max_head_size, parse_request, percent_decode, BodyKind, HeaderMap, Parsed,
    ParserOptions, RequestHead,
};
pub use response::{
    error_response, is_hop_by_hop, reason_phrase, simple_response, valid_header_name,
    valid_header_value, write_chunk, write_chunk_size, write_content_length, write_date_header,
    write_header, write_last_chunk, write_status_line,
};
