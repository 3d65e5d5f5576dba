//! The Realtime relay (`GET /v1/realtime`) end to end over loopback: a real client WebSocket,
//! the gateway in this process, the mock upstream speaking the Realtime protocol. Text, audio
//! and tool-call turns; usage records equal to what upstream reported, or estimated when it
//! reported none; upstream closing mid-response; the client leaving; a client that stops
//! reading; the account budget; auth by header and by subprotocol.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use shardgate::mock::MockHandle;
use shardgate::tungstenite::{self, client::IntoClientRequest, Message};
use sonic_rs::{JsonValueTrait, Value};

type Ws = tungstenite::WebSocket<TcpStream>;

const MODEL: &str = "gpt-realtime";
const UPSTREAM_MODEL: &str = "gpt-realtime-2025-08-28";

/// A gateway (one shard) in front of `up` mapping [`MODEL`], with its usage file.
fn gateway_for(
    up: &MockHandle,
    server_extra: &str,
    account_extra: &str,
) -> (shardgate::gateway::Gateway, PathBuf) {
    let usage = scratch_file("usage.jsonl");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\ndrain_timeout_secs = 5\n{server_extra}\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n\
         [[accounts]]\nid = \"acct-0\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 4\n\
         model_map = {{ \"{MODEL}\" = \"{UPSTREAM_MODEL}\" }}\n{account_extra}\n\
         [usage]\npath = \"{}\"\nfsync_interval_ms = 10\n",
        up.base_url(),
        usage.display()
    );
    (gateway(parse_config(&text)), usage)
}

/// Opens a realtime session with `query` and extra request headers.
fn open(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Result<Ws, tungstenite::Error> {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    open_over(stream, addr, query, headers)
}

fn open_over(
    stream: TcpStream,
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::Error> {
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut req = format!("ws://{addr}/v1/realtime?{query}")
        .into_client_request()
        .expect("request");
    for (n, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tungstenite::client::client(req, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })
}

/// A session with the test key (and a `session-id` header), for [`MODEL`].
fn session(addr: SocketAddr) -> Ws {
    let auth = format!("Bearer {CLIENT_KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("session-id", "sess-rt-test"),
    ];
    open(addr, &format!("model={MODEL}"), &headers).expect("upgrade")
}

fn send(ws: &mut Ws, event: &Value) {
    ws.send(Message::text(event.to_string()))
        .expect("send event");
}

fn kind(e: &Value) -> String {
    e.get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_string()
}

/// Reads events until one of type `last` (or an `error`), returning all of them.
fn read_until(ws: &mut Ws, last: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        match ws.read().expect("read event") {
            Message::Text(t) => {
                let v: Value = sonic_rs::from_str(t.as_str()).expect("event is JSON");
                let k = kind(&v);
                out.push(v);
                if k == last || k == "error" {
                    return out;
                }
            }
            Message::Close(f) => panic!(
                "closed: {f:?} after {:?}",
                out.iter().map(kind).collect::<Vec<_>>()
            ),
            _ => {}
        }
    }
}

fn user_text(text: &str) -> Value {
    sonic_rs::json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
}

/// One second of 24 kHz PCM16, base64, in four appends.
fn append_second(ws: &mut Ws) {
    let chunk = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 12_000]);
    for _ in 0..4 {
        send(
            ws,
            &sonic_rs::json!({"type": "input_audio_buffer.append", "audio": chunk}),
        );
    }
}

