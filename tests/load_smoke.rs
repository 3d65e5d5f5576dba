//! The load generator against a real gateway in front of the mock upstream.

use std::time::{Duration, Instant};

use shardgate::config::Config;
use shardgate::gateway::Gateway;
use shardgate::load::{LoadConfig, Stop, Target};
use shardgate::mock::MockConfig;

const CLIENT_KEY: &str = "sk-gw-load";

#[test]
fn four_connections_five_turns_each() {
    let mock = shardgate::mock::start(MockConfig::default()).expect("mock starts");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\n[[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"load\"\n\
         [[accounts]]\nid = \"acct-0\"\nbase_url = \"{}\"\napi_key = \"sk-upstream\"\nmax_conns = 8\n",
        mock.base_url()
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
    assert!(report.event_latency_us.count >= report.events / 2);
    assert!(report.turn_us.max >= report.ttft_us.min);

    gateway.stop();
    mock.stop();
}
