//! The admin HTTP API in the running relay: [`LiveControl`] gives `relayward_admin` the
//! restriction states, sender restrictions and queue of this process, and [`start`] serves the
//! API on `[admin] address`.
//!
//! A change made through the API counts for the very next SMTP command: after every successful
//! request that changes something, the directory snapshot and the abuse detector's view are
//! brought up to the store's before the answer goes out (the same reload the store poll does).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use relayward_admin::control::{
    Block, BlockScope, ControlError, ControlResult, QueueOpOutcome, QueueOperation, QueuedMessage,
    QueuedRecipient, RelayControl, RequestUnblock, SenderRestrictionView, TenantStatusReport,
    Unblock,
};
use relayward_core::{Address, Tenant, TenantId, TenantState};
use relayward_policy::counters::{sender_key, Counters};
use relayward_policy::detector;
use relayward_queue::{DeliveryError, Envelope, QueueId, Scheduler, Spool, SpoolError};
use relayward_store::Store;
use tokio::sync::watch;

use crate::abuse::way_back::{self, Attestation, WayBackError};
use crate::abuse::Abuse;
use crate::config::Config;
use crate::serve::{DirectoryReload, EventWriter};

/// Binds `[admin] address` and serves the API until `shutdown`; returns the bound address
/// (`None` when the API is disabled).
pub(crate) async fn start(
    config: &Config,
    control: LiveControl,
    reload: Arc<DirectoryReload>,
    shutdown: watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> Result<Option<SocketAddr>> {
    if !config.admin.enabled {
        return Ok(None);
    }
    let settings = relayward_admin::AdminConfig {
        dns_resolver: config.delivery.dns_resolver,
        metrics_public: config.admin.metrics_public,
        ..Default::default()
    };
    let store = control.store.clone();
    let router = relayward_admin::router(store, Arc::new(control), settings).layer(
        axum::middleware::from_fn_with_state(reload, reload_after_change),
    );
    let listener = tokio::net::TcpListener::bind(config.admin.address)
        .await
        .with_context(|| format!("cannot listen on {} (admin API)", config.admin.address))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "admin API ready");
    tasks.push(tokio::spawn(relayward_admin::serve(
        listener, router, shutdown,
    )));
    Ok(Some(local))
}

/// After a successful change, the relay's view catches up before the client hears "done".
async fn reload_after_change(
    State(reload): State<Arc<DirectoryReload>>,
    request: Request,
    next: Next,
) -> Response {
    let changes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let response = next.run(request).await;
    if changes && response.status().is_success() {
        reload.if_changed().await;
    }
    response
}

/// [`RelayControl`] over this process's detector, sender limiter and queue scheduler.
pub struct LiveControl {
    store: Arc<dyn Store>,
    spool: Arc<Spool>,
    scheduler: Arc<Scheduler>,
    abuse: Arc<Abuse>,
    /// SMTP listeners and whether each still accepts.
    listeners: Vec<(SocketAddr, Arc<AtomicBool>)>,
    events: Option<Arc<EventWriter>>,
}

impl LiveControl {
    pub fn new(
        store: Arc<dyn Store>,
        spool: Arc<Spool>,
        scheduler: Arc<Scheduler>,
        abuse: Arc<Abuse>,
    ) -> LiveControl {
        LiveControl {
            store,
            spool,
            scheduler,
            abuse,
            listeners: Vec::new(),
            events: None,
        }
    }

    /// What `/readyz` and `/metrics` read: the listeners and the trace writer.
    pub fn with_ops(
        mut self,
        listeners: Vec<(SocketAddr, Arc<AtomicBool>)>,
        events: Arc<EventWriter>,
    ) -> LiveControl {
        self.listeners = listeners;
        self.events = Some(events);
        self
    }

    async fn tenant(&self, id: TenantId) -> ControlResult<Tenant> {
        self.store
            .get_tenant(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| ControlError::NotFound(format!("tenant {id}")))
    }

    /// The one-off (spam) domains of the tenant's latest block's evidence.
    async fn one_off_domains(&self, tenant: &Tenant) -> ControlResult<Vec<String>> {
        let evidence: Option<relayward_policy::evidence::Evidence> = self
            .store
            .list_transitions(tenant.id, 100)
            .await
            .map_err(internal)?
            .into_iter()
            .find(|r| r.to == TenantState::BlockedUnregistered)
            .and_then(|r| serde_json::from_str(&r.evidence).ok());
        Ok(evidence.map_or(Vec::new(), |e| crate::abuse::report::split_domains(&e).1))
    }

