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

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::journal::{Accepted, Journal};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Crockford base32, upper case. In ASCII order, so ids sort by their time prefix.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Length of a [`QueueId`] in characters.
pub const QUEUE_ID_LEN: usize = 16;
/// 11 base32 characters = 55 bits of microseconds since the epoch (good until the year 3111).
const TIME_CHARS: usize = 11;
const RANDOM_CHARS: usize = QUEUE_ID_LEN - TIME_CHARS;
// The random part is drawn from one u32.
const _: () = assert!(RANDOM_CHARS * 5 <= 32);

const MAGIC: &[u8; 8] = b"RWSPOOL\x01";
const HEADER_LEN: u64 = 20;
const ENV_SUFFIX: &str = ".env";

/// Errors of the spool. Anything but `NotFound` and `InvalidQueueId` means the spool cannot be
/// trusted for this message: reply 451, never 250.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("message {0} is not in the spool")]
    NotFound(QueueId),
    #[error("message {0} is already in the spool")]
    AlreadyExists(QueueId),
    #[error("corrupt spool file {}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("envelope for {id} carries queue id {envelope_id}")]
    IdMismatch { id: QueueId, envelope_id: QueueId },
    #[error("cannot encode envelope: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("spool {} is in use by another process", .0.display())]
    Locked(PathBuf),
    #[error("spool was opened read-only")]
    ReadOnly,
    #[error("invalid queue id {0:?}")]
    InvalidQueueId(String),
    #[error("spool task failed: {0}")]
    Task(String),
}

impl SpoolError {
    /// The file system is full (or the quota reached): the client should retry later, which
    /// RFC 3463's 4.3.1 says; anything else is a local problem (4.3.0).
    pub fn is_storage_full(&self) -> bool {
        match self {
            SpoolError::Io { source, .. } => {
                source.kind() == io::ErrorKind::StorageFull
                    || matches!(
                        source.raw_os_error(),
                        Some(libc_enospc::ENOSPC | libc_enospc::EDQUOT)
                    )
            }
            _ => false,
        }
    }
}

