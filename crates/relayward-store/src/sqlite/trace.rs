//! The message trace: one row per event of a message's life, searched by the admin tools.

use relayward_core::{ConnectorId, SenderClass, TenantId, TraceEvent, TraceKind, TraceQuery};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{effective_limit, parse_col, parse_opt_col, SqliteStore};
use crate::Result;

macro_rules! trace_cols {
    () => {
        "id, at_ms, kind, queue_id, message_id, tenant_id, connector_id, client_ip, sender, \
         recipient, sender_class, reply, detail"
    };
}

/// 12 bound values a row: well under SQLite's 32,766 variables a statement.
const TRACE_ROWS_PER_INSERT: usize = 200;

fn trace_from_row(row: &SqliteRow) -> Result<TraceEvent> {
    Ok(TraceEvent {
        id: row.try_get("id")?,
        at_ms: row.try_get("at_ms")?,
        kind: parse_col::<TraceKind>(row, "kind")?,
        queue_id: row.try_get("queue_id")?,
        message_id: row.try_get("message_id")?,
        tenant_id: row.try_get("tenant_id")?,
        connector_id: row.try_get("connector_id")?,
        client_ip: row.try_get("client_ip")?,
        sender: row.try_get("sender")?,
        recipient: row.try_get("recipient")?,
        sender_class: parse_opt_col::<SenderClass>(row, "sender_class")?,
        reply: row.try_get("reply")?,
        detail: row.try_get("detail")?,
    })
}

/// The filters of [`crate::Store::search_trace`], for [`crate::Store::search_trace_page`].
fn push_trace_filters(qb: &mut QueryBuilder<Sqlite>, q: &TraceQuery) {
    if let Some(t) = q.tenant_id {
        qb.push(" AND tenant_id = ").push_bind(t);
    }
    if let Some(s) = q.sender.as_deref().map(str::trim) {
        qb.push(" AND LOWER(sender) = ")
            .push_bind(s.to_ascii_lowercase());
    }
    if let Some(r) = q.recipient.as_deref().map(str::trim) {
        qb.push(" AND LOWER(recipient) = ")
            .push_bind(r.to_ascii_lowercase());
    }
    if let Some(m) = q.message_id.as_deref().map(str::trim) {
        let bare = m.trim_start_matches('<').trim_end_matches('>');
        qb.push(" AND message_id IN (")
            .push_bind(bare.to_string())
            .push(", ")
            .push_bind(format!("<{bare}>"))
            .push(")");
    }
    if let Some(id) = q.queue_id.as_deref().map(str::trim) {
        qb.push(" AND queue_id = ").push_bind(id.to_string());
    }
    if let Some(since) = q.since_ms {
        qb.push(" AND at_ms >= ").push_bind(since);
    }
    if let Some(until) = q.until_ms {
        qb.push(" AND at_ms <= ").push_bind(until);
    }
}

