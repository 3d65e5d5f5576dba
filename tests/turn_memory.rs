//! Memory one large turn costs the gateway, counted by a global allocator that tracks live heap
//! bytes and their peak. A turn may hold a small multiple of its largest single message (the
//! upstream event being read and the same bytes on their way to the client), never a copy per
//! stage: the JSON answer, the SSE stream and the WebSocket relay alike.
//!
//! The mock upstream runs in its own process and the client reads into a stack buffer, so the
//! peak is the gateway's.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::heap::{reset_peak, Tracking, LIVE, PEAK};
use common::raw_ws::{masked_text_frame, read_frame_header};
use common::*;

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Taken by every test of this file: the counter is process-wide.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Text of the answer: the largest events (`output_text.done`, `content_part.done`,
/// `output_item.done`, `response.completed`) each carry all of it.
const ANSWER_BYTES: i64 = 4 * 1024 * 1024;

/// Most heap a relayed turn (SSE or WebSocket) may add at its peak, as a multiple of its
/// largest message: upstream's read buffer (which may hold the next large event too), the
/// message taken from it, and the client's copy on its way out. ~3.25 measured; before the SSE
/// sink flushed large batches early and stopped copying them into a second buffer, an SSE turn
/// peaked at ~18 times its largest message.
const MAX_RELAY_MULTIPLE: i64 = 4;
/// Most heap a JSON (non-streaming) turn may add at its peak: the response object is answered
/// from the event it came in, never copied (~1.25 measured; ~3.1 when it was copied twice).
const MAX_JSON_MULTIPLE: i64 = 2;

fn input() -> String {
    format!("[[mock:deltas=4,delta_bytes={}]]", ANSWER_BYTES / 4)
}

/// Reads `n` bytes through a stack buffer; `true` when `needle` occurs in them.
fn skip(stream: &mut TcpStream, mut n: usize, needle: &[u8]) -> bool {
    let mut buf = [0u8; 64 * 1024];
    // The end of the previous read, so a needle split across two reads is found.
    let keep = needle.len().saturating_sub(1);
    let mut kept = 0;
    let mut found = needle.is_empty();
    while n > 0 {
        let want = n.min(buf.len() - kept);
        stream
            .read_exact(&mut buf[kept..kept + want])
            .expect("read answer");
        let end = kept + want;
        found |= buf[..end].windows(needle.len().max(1)).any(|w| w == needle);
        kept = keep.min(end);
        buf.copy_within(end - kept..end, 0);
        n -= want;
    }
    found
}

/// Reads an HTTP response head byte by byte; returns it as text.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read head");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Peak heap added while `turn` runs on a gateway already warmed by one small turn.
fn peak_of(turn: impl FnOnce(SocketAddr)) -> i64 {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = MockProcess::start();
    let gw = gateway(config_for(
        &[up.base_url()],
        "rest_after_ms = 20\nadmin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 20",
    ));
    let admin = gw.admin_addr().expect("admin listener");
    let mut warm = connect(gw.addr());
    warm.turn(&create("gpt-5", "warm", true, None));
    // The warm session rests (gives back the buffers its turn grew) before the reading.
    eventually("the warm session rested", Duration::from_secs(20), || {
        metric_total(admin, "sessions_rested") >= 1
    });
    let before = LIVE.load(std::sync::atomic::Ordering::SeqCst);
    reset_peak();
    turn(gw.addr());
    PEAK.load(std::sync::atomic::Ordering::SeqCst) - before
}

fn assert_bounded(what: &str, peak: i64, multiple: i64) {
    println!(
        "{what}: peak {:.1} MiB for an answer of {} MiB",
        peak as f64 / 1048576.0,
        ANSWER_BYTES >> 20
    );
    assert!(
        peak <= multiple * ANSWER_BYTES,
        "{what}: a turn with an answer of {ANSWER_BYTES} bytes peaked at {peak} heap bytes"
    );
}

fn post(addr: SocketAddr, stream_flag: bool) -> TcpStream {
    let body = post_body("gpt-5", &input(), stream_flag);
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(90))).ok();
    let req = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send request");
    s
}

#[test]
fn a_large_json_answer_costs_a_small_multiple_of_its_size() {
    let peak = peak_of(|addr| {
        let mut s = post(addr, false);
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().expect("length"))
            })
            .expect("content-length");
        assert!(length > ANSWER_BYTES as usize);
        skip(&mut s, length, b"");
    });
    assert_bounded("JSON", peak, MAX_JSON_MULTIPLE);
}

#[test]
fn a_large_sse_answer_costs_a_small_multiple_of_its_size() {
    let peak = peak_of(|addr| {
        let mut s = post(addr, true);
        let head = read_head(&mut s);
        assert!(head.contains("chunked"), "{head}");
        // Chunks until the last (zero-size) one.
        loop {
            let size_line = read_line(&mut s);
            let size = usize::from_str_radix(size_line.trim(), 16).expect("chunk size");
            skip(&mut s, size + 2, b"");
            if size == 0 {
                break;
            }
        }
    });
    assert_bounded("SSE", peak, MAX_RELAY_MULTIPLE);
}

#[test]
fn a_large_websocket_answer_costs_a_small_multiple_of_its_size() {
    let peak = peak_of(|addr| {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(90))).ok();
        let upgrade = format!(
            "GET /v1/responses HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             authorization: Bearer {CLIENT_KEY}\r\n\r\n"
        );
        s.write_all(upgrade.as_bytes()).expect("upgrade");
        assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
        let frame = create("gpt-5", &input(), true, None);
        s.write_all(&masked_text_frame(frame.as_bytes()))
            .expect("send frame");
        // Server frames are unmasked: header, then the payload, until response.completed.
        loop {
            let len = read_frame_header(&mut s);
            // The mock writes an event's keys in no fixed order: look at the whole payload.
            if skip(&mut s, len, br#""type":"response.completed""#) {
                break;
            }
        }
    });
    assert_bounded("WebSocket", peak, MAX_RELAY_MULTIPLE);
}

fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).expect("read line");
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}
