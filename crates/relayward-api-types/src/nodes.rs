//! The relay nodes of a cluster, as each last reported itself.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A running node writes its heartbeat this often...
pub const HEARTBEAT_SECS: i64 = 5;
/// ...and counts as live while its last one is at most this old (three missed beats).
pub const LIVE_FOR_SECS: i64 = 3 * HEARTBEAT_SECS;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// `relayward serve --node-name` (default: the host name).
    pub name: String,
    /// The relay's version.
    pub version: String,
    /// When the node started, Unix seconds.
    pub started_at: i64,
    /// Its last heartbeat, Unix seconds.
    pub last_seen: i64,
    /// Messages in its own spool.
    pub queue_depth: u64,
    /// Its SMTP listeners (`ip:port`, comma-separated), when it reported them.
    pub smtp_addr: Option<String>,
    /// Its admin API listener, when enabled.
    pub api_addr: Option<String>,
}
