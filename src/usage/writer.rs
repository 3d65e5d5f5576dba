//! The usage writer, driven by the control thread: batches records into the configured sink,
//! spools them on disk while the sink fails, and replays the spool in order once it recovers.
//!
//! Records are never silently lost: a record is in the sink, in the spool, or counted in
//! `usage_dropped` (the spool is full or the disk failed) with a rate-limited error line.
//! While the spool holds anything, new records go behind it, so the sink sees them in order.

use std::time::{Duration, Instant};

use crate::config::{UsageConfig, UsageSinkKind};
use crate::metrics::export::InPlace;

use super::encode::write_record;
use super::file::FileSink;
use super::redis_stream::RedisStreamSink;
use super::sink::{Batch, Sink, SinkError};
use super::spool::Spool;
use super::{RequestType, UsageRecord};

/// Records buffered before a write without waiting for the tick.
const BATCH: usize = 256;
/// A usual record's line, to size the batch buffer once.
const LINE_BYTES: usize = 512;
/// Records replayed from the spool per tick at most (bounds the control loop's time there).
const REPLAY_PER_TICK: usize = 4096;
/// First and longest wait before retrying a failed sink.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why the writer could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UsageWriterError {
    /// The sink could not be opened.
    #[error("cannot open the usage sink: {0}")]
    Sink(#[from] SinkError),
    /// The spool directory could not be read.
    #[error("cannot open the usage spool {path}: {source}")]
    Spool {
        /// The spool directory.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
}

/// What the writer did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageStats {
    /// Records received.
    pub records: u64,
    /// Upstream attempts over all records.
    pub attempts: u64,
    /// Records the sink took directly.
    pub written: u64,
    /// Records put in the spool.
    pub spooled: u64,
    /// Spooled records the sink took later.
    pub replayed: u64,
    /// Records lost: spool full, spool I/O failed, or a spooled line unreadable.
    pub dropped: u64,
    /// Sink failures.
    pub sink_errors: u64,
}

/// Writes usage records to the configured sink.
pub struct UsageWriter {
    sink: Box<dyn Sink>,
    spool: Spool,
    pending: Batch,
    fsync_interval: Duration,
    last_sync: Instant,
    unsynced: bool,
    /// While the sink is failing: when to try it again.
    retry_at: Option<Instant>,
    backoff: Duration,
    stats: UsageStats,
    /// Records by request type and by terminal status.
    by_type: [u64; 4],
    by_status: std::collections::BTreeMap<String, u64>,
}

