//! Suppression lists (see migration 0006). Writes run inside the caller's write transaction and
//! bump the suppression version (not the directory's): a running relay asks for the rows changed
//! since the version it holds.

use relayward_core::{Suppression, SuppressionSource, SuppressionUpdates, TenantId, Timestamp};
use sqlx::Row;

use super::audit::insert_audit;
use super::directory::require_tenant;
use super::{begin_snapshot, for_update, parse_col, DbConn, DbPool, DbRow};
use crate::{Result, StoreError};

macro_rules! suppression_cols {
    () => {
        "tenant_id, address, source, reason, created_at, created_by, expires_at"
    };
}

/// Rows in force at the time bound as placeholder `$p`.
macro_rules! in_force {
    ($p:literal) => {
        concat!(
            "removed_at IS NULL AND (expires_at IS NULL OR expires_at > ",
            $p,
            ")"
        )
    };
}

fn suppression_from_row(row: &DbRow) -> Result<Suppression> {
    Ok(Suppression {
        tenant_id: row.try_get("tenant_id")?,
        address: row.try_get("address")?,
        source: parse_col(row, "source")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// The list a row is on, for audit details.
fn list_name(tenant: Option<TenantId>) -> &'static str {
    match tenant {
        Some(_) => "tenant list",
        None => "global list",
    }
}

fn until_text(s: &Suppression) -> String {
    match s.expires_at {
        Some(e) => format!("for {} days", (e - s.created_at).max(0).div_euclid(86_400)),
        None => "until removed".into(),
    }
}

/// Suppression writes one at a time, whichever node makes them: each reads the address's row,
/// decides, then writes it, and a bounce and a person's change to one address may come at once.
/// The lock is the version row's, which the write bumps anyway.
async fn serialize_writes(conn: &mut DbConn) -> Result<()> {
    sqlx::query(concat!(
        "SELECT version FROM suppression_version WHERE id = 1",
        for_update!()
    ))
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

async fn bump(conn: &mut DbConn) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "UPDATE suppression_version SET version = version + 1 WHERE id = 1 RETURNING version",
    )
    .fetch_one(&mut *conn)
    .await?)
}

