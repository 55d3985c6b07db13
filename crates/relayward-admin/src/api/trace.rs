//! Message trace search: by sender, recipient, Message-ID, queue id and time, newest first,
//! in pages.

use axum::extract::State;
use axum::Json;
use relayward_core::{TenantId, TraceEvent, TraceQuery};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{limit, tenant_filter};
use crate::auth::Caller;
use crate::extract::ApiQuery;
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{validate, AppState};
pub use relayward_api_types::trace::{TraceEventView, TracePage};

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TraceParams {
    /// Only this tenant's events (a tenant-admin token always gets only its own).
    pub tenant_id: Option<i64>,
    /// Envelope sender, case-insensitive; `<>` for the null sender.
    pub sender: Option<String>,
    /// Envelope recipient, case-insensitive.
    pub recipient: Option<String>,
    /// With or without the angle brackets.
    pub message_id: Option<String>,
    pub queue_id: Option<String>,
    /// From this time on (Unix milliseconds, inclusive).
    pub since_ms: Option<i64>,
    /// Up to this time (Unix milliseconds, inclusive).
    pub until_ms: Option<i64>,
    /// Page size, 1 to 1000, default 100.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn parse_cursor(cursor: &str) -> ApiResult<(i64, i64)> {
    cursor
        .split_once('-')
        .and_then(|(at, id)| Some((at.parse().ok()?, id.parse().ok()?)))
        .ok_or_else(|| ApiError::bad_request("cursor", "not a cursor from a previous page"))
}

fn cursor_of(e: &TraceEvent) -> String {
    format!("{}-{}", e.at_ms, e.id)
}

#[utoipa::path(
    get, path = "/v1/trace", operation_id = "searchMessageTrace", tag = "trace",
    summary = "Search the message trace",
    params(TraceParams),
    responses(
        (status = 200, description = "One page of events, newest first", body = TracePage),
        (status = 400, description = "Bad parameter; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A tenant admin asked for another tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn search(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<TraceParams>,
) -> ApiResult<Json<TracePage>> {
    let limit = limit("limit", p.limit, 100, 1000)?;
    let tenant_id = tenant_filter(&state, &caller, p.tenant_id.map(TenantId)).await?;
    let address = |field: &str, v: &Option<String>| -> ApiResult<Option<String>> {
        match v.as_deref().map(str::trim) {
            None => Ok(None),
            Some("<>") if field == "sender" => Ok(Some(String::new())),
            Some(a) => validate::email(field, a)
                .map(Some)
                .map_err(|e| ApiError::bad_request(field, e.detail().to_string())),
        }
    };
    let sender = address("sender", &p.sender)?;
    let recipient = address("recipient", &p.recipient)?;
    for (field, value, max) in [
        ("message_id", &p.message_id, 998),
        ("queue_id", &p.queue_id, 64),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.trim().is_empty() || v.len() > max)
        {
            return Err(ApiError::bad_request(
                field,
                format!("{field} must be 1 to {max} characters"),
            ));
        }
    }
    if let (Some(since), Some(until)) = (p.since_ms, p.until_ms) {
        if since > until {
            return Err(ApiError::bad_request(
                "until_ms",
                "until_ms is before since_ms",
            ));
        }
    }
    let after = p.cursor.as_deref().map(parse_cursor).transpose()?;
    let query = TraceQuery {
        tenant_id,
        sender,
        recipient,
        message_id: p.message_id,
        queue_id: p.queue_id,
        since_ms: p.since_ms,
        until_ms: p.until_ms,
        // One more than asked tells whether there is a next page.
        limit: limit + 1,
    };
    let mut events = state.store().search_trace_page(&query, after).await?;
    let next_cursor = if events.len() > limit as usize {
        events.truncate(limit as usize);
        events.last().map(cursor_of)
    } else {
        None
    };
    Ok(Json(TracePage {
        events: events.into_iter().map(TraceEventView::from).collect(),
        next_cursor,
    }))
}
