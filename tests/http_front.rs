//! The HTTP front door end to end: `POST /v1/responses` through the gateway to the mock, over the
//! upstream WebSocket pool by default and over HTTP/SSE when the account says so.

mod common;

use std::time::Duration;

use common::*;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

#[test]
fn stream_true_is_sse_over_the_websocket_pool() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = HttpConn::open(gw.addr());
    let r = c.post("/v1/responses", &post_body("gpt-5", "hello", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = r.sse();
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events.last().unwrap().0, "response.completed");
    for (name, data) in &events {
        assert_eq!(data["type"].as_str(), Some(name.as_str()));
    }
    let stats = up.stats();
    assert_eq!(stats.ws_turns_total, 1, "went over the WebSocket pool");
    assert_eq!(stats.http_requests_total, 0);
}

#[test]
fn non_stream_is_the_final_response_object() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = HttpConn::open(gw.addr());
    let r = c.post("/v1/responses", &post_body("gpt-5", "hello", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["object"].as_str(), Some("response"));
    assert_eq!(v["status"].as_str(), Some("completed"));
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn keep_alive_carries_two_requests_and_aliases_are_served() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = HttpConn::open(gw.addr());
    let a = c.post("/v1/responses", &post_body("gpt-5", "one", false));
    let b = c.post("/responses", &post_body("gpt-5", "two", true));
    let d = c.post(
        "/backend-api/codex/responses",
        &post_body("gpt-5", "three", false),
    );
    assert_eq!((a.status, b.status, d.status), (200, 200, 200));
    assert_eq!(b.sse().last().unwrap().0, "response.completed");
    assert_eq!(up.stats().ws_turns_total, 3);
}

#[test]
fn chunked_request_body_is_read() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let body = post_body("gpt-5", "chunked", false);
    let (a, b) = body.split_at(10);
    let raw = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let mut c = HttpConn::open(gw.addr());
    let r = c.raw(raw.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"].as_str(), Some("completed"));
    // The connection is still usable.
    let r = c.post("/v1/responses", &post_body("gpt-5", "after", false));
    assert_eq!(r.status, 200);
}

#[test]
fn bad_chunked_bodies_are_refused_before_their_data_arrives() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], "max_message_bytes = 1024"));
    let head = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    // A chunk that would take the body over the limit: 413 on its size line alone.
    let (status, text) = http(
        gw.addr(),
        &format!("{head}200\r\n{}\r\n201\r\n", "x".repeat(0x200)),
    );
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("request_too_large"), "{text}");
    // A size line that is not hex, and one that never ends.
    let (status, text) = http(gw.addr(), &format!("{head}zz\r\n"));
    assert_eq!(status, 400, "{text}");
    let (status, text) = http(gw.addr(), &format!("{head}1;{}", "e".repeat(5000)));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("too long"), "{text}");
    assert_eq!(
        up.stats().ws_turns_total + up.stats().http_requests_total,
        0
    );
}

#[test]
fn oversize_body_is_413_and_malformed_is_400_and_bad_key_is_401() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], "max_message_bytes = 1024"));
    let mut c = HttpConn::open(gw.addr());
    let r = c.post(
        "/v1/responses",
        &format!("{{\"input\":\"{}\"}}", "x".repeat(2000)),
    );
    assert_eq!(r.status, 413);
    assert_eq!(
        r.json()["error"]["code"].as_str(),
        Some("request_too_large")
    );

    let mut c = HttpConn::open(gw.addr());
    let r = c.post("/v1/responses", "{not json");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.json()["error"]["type"].as_str(),
        Some("invalid_request_error")
    );
    // A malformed body does not cost the connection.
    let r = c.post("/v1/responses", &post_body("gpt-5", "ok", false));
    assert_eq!(r.status, 200);

    let raw = "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer nope\r\ncontent-length: 2\r\n\r\n{}";
    let (status, text) = http(gw.addr(), raw);
    assert_eq!(status, 401, "{text}");
    assert!(!text.contains("nope"));
    assert_eq!(
        up.stats().ws_turns_total + up.stats().http_requests_total,
        1
    );
}

