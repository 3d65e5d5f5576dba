//! One histogram's counts for the current stats interval on a shard: recorded in O(1) into the
//! same buckets an HdrHistogram with the gateway's bounds uses, and taken in time proportional
//! to the buckets the interval touched.
//!
//! An `hdrhistogram::Histogram` has no way to clear only what was recorded: taking an interval
//! from one walked every bucket up to its largest value (`iter_recorded`) and then zeroed all
//! ~23,500 counts (~190 KB) of every histogram that recorded anything, every
//! `stats_interval_ms`. Here a bitmap (one bit per bucket, ~3 KB) says which counts are set, so
//! taking reads and zeroes only those. The bucket layout is HdrHistogram's for
//! 1 µs ..= [`MAX_US`] with 3 significant digits; a test checks it bucket by bucket against the
//! crate.

use super::{Sparse, MAX_US};

/// `sub_bucket_half_count` = 1024 buckets per half: 3 significant digits need 2000 sub-buckets,
/// rounded up to 2048.
const HALF_MAGNITUDE: u32 = 10;
const HALF_COUNT: usize = 1 << HALF_MAGNITUDE;
/// Values below 2048 are their own bucket.
const SUB_BUCKET_MASK: u64 = (2 * HALF_COUNT as u64) - 1;
/// 64 − unit magnitude (0: the lowest value is 1) − `HALF_MAGNITUDE` − 1.
const LEADING_ZERO_BASE: u32 = 64 - HALF_MAGNITUDE - 1;
/// Buckets needed to cover [`MAX_US`] (values are clamped to it): its index, plus one.
const LEN: usize = index(MAX_US) + 1;
const WORDS: usize = LEN.div_ceil(64);

/// The power-of-two bucket of `v` (each holds twice the values of the one before).
const fn bucket(v: u64) -> u32 {
    LEADING_ZERO_BASE - (v | SUB_BUCKET_MASK).leading_zeros()
}

/// The count index of `v` (1 ..= [`MAX_US`]).
const fn index(v: u64) -> usize {
    let b = bucket(v);
    let sub = (v >> b) as usize;
    ((b as usize + 1) << HALF_MAGNITUDE) + sub - HALF_COUNT
}

/// The highest value of the bucket at `index` (what `iter_recorded` reports as
/// `value_iterated_to`).
fn highest_value(index: usize) -> u64 {
    let (b, sub) = match (index >> HALF_MAGNITUDE).checked_sub(1) {
        Some(b) => (b as u32, (index & (HALF_COUNT - 1)) + HALF_COUNT),
        None => (0, index & (HALF_COUNT - 1)),
    };
    let lowest = (sub as u64) << b;
    lowest + (1u64 << bucket(lowest)) - 1
}

/// One histogram's interval counts.
pub struct IntervalCounts {
    counts: Box<[u64]>,
    /// Bit `i` set: `counts[i]` is not zero.
    touched: Box<[u64]>,
    /// Values recorded since the last take.
    recorded: u64,
}

impl Default for IntervalCounts {
    fn default() -> Self {
        IntervalCounts {
            counts: vec![0; LEN].into_boxed_slice(),
            touched: vec![0; WORDS].into_boxed_slice(),
            recorded: 0,
        }
    }
}

impl IntervalCounts {
    /// Records `n` occurrences of `v`, clamped to 1 ..= [`MAX_US`]. No allocation.
    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        let i = index(v.clamp(1, MAX_US));
        self.counts[i] = self.counts[i].saturating_add(n);
        self.touched[i / 64] |= 1 << (i % 64);
        self.recorded = self.recorded.saturating_add(n);
    }

    /// The interval's buckets (as [`Sparse::of`] would give for a histogram holding the same
    /// values), leaving the counts empty.
    pub fn take(&mut self) -> Sparse {
        if self.recorded == 0 {
            return Sparse::default();
        }
        self.recorded = 0;
        let mut out = Vec::new();
        for (w, word) in self.touched.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                out.push((highest_value(i), std::mem::take(&mut self.counts[i])));
            }
        }
        Sparse(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::new_histogram;

    /// The values to compare at: every value up to 300,000, then every bucket edge (and its
    /// neighbours) up to the top, then the top.
    fn sweep() -> Vec<u64> {
        let mut vs: Vec<u64> = (1..=300_000).collect();
        let h = new_histogram();
        let mut v = 300_000;
        while v < MAX_US {
            let next = h.next_non_equivalent(v);
            vs.extend([next - 1, next, next + 1, next + (next - v) / 2]);
            v = next;
        }
        vs.extend([MAX_US - 1, MAX_US]);
        vs.retain(|&v| v <= MAX_US);
        vs
    }

    #[test]
    fn buckets_are_hdrhistograms() {
        let h = new_histogram();
        assert!(LEN <= h.distinct_values());
        for v in sweep() {
            let i = index(v);
            assert_eq!(highest_value(i), h.highest_equivalent(v), "value {v}");
        }
    }

    #[test]
    fn takes_what_an_hdrhistogram_holds_and_starts_over() {
        let mut ours = IntervalCounts::default();
        let mut theirs = new_histogram();
        for (k, v) in sweep().into_iter().enumerate() {
            let n = (k % 3) as u64 + 1;
            ours.record_n(v, n);
            theirs.record_n(v, n).unwrap();
        }
        assert_eq!(ours.take(), Sparse::of(&theirs));
        assert!(ours.take().is_empty());
        assert!(ours.counts.iter().all(|&c| c == 0));
        ours.record_n(0, 1);
        ours.record_n(u64::MAX, 2);
        ours.record_n(77, 0);
        let mut theirs = new_histogram();
        theirs.record(1).unwrap();
        theirs.record_n(MAX_US, 2).unwrap();
        assert_eq!(ours.take(), Sparse::of(&theirs));
    }
}
