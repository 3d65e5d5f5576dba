//! The durable usage sink, driven by the control thread.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::time::Instant;

use crate::config::UsageConfig;

use super::UsageRecord;

/// Why the sink could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UsageWriterError {
    /// The file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The failure.
        source: io::Error,
    },
}

/// Writes usage records to the configured sink.
pub struct UsageWriter {
    file: File,
}

impl UsageWriter {
    /// Opens the sink.
    pub fn open(cfg: &UsageConfig) -> Result<Self, UsageWriterError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.path)
            .map_err(|source| UsageWriterError::Open {
                path: cfg.path.display().to_string(),
                source,
            })?;
        Ok(UsageWriter { file })
    }

    /// Writes one record.
    pub fn push(&mut self, rec: UsageRecord) {
        if let Ok(mut line) = sonic_rs::to_vec(&rec) {
            line.push(b'\n');
            let _ = self.file.write_all(&line);
        }
    }

    /// Periodic work (fsync).
    pub fn tick(&mut self, _now: Instant) {
        let _ = self.file.sync_data();
    }

    /// Flushes everything.
    pub fn shutdown(&mut self) {
        let _ = self.file.sync_all();
    }
}
