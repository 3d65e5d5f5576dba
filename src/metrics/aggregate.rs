//! Merging shard snapshots into totals and a rolling window (control thread).
//!
//! Shards never share their histograms: each ships an interval snapshot and the control thread
//! adds it here. The stats socket and the admin listener read the aggregator through a mutex
//! ([`SharedAggregator`]); they are off the data plane, and a lock lets them answer even while
//! the control loop is busy with a slow usage sink.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use super::export::{
    add_into, delta, derived, totals, CounterMap, InPlace, LabeledMap, Scope, Section, StatsDoc,
};
use super::window::{CounterSet, Window};
use super::{new_histogram, new_set, Hist, ShardSnapshot};

/// The aggregator as shared between the control thread and the stats readers.
pub type SharedAggregator = Arc<Mutex<Aggregator>>;

/// Locks a shared aggregator; a panic elsewhere while holding it leaves plain data behind, so a
/// poisoned lock is still used.
pub fn lock(shared: &SharedAggregator) -> MutexGuard<'_, Aggregator> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a histogram log could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum HistLogError {
    /// No histogram has that name.
    #[error("unknown histogram `{0}`")]
    Unknown(String),
    /// Encoding failed.
    #[error("cannot encode the histogram: {0}")]
    Encode(String),
}

/// Totals since start and the rolling window, per shard and merged.
pub struct Aggregator {
    started: Instant,
    started_wall: SystemTime,
    totals: Vec<Vec<Histogram<u64>>>,
    latest: Vec<Arc<CounterSet>>,
    window: Window,
    control: Section,
}

impl Aggregator {
    /// An aggregator for `shards` shards that ship every `interval`, keeping a `window`.
    pub fn new(shards: usize, interval: Duration, window: Duration) -> Self {
        let now = Instant::now();
        Aggregator {
            started: now,
            started_wall: SystemTime::now(),
            totals: (0..shards).map(|_| new_set()).collect(),
            latest: vec![Arc::default(); shards],
            window: Window::new(shards, interval, window, now),
            control: Section::default(),
        }
    }

    /// Adds one shard's interval.
    pub fn merge(&mut self, snap: ShardSnapshot) {
        self.merge_at(snap, Instant::now());
    }

    /// [`Aggregator::merge`] at a given time.
    pub fn merge_at(&mut self, snap: ShardSnapshot, now: Instant) {
        let Some(totals) = self.totals.get_mut(snap.shard) else {
            return;
        };
        for (t, sparse) in totals.iter_mut().zip(&snap.hists) {
            sparse.add_to(t);
        }
        let counters = Arc::new(CounterSet {
            plain: snap.counters,
            labeled: snap.labeled,
        });
        self.window.add(snap.shard, snap.hists, &counters, now);
        self.latest[snap.shard] = counters;
    }

    /// Rolls the window.
    pub fn tick(&mut self, now: Instant) {
        self.window.advance(now);
    }

    /// Empties the window (`reset-window` on the stats socket).
    pub fn reset_window(&mut self, now: Instant) {
        self.window.reset(&self.latest, now);
    }

