//! Upstream events read as raw frames, for a relay that writes them to a client WebSocket as the
//! bytes they came in, or hands their payload to an SSE answer as a view of its buffer.
//!
//! Server frames are unmasked on both hops, so a complete text frame (FIN, no RSV bits, within
//! the size limit, valid UTF-8) is already the exact bytes the client must receive. The reader
//! takes such frames out of one buffer, reused for the whole attempt, and hands out their
//! position in it: nothing is copied or allocated per event. The buffer comes from the shard's
//! pool ([`PooledBuf`]) and goes back to it when the attempt ends, so an attempt does not
//! allocate and zero-fill a fresh one either. Anything else (a fragment, a control
//! frame, a close, an oversize or invalid frame, a read error) goes to tungstenite: the bytes not
//! consumed are put back in front of the stream ([`FrameEdge::unread`]) and the codec reads them
//! as it always did, so that path behaves exactly as before. When the reader is dropped, what it
//! read but did not consume goes back the same way: every byte read is accounted for (a
//! connection that rests or is closed afterwards sees the stream as tungstenite left it).
//!
//! [`FrameEdge::unread`]: crate::net::FrameEdge::unread

use std::ops::Range;

use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures_util::{SinkExt, StreamExt};

use crate::net::buf_pool::PooledBuf;
use crate::net::ws_frame::{cut, masked_text, Cut, FrameHeader};
use crate::net::{FrameEdge, UpstreamStream};

use super::upstream::UpstreamWs;

/// Bytes asked of the stream per read at least (as tungstenite's upstream read chunk).
const READ_CHUNK: usize = 16 * 1024;

/// A complete text frame in the reader's buffer whose payload is valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    at: usize,
    payload_at: usize,
    end: usize,
}

impl Frame {
    /// Where the whole frame (header and payload) sits in the reader's buffer.
    pub fn range(&self) -> Range<usize> {
        self.at..self.end
    }

    /// Payload bytes.
    pub fn payload_len(&self) -> usize {
        self.end - self.payload_at
    }
}

/// What the next read gave.
pub enum Read {
    /// A frame to forward as it came (its payload checked).
    Frame(Frame),
    /// What tungstenite read, for everything else.
    Message(Option<Result<Message, WsError>>),
}

/// What the buffer holds at its start.
enum Head {
    /// A frame to forward, consumed.
    Frame(Frame),
    /// Not enough bytes yet: at least this many from `start`.
    Need(usize),
    /// A frame for the codec.
    Codec,
}

