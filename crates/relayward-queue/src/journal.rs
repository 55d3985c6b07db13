//! The spool's journal: accepted messages appended to segment files, one `fdatasync` per batch.
//!
//! A message file costs a file flush plus a directory flush (two journal commits of the file
//! system) per message; a batch appended to a segment costs one `fdatasync` for all of it. Most
//! messages are delivered within milliseconds of their 250, so they never need a file of their
//! own: they live in the journal (and in memory, bounded) until they are final, and only a
//! message that outlives its first attempt, or is still waiting when its segment gets old, is
//! moved to a message file ([`super::spool`]).
//!
//! # Layout
//!
//! ```text
//! <spool>/journal/<SEQ>.seg    SEQ: 16 hex digits, increasing; only the newest one is appended to
//! <spool>/journal/<SEQ>.spare  a finished segment kept for reuse (its SEQ is never used again)
//! segment: "RWJRNL" 0 2, its SEQ (u64 LE), then records, then whatever the file held before
//! record:  0..4 CRC-32 of bytes 4.. of the record    4 kind (1 accepted, 2 done)    5..8 zero
//!          8..24 queue id    24..28 envelope JSON length (u32 LE)    28..32 zero
//!          32..40 body length (u64 LE)    40..48 the segment's SEQ
//!          48.. envelope JSON, then the body
//! ```
//!
//! A segment's blocks are allocated and written before it takes mail (zeros when it is new, old
//! records when it is a reused spare), so that appending overwrites blocks in place and
//! `fdatasync` writes data only: no file-system journal commit (new size, new blocks) per batch,
//! which is what makes a flush slow when other processes keep the file system busy. Records left
//! from a spare's earlier life carry its old SEQ and end the reading like a torn record. A new
//! segment is written with zeros up to a quarter of the free space at most (on a small or
//! nearly full file system it grows as it is written), and a batch is refused as "disk full"
//! when the file system could not hold it as new data, reserved blocks or not.
//!
//! # Why this is durable
//!
//! - A batch is written with one `writev` and made durable with `fdatasync` (which also writes
//!   the file size when the batch grew the file); only then are its sessions told to answer 250.
//! - A new segment is created (or a spare renamed), its header written and flushed, and the
//!   journal directory flushed, before anything is appended to it: its name survives a power
//!   loss.
//! - Segments are appended to by one writer at a time, in order, so a torn record can only be the
//!   tail of a segment, made of records nobody was told about. Reading stops at the first record
//!   that is incomplete or fails its CRC. After a failed write the segment is cut back to its
//!   last good length, or abandoned for a new one if that fails too, so that nothing
//!   acknowledged later can sit behind a torn record.
//! - "done" records (the message was delivered, bounced, deleted or moved to a message file)
//!   are written without a flush, as `Spool::remove_finished` deletes without one: a crash in
//!   the next moments may bring a finished message back, and it is then delivered once more,
//!   never lost. They are written right away (not at the next batch), so a SIGKILL does not
//!   bring anything back.
//! - Segments are deleted (or renamed to spares) oldest first, and only when none of their
//!   accepted messages is still queued, so a "done" record always outlives the record it
//!   cancels. The directory is flushed after a deletion: a segment that came back could
//!   otherwise bring back its messages without the "done" records of a newer, deleted one.
//!
//! Recovery reads every segment, applies the "done" records, and skips messages that have a
//! message file (moved there before the crash); what is left is queued again, still in the
//! journal.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::spool::{Envelope, QueueId, SpoolError};

