//! Traffic per hour, per tenant and overall.

use relayward_core::TenantState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The counts of one clock hour (or of a whole range).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrafficCounts {
    /// Messages accepted from senders of the tenant's verified accepted domains.
    pub registered: u64,
    /// Messages accepted from senders of other domains.
    pub unregistered: u64,
    /// Messages accepted with the null sender (`MAIL FROM:<>`).
    pub null_sender: u64,
    /// Commands refused (MAIL, RCPT, end of DATA), whatever the reason.
    pub refused: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrafficPoint {
    /// Start of the hour, Unix milliseconds.
    pub start_ms: i64,
    #[serde(flatten)]
    pub counts: TrafficCounts,
}

/// A restriction-state change, to mark on the time axis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransitionMark {
    /// Unix milliseconds.
    pub at_ms: i64,
    #[schema(schema_with = crate::schema::tenant_state)]
    pub from: TenantState,
    #[schema(schema_with = crate::schema::tenant_state)]
    pub to: TenantState,
    /// `detector`, or the token or CLI user that made it.
    pub actor: String,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantTraffic {
    pub tenant_id: i64,
    /// Start of the oldest hour, Unix milliseconds.
    pub from_ms: i64,
    /// End of the current hour, Unix milliseconds.
    pub until_ms: i64,
    /// Every hour of the range, oldest first, hours without traffic included.
    pub hours: Vec<TrafficPoint>,
    /// The transitions within the range, oldest first.
    pub transitions: Vec<TransitionMark>,
    /// The whole range.
    pub totals: TrafficCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantTrafficTotals {
    pub tenant_id: i64,
    #[serde(flatten)]
    pub counts: TrafficCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrafficOverview {
    pub from_ms: i64,
    pub until_ms: i64,
    /// Tenants with traffic in the range, by id.
    pub tenants: Vec<TenantTrafficTotals>,
}