/// The realtime usage records written so far, waiting until there are at least `n`.
fn records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let recs: Vec<Value> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| sonic_rs::from_str(l).expect("usage line is JSON"))
            .filter(|v: &Value| v["request_type"].as_str() == Some("realtime"))
            .collect();
        if recs.len() >= n || Instant::now() > deadline {
            return recs;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

/// A record's counts equal the `usage` of the `response.done` the client saw.
fn assert_record_matches(record: &Value, done: &Value) {
    let usage = &done["response"]["usage"];
    assert_eq!(
        record["response_id"].as_str(),
        done["response"]["id"].as_str()
    );
    assert_eq!(u(record, &["input_tokens"]), u(usage, &["input_tokens"]));
    assert_eq!(u(record, &["output_tokens"]), u(usage, &["output_tokens"]));
    assert_eq!(u(record, &["total_tokens"]), u(usage, &["total_tokens"]));
    assert_eq!(
        u(record, &["cached_tokens"]),
        u(usage, &["input_token_details", "cached_tokens"])
    );
    for (field, path) in [
        ("input_text_tokens", ["input_token_details", "text_tokens"]),
        (
            "input_audio_tokens",
            ["input_token_details", "audio_tokens"],
        ),
        (
            "output_text_tokens",
            ["output_token_details", "text_tokens"],
        ),
        (
            "output_audio_tokens",
            ["output_token_details", "audio_tokens"],
        ),
    ] {
        assert_eq!(u(record, &[field]), u(usage, &path), "{field}");
    }
    assert_eq!(record["estimated"].as_bool(), Some(false));
}

/// Polls `cond` for up to 10 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn text_audio_and_tool_turns_are_relayed_and_billed_as_upstream_reported() {
    let up = mock();
    let (gw, usage) = gateway_for(&up, "", "");
    let mut ws = session(gw.addr());
    let created = read_until(&mut ws, "session.created");
    let session_id = created[0]["session"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        created[0]["session"]["model"].as_str(),
        Some(MODEL),
        "the mapped model is mapped back"
    );
    assert!(
        up.stats().models_seen.contains(UPSTREAM_MODEL),
        "upstream got the mapped model"
    );
    // Pings are answered.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .expect("ping");
    let Message::Pong(pong) = ws.read().expect("read") else {
        panic!("expected a pong");
    };
    assert_eq!(&pong[..], b"are you there");
    let seen = up.stats().last_handshake_headers;
    assert_eq!(
        seen.get("session-id").map(String::as_str),
        Some("sess-rt-test"),
        "client headers are forwarded as for Responses"
    );
    assert_eq!(
        seen.get("authorization").map(String::as_str),
        Some(&*format!("Bearer {ACCOUNT_KEY}"))
    );

    // Text turn, with instructions and a tool defined.
    send(
        &mut ws,
        &sonic_rs::json!({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"], "instructions": "be brief",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]}}),
    );
    let updated = read_until(&mut ws, "session.updated");
    assert_eq!(updated[0]["session"]["model"].as_str(), Some(MODEL));
    send(&mut ws, &user_text("hello there"));
    read_until(&mut ws, "conversation.item.done");
    send(&mut ws, &sonic_rs::json!({"type": "response.create"}));
    let text_turn = read_until(&mut ws, "response.done");
    assert!(text_turn
        .iter()
        .any(|e| kind(e) == "response.output_text.delta"));

    // Audio turn: a second of input audio, audio out.
    append_second(&mut ws);
    send(
        &mut ws,
        &sonic_rs::json!({"type": "input_audio_buffer.commit"}),
    );
    read_until(&mut ws, "input_audio_buffer.committed");
    send(
        &mut ws,
        &sonic_rs::json!({"type": "response.create", "response": {"output_modalities": ["audio"]}}),
    );
    let audio_turn = read_until(&mut ws, "response.done");
    let audio_deltas: Vec<&Value> = audio_turn
        .iter()
        .filter(|e| kind(e) == "response.output_audio.delta")
        .collect();
    assert_eq!(audio_deltas.len(), 4);
    let chunk = base64::engine::general_purpose::STANDARD
        .decode(audio_deltas[0]["delta"].as_str().unwrap())
        .unwrap();
    assert_eq!(chunk.len(), 4800, "audio relayed byte for byte");
    assert_eq!(up.stats().realtime_audio_bytes_received, 48_000);

    // Tool call, then its output and the follow-up response.
    send(&mut ws, &user_text("weather? [[rt:tool=get_weather]]"));
    read_until(&mut ws, "conversation.item.done");
    send(&mut ws, &sonic_rs::json!({"type": "response.create"}));
    let tool_turn = read_until(&mut ws, "response.done");
    let call = &tool_turn.last().unwrap()["response"]["output"][0];
    assert_eq!(call["type"].as_str(), Some("function_call"));
    let call_id = call["call_id"].as_str().unwrap().to_string();
    send(
        &mut ws,
        &sonic_rs::json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": call_id, "output": "{\"temp\":21}"}}),
    );
    read_until(&mut ws, "conversation.item.done");
    send(&mut ws, &sonic_rs::json!({"type": "response.create"}));
    let after_tool = read_until(&mut ws, "response.done");
    ws.close(None).ok();

    let dones: Vec<&Value> = [&text_turn, &audio_turn, &tool_turn, &after_tool]
        .iter()
        .map(|t| t.last().unwrap())
        .collect();
    let recs = records(&usage, 4);
    assert_eq!(recs.len(), 4, "one record per response.done: {recs:?}");
    for (rec, done) in recs.iter().zip(&dones) {
        assert_record_matches(rec, done);
        assert_eq!(rec["session_id"].as_str(), Some(session_id.as_str()));
        assert_eq!(rec["model"].as_str(), Some(MODEL));
        assert_eq!(rec["account"].as_str(), Some("acct-0"));
        assert_eq!(rec["key_id"].as_str(), Some("test-key"));
    }
    assert!(u(&recs[1], &["input_audio_tokens"]) > 0 && u(&recs[1], &["output_audio_tokens"]) > 0);
    assert!(
        u(&recs[3], &["cached_tokens"]) > 0,
        "cached tokens are carried"
    );
    // No further record once the session closes: everything was billed by response.done.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(records(&usage, 0).len(), 4);
    gw.stop();
}

