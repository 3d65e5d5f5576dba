//! One histogram's counts for the current stats interval on a shard: recorded in O(1) into the
//! same buckets an HdrHistogram with the gateway's bounds uses, and taken in time proportional
//! to the buckets the interval touched.
//!
//! An `hdrhistogram::Histogram` has no way to clear only what was recorded: taking an interval
//! from one walked every bucket up to its largest value (`iter_recorded`) and then zeroed all
//! its counts (~190 KB at 3 significant digits), every `stats_interval_ms`. Here a bitmap (one
//! bit per bucket, ~3 KB) says which counts are set, and a second one (one bit per word of the
//! first) which of its words are, so taking reads and zeroes only those. The bucket layout is
//! HdrHistogram's for 1 µs ..= [`MAX_US`] with the given significant digits (3 for the shard's
//! latency histograms, 1 for the accounts' TTFTs); a test checks it bucket by bucket against
//! the crate.

use super::{Sparse, MAX_US};

/// `sub_bucket_half_count`'s magnitude for `digits` significant digits, as HdrHistogram
/// computes it: `2 × 10^digits` sub-buckets rounded up to a power of two, halved (3 digits:
/// 2000 → 2048, 1024 per half; 1 digit: 20 → 32, 16 per half).
const fn half_magnitude(digits: u8) -> u32 {
    let needed = 2 * 10u64.pow(digits as u32);
    u64::BITS - (needed - 1).leading_zeros() - 1
}

/// One histogram's interval counts, in the buckets of an HdrHistogram with bounds
/// 1 ..= [`MAX_US`] and `DIGITS` significant digits.
pub struct IntervalCounts<const DIGITS: u8 = 3> {
    counts: Box<[u64]>,
    /// Bit `i` set: `counts[i]` is not zero.
    touched: Box<[u64]>,
    /// Bit `w` set: `touched[w]` is not zero (so a take reads only the words in use).
    words: Box<[u64]>,
    /// Values recorded since the last take.
    recorded: u64,
}

impl<const DIGITS: u8> IntervalCounts<DIGITS> {
    const HALF_MAGNITUDE: u32 = half_magnitude(DIGITS);
    const HALF_COUNT: usize = 1 << Self::HALF_MAGNITUDE;
    /// Values below twice the half count are their own bucket.
    const SUB_BUCKET_MASK: u64 = (2 * Self::HALF_COUNT as u64) - 1;
    /// 64 − unit magnitude (0: the lowest value is 1) − `HALF_MAGNITUDE` − 1.
    const LEADING_ZERO_BASE: u32 = 64 - Self::HALF_MAGNITUDE - 1;
    /// Buckets needed to cover [`MAX_US`] (values are clamped to it): its index, plus one.
    const LEN: usize = Self::index(MAX_US) + 1;
    const WORDS: usize = Self::LEN.div_ceil(64);

    /// The power-of-two bucket of `v` (each holds twice the values of the one before).
    const fn bucket(v: u64) -> u32 {
        Self::LEADING_ZERO_BASE - (v | Self::SUB_BUCKET_MASK).leading_zeros()
    }

    /// The count index of `v` (1 ..= [`MAX_US`]).
    const fn index(v: u64) -> usize {
        let b = Self::bucket(v);
        let sub = (v >> b) as usize;
        ((b as usize + 1) << Self::HALF_MAGNITUDE) + sub - Self::HALF_COUNT
    }

    /// The highest value of the bucket at `index` (what `iter_recorded` reports as
    /// `value_iterated_to`).
    fn highest_value(index: usize) -> u64 {
        let (b, sub) = match (index >> Self::HALF_MAGNITUDE).checked_sub(1) {
            Some(b) => (
                b as u32,
                (index & (Self::HALF_COUNT - 1)) + Self::HALF_COUNT,
            ),
            None => (0, index & (Self::HALF_COUNT - 1)),
        };
        let lowest = (sub as u64) << b;
        lowest + (1u64 << Self::bucket(lowest)) - 1
    }

    /// Records `n` occurrences of `v`, clamped to 1 ..= [`MAX_US`]. No allocation.
    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        let i = Self::index(v.clamp(1, MAX_US));
        self.counts[i] = self.counts[i].saturating_add(n);
        let w = i / 64;
        self.touched[w] |= 1 << (i % 64);
        self.words[w / 64] |= 1 << (w % 64);
        self.recorded = self.recorded.saturating_add(n);
    }

    /// `true` when nothing was recorded since the last take.
    pub fn is_empty(&self) -> bool {
        self.recorded == 0
    }

    /// The interval's buckets (as [`Sparse::of`] would give for a histogram holding the same
    /// values), leaving the counts empty. Reads only the words of the bitmap in use.
    pub fn take(&mut self) -> Sparse {
        if self.recorded == 0 {
            return Sparse::default();
        }
        self.recorded = 0;
        let mut out = Vec::with_capacity(self.buckets());
        for (ww, summary) in self.words.iter_mut().enumerate() {
            let mut words = std::mem::take(summary);
            while words != 0 {
                let w = ww * 64 + words.trailing_zeros() as usize;
                words &= words - 1;
                let mut bits = std::mem::take(&mut self.touched[w]);
                while bits != 0 {
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    out.push((Self::highest_value(i), std::mem::take(&mut self.counts[i])));
                }
            }
        }
        Sparse(out)
    }
}

