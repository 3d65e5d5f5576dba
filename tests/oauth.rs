//! ChatGPT/Codex OAuth accounts end to end: the gateway (in process or the real binary) against
//! the mock acting as the ChatGPT backend and its OAuth token endpoint, over loopback.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use shardgate::mock::{MockConfig, MockHandle, MockOAuth};

const ACCOUNT_ID: &str = "chatgpt-acct-42";
const SEED_REFRESH: &str = "rt-seed-0123456789";
const WAIT: Duration = Duration::from_secs(30);

fn oauth_mock(lifetime: Duration) -> MockHandle {
    shardgate::mock::start(MockConfig {
        oauth: Some(MockOAuth {
            account_id: ACCOUNT_ID.into(),
            refresh_token: SEED_REFRESH.into(),
            access_token: None,
            lifetime,
        }),
        ..MockConfig::default()
    })
    .expect("mock starts")
}

/// `[server]` lines, then one OAuth account on `mock` (plus `account_extra` lines), then
/// `rest` (more accounts).
fn oauth_config(
    mock: &MockHandle,
    server: &str,
    account_extra: &str,
    state: &str,
    rest: &str,
) -> String {
    let addr = mock.addr();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\ndrain_timeout_secs = 5\nadmin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 50\n{server}\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n\
         [[accounts]]\nid = \"codex\"\nauth = \"chatgpt_oauth\"\nbase_url = \"http://{addr}/backend-api/codex\"\nmax_conns = 8\n{account_extra}\n\
         [accounts.oauth]\nrefresh_token = \"{SEED_REFRESH}\"\nchatgpt_account_id = \"{ACCOUNT_ID}\"\n\
         token_url = \"http://{addr}/oauth/token\"\nstate_file = \"{state}\"\n{rest}\n\
         [usage]\npath = \"{usage}\"\n",
        usage = scratch_file("usage.jsonl").display()
    )
}

fn state_path() -> String {
    scratch_file("codex.oauth.json").display().to_string()
}