#[test]
fn a_response_without_usage_is_estimated_from_what_was_relayed() {
    let up = mock();
    let (gw, usage) = gateway_for(&up, "", "");
    let mut ws = session(gw.addr());
    read_until(&mut ws, "session.created");
    let instructions = "answer in one short sentence";
    send(
        &mut ws,
        &sonic_rs::json!({"type": "session.update", "session": {"type": "realtime", "instructions": instructions, "output_modalities": ["audio"]}}),
    );
    read_until(&mut ws, "session.updated");
    let text = "what time is it [[rt:no_usage,chunks=5]]";
    send(&mut ws, &user_text(text));
    read_until(&mut ws, "conversation.item.done");
    append_second(&mut ws);
    send(
        &mut ws,
        &sonic_rs::json!({"type": "input_audio_buffer.commit"}),
    );
    read_until(&mut ws, "input_audio_buffer.committed");
    send(&mut ws, &sonic_rs::json!({"type": "response.create"}));
    let turn = read_until(&mut ws, "response.done");
    assert!(turn.last().unwrap()["response"]["usage"].is_null());
    let transcript: usize = turn
        .iter()
        .filter(|e| kind(e) == "response.output_audio_transcript.delta")
        .map(|e| e["delta"].as_str().unwrap().len())
        .sum();
    let audio_bytes: usize = turn
        .iter()
        .filter(|e| kind(e) == "response.output_audio.delta")
        .map(|e| {
            base64::engine::general_purpose::STANDARD
                .decode(e["delta"].as_str().unwrap())
                .unwrap()
                .len()
        })
        .sum();
    ws.close(None).ok();
    let recs = records(&usage, 1);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r["estimated"].as_bool(), Some(true));
    assert_eq!(r["status"].as_str(), Some("completed"));
    let input_text = (instructions.len() + text.len()).div_ceil(4) as u64;
    assert_eq!(u(r, &["input_text_tokens"]), input_text);
    assert_eq!(
        u(r, &["input_audio_tokens"]),
        10,
        "one second of input audio, 10 tokens/s"
    );
    assert_eq!(u(r, &["output_text_tokens"]), transcript.div_ceil(4) as u64);
    // 24 kHz PCM16 is 48 bytes per ms; 20 tokens per second of output audio.
    let out_audio_ms = audio_bytes as u64 / 48;
    assert_eq!(
        u(r, &["output_audio_tokens"]),
        (out_audio_ms * 20).div_ceil(1000)
    );
    assert_eq!(
        u(r, &["input_tokens"]),
        u(r, &["input_text_tokens"]) + u(r, &["input_audio_tokens"])
    );
    gw.stop();
}