/// An upstream WebSocket read frame by frame for the turn being relayed (over an upstream
/// connection's stream; generic for tests and benches over streams in memory).
pub struct CutThrough<'a, S: AsyncRead + AsyncWrite + Unpin = UpstreamStream> {
    ws: &'a mut WebSocketStream<FrameEdge<S>>,
    /// Bytes past `end` are what an earlier user of the pooled buffer left: never read.
    buf: PooledBuf,
    /// Bytes of `buf` not consumed yet: `start..end`.
    start: usize,
    end: usize,
    /// Largest payload forwarded as it came; larger frames go to the codec, which enforces the
    /// limit (and closes with 1009).
    max_payload: u64,
    /// Frames are read raw at all; else every read is tungstenite's.
    raw: bool,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> CutThrough<'a, S> {
    /// A reader over `ws`, reading frames raw only when `raw` (else every read is
    /// tungstenite's). The buffer is taken from the pool at the first raw read.
    pub fn new(ws: &'a mut WebSocketStream<FrameEdge<S>>, raw: bool) -> Self {
        let config = ws.get_config();
        let limit = config
            .max_frame_size
            .unwrap_or(usize::MAX)
            .min(config.max_message_size.unwrap_or(usize::MAX));
        CutThrough {
            ws,
            buf: PooledBuf::default(),
            start: 0,
            end: 0,
            max_payload: u64::try_from(limit).unwrap_or(u64::MAX),
            raw,
        }
    }

    /// The WebSocket, to send on (sending does not touch what is read).
    pub fn ws(&mut self) -> &mut WebSocketStream<FrameEdge<S>> {
        self.ws
    }

    /// Bytes of the buffer, for frames handed out since the last read: a read may move them.
    pub fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// A frame's payload (valid UTF-8, checked when the frame was handed out).
    pub fn payload(&self, frame: Frame) -> &[u8] {
        &self.buf[frame.payload_at..frame.end]
    }

    /// A frame's payload as the text it is, for a sink that takes events as text.
    pub fn text(&self, frame: Frame) -> &str {
        // SAFETY: a `Frame` is only handed out by `head`, after `ws_frame::cut` checked its
        // payload is valid UTF-8; the buffer's bytes in its range are not written until the
        // next read, which needs `&mut self`.
        unsafe { std::str::from_utf8_unchecked(self.payload(frame)) }
    }

    /// The next frame if one is complete in the buffer already; reads nothing, so frames
    /// handed out before stay where they are.
    pub fn buffered(&mut self) -> Option<Frame> {
        match self.head() {
            Head::Frame(f) => Some(f),
            Head::Need(_) | Head::Codec => None,
        }
    }

    /// The next frame or message. Cancel-safe: bytes read are kept before anything else can
    /// run. Frames handed out before may move.
    pub async fn next(&mut self) -> Read {
        loop {
            match self.head() {
                Head::Frame(f) => return Read::Frame(f),
                Head::Codec => return Read::Message(self.codec().await),
                Head::Need(total) => {
                    self.make_room(total);
                    let (edge, buf) = (self.ws.get_mut(), &mut self.buf[self.end..]);
                    match futures_lite::future::poll_fn(|cx| edge.poll_read_raw(cx, buf)).await {
                        Ok(0) => return Read::Message(self.codec().await),
                        Ok(n) => self.end += n,
                        Err(e) => {
                            self.give_back();
                            return Read::Message(Some(Err(WsError::Io(e))));
                        }
                    }
                }
            }
        }
    }

    /// Looks at the start of the buffer; consumes a frame to forward.
    fn head(&mut self) -> Head {
        if !self.raw || (self.start == self.end && !self.ws.get_ref().at_message_edge()) {
            // tungstenite is inside a frame or a fragmented message: it goes on reading.
            return Head::Codec;
        }
        match cut(&self.buf[self.start..self.end], self.max_payload) {
            Cut::Need(n) => Head::Need(n),
            Cut::Codec => Head::Codec,
            Cut::Frame { header_len, total } => {
                let at = self.start;
                self.start += total;
                Head::Frame(Frame {
                    at,
                    payload_at: at + header_len,
                    end: at + total,
                })
            }
        }
    }

    /// Makes room after `start` for `total` bytes and a read chunk, moving the bytes not
    /// consumed to the front of the buffer (frames handed out before are overwritten). With
    /// every byte consumed (a read that ended on a frame's end, as upstream's reads do) there
    /// is nothing to move: the buffer starts over without the `memmove` call.
    fn make_room(&mut self, total: usize) {
        let want = total.max(READ_CHUNK);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.start < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.buf.ensure(want);
    }

    /// Puts the bytes not consumed back in front of the stream.
    fn give_back(&mut self) {
        self.ws.get_mut().unread(&self.buf[self.start..self.end]);
        self.start = 0;
        self.end = 0;
    }

    /// tungstenite reads the next message from the bytes not consumed on; a ping's pong goes
    /// out at once (tungstenite only queues it, and the raw reads after it would not send it).
    async fn codec(&mut self) -> Option<Result<Message, WsError>> {
        self.give_back();
        let msg = self.ws.next().await;
        if matches!(msg, Some(Ok(Message::Ping(_)))) {
            let _ = self.ws.flush().await;
        }
        msg
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Drop for CutThrough<'_, S> {
    fn drop(&mut self) {
        if self.start < self.end {
            self.give_back();
        }
    }
}

/// `true` when `wire` (one masked text frame, as a client sent it) carries a payload of
/// `frame`'s length: the frame the turn parsed from it.
pub fn carries(wire: &[u8], frame: &[u8]) -> bool {
    FrameHeader::parse(wire).is_some_and(|h| h.payload_len == frame.len() as u64)
}

/// Sends a client's frame upstream as the bytes it came in (its masking key kept: RFC 6455 asks
/// only that the key be unpredictable, which the client's is), after what tungstenite queued.
pub async fn send_as_it_came(ws: &mut UpstreamWs, wire: &[u8]) -> Result<(), WsError> {
    ws.flush().await?;
    ws.get_mut().write_all(wire).await.map_err(WsError::Io)
}

