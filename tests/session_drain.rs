//! Graceful shutdown as WebSocket clients see it: a session between turns is closed with 1001
//! "going away" at once; a session in the middle of a turn gets the whole turn, then 1001.

mod common;

use common::*;

#[test]
fn draining_closes_idle_sessions_with_1001_and_lets_running_turns_finish() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
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
