//! The file-system steps the spool is built from: durable directory creation, directory fsync,
//! the spool lock, and the slow-motion mode of the crash tests.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
#[cfg(test)]
use std::sync::atomic::Ordering;

use super::error::io_err;
use super::{QueueId, SpoolError};

/// Slow-motion mode for the SIGKILL test: writes trickle out in small pieces and every step of a
/// commit sequence is followed by a pause, so that random kills land inside each step, not mostly
/// inside fsync.
#[cfg(test)]
pub(super) static SLOW_MOTION: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub(super) fn write_all(file: &mut File, buf: &[u8]) -> io::Result<()> {
    #[cfg(test)]
    if SLOW_MOTION.load(Ordering::Relaxed) {
        for chunk in buf.chunks(8 * 1024) {
            file.write_all(chunk)?;
            test_pause();
        }
        return Ok(());
    }
    file.write_all(buf)
}

#[cfg(test)]
pub(crate) fn slow_motion() -> bool {
    SLOW_MOTION.load(Ordering::Relaxed)
}

pub(crate) fn test_pause() {
    #[cfg(test)]
    if SLOW_MOTION.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_micros(
            rand::random::<u64>() % 300,
        ));
    }
}

/// fsync a directory, making the entries created, renamed or removed in it durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

pub(super) fn message_path(queue: &Path, id: &QueueId) -> PathBuf {
    queue.join(id.shard()).join(id.as_str())
}

/// Creates `dir` (and missing ancestors) and fsyncs the parent of each directory it created.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<(), SpoolError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.is_dir() {
            break;
        }
        missing.push(p);
        cur = p.parent();
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    for p in missing.iter().rev() {
        let parent = match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

pub(super) fn clear_dir(dir: &Path) -> Result<usize, SpoolError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let result = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Ok(removed)
}

#[cfg(unix)]
pub(super) fn lock_dir(root: &Path) -> Result<File, SpoolError> {
    use std::os::unix::io::AsRawFd;
    let path = root.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    // SAFETY: flock on a valid, owned file descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            SpoolError::Locked(root.to_path_buf())
        } else {
            io_err(&path)(e)
        });
    }
    Ok(file)
}

#[cfg(not(unix))]
pub(super) fn lock_dir(root: &Path) -> Result<File, SpoolError> {
    let path = root.join("lock");
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))
}