    /// Replaces the control thread's own counters with what `write` writes, in place (each
    /// tick writes the same names: no allocation). When a name written before is not written
    /// this time, `write` runs again onto empty maps, so the section holds exactly what it
    /// wrote.
    pub fn write_control(&mut self, write: impl Fn(&mut InPlace<'_>)) {
        let c = &mut self.control;
        let mut values = InPlace::new(&mut c.counters, &mut c.labeled);
        write(&mut values);
        if !values.exact() {
            c.counters.clear();
            c.labeled.clear();
            write(&mut InPlace::new(&mut c.counters, &mut c.labeled));
        }
        c.derived = derived(&c.counters);
    }

    /// The stats document as of `now`.
    pub fn document(&self, now: Instant) -> StatsDoc {
        let shards = self.totals.len();
        let mut total = Scope {
            secs: now.saturating_duration_since(self.started).as_secs_f64(),
            ..Scope::default()
        };
        let mut window = Scope {
            secs: self.window.covered(now).as_secs_f64(),
            ..Scope::default()
        };
        let mut total_merged = (CounterMap::new(), LabeledMap::new());
        let mut window_merged = (CounterMap::new(), LabeledMap::new());
        let mut total_hists = new_set();
        let mut window_hists = new_set();
        // One scratch set reused for every shard's window (a fresh set is ~1.7 MB, and this
        // runs under the lock the control thread needs).
        let mut wh = new_set();
        let empty_base = CounterSet::default();
        for shard in 0..shards {
            let t = totals(&self.latest[shard]);
            let base = self.window.baseline(shard).unwrap_or(&empty_base);
            let w = delta(&self.latest[shard], base);
            add_into(&mut total_merged, &t);
            add_into(&mut window_merged, &w);
            self.window.shard_hists_into(shard, &mut wh);
            for (m, h) in total_hists.iter_mut().zip(&self.totals[shard]) {
                let _ = m.add(h);
            }
            for (m, h) in window_hists.iter_mut().zip(&wh) {
                let _ = m.add(h);
            }
            total
                .per_shard
                .push(Section::new(&self.totals[shard], t.0, t.1));
            window.per_shard.push(Section::new(&wh, w.0, w.1));
        }
        total.merged = Section::new(&total_hists, total_merged.0, total_merged.1);
        window.merged = Section::new(&window_hists, window_merged.0, window_merged.1);
        StatsDoc {
            uptime_secs: total.secs,
            shards,
            total,
            window,
            control: self.control.clone(),
        }
    }

    /// One histogram, merged over shards, as an HdrHistogram V2 interval log (base64 of the
    /// deflate-compressed V2 encoding, as `HistogramLogReader` and `hdrhistogram`'s
    /// `IntervalLogIterator` read it). With `total`, one interval covering the whole uptime;
    /// otherwise one interval per window slot, for plotting. Values are microseconds.
    pub fn hist_log(&self, name: &str, total: bool, now: Instant) -> Result<String, HistLogError> {
        let hist = Hist::from_name(name).ok_or_else(|| HistLogError::Unknown(name.to_string()))?;
        let intervals: Vec<(Duration, Duration, Histogram<u64>)> = if total {
            let mut h = new_histogram();
            for shard in &self.totals {
                let _ = h.add(&shard[hist as usize]);
            }
            vec![(
                Duration::ZERO,
                now.saturating_duration_since(self.started),
                h,
            )]
        } else {
            let offset = self.window.epoch().saturating_duration_since(self.started);
            self.window
                .intervals(hist)
                .into_iter()
                .map(|(start, h)| (offset + start, self.window.slot_len(), h))
                .collect()
        };
        let mut out = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        let mut writer = IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "shardgate histogram {name}, values in microseconds"
            ))
            .with_start_time(self.started_wall)
            .with_base_time(self.started_wall)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(|e| HistLogError::Encode(e.to_string()))?;
        for (start, len, h) in &intervals {
            writer
                .write_histogram(h, *start, *len, None)
                .map_err(|e| HistLogError::Encode(e.to_string()))?;
        }
        String::from_utf8(out).map_err(|e| HistLogError::Encode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Sparse;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    fn snap(shard: usize, ttft_us: &[u64], turns: u64) -> ShardSnapshot {
        let mut ttft = new_histogram();
        for v in ttft_us {
            ttft.record(*v).unwrap();
        }
        let mut hists = vec![Sparse::default(); Hist::ALL.len()];
        hists[Hist::ClientTtft as usize] = Sparse::of(&ttft);
        ShardSnapshot {
            shard,
            hists,
            counters: vec![("turns", turns), ("sessions_open", 1)],
            labeled: vec![("retries", "timeout".into(), turns)],
            accounts: Vec::new(),
        }
    }

    #[test]
    fn document_merges_shards_and_windows() {
        let mut a = Aggregator::new(2, Duration::from_secs(1), Duration::from_secs(60));
        let t = Instant::now();
        a.merge_at(snap(0, &[100, 200], 2), t);
        a.merge_at(snap(1, &[300], 1), t);
        a.merge_at(snap(0, &[400], 3), t);
        let doc = a.document(t);
        assert_eq!(doc.total.merged.hists["client_ttft"].count, 4);
        assert_eq!(doc.total.per_shard[0].hists["client_ttft"].count, 3);
        assert_eq!(doc.total.merged.counters["turns"], 4);
        assert_eq!(doc.total.merged.counters["sessions_open"], 2);
        assert_eq!(doc.total.merged.labeled["retries"]["timeout"], 4);
        assert_eq!(doc.window.merged.counters["turns"], 4);
        assert_eq!(doc.window.merged.hists["client_ttft"].count, 4);

        a.reset_window(t);
        a.merge_at(snap(0, &[500], 5), t);
        let doc = a.document(t);
        assert_eq!(doc.window.merged.counters["turns"], 2);
        assert_eq!(doc.window.merged.hists["client_ttft"].count, 1);
        assert_eq!(doc.total.merged.counters["turns"], 6);
        assert_eq!(doc.total.merged.hists["client_ttft"].count, 5);
    }

    #[test]
    fn hist_log_decodes_with_the_hdrhistogram_reader() {
        let mut a = Aggregator::new(1, Duration::from_secs(1), Duration::from_secs(60));
        let t = Instant::now();
        a.merge_at(snap(0, &[100, 200, 300], 3), t);
        for total in [false, true] {
            let log = a.hist_log("client_ttft", total, t).unwrap();
            let mut seen = 0;
            for entry in IntervalLogIterator::new(log.as_bytes()) {
                if let LogEntry::Interval(i) = entry.unwrap() {
                    let bytes = base64::Engine::decode(
                        &base64::engine::general_purpose::STANDARD,
                        i.encoded_histogram(),
                    )
                    .unwrap();
                    let h: Histogram<u64> = Deserializer::new()
                        .deserialize(&mut bytes.as_slice())
                        .unwrap();
                    assert_eq!(h.len(), 3);
                    assert_eq!(h.max(), h.highest_equivalent(300));
                    seen += 1;
                }
            }
            assert_eq!(seen, 1);
        }
        assert!(matches!(
            a.hist_log("nope", false, t),
            Err(HistLogError::Unknown(_))
        ));
    }

    /// The control section written in place over a sequence of shapes (values changed, names
    /// added, dropped, repeated) always equals the one written afresh by the same writes.
    #[test]
    fn control_counters_written_in_place_equal_fresh_ones() {
        type Labels = Vec<(&'static str, u64)>;
        type Shape = (Labels, Vec<(&'static str, Labels)>);
        let base: Shape = (
            vec![
                ("usage_records", 4),
                ("usage_attempts", 6),
                ("control_ticks", 1),
            ],
            vec![
                ("usage_by_status", vec![("completed", 4)]),
                ("rollbacks", vec![]),
                ("account_ws_percent", vec![("a0", 100), ("a1", 0)]),
            ],
        );
        let mut shapes = vec![base.clone()];
        let mut next = base.clone();
        next.0[0].1 = 9;
        next.1[2].1[1].1 = 50;
        shapes.push(next.clone());
        next.0.push(("oauth_accounts_failed", 0));
        next.1[0].1.push(("failed", 1));
        next.1[1].1.push(("a1/ws_error_rate", 1));
        shapes.push(next.clone());
        next.0.remove(1);
        shapes.push(next.clone());
        next.1[2].1.remove(0);
        shapes.push(next.clone());
        next.1.remove(1);
        shapes.push(next.clone());
        next.0.push(("usage_records", 11));
        next.1[0].1.push(("completed", 7));
        shapes.push(next.clone());
        shapes.push(base.clone());
        shapes.push((vec![], vec![]));
        shapes.push(base);

        fn write(shape: &Shape) -> impl Fn(&mut InPlace<'_>) + '_ {
            move |out| {
                for &(name, v) in &shape.0 {
                    out.counter(name, v);
                }
                for (family, labels) in &shape.1 {
                    out.family(family, labels.iter().copied());
                }
            }
        }
        let interval = Duration::from_millis(200);
        let mut kept = Aggregator::new(1, interval, interval * 10);
        for (k, shape) in shapes.iter().enumerate() {
            kept.write_control(write(shape));
            let mut fresh = Aggregator::new(1, interval, interval * 10);
            fresh.write_control(write(shape));
            assert_eq!(kept.control, fresh.control, "shape {k}");
            let mut built = CounterMap::new();
            built.extend(shape.0.iter().map(|&(n, v)| (n.to_string(), v)));
            assert_eq!(kept.control.counters, built, "shape {k}");
            let families: std::collections::BTreeSet<_> = shape.1.iter().map(|f| f.0).collect();
            assert_eq!(kept.control.labeled.len(), families.len(), "shape {k}");
            for (family, labels) in &shape.1 {
                let labels: std::collections::BTreeMap<String, u64> =
                    labels.iter().map(|&(l, v)| (l.to_string(), v)).collect();
                assert_eq!(kept.control.labeled[*family], labels, "shape {k}");
            }
        }
    }
}
