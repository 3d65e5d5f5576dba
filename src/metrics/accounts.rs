//! Per-account WebSocket health over one stats interval: what a shard counts for the automatic
//! rollback ([`crate::control::rollback`]) and ships in its [`super::ShardSnapshot`].
//!
//! A shard records into plain cells it alone touches ([`AccountTallies`]); the control thread
//! sums the shards' intervals over `[rollback] window_secs`. Nothing here is shared between
//! threads while it is recorded. The TTFTs are counted in the buckets of [`ttft_histogram`]
//! ([`IntervalCounts`] at one significant digit), so an interval's take reads and clears only
//! the buckets it used.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::interval::IntervalCounts;
use super::{Sparse, MAX_US};

/// One account's WebSocket attempts over one interval of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountInterval {
    /// Index of the account in the config's account list.
    pub account: usize,
    /// The reload count ([`crate::reload::LiveSettings::reloads`]) the interval was measured
    /// under: the rollback guard drops intervals from before the last reload.
    pub reloads: u64,
    /// Attempts that went over WebSocket and ended one way or another (a preempted or
    /// abandoned attempt says nothing about the transport and is not counted).
    pub ws_attempts: u64,
    /// Of those, attempts that failed (dial, handshake, close, reset, timeout, 5xx before or
    /// after events reached the client): the WebSocket error rate's numerator.
    pub ws_errors: u64,
    /// Of those, attempts that fell back to HTTP (close 1008, refused upgrade).
    pub ws_fallbacks: u64,
    /// Client TTFT of the turns answered over WebSocket (client frame read → first event
    /// written), microseconds, at one significant digit.
    pub ws_ttft: Sparse,
    /// The same for the account's turns answered over HTTP (the canary's other half): the
    /// baseline of the added-TTFT threshold.
    pub http_ttft: Sparse,
}

impl AccountInterval {
    /// Adds `other` (same account) into this one.
    pub fn add(&mut self, other: &mut AccountInterval) {
        self.ws_attempts += other.ws_attempts;
        self.ws_errors += other.ws_errors;
        self.ws_fallbacks += other.ws_fallbacks;
        self.ws_ttft.append(&mut other.ws_ttft);
        self.http_ttft.append(&mut other.http_ttft);
    }
}

/// How one WebSocket attempt ended, as the rollback counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsResult {
    /// Upstream answered (a terminal event, an error event, a chain error); `ttft` when the
    /// client got its first event from this attempt.
    Answered {
        /// Client frame read → first event written, when the client got one.
        ttft: Option<Duration>,
    },
    /// The attempt failed on the transport or upstream.
    Error,
    /// The attempt fell back to HTTP.
    Fallback,
}

/// A histogram of TTFTs at one significant digit: ~3.7 KB, enough for a p99 threshold.
pub fn ttft_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, TTFT_DIGITS).expect("constant histogram bounds are valid")
}

/// The significant digits of [`ttft_histogram`].
const TTFT_DIGITS: u8 = 1;

#[derive(Default)]
struct Tally {
    ws_attempts: u64,
    ws_errors: u64,
    ws_fallbacks: u64,
    ws_ttft: IntervalCounts<TTFT_DIGITS>,
    http_ttft: IntervalCounts<TTFT_DIGITS>,
}

/// One shard's per-account tallies for the current interval. Not `Sync`: only the owning
/// shard records.
pub struct AccountTallies {
    tallies: RefCell<Vec<Tally>>,
    /// The reload count the current tallies were measured under.
    reloads: Cell<u64>,
}

impl AccountTallies {
    /// Tallies for `accounts` accounts, all empty.
    pub fn new(accounts: usize) -> Self {
        AccountTallies {
            tallies: RefCell::new((0..accounts).map(|_| Tally::default()).collect()),
            reloads: Cell::new(0),
        }
    }

    /// Counts one WebSocket attempt of account `account`. No allocation.
    pub fn record_ws(&self, account: usize, result: WsResult) {
        let mut tallies = self.tallies.borrow_mut();
        let Some(t) = tallies.get_mut(account) else {
            return;
        };
        t.ws_attempts += 1;
        match result {
            WsResult::Answered { ttft } => {
                if let Some(d) = ttft {
                    record_ttft(&mut t.ws_ttft, d);
                }
            }
            WsResult::Error => t.ws_errors += 1,
            WsResult::Fallback => t.ws_fallbacks += 1,
        }
    }

    /// Records the client TTFT of a turn of account `account` answered over HTTP. No
    /// allocation.
    pub fn record_http_ttft(&self, account: usize, ttft: Duration) {
        if let Some(t) = self.tallies.borrow_mut().get_mut(account) {
            record_ttft(&mut t.http_ttft, ttft);
        }
    }

