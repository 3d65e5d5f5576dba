//! The binary's own commands, as an operator runs them: the offline demo that the README's run
//! command starts, and `check-config`.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_offline_demo_serves_a_turn_and_records_its_usage() {
    let tmp = scratch_file("demo-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string();
    let mut demo = start_binary(
        &["serve".as_ref(), "--demo-listen".as_ref(), listen.as_ref()],
        &[("TMPDIR", tmp.as_os_str())],
    );
    assert_eq!(demo.addr.to_string(), listen);
    let mut client = connect_with_key(demo.addr, "sk-gw-local").expect("the demo key works");
    let turn = client.turn(&create("gpt-5", "hello demo", false, None));
    assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
    let id = turn.response_id().expect("id");
    assert!(
        connect_with_key(demo.addr, CLIENT_KEY).is_err(),
        "other keys are refused"
    );
    drop(client);

    let status = demo.terminate();
    assert!(status.success(), "demo exits cleanly on SIGTERM: {status}");
    let usage =
        std::fs::read_to_string(tmp.join("shardgate-demo-usage.jsonl")).expect("usage file");
    assert_eq!(usage.lines().count(), 1, "{usage}");
    assert!(usage.contains(&id), "{usage}");
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_bad_key() {
    let good = scratch_file("good.toml");
    std::fs::write(
        &good,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\n[[client_keys]]\nkey = \"{CLIENT_KEY}\"\n\
             [[accounts]]\nid = \"a\"\nbase_url = \"https://api.openai.com/v1\"\napi_key = \"sk-secret-value\"\n\
             [usage]\npath = \"/var/lib/shardgate/usage.jsonl\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("config ok: 1 shard(s), 1 client key(s), 1 account(s)"));

    let bad = scratch_file("bad.toml");
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("shards = 1", "shards = 1\nmax_sesions = 3");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_sesions"), "{err}");
    assert!(!err.contains("sk-secret-value"), "{err}");
}
