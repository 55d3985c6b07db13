//! Accepted domains: add (answers the TXT record to publish), verify by DNS, list, show, remove.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use relayward_core::{AcceptedDomain, DomainKind, TenantId};
use relayward_store::NewDomain;

use super::tenant_for;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiPath};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{dns, validate, AppState};
pub use relayward_api_types::domains::{
    AddDomain, DomainView, TxtRecord, VerifyResult, VerifyStatus,
};
use relayward_policy::ownership::TxtCheck;

async fn domain_for(
    state: &AppState,
    caller: &Caller,
    tenant_id: TenantId,
    raw: &str,
) -> ApiResult<AcceptedDomain> {
    let tenant = tenant_for(state, caller, tenant_id).await?;
    let domain = validate::domain("domain", raw)?;
    state
        .store()
        .get_domain(tenant.id, &domain)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("domain {domain} of tenant {}", tenant.id)))
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/domains", operation_id = "listDomains", tag = "domains",
    summary = "List a tenant's accepted domains",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The domains, by name", body = [DomainView]),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
) -> ApiResult<Json<Vec<DomainView>>> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    let domains = state.store().list_domains(Some(tenant.id)).await?;
    Ok(Json(domains.iter().map(DomainView::from).collect()))
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/domains", operation_id = "createDomain", tag = "domains",
    summary = "Add an accepted domain; answers the TXT record to publish",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    request_body = AddDomain,
    responses(
        (status = 201, description = "Added (pending until verified, unless the operator attested it)", body = DomainView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant admin asked for `verified`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The tenant has it already, or another tenant verified it", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid domain or kind; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn add(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    ApiJson(body): ApiJson<AddDomain>,
) -> ApiResult<impl IntoResponse> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    let domain = validate::domain("domain", &body.domain)?;
    let kind = match body.kind.as_deref() {
        None => DomainKind::Authoritative,
        Some(k) => validate::domain_kind("kind", k)?,
    };
    if body.verified {
        caller.require_operator("attest domain ownership; publish the TXT record and verify")?;
    }
    let d = state
        .store()
        .add_domain(
            NewDomain {
                tenant_id: tenant.id,
                domain,
                kind,
                match_subdomains: body.match_subdomains,
                verified: body.verified,
            },
            &caller.actor(),
        )
        .await?;
    let location = format!("/v1/tenants/{}/domains/{}", tenant.id, d.domain);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(DomainView::from(&d)),
    ))
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/domains/{domain}", operation_id = "getDomain", tag = "domains",
    summary = "Show an accepted domain",
    params(
        ("tenant_id" = i64, Path, description = "Tenant id"),
        ("domain" = String, Path, description = "The domain (an internationalized name is matched by its A-labels)"),
    ),
    responses(
        (status = 200, description = "The domain", body = DomainView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such domain or tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a domain name", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((tenant_id, domain)): ApiPath<(TenantId, String)>,
) -> ApiResult<Json<DomainView>> {
    let d = domain_for(&state, &caller, tenant_id, &domain).await?;
    Ok(Json(DomainView::from(&d)))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}/domains/{domain}", operation_id = "deleteDomain", tag = "domains",
    summary = "Remove an accepted domain",
    params(
        ("tenant_id" = i64, Path, description = "Tenant id"),
        ("domain" = String, Path, description = "The domain"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such domain or tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a domain name", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((tenant_id, domain)): ApiPath<(TenantId, String)>,
) -> ApiResult<StatusCode> {
    let d = domain_for(&state, &caller, tenant_id, &domain).await?;
    state.store().remove_domain(d.id, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/domains/{domain}/verify", operation_id = "verifyDomain", tag = "domains",
    summary = "Look up the domain's TXT records and verify it when the expected one is there",
    description = "Answers 200 with what DNS showed: `verified`, `not_found` (no TXT record), \
        `wrong_token` (TXT records, none the expected one) or `unchecked` (DNS failed or timed \
        out: try again; nothing changed).",
    params(
        ("tenant_id" = i64, Path, description = "Tenant id"),
        ("domain" = String, Path, description = "The domain"),
    ),
    responses(
        (status = 200, description = "What the lookup found", body = VerifyResult),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such domain or tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The record is there but another tenant verified the domain first", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a domain name", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn verify(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((tenant_id, domain)): ApiPath<(TenantId, String)>,
) -> ApiResult<Json<VerifyResult>> {
    let d = domain_for(&state, &caller, tenant_id, &domain).await?;
    let expected = TxtRecord::of(&d);
    let result = |status, verified, records_found, detail: String| VerifyResult {
        domain: d.domain.clone(),
        status,
        verified,
        expected_record: expected.clone(),
        records_found,
        detail,
    };
    let kept = if d.verified {
        " (the domain stays verified)"
    } else {
        ""
    };
    let records = match dns::lookup_txt(&state.dns(), &d.domain).await {
        Ok(records) => records,
        Err(e) => {
            return Ok(Json(result(
                VerifyStatus::Unchecked,
                d.verified,
                0,
                format!("could not check: {e}; nothing changed, try again later"),
            )))
        }
    };
    let n = records.len();
    let check = relayward_policy::ownership::check_txt(&records, &d.verification_token);
    if check == TxtCheck::Verified {
        if !d.verified {
            state
                .store()
                .set_domain_verified(d.id, true, &caller.actor())
                .await?;
        }
        return Ok(Json(result(
            VerifyStatus::Verified,
            true,
            n,
            format!(
                "{} is verified: \"{}\" found among {n} TXT record(s)",
                d.domain, expected.value
            ),
        )));
    }
    if check == TxtCheck::NotFound {
        return Ok(Json(result(
            VerifyStatus::NotFound,
            d.verified,
            0,
            format!(
                "no TXT record at {}; publish \"{}\"{kept}",
                d.domain, expected.value
            ),
        )));
    }
    let other_token = check == TxtCheck::WrongToken { other_token: true };
    Ok(Json(result(
        VerifyStatus::WrongToken,
        d.verified,
        n,
        format!(
            "{n} TXT record(s) at {}, none is \"{}\"{}{kept}",
            d.domain,
            expected.value,
            if other_token {
                "; a relayward-verification record with another token is there"
            } else {
                ""
            }
        ),
    )))
}
