//! Configuration: the TOML file an operator writes, validated once at start.
//!
//! Every section rejects unknown keys, and every invalid value is reported with the key that
//! holds it, so a typo fails loudly at start instead of silently running with a default. Each
//! section's types and checks live in their own module; this one holds the whole, the checks
//! that span sections, and the value helpers they share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod accounts;
mod client_keys;
mod endpoint;
mod log;
pub mod oauth;
mod rollback;
mod secret;
mod server;
mod state;
mod upstream;
mod usage;

pub use accounts::{Account, Transport, WS_AUTH_KINDS};
pub use client_keys::ClientKey;
pub use endpoint::Endpoint;
pub use log::LogConfig;
pub use oauth::OAuthConfig;
pub use rollback::RollbackConfig;
pub use secret::Secret;
pub use server::{ListenerTls, ServerConfig};
pub use state::{StateBackend, StateConfig};
pub use upstream::{BreakerConfig, RetryConfig, UpstreamConfig};
pub use usage::{UsageConfig, UsageSinkKind};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is present but not usable.
    #[error("invalid config value for `{key}`: {reason}")]
    Invalid {
        /// The dotted key path, e.g. `accounts[1].base_url`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A TOML error as "line L, column C: message", without the offending line and with every
/// quoted value elided: the line or the value may be a key (`api_key = "sk-…"`), and config
/// errors are printed to terminals and logs.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let mut message = String::with_capacity(e.message().len());
    let mut quoted = false;
    for c in e.message().trim_end().chars() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                message.push_str("\"…");
            }
            ('"', true) => {
                quoted = false;
                message.push('"');
            }
            (c, false) => message.push(c),
            (_, true) => {}
        }
    }
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else {
        return message;
    };
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {message}")
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole configuration, as loaded and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listener, shards and client-facing limits.
    pub server: ServerConfig,
    /// Upstream dialing, pooling and timeouts.
    pub upstream: UpstreamConfig,
    /// Keys clients authenticate with.
    pub client_keys: Vec<ClientKey>,
    /// Upstream accounts sessions are spread over.
    pub accounts: Vec<Account>,
    /// Logging.
    pub log: LogConfig,
    /// Sticky state (response bindings, session chains, pending calls).
    pub state: StateConfig,
    /// Usage records (billing).
    pub usage: UsageConfig,
    /// Thresholds of the automatic WebSocket → HTTP rollback per account.
    pub rollback: RollbackConfig,
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: server::RawServer,
    #[serde(default)]
    upstream: upstream::RawUpstream,
    #[serde(default)]
    client_keys: Vec<client_keys::RawClientKey>,
    #[serde(default)]
    accounts: Vec<accounts::RawAccount>,
    #[serde(default)]
    log: log::RawLog,
    #[serde(default)]
    state: state::RawState,
    #[serde(default)]
    usage: usage::RawUsage,
    #[serde(default)]
    rollback: rollback::RawRollback,
}

/// Default message limit in both directions: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Longest duration a `*_secs` setting takes (about 31 years): far beyond any useful timeout,
/// and far from where `Duration` or a deadline (`Instant` plus the setting) overflows.
const MAX_SECS: f64 = 1e9;