impl UsageWriter {
    /// Opens the sink (`redis_timeout` bounds every Redis call) and the spool.
    pub fn open(cfg: &UsageConfig, redis_timeout: Duration) -> Result<Self, UsageWriterError> {
        let sink: Box<dyn Sink> = match cfg.sink {
            UsageSinkKind::File => {
                Box::new(FileSink::open(&cfg.path, cfg.rotate_bytes).map_err(SinkError::Io)?)
            }
            UsageSinkKind::Redis => {
                let url = cfg
                    .redis_url
                    .as_ref()
                    .ok_or_else(|| SinkError::Redis("usage.redis_url is not set".into()))?;
                Box::new(RedisStreamSink::new(url, &cfg.stream, redis_timeout)?)
            }
        };
        let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes).map_err(|source| {
            UsageWriterError::Spool {
                path: cfg.spool_dir.display().to_string(),
                source,
            }
        })?;
        Ok(Self::with_sink(sink, spool, cfg.fsync_interval))
    }

    /// A writer over a given sink and spool.
    pub fn with_sink(sink: Box<dyn Sink>, spool: Spool, fsync_interval: Duration) -> Self {
        if !spool.is_empty() {
            tracing::warn!(
                bytes = spool.bytes(),
                "usage spool holds records from an earlier run; replaying them first"
            );
        }
        UsageWriter {
            sink,
            spool,
            pending: Batch::with_capacity(BATCH, LINE_BYTES),
            fsync_interval,
            last_sync: Instant::now(),
            unsynced: false,
            retry_at: None,
            backoff: BACKOFF_MIN,
            stats: UsageStats::default(),
            by_type: [0; 4],
            by_status: std::collections::BTreeMap::new(),
        }
    }

    /// Takes one record, encoding it into the pending batch; writes the batch when enough are
    /// buffered.
    pub fn push(&mut self, rec: UsageRecord) {
        self.stats.records += 1;
        self.stats.attempts += u64::from(rec.attempts);
        self.by_type[rec.request_type as usize] += 1;
        match self.by_status.get_mut(&*rec.status) {
            Some(n) => *n += 1,
            None => {
                self.by_status.insert(rec.status.to_string(), 1);
            }
        }
        self.pending
            .push_with(&rec.response_id, |out| write_record(out, &rec));
        if self.pending.len() >= BATCH {
            self.flush(Instant::now());
        }
    }

    /// Periodic work: write what is buffered, replay the spool when the sink may be back, fsync.
    pub fn tick(&mut self, now: Instant) {
        self.flush(now);
        if self.unsynced && now.duration_since(self.last_sync) >= self.fsync_interval {
            self.sync(now);
        }
    }

    /// Writes every buffered record and fsyncs, trying a failing sink once more: used at
    /// shutdown. What the sink does not take stays in the spool for the next start.
    pub fn shutdown(&mut self) {
        let now = Instant::now();
        self.retry_at = None;
        self.flush(now);
        self.sync(now);
        if !self.spool.is_empty() {
            tracing::warn!(
                bytes = self.spool.bytes(),
                "usage sink unavailable at shutdown: records stay in the spool and are replayed at the next start"
            );
        }
    }

    /// Counters for the stats document.
    pub fn stats(&self) -> UsageStats {
        self.stats
    }

    /// Writes the counters as named in the stats document, and the records by request type
    /// (`usage_by_type`) and terminal status (`usage_by_status`).
    pub fn write_counters(&self, out: &mut InPlace<'_>) {
        let s = self.stats;
        for (name, v) in [
            ("usage_records", s.records),
            ("usage_attempts", s.attempts),
            ("usage_written", s.written),
            ("usage_spooled", s.spooled),
            ("usage_replayed", s.replayed),
            ("usage_dropped", s.dropped),
            ("usage_sink_errors", s.sink_errors),
        ] {
            out.counter(name, v);
        }
        let types = [
            RequestType::Ws,
            RequestType::Stream,
            RequestType::Sync,
            RequestType::Realtime,
        ];
        out.family(
            "usage_by_type",
            types.map(|t| (t.as_str(), self.by_type[t as usize])),
        );
        out.family(
            "usage_by_status",
            self.by_status.iter().map(|(k, &v)| (k.as_str(), v)),
        );
    }

    fn flush(&mut self, now: Instant) {
        let sink_due = self.retry_at.is_none_or(|t| now >= t);
        if sink_due && !self.spool.is_empty() {
            self.replay(now);
        }
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let direct = sink_due && self.spool.is_empty();
        if direct {
            match self.sink.write(&batch) {
                Ok(()) => {
                    self.stats.written += batch.len() as u64;
                    self.unsynced = true;
                }
                Err(e) => {
                    self.sink_failed(now, &e);
                    self.spool_batch(&batch);
                }
            }
        } else {
            self.spool_batch(&batch);
        }
        self.pending = batch;
        self.pending.clear();
    }

    fn replay(&mut self, now: Instant) {
        let mut budget = REPLAY_PER_TICK;
        while budget > 0 && !self.spool.is_empty() {
            let chunk = match self.spool.read(budget.min(BATCH)) {
                Ok(c) => c,
                Err(e) => {
                    crate::error_limited!(error = %e, "usage spool cannot be read; retrying later");
                    self.retry_at = Some(now + BACKOFF_MAX);
                    return;
                }
            };
            if let Err(e) = self.sink.write(&chunk.lines) {
                self.sink_failed(now, &e);
                return;
            }
            self.unsynced = true;
            self.stats.replayed += chunk.lines.len() as u64;
            if chunk.corrupt > 0 {
                self.stats.dropped += chunk.corrupt;
                crate::error_limited!(
                    lines = chunk.corrupt,
                    "unreadable lines in the usage spool were skipped"
                );
            }
            budget = budget.saturating_sub(chunk.lines.len().max(1));
            // The sink has the records: make that durable before forgetting them.
            if let Err(e) = self.sink.sync() {
                self.sink_failed(now, &e);
                return;
            }
            if let Err(e) = self.spool.consume(chunk.bytes) {
                crate::error_limited!(error = %e, "usage spool segment cannot be removed");
            }
        }
        if self.spool.is_empty() {
            self.recovered();
        }
    }

    fn spool_batch(&mut self, batch: &Batch) {
        let taken = match self.spool.append(batch) {
            Ok(n) => n,
            Err(e) => {
                crate::error_limited!(error = %e, "usage spool write failed");
                0
            }
        };
        self.stats.spooled += taken as u64;
        let lost = (batch.len() - taken) as u64;
        if lost > 0 {
            self.stats.dropped += lost;
            crate::error_limited!(
                lost,
                dropped_total = self.stats.dropped,
                "usage records dropped: the sink is failing and the spool is full or failing"
            );
        }
    }

    fn sink_failed(&mut self, now: Instant, e: &SinkError) {
        self.stats.sink_errors += 1;
        if self.retry_at.is_none() {
            tracing::error!(error = %e, "usage sink failed: spooling records on disk");
        } else {
            crate::error_limited!(error = %e, "usage sink still failing");
        }
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn recovered(&mut self) {
        if self.retry_at.take().is_some() {
            tracing::info!(
                replayed = self.stats.replayed,
                "usage sink recovered; spool replayed"
            );
        }
        self.backoff = BACKOFF_MIN;
    }

    fn sync(&mut self, now: Instant) {
        if self.unsynced {
            if let Err(e) = self.sink.sync() {
                self.sink_failed(now, &e);
            }
            self.unsynced = false;
        }
        if let Err(e) = self.spool.sync() {
            crate::error_limited!(error = %e, "usage spool fsync failed");
        }
        self.last_sync = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A sink that fails while `down` is set and records what it took.
    #[derive(Clone, Default)]
    struct Flaky {
        down: Arc<Mutex<bool>>,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Flaky {
        fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
            if *self.down.lock().unwrap() {
                return Err(SinkError::Redis("down".into()));
            }
            self.got
                .lock()
                .unwrap()
                .extend(batch.iter().map(|l| l.id.to_string()));
            Ok(())
        }
        fn sync(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn rec(i: usize) -> UsageRecord {
        UsageRecord::sample(format!("resp_{i}"))
    }

    #[test]
    fn outage_spools_then_replays_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Flaky::default();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let mut w = UsageWriter::with_sink(Box::new(sink.clone()), spool, Duration::ZERO);
        let t0 = Instant::now();
        w.push(rec(0));
        w.tick(t0);
        *sink.down.lock().unwrap() = true;
        w.push(rec(1));
        w.push(rec(2));
        w.tick(t0);
        assert_eq!(w.stats().spooled, 2);
        // Still within the backoff: new records queue behind the spool.
        w.push(rec(3));
        w.tick(t0 + Duration::from_millis(1));
        *sink.down.lock().unwrap() = false;
        w.push(rec(4));
        w.tick(t0 + Duration::from_secs(10));
        let want: Vec<String> = (0..5).map(|i| format!("resp_{i}")).collect();
        assert_eq!(*sink.got.lock().unwrap(), want);
        let s = w.stats();
        assert_eq!((s.records, s.written, s.replayed, s.dropped), (5, 2, 3, 0));
        assert!(s.sink_errors >= 1);
    }

    #[test]
    fn spool_overflow_is_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Flaky::default();
        *sink.down.lock().unwrap() = true;
        let one = sonic_rs::to_string(&rec(1)).unwrap().len() as u64 + 1;
        let spool = Spool::open(dir.path(), one * 2).unwrap();
        let mut w = UsageWriter::with_sink(Box::new(sink.clone()), spool, Duration::ZERO);
        for i in 1..=4 {
            w.push(rec(i));
        }
        w.shutdown();
        let s = w.stats();
        assert_eq!((s.spooled, s.dropped), (2, 2));
        // The next run replays what was spooled.
        *sink.down.lock().unwrap() = false;
        let spool = Spool::open(dir.path(), one * 2).unwrap();
        let mut w = UsageWriter::with_sink(Box::new(sink.clone()), spool, Duration::ZERO);
        w.tick(Instant::now());
        assert_eq!(*sink.got.lock().unwrap(), vec!["resp_1", "resp_2"]);
        assert_eq!(w.stats().replayed, 2);
    }
}
