//! Memory an idle client WebSocket session holds in the gateway, counted by a global allocator
//! that tracks live heap bytes (not RSS, not time): operators hold tens of thousands of idle
//! Codex sessions per host, so a per-session regression is real money.
//!
//! The clients are raw loopback sockets that send the upgrade request and read the 101 into a
//! stack buffer, so everything the counter sees between the two readings is the gateway's.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::heap::{Tracking, LIVE, SIZED, WATCH_SIZE};
use common::*;

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Taken by every test of this file: the counter is process-wide, so a reading must not see
/// another test's sessions.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sessions opened for the reading.
const SESSIONS: usize = 200;
/// The connection task alone (~4 KiB): an idle session holds at least that, so a reading
/// below it means the sessions were not there when it was taken.
const TASK: i64 = 4 * 1024;
/// Most heap bytes one idle session may hold: ~8.6 KiB measured (the connection task's future
/// ~4 KiB, the socket's poll source, the forwarded headers, wakers, the stream wrappers), with
/// some room. A session waits for its first frame on the bare socket, without a WebSocket;
/// with one it held its 16 KiB read buffer too (~22 KiB), and before the turn futures were
/// boxed ~69 KiB.
const MAX_PER_SESSION: i64 = 12 * 1024;

/// Most heap bytes a session holds idle after a 30 KB `response.create`: the task and the
/// turn's state (the response's binding, the session's chain head: ~1 KiB), ~8.0 KiB measured,
/// with some room. A resting session waits on its bare socket, without a WebSocket; while it
/// rebuilt its WebSocket at once it held a fresh 16 KiB read buffer too (~23.6 KiB), and
/// before the rebuild its read buffer at the frame's size plus 16 KiB and its write buffer at
/// the largest batch of events: ~58 KiB.
const MAX_PER_RESTED_SESSION: i64 = 12 * 1024;

/// Most heap bytes a `store=false` session holds idle after a 30 KB `response.create`, its
/// client side and the upstream connection it keeps leased: the rested client session (above)
/// and the connection resting without its WebSocket (its stream and a stand-in WebSocket
/// without buffers: ~1 KiB measured), with some room. Without the rest the upstream WebSocket
/// kept its 16 KiB read buffer, its write buffer at the frame's size and its read buffer at
/// the largest batch of events read: ~70 KB a session. ~8.4 KiB measured.
const MAX_PER_RESTED_CHAINED_SESSION: i64 = 12 * 1024;

/// Most heap bytes an idle pooled upstream connection holds once it rested after a 30 KB turn:
/// its stream and a stand-in WebSocket without buffers (~2.5 KiB measured, the socket's poll
/// source included), with some room. Without the rest it kept its 16 KiB read buffer, its
/// write buffer at the frame's size and its read buffer at the largest batch of events read:
/// ~50 KB.
const MAX_PER_RESTED_POOLED_CONN: i64 = 6 * 1024;

/// Upstream connections left idle in the pool for the reading.
const POOLED: usize = 32;

/// A masked client text frame (zero mask: the payload goes as is).
fn text_frame(payload: &str) -> Vec<u8> {
    let mut frame = vec![0x81u8];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&u16::try_from(n).expect("under 64 KiB").to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload.as_bytes());
    frame
}

/// Sends one `response.create` frame and reads the raw event stream until its
/// `response.completed`, into a stack buffer.
fn run_turn(stream: &mut TcpStream, frame: &[u8]) {
    const DONE: &[u8] = b"response.completed";
    stream.write_all(frame).expect("send frame");
    let mut buf = [0u8; 16 * 1024];
    let mut kept = 0;
    loop {
        let n = stream.read(&mut buf[kept..]).expect("read events");
        assert!(n > 0, "closed mid-turn");
        let end = kept + n;
        if buf[..end].windows(DONE.len()).any(|w| w == DONE) {
            return;
        }
        kept = end.min(DONE.len());
        buf.copy_within(end - kept..end, 0);
    }
}

/// A client's WebSocket upgrade request, with `session-id` when given.
fn upgrade_request(addr: SocketAddr, session: Option<&str>) -> String {
    let session = session.map_or_else(String::new, |s| format!("session-id: {s}\r\n"));
    format!(
        "GET /v1/responses HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\nauthorization: Bearer {CLIENT_KEY}\r\n{session}\r\n"
    )
}

/// Opens a WebSocket session and leaves it idle (no `response.create` sent).
fn open_idle(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream.write_all(request).expect("upgrade request");
    let mut head = [0u8; 512];
    let mut got = 0;
    while !head[..got].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut head[got..]).expect("upgrade response");
        assert!(n > 0, "closed during the upgrade");
        got += n;
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "upgrade refused: {}",
        String::from_utf8_lossy(&head[..got])
    );
    stream
}

