//! `Store`: the directory (tenants, accepted domains, connectors), audit log and message trace.
//! SQLite is the embedded default; PostgreSQL serves a cluster of relay nodes. Both backends run
//! the same logic (`src/sql/`), each compiled against its own dialect module: the SQL they share
//! is written once, and only what the two databases spell differently is kept per backend.

use async_trait::async_trait;
use relayward_core::SenderClass;
use relayward_core::{
    AcceptedDomain, AuditEntry, Connector, ConnectorId, ConnectorKind, DirectoryData,
    DirectoryDelta, DomainId, DomainKind, HeaderFromAllowed, ReputationHour, Suppression,
    SuppressionUpdates, Tenant, TenantId, TenantState, Timestamp, TraceEvent, TraceQuery,
};

pub mod abuse;
pub mod postgres;
pub mod sqlite;

pub use abuse::{
    ConnectorChangeRecord, NewSenderRestriction, NewTransition, SenderRestrictionRecord,
    TenantStatusRecord, TransitionRecord,
};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("store backend: {0}")]
    Backend(String),
    /// The database cannot be reached (connection refused or lost, no connection free in
    /// time): try again later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e.as_database_error() {
            // SQLite's constraint error and PostgreSQL's unique_violation (23505) alike.
            Some(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_string()),
            _ if matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            ) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            // PostgreSQL shutting down or restarting (class 57P: operator intervention).
            Some(db) if db.code().is_some_and(|c| c.starts_with("57P")) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Backend(format!("migration: {e}"))
    }
}

/// A new accepted domain. `domain` must already be normalized (lowercase, no trailing dot).
#[derive(Debug, Clone)]
pub struct NewDomain {
    pub tenant_id: TenantId,
    pub domain: String,
    pub kind: DomainKind,
    pub match_subdomains: bool,
    /// Operator attests ownership: stored as verified at once.
    pub verified: bool,
}

/// A new inbound connector. `auth_password_hash` is an argon2 PHC string, never a password.
#[derive(Debug, Clone)]
pub struct NewConnector {
    pub tenant_id: TenantId,
    pub name: String,
    pub kind: ConnectorKind,
    pub ip_ranges: Vec<ipnet::IpNet>,
    pub cert_name: Option<String>,
    pub auth_user: Option<String>,
    pub auth_password_hash: Option<String>,
    pub require_tls: bool,
    pub allow_unregistered: bool,
    pub restrict_domains_to_ips: bool,
    pub restrict_domains_to_cert: bool,
}

/// One tenant's traffic in one clock hour, from the message trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficHour {
    pub tenant_id: TenantId,
    /// Start of the hour, Unix milliseconds.
    pub start_ms: i64,
    /// Messages accepted, by sender class.
    pub registered: u64,
    pub unregistered: u64,
    pub null_sender: u64,
    /// Commands refused (MAIL, RCPT, end of DATA).
    pub refused: u64,
}

/// One relay node of a cluster, as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    /// The relay's version string.
    pub version: String,
    pub started_at: Timestamp,
    pub last_seen: Timestamp,
    /// Messages in the node's own spool.
    pub queue_depth: u64,
    pub smtp_addr: Option<String>,
    pub api_addr: Option<String>,
}

