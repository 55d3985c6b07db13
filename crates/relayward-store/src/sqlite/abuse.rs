//! The abuse detector's records on SQLite: restriction status and transitions, sender
//! restrictions, per-tenant sender limits, forwarded-domain declarations. Same rules as the rest
//! of the backend: writes run inside the caller's `BEGIN IMMEDIATE` transaction, every change is
//! audited, and changes the running relay must see bump the directory version.

use relayward_core::{TenantId, TenantState, Timestamp};

use crate::ConnectorChangeRecord;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::audit::{audit_and_bump, insert_audit};
use super::directory::require_tenant;
use super::parse_col;
use crate::{
    NewSenderRestriction, NewTransition, Result, SenderRestrictionRecord, StoreError,
    TenantStatusRecord, TransitionRecord,
};

fn status_from_row(row: &SqliteRow) -> Result<TenantStatusRecord> {
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
    pool: &SqlitePool,
    id: Option<TenantId>,
) -> Result<Vec<TenantStatusRecord>> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
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
    conn: &mut SqliteConnection,
    t: &NewTransition,
    actor: &str,
) -> Result<(i64, i64)> {
    let tenant = require_tenant(conn, t.tenant_id).await?;
    if tenant.state != t.from {
        return Err(StoreError::Conflict(format!(
            "tenant {} is in state {}, not {}",
            tenant.name, tenant.state, t.from
        )));
    }
    sqlx::query(
        "UPDATE tenants SET state = ?, state_changed_at = ?, state_changed_by = ?, \
         state_reason = ?, state_since_ms = ?, probation_until_ms = ? WHERE id = ?",
    )
    .bind(t.to.as_str())
    .bind(t.at_ms.div_euclid(1000))
    .bind(actor)
    .bind(&t.summary)
    .bind(t.at_ms)
    .bind(t.probation_until_ms)
    .bind(t.tenant_id)
    .execute(&mut *conn)
    .await?;
    let id: i64 = sqlx::query(
        "INSERT INTO tenant_transitions (tenant_id, at_ms, from_state, to_state, actor, cause, \
         summary, probation_until_ms, evidence, attestation) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
    audit_and_bump(
        conn,
        actor,
        "tenant.state",
        Some(t.tenant_id),
        &format!("tenant {}", tenant.name),
        &detail,
    )
    .await?;
    let version: i64 = sqlx::query("SELECT version FROM directory_version WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?
        .try_get("version")?;
    Ok((id, version))
}

fn transition_from_row(row: &SqliteRow) -> Result<TransitionRecord> {
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
    pool: &SqlitePool,
    tenant: TenantId,
    limit: i64,
) -> Result<Vec<TransitionRecord>> {
    sqlx::query(
        "SELECT id, tenant_id, at_ms, from_state, to_state, actor, cause, summary, \
         probation_until_ms, evidence, attestation FROM tenant_transitions \
         WHERE tenant_id = ? ORDER BY id DESC LIMIT ?",
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
    pool: &SqlitePool,
    tenant: TenantId,
    since: Timestamp,
) -> Result<Vec<ConnectorChangeRecord>> {
    sqlx::query(
        "SELECT connector_id, at, actor, action, detail FROM audit_log \
         WHERE tenant_id = ? AND action LIKE 'connector.%' AND at >= ? \
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

fn restriction_from_row(row: &SqliteRow) -> Result<SenderRestrictionRecord> {
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
    conn: &mut SqliteConnection,
    r: &NewSenderRestriction,
    actor: &str,
) -> Result<i64> {
    if r.sender.is_empty() {
        return Err(StoreError::Invalid("sender is empty".into()));
    }
    let tenant = require_tenant(conn, r.tenant_id).await?;
    let id: i64 = sqlx::query(
        "INSERT INTO sender_restrictions (tenant_id, sender, since_ms, until_ms, limit_name, \
         action, reason, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
    conn: &mut SqliteConnection,
    tenant: Option<TenantId>,
    sender: &str,
    at_ms: i64,
    actor: &str,
) -> Result<Vec<SenderRestrictionRecord>> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
        "SELECT {RESTRICTION_COLS} FROM sender_restrictions WHERE sender = "
    ));
    qb.push_bind(sender)
        .push(" AND lifted_at_ms IS NULL AND (until_ms IS NULL OR until_ms > ")
        .push_bind(at_ms)
        .push(")");
    if let Some(t) = tenant {
        qb.push(" AND tenant_id = ").push_bind(t);
    }
    qb.push(" ORDER BY id");
    let mut rows = qb
        .build()
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(restriction_from_row)
        .collect::<Result<Vec<_>>>()?;
    for r in &mut rows {
        sqlx::query("UPDATE sender_restrictions SET lifted_at_ms = ?, lifted_by = ? WHERE id = ?")
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
    pool: &SqlitePool,
    tenant: Option<TenantId>,
    now_ms: i64,
    lifted_since_ms: Option<i64>,
) -> Result<Vec<SenderRestrictionRecord>> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
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
    conn: &mut SqliteConnection,
    tenant: TenantId,
    limits: Option<&str>,
    actor: &str,
) -> Result<()> {
    let t = require_tenant(conn, tenant).await?;
    sqlx::query("UPDATE tenants SET sender_limits = ? WHERE id = ?")
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
    .await
}

pub(super) async fn tenant_sender_limits(pool: &SqlitePool) -> Result<Vec<(TenantId, String)>> {
    sqlx::query("SELECT id, sender_limits FROM tenants WHERE sender_limits IS NOT NULL ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("sender_limits")?)))
        .collect()
}

pub(super) async fn declare_forwarded_domains(
    conn: &mut SqliteConnection,
    tenant: TenantId,
    domains: &[String],
    actor: &str,
) -> Result<()> {
    let t = require_tenant(conn, tenant).await?;
    let at = relayward_core::now();
    for d in domains {
        let added = sqlx::query(
            "INSERT INTO forwarded_domains (tenant_id, domain, declared_at, declared_by) \
             VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id, domain) DO NOTHING",
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

pub(super) async fn forwarded_domains(pool: &SqlitePool, tenant: TenantId) -> Result<Vec<String>> {
    sqlx::query("SELECT domain FROM forwarded_domains WHERE tenant_id = ? ORDER BY domain")
        .bind(tenant)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("domain")?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use crate::{NewSenderRestriction, NewTransition, Store, StoreError};
    use relayward_core::{TenantId, TenantState, Timestamp};

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relayward.db");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        (dir, store)
    }

    fn transition(
        tenant: TenantId,
        at_ms: i64,
        from: TenantState,
        to: TenantState,
    ) -> NewTransition {
        NewTransition {
            tenant_id: tenant,
            at_ms,
            from,
            to,
            cause: "detector".into(),
            summary: "block-level signal".into(),
            probation_until_ms: None,
            evidence: r#"{"signals":[]}"#.into(),
            attestation: None,
        }
    }

    #[tokio::test]
    async fn transitions_update_status_audit_and_version() {
        let (_dir, s) = store().await;
        let t = s.create_tenant("acme", &[], "test").await.unwrap();
        let st = s.tenant_status(t.id).await.unwrap().unwrap();
        assert_eq!(st.state, TenantState::Active);
        assert_eq!(st.since_ms, t.created_at.0 * 1000);
        let v0 = s.directory_version().await.unwrap();

        let at = 1_767_225_600_123;
        let (id, v1) = s
            .record_transition(
                &transition(
                    t.id,
                    at,
                    TenantState::Active,
                    TenantState::BlockedUnregistered,
                ),
                "detector",
            )
            .await
            .unwrap();
        assert_eq!(v1, v0 + 1);
        assert_eq!(s.directory_version().await.unwrap(), v1);
        let st = s.tenant_status(t.id).await.unwrap().unwrap();
        assert_eq!(st.state, TenantState::BlockedUnregistered);
        assert_eq!(st.since_ms, at);
        assert_eq!(st.reason.as_deref(), Some("block-level signal"));
        assert_eq!(st.changed_by.as_deref(), Some("detector"));
        assert_eq!(
            s.get_tenant(t.id).await.unwrap().unwrap().state,
            TenantState::BlockedUnregistered
        );
        let audit = s.list_audit(Some(t.id), 1).await.unwrap().remove(0);
        assert_eq!(audit.action, "tenant.state");
        assert!(
            audit.detail.contains(&format!(
                "active -> blocked_unregistered: block-level signal (transition {id}"
            )),
            "{}",
            audit.detail
        );

        // Compare-and-set on the state.
        let e = s
            .record_transition(
                &transition(t.id, at + 1, TenantState::Active, TenantState::Warned),
                "detector",
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");

        let mut p = transition(
            t.id,
            at + 10,
            TenantState::BlockedUnregistered,
            TenantState::Probation,
        );
        p.cause = "operator".into();
        p.probation_until_ms = Some(at + 10 + 7 * 86_400_000);
        s.record_transition(&p, "cli:noc").await.unwrap();
        let st = s.tenant_status(t.id).await.unwrap().unwrap();
        assert_eq!(st.probation_until_ms, Some(at + 10 + 7 * 86_400_000));
        let list = s.list_transitions(t.id, 0).await.unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].to, TenantState::Probation);
        assert_eq!(list[0].actor, "cli:noc");
        assert_eq!(list[1].evidence, r#"{"signals":[]}"#);

        // An older writer that knows nothing of state_since_ms: its own time wins.
        s.set_tenant_state(t.id, TenantState::Active, "cli:old", "manual")
            .await
            .unwrap();
        let st = s.tenant_status(t.id).await.unwrap().unwrap();
        assert_eq!(st.state, TenantState::Active);
        assert!((st.since_ms - relayward_core::now().0 * 1000).abs() < 5_000);
        assert_eq!(st.probation_until_ms, None);
        assert_eq!(s.tenant_statuses().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn sender_restrictions_limits_forwarded_and_connector_changes() {
        let (_dir, s) = store().await;
        let a = s.create_tenant("a", &[], "test").await.unwrap();
        let b = s.create_tenant("b", &[], "test").await.unwrap();
        let r = |tenant, until| NewSenderRestriction {
            tenant_id: tenant,
            sender: "app@a.example".into(),
            since_ms: 1_000,
            until_ms: until,
            limit: "messages_per_minute".into(),
            action: "block".into(),
            reason: "31 over 30".into(),
        };
        let v0 = s.directory_version().await.unwrap();
        s.add_sender_restriction(&r(a.id, None), "detector")
            .await
            .unwrap();
        s.add_sender_restriction(&r(b.id, Some(5_000)), "detector")
            .await
            .unwrap();
        assert_eq!(s.directory_version().await.unwrap(), v0 + 2);
        assert_eq!(
            s.list_sender_restrictions(None, 2_000, None)
                .await
                .unwrap()
                .len(),
            2
        );
        // b's has ended by 6,000.
        let standing = s.list_sender_restrictions(None, 6_000, None).await.unwrap();
        assert_eq!(standing.len(), 1);
        assert_eq!(standing[0].tenant_id, a.id);
        assert!(standing[0].standing(6_000));

        let lifted = s
            .lift_sender_restrictions(Some(a.id), "app@a.example", 7_000, "cli:noc")
            .await
            .unwrap();
        assert_eq!(lifted.len(), 1);
        assert_eq!(lifted[0].lifted_by.as_deref(), Some("cli:noc"));
        assert!(s
            .list_sender_restrictions(None, 7_000, None)
            .await
            .unwrap()
            .is_empty());
        let recent = s
            .list_sender_restrictions(Some(a.id), 7_000, Some(6_500))
            .await
            .unwrap();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].lifted_at_ms, Some(7_000));
        // Nothing standing: nothing lifted.
        assert!(s
            .lift_sender_restrictions(None, "app@a.example", 8_000, "cli:noc")
            .await
            .unwrap()
            .is_empty());
        let audit = s.list_audit(Some(a.id), 1).await.unwrap().remove(0);
        assert_eq!(audit.action, "sender.unrestrict");

        s.set_tenant_sender_limits(a.id, Some(r#"{"action":"block"}"#), "cli:noc")
            .await
            .unwrap();
        assert_eq!(
            s.tenant_sender_limits().await.unwrap(),
            vec![(a.id, r#"{"action":"block"}"#.to_string())]
        );
        s.set_tenant_sender_limits(a.id, None, "cli:noc")
            .await
            .unwrap();
        assert!(s.tenant_sender_limits().await.unwrap().is_empty());

        s.declare_forwarded_domains(a.id, &["list.example".into()], "cli:admin")
            .await
            .unwrap();
        s.declare_forwarded_domains(
            a.id,
            &["list.example".into(), "club.example".into()],
            "cli:admin",
        )
        .await
        .unwrap();
        assert_eq!(
            s.forwarded_domains(a.id).await.unwrap(),
            vec!["club.example".to_string(), "list.example".to_string()]
        );
        assert!(s.forwarded_domains(b.id).await.unwrap().is_empty());

        let c = s
            .add_connector(
                crate::NewConnector {
                    tenant_id: a.id,
                    name: "edge".into(),
                    kind: relayward_core::ConnectorKind::OnPremises,
                    ip_ranges: vec!["192.0.2.0/24".parse().unwrap()],
                    cert_name: None,
                    auth_user: None,
                    auth_password_hash: None,
                    require_tls: false,
                    allow_unregistered: false,
                    restrict_domains_to_ips: false,
                    restrict_domains_to_cert: false,
                },
                "cli:admin",
            )
            .await
            .unwrap();
        let mut c2 = c.clone();
        c2.allow_unregistered = true;
        s.update_connector(&c2, "cli:admin").await.unwrap();
        let changes = s.connector_changes(a.id, Timestamp(0)).await.unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].action, "connector.update");
        assert!(changes[0]
            .detail
            .contains("allow_unregistered false -> true"));
        // Each names the connector by id, a deleted one too.
        assert!(changes.iter().all(|ch| ch.connector_id == Some(c.id)));
        s.delete_connector(c.id, "cli:admin").await.unwrap();
        let changes = s.connector_changes(a.id, Timestamp(0)).await.unwrap();
        assert_eq!(changes[0].action, "connector.delete");
        assert_eq!(changes[0].connector_id, Some(c.id));
        assert!(s
            .connector_changes(a.id, relayward_core::now() + 10)
            .await
            .unwrap()
            .is_empty());
        assert!(s
            .connector_changes(b.id, Timestamp(0))
            .await
            .unwrap()
            .is_empty());
    }
}
