//! The behaviour of [`Store`], the same on every backend: each test below runs once on SQLite
//! (a file in a temporary directory) and once on PostgreSQL (a database of its own, created for
//! the test and dropped after it), through `relayward_store::open` and `Arc<dyn Store>` only.
//!
//! PostgreSQL is `postgres://postgres@127.0.0.1:5432/postgres` unless `RELAYWARD_TEST_POSTGRES`
//! names another server (a database there to connect to; the tests' databases are created
//! beside it). When it cannot be reached, the PostgreSQL half of each test is skipped with a
//! notice, except under CI (`CI` set), where that is a failure.
//!
//! Run: `cargo test -p relayward-store --test conformance` (`sqlite::` and `postgres::` name
//! each half).

use std::sync::Arc;
use std::time::Duration;

use relayward_core::{
    now, ConnectorId, ConnectorKind, DirectoryData, DomainKind, ReputationHour, SenderClass,
    Suppression, SuppressionSource, TenantId, TenantState, Timestamp, TraceEvent, TraceKind,
    TraceQuery,
};
use relayward_store::{
    NewConnector, NewDomain, NewSenderRestriction, NewTransition, NodeRecord, Store, StoreError,
    TokenId, TokenScope, TrafficHour,
};
use sqlx::Connection;

// ---------------------------------------------------------------------------------------------
// The backends

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own for one test: a file in a temporary directory, or a PostgreSQL
/// database dropped when this is.
struct TestDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/relayward.db", dir.path().display());
        TestDb {
            url,
            _dir: Some(dir),
            _pg: None,
        }
    }

    /// `None` (after a notice) when the server cannot be reached outside CI.
    async fn postgres() -> Option<TestDb> {
        let base =
            std::env::var("RELAYWARD_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.into());
        let mut admin = match sqlx::PgConnection::connect(&base).await {
            Ok(c) => c,
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!(
                    "PostgreSQL at {} is unreachable under CI: {e}",
                    without_password(&base)
                )
            }
            Err(e) => {
                eprintln!(
                    "notice: PostgreSQL at {} is unreachable ({e}): the PostgreSQL half of this \
                     test is skipped (set RELAYWARD_TEST_POSTGRES to run it)",
                    without_password(&base)
                );
                return None;
            }
        };
        let name = format!("relayward_t_{:016x}", rand::random::<u64>());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        Some(TestDb {
            url: with_database(&base, &name),
            _dir: None,
            _pg: Some(PgDatabase { base, name }),
        })
    }

    /// A store on this database (another one at each call, as another process would have).
    async fn open(&self) -> Arc<dyn Store> {
        relayward_store::open(&self.url).await.unwrap()
    }
}

/// `url` fit to print: its password, if any, left out.
fn without_password(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    match url[scheme_end..].split_once('@') {
        Some((userinfo, rest)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***@{rest}", &url[..scheme_end])
        }
        _ => url.to_string(),
    }
}

/// `base` with its database name replaced by `name`.
fn with_database(base: &str, name: &str) -> String {
    let (url, query) = match base.split_once('?') {
        Some((u, q)) => (u, format!("?{q}")),
        None => (base, String::new()),
    };
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let url = match url[scheme_end..].find('/') {
        Some(slash) => &url[..scheme_end + slash],
        None => url,
    };
    format!("{url}/{name}{query}")
}

/// A test's PostgreSQL database, dropped (with whatever connections are left) with this.
struct PgDatabase {
    base: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Its own thread and runtime: this runs inside the test's runtime, or while it unwinds.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut admin = sqlx::PgConnection::connect(&base).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await?;
                    admin.close().await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Each test, once on each backend: `sqlite::NAME` and `postgres::NAME`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::TestDb::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = super::TestDb::postgres().await {
                        super::$name(db).await
                    }
                }
            )*
        }
    };
}

conformance!(
    tenants_crud_conflict_audit_version,
    domains_crud_conflicts_audit_version,
    load_directory_and_audit_listing,
    directory_changes_carry_each_changed_tenant_whole,
    connectors_crud_conflicts_audit_version_touch,
    transitions_update_status_audit_and_version,
    transitions_are_compare_and_set,
    sender_restrictions_limits_forwarded_and_connector_changes,
    header_from_allowances,
    tokens_create_list_revoke_touch_audit,
    trace_record_and_search,
    unregistered_count_per_connector,
    trace_pages_follow_each_other,
    traffic_messages_and_refusals_per_tenant_and_hour,
    dkim_keys_are_recorded_replaced_and_audited,
    suppression_entries_expire_and_a_repeat_bounce_extends_them,
    suppression_tenant_and_global_lists_apart_people_audited,
    suppression_updates_carry_changes_and_removals,
    reputation_hours_add_up_and_age_out,
    nodes_heartbeat_and_list,
    reopen_keeps_data_and_schema,
    concurrent_open_of_a_fresh_database,
    two_stores_on_one_database,
    concurrent_changes_take_turns,
    two_processes_race,
);

// ---------------------------------------------------------------------------------------------
// Helpers

/// Tenant `id`'s part of a whole directory, to compare with a delta's.
fn part_of(d: &relayward_core::DirectoryData, id: TenantId) -> String {
    format!(
        "{:?} {:?} {:?} {:?}",
        d.tenants.iter().find(|t| t.id == id),
        d.domains
            .iter()
            .filter(|x| x.tenant_id == id)
            .collect::<Vec<_>>(),
        d.connectors
            .iter()
            .filter(|x| x.tenant_id == id)
            .collect::<Vec<_>>(),
        d.header_from_allowed
            .iter()
            .filter(|x| x.tenant_id == id)
            .collect::<Vec<_>>(),
    )
}

async fn directory_changes_carry_each_changed_tenant_whole(db: TestDb) {
    let s = db.open().await;
    let a = s.create_tenant("alpha", &[], "t").await.unwrap();
    let b = s.create_tenant("beta", &[], "t").await.unwrap();
    let c = s.create_tenant("gamma", &[], "t").await.unwrap();
    let v0 = s.directory_version().await.unwrap();
    // Nothing since: an empty delta at the same version.
    let none = s.directory_changes(v0).await.unwrap().unwrap();
    assert_eq!((none.version, none.tenants.len()), (v0, 0));

    let d = s
        .add_domain(new_domain(a.id, "alpha.example", true), "t")
        .await
        .unwrap();
    s.add_domain(new_domain(a.id, "pending.alpha.example", false), "t")
        .await
        .unwrap();
    s.add_connector(new_connector(b.id, "edge"), "t")
        .await
        .unwrap();
    s.set_tenant_state(b.id, TenantState::Warned, "t", "test")
        .await
        .unwrap();
    s.remove_domain(d.id, "t").await.unwrap();
    let delta = s.directory_changes(v0).await.unwrap().unwrap();
    let whole = s.load_directory().await.unwrap();
    assert_eq!(delta.version, whole.version);
    assert_eq!(delta.version, v0 + 5);
    // alpha and beta, once each, by id; gamma did not change.
    let ids: Vec<TenantId> = delta.tenants.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![a.id, b.id]);
    for p in &delta.tenants {
        let mine = relayward_core::DirectoryData {
            version: delta.version,
            tenants: p.tenant.iter().cloned().collect(),
            domains: p.domains.clone(),
            connectors: p.connectors.clone(),
            header_from_allowed: p.header_from_allowed.clone(),
        };
        assert_eq!(part_of(&mine, p.id), part_of(&whole, p.id));
    }
    assert_eq!(
        delta.tenants[0].domains.len(),
        1,
        "the removed domain is gone"
    );
    // From a later version: only what changed after it.
    let later = s.directory_changes(v0 + 4).await.unwrap().unwrap();
    assert_eq!(
        later.tenants.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![a.id]
    );
    let _ = c;
    // A change of no single tenant's (the relay's own SRS key): the whole directory, then.
    s.set_dkim_key("srs.relay.example", None, "relayward", "ed25519", "t")
        .await
        .unwrap();
    assert!(s.directory_changes(v0).await.unwrap().is_none());
    let v1 = s.directory_version().await.unwrap();
    s.set_tenant_state(c.id, TenantState::Warned, "t", "test")
        .await
        .unwrap();
    let after = s.directory_changes(v1).await.unwrap().unwrap();
    assert_eq!(after.tenants.len(), 1);
    assert_eq!(
        after.tenants[0].tenant.as_ref().unwrap().state,
        TenantState::Warned
    );
    // Before the log begins (or a version this store never had): None.
    assert!(s.directory_changes(-1).await.unwrap().is_none());
    assert!(s.directory_changes(v1 + 100).await.unwrap().is_none());
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

async fn last_audit(s: &Arc<dyn Store>) -> relayward_core::AuditEntry {
    s.list_audit(None, 1).await.unwrap().remove(0)
}

fn event(at_ms: i64, kind: TraceKind) -> TraceEvent {
    TraceEvent {
        at_ms,
        ..TraceEvent::new(kind)
    }
}

// ---------------------------------------------------------------------------------------------
// Directory, connectors, abuse records, tokens, trace, traffic, DKIM, suppression, reputation

// ==== from directory

