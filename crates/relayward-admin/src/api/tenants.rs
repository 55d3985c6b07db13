//! Tenants: the operator creates and lists them; a tenant admin sees its own.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use relayward_core::TenantId;

use super::tenant_for;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiPath};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::validate;
use crate::AppState;
pub use relayward_api_types::tenants::{CreateTenant, TenantView};

#[utoipa::path(
    get, path = "/v1/tenants", operation_id = "listTenants", tag = "tenants",
    summary = "List every tenant (operator)",
    responses(
        (status = 200, description = "All tenants, by id", body = [TenantView]),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant-admin token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<TenantView>>> {
    caller.require_operator("list every tenant")?;
    let tenants = state.store().list_tenants().await?;
    Ok(Json(tenants.into_iter().map(TenantView::from).collect()))
}

#[utoipa::path(
    post, path = "/v1/tenants", operation_id = "createTenant", tag = "tenants",
    summary = "Create a tenant (operator)",
    request_body = CreateTenant,
    responses(
        (status = 201, description = "Created", body = TenantView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant-admin token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name or address; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> ApiResult<impl IntoResponse> {
    caller.require_operator("create tenants")?;
    let name = validate::tenant_name("name", &body.name)?;
    if body.admin_emails.len() > 20 {
        return Err(ApiError::invalid("admin_emails", "at most 20 addresses"));
    }
    let emails = body
        .admin_emails
        .iter()
        .enumerate()
        .map(|(i, e)| validate::email(&format!("admin_emails[{i}]"), e))
        .collect::<ApiResult<Vec<_>>>()?;
    let tenant = state
        .store()
        .create_tenant(&name, &emails, &caller.actor())
        .await?;
    let location = format!("/v1/tenants/{}", tenant.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(TenantView::from(tenant)),
    ))
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}", operation_id = "getTenant", tag = "tenants",
    summary = "Show a tenant",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
) -> ApiResult<Json<TenantView>> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    Ok(Json(tenant.into()))
}
