//! Inbound connectors, each shown with its audit flags: what an operator reviewing a tenant (or
//! a tenant admin after a block) should look at first.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use ipnet::IpNet;
use relayward_core::{now, Connector, ConnectorId, SenderClass, TenantId, Timestamp};
use relayward_store::NewConnector;

use super::tenant_for;
use crate::auth::{blocking, hash_secret, Caller};
use crate::extract::{ApiJson, ApiPath};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{validate, AppState};
pub use relayward_api_types::connectors::{ChangeConnector, ConnectorView, CreateConnector};
use relayward_policy::connector_audit::{self, AuditFacts};

const MAX_RANGES: usize = 100;
const NAME_MAX: usize = 64;

fn view(c: &Connector, now: Timestamp, facts: &AuditFacts) -> ConnectorView {
    ConnectorView {
        id: c.id.0,
        tenant_id: c.tenant_id.0,
        name: c.name.clone(),
        kind: c.kind.as_str().to_string(),
        ip_ranges: c.ip_ranges.iter().map(|r| r.to_string()).collect(),
        cert_name: c.cert_name.clone(),
        auth_user: c.auth_user.clone(),
        has_password: c.auth_password_hash.is_some(),
        require_tls: c.require_tls,
        enabled: c.enabled,
        allow_unregistered: c.allow_unregistered,
        restrict_domains_to_ips: c.restrict_domains_to_ips,
        restrict_domains_to_cert: c.restrict_domains_to_cert,
        blocked: c.blocked,
        created_at: c.created_at.0,
        created_by: c.created_by.clone(),
        updated_at: c.updated_at.0,
        updated_by: c.updated_by.clone(),
        last_used_at: c.last_used_at.map(i64::from),
        audit: connector_audit::audit(c, now, facts),
        warnings: Vec::new(),
    }
}

/// The audit facts of `tenant`'s connectors, read from the store.
async fn audit_facts(state: &AppState, tenant: TenantId) -> ApiResult<AuditFacts> {
    let since = now() - connector_audit::DAY_SECS;
    let unregistered = state
        .store()
        .count_received_by_connector(tenant, SenderClass::Unregistered, since.0 * 1000)
        .await?
        .into_iter()
        .collect();
    let verified = state
        .store()
        .list_domains(Some(tenant))
        .await?
        .into_iter()
        .filter(|d| d.verified)
        .map(|d| d.domain)
        .collect();
    let audit = state.store().list_audit(Some(tenant), 1000).await?;
    let auth_locked = relayward_policy::auth::locked_connectors(&audit, since);
    Ok(AuditFacts {
        unregistered,
        verified,
        auth_locked,
    })
}

async fn view_one(state: &AppState, c: &Connector) -> ApiResult<ConnectorView> {
    let facts = audit_facts(state, c.tenant_id).await?;
    Ok(view(c, now(), &facts))
}

/// A certificate name as given: lowercase, a DNS name (IDN as A-labels) or `*.` and one.
fn cert_name(input: &str) -> ApiResult<String> {
    let trimmed = input.trim();
    let (wild, rest) = match trimmed.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let base = validate::domain("cert_name", rest)?;
    let name = if wild { format!("*.{base}") } else { base };
    relayward_policy::cert_name::validate(&name)
        .map_err(|e| ApiError::invalid("cert_name", e.to_string()))?;
    Ok(name)
}

/// Refuses a certificate name another tenant has (409); the warning to give when it is under
/// no verified accepted domain of the tenant yet.
async fn claim_cert_name(
    state: &AppState,
    tenant: TenantId,
    name: &str,
    except: Option<ConnectorId>,
) -> ApiResult<Option<String>> {
    use relayward_policy::cert_name::{check_claim, Claim};
    let dir = match state.control().directory() {
        Some(d) => d,
        None => std::sync::Arc::new(relayward_policy::Directory::new(
            state.store().load_directory().await?,
        )),
    };
    match check_claim(&dir, tenant, name, except) {
        Claim::Conflict(why) => Err(ApiError::conflict(why).with_field("cert_name")),
        // The live snapshot may trail a verification by a poll interval: ask the store.
        Claim::Uncovered(w) => {
            let verified: Vec<String> = state
                .store()
                .list_domains(Some(tenant))
                .await?
                .into_iter()
                .filter(|d| d.verified)
                .map(|d| d.domain)
                .collect();
            let covered =
                relayward_policy::cert_name::covered(name, verified.iter().map(String::as_str));
            Ok((!covered).then_some(w))
        }
        Claim::Covered => Ok(None),
    }
}

