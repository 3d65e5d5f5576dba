//! The HTTP front door: `POST /v1/responses` (and its aliases) on the same listener as the
//! WebSocket upgrade, with the same client keys. `"stream": true` answers `text/event-stream`
//! with one `event:`/`data:` record per upstream event; otherwise the final response object comes
//! back as JSON, its status taken from the terminal event. Requests run through the same turn
//! driver as WebSocket turns, so they use the upstream WebSocket pool by default.

use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Utf8Bytes;
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use http::{HeaderName, HeaderValue};
use sonic_rs::JsonValueTrait;

use crate::net::ClientStream;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::http1::{BodyDecoder, Http1Error};
use crate::protocol::lazy::range_of;
use crate::protocol::sse::write_event;
use crate::protocol::{ClientFrame, ClientFrameError};
use crate::runtime;
use crate::usage::RequestType;

use super::auth::ClientIdentity;
use super::client_deadline::WriteDeadline;
use super::counters::{add, bump, ShardCounters};
use super::http_head;
use super::sink::{ClientSignal, ClientSink, Gone, TurnError};
use super::turn::{Driver, TurnEnd};
use super::Shard;
use crate::protocol::http1::RequestHead;

/// How long a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the size limit.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// Bad `Content-Length` or chunk framing.
    #[error("malformed request body: {0}")]
    Malformed(Http1Error),
    /// The client closed or the socket failed mid-body.
    #[error("connection closed mid-body")]
    Closed,
    /// The body did not arrive in time.
    #[error("timed out reading the request body")]
    Timeout,
}

impl From<Http1Error> for BodyError {
    fn from(e: Http1Error) -> BodyError {
        match e {
            Http1Error::TooLarge(limit) => BodyError::TooLarge(limit as usize),
            other => BodyError::Malformed(other),
        }
    }
}

/// What the connection does after a request.
pub enum After {
    /// Read the next request.
    KeepAlive,
    /// Close the connection.
    Close,
}

/// Serves one `POST` to a Responses path. `buf` holds the bytes read past the request head and
/// keeps whatever follows this request's body.
pub async fn serve(
    shard: &Rc<Shard>,
    stream: &mut ClientStream,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    identity: ClientIdentity,
    forward: Vec<(HeaderName, HeaderValue)>,
) -> After {
    let keep_alive = head.keep_alive();
    let limit = shard.config.server.max_message_bytes;
    let body = match runtime::timeout(BODY_TIMEOUT, read_body(stream, buf, head, limit)).await {
        Some(Ok(b)) => b,
        Some(Err(BodyError::Closed)) => return After::Close,
        outcome => {
            bump(&shard.counters.http_body_errors);
            let e = outcome.map_or(BodyError::Timeout, |r| r.err().unwrap_or(BodyError::Closed));
            let (status, code, reason) = match e {
                BodyError::TooLarge(_) => (413, "request_too_large", "body_too_large"),
                BodyError::Timeout => (408, "request_timeout", "body_timeout"),
                _ => (400, "bad_request", "body_malformed"),
            };
            http_head::note_refusal(&shard.counters, reason, stream.peer_addr().ok());
            let err = GatewayError::new(status, ErrorType::InvalidRequest, code, e.to_string());
            if http_head::write_error(stream, &err, &[], false)
                .await
                .is_ok()
            {
                http_head::linger_close(stream).await;
            }
            return After::Close;
        }
    };
    add(&shard.counters.bytes_in, body.len() as u64);
    // Checked here, on the bytes the client sent (nesting bounded first): the driver's own check
    // reads the frame built from them, whose positions (line, column, excerpt) the client never
    // wrote.
    let streaming = match ClientFrame::parse(&body) {
        Ok(parsed) => parsed.stream == Some(true),
        Err(e) => {
            bump(&shard.counters.client_frame_errors);
            return match http_head::write_error(stream, &body_error(&e), &[], keep_alive).await {
                Ok(()) if keep_alive => After::KeepAlive,
                _ => After::Close,
            };
        }
    };
    let frame = to_frame(&body);
    let request_type = if streaming {
        RequestType::Stream
    } else {
        RequestType::Sync
    };
    let mut driver = Driver::new(shard.clone(), identity, forward, request_type);
    let received = Instant::now();
    let write_limit = shard.config.server.client_write_timeout;
    let ok = if streaming {
        let sse = SseSink::new(stream, buf, &shard.counters, keep_alive, head.http10);
        let mut sink = WriteDeadline::new(sse, write_limit, &shard.counters);
        let end = driver.run(&mut sink, frame, received).await;
        runtime::timeout(write_limit, sink.into_inner().finish(end))
            .await
            .unwrap_or(false)
    } else {
        let mut sink = JsonSink {
            stream,
            inbuf: buf,
            result: None,
        };
        let end = driver.run(&mut sink, frame, received).await;
        let (status, body) = sink.result.take().unwrap_or_else(|| {
            let err: TurnError = GatewayError::new(
                502,
                ErrorType::Server,
                "upstream_error",
                "the response ended without a result",
            )
            .into();
            (err.status, err.http_body.into())
        });
        add(&shard.counters.bytes_out, body.len() as u64);
        let answer = http_head::write_json(sink.stream, status, body.as_str(), &[], keep_alive);
        matches!(end, TurnEnd::Done)
            && matches!(runtime::timeout(write_limit, answer).await, Some(Ok(())))
    };
    if ok && keep_alive {
        After::KeepAlive
    } else {
        After::Close
    }
}