async fn tenants_crud_conflict_audit_version(db: TestDb) {
    let s = db.open().await;
    let v0 = s.directory_version().await.unwrap();
    let emails = vec!["admin@acme.example".to_string()];
    let t = s.create_tenant("acme", &emails, "alice").await.unwrap();
    assert_eq!(t.name, "acme");
    assert_eq!(t.state, TenantState::Active);
    assert_eq!(t.admin_emails, emails);
    assert_eq!(s.directory_version().await.unwrap(), v0 + 1);
    let a = last_audit(&s).await;
    assert_eq!(
        (
            a.actor.as_str(),
            a.action.as_str(),
            a.tenant_id,
            a.object.as_str()
        ),
        ("alice", "tenant.create", Some(t.id), "tenant acme")
    );

    assert_eq!(s.get_tenant(t.id).await.unwrap(), Some(t.clone()));
    assert_eq!(s.get_tenant(TenantId(999)).await.unwrap(), None);

    // Duplicate name: conflict, no audit, no bump.
    let err = s.create_tenant("acme", &[], "alice").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("tenant acme")),
        "{err}"
    );
    assert_eq!(s.directory_version().await.unwrap(), v0 + 1);
    assert_eq!(s.list_audit(None, 0).await.unwrap().len(), 1);
    assert!(matches!(
        s.create_tenant("  ", &[], "alice").await,
        Err(StoreError::Invalid(_))
    ));

    // find_tenant: name first, then all-digits id.
    let t2 = s.create_tenant("42", &[], "alice").await.unwrap();
    assert_eq!(s.find_tenant("acme").await.unwrap().unwrap().id, t.id);
    assert_eq!(s.find_tenant("42").await.unwrap().unwrap().id, t2.id);
    assert_eq!(
        s.find_tenant(&t.id.to_string()).await.unwrap().unwrap().id,
        t.id
    );
    assert_eq!(s.find_tenant("nope").await.unwrap(), None);
    assert_eq!(s.find_tenant("").await.unwrap(), None);
    assert_eq!(s.find_tenant("99999999999999999999").await.unwrap(), None);
    assert_eq!(s.list_tenants().await.unwrap().len(), 2);

    // State change with reason.
    let v = s.directory_version().await.unwrap();
    s.set_tenant_state(
        t.id,
        TenantState::BlockedUnregistered,
        "abuse-detector",
        "spam burst: 900 msgs/h",
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_tenant(t.id).await.unwrap().unwrap().state,
        TenantState::BlockedUnregistered
    );
    assert_eq!(s.directory_version().await.unwrap(), v + 1);
    let a = last_audit(&s).await;
    assert_eq!(a.actor, "abuse-detector");
    assert_eq!(a.action, "tenant.state");
    assert_eq!(a.tenant_id, Some(t.id));
    assert!(
        a.detail.contains("active -> blocked_unregistered"),
        "{}",
        a.detail
    );
    assert!(a.detail.contains("spam burst: 900 msgs/h"), "{}", a.detail);

    let err = s
        .set_tenant_state(TenantId(7777), TenantState::Active, "op", "x")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(m) if m == "tenant 7777"),
        "{err}"
    );
    assert_eq!(err.to_string(), "tenant 7777 not found");
    assert_eq!(s.directory_version().await.unwrap(), v + 1);
}

async fn domains_crud_conflicts_audit_version(db: TestDb) {
    let s = db.open().await;
    let acme = s.create_tenant("acme", &[], "op").await.unwrap();
    let other = s.create_tenant("other", &[], "op").await.unwrap();
    let v = s.directory_version().await.unwrap();

    let d = s
        .add_domain(new_domain(acme.id, "example.com", false), "bob")
        .await
        .unwrap();
    assert!(!d.verified);
    assert_eq!(d.verified_at, None);
    assert_eq!(d.verification_token.len(), 32);
    assert!(d
        .verification_token
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert_eq!(s.directory_version().await.unwrap(), v + 1);
    let a = last_audit(&s).await;
    assert_eq!(
        (
            a.actor.as_str(),
            a.action.as_str(),
            a.tenant_id,
            a.object.as_str()
        ),
        ("bob", "domain.add", Some(acme.id), "domain example.com")
    );
    assert_eq!(
        s.get_domain(acme.id, "example.com").await.unwrap(),
        Some(d.clone())
    );
    assert_eq!(s.get_domain(other.id, "example.com").await.unwrap(), None);

    // Same tenant twice: conflict.
    let err = s
        .add_domain(new_domain(acme.id, "example.com", false), "bob")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("domain example.com")),
        "{err}"
    );
    // Unknown tenant / not normalized.
    assert!(matches!(
        s.add_domain(new_domain(TenantId(555), "x.example", false), "bob").await,
        Err(StoreError::NotFound(m)) if m == "tenant 555"
    ));
    assert!(matches!(
        s.add_domain(new_domain(acme.id, "Upper.example.", false), "bob")
            .await,
        Err(StoreError::Invalid(_))
    ));

    // Another tenant may claim it (pending) while nobody has it verified...
    let d2 = s
        .add_domain(new_domain(other.id, "example.com", false), "carol")
        .await
        .unwrap();
    assert_ne!(d.verification_token, d2.verification_token);
    // ...acme verifies it...
    let v = s.directory_version().await.unwrap();
    s.set_domain_verified(d.id, true, "dns-checker")
        .await
        .unwrap();
    let dv = s.get_domain(acme.id, "example.com").await.unwrap().unwrap();
    assert!(dv.verified);
    assert!(dv.verified_at.is_some());
    assert_eq!(s.directory_version().await.unwrap(), v + 1);
    let a = last_audit(&s).await;
    assert_eq!(
        (a.actor.as_str(), a.action.as_str()),
        ("dns-checker", "domain.verify")
    );
    // ...so the other tenant can no longer verify it, or add it verified.
    let err = s
        .set_domain_verified(d2.id, true, "carol")
        .await
        .unwrap_err();
    match &err {
        StoreError::Conflict(m) => {
            assert_eq!(
                m,
                "domain example.com is already verified by another tenant"
            )
        }
        e => panic!("{e}"),
    }
    let third = s.create_tenant("third", &[], "op").await.unwrap();
    assert!(matches!(
        s.add_domain(new_domain(third.id, "example.com", true), "op")
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.directory_version().await.unwrap(), v + 2);

    // Operator-attested domain is verified at once.
    let d3 = s
        .add_domain(
            NewDomain {
                kind: DomainKind::InternalRelay,
                match_subdomains: true,
                ..new_domain(acme.id, "corp.example", true)
            },
            "op",
        )
        .await
        .unwrap();
    assert!(d3.verified && d3.verified_at.is_some());
    assert_eq!(
        s.get_domain(acme.id, "corp.example").await.unwrap(),
        Some(d3.clone())
    );

    assert_eq!(s.list_domains(Some(acme.id)).await.unwrap().len(), 2);
    assert_eq!(s.list_domains(Some(other.id)).await.unwrap().len(), 1);
    assert_eq!(s.list_domains(None).await.unwrap().len(), 3);

    // Unverify, then the other tenant can verify.
    s.set_domain_verified(d.id, false, "op").await.unwrap();
    assert_eq!(last_audit(&s).await.action, "domain.unverify");
    let du = s.get_domain(acme.id, "example.com").await.unwrap().unwrap();
    assert!(!du.verified && du.verified_at.is_none());
    s.set_domain_verified(d2.id, true, "carol").await.unwrap();

    // Remove.
    let v = s.directory_version().await.unwrap();
    s.remove_domain(d.id, "bob").await.unwrap();
    assert_eq!(s.get_domain(acme.id, "example.com").await.unwrap(), None);
    assert_eq!(s.directory_version().await.unwrap(), v + 1);
    let a = last_audit(&s).await;
    assert_eq!(
        (a.actor.as_str(), a.action.as_str(), a.object.as_str()),
        ("bob", "domain.remove", "domain example.com")
    );
    assert!(matches!(
        s.remove_domain(d.id, "bob").await,
        Err(StoreError::NotFound(m)) if m == format!("domain {}", d.id)
    ));
    assert!(matches!(
        s.set_domain_verified(d.id, true, "bob").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.directory_version().await.unwrap(), v + 1);
}

async fn load_directory_and_audit_listing(db: TestDb) {
    let s = db.open().await;
    let acme = s.create_tenant("acme", &[], "op").await.unwrap();
    let d = s
        .add_domain(new_domain(acme.id, "acme.example", true), "op")
        .await
        .unwrap();
    let c = s
        .add_connector(new_connector(acme.id, "onprem"), "op")
        .await
        .unwrap();
    let dir = s.load_directory().await.unwrap();
    assert_eq!(dir.version, s.directory_version().await.unwrap());
    assert_eq!(dir.tenants, vec![acme.clone()]);
    assert_eq!(dir.domains, vec![d]);
    assert_eq!(dir.connectors, vec![c]);

    // Free-form audit entries: no version bump.
    let v = s.directory_version().await.unwrap();
    s.audit(
        "op",
        "queue.hold",
        Some(acme.id),
        "queue 123",
        "held by operator",
    )
    .await
    .unwrap();
    s.audit("op", "server.start", None, "server", "started")
        .await
        .unwrap();
    assert_eq!(s.directory_version().await.unwrap(), v);
    let all = s.list_audit(None, 0).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].action, "server.start");
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    let mine = s.list_audit(Some(acme.id), 2).await.unwrap();
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0].action, "queue.hold");
    assert_eq!(mine[1].action, "connector.add");
}

