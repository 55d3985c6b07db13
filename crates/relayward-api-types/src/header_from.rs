//! Header From domains declared legitimate with a tenant's registered senders.

use relayward_core::HeaderFromAllowed;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeaderFromView {
    /// The header From domain (A-labels, lowercase).
    pub domain: String,
    /// Only through this connector; null: any of the tenant's.
    pub connector_id: Option<i64>,
    /// Unix seconds.
    pub declared_at: i64,
    pub declared_by: String,
}

impl From<&HeaderFromAllowed> for HeaderFromView {
    fn from(a: &HeaderFromAllowed) -> Self {
        HeaderFromView {
            domain: a.domain.clone(),
            connector_id: a.connector_id.map(i64::from),
            declared_at: a.declared_at.0,
            declared_by: a.declared_by.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclareHeaderFrom {
    pub domain: String,
    #[serde(default)]
    pub connector_id: Option<i64>,
}
