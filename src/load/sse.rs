//! The HTTP SSE transport: one `POST /v1/responses` (`"stream": true`) per turn on a keep-alive
//! connection, its `text/event-stream` body read with the gateway's own [`SseParser`].
//!
//! A request is written by [`Transport::send`]; the response head is read by the first
//! [`Transport::recv`] after it, so TTFT covers the whole request as it does over WebSocket. The
//! rest of a body not read by the session (bytes after the terminal event) is drained before the
//! next request; a connection the server marked `close` is reopened for it.

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::AsyncWriteExt;

use crate::net::read_buf::ReadBuf;
use crate::protocol::sse::SseParser;
use crate::runtime::{self, TcpStream};

use super::config::LoadConfig;
use super::transport::{Transport, TransportError};
use crate::protocol::http1::{self, BodyDecoder, Http1Error};

/// Largest event accepted from the server.
const MAX_EVENT_BYTES: usize = 64 << 20;
/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 << 10;

/// Where the connection is in its current exchange.
enum Phase {
    /// No request outstanding.
    Idle,
    /// A request was written; its response head is next.
    AwaitingHead,
    /// Reading the body of a 200 response.
    Body(BodyDecoder),
}

/// A client connection for `POST /v1/responses` with SSE.
pub struct SseTransport {
    addr: SocketAddr,
    connect_timeout: Duration,
    /// The request head up to (not including) `Content-Length`.
    head_prefix: String,
    stream: Option<TcpStream>,
    read: ReadBuf,
    phase: Phase,
    /// The server said it closes the connection after the current response.
    closing: bool,
    parser: SseParser,
}

fn io_error(e: std::io::Error) -> TransportError {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::UnexpectedEof => TransportError::Closed(1006),
        _ => TransportError::Io(e.to_string()),
    }
}

fn http_error(e: Http1Error) -> TransportError {
    TransportError::Io(e.to_string())
}

async fn dial(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, TransportError> {
    runtime::connect(addr, timeout)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => TransportError::ConnectTimeout,
            _ => TransportError::Connect(e),
        })
}

impl SseTransport {
    /// The next complete event's data, if the parser has one.
    fn next_parsed(&mut self) -> Result<Option<String>, TransportError> {
        let Some(event) = self
            .parser
            .next_event()
            .map_err(|e| TransportError::Io(e.to_string()))?
        else {
            return Ok(None);
        };
        String::from_utf8(Vec::from(event.data))
            .map(Some)
            .map_err(|_| TransportError::Io("event is not UTF-8".to_string()))
    }

    /// Forgets the connection (the next request opens a new one).
    fn drop_connection(&mut self) {
        self.stream = None;
        self.read = ReadBuf::new(READ_CHUNK);
        self.phase = Phase::Idle;
        self.closing = false;
        self.parser = SseParser::new(MAX_EVENT_BYTES);
    }

    /// Decodes buffered body bytes into the parser; `Ok(true)` when the body is complete.
    fn decode_buffered(&mut self) -> Result<bool, TransportError> {
        let Phase::Body(decoder) = &mut self.phase else {
            return Ok(true);
        };
        let parser = &mut self.parser;
        let used = decoder
            .decode(self.read.data(), |b| parser.feed(b))
            .map_err(http_error)?;
        self.read.consume(used);
        Ok(decoder.is_done())
    }

    /// Reads the rest of the current response body and throws it away.
    async fn drain(&mut self) -> Result<(), TransportError> {
        loop {
            if self.decode_buffered()? {
                break;
            }
            let Some(stream) = self.stream.as_mut() else {
                break;
            };
            if self.read.fill(stream).await.map_err(io_error)? == 0 {
                self.drop_connection();
                return Ok(());
            }
        }
        self.phase = Phase::Idle;
        if self.parser.buffered() > 0 {
            self.parser = SseParser::new(MAX_EVENT_BYTES);
        }
        if self.closing {
            self.drop_connection();
        }
        Ok(())
    }

    /// Reads the response head; a non-200 answer is an error (the connection is dropped).
    async fn read_head(&mut self) -> Result<(), TransportError> {
        loop {
            if let Some((head, used)) = http1::parse_head(self.read.data()).map_err(http_error)? {
                self.read.consume(used);
                if head.status == 100 {
                    continue;
                }
                if head.status != 200 {
                    self.drop_connection();
                    return Err(TransportError::Status(head.status));
                }
                self.closing = head.close;
                self.phase = Phase::Body(BodyDecoder::new(head.framing));
                return Ok(());
            }
            if self.read.data().len() > MAX_HEAD_BYTES {
                return Err(http_error(Http1Error::Head("too large".to_string())));
            }
            let read = &mut self.read;
            let stream = self.stream.as_mut().ok_or(TransportError::Closed(1006))?;
            if read.fill(stream).await.map_err(io_error)? == 0 {
                self.drop_connection();
                return Err(TransportError::Closed(1006));
            }
        }
    }
}

impl Transport for SseTransport {
    async fn open(config: &LoadConfig) -> Result<Self, TransportError> {
        let target = &config.target;
        let stream = dial(target.addr, config.connect_timeout).await?;
        let head_prefix = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n",
            target.path, target.authority, config.key
        );
        Ok(SseTransport {
            addr: target.addr,
            connect_timeout: config.connect_timeout,
            head_prefix,
            stream: Some(stream),
            read: ReadBuf::new(READ_CHUNK),
            phase: Phase::Idle,
            closing: false,
            parser: SseParser::new(MAX_EVENT_BYTES),
        })
    }

    async fn send(&mut self, frame: String) -> Result<(), TransportError> {
        // The previous exchange may not have been read to its end: finish it first.
        if matches!(self.phase, Phase::AwaitingHead) {
            self.read_head().await?;
        }
        if matches!(self.phase, Phase::Body(_)) {
            self.drain().await?;
        }
        if self.stream.is_none() {
            self.stream = Some(dial(self.addr, self.connect_timeout).await?);
        }
        let mut request = Vec::with_capacity(self.head_prefix.len() + 32 + frame.len());
        request.extend_from_slice(self.head_prefix.as_bytes());
        request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", frame.len()).as_bytes());
        request.extend_from_slice(frame.as_bytes());
        let stream = self.stream.as_mut().ok_or(TransportError::Closed(1006))?;
        stream.write_all(&request).await.map_err(io_error)?;
        stream.flush().await.map_err(io_error)?;
        self.phase = Phase::AwaitingHead;
        Ok(())
    }

    async fn recv(&mut self) -> Result<String, TransportError> {
        if matches!(self.phase, Phase::AwaitingHead) {
            self.read_head().await?;
        }
        loop {
            if let Some(event) = self.next_parsed()? {
                return Ok(event);
            }
            let buffered = self.read.data().len();
            if self.decode_buffered()? {
                if let Some(event) = self.next_parsed()? {
                    return Ok(event);
                }
                self.phase = Phase::Idle;
                if self.parser.buffered() > 0 {
                    self.parser = SseParser::new(MAX_EVENT_BYTES);
                }
                if self.closing {
                    self.drop_connection();
                }
                return Err(TransportError::StreamEnded);
            }
            if self.read.data().len() < buffered {
                continue;
            }
            let read = &mut self.read;
            let stream = self.stream.as_mut().ok_or(TransportError::Closed(1006))?;
            if read.fill(stream).await.map_err(io_error)? == 0 {
                let complete = match &mut self.phase {
                    Phase::Body(d) => d.end_of_stream(),
                    _ => false,
                };
                if !complete {
                    self.drop_connection();
                    return Err(TransportError::Closed(1006));
                }
                self.closing = true;
            }
        }
    }
}
