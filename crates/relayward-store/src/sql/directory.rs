//! Tenants, accepted domains, header-from allowances and the directory snapshot a running relay
//! loads. Every change runs in a write transaction (`begin_write`), writes its audit entry and
//! bumps the directory version.

use relayward_core::{
    now, AcceptedDomain, ConnectorId, DirectoryData, DirectoryDelta, DomainId, HeaderFromAllowed,
    Tenant, TenantId, TenantPart, TenantState,
};
use sqlx::{QueryBuilder, Row};

use super::audit::audit_and_bump;
use super::connectors::{connector_cols, connector_from_row};
use super::{
    begin_snapshot, begin_write, for_update, parse_col, rows_by_tenant, Backend, Db, DbConn, DbRow,
};
use crate::{NewDomain, Result, StoreError};

macro_rules! tenant_cols {
    () => {
        "id, name, state, admin_emails, created_at"
    };
}

macro_rules! domain_cols {
    () => {
        "id, tenant_id, domain, kind, match_subdomains, verified, verification_token, \
         created_at, verified_at"
    };
}

fn tenant_from_row(row: &DbRow) -> Result<Tenant> {
    let emails: String = row.try_get("admin_emails")?;
    Ok(Tenant {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        state: parse_col(row, "state")?,
        admin_emails: serde_json::from_str(&emails)
            .map_err(|e| StoreError::Backend(format!("bad value in column admin_emails: {e}")))?,
        created_at: row.try_get("created_at")?,
    })
}

fn domain_from_row(row: &DbRow) -> Result<AcceptedDomain> {
    Ok(AcceptedDomain {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        domain: row.try_get("domain")?,
        kind: parse_col(row, "kind")?,
        match_subdomains: row.try_get("match_subdomains")?,
        verified: row.try_get("verified")?,
        verification_token: row.try_get("verification_token")?,
        created_at: row.try_get("created_at")?,
        verified_at: row.try_get("verified_at")?,
    })
}

