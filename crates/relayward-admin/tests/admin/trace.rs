//! Message trace search and the audit log, scoped to the caller.

use relayward_core::{SenderClass, TraceEvent, TraceKind};
use relayward_store::Store;
use serde_json::{json, Value};

use crate::common::Api;

fn ids(v: &Value) -> Vec<i64> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn search_filters_pages_and_scope() {
    let api = Api::start().await;
    let (a, b) = (api.a.id, api.b.id);
    let mut events = Vec::new();
    for i in 0..25i64 {
        let mut e = TraceEvent::new(if i % 2 == 0 {
            TraceKind::Received
        } else {
            TraceKind::Delivered
        });
        // Several events share a millisecond.
        e.at_ms = 1_700_000_000_000 + i / 3;
        e.tenant_id = Some(a);
        e.queue_id = Some(format!("Q{}", i / 5));
        e.message_id = Some(format!("<m{}@a.example>", i / 5));
        e.sender = Some(
            if i < 5 {
                "Boss@A.example"
            } else {
                "app@a.example"
            }
            .into(),
        );
        e.recipient = Some(format!("r{}@example.org", i % 4));
        e.sender_class = Some(SenderClass::Registered);
        events.push(e);
    }
    let mut other = TraceEvent::new(TraceKind::Received);
    other.tenant_id = Some(b);
    other.sender = Some("boss@a.example".into());
    events.push(other);
    api.store.record_trace(&events).await.unwrap();
    let a_tok = api.a_admin.token.clone();

    // Pages of 10, newest first, no duplicates, no gaps.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/trace?limit=10&cursor={c}"),
            None => "/v1/trace?limit=10".to_string(),
        };
        let r = api.get(&q, &a_tok).await;
        assert_eq!(r.status, 200, "{}", r.text);
        seen.extend(ids(&r.body));
        pages += 1;
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|x, y| y.cmp(x));
    assert_eq!(seen, sorted, "newest first");
    sorted.dedup();
    assert_eq!(sorted.len(), 25);

    // Filters. The tenant admin never sees tenant b's event, even when it matches.
    let count = |v: &Value| v["events"].as_array().unwrap().len();
    let r = api.get("/v1/trace?sender=boss@a.example", &a_tok).await;
    assert_eq!(count(&r.body), 5, "{}", r.text);
    let r = api
        .get("/v1/trace?sender=boss@a.example", &api.op.token)
        .await;
    assert_eq!(count(&r.body), 6);
    let r = api.get("/v1/trace?recipient=R1@example.org", &a_tok).await;
    assert_eq!(count(&r.body), 6);
    let r = api.get("/v1/trace?message_id=m2@a.example", &a_tok).await;
    assert_eq!(count(&r.body), 5);
    let r = api.get("/v1/trace?queue_id=Q4", &a_tok).await;
    assert_eq!(count(&r.body), 5);
    let r = api
        .get(
            "/v1/trace?since_ms=1700000000002&until_ms=1700000000003",
            &a_tok,
        )
        .await;
    assert_eq!(count(&r.body), 6);
    assert!(r.body["next_cursor"].is_null());
    let e = &r.body["events"][0];
    assert!(e["kind"] == json!("received") || e["kind"] == json!("delivered"));
    assert_eq!(e["sender_class"], "registered");
    api.get(&format!("/v1/trace?tenant_id={b}"), &a_tok)
        .await
        .assert_problem(404);
    let r = api
        .get(&format!("/v1/trace?tenant_id={b}"), &api.op.token)
        .await;
    assert_eq!(count(&r.body), 1);
    api.stop().await;
}

#[tokio::test]
async fn audit_log_is_scoped() {
    let api = Api::start().await;
    let (a, b) = (api.a.id, api.b.id);
    api.add_domain(a, "a.example", false).await;
    api.add_domain(b, "b.example", false).await;

    let r = api.get("/v1/audit", &api.a_admin.token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.body.as_array().unwrap();
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e["tenant_id"] == a.0), "{}", r.text);
    assert!(entries.iter().any(|e| e["action"] == "domain.add"));

    let r = api.get("/v1/audit?limit=1000", &api.op.token).await;
    let all = r.body.as_array().unwrap();
    assert!(all.iter().any(|e| e["tenant_id"] == b.0));
    assert!(
        all.iter().any(|e| e["tenant_id"].is_null()),
        "operator token creation"
    );
    // Newest first.
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]));
    let r = api.get("/v1/audit?limit=2", &api.op.token).await;
    assert_eq!(r.body.as_array().unwrap().len(), 2);
    api.stop().await;
}
