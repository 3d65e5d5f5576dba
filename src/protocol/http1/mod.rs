//! HTTP/1.1 as the gateway, its mock upstream and its load generator speak it: request heads
//! parsed strictly (every ambiguous framing refused), response heads, and one body decoder.
//! Every httparse head parse in the crate goes through here, and the helpers both sides need
//! (header lookup, token lists, the body framing decision, reason phrases) are written once.

mod body;
mod head;
mod headers;
mod request;
mod response;

pub use body::{BodyDecoder, MAX_CHUNK_LINE, MAX_TRAILERS};
pub use head::reason;
pub use headers::Headers;
pub use request::{
    parse_request, parse_request_into, Refusal, RequestHead, MAX_HEADERS, MAX_HEAD_BYTES,
};
pub use response::{parse_head, parse_retry_after, ResponseHead};

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Http1Error {
    /// Not an HTTP/1.x response head.
    #[error("malformed response head: {0}")]
    Head(String),
    /// A `Content-Length` that is not a number.
    #[error("bad content-length")]
    Length,
    /// A chunk size line or chunk terminator that is not valid.
    #[error("malformed chunked body")]
    Chunk,
    /// A chunk size line over [`MAX_CHUNK_LINE`] or trailers over [`MAX_TRAILERS`].
    #[error("chunk size line or trailers too long")]
    LineTooLong,
    /// The body (declared or decoded so far) is over the decoder's limit.
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
}

/// How the body of a message is delimited (by default, no body: `Length(0)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// `Content-Length: n`.
    Length(u64),
    /// Neither: the body runs to the end of the connection.
    UntilClose,
}

impl Default for Framing {
    fn default() -> Framing {
        Framing::Length(0)
    }
}
