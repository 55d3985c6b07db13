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
//!
//! `state` is the in-memory index, `run` the dispatch loop and the background tasks (control
//! requests, idle-connection reaping), `deliver` one attempt of a message.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use relayward_core::TraceEvent;
use tokio::sync::{oneshot, watch, Notify};

use crate::config::DeliveryConfig;
use crate::control::{apply_op, ControlOp, DeliveryError};
use crate::dsn;
use crate::egress::EgressRisk;
use crate::outbound::Outbound;
use crate::routing::Destination;
use crate::spool::{Envelope, QueueId, Spool, SpoolError};
use crate::throttle::Throttle;

mod deliver;
mod run;
mod state;

use state::{Finish, State};

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
}
