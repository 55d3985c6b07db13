//! Suppression lists: recipients refused at RCPT with `550 5.1.10` for one tenant's mail (its
//! list, which its admin manages too) or for every tenant's (the operator's global list). Hard
//! bounces and complaints add to a tenant's list by themselves; people add and remove here,
//! audited as the token.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use relayward_core::{Suppression, SuppressionSource, TenantId};
use relayward_policy::suppression::{MANUAL_REASON, MAX_DAYS};

use super::tenant_for;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiPath};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{validate, AppState};
pub use relayward_api_types::suppressions::{AddSuppression, SuppressionView};

/// Longest `reason` accepted.
const REASON_MAX: usize = 500;

/// The list key of an address given in a request.
fn address(field: &str, input: &str) -> ApiResult<String> {
    let valid = validate::email(field, input)?;
    relayward_policy::suppression::parse_address_key(&valid)
        .ok_or_else(|| ApiError::invalid(field, format!("{input:?} is not a valid email address")))
}

async fn list_of(state: &AppState, tenant: Option<TenantId>) -> ApiResult<Vec<SuppressionView>> {
    let list = state
        .store()
        .list_suppressions(tenant, relayward_core::now())
        .await?;
    Ok(list.into_iter().map(SuppressionView::from).collect())
}

async fn add_to(
    state: &AppState,
    caller: &Caller,
    tenant: Option<TenantId>,
    body: AddSuppression,
) -> ApiResult<(StatusCode, Json<SuppressionView>)> {
    let address = address("address", &body.address)?;
    let reason = validate::comment("reason", body.reason.as_deref(), REASON_MAX)?
        .unwrap_or_else(|| MANUAL_REASON.to_string());
    let at = relayward_core::now();
    let expires_at = match body.days {
        None => None,
        Some(d) if (1..=MAX_DAYS).contains(&d) => Some(at + i64::from(d) * 86_400),
        Some(_) => {
            return Err(ApiError::invalid(
                "days",
                format!("days must be between 1 and {MAX_DAYS}"),
            ))
        }
    };
    let entry = Suppression {
        tenant_id: tenant,
        address,
        source: SuppressionSource::Manual,
        reason,
        created_at: at,
        created_by: caller.actor(),
        expires_at,
    };
    let stored = state
        .store()
        .add_suppression(&entry, &caller.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(stored.into())))
}

async fn remove_from(
    state: &AppState,
    caller: &Caller,
    tenant: Option<TenantId>,
    input: &str,
) -> ApiResult<StatusCode> {
    let address = address("address", input)?;
    let removed = state
        .store()
        .remove_suppression(tenant, &address, relayward_core::now(), &caller.actor())
        .await?;
    if !removed {
        return Err(ApiError::not_found(match tenant {
            Some(t) => format!("suppression of {address} for tenant {t}"),
            None => format!("global suppression of {address}"),
        }));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/suppressions", operation_id = "listTenantSuppressions", tag = "suppressions",
    summary = "The tenant's suppressed recipients",
    description = "Entries in force (expired ones are left out), by address. The operator's global list applies to the tenant too; see `GET /v1/suppressions`.",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's list", body = Vec<SuppressionView>),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_tenant(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
) -> ApiResult<Json<Vec<SuppressionView>>> {
    let t = tenant_for(&state, &caller, tenant_id).await?;
    Ok(Json(list_of(&state, Some(t.id)).await?))
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/suppressions", operation_id = "addTenantSuppression", tag = "suppressions",
    summary = "Suppress a recipient for the tenant's mail",
    description = "The tenant's mail to the address is refused at RCPT with `550 5.1.10 Recipient address suppressed after a hard bounce`, for `days` or until removed. An entry in force that lasts longer stays as it is (and is returned). Audited.",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    request_body = AddSuppression,
    responses(
        (status = 201, description = "The entry in force", body = SuppressionView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn add_tenant(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    ApiJson(body): ApiJson<AddSuppression>,
) -> ApiResult<(StatusCode, Json<SuppressionView>)> {
    let t = tenant_for(&state, &caller, tenant_id).await?;
    add_to(&state, &caller, Some(t.id), body).await
}

#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}/suppressions/{address}", operation_id = "removeTenantSuppression", tag = "suppressions",
    summary = "Let the tenant's mail reach a suppressed recipient again",
    description = "Applies to the next RCPT TO. Audited.",
    params(
        ("tenant_id" = i64, Path, description = "Tenant id"),
        ("address" = String, Path, description = "The suppressed address"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not on the tenant's list, or no such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an address", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn remove_tenant(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((tenant_id, address)): ApiPath<(TenantId, String)>,
) -> ApiResult<StatusCode> {
    let t = tenant_for(&state, &caller, tenant_id).await?;
    remove_from(&state, &caller, Some(t.id), &address).await
}

#[utoipa::path(
    get, path = "/v1/suppressions", operation_id = "listGlobalSuppressions", tag = "suppressions",
    summary = "The operator's global suppression list (operator only)",
    description = "Recipients refused for every tenant's mail. Entries in force, by address.",
    responses(
        (status = 200, description = "The global list", body = Vec<SuppressionView>),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant-admin token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_global(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<SuppressionView>>> {
    caller.require_operator("see the global suppression list")?;
    Ok(Json(list_of(&state, None).await?))
}

#[utoipa::path(
    post, path = "/v1/suppressions", operation_id = "addGlobalSuppression", tag = "suppressions",
    summary = "Suppress a recipient for every tenant (operator only)",
    description = "Every tenant's mail to the address is refused at RCPT with `550 5.1.10`, for `days` or until removed. Audited.",
    request_body = AddSuppression,
    responses(
        (status = 201, description = "The entry in force", body = SuppressionView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant-admin token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn add_global(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AddSuppression>,
) -> ApiResult<(StatusCode, Json<SuppressionView>)> {
    caller.require_operator("change the global suppression list")?;
    add_to(&state, &caller, None, body).await
}

#[utoipa::path(
    delete, path = "/v1/suppressions/{address}", operation_id = "removeGlobalSuppression", tag = "suppressions",
    summary = "Take a recipient off the global list (operator only)",
    description = "Applies to the next RCPT TO; tenants' own entries for the address stay. Audited.",
    params(("address" = String, Path, description = "The suppressed address")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant-admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not on the global list", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an address", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn remove_global(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(address): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_operator("change the global suppression list")?;
    remove_from(&state, &caller, None, &address).await
}
