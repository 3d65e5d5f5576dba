//! The WebSocket frame-edge reader (`net::frame_edge::FrameEdge`): a byte stream read through
//! it, delivered by the peer in reads of fuzzer-chosen sizes, into buffers of a fuzzer-chosen
//! size. The first input byte picks the mode (client frames, or an upstream's HTTP upgrade
//! response followed by frames) and the sizes.
//!
//! Invariants: the bytes served are exactly the bytes sent; a read never crosses the end of a
//! frame (or of the HTTP head); `at_message_edge` is true exactly at the end of a frame that
//! leaves no fragmented message open; `holds_unread` is true exactly while bytes read from
//! the peer wait to be served. Frame ends are computed here by a reference reading of
//! RFC 6455 §5.2, independent of the scanner under test.
#![no_main]

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt};
use libfuzzer_sys::fuzz_target;
use shardgate::net::frame_edge::FrameEdge;
use shardgate_fuzz::param;

/// A peer whose bytes arrive `step` at a time; `given` counts the bytes it handed over.
struct Peer<'a> {
    wire: &'a [u8],
    step: usize,
    given: Rc<Cell<usize>>,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.step.min(buf.len()).min(self.wire.len());
        buf[..n].copy_from_slice(&self.wire[..n]);
        self.wire = &self.wire[n..];
        self.given.set(self.given.get() + n);
        Poll::Ready(Ok(n))
    }
}

/// Offsets where a frame (or the HTTP head) ends, each with whether a fragmented message is
/// open after it; the frames of `wire` after `start`, as RFC 6455 §5.2 lays them out.
fn edges(wire: &[u8], start: usize) -> Vec<(usize, bool)> {
    let mut out = Vec::new();
    let mut at = start;
    let mut open = false;
    while at + 2 <= wire.len() {
        let (b0, b1) = (wire[at], wire[at + 1]);
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        let header = 2 + ext + mask;
        if at + header > wire.len() {
            break;
        }
        let len = match ext {
            0 => u64::from(b1 & 0x7f),
            _ => wire[at + 2..at + 2 + ext]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        };
        let Some(end) = u64::try_from(at + header)
            .ok()
            .and_then(|h| h.checked_add(len))
            .and_then(|e| usize::try_from(e).ok())
        else {
            break;
        };
        if b0 & 0x0f < 8 {
            open = b0 & 0x80 == 0;
        }
        if end > wire.len() {
            break;
        }
        out.push((end, open));
        at = end;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((choice, wire)) = param(data) else {
        return;
    };
    let upstream = choice & 0x80 != 0;
    let step = usize::from(choice >> 3 & 0x0f) * 7 + 1;
    let read_size = usize::from(choice & 0x07) * 9 + 1;
    let given = Rc::new(Cell::new(0));
    let peer = Peer {
        wire,
        step,
        given: given.clone(),
    };
    let (mut edge, mut expected) = if upstream {
        let Some(head_end) = wire
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
        else {
            return;
        };
        let mut e = vec![(head_end, false)];
        e.extend(edges(wire, head_end));
        (FrameEdge::after_http_head(peer), e)
    } else {
        (FrameEdge::new(peer), edges(wire, 0))
    };
    expected.reverse();
    let mut served = Vec::with_capacity(wire.len());
    let mut buf = vec![0u8; read_size];
    futures_lite::future::block_on(async {
        loop {
            let n = edge.read(&mut buf).await.expect("an in-memory read");
            if n == 0 {
                break;
            }
            served.extend_from_slice(&buf[..n]);
            if let Some((end, _)) = expected.last().filter(|(end, _)| *end < served.len()) {
                panic!("a read crossed the edge at {end} (now at {})", served.len());
            }
            let at_edge = match expected.last() {
                Some(&(end, open)) if end == served.len() => {
                    expected.pop();
                    !open
                }
                _ => false,
            };
            assert_eq!(edge.at_message_edge(), at_edge, "at {}", served.len());
            assert_eq!(edge.holds_unread(), given.get() > served.len());
        }
    });
    assert_eq!(served, wire, "the bytes served are the bytes sent");
});
