//! The dispatch loop: loading the spool at start, handing due messages to workers, recording
//! how they left them; and the background tasks beside it.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use crate::control::{self, remove_message, DeliveryError, NOTICES_DIR};
use crate::spool::{QueueId, SpoolError};
use crate::throttle::Admit;

use super::state::Finish;
use super::{now_ms, Scheduler};

impl Scheduler {
    pub(super) async fn run(self: Arc<Self>) {
        if let Err(e) = self.load().await {
            tracing::error!(error = %e, "cannot load the spool into the scheduler");
        }
        self.poll_control(true).await;
        tokio::spawn(self.clone().control_loop());
        tokio::spawn(self.clone().pool_reaper());

        let mut shutdown = self.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let next = self.dispatch();
            let sleep = match next {
                Some(at) => Duration::from_millis((at - now_ms()).clamp(1, 3_600_000) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                r = shutdown.changed() => {
                    if r.is_err() {
                        // The sender is gone: nobody can ever stop us; keep running.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
        // Workers see the same shutdown signal and give up their attempts.
        loop {
            if self.lock().workers == 0 {
                break;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        self.outbound.close_idle().await;
        tracing::info!("queue scheduler stopped");
        // `send` would fail (and not store the value) while nobody is subscribed yet: a
        // `stopped()` called after this point would then wait forever.
        self.stopped.send_replace(true);
    }

    /// Rebuilds the index from the spool.
    pub(super) async fn load(&self) -> Result<(), SpoolError> {
        let root = self.spool.root().to_path_buf();
        let _ = fs::create_dir_all(root.join(NOTICES_DIR));
        let _ = fs::create_dir_all(control::control_dir(&root));
        let loaded = self
            .spool
            .blocking(move |spool| {
                let ids = spool.scan()?;
                let mut out = Vec::with_capacity(ids.len());
                for id in &ids {
                    match spool.read_envelope(id) {
                        Ok(env) => out.push(env),
                        Err(SpoolError::NotFound(_)) => {}
                        Err(e) => tracing::error!(queue_id = %id, error = %e, "unreadable spooled message skipped"),
                    }
                }
                // Delay markers of messages that are gone.
                if let Ok(dir) = fs::read_dir(spool.root().join(NOTICES_DIR)) {
                    let live: std::collections::HashSet<&str> =
                        ids.iter().map(QueueId::as_str).collect();
                    for entry in dir.flatten() {
                        let name = entry.file_name();
                        if !live.contains(name.to_str().unwrap_or("")) {
                            let _ = fs::remove_file(entry.path());
                        }
                    }
                }
                Ok(out)
            })
            .await?;
        let mut finished = Vec::new();
        let count = loaded.len();
        {
            let mut st = self.lock();
            for env in loaded {
                let id = env.queue_id;
                if st.entries.contains_key(&id) {
                    continue; // submitted meanwhile
                }
                if env.recipients.iter().all(|r| r.status.is_final()) {
                    finished.push(id);
                    continue;
                }
                let finish = self.finish_for(&env);
                let entry = st.entries.entry(id).or_default();
                match finish {
                    Finish::Held(dests) => entry.dests = Some(dests),
                    Finish::Due(at, dests) => {
                        entry.dests = Some(dests);
                        st.schedule(id, at);
                    }
                    _ => {}
                }
            }
        }
        // A crash after the last recipient's final state was written but before removal.
        for id in finished {
            let _ = self
                .spool
                .blocking(move |s| remove_message(s, &id).or(Ok(())))
                .await;
        }
        tracing::info!(messages = count, "queue scheduler loaded the spool");
        Ok(())
    }

    /// Starts workers for due messages; returns when the next message is due.
    pub(super) fn dispatch(self: &Arc<Self>) -> Option<i64> {
        let limit = |d: &str| self.limit_of(d);
        let max_workers = self.config.max_workers.max(1);
        let mut spawn = Vec::new();
        let next = {
            let mut st = self.lock();
            let now = now_ms();
            loop {
                if st.workers >= max_workers {
                    break None;
                }
                let Some(&(due, id)) = st.due.first() else {
                    break None;
                };
                if due > now {
                    break Some(due);
                }
                st.due.pop_first();
                let dests = match st.entries.get_mut(&id) {
                    Some(entry) => {
                        entry.due = None;
                        entry.dests.clone()
                    }
                    None => continue,
                };
                if let Some(dests) = &dests {
                    if let Some(full) = st.saturated(dests, &limit).cloned() {
                        st.park(id, full, due);
                        continue;
                    }
                    if let Admit::At(at, _) = self.throttle.admit(dests, now) {
                        st.schedule(id, at);
                        continue;
                    }
                    st.reserve(dests);
                }
                if let Some(entry) = st.entries.get_mut(&id) {
                    entry.running = true;
                }
                st.workers += 1;
                spawn.push((id, dests));
            }
        };
        for (id, reserved) in spawn {
            let this = self.clone();
            tokio::spawn(async move {
                let mut shutdown = this.shutdown.clone();
                // A task of its own, so that a panic ends one attempt, not the bookkeeping.
                let worker = this.clone();
                let held = reserved.clone();
                let mut attempt = tokio::spawn(async move { worker.attempt(id, held).await });
                let (finish, reserved) = tokio::select! {
                    r = &mut attempt => match r {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(queue_id = %id, error = %e, "delivery attempt failed; retrying in a minute");
                            (Finish::Due(now_ms() + 60_000, Vec::new()), Some(reserved.unwrap_or_default()))
                        }
                    },
                    _ = shutdown.wait_for(|s| *s) => {
                        // Whatever was not recorded yet is attempted again after the restart.
                        attempt.abort();
                        (Finish::Due(now_ms(), Vec::new()), Some(reserved.unwrap_or_default()))
                    }
                };
                this.finish(id, reserved, finish).await;
            });
        }
        next
    }

    /// Applies queued admin operations, then records how the worker left the message and frees
    /// its slots.
    pub(super) async fn finish(
        &self,
        id: QueueId,
        reserved: Option<Vec<String>>,
        mut finish: Finish,
    ) {
        let limit = |d: &str| self.limit_of(d);
        loop {
            let ops = {
                let mut st = self.lock();
                match st.entries.get_mut(&id) {
                    Some(e) if !e.ops.is_empty() => std::mem::take(&mut e.ops),
                    _ => Vec::new(),
                }
            };
            if ops.is_empty() {
                break;
            }
            for (op, reply) in ops {
                if matches!(finish, Finish::Removed) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(DeliveryError::Spool(SpoolError::NotFound(id))));
                    }
                    continue;
                }
                let result = self.apply(id, op).await;
                finish = match &result {
                    Ok(Some(env)) => self.finish_for(env),
                    Ok(None) => Finish::Removed,
                    Err(_) => finish,
                };
                if let Some(reply) = reply {
                    let _ = reply.send(result.map(|_| ()));
                }
            }
        }
        {
            let mut st = self.lock();
            // `Some`: a dispatched worker (counted in `workers`), with the slots it holds.
            if let Some(dests) = &reserved {
                st.release(dests, &limit);
                st.workers = st.workers.saturating_sub(1);
            }
            match finish {
                Finish::Removed => {
                    st.entries.remove(&id);
                }
                Finish::Held(dests) => {
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.running = false;
                        e.dests = Some(dests);
                    }
                }
                Finish::Due(at, dests) => {
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.running = false;
                        if !dests.is_empty() {
                            e.dests = Some(dests);
                        }
                    }
                    st.schedule(id, at);
                }
                Finish::Park(dests) => {
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.running = false;
                        e.dests = Some(dests.clone());
                    }
                    match st.saturated(&dests, &limit).cloned() {
                        Some(full) => st.park(id, full, now_ms()),
                        None => st.schedule(id, now_ms()),
                    }
                }
            }
        }
        self.wake.notify_one();
    }

    /// Applies requests found in the control directory. Requests for one message run in order;
    /// a request file is deleted only once its operation was applied. With `wait`, returns when
    /// all are done (at start, before anything is dispatched); otherwise the requests for a
    /// message that a worker holds are left to finish in the background, so they do not hold up
    /// requests for other messages.
    pub(super) async fn poll_control(self: &Arc<Self>, wait: bool) {
        let root = self.spool.root().to_path_buf();
        let requests =
            match tokio::task::spawn_blocking(move || control::pending_requests(&root)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read control requests");
                    return;
                }
                Err(_) => return,
            };
        let mut by_id: Vec<(QueueId, Vec<control::ControlRequest>)> = Vec::new();
        {
            let mut busy = self.control_busy.lock().unwrap_or_else(|e| e.into_inner());
            for req in requests {
                if !busy.insert(req.path.clone()) {
                    continue; // still being applied from an earlier poll
                }
                match by_id.iter_mut().find(|(id, _)| *id == req.id) {
                    Some((_, reqs)) => reqs.push(req),
                    None => by_id.push((req.id, vec![req])),
                }
            }
        }
        let mut tasks = Vec::new();
        for (_, reqs) in by_id {
            let this = self.clone();
            tasks.push(tokio::spawn(async move {
                for req in reqs {
                    match this.control(req.id, req.op).await {
                        Ok(()) => {}
                        Err(DeliveryError::Spool(SpoolError::NotFound(_))) => {
                            tracing::warn!(queue_id = %req.id, op = %req.op, "control request for a message not in the queue");
                        }
                        Err(DeliveryError::Stopped) => return,
                        Err(e) => {
                            tracing::warn!(queue_id = %req.id, op = %req.op, error = %e, "control request failed");
                        }
                    }
                    let _ = fs::remove_file(&req.path);
                    this.control_busy
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&req.path);
                }
            }));
        }
        if wait {
            for t in tasks {
                let _ = t.await;
            }
        }
    }

    pub(super) async fn control_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let period = self
            .config
            .control_poll_interval
            .max(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            self.poll_control(false).await;
        }
    }

    pub(super) async fn pool_reaper(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let idle = self.config.idle_connection_timeout;
        let period = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            for conn in self.outbound.pool.expire(idle) {
                tokio::spawn(conn.quit());
            }
        }
    }
}
