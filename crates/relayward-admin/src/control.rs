//! What the admin API asks of the running relay: tenant restriction states (abuse detector),
//! per-sender restrictions and the queue. The binary implements [`RelayControl`] over its
//! detector, limiter and spool; the API does the access checks (token scope, 404 for another
//! tenant's objects) before it calls in, so an implementation never sees a foreign request.
//!
//! Auditing: tenant state changes ([`RelayControl::request_unblock`], [`RelayControl::unblock`],
//! [`RelayControl::block`]) are recorded by the implementation with the `actor` given, as
//! `Store::set_tenant_state` does with its evidence. Queue operations and the removal of a
//! sender restriction, which have no store record of their own, are audited by the API after
//! the implementation reports success.

use async_trait::async_trait;
use relayward_core::{TenantId, TenantState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No such object (404). `what` reads like `message 0123ABC`.
    #[error("{0} not found")]
    NotFound(String),
    /// The operation does not apply in the current state, e.g. unblocking an active tenant (409).
    #[error("{0}")]
    NotAllowed(String),
    /// A request value the implementation refuses (422).
    #[error("invalid {field}: {detail}")]
    Invalid { field: String, detail: String },
    /// The relay part that would do it is not running or not reachable (503).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

pub type ControlResult<T> = Result<T, ControlError>;

/// Where a tenant stands and why, for its admin and the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantStatusReport {
    pub tenant_id: i64,
    #[schema(schema_with = crate::schema::tenant_state)]
    pub state: TenantState,
    /// When the tenant entered `state` (Unix milliseconds), when known.
    pub since_ms: Option<i64>,
    /// End of the probation period, in state `probation`.
    pub probation_until_ms: Option<i64>,
    /// One line on the last transition: what caused it.
    pub summary: Option<String>,
    /// The evidence recorded with the last transition (signals, thresholds, top unregistered
    /// domains, sources, samples), as the detector stores it.
    #[schema(value_type = Option<Object>)]
    pub evidence: Option<serde_json::Value>,
    /// The reply the tenant's servers get for the mail refused in this state, e.g. `550
    /// 5.7.750 Service unavailable. Client blocked from sending from unregistered domains`.
    #[serde(default)]
    pub refusal_reply: Option<String>,
    /// What the tenant admin should fix before asking for unblock, each item starting with
    /// `[x] ` (met) or `[ ] ` (not yet).
    pub checklist: Vec<String>,
    /// Whether a request for unblock would be taken now: the tenant is blocked from
    /// unregistered domains and the checklist's checks of the evidence are met (the request
    /// itself attests the rest).
    #[serde(default)]
    pub can_request_unblock: bool,
    /// Rolling hard-bounce and complaint rates over 24 hours and 7 days, the level they
    /// reach (`good`, `warn`, `act`: high-risk routing, `block`) and why.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub reputation: Option<relayward_policy::reputation::ReputationStatus>,
    /// The tenant's latest state changes, newest first (at most 20).
    #[serde(default)]
    pub transitions: Vec<TransitionView>,
    /// Domains the tenant declared it forwards for others (with a request for unblock).
    #[serde(default)]
    pub forwarded_domains: Vec<String>,
}

/// One change of a tenant's restriction state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransitionView {
    pub id: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    #[schema(schema_with = crate::schema::tenant_state)]
    pub from: TenantState,
    #[schema(schema_with = crate::schema::tenant_state)]
    pub to: TenantState,
    /// `detector`, `token:<id>/operator`, `cli:<user>`...
    pub actor: String,
    /// `detector`, `tenant` (a request for unblock) or `operator`.
    pub cause: String,
    pub summary: String,
    pub probation_until_ms: Option<i64>,
}

/// The tenant admin attests that the cause is fixed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestUnblock {
    /// What was fixed (at most 2000 characters).
    #[serde(default)]
    pub comment: Option<String>,
    /// Domains of the evidence whose mail the tenant forwards for others (mailing lists,
    /// forwarding rules): declared with the request, they no longer count against it.
    #[serde(default)]
    pub forwarded_domains: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Unblock {
    /// Why (at most 2000 characters); recorded with the transition.
    #[serde(default)]
    pub reason: Option<String>,
}

