//! A typed client of the relayward admin API: [`Admin`], one method per route, over a
//! [`Transport`]. [`Http`] reaches a relay's admin listener with a bearer token; the relay's own
//! command line also has a transport that calls the API's router in its process, on the local
//! store, so that every command is written once and behaves the same both ways.
//!
//! Errors are [`ClientError`]: the API's refusal keeps its RFC 9457 problem detail.

use std::sync::Arc;

use async_trait::async_trait;
pub use relayward_api_types as types;
use relayward_api_types::*;
pub use reqwest::{header, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a call did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client's own settings: a bad server URL, no token.
    #[error("{0}")]
    Usage(String),
    /// The API could not be reached, or broke off.
    #[error("{0}")]
    Transport(String),
    /// The API refused; the problem detail, on one line.
    #[error("{}", .0.detail.replace('\n', " "))]
    Refused(Problem),
    /// The API answered, but not with what the call expects.
    #[error("{0}")]
    Answer(String),
    /// No object by the name given (a tenant or connector looked up by name).
    #[error("{0}")]
    NotFound(String),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// One request, as the API sees it.
pub struct Call {
    pub method: Method,
    /// Path segments, each percent-encoded on the way.
    pub path: Vec<String>,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
}

/// The status and body of an answer.
pub struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

/// How a [`Call`] reaches the API.
#[async_trait]
pub trait Transport: Send + Sync {
    async fn send(&self, call: Call) -> Result<Answer>;
    /// "the admin API at http://…" or "the local store", for messages.
    fn describe(&self) -> String;
}

impl Call {
    /// `base` with the call's path segments (percent-encoded) appended and its query set.
    /// `base` must be able to take a path (an `http:` URL can; [`Http::new`] checks it).
    pub fn url(&self, base: &reqwest::Url) -> reqwest::Url {
        let mut url = base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(&self.path);
        }
        if !self.query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in &self.query {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// The path and query, percent-encoded (`/v1/tenants/1/domains?x=y`).
    pub fn path_and_query(&self) -> String {
        let url = self.url(&reqwest::Url::parse("http://x/").expect("a fixed URL parses"));
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }
}

/// The admin API at `--server`, called with `--token`.
pub struct Http {
    base: reqwest::Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Http {
    pub fn new(server: &str, token: Option<String>) -> Result<Http> {
        let base = reqwest::Url::parse(server)
            .map_err(|e| ClientError::Usage(format!("--server {server:?}: not a URL ({e})")))?;
        if base.scheme() != "http" {
            return Err(ClientError::Usage(format!(
                "--server {server:?}: only http:// URLs are supported (reach a remote API through a TLS proxy or an SSH tunnel)"
            )));
        }
        if base.cannot_be_a_base() {
            return Err(ClientError::Usage(format!(
                "--server {server:?}: cannot take a path"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("relayward/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Usage(format!("HTTP client: {e}")))?;
        Ok(Http {
            base,
            token: token.filter(|t| !t.trim().is_empty()),
            http,
        })
    }
}

/// The root cause of a transport error, which reqwest keeps at the end of the chain.
fn cause(e: &reqwest::Error) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

#[async_trait]
impl Transport for Http {
    async fn send(&self, call: Call) -> Result<Answer> {
        let token = self.token.as_deref().ok_or_else(|| {
            ClientError::Usage("--server needs a token: pass --token or set RELAYWARD_TOKEN (create one with `relayward token create` on the server)".into())
        })?;
        let url = call.url(&self.base);
        let mut request = self.http.request(call.method, url).bearer_auth(token);
        if let Some(body) = call.body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(|e| {
            ClientError::Transport(format!("cannot reach {}: {}", self.describe(), cause(&e)))
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            ClientError::Transport(format!(
                "{} broke off its answer: {}",
                self.describe(),
                cause(&e)
            ))
        })?;
        Ok(Answer {
            status,
            body: body.to_vec(),
        })
    }

    fn describe(&self) -> String {
        format!("the admin API at {}", self.base)
    }
}

/// The typed admin API.
#[derive(Clone)]
pub struct Admin {
    transport: Arc<dyn Transport>,
}

/// Path segments from anything printable.
macro_rules! path {
    ($($seg:expr),* $(,)?) => { vec![$($seg.to_string()),*] };
}

impl Admin {
    pub fn new(transport: Arc<dyn Transport>) -> Admin {
        Admin { transport }
    }

    /// `Ok(Ok(body))` on success (`null` for 204), `Ok(Err(problem))` when the API refused,
    /// `Err` when it could not be asked.
    async fn try_call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: Vec<String>,
        query: Vec<(&'static str, String)>,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<std::result::Result<T, Problem>> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Usage(format!("request body: {e}")))?
            .filter(|b| b.as_slice() != b"null");
        let answer = self
            .transport
            .send(Call {
                method,
                path,
                query,
                body,
            })
            .await?;
        if answer.status.is_success() {
            let bytes: &[u8] = if answer.status == StatusCode::NO_CONTENT || answer.body.is_empty()
            {
                b"null"
            } else {
                &answer.body
            };
            return serde_json::from_slice(bytes).map(Ok).map_err(|e| {
                ClientError::Answer(format!(
                    "{} answered {}: not what was expected ({e})",
                    self.transport.describe(),
                    answer.status
                ))
            });
        }
        match serde_json::from_slice::<Problem>(&answer.body) {
            Ok(problem) => Ok(Err(problem)),
            Err(_) => Err(ClientError::Answer(format!(
                "{} answered {}",
                self.transport.describe(),
                answer.status
            ))),
        }
    }

    /// [`Admin::try_call`], the API's refusal an error carrying its detail on one line.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: Vec<String>,
        query: Vec<(&'static str, String)>,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<T> {
        self.try_call(method, path, query, body)
            .await?
            .map_err(ClientError::Refused)
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: Vec<String>,
        query: Vec<(&'static str, String)>,
    ) -> Result<T> {
        self.call(Method::GET, path, query, None::<&()>).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: Vec<String>,
        body: &(impl Serialize + Sync),
    ) -> Result<T> {
        self.call(Method::POST, path, Vec::new(), Some(body)).await
    }

    async fn delete(&self, path: Vec<String>, query: Vec<(&'static str, String)>) -> Result<()> {
        let _: serde_json::Value = self.call(Method::DELETE, path, query, None::<&()>).await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Who, and which tenant

    pub async fn me(&self) -> Result<WhoAmI> {
        self.get(path!["v1", "me"], Vec::new()).await
    }

    /// Tenant `name_or_id` as this caller may see it. A tenant-admin token cannot list
    /// tenants: its own is the only one it can name.
    pub async fn tenant_named(&self, name_or_id: &str) -> Result<TenantView> {
        let not_found = || ClientError::NotFound(format!("no tenant {name_or_id:?}"));
        if !name_or_id.is_empty() && name_or_id.bytes().all(|b| b.is_ascii_digit()) {
            let id: i64 = name_or_id.parse().map_err(|_| not_found())?;
            return match self
                .try_call(
                    Method::GET,
                    path!["v1", "tenants", id],
                    Vec::new(),
                    None::<&()>,
                )
                .await?
            {
                Ok(t) => Ok(t),
                Err(p) if p.status == 404 => Err(not_found()),
                Err(p) => Err(ClientError::Refused(p)),
            };
        }
        match self
            .try_call::<Vec<TenantView>>(
                Method::GET,
                path!["v1", "tenants"],
                Vec::new(),
                None::<&()>,
            )
            .await?
        {
            Ok(all) => all
                .into_iter()
                .find(|t| t.name == name_or_id)
                .ok_or_else(not_found),
            Err(p) if p.status == 403 => {
                let own = self.me().await?.tenant_id.ok_or_else(not_found)?;
                let t: TenantView = self.get(path!["v1", "tenants", own], Vec::new()).await?;
                (t.name == name_or_id).then_some(t).ok_or_else(not_found)
            }
            Err(p) => Err(ClientError::Refused(p)),
        }
    }

    /// The tenants a listing covers: the one asked for, else every tenant the caller sees.
    pub async fn tenants_in_view(&self, asked: Option<&str>) -> Result<Vec<TenantView>> {
        if let Some(t) = asked {
            return Ok(vec![self.tenant_named(t).await?]);
        }
        if let Some(own) = self.me().await?.tenant_id {
            return Ok(vec![
                self.get(path!["v1", "tenants", own], Vec::new()).await?,
            ]);
        }
        self.tenants().await
    }

    // -----------------------------------------------------------------------------------------
    // Tenants

    pub async fn tenants(&self) -> Result<Vec<TenantView>> {
        self.get(path!["v1", "tenants"], Vec::new()).await
    }

    pub async fn create_tenant(&self, req: &CreateTenant) -> Result<TenantView> {
        self.post(path!["v1", "tenants"], req).await
    }

    pub async fn status(&self, tenant: i64) -> Result<TenantStatusReport> {
        self.get(path!["v1", "tenants", tenant, "status"], Vec::new())
            .await
    }

    pub async fn request_unblock(
        &self,
        tenant: i64,
        req: &RequestUnblock,
    ) -> Result<TenantStatusReport> {
        self.post(path!["v1", "tenants", tenant, "request-unblock"], req)
            .await
    }

    pub async fn unblock(&self, tenant: i64, req: &Unblock) -> Result<TenantStatusReport> {
        self.post(path!["v1", "tenants", tenant, "unblock"], req)
            .await
    }

    pub async fn block(&self, tenant: i64, req: &Block) -> Result<TenantStatusReport> {
        self.post(path!["v1", "tenants", tenant, "block"], req)
            .await
    }

    pub async fn sender_limits(&self, tenant: i64) -> Result<SenderLimitsView> {
        self.get(path!["v1", "tenants", tenant, "sender-limits"], Vec::new())
            .await
    }

    pub async fn set_sender_limits(
        &self,
        tenant: i64,
        req: &SetSenderLimits,
    ) -> Result<SenderLimitsView> {
        self.call(
            Method::PUT,
            path!["v1", "tenants", tenant, "sender-limits"],
            Vec::new(),
            Some(req),
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Domains and header From declarations

    pub async fn domains(&self, tenant: i64) -> Result<Vec<DomainView>> {
        self.get(path!["v1", "tenants", tenant, "domains"], Vec::new())
            .await
    }

    pub async fn add_domain(&self, tenant: i64, req: &AddDomain) -> Result<DomainView> {
        self.post(path!["v1", "tenants", tenant, "domains"], req)
            .await
    }

    pub async fn verify_domain(&self, tenant: i64, domain: &str) -> Result<VerifyResult> {
        self.post(
            path!["v1", "tenants", tenant, "domains", domain, "verify"],
            &(),
        )
        .await
    }

    pub async fn remove_domain(&self, tenant: i64, domain: &str) -> Result<()> {
        self.delete(
            path!["v1", "tenants", tenant, "domains", domain],
            Vec::new(),
        )
        .await
    }

    pub async fn header_from(&self, tenant: i64) -> Result<Vec<HeaderFromView>> {
        self.get(
            path!["v1", "tenants", tenant, "header-from-domains"],
            Vec::new(),
        )
        .await
    }

    pub async fn declare_header_from(&self, tenant: i64, req: &DeclareHeaderFrom) -> Result<()> {
        let _: serde_json::Value = self
            .post(path!["v1", "tenants", tenant, "header-from-domains"], req)
            .await?;
        Ok(())
    }

    pub async fn withdraw_header_from(
        &self,
        tenant: i64,
        domain: &str,
        connector: Option<i64>,
    ) -> Result<()> {
        let query = connector
            .map(|c| vec![("connector_id", c.to_string())])
            .unwrap_or_default();
        self.delete(
            path!["v1", "tenants", tenant, "header-from-domains", domain],
            query,
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Connectors

    pub async fn connectors(&self, tenant: i64) -> Result<Vec<ConnectorView>> {
        self.get(path!["v1", "tenants", tenant, "connectors"], Vec::new())
            .await
    }

    /// The tenant's connector called `name`.
    pub async fn connector_named(&self, tenant: &TenantView, name: &str) -> Result<ConnectorView> {
        self.connectors(tenant.id)
            .await?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                ClientError::NotFound(format!(
                    "connector {name:?} of tenant {} not found",
                    tenant.name
                ))
            })
    }

    pub async fn create_connector(
        &self,
        tenant: i64,
        req: &CreateConnector,
    ) -> Result<ConnectorView> {
        self.post(path!["v1", "tenants", tenant, "connectors"], req)
            .await
    }

    pub async fn change_connector(
        &self,
        tenant: i64,
        connector: i64,
        req: &ChangeConnector,
    ) -> Result<ConnectorView> {
        self.call(
            Method::PATCH,
            path!["v1", "tenants", tenant, "connectors", connector],
            Vec::new(),
            Some(req),
        )
        .await
    }

    pub async fn delete_connector(&self, tenant: i64, connector: i64) -> Result<()> {
        self.delete(
            path!["v1", "tenants", tenant, "connectors", connector],
            Vec::new(),
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Sender restrictions and suppression lists

    pub async fn sender_restrictions(&self, tenant: i64) -> Result<Vec<SenderRestrictionView>> {
        self.get(
            path!["v1", "tenants", tenant, "sender-restrictions"],
            Vec::new(),
        )
        .await
    }

    /// `Ok(false)`: the sender has no standing restriction at this tenant.
    pub async fn lift_sender_restriction(&self, tenant: i64, sender: &str) -> Result<bool> {
        self.delete_if_present(path![
            "v1",
            "tenants",
            tenant,
            "sender-restrictions",
            sender
        ])
        .await
    }

    /// DELETE `path`; `Ok(false)` when there was nothing to delete (404).
    async fn delete_if_present(&self, path: Vec<String>) -> Result<bool> {
        match self
            .try_call::<serde_json::Value>(Method::DELETE, path, Vec::new(), None::<&()>)
            .await?
        {
            Ok(_) => Ok(true),
            Err(p) if p.status == 404 => Ok(false),
            Err(p) => Err(ClientError::Refused(p)),
        }
    }

    fn suppression_path(tenant: Option<i64>) -> Vec<String> {
        match tenant {
            Some(t) => path!["v1", "tenants", t, "suppressions"],
            None => path!["v1", "suppressions"],
        }
    }

    pub async fn suppressions(&self, tenant: Option<i64>) -> Result<Vec<SuppressionView>> {
        self.get(Self::suppression_path(tenant), Vec::new()).await
    }

    pub async fn add_suppression(
        &self,
        tenant: Option<i64>,
        req: &AddSuppression,
    ) -> Result<SuppressionView> {
        self.post(Self::suppression_path(tenant), req).await
    }

    /// `Ok(false)`: the address is not on the list.
    pub async fn remove_suppression(&self, tenant: Option<i64>, address: &str) -> Result<bool> {
        let mut path = Self::suppression_path(tenant);
        path.push(address.to_string());
        self.delete_if_present(path).await
    }

    // -----------------------------------------------------------------------------------------
    // Queue, trace, audit, diagnosis

    pub async fn queue(&self) -> Result<Vec<QueuedMessage>> {
        self.get(path!["v1", "queue"], Vec::new()).await
    }

    pub async fn queued(&self, id: &str) -> Result<QueuedMessage> {
        self.get(path!["v1", "queue", id], Vec::new()).await
    }

    pub async fn queue_operation(&self, id: &str, op: QueueOperation) -> Result<QueueOpOutcome> {
        let none = None::<&()>;
        match op {
            QueueOperation::Delete | QueueOperation::Bounce => {
                let dsn = (op == QueueOperation::Bounce).to_string();
                self.call(
                    Method::DELETE,
                    path!["v1", "queue", id],
                    vec![("dsn", dsn)],
                    none,
                )
                .await
            }
            _ => {
                self.call(
                    Method::POST,
                    path!["v1", "queue", id, op.as_str()],
                    Vec::new(),
                    none,
                )
                .await
            }
        }
    }

    pub async fn trace(&self, query: Vec<(&'static str, String)>) -> Result<TracePage> {
        self.get(path!["v1", "trace"], query).await
    }

    /// The live relay nodes (operator only).
    pub async fn nodes(&self) -> Result<Vec<NodeView>> {
        self.get(path!["v1", "nodes"], Vec::new()).await
    }

    pub async fn audit(&self, query: Vec<(&'static str, String)>) -> Result<Vec<AuditView>> {
        self.get(path!["v1", "audit"], query).await
    }

    pub async fn diagnose(&self, req: &DiagnoseRequest) -> Result<DiagnosisView> {
        self.post(path!["v1", "diagnose"], req).await
    }

    // -----------------------------------------------------------------------------------------
    // Tokens

    pub async fn tokens(&self, tenant: Option<i64>) -> Result<Vec<TokenInfo>> {
        let query = tenant
            .map(|t| vec![("tenant_id", t.to_string())])
            .unwrap_or_default();
        self.get(path!["v1", "tokens"], query).await
    }

    pub async fn create_token(&self, req: &CreateToken) -> Result<CreatedToken> {
        self.post(path!["v1", "tokens"], req).await
    }

    pub async fn revoke_token(&self, id: i64) -> Result<()> {
        self.delete(path!["v1", "tokens", id], Vec::new()).await
    }
}
