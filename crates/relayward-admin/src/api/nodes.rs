//! The live relay nodes: every node sharing this store writes a heartbeat
//! ([`relayward_api_types::nodes::HEARTBEAT_SECS`]); those heard from lately are listed.

use axum::extract::State;
use axum::Json;

use crate::auth::Caller;
use crate::problem::{ApiResult, Problem};
use crate::AppState;
pub use relayward_api_types::nodes::NodeView;
use relayward_api_types::nodes::LIVE_FOR_SECS;
use relayward_core::Timestamp;

#[utoipa::path(
    get, path = "/v1/nodes", operation_id = "listNodes", tag = "nodes",
    summary = "Live relay nodes, by name: last heartbeat, version, queue depth",
    responses(
        (status = 200, description = "Nodes with a heartbeat in the last 15 seconds", body = [NodeView]),
        (status = 401, description = "No token or a bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<NodeView>>> {
    caller.require_operator("list the relay nodes")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let nodes = state
        .store()
        .list_nodes(Timestamp(now - LIVE_FOR_SECS))
        .await?;
    Ok(Json(
        nodes
            .into_iter()
            .map(|n| NodeView {
                name: n.name,
                version: n.version,
                started_at: n.started_at.0,
                last_seen: n.last_seen.0,
                queue_depth: n.queue_depth,
                smtp_addr: n.smtp_addr,
                api_addr: n.api_addr,
            })
            .collect(),
    ))
}
