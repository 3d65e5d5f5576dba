//! The outcome of a run: a human table and the same numbers as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::config::{LoadConfig, Stop};
use super::stats::Stats;
use crate::metrics::export::HistSummary;

/// Everything a run measured, with the settings it ran with.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The wire used (`websocket` or `sse`).
    pub transport: &'static str,
    /// The URL driven.
    pub url: String,
    /// Concurrent connections.
    pub connections: usize,
    /// Executor threads.
    pub threads: usize,
    /// Turns per connection, when bounded by turns.
    pub turns_per_connection: Option<u64>,
    /// Seconds, when bounded by time.
    pub duration_secs: Option<f64>,
    /// Overall turn-rate cap.
    pub rate_cap: Option<f64>,
    /// Turns chained with `previous_response_id`.
    pub chain: bool,
    /// Warm-ups sent before turns.
    pub warmup: bool,
    /// Frame padding target.
    pub payload_bytes: usize,
    /// Connections closed and reopened after this many turns (connect storms).
    pub reconnect_every: Option<u64>,
    /// Idle mode: seconds each connection was held open without traffic.
    pub idle_hold_secs: Option<f64>,
    /// Idle mode: connections that opened and were held.
    pub idle_open: u64,
    /// Wall time of the run, seconds.
    pub elapsed_secs: f64,
    /// Turns ended by `response.completed`.
    pub turns_ok: u64,
    /// Turns that failed.
    pub turns_failed: u64,
    /// Warm-ups ended by `response.completed`.
    pub warmups_ok: u64,
    /// Completed turns per second.
    pub turns_per_sec: f64,
    /// Server events received.
    pub events: u64,
    /// Server events per second.
    pub events_per_sec: f64,
    /// Connections opened.
    pub connects: u64,
    /// Errors counted, all keys together.
    pub errors_total: u64,
    /// Errors by key (`error.code`, `close_<code>`, `connect_*`, `turn_timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Frame written → first `*.delta`.
    pub ttft_us: HistSummary,
    /// Receive wall clock − the event's `mock_ts_us`.
    pub event_latency_us: HistSummary,
    /// Frame written → terminal event of a turn.
    pub turn_us: HistSummary,
    /// Frame written → terminal event of a warm-up.
    pub warmup_us: HistSummary,
    /// TCP connect plus WebSocket handshake.
    pub connect_us: HistSummary,
    /// Connect start → end of the first turn on that connection.
    pub first_turn_us: HistSummary,
    /// Percentile distributions of the histograms, for [`Report::distribution_csv`].
    #[serde(skip)]
    pub distribution: Vec<(&'static str, Vec<PercentilePoint>)>,
}

/// One point of a percentile distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PercentilePoint {
    /// The percentile, 0–100.
    pub percentile: f64,
    /// The value at it, µs.
    pub value_us: u64,
}

/// Steps of the distribution per halving of the distance to 100 % (HdrHistogram's usual 5).
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The percentile distribution of `h`, up to (not including) 100 %.
fn distribution(h: &Histogram<u64>) -> Vec<PercentilePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|v| PercentilePoint {
            percentile: v.quantile_iterated_to() * 100.0,
            value_us: v.value_iterated_to(),
        })
        .take_while(|p| p.percentile < 100.0)
        .collect()
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

impl Report {
    /// The report of `stats`, measured by a run of `config` that took `elapsed`.
    pub fn new(config: &LoadConfig, stats: &Stats, elapsed: Duration) -> Report {
        let secs = elapsed.as_secs_f64();
        let (turns_per_connection, duration_secs) = match config.stop {
            Stop::Turns(n) => (Some(n), None),
            Stop::Duration(d) => (None, Some(d.as_secs_f64())),
        };
        let histograms = [
            ("ttft", &stats.ttft_us),
            ("event", &stats.event_latency_us),
            ("turn", &stats.turn_us),
            ("warmup", &stats.warmup_us),
            ("connect", &stats.connect_us),
            ("first_turn", &stats.first_turn_us),
        ];
        Report {
            transport: config.target.wire.name(),
            url: config.target.url.clone(),
            connections: config.connections,
            threads: config.threads,
            turns_per_connection,
            duration_secs,
            rate_cap: config.rate,
            chain: config.chain,
            warmup: config.warmup,
            payload_bytes: config.payload_bytes,
            reconnect_every: config.reconnect_every,
            idle_hold_secs: config.idle_hold.map(|d| d.as_secs_f64()),
            idle_open: stats.idle_open,
            elapsed_secs: secs,
            turns_ok: stats.turns_ok,
            turns_failed: stats.turns_failed,
            warmups_ok: stats.warmups_ok,
            turns_per_sec: per_sec(stats.turns_ok, secs),
            events: stats.events,
            events_per_sec: per_sec(stats.events, secs),
            connects: stats.connects,
            errors_total: stats.errors.values().sum(),
            errors: stats.errors.clone(),
            ttft_us: HistSummary::of(&stats.ttft_us),
            event_latency_us: HistSummary::of(&stats.event_latency_us),
            turn_us: HistSummary::of(&stats.turn_us),
            warmup_us: HistSummary::of(&stats.warmup_us),
            connect_us: HistSummary::of(&stats.connect_us),
            first_turn_us: HistSummary::of(&stats.first_turn_us),
            distribution: histograms
                .iter()
                .map(|(name, h)| (*name, distribution(h)))
                .collect(),
        }
    }