/// Every method that changes the directory writes its audit entry (actor = `actor`) and bumps
/// the directory version in the same transaction, so a running relay sees the change on its
/// next poll and the audit log never misses a change.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Tenants
    async fn create_tenant(
        &self,
        name: &str,
        admin_emails: &[String],
        actor: &str,
    ) -> Result<Tenant>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>>;
    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>>;
    /// By exact name, or by id when `name_or_id` is all digits and no tenant has that name.
    async fn find_tenant(&self, name_or_id: &str) -> Result<Option<Tenant>>;
    async fn set_tenant_state(
        &self,
        id: TenantId,
        state: TenantState,
        actor: &str,
        reason: &str,
    ) -> Result<()>;

    // Accepted domains
    /// Conflict when the tenant already has the domain, or when `verified` and another tenant
    /// has it verified. The verification token is random (32 lowercase alphanumerics).
    async fn add_domain(&self, domain: NewDomain, actor: &str) -> Result<AcceptedDomain>;
    async fn list_domains(&self, tenant: Option<TenantId>) -> Result<Vec<AcceptedDomain>>;
    async fn get_domain(&self, tenant: TenantId, domain: &str) -> Result<Option<AcceptedDomain>>;
    /// Conflict when another tenant has the same domain verified.
    async fn set_domain_verified(&self, id: DomainId, verified: bool, actor: &str) -> Result<()>;
    async fn remove_domain(&self, id: DomainId, actor: &str) -> Result<()>;

    // Inbound connectors
    /// Conflict on a duplicate (tenant, name) or an auth_user already used by any connector.
    async fn add_connector(&self, connector: NewConnector, actor: &str) -> Result<Connector>;
    async fn list_connectors(&self, tenant: Option<TenantId>) -> Result<Vec<Connector>>;
    async fn get_connector(&self, id: ConnectorId) -> Result<Option<Connector>>;
    /// Replaces every mutable field from `connector` (matched by id); sets updated_at/by.
    async fn update_connector(&self, connector: &Connector, actor: &str) -> Result<()>;
    async fn delete_connector(&self, id: ConnectorId, actor: &str) -> Result<()>;
    /// Records last use; not audited and does not bump the directory version.
    async fn touch_connectors(&self, used: &[(ConnectorId, Timestamp)]) -> Result<()>;

    // The relay's view
    async fn directory_version(&self) -> Result<i64>;
    async fn load_directory(&self) -> Result<DirectoryData>;
    /// The tenants changed after version `since`, each with its whole part of the directory as
    /// it is now: what a running relay applies instead of reloading everything. `None` when
    /// that cannot be said (the change log does not reach back to `since`, a change was not a
    /// single tenant's, or too many changed): load the whole directory then.
    async fn directory_changes(&self, since: i64) -> Result<Option<DirectoryDelta>>;

    // Audit log
    async fn audit(
        &self,
        actor: &str,
        action: &str,
        tenant: Option<TenantId>,
        object: &str,
        detail: &str,
    ) -> Result<()>;
    async fn list_audit(&self, tenant: Option<TenantId>, limit: u32) -> Result<Vec<AuditEntry>>;

    // Message trace
    async fn record_trace(&self, events: &[TraceEvent]) -> Result<()>;
    /// Newest first, at most `query.limit` (0 means 100).
    async fn search_trace(&self, query: &TraceQuery) -> Result<Vec<TraceEvent>>;

    // Abuse detector
    /// Restriction status of every tenant, by id.
    async fn tenant_statuses(&self) -> Result<Vec<TenantStatusRecord>>;
    async fn tenant_status(&self, id: TenantId) -> Result<Option<TenantStatusRecord>>;
    /// Applies a restriction-state transition in one transaction: the tenant's state, since,
    /// probation end and reason, a `tenant_transitions` row with the evidence, the audit entry
    /// (`tenant.state`) and the directory version bump. Conflict when the tenant is no longer
    /// in `t.from`. Returns the transition's id and the new directory version.
    async fn record_transition(&self, t: &NewTransition, actor: &str) -> Result<(i64, i64)>;
    /// A tenant's transitions, newest first, at most `limit` (0 means 100).
    async fn list_transitions(&self, tenant: TenantId, limit: u32)
        -> Result<Vec<TransitionRecord>>;
    /// Changes to the tenant's connectors (their `connector.*` audit entries) at or after
    /// `since`, newest first.
    async fn connector_changes(
        &self,
        tenant: TenantId,
        since: Timestamp,
    ) -> Result<Vec<ConnectorChangeRecord>>;
    /// Records a sender restriction (audited, version bump); returns its id.
    async fn add_sender_restriction(&self, r: &NewSenderRestriction, actor: &str) -> Result<i64>;
    /// Lifts the standing restrictions of `sender` (of `tenant`, or of every tenant) at
    /// `at_ms`; audited, version bump. Returns what was lifted (empty: nothing was standing).
    async fn lift_sender_restrictions(
        &self,
        tenant: Option<TenantId>,
        sender: &str,
        at_ms: i64,
        actor: &str,
    ) -> Result<Vec<SenderRestrictionRecord>>;
    /// Restrictions standing at `now_ms` (of `tenant`, or of every tenant), plus with
    /// `lifted_since_ms` those lifted at or after it. By id.
    async fn list_sender_restrictions(
        &self,
        tenant: Option<TenantId>,
        now_ms: i64,
        lifted_since_ms: Option<i64>,
    ) -> Result<Vec<SenderRestrictionRecord>>;
    /// A tenant's own per-sender limits (JSON), or `None` for the configured defaults; audited,
    /// version bump.
    async fn set_tenant_sender_limits(
        &self,
        tenant: TenantId,
        limits: Option<&str>,
        actor: &str,
    ) -> Result<()>;
    /// Tenants with their own per-sender limits (JSON).
    async fn tenant_sender_limits(&self) -> Result<Vec<(TenantId, String)>>;
    /// Domains a tenant admin declared as forwarded (mail it relays for others, e.g. from
    /// mailing lists); audited. Already declared ones are left as they are.
    async fn declare_forwarded_domains(
        &self,
        tenant: TenantId,
        domains: &[String],
        actor: &str,
    ) -> Result<()>;
    async fn forwarded_domains(&self, tenant: TenantId) -> Result<Vec<String>>;
    /// Declares a header From domain legitimate for the tenant's registered senders (through
    /// one connector, or any); audited (`header_from.allow`), version bump. Conflict when it is
    /// declared already; NotFound when the tenant or connector does not exist.
    async fn allow_header_from(&self, allowed: &HeaderFromAllowed, actor: &str) -> Result<()>;
    /// Withdraws a declaration; audited, version bump. NotFound when there is none.
    async fn disallow_header_from(
        &self,
        tenant: TenantId,
        domain: &str,
        connector: Option<ConnectorId>,
        actor: &str,
    ) -> Result<()>;
    async fn list_header_from_allowed(&self, tenant: TenantId) -> Result<Vec<HeaderFromAllowed>>;

    // Admin API tokens
    /// Stores a token (argon2id PHC string of its secret part, never the secret) and audits its
    /// creation. NotFound when the scope's tenant does not exist; Invalid on an empty label.
    async fn create_token(
        &self,
        scope: TokenScope,
        label: &str,
        secret_hash: &str,
        actor: &str,
    ) -> Result<TokenId>;
    async fn get_token(&self, id: TokenId) -> Result<Option<ApiToken>>;
    /// `Some(t)`: tenant `t`'s tokens; `None`: every token, operator tokens included. By id.
    async fn list_tokens(&self, tenant: Option<TenantId>) -> Result<Vec<ApiToken>>;
    /// Audited. NotFound when there is no such token; a token already revoked stays as it was.
    async fn revoke_token(&self, id: TokenId, actor: &str) -> Result<()>;
    /// Records last use (only ever forward); not audited.
    async fn touch_token(&self, id: TokenId, at: Timestamp) -> Result<()>;
    /// Messages (distinct queue ids) of `class` received from each of `tenant`'s connectors since
    /// `since_ms`; connectors without any are left out.
    async fn count_received_by_connector(
        &self,
        tenant: TenantId,
        class: SenderClass,
        since_ms: i64,
    ) -> Result<Vec<(ConnectorId, u64)>>;
    /// [`Store::search_trace`] continued after the event `(at_ms, id)` of the previous page.
    async fn search_trace_page(
        &self,
        query: &TraceQuery,
        after: Option<(i64, i64)>,
    ) -> Result<Vec<TraceEvent>>;
    /// Messages received (by sender class) and commands refused per tenant and clock hour from
    /// `since_ms` up to `until_ms` (exclusive), of one tenant or of every attributed one; hours
    /// without any are left out. By tenant, then hour.
    async fn traffic_hours(
        &self,
        tenant: Option<TenantId>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<TrafficHour>>;

    // DKIM
    /// Records `selector` as the DKIM key of `domain` (of `tenant`; `None` for the relay's own
    /// SRS domain), replacing the previous one; audited (`dkim.key`), version bump. NotFound
    /// when the tenant does not exist. The private key is never in the store.
    async fn set_dkim_key(
        &self,
        domain: &str,
        tenant: Option<TenantId>,
        selector: &str,
        algorithm: &str,
        actor: &str,
    ) -> Result<DkimKeyRecord>;
    async fn get_dkim_key(&self, domain: &str) -> Result<Option<DkimKeyRecord>>;
    /// Every domain's current key, by domain.
    async fn list_dkim_keys(&self) -> Result<Vec<DkimKeyRecord>>;

    // Suppression lists (`tenant` `None`: the operator's global list)
    /// Puts `s.address` (lowercased here) on `s.tenant_id`'s list until `s.expires_at`, from
    /// `s.created_at`, by `actor` (stored as `created_by`). An entry standing already for the address stays when it lasts
    /// at least as long; otherwise this one replaces it (a repeat hard bounce extends the
    /// expiry). Returns the entry standing afterwards. Audited (`suppression.add`) when
    /// `s.source` is manual, i.e. a person's change; hard bounces and complaints, which can come
    /// by the thousand, are recorded by the entry itself (source, reason, created_by) and by the
    /// message trace instead. Bumps the suppression version, never the directory's. NotFound
    /// when the tenant does not exist; Invalid on an empty address.
    async fn add_suppression(&self, s: &Suppression, actor: &str) -> Result<Suppression>;
    /// Takes `address` off the list; audited (`suppression.remove`). `false` when it was not on
    /// it at `now` (never listed, removed or expired).
    async fn remove_suppression(
        &self,
        tenant: Option<TenantId>,
        address: &str,
        now: Timestamp,
        actor: &str,
    ) -> Result<bool>;
    /// One list's entries in force at `now`, by address.
    async fn list_suppressions(
        &self,
        tenant: Option<TenantId>,
        now: Timestamp,
    ) -> Result<Vec<Suppression>>;
    async fn suppression_version(&self) -> Result<i64>;
    /// Every list's changes after version `since`, for the relay's in-memory lists; from 0,
    /// every entry in force at `now`.
    async fn suppression_updates(&self, since: i64, now: Timestamp) -> Result<SuppressionUpdates>;

    // Reputation: delivery outcomes per tenant and hour
    /// Adds each row's counts to its tenant's hour (rows of tenants that no longer exist are
    /// dropped), and forgets hours before `keep_from_hour`. Not audited: these are counts.
    async fn add_reputation_hours(
        &self,
        rows: &[ReputationHour],
        keep_from_hour: i64,
    ) -> Result<()>;
    /// The hours from `from_hour` on (hours since the Unix epoch), of one tenant or of all.
    async fn reputation_hours(
        &self,
        tenant: Option<TenantId>,
        from_hour: i64,
    ) -> Result<Vec<ReputationHour>>;

    // Cluster nodes
    /// Upserts the node's row by name (not audited). Invalid on an empty name.
    async fn heartbeat_node(&self, node: &NodeRecord) -> Result<()>;
    /// Every node that reported at or after `since`, by name.
    async fn list_nodes(&self, since: Timestamp) -> Result<Vec<NodeRecord>>;
}

