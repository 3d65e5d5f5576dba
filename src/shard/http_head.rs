//! Reading one HTTP/1.1 request head off a client socket, with httparse, under a size and time
//! limit, and writing small HTTP responses.

use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::protocol::error_body::GatewayError;
use crate::runtime::{self, TcpStream};

/// Largest request head accepted (request line plus headers).
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most headers accepted in one request (Codex sends about 15).
const MAX_HEADERS: usize = 96;
/// Bytes read per `read` call while a head is incomplete.
const READ_CHUNK: usize = 4096;

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The peer closed before sending a full head (or sent nothing: a normal keep-alive end).
    #[error("connection closed before a full request head")]
    Closed,
    /// The head is not valid HTTP/1.x.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The head is larger than [`MAX_HEAD_BYTES`].
    #[error("request head too large")]
    TooLarge,
    /// The head did not arrive in time.
    #[error("timed out reading the request head")]
    Timeout,
    /// A socket error.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A parsed request head. Header names are lower-cased.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// `true` for HTTP/1.0.
    pub http10: bool,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    /// The first value of a header (name lower-case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// `true` when a comma-separated header contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .any(|(_, v)| {
                v.split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
            })
    }

    /// `true` when the client asked to keep the connection open after this request.
    pub fn keep_alive(&self) -> bool {
        if self.http10 {
            self.header_has_token("connection", "keep-alive")
        } else {
            !self.header_has_token("connection", "close")
        }
    }
}

/// Reads one request head. `buf` carries bytes already read (pipelining, keep-alive); on success
/// it holds whatever followed the head.
pub async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Duration,
) -> Result<RequestHead, HeadError> {
    runtime::timeout(deadline, read_head_inner(stream, buf))
        .await
        .unwrap_or(Err(HeadError::Timeout))
}

async fn read_head_inner(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<RequestHead, HeadError> {
    loop {
        if !buf.is_empty() {
            if let Some((head, used)) = parse(buf)? {
                buf.drain(..used);
                return Ok(head);
            }
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        // Read straight into `buf`: a chunk array here would sit in the connection task's
        // future (and so in every session's) for the connection's whole life.
        let filled = buf.len();
        buf.resize(filled + READ_CHUNK, 0);
        let read = stream.read(&mut buf[filled..]).await;
        buf.truncate(filled + read.as_ref().map_or(0, |n| *n));
        if read? == 0 {
            return Err(HeadError::Closed);
        }
    }
}

fn parse(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    Ok(Some((
        RequestHead {
            method: req.method.unwrap_or("").to_string(),
            path,
            query,
            http10: req.version == Some(0),
            headers: req
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect(),
        },
        used,
    )))
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// Writes a complete JSON response.
pub async fn write_json(
    stream: &mut TcpStream,
    status: u16,
    body: &str,
    extra_headers: &[(&str, &str)],
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: {}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    for (name, value) in extra_headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    if body.len() <= INLINE_BODY {
        out.push_str(body);
        stream.write_all(out.as_bytes()).await?;
    } else {
        // A large answer goes from where it is: one more write instead of a copy of it.
        stream.write_all(out.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
    }
    stream.flush().await
}

/// Largest body sent in the same write as its head.
const INLINE_BODY: usize = 16 * 1024;

/// Writes a gateway error as an OpenAI-style JSON response.
pub async fn write_error(
    stream: &mut TcpStream,
    err: &GatewayError,
    extra_headers: &[(&str, &str)],
    keep_alive: bool,
) -> std::io::Result<()> {
    write_json(
        stream,
        err.status,
        &err.to_http_body(),
        extra_headers,
        keep_alive,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_head_and_leaves_rest() {
        let raw = b"GET /v1/responses?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\nEXTRA";
        let (head, used) = parse(raw).unwrap().unwrap();
        assert_eq!(head.path, "/v1/responses");
        assert_eq!(head.query.as_deref(), Some("x=1"));
        assert!(head.header_has_token("connection", "upgrade"));
        assert_eq!(head.header("upgrade"), Some(&b"websocket"[..]));
        assert_eq!(&raw[used..], b"EXTRA");
        assert!(head.keep_alive());
        assert!(parse(b"GET / HTTP/1.1\r\nHost").unwrap().is_none());
        assert!(parse(b"\x00\x01 garbage\r\n\r\n").is_err());
    }
}
