//! Suppression lists.

use relayward_core::{Suppression, SuppressionSource};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One entry of a suppression list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SuppressionView {
    /// null: the operator's global list.
    pub tenant_id: Option<i64>,
    /// Lowercase `local@domain`.
    pub address: String,
    #[schema(schema_with = crate::schema::suppression_source)]
    pub source: SuppressionSource,
    /// The remote's reply for a hard bounce, or what the administrator wrote.
    pub reason: String,
    /// Unix seconds.
    pub created_at: i64,
    pub created_by: String,
    /// Unix seconds; null: until removed.
    pub expires_at: Option<i64>,
}

impl From<Suppression> for SuppressionView {
    fn from(s: Suppression) -> Self {
        SuppressionView {
            tenant_id: s.tenant_id.map(i64::from),
            address: s.address,
            source: s.source,
            reason: s.reason,
            created_at: s.created_at.0,
            created_by: s.created_by,
            expires_at: s.expires_at.map(i64::from),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSuppression {
    pub address: String,
    /// Why (at most 500 characters); default `manual`.
    #[serde(default)]
    pub reason: Option<String>,
    /// For this many days (1 to 36500); absent: until removed.
    #[serde(default)]
    pub days: Option<u32>,
}
