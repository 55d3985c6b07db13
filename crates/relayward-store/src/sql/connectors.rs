//! Inbound connectors: how a tenant's mail reaches the relay (IP ranges, certificate name, SMTP
//! AUTH) and what it may send.

use ipnet::IpNet;
use relayward_core::{now, Connector, ConnectorId, ConnectorKind, Tenant, TenantId, Timestamp};
use sqlx::Row;

use super::audit::connector_audit_and_bump;
use super::directory::require_tenant;
use super::{begin_write, for_update, parse_col, rows_by_tenant, Backend, DbConn, DbRow};
use crate::{NewConnector, Result, StoreError};

macro_rules! connector_cols {
    () => {
        "id, tenant_id, name, kind, ip_ranges, cert_name, auth_user, auth_password_hash, \
         require_tls, enabled, allow_unregistered, restrict_domains_to_ips, \
         restrict_domains_to_cert, blocked, created_at, created_by, updated_at, updated_by, \
         last_used_at"
    };
}
pub(super) use connector_cols;

fn ip_ranges_to_json(ranges: &[IpNet]) -> String {
    let texts: Vec<String> = ranges.iter().map(|r| r.to_string()).collect();
    serde_json::to_string(&texts).expect("a list of strings serializes")
}

fn ip_ranges_from_json(json: &str) -> Result<Vec<IpNet>> {
    let texts: Vec<String> = serde_json::from_str(json)
        .map_err(|e| StoreError::Backend(format!("bad value in column ip_ranges: {e}")))?;
    texts
        .iter()
        .map(|t| {
            t.parse()
                .map_err(|e| StoreError::Backend(format!("bad CIDR {t:?} in ip_ranges: {e}")))
        })
        .collect()
}

