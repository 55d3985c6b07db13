//! The store's logic, written once for every SQL backend.
//!
//! This directory is not a module of its own: each backend includes it (`#[path]`) as its `sql`
//! module and so compiles it once against its own `dialect` module (`super::dialect`), which
//! names the database (`Db`, `DbRow`, `DbPool`, `DbConn`), the backend's store type
//! (`Backend`, with a `pool` field) and the few things the two databases spell differently:
//! - `begin_write`: a transaction that will write (SQLite must take its write lock up front);
//! - `begin_snapshot`: a read transaction that sees one snapshot of the database;
//! - `for_update!()`: the suffix locking the rows a read-then-write transaction selects.
//!
//! Everything else, the audit texts, the checks, the merge rules and the SQL itself, is here
//! once. The SQL is the subset both databases accept: `$N` placeholders (sqlx binds SQLite's
//! `$N` by number, like PostgreSQL's), `RETURNING`, `ON CONFLICT`, `COALESCE`, explicit
//! `LOWER` for case-insensitive matching and `CAST` where PostgreSQL's aggregates would widen
//! the type. Integers are BIGINT, booleans BOOLEAN (SQLite stores them as 0 and 1).
//!
//! Rules every write follows, on both backends:
//! - a change to the directory writes its audit entry and bumps the directory version in the
//!   transaction that makes it (`audit::audit_and_bump`); the bump is an `UPDATE ... RETURNING`
//!   of one row, whose lock orders concurrent changes: each gets a distinct version;
//! - a read-then-write selects what it reads `for_update!()`, so a concurrent change to the
//!   same rows waits rather than being overwritten;
//! - a restriction-state transition is a compare-and-set on the tenant's state;
//! - a uniqueness conflict that a check missed (a concurrent insert) is still a
//!   `StoreError::Conflict`, from the database's unique constraint.
//!
//! By concern:
//! - `directory`: tenants, accepted domains, header-from allowances, the directory snapshot;
//! - `connectors`: inbound connectors;
//! - `abuse`: restriction states and transitions, sender restrictions, forwarded domains;
//! - `audit`: the audit log (a directory change writes its entry in the transaction making it);
//! - `trace`: the message trace; `traffic`: hourly traffic counted from it;
//! - `tokens`: admin API tokens; `dkim`: DKIM key records;
//! - `suppression`: suppression lists; `reputation`: delivery outcomes by hour;
//! - `nodes`: the heartbeats of a cluster's relay nodes.

use std::str::FromStr;

use async_trait::async_trait;
use relayward_core::{
    AcceptedDomain, AuditEntry, Connector, ConnectorId, DirectoryData, DirectoryDelta, DomainId,
    HeaderFromAllowed, SenderClass, Tenant, TenantId, TenantState, Timestamp, TraceEvent,
    TraceQuery,
};
use sqlx::Row;

use super::dialect::{begin_snapshot, begin_write, for_update, Backend, Db, DbConn, DbPool, DbRow};
use crate::{ApiToken, TokenId, TokenScope};
use crate::{NewConnector, NewDomain, Result, Store, StoreError};

mod abuse;
mod audit;
mod connectors;
mod directory;
mod dkim;
mod nodes;
mod reputation;
mod suppression;
mod tokens;
mod trace;
mod traffic;

/// Default and maximum number of rows returned by searches.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;

/// A listing of one tenant's rows (`one`, with the tenant id bound as `$1`) or of every
/// tenant's (`all`).
async fn rows_by_tenant(
    pool: &DbPool,
    tenant: Option<TenantId>,
    one: &'static str,
    all: &'static str,
) -> Result<Vec<DbRow>> {
    Ok(match tenant {
        Some(t) => sqlx::query(one).bind(t).fetch_all(pool).await?,
        None => sqlx::query(all).fetch_all(pool).await?,
    })
}

// ---------------------------------------------------------------------------------------------
// Shared row helpers

fn parse_col<T: FromStr>(row: &DbRow, col: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let text: String = row.try_get(col)?;
    text.parse()
        .map_err(|e| StoreError::Backend(format!("bad value in column {col}: {e}")))
}

fn parse_opt_col<T: FromStr>(row: &DbRow, col: &str) -> Result<Option<T>>
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

/// A count column (BIGINT) as an unsigned count.
fn count_col(row: &DbRow, col: &str) -> Result<u64> {
    Ok(row.try_get::<i64, _>(col)?.max(0) as u64)
}

fn effective_limit(limit: u32) -> i64 {
    match limit {
        0 => DEFAULT_LIMIT as i64,
        n => n.min(MAX_LIMIT) as i64,
    }
}

// ---------------------------------------------------------------------------------------------
// The Store

