//! The durable spool: once `store` returns, the message survives SIGKILL and power loss, and nothing
//! half-written is ever returned by `scan`.
//!
//! # Layout
//!
//! ```text
//! <root>/lock                 flock()ed by the process that owns the spool
//! <root>/tmp/                 writes in progress; anything found here at open is garbage
//! <root>/queue/<S>/<ID>       message file: header, envelope as accepted, body. Immutable.
//!                             Its presence is the commit point: it exists => the message is queued.
//! <root>/queue/<S>/<ID>.env   current envelope (JSON), only once `update_envelope` was called
//! <root>/journal/<SEQ>.seg    accepted messages not yet final, appended in batches (see
//!                             [`crate::journal`]); the message stays there until it is final
//!                             or moved to a message file
//! ```
//!
//! Accepted mail goes to the journal ([`Spool::store_journaled`]): one `fdatasync` per batch
//! instead of a file and a directory flush per message. A message there that needs a new
//! envelope (an attempt left recipients to retry, an admin hold) is first moved to a message
//! file, written with that envelope as described below; so is one whose segment grows old.
//! Everything else here (`scan`, the reads, `remove`) sees both kinds alike.
//!
//! `<S>` is the last character of the id, which comes from the random part, so the 32 shard
//! directories fill evenly and stay small.
//!
//! Message file (`<ID>`):
//!
//! ```text
//! 0..8    magic "RWSPOOL" + format version byte (1)
//! 8..12   envelope JSON length, u32 little endian
//! 12..20  body length, u64 little endian
//! 20..    envelope JSON, then the raw body
//! ```
//!
//! The envelope as accepted is embedded in the message file, so `store` writes exactly one file.
//! `read_envelope` prefers `<ID>.env` and falls back to the embedded copy.
//!
//! # Why each fsync
//!
//! `store`:
//! 1. Create `tmp/<ID>` (O_EXCL) and write header, envelope, body. A crash here leaves a partial file
//!    in `tmp/` only; `scan` never looks there and `open` deletes it.
//! 2. `fsync(file)`: contents and size reach the disk *before* a name in `queue/` can point at them.
//!    Without it ext4/xfs may persist the rename before the delayed-allocation data, and after a power
//!    loss `scan` would find a committed name with an empty or zeroed file.
//! 3. `rename(tmp/<ID>, queue/<S>/<ID>)`: atomic, same filesystem (both under root), so the name
//!    appears with complete contents or not at all.
//! 4. `fsync(queue/<S>)`: makes the new directory entry durable. Without it a power loss after the
//!    250 reply could drop the entry and lose the message. Only now does `store` return.
//!
//! `tmp/` itself is never fsynced: if the removal of the `tmp/` name is lost in a crash, `open` finds
//! a second link to the same inode there and unlinks it; the `queue/` link keeps the data.
//!
//! `update_envelope`: write `tmp/<ID>.env.<n>`, `fsync` it (same reason as 2), `rename` it over
//! `queue/<S>/<ID>.env` (readers and crash recovery see the old or the new envelope, never a mix),
//! `fsync(queue/<S>)` so the update survives power loss; otherwise the recipient states would roll
//! back and already delivered recipients would be sent to again.
//!
//! `remove`: unlink `<ID>` first (the commit point of deletion), then `<ID>.env`, then
//! `fsync(queue/<S>)`. A crash in between leaves an orphan `.env`, which `scan` deletes. The other
//! order would be wrong: a crash after unlinking `.env` would resurrect the message with its original
//! envelope and every recipient would be delivered again. The directory fsync keeps a finished message
//! from reappearing (and being sent twice) after power loss.
//!
//! `open` creates the directories and fsyncs each parent: a shard directory whose own entry is not
//! durable could vanish together with every message in it. It takes an exclusive `flock` on `lock`
//! because it deletes `tmp/` leftovers, which would break another live process's in-flight writes.
//! Use [`Spool::open_read_only`] to inspect a spool that a server owns.
//!
//! What this cannot protect against: disks that acknowledge a flush without persisting it, and
//! filesystems mounted with barriers off. The SIGKILL test in this module exercises process crashes;
//! power loss is covered by the ordering argument above.
//!
//! The spool is split by concern: `id` (queue ids), `envelope` (what is stored next to a body),
//! `error`, `fs_util` (durable file-system steps) and this module (the spool itself).

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::journal::{Accepted, Journal};

