//! The command line as a client of the admin API (`--server URL --token T`, or RELAYWARD_URL
//! and RELAYWARD_TOKEN): the same commands and the same output as on the local store, every
//! change made (and audited) by the server under the token's identity. An error the API answers
//! (RFC 9457 problem details) becomes its `detail`, on one line.
//!
//! Also `relayward token`, which makes the tokens: on the local store (audited as `cli:<user>`)
//! or, with `--server`, through the API.
//!
//! A child module of `cli`: it reads the same argument structs as the local commands.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use relayward_admin::{Problem, TokenScope};
use relayward_policy::evidence::Evidence;
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use super::{
    actor, open_store, print_json, tenant_of, AuditArgs, ConnectorCmd, DomainCmd, QueueCmd,
    SenderCmd, TenantCmd, TraceArgs,
};
use crate::abuse::report;
use crate::config::Config;
use crate::table;

const DEFAULT_LABEL: &str = "created with the relayward CLI";

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an admin API token; prints it alone on the last line (it is shown only this once)
    #[command(group(clap::ArgGroup::new("scope").required(true)))]
    Create {
        /// A token for the operator: every tenant, every action
        #[arg(long, group = "scope")]
        operator: bool,
        /// A tenant-admin token, confined to this tenant (name or id)
        #[arg(long, group = "scope", value_name = "TENANT")]
        tenant: Option<String>,
        /// What the token is for
        #[arg(long)]
        label: Option<String>,
    },
    /// List tokens (never their secrets)
    List {
        /// Only this tenant's tokens
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token; it is refused from the next request on
    Revoke { id: i64 },
}

