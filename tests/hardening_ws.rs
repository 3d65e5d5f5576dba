//! The WebSocket edges any client can reach, over real loopback sockets: the close handshake
//! (a client's close is echoed), protocol violations closed with the RFC 6455 code (1002, 1007,
//! 1003) wherever the gateway reads a client, upstream violations turned into an error event,
//! and a preemption storm that costs a bounded number of upstream dials.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use shardgate::mock::MockHandle;
use shardgate::shard::preempt::{BURST, REFILL};
use shardgate::tungstenite::protocol::frame::coding::CloseCode;
use shardgate::tungstenite::protocol::CloseFrame;
use shardgate::tungstenite::{Error as WsError, Message};
use sonic_rs::JsonValueTrait;

/// A gateway config (one shard, admin listener, stats every 50 ms) over `up`, with `usage` as
/// its usage file.
fn config(up: &MockHandle, usage: &Path) -> shardgate::config::Config {
    parse_config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\ndrain_timeout_secs = 5\n\
         admin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 50\n\
         [usage]\npath = \"{}\"\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n\
         [[accounts]]\nid = \"acct-0\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 8\n",
        usage.display(),
        up.base_url()
    ))
}

fn start() -> (MockHandle, shardgate::gateway::Gateway, std::path::PathBuf) {
    let up = mock();
    let usage = scratch_file("usage.jsonl");
    let gw = gateway(config(&up, &usage));
    (up, gw, usage)
}

/// Waits (stats ship every 50 ms) until `family{label}` reaches `at_least`; returns its value.
fn wait_labeled(admin: SocketAddr, family: &str, label: &str, at_least: u64) -> u64 {
    poll_until(Duration::from_secs(20), || {
        labeled_total(admin, family, label) >= at_least
    });
    labeled_total(admin, family, label)
}

/// Waits until the mock has received a close frame with `code` from the gateway.
fn wait_upstream_close(up: &MockHandle, code: u16) -> bool {
    poll_until(Duration::from_secs(20), || {
        up.stats().close_codes_received.contains_key(&code)
    })
}

// ---- a raw client, to put on the wire what no WebSocket library would send ----

/// A client socket upgraded by hand.
struct Raw {
    s: TcpStream,
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.set_nodelay(true).ok();
        write!(
            s,
            "GET /v1/responses HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {CLIENT_KEY}\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).expect("upgrade answer"), 1, "closed");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Raw { s }
    }

    /// Writes one frame: first header byte `b0` (FIN, RSV bits, opcode), masked or not.
    fn frame(&mut self, b0: u8, payload: &[u8], masked: bool) {
        let mut out = vec![b0];
        let mask_bit = if masked { 0x80 } else { 0 };
        if payload.len() < 126 {
            out.push(mask_bit | payload.len() as u8);
        } else {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        if masked {
            out.extend_from_slice(&MASK);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.s.write_all(&out).expect("write frame");
    }

    fn text(&mut self, text: &str) {
        self.frame(0x81, text.as_bytes(), true);
    }

    /// Reads one server frame: (opcode, payload); `None` at end of stream or on a reset.
    fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).ok()?;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            self.s.read_exact(&mut b).ok()?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            self.s.read_exact(&mut b).ok()?;
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        self.s.read_exact(&mut payload).ok()?;
        Some((h[0] & 0x0f, payload))
    }

    /// Reads until the first text frame (an event).
    fn read_event(&mut self) -> String {
        loop {
            let (op, payload) = self.read_frame().expect("an event");
            if op == 1 {
                return String::from_utf8(payload).expect("UTF-8 event");
            }
        }
    }

    /// Reads until the server's close frame: its code (`None`: no close frame came).
    fn close_code(&mut self) -> Option<u16> {
        loop {
            let (op, payload) = self.read_frame()?;
            if op == 8 {
                return Some(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]));
            }
        }
    }
}

/// A session that runs a turn: other clients keep being served.
fn assert_serves(addr: SocketAddr) {
    let mut c = connect(addr);
    let t = c.turn(&create("gpt-5", "still here", true, None));
    assert_eq!(t.last_type(), "response.completed", "{:?}", t.types());
}

// ---- the close handshake ----

