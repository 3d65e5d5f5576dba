//! A client's next message read raw (`net::client_read::read_text_frame`), message after
//! message, over client frames a peer delivers in reads of fuzzer-chosen sizes, with a
//! fuzzer-chosen size limit. The first input byte picks the read size and the limit.
//!
//! Invariants, against a reference reading of RFC 6455 §5.2 independent of the reader: a frame
//! is taken exactly when it is one whole masked text message (FIN, no RSV bits, length in its
//! fewest bytes, within the limit, valid UTF-8); a frame taken is the exact bytes sent and its
//! text their unmasked payload; when the reader gives a frame back (or the peer ends mid-frame)
//! the stream serves every byte not taken, in order, from that frame's first byte on.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt};
use libfuzzer_sys::fuzz_target;
use shardgate::net::client_read::{read_text_frame, FirstRead, RawRead};
use shardgate::net::frame_edge::FrameEdge;
use shardgate_fuzz::param;

/// A peer whose bytes arrive `step` at a time.
struct Peer<'a> {
    wire: &'a [u8],
    step: usize,
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
        Poll::Ready(Ok(n))
    }
}

/// Always readable: the reader's first message reads its header first, the next ones read at
/// once into a buffer of the last one's size.
impl shardgate::net::WaitReadable for Peer<'_> {
    fn can_wait_readable(&self) -> bool {
        true
    }

    fn poll_readable(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The frame at the start of `wire`, read by the reference: its length in bytes and, when the
/// raw reader must take it, its unmasked payload; `None` while incomplete.
fn reference(wire: &[u8], limit: u64) -> Option<(usize, Option<Vec<u8>>)> {
    let (b0, b1) = (*wire.first()?, *wire.get(1)?);
    let (ext, short) = match b1 & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let masked = b1 & 0x80 != 0;
    let header = 2 + ext + if masked { 4 } else { 0 };
    if wire.len() < header {
        return None;
    }
    let len = short.unwrap_or_else(|| {
        wire[2..2 + ext]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    });
    let minimal = match ext {
        0 => true,
        2 => len >= 126,
        _ => len > 0xffff && len >> 63 == 0,
    };
    let plain = b0 == 0x81 && masked && minimal && len <= limit;
    if !plain {
        // Given back on its header alone: its length does not matter.
        return Some((header, None));
    }
    let total = header + usize::try_from(len).ok()?;
    if wire.len() < total {
        return None;
    }
    let key = &wire[header - 4..header];
    let payload: Vec<u8> = wire[header..total]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    let valid = std::str::from_utf8(&payload).is_ok();
    Some((total, valid.then_some(payload)))
}

fuzz_target!(|data: &[u8]| {
    let Some((choice, wire)) = param(data) else {
        return;
    };
    let step = usize::from(choice & 0x0f) * 9 + 1;
    let limit = u64::from(choice >> 4) * 40;
    let mut edge = FrameEdge::new(Peer { wire, step });
    let mut at = 0;
    let mut first = FirstRead::default();
    futures_lite::future::block_on(async {
        loop {
            let expected = reference(&wire[at..], limit);
            match read_text_frame(&mut edge, limit, &mut first).await {
                RawRead::Frame(f) => {
                    let Some((total, Some(payload))) = expected else {
                        panic!("took a frame the reference gives back, at {at}");
                    };
                    assert_eq!(&f.wire[..], &wire[at..at + total], "the bytes sent");
                    assert_eq!(
                        f.text.as_bytes(),
                        payload.as_slice(),
                        "the unmasked payload"
                    );
                    at += total;
                    assert!(edge.at_message_edge());
                }
                RawRead::Codec => {
                    assert!(
                        matches!(expected, Some((_, None))),
                        "gave back a frame the reference takes, at {at}"
                    );
                    break;
                }
                RawRead::Gone => {
                    assert!(expected.is_none(), "gone before a complete frame, at {at}");
                    break;
                }
            }
        }
        let mut rest = Vec::new();
        edge.read_to_end(&mut rest)
            .await
            .expect("an in-memory read");
        assert_eq!(
            rest,
            &wire[at..],
            "every byte not taken is served again, in order"
        );
    });
});
