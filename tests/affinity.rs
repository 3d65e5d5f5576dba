//! Sticky state wired end to end: a chained turn finds the upstream connection (or account)
//! its previous response lives on — on the same shard, on another shard (the client connection
//! is handed over), on another gateway host (through Redis) — and chain errors follow the
//! recovery matrix. Every decision is a labeled counter in `/metrics`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use shardgate::mock::{MockHandle, Rule, Script};
use shardgate::tungstenite::Message;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

/// A gateway config with `shards` shards, one account per mock, room for many sessions, stats
/// shipped quickly and an admin listener for `/metrics`.
fn config_text(mocks: &[&MockHandle], shards: usize, extra: &str, admin: &str) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = {shards}\ndrain_timeout_secs = 5\n\
         admin_listen = \"{admin}\"\nstats_interval_ms = 50\n{extra}\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n"
    );
    for (i, m) in mocks.iter().enumerate() {
        text.push_str(&format!(
            "[[accounts]]\nid = \"acct-{i}\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 64\n",
            m.base_url()
        ));
    }
    text.push_str(&format!(
        "[usage]\npath = \"{}\"\n",
        scratch_file("usage.jsonl").display()
    ));
    text
}

fn config(mocks: &[&MockHandle], shards: usize, extra: &str) -> shardgate::config::Config {
    parse_config(&config_text(mocks, shards, extra, "127.0.0.1:0"))
}

