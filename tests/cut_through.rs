//! The cut-through relay: upstream text frames reach a client WebSocket as the bytes they came
//! in, and every frame the fast path must not judge (a fragmented message, a ping in the middle
//! of one, a frame over the size limit, a close, a length not written in its fewest bytes,
//! invalid UTF-8) goes through the WebSocket codec, so the client sees what it always saw.
//!
//! Client to upstream: a client's message that is one plain masked text frame is read raw (no
//! codec), however its bytes are split over TCP writes, and goes upstream as the bytes the client
//! sent (its masking key kept) unless the gateway rewrites it; a rewritten one is masked again.
//! Every other client frame (fragments, pings between them, binary, unmasked, oversize, invalid
//! UTF-8, extension bits, close) is handed to the codec and gets what it always got.
//!
//! The upstream is a raw TCP server in the test that writes scripted frame bytes as they are and
//! records every frame the gateway sends it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use shardgate::tungstenite::handshake::derive_accept_key;

/// A frame the gateway sent upstream: opcode, unmasked payload, and its bytes as they came.
#[derive(Debug, Clone)]
struct Sent {
    opcode: u8,
    payload: Vec<u8>,
    wire: Vec<u8>,
}

/// A raw upstream: answers every text frame with the bytes `script` gives and records what the
/// gateway sends (close frames are answered with a close, then the connection ends).
struct RawUpstream {
    addr: SocketAddr,
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl RawUpstream {
    fn start(script: fn() -> Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let record = record.clone();
                std::thread::spawn(move || serve(conn, script, &record));
            }
        });
        RawUpstream { addr, sent }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits for a frame with `opcode` from the gateway; its payload.
    fn wait_for(&self, opcode: u8) -> Vec<u8> {
        let mut found = None;
        eventually(
            "the frame reached upstream",
            Duration::from_secs(10),
            || {
                found = self
                    .sent
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|s| s.opcode == opcode)
                    .cloned();
                found.is_some()
            },
        );
        found.map(|s| s.payload).unwrap_or_default()
    }
}

fn serve(mut conn: TcpStream, script: fn() -> Vec<u8>, record: &Mutex<Vec<Sent>>) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if conn.write_all(reply.as_bytes()).is_err() {
        return;
    }
    while let Some((opcode, payload, wire)) = read_masked(&mut conn) {
        record.lock().unwrap().push(Sent {
            opcode,
            payload: payload.clone(),
            wire,
        });
        let answered = match opcode {
            1 => conn.write_all(&script()).is_ok(),
            8 => {
                let _ = conn.write_all(&frame(0x88, &payload));
                false
            }
            _ => true,
        };
        if !answered {
            return;
        }
    }
}

/// One masked frame from the gateway: opcode, unmasked payload, the frame's bytes.
fn read_masked(conn: &mut TcpStream) -> Option<(u8, Vec<u8>, Vec<u8>)> {
    let mut h = [0u8; 2];
    conn.read_exact(&mut h).ok()?;
    let mut wire = h.to_vec();
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            conn.read_exact(&mut b).ok()?;
            wire.extend_from_slice(&b);
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            conn.read_exact(&mut b).ok()?;
            wire.extend_from_slice(&b);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    conn.read_exact(&mut mask).ok()?;
    wire.extend_from_slice(&mask);
    let mut payload = vec![0u8; len as usize];
    conn.read_exact(&mut payload).ok()?;
    wire.extend_from_slice(&payload);
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Some((h[0] & 0x0f, payload, wire))
}

/// An unmasked frame with first byte `b0`, its length in the fewest bytes.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

fn text(payload: &str) -> Vec<u8> {
    frame(0x81, payload.as_bytes())
}

const CREATED: &str =
    r#"{"type":"response.created","response":{"id":"resp_ct1","status":"in_progress"}}"#;
const DELTA: &str = r#"{"type":"response.output_text.delta","delta":"hello"}"#;
const COMPLETED: &str = r#"{"type":"response.completed","response":{"id":"resp_ct1","status":"completed","output":[],"usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}}"#;

/// A gateway (one shard, stats every 50 ms, upstream messages up to 4 KiB) over `up`.
fn gateway_over(up: &RawUpstream) -> shardgate::gateway::Gateway {
    gateway_mapping(up, "")
}

/// As [`gateway_over`], the account's settings followed by `account_extra`.
fn gateway_mapping(up: &RawUpstream, account_extra: &str) -> shardgate::gateway::Gateway {
    gateway_with(up, "", account_extra)
}

