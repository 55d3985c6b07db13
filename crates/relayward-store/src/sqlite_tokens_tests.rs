//! Admin API tokens, the per-connector unregistered count and trace paging on SQLite.

use super::*;

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
        s.create_token(TokenScope::Tenant(999), "x", "h", "t").await,
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
    s.touch_token(ta, 1000).await.unwrap();
    s.touch_token(ta, 500).await.unwrap();
    assert_eq!(
        s.get_token(ta).await.unwrap().unwrap().last_used_at,
        Some(1000)
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

fn received(at_ms: i64, queue_id: &str, connector: ConnectorId, class: SenderClass) -> TraceEvent {
    let mut e = TraceEvent::new(TraceKind::Received);
    e.at_ms = at_ms;
    e.queue_id = Some(queue_id.into());
    e.tenant_id = Some(1);
    e.connector_id = Some(connector);
    e.sender_class = Some(class);
    e
}

#[tokio::test]
async fn unregistered_count_per_connector() {
    let (_dir, s) = store().await;
    let mut events = vec![
        // Two recipients of one message count once.
        received(1000, "q1", 7, SenderClass::Unregistered),
        received(1000, "q1", 7, SenderClass::Unregistered),
        received(1100, "q2", 7, SenderClass::Unregistered),
        received(1200, "q3", 8, SenderClass::Unregistered),
        // Too old, registered, refused, other tenant: not counted.
        received(10, "q4", 8, SenderClass::Unregistered),
        received(1300, "q5", 9, SenderClass::Registered),
    ];
    let mut refused = received(1300, "q6", 9, SenderClass::Unregistered);
    refused.kind = TraceKind::Refused;
    events.push(refused);
    let mut other = received(1300, "q7", 9, SenderClass::Unregistered);
    other.tenant_id = Some(2);
    events.push(other);
    s.record_trace(&events).await.unwrap();

    let counts = s
        .count_received_by_connector(1, SenderClass::Unregistered, 500)
        .await
        .unwrap();
    assert_eq!(counts, [(7, 2), (8, 1)]);
    assert!(s
        .count_received_by_connector(3, SenderClass::Unregistered, 0)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn trace_pages_follow_each_other() {
    let (_dir, s) = store().await;
    // Many events share a millisecond: paging must neither skip nor repeat them.
    let mut events = Vec::new();
    for i in 0..25 {
        let mut e = TraceEvent::new(TraceKind::Received);
        e.at_ms = 1000 + (i / 10) as i64;
        e.tenant_id = Some(if i % 5 == 0 { 2 } else { 1 });
        e.sender = Some(format!("User{}@Example.com", i % 2));
        events.push(e);
    }
    s.record_trace(&events).await.unwrap();

    let q = TraceQuery {
        tenant_id: Some(1),
        limit: 4,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.search_trace_page(&q, after).await.unwrap();
        assert!(page.len() <= 4);
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        after = Some((last.at_ms, last.id));
        seen.extend(page.into_iter().map(|e| (e.at_ms, e.id)));
    }
    let mut expected: Vec<(i64, i64)> = s
        .search_trace(&TraceQuery {
            tenant_id: Some(1),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|e| (e.at_ms, e.id))
        .collect();
    assert_eq!(seen.len(), 20);
    assert_eq!(seen, expected);
    expected.sort();
    expected.dedup();
    assert_eq!(expected.len(), 20);

    // The same filters as search_trace.
    let q = TraceQuery {
        sender: Some("user1@example.COM".into()),
        ..Default::default()
    };
    assert_eq!(
        s.search_trace_page(&q, None).await.unwrap(),
        s.search_trace(&q).await.unwrap()
    );
}
