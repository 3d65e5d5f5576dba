//! The HTTP front door: `POST /v1/responses` (and its aliases) on the same listener as the
//! WebSocket upgrade, with the same client keys. `"stream": true` answers `text/event-stream`
//! with one `event:`/`data:` record per upstream event; otherwise the final response object comes
//! back as JSON, its status taken from the terminal event. Requests run through the same turn
//! driver as WebSocket turns, so they use the upstream WebSocket pool by default.

use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Utf8Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use http::{HeaderName, HeaderValue};

use crate::net::buf_pool::{PooledBuf, MAX_KEPT_LEN};
use crate::net::read_buf::ReadBuf;
use crate::net::ClientStream;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::http1::{BodyDecoder, Http1Error};
use crate::protocol::{ClientFrame, ClientFrameError};
use crate::usage::RequestType;

use super::armed_timer::{shard_deadline, ShardDeadline};
use super::auth::{ClientIdentity, KeptKey};
use super::client_deadline::WriteDeadline;
use super::counters::{add, bump};
use super::http_head;
use super::sink::{ClientSink, JsonSink, SseSink, TurnError};
use super::turn::{frame as turn_frame, Driver, TurnEnd};
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

/// What a connection keeps from one `POST` to the next.
#[derive(Default)]
pub struct Kept {
    /// The connection's one timer, built at its first request.
    pub timer: Option<ShardDeadline>,
    /// An SSE answer's batch buffer, made at the first streaming request ([`SseSink::new`]).
    pub batch: Vec<u8>,
    /// The client key the connection's last request was accepted with.
    pub key: KeptKey,
}

