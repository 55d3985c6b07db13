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

/// A transition on its way to the store.
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

    // -----------------------------------------------------------------------------------------
    // Signals in

    /// An accepted message, durable in the spool: count it and evaluate its tenant. Returns
    /// true when the message must be held rather than delivered (its tenant is blocked for
    /// its sender class: it raced the block, or it caused it).
    pub fn accepted(&self, m: &AcceptedMessage, queue_id: &str) -> bool {
        let now = self.now_ms();
        let dir = self.directory.current();
        let external = m
            .recipients
            .iter()
            .filter(|r| !dir.is_registered(m.tenant, &r.domain))
            .count();
        let snap = self.counters.record(
            now,
            &MessageEvent {
                tenant: m.tenant,
                connector: m.connector,
                class: m.class,
                sender: m.sender.as_ref(),
                mismatch: m.mismatch,
                header_from_domain: m.header_from_domain.as_deref(),
                recipients: &m.recipients,
                external_recipients: external as u32,
                client_ip: Some(m.client_ip),
                queue_id: Some(queue_id),
                message_id: m.message_id.as_deref(),
            },
        );
        self.consider(now, m.tenant, &snap, Some(queue_id));
        let effective = relayward_policy::counters::effective_class(m.class, m.mismatch);
        if effective != SenderClass::Registered {
            self.check_dkim(m);
        }
        let state = self.status(m.tenant).state;
        state.blocks_all() || (effective != SenderClass::Registered && state.blocks_unregistered())
    }

    /// Verifies a suspect message's DKIM signatures off the SMTP path, or counts it as not
    /// verified at once when it has none (or the queue is full).
    fn check_dkim(&self, m: &AcceptedMessage) {
        // The domain the message was counted under: P2 of a mismatch, else P1.
        let counted = if m.mismatch {
            m.header_from_domain.clone()
        } else {
            m.sender.as_ref().map(|a| a.domain.to_ascii_lowercase())
        };
        let (tenant, connector) = (m.tenant, m.connector);
        match (&self.dkim, &m.dkim_data, &m.header_from_domain) {
            (Some(check), Some(data), Some(from)) if check.reserve() => {
                let check = check.clone();
                let data = data.clone();
                let from = from.clone();
                let me = self.me.clone();
                self.spawn(async move {
                    let pass = check.verify(&data, &from).await;
                    if let Some(abuse) = me.upgrade() {
                        let domain = counted.filter(|c| dkim_check::aligned(&from, c));
                        abuse.dkim_result(tenant, connector, pass, domain.as_deref());
                    }
                });
            }
            _ => self.dkim_result(tenant, connector, false, None),
        }
    }

    /// The DKIM verdict on an accepted suspect message.
    pub fn dkim_result(
        &self,
        tenant: TenantId,
        connector: ConnectorId,
        pass: bool,
        domain: Option<&str>,
    ) {
        let now = self.now_ms();
        let snap = self.counters.record_dkim(
            now,
            &DkimEvent {
                tenant,
                connector: Some(connector),
                pass,
                domain,
            },
        );
        // A failure changes no rule's input (the shares count unverified mail as failing
        // already): only a pass is worth evaluating.
        if pass {
            self.consider(now, tenant, &snap, None);
        }
    }

    /// The content scanner's verdict on a message of `tenant` (spam: it was refused, or
    /// marked).
    pub fn scan_verdict(&self, tenant: TenantId, connector: ConnectorId, spam: bool) {
        let now = self.now_ms();
        let snap = self
            .counters
            .record_scan(now, tenant, Some(connector), spam);
        self.consider(now, tenant, &snap, None);
    }

    /// A message refused because of its tenant's restriction state, for the counts and the
    /// evidence.
    pub fn refused(&self, tenant: TenantId, connector: Option<ConnectorId>) {
        self.counters
            .record_refused(self.now_ms(), tenant, connector);
    }

    /// A delivery-side trace event: each attempt's remote reply feeds the tenant's counters.
    pub fn delivery_event(&self, ev: &TraceEvent) {
        self.reputation_outcome(ev);
        self.suppressions.delivery_event(ev);
        if ev.kind != TraceKind::Attempt {
            return;
        }
        // Only what a remote server said: a local failure (no route, refused connection) is
        // no verdict on the tenant's mail.
        if !ev
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("remote host"))
        {
            return;
        }
        let (Some(tenant), Some(reply)) = (ev.tenant_id, ev.reply.as_deref()) else {
            return;
        };
        let Some((code, text)) = split_reply(reply) else {
            return;
        };
        let class = classify_remote_reply(code, "", text);
        let sender = ev
            .sender
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(|s| Address::parse(s, true).ok());
        let now = self.now_ms();
        let snap = self.counters.record_remote_reply(
            now,
            &RemoteReplyEvent {
                tenant,
                connector: ev.connector_id,
                sender: sender.as_ref(),
                class,
                queue_id: ev.queue_id.as_deref(),
                reply: Some(reply),
            },
        );
        self.consider(now, tenant, &snap, None);
    }

    /// Re-evaluates tenants that leave a state with time rather than traffic (warned,
    /// probation), and drops idle counters once a minute.
    pub fn tick(&self) {
        let now = self.now_ms();
        let waiting: Vec<TenantId> = self
            .statuses
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, s)| matches!(s.state, TenantState::Warned | TenantState::Probation))
            .map(|(t, _)| *t)
            .collect();
        for tenant in waiting {
            let snap = self.counters.snapshot(now, tenant);
            self.consider(now, tenant, &snap, None);
        }
        if now - self.last_expire_ms.load(Ordering::Relaxed) >= 60_000 {
            self.last_expire_ms.store(now, Ordering::Relaxed);
            self.counters.expire(now);
            self.reputation_tick();
        }
        self.reputation_write_tick();
    }

    fn consider(&self, now: i64, tenant: TenantId, snap: &Snapshot, exclude: Option<&str>) {
        let seen = self.status(tenant);
        // The connector's age: when it was created or last changed (the directory has it).
        let mut snap = *snap;
        snap.connector_changed_ms = snap.connector.and_then(|c| {
            self.directory
                .current()
                .connector(c.connector)
                .map(|c| c.updated_at.max(c.created_at) * 1000)
        });
        metrics::counter!("relayward_detector_evaluations_total").increment(1);
        if let Some(t) = self.detector.evaluate(now, tenant, &seen, &snap) {
            let rule = t.signals.first().map_or("none", |s| s.rule.as_str());
            metrics::counter!(
                "relayward_detector_transitions_total",
                "to" => t.to.as_str(),
                "rule" => rule
            )
            .increment(1);
            self.take(t, seen, exclude);
        }
    }

    /// Applies a detector transition: in memory at once, then (in order) in the store.
    fn take(&self, t: Transition, seen: TenantStatus, exclude: Option<&str>) {
        {
            let mut statuses = self.statuses.write().unwrap_or_else(|e| e.into_inner());
            let current = statuses.get(&t.tenant).copied().unwrap_or(seen);
            if current != seen {
                return; // another message moved the tenant first
            }
            statuses.insert(t.tenant, seen.apply(&t));
            lock(&self.overrides).insert(
                t.tenant,
                Override {
                    state: t.to,
                    version: None,
                },
            );
            self.directory.set_tenant_state(t.tenant, t.to);
            tracing::warn!(
                tenant = t.tenant,
                from = %t.from,
                to = %t.to,
                summary = %t.summary,
                "abuse detector transition"
            );
            let evidence = Evidence::new(&t, self.counters.observations(t.at_ms, t.tenant));
            self.tasks.start();
            let job = Job {
                transition: t,
                evidence,
                exclude: exclude.map(str::to_string),
            };
            if self.jobs.send(job).is_err() {
                self.tasks.done();
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // After a transition (the worker)

    async fn persist(&self, job: Job) {
        let Job {
            transition: t,
            mut evidence,
            exclude,
        } = job;
        let connectors = self.store.list_connectors(Some(t.tenant)).await.ok();
        let names: HashMap<ConnectorId, String> = connectors
            .iter()
            .flatten()
            .map(|c| (c.id, c.name.clone()))
            .collect();
        evidence.connector_changes = self.connector_changes(t.tenant, t.at_ms, &names).await;
        let evidence_json = serde_json::to_string(&evidence).unwrap_or_else(|_| "{}".into());
        let record = NewTransition {
            tenant_id: t.tenant,
            at_ms: t.at_ms,
            from: t.from,
            to: t.to,
            cause: "detector".into(),
            summary: t.summary.clone(),
            probation_until_ms: t.probation_until_ms,
            evidence: evidence_json,
            attestation: None,
        };
        let mut delay = Duration::from_millis(200);
        let mut recorded = None;
        for attempt in 1..=6 {
            match self.store.record_transition(&record, "detector").await {
                Ok(r) => {
                    recorded = Some(r);
                    break;
                }
                Err(StoreError::Conflict(why)) => {
                    // Someone else (an operator) moved the tenant meanwhile: the store wins.
                    tracing::warn!(tenant = t.tenant, %why, "detector transition superseded");
                    lock(&self.overrides).remove(&t.tenant);
                    if let Err(e) = self.sync().await {
                        tracing::warn!(error = %e, "detector state reload failed");
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(tenant = t.tenant, attempt, error = %e, "cannot record transition");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        let Some((transition_id, version)) = recorded else {
            // Still applied in memory; the next restart starts from the store's state.
            return;
        };
        if let Some(o) = lock(&self.overrides).get_mut(&t.tenant) {
            if o.state == t.to {
                o.version = Some(version);
            }
        }
        let held = if t.to.blocks_unregistered() || t.to.blocks_all() {
            self.hold_unregistered(t.tenant, exclude.as_deref()).await
        } else {
            0
        };
        if held > 0 {
            tracing::warn!(
                tenant = t.tenant,
                held,
                "queued unregistered-sender mail held"
            );
        }
        for alert in self.transition_alerts(&t, transition_id, &evidence, held, &names) {
            let me = self.me.clone();
            self.spawn(async move {
                if let Some(me) = me.upgrade() {
                    me.alerts.send(&alert).await;
                }
            });
        }
    }

    /// The tenant's connector changes of the 7 days before `at_ms`, from the audit log.
    async fn connector_changes(
        &self,
        tenant: TenantId,
        at_ms: i64,
        names: &HashMap<ConnectorId, String>,
    ) -> Vec<ConnectorChange> {
        let since = at_ms.div_euclid(1000) - relayward_policy::connector_audit::RECENT_SECS;
        let by_name: HashMap<&str, ConnectorId> =
            names.iter().map(|(id, n)| (n.as_str(), *id)).collect();
        match self.store.connector_changes(tenant, since).await {
            Ok(entries) => entries
                .into_iter()
                .map(|e| {
                    let name = e.object.strip_prefix("connector ").unwrap_or(&e.object);
                    ConnectorChange {
                        connector: by_name.get(name).copied().unwrap_or(0),
                        at_ms: e.at.saturating_mul(1000),
                        actor: e.actor,
                        action: e.action,
                        detail: e.detail,
                    }
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "connector changes not read for the evidence");
                Vec::new()
            }
        }
    }

    /// Holds the tenant's queued unregistered and null-sender messages (they stay in the
    /// queue; `relayward queue release` or `delete` decides). Reads every queued envelope: a
    /// rare event's price.
    async fn hold_unregistered(&self, tenant: TenantId, exclude: Option<&str>) -> usize {
        let Some(scheduler) = self.scheduler.get() else {
            return 0;
        };
        let exclude = exclude.map(str::to_string);
        let ids = self
            .spool
            .blocking(move |s| {
                let mut out = Vec::new();
                for id in s.scan()? {
                    if exclude.as_deref() == Some(id.as_str()) {
                        continue;
                    }
                    let Ok(env) = s.read_envelope(&id) else {
                        continue;
                    };
                    if env.tenant_id == Some(tenant)
                        && !env.held
                        && (matches!(env.sender_class.as_str(), "unregistered" | "null")
                            || env.header_from_mismatch)
                        && env.recipients.iter().any(|r| !r.status.is_final())
                    {
                        out.push(id);
                    }
                }
                Ok(out)
            })
            .await
            .unwrap_or_default();
        let mut held = 0;
        for id in ids {
            match scheduler.hold(id).await {
                Ok(()) => held += 1,
                Err(e) => tracing::debug!(queue_id = %id, error = %e, "not held"),
            }
        }
        held
    }

    fn transition_alerts(
        &self,
        t: &Transition,
        transition_id: i64,
        evidence: &Evidence,
        held: usize,
        names: &HashMap<ConnectorId, String>,
    ) -> Vec<Alert> {
        let dir = self.directory.current();
        let Some(tenant) = dir.tenant(t.tenant) else {
            return Vec::new();
        };
        let lines = report::evidence_lines(evidence, names);
        let steps = report::steps(&tenant.name, t.to);
        let (name, slug, effect) = match t.to {
            TenantState::BlockedUnregistered => (
                alerts::TENANT_RESTRICTED_UNREGISTERED,
                "restricted-unregistered",
                format!(
                    "Mail from unregistered domains and from the null sender is now refused with \"{}\". Mail from the tenant's registered domains keeps flowing. {held} queued messages from unregistered senders were held.",
                    reply::BLOCKED_UNREGISTERED
                ),
            ),
            TenantState::BlockedAll => (
                alerts::TENANT_RESTRICTED,
                "restricted",
                format!(
                    "Every message of the tenant is now refused with \"{}\". {held} queued messages from unregistered senders were held.",
                    reply::TENANT_BLOCKED
                ),
            ),
            TenantState::Warned => (
                alerts::TENANT_WARNED,
                "warned",
                "Nothing is refused yet; the tenant is watched more closely.".to_string(),
            ),
            _ => return Vec::new(),
        };
        let what = format!(
            "At {}, relayward moved tenant {} from {} to {}: {}.",
            time_ms(t.at_ms),
            tenant.name,
            t.from,
            t.to,
            t.summary
        );
        let mut out = vec![self.alert(
            name,
            format!("transition-{transition_id}-{slug}"),
            tenant,
            &what,
            &effect,
            &lines,
            &steps,
            json!({
                "transition": {
                    "id": transition_id,
                    "from": t.from,
                    "to": t.to,
                    "at_ms": t.at_ms,
                    "cause": t.cause,
                    "summary": t.summary,
                },
                "held_messages": held,
                "evidence": evidence,
            }),
        )];
        // A connector changed in the last 7 days that carries an unregistered-mail spike.
        let unregistered_rule = t
            .signals
            .iter()
            .any(|s| report::is_unregistered_rule(s.rule));
        if let Some((connector, n)) = report::spike_connector(evidence) {
            let changes: Vec<_> = evidence
                .connector_changes
                .iter()
                .filter(|c| c.connector == connector)
                .collect();
            if unregistered_rule && !changes.is_empty() {
                let cname = names
                    .get(&connector)
                    .cloned()
                    .unwrap_or_else(|| connector.to_string());
                let what = format!(
                    "Connector {cname} of tenant {}, created or changed in the last 7 days, carried {n} messages from unregistered or null senders in the last hour; relayward moved the tenant to {} at {}.",
                    tenant.name,
                    t.to,
                    time_ms(t.at_ms)
                );
                let effect = changes
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {} by {}: {}",
                            time_ms(c.at_ms),
                            c.action,
                            c.actor,
                            c.detail
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                let mut steps = vec![format!(
                    "Check that you made these changes to connector {cname}; if not, disable it (`relayward connector disable {} {cname}`) and rotate its credentials.",
                    tenant.name
                )];
                steps.extend(report::steps(&tenant.name, t.to));
                out.push(self.alert(
                    alerts::SUSPICIOUS_CONNECTOR,
                    format!("transition-{transition_id}-suspicious-connector"),
                    tenant,
                    &what,
                    &format!("Recent changes:\n{effect}"),
                    &lines,
                    &steps,
                    json!({
                        "transition": {
                            "id": transition_id,
                            "from": t.from,
                            "to": t.to,
                            "at_ms": t.at_ms,
                            "summary": t.summary,
                        },
                        "connector": {"id": connector, "name": cname, "unregistered_last_hour": n},
                        "connector_changes": changes,
                        "evidence": evidence,
                    }),
                ));
            }
        }
        out
    }

    /// One alert: email text and webhook payload from the same parts.
    #[allow(clippy::too_many_arguments)]
    fn alert(
        &self,
        name: &'static str,
        id: String,
        tenant: &relayward_core::Tenant,
        what: &str,
        effect: &str,
        evidence: &[String],
        steps: &[String],
        extra: serde_json::Value,
    ) -> Alert {
        let mut text = format!("{name}\n\nWhat happened\n\n{what}\n\n{effect}\n\n");
        if !evidence.is_empty() {
            text.push_str("Evidence\n\n");
            for l in evidence {
                text.push_str(&format!("- {l}\n"));
            }
            text.push('\n');
        }
        if !steps.is_empty() {
            text.push_str("What to do\n\n");
            for (i, s) in steps.iter().enumerate() {
                text.push_str(&format!("{}. {s}\n", i + 1));
            }
        }
        let mut payload = json!({
            "id": id,
            "alert": name,
            "at_ms": self.now_ms(),
            "tenant": {"id": tenant.id, "name": tenant.name},
            "what_happened": what,
            "effect": effect,
            "evidence_summary": evidence,
            "steps": steps,
        });
        if let (Some(p), serde_json::Value::Object(extra)) = (payload.as_object_mut(), extra) {
            p.extend(extra);
        }
        Alert {
            name,
            id,
            tenant_name: tenant.name.clone(),
            admin_emails: tenant.admin_emails.clone(),
            subject: format!("[relayward] {name}: tenant {}", tenant.name),
            text,
            payload,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Sender limits

    /// The per-sender limits' verdict for one more message from `sender`, without counting it
    /// or restricting anyone (for `diagnose`).
    pub fn peek_sender(&self, tenant: TenantId, sender: &Address) -> Result<(), Reply> {
        match self.limiter.check_sender(self.now_ms(), tenant, sender, 1) {
            SenderDecision::Allow => Ok(()),
            SenderDecision::Restrict { .. } => Err(reply::SENDER_RESTRICTED),
            SenderDecision::Alert { .. } => Ok(()),
        }
    }

    /// The suppression lists (checked at RCPT, kept up to the store's by the directory poll).
    pub fn suppressions(&self) -> &Arc<crate::suppression::Suppressions> {
        &self.suppressions
    }

    /// Puts `address` on `tenant`'s suppression list (`None`: the global list); see
    /// [`crate::suppression::Suppressions::suppress`].
    pub async fn suppress(
        &self,
        tenant: Option<TenantId>,
        address: &str,
        source: relayward_core::SuppressionSource,
        reason: &str,
    ) -> Result<relayward_core::Suppression> {
        self.suppressions
            .suppress(tenant, address, source, reason)
            .await
    }

    /// The live directory snapshot.
    pub fn directory(&self) -> Arc<relayward_policy::Directory> {
        self.directory.current()
    }

    fn check_sender(
        &self,
        tenant: TenantId,
        sender: &Address,
        recipients: usize,
    ) -> Result<(), Reply> {
        let now = self.now_ms();
        match self.limiter.check_sender(now, tenant, sender, recipients) {
            SenderDecision::Allow => Ok(()),
            SenderDecision::Restrict { .. } => {
                let key = sender_key(sender);
                if let Some(r) = self.counters.sender_usage(now, tenant, &key).restriction {
                    let new =
                        lock(&self.known_restrictions).insert((tenant, key.clone(), r.since_ms));
                    if new {
                        self.restricted(tenant, key, r);
                    }
                }
                Err(reply::SENDER_RESTRICTED)
            }
            SenderDecision::Alert {
                limit,
                threshold,
                observed,
                reason,
            } => {
                let dir = self.directory.current();
                if let Some(t) = dir.tenant(tenant) {
                    let key = sender_key(sender);
                    let what = format!(
                        "At {}, sender {key} of tenant {} went over its limit: {reason}. The tenant's action for senders over their limits is `alert`: the mail flows.",
                        time_ms(now),
                        t.name
                    );
                    let alert = self.alert(
                        alerts::SENDING_LIMIT_EXCEEDED,
                        format!("sender-limit-{tenant}-{key}-{now}"),
                        t,
                        &what,
                        "No mail was refused.",
                        &[],
                        &["Check the device or application that sends as this address.".into()],
                        json!({"sender": key, "limit": limit, "threshold": threshold, "observed": observed}),
                    );
                    let me = self.me.clone();
                    self.spawn(async move {
                        if let Some(me) = me.upgrade() {
                            me.alerts.send(&alert).await;
                        }
                    });
                }
                Ok(())
            }
        }
    }

    /// A new restriction: into the store (it survives restarts), then the alert.
    fn restricted(&self, tenant: TenantId, key: String, r: SenderRestriction) {
        tracing::warn!(tenant, sender = %key, reason = %r.reason, "sender restricted");
        let me = self.me.clone();
        self.spawn(async move {
            let Some(me) = me.upgrade() else { return };
            let record = NewSenderRestriction {
                tenant_id: tenant,
                sender: key.clone(),
                since_ms: r.since_ms,
                until_ms: r.until_ms,
                limit: enum_text(&r.limit),
                action: enum_text(&r.action),
                reason: r.reason.clone(),
            };
            let id = match me.store.add_sender_restriction(&record, "detector").await {
                Ok(id) => id,
                Err(e) => {
                    tracing::error!(sender = %key, error = %e, "sender restriction not stored");
                    0
                }
            };
            let dir = me.directory.current();
            let Some(t) = dir.tenant(tenant) else { return };
            let until = match r.until_ms {
                Some(u) => format!("until {}", time_ms(u)),
                None => "until an administrator lifts the restriction".into(),
            };
            let what = format!(
                "At {}, sender {key} of tenant {} went over its outbound limit ({}): {}. It is refused with \"{}\" {until}.",
                time_ms(r.since_ms),
                t.name,
                r.limit,
                r.reason,
                reply::SENDER_RESTRICTED
            );
            let steps = vec![
                "Check the device, application or mailbox that sends as this address: a compromised account or a misconfigured application is the usual cause.".to_string(),
                format!(
                    "Once it is fixed, an administrator lifts the restriction: `relayward sender unrestrict {key} --tenant {}`.",
                    t.name
                ),
            ];
            let alert = me.alert(
                alerts::USER_RESTRICTED,
                format!("sender-restriction-{id}-{tenant}-{}", r.since_ms),
                t,
                &what,
                "Other senders of the tenant are not affected.",
                &[],
                &steps,
                json!({
                    "sender": key,
                    "restriction": {
                        "id": id,
                        "since_ms": r.since_ms,
                        "until_ms": r.until_ms,
                        "limit": r.limit,
                        "action": r.action,
                        "reason": r.reason,
                    },
                }),
            );
            me.alerts.send(&alert).await;
        });
    }

    // -----------------------------------------------------------------------------------------
    // The store's view

    /// Keeps in-memory transitions the store does not have yet in a freshly loaded directory;
    /// forgets those it has.
    pub fn overlay(&self, data: &mut DirectoryData) {
        let mut overrides = lock(&self.overrides);
        overrides.retain(|tenant, o| {
            if o.version.is_some_and(|v| data.version >= v) {
                return false;
            }
            if let Some(t) = data.tenants.iter_mut().find(|t| t.id == *tenant) {
                t.state = o.state;
            }
            true
        });
    }

    /// Applies the pending in-memory transitions to the current directory snapshot again (a
    /// reload that read the store just before a transition would otherwise undo it).
    pub fn reapply(&self) {
        let pending: Vec<(TenantId, TenantState)> = lock(&self.overrides)
            .iter()
            .map(|(t, o)| (*t, o.state))
            .collect();
        for (tenant, state) in pending {
            self.directory.set_tenant_state(tenant, state);
        }
    }

    /// Loads what the CLI (or another process) may have changed: restriction statuses, sender
    /// restrictions and per-tenant sender limits.
    pub async fn sync(&self) -> Result<()> {
        let now = self.now_ms();
        let statuses = self.store.tenant_statuses().await?;
        let mut newly_blocked = Vec::new();
        {
            // Same lock order as `take`: statuses, then overrides.
            let mut map = self.statuses.write().unwrap_or_else(|e| e.into_inner());
            let overrides = lock(&self.overrides);
            for s in statuses {
                if overrides.contains_key(&s.tenant_id) {
                    continue;
                }
                let blocks = |st: TenantState| st.blocks_unregistered() || st.blocks_all();
                let before = map.insert(
                    s.tenant_id,
                    TenantStatus {
                        state: s.state,
                        since_ms: s.since_ms,
                        probation_until_ms: s.probation_until_ms,
                    },
                );
                // Blocked from elsewhere (the CLI): its queued unregistered mail waits too.
                if before.is_some_and(|b| !blocks(b.state)) && blocks(s.state) {
                    newly_blocked.push(s.tenant_id);
                }
            }
        }
        for tenant in newly_blocked {
            let me = self.me.clone();
            self.spawn(async move {
                if let Some(me) = me.upgrade() {
                    let held = me.hold_unregistered(tenant, None).await;
                    tracing::warn!(
                        tenant,
                        held,
                        "tenant blocked: queued unregistered-sender mail held"
                    );
                }
            });
        }

        let limits = self.store.tenant_sender_limits().await?;
        {
            let mut limited = lock(&self.limited_tenants);
            let mut now_limited = HashSet::new();
            for (tenant, json) in limits {
                match serde_json::from_str::<SenderLimits>(&json) {
                    Ok(l) => {
                        self.limiter.set_tenant_limits(tenant, Some(l));
                        now_limited.insert(tenant);
                    }
                    Err(e) => tracing::warn!(tenant, error = %e, "bad sender limits ignored"),
                }
            }
            for gone in limited.difference(&now_limited) {
                self.limiter.set_tenant_limits(*gone, None);
            }
            *limited = now_limited;
        }

        let rows = self
            .store
            .list_sender_restrictions(None, now, Some(now - DAY_MS))
            .await?;
        for r in rows {
            let current = self
                .counters
                .sender_usage(now, r.tenant_id, &r.sender)
                .restriction;
            if r.standing(now) {
                lock(&self.known_restrictions).insert((r.tenant_id, r.sender.clone(), r.since_ms));
                if current.as_ref().is_some_and(|c| c.since_ms >= r.since_ms) {
                    continue;
                }
                let (Some(limit), Some(action)) = (enum_parse(&r.limit), enum_parse(&r.action))
                else {
                    tracing::warn!(
                        id = r.id,
                        "sender restriction with unknown limit or action ignored"
                    );
                    continue;
                };
                self.counters.set_sender_restriction(
                    r.tenant_id,
                    &r.sender,
                    Some(SenderRestriction {
                        since_ms: r.since_ms,
                        until_ms: r.until_ms,
                        limit,
                        action,
                        reason: r.reason.clone(),
                    }),
                );
            } else if r.lifted_at_ms.is_some()
                && current.as_ref().is_some_and(|c| c.since_ms <= r.since_ms)
            {
                tracing::info!(tenant = r.tenant_id, sender = %r.sender, "sender restriction lifted");
                self.counters
                    .set_sender_restriction(r.tenant_id, &r.sender, None);
            }
        }
        Ok(())
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