fn control_counter(admin: SocketAddr, name: &str) -> u64 {
    let prefix = format!("shardgate_{name}_total ");
    admin_body(admin, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

fn ws_turn_completes(addr: SocketAddr, store: bool) -> Client {
    let mut client = connect(addr);
    let turn = client.turn(&create("gpt-5", "hello", store, None));
    assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
    client
}

fn post_completes(addr: SocketAddr) {
    let reply = HttpConn::open(addr).post("/v1/responses", &post_body("gpt-5", "hi", false));
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn turns_carry_the_account_id_the_token_and_the_codex_path() {
    let mock = oauth_mock(Duration::from_secs(3600));
    let state = state_path();
    let text = oauth_config(&mock, "", "", &state, "");
    let gw = gateway(parse_config(&text));
    ws_turn_completes(gw.addr(), true);
    post_completes(gw.addr());
    let stats = mock.stats();
    assert_eq!(
        stats.oauth_refreshes, 1,
        "one refresh at start (no access token configured)"
    );
    assert_eq!(stats.oauth_rejections, 0);
    let headers = &stats.last_handshake_headers;
    assert_eq!(
        headers.get("chatgpt-account-id").map(String::as_str),
        Some(ACCOUNT_ID)
    );
    assert_eq!(
        headers.get("originator").map(String::as_str),
        Some("codex-tui")
    );
    assert!(
        headers["authorization"].starts_with("Bearer mock-at-1-"),
        "{headers:?}"
    );
    let paths: Vec<_> = stats.paths_seen.iter().map(String::as_str).collect();
    assert_eq!(paths, ["/backend-api/codex/responses"]);

    // Over HTTP too: the same headers and path on every request. This gateway starts from the
    // first one's state file (the seed refresh token is spent).
    let http_gw = gateway(parse_config(&oauth_config(
        &mock,
        "",
        "transport = \"http\"",
        &state,
        "",
    )));
    post_completes(http_gw.addr());
    let stats = mock.stats();
    assert_eq!(stats.http_requests_total, 1);
    assert_eq!(stats.oauth_rejections, 0);
    let paths: Vec<_> = stats.paths_seen.iter().map(String::as_str).collect();
    assert_eq!(paths, ["/backend-api/codex/responses"]);

    // Tokens never reach stats.
    let admin = gw.admin_addr().expect("admin listener");
    let metrics = admin_body(admin, "/metrics");
    assert!(
        !metrics.contains("mock-at-")
            && !metrics.contains("mock-rt-")
            && !metrics.contains(SEED_REFRESH)
    );
    eventually("the refresh is counted", WAIT, || {
        labeled_total(admin, "oauth_refreshes", "codex") == 1
    });
}

#[test]
fn tokens_are_refreshed_ahead_of_expiry_while_sessions_go_on() {
    // Access tokens live 4 s: refreshed after 2 s, so a shard that kept the first token past
    // 4 s would be refused. Over HTTP every request shows the mock the token in force.
    let mock = oauth_mock(Duration::from_secs(4));
    let text = oauth_config(&mock, "", "transport = \"http\"", &state_path(), "");
    let gw = gateway(parse_config(&text));
    let mut session = connect(gw.addr());
    let mut turns = 0;
    let started = std::time::Instant::now();
    while mock.stats().oauth_refreshes < 4 {
        assert!(
            started.elapsed() < WAIT,
            "refreshes: {}",
            mock.stats().oauth_refreshes
        );
        let turn = session.turn(&create("gpt-5", "hello", true, None));
        assert_eq!(
            turn.last_type(),
            "response.completed",
            "turn {turns}: {:?}",
            turn.types()
        );
        post_completes(gw.addr());
        turns += 1;
    }
    let stats = mock.stats();
    assert_eq!(
        stats.oauth_rejections, 0,
        "no request went out with an expired token"
    );
    assert_eq!(stats.oauth_refresh_failures, 0);
    assert!(
        stats.authorizations_seen.len() >= 3,
        "{:?}",
        stats.authorizations_seen.len()
    );
    assert!(turns > 4, "{turns}");
}

#[test]
fn an_upstream_401_asks_one_refresh_and_the_turn_succeeds_on_the_new_token() {
    let mock = oauth_mock(Duration::from_secs(3600));
    let state = state_path();
    let text = oauth_config(&mock, "", "", &state, "");
    let gw = gateway(parse_config(&text));
    // A store=false session holds its upstream connection, so the next session must dial.
    let _holder = ws_turn_completes(gw.addr(), false);
    assert_eq!(mock.stats().oauth_refreshes, 1);
    mock.oauth_revoke_access_tokens();
    let mut second = connect(gw.addr());
    let turn = second.turn(&create("gpt-5", "hello", false, None));
    assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
    let stats = mock.stats();
    assert_eq!(
        stats.handshakes.get(&401),
        Some(&1),
        "{:?}",
        stats.handshakes
    );
    assert_eq!(stats.oauth_refreshes, 2, "exactly one refresh for the 401");
    let admin = gw.admin_addr().expect("admin listener");
    eventually("the 401 retry is counted", WAIT, || {
        labeled_total(admin, "oauth_unauthorized", "retried") == 1
    });

    // Over HTTP (a gateway started from the first one's state file, the seed token being
    // spent): the request is refused, refreshed once, and sent again.
    let http_gw = gateway(parse_config(&oauth_config(
        &mock,
        "",
        "transport = \"http\"",
        &state,
        "",
    )));
    mock.oauth_revoke_access_tokens();
    post_completes(http_gw.addr());
    let stats = mock.stats();
    assert_eq!(stats.oauth_refreshes, 3, "exactly one refresh for the 401");
    assert_eq!(stats.oauth_refresh_failures, 0);
    assert_eq!(stats.auth_failures, 2, "the WebSocket and the HTTP 401");
}

#[test]
fn a_failed_refresh_takes_the_account_out_of_rotation_until_one_succeeds() {
    let mock = oauth_mock(Duration::from_secs(3600));
    let plain = common::mock();
    let log = scratch_file("gateway.log");
    let other = format!(
        "[[accounts]]\nid = \"plain\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 8\n",
        plain.base_url()
    );
    let text = oauth_config(&mock, "", "transport = \"http\"", &state_path(), &other);
    let mut served = serve_binary_logging(&text, Some(&log));
    eventually("the start refresh", WAIT, || {
        mock.stats().oauth_refreshes == 1
    });
    // The token endpoint now refuses, and upstream refuses the token in force.
    mock.oauth_fail_refreshes(u32::MAX);
    mock.oauth_revoke_access_tokens();
    let addr = served.addr;
    eventually("a turn met the 401 and the refresh failed", WAIT, || {
        post_completes(addr);
        mock.stats().oauth_refresh_failures >= 1
    });
    eventually("the failure is logged", WAIT, || {
        lines_containing(&log, "oauth refresh failed: account out of rotation") >= 1
    });
    // Out of rotation: every turn now goes to the other account, none fails.
    let before = mock.stats().http_requests_total;
    for _ in 0..6 {
        post_completes(addr);
    }
    assert_eq!(
        mock.stats().http_requests_total,
        before,
        "the failed account got traffic"
    );
    // The refresher keeps trying with backoff; once the endpoint answers, the account is back.
    mock.oauth_fail_refreshes(0);
    eventually("a later refresh succeeds", WAIT, || {
        lines_containing(&log, "oauth token refreshed") >= 2
    });
    eventually("the account takes turns again", WAIT, || {
        post_completes(addr);
        mock.stats().http_requests_total > before
    });
    served.terminate();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log_text.contains("mock-at-")
            && !log_text.contains("mock-rt-")
            && !log_text.contains(SEED_REFRESH),
        "a token reached the log"
    );
}

#[test]
fn a_failed_refresh_is_counted_in_metrics() {
    let mock = oauth_mock(Duration::from_secs(3600));
    mock.oauth_fail_refreshes(u32::MAX);
    let text = oauth_config(&mock, "", "", &state_path(), "");
    let gw = gateway(parse_config(&text));
    let admin = gw.admin_addr().expect("admin listener");
    eventually("the account is counted as failed", WAIT, || {
        control_counter(admin, "oauth_accounts_failed") == 1
            && labeled_total(admin, "oauth_refresh_failures", "codex") >= 1
    });
    let mut client = connect(gw.addr());
    let turn = client.turn(&create("gpt-5", "hello", true, None));
    assert_eq!(
        turn.error_code().as_deref(),
        Some("no_available_account"),
        "{:?}",
        turn.types()
    );
    assert_eq!(
        mock.stats().ws_connections_total,
        0,
        "the failed account was dialed"
    );
}

#[test]
fn the_rotated_refresh_token_survives_a_restart() {
    let mock = oauth_mock(Duration::from_secs(3600));
    let log = scratch_file("gateway.log");
    // A relative state file lives next to the config file.
    let text = oauth_config(&mock, "", "", "codex.oauth.json", "");
    let mut served = serve_binary_logging(&text, Some(&log));
    let state = served.config_path.with_file_name("codex.oauth.json");
    ws_turn_completes(served.addr, true);
    assert_eq!(mock.stats().oauth_refreshes, 1);
    served.terminate();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state)
        .expect("state file written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The seed token in the config is spent; the access token too (revoked), so the restarted
    // gateway must refresh with the rotated token it kept.
    mock.oauth_revoke_access_tokens();
    let mut again = common::start_binary_logging(
        &[
            "serve".as_ref(),
            "--config".as_ref(),
            served.config_path.as_os_str(),
        ],
        &[],
        Some(&log),
    );
    ws_turn_completes(again.addr, true);
    let stats = mock.stats();
    assert_eq!(
        stats.oauth_refresh_failures, 0,
        "the spent seed token was used"
    );
    assert_eq!(stats.oauth_refreshes, 2);
    again.terminate();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("tokens_from=\"state file\"") || log_text.contains("state file"),
        "{log_text}"
    );
    assert!(
        !log_text.contains("mock-rt-") && !log_text.contains("mock-at-"),
        "a token reached the log"
    );
}

#[test]
fn a_second_401_is_reported_once_with_the_token_redacted() {
    // A wrong account id: upstream refuses every token, so the refreshed one is refused too.
    let mock = oauth_mock(Duration::from_secs(3600));
    let text = oauth_config(&mock, "", "transport = \"http\"", &state_path(), "").replace(
        &format!("chatgpt_account_id = \"{ACCOUNT_ID}\""),
        "chatgpt_account_id = \"someone-else\"",
    );
    let gw = gateway(parse_config(&text));
    let reply = HttpConn::open(gw.addr()).post("/v1/responses", &post_body("gpt-5", "hi", false));
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(reply.body.contains("[redacted]"), "{}", reply.body);
    assert!(
        !reply.body.contains("mock-a"),
        "the token's masked form reached the client: {}",
        reply.body
    );
    let stats = mock.stats();
    assert_eq!(
        stats.oauth_refreshes, 2,
        "the start refresh and one for the 401, no more"
    );
    assert_eq!(
        stats.http_requests_total, 2,
        "the request and its one retry"
    );
}

/// A minimal HTTP CONNECT proxy on 127.0.0.1 that records the first line sent through each
/// tunnel (the mock speaks plain HTTP, so the proxy sees the requests). Its threads end with
/// their connections; the listener thread ends with the test process.
fn connect_proxy() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let record = record.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let target = line.split_whitespace().nth(1).unwrap().to_string();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                        break;
                    }
                }
                let upstream = std::net::TcpStream::connect(&target).unwrap();
                (&client)
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                record.lock().unwrap().push(first.trim().to_string());
                (&upstream).write_all(first.as_bytes()).unwrap();
                let mut down = upstream.try_clone().unwrap();
                let mut up = client.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut down, &mut up);
                    let _ = up.shutdown(std::net::Shutdown::Write);
                });
                let mut upstream = upstream;
                let _ = std::io::copy(&mut reader, &mut upstream);
                let _ = upstream.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, seen)
}

#[test]
fn token_refreshes_go_through_the_accounts_egress_proxy() {
    let mock = oauth_mock(Duration::from_secs(3600));
    let (proxy, seen) = connect_proxy();
    let text = oauth_config(
        &mock,
        "",
        &format!("proxy = \"http://{proxy}\""),
        &state_path(),
        "",
    );
    let gw = gateway(parse_config(&text));
    ws_turn_completes(gw.addr(), true);
    let lines = seen.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.starts_with("POST /oauth/token ")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("GET /backend-api/codex/responses ")),
        "{lines:?}"
    );
}
