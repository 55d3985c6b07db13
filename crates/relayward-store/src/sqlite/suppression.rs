//! Suppression lists on SQLite (see migration 0006). Writes run inside the caller's
//! `BEGIN IMMEDIATE` transaction and bump the suppression version (not the directory's): a
//! running relay asks for the rows changed since the version it holds.

use relayward_core::{Suppression, SuppressionSource, SuppressionUpdates, TenantId, Timestamp};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Row, SqlitePool};

use super::audit::insert_audit;
use super::directory::require_tenant;
use super::parse_col;
use crate::{Result, StoreError};

macro_rules! suppression_cols {
    () => {
        "tenant_id, address, source, reason, created_at, created_by, expires_at"
    };
}

/// Rows in force at `?` (bound by the caller).
macro_rules! in_force {
    () => {
        "removed_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"
    };
}

fn suppression_from_row(row: &SqliteRow) -> Result<Suppression> {
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

async fn bump(conn: &mut SqliteConnection) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "UPDATE suppression_version SET version = version + 1 WHERE id = 1 RETURNING version",
    )
    .fetch_one(&mut *conn)
    .await?)
}

pub(super) async fn add(
    conn: &mut SqliteConnection,
    s: &Suppression,
    actor: &str,
) -> Result<Suppression> {
    let address = s.address.trim().to_lowercase();
    if address.is_empty() {
        return Err(StoreError::Invalid("suppression needs an address".into()));
    }
    if let Some(t) = s.tenant_id {
        require_tenant(conn, t).await?;
    }
    let existing = sqlx::query(concat!(
        "SELECT id, removed_at, ",
        suppression_cols!(),
        " FROM suppressions WHERE COALESCE(tenant_id, 0) = COALESCE(?, 0) AND address = ?"
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
                "UPDATE suppressions SET source = ?, reason = ?, created_at = ?, created_by = ?, \
                 expires_at = ?, removed_at = NULL, removed_by = NULL, version = ? WHERE id = ?",
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
                 created_by, expires_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
    conn: &mut SqliteConnection,
    tenant: Option<TenantId>,
    address: &str,
    now: Timestamp,
    actor: &str,
) -> Result<bool> {
    let address = address.trim().to_lowercase();
    let row = sqlx::query(concat!(
        "SELECT id, ",
        suppression_cols!(),
        " FROM suppressions WHERE COALESCE(tenant_id, 0) = COALESCE(?, 0) AND address = ? AND ",
        in_force!()
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
    sqlx::query("UPDATE suppressions SET removed_at = ?, removed_by = ?, version = ? WHERE id = ?")
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
    pool: &SqlitePool,
    tenant: Option<TenantId>,
    now: Timestamp,
) -> Result<Vec<Suppression>> {
    let q = match tenant {
        Some(t) => sqlx::query(concat!(
            "SELECT ",
            suppression_cols!(),
            " FROM suppressions WHERE tenant_id = ? AND ",
            in_force!(),
            " ORDER BY address"
        ))
        .bind(t),
        None => sqlx::query(concat!(
            "SELECT ",
            suppression_cols!(),
            " FROM suppressions WHERE tenant_id IS NULL AND ",
            in_force!(),
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

pub(super) async fn version(pool: &SqlitePool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT version FROM suppression_version WHERE id = 1")
            .fetch_one(pool)
            .await?,
    )
}

pub(super) async fn updates(
    pool: &SqlitePool,
    since: i64,
    now: Timestamp,
) -> Result<SuppressionUpdates> {
    // One read transaction: the version and the rows of the same snapshot.
    let mut tx = pool.begin().await?;
    let version: i64 = sqlx::query_scalar("SELECT version FROM suppression_version WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let rows = if since == 0 {
        sqlx::query(concat!(
            "SELECT removed_at, ",
            suppression_cols!(),
            " FROM suppressions WHERE ",
            in_force!()
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
    } else {
        sqlx::query(concat!(
            "SELECT removed_at, ",
            suppression_cols!(),
            " FROM suppressions WHERE version > ? ORDER BY version"
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

#[cfg(test)]
mod tests {
    use relayward_core::{Suppression, SuppressionSource, TenantId, Timestamp};

    use crate::{SqliteStore, Store};

    const DAY: i64 = 86_400;

    fn bounce(tenant: Option<TenantId>, address: &str, at: i64, days: Option<i64>) -> Suppression {
        Suppression {
            tenant_id: tenant,
            address: address.into(),
            source: SuppressionSource::HardBounce,
            reason: "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown".into(),
            created_at: Timestamp(at),
            created_by: String::new(),
            expires_at: (days.map(|d| at + d * DAY)).map(Timestamp),
        }
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let s = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn entries_expire_and_a_repeat_bounce_extends_them() {
        let (_dir, s) = store().await;
        let t = s.create_tenant("acme", &[], "test").await.unwrap();
        let t0 = 1_700_000_000;
        let dir_version = s.directory_version().await.unwrap();
        assert_eq!(s.suppression_version().await.unwrap(), 0);

        let e = s
            .add_suppression(
                &bounce(Some(t.id), "Gone@Example.org", t0, Some(14)),
                "relay",
            )
            .await
            .unwrap();
        assert_eq!(e.address, "gone@example.org");
        assert_eq!(e.created_by, "relay");
        let v1 = s.suppression_version().await.unwrap();
        assert!(v1 > 0);
        // The directory is not reloaded for a bounce.
        assert_eq!(s.directory_version().await.unwrap(), dir_version);

        let listed = s
            .list_suppressions(Some(t.id), Timestamp(t0 + DAY))
            .await
            .unwrap();
        assert_eq!(listed, vec![e.clone()]);
        assert!(s
            .list_suppressions(Some(t.id), Timestamp(t0 + 14 * DAY))
            .await
            .unwrap()
            .is_empty());

        // An earlier bounce's shorter entry changes nothing.
        let kept = s
            .add_suppression(
                &bounce(Some(t.id), "gone@example.org", t0 - DAY, Some(14)),
                "relay",
            )
            .await
            .unwrap();
        assert_eq!(kept, e);
        assert_eq!(s.suppression_version().await.unwrap(), v1);

        // A repeat bounce ten days later: fourteen days from then.
        let later = s
            .add_suppression(
                &bounce(Some(t.id), "gone@example.org", t0 + 10 * DAY, Some(14)),
                "relay",
            )
            .await
            .unwrap();
        assert_eq!(later.expires_at, Some(Timestamp(t0 + 24 * DAY)));
        let listed = s
            .list_suppressions(Some(t.id), Timestamp(t0 + 20 * DAY))
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].expires_at, Some(Timestamp(t0 + 24 * DAY)));

        // Expired, then bounced again: a fresh entry on the same row.
        let again = s
            .add_suppression(
                &bounce(Some(t.id), "gone@example.org", t0 + 30 * DAY, Some(14)),
                "relay",
            )
            .await
            .unwrap();
        assert_eq!(again.created_at, Timestamp(t0 + 30 * DAY));

        // Automatic adds are not in the audit log.
        assert!(!s
            .list_audit(None, 100)
            .await
            .unwrap()
            .iter()
            .any(|a| a.action.starts_with("suppression.")));
        assert!(s
            .add_suppression(
                &bounce(Some(TenantId(9999)), "x@example.org", t0, Some(1)),
                "relay"
            )
            .await
            .is_err());
    }

    #[tokio::test]
    async fn tenant_and_global_lists_are_apart_and_people_are_audited() {
        let (_dir, s) = store().await;
        let acme = s.create_tenant("acme", &[], "test").await.unwrap();
        let other = s.create_tenant("other", &[], "test").await.unwrap();
        let t0 = 1_700_000_000;
        let manual = |tenant, address: &str| Suppression {
            source: SuppressionSource::Manual,
            reason: "asked to stop".into(),
            ..bounce(tenant, address, t0, None)
        };
        s.add_suppression(&manual(Some(acme.id), "a@example.org"), "cli:ops")
            .await
            .unwrap();
        s.add_suppression(&manual(None, "a@example.org"), "token:1/operator")
            .await
            .unwrap();
        s.add_suppression(&manual(None, "trap@example.org"), "token:1/operator")
            .await
            .unwrap();

        let acme_list = s
            .list_suppressions(Some(acme.id), Timestamp(t0))
            .await
            .unwrap();
        assert_eq!(acme_list.len(), 1);
        assert_eq!(acme_list[0].tenant_id, Some(acme.id));
        assert!(s
            .list_suppressions(Some(other.id), Timestamp(t0))
            .await
            .unwrap()
            .is_empty());
        let global = s
            .list_suppressions(None, Timestamp(t0 + 1000 * DAY))
            .await
            .unwrap();
        assert_eq!(
            global
                .iter()
                .map(|g| g.address.as_str())
                .collect::<Vec<_>>(),
            ["a@example.org", "trap@example.org"]
        );
        assert!(global.iter().all(|g| g.tenant_id.is_none()));

        // A bounce does not shorten a manual entry that never expires.
        let kept = s
            .add_suppression(
                &bounce(Some(acme.id), "a@example.org", t0 + DAY, Some(14)),
                "relay",
            )
            .await
            .unwrap();
        assert_eq!(kept.source, SuppressionSource::Manual);
        assert_eq!(kept.expires_at, None);

        // Removing from one list leaves the other.
        assert!(!s
            .remove_suppression(Some(other.id), "a@example.org", Timestamp(t0), "cli:ops")
            .await
            .unwrap());
        assert!(s
            .remove_suppression(Some(acme.id), "A@example.org", Timestamp(t0), "cli:ops")
            .await
            .unwrap());
        assert!(!s
            .remove_suppression(Some(acme.id), "a@example.org", Timestamp(t0), "cli:ops")
            .await
            .unwrap());
        assert!(s
            .list_suppressions(Some(acme.id), Timestamp(t0))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.list_suppressions(None, Timestamp(t0))
                .await
                .unwrap()
                .len(),
            2
        );

        let audit = s.list_audit(None, 100).await.unwrap();
        let acme_audit = s.list_audit(Some(acme.id), 100).await.unwrap();
        let actions = |log: &[relayward_core::AuditEntry]| {
            log.iter()
                .filter(|a| a.action.starts_with("suppression."))
                .map(|a| {
                    (
                        a.action.clone(),
                        a.tenant_id,
                        a.actor.clone(),
                        a.object.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            actions(&acme_audit),
            [
                (
                    "suppression.remove".to_string(),
                    Some(acme.id),
                    "cli:ops".to_string(),
                    "a@example.org".to_string()
                ),
                (
                    "suppression.add".to_string(),
                    Some(acme.id),
                    "cli:ops".to_string(),
                    "a@example.org".to_string()
                ),
            ]
        );
        assert_eq!(
            actions(&audit)
                .iter()
                .filter(|a| a.1.is_none() && a.2 == "token:1/operator")
                .count(),
            2
        );
        assert!(acme_audit
            .iter()
            .any(|a| a.detail == "tenant list, until removed: asked to stop"));
    }

    #[tokio::test]
    async fn updates_carry_changes_and_removals_since_a_version() {
        let (_dir, s) = store().await;
        let t = s.create_tenant("acme", &[], "test").await.unwrap();
        let t0 = 1_700_000_000;
        s.add_suppression(&bounce(Some(t.id), "a@example.org", t0, Some(14)), "relay")
            .await
            .unwrap();
        s.add_suppression(
            &bounce(Some(t.id), "old@example.org", t0 - 20 * DAY, Some(14)),
            "relay",
        )
        .await
        .unwrap();
        let all = s.suppression_updates(0, Timestamp(t0)).await.unwrap();
        assert_eq!(all.version, s.suppression_version().await.unwrap());
        assert_eq!(
            all.changed
                .iter()
                .map(|c| c.address.as_str())
                .collect::<Vec<_>>(),
            ["a@example.org"]
        );
        assert!(all.removed.is_empty());

        s.remove_suppression(Some(t.id), "a@example.org", Timestamp(t0), "cli:ops")
            .await
            .unwrap();
        s.add_suppression(&bounce(None, "b@example.org", t0, None), "relay")
            .await
            .unwrap();
        let since = s
            .suppression_updates(all.version, Timestamp(t0))
            .await
            .unwrap();
        assert_eq!(since.version, all.version + 2);
        assert_eq!(
            since.removed,
            vec![(Some(t.id), "a@example.org".to_string())]
        );
        assert_eq!(since.changed.len(), 1);
        assert_eq!(since.changed[0].tenant_id, None);
        let nothing = s
            .suppression_updates(since.version, Timestamp(t0))
            .await
            .unwrap();
        assert!(nothing.changed.is_empty() && nothing.removed.is_empty());
    }
}