// ==== from connectors

async fn connectors_crud_conflicts_audit_version_touch(db: TestDb) {
    let s = db.open().await;
    let acme = s.create_tenant("acme", &[], "op").await.unwrap();
    let other = s.create_tenant("other", &[], "op").await.unwrap();
    let v = s.directory_version().await.unwrap();

    let secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$SECRETHASHVALUE";
    let c = s
        .add_connector(
            NewConnector {
                auth_user: Some("acme-relay".into()),
                auth_password_hash: Some(secret_hash.into()),
                cert_name: Some("mail.acme.example".into()),
                require_tls: true,
                ..new_connector(acme.id, "onprem")
            },
            "alice",
        )
        .await
        .unwrap();
    assert!(c.enabled && !c.blocked);
    assert_eq!(c.created_by, "alice");
    assert_eq!(c.last_used_at, None);
    assert_eq!(s.get_connector(c.id).await.unwrap(), Some(c.clone()));
    assert_eq!(s.directory_version().await.unwrap(), v + 1);
    let a = last_audit(&s).await;
    assert_eq!(
        (
            a.actor.as_str(),
            a.action.as_str(),
            a.tenant_id,
            a.object.as_str()
        ),
        ("alice", "connector.add", Some(acme.id), "connector onprem")
    );
    assert!(a.detail.contains("192.0.2.0/24"), "{}", a.detail);
    assert!(!a.detail.contains("argon2") && !a.detail.contains("SECRET"));

    // Conflicts: same (tenant, name); auth_user used anywhere.
    let err = s
        .add_connector(new_connector(acme.id, "onprem"), "alice")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("connector onprem")),
        "{err}"
    );
    let err = s
        .add_connector(
            NewConnector {
                auth_user: Some("acme-relay".into()),
                ..new_connector(other.id, "x")
            },
            "alice",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("auth user acme-relay")),
        "{err}"
    );
    assert!(matches!(
        s.add_connector(new_connector(TenantId(4242), "x"), "alice").await,
        Err(StoreError::NotFound(m)) if m == "tenant 4242"
    ));
    // Same name in another tenant is fine; so are several connectors without auth_user.
    let c2 = s
        .add_connector(new_connector(other.id, "onprem"), "bob")
        .await
        .unwrap();
    let c3 = s
        .add_connector(new_connector(other.id, "partner"), "bob")
        .await
        .unwrap();
    assert_eq!(s.list_connectors(None).await.unwrap().len(), 3);
    assert_eq!(s.list_connectors(Some(other.id)).await.unwrap().len(), 2);
    assert_eq!(s.directory_version().await.unwrap(), v + 3);

    // Update: every mutable field.
    let mut u = c.clone();
    u.name = "onprem-2".into();
    u.kind = ConnectorKind::Partner;
    u.ip_ranges = vec!["198.51.100.7/32".parse().unwrap()];
    u.cert_name = None;
    u.auth_user = Some("acme-relay-2".into());
    u.auth_password_hash = Some("$argon2id$NEWHASH".into());
    u.require_tls = false;
    u.enabled = false;
    u.allow_unregistered = true;
    u.restrict_domains_to_ips = true;
    u.restrict_domains_to_cert = true;
    u.blocked = true;
    s.update_connector(&u, "carol").await.unwrap();
    let got = s.get_connector(c.id).await.unwrap().unwrap();
    assert_eq!(got.updated_by, "carol");
    assert_eq!(got.created_by, "alice");
    let mut expect = u.clone();
    expect.updated_at = got.updated_at;
    expect.updated_by = "carol".into();
    assert_eq!(got, expect);
    assert_eq!(s.directory_version().await.unwrap(), v + 4);
    let a = last_audit(&s).await;
    assert_eq!(
        (a.actor.as_str(), a.action.as_str(), a.object.as_str()),
        ("carol", "connector.update", "connector onprem")
    );
    assert!(a.detail.contains("name onprem -> onprem-2"), "{}", a.detail);
    assert!(a.detail.contains("blocked false -> true"), "{}", a.detail);
    assert!(a.detail.contains("password set"), "{}", a.detail);
    assert!(!a.detail.contains("argon2") && !a.detail.contains("NEWHASH"));

    // Update conflicts and errors.
    let mut dup = c3.clone();
    dup.name = "onprem".into();
    assert!(matches!(
        s.update_connector(&dup, "carol").await,
        Err(StoreError::Conflict(_))
    ));
    let mut dup = c3.clone();
    dup.auth_user = Some("acme-relay-2".into());
    assert!(matches!(
        s.update_connector(&dup, "carol").await,
        Err(StoreError::Conflict(_))
    ));
    let mut moved = c3.clone();
    moved.tenant_id = acme.id;
    assert!(matches!(
        s.update_connector(&moved, "carol").await,
        Err(StoreError::Invalid(_))
    ));
    let mut missing = c3.clone();
    missing.id = ConnectorId(9999);
    assert!(matches!(
        s.update_connector(&missing, "carol").await,
        Err(StoreError::NotFound(m)) if m == "connector 9999"
    ));
    assert_eq!(s.directory_version().await.unwrap(), v + 4);

    // Touch: last_used_at only goes forward; no audit, no version bump.
    let audits = s.list_audit(None, 1000).await.unwrap().len();
    s.touch_connectors(&[
        (c2.id, Timestamp(1000)),
        (c3.id, Timestamp(2000)),
        (ConnectorId(9999), Timestamp(5)),
    ])
    .await
    .unwrap();
    s.touch_connectors(&[(c2.id, Timestamp(500)), (c3.id, Timestamp(3000))])
        .await
        .unwrap();
    assert_eq!(
        s.get_connector(c2.id).await.unwrap().unwrap().last_used_at,
        Some(Timestamp(1000))
    );
    assert_eq!(
        s.get_connector(c3.id).await.unwrap().unwrap().last_used_at,
        Some(Timestamp(3000))
    );
    assert_eq!(s.directory_version().await.unwrap(), v + 4);
    assert_eq!(s.list_audit(None, 1000).await.unwrap().len(), audits);
    // Touch does not change updated_at/by.
    assert_eq!(
        s.get_connector(c2.id).await.unwrap().unwrap().updated_by,
        "bob"
    );

    // Delete.
    s.delete_connector(c2.id, "dave").await.unwrap();
    assert_eq!(s.get_connector(c2.id).await.unwrap(), None);
    assert_eq!(s.directory_version().await.unwrap(), v + 5);
    let a = last_audit(&s).await;
    assert_eq!(
        (a.actor.as_str(), a.action.as_str(), a.tenant_id),
        ("dave", "connector.delete", Some(other.id))
    );
    assert!(matches!(
        s.delete_connector(c2.id, "dave").await,
        Err(StoreError::NotFound(_))
    ));
    // Ids are not reused after a delete.
    let c4 = s
        .add_connector(new_connector(other.id, "again"), "bob")
        .await
        .unwrap();
    assert!(c4.id > c3.id);
}

// ==== from abuse

fn transition(tenant: TenantId, at_ms: i64, from: TenantState, to: TenantState) -> NewTransition {
    NewTransition {
        tenant_id: tenant,
        at_ms,
        from,
        to,
        cause: "detector".into(),
        summary: "block-level signal".into(),
        probation_until_ms: None,
        evidence: r#"{"signals":[]}"#.into(),
        attestation: None,
    }
}

async fn transitions_update_status_audit_and_version(db: TestDb) {
    let s = db.open().await;
    let t = s.create_tenant("acme", &[], "test").await.unwrap();
    let st = s.tenant_status(t.id).await.unwrap().unwrap();
    assert_eq!(st.state, TenantState::Active);
    assert_eq!(st.since_ms, t.created_at.0 * 1000);
    let v0 = s.directory_version().await.unwrap();

    let at = 1_767_225_600_123;
    let (id, v1) = s
        .record_transition(
            &transition(
                t.id,
                at,
                TenantState::Active,
                TenantState::BlockedUnregistered,
            ),
            "detector",
        )
        .await
        .unwrap();
    assert_eq!(v1, v0 + 1);
    assert_eq!(s.directory_version().await.unwrap(), v1);
    let st = s.tenant_status(t.id).await.unwrap().unwrap();
    assert_eq!(st.state, TenantState::BlockedUnregistered);
    assert_eq!(st.since_ms, at);
    assert_eq!(st.reason.as_deref(), Some("block-level signal"));
    assert_eq!(st.changed_by.as_deref(), Some("detector"));
    assert_eq!(
        s.get_tenant(t.id).await.unwrap().unwrap().state,
        TenantState::BlockedUnregistered
    );
    let audit = s.list_audit(Some(t.id), 1).await.unwrap().remove(0);
    assert_eq!(audit.action, "tenant.state");
    assert!(
        audit.detail.contains(&format!(
            "active -> blocked_unregistered: block-level signal (transition {id}"
        )),
        "{}",
        audit.detail
    );

    // Compare-and-set on the state.
    let e = s
        .record_transition(
            &transition(t.id, at + 1, TenantState::Active, TenantState::Warned),
            "detector",
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");

    let mut p = transition(
        t.id,
        at + 10,
        TenantState::BlockedUnregistered,
        TenantState::Probation,
    );
    p.cause = "operator".into();
    p.probation_until_ms = Some(at + 10 + 7 * 86_400_000);
    s.record_transition(&p, "cli:noc").await.unwrap();
    let st = s.tenant_status(t.id).await.unwrap().unwrap();
    assert_eq!(st.probation_until_ms, Some(at + 10 + 7 * 86_400_000));
    let list = s.list_transitions(t.id, 0).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].to, TenantState::Probation);
    assert_eq!(list[0].actor, "cli:noc");
    assert_eq!(list[1].evidence, r#"{"signals":[]}"#);

    // An older writer that knows nothing of state_since_ms: its own time wins.
    s.set_tenant_state(t.id, TenantState::Active, "cli:old", "manual")
        .await
        .unwrap();
    let st = s.tenant_status(t.id).await.unwrap().unwrap();
    assert_eq!(st.state, TenantState::Active);
    assert!((st.since_ms - relayward_core::now().0 * 1000).abs() < 5_000);
    assert_eq!(st.probation_until_ms, None);
    assert_eq!(s.tenant_statuses().await.unwrap().len(), 1);
}