pub use relayward_policy::detector::BlockScope;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Block {
    pub scope: BlockScope,
    /// Why (1 to 2000 characters); recorded with the transition.
    pub reason: String,
}

/// A spooled message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueuedMessage {
    pub queue_id: String,
    /// Unix seconds.
    pub received_at: i64,
    pub tenant_id: Option<i64>,
    pub connector_id: Option<i64>,
    pub client_ip: String,
    /// Empty for the null sender.
    pub sender: String,
    /// registered, unregistered or null.
    pub sender_class: String,
    pub message_id: Option<String>,
    pub size: u64,
    pub held: bool,
    pub recipients: Vec<QueuedRecipient>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueuedRecipient {
    pub address: String,
    /// queued, deferred, held, delivered, bounced, ...
    pub status: String,
    pub attempts: u32,
    pub last_reply: Option<String>,
    /// Unix seconds.
    pub next_attempt_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueOperation {
    Hold,
    Release,
    Retry,
    Delete,
    /// Delete and send the sender a DSN for every pending recipient.
    Bounce,
}

impl QueueOperation {
    pub fn as_str(&self) -> &'static str {
        match self {
            QueueOperation::Hold => "hold",
            QueueOperation::Release => "release",
            QueueOperation::Retry => "retry",
            QueueOperation::Delete => "delete",
            QueueOperation::Bounce => "bounce",
        }
    }
}

/// What a queue operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueOpOutcome {
    pub queue_id: String,
    pub operation: QueueOperation,
    /// `true`: done; `false`: handed to the scheduler, which applies it within seconds.
    pub applied: bool,
    /// The message afterwards, when it is still queued and known.
    pub message: Option<QueuedMessage>,
    /// The DSN queued for the sender (bounce).
    pub dsn_queue_id: Option<String>,
}

/// A sender refused with 5.1.8 by the per-sender limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SenderRestrictionView {
    pub sender: String,
    pub since_ms: i64,
    /// `null`: until an administrator lifts it.
    pub until_ms: Option<i64>,
    /// The limit that was exceeded, e.g. `recipients per day`.
    pub limit: String,
    /// block_for_today, block or alert.
    pub action: String,
    pub reason: String,
}

