//! Hostile input against the real binary: JSON that nests deep enough to overflow a parser's
//! stack, and upstream errors that quote the account key. Each case gets a clear answer, and the
//! gateway goes on serving its other clients.

mod common;

use common::*;
use shardgate::mock::{MockConfig, Script};
use sonic_rs::JsonValueTrait;

/// A `response.create` whose `metadata` nests `levels` arrays (about 2 bytes a level).
fn nested_create(levels: usize) -> String {
    format!(
        r#"{{"type":"response.create","model":"gpt-5","input":"hi","metadata":{{"deep":{}1{}}}}}"#,
        "[".repeat(levels),
        "]".repeat(levels)
    )
}

fn gateway_text(base_url: &str, api_key: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\ndrain_timeout_secs = 2\n\
         [upstream]\nretry_base_ms = 1\nretry_cap_ms = 5\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"client-1\"\n\
         [[accounts]]\nid = \"acct-a\"\nbase_url = \"{base_url}\"\napi_key = \"{api_key}\"\n\
         [usage]\npath = \"{}\"\n",
        scratch_file("usage.jsonl").display()
    )
}

#[test]
fn json_nested_past_the_limit_is_refused_and_the_gateway_keeps_serving() {
    let upstream = mock();
    let served = serve_binary(&gateway_text(&upstream.base_url(), ACCOUNT_KEY));
    let deep = nested_create(20_000);

    // Over WebSocket: an error event that names the parameter; the session goes on.
    let mut client = connect(served.addr);
    let turn = client.turn(&deep);
    assert_eq!(
        turn.error_code().as_deref(),
        Some("json_too_deep"),
        "{turn:?}"
    );
    let err = &turn.events[0]["error"];
    assert_eq!(err["type"].as_str(), Some("invalid_request_error"));
    assert_eq!(err["param"].as_str(), Some("metadata"));
    assert_eq!(
        client
            .turn(&create("gpt-5", "after", true, None))
            .last_type(),
        "response.completed"
    );

    // Over POST: a 400 with the same error, and the connection serves the next request.
    let mut h = HttpConn::open(served.addr);
    let body = deep.replacen(r#""type":"response.create","#, "", 1);
    let reply = h.post("/v1/responses", &body);
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        reply.json()["error"]["code"].as_str(),
        Some("json_too_deep")
    );
    assert_eq!(reply.json()["error"]["param"].as_str(), Some("metadata"));
    assert_eq!(
        h.post("/v1/responses", &post_body("gpt-5", "ok", false))
            .status,
        200
    );

    // A fresh client still gets through, and upstream never saw the deep frame.
    let mut other = connect(served.addr);
    assert_eq!(
        other
            .turn(&create("gpt-5", "other", true, None))
            .last_type(),
        "response.completed"
    );
    assert_eq!(upstream.stats().invalid_requests_total, 0);
}

/// An upstream that refuses the account key quotes it back, masked, as OpenAI does. Neither the
/// key nor its masked form may reach the tenant, over WebSocket or POST.
#[test]
fn an_upstream_error_quoting_the_account_key_reaches_the_client_redacted() {
    let account_key = "acct-secret-0123456789abcdef";
    let upstream = shardgate::mock::start(MockConfig {
        require_key: Some("another-key-entirely".into()),
        ..MockConfig::default()
    })
    .expect("mock starts");
    upstream.script(Script::default());
    let served = serve_binary(&gateway_text(&upstream.base_url(), account_key));
    let leaks = |seen: &str| {
        seen.contains(account_key)
            || seen.contains("acct-s*")
            || seen.contains("*cdef")
            || seen.contains("0123456789")
    };

    let mut client = connect(served.addr);
    let turn = client.turn(&create("gpt-5", "hi", true, None));
    let seen = format!("{:?}", turn.events);
    assert_eq!(turn.last_type(), "error", "{seen}");
    assert!(!leaks(&seen), "account key reached the client: {seen}");
    assert!(
        upstream.stats().auth_failures > 0,
        "upstream refused the key"
    );

    let mut h = HttpConn::open(served.addr);
    let reply = h.post("/v1/responses", &post_body("gpt-5", "hi", false));
    assert!(reply.status >= 400, "{}", reply.body);
    assert!(
        !leaks(&reply.body),
        "account key reached the client: {}",
        reply.body
    );
    let reply = h.post("/v1/responses", &post_body("gpt-5", "hi", true));
    assert!(
        !leaks(&reply.body),
        "account key reached the client: {}",
        reply.body
    );
}