/// Serves one `POST` to a Responses path. `buf` holds the bytes read past the request head and
/// keeps whatever follows this request's body; `kept` is what the connection keeps for its next
/// requests.
pub async fn serve(
    shard: &Rc<Shard>,
    stream: &mut ClientStream,
    head: &RequestHead,
    buf: &mut ReadBuf,
    identity: ClientIdentity,
    forward: Vec<(HeaderName, HeaderValue)>,
    kept: &mut Kept,
) -> After {
    let keep_alive = head.keep_alive();
    let limit = shard.config.server.max_message_bytes;
    // The body, the turn and the answer's last write all wait under the connection's one timer
    // (a timer built per wait was a timer-map insert and removal each).
    let timer = kept.timer.get_or_insert_with(shard_deadline);
    timer.set(Instant::now() + BODY_TIMEOUT);
    let body = match timer.within(read_body(stream, buf, head, limit)).await {
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
    add(&shard.counters.bytes_in, body.bytes().len() as u64);
    // The body's UTF-8 is checked here, once: the turn takes the frame built from it as text
    // and never checks it again.
    let body = match body.checked() {
        Ok(body) => body,
        Err(body) => return refuse(shard, stream, &not_utf8(body.bytes()), keep_alive).await,
    };
    // Parsed once, as the frame the turn runs, and the turn takes this parse. A frame that does
    // not parse is answered in the client's terms, from its body as sent (the frame's positions,
    // line, column and excerpt, are not what the client wrote); a body made into its frame by a
    // copy (not an object, or an empty one) is parsed as sent first, as the turn never sees it.
    let in_place = body.frame_in_place();
    let copied_streaming = if in_place {
        None
    } else {
        match ClientFrame::parse_text(body.text()) {
            Ok(parsed) => Some(parsed.stream == Some(true)),
            Err(e) => return refuse(shard, stream, &body_error(&e), keep_alive).await,
        }
    };
    let frame = body.into_frame(in_place);
    let parsed = turn_frame::check(&frame).ok();
    let streaming = match (&parsed, copied_streaming) {
        (_, Some(streaming)) => streaming,
        (Some(parsed), None) => parsed.stream == Some(true),
        // The turn reports what is wrong with the frame when the body as sent is fine.
        (None, None) => match ClientFrame::parse_text(&sent_body(&frame)) {
            Ok(body) => body.stream == Some(true),
            Err(e) => return refuse(shard, stream, &body_error(&e), keep_alive).await,
        },
    };
    let request_type = if streaming {
        RequestType::Stream
    } else {
        RequestType::Sync
    };
    let mut driver = Driver::new(shard.clone(), identity, forward, request_type);
    let received = Instant::now();
    let write_limit = shard.config.server.client_write_timeout;
    let ok = if streaming {
        let sse = SseSink::new(
            stream,
            buf,
            &mut kept.batch,
            &shard.counters,
            keep_alive,
            head.http10,
        );
        let mut sink = WriteDeadline::new(sse, write_limit, &shard.counters);
        let end = run_turn(&mut driver, &mut sink, &frame, parsed, received, timer).await;
        let done = matches!(end, TurnEnd::Done);
        timer.set(Instant::now() + write_limit);
        timer
            .within(sink.into_inner().finish(done))
            .await
            .unwrap_or(false)
    } else {
        let mut sink = JsonSink::new(stream, buf);
        let end = run_turn(&mut driver, &mut sink, &frame, parsed, received, timer).await;
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
        timer.set(Instant::now() + write_limit);
        matches!(end, TurnEnd::Done) && matches!(timer.within(answer).await, Some(Ok(())))
    };
    if ok && keep_alive {
        After::KeepAlive
    } else {
        After::Close
    }
}

/// Answers a request whose body is no request (the connection stays when the client keeps it).
async fn refuse(
    shard: &Shard,
    stream: &mut ClientStream,
    err: &GatewayError,
    keep_alive: bool,
) -> After {
    bump(&shard.counters.client_frame_errors);
    match http_head::write_error(stream, err, &[], keep_alive).await {
        Ok(()) if keep_alive => After::KeepAlive,
        _ => After::Close,
    }
}

/// The turn of a POST: on the front's parse of its frame, or parsing it itself (and telling
/// the client what is wrong with it) where that parse failed.
async fn run_turn<S: ClientSink>(
    driver: &mut Driver,
    sink: &mut S,
    frame: &Utf8Bytes,
    parsed: Option<ClientFrame<'_>>,
    received: Instant,
    timer: &mut ShardDeadline,
) -> TurnEnd {
    match parsed {
        Some(parsed) => {
            driver
                .run_parsed(sink, frame, parsed, received, timer)
                .await
        }
        None => driver.run(sink, frame.clone(), received, timer).await,
    }
}

/// What a body that is not UTF-8 is told, as it always was: what the parser says of it
/// (sonic-rs names the first bad byte's line and column), else the words the turn's own UTF-8
/// check used before the body's reader took that check over.
fn not_utf8(body: &[u8]) -> GatewayError {
    match ClientFrame::parse(body) {
        Err(e) => body_error(&e),
        Ok(_) => GatewayError::new(
            400,
            ErrorType::InvalidRequest,
            "invalid_json",
            "frame is not valid UTF-8",
        ),
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

/// The frame's start, where a body's own `{` was: `{"type":"response.create",`.
const CREATE_OPEN: &str = r#"{"type":"response.create","#;

/// Bytes of room a request body is read behind: [`CREATE_OPEN`] less the body's `{`, which its
/// last byte overwrites. A body that opens an object at its first byte (every client's) then
/// becomes its `response.create` frame where it was read, instead of being copied once more.
const FRAME_ROOM: usize = CREATE_OPEN.len() - 1;

/// A request body as read: [`FRAME_ROOM`] bytes of room, then the body, in a buffer of the
/// shard's pool ([`PooledBuf`]): a POST neither allocates nor zero-fills its body's buffer, and
/// its frame is frozen out of it already shared (the turn's clones of it allocate nothing).
struct Body {
    buf: PooledBuf,
    /// The room and the body's bytes so far: the buffer's bytes past it are an earlier user's.
    len: usize,
}

impl Body {
    /// An empty body with room for `hint` body bytes (at most a pooled buffer's worth: a larger
    /// body's buffer grows as its bytes come, see [`Body::read_rest`]).
    fn with_room(hint: usize) -> Body {
        Body {
            buf: PooledBuf::take(FRAME_ROOM + hint.min(MAX_KEPT_LEN)),
            len: FRAME_ROOM,
        }
    }

    /// The body's bytes (without the room).
    fn bytes(&self) -> &[u8] {
        &self.buf[FRAME_ROOM..self.len]
    }

    /// Appends decoded body bytes, growing the buffer when they do not fit.
    fn push(&mut self, part: &[u8]) {
        let end = self.len + part.len();
        self.buf.ensure(end);
        self.buf[self.len..end].copy_from_slice(part);
        self.len = end;
    }

    /// Reads the body's last `left` bytes from `stream` straight into the buffer, asking for no
    /// byte past them (a pipelined next request stays in the socket for the head reader).
    async fn read_rest<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        left: usize,
    ) -> Result<(), BodyError> {
        let end = self.len + left;
        while self.len < end {
            // Grown at most twofold per read: a client that declares a large body and sends
            // little of it commits no more memory than it sent.
            let room = (self.len * 2).max(self.len + BODY_CHUNK);
            let upto = end.min(room.max(self.buf.len()));
            self.buf.ensure(upto);
            match stream.read(&mut self.buf[self.len..upto]).await {
                Ok(0) | Err(_) => return Err(BodyError::Closed),
                Ok(n) => self.len += n,
            }
        }
        Ok(())
    }

    /// The body as text, when it is UTF-8 (checked once, here); else the body back.
    fn checked(self) -> Result<TextBody, Body> {
        if simdutf8::basic::from_utf8(self.bytes()).is_err() {
            return Err(self);
        }
        Ok(TextBody(self))
    }
}

/// A request body known to be UTF-8, behind its [`FRAME_ROOM`] bytes of room.
struct TextBody(Body);

impl TextBody {
    /// The body (without the room).
    fn text(&self) -> &str {
        // SAFETY: `Body::checked` checked these bytes as UTF-8, and nothing writes them since.
        unsafe { std::str::from_utf8_unchecked(self.0.bytes()) }
    }

    /// `true` when the frame can be made in place ([`TextBody::into_frame`]): the body opens a
    /// non-empty object at its first byte.
    fn frame_in_place(&self) -> bool {
        let body = self.text();
        body.starts_with('{') && !body[1..].trim_ascii_start().starts_with('}')
    }

    /// The body as a `response.create` frame: made in place when `in_place` (what
    /// [`TextBody::frame_in_place`] said of this body, asked once per request), else copied by
    /// [`to_frame`].
    fn into_frame(self, in_place: bool) -> Utf8Bytes {
        debug_assert_eq!(in_place, self.frame_in_place());
        if !in_place {
            return to_frame(self.text());
        }
        let Body { mut buf, len } = self.0;
        // The room and the body's `{`, same length: nothing after it moves.
        buf[..=FRAME_ROOM].copy_from_slice(CREATE_OPEN.as_bytes());
        // SAFETY: ASCII in front of the body's bytes after its `{`, which were checked as
        // UTF-8 (`Body::checked`): the frame is UTF-8.
        unsafe { Utf8Bytes::from_bytes_unchecked(buf.freeze(len)) }
    }
}

/// The body as the client sent it, back from the frame [`TextBody::into_frame`] made of it in
/// place (its `{` is the frame's `type` field's comma): for an error in the client's terms.
fn sent_body(frame: &str) -> String {
    let mut body = String::with_capacity(frame.len() - FRAME_ROOM);
    body.push('{');
    body.push_str(&frame[CREATE_OPEN.len()..]);
    body
}

/// The POST body as a `response.create` frame (the body with a leading `type`): text built from
/// text, so it needs no second UTF-8 check.
fn to_frame(body: &str) -> Utf8Bytes {
    let trimmed = body.trim_ascii_start();
    let Some(rest) = trimmed.strip_prefix('{') else {
        // Not an object: passed on as-is so the driver answers 400.
        return Utf8Bytes::from(body);
    };
    let mut out = String::with_capacity(CREATE_OPEN.len() + rest.len());
    out.push_str(CREATE_OPEN);
    if rest.trim_ascii_start().starts_with('}') {
        // An empty object: `type` is its only field.
        out.pop();
    }
    out.push_str(rest);
    Utf8Bytes::from(out)
}

/// Reads a request body framed as the head says (`Content-Length` or chunked), up to `limit`
/// bytes, behind [`FRAME_ROOM`] bytes of room. A `Content-Length` body's bytes past those read
/// with the head go from the socket straight into the body's buffer.
async fn read_body<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut ReadBuf,
    head: &RequestHead,
    limit: usize,
) -> Result<Body, BodyError> {
    let mut decoder = BodyDecoder::with_limit(head.body, limit as u64)?;
    let hint = decoder.declared_len().map_or(0, |n| n as usize);
    let mut body = Body::with_room(hint);
    if decoder.is_done() {
        return Ok(body);
    }
    // An HTTP/1.0 client does not know 100 (RFC 9110 §10.1.1): it sends its body anyway.
    if !head.http10 && head.header_has_token("expect", "100-continue") {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| BodyError::Closed)?;
    }
    loop {
        let used = decoder.decode(buf.data(), |part| body.push(part))?;
        buf.consume(used);
        if decoder.is_done() {
            return Ok(body);
        }
        if let Some(left) = decoder.declared_len() {
            body.read_rest(stream, left as usize).await?;
            return Ok(body);
        }
        match buf.fill_with_room(stream, BODY_CHUNK).await {
            Ok(0) | Err(_) => return Err(BodyError::Closed),
            Ok(_) => {}
        }
    }
}