#[test]
fn http_account_streams_sse_from_upstream() {
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "",
        "transport = \"http\"",
    ));
    let mut c = HttpConn::open(gw.addr());
    let r = c.post("/v1/responses", &post_body("gpt-5", "over http", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.sse().last().unwrap().0, "response.completed");
    let r = c.post("/v1/responses", &post_body("gpt-5", "again", false));
    assert_eq!(r.json()["status"].as_str(), Some("completed"));
    let stats = up.stats();
    assert_eq!(stats.ws_turns_total, 0);
    assert_eq!(stats.http_turns_total, 2);
    assert_eq!(stats.handshakes.len(), 0, "no WebSocket upgrade was tried");
    // Keep-alive toward upstream: both requests on one upstream connection.
    assert_eq!(stats.turns_by_conn.len(), 1, "{:?}", stats.turns_by_conn);
    let sent: sonic_rs::Value = sonic_rs::from_str(&stats.last_http_body).unwrap();
    assert_eq!(sent["stream"].as_bool(), Some(true));
    assert!(sent.get("type").is_none());
}

#[test]
fn upstream_http_error_maps_to_status_and_openai_body() {
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "",
        "transport = \"http\"",
    ));
    up.script(shardgate::mock::Script {
        http: vec![shardgate::mock::Rule {
            value: 400,
            times: 1,
        }],
        ..Default::default()
    });
    let mut c = HttpConn::open(gw.addr());
    let r = c.post("/v1/responses", &post_body("gpt-5", "bad", false));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().is_some());
    assert_eq!(
        up.stats().http_requests_total,
        1,
        "a 400 is final: no retry"
    );
}

#[test]
fn warmup_over_http_is_answered_by_the_gateway_and_the_chained_turn_carries_its_context() {
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "",
        "transport = \"http\"",
    ));
    let mut c = connect(gw.addr());
    let warm = c.turn(r#"{"type":"response.create","model":"gpt-5","store":false,"generate":false,"instructions":"be brief","tools":[{"type":"function","name":"shell","parameters":{}}],"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"context-from-warmup"}]}]}"#);
    assert_eq!(warm.types(), vec!["response.created", "response.completed"]);
    let id = warm.response_id().unwrap();
    assert!(id.starts_with("resp_gw_"), "{id}");
    assert_eq!(
        up.stats().http_requests_total,
        0,
        "the warm-up never reached upstream"
    );
    let t = c.turn(&create("gpt-5", "now answer", false, Some(&id)));
    assert_eq!(t.last_type(), "response.completed", "{:?}", t.events);
    let stats = up.stats();
    assert_eq!(stats.http_generate_rejected_total, 0);
    assert_eq!(stats.previous_response_not_found_total, 0);
    let sent: sonic_rs::Value = sonic_rs::from_str(&stats.last_http_body).unwrap();
    assert!(
        sent.get("previous_response_id").is_none(),
        "{}",
        stats.last_http_body
    );
    assert!(sent.get("generate").is_none());
    assert_eq!(sent["instructions"].as_str(), Some("be brief"));
    assert_eq!(sent["tools"].as_array().unwrap().len(), 1);
    let input = sent["input"].as_array().unwrap();
    assert_eq!(input.len(), 2);
    assert!(stats.last_http_body.contains("context-from-warmup"));
    assert!(stats.last_http_body.contains("now answer"));

    // The same over POST (non-stream warm-up, then a chained streaming turn).
    let mut h = HttpConn::open(gw.addr());
    let r = h.post(
        "/v1/responses",
        r#"{"model":"gpt-5","generate":false,"input":"ctx-post"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let wid = r.json()["id"].as_str().unwrap().to_string();
    assert!(wid.starts_with("resp_gw_"));
    let r = h.post(
        "/v1/responses",
        &format!(
            r#"{{"model":"gpt-5","stream":true,"previous_response_id":"{wid}","input":"go"}}"#
        ),
    );
    assert_eq!(
        r.sse().last().unwrap().0,
        "response.completed",
        "{}",
        r.body
    );
    let stats = up.stats();
    assert!(stats.last_http_body.contains("ctx-post"));
    assert_eq!(stats.http_generate_rejected_total, 0);
}

#[test]
fn force_http_turns_every_account_to_http_and_ws_sessions_keep_working() {
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        "[upstream]\nforce_http = true",
    ));
    let mut c = connect(gw.addr());
    for i in 0..3 {
        let t = c.turn(&create("gpt-5", &format!("turn {i}"), true, None));
        assert_eq!(t.last_type(), "response.completed", "{:?}", t.events);
    }
    let stats = up.stats();
    assert_eq!(stats.ws_turns_total, 0);
    assert_eq!(stats.http_turns_total, 3);
}

