//! Graceful shutdown as WebSocket clients see it: a session between turns is closed with 1001
//! "going away" at once; a session in the middle of a turn gets the whole turn, then 1001.

mod common;

use common::*;

// One shard: with two, the shards start draining a moment apart, and a frame can reach the
// second one before it has noticed the stop.

#[test]
fn draining_closes_idle_sessions_with_1001_and_lets_running_turns_finish() {
    let up = mock();
    let gw = gateway(config_accounts(&[up.base_url()], "", ""));
    let mut idle = connect(gw.addr());
    assert_eq!(
        idle.turn(&create("gpt-5", "hello", true, None)).last_type(),
        "response.completed"
    );
    let mut busy = connect(gw.addr());
    busy.send(&create(
        "gpt-5",
        "slow [[mock:deltas=4,delay_ms=200]]",
        true,
        None,
    ));
    // The slow turn is under way once its first event arrived.
    let first = busy.ws.read().expect("first event");
    assert!(first.is_text());

    let stopper = std::thread::spawn(move || gw.stop());
    assert_eq!(idle.expect_close(), Some(1001), "idle session: going away");
    let rest = busy.read_turn();
    assert_eq!(rest.last_type(), "response.completed", "{:?}", rest.types());
    assert_eq!(
        busy.expect_close(),
        Some(1001),
        "after its turn: going away"
    );
    stopper.join().expect("gateway stopped");
    assert_eq!(up.stats().ws_turns_total, 2);
}

#[test]
fn a_new_turn_while_draining_is_refused_with_an_error_event_and_1001() {
    let up = mock();
    let gw = gateway(config_accounts(&[up.base_url()], "", ""));
    let mut idle = connect(gw.addr());
    assert_eq!(
        idle.turn(&create("gpt-5", "hello", true, None)).last_type(),
        "response.completed"
    );
    let mut busy = connect(gw.addr());
    busy.send(&create(
        "gpt-5",
        "slow [[mock:deltas=40,delay_ms=100]]",
        true,
        None,
    ));
    assert!(busy.ws.read().expect("first event").is_text());
    let stopper = std::thread::spawn(move || gw.stop());
    // The idle session's close says the shard drains.
    assert_eq!(idle.expect_close(), Some(1001));
    busy.send(&create("gpt-5", "one more", true, None));
    let mut codes = Vec::new();
    let close = loop {
        match busy.ws.read() {
            Ok(shardgate::tungstenite::Message::Text(t)) => {
                let v: sonic_rs::Value = sonic_rs::from_str(t.as_str()).expect("JSON");
                if event_type(&v) == "error" {
                    use sonic_rs::JsonValueTrait;
                    let code = v["error"]["code"].as_str().unwrap_or_default().to_string();
                    codes.push(code);
                }
            }
            Ok(shardgate::tungstenite::Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}; errors {codes:?}"),
        }
    };
    assert_eq!(codes, ["response_preempted", "shutting_down"]);
    assert_eq!(close, Some(1001));
    stopper.join().expect("gateway stopped");
    assert_eq!(
        up.stats().ws_turns_total,
        2,
        "the refused turn never went upstream"
    );
}
