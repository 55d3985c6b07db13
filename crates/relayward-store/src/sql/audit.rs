//! The audit log. A directory change writes its entry in the transaction that makes it (with the
//! version bump, see [`audit_and_bump`]); other actions are recorded on their own.

use relayward_core::{now, AuditEntry, ConnectorId, TenantId};
use sqlx::Row;

use super::{effective_limit, Backend, DbConn, DbRow};
use crate::Result;

pub(super) fn audit_from_row(row: &DbRow) -> Result<AuditEntry> {
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
    conn: &mut DbConn,
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
    conn: &mut DbConn,
    actor: &str,
    action: &str,
    tenant: Option<TenantId>,
    connector: Option<ConnectorId>,
    object: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, tenant_id, object, detail, connector_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
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

/// The directory changed: every relay reloads it. Returns the new version.
///
/// One row, updated in place: the update's row lock makes concurrent changes (of any node, on
/// PostgreSQL) take their turns from here to their commit, so each gets its own version and
/// a reader that sees version `v` sees every change up to `v`.
async fn bump_version(conn: &mut DbConn, tenant: Option<TenantId>) -> Result<i64> {
    let version: i64 = sqlx::query_scalar(
        "UPDATE directory_version SET version = version + 1 WHERE id = 1 RETURNING version",
    )
    .fetch_one(&mut *conn)
    .await?;
    // What changed, for the relays that apply changes rather than reload (the change log).
    sqlx::query("INSERT INTO directory_changes (version, tenant_id) VALUES ($1, $2)")
        .bind(version)
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM directory_changes WHERE version <= $1")
        .bind(version - CHANGES_KEPT)
        .execute(&mut *conn)
        .await?;
    Ok(version)
}

/// Versions of the change log kept: a relay further behind reloads the whole directory.
pub(super) const CHANGES_KEPT: i64 = 100_000;

/// The tail of a change to connector `connector`: its audit entry, which names the connector by
/// id as well as by name, and the version bump (returns the new version).
pub(super) async fn connector_audit_and_bump(
    conn: &mut DbConn,
    actor: &str,
    action: &str,
    tenant: TenantId,
    connector: ConnectorId,
    name: &str,
    detail: &str,
) -> Result<i64> {
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
    bump_version(conn, Some(tenant)).await
}

/// The tail of every directory change: its audit entry and the version bump (returns the new
/// version). `tenant` is the tenant whose part of the directory changed (the change log says
/// so to the relays); `None` for a change of no single tenant's, after which relays reload the
/// whole directory.
pub(super) async fn audit_and_bump(
    conn: &mut DbConn,
    actor: &str,
    action: &str,
    tenant: Option<TenantId>,
    object: &str,
    detail: &str,
) -> Result<i64> {
    insert_audit(conn, actor, action, tenant, object, detail).await?;
    bump_version(conn, tenant).await
}

pub(super) async fn audit(
    store: &Backend,
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
    store: &Backend,
    tenant: Option<TenantId>,
    limit: u32,
) -> Result<Vec<AuditEntry>> {
    let limit = effective_limit(limit);
    let rows = match tenant {
        Some(t) => {
            sqlx::query(
                "SELECT id, at, actor, action, tenant_id, object, detail FROM audit_log \
                 WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(t)
            .bind(limit)
            .fetch_all(&store.pool)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT id, at, actor, action, tenant_id, object, detail FROM audit_log \
                 ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&store.pool)
            .await?
        }
    };
    rows.iter().map(audit_from_row).collect()
}