#[test]
fn http_upstream_over_tls_with_private_ca() {
    let up = shardgate::mock::start(shardgate::mock::MockConfig {
        tls_self_signed: true,
        ..Default::default()
    })
    .unwrap();
    let ca = scratch_file("ca.pem");
    std::fs::write(&ca, up.ca_pem().unwrap()).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\n[[client_keys]]\nkey = \"{CLIENT_KEY}\"\n[[accounts]]\nid = \"tls\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nca_file = \"{}\"\ntransport = \"http\"\n",
        up.base_url(),
        ca.display()
    );
    let gw = gateway(parse_config(&text));
    let mut c = HttpConn::open(gw.addr());
    for _ in 0..2 {
        let r = c.post("/v1/responses", &post_body("gpt-5", "secure", true));
        assert_eq!(
            r.sse().last().unwrap().0,
            "response.completed",
            "{}",
            r.body
        );
    }
    let stats = up.stats();
    assert_eq!(stats.http_turns_total, 2);
    assert_eq!(
        stats.turns_by_conn.len(),
        1,
        "one kept-alive TLS connection"
    );
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let body = post_body("gpt-5", "continue", false);
    let mut c = HttpConn::open(gw.addr());
    let head = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let interim = c.raw(head.as_bytes());
    assert_eq!(interim.status, 100);
    let r = c.raw(body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn client_leaving_mid_stream_releases_the_upstream_connection() {
    for stream in [true, false] {
        let up = mock();
        let gw = gateway(config_for(&[up.base_url()], ""));
        let mut c = HttpConn::open(gw.addr());
        let body = post_body("gpt-5", "[[mock:stall,after=1]]", stream);
        let raw = format!(
            "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        use std::io::Write;
        c.stream.write_all(raw.as_bytes()).unwrap();
        // The turn is in flight once the mock has taken it (its stall is counted).
        eventually("the stalled turn started", Duration::from_secs(20), || {
            up.stats().faults.get("stall").copied().unwrap_or(0) >= 1
        });
        assert_eq!(up.stats().connections_open, 1);
        drop(c);
        eventually(
            &format!("upstream connection closed (stream={stream})"),
            Duration::from_secs(20),
            || up.stats().connections_open == 0,
        );
    }
}

#[test]
fn an_sse_client_that_stops_reading_loses_its_stream_and_the_upstream_connection() {
    use std::io::Write;
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        "client_write_timeout_secs = 0.5",
    ));
    let mut stuck = slow_reader(gw.addr());
    // 12 MB of deltas that the client never reads.
    let body = post_body("gpt-5", "[[mock:deltas=1500,delta_bytes=8192]]", true);
    let raw = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stuck.write_all(raw.as_bytes()).unwrap();
    eventually(
        "the stuck stream gave up its upstream connection",
        Duration::from_secs(20),
        || up.stats().ws_turns_total > 0 && up.stats().connections_open == 0,
    );
    // The gateway closed the stuck client and serves others.
    let mut c = HttpConn::open(gw.addr());
    let r = c.post("/v1/responses", &post_body("gpt-5", "after", false));
    assert_eq!(r.status, 200, "{}", r.body);
    drop(stuck);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let one = post_body("gpt-5", "[[mock:ttft_ms=100]] first", true);
    let two = post_body("gpt-5", "second", false);
    let req = |b: &str| {
        format!(
            "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: {}\r\n\r\n{b}",
            b.len()
        )
    };
    let mut c = HttpConn::open(gw.addr());
    let first = c.raw(format!("{}{}", req(&one), req(&two)).as_bytes());
    assert_eq!(first.sse().last().unwrap().0, "response.completed");
    let second = c.read_reply();
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.json()["status"].as_str(), Some("completed"));
}

