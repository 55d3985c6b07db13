//! DKIM key records (see migration 0004). Same rules as the rest of the store: writes run inside
//! the caller's write transaction, are audited, and bump the directory version so that a running
//! relay picks up a new key on its next poll.

use relayward_core::{now, TenantId};
use sqlx::Row;

use super::audit::audit_and_bump;
use super::directory::require_tenant;
use super::{for_update, DbConn, DbPool, DbRow};
use crate::{DkimKeyRecord, Result, StoreError};

macro_rules! dkim_cols {
    () => {
        "domain, tenant_id, selector, algorithm, created_at, created_by"
    };
}

fn record_from_row(row: &DbRow) -> Result<DkimKeyRecord> {
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
    conn: &mut DbConn,
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
    let previous: Option<String> = sqlx::query_scalar(concat!(
        "SELECT selector FROM dkim_keys WHERE domain = $1",
        for_update!()
    ))
    .bind(domain)
    .fetch_optional(&mut *conn)
    .await?;
    let at = now();
    sqlx::query(
        "INSERT INTO dkim_keys (domain, tenant_id, selector, algorithm, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6) \
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

pub(super) async fn get_dkim_key(pool: &DbPool, domain: &str) -> Result<Option<DkimKeyRecord>> {
    sqlx::query(concat!(
        "SELECT ",
        dkim_cols!(),
        " FROM dkim_keys WHERE domain = $1"
    ))
    .bind(domain)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(record_from_row)
    .transpose()
}

pub(super) async fn list_dkim_keys(pool: &DbPool) -> Result<Vec<DkimKeyRecord>> {
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
