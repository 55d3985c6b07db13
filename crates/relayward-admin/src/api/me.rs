//! Who the presented token is.

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::problem::Problem;

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

#[utoipa::path(
    get, path = "/v1/me", operation_id = "getMe", tag = "tokens",
    summary = "The calling token's identity and scope",
    responses(
        (status = 200, description = "The token", body = WhoAmI),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        token_id: caller.token,
        scope: caller.scope.kind().to_string(),
        tenant_id: caller.tenant(),
        actor: caller.actor(),
    })
}