#[test]
fn store_false_chain_with_tool_calls_keeps_working_over_http_upstream() {
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        "[upstream]\nforce_http = true",
    ));
    let mut c = connect(gw.addr());
    let t1 = c.turn(&create(
        "gpt-5",
        "[[mock:tool=shell]] list files",
        false,
        None,
    ));
    assert_eq!(t1.last_type(), "response.completed", "{:?}", t1.events);
    let last = t1.events.last().unwrap();
    let call_id = last["response"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i["call_id"].as_str().map(str::to_string))
        .expect("a function call");
    let mut prev = t1.response_id().unwrap();
    for i in 0..2 {
        let frame = format!(
            r#"{{"type":"response.create","model":"gpt-5","store":false,"previous_response_id":"{prev}","input":[{{"type":"function_call_output","call_id":"{call_id}","output":"ok {i}"}}]}}"#
        );
        let t = c.turn(&frame);
        assert_eq!(
            t.last_type(),
            "response.completed",
            "turn {i}: {:?}",
            t.events
        );
        prev = t.response_id().unwrap();
    }
    let stats = up.stats();
    assert_eq!(stats.previous_response_not_found_total, 0);
    assert_eq!(stats.tool_output_not_found_total, 0);
    assert_eq!(stats.http_turns_total, 3);
    let sent: sonic_rs::Value = sonic_rs::from_str(&stats.last_http_body).unwrap();
    assert!(sent.get("previous_response_id").is_none());
    assert!(
        sent["input"].as_array().unwrap().len() >= 5,
        "the whole conversation was sent: {}",
        stats.last_http_body
    );
}

#[test]
fn a_websocket_turn_over_http_upstream_can_be_preempted() {
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        "[upstream]\nforce_http = true",
    ));
    let mut c = connect(gw.addr());
    c.send(&create("gpt-5", "[[mock:stall,after=1]]", false, None));
    // The first turn is in flight once the mock has taken it (its stall is counted).
    eventually("the stalled turn started", Duration::from_secs(20), || {
        up.stats().faults.get("stall").copied().unwrap_or(0) >= 1
    });
    c.send(&create("gpt-5", "instead", false, None));
    let first = c.read_turn();
    assert_eq!(
        first.error_code().as_deref(),
        Some("response_preempted"),
        "{:?}",
        first.events
    );
    let second = c.read_turn();
    assert_eq!(second.last_type(), "response.completed");
    assert_eq!(up.stats().http_turns_total, 2);
}

#[test]
fn slow_and_large_events_over_http_upstream_arrive_whole_and_in_order() {
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "",
        "transport = \"http\"",
    ));
    let mut c = HttpConn::open(gw.addr());
    for directives in [
        "deltas=30,delay_ms=3,delta_bytes=700",
        "deltas=3,delta_bytes=100000",
    ] {
        let r = c.post(
            "/v1/responses",
            &post_body("gpt-5", &format!("[[mock:{directives}]]"), true),
        );
        let events = r.sse();
        assert_eq!(
            events.last().unwrap().0,
            "response.completed",
            "{directives}"
        );
        let deltas: Vec<_> = events
            .iter()
            .filter(|(t, _)| t == "response.output_text.delta")
            .collect();
        let (n, size) = if directives.starts_with("deltas=30") {
            (30, 700)
        } else {
            (3, 100000)
        };
        assert_eq!(deltas.len(), n, "{directives}");
        assert!(deltas
            .iter()
            .all(|(_, d)| d["delta"].as_str().unwrap().len() == size));
        let seqs: Vec<u64> = events
            .iter()
            .filter_map(|(_, d)| d["sequence_number"].as_u64())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    }
    let mut ws = connect(gw.addr());
    let t = ws.turn(&create(
        "gpt-5",
        "[[mock:deltas=20,delay_ms=2,delta_bytes=5000]]",
        true,
        None,
    ));
    assert_eq!(t.last_type(), "response.completed");
    assert_eq!(
        t.types()
            .iter()
            .filter(|t| *t == "response.output_text.delta")
            .count(),
        20
    );
}

/// `json` with its one `~` replaced by the byte `b`.
fn with_byte(json: &str, b: u8) -> Vec<u8> {
    let mut out = json.as_bytes().to_vec();
    let at = out.iter().position(|c| *c == b'~').expect("the marker");
    out[at] = b;
    out
}