#[async_trait]
impl Store for Backend {
    async fn create_tenant(
        &self,
        name: &str,
        admin_emails: &[String],
        actor: &str,
    ) -> Result<Tenant> {
        directory::create_tenant(self, name, admin_emails, actor).await
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        directory::list_tenants(self).await
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>> {
        directory::get_tenant(self, id).await
    }

    async fn find_tenant(&self, name_or_id: &str) -> Result<Option<Tenant>> {
        directory::find_tenant(self, name_or_id).await
    }

    async fn set_tenant_state(
        &self,
        id: TenantId,
        state: TenantState,
        actor: &str,
        reason: &str,
    ) -> Result<()> {
        directory::set_tenant_state(self, id, state, actor, reason).await
    }

    async fn add_domain(&self, domain: NewDomain, actor: &str) -> Result<AcceptedDomain> {
        directory::add_domain(self, domain, actor).await
    }

    async fn list_domains(&self, tenant: Option<TenantId>) -> Result<Vec<AcceptedDomain>> {
        directory::list_domains(self, tenant).await
    }

    async fn get_domain(&self, tenant: TenantId, domain: &str) -> Result<Option<AcceptedDomain>> {
        directory::get_domain(self, tenant, domain).await
    }

    async fn set_domain_verified(&self, id: DomainId, verified: bool, actor: &str) -> Result<()> {
        directory::set_domain_verified(self, id, verified, actor).await
    }

    async fn remove_domain(&self, id: DomainId, actor: &str) -> Result<()> {
        directory::remove_domain(self, id, actor).await
    }

    async fn add_connector(&self, c: NewConnector, actor: &str) -> Result<Connector> {
        connectors::add_connector(self, c, actor).await
    }

    async fn list_connectors(&self, tenant: Option<TenantId>) -> Result<Vec<Connector>> {
        connectors::list_connectors(self, tenant).await
    }

    async fn get_connector(&self, id: ConnectorId) -> Result<Option<Connector>> {
        connectors::get_connector(self, id).await
    }

    async fn update_connector(&self, c: &Connector, actor: &str) -> Result<()> {
        connectors::update_connector(self, c, actor).await
    }

    async fn delete_connector(&self, id: ConnectorId, actor: &str) -> Result<()> {
        connectors::delete_connector(self, id, actor).await
    }

    async fn touch_connectors(&self, used: &[(ConnectorId, Timestamp)]) -> Result<()> {
        connectors::touch_connectors(self, used).await
    }

    async fn directory_version(&self) -> Result<i64> {
        directory::directory_version(self).await
    }

    async fn load_directory(&self) -> Result<DirectoryData> {
        directory::load_directory(self).await
    }

    async fn directory_changes(&self, since: i64) -> Result<Option<DirectoryDelta>> {
        directory::directory_changes(self, since).await
    }

    async fn audit(
        &self,
        actor: &str,
        action: &str,
        tenant: Option<TenantId>,
        object: &str,
        detail: &str,
    ) -> Result<()> {
        audit::audit(self, actor, action, tenant, object, detail).await
    }

    async fn list_audit(&self, tenant: Option<TenantId>, limit: u32) -> Result<Vec<AuditEntry>> {
        audit::list_audit(self, tenant, limit).await
    }

    async fn record_trace(&self, events: &[TraceEvent]) -> Result<()> {
        trace::record_trace(self, events).await
    }

    async fn search_trace(&self, q: &TraceQuery) -> Result<Vec<TraceEvent>> {
        trace::search_trace(self, q).await
    }

    // Abuse detector

    async fn tenant_statuses(&self) -> Result<Vec<crate::TenantStatusRecord>> {
        abuse::tenant_statuses(&self.pool, None).await
    }

    async fn tenant_status(&self, id: TenantId) -> Result<Option<crate::TenantStatusRecord>> {
        Ok(abuse::tenant_statuses(&self.pool, Some(id)).await?.pop())
    }

    async fn record_transition(&self, t: &crate::NewTransition, actor: &str) -> Result<(i64, i64)> {
        let mut tx = begin_write(&self.pool).await?;
        let out = abuse::record_transition(&mut tx, t, actor).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn list_transitions(
        &self,
        tenant: TenantId,
        limit: u32,
    ) -> Result<Vec<crate::TransitionRecord>> {
        abuse::list_transitions(&self.pool, tenant, effective_limit(limit)).await
    }

    async fn connector_changes(
        &self,
        tenant: TenantId,
        since: Timestamp,
    ) -> Result<Vec<crate::ConnectorChangeRecord>> {
        abuse::connector_changes(&self.pool, tenant, since).await
    }

    async fn add_sender_restriction(
        &self,
        r: &crate::NewSenderRestriction,
        actor: &str,
    ) -> Result<i64> {
        let mut tx = begin_write(&self.pool).await?;
        let id = abuse::add_sender_restriction(&mut tx, r, actor).await?;
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
        let mut tx = begin_write(&self.pool).await?;
        let lifted = abuse::lift_sender_restrictions(&mut tx, tenant, sender, at_ms, actor).await?;
        tx.commit().await?;
        Ok(lifted)
    }

    async fn list_sender_restrictions(
        &self,
        tenant: Option<TenantId>,
        now_ms: i64,
        lifted_since_ms: Option<i64>,
    ) -> Result<Vec<crate::SenderRestrictionRecord>> {
        abuse::list_sender_restrictions(&self.pool, tenant, now_ms, lifted_since_ms).await
    }

    async fn set_tenant_sender_limits(
        &self,
        tenant: TenantId,
        limits: Option<&str>,
        actor: &str,
    ) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        abuse::set_tenant_sender_limits(&mut tx, tenant, limits, actor).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tenant_sender_limits(&self) -> Result<Vec<(TenantId, String)>> {
        abuse::tenant_sender_limits(&self.pool).await
    }

    async fn declare_forwarded_domains(
        &self,
        tenant: TenantId,
        domains: &[String],
        actor: &str,
    ) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        abuse::declare_forwarded_domains(&mut tx, tenant, domains, actor).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn forwarded_domains(&self, tenant: TenantId) -> Result<Vec<String>> {
        abuse::forwarded_domains(&self.pool, tenant).await
    }

    async fn allow_header_from(&self, a: &HeaderFromAllowed, actor: &str) -> Result<()> {
        directory::allow_header_from(self, a, actor).await
    }

    async fn disallow_header_from(
        &self,
        tenant: TenantId,
        domain: &str,
        connector: Option<ConnectorId>,
        actor: &str,
    ) -> Result<()> {
        directory::disallow_header_from(self, tenant, domain, connector, actor).await
    }

    async fn list_header_from_allowed(&self, tenant: TenantId) -> Result<Vec<HeaderFromAllowed>> {
        directory::list_header_from_allowed(self, tenant).await
    }

    // Admin API tokens

    async fn create_token(
        &self,
        scope: TokenScope,
        label: &str,
        secret_hash: &str,
        actor: &str,
    ) -> Result<TokenId> {
        tokens::create_token(self, scope, label, secret_hash, actor).await
    }

    async fn get_token(&self, id: TokenId) -> Result<Option<ApiToken>> {
        tokens::get_token(self, id).await
    }

    async fn list_tokens(&self, tenant: Option<TenantId>) -> Result<Vec<ApiToken>> {
        tokens::list_tokens(self, tenant).await
    }

    async fn revoke_token(&self, id: TokenId, actor: &str) -> Result<()> {
        tokens::revoke_token(self, id, actor).await
    }

    async fn touch_token(&self, id: TokenId, at: Timestamp) -> Result<()> {
        tokens::touch_token(self, id, at).await
    }

    async fn count_received_by_connector(
        &self,
        tenant: TenantId,
        class: SenderClass,
        since_ms: i64,
    ) -> Result<Vec<(ConnectorId, u64)>> {
        trace::count_received_by_connector(self, tenant, class, since_ms).await
    }

    async fn traffic_hours(
        &self,
        tenant: Option<TenantId>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<crate::TrafficHour>> {
        traffic::hours(&self.pool, tenant, since_ms, until_ms).await
    }

    async fn search_trace_page(
        &self,
        q: &TraceQuery,
        after: Option<(i64, i64)>,
    ) -> Result<Vec<TraceEvent>> {
        trace::search_trace_page(self, q, after).await
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
        let mut tx = begin_write(&self.pool).await?;
        let record =
            dkim::set_dkim_key(&mut tx, domain, tenant, selector, algorithm, actor).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn get_dkim_key(&self, domain: &str) -> Result<Option<crate::DkimKeyRecord>> {
        dkim::get_dkim_key(&self.pool, domain).await
    }

    async fn list_dkim_keys(&self) -> Result<Vec<crate::DkimKeyRecord>> {
        dkim::list_dkim_keys(&self.pool).await
    }

    // Suppression lists

    async fn add_suppression(
        &self,
        s: &relayward_core::Suppression,
        actor: &str,
    ) -> Result<relayward_core::Suppression> {
        let mut tx = begin_write(&self.pool).await?;
        let added = suppression::add(&mut tx, s, actor).await?;
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
        let mut tx = begin_write(&self.pool).await?;
        let removed = suppression::remove(&mut tx, tenant, address, now, actor).await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn list_suppressions(
        &self,
        tenant: Option<TenantId>,
        now: Timestamp,
    ) -> Result<Vec<relayward_core::Suppression>> {
        suppression::list(&self.pool, tenant, now).await
    }

    async fn suppression_version(&self) -> Result<i64> {
        suppression::version(&self.pool).await
    }

    async fn suppression_updates(
        &self,
        since: i64,
        now: Timestamp,
    ) -> Result<relayward_core::SuppressionUpdates> {
        suppression::updates(&self.pool, since, now).await
    }

    // Reputation

    async fn add_reputation_hours(
        &self,
        rows: &[relayward_core::ReputationHour],
        keep_from_hour: i64,
    ) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        reputation::add(&mut tx, rows, keep_from_hour).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reputation_hours(
        &self,
        tenant: Option<TenantId>,
        from_hour: i64,
    ) -> Result<Vec<relayward_core::ReputationHour>> {
        reputation::load(&self.pool, tenant, from_hour).await
    }

    // Cluster nodes

    async fn heartbeat_node(&self, node: &crate::NodeRecord) -> Result<()> {
        nodes::heartbeat(&self.pool, node).await
    }

    async fn list_nodes(&self, since: Timestamp) -> Result<Vec<crate::NodeRecord>> {
        nodes::list(&self.pool, since).await
    }
}
