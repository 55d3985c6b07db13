//! Administration commands on the local store. Every change is audited with the actor
//! `cli:<user>`.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use relayward_core::{normalize_domain, ConnectorKind, DomainKind, Tenant, TraceQuery};
use relayward_store::{NewConnector, NewDomain, Store};
use serde_json::json;

use crate::config::Config;
use crate::table;

fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    if let Some(path) = config.store_url().strip_prefix("sqlite://") {
        if let Some(parent) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
    }
    relayward_store::open(&config.store_url())
        .await
        .map_err(|e| anyhow!("cannot open store: {e}"))
}

async fn tenant_of(store: &dyn Store, name_or_id: &str) -> Result<Tenant> {
    store
        .find_tenant(name_or_id)
        .await?
        .ok_or_else(|| anyhow!("no tenant {name_or_id:?}"))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant; prints its id
    Add {
        name: String,
        #[arg(long = "admin-email", value_name = "ADDR")]
        admin_emails: Vec<String>,
    },
    /// List tenants
    List {
        #[arg(long)]
        json: bool,
    },
    /// State, domains and connectors of one tenant
    Show {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
}

fn valid_tenant_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 {
        bail!("tenant name must be 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("tenant name may contain only letters, digits, '-', '_' and '.'");
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        bail!("tenant name cannot be all digits (it would read as an id)");
    }
    Ok(())
}

pub async fn tenant(config: &Config, cmd: TenantCmd) -> Result<()> {
    let store = open_store(config).await?;
    match cmd {
        TenantCmd::Add { name, admin_emails } => {
            valid_tenant_name(&name)?;
            for e in &admin_emails {
                relayward_core::Address::parse(e, true)
                    .map_err(|err| anyhow!("--admin-email: {err}"))?;
            }
            let t = store.create_tenant(&name, &admin_emails, &actor()).await?;
            println!("{}", t.id);
        }
        TenantCmd::List { json } => {
            let tenants = store.list_tenants().await?;
            if json {
                return print_json(&tenants);
            }
            let rows = tenants
                .iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        t.name.clone(),
                        t.state.to_string(),
                        t.admin_emails.join(","),
                        table::time(t.created_at),
                    ]
                })
                .collect::<Vec<_>>();
            table::print(&["ID", "NAME", "STATE", "ADMINS", "CREATED"], &rows);
        }
        TenantCmd::Show { tenant, json } => {
            let t = tenant_of(&*store, &tenant).await?;
            let domains = store.list_domains(Some(t.id)).await?;
            let connectors = store.list_connectors(Some(t.id)).await?;
            if json {
                return print_json(&json!({
                    "tenant": t, "domains": domains, "connectors": connectors,
                }));
            }
            println!("tenant {} (id {})", t.name, t.id);
            println!("state: {}", t.state);
            println!("admins: {}", t.admin_emails.join(", "));
            println!("\ndomains:");
            print_domains(&domains);
            println!("\nconnectors:");
            print_connectors(&connectors);
        }
    }
    Ok(())
}

