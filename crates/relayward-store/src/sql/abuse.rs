//! The abuse detector's records: restriction status and transitions, sender restrictions,
//! per-tenant sender limits, forwarded-domain declarations. Same rules as the rest of the store:
//! writes run inside the caller's write transaction, every change is audited, and changes the
//! running relay must see bump the directory version.

use relayward_core::{TenantId, TenantState, Timestamp};

use crate::ConnectorChangeRecord;
use sqlx::{QueryBuilder, Row};

use super::audit::{audit_and_bump, insert_audit};
use super::directory::require_tenant;
use super::{for_update, parse_col, Db, DbConn, DbPool, DbRow};
use crate::{
    NewSenderRestriction, NewTransition, Result, SenderRestrictionRecord, StoreError,
    TenantStatusRecord, TransitionRecord,
};

fn status_from_row(row: &DbRow) -> Result<TenantStatusRecord> {
    let state: TenantState = parse_col(row, "state")?;
    let created_at: i64 = row.try_get("created_at")?;
    let changed_at: Option<i64> = row.try_get("state_changed_at")?;
    let since_ms: Option<i64> = row.try_get("state_since_ms")?;
    // `state_since_ms` is only as fresh as the last detector-aware write: trust it while
    // `state_changed_at` still says the same second (see migration 0002).
    let since_ms = match (since_ms, changed_at) {
        (Some(ms), Some(at)) if ms.div_euclid(1000) == at => ms,
        (_, Some(at)) => at.saturating_mul(1000),
        (_, None) => created_at.saturating_mul(1000),
    };
    let probation_until_ms: Option<i64> = row.try_get("probation_until_ms")?;
    Ok(TenantStatusRecord {
        tenant_id: row.try_get("id")?,
        state,
        since_ms,
        probation_until_ms: if state == TenantState::Probation {
            probation_until_ms
        } else {
            None
        },
        reason: row.try_get("state_reason")?,
        changed_by: row.try_get("state_changed_by")?,
    })
}

pub(super) async fn tenant_statuses(
    pool: &DbPool,
    id: Option<TenantId>,
) -> Result<Vec<TenantStatusRecord>> {
    let mut qb: QueryBuilder<Db> = QueryBuilder::new(
        "SELECT id, state, created_at, state_changed_at, state_changed_by, state_reason, \
         state_since_ms, probation_until_ms FROM tenants",
    );
    if let Some(id) = id {
        qb.push(" WHERE id = ").push_bind(id);
    }
    qb.push(" ORDER BY id");
    qb.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(status_from_row)
        .collect()
}

