//! Group commit for accepted messages. One writer thread takes every message waiting to be
//! stored, appends them all to the spool's journal and flushes it once
//! ([`Spool::store_journaled`]); then each SMTP session learns that its message is durable and
//! may answer 250. While a flush runs, the next batch gathers, so the flushes carry as many
//! messages as arrive during one: a batch shares its flush and its thread wake-ups. The same
//! thread looks after the journal between batches ([`Spool::maintain_journal`]).
//!
//! One writer is enough: a batch costs one `fdatasync` however many messages it carries, and a
//! second writer would only contend for the same file system journal. (With one file and one
//! directory flush per message, 4 writers had moved 19 % more mail than 1; see
//! bench/RESULTS.md.)

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::spool::{Envelope, QueueId, Spool, SpoolError};

/// Messages written and flushed together at most; bounds the wait of the first.
const MAX_BATCH: usize = 64;
/// How often an idle writer looks after the journal.
const IDLE_MAINTENANCE: Duration = Duration::from_secs(1);

struct Request {
    id: QueueId,
    envelope: Envelope,
    body: Arc<Vec<u8>>,
    done: oneshot::Sender<Result<(), CommitError>>,
}

/// Why a message could not be stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The spool's file system is full: nothing was kept; retry when space returns.
    #[error("insufficient storage: {0}")]
    StorageFull(String),
    #[error("{0}")]
    Failed(String),
}

impl From<&SpoolError> for CommitError {
    fn from(e: &SpoolError) -> Self {
        if e.is_storage_full() {
            CommitError::StorageFull(e.to_string())
        } else {
            CommitError::Failed(e.to_string())
        }
    }
}

pub struct GroupCommitter {
    tx: mpsc::Sender<Request>,
}

impl GroupCommitter {
    pub fn start(spool: Arc<Spool>) -> std::io::Result<GroupCommitter> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("spool-commit".to_string())
            .spawn(move || run(&spool, &rx))?;
        Ok(GroupCommitter { tx })
    }

    /// Returns once the message is on disk and flushed (or with the reason it is not).
    pub async fn store(
        &self,
        id: QueueId,
        envelope: Envelope,
        body: Vec<u8>,
    ) -> Result<(), CommitError> {
        let started = std::time::Instant::now();
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request {
                id,
                envelope,
                body: Arc::new(body),
                done,
            })
            .map_err(|_| CommitError::Failed("spool writer stopped".to_string()))?;
        let result = wait
            .await
            .unwrap_or_else(|_| Err(CommitError::Failed("spool writer stopped".to_string())));
        // From the hand-off to the flush that made it durable: what a 250 waits for.
        metrics::histogram!("relayward_spool_commit_seconds").record(started.elapsed());
        result
    }
}

fn run(spool: &Spool, rx: &mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut done = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = match rx.recv_timeout(IDLE_MAINTENANCE) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                spool.maintain_journal();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        metrics::histogram!("relayward_spool_commit_batch_messages").record(batch.len() as f64);
        let mut items = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            // A message that cannot be stored must not fail the rest of its batch.
            match spool.check_new(&r.id, &r.envelope) {
                Ok(()) => {
                    items.push((r.id, r.envelope, r.body));
                    done.push(r.done);
                }
                Err(e) => {
                    let _ = r.done.send(Err(CommitError::from(&e)));
                }
            }
        }
        if items.is_empty() {
            continue;
        }
        let result = spool.store_journaled(items);
        // Writing the batch and flushing it.
        metrics::histogram!("relayward_spool_write_fsync_seconds").record(started.elapsed());
        let result = result.map_err(|e| CommitError::from(&e));
        if result.is_err() {
            metrics::counter!("relayward_spool_commit_failures_total").increment(1);
        }
        for d in done.drain(..) {
            let _ = d.send(result.clone());
        }
        spool.maintain_journal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: QueueId) -> Envelope {
        let mut e: Envelope = serde_json::from_value(serde_json::json!({
            "queue_id": id.to_string(), "received_at": 0, "client_ip": "127.0.0.1",
            "helo": "h", "sender": "a@b.example", "sender_class": "registered", "size": 5,
            "recipients": []
        }))
        .unwrap();
        e.queue_id = id;
        e
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_stores_are_all_durable_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let gc = Arc::new(GroupCommitter::start(spool.clone()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let gc = gc.clone();
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let id = spool.new_queue_id();
                gc.store(id, envelope(id), format!("body {i}").into_bytes())
                    .await
                    .unwrap();
                id
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        let reopened = Spool::open_read_only(dir.path()).unwrap();
        assert_eq!(reopened.scan().unwrap().len(), 200);
        for id in ids {
            assert!(reopened.read_body(&id).unwrap().starts_with(b"body "));
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_to_its_caller() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let gc = GroupCommitter::start(spool.clone()).unwrap();
        let id = spool.new_queue_id();
        gc.store(id, envelope(id), b"x".to_vec()).await.unwrap();
        // the same id again: refused, nothing overwritten
        assert!(gc.store(id, envelope(id), b"y".to_vec()).await.is_err());
        assert_eq!(spool.read_body(&id).unwrap(), b"x");
    }
}
