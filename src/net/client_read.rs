//! A client's next WebSocket message read raw, without the codec, when it is one plain text frame.
//!
//! Clients send a `response.create` as one masked text frame. Read through tungstenite it costs a
//! zero-filled 16 KiB read chunk per read, a copy into the message, a UTF-8 check, and (to send it
//! upstream as it came) a recording copy of every byte. Here the frame header (at most 14 bytes)
//! is read into a stack buffer, then the rest of the frame into one buffer of at least its size
//! (up to 64 KiB at first, doubling as it fills: a header alone buys no more). Reads go at most
//! one byte past the frame ([`PAST_END`]): a read that stops at the frame's end leaves the
//! runtime polling the socket, so the turn's next look at the client costs no `recv`, and a
//! byte read past the frame (rare: a client that sent its next frame at once) is put back.
//! That buffer is the frame as it came (masked: it may go
//! upstream as it is); the payload is unmasked into the message text in one pass and its UTF-8
//! checked once, here: the text is handed on as [`Utf8Bytes`], so the turn that reads it never
//! checks it again. Both buffers come from the shard's pool ([`PooledBuf`]) and go back to it
//! when the turn drops the frame: in steady state a frame is neither allocated nor zero-filled
//! before its bytes overwrite it.
//!
//! That is two `recv`s per frame, the header's and the rest's. Once a session's frame size is
//! known ([`FirstRead`]: its last frame's) and its stream can wait for bytes without reading
//! ([`WaitReadable`]: plain TCP, not TLS), the read waits holding no buffer, then reads into
//! one of that size at once: header and payload in one `recv` when the frame came whole. Bytes
//! that read took past the frame (a next frame sent right behind) go back in front of the
//! stream; a frame larger than the buffer grows it as above.
//!
//! Only a complete text message in one masked frame (FIN, no RSV bits, length in its fewest bytes,
//! payload within the limit, valid UTF-8) is read so. Anything else (a fragment, a control frame,
//! a binary or unmasked frame, an oversize one, decided on its header alone, invalid UTF-8) is
//! given back: every byte read goes back in front of the stream ([`FrameEdge::unread`]), from the
//! frame start, and the codec reads it as it always did (same pongs, same close codes). A read
//! dropped half way (a timeout, a drain) gives its bytes back the same way.

use std::future::poll_fn;
use std::task::Poll;

use async_tungstenite::tungstenite::Utf8Bytes;
use bytes::Bytes;
use futures_lite::AsyncRead;

use super::buf_pool::PooledBuf;
use super::frame_edge::FrameEdge;
use super::wait_readable::WaitReadable;
use super::ws_frame::{unmask_into_ascii, FrameHeader, MAX_HEADER};

/// What reading the client's next message raw gave.
#[derive(Debug, PartialEq, Eq)]
pub enum RawRead {
    /// One whole masked text frame, read and checked.
    Frame(RawFrame),
    /// Not a frame this reader takes (or the stream is not at a message edge): every byte read
    /// is back in front of the stream, for the codec.
    Codec,
    /// The client closed the connection or the socket failed.
    Gone,
}

/// A client's text message that came as one masked frame.
#[derive(Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// The payload unmasked: the message, its UTF-8 checked by the read.
    pub text: Utf8Bytes,
    /// The frame as it came (header and masked payload), to forward with the client's mask.
    pub wire: Bytes,
}

/// `true` for a header whose frame this reader takes: a whole text message in one masked
/// frame, no extension bits, its length written in the fewest bytes, within `max_payload`.
pub fn takes(h: &FrameHeader, max_payload: u64) -> bool {
    h.is_whole_plain_text() && h.mask.is_some() && h.payload_len <= max_payload
}

/// The size a session's next frame is first read into: its last raw frame's (a client's
/// frames are alike: a Codex session sends one `response.create` shape), so that frame's bytes
/// and [`PAST_END`] fit the one read. Unknown before the session's first raw frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FirstRead(usize);

impl FirstRead {
    /// The buffer to read the next frame into at once, if a frame was read before: never
    /// shorter than a header, never longer than [`FIRST_BUFFER`].
    fn len(self) -> Option<usize> {
        (self.0 > 0).then(|| self.0.clamp(MAX_HEADER, FIRST_BUFFER))
    }

    /// Remembers a `total`-byte frame's size for the next read.
    fn remember(&mut self, total: usize) {
        self.0 = total.saturating_add(PAST_END);
    }
}