/// What is wrong with a request body, in the client's terms.
fn body_error(e: &ClientFrameError) -> GatewayError {
    match e {
        ClientFrameError::InvalidJson(why) => GatewayError::new(
            400,
            ErrorType::InvalidRequest,
            "invalid_json",
            format!("request body is not a valid JSON object: {why}"),
        ),
        other => other.to_gateway_error(),
    }
}

/// The POST body as a `response.create` frame (the body with a leading `type`).
fn to_frame(body: &[u8]) -> Bytes {
    let trimmed = body.trim_ascii_start();
    let Some(rest) = trimmed.strip_prefix(b"{") else {
        // Not an object: passed on as-is so the driver answers 400.
        return Bytes::copy_from_slice(body);
    };
    let empty = rest.trim_ascii_start().starts_with(b"}");
    let mut out = Vec::with_capacity(body.len() + 28);
    out.extend_from_slice(br#"{"type":"response.create""#);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

/// Reads a request body framed as the head says (`Content-Length` or chunked), up to `limit`
/// bytes.
async fn read_body(
    stream: &mut ClientStream,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let mut decoder = BodyDecoder::with_limit(head.body, limit as u64)?;
    if decoder.is_done() {
        return Ok(Vec::new());
    }
    // An HTTP/1.0 client does not know 100 (RFC 9110 §10.1.1): it sends its body anyway.
    if !head.http10 && head.header_has_token("expect", "100-continue") {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| BodyError::Closed)?;
    }
    let hint = decoder.declared_len().map_or(0, |n| n as usize);
    let mut body = Vec::with_capacity(hint);
    loop {
        let used = decoder.decode(buf, |part| body.extend_from_slice(part))?;
        buf.drain(..used);
        if decoder.is_done() {
            return Ok(body);
        }
        fill(stream, buf).await?;
    }
}

async fn fill(stream: &mut ClientStream, buf: &mut Vec<u8>) -> Result<(), BodyError> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => Err(BodyError::Closed),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// Most bytes of a pipelined next request kept while a response is in flight.
const MAX_PIPELINED: usize = 64 * 1024;

/// Watches an HTTP client while its request runs: end of stream (or a socket error) means it
/// left, so the turn stops at once. Bytes of a pipelined next request are kept in `inbuf`.
async fn watch_client(stream: &mut ClientStream, inbuf: &mut Vec<u8>) -> ClientSignal {
    let mut chunk = [0u8; 4096];
    while inbuf.len() < MAX_PIPELINED {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return ClientSignal::Gone,
            Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
        }
    }
    futures_lite::future::pending().await
}

/// Events as SSE records on a chunked `200 text/event-stream` response. The head goes out with
/// the first events, so a failure before any event can still be answered as a JSON error.
///
/// Records are written into one buffer behind [`CHUNK_ROOM`] reserved bytes, where the chunk
/// header (and, the first time, the response head) is put in front of them at flush time: one
/// write per flush and no copy of the records. A batch of events is flushed early once it holds
/// [`SSE_FLUSH_AT`] bytes, so a turn holds at most that plus one event on this side.
///
/// An HTTP/1.0 client gets no chunked encoding (RFC 9112 §6.1): the records go out as they are
/// and the stream ends when the connection closes.
struct SseSink<'a> {
    stream: &'a mut ClientStream,
    inbuf: &'a mut Vec<u8>,
    counters: &'a ShardCounters,
    /// [`CHUNK_ROOM`] bytes of room, then the SSE records not yet written.
    pending: Vec<u8>,
    started: bool,
    answered: bool,
    keep_alive: bool,
    /// An HTTP/1.0 client: the body is delimited by the connection's close.
    close_delimited: bool,
}

/// Room kept in front of the pending records for the response head and the chunk header.
const CHUNK_ROOM: usize = 192;
/// Pending SSE bytes past which a batch is written before its last event.
const SSE_FLUSH_AT: usize = 64 * 1024;

