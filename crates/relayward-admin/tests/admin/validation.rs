//! Bad input answers 400/413/415/422 with the field named, and changes nothing.

use relayward_store::Store;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::Api;

/// Everything a request could have changed.
async fn snapshot(api: &Api) -> Value {
    let s = &api.store;
    json!({
        "tenants": serde_json::to_value(s.list_tenants().await.unwrap()).unwrap(),
        "domains": serde_json::to_value(s.list_domains(None).await.unwrap()).unwrap(),
        "connectors": serde_json::to_value(s.list_connectors(None).await.unwrap()).unwrap(),
        "tokens": s.list_tokens(None).await.unwrap().len(),
        "audit": api.audit_len().await,
        "version": s.directory_version().await.unwrap(),
    })
}

#[tokio::test]
async fn bad_input_names_the_field_and_changes_nothing() {
    let api = Api::start().await;
    let a = api.a.id;
    let conn = api.add_connector(a, "main", "192.0.2.0/24").await;
    let op = api.op.token.clone();
    let tok = api.a_admin.token.clone();
    let domains = format!("/v1/tenants/{a}/domains");
    let connectors = format!("/v1/tenants/{a}/connectors");
    let one_conn = format!("{connectors}/{}", conn.id);
    let before = snapshot(&api).await;

    // (method, path, token, body, status, field)
    let cases: Vec<(Method, String, &str, Value, u16, &str)> = vec![
        (
            Method::POST,
            domains.clone(),
            &tok,
            json!({"domain": "exa mple.com"}),
            422,
            "domain",
        ),
        (
            Method::POST,
            domains.clone(),
            &tok,
            json!({"domain": "example.com."}),
            422,
            "domain",
        ),
        (
            Method::POST,
            domains.clone(),
            &tok,
            json!({"domain": "localhost"}),
            422,
            "domain",
        ),
        (
            Method::POST,
            domains.clone(),
            &tok,
            json!({"domain": "a_b.example"}),
            422,
            "domain",
        ),
        (
            Method::POST,
            domains.clone(),
            &tok,
            json!({"domain": "-x.example"}),
            422,
            "domain",
        ),
        (
            Method::POST,
            domains.clone(),
            &tok,
            json!({"domain": ""}),
            422,
            "domain",
        ),
        (
            Method::POST,
            domains.clone(),
            &tok,
            json!({"domain": "ok.example", "kind": "weird"}),
            422,
            "kind",
        ),
        (
            Method::POST,
            domains.clone(),
            &tok,
            json!({"domain": "ok.example", "match_subdomains": "yes"}),
            422,
            "match_subdomains",
        ),
        (
            Method::POST,
            domains.clone(),
            &tok,
            json!({"domain": "ok.example", "colour": "red"}),
            422,
            "colour",
        ),
        (
            Method::POST,
            domains.clone(),
            &tok,
            json!({"kind": "authoritative"}),
            422,
            "domain",
        ),
        (
            Method::POST,
            domains.clone(),
            &tok,
            json!(["ok.example"]),
            422,
            "body",
        ),
        (
            Method::POST,
            connectors.clone(),
            &tok,
            json!({"name": "c", "kind": "on-premises", "ip_ranges": ["192.0.2.0/24", "198.51.100.1/24"]}),
            422,
            "ip_ranges[1]",
        ),
        (
            Method::POST,
            connectors.clone(),
            &tok,
            json!({"name": "c", "kind": "on-premises", "ip_ranges": ["2001:db8::1/32"]}),
            422,
            "ip_ranges[0]",
        ),
        (
            Method::POST,
            connectors.clone(),
            &tok,
            json!({"name": "c", "kind": "on-premises", "ip_ranges": ["not-an-ip"]}),
            422,
            "ip_ranges[0]",
        ),
        (
            Method::POST,
            connectors.clone(),
            &tok,
            json!({"name": "c", "kind": "cloud", "ip_ranges": ["192.0.2.0/24"]}),
            422,
            "kind",
        ),
        (
            Method::POST,
            connectors.clone(),
            &tok,
            json!({"name": "", "kind": "partner", "ip_ranges": ["192.0.2.0/24"]}),
            422,
            "name",
        ),
        (
            Method::POST,
            connectors.clone(),
            &tok,
            json!({"name": "c", "kind": "partner"}),
            422,
            "ip_ranges",
        ),
        (
            Method::POST,
            connectors.clone(),
            &tok,
            json!({"name": "c", "kind": "partner", "cert_name": "not a name"}),
            422,
            "cert_name",
        ),
        (
            Method::POST,
            connectors.clone(),
            &tok,
            json!({"name": "c", "kind": "partner", "auth_user": "u1"}),
            422,
            "auth_password",
        ),
        (
            Method::POST,
            connectors.clone(),
            &tok,
            json!({"name": "c", "kind": "partner", "auth_user": "u1", "auth_password": "short"}),
            422,
            "auth_password",
        ),
        (
            Method::POST,
            connectors.clone(),
            &tok,
            json!({"name": "c", "kind": "partner", "ip_ranges": ["192.0.2.0/24"], "restrict_domains_to_cert": true}),
            422,
            "restrict_domains_to_cert",
        ),
        (
            Method::PATCH,
            one_conn.clone(),
            &tok,
            json!({"ip_ranges": ["192.0.2.5/24"]}),
            422,
            "ip_ranges[0]",
        ),
        (
            Method::PATCH,
            one_conn.clone(),
            &tok,
            json!({"ip_ranges": []}),
            422,
            "ip_ranges",
        ),
        (
            Method::PATCH,
            one_conn.clone(),
            &tok,
            json!({"enabled": "no"}),
            422,
            "enabled",
        ),
        (
            Method::PATCH,
            one_conn.clone(),
            &tok,
            json!({"cert_name": "bad_name.example"}),
            422,
            "cert_name",
        ),
        (
            Method::POST,
            "/v1/tenants".into(),
            &op,
            json!({"name": "bad name"}),
            422,
            "name",
        ),
        (
            Method::POST,
            "/v1/tenants".into(),
            &op,
            json!({"name": "12345"}),
            422,
            "name",
        ),
        (
            Method::POST,
            "/v1/tenants".into(),
            &op,
            json!({"name": "ok", "admin_emails": ["a@example.com", "not an address"]}),
            422,
            "admin_emails[1]",
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            &op,
            json!({"scope": "tenant", "label": "x"}),
            422,
            "tenant_id",
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            &op,
            json!({"scope": "root", "label": "x"}),
            422,
            "scope",
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            &op,
            json!({"scope": "operator", "label": " "}),
            422,
            "label",
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/block"),
            &op,
            json!({"scope": "some", "reason": "x"}),
            422,
            "scope",
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/block"),
            &op,
            json!({"scope": "all", "reason": ""}),
            422,
            "reason",
        ),
    ];
    for (method, path, token, body, status, field) in cases {
        let r = api
            .send(method.clone(), &path, Some(token), Some(&body))
            .await;
        let got = r.assert_problem(status);
        assert_eq!(
            got.as_deref(),
            Some(field),
            "{method} {path} {body}: {}",
            r.text
        );
    }

    // Bodies that are not JSON at all.
    let url = format!("{}{domains}", api.base);
    let r = api
        .http
        .post(&url)
        .bearer_auth(&tok)
        .header("content-type", "application/json")
        .body("{\"domain\": ")
        .send()
        .await
        .unwrap();
    let r = to_resp(r).await;
    assert_eq!(r.assert_problem(400).as_deref(), Some("body"));
    let r = api
        .http
        .post(&url)
        .bearer_auth(&tok)
        .header("content-type", "text/plain")
        .body("{\"domain\": \"ok.example\"}")
        .send()
        .await
        .unwrap();
    to_resp(r).await.assert_problem(415);

    // Oversized: 64 KiB is the limit.
    let big = json!({"domain": "ok.example", "kind": "x".repeat(70 * 1024)});
    let r = api
        .send(Method::POST, &domains, Some(&tok), Some(&big))
        .await;
    assert_eq!(r.assert_problem(413).as_deref(), Some("body"));
    let big = json!({"name": "ok", "admin_emails": vec!["a@example.com"; 5000]});
    let r = api
        .send(Method::POST, "/v1/tenants", Some(&op), Some(&big))
        .await;
    assert_eq!(r.assert_problem(413).as_deref(), Some("body"));

    // Path and query parameters.
    let r = api.get("/v1/tenants/abc", &op).await;
    assert_eq!(r.assert_problem(400).as_deref(), Some("tenant_id"));
    let r = api.get(&format!("{connectors}/x1"), &op).await;
    assert_eq!(r.assert_problem(400).as_deref(), Some("connector_id"));
    let r = api.get(&format!("{domains}/bad_domain.example"), &op).await;
    assert_eq!(r.assert_problem(422).as_deref(), Some("domain"));
    let r = api.get("/v1/queue/bad%20id", &op).await;
    assert_eq!(r.assert_problem(400).as_deref(), Some("queue_id"));
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=5000", "limit"),
        ("tenant=1", "tenant"),
        ("tenant_id=x", "tenant_id"),
    ] {
        let r = api.get(&format!("/v1/audit?{query}"), &op).await;
        assert_eq!(r.assert_problem(400).as_deref(), Some(field), "{query}");
    }
    for (query, field) in [
        ("sender=nobody", "sender"),
        ("since_ms=10&until_ms=5", "until_ms"),
        ("cursor=zzz", "cursor"),
        ("since_ms=yesterday", "since_ms"),
    ] {
        let r = api.get(&format!("/v1/trace?{query}"), &op).await;
        assert_eq!(r.assert_problem(400).as_deref(), Some(field), "{query}");
    }

    assert_eq!(snapshot(&api).await, before);
    api.stop().await;
}

async fn to_resp(r: reqwest::Response) -> crate::common::Resp {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    crate::common::Resp {
        status,
        headers,
        text,
        body,
    }
}
