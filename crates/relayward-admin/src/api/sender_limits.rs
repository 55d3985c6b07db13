//! A tenant's per-sender limits: its own, or the relay's defaults (`[detector.sender_limits]`).

use axum::extract::State;
use axum::Json;
use relayward_core::TenantId;
use relayward_policy::limits::SenderLimits;

use super::tenant_for;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiPath};
use crate::problem::{ApiResult, Problem};
use crate::AppState;
pub use relayward_api_types::sender_limits::{SenderLimitsView, SetSenderLimits};

/// The tenant's own limits, if it has any.
async fn own(state: &AppState, tenant: TenantId) -> ApiResult<Option<SenderLimits>> {
    let stored = state
        .store()
        .tenant_sender_limits()
        .await?
        .into_iter()
        .find(|(t, _)| *t == tenant);
    match stored {
        Some((_, json)) => serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| crate::problem::ApiError::internal(format!("stored sender limits: {e}"))),
        None => Ok(None),
    }
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/sender-limits", operation_id = "getSenderLimits", tag = "status",
    summary = "The per-sender limits that apply to the tenant's senders",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The limits", body = SenderLimitsView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
) -> ApiResult<Json<SenderLimitsView>> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    Ok(Json(match own(&state, tenant.id).await? {
        Some(l) => SenderLimitsView::of(l, true),
        None => SenderLimitsView::of(state.control().default_sender_limits(), false),
    }))
}

#[utoipa::path(
    put, path = "/v1/tenants/{tenant_id}/sender-limits", operation_id = "setSenderLimits", tag = "status",
    summary = "Set the tenant's own per-sender limits, or go back to the defaults (operator)",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    request_body = SetSenderLimits,
    responses(
        (status = 200, description = "The limits afterwards", body = SenderLimitsView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant-admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn set(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    ApiJson(body): ApiJson<SetSenderLimits>,
) -> ApiResult<Json<SenderLimitsView>> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    caller.require_operator("set a tenant's sender limits")?;
    let changing = body.action.is_some()
        || body.external_recipients_per_hour.is_some()
        || body.recipients_per_day.is_some()
        || body.messages_per_minute.is_some();
    if body.reset {
        if changing {
            return Err(crate::problem::ApiError::invalid(
                "reset",
                "reset takes no other field",
            ));
        }
        state
            .store()
            .set_tenant_sender_limits(tenant.id, None, &caller.actor())
            .await?;
        return Ok(Json(SenderLimitsView::of(
            state.control().default_sender_limits(),
            false,
        )));
    }
    let current = own(&state, tenant.id).await?;
    if !changing {
        return Ok(Json(match current {
            Some(l) => SenderLimitsView::of(l, true),
            None => SenderLimitsView::of(state.control().default_sender_limits(), false),
        }));
    }
    let mut l = current.unwrap_or_else(|| state.control().default_sender_limits());
    if let Some(a) = body.action {
        l.action = a;
    }
    if let Some(n) = body.external_recipients_per_hour {
        l.external_recipients_per_hour = n;
    }
    if let Some(n) = body.recipients_per_day {
        l.recipients_per_day = n;
    }
    if let Some(n) = body.messages_per_minute {
        l.messages_per_minute = n;
    }
    let json = serde_json::to_string(&l).map_err(crate::problem::ApiError::internal)?;
    state
        .store()
        .set_tenant_sender_limits(tenant.id, Some(&json), &caller.actor())
        .await?;
    Ok(Json(SenderLimitsView::of(l, true)))
}