/// How long a reading may wait for the sessions to settle (build their state, or rest after
/// their turn `rest_after_ms` in): generous, the machine is shared; a passing reading waits only
/// as long as the settling takes.
const SETTLE: Duration = Duration::from_secs(20);

/// The rest comes soon after a turn, so readings wait on it instead of sleeping past 1 s.
const REST_SOON: &str = "rest_after_ms = 20";

/// [`REST_SOON`] with an admin listener, to wait on the gateway's counters.
fn rest_soon_with_admin() -> String {
    format!("{REST_SOON}\nadmin_listen = \"127.0.0.1:0\"")
}

/// Waits until `at_least` sessions have rested (`sessions_rested`).
fn wait_rested(admin: SocketAddr, at_least: u64) {
    eventually(&format!("{at_least} session(s) rested"), SETTLE, || {
        metric_total(admin, "sessions_rested") >= at_least
    });
}

/// Heap held per session by `SESSIONS` more sessions set up by `open` (kept in `held`), read
/// once `settled` holds (the sessions reached the state the reading is about, as the gateway
/// counts it) and the reading is at most `bound` (or `SETTLE` passed). At least the read buffer
/// each, or they were not open.
fn heap_per_session(
    held: &mut Vec<TcpStream>,
    bound: i64,
    at_least: i64,
    settled: impl FnMut() -> bool,
    mut open: impl FnMut() -> TcpStream,
) -> i64 {
    let before = LIVE.load(Ordering::SeqCst);
    for _ in 0..SESSIONS {
        held.push(open());
    }
    eventually("the sessions settled", SETTLE, settled);
    let reading = || (LIVE.load(Ordering::SeqCst) - before) / SESSIONS as i64;
    poll_until(SETTLE, || (at_least..=bound).contains(&reading()));
    let per_session = reading();
    assert!(
        per_session >= at_least,
        "{per_session} bytes per session: less than {at_least}, the sessions were not open"
    );
    per_session
}

#[test]
fn an_idle_websocket_session_holds_little_more_than_its_task() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "admin_listen = \"127.0.0.1:0\"",
        "",
    ));
    let admin = gw.admin_addr().expect("admin listener");
    let addr = gw.addr();
    let request = upgrade_request(addr, Some("sess-idle"));
    let mut held = Vec::with_capacity(SESSIONS + 8);
    // The shard's one-time structures (session maps, timer wheel) grow on the first sessions.
    for _ in 0..8 {
        held.push(open_idle(addr, request.as_bytes()));
    }
    let open = |n: u64| move || metric_total(admin, "sessions_open") >= n;
    eventually("the first sessions are open", SETTLE, open(8));

    // The 101 is written before the session task starts; the reading waits for the last ones.
    let settled = open((SESSIONS + 8) as u64);
    let per_session = heap_per_session(&mut held, MAX_PER_SESSION, TASK, settled, || {
        open_idle(addr, request.as_bytes())
    });
    eprintln!("heap held per idle session: {per_session} bytes");
    assert!(
        per_session <= MAX_PER_SESSION,
        "an idle session holds {per_session} bytes of heap (bound {MAX_PER_SESSION}); see \
         perf/README.md on idle-session memory for what it held before"
    );
    drop(held);
    gw.stop();
}

/// A client WebSocket's read buffer (`session::READ_BUFFER_BYTES`): one allocation of exactly
/// this size each time a client WebSocket is built.
const READ_BUFFER: usize = 16 * 1024;

#[test]
fn a_connect_builds_no_websocket_before_its_first_frame() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "admin_listen = \"127.0.0.1:0\"",
        "",
    ));
    let admin = gw.admin_addr().expect("admin listener");
    let addr = gw.addr();
    let request = upgrade_request(addr, None);
    WATCH_SIZE.store(READ_BUFFER, Ordering::SeqCst);
    let before = SIZED.load(Ordering::SeqCst);
    let held: Vec<TcpStream> = (0..SESSIONS)
        .map(|_| open_idle(addr, request.as_bytes()))
        .collect();
    eventually("the sessions are open", SETTLE, || {
        metric_total(admin, "sessions_open") >= SESSIONS as u64
    });
    let built = SIZED.load(Ordering::SeqCst) - before;
    WATCH_SIZE.store(0, Ordering::SeqCst);
    // Each connect built a WebSocket at the upgrade and dropped it unused when the session
    // went to wait for its first frame on the bare socket: work (a 16 KiB allocation, zeroed
    // by its first read) on every connect, for nothing.
    assert!(
        built < SESSIONS as u64 / 4,
        "{built} read buffers of {READ_BUFFER} bytes allocated by {SESSIONS} sessions that sent \
         no frame: a WebSocket is built before the first frame"
    );
    drop(held);
    gw.stop();
}

