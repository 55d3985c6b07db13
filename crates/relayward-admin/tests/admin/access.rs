//! Every route for the operator, the owning tenant admin, another tenant's admin and no token.

use relayward_store::Store;
use std::collections::{BTreeSet, HashMap};

use relayward_core::{ConnectorId, TenantState, Timestamp};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{token, Api};
use relayward_admin::TokenScope;

/// Callers, in the order of `Case::expect`.
const ROLES: [&str; 4] = ["operator", "owner", "foreign", "none"];

struct Case {
    method: Method,
    /// A route of `relayward_admin::routes()`.
    route: &'static str,
    query: &'static str,
    body: Option<Value>,
    /// Path parameters that name another fixture object than the default one.
    objects: &'static [(&'static str, &'static str)],
    /// Status for the operator, tenant a's admin, tenant b's admin, no token.
    expect: [u16; 4],
}

fn case(method: Method, route: &'static str, expect: [u16; 4]) -> Case {
    Case {
        method,
        route,
        query: "",
        body: None,
        objects: &[],
        expect,
    }
}

impl Case {
    fn query(mut self, q: &'static str) -> Self {
        self.query = q;
        self
    }
    fn body(mut self, b: Value) -> Self {
        self.body = Some(b);
        self
    }
    fn objects(mut self, o: &'static [(&'static str, &'static str)]) -> Self {
        self.objects = o;
        self
    }
}

/// Tenant a's objects, made afresh for each caller.
struct Fixture {
    api: Api,
    values: HashMap<&'static str, String>,
}

async fn fixture() -> Fixture {
    let api = Api::start().await;
    let a = api.a.id;
    api.add_domain(a, "a-main.example", false).await;
    api.add_domain(a, "a-remove.example", false).await;
    let conn = api.add_connector(a, "main", "192.0.2.0/24").await;
    let conn_del = api.add_connector(a, "to-delete", "198.51.100.0/24").await;
    // Tenant b has objects too, so that foreign ids are not just absent ones.
    api.add_domain(api.b.id, "b-main.example", false).await;
    api.add_connector(api.b.id, "b-main", "203.0.113.0/24")
        .await;
    let tok = token(&*api.store, TokenScope::Tenant(a), "spare").await;
    let tok_del = token(&*api.store, TokenScope::Tenant(a), "to revoke").await;
    api.control.add_message("A0001", Some(a));
    api.control.add_message("A0002", Some(a));
    api.control.add_message("B0001", Some(api.b.id));
    api.control.restrict(a, "spammer@a-main.example");
    api.control.set_state(a, TenantState::BlockedUnregistered);
    api.store
        .allow_header_from(
            &relayward_core::HeaderFromAllowed {
                tenant_id: a,
                domain: "partner.example".into(),
                connector_id: None,
                declared_at: Timestamp(0),
                declared_by: "test".into(),
            },
            "test",
        )
        .await
        .unwrap();

    for (tenant, address) in [(Some(a), "gone@dest.example"), (None, "trap@dest.example")] {
        api.store
            .add_suppression(
                &relayward_core::Suppression {
                    tenant_id: tenant,
                    address: address.into(),
                    source: relayward_core::SuppressionSource::Manual,
                    reason: "test".into(),
                    created_at: relayward_core::now(),
                    created_by: "test".into(),
                    expires_at: None,
                },
                "test",
            )
            .await
            .unwrap();
    }

    let mut values = HashMap::new();
    values.insert("tenant_id", a.to_string());
    values.insert("domain", "a-main.example".to_string());
    values.insert("domain_del", "a-remove.example".to_string());
    values.insert("connector_id", conn.id.to_string());
    values.insert("connector_del", conn_del.id.to_string());
    values.insert("token_id", tok.id.to_string());
    values.insert("token_del", tok_del.id.to_string());
    values.insert("queue_id", "A0001".to_string());
    values.insert("queue_del", "A0002".to_string());
    values.insert("sender", "spammer@a-main.example".to_string());
    values.insert("header_from", "partner.example".to_string());
    values.insert("suppressed", "gone@dest.example".to_string());
    values.insert("suppressed_global", "trap@dest.example".to_string());
    Fixture { api, values }
}

