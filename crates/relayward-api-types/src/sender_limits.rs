//! A tenant's per-sender limits.

use relayward_policy::limits::{LimitAction, SenderLimits};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The limits that apply to each sender of the tenant. A limit of 0 is no limit; windows slide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SenderLimitsView {
    pub external_recipients_per_hour: u64,
    pub recipients_per_day: u64,
    pub messages_per_minute: u64,
    /// What happens to a sender over a limit: `block_for_today`, `block` or `alert`.
    #[schema(schema_with = crate::schema::limit_action)]
    pub action: LimitAction,
    /// `true`: the tenant's own limits; `false`: the relay's defaults.
    pub own: bool,
}

impl SenderLimitsView {
    pub fn of(limits: SenderLimits, own: bool) -> Self {
        SenderLimitsView {
            external_recipients_per_hour: limits.external_recipients_per_hour,
            recipients_per_day: limits.recipients_per_day,
            messages_per_minute: limits.messages_per_minute,
            action: limits.action,
            own,
        }
    }
}

/// Absent fields keep their current value (the tenant's own, else the default); `reset` goes
/// back to the relay's defaults and takes no other field.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSenderLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_recipients_per_hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::limit_action)]
    pub action: Option<LimitAction>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}
