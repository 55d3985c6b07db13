//! The abuse detector in the running relay: the pure logic of `relayward_policy` (counters,
//! rules, state machine, sender limits, evidence) fed by accepted messages and delivery results,
//! and acted upon here.
//!
//! Per message (on the SMTP path, no I/O): [`Abuse::accepted`] counts it and evaluates the
//! tenant's rules. A transition changes the in-memory directory at once, so the very next
//! MAIL FROM gets the new reply (5.7.750, 5.7.705) without waiting for the store poll; then a
//! single worker, in order, writes it to the store with its evidence (one transaction), holds
//! the tenant's queued unregistered mail, and sends the alerts. Until the store has the
//! transition, directory reloads keep the in-memory state ([`Abuse::overlay`]).
//!
//! Per-sender limits are checked at MAIL FROM and RCPT TO ([`SenderGuard`]); a new
//! restriction is written to the store (it survives restarts) and alerted. The CLI changes
//! state, restrictions and limits in the store; [`Abuse::sync`] picks them up on the next
//! directory reload.

pub mod alerts;
pub mod auth;
pub mod dkim_check;
pub mod report;
mod reputation;
pub use reputation::reputation_from_store;
pub mod way_back;

mod alert_text;
mod holds;
mod persist;
mod senders;
mod signals;
mod sync;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use anyhow::Result;
use relayward_core::{
    reply, Address, ConnectorId, DirectoryData, Reply, SenderClass, TenantId, TenantState,
    TraceEvent, TraceKind,
};
use relayward_policy::counters::{
    classify_remote_reply, sender_key, Counters, DkimEvent, InProcessCounters, MessageEvent,
    RemoteReplyEvent, Snapshot, DAY_MS,
};
use relayward_policy::detector::{Cause, Detector, TenantStatus, Transition};
use relayward_policy::evidence::{ConnectorChange, Evidence};
use relayward_policy::limits::{SenderDecision, SenderLimiter, SenderLimits, SenderRestriction};
use relayward_policy::SharedDirectory;
use relayward_queue::{Scheduler, Spool};
use relayward_smtp::{IncomingMessage, SenderGuard};
use relayward_store::{NewSenderRestriction, NewTransition, Store, StoreError};
use serde_json::json;
use tokio::sync::{mpsc, Notify};

use crate::clock::Clock;
use crate::config::Config;
use crate::table::time_ms;
use alerts::{Alert, Alerts};

/// What the detector needs of an accepted message, taken before the message moves into the
/// spool.
#[derive(Debug, Clone)]
pub struct AcceptedMessage {
    pub tenant: TenantId,
    pub connector: ConnectorId,
    pub class: SenderClass,
    pub sender: Option<Address>,
    pub mismatch: bool,
    pub header_from_domain: Option<String>,
    pub recipients: Vec<Address>,
    pub client_ip: IpAddr,
    pub message_id: Option<String>,
    /// The message as received, for DKIM verification after the 250: kept only for
    /// unregistered, null-sender and mismatched mail that carries a signature.
    pub dkim_data: Option<Vec<u8>>,
}

impl AcceptedMessage {
    /// With `verify_dkim`, a copy of a suspect message that carries a DKIM signature.
    pub fn of(msg: &IncomingMessage, verify_dkim: bool) -> AcceptedMessage {
        let suspect = msg.sender_class != SenderClass::Registered || msg.header_from_mismatch;
        let dkim_data = (verify_dkim && suspect && dkim_check::has_signature(&msg.data))
            .then(|| msg.data.clone());
        AcceptedMessage {
            dkim_data,
            tenant: msg.tenant_id,
            connector: msg.connector_id,
            class: msg.sender_class,
            sender: msg.sender.clone(),
            mismatch: msg.header_from_mismatch,
            header_from_domain: msg.header_from_domain.clone(),
            recipients: msg.recipients.iter().map(|r| r.address.clone()).collect(),
            client_ip: msg.client_ip,
            message_id: msg.message_id.clone(),
        }
    }
}

/// A transition applied in memory that directory reloads must keep until the store has it.
struct Override {
    state: TenantState,
    /// The directory version that carries it, once written.
    version: Option<i64>,
}

/// A transition on its way to the store (kept on disk until it is there: `pending`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Job {
    transition: Transition,
    evidence: Evidence,
    /// The message that caused it, held by its own enqueue.
    exclude: Option<String>,
}

/// Background work in flight, so tests (and shutdown) can wait for it.
#[derive(Default)]
struct Tasks {
    running: AtomicUsize,
    idle: Notify,
}

