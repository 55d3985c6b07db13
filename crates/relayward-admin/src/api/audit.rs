//! The audit log: every change, who made it. An operator reads all of it; a tenant admin the
//! entries about its own tenant.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{limit, tenant_filter};
use crate::auth::Caller;
use crate::extract::ApiQuery;
use crate::problem::{ApiResult, Problem};
use crate::AppState;
pub use relayward_api_types::audit::AuditView;
use relayward_core::TenantId;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this tenant's entries (a tenant-admin token always gets only its own).
    pub tenant_id: Option<i64>,
    /// 1 to 1000, default 100.
    pub limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/v1/audit", operation_id = "listAuditEntries", tag = "audit",
    summary = "The audit log, newest first",
    params(AuditParams),
    responses(
        (status = 200, description = "Entries, newest first", body = [AuditView]),
        (status = 400, description = "Bad parameter; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A tenant admin asked for another tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> ApiResult<Json<Vec<AuditView>>> {
    let limit = limit("limit", params.limit, 100, 1000)?;
    let tenant = tenant_filter(&state, &caller, params.tenant_id.map(TenantId)).await?;
    let entries = state.store().list_audit(tenant, limit).await?;
    Ok(Json(entries.into_iter().map(AuditView::from).collect()))
}
