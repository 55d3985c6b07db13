//! Routes served through `RelayControl` (a fake relay here): who may call what, which tenant
//! the relay is asked about, and the actor it is told.

use relayward_store::Store;
use std::sync::Arc;

use relayward_core::TenantState;
use relayward_store::SqliteStore;
use reqwest::Method;
use serde_json::json;

use crate::common::{Api, Call};

#[tokio::test]
async fn status_unblock_and_block() {
    let api = Api::start().await;
    let (a, b) = (api.a.id, api.b.id);
    let a_tok = api.a_admin.token.clone();
    let op = api.op.token.clone();
    let a_actor = format!("token:{}/tenant:{a}", api.a_admin.id);
    let op_actor = format!("token:{}/operator", api.op.id);
    api.control.set_state(a, TenantState::BlockedUnregistered);

    let r = api.get(&format!("/v1/tenants/{a}/status"), &a_tok).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "blocked_unregistered");
    assert_eq!(r.body["tenant_id"], a.0);
    assert_eq!(r.body["checklist"][0], "remove the open relay");

    // The tenant admin may not unblock itself: 403, the relay is not asked.
    let before = api.control.calls().len();
    api.send(
        Method::POST,
        &format!("/v1/tenants/{a}/unblock"),
        Some(&a_tok),
        None,
    )
    .await
    .assert_problem(403);
    assert_eq!(api.control.calls().len(), before);

    // It asks; the relay hears it with the token as actor. The body is optional.
    let r = api
        .send(
            Method::POST,
            &format!("/v1/tenants/{a}/request-unblock"),
            Some(&a_tok),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "under_review");
    assert_eq!(
        api.control.calls().last().unwrap(),
        &Call {
            op: "request_unblock".into(),
            target: a.to_string(),
            actor: a_actor.clone()
        }
    );
    // Asking twice is not possible in under_review: 409 from the relay.
    let r = api
        .post(
            &format!("/v1/tenants/{a}/request-unblock"),
            &a_tok,
            json!({"comment": "again"}),
        )
        .await;
    r.assert_problem(409);
    assert!(r.body["detail"].as_str().unwrap().contains("under_review"));

    // The operator unblocks, then blocks again.
    let r = api
        .post(
            &format!("/v1/tenants/{a}/unblock"),
            &op,
            json!({"reason": "fixed"}),
        )
        .await;
    assert_eq!(r.body["state"], "probation", "{}", r.text);
    assert_eq!(api.control.calls().last().unwrap().actor, op_actor);
    let r = api
        .post(
            &format!("/v1/tenants/{a}/block"),
            &op,
            json!({"scope": "unregistered", "reason": "again"}),
        )
        .await;
    assert_eq!(r.body["state"], "blocked_unregistered", "{}", r.text);
    api.post(
        &format!("/v1/tenants/{a}/block"),
        &a_tok,
        json!({"scope": "all", "reason": "x"}),
    )
    .await
    .assert_problem(403);

    // Another tenant's status: 404, and the relay is never asked about it.
    let before = api.control.calls().len();
    for path in ["status", "sender-restrictions"] {
        api.get(&format!("/v1/tenants/{b}/{path}"), &a_tok)
            .await
            .assert_problem(404);
    }
    for path in ["request-unblock", "unblock"] {
        api.send(
            Method::POST,
            &format!("/v1/tenants/{b}/{path}"),
            Some(&a_tok),
            None,
        )
        .await
        .assert_problem(404);
    }
    assert_eq!(api.control.calls().len(), before);
    assert!(api
        .control
        .calls()
        .iter()
        .all(|c| c.target != b.to_string()));
    api.stop().await;
}

