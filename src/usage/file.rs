//! The JSONL file sink: append-only, fsync in batches, rotated by size.
//!
//! When the file would grow past `rotate_bytes` it is renamed to `PATH.N` (N one more than the
//! highest existing suffix, so `PATH.1` is the oldest) and a new `PATH` is started. Reading
//! `PATH.1 … PATH.N` then `PATH` gives every record in order.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::sink::{Batch, Sink, SinkError};

/// The file sink.
pub struct FileSink {
    path: PathBuf,
    file: BufWriter<File>,
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
            file: BufWriter::with_capacity(64 * 1024, file),
            size,
            rotate_bytes,
            next_suffix: highest_suffix(path)? + 1,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        let rotated = suffixed(&self.path, self.next_suffix);
        std::fs::rename(&self.path, &rotated)?;
        self.next_suffix += 1;
        self.file = BufWriter::with_capacity(64 * 1024, open_append(&self.path)?);
        self.size = 0;
        Ok(())
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
        for i in 0..batch.len() {
            let line = batch.text(i..i + 1);
            let len = line.len() as u64;
            if self.size > 0 && self.size + len > self.rotate_bytes {
                self.rotate()?;
            }
            self.file.write_all(line.as_bytes())?;
            self.size += len;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
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
