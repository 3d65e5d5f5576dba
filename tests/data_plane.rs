//! End to end over loopback: clients → gateway (2 shards) → mock upstream.

mod common;

use std::time::Duration;

use common::*;
use sonic_rs::JsonValueTrait;

#[test]
fn store_false_chain_stays_on_one_upstream_connection() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    let t1 = c.turn(&create("gpt-5", "hello", false, None));
    assert_eq!(t1.last_type(), "response.completed", "{:?}", t1.types());
    assert_eq!(t1.types()[0], "response.created");
    assert!(t1
        .types()
        .contains(&"response.output_text.delta".to_string()));
    let mut prev = t1.response_id().unwrap();
    let conn = t1.conn_id().unwrap();
    for i in 0..4 {
        let t = c.turn(&create("gpt-5", &format!("turn {i}"), false, Some(&prev)));
        assert_eq!(t.last_type(), "response.completed", "{:?}", t.events);
        assert_eq!(
            t.conn_id(),
            Some(conn),
            "chain moved to another upstream connection"
        );
        prev = t.response_id().unwrap();
    }
    let stats = up.stats();
    assert_eq!(stats.previous_response_not_found_total, 0);
    assert_eq!(stats.turns_by_conn.get(&conn), Some(&5));
}

#[test]
fn warmup_then_chained_turn() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    let warm = c.turn(r#"{"type":"response.create","model":"gpt-5","store":false,"generate":false,"input":[],"tools":[]}"#);
    assert_eq!(warm.types(), vec!["response.created", "response.completed"]);
    let id = warm.response_id().unwrap();
    let t = c.turn(&create("gpt-5", "now answer", false, Some(&id)));
    assert_eq!(t.last_type(), "response.completed");
    assert_eq!(t.conn_id(), warm.conn_id());
    assert_eq!(up.stats().generate_false_total, 1);
}

#[test]
fn many_concurrent_sessions_over_two_shards() {
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        "[upstream]\nqueue_per_conn = 64",
    ));
    let addr = gw.addr();
    let threads: Vec<_> = (0..40)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                let mut prev: Option<String> = None;
                for t in 0..3 {
                    let turn = c.turn(&create(
                        "gpt-5",
                        &format!("s{i} t{t}"),
                        false,
                        prev.as_deref(),
                    ));
                    assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.events);
                    prev = turn.response_id();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("session thread");
    }
    let stats = up.stats();
    assert_eq!(stats.ws_turns_total, 120);
    assert_eq!(stats.previous_response_not_found_total, 0);
}

