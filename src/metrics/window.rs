//! The rolling window: the last `stats_window` of shard intervals, as a ring of slots.
//!
//! A full 1 µs .. 1 h histogram at 3 significant digits is ~190 KB, so slots keep only the
//! buckets an interval actually recorded ([`Sparse`]); full histograms are rebuilt when someone
//! asks. Counters are totals since start, so the window's counters are the latest totals minus
//! a per-shard baseline: the totals at the end of the newest slot that left the window.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{new_histogram, Hist, Sparse};

/// Counter totals of one shard, as shipped in its snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterSet {
    /// Plain counters and gauges.
    pub plain: Vec<(&'static str, u64)>,
    /// Labeled counters: `(family, label, value)`.
    pub labeled: Vec<(&'static str, String, u64)>,
}

/// One shard's part of a slot.
#[derive(Debug, Clone, Default)]
struct ShardSlot {
    hists: Vec<Sparse>,
    /// The shard's totals as of its last snapshot in this slot (shared with the aggregator's
    /// latest totals: kept without a copy).
    end: Option<Arc<CounterSet>>,
}

/// One `slot_len` of time.
#[derive(Debug)]
struct Slot {
    /// Slot number since the window's epoch.
    index: u64,
    shards: Vec<ShardSlot>,
}

/// The rolling window over every shard.
#[derive(Debug)]
pub struct Window {
    epoch: Instant,
    slot_len: Duration,
    capacity: usize,
    ring: VecDeque<Slot>,
    baseline: Vec<Arc<CounterSet>>,
    /// When the window last started empty (start or `reset`).
    since: Instant,
}

impl Window {
    /// A window of `length` made of `slot_len` slots, for `shards` shards.
    pub fn new(shards: usize, slot_len: Duration, length: Duration, now: Instant) -> Self {
        let slot_len = slot_len.max(Duration::from_millis(1));
        let capacity = (length.as_nanos().div_ceil(slot_len.as_nanos())).max(1) as usize;
        Window {
            epoch: now,
            slot_len,
            capacity,
            ring: VecDeque::with_capacity(capacity + 1),
            baseline: vec![Arc::default(); shards],
            since: now,
        }
    }

    /// The time the window covers now: its full length, or less since start or a reset.
    pub fn covered(&self, now: Instant) -> Duration {
        (self.slot_len * self.capacity as u32).min(now.saturating_duration_since(self.since))
    }

    fn index_at(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.slot_len.as_nanos()) as u64
    }

    /// Drops slots that fell out of the window, moving their counters into the baseline.
    pub fn advance(&mut self, now: Instant) {
        let current = self.index_at(now);
        let keep_from = current.saturating_sub(self.capacity as u64 - 1);
        while self.ring.front().is_some_and(|s| s.index < keep_from) {
            if let Some(old) = self.ring.pop_front() {
                for (base, shard) in self.baseline.iter_mut().zip(old.shards) {
                    if let Some(end) = shard.end {
                        *base = end;
                    }
                }
            }
        }
    }

    /// Adds one shard interval to the current slot.
    pub fn add(
        &mut self,
        shard: usize,
        mut hists: Vec<Sparse>,
        counters: &Arc<CounterSet>,
        now: Instant,
    ) {
        if shard >= self.baseline.len() {
            return;
        }
        self.advance(now);
        let index = self.index_at(now);
        if self.ring.back().is_none_or(|s| s.index != index) {
            self.ring.push_back(Slot {
                index,
                shards: vec![ShardSlot::default(); self.baseline.len()],
            });
        }
        let Some(slot) = self.ring.back_mut() else {
            return;
        };
        let part = &mut slot.shards[shard];
        if part.hists.is_empty() {
            part.hists = hists;
        } else {
            for (sparse, h) in part.hists.iter_mut().zip(hists.iter_mut()) {
                sparse.append(h);
            }
        }
        part.end = Some(counters.clone());
    }

    /// Empties the window; counters restart from `latest`.
    pub fn reset(&mut self, latest: &[Arc<CounterSet>], now: Instant) {
        self.ring.clear();
        self.baseline = latest.to_vec();
        self.since = now;
    }

    /// The baseline counters of `shard` (what the window's counters are measured from).
    pub fn baseline(&self, shard: usize) -> Option<&CounterSet> {
        self.baseline.get(shard).map(|b| &**b)
    }

    /// Full histograms of `shard` over the window, indexed like [`Hist::ALL`].
    #[cfg(test)]
    pub fn shard_hists(&self, shard: usize) -> Vec<Histogram<u64>> {
        let mut out = super::new_set();
        self.shard_hists_into(shard, &mut out);
        out
    }

    /// Full histograms of `shard` over the window into `out` (a set from [`new_set`], indexed
    /// like [`Hist::ALL`]; cleared first), so one set serves every shard.
    pub fn shard_hists_into(&self, shard: usize, out: &mut [Histogram<u64>]) {
        for h in out.iter_mut() {
            h.reset();
        }
        for slot in &self.ring {
            if let Some(part) = slot.shards.get(shard) {
                for (h, sparse) in out.iter_mut().zip(&part.hists) {
                    sparse.add_to(h);
                }
            }
        }
    }

    /// One histogram merged over shards, per slot, oldest first: `(slot start since the
    /// window's epoch, histogram)`. For interval logs.
    pub fn intervals(&self, hist: Hist) -> Vec<(Duration, Histogram<u64>)> {
        self.ring
            .iter()
            .map(|slot| {
                let mut h = new_histogram();
                for part in &slot.shards {
                    if let Some(sparse) = part.hists.get(hist as usize) {
                        sparse.add_to(&mut h);
                    }
                }
                (self.slot_start(slot.index), h)
            })
            .collect()
    }

    /// Where slot `index` starts, from the window's epoch.
    fn slot_start(&self, index: u64) -> Duration {
        Duration::from_nanos((self.slot_len.as_nanos() as u64).saturating_mul(index))
    }

    /// The window's epoch (slot 0 starts here).
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Length of one slot.
    pub fn slot_len(&self) -> Duration {
        self.slot_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hists_with(hist: Hist, values: &[u64]) -> Vec<Sparse> {
        let mut h = new_histogram();
        for v in values {
            h.record(*v).unwrap();
        }
        let mut hs = vec![Sparse::default(); Hist::ALL.len()];
        hs[hist as usize] = Sparse::of(&h);
        hs
    }

    fn counters(turns: u64) -> Arc<CounterSet> {
        Arc::new(CounterSet {
            plain: vec![("turns", turns)],
            labeled: vec![],
        })
    }

    #[test]
    fn old_slots_leave_and_their_counters_become_the_baseline() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut w = Window::new(2, sec, Duration::from_secs(3), t0);
        w.add(0, hists_with(Hist::ClientTtft, &[100]), &counters(1), t0);
        w.add(1, hists_with(Hist::ClientTtft, &[200]), &counters(4), t0);
        w.add(
            0,
            hists_with(Hist::ClientTtft, &[300]),
            &counters(5),
            t0 + sec,
        );
        assert_eq!(w.shard_hists(0)[Hist::ClientTtft as usize].len(), 2);
        assert_eq!(w.intervals(Hist::ClientTtft).len(), 2);
        assert_eq!(w.intervals(Hist::ClientTtft)[0].1.len(), 2);

        // Slot 0 leaves when slot 3 begins.
        w.advance(t0 + sec * 3);
        assert_eq!(w.shard_hists(0)[Hist::ClientTtft as usize].len(), 1);
        assert_eq!(w.shard_hists(1)[Hist::ClientTtft as usize].len(), 0);
        assert_eq!(w.baseline(0), Some(&*counters(1)));
        assert_eq!(w.baseline(1), Some(&*counters(4)));
        assert_eq!(w.covered(t0 + sec * 3), sec * 3);
    }

    #[test]
    fn reset_empties_and_rebases() {
        let t0 = Instant::now();
        let mut w = Window::new(1, Duration::from_secs(1), Duration::from_secs(60), t0);
        w.add(0, hists_with(Hist::DialWs, &[10]), &counters(3), t0);
        w.reset(&[counters(3)], t0 + Duration::from_millis(500));
        assert!(w.shard_hists(0)[Hist::DialWs as usize].is_empty());
        assert_eq!(w.baseline(0), Some(&*counters(3)));
        assert_eq!(
            w.covered(t0 + Duration::from_millis(700)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn unknown_shard_is_ignored() {
        let t0 = Instant::now();
        let mut w = Window::new(1, Duration::from_secs(1), Duration::from_secs(5), t0);
        w.add(7, hists_with(Hist::DialWs, &[10]), &counters(1), t0);
        assert!(w.intervals(Hist::DialWs).is_empty());
    }
}
