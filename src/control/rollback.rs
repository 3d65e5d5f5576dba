//! The automatic WebSocket → HTTP rollback (control thread).
//!
//! Shards count every WebSocket attempt per account ([`crate::metrics::accounts`]) and ship the
//! interval with their stats snapshot. The guard keeps those intervals for `[rollback]
//! window_secs` and, on each control tick, judges every account still on WebSocket against the
//! thresholds (error rate, fallback rate, TTFT p99, TTFT p99 added over the account's HTTP
//! turns), once the window holds `min_samples`. A
//! tripped threshold moves the account to HTTP on every shard through [`LiveSettings`], the
//! switches a reload writes (the next attempt of every session goes HTTP, as with
//! `transport = "http"`), logs the account, the threshold and the measured value, and counts
//! `rollbacks{account/reason}`. A reload reverts the rollback; the guard then starts a fresh
//! window.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::config::{Config, RollbackConfig};
use crate::metrics::accounts::{ttft_histogram, AccountInterval};
use crate::metrics::export::InPlace;
use crate::reload::LiveSettings;

/// A threshold that tripped, with what was measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trip {
    /// Which threshold: `ws_error_rate`, `ws_fallback_rate`, `ws_ttft_p99` or
    /// `ws_added_ttft_p99`.
    pub reason: &'static str,
    /// The value measured over the window (a share, or milliseconds for the p99).
    pub measured: f64,
    /// The configured threshold, in the same unit.
    pub threshold: f64,
    /// The samples the value rests on.
    pub samples: u64,
}

/// One account's window, summed over shards and intervals.
pub struct WindowSums {
    attempts: u64,
    errors: u64,
    fallbacks: u64,
    ttft: Histogram<u64>,
    http_ttft: Histogram<u64>,
}

impl Default for WindowSums {
    fn default() -> Self {
        WindowSums {
            attempts: 0,
            errors: 0,
            fallbacks: 0,
            ttft: ttft_histogram(),
            http_ttft: ttft_histogram(),
        }
    }
}

impl WindowSums {
    fn add(&mut self, i: &AccountInterval) {
        self.attempts += i.ws_attempts;
        self.errors += i.ws_errors;
        self.fallbacks += i.ws_fallbacks;
        i.ws_ttft.add_to(&mut self.ttft);
        i.http_ttft.add_to(&mut self.http_ttft);
    }
}

/// The first threshold `sums` trips under `cfg`, if any: rates need `min_samples` attempts,
/// the p99 `min_samples` answered turns (the added p99 as many on each transport); a value
/// equal to its threshold does not trip.
pub fn verdict(cfg: &RollbackConfig, sums: &WindowSums) -> Option<Trip> {
    let rate = |n: u64| n as f64 / sums.attempts as f64;
    if sums.attempts >= cfg.min_samples {
        let rates = [
            ("ws_error_rate", cfg.ws_error_rate, sums.errors),
            ("ws_fallback_rate", cfg.ws_fallback_rate, sums.fallbacks),
        ];
        for (reason, threshold, n) in rates {
            if let Some(t) = threshold.filter(|t| rate(n) > *t) {
                return Some(Trip {
                    reason,
                    measured: rate(n),
                    threshold: t,
                    samples: sums.attempts,
                });
            }
        }
    }
    let answered = sums.ttft.len();
    if let Some(limit) = cfg.ws_ttft_p99.filter(|_| answered >= cfg.min_samples) {
        let p99 = Duration::from_micros(sums.ttft.value_at_quantile(0.99));
        if p99 > limit {
            return Some(Trip {
                reason: "ws_ttft_p99",
                measured: p99.as_secs_f64() * 1e3,
                threshold: limit.as_secs_f64() * 1e3,
                samples: answered,
            });
        }
    }
    let baseline = sums.http_ttft.len();
    if let Some(limit) = cfg
        .ws_added_ttft_p99
        .filter(|_| answered >= cfg.min_samples && baseline >= cfg.min_samples)
    {
        let ws = sums.ttft.value_at_quantile(0.99);
        let http = sums.http_ttft.value_at_quantile(0.99);
        let added = Duration::from_micros(ws.saturating_sub(http));
        if added > limit {
            return Some(Trip {
                reason: "ws_added_ttft_p99",
                measured: added.as_secs_f64() * 1e3,
                threshold: limit.as_secs_f64() * 1e3,
                samples: answered.min(baseline),
            });
        }
    }
    None
}