/// Reads the client's next message when it is one plain masked text frame of at most
/// `max_payload` bytes ([`takes`]). Only at a message edge ([`FrameEdge::at_message_edge`]);
/// elsewhere it reads nothing and answers [`RawRead::Codec`].
///
/// On a stream that can wait for bytes without reading ([`WaitReadable`]), once `first` knows a
/// frame size, it waits holding no buffer, then reads header and payload into one buffer of
/// that size at once: one `recv` per frame when the frame came whole and fits. Elsewhere (TLS,
/// a session's first frame) the header is read into a stack buffer first, then the rest. A
/// frame read so remembers its size in `first`. A frame that ends exactly where a buffer
/// shorter than it ends (read before its header told its size) leaves no poll armed
/// ([`PAST_END`]): the next wait then costs one `recv` that finds nothing.
///
/// Cancel-safe: dropped before it returns, it puts back every byte it read.
pub async fn read_text_frame<S: AsyncRead + WaitReadable + Unpin>(
    edge: &mut FrameEdge<S>,
    max_payload: u64,
    first: &mut FirstRead,
) -> RawRead {
    if !edge.at_message_edge() {
        return RawRead::Codec;
    }
    let at_once = first.len().filter(|_| edge.can_wait_readable());
    let mut taken = Taken::new(edge);
    let header = match at_once {
        Some(len) => taken.read_at_once(len).await,
        None => taken.read_head_on_stack().await,
    };
    let Some(header) = header else {
        return RawRead::Gone;
    };
    let Some(mask) = header.mask.filter(|_| takes(&header, max_payload)) else {
        return taken.codec();
    };
    let Some(total) = usize::try_from(header.payload_len)
        .ok()
        .and_then(|p| p.checked_add(header.len))
    else {
        return taken.codec();
    };
    // Reads may take one byte past the frame ([`PAST_END`]); it goes back after the loop.
    let room = total.saturating_add(PAST_END);
    // A header read on the stack: the frame's buffer is taken now.
    if taken.head_len > 0 {
        taken.start_frame(total, room);
    }
    while taken.filled < total {
        if taken.filled == taken.wire.len() {
            let len = taken.wire.len();
            taken.wire.ensure(grown(len, room));
        }
        // A buffer from the pool may be longer than the frame: reads stop at `room`.
        let end = taken.wire.len().min(room);
        let (edge, buf) = (&mut *taken.edge, &mut taken.wire[taken.filled..end]);
        match poll_fn(|cx| edge.poll_read_raw(cx, buf)).await {
            Ok(0) | Err(_) => return RawRead::Gone,
            Ok(n) => taken.filled += n,
        }
    }
    taken.give_back_past(total);
    let masked = &taken.wire[header.len..total];
    let mut text = PooledBuf::take(masked.len());
    let text_len = masked.len();
    let ascii = unmask_into_ascii(masked, mask, &mut text[..text_len]);
    // All-ASCII text (told by the unmasking pass) is valid UTF-8; other text is checked with
    // `simdutf8`, a fifth of the time `std` takes on non-ASCII text (`cargo bench --bench shard
    // -- client_read/`); `Utf8Bytes::try_from` would check with `std`.
    if !ascii && simdutf8::basic::from_utf8(&text[..text_len]).is_err() {
        return taken.codec();
    }
    // SAFETY: the first `text_len` bytes of `text` are valid UTF-8: all ASCII (every byte below
    // 0x80, as `unmask_into_ascii` wrote them) or checked just above (`simdutf8`), and the `Bytes`
    // frozen from them show exactly those bytes and are immutable.
    // The one place a client frame's checked bytes become `Utf8Bytes` unchecked.
    let text = unsafe { Utf8Bytes::from_bytes_unchecked(text.freeze(text_len)) };
    first.remember(total);
    RawRead::Frame(RawFrame {
        text,
        wire: taken.keep().freeze(total),
    })
}

/// What waiting for a client's next bytes gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Readable {
    /// Bytes wait to be read (or a frame is under way in the codec): the codec may read now.
    Ready,
    /// The client closed the connection or the socket failed.
    Gone,
}

/// Waits until the client sent something, without the codec: at a message edge with nothing
/// held, one read of at most a header's worth, put back in front of the stream at once;
/// elsewhere (bytes held, or a frame or fragmented message under way in the codec) it answers
/// [`Readable::Ready`] without reading. A turn watches its client this way between events:
/// polling tungstenite instead zero-fills its whole read chunk on every poll, and the relay
/// polls once per upstream event.
///
/// Cancel-safe: nothing is held across an await.
pub async fn readable<S: AsyncRead + Unpin>(edge: &mut FrameEdge<S>) -> Readable {
    if !edge.at_message_edge() || edge.holds_unread() {
        return Readable::Ready;
    }
    let mut head = [0u8; MAX_HEADER];
    match poll_fn(|cx| edge.poll_read_raw(cx, &mut head)).await {
        Ok(0) | Err(_) => Readable::Gone,
        Ok(n) => {
            edge.unread(&head[..n]);
            Readable::Ready
        }
    }
}

