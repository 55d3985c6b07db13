//! SQLite backend.
//!
//! One database file holds the directory, the audit log and the message trace. The CLI and a
//! running server open the same file at once, so:
//! - the file is in WAL mode (readers never block the writer and vice versa);
//! - every connection waits up to [`BUSY_TIMEOUT`] for a lock instead of failing at once;
//! - every transaction that writes starts with `BEGIN IMMEDIATE`, taking the write lock up front.
//!   A deferred transaction that reads and then writes cannot wait for the lock when another
//!   process committed in between (SQLite answers "database is locked" at once, whatever the
//!   busy timeout), so read-then-write must never start deferred.
//!
//! The SQL is kept portable to PostgreSQL: plain types, `?` placeholders aside no SQLite-only
//! syntax in queries (`RETURNING` and `LOWER` exist in both).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use relayward_core::{
    now, AcceptedDomain, AuditEntry, Connector, ConnectorId, ConnectorKind, DirectoryData,
    DomainId, HeaderFromAllowed, SenderClass, Tenant, TenantId, TenantState, Timestamp, TraceEvent,
    TraceKind, TraceQuery,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite, SqlitePool, Transaction};

use crate::{ApiToken, TokenId, TokenScope};
use crate::{NewConnector, NewDomain, Result, Store, StoreError};

/// How long a connection waits for a lock held by another connection or process.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in the pool. SQLite has one writer at a time anyway.
const POOL_SIZE: u32 = 4;

/// Default and maximum number of rows returned by searches.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e.as_database_error() {
            Some(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_string()),
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Backend(format!("migration: {e}"))
    }
}

/// The SQLite [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// 12 bound values a row: well under SQLite's 32,766 variables a statement.
const TRACE_ROWS_PER_INSERT: usize = 200;

