//! What a preemption may cost: a client that sends `response.create` after `response.create`
//! must not make the gateway dial upstream once per frame.
//!
//! A preempted response whose frame went upstream leaves its connection in an unknown state
//! until its terminal event: the connection is closed (and the next turn dials) or read to that
//! event without relaying it (and reused). Each session may close [`BURST`] connections at
//! once, earning one more every [`REFILL`]; past that a preempted response is drained, for at
//! most [`DRAIN_LIMIT`], while the new turn waits. A preempted turn whose frame had not gone
//! upstream yet, or whose terminal event was already read, costs nothing.

use std::time::{Duration, Instant};

/// Labeled-counter family of preemptions by how the preempted response was left: `unsent`
/// (its frame never went upstream), `settled` (its terminal event was already buffered),
/// `discarded` (connection closed at once), `drained` (read to its terminal event, past the
/// burst), `drain_failed` (the drain ran out of time or failed: connection closed).
pub const PREEMPTIONS: &str = "preemptions";

/// Connections a session may close at once on preemption before it has to drain.
pub const BURST: u32 = 4;

/// How often a session earns back one immediate close.
pub const REFILL: Duration = Duration::from_secs(2);

/// Longest wait for a drained response's terminal event before its connection is closed.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// One session's budget of connections closed at once on preemption (a token bucket).
#[derive(Debug, Clone, Copy)]
pub struct PreemptBudget {
    tokens: u32,
    /// When the tokens were last topped up.
    refilled_at: Instant,
}

impl PreemptBudget {
    /// A full budget.
    pub fn new(now: Instant) -> Self {
        PreemptBudget {
            tokens: BURST,
            refilled_at: now,
        }
    }

    /// Takes one immediate close, if the budget has one left; `false`: drain instead.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = u32::try_from(elapsed.as_nanos() / REFILL.as_nanos()).unwrap_or(u32::MAX);
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(BURST);
            self.refilled_at = if self.tokens == BURST {
                now
            } else {
                self.refilled_at + REFILL * earned
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_refill() {
        let start = Instant::now();
        let mut budget = PreemptBudget::new(start);
        for _ in 0..BURST {
            assert!(budget.take(start));
        }
        assert!(!budget.take(start));
        assert!(!budget.take(start + REFILL / 2));
        assert!(budget.take(start + REFILL));
        assert!(!budget.take(start + REFILL));
        // A long quiet spell earns back the burst, never more.
        let later = start + REFILL * 100;
        for _ in 0..BURST {
            assert!(budget.take(later));
        }
        assert!(!budget.take(later));
    }
}
