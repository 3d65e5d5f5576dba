//! Sticky state stores: the embedded backend and a real Redis (round trips, expiry, group
//! isolation, sharing between hosts, Redis killed mid-run and back), and the shard cache in
//! front of the control thread.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::private_redis::{answers_ping, PrivateRedis};
use common::{eventually, poll_until, shared_redis_url};
use futures_channel::oneshot;
use futures_lite::future::block_on;
use shardgate::config::{Config, StateConfig};
use shardgate::control::ControlThread;
use shardgate::protocol::ClientFrame;
use shardgate::reload::LiveSettings;
use shardgate::runtime;
use shardgate::shard::counters::ShardCounters;
use shardgate::shard::normalizer::{self, PairingReason, PreviousId};
use shardgate::shard::sticky::{ChainInputs, Sticky};
use shardgate::state::service::{StateMsg, StateService};
use shardgate::state::{Binding, SessionKey, TurnState};

/// A key prefix no other test run uses.
/// The control thread over `config`, with the live settings a gateway would give it.
fn start_control(config: &Arc<Config>) -> (shardgate::control::ControlHandle, ControlThread) {
    let live = Arc::new(LiveSettings::new(config).expect("live settings"));
    ControlThread::start(config.clone(), live).expect("control thread starts")
}

fn unique_prefix(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("sgtest-{tag}-{}-{nanos}", std::process::id())
}

fn config(state_toml: &str) -> Config {
    common::config_for(
        &["http://127.0.0.1:9/v1".to_string()],
        &format!("[state]\n{state_toml}\n"),
    )
}

fn state_config(state_toml: &str) -> StateConfig {
    config(state_toml).state
}

fn redis_state(url: &str, prefix: &str, extra: &str) -> StateConfig {
    state_config(&format!(
        "backend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\n{extra}"
    ))
}

fn binding(conn: u64) -> Binding {
    Binding {
        account: "acct-0".into(),
        instance: "host-a".into(),
        shard: 1,
        connection: conn,
    }
}

/// What a turn that produced `id` leaves behind.
fn turn(
    group: &str,
    id: &str,
    b: Binding,
    session: Option<SessionKey>,
    pending: Option<&[&str]>,
) -> TurnState {
    TurnState {
        group: group.into(),
        response_id: id.into(),
        binding: b,
        session,
        pending: pending.map(|calls| calls.iter().map(|c| c.to_string()).collect()),
    }
}

fn put_turn(
    svc: &mut StateService,
    group: &str,
    id: &str,
    b: Binding,
    session: Option<SessionKey>,
    pending: Option<&[&str]>,
) {
    svc.handle(StateMsg::Turn(Box::new(turn(
        group, id, b, session, pending,
    ))));
}

fn get_binding(svc: &mut StateService, group: &str, id: &str) -> Option<Binding> {
    let (tx, rx) = oneshot::channel();
    svc.handle(StateMsg::LookupBinding {
        group: group.into(),
        response_id: id.into(),
        reply: tx,
    });
    block_on(rx).expect("answered")
}

fn get_last(svc: &mut StateService, group: &str, session: SessionKey) -> Option<String> {
    let (tx, rx) = oneshot::channel();
    svc.handle(StateMsg::LookupSessionLast {
        group: group.into(),
        session,
        reply: tx,
    });
    block_on(rx).expect("answered")
}

fn get_pending(svc: &mut StateService, group: &str, id: &str) -> Option<Vec<String>> {
    let (tx, rx) = oneshot::channel();
    svc.handle(StateMsg::LookupPending {
        group: group.into(),
        response_id: id.into(),
        reply: tx,
    });
    block_on(rx).expect("answered")
}

/// Writes one of each kind in `g1` and checks they read back there and nowhere else.
fn round_trip_and_isolation(svc: &mut StateService) {
    let sess = SessionKey::hash(b"test-key/session-1");
    put_turn(
        svc,
        "g1",
        "resp_a",
        binding(7),
        Some(sess),
        Some(&["call_1", "call_2"]),
    );
    svc.tick(Instant::now());
    assert_eq!(get_binding(svc, "g1", "resp_a"), Some(binding(7)));
    assert_eq!(get_last(svc, "g1", sess).as_deref(), Some("resp_a"));
    assert_eq!(
        get_pending(svc, "g1", "resp_a"),
        Some(vec!["call_1".to_string(), "call_2".to_string()])
    );
    assert_eq!(get_binding(svc, "g2", "resp_a"), None);
    assert_eq!(get_last(svc, "g2", sess), None);
    assert_eq!(get_pending(svc, "g2", "resp_a"), None);
    assert_eq!(get_binding(svc, "g1", "resp_unknown"), None);
    put_turn(svc, "g1", "resp_b", binding(8), Some(sess), None);
    assert_eq!(get_last(svc, "g1", sess).as_deref(), Some("resp_b"));
}