/// The control thread's rollback guard.
pub struct RollbackGuard {
    cfg: RollbackConfig,
    live: Arc<LiveSettings>,
    /// Account ids, in config order.
    accounts: Vec<String>,
    /// The shards' intervals, oldest first, stamped with their arrival.
    window: VecDeque<(Instant, AccountInterval)>,
    /// [`LiveSettings::reloads`] when the window started.
    reloads: u64,
    /// `account/reason` → rollbacks so far.
    rollbacks: BTreeMap<String, u64>,
}

impl RollbackGuard {
    /// A guard over `config`'s accounts and `[rollback]` thresholds, acting on `live`.
    pub fn new(config: &Config, live: Arc<LiveSettings>) -> Self {
        RollbackGuard {
            cfg: config.rollback.clone(),
            reloads: live.reloads(),
            live,
            accounts: config.accounts.iter().map(|a| a.id.clone()).collect(),
            window: VecDeque::new(),
            rollbacks: BTreeMap::new(),
        }
    }

    /// Adds a shard's interval (dropped when no threshold is configured, or when it was
    /// measured before the last reload).
    pub fn add(&mut self, now: Instant, intervals: Vec<AccountInterval>) {
        if !self.cfg.enabled() {
            return;
        }
        self.follow_reloads();
        let current = self.reloads;
        self.window.extend(
            intervals
                .into_iter()
                .filter(|i| i.reloads == current)
                .map(|i| (now, i)),
        );
    }

    /// A reload reverted every rollback: the window starts afresh.
    fn follow_reloads(&mut self) {
        let reloads = self.live.reloads();
        if reloads != self.reloads {
            self.reloads = reloads;
            self.window.clear();
        }
    }

    /// Forgets what fell out of the window (everything after a reload) and rolls back every
    /// account on WebSocket whose window trips a threshold.
    pub fn tick(&mut self, now: Instant) {
        self.follow_reloads();
        while let Some((at, _)) = self.window.front() {
            if now.saturating_duration_since(*at) <= self.cfg.window {
                break;
            }
            self.window.pop_front();
        }
        if self.window.is_empty() {
            return;
        }
        let mut sums: Vec<Option<WindowSums>> = (0..self.accounts.len()).map(|_| None).collect();
        for (_, i) in &self.window {
            if let Some(slot) = sums.get_mut(i.account) {
                slot.get_or_insert_with(WindowSums::default).add(i);
            }
        }
        for (index, s) in sums.iter().enumerate() {
            let Some(s) = s else { continue };
            if self.live.account_forced_http(index) {
                continue;
            }
            if let Some(trip) = verdict(&self.cfg, s) {
                self.roll_back(index, trip);
            }
        }
    }

    fn roll_back(&mut self, index: usize, trip: Trip) {
        if !self.live.roll_back(index) {
            return;
        }
        let account = &self.accounts[index];
        tracing::warn!(
            account = %account,
            reason = trip.reason,
            measured = trip.measured,
            threshold = trip.threshold,
            samples = trip.samples,
            window_secs = self.cfg.window.as_secs_f64(),
            "automatic rollback: account moved to HTTP until the next reload"
        );
        *self
            .rollbacks
            .entry(format!("{account}/{}", trip.reason))
            .or_default() += 1;
    }

    /// Writes `rollbacks{account/reason}` and the gauge `account_ws_percent{account}` (the share
    /// of the account's sessions that take WebSocket now: 0 while it is on HTTP).
    pub fn write_labeled(&self, out: &mut InPlace<'_>) {
        out.family(
            "rollbacks",
            self.rollbacks.iter().map(|(k, &v)| (k.as_str(), v)),
        );
        out.family(
            "account_ws_percent",
            self.accounts
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), u64::from(self.live.effective_ws_percent(i)))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Sparse;

    fn cfg() -> RollbackConfig {
        RollbackConfig {
            window: Duration::from_secs(10),
            min_samples: 10,
            ws_error_rate: Some(0.2),
            ws_fallback_rate: Some(0.5),
            ws_ttft_p99: Some(Duration::from_millis(500)),
            ws_added_ttft_p99: None,
        }
    }

    fn interval(account: usize, attempts: u64, errors: u64, ttft_ms: &[u64]) -> AccountInterval {
        let mut h = ttft_histogram();
        for ms in ttft_ms {
            h.record(ms * 1000).unwrap();
        }
        AccountInterval {
            account,
            reloads: 0,
            ws_attempts: attempts,
            ws_errors: errors,
            ws_fallbacks: 0,
            ws_ttft: Sparse::of(&h),
            http_ttft: Sparse::default(),
        }
    }

    fn sums(intervals: &[AccountInterval]) -> WindowSums {
        let mut s = WindowSums::default();
        for i in intervals {
            s.add(i);
        }
        s
    }