/// The relay's side of the admin API; implemented by the binary over the detector, the sender
/// limiter and the spool. See the module docs for who audits what.
#[async_trait]
pub trait RelayControl: Send + Sync + 'static {
    async fn tenant_status(&self, tenant: TenantId) -> ControlResult<TenantStatusReport>;
    /// `blocked_unregistered` -> `under_review`; [`ControlError::NotAllowed`] from other states.
    async fn request_unblock(
        &self,
        tenant: TenantId,
        request: &RequestUnblock,
        actor: &str,
    ) -> ControlResult<TenantStatusReport>;
    /// Operator: a blocked or under-review tenant -> `probation`.
    async fn unblock(
        &self,
        tenant: TenantId,
        request: &Unblock,
        actor: &str,
    ) -> ControlResult<TenantStatusReport>;
    /// Operator: block by hand.
    async fn block(
        &self,
        tenant: TenantId,
        request: &Block,
        actor: &str,
    ) -> ControlResult<TenantStatusReport>;

    /// Spooled messages, of one tenant when `tenant` is given.
    async fn queue_list(&self, tenant: Option<TenantId>) -> ControlResult<Vec<QueuedMessage>>;
    async fn queue_show(&self, queue_id: &str) -> ControlResult<Option<QueuedMessage>>;
    async fn queue_hold(&self, queue_id: &str, actor: &str) -> ControlResult<QueueOpOutcome>;
    async fn queue_release(&self, queue_id: &str, actor: &str) -> ControlResult<QueueOpOutcome>;
    /// Attempt every pending recipient now.
    async fn queue_retry(&self, queue_id: &str, actor: &str) -> ControlResult<QueueOpOutcome>;
    /// Remove the message; with `send_dsn` the sender gets a DSN for each pending recipient.
    async fn queue_delete(
        &self,
        queue_id: &str,
        send_dsn: bool,
        actor: &str,
    ) -> ControlResult<QueueOpOutcome>;

    /// The tenant's senders currently restricted by the per-sender limits.
    async fn sender_restrictions(
        &self,
        tenant: TenantId,
    ) -> ControlResult<Vec<SenderRestrictionView>>;
    /// Lifts a restriction; `false` when the sender was not restricted. `sender` is a
    /// validated address with its domain lowercased.
    async fn remove_sender_restriction(
        &self,
        tenant: TenantId,
        sender: &str,
        actor: &str,
    ) -> ControlResult<bool>;

    /// The relay's live directory snapshot; `None` without a relay (the API then loads the
    /// store's).
    fn directory(&self) -> Option<std::sync::Arc<relayward_policy::Directory>> {
        None
    }

    /// The relay's live suppression lists; `None` without a relay (the API then loads the
    /// store's).
    fn suppressions(
        &self,
    ) -> Option<std::sync::Arc<relayward_policy::suppression::SuppressionList>> {
        None
    }

    /// The per-sender limits' verdict for one more message, without counting it or
    /// restricting anyone; `None` without a relay.
    fn sender_limit_verdict(
        &self,
        _tenant: TenantId,
        _sender: &relayward_core::Address,
    ) -> Option<Result<(), relayward_core::Reply>> {
        None
    }

    /// Standing sender restrictions as (tenant, sender key), for answers without a relay.
    async fn restricted_senders(&self) -> std::collections::HashSet<(TenantId, String)> {
        Default::default()
    }

    /// The relay's metrics in the Prometheus text format; `None` without a relay.
    /// The per-sender limits of tenants without their own (`[detector.sender_limits]`).
    fn default_sender_limits(&self) -> relayward_policy::limits::SenderLimits {
        relayward_policy::limits::SenderLimits::default()
    }

    fn metrics_text(&self) -> Option<String> {
        None
    }

    /// The relay's own readiness checks (listeners, spool); the API adds the store's.
    async fn readiness(&self) -> Vec<crate::health::Check> {
        vec![crate::health::Check {
            name: "relay".into(),
            ok: false,
            detail: Some("the relay is not running".into()),
        }]
    }
}

/// A [`RelayControl`] for an API running without the relay (tests, `relayward serve` with the
/// relay off): everything answers 503.
pub struct Unavailable;

#[async_trait]
impl RelayControl for Unavailable {
    async fn tenant_status(&self, _: TenantId) -> ControlResult<TenantStatusReport> {
        Err(unavailable())
    }
    async fn request_unblock(
        &self,
        _: TenantId,
        _: &RequestUnblock,
        _: &str,
    ) -> ControlResult<TenantStatusReport> {
        Err(unavailable())
    }
    async fn unblock(
        &self,
        _: TenantId,
        _: &Unblock,
        _: &str,
    ) -> ControlResult<TenantStatusReport> {
        Err(unavailable())
    }
    async fn block(&self, _: TenantId, _: &Block, _: &str) -> ControlResult<TenantStatusReport> {
        Err(unavailable())
    }
    async fn queue_list(&self, _: Option<TenantId>) -> ControlResult<Vec<QueuedMessage>> {
        Err(unavailable())
    }
    async fn queue_show(&self, _: &str) -> ControlResult<Option<QueuedMessage>> {
        Err(unavailable())
    }
    async fn queue_hold(&self, _: &str, _: &str) -> ControlResult<QueueOpOutcome> {
        Err(unavailable())
    }
    async fn queue_release(&self, _: &str, _: &str) -> ControlResult<QueueOpOutcome> {
        Err(unavailable())
    }
    async fn queue_retry(&self, _: &str, _: &str) -> ControlResult<QueueOpOutcome> {
        Err(unavailable())
    }
    async fn queue_delete(&self, _: &str, _: bool, _: &str) -> ControlResult<QueueOpOutcome> {
        Err(unavailable())
    }
    async fn sender_restrictions(&self, _: TenantId) -> ControlResult<Vec<SenderRestrictionView>> {
        Err(unavailable())
    }
    async fn remove_sender_restriction(
        &self,
        _: TenantId,
        _: &str,
        _: &str,
    ) -> ControlResult<bool> {
        Err(unavailable())
    }
}

fn unavailable() -> ControlError {
    ControlError::Unavailable("the relay is not running in this process".into())
}
