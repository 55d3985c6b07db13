//! Per-tenant delivery outcomes by hour (see migration 0007).

use relayward_core::{ReputationHour, TenantId};
use sqlx::Row;

use super::{DbConn, DbPool, DbRow};
use crate::Result;

/// Adds each row's counts to the stored hour; hours older than `keep_from` are dropped in the
/// same transaction, so the table holds the rates' 7 days and no more.
pub(super) async fn add(tx: &mut DbConn, rows: &[ReputationHour], keep_from: i64) -> Result<()> {
    // In key order: two nodes adding to the same hours lock the rows in the same order, so
    // neither waits for the other while holding a row the other needs.
    let mut rows: Vec<&ReputationHour> = rows.iter().collect();
    rows.sort_unstable_by_key(|r| (r.tenant_id, r.hour));
    for r in rows {
        sqlx::query(
            "INSERT INTO reputation_hours (tenant_id, hour, delivered, bounces, complaints)
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $1)
             ON CONFLICT (tenant_id, hour) DO UPDATE SET
                 delivered = reputation_hours.delivered + excluded.delivered,
                 bounces = reputation_hours.bounces + excluded.bounces,
                 complaints = reputation_hours.complaints + excluded.complaints",
        )
        .bind(r.tenant_id)
        .bind(r.hour)
        .bind(i64::from(r.delivered))
        .bind(i64::from(r.bounces))
        .bind(i64::from(r.complaints))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM reputation_hours WHERE hour < $1")
        .bind(keep_from)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The hours from `from` on, of one tenant or of all.
pub(super) async fn load(
    pool: &DbPool,
    tenant: Option<TenantId>,
    from: i64,
) -> Result<Vec<ReputationHour>> {
    let rows = sqlx::query(
        "SELECT tenant_id, hour, delivered, bounces, complaints FROM reputation_hours
         WHERE hour >= $1 AND ($2 IS NULL OR tenant_id = $2) ORDER BY tenant_id, hour",
    )
    .bind(from)
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let count = |row: &DbRow, col: &str| -> Result<u32> {
        let v: i64 = row.try_get(col)?;
        Ok(u32::try_from(v.max(0)).unwrap_or(u32::MAX))
    };
    rows.iter()
        .map(|row| {
            Ok(ReputationHour {
                tenant_id: row.try_get("tenant_id")?,
                hour: row.try_get("hour")?,
                delivered: count(row, "delivered")?,
                bounces: count(row, "bounces")?,
                complaints: count(row, "complaints")?,
            })
        })
        .collect()
}
