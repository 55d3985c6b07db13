//! [`Control`]: what the admin API asks of the relay ([`RelayControl`]), in two settings. In the
//! running relay ([`Control::live`]) it reads and moves this process's detector, sender limiter
//! and queue scheduler. For the CLI on the relay's host ([`Control::offline`]) it works on the
//! store and the spool directly, as a relay that is not running would: transitions through the
//! same way-back rules, queue operations handed to a running relay when one holds the spool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use relayward_admin::control::{
    Block, ControlError, ControlResult, QueueOpOutcome, QueueOperation, QueuedMessage,
    QueuedRecipient, RelayControl, RequestUnblock, SenderRestrictionView, TenantStatusReport,
    TransitionView, Unblock,
};
use relayward_core::{Address, Tenant, TenantId, TenantState};
use relayward_policy::counters::{sender_key, Counters};
use relayward_policy::detector::Detector;
use relayward_policy::limits::SenderLimits;
use relayward_queue::{DeliveryError, Envelope, QueueId, Scheduler, Spool, SpoolError};
use relayward_store::Store;

use crate::abuse::way_back::{self, Attestation, WayBackError};
use crate::abuse::Abuse;
use crate::clock::Clock;
use crate::config::Config;
use crate::serve::EventWriter;

/// The relay's parts, running in this process or not.
enum Relay {
    Live {
        spool: Arc<Spool>,
        scheduler: Arc<Scheduler>,
        abuse: Arc<Abuse>,
        /// SMTP listeners and whether each still accepts.
        listeners: Vec<(SocketAddr, Arc<AtomicBool>)>,
        events: Option<Arc<EventWriter>>,
    },
    Offline {
        config: Box<Config>,
        detector: Box<Detector>,
        clock: Arc<dyn Clock>,
    },
}

/// [`RelayControl`] over the running relay or, for the CLI, over the store and spool.
pub struct Control {
    store: Arc<dyn Store>,
    sender_limits: SenderLimits,
    relay: Relay,
}

impl Control {
    pub fn live(
        config: &Config,
        store: Arc<dyn Store>,
        spool: Arc<Spool>,
        scheduler: Arc<Scheduler>,
        abuse: Arc<Abuse>,
    ) -> Control {
        Control {
            store,
            sender_limits: config.default_sender_limits(),
            relay: Relay::Live {
                spool,
                scheduler,
                abuse,
                listeners: Vec::new(),
                events: None,
            },
        }
    }

