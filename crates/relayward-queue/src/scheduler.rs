//! The queue scheduler: decides which spooled message is attempted when, by how many workers, and
//! records every outcome in the spool before acting on it.
//!
//! State lives in two places. The spool envelope is the truth: each recipient's status, attempt
//! count, next attempt time and last reply, written with `update_envelope` before anything is done
//! that depends on it (a DSN sent, the message removed). In memory there is only an index: due
//! time -> message (a `BTreeMap`, so the next due message is found without scanning), which
//! messages are being worked on, and how many are in flight per destination. It is rebuilt from
//! `Spool::scan` at start.
//!
//! Crash safety: a DSN is stored (not yet submitted) before the recipients it reports on are
//! marked bounced; the message is removed only once every recipient is delivered or bounced. A
//! crash between steps repeats work (a recipient delivered twice, a second DSN) but never loses a
//! message or a recipient.
//!
//! One message is handled by one worker at a time; admin operations on a message that a worker
//! holds are queued and applied by that worker when its attempt ends.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relayward_core::{TraceEvent, TraceKind};
use tokio::sync::{oneshot, watch, Notify};

use crate::config::DeliveryConfig;
use crate::control::{
    self, apply_op, delay_marker, finish_message, remove_message, store_dsn, trace_event,
    ControlOp, DeliveryError, NOTICES_DIR,
};
use crate::dsn::{self, DsnAction, DsnRecipient};
use crate::egress::EgressRisk;
use crate::outbound::delivery::{OutboundMessage, RcptResult};
use crate::outbound::Outbound;
use crate::routing::Destination;
use crate::spool::{Envelope, QueueId, RecipientStatus, Spool, SpoolError};
use crate::throttle::{Admit, Throttle, ThrottleState};

/// Receives the delivery side of the message trace.
pub trait DeliveryEvents: Send + Sync {
    fn trace(&self, ev: TraceEvent);
}

/// Discards events.
pub struct NoEvents;

impl DeliveryEvents for NoEvents {
    fn trace(&self, _ev: TraceEvent) {}
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type OpReply = oneshot::Sender<Result<(), DeliveryError>>;

#[derive(Default)]
struct Entry {
    /// Position in `State::due`, when waiting for a worker.
    due: Option<i64>,
    /// Destination keys of the pending recipients, once known.
    dests: Option<Vec<String>>,
    running: bool,
    /// Waiting in `State::parked` for a destination slot; the due time it had.
    parked: Option<(String, i64)>,
    ops: Vec<(ControlOp, Option<OpReply>)>,
}

#[derive(Default)]
struct State {
    due: BTreeSet<(i64, QueueId)>,
    entries: HashMap<QueueId, Entry>,
    /// Messages in flight per destination key.
    active: HashMap<String, usize>,
    /// Messages due but waiting because their destination is at `max_per_destination`.
    parked: HashMap<String, VecDeque<QueueId>>,
    workers: usize,
}

impl State {
    fn schedule(&mut self, id: QueueId, at: i64) {
        let entry = self.entries.entry(id).or_default();
        if let Some(old) = entry.due.take() {
            self.due.remove(&(old, id));
        }
        entry.due = Some(at);
        self.due.insert((at, id));
    }

    /// Takes the message out of the due index or the parked lists.
    fn unschedule(&mut self, id: QueueId) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if let Some(old) = entry.due.take() {
            self.due.remove(&(old, id));
        }
        if let Some((dest, _)) = entry.parked.take() {
            if let Some(q) = self.parked.get_mut(&dest) {
                q.retain(|p| *p != id);
                if q.is_empty() {
                    self.parked.remove(&dest);
                }
            }
        }
    }

