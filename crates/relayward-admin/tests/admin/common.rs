//! The admin API on a loopback ephemeral port over a real SQLite store in a temporary
//! directory, an in-test DNS server, and a fake relay behind `RelayControl`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use relayward_admin::control::{
    Block, BlockScope, ControlError, ControlResult, QueueOpOutcome, QueueOperation, QueuedMessage,
    QueuedRecipient, RelayControl, RequestUnblock, SenderRestrictionView, TenantStatusReport,
    Unblock,
};
use relayward_admin::{AdminConfig, TokenId, TokenScope};
use relayward_core::{Connector, ConnectorKind, DomainKind, Tenant, TenantId, TenantState};
use relayward_store::{NewConnector, NewDomain, SqliteStore, Store};
use relayward_testkit::DnsServer;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One call the API made into the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: String,
    pub target: String,
    pub actor: String,
}

#[derive(Default)]
struct FakeState {
    calls: Vec<Call>,
    states: HashMap<TenantId, TenantState>,
    queue: Vec<QueuedMessage>,
    restrictions: HashMap<TenantId, Vec<SenderRestrictionView>>,
}

/// A relay that keeps restriction states, a queue and sender restrictions in memory and
/// records every call.
#[derive(Default)]
pub struct FakeControl {
    state: Mutex<FakeState>,
}

impl FakeControl {
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn set_state(&self, tenant: TenantId, state: TenantState) {
        self.state.lock().unwrap().states.insert(tenant, state);
    }

    pub fn state_of(&self, tenant: TenantId) -> TenantState {
        *self
            .state
            .lock()
            .unwrap()
            .states
            .get(&tenant)
            .unwrap_or(&TenantState::Active)
    }

    pub fn add_message(&self, queue_id: &str, tenant: Option<TenantId>) {
        self.state.lock().unwrap().queue.push(QueuedMessage {
            queue_id: queue_id.into(),
            received_at: 1_700_000_000,
            tenant_id: tenant.map(i64::from),
            connector_id: None,
            client_ip: "192.0.2.10".into(),
            sender: "sender@example.net".into(),
            sender_class: relayward_core::SenderClass::Registered,
            message_id: Some(format!("<{queue_id}@example.net>")),
            size: 1234,
            held: false,
            recipients: vec![QueuedRecipient {
                address: "rcpt@example.org".into(),
                status: "deferred".into(),
                attempts: 1,
                last_reply: Some("451 4.7.1 try later".into()),
                next_attempt_at: Some(1_700_000_600),
            }],
        });
    }

    pub fn has_message(&self, queue_id: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .queue
            .iter()
            .any(|m| m.queue_id == queue_id)
    }

    pub fn restrict(&self, tenant: TenantId, sender: &str) {
        self.state
            .lock()
            .unwrap()
            .restrictions
            .entry(tenant)
            .or_default()
            .push(SenderRestrictionView {
                sender: sender.into(),
                since_ms: 1_700_000_000_000,
                until_ms: None,
                limit: "recipients per day".into(),
                action: "block".into(),
                reason: "10001 recipients in 24 hours".into(),
            });
    }

    pub fn sender_restrictions_len(&self, tenant: TenantId) -> usize {
        self.state
            .lock()
            .unwrap()
            .restrictions
            .get(&tenant)
            .map_or(0, Vec::len)
    }

    fn record(&self, op: &str, target: impl ToString, actor: &str) {
        self.state.lock().unwrap().calls.push(Call {
            op: op.into(),
            target: target.to_string(),
            actor: actor.into(),
        });
    }

    fn report(&self, tenant: TenantId) -> TenantStatusReport {
        TenantStatusReport {
            tenant_id: tenant.0,
            state: self.state_of(tenant),
            since_ms: Some(1_700_000_000_000),
            probation_until_ms: None,
            summary: Some("fake".into()),
            evidence: Some(serde_json::json!({"signals": []})),
            refusal_reply: None,
            checklist: vec!["remove the open relay".into()],
            can_request_unblock: false,
            reputation: None,
            transitions: Vec::new(),
            forwarded_domains: Vec::new(),
        }
    }

    fn transition(
        &self,
        op: &str,
        tenant: TenantId,
        actor: &str,
        from: &[TenantState],
        to: TenantState,
    ) -> ControlResult<TenantStatusReport> {
        self.record(op, tenant, actor);
        let current = self.state_of(tenant);
        if !from.contains(&current) {
            return Err(ControlError::NotAllowed(format!(
                "{op} is not possible for a tenant in state {current}"
            )));
        }
        self.set_state(tenant, to);
        Ok(self.report(tenant))
    }

