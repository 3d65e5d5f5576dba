//! The per-account WebSocket canary and the automatic rollback, end to end over loopback: a
//! canary share sends that share of sessions over WebSocket (each session keeps its transport),
//! and an account whose WebSocket fails is moved to HTTP by the control thread on its own
//! (logged, counted, gauged), while a healthy account under the same load stays; SIGHUP
//! reverts the rollback.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use shardgate::mock::{MockHandle, Script};

/// A client session under the test key, with a `session-id` header when `session_id` is given.
fn session(addr: SocketAddr, session_id: Option<&str>) -> Client {
    connect_session(addr, CLIENT_KEY, session_id)
}

/// Runs one stored turn and says which upstream transport carried it: `true` for WebSocket.
fn turn_went_ws(client: &mut Client, up: &MockHandle) -> bool {
    let before = up.stats();
    let turn = client.turn(&create("gpt-5", "hi", true, None));
    assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
    let after = up.stats();
    let ws = after.ws_turns_total - before.ws_turns_total;
    let http = after.http_turns_total - before.http_turns_total;
    assert_eq!(ws + http, 1, "one upstream turn per client turn");
    ws == 1
}

/// Sessions (two turns each) that went over WebSocket; every session keeps its transport.
fn ws_sessions(addr: SocketAddr, up: &MockHandle, ids: &[Option<String>]) -> usize {
    let mut ws = 0;
    for id in ids {
        let mut client = session(addr, id.as_deref());
        let first = turn_went_ws(&mut client, up);
        assert_eq!(
            turn_went_ws(&mut client, up),
            first,
            "session {id:?} changed transport"
        );
        ws += usize::from(first);
    }
    ws
}

#[test]
fn a_canary_share_sends_that_share_of_sessions_over_websocket() {
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "",
        "ws_canary_percent = 30",
    ));

    // Sessions without a `session-id` take consecutive slots of the shard's sequence, spread
    // so that any 100 of them hold exactly 30 WebSocket ones.
    let anonymous = vec![None; 100];
    assert_eq!(ws_sessions(gw.addr(), &up, &anonymous), 30);

    // Named sessions hash to their slot: Binomial(200, 0.3) has mean 60 and sd 6.5; 4.5 sd
    // either way. The ids are fixed, so the count is too (it was 57 when written).
    let named: Vec<Option<String>> = (0..200).map(|i| Some(format!("canary-{i}"))).collect();
    let ws = ws_sessions(gw.addr(), &up, &named);
    assert!(
        (31..=89).contains(&ws),
        "{ws} of 200 named sessions on WebSocket"
    );
    // A reconnect under the same `session-id` keeps the transport.
    for id in named.iter().take(20) {
        let mut a = session(gw.addr(), id.as_deref());
        let mut b = session(gw.addr(), id.as_deref());
        assert_eq!(
            turn_went_ws(&mut a, &up),
            turn_went_ws(&mut b, &up),
            "{id:?}"
        );
    }
    gw.stop();
    up.stop();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

const STATS_INTERVAL_MS: u64 = 100;
const MIN_SAMPLES: u64 = 10;
/// A client key whose group only the faulty account serves, and one for the healthy account.
const FAULTY_KEY: &str = "sk-gw-faulty";
const HEALTHY_KEY: &str = "sk-gw-healthy";

fn rollback_config(faulty: &str, healthy: &str, admin: u16) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\ndrain_timeout_secs = 2\n\
         admin_listen = \"127.0.0.1:{admin}\"\nstats_interval_ms = {STATS_INTERVAL_MS}\n\
         [upstream]\nretry_max_attempts = 1\nbreaker_failures = 100000\nbreaker_min_requests = 100000\n\
         [rollback]\nwindow_secs = 30\nmin_samples = {MIN_SAMPLES}\nws_error_rate = 0.5\n\
         [[client_keys]]\nkey = \"{FAULTY_KEY}\"\nid = \"k-faulty\"\ngroup = \"g-faulty\"\n\
         [[client_keys]]\nkey = \"{HEALTHY_KEY}\"\nid = \"k-healthy\"\ngroup = \"g-healthy\"\n\
         [[accounts]]\nid = \"faulty\"\ngroup = \"g-faulty\"\nbase_url = \"{faulty}\"\napi_key = \"{ACCOUNT_KEY}\"\n\
         [[accounts]]\nid = \"healthy\"\ngroup = \"g-healthy\"\nbase_url = \"{healthy}\"\napi_key = \"{ACCOUNT_KEY}\"\n\
         [usage]\npath = \"{}\"\n",
        scratch_file("usage.jsonl").display()
    )
}

