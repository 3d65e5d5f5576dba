//! Allocations per relayed turn of a warm client WebSocket session, counted process-wide by a
//! global allocator (issue 12: the relay should cost no more than a byte relay). The mock
//! upstream runs in its own process and the client writes and reads through stack buffers, so
//! what is counted is the gateway's: shard, control thread and the rest.
//!
//! Per turn the gateway used to build two glommio timers (the upstream send's timeout and the
//! relay's silence timer), each an allocation; both now run on the session's one timer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::heap::{Tracking, ALLOCS};
use common::*;

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Turns counted, after [`WARM_TURNS`] that fill the pools and caches.
const TURNS: u64 = 200;
const WARM_TURNS: u64 = 20;

/// Most allocations a turn of a warm session may make, the whole process counted: 31 measured
/// at most over several runs (33 before the turn's two timers became the session's one).
const MAX_ALLOCS_PER_TURN: f64 = 31.5;

/// A masked text frame (zero key) of `payload`, as a client sends it.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81u8];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// Reads an HTTP response head byte by byte into a stack buffer; `true` for a 101.
fn switched(stream: &mut TcpStream) -> bool {
    let mut head = [0u8; 1024];
    let mut n = 0;
    while !head[..n].ends_with(b"\r\n\r\n") && n < head.len() {
        stream.read_exact(&mut head[n..n + 1]).expect("read head");
        n += 1;
    }
    head.starts_with(b"HTTP/1.1 101")
}

/// Reads server frames (unmasked) through a stack buffer until `response.completed`.
fn read_turn(stream: &mut TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let mut h = [0u8; 2];
        stream.read_exact(&mut h).expect("frame header");
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                stream.read_exact(&mut l).expect("length");
                u16::from_be_bytes(l) as usize
            }
            127 => {
                let mut l = [0u8; 8];
                stream.read_exact(&mut l).expect("length");
                u64::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        assert!(len <= buf.len(), "an event of {len} bytes");
        stream.read_exact(&mut buf[..len]).expect("payload");
        let payload = &buf[..len];
        let needle = br#""type":"response.completed""#;
        if payload.windows(needle.len()).any(|w| w == needle) {
            return;
        }
    }
}

#[test]
fn a_warm_sessions_turn_makes_a_bounded_number_of_allocations() {
    let up = MockProcess::start();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut s = TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let upgrade = format!(
        "GET /v1/responses HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         authorization: Bearer {CLIENT_KEY}\r\n\r\n"
    );
    s.write_all(upgrade.as_bytes()).expect("upgrade");
    assert!(switched(&mut s));
    let frame = masked_text_frame(create("gpt-5", "hello", true, None).as_bytes());
    for _ in 0..WARM_TURNS {
        s.write_all(&frame).expect("send frame");
        read_turn(&mut s);
    }
    let before = ALLOCS.load(Ordering::SeqCst);
    for _ in 0..TURNS {
        s.write_all(&frame).expect("send frame");
        read_turn(&mut s);
    }
    let per_turn = (ALLOCS.load(Ordering::SeqCst) - before) as f64 / TURNS as f64;
    println!("allocations per turn: {per_turn:.2}");
    assert!(
        per_turn <= MAX_ALLOCS_PER_TURN,
        "{per_turn:.2} allocations per turn (at most {MAX_ALLOCS_PER_TURN})"
    );
}