const SEGMENT_MAGIC: &[u8; 8] = b"RWJRNL\x00\x02";
/// The magic and the segment's SEQ.
const SEGMENT_HEADER: u64 = 16;
const RECORD_HEADER: usize = 48;
const KIND_ACCEPTED: u8 = 1;
const KIND_DONE: u8 = 2;
/// Size of a segment at most (a larger batch still goes into one). Small in tests, so that they
/// rotate, reuse and retire segments.
const SEGMENT_TARGET: u64 = if cfg!(test) { 1 << 20 } else { 32 << 20 };
/// Size of the first new segment; each new one doubles it up to `SEGMENT_TARGET`, so that a
/// relay that stores little writes little.
const SEGMENT_FIRST: u64 = 4 << 20;
/// Finished segments kept for reuse.
const MAX_SPARES: usize = 2;
/// New segments are written with zeros this much at a time.
const ZERO_CHUNK: u64 = 1 << 20;
/// Bodies and envelopes kept in memory from the 250 to the end of the first attempt, at most.
const CACHE_BYTES: usize = 32 << 20;
/// Larger bodies are read back instead: for them the read is a small part of the work, and
/// their memory is not (measured with 1 MB messages: 170 MB peak RSS cached, 80 MB not).
const CACHE_MAX_BODY: u64 = 256 << 10;
/// Newest closed segments whose queued messages stay where they are; those of older segments
/// are moved to message files so that the segments can go.
const KEEP_CLOSED: usize = 2;
/// Larger lengths in a record header are garbage, not a message.
const MAX_RECORD_BODY: u64 = 1 << 40;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A message to append: its envelope as accepted and its body.
pub(crate) struct Accepted {
    pub id: QueueId,
    pub envelope: Envelope,
    pub body: Arc<Vec<u8>>,
}

pub(crate) struct Journal {
    dir: PathBuf,
    read_only: bool,
    writer: Mutex<Writer>,
    index: Mutex<Index>,
    /// Signalled when a move to a message file ends.
    moved: Condvar,
    /// "done" records not written yet.
    pending_done: Mutex<Vec<QueueId>>,
}

struct Writer {
    current: Option<OpenSegment>,
    next_seq: u64,
    /// Size of the next new segment.
    next_size: u64,
    /// Spare segments: the SEQ in their name, their size.
    spares: Vec<(u64, u64)>,
}

struct OpenSegment {
    seq: u64,
    file: File,
    /// Where the next record goes.
    len: u64,
    /// Takes no new batch past this length.
    limit: u64,
}

#[derive(Default)]
struct Index {
    residents: HashMap<QueueId, Resident>,
    /// Queued messages per segment; every segment on disk has an entry.
    segments: BTreeMap<u64, usize>,
    /// The segment being appended to, which is never deleted.
    current: Option<u64>,
    cached_bytes: usize,
}

/// A message's envelope as accepted and its body, kept in memory.
type Cached = (Arc<Envelope>, Arc<Vec<u8>>);

struct Resident {
    seg: u64,
    /// Where the envelope JSON starts; the body follows it.
    offset: u64,
    env_len: u32,
    body_len: u64,
    cached: Option<Cached>,
    moving: Option<Moving>,
}

/// Being copied to a message file.
struct Moving {
    /// Removed meanwhile: the copy must go too.
    removed: bool,
}

/// A message handed out for a move to a message file.
pub(crate) struct ToMove {
    pub envelope: Envelope,
    pub body: Arc<Vec<u8>>,
}

impl Index {
    fn forget(&mut self, id: &QueueId) -> Option<Resident> {
        let r = self.residents.remove(id)?;
        if let Some(n) = self.segments.get_mut(&r.seg) {
            *n = n.saturating_sub(1);
        }
        if r.cached.is_some() {
            self.cached_bytes = self.cached_bytes.saturating_sub(cost(r.body_len));
        }
        Some(r)
    }

    /// Segments that can be deleted: the oldest ones with nothing queued, up to the first that
    /// still has something (or the current one). Taken out of the index.
    fn take_retired(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some((&seq, &n)) = self.segments.first_key_value() {
            if n > 0 || Some(seq) == self.current {
                break;
            }
            self.segments.pop_first();
            out.push(seq);
        }
        out
    }
}

fn cost(body_len: u64) -> usize {
    // The envelope and the index entry, roughly.
    body_len as usize + 1024
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

fn spare_name(seq: u64) -> String {
    format!("{seq:016x}.spare")
}

/// A segment's or a spare's SEQ, and whether it is a spare.
fn parse_name(name: &str) -> Option<(u64, bool)> {
    let (hex, spare) = match name.strip_suffix(".seg") {
        Some(hex) => (hex, false),
        None => (name.strip_suffix(".spare")?, true),
    };
    if hex.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(hex, 16).ok()?, spare))
}