async fn sender_restrictions_limits_forwarded_and_connector_changes(db: TestDb) {
    let s = db.open().await;
    let a = s.create_tenant("a", &[], "test").await.unwrap();
    let b = s.create_tenant("b", &[], "test").await.unwrap();
    let r = |tenant, until| NewSenderRestriction {
        tenant_id: tenant,
        sender: "app@a.example".into(),
        since_ms: 1_000,
        until_ms: until,
        limit: "messages_per_minute".into(),
        action: "block".into(),
        reason: "31 over 30".into(),
    };
    let v0 = s.directory_version().await.unwrap();
    s.add_sender_restriction(&r(a.id, None), "detector")
        .await
        .unwrap();
    s.add_sender_restriction(&r(b.id, Some(5_000)), "detector")
        .await
        .unwrap();
    assert_eq!(s.directory_version().await.unwrap(), v0 + 2);
    assert_eq!(
        s.list_sender_restrictions(None, 2_000, None)
            .await
            .unwrap()
            .len(),
        2
    );
    // b's has ended by 6,000.
    let standing = s.list_sender_restrictions(None, 6_000, None).await.unwrap();
    assert_eq!(standing.len(), 1);
    assert_eq!(standing[0].tenant_id, a.id);
    assert!(standing[0].standing(6_000));

    let lifted = s
        .lift_sender_restrictions(Some(a.id), "app@a.example", 7_000, "cli:noc")
        .await
        .unwrap();
    assert_eq!(lifted.len(), 1);
    assert_eq!(lifted[0].lifted_by.as_deref(), Some("cli:noc"));
    assert!(s
        .list_sender_restrictions(None, 7_000, None)
        .await
        .unwrap()
        .is_empty());
    let recent = s
        .list_sender_restrictions(Some(a.id), 7_000, Some(6_500))
        .await
        .unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].lifted_at_ms, Some(7_000));
    // Nothing standing: nothing lifted.
    assert!(s
        .lift_sender_restrictions(None, "app@a.example", 8_000, "cli:noc")
        .await
        .unwrap()
        .is_empty());
    let audit = s.list_audit(Some(a.id), 1).await.unwrap().remove(0);
    assert_eq!(audit.action, "sender.unrestrict");

    s.set_tenant_sender_limits(a.id, Some(r#"{"action":"block"}"#), "cli:noc")
        .await
        .unwrap();
    assert_eq!(
        s.tenant_sender_limits().await.unwrap(),
        vec![(a.id, r#"{"action":"block"}"#.to_string())]
    );
    s.set_tenant_sender_limits(a.id, None, "cli:noc")
        .await
        .unwrap();
    assert!(s.tenant_sender_limits().await.unwrap().is_empty());

    s.declare_forwarded_domains(a.id, &["list.example".into()], "cli:admin")
        .await
        .unwrap();
    s.declare_forwarded_domains(
        a.id,
        &["list.example".into(), "club.example".into()],
        "cli:admin",
    )
    .await
    .unwrap();
    assert_eq!(
        s.forwarded_domains(a.id).await.unwrap(),
        vec!["club.example".to_string(), "list.example".to_string()]
    );
    assert!(s.forwarded_domains(b.id).await.unwrap().is_empty());

    let c = s
        .add_connector(
            relayward_store::NewConnector {
                tenant_id: a.id,
                name: "edge".into(),
                kind: relayward_core::ConnectorKind::OnPremises,
                ip_ranges: vec!["192.0.2.0/24".parse().unwrap()],
                cert_name: None,
                auth_user: None,
                auth_password_hash: None,
                require_tls: false,
                allow_unregistered: false,
                restrict_domains_to_ips: false,
                restrict_domains_to_cert: false,
            },
            "cli:admin",
        )
        .await
        .unwrap();
    let mut c2 = c.clone();
    c2.allow_unregistered = true;
    s.update_connector(&c2, "cli:admin").await.unwrap();
    let changes = s.connector_changes(a.id, Timestamp(0)).await.unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].action, "connector.update");
    assert!(changes[0]
        .detail
        .contains("allow_unregistered false -> true"));
    // Each names the connector by id, a deleted one too.
    assert!(changes.iter().all(|ch| ch.connector_id == Some(c.id)));
    s.delete_connector(c.id, "cli:admin").await.unwrap();
    let changes = s.connector_changes(a.id, Timestamp(0)).await.unwrap();
    assert_eq!(changes[0].action, "connector.delete");
    assert_eq!(changes[0].connector_id, Some(c.id));
    assert!(s
        .connector_changes(a.id, relayward_core::now() + 10)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .connector_changes(b.id, Timestamp(0))
        .await
        .unwrap()
        .is_empty());
}

// ==== from tokens

async fn tokens_create_list_revoke_touch_audit(db: TestDb) {
    let s = db.open().await;
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
        s.create_token(TokenScope::Tenant(TenantId(999)), "x", "h", "t")
            .await,
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
    s.touch_token(ta, Timestamp(1000)).await.unwrap();
    s.touch_token(ta, Timestamp(500)).await.unwrap();
    assert_eq!(
        s.get_token(ta).await.unwrap().unwrap().last_used_at,
        Some(Timestamp(1000))
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

// ==== from trace

async fn trace_record_and_search(db: TestDb) {
    let s = db.open().await;
    s.record_trace(&[]).await.unwrap();
    let mut events = Vec::new();
    for i in 0..300i64 {
        let mut e = event(1_000_000 + i, TraceKind::Queued);
        e.queue_id = Some(format!("Q{i:04}"));
        e.message_id = Some(format!("<m{i}@acme.example>"));
        e.tenant_id = Some(if i % 2 == 0 { TenantId(1) } else { TenantId(2) });
        e.connector_id = Some(ConnectorId(7));
        e.client_ip = Some("192.0.2.1".into());
        e.sender = Some(format!("User{}@Acme.Example", i % 10));
        e.recipient = Some(format!("rcpt{}@dest.example", i % 3));
        e.sender_class = Some(SenderClass::Registered);
        e.reply = Some("250 2.0.0 OK".into());
        e.detail = Some("d".into());
        e.node = (i % 2 == 1).then(|| format!("node-{}", i % 3));
        events.push(e);
    }
    let mut refused = event(2_000_000, TraceKind::Refused);
    refused.sender = Some("spam@bad.example".into());
    refused.reply = Some("550 5.7.64 TenantAttribution; Relay Access Denied".into());
    events.push(refused.clone());
    let started = std::time::Instant::now();
    s.record_trace(&events).await.unwrap();
    eprintln!(
        "recorded {} events in {:?}",
        events.len(),
        started.elapsed()
    );

    let q = TraceQuery::default;
    // Default limit 100, newest first.
    let r = s.search_trace(&q()).await.unwrap();
    assert_eq!(r.len(), 100);
    assert_eq!(r[0].kind, TraceKind::Refused);
    assert!(r.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
    let got = &r[0];
    assert!(got.id > 0);
    assert_eq!(got.reply, refused.reply);
    assert_eq!(got.queue_id, None);
    assert_eq!(got.sender_class, None);

    let all = s
        .search_trace(&TraceQuery { limit: 1000, ..q() })
        .await
        .unwrap();
    assert_eq!(all.len(), 301);
    // Round trip of every field.
    let e5 = all
        .iter()
        .find(|e| e.queue_id.as_deref() == Some("Q0005"))
        .unwrap();
    assert_eq!(
        TraceEvent {
            id: 0,
            ..e5.clone()
        },
        events[5]
    );

    // By tenant.
    let r = s
        .search_trace(&TraceQuery {
            tenant_id: Some(TenantId(2)),
            limit: 1000,
            ..q()
        })
        .await
        .unwrap();
    assert_eq!(r.len(), 150);
    assert!(r.iter().all(|e| e.tenant_id == Some(TenantId(2))));
    // By sender, case-insensitively.
    let r = s
        .search_trace(&TraceQuery {
            sender: Some("user3@acme.example".into()),
            limit: 1000,
            ..q()
        })
        .await
        .unwrap();
    assert_eq!(r.len(), 30);
    // By recipient.
    let r = s
        .search_trace(&TraceQuery {
            recipient: Some("RCPT0@dest.example".into()),
            limit: 1000,
            ..q()
        })
        .await
        .unwrap();
    assert_eq!(r.len(), 100);
    // By message id, with or without brackets.
    for m in ["<m42@acme.example>", "m42@acme.example"] {
        let r = s
            .search_trace(&TraceQuery {
                message_id: Some(m.into()),
                ..q()
            })
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "{m}");
        assert_eq!(r[0].queue_id.as_deref(), Some("Q0042"));
    }
    // By queue id.
    let r = s
        .search_trace(&TraceQuery {
            queue_id: Some("Q0299".into()),
            ..q()
        })
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].at_ms, 1_000_299);
    // By time range (inclusive), combined with tenant and a limit.
    let r = s
        .search_trace(&TraceQuery {
            since_ms: Some(1_000_010),
            until_ms: Some(1_000_019),
            ..q()
        })
        .await
        .unwrap();
    assert_eq!(r.len(), 10);
    assert_eq!(r[0].at_ms, 1_000_019);
    let r = s
        .search_trace(&TraceQuery {
            tenant_id: Some(TenantId(1)),
            since_ms: Some(1_000_010),
            until_ms: Some(1_000_019),
            limit: 3,
            ..q()
        })
        .await
        .unwrap();
    assert_eq!(
        r.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
        vec![1_000_018, 1_000_016, 1_000_014]
    );
    // Nothing matches.
    let r = s
        .search_trace(&TraceQuery {
            sender: Some("nobody@x.example".into()),
            ..q()
        })
        .await
        .unwrap();
    assert!(r.is_empty());
}

fn received(at_ms: i64, queue_id: &str, connector: ConnectorId, class: SenderClass) -> TraceEvent {
    let mut e = TraceEvent::new(TraceKind::Received);
    e.at_ms = at_ms;
    e.queue_id = Some(queue_id.into());
    e.tenant_id = Some(TenantId(1));
    e.connector_id = Some(connector);
    e.sender_class = Some(class);
    e
}

async fn unregistered_count_per_connector(db: TestDb) {
    let s = db.open().await;
    let mut events = vec![
        // Two recipients of one message count once.
        received(1000, "q1", ConnectorId(7), SenderClass::Unregistered),
        received(1000, "q1", ConnectorId(7), SenderClass::Unregistered),
        received(1100, "q2", ConnectorId(7), SenderClass::Unregistered),
        received(1200, "q3", ConnectorId(8), SenderClass::Unregistered),
        // Too old, registered, refused, other tenant: not counted.
        received(10, "q4", ConnectorId(8), SenderClass::Unregistered),
        received(1300, "q5", ConnectorId(9), SenderClass::Registered),
    ];
    let mut refused = received(1300, "q6", ConnectorId(9), SenderClass::Unregistered);
    refused.kind = TraceKind::Refused;
    events.push(refused);
    let mut other = received(1300, "q7", ConnectorId(9), SenderClass::Unregistered);
    other.tenant_id = Some(TenantId(2));
    events.push(other);
    s.record_trace(&events).await.unwrap();

    let counts = s
        .count_received_by_connector(TenantId(1), SenderClass::Unregistered, 500)
        .await
        .unwrap();
    assert_eq!(counts, [(ConnectorId(7), 2), (ConnectorId(8), 1)]);
    assert!(s
        .count_received_by_connector(TenantId(3), SenderClass::Unregistered, 0)
        .await
        .unwrap()
        .is_empty());
}

async fn trace_pages_follow_each_other(db: TestDb) {
    let s = db.open().await;
    // Many events share a millisecond: paging must neither skip nor repeat them.
    let mut events = Vec::new();
    for i in 0..25 {
        let mut e = TraceEvent::new(TraceKind::Received);
        e.at_ms = 1000 + (i / 10) as i64;
        e.tenant_id = Some(if i % 5 == 0 { TenantId(2) } else { TenantId(1) });
        e.sender = Some(format!("User{}@Example.com", i % 2));
        events.push(e);
    }
    s.record_trace(&events).await.unwrap();

    let q = TraceQuery {
        tenant_id: Some(TenantId(1)),
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
            tenant_id: Some(TenantId(1)),
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

// ==== from traffic

const HOUR: i64 = 3_600_000;

fn traffic_event(
    at_ms: i64,
    kind: TraceKind,
    tenant: Option<TenantId>,
    queue_id: Option<&str>,
    class: Option<SenderClass>,
) -> TraceEvent {
    let mut e = TraceEvent::new(kind);
    e.at_ms = at_ms;
    e.tenant_id = tenant;
    e.queue_id = queue_id.map(str::to_string);
    e.sender_class = class;
    e
}

async fn traffic_messages_and_refusals_per_tenant_and_hour(db: TestDb) {
    let s = db.open().await;
    let a = s.create_tenant("a", &[], "test").await.unwrap().id;
    let b = s.create_tenant("b", &[], "test").await.unwrap().id;
    let h0 = 480_000 * HOUR;
    use SenderClass::*;
    use TraceKind::*;
    s.record_trace(&[
        // One registered message to three recipients is one message.
        traffic_event(h0 + 10, Received, Some(a), Some("Q1"), Some(Registered)),
        traffic_event(h0 + 10, Received, Some(a), Some("Q1"), Some(Registered)),
        traffic_event(h0 + 10, Received, Some(a), Some("Q1"), Some(Registered)),
        traffic_event(h0 + 20, Received, Some(a), Some("Q2"), Some(Unregistered)),
        traffic_event(h0 + 30, Received, Some(a), Some("Q3"), Some(Null)),
        // Its later steps are not traffic.
        traffic_event(h0 + 40, Delivered, Some(a), Some("Q1"), Some(Registered)),
        traffic_event(h0 + 50, Refused, Some(a), None, Some(Unregistered)),
        traffic_event(h0 + 60, Refused, Some(a), None, Some(Unregistered)),
        // The next hour, tenant b, and a refusal attributed to nobody.
        traffic_event(h0 + HOUR, Received, Some(a), Some("Q4"), Some(Unregistered)),
        traffic_event(
            h0 + HOUR + 5,
            Received,
            Some(b),
            Some("Q5"),
            Some(Registered),
        ),
        traffic_event(h0 + HOUR + 6, Refused, None, None, None),
        // Outside the range asked for.
        traffic_event(h0 - 1, Received, Some(a), Some("Q0"), Some(Registered)),
        traffic_event(
            h0 + 2 * HOUR,
            Received,
            Some(a),
            Some("Q6"),
            Some(Registered),
        ),
    ])
    .await
    .unwrap();
    let hour = |tenant_id, start_ms, registered, unregistered, null_sender, refused| TrafficHour {
        tenant_id,
        start_ms,
        registered,
        unregistered,
        null_sender,
        refused,
    };
    assert_eq!(
        s.traffic_hours(Some(a), h0, h0 + 2 * HOUR).await.unwrap(),
        [hour(a, h0, 1, 1, 1, 2), hour(a, h0 + HOUR, 0, 1, 0, 0),]
    );
    assert_eq!(
        s.traffic_hours(None, h0, h0 + 2 * HOUR).await.unwrap(),
        [
            hour(a, h0, 1, 1, 1, 2),
            hour(a, h0 + HOUR, 0, 1, 0, 0),
            hour(b, h0 + HOUR, 1, 0, 0, 0),
        ]
    );
    assert!(s
        .traffic_hours(Some(b), h0, h0 + HOUR)
        .await
        .unwrap()
        .is_empty());
}

// ==== from dkim

async fn dkim_keys_are_recorded_replaced_and_audited(db: TestDb) {
    let s = db.open().await;
    let t = s.create_tenant("acme", &[], "test").await.unwrap();
    let v0 = s.directory_version().await.unwrap();
    assert!(s.get_dkim_key("acme.example").await.unwrap().is_none());

    let k = s
        .set_dkim_key("acme.example", Some(t.id), "s1", "ed25519", "test")
        .await
        .unwrap();
    assert_eq!(k.selector, "s1");
    assert!(s.directory_version().await.unwrap() > v0);
    s.set_dkim_key("acme.example", Some(t.id), "s2", "rsa2048", "test")
        .await
        .unwrap();
    s.set_dkim_key("srs.relay.example", None, "relayward", "ed25519", "test")
        .await
        .unwrap();
    let all = s.list_dkim_keys().await.unwrap();
    assert_eq!(all.len(), 2);
    let acme = s.get_dkim_key("acme.example").await.unwrap().unwrap();
    assert_eq!(
        (acme.selector.as_str(), acme.algorithm.as_str()),
        ("s2", "rsa2048")
    );
    assert_eq!(acme.tenant_id, Some(t.id));
    assert_eq!(all[1].tenant_id, None);

    let audit = s.list_audit(Some(t.id), 10).await.unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "dkim.key" && a.detail == "selector s1 -> s2 (rsa2048)"));
    assert!(s
        .set_dkim_key("x.example", Some(TenantId(9999)), "s", "ed25519", "test")
        .await
        .is_err());
}

// ==== from suppression

const DAY: i64 = 86_400;

fn bounce(tenant: Option<TenantId>, address: &str, at: i64, days: Option<i64>) -> Suppression {
    Suppression {
        tenant_id: tenant,
        address: address.into(),
        source: SuppressionSource::HardBounce,
        reason: "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown".into(),
        created_at: Timestamp(at),
        created_by: String::new(),
        expires_at: (days.map(|d| at + d * DAY)).map(Timestamp),
    }
}

async fn suppression_entries_expire_and_a_repeat_bounce_extends_them(db: TestDb) {
    let s = db.open().await;
    let t = s.create_tenant("acme", &[], "test").await.unwrap();
    let t0 = 1_700_000_000;
    let dir_version = s.directory_version().await.unwrap();
    assert_eq!(s.suppression_version().await.unwrap(), 0);

    let e = s
        .add_suppression(
            &bounce(Some(t.id), "Gone@Example.org", t0, Some(14)),
            "relay",
        )
        .await
        .unwrap();
    assert_eq!(e.address, "gone@example.org");
    assert_eq!(e.created_by, "relay");
    let v1 = s.suppression_version().await.unwrap();
    assert!(v1 > 0);
    // The directory is not reloaded for a bounce.
    assert_eq!(s.directory_version().await.unwrap(), dir_version);

    let listed = s
        .list_suppressions(Some(t.id), Timestamp(t0 + DAY))
        .await
        .unwrap();
    assert_eq!(listed, vec![e.clone()]);
    assert!(s
        .list_suppressions(Some(t.id), Timestamp(t0 + 14 * DAY))
        .await
        .unwrap()
        .is_empty());

    // An earlier bounce's shorter entry changes nothing.
    let kept = s
        .add_suppression(
            &bounce(Some(t.id), "gone@example.org", t0 - DAY, Some(14)),
            "relay",
        )
        .await
        .unwrap();
    assert_eq!(kept, e);
    assert_eq!(s.suppression_version().await.unwrap(), v1);

    // A repeat bounce ten days later: fourteen days from then.
    let later = s
        .add_suppression(
            &bounce(Some(t.id), "gone@example.org", t0 + 10 * DAY, Some(14)),
            "relay",
        )
        .await
        .unwrap();
    assert_eq!(later.expires_at, Some(Timestamp(t0 + 24 * DAY)));
    let listed = s
        .list_suppressions(Some(t.id), Timestamp(t0 + 20 * DAY))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].expires_at, Some(Timestamp(t0 + 24 * DAY)));

    // Expired, then bounced again: a fresh entry on the same row.
    let again = s
        .add_suppression(
            &bounce(Some(t.id), "gone@example.org", t0 + 30 * DAY, Some(14)),
            "relay",
        )
        .await
        .unwrap();
    assert_eq!(again.created_at, Timestamp(t0 + 30 * DAY));

    // Automatic adds are not in the audit log.
    assert!(!s
        .list_audit(None, 100)
        .await
        .unwrap()
        .iter()
        .any(|a| a.action.starts_with("suppression.")));
    assert!(s
        .add_suppression(
            &bounce(Some(TenantId(9999)), "x@example.org", t0, Some(1)),
            "relay"
        )
        .await
        .is_err());
}

