//! Hourly traffic per tenant, counted from the message trace: what the admin center's charts
//! draw. Nothing is stored for it; the trace's `(tenant_id, at_ms)` and `(at_ms)` indexes bound
//! the scan to the hours asked for.

use relayward_core::{SenderClass, TenantId, TraceKind};
use sqlx::Row;

use super::{count_col, DbPool};
use crate::{Result, TrafficHour};

const HOUR_MS: i64 = 3_600_000;

/// A received event is one recipient of a message: messages are its distinct queue ids. A
/// refused event is one refused command (MAIL, RCPT or the end of DATA). The tenant condition
/// follows. The CAST keeps the sum a BIGINT on PostgreSQL too (a SUM can widen there).
macro_rules! traffic_sql {
    () => {
        "SELECT tenant_id, at_ms / 3600000 AS hour, \
         COUNT(DISTINCT CASE WHEN kind = $1 AND sender_class = $3 THEN queue_id END) AS registered, \
         COUNT(DISTINCT CASE WHEN kind = $1 AND sender_class = $4 THEN queue_id END) AS unregistered, \
         COUNT(DISTINCT CASE WHEN kind = $1 AND sender_class = $5 THEN queue_id END) AS null_sender, \
         CAST(SUM(CASE WHEN kind = $2 THEN 1 ELSE 0 END) AS BIGINT) AS refused \
         FROM trace_events \
         WHERE at_ms >= $6 AND at_ms < $7 AND kind IN ($1, $2) AND "
    };
}

macro_rules! group_by {
    () => {
        " GROUP BY tenant_id, hour ORDER BY tenant_id, hour"
    };
}

pub(super) async fn hours(
    pool: &DbPool,
    tenant: Option<TenantId>,
    since_ms: i64,
    until_ms: i64,
) -> Result<Vec<TrafficHour>> {
    let sql = match tenant {
        Some(_) => concat!(traffic_sql!(), "tenant_id = $8", group_by!()),
        None => concat!(traffic_sql!(), "tenant_id IS NOT NULL", group_by!()),
    };
    let mut query = sqlx::query(sql)
        .bind(TraceKind::Received.as_str())
        .bind(TraceKind::Refused.as_str())
        .bind(SenderClass::Registered.as_str())
        .bind(SenderClass::Unregistered.as_str())
        .bind(SenderClass::Null.as_str())
        .bind(since_ms)
        .bind(until_ms);
    if let Some(t) = tenant {
        query = query.bind(t);
    }
    let rows = query.fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(TrafficHour {
                tenant_id: r.try_get("tenant_id")?,
                start_ms: r.try_get::<i64, _>("hour")? * HOUR_MS,
                registered: count_col(r, "registered")?,
                unregistered: count_col(r, "unregistered")?,
                null_sender: count_col(r, "null_sender")?,
                refused: count_col(r, "refused")?,
            })
        })
        .collect()
}
