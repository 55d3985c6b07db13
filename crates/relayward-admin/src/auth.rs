//! Bearer tokens: `rw_<id>_<secret>`, the secret 32 random bytes in unpadded base64url (43
//! characters). The store keeps an argon2id hash of the secret, looked up by id.
//!
//! argon2 is slow on purpose, far too slow to run on every request; so a verified token's
//! SHA-256 of the secret is cached in memory by id and later requests compare against it in
//! constant time. The token row is still read on every request (a primary-key lookup), so a
//! revocation made by another process (the CLI) takes effect on the next request.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use relayward_core::{now, TenantId};
use relayward_store::{ApiToken, Store, StoreError, TokenId, TokenScope};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::ApiError;
use crate::validate;
use crate::AppState;
pub use relayward_api_types::tokens::TokenInfo;

pub const TOKEN_PREFIX: &str = "rw_";
const SECRET_BYTES: usize = 32;
/// Unpadded base64 of 32 bytes.
const SECRET_CHARS: usize = 43;
/// `last_used_at` is written at most this often per token.
const TOUCH_INTERVAL_SECS: i64 = 60;
/// Bound on the verification cache; past it the cache starts over.
const CACHE_MAX: usize = 10_000;
pub const LABEL_MAX: usize = 100;

/// `(id, secret)` of a well-formed token.
pub fn parse_token(token: &str) -> Option<(TokenId, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if id.is_empty() || id.len() > 18 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if secret.len() != SECRET_CHARS
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some((id.parse().ok()?, secret))
}

fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn hash_secret(secret: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_secret(hash: &str, secret: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// argon2 off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("hashing task: {e}"))
}

/// The audit actor of a token: `token:<id>/operator` or `token:<id>/tenant:<tenant id>`.
pub fn token_actor(id: TokenId, scope: TokenScope) -> String {
    match scope {
        TokenScope::Operator => format!("token:{id}/operator"),
        TokenScope::Tenant(t) => format!("token:{id}/tenant:{t}"),
    }
}

/// Creates a token and returns its id and the plaintext token, which exists nowhere else: show
/// it once. Audited as `token.create` by `actor` (the CLI passes `cli:<user>`).
pub async fn create_token(
    store: &dyn Store,
    scope: TokenScope,
    label: &str,
    actor: &str,
) -> Result<(TokenId, String), StoreError> {
    let label = validate::text("label", label, LABEL_MAX)
        .map_err(|e| StoreError::Invalid(format!("token label: {}", e.detail())))?;
    let secret = new_secret();
    let hash = {
        let secret = secret.clone();
        blocking(move || hash_secret(&secret))
            .await
            .and_then(|r| r)
            .map_err(|e| StoreError::Backend(format!("hashing the token secret: {e}")))?
    };
    let id = store.create_token(scope, &label, &hash, actor).await?;
    Ok((id, format!("{TOKEN_PREFIX}{id}_{secret}")))
}

/// Revokes a token (audited as `token.revoke`). A server's verification cache honours it on the
/// next request, whichever process revoked it.
pub async fn revoke_token(store: &dyn Store, id: TokenId, actor: &str) -> Result<(), StoreError> {
    store.revoke_token(id, actor).await
}

/// Tokens without their secrets: a tenant's, or every one (operator tokens included).
pub async fn list_tokens(
    store: &dyn Store,
    tenant: Option<TenantId>,
) -> Result<Vec<TokenInfo>, StoreError> {
    Ok(store
        .list_tokens(tenant)
        .await?
        .iter()
        .map(token_info)
        .collect())
}

/// Successful verifications: token id -> SHA-256 of the secret that verified.
#[derive(Default)]
pub(crate) struct Verifier {
    cache: Mutex<HashMap<TokenId, [u8; 32]>>,
}

impl Verifier {
    fn cached(&self, id: TokenId, digest: &[u8; 32]) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&id)
            .is_some_and(|known| bool::from(known.ct_eq(digest)))
    }

    fn remember(&self, id: TokenId, digest: [u8; 32]) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(id, digest);
    }

    pub(crate) fn forget(&self, id: TokenId) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    async fn authenticate(&self, store: &dyn Store, header: &str) -> Result<Caller, ApiError> {
        let (scheme, token) = header.trim().split_once(' ').unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::missing_token());
        }
        let Some((id, secret)) = parse_token(token.trim()) else {
            return Err(ApiError::invalid_token(
                "malformed token: expected rw_<id>_<43 base64url characters>",
            ));
        };
        let invalid = || ApiError::invalid_token("the token is unknown, revoked or wrong");
        let row = store.get_token(id).await?.ok_or_else(invalid)?;
        if row.revoked_at.is_some() {
            self.forget(id);
            return Err(invalid());
        }
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if !self.cached(id, &digest) {
            let hash = row.secret_hash.clone();
            let secret = secret.to_string();
            let ok = blocking(move || verify_secret(&hash, &secret))
                .await
                .map_err(ApiError::internal)?;
            if !ok {
                return Err(invalid());
            }
            self.remember(id, digest);
        }
        let at = now();
        if row
            .last_used_at
            .is_none_or(|last| at - last >= TOUCH_INTERVAL_SECS)
        {
            if let Err(e) = store.touch_token(id, at).await {
                tracing::warn!(token = id, error = %e, "cannot record token use");
            }
        }
        Ok(Caller {
            token: Some(id),
            scope: row.scope,
            local: None,
        })
    }
}