pub(super) fn connector_from_row(row: &DbRow) -> Result<Connector> {
    let ranges: String = row.try_get("ip_ranges")?;
    Ok(Connector {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        kind: parse_col::<ConnectorKind>(row, "kind")?,
        ip_ranges: ip_ranges_from_json(&ranges)?,
        cert_name: row.try_get("cert_name")?,
        auth_user: row.try_get("auth_user")?,
        auth_password_hash: row.try_get("auth_password_hash")?,
        require_tls: row.try_get("require_tls")?,
        enabled: row.try_get("enabled")?,
        allow_unregistered: row.try_get("allow_unregistered")?,
        restrict_domains_to_ips: row.try_get("restrict_domains_to_ips")?,
        restrict_domains_to_cert: row.try_get("restrict_domains_to_cert")?,
        blocked: row.try_get("blocked")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        updated_at: row.try_get("updated_at")?,
        updated_by: row.try_get("updated_by")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

async fn connector_by_id(conn: &mut DbConn, id: ConnectorId) -> Result<Option<Connector>> {
    sqlx::query(concat!(
        "SELECT ",
        connector_cols!(),
        " FROM connectors WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(connector_from_row)
    .transpose()
}

/// A connector, locked until the transaction ends (it is about to be changed).
async fn lock_connector(conn: &mut DbConn, id: ConnectorId) -> Result<Option<Connector>> {
    sqlx::query(concat!(
        "SELECT ",
        connector_cols!(),
        " FROM connectors WHERE id = $1",
        for_update!()
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(connector_from_row)
    .transpose()
}

/// Conflicts on a connector's unique keys, ignoring the connector `except` itself.
async fn check_connector_unique(
    conn: &mut DbConn,
    tenant: &Tenant,
    name: &str,
    auth_user: Option<&str>,
    except: ConnectorId,
) -> Result<()> {
    let dup =
        sqlx::query("SELECT id FROM connectors WHERE tenant_id = $1 AND name = $2 AND id <> $3")
            .bind(tenant.id)
            .bind(name)
            .bind(except)
            .fetch_optional(&mut *conn)
            .await?;
    if dup.is_some() {
        return Err(StoreError::Conflict(format!(
            "connector {name} already exists for tenant {}",
            tenant.name
        )));
    }
    if let Some(user) = auth_user {
        let dup = sqlx::query("SELECT id FROM connectors WHERE auth_user = $1 AND id <> $2")
            .bind(user)
            .bind(except)
            .fetch_optional(&mut *conn)
            .await?;
        if dup.is_some() {
            return Err(StoreError::Conflict(format!(
                "auth user {user} is already used by another connector"
            )));
        }
    }
    Ok(())
}

fn opt_text(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("none")
}

fn ranges_text(ranges: &[IpNet]) -> String {
    if ranges.is_empty() {
        "none".into()
    } else {
        ranges
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Short human text of what an update changes. Never includes the password hash.
fn connector_diff(old: &Connector, new: &Connector) -> String {
    let mut changes = Vec::new();
    macro_rules! field {
        ($f:ident) => {
            if old.$f != new.$f {
                changes.push(format!("{} {} -> {}", stringify!($f), old.$f, new.$f));
            }
        };
    }
    if old.name != new.name {
        changes.push(format!("name {} -> {}", old.name, new.name));
    }
    field!(kind);
    if old.ip_ranges != new.ip_ranges {
        changes.push(format!(
            "ip_ranges {} -> {}",
            ranges_text(&old.ip_ranges),
            ranges_text(&new.ip_ranges)
        ));
    }
    if old.cert_name != new.cert_name {
        changes.push(format!(
            "cert_name {} -> {}",
            opt_text(&old.cert_name),
            opt_text(&new.cert_name)
        ));
    }
    if old.auth_user != new.auth_user {
        changes.push(format!(
            "auth_user {} -> {}",
            opt_text(&old.auth_user),
            opt_text(&new.auth_user)
        ));
    }
    if old.auth_password_hash != new.auth_password_hash {
        changes.push(
            match new.auth_password_hash {
                Some(_) => "password set",
                None => "password removed",
            }
            .to_string(),
        );
    }
    field!(require_tls);
    field!(enabled);
    field!(allow_unregistered);
    field!(restrict_domains_to_ips);
    field!(restrict_domains_to_cert);
    field!(blocked);
    if changes.is_empty() {
        "no changes".into()
    } else {
        changes.join("; ")
    }
}

pub(super) async fn add_connector(
    store: &Backend,
    c: NewConnector,
    actor: &str,
) -> Result<Connector> {
    let name = c.name.trim();
    if name.is_empty() {
        return Err(StoreError::Invalid("connector name is empty".into()));
    }
    let at = now();
    let ranges = ip_ranges_to_json(&c.ip_ranges);
    let mut tx = begin_write(&store.pool).await?;
    let tenant = require_tenant(&mut tx, c.tenant_id).await?;
    check_connector_unique(
        &mut tx,
        &tenant,
        name,
        c.auth_user.as_deref(),
        ConnectorId(0),
    )
    .await?;
    let id: i64 = sqlx::query(
        "INSERT INTO connectors (tenant_id, name, kind, ip_ranges, cert_name, auth_user, \
         auth_password_hash, require_tls, enabled, allow_unregistered, \
         restrict_domains_to_ips, restrict_domains_to_cert, blocked, created_at, created_by, \
         updated_at, updated_by, last_used_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) RETURNING id",
    )
    .bind(tenant.id)
    .bind(name)
    .bind(c.kind.as_str())
    .bind(&ranges)
    .bind(&c.cert_name)
    .bind(&c.auth_user)
    .bind(&c.auth_password_hash)
    .bind(c.require_tls)
    .bind(true)
    .bind(c.allow_unregistered)
    .bind(c.restrict_domains_to_ips)
    .bind(c.restrict_domains_to_cert)
    .bind(false)
    .bind(at)
    .bind(actor)
    .bind(at)
    .bind(actor)
    .bind(None::<i64>)
    .fetch_one(&mut *tx)
    .await?
    .try_get("id")?;

    let mut detail = format!(
        "added to tenant {}; kind {}; ip_ranges {}",
        tenant.name,
        c.kind,
        ranges_text(&c.ip_ranges)
    );
    if let Some(cert) = &c.cert_name {
        detail.push_str(&format!("; cert_name {cert}"));
    }
    if let Some(user) = &c.auth_user {
        detail.push_str(&format!("; auth_user {user}"));
    }
    if c.auth_password_hash.is_some() {
        detail.push_str("; password set");
    }
    for (flag, on) in [
        ("require_tls", c.require_tls),
        ("allow_unregistered", c.allow_unregistered),
        ("restrict_domains_to_ips", c.restrict_domains_to_ips),
        ("restrict_domains_to_cert", c.restrict_domains_to_cert),
    ] {
        if on {
            detail.push_str("; ");
            detail.push_str(flag);
        }
    }
    connector_audit_and_bump(
        &mut tx,
        actor,
        "connector.add",
        tenant.id,
        ConnectorId(id),
        name,
        &detail,
    )
    .await?;
    tx.commit().await?;
    Ok(Connector {
        id: ConnectorId(id),
        tenant_id: tenant.id,
        name: name.to_string(),
        kind: c.kind,
        ip_ranges: c.ip_ranges,
        cert_name: c.cert_name,
        auth_user: c.auth_user,
        auth_password_hash: c.auth_password_hash,
        require_tls: c.require_tls,
        enabled: true,
        allow_unregistered: c.allow_unregistered,
        restrict_domains_to_ips: c.restrict_domains_to_ips,
        restrict_domains_to_cert: c.restrict_domains_to_cert,
        blocked: false,
        created_at: at,
        created_by: actor.to_string(),
        updated_at: at,
        updated_by: actor.to_string(),
        last_used_at: None,
    })
}

pub(super) async fn list_connectors(
    store: &Backend,
    tenant: Option<TenantId>,
) -> Result<Vec<Connector>> {
    let rows = rows_by_tenant(
        &store.pool,
        tenant,
        concat!(
            "SELECT ",
            connector_cols!(),
            " FROM connectors WHERE tenant_id = $1 ORDER BY id"
        ),
        concat!("SELECT ", connector_cols!(), " FROM connectors ORDER BY id"),
    )
    .await?;
    rows.iter().map(connector_from_row).collect()
}

pub(super) async fn get_connector(store: &Backend, id: ConnectorId) -> Result<Option<Connector>> {
    let mut conn = store.pool.acquire().await?;
    connector_by_id(&mut conn, id).await
}

pub(super) async fn update_connector(store: &Backend, c: &Connector, actor: &str) -> Result<()> {
    let name = c.name.trim();
    if name.is_empty() {
        return Err(StoreError::Invalid("connector name is empty".into()));
    }
    let at = now();
    let mut tx = begin_write(&store.pool).await?;
    let old = lock_connector(&mut tx, c.id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("connector {}", c.id)))?;
    if old.tenant_id != c.tenant_id {
        return Err(StoreError::Invalid(format!(
            "connector {} belongs to tenant {} and cannot move to tenant {}",
            old.name, old.tenant_id, c.tenant_id
        )));
    }
    let tenant = require_tenant(&mut tx, old.tenant_id).await?;
    check_connector_unique(&mut tx, &tenant, name, c.auth_user.as_deref(), c.id).await?;
    sqlx::query(
        "UPDATE connectors SET name = $1, kind = $2, ip_ranges = $3, cert_name = $4, \
         auth_user = $5, auth_password_hash = $6, require_tls = $7, enabled = $8, \
         allow_unregistered = $9, restrict_domains_to_ips = $10, restrict_domains_to_cert = $11, \
         blocked = $12, updated_at = $13, updated_by = $14 WHERE id = $15",
    )
    .bind(name)
    .bind(c.kind.as_str())
    .bind(ip_ranges_to_json(&c.ip_ranges))
    .bind(&c.cert_name)
    .bind(&c.auth_user)
    .bind(&c.auth_password_hash)
    .bind(c.require_tls)
    .bind(c.enabled)
    .bind(c.allow_unregistered)
    .bind(c.restrict_domains_to_ips)
    .bind(c.restrict_domains_to_cert)
    .bind(c.blocked)
    .bind(at)
    .bind(actor)
    .bind(c.id)
    .execute(&mut *tx)
    .await?;
    let mut new = c.clone();
    new.name = name.to_string();
    let detail = connector_diff(&old, &new);
    connector_audit_and_bump(
        &mut tx,
        actor,
        "connector.update",
        old.tenant_id,
        old.id,
        &old.name,
        &detail,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn delete_connector(store: &Backend, id: ConnectorId, actor: &str) -> Result<()> {
    let mut tx = begin_write(&store.pool).await?;
    let old = lock_connector(&mut tx, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("connector {id}")))?;
    sqlx::query("DELETE FROM connectors WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    connector_audit_and_bump(
        &mut tx,
        actor,
        "connector.delete",
        old.tenant_id,
        old.id,
        &old.name,
        &format!("deleted ({})", old.kind),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn touch_connectors(
    store: &Backend,
    used: &[(ConnectorId, Timestamp)],
) -> Result<()> {
    if used.is_empty() {
        return Ok(());
    }
    // In id order: two nodes touching the same connectors lock their rows in the same order,
    // so neither waits for the other while holding a row the other needs.
    let mut used = used.to_vec();
    used.sort_unstable();
    let mut tx = begin_write(&store.pool).await?;
    for (id, at) in used {
        sqlx::query(
            "UPDATE connectors SET last_used_at = $1 \
             WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(at)
        .bind(id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
