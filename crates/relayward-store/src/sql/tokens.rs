//! Admin API tokens: only a hash of each secret is stored; revocation and use are recorded.

use relayward_core::{now, TenantId, Timestamp};
use sqlx::Row;

use super::audit::insert_audit;
use super::directory::require_tenant;
use super::{begin_write, for_update, rows_by_tenant, Backend, DbRow};
use crate::{ApiToken, TokenId, TokenScope};
use crate::{Result, StoreError};

macro_rules! token_cols {
    () => {
        "id, scope, tenant_id, label, secret_hash, created_at, created_by, revoked_at, \
         revoked_by, last_used_at"
    };
}

fn token_from_row(row: &DbRow) -> Result<ApiToken> {
    let kind: String = row.try_get("scope")?;
    let tenant: Option<TenantId> = row.try_get("tenant_id")?;
    let scope = match (kind.as_str(), tenant) {
        ("operator", None) => TokenScope::Operator,
        ("tenant", Some(t)) => TokenScope::Tenant(t),
        _ => {
            return Err(StoreError::Backend(format!(
                "bad token scope {kind:?} with tenant {:?}",
                tenant.map(i64::from)
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

pub(super) async fn create_token(
    store: &Backend,
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
    let mut tx = begin_write(&store.pool).await?;
    let scope_text = match scope {
        TokenScope::Operator => "operator".to_string(),
        TokenScope::Tenant(t) => format!("tenant {}", require_tenant(&mut tx, t).await?.name),
    };
    let id: TokenId = sqlx::query(
        "INSERT INTO api_tokens (scope, tenant_id, label, secret_hash, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
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

pub(super) async fn get_token(store: &Backend, id: TokenId) -> Result<Option<ApiToken>> {
    sqlx::query(concat!(
        "SELECT ",
        token_cols!(),
        " FROM api_tokens WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&store.pool)
    .await?
    .as_ref()
    .map(token_from_row)
    .transpose()
}

pub(super) async fn list_tokens(
    store: &Backend,
    tenant: Option<TenantId>,
) -> Result<Vec<ApiToken>> {
    let rows = rows_by_tenant(
        &store.pool,
        tenant,
        concat!(
            "SELECT ",
            token_cols!(),
            " FROM api_tokens WHERE tenant_id = $1 ORDER BY id"
        ),
        concat!("SELECT ", token_cols!(), " FROM api_tokens ORDER BY id"),
    )
    .await?;
    rows.iter().map(token_from_row).collect()
}

pub(super) async fn revoke_token(store: &Backend, id: TokenId, actor: &str) -> Result<()> {
    let mut tx = begin_write(&store.pool).await?;
    // Locked: of two revocations at once, the second finds the token revoked.
    let token = sqlx::query(concat!(
        "SELECT ",
        token_cols!(),
        " FROM api_tokens WHERE id = $1",
        for_update!()
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
    sqlx::query("UPDATE api_tokens SET revoked_at = $1, revoked_by = $2 WHERE id = $3")
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

pub(super) async fn touch_token(store: &Backend, id: TokenId, at: Timestamp) -> Result<()> {
    // One statement, no read first: autocommit is enough (see the module docs).
    sqlx::query(
        "UPDATE api_tokens SET last_used_at = $1 \
         WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
    )
    .bind(at)
    .bind(id)
    .bind(at)
    .execute(&store.pool)
    .await?;
    Ok(())
}