impl SseSink<'_> {
    fn new<'a>(
        stream: &'a mut ClientStream,
        inbuf: &'a mut Vec<u8>,
        counters: &'a ShardCounters,
        keep_alive: bool,
        close_delimited: bool,
    ) -> SseSink<'a> {
        SseSink {
            stream,
            inbuf,
            counters,
            pending: vec![0; CHUNK_ROOM],
            started: false,
            answered: false,
            keep_alive,
            close_delimited,
        }
    }

    async fn write_pending(&mut self) -> Result<(), Gone> {
        let records = self.pending.len() - CHUNK_ROOM;
        if records == 0 {
            return Ok(());
        }
        let mut front = [0u8; CHUNK_ROOM];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            front[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        if !self.started {
            put(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n");
            put(if self.close_delimited {
                b"connection: close\r\n\r\n"
            } else if self.keep_alive {
                b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"
            } else {
                b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            });
            self.started = true;
        }
        if !self.close_delimited {
            let mut size = [0u8; 18];
            let mut cursor = std::io::Cursor::new(&mut size[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{records:x}\r\n"));
            let size_len = cursor.position() as usize;
            put(&size[..size_len]);
        }
        let start = CHUNK_ROOM - at;
        self.pending[start..CHUNK_ROOM].copy_from_slice(&front[..at]);
        if !self.close_delimited {
            self.pending.extend_from_slice(b"\r\n");
        }
        add(&self.counters.bytes_out, records as u64);
        let written = self.stream.write_all(&self.pending[start..]).await;
        self.pending.truncate(CHUNK_ROOM);
        if self.pending.capacity() > 4 * SSE_FLUSH_AT {
            // A huge event grew the buffer: give it back rather than keep it for the stream.
            self.pending = vec![0; CHUNK_ROOM];
        }
        written.map_err(|_| Gone)?;
        self.stream.flush().await.map_err(|_| Gone)
    }

    /// Ends the response; `true` when the connection may carry another request.
    async fn finish(mut self, end: TurnEnd) -> bool {
        if !matches!(end, TurnEnd::Done) {
            return false;
        }
        if self.write_pending().await.is_err() {
            return false;
        }
        if self.started && self.close_delimited {
            // The close ends the body.
            return false;
        }
        if self.started {
            return self.stream.write_all(b"0\r\n\r\n").await.is_ok()
                && self.stream.flush().await.is_ok();
        }
        self.answered
    }
}

impl ClientSink for SseSink<'_> {
    async fn feed(&mut self, event: Utf8Bytes, event_type: &str) -> Result<(), Gone> {
        write_event(&mut self.pending, event_type, event.as_bytes());
        if self.pending.len() - CHUNK_ROOM >= SSE_FLUSH_AT {
            return self.write_pending().await;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        self.write_pending().await
    }

    async fn signal(&mut self) -> ClientSignal {
        watch_client(self.stream, self.inbuf).await
    }

    async fn fail(&mut self, error: &TurnError) -> Result<(), Gone> {
        if self.started {
            write_event(&mut self.pending, "error", error.event.as_bytes());
            return self.write_pending().await;
        }
        self.answered = true;
        http_head::write_json(
            self.stream,
            error.status,
            &error.http_body,
            &[],
            self.keep_alive,
        )
        .await
        .map_err(|_| Gone)
    }
}

/// Collects the final response object (or error) of a non-streaming request.
struct JsonSink<'a> {
    stream: &'a mut ClientStream,
    inbuf: &'a mut Vec<u8>,
    /// The answer's status and body; a response object stays in the event it came in.
    result: Option<(u16, Utf8Bytes)>,
}

impl ClientSink for JsonSink<'_> {
    async fn feed(&mut self, event: Utf8Bytes, event_type: &str) -> Result<(), Gone> {
        let raw = event.as_bytes();
        match event_type {
            "error" => {
                let status = sonic_rs::get_from_slice(raw, ["status"])
                    .ok()
                    .and_then(|s| s.as_u64())
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(500);
                // Already cleared of the account's secrets by the relay.
                let e = TurnError::from_upstream(status, raw, &[]);
                self.result = Some((e.status, e.http_body.into()));
            }
            // As upstream's own non-streaming answer: 200 with the response object, whose
            // `status` (and `error`) says how it ended.
            "response.failed"
            | "response.completed"
            | "response.done"
            | "response.incomplete"
            | "response.cancelled"
            | "response.canceled" => {
                let object = sonic_rs::get_from_slice(raw, ["response"])
                    .ok()
                    .and_then(|resp| range_of(raw, resp.as_raw_str().as_bytes()));
                if let Some(range) = object {
                    // A view of the event's own buffer: the answer is not copied.
                    let body = Bytes::from(event).slice(range);
                    if let Ok(body) = Utf8Bytes::try_from(body) {
                        self.result = Some((200, body));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        Ok(())
    }

    async fn signal(&mut self) -> ClientSignal {
        watch_client(self.stream, self.inbuf).await
    }

    async fn fail(&mut self, error: &TurnError) -> Result<(), Gone> {
        self.result = Some((error.status, error.http_body.clone().into()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_becomes_a_create_frame() {
        assert_eq!(
            &to_frame(br#" {"model":"m"}"#)[..],
            br#"{"type":"response.create","model":"m"}"#
        );
        assert_eq!(&to_frame(b"{ }")[..], br#"{"type":"response.create" }"#);
        assert_eq!(&to_frame(b"[1]")[..], b"[1]");
    }
}
