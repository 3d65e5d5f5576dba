//! The per-shard connection budget: sessions beyond it wait in a bounded queue, get the next
//! freed connection, and are refused with a clear error when the queue is full or times out.

mod common;

use std::time::Duration;

use common::*;

fn one_shard_two_conns(
    up: &shardgate::mock::MockHandle,
    upstream: &str,
) -> shardgate::gateway::Gateway {
    gateway(parse_config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\nadmin_listen = \"127.0.0.1:0\"\n\
         stats_interval_ms = 20\n[upstream]\n{upstream}\n[[client_keys]]\nkey = \"{CLIENT_KEY}\"\n[[accounts]]\nid = \"a\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 2\n",
        up.base_url()
    )))
}

#[test]
fn waiter_gets_the_connection_a_finished_session_releases() {
    let up = mock();
    let gw = one_shard_two_conns(&up, "queue_per_conn = 1\nacquire_timeout_ms = 5000");
    let mut a = connect(gw.addr());
    let mut b = connect(gw.addr());
    let ta = a.turn(&create("gpt-5", "a", false, None));
    b.turn(&create("gpt-5", "b", false, None));
    let addr = gw.addr();
    let waiter = std::thread::spawn(move || {
        let mut c = connect(addr);
        c.turn(&create("gpt-5", "c", false, None))
    });
    // c's turn waits in the queue before a's connection comes back, so what c gets is the
    // hand-over (not an idle connection it would have found anyway).
    let admin = gw.admin_addr().expect("admin listener");
    eventually(
        "session c waits for a connection",
        Duration::from_secs(20),
        || metric_total(admin, "acquire_waiters_len") == 1,
    );
    assert_eq!(up.stats().connections_total, 2, "budget exceeded");
    drop(a); // session a ends cleanly: its connection goes to the waiter
    let tc = waiter.join().unwrap();
    assert_eq!(tc.last_type(), "response.completed");
    assert_eq!(
        tc.conn_id(),
        ta.conn_id(),
        "the released connection was handed over"
    );
    assert_eq!(up.stats().connections_total, 2);
}

#[test]
fn full_queue_and_timeout_are_clear_errors() {
    let up = mock();
    let gw = one_shard_two_conns(&up, "queue_per_conn = 1\nacquire_timeout_ms = 300");
    let mut holders: Vec<_> = (0..2).map(|_| connect(gw.addr())).collect();
    for h in &mut holders {
        assert_eq!(
            h.turn(&create("gpt-5", "hold", false, None)).last_type(),
            "response.completed"
        );
    }
    let mut late = connect(gw.addr());
    let t = late.turn(&create("gpt-5", "late", false, None));
    assert_eq!(
        t.error_code().as_deref(),
        Some("upstream_busy"),
        "{:?}",
        t.events
    );
    assert_eq!(up.stats().connections_total, 2);
}

#[test]
fn stored_sessions_share_connections_between_turns() {
    let up = mock();
    let gw = one_shard_two_conns(&up, "queue_per_conn = 1\nacquire_timeout_ms = 300");
    // Four idle sessions, two connections: stored (store=true) chains do not hold a connection
    // between turns, so none of them waits.
    let mut sessions: Vec<_> = (0..4).map(|_| connect(gw.addr())).collect();
    let mut prev: Vec<Option<String>> = vec![None; 4];
    for round in 0..3 {
        for (i, s) in sessions.iter_mut().enumerate() {
            let t = s.turn(&create(
                "gpt-5",
                &format!("r{round}"),
                true,
                prev[i].as_deref(),
            ));
            assert_eq!(t.last_type(), "response.completed", "{:?}", t.events);
            prev[i] = t.response_id();
        }
    }
    assert!(up.stats().connections_total <= 2);
    assert_eq!(up.stats().previous_response_not_found_total, 0);
}