#[test]
fn a_session_between_turns_gives_back_the_buffers_its_turn_grew() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        &rest_soon_with_admin(),
        "",
    ));
    let admin = gw.admin_addr().expect("admin listener");
    let addr = gw.addr();
    let request = upgrade_request(addr, Some("sess-rested"));
    let frame = text_frame(&create("gpt-5", &"x".repeat(30_000), true, None));
    let mut held = Vec::with_capacity(SESSIONS);
    // The first turns dial the upstream connection and grow the shard's maps; their sessions
    // are closed again, so none of them rebuilds its WebSocket during the reading.
    for _ in 0..8 {
        let mut s = open_idle(addr, request.as_bytes());
        run_turn(&mut s, &frame);
    }
    eventually("the first sessions ended", SETTLE, || {
        metric_total(admin, "sessions_open") == 0
    });
    let rested_before = metric_total(admin, "sessions_rested");

    // Sessions rebuild their WebSocket `rest_after_ms` after a turn.
    let settled = || metric_total(admin, "sessions_rested") >= rested_before + SESSIONS as u64;
    let per_session = heap_per_session(&mut held, MAX_PER_RESTED_SESSION, TASK, settled, || {
        let mut s = open_idle(addr, request.as_bytes());
        run_turn(&mut s, &frame);
        s
    });
    eprintln!("heap held per session between turns: {per_session} bytes");
    assert!(
        per_session <= MAX_PER_RESTED_SESSION,
        "a session between turns holds {per_session} bytes of heap (bound \
         {MAX_PER_RESTED_SESSION}): is the client WebSocket still rebuilt after a turn?"
    );
    drop(held);
    gw.stop();
}

#[test]
fn turns_still_run_after_pings_and_fragmented_frames_between_rebuilds() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use shardgate::tungstenite::protocol::frame::coding::{Data, OpCode};
    use shardgate::tungstenite::protocol::frame::Frame;
    use shardgate::tungstenite::Message;

    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        &rest_soon_with_admin(),
        "",
    ));
    let admin = gw.admin_addr().expect("admin listener");
    let mut client = connect(gw.addr());
    let first = client.turn(&create("gpt-5", "one", true, None));
    assert_eq!(first.last_type(), "response.completed");

    // Past `rest_after_ms` the session rebuilds its WebSocket; then a ping (answered by the
    // rebuilt one) and a frame in two fragments.
    wait_rested(admin, 1);
    client
        .ws
        .send(Message::Ping("between".into()))
        .expect("ping");
    let frame = create("gpt-5", "two", true, None);
    let (head, tail) = frame.split_at(frame.len() / 2);
    client
        .ws
        .send(Message::Frame(Frame::message(
            head.as_bytes().to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .expect("first fragment");
    client
        .ws
        .send(Message::Frame(Frame::message(
            tail.as_bytes().to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .expect("last fragment");
    let second = client.read_turn();
    assert_eq!(
        second.last_type(),
        "response.completed",
        "{:?}",
        second.types()
    );

    // Two frames in one write: the gateway reads the second while the first turn runs, which
    // preempts it (an error event, or the turn completed first), and runs the second.
    let mut both = Vec::new();
    for input in ["three", "four"] {
        let mut out = Vec::new();
        let mut ws = shardgate::tungstenite::protocol::WebSocket::from_raw_socket(
            std::io::Cursor::new(&mut out),
            shardgate::tungstenite::protocol::Role::Client,
            None,
        );
        ws.send(Message::text(create("gpt-5", input, true, None)))
            .expect("encode");
        drop(ws);
        both.extend_from_slice(&out);
    }
    client.ws.get_mut().write_all(&both).expect("two frames");
    let third = client.read_turn();
    assert!(
        matches!(third.last_type().as_str(), "error" | "response.completed"),
        "{:?}",
        third.types()
    );
    let fourth = client.read_turn();
    assert_eq!(
        fourth.last_type(),
        "response.completed",
        "{:?}",
        fourth.types()
    );
    assert!(client.ws.send(Message::Close(None)).is_ok());
    gw.stop();
}

#[test]
fn the_rebuild_does_not_extend_the_idle_timeout() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "idle_timeout_secs = 1.2",
        "",
    ));
    let mut client = connect(gw.addr());
    let turn = client.turn(&create("gpt-5", "one", true, None));
    assert_eq!(turn.last_type(), "response.completed");
    let idle_since = std::time::Instant::now();
    assert_eq!(client.expect_close(), Some(1000), "closed for idleness");
    // 1.2 s idle timeout, counted from the end of the turn; the rebuild 1 s in (the default
    // `rest_after_ms`) does not restart it (that would close at 2.2 s).
    let waited = idle_since.elapsed();
    assert!(
        waited < Duration::from_millis(2000),
        "closed after {waited:?}"
    );
    gw.stop();
}

/// Pings until the gateway closes, answering none of its own; the close code and how long it took
/// from `since` (`None` when the gateway still had not closed after 8 s).
fn ping_until_closed(client: &mut Client, since: std::time::Instant) -> Option<(u16, Duration)> {
    use shardgate::tungstenite::Message;
    client
        .ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    while since.elapsed() < Duration::from_secs(8) {
        if client.ws.send(Message::Ping(vec![1].into())).is_err() {
            return None;
        }
        match client.ws.read() {
            Ok(Message::Close(f)) => {
                return Some((f.map_or(0, |f| u16::from(f.code)), since.elapsed()))
            }
            Ok(_) => {}
            Err(shardgate::tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn pings_do_not_extend_the_idle_timeout() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "idle_timeout_secs = 1.2",
        "",
    ));
    let mut client = connect(gw.addr());
    let turn = client.turn(&create("gpt-5", "one", true, None));
    assert_eq!(turn.last_type(), "response.completed");
    let closed = ping_until_closed(&mut client, std::time::Instant::now());
    // 1.2 s from the end of the turn, pings and the rebuild 1 s in included.
    assert!(
        matches!(closed, Some((1000, waited)) if waited < Duration::from_millis(2500)),
        "{closed:?}"
    );
    gw.stop();
}

#[test]
fn pings_do_not_extend_the_first_message_timeout() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "first_message_timeout_secs = 0.8",
        "",
    ));
    let since = std::time::Instant::now();
    let mut client = connect(gw.addr());
    let closed = ping_until_closed(&mut client, since);
    assert!(
        matches!(closed, Some((1008, waited)) if waited < Duration::from_millis(2100)),
        "{closed:?}"
    );
    gw.stop();
}

