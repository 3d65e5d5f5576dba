//! The circuit breaker of one account slice on one shard: it opens after N consecutive failures
//! or a failure rate over a window, stays open for a cooldown, then lets exactly one probe
//! through (half-open); the probe's result closes or re-opens it. Plain cells: shard-local.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the instant.
    Open(Instant),
    /// One probe may run; `true` once it is in flight.
    HalfOpen(bool),
}

/// A per-account-slice breaker.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: Cell<BreakerState>,
    consecutive: Cell<u32>,
    window_start: Cell<Instant>,
    window_requests: Cell<u32>,
    window_failures: Cell<u32>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            state: Cell::new(BreakerState::Closed),
            consecutive: Cell::new(0),
            window_start: Cell::new(Instant::now()),
            window_requests: Cell::new(0),
            window_failures: Cell::new(0),
        }
    }

    /// The current state (an open breaker whose cooldown is over reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state.get() {
            BreakerState::Open(until) if now >= until => {
                self.state.set(BreakerState::HalfOpen(false));
                BreakerState::HalfOpen(false)
            }
            s => s,
        }
    }

    /// `true` when the scheduler may pick this account now.
    pub fn is_available(&self, now: Instant) -> bool {
        matches!(
            self.state(now),
            BreakerState::Closed | BreakerState::HalfOpen(false)
        )
    }

    /// Marks the start of an attempt; in half-open state it becomes the single probe.
    pub fn begin(&self, now: Instant) {
        if self.state(now) == BreakerState::HalfOpen(false) {
            self.state.set(BreakerState::HalfOpen(true));
        }
    }

    /// An attempt ended without saying anything about the account (the client left, a fallback,
    /// a request error): a half-open probe slot is given back.
    pub fn abandon(&self) {
        if self.state.get() == BreakerState::HalfOpen(true) {
            self.state.set(BreakerState::HalfOpen(false));
        }
    }

    /// An attempt succeeded: the breaker closes.
    pub fn on_success(&self, now: Instant) {
        self.count(now, false);
        self.consecutive.set(0);
        self.state.set(BreakerState::Closed);
    }

    /// An attempt failed; returns `true` when this failure opened the breaker.
    pub fn on_failure(&self, now: Instant) -> bool {
        self.count(now, true);
        let n = self.consecutive.get() + 1;
        self.consecutive.set(n);
        let open = match self.state(now) {
            BreakerState::HalfOpen(_) => true,
            BreakerState::Open(_) => false,
            BreakerState::Closed => {
                let requests = self.window_requests.get();
                let rate = f64::from(self.window_failures.get()) / f64::from(requests.max(1));
                (self.cfg.consecutive_failures > 0 && n >= self.cfg.consecutive_failures)
                    || (requests >= self.cfg.min_requests.max(1) && rate >= self.cfg.failure_rate)
            }
        };
        if open {
            self.state.set(BreakerState::Open(now + self.cfg.cooldown));
        }
        open
    }

    fn count(&self, now: Instant, failed: bool) {
        if now.duration_since(self.window_start.get())
            >= self.cfg.window.max(Duration::from_millis(1))
        {
            self.window_start.set(now);
            self.window_requests.set(0);
            self.window_failures.set(0);
        }
        self.window_requests.set(self.window_requests.get() + 1);
        if failed {
            self.window_failures.set(self.window_failures.get() + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            cooldown: Duration::from_secs(30),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_then_half_opens_with_one_probe() {
        let b = Breaker::new(cfg());
        let t = Instant::now();
        assert!(!b.on_failure(t));
        assert!(!b.on_failure(t));
        assert!(b.on_failure(t), "third consecutive failure opens");
        assert!(!b.is_available(t));
        assert!(!b.is_available(t + Duration::from_secs(29)));
        let later = t + Duration::from_secs(30);
        assert!(b.is_available(later));
        b.begin(later);
        assert!(!b.is_available(later), "only one probe in half-open");
        assert!(b.on_failure(later), "a failed probe re-opens");
        assert!(!b.is_available(later + Duration::from_secs(1)));
        let again = later + Duration::from_secs(30);
        b.begin(again);
        b.on_success(again);
        assert_eq!(b.state(again), BreakerState::Closed);
        assert!(b.is_available(again));
    }

    #[test]
    fn an_abandoned_probe_frees_the_half_open_slot() {
        let b = Breaker::new(cfg());
        let t = Instant::now();
        for _ in 0..3 {
            b.on_failure(t);
        }
        let later = t + Duration::from_secs(30);
        b.begin(later);
        assert!(!b.is_available(later));
        b.abandon();
        assert!(b.is_available(later));
        b.abandon();
        assert_eq!(b.state(later), BreakerState::HalfOpen(false));
    }

    #[test]
    fn success_resets_the_consecutive_count() {
        let b = Breaker::new(cfg());
        let t = Instant::now();
        b.on_failure(t);
        b.on_failure(t);
        b.on_success(t);
        assert!(!b.on_failure(t));
        assert!(b.is_available(t));
    }

    #[test]
    fn opens_on_failure_rate_over_the_window() {
        let b = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            failure_rate: 0.4,
            ..cfg()
        });
        let t = Instant::now();
        for _ in 0..4 {
            b.on_success(t);
            b.on_failure(t);
        }
        // 8 requests, 4 failures: under min_requests still.
        assert!(b.is_available(t));
        b.on_success(t);
        assert!(b.on_failure(t), "10 requests at 50 % failures is over 40 %");
        assert!(!b.is_available(t));
    }
}