impl Tasks {
    fn start(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    fn done(&self) {
        if self.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

pub struct Abuse {
    me: Weak<Abuse>,
    clock: Arc<dyn Clock>,
    counters: Arc<InProcessCounters>,
    detector: Detector,
    limiter: SenderLimiter,
    store: Arc<dyn Store>,
    directory: Arc<SharedDirectory>,
    spool: Arc<Spool>,
    scheduler: OnceLock<Arc<Scheduler>>,
    alerts: Alerts,
    statuses: RwLock<HashMap<TenantId, TenantStatus>>,
    overrides: Mutex<HashMap<TenantId, Override>>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Restrictions already written and alerted: (tenant, sender key, since).
    known_restrictions: Mutex<HashSet<(TenantId, String, i64)>>,
    /// Tenants with their own sender limits.
    limited_tenants: Mutex<HashSet<TenantId>>,
    tasks: Tasks,
    last_expire_ms: AtomicI64,
    /// DKIM verification of suspect mail (`[detector.dkim]`); `None` when off.
    dkim: Option<Arc<dkim_check::DkimCheck>>,
    /// Bounce and complaint rates (`[reputation]`).
    reputation: relayward_policy::reputation::Reputation,
    /// When the reputation counts were last written to the store (ms).
    last_reputation_write: AtomicI64,
    /// The cluster's Redis, to announce the changes this node makes (cluster mode only).
    cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    /// Transitions not in the store yet, on disk (`<data_dir>/transitions.pending`): the
    /// store may be unreachable for a while, and the process may be killed meanwhile.
    pending: crate::spill::Spill,
    /// The suppression lists: hard bounces and complaints add to them.
    suppressions: Arc<crate::suppression::Suppressions>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `(code, text after the code)` of a reply as traced (`"550 5.7.1 ..."`).
fn split_reply(reply: &str) -> Option<(u16, &str)> {
    let code: u16 = reply.get(..3)?.parse().ok()?;
    Some((code, reply[3..].trim_start_matches(['-', ' '])))
}

fn enum_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn enum_parse<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

impl Abuse {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        directory: Arc<SharedDirectory>,
        spool: Arc<Spool>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Abuse> {
        let counters = Arc::new(InProcessCounters::new(config.detector.counters_config()));
        let limiter = SenderLimiter::new(counters.clone(), config.default_sender_limits());
        let alerts = Alerts::new(
            config.alerts.clone(),
            config.alerts_from(),
            config.server.hostname.clone(),
            spool.clone(),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let dkim = if config.detector.dkim.enabled {
            match dkim_check::DkimCheck::new(&config.detector.dkim, config.delivery.dns_resolver) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    tracing::warn!(error = %e, "DKIM verification for the detector is off");
                    None
                }
            }
        } else {
            None
        };
        let suppressions = crate::suppression::Suppressions::new(
            store.clone(),
            config.reputation.suppression_days,
        );
        let abuse = Arc::new_cyclic(|me| Abuse {
            me: me.clone(),
            clock,
            counters,
            detector: Detector::new(config.detector.clone()),
            limiter,
            store,
            directory,
            spool,
            scheduler: OnceLock::new(),
            alerts,
            statuses: RwLock::new(HashMap::new()),
            overrides: Mutex::new(HashMap::new()),
            jobs: tx,
            known_restrictions: Mutex::new(HashSet::new()),
            limited_tenants: Mutex::new(HashSet::new()),
            tasks: Tasks::default(),
            last_expire_ms: AtomicI64::new(0),
            dkim,
            reputation: relayward_policy::reputation::Reputation::new(config.reputation.clone()),
            last_reputation_write: AtomicI64::new(0),
            cluster: OnceLock::new(),
            pending: crate::spill::Spill::new(
                config.server.data_dir.join("transitions.pending"),
                crate::serve::SPILL_MAX_BYTES,
            ),
            suppressions,
        });
        tokio::spawn(worker(Arc::downgrade(&abuse), rx));
        abuse
    }

    /// Needed for holds and alert emails; the scheduler is started after the detector.
    pub fn set_scheduler(&self, scheduler: Arc<Scheduler>) {
        self.alerts.set_scheduler(scheduler.clone());
        let _ = self.scheduler.set(scheduler);
    }

    /// Queues the transitions an earlier run could not write to the store (it ended while the
    /// store was unreachable). A transition the store has meanwhile (another node's, or this
    /// one's written just before the end) is found superseded and not alerted twice.
    pub fn replay_pending(&self) {
        let jobs: Vec<Job> = match self.pending.read() {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "pending transitions unreadable");
                return;
            }
        };
        // They stay in the file until each is done, in order, like new ones.
        for job in jobs {
            tracing::info!(tenant = job.transition.tenant.0, to = %job.transition.to, "transition of an earlier run written now");
            self.tasks.start();
            if self.jobs.send(job).is_err() {
                self.tasks.done();
            }
        }
    }

    /// In cluster mode: the link its changes are announced through.
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Tells the other nodes of a cluster that the directory is now at `version`.
    pub(crate) fn announce(&self, version: i64) {
        if let Some(c) = self.cluster.get() {
            c.announce(version);
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn counters(&self) -> &Arc<InProcessCounters> {
        &self.counters
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Sender restrictions standing now.
    pub fn restriction_count(&self) -> usize {
        self.counters.restriction_count(self.now_ms())
    }

    /// Whether accepted suspect mail is DKIM-verified (and so must be kept for it).
    pub fn verifies_dkim(&self) -> bool {
        self.dkim.is_some()
    }

    /// The per-sender limits in force for `tenant`.
    pub fn sender_limits(&self, tenant: TenantId) -> SenderLimits {
        self.limiter.limits_for(tenant)
    }

    /// The tenant's restriction status as the detector sees it.
    pub fn status(&self, tenant: TenantId) -> TenantStatus {
        if let Some(s) = self
            .statuses
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tenant)
        {
            return *s;
        }
        let state = self
            .directory
            .current()
            .tenant(tenant)
            .map(|t| t.state)
            .unwrap_or(TenantState::Active);
        TenantStatus {
            state,
            since_ms: 0,
            probation_until_ms: None,
        }
    }

    /// The tenant's mail leaves from the high-risk egress pool (relayward_queue::egress): it
    /// is under watch (warned, or on its way back from a block) or blocked, whose registered
    /// mail still flows.
    pub fn high_risk_routing(&self, tenant: TenantId) -> bool {
        matches!(
            self.status(tenant).state,
            TenantState::Warned
                | TenantState::Probation
                | TenantState::UnderReview
                | TenantState::BlockedUnregistered
                | TenantState::BlockedAll
        ) || self.reputation_high_risk(tenant)
    }

    fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(me) = self.me.upgrade() else { return };
        me.tasks.start();
        tokio::spawn(async move {
            f.await;
            me.tasks.done();
        });
    }

    /// Waits until the transitions and alerts started so far are done (webhook retries
    /// included).
    pub async fn idle(&self) {
        loop {
            let notified = self.tasks.idle.notified();
            if self.tasks.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Applies transitions to the store one at a time, in the order they were made.
async fn worker(me: Weak<Abuse>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        let Some(abuse) = me.upgrade() else { return };
        abuse.persist(job).await;
        abuse.tasks.done();
    }
}

impl SenderGuard for Abuse {
    fn check_mail(
        &self,
        tenant: TenantId,
        _connector: ConnectorId,
        sender: &Address,
    ) -> Result<(), Reply> {
        self.check_sender(tenant, sender, 0)
    }

    fn check_rcpt(
        &self,
        tenant: TenantId,
        _connector: ConnectorId,
        sender: &Address,
        _recipient: &Address,
        recipients: usize,
    ) -> Result<(), Reply> {
        self.check_sender(tenant, sender, recipients)
    }
}

/// Whose action a CLI transition is, for the store.
pub fn cause_text(c: &Cause) -> &'static str {
    match c {
        Cause::Detector => "detector",
        Cause::Tenant { .. } => "tenant",
        Cause::Operator { .. } => "operator",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_split() {
        assert_eq!(
            split_reply("550 5.7.1 Message rejected as spam"),
            Some((550, "5.7.1 Message rejected as spam"))
        );
        assert_eq!(split_reply("250-ok"), Some((250, "ok")));
        assert_eq!(split_reply("xx"), None);
        assert_eq!(
            classify_remote_reply(550, "", "5.7.1 Message rejected as spam"),
            relayward_policy::counters::RemoteClass::SpamBlock
        );
        assert_eq!(
            enum_text(&relayward_policy::limits::LimitAction::BlockForToday),
            "block_for_today"
        );
        assert_eq!(
            enum_parse::<relayward_policy::limits::Limit>("messages_per_minute"),
            Some(relayward_policy::limits::Limit::MessagesPerMinute)
        );
    }
}