    /// Without a relay in this process: the detector's rules from `config`, time from `clock`.
    pub fn offline(config: &Config, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Control {
        Control {
            store,
            sender_limits: config.default_sender_limits(),
            relay: Relay::Offline {
                config: Box::new(config.clone()),
                detector: Box::new(Detector::new(config.detector.clone())),
                clock,
            },
        }
    }

    /// What `/readyz` and `/metrics` read: the listeners and the trace writer.
    pub fn with_ops(
        mut self,
        ops_listeners: Vec<(SocketAddr, Arc<AtomicBool>)>,
        ops_events: Arc<EventWriter>,
    ) -> Control {
        if let Relay::Live {
            listeners, events, ..
        } = &mut self.relay
        {
            *listeners = ops_listeners;
            *events = Some(ops_events);
        }
        self
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn detector(&self) -> &Detector {
        match &self.relay {
            Relay::Live { abuse, .. } => abuse.detector(),
            Relay::Offline { detector, .. } => detector,
        }
    }

    /// The detector's time.
    fn now_ms(&self) -> i64 {
        match &self.relay {
            Relay::Live { abuse, .. } => abuse.now_ms(),
            Relay::Offline { clock, .. } => clock.now_ms(),
        }
    }

    async fn tenant(&self, id: TenantId) -> ControlResult<Tenant> {
        self.store
            .get_tenant(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| ControlError::NotFound(format!("tenant {id}")))
    }

    /// The unblock checklist ([`relayward_policy::unblock::checklist`]) and whether a request
    /// for unblock would be taken now.
    async fn checklist(
        &self,
        tenant: &Tenant,
        state: TenantState,
        forwarded: &[String],
    ) -> ControlResult<(Vec<String>, bool)> {
        use relayward_policy::unblock;
        let strings = |(items, can): (Vec<unblock::ChecklistItem>, bool)| {
            (items.iter().map(ToString::to_string).collect(), can)
        };
        if !matches!(
            state,
            TenantState::BlockedUnregistered | TenantState::UnderReview | TenantState::Probation
        ) {
            return Ok(strings(unblock::checklist(state, &[], &[], "")));
        }
        let evidence = way_back::latest_block_evidence(&*self.store, tenant)
            .await
            .map_err(internal)?;
        let domains = self
            .store
            .list_domains(Some(tenant.id))
            .await
            .map_err(internal)?;
        // Through the API the request itself is the attestation: only the evidence's domains
        // are left to check.
        let missing = unblock::missing(
            evidence.as_ref(),
            &domains,
            forwarded,
            &unblock::Attestation::all(Vec::new()),
        );
        let spam = evidence.map_or(Vec::new(), |e| unblock::split_domains(&e).1);
        Ok(strings(unblock::checklist(
            state,
            &missing,
            &spam,
            &format!("POST /v1/tenants/{}/request-unblock", tenant.id),
        )))
    }

    fn message(env: &Envelope) -> QueuedMessage {
        QueuedMessage {
            queue_id: env.queue_id.to_string(),
            received_at: env.received_at,
            tenant_id: env.tenant_id,
            connector_id: env.connector_id,
            client_ip: env.client_ip.clone(),
            sender: env.sender.clone(),
            sender_class: env.sender_class,
            message_id: env.message_id.clone(),
            size: env.size,
            held: env.held,
            recipients: env
                .recipients
                .iter()
                .map(|r| QueuedRecipient {
                    address: r.address.clone(),
                    status: serde_json::to_value(r.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    attempts: r.attempts,
                    last_reply: r.last_reply.clone(),
                    next_attempt_at: (!r.status.is_final() && r.next_attempt_at > 0)
                        .then_some(r.next_attempt_at),
                })
                .collect(),
        }
    }

    /// `f` on the spool: the relay's own, or the spool directory opened read-only.
    async fn with_spool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        match &self.relay {
            Relay::Live { spool, .. } => spool.blocking(f).await,
            Relay::Offline { config, .. } => {
                let dir = config.spool_dir();
                tokio::task::spawn_blocking(move || f(&Spool::open_read_only(dir)?))
                    .await
                    .map_err(|e| SpoolError::Task(e.to_string()))?
            }
        }
    }

    async fn envelope(&self, id: QueueId) -> ControlResult<Option<Envelope>> {
        match self.with_spool(move |s| s.read_envelope(&id)).await {
            Ok(env) => Ok(Some(env)),
            Err(SpoolError::NotFound(_)) => Ok(None),
            Err(e) => Err(internal(e)),
        }
    }

    async fn operate(&self, queue_id: &str, op: QueueOperation) -> ControlResult<QueueOpOutcome> {
        let id: QueueId = queue_id.parse().map_err(|_| ControlError::Invalid {
            field: "queue_id".into(),
            detail: format!("{queue_id:?} is not a queue id"),
        })?;
        let (done, applied) = match &self.relay {
            Relay::Live { scheduler, .. } => (
                match op {
                    QueueOperation::Hold => scheduler.hold(id).await,
                    QueueOperation::Release => scheduler.release(id).await,
                    QueueOperation::Retry => scheduler.retry_now(id).await,
                    QueueOperation::Delete => scheduler.delete(id, false).await,
                    QueueOperation::Bounce => scheduler.delete(id, true).await,
                },
                true,
            ),
            Relay::Offline { config, .. } => self.operate_offline(config, id, op).await?,
        };
        match done {
            Ok(()) => {}
            Err(DeliveryError::Spool(SpoolError::NotFound(_))) => {
                return Err(ControlError::NotFound(format!("message {queue_id}")))
            }
            Err(DeliveryError::Stopped) => {
                return Err(ControlError::Unavailable(
                    "the queue scheduler is stopping".into(),
                ))
            }
            Err(e) => return Err(internal(e)),
        }
        Ok(QueueOpOutcome {
            queue_id: queue_id.to_string(),
            operation: op,
            applied,
            message: self.envelope(id).await?.as_ref().map(Self::message),
            dsn_queue_id: None,
        })
    }

    /// A queue operation without the scheduler: applied on the spool when no relay holds it
    /// (its trace events recorded), else left in the running relay's control directory.
    async fn operate_offline(
        &self,
        config: &Config,
        id: QueueId,
        op: QueueOperation,
    ) -> ControlResult<(Result<(), DeliveryError>, bool)> {
        use relayward_queue::{AdminOutcome, ControlOp};
        let op = match op {
            QueueOperation::Hold => ControlOp::Hold,
            QueueOperation::Release => ControlOp::Release,
            QueueOperation::Retry => ControlOp::RetryNow,
            QueueOperation::Delete => ControlOp::Delete { send_dsn: false },
            QueueOperation::Bounce => ControlOp::Delete { send_dsn: true },
        };
        let (dir, delivery) = (config.spool_dir(), config.delivery());
        let outcome =
            tokio::task::spawn_blocking(move || relayward_queue::admin(&dir, &delivery, id, op))
                .await
                .map_err(internal)?;
        match outcome {
            Ok(AdminOutcome::Applied(events)) => {
                if !events.is_empty() {
                    self.store.record_trace(&events).await.map_err(internal)?;
                }
                Ok((Ok(()), true))
            }
            Ok(AdminOutcome::Requested) => Ok((Ok(()), false)),
            Err(e) => Ok((Err(e), true)),
        }
    }

    /// Records the reason given with a transition next to its audit entry.
    async fn note(&self, tenant: &Tenant, actor: &str, action: &str, text: Option<&str>) {
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return;
        };
        let object = format!("tenant {}", tenant.name);
        if let Err(e) = self
            .store
            .audit(actor, action, Some(tenant.id), &object, text)
            .await
        {
            tracing::warn!(tenant = tenant.id.0, error = %e, "transition note not audited");
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ControlError {
    ControlError::Internal(format!("{e:#}").replace('\n', " "))
}

fn way_back_error(e: WayBackError) -> ControlError {
    match e {
        WayBackError::NotAllowed(why) => ControlError::NotAllowed(why),
        WayBackError::Missing(items) => {
            ControlError::NotAllowed(format!("request refused: {}", way_back::join(&items)))
        }
        WayBackError::Other(e) => internal(e),
    }
}

#[async_trait]
impl RelayControl for Control {
    async fn tenant_status(&self, tenant: TenantId) -> ControlResult<TenantStatusReport> {
        let t = self.tenant(tenant).await?;
        let stored = self.store.tenant_status(t.id).await.map_err(internal)?;
        let transitions = self
            .store
            .list_transitions(t.id, 20)
            .await
            .map_err(internal)?;
        let (mut state, mut since_ms, mut probation_until_ms) = match &stored {
            Some(s) => (s.state, Some(s.since_ms), s.probation_until_ms),
            None => (t.state, None, None),
        };
        // A detector transition the store does not have yet is already in force.
        if let Relay::Live { abuse, .. } = &self.relay {
            let live = abuse.status(t.id);
            if live.state != state && live.since_ms > since_ms.unwrap_or(0) {
                state = live.state;
                since_ms = Some(live.since_ms);
                probation_until_ms = live.probation_until_ms;
            }
        }
        let summary = transitions
            .first()
            .map(|r| {
                format!(
                    "{} -> {} by {} ({}): {}",
                    r.from, r.to, r.actor, r.cause, r.summary
                )
            })
            .or_else(|| stored.as_ref().and_then(|s| s.reason.clone()));
        let evidence = transitions
            .iter()
            .find(|r| {
                matches!(
                    r.to,
                    TenantState::Warned
                        | TenantState::BlockedUnregistered
                        | TenantState::BlockedAll
                )
            })
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.evidence).ok());
        let forwarded_domains = self.store.forwarded_domains(t.id).await.map_err(internal)?;
        let (checklist, can_request_unblock) =
            self.checklist(&t, state, &forwarded_domains).await?;
        let reputation = match &self.relay {
            Relay::Live { abuse, .. } => abuse.reputation_status(t.id),
            Relay::Offline { config, .. } => {
                crate::abuse::reputation_from_store(&*self.store, config, t.id, self.now_ms())
                    .await
                    .map_err(internal)?
            }
        };
        let refusal_reply = if state.blocks_all() {
            Some(relayward_core::reply::TENANT_BLOCKED.to_string())
        } else if state.blocks_unregistered() {
            Some(relayward_core::reply::BLOCKED_UNREGISTERED.to_string())
        } else {
            None
        };
        Ok(TenantStatusReport {
            tenant_id: t.id.0,
            state,
            since_ms,
            probation_until_ms,
            summary,
            evidence,
            refusal_reply,
            checklist,
            can_request_unblock,
            reputation: Some(reputation),
            transitions: transitions
                .iter()
                .map(|r| TransitionView {
                    id: r.id,
                    at_ms: r.at_ms,
                    from: r.from,
                    to: r.to,
                    actor: r.actor.clone(),
                    cause: r.cause.clone(),
                    summary: r.summary.clone(),
                    probation_until_ms: r.probation_until_ms,
                })
                .collect(),
            forwarded_domains,
        })
    }

    async fn request_unblock(
        &self,
        tenant: TenantId,
        request: &RequestUnblock,
        actor: &str,
    ) -> ControlResult<TenantStatusReport> {
        let t = self.tenant(tenant).await?;
        let attestation = Attestation::all(request.forwarded_domains.clone());
        way_back::request_unblock(
            &*self.store,
            self.detector(),
            &t,
            &attestation,
            actor,
            self.now_ms(),
        )
        .await
        .map_err(way_back_error)?;
        self.note(
            &t,
            actor,
            "tenant.request_unblock",
            request.comment.as_deref(),
        )
        .await;
        self.tenant_status(t.id).await
    }

    async fn unblock(
        &self,
        tenant: TenantId,
        request: &Unblock,
        actor: &str,
    ) -> ControlResult<TenantStatusReport> {
        let t = self.tenant(tenant).await?;
        way_back::operator_unblock(&*self.store, self.detector(), &t, actor, self.now_ms())
            .await
            .map_err(way_back_error)?;
        self.note(&t, actor, "tenant.unblock", request.reason.as_deref())
            .await;
        self.tenant_status(t.id).await
    }

    async fn block(
        &self,
        tenant: TenantId,
        request: &Block,
        actor: &str,
    ) -> ControlResult<TenantStatusReport> {
        let t = self.tenant(tenant).await?;
        way_back::operator_block(
            &*self.store,
            self.detector(),
            &t,
            request.scope,
            actor,
            self.now_ms(),
        )
        .await
        .map_err(way_back_error)?;
        self.note(&t, actor, "tenant.block", Some(&request.reason))
            .await;
        self.tenant_status(t.id).await
    }

    async fn queue_list(&self, tenant: Option<TenantId>) -> ControlResult<Vec<QueuedMessage>> {
        let envelopes = self
            .with_spool(move |s| {
                let mut out = Vec::new();
                for id in s.scan()? {
                    // Delivered and removed between scan and read: skipped.
                    if let Ok(env) = s.read_envelope(&id) {
                        if tenant.is_none() || env.tenant_id == tenant.map(i64::from) {
                            out.push(env);
                        }
                    }
                }
                Ok(out)
            })
            .await
            .map_err(internal)?;
        Ok(envelopes.iter().map(Self::message).collect())
    }

    async fn queue_show(&self, queue_id: &str) -> ControlResult<Option<QueuedMessage>> {
        let Ok(id) = queue_id.parse::<QueueId>() else {
            return Ok(None);
        };
        Ok(self.envelope(id).await?.as_ref().map(Self::message))
    }

    async fn queue_hold(&self, queue_id: &str, _actor: &str) -> ControlResult<QueueOpOutcome> {
        self.operate(queue_id, QueueOperation::Hold).await
    }

    async fn queue_release(&self, queue_id: &str, _actor: &str) -> ControlResult<QueueOpOutcome> {
        self.operate(queue_id, QueueOperation::Release).await
    }

    async fn queue_retry(&self, queue_id: &str, _actor: &str) -> ControlResult<QueueOpOutcome> {
        self.operate(queue_id, QueueOperation::Retry).await
    }

    async fn queue_delete(
        &self,
        queue_id: &str,
        send_dsn: bool,
        _actor: &str,
    ) -> ControlResult<QueueOpOutcome> {
        let op = if send_dsn {
            QueueOperation::Bounce
        } else {
            QueueOperation::Delete
        };
        self.operate(queue_id, op).await
    }

    async fn sender_restrictions(
        &self,
        tenant: TenantId,
    ) -> ControlResult<Vec<SenderRestrictionView>> {
        let now = self.now_ms();
        let rows = self
            .store
            .list_sender_restrictions(Some(tenant), now, None)
            .await
            .map_err(internal)?;
        Ok(rows
            .into_iter()
            .filter(|r| r.standing(now))
            .map(|r| SenderRestrictionView {
                sender: r.sender,
                since_ms: r.since_ms,
                until_ms: r.until_ms,
                limit: r.limit.replace('_', " "),
                action: r.action,
                reason: r.reason,
            })
            .collect())
    }

    async fn remove_sender_restriction(
        &self,
        tenant: TenantId,
        sender: &str,
        actor: &str,
    ) -> ControlResult<bool> {
        let address = Address::parse(sender, true).map_err(|e| ControlError::Invalid {
            field: "sender".into(),
            detail: e.to_string(),
        })?;
        let key = sender_key(&address);
        let lifted = self
            .store
            .lift_sender_restrictions(Some(tenant), &key, self.now_ms(), actor)
            .await
            .map_err(internal)?;
        if lifted.is_empty() {
            return Ok(false);
        }
        // The limiter lets the sender through from the next MAIL on (a relay elsewhere reads
        // the store).
        if let Relay::Live { abuse, .. } = &self.relay {
            abuse.counters().set_sender_restriction(tenant, &key, None);
        }
        Ok(true)
    }

    fn default_sender_limits(&self) -> SenderLimits {
        self.sender_limits
    }

    async fn restricted_senders(&self) -> std::collections::HashSet<(TenantId, String)> {
        match self
            .store
            .list_sender_restrictions(None, self.now_ms(), None)
            .await
        {
            Ok(rows) => rows.into_iter().map(|r| (r.tenant_id, r.sender)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read sender restrictions");
                Default::default()
            }
        }
    }

    fn directory(&self) -> Option<Arc<relayward_policy::Directory>> {
        match &self.relay {
            Relay::Live { abuse, .. } => Some(abuse.directory()),
            Relay::Offline { .. } => None,
        }
    }

    fn suppressions(&self) -> Option<Arc<relayward_policy::suppression::SuppressionList>> {
        match &self.relay {
            Relay::Live { abuse, .. } => Some(abuse.suppressions().list()),
            Relay::Offline { .. } => None,
        }
    }

    fn metrics_text(&self) -> Option<String> {
        let Relay::Live {
            abuse,
            scheduler,
            events,
            ..
        } = &self.relay
        else {
            return None;
        };
        let directory = abuse.directory();
        let queued = scheduler.queued();
        let delivering = scheduler.in_flight();
        Some(crate::metrics::render(&crate::metrics::Live {
            directory: &directory,
            queue_waiting: queued.saturating_sub(delivering),
            queue_delivering: delivering,
            sender_restrictions: abuse.restriction_count(),
            trace_backlog: events.as_ref().map_or(0, |e| e.backlog()),
        }))
    }

    async fn readiness(&self) -> Vec<relayward_admin::health::Check> {
        use relayward_admin::health::Check;
        let Relay::Live {
            listeners, spool, ..
        } = &self.relay
        else {
            return Vec::new();
        };
        let down: Vec<String> = listeners
            .iter()
            .filter(|(_, up)| !up.load(Ordering::SeqCst))
            .map(|(a, _)| a.to_string())
            .collect();
        let listeners = Check {
            name: "listeners".into(),
            ok: down.is_empty() && !listeners.is_empty(),
            detail: (!down.is_empty()).then(|| format!("not accepting: {}", down.join(", "))),
            optional: false,
        };
        let spool = spool.clone();
        let probe = tokio::task::spawn_blocking(move || spool.probe_writable())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let spool = Check {
            name: "spool".into(),
            ok: probe.is_ok(),
            detail: probe.err().map(|e| format!("not writable: {e}")),
            optional: false,
        };
        let mut checks = vec![listeners, spool];
        if let Relay::Live { abuse, .. } = &self.relay {
            if let Some(c) = abuse.cluster() {
                checks.push(Check {
                    name: "shared_counters".into(),
                    ok: c.is_up(),
                    detail: c
                        .problem()
                        .map(|p| format!("unreachable, counting on this node alone: {p}")),
                    optional: true,
                });
            }
        }
        checks
    }

    fn sender_limit_verdict(
        &self,
        tenant: TenantId,
        sender: &Address,
    ) -> Option<Result<(), relayward_core::Reply>> {
        match &self.relay {
            Relay::Live { abuse, .. } => Some(abuse.peek_sender(tenant, sender)),
            Relay::Offline { .. } => None,
        }
    }
}