/// The value of the control-thread gauge `account_ws_percent{label}` in `/metrics`.
fn ws_percent(admin: SocketAddr, account: &str) -> Option<u64> {
    let line = format!("shardgate_account_ws_percent{{label=\"{account}\"}} ");
    admin_body(admin, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
}

#[test]
fn failing_websocket_rolls_the_account_back_by_itself_and_sighup_reverts_it() {
    let faulty = mock();
    let healthy = mock();
    let admin_port = free_port();
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let log = scratch_file("gateway.log");
    let served = serve_binary_logging(
        &rollback_config(&faulty.base_url(), &healthy.base_url(), admin_port),
        Some(&log),
    );
    eventually("the gauges are published", Duration::from_secs(20), || {
        ws_percent(admin, "faulty") == Some(100)
    });

    // Every WebSocket handshake to the faulty account's upstream fails with 503; HTTP works.
    faulty.script(Script {
        refuse_ws: Some(503),
        ..Script::default()
    });
    // Two sessions, one per account, take turns in lockstep: the same load on both.
    let mut client = connect_session(served.addr, FAULTY_KEY, Some("rollback"));
    let mut other = connect_session(served.addr, HEALTHY_KEY, Some("steady"));
    let mut failures = 0u64;
    let mut threshold_met = None;
    let mut healthy_turns = 0u64;
    let rolled_back_at = loop {
        let turn = other.turn(&create("gpt-5", "hi", true, None));
        assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
        healthy_turns += 1;
        let turn = client.turn(&create("gpt-5", "hi", true, None));
        match turn.last_type().as_str() {
            "error" => {
                failures += 1;
                if failures == MIN_SAMPLES {
                    threshold_met = Some(Instant::now());
                }
            }
            "response.completed" => {
                assert!(faulty.stats().http_turns_total > 0, "served over WebSocket");
                break Instant::now();
            }
            other => panic!("unexpected end of turn {other}: {:?}", turn.types()),
        }
        assert!(
            failures < 10_000,
            "no rollback after {failures} failed turns"
        );
    };
    let threshold_met = threshold_met.expect("the window filled before the rollback");
    let reaction = rolled_back_at.duration_since(threshold_met);
    println!(
        "rollback reaction: {:.0} ms after the {MIN_SAMPLES}th failed WebSocket turn \
         ({:.1} stats intervals of {STATS_INTERVAL_MS} ms); {failures} turns failed in all",
        reaction.as_secs_f64() * 1e3,
        reaction.as_secs_f64() * 1e3 / STATS_INTERVAL_MS as f64,
    );
    // A shard ships its interval every stats interval and the control thread judges on its
    // tick (at most 200 ms): two intervals and a tick, with room for a loaded machine.
    assert!(
        reaction < Duration::from_millis(10 * STATS_INTERVAL_MS),
        "reaction {reaction:?}"
    );

    eventually("the rollback is logged", Duration::from_secs(10), || {
        lines_containing(&log, "automatic rollback") == 1
    });
    let line = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .find(|l| l.contains("automatic rollback"))
        .map(str::to_string)
        .unwrap();
    assert!(
        line.contains("faulty") && line.contains("ws_error_rate") && line.contains("measured"),
        "{line}"
    );
    assert_eq!(labeled_total(admin, "rollbacks", "faulty/ws_error_rate"), 1);
    assert_eq!(ws_percent(admin, "faulty"), Some(0));

    // The same session goes on over HTTP on that account; the healthy one, under the same
    // load, stayed on WebSocket and was never rolled back.
    let before = faulty.stats().http_turns_total;
    for _ in 0..10 {
        for c in [&mut client, &mut other] {
            let turn = c.turn(&create("gpt-5", "hi", true, None));
            assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
        }
    }
    assert_eq!(faulty.stats().http_turns_total, before + 10);
    assert_eq!(healthy.stats().http_turns_total, 0);
    assert_eq!(healthy.stats().ws_turns_total, healthy_turns + 10);
    assert_eq!(ws_percent(admin, "healthy"), Some(100));
    assert_eq!(
        labeled_total(admin, "rollbacks", "healthy/ws_error_rate"),
        0
    );

    // The upstream recovers; a reload (same file) reverts the rollback.
    faulty.reset();
    served.signal(libc::SIGHUP);
    eventually(
        "the reload reverted the rollback",
        Duration::from_secs(20),
        || lines_containing(&log, "faulty.rollback_reverted") == 1,
    );
    eventually(
        "the faulty account's turns go over WebSocket again",
        Duration::from_secs(20),
        || {
            let turn = client.turn(&create("gpt-5", "hi", true, None));
            assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
            faulty.stats().ws_turns_total > 0
        },
    );
    eventually("the gauge is back", Duration::from_secs(20), || {
        ws_percent(admin, "faulty") == Some(100)
    });
    assert_eq!(lines_containing(&log, "automatic rollback"), 1);
    healthy.stop();
    faulty.stop();
}

/// A gateway in this process over one account at `url`, judged by `thresholds`, with metrics.
fn judged_gateway(url: String, thresholds: &str) -> shardgate::gateway::Gateway {
    gateway(config_accounts(
        &[url],
        &format!(
            "admin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 50\n\
             [rollback]\nwindow_secs = 30\nmin_samples = 5\n{thresholds}\n"
        ),
        "",
    ))
}

/// Runs stored turns with `input` on one session until the account's turns reach the mock over
/// HTTP; returns the turns that went over WebSocket before.
fn turns_until_http(gw: &shardgate::gateway::Gateway, up: &MockHandle, input: &str) -> u64 {
    let mut client = session(gw.addr(), Some("judged"));
    let mut ws_turns = 0;
    loop {
        let turn = client.turn(&create("gpt-5", input, true, None));
        assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
        if up.stats().http_turns_total > 0 {
            return ws_turns;
        }
        ws_turns += 1;
        assert!(ws_turns < 200, "no rollback after {ws_turns} turns");
    }
}

#[test]
fn slow_websocket_first_events_trip_the_ttft_p99() {
    let up = mock();
    let gw = judged_gateway(up.base_url(), "ws_ttft_p99_ms = 100");
    let admin = gw.admin_addr().expect("admin listener");
    let ws_turns = turns_until_http(&gw, &up, "slow [[mock:first_ms=150]]");
    assert!(
        ws_turns >= 5,
        "judged after min_samples turns, not before: {ws_turns}"
    );
    eventually("the rollback is counted", Duration::from_secs(10), || {
        labeled_total(admin, "rollbacks", "acct-0/ws_ttft_p99") == 1
    });
    assert_eq!(ws_percent(admin, "acct-0"), Some(0));
    gw.stop();
    up.stop();
}

#[test]
fn websocket_fallbacks_trip_the_fallback_rate() {
    let up = mock();
    // Every WebSocket attempt is closed with 1008 (the turn falls back to HTTP and completes
    // there): the WebSocket attempt pops the `close=1008` rule, the HTTP one the empty rule.
    let mut turns = Vec::new();
    for _ in 0..200 {
        for value in ["close=1008", ""] {
            turns.push(shardgate::mock::Rule {
                value: value.to_string(),
                times: 1,
            });
        }
    }
    up.script(Script {
        turns,
        ..Script::default()
    });
    let gw = judged_gateway(up.base_url(), "ws_fallback_rate = 0.5");
    let admin = gw.admin_addr().expect("admin listener");
    let mut client = session(gw.addr(), Some("judged"));
    let mut fallbacks = 0u64;
    eventually(
        "the fallback rate rolled the account back",
        Duration::from_secs(20),
        || {
            let before = up.stats().ws_turns_total;
            let turn = client.turn(&create("gpt-5", "hi", true, None));
            assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
            let went_ws = up.stats().ws_turns_total > before;
            fallbacks += u64::from(went_ws);
            labeled_total(admin, "rollbacks", "acct-0/ws_fallback_rate") == 1 && !went_ws
        },
    );
    assert!(
        fallbacks >= 5,
        "judged after min_samples attempts: {fallbacks}"
    );
    assert_eq!(ws_percent(admin, "acct-0"), Some(0));
    gw.stop();
    up.stop();
}

#[test]
fn websocket_slower_than_the_accounts_http_half_trips_the_added_p99() {
    let up = mock();
    let gw = gateway(config_accounts(
        &[up.base_url()],
        "admin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 50\n\
         [rollback]\nwindow_secs = 30\nmin_samples = 5\nws_added_ttft_p99_ms = 100\n",
        "ws_canary_percent = 50",
    ));
    let admin = gw.admin_addr().expect("admin listener");
    // Half the sessions on each transport; the WebSocket ones get their first event 200 ms
    // late, the HTTP ones at once: WebSocket adds ~200 ms over the account's HTTP baseline.
    let mut sessions: Vec<(Client, bool)> = (0..20)
        .map(|i| {
            let mut c = session(gw.addr(), Some(&format!("added-{i}")));
            let ws = turn_went_ws(&mut c, &up);
            (c, ws)
        })
        .collect();
    assert!(
        sessions.iter().any(|s| s.1) && sessions.iter().any(|s| !s.1),
        "both halves present"
    );
    eventually(
        "the added TTFT p99 rolled the account back",
        Duration::from_secs(20),
        || {
            for (c, ws) in &mut sessions {
                let input = if *ws {
                    "slow [[mock:first_ms=200]]"
                } else {
                    "hi"
                };
                let turn = c.turn(&create("gpt-5", input, true, None));
                assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
            }
            labeled_total(admin, "rollbacks", "acct-0/ws_added_ttft_p99") == 1
        },
    );
    for (c, _) in &mut sessions {
        assert!(!turn_went_ws(c, &up), "every session goes HTTP now");
    }
    gw.stop();
    up.stop();
}