/// Bytes a frame's reads may take past its end. A read that stops at the frame's end then
/// leaves part of its buffer empty, glommio's sign to arm the socket's readiness poll at once;
/// a read that filled its buffer armed none, and the turn's look at the client just before its
/// frame goes upstream (`relay::before_send`) paid a `recv` that found nothing, once per turn.
/// A byte the client sent past the frame (a next frame already there) goes back in front of
/// the stream, where that look finds it without reading.
const PAST_END: usize = 1;

/// The buffer a frame is first read into, at most: a client's header alone must not make the
/// gateway hold more than this (a frame's length is the client's word until its bytes come).
/// A Codex `response.create` (~30 KB) fits; a larger frame's buffer doubles as it fills.
const FIRST_BUFFER: usize = 64 * 1024;

/// The size of a frame's buffer after `len` bytes of it filled it, for a `total`-byte frame:
/// [`FIRST_BUFFER`] at first, then doubling, never past the frame.
fn grown(len: usize, total: usize) -> usize {
    if len == 0 {
        total.min(FIRST_BUFFER)
    } else {
        len.saturating_mul(2).min(total)
    }
}

/// The bytes a read took from the stream so far; put back when dropped, unless kept.
struct Taken<'a, S> {
    edge: &'a mut FrameEdge<S>,
    /// The first bytes read, until the header is complete.
    head: [u8; MAX_HEADER],
    head_len: usize,
    /// The whole frame, once its header is complete: `filled` bytes of it read so far (past
    /// them, the bytes a buffer's earlier user left).
    wire: PooledBuf,
    filled: usize,
}

impl<'a, S> Taken<'a, S> {
    fn new(edge: &'a mut FrameEdge<S>) -> Self {
        Taken {
            edge,
            head: [0; MAX_HEADER],
            head_len: 0,
            wire: PooledBuf::default(),
            filled: 0,
        }
    }

    /// Reads until a whole header is there, into the stack buffer; `None` when the client is
    /// gone.
    async fn read_head_on_stack(&mut self) -> Option<FrameHeader>
    where
        S: AsyncRead + Unpin,
    {
        loop {
            if let Some(h) = FrameHeader::parse(&self.head[..self.head_len]) {
                return Some(h);
            }
            let (edge, buf) = (&mut *self.edge, &mut self.head[self.head_len..]);
            match poll_fn(|cx| edge.poll_read_raw(cx, buf)).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.head_len += n,
            }
        }
    }

    /// Waits for bytes holding no buffer, then reads into a `len`-byte one (at least a
    /// header's) from the pool, the frame's; `None` when the client is gone. A read that finds
    /// nothing gives the buffer back before waiting again; so does one that brought less than
    /// a header (a client that stalls there must not hold a frame's buffer, [`FIRST_BUFFER`]):
    /// its bytes move to the stack and the header is read there.
    async fn read_at_once(&mut self, len: usize) -> Option<FrameHeader>
    where
        S: AsyncRead + WaitReadable + Unpin,
    {
        while self.filled == 0 {
            let edge = &mut *self.edge;
            if poll_fn(|cx| edge.poll_readable(cx)).await.is_err() {
                return None;
            }
            self.wire = PooledBuf::take(len);
            let (edge, buf) = (&mut *self.edge, &mut self.wire[..]);
            match poll_fn(|cx| Poll::Ready(edge.poll_read_raw(cx, buf))).await {
                Poll::Pending => self.wire = PooledBuf::default(),
                Poll::Ready(Ok(0) | Err(_)) => return None,
                Poll::Ready(Ok(n)) => self.filled = n,
            }
        }
        if let Some(h) = FrameHeader::parse(&self.wire[..self.filled]) {
            return Some(h);
        }
        // Short of a header, so shorter than the stack buffer.
        let short = self.filled;
        self.head[..short].copy_from_slice(&self.wire[..short]);
        (self.head_len, self.filled) = (short, 0);
        self.wire = PooledBuf::default();
        self.read_head_on_stack().await
    }

    /// Moves the head bytes into the frame's buffer (sized for `room`: the whole `total`-byte
    /// frame and [`PAST_END`], up to [`FIRST_BUFFER`]); bytes read past the frame's end (a
    /// frame shorter than a header read) go back to the stream.
    fn start_frame(&mut self, total: usize, room: usize) {
        let head = self.head_len.min(total);
        self.wire = PooledBuf::take(grown(0, room));
        self.wire[..head].copy_from_slice(&self.head[..head]);
        self.filled = head;
        self.edge.unread(&self.head[head..self.head_len]);
        self.head_len = 0;
    }

    /// Bytes read past the `total`-byte frame go back to the stream.
    fn give_back_past(&mut self, total: usize) {
        if self.filled > total {
            self.edge.unread(&self.wire[total..self.filled]);
            self.filled = total;
        }
    }

    /// Everything read goes back for the codec.
    fn codec(mut self) -> RawRead {
        self.give_back();
        RawRead::Codec
    }

    /// The frame read, kept: nothing goes back.
    fn keep(mut self) -> PooledBuf {
        self.filled = 0;
        std::mem::take(&mut self.wire)
    }

    fn give_back(&mut self) {
        if self.head_len > 0 {
            self.edge.unread(&self.head[..self.head_len]);
            self.head_len = 0;
        }
        if self.filled > 0 {
            self.edge.unread(&self.wire[..self.filled]);
            self.filled = 0;
        }
    }
}

