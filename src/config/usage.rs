//! `[usage]`: where usage records (billing data) go, and the spool that holds them while the sink
//! is down.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::{optional_secret, Secret};
use super::{invalid, millis, ConfigError};

/// Where usage records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSinkKind {
    /// Append-only JSONL file.
    File,
    /// A Redis stream.
    Redis,
}

/// `[usage]`.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageConfig {
    /// Which sink.
    pub sink: UsageSinkKind,
    /// JSONL file for `sink = "file"` (required then; empty when the Redis sink has none).
    pub path: PathBuf,
    /// Rotate the file when it grows past this many bytes.
    pub rotate_bytes: u64,
    /// Longest time a written record waits for its fsync.
    pub fsync_interval: Duration,
    /// Redis URL for `sink = "redis"` (defaults to `[state] redis_url`).
    pub redis_url: Option<Secret>,
    /// Stream key for `sink = "redis"`.
    pub stream: String,
    /// Directory of the on-disk spool used while the sink is down (default: `usage-spool` next
    /// to `path`).
    pub spool_dir: PathBuf,
    /// Largest spool size; past it the oldest spooled records are kept and new ones counted as dropped.
    pub spool_max_bytes: u64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUsage {
    sink: Option<UsageSinkKind>,
    path: Option<PathBuf>,
    rotate_bytes: Option<u64>,
    fsync_interval_ms: Option<u64>,
    redis_url: Option<String>,
    redis_url_env: Option<String>,
    stream: Option<String>,
    spool_dir: Option<PathBuf>,
    spool_max_bytes: Option<u64>,
}

impl RawUsage {
    /// `[usage]` checked; the Redis sink falls back to `[state] redis_url` (`state_redis`).
    pub(super) fn validate(
        self,
        state_redis: Option<&Secret>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<UsageConfig, ConfigError> {
        let us = self;
        let usage_redis = optional_secret(
            "usage.redis_url",
            us.redis_url,
            "usage.redis_url_env",
            us.redis_url_env,
            env,
        )?
        .or_else(|| state_redis.cloned());
        let sink = us.sink.unwrap_or(UsageSinkKind::File);
        // No defaults that point at the working directory: billing data must land where the
        // operator said.
        let path = match (us.path, sink) {
            (Some(path), _) => path,
            (None, UsageSinkKind::Redis) => PathBuf::new(),
            (None, UsageSinkKind::File) => {
                return Err(invalid(
                    "usage.path",
                    "required with the file sink: where usage records (billing data) are \
                     written, e.g. \"/var/lib/shardgate/usage.jsonl\"",
                ))
            }
        };
        let spool_dir = match us.spool_dir {
            Some(dir) => dir,
            None if !path.as_os_str().is_empty() => path.with_file_name("usage-spool"),
            None => {
                return Err(invalid(
                    "usage.spool_dir",
                    "required with the redis sink when usage.path is not set: where records \
                     wait while Redis fails",
                ))
            }
        };
        let usage = UsageConfig {
            sink,
            path,
            rotate_bytes: us.rotate_bytes.unwrap_or(256 * 1024 * 1024),
            fsync_interval: millis("usage.fsync_interval_ms", us.fsync_interval_ms, 200)?,
            redis_url: usage_redis,
            stream: us.stream.unwrap_or_else(|| "shardgate:usage".into()),
            spool_dir,
            spool_max_bytes: us.spool_max_bytes.unwrap_or(1024 * 1024 * 1024),
        };
        if usage.sink == UsageSinkKind::Redis && usage.redis_url.is_none() {
            return Err(invalid(
                "usage.redis_url",
                "required when usage.sink = \"redis\" (or set state.redis_url)",
            ));
        }
        if usage.rotate_bytes < 4096 {
            return Err(invalid("usage.rotate_bytes", "must be at least 4096"));
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{no_env, MINIMAL};
    use crate::config::Config;
    #[test]
    fn usage_records_never_default_to_the_working_directory() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert_eq!(
            c.usage.spool_dir,
            PathBuf::from("/var/lib/shardgate/usage-spool")
        );
        let without = MINIMAL.replace("path = \"/var/lib/shardgate/usage.jsonl\"", "");
        let err = Config::parse(&without, &no_env).unwrap_err().to_string();
        assert!(err.contains("usage.path"), "{err}");
        let redis = without.replace(
            "[usage]",
            "[usage]\nsink = \"redis\"\nredis_url = \"redis://127.0.0.1/\"",
        );
        let err = Config::parse(&redis, &no_env).unwrap_err().to_string();
        assert!(err.contains("usage.spool_dir"), "{err}");
        let spooled = redis.replace("[usage]", "[usage]\nspool_dir = \"/var/spool/sg\"");
        let c = Config::parse(&spooled, &no_env).unwrap();
        assert_eq!(c.usage.spool_dir, PathBuf::from("/var/spool/sg"));
    }
}