impl SqliteStore {
    /// Opens (creating it and its directory when missing) the database at `path` and applies
    /// pending migrations. Safe to call while another process has the same file open.
    pub async fn open(path: &str) -> Result<SqliteStore> {
        if path.is_empty() {
            return Err(StoreError::Invalid("empty SQLite database path".into()));
        }
        if let Some(parent) = Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Backend(format!("creating directory {}: {e}", parent.display()))
                })?;
            }
        }

        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Normal);

        // Switching to WAL is persistent in the file, and it needs an exclusive lock that the
        // busy timeout does not wait for: do it once here (with a few retries, in case another
        // process is opening the file at the same moment) rather than on every pooled connection.
        let mut conn = Self::connect_wal(&options).await?;
        // Migrations under the write lock, so two processes starting at once cannot both apply
        // the same migration: the second waits, then finds nothing left to do.
        {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            migrate(&mut tx).await?;
            tx.commit().await?;
        }
        conn.close().await?;

        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool })
    }

    async fn connect_wal(options: &SqliteConnectOptions) -> Result<SqliteConnection> {
        let mut attempt = 0;
        loop {
            match options
                .clone()
                .journal_mode(SqliteJournalMode::Wal)
                .connect()
                .await
            {
                Ok(conn) => return Ok(conn),
                Err(e) if attempt < 50 && is_busy(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The underlying pool (for tests and maintenance tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A transaction that holds the write lock from its start (see the module docs).
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Applies pending migrations on `conn`.
///
/// `Migrator::run(&mut conn)` makes the caller's future fail the `Send` check ("implementation of
/// `Acquire` is not general enough") as soon as `SqliteStore::open` is spawned; `run_direct` is
/// sqlx's own way around that (it is what `run` calls after acquiring).
async fn migrate(conn: &mut SqliteConnection) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run_direct(None, conn, false).await
}

fn is_busy(e: &sqlx::Error) -> bool {
    match e.as_database_error() {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
        Some(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Rows

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

macro_rules! connector_cols {
    () => {
        "id, tenant_id, name, kind, ip_ranges, cert_name, auth_user, auth_password_hash, \
         require_tls, enabled, allow_unregistered, restrict_domains_to_ips, \
         restrict_domains_to_cert, blocked, created_at, created_by, updated_at, updated_by, \
         last_used_at"
    };
}

macro_rules! trace_cols {
    () => {
        "id, at_ms, kind, queue_id, message_id, tenant_id, connector_id, client_ip, sender, \
         recipient, sender_class, reply, detail"
    };
}

fn parse_col<T: FromStr>(row: &SqliteRow, col: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let text: String = row.try_get(col)?;
    text.parse()
        .map_err(|e| StoreError::Backend(format!("bad value in column {col}: {e}")))
}

fn parse_opt_col<T: FromStr>(row: &SqliteRow, col: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| {
        t.parse()
            .map_err(|e| StoreError::Backend(format!("bad value in column {col}: {e}")))
    })
    .transpose()
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

fn connector_from_row(row: &SqliteRow) -> Result<Connector> {
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

fn audit_from_row(row: &SqliteRow) -> Result<AuditEntry> {
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

fn trace_from_row(row: &SqliteRow) -> Result<TraceEvent> {
    Ok(TraceEvent {
        id: row.try_get("id")?,
        at_ms: row.try_get("at_ms")?,
        kind: parse_col::<TraceKind>(row, "kind")?,
        queue_id: row.try_get("queue_id")?,
        message_id: row.try_get("message_id")?,
        tenant_id: row.try_get("tenant_id")?,
        connector_id: row.try_get("connector_id")?,
        client_ip: row.try_get("client_ip")?,
        sender: row.try_get("sender")?,
        recipient: row.try_get("recipient")?,
        sender_class: parse_opt_col::<SenderClass>(row, "sender_class")?,
        reply: row.try_get("reply")?,
        detail: row.try_get("detail")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by reads and write transactions

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

async fn require_tenant(conn: &mut SqliteConnection, id: TenantId) -> Result<Tenant> {
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

async fn connector_by_id(
    conn: &mut SqliteConnection,
    id: ConnectorId,
) -> Result<Option<Connector>> {
    sqlx::query(concat!(
        "SELECT ",
        connector_cols!(),
        " FROM connectors WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(connector_from_row)
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

/// Conflicts on a connector's unique keys, ignoring the connector `except` itself.
async fn check_connector_unique(
    conn: &mut SqliteConnection,
    tenant: &Tenant,
    name: &str,
    auth_user: Option<&str>,
    except: ConnectorId,
) -> Result<()> {
    let dup = sqlx::query("SELECT id FROM connectors WHERE tenant_id = ? AND name = ? AND id <> ?")
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
        let dup = sqlx::query("SELECT id FROM connectors WHERE auth_user = ? AND id <> ?")
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

fn header_from_from_row(row: &SqliteRow) -> Result<HeaderFromAllowed> {
    Ok(HeaderFromAllowed {
        tenant_id: row.try_get("tenant_id")?,
        domain: row.try_get("domain")?,
        connector_id: row.try_get("connector_id")?,
        declared_at: row.try_get("declared_at")?,
        declared_by: row.try_get("declared_by")?,
    })
}

async fn insert_audit(
    conn: &mut SqliteConnection,
    actor: &str,
    action: &str,
    tenant: Option<TenantId>,
    object: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, tenant_id, object, detail) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(now())
    .bind(actor)
    .bind(action)
    .bind(tenant)
    .bind(object)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The tail of every directory change: its audit entry and the version bump.
async fn audit_and_bump(
    conn: &mut SqliteConnection,
    actor: &str,
    action: &str,
    tenant: Option<TenantId>,
    object: &str,
    detail: &str,
) -> Result<()> {
    insert_audit(conn, actor, action, tenant, object, detail).await?;
    sqlx::query("UPDATE directory_version SET version = version + 1 WHERE id = 1")
        .execute(&mut *conn)
        .await?;
    Ok(())
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

fn effective_limit(limit: u32) -> i64 {
    match limit {
        0 => DEFAULT_LIMIT as i64,
        n => n.min(MAX_LIMIT) as i64,
    }
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

// ---------------------------------------------------------------------------------------------
// The Store

#[async_trait]
impl Store for SqliteStore {
    async fn create_tenant(
        &self,
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
        let mut tx = self.write_tx().await?;
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
            Some(id),
            &format!("tenant {name}"),
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(Tenant {
            id,
            name: name.to_string(),
            state: TenantState::Active,
            admin_emails: admin_emails.to_vec(),
            created_at,
        })
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        sqlx::query(concat!(
            "SELECT ",
            tenant_cols!(),
            " FROM tenants ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(tenant_from_row)
        .collect()
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>> {
        let mut conn = self.pool.acquire().await?;
        tenant_by_id(&mut conn, id).await
    }

    async fn find_tenant(&self, name_or_id: &str) -> Result<Option<Tenant>> {
        let mut conn = self.pool.acquire().await?;
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

    async fn set_tenant_state(
        &self,
        id: TenantId,
        state: TenantState,
        actor: &str,
        reason: &str,
    ) -> Result<()> {
        let at = now();
        let mut tx = self.write_tx().await?;
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

    async fn add_domain(&self, domain: NewDomain, actor: &str) -> Result<AcceptedDomain> {
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
        let mut tx = self.write_tx().await?;
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
            id,
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

    async fn list_domains(&self, tenant: Option<TenantId>) -> Result<Vec<AcceptedDomain>> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(concat!(
                    "SELECT ",
                    domain_cols!(),
                    " FROM accepted_domains WHERE tenant_id = ? ORDER BY domain, id"
                ))
                .bind(t)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    domain_cols!(),
                    " FROM accepted_domains ORDER BY tenant_id, domain, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(domain_from_row).collect()
    }

    async fn get_domain(&self, tenant: TenantId, domain: &str) -> Result<Option<AcceptedDomain>> {
        sqlx::query(concat!(
            "SELECT ",
            domain_cols!(),
            " FROM accepted_domains WHERE tenant_id = ? AND domain = ?"
        ))
        .bind(tenant)
        .bind(domain)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(domain_from_row)
        .transpose()
    }

    async fn set_domain_verified(&self, id: DomainId, verified: bool, actor: &str) -> Result<()> {
        let at = now();
        let mut tx = self.write_tx().await?;
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

    async fn remove_domain(&self, id: DomainId, actor: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
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

    async fn add_connector(&self, c: NewConnector, actor: &str) -> Result<Connector> {
        let name = c.name.trim();
        if name.is_empty() {
            return Err(StoreError::Invalid("connector name is empty".into()));
        }
        let at = now();
        let ranges = ip_ranges_to_json(&c.ip_ranges);
        let mut tx = self.write_tx().await?;
        let tenant = require_tenant(&mut tx, c.tenant_id).await?;
        check_connector_unique(&mut tx, &tenant, name, c.auth_user.as_deref(), 0).await?;
        let id: i64 = sqlx::query(
            "INSERT INTO connectors (tenant_id, name, kind, ip_ranges, cert_name, auth_user, \
             auth_password_hash, require_tls, enabled, allow_unregistered, \
             restrict_domains_to_ips, restrict_domains_to_cert, blocked, created_at, created_by, \
             updated_at, updated_by, last_used_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
        audit_and_bump(
            &mut tx,
            actor,
            "connector.add",
            Some(tenant.id),
            &format!("connector {name}"),
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(Connector {
            id,
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

    async fn list_connectors(&self, tenant: Option<TenantId>) -> Result<Vec<Connector>> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(concat!(
                    "SELECT ",
                    connector_cols!(),
                    " FROM connectors WHERE tenant_id = ? ORDER BY id"
                ))
                .bind(t)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    connector_cols!(),
                    " FROM connectors ORDER BY id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(connector_from_row).collect()
    }

    async fn get_connector(&self, id: ConnectorId) -> Result<Option<Connector>> {
        let mut conn = self.pool.acquire().await?;
        connector_by_id(&mut conn, id).await
    }

    async fn update_connector(&self, c: &Connector, actor: &str) -> Result<()> {
        let name = c.name.trim();
        if name.is_empty() {
            return Err(StoreError::Invalid("connector name is empty".into()));
        }
        let at = now();
        let mut tx = self.write_tx().await?;
        let old = connector_by_id(&mut tx, c.id)
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
            "UPDATE connectors SET name = ?, kind = ?, ip_ranges = ?, cert_name = ?, \
             auth_user = ?, auth_password_hash = ?, require_tls = ?, enabled = ?, \
             allow_unregistered = ?, restrict_domains_to_ips = ?, restrict_domains_to_cert = ?, \
             blocked = ?, updated_at = ?, updated_by = ? WHERE id = ?",
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
        audit_and_bump(
            &mut tx,
            actor,
            "connector.update",
            Some(old.tenant_id),
            &format!("connector {}", old.name),
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_connector(&self, id: ConnectorId, actor: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let old = connector_by_id(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("connector {id}")))?;
        sqlx::query("DELETE FROM connectors WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        audit_and_bump(
            &mut tx,
            actor,
            "connector.delete",
            Some(old.tenant_id),
            &format!("connector {}", old.name),
            &format!("deleted ({})", old.kind),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn touch_connectors(&self, used: &[(ConnectorId, Timestamp)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for (id, at) in used {
            sqlx::query(
                "UPDATE connectors SET last_used_at = ? \
                 WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
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

    async fn directory_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT version FROM directory_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("version")?)
    }

    async fn load_directory(&self) -> Result<DirectoryData> {
        // One read transaction: in WAL mode it sees a single snapshot of the database.
        let mut tx = self.pool.begin().await?;
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

    async fn audit(
        &self,
        actor: &str,
        action: &str,
        tenant: Option<TenantId>,
        object: &str,
        detail: &str,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_audit(&mut conn, actor, action, tenant, object, detail).await
    }

    async fn list_audit(&self, tenant: Option<TenantId>, limit: u32) -> Result<Vec<AuditEntry>> {
        let limit = effective_limit(limit);
        let rows = match tenant {
            Some(t) => {
                sqlx::query(
                    "SELECT id, at, actor, action, tenant_id, object, detail FROM audit_log \
                     WHERE tenant_id = ? ORDER BY id DESC LIMIT ?",
                )
                .bind(t)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, at, actor, action, tenant_id, object, detail FROM audit_log \
                     ORDER BY id DESC LIMIT ?",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(audit_from_row).collect()
    }

    async fn record_trace(&self, events: &[TraceEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        // Many rows per statement: each statement is a round trip to the SQLite worker thread,
        // and at full load the trace carries several events per message.
        for chunk in events.chunks(TRACE_ROWS_PER_INSERT) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO trace_events (at_ms, kind, queue_id, message_id, tenant_id, \
                 connector_id, client_ip, sender, recipient, sender_class, reply, detail) ",
            );
            qb.push_values(chunk, |mut b, e| {
                b.push_bind(e.at_ms)
                    .push_bind(e.kind.as_str())
                    .push_bind(&e.queue_id)
                    .push_bind(&e.message_id)
                    .push_bind(e.tenant_id)
                    .push_bind(e.connector_id)
                    .push_bind(&e.client_ip)
                    .push_bind(&e.sender)
                    .push_bind(&e.recipient)
                    .push_bind(e.sender_class.map(|c| c.as_str()))
                    .push_bind(&e.reply)
                    .push_bind(&e.detail);
            });
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn search_trace(&self, q: &TraceQuery) -> Result<Vec<TraceEvent>> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(concat!(
            "SELECT ",
            trace_cols!(),
            " FROM trace_events WHERE 1 = 1"
        ));
        if let Some(t) = q.tenant_id {
            qb.push(" AND tenant_id = ").push_bind(t);
        }
        // Addresses match case-insensitively; SQLite's LOWER folds ASCII only, so fold the
        // same way here (and the indexes are on LOWER(sender) / LOWER(recipient)).
        if let Some(s) = q.sender.as_deref().map(str::trim) {
            qb.push(" AND LOWER(sender) = ")
                .push_bind(s.to_ascii_lowercase());
        }
        if let Some(r) = q.recipient.as_deref().map(str::trim) {
            qb.push(" AND LOWER(recipient) = ")
                .push_bind(r.to_ascii_lowercase());
        }
        if let Some(m) = q.message_id.as_deref().map(str::trim) {
            // With or without the angle brackets, whichever way it was recorded.
            let bare = m.trim_start_matches('<').trim_end_matches('>');
            qb.push(" AND message_id IN (")
                .push_bind(bare.to_string())
                .push(", ")
                .push_bind(format!("<{bare}>"))
                .push(")");
        }
        if let Some(id) = q.queue_id.as_deref().map(str::trim) {
            qb.push(" AND queue_id = ").push_bind(id.to_string());
        }
        if let Some(since) = q.since_ms {
            qb.push(" AND at_ms >= ").push_bind(since);
        }
        if let Some(until) = q.until_ms {
            qb.push(" AND at_ms <= ").push_bind(until);
        }
        qb.push(" ORDER BY at_ms DESC, id DESC LIMIT ")
            .push_bind(effective_limit(q.limit));
        qb.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(trace_from_row)
            .collect()
    }

    // Abuse detector (the SQL lives in sqlite_abuse.rs)

    async fn tenant_statuses(&self) -> Result<Vec<crate::TenantStatusRecord>> {
        abuse_sql::tenant_statuses(&self.pool, None).await
    }

    async fn tenant_status(&self, id: TenantId) -> Result<Option<crate::TenantStatusRecord>> {
        Ok(abuse_sql::tenant_statuses(&self.pool, Some(id))
            .await?
            .pop())
    }

    async fn record_transition(&self, t: &crate::NewTransition, actor: &str) -> Result<(i64, i64)> {
        let mut tx = self.write_tx().await?;
        let out = abuse_sql::record_transition(&mut tx, t, actor).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn list_transitions(
        &self,
        tenant: TenantId,
        limit: u32,
    ) -> Result<Vec<crate::TransitionRecord>> {
        abuse_sql::list_transitions(&self.pool, tenant, effective_limit(limit)).await
    }

    async fn connector_changes(
        &self,
        tenant: TenantId,
        since: Timestamp,
    ) -> Result<Vec<AuditEntry>> {
        abuse_sql::connector_changes(&self.pool, tenant, since).await
    }

    async fn add_sender_restriction(
        &self,
        r: &crate::NewSenderRestriction,
        actor: &str,
    ) -> Result<i64> {
        let mut tx = self.write_tx().await?;
        let id = abuse_sql::add_sender_restriction(&mut tx, r, actor).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn lift_sender_restrictions(
        &self,
        tenant: Option<TenantId>,
        sender: &str,
        at_ms: i64,
        actor: &str,
    ) -> Result<Vec<crate::SenderRestrictionRecord>> {
        let mut tx = self.write_tx().await?;
        let lifted =
            abuse_sql::lift_sender_restrictions(&mut tx, tenant, sender, at_ms, actor).await?;
        tx.commit().await?;
        Ok(lifted)
    }

    async fn list_sender_restrictions(
        &self,
        tenant: Option<TenantId>,
        now_ms: i64,
        lifted_since_ms: Option<i64>,
    ) -> Result<Vec<crate::SenderRestrictionRecord>> {
        abuse_sql::list_sender_restrictions(&self.pool, tenant, now_ms, lifted_since_ms).await
    }

    async fn set_tenant_sender_limits(
        &self,
        tenant: TenantId,
        limits: Option<&str>,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        abuse_sql::set_tenant_sender_limits(&mut tx, tenant, limits, actor).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tenant_sender_limits(&self) -> Result<Vec<(TenantId, String)>> {
        abuse_sql::tenant_sender_limits(&self.pool).await
    }

    async fn declare_forwarded_domains(
        &self,
        tenant: TenantId,
        domains: &[String],
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        abuse_sql::declare_forwarded_domains(&mut tx, tenant, domains, actor).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn forwarded_domains(&self, tenant: TenantId) -> Result<Vec<String>> {
        abuse_sql::forwarded_domains(&self.pool, tenant).await
    }

    async fn allow_header_from(&self, a: &HeaderFromAllowed, actor: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
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

    async fn disallow_header_from(
        &self,
        tenant: TenantId,
        domain: &str,
        connector: Option<ConnectorId>,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
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

    async fn list_header_from_allowed(&self, tenant: TenantId) -> Result<Vec<HeaderFromAllowed>> {
        let rows = sqlx::query(
            "SELECT tenant_id, domain, connector_id, declared_at, declared_by \
             FROM header_from_allowed WHERE tenant_id = ? ORDER BY domain, connector_id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(header_from_from_row).collect()
    }

    // Admin API tokens

    async fn create_token(
        &self,
        scope: TokenScope,
        label: &str,
        secret_hash: &str,
        actor: &str,
    ) -> Result<TokenId> {
        let label = label.trim();
        if label.is_empty() {
            return Err(StoreError::Invalid("token label is empty".into()));
        }
        if secret_hash.is_empty() {
            return Err(StoreError::Invalid("token secret hash is empty".into()));
        }
        let mut tx = self.write_tx().await?;
        let scope_text = match scope {
            TokenScope::Operator => "operator".to_string(),
            TokenScope::Tenant(t) => format!("tenant {}", require_tenant(&mut tx, t).await?.name),
        };
        let id: TokenId = sqlx::query(
            "INSERT INTO api_tokens (scope, tenant_id, label, secret_hash, created_at, created_by) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(scope.kind())
        .bind(scope.tenant())
        .bind(label)
        .bind(secret_hash)
        .bind(now())
        .bind(actor)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        insert_audit(
            &mut tx,
            actor,
            "token.create",
            scope.tenant(),
            &format!("token {id}"),
            &format!("created; scope {scope_text}; label {label}"),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn get_token(&self, id: TokenId) -> Result<Option<ApiToken>> {
        sqlx::query(concat!(
            "SELECT ",
            token_cols!(),
            " FROM api_tokens WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(token_from_row)
        .transpose()
    }

    async fn list_tokens(&self, tenant: Option<TenantId>) -> Result<Vec<ApiToken>> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(concat!(
                    "SELECT ",
                    token_cols!(),
                    " FROM api_tokens WHERE tenant_id = ? ORDER BY id"
                ))
                .bind(t)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    token_cols!(),
                    " FROM api_tokens ORDER BY id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, id: TokenId, actor: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let token = sqlx::query(concat!(
            "SELECT ",
            token_cols!(),
            " FROM api_tokens WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(token_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
        if token.revoked_at.is_some() {
            return Ok(());
        }
        sqlx::query("UPDATE api_tokens SET revoked_at = ?, revoked_by = ? WHERE id = ?")
            .bind(now())
            .bind(actor)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_audit(
            &mut tx,
            actor,
            "token.revoke",
            token.scope.tenant(),
            &format!("token {id}"),
            &format!(
                "revoked; scope {}; label {}",
                token.scope.kind(),
                token.label
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn touch_token(&self, id: TokenId, at: Timestamp) -> Result<()> {
        // One statement, no read first: autocommit is enough (see the module docs).
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = ? \
             WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
        )
        .bind(at)
        .bind(id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn count_received_by_connector(
        &self,
        tenant: TenantId,
        class: SenderClass,
        since_ms: i64,
    ) -> Result<Vec<(ConnectorId, u64)>> {
        let rows = sqlx::query(
            "SELECT connector_id, COUNT(DISTINCT queue_id) AS n FROM trace_events \
             WHERE tenant_id = ? AND connector_id IS NOT NULL AND at_ms >= ? \
             AND kind = ? AND sender_class = ? \
             GROUP BY connector_id ORDER BY connector_id",
        )
        .bind(tenant)
        .bind(since_ms)
        .bind(TraceKind::Received.as_str())
        .bind(class.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get("n")?;
                Ok((r.try_get("connector_id")?, n.max(0) as u64))
            })
            .collect()
    }

    async fn traffic_hours(
        &self,
        tenant: Option<TenantId>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<crate::TrafficHour>> {
        traffic_sql::hours(&self.pool, tenant, since_ms, until_ms).await
    }

    async fn search_trace_page(
        &self,
        q: &TraceQuery,
        after: Option<(i64, i64)>,
    ) -> Result<Vec<TraceEvent>> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(concat!(
            "SELECT ",
            trace_cols!(),
            " FROM trace_events WHERE 1 = 1"
        ));
        push_trace_filters(&mut qb, q);
        if let Some((at_ms, id)) = after {
            // Newest first: the next page is what sorts after (at_ms, id) in that order.
            qb.push(" AND (at_ms < ")
                .push_bind(at_ms)
                .push(" OR (at_ms = ")
                .push_bind(at_ms)
                .push(" AND id < ")
                .push_bind(id)
                .push("))");
        }
        qb.push(" ORDER BY at_ms DESC, id DESC LIMIT ")
            .push_bind(effective_limit(q.limit));
        qb.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(trace_from_row)
            .collect()
    }

    // DKIM

    async fn set_dkim_key(
        &self,
        domain: &str,
        tenant: Option<TenantId>,
        selector: &str,
        algorithm: &str,
        actor: &str,
    ) -> Result<crate::DkimKeyRecord> {
        let mut tx = self.write_tx().await?;
        let record =
            dkim_sql::set_dkim_key(&mut tx, domain, tenant, selector, algorithm, actor).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn get_dkim_key(&self, domain: &str) -> Result<Option<crate::DkimKeyRecord>> {
        dkim_sql::get_dkim_key(&self.pool, domain).await
    }

    async fn list_dkim_keys(&self) -> Result<Vec<crate::DkimKeyRecord>> {
        dkim_sql::list_dkim_keys(&self.pool).await
    }

    // Suppression lists

    async fn add_suppression(
        &self,
        s: &relayward_core::Suppression,
        actor: &str,
    ) -> Result<relayward_core::Suppression> {
        let mut tx = self.write_tx().await?;
        let added = suppression_sql::add(&mut tx, s, actor).await?;
        tx.commit().await?;
        Ok(added)
    }

    async fn remove_suppression(
        &self,
        tenant: Option<TenantId>,
        address: &str,
        now: Timestamp,
        actor: &str,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let removed = suppression_sql::remove(&mut tx, tenant, address, now, actor).await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn list_suppressions(
        &self,
        tenant: Option<TenantId>,
        now: Timestamp,
    ) -> Result<Vec<relayward_core::Suppression>> {
        suppression_sql::list(&self.pool, tenant, now).await
    }

    async fn suppression_version(&self) -> Result<i64> {
        suppression_sql::version(&self.pool).await
    }

    async fn suppression_updates(
        &self,
        since: i64,
        now: Timestamp,
    ) -> Result<relayward_core::SuppressionUpdates> {
        suppression_sql::updates(&self.pool, since, now).await
    }

    // Reputation

    async fn add_reputation_hours(
        &self,
        rows: &[relayward_core::ReputationHour],
        keep_from_hour: i64,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        reputation_sql::add(&mut tx, rows, keep_from_hour).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reputation_hours(
        &self,
        tenant: Option<TenantId>,
        from_hour: i64,
    ) -> Result<Vec<relayward_core::ReputationHour>> {
        reputation_sql::load(&self.pool, tenant, from_hour).await
    }
}

#[path = "sqlite_abuse.rs"]
mod abuse_sql;

#[path = "sqlite_dkim.rs"]
mod dkim_sql;

#[path = "sqlite_traffic.rs"]
mod traffic_sql;

#[path = "sqlite_suppression.rs"]
mod suppression_sql;

#[path = "sqlite_reputation.rs"]
mod reputation_sql;

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_core::DomainKind;
    use std::sync::Arc;

    async fn store() -> (tempfile::TempDir, SqliteStore, String) {
        let dir = tempfile::tempdir().unwrap();
        // A subdirectory that does not exist yet: open must create it.
        let path = dir.path().join("data/sub/relayward.db");
        let path = path.to_str().unwrap().to_string();
        let store = SqliteStore::open(&path).await.unwrap();
        (dir, store, path)
    }

    fn new_domain(tenant: TenantId, domain: &str, verified: bool) -> NewDomain {
        NewDomain {
            tenant_id: tenant,
            domain: domain.into(),
            kind: DomainKind::Authoritative,
            match_subdomains: false,
            verified,
        }
    }

    fn new_connector(tenant: TenantId, name: &str) -> NewConnector {
        NewConnector {
            tenant_id: tenant,
            name: name.into(),
            kind: ConnectorKind::OnPremises,
            ip_ranges: vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            cert_name: None,
            auth_user: None,
            auth_password_hash: None,
            require_tls: false,
            allow_unregistered: false,
            restrict_domains_to_ips: false,
            restrict_domains_to_cert: false,
        }
    }

    async fn last_audit(s: &SqliteStore) -> AuditEntry {
        s.list_audit(None, 1).await.unwrap().remove(0)
    }

    #[tokio::test]
    async fn open_creates_file_and_reopens() {
        let (_dir, s, path) = store().await;
        assert!(Path::new(&path).exists());
        assert_eq!(s.directory_version().await.unwrap(), 1);
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get(0);
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query("PRAGMA foreign_keys")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get(0);
        assert_eq!(fk, 1);
        s.create_tenant("acme", &[], "op").await.unwrap();
        s.pool().close().await;
        // Reopen: migrations already applied, data kept.
        let s2 = SqliteStore::open(&path).await.unwrap();
        assert_eq!(s2.list_tenants().await.unwrap().len(), 1);
        assert_eq!(s2.directory_version().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn open_via_url() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/x/db.sqlite", dir.path().display());
        let s = crate::open(&url).await.unwrap();
        assert!(s.list_tenants().await.unwrap().is_empty());
        assert!(matches!(
            crate::open("postgres://x").await,
            Err(StoreError::Invalid(_))
        ));
    }

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
        assert_eq!(s.get_tenant(999).await.unwrap(), None);

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
            .set_tenant_state(7777, TenantState::Active, "op", "x")
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
            s.add_domain(new_domain(555, "x.example", false), "bob").await,
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
    async fn connectors_crud_conflicts_audit_version_touch() {
        let (_dir, s, _) = store().await;
        let acme = s.create_tenant("acme", &[], "op").await.unwrap();
        let other = s.create_tenant("other", &[], "op").await.unwrap();
        let v = s.directory_version().await.unwrap();

        let secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$SECRETHASHVALUE";
        let c = s
            .add_connector(
                NewConnector {
                    auth_user: Some("acme-relay".into()),
                    auth_password_hash: Some(secret_hash.into()),
                    cert_name: Some("mail.acme.example".into()),
                    require_tls: true,
                    ..new_connector(acme.id, "onprem")
                },
                "alice",
            )
            .await
            .unwrap();
        assert!(c.enabled && !c.blocked);
        assert_eq!(c.created_by, "alice");
        assert_eq!(c.last_used_at, None);
        assert_eq!(s.get_connector(c.id).await.unwrap(), Some(c.clone()));
        assert_eq!(s.directory_version().await.unwrap(), v + 1);
        let a = last_audit(&s).await;
        assert_eq!(
            (
                a.actor.as_str(),
                a.action.as_str(),
                a.tenant_id,
                a.object.as_str()
            ),
            ("alice", "connector.add", Some(acme.id), "connector onprem")
        );
        assert!(a.detail.contains("192.0.2.0/24"), "{}", a.detail);
        assert!(!a.detail.contains("argon2") && !a.detail.contains("SECRET"));

        // Conflicts: same (tenant, name); auth_user used anywhere.
        let err = s
            .add_connector(new_connector(acme.id, "onprem"), "alice")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("connector onprem")),
            "{err}"
        );
        let err = s
            .add_connector(
                NewConnector {
                    auth_user: Some("acme-relay".into()),
                    ..new_connector(other.id, "x")
                },
                "alice",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("auth user acme-relay")),
            "{err}"
        );
        assert!(matches!(
            s.add_connector(new_connector(4242, "x"), "alice").await,
            Err(StoreError::NotFound(m)) if m == "tenant 4242"
        ));
        // Same name in another tenant is fine; so are several connectors without auth_user.
        let c2 = s
            .add_connector(new_connector(other.id, "onprem"), "bob")
            .await
            .unwrap();
        let c3 = s
            .add_connector(new_connector(other.id, "partner"), "bob")
            .await
            .unwrap();
        assert_eq!(s.list_connectors(None).await.unwrap().len(), 3);
        assert_eq!(s.list_connectors(Some(other.id)).await.unwrap().len(), 2);
        assert_eq!(s.directory_version().await.unwrap(), v + 3);

        // Update: every mutable field.
        let mut u = c.clone();
        u.name = "onprem-2".into();
        u.kind = ConnectorKind::Partner;
        u.ip_ranges = vec!["198.51.100.7/32".parse().unwrap()];
        u.cert_name = None;
        u.auth_user = Some("acme-relay-2".into());
        u.auth_password_hash = Some("$argon2id$NEWHASH".into());
        u.require_tls = false;
        u.enabled = false;
        u.allow_unregistered = true;
        u.restrict_domains_to_ips = true;
        u.restrict_domains_to_cert = true;
        u.blocked = true;
        s.update_connector(&u, "carol").await.unwrap();
        let got = s.get_connector(c.id).await.unwrap().unwrap();
        assert_eq!(got.updated_by, "carol");
        assert_eq!(got.created_by, "alice");
        let mut expect = u.clone();
        expect.updated_at = got.updated_at;
        expect.updated_by = "carol".into();
        assert_eq!(got, expect);
        assert_eq!(s.directory_version().await.unwrap(), v + 4);
        let a = last_audit(&s).await;
        assert_eq!(
            (a.actor.as_str(), a.action.as_str(), a.object.as_str()),
            ("carol", "connector.update", "connector onprem")
        );
        assert!(a.detail.contains("name onprem -> onprem-2"), "{}", a.detail);
        assert!(a.detail.contains("blocked false -> true"), "{}", a.detail);
        assert!(a.detail.contains("password set"), "{}", a.detail);
        assert!(!a.detail.contains("argon2") && !a.detail.contains("NEWHASH"));

        // Update conflicts and errors.
        let mut dup = c3.clone();
        dup.name = "onprem".into();
        assert!(matches!(
            s.update_connector(&dup, "carol").await,
            Err(StoreError::Conflict(_))
        ));
        let mut dup = c3.clone();
        dup.auth_user = Some("acme-relay-2".into());
        assert!(matches!(
            s.update_connector(&dup, "carol").await,
            Err(StoreError::Conflict(_))
        ));
        let mut moved = c3.clone();
        moved.tenant_id = acme.id;
        assert!(matches!(
            s.update_connector(&moved, "carol").await,
            Err(StoreError::Invalid(_))
        ));
        let mut missing = c3.clone();
        missing.id = 9999;
        assert!(matches!(
            s.update_connector(&missing, "carol").await,
            Err(StoreError::NotFound(m)) if m == "connector 9999"
        ));
        assert_eq!(s.directory_version().await.unwrap(), v + 4);

        // Touch: last_used_at only goes forward; no audit, no version bump.
        let audits = s.list_audit(None, 1000).await.unwrap().len();
        s.touch_connectors(&[(c2.id, 1000), (c3.id, 2000), (9999, 5)])
            .await
            .unwrap();
        s.touch_connectors(&[(c2.id, 500), (c3.id, 3000)])
            .await
            .unwrap();
        assert_eq!(
            s.get_connector(c2.id).await.unwrap().unwrap().last_used_at,
            Some(1000)
        );
        assert_eq!(
            s.get_connector(c3.id).await.unwrap().unwrap().last_used_at,
            Some(3000)
        );
        assert_eq!(s.directory_version().await.unwrap(), v + 4);
        assert_eq!(s.list_audit(None, 1000).await.unwrap().len(), audits);
        // Touch does not change updated_at/by.
        assert_eq!(
            s.get_connector(c2.id).await.unwrap().unwrap().updated_by,
            "bob"
        );

        // Delete.
        s.delete_connector(c2.id, "dave").await.unwrap();
        assert_eq!(s.get_connector(c2.id).await.unwrap(), None);
        assert_eq!(s.directory_version().await.unwrap(), v + 5);
        let a = last_audit(&s).await;
        assert_eq!(
            (a.actor.as_str(), a.action.as_str(), a.tenant_id),
            ("dave", "connector.delete", Some(other.id))
        );
        assert!(matches!(
            s.delete_connector(c2.id, "dave").await,
            Err(StoreError::NotFound(_))
        ));
        // Ids are not reused after a delete.
        let c4 = s
            .add_connector(new_connector(other.id, "again"), "bob")
            .await
            .unwrap();
        assert!(c4.id > c3.id);
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

    fn event(at_ms: i64, kind: TraceKind) -> TraceEvent {
        TraceEvent {
            at_ms,
            ..TraceEvent::new(kind)
        }
    }

    #[tokio::test]
    async fn trace_record_and_search() {
        let (_dir, s, _) = store().await;
        s.record_trace(&[]).await.unwrap();
        let mut events = Vec::new();
        for i in 0..300i64 {
            let mut e = event(1_000_000 + i, TraceKind::Queued);
            e.queue_id = Some(format!("Q{i:04}"));
            e.message_id = Some(format!("<m{i}@acme.example>"));
            e.tenant_id = Some(if i % 2 == 0 { 1 } else { 2 });
            e.connector_id = Some(7);
            e.client_ip = Some("192.0.2.1".into());
            e.sender = Some(format!("User{}@Acme.Example", i % 10));
            e.recipient = Some(format!("rcpt{}@dest.example", i % 3));
            e.sender_class = Some(SenderClass::Registered);
            e.reply = Some("250 2.0.0 OK".into());
            e.detail = Some("d".into());
            events.push(e);
        }
        let mut refused = event(2_000_000, TraceKind::Refused);
        refused.sender = Some("spam@bad.example".into());
        refused.reply = Some("550 5.7.64 TenantAttribution; Relay Access Denied".into());
        events.push(refused.clone());
        let started = std::time::Instant::now();
        s.record_trace(&events).await.unwrap();
        eprintln!(
            "recorded {} events in {:?}",
            events.len(),
            started.elapsed()
        );

        let q = TraceQuery::default;
        // Default limit 100, newest first.
        let r = s.search_trace(&q()).await.unwrap();
        assert_eq!(r.len(), 100);
        assert_eq!(r[0].kind, TraceKind::Refused);
        assert!(r.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
        let got = &r[0];
        assert!(got.id > 0);
        assert_eq!(got.reply, refused.reply);
        assert_eq!(got.queue_id, None);
        assert_eq!(got.sender_class, None);

        let all = s
            .search_trace(&TraceQuery { limit: 1000, ..q() })
            .await
            .unwrap();
        assert_eq!(all.len(), 301);
        // Round trip of every field.
        let e5 = all
            .iter()
            .find(|e| e.queue_id.as_deref() == Some("Q0005"))
            .unwrap();
        assert_eq!(
            TraceEvent {
                id: 0,
                ..e5.clone()
            },
            events[5]
        );

        // By tenant.
        let r = s
            .search_trace(&TraceQuery {
                tenant_id: Some(2),
                limit: 1000,
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(r.len(), 150);
        assert!(r.iter().all(|e| e.tenant_id == Some(2)));
        // By sender, case-insensitively.
        let r = s
            .search_trace(&TraceQuery {
                sender: Some("user3@acme.example".into()),
                limit: 1000,
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(r.len(), 30);
        // By recipient.
        let r = s
            .search_trace(&TraceQuery {
                recipient: Some("RCPT0@dest.example".into()),
                limit: 1000,
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(r.len(), 100);
        // By message id, with or without brackets.
        for m in ["<m42@acme.example>", "m42@acme.example"] {
            let r = s
                .search_trace(&TraceQuery {
                    message_id: Some(m.into()),
                    ..q()
                })
                .await
                .unwrap();
            assert_eq!(r.len(), 1, "{m}");
            assert_eq!(r[0].queue_id.as_deref(), Some("Q0042"));
        }
        // By queue id.
        let r = s
            .search_trace(&TraceQuery {
                queue_id: Some("Q0299".into()),
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].at_ms, 1_000_299);
        // By time range (inclusive), combined with tenant and a limit.
        let r = s
            .search_trace(&TraceQuery {
                since_ms: Some(1_000_010),
                until_ms: Some(1_000_019),
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(r[0].at_ms, 1_000_019);
        let r = s
            .search_trace(&TraceQuery {
                tenant_id: Some(1),
                since_ms: Some(1_000_010),
                until_ms: Some(1_000_019),
                limit: 3,
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(
            r.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            vec![1_000_018, 1_000_016, 1_000_014]
        );
        // Nothing matches.
        let r = s
            .search_trace(&TraceQuery {
                sender: Some("nobody@x.example".into()),
                ..q()
            })
            .await
            .unwrap();
        assert!(r.is_empty());

        // The address searches use the LOWER() expression indexes.
        let plan: Vec<String> =
            sqlx::query("EXPLAIN QUERY PLAN SELECT id FROM trace_events WHERE LOWER(sender) = ?")
                .bind("x")
                .fetch_all(s.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>("detail"))
                .collect();
        assert!(
            plan.iter().any(|p| p.contains("trace_events_sender")),
            "{plan:?}"
        );
    }

    /// The CLI and the server open the same file: one writes while the other reads, with no
    /// "database is locked" errors on either side.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_stores_on_one_file() {
        let (_dir, server, path) = store().await;
        let cli = SqliteStore::open(&path).await.unwrap();
        let server = Arc::new(server);
        let cli = Arc::new(cli);
        let t = cli.create_tenant("acme", &[], "cli").await.unwrap();
        let conn = cli
            .add_connector(new_connector(t.id, "onprem"), "cli")
            .await
            .unwrap();

        // CLI: directory writes.
        let writer = {
            let cli = cli.clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    let d = cli
                        .add_domain(
                            new_domain(t.id, &format!("d{i}.example"), i % 2 == 0),
                            "cli",
                        )
                        .await
                        .unwrap();
                    if i % 3 == 0 {
                        cli.set_domain_verified(d.id, true, "cli").await.unwrap();
                    }
                }
            })
        };
        // Server: trace and touch writes of its own, at the same time.
        let server_writer = {
            let server = server.clone();
            tokio::spawn(async move {
                for i in 0..40i64 {
                    let batch: Vec<TraceEvent> = (0..50)
                        .map(|j| {
                            let mut e = event(i * 100 + j, TraceKind::Received);
                            e.tenant_id = Some(t.id);
                            e
                        })
                        .collect();
                    server.record_trace(&batch).await.unwrap();
                    server.touch_connectors(&[(conn.id, i)]).await.unwrap();
                }
            })
        };
        // Server: polls the version and reloads the directory, checking every snapshot is
        // consistent (the version matches the content).
        let reader = {
            let server = server.clone();
            tokio::spawn(async move {
                let mut loads = 0;
                let mut last = 0;
                for _ in 0..200 {
                    let v = server.directory_version().await.unwrap();
                    assert!(v >= last);
                    if v != last {
                        let dir = server.load_directory().await.unwrap();
                        assert!(dir.version >= v);
                        assert_consistent(&dir);
                        last = dir.version;
                        loads += 1;
                    }
                    server
                        .search_trace(&TraceQuery {
                            tenant_id: Some(t.id),
                            limit: 10,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                loads
            })
        };
        writer.await.unwrap();
        server_writer.await.unwrap();
        let loads = reader.await.unwrap();
        assert!(loads >= 1);

        let dir = server.load_directory().await.unwrap();
        assert_eq!(dir.domains.len(), 60);
        // 1 (initial) + tenant + connector + 60 domains + verifies of odd i divisible by 3.
        let verifies = (0..60).filter(|i| i % 3 == 0).count() as i64;
        assert_eq!(dir.version, 1 + 2 + 60 + verifies);
        assert_eq!(dir.version, cli.directory_version().await.unwrap());
        let all = cli
            .search_trace(&TraceQuery {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 2000);
        assert_eq!(
            cli.get_connector(conn.id)
                .await
                .unwrap()
                .unwrap()
                .last_used_at,
            Some(39)
        );
    }

    /// The writer in `two_stores_on_one_file` adds domains d0, d1, ... in order and verifies
    /// each d{i} with i % 3 == 0 right after adding it; with the initial version 1 and the tenant
    /// and connector, a consistent snapshot's version is determined by its domains (up to
    /// whether the newest domain's verify call is in yet).
    fn assert_consistent(dir: &DirectoryData) {
        let mut idx: Vec<i64> = dir
            .domains
            .iter()
            .map(|d| {
                d.domain
                    .trim_start_matches('d')
                    .trim_end_matches(".example")
                    .parse()
                    .unwrap()
            })
            .collect();
        idx.sort();
        let n = idx.len() as i64;
        assert_eq!(idx, (0..n).collect::<Vec<_>>());
        if n == 0 {
            assert_eq!(dir.version, 3);
            return;
        }
        let last = n - 1;
        let done = (0..last).filter(|i| i % 3 == 0).count() as i64;
        let base = 3 + n + done;
        let ok = if last % 3 == 0 {
            dir.version == base || dir.version == base + 1
        } else {
            dir.version == base
        };
        assert!(ok, "version {} with {n} domains", dir.version);
        // Verified flags agree with the version too.
        for d in &dir.domains {
            let i: i64 = d.domain[1..d.domain.len() - 8].parse().unwrap();
            if i % 2 == 0 || (i % 3 == 0 && i < last) {
                assert!(d.verified, "{}", d.domain);
            } else if i % 3 != 0 {
                assert!(!d.verified, "{}", d.domain);
            }
        }
    }

    /// Child half of `cross_process`: does nothing unless run by it.
    #[tokio::test]
    async fn cross_process_child() {
        let Ok(path) = std::env::var("RELAYWARD_STORE_CHILD_DB") else {
            return;
        };
        let s = SqliteStore::open(&path).await.unwrap();
        let t = s.find_tenant("acme").await.unwrap().unwrap();
        for i in 0..100 {
            s.add_domain(
                new_domain(t.id, &format!("child{i}.example"), false),
                "child",
            )
            .await
            .unwrap();
            let batch: Vec<TraceEvent> = (0..20)
                .map(|j| event(i * 20 + j, TraceKind::Queued))
                .collect();
            s.record_trace(&batch).await.unwrap();
        }
    }

    /// A real second process (this test binary, running `cross_process_child`) writes to the
    /// file while this one writes and reloads: no "database is locked" on either side.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cross_process() {
        let (_dir, s, path) = store().await;
        let t = s.create_tenant("acme", &[], "cli").await.unwrap();
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sqlite::tests::cross_process_child",
                "--nocapture",
            ])
            .env("RELAYWARD_STORE_CHILD_DB", &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut i = 0;
        loop {
            s.add_domain(
                new_domain(t.id, &format!("parent{i}.example"), false),
                "parent",
            )
            .await
            .unwrap();
            s.touch_connectors(&[(1, i)]).await.unwrap();
            let dir = s.load_directory().await.unwrap();
            assert!(dir.domains.len() as i64 > i);
            i += 1;
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().await.unwrap();
                assert!(
                    status.success(),
                    "child failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                break;
            }
        }
        let dir = s.load_directory().await.unwrap();
        let child_domains = dir
            .domains
            .iter()
            .filter(|d| d.domain.starts_with("child"))
            .count();
        assert_eq!(child_domains, 100);
        assert_eq!(dir.version, 2 + dir.domains.len() as i64);
        assert_eq!(
            s.search_trace(&TraceQuery {
                limit: 5000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
            2000
        );
        eprintln!("parent wrote {i} domains while the child ran");
    }

    /// Two processes starting at once on a fresh file: both open and migrate cleanly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_open_of_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fresh.db").to_str().unwrap().to_string();
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move { SqliteStore::open(&path).await })
            })
            .collect();
        for o in opens {
            let s = o.await.unwrap().unwrap();
            assert_eq!(s.directory_version().await.unwrap(), 1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Admin API tokens and trace paging: rows and helpers

macro_rules! token_cols {
    () => {
        "id, scope, tenant_id, label, secret_hash, created_at, created_by, revoked_at, \
         revoked_by, last_used_at"
    };
}
use token_cols;

fn token_from_row(row: &SqliteRow) -> Result<ApiToken> {
    let kind: String = row.try_get("scope")?;
    let tenant: Option<TenantId> = row.try_get("tenant_id")?;
    let scope = match (kind.as_str(), tenant) {
        ("operator", None) => TokenScope::Operator,
        ("tenant", Some(t)) => TokenScope::Tenant(t),
        _ => {
            return Err(StoreError::Backend(format!(
                "bad token scope {kind:?} with tenant {tenant:?}"
            )))
        }
    };
    Ok(ApiToken {
        id: row.try_get("id")?,
        scope,
        label: row.try_get("label")?,
        secret_hash: row.try_get("secret_hash")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        revoked_at: row.try_get("revoked_at")?,
        revoked_by: row.try_get("revoked_by")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

/// The filters of [`Store::search_trace`], for [`Store::search_trace_page`].
fn push_trace_filters(qb: &mut QueryBuilder<Sqlite>, q: &TraceQuery) {
    if let Some(t) = q.tenant_id {
        qb.push(" AND tenant_id = ").push_bind(t);
    }
    if let Some(s) = q.sender.as_deref().map(str::trim) {
        qb.push(" AND LOWER(sender) = ")
            .push_bind(s.to_ascii_lowercase());
    }
    if let Some(r) = q.recipient.as_deref().map(str::trim) {
        qb.push(" AND LOWER(recipient) = ")
            .push_bind(r.to_ascii_lowercase());
    }
    if let Some(m) = q.message_id.as_deref().map(str::trim) {
        let bare = m.trim_start_matches('<').trim_end_matches('>');
        qb.push(" AND message_id IN (")
            .push_bind(bare.to_string())
            .push(", ")
            .push_bind(format!("<{bare}>"))
            .push(")");
    }
    if let Some(id) = q.queue_id.as_deref().map(str::trim) {
        qb.push(" AND queue_id = ").push_bind(id.to_string());
    }
    if let Some(since) = q.since_ms {
        qb.push(" AND at_ms >= ").push_bind(since);
    }
    if let Some(until) = q.until_ms {
        qb.push(" AND at_ms <= ").push_bind(until);
    }
}

#[cfg(test)]
#[path = "sqlite_tokens_tests.rs"]
mod tokens_tests;