/// A loopback address nothing listens on right now (for a child process's admin listener).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A `response.create` with a raw `input` array.
fn create_with_input(store: bool, previous: Option<&str>, input: &str) -> String {
    let prev = previous
        .map(|p| format!(",\"previous_response_id\":\"{p}\""))
        .unwrap_or_default();
    format!(r#"{{"type":"response.create","model":"gpt-5","store":{store}{prev},"input":{input}}}"#)
}

/// Closes the client and waits until the gateway has answered (or dropped) the close, so its
/// session has ended and given its upstream connection back.
fn close(mut c: Client) {
    let _ = c.ws.close(None);
    let _ = c.ws.flush();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match c.ws.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}

/// Waits (stats ship every 50 ms) until `family{label}` reaches `at_least`; returns its value.
fn wait_labeled(admin: SocketAddr, family: &str, label: &str, at_least: u64) -> u64 {
    poll_until(Duration::from_secs(20), || {
        labeled_total(admin, family, label) >= at_least
    });
    labeled_total(admin, family, label)
}

/// The `previous_response_id` of a frame the mock received (`None` when absent or null).
fn previous_of(frame: &str) -> Option<String> {
    let v: sonic_rs::Value = sonic_rs::from_str(frame).expect("frame is JSON");
    v.get("previous_response_id")
        .and_then(|p| p.as_str().map(str::to_owned))
}

/// The `call_id` of the function call a turn's response ended with.
fn call_id_of(turn: &Turn) -> String {
    let last = turn.events.last().expect("a terminal event");
    let output = last.get("response").and_then(|r| r.get("output"));
    let items = output.and_then(|o| o.as_array()).expect("output items");
    items
        .iter()
        .find_map(|i| {
            (i.get("type").and_then(|t| t.as_str()) == Some("function_call"))
                .then(|| i.get("call_id").and_then(|c| c.as_str().map(str::to_owned)))
                .flatten()
        })
        .expect("a function call")
}

#[test]
fn a_reconnect_on_the_same_shard_continues_on_the_same_upstream_connection() {
    let up = mock();
    let gw = gateway(config(&[&up], 1, ""));
    let admin = gw.admin_addr().expect("admin");
    // Two store=false chains, so the pool holds two idle connections; the first one's is
    // under the other on the idle stack, so only affinity brings it back.
    let mut a = connect(gw.addr());
    let mut b = connect(gw.addr());
    let ta = a.turn(&create("gpt-5", "one", false, None));
    let tb = b.turn(&create("gpt-5", "two", false, None));
    assert_eq!(ta.last_type(), "response.completed");
    assert_ne!(ta.conn_id(), tb.conn_id());
    close(a);
    close(b);

    let mut c = connect(gw.addr());
    let prev = ta.response_id().expect("response id");
    let tc = c.turn(&create("gpt-5", "three", false, Some(&prev)));
    assert_eq!(tc.last_type(), "response.completed", "{:?}", tc.events);
    assert_eq!(tc.conn_id(), ta.conn_id(), "same upstream connection");
    assert_eq!(up.stats().previous_response_not_found_total, 0);
    assert!(wait_labeled(admin, "affinity", "connection_reused", 1) >= 1);
    assert!(labeled_total(admin, "affinity", "this_shard") >= 1);
}

#[test]
fn a_reconnect_that_lands_on_another_shard_is_handed_to_the_owner() {
    let up = mock();
    let gw = gateway(config(&[&up], 2, ""));
    let admin = gw.admin_addr().expect("admin");
    // The kernel spreads connections over the two shards by their 4-tuple: with ten chains a
    // round, some reconnections land on the other shard; a few rounds make a miss negligible.
    let mut chains = 0;
    for _round in 0..4 {
        let mut firsts = Vec::new();
        for i in 0..10 {
            let mut c = connect(gw.addr());
            let t = c.turn(&create("gpt-5", &format!("start {i}"), false, None));
            assert_eq!(t.last_type(), "response.completed");
            firsts.push((c, t));
        }
        let mut ids = Vec::new();
        for (c, t) in firsts {
            close(c);
            ids.push((t.response_id().expect("id"), t.conn_id()));
        }
        for (prev, conn) in ids {
            let mut c = connect(gw.addr());
            let t = c.turn(&create("gpt-5", "go on", false, Some(&prev)));
            assert_eq!(t.last_type(), "response.completed", "{:?}", t.events);
            assert_eq!(
                t.conn_id(),
                conn,
                "the chain stayed on its upstream connection"
            );
            // The handed session goes on serving turns on the owner.
            let next = t.response_id().expect("id");
            let t2 = c.turn(&create("gpt-5", "and on", false, Some(&next)));
            assert_eq!(t2.conn_id(), conn);
            close(c);
            chains += 1;
        }
        if wait_labeled(admin, "handoff", "received", 1) >= 1 {
            break;
        }
    }
    assert_eq!(up.stats().previous_response_not_found_total, 0);
    // The two ends count on different shards, each in its own stats snapshot: read them until
    // both snapshots are in (every handoff is over by now, so they settle at the same count).
    let (mut sent, mut received) = (0, 0);
    poll_until(Duration::from_secs(20), || {
        sent = labeled_total(admin, "handoff", "sent");
        received = labeled_total(admin, "handoff", "received");
        sent >= 1 && sent == received
    });
    assert!(
        sent >= 1,
        "no reconnection of {chains} landed on the other shard"
    );
    assert_eq!(received, sent);
    assert!(wait_labeled(admin, "affinity", "other_shard", sent) >= sent);
    assert!(wait_labeled(admin, "affinity", "connection_reused", sent) >= sent);
}

#[test]
fn a_stored_chain_started_on_one_host_continues_on_another_with_the_same_account() {
    let (m0, m1) = (mock(), mock());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("sgtest-affinity-{}-{nanos}", std::process::id());
    let state = |instance: &str| {
        format!(
            "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\ninstance = \"{instance}\"\nkey_prefix = \"{prefix}\"\n",
            shared_redis_url()
        )
    };
    // Two gateway processes (two hosts) sharing one Redis.
    let gw_a = serve_binary(&config_text(
        &[&m0, &m1],
        1,
        &state("host-a"),
        "127.0.0.1:0",
    ));
    let admin_b = free_addr();
    let gw_b = serve_binary(&config_text(
        &[&m0, &m1],
        1,
        &state("host-b"),
        &admin_b.to_string(),
    ));
    // Each mock keeps its own store: a chain sent to the other account's mock would be
    // refused with previous_response_not_found.
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut a = connect(gw_a.addr);
        let t = a.turn(&create("gpt-5", &format!("on host a {i}"), true, None));
        assert_eq!(t.last_type(), "response.completed");
        ids.push(t.response_id().expect("id"));
        close(a);
    }
    let (served0, served1) = (m0.stats().ws_turns_total, m1.stats().ws_turns_total);
    assert!(served0 > 0 && served1 > 0, "both accounts took chains");
    // The bindings reach Redis through host a's control thread.
    let mut redis = redis::Client::open(shared_redis_url())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(3)))
        .expect("Redis is reachable for tests");
    eventually(
        "host a's bindings are in Redis",
        Duration::from_secs(20),
        || {
            ids.iter().all(|id| {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}:*:resp:{id}"))
                    .query(&mut redis)
                    .unwrap_or_default();
                !keys.is_empty()
            })
        },
    );
    for prev in &ids {
        let mut b = connect(gw_b.addr);
        let t = b.turn(&create("gpt-5", "on host b", true, Some(prev)));
        assert_eq!(t.last_type(), "response.completed", "{:?}", t.events);
        close(b);
    }
    assert_eq!(m0.stats().previous_response_not_found_total, 0);
    assert_eq!(m1.stats().previous_response_not_found_total, 0);
    assert_eq!(m0.stats().ws_turns_total, served0 * 2);
    assert_eq!(m1.stats().ws_turns_total, served1 * 2);
    assert_eq!(wait_labeled(admin_b, "affinity", "other_host", 6), 6);
}

