//! Traffic per clock hour from the message trace: a tenant's registered, unregistered and
//! null-sender messages and its refused commands, with its restriction-state transitions on the
//! same time axis (the admin center's charts); and every tenant's totals for the operator.

use axum::extract::State;
use axum::Json;
use relayward_core::TenantId;
use relayward_store::TrafficHour;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{limit, tenant_for};
use crate::auth::Caller;
use crate::extract::{ApiPath, ApiQuery};
use crate::problem::{ApiResult, Problem};
use crate::AppState;
pub use relayward_api_types::traffic::{
    TenantTraffic, TenantTrafficTotals, TrafficCounts, TrafficOverview, TrafficPoint,
    TransitionMark,
};

const HOUR_MS: i64 = 3_600_000;
/// A week: as far back as the charts go.
const MAX_HOURS: u32 = 168;
const DEFAULT_HOURS: u32 = 24;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrafficParams {
    /// How many clock hours, the current one included: 1 to 168, default 24.
    pub hours: Option<u32>,
}

/// `(from_ms, until_ms)` of the last `hours` clock hours, the current one included.
fn range(hours: u32) -> (i64, i64) {
    let now_ms = relayward_core::now().0 * 1000;
    let until = (now_ms.div_euclid(HOUR_MS) + 1) * HOUR_MS;
    (until - i64::from(hours) * HOUR_MS, until)
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/traffic", operation_id = "getTenantTraffic", tag = "traffic",
    summary = "A tenant's messages and refusals per hour, with its state transitions",
    description = "Counted from the message trace: messages accepted by sender class and \
        commands refused, per clock hour of the last `hours` (the current one included).",
    params(("tenant_id" = i64, Path, description = "Tenant id"), TrafficParams),
    responses(
        (status = 200, description = "Every hour of the range, oldest first", body = TenantTraffic),
        (status = 400, description = "Bad parameter; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or another tenant's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn tenant(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    ApiQuery(params): ApiQuery<TrafficParams>,
) -> ApiResult<Json<TenantTraffic>> {
    let hours = limit("hours", params.hours, DEFAULT_HOURS, MAX_HOURS)?;
    let tenant = tenant_for(&state, &caller, tenant_id).await?;
    let (from_ms, until_ms) = range(hours);
    let rows = state
        .store()
        .traffic_hours(Some(tenant.id), from_ms, until_ms)
        .await?;
    let mut totals = TrafficCounts::default();
    let mut points: Vec<TrafficPoint> = (0..i64::from(hours))
        .map(|i| TrafficPoint {
            start_ms: from_ms + i * HOUR_MS,
            counts: TrafficCounts::default(),
        })
        .collect();
    for row in &rows {
        add(&mut totals, row);
        let i = (row.start_ms - from_ms).div_euclid(HOUR_MS);
        if let Some(p) = usize::try_from(i).ok().and_then(|i| points.get_mut(i)) {
            add(&mut p.counts, row);
        }
    }
    let mut transitions: Vec<TransitionMark> = state
        .store()
        .list_transitions(tenant.id, 0)
        .await?
        .into_iter()
        .filter(|t| (from_ms..until_ms).contains(&t.at_ms))
        .map(|t| TransitionMark {
            at_ms: t.at_ms,
            from: t.from,
            to: t.to,
            actor: t.actor,
            summary: t.summary,
        })
        .collect();
    transitions.reverse();
    Ok(Json(TenantTraffic {
        tenant_id: tenant.id.0,
        from_ms,
        until_ms,
        hours: points,
        transitions,
        totals,
    }))
}

#[utoipa::path(
    get, path = "/v1/traffic", operation_id = "getTrafficOverview", tag = "traffic",
    summary = "Every tenant's messages and refusals over the last hours (operator)",
    params(TrafficParams),
    responses(
        (status = 200, description = "Totals per tenant", body = TrafficOverview),
        (status = 400, description = "Bad parameter; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A tenant-admin token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn overview(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<TrafficParams>,
) -> ApiResult<Json<TrafficOverview>> {
    caller.require_operator("see every tenant's traffic")?;
    let hours = limit("hours", params.hours, DEFAULT_HOURS, MAX_HOURS)?;
    let (from_ms, until_ms) = range(hours);
    let rows = state.store().traffic_hours(None, from_ms, until_ms).await?;
    let mut tenants: Vec<TenantTrafficTotals> = Vec::new();
    for row in &rows {
        match tenants.last_mut() {
            Some(t) if t.tenant_id == row.tenant_id.0 => add(&mut t.counts, row),
            _ => {
                let mut counts = TrafficCounts::default();
                add(&mut counts, row);
                tenants.push(TenantTrafficTotals {
                    tenant_id: row.tenant_id.0,
                    counts,
                });
            }
        }
    }
    Ok(Json(TrafficOverview {
        from_ms,
        until_ms,
        tenants,
    }))
}

/// Adds an hour's counts.
fn add(c: &mut TrafficCounts, h: &TrafficHour) {
    c.registered += h.registered;
    c.unregistered += h.unregistered;
    c.null_sender += h.null_sender;
    c.refused += h.refused;
}