    fn saturated<'a>(
        &self,
        dests: &'a [String],
        limit: &dyn Fn(&str) -> usize,
    ) -> Option<&'a String> {
        dests
            .iter()
            .find(|d| self.active.get(*d).copied().unwrap_or(0) >= limit(d))
    }

    fn park(&mut self, id: QueueId, dest: String, due: i64) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.parked = Some((dest.clone(), due));
            self.parked.entry(dest).or_default().push_back(id);
        }
    }

    fn reserve(&mut self, dests: &[String]) {
        for d in dests {
            *self.active.entry(d.clone()).or_default() += 1;
        }
    }

    /// Frees the destination slots of a finished worker and reschedules messages parked on them.
    fn release(&mut self, dests: &[String], limit: &dyn Fn(&str) -> usize) {
        for d in dests {
            let remaining = match self.active.get_mut(d) {
                Some(n) => {
                    *n = n.saturating_sub(1);
                    *n
                }
                None => 0,
            };
            if remaining == 0 {
                self.active.remove(d);
            }
            let mut free = limit(d).saturating_sub(remaining);
            while free > 0 {
                let Some(q) = self.parked.get_mut(d) else {
                    break;
                };
                let Some(id) = q.pop_front() else {
                    self.parked.remove(d);
                    break;
                };
                if q.is_empty() {
                    self.parked.remove(d);
                }
                let due = match self.entries.get_mut(&id) {
                    Some(e) => match e.parked.take() {
                        Some((_, due)) => due,
                        None => continue,
                    },
                    None => continue,
                };
                self.schedule(id, due);
                free -= 1;
            }
        }
    }
}

/// How a worker left a message.
enum Finish {
    /// Gone from the spool.
    Removed,
    /// Next attempt at this time (ms); destinations of the pending recipients.
    Due(i64, Vec<String>),
    /// Held: no attempts until released.
    Held(Vec<String>),
    /// Not attempted: a destination is at its concurrency limit.
    Park(Vec<String>),
}

/// The outbound queue scheduler. Cheap to share (`Arc`).
pub struct Scheduler {
    spool: Arc<Spool>,
    config: Arc<DeliveryConfig>,
    events: Arc<dyn DeliveryEvents>,
    outbound: Outbound,
    /// Which tenants' mail leaves from the high-risk egress pool, asked at each attempt.
    egress_risk: Option<Arc<dyn EgressRisk>>,
    /// Per-provider slow-down after rate-limit and reputation replies.
    throttle: Throttle,
    state: Mutex<State>,
    wake: Notify,
    shutdown: watch::Receiver<bool>,
    stopped: watch::Sender<bool>,
    /// Control request files being applied right now.
    control_busy: Mutex<std::collections::HashSet<std::path::PathBuf>>,
}

