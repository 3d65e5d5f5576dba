//! The client side of a turn: where its events go ([`ClientSink`] and its impls: a client
//! WebSocket [`WsSink`], an SSE response [`SseSink`], a JSON collector [`JsonSink`]) and the error
//! a client is told ([`TurnError`]). The write deadline every turn's sink is wrapped in is its
//! own behaviour, in `client_deadline.rs`.

use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use bytes::Bytes;
use futures_lite::AsyncWriteExt;
use futures_util::{SinkExt, StreamExt};
use sonic_rs::JsonValueTrait;

use crate::net::client_read::{self, Readable};
use crate::net::read_buf::ReadBuf;
use crate::net::ClientStream;
use crate::protocol::lazy::range_of;
use crate::protocol::sse::{record_len, write_event};

use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::json_depth::{check_depth, MAX_JSON_DEPTH};
use crate::protocol::redact::redact_secrets;

use super::client_close::{close_after_error, close_client, CloseReason};
use super::counters::{add, ShardCounters};
use super::http_head;
use super::session::ClientWs;

/// An error as the client receives it: HTTP status, `{"error":…}` body and `error` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnError {
    /// HTTP status.
    pub status: u16,
    /// The JSON body of an HTTP error response.
    pub http_body: String,
    /// The JSON of an `error` event.
    pub event: String,
    /// Stable code, for logs and tests.
    pub code: String,
}

impl From<GatewayError> for TurnError {
    fn from(e: GatewayError) -> Self {
        TurnError {
            status: e.status,
            http_body: e.to_http_body(),
            event: e.to_event(),
            code: e.code.to_string(),
        }
    }
}

impl TurnError {
    /// An error upstream answered with: its `error` object is passed on as it came, less the
    /// account's `secrets` ([`redact_secrets`]). A body that nests too deep to walk safely is
    /// reported as a generic upstream error.
    pub fn from_upstream(status: u16, body: &[u8], secrets: &[&str]) -> Self {
        let body = String::from_utf8_lossy(body);
        let body = redact_secrets(&body, secrets);
        let body = body.as_bytes();
        let inner = check_depth(body, MAX_JSON_DEPTH)
            .ok()
            .and_then(|()| sonic_rs::get_from_slice(body, ["error"]).ok())
            .filter(|v| v.is_object())
            .map(|v| v.as_raw_str().to_string());
        match inner {
            Some(inner) => {
                let code = sonic_rs::get_from_slice(inner.as_bytes(), ["code"])
                    .ok()
                    .and_then(|c| c.as_str().map(str::to_string))
                    .unwrap_or_default();
                TurnError {
                    status,
                    http_body: format!("{{\"error\":{inner}}}"),
                    event: format!("{{\"type\":\"error\",\"status\":{status},\"error\":{inner}}}"),
                    code,
                }
            }
            None => GatewayError::new(
                if status >= 400 { status } else { 502 },
                ErrorType::Server,
                "upstream_error",
                format!("upstream answered HTTP {status}"),
            )
            .into(),
        }
    }
}

/// The client went away.
#[derive(Debug, Clone, Copy)]
pub struct Gone;

/// What a client does while a turn runs.
pub enum ClientSignal {
    /// A frame (WebSocket clients only), its UTF-8 checked by the codec that read it.
    Frame(Utf8Bytes),
    /// The client closed or vanished.
    Gone,
}

/// Where a turn's events go: a client WebSocket, an SSE response or a JSON collector.
#[allow(async_fn_in_trait)]
pub trait ClientSink {
    /// Queues one event for the client (`event_type` is its `type`).
    async fn feed(&mut self, event: Utf8Bytes, event_type: &str) -> Result<(), Gone>;
    /// Writes what was queued.
    async fn flush(&mut self) -> Result<(), Gone>;
    /// `true` when [`ClientSink::flush`] surely has nothing to write (it would answer `Ok` at
    /// once): a wrapper skips its own work around the flush then.
    fn flushed(&self) -> bool {
        false
    }
    /// The client's next frame while a turn runs; never resolves for clients that send none.
    async fn signal(&mut self) -> ClientSignal;
    /// Tells the client its turn failed.
    async fn fail(&mut self, error: &TurnError) -> Result<(), Gone>;
    /// Queues one event given as a view of the upstream reader's buffer (a frame's payload,
    /// already checked as UTF-8). A sink copies only what it keeps; this default keeps it all.
    async fn feed_view(&mut self, event: &str, event_type: &str) -> Result<(), Gone> {
        self.feed(Utf8Bytes::from(event), event_type).await
    }
    /// `false` when upstream events must reach the sink as the WebSocket codec's messages, not
    /// as views of the raw reader's buffer: a sink that keeps a whole event (a JSON answer keeps
    /// the terminal event, megabytes at times) takes the message without a copy, where a view
    /// would be copied while the reader's buffer still holds the same bytes.
    fn takes_views(&self) -> bool {
        true
    }
    /// `true` when the sink takes events as the server frames they came in
    /// ([`ClientSink::write_frames`]): a client WebSocket.
    fn takes_frames(&self) -> bool {
        false
    }
    /// Writes complete server text frames (`payload_bytes` of payload in all) as they are, after
    /// what was fed before. A sink that takes no frames is never given any.
    async fn write_frames(&mut self, frames: &[u8], payload_bytes: u64) -> Result<(), Gone> {
        let _ = (frames, payload_bytes);
        Err(Gone)
    }
}