/// errno values for a full file system (Linux), without a libc dependency for two numbers.
mod libc_enospc {
    pub const ENOSPC: i32 = 28;
    pub const EDQUOT: i32 = 122;
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> SpoolError {
    SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A message's id in the spool: 16 characters of Crockford base32, 11 of them the time of creation
/// in microseconds, 5 random. Sorting ids sorts messages by age.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId([u8; QUEUE_ID_LEN]);

/// Last time component handed out in this process; ids are strictly increasing per process, so two
/// threads can never collide, and the random part separates processes and clock steps backwards.
static LAST_MICROS: AtomicU64 = AtomicU64::new(0);

impl QueueId {
    /// A fresh id, unique in this process by construction and across processes by 25 random bits.
    pub fn generate() -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut last = LAST_MICROS.load(Ordering::Relaxed);
        let micros = loop {
            let next = now.max(last + 1);
            match LAST_MICROS.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break next,
                Err(actual) => last = actual,
            }
        };
        let random: u32 = rand::random();
        let mut bytes = [0u8; QUEUE_ID_LEN];
        for (i, b) in bytes[..TIME_CHARS].iter_mut().rev().enumerate() {
            *b = ALPHABET[((micros >> (5 * i)) & 31) as usize];
        }
        for (i, b) in bytes[TIME_CHARS..].iter_mut().rev().enumerate() {
            *b = ALPHABET[((random >> (5 * i)) & 31) as usize];
        }
        QueueId(bytes)
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from ALPHABET.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// Creation time in microseconds since the Unix epoch.
    pub fn timestamp_micros(&self) -> u64 {
        self.0[..TIME_CHARS].iter().fold(0u64, |acc, &c| {
            (acc << 5) | decode_char(c).unwrap_or(0) as u64
        })
    }

    fn shard(&self) -> &str {
        &self.as_str()[QUEUE_ID_LEN - 1..]
    }
}

fn decode_char(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

impl FromStr for QueueId {
    type Err = SpoolError;

    /// Accepts lower case (ids get typed into the CLI); rejects anything that could be a path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SpoolError::InvalidQueueId(s.to_string());
        let raw = s.as_bytes();
        if raw.len() != QUEUE_ID_LEN {
            return Err(bad());
        }
        let mut bytes = [0u8; QUEUE_ID_LEN];
        for (b, &c) in bytes.iter_mut().zip(raw) {
            let c = c.to_ascii_uppercase();
            decode_char(c).ok_or_else(bad)?;
            *b = c;
        }
        Ok(QueueId(bytes))
    }
}

impl TryFrom<&str> for QueueId {
    type Error = SpoolError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<String> for QueueId {
    type Error = SpoolError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<QueueId> for String {
    fn from(id: QueueId) -> String {
        id.as_str().to_string()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueId({})", self.as_str())
    }
}

impl Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Delivery state of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    Queued,
    Deferred,
    Delivered,
    Bounced,
    Held,
}

impl RecipientStatus {
    /// Delivered or bounced: nothing more will be attempted for this recipient.
    pub fn is_final(self) -> bool {
        matches!(self, RecipientStatus::Delivered | RecipientStatus::Bounced)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    #[serde(default)]
    pub orcpt: Option<String>,
    /// DSN NOTIFY keywords: NEVER, SUCCESS, FAILURE, DELAY. Empty when not given.
    #[serde(default)]
    pub notify: Vec<String>,
    pub status: RecipientStatus,
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds.
    #[serde(default)]
    pub next_attempt_at: i64,
    #[serde(default)]
    pub last_reply: Option<String>,
}

impl Recipient {
    /// A queued recipient without DSN parameters.
    pub fn new(address: impl Into<String>) -> Recipient {
        Recipient {
            address: address.into(),
            orcpt: None,
            notify: Vec::new(),
            status: RecipientStatus::Queued,
            attempts: 0,
            next_attempt_at: 0,
            last_reply: None,
        }
    }
}

/// Everything known about a message besides its body. Stored as JSON; fields added later must be
/// `#[serde(default)]` so that spools written by older versions still load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub queue_id: QueueId,
    /// Unix seconds.
    pub received_at: i64,
    #[serde(default)]
    pub tenant_id: Option<i64>,
    #[serde(default)]
    pub connector_id: Option<i64>,
    pub client_ip: String,
    pub helo: String,
    #[serde(default)]
    pub auth_user: Option<String>,
    #[serde(default)]
    pub tls: bool,
    /// "" for the null sender.
    pub sender: String,
    /// The envelope sender as received when `sender` is its SRS rewriting (relayed mail of an
    /// unregistered sender): the trace and DSNs use it.
    #[serde(default)]
    pub original_sender: Option<String>,
    /// registered | unregistered | null
    pub sender_class: String,
    #[serde(default)]
    pub header_from_mismatch: bool,
    /// The content scanner accepted the message with a spam verdict (a header added or the
    /// subject rewritten): it leaves from the high-risk egress pool.
    #[serde(default)]
    pub spam_verdict: bool,
    #[serde(default)]
    pub message_id: Option<String>,
    pub size: u64,
    /// BODY=8BITMIME
    #[serde(default)]
    pub body_8bit: bool,
    #[serde(default)]
    pub smtputf8: bool,
    /// FULL | HDRS
    #[serde(default)]
    pub dsn_ret: Option<String>,
    #[serde(default)]
    pub dsn_envid: Option<String>,
    pub recipients: Vec<Recipient>,
    #[serde(default)]
    pub held: bool,
}

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

/// Slow-motion mode for the SIGKILL test: writes trickle out in small pieces and every step of a
/// commit sequence is followed by a pause, so that random kills land inside each step, not mostly
/// inside fsync.
#[cfg(test)]
static SLOW_MOTION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn write_all(file: &mut File, buf: &[u8]) -> io::Result<()> {
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
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn message_path(queue: &Path, id: &QueueId) -> PathBuf {
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

fn clear_dir(dir: &Path) -> Result<usize, SpoolError> {
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
fn lock_dir(root: &Path) -> Result<File, SpoolError> {
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
fn lock_dir(root: &Path) -> Result<File, SpoolError> {
    let path = root.join("lock");
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn envelope(id: QueueId, recipients: usize) -> Envelope {
        Envelope {
            queue_id: id,
            received_at: 1_700_000_000,
            tenant_id: Some(7),
            connector_id: Some(3),
            client_ip: "192.0.2.10".into(),
            helo: "mail.example.com".into(),
            auth_user: Some("printer@example.com".into()),
            tls: true,
            sender: "alice@example.com".into(),
            original_sender: None,
            sender_class: "registered".into(),
            header_from_mismatch: false,
            spam_verdict: false,
            message_id: Some("<abc@example.com>".into()),
            size: 0,
            body_8bit: true,
            smtputf8: false,
            dsn_ret: Some("HDRS".into()),
            dsn_envid: Some("env-1".into()),
            recipients: (0..recipients)
                .map(|i| Recipient {
                    orcpt: Some(format!("rfc822;r{i}@example.net")),
                    notify: vec!["FAILURE".into(), "DELAY".into()],
                    ..Recipient::new(format!("r{i}@example.net"))
                })
                .collect(),
            held: false,
        }
    }

    fn store_one(spool: &Spool, body: &[u8]) -> QueueId {
        let id = spool.new_queue_id();
        let mut env = envelope(id, 2);
        env.size = body.len() as u64;
        spool.store(&id, &env, body).unwrap();
        id
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn store_read_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let bodies: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
            (0..=255u8).cycle().take(300_000).collect(),
        ];
        for body in &bodies {
            let id = spool.new_queue_id();
            let mut env = envelope(id, 3);
            env.size = body.len() as u64;
            env.sender = String::new();
            env.sender_class = "null".into();
            spool.store(&id, &env, body).unwrap();
            assert_eq!(spool.read_envelope(&id).unwrap(), env);
            assert_eq!(&spool.read_body(&id).unwrap(), body);
            let (mut reader, len) = spool.open_body(&id).unwrap();
            assert_eq!(len, body.len() as u64);
            let mut streamed = Vec::new();
            reader.read_to_end(&mut streamed).unwrap();
            assert_eq!(&streamed, body);
            assert!(spool.body_path(&id).is_file());
            assert!(!spool.env_path(&id).exists(), "store writes one file");
        }
        assert!(dir_names(&dir.path().join("tmp")).is_empty());

        let id = spool.new_queue_id();
        let other = spool.new_queue_id();
        assert!(matches!(
            spool.store(&id, &envelope(other, 1), b"x"),
            Err(SpoolError::IdMismatch { .. })
        ));
        let first = spool.scan().unwrap()[0];
        assert!(matches!(
            spool.store(&first, &envelope(first, 1), b"x"),
            Err(SpoolError::AlreadyExists(_))
        ));
        assert!(matches!(
            spool.read_envelope(&id),
            Err(SpoolError::NotFound(_))
        ));
        assert!(matches!(spool.read_body(&id), Err(SpoolError::NotFound(_))));
    }

    #[test]
    fn envelope_json_is_readable() {
        let id: QueueId = "01HZY3V5K8Q2W7XA".parse().unwrap();
        let mut env = envelope(id, 1);
        env.recipients[0].status = RecipientStatus::Delivered;
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["queue_id"], "01HZY3V5K8Q2W7XA");
        assert_eq!(json["recipients"][0]["status"], "delivered");
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn scan_after_reopen_is_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let ids: Vec<QueueId> = (0..100).map(|_| spool.new_queue_id()).collect();
        // Store newest first, so that order on disk or of writing cannot explain the result.
        for id in ids.iter().rev() {
            spool
                .store(id, &envelope(*id, 1), id.as_str().as_bytes())
                .unwrap();
        }
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan().unwrap(), ids);
        for id in &ids {
            assert_eq!(spool.read_body(id).unwrap(), id.as_str().as_bytes());
        }
        let times: Vec<u64> = ids.iter().map(|id| id.timestamp_micros()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        assert!(now.abs_diff(times[0]) < 60_000_000);
    }

    #[test]
    fn tmp_leftovers_are_ignored_and_cleaned_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let kept = store_one(&spool, b"kept");
        let tmp = dir.path().join("tmp");
        let junk_id = spool.new_queue_id();
        fs::write(tmp.join(junk_id.as_str()), b"RWSPOOL\x01partial").unwrap();
        fs::write(tmp.join(format!("{junk_id}.env.0")), b"{\"queue_id\":").unwrap();
        fs::write(tmp.join("whatever"), b"").unwrap();
        fs::create_dir(tmp.join("subdir")).unwrap();
        assert_eq!(spool.scan().unwrap(), vec![kept]);
        assert!(matches!(
            spool.read_envelope(&junk_id),
            Err(SpoolError::NotFound(_))
        ));
        drop(spool);

        let spool = Spool::open(dir.path()).unwrap();
        assert!(dir_names(&tmp).is_empty());
        assert_eq!(spool.scan().unwrap(), vec![kept]);
        assert_eq!(spool.read_body(&kept).unwrap(), b"kept");
    }

    #[test]
    fn truncated_write_never_shows_up() {
        // Build a real message file elsewhere, then leave a truncated copy in tmp/ as a crash before
        // the rename would.
        let scratch = tempfile::tempdir().unwrap();
        let other = Spool::open(scratch.path()).unwrap();
        let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let id = store_one(&other, &body);
        let image = fs::read(other.body_path(&id)).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for cut in [
            0,
            5,
            HEADER_LEN as usize,
            300,
            image.len() / 2,
            image.len() - 1,
        ] {
            fs::write(dir.path().join("tmp").join(id.as_str()), &image[..cut]).unwrap();
            assert!(spool.scan().unwrap().is_empty());
            assert!(matches!(spool.read_body(&id), Err(SpoolError::NotFound(_))));
        }
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.scan().unwrap().is_empty());
        assert!(dir_names(&dir.path().join("tmp")).is_empty());

        // A complete message file stores fine afterwards under the same id.
        spool.store(&id, &envelope(id, 2), &body).unwrap();
        assert_eq!(spool.read_body(&id).unwrap(), body);

        // Belt and braces: should a filesystem ever hand back a short file despite the fsync, reads
        // report it instead of returning a partial message.
        let path = spool.body_path(&id);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(image.len() as u64 - 10).unwrap();
        assert!(matches!(
            spool.read_body(&id),
            Err(SpoolError::Corrupt { .. })
        ));
        fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            spool.read_envelope(&id),
            Err(SpoolError::Corrupt { .. })
        ));
    }