impl Scheduler {
    /// Loads the spool's messages into the index, applies pending control requests and starts
    /// delivering. Runs until `shutdown` becomes true; [`Scheduler::stopped`] then resolves.
    /// `egress_risk`: the relay's view of its tenants' standing ([`crate::egress`]).
    pub fn start(
        spool: Arc<Spool>,
        config: DeliveryConfig,
        events: Arc<dyn DeliveryEvents>,
        egress_risk: Option<Arc<dyn EgressRisk>>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Scheduler> {
        let config = Arc::new(config);
        let outbound = Outbound::new(config.clone());
        let (stopped, _) = watch::channel(false);
        let throttle = Throttle::new(config.throttle.clone(), config.max_per_destination);
        let scheduler = Arc::new(Scheduler {
            spool,
            config,
            events,
            outbound,
            egress_risk,
            throttle,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            shutdown,
            stopped,
            control_busy: Mutex::default(),
        });
        tokio::spawn(scheduler.clone().run());
        scheduler
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// A newly accepted message (already in the spool): attempt it at once.
    pub fn submit(&self, id: QueueId) {
        {
            let mut st = self.lock();
            let known = st.entries.get(&id).map(|e| e.running || e.parked.is_some());
            match known {
                Some(true) => return,
                Some(false) => {
                    // Already indexed (e.g. by the start-up scan): just make it due now.
                    if st.entries.get(&id).and_then(|e| e.due).is_none() {
                        // Held: stays held.
                        return;
                    }
                    st.schedule(id, now_ms());
                }
                None => st.schedule(id, now_ms()),
            }
        }
        self.wake.notify_one();
    }

    /// Messages in the index (waiting, running or held).
    pub fn queued(&self) -> usize {
        self.lock().entries.len()
    }

    /// Messages being delivered right now.
    pub fn in_flight(&self) -> usize {
        self.lock().workers
    }

    /// Idle pooled outbound connections.
    pub fn idle_connections(&self) -> usize {
        self.outbound.pool.idle_count()
    }

    /// Resolves once the scheduler has stopped after shutdown (workers ended, idle connections
    /// closed).
    pub async fn stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub async fn retry_now(&self, id: QueueId) -> Result<(), DeliveryError> {
        self.control(id, ControlOp::RetryNow).await
    }

    pub async fn hold(&self, id: QueueId) -> Result<(), DeliveryError> {
        self.control(id, ControlOp::Hold).await
    }

    pub async fn release(&self, id: QueueId) -> Result<(), DeliveryError> {
        self.control(id, ControlOp::Release).await
    }

    pub async fn delete(&self, id: QueueId, send_dsn: bool) -> Result<(), DeliveryError> {
        self.control(id, ControlOp::Delete { send_dsn }).await
    }

    /// Applies an admin operation. If a worker is attempting the message right now, the operation
    /// is applied as soon as that attempt ends, and this waits for it.
    pub async fn control(&self, id: QueueId, op: ControlOp) -> Result<(), DeliveryError> {
        let waiter = {
            let mut st = self.lock();
            let entry = st.entries.entry(id).or_default();
            if entry.running {
                let (tx, rx) = oneshot::channel();
                entry.ops.push((op, Some(tx)));
                Some(rx)
            } else {
                entry.running = true;
                st.unschedule(id);
                None
            }
        };
        if let Some(rx) = waiter {
            return rx.await.unwrap_or(Err(DeliveryError::Stopped));
        }
        let result = self.apply(id, op).await;
        let finish = match &result {
            Ok(Some(env)) => self.finish_for(env),
            Ok(None) => Finish::Removed,
            Err(_) => {
                // Unknown id, or an I/O error: look at the spool again to decide.
                match self.spool.blocking(move |s| s.read_envelope(&id)).await {
                    Ok(env) => self.finish_for(&env),
                    Err(_) => Finish::Removed,
                }
            }
        };
        self.finish(id, None, finish).await;
        result.map(|_| ())
    }

    /// Applies `op` (the caller holds the message) and traces it. `Ok(None)`: message gone.
    async fn apply(&self, id: QueueId, op: ControlOp) -> Result<Option<Envelope>, DeliveryError> {
        let config = self.config.clone();
        let spool = self.spool.clone();
        let result = tokio::task::spawn_blocking(move || apply_op(&spool, &config, &id, op))
            .await
            .map_err(|e| DeliveryError::Spool(SpoolError::Task(e.to_string())))?;
        match result {
            Ok(r) => {
                for ev in r.events {
                    self.events.trace(ev);
                }
                if let Some(dsn) = r.dsn {
                    self.submit(dsn);
                }
                tracing::info!(queue_id = %id, %op, "admin operation applied");
                Ok(r.envelope)
            }
            Err(e) => {
                tracing::warn!(queue_id = %id, %op, error = %e, "admin operation failed");
                Err(e)
            }
        }
    }

    /// When the message described by `env` is next due.
    fn finish_for(&self, env: &Envelope) -> Finish {
        let dests = self.destinations(env);
        if env.held {
            return Finish::Held(dests);
        }
        let next = env
            .recipients
            .iter()
            .filter(|r| dsn::pending(r))
            .map(|r| r.next_attempt_at.saturating_mul(1000))
            .min();
        match next {
            Some(at) => Finish::Due(at, dests),
            None => Finish::Due(now_ms(), dests),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Concurrent deliveries allowed to a destination key: `max_per_destination`, less while
    /// its provider is throttled.
    fn limit_of(&self, dest: &str) -> usize {
        self.throttle.concurrency(dest, now_ms())
    }

    /// Destination keys of the recipients still to be delivered.
    fn destinations(&self, env: &Envelope) -> Vec<String> {
        let mut keys: Vec<String> = env
            .recipients
            .iter()
            .filter(|r| dsn::pending(r))
            .map(|r| Destination::for_recipient(&self.config, env.tenant_id, &r.address).key())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    async fn run(self: Arc<Self>) {
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
    async fn load(&self) -> Result<(), SpoolError> {
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
    fn dispatch(self: &Arc<Self>) -> Option<i64> {
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
    async fn finish(&self, id: QueueId, reserved: Option<Vec<String>>, mut finish: Finish) {
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

    /// One delivery attempt of every pending recipient of `id`. Returns how it left the message
    /// and the destination slots it holds.
    async fn attempt(
        self: &Arc<Self>,
        id: QueueId,
        reserved: Option<Vec<String>>,
    ) -> (Finish, Option<Vec<String>>) {
        // Kept in memory since the 250 when there was room: no read back, no blocking thread.
        let loaded = match self.spool.cached(&id) {
            Some(message) => Ok(message),
            None => {
                self.spool
                    .blocking(move |s| Ok((s.read_envelope(&id)?, Arc::new(s.read_body(&id)?))))
                    .await
            }
        };
        let (mut env, body) = match loaded {
            Ok(x) => x,
            Err(SpoolError::NotFound(_)) => {
                return (Finish::Removed, reserved.or(Some(Vec::new())));
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read spooled message; retrying in a minute");
                return (
                    Finish::Due(now_ms() + 60_000, Vec::new()),
                    reserved.or(Some(Vec::new())),
                );
            }
        };
        let dests = self.destinations(&env);
        let reserved = match reserved {
            Some(r) => r,
            None => {
                let mut st = self.lock();
                if st.saturated(&dests, &|d| self.limit_of(d)).is_some() {
                    drop(st);
                    return (Finish::Park(dests), Some(Vec::new()));
                }
                if let Admit::At(at, _) = self.throttle.admit(&dests, now_ms()) {
                    drop(st);
                    return (Finish::Due(at, dests), Some(Vec::new()));
                }
                st.reserve(&dests);
                dests.clone()
            }
        };
        if env.held {
            return (Finish::Held(dests), Some(reserved));
        }
        let finish = self.deliver(&mut env, &body).await;
        (finish, Some(reserved))
    }

    /// Attempts the pending recipients, then persists and acts on the outcome.
    async fn deliver(self: &Arc<Self>, env: &mut Envelope, body: &Arc<Vec<u8>>) -> Finish {
        let id = env.queue_id;
        // A message whose recipients are held but that is not (an interrupted release).
        for r in &mut env.recipients {
            if r.status == RecipientStatus::Held {
                r.status = RecipientStatus::Queued;
            }
        }
        let mut groups: Vec<(Destination, Vec<usize>)> = Vec::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if !dsn::pending(r) {
                continue;
            }
            let dest = Destination::for_recipient(&self.config, env.tenant_id, &r.address);
            match groups.iter_mut().find(|(d, _)| *d == dest) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((dest, vec![i])),
            }
        }
        if groups.is_empty() {
            let spool = self.spool.clone();
            let _ = spool.blocking(move |s| remove_message(s, &id)).await;
            return Finish::Removed;
        }

        // Chosen now, not at acceptance: the tenant's standing may have changed meanwhile.
        let egress = crate::egress::choose(&self.config, env, self.egress_risk.as_deref());
        let mut results: Vec<(usize, RcptResult)> = Vec::new();
        // Recipient index -> the throttle its attempt put on the destination, for the trace.
        let mut throttled: HashMap<usize, ThrottleState> = HashMap::new();
        for (dest, idx) in &groups {
            let rcpts: Vec<&str> = idx
                .iter()
                .map(|&i| env.recipients[i].address.as_str())
                .collect();
            let msg = OutboundMessage::new(&env.sender, &rcpts, body, env.smtputf8);
            let outcome = self
                .outbound
                .deliver(dest, egress.as_ref(), &msg, &rcpts)
                .await;
            if let Some(state) = self.observe(dest, &outcome) {
                throttled.extend(idx.iter().map(|&i| (i, state.clone())));
            }
            results.extend(idx.iter().copied().zip(outcome));
        }

        let now = relayward_core::now();
        let t_ms = now_ms();
        let received_ms = env.received_at.saturating_mul(1000);
        let expires_ms = received_ms.saturating_add(self.config.max_lifetime.as_millis() as i64);
        let expires = expires_ms / 1000;
        let expired = t_ms >= expires_ms;
        let max_attempts = results
            .iter()
            .map(|(i, _)| env.recipients[*i].attempts + 1)
            .max()
            .unwrap_or(1);
        // Never later than the expiry, so that a message is bounced when its lifetime ends, not
        // up to one retry interval after.
        let next_ms = (t_ms + self.config.retry_delay(max_attempts).as_millis() as i64)
            .min(expires_ms.max(t_ms + 1000));
        let next_secs = (next_ms + 999) / 1000;

        let mut events = Vec::new();
        let mut failed: Vec<DsnRecipient> = Vec::new();
        let mut delayed: Vec<DsnRecipient> = Vec::new();
        let mut delivered: Vec<DsnRecipient> = Vec::new();
        for (i, result) in &results {
            let r = &mut env.recipients[*i];
            r.attempts += 1;
            r.last_reply = Some(result.reply().to_string());
            let entry =
                |action: DsnAction, status: &str, r: &crate::spool::Recipient| DsnRecipient {
                    address: r.address.clone(),
                    orcpt: r.orcpt.clone(),
                    action,
                    status: status.to_string(),
                    remote_mta: result.remote().map(str::to_string),
                    diagnostic: Some(result.reply().to_string()),
                    last_attempt: now,
                    will_retry_until: (action == DsnAction::Delayed).then_some(expires),
                };
            match result {
                RcptResult::Delivered { reply, .. } => {
                    r.status = RecipientStatus::Delivered;
                    let status = dsn::status_of_reply(reply)
                        .filter(|s| s.starts_with('2'))
                        .unwrap_or_else(|| "2.0.0".into());
                    delivered.push(entry(DsnAction::Delivered, &status, r));
                }
                RcptResult::Failed { status, .. } => {
                    r.status = RecipientStatus::Bounced;
                    failed.push(entry(DsnAction::Failed, status, r));
                }
                RcptResult::Deferred { status, .. } => {
                    if expired {
                        r.status = RecipientStatus::Bounced;
                        let mut e = entry(DsnAction::Failed, "4.4.7", r);
                        if result.remote().is_none() {
                            e.diagnostic = Some(format!(
                                "delivery time expired; last error: {}",
                                result.reply()
                            ));
                        }
                        failed.push(e);
                    } else {
                        r.status = RecipientStatus::Deferred;
                        r.next_attempt_at = next_secs;
                        delayed.push(entry(DsnAction::Delayed, status, r));
                    }
                }
            }
        }
        for (i, result) in &results {
            let r = &env.recipients[*i];
            let mut ev = trace_event(TraceKind::Attempt, env, Some(&r.address));
            ev.reply = Some(result.reply().to_string());
            ev.detail = result.attempt_detail();
            if let Some(state) = throttled.get(i) {
                ev.detail = Some(match ev.detail.take() {
                    Some(d) => format!("{d}; {state}"),
                    None => state.to_string(),
                });
            }
            events.push(ev);
            let (kind, detail) = match (result, r.status) {
                (RcptResult::Delivered { remote, .. }, _) => {
                    (TraceKind::Delivered, Some(format!("remote host {remote}")))
                }
                (RcptResult::Failed { .. }, _) => (TraceKind::Bounced, None),
                (RcptResult::Deferred { .. }, RecipientStatus::Bounced) => (
                    TraceKind::Bounced,
                    Some("4.4.7 delivery time expired".to_string()),
                ),
                (RcptResult::Deferred { .. }, _) => (
                    TraceKind::Deferred,
                    Some(format!("next attempt in {}s", (next_ms - t_ms) / 1000)),
                ),
            };
            let mut ev = trace_event(kind, env, Some(&r.address));
            ev.reply = Some(result.reply().to_string());
            ev.detail = detail;
            events.push(ev);
        }

        // Delay notice: once per message, the first time an attempt fails after delay_warning
        // (the marker file, checked below, says whether it was sent already).
        let warn_delay = match self.config.delay_warning {
            Some(w) => !delayed.is_empty() && t_ms >= received_ms + w.as_millis() as i64,
            None => false,
        };
        if !warn_delay {
            delayed.clear();
        }

        let all_final = env.recipients.iter().all(|r| r.status.is_final());
        let notice_due = [&failed, &delayed, &delivered]
            .iter()
            .any(|entries| entries.iter().any(|e| control::notice_wanted(env, e)));
        if all_final && !notice_due && self.spool.in_journal(&id) {
            // The common end: nothing to store, and the journal records the removal without a
            // flush or a blocking call.
            if let Err(e) = self.spool.remove_finished(&id) {
                tracing::error!(queue_id = %id, error = %e, "cannot record delivery outcome; will retry");
                for ev in events {
                    self.events.trace(ev);
                }
                return Finish::Due(now_ms() + 60_000, Vec::new());
            }
            for ev in events {
                self.events.trace(ev);
            }
            return Finish::Removed;
        }
        let spool = self.spool.clone();
        let config = self.config.clone();
        let snapshot = env.clone();
        let body = body.clone();
        let persisted = spool
            .blocking(move |s| {
                let mut delayed = delayed;
                // DSNs first (stored, not yet sent), then the state they report on.
                let mut dsns = Vec::new();
                if !delayed.is_empty() && delay_marker(s.root(), &id).exists() {
                    delayed.clear();
                }
                for entries in [&failed, &delayed, &delivered] {
                    if entries.is_empty() {
                        continue;
                    }
                    match store_dsn(s, &config, &snapshot, &body, entries) {
                        Ok(Some(d)) => dsns.push((d, entries[0].action)),
                        Ok(None) => {}
                        Err(DeliveryError::Spool(e)) => return Err(e),
                        Err(e) => tracing::error!(queue_id = %id, error = %e, "DSN not built"),
                    }
                }
                if !delayed.is_empty() {
                    let marker = delay_marker(s.root(), &id);
                    if let Err(e) = fs::write(&marker, b"") {
                        tracing::warn!(path = %marker.display(), error = %e, "cannot record delay notice");
                    }
                }
                if all_final {
                    finish_message(s, &id)?;
                } else {
                    s.update_envelope(&id, &snapshot)?;
                }
                Ok(dsns)
            })
            .await;
        let dsns = match persisted {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot record delivery outcome; will retry");
                for ev in events {
                    self.events.trace(ev);
                }
                return Finish::Due(now_ms() + 60_000, Vec::new());
            }
        };
        for ev in events {
            self.events.trace(ev);
        }
        for ((dsn_id, to), action) in dsns {
            let mut ev = trace_event(TraceKind::DsnSent, env, Some(&to));
            ev.detail = Some(format!("dsn {dsn_id}: {}", action.as_str()));
            self.events.trace(ev);
            self.submit(dsn_id);
        }
        if all_final {
            Finish::Removed
        } else {
            Finish::Due(next_ms, self.destinations(env))
        }
    }

    /// Learns which provider answered for `dest`, and slows it down when it asked for that
    /// (a rate-limit or reputation reply). At most one halving per attempt.
    fn observe(&self, dest: &Destination, outcome: &[RcptResult]) -> Option<ThrottleState> {
        let key = dest.key();
        let classifier = relayward_policy::bounce::BounceClassifier::current();
        let mut host = None;
        for r in outcome {
            let Some(remote) = r.remote() else { continue };
            host = Some(remote);
            if matches!(r, RcptResult::Delivered { .. }) {
                continue;
            }
            if classifier
                .classify_reply(r.reply())
                .class
                .slows_destination()
            {
                return Some(self.throttle.slow_down(&key, remote, r.reply(), now_ms()));
            }
        }
        if let Some(host) = host {
            self.throttle.learn(&key, host);
        }
        None
    }

    /// Applies requests found in the control directory. Requests for one message run in order;
    /// a request file is deleted only once its operation was applied. With `wait`, returns when
    /// all are done (at start, before anything is dispatched); otherwise the requests for a
    /// message that a worker holds are left to finish in the background, so they do not hold up
    /// requests for other messages.
    async fn poll_control(self: &Arc<Self>, wait: bool) {
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

    async fn control_loop(self: Arc<Self>) {
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

    async fn pool_reaper(self: Arc<Self>) {
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
