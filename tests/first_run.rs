//! What a new user and an operator meet first, over the real binary: one gateway per address,
//! readable start-up errors, a quiet plain log, positions in the client's own JSON, the model
//! list, and no usage file in the working directory.

mod common;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::*;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

/// A loopback port free right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A gateway config on `listen` with one account at `base_url` and a usage file in a scratch dir.
fn config_text(listen: &str, base_url: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nshards = 2\ndrain_timeout_secs = 5\n{extra}\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n\
         [[accounts]]\nid = \"acct-0\"\nbase_url = \"{base_url}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 4\n\
         [usage]\npath = \"{}\"\n",
        scratch_file("usage.jsonl").display()
    )
}

/// Runs the binary with `args` in `cwd` until it exits (at most 20 s, else it is killed and the
/// test fails): its exit status and stderr.
fn run_to_exit(args: &[&OsStr], cwd: &Path) -> (ExitStatus, String) {
    let log = scratch_file("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("binary starts");
    let mut exited = None;
    poll_until(Duration::from_secs(20), || {
        exited = child.try_wait().expect("wait");
        exited.is_some()
    });
    let Some(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "shardgate {args:?} kept running; stderr:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

/// Writes `config` to a scratch file and runs `serve --config` on it until it exits.
fn serve_to_exit(config: &str, cwd: &Path) -> (ExitStatus, String) {
    let path = scratch_file("gateway.toml");
    std::fs::write(&path, config).expect("config file");
    run_to_exit(
        &["serve".as_ref(), "--config".as_ref(), path.as_os_str()],
        cwd,
    )
}

/// Starts the binary on `config` with its stderr in a scratch log file.
fn serve_logging(config: &str, env: &[(&str, &OsStr)]) -> (Served, PathBuf) {
    let path = scratch_file("gateway.toml");
    std::fs::write(&path, config).expect("config file");
    let log = scratch_file("gateway.log");
    let served = start_binary_logging(
        &["serve".as_ref(), "--config".as_ref(), path.as_os_str()],
        env,
        Some(&log),
    );
    (served, log)
}

fn scratch_dir() -> PathBuf {
    scratch_file("x")
        .parent()
        .expect("scratch dir")
        .to_path_buf()
}

#[test]
fn a_second_gateway_on_the_same_address_refuses_to_start() {
    let addr = format!("127.0.0.1:{}", free_port());
    let config = config_text(&addr, "http://127.0.0.1:9/v1", "");
    let mut first = serve_binary(&config);

    let (status, stderr) = serve_to_exit(&config, &scratch_dir());
    assert!(!status.success(), "the second gateway started: {stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("already serves"),
        "{stderr}"
    );
    // The first one still answers every connection (none went to a second listener group).
    let served: SocketAddr = addr.parse().unwrap();
    for _ in 0..20 {
        assert_eq!(
            http(
                served,
                "GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"
            )
            .0,
            200
        );
    }

    // A gateway that died without cleaning up leaves nothing behind: a new one starts at once.
    first.child.kill().expect("kill -9");
    first.child.wait().expect("reaped");
    let mut again = serve_binary(&config);
    assert_eq!(again.addr, served);
    assert!(again.terminate().success());
}

#[test]
fn start_up_errors_print_each_cause_once() {
    let enoent = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    let missing = scratch_dir().join("missing.toml");
    let (status, stderr) = run_to_exit(
        &["serve".as_ref(), "--config".as_ref(), missing.as_os_str()],
        &scratch_dir(),
    );
    assert!(!status.success());
    assert!(stderr.contains("cannot read config file"), "{stderr}");
    assert_eq!(stderr.matches(&enoent).count(), 1, "{stderr}");

    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().unwrap().to_string();
    let (status, stderr) = serve_to_exit(
        &config_text(&addr, "http://127.0.0.1:9/v1", ""),
        &scratch_dir(),
    );
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    let in_use = std::io::Error::from_raw_os_error(libc::EADDRINUSE).to_string();
    assert_eq!(stderr.matches(&in_use).count(), 1, "{stderr}");

    let socket = scratch_dir().join("no-such-dir").join("stats.sock");
    let extra = format!("stats_socket = \"{}\"", socket.display());
    let (status, stderr) = serve_to_exit(
        &config_text("127.0.0.1:0", "http://127.0.0.1:9/v1", &extra),
        &scratch_dir(),
    );
    assert!(!status.success());
    assert!(stderr.contains("stats socket"), "{stderr}");
    assert_eq!(stderr.matches(&enoent).count(), 1, "{stderr}");
}

/// One WebSocket turn through the binary (so it dials upstream once) with the default log
/// settings; the log it wrote.
fn one_turn_log() -> String {
    let mock = mock();
    let (mut served, log) = serve_logging(&config_text("127.0.0.1:0", &mock.base_url(), ""), &[]);
    let mut client = connect(served.addr);
    let turn = client.turn(&create("gpt-5", "hello", true, None));
    assert_eq!(turn.last_type(), "response.completed");
    drop(client);
    assert!(served.terminate().success());
    std::fs::read_to_string(&log).expect("log")
}

#[test]
fn the_default_level_logs_no_upstream_handshake_debug_line() {
    let log = one_turn_log();
    assert!(log.contains("gateway started"), "{log}");
    assert!(!log.contains("tungstenite"), "{log}");
    assert!(!log.contains("DEBUG"), "{log}");
}

#[test]
fn a_log_that_is_not_a_terminal_has_no_colours() {
    let log = one_turn_log();
    assert!(log.contains("gateway started"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");

    // The mock upstream's log too.
    let log = scratch_file("mock.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["mock-upstream", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("mock starts");
    let mut banner = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut banner,
    )
    .expect("banner");
    assert!(banner.starts_with("mock-upstream listening"), "{banner}");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().expect("mock exits").success());
    let log = std::fs::read_to_string(&log).expect("mock log");
    assert!(log.contains("mock-upstream stopping"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

#[test]
fn a_bad_json_body_is_reported_in_the_clients_own_positions() {
    let served = serve_binary(&config_text("127.0.0.1:0", "http://127.0.0.1:9/v1", ""));
    let mut conn = HttpConn::open(served.addr);
    // The second key starts at column 18 of the body, where a comma was due.
    let reply = conn.post("/v1/responses", r#"{"model":"gpt-5" "input":"hi"}"#);
    assert_eq!(reply.status, 400, "{}", reply.body);
    let v = reply.json();
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(v["error"]["code"].as_str(), Some("invalid_json"));
    assert!(message.contains("line 1 column 18"), "{message}");
    assert!(!message.contains("response.create"), "{message}");
    // The connection stays usable: the body was read whole.
    let reply = conn.raw(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n");
    assert_eq!(reply.status, 200);
}

#[test]
fn models_lists_what_the_clients_group_may_use() {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n\
         [[client_keys]]\nkey = \"sk-gw-other\"\nid = \"other\"\ngroup = \"other\"\n\
         [[accounts]]\nid = \"a\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"sk-a\"\n\
         models = [\"gpt-5\", \"o3\"]\nmodel_map = {{ \"codex\" = \"gpt-5-codex\" }}\n\
         [[accounts]]\nid = \"b\"\ngroup = \"other\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"sk-b\"\n\
         models = [\"other-model\"]\n\
         [usage]\npath = \"{}\"\n",
        scratch_file("usage.jsonl").display()
    );
    let served = serve_binary(&text);
    let get = |path: &str, key: Option<&str>| {
        let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
        let (status, text) = http(
            served.addr,
            &format!("GET {path} HTTP/1.1\r\nhost: gw\r\n{auth}connection: close\r\n\r\n"),
        );
        (status, body_of(&text).to_string())
    };

    let (status, body) = get("/v1/models", Some(CLIENT_KEY));
    assert_eq!(status, 200, "{body}");
    let v: sonic_rs::Value = sonic_rs::from_str(&body).expect("json");
    assert_eq!(v["object"].as_str(), Some("list"));
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["codex", "gpt-5", "o3"]);

    let (status, body) = get("/v1/models/o3", Some(CLIENT_KEY));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""object":"model""#), "{body}");
    let (status, _) = get("/v1/models/other-model", Some(CLIENT_KEY));
    assert_eq!(status, 404);
    let (status, body) = get("/v1/models", Some("sk-gw-other"));
    assert!(
        status == 200 && body.contains("other-model") && !body.contains("o3"),
        "{body}"
    );
    let (status, _) = get("/v1/models", None);
    assert_eq!(status, 401);
}

#[test]
fn a_config_without_a_usage_path_is_refused_and_writes_nothing_here() {
    let cwd = scratch_dir();
    let config = config_text("127.0.0.1:0", "http://127.0.0.1:9/v1", "");
    let without: String = config
        .lines()
        .filter(|l| !l.starts_with("[usage]") && !l.starts_with("path ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let (status, stderr) = serve_to_exit(&without, &cwd);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("usage.path"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&cwd)
        .expect("cwd")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("usage"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_example_configs_are_valid_and_the_readme_shows_the_production_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for example in ["examples/local.toml", "examples/shardgate.toml"] {
        let path = root.join(example);
        let output = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args([
                "check-config".as_ref(),
                "--config".as_ref(),
                path.as_os_str(),
            ])
            .env("OPENAI_API_KEY", "sk-example")
            .env("OPENAI_API_KEY_2", "sk-example-2")
            .env("SHARDGATE_CLIENT_KEY", "sk-gw-example")
            .output()
            .expect("check-config runs");
        assert!(
            output.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let example = std::fs::read_to_string(root.join("examples/shardgate.toml")).expect("example");
    assert!(
        readme.contains(&example),
        "README must show examples/shardgate.toml as it is"
    );
}