#[test]
fn upstream_closing_mid_response_gives_the_client_an_error_and_its_close_code() {
    let up = mock();
    let (gw, usage) = gateway_for(&up, "", "");
    let mut ws = session(gw.addr());
    read_until(&mut ws, "session.created");
    send(&mut ws, &user_text("go [[rt:close=1011,chunks=6]]"));
    read_until(&mut ws, "conversation.item.done");
    send(
        &mut ws,
        &sonic_rs::json!({"type": "response.create", "response": {"output_modalities": ["text"]}}),
    );
    let events = read_until(&mut ws, "response.done");
    let last = events.last().unwrap();
    assert_eq!(
        kind(last),
        "error",
        "{:?}",
        events.iter().map(kind).collect::<Vec<_>>()
    );
    assert_eq!(last["error"]["code"].as_str(), Some("upstream_closed"));
    assert!(events
        .iter()
        .any(|e| kind(e) == "response.output_text.delta"));
    let code = loop {
        match ws.read() {
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, Some(1011), "upstream's close code is passed on");
    let recs = records(&usage, 1);
    assert_eq!(recs.len(), 1, "the interrupted response is billed");
    assert_eq!(recs[0]["status"].as_str(), Some("interrupted"));
    assert_eq!(recs[0]["estimated"].as_bool(), Some(true));
    assert!(u(&recs[0], &["output_text_tokens"]) > 0);
    gw.stop();
}

#[test]
fn a_client_that_leaves_mid_response_closes_its_upstream_at_once() {
    let up = mock();
    let (gw, usage) = gateway_for(&up, "", "");
    let mut ws = session(gw.addr());
    read_until(&mut ws, "session.created");
    assert_eq!(up.stats().connections_open, 1);
    send(&mut ws, &user_text("long [[rt:chunks=400,delay_ms=20]]"));
    read_until(&mut ws, "conversation.item.done");
    send(
        &mut ws,
        &sonic_rs::json!({"type": "response.create", "response": {"output_modalities": ["text"]}}),
    );
    read_until(&mut ws, "response.output_text.delta");
    // Gone without a close frame.
    let stream = ws.get_mut();
    stream.shutdown(std::net::Shutdown::Both).ok();
    drop(ws);
    // The response would take 8 s; the upstream connection goes long before.
    let left = Instant::now();
    wait_for("the upstream connection to close", || {
        up.stats().connections_open == 0
    });
    assert!(left.elapsed() < Duration::from_secs(3));
    let recs = records(&usage, 1);
    assert_eq!(recs.len(), 1, "what was relayed is billed");
    assert_eq!(recs[0]["status"].as_str(), Some("interrupted"));
    gw.stop();
}

#[test]
fn a_client_that_stops_reading_is_cut_off_by_the_write_deadline() {
    let up = mock();
    let server =
        "client_write_timeout_secs = 1\nadmin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 50";
    let (gw, usage) = gateway_for(&up, server, "");
    let addr = gw.addr();
    let auth = format!("Bearer {CLIENT_KEY}");
    let mut ws = open_over(
        slow_reader(addr),
        addr,
        &format!("model={MODEL}"),
        &[("authorization", &auth)],
    )
    .expect("upgrade");
    read_until(&mut ws, "session.created");
    // About 20 MB of audio the client never reads.
    send(&mut ws, &user_text("talk [[rt:chunks=2000,audio_ms=200]]"));
    send(
        &mut ws,
        &sonic_rs::json!({"type": "response.create", "response": {"output_modalities": ["audio"]}}),
    );
    wait_for("the upstream connection to close", || {
        up.stats().connections_open == 0
    });
    let recs = records(&usage, 1);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["status"].as_str(), Some("interrupted"));
    let admin = gw.admin_addr().expect("admin");
    wait_for("a counted write timeout", || {
        metric(admin, "shardgate_client_write_timeouts_total") >= 1.0
    });
    gw.stop();
}

