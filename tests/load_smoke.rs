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

fn mock_target(mock: &shardgate::mock::MockHandle, scheme: &str) -> Target {
    Target::parse(&format!("{scheme}://{}/v1/responses", mock.addr())).expect("url")
}

#[test]
fn sse_turns_reuse_one_keep_alive_connection_each() {
    let mock = shardgate::mock::start(MockConfig::default()).expect("mock starts");
    let mut load = LoadConfig::new(mock_target(&mock, "http"), "sk-any");
    load.connections = 3;
    load.stop = Stop::Turns(4);
    load.payload_bytes = 8192;
    load.turn_timeout = Duration::from_secs(10);
    let report = shardgate::load::run(load).expect("load runs");
    let summary = report.table();
    assert_eq!(report.transport, "sse");
    assert_eq!(report.turns_ok, 12, "{summary}");
    assert_eq!(report.errors_total, 0, "{summary}");
    assert_eq!(report.connects, 3, "{summary}");
    assert_eq!(report.ttft_us.count, 12, "{summary}");
    assert_eq!(report.first_turn_us.count, 3, "{summary}");
    assert!(
        report.event_latency_us.count >= 12 * 8,
        "SSE events carry the mock's stamp: {summary}"
    );
    let stats = mock.stats();
    assert_eq!(stats.http_turns_total, 12);
    assert_eq!(stats.ws_turns_total, 0);
    assert_eq!(
        stats.connections_total, 3,
        "every turn after the first rode the same connection"
    );
    mock.stop();
}

#[test]
fn sse_failures_are_counted_and_the_next_turn_reconnects() {
    let mock = shardgate::mock::start(MockConfig::default()).expect("mock starts");
    let rule = |value: &str| Rule {
        value: value.to_string(),
        times: 1,
    };
    mock.script(Script {
        turns: vec![
            rule("error=server_error"),
            rule("after=3,error=server_error"),
            rule("after=3,drop"),
            rule("stall"),
        ],
        ..Script::default()
    });
    let mut load = LoadConfig::new(mock_target(&mock, "http"), "sk-any");
    load.stop = Stop::Turns(5);
    load.turn_timeout = Duration::from_millis(300);
    let report = shardgate::load::run(load).expect("load runs");
    let summary = report.table();
    assert_eq!(report.turns_ok, 1, "{summary}");
    assert_eq!(report.turns_failed, 4, "{summary}");
    assert_eq!(report.errors.get("http_500"), Some(&1), "{summary}");
    assert_eq!(report.errors.get("server_error"), Some(&1), "{summary}");
    assert_eq!(report.errors.get("close_1006"), Some(&1), "{summary}");
    assert_eq!(report.errors.get("turn_timeout"), Some(&1), "{summary}");
    assert_eq!(
        report.connects, 5,
        "a failed turn drops its connection: {summary}"
    );
    mock.stop();
}

#[test]
fn reconnect_every_opens_a_connection_per_turn() {
    let mock = shardgate::mock::start(MockConfig::default()).expect("mock starts");
    let mut load = LoadConfig::new(mock_target(&mock, "ws"), "sk-any");
    load.connections = 2;
    load.stop = Stop::Turns(3);
    load.reconnect_every = Some(1);
    let report = shardgate::load::run(load).expect("load runs");
    let summary = report.table();
    assert_eq!(report.turns_ok, 6, "{summary}");
    assert_eq!(report.connects, 6, "{summary}");
    assert_eq!(report.first_turn_us.count, 6, "{summary}");
    assert_eq!(mock.stats().ws_connections_total, 6);
    mock.stop();
}

#[test]
fn idle_mode_holds_connections_without_turns() {
    let mock = shardgate::mock::start(MockConfig::default()).expect("mock starts");
    let mut load = LoadConfig::new(mock_target(&mock, "ws"), "sk-any");
    load.connections = 5;
    load.idle_hold = Some(Duration::from_millis(200));
    let report = shardgate::load::run(load).expect("load runs");
    let summary = report.table();
    assert_eq!(report.idle_open, 5, "{summary}");
    assert_eq!(report.turns_ok + report.turns_failed, 0, "{summary}");
    let stats = mock.stats();
    assert_eq!(stats.ws_connections_total, 5);
    assert_eq!(stats.ws_turns_total, 0);
    mock.stop();
}

/// A one-request-per-connection HTTP server: answers every `POST` with a three-event SSE body and
/// closes, alternating a `Content-Length` body and a body delimited by the close itself. Returns
/// its address and a counter of the connections it served.
fn closing_sse_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            let head_end = loop {
                let Ok(n) = stream.read(&mut buf) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                req.extend_from_slice(&buf[..n]);
                if let Some(p) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(p + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&req[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while req.len() < head_end + length {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let n = count.fetch_add(1, Ordering::SeqCst);
            let body = format!(
                "event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"id\":\"r{n}\"}}}}\n\n\
                 event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}}\n\n\
                 event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"r{n}\"}}}}\n\n"
            );
            let head = if n % 2 == 0 {
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
            } else {
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    });
    (addr, served)
}

#[test]
fn sse_reopens_a_connection_the_server_closes_after_each_response() {
    let (addr, served) = closing_sse_server();
    let target = Target::parse(&format!("http://{addr}/v1/responses")).expect("url");
    let mut load = LoadConfig::new(target, "sk-any");
    load.stop = Stop::Turns(4);
    load.turn_timeout = Duration::from_secs(5);
    let report = shardgate::load::run(load).expect("load runs");
    let summary = report.table();
    assert_eq!(report.turns_ok, 4, "{summary}");
    assert_eq!(report.errors_total, 0, "{summary}");
    assert_eq!(
        report.connects, 1,
        "reopening is the transport's business: {summary}"
    );
    assert_eq!(report.ttft_us.count, 4, "{summary}");
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "one connection per request"
    );
}
