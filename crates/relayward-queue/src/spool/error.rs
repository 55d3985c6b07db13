//! Errors of the spool.

use std::io;
use std::path::{Path, PathBuf};

use super::QueueId;

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

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn corrupt(path: &Path, reason: impl Into<String>) -> SpoolError {
    SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
