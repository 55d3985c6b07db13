//! Opening the database, and several stores (and processes) on one file; the helpers the
//! concern modules' tests share.

use super::*;
use relayward_core::{ConnectorKind, DomainKind, Timestamp, TraceKind};
use std::sync::Arc;

pub(super) async fn store() -> (tempfile::TempDir, SqliteStore, String) {
    let dir = tempfile::tempdir().unwrap();
    // A subdirectory that does not exist yet: open must create it.
    let path = dir.path().join("data/sub/relayward.db");
    let path = path.to_str().unwrap().to_string();
    let store = SqliteStore::open(&path).await.unwrap();
    (dir, store, path)
}

pub(super) fn new_domain(tenant: TenantId, domain: &str, verified: bool) -> NewDomain {
    NewDomain {
        tenant_id: tenant,
        domain: domain.into(),
        kind: DomainKind::Authoritative,
        match_subdomains: false,
        verified,
    }
}

pub(super) fn new_connector(tenant: TenantId, name: &str) -> NewConnector {
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

pub(super) async fn last_audit(s: &SqliteStore) -> AuditEntry {
    s.list_audit(None, 1).await.unwrap().remove(0)
}

pub(super) fn event(at_ms: i64, kind: TraceKind) -> TraceEvent {
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
        crate::open("postgres://x").await,
        Err(StoreError::Invalid(_))
    ));
}

/// The CLI and the server open the same file: one writes while the other reads, with no
/// "database is locked" errors on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file() {
    let (_dir, server, path) = store().await;
    let cli = SqliteStore::open(&path).await.unwrap();
    let server = Arc::new(server);
    let cli = Arc::new(cli);
    let t = cli.create_tenant("acme", &[], "cli").await.unwrap();
    let conn = cli
        .add_connector(new_connector(t.id, "onprem"), "cli")
        .await
        .unwrap();

    // CLI: directory writes.
    let writer = {
        let cli = cli.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                let d = cli
                    .add_domain(
                        new_domain(t.id, &format!("d{i}.example"), i % 2 == 0),
                        "cli",
                    )
                    .await
                    .unwrap();
                if i % 3 == 0 {
                    cli.set_domain_verified(d.id, true, "cli").await.unwrap();
                }
            }
        })
    };
    // Server: trace and touch writes of its own, at the same time.
    let server_writer = {
        let server = server.clone();
        tokio::spawn(async move {
            for i in 0..40i64 {
                let batch: Vec<TraceEvent> = (0..50)
                    .map(|j| {
                        let mut e = event(i * 100 + j, TraceKind::Received);
                        e.tenant_id = Some(t.id);
                        e
                    })
                    .collect();
                server.record_trace(&batch).await.unwrap();
                server
                    .touch_connectors(&[(conn.id, Timestamp(i))])
                    .await
                    .unwrap();
            }
        })
    };
    // Server: polls the version and reloads the directory, checking every snapshot is
    // consistent (the version matches the content).
    let reader = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut loads = 0;
            let mut last = 0;
            for _ in 0..200 {
                let v = server.directory_version().await.unwrap();
                assert!(v >= last);
                if v != last {
                    let dir = server.load_directory().await.unwrap();
                    assert!(dir.version >= v);
                    assert_consistent(&dir);
                    last = dir.version;
                    loads += 1;
                }
                server
                    .search_trace(&TraceQuery {
                        tenant_id: Some(t.id),
                        limit: 10,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            loads
        })
    };
    writer.await.unwrap();
    server_writer.await.unwrap();
    let loads = reader.await.unwrap();
    assert!(loads >= 1);

    let dir = server.load_directory().await.unwrap();
    assert_eq!(dir.domains.len(), 60);
    // 1 (initial) + tenant + connector + 60 domains + verifies of odd i divisible by 3.
    let verifies = (0..60).filter(|i| i % 3 == 0).count() as i64;
    assert_eq!(dir.version, 1 + 2 + 60 + verifies);
    assert_eq!(dir.version, cli.directory_version().await.unwrap());
    let all = cli
        .search_trace(&TraceQuery {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2000);
    assert_eq!(
        cli.get_connector(conn.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(Timestamp(39))
    );
}

/// The writer in `two_stores_on_one_file` adds domains d0, d1, ... in order and verifies
/// each d{i} with i % 3 == 0 right after adding it; with the initial version 1 and the tenant
/// and connector, a consistent snapshot's version is determined by its domains (up to
/// whether the newest domain's verify call is in yet).
fn assert_consistent(dir: &DirectoryData) {
    let mut idx: Vec<i64> = dir
        .domains
        .iter()
        .map(|d| {
            d.domain
                .trim_start_matches('d')
                .trim_end_matches(".example")
                .parse()
                .unwrap()
        })
        .collect();
    idx.sort();
    let n = idx.len() as i64;
    assert_eq!(idx, (0..n).collect::<Vec<_>>());
    if n == 0 {
        assert_eq!(dir.version, 3);
        return;
    }
    let last = n - 1;
    let done = (0..last).filter(|i| i % 3 == 0).count() as i64;
    let base = 3 + n + done;
    let ok = if last % 3 == 0 {
        dir.version == base || dir.version == base + 1
    } else {
        dir.version == base
    };
    assert!(ok, "version {} with {n} domains", dir.version);
    // Verified flags agree with the version too.
    for d in &dir.domains {
        let i: i64 = d.domain[1..d.domain.len() - 8].parse().unwrap();
        if i % 2 == 0 || (i % 3 == 0 && i < last) {
            assert!(d.verified, "{}", d.domain);
        } else if i % 3 != 0 {
            assert!(!d.verified, "{}", d.domain);
        }
    }
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
