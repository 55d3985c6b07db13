//! A tenant's restriction state and its way back; the queue; sender restrictions.

use relayward_core::TenantState;

pub use relayward_policy::detector::BlockScope;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
    #[schema(value_type = String)]
    pub sender_class: relayward_core::SenderClass,
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
