//! The on-disk spool: where usage records wait while their sink fails, in order.
//!
//! Records are appended as JSONL to numbered segment files (`spool-<seq>.jsonl`) in
//! `spool_dir`, created on first use. Replay reads the oldest segment from an offset and deletes
//! a segment once all of it reached the sink. After a crash, the partly replayed segment is
//! replayed again from its start; records carry their response id, so the Redis sink drops the
//! repeats and file consumers can. The spool never grows past `spool_max_bytes`: records beyond
//! it are refused (the caller counts and logs them).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sonic_rs::JsonValueTrait;

use super::sink::Batch;

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 1024 * 1024;

#[derive(Debug)]
struct Segment {
    seq: u64,
    size: u64,
}

/// The spool of one usage writer.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segments: VecDeque<Segment>,
    /// The newest segment, open for appending.
    tail: Option<File>,
    /// Bytes of the oldest segment already replayed.
    read_offset: u64,
    /// Bytes held (not yet replayed).
    bytes: u64,
    dirty: bool,
    /// Appends go to a new segment (the last one left by a previous run may end torn).
    start_segment: bool,
}

/// What [`Spool::read`] returns: records in order and the bytes they span.
pub struct Chunk {
    /// The records.
    pub lines: Batch,
    /// Bytes to pass to [`Spool::consume`] once they reached the sink.
    pub bytes: u64,
    /// Lines skipped as unreadable (a torn last write, an unparsable record).
    pub corrupt: u64,
}

impl Spool {
    /// Opens the spool in `dir`, picking up segments a previous run left behind.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let mut segments = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let seq = name
                        .to_string_lossy()
                        .strip_prefix("spool-")
                        .and_then(|s| s.strip_suffix(".jsonl"))
                        .and_then(|s| s.parse::<u64>().ok());
                    if let Some(seq) = seq {
                        let size = entry.metadata()?.len();
                        segments.push(Segment { seq, size });
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        segments.sort_by_key(|s| s.seq);
        let bytes = segments.iter().map(|s| s.size).sum();
        let start_segment = !segments.is_empty();
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segments: segments.into(),
            tail: None,
            read_offset: 0,
            bytes,
            dirty: false,
            start_segment,
        })
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("spool-{seq:012}.jsonl"))
    }

    /// Appends records in order until the size limit; returns how many were taken (the rest
    /// did not fit).
    pub fn append(&mut self, batch: &Batch) -> io::Result<usize> {
        let mut taken = 0;
        for i in 0..batch.len() {
            let line = batch.text(i..i + 1);
            let len = line.len() as u64;
            if self.bytes + len > self.max_bytes {
                break;
            }
            let file = self.tail_for(len)?;
            file.write_all(line.as_bytes())?;
            if let Some(seg) = self.segments.back_mut() {
                seg.size += len;
            }
            self.bytes += len;
            self.dirty = true;
            taken += 1;
        }
        Ok(taken)
    }

    /// The segment file to append `len` bytes to, starting a new one when needed.
    fn tail_for(&mut self, len: u64) -> io::Result<&mut File> {
        let full = self.start_segment
            || self
                .segments
                .back()
                .is_none_or(|s| s.size > 0 && s.size + len > SEGMENT_BYTES);
        if self.tail.is_none() || full {
            if let Some(old) = self.tail.take() {
                old.sync_data()?;
            }
            let seq = if full {
                self.segments.back().map_or(1, |s| s.seq + 1)
            } else {
                self.segments.back().map_or(1, |s| s.seq)
            };
            std::fs::create_dir_all(&self.dir)?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(seq))?;
            if full {
                self.segments.push_back(Segment { seq, size: 0 });
            }
            self.tail = Some(file);
            self.start_segment = false;
        }
        self.tail
            .as_mut()
            .ok_or_else(|| io::Error::other("spool tail not open"))
    }

    /// Makes appended records durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            if let Some(f) = &self.tail {
                f.sync_data()?;
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// Up to `max` records from the front of the spool (the oldest segment only).
    pub fn read(&mut self, max: usize) -> io::Result<Chunk> {
        let mut chunk = Chunk {
            lines: Batch::default(),
            bytes: 0,
            corrupt: 0,
        };
        let Some(front) = self.segments.front() else {
            return Ok(chunk);
        };
        let (seq, size) = (front.seq, front.size);
        let mut file = File::open(self.path(seq))?;
        file.seek(SeekFrom::Start(self.read_offset))?;
        let mut reader = BufReader::new(file).take(size - self.read_offset.min(size));
        let mut buf = Vec::new();
        while chunk.lines.len() < max {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            chunk.bytes += n as u64;
            if !parse_into(&buf, &mut chunk.lines) {
                chunk.corrupt += 1;
            }
        }
        Ok(chunk)
    }

    /// Marks `bytes` from the front as delivered; deletes segments that are done.
    pub fn consume(&mut self, bytes: u64) -> io::Result<()> {
        self.read_offset += bytes;
        self.bytes = self.bytes.saturating_sub(bytes);
        while let Some(front) = self.segments.front() {
            if self.read_offset < front.size {
                break;
            }
            let seq = front.seq;
            if self.segments.len() == 1 {
                self.tail = None;
            }
            std::fs::remove_file(self.path(seq))?;
            self.segments.pop_front();
            self.read_offset = 0;
        }
        Ok(())
    }
}

