//! What a durable usage sink does, whatever it writes to.

use std::io;

/// One encoded usage record: its idempotency key and its JSON (no trailing newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The response id.
    pub id: String,
    /// The record as one line of JSON.
    pub json: String,
}

/// Why a sink could not take records.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file operation failed.
    #[error("usage file: {0}")]
    Io(#[from] io::Error),
    /// A Redis call failed or timed out.
    #[error("usage redis: {0}")]
    Redis(String),
}

/// A durable destination for usage records.
pub trait Sink: Send {
    /// Writes `batch` in order. On error, any prefix of it may have been written: the caller
    /// writes the batch again later, so a sink must tolerate (or deduplicate) a replayed record.
    fn write(&mut self, batch: &[Line]) -> Result<(), SinkError>;

    /// Makes everything written so far durable.
    fn sync(&mut self) -> Result<(), SinkError>;
}
