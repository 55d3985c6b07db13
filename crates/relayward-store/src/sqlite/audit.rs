//! The audit log. A directory change writes its entry in the transaction that makes it (with the
//! version bump, see [`audit_and_bump`]); other actions are recorded on their own.

use relayward_core::{now, AuditEntry, ConnectorId, TenantId};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::Row;

use super::{effective_limit, SqliteStore};
use crate::Result;

pub(super) fn audit_from_row(row: &SqliteRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        tenant_id: row.try_get("tenant_id")?,
        object: row.try_get("object")?,
        detail: row.try_get("detail")?,
    })
}

pub(super) async fn insert_audit(
    conn: &mut SqliteConnection,
    actor: &str,
    action: &str,
    tenant: Option<TenantId>,
    object: &str,
    detail: &str,
) -> Result<()> {
    insert_row(conn, actor, action, tenant, None, object, detail).await
}

/// One audit entry; `connector`: the connector it is about, by id.
async fn insert_row(
    conn: &mut SqliteConnection,
    actor: &str,
    action: &str,
    tenant: Option<TenantId>,
    connector: Option<ConnectorId>,
    object: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, tenant_id, object, detail, connector_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(now())
    .bind(actor)
    .bind(action)
    .bind(tenant)
    .bind(object)
    .bind(detail)
    .bind(connector)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The directory changed: every relay reloads it.
async fn bump_version(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("UPDATE directory_version SET version = version + 1 WHERE id = 1")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The tail of a change to connector `connector`: its audit entry, which names the connector by
/// id as well as by name, and the version bump.
pub(super) async fn connector_audit_and_bump(
    conn: &mut SqliteConnection,
    actor: &str,
    action: &str,
    tenant: TenantId,
    connector: ConnectorId,
    name: &str,
    detail: &str,
) -> Result<()> {
    let object = format!("connector {name}");
    insert_row(
        conn,
        actor,
        action,
        Some(tenant),
        Some(connector),
        &object,
        detail,
    )
    .await?;
    bump_version(conn).await
}

/// The tail of every directory change: its audit entry and the version bump.
pub(super) async fn audit_and_bump(
    conn: &mut SqliteConnection,
    actor: &str,
    action: &str,
    tenant: Option<TenantId>,
    object: &str,
    detail: &str,
) -> Result<()> {
    insert_audit(conn, actor, action, tenant, object, detail).await?;
    bump_version(conn).await
}

pub(super) async fn audit(
    store: &SqliteStore,
    actor: &str,
    action: &str,
    tenant: Option<TenantId>,
    object: &str,
    detail: &str,
) -> Result<()> {
    let mut conn = store.pool.acquire().await?;
    insert_audit(&mut conn, actor, action, tenant, object, detail).await
}

pub(super) async fn list_audit(
    store: &SqliteStore,
    tenant: Option<TenantId>,
    limit: u32,
) -> Result<Vec<AuditEntry>> {
    let limit = effective_limit(limit);
    let rows = match tenant {
        Some(t) => {
            sqlx::query(
                "SELECT id, at, actor, action, tenant_id, object, detail FROM audit_log \
                 WHERE tenant_id = ? ORDER BY id DESC LIMIT ?",
            )
            .bind(t)
            .bind(limit)
            .fetch_all(&store.pool)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT id, at, actor, action, tenant_id, object, detail FROM audit_log \
                 ORDER BY id DESC LIMIT ?",
            )
            .bind(limit)
            .fetch_all(&store.pool)
            .await?
        }
    };
    rows.iter().map(audit_from_row).collect()
}