#[test]
fn embedded_round_trip_and_group_isolation() {
    let mut svc = StateService::open(&state_config("")).unwrap();
    round_trip_and_isolation(&mut svc);
    let stats = svc.stats();
    assert_eq!(stats.lookups.load(Ordering::Relaxed), 8);
    assert_eq!(stats.lookup_hits.load(Ordering::Relaxed), 4);
    assert_eq!(stats.redis_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn embedded_entries_expire() {
    let mut svc = StateService::open(&state_config("ttl_secs = 0.2")).unwrap();
    let sess = SessionKey::hash(b"s");
    put_turn(&mut svc, "g", "resp_x", binding(1), Some(sess), None);
    assert!(get_binding(&mut svc, "g", "resp_x").is_some());
    // Outliving the 0.3 s TTL is the behaviour under test (the local store has no clock to
    // wait on but its own).
    std::thread::sleep(Duration::from_millis(400));
    svc.tick(Instant::now());
    assert_eq!(get_binding(&mut svc, "g", "resp_x"), None);
    assert_eq!(get_last(&mut svc, "g", sess), None);
}

/// Direct access to Redis, to look behind the store.
struct Peek {
    con: redis::Connection,
    prefix: String,
}

impl Peek {
    fn new(url: &str, prefix: &str) -> Self {
        let con = redis::Client::open(url)
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(3))
            .expect("Redis is reachable for tests");
        Peek {
            con,
            prefix: prefix.to_string(),
        }
    }

    fn get(&mut self, key: &str) -> Option<String> {
        redis::cmd("GET").arg(key).query(&mut self.con).unwrap()
    }

    fn keys(&mut self) -> Vec<String> {
        self.try_keys().unwrap()
    }

    fn try_keys(&mut self) -> redis::RedisResult<Vec<String>> {
        redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut self.con)
    }
}

impl Drop for Peek {
    /// Removes this test's keys (when the server is still there to ask).
    fn drop(&mut self) {
        for key in self.try_keys().unwrap_or_default() {
            let _: Result<(), _> = redis::cmd("DEL").arg(key).query(&mut self.con);
        }
    }
}