#[tokio::test]
async fn queue_is_scoped_and_audited() {
    let api = Api::start().await;
    let (a, b) = (api.a.id, api.b.id);
    let a_tok = api.a_admin.token.clone();
    let b_tok = api.b_admin.token.clone();
    api.control.add_message("AAA1", Some(a));
    api.control.add_message("AAA2", Some(a));
    api.control.add_message("BBB1", Some(b));
    api.control.add_message("NONE1", None);

    let ids = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["queue_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&api.get("/v1/queue", &a_tok).await.body),
        ["AAA1", "AAA2"]
    );
    assert_eq!(ids(&api.get("/v1/queue", &b_tok).await.body), ["BBB1"]);
    assert_eq!(
        ids(&api.get("/v1/queue", &api.op.token).await.body).len(),
        4
    );
    assert_eq!(
        ids(&api
            .get(&format!("/v1/queue?tenant_id={b}"), &api.op.token)
            .await
            .body),
        ["BBB1"]
    );

    // b cannot see or touch a's messages, nor unattributed ones.
    for id in ["AAA1", "NONE1"] {
        api.get(&format!("/v1/queue/{id}"), &b_tok)
            .await
            .assert_problem(404);
        for op in ["hold", "release", "retry"] {
            api.send(
                Method::POST,
                &format!("/v1/queue/{id}/{op}"),
                Some(&b_tok),
                None,
            )
            .await
            .assert_problem(404);
        }
        api.delete(&format!("/v1/queue/{id}"), &b_tok)
            .await
            .assert_problem(404);
    }
    assert!(api
        .control
        .calls()
        .iter()
        .all(|c| !c.op.starts_with("queue_h")));
    assert!(api.control.has_message("AAA1"));

    // a holds its own message: the relay is asked, the audit log says who.
    let r = api
        .send(Method::POST, "/v1/queue/AAA1/hold", Some(&a_tok), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["operation"], "hold");
    assert_eq!(r.body["message"]["held"], true);
    let entry = api.store.list_audit(None, 1).await.unwrap().remove(0);
    assert_eq!(entry.action, "queue.hold");
    assert_eq!(entry.actor, format!("token:{}/tenant:{a}", api.a_admin.id));
    assert_eq!(entry.tenant_id, Some(a));
    assert_eq!(entry.object, "message AAA1");

    // Delete with a DSN.
    let r = api.delete("/v1/queue/AAA2?dsn=true", &a_tok).await;
    assert_eq!(r.body["operation"], "bounce", "{}", r.text);
    assert_eq!(r.body["dsn_queue_id"], "DSN0001");
    assert!(!api.control.has_message("AAA2"));
    assert_eq!(
        api.store.list_audit(None, 1).await.unwrap()[0].action,
        "queue.bounce"
    );
    // The operator reaches any message.
    let r = api
        .send(
            Method::POST,
            "/v1/queue/NONE1/retry",
            Some(&api.op.token),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    api.stop().await;
}

#[tokio::test]
async fn sender_restrictions() {
    let api = Api::start().await;
    let (a, b) = (api.a.id, api.b.id);
    let a_tok = api.a_admin.token.clone();
    api.control.restrict(a, "bulk@a.example");
    api.control.restrict(b, "bulk@b.example");

    let r = api
        .get(&format!("/v1/tenants/{a}/sender-restrictions"), &a_tok)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(r.body[0]["sender"], "bulk@a.example");

    // Another tenant's sender, through the own tenant path: not there.
    api.delete(
        &format!("/v1/tenants/{a}/sender-restrictions/bulk@b.example"),
        &a_tok,
    )
    .await
    .assert_problem(404);
    assert_eq!(api.control.sender_restrictions_len(b), 1);
    api.delete(
        &format!("/v1/tenants/{a}/sender-restrictions/nonsense"),
        &a_tok,
    )
    .await
    .assert_problem(422);

    // The domain part is matched case-insensitively.
    let r = api
        .delete(
            &format!("/v1/tenants/{a}/sender-restrictions/bulk@A.EXAMPLE"),
            &a_tok,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(api.control.sender_restrictions_len(a), 0);
    let entry = api.store.list_audit(None, 1).await.unwrap().remove(0);
    assert_eq!(entry.action, "sender.unrestrict");
    assert_eq!(entry.object, "sender bulk@a.example");
    assert_eq!(entry.actor, format!("token:{}/tenant:{a}", api.a_admin.id));
    api.stop().await;
}

/// Without a relay behind it, relay routes answer 503 and the rest works.
#[tokio::test]
async fn without_a_relay_the_relay_routes_are_503() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let store = Arc::new(SqliteStore::open(path.to_str().unwrap()).await.unwrap());
    let t = store.create_tenant("t", &[], "test").await.unwrap();
    let tok = crate::common::token(&*store, relayward_admin::TokenScope::Operator, "op").await;
    let router = relayward_admin::router(
        store,
        Arc::new(relayward_admin::control::Unavailable),
        Default::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(relayward_admin::serve(listener, router, rx));
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{base}/v1/tenants/{}/status", t.id))
        .bearer_auth(&tok.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let r = http
        .get(format!("{base}/v1/tenants/{}", t.id))
        .bearer_auth(&tok.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Shutdown: the server returns.
    stop.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
