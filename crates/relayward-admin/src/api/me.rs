//! Who the presented token is.

use axum::Json;

use crate::auth::Caller;
use crate::problem::Problem;
pub use relayward_api_types::me::WhoAmI;

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
        tenant_id: caller.tenant().map(i64::from),
        actor: caller.actor(),
    })
}
