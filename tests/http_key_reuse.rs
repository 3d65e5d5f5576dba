//! A kept-alive HTTP connection reuses the identity its client key was accepted with while the
//! same bytes come under the same key table: a reload that revokes or moves the key is seen at
//! the connection's next request, another key is checked afresh, and a WebSocket upgrade on the
//! same connection is checked as always.

mod common;

use std::net::SocketAddr;

use common::*;

/// The second key, in a group without accounts: a request under it is accepted and then
/// answered with an error, which tells its identity from the test key's.
const OTHER_KEY: &str = "sk-gw-other";
/// Both keys, each in its group.
const BOTH: [(&str, &str); 2] = [(CLIENT_KEY, "default"), (OTHER_KEY, "empty")];

/// A config with one account and `keys` (key, group), each key's id its key.
fn config(url: &str, keys: &[(&str, &str)]) -> shardgate::config::Config {
    let mut text =
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\ndrain_timeout_secs = 5\n".to_string();
    for (key, group) in keys {
        text.push_str(&format!(
            "[[client_keys]]\nkey = \"{key}\"\nid = \"{key}\"\ngroup = \"{group}\"\n"
        ));
    }
    text.push_str(&format!(
        "[[accounts]]\nid = \"acct-0\"\nbase_url = \"{url}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 8\n"
    ));
    parse_config(&text)
}

/// `POST /v1/responses` under `key` on `conn`.
fn post_as(conn: &mut HttpConn, key: &str) -> HttpReply {
    let body = post_body("gpt-5", "hi", false);
    let raw = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.raw(raw.as_bytes())
}

fn open(addr: SocketAddr) -> HttpConn {
    HttpConn::open(addr)
}

#[test]
fn a_key_revoked_by_a_reload_is_refused_on_a_connection_that_used_it() {
    let up = mock();
    let url = up.base_url();
    let gw = gateway(config(&url, &BOTH));
    let mut conn = open(gw.addr());
    for _ in 0..3 {
        let r = post_as(&mut conn, CLIENT_KEY);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    gw.reload(&config(&url, &[(OTHER_KEY, "default")]))
        .expect("reload applies");
    let r = post_as(&mut conn, CLIENT_KEY);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("invalid_api_key"), "{}", r.body);
    let r = post_as(&mut open(gw.addr()), OTHER_KEY);
    assert_ne!(
        r.status, 401,
        "the key the reload put in is accepted: {}",
        r.body
    );
    up.stop();
}

#[test]
fn a_key_moved_by_a_reload_gives_its_new_identity_on_a_kept_connection() {
    let up = mock();
    let url = up.base_url();
    let gw = gateway(config(&url, &[(CLIENT_KEY, "default")]));
    let mut conn = open(gw.addr());
    assert_eq!(post_as(&mut conn, CLIENT_KEY).status, 200);
    gw.reload(&config(&url, &[(CLIENT_KEY, "empty")]))
        .expect("reload applies");
    let r = post_as(&mut conn, CLIENT_KEY);
    assert!(
        r.status != 200 && r.status != 401,
        "accepted, in the group without accounts: {} {}",
        r.status,
        r.body
    );
    up.stop();
}

#[test]
fn another_key_on_the_same_connection_is_checked_afresh() {
    let up = mock();
    let gw = gateway(config(&up.base_url(), &BOTH));
    let mut conn = open(gw.addr());
    assert_eq!(post_as(&mut conn, CLIENT_KEY).status, 200);
    let r = post_as(&mut conn, OTHER_KEY);
    assert!(
        r.status != 200 && r.status != 401,
        "the other key's identity, not the kept one's: {} {}",
        r.status,
        r.body
    );
    let mut conn = open(gw.addr());
    assert_eq!(post_as(&mut conn, CLIENT_KEY).status, 200);
    for wrong in ["sk-gw-tes", "sk-gw-testx", "sk-gw-tesT"] {
        let mut conn = open(gw.addr());
        assert_eq!(post_as(&mut conn, CLIENT_KEY).status, 200);
        let r = post_as(&mut conn, wrong);
        assert_eq!(r.status, 401, "{wrong}: {}", r.body);
    }
    up.stop();
}

#[test]
fn a_websocket_upgrade_after_posts_checks_its_own_key() {
    let up = mock();
    let gw = gateway(config(&up.base_url(), &[(CLIENT_KEY, "default")]));
    let mut conn = open(gw.addr());
    assert_eq!(post_as(&mut conn, CLIENT_KEY).status, 200);
    let r = conn.raw(
        b"GET /v1/responses HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          authorization: Bearer sk-gw-tesT\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    up.stop();
}