    /// Takes the interval of every account that had WebSocket attempts or HTTP answers, and
    /// empties them.
    /// `reloads` is the reload count now: when it moved since the last take, the tallies may
    /// hold attempts from before the reload (which reverted every rollback), so they are
    /// dropped instead of shipped.
    pub fn take_interval(&self, reloads: u64) -> Vec<AccountInterval> {
        let mut tallies = self.tallies.borrow_mut();
        let stale = self.reloads.replace(reloads) != reloads;
        let mut out = Vec::new();
        for (account, t) in tallies.iter_mut().enumerate() {
            if t.ws_attempts == 0 && t.http_ttft.is_empty() {
                continue;
            }
            if !stale {
                out.push(AccountInterval {
                    account,
                    reloads,
                    ws_attempts: t.ws_attempts,
                    ws_errors: t.ws_errors,
                    ws_fallbacks: t.ws_fallbacks,
                    ws_ttft: t.ws_ttft.take(),
                    http_ttft: t.http_ttft.take(),
                });
            } else {
                t.ws_ttft.take();
                t.http_ttft.take();
            }
            t.ws_attempts = 0;
            t.ws_errors = 0;
            t.ws_fallbacks = 0;
        }
        out
    }
}

/// Records `d` in microseconds, clamped to the histogram's bounds.
fn record_ttft(h: &mut IntervalCounts<TTFT_DIGITS>, d: Duration) {
    h.record_n(d.as_micros().min(u128::from(MAX_US)) as u64, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_are_taken_per_account_and_emptied() {
        let t = AccountTallies::new(3);
        t.record_ws(
            1,
            WsResult::Answered {
                ttft: Some(Duration::from_millis(40)),
            },
        );
        t.record_ws(1, WsResult::Error);
        t.record_ws(1, WsResult::Fallback);
        t.record_ws(1, WsResult::Answered { ttft: None });
        t.record_ws(9, WsResult::Error);
        t.record_http_ttft(2, Duration::from_millis(30));
        let taken = t.take_interval(0);
        assert_eq!(
            taken.len(),
            2,
            "only accounts with attempts or answers ship"
        );
        assert_eq!((taken[1].account, taken[1].ws_attempts), (2, 0));
        assert!(!taken[1].http_ttft.is_empty());
        let a = &taken[0];
        assert_eq!(
            (a.account, a.ws_attempts, a.ws_errors, a.ws_fallbacks),
            (1, 4, 1, 1)
        );
        let mut h = ttft_histogram();
        a.ws_ttft.add_to(&mut h);
        assert_eq!(h.len(), 1);
        assert!(t.take_interval(0).is_empty(), "emptied by the take");
        t.record_ws(2, WsResult::Error);
        assert!(
            t.take_interval(1).is_empty(),
            "attempts from before a reload are dropped"
        );
        t.record_ws(2, WsResult::Error);
        assert_eq!(t.take_interval(1)[0].reloads, 1);
    }

    #[test]
    fn ttfts_ship_as_the_histogram_would_hold_them() {
        let t = AccountTallies::new(1);
        let (mut ws, mut http) = (ttft_histogram(), ttft_histogram());
        let us = [
            0,
            1,
            9,
            10,
            17,
            31,
            32,
            33,
            999,
            40_000,
            123_456,
            MAX_US,
            u64::MAX,
        ];
        for (k, &v) in us.iter().enumerate() {
            let d = Duration::from_micros(v);
            let h = if k % 2 == 0 { &mut ws } else { &mut http };
            h.record(v.clamp(1, MAX_US)).unwrap();
            h.record(v.clamp(1, MAX_US)).unwrap();
            for _ in 0..2 {
                if k % 2 == 0 {
                    t.record_ws(0, WsResult::Answered { ttft: Some(d) });
                } else {
                    t.record_http_ttft(0, d);
                }
            }
        }
        let taken = t.take_interval(0);
        assert_eq!(taken[0].ws_ttft, Sparse::of(&ws));
        assert_eq!(taken[0].http_ttft, Sparse::of(&http));
        t.record_http_ttft(0, Duration::from_micros(5));
        assert_eq!(t.take_interval(1), [], "dropped after a reload");
        t.record_http_ttft(0, Duration::from_micros(7));
        let mut h = ttft_histogram();
        h.record(7).unwrap();
        assert_eq!(
            t.take_interval(1)[0].http_ttft,
            Sparse::of(&h),
            "nothing left over"
        );
    }
}