    /// The percentile distributions as CSV: `histogram,percentile,value_us,inverse_tail`, where
    /// `inverse_tail` is 1/(1 − percentile/100), the usual x axis of a percentile plot.
    pub fn distribution_csv(&self) -> String {
        let mut out = String::from("histogram,percentile,value_us,inverse_tail\n");
        for (name, points) in &self.distribution {
            for p in points {
                let _ = writeln!(
                    out,
                    "{name},{:.5},{},{:.3}",
                    p.percentile,
                    p.value_us,
                    1.0 / (1.0 - p.percentile / 100.0)
                );
            }
        }
        out
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> Result<String, sonic_rs::Error> {
        sonic_rs::to_string_pretty(self)
    }

    /// The report as a human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let bound = match (self.turns_per_connection, self.duration_secs) {
            (Some(n), _) => format!("{n} turns/connection"),
            (None, Some(s)) => format!("{s:.0} s"),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "shardgate load: {} {} | {} conn, {} thread(s), {bound}, rate cap {}, chain {}, warmup {}, payload {} B",
            self.transport,
            self.url,
            self.connections,
            self.threads,
            self.rate_cap.map_or("none".to_string(), |r| format!("{r}/s")),
            self.chain,
            self.warmup,
            self.payload_bytes,
        );
        let _ = writeln!(
            out,
            "elapsed {:.3} s | turns ok {} failed {} | {:.1} turns/s | events {} ({:.1}/s) | warm-ups ok {} | connects {}",
            self.elapsed_secs,
            self.turns_ok,
            self.turns_failed,
            self.turns_per_sec,
            self.events,
            self.events_per_sec,
            self.warmups_ok,
            self.connects,
        );
        if let Some(hold) = self.idle_hold_secs {
            let _ = writeln!(
                out,
                "idle: {} of {} connections held open {hold:.1} s",
                self.idle_open, self.connections
            );
        }
        let _ = writeln!(
            out,
            "{:<18}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "µs", "count", "p50", "p90", "p95", "p99", "p99.9", "max", "mean"
        );
        for (name, h) in [
            ("ttft", &self.ttft_us),
            ("event one-way", &self.event_latency_us),
            ("turn", &self.turn_us),
            ("warm-up", &self.warmup_us),
            ("connect", &self.connect_us),
            ("first turn", &self.first_turn_us),
        ] {
            let _ = writeln!(
                out,
                "{:<18}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10.0}",
                name, h.count, h.p50, h.p90, h.p95, h.p99, h.p999, h.max, h.mean
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let _ = writeln!(out, "errors: {} total", self.errors_total);
            for (key, n) in &self.errors {
                let _ = writeln!(out, "  {key:<40}{n:>9}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::config::Target;
    use crate::load::stats::record;

    #[test]
    fn report_has_rates_percentiles_and_errors() {
        let config = LoadConfig::new(Target::parse("ws://127.0.0.1:9/v1/responses").unwrap(), "k");
        let mut stats = Stats::default();
        for v in 1..=1000 {
            record(&mut stats.turn_us, v);
        }
        stats.turns_ok = 10;
        stats.events = 100;
        stats.error("turn_timeout".into());
        let r = Report::new(&config, &stats, Duration::from_secs(2));
        assert_eq!(r.turns_per_sec, 5.0);
        assert_eq!(r.events_per_sec, 50.0);
        assert_eq!(r.turn_us.count, 1000);
        assert_eq!(r.turn_us.p50, 500);
        assert_eq!(r.turn_us.p95, 950);
        assert_eq!(r.turn_us.max, 1000);
        assert_eq!(r.ttft_us.count, 0);
        assert_eq!(r.errors_total, 1);
        let table = r.table();
        assert!(table.contains("turn_timeout"));
        assert!(table.contains("5.0 turns/s"));
        let json: sonic_rs::Value = sonic_rs::from_str(&r.to_json().unwrap()).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(
            json.pointer(sonic_rs::pointer!["turn_us", "p99"]).as_u64(),
            Some(990)
        );
        assert_eq!(
            json.pointer(sonic_rs::pointer!["errors", "turn_timeout"])
                .as_u64(),
            Some(1)
        );
        assert_eq!(json.get("transport").as_str(), Some("websocket"));
    }

    #[test]
    fn distribution_is_monotonic_and_names_each_histogram() {
        let config = LoadConfig::new(Target::parse("ws://127.0.0.1:9/v1/responses").unwrap(), "k");
        let mut stats = Stats::default();
        for v in 1..=10_000 {
            record(&mut stats.ttft_us, v);
        }
        let r = Report::new(&config, &stats, Duration::from_secs(1));
        let csv = r.distribution_csv();
        let ttft: Vec<(f64, u64)> = csv
            .lines()
            .filter_map(|l| l.strip_prefix("ttft,"))
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].parse().unwrap(), f[1].parse().unwrap())
            })
            .collect();
        assert!(ttft.len() > 20, "{csv}");
        assert!(ttft
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!(ttft.iter().all(|(p, _)| *p < 100.0));
        let median = ttft.iter().find(|(p, _)| *p >= 50.0).unwrap().1;
        assert!((4900..=5100).contains(&median), "{median}");
        assert!(!csv.contains("\nturn,"), "empty histograms have no rows");
    }
}