async fn suppression_tenant_and_global_lists_apart_people_audited(db: TestDb) {
    let s = db.open().await;
    let acme = s.create_tenant("acme", &[], "test").await.unwrap();
    let other = s.create_tenant("other", &[], "test").await.unwrap();
    let t0 = 1_700_000_000;
    let manual = |tenant, address: &str| Suppression {
        source: SuppressionSource::Manual,
        reason: "asked to stop".into(),
        ..bounce(tenant, address, t0, None)
    };
    s.add_suppression(&manual(Some(acme.id), "a@example.org"), "cli:ops")
        .await
        .unwrap();
    s.add_suppression(&manual(None, "a@example.org"), "token:1/operator")
        .await
        .unwrap();
    s.add_suppression(&manual(None, "trap@example.org"), "token:1/operator")
        .await
        .unwrap();

    let acme_list = s
        .list_suppressions(Some(acme.id), Timestamp(t0))
        .await
        .unwrap();
    assert_eq!(acme_list.len(), 1);
    assert_eq!(acme_list[0].tenant_id, Some(acme.id));
    assert!(s
        .list_suppressions(Some(other.id), Timestamp(t0))
        .await
        .unwrap()
        .is_empty());
    let global = s
        .list_suppressions(None, Timestamp(t0 + 1000 * DAY))
        .await
        .unwrap();
    assert_eq!(
        global
            .iter()
            .map(|g| g.address.as_str())
            .collect::<Vec<_>>(),
        ["a@example.org", "trap@example.org"]
    );
    assert!(global.iter().all(|g| g.tenant_id.is_none()));

    // A bounce does not shorten a manual entry that never expires.
    let kept = s
        .add_suppression(
            &bounce(Some(acme.id), "a@example.org", t0 + DAY, Some(14)),
            "relay",
        )
        .await
        .unwrap();
    assert_eq!(kept.source, SuppressionSource::Manual);
    assert_eq!(kept.expires_at, None);

    // Removing from one list leaves the other.
    assert!(!s
        .remove_suppression(Some(other.id), "a@example.org", Timestamp(t0), "cli:ops")
        .await
        .unwrap());
    assert!(s
        .remove_suppression(Some(acme.id), "A@example.org", Timestamp(t0), "cli:ops")
        .await
        .unwrap());
    assert!(!s
        .remove_suppression(Some(acme.id), "a@example.org", Timestamp(t0), "cli:ops")
        .await
        .unwrap());
    assert!(s
        .list_suppressions(Some(acme.id), Timestamp(t0))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.list_suppressions(None, Timestamp(t0))
            .await
            .unwrap()
            .len(),
        2
    );

    let audit = s.list_audit(None, 100).await.unwrap();
    let acme_audit = s.list_audit(Some(acme.id), 100).await.unwrap();
    let actions = |log: &[relayward_core::AuditEntry]| {
        log.iter()
            .filter(|a| a.action.starts_with("suppression."))
            .map(|a| {
                (
                    a.action.clone(),
                    a.tenant_id,
                    a.actor.clone(),
                    a.object.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        actions(&acme_audit),
        [
            (
                "suppression.remove".to_string(),
                Some(acme.id),
                "cli:ops".to_string(),
                "a@example.org".to_string()
            ),
            (
                "suppression.add".to_string(),
                Some(acme.id),
                "cli:ops".to_string(),
                "a@example.org".to_string()
            ),
        ]
    );
    assert_eq!(
        actions(&audit)
            .iter()
            .filter(|a| a.1.is_none() && a.2 == "token:1/operator")
            .count(),
        2
    );
    assert!(acme_audit
        .iter()
        .any(|a| a.detail == "tenant list, until removed: asked to stop"));
}

async fn suppression_updates_carry_changes_and_removals(db: TestDb) {
    let s = db.open().await;
    let t = s.create_tenant("acme", &[], "test").await.unwrap();
    let t0 = 1_700_000_000;
    s.add_suppression(&bounce(Some(t.id), "a@example.org", t0, Some(14)), "relay")
        .await
        .unwrap();
    s.add_suppression(
        &bounce(Some(t.id), "old@example.org", t0 - 20 * DAY, Some(14)),
        "relay",
    )
    .await
    .unwrap();
    let all = s.suppression_updates(0, Timestamp(t0)).await.unwrap();
    assert_eq!(all.version, s.suppression_version().await.unwrap());
    assert_eq!(
        all.changed
            .iter()
            .map(|c| c.address.as_str())
            .collect::<Vec<_>>(),
        ["a@example.org"]
    );
    assert!(all.removed.is_empty());

    s.remove_suppression(Some(t.id), "a@example.org", Timestamp(t0), "cli:ops")
        .await
        .unwrap();
    s.add_suppression(&bounce(None, "b@example.org", t0, None), "relay")
        .await
        .unwrap();
    let since = s
        .suppression_updates(all.version, Timestamp(t0))
        .await
        .unwrap();
    assert_eq!(since.version, all.version + 2);
    assert_eq!(
        since.removed,
        vec![(Some(t.id), "a@example.org".to_string())]
    );
    assert_eq!(since.changed.len(), 1);
    assert_eq!(since.changed[0].tenant_id, None);
    let nothing = s
        .suppression_updates(since.version, Timestamp(t0))
        .await
        .unwrap();
    assert!(nothing.changed.is_empty() && nothing.removed.is_empty());
}

// ==== from reputation

async fn reputation_hours_add_up_and_age_out(db: TestDb) {
    let store = db.open().await;
    let t = store.create_tenant("acme", &[], "test").await.unwrap().id;
    let row = |hour, delivered, bounces, complaints| ReputationHour {
        tenant_id: t,
        hour,
        delivered,
        bounces,
        complaints,
    };
    store
        .add_reputation_hours(&[row(100, 10, 1, 0), row(101, 5, 0, 1)], 0)
        .await
        .unwrap();
    // A second relay's counts for the same hour add up; a deleted tenant's are dropped.
    let gone = ReputationHour {
        tenant_id: TenantId(t.0 + 1000),
        ..row(101, 1, 1, 1)
    };
    store
        .add_reputation_hours(&[row(101, 7, 2, 0), gone], 0)
        .await
        .unwrap();
    assert_eq!(
        store.reputation_hours(Some(t), 0).await.unwrap(),
        vec![row(100, 10, 1, 0), row(101, 12, 2, 1)]
    );
    assert_eq!(store.reputation_hours(None, 101).await.unwrap().len(), 1);
    // Hours before the window go with the next write.
    store.add_reputation_hours(&[], 101).await.unwrap();
    assert_eq!(
        store.reputation_hours(None, 0).await.unwrap(),
        vec![row(101, 12, 2, 1)]
    );
}

// ---------------------------------------------------------------------------------------------
// Restriction-state transitions under contention

async fn transitions_are_compare_and_set(db: TestDb) {
    let s = db.open().await;
    let t = s.create_tenant("acme", &[], "test").await.unwrap();
    let e = s
        .record_transition(
            &transition(
                TenantId(9999),
                1_000,
                TenantState::Active,
                TenantState::Warned,
            ),
            "detector",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::NotFound(m) if m == "tenant 9999"),
        "{e}"
    );

    // Eight writers at once, all having seen `active`: one wins, the others are told.
    let v0 = s.directory_version().await.unwrap();
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.record_transition(
                    &transition(t.id, 1_000 + i, TenantState::Active, TenantState::Warned),
                    "detector",
                )
                .await
            })
        })
        .collect();
    let mut won = Vec::new();
    for w in writers {
        match w.await.unwrap() {
            Ok(r) => won.push(r),
            Err(StoreError::Conflict(m)) => {
                assert_eq!(m, "tenant acme is in state warned, not active")
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(won[0].1, v0 + 1);
    assert_eq!(s.directory_version().await.unwrap(), v0 + 1);
    assert_eq!(s.list_transitions(t.id, 0).await.unwrap().len(), 1);
    let audit = s.list_audit(Some(t.id), 100).await.unwrap();
    assert_eq!(
        audit.iter().filter(|a| a.action == "tenant.state").count(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Header From allowances

async fn header_from_allowances(db: TestDb) {
    let s = db.open().await;
    let acme = s.create_tenant("acme", &[], "op").await.unwrap();
    let other = s.create_tenant("other", &[], "op").await.unwrap();
    let edge = s
        .add_connector(new_connector(acme.id, "edge"), "op")
        .await
        .unwrap();
    let elsewhere = s
        .add_connector(new_connector(other.id, "elsewhere"), "op")
        .await
        .unwrap();
    let allowed =
        |domain: &str, connector: Option<ConnectorId>| relayward_core::HeaderFromAllowed {
            tenant_id: acme.id,
            domain: domain.into(),
            connector_id: connector,
            declared_at: Timestamp(0),
            declared_by: String::new(),
        };
    let v0 = s.directory_version().await.unwrap();
    s.allow_header_from(&allowed("partner.example", None), "alice")
        .await
        .unwrap();
    s.allow_header_from(&allowed("partner.example", Some(edge.id)), "alice")
        .await
        .unwrap();
    s.allow_header_from(&allowed("news.example", Some(edge.id)), "bob")
        .await
        .unwrap();
    assert_eq!(s.directory_version().await.unwrap(), v0 + 3);
    let a = last_audit(&s).await;
    assert_eq!(
        (a.actor.as_str(), a.action.as_str(), a.object.as_str()),
        ("bob", "header_from.allow", "header_from news.example")
    );
    assert_eq!(
        a.detail,
        format!(
            "header From news.example allowed with registered senders through connector {}",
            edge.id
        )
    );

    // Declared already (through any connector, or through that one): conflict, no bump.
    for c in [None, Some(edge.id)] {
        let e = s
            .allow_header_from(&allowed("partner.example", c), "alice")
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Conflict(m) if m == "header From domain partner.example is already allowed"),
            "{e}"
        );
    }
    // Another tenant's connector, an unknown tenant: not found.
    assert!(matches!(
        s.allow_header_from(&allowed("x.example", Some(elsewhere.id)), "alice").await,
        Err(StoreError::NotFound(m)) if m == format!("connector {}", elsewhere.id)
    ));
    let mut unknown = allowed("x.example", None);
    unknown.tenant_id = TenantId(9999);
    assert!(matches!(
        s.allow_header_from(&unknown, "alice").await,
        Err(StoreError::NotFound(m)) if m == "tenant 9999"
    ));
    assert_eq!(s.directory_version().await.unwrap(), v0 + 3);

    // By domain, the one through any connector first.
    let list = s.list_header_from_allowed(acme.id).await.unwrap();
    assert_eq!(
        list.iter()
            .map(|h| (h.domain.as_str(), h.connector_id))
            .collect::<Vec<_>>(),
        [
            ("news.example", Some(edge.id)),
            ("partner.example", None),
            ("partner.example", Some(edge.id)),
        ]
    );
    assert_eq!(list[0].declared_by, "bob");
    assert!((list[0].declared_at.0 - now().0).abs() < 60);
    assert!(s
        .list_header_from_allowed(other.id)
        .await
        .unwrap()
        .is_empty());
    let dir = s.load_directory().await.unwrap();
    assert_eq!(dir.header_from_allowed.len(), 3);

    // Withdrawn: exactly the one declared (any connector is not that connector).
    s.disallow_header_from(acme.id, "partner.example", None, "carol")
        .await
        .unwrap();
    assert_eq!(last_audit(&s).await.action, "header_from.disallow");
    assert!(matches!(
        s.disallow_header_from(acme.id, "partner.example", None, "carol").await,
        Err(StoreError::NotFound(m)) if m == "header From domain partner.example"
    ));
    s.disallow_header_from(acme.id, "partner.example", Some(edge.id), "carol")
        .await
        .unwrap();
    assert_eq!(s.directory_version().await.unwrap(), v0 + 5);
    // Deleting the connector takes its declarations with it.
    s.delete_connector(edge.id, "op").await.unwrap();
    assert!(s
        .list_header_from_allowed(acme.id)
        .await
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// Cluster nodes

async fn nodes_heartbeat_and_list(db: TestDb) {
    let s = db.open().await;
    let v0 = s.directory_version().await.unwrap();
    let node = |name: &str, seen: i64| NodeRecord {
        name: name.into(),
        version: "0.1.0".into(),
        started_at: Timestamp(1_000),
        last_seen: Timestamp(seen),
        queue_depth: 3,
        smtp_addr: Some("192.0.2.10:25".into()),
        api_addr: None,
    };
    assert!(s.list_nodes(Timestamp(0)).await.unwrap().is_empty());
    s.heartbeat_node(&node("node_a", 2_000)).await.unwrap();
    s.heartbeat_node(&node("nodeA", 2_000)).await.unwrap();
    s.heartbeat_node(&node("node-b", 1_500)).await.unwrap();
    // By name, bytewise.
    let names = |nodes: Vec<NodeRecord>| nodes.into_iter().map(|n| n.name).collect::<Vec<_>>();
    assert_eq!(
        names(s.list_nodes(Timestamp(0)).await.unwrap()),
        ["node-b", "nodeA", "node_a"]
    );
    assert_eq!(
        s.list_nodes(Timestamp(1_500)).await.unwrap()[0],
        node("node-b", 1_500)
    );

    // A later heartbeat replaces the node's row.
    let later = NodeRecord {
        version: "0.2.0".into(),
        started_at: Timestamp(2_050),
        queue_depth: 12_345,
        smtp_addr: None,
        api_addr: Some("[2001:db8::1]:8080".into()),
        ..node("node_a", 2_100)
    };
    s.heartbeat_node(&later).await.unwrap();
    assert_eq!(
        s.list_nodes(Timestamp(2_000)).await.unwrap(),
        [node("nodeA", 2_000), later.clone()]
    );
    assert_eq!(s.list_nodes(Timestamp(2_050)).await.unwrap(), [later]);
    assert!(s.list_nodes(Timestamp(3_000)).await.unwrap().is_empty());
    // A depth beyond the column's range is kept as its largest value.
    let deep = NodeRecord {
        queue_depth: u64::MAX,
        ..node("deep", 5_000)
    };
    s.heartbeat_node(&deep).await.unwrap();
    assert_eq!(
        s.list_nodes(Timestamp(5_000)).await.unwrap()[0].queue_depth,
        i64::MAX as u64
    );
    assert!(matches!(
        s.heartbeat_node(&node(" ", 1)).await,
        Err(StoreError::Invalid(_))
    ));
    // Not a directory change, and not audited.
    assert_eq!(s.directory_version().await.unwrap(), v0);
    assert!(s.list_audit(None, 10).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Opening

async fn reopen_keeps_data_and_schema(db: TestDb) {
    let s = db.open().await;
    assert_eq!(s.directory_version().await.unwrap(), 1);
    assert_eq!(s.suppression_version().await.unwrap(), 0);
    s.create_tenant("acme", &[], "op").await.unwrap();
    drop(s);
    // Migrations already applied: nothing to do, data kept.
    let s = db.open().await;
    assert_eq!(s.list_tenants().await.unwrap().len(), 1);
    assert_eq!(s.directory_version().await.unwrap(), 2);
    // PostgreSQL's other URL scheme names the same database.
    if let Some(rest) = db.url.strip_prefix("postgres://") {
        let s = relayward_store::open(&format!("postgresql://{rest}"))
            .await
            .unwrap();
        assert_eq!(s.directory_version().await.unwrap(), 2);
    }
}

/// Several processes starting at once on a new database: each migrates it or waits for the
/// one that does, and all open cleanly.
async fn concurrent_open_of_a_fresh_database(db: TestDb) {
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { relayward_store::open(&url).await })
        })
        .collect();
    for o in opens {
        let s = o.await.unwrap().unwrap();
        assert_eq!(s.directory_version().await.unwrap(), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrent writers

/// Writers on two stores (two nodes) at once, on the same rows: every change gets its own
/// directory version, a uniqueness race is a conflict, and nothing deadlocks or fails.
async fn concurrent_changes_take_turns(db: TestDb) {
    let s1 = db.open().await;
    let s2 = db.open().await;
    let t = s1.create_tenant("acme", &[], "test").await.unwrap();
    let mut connectors = Vec::new();
    for name in ["c1", "c2", "c3"] {
        connectors.push(
            s1.add_connector(new_connector(t.id, name), "test")
                .await
                .unwrap()
                .id,
        );
    }
    let v0 = s1.directory_version().await.unwrap();
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let s = if w % 2 == 0 { s1.clone() } else { s2.clone() };
            let mut connectors = connectors.clone();
            if w % 2 == 1 {
                connectors.reverse();
            }
            tokio::spawn(async move {
                for i in 0..10i64 {
                    s.add_domain(
                        new_domain(t.id, &format!("w{w}-{i}.example"), false),
                        "test",
                    )
                    .await
                    .unwrap();
                    // The same address, bounced on every node.
                    s.add_suppression(
                        &Suppression {
                            tenant_id: Some(t.id),
                            address: "gone@example.org".into(),
                            source: SuppressionSource::HardBounce,
                            reason: "550 5.1.1 unknown".into(),
                            created_at: Timestamp(1_000 + i),
                            created_by: String::new(),
                            expires_at: Some(Timestamp(1_000 + i + 86_400)),
                        },
                        "relay",
                    )
                    .await
                    .unwrap();
                    // The same rows in another order on every other writer.
                    let used: Vec<_> = connectors.iter().map(|c| (*c, Timestamp(i))).collect();
                    s.touch_connectors(&used).await.unwrap();
                    let mut hours: Vec<_> = (100..103)
                        .map(|hour| ReputationHour {
                            tenant_id: t.id,
                            hour,
                            delivered: 1,
                            bounces: 0,
                            complaints: 0,
                        })
                        .collect();
                    if w % 2 == 1 {
                        hours.reverse();
                    }
                    s.add_reputation_hours(&hours, 0).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(s1.directory_version().await.unwrap(), v0 + 60);
    assert_eq!(s2.list_domains(Some(t.id)).await.unwrap().len(), 60);
    let listed = s1
        .list_suppressions(Some(t.id), Timestamp(1_000))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].expires_at, Some(Timestamp(1_009 + 86_400)));
    let hours = s2.reputation_hours(Some(t.id), 0).await.unwrap();
    assert_eq!(
        hours
            .iter()
            .map(|h| (h.hour, h.delivered))
            .collect::<Vec<_>>(),
        [(100, 60), (101, 60), (102, 60)]
    );
    for c in &connectors {
        let got = s1.get_connector(*c).await.unwrap().unwrap();
        assert_eq!(got.last_used_at, Some(Timestamp(9)));
    }

    // Uniqueness races: one wins, the others are conflicts.
    let racers: Vec<_> = (0..4)
        .map(|i| {
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            tokio::spawn(async move { s.create_tenant("contested", &[], "test").await })
        })
        .collect();
    let mut created = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(_) => created += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(created, 1);
    let mut tenants = Vec::new();
    for i in 0..4 {
        tenants.push(
            s1.create_tenant(&format!("claimant{i}"), &[], "test")
                .await
                .unwrap()
                .id,
        );
    }
    let racers: Vec<_> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            let t = *t;
            tokio::spawn(async move {
                s.add_domain(new_domain(t, "shared.example", true), "test")
                    .await
            })
        })
        .collect();
    let mut verified = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(_) => verified += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(verified, 1);
}

const CHILD_URL: &str = "RELAYWARD_CONFORMANCE_CHILD_URL";
const CHILD_ROLE: &str = "RELAYWARD_CONFORMANCE_CHILD_ROLE";
const CHILD_START: &str = "RELAYWARD_CONFORMANCE_CHILD_START_MS";
const RACE_TENANTS: usize = 50;
/// Domains each child adds, interleaved with its first transitions.
const RACE_DOMAINS: usize = 25;
/// The children take the tenants in step, one every this many milliseconds.
const RACE_SLOT_MS: i64 = 20;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Two processes (this test binary, running `two_process_child`) on one database at once:
/// both make the same 50 transitions from the same state, and add domains in between. Each
/// transition is made exactly once, every change gets its own directory version, and neither
/// process sees an error other than the conflicts (no "database is locked").
async fn two_processes_race(db: TestDb) {
    let s = db.open().await;
    let mut tenants = Vec::new();
    for i in 0..RACE_TENANTS {
        let name = format!("race-{i:02}");
        tenants.push(s.create_tenant(&name, &[], "test").await.unwrap().id);
    }
    let v0 = s.directory_version().await.unwrap();
    let start = now_ms() + 1_500;
    let exe = std::env::current_exe().unwrap();
    let child = |role: &str| {
        tokio::process::Command::new(&exe)
            .args(["--exact", "two_process_child", "--nocapture"])
            .env(CHILD_URL, &db.url)
            .env(CHILD_ROLE, role)
            .env(CHILD_START, start.to_string())
            .output()
    };
    let (a, b) = tokio::join!(child("a"), child("b"));
    let (mut ok, mut conflicts, mut versions) = (0, 0, Vec::new());
    for out in [a.unwrap(), b.unwrap()] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
        let result = stdout
            .lines()
            .find_map(|l| l.strip_prefix("RACE "))
            .unwrap_or_else(|| panic!("no result from the child:\n{stdout}\n{stderr}"));
        eprintln!("child: {result}");
        for field in result.split(' ') {
            match field.split_once('=').unwrap() {
                ("ok", n) => ok += n.parse::<usize>().unwrap(),
                ("conflicts", n) => conflicts += n.parse::<usize>().unwrap(),
                ("versions", "") => {}
                ("versions", v) => versions.extend(v.split(',').map(|v| v.parse::<i64>().unwrap())),
                (k, _) => panic!("unexpected {k} in {result}"),
            }
        }
    }
    assert_eq!(ok, RACE_TENANTS);
    assert_eq!(conflicts, RACE_TENANTS);
    let mut distinct = versions.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), RACE_TENANTS, "{versions:?}");

    let last = s.directory_version().await.unwrap();
    assert_eq!(last, v0 + (RACE_TENANTS + 2 * RACE_DOMAINS) as i64);
    assert!(distinct.iter().all(|v| *v > v0 && *v <= last));
    for t in &tenants {
        let st = s.tenant_status(*t).await.unwrap().unwrap();
        assert_eq!(st.state, TenantState::Warned);
        assert_eq!(s.list_transitions(*t, 0).await.unwrap().len(), 1);
    }
    let dir = s.load_directory().await.unwrap();
    assert_eq!(dir.version, last);
    assert_eq!(dir.domains.len(), 2 * RACE_DOMAINS);
    let audit = s.list_audit(None, 1_000).await.unwrap();
    let count = |action: &str| audit.iter().filter(|a| a.action == action).count();
    assert_eq!(count("tenant.state"), RACE_TENANTS);
    assert_eq!(count("domain.add"), 2 * RACE_DOMAINS);
}

/// Child half of `two_processes_race`: does nothing unless run by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_process_child() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let role = std::env::var(CHILD_ROLE).unwrap();
    let start: i64 = std::env::var(CHILD_START).unwrap().parse().unwrap();
    let s = relayward_store::open(&url).await.unwrap();
    let tenants: Vec<TenantId> = s
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.name.starts_with("race-"))
        .map(|t| t.id)
        .collect();
    assert_eq!(tenants.len(), RACE_TENANTS);
    let (mut ok, mut conflicts, mut versions) = (0, 0, Vec::new());
    for (i, t) in tenants.iter().enumerate() {
        // Both children try tenant i at the same moment, rather than one trailing the other
        // through the list.
        let wait = start + i as i64 * RACE_SLOT_MS - now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        let tr = transition(
            *t,
            start + i as i64,
            TenantState::Active,
            TenantState::Warned,
        );
        match s.record_transition(&tr, &format!("child-{role}")).await {
            Ok((_, v)) => {
                ok += 1;
                versions.push(v.to_string());
            }
            Err(StoreError::Conflict(_)) => conflicts += 1,
            Err(e) => panic!("child {role}: {e}"),
        }
        if i < RACE_DOMAINS {
            s.add_domain(
                new_domain(*t, &format!("{role}-{i}.example"), false),
                "child",
            )
            .await
            .unwrap();
        }
    }
    println!(
        "RACE ok={ok} conflicts={conflicts} versions={}",
        versions.join(",")
    );
}

// ---------------------------------------------------------------------------------------------
// Two stores on one database

/// Two stores on one database (the CLI and the server, or two nodes): one writes while the
/// other reads, with no "database is locked" errors on either side, and every directory
/// snapshot the reader loads is consistent with its version.
async fn two_stores_on_one_database(db: TestDb) {
    let server = db.open().await;
    let cli = db.open().await;
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

/// The writer in `two_stores_on_one_database` adds domains d0, d1, ... in order and verifies
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