fn record_header(
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

fn seal(header: &mut [u8; RECORD_HEADER], payload: &[&[u8]]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..]);
    for p in payload {
        crc.update(p);
    }
    header[..4].copy_from_slice(&crc.finalize().to_le_bytes());
}

/// What a segment holds, read back.
struct Replayed {
    accepted: Vec<(QueueId, u64, u32, u64)>,
    done: Vec<QueueId>,
}

/// Reads a segment's records up to its end, its first torn record or the first one left from
/// an earlier life of the file.
fn read_segment(path: &Path, seq: u64) -> Result<Replayed, SpoolError> {
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
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Journal {
    /// Reads the journal at `dir` back: every accepted message without a "done" record, for
    /// which `has_file` says there is no message file, is queued again. Writable journals create
    /// `dir` and delete segments with nothing queued.
    pub(crate) fn open(
        dir: PathBuf,
        read_only: bool,
        has_file: impl Fn(&QueueId) -> bool,
    ) -> Result<Journal, SpoolError> {
        let mut seqs = Vec::new();
        let mut spares = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io_err(&dir))?;
                    match entry.file_name().to_str().and_then(parse_name) {
                        Some((seq, false)) => seqs.push(seq),
                        Some((seq, true)) => {
                            let size = entry.metadata().map_err(io_err(&dir))?.len();
                            spares.push((seq, size));
                        }
                        None => {}
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        seqs.sort_unstable();
        let mut index = Index::default();
        let mut done = std::collections::HashSet::new();
        let mut accepted = Vec::new();
        for &seq in &seqs {
            let path = dir.join(segment_name(seq));
            let replayed = match read_segment(&path, seq) {
                Ok(r) => r,
                // Deleted by the relay that owns the spool since the listing.
                Err(SpoolError::Io { source, .. })
                    if read_only && source.kind() == io::ErrorKind::NotFound =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            index.segments.insert(seq, 0);
            done.extend(replayed.done);
            accepted.extend(replayed.accepted.into_iter().map(|a| (seq, a)));
        }
        for (seq, (id, offset, env_len, body_len)) in accepted {
            if done.contains(&id) || has_file(&id) {
                continue;
            }
            if index.residents.contains_key(&id) {
                continue;
            }
            *index.segments.entry(seq).or_default() += 1;
            index.residents.insert(
                id,
                Resident {
                    seg: seq,
                    offset,
                    env_len,
                    body_len,
                    cached: None,
                    moving: None,
                },
            );
        }
        // Past every SEQ a spare was named with too: a reused spare's old records must never
        // carry the SEQ of its new life.
        let next_seq = seqs
            .iter()
            .chain(spares.iter().map(|(s, _)| s))
            .max()
            .map_or(1, |s| s + 1);
        let journal = Journal {
            dir,
            read_only,
            writer: Mutex::new(Writer {
                current: None,
                next_seq,
                next_size: SEGMENT_FIRST.min(SEGMENT_TARGET),
                spares,
            }),
            index: Mutex::new(index),
            moved: Condvar::new(),
            pending_done: Mutex::new(Vec::new()),
        };
        if !read_only {
            crate::spool::create_dir_durable(&journal.dir)?;
            let recovered = journal.lock_index().residents.len();
            if recovered > 0 {
                tracing::info!(messages = recovered, "spool journal replayed");
            }
            journal.retire()?;
        }
        Ok(journal)
    }

    fn lock_index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_name(seq))
    }

    /// Appends the messages and flushes them; when this returns `Ok`, each of them may be
    /// acknowledged. All or nothing: on error none of them is queued.
    pub(crate) fn append(&self, items: Vec<Accepted>) -> Result<(), SpoolError> {
        if self.read_only {
            return Err(SpoolError::ReadOnly);
        }
        {
            let index = self.lock_index();
            if let Some(item) = items.iter().find(|i| index.residents.contains_key(&i.id)) {
                return Err(SpoolError::AlreadyExists(item.id));
            }
        }
        let mut encoded = Vec::with_capacity(items.len());
        for item in &items {
            if item.envelope.queue_id != item.id {
                return Err(SpoolError::IdMismatch {
                    id: item.id,
                    envelope_id: item.envelope.queue_id,
                });
            }
            let json = serde_json::to_vec(&item.envelope).map_err(SpoolError::Encode)?;
            if u32::try_from(json.len()).is_err() {
                return Err(SpoolError::Encode(serde::ser::Error::custom(
                    "envelope too large",
                )));
            }
            encoded.push(json);
        }
        let mut writer = self.lock_writer();
        let done =
            std::mem::take(&mut *self.pending_done.lock().unwrap_or_else(|e| e.into_inner()));
        let size: u64 = encoded
            .iter()
            .zip(&items)
            .map(|(json, item)| (RECORD_HEADER + json.len() + item.body.len()) as u64)
            .sum::<u64>()
            + (done.len() * RECORD_HEADER) as u64;
        let rotate = match &writer.current {
            None => true,
            Some(seg) => seg.len > SEGMENT_HEADER && seg.len + size > seg.limit,
        };
        if rotate {
            if let Err(e) = self.rotate(&mut writer) {
                self.requeue_done(done);
                return Err(e);
            }
        }
        let seg = writer.current.as_mut().expect("a segment after rotate");
        let seq = seg.seq;
        // A full file system stops intake as it did when each message had a file of its own,
        // although the segment's blocks are reserved: messages moved to files, DSNs and the
        // trace need room too.
        if let Ok(free) = free_space(&seg.file) {
            if free < size {
                self.requeue_done(done);
                return Err(SpoolError::Io {
                    path: self.segment_path(seq),
                    source: io::Error::from_raw_os_error(libc::ENOSPC),
                });
            }
        }
        let done_headers: Vec<[u8; RECORD_HEADER]> = done
            .iter()
            .map(|id| {
                let mut h = record_header(KIND_DONE, id, 0, 0, seq);
                seal(&mut h, &[]);
                h
            })
            .collect();
        let headers: Vec<[u8; RECORD_HEADER]> = encoded
            .iter()
            .zip(&items)
            .map(|(json, item)| {
                let (env_len, body_len) = (json.len() as u32, item.body.len() as u64);
                let mut h = record_header(KIND_ACCEPTED, &item.id, env_len, body_len, seq);
                seal(&mut h, &[json, &item.body]);
                h
            })
            .collect();
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(items.len() * 3 + done.len());
        for h in &done_headers {
            slices.push(IoSlice::new(h));
        }
        for ((h, json), item) in headers.iter().zip(&encoded).zip(&items) {
            slices.push(IoSlice::new(h));
            slices.push(IoSlice::new(json));
            slices.push(IoSlice::new(&item.body));
        }
        let start = seg.len + (done_headers.len() * RECORD_HEADER) as u64;
        let written = write_all_vectored(&mut seg.file, &mut slices)
            .and_then(|()| {
                crate::spool::test_pause();
                seg.file.sync_data()
            })
            .map_err(io_err(&self.segment_path(seq)));
        if let Err(e) = written {
            self.cut_back(&mut writer);
            self.requeue_done(done);
            return Err(e);
        }
        seg.len += size;
        // Registered before the writer lock is released, so that a removal (which only follows
        // the 250) always finds its message.
        let mut index = self.lock_index();
        let mut offset = start;
        for (json, item) in encoded.iter().zip(items) {
            let env_len = json.len() as u32;
            let body_len = item.body.len() as u64;
            let c = cost(body_len);
            let cached = if body_len <= CACHE_MAX_BODY && index.cached_bytes + c <= CACHE_BYTES {
                index.cached_bytes += c;
                Some((Arc::new(item.envelope), item.body))
            } else {
                None
            };
            index.residents.insert(
                item.id,
                Resident {
                    seg: seq,
                    offset: offset + RECORD_HEADER as u64,
                    env_len,
                    body_len,
                    cached,
                    moving: None,
                },
            );
            *index.segments.entry(seq).or_default() += 1;
            offset += (RECORD_HEADER + json.len()) as u64 + body_len;
        }
        drop(index);
        drop(writer);
        // Removals that found the writer busy left their records to it.
        self.write_done_soon();
        Ok(())
    }

    /// Starts a new segment: a spare reused, or a new file written full of zeros; its header
    /// written and flushed, the directory flushed.
    fn rotate(&self, writer: &mut Writer) -> Result<(), SpoolError> {
        let seq = writer.next_seq;
        writer.next_seq += 1;
        let path = self.segment_path(seq);
        let (mut file, limit) = match writer.spares.pop() {
            Some((spare, size)) => {
                let from = self.dir.join(spare_name(spare));
                fs::rename(&from, &path).map_err(io_err(&path))?;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                (file, size)
            }
            None => {
                let size = writer.next_size;
                writer.next_size = (size * 2).min(SEGMENT_TARGET);
                // Never more than a quarter of the free space: on a small or nearly full file
                // system the segment grows as it is written instead.
                let free = File::open(&self.dir)
                    .and_then(|d| free_space(&d))
                    .unwrap_or(0);
                let zeroed = size.min(free / 4 / ZERO_CHUNK * ZERO_CHUNK);
                (create_zeroed(&path, zeroed)?, size)
            }
        };
        let mut head = [0u8; SEGMENT_HEADER as usize];
        head[..8].copy_from_slice(SEGMENT_MAGIC);
        head[8..].copy_from_slice(&seq.to_le_bytes());
        let made = file
            .write_all(&head)
            .and_then(|()| file.sync_data())
            .map_err(io_err(&path))
            .and_then(|()| sync_dir(&self.dir));
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        writer.current = Some(OpenSegment {
            seq,
            file,
            len: SEGMENT_HEADER,
            limit,
        });
        let old = {
            let mut index = self.lock_index();
            let old = index.current.replace(seq);
            index.segments.insert(seq, 0);
            old
        };
        if old.is_some() {
            self.retire_into(writer)?;
        }
        Ok(())
    }

    /// After a failed write: the segment back to its last good length, or abandoned.
    fn cut_back(&self, writer: &mut Writer) {
        let Some(seg) = writer.current.as_mut() else {
            return;
        };
        let good = seg.len;
        let cut = seg
            .file
            .set_len(good)
            .and_then(|()| seg.file.seek(SeekFrom::End(0)).map(|_| ()))
            .and_then(|()| seg.file.sync_data());
        match cut {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(segment = %self.segment_path(seg.seq).display(), error = %e,
                    "spool journal segment cannot be cut back after a failed write: abandoned");
                writer.current = None;
            }
        }
    }

    fn requeue_done(&self, done: Vec<QueueId>) {
        if !done.is_empty() {
            self.pending_done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(done);
        }
    }

    /// Writes the "done" records waiting; with `flush`, makes them durable too.
    fn write_done(&self, writer: &mut Writer, flush: bool) -> Result<(), SpoolError> {
        let done =
            std::mem::take(&mut *self.pending_done.lock().unwrap_or_else(|e| e.into_inner()));
        if done.is_empty() && !flush {
            return Ok(());
        }
        if writer.current.is_none() {
            if let Err(e) = self.rotate(writer) {
                self.requeue_done(done);
                return Err(e);
            }
        }
        let seg = writer.current.as_mut().expect("a segment after rotate");
        let mut buf = Vec::with_capacity(done.len() * RECORD_HEADER);
        for id in &done {
            let mut h = record_header(KIND_DONE, id, 0, 0, seg.seq);
            seal(&mut h, &[]);
            buf.extend_from_slice(&h);
        }
        let path = self.segment_path(seg.seq);
        let written =
            seg.file.write_all(&buf).and_then(
                |()| {
                    if flush {
                        seg.file.sync_data()
                    } else {
                        Ok(())
                    }
                },
            );
        match written {
            Ok(()) => {
                seg.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.cut_back(writer);
                self.requeue_done(done);
                Err(io_err(&path)(e))
            }
        }
    }

    /// Writes the waiting "done" records unless the writer is busy, in which case the holder
    /// writes them once it lets go (every holder calls this after releasing the writer).
    pub(crate) fn write_done_soon(&self) {
        loop {
            let Ok(mut writer) = self.writer.try_lock() else {
                return;
            };
            if let Err(e) = self.write_done(&mut writer, false) {
                tracing::warn!(error = %e, "spool journal: cannot record finished messages");
                return;
            }
            drop(writer);
            if self
                .pending_done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                return;
            }
        }
    }

    /// Deletes the segments with nothing queued, oldest first (or keeps them as spares). Cheap
    /// when there are none.
    pub(crate) fn retire(&self) -> Result<(), SpoolError> {
        let head = self
            .lock_index()
            .segments
            .first_key_value()
            .map(|(s, n)| (*s, *n));
        if head.is_none_or(|(_, n)| n > 0) {
            return Ok(());
        }
        let mut writer = self.lock_writer();
        self.retire_into(&mut writer)
    }

    fn retire_into(&self, writer: &mut Writer) -> Result<(), SpoolError> {
        let retired = self.lock_index().take_retired();
        if retired.is_empty() {
            return Ok(());
        }
        for seq in &retired {
            let path = self.segment_path(*seq);
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let gone =
                if !self.read_only && writer.spares.len() < MAX_SPARES && size >= SEGMENT_TARGET {
                    fs::rename(&path, self.dir.join(spare_name(*seq)))
                        .map(|()| writer.spares.push((*seq, size)))
                } else {
                    fs::remove_file(&path)
                };
            match gone {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        sync_dir(&self.dir)
    }

    pub(crate) fn contains(&self, id: &QueueId) -> bool {
        self.lock_index().residents.contains_key(id)
    }

    pub(crate) fn ids(&self) -> Vec<QueueId> {
        self.lock_index().residents.keys().copied().collect()
    }

    /// The envelope and body kept in memory since the 250, if any.
    pub(crate) fn cached(&self, id: &QueueId) -> Option<(Envelope, Arc<Vec<u8>>)> {
        let index = self.lock_index();
        let (env, body) = index.residents.get(id)?.cached.as_ref()?;
        Some(((**env).clone(), body.clone()))
    }

    /// Where a queued message's envelope and body are, and its copies in memory.
    fn locate(&self, id: &QueueId) -> Option<(u64, u64, u32, u64, Option<Cached>)> {
        let index = self.lock_index();
        let r = index.residents.get(id)?;
        Some((r.seg, r.offset, r.env_len, r.body_len, r.cached.clone()))
    }

    /// `None`: not in the journal.
    pub(crate) fn envelope(&self, id: &QueueId) -> Option<Result<Envelope, SpoolError>> {
        let (seg, offset, env_len, _, cached) = self.locate(id)?;
        if let Some((env, _)) = cached {
            return Some(Ok((*env).clone()));
        }
        Some(
            self.read_at(seg, offset, env_len as usize)
                .and_then(|json| {
                    serde_json::from_slice(&json).map_err(|e| SpoolError::Corrupt {
                        path: self.segment_path(seg),
                        reason: e.to_string(),
                    })
                }),
        )
    }

    /// `None`: not in the journal.
    pub(crate) fn body(&self, id: &QueueId) -> Option<Result<Arc<Vec<u8>>, SpoolError>> {
        let (seg, offset, env_len, body_len, cached) = self.locate(id)?;
        if let Some((_, body)) = cached {
            return Some(Ok(body));
        }
        Some(
            self.read_at(seg, offset + env_len as u64, body_len as usize)
                .map(Arc::new),
        )
    }

    /// The body as a reader; `None`: not in the journal.
    pub(crate) fn open_body(
        &self,
        id: &QueueId,
    ) -> Option<Result<(io::Take<File>, u64), SpoolError>> {
        let (seg, offset, env_len, body_len, _) = self.locate(id)?;
        let path = self.segment_path(seg);
        Some(
            File::open(&path)
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(offset + env_len as u64))?;
                    Ok((f.take(body_len), body_len))
                })
                .map_err(io_err(&path)),
        )
    }

    fn read_at(&self, seg: u64, offset: u64, len: usize) -> Result<Vec<u8>, SpoolError> {
        let path = self.segment_path(seg);
        let mut buf = vec![0u8; len];
        File::open(&path)
            .and_then(|f| f.read_exact_at(&mut buf, offset))
            .map_err(io_err(&path))?;
        Ok(buf)
    }

    /// Takes a queued message out of the journal (delivered, bounced or deleted). `None`: it
    /// is not in the journal. With `durable`, returns once the removal survives power loss.
    pub(crate) fn remove(&self, id: &QueueId, durable: bool) -> Option<Result<(), SpoolError>> {
        {
            let mut index = self.lock_index();
            let r = index.residents.get_mut(id)?;
            match &mut r.moving {
                // The mover deletes its copy once it is done.
                Some(m) => m.removed = true,
                None => {
                    index.forget(id);
                }
            }
        }
        self.pending_done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(*id);
        if durable {
            let mut writer = self.lock_writer();
            let written = self.write_done(&mut writer, true);
            drop(writer);
            self.write_done_soon();
            return Some(written);
        }
        self.write_done_soon();
        Some(Ok(()))
    }

    /// Claims a queued message for a move to a message file. `None`: not in the journal (any
    /// more). Waits while another move of it runs.
    pub(crate) fn begin_move(&self, id: &QueueId) -> Option<Result<ToMove, SpoolError>> {
        let (seg, offset, env_len, body_len, cached) = {
            let mut index = self.lock_index();
            loop {
                let r = index.residents.get_mut(id)?;
                if r.moving.is_none() {
                    r.moving = Some(Moving { removed: false });
                    break (r.seg, r.offset, r.env_len, r.body_len, r.cached.clone());
                }
                index = self.moved.wait(index).unwrap_or_else(|e| e.into_inner());
            }
        };
        let loaded = match cached {
            Some((env, body)) => Ok(ToMove {
                envelope: (*env).clone(),
                body,
            }),
            None => self
                .read_at(seg, offset, env_len as usize)
                .and_then(|json| {
                    let envelope =
                        serde_json::from_slice(&json).map_err(|e| SpoolError::Corrupt {
                            path: self.segment_path(seg),
                            reason: e.to_string(),
                        })?;
                    let body = self.read_at(seg, offset + env_len as u64, body_len as usize)?;
                    Ok(ToMove {
                        envelope,
                        body: Arc::new(body),
                    })
                }),
        };
        if loaded.is_err() {
            self.end_move(id, false);
        }
        Some(loaded)
    }

    /// Ends a move begun with [`Journal::begin_move`]; `copied`: the message file is durable.
    /// Returns true when the message was removed meanwhile (its copy must be deleted).
    pub(crate) fn end_move(&self, id: &QueueId, copied: bool) -> bool {
        let removed = {
            let mut index = self.lock_index();
            let Some(r) = index.residents.get_mut(id) else {
                return false;
            };
            let removed = r.moving.take().is_some_and(|m| m.removed);
            if copied || removed {
                index.forget(id);
            }
            removed
        };
        self.moved.notify_all();
        if copied && !removed {
            // A removal meanwhile has recorded it already.
            self.pending_done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(*id);
            self.write_done_soon();
        }
        removed
    }

    /// Queued messages of segments older than the newest few: moving them to message files
    /// lets their segments go.
    pub(crate) fn lingering(&self) -> Vec<QueueId> {
        let index = self.lock_index();
        let closed: Vec<u64> = index
            .segments
            .keys()
            .copied()
            .filter(|s| Some(*s) != index.current)
            .collect();
        if closed.len() <= KEEP_CLOSED {
            return Vec::new();
        }
        let limit = closed[closed.len() - KEEP_CLOSED];
        index
            .residents
            .iter()
            .filter(|(_, r)| r.seg < limit && r.moving.is_none())
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Bytes the file system holding `file` has free for unprivileged writers.
fn free_space(file: &File) -> io::Result<u64> {
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
fn create_zeroed(path: &Path, size: u64) -> Result<File, SpoolError> {
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

fn write_all_vectored(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
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
