//! The load generator against a real gateway in front of the mock upstream.

use std::time::{Duration, Instant};

use shardgate::config::Config;
use shardgate::gateway::Gateway;
use shardgate::load::{LoadConfig, Stop, Target};
use shardgate::mock::{MockConfig, Rule, Script};

const CLIENT_KEY: &str = "sk-gw-load";

#[test]
fn four_connections_five_turns_each() {
    let mock = shardgate::mock::start(MockConfig::default()).expect("mock starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\n[[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"load\"\n\
         [[accounts]]\nid = \"acct-0\"\nbase_url = \"{}\"\napi_key = \"sk-upstream\"\nmax_conns = 8\n\
         [usage]\npath = \"{}\"\n",
        mock.base_url(),
        dir.path().join("usage.jsonl").display()
    );
    let config = Config::parse(&text, &|_| None).expect("config is valid");
    let gateway = Gateway::start(config).expect("gateway starts");

    let target = Target::parse(&format!("ws://{}/v1/responses", gateway.addr())).expect("url");
    let mut load = LoadConfig::new(target, CLIENT_KEY);
    load.connections = 4;
    load.stop = Stop::Turns(5);
    load.chain = true;
    load.warmup = true;
    load.payload_bytes = 4096;
    load.turn_timeout = Duration::from_secs(10);
    let started = Instant::now();
    let report = shardgate::load::run(load).expect("load runs");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    assert_eq!(report.turns_ok, 20, "{}", report.table());
    assert_eq!(report.turns_failed, 0, "{}", report.table());
    assert_eq!(report.errors_total, 0, "{}", report.table());
    assert_eq!(report.warmups_ok, 20);
    assert_eq!(report.connects, 4);
    assert_eq!(report.turn_us.count, 20);
    assert_eq!(report.ttft_us.count, 20);
    assert_eq!(report.warmup_us.count, 20);
    assert_eq!(report.connect_us.count, 4);
    assert!(report.event_latency_us.count >= report.events / 2);
    assert!(report.turn_us.max >= report.ttft_us.min);

    gateway.stop();
    mock.stop();
}

#[test]
fn failures_are_counted_and_never_hang() {
    let mock = shardgate::mock::start(MockConfig::default()).expect("mock starts");
    let rule = |value: &str| Rule {
        value: value.to_string(),
        times: 1,
    };
    mock.script(Script {
        turns: vec![
            rule("stall"),
            rule("error=server_error"),
            rule("close=1011"),
        ],
        ..Script::default()
    });
    let target = Target::parse(&format!("ws://{}/v1/responses", mock.addr())).expect("url");
    let mut load = LoadConfig::new(target, "sk-any");
    load.stop = Stop::Turns(4);
    load.chain = true;
    load.turn_timeout = Duration::from_millis(300);
    let report = shardgate::load::run(load).expect("load runs");
    let summary = report.table();
    assert_eq!(report.turns_ok, 1, "{summary}");
    assert_eq!(report.turns_failed, 3, "{summary}");
    assert_eq!(report.errors.get("turn_timeout"), Some(&1), "{summary}");
    assert_eq!(report.errors.get("server_error"), Some(&1), "{summary}");
    assert_eq!(report.errors.get("close_1011"), Some(&1), "{summary}");
    assert_eq!(
        report.connects, 4,
        "a failed turn drops its connection: {summary}"
    );
    mock.stop();
}
