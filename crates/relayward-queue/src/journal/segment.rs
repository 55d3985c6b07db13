//! The journal on disk: segment and spare names, record headers and their CRC, replaying a
//! segment, and the file steps (zeroed segments, vectored writes, free space).

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::spool::{QueueId, SpoolError};

use super::*;

pub(super) fn cost(body_len: u64) -> usize {
    // The envelope and the index entry, roughly.
    body_len as usize + 1024
}

pub(super) fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

pub(super) fn spare_name(seq: u64) -> String {
    format!("{seq:016x}.spare")
}

/// A segment's or a spare's SEQ, and whether it is a spare.
pub(super) fn parse_name(name: &str) -> Option<(u64, bool)> {
    let (hex, spare) = match name.strip_suffix(".seg") {
        Some(hex) => (hex, false),
        None => (name.strip_suffix(".spare")?, true),
    };
    if hex.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(hex, 16).ok()?, spare))
}

pub(super) fn record_header(
    kind: u8,
    id: &QueueId,
    env_len: u32,
    body_len: u64,
    seq: u64,
) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h[4] = kind;
    h[8..24].copy_from_slice(id.as_str().as_bytes());
    h[24..28].copy_from_slice(&env_len.to_le_bytes());
    h[32..40].copy_from_slice(&body_len.to_le_bytes());
    h[40..48].copy_from_slice(&seq.to_le_bytes());
    h
}

pub(super) fn seal(header: &mut [u8; RECORD_HEADER], payload: &[&[u8]]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..]);
    for p in payload {
        crc.update(p);
    }
    header[..4].copy_from_slice(&crc.finalize().to_le_bytes());
}

/// What a segment holds, read back.
pub(super) struct Replayed {
    pub(super) accepted: Vec<(QueueId, u64, u32, u64)>,
    pub(super) done: Vec<QueueId>,
}

/// Reads a segment's records up to its end, its first torn record or the first one left from
/// an earlier life of the file.
pub(super) fn read_segment(path: &Path, seq: u64) -> Result<Replayed, SpoolError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut r = io::BufReader::with_capacity(256 * 1024, file);
    let mut out = Replayed {
        accepted: Vec::new(),
        done: Vec::new(),
    };
    let mut head = [0u8; SEGMENT_HEADER as usize];
    if read_full(&mut r, &mut head).map_err(io_err(path))? < head.len()
        || head[..8] != SEGMENT_MAGIC[..]
        || head[8..] != seq.to_le_bytes()
    {
        // Created but its header not written: nothing was ever appended.
        return Ok(out);
    }
    let mut pos = SEGMENT_HEADER;
    let mut payload = Vec::new();
    loop {
        let mut h = [0u8; RECORD_HEADER];
        if read_full(&mut r, &mut h).map_err(io_err(path))? < RECORD_HEADER {
            break;
        }
        let kind = h[4];
        let env_len = u32::from_le_bytes(h[24..28].try_into().expect("4 bytes"));
        let body_len = u64::from_le_bytes(h[32..40].try_into().expect("8 bytes"));
        let Some(id) = std::str::from_utf8(&h[8..24])
            .ok()
            .and_then(|s| s.parse::<QueueId>().ok())
        else {
            break;
        };
        if !matches!(kind, KIND_ACCEPTED | KIND_DONE)
            || h[5..8] != [0; 3]
            || h[28..32] != [0; 4]
            || body_len > MAX_RECORD_BODY
            || h[40..48] != seq.to_le_bytes()
            || (kind == KIND_DONE && (env_len != 0 || body_len != 0))
        {
            break;
        }
        // The payload is checked by CRC in pieces: a body need not fit in memory twice.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h[4..]);
        let mut left = env_len as u64 + body_len;
        let mut complete = true;
        while left > 0 {
            let n = left.min(1 << 20) as usize;
            payload.resize(n, 0);
            if read_full(&mut r, &mut payload).map_err(io_err(path))? < n {
                complete = false;
                break;
            }
            crc.update(&payload);
            left -= n as u64;
        }
        if !complete || crc.finalize().to_le_bytes() != h[..4] {
            break;
        }
        let offset = pos + RECORD_HEADER as u64;
        pos = offset + env_len as u64 + body_len;
        match kind {
            KIND_ACCEPTED => out.accepted.push((id, offset, env_len, body_len)),
            _ => out.done.push(id),
        }
    }
    Ok(out)
}

/// Like `read_exact`, but an early end of file is a short count, not an error.
pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Bytes the file system holding `file` has free for unprivileged writers.
pub(super) fn free_space(file: &File) -> io::Result<u64> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: statvfs is plain data; all zeros is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid, owned descriptor and a pointer to a statvfs we own.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// A new file of `size` zeros, flushed (blocks and size), positioned at its start.
pub(super) fn create_zeroed(path: &Path, size: u64) -> Result<File, SpoolError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))?;
    let zeros = vec![0u8; ZERO_CHUNK.min(size) as usize];
    let made = (|| {
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        file.seek(SeekFrom::Start(0)).map(|_| ())
    })();
    if let Err(e) = made {
        let _ = fs::remove_file(path);
        return Err(io_err(path)(e));
    }
    Ok(file)
}

pub(super) fn write_all_vectored(
    file: &mut File,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        #[cfg(test)]
        if crate::spool::slow_motion() {
            // One piece at a time, so that a kill can land inside a batch.
            let n = file.write(&slices[0][..slices[0].len().min(8 * 1024)])?;
            IoSlice::advance_slices(&mut slices, n);
            crate::spool::test_pause();
            continue;
        }
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