/// `relayward token` on the local store.
pub async fn token(config: &Config, cmd: TokenCmd) -> Result<()> {
    let store = open_store(config).await?;
    match cmd {
        TokenCmd::Create {
            operator: _,
            tenant,
            label,
        } => {
            let (scope, what) = match &tenant {
                Some(t) => {
                    let t = tenant_of(&*store, t).await?;
                    (TokenScope::Tenant(t.id), format!("tenant {}", t.name))
                }
                None => (TokenScope::Operator, "operator".to_string()),
            };
            let label = label.unwrap_or_else(|| DEFAULT_LABEL.into());
            let (id, token) = relayward_admin::create_token(&*store, scope, &label, &actor())
                .await
                .map_err(|e| anyhow!("{e}"))?;
            print_created(id, &what, &token);
        }
        TokenCmd::List { tenant, json } => {
            let tenant_id = match &tenant {
                Some(t) => Some(tenant_of(&*store, t).await?.id),
                None => None,
            };
            let tokens = relayward_admin::list_tokens(&*store, tenant_id).await?;
            let tokens = serde_json::to_value(tokens)?;
            if json {
                return print_json(&tokens);
            }
            print_tokens(&tokens);
        }
        TokenCmd::Revoke { id } => {
            relayward_admin::revoke_token(&*store, id, &actor())
                .await
                .map_err(|e| anyhow!("{e}"))?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

fn print_created(id: i64, what: &str, token: &str) {
    println!("token {id} ({what}) created; it is shown only this once:");
    println!("{token}");
}

fn print_tokens(tokens: &Value) {
    let rows = list(tokens)
        .iter()
        .map(|t| {
            vec![
                num(&t["id"]),
                text(&t["scope"]),
                num(&t["tenant_id"]),
                text(&t["label"]),
                time(&t["created_at"]),
                text(&t["created_by"]),
                match t["last_used_at"].as_i64() {
                    Some(at) => table::time(at),
                    None => "never".into(),
                },
                match t["revoked_at"].as_i64() {
                    Some(at) => format!("{} by {}", table::time(at), text(&t["revoked_by"])),
                    None => String::new(),
                },
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &[
            "ID",
            "SCOPE",
            "TENANT",
            "LABEL",
            "CREATED",
            "BY",
            "LAST USED",
            "REVOKED",
        ],
        &rows,
    );
}

// ---------------------------------------------------------------------------------------------
// Reading JSON answers

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> String {
    v.as_i64().map(|n| n.to_string()).unwrap_or_default()
}

fn time(v: &Value) -> String {
    v.as_i64().map(table::time).unwrap_or_default()
}

fn time_ms(v: &Value) -> String {
    v.as_i64().map(table::time_ms).unwrap_or_default()
}

fn yes(v: &Value) -> bool {
    v.as_bool().unwrap_or(false)
}

/// The root cause of a transport error, which reqwest keeps at the end of the chain.
fn cause(e: &reqwest::Error) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

// ---------------------------------------------------------------------------------------------
// The client

/// The admin API at `--server`, called with `--token`.
pub struct Remote {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Remote {
    pub fn new(server: &str, token: Option<String>) -> Result<Remote> {
        let base =
            Url::parse(server).map_err(|e| anyhow!("--server {server:?}: not a URL ({e})"))?;
        if base.scheme() != "http" {
            bail!(
                "--server {server:?}: only http:// URLs are supported (reach a remote API through a TLS proxy or an SSH tunnel)"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("relayward/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("HTTP client")?;
        Ok(Remote {
            base,
            token: token.filter(|t| !t.trim().is_empty()),
            http,
        })
    }

    fn url(&self, path: &[&str], query: &[(&str, String)]) -> Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| anyhow!("--server {}: cannot take a path", self.base))?
            .pop_if_empty()
            .extend(path);
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// One request: `Ok(Ok(body))` on success (`null` for 204), `Ok(Err(problem))` when the API
    /// refused, `Err` when it could not be asked.
    async fn send(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<std::result::Result<Value, Problem>> {
        let token = self.token.as_deref().ok_or_else(|| {
            anyhow!("--server needs a token: pass --token or set RELAYWARD_TOKEN (create one with `relayward token create` on the server)")
        })?;
        let url = self.url(path, query)?;
        let mut request = self.http.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the admin API at {}: {}", self.base, cause(&e)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            anyhow!(
                "the admin API at {} broke off its answer: {}",
                self.base,
                cause(&e)
            )
        })?;
        if status.is_success() {
            if status == StatusCode::NO_CONTENT || bytes.is_empty() {
                return Ok(Ok(Value::Null));
            }
            return serde_json::from_slice(&bytes)
                .map(Ok)
                .map_err(|e| anyhow!("the admin API at {} answered no JSON: {e}", self.base));
        }
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(problem) => Ok(Err(problem)),
            Err(_) => bail!("the admin API at {} answered {status}", self.base),
        }
    }

    /// [`Remote::send`], the API's refusal an error carrying its detail.
    async fn call(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value> {
        self.send(method, path, query, body)
            .await?
            .map_err(|p| anyhow!("{}", p.detail.replace('\n', " ")))
    }

    async fn get(&self, path: &[&str], query: &[(&str, String)]) -> Result<Value> {
        self.call(Method::GET, path, query, None).await
    }

    /// A `null` body: none at all.
    async fn post(&self, path: &[&str], body: Value) -> Result<Value> {
        let body = (!body.is_null()).then_some(body);
        self.call(Method::POST, path, &[], body).await
    }

    /// `relayward diagnose` through the API: the running relay's own answer.
    pub async fn diagnose(&self, a: super::DiagnoseArgs) -> Result<()> {
        let body = serde_json::to_value(a.request())?;
        let v = self.post(&["v1", "diagnose"], body).await?;
        let view: relayward_admin::DiagnosisView = serde_json::from_value(v)
            .map_err(|e| anyhow!("the admin API answered an unexpected diagnosis: {e}"))?;
        super::print_diagnosis(&view, a.json)
    }

    /// The id of tenant `name_or_id` as this token may see it. A tenant-admin token cannot
    /// list tenants: its own is the only one it can name.
    async fn tenant_id(&self, name_or_id: &str) -> Result<i64> {
        if !name_or_id.is_empty() && name_or_id.bytes().all(|b| b.is_ascii_digit()) {
            return name_or_id
                .parse()
                .map_err(|_| anyhow!("tenant {name_or_id} not found"));
        }
        let not_found = || anyhow!("tenant {name_or_id} not found");
        match self
            .send(Method::GET, &["v1", "tenants"], &[], None)
            .await?
        {
            Ok(tenants) => list(&tenants)
                .iter()
                .find(|t| t["name"] == name_or_id)
                .and_then(|t| t["id"].as_i64())
                .ok_or_else(not_found),
            Err(p) if p.status == 403 => {
                let own = self.own_tenant().await?.ok_or_else(not_found)?;
                let t = self.get(&["v1", "tenants", &own.to_string()], &[]).await?;
                (t["name"] == name_or_id)
                    .then_some(own)
                    .ok_or_else(not_found)
            }
            Err(p) => bail!("{}", p.detail),
        }
    }

    /// The tenant of a tenant-admin token (`None`: an operator token).
    async fn own_tenant(&self) -> Result<Option<i64>> {
        Ok(self.get(&["v1", "me"], &[]).await?["tenant_id"].as_i64())
    }

    /// The tenants a listing covers: the one asked for, else every tenant the token sees.
    async fn tenants_in_view(&self, asked: Option<&str>) -> Result<Vec<(i64, String)>> {
        if let Some(t) = asked {
            let id = self.tenant_id(t).await?;
            let v = self.get(&["v1", "tenants", &id.to_string()], &[]).await?;
            return Ok(vec![(id, text(&v["name"]))]);
        }
        if let Some(own) = self.own_tenant().await? {
            let v = self.get(&["v1", "tenants", &own.to_string()], &[]).await?;
            return Ok(vec![(own, text(&v["name"]))]);
        }
        let all = self.get(&["v1", "tenants"], &[]).await?;
        Ok(list(&all)
            .iter()
            .filter_map(|t| Some((t["id"].as_i64()?, text(&t["name"]))))
            .collect())
    }

    async fn connector_id(&self, tenant: i64, name: &str) -> Result<i64> {
        let all = self
            .get(&["v1", "tenants", &tenant.to_string(), "connectors"], &[])
            .await?;
        list(&all)
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["id"].as_i64())
            .ok_or_else(|| anyhow!("connector {name:?} of tenant {tenant} not found"))
    }

    /// `POST .../connectors/{id}/disable` or `/enable`.
    async fn connector_post(&self, tenant: &str, name: &str, action: &str) -> Result<()> {
        let t = self.tenant_id(tenant).await?;
        let c = self.connector_id(t, name).await?.to_string();
        self.post(
            &["v1", "tenants", &t.to_string(), "connectors", &c, action],
            json!(null),
        )
        .await?;
        println!("connector {name} updated");
        Ok(())
    }

    async fn connector_patch(&self, tenant: &str, name: &str, change: Value) -> Result<()> {
        let t = self.tenant_id(tenant).await?;
        let c = self.connector_id(t, name).await?.to_string();
        self.call(
            Method::PATCH,
            &["v1", "tenants", &t.to_string(), "connectors", &c],
            &[],
            Some(change),
        )
        .await?;
        println!("connector {name} updated");
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // The commands

    pub async fn tenant(&self, cmd: TenantCmd) -> Result<()> {
        match cmd {
            TenantCmd::Add { name, admin_emails } => {
                let t = self
                    .post(
                        &["v1", "tenants"],
                        json!({"name": name, "admin_emails": admin_emails}),
                    )
                    .await?;
                println!("{}", num(&t["id"]));
            }
            TenantCmd::List { json } => {
                let tenants = self.get(&["v1", "tenants"], &[]).await?;
                if json {
                    return print_json(&tenants);
                }
                let rows = list(&tenants)
                    .iter()
                    .map(|t| {
                        vec![
                            num(&t["id"]),
                            text(&t["name"]),
                            text(&t["state"]),
                            list(&t["admin_emails"])
                                .iter()
                                .map(text)
                                .collect::<Vec<_>>()
                                .join(","),
                            time(&t["created_at"]),
                        ]
                    })
                    .collect::<Vec<_>>();
                table::print(&["ID", "NAME", "STATE", "ADMINS", "CREATED"], &rows);
            }
            TenantCmd::Show { tenant, json } => {
                let id = self.tenant_id(&tenant).await?.to_string();
                let t = self.get(&["v1", "tenants", &id], &[]).await?;
                let domains = self.get(&["v1", "tenants", &id, "domains"], &[]).await?;
                let connectors = self.get(&["v1", "tenants", &id, "connectors"], &[]).await?;
                let status = self.get(&["v1", "tenants", &id, "status"], &[]).await?;
                if json {
                    return print_json(&json!({
                        "tenant": t,
                        "domains": domains,
                        "connectors": connectors,
                        "status": status,
                    }));
                }
                print_show(&t, &domains, &connectors, &status);
            }
            TenantCmd::RequestUnblock(a) => {
                let missing: Vec<&str> = [
                    (a.domains_registered, "--domains-registered"),
                    (a.connectors_reviewed, "--connectors-reviewed"),
                    (a.servers_secured, "--servers-secured"),
                ]
                .into_iter()
                .filter(|(given, _)| !given)
                .map(|(_, flag)| flag)
                .collect();
                if !missing.is_empty() {
                    bail!(
                        "request-unblock for tenant {} refused: attestation {} not given",
                        a.tenant,
                        missing.join(", ")
                    );
                }
                let id = self.tenant_id(&a.tenant).await?.to_string();
                let status = self
                    .post(
                        &["v1", "tenants", &id, "request-unblock"],
                        json!({"forwarded_domains": a.forwarded_domains}),
                    )
                    .await?;
                println!(
                    "tenant {}: {}; unregistered senders stay refused until an operator unblocks",
                    a.tenant,
                    text(&status["state"])
                );
            }
            TenantCmd::Unblock { tenant } => {
                let id = self.tenant_id(&tenant).await?.to_string();
                let status = self
                    .post(&["v1", "tenants", &id, "unblock"], json!({}))
                    .await?;
                println!(
                    "tenant {tenant}: {} until {}",
                    text(&status["state"]),
                    time_ms(&status["probation_until_ms"])
                );
            }
            TenantCmd::Block { tenant, all, .. } => {
                let id = self.tenant_id(&tenant).await?.to_string();
                let scope = if all { "all" } else { "unregistered" };
                let status = self
                    .post(
                        &["v1", "tenants", &id, "block"],
                        json!({"scope": scope, "reason": format!("blocked by {} with `relayward tenant block`", actor())}),
                    )
                    .await?;
                println!("tenant {tenant}: {}", text(&status["state"]));
            }
            other => bail!(
                "{} works on the local store only: run it on the relay's host without --server",
                command_name("tenant", &other)
            ),
        }
        Ok(())
    }

    pub async fn domain(&self, cmd: DomainCmd) -> Result<()> {
        match cmd {
            DomainCmd::Add {
                tenant,
                domain,
                kind,
                match_subdomains,
                verified,
            } => {
                let id = self.tenant_id(&tenant).await?.to_string();
                let d = self
                    .post(
                        &["v1", "tenants", &id, "domains"],
                        json!({
                            "domain": domain,
                            "kind": kind,
                            "match_subdomains": match_subdomains,
                            "verified": verified,
                        }),
                    )
                    .await?;
                if yes(&d["verified"]) {
                    println!("{} verified (operator attestation)", text(&d["domain"]));
                } else {
                    println!("publish this TXT record, then run `relayward domain verify`:");
                    println!(
                        "{}. IN TXT \"{}\"",
                        text(&d["domain"]),
                        text(&d["verification_record"]["value"])
                    );
                }
            }
            DomainCmd::Verify { tenant, domain } => {
                let id = self.tenant_id(&tenant).await?.to_string();
                let r = self
                    .post(
                        &["v1", "tenants", &id, "domains", &domain, "verify"],
                        json!(null),
                    )
                    .await?;
                let domain = text(&r["domain"]);
                let wanted = text(&r["expected_record"]["value"]);
                match r["status"].as_str() {
                    Some("verified") => println!("{domain} verified"),
                    Some("not_found") => {
                        bail!("{domain} not verified: no TXT record found; publish \"{wanted}\"")
                    }
                    Some("wrong_token") => bail!(
                        "{domain} not verified: {} TXT record(s) found, none is \"{wanted}\"",
                        num(&r["records_found"])
                    ),
                    _ => bail!("could not check {domain}: {}", text(&r["detail"])),
                }
            }
            DomainCmd::List { tenant, json } => {
                let id = self.tenant_id(&tenant).await?.to_string();
                let domains = self.get(&["v1", "tenants", &id, "domains"], &[]).await?;
                if json {
                    return print_json(&domains);
                }
                print_domains(&domains);
            }
            DomainCmd::Remove { tenant, domain } => {
                let id = self.tenant_id(&tenant).await?.to_string();
                self.call(
                    Method::DELETE,
                    &["v1", "tenants", &id, "domains", &domain],
                    &[],
                    None,
                )
                .await?;
                println!("{} removed", domain.to_lowercase());
            }
            DomainCmd::AllowHeaderFrom {
                tenant,
                domain,
                connector,
            } => {
                let t = self.tenant_id(&tenant).await?;
                let connector_id = match connector {
                    Some(name) => Some(self.connector_id(t, &name).await?),
                    None => None,
                };
                let id = t.to_string();
                self.post(
                    &["v1", "tenants", &id, "header-from-domains"],
                    json!({"domain": domain, "connector_id": connector_id}),
                )
                .await?;
                println!("header From {} allowed", domain.to_lowercase());
            }
            DomainCmd::DisallowHeaderFrom {
                tenant,
                domain,
                connector,
            } => {
                let t = self.tenant_id(&tenant).await?;
                let mut query = Vec::new();
                if let Some(name) = connector {
                    query.push((
                        "connector_id",
                        self.connector_id(t, &name).await?.to_string(),
                    ));
                }
                let id = t.to_string();
                self.call(
                    Method::DELETE,
                    &["v1", "tenants", &id, "header-from-domains", &domain],
                    &query,
                    None,
                )
                .await?;
                println!("header From {} no longer allowed", domain.to_lowercase());
            }
            DomainCmd::HeaderFrom { tenant, json } => {
                let id = self.tenant_id(&tenant).await?.to_string();
                let declared = self
                    .get(&["v1", "tenants", &id, "header-from-domains"], &[])
                    .await?;
                if json {
                    return print_json(&declared);
                }
                let rows = list(&declared)
                    .iter()
                    .map(|a| {
                        vec![
                            text(&a["domain"]),
                            match a["connector_id"].as_i64() {
                                Some(c) => c.to_string(),
                                None => "any".into(),
                            },
                            text(&a["declared_by"]),
                        ]
                    })
                    .collect::<Vec<_>>();
                table::print(&["HEADER FROM", "CONNECTOR ID", "BY"], &rows);
            }
            other => bail!(
                "{} works on the local store only: run it on the relay's host without --server",
                command_name("domain", &other)
            ),
        }
        Ok(())
    }

    pub async fn connector(&self, cmd: ConnectorCmd) -> Result<()> {
        match cmd {
            ConnectorCmd::Add(a) => {
                let id = self.tenant_id(&a.tenant).await?.to_string();
                let c = self
                    .post(
                        &["v1", "tenants", &id, "connectors"],
                        json!({
                            "name": a.name,
                            "kind": a.kind,
                            "ip_ranges": a.ips,
                            "cert_name": a.cert_name,
                            "auth_user": a.auth_user,
                            "auth_password": a.auth_password,
                            "require_tls": a.require_tls,
                            "allow_unregistered": a.allow_unregistered,
                            "restrict_domains_to_ips": a.restrict_domains_to_ips,
                            "restrict_domains_to_cert": a.restrict_domains_to_cert,
                        }),
                    )
                    .await?;
                println!("{}", num(&c["id"]));
            }
            ConnectorCmd::List { tenant, json } => {
                let id = self.tenant_id(&tenant).await?.to_string();
                let all = self.get(&["v1", "tenants", &id, "connectors"], &[]).await?;
                if json {
                    return print_json(&all);
                }
                print_connectors(&all);
            }
            ConnectorCmd::Delete { tenant, name } => {
                let t = self.tenant_id(&tenant).await?;
                let c = self.connector_id(t, &name).await?.to_string();
                self.call(
                    Method::DELETE,
                    &["v1", "tenants", &t.to_string(), "connectors", &c],
                    &[],
                    None,
                )
                .await?;
                println!("connector {name} deleted");
            }
            ConnectorCmd::Disable { tenant, name } => {
                self.connector_post(&tenant, &name, "disable").await?
            }
            ConnectorCmd::Enable { tenant, name } => {
                self.connector_post(&tenant, &name, "enable").await?
            }
            ConnectorCmd::Block { tenant, name } => {
                self.connector_patch(&tenant, &name, json!({"blocked": true}))
                    .await?
            }
            ConnectorCmd::Unblock { tenant, name } => {
                self.connector_patch(&tenant, &name, json!({"blocked": false}))
                    .await?
            }
        }
        Ok(())
    }

    pub async fn queue(&self, cmd: QueueCmd) -> Result<()> {
        let op = match &cmd {
            QueueCmd::Retry { id } => Some((id, Method::POST, "retry", None)),
            QueueCmd::Hold { id } => Some((id, Method::POST, "hold", None)),
            QueueCmd::Release { id } => Some((id, Method::POST, "release", None)),
            QueueCmd::Delete { id, no_dsn } => {
                Some((id, Method::DELETE, "delete", Some((!no_dsn).to_string())))
            }
            _ => None,
        };
        if let Some((id, method, name, dsn)) = op {
            let outcome = match dsn {
                Some(dsn) => {
                    self.call(method, &["v1", "queue", id], &[("dsn", dsn)], None)
                        .await?
                }
                None => {
                    self.call(method, &["v1", "queue", id, name], &[], None)
                        .await?
                }
            };
            if yes(&outcome["applied"]) {
                println!("{id}: {name} done");
            } else {
                println!("{id}: {name} requested from the running relay");
            }
            return Ok(());
        }
        match cmd {
            QueueCmd::List { json } => {
                let messages = self.get(&["v1", "queue"], &[]).await?;
                if json {
                    return print_json(&messages);
                }
                let rows = list(&messages)
                    .iter()
                    .map(|m| {
                        vec![
                            text(&m["queue_id"]),
                            time(&m["received_at"]),
                            num(&m["tenant_id"]),
                            match text(&m["sender"]) {
                                s if s.is_empty() => "<>".into(),
                                s => s,
                            },
                            list(&m["recipients"]).len().to_string(),
                            num(&m["size"]),
                            message_status(m),
                        ]
                    })
                    .collect::<Vec<_>>();
                table::print(
                    &[
                        "QUEUE ID", "RECEIVED", "TENANT", "SENDER", "RCPTS", "SIZE", "STATUS",
                    ],
                    &rows,
                );
            }
            QueueCmd::Show { id, json } => {
                let m = self.get(&["v1", "queue", &id], &[]).await?;
                if json {
                    return print_json(&m);
                }
                println!("queue id: {}", text(&m["queue_id"]));
                println!(
                    "received: {} from [{}]",
                    time(&m["received_at"]),
                    text(&m["client_ip"])
                );
                println!(
                    "tenant: {}  connector: {}",
                    num(&m["tenant_id"]),
                    num(&m["connector_id"])
                );
                println!(
                    "sender: <{}> ({})",
                    text(&m["sender"]),
                    text(&m["sender_class"])
                );
                println!("message-id: {}", text(&m["message_id"]));
                println!("size: {}", num(&m["size"]));
                if yes(&m["held"]) {
                    println!("held: yes");
                }
                let rows = list(&m["recipients"])
                    .iter()
                    .map(|r| {
                        vec![
                            text(&r["address"]),
                            text(&r["status"]),
                            num(&r["attempts"]),
                            text(&r["last_reply"]),
                        ]
                    })
                    .collect::<Vec<_>>();
                table::print(&["RECIPIENT", "STATUS", "ATTEMPTS", "LAST REPLY"], &rows);
            }
            _ => unreachable!("queue operations are handled above"),
        }
        Ok(())
    }

    pub async fn trace(&self, a: TraceArgs) -> Result<()> {
        let mut query = vec![("limit", a.limit.to_string())];
        if let Some(t) = &a.tenant {
            query.push(("tenant_id", self.tenant_id(t).await?.to_string()));
        }
        for (k, v) in [
            ("sender", a.sender),
            ("recipient", a.recipient),
            ("message_id", a.message_id),
            ("queue_id", a.queue_id),
        ] {
            if let Some(v) = v {
                query.push((k, v));
            }
        }
        let page = self.get(&["v1", "trace"], &query).await?;
        // A story reads oldest first.
        let mut events = list(&page["events"]).to_vec();
        events.reverse();
        if a.json {
            return print_json(&events);
        }
        let rows = events
            .iter()
            .map(|e| {
                vec![
                    time_ms(&e["at_ms"]),
                    text(&e["kind"]),
                    text(&e["queue_id"]),
                    text(&e["sender"]),
                    text(&e["recipient"]),
                    match (text(&e["reply"]), text(&e["detail"])) {
                        (r, d) if r.is_empty() => d,
                        (r, d) if e["kind"] == "refused" && !d.is_empty() => format!("{r} ({d})"),
                        (r, _) => r,
                    },
                ]
            })
            .collect::<Vec<_>>();
        table::print(
            &[
                "TIME",
                "EVENT",
                "QUEUE ID",
                "SENDER",
                "RECIPIENT",
                "REPLY/DETAIL",
            ],
            &rows,
        );
        Ok(())
    }

    pub async fn audit(&self, a: AuditArgs) -> Result<()> {
        let mut query = vec![("limit", a.limit.to_string())];
        if let Some(t) = &a.tenant {
            query.push(("tenant_id", self.tenant_id(t).await?.to_string()));
        }
        let entries = self.get(&["v1", "audit"], &query).await?;
        if a.json {
            return print_json(&entries);
        }
        let rows = list(&entries)
            .iter()
            .map(|e| {
                vec![
                    time(&e["at"]),
                    text(&e["actor"]),
                    text(&e["action"]),
                    text(&e["object"]),
                    text(&e["detail"]),
                ]
            })
            .collect::<Vec<_>>();
        table::print(&["TIME", "ACTOR", "ACTION", "OBJECT", "DETAIL"], &rows);
        Ok(())
    }

    pub async fn sender(&self, cmd: SenderCmd) -> Result<()> {
        match cmd {
            SenderCmd::List { tenant, json } => {
                let mut all = Vec::new();
                for (id, name) in self.tenants_in_view(tenant.as_deref()).await? {
                    let rows = self
                        .get(
                            &["v1", "tenants", &id.to_string(), "sender-restrictions"],
                            &[],
                        )
                        .await?;
                    for mut r in list(&rows).to_vec() {
                        r["tenant_id"] = json!(id);
                        r["tenant"] = json!(name);
                        all.push(r);
                    }
                }
                if json {
                    return print_json(&all);
                }
                let rows = all
                    .iter()
                    .map(|r| {
                        vec![
                            text(&r["tenant"]),
                            text(&r["sender"]),
                            time_ms(&r["since_ms"]),
                            match r["until_ms"].as_i64() {
                                Some(u) => table::time_ms(u),
                                None => "until lifted".into(),
                            },
                            text(&r["action"]),
                            text(&r["reason"]),
                        ]
                    })
                    .collect::<Vec<_>>();
                table::print(
                    &["TENANT", "SENDER", "SINCE", "UNTIL", "ACTION", "REASON"],
                    &rows,
                );
            }
            SenderCmd::Unrestrict { address, tenant } => {
                let address = address.trim_matches(['<', '>']).to_string();
                let mut lifted = 0;
                for (id, name) in self.tenants_in_view(tenant.as_deref()).await? {
                    let path = [
                        "v1",
                        "tenants",
                        &id.to_string(),
                        "sender-restrictions",
                        &address,
                    ];
                    match self.send(Method::DELETE, &path, &[], None).await? {
                        Ok(_) => {
                            lifted += 1;
                            println!("{address}: restriction lifted (tenant {name})");
                        }
                        // Not restricted at this tenant.
                        Err(p) if p.status == 404 => {}
                        Err(p) => bail!("{}", p.detail),
                    }
                }
                if lifted == 0 {
                    bail!("{address} has no standing restriction");
                }
            }
        }
        Ok(())
    }

    pub async fn token(&self, cmd: TokenCmd) -> Result<()> {
        match cmd {
            TokenCmd::Create {
                operator: _,
                tenant,
                label,
            } => {
                let (body, what) = match &tenant {
                    Some(t) => {
                        let id = self.tenant_id(t).await?;
                        (
                            json!({"scope": "tenant", "tenant_id": id}),
                            format!("tenant {t}"),
                        )
                    }
                    None => (json!({"scope": "operator"}), "operator".to_string()),
                };
                let mut body = body;
                body["label"] = json!(label.unwrap_or_else(|| DEFAULT_LABEL.into()));
                let created = self.post(&["v1", "tokens"], body).await?;
                print_created(
                    created["id"].as_i64().unwrap_or_default(),
                    &what,
                    &text(&created["token"]),
                );
            }
            TokenCmd::List { tenant, json } => {
                let mut query = Vec::new();
                if let Some(t) = &tenant {
                    query.push(("tenant_id", self.tenant_id(t).await?.to_string()));
                }
                let tokens = self.get(&["v1", "tokens"], &query).await?;
                if json {
                    return print_json(&tokens);
                }
                print_tokens(&tokens);
            }
            TokenCmd::Revoke { id } => {
                self.call(
                    Method::DELETE,
                    &["v1", "tokens", &id.to_string()],
                    &[],
                    None,
                )
                .await?;
                println!("token {id} revoked");
            }
        }
        Ok(())
    }
}

/// "`tenant sender-limits`" for `TenantCmd::SenderLimits(..)`.
fn command_name<T: std::fmt::Debug>(group: &str, cmd: &T) -> String {
    let debug = format!("{cmd:?}");
    let name: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    format!("`{group} {out}`")
}

/// `held`, or the recipients' statuses counted, as `relayward queue list` prints them locally.
fn message_status(m: &Value) -> String {
    if yes(&m["held"]) {
        return "held".into();
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in list(&m["recipients"]) {
        *counts.entry(text(&r["status"])).or_default() += 1;
    }
    let mut parts: Vec<String> = counts
        .into_iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    parts.sort();
    parts.join(",")
}

fn print_domains(domains: &Value) {
    let rows = list(domains)
        .iter()
        .map(|d| {
            vec![
                text(&d["domain"]),
                text(&d["kind"]),
                if yes(&d["match_subdomains"]) {
                    "yes"
                } else {
                    "no"
                }
                .into(),
                text(&d["status"]),
                text(&d["verification_record"]["value"]),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &["DOMAIN", "KIND", "SUBDOMAINS", "STATUS", "TXT RECORD"],
        &rows,
    );
}

fn print_connectors(connectors: &Value) {
    let rows = list(connectors)
        .iter()
        .map(|c| {
            let mut flags = Vec::new();
            for (key, name) in [
                ("require_tls", "require-tls"),
                ("allow_unregistered", "allow-unregistered"),
                ("restrict_domains_to_ips", "restrict-to-ips"),
                ("restrict_domains_to_cert", "restrict-to-cert"),
                ("blocked", "BLOCKED"),
            ] {
                if yes(&c[key]) {
                    flags.push(name);
                }
            }
            if !yes(&c["enabled"]) {
                flags.push("disabled");
            }
            vec![
                num(&c["id"]),
                text(&c["name"]),
                text(&c["kind"]),
                list(&c["ip_ranges"])
                    .iter()
                    .map(text)
                    .collect::<Vec<_>>()
                    .join(","),
                text(&c["cert_name"]),
                text(&c["auth_user"]),
                flags.join(","),
                match c["last_used_at"].as_i64() {
                    Some(at) => table::time(at),
                    None => "never".into(),
                },
                list(&c["audit"]["flags"])
                    .iter()
                    .map(text)
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &[
            "ID",
            "NAME",
            "KIND",
            "IP RANGES",
            "CERT NAME",
            "AUTH USER",
            "FLAGS",
            "LAST USED",
            "AUDIT",
        ],
        &rows,
    );
}

/// `tenant show` from the API's answers.
fn print_show(t: &Value, domains: &Value, connectors: &Value, status: &Value) {
    println!("tenant {} (id {})", text(&t["name"]), num(&t["id"]));
    println!("state: {}", text(&status["state"]));
    if status["since_ms"].is_i64() {
        println!("since: {}", time_ms(&status["since_ms"]));
    }
    if status["summary"].is_string() {
        println!("last change: {}", text(&status["summary"]));
    }
    if status["probation_until_ms"].is_i64() {
        println!(
            "probation until: {}",
            time_ms(&status["probation_until_ms"])
        );
    }
    if let Some(rep) = status
        .get("reputation")
        .filter(|r| !r.is_null())
        .and_then(|r| {
            serde_json::from_value::<relayward_policy::reputation::ReputationStatus>(r.clone()).ok()
        })
    {
        println!("{}", crate::abuse::report::reputation_line(&rep));
        for reason in &rep.reasons {
            println!("  - {reason}");
        }
    }
    println!(
        "admins: {}",
        list(&t["admin_emails"])
            .iter()
            .map(text)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("\ndomains:");
    print_domains(domains);
    println!("\nconnectors:");
    print_connectors(connectors);
    // Evidence with signals is the detector's; a person's transition carries none.
    if let Some(e) = status
        .get("evidence")
        .filter(|e| !e.is_null())
        .and_then(|e| serde_json::from_value::<Evidence>(e.clone()).ok())
        .filter(|e| !e.signals.is_empty())
    {
        let names: HashMap<i64, String> = list(connectors)
            .iter()
            .filter_map(|c| Some((c["id"].as_i64()?, text(&c["name"]))))
            .collect();
        println!("\nlatest evidence:");
        for line in report::evidence_lines(&e, &names) {
            println!("  - {line}");
        }
    }
    let checklist = list(&status["checklist"]);
    if !checklist.is_empty() {
        println!("\nto get unblocked:");
        for item in checklist {
            println!("  {}", text(item));
        }
    }
}

impl Remote {
    /// `relayward suppression` through the API: a tenant's list, or the global one.
    pub async fn suppression(&self, cmd: super::SuppressionCmd) -> Result<()> {
        use super::SuppressionCmd;
        // The path of the list, and how to name it.
        let list = |tenant: Option<String>| async move {
            match tenant {
                Some(t) => {
                    let id = self.tenant_id(&t).await?.to_string();
                    let name = super::suppression_list_name(Some(&t));
                    Ok::<_, anyhow::Error>((
                        vec![
                            "v1".to_string(),
                            "tenants".into(),
                            id,
                            "suppressions".into(),
                        ],
                        name,
                    ))
                }
                None => Ok((
                    vec!["v1".to_string(), "suppressions".into()],
                    super::suppression_list_name(None),
                )),
            }
        };
        match cmd {
            SuppressionCmd::List { tenant, json, .. } => {
                let (path, _) = list(tenant).await?;
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                let entries = self.get(&path, &[]).await?;
                if json {
                    return print_json(&entries);
                }
                super::print_suppressions(&entries);
            }
            SuppressionCmd::Add {
                tenant,
                address,
                days,
                reason,
                ..
            } => {
                let (path, name) = list(tenant).await?;
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                let stored = self
                    .post(
                        &path,
                        json!({"address": address, "days": days, "reason": reason}),
                    )
                    .await?;
                println!(
                    "{} suppressed on {name} {}",
                    text(&stored["address"]),
                    match stored["expires_at"].as_i64() {
                        Some(at) => format!("until {}", table::time(at)),
                        None => "until removed".into(),
                    }
                );
            }
            SuppressionCmd::Remove {
                tenant, address, ..
            } => {
                let (mut path, name) = list(tenant).await?;
                let key = super::suppression_address(&address)?;
                path.push(key.clone());
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                self.call(Method::DELETE, &path, &[], None).await?;
                println!("{key} removed from {name}");
            }
        }
        Ok(())
    }
}
