//! End-to-end tests of the mock upstream over real loopback sockets: the sync tungstenite client
//! for WebSocket, std `TcpStream` (and rustls for TLS) for HTTP.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::{
    self, client::IntoClientRequest, protocol::WebSocketConfig, Message, WebSocket,
};
use futures_rustls::rustls;
use rustls_pki_types::pem::PemObject;
use shardgate::mock::{self, MockConfig, MockHandle, MockStats, Rule, Script};
use sonic_rs::{json, JsonContainerTrait, JsonValueMutTrait, JsonValueTrait, Value};

const READ_TIMEOUT: Duration = Duration::from_secs(5);

fn start(cfg: MockConfig) -> MockHandle {
    mock::start(cfg).expect("mock starts")
}

fn plain() -> MockHandle {
    start(MockConfig::default())
}

// ---------------------------------------------------------------- WebSocket helpers

type Ws<S = TcpStream> = WebSocket<S>;

fn ws_request(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}/v1/responses")
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    req
}

/// A refused handshake: its status and `Retry-After`.
type Refusal = (u16, Option<String>);

fn try_ws(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Ws, Refusal> {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let config = WebSocketConfig::default()
        .max_frame_size(Some(64 << 20))
        .max_message_size(Some(64 << 20));
    match tungstenite::client::client_with_config(ws_request(addr, headers), tcp, Some(config)) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => Err((
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        )),
        Err(e) => panic!("handshake error {e}"),
    }
}

fn ws(h: &MockHandle) -> Ws {
    try_ws(h.addr(), &[]).unwrap_or_else(|e| panic!("handshake refused: {e:?}"))
}

fn send<S: Read + Write>(ws: &mut Ws<S>, v: Value) {
    ws.send(Message::text(sonic_rs::to_string(&v).expect("json")))
        .expect("send");
}

fn create(extra: Value) -> Value {
    let mut v = json!({"type": "response.create", "model": "gpt-test", "input": "hello"});
    if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in more.iter() {
            obj.insert(k, val.clone());
        }
    }
    v
}

fn next_event<S: Read + Write>(ws: &mut Ws<S>) -> Value {
    loop {
        match ws.read().expect("read event") {
            Message::Text(t) => return sonic_rs::from_str(t.as_str()).expect("event json"),
            Message::Close(f) => panic!("unexpected close {f:?}"),
            _ => continue,
        }
    }
}

/// Reads events until a terminal one (`response.completed` or `error`).
fn read_turn<S: Read + Write>(ws: &mut Ws<S>) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let ev = next_event(ws);
        let done = matches!(kind(&ev), "response.completed" | "error");
        events.push(ev);
        if done {
            return events;
        }
    }
}

fn turn<S: Read + Write>(ws: &mut Ws<S>, extra: Value) -> Vec<Value> {
    send(ws, create(extra));
    read_turn(ws)
}

fn kind(ev: &Value) -> &str {
    ev["type"].as_str().unwrap_or("")
}

fn response_id(events: &[Value]) -> String {
    events[0]["response"]["id"]
        .as_str()
        .expect("response id")
        .to_string()
}

/// The upstream connection id encoded in a response id.
fn conn_of(id: &str) -> u64 {
    let rest = id.strip_prefix("resp_c").expect("resp_c prefix");
    rest[..rest.find('t').expect("t")].parse().expect("conn id")
}

fn error_code(ev: &Value) -> Option<&str> {
    ev["error"]["code"].as_str()
}

/// Reads until the close frame and returns its code.
fn close_code<S: Read + Write>(ws: &mut Ws<S>) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return frame.code.into(),
            Ok(Message::Close(None)) => panic!("close without code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    common::eventually(what, Duration::from_secs(20), f);
}

// ---------------------------------------------------------------- HTTP helpers

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        sonic_rs::from_slice(&self.body).expect("json body")
    }

    /// The SSE records of the body: (event, data).
    fn sse(&self) -> Vec<(String, Value)> {
        let text = String::from_utf8(self.body.clone()).expect("utf8");
        text.split("\n\n")
            .filter(|r| !r.is_empty())
            .map(|record| {
                let mut lines = record.lines();
                let event = lines.next().and_then(|l| l.strip_prefix("event: "));
                let data = lines.next().and_then(|l| l.strip_prefix("data: "));
                (
                    event.expect("event line").to_string(),
                    sonic_rs::from_str(data.expect("data line")).expect("data json"),
                )
            })
            .collect()
    }
}

