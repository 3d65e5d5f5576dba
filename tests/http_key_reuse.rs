//! A kept-alive HTTP connection reuses the identity its client key was accepted with while the
//! same bytes come under the same key table: a reload that revokes or moves the key is seen at
//! the connection's next request, another key is checked afresh, and a WebSocket upgrade on the
//! same connection is checked as always.

mod common;

use common::*;
use shardgate::gateway::Gateway;
use shardgate::mock::MockHandle;

/// A second client key.
const OTHER_KEY: &str = "sk-gw-other";

/// Two mock upstreams: account `acct-0` on `a` serves group `default`, `acct-1` on `b` group
/// `other`, so which one a turn reached tells the identity it ran under.
struct Ups {
    a: MockHandle,
    b: MockHandle,
}

impl Ups {
    fn start() -> Ups {
        Ups {
            a: mock(),
            b: mock(),
        }
    }

    /// A config with both accounts and `keys` (key, group), each key's id its key.
    fn config(&self, keys: &[(&str, &str)]) -> shardgate::config::Config {
        let mut text =
            "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\ndrain_timeout_secs = 5\n".to_string();
        for (key, group) in keys {
            text.push_str(&format!(
                "[[client_keys]]\nkey = \"{key}\"\nid = \"{key}\"\ngroup = \"{group}\"\n"
            ));
        }
        for (i, (up, group)) in [(&self.a, "default"), (&self.b, "other")]
            .iter()
            .enumerate()
        {
            text.push_str(&format!(
                "[[accounts]]\nid = \"acct-{i}\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\ngroup = \"{group}\"\nmax_conns = 8\n",
                up.base_url()
            ));
        }
        parse_config(&text)
    }

    /// Turns each upstream has served.
    fn turns(&self) -> (u64, u64) {
        (self.a.stats().ws_turns_total, self.b.stats().ws_turns_total)
    }

    fn stop(self) {
        self.a.stop();
        self.b.stop();
    }
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

/// A gateway over `ups` with `keys`, and a connection that has carried one `POST` under the
/// test key.
fn after_one_post(ups: &Ups, keys: &[(&str, &str)]) -> (Gateway, HttpConn) {
    let gw = gateway(ups.config(keys));
    let mut conn = HttpConn::open(gw.addr());
    let r = post_as(&mut conn, CLIENT_KEY);
    assert_eq!(r.status, 200, "{}", r.body);
    (gw, conn)
}

#[test]
fn a_key_revoked_by_a_reload_is_refused_on_a_connection_that_used_it() {
    let ups = Ups::start();
    let (gw, mut conn) = after_one_post(&ups, &[(CLIENT_KEY, "default"), (OTHER_KEY, "default")]);
    for _ in 0..2 {
        let r = post_as(&mut conn, CLIENT_KEY);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    gw.reload(&ups.config(&[(OTHER_KEY, "default")]))
        .expect("reload applies");
    let r = post_as(&mut conn, CLIENT_KEY);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("invalid_api_key"), "{}", r.body);
    let r = post_as(&mut HttpConn::open(gw.addr()), OTHER_KEY);
    assert_eq!(r.status, 200, "the key left in is accepted: {}", r.body);
    assert_eq!(ups.turns(), (4, 0));
    ups.stop();
}

#[test]
fn a_key_moved_by_a_reload_gives_its_new_identity_on_a_kept_connection() {
    let ups = Ups::start();
    let (gw, mut conn) = after_one_post(&ups, &[(CLIENT_KEY, "default")]);
    assert_eq!(ups.turns(), (1, 0));
    gw.reload(&ups.config(&[(CLIENT_KEY, "other")]))
        .expect("reload applies");
    let r = post_as(&mut conn, CLIENT_KEY);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ups.turns(), (1, 1), "the turn ran in the key's new group");
    ups.stop();
}

#[test]
fn another_key_on_the_same_connection_is_checked_afresh() {
    let ups = Ups::start();
    let (gw, mut conn) = after_one_post(&ups, &[(CLIENT_KEY, "default"), (OTHER_KEY, "other")]);
    assert_eq!(post_as(&mut conn, OTHER_KEY).status, 200);
    assert_eq!(post_as(&mut conn, CLIENT_KEY).status, 200);
    assert_eq!(
        ups.turns(),
        (2, 1),
        "each request ran under its own key's identity"
    );
    for wrong in ["sk-gw-tes", "sk-gw-testx", "sk-gw-tesT", ""] {
        let mut conn = HttpConn::open(gw.addr());
        assert_eq!(post_as(&mut conn, CLIENT_KEY).status, 200);
        let r = post_as(&mut conn, wrong);
        assert_eq!(r.status, 401, "{wrong:?}: {}", r.body);
    }
    ups.stop();
}

#[test]
fn a_websocket_upgrade_after_posts_checks_its_own_key() {
    let ups = Ups::start();
    let (_gw, mut conn) = after_one_post(&ups, &[(CLIENT_KEY, "default")]);
    let r = conn.raw(
        b"GET /v1/responses HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          authorization: Bearer sk-gw-tesT\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    ups.stop();
}