/// As [`gateway_over`], the server's settings followed by `server_extra` and the account's by
/// `account_extra`.
fn gateway_with(
    up: &RawUpstream,
    server_extra: &str,
    account_extra: &str,
) -> shardgate::gateway::Gateway {
    gateway(parse_config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\ndrain_timeout_secs = 5\n\
         admin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 50\n{server_extra}\n\
         [upstream]\nmax_message_bytes = 4096\nretry_max_attempts = 1\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n\
         [[accounts]]\nid = \"acct-0\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 4\n{account_extra}\n",
        up.base_url()
    )))
}

/// Runs one turn against an upstream answering with `script`, of which `relayed` upstream
/// events reach the client: the client's events (JSON texts, an error event the gateway
/// writes included), the events cut through and relayed in all, and the upstream.
fn one_turn(script: fn() -> Vec<u8>, relayed: u64) -> (Vec<String>, u64, u64, RawUpstream) {
    let up = RawUpstream::start(script);
    let gw = gateway_over(&up);
    let admin = gw.admin_addr().expect("admin");
    let mut c = connect(gw.addr());
    c.send(&create("gpt-test", "hi", true, None));
    let turn = c.read_turn();
    let events: Vec<String> = turn.events.iter().map(|v| v.to_string()).collect();
    eventually(
        "the shard shipped its counters",
        Duration::from_secs(10),
        || metric_total(admin, "events_relayed") >= relayed,
    );
    let cut = metric_total(admin, "events_cut_through");
    let relayed = metric_total(admin, "events_relayed");
    (events, cut, relayed, up)
}

fn json(s: &str) -> String {
    sonic_rs::from_str::<sonic_rs::Value>(s)
        .unwrap()
        .to_string()
}

#[test]
fn plain_text_frames_are_cut_through_as_they_came() {
    let (events, cut, relayed, _up) = one_turn(
        || [text(CREATED), text(DELTA), text(DELTA), text(COMPLETED)].concat(),
        4,
    );
    assert_eq!(
        events,
        [CREATED, DELTA, DELTA, COMPLETED].map(json).to_vec(),
        "every event, in order, as upstream sent it"
    );
    assert_eq!((cut, relayed), (4, 4), "every event cut through");
}

#[test]
fn a_fragmented_message_with_a_ping_inside_goes_through_the_codec() {
    let (events, cut, relayed, up) = one_turn(plain_and_fragmented, 4);
    assert_eq!(
        events,
        [CREATED, DELTA, DELTA, COMPLETED].map(json).to_vec(),
        "the fragments reach the client as one message, between the frames around them"
    );
    assert_eq!(up.wait_for(0xA), b"mid", "the ping is answered");
    assert_eq!(relayed, 4);
    assert_eq!(cut, 3, "the fragmented message went through the codec");
}

#[test]
fn a_frame_over_the_size_limit_fails_the_turn_as_before() {
    let (events, cut, _, up) = one_turn(
        || {
            let big = format!(
                r#"{{"type":"response.output_text.delta","delta":"{}"}}"#,
                "x".repeat(5000)
            );
            [text(CREATED), text(&big), text(COMPLETED)].concat()
        },
        1,
    );
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[1].contains("upstream_message_too_big"), "{events:?}");
    assert_eq!(cut, 1);
    let close = up.wait_for(0x8);
    assert_eq!(
        &close[..2],
        &1009u16.to_be_bytes(),
        "upstream closed with 1009"
    );
}

#[test]
fn an_upstream_close_mid_turn_reaches_the_client_as_before() {
    let (events, cut, _, _up) = one_turn(
        || {
            let mut close = 1011u16.to_be_bytes().to_vec();
            close.extend_from_slice(b"bye");
            [text(CREATED), frame(0x88, &close)].concat()
        },
        1,
    );
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[1].contains("upstream_closed"), "{events:?}");
    assert!(events[1].contains("1011"), "{events:?}");
    assert_eq!(cut, 1);
}

#[test]
fn a_length_not_in_its_fewest_bytes_is_not_cut_through() {
    let (events, cut, relayed, _up) = one_turn(
        || {
            let mut padded = vec![0x81, 126];
            padded.extend_from_slice(&(DELTA.len() as u16).to_be_bytes());
            padded.extend_from_slice(DELTA.as_bytes());
            [text(CREATED), padded, text(COMPLETED)].concat()
        },
        3,
    );
    assert_eq!(events, [CREATED, DELTA, COMPLETED].map(json).to_vec());
    assert_eq!((cut, relayed), (2, 3), "the padded frame was re-encoded");
}