    fn queue_op(
        &self,
        op: QueueOperation,
        queue_id: &str,
        actor: &str,
    ) -> ControlResult<QueueOpOutcome> {
        self.record(&format!("queue_{}", op.as_str()), queue_id, actor);
        let mut st = self.state.lock().unwrap();
        let i = st
            .queue
            .iter()
            .position(|m| m.queue_id == queue_id)
            .ok_or_else(|| ControlError::NotFound(format!("message {queue_id}")))?;
        let message = match op {
            QueueOperation::Hold => {
                st.queue[i].held = true;
                Some(st.queue[i].clone())
            }
            QueueOperation::Release => {
                st.queue[i].held = false;
                Some(st.queue[i].clone())
            }
            QueueOperation::Retry => Some(st.queue[i].clone()),
            QueueOperation::Delete | QueueOperation::Bounce => {
                st.queue.remove(i);
                None
            }
        };
        Ok(QueueOpOutcome {
            queue_id: queue_id.into(),
            operation: op,
            applied: true,
            message,
            dsn_queue_id: (op == QueueOperation::Bounce).then(|| "DSN0001".to_string()),
        })
    }
}

#[async_trait]
impl RelayControl for FakeControl {
    async fn tenant_status(&self, tenant: TenantId) -> ControlResult<TenantStatusReport> {
        self.record("tenant_status", tenant, "");
        Ok(self.report(tenant))
    }

    async fn request_unblock(
        &self,
        tenant: TenantId,
        _: &RequestUnblock,
        actor: &str,
    ) -> ControlResult<TenantStatusReport> {
        self.transition(
            "request_unblock",
            tenant,
            actor,
            &[TenantState::BlockedUnregistered],
            TenantState::UnderReview,
        )
    }

    async fn unblock(
        &self,
        tenant: TenantId,
        _: &Unblock,
        actor: &str,
    ) -> ControlResult<TenantStatusReport> {
        self.transition(
            "unblock",
            tenant,
            actor,
            &[
                TenantState::UnderReview,
                TenantState::BlockedUnregistered,
                TenantState::BlockedAll,
            ],
            TenantState::Probation,
        )
    }

    async fn block(
        &self,
        tenant: TenantId,
        request: &Block,
        actor: &str,
    ) -> ControlResult<TenantStatusReport> {
        let to = match request.scope {
            BlockScope::All => TenantState::BlockedAll,
            BlockScope::Unregistered => TenantState::BlockedUnregistered,
        };
        let from: Vec<TenantState> = TenantState::ALL
            .iter()
            .copied()
            .filter(|s| *s != to)
            .collect();
        self.transition("block", tenant, actor, &from, to)
    }

    async fn queue_list(&self, tenant: Option<TenantId>) -> ControlResult<Vec<QueuedMessage>> {
        self.record("queue_list", format!("{tenant:?}"), "");
        let st = self.state.lock().unwrap();
        Ok(st
            .queue
            .iter()
            .filter(|m| tenant.is_none() || m.tenant_id == tenant.map(i64::from))
            .cloned()
            .collect())
    }

    async fn queue_show(&self, queue_id: &str) -> ControlResult<Option<QueuedMessage>> {
        let st = self.state.lock().unwrap();
        Ok(st.queue.iter().find(|m| m.queue_id == queue_id).cloned())
    }

    async fn queue_hold(&self, queue_id: &str, actor: &str) -> ControlResult<QueueOpOutcome> {
        self.queue_op(QueueOperation::Hold, queue_id, actor)
    }

    async fn queue_release(&self, queue_id: &str, actor: &str) -> ControlResult<QueueOpOutcome> {
        self.queue_op(QueueOperation::Release, queue_id, actor)
    }

    async fn queue_retry(&self, queue_id: &str, actor: &str) -> ControlResult<QueueOpOutcome> {
        self.queue_op(QueueOperation::Retry, queue_id, actor)
    }

    async fn queue_delete(
        &self,
        queue_id: &str,
        send_dsn: bool,
        actor: &str,
    ) -> ControlResult<QueueOpOutcome> {
        let op = if send_dsn {
            QueueOperation::Bounce
        } else {
            QueueOperation::Delete
        };
        self.queue_op(op, queue_id, actor)
    }

    async fn sender_restrictions(
        &self,
        tenant: TenantId,
    ) -> ControlResult<Vec<SenderRestrictionView>> {
        let st = self.state.lock().unwrap();
        Ok(st.restrictions.get(&tenant).cloned().unwrap_or_default())
    }