#[test]
fn rest_after_ms_sets_when_a_session_rests() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "rest_after_ms = 600000\nadmin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 20",
        "",
    ));
    let admin = gw.admin_addr().expect("admin listener");
    let mut client = connect(gw.addr());
    let turn = client.turn(&create("gpt-5", "one", true, None));
    assert_eq!(turn.last_type(), "response.completed");
    // Idle for longer than the default rest (1 s): the wait is the behaviour under test.
    std::thread::sleep(Duration::from_millis(1500));
    eventually("the turn was counted", SETTLE, || {
        metric_total(admin, "turns_completed") >= 1
    });
    assert_eq!(
        metric_total(admin, "sessions_rested"),
        0,
        "rested before the configured 10 minutes"
    );
    assert!(client
        .ws
        .send(shardgate::tungstenite::Message::Close(None))
        .is_ok());
    gw.stop();
}

/// One account with room for a leased connection per session.
fn chained_config(base_url: &str) -> shardgate::config::Config {
    parse_config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\n{}\n[[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n\
         [[accounts]]\nid = \"acct-0\"\nbase_url = \"{base_url}\"\napi_key = \"sk-upstream-0\"\nmax_conns = {}\n",
        rest_soon_with_admin(),
        SESSIONS + 16
    ))
}

#[test]
fn a_store_false_session_between_turns_gives_back_its_upstream_buffers_too() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = MockProcess::start();
    let gw = gateway(chained_config(&up.base_url()));
    let addr = gw.addr();
    let request = upgrade_request(addr, Some("sess-chained"));
    // store=false: each session keeps its upstream connection leased between turns.
    let frame = text_frame(&create("gpt-5", &"x".repeat(30_000), false, None));
    let mut held = Vec::with_capacity(SESSIONS + 8);
    // The first sessions grow the shard's maps and the pool's; they stay open and have rested
    // (both sides) before the first reading.
    for _ in 0..8 {
        let mut s = open_idle(addr, request.as_bytes());
        run_turn(&mut s, &frame);
        held.push(s);
    }
    let admin = gw.admin_addr().expect("admin listener");
    wait_rested(admin, 8);

    // Sessions rest `rest_after_ms` after a turn: client and upstream side.
    let settled = || metric_total(admin, "sessions_rested") >= (SESSIONS + 8) as u64;
    let per_session = heap_per_session(
        &mut held,
        MAX_PER_RESTED_CHAINED_SESSION,
        TASK,
        settled,
        || {
            let mut s = open_idle(addr, request.as_bytes());
            run_turn(&mut s, &frame);
            s
        },
    );
    eprintln!("heap held per store=false session between turns: {per_session} bytes");
    assert!(
        up.ws_connections_open() >= (SESSIONS + 8) as u64,
        "each session holds its own upstream connection"
    );
    assert!(
        per_session <= MAX_PER_RESTED_CHAINED_SESSION,
        "a store=false session between turns holds {per_session} bytes of heap (bound \
         {MAX_PER_RESTED_CHAINED_SESSION}): is its leased upstream WebSocket still rebuilt when \
         the session rests?"
    );
    drop(held);
    gw.stop();
}

