//! Tokens: shown once, hashed, revocable (also from another process), last use recorded, and
//! every change audited with the token as actor.

use std::sync::Arc;

use relayward_admin::TokenScope;
use relayward_store::{SqliteStore, Store};
use reqwest::Method;
use serde_json::json;

use crate::common::Api;

fn is_token(s: &str) -> bool {
    relayward_admin::parse_token(s).is_some()
}

#[tokio::test]
async fn create_use_list_revoke() {
    let api = Api::start().await;
    let a = api.a.id;

    // The operator makes a tenant token; the answer is the only place the secret appears.
    let r = api
        .post(
            "/v1/tokens",
            &api.op.token,
            json!({"scope": "tenant", "tenant_id": a, "label": "deploy bot"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let secret = r.body["token"].as_str().unwrap().to_string();
    assert!(is_token(&secret), "{secret}");
    let id = r.body["id"].as_i64().unwrap();
    assert!(secret.starts_with(&format!("rw_{id}_")));
    assert_eq!(secret.len(), format!("rw_{id}_").len() + 43);
    assert_eq!(r.body["scope"], "tenant");
    assert_eq!(r.body["tenant_id"], a.0);
    assert_eq!(r.body["label"], "deploy bot");
    assert_eq!(
        r.body["created_by"],
        format!("token:{}/operator", api.op.id)
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let entry = api.store.list_audit(None, 1).await.unwrap().remove(0);
    assert_eq!(entry.action, "token.create");
    assert_eq!(entry.actor, format!("token:{}/operator", api.op.id));
    assert_eq!(entry.tenant_id, Some(a));

    let stored = api.store.get_token(id).await.unwrap().unwrap();
    assert!(stored.secret_hash.starts_with("$argon2id$"));
    let secret_part = &secret[format!("rw_{id}_").len()..];
    assert!(!stored.secret_hash.contains(secret_part));

    let r = api.get("/v1/tokens", &api.op.token).await;
    assert_eq!(r.status, 200);
    assert!(!r.text.contains(secret_part));
    assert!(!r.text.contains("argon2"));
    assert!(r
        .body
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("token").is_none()));
    let r = api.get(&format!("/v1/tokens/{id}"), &api.op.token).await;
    assert_eq!(r.body["token_prefix"], format!("rw_{id}_"));
    assert!(r.body.get("token").is_none());

    // It works, scoped to its tenant.
    let r = api.get("/v1/me", &secret).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["scope"], "tenant");
    assert_eq!(r.body["tenant_id"], a.0);
    assert_eq!(r.body["actor"], format!("token:{id}/tenant:{a}"));
    api.get("/v1/tenants", &secret).await.assert_problem(403);

    // A tenant admin's token for its own tenant needs no tenant_id.
    let r = api
        .post(
            "/v1/tokens",
            &secret,
            json!({"scope": "tenant", "label": "second"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["tenant_id"], a.0);
    assert_eq!(r.body["created_by"], format!("token:{id}/tenant:{a}"));
    let second = r.body["token"].as_str().unwrap().to_string();

    // A tenant admin lists its tenant's tokens only.
    let r = api.get("/v1/tokens", &secret).await;
    let ids: Vec<i64> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{}", r.text);
    assert!(ids.contains(&api.a_admin.id) && ids.contains(&id));
    assert!(!ids.contains(&api.op.id) && !ids.contains(&api.b_admin.id));

    // Revoke through the API: refused at once, cached or not.
    assert_eq!(api.get("/v1/me", &second).await.status, 200);
    let second_id = relayward_admin::parse_token(&second).unwrap().0;
    let r = api
        .delete(&format!("/v1/tokens/{second_id}"), &secret)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = api.get("/v1/me", &second).await;
    r.assert_problem(401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    let entry = api.store.list_audit(None, 1).await.unwrap().remove(0);
    assert_eq!(entry.action, "token.revoke");
    assert_eq!(entry.actor, format!("token:{id}/tenant:{a}"));
    let r = api
        .get(&format!("/v1/tokens/{second_id}"), &api.op.token)
        .await;
    assert!(r.body["revoked_at"].is_i64());
    assert_eq!(r.body["revoked_by"], format!("token:{id}/tenant:{a}"));
    // Revoking again is harmless.
    assert_eq!(
        api.delete(&format!("/v1/tokens/{second_id}"), &api.op.token)
            .await
            .status,
        204
    );
    api.stop().await;
}

#[tokio::test]
async fn revocation_by_another_process_takes_effect_at_once() {
    let api = Api::start().await;
    // Verified once: now in the server's cache.
    assert_eq!(api.get("/v1/me", &api.a_admin.token).await.status, 200);
    assert_eq!(api.get("/v1/me", &api.a_admin.token).await.status, 200);
    // "The CLI": another store on the same database file.
    let other: Arc<dyn Store> = Arc::new(SqliteStore::open(&api.db_path).await.unwrap());
    relayward_admin::revoke_token(&*other, api.a_admin.id, "cli:root")
        .await
        .unwrap();
    api.get("/v1/me", &api.a_admin.token)
        .await
        .assert_problem(401);
    // The CLI side can list (no secrets) and create.
    let listed = relayward_admin::list_tokens(&*other, Some(api.a.id))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked_at.is_some());
    assert_eq!(listed[0].revoked_by.as_deref(), Some("cli:root"));
    let (_, fresh) =
        relayward_admin::create_token(&*other, TokenScope::Tenant(api.a.id), "new", "cli:root")
            .await
            .unwrap();
    assert_eq!(api.get("/v1/me", &fresh).await.status, 200);
    api.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_401_with_a_bearer_challenge() {
    let api = Api::start().await;
    let good = api.op.token.clone();
    let (id, secret) = relayward_admin::parse_token(&good).unwrap();
    let mut flipped = secret.to_string().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let wrong_secret = format!("rw_{id}_{}", String::from_utf8(flipped).unwrap());
    let unknown_id = format!("rw_999_{secret}");
    // Another token's secret with this id.
    let (_, b_secret) = relayward_admin::parse_token(&api.b_admin.token).unwrap();
    let swapped = format!("rw_{id}_{b_secret}");

    for bad in [
        "garbage",
        "rw_1_short",
        wrong_secret.as_str(),
        unknown_id.as_str(),
        swapped.as_str(),
    ] {
        let r = api.get("/v1/me", bad).await;
        r.assert_problem(401);
        let challenge = r.header("www-authenticate").unwrap();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        assert!(challenge.contains("invalid_token"), "{bad}: {challenge}");
    }
    // Not bearer at all, or nothing.
    let r = api
        .http
        .get(format!("{}/v1/me", api.base))
        .basic_auth("admin", Some("password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let r = api.send(Method::GET, "/v1/me", None, None).await;
    r.assert_problem(401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"relayward\"")
    );
    // The good token still works after all that (a failed attempt does not evict it).
    assert_eq!(api.get("/v1/me", &good).await.status, 200);
    api.stop().await;
}

#[tokio::test]
async fn last_use_is_recorded_at_most_once_a_minute() {
    let api = Api::start().await;
    let id = api.a_admin.id;
    assert!(api
        .store
        .get_token(id)
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .is_none());
    api.get("/v1/me", &api.a_admin.token).await;
    let first = api
        .store
        .get_token(id)
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .unwrap();
    assert!((relayward_core::now() - first).abs() <= 2);

    let set = |at: i64| {
        let pool = api.store.pool().clone();
        async move {
            sqlx_update(&pool, id, at).await;
        }
    };
    let now = relayward_core::now();
    set((now - 30).0).await;
    api.get("/v1/me", &api.a_admin.token).await;
    assert_eq!(
        api.store.get_token(id).await.unwrap().unwrap().last_used_at,
        Some(now - 30)
    );
    set((now - 120).0).await;
    api.get("/v1/me", &api.a_admin.token).await;
    let last = api
        .store
        .get_token(id)
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .unwrap();
    assert!(last >= now, "{last} < {now}");
    // Not an audited change.
    assert!(api
        .store
        .list_audit(None, 100)
        .await
        .unwrap()
        .iter()
        .all(|e| e.action != "token.touch"));
    api.stop().await;
}

async fn sqlx_update(pool: &sqlx::SqlitePool, id: i64, at: i64) {
    sqlx::query("UPDATE api_tokens SET last_used_at = ? WHERE id = ?")
        .bind(at)
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}
