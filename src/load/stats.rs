//! Histograms and counters of a run, kept per executor thread and merged at the end.

use std::collections::BTreeMap;

use hdrhistogram::errors::AdditionError;
use hdrhistogram::Histogram;

/// Highest value the histograms hold exactly (10 minutes in µs); larger values saturate.
const MAX_US: u64 = 600_000_000;

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min at 3 significant digits: the bounds are constant and valid.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// What one thread (or the whole run, after [`Stats::merge`]) measured.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Frame written → first `*.delta`, µs.
    pub ttft_us: Histogram<u64>,
    /// Receive wall clock − `mock_ts_us`, µs, for every stamped event.
    pub event_latency_us: Histogram<u64>,
    /// Frame written → terminal event of a turn, µs.
    pub turn_us: Histogram<u64>,
    /// Frame written → terminal event of a warm-up, µs.
    pub warmup_us: Histogram<u64>,
    /// TCP connect plus WebSocket handshake of successful connects, µs.
    pub connect_us: Histogram<u64>,
    /// Connect start → terminal event of the first turn on that connection, µs.
    pub first_turn_us: Histogram<u64>,
    /// Turns ended by `response.completed`.
    pub turns_ok: u64,
    /// Turns that failed (error event, close, timeout, failed connect or warm-up).
    pub turns_failed: u64,
    /// Warm-ups ended by `response.completed`.
    pub warmups_ok: u64,
    /// Server events received.
    pub events: u64,
    /// Connections opened (the first of each session and every reconnect).
    pub connects: u64,
    /// Idle mode: connections that were open at the same time.
    pub idle_open: u64,
    /// Errors by key: `error.code`, `close_<code>`, `connect_*`, `turn_timeout`, ...
    pub errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ttft_us: histogram(),
            event_latency_us: histogram(),
            turn_us: histogram(),
            warmup_us: histogram(),
            connect_us: histogram(),
            first_turn_us: histogram(),
            turns_ok: 0,
            turns_failed: 0,
            warmups_ok: 0,
            events: 0,
            connects: 0,
            idle_open: 0,
            errors: BTreeMap::new(),
        }
    }
}

/// Records `value` (µs), saturating at the histogram's top and at 1 µs below.
pub fn record(h: &mut Histogram<u64>, value: u64) {
    h.saturating_record(value.clamp(1, MAX_US));
}

impl Stats {
    /// Counts one error under `key`.
    pub fn error(&mut self, key: String) {
        *self.errors.entry(key).or_default() += 1;
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) -> Result<(), AdditionError> {
        self.ttft_us.add(&other.ttft_us)?;
        self.event_latency_us.add(&other.event_latency_us)?;
        self.turn_us.add(&other.turn_us)?;
        self.warmup_us.add(&other.warmup_us)?;
        self.connect_us.add(&other.connect_us)?;
        self.first_turn_us.add(&other.first_turn_us)?;
        self.turns_ok += other.turns_ok;
        self.turns_failed += other.turns_failed;
        self.warmups_ok += other.warmups_ok;
        self.events += other.events;
        self.connects += other.connects;
        self.idle_open += other.idle_open;
        for (key, n) in &other.errors {
            *self.errors.entry(key.clone()).or_default() += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_everything() {
        let mut a = Stats::default();
        record(&mut a.ttft_us, 100);
        record(&mut a.turn_us, 0);
        a.turns_ok = 2;
        a.events = 10;
        a.error("close_1006".into());
        let mut b = Stats::default();
        record(&mut b.ttft_us, 300);
        record(&mut b.event_latency_us, u64::MAX);
        record(&mut b.connect_us, 50);
        b.turns_ok = 3;
        b.turns_failed = 1;
        b.connects = 4;
        b.error("close_1006".into());
        b.error("turn_timeout".into());
        a.merge(&b).unwrap();
        assert_eq!(a.ttft_us.len(), 2);
        assert_eq!(a.turn_us.min(), 1);
        assert_eq!(a.connect_us.len(), 1);
        assert!(a.event_latency_us.max() >= MAX_US);
        assert_eq!(
            (a.turns_ok, a.turns_failed, a.events, a.connects),
            (5, 1, 10, 4)
        );
        assert_eq!(a.errors["close_1006"], 2);
        assert_eq!(a.errors["turn_timeout"], 1);
    }
}