fn print_domains(domains: &[relayward_core::AcceptedDomain]) {
    let rows = domains
        .iter()
        .map(|d| {
            vec![
                d.domain.clone(),
                d.kind.to_string(),
                if d.match_subdomains { "yes" } else { "no" }.into(),
                if d.verified { "verified" } else { "pending" }.into(),
                format!("relayward-verification={}", d.verification_token),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &["DOMAIN", "KIND", "SUBDOMAINS", "STATUS", "TXT RECORD"],
        &rows,
    );
}

fn print_connectors(connectors: &[relayward_core::Connector]) {
    let rows = connectors
        .iter()
        .map(|c| {
            let mut flags = Vec::new();
            for (on, name) in [
                (c.require_tls, "require-tls"),
                (c.allow_unregistered, "allow-unregistered"),
                (c.restrict_domains_to_ips, "restrict-to-ips"),
                (c.restrict_domains_to_cert, "restrict-to-cert"),
                (!c.enabled, "disabled"),
                (c.blocked, "BLOCKED"),
            ] {
                if on {
                    flags.push(name);
                }
            }
            vec![
                c.id.to_string(),
                c.name.clone(),
                c.kind.to_string(),
                c.ip_ranges
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                c.cert_name.clone().unwrap_or_default(),
                c.auth_user.clone().unwrap_or_default(),
                flags.join(","),
                c.last_used_at
                    .map(table::time)
                    .unwrap_or_else(|| "never".into()),
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
        ],
        &rows,
    );
}

#[derive(Subcommand, Debug)]
pub enum DomainCmd {
    /// Register a domain; prints the TXT record to publish
    Add {
        tenant: String,
        domain: String,
        #[arg(long, default_value = "authoritative", value_parser = ["authoritative", "internal-relay"])]
        kind: String,
        #[arg(long)]
        match_subdomains: bool,
        /// The operator attests ownership (audited); no DNS check
        #[arg(long)]
        verified: bool,
    },
    /// Check the domain's DNS TXT record and mark it verified when it is there
    Verify { tenant: String, domain: String },
    /// Register many domains from a file (one per line; '#' comments); prints a summary
    Import {
        tenant: String,
        file: std::path::PathBuf,
        #[arg(long, default_value = "authoritative", value_parser = ["authoritative", "internal-relay"])]
        kind: String,
        #[arg(long)]
        match_subdomains: bool,
        /// The operator attests ownership of every domain in the file (audited)
        #[arg(long)]
        verified: bool,
    },
    /// List a tenant's domains
    List {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove an accepted domain
    Remove { tenant: String, domain: String },
}

pub async fn domain(config: &Config, cmd: DomainCmd) -> Result<()> {
    let store = open_store(config).await?;
    match cmd {
        DomainCmd::Add {
            tenant,
            domain,
            kind,
            match_subdomains,
            verified,
        } => {
            let t = tenant_of(&*store, &tenant).await?;
            let domain = normalize_domain(&domain)?;
            let kind: DomainKind = kind.parse()?;
            let d = store
                .add_domain(
                    NewDomain {
                        tenant_id: t.id,
                        domain,
                        kind,
                        match_subdomains,
                        verified,
                    },
                    &actor(),
                )
                .await?;
            if d.verified {
                println!("{} verified (operator attestation)", d.domain);
            } else {
                println!("publish this TXT record, then run `relayward domain verify`:");
                println!(
                    "{}. IN TXT \"relayward-verification={}\"",
                    d.domain, d.verification_token
                );
            }
        }
        DomainCmd::Verify { tenant, domain } => {
            let t = tenant_of(&*store, &tenant).await?;
            let domain = normalize_domain(&domain)?;
            let d = store
                .get_domain(t.id, &domain)
                .await?
                .ok_or_else(|| anyhow!("tenant {} has no domain {domain}", t.name))?;
            let found = crate::dns::lookup_txt(config.delivery.dns_resolver, &domain).await?;
            let wanted = format!("relayward-verification={}", d.verification_token);
            if found.iter().any(|txt| txt.trim() == wanted) {
                store.set_domain_verified(d.id, true, &actor()).await?;
                println!("{domain} verified");
            } else if found.is_empty() {
                bail!("{domain} not verified: no TXT record found; publish \"{wanted}\"");
            } else {
                bail!(
                    "{domain} not verified: {} TXT record(s) found, none is \"{wanted}\"",
                    found.len()
                );
            }
        }
        DomainCmd::Import {
            tenant,
            file,
            kind,
            match_subdomains,
            verified,
        } => {
            let t = tenant_of(&*store, &tenant).await?;
            let kind: DomainKind = kind.parse()?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            // Validate everything first: a bad line changes nothing.
            let mut domains = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let d = normalize_domain(line)
                    .map_err(|e| anyhow!("{}:{}: {e}", file.display(), n + 1))?;
                domains.push(d);
            }
            let (mut added, mut existing) = (0, 0);
            for domain in domains {
                if store.get_domain(t.id, &domain).await?.is_some() {
                    existing += 1;
                    continue;
                }
                store
                    .add_domain(
                        NewDomain {
                            tenant_id: t.id,
                            domain,
                            kind,
                            match_subdomains,
                            verified,
                        },
                        &actor(),
                    )
                    .await?;
                added += 1;
            }
            println!("{added} added, {existing} already present");
        }
        DomainCmd::List { tenant, json } => {
            let t = tenant_of(&*store, &tenant).await?;
            let domains = store.list_domains(Some(t.id)).await?;
            if json {
                return print_json(&domains);
            }
            print_domains(&domains);
        }
        DomainCmd::Remove { tenant, domain } => {
            let t = tenant_of(&*store, &tenant).await?;
            let domain = normalize_domain(&domain)?;
            let d = store
                .get_domain(t.id, &domain)
                .await?
                .ok_or_else(|| anyhow!("tenant {} has no domain {domain}", t.name))?;
            store.remove_domain(d.id, &actor()).await?;
            println!("{domain} removed");
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ConnectorCmd {
    /// Create an inbound connector
    Add(ConnectorAdd),
    /// List a tenant's connectors
    List {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop accepting mail through a connector
    Disable { tenant: String, name: String },
    /// Accept mail through a connector again
    Enable { tenant: String, name: String },
    /// Block a connector on its own (5.7.711)
    Block { tenant: String, name: String },
    /// Lift a connector block
    Unblock { tenant: String, name: String },
    /// Delete a connector
    Delete { tenant: String, name: String },
}

#[derive(Args, Debug)]
pub struct ConnectorAdd {
    tenant: String,
    #[arg(long)]
    name: String,
    #[arg(long, value_parser = ["on-premises", "partner"])]
    kind: String,
    /// Source range (CIDR, IPv4 or IPv6); repeatable
    #[arg(long = "ip", value_name = "CIDR")]
    ips: Vec<String>,
    /// TLS client certificate name (DNS SAN, or CN); must be an accepted domain of the tenant
    #[arg(long)]
    cert_name: Option<String>,
    #[arg(long, requires = "auth_password")]
    auth_user: Option<String>,
    /// The password is hashed (argon2id) before it is stored. Prefer RELAYWARD_AUTH_PASSWORD
    /// to keep it out of the process list.
    #[arg(
        long,
        env = "RELAYWARD_AUTH_PASSWORD",
        hide_env_values = true,
        requires = "auth_user"
    )]
    auth_password: Option<String>,
    #[arg(long)]
    require_tls: bool,
    #[arg(long)]
    allow_unregistered: bool,
    #[arg(long)]
    restrict_domains_to_ips: bool,
    #[arg(long)]
    restrict_domains_to_cert: bool,
}

fn parse_cidr(s: &str) -> Result<ipnet::IpNet> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        if net.trunc() != net {
            bail!("--ip {s}: host bits set (did you mean {}?)", net.trunc());
        }
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    bail!("--ip {s:?}: not a CIDR range or IP address")
}

pub async fn connector(config: &Config, cmd: ConnectorCmd) -> Result<()> {
    let store = open_store(config).await?;
    let find = |tenant: String, name: String| {
        let store = store.clone();
        async move {
            let t = tenant_of(&*store, &tenant).await?;
            let c = store
                .list_connectors(Some(t.id))
                .await?
                .into_iter()
                .find(|c| c.name == name)
                .ok_or_else(|| anyhow!("tenant {} has no connector {name:?}", t.name))?;
            Ok::<_, anyhow::Error>(c)
        }
    };
    match cmd {
        ConnectorCmd::Add(a) => {
            let t = tenant_of(&*store, &a.tenant).await?;
            if a.name.is_empty() || a.name.len() > 64 || a.name.chars().any(|c| c.is_control()) {
                bail!("--name must be 1 to 64 printable characters");
            }
            let ip_ranges = a
                .ips
                .iter()
                .map(|s| parse_cidr(s))
                .collect::<Result<Vec<_>>>()?;
            let cert_name = a
                .cert_name
                .as_deref()
                .map(normalize_domain)
                .transpose()
                .map_err(|e| anyhow!("--cert-name: {e}"))?;
            if ip_ranges.is_empty() && cert_name.is_none() && a.auth_user.is_none() {
                bail!("a connector needs at least one of --ip, --cert-name, --auth-user");
            }
            if a.restrict_domains_to_ips && ip_ranges.is_empty() {
                bail!("--restrict-domains-to-ips needs --ip");
            }
            if a.restrict_domains_to_cert && cert_name.is_none() {
                bail!("--restrict-domains-to-cert needs --cert-name");
            }
            let auth_password_hash = match &a.auth_password {
                Some(p) if p.len() < 12 => bail!("--auth-password must be at least 12 characters"),
                Some(p) => Some(
                    relayward_policy::auth::hash_password(p).map_err(|e| anyhow!("hash: {e}"))?,
                ),
                None => None,
            };
            let c = store
                .add_connector(
                    NewConnector {
                        tenant_id: t.id,
                        name: a.name,
                        kind: a.kind.parse::<ConnectorKind>()?,
                        ip_ranges,
                        cert_name,
                        auth_user: a.auth_user,
                        auth_password_hash,
                        require_tls: a.require_tls,
                        allow_unregistered: a.allow_unregistered,
                        restrict_domains_to_ips: a.restrict_domains_to_ips,
                        restrict_domains_to_cert: a.restrict_domains_to_cert,
                    },
                    &actor(),
                )
                .await?;
            println!("{}", c.id);
        }
        ConnectorCmd::List { tenant, json } => {
            let t = tenant_of(&*store, &tenant).await?;
            let list = store.list_connectors(Some(t.id)).await?;
            if json {
                return print_json(&list);
            }
            print_connectors(&list);
        }
        ConnectorCmd::Delete { tenant, name } => {
            let c = find(tenant, name).await?;
            store.delete_connector(c.id, &actor()).await?;
            println!("connector {} deleted", c.name);
        }
        other => {
            let (tenant, name, change): (String, String, fn(&mut relayward_core::Connector)) =
                match other {
                    ConnectorCmd::Disable { tenant, name } => (tenant, name, |c| c.enabled = false),
                    ConnectorCmd::Enable { tenant, name } => (tenant, name, |c| c.enabled = true),
                    ConnectorCmd::Block { tenant, name } => (tenant, name, |c| c.blocked = true),
                    ConnectorCmd::Unblock { tenant, name } => (tenant, name, |c| c.blocked = false),
                    _ => unreachable!("handled above"),
                };
            let mut c = find(tenant, name).await?;
            change(&mut c);
            store.update_connector(&c, &actor()).await?;
            println!("connector {} updated", c.name);
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Spooled messages
    List {
        #[arg(long)]
        json: bool,
    },
    /// One message: envelope and each recipient's status
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Attempt delivery now
    Retry { id: String },
    /// Stop delivery attempts until released
    Hold { id: String },
    /// Resume delivery attempts
    Release { id: String },
    /// Remove from the queue; the sender gets a DSN unless --no-dsn
    Delete {
        id: String,
        #[arg(long)]
        no_dsn: bool,
    },
}

pub async fn queue(config: &Config, cmd: QueueCmd) -> Result<()> {
    use relayward_queue::{AdminOutcome, ControlOp, QueueId};
    let op = match &cmd {
        QueueCmd::Retry { id } => Some((id, ControlOp::RetryNow)),
        QueueCmd::Hold { id } => Some((id, ControlOp::Hold)),
        QueueCmd::Release { id } => Some((id, ControlOp::Release)),
        QueueCmd::Delete { id, no_dsn } => Some((id, ControlOp::Delete { send_dsn: !no_dsn })),
        _ => None,
    };
    if let Some((id, op)) = op {
        let qid: QueueId = id
            .parse()
            .map_err(|_| anyhow!("{id:?} is not a queue id"))?;
        let name = format!("{op:?}").to_lowercase();
        let outcome = relayward_queue::admin(&config.spool_dir(), &config.delivery(), qid, op)
            .map_err(|e| anyhow!("{id}: {e}"))?;
        match outcome {
            AdminOutcome::Applied(events) => {
                if !events.is_empty() {
                    let store = open_store(config).await?;
                    store.record_trace(&events).await?;
                }
                println!("{id}: {name} done");
            }
            AdminOutcome::Requested => println!("{id}: {name} requested from the running relay"),
        }
        return Ok(());
    }
    let spool = relayward_queue::Spool::open_read_only(config.spool_dir())
        .map_err(|e| anyhow!("cannot open spool {}: {e}", config.spool_dir().display()))?;
    match cmd {
        QueueCmd::List { json } => {
            let mut envs = Vec::new();
            for id in spool.scan()? {
                match spool.read_envelope(&id) {
                    Ok(e) => envs.push(e),
                    // Delivered and removed between scan and read.
                    Err(_) => continue,
                }
            }
            if json {
                return print_json(&envs);
            }
            let rows = envs
                .iter()
                .map(|e| {
                    vec![
                        e.queue_id.to_string(),
                        table::time(e.received_at),
                        e.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
                        if e.sender.is_empty() {
                            "<>".into()
                        } else {
                            e.sender.clone()
                        },
                        e.recipients.len().to_string(),
                        e.size.to_string(),
                        crate::serve::queue_status(e),
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
            let qid = spool
                .scan()?
                .into_iter()
                .find(|q| q.to_string() == id)
                .ok_or_else(|| anyhow!("no message {id:?} in the queue"))?;
            let e = spool.read_envelope(&qid)?;
            if json {
                return print_json(&e);
            }
            println!("queue id: {}", e.queue_id);
            println!(
                "received: {} from [{}] helo {}",
                table::time(e.received_at),
                e.client_ip,
                e.helo
            );
            println!("tenant: {:?}  connector: {:?}", e.tenant_id, e.connector_id);
            println!(
                "sender: <{}> ({}{})",
                e.sender,
                e.sender_class,
                if e.header_from_mismatch {
                    ", header From mismatch"
                } else {
                    ""
                }
            );
            println!("message-id: {}", e.message_id.clone().unwrap_or_default());
            println!("size: {}", e.size);
            let rows = e
                .recipients
                .iter()
                .map(|r| {
                    vec![
                        r.address.clone(),
                        format!("{:?}", r.status).to_lowercase(),
                        r.attempts.to_string(),
                        r.last_reply.clone().unwrap_or_default(),
                    ]
                })
                .collect::<Vec<_>>();
            table::print(&["RECIPIENT", "STATUS", "ATTEMPTS", "LAST REPLY"], &rows);
        }
        QueueCmd::Retry { .. }
        | QueueCmd::Hold { .. }
        | QueueCmd::Release { .. }
        | QueueCmd::Delete { .. } => unreachable!("queue operations are handled above"),
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    sender: Option<String>,
    #[arg(long)]
    recipient: Option<String>,
    #[arg(long)]
    message_id: Option<String>,
    #[arg(long)]
    queue_id: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(long)]
    json: bool,
}

pub async fn trace(config: &Config, a: TraceArgs) -> Result<()> {
    let store = open_store(config).await?;
    let tenant_id = match &a.tenant {
        Some(t) => Some(tenant_of(&*store, t).await?.id),
        None => None,
    };
    let message_id = a.message_id.map(|m| {
        m.trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string()
    });
    let mut events = store
        .search_trace(&TraceQuery {
            tenant_id,
            sender: a.sender,
            recipient: a.recipient,
            message_id,
            queue_id: a.queue_id,
            since_ms: None,
            until_ms: None,
            limit: a.limit,
        })
        .await?;
    // A story reads oldest first.
    events.reverse();
    if a.json {
        return print_json(&events);
    }
    let rows = events
        .iter()
        .map(|e| {
            vec![
                table::time_ms(e.at_ms),
                e.kind.to_string(),
                e.queue_id.clone().unwrap_or_default(),
                e.sender.clone().unwrap_or_default(),
                e.recipient.clone().unwrap_or_default(),
                e.reply
                    .clone()
                    .or_else(|| e.detail.clone())
                    .unwrap_or_default(),
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

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(long)]
    json: bool,
}

pub async fn audit(config: &Config, a: AuditArgs) -> Result<()> {
    let store = open_store(config).await?;
    let tenant_id = match &a.tenant {
        Some(t) => Some(tenant_of(&*store, t).await?.id),
        None => None,
    };
    let entries = store.list_audit(tenant_id, a.limit).await?;
    if a.json {
        return print_json(&entries);
    }
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                table::time(e.at),
                e.actor.clone(),
                e.action.clone(),
                e.object.clone(),
                e.detail.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(&["TIME", "ACTOR", "ACTION", "OBJECT", "DETAIL"], &rows);
    Ok(())
}
