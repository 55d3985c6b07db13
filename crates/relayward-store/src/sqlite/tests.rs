//! What is SQLite's own: the file (WAL, foreign keys), several processes on one file, its
//! migrations over older files, and how values are stored. The behaviour of the store through
//! [`crate::Store`] is tested on every backend by `tests/conformance.rs`.

use super::*;
use crate::{NewConnector, NewDomain, Store};
use relayward_core::{
    ConnectorId, ConnectorKind, DomainKind, TenantId, Timestamp, TraceEvent, TraceKind, TraceQuery,
};
use sqlx::Row;

async fn store() -> (tempfile::TempDir, SqliteStore, String) {
    let dir = tempfile::tempdir().unwrap();
    // A subdirectory that does not exist yet: open must create it.
    let path = dir.path().join("data/sub/relayward.db");
    let path = path.to_str().unwrap().to_string();
    let store = SqliteStore::open(&path).await.unwrap();
    (dir, store, path)
}

fn new_domain(tenant: TenantId, domain: &str, verified: bool) -> NewDomain {
    NewDomain {
        tenant_id: tenant,
        domain: domain.into(),
        kind: DomainKind::Authoritative,
        match_subdomains: false,
        verified,
    }
}

fn new_connector(tenant: TenantId, name: &str) -> NewConnector {
    NewConnector {
        tenant_id: tenant,
        name: name.into(),
        kind: ConnectorKind::OnPremises,
        ip_ranges: vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
        cert_name: None,
        auth_user: None,
        auth_password_hash: None,
        require_tls: false,
        allow_unregistered: false,
        restrict_domains_to_ips: false,
        restrict_domains_to_cert: false,
    }
}

fn event(at_ms: i64, kind: TraceKind) -> TraceEvent {
    TraceEvent {
        at_ms,
        ..TraceEvent::new(kind)
    }
}

#[tokio::test]
async fn open_creates_file_and_reopens() {
    let (_dir, s, path) = store().await;
    assert!(Path::new(&path).exists());
    assert_eq!(s.directory_version().await.unwrap(), 1);
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query("PRAGMA foreign_keys")
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(fk, 1);
    s.create_tenant("acme", &[], "op").await.unwrap();
    s.pool().close().await;
    // Reopen: migrations already applied, data kept.
    let s2 = SqliteStore::open(&path).await.unwrap();
    assert_eq!(s2.list_tenants().await.unwrap().len(), 1);
    assert_eq!(s2.directory_version().await.unwrap(), 2);
}

#[tokio::test]
async fn open_via_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/x/db.sqlite", dir.path().display());
    let s = crate::open(&url).await.unwrap();
    assert!(s.list_tenants().await.unwrap().is_empty());
    assert!(matches!(
        crate::open("mysql://x").await,
        Err(StoreError::Invalid(_))
    ));
}

/// Child half of `cross_process`: does nothing unless run by it.
#[tokio::test]
async fn cross_process_child() {
    let Ok(path) = std::env::var("RELAYWARD_STORE_CHILD_DB") else {
        return;
    };
    let s = SqliteStore::open(&path).await.unwrap();
    let t = s.find_tenant("acme").await.unwrap().unwrap();
    for i in 0..100 {
        s.add_domain(
            new_domain(t.id, &format!("child{i}.example"), false),
            "child",
        )
        .await
        .unwrap();
        let batch: Vec<TraceEvent> = (0..20)
            .map(|j| event(i * 20 + j, TraceKind::Queued))
            .collect();
        s.record_trace(&batch).await.unwrap();
    }
}

/// A real second process (this test binary, running `cross_process_child`) writes to the
/// file while this one writes and reloads: no "database is locked" on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_process() {
    let (_dir, s, path) = store().await;
    let t = s.create_tenant("acme", &[], "cli").await.unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sqlite::tests::cross_process_child",
            "--nocapture",
        ])
        .env("RELAYWARD_STORE_CHILD_DB", &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = 0;
    loop {
        s.add_domain(
            new_domain(t.id, &format!("parent{i}.example"), false),
            "parent",
        )
        .await
        .unwrap();
        s.touch_connectors(&[(ConnectorId(1), Timestamp(i))])
            .await
            .unwrap();
        let dir = s.load_directory().await.unwrap();
        assert!(dir.domains.len() as i64 > i);
        i += 1;
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().await.unwrap();
            assert!(
                status.success(),
                "child failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            break;
        }
    }
    let dir = s.load_directory().await.unwrap();
    let child_domains = dir
        .domains
        .iter()
        .filter(|d| d.domain.starts_with("child"))
        .count();
    assert_eq!(child_domains, 100);
    assert_eq!(dir.version, 2 + dir.domains.len() as i64);
    assert_eq!(
        s.search_trace(&TraceQuery {
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        2000
    );
    eprintln!("parent wrote {i} domains while the child ran");
}

/// Two processes starting at once on a fresh file: both open and migrate cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_open_of_fresh_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db").to_str().unwrap().to_string();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteStore::open(&path).await })
        })
        .collect();
    for o in opens {
        let s = o.await.unwrap().unwrap();
        assert_eq!(s.directory_version().await.unwrap(), 1);
    }
}

