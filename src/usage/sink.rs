//! What a durable usage sink does, whatever it writes to, and the batch of encoded records it
//! is handed.

use std::io;
use std::ops::Range;

/// One encoded usage record as a sink reads it: its idempotency key and its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// The response id.
    pub id: &'a str,
    /// The record as one line of JSON (no trailing newline).
    pub json: &'a str,
}

/// Encoded usage records in order, in two reused buffers: every record's JSON line followed by
/// `\n` (what a file or the spool appends, as it is), and every record's id. A record is
/// encoded straight into the buffer, so taking one costs no allocation once the buffers have
/// grown to a batch's size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    text: String,
    ids: String,
    /// Per record: where its id ends in `ids`, where its line (newline included) ends in `text`.
    ends: Vec<(usize, usize)>,
}

impl Batch {
    /// An empty batch with room for `records` records of about `line_bytes` bytes.
    pub fn with_capacity(records: usize, line_bytes: usize) -> Self {
        Batch {
            text: String::with_capacity(records * line_bytes),
            ids: String::with_capacity(records * 64),
            ends: Vec::with_capacity(records),
        }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// `true` when no record is held.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Forgets every record, keeping the buffers.
    pub fn clear(&mut self) {
        self.text.clear();
        self.ids.clear();
        self.ends.clear();
    }

    /// Appends a record already encoded (`json` without its newline).
    pub fn push(&mut self, id: &str, json: &str) {
        self.push_with(id, |out| out.push_str(json));
    }

    /// Appends a record whose JSON `encode` writes at the end of the given buffer (one line,
    /// no newline; it must only append).
    pub fn push_with(&mut self, id: &str, encode: impl FnOnce(&mut String)) {
        self.ids.push_str(id);
        encode(&mut self.text);
        self.text.push('\n');
        self.ends.push((self.ids.len(), self.text.len()));
    }

    /// Record `i` (`i < len()`).
    pub fn get(&self, i: usize) -> Line<'_> {
        let (ids, text) = self.spans(i);
        let line = &self.text[text];
        Line {
            id: &self.ids[ids],
            json: line.strip_suffix('\n').unwrap_or(line),
        }
    }

    /// Every record, in order.
    pub fn iter(&self) -> impl Iterator<Item = Line<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Records `range` as the bytes a file gets: each line followed by its newline.
    pub fn text(&self, range: Range<usize>) -> &str {
        if range.is_empty() {
            return "";
        }
        let start = self.spans(range.start).1.start;
        let end = self.spans(range.end - 1).1.end;
        &self.text[start..end]
    }

    /// Where record `i`'s id and line (newline included) sit in the buffers.
    fn spans(&self, i: usize) -> (Range<usize>, Range<usize>) {
        let (id_start, text_start) = match i.checked_sub(1) {
            Some(prev) => self.ends[prev],
            None => (0, 0),
        };
        let (id_end, text_end) = self.ends[i];
        (id_start..id_end, text_start..text_end)
    }
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
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError>;

    /// Makes everything written so far durable.
    fn sync(&mut self) -> Result<(), SinkError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_records_in_order_with_their_lines() {
        let mut b = Batch::default();
        b.push("r1", "{\"a\":1}");
        b.push_with("r2", |out| out.push_str("{\"b\":2}"));
        b.push("r3", "{}");
        assert_eq!(b.len(), 3);
        assert_eq!(
            b.get(1),
            Line {
                id: "r2",
                json: "{\"b\":2}"
            }
        );
        let ids: Vec<&str> = b.iter().map(|l| l.id).collect();
        assert_eq!(ids, ["r1", "r2", "r3"]);
        assert_eq!(b.text(0..3), "{\"a\":1}\n{\"b\":2}\n{}\n");
        assert_eq!(b.text(1..2), "{\"b\":2}\n");
        assert_eq!(b.text(2..2), "");
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.text(0..0), "");
    }
}
