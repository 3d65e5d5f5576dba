//! The shipped systemd unit (`examples/systemd/shardgate.service`): systemd itself accepts it,
//! it raises the limits a shard needs, reloads with SIGHUP, and stops with SIGTERM given more
//! time than the drain; and the command lines it runs work on the example config.

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../examples/systemd/shardgate.service");

/// `Key=value` lines of the unit, in order.
fn settings() -> Vec<(&'static str, &'static str)> {
    UNIT.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect()
}

fn setting(key: &str) -> &'static str {
    settings()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("the unit sets no {key}"))
}

#[test]
fn the_unit_raises_limits_reloads_with_sighup_and_outlasts_the_drain() {
    assert_eq!(setting("LimitMEMLOCK"), "infinity");
    assert!(setting("LimitNOFILE").parse::<u64>().expect("a number") >= 65_536);
    assert_eq!(setting("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(setting("KillSignal"), "SIGTERM");
    let stop: u64 = setting("TimeoutStopSec").parse().expect("seconds");
    let config = shardgate::config::Config::parse(
        &std::fs::read_to_string("examples/shardgate.toml").expect("example config"),
        &|_| Some("sk-example-secret-0000".into()),
    )
    .expect("the example config is valid");
    assert!(
        stop > config.server.drain_timeout.as_secs(),
        "systemd would kill the gateway before its drain ends"
    );
    // The paths the example config writes to are the directories the unit gives the service.
    assert_eq!(setting("StateDirectory"), "shardgate");
    assert_eq!(setting("RuntimeDirectory"), "shardgate");
    assert!(config.usage.path.starts_with("/var/lib/shardgate"));
}

#[test]
fn systemd_accepts_the_unit_and_its_check_runs() {
    let bin = env!("CARGO_BIN_EXE_shardgate");
    // The unit as installed, with the binary where this build put it.
    let dir = tempfile::tempdir().expect("scratch dir");
    let unit = dir.path().join("shardgate.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/shardgate", bin)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !said.contains("shardgate.service"),
        "systemd-analyze verify: {said}"
    );
    // ExecStartPre's check, on the example config, with the secrets the EnvironmentFile gives.
    let check = setting("ExecStartPre").replace("/usr/local/bin/shardgate", bin);
    let mut words = check.split_whitespace();
    let program = words.next().expect("a command");
    let args: Vec<&str> = words
        .map(|w| {
            if w == "/etc/shardgate/shardgate.toml" {
                "examples/shardgate.toml"
            } else {
                w
            }
        })
        .collect();
    assert!(Path::new(program).exists());
    let status = Command::new(program)
        .args(&args)
        .env("OPENAI_API_KEY", "sk-example-secret-1111")
        .env("OPENAI_API_KEY_2", "sk-example-secret-2222")
        .env("SHARDGATE_CLIENT_KEY", "sk-example-client-3333")
        .status()
        .expect("check-config runs");
    assert!(status.success(), "check-config refused the example config");
}
