//! Keep-alive pings on idle upstream connections (`[upstream] ping_interval_secs`,
//! `pong_timeout_ms`), end to end over loopback against the mock upstream: its idle cut, its
//! unanswered pings and its own pings.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use shardgate::gateway::Gateway;
use shardgate::mock::{MockConfig, MockHandle, Script};

const WAIT: Duration = Duration::from_secs(20);

/// A mock upstream started with `cfg`.
fn mock_with(cfg: MockConfig) -> MockHandle {
    shardgate::mock::start(cfg).expect("mock starts")
}

/// A gateway in front of `up` with an admin listener, connections resting 100 ms after a turn
/// (so that pings go to rested connections) and the given `[upstream]` keys.
fn gateway_with(up: &MockHandle, upstream: &str) -> (Gateway, SocketAddr) {
    let extra = format!(
        "admin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 50\nrest_after_ms = 100\n\
         [upstream]\n{upstream}\n"
    );
    let gw = gateway(config_for(&[up.base_url()], &extra));
    let admin = gw.admin_addr().expect("admin listener");
    (gw, admin)
}

fn assert_completed(turn: &Turn) {
    assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
}

/// A connection idle past the mock's idle cut (1.5 s) stays open while pinged every 0.4 s:
/// the turn after the cut reuses it. `store` false: the session holds it between turns;
/// true: it waits in the pool.
fn kept_across_idle_cut(store: bool) {
    let up = mock_with(MockConfig {
        idle_cut: Some(Duration::from_millis(1500)),
        ..MockConfig::default()
    });
    let (gw, admin) = gateway_with(&up, "ping_interval_secs = 0.4\npong_timeout_ms = 150");
    let mut client = connect(gw.addr());
    assert_completed(&client.turn(&create("gpt-5", "one", store, None)));
    // Eight pings at 0.4 s take 3 s or more: twice the cut.
    eventually("eight pings sent", WAIT, || {
        labeled_total(admin, "upstream_pings", "sent") >= 8
    });
    assert_completed(&client.turn(&create("gpt-5", "two", store, None)));
    let stats = up.stats();
    assert_eq!(stats.ws_idle_cuts, 0, "the mock cut the idle connection");
    assert_eq!(
        stats.ws_connections_total, 1,
        "the second turn dialed again"
    );
    assert!(stats.ws_pings_received >= 8, "{}", stats.ws_pings_received);
    assert_eq!(labeled_total(admin, "upstream_pings", "late"), 0);
    assert_eq!(labeled_total(admin, "upstream_pings", "failed"), 0);
    gw.stop();
    up.stop();
}

#[test]
fn a_pooled_connection_is_kept_alive_across_upstreams_idle_cut() {
    kept_across_idle_cut(true);
}

#[test]
fn a_connection_a_session_holds_between_turns_is_kept_alive_across_the_idle_cut() {
    kept_across_idle_cut(false);
}

/// Without keep-alive pings the mock's idle cut takes the connection, and the next turn dials
/// again: the setting the two tests above are measured against.
#[test]
fn without_pings_the_idle_cut_takes_the_connection() {
    let up = mock_with(MockConfig {
        idle_cut: Some(Duration::from_millis(500)),
        ..MockConfig::default()
    });
    let (gw, _admin) = gateway_with(&up, "ping_interval_secs = 0");
    let mut client = connect(gw.addr());
    assert_completed(&client.turn(&create("gpt-5", "one", true, None)));
    eventually("the mock cut the idle connection", WAIT, || {
        up.stats().ws_idle_cuts == 1
    });
    assert_completed(&client.turn(&create("gpt-5", "two", true, None)));
    assert_eq!(up.stats().ws_connections_total, 2);
    gw.stop();
    up.stop();
}