#[test]
fn redis_round_trip_isolation_and_key_layout() {
    let url = shared_redis_url();
    let prefix = unique_prefix("rt");
    let mut peek = Peek::new(&url, &prefix);
    let mut svc = StateService::open(&redis_state(&url, &prefix, "")).unwrap();
    round_trip_and_isolation(&mut svc);
    svc.tick(Instant::now());
    let mut keys = peek.keys();
    keys.sort();
    let sess_hex = SessionKey::hash(b"test-key/session-1").hex();
    assert_eq!(
        keys,
        vec![
            format!("{prefix}:g1:pend:resp_a"),
            format!("{prefix}:g1:resp:resp_a"),
            format!("{prefix}:g1:resp:resp_b"),
            format!("{prefix}:g1:sess:{sess_hex}"),
        ]
    );
    assert_eq!(
        peek.get(&format!("{prefix}:g1:sess:{sess_hex}")).as_deref(),
        Some("resp_b")
    );
    assert_eq!(svc.stats().redis_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn redis_state_is_shared_between_hosts() {
    let url = shared_redis_url();
    let prefix = unique_prefix("share");
    let _peek = Peek::new(&url, &prefix);
    let mut host_a = StateService::open(&redis_state(&url, &prefix, "")).unwrap();
    let mut host_b = StateService::open(&redis_state(&url, &prefix, "")).unwrap();
    let sess = SessionKey::hash(b"k/s");
    put_turn(
        &mut host_a,
        "g",
        "resp_1",
        binding(3),
        Some(sess),
        Some(&["call_9"]),
    );
    host_a.tick(Instant::now());
    assert_eq!(get_binding(&mut host_b, "g", "resp_1"), Some(binding(3)));
    assert_eq!(
        get_pending(&mut host_b, "g", "resp_1"),
        Some(vec!["call_9".to_string()])
    );
    assert_eq!(get_last(&mut host_b, "g", sess).as_deref(), Some("resp_1"));
    // The session moves on on host B; host A, whose local copy still says resp_1, reads B's.
    put_turn(&mut host_b, "g", "resp_2", binding(4), Some(sess), None);
    host_b.tick(Instant::now());
    assert_eq!(get_last(&mut host_a, "g", sess).as_deref(), Some("resp_2"));
}

#[test]
fn redis_entries_expire() {
    let url = shared_redis_url();
    let prefix = unique_prefix("ttl");
    let mut peek = Peek::new(&url, &prefix);
    let mut svc = StateService::open(&redis_state(&url, &prefix, "ttl_secs = 0.3")).unwrap();
    put_turn(&mut svc, "g", "resp_t", binding(1), None, None);
    svc.tick(Instant::now());
    assert!(peek.get(&format!("{prefix}:g:resp:resp_t")).is_some());
    // Redis expires the key by itself.
    poll_until(Duration::from_secs(20), || {
        peek.get(&format!("{prefix}:g:resp:resp_t")).is_none()
    });
    assert_eq!(peek.get(&format!("{prefix}:g:resp:resp_t")), None);
    assert_eq!(get_binding(&mut svc, "g", "resp_t"), None);
}

#[test]
fn redis_killed_mid_run_serves_local_state_then_writes_resume() {
    let mut server = PrivateRedis::start(&["--appendonly", "no"]);
    let url = server.url();
    let cfg = redis_state(&url, "sg", "redis_timeout_ms = 500");
    let mut svc = StateService::open(&cfg).unwrap();
    let stats = svc.stats();
    let sess = SessionKey::hash(b"k/s");
    put_turn(
        &mut svc,
        "g",
        "resp_1",
        binding(1),
        Some(sess),
        Some(&["call_1"]),
    );
    svc.tick(Instant::now());
    assert_eq!(stats.redis_errors.load(Ordering::Relaxed), 0);

    server.kill();
    // Everything this host knows is still served, from its local copy.
    assert_eq!(get_last(&mut svc, "g", sess).as_deref(), Some("resp_1"));
    assert_eq!(get_binding(&mut svc, "g", "resp_1"), Some(binding(1)));
    assert_eq!(
        get_pending(&mut svc, "g", "resp_1"),
        Some(vec!["call_1".to_string()])
    );
    // New writes land locally and are served too; Redis never sees them.
    put_turn(&mut svc, "g", "resp_2", binding(2), Some(sess), None);
    svc.tick(Instant::now());
    assert_eq!(get_binding(&mut svc, "g", "resp_2"), Some(binding(2)));
    assert_eq!(get_last(&mut svc, "g", sess).as_deref(), Some("resp_2"));
    assert!(stats.redis_errors.load(Ordering::Relaxed) > 0);
    assert!(stats.local_fallback_reads.load(Ordering::Relaxed) > 0);
    assert!(stats.redis_writes_dropped.load(Ordering::Relaxed) > 0);

    server.restart();
    let mut peek = Peek::new(&url, "sg");
    let key = "sg:g:resp:resp_3";
    let written = poll_until(Duration::from_secs(20), || {
        put_turn(&mut svc, "g", "resp_3", binding(3), None, None);
        svc.tick(Instant::now());
        peek.get(key).is_some()
    });
    assert!(written, "writes reach Redis again once it is back");
    assert!(stats.redis_connects.load(Ordering::Relaxed) >= 2);
}

#[test]
fn sticky_cache_serves_its_own_writes_and_asks_the_control_thread_on_a_miss() {
    let config = Arc::new(config(""));
    let (handle, control) = start_control(&config);
    let state_cfg = config.state.clone();
    let shard = runtime::spawn_executor("sticky-test", None, move || async move {
        let own = Sticky::new(handle.clone(), &state_cfg);
        let other = Sticky::new(handle.clone(), &state_cfg);
        let counters = ShardCounters::default();
        let sess = SessionKey::hash(b"k/s");
        own.remember_turn(
            &counters,
            turn("g", "resp_1", binding(5), Some(sess), Some(&["call_1"])),
        );
        let mine = own.binding(&counters, "g", "resp_1").await;
        let theirs = other.binding(&counters, "g", "resp_1").await;
        let last = other.session_last(&counters, "g", sess).await;
        let pending = other.pending(&counters, "g", "resp_1").await;
        let elsewhere = other.binding(&counters, "other-group", "resp_1").await;
        let mut labels = counters.labeled_values();
        labels.sort();
        (mine, theirs, last, pending, elsewhere, labels)
    })
    .unwrap();
    let (mine, theirs, last, pending, elsewhere, labels) = shard.join().unwrap();
    control.stop();
    assert_eq!(mine, Some(binding(5)));
    assert_eq!(theirs, Some(binding(5)));
    assert_eq!(last.as_deref(), Some("resp_1"));
    assert_eq!(pending, Some(vec!["call_1".to_string()]));
    assert_eq!(elsewhere, None);
    assert_eq!(
        labels,
        vec![
            ("sticky", "hit".to_string(), 1),
            ("sticky", "store_hit".to_string(), 3),
            ("sticky", "store_miss".to_string(), 1),
        ]
    );
}

#[test]
fn gateway_state_survives_redis_dying_and_says_so_in_its_counters() {
    let mut server = PrivateRedis::start(&["--appendonly", "no"]);
    let url = server.url();
    let prefix = unique_prefix("ctl");
    let config = Arc::new(config(&format!(
        "backend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\nredis_timeout_ms = 500"
    )));
    let (handle, control) = start_control(&config);
    let stats = handle.state_stats().clone();
    let (written_tx, written_rx) = std::sync::mpsc::channel::<()>();
    let (killed_tx, killed_rx) = std::sync::mpsc::channel::<()>();
    let state_cfg = config.state.clone();
    let shard = runtime::spawn_executor("sticky-redis", None, move || async move {
        let shard_a = Sticky::new(handle.clone(), &state_cfg);
        let shard_b = Sticky::new(handle.clone(), &state_cfg);
        let counters = ShardCounters::default();
        let sess = SessionKey::of_client("test-key", "session-1");
        shard_a.remember_turn(&counters, turn("g", "resp_1", binding(1), Some(sess), None));
        let _ = written_tx.send(());
        let _ = runtime::blocking(move || killed_rx.recv()).await;
        (
            shard_b.binding(&counters, "g", "resp_1").await,
            shard_b.session_last(&counters, "g", sess).await,
        )
    })
    .unwrap();
    written_rx.recv().unwrap();
    let mut peek = Peek::new(&url, &prefix);
    poll_until(Duration::from_secs(20), || {
        peek.get(&format!("{prefix}:g:resp:resp_1")).is_some()
    });
    assert!(peek.get(&format!("{prefix}:g:resp:resp_1")).is_some());
    server.kill();
    killed_tx.send(()).unwrap();
    let (found, last) = shard.join().unwrap();
    control.stop();
    assert_eq!(found, Some(binding(1)));
    assert_eq!(last.as_deref(), Some("resp_1"));
    assert!(stats.redis_errors.load(Ordering::Relaxed) > 0);
    assert!(stats.local_fallback_reads.load(Ordering::Relaxed) > 0);
}

#[test]
fn slow_redis_is_paused_and_reads_go_local() {
    use std::io::Write;
    let server = PrivateRedis::start(&["--appendonly", "no", "--enable-debug-command", "yes"]);
    let cfg = redis_state(&server.url(), "sg", "");
    let mut svc = StateService::open(&cfg).unwrap();
    let stats = svc.stats();
    let sess = SessionKey::of_client("k", "s");
    put_turn(&mut svc, "g", "resp_1", binding(1), Some(sess), None);
    svc.tick(Instant::now());
    // Block the server for a while from another connection, then read through the store.
    let mut blocker = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    blocker.write_all(b"DEBUG SLEEP 0.8\r\n").unwrap();
    // The server is blocked once a PING goes unanswered.
    eventually("the server is blocked", Duration::from_secs(20), || {
        !answers_ping(&server.url(), Duration::from_millis(150))
    });
    assert_eq!(get_last(&mut svc, "g", sess).as_deref(), Some("resp_1"));
    assert_eq!(stats.redis_slow_calls.load(Ordering::Relaxed), 1);
    assert_eq!(stats.local_fallback_reads.load(Ordering::Relaxed), 0);
    // Paused: the next read does not ask Redis at all.
    put_turn(&mut svc, "g", "resp_2", binding(2), Some(sess), None);
    assert_eq!(get_last(&mut svc, "g", sess).as_deref(), Some("resp_2"));
    assert_eq!(stats.local_fallback_reads.load(Ordering::Relaxed), 1);
    // Both of the turn's writes (binding, session's last response) stayed local.
    assert_eq!(stats.redis_writes_dropped.load(Ordering::Relaxed), 2);
    assert_eq!(stats.redis_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn sticky_lookups_do_not_wait_when_the_control_thread_cannot_take_them() {
    let config = Arc::new(config(""));
    let (handle, control) = start_control(&config);
    control.stop();
    let state_cfg = config.state.clone();
    let shard = runtime::spawn_executor("sticky-gone", None, move || async move {
        let sticky = Sticky::new(handle.clone(), &state_cfg);
        let counters = ShardCounters::default();
        sticky.remember_turn(&counters, turn("g", "resp_1", binding(1), None, None));
        let cached = sticky.binding(&counters, "g", "resp_1").await;
        let missing = sticky.binding(&counters, "g", "resp_2").await;
        let mut labels = counters.labeled_values();
        labels.sort();
        (cached, missing, labels, counters.control_queue_drops.get())
    })
    .unwrap();
    let (cached, missing, labels, drops) = shard.join().unwrap();
    assert_eq!(cached, Some(binding(1)));
    assert_eq!(missing, None);
    assert_eq!(
        labels,
        vec![
            ("sticky", "hit".to_string(), 1),
            ("sticky", "queue_full".to_string(), 1),
            ("sticky", "write_dropped".to_string(), 1),
        ]
    );
    assert_eq!(drops, 2);
}

#[test]
fn chain_inputs_feed_the_normalizer_after_a_reconnect() {
    let config = Arc::new(config(""));
    let (handle, control) = start_control(&config);
    let state_cfg = config.state.clone();
    let shard = runtime::spawn_executor("chain-inputs", None, move || async move {
        let first_conn = Sticky::new(handle.clone(), &state_cfg);
        let reconnect = Sticky::new(handle.clone(), &state_cfg);
        let counters = ShardCounters::default();
        let sess = SessionKey::of_client("test-key", "session-1");
        // The first connection's turn ended with a function call pending.
        first_conn.remember_turn(
            &counters,
            turn("g", "resp_1", binding(1), Some(sess), Some(&["call_1"])),
        );
        // A plain frame on the reconnect looks nothing up.
        let plain = ClientFrame::parse(br#"{"type":"response.create","input":"hi"}"#).unwrap();
        let none = reconnect
            .chain_inputs(&counters, "g", Some(sess), None, &plain)
            .await;
        let calls_before = counters.labeled_values().len();
        // Its tool output arrives on a new connection, store=false, without an id.
        let frame = br#"{"type":"response.create","store":false,"input":[{"type":"function_call_output","call_id":"call_1","output":"ok"}]}"#;
        let parsed = ClientFrame::parse(frame).unwrap();
        let inputs = reconnect
            .chain_inputs(&counters, "g", Some(sess), None, &parsed)
            .await;
        (none, calls_before, inputs)
    })
    .unwrap();
    let (none, calls_before, inputs) = shard.join().unwrap();
    control.stop();
    assert_eq!(none, ChainInputs::default());
    assert_eq!(calls_before, 0);
    assert_eq!(
        inputs,
        ChainInputs {
            session_last: Some("resp_1".into()),
            pending_of_previous: None,
            pending_of_last: Some(vec!["call_1".into()]),
        }
    );
    let frame = bytes::Bytes::from_static(
        br#"{"type":"response.create","store":false,"input":[{"type":"function_call_output","call_id":"call_1","output":"ok"}]}"#,
    );
    let parsed = ClientFrame::parse(&frame).unwrap();
    let pairing = normalizer::decide_pairing(&inputs.facts(&parsed));
    assert_eq!(pairing.previous, PreviousId::Set("resp_1"));
    assert_eq!(pairing.reason, PairingReason::InjectVerified);
}