/// The sum of a Prometheus series on the admin listener.
fn metric(admin: SocketAddr, series: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(admin).expect("admin connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .expect("admin write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("admin reply");
    out.lines()
        .filter(|l| {
            l.strip_prefix(series)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn keys_come_from_headers_or_the_browser_subprotocol_never_the_query() {
    let up = mock();
    let (gw, _usage) = gateway_for(&up, "", "");
    let addr = gw.addr();
    let status = |e: tungstenite::Error| match e {
        tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    };
    let e = open(addr, &format!("model={MODEL}&api_key={CLIENT_KEY}"), &[]).unwrap_err();
    assert_eq!(status(e), 400);
    let e = open(
        addr,
        &format!("model={MODEL}"),
        &[("authorization", "Bearer sk-wrong")],
    )
    .unwrap_err();
    assert_eq!(status(e), 401);
    // Framing is checked as for /v1/responses: no upgrade over HTTP/1.0.
    let (code, _) = http(
        addr,
        &format!("GET /v1/realtime?model={MODEL} HTTP/1.0\r\nauthorization: Bearer {CLIENT_KEY}\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
    );
    assert_eq!(code, 400);
    // Browsers: the key as a subprotocol; the answer is `realtime`, never the key.
    let protocols =
        format!("realtime, openai-insecure-api-key.{CLIENT_KEY}, openai-beta.realtime-v1");
    let stream = TcpStream::connect(addr).unwrap();
    let mut req = format!("ws://{addr}/v1/realtime?model={MODEL}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    let (mut ws, resp) = tungstenite::client::client(req, stream).expect("subprotocol auth");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("realtime")
    );
    let created = read_until(&mut ws, "session.created");
    assert!(
        created[0]["session"]["input_audio_format"].is_str(),
        "beta shape asked by subprotocol"
    );
    let seen = up.stats();
    assert_eq!(
        seen.last_handshake_headers
            .get("openai-beta")
            .map(String::as_str),
        Some("realtime=v1")
    );
    assert!(seen
        .authorizations_seen
        .iter()
        .all(|a| !a.contains(CLIENT_KEY)));
    gw.stop();
}

#[test]
fn sessions_take_a_slot_of_the_account_budget_for_their_whole_life() {
    let up = mock();
    let usage = scratch_file("usage.jsonl");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\ndrain_timeout_secs = 5\n\
         [upstream]\nacquire_timeout_ms = 300\nretry_max_attempts = 1\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n\
         [[accounts]]\nid = \"acct-0\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 1\n\
         [usage]\npath = \"{}\"\n",
        up.base_url(),
        usage.display()
    );
    let gw = gateway(parse_config(&text));
    let mut first = session(gw.addr());
    read_until(&mut first, "session.created");
    let auth = format!("Bearer {CLIENT_KEY}");
    match open(
        gw.addr(),
        &format!("model={MODEL}"),
        &[("authorization", &auth)],
    ) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 429),
        Err(e) => panic!("expected 429, got {e}"),
        Ok(_) => panic!("a second session got past a budget of one"),
    }
    first.close(None).ok();
    let end = loop {
        if let Err(e) = first.read() {
            break e;
        }
    };
    assert!(
        matches!(end, tungstenite::Error::ConnectionClosed),
        "the gateway answers the client's close frame: {end}"
    );
    // The slot comes back when the first session ends.
    let mut second = session(gw.addr());
    read_until(&mut second, "session.created");
    assert_eq!(up.stats().realtime_sessions_total, 2);
    gw.stop();
}

#[test]
fn a_shutdown_ends_sessions_with_1001_and_bills_the_response_in_flight() {
    let up = mock();
    let (gw, usage) = gateway_for(&up, "", "");
    let mut ws = session(gw.addr());
    read_until(&mut ws, "session.created");
    send(&mut ws, &user_text("long [[rt:chunks=400,delay_ms=20]]"));
    read_until(&mut ws, "conversation.item.done");
    send(
        &mut ws,
        &sonic_rs::json!({"type": "response.create", "response": {"output_modalities": ["text"]}}),
    );
    read_until(&mut ws, "response.output_text.delta");
    let stopping = std::thread::spawn(move || gw.stop());
    let events = read_until(&mut ws, "response.done");
    let last = events.last().unwrap();
    assert_eq!(
        last["error"]["code"].as_str(),
        Some("shutting_down"),
        "{last}"
    );
    let code = loop {
        match ws.read() {
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, Some(1001));
    stopping.join().expect("gateway stops");
    let recs = records(&usage, 1);
    assert_eq!(
        recs.len(),
        1,
        "the response in flight is billed before the gateway stops"
    );
    assert_eq!(recs[0]["status"].as_str(), Some("interrupted"));
}

#[test]
fn a_client_message_over_the_limit_is_closed_with_1009_and_its_upstream_too() {
    let up = mock();
    let (gw, _usage) = gateway_for(&up, "max_message_bytes = 4096", "");
    let mut ws = session(gw.addr());
    read_until(&mut ws, "session.created");
    let chunk = base64::engine::general_purpose::STANDARD.encode(vec![1u8; 6_000]);
    send(
        &mut ws,
        &sonic_rs::json!({"type": "input_audio_buffer.append", "audio": chunk}),
    );
    let code = loop {
        match ws.read() {
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, Some(1009));
    wait_for("the upstream connection to close", || {
        up.stats().connections_open == 0
    });
    gw.stop();
}

#[test]
fn a_silent_session_idles_out_with_an_error_and_1000() {
    let up = mock();
    let (gw, _usage) = gateway_for(&up, "idle_timeout_secs = 0.5", "");
    let mut ws = session(gw.addr());
    read_until(&mut ws, "session.created");
    let started = Instant::now();
    let events = read_until(&mut ws, "error");
    assert_eq!(
        events.last().unwrap()["error"]["code"].as_str(),
        Some("session_idle_timeout")
    );
    let code = loop {
        match ws.read() {
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, Some(1000));
    assert!(started.elapsed() >= Duration::from_millis(400));
    wait_for("the upstream connection to close", || {
        up.stats().connections_open == 0
    });
    gw.stop();
}
