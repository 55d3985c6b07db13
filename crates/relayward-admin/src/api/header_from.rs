//! Declared header From domains: what a tenant's registered senders may put in the header From
//! without it counting as a mismatch (a service sending for a partner).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use relayward_core::{ConnectorId, HeaderFromAllowed, TenantId};
use serde::Deserialize;
use utoipa::IntoParams;

use super::tenant_for;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{validate, AppState};
pub use relayward_api_types::header_from::{DeclareHeaderFrom, HeaderFromView};

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConnectorFilter {
    /// The connector the declaration is limited to; absent: the one for any connector.
    pub connector_id: Option<i64>,
}

async fn check_connector(
    state: &AppState,
    tenant: TenantId,
    connector: Option<ConnectorId>,
) -> ApiResult<()> {
    if let Some(id) = connector {
        let owned = state
            .store()
            .list_connectors(Some(tenant))
            .await?
            .iter()
            .any(|c| c.id == id);
        if !owned {
            return Err(ApiError::invalid(
                "connector_id",
                format!("tenant {tenant} has no connector {id}"),
            ));
        }
    }
    Ok(())
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/header-from-domains", operation_id = "listHeaderFromDomains", tag = "domains",
    summary = "Declared header From domains",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The declarations", body = Vec<HeaderFromView>),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
) -> ApiResult<Json<Vec<HeaderFromView>>> {
    let t = tenant_for(&state, &caller, tenant_id).await?;
    let list = state.store().list_header_from_allowed(t.id).await?;
    Ok(Json(list.iter().map(HeaderFromView::from).collect()))
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/header-from-domains", operation_id = "declareHeaderFromDomain", tag = "domains",
    summary = "Declare a header From domain legitimate with the tenant's registered senders",
    description = "Mail with a registered envelope sender and this header From domain (through the connector, or any) is not a header From mismatch: it counts as registered and is not refused while the tenant is blocked from unregistered domains. Audited.",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    request_body = DeclareHeaderFrom,
    responses(
        (status = 201, description = "Declared", body = HeaderFromView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Declared already", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn declare(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    ApiJson(body): ApiJson<DeclareHeaderFrom>,
) -> ApiResult<(StatusCode, Json<HeaderFromView>)> {
    let t = tenant_for(&state, &caller, tenant_id).await?;
    let domain = validate::domain("domain", &body.domain)?;
    check_connector(&state, t.id, body.connector_id.map(ConnectorId)).await?;
    let a = HeaderFromAllowed {
        tenant_id: t.id,
        domain,
        connector_id: body.connector_id.map(ConnectorId),
        declared_at: relayward_core::now(),
        declared_by: caller.actor(),
    };
    state.store().allow_header_from(&a, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(HeaderFromView::from(&a))))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}/header-from-domains/{domain}", operation_id = "withdrawHeaderFromDomain", tag = "domains",
    summary = "Withdraw a header From declaration",
    params(
        ("tenant_id" = i64, Path, description = "Tenant id"),
        ("domain" = String, Path, description = "The header From domain"),
        ConnectorFilter,
    ),
    responses(
        (status = 204, description = "Withdrawn"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such declaration or tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a domain name", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn withdraw(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((tenant_id, domain)): ApiPath<(TenantId, String)>,
    ApiQuery(filter): ApiQuery<ConnectorFilter>,
) -> ApiResult<StatusCode> {
    let t = tenant_for(&state, &caller, tenant_id).await?;
    let domain = validate::domain("domain", &domain)?;
    state
        .store()
        .disallow_header_from(
            t.id,
            &domain,
            filter.connector_id.map(ConnectorId),
            &caller.actor(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