fn cases() -> Vec<Case> {
    use Method as M;
    let tenant = json!({"name": "created-by-api", "admin_emails": ["x@example.com"]});
    vec![
        case(M::GET, "/openapi.json", [200, 200, 200, 200]),
        case(M::GET, "/v1/me", [200, 200, 200, 401]),
        case(M::POST, "/v1/diagnose", [200, 200, 200, 401]).body(json!({
            "ip": "192.0.2.1", "from": "x@a.example", "to": ["r@dest.example"]
        })),
        case(M::GET, "/v1/tenants", [200, 403, 403, 401]),
        case(M::POST, "/v1/tenants", [201, 403, 403, 401]).body(tenant),
        case(M::GET, "/v1/tenants/{tenant_id}", [200, 200, 404, 401]),
        case(
            M::GET,
            "/v1/tenants/{tenant_id}/domains",
            [200, 200, 404, 401],
        ),
        case(
            M::POST,
            "/v1/tenants/{tenant_id}/domains",
            [201, 201, 404, 401],
        )
        .body(json!({"domain": "added.example"})),
        case(
            M::GET,
            "/v1/tenants/{tenant_id}/domains/{domain}",
            [200, 200, 404, 401],
        ),
        case(
            M::POST,
            "/v1/tenants/{tenant_id}/domains/{domain}/verify",
            [200, 200, 404, 401],
        ),
        case(
            M::DELETE,
            "/v1/tenants/{tenant_id}/domains/{domain}",
            [204, 204, 404, 401],
        )
        .objects(&[("domain", "domain_del")]),
        case(
            M::GET,
            "/v1/tenants/{tenant_id}/header-from-domains",
            [200, 200, 404, 401],
        ),
        case(
            M::POST,
            "/v1/tenants/{tenant_id}/header-from-domains",
            [201, 201, 404, 401],
        )
        .body(json!({"domain": "another-partner.example"})),
        case(
            M::DELETE,
            "/v1/tenants/{tenant_id}/header-from-domains/{domain}",
            [204, 204, 404, 401],
        )
        .objects(&[("domain", "header_from")]),
        case(
            M::GET,
            "/v1/tenants/{tenant_id}/connectors",
            [200, 200, 404, 401],
        ),
        case(
            M::POST,
            "/v1/tenants/{tenant_id}/connectors",
            [201, 201, 404, 401],
        )
        .body(json!({
            "name": "new", "kind": "on-premises", "ip_ranges": ["192.0.2.128/25"]
        })),
        case(
            M::GET,
            "/v1/tenants/{tenant_id}/connectors/{connector_id}",
            [200, 200, 404, 401],
        ),
        case(
            M::PATCH,
            "/v1/tenants/{tenant_id}/connectors/{connector_id}",
            [200, 200, 404, 401],
        )
        .body(json!({"require_tls": true})),
        case(
            M::POST,
            "/v1/tenants/{tenant_id}/connectors/{connector_id}/disable",
            [200, 200, 404, 401],
        ),
        case(
            M::POST,
            "/v1/tenants/{tenant_id}/connectors/{connector_id}/enable",
            [200, 200, 404, 401],
        ),
        case(
            M::DELETE,
            "/v1/tenants/{tenant_id}/connectors/{connector_id}",
            [204, 204, 404, 401],
        )
        .objects(&[("connector_id", "connector_del")]),
        case(
            M::GET,
            "/v1/tenants/{tenant_id}/status",
            [200, 200, 404, 401],
        ),
        // Fixture state blocked_unregistered: request-unblock then (operator) unblock.
        case(
            M::POST,
            "/v1/tenants/{tenant_id}/request-unblock",
            [200, 200, 404, 401],
        )
        .body(json!({"comment": "open relay closed"})),
        case(
            M::POST,
            "/v1/tenants/{tenant_id}/unblock",
            [200, 403, 404, 401],
        ),
        case(
            M::POST,
            "/v1/tenants/{tenant_id}/block",
            [200, 403, 404, 401],
        )
        .body(json!({"scope": "all", "reason": "spam run"})),
        case(
            M::GET,
            "/v1/tenants/{tenant_id}/traffic",
            [200, 200, 404, 401],
        ),
        case(
            M::GET,
            "/v1/tenants/{tenant_id}/sender-limits",
            [200, 200, 404, 401],
        ),
        case(
            M::PUT,
            "/v1/tenants/{tenant_id}/sender-limits",
            [200, 403, 404, 401],
        )
        .body(json!({"messages_per_minute": 10})),
        case(
            M::GET,
            "/v1/tenants/{tenant_id}/sender-restrictions",
            [200, 200, 404, 401],
        ),
        case(
            M::DELETE,
            "/v1/tenants/{tenant_id}/sender-restrictions/{sender}",
            [204, 204, 404, 401],
        ),
        case(
            M::GET,
            "/v1/tenants/{tenant_id}/suppressions",
            [200, 200, 404, 401],
        ),
        case(
            M::POST,
            "/v1/tenants/{tenant_id}/suppressions",
            [201, 201, 404, 401],
        )
        .body(json!({"address": "new@dest.example", "days": 30})),
        case(
            M::DELETE,
            "/v1/tenants/{tenant_id}/suppressions/{address}",
            [204, 204, 404, 401],
        )
        .objects(&[("address", "suppressed")]),
        case(M::GET, "/v1/suppressions", [200, 403, 403, 401]),
        case(M::POST, "/v1/suppressions", [201, 403, 403, 401])
            .body(json!({"address": "another-trap@dest.example"})),
        case(
            M::DELETE,
            "/v1/suppressions/{address}",
            [204, 403, 403, 401],
        )
        .objects(&[("address", "suppressed_global")]),
        case(M::GET, "/v1/audit", [200, 200, 200, 401]),
        case(M::GET, "/v1/audit", [200, 200, 404, 401]).query("tenant_id={tenant_id}"),
        case(M::GET, "/v1/trace", [200, 200, 200, 401]),
        case(M::GET, "/v1/trace", [200, 200, 404, 401]).query("tenant_id={tenant_id}"),
        case(M::GET, "/v1/traffic", [200, 403, 403, 401]),
        case(M::GET, "/v1/nodes", [200, 403, 403, 401]),
        case(M::GET, "/v1/tokens", [200, 200, 200, 401]),
        case(M::GET, "/v1/tokens", [200, 200, 404, 401]).query("tenant_id={tenant_id}"),
        case(M::POST, "/v1/tokens", [201, 201, 404, 401])
            .body(json!({"scope": "tenant", "tenant_id": "{tenant_id}", "label": "ci"})),
        case(M::POST, "/v1/tokens", [201, 403, 403, 401])
            .body(json!({"scope": "operator", "label": "ops"})),
        case(M::GET, "/v1/tokens/{token_id}", [200, 200, 404, 401]),
        case(M::DELETE, "/v1/tokens/{token_id}", [204, 204, 404, 401])
            .objects(&[("token_id", "token_del")]),
        case(M::GET, "/v1/queue", [200, 200, 200, 401]),
        case(M::GET, "/v1/queue", [200, 200, 404, 401]).query("tenant_id={tenant_id}"),
        case(M::GET, "/v1/queue/{queue_id}", [200, 200, 404, 401]),
        case(M::POST, "/v1/queue/{queue_id}/hold", [200, 200, 404, 401]),
        case(
            M::POST,
            "/v1/queue/{queue_id}/release",
            [200, 200, 404, 401],
        ),
        case(M::POST, "/v1/queue/{queue_id}/retry", [200, 200, 404, 401]),
        case(M::DELETE, "/v1/queue/{queue_id}", [200, 200, 404, 401])
            .objects(&[("queue_id", "queue_del")]),
    ]
}

