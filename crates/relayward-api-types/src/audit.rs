//! The audit log of administrative changes.

use relayward_core::AuditEntry;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Who: `token:<id>/operator`, `token:<id>/tenant:<tenant id>`, `cli:<user>`, `detector`...
    pub actor: String,
    /// e.g. `connector.update`
    pub action: String,
    pub tenant_id: Option<i64>,
    pub object: String,
    pub detail: String,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        AuditView {
            id: e.id,
            at: e.at.0,
            actor: e.actor,
            action: e.action,
            tenant_id: e.tenant_id.map(i64::from),
            object: e.object,
            detail: e.detail,
        }
    }
}