#[test]
fn bad_or_missing_key_gets_401_before_upgrade() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    match connect_with_key(gw.addr(), "sk-wrong") {
        Err(shardgate::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
            let v: sonic_rs::Value = sonic_rs::from_str(&body).unwrap();
            assert_eq!(v["error"]["type"].as_str(), Some("authentication_error"));
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let (status, text) = http(
        gw.addr(),
        "GET /v1/responses HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(status, 401, "{text}");
    assert_eq!(
        up.stats().connections_total,
        0,
        "no upstream work for a refused client"
    );
}

#[test]
fn routes_health_404_and_malformed() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let (status, text) = http(
        gw.addr(),
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{text}");
    let (status, text) = http(
        gw.addr(),
        "GET /v2/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 404);
    let v: sonic_rs::Value = sonic_rs::from_str(body_of(&text)).unwrap();
    assert_eq!(v["error"]["code"].as_str(), Some("not_found"));
    let (status, _) = http(gw.addr(), "BLAH\x01\x02 nonsense\r\n\r\n");
    assert_eq!(status, 400);
    let (status, _) = http(
        gw.addr(),
        &format!("GET /v1/responses?api_key={CLIENT_KEY} HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    assert_eq!(status, 400, "keys in the query string are refused");
    let (status, _) = http(
        gw.addr(),
        &format!(
            "GET /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n"
        ),
    );
    assert_eq!(status, 426, "a GET without upgrade is told to upgrade");
}

#[test]
fn invalid_json_and_unknown_event_get_error_events_and_session_survives() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    let t = c.turn("{not json");
    assert_eq!(t.last_type(), "error");
    assert_eq!(t.error_code().as_deref(), Some("invalid_json"));
    let t = c.turn(r#"{"type":"session.update","session":{}}"#);
    assert_eq!(t.error_code().as_deref(), Some("unsupported_event_type"));
    let t = c.turn(&create("gpt-5", "still here", false, None));
    assert_eq!(t.last_type(), "response.completed");
    assert_eq!(
        up.stats().ws_turns_total,
        1,
        "bad frames never reached upstream"
    );
}

#[test]
fn oversize_client_frame_is_closed_with_1009() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    let big = format!(
        r#"{{"type":"response.create","model":"gpt-5","input":"{}"}}"#,
        "x".repeat(16 * 1024 * 1024 + 1)
    );
    let _ = c.ws.send(shardgate::tungstenite::Message::text(big));
    assert_eq!(c.expect_close(), Some(1009));
    // Other sessions are unaffected.
    let mut other = connect(gw.addr());
    assert_eq!(
        other
            .turn(&create("gpt-5", "fine", false, None))
            .last_type(),
        "response.completed"
    );
}

#[test]
fn frame_just_under_limit_is_relayed() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    let frame = format!(
        r#"{{"type":"response.create","model":"gpt-5","input":"{}"}}"#,
        "y".repeat(4 * 1024 * 1024)
    );
    assert_eq!(c.turn(&frame).last_type(), "response.completed");
}

#[test]
fn oversize_upstream_message_gives_error_event_and_next_turn_works() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    let t = c.turn(&create("gpt-5", "[[mock:oversize]]", false, None));
    assert_eq!(
        t.error_code().as_deref(),
        Some("upstream_message_too_big"),
        "{:?}",
        t.types()
    );
    let t2 = c.turn(&create("gpt-5", "after", false, None));
    assert_eq!(t2.last_type(), "response.completed");
}

#[test]
fn upstream_down_gives_error_event_not_a_hang() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let gw = gateway(config_for(&[url], "[upstream]\ndial_timeout_ms = 2000"));
    let mut c = connect(gw.addr());
    let started = std::time::Instant::now();
    let t = c.turn(&create("gpt-5", "anyone?", false, None));
    assert_eq!(t.last_type(), "error");
    assert_eq!(t.error_code().as_deref(), Some("upstream_unavailable"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The session is still usable (and still fails cleanly).
    assert_eq!(
        c.turn(&create("gpt-5", "again", false, None)).last_type(),
        "error"
    );
}

#[test]
fn upstream_error_event_is_relayed_and_connection_not_reused() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    let t1 = c.turn(&create("gpt-5", "first", false, None));
    let conn1 = t1.conn_id().unwrap();
    let t2 = c.turn(&create(
        "gpt-5",
        "[[mock:error=server_error,after=2]]",
        false,
        None,
    ));
    assert_eq!(t2.last_type(), "error", "{:?}", t2.types());
    assert_eq!(t2.error_code().as_deref(), Some("server_error"));
    let t3 = c.turn(&create("gpt-5", "third", false, None));
    assert_eq!(t3.last_type(), "response.completed");
    assert_ne!(
        t3.conn_id().unwrap(),
        conn1,
        "a connection that sent an error event was reused"
    );
    // And no other session gets it from the pool either.
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    let mut d = connect(gw.addr());
    let t4 = d.turn(&create("gpt-5", "fresh session", false, None));
    assert_ne!(t4.conn_id().unwrap(), conn1);
}

#[test]
fn client_key_is_never_forwarded_and_beta_header_is_sent() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    assert_eq!(
        c.turn(&create("gpt-5", "hi", false, None)).last_type(),
        "response.completed"
    );
    let stats = up.stats();
    assert!(stats
        .authorizations_seen
        .contains(&format!("Bearer {ACCOUNT_KEY}")));
    assert!(stats
        .authorizations_seen
        .iter()
        .all(|a| !a.contains(CLIENT_KEY)));
    assert_eq!(
        stats
            .last_handshake_headers
            .get("openai-beta")
            .map(String::as_str),
        Some("responses_websockets=2026-02-06")
    );
    assert_eq!(
        stats
            .last_handshake_headers
            .get("session-id")
            .map(String::as_str),
        Some("sess-test")
    );
}

#[test]
fn new_create_mid_turn_preempts() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    c.send(&create("gpt-5", "[[mock:stall,after=1]]", false, None));
    std::thread::sleep(Duration::from_millis(200));
    c.send(&create("gpt-5", "instead", false, None));
    let first = c.read_turn();
    assert_eq!(
        first.error_code().as_deref(),
        Some("response_preempted"),
        "{:?}",
        first.types()
    );
    let second = c.read_turn();
    assert_eq!(second.last_type(), "response.completed");
}

#[test]
fn client_disconnect_mid_turn_releases_upstream_connection() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    c.send(&create("gpt-5", "[[mock:stall,after=1]]", false, None));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(up.stats().connections_open, 1);
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while up.stats().connections_open != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "upstream connection left open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn restart_close_mid_session_gives_error_then_fresh_connection() {
    for code in [1012, 1013] {
        let up = mock();
        let gw = gateway(config_for(&[up.base_url()], ""));
        let mut c = connect(gw.addr());
        let t1 = c.turn(&create("gpt-5", "one", false, None));
        let t2 = c.turn(&create(
            "gpt-5",
            &format!("[[mock:close={code},after=2]]"),
            false,
            None,
        ));
        assert_eq!(
            t2.error_code().as_deref(),
            Some("upstream_unavailable"),
            "{code}: {:?}",
            t2.types()
        );
        let t3 = c.turn(&create("gpt-5", "three", false, None));
        assert_eq!(t3.last_type(), "response.completed");
        assert_ne!(t3.conn_id(), t1.conn_id());
    }
}