    #[test]
    fn update_envelope_is_atomic_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body = b"body stays put".to_vec();
        let id = store_one(&spool, &body);
        let original = spool.read_envelope(&id).unwrap();
        let body_file = spool.body_path(&id);
        let body_mtime = fs::metadata(&body_file).unwrap().modified().unwrap();

        // Two versions of very different sizes, so a torn write would be visible.
        let small = {
            let mut e = original.clone();
            e.recipients.truncate(1);
            e.recipients[0].status = RecipientStatus::Deferred;
            e.recipients[0].attempts = 1;
            e.recipients[0].last_reply = Some("451 4.7.1 try later".into());
            e
        };
        let big = {
            let mut e = envelope(id, 500);
            for r in &mut e.recipients {
                r.status = RecipientStatus::Delivered;
                r.last_reply = Some("250 2.0.0 Ok ".repeat(20));
            }
            e
        };
        spool.update_envelope(&id, &small).unwrap();

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (spool, stop) = (spool.clone(), stop.clone());
                let (small, big) = (small.clone(), big.clone());
                std::thread::spawn(move || {
                    let mut reads = 0;
                    while !stop.load(Ordering::Relaxed) || reads == 0 {
                        let got = spool.read_envelope(&id).unwrap();
                        assert!(got == small || got == big, "torn envelope read");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let spool = spool.clone();
                let (small, big) = (small.clone(), big.clone());
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let e = if (i + w) % 2 == 0 { &big } else { &small };
                        spool.update_envelope(&id, e).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }

        spool.update_envelope(&id, &big).unwrap();
        assert_eq!(
            fs::metadata(&body_file).unwrap().modified().unwrap(),
            body_mtime
        );
        assert!(dir_names(&dir.path().join("tmp")).is_empty());
        drop(spool);

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.read_envelope(&id).unwrap(), big);
        assert_eq!(spool.read_body(&id).unwrap(), body);
        assert_eq!(spool.scan().unwrap(), vec![id]);

        let missing = spool.new_queue_id();
        assert!(matches!(
            spool.update_envelope(&missing, &envelope(missing, 1)),
            Err(SpoolError::NotFound(_))
        ));
        assert!(!spool.env_path(&missing).exists());
    }

