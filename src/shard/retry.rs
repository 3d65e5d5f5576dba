//! Retry pacing: a retried attempt waits an exponentially growing, fully jittered delay (which
//! failures are retried is decided in `shard/failure/`).

use std::time::Duration;

use crate::config::RetryConfig;

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
}
