//! What must reach the store but cannot while it is down (trace events, detector
//! transitions): kept in an append-only file of JSON lines in the data directory, written
//! through to disk, bounded, and drained when the store answers again. A process killed
//! meanwhile finds the file at its next start and drains it then.
//!
//! A line cut short by a crash mid-write is skipped when read (everything before it is read).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct Spill {
    path: PathBuf,
    max_bytes: u64,
    lock: Mutex<()>,
}

/// What [`Spill::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Kept,
    /// The file is at its bound: nothing was written.
    Full,
}

impl Spill {
    pub fn new(path: impl AsRef<Path>, max_bytes: u64) -> Spill {
        Spill {
            path: path.as_ref().to_path_buf(),
            max_bytes,
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes waiting (0: none).
    pub fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `items`, one line each, and flushes them to disk before returning.
    pub fn append<T: Serialize>(&self, items: &[T]) -> io::Result<Appended> {
        let _g = self.guard();
        let mut text = Vec::new();
        for item in items {
            serde_json::to_writer(&mut text, item).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        if self.len() + text.len() as u64 > self.max_bytes {
            return Ok(Appended::Full);
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&text)?;
        f.sync_data()?;
        Ok(Appended::Kept)
    }

    /// Everything kept, in order (lines that do not parse are skipped).
    pub fn read<T: DeserializeOwned>(&self) -> io::Result<Vec<T>> {
        let _g = self.guard();
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for line in BufReader::new(f).lines() {
            let line = line?;
            match serde_json::from_str(&line) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "unreadable line skipped")
                }
            }
        }
        Ok(out)
    }

    /// Forgets the oldest entry (it reached the store), keeping the others.
    pub fn pop_front(&self) -> io::Result<()> {
        let _g = self.guard();
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let rest = match text.iter().position(|b| *b == b'\n') {
            Some(i) => &text[i + 1..],
            None => &[][..],
        };
        if rest.is_empty() {
            return std::fs::remove_file(&self.path);
        }
        // The rest replaces the file at once (written, flushed, renamed over it).
        let tmp = self.path.with_extension("pending.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(rest)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Forgets everything kept (after it reached the store).
    pub fn clear(&self) -> io::Result<()> {
        let _g = self.guard();
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_reads_bounds_and_survives_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spill::new(dir.path().join("x.pending"), 40);
        assert!(s.is_empty());
        assert_eq!(s.read::<u32>().unwrap(), Vec::<u32>::new());
        assert_eq!(s.append(&[1u32, 2]).unwrap(), Appended::Kept);
        assert_eq!(s.append(&[3u32]).unwrap(), Appended::Kept);
        // A crash cut the last line short.
        std::fs::OpenOptions::new()
            .append(true)
            .open(s.path())
            .unwrap()
            .write_all(b"4")
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(s.path())
            .unwrap()
            .write_all(b"\n{")
            .unwrap();
        assert_eq!(s.read::<u32>().unwrap(), vec![1, 2, 3, 4]);
        s.pop_front().unwrap();
        assert_eq!(s.read::<u32>().unwrap(), vec![2, 3, 4]);
        assert_eq!(s.append(&["x".repeat(40)]).unwrap(), Appended::Full);
        s.clear().unwrap();
        assert!(s.is_empty());
        s.clear().unwrap();
    }
}
