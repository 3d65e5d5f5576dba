//! `x-codex-turn-state`: with `[server] echo_turn_state` the gateway leases the session's
//! upstream connection before answering the client's upgrade and echoes the header upstream's
//! 101 carried; end to end over loopback against the mock upstream.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use shardgate::gateway::Gateway;
use shardgate::mock::{MockHandle, Script};
use shardgate::tungstenite::{self, client::IntoClientRequest};

/// A one-shard gateway in front of `up` (so that every session meets the same pool).
fn gateway_echoing(up: &MockHandle, echo: bool) -> Gateway {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\necho_turn_state = {echo}\n\
         admin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 50\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n\
         [[accounts]]\nid = \"acct-0\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\n\
         max_conns = 8\n",
        up.base_url()
    );
    gateway(parse_config(&text))
}

/// A client session named `session`, and the `x-codex-turn-state` of the gateway's 101.
fn connect_named(addr: SocketAddr, session: &str) -> (Client, Option<String>) {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut req = format!("ws://{addr}/v1/responses")
        .into_client_request()
        .expect("request");
    let headers = req.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {CLIENT_KEY}").parse().unwrap(),
    );
    headers.insert("session-id", session.parse().unwrap());
    let (ws, response) = tungstenite::client::client(req, stream).expect("upgrade");
    let turn_state = response
        .headers()
        .get("x-codex-turn-state")
        .map(|v| v.to_str().expect("ascii").to_string());
    (Client { ws }, turn_state)
}

fn scripted_turn_state(up: &MockHandle, value: &str) {
    up.script(Script {
        turn_state: Some(value.to_string()),
        ..Script::default()
    });
}

#[test]
fn the_upstream_handshakes_turn_state_is_echoed_in_the_clients_101_when_on() {
    let up = mock();
    scripted_turn_state(&up, "ts-first");
    let gw = gateway_echoing(&up, true);
    let (mut client, echoed) = connect_named(gw.addr(), "s-1");
    assert_eq!(echoed.as_deref(), Some("ts-first"));
    assert_eq!(up.stats().ws_connections_total, 1, "dialed before the 101");
    // The first turn runs on the connection leased ahead.
    let turn = client.turn(&create("gpt-5", "hi", true, None));
    assert_eq!(turn.last_type(), "response.completed");
    assert_eq!(up.stats().ws_connections_total, 1);
    drop(client);
    let admin = gw.admin_addr().expect("admin listener");
    eventually("the first session over", Duration::from_secs(20), || {
        metric_total(admin, "sessions_open") == 0
    });
    // A pooled connection leased ahead later echoes the header its own handshake carried.
    scripted_turn_state(&up, "ts-second");
    let (_client, echoed) = connect_named(gw.addr(), "s-2");
    assert_eq!(echoed.as_deref(), Some("ts-first"));
    assert_eq!(
        up.stats().ws_connections_total,
        1,
        "the pooled connection was leased"
    );
    gw.stop();
    up.stop();
}

#[test]
fn no_turn_state_and_no_dial_before_the_first_frame_when_off() {
    let up = mock();
    scripted_turn_state(&up, "ts-first");
    let gw = gateway_echoing(&up, false);
    let (mut client, echoed) = connect_named(gw.addr(), "s-1");
    assert_eq!(echoed, None);
    assert_eq!(up.stats().ws_connections_total, 0);
    let turn = client.turn(&create("gpt-5", "hi", true, None));
    assert_eq!(turn.last_type(), "response.completed");
    assert_eq!(up.stats().ws_connections_total, 1);
    gw.stop();
    up.stop();
}

/// Session B's first frame chains to a `store=false` response on the connection session A
/// held: B gives back the connection it leased ahead (the one documented dial) and its turn
/// runs on A's connection, without a third dial; the connection B gave back serves the next
/// session without a dial.
#[test]
fn a_first_frame_chained_elsewhere_gives_the_lease_back_without_another_dial() {
    let up = mock();
    let gw = gateway_echoing(&up, true);
    let (mut a, _) = connect_named(gw.addr(), "s-a");
    let first = a.turn(&create("gpt-5", "remember", false, None));
    assert_eq!(first.last_type(), "response.completed");
    let previous = first.response_id().expect("response id");
    let a_conn = conn_of(&previous).expect("mock response id");
    let (mut b, _) = connect_named(gw.addr(), "s-b");
    assert_eq!(
        up.stats().ws_connections_total,
        2,
        "B leased ahead: one dial"
    );
    drop(a);
    let admin = gw.admin_addr().expect("admin listener");
    eventually("A's session over", Duration::from_secs(20), || {
        metric_total(admin, "sessions_open") == 1
    });
    let chained = b.turn(&create("gpt-5", "and now", false, Some(&previous)));
    assert_eq!(
        chained.last_type(),
        "response.completed",
        "{:?}",
        chained.error_code()
    );
    let id = chained.response_id().expect("response id");
    assert_eq!(conn_of(&id), Some(a_conn), "ran on A's connection");
    assert_eq!(up.stats().ws_connections_total, 2, "no third dial");
    let (_c, _) = connect_named(gw.addr(), "s-c");
    assert_eq!(
        up.stats().ws_connections_total,
        2,
        "C leased the one B gave back"
    );
    gw.stop();
    up.stop();
}
