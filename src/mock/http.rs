//! The server side of HTTP/1.1, as much as the mock needs: request heads (the gateway's strict
//! parser, `protocol::http1::parse_request`), bodies by
//! `Content-Length` or chunked, `Expect: 100-continue`, and responses (whole or chunked).

use std::io;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::net::read_buf::ReadBuf;
use crate::protocol::http1::{self, parse_request, BodyDecoder, Http1Error, Refusal, RequestHead};

/// Largest request head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest request body (and WebSocket message) accepted.
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection in the middle of a request.
    #[error("connection closed mid-request")]
    UnexpectedEof,
    /// Not HTTP/1.x, or a broken header, length or chunk.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The head is over [`MAX_HEAD`].
    #[error("request head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The body is over [`MAX_BODY`].
    #[error("request body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
}

impl From<Http1Error> for HttpError {
    fn from(e: Http1Error) -> HttpError {
        match e {
            Http1Error::TooLarge(_) => HttpError::BodyTooLarge,
            other => HttpError::Malformed(other.to_string()),
        }
    }
}

impl From<Refusal> for HttpError {
    fn from(r: Refusal) -> HttpError {
        match r {
            Refusal::TooManyHeaders | Refusal::HeadTooLarge => HttpError::HeadTooLarge,
            other => HttpError::Malformed(other.to_string()),
        }
    }
}

impl HttpError {
    /// The status to answer with before closing, when the peer can still read one.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Io(_) | HttpError::UnexpectedEof => None,
            HttpError::Malformed(_) => Some(400),
            HttpError::HeadTooLarge => Some(431),
            HttpError::BodyTooLarge => Some(413),
        }
    }
}

/// A socket with a read buffer: the bytes read past the current request stay for the next one
/// (or for the WebSocket after an upgrade).
pub struct Reader<S> {
    stream: S,
    buf: ReadBuf,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Reader<S> {
    /// Wraps a fresh connection.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: ReadBuf::new(READ_CHUNK),
        }
    }

    /// The socket, to write responses.
    pub fn stream(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The socket and the bytes read but not consumed.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.stream, self.buf.into_rest())
    }

    fn data(&self) -> &[u8] {
        self.buf.data()
    }

    fn consume(&mut self, n: usize) {
        self.buf.consume(n);
    }

    /// Reads more bytes; 0 at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.fill(&mut self.stream).await
    }

    /// Reads the next request head; `None` when the peer closed between requests.
    pub async fn read_head(&mut self) -> Result<Option<RequestHead>, HttpError> {
        loop {
            if !self.data().is_empty() {
                if let Some((head, used)) = parse_request(self.data())? {
                    self.consume(used);
                    return Ok(Some(head));
                }
                if self.data().len() > MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
            }
            if self.fill().await? == 0 {
                return if self.data().is_empty() {
                    Ok(None)
                } else {
                    Err(HttpError::UnexpectedEof)
                };
            }
        }
    }

    /// Reads the body of `head` (empty when it has none), answering `Expect: 100-continue`.
    pub async fn read_body(&mut self, head: &RequestHead) -> Result<Vec<u8>, HttpError> {
        let mut decoder = BodyDecoder::with_limit(head.body, MAX_BODY as u64)?;
        if decoder.is_done() {
            return Ok(Vec::new());
        }
        if head.header_has_token("expect", "100-continue") {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
            self.stream.flush().await?;
        }
        let mut body = Vec::with_capacity(decoder.declared_len().map_or(0, |n| n as usize));
        loop {
            let used = decoder.decode(self.data(), |part| body.extend_from_slice(part))?;
            self.consume(used);
            if decoder.is_done() {
                return Ok(body);
            }
            if self.fill().await? == 0 {
                return Err(HttpError::UnexpectedEof);
            }
        }
    }

    /// Reads and discards until the peer closes (or the socket fails).
    pub async fn drain_until_eof(&mut self) {
        while let Ok(n) = self.fill().await {
            if n == 0 {
                return;
            }
            self.buf.clear();
        }
    }
}

/// Writes a whole response with `Content-Length`.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = response_head(status, extra_headers, keep_alive);
    out.push_str(&format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await?;
    stream.flush().await
}

/// Writes the head of a chunked streaming response (e.g. SSE).
pub async fn respond_chunked_head<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = response_head(status, &[], keep_alive);
    out.push_str(&format!(
        "Content-Type: {content_type}\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    ));
    stream.write_all(out.as_bytes()).await?;
    stream.flush().await
}

/// Writes one chunk of a chunked response (nothing for empty data).
pub async fn write_chunk<S: AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.reserve(data.len() + 2);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Ends a chunked response.
pub async fn finish_chunks<S: AsyncWrite + Unpin>(stream: &mut S) -> io::Result<()> {
    stream.write_all(b"0\r\n\r\n").await?;
    stream.flush().await
}

fn response_head(status: u16, extra_headers: &[(&str, &str)], keep_alive: bool) -> String {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", http1::reason(status));
    for (name, value) in extra_headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n"
    } else {
        "Connection: close\r\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use futures_lite::io::Cursor;

    fn reader(bytes: &[u8]) -> Reader<Cursor<Vec<u8>>> {
        Reader::new(Cursor::new(bytes.to_vec()))
    }

    #[test]
    fn reads_pipelined_requests_with_both_body_framings() {
        let raw = b"POST /v1/responses?x=1 HTTP/1.1\r\nContent-Length: 5\r\nHost: a\r\n\r\nhello\
POST /v1/responses HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
        let mut r = reader(raw);
        block_on(async {
            let head = r.read_head().await.expect("head").expect("some");
            assert_eq!(head.path, "/v1/responses");
            assert_eq!(r.read_body(&head).await.expect("body"), b"hello");
            let head = r.read_head().await.expect("head").expect("some");
            assert_eq!(r.read_body(&head).await.expect("body"), b"abcde");
            assert!(r.read_head().await.expect("eof").is_none());
        });
    }

    #[test]
    fn refuses_garbage_and_truncation() {
        block_on(async {
            let mut r = reader(b"\x01\x02 nonsense\r\n\r\n");
            assert!(matches!(r.read_head().await, Err(HttpError::Malformed(_))));
            let mut r = reader(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
            let head = r.read_head().await.expect("head").expect("some");
            assert!(matches!(
                r.read_body(&head).await,
                Err(HttpError::UnexpectedEof)
            ));
            // The gateway's strict parser: framing two readers could disagree on is refused.
            let mut r = reader(
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            assert!(matches!(r.read_head().await, Err(HttpError::Malformed(_))));
            let mut r =
                reader(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n");
            let head = r.read_head().await.expect("head").expect("some");
            assert!(matches!(
                r.read_body(&head).await,
                Err(HttpError::BodyTooLarge)
            ));
        });
    }
}
