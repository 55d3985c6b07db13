//! Appending: one `writev` and one `fdatasync` per batch, rotating to a new segment, recording
//! finished messages, retiring old segments.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::sync::Arc;

use crate::spool::{QueueId, SpoolError};

use super::*;

impl Journal {
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
    pub(super) fn rotate(&self, writer: &mut Writer) -> Result<(), SpoolError> {
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
    pub(super) fn cut_back(&self, writer: &mut Writer) {
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

    pub(super) fn requeue_done(&self, done: Vec<QueueId>) {
        if !done.is_empty() {
            self.pending_done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(done);
        }
    }

    /// Writes the "done" records waiting; with `flush`, makes them durable too.
    pub(super) fn write_done(&self, writer: &mut Writer, flush: bool) -> Result<(), SpoolError> {
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

    pub(super) fn retire_into(&self, writer: &mut Writer) -> Result<(), SpoolError> {
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
}
