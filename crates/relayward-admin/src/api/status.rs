//! A tenant's restriction state and its way back (request unblock; the operator's unblock and
//! block), and the senders restricted by the per-sender limits. Served by the relay through
//! [`RelayControl`](crate::RelayControl) once the access rules here have passed.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use relayward_core::TenantId;

use super::tenant_for;
use crate::auth::Caller;
use crate::control::{Block, RequestUnblock, SenderRestrictionView, TenantStatusReport, Unblock};
use crate::extract::{ApiJson, ApiPath, OptionalJson};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{validate, AppState};

const TEXT_MAX: usize = 2000;
const FORWARDED_MAX: usize = 100;

#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/status", operation_id = "getTenantStatus", tag = "status",
    summary = "Restriction state, why, and what to fix",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's status", body = TenantStatusReport),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
) -> ApiResult<Json<TenantStatusReport>> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    Ok(Json(state.control().tenant_status(tenant.id).await?))
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/request-unblock", operation_id = "requestTenantUnblock", tag = "status",
    summary = "Attest that the cause is fixed and ask for unblock",
    description = "From `blocked_unregistered` to `under_review`: unregistered senders stay \
        refused until the operator decides.",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    request_body(content = Option<RequestUnblock>, description = "Optional"),
    responses(
        (status = 200, description = "The status afterwards", body = TenantStatusReport),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not possible in the tenant's state", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn request_unblock(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    OptionalJson(body): OptionalJson<RequestUnblock>,
) -> ApiResult<Json<TenantStatusReport>> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    if body.forwarded_domains.len() > FORWARDED_MAX {
        return Err(ApiError::invalid(
            "forwarded_domains",
            format!("at most {FORWARDED_MAX} domains"),
        ));
    }
    let request = RequestUnblock {
        comment: validate::comment("comment", body.comment.as_deref(), TEXT_MAX)?,
        forwarded_domains: body
            .forwarded_domains
            .iter()
            .enumerate()
            .map(|(i, d)| validate::domain(&format!("forwarded_domains[{i}]"), d))
            .collect::<ApiResult<Vec<_>>>()?,
    };
    let report = state
        .control()
        .request_unblock(tenant.id, &request, &caller.actor())
        .await?;
    Ok(Json(report))
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/unblock", operation_id = "unblockTenant", tag = "status",
    summary = "Lift a block: the tenant goes on probation (operator)",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    request_body(content = Option<Unblock>, description = "Optional"),
    responses(
        (status = 200, description = "The status afterwards", body = TenantStatusReport),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant-admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The tenant is not blocked", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn unblock(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    OptionalJson(body): OptionalJson<Unblock>,
) -> ApiResult<Json<TenantStatusReport>> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    caller.require_operator("unblock a tenant; ask for it with request-unblock")?;
    let request = Unblock {
        reason: validate::comment("reason", body.reason.as_deref(), TEXT_MAX)?,
    };
    let report = state
        .control()
        .unblock(tenant.id, &request, &caller.actor())
        .await?;
    Ok(Json(report))
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/block", operation_id = "blockTenant", tag = "status",
    summary = "Block a tenant by hand (operator)",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    request_body = Block,
    responses(
        (status = 200, description = "The status afterwards", body = TenantStatusReport),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant-admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already in that state", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn block(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    ApiJson(body): ApiJson<Block>,
) -> ApiResult<Json<TenantStatusReport>> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    caller.require_operator("block a tenant")?;
    let request = Block {
        scope: body.scope,
        reason: validate::text("reason", &body.reason, TEXT_MAX)?,
    };
    let report = state
        .control()
        .block(tenant.id, &request, &caller.actor())
        .await?;
    Ok(Json(report))
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/sender-restrictions", operation_id = "listSenderRestrictions", tag = "status",
    summary = "Senders refused by the per-sender limits (5.1.8)",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The restricted senders", body = [SenderRestrictionView]),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn sender_restrictions(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
) -> ApiResult<Json<Vec<SenderRestrictionView>>> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    Ok(Json(state.control().sender_restrictions(tenant.id).await?))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}/sender-restrictions/{sender}", operation_id = "deleteSenderRestriction", tag = "status",
    summary = "Lift a sender's restriction",
    params(
        ("tenant_id" = i64, Path, description = "Tenant id"),
        ("sender" = String, Path, description = "The restricted address"),
    ),
    responses(
        (status = 204, description = "Lifted"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such restriction or tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn remove_sender_restriction(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((tenant_id, sender)): ApiPath<(TenantId, String)>,
) -> ApiResult<StatusCode> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    let sender = validate::email("sender", &sender)?;
    let actor = caller.actor();
    if !state
        .control()
        .remove_sender_restriction(tenant.id, &sender, &actor)
        .await?
    {
        return Err(ApiError::not_found(format!(
            "restriction of sender {sender} of tenant {}",
            tenant.id
        )));
    }
    state
        .store()
        .audit(
            &actor,
            "sender.unrestrict",
            Some(tenant.id),
            &format!("sender {sender}"),
            "restriction lifted",
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
