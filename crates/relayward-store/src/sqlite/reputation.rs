//! Per-tenant delivery outcomes by hour on SQLite (see migration 0007).

use relayward_core::{ReputationHour, TenantId};
use sqlx::{Row, SqlitePool};

use crate::Result;

/// Adds each row's counts to the stored hour; hours older than `keep_from` are dropped in the
/// same transaction, so the table holds the rates' 7 days and no more.
pub(super) async fn add(
    tx: &mut sqlx::SqliteConnection,
    rows: &[ReputationHour],
    keep_from: i64,
) -> Result<()> {
    for r in rows {
        sqlx::query(
            "INSERT INTO reputation_hours (tenant_id, hour, delivered, bounces, complaints)
             SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM tenants WHERE id = ?)
             ON CONFLICT (tenant_id, hour) DO UPDATE SET
                 delivered = delivered + excluded.delivered,
                 bounces = bounces + excluded.bounces,
                 complaints = complaints + excluded.complaints",
        )
        .bind(r.tenant_id)
        .bind(r.hour)
        .bind(i64::from(r.delivered))
        .bind(i64::from(r.bounces))
        .bind(i64::from(r.complaints))
        .bind(r.tenant_id)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM reputation_hours WHERE hour < ?")
        .bind(keep_from)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The hours from `from` on, of one tenant or of all.
pub(super) async fn load(
    pool: &SqlitePool,
    tenant: Option<TenantId>,
    from: i64,
) -> Result<Vec<ReputationHour>> {
    let rows = sqlx::query(
        "SELECT tenant_id, hour, delivered, bounces, complaints FROM reputation_hours
         WHERE hour >= ? AND (? IS NULL OR tenant_id = ?) ORDER BY tenant_id, hour",
    )
    .bind(from)
    .bind(tenant)
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let count = |row: &sqlx::sqlite::SqliteRow, col: &str| -> Result<u32> {
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

#[cfg(test)]
mod tests {
    use relayward_core::{ReputationHour, TenantId};

    use crate::{SqliteStore, Store};

    #[tokio::test]
    async fn hours_add_up_and_age_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let t = store.create_tenant("acme", &[], "test").await.unwrap().id;
        let row = |hour, delivered, bounces, complaints| ReputationHour {
            tenant_id: t,
            hour,
            delivered,
            bounces,
            complaints,
        };
        store
            .add_reputation_hours(&[row(100, 10, 1, 0), row(101, 5, 0, 1)], 0)
            .await
            .unwrap();
        // A second relay's counts for the same hour add up; a deleted tenant's are dropped.
        let gone = ReputationHour {
            tenant_id: TenantId(t.0 + 1000),
            ..row(101, 1, 1, 1)
        };
        store
            .add_reputation_hours(&[row(101, 7, 2, 0), gone], 0)
            .await
            .unwrap();
        assert_eq!(
            store.reputation_hours(Some(t), 0).await.unwrap(),
            vec![row(100, 10, 1, 0), row(101, 12, 2, 1)]
        );
        assert_eq!(store.reputation_hours(None, 101).await.unwrap().len(), 1);
        // Hours before the window go with the next write.
        store.add_reputation_hours(&[], 101).await.unwrap();
        assert_eq!(
            store.reputation_hours(None, 0).await.unwrap(),
            vec![row(101, 12, 2, 1)]
        );
    }
}
