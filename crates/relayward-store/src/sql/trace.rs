//! The message trace: one row per event of a message's life, searched by the admin tools.

use relayward_core::{ConnectorId, SenderClass, TenantId, TraceEvent, TraceKind, TraceQuery};
use sqlx::{QueryBuilder, Row};

use super::{
    begin_write, count_col, effective_limit, parse_col, parse_opt_col, Backend, Db, DbRow,
};
use crate::Result;

macro_rules! trace_cols {
    () => {
        "id, at_ms, kind, queue_id, message_id, tenant_id, connector_id, client_ip, sender, \
         recipient, sender_class, reply, detail, node"
    };
}

/// 13 bound values a row: well under SQLite's 32,766 variables a statement and PostgreSQL's
/// 65,535.
const TRACE_ROWS_PER_INSERT: usize = 200;

fn trace_from_row(row: &DbRow) -> Result<TraceEvent> {
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
        node: row.try_get("node")?,
    })
}

/// The filters of [`crate::Store::search_trace`].
fn push_trace_filters(qb: &mut QueryBuilder<Db>, q: &TraceQuery) {
    if let Some(t) = q.tenant_id {
        qb.push(" AND tenant_id = ").push_bind(t);
    }
    // Addresses match case-insensitively, ASCII only: SQLite's LOWER folds ASCII only, and so
    // does PostgreSQL's on these columns (COLLATE "C"). The indexes are on LOWER(sender) and
    // LOWER(recipient).
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
}

pub(super) async fn record_trace(store: &Backend, events: &[TraceEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = begin_write(&store.pool).await?;
    // Many rows per statement: each statement is a round trip (to SQLite's worker thread, or to
    // the PostgreSQL server), and at full load the trace carries several events per message.
    for chunk in events.chunks(TRACE_ROWS_PER_INSERT) {
        let mut qb: QueryBuilder<Db> = QueryBuilder::new(
            "INSERT INTO trace_events (at_ms, kind, queue_id, message_id, tenant_id, \
             connector_id, client_ip, sender, recipient, sender_class, reply, detail, node) ",
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
                .push_bind(&e.detail)
                .push_bind(&e.node);
        });
        qb.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn search_trace(store: &Backend, q: &TraceQuery) -> Result<Vec<TraceEvent>> {
    search_trace_page(store, q, None).await
}

pub(super) async fn count_received_by_connector(
    store: &Backend,
    tenant: TenantId,
    class: SenderClass,
    since_ms: i64,
) -> Result<Vec<(ConnectorId, u64)>> {
    let rows = sqlx::query(
        "SELECT connector_id, COUNT(DISTINCT queue_id) AS n FROM trace_events \
         WHERE tenant_id = $1 AND connector_id IS NOT NULL AND at_ms >= $2 \
         AND kind = $3 AND sender_class = $4 \
         GROUP BY connector_id ORDER BY connector_id",
    )
    .bind(tenant)
    .bind(since_ms)
    .bind(TraceKind::Received.as_str())
    .bind(class.as_str())
    .fetch_all(&store.pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("connector_id")?, count_col(r, "n")?)))
        .collect()
}

pub(super) async fn search_trace_page(
    store: &Backend,
    q: &TraceQuery,
    after: Option<(i64, i64)>,
) -> Result<Vec<TraceEvent>> {
    let mut qb: QueryBuilder<Db> = QueryBuilder::new(concat!(
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