// The sinks: a client WebSocket, an SSE response, a JSON answer.

/// Events to a client WebSocket: fed as text frames, written in one flush per batch.
pub struct WsSink<'a> {
    client: &'a mut ClientWs,
    counters: &'a ShardCounters,
    unflushed: Unflushed,
}

/// What a [`WsSink`]'s next flush has to push out. A flush through tungstenite costs its waker
/// bookkeeping even with nothing queued (~190 instructions), and a turn whose events all go as
/// frames ([`ClientSink::write_frames`]) flushed it twice with nothing in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unflushed {
    /// tungstenite may hold bytes: events fed through it, a pong or close reply it queued while
    /// reading, or anything from before this sink (the state it starts in).
    Codec,
    /// Only frames written straight to a TLS stream since the last flush: it may hold them,
    /// tungstenite holds nothing. (A plain TCP stream holds nothing: its flush does nothing.)
    Stream,
    /// Everything was flushed.
    Nothing,
}

impl<'a> WsSink<'a> {
    /// A sink writing to `client`, counting bytes out in `counters`.
    pub fn new(client: &'a mut ClientWs, counters: &'a ShardCounters) -> Self {
        WsSink {
            client,
            counters,
            unflushed: Unflushed::Codec,
        }
    }

    /// Flushes what [`Unflushed`] says may be held: through tungstenite (which flushes the
    /// stream too), the stream alone, or nothing.
    async fn flush_held(&mut self) -> Result<(), Gone> {
        match self.unflushed {
            Unflushed::Codec => self.client.flush().await.map_err(|_| Gone)?,
            Unflushed::Stream => self.client.get_mut().flush().await.map_err(|_| Gone)?,
            Unflushed::Nothing => {}
        }
        self.unflushed = Unflushed::Nothing;
        Ok(())
    }
}

impl ClientSink for WsSink<'_> {
    async fn feed(&mut self, event: Utf8Bytes, _event_type: &str) -> Result<(), Gone> {
        add(&self.counters.bytes_out, event.len() as u64);
        self.unflushed = Unflushed::Codec;
        self.client
            .feed(Message::Text(event))
            .await
            .map_err(|_| Gone)
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        self.flush_held().await
    }

    fn flushed(&self) -> bool {
        self.unflushed == Unflushed::Nothing
    }

    async fn signal(&mut self) -> ClientSignal {
        loop {
            // tungstenite reads only once the client sent something: each of its polls
            // zero-fills its read chunk, and the relay polls here once per upstream event.
            if client_read::readable(self.client.get_mut()).await == Readable::Gone {
                return ClientSignal::Gone;
            }
            // A read may queue a pong or a close reply.
            self.unflushed = Unflushed::Codec;
            let reason = match self.client.next().await {
                Some(Ok(Message::Text(t))) => return ClientSignal::Frame(t),
                Some(Ok(Message::Ping(_))) => {
                    // tungstenite queued the pong and sent it with its next read; the next
                    // read waits for bytes first, so the pong goes now if it can (else with
                    // the next event).
                    let _ = futures_lite::future::poll_once(self.client.flush()).await;
                    continue;
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                None => return ClientSignal::Gone,
                Some(Ok(Message::Binary(_))) => CloseReason::Unsupported,
                Some(Ok(Message::Close(_))) => CloseReason::Echo,
                Some(Err(e)) => {
                    close_after_error(self.client, self.counters, &e).await;
                    return ClientSignal::Gone;
                }
            };
            close_client(self.client, self.counters, reason).await;
            return ClientSignal::Gone;
        }
    }

    async fn fail(&mut self, error: &TurnError) -> Result<(), Gone> {
        self.unflushed = Unflushed::Codec;
        self.client
            .send(Message::text(error.event.clone()))
            .await
            .map_err(|_| Gone)
    }

    fn takes_frames(&self) -> bool {
        true
    }

    async fn write_frames(&mut self, frames: &[u8], payload_bytes: u64) -> Result<(), Gone> {
        add(&self.counters.bytes_out, payload_bytes);
        // What tungstenite queued (events fed through it, a pong) goes out first; the frames
        // then go under it, straight to the socket (server frames are unmasked on both hops).
        if self.unflushed == Unflushed::Codec {
            self.flush_held().await?;
        }
        if self.client.get_ref().get_ref().inner().is_tls() {
            self.unflushed = Unflushed::Stream;
        }
        self.client
            .get_mut()
            .write_all(frames)
            .await
            .map_err(|_| Gone)
    }
}

