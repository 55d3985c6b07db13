//! Admin API tokens.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NewTokenScope {
    Operator,
    Tenant,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// `operator` (operator only) or `tenant`.
    pub scope: NewTokenScope,
    /// The tenant of a `tenant` token; a tenant admin may leave it out (its own).
    pub tenant_id: Option<i64>,
    /// What the token is for, 1 to 100 characters.
    pub label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer token. Shown this once: only a hash of it is kept.
    pub token: String,
}

/// A token as listed: everything but its secret and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    /// `operator` or `tenant`.
    #[schema(schema_with = crate::schema::token_scope)]
    pub scope: String,
    /// The tenant of a tenant-admin token.
    pub tenant_id: Option<i64>,
    pub label: String,
    /// How the token starts (`rw_<id>_`), to recognise it.
    pub token_prefix: String,
    /// Unix seconds.
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    /// Unix seconds, to the minute.
    pub last_used_at: Option<i64>,
}