pub(super) async fn record_transition(
    conn: &mut DbConn,
    t: &NewTransition,
    actor: &str,
) -> Result<(i64, i64)> {
    // Compare-and-set: the state changes only if it still is `t.from`. Of two nodes making the
    // same transition at once, the second waits for the first's row lock, then finds the state
    // changed and gets no row back.
    let name: Option<String> = sqlx::query_scalar(
        "UPDATE tenants SET state = $1, state_changed_at = $2, state_changed_by = $3, \
         state_reason = $4, state_since_ms = $5, probation_until_ms = $6 \
         WHERE id = $7 AND state = $8 RETURNING name",
    )
    .bind(t.to.as_str())
    .bind(t.at_ms.div_euclid(1000))
    .bind(actor)
    .bind(&t.summary)
    .bind(t.at_ms)
    .bind(t.probation_until_ms)
    .bind(t.tenant_id)
    .bind(t.from.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(name) = name else {
        let tenant = require_tenant(conn, t.tenant_id).await?;
        return Err(StoreError::Conflict(format!(
            "tenant {} is in state {}, not {}",
            tenant.name, tenant.state, t.from
        )));
    };
    let id: i64 = sqlx::query(
        "INSERT INTO tenant_transitions (tenant_id, at_ms, from_state, to_state, actor, cause, \
         summary, probation_until_ms, evidence, attestation) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(t.tenant_id)
    .bind(t.at_ms)
    .bind(t.from.as_str())
    .bind(t.to.as_str())
    .bind(actor)
    .bind(&t.cause)
    .bind(&t.summary)
    .bind(t.probation_until_ms)
    .bind(&t.evidence)
    .bind(&t.attestation)
    .fetch_one(&mut *conn)
    .await?
    .try_get("id")?;
    let detail = format!(
        "state {} -> {}: {} (transition {id}, cause {})",
        t.from, t.to, t.summary, t.cause
    );
    let version = audit_and_bump(
        conn,
        actor,
        "tenant.state",
        Some(t.tenant_id),
        &format!("tenant {name}"),
        &detail,
    )
    .await?;
    Ok((id, version))
}

fn transition_from_row(row: &DbRow) -> Result<TransitionRecord> {
    Ok(TransitionRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        at_ms: row.try_get("at_ms")?,
        from: parse_col(row, "from_state")?,
        to: parse_col(row, "to_state")?,
        actor: row.try_get("actor")?,
        cause: row.try_get("cause")?,
        summary: row.try_get("summary")?,
        probation_until_ms: row.try_get("probation_until_ms")?,
        evidence: row.try_get("evidence")?,
        attestation: row.try_get("attestation")?,
    })
}

pub(super) async fn list_transitions(
    pool: &DbPool,
    tenant: TenantId,
    limit: i64,
) -> Result<Vec<TransitionRecord>> {
    sqlx::query(
        "SELECT id, tenant_id, at_ms, from_state, to_state, actor, cause, summary, \
         probation_until_ms, evidence, attestation FROM tenant_transitions \
         WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(tenant)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(transition_from_row)
    .collect()
}

pub(super) async fn connector_changes(
    pool: &DbPool,
    tenant: TenantId,
    since: Timestamp,
) -> Result<Vec<ConnectorChangeRecord>> {
    sqlx::query(
        "SELECT connector_id, at, actor, action, detail FROM audit_log \
         WHERE tenant_id = $1 AND LOWER(action) LIKE 'connector.%' AND at >= $2 \
         ORDER BY id DESC LIMIT 1000",
    )
    .bind(tenant)
    .bind(since)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok(ConnectorChangeRecord {
            connector_id: row.try_get("connector_id")?,
            at: row.try_get("at")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            detail: row.try_get("detail")?,
        })
    })
    .collect()
}

const RESTRICTION_COLS: &str = "id, tenant_id, sender, since_ms, until_ms, limit_name, action, \
                                reason, created_by, lifted_at_ms, lifted_by";

fn restriction_from_row(row: &DbRow) -> Result<SenderRestrictionRecord> {
    Ok(SenderRestrictionRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        sender: row.try_get("sender")?,
        since_ms: row.try_get("since_ms")?,
        until_ms: row.try_get("until_ms")?,
        limit: row.try_get("limit_name")?,
        action: row.try_get("action")?,
        reason: row.try_get("reason")?,
        created_by: row.try_get("created_by")?,
        lifted_at_ms: row.try_get("lifted_at_ms")?,
        lifted_by: row.try_get("lifted_by")?,
    })
}