/// A one-shard gateway over one mock, with a client session on it.
fn recovery_setup() -> (MockHandle, shardgate::gateway::Gateway, SocketAddr, Client) {
    let up = mock();
    let gw = gateway(config(&[&up], 1, ""));
    let admin = gw.admin_addr().expect("admin");
    let client = connect(gw.addr());
    (up, gw, admin, client)
}

fn script_next_turn(up: &MockHandle, directives: &str) {
    up.script(Script {
        turns: vec![Rule {
            value: directives.to_string(),
            times: 1,
        }],
        ..Script::default()
    });
}

#[test]
fn previous_response_not_found_is_aligned_once_to_the_sessions_last_response() {
    let (up, _gw, admin, mut c) = recovery_setup();
    let t1 = c.turn(&create("gpt-5", "first", true, None));
    let last = t1.response_id().expect("id");
    let t2 = c.turn(&create(
        "gpt-5",
        "second",
        true,
        Some("resp_unknown_to_upstream"),
    ));
    assert_eq!(t2.last_type(), "response.completed", "{:?}", t2.events);
    assert!(!t2.types().contains(&"error".to_string()));
    let stats = up.stats();
    assert_eq!(stats.previous_response_not_found_total, 1);
    let frames = &stats.recent_ws_frames;
    let n = frames.len();
    assert_eq!(
        previous_of(&frames[n - 2]).as_deref(),
        Some("resp_unknown_to_upstream")
    );
    assert_eq!(previous_of(&frames[n - 1]), Some(last));
    assert_eq!(wait_labeled(admin, "recovery", "align_to_last", 1), 1);
}

#[test]
fn previous_response_not_found_for_the_last_response_itself_goes_to_the_client() {
    let (up, _gw, admin, mut c) = recovery_setup();
    let t1 = c.turn(&create("gpt-5", "first", true, None));
    let last = t1.response_id().expect("id");
    script_next_turn(&up, "error=previous_response_not_found");
    let t2 = c.turn(&create("gpt-5", "second", true, Some(&last)));
    assert_eq!(t2.last_type(), "error");
    assert_eq!(
        t2.error_code().as_deref(),
        Some("previous_response_not_found")
    );
    assert_eq!(up.stats().ws_turns_total, 2, "no second attempt");
    assert_eq!(
        wait_labeled(admin, "recovery", "pass_no_other_response", 1),
        1
    );
    // The session goes on.
    let t3 = c.turn(&create("gpt-5", "third", true, None));
    assert_eq!(t3.last_type(), "response.completed");
}