    #[test]
    fn thresholds_trip_above_their_value_with_enough_samples() {
        let c = cfg();
        assert_eq!(
            verdict(&c, &sums(&[interval(0, 9, 9, &[])])),
            None,
            "too few"
        );
        assert_eq!(
            verdict(&c, &sums(&[interval(0, 10, 2, &[])])),
            None,
            "at the rate"
        );
        let trip = verdict(&c, &sums(&[interval(0, 6, 2, &[]), interval(0, 4, 1, &[])]))
            .expect("3 of 10 failed");
        assert_eq!(trip.reason, "ws_error_rate");
        assert!((trip.measured - 0.3).abs() < 1e-9 && trip.samples == 10);
        let slow = [400u64; 9]
            .iter()
            .chain(&[2_000])
            .copied()
            .collect::<Vec<_>>();
        let trip = verdict(&c, &sums(&[interval(0, 10, 0, &slow)])).expect("p99 2 s");
        assert_eq!(trip.reason, "ws_ttft_p99");
        assert!(trip.measured >= 1_900.0, "{trip:?}");
        assert_eq!(verdict(&c, &sums(&[interval(0, 10, 0, &[400; 10])])), None);
    }

    #[test]
    fn the_added_p99_compares_websocket_with_the_same_accounts_http_turns() {
        let c = RollbackConfig {
            ws_ttft_p99: None,
            ws_added_ttft_p99: Some(Duration::from_millis(100)),
            ..cfg()
        };
        let with_http = |ws_ms: u64, http_ms: &[u64]| {
            let mut i = interval(0, 10, 0, &[ws_ms; 10]);
            let mut h = ttft_histogram();
            for ms in http_ms {
                h.record(ms * 1000).unwrap();
            }
            i.http_ttft = Sparse::of(&h);
            sums(&[i])
        };
        assert_eq!(
            verdict(&c, &with_http(900, &[850; 10])),
            None,
            "slow on both"
        );
        assert_eq!(
            verdict(&c, &with_http(900, &[100; 9])),
            None,
            "too few HTTP turns to compare with"
        );
        let trip = verdict(&c, &with_http(900, &[100; 10])).expect("800 ms added");
        assert_eq!(trip.reason, "ws_added_ttft_p99");
        assert!((700.0..=900.0).contains(&trip.measured), "{trip:?}");
    }

    #[test]
    fn a_trip_rolls_the_account_back_once_and_a_reload_starts_afresh() {
        let text = "[[client_keys]]\nkey = \"sk-gw\"\n\
             [[accounts]]\nid = \"a0\"\nbase_url = \"http://127.0.0.1:1\"\napi_key = \"sk-0\"\n\
             [[accounts]]\nid = \"a1\"\nbase_url = \"http://127.0.0.1:2\"\napi_key = \"sk-1\"\n\
             [usage]\npath = \"/var/lib/shardgate/usage.jsonl\"\n\
             [rollback]\nwindow_secs = 10\nmin_samples = 10\nws_error_rate = 0.2\n";
        let mut config = Config::parse(text, &|_| None).unwrap();
        let live = Arc::new(LiveSettings::new(&config).unwrap());
        let mut guard = RollbackGuard::new(&config, live.clone());
        let t = Instant::now();
        guard.add(t, vec![interval(0, 10, 0, &[]), interval(1, 10, 5, &[])]);
        guard.tick(t);
        assert!(!live.rolled_back(0) && live.rolled_back(1));
        guard.add(t, vec![interval(1, 10, 10, &[])]);
        guard.tick(t);
        let (mut counters, mut labeled) = Default::default();
        guard.write_labeled(&mut InPlace::new(&mut counters, &mut labeled));
        assert_eq!(labeled["rollbacks"]["a1/ws_error_rate"], 1, "once");
        assert_eq!(labeled["account_ws_percent"]["a0"], 100);
        assert_eq!(labeled["account_ws_percent"]["a1"], 0);

        let same = config.clone();
        crate::reload::apply(&mut config, &same, &live).unwrap();
        assert!(!live.rolled_back(1), "a reload reverts");
        guard.tick(t);
        assert!(!live.rolled_back(1), "the old window is gone");
        guard.add(t, vec![interval(1, 10, 5, &[])]);
        guard.tick(t);
        assert!(
            !live.rolled_back(1),
            "an interval measured before the reload does not count"
        );
        let mut after = interval(1, 10, 5, &[]);
        after.reloads = 1;
        guard.add(t + Duration::from_secs(11), vec![after]);
        guard.tick(t + Duration::from_secs(30));
        assert!(
            !live.rolled_back(1),
            "intervals older than the window do not count"
        );
    }
}
