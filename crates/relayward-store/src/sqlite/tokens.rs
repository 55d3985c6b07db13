//! Admin API tokens: only a hash of each secret is stored; revocation and use are recorded.

use relayward_core::{now, TenantId, Timestamp};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::audit::insert_audit;
use super::directory::require_tenant;
use super::{rows_by_tenant, SqliteStore};
use crate::{ApiToken, TokenId, TokenScope};
use crate::{Result, StoreError};

macro_rules! token_cols {
    () => {
        "id, scope, tenant_id, label, secret_hash, created_at, created_by, revoked_at, \
         revoked_by, last_used_at"
    };
}

fn token_from_row(row: &SqliteRow) -> Result<ApiToken> {
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
    store: &SqliteStore,
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
    let mut tx = store.write_tx().await?;
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

pub(super) async fn get_token(store: &SqliteStore, id: TokenId) -> Result<Option<ApiToken>> {
    sqlx::query(concat!(
        "SELECT ",
        token_cols!(),
        " FROM api_tokens WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&store.pool)
    .await?
    .as_ref()
    .map(token_from_row)
    .transpose()
}

pub(super) async fn list_tokens(
    store: &SqliteStore,
    tenant: Option<TenantId>,
) -> Result<Vec<ApiToken>> {
    let rows = rows_by_tenant(
        store,
        tenant,
        concat!(
            "SELECT ",
            token_cols!(),
            " FROM api_tokens WHERE tenant_id = ? ORDER BY id"
        ),
        concat!("SELECT ", token_cols!(), " FROM api_tokens ORDER BY id"),
    )
    .await?;
    rows.iter().map(token_from_row).collect()
}

pub(super) async fn revoke_token(store: &SqliteStore, id: TokenId, actor: &str) -> Result<()> {
    let mut tx = store.write_tx().await?;
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

pub(super) async fn touch_token(store: &SqliteStore, id: TokenId, at: Timestamp) -> Result<()> {
    // One statement, no read first: autocommit is enough (see the module docs).
    sqlx::query(
        "UPDATE api_tokens SET last_used_at = ? \
         WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
    )
    .bind(at)
    .bind(id)
    .bind(at)
    .execute(&store.pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relayward.db");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn tokens_create_list_revoke_touch_audit() {
        let (_dir, s) = store().await;
        let a = s.create_tenant("a", &[], "test").await.unwrap();
        let b = s.create_tenant("b", &[], "test").await.unwrap();
        let version = s.directory_version().await.unwrap();

        let op = s
            .create_token(TokenScope::Operator, "ops", "$argon2id$x", "cli:root")
            .await
            .unwrap();
        let ta = s
            .create_token(
                TokenScope::Tenant(a.id),
                " a admin ",
                "$argon2id$y",
                "cli:root",
            )
            .await
            .unwrap();
        let tb = s
            .create_token(
                TokenScope::Tenant(b.id),
                "b admin",
                "$argon2id$z",
                "token:1/operator",
            )
            .await
            .unwrap();
        // Tokens are not part of the relay's directory.
        assert_eq!(s.directory_version().await.unwrap(), version);

        let t = s.get_token(ta).await.unwrap().unwrap();
        assert_eq!(t.scope, TokenScope::Tenant(a.id));
        assert_eq!(t.label, "a admin");
        assert_eq!(t.secret_hash, "$argon2id$y");
        assert_eq!(t.created_by, "cli:root");
        assert!(t.revoked_at.is_none() && t.last_used_at.is_none());
        assert!(s.get_token(tb + 100).await.unwrap().is_none());

        let all: Vec<TokenId> = s
            .list_tokens(None)
            .await
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(all, [op, ta, tb]);
        let of_a: Vec<TokenId> = s
            .list_tokens(Some(a.id))
            .await
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(of_a, [ta]);

        let audit = s.list_audit(None, 10).await.unwrap();
        let created = audit
            .iter()
            .find(|e| e.object == format!("token {tb}"))
            .unwrap();
        assert_eq!(created.action, "token.create");
        assert_eq!(created.actor, "token:1/operator");
        assert_eq!(created.tenant_id, Some(b.id));
        assert!(created.detail.contains("tenant b"), "{}", created.detail);
        assert!(!created.detail.contains("argon2"), "{}", created.detail);
        let op_entry = audit
            .iter()
            .find(|e| e.object == format!("token {op}"))
            .unwrap();
        assert_eq!(op_entry.tenant_id, None);

        // Errors.
        assert!(matches!(
            s.create_token(TokenScope::Tenant(TenantId(999)), "x", "h", "t")
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.create_token(TokenScope::Operator, "  ", "h", "t").await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.revoke_token(999, "t").await,
            Err(StoreError::NotFound(_))
        ));

        // Touch only moves forward.
        s.touch_token(ta, Timestamp(1000)).await.unwrap();
        s.touch_token(ta, Timestamp(500)).await.unwrap();
        assert_eq!(
            s.get_token(ta).await.unwrap().unwrap().last_used_at,
            Some(Timestamp(1000))
        );

        // Revoke: audited once, idempotent.
        let before = s.list_audit(None, 1000).await.unwrap().len();
        s.revoke_token(ta, "token:1/operator").await.unwrap();
        let t = s.get_token(ta).await.unwrap().unwrap();
        assert!(t.revoked_at.is_some());
        assert_eq!(t.revoked_by.as_deref(), Some("token:1/operator"));
        let entry = s.list_audit(None, 1).await.unwrap().remove(0);
        assert_eq!(entry.action, "token.revoke");
        assert_eq!(entry.tenant_id, Some(a.id));
        s.revoke_token(ta, "someone else").await.unwrap();
        assert_eq!(s.list_audit(None, 1000).await.unwrap().len(), before + 1);
        assert_eq!(
            s.get_token(ta)
                .await
                .unwrap()
                .unwrap()
                .revoked_by
                .as_deref(),
            Some("token:1/operator")
        );
    }
}
