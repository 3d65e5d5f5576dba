//! End to end over loopback: clients → gateway (2 shards) → mock upstream, the happy paths
//! (failure paths: `failure_matrix.rs`).

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
    // Outliving the 0.4 s age limit is the behaviour under test.
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