/// Most bytes of a pipelined next request kept while a response is in flight.
const MAX_PIPELINED: usize = 64 * 1024;

/// Watches an HTTP client while its request runs: end of stream (or a socket error) means it
/// left, so the turn stops at once. Bytes of a pipelined next request are read into `inbuf`,
/// the connection's read buffer, straight: the relay builds this watch anew for every batch of
/// events, and a chunk array in it was zero-filled and moved with it each time.
async fn watch_client(stream: &mut ClientStream, inbuf: &mut ReadBuf) -> ClientSignal {
    while inbuf.data().len() < MAX_PIPELINED {
        match inbuf.fill(stream).await {
            Ok(0) | Err(_) => return ClientSignal::Gone,
            Ok(_) => {}
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
pub struct SseSink<'a> {
    stream: &'a mut ClientStream,
    inbuf: &'a mut ReadBuf,
    counters: &'a ShardCounters,
    /// [`CHUNK_ROOM`] bytes of room, then the SSE records not yet written: the connection's
    /// batch buffer, kept from one streaming request to the next.
    pending: &'a mut Vec<u8>,
    started: bool,
    answered: bool,
    keep_alive: bool,
    /// An HTTP/1.0 client: the body is delimited by the connection's close.
    close_delimited: bool,
}

/// Room kept in front of the pending records for the response head and the chunk header.
const CHUNK_ROOM: usize = 192;
/// Record bytes a response's pending batch has room for from the start: a turn's batches (a
/// few deltas, a `response.completed` of a few KiB) then fit without the buffer growing, and
/// copying itself, several times per request as it did from a bare [`CHUNK_ROOM`].
const BATCH_ROOM: usize = 16 * 1024;
/// Pending SSE bytes past which a batch is written before its last event.
const SSE_FLUSH_AT: usize = 64 * 1024;

/// Longest chunk size line: a `usize` in hex and CRLF.
const SIZE_LINE: usize = 2 * std::mem::size_of::<usize>() + 2;

/// `n` in lower-case hex, without leading zeros, and CRLF: a chunk's size line (RFC 9112
/// §7.1), written into `out` (`format!` took the formatting machinery per flush).
fn size_line(n: usize, out: &mut [u8; SIZE_LINE]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = ((usize::BITS - n.leading_zeros()) as usize)
        .div_ceil(4)
        .max(1);
    for (i, digit) in out[..digits].iter_mut().rev().enumerate() {
        *digit = HEX[(n >> (4 * i)) & 0xf];
    }
    out[digits..digits + 2].copy_from_slice(b"\r\n");
    &out[..digits + 2]
}

/// Makes a connection's batch buffer ready for a request: made at its first, then kept, less
/// what a request that ended early left in it (a buffer a huge event grew is made anew).
fn ready_batch(batch: &mut Vec<u8>) {
    if batch.capacity() == 0 {
        *batch = batch_buffer();
    } else {
        empty_batch(batch);
    }
}

/// Empties a batch buffer (its room stays), or makes it anew when a huge event grew it: a
/// stream, or the connection, does not keep that size.
fn empty_batch(batch: &mut Vec<u8>) {
    if batch.capacity() > 4 * SSE_FLUSH_AT {
        *batch = batch_buffer();
    } else {
        batch.resize(CHUNK_ROOM, 0);
    }
}

/// An empty pending batch: [`CHUNK_ROOM`] bytes of room, then [`BATCH_ROOM`] for records.
fn batch_buffer() -> Vec<u8> {
    let mut pending = Vec::with_capacity(CHUNK_ROOM + BATCH_ROOM);
    pending.resize(CHUNK_ROOM, 0);
    pending
}

impl SseSink<'_> {
    /// A sink answering on `stream` (`inbuf` keeps a pipelined next request's bytes), its
    /// records batched in `batch`: the connection's, empty until its first streaming request
    /// (made then) and kept for the next, instead of a 16 KiB buffer allocated per request.
    pub fn new<'a>(
        stream: &'a mut ClientStream,
        inbuf: &'a mut ReadBuf,
        batch: &'a mut Vec<u8>,
        counters: &'a ShardCounters,
        keep_alive: bool,
        close_delimited: bool,
    ) -> SseSink<'a> {
        ready_batch(batch);
        SseSink {
            stream,
            inbuf,
            counters,
            pending: batch,
            started: false,
            answered: false,
            keep_alive,
            close_delimited,
        }
    }

    /// Writes the pending records as one chunk (after the response head, the first time).
    async fn write_pending(&mut self) -> Result<(), Gone> {
        let Some(start) = self.frame_pending() else {
            return Ok(());
        };
        let written = self.stream.write_all(&self.pending[start..]).await;
        empty_batch(self.pending);
        written.map_err(|_| Gone)?;
        self.stream.flush().await.map_err(|_| Gone)
    }

    /// Puts the response head (the first time) and the chunk's size line in the room in front
    /// of the pending records and the chunk's CRLF after them; where the bytes to write start,
    /// `None` when no record is pending. Not part of [`SseSink::write_pending`]'s future: the
    /// room's bytes are built on the stack, and every event's future (moved several times per
    /// event on its way through the write deadline) would carry them.
    fn frame_pending(&mut self) -> Option<usize> {
        let records = self.pending.len() - CHUNK_ROOM;
        if records == 0 {
            return None;
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
            put(size_line(records, &mut [0; SIZE_LINE]));
        }
        let start = CHUNK_ROOM - at;
        self.pending[start..CHUNK_ROOM].copy_from_slice(&front[..at]);
        if !self.close_delimited {
            self.pending.extend_from_slice(b"\r\n");
        }
        add(&self.counters.bytes_out, records as u64);
        Some(start)
    }

    /// Ends the response of a request that is over (`done`, not preempted or left);
    /// `true` when the connection may carry another request.
    pub async fn finish(mut self, done: bool) -> bool {
        if !done {
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
        self.feed_view(event.as_str(), event_type).await
    }

    /// The record is written straight from the view into the pending batch: the one copy an
    /// SSE event needs.
    async fn feed_view(&mut self, event: &str, event_type: &str) -> Result<(), Gone> {
        // Room for the record and the chunk's closing CRLF up front: a large event then takes
        // a buffer of its size, not one doubled when the CRLF does not fit.
        self.pending
            .reserve(record_len(event_type, event.as_bytes()) + 2);
        write_event(self.pending, event_type, event.as_bytes());
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
            write_event(self.pending, "error", error.event.as_bytes());
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
pub struct JsonSink<'a> {
    /// The client's connection, where the answer goes once the turn is over.
    pub stream: &'a mut ClientStream,
    inbuf: &'a mut ReadBuf,
    /// The answer's status and body; a response object stays in the event it came in.
    pub result: Option<(u16, Utf8Bytes)>,
}

impl<'a> JsonSink<'a> {
    /// A collector for a request on `stream` (`inbuf` keeps a pipelined next request's bytes).
    pub fn new(stream: &'a mut ClientStream, inbuf: &'a mut ReadBuf) -> Self {
        JsonSink {
            stream,
            inbuf,
            result: None,
        }
    }
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

    /// The answer is the terminal event's own buffer: read through the codec.
    fn takes_views(&self) -> bool {
        false
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

    /// A server text frame as it goes on the wire (unmasked, payload under 126 bytes).
    fn server_frame(text: &str) -> Vec<u8> {
        let mut frame = vec![0x81, u8::try_from(text.len()).expect("a short payload")];
        frame.extend_from_slice(text.as_bytes());
        frame
    }

    /// Over a real socket: a WebSocket sink flushes through tungstenite only while tungstenite
    /// may hold bytes (from before the sink, or fed), so what was fed still goes out before
    /// the frames written under it, and a flush after frames alone (plain TCP) has nothing to
    /// do. The client reads every message in the order the sink took them.
    #[test]
    fn a_ws_sink_flushes_tungstenite_only_when_it_may_hold_bytes_and_keeps_the_order() {
        use async_tungstenite::tungstenite::protocol::Role;
        use async_tungstenite::WebSocketStream;

        use crate::net::frame_edge::FrameEdge;
        use crate::net::PrefixedStream;
        use crate::runtime::{spawn_executor, BoundListener};

        let listener =
            BoundListener::bind("127.0.0.1:0".parse().expect("an address")).expect("a listener");
        let addr = listener.local_addr().expect("its address");
        let peer = std::thread::spawn(move || {
            let s = std::net::TcpStream::connect(addr).expect("connect");
            let mut ws =
                async_tungstenite::tungstenite::WebSocket::from_raw_socket(s, Role::Client, None);
            (0..5)
                .map(|_| ws.read().expect("a message").into_text().expect("text"))
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
        });
        let states = spawn_executor("ws-sink-test", None, move || async move {
            let listener = crate::runtime::adopt_listener(listener);
            let s = crate::runtime::accept(&listener).await.expect("accept");
            let stream = FrameEdge::new(PrefixedStream::new(Vec::new(), ClientStream::Plain(s)));
            let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
            let counters = ShardCounters::default();
            let mut sink = WsSink::new(&mut ws, &counters);
            let mut states = vec![sink.flushed()];
            sink.feed("a".into(), "t").await.expect("fed");
            states.push(sink.flushed());
            let b = server_frame("b");
            sink.write_frames(&b, 1).await.expect("written");
            states.push(sink.flushed());
            sink.flush().await.expect("flushed");
            states.push(sink.flushed());
            let c = server_frame("c");
            sink.write_frames(&c, 1).await.expect("written");
            sink.feed_view("d", "t").await.expect("fed");
            states.push(sink.flushed());
            let e = server_frame("e");
            sink.write_frames(&e, 1).await.expect("written");
            sink.flush().await.expect("flushed");
            states.push(sink.flushed());
            states
        })
        .expect("executor starts")
        .join()
        .expect("executor runs");
        assert_eq!(states, [false, false, true, true, false, true]);
        assert_eq!(
            peer.join().expect("the peer ran"),
            ["a", "b", "c", "d", "e"]
        );
    }

    #[test]
    fn a_connections_batch_buffer_is_made_once_and_kept_for_its_next_requests() {
        let mut batch = Vec::new();
        ready_batch(&mut batch);
        assert_eq!(
            (batch.len(), batch.capacity()),
            (CHUNK_ROOM, CHUNK_ROOM + BATCH_ROOM)
        );
        let at = batch.as_ptr();
        // A request that stopped with records pending.
        write_event(&mut batch, "response.created", b"{}");
        ready_batch(&mut batch);
        assert_eq!((batch.len(), batch.as_ptr()), (CHUNK_ROOM, at));
        // A huge event grew it: not kept.
        batch.reserve(8 * SSE_FLUSH_AT);
        ready_batch(&mut batch);
        assert_eq!(batch.capacity(), CHUNK_ROOM + BATCH_ROOM);
    }

    #[test]
    fn a_size_line_is_the_length_in_hex_and_crlf() {
        let mut sizes: Vec<usize> = (0..=4096).collect();
        for shift in 0..usize::BITS {
            let p = 1usize << shift;
            sizes.extend([p - 1, p, p + 1, p.wrapping_mul(15), !0 >> shift]);
        }
        sizes.push(usize::MAX);
        for n in sizes {
            let mut out = [0xAA; SIZE_LINE];
            assert_eq!(
                size_line(n, &mut out),
                format!("{n:x}\r\n").as_bytes(),
                "{n}"
            );
        }
    }

    #[test]
    fn upstream_error_bodies_pass_through() {
        let e = TurnError::from_upstream(
            429,
            br#"{"error":{"type":"rate_limit_error","code":"rate_limit_exceeded","message":"slow"}}"#,
            &[],
        );
        assert_eq!(e.status, 429);
        assert_eq!(e.code, "rate_limit_exceeded");
        assert!(e
            .event
            .starts_with(r#"{"type":"error","status":429,"error":{"type""#));
        let e = TurnError::from_upstream(502, b"<html>", &[]);
        assert_eq!(e.code, "upstream_error");
    }
}
