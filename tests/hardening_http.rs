//! Hostile HTTP framing on the client listener (issue 10, items 2 and 3): ambiguous or unsupported
//! body framing is refused with one answer and a closed connection, so bytes behind it are never
//! read as a next request; HTTP/1.0 clients get answers they can read; counters and a log line
//! name each refusal without echoing header values.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use sonic_rs::JsonValueTrait;

/// Writes `raw` in one go and reads until the gateway closes: the text, and whether it closed
/// (rather than the read timing out on a connection left open).
fn exchange(addr: SocketAddr, raw: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(raw).expect("write");
    let mut out = Vec::new();
    let closed = s.read_to_end(&mut out).is_ok();
    (String::from_utf8_lossy(&out).to_string(), closed)
}

fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A complete, valid request: what a smuggler hides behind a first one.
fn smuggled() -> String {
    let body = post_body("gpt-5", "smuggled", false);
    format!(
        "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `http_refused{reason}` summed over shards, once the stats tick shipped at least `want`.
fn refused(admin: SocketAddr, reason: &str, want: u64) -> u64 {
    let needle = format!("label=\"{reason}\"}}");
    let count = || -> u64 {
        admin_body(admin, "/metrics")
            .lines()
            .filter(|l| l.starts_with("shardgate_http_refused_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    poll_until(Duration::from_secs(20), || count() >= want);
    count()
}

#[test]
fn ambiguous_framing_is_refused_and_the_smuggled_request_never_runs() {
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        "admin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 50\n",
    ));
    let json = post_body("gpt-5", "first", false);
    let chunked = format!("{:x}\r\n{json}\r\n0\r\n\r\n", json.len());
    let post = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\n"
    );
    let n = json.len();
    let cases: Vec<(&str, u16, String)> = vec![
        (
            "length_and_transfer_encoding",
            400,
            format!("{post}content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{chunked}"),
        ),
        (
            "length_and_transfer_encoding",
            400,
            format!("{post}transfer-encoding: chunked\r\ncontent-length: {n}\r\n\r\n{chunked}"),
        ),
        (
            "repeated_length",
            400,
            format!(
                "{post}content-length: {n}\r\ncontent-length: {}\r\n\r\n{json}",
                n + smuggled().len()
            ),
        ),
        ("bad_length", 400, format!("{post}content-length: +{n}\r\n\r\n{json}")),
        ("bad_length", 400, format!("{post}content-length: {n}, {n}\r\n\r\n{json}")),
        ("not_chunked", 400, format!("{post}transfer-encoding: gzip\r\n\r\n{json}")),
        (
            "not_chunked",
            400,
            format!("{post}transfer-encoding: chunked, gzip\r\n\r\n{chunked}"),
        ),
        (
            "not_chunked",
            400,
            format!("{post}transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n{chunked}"),
        ),
        (
            "unknown_coding",
            501,
            format!("{post}transfer-encoding: gzip, chunked\r\n\r\n{chunked}"),
        ),
        (
            "transfer_encoding_http10",
            400,
            format!(
                "POST /v1/responses HTTP/1.0\r\nconnection: keep-alive\r\nauthorization: Bearer {CLIENT_KEY}\r\ntransfer-encoding: chunked\r\n\r\n{chunked}"
            ),
        ),
        (
            "bare_lf",
            400,
            format!(
                "POST /v1/responses HTTP/1.1\nhost: gw\nauthorization: Bearer {CLIENT_KEY}\ncontent-length: {n}\n\n{json}"
            ),
        ),
        (
            "malformed",
            400,
            format!("{post}x-folded: a\r\n b\r\ncontent-length: {n}\r\n\r\n{json}"),
        ),
        (
            "too_many_headers",
            431,
            format!("{post}{}content-length: {n}\r\n\r\n{json}", "x-h: 1\r\n".repeat(100)),
        ),
        (
            "host",
            400,
            format!(
                "POST /v1/responses HTTP/1.1\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: {n}\r\n\r\n{json}"
            ),
        ),
        (
            "host",
            400,
            format!("{post}host: other\r\ncontent-length: {n}\r\n\r\n{json}"),
        ),
        (
            "upgrade_with_body",
            400,
            format!(
                "GET /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
    ];
    let mut want = std::collections::BTreeMap::<&str, u64>::new();
    for (reason, status, first) in &cases {
        let (text, closed) = exchange(gw.addr(), format!("{first}{}", smuggled()).as_bytes());
        assert_eq!(status_of(&text), *status, "{reason}: {text}");
        assert!(closed, "{reason}: the connection stays open");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{reason}: {text}");
        assert!(!text.contains(CLIENT_KEY), "{reason}: {text}");
        *want.entry(reason).or_default() += 1;
    }
    let stats = up.stats();
    assert_eq!(
        stats.ws_turns_total + stats.http_requests_total,
        0,
        "a smuggled request reached upstream"
    );
    let admin = gw.admin_addr().expect("admin listener");
    for (reason, n) in want {
        assert_eq!(refused(admin, reason, n), n, "http_refused{{{reason}}}");
    }
    // Still serving, on a fresh connection.
    let mut c = HttpConn::open(gw.addr());
    assert_eq!(c.post("/v1/responses", &json).status, 200);
    assert_eq!(up.stats().ws_turns_total, 1);
}

#[test]
fn bad_chunk_lines_are_refused() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let json = post_body("gpt-5", "first", false);
    let head = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    // An empty chunk size (read as a last chunk by a lenient parser) and a bare LF inside a
    // chunk extension, each followed by the rest of a body and a smuggled request.
    for body in [
        format!("\r\n{:x}\r\n{json}\r\n0\r\n\r\n", json.len()),
        format!("{:x};a\nb\r\n{json}\r\n0\r\n\r\n", json.len()),
    ] {
        let (text, closed) = exchange(gw.addr(), format!("{head}{body}{}", smuggled()).as_bytes());
        assert_eq!(status_of(&text), 400, "{text}");
        assert!(closed);
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    }
    let stats = up.stats();
    assert_eq!(stats.ws_turns_total + stats.http_requests_total, 0);
}

fn http10_post(body: &str, extra: &str) -> String {
    format!(
        "POST /v1/responses HTTP/1.0\r\nauthorization: Bearer {CLIENT_KEY}\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn http10_streaming_post_gets_a_close_delimited_stream() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let body = post_body("gpt-5", "hello", true);
    // With or without keep-alive: a stream has no length, so it ends with the connection.
    for extra in ["", "connection: keep-alive\r\n"] {
        let (text, closed) = exchange(gw.addr(), http10_post(&body, extra).as_bytes());
        assert!(closed, "the stream ends with the connection");
        let (head, rest) = text.split_once("\r\n\r\n").expect("a head");
        let head = head.to_ascii_lowercase();
        assert_eq!(status_of(&head), 200, "{text}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        // Raw SSE records, no chunk-size lines between them.
        assert!(rest.starts_with("event: response.created\n"), "{rest}");
        assert!(rest.contains("event: response.completed\n"), "{rest}");
        assert!(rest.ends_with("\n\n"), "{rest:?}");
    }
    assert_eq!(up.stats().ws_turns_total, 2);
}

#[test]
fn http10_keep_alive_holds_only_for_length_delimited_answers() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let body = post_body("gpt-5", "hello", false);
    let mut c = HttpConn::open(gw.addr());
    for _ in 0..2 {
        let r = c.raw(
            http10_post(&body, "connection: keep-alive\r\nexpect: 100-continue\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert!(r.header("content-length").is_some());
        assert_eq!(r.json()["status"].as_str(), Some("completed"));
    }
    // Without keep-alive, HTTP/1.0 closes after the answer.
    let (text, closed) = exchange(gw.addr(), http10_post(&body, "").as_bytes());
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"));
    assert!(closed);
}

#[test]
fn websocket_upgrade_over_http10_is_refused() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    let raw = format!(
        "GET /v1/responses HTTP/1.0\r\nauthorization: Bearer {CLIENT_KEY}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let (text, closed) = exchange(gw.addr(), raw.as_bytes());
    assert_eq!(status_of(&text), 400, "{text}");
    assert!(text.contains("HTTP/1.1"), "{text}");
    assert!(closed);
    // HTTP/1.1 upgrades still work.
    let mut client = connect(gw.addr());
    let turn = client.turn(&create("gpt-5", "hi", true, None));
    assert_eq!(turn.last_type(), "response.completed");
}

#[test]
fn the_binary_logs_a_refusal_by_reason_without_header_values() {
    let up = mock();
    let log = scratch_file("gateway.log");
    let config = scratch_file("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\ndrain_timeout_secs = 2\n\
             [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n\
             [[accounts]]\nid = \"acct-0\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\n\
             [usage]\npath = \"{}\"\n",
            up.base_url(),
            scratch_file("usage.jsonl").display()
        ),
    )
    .unwrap();
    let mut served = start_binary_logging(
        &["serve".as_ref(), "--config".as_ref(), config.as_os_str()],
        &[],
        Some(&log),
    );
    let raw = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{}",
        smuggled()
    );
    let (text, closed) = exchange(served.addr, raw.as_bytes());
    assert_eq!(status_of(&text), 400, "{text}");
    assert!(closed);
    served.terminate();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("refused an HTTP request")
                && l.contains("length_and_transfer_encoding")),
        "{logged}"
    );
    assert!(!logged.contains(CLIENT_KEY), "{logged}");
    assert_eq!(
        up.stats().ws_turns_total + up.stats().http_requests_total,
        0
    );
}

#[test]
fn a_refusal_ends_cleanly_for_a_client_still_sending_its_body() {
    let up = mock();
    let gw = gateway(config_for(&[up.base_url()], ""));
    // The refusal comes while the client is still sending a large body. Closing with unread
    // bytes would reset the connection: the client's send fails and its read ends in a reset
    // (and over a real network the reset can overtake the answer). The gateway half-closes and
    // drains instead, so the client sends everything and reads the answer up to a clean end.
    let head = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(head.as_bytes()).unwrap();
        let mut writer = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            (0..3).all(|_| writer.write_all(&chunk).is_ok())
        });
        let mut out = Vec::new();
        let read = s.read_to_end(&mut out);
        let sent_all = sender.join().unwrap();
        let text = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&text), 400, "{text}");
        assert!(read.is_ok(), "the connection was reset: {read:?}");
        assert!(sent_all, "the client could not send its body");
    }
}