/// Who is calling: an authenticated token, or the operator on the relay's own host through
/// [`crate::local_router`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `None` for the local operator.
    pub token: Option<TokenId>,
    pub scope: TokenScope,
    /// The local operator's audit actor (`cli:<user>`).
    local: Option<std::sync::Arc<str>>,
}

/// Set on every request of [`crate::local_router`]: the request comes from this process, made
/// by the operator named. A request extension, never anything a client sends, so no request
/// from the network can carry it.
#[derive(Debug, Clone)]
pub(crate) struct LocalOperator(pub(crate) std::sync::Arc<str>);

impl Caller {
    /// The audit actor.
    pub fn actor(&self) -> String {
        match (&self.local, self.token) {
            (Some(actor), _) => actor.to_string(),
            (None, Some(token)) => token_actor(token, self.scope),
            (None, None) => "unknown".into(),
        }
    }

    pub fn is_operator(&self) -> bool {
        self.scope == TokenScope::Operator
    }

    /// The tenant a tenant-admin token is confined to.
    pub fn tenant(&self) -> Option<TenantId> {
        self.scope.tenant()
    }

    /// May this caller see tenant `t`'s objects at all? (Operators: any.)
    pub fn may_see(&self, t: TenantId) -> bool {
        match self.scope {
            TokenScope::Operator => true,
            TokenScope::Tenant(own) => own == t,
        }
    }

    /// 403 for a tenant-admin token (`what` completes "only the operator can ...").
    pub fn require_operator(&self, what: &str) -> Result<(), ApiError> {
        if self.is_operator() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "only the operator can {what}; this token is scoped to tenant {}",
                self.tenant().unwrap_or_default()
            )))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(LocalOperator(actor)) = parts.extensions.get::<LocalOperator>() {
            return Ok(Caller {
                token: None,
                scope: TokenScope::Operator,
                local: Some(actor.clone()),
            });
        }
        let Some(value) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::missing_token());
        };
        let Ok(header) = value.to_str() else {
            return Err(ApiError::invalid_token(
                "the Authorization header is not text",
            ));
        };
        state.verifier().authenticate(state.store(), header).await
    }
}

/// How a token is listed.
pub fn token_info(t: &ApiToken) -> TokenInfo {
    TokenInfo {
        id: t.id,
        scope: t.scope.kind().to_string(),
        tenant_id: t.scope.tenant().map(i64::from),
        label: t.label.clone(),
        token_prefix: format!("{TOKEN_PREFIX}{}_", t.id),
        created_at: t.created_at.0,
        created_by: t.created_by.clone(),
        revoked_at: t.revoked_at.map(i64::from),
        revoked_by: t.revoked_by.clone(),
        last_used_at: t.last_used_at.map(i64::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_format() {
        let secret = new_secret();
        assert_eq!(secret.len(), SECRET_CHARS);
        let token = format!("rw_42_{secret}");
        assert_eq!(parse_token(&token), Some((42, secret.as_str())));
        // A secret may itself contain '_'.
        let underscored = format!("rw_7_{}", "_".repeat(43));
        assert_eq!(parse_token(&underscored).map(|t| t.0), Some(7));
        for bad in [
            "",
            "rw_",
            "rw_42",
            "rw_42_",
            "rw__abc",
            "xx_42_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "rw_4x_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "rw_42_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "rw_42_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=",
            "rw_99999999999999999999_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn hash_roundtrip() {
        let secret = new_secret();
        let hash = hash_secret(&secret).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains(&secret));
        assert!(verify_secret(&hash, &secret));
        assert!(!verify_secret(&hash, &new_secret()));
        assert!(!verify_secret("garbage", &secret));
    }

    #[test]
    fn actors() {
        assert_eq!(token_actor(3, TokenScope::Operator), "token:3/operator");
        assert_eq!(
            token_actor(4, TokenScope::Tenant(TenantId(9))),
            "token:4/tenant:9"
        );
    }
}
