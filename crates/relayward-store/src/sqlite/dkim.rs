//! DKIM key records on SQLite (see migration 0004). Same rules as the rest of the backend:
//! writes run inside the caller's `BEGIN IMMEDIATE` transaction, are audited, and bump the
//! directory version so that a running relay picks up a new key on its next poll.

use relayward_core::{now, TenantId};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Row, SqlitePool};

use super::audit::audit_and_bump;
use super::directory::require_tenant;
use crate::{DkimKeyRecord, Result, StoreError};

macro_rules! dkim_cols {
    () => {
        "domain, tenant_id, selector, algorithm, created_at, created_by"
    };
}

fn record_from_row(row: &SqliteRow) -> Result<DkimKeyRecord> {
    Ok(DkimKeyRecord {
        domain: row.try_get("domain")?,
        tenant_id: row.try_get("tenant_id")?,
        selector: row.try_get("selector")?,
        algorithm: row.try_get("algorithm")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

pub(super) async fn set_dkim_key(
    conn: &mut SqliteConnection,
    domain: &str,
    tenant: Option<TenantId>,
    selector: &str,
    algorithm: &str,
    actor: &str,
) -> Result<DkimKeyRecord> {
    if domain.is_empty() || selector.is_empty() || algorithm.is_empty() {
        return Err(StoreError::Invalid(
            "DKIM key needs a domain, a selector and an algorithm".into(),
        ));
    }
    if let Some(t) = tenant {
        require_tenant(conn, t).await?;
    }
    let previous: Option<String> =
        sqlx::query_scalar("SELECT selector FROM dkim_keys WHERE domain = ?")
            .bind(domain)
            .fetch_optional(&mut *conn)
            .await?;
    let at = now();
    sqlx::query(
        "INSERT INTO dkim_keys (domain, tenant_id, selector, algorithm, created_at, created_by) \
         VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT (domain) DO UPDATE SET tenant_id = excluded.tenant_id, \
         selector = excluded.selector, algorithm = excluded.algorithm, \
         created_at = excluded.created_at, created_by = excluded.created_by",
    )
    .bind(domain)
    .bind(tenant)
    .bind(selector)
    .bind(algorithm)
    .bind(at)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    let detail = match previous {
        Some(old) => format!("selector {old} -> {selector} ({algorithm})"),
        None => format!("selector {selector} ({algorithm})"),
    };
    audit_and_bump(conn, actor, "dkim.key", tenant, domain, &detail).await?;
    Ok(DkimKeyRecord {
        domain: domain.to_string(),
        tenant_id: tenant,
        selector: selector.to_string(),
        algorithm: algorithm.to_string(),
        created_at: at,
        created_by: actor.to_string(),
    })
}

pub(super) async fn get_dkim_key(pool: &SqlitePool, domain: &str) -> Result<Option<DkimKeyRecord>> {
    sqlx::query(concat!(
        "SELECT ",
        dkim_cols!(),
        " FROM dkim_keys WHERE domain = ?"
    ))
    .bind(domain)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(record_from_row)
    .transpose()
}

pub(super) async fn list_dkim_keys(pool: &SqlitePool) -> Result<Vec<DkimKeyRecord>> {
    sqlx::query(concat!(
        "SELECT ",
        dkim_cols!(),
        " FROM dkim_keys ORDER BY domain"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(record_from_row)
    .collect()
}

#[cfg(test)]
mod tests {
    use crate::{SqliteStore, Store};
    use relayward_core::TenantId;

    #[tokio::test]
    async fn dkim_keys_are_recorded_replaced_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let s = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let t = s.create_tenant("acme", &[], "test").await.unwrap();
        let v0 = s.directory_version().await.unwrap();
        assert!(s.get_dkim_key("acme.example").await.unwrap().is_none());

        let k = s
            .set_dkim_key("acme.example", Some(t.id), "s1", "ed25519", "test")
            .await
            .unwrap();
        assert_eq!(k.selector, "s1");
        assert!(s.directory_version().await.unwrap() > v0);
        s.set_dkim_key("acme.example", Some(t.id), "s2", "rsa2048", "test")
            .await
            .unwrap();
        s.set_dkim_key("srs.relay.example", None, "relayward", "ed25519", "test")
            .await
            .unwrap();
        let all = s.list_dkim_keys().await.unwrap();
        assert_eq!(all.len(), 2);
        let acme = s.get_dkim_key("acme.example").await.unwrap().unwrap();
        assert_eq!(
            (acme.selector.as_str(), acme.algorithm.as_str()),
            ("s2", "rsa2048")
        );
        assert_eq!(acme.tenant_id, Some(t.id));
        assert_eq!(all[1].tenant_id, None);

        let audit = s.list_audit(Some(t.id), 10).await.unwrap();
        assert!(audit
            .iter()
            .any(|a| a.action == "dkim.key" && a.detail == "selector s1 -> s2 (rsa2048)"));
        assert!(s
            .set_dkim_key("x.example", Some(TenantId(9999)), "s", "ed25519", "test")
            .await
            .is_err());
    }
}