#[test]
fn invalid_utf8_is_never_forwarded() {
    let (events, cut, _, up) = one_turn(
        || {
            let mut bad = DELTA.as_bytes().to_vec();
            bad[40] = 0xff;
            [text(CREATED), frame(0x81, &bad), text(COMPLETED)].concat()
        },
        1,
    );
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[1].contains("upstream_protocol_error"), "{events:?}");
    assert_eq!(cut, 1);
    let close = up.wait_for(0x8);
    assert_eq!(
        &close[..2],
        &1007u16.to_be_bytes(),
        "upstream closed with 1007"
    );
}

/// The masking key the raw client uses.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client WebSocket over a raw socket: sends frames with [`MASK`], reads events as text.
struct RawClient {
    s: TcpStream,
}

impl RawClient {
    fn connect(addr: SocketAddr) -> RawClient {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        write!(
            s,
            "GET /v1/responses HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {CLIENT_KEY}\r\n\r\n"
        )
        .expect("upgrade request");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).expect("upgrade answer"), 1, "closed");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        RawClient { s }
    }

    /// Sends `text` as one masked frame; the bytes sent.
    fn send(&mut self, text: &str) -> Vec<u8> {
        let out = masked(0x81, text.as_bytes());
        self.s.write_all(&out).expect("send");
        out
    }

    /// Writes `bytes` in pieces cut at `cuts`, each its own TCP segment (no Nagle).
    fn send_split(&mut self, bytes: &[u8], cuts: &[usize]) {
        self.s.set_nodelay(true).expect("nodelay");
        let mut at = 0;
        for &cut in cuts.iter().chain([&bytes.len()]) {
            self.s.write_all(&bytes[at..cut]).expect("send");
            self.s.flush().expect("flush");
            at = cut;
        }
    }

    /// The next frame from the gateway: opcode and payload.
    fn next_frame(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).expect("a frame");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.s.read_exact(&mut b).expect("length");
                usize::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                self.s.read_exact(&mut b).expect("length");
                usize::try_from(u64::from_be_bytes(b)).expect("a length")
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).expect("payload");
        (h[0] & 0x0f, payload)
    }

    /// Reads text frames until one contains `needle`.
    fn read_until(&mut self, needle: &str) {
        loop {
            let (_, payload) = self.next_frame();
            if String::from_utf8_lossy(&payload).contains(needle) {
                return;
            }
        }
    }

    /// Reads frames until the gateway's close; its code.
    fn close_code(&mut self) -> u16 {
        loop {
            let (opcode, payload) = self.next_frame();
            if opcode == 8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// A client frame with first byte `b0`, masked with [`MASK`], its length in the fewest bytes.
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = frame(b0, payload);
    let at = out.len() - payload.len();
    out[1] |= 0x80;
    out.truncate(at);
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

#[test]
fn an_unchanged_client_frame_goes_upstream_as_the_client_masked_it() {
    let up = RawUpstream::start(|| [text(CREATED), text(COMPLETED)].concat());
    let gw = gateway_over(&up);
    let mut c = RawClient::connect(gw.addr());
    let sent = c.send(&create("gpt-test", &"padding ".repeat(40), true, None));
    c.read_until("response.completed");
    let got = up.sent.lock().unwrap()[0].clone();
    assert_eq!(got.opcode, 1);
    assert!(
        got.wire == sent,
        "upstream got other bytes than the client sent: the frame was masked again"
    );
}

#[test]
fn a_rewritten_client_frame_is_masked_again() {
    let up = RawUpstream::start(|| [text(CREATED), text(COMPLETED)].concat());
    let gw = gateway_mapping(&up, "model_map = { \"gpt-test\" = \"gpt-upstream\" }");
    let mut c = RawClient::connect(gw.addr());
    let sent = c.send(&create("gpt-test", "hi", true, None));
    c.read_until("response.completed");
    let got = up.sent.lock().unwrap()[0].clone();
    let payload = String::from_utf8(got.payload).unwrap();
    assert!(payload.contains("\"gpt-upstream\""), "{payload}");
    assert_ne!(got.wire[2..6], sent[2..6], "a fresh masking key");
}

#[test]
fn client_frames_split_over_writes_are_read_raw_and_go_upstream_as_they_came() {
    let up = RawUpstream::start(|| [text(CREATED), text(COMPLETED)].concat());
    let gw = gateway_over(&up);
    let admin = gw.admin_addr().expect("admin");
    let mut c = RawClient::connect(gw.addr());
    // A 16-bit and a 64-bit length; the header cut after one byte and inside the length, the
    // payload cut too.
    let frames = [
        (
            masked(
                0x81,
                create("gpt-test", &"a".repeat(30_000), true, None).as_bytes(),
            ),
            vec![1, 3, 9, 20_000],
        ),
        (
            masked(
                0x81,
                create("gpt-test", &"b".repeat(70_000), true, None).as_bytes(),
            ),
            vec![1, 2, 7, 12, 40_000],
        ),
    ];
    for (i, (wire, cuts)) in frames.iter().enumerate() {
        c.send_split(wire, cuts);
        c.read_until("response.completed");
        let got = up.sent.lock().unwrap()[i].clone();
        assert_eq!(got.opcode, 1);
        assert!(
            got.wire == *wire,
            "turn {i}: upstream got other bytes than the client sent"
        );
    }
    eventually("both frames were read raw", Duration::from_secs(10), || {
        metric_total(admin, "client_frames_raw") == 2
    });
}

#[test]
fn a_frame_with_another_right_behind_it_is_read_raw_and_the_next_one_kept() {
    let up = RawUpstream::start(|| [text(CREATED), text(COMPLETED)].concat());
    let gw = gateway_over(&up);
    let admin = gw.admin_addr().expect("admin");
    let mut c = RawClient::connect(gw.addr());
    let frame = |fill: &str| {
        masked(
            0x81,
            create("gpt-test", &fill.repeat(8_000), true, None).as_bytes(),
        )
    };
    // The first turn tells the gateway the session's frame size: the next frames are read at
    // once, header and payload, with whatever follows them in the same read.
    let (a, b, c_frame) = (frame("a"), frame("b"), frame("c"));
    c.send_split(&a, &[]);
    c.read_until("response.completed");
    c.send_split(&[b.clone(), masked(0x89, b"beat")].concat(), &[]);
    let (mut pong, mut completed) = (false, false);
    while !(pong && completed) {
        let (opcode, payload) = c.next_frame();
        pong |= (opcode, &payload[..]) == (0xA, &b"beat"[..]);
        completed |=
            opcode == 1 && String::from_utf8_lossy(&payload).contains("response.completed");
    }
    c.send_split(&c_frame, &[]);
    c.read_until("response.completed");
    let sent = up.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 3, "three turns went upstream");
    for (i, wire) in [a, b, c_frame].iter().enumerate() {
        assert!(
            sent[i].wire == *wire,
            "turn {i}: upstream got other bytes than the client sent"
        );
    }
    eventually(
        "the three frames were read raw",
        Duration::from_secs(10),
        || metric_total(admin, "client_frames_raw") == 3,
    );
}

#[test]
fn a_ping_before_a_client_frame_gets_its_pong_and_the_frame_still_goes_as_it_came() {
    let up = RawUpstream::start(|| [text(CREATED), text(COMPLETED)].concat());
    let gw = gateway_over(&up);
    let mut c = RawClient::connect(gw.addr());
    c.send_split(&masked(0x89, b"beat"), &[]);
    assert_eq!(c.next_frame(), (0xA, b"beat".to_vec()), "the pong, at once");
    let sent = c.send(&create("gpt-test", "after a ping", true, None));
    c.read_until("response.completed");
    let got = up.sent.lock().unwrap()[0].clone();
    assert!(
        got.wire == sent,
        "a ping before the frame made the gateway mask it again"
    );
}

#[test]
fn a_fragmented_client_message_with_a_ping_between_goes_through_the_codec() {
    let up = RawUpstream::start(|| [text(CREATED), text(COMPLETED)].concat());
    let gw = gateway_over(&up);
    let admin = gw.admin_addr().expect("admin");
    let mut c = RawClient::connect(gw.addr());
    let message = create("gpt-test", "in two fragments", true, None);
    let (first, rest) = message.as_bytes().split_at(20);
    let wire = [
        masked(0x01, first),
        masked(0x89, b"mid"),
        masked(0x80, rest),
    ]
    .concat();
    c.send_split(&wire, &[]);
    assert_eq!(
        c.next_frame(),
        (0xA, b"mid".to_vec()),
        "the ping between is answered"
    );
    c.read_until("response.completed");
    let got = up.sent.lock().unwrap()[0].clone();
    assert_eq!(got.payload, message.as_bytes(), "the message, whole");
    assert_ne!(got.wire[2..6], MASK, "masked by the gateway");
    eventually(
        "the shard shipped its counters",
        Duration::from_secs(10),
        || metric_total(admin, "requests_ws") == 1,
    );
    assert_eq!(metric_total(admin, "client_frames_raw"), 0);
}

#[test]
fn client_frames_the_raw_read_does_not_take_close_the_session_as_before() {
    let up = RawUpstream::start(|| [text(CREATED), text(COMPLETED)].concat());
    let gw = gateway_with(&up, "max_message_bytes = 4096", "");
    let mut rsv1 = masked(0x81, b"{}");
    rsv1[0] |= 0x40;
    let oversize_header = masked(0x81, &[b' '; 5000])[..8].to_vec();
    let cases: [(&str, Vec<u8>, u16); 6] = [
        ("binary", masked(0x82, b"{}"), 1003),
        ("unmasked", frame(0x81, b"{}"), 1002),
        ("invalid UTF-8", masked(0x81, b"{\"a\":\"\xc3\x28\"}"), 1007),
        ("extension bit", rsv1, 1002),
        ("oversize, its header only", oversize_header, 1009),
        ("close", masked(0x88, &1000u16.to_be_bytes()), 1000),
    ];
    for (name, wire, code) in cases {
        let mut c = RawClient::connect(gw.addr());
        c.send_split(&wire, &[]);
        assert_eq!(c.close_code(), code, "{name}");
    }
    assert!(up.sent.lock().unwrap().is_empty(), "nothing went upstream");
}

#[test]
fn a_client_that_sends_a_header_and_stalls_is_still_bounded_by_the_wait() {
    let up = RawUpstream::start(|| [text(CREATED), text(COMPLETED)].concat());
    let gw = gateway_with(&up, "first_message_timeout_secs = 0.3", "");
    let admin = gw.admin_addr().expect("admin");
    let mut c = RawClient::connect(gw.addr());
    let wire = masked(
        0x81,
        create("gpt-test", "never all of it", true, None).as_bytes(),
    );
    c.send_split(&wire[..12], &[]);
    assert_eq!(
        c.close_code(),
        1008,
        "the first message's timeout, as before"
    );
    eventually(
        "the shard shipped its counters",
        Duration::from_secs(10),
        || labeled_total(admin, "client_closes", "first_message_timeout") == 1,
    );
    assert!(up.sent.lock().unwrap().is_empty(), "nothing went upstream");
}

/// One `POST /v1/responses` (streaming when `stream`) against an upstream answering with
/// `script`: the reply, and the events relayed in all.
fn one_post(script: fn() -> Vec<u8>, stream: bool, relayed: u64) -> (HttpReply, u64) {
    let up = RawUpstream::start(script);
    post_over(&up, &post_body("gpt-test", "hi", stream), relayed)
}

/// One `POST /v1/responses` of `body` through a fresh gateway over `up`: the reply, and the
/// events relayed in all.
fn post_over(up: &RawUpstream, body: &str, relayed: u64) -> (HttpReply, u64) {
    let gw = gateway_over(up);
    let admin = gw.admin_addr().expect("admin");
    let reply = HttpConn::open(gw.addr()).post("/v1/responses", body);
    eventually(
        "the shard shipped its counters",
        Duration::from_secs(10),
        || metric_total(admin, "events_relayed") >= relayed,
    );
    assert_eq!(
        metric_total(admin, "events_cut_through"),
        0,
        "no frame is written as it came to an HTTP client"
    );
    (reply, metric_total(admin, "events_relayed"))
}

/// Plain frames around a fragmented message with a ping inside.
fn plain_and_fragmented() -> Vec<u8> {
    let (first, rest) = DELTA.split_at(20);
    [
        text(CREATED),
        frame(0x01, first.as_bytes()),
        frame(0x89, b"mid"),
        frame(0x80, rest.as_bytes()),
        text(DELTA),
        text(COMPLETED),
    ]
    .concat()
}

#[test]
fn an_sse_answer_gets_raw_read_frames_and_codec_messages_in_order() {
    let (reply, relayed) = one_post(plain_and_fragmented, true, 4);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let events: Vec<(String, String)> = reply
        .sse()
        .into_iter()
        .map(|(name, data)| (name, data.to_string()))
        .collect();
    let want: Vec<(String, String)> = [CREATED, DELTA, DELTA, COMPLETED]
        .iter()
        .map(|e| {
            let v: sonic_rs::Value = sonic_rs::from_str(e).unwrap();
            (event_type(&v), v.to_string())
        })
        .collect();
    assert_eq!(events, want, "every event, named by its type, in order");
    assert_eq!(relayed, 4);
}

#[test]
fn a_json_answer_is_the_terminal_events_response_whichever_way_it_was_read() {
    let (reply, _) = one_post(plain_and_fragmented, false, 4);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let completed: sonic_rs::Value = sonic_rs::from_str(COMPLETED).unwrap();
    assert_eq!(
        reply.json().to_string(),
        completed["response"].to_string(),
        "the response object of the terminal event"
    );
}

#[test]
fn a_post_goes_upstream_as_one_masked_text_frame_with_a_fresh_key() {
    let up = RawUpstream::start(|| [text(CREATED), text(COMPLETED)].concat());
    let input = "c".repeat(30_000);
    let body = post_body("gpt-test", &input, true);
    for _ in 0..2 {
        let (reply, _) = post_over(&up, &body, 2);
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let sent = up.sent.lock().unwrap().clone();
    let frames: Vec<&Sent> = sent.iter().filter(|s| s.opcode == 1).collect();
    assert_eq!(frames.len(), 2);
    let want = format!(r#"{{"type":"response.create",{}"#, &body[1..]);
    for f in &frames {
        assert_eq!(f.wire[0], 0x81, "FIN, text");
        assert_eq!(f.wire[1], 0x80 | 126, "masked, a 16-bit length");
        assert_eq!(
            u16::from_be_bytes([f.wire[2], f.wire[3]]) as usize,
            want.len()
        );
        assert_eq!(f.wire.len(), 8 + want.len(), "one frame, nothing else");
        assert_eq!(String::from_utf8_lossy(&f.payload), want);
    }
    assert_ne!(
        frames[0].wire[4..8],
        frames[1].wire[4..8],
        "a fresh key each time"
    );
}

/// An event of `event_type` nesting 1,000 arrays (past the 128 levels any parser is allowed),
/// well within the upstream message limit.
fn deep(event_type: &str) -> String {
    format!(
        r#"{{"type":"{event_type}","response":{{"id":"resp_deep"}},"x":{}1{}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    )
}

/// The SSE records of `body` as (event, data) texts, not parsed (a deep one stays unread).
fn sse_records(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_string(), data.to_string()))
        })
        .collect()
}