#[test]
fn tool_output_not_found_is_replayed_without_the_id_only_when_the_calls_travel_along() {
    let (up, _gw, admin, mut c) = recovery_setup();
    let t1 = c.turn(&create("gpt-5", "first", true, None));
    let last = t1.response_id().expect("id");
    script_next_turn(&up, "error=tool_output_not_found");
    let with_call = r#"[{"type":"function_call","call_id":"c1","name":"shell","arguments":"{}"},{"type":"function_call_output","call_id":"c1","output":"ok"}]"#;
    let t2 = c.turn(&create_with_input(true, Some(&last), with_call));
    assert_eq!(t2.last_type(), "response.completed", "{:?}", t2.events);
    let frames = up.stats().recent_ws_frames;
    let n = frames.len();
    assert_eq!(previous_of(&frames[n - 2]), Some(last));
    assert_eq!(previous_of(&frames[n - 1]), None, "replayed without the id");
    assert!(frames[n - 1].contains(r#""previous_response_id":null"#));
    assert_eq!(
        wait_labeled(admin, "recovery", "replay_without_previous", 1),
        1
    );

    // An output whose call is not in the frame is never sent without the id it belongs to.
    let before = up.stats();
    let last = t2.response_id().expect("id");
    let orphan = r#"[{"type":"function_call_output","call_id":"c-elsewhere","output":"ok"}]"#;
    let t3 = c.turn(&create_with_input(true, Some(&last), orphan));
    assert_eq!(t3.last_type(), "error");
    let after = up.stats();
    assert_eq!(
        after.ws_turns_total,
        before.ws_turns_total + 1,
        "not replayed"
    );
    assert_eq!(
        after.tool_output_not_found_total,
        before.tool_output_not_found_total + 1
    );
    assert_eq!(
        wait_labeled(admin, "recovery", "pass_outputs_need_their_id", 1),
        1
    );
}

#[test]
fn a_tool_output_without_previous_id_on_a_store_false_session_gets_the_last_response() {
    let (up, _gw, admin, mut c) = recovery_setup();
    let t1 = c.turn(&create("gpt-5", "run it [[mock:tool=shell]]", false, None));
    assert_eq!(t1.last_type(), "response.completed");
    let last = t1.response_id().expect("id");
    let call = call_id_of(&t1);
    let output = format!(r#"[{{"type":"function_call_output","call_id":"{call}","output":"ok"}}]"#);
    let t2 = c.turn(&create_with_input(false, None, &output));
    assert_eq!(t2.last_type(), "response.completed", "{:?}", t2.events);
    assert_eq!(t2.conn_id(), t1.conn_id());
    let stats = up.stats();
    assert_eq!(stats.tool_output_not_found_total, 0);
    let sent = stats.recent_ws_frames.last().expect("a frame");
    assert_eq!(previous_of(sent), Some(last), "the id was injected");
    assert_eq!(wait_labeled(admin, "normalizer", "inject_verified", 1), 1);
}

#[test]
fn a_reconnect_whose_tool_output_omits_the_id_runs_on_the_calls_connection() {
    let up = mock();
    let gw = gateway(config(&[&up], 1, ""));
    // Two store=false sessions; the caller's connection ends under the other on the idle stack,
    // so only routing by the id the normalizer injects brings it back.
    let mut caller = connect_session(gw.addr(), CLIENT_KEY, Some("sess-caller"));
    let mut other = connect_session(gw.addr(), CLIENT_KEY, Some("sess-other"));
    let asked = caller.turn(&create("gpt-5", "run it [[mock:tool=shell]]", false, None));
    let busy = other.turn(&create("gpt-5", "busy", false, None));
    assert_ne!(asked.conn_id(), busy.conn_id());
    close(caller);
    close(other);

    let mut again = connect_session(gw.addr(), CLIENT_KEY, Some("sess-caller"));
    let output = format!(
        r#"[{{"type":"function_call_output","call_id":"{}","output":"ok"}}]"#,
        call_id_of(&asked)
    );
    let answered = again.turn(&create_with_input(false, None, &output));
    assert_eq!(
        answered.last_type(),
        "response.completed",
        "{:?}",
        answered.events
    );
    assert_eq!(answered.conn_id(), asked.conn_id(), "the call's connection");
    let sent = up
        .stats()
        .recent_ws_frames
        .last()
        .cloned()
        .expect("a frame");
    assert_eq!(
        previous_of(&sent),
        asked.response_id(),
        "the id was injected"
    );
}

#[test]
fn a_post_chained_to_a_websocket_response_runs_on_its_connection() {
    let up = mock();
    let gw = gateway(config(&[&up], 1, ""));
    let mut a = connect(gw.addr());
    let mut b = connect(gw.addr());
    let ta = a.turn(&create("gpt-5", "one", false, None));
    let tb = b.turn(&create("gpt-5", "two", false, None));
    assert_ne!(ta.conn_id(), tb.conn_id());
    close(a);
    close(b);
    // POST requests are routed by previous_response_id without a handoff: on this shard, onto
    // the very connection that holds the store=false response.
    let prev = ta.response_id().expect("id");
    let body = format!(
        r#"{{"model":"gpt-5","stream":false,"store":false,"previous_response_id":"{prev}","input":"more"}}"#
    );
    let reply = HttpConn::open(gw.addr()).post("/v1/responses", &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.json()["id"].as_str().map(str::to_owned).expect("id");
    assert_eq!(conn_of(&id), ta.conn_id());
    assert_eq!(up.stats().previous_response_not_found_total, 0);
}

#[test]
fn a_chain_whose_connection_is_held_by_a_live_session_gets_the_same_account_and_recovery() {
    let (m0, m1) = (mock(), mock());
    let gw = gateway(config(&[&m0, &m1], 1, ""));
    let admin = gw.admin_addr().expect("admin");
    let mut holder = connect(gw.addr());
    let t1 = holder.turn(&create("gpt-5", "mine", false, None));
    let prev = t1.response_id().expect("id");
    let owner = if m0.stats().ws_turns_total == 1 {
        &m0
    } else {
        &m1
    };
    // The holder keeps its session (and its store=false connection) open.
    let mut other = connect(gw.addr());
    let t2 = other.turn(&create("gpt-5", "yours", false, Some(&prev)));
    assert_eq!(
        t2.error_code().as_deref(),
        Some("previous_response_not_found"),
        "{:?}",
        t2.events
    );
    assert_eq!(owner.stats().ws_turns_total, 2, "same account");
    assert_eq!(wait_labeled(admin, "affinity", "connection_busy", 1), 1);
    assert_eq!(
        wait_labeled(admin, "recovery", "pass_no_other_response", 1),
        1
    );
    // The holder's chain is untouched.
    let t3 = holder.turn(&create("gpt-5", "still mine", false, Some(&prev)));
    assert_eq!(t3.last_type(), "response.completed");
    assert_eq!(t3.conn_id(), t1.conn_id());
}

#[test]
fn a_reconnect_after_leaving_mid_turn_is_told_to_resend_the_full_context() {
    let up = mock();
    let gw = gateway(config(&[&up], 1, ""));
    let admin = gw.admin_addr().expect("admin");
    let mut c = connect(gw.addr());
    let t1 = c.turn(&create("gpt-5", "done", false, None));
    let prev = t1.response_id().expect("id");
    // Like Codex on ESC: the client goes away in the middle of the next turn, which costs the
    // upstream connection (its state is unknown) and with it the store=false chain.
    c.send(&create(
        "gpt-5",
        "interrupted [[mock:deltas=50,delay_ms=50]]",
        false,
        Some(&prev),
    ));
    let _ = c.ws.read().expect("the turn started");
    drop(c);
    poll_until(Duration::from_secs(20), || {
        metric_total(admin, "turns_client_gone") >= 1
    });
    let mut again = connect(gw.addr());
    let t2 = again.turn(&create("gpt-5", "go on", false, Some(&prev)));
    assert_eq!(
        t2.error_code().as_deref(),
        Some("previous_response_not_found")
    );
    assert_eq!(wait_labeled(admin, "affinity", "connection_gone", 1), 1);
    // Resending the full context without the id works at once.
    let t3 = again.turn(&create("gpt-5", "everything again", false, None));
    assert_eq!(t3.last_type(), "response.completed");
}