impl<S> Drop for Taken<'_, S> {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_lite::future::block_on;
    use futures_lite::AsyncReadExt;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: FIN as given, RSV bits, opcode, masked with [`KEY`] when `masked`, the
    /// length in its fewest bytes.
    fn frame(b0: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
        let m = if masked { 0x80 } else { 0 };
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&KEY);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    fn text(payload: &[u8]) -> Vec<u8> {
        frame(0x81, true, payload)
    }

    /// A socket that yields its chunks one read at a time (a read never spans two chunks), then
    /// end of stream; it counts the reads it served.
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
        reads: usize,
        /// The buffer length the last read was offered, and the bytes it got.
        last_room: usize,
        last_got: usize,
        pending_once: bool,
        /// Once the chunks are served: wait for more instead of ending.
        stall: bool,
        /// Answers [`WaitReadable::can_wait_readable`].
        can_wait: bool,
        /// Every `poll_read` call, the ones answered `Pending` included, and the buffer
        /// length the last one was offered.
        polls: usize,
        polled_room: usize,
    }

    impl Chunks {
        fn new(chunks: &[&[u8]]) -> Self {
            Chunks {
                chunks: chunks.iter().map(|c| c.to_vec()).collect(),
                reads: 0,
                last_room: 0,
                last_got: 0,
                pending_once: false,
                stall: false,
                can_wait: true,
                polls: 0,
                polled_room: 0,
            }
        }
    }

    /// Readable while chunks are left, or at the end of the stream; with `stall`, pending once
    /// they are served.
    impl WaitReadable for Chunks {
        fn can_wait_readable(&self) -> bool {
            self.can_wait
        }

        fn poll_readable(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.can_wait && self.chunks.is_empty() && self.stall {
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.polls += 1;
            self.polled_room = buf.len();
            if self.pending_once {
                self.pending_once = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let this = &mut *self;
            let Some(chunk) = this.chunks.front_mut() else {
                return if this.stall {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(0))
                };
            };
            this.reads += 1;
            this.last_room = buf.len();
            let n = buf.len().min(chunk.len());
            this.last_got = n;
            buf[..n].copy_from_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                this.chunks.pop_front();
            }
            Poll::Ready(Ok(n))
        }
    }

    /// Everything the stream still serves (held bytes, then the socket).
    fn rest(edge: &mut FrameEdge<Chunks>) -> Vec<u8> {
        let mut out = Vec::new();
        block_on(edge.read_to_end(&mut out)).unwrap();
        out
    }

    fn read(edge: &mut FrameEdge<Chunks>) -> RawRead {
        read_first(edge, FirstRead::default())
    }

    /// Reads with `first` as the size the frame is first read into.
    fn read_first(edge: &mut FrameEdge<Chunks>, mut first: FirstRead) -> RawRead {
        block_on(read_text_frame(edge, 1 << 20, &mut first))
    }

    /// Reads `wire` (the frame of `payload`) with `next` right behind it in one chunk: the
    /// frame, its text and nothing after, then the next frame left whole for the stream.
    fn read_whole_then(wire: &[u8], payload: &[u8], next: &[u8], first: FirstRead) {
        let mut edge = FrameEdge::new(Chunks::new(&[&[wire, next].concat()]));
        let f = frame_of(read_first(&mut edge, first));
        let len = payload.len();
        let got = (f.text.as_bytes(), &f.wire[..]);
        assert_eq!(
            got,
            (payload, wire),
            "{len} {first:?}: the frame, nothing after"
        );
        assert!(edge.at_message_edge());
        assert_eq!(
            rest(&mut edge),
            next,
            "{len} {first:?}: the next frame, whole"
        );
    }

    /// Every way a `total`-byte frame is read: header first (no frame size known yet), and at
    /// once into a buffer of a header's length (too short for any frame with a payload), of
    /// the frame's own size and [`PAST_END`] (the steady state), and of [`FIRST_BUFFER`].
    fn firsts(total: usize) -> [FirstRead; 4] {
        [
            FirstRead::default(),
            FirstRead(MAX_HEADER),
            FirstRead(total + PAST_END),
            FirstRead(FIRST_BUFFER),
        ]
    }

    fn frame_of(read: RawRead) -> RawFrame {
        match read {
            RawRead::Frame(f) => f,
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn every_length_form_is_read_whole_and_unmasked() {
        for len in [0usize, 7, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let wire = text(&payload);
            let next = text(b"next");
            for first in firsts(wire.len()) {
                read_whole_then(&wire, &payload, &next, first);
            }
        }
    }

    #[test]
    fn a_header_and_payload_split_over_reads_are_put_together() {
        let payload = vec![b'x'; 30_000];
        let wire = text(&payload);
        let splits: [&[usize]; 4] = [&[1], &[2, 3], &[4, 9, 20], &[8, 10_000, 20_000]];
        for cuts in splits {
            let mut chunks = Vec::new();
            let mut at = 0;
            for &c in cuts {
                chunks.push(&wire[at..c]);
                at = c;
            }
            chunks.push(&wire[at..]);
            for first in firsts(wire.len()) {
                let mut edge = FrameEdge::new(Chunks::new(&chunks));
                edge.get_mut().pending_once = true;
                let f = frame_of(read_first(&mut edge, first));
                let got = (f.text.len(), &f.wire[..]);
                assert_eq!(got, (30_000, &wire[..]), "{cuts:?} {first:?}");
            }
        }
    }

    #[test]
    fn reads_go_one_byte_past_the_frame_at_most_and_put_it_back() {
        let wire = text(&[b'y'; 30_000]);
        let next = text(b"after");
        let mut edge = FrameEdge::new(Chunks::new(&[&[wire.clone(), next.clone()].concat()]));
        frame_of(read(&mut edge));
        assert_eq!(edge.get_mut().reads, 2, "the header, then the rest");
        assert!(edge.holds_unread(), "one byte of the next frame, put back");
        assert_eq!(rest(&mut edge), next);
        let short = text(b"hi");
        let mut edge = FrameEdge::new(Chunks::new(&[&[short.clone(), next.clone()].concat()]));
        assert_eq!(frame_of(read(&mut edge)).text, "hi");
        assert!(edge.holds_unread(), "a frame shorter than a header read");
        assert_eq!(rest(&mut edge), next);
    }

    #[test]
    fn a_read_that_ends_the_frame_leaves_room_in_its_buffer() {
        // glommio arms the socket's readiness poll after a read that did not fill its buffer:
        // the frame's last read must not fill it when nothing follows the frame.
        for len in (0..=64).chain([125, 126, 300, 8_000, 30_000, 70_000]) {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let wire = text(&payload);
            for cut in [0, 1, 6, 13, 14, wire.len() / 2, wire.len() - 1] {
                if cut == 0 || cut >= wire.len() {
                    continue;
                }
                for first in firsts(wire.len()) {
                    let mut edge = FrameEdge::new(Chunks::new(&[&wire[..cut], &wire[cut..]]));
                    let f = frame_of(read_first(&mut edge, first));
                    assert_eq!((f.text.as_bytes(), &f.wire[..]), (&payload[..], &wire[..]));
                    // A frame no longer than a header read may end in that read, which it
                    // fills; so may one read at once into a buffer shorter than it, when its
                    // end falls on the buffer's (nothing tells that more is not coming).
                    let socket = edge.get_mut();
                    if wire.len() > MAX_HEADER && first != FirstRead(MAX_HEADER) {
                        assert!(
                            socket.last_room > socket.last_got,
                            "{len} cut at {cut} {first:?}: the last read filled its buffer"
                        );
                    }
                    assert!(!edge.holds_unread(), "{len} cut at {cut} {first:?}");
                }
            }
            // The next frame right behind: whatever was read past the frame goes back.
            for next in [text(b""), text(b"n"), text(&[b'n'; 200])] {
                for first in firsts(wire.len()) {
                    read_whole_then(&wire, &payload, &next, first);
                }
            }
        }
    }

    #[test]
    fn once_a_frame_size_is_known_header_and_payload_come_in_one_read() {
        for len in (0..=64).chain([125, 126, 300, 8_000, 30_000, 65_000]) {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let wire = text(&payload);
            let mut first = FirstRead::default();
            let mut edge = FrameEdge::new(Chunks::new(&[&wire, &wire, &wire]));
            for n in 0..3 {
                let reads = edge.get_mut().reads;
                let f = frame_of(block_on(read_text_frame(&mut edge, 1 << 20, &mut first)));
                assert_eq!((f.text.as_bytes(), &f.wire[..]), (&payload[..], &wire[..]));
                assert_eq!(first, FirstRead(wire.len() + PAST_END), "{len}: remembered");
                let socket = edge.get_mut();
                if n > 0 {
                    assert_eq!(socket.reads - reads, 1, "{len}, frame {n}: one read");
                }
                // The read left room in its buffer: glommio arms the socket's readiness poll.
                if n > 0 || wire.len() > MAX_HEADER {
                    assert!(socket.last_room > socket.last_got, "{len}, frame {n}");
                }
                assert!(!edge.holds_unread() && edge.at_message_edge());
            }
        }
    }

    #[test]
    fn a_frame_sent_right_behind_one_read_at_once_is_kept_for_the_next_read() {
        let wire = text(&[b'a'; 8_000]);
        for next in [
            text(b""),
            text(b"n"),
            text(&[b'n'; 8_000]),
            text(&[b'n'; 70_000]),
        ] {
            for after in [vec![], text(b"after"), vec![0x81]] {
                let all = [wire.clone(), next.clone(), after.clone()].concat();
                let mut edge = FrameEdge::new(Chunks::new(&[&all]));
                let mut first = FirstRead(wire.len() + PAST_END);
                let f = frame_of(block_on(read_text_frame(&mut edge, 1 << 20, &mut first)));
                assert_eq!(f.wire, wire);
                assert_eq!(edge.get_mut().reads, 1, "{}: one read", next.len());
                assert!(edge.holds_unread() && edge.at_message_edge());
                let f = frame_of(block_on(read_text_frame(&mut edge, 1 << 20, &mut first)));
                assert_eq!(f.wire, next, "{}: the second frame, whole", next.len());
                assert_eq!(first, FirstRead(next.len() + PAST_END));
                assert!(edge.at_message_edge());
                assert_eq!(rest(&mut edge), after, "{}: the rest, whole", next.len());
            }
        }
    }

    #[test]
    fn a_frame_larger_than_its_first_read_grows_its_buffer_as_bytes_come() {
        assert_eq!(FirstRead::default().len(), None, "no frame read yet");
        assert_eq!(FirstRead(3).len(), Some(MAX_HEADER));
        assert_eq!(FirstRead(30_009).len(), Some(30_009));
        assert_eq!(FirstRead(16 << 20).len(), Some(FIRST_BUFFER));
        for len in [200usize, 30_000, 70_000, 3 * FIRST_BUFFER + 5] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let wire = text(&payload);
            let small = text(b"small");
            for chunks in [vec![&wire[..]], wire.chunks(10_000).collect()] {
                let mut edge = FrameEdge::new(Chunks::new(&[&[&small[..]], &chunks[..]].concat()));
                let mut first = FirstRead::default();
                let f = frame_of(block_on(read_text_frame(&mut edge, 1 << 22, &mut first)));
                assert_eq!(f.wire, small);
                let f = frame_of(block_on(read_text_frame(&mut edge, 1 << 22, &mut first)));
                let got = (f.text.as_bytes(), &f.wire[..]);
                assert_eq!(got, (&payload[..], &wire[..]), "{len}");
                assert_eq!(first, FirstRead(wire.len() + PAST_END));
                assert!(!edge.holds_unread());
            }
        }
    }

    #[test]
    fn a_stream_that_cannot_wait_for_bytes_reads_the_header_first() {
        let wire = text(&[b'w'; 8_000]);
        let mut edge = FrameEdge::new(Chunks::new(&[&wire]));
        edge.get_mut().can_wait = false;
        let f = frame_of(read_first(&mut edge, FirstRead(wire.len() + PAST_END)));
        assert_eq!(f.wire, wire);
        assert_eq!(edge.get_mut().reads, 2, "the header, then the rest");
    }

    #[test]
    fn waiting_for_a_frame_reads_nothing_until_bytes_come() {
        let wire = text(&[b'i'; 8_000]);
        for (can_wait, polls) in [(true, 0), (false, 1)] {
            let mut edge = FrameEdge::new(Chunks::new(&[]));
            let socket = edge.get_mut();
            (socket.stall, socket.can_wait) = (true, can_wait);
            let mut first = FirstRead(wire.len() + PAST_END);
            {
                let mut fut = std::pin::pin!(read_text_frame(&mut edge, 1 << 20, &mut first));
                let mut cx = Context::from_waker(std::task::Waker::noop());
                assert!(fut.as_mut().poll(&mut cx).is_pending());
            }
            assert_eq!(edge.get_mut().polls, polls, "can wait: {can_wait}");
            assert!(!edge.holds_unread());
        }
    }

    #[test]
    fn a_client_stalled_short_of_a_header_holds_no_frame_buffer() {
        let wire = text(&[b's'; 30_000]);
        for cut in 1..4 {
            let mut edge = FrameEdge::new(Chunks::new(&[&wire[..cut]]));
            edge.get_mut().stall = true;
            let mut first = FirstRead(wire.len() + PAST_END);
            {
                let mut fut = std::pin::pin!(read_text_frame(&mut edge, 1 << 20, &mut first));
                let mut cx = Context::from_waker(std::task::Waker::noop());
                assert!(fut.as_mut().poll(&mut cx).is_pending());
            }
            let socket = edge.get_mut();
            assert_eq!(
                socket.last_room,
                FIRST_BUFFER.min(wire.len() + PAST_END),
                "at once"
            );
            assert_eq!(
                socket.polled_room,
                MAX_HEADER - cut,
                "cut at {cut}: the rest of the header is waited for on the stack"
            );
        }
    }

    #[test]
    fn every_other_frame_is_given_back_whole_for_the_codec() {
        let big = vec![b'z'; 2_000];
        let mut long_padded = vec![0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 3];
        long_padded.extend_from_slice(&KEY);
        long_padded.extend_from_slice(b"abc");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("first fragment", frame(0x01, true, b"frag")),
            ("continuation", frame(0x80, true, b"end")),
            ("ping", frame(0x89, true, b"p")),
            ("pong", frame(0x8a, true, b"")),
            ("close", frame(0x88, true, &[0x03, 0xe8])),
            ("binary", frame(0x82, true, b"bin")),
            ("unmasked", frame(0x81, false, b"plain")),
            ("rsv1", frame(0xc1, true, b"deflated")),
            ("oversize", text(&big)),
            ("invalid utf-8", text(&[b'{', 0xc3, 0x28, b'}'])),
            ("padded 16-bit length", {
                let mut f = vec![0x81, 0x80 | 126, 0, 3];
                f.extend_from_slice(&KEY);
                f.extend_from_slice(b"abc");
                f
            }),
            ("padded 64-bit length", long_padded),
        ];
        for (name, wire) in cases {
            let after = text(b"after");
            let all = [wire.clone(), after.clone()].concat();
            // Split in one-byte reads too: put back across the header and the payload reads.
            for chunks in [vec![all.clone()], all.iter().map(|b| vec![*b]).collect()] {
                for mut first in firsts(wire.len()) {
                    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
                    let mut edge = FrameEdge::new(Chunks::new(&refs));
                    let got = block_on(read_text_frame(&mut edge, 1_000, &mut first));
                    assert_eq!(got, RawRead::Codec, "{name} {first:?}");
                    assert!(edge.at_message_edge(), "{name} {first:?}");
                    assert_eq!(
                        rest(&mut edge),
                        all,
                        "{name} {first:?}: every byte put back, in order"
                    );
                }
            }
        }
    }

    #[test]
    fn the_text_is_handed_on_as_the_checked_utf8_it_is() {
        // Every UTF-8 width, starting at each offset of the 8-byte unmask and past its tail.
        for at in 0..10 {
            let payload = format!("{}é€😀 and on", "a".repeat(at));
            let mut edge = FrameEdge::new(Chunks::new(&[&text(payload.as_bytes())]));
            assert_eq!(frame_of(read(&mut edge)).text.as_str(), payload, "at {at}");
        }
        // A sequence cut short, an overlong form, a surrogate: the codec's to refuse (1007);
        // also inside and after the unmask's 64-byte vector steps, in otherwise ASCII text
        // (the unmask tells all-ASCII text apart and skips the UTF-8 check only for it).
        for bad in [&b"\xf0\x9f\x98"[..], b"\xc0\xaf", b"\xed\xa0\x80"] {
            for at in (0..10).chain(60..70).chain(120..132) {
                let payload = [&b"a".repeat(at)[..], bad, b" and on"].concat();
                let mut edge = FrameEdge::new(Chunks::new(&[&text(&payload)]));
                assert_eq!(read(&mut edge), RawRead::Codec, "{bad:?} at {at}");
            }
        }
    }

    #[test]
    fn an_oversize_frame_is_refused_on_its_header_without_reading_its_payload() {
        let header = &text(&vec![b'o'; 5_000])[..8];
        for mut first in firsts(5_009) {
            let mut edge = FrameEdge::new(Chunks::new(&[header]));
            let got = block_on(read_text_frame(&mut edge, 4_999, &mut first));
            assert_eq!(got, RawRead::Codec);
            assert_eq!(
                edge.get_mut().reads,
                1,
                "{first:?}: only the header was asked for"
            );
            assert_eq!(rest(&mut edge), header);
        }
    }

    #[test]
    fn a_read_dropped_half_way_puts_back_what_it_took() {
        let wire = text(&[b'q'; 1_000]);
        for (cut, mut first) in [1, 5, 8, 500]
            .into_iter()
            .flat_map(|cut| firsts(wire.len()).map(|first| (cut, first)))
        {
            let mut edge = FrameEdge::new(Chunks::new(&[&wire[..cut]]));
            // The socket then waits for more: the read is dropped there.
            edge.get_mut().stall = true;
            {
                let mut fut = std::pin::pin!(read_text_frame(&mut edge, 1 << 20, &mut first));
                let waker = std::task::Waker::noop();
                let mut cx = Context::from_waker(waker);
                let polled = fut.as_mut().poll(&mut cx);
                assert!(!matches!(polled, Poll::Ready(RawRead::Frame(_))));
            }
            assert!(edge.at_message_edge());
            let mut back = vec![0u8; cut];
            block_on(edge.read_exact(&mut back)).unwrap();
            assert_eq!(back, &wire[..cut], "cut at {cut} {first:?}");
            assert!(!edge.holds_unread(), "and nothing more");
        }
    }

    #[test]
    fn a_client_gone_mid_frame_or_before_one_is_gone() {
        let wire = text(b"hello there");
        for cut in [0, 1, 7, 10] {
            for first in firsts(wire.len()) {
                let mut edge = FrameEdge::new(Chunks::new(&[&wire[..cut]]));
                let got = read_first(&mut edge, first);
                assert_eq!(got, RawRead::Gone, "cut at {cut} {first:?}");
            }
        }
    }

    #[test]
    fn off_a_message_edge_nothing_is_read() {
        let wire = frame(0x01, true, b"frag");
        let mut edge = FrameEdge::new(Chunks::new(&[&wire, &text(b"x")]));
        let mut buf = vec![0u8; wire.len()];
        block_on(edge.read_exact(&mut buf)).unwrap();
        assert!(!edge.at_message_edge(), "a fragmented message is open");
        let reads = edge.get_mut().reads;
        assert_eq!(read(&mut edge), RawRead::Codec);
        assert_eq!(edge.get_mut().reads, reads);
    }

    #[test]
    fn a_claimed_length_buys_a_bounded_buffer_that_grows_as_bytes_come() {
        assert_eq!(
            grown(0, 30_008),
            30_008,
            "a Codex frame: one buffer, its size"
        );
        assert_eq!(grown(0, 16 << 20), FIRST_BUFFER, "a header alone");
        assert_eq!(grown(FIRST_BUFFER, 16 << 20), 2 * FIRST_BUFFER);
        assert_eq!(grown(FIRST_BUFFER, FIRST_BUFFER + 1), FIRST_BUFFER + 1);
        let payload = vec![b'g'; 3 * FIRST_BUFFER + 5];
        let wire = text(&payload);
        let cuts: Vec<&[u8]> = wire.chunks(10_000).collect();
        for mut first in firsts(wire.len()) {
            let mut edge = FrameEdge::new(Chunks::new(&cuts));
            let f = frame_of(block_on(read_text_frame(&mut edge, 1 << 22, &mut first)));
            assert_eq!((f.text.as_bytes(), &f.wire[..]), (&payload[..], &wire[..]));
        }
    }

    #[test]
    fn waiting_for_bytes_reads_a_header_at_most_and_puts_it_back() {
        let wire = text(&[b'r'; 300]);
        let mut edge = FrameEdge::new(Chunks::new(&[&wire]));
        assert_eq!(block_on(readable(&mut edge)), Readable::Ready);
        assert_eq!(edge.get_mut().reads, 1);
        assert!(edge.holds_unread() && edge.at_message_edge());
        assert_eq!(
            block_on(readable(&mut edge)),
            Readable::Ready,
            "bytes held: at once"
        );
        assert_eq!(edge.get_mut().reads, 1, "without reading again");
        assert_eq!(rest(&mut edge), wire, "every byte still there, in order");

        let mut edge = FrameEdge::new(Chunks::new(&[]));
        assert_eq!(
            block_on(readable(&mut edge)),
            Readable::Gone,
            "end of stream"
        );

        // Nothing sent yet: pending, and dropping the wait loses nothing.
        let mut edge = FrameEdge::new(Chunks::new(&[]));
        edge.get_mut().stall = true;
        {
            let mut fut = std::pin::pin!(readable(&mut edge));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert!(!edge.holds_unread());
    }

    #[test]
    fn off_a_message_edge_waiting_for_bytes_reads_nothing() {
        let wire = frame(0x01, true, b"frag");
        let mut edge = FrameEdge::new(Chunks::new(&[&wire, &text(b"x")]));
        let mut buf = vec![0u8; wire.len()];
        block_on(edge.read_exact(&mut buf)).unwrap();
        let reads = edge.get_mut().reads;
        assert_eq!(block_on(readable(&mut edge)), Readable::Ready);
        assert_eq!(
            edge.get_mut().reads,
            reads,
            "the codec reads the rest itself"
        );
    }

    #[test]
    fn a_reused_buffer_never_shows_bytes_of_an_earlier_frame() {
        // A long frame leaves its bytes in the pool's buffers; shorter ones reuse them.
        let long = vec![b'L'; 40_000];
        let mut edge = FrameEdge::new(Chunks::new(&[&text(&long)]));
        let f = frame_of(read(&mut edge));
        assert_eq!(f.text.as_bytes(), long);
        drop(f);
        for len in [30_000usize, 20_000, 5, 0] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let wire = text(&payload);
            let next = text(b"next");
            for first in firsts(wire.len()) {
                read_whole_then(&wire, &payload, &next, first);
            }
        }
    }
}