fn fill(
    template: &str,
    values: &HashMap<&'static str, String>,
    objects: &[(&str, &str)],
) -> String {
    let mut out = template.to_string();
    for (param, key) in objects {
        out = out.replace(&format!("{{{param}}}"), &values[key]);
    }
    for (key, value) in values {
        out = out.replace(&format!("{{{key}}}"), value);
    }
    out
}

fn fill_body(body: &Value, values: &HashMap<&'static str, String>) -> Value {
    match body {
        Value::String(s) if s.starts_with('{') && s.ends_with('}') => {
            let v = fill(s, values, &[]);
            v.parse::<i64>()
                .map(Value::from)
                .unwrap_or(Value::String(v))
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), fill_body(v, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[tokio::test]
async fn every_route_for_every_caller() {
    let cases = cases();
    // The table covers every route.
    let covered: BTreeSet<(String, &str)> = cases
        .iter()
        .map(|c| (c.method.to_string(), c.route))
        .collect();
    for (method, path) in relayward_admin::routes() {
        assert!(
            covered.contains(&(method.to_string(), path)),
            "no access case for {method} {path}"
        );
    }

    for (role_index, role) in ROLES.iter().enumerate() {
        let f = fixture().await;
        let token = match *role {
            "operator" => Some(f.api.op.token.clone()),
            "owner" => Some(f.api.a_admin.token.clone()),
            "foreign" => Some(f.api.b_admin.token.clone()),
            _ => None,
        };
        for c in &cases {
            let mut path = fill(c.route, &f.values, c.objects);
            if !c.query.is_empty() {
                path = format!("{path}?{}", fill(c.query, &f.values, &[]));
            }
            let body = c.body.as_ref().map(|b| fill_body(b, &f.values));
            let calls_before = f.api.control.calls().len();
            let resp = f
                .api
                .send(c.method.clone(), &path, token.as_deref(), body.as_ref())
                .await;
            let want = c.expect[role_index];
            assert_eq!(
                resp.status, want,
                "{role}: {} {path}: {}",
                c.method, resp.text
            );
            if want >= 400 {
                resp.assert_problem(want);
            }
            if want == 401 {
                assert!(
                    resp.header("www-authenticate")
                        .is_some_and(|h| h.starts_with("Bearer")),
                    "{role}: {} {path}: no Bearer challenge",
                    c.method
                );
            }
            if want == 403 || want == 404 || want == 401 {
                // Refused requests never reach the relay.
                let calls = f.api.control.calls();
                assert_eq!(
                    calls.len(),
                    calls_before,
                    "{role}: {} {path} reached the relay: {:?}",
                    c.method,
                    calls.last()
                );
            }
        }
        // Nothing the foreign admin or an anonymous caller did changed tenant a.
        if matches!(*role, "foreign" | "none") {
            let a = f.api.a.id;
            assert_eq!(f.api.store.list_domains(Some(a)).await.unwrap().len(), 2);
            let conns = f.api.store.list_connectors(Some(a)).await.unwrap();
            assert_eq!(conns.len(), 2);
            assert!(conns.iter().all(|c| c.enabled && !c.require_tls));
            assert!(f
                .api
                .store
                .list_tokens(Some(a))
                .await
                .unwrap()
                .iter()
                .all(|t| t.revoked_at.is_none()));
            assert!(f.api.control.has_message("A0002"));
            assert!(
                f.api.dns.queries().is_empty(),
                "{role} made the API look up DNS"
            );
            assert_eq!(f.api.control.state_of(a), TenantState::BlockedUnregistered);
            assert_eq!(
                f.api.control.sender_restrictions_len(a),
                1,
                "{role} lifted a restriction"
            );
            let now = relayward_core::now();
            for (tenant, listed) in [(Some(a), "gone@dest.example"), (None, "trap@dest.example")] {
                let list = f.api.store.list_suppressions(tenant, now).await.unwrap();
                assert_eq!(
                    list.iter().map(|s| s.address.as_str()).collect::<Vec<_>>(),
                    [listed],
                    "{role} changed a suppression list"
                );
            }
        }
        f.api.stop().await;
    }
}

/// A tenant admin walking ids in sequence finds its own objects and nothing else, and every
/// miss reads the same whether the object exists elsewhere or not at all.
#[tokio::test]
async fn ids_guessed_in_sequence_answer_404() {
    let api = Api::start().await;
    let (a, b) = (api.a.id, api.b.id);
    let mut own_connectors = Vec::new();
    for i in 0..3 {
        api.add_connector(a, &format!("a{i}"), &format!("192.0.{i}.0/24"))
            .await;
        own_connectors.push(
            api.add_connector(b, &format!("b{i}"), &format!("198.51.{i}.0/24"))
                .await
                .id,
        );
    }
    let extra = token(&*api.store, TokenScope::Tenant(a), "a extra").await;
    let b_tok = api.b_admin.token.clone();

    // Tenants.
    let max_tenant = api.store.list_tenants().await.unwrap().len() as i64 + 3;
    for id in 1..=max_tenant {
        let r = api.get(&format!("/v1/tenants/{id}"), &b_tok).await;
        if id == b.0 {
            assert_eq!(r.status, 200);
        } else {
            r.assert_problem(404);
            assert_eq!(r.body["detail"], format!("tenant {id} not found"));
        }
    }

    // Connectors, under the foreign tenant's path and under its own.
    let max_conn = 10;
    for id in 1..=max_conn {
        let r = api
            .get(&format!("/v1/tenants/{a}/connectors/{id}"), &b_tok)
            .await;
        r.assert_problem(404);
        assert_eq!(r.body["detail"], format!("tenant {a} not found"));
        let own = format!("/v1/tenants/{b}/connectors/{id}");
        let r = api.get(&own, &b_tok).await;
        if own_connectors.contains(&ConnectorId(id)) {
            assert_eq!(r.status, 200, "{own}");
        } else {
            r.assert_problem(404);
            assert_eq!(
                r.body["detail"],
                format!("connector {id} of tenant {b} not found"),
                "an existing foreign connector reads like a missing one"
            );
            api.patch(&own, &b_tok, json!({"enabled": false}))
                .await
                .assert_problem(404);
            api.delete(&own, &b_tok).await.assert_problem(404);
            api.send(Method::POST, &format!("{own}/disable"), Some(&b_tok), None)
                .await
                .assert_problem(404);
        }
    }
    let a_conns = api.store.list_connectors(Some(a)).await.unwrap();
    assert_eq!(a_conns.len(), 3);
    assert!(a_conns.iter().all(|c| c.enabled));

    // Tokens.
    let max_token = extra.id + 3;
    for id in 1..=max_token {
        let path = format!("/v1/tokens/{id}");
        let r = api.get(&path, &b_tok).await;
        if id == api.b_admin.id {
            assert_eq!(r.status, 200);
            continue;
        }
        r.assert_problem(404);
        assert_eq!(r.body["detail"], format!("token {id} not found"));
        api.delete(&path, &b_tok).await.assert_problem(404);
    }
    // Nobody else's token was revoked.
    for t in [&api.op.token, &api.a_admin.token, &extra.token] {
        assert_eq!(api.get("/v1/me", t).await.status, 200);
    }

    // Queue ids of the other tenant.
    api.control.add_message("A0001", Some(a));
    for path in ["/v1/queue/A0001", "/v1/queue/NOSUCH"] {
        let r = api.get(path, &b_tok).await;
        r.assert_problem(404);
        assert!(r.body["detail"].as_str().unwrap().starts_with("message "));
    }
    api.stop().await;
}
