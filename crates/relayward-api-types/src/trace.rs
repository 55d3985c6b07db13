//! The message trace.

use relayward_core::{SenderClass, TraceEvent, TraceKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TraceEventView {
    pub id: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    #[schema(schema_with = crate::schema::trace_kind)]
    pub kind: TraceKind,
    pub queue_id: Option<String>,
    pub message_id: Option<String>,
    pub tenant_id: Option<i64>,
    pub connector_id: Option<i64>,
    pub client_ip: Option<String>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    /// registered, unregistered or null.
    #[schema(value_type = Option<String>)]
    pub sender_class: Option<SenderClass>,
    /// The SMTP reply given or received.
    pub reply: Option<String>,
    pub detail: Option<String>,
    /// The relay node that recorded the event (cluster mode).
    #[serde(default)]
    pub node: Option<String>,
}

impl From<TraceEvent> for TraceEventView {
    fn from(e: TraceEvent) -> Self {
        TraceEventView {
            id: e.id,
            at_ms: e.at_ms,
            kind: e.kind,
            queue_id: e.queue_id,
            message_id: e.message_id,
            tenant_id: e.tenant_id.map(i64::from),
            connector_id: e.connector_id.map(i64::from),
            client_ip: e.client_ip,
            sender: e.sender,
            recipient: e.recipient,
            sender_class: e.sender_class,
            reply: e.reply,
            detail: e.detail,
            node: e.node,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TracePage {
    /// Newest first.
    pub events: Vec<TraceEventView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}