pub(super) async fn add_sender_restriction(
    conn: &mut DbConn,
    r: &NewSenderRestriction,
    actor: &str,
) -> Result<i64> {
    if r.sender.is_empty() {
        return Err(StoreError::Invalid("sender is empty".into()));
    }
    let tenant = require_tenant(conn, r.tenant_id).await?;
    let id: i64 = sqlx::query(
        "INSERT INTO sender_restrictions (tenant_id, sender, since_ms, until_ms, limit_name, \
         action, reason, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(r.tenant_id)
    .bind(&r.sender)
    .bind(r.since_ms)
    .bind(r.until_ms)
    .bind(&r.limit)
    .bind(&r.action)
    .bind(&r.reason)
    .bind(actor)
    .fetch_one(&mut *conn)
    .await?
    .try_get("id")?;
    let until = match r.until_ms {
        Some(u) => format!("until {u} ms"),
        None => "until lifted".into(),
    };
    audit_and_bump(
        conn,
        actor,
        "sender.restrict",
        Some(r.tenant_id),
        &format!("sender {}", r.sender),
        &format!(
            "tenant {}: restricted ({}) {until}: {}",
            tenant.name, r.action, r.reason
        ),
    )
    .await?;
    Ok(id)
}

pub(super) async fn lift_sender_restrictions(
    conn: &mut DbConn,
    tenant: Option<TenantId>,
    sender: &str,
    at_ms: i64,
    actor: &str,
) -> Result<Vec<SenderRestrictionRecord>> {
    let mut qb: QueryBuilder<Db> = QueryBuilder::new(format!(
        "SELECT {RESTRICTION_COLS} FROM sender_restrictions WHERE sender = "
    ));
    qb.push_bind(sender)
        .push(" AND lifted_at_ms IS NULL AND (until_ms IS NULL OR until_ms > ")
        .push_bind(at_ms)
        .push(")");
    if let Some(t) = tenant {
        qb.push(" AND tenant_id = ").push_bind(t);
    }
    // Locked: of two lifts at once, the second finds them lifted by the first.
    qb.push(" ORDER BY id").push(for_update!());
    let mut rows = qb
        .build()
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(restriction_from_row)
        .collect::<Result<Vec<_>>>()?;
    for r in &mut rows {
        sqlx::query(
            "UPDATE sender_restrictions SET lifted_at_ms = $1, lifted_by = $2 WHERE id = $3",
        )
        .bind(at_ms)
        .bind(actor)
        .bind(r.id)
        .execute(&mut *conn)
        .await?;
        r.lifted_at_ms = Some(at_ms);
        r.lifted_by = Some(actor.to_string());
        audit_and_bump(
            conn,
            actor,
            "sender.unrestrict",
            Some(r.tenant_id),
            &format!("sender {}", r.sender),
            &format!("restriction {} lifted (was: {})", r.id, r.reason),
        )
        .await?;
    }
    Ok(rows)
}

pub(super) async fn list_sender_restrictions(
    pool: &DbPool,
    tenant: Option<TenantId>,
    now_ms: i64,
    lifted_since_ms: Option<i64>,
) -> Result<Vec<SenderRestrictionRecord>> {
    let mut qb: QueryBuilder<Db> = QueryBuilder::new(format!(
        "SELECT {RESTRICTION_COLS} FROM sender_restrictions WHERE ((lifted_at_ms IS NULL AND \
         (until_ms IS NULL OR until_ms > "
    ));
    qb.push_bind(now_ms).push("))");
    if let Some(since) = lifted_since_ms {
        qb.push(" OR lifted_at_ms >= ").push_bind(since);
    }
    qb.push(")");
    if let Some(t) = tenant {
        qb.push(" AND tenant_id = ").push_bind(t);
    }
    qb.push(" ORDER BY id");
    qb.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(restriction_from_row)
        .collect()
}

pub(super) async fn set_tenant_sender_limits(
    conn: &mut DbConn,
    tenant: TenantId,
    limits: Option<&str>,
    actor: &str,
) -> Result<()> {
    let t = require_tenant(conn, tenant).await?;
    sqlx::query("UPDATE tenants SET sender_limits = $1 WHERE id = $2")
        .bind(limits)
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    let detail = match limits {
        Some(l) => format!("sender limits set: {l}"),
        None => "sender limits reset to the defaults".to_string(),
    };
    audit_and_bump(
        conn,
        actor,
        "tenant.sender_limits",
        Some(tenant),
        &format!("tenant {}", t.name),
        &detail,
    )
    .await?;
    Ok(())
}

pub(super) async fn tenant_sender_limits(pool: &DbPool) -> Result<Vec<(TenantId, String)>> {
    sqlx::query("SELECT id, sender_limits FROM tenants WHERE sender_limits IS NOT NULL ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("sender_limits")?)))
        .collect()
}

pub(super) async fn declare_forwarded_domains(
    conn: &mut DbConn,
    tenant: TenantId,
    domains: &[String],
    actor: &str,
) -> Result<()> {
    let t = require_tenant(conn, tenant).await?;
    let at = relayward_core::now();
    for d in domains {
        let added = sqlx::query(
            "INSERT INTO forwarded_domains (tenant_id, domain, declared_at, declared_by) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, domain) DO NOTHING",
        )
        .bind(tenant)
        .bind(d)
        .bind(at)
        .bind(actor)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if added > 0 {
            insert_audit(
                conn,
                actor,
                "domain.forwarded",
                Some(tenant),
                &format!("domain {d}"),
                &format!("declared as forwarded by tenant {}", t.name),
            )
            .await?;
        }
    }
    Ok(())
}

pub(super) async fn forwarded_domains(pool: &DbPool, tenant: TenantId) -> Result<Vec<String>> {
    sqlx::query("SELECT domain FROM forwarded_domains WHERE tenant_id = $1 ORDER BY domain")
        .bind(tenant)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("domain")?))
        .collect()
}
