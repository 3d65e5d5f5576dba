//! The `log` crate's level follows the configured filter: dependencies that log through `log`
//! (tungstenite, per frame) must not pay the tracing bridge for lines the filter drops.
//! Its own test binary: the log setup is process-wide.

use shardgate::config::LogConfig;

#[test]
fn log_calls_below_the_configured_level_stop_at_the_log_crate() {
    std::env::remove_var("RUST_LOG");
    let _guard = shardgate::logging::init(&LogConfig {
        json: false,
        level: "warn".to_string(),
    })
    .expect("the first subscriber of this process is installed");
    assert_eq!(log::max_level(), log::LevelFilter::Warn);
    assert!(!log::log_enabled!(target: "tungstenite::protocol", log::Level::Trace));
}