#[test]
fn a_deep_delta_is_relayed_untouched_under_its_type() {
    let (reply, relayed) = one_post(
        || {
            let delta = deep("response.output_text.delta");
            [text(CREATED), text(&delta), text(COMPLETED)].concat()
        },
        true,
        3,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let delta = deep("response.output_text.delta");
    assert_eq!(
        sse_records(&reply.body),
        [
            ("response.created", CREATED),
            ("response.output_text.delta", delta.as_str()),
            ("response.completed", COMPLETED),
        ]
        .map(|(e, d)| (e.to_string(), d.to_string()))
        .to_vec(),
        "the deep delta as upstream sent it, named by its type"
    );
    assert_eq!(relayed, 3);
}

#[test]
fn a_deep_terminal_event_is_relayed_unread_and_does_not_end_the_turn() {
    let (reply, relayed) = one_post(
        || {
            let done = deep("response.completed");
            [text(CREATED), text(&done), text(COMPLETED)].concat()
        },
        true,
        3,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let done = deep("response.completed");
    assert_eq!(
        sse_records(&reply.body),
        [
            ("response.created", CREATED),
            ("message", done.as_str()),
            ("response.completed", COMPLETED),
        ]
        .map(|(e, d)| (e.to_string(), d.to_string()))
        .to_vec(),
        "the deep terminal event unread (a plain message); the turn ends at the next one"
    );
    assert_eq!(relayed, 3);
}

#[test]
fn a_ping_mid_turn_gets_its_pong_while_upstream_is_silent() {
    // Upstream starts the response, then sends nothing: the turn waits on it.
    let up = RawUpstream::start(|| text(CREATED));
    let gw = gateway_over(&up);
    let mut c = RawClient::connect(gw.addr());
    c.s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    c.send(&create("gpt-test", "then silence", true, None));
    c.read_until("response.created");
    c.send_split(&masked(0x89, b"mid-turn"), &[]);
    assert_eq!(
        c.next_frame(),
        (0xA, b"mid-turn".to_vec()),
        "the pong, without waiting for an event to go with"
    );
}
