//! Secrets stay secret: the real binary at `RUST_LOG=trace`, driven through successes, upstream
//! errors, refused upgrades, HTTP fallback, bad client keys and a reload, never writes an upstream
//! key or a client key to its log, and never sends one to a client.

mod common;

use std::time::Duration;

use common::*;
use shardgate::mock::{Rule, Script};

const UPSTREAM_KEY_A: &str = "sk-upstream-secret-aaaa";
const UPSTREAM_KEY_B: &str = "sk-upstream-secret-bbbb";
const CLIENT_SECRET: &str = "sk-gw-client-secret-cccc";

fn config_text(a: &str, b: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\ndrain_timeout_secs = 2\n\
         [upstream]\nretry_base_ms = 1\nretry_cap_ms = 5\n\
         [[client_keys]]\nkey = \"{CLIENT_SECRET}\"\nid = \"client-1\"\n\
         [[accounts]]\nid = \"acct-a\"\nbase_url = \"{a}\"\napi_key = \"{UPSTREAM_KEY_A}\"\n\
         [[accounts]]\nid = \"acct-b\"\nbase_url = \"{b}\"\napi_key = \"{UPSTREAM_KEY_B}\"\n\
         [usage]\npath = \"{}\"\n",
        scratch_file("usage.jsonl").display()
    )
}

#[test]
fn no_key_reaches_the_log_or_a_client_even_at_trace_level() {
    let (a, b) = (mock(), mock());
    // Account b refuses WebSocket (HTTP fallback) and answers some requests with errors.
    b.script(Script {
        refuse_ws: Some(403),
        http: vec![Rule {
            value: 500,
            times: 2,
        }],
        ..Default::default()
    });
    a.script(Script {
        turns: vec![Rule {
            value: "error=server_error".into(),
            times: 2,
        }],
        ..Default::default()
    });
    let log = scratch_file("gateway.log");
    let config = scratch_file("gateway.toml");
    std::fs::write(&config, config_text(&a.base_url(), &b.base_url())).unwrap();
    let served = start_binary_logging(
        &["serve".as_ref(), "--config".as_ref(), config.as_os_str()],
        &[("RUST_LOG", "trace".as_ref())],
        Some(&log),
    );
    let mut seen_by_clients = String::new();
    let mut client = connect_with_key(served.addr, CLIENT_SECRET).expect("upgrade");
    for i in 0..8 {
        let t = client.turn(&create("gpt-5", &format!("turn {i}"), i % 2 == 0, None));
        seen_by_clients.push_str(&format!("{:?}", t.events));
    }
    let mut h = HttpConn::open(served.addr);
    let r = h.raw(
        format!(
            "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_SECRET}\r\ncontent-length: {len}\r\n\r\n{body}",
            body = post_body("gpt-5", "post", true),
            len = post_body("gpt-5", "post", true).len()
        )
        .as_bytes(),
    );
    seen_by_clients.push_str(&r.body);
    // A wrong key, and a key in the query string.
    let (_, text) = http(
        served.addr,
        "GET /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer sk-wrong-key-dddd\r\n\r\n",
    );
    seen_by_clients.push_str(&text);
    let (_, text) = http(
        served.addr,
        &format!("GET /v1/responses?api_key={CLIENT_SECRET} HTTP/1.1\r\nhost: gw\r\n\r\n"),
    );
    seen_by_clients.push_str(&text);
    // A reload that rotates the client key.
    std::fs::write(
        &config,
        config_text(&a.base_url(), &b.base_url()).replace(CLIENT_SECRET, "sk-gw-rotated-eeee"),
    )
    .unwrap();
    served.signal(libc::SIGHUP);
    eventually("reload applied", Duration::from_secs(20), || {
        connect_with_key(served.addr, "sk-gw-rotated-eeee").is_ok()
    });
    drop(client);
    let mut served = served;
    assert!(served.terminate().success());

    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.lines().count() > 20,
        "trace logging was on: {} lines",
        text.lines().count()
    );
    assert!(
        text.contains("acct-a") || text.contains("client-1"),
        "ids are logged"
    );
    for secret in [
        UPSTREAM_KEY_A,
        UPSTREAM_KEY_B,
        CLIENT_SECRET,
        "sk-gw-rotated-eeee",
        "sk-wrong-key-dddd",
    ] {
        assert!(!text.contains(secret), "{secret} in the log");
        assert!(
            !seen_by_clients.contains(secret),
            "{secret} sent to a client"
        );
    }
    assert!(
        a.stats().ws_turns_total > 0 && b.stats().http_requests_total > 0,
        "both accounts served"
    );
}
