//! Records of the abuse detector kept in the store: restriction status and transitions (with
//! their evidence as JSON, written by `relayward_policy::evidence`), per-sender restrictions,
//! per-tenant sender limits and forwarded-domain declarations. The store does not interpret
//! the JSON: it is the policy crate's to read.

use relayward_core::{ConnectorId, TenantId, TenantState, Timestamp};

/// A tenant's restriction status as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStatusRecord {
    pub tenant_id: TenantId,
    pub state: TenantState,
    /// When the tenant entered `state` (unix ms).
    pub since_ms: i64,
    /// Set while in probation.
    pub probation_until_ms: Option<i64>,
    pub reason: Option<String>,
    pub changed_by: Option<String>,
}

/// A restriction-state transition to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransition {
    pub tenant_id: TenantId,
    pub at_ms: i64,
    /// The state the caller saw; the store refuses (Conflict) when the tenant is no longer in it.
    pub from: TenantState,
    pub to: TenantState,
    /// `detector`, `tenant` or `operator`.
    pub cause: String,
    pub summary: String,
    pub probation_until_ms: Option<i64>,
    /// JSON evidence.
    pub evidence: String,
    /// JSON attestation of a tenant admin's unblock request.
    pub attestation: Option<String>,
}

/// A recorded transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRecord {
    pub id: i64,
    pub tenant_id: TenantId,
    pub at_ms: i64,
    pub from: TenantState,
    pub to: TenantState,
    pub actor: String,
    pub cause: String,
    pub summary: String,
    pub probation_until_ms: Option<i64>,
    pub evidence: String,
    pub attestation: Option<String>,
}

/// A change to a connector, from the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorChangeRecord {
    /// `None` for a change recorded before audit entries kept the connector's id, to a
    /// connector deleted since.
    pub connector_id: Option<ConnectorId>,
    pub at: Timestamp,
    pub actor: String,
    /// `connector.add`, `connector.update` or `connector.delete`.
    pub action: String,
    pub detail: String,
}

/// A sender refused with 5.1.8 by the per-sender limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSenderRestriction {
    pub tenant_id: TenantId,
    /// Lowercase `local@domain`.
    pub sender: String,
    pub since_ms: i64,
    /// `None`: until an administrator lifts it.
    pub until_ms: Option<i64>,
    /// Which limit (e.g. `messages_per_minute`).
    pub limit: String,
    /// `block_for_today`, `block` or `alert`.
    pub action: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderRestrictionRecord {
    pub id: i64,
    pub tenant_id: TenantId,
    pub sender: String,
    pub since_ms: i64,
    pub until_ms: Option<i64>,
    pub limit: String,
    pub action: String,
    pub reason: String,
    pub created_by: String,
    pub lifted_at_ms: Option<i64>,
    pub lifted_by: Option<String>,
}

impl SenderRestrictionRecord {
    /// Standing at `now_ms`: not lifted and not ended.
    pub fn standing(&self, now_ms: i64) -> bool {
        self.lifted_at_ms.is_none() && self.until_ms.is_none_or(|u| u > now_ms)
    }
}
