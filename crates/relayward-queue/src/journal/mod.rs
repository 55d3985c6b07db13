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

//!
//! `segment` holds the on-disk format (names, record headers, replay) and the file steps,
//! `write` appending batches, rotating and retiring segments, `messages` what the journal holds:
//! lookups, removal and the move to message files.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::spool::{Envelope, QueueId, SpoolError};

mod messages;
mod segment;
mod write;

use segment::*;

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
}
