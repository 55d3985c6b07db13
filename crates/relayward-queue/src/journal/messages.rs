//! What the journal holds: lookups of envelopes and bodies, removal, and moving a message to a
//! message file of its own.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::spool::{Envelope, QueueId, SpoolError};

use super::*;

impl Journal {
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
    pub(super) fn locate(&self, id: &QueueId) -> Option<(u64, u64, u32, u64, Option<Cached>)> {
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

    pub(super) fn read_at(&self, seg: u64, offset: u64, len: usize) -> Result<Vec<u8>, SpoolError> {
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