/// Bytes asked of the socket per read of a request body (a chunked one's: a `Content-Length`
/// body's rest is read straight into its own buffer), into the connection's read buffer (a
/// chunk array would be part of the request's future, built and moved per request).
const BODY_CHUNK: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_not_utf8_is_told_what_the_parser_says_of_it() {
        let err = not_utf8(b"{\"input\":\"caf\xe9\"}");
        assert_eq!((err.status, err.code), (400, "invalid_json"));
        assert!(
            err.message
                .starts_with("request body is not a valid JSON object: Invalid UTF-8"),
            "{}",
            err.message
        );
    }

    /// `bytes` read behind their room, as [`read_body`] gives them.
    fn body_of(bytes: &[u8]) -> Body {
        let mut body = Body::with_room(bytes.len());
        body.push(bytes);
        body
    }

    /// `body` read behind its room, checked as UTF-8.
    fn read(body: &str) -> TextBody {
        match body_of(body.as_bytes()).checked() {
            Ok(text) => text,
            Err(_) => panic!("{body:?} is UTF-8"),
        }
    }

    #[test]
    fn a_frame_made_in_place_gives_back_the_body_the_client_sent() {
        for body in [
            r#"{"model":"m"}"#,
            "{\n \"input\": [1,\n}",
            r#"{"input":"Résumé","#,
        ] {
            let text = read(body);
            assert!(text.frame_in_place(), "{body:?}");
            assert_eq!(sent_body(&text.into_frame(true)), body);
        }
        for body in [" {\"model\":\"m\"}", "{ }", "[1]", ""] {
            assert!(!read(body).frame_in_place(), "{body:?}");
        }
    }

    #[test]
    fn a_body_read_behind_its_room_becomes_the_same_frame_as_a_copy_would() {
        for body in [
            r#"{"model":"m"}"#,
            r#" {"model":"m"}"#,
            "{ }",
            "{}",
            "[1]",
            "",
            r#"{"input":"Résumé"}"#,
            "{\n \"a\":1}",
        ] {
            let text = read(body);
            assert_eq!(text.text(), body);
            let in_place = text.frame_in_place();
            assert_eq!(text.into_frame(in_place), to_frame(body), "{body:?}");
        }
    }

    #[test]
    fn a_body_that_opens_an_object_becomes_its_frame_without_a_copy() {
        let text = read(r#"{"model":"m"}"#);
        let at = text.0.buf.as_ptr();
        let frame = text.into_frame(true);
        assert_eq!(frame, r#"{"type":"response.create","model":"m"}"#);
        assert_eq!(frame.as_str().as_ptr(), at);
    }

    #[test]
    fn a_body_not_utf8_is_refused_by_the_check() {
        assert!(body_of(b"{\"a\":\"\xe9\"}").checked().is_err());
    }

    /// The head of a `POST` with a `content-length` of `len`.
    fn post_head(len: usize) -> RequestHead {
        let raw =
            format!("POST /v1/responses HTTP/1.1\r\nhost: gw\r\ncontent-length: {len}\r\n\r\n");
        match crate::protocol::http1::parse_request(raw.as_bytes()) {
            Ok(Some((head, _))) => head,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_content_length_body_is_read_into_its_buffer_and_no_further() {
        let body = format!(r#"{{"model":"m","input":"{}"}}"#, "x".repeat(40_000));
        let next = "GET /healthz HTTP/1.1\r\n\r\n";
        // The head's read brought the body's first bytes; the rest and a pipelined next
        // request wait in the socket.
        let mut buf = ReadBuf::new(4096);
        let mut first = &body.as_bytes()[..100];
        let filled = futures_lite::future::block_on(buf.fill(&mut first));
        assert_eq!(filled.ok(), Some(100));
        let mut socket =
            futures_lite::io::Cursor::new(format!("{}{next}", &body[100..]).into_bytes());
        let head = post_head(body.len());
        let read = futures_lite::future::block_on(read_body(&mut socket, &mut buf, &head, 1 << 20));
        let Ok(read) = read else {
            panic!("the body is read");
        };
        assert_eq!(read.bytes(), body.as_bytes());
        assert!(buf.data().is_empty());
        // Read straight into the body's buffer: nothing past the body was asked of the socket.
        assert_eq!(socket.position() as usize, body.len() - 100);
    }

    #[test]
    fn a_large_declared_body_grows_its_buffer_as_its_bytes_come() {
        let declared = 8 << 20;
        let mut body = Body::with_room(declared);
        let mut socket = futures_lite::io::Cursor::new(vec![b'x'; 1000]);
        let read = futures_lite::future::block_on(body.read_rest(&mut socket, declared));
        assert!(matches!(read, Err(BodyError::Closed)));
        assert_eq!(body.bytes().len(), 1000);
        assert!(body.buf.len() <= 2 * MAX_KEPT_LEN, "{}", body.buf.len());
    }

    #[test]
    fn body_becomes_a_create_frame() {
        assert_eq!(
            to_frame(r#" {"model":"m"}"#),
            r#"{"type":"response.create","model":"m"}"#
        );
        assert_eq!(to_frame("{ }"), r#"{"type":"response.create" }"#);
        assert_eq!(to_frame("[1]"), "[1]");
        assert_eq!(
            to_frame(r#"{"input":"Résumé"}"#),
            r#"{"type":"response.create","input":"Résumé"}"#
        );
    }
}