mod envelope;
mod error;
mod fs_util;
mod id;

pub use envelope::{Envelope, Recipient, RecipientStatus};
pub use error::SpoolError;
#[cfg(test)]
pub(crate) use fs_util::slow_motion;
pub(crate) use fs_util::{create_dir_durable, test_pause};
pub use id::{QueueId, QUEUE_ID_LEN};

use error::{corrupt, io_err};
use fs_util::*;
use id::ALPHABET;

const MAGIC: &[u8; 8] = b"RWSPOOL\x01";
const HEADER_LEN: u64 = 20;
const ENV_SUFFIX: &str = ".env";

/// A durable on-disk message spool. Cheap to clone; clones share the directory lock.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    tmp: PathBuf,
    queue: PathBuf,
    read_only: bool,
    /// Holds the flock for as long as any clone of the spool lives.
    _lock: Option<File>,
    tmp_seq: AtomicU64,
    journal: Journal,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("root", &self.inner.root)
            .field("read_only", &self.inner.read_only)
            .finish()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool at `dir`, takes its lock and deletes incomplete writes
    /// left in `tmp/`. Fails with [`SpoolError::Locked`] if another process (or another `open` in
    /// this process) owns it; share one `Spool` by cloning it instead.
    pub fn open(dir: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        let root = dir.as_ref().to_path_buf();
        create_dir_durable(&root)?;
        let lock = lock_dir(&root)?;
        let tmp = root.join("tmp");
        let queue = root.join("queue");
        create_dir_durable(&tmp)?;
        create_dir_durable(&queue)?;
        for &c in ALPHABET {
            create_dir_durable(&queue.join((c as char).to_string()))?;
        }
        let removed = clear_dir(&tmp)?;
        if removed > 0 {
            tracing::info!(spool = %root.display(), removed, "removed incomplete spool writes");
        }
        let journal = Journal::open(root.join("journal"), false, |id| {
            message_path(&queue, id).exists()
        })?;
        Ok(Spool {
            inner: Arc::new(Inner {
                root,
                tmp,
                queue,
                read_only: false,
                _lock: Some(lock),
                tmp_seq: AtomicU64::new(0),
                journal,
            }),
        })
    }

    /// Opens an existing spool for inspection (e.g. `relayward queue list` next to a running
    /// server): no lock, no cleanup, every write fails with [`SpoolError::ReadOnly`].
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        let root = dir.as_ref().to_path_buf();
        let queue = root.join("queue");
        fs::metadata(&queue).map_err(io_err(&queue))?;
        let journal = Journal::open(root.join("journal"), true, |id| {
            message_path(&queue, id).exists()
        })?;
        Ok(Spool {
            inner: Arc::new(Inner {
                tmp: root.join("tmp"),
                root,
                queue,
                read_only: true,
                _lock: None,
                tmp_seq: AtomicU64::new(0),
                journal,
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Whether a message could be written now: creates, flushes and removes a probe file in
    /// the spool's temporary directory (readiness checks).
    pub fn probe_writable(&self) -> std::io::Result<()> {
        use std::io::Write;
        if self.inner.read_only {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the spool is open read-only",
            ));
        }
        let path = self
            .inner
            .tmp
            .join(format!(".ready-probe-{}", std::process::id()));
        let written = (|| {
            let mut f = fs::File::create(&path)?;
            f.write_all(b"probe\n")?;
            f.sync_all()
        })();
        let _ = fs::remove_file(&path);
        written
    }

    pub fn new_queue_id(&self) -> QueueId {
        QueueId::generate()
    }

    fn shard_dir(&self, id: &QueueId) -> PathBuf {
        self.inner.queue.join(id.shard())
    }

    fn body_path(&self, id: &QueueId) -> PathBuf {
        message_path(&self.inner.queue, id)
    }

    fn env_path(&self, id: &QueueId) -> PathBuf {
        self.shard_dir(id).join(format!("{id}{ENV_SUFFIX}"))
    }

    fn check_writable(&self) -> Result<(), SpoolError> {
        if self.inner.read_only {
            Err(SpoolError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Writes the message and makes it durable (see the module docs). When this returns `Ok`, the
    /// message may be acknowledged with 250. Blocking: call from `spawn_blocking` or use
    /// [`Spool::store_async`].
    pub fn store(&self, id: &QueueId, envelope: &Envelope, body: &[u8]) -> Result<(), SpoolError> {
        self.check_writable()?;
        let dest = self.body_path(id);
        self.write_and_rename(id, envelope, body, &dest)?;
        let dir = self.shard_dir(id);
        if let Err(e) = sync_dir(&dir) {
            // The 250 will not be sent, so the message must not be delivered either.
            let _ = fs::remove_file(&dest);
            return Err(e);
        }
        Ok(())
    }

    /// Group commit: writes all messages, then fsyncs them, renames them, and fsyncs each shard
    /// directory once, so the filesystem can share journal commits between messages. Same guarantees
    /// as `store` for every message once it returns `Ok`. All-or-nothing as far as possible:
    /// on error the messages already renamed into place are removed again, and none of them may be
    /// acknowledged. Keeps one open file per message until the end: bound the batch size.
    pub fn store_many<'a, I, B>(&self, items: I) -> Result<(), SpoolError>
    where
        I: IntoIterator<Item = (&'a QueueId, &'a Envelope, B)>,
        B: AsRef<[u8]>,
    {
        self.check_writable()?;
        let mut pending: Vec<(File, PathBuf, PathBuf)> = Vec::new();
        let mut committed: Vec<PathBuf> = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        let result = (|| {
            for (id, envelope, body) in items {
                let dest = self.body_path(id);
                let (file, tmp) = self.write_tmp(id, envelope, body.as_ref(), &dest)?;
                pending.push((file, tmp, dest));
                let dir = self.shard_dir(id);
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
            for (file, tmp, _) in &pending {
                file.sync_all().map_err(io_err(tmp))?;
            }
            while !pending.is_empty() {
                let (file, tmp, dest) = pending.remove(0);
                if let Err(e) = Self::rename_tmp(file, &tmp, &dest) {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
                committed.push(dest);
            }
            dirs.iter().try_for_each(|d| sync_dir(d))
        })();
        if result.is_err() {
            for (_, tmp, _) in &pending {
                let _ = fs::remove_file(tmp);
            }
            for path in &committed {
                let _ = fs::remove_file(path);
            }
        }
        result
    }

    /// Group commit through the journal: appends every message and flushes them once. Same
    /// guarantee as `store` for every message once it returns `Ok`; on error none of them is
    /// queued. Blocking: one thread at a time should call this (see [`crate::GroupCommitter`]),
    /// so that batches queue up behind the flush instead of contending for it.
    pub fn store_journaled(
        &self,
        items: Vec<(QueueId, Envelope, Arc<Vec<u8>>)>,
    ) -> Result<(), SpoolError> {
        self.check_writable()?;
        let items = items
            .into_iter()
            .map(|(id, envelope, body)| Accepted { id, envelope, body })
            .collect();
        self.inner.journal.append(items)
    }

    /// Whether a message could be stored under `id` with `envelope`: the id is new, and the
    /// envelope carries it.
    pub fn check_new(&self, id: &QueueId, envelope: &Envelope) -> Result<(), SpoolError> {
        if envelope.queue_id != *id {
            return Err(SpoolError::IdMismatch {
                id: *id,
                envelope_id: envelope.queue_id,
            });
        }
        if self.inner.journal.contains(id) {
            return Err(SpoolError::AlreadyExists(*id));
        }
        let dest = self.body_path(id);
        match fs::symlink_metadata(&dest) {
            Ok(_) => Err(SpoolError::AlreadyExists(*id)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dest)(e)),
        }
    }

    /// The envelope and body of a message accepted through the journal and not attempted yet,
    /// from memory; `None` when they must be read from disk.
    pub fn cached(&self, id: &QueueId) -> Option<(Envelope, Arc<Vec<u8>>)> {
        self.inner.journal.cached(id)
    }

    /// Whether the message is in the journal, where removing it neither blocks nor flushes.
    pub fn in_journal(&self, id: &QueueId) -> bool {
        self.inner.journal.contains(id)
    }

    /// Housekeeping of the journal, for the thread that appends to it: deletes segments with
    /// nothing queued, and moves messages still queued in old segments to message files.
    pub fn maintain_journal(&self) {
        if self.inner.read_only {
            return;
        }
        self.inner.journal.write_done_soon();
        for id in self.inner.journal.lingering() {
            match self.move_to_file(&id, None) {
                Ok(()) | Err(SpoolError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(queue_id = %id, error = %e, "cannot move a message out of the spool journal");
                    break;
                }
            }
        }
        if let Err(e) = self.inner.journal.retire() {
            tracing::warn!(error = %e, "cannot delete finished spool journal segments");
        }
    }

    /// Moves a message from the journal to a message file, with `envelope` (else the one it
    /// was accepted with). `Ok(false)`: it was not in the journal.
    fn move_to_file_if_journaled(
        &self,
        id: &QueueId,
        envelope: Option<&Envelope>,
    ) -> Result<bool, SpoolError> {
        let Some(claim) = self.inner.journal.begin_move(id) else {
            return Ok(false);
        };
        let message = claim?;
        let envelope = envelope.unwrap_or(&message.envelope);
        let copied = self.store(id, envelope, &message.body);
        if self.inner.journal.end_move(id, copied.is_ok()) {
            // Finished while being copied: the copy must not bring it back.
            if copied.is_ok() {
                let _ = fs::remove_file(self.body_path(id));
                let _ = sync_dir(&self.shard_dir(id));
            }
            return Err(SpoolError::NotFound(*id));
        }
        copied.map(|()| true)
    }

    fn move_to_file(&self, id: &QueueId, envelope: Option<&Envelope>) -> Result<(), SpoolError> {
        match self.move_to_file_if_journaled(id, envelope)? {
            true => Ok(()),
            false => Err(SpoolError::NotFound(*id)),
        }
    }

    /// Steps 1-3 of `store`: write to tmp/, fsync, rename into queue/.
    fn write_and_rename(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        body: &[u8],
        dest: &Path,
    ) -> Result<(), SpoolError> {
        let (file, tmp) = self.write_tmp(id, envelope, body, dest)?;
        let result = file
            .sync_all()
            .map_err(io_err(&tmp))
            .and_then(|()| Self::rename_tmp(file, &tmp, dest));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Step 1 of `store`: the complete message file in tmp/, not yet fsynced.
    fn write_tmp(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        body: &[u8],
        dest: &Path,
    ) -> Result<(File, PathBuf), SpoolError> {
        if envelope.queue_id != *id {
            return Err(SpoolError::IdMismatch {
                id: *id,
                envelope_id: envelope.queue_id,
            });
        }
        let json = serde_json::to_vec(envelope).map_err(SpoolError::Encode)?;
        let env_len = u32::try_from(json.len())
            .map_err(|_| SpoolError::Encode(serde::ser::Error::custom("envelope too large")))?;
        match fs::symlink_metadata(dest) {
            Ok(_) => return Err(SpoolError::AlreadyExists(*id)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(dest)(e)),
        }

        let mut head = Vec::with_capacity(HEADER_LEN as usize + json.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&env_len.to_le_bytes());
        head.extend_from_slice(&(body.len() as u64).to_le_bytes());
        head.extend_from_slice(&json);

        let tmp = self.inner.tmp.join(id.as_str());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    SpoolError::AlreadyExists(*id)
                } else {
                    io_err(&tmp)(e)
                }
            })?;
        let written = write_all(&mut file, &head)
            .and_then(|()| write_all(&mut file, body))
            .map_err(io_err(&tmp));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok((file, tmp))
    }

    /// Step 3 of `store`, once the file is fsynced.
    fn rename_tmp(file: File, tmp: &Path, dest: &Path) -> Result<(), SpoolError> {
        drop(file);
        test_pause();
        let result = fs::rename(tmp, dest).map_err(io_err(dest));
        test_pause();
        result
    }

    /// Every committed message, oldest first. Deletes `.env` files whose message is gone (left by a
    /// crash during `remove`), unless read-only.
    pub fn scan(&self) -> Result<Vec<QueueId>, SpoolError> {
        let mut ids = Vec::new();
        for &c in ALPHABET {
            let dir = self.inner.queue.join((c as char).to_string());
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            let mut bodies = HashSet::new();
            let mut envs = Vec::new();
            for entry in entries {
                let entry = entry.map_err(io_err(&dir))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Some(stem) = name.strip_suffix(ENV_SUFFIX) {
                    if let Ok(id) = stem.parse::<QueueId>() {
                        envs.push(id);
                    }
                } else if let Ok(id) = name.parse::<QueueId>() {
                    if id.as_str() == name {
                        bodies.insert(id);
                    }
                }
            }
            for id in envs {
                if !bodies.contains(&id) && !self.inner.read_only {
                    self.remove_orphan_env(&id)?;
                }
            }
            ids.extend(bodies);
        }
        ids.extend(self.inner.journal.ids());
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn remove_orphan_env(&self, id: &QueueId) -> Result<(), SpoolError> {
        // readdir may miss entries created while it runs; the message file is only ever created
        // before its .env, so if it is absent now the message is gone for good.
        let body = self.body_path(id);
        if body.exists() {
            return Ok(());
        }
        let env = self.env_path(id);
        match fs::remove_file(&env) {
            Ok(()) => {
                tracing::info!(queue_id = %id, "removed orphan spool envelope");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&env)(e)),
        }
    }

    /// The current envelope: the last `update_envelope`, else the one given to `store`.
    pub fn read_envelope(&self, id: &QueueId) -> Result<Envelope, SpoolError> {
        if let Some(env) = self.inner.journal.envelope(id) {
            return env;
        }
        let env_path = self.env_path(id);
        match fs::read(&env_path) {
            Ok(json) => {
                // An orphan .env (crash during remove) does not make a message.
                let body = self.body_path(id);
                match fs::symlink_metadata(&body) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(SpoolError::NotFound(*id))
                    }
                    Err(e) => return Err(io_err(&body)(e)),
                }
                serde_json::from_slice(&json).map_err(|e| corrupt(&env_path, e.to_string()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (mut file, env_len, _) = self.open_message(id)?;
                let mut json = vec![0u8; env_len as usize];
                let path = self.body_path(id);
                file.read_exact(&mut json).map_err(io_err(&path))?;
                serde_json::from_slice(&json).map_err(|e| corrupt(&path, e.to_string()))
            }
            Err(e) => Err(io_err(&env_path)(e)),
        }
    }

    pub fn read_body(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        if let Some(body) = self.inner.journal.body(id) {
            return body.map(|b| Arc::try_unwrap(b).unwrap_or_else(|b| (*b).clone()));
        }
        let (mut reader, len) = self.open_body(id)?;
        let mut body = Vec::with_capacity(len as usize);
        reader
            .read_to_end(&mut body)
            .map_err(io_err(&self.body_path(id)))?;
        Ok(body)
    }

    /// The body as a reader positioned at its first byte, and its length; for streaming large
    /// messages to the next hop without loading them.
    pub fn open_body(&self, id: &QueueId) -> Result<(io::Take<File>, u64), SpoolError> {
        if let Some(body) = self.inner.journal.open_body(id) {
            return body;
        }
        let (mut file, env_len, body_len) = self.open_message(id)?;
        let path = self.body_path(id);
        file.seek(SeekFrom::Start(HEADER_LEN + env_len as u64))
            .map_err(io_err(&path))?;
        Ok((file.take(body_len), body_len))
    }

    /// Opens the message file, checks its header and length; the file is left positioned at the
    /// envelope.
    fn open_message(&self, id: &QueueId) -> Result<(File, u32, u64), SpoolError> {
        let path = self.body_path(id);
        let mut file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                SpoolError::NotFound(*id)
            } else {
                io_err(&path)(e)
            }
        })?;
        let mut head = [0u8; HEADER_LEN as usize];
        file.read_exact(&mut head).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                corrupt(&path, "truncated header")
            } else {
                io_err(&path)(e)
            }
        })?;
        if &head[..8] != MAGIC {
            return Err(corrupt(&path, "bad magic"));
        }
        let env_len = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        let body_len = u64::from_le_bytes(head[12..20].try_into().expect("8 bytes"));
        let actual = file.metadata().map_err(io_err(&path))?.len();
        let expected = HEADER_LEN
            .checked_add(env_len as u64)
            .and_then(|n| n.checked_add(body_len));
        if expected != Some(actual) {
            return Err(corrupt(
                &path,
                format!("length {actual}, header says {expected:?}"),
            ));
        }
        Ok((file, env_len, body_len))
    }

    /// Atomically replaces the envelope (see the module docs). The message file is not touched;
    /// a message in the journal moves to a message file written with the new envelope.
    pub fn update_envelope(&self, id: &QueueId, envelope: &Envelope) -> Result<(), SpoolError> {
        self.check_writable()?;
        if envelope.queue_id != *id {
            return Err(SpoolError::IdMismatch {
                id: *id,
                envelope_id: envelope.queue_id,
            });
        }
        if self.move_to_file_if_journaled(id, Some(envelope))? {
            return Ok(());
        }
        let body = self.body_path(id);
        match fs::symlink_metadata(&body) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SpoolError::NotFound(*id)),
            Err(e) => return Err(io_err(&body)(e)),
        }
        let mut json = serde_json::to_vec(envelope).map_err(SpoolError::Encode)?;
        json.push(b'\n');

        // Unique name: concurrent updates of one message must not write into the same tmp file.
        let seq = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.inner.tmp.join(format!("{id}{ENV_SUFFIX}.{seq}"));
        let dest = self.env_path(id);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let written = write_all(&mut file, &json)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))
            .and_then(|()| {
                drop(file);
                test_pause();
                fs::rename(&tmp, &dest).map_err(io_err(&dest))
            });
        test_pause();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        sync_dir(&self.shard_dir(id))
    }

    /// Deletes the message; `NotFound` if it was not there. Durable: once this returns, the
    /// message does not come back after a crash (admin deletes rely on that).
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.remove_inner(id, true)
    }

    /// Deletes a message whose every recipient reached a final state, without waiting for the
    /// directory to reach the disk. A crash in the next few seconds may bring the message back,
    /// and it is then delivered once more: at-least-once, the trade every MTA makes here, and it
    /// saves one of the three disk flushes a message costs.
    pub fn remove_finished(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.remove_inner(id, false)
    }

    fn remove_inner(&self, id: &QueueId, durable: bool) -> Result<(), SpoolError> {
        self.check_writable()?;
        if let Some(removed) = self.inner.journal.remove(id, durable) {
            return removed;
        }
        let body = self.body_path(id);
        let found = match fs::remove_file(&body) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err(&body)(e)),
        };
        test_pause();
        let env = self.env_path(id);
        match fs::remove_file(&env) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&env)(e)),
        }
        if durable {
            sync_dir(&self.shard_dir(id))?;
        }
        if found {
            Ok(())
        } else {
            Err(SpoolError::NotFound(*id))
        }
    }

    /// Runs a blocking spool operation on tokio's blocking pool.
    pub async fn blocking<R, F>(&self, f: F) -> Result<R, SpoolError>
    where
        F: FnOnce(&Spool) -> Result<R, SpoolError> + Send + 'static,
        R: Send + 'static,
    {
        let spool = self.clone();
        tokio::task::spawn_blocking(move || f(&spool))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    /// [`Spool::store`] on the blocking pool. Takes `Envelope` or `Arc<Envelope>`, and `Vec<u8>`,
    /// `Arc<[u8]>` or anything else that owns bytes.
    pub async fn store_async<E, B>(
        &self,
        id: QueueId,
        envelope: E,
        body: B,
    ) -> Result<(), SpoolError>
    where
        E: Borrow<Envelope> + Send + 'static,
        B: AsRef<[u8]> + Send + 'static,
    {
        self.blocking(move |s| s.store(&id, envelope.borrow(), body.as_ref()))
            .await
    }

    pub async fn update_envelope_async<E>(&self, id: QueueId, envelope: E) -> Result<(), SpoolError>
    where
        E: Borrow<Envelope> + Send + 'static,
    {
        self.blocking(move |s| s.update_envelope(&id, envelope.borrow()))
            .await
    }

    pub async fn remove_async(&self, id: QueueId) -> Result<(), SpoolError> {
        self.blocking(move |s| s.remove(&id)).await
    }
}

#[cfg(test)]
mod tests;
