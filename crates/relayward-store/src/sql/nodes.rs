//! Heartbeats of a cluster's relay nodes (see migration 0009): each node upserts its row by name;
//! the operator's tools list the nodes seen lately.

use relayward_core::Timestamp;
use sqlx::Row;

use super::{count_col, DbPool, DbRow};
use crate::{NodeRecord, Result, StoreError};

fn node_from_row(row: &DbRow) -> Result<NodeRecord> {
    Ok(NodeRecord {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        started_at: row.try_get("started_at")?,
        last_seen: row.try_get("last_seen")?,
        queue_depth: count_col(row, "queue_depth")?,
        smtp_addr: row.try_get("smtp_addr")?,
        api_addr: row.try_get("api_addr")?,
    })
}

/// One statement, no read first: autocommit is enough on either backend.
pub(super) async fn heartbeat(pool: &DbPool, node: &NodeRecord) -> Result<()> {
    if node.name.trim().is_empty() {
        return Err(StoreError::Invalid("node name is empty".into()));
    }
    sqlx::query(
        "INSERT INTO nodes (name, version, started_at, last_seen, queue_depth, smtp_addr, \
         api_addr) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (name) DO UPDATE SET version = excluded.version, \
         started_at = excluded.started_at, last_seen = excluded.last_seen, \
         queue_depth = excluded.queue_depth, smtp_addr = excluded.smtp_addr, \
         api_addr = excluded.api_addr",
    )
    .bind(&node.name)
    .bind(&node.version)
    .bind(node.started_at)
    .bind(node.last_seen)
    .bind(i64::try_from(node.queue_depth).unwrap_or(i64::MAX))
    .bind(&node.smtp_addr)
    .bind(&node.api_addr)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn list(pool: &DbPool, since: Timestamp) -> Result<Vec<NodeRecord>> {
    sqlx::query(
        "SELECT name, version, started_at, last_seen, queue_depth, smtp_addr, api_addr \
         FROM nodes WHERE last_seen >= $1 ORDER BY name",
    )
    .bind(since)
    .fetch_all(pool)
    .await?
    .iter()
    .map(node_from_row)
    .collect()
}
