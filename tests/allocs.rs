//! Allocations on per-request and per-frame paths, counted on the test's thread (issue 12: "0
//! allocations per relayed event"). A client's text frame read raw allocates nothing in steady
//! state: its buffers come from the shard's pool and become the frame's `Bytes` and `Utf8Bytes`
//! without an owner box each (`net/buf_pool.rs`), and go back to the pool when the turn drops
//! the frame. A request head's header lines take three allocations whatever their count
//! (`protocol/http1/headers.rs`).

#[path = "common/counting.rs"]
mod counting;

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::future::block_on;
use shardgate::net::client_read::{read_text_frame, FirstRead, RawRead};
use shardgate::net::FrameEdge;
use shardgate::protocol::http1::{parse_request, parse_request_into};

use counting::Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// Counts the allocations made on this thread (the test harness's own threads allocate too).
fn count() {
    let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
}

#[global_allocator]
static ALLOC: Counting = Counting { count };

/// A socket that serves the same bytes over and over.
struct Repeat {
    wire: Vec<u8>,
    at: usize,
}

/// Always readable: its bytes never run out.
impl shardgate::net::WaitReadable for Repeat {
    fn can_wait_readable(&self) -> bool {
        true
    }

    fn poll_readable(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl futures_lite::AsyncRead for Repeat {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = buf.len().min(this.wire.len() - this.at);
        buf[..n].copy_from_slice(&this.wire[this.at..this.at + n]);
        this.at = (this.at + n) % this.wire.len();
        Poll::Ready(Ok(n))
    }
}

/// An 8 KB `response.create` as a client sends it: one masked text frame.
fn client_frame() -> (String, Vec<u8>) {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let text = format!(
        r#"{{"type":"response.create","input":"{}"}}"#,
        "Résumé the diff. ".repeat(450)
    );
    let len = u16::try_from(text.len()).expect("a 16-bit length");
    let mut wire = vec![0x81, 0x80 | 126];
    wire.extend_from_slice(&len.to_be_bytes());
    wire.extend_from_slice(&key);
    wire.extend(text.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
    (text, wire)
}

#[test]
fn a_client_frame_read_raw_allocates_nothing_once_the_pool_is_warm() {
    let (text, wire) = client_frame();
    let mut edge = FrameEdge::new(Repeat {
        wire: wire.clone(),
        at: 0,
    });
    // The first frame tells the frame size: the others are read at once, header and payload.
    let mut first = FirstRead::default();
    let mut read = || match block_on(read_text_frame(&mut edge, 1 << 20, &mut first)) {
        RawRead::Frame(f) => {
            // A turn holds the text in more than one place (the request, the replay) and the
            // wire to forward it: every handle drops with the frame.
            let again = f.text.clone();
            let wire = f.wire.clone();
            (f, again, wire)
        }
        other => panic!("a raw frame, got {other:?}"),
    };
    let (f, again, got_wire) = read();
    assert_eq!(
        (f.text.as_str(), again.as_str(), &got_wire[..]),
        (text.as_str(), text.as_str(), &wire[..])
    );
    drop((f, again, got_wire));
    let before = ALLOCS.with(Cell::get);
    for _ in 0..200 {
        drop(read());
    }
    let frames_allocs = ALLOCS.with(Cell::get) - before;
    assert_eq!(frames_allocs, 0, "allocations in 200 frames");
}

/// A Codex-shaped `POST /v1/responses` head: 14 header lines.
const CODEX_POST_HEAD: &[u8] = b"POST /v1/responses HTTP/1.1\r\n\
host: gateway.internal:8443\r\n\
authorization: Bearer sk-gw-0123456789abcdef0123456789abcdef\r\n\
content-type: application/json\r\n\
accept: text/event-stream\r\n\
content-length: 30000\r\n\
openai-beta: responses=experimental\r\n\
session-id: 0199f3c2-7d1e-7a40-b8f5-3c9a2e6d1f07\r\n\
conversation_id: 0199f3c2-7d1e-7a40-b8f5-3c9a2e6d1f07\r\n\
originator: codex_cli_rs\r\n\
User-Agent: codex_cli_rs/0.46.0 (Ubuntu 24.4.0; x86_64) xterm-256color\r\n\
x-codex-turn-metadata: {\"turn\":7}\r\n\
x-client-request-id: 5f0c2a1b-3e48-49c9-d7a5-e2f1b0c3d4e5\r\n\
accept-encoding: identity\r\n\
connection: keep-alive\r\n\r\n";

#[test]
fn a_request_heads_header_lines_take_two_allocations_whatever_their_count() {
    let before = ALLOCS.with(Cell::get);
    let parsed = parse_request(CODEX_POST_HEAD);
    let allocs = ALLOCS.with(Cell::get) - before;
    let Ok(Some((head, used))) = parsed else {
        panic!("a whole valid head")
    };
    assert_eq!((used, head.headers.len()), (CODEX_POST_HEAD.len(), 14));
    assert_eq!(
        head.header_str("user-agent"),
        Some("codex_cli_rs/0.46.0 (Ubuntu 24.4.0; x86_64) xterm-256color")
    );
    // The path, then the names and values (one buffer) and their spans; `POST` is borrowed.
    assert_eq!(allocs, 3, "allocations to parse a 14-line head");
}

#[test]
fn a_head_parsed_into_the_last_ones_buffers_allocates_nothing() {
    let Ok(Some((mut head, _))) = parse_request(CODEX_POST_HEAD) else {
        panic!("a whole valid head")
    };
    let before = ALLOCS.with(Cell::get);
    let parsed = parse_request_into(CODEX_POST_HEAD, &mut head);
    let allocs = ALLOCS.with(Cell::get) - before;
    assert_eq!(parsed, Ok(Some(CODEX_POST_HEAD.len())));
    assert_eq!(head.headers.len(), 14);
    // A kept-alive connection's next head: its path, lines and spans fit the last one's.
    assert_eq!(allocs, 0, "allocations to parse a head into the last one");
}