pub(super) async fn record_trace(store: &SqliteStore, events: &[TraceEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = store.write_tx().await?;
    // Many rows per statement: each statement is a round trip to the SQLite worker thread,
    // and at full load the trace carries several events per message.
    for chunk in events.chunks(TRACE_ROWS_PER_INSERT) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO trace_events (at_ms, kind, queue_id, message_id, tenant_id, \
             connector_id, client_ip, sender, recipient, sender_class, reply, detail) ",
        );
        qb.push_values(chunk, |mut b, e| {
            b.push_bind(e.at_ms)
                .push_bind(e.kind.as_str())
                .push_bind(&e.queue_id)
                .push_bind(&e.message_id)
                .push_bind(e.tenant_id)
                .push_bind(e.connector_id)
                .push_bind(&e.client_ip)
                .push_bind(&e.sender)
                .push_bind(&e.recipient)
                .push_bind(e.sender_class.map(|c| c.as_str()))
                .push_bind(&e.reply)
                .push_bind(&e.detail);
        });
        qb.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn search_trace(store: &SqliteStore, q: &TraceQuery) -> Result<Vec<TraceEvent>> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(concat!(
        "SELECT ",
        trace_cols!(),
        " FROM trace_events WHERE 1 = 1"
    ));
    if let Some(t) = q.tenant_id {
        qb.push(" AND tenant_id = ").push_bind(t);
    }
    // Addresses match case-insensitively; SQLite's LOWER folds ASCII only, so fold the
    // same way here (and the indexes are on LOWER(sender) / LOWER(recipient)).
    if let Some(s) = q.sender.as_deref().map(str::trim) {
        qb.push(" AND LOWER(sender) = ")
            .push_bind(s.to_ascii_lowercase());
    }
    if let Some(r) = q.recipient.as_deref().map(str::trim) {
        qb.push(" AND LOWER(recipient) = ")
            .push_bind(r.to_ascii_lowercase());
    }
    if let Some(m) = q.message_id.as_deref().map(str::trim) {
        // With or without the angle brackets, whichever way it was recorded.
        let bare = m.trim_start_matches('<').trim_end_matches('>');
        qb.push(" AND message_id IN (")
            .push_bind(bare.to_string())
            .push(", ")
            .push_bind(format!("<{bare}>"))
            .push(")");
    }
    if let Some(id) = q.queue_id.as_deref().map(str::trim) {
        qb.push(" AND queue_id = ").push_bind(id.to_string());
    }
    if let Some(since) = q.since_ms {
        qb.push(" AND at_ms >= ").push_bind(since);
    }
    if let Some(until) = q.until_ms {
        qb.push(" AND at_ms <= ").push_bind(until);
    }
    qb.push(" ORDER BY at_ms DESC, id DESC LIMIT ")
        .push_bind(effective_limit(q.limit));
    qb.build()
        .fetch_all(&store.pool)
        .await?
        .iter()
        .map(trace_from_row)
        .collect()
}

pub(super) async fn count_received_by_connector(
    store: &SqliteStore,
    tenant: TenantId,
    class: SenderClass,
    since_ms: i64,
) -> Result<Vec<(ConnectorId, u64)>> {
    let rows = sqlx::query(
        "SELECT connector_id, COUNT(DISTINCT queue_id) AS n FROM trace_events \
         WHERE tenant_id = ? AND connector_id IS NOT NULL AND at_ms >= ? \
         AND kind = ? AND sender_class = ? \
         GROUP BY connector_id ORDER BY connector_id",
    )
    .bind(tenant)
    .bind(since_ms)
    .bind(TraceKind::Received.as_str())
    .bind(class.as_str())
    .fetch_all(&store.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let n: i64 = r.try_get("n")?;
            Ok((r.try_get("connector_id")?, n.max(0) as u64))
        })
        .collect()
}

