//! `shardgate stats`: asks a running gateway's stats socket for its document and prints it as a
//! table (or as the raw JSON), once or every second.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::metrics::export::{Scope, StatsDoc};

/// Why the stats could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach the stats socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The exchange failed midway.
    #[error("stats socket I/O: {0}")]
    Io(#[from] io::Error),
    /// The gateway answered with an error line.
    #[error("the gateway answered: {0}")]
    Refused(String),
    /// The answer is not a stats document.
    #[error("the stats document is not valid: {0}")]
    Invalid(String),
}

/// A connection to a stats socket.
pub struct StatsClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl StatsClient {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        Ok(StatsClient {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `stats` and returns the JSON line as received.
    pub fn stats_json(&mut self) -> Result<String, ClientError> {
        self.writer.write_all(b"stats\n")?;
        let line = self.read_line()?;
        if let Some(e) = line.strip_prefix("error:") {
            return Err(ClientError::Refused(e.trim().to_string()));
        }
        Ok(line)
    }

    /// Sends `stats` and parses the document.
    pub fn stats(&mut self) -> Result<StatsDoc, ClientError> {
        let json = self.stats_json()?;
        sonic_rs::from_str(&json).map_err(|e| ClientError::Invalid(e.to_string()))
    }

    /// Sends `hist NAME` (or `hist NAME total`) and returns the interval log.
    pub fn hist(&mut self, name: &str, total: bool) -> Result<String, ClientError> {
        let suffix = if total { " total" } else { "" };
        self.writer
            .write_all(format!("hist {name}{suffix}\n").as_bytes())?;
        let mut log = String::new();
        loop {
            let line = self.read_line()?;
            if log.is_empty() {
                if let Some(e) = line.strip_prefix("error:") {
                    return Err(ClientError::Refused(e.trim().to_string()));
                }
            }
            if line.is_empty() {
                return Ok(log);
            }
            log.push_str(&line);
            log.push('\n');
        }
    }

    /// Sends a raw request line and returns the first reply line.
    pub fn request(&mut self, line: &str) -> Result<String, ClientError> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        self.read_line()
    }

    fn read_line(&mut self) -> Result<String, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let trimmed = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(trimmed);
        Ok(line)
    }
}

/// Runs `stats --hist NAME [--total]`: prints the histogram's interval log.
pub fn print_hist(socket: &Path, name: &str, total: bool) -> Result<(), ClientError> {
    let log = StatsClient::connect(socket)?.hist(name, total)?;
    let mut out = io::stdout();
    out.write_all(log.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Runs the `stats` command: prints the document once, or every second with `watch`.
pub fn run(socket: &Path, watch: bool, json: bool) -> Result<(), ClientError> {
    let mut client = StatsClient::connect(socket)?;
    let mut out = io::stdout();
    loop {
        let text = if json {
            let mut j = client.stats_json()?;
            j.push('\n');
            j
        } else {
            render(&client.stats()?)
        };
        if watch && !json {
            // Clear the screen and home the cursor between refreshes.
            out.write_all(b"\x1b[2J\x1b[H")?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The document as a table: merged histograms (window and total, milliseconds), then counters
/// (window and total), labeled counters, derived ratios and the control thread's counters.
pub fn render(doc: &StatsDoc) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "shardgate: up {:.1}s, {} shard(s), window {:.1}s",
        doc.uptime_secs, doc.shards, doc.window.secs
    );
    let _ = writeln!(
        s,
        "\n{:<20} {:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "histogram (ms)", "scope", "count", "p50", "p90", "p95", "p99", "p99.9", "max"
    );
    let mut empty = vec![];
    for (name, total) in &doc.total.merged.hists {
        if total.count == 0 {
            empty.push(name.as_str());
            continue;
        }
        let window = doc
            .window
            .merged
            .hists
            .get(name)
            .copied()
            .unwrap_or_default();
        for (scope, h) in [("window", window), ("total", *total)] {
            let _ = writeln!(
                s,
                "{:<20} {:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                if scope == "window" { name.as_str() } else { "" },
                scope,
                h.count,
                ms(h.p50),
                ms(h.p90),
                ms(h.p95),
                ms(h.p99),
                ms(h.p999),
                ms(h.max)
            );
        }
    }
    if !empty.is_empty() {
        let _ = writeln!(s, "(no values yet: {})", empty.join(", "));
    }
    let _ = writeln!(s, "\n{:<36} {:>12} {:>12}", "counter", "window", "total");
    for (name, total) in &doc.total.merged.counters {
        let w = doc.window.merged.counters.get(name).copied().unwrap_or(0);
        let _ = writeln!(s, "{name:<36} {w:>12} {total:>12}");
    }
    for (family, labels) in &doc.total.merged.labeled {
        for (label, total) in labels {
            let w = window_labeled(&doc.window, family, label);
            let key = format!("{family}{{{label}}}");
            let _ = writeln!(s, "{key:<36} {w:>12} {total:>12}");
        }
    }
    if !doc.total.merged.derived.is_empty() {
        let _ = writeln!(s, "\n{:<36} {:>12} {:>12}", "derived", "window", "total");
        for (name, total) in &doc.total.merged.derived {
            let w = doc.window.merged.derived.get(name).copied().unwrap_or(0.0);
            let _ = writeln!(s, "{name:<36} {w:>12.3} {total:>12.3}");
        }
    }
    let c = &doc.control;
    if !c.counters.is_empty() {
        let _ = writeln!(s, "\n{:<36} {:>12}", "usage writer", "total");
        for (name, v) in &c.counters {
            let _ = writeln!(s, "{name:<36} {v:>12}");
        }
        for (family, labels) in &c.labeled {
            for (label, v) in labels {
                let key = format!("{family}{{{label}}}");
                let _ = writeln!(s, "{key:<36} {v:>12}");
            }
        }
        for (name, v) in &c.derived {
            let _ = writeln!(s, "{name:<36} {v:>12.3}");
        }
    }
    s
}

fn window_labeled(window: &Scope, family: &str, label: &str) -> u64 {
    window
        .merged
        .labeled
        .get(family)
        .and_then(|l| l.get(label))
        .copied()
        .unwrap_or(0)
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::export::HistSummary;

    #[test]
    fn table_shows_histograms_counters_and_labels() {
        let mut doc = StatsDoc {
            uptime_secs: 3.0,
            shards: 2,
            ..StatsDoc::default()
        };
        let h = HistSummary {
            count: 5,
            p50: 1_500,
            max: 9_000,
            ..HistSummary::default()
        };
        doc.total.merged.hists.insert("client_ttft".into(), h);
        doc.total
            .merged
            .hists
            .insert("dial_ws".into(), HistSummary::default());
        doc.window.merged.hists.insert("client_ttft".into(), h);
        doc.total.merged.counters.insert("turns".into(), 7);
        doc.window.merged.counters.insert("turns".into(), 2);
        doc.total
            .merged
            .labeled
            .entry("retries".into())
            .or_default()
            .insert("timeout".into(), 4);
        doc.control.counters.insert("usage_written".into(), 7);
        let t = render(&doc);
        assert!(t.contains("client_ttft"), "{t}");
        assert!(t.contains("1.500") && t.contains("9.000"), "{t}");
        assert!(t.lines().any(|l| l.starts_with("turns")
            && l.split_whitespace().collect::<Vec<_>>() == ["turns", "2", "7"]));
        assert!(t.contains("retries{timeout}"), "{t}");
        assert!(t.contains("(no values yet: dial_ws)"), "{t}");
        assert!(t.contains("usage_written"), "{t}");
    }
}
