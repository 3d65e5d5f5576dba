//! The stats document (`stats` on the stats socket, `shardgate stats --json`) and the pieces it
//! is built from: histogram summaries, counter maps and derived ratios.
//!
//! Counters are rendered generically from whatever the shards ship, so a counter added to
//! `ShardCounters` (or a new labeled family) appears here and in `/metrics` with no change.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::window::CounterSet;
use super::Hist;

/// Plain counters by name.
pub type CounterMap = BTreeMap<String, u64>;
/// Labeled counters: family → label → value.
pub type LabeledMap = BTreeMap<String, BTreeMap<String, u64>>;

/// The control thread's counters, rewritten each tick into the maps of its stats section in
/// place: a counter or label written before keeps its entry (no allocation, no insert), a new
/// one is inserted. One left from an earlier write and not written this time is still there;
/// [`InPlace::exact`] says whether the maps hold exactly what was written (then they equal
/// maps built afresh from the same writes; otherwise the caller clears them and writes again).
///
/// It counts writes, so it holds only while each counter, family and label is written at most
/// once per pass: a name written twice could hide one left from before. The control thread's
/// writers meet that (fixed names, map keys, account ids, which the config keeps unique).
pub struct InPlace<'m> {
    counters: &'m mut CounterMap,
    labeled: &'m mut LabeledMap,
    counters_written: usize,
    families_written: usize,
    labels_exact: bool,
}

impl<'m> InPlace<'m> {
    /// Writes into `counters` and `labeled`, over what they hold.
    pub fn new(counters: &'m mut CounterMap, labeled: &'m mut LabeledMap) -> Self {
        InPlace {
            counters,
            labeled,
            counters_written: 0,
            families_written: 0,
            labels_exact: true,
        }
    }

    /// Sets a plain counter.
    pub fn counter(&mut self, name: &str, value: u64) {
        set(self.counters, name, value);
        self.counters_written += 1;
    }

    /// Sets a labeled family to `labels` (the family is present even when `labels` is empty).
    pub fn family<'a>(&mut self, family: &str, labels: impl IntoIterator<Item = (&'a str, u64)>) {
        if !self.labeled.contains_key(family) {
            self.labeled.insert(family.to_string(), BTreeMap::new());
        }
        let Some(inner) = self.labeled.get_mut(family) else {
            return;
        };
        let mut written = 0;
        for (label, value) in labels {
            set(inner, label, value);
            written += 1;
        }
        self.labels_exact &= written == inner.len();
        self.families_written += 1;
    }

    /// `true` when every counter, family and label in the maps was written once since
    /// [`InPlace::new`]: nothing is left from before.
    pub fn exact(&self) -> bool {
        self.labels_exact
            && self.counters_written == self.counters.len()
            && self.families_written == self.labeled.len()
    }
}

/// `map[key] = value`, allocating the key only when it is new.
fn set(map: &mut BTreeMap<String, u64>, key: &str, value: u64) {
    match map.get_mut(key) {
        Some(v) => *v = value,
        None => {
            map.insert(key.to_string(), value);
        }
    }
}

/// Whether a shipped counter is a gauge (a level, not a running total): such values are shown
/// as they are in the window instead of as a difference.
pub fn is_gauge(name: &str) -> bool {
    name.ends_with("_open")
        || name.ends_with("_in_flight")
        || name.ends_with("_len")
        || name.ends_with("_percent")
}

/// One histogram, summarized. Values in microseconds. Used by the stats document and the load
/// generator's report alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HistSummary {
    /// Values recorded.
    pub count: u64,
    /// Smallest value.
    #[serde(default)]
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value (bucket precision).
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl HistSummary {
    /// Summarizes `h` (all zeros when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return HistSummary::default();
        }
        HistSummary {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Histograms and counters of one scope (a shard, or all of them merged).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// Histogram summaries by name.
    pub hists: BTreeMap<String, HistSummary>,
    /// Plain counters and gauges.
    pub counters: CounterMap,
    /// Labeled counters.
    pub labeled: LabeledMap,
    /// Ratios computed from the counters, present when their counters exist and are non-zero.
    pub derived: BTreeMap<String, f64>,
}

impl Section {
    /// A section from histograms (indexed like [`Hist::ALL`]) and counters.
    pub fn new(hists: &[Histogram<u64>], counters: CounterMap, labeled: LabeledMap) -> Self {
        let hists = Hist::ALL
            .iter()
            .zip(hists)
            .map(|(k, h)| (k.name().to_string(), HistSummary::of(h)))
            .collect();
        let derived = derived(&counters);
        Section {
            hists,
            counters,
            labeled,
            derived,
        }
    }
}

