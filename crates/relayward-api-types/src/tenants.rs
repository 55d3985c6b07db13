//! Tenants.

use relayward_core::{Tenant, TenantState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    pub id: i64,
    pub name: String,
    #[schema(schema_with = crate::schema::tenant_state)]
    pub state: TenantState,
    pub admin_emails: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        TenantView {
            id: t.id.0,
            name: t.name,
            state: t.state,
            admin_emails: t.admin_emails,
            created_at: t.created_at.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1 to 64 letters, digits, '-', '_' or '.'; not all digits.
    pub name: String,
    /// Addresses told about blocks and alerts.
    #[serde(default)]
    pub admin_emails: Vec<String>,
}