/// Reads one HTTP response (Content-Length, chunked, or until close).
fn read_response(stream: &mut impl Read) -> HttpResponse {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read head");
        assert!(n > 0, "eof in head: {:?}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&buf).expect("response head");
    let status = resp.code.expect("status");
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into()))
        .collect();
    let mut r = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = r.header("content-length") {
        let mut body = vec![0; len.parse().expect("length")];
        stream.read_exact(&mut body).expect("body");
        r.body = body;
    } else if r.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                stream.read_exact(&mut byte).expect("chunk size");
                line.push(byte[0]);
            }
            let size = usize::from_str_radix(std::str::from_utf8(&line).expect("utf8").trim(), 16)
                .expect("hex");
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk).expect("chunk");
            if size == 0 {
                break;
            }
            r.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        stream.read_to_end(&mut r.body).expect("body to eof");
    }
    r
}

fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn http_on(
    stream: &mut (impl Read + Write),
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    stream
        .write_all(&raw_request(method, path, headers, body))
        .expect("write request");
    read_response(stream)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    s
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    http_on(&mut connect(addr), method, path, &[], body)
}

fn post_json(addr: SocketAddr, v: Value) -> HttpResponse {
    let body = sonic_rs::to_string(&v).expect("json");
    http(addr, "POST", "/v1/responses", body.as_bytes())
}

fn stats_over_http(addr: SocketAddr) -> MockStats {
    let r = http(addr, "GET", "/_mock/stats", b"");
    assert_eq!(r.status, 200);
    sonic_rs::from_slice(&r.body).expect("stats json")
}

// ---------------------------------------------------------------- WebSocket turns

#[test]
fn normal_turn_has_the_full_event_sequence_and_usage() {
    let h = start(MockConfig {
        deltas: 3,
        delta_bytes: 5,
        ..MockConfig::default()
    });
    let mut ws = try_ws(
        h.addr(),
        &[("openai-beta", "responses_websockets=2026-02-06")],
    )
    .expect("handshake");
    let input = json!([{"type": "message", "role": "user", "content": "what is up"}]);
    let events = turn(&mut ws, json!({ "input": input.clone() }));
    let kinds: Vec<&str> = events.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev["sequence_number"].as_u64(), Some(i as u64), "{ev:?}");
        assert!(ev["mock_ts_us"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000_000));
    }
    let id = response_id(&events);
    assert!(
        id.starts_with("resp_c1t1_") && id.len() == "resp_c1t1_".len() + 6,
        "{id}"
    );
    assert_eq!(
        events[0]["response"]["status"].as_str(),
        Some("in_progress")
    );
    assert!(events[0]["response"]["usage"].is_null());
    let deltas: String = events
        .iter()
        .filter(|e| kind(e) == "response.output_text.delta")
        .map(|e| e["delta"].as_str().expect("delta").to_string())
        .collect();
    assert_eq!(deltas.len(), 15);
    let done = &events[10]["response"];
    assert_eq!(done["status"].as_str(), Some("completed"));
    assert_eq!(done["model"].as_str(), Some("gpt-test"));
    assert_eq!(done["id"].as_str(), Some(id.as_str()));
    assert_eq!(
        done["output"][0]["content"][0]["text"].as_str(),
        Some(deltas.as_str())
    );
    let input_len = sonic_rs::to_string(&input).expect("json").len() as u64;
    let usage = &done["usage"];
    assert_eq!(usage["input_tokens"].as_u64(), Some(input_len.div_ceil(4)));
    assert_eq!(
        usage["input_tokens_details"]["cached_tokens"].as_u64(),
        Some(0)
    );
    assert_eq!(usage["output_tokens"].as_u64(), Some(3));
    assert_eq!(
        usage["output_tokens_details"]["reasoning_tokens"].as_u64(),
        Some(0)
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(input_len.div_ceil(4) + 3)
    );

    let second = turn(&mut ws, json!({}));
    assert!(response_id(&second).starts_with("resp_c1t2_"));
    let stats = h.stats();
    assert_eq!(stats.ws_turns_total, 2);
    assert_eq!(stats.handshakes.get(&101), Some(&1));
    assert_eq!(stats.turns_by_conn.get(&1), Some(&2));
    assert_eq!(
        stats
            .last_handshake_headers
            .get("openai-beta")
            .map(String::as_str),
        Some("responses_websockets=2026-02-06")
    );
    assert_eq!(stats.connections_open, 1);
    drop(ws);
    wait_for("connection close", || h.stats().connections_open == 0);
}

