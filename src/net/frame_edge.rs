//! Reads of a WebSocket byte stream cut at frame ends.
//!
//! A WebSocket reader keeps its receive buffer at the size of the largest frame it read (a
//! 30 KiB Codex `response.create` grows it from 16 KiB to 46 KiB) and its send buffer at the
//! size of the largest batch it wrote, for the connection's whole life. It cannot be shrunk,
//! only rebuilt, and a rebuild is safe only when the reader holds no bytes it has not
//! processed. [`FrameEdge`] makes that knowable: no read it serves crosses the end of a frame,
//! so once the reader has returned a message it holds nothing, and [`FrameEdge::at_message_edge`]
//! says when the stream is between messages. Bytes read past a frame end wait here: for a
//! client, which sends a frame now and then, in a `Vec` allocated only then and freed once given
//! out; for an upstream, which sends many events per read, in one kept until
//! [`FrameEdge::release`], so that relaying events allocates nothing.
//!
//! The stream under an upstream WebSocket also carries the HTTP upgrade response first:
//! [`FrameEdge::after_http_head`] cuts reads at the end of that head too, so the handshake never
//! reads a frame byte and every frame byte passes the frame scan.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::AsyncRead;

use super::replay::Replay;
use super::WaitReadable;

/// A stream whose reads stop at every WebSocket frame end; writes go straight through.
pub struct FrameEdge<S> {
    inner: S,
    /// Bytes read past a frame end, served before `inner` is read again.
    held: Replay,
    cut: Cut,
}

/// Where reads are cut: at the end of an HTTP head, then at every frame end.
#[derive(Debug, Default)]
struct Cut {
    /// While an HTTP head is read: how much of its `\r\n\r\n` end was seen.
    head: Option<usize>,
    scan: FrameScan,
}

/// The end of an HTTP head.
const HEAD_END: &[u8] = b"\r\n\r\n";

impl<S> FrameEdge<S> {
    /// Wraps a stream positioned at the start of a frame (right after the upgrade).
    pub fn new(inner: S) -> Self {
        FrameEdge {
            inner,
            held: Replay::default(),
            cut: Cut::default(),
        }
    }

    /// Wraps a stream about to carry an HTTP upgrade response and then WebSocket frames (an
    /// upstream connection before its handshake): reads stop at the end of the head, then at
    /// every frame end. Bytes read past an end are kept in a buffer reused for the next ones
    /// until [`FrameEdge::release`].
    pub fn after_http_head(inner: S) -> Self {
        FrameEdge {
            inner,
            held: Replay::kept(),
            cut: Cut {
                head: Some(0),
                scan: FrameScan::default(),
            },
        }
    }

    /// `true` when every frame served so far is complete and none of them left a fragmented
    /// message open: a reader that processed everything it was served holds nothing.
    pub fn at_message_edge(&self) -> bool {
        self.cut.head.is_none() && self.cut.scan.at_frame_start() && !self.cut.scan.mid_message
    }

    /// `true` while bytes read past a frame end wait to be served.
    pub fn holds_unread(&self) -> bool {
        self.held.has_pending()
    }

    /// Frees the buffer of bytes read past a frame end, unless it still holds some: for a
    /// connection about to rest.
    pub fn release(&mut self) {
        self.held.release();
    }

    /// Puts `bytes` back in front of what is still to be served: bytes a raw reader
    /// ([`FrameEdge::poll_read_raw`]) took but did not consume, starting at a frame start, so
    /// that the WebSocket reads them next, cut at frame ends as usual.
    pub fn unread(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.held.unread(bytes);
        }
    }

    /// The wrapped stream, to look at it.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, to change it.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped stream. Bytes held past a frame end are dropped: only for a stream whose
    /// lower layer can replay them (a recording `PrefixedStream`, when a session is handed to
    /// another shard).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl Cut {
    /// How many of `bytes` (which follow what was served so far) to serve: up to the end of
    /// the HTTP head or of the current frame, at least one when `bytes` is not empty.
    fn at(&mut self, bytes: &[u8]) -> usize {
        let Some(seen) = self.head.as_mut() else {
            return self.scan.advance(bytes);
        };
        for (i, b) in bytes.iter().enumerate() {
            *seen = match (*b == HEAD_END[*seen], *b == HEAD_END[0]) {
                (true, _) => *seen + 1,
                (false, true) => 1,
                (false, false) => 0,
            };
            if *seen == HEAD_END.len() {
                self.head = None;
                return i + 1;
            }
        }
        bytes.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameEdge<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.held.has_pending() {
            // Cut on the held bytes first and copy only what is served: copying the whole
            // rest each time would cost the square of the frames per read.
            let cut = &mut this.cut;
            return Poll::Ready(Ok(this.held.serve(buf, |rest| cut.at(rest))));
        }
        let n = match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        let served = this.cut.at(&buf[..n]);
        if served < n {
            this.held.push(&buf[served..n]);
        }
        Poll::Ready(Ok(served))
    }
}

