//! The queue of the running relay: list, show, hold, release, retry, delete. A tenant admin sees
//! and acts on its own tenant's messages only; others answer 404.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::tenant_filter;
use crate::auth::Caller;
use crate::control::{QueueOpOutcome, QueueOperation, QueuedMessage};
use crate::extract::{ApiPath, ApiQuery};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{validate, AppState};
use relayward_core::TenantId;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueueParams {
    /// Only this tenant's messages (a tenant-admin token always gets only its own).
    pub tenant_id: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Send the sender a DSN for every pending recipient (default false).
    pub dsn: Option<bool>,
}

/// Message `id` as `caller` may see it.
async fn message_for(state: &AppState, caller: &Caller, id: &str) -> ApiResult<QueuedMessage> {
    let id = validate::queue_id("queue_id", id)?;
    match state.control().queue_show(&id).await? {
        Some(m)
            if caller.is_operator()
                || (m.tenant_id.is_some() && m.tenant_id == caller.tenant().map(i64::from)) =>
        {
            Ok(m)
        }
        _ => Err(ApiError::not_found(format!("message {id}"))),
    }
}

async fn operate(
    state: &AppState,
    caller: &Caller,
    id: &str,
    op: QueueOperation,
) -> ApiResult<Json<QueueOpOutcome>> {
    let m = message_for(state, caller, id).await?;
    let actor = caller.actor();
    let control = state.control();
    let outcome = match op {
        QueueOperation::Hold => control.queue_hold(&m.queue_id, &actor).await?,
        QueueOperation::Release => control.queue_release(&m.queue_id, &actor).await?,
        QueueOperation::Retry => control.queue_retry(&m.queue_id, &actor).await?,
        QueueOperation::Delete => control.queue_delete(&m.queue_id, false, &actor).await?,
        QueueOperation::Bounce => control.queue_delete(&m.queue_id, true, &actor).await?,
    };
    let detail = format!(
        "{} {}; sender <{}>, {} recipient(s)",
        op.as_str(),
        if outcome.applied {
            "applied"
        } else {
            "requested"
        },
        m.sender,
        m.recipients.len()
    );
    state
        .store()
        .audit(
            &actor,
            &format!("queue.{}", op.as_str()),
            m.tenant_id.map(TenantId),
            &format!("message {}", m.queue_id),
            &detail,
        )
        .await?;
    Ok(Json(outcome))
}

#[utoipa::path(
    get, path = "/v1/queue", operation_id = "listQueuedMessages", tag = "queue",
    summary = "Spooled messages",
    params(QueueParams),
    responses(
        (status = 200, description = "The messages", body = [QueuedMessage]),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A tenant admin asked for another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<QueueParams>,
) -> ApiResult<Json<Vec<QueuedMessage>>> {
    let tenant = tenant_filter(&state, &caller, params.tenant_id.map(TenantId)).await?;
    let mut messages = state.control().queue_list(tenant).await?;
    // Whatever the implementation returns, a tenant admin sees only its own.
    if let Some(t) = tenant {
        messages.retain(|m| m.tenant_id == Some(t.0));
    }
    Ok(Json(messages))
}

#[utoipa::path(
    get, path = "/v1/queue/{queue_id}", operation_id = "getQueuedMessage", tag = "queue",
    summary = "One spooled message and its recipients' status",
    params(("queue_id" = String, Path, description = "Queue id")),
    responses(
        (status = 200, description = "The message", body = QueuedMessage),
        (status = 400, description = "Not a queue id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<QueuedMessage>> {
    Ok(Json(message_for(&state, &caller, &id).await?))
}

#[utoipa::path(
    post, path = "/v1/queue/{queue_id}/hold", operation_id = "holdQueuedMessage", tag = "queue",
    summary = "Stop delivery attempts until released",
    params(("queue_id" = String, Path, description = "Queue id")),
    responses(
        (status = 200, description = "What was done", body = QueueOpOutcome),
        (status = 400, description = "Not a queue id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn hold(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<QueueOpOutcome>> {
    operate(&state, &caller, &id, QueueOperation::Hold).await
}

#[utoipa::path(
    post, path = "/v1/queue/{queue_id}/release", operation_id = "releaseQueuedMessage", tag = "queue",
    summary = "Release a held message",
    params(("queue_id" = String, Path, description = "Queue id")),
    responses(
        (status = 200, description = "What was done", body = QueueOpOutcome),
        (status = 400, description = "Not a queue id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn release(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<QueueOpOutcome>> {
    operate(&state, &caller, &id, QueueOperation::Release).await
}

#[utoipa::path(
    post, path = "/v1/queue/{queue_id}/retry", operation_id = "retryQueuedMessage", tag = "queue",
    summary = "Attempt every pending recipient now",
    params(("queue_id" = String, Path, description = "Queue id")),
    responses(
        (status = 200, description = "What was done", body = QueueOpOutcome),
        (status = 400, description = "Not a queue id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn retry(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<QueueOpOutcome>> {
    operate(&state, &caller, &id, QueueOperation::Retry).await
}

#[utoipa::path(
    delete, path = "/v1/queue/{queue_id}", operation_id = "deleteQueuedMessage", tag = "queue",
    summary = "Delete a message, with a DSN to the sender when `dsn=true`",
    params(("queue_id" = String, Path, description = "Queue id"), DeleteParams),
    responses(
        (status = 200, description = "What was done", body = QueueOpOutcome),
        (status = 400, description = "Not a queue id, or a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message, or another tenant's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The relay is not reachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<DeleteParams>,
) -> ApiResult<Json<QueueOpOutcome>> {
    let op = if params.dsn.unwrap_or(false) {
        QueueOperation::Bounce
    } else {
        QueueOperation::Delete
    };
    operate(&state, &caller, &id, op).await
}
