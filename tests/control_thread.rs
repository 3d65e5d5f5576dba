//! The control thread's schedule: with no messages it sleeps until its periodic work (usage
//! flush, stats, state tick) and does that work on time; a lookup a turn waits for still wakes
//! it at once.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::eventually;
use futures_channel::oneshot;
use futures_lite::future::block_on;
use shardgate::control::ShardMsg;
use shardgate::state::service::StateMsg;

/// A control-thread counter (`shardgate_{name}_total`, no shard label) from `/metrics`.
fn control_counter(admin: SocketAddr, name: &str) -> u64 {
    let prefix = format!("shardgate_{name}_total ");
    common::admin_body(admin, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

fn idle_gateway(stats_interval_ms: u64) -> shardgate::gateway::Gateway {
    common::gateway(common::config_for(
        &["http://127.0.0.1:9/v1".to_string()],
        &format!("admin_listen = \"127.0.0.1:0\"\nstats_interval_ms = {stats_interval_ms}\n"),
    ))
}

#[test]
fn an_idle_control_thread_wakes_only_for_its_ticks_and_keeps_them_on_time() {
    // A 100 ms stats interval: the control thread ticks every 100 ms.
    let gw = idle_gateway(100);
    let admin = gw.admin_addr().expect("admin listener");
    eventually(
        "the first tick is published",
        Duration::from_secs(10),
        || control_counter(admin, "control_ticks") > 0,
    );
    let (ticks0, wakeups0) = (
        control_counter(admin, "control_ticks"),
        control_counter(admin, "control_wakeups"),
    );
    let started = Instant::now();
    eventually("20 more ticks", Duration::from_secs(10), || {
        control_counter(admin, "control_ticks") >= ticks0 + 20
    });
    let elapsed = started.elapsed();
    let ticks = control_counter(admin, "control_ticks") - ticks0;
    let wakeups = control_counter(admin, "control_wakeups") - wakeups0;
    // On time: 20 ticks 100 ms apart, neither early nor late (a loaded machine may add a
    // little to each sleep, not a whole interval). Ticks keep their cadence: a tick that came
    // late before `started` is followed by one as little as half an interval later, so the 20
    // may take less than 19 intervals (1.86 s seen on a loaded CI run), never less than 19
    // half-intervals; a thread ticking on every loop would take a fraction of that.
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed <= Duration::from_millis(3000),
        "20 ticks took {elapsed:?}"
    );
    // Nothing else woke it: no polling between ticks (the shards' stats snapshots and the
    // admin requests do not wake it either).
    assert!(
        wakeups <= ticks + 3,
        "{wakeups} wake-ups for {ticks} ticks while idle"
    );
    gw.stop();
}

#[test]
fn a_lookup_wakes_the_sleeping_control_thread_at_once() {
    // Ticks 200 ms apart (the longest tick): a lookup answered only on a tick would take
    // 100 ms on average.
    let gw = idle_gateway(10_000);
    let control = gw.control().clone();
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let (reply, answer) = oneshot::channel();
        let asked = Instant::now();
        assert!(control.ask(ShardMsg::State(StateMsg::LookupBinding {
            group: "default".into(),
            response_id: format!("resp_unknown_{i}"),
            reply,
        })));
        assert_eq!(block_on(answer), Ok(None));
        slowest = slowest.max(asked.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(50),
        "slowest lookup answered after {slowest:?}"
    );
    gw.stop();
}