/// Open the store named by a URL: `sqlite://PATH` (created with its directory if missing), or
/// `postgres://…` / `postgresql://…` (the database must exist; its schema is created).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(std::sync::Arc::new(SqliteStore::open(path).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PgStore::open(url).await?))
    } else {
        Err(StoreError::Invalid(format!(
            "unsupported store URL {url:?} (expected sqlite://PATH or postgres://...)"
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Admin API tokens

pub type TokenId = i64;

/// Who an admin API token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenScope {
    /// Everything, every tenant.
    Operator,
    /// One tenant's objects only.
    Tenant(TenantId),
}

impl TokenScope {
    /// `operator` or `tenant`, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenScope::Operator => "operator",
            TokenScope::Tenant(_) => "tenant",
        }
    }

    pub fn tenant(&self) -> Option<TenantId> {
        match self {
            TokenScope::Operator => None,
            TokenScope::Tenant(t) => Some(*t),
        }
    }
}

/// A stored admin API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: TokenId,
    pub scope: TokenScope,
    pub label: String,
    /// argon2id PHC string of the secret part.
    pub secret_hash: String,
    pub created_at: Timestamp,
    pub created_by: String,
    pub revoked_at: Option<Timestamp>,
    pub revoked_by: Option<String>,
    pub last_used_at: Option<Timestamp>,
}

// ---------------------------------------------------------------------------------------------
// DKIM

/// A domain's current DKIM key: the private key is in `<data_dir>/dkim/<domain>.<selector>.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKeyRecord {
    pub domain: String,
    /// `None`: the relay's own SRS domain.
    pub tenant_id: Option<TenantId>,
    pub selector: String,
    /// `ed25519` or `rsa2048`.
    pub algorithm: String,
    pub created_at: Timestamp,
    pub created_by: String,
}
