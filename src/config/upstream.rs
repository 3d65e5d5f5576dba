//! `[upstream]`: dialing, pooling, timeouts, retries and the circuit breaker.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, millis, secs, ConfigError, DEFAULT_MAX_MESSAGE_BYTES};

/// `[upstream]`: how the gateway talks to the accounts.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// TCP connect deadline.
    pub dial_timeout: Duration,
    /// TLS + WebSocket handshake deadline.
    pub handshake_timeout: Duration,
    /// Longest silence from upstream while a turn is in flight.
    pub event_timeout: Duration,
    /// Connections older than this are retired before their next turn (upstream ends them at 60 min).
    pub max_conn_age: Duration,
    /// Waiters allowed per connection of a slice when its budget is used up.
    pub queue_per_conn: usize,
    /// Longest wait for a connection from a full slice.
    pub acquire_timeout: Duration,
    /// Largest WebSocket message accepted from upstream.
    pub max_message_bytes: usize,
    /// Send every account's requests over HTTP/SSE (rollback switch).
    pub force_http: bool,
    /// Retry policy for retryable upstream failures.
    pub retry: RetryConfig,
    /// Per-account-slice circuit breaker.
    pub breaker: BreakerConfig,
    /// How often idle upstream connections (pooled, or held by a session between turns) are
    /// pinged so that upstream and the middleboxes on the way do not cut them for silence;
    /// zero turns keep-alive pings off. `ping_interval_secs`, default 30.
    pub ping_interval: Duration,
    /// How long a ping's pong may take; a connection whose pong is later is closed, never
    /// reused. `pong_timeout_ms`, default 5000, below `ping_interval_secs`.
    pub pong_timeout: Duration,
}

/// `[upstream]` retry keys: exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts per request, the first one included.
    pub max_attempts: u32,
    /// Backoff before the second attempt (upper bound of the jitter).
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
}

/// `[upstream]` breaker keys.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure share over `window` that opens it (with at least `min_requests` requests seen).
    pub failure_rate: f64,
    /// Window the failure share is measured over.
    pub window: Duration,
    /// Requests the window needs before the rate counts.
    pub min_requests: u32,
    /// How long an open breaker stays open before one probe is let through.
    pub cooldown: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    dial_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    event_timeout_secs: Option<f64>,
    max_conn_age_secs: Option<f64>,
    queue_per_conn: Option<usize>,
    acquire_timeout_ms: Option<u64>,
    max_message_bytes: Option<usize>,
    force_http: Option<bool>,
    retry_max_attempts: Option<u32>,
    retry_base_ms: Option<u64>,
    retry_cap_ms: Option<u64>,
    breaker_failures: Option<u32>,
    breaker_failure_rate: Option<f64>,
    breaker_window_secs: Option<f64>,
    breaker_min_requests: Option<u32>,
    breaker_cooldown_secs: Option<f64>,
    ping_interval_secs: Option<f64>,
    pong_timeout_ms: Option<u64>,
}

impl RawUpstream {
    /// `[upstream]` checked, with its defaults filled in.
    pub(super) fn validate(self) -> Result<UpstreamConfig, ConfigError> {
        let u = self;
        let queue_per_conn = u.queue_per_conn.unwrap_or(16);
        let upstream = UpstreamConfig {
            dial_timeout: millis("upstream.dial_timeout_ms", u.dial_timeout_ms, 10_000)?,
            handshake_timeout: millis(
                "upstream.handshake_timeout_ms",
                u.handshake_timeout_ms,
                10_000,
            )?,
            event_timeout: secs("upstream.event_timeout_secs", u.event_timeout_secs, 600.0)?,
            max_conn_age: secs(
                "upstream.max_conn_age_secs",
                u.max_conn_age_secs,
                55.0 * 60.0,
            )?,
            queue_per_conn,
            acquire_timeout: millis("upstream.acquire_timeout_ms", u.acquire_timeout_ms, 30_000)?,
            max_message_bytes: u.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            force_http: u.force_http.unwrap_or(false),
            retry: RetryConfig {
                max_attempts: match u.retry_max_attempts.unwrap_or(3) {
                    0 => return Err(invalid("upstream.retry_max_attempts", "must be at least 1")),
                    n => n,
                },
                base: millis("upstream.retry_base_ms", u.retry_base_ms, 100)?,
                cap: millis("upstream.retry_cap_ms", u.retry_cap_ms, 2_000)?,
            },
            breaker: BreakerConfig {
                consecutive_failures: match u.breaker_failures.unwrap_or(5) {
                    0 => return Err(invalid("upstream.breaker_failures", "must be at least 1")),
                    n => n,
                },
                failure_rate: match u.breaker_failure_rate.unwrap_or(0.5) {
                    r if r > 0.0 && r <= 1.0 => r,
                    _ => {
                        return Err(invalid(
                            "upstream.breaker_failure_rate",
                            "must be in (0, 1]",
                        ))
                    }
                },
                window: secs("upstream.breaker_window_secs", u.breaker_window_secs, 10.0)?,
                min_requests: u.breaker_min_requests.unwrap_or(20),
                cooldown: secs(
                    "upstream.breaker_cooldown_secs",
                    u.breaker_cooldown_secs,
                    30.0,
                )?,
            },
            ping_interval: match u.ping_interval_secs {
                Some(0.0) => Duration::ZERO,
                v => secs("upstream.ping_interval_secs", v, 30.0)?,
            },
            pong_timeout: millis("upstream.pong_timeout_ms", u.pong_timeout_ms, 5_000)?,
        };
        if !upstream.ping_interval.is_zero() && upstream.pong_timeout >= upstream.ping_interval {
            return Err(invalid(
                "upstream.pong_timeout_ms",
                "must be below upstream.ping_interval_secs",
            ));
        }
        if upstream.retry.cap < upstream.retry.base {
            return Err(invalid(
                "upstream.retry_cap_ms",
                "must not be below upstream.retry_base_ms",
            ));
        }
        if upstream.max_conn_age > Duration::from_secs(3600) {
            return Err(invalid(
                "upstream.max_conn_age_secs",
                "must be below 3600: upstream ends connections at 60 minutes",
            ));
        }
        Ok(upstream)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{no_env, MINIMAL};
    use crate::config::Config;
    use std::time::Duration;

    #[test]
    fn keep_alive_pings_default_to_30_s_turn_off_at_zero_and_need_a_shorter_pong_timeout() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert_eq!(c.upstream.ping_interval, Duration::from_secs(30));
        assert_eq!(c.upstream.pong_timeout, Duration::from_secs(5));
        let text = format!("[upstream]\nping_interval_secs = 0\n{MINIMAL}");
        let c = Config::parse(&text, &no_env).unwrap();
        assert!(c.upstream.ping_interval.is_zero());
        let text = format!("[upstream]\nping_interval_secs = 2\npong_timeout_ms = 2000\n{MINIMAL}");
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("upstream.pong_timeout_ms"), "{err}");
        let text = format!("[upstream]\nping_interval_secs = -1\n{MINIMAL}");
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("upstream.ping_interval_secs"), "{err}");
    }
}
