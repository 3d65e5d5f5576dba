//! Upstream events read as raw frames, for a relay that writes them to a client WebSocket as the
//! bytes they came in, or hands their payload to an SSE or JSON answer as a view of its buffer.
//!
//! Server frames are unmasked on both hops, so a complete text frame (FIN, no RSV bits, within
//! the size limit, valid UTF-8) is already the exact bytes the client must receive. The reader
//! takes such frames out of one buffer, reused for the whole attempt, and hands out their
//! position in it: nothing is copied or allocated per event. Anything else (a fragment, a control
//! frame, a close, an oversize or invalid frame, a read error) goes to tungstenite: the bytes not
//! consumed are put back in front of the stream ([`FrameEdge::unread`]) and the codec reads them
//! as it always did, so that path behaves exactly as before. When the reader is dropped, what it
//! read but did not consume goes back the same way: every byte read is accounted for (a
//! connection that rests or is closed afterwards sees the stream as tungstenite left it).
//!
//! [`FrameEdge::unread`]: crate::net::FrameEdge::unread

use std::ops::Range;

use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_lite::AsyncWriteExt;
use futures_util::{SinkExt, StreamExt};

use crate::net::ws_frame::{cut, masked_text, Cut, FrameHeader};

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

/// An upstream WebSocket read frame by frame for the turn being relayed.
pub struct CutThrough<'a> {
    ws: &'a mut UpstreamWs,
    buf: Vec<u8>,
    /// Bytes of `buf` not consumed yet: `start..end`.
    start: usize,
    end: usize,
    /// Largest payload forwarded as it came; larger frames go to the codec, which enforces the
    /// limit (and closes with 1009).
    max_payload: u64,
}

impl<'a> CutThrough<'a> {
    /// A reader over `ws`. The buffer is allocated at the first raw read.
    pub fn new(ws: &'a mut UpstreamWs) -> Self {
        let config = ws.get_config();
        let limit = config
            .max_frame_size
            .unwrap_or(usize::MAX)
            .min(config.max_message_size.unwrap_or(usize::MAX));
        CutThrough {
            ws,
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_payload: u64::try_from(limit).unwrap_or(u64::MAX),
        }
    }

    /// The WebSocket, to send on (sending does not touch what is read).
    pub fn ws(&mut self) -> &mut UpstreamWs {
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
        if self.start == self.end && !self.ws.get_ref().at_message_edge() {
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
    /// consumed to the front of the buffer (frames handed out before are overwritten).
    fn make_room(&mut self, total: usize) {
        let want = total.max(READ_CHUNK);
        if self.buf.len() - self.start < want || self.start == self.end {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
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

impl Drop for CutThrough<'_> {
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
    send_as_it_came(ws, &masked_text(text.as_bytes(), rand::random())).await
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
