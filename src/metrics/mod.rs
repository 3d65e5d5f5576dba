//! Latency measurement: per-shard HdrHistograms recorded without locks, shipped to the control
//! thread as interval snapshots.
//!
//! A shard records into plain `RefCell`s it alone touches ([`interval::IntervalCounts`]:
//! HdrHistogram's buckets, a bitmap of the ones in use). Every `[server] stats_interval` it
//! takes the buckets the interval recorded ([`Sparse`], reading and clearing only those) and
//! its counters, and sends them to the control thread, which merges them into totals and a
//! rolling window.
//!
//! A value is first appended to a short buffer ([`RECENT`] values, one hot cache line or two
//! per write) and reaches its bucket when the buffer is full or the interval is taken. The
//! buckets of twelve histograms span ~2 MB, so a bucket a turn records into is usually out of
//! cache by the next turn: recorded one by one, each value waited for its bucket's cache line
//! (the one hot spot of `record` in the relay's profile); folded 64 at a time, the loads are
//! independent and overlap.

pub mod accounts;
pub mod aggregate;
pub mod export;
pub mod interval;
pub mod prometheus;
pub mod window;

use std::cell::RefCell;
use std::time::Duration;

use hdrhistogram::Histogram;

use interval::IntervalCounts;

/// Largest value recorded: one hour in microseconds (larger values are clamped).
pub const MAX_US: u64 = 3_600_000_000;

macro_rules! hists {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// The histograms a shard keeps. All values are microseconds.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Hist {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Hist {
            /// Every histogram, in index order.
            pub const ALL: &'static [Hist] = &[$(Hist::$variant,)*];

            /// The name used in stats output and `/metrics`.
            pub fn name(self) -> &'static str {
                match self { $(Hist::$variant => $name,)* }
            }

            /// Looks a histogram up by its name.
            pub fn from_name(name: &str) -> Option<Hist> {
                match name { $($name => Some(Hist::$variant),)* _ => None }
            }
        }
    };
}

hists! {
    /// Gateway-added latency per relayed event over a WebSocket upstream: upstream frame read →
    /// client write done.
    EventAddedWs => "event_added_ws",
    /// The same over an HTTP/SSE upstream.
    EventAddedHttp => "event_added_http",
    /// Client TTFT: client frame read → first event written to the client.
    ClientTtft => "client_ttft",
    /// Upstream TTFT over WebSocket: frame sent upstream → first event read.
    UpstreamTtftWs => "upstream_ttft_ws",
    /// Upstream TTFT over HTTP/SSE: request sent → first event read.
    UpstreamTtftHttp => "upstream_ttft_http",
    /// Turn duration: client frame read → terminal event written.
    TurnDuration => "turn_duration",
    /// Wait for a pooled connection (idle pop, dial or queue).
    AcquireWait => "acquire_wait",
    /// TCP connect + TLS + WebSocket handshake of a new upstream connection.
    DialWs => "dial_ws",
    /// TCP connect + TLS of a new HTTP upstream connection.
    DialHttp => "dial_http",
    /// Gateway-added latency per relayed realtime event, client to upstream: client frame
    /// read → upstream write done.
    RealtimeAddedUp => "realtime_added_up",
    /// The same, upstream to client: upstream frame read → client write done.
    RealtimeAddedDown => "realtime_added_down",
    /// Realtime session duration: upgrade → both sides closed.
    RealtimeSession => "realtime_session",
}

/// A fresh histogram with the gateway's bounds: 1 µs .. 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// One fresh histogram per [`Hist`], indexed like [`Hist::ALL`].
pub fn new_set() -> Vec<Histogram<u64>> {
    Hist::ALL.iter().map(|_| new_histogram()).collect()
}

/// Values a shard buffers before they reach their buckets.
pub const RECENT: usize = 64;

/// One buffered value: `n` occurrences of `us` in histogram `hist`.
#[derive(Debug, Clone, Copy, Default)]
struct Recorded {
    hist: u8,
    us: u32,
    n: u32,
}

/// The values recorded since the last fold, in order.
struct Recent {
    len: usize,
    values: [Recorded; RECENT],
}

/// One shard's histograms, as this interval's counts. Not `Sync`: only the owning shard
/// records.
pub struct ShardMetrics {
    hists: RefCell<Vec<IntervalCounts>>,
    recent: RefCell<Recent>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            hists: RefCell::new(
                Hist::ALL
                    .iter()
                    .map(|_| IntervalCounts::<3>::default())
                    .collect(),
            ),
            recent: RefCell::new(Recent {
                len: 0,
                values: [Recorded::default(); RECENT],
            }),
        }
    }
}

impl ShardMetrics {
    /// Records a duration (clamped to 1 µs ..= [`MAX_US`]). No allocation.
    pub fn record(&self, hist: Hist, d: Duration) {
        self.record_us(hist, micros(d));
    }

    /// Records a value in microseconds (clamped to 1 ..= [`MAX_US`]). No allocation.
    pub fn record_us(&self, hist: Hist, us: u64) {
        self.push(hist, us, 1);
    }

    /// Records `count` occurrences of one value (a batch of events written together).
    pub fn record_n(&self, hist: Hist, d: Duration, count: u64) {
        self.push(hist, micros(d), count);
    }