#[test]
fn store_false_chain_is_connection_local_and_failures_evict() {
    let h = plain();
    let mut a = ws(&h);
    let first = response_id(&turn(&mut a, json!({"store": false})));
    let second = turn(
        &mut a,
        json!({"store": false, "previous_response_id": first}),
    );
    assert_eq!(kind(second.last().expect("event")), "response.completed");
    let second = response_id(&second);

    let mut b = ws(&h);
    let refused = turn(
        &mut b,
        json!({"store": false, "previous_response_id": second}),
    );
    assert_eq!(refused.len(), 1);
    let err = &refused[0];
    assert_eq!(kind(err), "error");
    assert_eq!(err["status"].as_u64(), Some(400));
    assert_eq!(err["error"]["type"].as_str(), Some("invalid_request_error"));
    assert_eq!(error_code(err), Some("previous_response_not_found"));
    assert_eq!(err["error"]["param"].as_str(), Some("previous_response_id"));
    assert_eq!(
        err["error"]["message"].as_str().map(str::to_string),
        Some(format!("Previous response with id '{second}' not found."))
    );
    // Only the most recent response of `a` is usable, and a failed turn evicts it.
    let stale = turn(
        &mut a,
        json!({"store": false, "previous_response_id": first}),
    );
    assert_eq!(error_code(&stale[0]), Some("previous_response_not_found"));
    let evicted = turn(
        &mut a,
        json!({"store": false, "previous_response_id": second}),
    );
    assert_eq!(error_code(&evicted[0]), Some("previous_response_not_found"));
    // A null previous_response_id is absent.
    let fresh = turn(
        &mut a,
        json!({"store": false, "previous_response_id": null}),
    );
    assert_eq!(kind(fresh.last().expect("event")), "response.completed");
    assert_eq!(h.stats().previous_response_not_found_total, 3);
}

