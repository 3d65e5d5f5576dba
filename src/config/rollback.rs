//! `[rollback]`: the thresholds that move an account off WebSocket by themselves
//! ([`crate::control::rollback`]). Off unless at least one threshold is set.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, secs, ConfigError};

/// `[rollback]`: per-account WebSocket health thresholds, judged over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackConfig {
    /// What the thresholds are measured over (sum of the shards' intervals).
    pub window: Duration,
    /// WebSocket attempts (for the rates) or answered turns (for the TTFT p99) the window
    /// needs before a threshold is judged.
    pub min_samples: u64,
    /// Share of WebSocket attempts that failed above which the account goes HTTP.
    pub ws_error_rate: Option<f64>,
    /// Share of WebSocket attempts that fell back to HTTP above which the account goes HTTP.
    pub ws_fallback_rate: Option<f64>,
    /// Client TTFT p99 of the account's WebSocket turns above which it goes HTTP.
    pub ws_ttft_p99: Option<Duration>,
    /// How far the WebSocket TTFT p99 may exceed the same account's HTTP TTFT p99 (the
    /// canary's other half) before the account goes HTTP.
    pub ws_added_ttft_p99: Option<Duration>,
}

impl RollbackConfig {
    /// `true` when at least one threshold is set (else the guard never runs).
    pub fn enabled(&self) -> bool {
        self.ws_error_rate.is_some()
            || self.ws_fallback_rate.is_some()
            || self.ws_ttft_p99.is_some()
            || self.ws_added_ttft_p99.is_some()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollback {
    window_secs: Option<f64>,
    min_samples: Option<u64>,
    ws_error_rate: Option<f64>,
    ws_fallback_rate: Option<f64>,
    ws_ttft_p99_ms: Option<u64>,
    ws_added_ttft_p99_ms: Option<u64>,
}

fn rate(key: &str, v: Option<f64>) -> Result<Option<f64>, ConfigError> {
    match v {
        Some(r) if !(r > 0.0 && r <= 1.0) => Err(invalid(key, "must be in (0, 1]")),
        other => Ok(other),
    }
}

fn positive_ms(key: &str, v: Option<u64>) -> Result<Option<Duration>, ConfigError> {
    match v {
        Some(0) => Err(invalid(key, "must be greater than 0")),
        ms => Ok(ms.map(Duration::from_millis)),
    }
}

impl RawRollback {
    /// `[rollback]` checked: rates in (0, 1], a positive window (60 s by default), at least
    /// one sample (20 by default).
    pub(super) fn validate(self) -> Result<RollbackConfig, ConfigError> {
        let min_samples = self.min_samples.unwrap_or(20);
        if min_samples == 0 {
            return Err(invalid("rollback.min_samples", "must be at least 1"));
        }
        Ok(RollbackConfig {
            window: secs("rollback.window_secs", self.window_secs, 60.0)?,
            min_samples,
            ws_error_rate: rate("rollback.ws_error_rate", self.ws_error_rate)?,
            ws_fallback_rate: rate("rollback.ws_fallback_rate", self.ws_fallback_rate)?,
            ws_ttft_p99: positive_ms("rollback.ws_ttft_p99_ms", self.ws_ttft_p99_ms)?,
            ws_added_ttft_p99: positive_ms(
                "rollback.ws_added_ttft_p99_ms",
                self.ws_added_ttft_p99_ms,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{no_env, MINIMAL};
    use crate::config::Config;
    use std::time::Duration;

    #[test]
    fn off_by_default_and_thresholds_are_checked() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert!(!c.rollback.enabled());
        let text = format!(
            "[rollback]\nwindow_secs = 10\nmin_samples = 5\nws_error_rate = 0.25\nws_ttft_p99_ms = 3000\n{MINIMAL}"
        );
        let c = Config::parse(&text, &no_env).unwrap();
        assert!(c.rollback.enabled());
        assert_eq!(c.rollback.window, Duration::from_secs(10));
        assert_eq!(c.rollback.min_samples, 5);
        assert_eq!(c.rollback.ws_error_rate, Some(0.25));
        assert_eq!(c.rollback.ws_fallback_rate, None);
        assert_eq!(c.rollback.ws_ttft_p99, Some(Duration::from_secs(3)));
        for bad in [
            "ws_error_rate = 1.5",
            "ws_fallback_rate = 0",
            "min_samples = 0",
            "ws_added_ttft_p99_ms = 0",
        ] {
            let text = format!("[rollback]\n{bad}\n{MINIMAL}");
            let err = Config::parse(&text, &no_env).unwrap_err().to_string();
            assert!(err.contains("rollback."), "{bad}: {err}");
        }
    }
}