impl<const DIGITS: u8> IntervalCounts<DIGITS> {
    /// How many buckets are set (what a take returns), from the words in use: the take's
    /// vector is sized once instead of growing.
    fn buckets(&self) -> usize {
        let mut n = 0;
        for (ww, &summary) in self.words.iter().enumerate() {
            let mut words = summary;
            while words != 0 {
                n += self.touched[ww * 64 + words.trailing_zeros() as usize].count_ones() as usize;
                words &= words - 1;
            }
        }
        n
    }
}

impl<const DIGITS: u8> Default for IntervalCounts<DIGITS> {
    fn default() -> Self {
        IntervalCounts {
            counts: vec![0; Self::LEN].into_boxed_slice(),
            touched: vec![0; Self::WORDS].into_boxed_slice(),
            words: vec![0; Self::WORDS.div_ceil(64)].into_boxed_slice(),
            recorded: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::accounts::ttft_histogram;
    use crate::metrics::new_histogram;
    use hdrhistogram::Histogram;

    /// The values to compare at for histograms shaped like `h`: every value up to 300,000, then
    /// every bucket edge (and its neighbours) up to the top, then the top.
    fn sweep(h: &Histogram<u64>) -> Vec<u64> {
        let mut vs: Vec<u64> = (1..=300_000).collect();
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

    fn buckets_match<const D: u8>(h: &Histogram<u64>) {
        assert!(IntervalCounts::<D>::LEN <= h.distinct_values());
        for v in sweep(h) {
            let i = IntervalCounts::<D>::index(v);
            assert_eq!(
                IntervalCounts::<D>::highest_value(i),
                h.highest_equivalent(v),
                "value {v}, {D} digits"
            );
        }
    }

    #[test]
    fn buckets_are_hdrhistograms() {
        assert_eq!(half_magnitude(3), 10);
        assert_eq!(half_magnitude(1), 4);
        buckets_match::<3>(&new_histogram());
        buckets_match::<1>(&ttft_histogram());
    }

    /// Every array of `c` is zero again.
    fn all_clear<const D: u8>(c: &IntervalCounts<D>) -> bool {
        c.counts
            .iter()
            .chain(&*c.touched)
            .chain(&*c.words)
            .all(|&x| x == 0)
            && c.is_empty()
    }

    fn takes_like<const D: u8>(fresh: fn() -> Histogram<u64>) {
        let mut ours = IntervalCounts::<D>::default();
        let mut theirs = fresh();
        for (k, v) in sweep(&theirs).into_iter().enumerate() {
            let n = (k % 3) as u64 + 1;
            ours.record_n(v, n);
            theirs.record_n(v, n).unwrap();
        }
        let buckets = ours.buckets();
        let took = ours.take();
        assert_eq!(took.0.len(), buckets);
        assert_eq!(took, Sparse::of(&theirs));
        assert!(ours.take().is_empty());
        assert!(all_clear(&ours));
        ours.record_n(0, 1);
        ours.record_n(u64::MAX, 2);
        ours.record_n(77, 0);
        let mut theirs = fresh();
        theirs.record(1).unwrap();
        theirs.record_n(MAX_US, 2).unwrap();
        assert_eq!(ours.take(), Sparse::of(&theirs));
        assert!(all_clear(&ours));
    }

    #[test]
    fn takes_what_an_hdrhistogram_holds_and_starts_over() {
        takes_like::<3>(new_histogram);
        takes_like::<1>(ttft_histogram);
    }

    /// A few buckets at a time, at and around every boundary of the two bitmaps (a bucket at
    /// each end of a `touched` word, a word at each end of a `words` word): each take gives
    /// exactly those buckets and leaves nothing behind.
    fn sparse_takes_like<const D: u8>(fresh: fn() -> Histogram<u64>) {
        type C<const D: u8> = IntervalCounts<D>;
        let mut ours = C::<D>::default();
        let mut indexes: Vec<usize> = Vec::new();
        for edge in (0..C::<D>::LEN).step_by(64) {
            indexes.extend([edge, edge + 1, edge + 63]);
        }
        indexes.extend([C::<D>::LEN - 2, C::<D>::LEN - 1]);
        // Bucket 0 holds only the value 0, which records as 1.
        indexes.retain(|&i| (1..C::<D>::LEN).contains(&i));
        let value = |i: usize| C::<D>::highest_value(i).min(MAX_US);
        for pair in indexes.windows(2) {
            let mut theirs = fresh();
            for (&i, n) in pair.iter().zip([1, 5]) {
                ours.record_n(value(i), n);
                theirs.record_n(value(i), n).unwrap();
            }
            assert_eq!(ours.buckets(), pair.len(), "buckets {pair:?}");
            assert_eq!(ours.take(), Sparse::of(&theirs), "buckets {pair:?}");
            assert!(all_clear(&ours), "buckets {pair:?}");
        }
        for lone in (0..C::<D>::WORDS).step_by(64).flat_map(|w| [w, w + 63]) {
            let Some(i) = (lone * 64..C::<D>::LEN).find(|&i| i > 0) else {
                continue;
            };
            let mut theirs = fresh();
            ours.record_n(value(i), 3);
            theirs.record_n(value(i), 3).unwrap();
            assert_eq!(ours.take(), Sparse::of(&theirs), "word {lone}");
            assert!(all_clear(&ours), "word {lone}");
        }
    }

    #[test]
    fn takes_only_what_was_recorded_at_every_bitmap_edge() {
        sparse_takes_like::<3>(new_histogram);
        sparse_takes_like::<1>(ttft_histogram);
    }
}