/// Sends a 1000 close and reads the gateway's answer: its close code, or the error instead.
fn close_normally(c: &mut Client) -> Result<Option<u16>, String> {
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .map_err(|e| e.to_string())?;
    loop {
        match c.ws.read() {
            Ok(Message::Close(f)) => return Ok(f.map(|f| u16::from(f.code))),
            Ok(_) => continue,
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}

#[test]
fn a_client_close_between_turns_is_echoed() {
    let (_up, gw, _) = start();
    let admin = gw.admin_addr().expect("admin");
    let mut c = connect(gw.addr());
    let t = c.turn(&create("gpt-5", "one", false, None));
    assert_eq!(t.last_type(), "response.completed");
    assert_eq!(close_normally(&mut c), Ok(Some(1000)));
    // The handshake is complete: the gateway then closes the TCP connection.
    assert!(matches!(
        c.ws.read(),
        Err(WsError::ConnectionClosed | WsError::AlreadyClosed)
    ));
    assert!(wait_labeled(admin, "client_closes", "echo", 1) >= 1);
}

#[test]
fn a_client_close_before_the_first_frame_is_echoed() {
    let (_up, gw, _) = start();
    let mut c = connect(gw.addr());
    assert_eq!(close_normally(&mut c), Ok(Some(1000)));
}

#[test]
fn a_client_close_mid_turn_is_echoed_and_frees_the_upstream_connection() {
    let (up, gw, _) = start();
    let mut c = connect(gw.addr());
    c.send(&create("gpt-5", "[[mock:stall,after=1]]", false, None));
    let first = c.ws.read().expect("first event");
    assert!(first.is_text());
    assert_eq!(close_normally(&mut c), Ok(Some(1000)));
    // The stalled response's connection is closed, with a close frame.
    assert!(wait_upstream_close(&up, 1000), "{:?}", up.stats());
    assert_serves(gw.addr());
}

#[test]
fn a_client_close_is_echoed_after_a_handoff_to_another_shard() {
    let up = mock();
    let usage = scratch_file("usage.jsonl");
    let mut cfg = config(&up, &usage);
    cfg.server.shards = 2;
    let gw = gateway(cfg);
    let admin = gw.admin_addr().expect("admin");
    // The kernel spreads connections over the shards by their 4-tuple: a store=false chain
    // continued on a new connection lands on the other shard about half the time, and is then
    // handed to the shard that holds its upstream connection. Every session must echo.
    for i in 0..16 {
        let mut first = connect(gw.addr());
        let t = first.turn(&create("gpt-5", &format!("start {i}"), false, None));
        let prev = t.response_id().expect("id");
        assert_eq!(close_normally(&mut first), Ok(Some(1000)));
        let mut next = connect(gw.addr());
        let t = next.turn(&create("gpt-5", "go on", false, Some(&prev)));
        assert_eq!(t.last_type(), "response.completed", "{:?}", t.events);
        assert_eq!(close_normally(&mut next), Ok(Some(1000)), "session {i}");
        if labeled_total(admin, "handoff", "received") >= 2 {
            break;
        }
    }
    assert!(
        wait_labeled(admin, "handoff", "received", 1) >= 1,
        "no session was handed over"
    );
}

// ---- protocol violations ----

/// Sends `violation` as a session's first frame and returns the close code it got.
fn first_frame_violation(addr: SocketAddr, violation: impl FnOnce(&mut Raw)) -> Option<u16> {
    let mut raw = Raw::connect(addr);
    violation(&mut raw);
    raw.close_code()
}

#[test]
fn an_unmasked_client_frame_is_closed_with_1002() {
    let (_up, gw, _) = start();
    let admin = gw.admin_addr().expect("admin");
    let frame = create("gpt-5", "hi", true, None);
    let code = first_frame_violation(gw.addr(), |r| r.frame(0x81, frame.as_bytes(), false));
    assert_eq!(code, Some(1002));
    assert!(wait_labeled(admin, "client_closes", "protocol_error", 1) >= 1);
    assert_serves(gw.addr());
}

#[test]
fn a_reserved_opcode_is_closed_with_1002() {
    let (_up, gw, _) = start();
    assert_eq!(
        first_frame_violation(gw.addr(), |r| r.frame(0x83, b"{}", true)),
        Some(1002)
    );
    assert_eq!(
        first_frame_violation(gw.addr(), |r| r.frame(0x8B, b"", true)),
        Some(1002),
        "reserved control opcode"
    );
    assert_serves(gw.addr());
}

#[test]
fn rsv_bits_are_closed_with_1002() {
    let (_up, gw, _) = start();
    let frame = create("gpt-5", "hi", true, None);
    for b0 in [0xC1u8, 0xA1, 0x91] {
        let code = first_frame_violation(gw.addr(), |r| r.frame(b0, frame.as_bytes(), true));
        assert_eq!(code, Some(1002), "first byte {b0:#x}");
    }
    assert_serves(gw.addr());
}

#[test]
fn invalid_utf8_in_a_text_frame_is_closed_with_1007() {
    let (_up, gw, _) = start();
    let admin = gw.admin_addr().expect("admin");
    let mut bad = br#"{"type":"response.create","model":"gpt-5","input":""#.to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(br#""}"#);
    assert_eq!(
        first_frame_violation(gw.addr(), |r| r.frame(0x81, &bad, true)),
        Some(1007)
    );
    assert!(wait_labeled(admin, "client_closes", "invalid_payload", 1) >= 1);
    assert_serves(gw.addr());
}

#[test]
fn a_binary_frame_is_refused_with_1003() {
    let (_up, gw, _) = start();
    let admin = gw.admin_addr().expect("admin");
    let frame = create("gpt-5", "hi", true, None);
    assert_eq!(
        first_frame_violation(gw.addr(), |r| r.frame(0x82, frame.as_bytes(), true)),
        Some(1003)
    );
    // Between turns too.
    let mut raw = Raw::connect(gw.addr());
    raw.text(&create("gpt-5", "one", true, None));
    while !raw.read_event().contains("response.completed") {}
    raw.frame(0x82, frame.as_bytes(), true);
    assert_eq!(raw.close_code(), Some(1003));
    assert!(wait_labeled(admin, "client_closes", "unsupported_data", 2) >= 2);
    assert_serves(gw.addr());
}

#[test]
fn a_violation_mid_turn_is_closed_and_the_upstream_connection_closed_cleanly() {
    let (up, gw, _) = start();
    let mut raw = Raw::connect(gw.addr());
    raw.text(&create("gpt-5", "[[mock:stall,after=1]]", false, None));
    raw.read_event();
    raw.frame(0x81, b"{}", false);
    assert_eq!(raw.close_code(), Some(1002));
    assert!(wait_upstream_close(&up, 1000), "{:?}", up.stats());
    assert_serves(gw.addr());
}

#[test]
fn an_upstream_protocol_violation_gives_the_client_an_error_event_and_a_1002_upstream() {
    let (up, gw, _) = start();
    let mut c = connect(gw.addr());
    let t = c.turn(&create("gpt-5", "[[mock:garbage,after=2]]", false, None));
    assert_eq!(t.types()[..2], ["response.created", "response.in_progress"]);
    assert_eq!(
        t.error_code().as_deref(),
        Some("upstream_protocol_error"),
        "{:?}",
        t.events
    );
    let err = t.events.last().expect("an error event");
    assert_eq!(err["status"].as_u64(), Some(502));
    assert!(err["error"]["message"].as_str().is_some());
    assert!(wait_upstream_close(&up, 1002), "{:?}", up.stats());
    // The session goes on, on a new connection.
    let t = c.turn(&create("gpt-5", "next", false, None));
    assert_eq!(t.last_type(), "response.completed", "{:?}", t.events);
}

#[test]
fn a_stopping_gateway_closes_its_idle_upstream_connections_with_1001() {
    let (up, gw, _) = start();
    let mut c = connect(gw.addr());
    let t = c.turn(&create("gpt-5", "stored", true, None));
    assert_eq!(t.last_type(), "response.completed");
    assert_eq!(close_normally(&mut c), Ok(Some(1000)));
    gw.stop();
    assert!(wait_upstream_close(&up, 1001), "{:?}", up.stats());
}

// ---- preemption storm ----

/// Reads `n` turns; returns how many ended preempted, and the last turn.
fn read_turns(c: &mut Client, n: usize) -> (usize, Turn) {
    let mut preempted = 0;
    for i in 0..n {
        let t = c.read_turn();
        match t.error_code().as_deref() {
            Some("response_preempted") => preempted += 1,
            None => assert_eq!(t.last_type(), "response.completed", "turn {i}"),
            Some(other) => panic!("turn {i} ended with {other}: {:?}", t.types()),
        }
        if i + 1 == n {
            return (preempted, t);
        }
    }
    unreachable!("n > 0")
}

#[test]
fn two_hundred_back_to_back_creates_cost_a_bounded_number_of_dials() {
    let (up, gw, _) = start();
    let admin = gw.admin_addr().expect("admin");
    let mut c = connect(gw.addr());
    let bystander = std::thread::spawn({
        let addr = gw.addr();
        move || {
            for _ in 0..5 {
                assert_serves(addr);
            }
        }
    });
    for i in 0..200 {
        let frame = create(
            "gpt-5",
            &format!("storm {i} [[mock:ttft_ms=20]]"),
            false,
            None,
        );
        c.ws.write(Message::text(frame)).expect("queue frame");
    }
    c.ws.flush().expect("flush");
    let (preempted, last) = read_turns(&mut c, 200);
    assert_eq!(last.last_type(), "response.completed", "{:?}", last.types());
    assert!(preempted >= 150, "only {preempted} preempted");
    bystander.join().expect("bystander served");
    let dials = up.stats().ws_connections_total;
    // The storm's session, plus the bystander's five sessions.
    assert!(dials <= 6 + 5, "{dials} upstream dials");
    assert!(wait_labeled(admin, "preemptions", "unsent", 1) >= 1);
    // The session is still usable.
    let t = c.turn(&create("gpt-5", "after the storm", false, None));
    assert_eq!(t.last_type(), "response.completed");
    // Stored turns give their connection back between turns: a stored storm takes it back from
    // the idle stack each time instead of dialing.
    let before = up.stats().ws_connections_total;
    for i in 0..50 {
        let frame = create(
            "gpt-5",
            &format!("stored {i} [[mock:ttft_ms=20]]"),
            true,
            None,
        );
        c.ws.write(Message::text(frame)).expect("queue frame");
    }
    c.ws.flush().expect("flush");
    let (_, last) = read_turns(&mut c, 50);
    assert_eq!(last.last_type(), "response.completed", "{:?}", last.types());
    let dials = up.stats().ws_connections_total - before;
    assert!(dials <= 1 + u64::from(BURST), "{dials} upstream dials");
}

#[test]
fn preempting_every_response_after_it_started_costs_a_bounded_number_of_dials() {
    let (up, gw, usage) = start();
    let admin = gw.admin_addr().expect("admin");
    let mut c = connect(gw.addr());
    let n = 16;
    let started = Instant::now();
    // Each create goes out once the previous response started upstream, so every preemption
    // finds its response running (the worst case for the connection it holds).
    let frame = |i: usize| {
        create(
            "gpt-5",
            &format!("one by one {i} [[mock:ttft_ms=300]]"),
            false,
            None,
        )
    };
    c.send(&frame(0));
    let (mut sent, mut preempted) = (1, 0);
    loop {
        let msg = c.ws.read().expect("event");
        let event: sonic_rs::Value = sonic_rs::from_str(msg.to_text().expect("text")).unwrap();
        match event_type(&event).as_str() {
            "response.created" if sent < n => {
                c.send(&frame(sent));
                sent += 1;
            }
            "error" => {
                assert_eq!(event["error"]["code"].as_str(), Some("response_preempted"));
                preempted += 1;
            }
            "response.completed" => break,
            _ => {}
        }
    }
    assert_eq!((sent, preempted), (n, n - 1));
    // One dial for the first turn, one per immediate close: the burst, then one per refill.
    let refills = (started.elapsed().as_secs_f64() / REFILL.as_secs_f64()).ceil() as u64;
    let allowed = 1 + u64::from(BURST) + refills;
    let dials = up.stats().ws_connections_total;
    assert!(
        dials <= allowed,
        "{dials} upstream dials for {n} preemptions (allowed {allowed})"
    );
    let drained = wait_labeled(admin, "preemptions", "drained", 1);
    assert!(drained >= 1, "nothing drained");
    // A drained response completed upstream: its usage is recorded like any other's.
    let count = || {
        let text = std::fs::read_to_string(&usage).unwrap_or_default();
        text.lines().filter(|l| !l.is_empty()).count() as u64
    };
    poll_until(Duration::from_secs(20), || count() > drained);
    let records = count();
    assert!(
        records > drained,
        "{records} usage records, {drained} drained"
    );
}