/// Totals or window: every shard, and all of them merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    /// Seconds this scope covers.
    pub secs: f64,
    /// All shards together.
    pub merged: Section,
    /// One section per shard, by shard number.
    pub per_shard: Vec<Section>,
}

/// The whole stats document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsDoc {
    /// Seconds since the gateway started.
    pub uptime_secs: f64,
    /// Number of shards.
    pub shards: usize,
    /// Since start.
    pub total: Scope,
    /// The rolling window (`[server] stats_window_secs`, or less since start or a reset).
    pub window: Scope,
    /// Counters of the control thread: the usage writer (records by request type and status,
    /// attempts, sink and spool outcomes). No histograms.
    pub control: Section,
}

/// A shard's totals as maps.
pub fn totals(c: &CounterSet) -> (CounterMap, LabeledMap) {
    let plain = c.plain.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let mut labeled = LabeledMap::new();
    for (family, label, v) in &c.labeled {
        *labeled
            .entry(family.to_string())
            .or_default()
            .entry(label.clone())
            .or_default() += v;
    }
    (plain, labeled)
}

/// `latest − base` for counters, `latest` for gauges.
pub fn delta(latest: &CounterSet, base: &CounterSet) -> (CounterMap, LabeledMap) {
    let (mut plain, mut labeled) = totals(latest);
    let (base_plain, base_labeled) = totals(base);
    for (k, v) in plain.iter_mut() {
        if !is_gauge(k) {
            *v = v.saturating_sub(base_plain.get(k).copied().unwrap_or(0));
        }
    }
    for (family, labels) in labeled.iter_mut() {
        for (label, v) in labels.iter_mut() {
            let b = base_labeled
                .get(family)
                .and_then(|l| l.get(label))
                .copied()
                .unwrap_or(0);
            *v = v.saturating_sub(b);
        }
    }
    (plain, labeled)
}

/// Adds `from` into `into` (merging shards).
pub fn add_into(into: &mut (CounterMap, LabeledMap), from: &(CounterMap, LabeledMap)) {
    for (k, v) in &from.0 {
        *into.0.entry(k.clone()).or_default() += v;
    }
    for (family, labels) in &from.1 {
        let dst = into.1.entry(family.clone()).or_default();
        for (label, v) in labels {
            *dst.entry(label.clone()).or_default() += v;
        }
    }
}

/// Ratios an operator asks for first, from the counters that carry them (when present):
/// upstream connection reuse (`pool_reuses` / (`pool_reuses` + `pool_dials`)) and attempts per
/// turn (`attempts` / `turns` from shards, or `usage_attempts` / `usage_records` from the
/// usage records).
pub fn derived(counters: &CounterMap) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let get = |k: &str| counters.get(k).copied();
    if let (Some(reuses), Some(dials)) = (get("pool_reuses"), get("pool_dials")) {
        if reuses + dials > 0 {
            out.insert(
                "pool_reuse_rate".to_string(),
                reuses as f64 / (reuses + dials) as f64,
            );
        }
    }
    for (attempts, turns) in [("attempts", "turns"), ("usage_attempts", "usage_records")] {
        if let (Some(attempts), Some(turns)) = (get(attempts), get(turns)) {
            if turns > 0 {
                out.insert(
                    "attempts_per_turn".to_string(),
                    attempts as f64 / turns as f64,
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::new_histogram;

    #[test]
    fn summary_of_recorded_values() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let s = HistSummary::of(&h);
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, 500);
        assert_eq!(s.p99, 990);
        assert_eq!(s.max, 1000);
        assert_eq!(HistSummary::of(&new_histogram()), HistSummary::default());
    }

    #[test]
    fn delta_subtracts_counters_but_not_gauges() {
        let latest = CounterSet {
            plain: vec![("turns", 10), ("sessions_open", 3)],
            labeled: vec![("retries", "timeout".into(), 4)],
        };
        let base = CounterSet {
            plain: vec![("turns", 6), ("sessions_open", 5)],
            labeled: vec![("retries", "timeout".into(), 1)],
        };
        let (plain, labeled) = delta(&latest, &base);
        assert_eq!(plain["turns"], 4);
        assert_eq!(plain["sessions_open"], 3);
        assert_eq!(labeled["retries"]["timeout"], 3);
    }

    #[test]
    fn derived_ratios_only_when_their_counters_exist() {
        let mut c = CounterMap::new();
        c.insert("turns".into(), 4);
        assert!(derived(&c).is_empty());
        c.insert("attempts".into(), 6);
        c.insert("pool_reuses".into(), 3);
        c.insert("pool_dials".into(), 1);
        let d = derived(&c);
        assert_eq!(d["attempts_per_turn"], 1.5);
        assert_eq!(d["pool_reuse_rate"], 0.75);
    }
}
