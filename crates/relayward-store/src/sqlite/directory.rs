//! Tenants, accepted domains, header-from allowances and the directory snapshot a running relay
//! loads. Every change runs in a `BEGIN IMMEDIATE` transaction, writes its audit entry and bumps
//! the directory version.

use relayward_core::{
    now, AcceptedDomain, ConnectorId, DirectoryData, DomainId, HeaderFromAllowed, Tenant, TenantId,
    TenantState,
};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::Row;

use super::audit::audit_and_bump;
use super::connectors::{connector_cols, connector_from_row};
use super::{parse_col, rows_by_tenant, SqliteStore};
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

fn tenant_from_row(row: &SqliteRow) -> Result<Tenant> {
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

fn domain_from_row(row: &SqliteRow) -> Result<AcceptedDomain> {
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

async fn tenant_by_id(conn: &mut SqliteConnection, id: TenantId) -> Result<Option<Tenant>> {
    sqlx::query(concat!(
        "SELECT ",
        tenant_cols!(),
        " FROM tenants WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(tenant_from_row)
    .transpose()
}

pub(super) async fn require_tenant(conn: &mut SqliteConnection, id: TenantId) -> Result<Tenant> {
    tenant_by_id(conn, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("tenant {id}")))
}

async fn domain_by_id(conn: &mut SqliteConnection, id: DomainId) -> Result<Option<AcceptedDomain>> {
    sqlx::query(concat!(
        "SELECT ",
        domain_cols!(),
        " FROM accepted_domains WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(domain_from_row)
    .transpose()
}

/// Is `domain` verified by a tenant other than `tenant`?
async fn verified_elsewhere(
    conn: &mut SqliteConnection,
    tenant: TenantId,
    domain: &str,
) -> Result<bool> {
    let row = sqlx::query(
        "SELECT id FROM accepted_domains WHERE domain = ? AND verified = ? AND tenant_id <> ?",
    )
    .bind(domain)
    .bind(true)
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

fn header_from_from_row(row: &SqliteRow) -> Result<HeaderFromAllowed> {
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
    store: &SqliteStore,
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
    let mut tx = store.write_tx().await?;
    let dup = sqlx::query("SELECT id FROM tenants WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    if dup.is_some() {
        return Err(StoreError::Conflict(format!(
            "tenant {name} already exists"
        )));
    }
    let id: i64 = sqlx::query(
        "INSERT INTO tenants (name, state, admin_emails, created_at, created_by) \
         VALUES (?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(name)
    .bind(TenantState::Active.as_str())
    .bind(&emails)
    .bind(created_at)
    .bind(actor)
    .fetch_one(&mut *tx)
    .await?
    .try_get("id")?;
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

pub(super) async fn list_tenants(store: &SqliteStore) -> Result<Vec<Tenant>> {
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

pub(super) async fn get_tenant(store: &SqliteStore, id: TenantId) -> Result<Option<Tenant>> {
    let mut conn = store.pool.acquire().await?;
    tenant_by_id(&mut conn, id).await
}

pub(super) async fn find_tenant(store: &SqliteStore, name_or_id: &str) -> Result<Option<Tenant>> {
    let mut conn = store.pool.acquire().await?;
    let row = sqlx::query(concat!(
        "SELECT ",
        tenant_cols!(),
        " FROM tenants WHERE name = ?"
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
    store: &SqliteStore,
    id: TenantId,
    state: TenantState,
    actor: &str,
    reason: &str,
) -> Result<()> {
    let at = now();
    let mut tx = store.write_tx().await?;
    let tenant = require_tenant(&mut tx, id).await?;
    sqlx::query(
        "UPDATE tenants SET state = ?, state_changed_at = ?, state_changed_by = ?, \
         state_reason = ? WHERE id = ?",
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
    store: &SqliteStore,
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
    let mut tx = store.write_tx().await?;
    let tenant = require_tenant(&mut tx, domain.tenant_id).await?;
    let dup = sqlx::query("SELECT id FROM accepted_domains WHERE tenant_id = ? AND domain = ?")
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
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
    store: &SqliteStore,
    tenant: Option<TenantId>,
) -> Result<Vec<AcceptedDomain>> {
    let rows = rows_by_tenant(
        store,
        tenant,
        concat!(
            "SELECT ",
            domain_cols!(),
            " FROM accepted_domains WHERE tenant_id = ? ORDER BY domain, id"
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
    store: &SqliteStore,
    tenant: TenantId,
    domain: &str,
) -> Result<Option<AcceptedDomain>> {
    sqlx::query(concat!(
        "SELECT ",
        domain_cols!(),
        " FROM accepted_domains WHERE tenant_id = ? AND domain = ?"
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
    store: &SqliteStore,
    id: DomainId,
    verified: bool,
    actor: &str,
) -> Result<()> {
    let at = now();
    let mut tx = store.write_tx().await?;
    let old = domain_by_id(&mut tx, id)
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
    sqlx::query("UPDATE accepted_domains SET verified = ?, verified_at = ? WHERE id = ?")
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

pub(super) async fn remove_domain(store: &SqliteStore, id: DomainId, actor: &str) -> Result<()> {
    let mut tx = store.write_tx().await?;
    let old = domain_by_id(&mut tx, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("domain {id}")))?;
    sqlx::query("DELETE FROM accepted_domains WHERE id = ?")
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

pub(super) async fn directory_version(store: &SqliteStore) -> Result<i64> {
    let row = sqlx::query("SELECT version FROM directory_version WHERE id = 1")
        .fetch_one(&store.pool)
        .await?;
    Ok(row.try_get("version")?)
}

pub(super) async fn load_directory(store: &SqliteStore) -> Result<DirectoryData> {
    // One read transaction: in WAL mode it sees a single snapshot of the database.
    let mut tx = store.pool.begin().await?;
    let version: i64 = sqlx::query("SELECT version FROM directory_version WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?
        .try_get("version")?;
    let tenants = sqlx::query(concat!(
        "SELECT ",
        tenant_cols!(),
        " FROM tenants ORDER BY id"
    ))
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(tenant_from_row)
    .collect::<Result<Vec<_>>>()?;
    let domains = sqlx::query(concat!(
        "SELECT ",
        domain_cols!(),
        " FROM accepted_domains ORDER BY id"
    ))
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(domain_from_row)
    .collect::<Result<Vec<_>>>()?;
    let connectors = sqlx::query(concat!(
        "SELECT ",
        connector_cols!(),
        " FROM connectors ORDER BY id"
    ))
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(connector_from_row)
    .collect::<Result<Vec<_>>>()?;
    let header_from_allowed = sqlx::query(
        "SELECT tenant_id, domain, connector_id, declared_at, declared_by \
         FROM header_from_allowed ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(header_from_from_row)
    .collect::<Result<Vec<_>>>()?;
    tx.commit().await?;
    Ok(DirectoryData {
        header_from_allowed,
        version,
        tenants,
        domains,
        connectors,
    })
}

pub(super) async fn allow_header_from(
    store: &SqliteStore,
    a: &HeaderFromAllowed,
    actor: &str,
) -> Result<()> {
    let mut tx = store.write_tx().await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = ?")
        .bind(a.tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!("tenant {}", a.tenant_id)));
    }
    if let Some(c) = a.connector_id {
        let owned: Option<i64> =
            sqlx::query_scalar("SELECT id FROM connectors WHERE id = ? AND tenant_id = ?")
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
         VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
    store: &SqliteStore,
    tenant: TenantId,
    domain: &str,
    connector: Option<ConnectorId>,
    actor: &str,
) -> Result<()> {
    let mut tx = store.write_tx().await?;
    let removed = sqlx::query(
        "DELETE FROM header_from_allowed WHERE tenant_id = ? AND domain = ? \
         AND IFNULL(connector_id, 0) = IFNULL(?, 0)",
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
    store: &SqliteStore,
    tenant: TenantId,
) -> Result<Vec<HeaderFromAllowed>> {
    let rows = sqlx::query(
        "SELECT tenant_id, domain, connector_id, declared_at, declared_by \
         FROM header_from_allowed WHERE tenant_id = ? ORDER BY domain, connector_id",
    )
    .bind(tenant)
    .fetch_all(&store.pool)
    .await?;
    rows.iter().map(header_from_from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::tests::{last_audit, new_connector, new_domain, store};
    use crate::Store;
    use relayward_core::DomainKind;

    #[tokio::test]
    async fn tenants_crud_conflict_audit_version() {
        let (_dir, s, _) = store().await;
        let v0 = s.directory_version().await.unwrap();
        let emails = vec!["admin@acme.example".to_string()];
        let t = s.create_tenant("acme", &emails, "alice").await.unwrap();
        assert_eq!(t.name, "acme");
        assert_eq!(t.state, TenantState::Active);
        assert_eq!(t.admin_emails, emails);
        assert_eq!(s.directory_version().await.unwrap(), v0 + 1);
        let a = last_audit(&s).await;
        assert_eq!(
            (
                a.actor.as_str(),
                a.action.as_str(),
                a.tenant_id,
                a.object.as_str()
            ),
            ("alice", "tenant.create", Some(t.id), "tenant acme")
        );

        assert_eq!(s.get_tenant(t.id).await.unwrap(), Some(t.clone()));
        assert_eq!(s.get_tenant(TenantId(999)).await.unwrap(), None);

        // Duplicate name: conflict, no audit, no bump.
        let err = s.create_tenant("acme", &[], "alice").await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("tenant acme")),
            "{err}"
        );
        assert_eq!(s.directory_version().await.unwrap(), v0 + 1);
        assert_eq!(s.list_audit(None, 0).await.unwrap().len(), 1);
        assert!(matches!(
            s.create_tenant("  ", &[], "alice").await,
            Err(StoreError::Invalid(_))
        ));

        // find_tenant: name first, then all-digits id.
        let t2 = s.create_tenant("42", &[], "alice").await.unwrap();
        assert_eq!(s.find_tenant("acme").await.unwrap().unwrap().id, t.id);
        assert_eq!(s.find_tenant("42").await.unwrap().unwrap().id, t2.id);
        assert_eq!(
            s.find_tenant(&t.id.to_string()).await.unwrap().unwrap().id,
            t.id
        );
        assert_eq!(s.find_tenant("nope").await.unwrap(), None);
        assert_eq!(s.find_tenant("").await.unwrap(), None);
        assert_eq!(s.find_tenant("99999999999999999999").await.unwrap(), None);
        assert_eq!(s.list_tenants().await.unwrap().len(), 2);

        // State change with reason.
        let v = s.directory_version().await.unwrap();
        s.set_tenant_state(
            t.id,
            TenantState::BlockedUnregistered,
            "abuse-detector",
            "spam burst: 900 msgs/h",
        )
        .await
        .unwrap();
        assert_eq!(
            s.get_tenant(t.id).await.unwrap().unwrap().state,
            TenantState::BlockedUnregistered
        );
        assert_eq!(s.directory_version().await.unwrap(), v + 1);
        let a = last_audit(&s).await;
        assert_eq!(a.actor, "abuse-detector");
        assert_eq!(a.action, "tenant.state");
        assert_eq!(a.tenant_id, Some(t.id));
        assert!(
            a.detail.contains("active -> blocked_unregistered"),
            "{}",
            a.detail
        );
        assert!(a.detail.contains("spam burst: 900 msgs/h"), "{}", a.detail);

        let err = s
            .set_tenant_state(TenantId(7777), TenantState::Active, "op", "x")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::NotFound(m) if m == "tenant 7777"),
            "{err}"
        );
        assert_eq!(err.to_string(), "tenant 7777 not found");
        assert_eq!(s.directory_version().await.unwrap(), v + 1);
    }

    #[tokio::test]
    async fn domains_crud_conflicts_audit_version() {
        let (_dir, s, _) = store().await;
        let acme = s.create_tenant("acme", &[], "op").await.unwrap();
        let other = s.create_tenant("other", &[], "op").await.unwrap();
        let v = s.directory_version().await.unwrap();

        let d = s
            .add_domain(new_domain(acme.id, "example.com", false), "bob")
            .await
            .unwrap();
        assert!(!d.verified);
        assert_eq!(d.verified_at, None);
        assert_eq!(d.verification_token.len(), 32);
        assert!(d
            .verification_token
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_eq!(s.directory_version().await.unwrap(), v + 1);
        let a = last_audit(&s).await;
        assert_eq!(
            (
                a.actor.as_str(),
                a.action.as_str(),
                a.tenant_id,
                a.object.as_str()
            ),
            ("bob", "domain.add", Some(acme.id), "domain example.com")
        );
        assert_eq!(
            s.get_domain(acme.id, "example.com").await.unwrap(),
            Some(d.clone())
        );
        assert_eq!(s.get_domain(other.id, "example.com").await.unwrap(), None);

        // Same tenant twice: conflict.
        let err = s
            .add_domain(new_domain(acme.id, "example.com", false), "bob")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("domain example.com")),
            "{err}"
        );
        // Unknown tenant / not normalized.
        assert!(matches!(
            s.add_domain(new_domain(TenantId(555), "x.example", false), "bob").await,
            Err(StoreError::NotFound(m)) if m == "tenant 555"
        ));
        assert!(matches!(
            s.add_domain(new_domain(acme.id, "Upper.example.", false), "bob")
                .await,
            Err(StoreError::Invalid(_))
        ));

        // Another tenant may claim it (pending) while nobody has it verified...
        let d2 = s
            .add_domain(new_domain(other.id, "example.com", false), "carol")
            .await
            .unwrap();
        assert_ne!(d.verification_token, d2.verification_token);
        // ...acme verifies it...
        let v = s.directory_version().await.unwrap();
        s.set_domain_verified(d.id, true, "dns-checker")
            .await
            .unwrap();
        let dv = s.get_domain(acme.id, "example.com").await.unwrap().unwrap();
        assert!(dv.verified);
        assert!(dv.verified_at.is_some());
        assert_eq!(s.directory_version().await.unwrap(), v + 1);
        let a = last_audit(&s).await;
        assert_eq!(
            (a.actor.as_str(), a.action.as_str()),
            ("dns-checker", "domain.verify")
        );
        // ...so the other tenant can no longer verify it, or add it verified.
        let err = s
            .set_domain_verified(d2.id, true, "carol")
            .await
            .unwrap_err();
        match &err {
            StoreError::Conflict(m) => {
                assert_eq!(
                    m,
                    "domain example.com is already verified by another tenant"
                )
            }
            e => panic!("{e}"),
        }
        let third = s.create_tenant("third", &[], "op").await.unwrap();
        assert!(matches!(
            s.add_domain(new_domain(third.id, "example.com", true), "op")
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.directory_version().await.unwrap(), v + 2);

        // Operator-attested domain is verified at once.
        let d3 = s
            .add_domain(
                NewDomain {
                    kind: DomainKind::InternalRelay,
                    match_subdomains: true,
                    ..new_domain(acme.id, "corp.example", true)
                },
                "op",
            )
            .await
            .unwrap();
        assert!(d3.verified && d3.verified_at.is_some());
        assert_eq!(
            s.get_domain(acme.id, "corp.example").await.unwrap(),
            Some(d3.clone())
        );

        assert_eq!(s.list_domains(Some(acme.id)).await.unwrap().len(), 2);
        assert_eq!(s.list_domains(Some(other.id)).await.unwrap().len(), 1);
        assert_eq!(s.list_domains(None).await.unwrap().len(), 3);

        // Unverify, then the other tenant can verify.
        s.set_domain_verified(d.id, false, "op").await.unwrap();
        assert_eq!(last_audit(&s).await.action, "domain.unverify");
        let du = s.get_domain(acme.id, "example.com").await.unwrap().unwrap();
        assert!(!du.verified && du.verified_at.is_none());
        s.set_domain_verified(d2.id, true, "carol").await.unwrap();

        // Remove.
        let v = s.directory_version().await.unwrap();
        s.remove_domain(d.id, "bob").await.unwrap();
        assert_eq!(s.get_domain(acme.id, "example.com").await.unwrap(), None);
        assert_eq!(s.directory_version().await.unwrap(), v + 1);
        let a = last_audit(&s).await;
        assert_eq!(
            (a.actor.as_str(), a.action.as_str(), a.object.as_str()),
            ("bob", "domain.remove", "domain example.com")
        );
        assert!(matches!(
            s.remove_domain(d.id, "bob").await,
            Err(StoreError::NotFound(m)) if m == format!("domain {}", d.id)
        ));
        assert!(matches!(
            s.set_domain_verified(d.id, true, "bob").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.directory_version().await.unwrap(), v + 1);
    }

    #[tokio::test]
    async fn load_directory_and_audit_listing() {
        let (_dir, s, _) = store().await;
        let acme = s.create_tenant("acme", &[], "op").await.unwrap();
        let d = s
            .add_domain(new_domain(acme.id, "acme.example", true), "op")
            .await
            .unwrap();
        let c = s
            .add_connector(new_connector(acme.id, "onprem"), "op")
            .await
            .unwrap();
        let dir = s.load_directory().await.unwrap();
        assert_eq!(dir.version, s.directory_version().await.unwrap());
        assert_eq!(dir.tenants, vec![acme.clone()]);
        assert_eq!(dir.domains, vec![d]);
        assert_eq!(dir.connectors, vec![c]);

        // Free-form audit entries: no version bump.
        let v = s.directory_version().await.unwrap();
        s.audit(
            "op",
            "queue.hold",
            Some(acme.id),
            "queue 123",
            "held by operator",
        )
        .await
        .unwrap();
        s.audit("op", "server.start", None, "server", "started")
            .await
            .unwrap();
        assert_eq!(s.directory_version().await.unwrap(), v);
        let all = s.list_audit(None, 0).await.unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[0].action, "server.start");
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        let mine = s.list_audit(Some(acme.id), 2).await.unwrap();
        assert_eq!(mine.len(), 2);
        assert_eq!(mine[0].action, "queue.hold");
        assert_eq!(mine[1].action, "connector.add");
    }
}
