//! Config reload (SIGHUP) of the real binary: the transport rollback switches move a running
//! session's turns between WebSocket and HTTP upstream without dropping it, and a config the
//! gateway cannot apply leaves the running one in place.

mod common;

use std::time::Duration;

use common::*;
use shardgate::mock::MockHandle;

fn config_text(base_url: &str, force_http: bool, transport: &str, accounts: &[&str]) -> String {
    keyed_config_text(base_url, force_http, transport, accounts, &[CLIENT_KEY])
}

fn keyed_config_text(
    base_url: &str,
    force_http: bool,
    transport: &str,
    accounts: &[&str],
    keys: &[&str],
) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\ndrain_timeout_secs = 2\n\
         [upstream]\nforce_http = {force_http}\n"
    );
    for key in keys {
        text.push_str(&format!(
            "[[client_keys]]\nkey = \"{key}\"\nid = \"id-{key}\"\n"
        ));
    }
    for id in accounts {
        text.push_str(&format!(
            "[[accounts]]\nid = \"{id}\"\nbase_url = \"{base_url}\"\napi_key = \"{ACCOUNT_KEY}\"\ntransport = \"{transport}\"\n"
        ));
    }
    text.push_str(&format!(
        "[usage]\npath = \"{}\"\n",
        scratch_file("usage.jsonl").display()
    ));
    text
}

/// Which upstream transport served one more turn: `true` for HTTP.
fn next_turn_went_http(client: &mut Client, up: &MockHandle) -> bool {
    let before = up.stats();
    let turn = client.turn(&create("gpt-5", "hi", true, None));
    assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
    let after = up.stats();
    let http = after.http_turns_total - before.http_turns_total;
    let ws = after.ws_turns_total - before.ws_turns_total;
    assert_eq!(http + ws, 1, "one upstream turn per client turn");
    http == 1
}

/// Rewrites the config file, sends SIGHUP and waits until a turn goes over the expected transport.
fn reload_until(served: &Served, text: &str, client: &mut Client, up: &MockHandle, http: bool) {
    std::fs::write(&served.config_path, text).expect("rewrite config");
    served.signal(libc::SIGHUP);
    eventually(
        &format!("reload switched to http={http}"),
        Duration::from_secs(20),
        || next_turn_went_http(client, up) == http,
    );
}

#[test]
fn sighup_flips_the_transport_switches_of_a_running_session() {
    let up = mock();
    let url = up.base_url();
    let log = scratch_file("gateway.log");
    let served = serve_binary_logging(&config_text(&url, false, "ws", &["a0"]), Some(&log));
    let mut client = connect(served.addr);
    assert!(
        !next_turn_went_http(&mut client, &up),
        "starts on WebSocket"
    );

    // Account transport → http: the same client session continues over HTTP upstream.
    reload_until(
        &served,
        &config_text(&url, false, "http", &["a0"]),
        &mut client,
        &up,
        true,
    );
    // Back to ws.
    reload_until(
        &served,
        &config_text(&url, false, "ws", &["a0"]),
        &mut client,
        &up,
        false,
    );
    // The global rollback switch.
    reload_until(
        &served,
        &config_text(&url, true, "ws", &["a0"]),
        &mut client,
        &up,
        true,
    );

    // A config that changes the account list is refused whole: still forced to HTTP.
    std::fs::write(
        &served.config_path,
        config_text(&url, false, "ws", &["a0", "a1"]),
    )
    .unwrap();
    served.signal(libc::SIGHUP);
    let refusals = |n: usize| {
        let log = log.clone();
        move || lines_containing(&log, "config reload refused") >= n
    };
    eventually(
        "the first reload was refused",
        Duration::from_secs(20),
        refusals(1),
    );
    // And a file that does not parse is refused too.
    std::fs::write(&served.config_path, "[server\nbroken").unwrap();
    served.signal(libc::SIGHUP);
    eventually(
        "the second reload was refused",
        Duration::from_secs(20),
        refusals(2),
    );
    for _ in 0..3 {
        assert!(
            next_turn_went_http(&mut client, &up),
            "refused reloads changed nothing"
        );
    }
    assert_eq!(
        up.stats().ws_connections_total,
        1,
        "switching back reuses the pooled WebSocket connection"
    );
    up.stop();
}

#[test]
fn sighup_replaces_client_keys_and_sessions_under_a_removed_key_end_at_their_next_turn() {
    let up = mock();
    let url = up.base_url();
    let served = serve_binary(&keyed_config_text(
        &url,
        false,
        "ws",
        &["a0"],
        &[CLIENT_KEY],
    ));
    let mut open = connect(served.addr);
    assert!(connect_with_key(served.addr, "sk-gw-added").is_err());

    std::fs::write(
        &served.config_path,
        keyed_config_text(&url, false, "ws", &["a0"], &["sk-gw-added"]),
    )
    .unwrap();
    served.signal(libc::SIGHUP);
    let mut added = None;
    eventually("the added key is accepted", Duration::from_secs(20), || {
        added = connect_with_key(served.addr, "sk-gw-added").ok();
        added.is_some()
    });
    let mut added = added.expect("accepted above");
    assert!(
        connect_with_key(served.addr, CLIENT_KEY).is_err(),
        "the removed key is refused for new connections"
    );
    let t = added.turn(&create("gpt-5", "hi", true, None));
    assert_eq!(t.last_type(), "response.completed", "{:?}", t.types());
    // The session opened under the removed key is refused at its next turn and closed.
    let t = open.turn(&create("gpt-5", "hi", true, None));
    assert_eq!(
        t.error_code().as_deref(),
        Some("invalid_api_key"),
        "{:?}",
        t.events
    );
    assert_eq!(open.expect_close(), Some(1008));
    let turns_before = up.stats().ws_turns_total;
    assert_eq!(
        turns_before, 1,
        "the revoked session's turn never went upstream"
    );
    up.stop();
}
