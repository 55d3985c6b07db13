//! Hourly traffic per tenant, counted from the message trace: what the admin center's charts
//! draw. Nothing is stored for it; the trace's `(tenant_id, at_ms)` and `(at_ms)` indexes bound
//! the scan to the hours asked for.

use relayward_core::{SenderClass, TenantId, TraceKind};
use sqlx::{Row, SqlitePool};

use crate::{Result, TrafficHour};

const HOUR_MS: i64 = 3_600_000;

/// A received event is one recipient of a message: messages are its distinct queue ids. A
/// refused event is one refused command (MAIL, RCPT or the end of DATA). The tenant condition
/// follows.
macro_rules! traffic_sql {
    () => {
        "SELECT tenant_id, at_ms / 3600000 AS hour, \
         COUNT(DISTINCT CASE WHEN kind = ?1 AND sender_class = ?3 THEN queue_id END) AS registered, \
         COUNT(DISTINCT CASE WHEN kind = ?1 AND sender_class = ?4 THEN queue_id END) AS unregistered, \
         COUNT(DISTINCT CASE WHEN kind = ?1 AND sender_class = ?5 THEN queue_id END) AS null_sender, \
         SUM(CASE WHEN kind = ?2 THEN 1 ELSE 0 END) AS refused \
         FROM trace_events \
         WHERE at_ms >= ?6 AND at_ms < ?7 AND kind IN (?1, ?2) AND "
    };
}

macro_rules! group_by {
    () => {
        " GROUP BY tenant_id, hour ORDER BY tenant_id, hour"
    };
}

pub(super) async fn hours(
    pool: &SqlitePool,
    tenant: Option<TenantId>,
    since_ms: i64,
    until_ms: i64,
) -> Result<Vec<TrafficHour>> {
    let sql = match tenant {
        Some(_) => concat!(traffic_sql!(), "tenant_id = ?8", group_by!()),
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
            let count = |col: &str| -> Result<u64> { Ok(r.try_get::<i64, _>(col)?.max(0) as u64) };
            Ok(TrafficHour {
                tenant_id: r.try_get("tenant_id")?,
                start_ms: r.try_get::<i64, _>("hour")? * HOUR_MS,
                registered: count("registered")?,
                unregistered: count("unregistered")?,
                null_sender: count("null_sender")?,
                refused: count("refused")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use relayward_core::{SenderClass, TenantId, TraceEvent, TraceKind};

    use crate::{SqliteStore, Store, TrafficHour};

    const HOUR: i64 = 3_600_000;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let s = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        (dir, s)
    }

    fn event(
        at_ms: i64,
        kind: TraceKind,
        tenant: Option<TenantId>,
        queue_id: Option<&str>,
        class: Option<SenderClass>,
    ) -> TraceEvent {
        let mut e = TraceEvent::new(kind);
        e.at_ms = at_ms;
        e.tenant_id = tenant;
        e.queue_id = queue_id.map(str::to_string);
        e.sender_class = class;
        e
    }

    #[tokio::test]
    async fn messages_and_refusals_are_counted_per_tenant_and_hour() {
        let (_dir, s) = store().await;
        let a = s.create_tenant("a", &[], "test").await.unwrap().id;
        let b = s.create_tenant("b", &[], "test").await.unwrap().id;
        let h0 = 480_000 * HOUR;
        use SenderClass::*;
        use TraceKind::*;
        s.record_trace(&[
            // One registered message to three recipients is one message.
            event(h0 + 10, Received, Some(a), Some("Q1"), Some(Registered)),
            event(h0 + 10, Received, Some(a), Some("Q1"), Some(Registered)),
            event(h0 + 10, Received, Some(a), Some("Q1"), Some(Registered)),
            event(h0 + 20, Received, Some(a), Some("Q2"), Some(Unregistered)),
            event(h0 + 30, Received, Some(a), Some("Q3"), Some(Null)),
            // Its later steps are not traffic.
            event(h0 + 40, Delivered, Some(a), Some("Q1"), Some(Registered)),
            event(h0 + 50, Refused, Some(a), None, Some(Unregistered)),
            event(h0 + 60, Refused, Some(a), None, Some(Unregistered)),
            // The next hour, tenant b, and a refusal attributed to nobody.
            event(h0 + HOUR, Received, Some(a), Some("Q4"), Some(Unregistered)),
            event(
                h0 + HOUR + 5,
                Received,
                Some(b),
                Some("Q5"),
                Some(Registered),
            ),
            event(h0 + HOUR + 6, Refused, None, None, None),
            // Outside the range asked for.
            event(h0 - 1, Received, Some(a), Some("Q0"), Some(Registered)),
            event(
                h0 + 2 * HOUR,
                Received,
                Some(a),
                Some("Q6"),
                Some(Registered),
            ),
        ])
        .await
        .unwrap();
        let hour =
            |tenant_id, start_ms, registered, unregistered, null_sender, refused| TrafficHour {
                tenant_id,
                start_ms,
                registered,
                unregistered,
                null_sender,
                refused,
            };
        assert_eq!(
            s.traffic_hours(Some(a), h0, h0 + 2 * HOUR).await.unwrap(),
            [hour(a, h0, 1, 1, 1, 2), hour(a, h0 + HOUR, 0, 1, 0, 0),]
        );
        assert_eq!(
            s.traffic_hours(None, h0, h0 + 2 * HOUR).await.unwrap(),
            [
                hour(a, h0, 1, 1, 1, 2),
                hour(a, h0 + HOUR, 0, 1, 0, 0),
                hour(b, h0 + HOUR, 1, 0, 0, 0),
            ]
        );
        assert!(s
            .traffic_hours(Some(b), h0, h0 + HOUR)
            .await
            .unwrap()
            .is_empty());
    }
}