#[test]
fn stored_chain_works_across_connections_and_over_http() {
    let h = plain();
    let mut a = ws(&h);
    let id = response_id(&turn(&mut a, json!({})));
    let mut b = ws(&h);
    let chained = turn(&mut b, json!({"previous_response_id": id}));
    assert_eq!(kind(chained.last().expect("event")), "response.completed");
    assert_eq!(conn_of(&response_id(&chained)), 2);
    let over_http = post_json(h.addr(), json!({"model": "m", "previous_response_id": id}));
    assert_eq!(over_http.status, 200);
    // store=false ids are not usable over HTTP.
    let local = response_id(&turn(&mut a, json!({"store": false})));
    let r = post_json(
        h.addr(),
        json!({"model": "m", "previous_response_id": local}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["code"].as_str(),
        Some("previous_response_not_found")
    );
}

#[test]
fn warm_up_then_chained_turn() {
    let h = plain();
    let mut ws = ws(&h);
    let warm = turn(&mut ws, json!({"generate": false, "store": false}));
    assert_eq!(
        warm.iter().map(kind).collect::<Vec<_>>(),
        ["response.created", "response.completed"]
    );
    let done = &warm[1]["response"];
    assert_eq!(done["output"].as_array().map(|a| a.len()), Some(0));
    assert_eq!(done["usage"]["input_tokens"].as_u64(), Some(0));
    assert_eq!(done["usage"]["total_tokens"].as_u64(), Some(0));
    let chained = turn(
        &mut ws,
        json!({"store": false, "previous_response_id": response_id(&warm)}),
    );
    assert_eq!(kind(chained.last().expect("event")), "response.completed");
    assert_eq!(h.stats().generate_false_total, 1);
}

#[test]
fn invalid_frames_get_an_error_and_the_connection_stays_open() {
    let h = plain();
    let mut ws = ws(&h);
    for frame in ["not json", r#"{"type":"response.cancel"}"#, "[1,2]"] {
        ws.send(Message::text(frame)).expect("send");
        let ev = next_event(&mut ws);
        assert_eq!(kind(&ev), "error");
        assert_eq!(ev["status"].as_u64(), Some(400));
        assert_eq!(ev["error"]["type"].as_str(), Some("invalid_request_error"));
        assert_eq!(error_code(&ev), Some("invalid_request"));
        assert!(ev["error"]["param"].is_null());
    }
    let ok = turn(&mut ws, json!({}));
    assert_eq!(kind(ok.last().expect("event")), "response.completed");
    assert_eq!(h.stats().invalid_requests_total, 3);
}

// ---------------------------------------------------------------- faults

#[test]
fn error_directive_sends_an_error_event_and_keeps_the_connection() {
    let h = plain();
    let mut ws = ws(&h);
    let events = turn(
        &mut ws,
        json!({"metadata": {"mock": "after=2,error=rate_limit_exceeded"}}),
    );
    assert_eq!(
        events.iter().map(kind).collect::<Vec<_>>(),
        ["response.created", "response.in_progress", "error"]
    );
    let err = &events[2];
    assert_eq!(err["status"].as_u64(), Some(429));
    assert_eq!(err["error"]["type"].as_str(), Some("rate_limit_error"));
    assert_eq!(err["sequence_number"].as_u64(), Some(2));
    // The failed turn evicted the connection's last id; a new turn works.
    let failed_id = response_id(&events);
    let chained = turn(&mut ws, json!({"previous_response_id": failed_id}));
    assert_eq!(error_code(&chained[0]), Some("previous_response_not_found"));
    let server = turn(&mut ws, json!({"input": "[[mock:error=server_error]]"}));
    assert_eq!(server[0]["status"].as_u64(), Some(500));
    assert_eq!(server[0]["error"]["type"].as_str(), Some("server_error"));
    assert_eq!(h.stats().faults.get("error"), Some(&2));
}

#[test]
fn close_directives_send_their_codes() {
    let h = plain();
    for (code, via_script) in [
        (1008u16, false),
        (1009, true),
        (1011, false),
        (1012, true),
        (1013, false),
    ] {
        let mut ws = ws(&h);
        let directive = format!("after=1,close={code}");
        let extra = if via_script {
            h.script(Script {
                turns: vec![Rule {
                    value: directive,
                    times: 1,
                }],
                ..Script::default()
            });
            json!({})
        } else {
            json!({ "metadata": { "mock": directive } })
        };
        send(&mut ws, create(extra));
        assert_eq!(kind(&next_event(&mut ws)), "response.created");
        assert_eq!(close_code(&mut ws), code);
    }
    let sent = h.stats().close_codes_sent;
    for code in [1008, 1009, 1011, 1012, 1013] {
        assert_eq!(sent.get(&code), Some(&1), "{sent:?}");
    }
}

#[test]
fn drop_ends_the_connection_without_a_close_frame() {
    let h = plain();
    let mut ws = ws(&h);
    send(
        &mut ws,
        create(json!({"metadata": {"mock": "after=3,drop"}})),
    );
    for _ in 0..3 {
        next_event(&mut ws);
    }
    match ws.read() {
        Ok(m) => panic!("expected an abrupt end, got {m:?}"),
        Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ))
        | Err(tungstenite::Error::Io(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn stall_sends_nothing_more_until_the_next_frame() {
    let h = plain();
    let mut ws = ws(&h);
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    send(&mut ws, create(json!({"input": "[[mock:after=3,stall]]"})));
    let stalled: Vec<Value> = (0..3).map(|_| next_event(&mut ws)).collect();
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected a read timeout, got {other:?}"),
    }
    ws.get_ref()
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    // The stalled turn never completed, so its id is not usable; the connection still serves.
    let next = turn(
        &mut ws,
        json!({"previous_response_id": response_id(&stalled)}),
    );
    assert_eq!(error_code(&next[0]), Some("previous_response_not_found"));
    let ok = turn(&mut ws, json!({}));
    assert_eq!(kind(ok.last().expect("event")), "response.completed");
}

#[test]
fn oversize_sends_one_17_mib_frame() {
    let h = plain();
    let mut ws = ws(&h);
    send(
        &mut ws,
        create(json!({"metadata": {"mock": "after=1,oversize"}})),
    );
    assert_eq!(kind(&next_event(&mut ws)), "response.created");
    match ws.read().expect("big frame") {
        Message::Text(t) => {
            assert!(t.len() > 17 << 20, "{}", t.len());
            let v: Value = sonic_rs::from_str(t.as_str()).expect("valid json");
            assert_eq!(kind(&v), "response.output_text.delta");
        }
        other => panic!("expected text, got {other:?}"),
    }
    let rest = read_turn(&mut ws);
    assert_eq!(kind(rest.last().expect("event")), "response.completed");
}

#[test]
fn limit_sends_the_documented_error_then_closes_1000() {
    let h = plain();
    let mut ws = ws(&h);
    let events = turn(&mut ws, json!({"metadata": {"mock": "limit"}}));
    assert_eq!(events.len(), 1);
    assert_eq!(
        error_code(&events[0]),
        Some("websocket_connection_limit_reached")
    );
    assert_eq!(
        events[0]["error"]["message"].as_str(),
        Some("Responses websocket connection limit reached (60 minutes). Create a new websocket connection to continue.")
    );
    assert_eq!(close_code(&mut ws), 1000);
}

#[test]
fn tool_calls_pair_with_their_outputs() {
    let h = plain();
    let mut ws = ws(&h);
    let events = turn(
        &mut ws,
        json!({"store": false, "metadata": {"mock": "tool=shell"}}),
    );
    let kinds: Vec<&str> = events.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let item = &events[6]["response"]["output"][0];
    assert_eq!(item["type"].as_str(), Some("function_call"));
    assert_eq!(item["name"].as_str(), Some("shell"));
    assert_eq!(
        item["arguments"].as_str(),
        Some(r#"{"command":["echo","mock"]}"#)
    );
    let call_id = item["call_id"].as_str().expect("call id").to_string();
    assert!(call_id.starts_with("call_"));
    let id = response_id(&events);

    let output =
        |call: &str| json!([{"type": "function_call_output", "call_id": call, "output": "mock"}]);
    let wrong = turn(
        &mut ws,
        json!({"store": false, "previous_response_id": id, "input": output("call_nope")}),
    );
    assert_eq!(wrong[0]["status"].as_u64(), Some(400));
    assert_eq!(
        wrong[0]["error"]["type"].as_str(),
        Some("invalid_request_error")
    );
    assert_eq!(
        wrong[0]["error"]["message"].as_str(),
        Some("No tool call found for function call output with call_id call_nope.")
    );
    // The failure evicted `id` from the connection; a fresh tool turn, then the right output.
    let events = turn(
        &mut ws,
        json!({"store": false, "metadata": {"mock": "tool=shell"}}),
    );
    let call_id = events[6]["response"]["output"][0]["call_id"]
        .as_str()
        .expect("call id")
        .to_string();
    let paired = turn(
        &mut ws,
        json!({"store": false, "previous_response_id": response_id(&events), "input": output(&call_id)}),
    );
    assert_eq!(kind(paired.last().expect("event")), "response.completed");
    // Without previous_response_id, the call must be in the same input.
    let alone = turn(&mut ws, json!({"input": output("call_x")}));
    assert_eq!(kind(&alone[0]), "error");
    let both = json!([
        {"type": "function_call", "call_id": "call_x", "name": "shell", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_x", "output": "ok"}
    ]);
    let full = turn(&mut ws, json!({ "input": both }));
    assert_eq!(kind(full.last().expect("event")), "response.completed");
    assert_eq!(h.stats().tool_output_not_found_total, 2);
}

// ---------------------------------------------------------------- handshakes and auth

fn handshake_status(addr: SocketAddr, headers: &[(&str, &str)]) -> Refusal {
    match try_ws(addr, headers) {
        Ok(_) => (101, None),
        Err(refusal) => refusal,
    }
}

#[test]
fn scripted_handshake_statuses_and_refuse_ws() {
    let h = plain();
    h.script(Script {
        handshakes: vec![
            Rule {
                value: 503,
                times: 1,
            },
            Rule {
                value: 429,
                times: 1,
            },
            Rule {
                value: 101,
                times: 1,
            },
            Rule {
                value: 404,
                times: 2,
            },
        ],
        ..Script::default()
    });
    assert_eq!(handshake_status(h.addr(), &[]), (503, None));
    assert_eq!(handshake_status(h.addr(), &[]), (429, Some("1".into())));
    assert_eq!(handshake_status(h.addr(), &[]).0, 101);
    assert_eq!(handshake_status(h.addr(), &[]).0, 404);
    assert_eq!(handshake_status(h.addr(), &[]).0, 404);
    assert_eq!(handshake_status(h.addr(), &[]).0, 101);
    h.script(Script {
        refuse_ws: Some(426),
        ..Script::default()
    });
    for _ in 0..3 {
        assert_eq!(handshake_status(h.addr(), &[]).0, 426);
    }
    // HTTP keeps working while WebSocket is refused.
    assert_eq!(post_json(h.addr(), json!({"model": "m"})).status, 200);
    let stats = h.stats();
    assert_eq!(stats.handshakes.get(&426), Some(&3));
    assert_eq!(stats.handshakes.get(&101), Some(&2));
    assert_eq!(stats.handshakes.get(&404), Some(&2));
    h.reset();
    assert_eq!(handshake_status(h.addr(), &[]).0, 101);
    assert_eq!(h.stats().handshakes.get(&426), None);
}

#[test]
fn require_key_refuses_missing_and_wrong_keys() {
    let h = start(MockConfig {
        require_key: Some("sk-good".into()),
        ..MockConfig::default()
    });
    assert_eq!(handshake_status(h.addr(), &[]).0, 401);
    assert_eq!(
        handshake_status(h.addr(), &[("authorization", "Bearer sk-bad")]).0,
        401
    );
    assert_eq!(
        handshake_status(h.addr(), &[("authorization", "Bearer sk-good")]).0,
        101
    );
    let denied = post_json(h.addr(), json!({"model": "m"}));
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.json()["error"]["code"].as_str(),
        Some("invalid_api_key")
    );
    let allowed = http_on(
        &mut connect(h.addr()),
        "POST",
        "/v1/responses",
        &[("Authorization", "Bearer sk-good")],
        br#"{"model":"m"}"#,
    );
    assert_eq!(allowed.status, 200);
    let stats = h.stats();
    assert_eq!(stats.auth_failures, 3);
    assert_eq!(
        stats
            .authorizations_seen
            .iter()
            .cloned()
            .collect::<Vec<_>>(),
        ["Bearer sk-bad", "Bearer sk-good"]
    );
    assert_eq!(stats.handshakes.get(&401), Some(&2));
}

// ---------------------------------------------------------------- HTTP

#[test]
fn http_json_and_keep_alive_share_a_connection_id() {
    let h = plain();
    let mut stream = connect(h.addr());
    let body = br#"{"model":"gpt-http","input":"abcdefgh","stream":false}"#;
    let first = http_on(&mut stream, "POST", "/v1/responses", &[], body);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-type"), Some("application/json"));
    let v = first.json();
    assert_eq!(v["object"].as_str(), Some("response"));
    assert_eq!(v["status"].as_str(), Some("completed"));
    assert_eq!(v["model"].as_str(), Some("gpt-http"));
    assert_eq!(v["usage"]["input_tokens"].as_u64(), Some(3)); // "\"abcdefgh\"" = 10 bytes
    assert_eq!(v["usage"]["output_tokens"].as_u64(), Some(8));
    let second = http_on(&mut stream, "POST", "/v1/responses", &[], body);
    let (a, b) = (
        v["id"].as_str().expect("id").to_string(),
        second.json()["id"].as_str().expect("id").to_string(),
    );
    assert_eq!(conn_of(&a), conn_of(&b));
    assert!(b.starts_with(&format!("resp_c{}t2_", conn_of(&a))));
    let stats = h.stats();
    assert_eq!(stats.http_requests_total, 2);
    assert_eq!(stats.connections_total, 1);
}

#[test]
fn http_sse_streams_the_same_events() {
    let h = plain();
    let r = post_json(
        h.addr(),
        json!({"model": "m", "input": "hi", "stream": true}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let records = r.sse();
    assert_eq!(records.len(), 16);
    for (i, (event, data)) in records.iter().enumerate() {
        assert_eq!(event.as_str(), kind(data));
        assert_eq!(data["sequence_number"].as_u64(), Some(i as u64));
        assert!(data["mock_ts_us"].as_u64().is_some());
    }
    assert_eq!(records[15].0, "response.completed");
    assert!(!String::from_utf8_lossy(&r.body).contains("[DONE]"));
}

#[test]
fn http_errors_before_and_after_events() {
    let h = plain();
    let r = post_json(
        h.addr(),
        json!({"model": "m", "stream": true, "metadata": {"mock": "error=rate_limit_exceeded"}}),
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["type"].as_str(), Some("rate_limit_error"));
    let r = post_json(
        h.addr(),
        json!({"model": "m", "stream": true, "metadata": {"mock": "after=2,error=server_error"}}),
    );
    assert_eq!(r.status, 200);
    let kinds: Vec<String> = r.sse().into_iter().map(|(e, _)| e).collect();
    assert_eq!(kinds, ["response.created", "response.in_progress", "error"]);
    let r = post_json(
        h.addr(),
        json!({"model": "m", "metadata": {"mock": "http_status=503"}}),
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["type"].as_str(), Some("server_error"));
    h.script(Script {
        http: vec![Rule {
            value: 502,
            times: 1,
        }],
        ..Script::default()
    });
    assert_eq!(post_json(h.addr(), json!({"model": "m"})).status, 502);
    assert_eq!(post_json(h.addr(), json!({"model": "m"})).status, 200);
}

#[test]
fn http_refuses_generate_and_invalid_json() {
    let h = plain();
    let r = post_json(h.addr(), json!({"model": "m", "generate": false}));
    assert_eq!(r.status, 400);
    let expected = json!({"error": {
        "message": "Unsupported parameter: 'generate'",
        "type": "invalid_request_error",
        "param": "generate",
        "code": "unsupported_parameter"
    }});
    assert_eq!(r.json(), expected);
    let r = http(h.addr(), "POST", "/v1/responses", b"{not json");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["type"].as_str(),
        Some("invalid_request_error")
    );
    let stats = h.stats();
    assert_eq!(stats.http_generate_rejected_total, 1);
    assert_eq!(stats.http_requests_total, 2);
}

#[test]
fn http_routing_chunked_bodies_and_malformed_requests() {
    let h = plain();
    assert_eq!(http(h.addr(), "GET", "/v1/models", b"").status, 404);
    assert_eq!(http(h.addr(), "GET", "/v1/responses", b"").status, 405);
    let mut s = connect(h.addr());
    s.write_all(
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          6\r\n{\"mode\r\nc\r\nl\":\"chunky\"}\r\n0\r\n\r\n",
    )
    .expect("write");
    let r = read_response(&mut s);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"].as_str(), Some("chunky"));
    let mut s = connect(h.addr());
    s.write_all(b"\x16\x03\x01 garbage\r\n\r\n").expect("write");
    let r = read_response(&mut s);
    assert_eq!(r.status, 400);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).expect("closed"), 0);
}

// ---------------------------------------------------------------- TLS, control, shards

fn tls_client(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("pem");
    roots.add(der).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn tls_stream(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).expect("name");
    let conn = rustls::ClientConnection::new(config.clone(), server_name).expect("client");
    rustls::StreamOwned::new(conn, connect(addr))
}

#[test]
fn tls_with_the_self_signed_certificate() {
    let h = start(MockConfig {
        tls_self_signed: true,
        ..MockConfig::default()
    });
    assert_eq!(
        h.base_url(),
        format!("https://localhost:{}/v1", h.addr().port())
    );
    let pem = h.ca_pem().expect("pem");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let config = tls_client(&pem);

    let stream = tls_stream(h.addr(), &config, "localhost");
    let url = format!("wss://localhost:{}/v1/responses", h.addr().port());
    let (mut ws, _) = tungstenite::client::client(url, stream).expect("wss handshake");
    let events = turn(&mut ws, json!({}));
    assert_eq!(kind(events.last().expect("event")), "response.completed");

    let mut https = tls_stream(h.addr(), &config, "127.0.0.1");
    let r = http_on(
        &mut https,
        "POST",
        "/v1/responses",
        &[],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"].as_str(), Some("completed"));
}

#[test]
fn control_endpoints_script_stats_and_reset() {
    let h = plain();
    let script = br#"{"turns":[{"value":"close=1013"}],"handshakes":[{"value":503,"times":1}]}"#;
    let r = http(h.addr(), "POST", "/_mock/script", script);
    assert_eq!(r.status, 200);
    assert_eq!(handshake_status(h.addr(), &[]).0, 503);
    let mut ws = ws(&h);
    send(&mut ws, create(json!({})));
    assert_eq!(close_code(&mut ws), 1013);
    assert_eq!(
        http(h.addr(), "POST", "/_mock/script", b"{oops").status,
        400
    );

    let stats = stats_over_http(h.addr());
    assert_eq!(stats.handshakes.get(&503), Some(&1));
    assert_eq!(stats.handshakes.get(&101), Some(&1));
    assert_eq!(stats.close_codes_sent.get(&1013), Some(&1));
    assert_eq!(stats.turns_by_conn.values().sum::<u64>(), 1);
    assert_eq!(stats.ws_turns_total, h.stats().ws_turns_total);

    assert_eq!(http(h.addr(), "POST", "/_mock/reset", b"").status, 200);
    let stats = stats_over_http(h.addr());
    assert_eq!(stats.ws_turns_total, 0);
    assert!(stats.handshakes.is_empty());
    assert_eq!(http(h.addr(), "GET", "/_mock/nothing", b"").status, 404);
}

#[test]
fn shards_share_the_port_and_the_id_space() {
    let h = start(MockConfig {
        shards: 2,
        ..MockConfig::default()
    });
    let mut sockets: Vec<Ws> = (0..8).map(|_| ws(&h)).collect();
    let mut conns: Vec<u64> = sockets
        .iter_mut()
        .map(|s| conn_of(&response_id(&turn(s, json!({})))))
        .collect();
    conns.sort_unstable();
    assert_eq!(conns, (1..=8).collect::<Vec<_>>());
    let stats = h.stats();
    assert_eq!(stats.ws_connections_total, 8);
    assert_eq!(stats.connections_open, 8);
    drop(sockets);
    h.stop();
}

#[test]
fn delays_are_applied() {
    let h = start(MockConfig {
        ttft: Duration::from_millis(150),
        ..MockConfig::default()
    });
    let mut ws = ws(&h);
    let started = Instant::now();
    let events = turn(
        &mut ws,
        json!({"metadata": {"mock": "deltas=2,delay_ms=20"}}),
    );
    let elapsed = started.elapsed();
    assert_eq!(events.len(), 10);
    assert!(
        elapsed >= Duration::from_millis(150 + 9 * 20),
        "{elapsed:?}"
    );
    let first_delta = events
        .iter()
        .position(|e| kind(e) == "response.output_text.delta")
        .expect("delta");
    let gap = events[first_delta]["mock_ts_us"].as_u64().unwrap_or(0)
        - events[first_delta - 1]["mock_ts_us"].as_u64().unwrap_or(0);
    assert!(gap >= 150_000, "{gap}");
}

#[test]
fn websocket_ids_follow_upgrade_order() {
    let h = plain();
    let mut first = ws(&h);
    let mut second = ws(&h);
    let b = response_id(&turn(&mut second, json!({})));
    let a = response_id(&turn(&mut first, json!({})));
    assert_eq!((conn_of(&a), conn_of(&b)), (1, 2));
}

#[test]
fn a_peer_vanishing_mid_turn_ends_only_its_connection() {
    let h = plain();
    let mut leaving = ws(&h);
    send(
        &mut leaving,
        create(json!({"metadata": {"mock": "deltas=200,delay_ms=5"}})),
    );
    next_event(&mut leaving);
    drop(leaving);
    let mut staying = ws(&h);
    wait_for("the vanished peer's task to end", || {
        h.stats().connections_open == 1
    });
    let ok = turn(&mut staying, json!({}));
    assert_eq!(kind(ok.last().expect("event")), "response.completed");
}

#[test]
fn stop_ends_open_and_stalled_connections() {
    let h = plain();
    let mut stalled = ws(&h);
    send(&mut stalled, create(json!({"metadata": {"mock": "stall"}})));
    let mut idle = connect(h.addr());
    idle.write_all(b"POST /v1/responses HTTP/1.1\r\nHost: mock\r\nContent-Length: 100\r\n\r\n{")
        .expect("partial request");
    wait_for("both connections", || h.stats().connections_open == 2);
    let started = Instant::now();
    h.stop();
    // Both sockets are closed by the stop itself, well before the clients' read timeouts.
    assert!(stalled.read().is_err());
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).expect("eof"), 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