/// Appends a spooled line to `batch` as a record; `false` for a torn or foreign line.
fn parse_into(raw: &[u8], batch: &mut Batch) -> bool {
    let Some(json) = raw
        .strip_suffix(b"\n")
        .and_then(|line| std::str::from_utf8(line).ok())
    else {
        return false;
    };
    let Ok(id) = sonic_rs::get(json, &["response_id"]) else {
        return false;
    };
    match id.as_str() {
        Some(id) => {
            batch.push(id, json);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(i: usize) -> String {
        format!("{{\"response_id\":\"resp_{i}\",\"input_tokens\":{i}}}")
    }

    fn lines(range: std::ops::Range<usize>) -> Batch {
        let mut batch = Batch::default();
        for i in range {
            batch.push(&format!("resp_{i}"), &json(i));
        }
        batch
    }

    fn drain(spool: &mut Spool) -> Vec<String> {
        let mut ids = vec![];
        loop {
            let chunk = spool.read(3).unwrap();
            if chunk.bytes == 0 {
                return ids;
            }
            ids.extend(chunk.lines.iter().map(|l| l.id.to_string()));
            spool.consume(chunk.bytes).unwrap();
        }
    }

    #[test]
    fn replays_in_order_across_reopen_and_deletes_what_it_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let mut spool = Spool::open(&spool_dir, 1 << 20).unwrap();
        assert!(spool.is_empty());
        assert!(!spool_dir.exists(), "created only when first used");
        assert_eq!(spool.append(&lines(0..5)).unwrap(), 5);
        spool.sync().unwrap();
        // Replay two, then "crash" and reopen: the rest is still there.
        let chunk = spool.read(2).unwrap();
        assert_eq!(chunk.lines, lines(0..2));
        spool.consume(chunk.bytes).unwrap();
        drop(spool);
        let mut spool = Spool::open(&spool_dir, 1 << 20).unwrap();
        assert_eq!(spool.append(&lines(5..6)).unwrap(), 1);
        let ids = drain(&mut spool);
        // The partly replayed segment comes again from its start (the sink deduplicates by id).
        let want: Vec<String> = (0..6).map(|i| format!("resp_{i}")).collect();
        assert_eq!(ids, want);
        assert!(spool.is_empty());
        assert_eq!(std::fs::read_dir(&spool_dir).unwrap().count(), 0);
        // Usable again after draining.
        assert_eq!(spool.append(&lines(6..7)).unwrap(), 1);
        assert_eq!(drain(&mut spool), vec!["resp_6".to_string()]);
    }

    #[test]
    fn refuses_records_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let one = json(1).len() as u64 + 1;
        let mut spool = Spool::open(dir.path(), one * 3).unwrap();
        assert_eq!(spool.append(&lines(1..6)).unwrap(), 3);
        assert_eq!(spool.bytes(), one * 3);
    }

    #[test]
    fn skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&lines(1..2)).unwrap();
        drop(spool);
        let path = dir.path().join(format!("spool-{:012}.jsonl", 1));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"response_id\":\"tor").unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&lines(2..3)).unwrap();
        let chunk = spool.read(10).unwrap();
        assert_eq!(chunk.lines, lines(1..2));
        assert_eq!(chunk.corrupt, 1);
        spool.consume(chunk.bytes).unwrap();
        assert_eq!(drain(&mut spool), vec!["resp_2".to_string()]);
        assert!(spool.is_empty());
    }
}
