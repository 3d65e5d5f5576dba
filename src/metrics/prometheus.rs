//! The stats document in the Prometheus text exposition format (version 0.0.4), for `/metrics`.
//!
//! - Shard counters: `shardgate_<name>_total{shard="N"}`; gauges (`*_open`, `*_in_flight`, `*_len`):
//!   `shardgate_<name>{shard="N"}`.
//! - Labeled counters: `shardgate_<family>_total{shard="N",label="..."}`.
//! - Control-thread counters: `shardgate_<name>_total`; labeled ones `{label="..."}`, gauges
//!   among them (`*_percent`) without `_total`.
//! - Histograms: summaries `shardgate_<name>_seconds`, merged over shards. As in the standard
//!   client libraries, quantiles cover the rolling window while `_sum` / `_count` are totals
//!   since start (`_sum` is mean × count, at the histogram's 3-digit precision).

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write;

use super::export::{is_gauge, StatsDoc};

/// Renders `doc` as Prometheus text.
pub fn render(doc: &StatsDoc) -> String {
    let mut out = String::with_capacity(8 * 1024);
    header(
        &mut out,
        "shardgate_uptime_seconds",
        "gauge",
        "Seconds since start.",
    );
    let _ = writeln!(out, "shardgate_uptime_seconds {}", doc.uptime_secs);

    let shards = &doc.total.per_shard;
    let names: BTreeSet<&str> = shards
        .iter()
        .flat_map(|s| s.counters.keys().map(String::as_str))
        .collect();
    for name in names {
        let (metric, kind) = if is_gauge(name) {
            (format!("shardgate_{}", sanitize(name)), "gauge")
        } else {
            (format!("shardgate_{}_total", sanitize(name)), "counter")
        };
        header(&mut out, &metric, kind, &format!("Shard {kind} {name}."));
        for (i, s) in shards.iter().enumerate() {
            if let Some(v) = s.counters.get(name) {
                let _ = writeln!(out, "{metric}{{shard=\"{i}\"}} {v}");
            }
        }
    }

    let families: BTreeSet<&str> = shards
        .iter()
        .flat_map(|s| s.labeled.keys().map(String::as_str))
        .collect();
    for family in families {
        let metric = format!("shardgate_{}_total", sanitize(family));
        header(
            &mut out,
            &metric,
            "counter",
            &format!("Shard counter {family}, by label."),
        );
        for (i, s) in shards.iter().enumerate() {
            for (label, v) in s.labeled.get(family).into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{metric}{{shard=\"{i}\",label=\"{}\"}} {v}",
                    escape(label)
                );
            }
        }
    }

    let declared: HashSet<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    for (name, v) in &doc.control.counters {
        let metric = format!("shardgate_{}_total", sanitize(name));
        if declared.contains(&metric) {
            // A shard counter of the same name already carries it.
            continue;
        }
        header(
            &mut out,
            &metric,
            "counter",
            &format!("Control thread counter {name}."),
        );
        let _ = writeln!(out, "{metric} {v}");
    }
    for (family, labels) in &doc.control.labeled {
        let (metric, kind) = if is_gauge(family) {
            (format!("shardgate_{}", sanitize(family)), "gauge")
        } else {
            (format!("shardgate_{}_total", sanitize(family)), "counter")
        };
        if declared.contains(&metric) {
            continue;
        }
        header(
            &mut out,
            &metric,
            kind,
            &format!("Control thread {kind} {family}, by label."),
        );
        for (label, v) in labels {
            let _ = writeln!(out, "{metric}{{label=\"{}\"}} {v}", escape(label));
        }
    }

    for (name, total) in &doc.total.merged.hists {
        let metric = format!("shardgate_{}_seconds", sanitize(name));
        header(
            &mut out,
            &metric,
            "summary",
            &format!("Histogram {name}: window quantiles, totals since start."),
        );
        let w = doc
            .window
            .merged
            .hists
            .get(name)
            .copied()
            .unwrap_or_default();
        for (q, v) in [
            ("0.5", w.p50),
            ("0.9", w.p90),
            ("0.95", w.p95),
            ("0.99", w.p99),
            ("0.999", w.p999),
        ] {
            if w.count == 0 {
                let _ = writeln!(out, "{metric}{{quantile=\"{q}\"}} NaN");
            } else {
                let _ = writeln!(out, "{metric}{{quantile=\"{q}\"}} {}", secs(v));
            }
        }
        let sum = total.mean * total.count as f64 / 1e6;
        let _ = writeln!(out, "{metric}_sum {sum}");
        let _ = writeln!(out, "{metric}_count {}", total.count);
    }
    out
}

fn header(out: &mut String, metric: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {metric} {help}");
    let _ = writeln!(out, "# TYPE {metric} {kind}");
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// A metric name from a counter name: anything outside `[a-zA-Z0-9_]` becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::export::{HistSummary, Section};

    #[test]
    fn renders_counters_gauges_labels_and_summaries() {
        let mut shard = Section::default();
        shard.counters.insert("turns".into(), 3);
        shard.counters.insert("sessions_open".into(), 1);
        shard
            .labeled
            .entry("close_codes".into())
            .or_default()
            .insert("10\"12".into(), 2);
        let mut doc = StatsDoc::default();
        doc.total.per_shard = vec![shard];
        doc.control.counters.insert("usage_written".into(), 3);
        doc.control
            .labeled
            .entry("usage_by_type".into())
            .or_default()
            .insert("ws".into(), 3);
        let h = HistSummary {
            count: 2,
            min: 1_000,
            p50: 1_000,
            p90: 2_000,
            p95: 2_000,
            p99: 2_000,
            p999: 2_000,
            max: 2_000,
            mean: 1_500.0,
        };
        doc.total.merged.hists.insert("client_ttft".into(), h);
        doc.window.merged.hists.insert("client_ttft".into(), h);
        doc.total
            .merged
            .hists
            .insert("dial_ws".into(), HistSummary::default());
        let text = render(&doc);
        assert!(text.contains(
            "# TYPE shardgate_turns_total counter\nshardgate_turns_total{shard=\"0\"} 3\n"
        ));
        assert!(text.contains("shardgate_sessions_open{shard=\"0\"} 1\n"));
        assert!(text.contains("shardgate_close_codes_total{shard=\"0\",label=\"10\\\"12\"} 2\n"));
        assert!(text.contains("shardgate_usage_written_total 3\n"));
        assert!(text.contains("shardgate_usage_by_type_total{label=\"ws\"} 3\n"));
        assert!(text.contains("shardgate_client_ttft_seconds{quantile=\"0.5\"} 0.001\n"));
        assert!(text.contains("shardgate_client_ttft_seconds_sum 0.003\n"));
        assert!(text.contains("shardgate_client_ttft_seconds_count 2\n"));
        assert!(text.contains("shardgate_dial_ws_seconds{quantile=\"0.99\"} NaN\n"));
    }
}