pub(super) async fn search_trace_page(
    store: &SqliteStore,
    q: &TraceQuery,
    after: Option<(i64, i64)>,
) -> Result<Vec<TraceEvent>> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(concat!(
        "SELECT ",
        trace_cols!(),
        " FROM trace_events WHERE 1 = 1"
    ));
    push_trace_filters(&mut qb, q);
    if let Some((at_ms, id)) = after {
        // Newest first: the next page is what sorts after (at_ms, id) in that order.
        qb.push(" AND (at_ms < ")
            .push_bind(at_ms)
            .push(" OR (at_ms = ")
            .push_bind(at_ms)
            .push(" AND id < ")
            .push_bind(id)
            .push("))");
    }
    qb.push(" ORDER BY at_ms DESC, id DESC LIMIT ")
        .push_bind(effective_limit(q.limit));
    qb.build()
        .fetch_all(&store.pool)
        .await?
        .iter()
        .map(trace_from_row)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::tests::{event, store};
    use crate::Store;

    #[tokio::test]
    async fn trace_record_and_search() {
        let (_dir, s, _) = store().await;
        s.record_trace(&[]).await.unwrap();
        let mut events = Vec::new();
        for i in 0..300i64 {
            let mut e = event(1_000_000 + i, TraceKind::Queued);
            e.queue_id = Some(format!("Q{i:04}"));
            e.message_id = Some(format!("<m{i}@acme.example>"));
            e.tenant_id = Some(if i % 2 == 0 { TenantId(1) } else { TenantId(2) });
            e.connector_id = Some(ConnectorId(7));
            e.client_ip = Some("192.0.2.1".into());
            e.sender = Some(format!("User{}@Acme.Example", i % 10));
            e.recipient = Some(format!("rcpt{}@dest.example", i % 3));
            e.sender_class = Some(SenderClass::Registered);
            e.reply = Some("250 2.0.0 OK".into());
            e.detail = Some("d".into());
            events.push(e);
        }
        let mut refused = event(2_000_000, TraceKind::Refused);
        refused.sender = Some("spam@bad.example".into());
        refused.reply = Some("550 5.7.64 TenantAttribution; Relay Access Denied".into());
        events.push(refused.clone());
        let started = std::time::Instant::now();
        s.record_trace(&events).await.unwrap();
        eprintln!(
            "recorded {} events in {:?}",
            events.len(),
            started.elapsed()
        );

        let q = TraceQuery::default;
        // Default limit 100, newest first.
        let r = s.search_trace(&q()).await.unwrap();
        assert_eq!(r.len(), 100);
        assert_eq!(r[0].kind, TraceKind::Refused);
        assert!(r.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
        let got = &r[0];
        assert!(got.id > 0);
        assert_eq!(got.reply, refused.reply);
        assert_eq!(got.queue_id, None);
        assert_eq!(got.sender_class, None);

        let all = s
            .search_trace(&TraceQuery { limit: 1000, ..q() })
            .await
            .unwrap();
        assert_eq!(all.len(), 301);
        // Round trip of every field.
        let e5 = all
            .iter()
            .find(|e| e.queue_id.as_deref() == Some("Q0005"))
            .unwrap();
        assert_eq!(
            TraceEvent {
                id: 0,
                ..e5.clone()
            },
            events[5]
        );

        // By tenant.
        let r = s
            .search_trace(&TraceQuery {
                tenant_id: Some(TenantId(2)),
                limit: 1000,
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(r.len(), 150);
        assert!(r.iter().all(|e| e.tenant_id == Some(TenantId(2))));
        // By sender, case-insensitively.
        let r = s
            .search_trace(&TraceQuery {
                sender: Some("user3@acme.example".into()),
                limit: 1000,
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(r.len(), 30);
        // By recipient.
        let r = s
            .search_trace(&TraceQuery {
                recipient: Some("RCPT0@dest.example".into()),
                limit: 1000,
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(r.len(), 100);
        // By message id, with or without brackets.
        for m in ["<m42@acme.example>", "m42@acme.example"] {
            let r = s
                .search_trace(&TraceQuery {
                    message_id: Some(m.into()),
                    ..q()
                })
                .await
                .unwrap();
            assert_eq!(r.len(), 1, "{m}");
            assert_eq!(r[0].queue_id.as_deref(), Some("Q0042"));
        }
        // By queue id.
        let r = s
            .search_trace(&TraceQuery {
                queue_id: Some("Q0299".into()),
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].at_ms, 1_000_299);
        // By time range (inclusive), combined with tenant and a limit.
        let r = s
            .search_trace(&TraceQuery {
                since_ms: Some(1_000_010),
                until_ms: Some(1_000_019),
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(r[0].at_ms, 1_000_019);
        let r = s
            .search_trace(&TraceQuery {
                tenant_id: Some(TenantId(1)),
                since_ms: Some(1_000_010),
                until_ms: Some(1_000_019),
                limit: 3,
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(
            r.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            vec![1_000_018, 1_000_016, 1_000_014]
        );
        // Nothing matches.
        let r = s
            .search_trace(&TraceQuery {
                sender: Some("nobody@x.example".into()),
                ..q()
            })
            .await
            .unwrap();
        assert!(r.is_empty());

        // The address searches use the LOWER() expression indexes.
        let plan: Vec<String> =
            sqlx::query("EXPLAIN QUERY PLAN SELECT id FROM trace_events WHERE LOWER(sender) = ?")
                .bind("x")
                .fetch_all(s.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>("detail"))
                .collect();
        assert!(
            plan.iter().any(|p| p.contains("trace_events_sender")),
            "{plan:?}"
        );
    }

    fn received(
        at_ms: i64,
        queue_id: &str,
        connector: ConnectorId,
        class: SenderClass,
    ) -> TraceEvent {
        let mut e = TraceEvent::new(TraceKind::Received);
        e.at_ms = at_ms;
        e.queue_id = Some(queue_id.into());
        e.tenant_id = Some(TenantId(1));
        e.connector_id = Some(connector);
        e.sender_class = Some(class);
        e
    }

    #[tokio::test]
    async fn unregistered_count_per_connector() {
        let (_dir, s, _) = store().await;
        let mut events = vec![
            // Two recipients of one message count once.
            received(1000, "q1", ConnectorId(7), SenderClass::Unregistered),
            received(1000, "q1", ConnectorId(7), SenderClass::Unregistered),
            received(1100, "q2", ConnectorId(7), SenderClass::Unregistered),
            received(1200, "q3", ConnectorId(8), SenderClass::Unregistered),
            // Too old, registered, refused, other tenant: not counted.
            received(10, "q4", ConnectorId(8), SenderClass::Unregistered),
            received(1300, "q5", ConnectorId(9), SenderClass::Registered),
        ];
        let mut refused = received(1300, "q6", ConnectorId(9), SenderClass::Unregistered);
        refused.kind = TraceKind::Refused;
        events.push(refused);
        let mut other = received(1300, "q7", ConnectorId(9), SenderClass::Unregistered);
        other.tenant_id = Some(TenantId(2));
        events.push(other);
        s.record_trace(&events).await.unwrap();

        let counts = s
            .count_received_by_connector(TenantId(1), SenderClass::Unregistered, 500)
            .await
            .unwrap();
        assert_eq!(counts, [(ConnectorId(7), 2), (ConnectorId(8), 1)]);
        assert!(s
            .count_received_by_connector(TenantId(3), SenderClass::Unregistered, 0)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn trace_pages_follow_each_other() {
        let (_dir, s, _) = store().await;
        // Many events share a millisecond: paging must neither skip nor repeat them.
        let mut events = Vec::new();
        for i in 0..25 {
            let mut e = TraceEvent::new(TraceKind::Received);
            e.at_ms = 1000 + (i / 10) as i64;
            e.tenant_id = Some(if i % 5 == 0 { TenantId(2) } else { TenantId(1) });
            e.sender = Some(format!("User{}@Example.com", i % 2));
            events.push(e);
        }
        s.record_trace(&events).await.unwrap();

        let q = TraceQuery {
            tenant_id: Some(TenantId(1)),
            limit: 4,
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s.search_trace_page(&q, after).await.unwrap();
            assert!(page.len() <= 4);
            if page.is_empty() {
                break;
            }
            let last = page.last().unwrap();
            after = Some((last.at_ms, last.id));
            seen.extend(page.into_iter().map(|e| (e.at_ms, e.id)));
        }
        let mut expected: Vec<(i64, i64)> = s
            .search_trace(&TraceQuery {
                tenant_id: Some(TenantId(1)),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .map(|e| (e.at_ms, e.id))
            .collect();
        assert_eq!(seen.len(), 20);
        assert_eq!(seen, expected);
        expected.sort();
        expected.dedup();
        assert_eq!(expected.len(), 20);

        // The same filters as search_trace.
        let q = TraceQuery {
            sender: Some("user1@example.COM".into()),
            ..Default::default()
        };
        assert_eq!(
            s.search_trace_page(&q, None).await.unwrap(),
            s.search_trace(&q).await.unwrap()
        );
    }
}