    /// The unblock checklist: the checks of [`way_back::unblock_checklist`] (the domains of the
    /// evidence) and the steps of the way back, each `[x]` (met) or `[ ]` (not yet); and
    /// whether a request for unblock would be taken now.
    async fn checklist(
        &self,
        tenant: &Tenant,
        state: TenantState,
    ) -> ControlResult<(Vec<String>, bool)> {
        use TenantState::*;
        let item = |met: bool, text: &str| format!("[{}] {text}", if met { "x" } else { " " });
        match state {
            BlockedUnregistered | UnderReview | Probation => {
                // Through the API the request itself is the attestation: only the evidence's
                // domains are left to check.
                let attested = Attestation {
                    domains_registered: true,
                    connectors_reviewed: true,
                    servers_secured: true,
                    forwarded_domains: Vec::new(),
                };
                let missing = way_back::unblock_checklist(&*self.store, tenant, &attested)
                    .await
                    .map_err(internal)?;
                let requested = state != BlockedUnregistered;
                let can_request = !requested && missing.is_empty();
                let mut out = vec![match missing.first() {
                    Some(m) => item(false, m),
                    None => item(
                        true,
                        "every unregistered sender domain of the evidence that looks like your own traffic is a verified accepted domain or declared forwarded",
                    ),
                }];
                let spam = self.one_off_domains(tenant).await?;
                if !spam.is_empty() {
                    out.push(item(
                        true,
                        &format!(
                            "spam senders seen, nothing to do: {} (one-off domains of the incident, never seen before it)",
                            spam.join(", ")
                        ),
                    ));
                }
                out.extend([
                    item(
                        requested,
                        "find the server or account that sent the mail (source IP addresses, connector and samples in the evidence) and secure it",
                    ),
                    item(
                        requested,
                        "review the connectors (their audit flags and the changes of the last 7 days in the evidence) and disable or delete any you did not set up",
                    ),
                    item(
                        requested,
                        &format!(
                            "ask for unblock: POST /v1/tenants/{}/request-unblock",
                            tenant.id
                        ),
                    ),
                    item(
                        state == Probation,
                        "the operator reviews the request and unblocks (probation with tightened thresholds)",
                    ),
                ]);
                Ok((out, can_request))
            }
            BlockedAll => Ok((
                vec![
                    item(
                        false,
                        "find and secure the servers that send through the relay (every message is refused with 5.7.705)",
                    ),
                    item(
                        false,
                        "contact the relay operator, who unblocks (probation with tightened thresholds)",
                    ),
                ],
                false,
            )),
            _ => Ok((Vec::new(), false)),
        }
    }

    fn message(env: &Envelope) -> QueuedMessage {
        QueuedMessage {
            queue_id: env.queue_id.to_string(),
            received_at: env.received_at,
            tenant_id: env.tenant_id,
            connector_id: env.connector_id,
            client_ip: env.client_ip.clone(),
            sender: env.sender.clone(),
            sender_class: env.sender_class.clone(),
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

    async fn envelope(&self, id: QueueId) -> ControlResult<Option<Envelope>> {
        match self.spool.blocking(move |s| s.read_envelope(&id)).await {
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
        let done = match op {
            QueueOperation::Hold => self.scheduler.hold(id).await,
            QueueOperation::Release => self.scheduler.release(id).await,
            QueueOperation::Retry => self.scheduler.retry_now(id).await,
            QueueOperation::Delete => self.scheduler.delete(id, false).await,
            QueueOperation::Bounce => self.scheduler.delete(id, true).await,
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
            applied: true,
            message: self.envelope(id).await?.as_ref().map(Self::message),
            dsn_queue_id: None,
        })
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
            tracing::warn!(tenant = tenant.id, error = %e, "transition note not audited");
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
            ControlError::NotAllowed(format!("request refused: {}", items.join("; ")))
        }
        WayBackError::Other(e) => internal(e),
    }
}

#[async_trait]
impl RelayControl for LiveControl {
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
        let live = self.abuse.status(t.id);
        if live.state != state && live.since_ms > since_ms.unwrap_or(0) {
            state = live.state;
            since_ms = Some(live.since_ms);
            probation_until_ms = live.probation_until_ms;
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
        let (checklist, can_request_unblock) = self.checklist(&t, state).await?;
        let refusal_reply = if state.blocks_all() {
            Some(relayward_core::reply::TENANT_BLOCKED.to_string())
        } else if state.blocks_unregistered() {
            Some(relayward_core::reply::BLOCKED_UNREGISTERED.to_string())
        } else {
            None
        };
        Ok(TenantStatusReport {
            tenant_id: t.id,
            state,
            since_ms,
            probation_until_ms,
            summary,
            evidence,
            refusal_reply,
            checklist,
            can_request_unblock,
            reputation: Some(self.abuse.reputation_status(t.id)),
        })
    }

