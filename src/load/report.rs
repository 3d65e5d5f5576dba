//! The outcome of a run: a human table and the same numbers as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::config::{LoadConfig, Stop};
use super::stats::Stats;

/// Percentiles of one histogram, in µs.
#[derive(Clone, Debug, Serialize)]
pub struct HistogramSummary {
    /// Values recorded.
    pub count: u64,
    /// Smallest value.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
}

impl HistogramSummary {
    fn of(h: &Histogram<u64>) -> HistogramSummary {
        if h.is_empty() {
            return HistogramSummary {
                count: 0,
                min: 0,
                mean: 0.0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
        }
        HistogramSummary {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Everything a run measured, with the settings it ran with.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The wire used (`websocket`).
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
    pub ttft_us: HistogramSummary,
    /// Receive wall clock − the event's `mock_ts_us`.
    pub event_latency_us: HistogramSummary,
    /// Frame written → terminal event of a turn.
    pub turn_us: HistogramSummary,
    /// Frame written → terminal event of a warm-up.
    pub warmup_us: HistogramSummary,
    /// TCP connect plus WebSocket handshake.
    pub connect_us: HistogramSummary,
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
        Report {
            transport: "websocket",
            url: config.target.url.clone(),
            connections: config.connections,
            threads: config.threads,
            turns_per_connection,
            duration_secs,
            rate_cap: config.rate,
            chain: config.chain,
            warmup: config.warmup,
            payload_bytes: config.payload_bytes,
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
            ttft_us: HistogramSummary::of(&stats.ttft_us),
            event_latency_us: HistogramSummary::of(&stats.event_latency_us),
            turn_us: HistogramSummary::of(&stats.turn_us),
            warmup_us: HistogramSummary::of(&stats.warmup_us),
            connect_us: HistogramSummary::of(&stats.connect_us),
        }
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
        let _ = writeln!(
            out,
            "{:<18}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "µs", "count", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        for (name, h) in [
            ("ttft", &self.ttft_us),
            ("event one-way", &self.event_latency_us),
            ("turn", &self.turn_us),
            ("warm-up", &self.warmup_us),
            ("connect", &self.connect_us),
        ] {
            let _ = writeln!(
                out,
                "{:<18}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10.0}",
                name, h.count, h.p50, h.p90, h.p99, h.p999, h.max, h.mean
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
    }
}