fn parse_ranges(ranges: &[String]) -> ApiResult<Vec<IpNet>> {
    if ranges.len() > MAX_RANGES {
        return Err(ApiError::invalid(
            "ip_ranges",
            format!("at most {MAX_RANGES} ranges"),
        ));
    }
    let mut out: Vec<IpNet> = Vec::with_capacity(ranges.len());
    for (i, r) in ranges.iter().enumerate() {
        let net = validate::cidr(&format!("ip_ranges[{i}]"), r)?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

/// The rules a connector must satisfy whichever way it was made.
fn check_consistent(c: &Connector) -> ApiResult<()> {
    if c.ip_ranges.is_empty() && c.cert_name.is_none() && c.auth_user.is_none() {
        return Err(ApiError::invalid(
            "ip_ranges",
            "a connector needs at least one of ip_ranges, cert_name, auth_user",
        ));
    }
    if c.restrict_domains_to_ips && c.ip_ranges.is_empty() {
        return Err(ApiError::invalid(
            "restrict_domains_to_ips",
            "restrict_domains_to_ips needs ip_ranges",
        ));
    }
    if c.restrict_domains_to_cert && c.cert_name.is_none() {
        return Err(ApiError::invalid(
            "restrict_domains_to_cert",
            "restrict_domains_to_cert needs cert_name",
        ));
    }
    if c.auth_user.is_some() && c.auth_password_hash.is_none() {
        return Err(ApiError::invalid(
            "auth_password",
            "auth_user needs auth_password",
        ));
    }
    if c.auth_user.is_none() && c.auth_password_hash.is_some() {
        return Err(ApiError::invalid(
            "auth_user",
            "auth_password needs auth_user",
        ));
    }
    Ok(())
}

async fn hash_password(field: &str, password: &str) -> ApiResult<String> {
    validate::auth_password(field, password)?;
    let password = password.to_string();
    blocking(move || hash_secret(&password))
        .await
        .and_then(|r| r)
        .map_err(|e| ApiError::internal(format!("hashing a connector password: {e}")))
}

async fn connector_for(
    state: &AppState,
    caller: &Caller,
    tenant_id: TenantId,
    id: ConnectorId,
) -> ApiResult<Connector> {
    let tenant = tenant_for(state, caller, tenant_id).await?;
    match state.store().get_connector(id).await? {
        Some(c) if c.tenant_id == tenant.id => Ok(c),
        _ => Err(ApiError::not_found(format!(
            "connector {id} of tenant {tenant_id}"
        ))),
    }
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/connectors", operation_id = "listConnectors", tag = "connectors",
    summary = "List a tenant's inbound connectors with their audit flags",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The connectors, by id", body = [ConnectorView]),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
) -> ApiResult<Json<Vec<ConnectorView>>> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    let connectors = state.store().list_connectors(Some(tenant.id)).await?;
    let facts = audit_facts(&state, tenant.id).await?;
    let at = now();
    Ok(Json(
        connectors.iter().map(|c| view(c, at, &facts)).collect(),
    ))
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/connectors", operation_id = "createConnector", tag = "connectors",
    summary = "Create an inbound connector",
    params(("tenant_id" = i64, Path, description = "Tenant id")),
    request_body = CreateConnector,
    responses(
        (status = 201, description = "Created", body = ConnectorView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name or auth user is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    ApiJson(body): ApiJson<CreateConnector>,
) -> ApiResult<impl IntoResponse> {
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    let name = validate::text("name", &body.name, NAME_MAX)?;
    let kind = validate::connector_kind("kind", &body.kind)?;
    let ip_ranges = parse_ranges(&body.ip_ranges)?;
    let cert_name = body.cert_name.as_deref().map(cert_name).transpose()?;
    let auth_user = body
        .auth_user
        .as_deref()
        .map(|u| validate::auth_user("auth_user", u))
        .transpose()?;
    if let Some(p) = &body.auth_password {
        validate::auth_password("auth_password", p)?;
    }
    let at = now();
    // Checked before the (slow) hashing, with a stand-in for the hash.
    let proposed = Connector {
        id: ConnectorId(0),
        tenant_id: tenant.id,
        name: name.clone(),
        kind,
        ip_ranges: ip_ranges.clone(),
        cert_name: cert_name.clone(),
        auth_user: auth_user.clone(),
        auth_password_hash: body.auth_password.as_ref().map(|_| String::new()),
        require_tls: body.require_tls,
        enabled: true,
        allow_unregistered: body.allow_unregistered,
        restrict_domains_to_ips: body.restrict_domains_to_ips,
        restrict_domains_to_cert: body.restrict_domains_to_cert,
        blocked: false,
        created_at: at,
        created_by: String::new(),
        updated_at: at,
        updated_by: String::new(),
        last_used_at: None,
    };
    check_consistent(&proposed)?;
    let warning = match &cert_name {
        Some(n) => claim_cert_name(&state, tenant.id, n, None).await?,
        None => None,
    };
    let auth_password_hash = match &body.auth_password {
        Some(p) => Some(hash_password("auth_password", p).await?),
        None => None,
    };
    let c = state
        .store()
        .add_connector(
            NewConnector {
                tenant_id: tenant.id,
                name,
                kind,
                ip_ranges,
                cert_name,
                auth_user,
                auth_password_hash,
                require_tls: body.require_tls,
                allow_unregistered: body.allow_unregistered,
                restrict_domains_to_ips: body.restrict_domains_to_ips,
                restrict_domains_to_cert: body.restrict_domains_to_cert,
            },
            &caller.actor(),
        )
        .await?;
    let location = format!("/v1/tenants/{}/connectors/{}", tenant.id, c.id);
    let mut v = view_one(&state, &c).await?;
    v.warnings.extend(warning);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(v)))
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/connectors/{connector_id}", operation_id = "getConnector", tag = "connectors",
    summary = "Show a connector with its audit flags",
    params(
        ("tenant_id" = i64, Path, description = "Tenant id"),
        ("connector_id" = i64, Path, description = "Connector id"),
    ),
    responses(
        (status = 200, description = "The connector", body = ConnectorView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connector or tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((tenant_id, id)): ApiPath<(TenantId, ConnectorId)>,
) -> ApiResult<Json<ConnectorView>> {
    let c = connector_for(&state, &caller, tenant_id, id).await?;
    Ok(Json(view_one(&state, &c).await?))
}

#[utoipa::path(
    patch, path = "/v1/tenants/{tenant_id}/connectors/{connector_id}", operation_id = "updateConnector", tag = "connectors",
    summary = "Change some of a connector's fields",
    params(
        ("tenant_id" = i64, Path, description = "Tenant id"),
        ("connector_id" = i64, Path, description = "Connector id"),
    ),
    request_body(content = ChangeConnector, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The connector afterwards", body = ConnectorView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant admin tried to change `blocked`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connector or tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name or auth user is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input; `field` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn change(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((tenant_id, id)): ApiPath<(TenantId, ConnectorId)>,
    ApiJson(body): ApiJson<ChangeConnector>,
) -> ApiResult<Json<ConnectorView>> {
    let old = connector_for(&state, &caller, tenant_id, id).await?;
    let mut c = old.clone();
    if let Some(name) = &body.name {
        c.name = validate::text("name", name, NAME_MAX)?;
    }
    if let Some(kind) = &body.kind {
        c.kind = validate::connector_kind("kind", kind)?;
    }
    if let Some(ranges) = &body.ip_ranges {
        c.ip_ranges = parse_ranges(ranges)?;
    }
    if let Some(cert) = &body.cert_name {
        c.cert_name = cert.as_deref().map(cert_name).transpose()?;
    }
    match &body.auth_user {
        Some(Some(user)) => c.auth_user = Some(validate::auth_user("auth_user", user)?),
        Some(None) => {
            c.auth_user = None;
            c.auth_password_hash = None;
        }
        None => {}
    }
    if let Some(p) = &body.auth_password {
        validate::auth_password("auth_password", p)?;
        // A stand-in until the checks pass; hashed below.
        c.auth_password_hash = Some(String::new());
    }
    for (value, field) in [
        (body.require_tls, &mut c.require_tls),
        (body.enabled, &mut c.enabled),
        (body.allow_unregistered, &mut c.allow_unregistered),
        (body.restrict_domains_to_ips, &mut c.restrict_domains_to_ips),
        (
            body.restrict_domains_to_cert,
            &mut c.restrict_domains_to_cert,
        ),
    ] {
        if let Some(v) = value {
            *field = v;
        }
    }
    if let Some(blocked) = body.blocked {
        if blocked != old.blocked {
            caller.require_operator("block or unblock a connector")?;
            c.blocked = blocked;
        }
    }
    check_consistent(&c)?;
    let warning = match &c.cert_name {
        Some(n) if c.cert_name != old.cert_name => {
            claim_cert_name(&state, c.tenant_id, n, Some(c.id)).await?
        }
        _ => None,
    };
    if let Some(p) = &body.auth_password {
        c.auth_password_hash = Some(hash_password("auth_password", p).await?);
    }
    if c == old {
        return Ok(Json(view_one(&state, &old).await?));
    }
    state.store().update_connector(&c, &caller.actor()).await?;
    let c = connector_for(&state, &caller, tenant_id, id).await?;
    let mut v = view_one(&state, &c).await?;
    v.warnings.extend(warning);
    Ok(Json(v))
}

async fn set_enabled(
    caller: Caller,
    state: AppState,
    tenant_id: TenantId,
    id: ConnectorId,
    enabled: bool,
) -> ApiResult<Json<ConnectorView>> {
    let mut c = connector_for(&state, &caller, tenant_id, id).await?;
    if c.enabled != enabled {
        c.enabled = enabled;
        state.store().update_connector(&c, &caller.actor()).await?;
        c = connector_for(&state, &caller, tenant_id, id).await?;
    }
    Ok(Json(view_one(&state, &c).await?))
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/connectors/{connector_id}/disable", operation_id = "disableConnector", tag = "connectors",
    summary = "Stop accepting mail through a connector",
    params(
        ("tenant_id" = i64, Path, description = "Tenant id"),
        ("connector_id" = i64, Path, description = "Connector id"),
    ),
    responses(
        (status = 200, description = "The connector afterwards", body = ConnectorView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connector or tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn disable(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((tenant_id, id)): ApiPath<(TenantId, ConnectorId)>,
) -> ApiResult<Json<ConnectorView>> {
    set_enabled(caller, state, tenant_id, id, false).await
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/connectors/{connector_id}/enable", operation_id = "enableConnector", tag = "connectors",
    summary = "Accept mail through a connector again",
    params(
        ("tenant_id" = i64, Path, description = "Tenant id"),
        ("connector_id" = i64, Path, description = "Connector id"),
    ),
    responses(
        (status = 200, description = "The connector afterwards", body = ConnectorView),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connector or tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn enable(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((tenant_id, id)): ApiPath<(TenantId, ConnectorId)>,
) -> ApiResult<Json<ConnectorView>> {
    set_enabled(caller, state, tenant_id, id, true).await
}

#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}/connectors/{connector_id}", operation_id = "deleteConnector", tag = "connectors",
    summary = "Delete a connector",
    params(
        ("tenant_id" = i64, Path, description = "Tenant id"),
        ("connector_id" = i64, Path, description = "Connector id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such connector or tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath((tenant_id, id)): ApiPath<(TenantId, ConnectorId)>,
) -> ApiResult<StatusCode> {
    let c = connector_for(&state, &caller, tenant_id, id).await?;
    state
        .store()
        .delete_connector(c.id, &caller.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