    async fn request_unblock(
        &self,
        tenant: TenantId,
        request: &RequestUnblock,
        actor: &str,
    ) -> ControlResult<TenantStatusReport> {
        let t = self.tenant(tenant).await?;
        let attestation = Attestation {
            domains_registered: true,
            connectors_reviewed: true,
            servers_secured: true,
            forwarded_domains: request.forwarded_domains.clone(),
        };
        way_back::request_unblock(
            &*self.store,
            self.abuse.detector(),
            &t,
            &attestation,
            actor,
            self.abuse.now_ms(),
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
        way_back::operator_unblock(
            &*self.store,
            self.abuse.detector(),
            &t,
            actor,
            self.abuse.now_ms(),
        )
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
        let scope = match request.scope {
            BlockScope::All => detector::BlockScope::All,
            BlockScope::Unregistered => detector::BlockScope::Unregistered,
        };
        way_back::operator_block(
            &*self.store,
            self.abuse.detector(),
            &t,
            scope,
            actor,
            self.abuse.now_ms(),
        )
        .await
        .map_err(way_back_error)?;
        self.note(&t, actor, "tenant.block", Some(&request.reason))
            .await;
        self.tenant_status(t.id).await
    }

    async fn queue_list(&self, tenant: Option<TenantId>) -> ControlResult<Vec<QueuedMessage>> {
        let envelopes = self
            .spool
            .blocking(move |s| {
                let mut out = Vec::new();
                for id in s.scan()? {
                    // Delivered and removed between scan and read: skipped.
                    if let Ok(env) = s.read_envelope(&id) {
                        if tenant.is_none() || env.tenant_id == tenant {
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
        let now = self.abuse.now_ms();
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
            .lift_sender_restrictions(Some(tenant), &key, self.abuse.now_ms(), actor)
            .await
            .map_err(internal)?;
        if lifted.is_empty() {
            return Ok(false);
        }
        // The limiter lets the sender through from the next MAIL on.
        self.abuse
            .counters()
            .set_sender_restriction(tenant, &key, None);
        Ok(true)
    }

    fn directory(&self) -> Option<Arc<relayward_policy::Directory>> {
        Some(self.abuse.directory())
    }

    fn suppressions(&self) -> Option<Arc<relayward_policy::suppression::SuppressionList>> {
        Some(self.abuse.suppressions().list())
    }

    fn metrics_text(&self) -> Option<String> {
        let directory = self.abuse.directory();
        let queued = self.scheduler.queued();
        let delivering = self.scheduler.in_flight();
        Some(crate::metrics::render(&crate::metrics::Live {
            directory: &directory,
            queue_waiting: queued.saturating_sub(delivering),
            queue_delivering: delivering,
            sender_restrictions: self.abuse.restriction_count(),
            trace_backlog: self.events.as_ref().map_or(0, |e| e.backlog()),
        }))
    }

    async fn readiness(&self) -> Vec<relayward_admin::health::Check> {
        use relayward_admin::health::Check;
        let down: Vec<String> = self
            .listeners
            .iter()
            .filter(|(_, up)| !up.load(Ordering::SeqCst))
            .map(|(a, _)| a.to_string())
            .collect();
        let listeners = Check {
            name: "listeners".into(),
            ok: down.is_empty() && !self.listeners.is_empty(),
            detail: (!down.is_empty()).then(|| format!("not accepting: {}", down.join(", "))),
        };
        let spool = self.spool.clone();
        let probe = tokio::task::spawn_blocking(move || spool.probe_writable())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let spool = Check {
            name: "spool".into(),
            ok: probe.is_ok(),
            detail: probe.err().map(|e| format!("not writable: {e}")),
        };
        vec![listeners, spool]
    }

    fn sender_limit_verdict(
        &self,
        tenant: TenantId,
        sender: &Address,
    ) -> Option<Result<(), relayward_core::Reply>> {
        Some(self.abuse.peek_sender(tenant, sender))
    }
}
