//! The HTTP/1.1 upstream client: `POST {base_url}/responses` over plain TCP or rustls, the
//! response head read with httparse, chunked or content-length bodies decoded incrementally into
//! the SSE parser. Connections are kept alive per account slice and reused only after a response
//! was read to its end.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use http::{HeaderName, HeaderValue};

use crate::config::UpstreamConfig;
use crate::net::UpstreamStream;
use crate::protocol::http1::{self, BodyDecoder, Http1Error, ResponseHead};
use crate::protocol::sse::{SseError, SseParser};
use crate::runtime;

use super::account::AccountRuntime;
use super::upstream::{connect_stream, DialError};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest error body read from a non-200 answer.
const MAX_ERROR_BODY: usize = 256 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// How long the tail of a finished response (the last chunk) may take before the connection is
/// dropped instead of kept.
const TAIL_TIMEOUT: Duration = Duration::from_millis(500);

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpUpError {
    /// The connection could not be opened.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The socket failed or closed early.
    #[error("upstream connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// Upstream closed before the response ended.
    #[error("upstream closed the connection mid-response")]
    Eof,
    /// Nothing arrived in time.
    #[error("upstream sent nothing in time")]
    Timeout,
    /// The response is not valid HTTP/1.1 or SSE.
    #[error("malformed upstream response: {0}")]
    Malformed(String),
    /// One event exceeded the size limit.
    #[error(transparent)]
    TooLarge(#[from] SseError),
}

impl From<Http1Error> for HttpUpError {
    fn from(e: Http1Error) -> Self {
        HttpUpError::Malformed(e.to_string())
    }
}

/// One keep-alive connection to an account's HTTP endpoint.
pub struct HttpConn {
    /// Shard-local id, for logs.
    pub id: u64,
    stream: UpstreamStream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// Where reads land before they are appended to `buf`.
    scratch: Box<[u8]>,
    /// When it was opened.
    pub born: Instant,
    /// How long the dial took.
    pub dial_time: Duration,
}

/// An upstream response in flight: its status and, for a 200, its SSE body.
pub struct HttpResponse {
    conn: HttpConn,
    /// HTTP status.
    pub status: u16,
    /// `retry-after`, when given.
    pub retry_after: Option<Duration>,
    /// `true` when the body is an event stream.
    pub is_sse: bool,
    body: BodyDecoder,
    keep_alive: bool,
    parser: SseParser,
    read_timeout: Duration,
}

impl HttpConn {
    /// Opens a connection to the account.
    pub async fn dial(
        account: &AccountRuntime,
        cfg: &UpstreamConfig,
        id: u64,
    ) -> Result<HttpConn, DialError> {
        let started = Instant::now();
        let stream = connect_stream(account, cfg).await?;
        Ok(HttpConn {
            id,
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            born: Instant::now(),
            dial_time: started.elapsed(),
        })
    }

    /// Sends `body` to `POST {base}/responses` and reads the response head.
    pub async fn send(
        mut self,
        account: &AccountRuntime,
        cfg: &UpstreamConfig,
        forward: &[(HeaderName, HeaderValue)],
        body: &[u8],
    ) -> Result<HttpResponse, HttpUpError> {
        let ep = &account.config.endpoint;
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(b"POST ");
        head.extend_from_slice(ep.path.as_bytes());
        head.extend_from_slice(b"/responses HTTP/1.1\r\nhost: ");
        head.extend_from_slice(ep.authority().as_bytes());
        head.extend_from_slice(b"\r\nauthorization: ");
        head.extend_from_slice(account.authorization().as_bytes());
        head.extend_from_slice(
            b"\r\ncontent-type: application/json\r\naccept: text/event-stream\r\nconnection: keep-alive\r\n",
        );
        for (name, value) in forward.iter().chain(account.extra_headers(forward)) {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        let write = async {
            self.stream.write_all(&head).await?;
            self.stream.write_all(body).await?;
            self.stream.flush().await
        };
        runtime::timeout(cfg.event_timeout, write)
            .await
            .ok_or(HttpUpError::Timeout)??;
        let read_timeout = cfg.event_timeout;
        let head = runtime::timeout(read_timeout, self.read_head())
            .await
            .ok_or(HttpUpError::Timeout)??;
        Ok(HttpResponse {
            conn: self,
            status: head.status,
            retry_after: head.retry_after,
            is_sse: head.event_stream,
            body: BodyDecoder::new(head.framing),
            keep_alive: !head.close,
            parser: SseParser::new(cfg.max_message_bytes),
            read_timeout,
        })
    }

    /// Reads more bytes onto `buf`. Cancel-safe: a read abandoned mid-way (the relay races it
    /// against the client and polls it once for batching) leaves `buf` as it was.
    async fn fill(&mut self) -> Result<usize, HttpUpError> {
        let n = self.stream.read(&mut self.scratch).await?;
        self.buf.extend_from_slice(&self.scratch[..n]);
        Ok(n)
    }

    async fn read_head(&mut self) -> Result<ResponseHead, HttpUpError> {
        loop {
            if let Some((head, used)) = http1::parse_head(&self.buf)? {
                self.buf.drain(..used);
                return Ok(head);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(HttpUpError::Malformed("response head too large".into()));
            }
            if self.fill().await? == 0 {
                return Err(HttpUpError::Eof);
            }
        }
    }
}

impl HttpResponse {
    /// The next SSE event's data; `None` at the clean end of the body.
    pub async fn next_event(&mut self) -> Result<Option<Bytes>, HttpUpError> {
        loop {
            if let Some(ev) = self.parser.next_event()? {
                return Ok(Some(ev.data));
            }
            if self.body.is_done() {
                return Ok(None);
            }
            self.read_more().await?;
        }
    }

    /// Reads the whole (non-SSE) body, bounded; used for error answers.
    pub async fn read_all(&mut self) -> Result<Vec<u8>, HttpUpError> {
        let mut out = Vec::new();
        loop {
            decode_body(&mut self.body, &mut self.conn.buf, |b| {
                out.extend_from_slice(b)
            })?;
            if self.body.is_done() || out.len() > MAX_ERROR_BODY {
                return Ok(out);
            }
            self.fill_body().await?;
        }
    }

    /// The connection back, when the response was read to its end and may carry another one.
    /// Reads the body's tail (e.g. the last chunk after a terminal event) for a short while.
    pub async fn finish(mut self) -> Option<HttpConn> {
        if !self.keep_alive {
            return None;
        }
        let drained = runtime::timeout(TAIL_TIMEOUT, async {
            while !self.body.is_done() {
                decode_body(&mut self.body, &mut self.conn.buf, |_| {})?;
                if self.body.is_done() {
                    break;
                }
                if self.conn.fill().await? == 0 {
                    return Err(HttpUpError::Eof);
                }
            }
            Ok::<(), HttpUpError>(())
        })
        .await;
        match drained {
            Some(Ok(())) if self.conn.buf.is_empty() && self.parser.buffered() == 0 => {
                Some(self.conn)
            }
            _ => None,
        }
    }

    /// Reads more of the body off the connection, within the read timeout. End of stream ends a
    /// close-delimited body cleanly and is an error for any other framing.
    async fn fill_body(&mut self) -> Result<(), HttpUpError> {
        let n = runtime::timeout(self.read_timeout, self.conn.fill())
            .await
            .ok_or(HttpUpError::Timeout)??;
        if n == 0 && !self.body.end_of_stream() {
            return Err(HttpUpError::Eof);
        }
        Ok(())
    }

    /// Feeds the SSE parser more of the body, reading from the socket when nothing is buffered.
    async fn read_more(&mut self) -> Result<(), HttpUpError> {
        loop {
            let parser = &mut self.parser;
            let fed = decode_body(&mut self.body, &mut self.conn.buf, |b| parser.feed(b))?;
            if fed || self.body.is_done() {
                return Ok(());
            }
            self.fill_body().await?;
        }
    }
}

/// Decodes the body bytes buffered in `buf` (chunks unwrapped) straight into `out`, consuming
/// them; `true` when any body bytes were handed over.
fn decode_body(
    body: &mut BodyDecoder,
    buf: &mut Vec<u8>,
    mut out: impl FnMut(&[u8]),
) -> Result<bool, HttpUpError> {
    let mut fed = false;
    let used = body.decode(buf, |b| {
        fed |= !b.is_empty();
        out(b);
    })?;
    buf.drain(..used);
    Ok(fed)
}

/// Turns a `response.create` frame into the body of `POST /responses`: without `type` and
/// `generate`, with `stream: true`. Returns `None` when the frame is not a JSON object. The
/// frame is text (its UTF-8 checked when it was read): sonic-rs reads a `&str` without checking
/// it again, where a `&[u8]` would cost a pass over the whole frame first.
pub fn http_body(frame: &str) -> Option<Vec<u8>> {
    use sonic_rs::JsonValueMutTrait;
    let mut v: sonic_rs::Value = sonic_rs::from_str(frame).ok()?;
    let obj = v.as_object_mut()?;
    obj.remove(&"type");
    obj.remove(&"generate");
    obj.insert(&"stream", sonic_rs::Value::from(true));
    sonic_rs::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_body_drops_type_and_generate_and_streams() {
        let body = http_body(
            r#"{"type":"response.create","model":"m","generate":false,"stream":false,"input":[]}"#,
        )
        .unwrap();
        let v: sonic_rs::Value = sonic_rs::from_slice(&body).unwrap();
        use sonic_rs::JsonValueTrait;
        assert!(v.get("type").is_none());
        assert!(v.get("generate").is_none());
        assert_eq!(v.get("stream").and_then(|s| s.as_bool()), Some(true));
        assert_eq!(v.get("model").and_then(|s| s.as_str()), Some("m"));
        assert!(http_body("[1]").is_none());
    }
}