impl<S: AsyncRead + Unpin> FrameEdge<S> {
    /// Reads without cutting at frame ends: held bytes first, else the stream. Only at a
    /// message edge ([`FrameEdge::at_message_edge`]), for a reader that splits frames itself and
    /// gives back ([`FrameEdge::unread`]) whatever it does not consume, from a frame start:
    /// the frame scan then stays at a frame start, as the bytes it saw say.
    pub fn poll_read_raw(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.held.has_pending() {
            return Poll::Ready(Ok(self.held.serve(buf, |rest| rest.len())));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Bytes held past a frame end are there to read at once.
impl<S: WaitReadable> WaitReadable for FrameEdge<S> {
    fn can_wait_readable(&self) -> bool {
        self.inner.can_wait_readable()
    }

    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.has_pending() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_readable(cx)
    }
}

crate::net::forward_async_write!(FrameEdge);

/// Longest frame header: 2 bytes, an 8-byte extended length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Where a byte stream is within WebSocket framing (RFC 6455 §5.2).
#[derive(Debug, Default)]
struct FrameScan {
    /// The current frame's header bytes seen so far.
    header: [u8; MAX_HEADER],
    header_len: usize,
    /// Payload bytes of the current frame not seen yet (its header is complete when non-zero).
    payload_left: u64,
    /// The last data frame had FIN clear: a fragmented message is open.
    mid_message: bool,
}

impl FrameScan {
    fn at_frame_start(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// How many of `bytes` (which follow what was seen so far) belong to the current frame,
    /// up to and including its end; at least one when `bytes` is not empty.
    fn advance(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        while used < bytes.len() {
            if self.payload_left > 0 {
                let n = (bytes.len() - used)
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                used += n;
                self.payload_left -= n as u64;
                if self.payload_left == 0 {
                    return used;
                }
                continue;
            }
            self.header[self.header_len] = bytes[used];
            self.header_len += 1;
            used += 1;
            if let Some(payload) = self.header_complete() {
                self.header_len = 0;
                let (fin, opcode) = (self.header[0] & 0x80 != 0, self.header[0] & 0x0f);
                if opcode < 8 {
                    self.mid_message = !fin;
                }
                if payload == 0 {
                    return used;
                }
                self.payload_left = payload;
            }
        }
        used
    }

    /// The payload length once the whole header was seen.
    fn header_complete(&self) -> Option<u64> {
        let h = &self.header[..self.header_len];
        if h.len() < 2 {
            return None;
        }
        let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
        let (ext, len7) = match h[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        if h.len() < 2 + ext + mask {
            return None;
        }
        Some(len7.unwrap_or_else(|| {
            h[2..2 + ext]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncReadExt;

    /// A masked client frame: FIN as given, opcode, payload (zero mask).
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn reads_stop_at_each_frame_end_and_hold_the_rest() {
        futures_lite::future::block_on(async {
            let big = vec![b'x'; 70_000];
            let frames = [
                frame(true, 1, b"first"),
                frame(true, 9, b""),
                frame(true, 2, &big),
                frame(true, 1, &[b'y'; 300]),
            ];
            let wire: Vec<u8> = frames.concat();
            let mut edge = FrameEdge::new(wire.as_slice());
            let mut buf = vec![0u8; 200_000];
            for f in &frames {
                let mut got = 0;
                while got < f.len() {
                    let n = edge.read(&mut buf[got..]).await.unwrap();
                    assert!(n > 0);
                    got += n;
                    assert_eq!(
                        edge.at_message_edge(),
                        got == f.len(),
                        "frame of {}",
                        f.len()
                    );
                }
                assert_eq!(got, f.len(), "a read crossed a frame end");
                assert_eq!(&buf[..got], f.as_slice());
            }
            assert_eq!(edge.read(&mut buf).await.unwrap(), 0);
            assert!(
                edge.held.capacity() == 0,
                "held bytes are freed once served"
            );
        });
    }

    #[test]
    fn headers_split_over_reads_and_fragmented_messages_are_tracked() {
        futures_lite::future::block_on(async {
            let wire = [
                frame(false, 1, b"frag-"),
                frame(true, 9, b"ping"),
                frame(true, 0, b"end"),
            ]
            .concat();
            let mut edge = FrameEdge::new(wire.as_slice());
            let mut one = [0u8; 1];
            let mut edges = Vec::new();
            for _ in 0..wire.len() {
                assert_eq!(edge.read(&mut one).await.unwrap(), 1);
                edges.push(edge.at_message_edge());
            }
            // Only the end of the last frame closes the fragmented message.
            assert_eq!(edges.iter().filter(|e| **e).count(), 1);
            assert_eq!(edges.last(), Some(&true));
        });
    }

    /// An unmasked server frame, as an upstream sends it.
    fn server_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x81, 126];
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn an_http_head_ends_a_read_and_the_frames_after_it_are_cut_too() {
        futures_lite::future::block_on(async {
            let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
            let frames = [server_frame(&[b'a'; 200]), server_frame(&[b'b'; 300])];
            let wire = [head.clone(), frames[0].clone(), frames[1].clone()].concat();
            let mut edge = FrameEdge::after_http_head(wire.as_slice());
            let mut buf = vec![0u8; 4096];
            let n = edge.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], head.as_slice(), "the head read stops at its end");
            assert!(
                edge.at_message_edge(),
                "between the head and the first frame"
            );
            for f in &frames {
                let n = edge.read(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], f.as_slice());
                assert!(edge.at_message_edge());
            }
            assert!(
                edge.held.capacity() > 0,
                "an upstream's held buffer is kept for the next reads"
            );
            edge.release();
            assert_eq!(edge.held.capacity(), 0, "released once served");
            assert_eq!(edge.read(&mut buf).await.unwrap(), 0);
        });
    }

    #[test]
    fn a_head_end_split_over_reads_and_false_starts_are_found() {
        futures_lite::future::block_on(async {
            let head = b"HTTP/1.1 101 OK\r\nA: \r\r\n\rb\r\n\r\n".to_vec();
            let wire = [head.clone(), server_frame(b"x")].concat();
            let mut edge = FrameEdge::after_http_head(wire.as_slice());
            let mut one = [0u8; 1];
            for _ in 0..head.len() {
                assert!(!edge.at_message_edge(), "inside the head");
                assert_eq!(edge.read(&mut one).await.unwrap(), 1);
            }
            assert!(edge.at_message_edge(), "the head ended where it does");
            let mut rest = [0u8; 64];
            let n = edge.read(&mut rest).await.unwrap();
            assert_eq!(&rest[..n], server_frame(b"x").as_slice());
        });
    }

    #[test]
    fn raw_reads_give_back_what_they_do_not_consume_and_the_cut_reads_go_on_from_there() {
        futures_lite::future::block_on(async {
            let (one, two) = (server_frame(b"one"), server_frame(b"two"));
            let wire = [one.clone(), two.clone(), server_frame(b"three")].concat();
            let mut edge = FrameEdge::after_http_head(wire.as_slice());
            edge.cut.head = None;
            // A cut read holds the rest; a raw read takes it all, across frame ends.
            let mut buf = [0u8; 64];
            let n = edge.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], one.as_slice());
            let mut raw = [0u8; 64];
            let n = futures_lite::future::poll_fn(|cx| edge.poll_read_raw(cx, &mut raw))
                .await
                .unwrap();
            assert_eq!(n, wire.len() - one.len(), "not cut at a frame end");
            // The reader consumed `two` only; the rest goes back, and is read cut as before.
            edge.unread(&raw[two.len()..n]);
            assert!(edge.holds_unread() && edge.at_message_edge());
            let n = edge.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], server_frame(b"three").as_slice());
            assert!(edge.at_message_edge());
            assert_eq!(edge.read(&mut buf).await.unwrap(), 0);
        });
    }

    #[test]
    fn release_keeps_bytes_not_served_yet() {
        futures_lite::future::block_on(async {
            let wire = [server_frame(b"one"), server_frame(b"two")].concat();
            let mut edge = FrameEdge::after_http_head(wire.as_slice());
            edge.cut.head = None;
            let mut buf = [0u8; 64];
            let n = edge.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], server_frame(b"one").as_slice());
            edge.release();
            let n = edge.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], server_frame(b"two").as_slice());
        });
    }
}