    #[test]
    fn remove_deletes_message_and_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a = store_one(&spool, b"a");
        let b = store_one(&spool, b"b");
        let mut env = spool.read_envelope(&a).unwrap();
        env.recipients[0].status = RecipientStatus::Delivered;
        spool.update_envelope(&a, &env).unwrap();

        spool.remove(&a).unwrap();
        assert!(!spool.body_path(&a).exists());
        assert!(!spool.env_path(&a).exists());
        assert_eq!(spool.scan().unwrap(), vec![b]);
        assert!(matches!(
            spool.read_envelope(&a),
            Err(SpoolError::NotFound(_))
        ));
        assert!(matches!(spool.read_body(&a), Err(SpoolError::NotFound(_))));
        assert!(matches!(spool.remove(&a), Err(SpoolError::NotFound(_))));

        // A crash between the two unlinks of remove() leaves an orphan .env: it is not a message,
        // and scan cleans it up.
        spool.update_envelope(&b, &envelope(b, 1)).unwrap();
        fs::remove_file(spool.body_path(&b)).unwrap();
        assert!(matches!(
            spool.read_envelope(&b),
            Err(SpoolError::NotFound(_))
        ));
        assert!(spool.scan().unwrap().is_empty());
        assert!(!spool.env_path(&b).exists());
    }

    #[test]
    fn queue_ids_are_unique_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    (0..1250).map(|_| spool.new_queue_id()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = HashSet::new();
        for t in threads {
            let ids = t.join().unwrap();
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "ids increase per thread"
            );
            for id in ids {
                assert_eq!(id.as_str().len(), QUEUE_ID_LEN);
                assert!(id.as_str().bytes().all(|c| c.is_ascii_alphanumeric()));
                assert_eq!(id.as_str().parse::<QueueId>().unwrap(), id);
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 10_000);
        let shards: HashSet<&str> = all.iter().map(|id| id.shard()).collect();
        assert_eq!(shards.len(), 32, "random part spreads over all shards");
    }

    #[test]
    fn queue_id_parsing() {
        let id = QueueId::generate();
        assert_eq!(id.as_str().to_lowercase().parse::<QueueId>().unwrap(), id);
        assert_eq!(QueueId::try_from(String::from(id)).unwrap(), id);
        assert!(QueueId::try_from("nope").is_err());
        for bad in [
            "",
            "01HZY3V5K8Q2W7X",
            "01HZY3V5K8Q2W7XAB",
            "01HZY3V5K8Q2W7XI",
            "../../etc/passwd",
            "01HZY3V5K8Q2W7X/",
            "01HZY3V5K8Q2W7XÄ",
        ] {
            assert!(bad.parse::<QueueId>().is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<QueueId>("\"../../etc/passwd\"").is_err());
    }

    #[test]
    fn lock_and_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = store_one(&spool, b"x");
        assert!(matches!(
            Spool::open(dir.path()),
            Err(SpoolError::Locked(_))
        ));
        let ro = Spool::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.scan().unwrap(), vec![id]);
        assert_eq!(ro.read_body(&id).unwrap(), b"x");
        assert!(matches!(ro.remove(&id), Err(SpoolError::ReadOnly)));
        assert!(matches!(
            ro.store(&ro.new_queue_id(), &envelope(id, 1), b""),
            Err(SpoolError::ReadOnly)
        ));
        drop(spool);
        Spool::open(dir.path()).unwrap();
        let missing = dir.path().join("nope");
        assert!(Spool::open_read_only(&missing).is_err());
    }

    #[test]
    fn store_many_commits_all() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let ids: Vec<QueueId> = (0..40).map(|_| spool.new_queue_id()).collect();
        let envs: Vec<Envelope> = ids.iter().map(|id| envelope(*id, 1)).collect();
        spool
            .store_many(ids.iter().zip(&envs).map(|(id, e)| (id, e, id.as_str())))
            .unwrap();
        assert_eq!(spool.scan().unwrap(), ids);

        // One bad item: the ones already renamed into place are taken back.
        let more: Vec<QueueId> = (0..3).map(|_| spool.new_queue_id()).collect();
        let mut envs: Vec<Envelope> = more.iter().map(|id| envelope(*id, 1)).collect();
        envs[2].queue_id = ids[0];
        let err = spool
            .store_many(
                more.iter()
                    .zip(&envs)
                    .map(|(id, e)| (id, e, b"x".as_slice())),
            )
            .unwrap_err();
        assert!(matches!(err, SpoolError::IdMismatch { .. }));
        assert_eq!(spool.scan().unwrap(), ids);
    }

    #[tokio::test]
    async fn async_wrappers() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.new_queue_id();
        let env = Arc::new(envelope(id, 1));
        spool
            .store_async(id, env.clone(), b"async body".to_vec())
            .await
            .unwrap();
        assert_eq!(spool.read_envelope(&id).unwrap(), *env);
        let mut updated = (*env).clone();
        updated.held = true;
        spool
            .update_envelope_async(id, updated.clone())
            .await
            .unwrap();
        let read = spool.blocking(move |s| s.read_envelope(&id)).await.unwrap();
        assert_eq!(read, updated);
        spool.remove_async(id).await.unwrap();
        assert!(spool.scan().unwrap().is_empty());
    }

    // ---- crash test: a child process stores messages and is SIGKILLed at random points ----

    const CRASH_DIR_ENV: &str = "RELAYWARD_SPOOL_CRASH_CHILD_DIR";
    const MARK: &str = "@@spool ";

    fn fnv(id: &QueueId) -> u64 {
        id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    fn crash_len(id: &QueueId) -> usize {
        // Up to 256 KiB, so that kills land in the middle of writes, not only between them.
        100 + (fnv(id) % (256 * 1024)) as usize
    }

    fn crash_body(id: &QueueId) -> Vec<u8> {
        let seed = id.as_str().as_bytes();
        (0..crash_len(id))
            .map(|i| seed[i % seed.len()].wrapping_add((i / seed.len()) as u8))
            .collect()
    }

    fn crash_envelope(id: &QueueId) -> Envelope {
        let mut env = envelope(*id, 1 + (fnv(id) % 5) as usize);
        env.size = crash_len(id) as u64;
        env
    }

    fn crash_updated(id: &QueueId) -> Envelope {
        let mut env = crash_envelope(id);
        for r in &mut env.recipients {
            r.status = RecipientStatus::Deferred;
            r.attempts = 1;
            r.last_reply = Some("421 4.4.2 timeout".into());
        }
        env
    }

    fn crash_will_update(id: &QueueId) -> bool {
        fnv(id).is_multiple_of(3)
    }

    /// After a crash: nothing acknowledged is lost, nothing removed comes back, and everything
    /// in the spool, acknowledged or not, is complete and consistent. Returns what is there.
    fn check_after_crash(
        spool: &Spool,
        round: usize,
        stored: &HashSet<QueueId>,
        removed: &HashSet<QueueId>,
        updated: &HashSet<QueueId>,
    ) -> HashSet<QueueId> {
        let present: HashSet<QueueId> = spool.scan().unwrap().into_iter().collect();
        for id in stored {
            if removed.contains(id) {
                assert!(
                    !present.contains(id),
                    "round {round}: {id} removed yet present"
                );
            } else if !crash_will_remove(id) {
                assert!(present.contains(id), "round {round}: stored {id} lost");
            }
        }
        for id in &present {
            let body = spool.read_body(id).unwrap();
            assert_eq!(body, crash_body(id), "round {round}: body of {id}");
            let env = spool.read_envelope(id).unwrap();
            if updated.contains(id) {
                assert_eq!(env, crash_updated(id), "round {round}: update of {id} lost");
            } else {
                assert!(env == crash_envelope(id) || env == crash_updated(id));
            }
        }
        present
    }

    fn crash_will_remove(id: &QueueId) -> bool {
        (fnv(id) >> 8).is_multiple_of(5)
    }

    /// The child side; does nothing in a normal test run.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
            return;
        };
        SLOW_MOTION.store(
            std::env::var_os("RELAYWARD_SPOOL_SLOW").is_some(),
            Ordering::Relaxed,
        );
        let spool = Spool::open(dir).unwrap();
        // Straight to fd 1, not through the test harness's capture.
        let mut out = io::stdout().lock();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let id = spool.new_queue_id();
            spool
                .store(&id, &crash_envelope(&id), &crash_body(&id))
                .unwrap();
            writeln!(out, "\n{MARK}stored {id}").unwrap();
            out.flush().unwrap();
            if crash_will_update(&id) {
                spool.update_envelope(&id, &crash_updated(&id)).unwrap();
                writeln!(out, "\n{MARK}updated {id}").unwrap();
                out.flush().unwrap();
            }
            if crash_will_remove(&id) {
                spool.remove(&id).unwrap();
                writeln!(out, "\n{MARK}removed {id}").unwrap();
                out.flush().unwrap();
            }
        }
    }

    #[test]
    fn survives_sigkill_at_random_points() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut stored = HashSet::new();
        let mut updated = HashSet::new();
        let mut removed = HashSet::new();
        for round in 0..12 {
            let mut child = Command::new(&exe)
                .args([
                    "spool::tests::crash_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CRASH_DIR_ENV, dir.path())
                .env("RELAYWARD_SPOOL_SLOW", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .collect::<Vec<String>>()
            });
            let delay = 20 + rand::random::<u64>() % 250;
            std::thread::sleep(Duration::from_millis(delay));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let lines = reader.join().unwrap();
            let mut this_round = 0;
            for line in &lines {
                let Some(pos) = line.find(MARK) else { continue };
                let mut parts = line[pos + MARK.len()..].split(' ');
                let (Some(what), Some(id)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let Ok(id) = id.parse::<QueueId>() else {
                    continue; // line cut by the kill
                };
                match what {
                    "stored" => {
                        stored.insert(id);
                        this_round += 1;
                    }
                    "updated" => {
                        updated.insert(id);
                    }
                    "removed" => {
                        removed.insert(id);
                    }
                    _ => {}
                }
            }

            let leftovers = dir_names(&dir.path().join("tmp")).len();
            let spool = Spool::open(dir.path()).unwrap();
            assert!(dir_names(&dir.path().join("tmp")).is_empty());
            let present = check_after_crash(&spool, round, &stored, &removed, &updated);
            eprintln!(
                "round {round}: killed after {delay} ms, {this_round} stored this round, \
                 {leftovers} tmp leftovers, {} in spool",
                present.len()
            );
        }
        assert!(!stored.is_empty(), "child never stored anything");
    }

    // ---- the journal ----

    /// The journal's segments, spares left out.
    fn journal_names(root: &Path) -> Vec<String> {
        let mut names = dir_names(&root.join("journal"));
        names.retain(|n| n.ends_with(".seg"));
        names
    }

    /// Where a message's record starts in a segment, and its envelope and body lengths.
    fn record_of(segment: &[u8], id: &QueueId) -> (usize, usize, usize) {
        let id = id.as_str().as_bytes();
        let header = segment.windows(id.len()).position(|w| w == id).unwrap() - 8;
        let field = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(&segment[header + r.start..header + r.end]);
            u64::from_le_bytes(b) as usize
        };
        (header, field(24..28), field(32..40))
    }

    fn journaled(spool: &Spool, n: usize, len: usize) -> Vec<QueueId> {
        let ids: Vec<QueueId> = (0..n).map(|_| spool.new_queue_id()).collect();
        spool
            .store_journaled(
                ids.iter()
                    .map(|id| {
                        let mut env = envelope(*id, 2);
                        env.size = len as u64;
                        let body: Vec<u8> = id.as_str().bytes().cycle().take(len).collect();
                        (*id, env, Arc::new(body))
                    })
                    .collect(),
            )
            .unwrap();
        ids
    }

    fn body_of(id: &QueueId, len: usize) -> Vec<u8> {
        id.as_str().bytes().cycle().take(len).collect()
    }

    #[test]
    fn journaled_messages_are_read_removed_moved_and_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let ids = journaled(&spool, 10, 5000);
        assert_eq!(spool.scan().unwrap(), ids);
        for id in &ids {
            assert!(spool.in_journal(id));
            assert_eq!(spool.read_body(id).unwrap(), body_of(id, 5000));
            let (env, body) = spool.cached(id).unwrap();
            assert_eq!(env, spool.read_envelope(id).unwrap());
            assert_eq!(*body, body_of(id, 5000));
            let (mut reader, len) = spool.open_body(id).unwrap();
            let mut streamed = Vec::new();
            reader.read_to_end(&mut streamed).unwrap();
            assert_eq!((streamed, len), (body_of(id, 5000), 5000));
        }
        assert!(matches!(
            spool.store_journaled(vec![(ids[0], envelope(ids[0], 1), Arc::new(Vec::new()))]),
            Err(SpoolError::AlreadyExists(_))
        ));
        assert!(matches!(
            spool.check_new(&ids[0], &envelope(ids[0], 1)),
            Err(SpoolError::AlreadyExists(_))
        ));

        // Finished: gone at once, and after a restart.
        spool.remove_finished(&ids[0]).unwrap();
        spool.remove(&ids[1]).unwrap();
        assert!(matches!(
            spool.remove(&ids[1]),
            Err(SpoolError::NotFound(_))
        ));
        // A new envelope moves the message to a message file written with it.
        let mut updated = envelope(ids[2], 2);
        updated.size = 5000;
        updated.recipients[0].status = RecipientStatus::Delivered;
        spool.update_envelope(&ids[2], &updated).unwrap();
        assert!(!spool.in_journal(&ids[2]));
        assert!(spool.body_path(&ids[2]).exists());
        assert!(!spool.env_path(&ids[2]).exists());
        assert_eq!(spool.read_envelope(&ids[2]).unwrap(), updated);
        assert_eq!(spool.read_body(&ids[2]).unwrap(), body_of(&ids[2], 5000));

        // Another process reading the spool sees what the owner sees.
        let ro = Spool::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.scan().unwrap(), ids[2..]);
        assert_eq!(ro.read_body(&ids[5]).unwrap(), body_of(&ids[5], 5000));
        assert!(ro.cached(&ids[5]).is_none());
        drop(ro);

        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan().unwrap(), ids[2..]);
        assert_eq!(spool.read_envelope(&ids[2]).unwrap(), updated);
        for id in &ids[3..] {
            assert!(spool.in_journal(id));
            assert!(spool.cached(id).is_none(), "replayed from disk, not memory");
            assert_eq!(spool.read_body(id).unwrap(), body_of(id, 5000));
            assert_eq!(spool.read_envelope(id).unwrap().queue_id, *id);
            spool.remove_finished(id).unwrap();
        }
        spool.remove_finished(&ids[2]).unwrap();
        spool.maintain_journal();
        assert!(spool.scan().unwrap().is_empty());
        assert!(
            journal_names(dir.path()).len() <= 1,
            "{:?}",
            journal_names(dir.path())
        );
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.scan().unwrap().is_empty());
        assert!(journal_names(dir.path()).is_empty());
    }

    #[test]
    fn a_torn_journal_tail_loses_only_the_unflushed_batch() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let first = journaled(&spool, 2, 3000);
        let second = journaled(&spool, 2, 3000);
        drop(spool);
        let names = journal_names(dir.path());
        assert_eq!(names.len(), 1);
        let seg = dir.path().join("journal").join(&names[0]);
        // The last record's end never written, as a crash inside its write leaves it.
        let mut bytes = fs::read(&seg).unwrap();
        let (header, env_len, body_len) = record_of(&bytes, &second[1]);
        let end = header + 48 + env_len + body_len;
        bytes[end - 10..end].fill(0);
        fs::write(&seg, &bytes).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan().unwrap(), vec![first[0], first[1], second[0]]);
        // New batches go to a new segment, never behind the torn record.
        let third = journaled(&spool, 1, 3000);
        assert_eq!(journal_names(dir.path()).len(), 2);
        drop(spool);

        // A flipped byte in a body fails its record's check: it and what follows are not read.
        let mut bytes = fs::read(&seg).unwrap();
        let (header, env_len, _) = record_of(&bytes, &second[0]);
        bytes[header + 48 + env_len + 100] ^= 0x55;
        fs::write(&seg, &bytes).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan().unwrap(), vec![first[0], first[1], third[0]]);
        for id in [first[0], first[1]] {
            assert_eq!(spool.read_body(&id).unwrap(), body_of(&id, 3000));
        }
    }

    #[test]
    fn old_journal_segments_are_retired_and_their_stragglers_moved() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        // 300 KB messages, one per batch: a new segment every few messages.
        let straggler = journaled(&spool, 1, 300_000)[0];
        let mut rest = Vec::new();
        for _ in 0..20 {
            rest.extend(journaled(&spool, 1, 300_000));
        }
        assert!(journal_names(dir.path()).len() >= 5);
        for id in &rest {
            spool.remove_finished(id).unwrap();
        }
        // The straggler holds its segment, and so every later one, until it is moved.
        spool.maintain_journal();
        assert!(!spool.in_journal(&straggler));
        assert!(spool.body_path(&straggler).exists());
        assert_eq!(journal_names(dir.path()).len(), 1);
        assert_eq!(spool.scan().unwrap(), vec![straggler]);
        assert_eq!(
            spool.read_body(&straggler).unwrap(),
            body_of(&straggler, 300_000)
        );
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan().unwrap(), vec![straggler]);
    }

    #[test]
    fn a_reused_segment_never_replays_its_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let spares = || -> HashSet<String> {
            dir_names(&dir.path().join("journal"))
                .into_iter()
                .filter(|n| n.ends_with(".spare"))
                .collect()
        };
        let mut old = Vec::new();
        for _ in 0..12 {
            old.extend(journaled(&spool, 1, 300_000));
        }
        for id in &old {
            spool.remove_finished(id).unwrap();
        }
        spool.maintain_journal();
        let kept = spares();
        assert_eq!(kept.len(), 2, "finished segments are kept for reuse");
        // New mail until a spare is taken: it gets one record of the same size as its old
        // ones, so the old records behind it start where a next record would, and the "done"
        // records that cancelled them are gone with the segment that held them.
        let mut new = Vec::new();
        while kept.is_subset(&spares()) {
            new.extend(journaled(&spool, 1, 300_000));
        }
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan().unwrap(), new);
        for id in &new {
            assert_eq!(spool.read_body(id).unwrap(), body_of(id, 300_000));
        }
    }

    #[test]
    fn a_message_finished_while_being_moved_does_not_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = journaled(&spool, 1, 100)[0];
        let journal = &spool.inner.journal;
        let claimed = journal.begin_move(&id).unwrap().unwrap();
        spool.remove_finished(&id).unwrap();
        spool.store(&id, &claimed.envelope, &claimed.body).unwrap();
        assert!(
            journal.end_move(&id, true),
            "the mover learns of the removal"
        );
        assert!(!spool.in_journal(&id));
        drop(spool);
        // The mover deletes its copy; even if it did not get to, the journal says "done".
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan().unwrap(), vec![id]);
        spool.remove(&id).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.scan().unwrap().is_empty());
    }

    const JOURNAL_CRASH_DIR_ENV: &str = "RELAYWARD_JOURNAL_CRASH_CHILD_DIR";

    /// The child side; does nothing in a normal test run.
    #[test]
    fn journal_crash_child() {
        let Some(dir) = std::env::var_os(JOURNAL_CRASH_DIR_ENV) else {
            return;
        };
        SLOW_MOTION.store(true, Ordering::Relaxed);
        let spool = Spool::open(dir).unwrap();
        let mut out = io::stdout().lock();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut round = 0u64;
        while Instant::now() < deadline {
            round += 1;
            let ids: Vec<QueueId> = (0..1 + round % 4).map(|_| spool.new_queue_id()).collect();
            spool
                .store_journaled(
                    ids.iter()
                        .map(|id| (*id, crash_envelope(id), Arc::new(crash_body(id))))
                        .collect(),
                )
                .unwrap();
            for id in &ids {
                writeln!(out, "\n{MARK}stored {id}").unwrap();
            }
            out.flush().unwrap();
            for id in &ids {
                if crash_will_update(id) {
                    spool.update_envelope(id, &crash_updated(id)).unwrap();
                    writeln!(out, "\n{MARK}updated {id}").unwrap();
                    out.flush().unwrap();
                }
                if crash_will_remove(id) {
                    spool.remove_finished(id).unwrap();
                    writeln!(out, "\n{MARK}removed {id}").unwrap();
                    out.flush().unwrap();
                }
            }
            if round.is_multiple_of(5) {
                spool.maintain_journal();
            }
        }
    }

    /// SIGKILL right after a batch is acknowledged loses none of it; what was finished does not
    /// come back; a replay is complete and consistent, kill after kill on the same spool.
    #[test]
    fn the_journal_survives_sigkill_at_random_points() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut stored = HashSet::new();
        let mut updated = HashSet::new();
        let mut removed = HashSet::new();
        for round in 0..12 {
            let mut child = Command::new(&exe)
                .args([
                    "spool::tests::journal_crash_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(JOURNAL_CRASH_DIR_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .collect::<Vec<String>>()
            });
            let delay = 20 + rand::random::<u64>() % 250;
            std::thread::sleep(Duration::from_millis(delay));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let mut this_round = 0;
            for line in reader.join().unwrap() {
                let Some(pos) = line.find(MARK) else { continue };
                let mut parts = line[pos + MARK.len()..].split(' ');
                let (Some(what), Some(Ok(id))) =
                    (parts.next(), parts.next().map(str::parse::<QueueId>))
                else {
                    continue; // line cut by the kill
                };
                match what {
                    "stored" => {
                        stored.insert(id);
                        this_round += 1;
                    }
                    "updated" => {
                        updated.insert(id);
                    }
                    "removed" => {
                        removed.insert(id);
                    }
                    _ => {}
                }
            }

            let spool = Spool::open(dir.path()).unwrap();
            let present = check_after_crash(&spool, round, &stored, &removed, &updated);
            eprintln!(
                "round {round}: killed after {delay} ms, {this_round} stored this round, {} in \
                 spool, {} journal segments",
                present.len(),
                journal_names(dir.path()).len()
            );
        }
        assert!(!stored.is_empty(), "child never stored anything");
    }

    /// `cargo test -p relayward-queue --release -- --ignored bench_store --nocapture`
    /// Runs next to the test binary (not in /tmp, which may be tmpfs) unless
    /// RELAYWARD_BENCH_DIR says otherwise.
    #[test]
    #[ignore]
    fn bench_store_5k() {
        let base = std::env::var_os("RELAYWARD_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::current_exe().unwrap().parent().unwrap().into());
        let dir = tempfile::tempdir_in(&base).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body: Vec<u8> = (0..5 * 1024).map(|i| b"abcdefghij\r\n"[i % 12]).collect();
        let n = 500;

        let mut times = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id = spool.new_queue_id();
            let mut env = envelope(id, 2);
            env.size = body.len() as u64;
            let t = Instant::now();
            spool.store(&id, &env, &body).unwrap();
            times.push(t.elapsed());
            ids.push(id);
        }
        times.sort();
        let total: Duration = times.iter().sum();
        eprintln!(
            "store 5 KiB in {}: mean {:?}, p50 {:?}, p99 {:?} ({} stores)",
            dir.path().display(),
            total / n as u32,
            times[n / 2],
            times[n * 99 / 100],
            n
        );

        let t = Instant::now();
        for id in &ids {
            let mut env = envelope(*id, 2);
            env.recipients[0].status = RecipientStatus::Delivered;
            spool.update_envelope(id, &env).unwrap();
        }
        eprintln!("update_envelope: mean {:?}", t.elapsed() / n as u32);

        let t = Instant::now();
        for id in &ids {
            spool.remove(id).unwrap();
        }
        eprintln!("remove: mean {:?}", t.elapsed() / n as u32);

        let threads = 8;
        let per_thread = n / threads;
        let t = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (spool, body) = (spool.clone(), body.clone());
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        let id = spool.new_queue_id();
                        spool.store(&id, &envelope(id, 2), &body).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let elapsed = t.elapsed();
        eprintln!(
            "store from {threads} threads: {:?} per message, {:.0} messages/s",
            elapsed / (threads * per_thread) as u32,
            (threads * per_thread) as f64 / elapsed.as_secs_f64()
        );

        let batch = 32;
        let ids: Vec<QueueId> = (0..n).map(|_| spool.new_queue_id()).collect();
        let envs: Vec<Envelope> = ids.iter().map(|id| envelope(*id, 2)).collect();
        let t = Instant::now();
        for (ids, envs) in ids.chunks(batch).zip(envs.chunks(batch)) {
            spool
                .store_many(ids.iter().zip(envs).map(|(id, e)| (id, e, &body)))
                .unwrap();
        }
        eprintln!(
            "store_many (batches of {batch}): mean {:?} per message",
            t.elapsed() / n as u32
        );

        // The same batches through the journal, alternating with store_many so that both see
        // the same disk.
        let body = Arc::new(body);
        for round in 0..2 {
            for batch in [1, 8, 32] {
                let mut files = Duration::ZERO;
                let mut journal = Duration::ZERO;
                for _ in 0..n / batch {
                    let ids: Vec<QueueId> = (0..batch).map(|_| spool.new_queue_id()).collect();
                    let envs: Vec<Envelope> = ids.iter().map(|id| envelope(*id, 2)).collect();
                    let t = Instant::now();
                    spool
                        .store_many(ids.iter().zip(&envs).map(|(id, e)| (id, e, &body[..])))
                        .unwrap();
                    files += t.elapsed();
                    let items = ids
                        .iter()
                        .map(|_| {
                            let id = spool.new_queue_id();
                            (id, envelope(id, 2), body.clone())
                        })
                        .collect();
                    let t = Instant::now();
                    spool.store_journaled(items).unwrap();
                    journal += t.elapsed();
                }
                let per = |d: Duration| d / (n / batch * batch) as u32;
                eprintln!(
                    "round {round}, batches of {batch}: message files {:?}, journal {:?} per message",
                    per(files),
                    per(journal)
                );
            }
        }
    }
}
