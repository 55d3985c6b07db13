//! The routes, one module per resource. [`table`] is the single list of routes: the router is
//! built from it and the tests hold the OpenAPI document against it.

pub(crate) mod audit;
pub(crate) mod connectors;
pub mod diagnose;
pub(crate) mod domains;
pub(crate) mod header_from;
pub(crate) mod me;
pub(crate) mod nodes;
pub(crate) mod queue;
pub(crate) mod sender_limits;
pub(crate) mod status;
pub(crate) mod suppressions;
pub(crate) mod tenants;
pub(crate) mod tokens;
pub(crate) mod trace;
pub(crate) mod traffic;

use axum::http::Method;
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use relayward_core::{Tenant, TenantId};

use crate::auth::Caller;
use crate::problem::{ApiError, ApiResult};
use crate::AppState;

pub(crate) fn table() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    use Method as M;
    vec![
        (M::GET, "/openapi.json", get(crate::openapi::document)),
        (M::GET, "/v1/me", get(me::show)),
        (M::POST, "/v1/diagnose", post(diagnose::post_diagnose)),
        (M::GET, "/v1/tenants", get(tenants::list)),
        (M::POST, "/v1/tenants", post(tenants::create)),
        (M::GET, "/v1/tenants/{tenant_id}", get(tenants::show)),
        (
            M::GET,
            "/v1/tenants/{tenant_id}/domains",
            get(domains::list),
        ),
        (
            M::POST,
            "/v1/tenants/{tenant_id}/domains",
            post(domains::add),
        ),
        (
            M::GET,
            "/v1/tenants/{tenant_id}/domains/{domain}",
            get(domains::show),
        ),
        (
            M::DELETE,
            "/v1/tenants/{tenant_id}/domains/{domain}",
            delete(domains::remove),
        ),
        (
            M::POST,
            "/v1/tenants/{tenant_id}/domains/{domain}/verify",
            post(domains::verify),
        ),
        (
            M::GET,
            "/v1/tenants/{tenant_id}/header-from-domains",
            get(header_from::list),
        ),
        (
            M::POST,
            "/v1/tenants/{tenant_id}/header-from-domains",
            post(header_from::declare),
        ),
        (
            M::DELETE,
            "/v1/tenants/{tenant_id}/header-from-domains/{domain}",
            delete(header_from::withdraw),
        ),
        (
            M::GET,
            "/v1/tenants/{tenant_id}/connectors",
            get(connectors::list),
        ),
        (
            M::POST,
            "/v1/tenants/{tenant_id}/connectors",
            post(connectors::create),
        ),
        (
            M::GET,
            "/v1/tenants/{tenant_id}/connectors/{connector_id}",
            get(connectors::show),
        ),
        (
            M::PATCH,
            "/v1/tenants/{tenant_id}/connectors/{connector_id}",
            patch(connectors::change),
        ),
        (
            M::DELETE,
            "/v1/tenants/{tenant_id}/connectors/{connector_id}",
            delete(connectors::remove),
        ),
        (
            M::POST,
            "/v1/tenants/{tenant_id}/connectors/{connector_id}/disable",
            post(connectors::disable),
        ),
        (
            M::POST,
            "/v1/tenants/{tenant_id}/connectors/{connector_id}/enable",
            post(connectors::enable),
        ),
        (M::GET, "/v1/tenants/{tenant_id}/status", get(status::show)),
        (
            M::POST,
            "/v1/tenants/{tenant_id}/request-unblock",
            post(status::request_unblock),
        ),
        (
            M::POST,
            "/v1/tenants/{tenant_id}/unblock",
            post(status::unblock),
        ),
        (
            M::POST,
            "/v1/tenants/{tenant_id}/block",
            post(status::block),
        ),
        (
            M::GET,
            "/v1/tenants/{tenant_id}/traffic",
            get(traffic::tenant),
        ),
        (
            M::GET,
            "/v1/tenants/{tenant_id}/sender-limits",
            get(sender_limits::show),
        ),
        (
            M::PUT,
            "/v1/tenants/{tenant_id}/sender-limits",
            put(sender_limits::set),
        ),
        (
            M::GET,
            "/v1/tenants/{tenant_id}/sender-restrictions",
            get(status::sender_restrictions),
        ),
        (
            M::DELETE,
            "/v1/tenants/{tenant_id}/sender-restrictions/{sender}",
            delete(status::remove_sender_restriction),
        ),
        (
            M::GET,
            "/v1/tenants/{tenant_id}/suppressions",
            get(suppressions::list_tenant),
        ),
        (
            M::POST,
            "/v1/tenants/{tenant_id}/suppressions",
            post(suppressions::add_tenant),
        ),
        (
            M::DELETE,
            "/v1/tenants/{tenant_id}/suppressions/{address}",
            delete(suppressions::remove_tenant),
        ),
        (M::GET, "/v1/suppressions", get(suppressions::list_global)),
        (M::POST, "/v1/suppressions", post(suppressions::add_global)),
        (
            M::DELETE,
            "/v1/suppressions/{address}",
            delete(suppressions::remove_global),
        ),
        (M::GET, "/v1/audit", get(audit::list)),
        (M::GET, "/v1/nodes", get(nodes::list)),
        (M::GET, "/v1/trace", get(trace::search)),
        (M::GET, "/v1/traffic", get(traffic::overview)),
        (M::GET, "/v1/tokens", get(tokens::list)),
        (M::POST, "/v1/tokens", post(tokens::create)),
        (M::GET, "/v1/tokens/{token_id}", get(tokens::show)),
        (M::DELETE, "/v1/tokens/{token_id}", delete(tokens::revoke)),
        (M::GET, "/v1/queue", get(queue::list)),
        (M::GET, "/v1/queue/{queue_id}", get(queue::show)),
        (M::DELETE, "/v1/queue/{queue_id}", delete(queue::remove)),
        (M::POST, "/v1/queue/{queue_id}/hold", post(queue::hold)),
        (
            M::POST,
            "/v1/queue/{queue_id}/release",
            post(queue::release),
        ),
        (M::POST, "/v1/queue/{queue_id}/retry", post(queue::retry)),
    ]
}

/// Tenant `id` as `caller` may see it: another tenant's answers 404 like a missing one.
pub(crate) async fn tenant_for(
    state: &AppState,
    caller: &Caller,
    id: TenantId,
) -> ApiResult<Tenant> {
    let missing = || ApiError::not_found(format!("tenant {id}"));
    if !caller.may_see(id) {
        return Err(missing());
    }
    state.store().get_tenant(id).await?.ok_or_else(missing)
}

/// The tenant filter of a listing: a tenant-admin token is confined to its tenant (asking for
/// another is a 404); an operator gets `asked` (`None`: every tenant).
pub(crate) async fn tenant_filter(
    state: &AppState,
    caller: &Caller,
    asked: Option<TenantId>,
) -> ApiResult<Option<TenantId>> {
    match (caller.tenant(), asked) {
        (Some(own), None) => Ok(Some(own)),
        (_, Some(t)) => tenant_for(state, caller, t).await.map(|t| Some(t.id)),
        (None, None) => Ok(None),
    }
}

/// `1..=max`, default `default`.
pub(crate) fn limit(field: &str, asked: Option<u32>, default: u32, max: u32) -> ApiResult<u32> {
    match asked {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            field,
            format!("{field} must be between 1 and {max}"),
        )),
    }
}
