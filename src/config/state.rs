//! `[state]`: where sticky state (response bindings, session chains, pending calls) lives.

use std::time::Duration;

use serde::Deserialize;

use super::secret::{optional_secret, Secret};
use super::{invalid, millis, secs, ConfigError};

/// Where sticky state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// In the control thread's memory: one host, nothing to install.
    Embedded,
    /// In Redis, shared by every gateway host.
    Redis,
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// Which store.
    pub backend: StateBackend,
    /// Redis URL (used when `backend = "redis"`, and by the Redis usage sink by default).
    pub redis_url: Option<Secret>,
    /// Lifetime of a binding (a response lives upstream about this long).
    pub ttl: Duration,
    /// Timeout of one Redis call.
    pub redis_timeout: Duration,
    /// This host's name in bindings (defaults to the hostname).
    pub instance: String,
    /// Namespace of every store key (`{prefix}:{group}:resp:{id}`); hosts sharing state share it.
    pub key_prefix: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    backend: Option<StateBackend>,
    redis_url: Option<String>,
    redis_url_env: Option<String>,
    ttl_secs: Option<f64>,
    redis_timeout_ms: Option<u64>,
    instance: Option<String>,
    key_prefix: Option<String>,
}

impl RawState {
    /// `[state]` checked: the Redis backend needs a URL.
    pub(super) fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<StateConfig, ConfigError> {
        let st = self;
        let state_redis = optional_secret(
            "state.redis_url",
            st.redis_url,
            "state.redis_url_env",
            st.redis_url_env,
            env,
        )?;
        let state = StateConfig {
            backend: st.backend.unwrap_or(StateBackend::Embedded),
            redis_url: state_redis,
            ttl: secs("state.ttl_secs", st.ttl_secs, 3600.0)?,
            redis_timeout: millis("state.redis_timeout_ms", st.redis_timeout_ms, 3_000)?,
            instance: st.instance.unwrap_or_else(default_instance),
            key_prefix: st.key_prefix.unwrap_or_else(|| "sg".into()),
        };
        if state.backend == StateBackend::Redis && state.redis_url.is_none() {
            return Err(invalid(
                "state.redis_url",
                "required when state.backend = \"redis\"",
            ));
        }
        Ok(state)
    }
}

/// This host's name for bindings: `/etc/hostname`, else `shardgate`.
fn default_instance() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shardgate".into())
}
