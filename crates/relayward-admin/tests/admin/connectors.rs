//! Connectors: create, change, disable, delete, and the audit flags on every read.

use relayward_core::{ConnectorId, SenderClass, TraceEvent, TraceKind};
use relayward_store::Store;
use reqwest::Method;
use serde_json::json;

use crate::common::{Api, Resp};

const DAY: i64 = 86_400;

fn flags(v: &serde_json::Value) -> Vec<String> {
    v["audit"]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn audit_flags() {
    let api = Api::start().await;
    let a = api.a.id;
    let tok = api.a_admin.token.clone();
    let base = format!("/v1/tenants/{a}/connectors");

    // Narrow, with a certificate, just made: only "recently changed".
    let r = api
        .post(
            &base,
            &tok,
            json!({"name": "exchange", "kind": "on-premises", "ip_ranges": ["192.0.2.0/24", "2001:db8:1::/48"],
                   "cert_name": "Mail.A.example", "require_tls": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["cert_name"], "mail.a.example");
    assert_eq!(
        r.body["created_by"],
        format!("token:{}/tenant:{a}", api.a_admin.id)
    );
    // Its certificate name is under no verified domain of the tenant yet: said and flagged.
    assert_eq!(flags(&r.body), ["recently_changed", "cert_name_unverified"]);
    let warning = r.body["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("under no verified accepted domain"),
        "{}",
        r.text
    );
    let narrow = r.body["id"].as_i64().unwrap();

    // Wide ranges, no certificate.
    for (name, range) in [("wide4", "10.0.0.0/23"), ("wide6", "2001:db8::/47")] {
        let r = api
            .post(
                &base,
                &tok,
                json!({"name": name, "kind": "partner", "ip_ranges": [range]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(
            flags(&r.body),
            ["recently_changed", "wide_ip_range", "no_certificate"],
            "{name}"
        );
    }

    // Old and unused: not recent, unused for 30 days.
    let old = api.add_connector(a, "old", "198.51.100.0/24").await;
    sqlx::query("UPDATE connectors SET created_at = ?, updated_at = ? WHERE id = ?")
        .bind(relayward_core::now() - 40 * DAY)
        .bind(relayward_core::now() - 31 * DAY)
        .bind(old.id)
        .execute(api.store.pool())
        .await
        .unwrap();
    let r = api.get(&format!("{base}/{}", old.id), &tok).await;
    assert_eq!(
        flags(&r.body),
        ["no_certificate", "unused_30_days"],
        "{}",
        r.text
    );
    assert_eq!(r.body["audit"]["unused_30_days"], true);
    assert_eq!(r.body["audit"]["recently_changed"], false);

    // Unregistered mail through it in the last day (two recipients of one message, and an
    // older message that no longer counts).
    let now_ms = relayward_core::now().0 * 1000;
    let event = |at_ms: i64, queue_id: &str, class: SenderClass| {
        let mut e = TraceEvent::new(TraceKind::Received);
        e.at_ms = at_ms;
        e.queue_id = Some(queue_id.into());
        e.tenant_id = Some(a);
        e.connector_id = Some(old.id);
        e.sender_class = Some(class);
        e
    };
    api.store
        .record_trace(&[
            event(now_ms - 1000, "Q1", SenderClass::Unregistered),
            event(now_ms - 1000, "Q1", SenderClass::Unregistered),
            event(now_ms - 2000, "Q2", SenderClass::Unregistered),
            event(now_ms - 2000, "Q3", SenderClass::Registered),
            event(now_ms - 2 * DAY * 1000, "Q4", SenderClass::Unregistered),
        ])
        .await
        .unwrap();
    api.store
        .touch_connectors(&[(old.id, relayward_core::now())])
        .await
        .unwrap();
    let r = api.get(&base, &tok).await;
    let list = r.body.as_array().unwrap();
    assert_eq!(list.len(), 4);
    let o = list.iter().find(|c| c["id"] == old.id.0).unwrap();
    assert_eq!(flags(o), ["no_certificate", "unregistered_mail_24h"]);
    assert_eq!(o["audit"]["unregistered_messages_24h"], 2);
    let n = list.iter().find(|c| c["id"] == narrow).unwrap();
    assert_eq!(n["audit"]["unregistered_messages_24h"], 0);
    api.stop().await;
}

#[tokio::test]
async fn change_disable_delete() {
    let api = Api::start().await;
    let a = api.a.id;
    let tok = api.a_admin.token.clone();
    let op = api.op.token.clone();
    let base = format!("/v1/tenants/{a}/connectors");
    let r = api
        .post(
            &base,
            &tok,
            json!({"name": "app", "kind": "on-premises", "auth_user": "app-relay",
                   "auth_password": "correct horse battery", "cert_name": "app.a.example"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["has_password"], true);
    assert!(!r.text.contains("correct horse") && !r.text.contains("argon2"));
    let id = r.body["id"].as_i64().unwrap();
    let one = format!("{base}/{id}");
    let stored = api
        .store
        .get_connector(ConnectorId(id))
        .await
        .unwrap()
        .unwrap();
    assert!(stored.auth_password_hash.unwrap().starts_with("$argon2id$"));

    // Partial change: absent fields stay.
    let r = api
        .patch(
            &one,
            &tok,
            json!({"ip_ranges": ["192.0.2.0/25"], "require_tls": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ip_ranges"], json!(["192.0.2.0/25"]));
    assert_eq!(r.body["require_tls"], true);
    assert_eq!(r.body["auth_user"], "app-relay");
    assert_eq!(r.body["cert_name"], "app.a.example");
    let entry = api.store.list_audit(Some(a), 1).await.unwrap().remove(0);
    assert_eq!(entry.action, "connector.update");
    assert_eq!(entry.actor, format!("token:{}/tenant:{a}", api.a_admin.id));
    assert!(
        entry.detail.contains("require_tls false -> true"),
        "{}",
        entry.detail
    );

    // null clears; clearing the user clears the password.
    let r = api
        .patch(&one, &tok, json!({"cert_name": null, "auth_user": null}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["cert_name"].is_null());
    assert!(r.body["auth_user"].is_null());
    assert_eq!(r.body["has_password"], false);
    // A new user needs a password.
    api.patch(&one, &tok, json!({"auth_user": "u2"}))
        .await
        .assert_problem(422);
    let r = api
        .patch(
            &one,
            &tok,
            json!({"auth_user": "u2", "auth_password": "another long secret"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["has_password"], true);

    // The same values again: no change, no audit entry.
    let audit = api.audit_len().await;
    let r = api
        .patch(&one, &tok, json!({"require_tls": true, "blocked": false}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(api.audit_len().await, audit);

    // Only the operator blocks.
    api.patch(&one, &tok, json!({"blocked": true}))
        .await
        .assert_problem(403);
    let r = api.patch(&one, &op, json!({"blocked": true})).await;
    assert_eq!(r.body["blocked"], true, "{}", r.text);
    assert_eq!(
        r.body["updated_by"],
        format!("token:{}/operator", api.op.id)
    );

    // Disable and enable.
    let r = api
        .send(Method::POST, &format!("{one}/disable"), Some(&tok), None)
        .await;
    assert_eq!(r.body["enabled"], false, "{}", r.text);
    assert!(
        !api.store
            .get_connector(ConnectorId(id))
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
    let r = api
        .send(Method::POST, &format!("{one}/enable"), Some(&tok), None)
        .await;
    assert_eq!(r.body["enabled"], true, "{}", r.text);

    // Duplicate name: 409.
    api.add_connector(a, "other", "203.0.113.0/24").await;
    api.patch(&one, &tok, json!({"name": "other"}))
        .await
        .assert_problem(409);

    let r = api.delete(&one, &tok).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(api
        .store
        .get_connector(ConnectorId(id))
        .await
        .unwrap()
        .is_none());
    let entry = api.store.list_audit(Some(a), 1).await.unwrap().remove(0);
    assert_eq!(entry.action, "connector.delete");
    api.get(&one, &tok).await.assert_problem(404);
    api.stop().await;
}

#[tokio::test]
async fn certificate_names_of_another_tenant_are_refused_and_diagnose_is_scoped() {
    let api = Api::start().await;
    let (a, b) = (api.a.id, api.b.id);
    api.add_domain(a, "contoso.example", true).await;
    let r = post(&api, a.0, "hybrid", "*.contoso.example").await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.body.get("warnings").is_none(), "{}", r.text);
    assert!(!flags(&r.body).contains(&"cert_name_unverified".to_string()));
    for cert in [
        "mail.contoso.example",
        "*.contoso.example",
        "contoso.example",
    ] {
        let r = post(&api, b.0, "steal", cert).await;
        assert_eq!(r.status, 409, "{cert}: {}", r.text);
        assert_eq!(r.body["field"], "cert_name", "{}", r.text);
    }
    let r = post(&api, b.0, "bad", "m*.fabrikam.example").await;
    assert_eq!(r.status, 422, "{}", r.text);

    // diagnose: the owner sees the steps, another tenant's admin only the reply.
    let ask = json!({"ip": "192.0.2.1", "cert_name": "mail.contoso.example",
                     "from": "x@contoso.example", "to": ["r@dest.example"]});
    let r = api
        .post("/v1/diagnose", &api.a_admin.token, ask.clone())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["method"], "certificate", "{}", r.text);
    assert_eq!(r.body["at"], "DATA");
    assert!(r.body["reply"].as_str().unwrap().starts_with("250 2.0.0"));
    let r = api.post("/v1/diagnose", &api.b_admin.token, ask).await;
    assert_eq!(r.status, 200);
    assert!(r.body["tenant_id"].is_null() && r.body["explanation"].is_null());
    assert_eq!(r.body["steps"].as_array().unwrap().len(), 1);
    let r = api
        .post(
            "/v1/diagnose",
            &api.a_admin.token,
            json!({"ip": "not-an-ip", "from": "", "to": ["r@dest.example"]}),
        )
        .await;
    assert_eq!((r.status, r.body["field"].as_str()), (422, Some("ip")));
}

async fn post(api: &Api, tenant: i64, name: &str, cert: &str) -> Resp {
    let body = json!({"name": name, "kind": "on-premises", "cert_name": cert});
    let path = format!("/v1/tenants/{tenant}/connectors");
    let tok = if tenant == api.a.id.0 {
        &api.a_admin.token
    } else {
        &api.b_admin.token
    };
    api.post(&path, tok, body).await
}