fn secs(key: &str, v: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
    let v = v.unwrap_or(default);
    if !(v > 0.0 && v <= MAX_SECS) {
        return Err(invalid(
            key,
            "must be a positive number of seconds, at most 1e9",
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Longest duration a `*_ms` setting takes: the `*_secs` bound, in milliseconds.
const MAX_MILLIS: u64 = MAX_SECS as u64 * 1000;

fn millis(key: &str, v: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match v.unwrap_or(default) {
        0 => Err(invalid(key, "must be greater than 0")),
        ms if ms > MAX_MILLIS => Err(invalid(key, "must be at most 1e12 milliseconds")),
        ms => Ok(Duration::from_millis(ms)),
    }
}

impl Config {
    /// Reads and validates a config file, taking `*_env` secrets from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, &|name| std::env::var(name).ok())?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        for oauth in config.accounts.iter_mut().filter_map(|a| a.oauth.as_mut()) {
            if oauth.state_file.is_relative() {
                oauth.state_file = dir.join(&oauth.state_file);
            }
        }
        Ok(config)
    }

    /// Parses and validates config text; `env` resolves `*_env` names (injectable for tests).
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(describe(text, &e)))?;
        Self::validate(raw, env)
    }

    /// Each section checked on its own, then what spans sections: every client key's group is
    /// served by an account.
    fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let server = raw.server.validate()?;
        let upstream = raw.upstream.validate()?;
        let client_keys = client_keys::validate(raw.client_keys, env)?;
        let accounts = accounts::validate(raw.accounts, env)?;
        for (i, k) in client_keys.iter().enumerate() {
            if !accounts.iter().any(|a| a.group == k.group) {
                return Err(invalid(
                    format!("client_keys[{i}].group"),
                    format!("no account serves group `{}`", k.group),
                ));
            }
        }
        let log = raw.log.validate()?;
        let state = raw.state.validate(env)?;
        let usage = raw.usage.validate(state.redis_url.as_ref(), env)?;
        let rollback = raw.rollback.validate()?;

        Ok(Config {
            server,
            upstream,
            client_keys,
            accounts,
            log,
            state,
            usage,
            rollback,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn no_env(_: &str) -> Option<String> {
        None
    }

    pub(super) const MINIMAL: &str = r#"
        [usage]
        path = "/var/lib/shardgate/usage.jsonl"
        [[client_keys]]
        key = "sk-gw-local"
        [[accounts]]
        id = "acct-1"
        base_url = "http://127.0.0.1:9000/v1"
        api_key = "sk-up"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(c.server.shards >= 1);
        assert_eq!(c.accounts[0].max_conns, 64);
        assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.accounts[0].transport, Transport::Ws);
        assert_eq!(c.client_keys[0].group, "default");
        assert_eq!(
            c.accounts[0].endpoint.responses_ws_url(),
            "ws://127.0.0.1:9000/v1/responses"
        );
    }

    #[test]
    fn seconds_past_the_largest_duration_are_refused_not_a_panic() {
        // The config fuzz target's seed huge_secs: Duration::from_secs_f64 panicked on 1e300.
        for v in ["1e300", "1.0e10", "nan", "inf", "0.0", "-1.0"] {
            let text = format!("[server]\nidle_timeout_secs = {v}\n{MINIMAL}");
            let err = Config::parse(&text, &no_env).unwrap_err().to_string();
            assert!(err.contains("server.idle_timeout_secs"), "{v}: {err}");
        }
        let text = format!("[server]\nidle_timeout_secs = 1e9\n{MINIMAL}");
        assert!(Config::parse(&text, &no_env).is_ok());
    }

    #[test]
    fn milliseconds_past_the_largest_duration_are_refused() {
        // u64::MAX ms is a Duration, but the first `Instant::now() + dial_timeout` panicked.
        let text = format!("[upstream]\ndial_timeout_ms = {}\n{MINIMAL}", u64::MAX);
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("upstream.dial_timeout_ms"), "{err}");
        let text = format!("[upstream]\ndial_timeout_ms = 1000000000000\n{MINIMAL}");
        assert!(Config::parse(&text, &no_env).is_ok());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse(&format!("{MINIMAL}\n[server]\nlisen = \"x\""), &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn invalid_value_is_named() {
        let text = MINIMAL.replace("http://127.0.0.1:9000/v1", "ftp://x");
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("accounts[0].base_url"), "{err}");
    }

    #[test]
    fn group_without_account_is_rejected() {
        let text = MINIMAL.replace("key = \"sk-gw-local\"", "key = \"k\"\ngroup = \"other\"");
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("client_keys[0].group"), "{err}");
    }

    #[test]
    fn toml_errors_name_the_place_but_never_echo_a_secret() {
        let secret = "sk-live-do-not-print-0123456789";
        let broken_line = format!("{MINIMAL}\n[[accounts]]\napi_key = \"{secret}\" trailing\n");
        let wrong_type = format!("{MINIMAL}\n[server]\nshards = \"{secret}\"\n");
        for text in [broken_line, wrong_type] {
            let err = Config::parse(&text, &no_env).unwrap_err().to_string();
            assert!(!err.contains("do-not-print"), "{err}");
            assert!(err.contains("line "), "{err}");
        }
    }

    #[test]
    fn deeply_nested_toml_is_an_error_not_a_crash() {
        let text = format!(
            "{MINIMAL}\n[server]\nx = {}1{}\n",
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        assert!(Config::parse(&text, &no_env).is_err());
    }
}