#[test]
fn stalled_upstream_times_out_with_error_event() {
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        "[upstream]\nevent_timeout_secs = 0.5",
    ));
    let mut c = connect(gw.addr());
    let t = c.turn(&create("gpt-5", "[[mock:stall,after=2]]", false, None));
    assert_eq!(
        t.error_code().as_deref(),
        Some("upstream_timeout"),
        "{:?}",
        t.types()
    );
    assert_eq!(
        c.turn(&create("gpt-5", "next", false, None)).last_type(),
        "response.completed"
    );
}

#[test]
fn missing_first_message_closes_with_1008() {
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        "first_message_timeout_secs = 0.3",
    ));
    let mut c = connect(gw.addr());
    assert_eq!(c.expect_close(), Some(1008));
}

#[test]
fn stale_pooled_connection_is_retried_once_on_a_fresh_one() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    let t1 = c.turn(&create("gpt-5", "one", true, None));
    // Upstream drops the session's connection when the next turn arrives (as a stale one does).
    up.script(shardgate::mock::Script {
        turns: vec![shardgate::mock::Rule {
            value: "drop".into(),
            times: 1,
        }],
        ..Default::default()
    });
    let t2 = c.turn(&create("gpt-5", "two", true, None));
    assert_eq!(t2.last_type(), "response.completed", "{:?}", t2.events);
    assert_ne!(t2.conn_id(), t1.conn_id());
}

#[test]
fn tls_upstream_with_private_ca() {
    let up = shardgate::mock::start(shardgate::mock::MockConfig {
        tls_self_signed: true,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, up.ca_pem().unwrap()).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\n[[client_keys]]\nkey = \"{CLIENT_KEY}\"\n[[accounts]]\nid = \"tls\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nca_file = \"{}\"\n",
        up.base_url(),
        ca.display()
    );
    let gw = gateway(parse_config(&text));
    let mut c = connect(gw.addr());
    assert_eq!(
        c.turn(&create("gpt-5", "secure", false, None)).last_type(),
        "response.completed"
    );
}

#[test]
fn connections_are_retired_at_the_age_limit() {
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        "[upstream]\nmax_conn_age_secs = 0.4",
    ));
    let mut c = connect(gw.addr());
    let t1 = c.turn(&create("gpt-5", "young", true, None));
    let t2 = c.turn(&create("gpt-5", "still young", true, None));
    assert_eq!(t1.conn_id(), t2.conn_id());
    std::thread::sleep(Duration::from_millis(500));
    let t3 = c.turn(&create("gpt-5", "old now", true, None));
    assert_eq!(t3.last_type(), "response.completed");
    assert_ne!(
        t3.conn_id(),
        t1.conn_id(),
        "an expired connection started another turn"
    );
}

#[test]
fn silent_upstream_handshake_times_out() {
    // Accepts TCP, never answers the WebSocket upgrade.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", silent.local_addr().unwrap());
    let holder = std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(2));
        drop(held);
    });
    let gw = gateway(config_for(&[url], "[upstream]\nhandshake_timeout_ms = 300"));
    let mut c = connect(gw.addr());
    let started = std::time::Instant::now();
    let t = c.turn(&create("gpt-5", "hello?", false, None));
    assert_eq!(
        t.error_code().as_deref(),
        Some("upstream_timeout"),
        "{:?}",
        t.events
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    holder.join().unwrap();
}

#[test]
fn invalid_json_frame_gets_error_event_and_keeps_the_connection() {
    // Binary frames are refused with 1003 and text frames that are not UTF-8 with 1007
    // (tests/hardening_ws.rs); a text frame that is not JSON is a request error.
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let mut c = connect(gw.addr());
    let t1 = c.turn(&create("gpt-5", "one", false, None));
    let t = c.turn(r#"{"type":"response.create","model":"gpt-5","input":"#);
    assert_eq!(
        t.error_code().as_deref(),
        Some("invalid_json"),
        "{:?}",
        t.events
    );
    let t2 = c.turn(&create("gpt-5", "two", false, t1.response_id().as_deref()));
    assert_eq!(t2.last_type(), "response.completed");
    assert_eq!(
        t2.conn_id(),
        t1.conn_id(),
        "a client's bad frame cost the session its connection"
    );
}

#[test]
fn model_is_mapped_upstream_and_back_for_the_client() {
    let up = mock();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\n[[client_keys]]\nkey = \"{CLIENT_KEY}\"\n[[accounts]]\nid = \"a\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nmodel_map = {{ \"gpt-5\" = \"gpt-5-upstream\" }}\n",
        up.base_url()
    );
    let gw = gateway(parse_config(&text));
    let mut c = connect(gw.addr());
    let t = c.turn(&create("gpt-5", "mapped", false, None));
    assert_eq!(t.last_type(), "response.completed");
    let last = t.events.last().unwrap();
    assert_eq!(
        last["response"]["model"].as_str(),
        Some("gpt-5"),
        "client sees its own model"
    );
    for e in t.events.iter().filter(|e| e.get("response").is_some()) {
        assert_eq!(e["response"]["model"].as_str(), Some("gpt-5"), "{e:?}");
    }
    let seen = up.stats().models_seen;
    assert!(
        seen.contains("gpt-5-upstream") && !seen.contains("gpt-5"),
        "{seen:?}"
    );
}
