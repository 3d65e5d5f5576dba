//! Reading one HTTP/1.1 request head off a client socket under a size and time limit (parsed by
//! [`crate::protocol::http1::parse_request`], which refuses every ambiguous framing), and
//! writing small HTTP responses.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::net::read_buf::ReadBuf;
use crate::net::ClientStream;
use crate::protocol::error_body::GatewayError;
use crate::protocol::http1::{self, parse_request_into, Refusal, RequestHead, MAX_HEAD_BYTES};
use crate::runtime;

use super::armed_timer::ShardDeadline;
use super::counters::ShardCounters;

/// Longest a refused connection is drained after its answer.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes drained from a refused connection.
const LINGER_BYTES: usize = 256 * 1024;
/// Bytes read per `read` call while a head is incomplete (and a client connection's read
/// buffer's size, [`conn_buf`]).
const READ_CHUNK: usize = 4096;

/// A client connection's read buffer: its request heads, the bodies' first bytes and a
/// pipelined next request's are read into it, zero-filled once, not per read.
pub fn conn_buf() -> ReadBuf {
    ReadBuf::new(READ_CHUNK)
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The peer closed before sending a full head (or sent nothing: a normal keep-alive end).
    #[error("connection closed before a full request head")]
    Closed,
    /// The head is refused: not valid HTTP/1.x, over a limit, or framed ambiguously.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The head did not arrive in time.
    #[error("timed out reading the request head")]
    Timeout,
    /// A socket error.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Counts a refused request (`http_refused{reason}`) and logs it (rate-limited: a hostile client
/// can send thousands a second). Only the reason and the peer address are logged.
pub fn note_refusal(counters: &ShardCounters, reason: &'static str, peer: Option<SocketAddr>) {
    counters.bump_labeled("http_refused", reason);
    crate::warn_limited!(reason, peer = ?peer, "refused an HTTP request and closed its connection");
}

/// Reads one request head into `head` (its buffers reused: see [`http1::parse_request_into`]).
/// `buf` carries bytes already read (pipelining, keep-alive); on success it holds whatever
/// followed the head.
pub async fn read_head(
    stream: &mut ClientStream,
    buf: &mut ReadBuf,
    deadline: Duration,
    head: &mut RequestHead,
) -> Result<(), HeadError> {
    runtime::timeout(deadline, read_head_inner(stream, buf, head))
        .await
        .unwrap_or(Err(HeadError::Timeout))
}

/// As [`read_head`], under the connection's one timer: a kept-alive connection's next head
/// waits on the timer its `POST` turns use (a timer per head was an allocation per request).
pub async fn read_head_under(
    stream: &mut ClientStream,
    buf: &mut ReadBuf,
    timer: &mut ShardDeadline,
    deadline: Duration,
    head: &mut RequestHead,
) -> Result<(), HeadError> {
    timer.set(Instant::now() + deadline);
    timer
        .within(read_head_inner(stream, buf, head))
        .await
        .unwrap_or(Err(HeadError::Timeout))
}

async fn read_head_inner(
    stream: &mut ClientStream,
    buf: &mut ReadBuf,
    head: &mut RequestHead,
) -> Result<(), HeadError> {
    loop {
        if !buf.data().is_empty() {
            if let Some(used) = parse_request_into(buf.data(), head)? {
                buf.consume(used);
                return Ok(());
            }
        }
        if buf.data().len() >= MAX_HEAD_BYTES {
            return Err(Refusal::HeadTooLarge.into());
        }
        // Read straight into `buf`: a chunk array here would sit in the connection task's
        // future (and so in every session's) for the connection's whole life.
        if buf.fill(stream).await? == 0 {
            return Err(HeadError::Closed);
        }
    }
}

/// Writes a complete JSON response.
pub async fn write_json(
    stream: &mut ClientStream,
    status: u16,
    body: &str,
    extra_headers: &[(&str, &str)],
    keep_alive: bool,
) -> std::io::Result<()> {
    // Sized for the head and an inline body: the answer is built in one allocation.
    let extra: usize = extra_headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum();
    let inline = if body.len() <= INLINE_BODY {
        body.len()
    } else {
        0
    };
    let mut out = String::with_capacity(JSON_HEAD_ROOM + extra + inline);
    // Writing into a `String` cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: {}\r\n",
        http1::reason(status),
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

/// Bytes a JSON answer's head takes at most without extra headers: status line (the longest
/// reason phrase is 31 bytes), content type, a 20-digit length and `connection: keep-alive`,
/// and the blank line.
const JSON_HEAD_ROOM: usize = 160;

/// Ends a connection after an error answer: half-closes it, then reads and discards what the
/// client still sends (bounded in time and bytes). Closing with unread bytes would reset the
/// connection, and a reset can destroy the answer before the client reads it.
pub async fn linger_close(stream: &mut ClientStream) {
    if stream.shutdown_write().await.is_err() {
        return;
    }
    // On the heap: this path is rare, and an array would size every connection task's future.
    let mut chunk = vec![0u8; READ_CHUNK];
    let drain = async {
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = runtime::timeout(LINGER, drain).await;
}

/// Writes a gateway error as an OpenAI-style JSON response.
pub async fn write_error(
    stream: &mut ClientStream,
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