#[tokio::test]
async fn ids_and_times_are_stored_as_integers() {
    let (_dir, s, _path) = store().await;
    let t = s.create_tenant("acme", &[], "op").await.unwrap();
    let d = s
        .add_domain(new_domain(t.id, "acme.example", true), "op")
        .await
        .unwrap();
    let c = s
        .add_connector(new_connector(t.id, "edge"), "op")
        .await
        .unwrap();
    let row = sqlx::query(
        "SELECT typeof(d.tenant_id), d.tenant_id, typeof(c.tenant_id), c.id, \
         typeof(c.created_at), c.created_at \
         FROM accepted_domains d JOIN connectors c ON c.tenant_id = d.tenant_id WHERE d.id = ?",
    )
    .bind(d.id)
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), "integer");
    assert_eq!(row.get::<i64, _>(1), t.id.0);
    assert_eq!(row.get::<String, _>(2), "integer");
    assert_eq!(row.get::<ConnectorId, _>(3), c.id);
    assert_eq!(row.get::<String, _>(4), "integer");
    assert_eq!(row.get::<Timestamp, _>(5), c.created_at);
}

/// Migration 0008 on a database made before it: audit rows about connectors that still exist
/// get their ids; those about deleted ones stay without.
#[tokio::test]
async fn older_connector_audit_rows_get_their_connector_ids() {
    let (_dir, s, path) = store().await;
    let t = s.create_tenant("acme", &[], "cli:admin").await.unwrap();
    let edge = s
        .add_connector(new_connector(t.id, "edge"), "cli:admin")
        .await
        .unwrap();
    let gone = s
        .add_connector(new_connector(t.id, "gone"), "cli:admin")
        .await
        .unwrap();
    s.delete_connector(gone.id, "cli:admin").await.unwrap();
    drop(s);
    // Back to the schema before 0008: no connector ids in the audit log.
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    for sql in [
        "ALTER TABLE audit_log DROP COLUMN connector_id",
        "DELETE FROM _sqlx_migrations WHERE version = 8",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();

    let s = SqliteStore::open(&path).await.unwrap();
    let changes = s.connector_changes(t.id, Timestamp(0)).await.unwrap();
    // edge's add, gone's add and delete.
    assert_eq!(changes.len(), 3, "{changes:?}");
    let with_id: Vec<_> = changes
        .iter()
        .filter(|c| c.connector_id.is_some())
        .collect();
    assert_eq!(with_id.len(), 1, "{changes:?}");
    assert_eq!(with_id[0].connector_id, Some(edge.id));
    assert_eq!(with_id[0].action, "connector.add");
}

/// The address searches of the trace use the LOWER() expression indexes.
#[tokio::test]
async fn trace_address_searches_use_the_lower_indexes() {
    let (_dir, s, _) = store().await;
    for col in ["sender", "recipient"] {
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN SELECT id FROM trace_events WHERE LOWER({col}) = $1"
        )))
        .bind("x")
        .fetch_all(s.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("detail"))
        .collect();
        assert!(
            plan.iter()
                .any(|p| p.contains(&format!("trace_events_{col}"))),
            "{plan:?}"
        );
    }
}

/// sqlx binds SQLite's `$N` placeholders by number, as PostgreSQL does: a statement may use
/// them out of order and more than once, which the shared SQL relies on.
#[tokio::test]
async fn numbered_placeholders_bind_by_number() {
    let (_dir, s, _) = store().await;
    let row = sqlx::query("SELECT $2 AS b, $1 AS a, $2 || $1 AS ba, $3 IS NULL AS n")
        .bind("one")
        .bind("two")
        .bind(None::<i64>)
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("a"), "one");
    assert_eq!(row.get::<String, _>("b"), "two");
    assert_eq!(row.get::<String, _>("ba"), "twoone");
    assert!(row.get::<bool, _>("n"));
}

/// The SQLite migrations were moved to their own directory: databases made before keep
/// matching them (sqlx refuses to start on a checksum mismatch). These are the first bytes of
/// the SHA-384 checksums of migrations 0001 to 0008 as released.
#[tokio::test]
async fn migrations_are_the_ones_applied_before() {
    const RELEASED: [&str; 8] = [
        "d2e72821ca923e3cb734901e",
        "9d5d745243ecf08e1ce6becb",
        "0d7ad15be2cb7f202005d0e3",
        "8628ff060274b410101ff1d7",
        "0348d993d2143732c634586d",
        "c3335b580a2fa05fce240968",
        "7fdec0cfbca5dad81ee67053",
        "618a5c0b2b01e9f0339d6aba",
    ];
    let (_dir, s, _) = store().await;
    let applied: Vec<Vec<u8>> =
        sqlx::query("SELECT checksum FROM _sqlx_migrations ORDER BY version")
            .fetch_all(s.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(applied.len(), MIGRATOR.iter().count());
    for (i, released) in RELEASED.iter().enumerate() {
        let hex: String = applied[i][..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(&hex, released, "migration {}", i + 1);
    }
}