    /// Takes this interval's recorded buckets, indexed like [`Hist::ALL`], and empties the
    /// counts. Costs what the interval recorded: a histogram that recorded nothing is skipped,
    /// one that did has only its used buckets read and cleared.
    pub fn take_interval(&self) -> Vec<Sparse> {
        self.fold(&mut self.recent.borrow_mut());
        self.hists
            .borrow_mut()
            .iter_mut()
            .map(IntervalCounts::take)
            .collect()
    }

    /// Buffers a value, folding the buffer into the buckets when it is full. A value or count
    /// too large for the buffer goes straight to its bucket (clamped there).
    fn push(&self, hist: Hist, us: u64, n: u64) {
        let (Ok(us32), Ok(n32)) = (u32::try_from(us), u32::try_from(n)) else {
            self.hists.borrow_mut()[hist as usize].record_n(us, n);
            return;
        };
        let mut recent = self.recent.borrow_mut();
        let len = recent.len;
        recent.values[len] = Recorded {
            hist: hist as u8,
            us: us32,
            n: n32,
        };
        recent.len = len + 1;
        if recent.len == RECENT {
            self.fold(&mut recent);
        }
    }

    /// Adds the buffered values to their buckets and empties the buffer.
    fn fold(&self, recent: &mut Recent) {
        let mut hists = self.hists.borrow_mut();
        for r in &recent.values[..recent.len] {
            hists[usize::from(r.hist)].record_n(u64::from(r.us), u64::from(r.n));
        }
        recent.len = 0;
    }
}

/// `d` in whole microseconds, clamped to [`MAX_US`].
fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(MAX_US)) as u64
}

/// The buckets one histogram recorded: `(highest equivalent value, count)`. The form in which
/// intervals travel from a shard to the control thread and sit in the rolling window: adding
/// it to a histogram with the same bounds gives exactly the histogram it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sparse(Vec<(u64, u64)>);

impl Sparse {
    /// The non-empty buckets of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Sparse(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// `true` when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends `other`'s buckets (a bucket may then appear twice; adding sums them).
    pub fn append(&mut self, other: &mut Sparse) {
        self.0.append(&mut other.0);
    }

    /// Adds these buckets to `h` (same bucket layout, so nothing is lost).
    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(v, n) in &self.0 {
            // Values came from a histogram with the same bounds: in range.
            let _ = h.record_n(v, n);
        }
    }
}

/// What a shard ships to the control thread each interval.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    /// The shard.
    pub shard: usize,
    /// The interval's recorded buckets, indexed like [`Hist::ALL`] (empty for a histogram
    /// that recorded nothing).
    pub hists: Vec<Sparse>,
    /// Plain counters, totals since start.
    pub counters: Vec<(&'static str, u64)>,
    /// Labeled counters, totals since start.
    pub labeled: Vec<(&'static str, String, u64)>,
    /// The interval's WebSocket health per account (accounts with attempts only), for the
    /// automatic rollback.
    pub accounts: Vec<accounts::AccountInterval>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_takes_intervals() {
        let m = ShardMetrics::default();
        m.record(Hist::ClientTtft, Duration::from_micros(150));
        m.record_us(Hist::ClientTtft, 0);
        m.record_us(Hist::DialWs, u64::MAX);
        let first = m.take_interval();
        let (mut ttft, mut dial) = (new_histogram(), new_histogram());
        first[Hist::ClientTtft as usize].add_to(&mut ttft);
        first[Hist::DialWs as usize].add_to(&mut dial);
        assert_eq!(ttft.len(), 2);
        assert_eq!(dial.max(), dial.highest_equivalent(MAX_US));
        assert!(first[Hist::AcquireWait as usize].is_empty());
        let second = m.take_interval();
        assert!(second.iter().all(Sparse::is_empty));
        assert_eq!(Hist::from_name("dial_ws"), Some(Hist::DialWs));
    }

    #[test]
    fn buffered_values_reach_the_interval_in_full() {
        let m = ShardMetrics::default();
        let mut direct: [IntervalCounts; 2] = Default::default();
        // Past several folds, with batches, zero counts and values too large for the buffer.
        for i in 0..(RECENT as u64 * 3 + 5) {
            let (us, n) = (i * 977 % 400_000, i % 4);
            m.record_n(Hist::EventAddedWs, Duration::from_micros(us), n);
            direct[0].record_n(us, n);
            m.record_us(Hist::TurnDuration, us * 10_000);
            direct[1].record_n(us * 10_000, 1);
        }
        m.record_n(Hist::EventAddedWs, Duration::from_micros(5), u64::MAX);
        direct[0].record_n(5, u64::MAX);
        let took = m.take_interval();
        assert_eq!(took[Hist::EventAddedWs as usize], direct[0].take());
        assert_eq!(took[Hist::TurnDuration as usize], direct[1].take());
        assert!(m.take_interval().iter().all(Sparse::is_empty));
    }

    #[test]
    fn sparse_round_trip_keeps_every_bucket() {
        let mut h = new_histogram();
        for v in [1, 7, 1_000, 1_001, 123_456, 3_000_000] {
            h.record(v).unwrap();
        }
        let mut back = new_histogram();
        Sparse::of(&h).add_to(&mut back);
        assert_eq!(back, h);
        assert_eq!(back.min(), h.min());
        assert_eq!(back.max(), h.max());
        assert_eq!(back.mean(), h.mean());
    }
}