/// Bodies that are not UTF-8, streaming or not, the bad byte where the parser reads a value
/// (`model`), where it only skips one (`instructions`, a nested string, a key), in the input
/// items it walks, and after the object.
fn bodies_not_utf8() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for stream in [false, true] {
        let cases = [
            ("input item", post_body("gpt-5", "caf~", stream)),
            ("model", post_body("gpt-~", "hi", stream)),
            (
                "skipped",
                format!(r#"{{"instructions":"caf~","model":"gpt-5","stream":{stream}}}"#),
            ),
            (
                "nested",
                format!(r#"{{"tools":[{{"d":"caf~"}}],"model":"gpt-5","stream":{stream}}}"#),
            ),
            (
                "key",
                format!(r#"{{"ca~f":1,"model":"gpt-5","stream":{stream}}}"#),
            ),
            (
                "trailing",
                format!(r#"{{"model":"gpt-5","stream":{stream}}} ~"#),
            ),
        ];
        for (name, json) in cases {
            out.push((format!("{name}, stream {stream}"), with_byte(&json, 0xe9)));
        }
    }
    out
}

/// A body that is not UTF-8 is refused with the 400 it always got, byte for byte (the parser's
/// `invalid_json`, naming the first bad byte), wherever the byte sits and whether or not the
/// request streams; the connection stays, and nothing goes upstream.
#[test]
fn a_body_that_is_not_utf8_is_400_and_the_connection_stays() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = HttpConn::open(gw.addr());
    let mut send = |body: &[u8]| {
        let mut raw = format!(
            "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        c.raw(&raw)
    };
    // Two answers pinned whole, as the gateway gave them before the body's reader took the
    // UTF-8 check over from the turn.
    let head = |len: &str| {
        [
            ("content-type", "application/json"),
            ("content-length", len),
            ("connection", "keep-alive"),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .to_vec()
    };
    let r = send(&with_byte(&post_body("gpt-5", "caf~", false), 0xe9));
    assert_eq!((r.status, &r.headers), (400, &head("231")));
    assert_eq!(
        r.body,
        r#"{"error":{"type":"invalid_request_error","code":"invalid_json","message":"request body is not a valid JSON object: Invalid UTF-8 characters in json at line 1 column 117\n\n\txt\":\"caf�\"}]}]}\n\t........^......\n","param":null}}"#
    );
    let r = send(&with_byte(&post_body("gpt-~", "hi", true), 0xff));
    assert_eq!((r.status, &r.headers), (400, &head("233")));
    assert_eq!(
        r.body,
        r#"{"error":{"type":"invalid_request_error","code":"invalid_json","message":"request body is not a valid JSON object: Invalid UTF-8 characters in json at line 1 column 15\n\n\tl\":\"gpt-�\",\"stre\n\t........^.......\n","param":null}}"#
    );
    for (name, body) in bodies_not_utf8() {
        let r = send(&body);
        assert_eq!(r.status, 400, "{name}: {}", r.body);
        assert_eq!(r.header("connection"), Some("keep-alive"), "{name}");
        let v = r.json();
        assert_eq!(v["error"]["code"].as_str(), Some("invalid_json"), "{name}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("request body is not a valid JSON object: Invalid UTF-8"),
            "{name}: {message}"
        );
    }
    let r = c.post("/v1/responses", &post_body("gpt-5", "ok", false));
    assert_eq!(r.status, 200, "the connection stays: {}", r.body);
    assert_eq!(
        up.stats().ws_turns_total,
        1,
        "only the valid request went upstream"
    );
}

/// After its first `POST` a connection runs on in a state of its own (`serve_posts`): its other
/// requests, an upgrade to a WebSocket session included, are served there as before.
#[test]
fn a_connection_that_posted_serves_other_requests_and_can_become_a_session() {
    use shardgate::tungstenite::client::IntoClientRequest;

    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = HttpConn::open(gw.addr());
    let streamed = c.post("/v1/responses", &post_body("gpt-5", "one", true));
    assert_eq!(streamed.sse().last().unwrap().0, "response.completed");
    let health = c.raw(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n");
    assert_eq!(health.status, 200, "{}", health.body);
    let json = c.post("/v1/responses", &post_body("gpt-5", "two", false));
    assert_eq!(json.json()["status"].as_str(), Some("completed"));
    let mut req = format!("ws://{}/v1/responses", gw.addr())
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {CLIENT_KEY}").parse().expect("header"),
    );
    let Ok((ws, _)) = shardgate::tungstenite::client::client(req, c.stream) else {
        panic!("the upgrade after two POSTs was refused");
    };
    let mut session = Client { ws };
    let turn = session.turn(&create("gpt-5", "three", true, None));
    assert_eq!(turn.last_type(), "response.completed");
    assert_eq!(up.stats().ws_turns_total, 3);
}