pub(super) async fn add(conn: &mut DbConn, s: &Suppression, actor: &str) -> Result<Suppression> {
    let address = s.address.trim().to_lowercase();
    if address.is_empty() {
        return Err(StoreError::Invalid("suppression needs an address".into()));
    }
    if let Some(t) = s.tenant_id {
        require_tenant(conn, t).await?;
    }
    serialize_writes(conn).await?;
    let existing = sqlx::query(concat!(
        "SELECT id, removed_at, ",
        suppression_cols!(),
        " FROM suppressions WHERE COALESCE(tenant_id, 0) = COALESCE($1, 0) AND address = $2"
    ))
    .bind(s.tenant_id)
    .bind(&address)
    .fetch_optional(&mut *conn)
    .await?;
    let new = Suppression {
        address,
        created_by: actor.to_string(),
        ..s.clone()
    };
    let id: Option<i64> = match &existing {
        Some(row) => {
            let old = suppression_from_row(row)?;
            let removed: Option<i64> = row.try_get("removed_at")?;
            let standing = removed.is_none() && old.active(new.created_at);
            let old_lasts = match (old.expires_at, new.expires_at) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(o), Some(n)) => o >= n,
            };
            // A manual entry replaces one as long: a person's reason is the one to show.
            let keep = standing
                && old_lasts
                && !(new.source == SuppressionSource::Manual && old.expires_at == new.expires_at);
            if keep {
                return Ok(old);
            }
            Some(row.try_get("id")?)
        }
        None => None,
    };
    let version = bump(conn).await?;
    match id {
        Some(id) => {
            sqlx::query(
                "UPDATE suppressions SET source = $1, reason = $2, created_at = $3, created_by = $4, \
                 expires_at = $5, removed_at = NULL, removed_by = NULL, version = $6 WHERE id = $7",
            )
            .bind(new.source.as_str())
            .bind(&new.reason)
            .bind(new.created_at)
            .bind(&new.created_by)
            .bind(new.expires_at)
            .bind(version)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
        None => {
            sqlx::query(
                "INSERT INTO suppressions (tenant_id, address, source, reason, created_at, \
                 created_by, expires_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(new.tenant_id)
            .bind(&new.address)
            .bind(new.source.as_str())
            .bind(&new.reason)
            .bind(new.created_at)
            .bind(&new.created_by)
            .bind(new.expires_at)
            .bind(version)
            .execute(&mut *conn)
            .await?;
        }
    }
    if new.source == SuppressionSource::Manual {
        let detail = format!(
            "{}, {}: {}",
            list_name(new.tenant_id),
            until_text(&new),
            new.reason
        );
        insert_audit(
            conn,
            actor,
            "suppression.add",
            new.tenant_id,
            &new.address,
            &detail,
        )
        .await?;
    }
    Ok(new)
}

pub(super) async fn remove(
    conn: &mut DbConn,
    tenant: Option<TenantId>,
    address: &str,
    now: Timestamp,
    actor: &str,
) -> Result<bool> {
    let address = address.trim().to_lowercase();
    serialize_writes(conn).await?;
    let row = sqlx::query(concat!(
        "SELECT id, ",
        suppression_cols!(),
        " FROM suppressions WHERE COALESCE(tenant_id, 0) = COALESCE($1, 0) AND address = $2 AND ",
        in_force!("$3")
    ))
    .bind(tenant)
    .bind(&address)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let old = suppression_from_row(&row)?;
    let id: i64 = row.try_get("id")?;
    let version = bump(conn).await?;
    sqlx::query(
        "UPDATE suppressions SET removed_at = $1, removed_by = $2, version = $3 WHERE id = $4",
    )
    .bind(now)
    .bind(actor)
    .bind(version)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let detail = format!(
        "removed from the {} (was: {} by {}: {})",
        list_name(tenant),
        old.source,
        old.created_by,
        old.reason
    );
    insert_audit(conn, actor, "suppression.remove", tenant, &address, &detail).await?;
    Ok(true)
}

pub(super) async fn list(
    pool: &DbPool,
    tenant: Option<TenantId>,
    now: Timestamp,
) -> Result<Vec<Suppression>> {
    let q = match tenant {
        Some(t) => sqlx::query(concat!(
            "SELECT ",
            suppression_cols!(),
            " FROM suppressions WHERE tenant_id = $1 AND ",
            in_force!("$2"),
            " ORDER BY address"
        ))
        .bind(t),
        None => sqlx::query(concat!(
            "SELECT ",
            suppression_cols!(),
            " FROM suppressions WHERE tenant_id IS NULL AND ",
            in_force!("$1"),
            " ORDER BY address"
        )),
    };
    q.bind(now)
        .fetch_all(pool)
        .await?
        .iter()
        .map(suppression_from_row)
        .collect()
}

pub(super) async fn version(pool: &DbPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT version FROM suppression_version WHERE id = 1")
            .fetch_one(pool)
            .await?,
    )
}

pub(super) async fn updates(
    pool: &DbPool,
    since: i64,
    now: Timestamp,
) -> Result<SuppressionUpdates> {
    // One read transaction: the version and the rows of the same snapshot.
    let mut tx = begin_snapshot(pool).await?;
    let version: i64 = sqlx::query_scalar("SELECT version FROM suppression_version WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let rows = if since == 0 {
        sqlx::query(concat!(
            "SELECT removed_at, ",
            suppression_cols!(),
            " FROM suppressions WHERE ",
            in_force!("$1")
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
    } else {
        sqlx::query(concat!(
            "SELECT removed_at, ",
            suppression_cols!(),
            " FROM suppressions WHERE version > $1 ORDER BY version"
        ))
        .bind(since)
        .fetch_all(&mut *tx)
        .await?
    };
    tx.commit().await?;
    let mut out = SuppressionUpdates {
        version,
        ..Default::default()
    };
    for row in &rows {
        let s = suppression_from_row(row)?;
        let removed: Option<i64> = row.try_get("removed_at")?;
        if removed.is_none() && s.active(now) {
            out.changed.push(s);
        } else {
            out.removed.push((s.tenant_id, s.address));
        }
    }
    Ok(out)
}
