//! The caller's identity.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The token presented (none for the operator's commands on the relay's own host).
    pub token_id: Option<i64>,
    #[schema(schema_with = crate::schema::token_scope)]
    pub scope: String,
    pub tenant_id: Option<i64>,
    /// How changes made with this token appear in the audit log.
    pub actor: String,
}