    async fn remove_sender_restriction(
        &self,
        tenant: TenantId,
        sender: &str,
        actor: &str,
    ) -> ControlResult<bool> {
        self.record("remove_sender_restriction", sender, actor);
        let mut st = self.state.lock().unwrap();
        let list = st.restrictions.entry(tenant).or_default();
        let before = list.len();
        list.retain(|r| r.sender != sender);
        Ok(list.len() != before)
    }
}

/// An answer: status, headers and the body as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with `status`; returns its `field`.
    pub fn assert_problem(&self, status: u16) -> Option<String> {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        assert_eq!(self.body["status"], status, "{}", self.text);
        assert!(self.body["type"].as_str().is_some(), "{}", self.text);
        assert!(self.body["title"].as_str().is_some(), "{}", self.text);
        assert!(
            !self.body["detail"].as_str().unwrap_or("").is_empty(),
            "{}",
            self.text
        );
        self.body["field"].as_str().map(str::to_string)
    }
}

pub struct Token {
    pub id: TokenId,
    pub token: String,
}

/// A running API with two tenants (`a`, `b`), an operator token and one admin token each.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub store: Arc<SqliteStore>,
    pub db_path: String,
    pub control: Arc<FakeControl>,
    pub dns: DnsServer,
    pub op: Token,
    pub a: Tenant,
    pub a_admin: Token,
    pub b: Tenant,
    pub b_admin: Token,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub async fn token(store: &dyn Store, scope: TokenScope, label: &str) -> Token {
    let (id, token) = relayward_admin::create_token(store, scope, label, "cli:test")
        .await
        .unwrap();
    Token { id, token }
}

impl Api {
    pub async fn start() -> Api {
        Self::start_with(|_| {}).await
    }

    /// `tune` adjusts the configuration (the DNS server is set already).
    pub async fn start_with(tune: impl FnOnce(&mut AdminConfig)) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir
            .path()
            .join("relayward.db")
            .to_str()
            .unwrap()
            .to_string();
        let store = Arc::new(SqliteStore::open(&db_path).await.unwrap());
        let dns = DnsServer::start().await;
        let control = Arc::new(FakeControl::default());

        let a = store
            .create_tenant("tenant-a", &["admin@a.example".into()], "cli:test")
            .await
            .unwrap();
        let b = store
            .create_tenant("tenant-b", &[], "cli:test")
            .await
            .unwrap();
        let op = token(&*store, TokenScope::Operator, "operator").await;
        let a_admin = token(&*store, TokenScope::Tenant(a.id), "a admin").await;
        let b_admin = token(&*store, TokenScope::Tenant(b.id), "b admin").await;

        let mut config = AdminConfig {
            dns_resolver: Some(dns.addr()),
            dns_timeout: Duration::from_millis(700),
            dns_attempts: 1,
            ..AdminConfig::default()
        };
        tune(&mut config);
        let router = relayward_admin::router(store.clone(), control.clone(), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(relayward_admin::serve(listener, router, rx));
        Api {
            base,
            http: reqwest::Client::new(),
            store,
            db_path,
            control,
            dns,
            op,
            a,
            a_admin,
            b,
            b_admin,
            shutdown,
            task: Some(task),
            _dir: dir,
        }
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.send(true).unwrap();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.send(Method::POST, path, Some(token), Some(&body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.send(Method::PATCH, path, Some(token), Some(&body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.send(Method::DELETE, path, Some(token), None).await
    }

    pub async fn add_domain(&self, tenant: TenantId, domain: &str, verified: bool) {
        self.store
            .add_domain(
                NewDomain {
                    tenant_id: tenant,
                    domain: domain.into(),
                    kind: DomainKind::Authoritative,
                    match_subdomains: false,
                    verified,
                },
                "cli:test",
            )
            .await
            .unwrap();
    }

    pub async fn add_connector(&self, tenant: TenantId, name: &str, cidr: &str) -> Connector {
        self.store
            .add_connector(
                NewConnector {
                    tenant_id: tenant,
                    name: name.into(),
                    kind: ConnectorKind::OnPremises,
                    ip_ranges: vec![cidr.parse().unwrap()],
                    cert_name: None,
                    auth_user: None,
                    auth_password_hash: None,
                    require_tls: false,
                    allow_unregistered: false,
                    restrict_domains_to_ips: false,
                    restrict_domains_to_cert: false,
                },
                "cli:test",
            )
            .await
            .unwrap()
    }

    pub async fn audit_len(&self) -> usize {
        self.store.list_audit(None, 10_000).await.unwrap().len()
    }
}