/// An upstream that stops answering pings: each idle connection is closed once its pong is
/// late (counted), never reused, and the next turn dials a fresh one.
fn late_pong_closes(store: bool) {
    let up = mock();
    let (gw, admin) = gateway_with(&up, "ping_interval_secs = 0.3\npong_timeout_ms = 100");
    let mut client = connect(gw.addr());
    assert_completed(&client.turn(&create("gpt-5", "one", store, None)));
    up.script(Script {
        ignore_pings: true,
        ..Script::default()
    });
    eventually("a late pong counted", WAIT, || {
        labeled_total(admin, "upstream_pings", "late") >= 1
    });
    eventually("the connection closed", WAIT, || {
        up.stats().connections_open == 0
    });
    up.reset();
    assert_completed(&client.turn(&create("gpt-5", "two", store, None)));
    let stats = up.stats();
    assert_eq!(
        stats.ws_connections_total, 1,
        "after the reset: one fresh dial"
    );
    assert_eq!(stats.ws_turns_total, 1);
    gw.stop();
    up.stop();
}

#[test]
fn a_pooled_connection_whose_pong_is_late_is_closed_and_the_next_turn_dials() {
    late_pong_closes(true);
}

#[test]
fn a_held_connection_whose_pong_is_late_is_closed_and_the_next_turn_dials() {
    late_pong_closes(false);
}

/// Upstream's own pings on an idle (rested) connection are answered.
#[test]
fn upstreams_pings_on_an_idle_rested_connection_are_answered() {
    let up = mock_with(MockConfig {
        ping_every: Some(Duration::from_millis(200)),
        ..MockConfig::default()
    });
    let (gw, admin) = gateway_with(&up, "ping_interval_secs = 0.3\npong_timeout_ms = 100");
    let mut client = connect(gw.addr());
    assert_completed(&client.turn(&create("gpt-5", "one", true, None)));
    eventually("the connection rested", WAIT, || {
        metric_total(admin, "sessions_rested") >= 1
    });
    eventually("three pongs from the gateway", WAIT, || {
        up.stats().ws_pongs_received >= 3
    });
    assert_eq!(up.stats().ws_connections_total, 1);
    gw.stop();
    up.stop();
}

/// Pings every 0.4 s, pongs awaited 0.3 s, under turns of a few milliseconds with pauses of 0
/// to 0.5 s, two stored turns (pooled connection) for one `store=false` (held by the session):
/// ticks land while a turn runs, between turns, and while a ping awaits its pong when the next
/// turn leases the connection (its relay then skips the pong). Every turn completes intact on
/// the one connection: a ping never reads a turn's events, and a pong the turn took never
/// gets the connection closed as late.
#[test]
fn pings_never_interleave_with_turns() {
    let up = mock();
    let (gw, admin) = gateway_with(&up, "ping_interval_secs = 0.4\npong_timeout_ms = 300");
    let mut client = connect(gw.addr());
    let mut turns = 0;
    let started = std::time::Instant::now();
    while labeled_total(admin, "upstream_pings", "sent") < 6 || turns < 24 {
        assert!(started.elapsed() < WAIT * 2, "only {turns} turns");
        let store = turns % 3 != 2;
        let turn = client.turn(&create("gpt-5", &format!("turn {turns}"), store, None));
        assert_completed(&turn);
        let types = turn.types();
        assert_eq!(types.first().map(String::as_str), Some("response.created"));
        let deltas = types
            .iter()
            .filter(|t| *t == "response.output_text.delta")
            .count();
        assert_eq!(deltas, 8, "{types:?}");
        turns += 1;
        // Pacing, not synchronization: the client's think time between turns.
        std::thread::sleep(Duration::from_millis([500, 450, 100, 0][turns % 4]));
    }
    assert_eq!(labeled_total(admin, "upstream_pings", "late"), 0);
    assert_eq!(labeled_total(admin, "upstream_pings", "failed"), 0);
    assert_eq!(up.stats().ws_connections_total, 1);
    gw.stop();
    up.stop();
}
