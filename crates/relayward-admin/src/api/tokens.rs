//! API tokens: an operator manages any; a tenant admin only its own tenant's. The plaintext
//! token is in the creation answer and nowhere else.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use relayward_store::{ApiToken, TokenId, TokenScope};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{tenant_filter, tenant_for};
use crate::auth::{self, Caller, TokenInfo, LABEL_MAX};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{validate, AppState};
pub use relayward_api_types::tokens::{CreateToken, CreatedToken, NewTokenScope};
use relayward_core::TenantId;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokenParams {
    /// Only this tenant's tokens (a tenant-admin token always gets only its own).
    pub tenant_id: Option<i64>,
}

/// Token `id` as `caller` may see it: a tenant admin sees its tenant's tokens only.
async fn token_for(state: &AppState, caller: &Caller, id: TokenId) -> ApiResult<ApiToken> {
    match state.store().get_token(id).await? {
        Some(t) if caller.is_operator() || t.scope.tenant() == caller.tenant() => Ok(t),
        _ => Err(ApiError::not_found(format!("token {id}"))),
    }
}

#[utoipa::path(
    get, path = "/v1/tokens", operation_id = "listTokens", tag = "tokens",
    summary = "List tokens (never their secrets)",
    params(TokenParams),
    responses(
        (status = 200, description = "Tokens, by id, revoked ones included", body = [TokenInfo]),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A tenant admin asked for another tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<TokenParams>,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    let tenant = tenant_filter(&state, &caller, params.tenant_id.map(TenantId)).await?;
    Ok(Json(auth::list_tokens(state.store(), tenant).await?))
}

#[utoipa::path(
    post, path = "/v1/tokens", operation_id = "createToken", tag = "tokens",
    summary = "Create a token; the answer is the only time it is shown",
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created", body = CreatedToken),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant admin asked for an operator token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<impl IntoResponse> {
    let label = validate::text("label", &body.label, LABEL_MAX)?;
    let scope = match body.scope {
        NewTokenScope::Operator => {
            caller.require_operator("create operator tokens")?;
            if body.tenant_id.is_some() {
                return Err(ApiError::invalid(
                    "tenant_id",
                    "an operator token has no tenant",
                ));
            }
            TokenScope::Operator
        }
        NewTokenScope::Tenant => {
            let Some(t) = body.tenant_id.or(caller.tenant().map(i64::from)) else {
                return Err(ApiError::invalid(
                    "tenant_id",
                    "a tenant token needs tenant_id",
                ));
            };
            TokenScope::Tenant(tenant_for(&state, &caller, TenantId(t)).await?.id)
        }
    };
    let (id, token) = auth::create_token(state.store(), scope, &label, &caller.actor()).await?;
    let row = state
        .store()
        .get_token(id)
        .await?
        .ok_or_else(|| ApiError::internal(format!("token {id} vanished after creation")))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/tokens/{id}"))],
        Json(CreatedToken {
            info: crate::auth::token_info(&row),
            token,
        }),
    ))
}

#[utoipa::path(
    get, path = "/v1/tokens/{token_id}", operation_id = "getToken", tag = "tokens",
    summary = "Show a token (never its secret)",
    params(("token_id" = i64, Path, description = "Token id")),
    responses(
        (status = 200, description = "The token", body = TokenInfo),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such token, or not the tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<TokenId>,
) -> ApiResult<Json<TokenInfo>> {
    let t = token_for(&state, &caller, id).await?;
    Ok(Json(crate::auth::token_info(&t)))
}

#[utoipa::path(
    delete, path = "/v1/tokens/{token_id}", operation_id = "revokeToken", tag = "tokens",
    summary = "Revoke a token (at once, in every process)",
    params(("token_id" = i64, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked (or already revoked)"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such token, or not the tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<TokenId>,
) -> ApiResult<StatusCode> {
    let t = token_for(&state, &caller, id).await?;
    auth::revoke_token(state.store(), t.id, &caller.actor()).await?;
    state.verifier().forget(t.id);
    Ok(StatusCode::NO_CONTENT)
}