/// Sends `text` upstream as one masked text frame built in one pass ([`masked_text`]), after
/// what tungstenite queued. The masking key comes from the same source as tungstenite's own
/// (`rand::random`, a CSPRNG), as RFC 6455 §5.3 asks.
pub async fn send_text(ws: &mut UpstreamWs, text: &str) -> Result<(), WsError> {
    let (frame, len) = masked_text(text.as_bytes(), rand::random());
    send_as_it_came(ws, &frame[..len]).await
}

/// Frames handed out and not written yet: one stretch of the reader's buffer, written in one
/// go (one write for every frame a read brought in, when none of them is rewritten).
#[derive(Debug, Default)]
pub struct Pending {
    range: Option<Range<usize>>,
    payload: u64,
}

impl Pending {
    /// Adds `frame`; `false` (nothing added) when it does not directly follow the frames held:
    /// they are to be written first.
    pub fn push(&mut self, frame: Frame) -> bool {
        match &mut self.range {
            Some(r) if r.end != frame.at => return false,
            Some(r) => r.end = frame.end,
            None => self.range = Some(frame.range()),
        }
        self.payload += frame.payload_len() as u64;
        true
    }

    /// The frames held (their range in the buffer and payload bytes), leaving none.
    pub fn take(&mut self) -> Option<(Range<usize>, u64)> {
        let range = self.range.take()?;
        Some((range, std::mem::take(&mut self.payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use async_tungstenite::tungstenite::protocol::Role;
    use futures_lite::future::block_on;

    /// An upstream socket in memory: serves `wire` in reads of at most `chunk` bytes, then
    /// ends; writes are dropped.
    struct Wire {
        wire: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Wire {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let this = &mut *self;
            let n = buf.len().min(this.chunk).min(this.wire.len() - this.at);
            buf[..n].copy_from_slice(&this.wire[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Wire {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// An unmasked text frame, as upstream sends it.
    fn server_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x81];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn upstream(wire: Vec<u8>, chunk: usize) -> WebSocketStream<FrameEdge<Wire>> {
        let wire = Wire { wire, at: 0, chunk };
        block_on(WebSocketStream::from_raw_socket(
            FrameEdge::new(wire),
            Role::Client,
            None,
        ))
    }

    /// Every payload the reader hands out as a frame, until the stream ends.
    fn payloads(ws: &mut WebSocketStream<FrameEdge<Wire>>) -> Vec<Vec<u8>> {
        let mut reader = CutThrough::new(ws, true);
        let mut out = Vec::new();
        while let Read::Frame(f) = block_on(reader.next()) {
            let (payload, whole) = (reader.payload(f), reader.bytes(f.range()));
            assert_eq!(whole, server_frame(payload), "the frame as it came");
            out.push(payload.to_vec());
        }
        out
    }

    #[test]
    fn a_reused_read_buffer_never_shows_bytes_of_an_earlier_attempt() {
        // An attempt with a large event leaves its bytes in the pooled buffer...
        let large = vec![b'L'; 20_000];
        let mut ws = upstream(server_frame(&large), 7_000);
        assert_eq!(payloads(&mut ws), vec![large]);
        // ...and later attempts reading short events, whole or split, see only theirs.
        let events: Vec<Vec<u8>> = (0..40)
            .map(|i| format!(r#"{{"type":"response.output_text.delta","delta":"{i}"}}"#).into())
            .collect();
        let wire: Vec<u8> = events.iter().flat_map(|e| server_frame(e)).collect();
        for chunk in [1, 13, 100, 1 << 20] {
            let mut ws = upstream(wire.clone(), chunk);
            assert_eq!(payloads(&mut ws), events, "reads of {chunk} bytes");
        }
    }

    fn frame(at: usize, payload_at: usize, end: usize) -> Frame {
        Frame {
            at,
            payload_at,
            end,
        }
    }

    #[test]
    fn pending_frames_are_one_stretch_written_once() {
        let mut pending = Pending::default();
        assert_eq!(pending.take(), None);
        assert!(pending.push(frame(0, 2, 10)));
        assert!(pending.push(frame(10, 12, 30)));
        assert!(
            !pending.push(frame(40, 42, 50)),
            "a gap (a rewritten frame between) is written first"
        );
        assert_eq!(pending.take(), Some((0..30, 26)));
        assert_eq!(pending.take(), None, "taken once");
        assert!(pending.push(frame(40, 42, 50)));
        assert_eq!(pending.take(), Some((40..50, 8)));
    }
}
