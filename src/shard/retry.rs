//! Failure classification and retry pacing: every upstream failure is one of three classes, and
//! a retryable one waits an exponentially growing, fully jittered delay before the next attempt.

use std::time::Duration;

use crate::config::RetryConfig;
use crate::protocol::upstream_event::ErrorReason;

/// The longest `retry-after` the gateway waits out itself; longer ones end the request.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What a failed attempt allows next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Try again (after a backoff), on another healthy account when one exists.
    Retryable {
        /// Label for `retries{reason}`.
        reason: &'static str,
        /// Upstream's `retry-after`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// WebSocket is refused for this request: go over HTTP at once.
    Fallback {
        /// Label for `fallbacks{reason}`.
        reason: &'static str,
    },
    /// Upstream refused the turn's chain (`previous_response_not_found`,
    /// `tool_output_not_found`) before the client saw anything: the recovery matrix decides.
    Chain {
        /// Which chain error.
        reason: ErrorReason,
    },
    /// Report to the client; never retried.
    Final,
}

impl FailureClass {
    /// A retryable failure without `retry-after`.
    pub fn retryable(reason: &'static str) -> Self {
        FailureClass::Retryable {
            reason,
            retry_after: None,
        }
    }

    /// The class of an HTTP status answered by upstream (a refused upgrade or a POST).
    pub fn of_status(status: u16, retry_after: Option<Duration>, upgrade: bool) -> Self {
        match status {
            429 => FailureClass::Retryable {
                reason: "429",
                retry_after,
            },
            500..=599 => FailureClass::Retryable {
                reason: "5xx",
                retry_after,
            },
            _ if upgrade => FailureClass::Fallback {
                reason: "upgrade_refused",
            },
            _ => FailureClass::Final,
        }
    }

    /// The class of a WebSocket close code received before any event reached the client.
    pub fn of_close(code: Option<u16>) -> Self {
        match code {
            Some(1008) => FailureClass::Fallback {
                reason: "close_1008",
            },
            // Restart / try later: the client gets an error event and continues (docs/design.md).
            Some(1012 | 1013) => FailureClass::Final,
            Some(1009) => FailureClass::Final,
            _ => FailureClass::retryable("reset"),
        }
    }
}

/// Exponential backoff with full jitter: a uniform delay in `[0, min(cap, base · 2^(n-1))]`
/// before retry `n` (1-based), at least upstream's `retry-after`.
pub fn backoff(cfg: &RetryConfig, retry: u32, retry_after: Option<Duration>) -> Duration {
    let exp = retry.saturating_sub(1).min(20);
    let ceiling = cfg.base.saturating_mul(1u32 << exp).min(cfg.cap);
    let jitter = ceiling.mul_f64(fastrand::f64());
    match retry_after {
        Some(ra) => jitter.max(ra),
        None => jitter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http1::parse_retry_after;

    fn cfg() -> RetryConfig {
        RetryConfig {
            max_attempts: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        }
    }

    #[test]
    fn backoff_stays_within_the_exponential_ceiling_and_the_cap() {
        let c = cfg();
        for _ in 0..1000 {
            assert!(backoff(&c, 1, None) <= Duration::from_millis(100));
            assert!(backoff(&c, 2, None) <= Duration::from_millis(200));
            assert!(backoff(&c, 3, None) <= Duration::from_millis(400));
            assert!(backoff(&c, 30, None) <= Duration::from_secs(2));
        }
        // Full jitter: the draws are spread, not pinned to the ceiling.
        let draws: Vec<_> = (0..200).map(|_| backoff(&c, 3, None)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(200)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(200)));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let ra = Some(Duration::from_secs(1));
        for _ in 0..100 {
            assert!(backoff(&cfg(), 1, ra) >= Duration::from_secs(1));
        }
        assert_eq!(parse_retry_after(b" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(b"soon"), None);
    }

    #[test]
    fn classification_table() {
        assert!(matches!(
            FailureClass::of_status(503, None, true),
            FailureClass::Retryable { reason: "5xx", .. }
        ));
        assert!(matches!(
            FailureClass::of_status(429, Some(Duration::from_secs(1)), false),
            FailureClass::Retryable {
                reason: "429",
                retry_after: Some(_)
            }
        ));
        for s in [401, 403, 404, 426] {
            assert_eq!(
                FailureClass::of_status(s, None, true),
                FailureClass::Fallback {
                    reason: "upgrade_refused"
                }
            );
            assert_eq!(FailureClass::of_status(s, None, false), FailureClass::Final);
        }
        assert_eq!(
            FailureClass::of_close(Some(1008)),
            FailureClass::Fallback {
                reason: "close_1008"
            }
        );
        assert_eq!(FailureClass::of_close(Some(1012)), FailureClass::Final);
        assert_eq!(
            FailureClass::of_close(None),
            FailureClass::retryable("reset")
        );
    }
}