async fn tenant_by_id(conn: &mut DbConn, id: TenantId) -> Result<Option<Tenant>> {
    sqlx::query(concat!(
        "SELECT ",
        tenant_cols!(),
        " FROM tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(tenant_from_row)
    .transpose()
}

pub(super) async fn require_tenant(conn: &mut DbConn, id: TenantId) -> Result<Tenant> {
    tenant_by_id(conn, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("tenant {id}")))
}

/// [`require_tenant`] for a transaction that changes the tenant's row after reading it: the row
/// stays locked until the transaction ends.
pub(super) async fn lock_tenant(conn: &mut DbConn, id: TenantId) -> Result<Tenant> {
    sqlx::query(concat!(
        "SELECT ",
        tenant_cols!(),
        " FROM tenants WHERE id = $1",
        for_update!()
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(tenant_from_row)
    .transpose()?
    .ok_or_else(|| StoreError::NotFound(format!("tenant {id}")))
}

/// A domain, locked until the transaction ends (it is about to be changed).
async fn lock_domain(conn: &mut DbConn, id: DomainId) -> Result<Option<AcceptedDomain>> {
    sqlx::query(concat!(
        "SELECT ",
        domain_cols!(),
        " FROM accepted_domains WHERE id = $1",
        for_update!()
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(domain_from_row)
    .transpose()
}

/// Is `domain` verified by a tenant other than `tenant`?
async fn verified_elsewhere(conn: &mut DbConn, tenant: TenantId, domain: &str) -> Result<bool> {
    let row = sqlx::query(
        "SELECT id FROM accepted_domains WHERE domain = $1 AND verified = $2 AND tenant_id <> $3",
    )
    .bind(domain)
    .bind(true)
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

fn header_from_from_row(row: &DbRow) -> Result<HeaderFromAllowed> {
    Ok(HeaderFromAllowed {
        tenant_id: row.try_get("tenant_id")?,
        domain: row.try_get("domain")?,
        connector_id: row.try_get("connector_id")?,
        declared_at: row.try_get("declared_at")?,
        declared_by: row.try_get("declared_by")?,
    })
}

/// 32 random lowercase alphanumerics.
fn verification_token() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..32)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

pub(super) async fn create_tenant(
    store: &Backend,
    name: &str,
    admin_emails: &[String],
    actor: &str,
) -> Result<Tenant> {
    let name = name.trim();
    if name.is_empty() {
        return Err(StoreError::Invalid("tenant name is empty".into()));
    }
    let emails = serde_json::to_string(admin_emails)
        .map_err(|e| StoreError::Invalid(format!("admin emails: {e}")))?;
    let created_at = now();
    let mut tx = begin_write(&store.pool).await?;
    // No row back: the name is taken (also when another node took it a moment ago).
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO tenants (name, state, admin_emails, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING RETURNING id",
    )
    .bind(name)
    .bind(TenantState::Active.as_str())
    .bind(&emails)
    .bind(created_at)
    .bind(actor)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Err(StoreError::Conflict(format!(
            "tenant {name} already exists"
        )));
    };
    let detail = if admin_emails.is_empty() {
        "created".to_string()
    } else {
        format!("created; admin emails {}", admin_emails.join(", "))
    };
    audit_and_bump(
        &mut tx,
        actor,
        "tenant.create",
        Some(TenantId(id)),
        &format!("tenant {name}"),
        &detail,
    )
    .await?;
    tx.commit().await?;
    Ok(Tenant {
        id: TenantId(id),
        name: name.to_string(),
        state: TenantState::Active,
        admin_emails: admin_emails.to_vec(),
        created_at,
    })
}

pub(super) async fn list_tenants(store: &Backend) -> Result<Vec<Tenant>> {
    sqlx::query(concat!(
        "SELECT ",
        tenant_cols!(),
        " FROM tenants ORDER BY id"
    ))
    .fetch_all(&store.pool)
    .await?
    .iter()
    .map(tenant_from_row)
    .collect()
}

pub(super) async fn get_tenant(store: &Backend, id: TenantId) -> Result<Option<Tenant>> {
    let mut conn = store.pool.acquire().await?;
    tenant_by_id(&mut conn, id).await
}

pub(super) async fn find_tenant(store: &Backend, name_or_id: &str) -> Result<Option<Tenant>> {
    let mut conn = store.pool.acquire().await?;
    let row = sqlx::query(concat!(
        "SELECT ",
        tenant_cols!(),
        " FROM tenants WHERE name = $1"
    ))
    .bind(name_or_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = row {
        return tenant_from_row(&row).map(Some);
    }
    if !name_or_id.is_empty() && name_or_id.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(id) = name_or_id.parse::<TenantId>() {
            return tenant_by_id(&mut conn, id).await;
        }
    }
    Ok(None)
}

pub(super) async fn set_tenant_state(
    store: &Backend,
    id: TenantId,
    state: TenantState,
    actor: &str,
    reason: &str,
) -> Result<()> {
    let at = now();
    let mut tx = begin_write(&store.pool).await?;
    let tenant = lock_tenant(&mut tx, id).await?;
    sqlx::query(
        "UPDATE tenants SET state = $1, state_changed_at = $2, state_changed_by = $3, \
         state_reason = $4 WHERE id = $5",
    )
    .bind(state.as_str())
    .bind(at)
    .bind(actor)
    .bind(reason)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let detail = if reason.is_empty() {
        format!("state {} -> {}", tenant.state, state)
    } else {
        format!("state {} -> {}: {}", tenant.state, state, reason)
    };
    audit_and_bump(
        &mut tx,
        actor,
        "tenant.state",
        Some(id),
        &format!("tenant {}", tenant.name),
        &detail,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn add_domain(
    store: &Backend,
    domain: NewDomain,
    actor: &str,
) -> Result<AcceptedDomain> {
    let name = domain.domain.as_str();
    if name.is_empty()
        || name.ends_with('.')
        || name
            .bytes()
            .any(|b| b.is_ascii_uppercase() || b.is_ascii_whitespace())
    {
        return Err(StoreError::Invalid(format!(
            "domain {name:?} is not normalized (lowercase, no trailing dot)"
        )));
    }
    let token = verification_token();
    let created_at = now();
    let verified_at = domain.verified.then_some(created_at);
    let mut tx = begin_write(&store.pool).await?;
    let tenant = require_tenant(&mut tx, domain.tenant_id).await?;
    let dup = sqlx::query("SELECT id FROM accepted_domains WHERE tenant_id = $1 AND domain = $2")
        .bind(tenant.id)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    if dup.is_some() {
        return Err(StoreError::Conflict(format!(
            "domain {name} already exists for tenant {}",
            tenant.name
        )));
    }
    if domain.verified && verified_elsewhere(&mut tx, tenant.id, name).await? {
        return Err(StoreError::Conflict(format!(
            "domain {name} is already verified by another tenant"
        )));
    }
    let id: i64 = sqlx::query(
        "INSERT INTO accepted_domains (tenant_id, domain, kind, match_subdomains, verified, \
         verification_token, created_at, created_by, verified_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(tenant.id)
    .bind(name)
    .bind(domain.kind.as_str())
    .bind(domain.match_subdomains)
    .bind(domain.verified)
    .bind(&token)
    .bind(created_at)
    .bind(actor)
    .bind(verified_at)
    .fetch_one(&mut *tx)
    .await?
    .try_get("id")?;
    let detail = format!(
        "added to tenant {}; kind {}{}{}",
        tenant.name,
        domain.kind,
        if domain.match_subdomains {
            ", matching subdomains"
        } else {
            ""
        },
        if domain.verified {
            ", verified by operator"
        } else {
            ", pending verification"
        }
    );
    audit_and_bump(
        &mut tx,
        actor,
        "domain.add",
        Some(tenant.id),
        &format!("domain {name}"),
        &detail,
    )
    .await?;
    tx.commit().await?;
    Ok(AcceptedDomain {
        id: DomainId(id),
        tenant_id: tenant.id,
        domain: domain.domain,
        kind: domain.kind,
        match_subdomains: domain.match_subdomains,
        verified: domain.verified,
        verification_token: token,
        created_at,
        verified_at,
    })
}

pub(super) async fn list_domains(
    store: &Backend,
    tenant: Option<TenantId>,
) -> Result<Vec<AcceptedDomain>> {
    let rows = rows_by_tenant(
        &store.pool,
        tenant,
        concat!(
            "SELECT ",
            domain_cols!(),
            " FROM accepted_domains WHERE tenant_id = $1 ORDER BY domain, id"
        ),
        concat!(
            "SELECT ",
            domain_cols!(),
            " FROM accepted_domains ORDER BY tenant_id, domain, id"
        ),
    )
    .await?;
    rows.iter().map(domain_from_row).collect()
}

pub(super) async fn get_domain(
    store: &Backend,
    tenant: TenantId,
    domain: &str,
) -> Result<Option<AcceptedDomain>> {
    sqlx::query(concat!(
        "SELECT ",
        domain_cols!(),
        " FROM accepted_domains WHERE tenant_id = $1 AND domain = $2"
    ))
    .bind(tenant)
    .bind(domain)
    .fetch_optional(&store.pool)
    .await?
    .as_ref()
    .map(domain_from_row)
    .transpose()
}

pub(super) async fn set_domain_verified(
    store: &Backend,
    id: DomainId,
    verified: bool,
    actor: &str,
) -> Result<()> {
    let at = now();
    let mut tx = begin_write(&store.pool).await?;
    let old = lock_domain(&mut tx, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("domain {id}")))?;
    if verified && verified_elsewhere(&mut tx, old.tenant_id, &old.domain).await? {
        return Err(StoreError::Conflict(format!(
            "domain {} is already verified by another tenant",
            old.domain
        )));
    }
    let verified_at = match (verified, old.verified) {
        (false, _) => None,
        (true, true) => old.verified_at.or(Some(at)),
        (true, false) => Some(at),
    };
    sqlx::query("UPDATE accepted_domains SET verified = $1, verified_at = $2 WHERE id = $3")
        .bind(verified)
        .bind(verified_at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let (action, detail) = match (old.verified, verified) {
        (false, true) => ("domain.verify", "verified"),
        (true, true) => ("domain.verify", "verified (already verified)"),
        (true, false) => ("domain.unverify", "verification withdrawn"),
        (false, false) => ("domain.unverify", "marked unverified (was not verified)"),
    };
    audit_and_bump(
        &mut tx,
        actor,
        action,
        Some(old.tenant_id),
        &format!("domain {}", old.domain),
        detail,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn remove_domain(store: &Backend, id: DomainId, actor: &str) -> Result<()> {
    let mut tx = begin_write(&store.pool).await?;
    let old = lock_domain(&mut tx, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("domain {id}")))?;
    sqlx::query("DELETE FROM accepted_domains WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let detail = format!(
        "removed ({}, {})",
        old.kind,
        if old.verified { "verified" } else { "pending" }
    );
    audit_and_bump(
        &mut tx,
        actor,
        "domain.remove",
        Some(old.tenant_id),
        &format!("domain {}", old.domain),
        &detail,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn directory_version(store: &Backend) -> Result<i64> {
    let mut conn = store.pool.acquire().await?;
    version_in(&mut conn).await
}

/// The directory's rows, read in the snapshot `tx` holds: every tenant's, or (`Some`) those of
/// the tenants `ids` only.
async fn read_directory(
    tx: &mut DbConn,
    version: i64,
    ids: Option<&[i64]>,
) -> Result<DirectoryData> {
    // A table's rows, in id order; of some tenants, ordered by tenant first so that the planner
    // reads the tenant_id index rather than scanning a large table in id order (SQLite did, at
    // a million domains).
    let select = |cols: &str, tenant_col: &str| {
        let mut qb: QueryBuilder<Db> = QueryBuilder::new(format!("SELECT {cols}"));
        match ids {
            None => {
                qb.push(" ORDER BY id");
            }
            Some(ids) => {
                qb.push(" WHERE ").push(tenant_col).push(" IN (");
                let mut list = qb.separated(", ");
                for id in ids {
                    list.push_bind(*id);
                }
                qb.push(") ORDER BY ").push(tenant_col).push(", id");
            }
        }
        qb
    };
    let tenants = select(concat!(tenant_cols!(), " FROM tenants"), "id")
        .build()
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(tenant_from_row)
        .collect::<Result<Vec<_>>>()?;
    let domains = select(
        concat!(domain_cols!(), " FROM accepted_domains"),
        "tenant_id",
    )
    .build()
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(domain_from_row)
    .collect::<Result<Vec<_>>>()?;
    let connectors = select(concat!(connector_cols!(), " FROM connectors"), "tenant_id")
        .build()
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(connector_from_row)
        .collect::<Result<Vec<_>>>()?;
    let header_from_allowed = select(
        "tenant_id, domain, connector_id, declared_at, declared_by FROM header_from_allowed",
        "tenant_id",
    )
    .build()
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(header_from_from_row)
    .collect::<Result<Vec<_>>>()?;
    Ok(DirectoryData {
        version,
        tenants,
        domains,
        connectors,
        header_from_allowed,
    })
}

async fn version_in(conn: &mut DbConn) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT version FROM directory_version WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?,
    )
}

pub(super) async fn load_directory(store: &Backend) -> Result<DirectoryData> {
    // One snapshot: the version and the rows that make it.
    let mut tx = begin_snapshot(&store.pool).await?;
    let version = version_in(&mut tx).await?;
    let data = read_directory(&mut tx, version, None).await?;
    tx.commit().await?;
    Ok(data)
}

/// At most this many changed tenants are applied one by one; more, and the relay reloads the
/// whole directory.
const DELTA_MAX_TENANTS: usize = 10_000;

pub(super) async fn directory_changes(
    store: &Backend,
    since: i64,
) -> Result<Option<DirectoryDelta>> {
    let mut tx = begin_snapshot(&store.pool).await?;
    let version = version_in(&mut tx).await?;
    if version == since {
        return Ok(Some(DirectoryDelta {
            version,
            tenants: Vec::new(),
        }));
    }
    if version < since || version - since > super::audit::CHANGES_KEPT {
        return Ok(None);
    }
    let changes: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT tenant_id FROM directory_changes WHERE version > $1 ORDER BY version",
    )
    .bind(since)
    .fetch_all(&mut *tx)
    .await?;
    // Every version since must be in the log (versions made before it existed are not), and
    // each must be one tenant's.
    if changes.len() as i64 != version - since || changes.iter().any(Option::is_none) {
        return Ok(None);
    }
    let mut ids: Vec<i64> = changes.into_iter().flatten().collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > DELTA_MAX_TENANTS {
        return Ok(None);
    }
    let rows = read_directory(&mut tx, version, Some(&ids)).await?;
    tx.commit().await?;
    let parts = ids
        .into_iter()
        .map(TenantId)
        .map(|id| TenantPart {
            id,
            tenant: rows.tenants.iter().find(|t| t.id == id).cloned(),
            domains: rows
                .domains
                .iter()
                .filter(|d| d.tenant_id == id)
                .cloned()
                .collect(),
            connectors: rows
                .connectors
                .iter()
                .filter(|c| c.tenant_id == id)
                .cloned()
                .collect(),
            header_from_allowed: rows
                .header_from_allowed
                .iter()
                .filter(|a| a.tenant_id == id)
                .cloned()
                .collect(),
        })
        .collect();
    Ok(Some(DirectoryDelta {
        version,
        tenants: parts,
    }))
}

pub(super) async fn allow_header_from(
    store: &Backend,
    a: &HeaderFromAllowed,
    actor: &str,
) -> Result<()> {
    let mut tx = begin_write(&store.pool).await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
        .bind(a.tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!("tenant {}", a.tenant_id)));
    }
    if let Some(c) = a.connector_id {
        let owned: Option<i64> =
            sqlx::query_scalar("SELECT id FROM connectors WHERE id = $1 AND tenant_id = $2")
                .bind(c)
                .bind(a.tenant_id)
                .fetch_optional(&mut *tx)
                .await?;
        if owned.is_none() {
            return Err(StoreError::NotFound(format!("connector {c}")));
        }
    }
    let added = sqlx::query(
        "INSERT INTO header_from_allowed (tenant_id, domain, connector_id, declared_at, declared_by) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(a.tenant_id)
    .bind(&a.domain)
    .bind(a.connector_id)
    .bind(now())
    .bind(actor)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if added == 0 {
        return Err(StoreError::Conflict(format!(
            "header From domain {} is already allowed",
            a.domain
        )));
    }
    let scope = match a.connector_id {
        Some(c) => format!("through connector {c}"),
        None => "through any connector".to_string(),
    };
    audit_and_bump(
        &mut tx,
        actor,
        "header_from.allow",
        Some(a.tenant_id),
        &format!("header_from {}", a.domain),
        &format!(
            "header From {} allowed with registered senders {scope}",
            a.domain
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn disallow_header_from(
    store: &Backend,
    tenant: TenantId,
    domain: &str,
    connector: Option<ConnectorId>,
    actor: &str,
) -> Result<()> {
    let mut tx = begin_write(&store.pool).await?;
    let removed = sqlx::query(
        "DELETE FROM header_from_allowed WHERE tenant_id = $1 AND domain = $2 \
         AND COALESCE(connector_id, 0) = COALESCE($3, 0)",
    )
    .bind(tenant)
    .bind(domain)
    .bind(connector)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if removed == 0 {
        return Err(StoreError::NotFound(format!("header From domain {domain}")));
    }
    audit_and_bump(
        &mut tx,
        actor,
        "header_from.disallow",
        Some(tenant),
        &format!("header_from {domain}"),
        "declaration withdrawn",
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_header_from_allowed(
    store: &Backend,
    tenant: TenantId,
) -> Result<Vec<HeaderFromAllowed>> {
    let rows = sqlx::query(
        "SELECT tenant_id, domain, connector_id, declared_at, declared_by \
         FROM header_from_allowed WHERE tenant_id = $1 \
         ORDER BY domain, connector_id NULLS FIRST",
    )
    .bind(tenant)
    .fetch_all(&store.pool)
    .await?;
    rows.iter().map(header_from_from_row).collect()
}
