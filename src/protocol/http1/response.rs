//! The client side of a response head: status line and the headers the gateway acts on.

use std::time::Duration;

use super::head::has_token;
use super::{Framing, Http1Error};

/// Headers parsed per response.
const MAX_HEADERS: usize = 64;

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// How the body is delimited.
    pub framing: Framing,
    /// The server will close the connection after this response.
    pub close: bool,
    /// `retry-after`, when given in seconds.
    pub retry_after: Option<Duration>,
    /// `content-type` is `text/event-stream`.
    pub event_stream: bool,
}

/// Parses a `retry-after` header given in seconds.
pub fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    std::str::from_utf8(value)
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Parses a response head from the start of `data`: `None` when more bytes are needed, else the
/// head and the bytes it took.
pub fn parse_head(data: &[u8]) -> Result<Option<(ResponseHead, usize)>, Http1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let used = match resp.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Http1Error::Head(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let mut chunked = false;
    let mut length = None;
    let mut close = resp.version == Some(0);
    let mut retry_after = None;
    let mut event_stream = false;
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("");
        let has = |token| has_token(value.as_bytes(), token);
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= has("chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| Http1Error::Length)?,
            );
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = parse_retry_after(h.value);
        } else if h.name.eq_ignore_ascii_case("content-type") {
            event_stream = value
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has("close") {
                close = true;
            } else if has("keep-alive") {
                close = false;
            }
        }
    }
    // 1xx, 204 and 304 have no body whatever the headers say.
    let bodyless = status < 200 || status == 204 || status == 304;
    let framing = match (bodyless, chunked, length) {
        (true, _, _) => Framing::Length(0),
        (false, true, _) => Framing::Chunked,
        (false, false, Some(n)) => Framing::Length(n),
        (false, false, None) => Framing::UntilClose,
    };
    let close = close || framing == Framing::UntilClose;
    Ok(Some((
        ResponseHead {
            status,
            framing,
            close,
            retry_after,
            event_stream,
        },
        used,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        let (h, used) = parse_head(wire).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.close);
        assert!(h.event_stream);
        assert_eq!(h.retry_after, None);
        assert_eq!(&wire[used..], b"rest");
        let (h, _) = parse_head(
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (h.status, h.framing, h.close),
            (405, Framing::Length(5), true)
        );
        let (h, _) = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.framing, h.close), (Framing::UntilClose, true));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nA: b\r\n").unwrap(), None);
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(Http1Error::Length)
        );
    }
}
