//! The JSONL file sink: append-only, fsync in batches, rotated by size.
//!
//! When the file would grow past `rotate_bytes` it is renamed to `PATH.N` (N one more than the
//! highest existing suffix, so `PATH.1` is the oldest) and a new `PATH` is started. Reading
//! `PATH.1 … PATH.N` then `PATH` gives every record in order.
//!
//! A batch goes to the file straight from the batch's buffer, one `write` for all of it (one per
//! run of lines around a rotation): copying it into a `BufWriter` first cost a `memcpy` of every
//! byte (~340 instructions a turn, callgrind) to save a `write` per few ticks.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::sink::{Batch, Sink, SinkError};

/// The file sink.
pub struct FileSink {
    path: PathBuf,
    file: File,
    size: u64,
    rotate_bytes: u64,
    next_suffix: u64,
}

impl FileSink {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: &Path, rotate_bytes: u64) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(FileSink {
            path: path.to_path_buf(),
            file,
            size,
            rotate_bytes,
            next_suffix: highest_suffix(path)? + 1,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        let rotated = suffixed(&self.path, self.next_suffix);
        std::fs::rename(&self.path, &rotated)?;
        self.next_suffix += 1;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Where the run of records from `from` that the current file takes ends (a record goes
    /// into a file that is empty or that it keeps within `rotate_bytes`), and the file's size
    /// after them.
    fn run_end(&self, batch: &Batch, from: usize) -> (usize, u64) {
        let mut size = self.size;
        for i in from..batch.len() {
            let len = batch.text(i..i + 1).len() as u64;
            if size > 0 && size + len > self.rotate_bytes {
                return (i, size);
            }
            size += len;
        }
        (batch.len(), size)
    }
}

impl Sink for FileSink {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let all = batch.text(0..batch.len());
        if self.size + all.len() as u64 <= self.rotate_bytes {
            self.file.write_all(all.as_bytes())?;
            self.size += all.len() as u64;
            return Ok(());
        }
        let mut from = 0;
        while from < batch.len() {
            let (end, size) = self.run_end(batch, from);
            if end == from {
                // The file is not empty and the next record would pass the limit.
                self.rotate()?;
                continue;
            }
            self.file.write_all(batch.text(from..end).as_bytes())?;
            self.size = size;
            from = end;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        self.file.sync_data()?;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `PATH.n`.
pub fn suffixed(path: &Path, n: u64) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The highest `N` among existing `PATH.N` files (0 when none).
fn highest_suffix(path: &Path) -> io::Result<u64> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(0);
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut highest = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name();
        let n = file
            .to_string_lossy()
            .strip_prefix(&prefix)
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            highest = highest.max(n);
        }
    }
    Ok(highest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(range: std::ops::Range<usize>) -> Batch {
        let mut batch = Batch::default();
        for i in range {
            let json = format!(
                "{{\"response_id\":\"resp_{i}\",\"pad\":\"{}\"}}",
                "x".repeat(40)
            );
            batch.push(&format!("resp_{i}"), &json);
        }
        batch
    }

    /// The files' contents, oldest first, as the rule says: a line goes into the current file
    /// when the file is empty or stays within `rotate_bytes` with it, else into a new one.
    fn reference(batches: &[Batch], rotate_bytes: u64) -> Vec<String> {
        let mut files = vec![String::new()];
        for batch in batches {
            for i in 0..batch.len() {
                let line = batch.text(i..i + 1);
                let size = files.last().map_or(0, |f| f.len()) as u64;
                if size > 0 && size + line.len() as u64 > rotate_bytes {
                    files.push(String::new());
                }
                if let Some(f) = files.last_mut() {
                    f.push_str(line);
                }
            }
        }
        files
    }

    /// Every file the sink at `path` wrote, oldest first.
    fn written(path: &Path) -> Vec<String> {
        let mut files = vec![];
        let mut n = 1;
        while suffixed(path, n).exists() {
            files.push(std::fs::read_to_string(suffixed(path, n)).unwrap());
            n += 1;
        }
        files.push(std::fs::read_to_string(path).unwrap());
        files
    }

    #[test]
    fn every_limit_splits_the_records_as_the_line_by_line_rule() {
        // Lines of different lengths (one longer than the smallest limits), in batches of
        // 0, 1 and several records, against limits from below one line to above all of them.
        let mut sizes = (0..23).map(|i| (i * 7) % 40).cycle();
        let batches: Vec<Batch> = [3, 0, 1, 7, 2, 9]
            .iter()
            .scan(0, |next, &n| {
                let mut batch = Batch::default();
                for i in *next..*next + n {
                    let pad = "y".repeat(sizes.next().unwrap_or(0));
                    batch.push(&format!("r{i}"), &format!("{{\"r\":{i},\"p\":\"{pad}\"}}"));
                }
                *next += n;
                Some(batch)
            })
            .collect();
        for rotate_bytes in (1..=120).chain([200, 400, 2000, u64::MAX]) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("usage.jsonl");
            let mut sink = FileSink::open(&path, rotate_bytes).unwrap();
            for batch in &batches {
                sink.write(batch).unwrap();
            }
            sink.sync().unwrap();
            assert_eq!(
                written(&path),
                reference(&batches, rotate_bytes),
                "rotate_bytes {rotate_bytes}"
            );
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_every_line_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.jsonl");
        let mut sink = FileSink::open(&path, 200).unwrap();
        sink.write(&lines(0..5)).unwrap();
        sink.write(&lines(5..10)).unwrap();
        sink.sync().unwrap();
        drop(sink);
        // Reopening continues the numbering instead of overwriting.
        let mut sink = FileSink::open(&path, 200).unwrap();
        sink.write(&lines(10..13)).unwrap();
        sink.sync().unwrap();

        let mut files = vec![];
        let mut n = 1;
        while suffixed(&path, n).exists() {
            files.push(suffixed(&path, n));
            n += 1;
        }
        assert!(files.len() >= 4, "rotated into {} files", files.len());
        files.push(path.clone());
        let mut ids = vec![];
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(
                text.len() as u64 <= 200,
                "{} is {} bytes",
                f.display(),
                text.len()
            );
            for l in text.lines() {
                let v: sonic_rs::Value = sonic_rs::from_str(l).unwrap();
                ids.push(
                    sonic_rs::JsonValueTrait::as_str(&v["response_id"])
                        .unwrap()
                        .to_string(),
                );
            }
        }
        let want: Vec<String> = (0..13).map(|i| format!("resp_{i}")).collect();
        assert_eq!(ids, want);
    }
}