#[test]
fn a_chain_continues_on_its_upstream_connection_after_it_rested() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        &rest_soon_with_admin(),
        "",
    ));
    let admin = gw.admin_addr().expect("admin listener");
    let mut client = connect(gw.addr());
    let big = "y".repeat(30_000);
    let mut previous: Option<String> = None;
    let mut conn = None;
    for round in 0..3 {
        let turn = client.turn(&create("gpt-5", &big, false, previous.as_deref()));
        assert_eq!(
            turn.last_type(),
            "response.completed",
            "round {round}: {:?}",
            turn.types()
        );
        let id = turn.response_id().expect("a response id");
        let on = conn_of(&id);
        assert!(on.is_some(), "the mock names the connection in the id");
        if round > 0 {
            assert_eq!(on, conn, "round {round} ran on another upstream connection");
        }
        conn = on;
        previous = Some(id);
        // Past `rest_after_ms`: both WebSockets are rebuilt before the next turn.
        wait_rested(admin, round + 1);
    }
    assert!(client
        .ws
        .send(shardgate::tungstenite::Message::Close(None))
        .is_ok());
    gw.stop();
}

#[test]
fn an_idle_pooled_upstream_connection_gives_back_its_buffers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = MockProcess::start();
    let gw = gateway(chained_config(&up.base_url()));
    let addr = gw.addr();
    let request = upgrade_request(addr, Some("sess-pooled"));
    let frame = text_frame(&create("gpt-5", &"x".repeat(30_000), false, None));
    let admin = gw.admin_addr().expect("admin listener");
    // One session grows the shard's maps and leaves one rested connection in the pool: it
    // rests with its store=false connection, then ends.
    let mut warm = open_idle(addr, request.as_bytes());
    run_turn(&mut warm, &frame);
    wait_rested(admin, 1);
    drop(warm);
    eventually("the warm session ended", SETTLE, || {
        metric_total(admin, "sessions_open") == 0
    });

    let before = LIVE.load(Ordering::SeqCst);
    // Each session keeps its store=false connection leased (so each dials its own), then
    // starts a frame it never finishes: its client side is mid-frame, so the session never
    // rests, and its connection reaches the pool with the buffers its turn grew.
    let mut sessions = Vec::with_capacity(POOLED);
    for _ in 0..POOLED {
        let mut s = open_idle(addr, request.as_bytes());
        run_turn(&mut s, &frame);
        s.write_all(&[0x81]).expect("half a frame header");
        sessions.push(s);
    }
    drop(sessions);
    // The sessions end and give their connections back; the pool rests them `rest_after_ms`
    // later.
    eventually("the sessions ended", SETTLE, || {
        metric_total(admin, "sessions_open") == 0
    });
    let reading = || (LIVE.load(Ordering::SeqCst) - before) / (POOLED - 1) as i64;
    poll_until(SETTLE, || {
        (1..=MAX_PER_RESTED_POOLED_CONN).contains(&reading())
    });
    let per_conn = reading();
    eprintln!("heap held per idle pooled upstream connection: {per_conn} bytes");
    assert!(
        per_conn > 0,
        "{per_conn} bytes per connection: the connections were not in the pool"
    );
    assert_eq!(
        up.ws_connections_open(),
        POOLED as u64,
        "the sessions' connections stay open in the pool"
    );
    assert!(
        per_conn <= MAX_PER_RESTED_POOLED_CONN,
        "an idle pooled upstream connection holds {per_conn} bytes of heap (bound \
         {MAX_PER_RESTED_POOLED_CONN}): does the pool still rest its idle connections?"
    );
    // A rested connection carries the next turn.
    let mut next = open_idle(addr, request.as_bytes());
    run_turn(&mut next, &frame);
    drop(next);
    gw.stop();
}
