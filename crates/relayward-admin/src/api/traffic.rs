//! Traffic per clock hour from the message trace: a tenant's registered, unregistered and
//! null-sender messages and its refused commands, with its restriction-state transitions on the
//! same time axis (the admin center's charts); and every tenant's totals for the operator.

use axum::extract::State;
use axum::Json;
use relayward_core::{TenantId, TenantState};
use relayward_store::TrafficHour;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{limit, tenant_for};
use crate::auth::Caller;
use crate::extract::{ApiPath, ApiQuery};
use crate::problem::{ApiResult, Problem};
use crate::AppState;

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

/// The counts of one clock hour (or of a whole range).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrafficCounts {
    /// Messages accepted from senders of the tenant's verified accepted domains.
    pub registered: u64,
    /// Messages accepted from senders of other domains.
    pub unregistered: u64,
    /// Messages accepted with the null sender (`MAIL FROM:<>`).
    pub null_sender: u64,
    /// Commands refused (MAIL, RCPT, end of DATA), whatever the reason.
    pub refused: u64,
}

impl TrafficCounts {
    fn add(&mut self, h: &TrafficHour) {
        self.registered += h.registered;
        self.unregistered += h.unregistered;
        self.null_sender += h.null_sender;
        self.refused += h.refused;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrafficPoint {
    /// Start of the hour, Unix milliseconds.
    pub start_ms: i64,
    #[serde(flatten)]
    pub counts: TrafficCounts,
}

/// A restriction-state change, to mark on the time axis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransitionMark {
    /// Unix milliseconds.
    pub at_ms: i64,
    #[schema(schema_with = crate::schema::tenant_state)]
    pub from: TenantState,
    #[schema(schema_with = crate::schema::tenant_state)]
    pub to: TenantState,
    /// `detector`, or the token or CLI user that made it.
    pub actor: String,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantTraffic {
    pub tenant_id: i64,
    /// Start of the oldest hour, Unix milliseconds.
    pub from_ms: i64,
    /// End of the current hour, Unix milliseconds.
    pub until_ms: i64,
    /// Every hour of the range, oldest first, hours without traffic included.
    pub hours: Vec<TrafficPoint>,
    /// The transitions within the range, oldest first.
    pub transitions: Vec<TransitionMark>,
    /// The whole range.
    pub totals: TrafficCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantTrafficTotals {
    pub tenant_id: i64,
    #[serde(flatten)]
    pub counts: TrafficCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrafficOverview {
    pub from_ms: i64,
    pub until_ms: i64,
    /// Tenants with traffic in the range, by id.
    pub tenants: Vec<TenantTrafficTotals>,
}

/// `(from_ms, until_ms)` of the last `hours` clock hours, the current one included.
fn range(hours: u32) -> (i64, i64) {
    let now_ms = relayward_core::now() * 1000;
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
        totals.add(row);
        let i = (row.start_ms - from_ms).div_euclid(HOUR_MS);
        if let Some(p) = usize::try_from(i).ok().and_then(|i| points.get_mut(i)) {
            p.counts.add(row);
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
        tenant_id: tenant.id,
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
            Some(t) if t.tenant_id == row.tenant_id => t.counts.add(row),
            _ => {
                let mut counts = TrafficCounts::default();
                counts.add(row);
                tenants.push(TenantTrafficTotals {
                    tenant_id: row.tenant_id,
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
