//! Administration commands on the local store. Every change is audited with the actor
//! `cli:<user>`.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use std::collections::HashMap;

use relayward_core::{
    normalize_domain, ConnectorKind, DomainKind, Tenant, TenantId, TenantState, TraceQuery,
};
use relayward_policy::counters::sender_key;
use relayward_policy::detector::{BlockScope, Detector};
use relayward_policy::evidence::Evidence;
use relayward_policy::limits::SenderLimits;
use relayward_store::{NewConnector, NewDomain, Store};
use serde_json::json;

// A child module: the API client reads the same argument structs as the local commands.
#[path = "remote.rs"]
pub mod remote;

use crate::abuse::report;
use crate::abuse::way_back::{self, Attestation, WayBackError};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::table;

pub(crate) fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

pub(crate) async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
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
    /// State, domains and connectors of one tenant, with the evidence of its latest restriction
    Show {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Tenant admin: attest the fixes and ask to be unblocked (blocked_unregistered ->
    /// under_review). Refused, saying what is missing, until every unregistered domain in the
    /// evidence is registered (verified) or declared forwarded and every attestation is given.
    RequestUnblock(RequestUnblockArgs),
    /// Operator: lift a block (-> probation with tightened thresholds)
    Unblock { tenant: String },
    /// Operator: block a tenant by hand
    #[command(group(clap::ArgGroup::new("scope").required(true)))]
    Block {
        tenant: String,
        /// Refuse every message (5.7.705)
        #[arg(long, group = "scope")]
        all: bool,
        /// Refuse unregistered and null senders (5.7.750); registered mail flows
        #[arg(long, group = "scope")]
        unregistered: bool,
    },
    /// Show or set the tenant's own per-sender limits (default: the configured ones)
    SenderLimits(SenderLimitsArgs),
}

#[derive(Args, Debug)]
pub struct RequestUnblockArgs {
    pub tenant: String,
    /// Every domain the tenant sends from is registered and verified
    #[arg(long)]
    pub domains_registered: bool,
    /// Connector changes of the last 7 days were reviewed (and undone where not ours)
    #[arg(long)]
    pub connectors_reviewed: bool,
    /// The servers that sent the mail were found and secured
    #[arg(long)]
    pub servers_secured: bool,
    /// A domain in the evidence whose mail the tenant forwards for others (repeatable)
    #[arg(long = "forwarded-domain", value_name = "DOMAIN")]
    pub forwarded_domains: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SenderLimitsArgs {
    pub tenant: String,
    /// What happens to a sender over a limit
    #[arg(long, value_parser = ["block_for_today", "block", "alert"])]
    pub action: Option<String>,
    /// Recipients outside the tenant's domains per sender per hour (0: no limit)
    #[arg(long)]
    pub external_recipients_per_hour: Option<u64>,
    /// Recipients per sender per 24 hours (0: no limit)
    #[arg(long)]
    pub recipients_per_day: Option<u64>,
    /// Messages per sender per minute (0: no limit)
    #[arg(long)]
    pub messages_per_minute: Option<u64>,
    /// Back to the configured defaults
    #[arg(long, conflicts_with_all = ["action", "external_recipients_per_hour", "recipients_per_day", "messages_per_minute"])]
    pub reset: bool,
    #[arg(long)]
    pub json: bool,
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
    tenant_at(config, cmd, &SystemClock).await
}

/// [`tenant`] on the detector's `clock` (tests pass a simulated one).
pub async fn tenant_at(config: &Config, cmd: TenantCmd, clock: &dyn Clock) -> Result<()> {
    let store = open_store(config).await?;
    match cmd {
        TenantCmd::RequestUnblock(a) => {
            return request_unblock(config, &*store, a, clock.now_ms()).await
        }
        TenantCmd::Unblock { tenant } => {
            let t = tenant_of(&*store, &tenant).await?;
            let detector = Detector::new(config.detector.clone());
            let (tr, _) =
                way_back::operator_unblock(&*store, &detector, &t, &actor(), clock.now_ms())
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
            println!(
                "tenant {}: {} -> probation until {} (thresholds x{})",
                t.name,
                tr.from,
                tr.probation_until_ms
                    .map(table::time_ms)
                    .unwrap_or_default(),
                config.detector.probation_factor
            );
            return Ok(());
        }
        TenantCmd::Block {
            tenant,
            all,
            unregistered: _,
        } => {
            let t = tenant_of(&*store, &tenant).await?;
            let scope = if all {
                BlockScope::All
            } else {
                BlockScope::Unregistered
            };
            let detector = Detector::new(config.detector.clone());
            let (tr, _) =
                way_back::operator_block(&*store, &detector, &t, scope, &actor(), clock.now_ms())
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
            println!("tenant {}: {} -> {}", t.name, tr.from, tr.to);
            return Ok(());
        }
        TenantCmd::SenderLimits(a) => return sender_limits(config, &*store, a).await,
        _ => {}
    }
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
            let status = store.tenant_status(t.id).await?;
            let transitions = store.list_transitions(t.id, 20).await?;
            let restrictions = store
                .list_sender_restrictions(Some(t.id), clock.now_ms(), None)
                .await?;
            let limits = own_sender_limits(&*store, t.id).await?;
            let forwarded = store.forwarded_domains(t.id).await?;
            let latest = transitions.iter().find(|r| {
                matches!(
                    r.to,
                    TenantState::Warned
                        | TenantState::BlockedUnregistered
                        | TenantState::BlockedAll
                )
            });
            let latest_evidence: Option<Evidence> =
                latest.and_then(|r| serde_json::from_str(&r.evidence).ok());
            let reputation =
                crate::abuse::reputation_from_store(&*store, config, t.id, clock.now_ms()).await?;
            if json {
                return print_json(&json!({
                    "tenant": t,
                    "domains": domains,
                    "connectors": connectors,
                    "status": status.as_ref().map(|s| json!({
                        "state": s.state,
                        "since_ms": s.since_ms,
                        "probation_until_ms": s.probation_until_ms,
                        "reason": s.reason,
                        "changed_by": s.changed_by,
                    })),
                    "transitions": transitions.iter().map(transition_json).collect::<Vec<_>>(),
                    "sender_restrictions": restrictions.iter().map(restriction_json).collect::<Vec<_>>(),
                    "sender_limits": limits.unwrap_or(config.default_sender_limits()),
                    "sender_limits_own": limits.is_some(),
                    "forwarded_domains": forwarded,
                    "reputation": reputation,
                }));
            }
            println!("tenant {} (id {})", t.name, t.id);
            println!("state: {}", t.state);
            println!("{}", crate::abuse::report::reputation_line(&reputation));
            for reason in &reputation.reasons {
                println!("  - {reason}");
            }
            if let Some(s) = &status {
                println!("since: {}", table::time_ms(s.since_ms));
                if let Some(reason) = &s.reason {
                    println!(
                        "reason: {reason} (by {})",
                        s.changed_by.as_deref().unwrap_or("-")
                    );
                }
                if let Some(until) = s.probation_until_ms {
                    println!("probation until: {}", table::time_ms(until));
                }
            }
            println!("admins: {}", t.admin_emails.join(", "));
            println!("\ndomains:");
            print_domains(&domains);
            if !forwarded.is_empty() {
                println!("forwarded (declared): {}", forwarded.join(", "));
            }
            println!("\nconnectors:");
            let marks = ConnectorMarks::load(&*store, t.id).await?;
            print_connectors(&connectors, &marks);
            let l = limits.unwrap_or(config.default_sender_limits());
            println!(
                "\nsender limits ({}): {} external recipients/hour, {} recipients/day, {} messages/minute, action {}",
                if limits.is_some() { "own" } else { "defaults" },
                l.external_recipients_per_hour,
                l.recipients_per_day,
                l.messages_per_minute,
                serde_json::to_value(l.action)?.as_str().unwrap_or("")
            );
            if !restrictions.is_empty() {
                println!("\nrestricted senders:");
                print_restrictions(&restrictions, &HashMap::new());
            }
            if let (Some(r), Some(e)) = (latest, &latest_evidence) {
                let names: HashMap<i64, String> =
                    connectors.iter().map(|c| (c.id, c.name.clone())).collect();
                println!(
                    "\nlatest evidence (transition {}: {} -> {} at {} by {}):",
                    r.id,
                    r.from,
                    r.to,
                    table::time_ms(r.at_ms),
                    r.actor
                );
                if r.cause == "detector" {
                    for line in report::evidence_lines(e, &names) {
                        println!("  - {line}");
                    }
                } else {
                    println!("  - set by {} ({}): {}", r.actor, r.cause, r.summary);
                }
                let steps = report::steps(&t.name, t.state);
                if !steps.is_empty() {
                    println!("\nto get unblocked:");
                    for (i, s) in steps.iter().enumerate() {
                        println!("  {}. {s}", i + 1);
                    }
                }
            }
            if !transitions.is_empty() {
                println!("\ntransitions:");
                let rows = transitions
                    .iter()
                    .map(|r| {
                        vec![
                            table::time_ms(r.at_ms),
                            r.from.to_string(),
                            r.to.to_string(),
                            r.actor.clone(),
                            r.summary.clone(),
                        ]
                    })
                    .collect::<Vec<_>>();
                table::print(&["TIME", "FROM", "TO", "BY", "SUMMARY"], &rows);
            }
        }
        _ => unreachable!("handled above"),
    }
    Ok(())
}

fn transition_json(r: &relayward_store::TransitionRecord) -> serde_json::Value {
    json!({
        "id": r.id,
        "at_ms": r.at_ms,
        "from": r.from,
        "to": r.to,
        "actor": r.actor,
        "cause": r.cause,
        "summary": r.summary,
        "probation_until_ms": r.probation_until_ms,
        "evidence": serde_json::from_str::<serde_json::Value>(&r.evidence).unwrap_or_default(),
        "attestation": r.attestation.as_deref().and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok()),
    })
}

fn restriction_json(r: &relayward_store::SenderRestrictionRecord) -> serde_json::Value {
    json!({
        "id": r.id,
        "tenant_id": r.tenant_id,
        "sender": r.sender,
        "since_ms": r.since_ms,
        "until_ms": r.until_ms,
        "limit": r.limit,
        "action": r.action,
        "reason": r.reason,
        "created_by": r.created_by,
        "lifted_at_ms": r.lifted_at_ms,
        "lifted_by": r.lifted_by,
    })
}

fn print_restrictions(
    rows: &[relayward_store::SenderRestrictionRecord],
    tenant_names: &HashMap<TenantId, String>,
) {
    let rows = rows
        .iter()
        .map(|r| {
            vec![
                tenant_names
                    .get(&r.tenant_id)
                    .cloned()
                    .unwrap_or_else(|| r.tenant_id.to_string()),
                r.sender.clone(),
                table::time_ms(r.since_ms),
                r.until_ms
                    .map(table::time_ms)
                    .unwrap_or_else(|| "until lifted".into()),
                r.action.clone(),
                r.reason.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &["TENANT", "SENDER", "SINCE", "UNTIL", "ACTION", "REASON"],
        &rows,
    );
}

/// `tenant request-unblock`: the checks and the transition live in [`way_back`].
async fn request_unblock(
    config: &Config,
    store: &dyn Store,
    a: RequestUnblockArgs,
    now_ms: i64,
) -> Result<()> {
    let t = tenant_of(store, &a.tenant).await?;
    let attestation = Attestation {
        domains_registered: a.domains_registered,
        connectors_reviewed: a.connectors_reviewed,
        servers_secured: a.servers_secured,
        forwarded_domains: a
            .forwarded_domains
            .iter()
            .map(|d| normalize_domain(d).map_err(|e| anyhow!("--forwarded-domain: {e}")))
            .collect::<Result<Vec<_>>>()?,
    };
    let detector = Detector::new(config.detector.clone());
    match way_back::request_unblock(store, &detector, &t, &attestation, &actor(), now_ms).await {
        Ok((_, id)) => {
            println!(
                "tenant {}: blocked_unregistered -> under_review (transition {id}); unregistered senders stay refused until an operator runs `relayward tenant unblock {}`",
                t.name, t.name
            );
            Ok(())
        }
        Err(WayBackError::Missing(items)) => bail!(
            "request-unblock for tenant {} refused: {}",
            t.name,
            items.join("; ")
        ),
        Err(e) => bail!("{e}"),
    }
}

async fn own_sender_limits(store: &dyn Store, tenant: TenantId) -> Result<Option<SenderLimits>> {
    match store
        .tenant_sender_limits()
        .await?
        .into_iter()
        .find(|(t, _)| *t == tenant)
    {
        Some((_, j)) => Ok(Some(
            serde_json::from_str(&j).context("stored sender limits")?,
        )),
        None => Ok(None),
    }
}

async fn sender_limits(config: &Config, store: &dyn Store, a: SenderLimitsArgs) -> Result<()> {
    let t = tenant_of(store, &a.tenant).await?;
    let own = own_sender_limits(store, t.id).await?;
    let changing = a.action.is_some()
        || a.external_recipients_per_hour.is_some()
        || a.recipients_per_day.is_some()
        || a.messages_per_minute.is_some();
    let effective = if a.reset {
        store.set_tenant_sender_limits(t.id, None, &actor()).await?;
        config.default_sender_limits()
    } else if changing {
        let mut l = own.unwrap_or(config.default_sender_limits());
        if let Some(action) = &a.action {
            l.action = serde_json::from_value(serde_json::Value::String(action.clone()))?;
        }
        if let Some(n) = a.external_recipients_per_hour {
            l.external_recipients_per_hour = n;
        }
        if let Some(n) = a.recipients_per_day {
            l.recipients_per_day = n;
        }
        if let Some(n) = a.messages_per_minute {
            l.messages_per_minute = n;
        }
        store
            .set_tenant_sender_limits(t.id, Some(&serde_json::to_string(&l)?), &actor())
            .await?;
        l
    } else {
        own.unwrap_or(config.default_sender_limits())
    };
    if a.json {
        return print_json(&effective);
    }
    println!(
        "tenant {}: {} external recipients/hour, {} recipients/day, {} messages/minute, action {}{}",
        t.name,
        effective.external_recipients_per_hour,
        effective.recipients_per_day,
        effective.messages_per_minute,
        serde_json::to_value(effective.action)?.as_str().unwrap_or(""),
        if a.reset || (!changing && own.is_none()) {
            " (defaults)"
        } else {
            ""
        }
    );
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum SenderCmd {
    /// Senders restricted by the per-sender limits (5.1.8)
    List {
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lift a sender's restriction
    Unrestrict {
        address: String,
        /// Only this tenant's restriction (default: every tenant's)
        #[arg(long)]
        tenant: Option<String>,
    },
}

pub async fn sender(config: &Config, cmd: SenderCmd) -> Result<()> {
    sender_at(config, cmd, &SystemClock).await
}

/// [`sender`] on the detector's `clock`.
pub async fn sender_at(config: &Config, cmd: SenderCmd, clock: &dyn Clock) -> Result<()> {
    let store = open_store(config).await?;
    let tenant_id = |t: Option<String>| {
        let store = store.clone();
        async move {
            match t {
                Some(t) => Ok::<_, anyhow::Error>(Some(tenant_of(&*store, &t).await?.id)),
                None => Ok(None),
            }
        }
    };
    match cmd {
        SenderCmd::List { tenant, json } => {
            let tid = tenant_id(tenant).await?;
            let rows = store
                .list_sender_restrictions(tid, clock.now_ms(), None)
                .await?;
            if json {
                return print_json(&rows.iter().map(restriction_json).collect::<Vec<_>>());
            }
            let names: HashMap<TenantId, String> = store
                .list_tenants()
                .await?
                .into_iter()
                .map(|t| (t.id, t.name))
                .collect();
            print_restrictions(&rows, &names);
        }
        SenderCmd::Unrestrict { address, tenant } => {
            let tid = tenant_id(tenant).await?;
            let addr = relayward_core::Address::parse(address.trim_matches(['<', '>']), true)
                .map_err(|e| anyhow!("{address:?}: {e}"))?;
            let key = sender_key(&addr);
            let lifted = store
                .lift_sender_restrictions(tid, &key, clock.now_ms(), &actor())
                .await?;
            if lifted.is_empty() {
                bail!("{key} has no standing restriction");
            }
            for r in lifted {
                println!(
                    "{key}: restriction {} lifted (tenant id {}; was: {})",
                    r.id, r.tenant_id, r.reason
                );
            }
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

/// What the connector table marks beyond the connector's own fields.
struct ConnectorMarks {
    dir: relayward_policy::Directory,
    /// Connectors whose AUTH was locked for password guessing in the last 24 hours.
    auth_locked: std::collections::HashSet<relayward_core::ConnectorId>,
}

impl ConnectorMarks {
    async fn load(store: &dyn Store, tenant: relayward_core::TenantId) -> Result<ConnectorMarks> {
        let since = relayward_core::now() - 86_400;
        let audit = store.list_audit(Some(tenant), 1000).await?;
        let auth_locked = relayward_policy::auth::locked_connectors(&audit, since);
        Ok(ConnectorMarks {
            dir: relayward_policy::Directory::new(store.load_directory().await?),
            auth_locked,
        })
    }
}

fn print_connectors(connectors: &[relayward_core::Connector], marks: &ConnectorMarks) {
    let rows = connectors
        .iter()
        .map(|c| {
            let mut flags = Vec::new();
            let cert_unverified = c
                .cert_name
                .as_deref()
                .is_some_and(|n| !marks.dir.cert_name_covered(c.tenant_id, n));
            for (on, name) in [
                (c.require_tls, "require-tls"),
                (c.allow_unregistered, "allow-unregistered"),
                (c.restrict_domains_to_ips, "restrict-to-ips"),
                (c.restrict_domains_to_cert, "restrict-to-cert"),
                (!c.enabled, "disabled"),
                (c.blocked, "BLOCKED"),
                (cert_unverified, "cert-name-unverified"),
                (marks.auth_locked.contains(&c.id), "auth-locked"),
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
    /// Create a DKIM signing key for an accepted domain; prints the TXT record to publish
    /// (the private key stays in <data_dir>/dkim, mode 0600)
    DkimKey(crate::dkim::DkimKeyArgs),
    /// Declare a header From domain legitimate with the tenant's registered envelope senders
    /// (a service sending for a partner): such mail is not a header From mismatch
    AllowHeaderFrom {
        tenant: String,
        domain: String,
        /// Only through this connector (default: any of the tenant's)
        #[arg(long)]
        connector: Option<String>,
    },
    /// Withdraw such a declaration
    DisallowHeaderFrom {
        tenant: String,
        domain: String,
        #[arg(long)]
        connector: Option<String>,
    },
    /// List the tenant's declared header From domains
    HeaderFrom {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn domain(config: &Config, cmd: DomainCmd) -> Result<()> {
    let store = open_store(config).await?;
    match cmd {
        DomainCmd::DkimKey(a) => return crate::dkim::domain_dkim_key(config, &*store, a).await,
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
            let dns = relayward_admin::dns::DnsSettings {
                server: config.delivery.dns_resolver,
                timeout: std::time::Duration::from_secs(3),
                attempts: 2,
            };
            let found = relayward_admin::dns::lookup_txt(&dns, &domain)
                .await
                .map_err(|e| anyhow!("could not check {domain}: {e}"))?;
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
        DomainCmd::AllowHeaderFrom {
            tenant,
            domain,
            connector,
        } => {
            let t = tenant_of(&*store, &tenant).await?;
            let domain = normalize_domain(&domain)?;
            let connector_id = connector_id_of(&*store, &t, connector.as_deref()).await?;
            store
                .allow_header_from(
                    &relayward_core::HeaderFromAllowed {
                        tenant_id: t.id,
                        domain: domain.clone(),
                        connector_id,
                        declared_at: relayward_core::now(),
                        declared_by: actor(),
                    },
                    &actor(),
                )
                .await?;
            println!(
                "header From {domain} allowed with {}'s registered senders",
                t.name
            );
        }
        DomainCmd::DisallowHeaderFrom {
            tenant,
            domain,
            connector,
        } => {
            let t = tenant_of(&*store, &tenant).await?;
            let domain = normalize_domain(&domain)?;
            let connector_id = connector_id_of(&*store, &t, connector.as_deref()).await?;
            store
                .disallow_header_from(t.id, &domain, connector_id, &actor())
                .await?;
            println!("header From {domain} no longer allowed");
        }
        DomainCmd::HeaderFrom { tenant, json } => {
            let t = tenant_of(&*store, &tenant).await?;
            let list = store.list_header_from_allowed(t.id).await?;
            if json {
                return print_json(&list);
            }
            let connectors = store.list_connectors(Some(t.id)).await?;
            let rows = list
                .iter()
                .map(|a| {
                    vec![
                        a.domain.clone(),
                        a.connector_id
                            .and_then(|id| connectors.iter().find(|c| c.id == id))
                            .map_or("any".to_string(), |c| c.name.clone()),
                        table::time(a.declared_at),
                        a.declared_by.clone(),
                    ]
                })
                .collect::<Vec<_>>();
            table::print(&["HEADER FROM", "CONNECTOR", "DECLARED", "BY"], &rows);
        }
    }
    Ok(())
}

/// The id of the tenant's connector called `name`.
async fn connector_id_of(
    store: &dyn Store,
    t: &Tenant,
    name: Option<&str>,
) -> Result<Option<relayward_core::ConnectorId>> {
    let Some(name) = name else { return Ok(None) };
    let c = store
        .list_connectors(Some(t.id))
        .await?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| anyhow!("tenant {} has no connector {name:?}", t.name))?;
    Ok(Some(c.id))
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
                .map(|n| match n.trim().strip_prefix("*.") {
                    Some(rest) => normalize_domain(rest).map(|d| format!("*.{d}")),
                    None => normalize_domain(n),
                })
                .transpose()
                .map_err(|e| anyhow!("--cert-name: {e}"))?;
            if ip_ranges.is_empty() && cert_name.is_none() && a.auth_user.is_none() {
                bail!("a connector needs at least one of --ip, --cert-name, --auth-user");
            }
            if let Some(name) = &cert_name {
                relayward_policy::cert_name::validate(name)
                    .map_err(|e| anyhow!("--cert-name: {e}"))?;
                let dir = relayward_policy::Directory::new(store.load_directory().await?);
                match relayward_policy::cert_name::check_claim(&dir, t.id, name, None) {
                    relayward_policy::cert_name::Claim::Covered => {}
                    relayward_policy::cert_name::Claim::Uncovered(w) => {
                        eprintln!("warning: {w}")
                    }
                    relayward_policy::cert_name::Claim::Conflict(why) => {
                        bail!("--cert-name: {why}")
                    }
                }
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
            let marks = ConnectorMarks::load(&*store, t.id).await?;
            print_connectors(&list, &marks);
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
            if let Some(original) = &e.original_sender {
                println!("original sender: <{original}> (rewritten with SRS)");
            }
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

/// `relayward diagnose`: the decision the relay would take right now for this client and
/// transaction, step by step, with the exact reply.
#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    /// The client's address
    #[arg(long)]
    pub ip: String,
    /// Suppose a verified TLS client certificate with this name (implies --tls)
    #[arg(long)]
    pub cert_name: Option<String>,
    /// Suppose SMTP AUTH succeeded as this user (implies --tls)
    #[arg(long)]
    pub auth_user: Option<String>,
    /// Suppose the session is TLS
    #[arg(long)]
    pub tls: bool,
    /// MAIL FROM (empty or <> for the null sender)
    #[arg(long, allow_hyphen_values = true)]
    pub from: String,
    /// RCPT TO (repeat for several)
    #[arg(long = "to", required = true)]
    pub to: Vec<String>,
    /// The header From address
    #[arg(long)]
    pub header_from: Option<String>,
    #[arg(long)]
    pub json: bool,
}

impl DiagnoseArgs {
    pub fn request(&self) -> relayward_admin::DiagnoseRequest {
        relayward_admin::DiagnoseRequest {
            ip: self.ip.clone(),
            cert_name: self.cert_name.clone(),
            auth_user: self.auth_user.clone(),
            tls: self.tls,
            from: self.from.clone(),
            to: self.to.clone(),
            header_from: self.header_from.clone(),
        }
    }
}

/// On the local store: its directory and standing sender restrictions (a running relay's
/// counters are not visible from here; `--server` asks the relay itself).
pub async fn diagnose(config: &Config, a: DiagnoseArgs) -> Result<()> {
    let store = open_store(config).await?;
    let dir = relayward_policy::Directory::new(store.load_directory().await?);
    let q = relayward_admin::diagnose_question(&dir, &a.request()).map_err(|e| {
        anyhow!(
            "--{}: {}",
            e.field().unwrap_or("input").replace('_', "-"),
            e.detail()
        )
    })?;
    let now_ms = relayward_core::now() * 1000;
    let restricted: std::collections::HashSet<(relayward_core::TenantId, String)> = store
        .list_sender_restrictions(None, now_ms, None)
        .await?
        .into_iter()
        .map(|r| (r.tenant_id, r.sender))
        .collect();
    let limits = |tenant, sender: &relayward_core::Address| {
        let key = relayward_policy::counters::sender_key(sender);
        if restricted.contains(&(tenant, key)) {
            Err(relayward_core::reply::SENDER_RESTRICTED)
        } else {
            Ok(())
        }
    };
    let suppressions = relayward_policy::suppression::SuppressionList::new();
    suppressions.apply(&store.suppression_updates(0, relayward_core::now()).await?);
    let d = relayward_policy::diagnose::diagnose(&dir, &q, &limits, &suppressions);
    print_diagnosis(&relayward_admin::DiagnosisView::from_diagnosis(&d), a.json)
}

pub fn print_diagnosis(v: &relayward_admin::DiagnosisView, json: bool) -> Result<()> {
    if json {
        return print_json(v);
    }
    let rows = v
        .steps
        .iter()
        .map(|s| {
            vec![
                s.step.clone(),
                if s.passed { "ok" } else { "REFUSED" }.to_string(),
                s.detail.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(&["STEP", "RESULT", "DETAIL"], &rows);
    println!("\nreply at {}: {}", v.at, v.reply);
    if let Some(e) = &v.explanation {
        println!("why: {e}");
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
                match (&e.reply, &e.detail) {
                    (Some(r), Some(d)) if e.kind == relayward_core::TraceKind::Refused => {
                        format!("{r} ({d})")
                    }
                    (Some(r), _) => r.clone(),
                    (None, d) => d.clone().unwrap_or_default(),
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

// ---------------------------------------------------------------------------------------------
// Suppression lists

/// `relayward suppression`: a tenant's list (TENANT) or the operator's global one (`--global`).
#[derive(Subcommand, Debug)]
pub enum SuppressionCmd {
    /// Recipients suppressed for a tenant's mail, or for everyone's (--global)
    #[command(group(clap::ArgGroup::new("list").required(true).args(["tenant", "global"])))]
    List {
        /// Tenant (name or id)
        tenant: Option<String>,
        /// The operator's global list, which applies to every tenant
        #[arg(long)]
        global: bool,
        #[arg(long)]
        json: bool,
    },
    /// Suppress a recipient: the list's mail to it is refused at RCPT with 550 5.1.10
    #[command(
        allow_missing_positional = true,
        group(clap::ArgGroup::new("list").required(true).args(["tenant", "global"]))
    )]
    Add {
        /// Tenant (name or id)
        tenant: Option<String>,
        address: String,
        /// The operator's global list, which applies to every tenant
        #[arg(long)]
        global: bool,
        /// For this many days (default: until removed)
        #[arg(long, value_name = "N")]
        days: Option<u32>,
        /// Why (default "manual")
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let the list's mail reach a suppressed recipient again
    #[command(
        allow_missing_positional = true,
        group(clap::ArgGroup::new("list").required(true).args(["tenant", "global"]))
    )]
    Remove {
        /// Tenant (name or id)
        tenant: Option<String>,
        address: String,
        /// The operator's global list
        #[arg(long)]
        global: bool,
    },
}

/// The list key of ADDRESS, or why it is none.
fn suppression_address(address: &str) -> Result<String> {
    relayward_policy::suppression::parse_address_key(address)
        .ok_or_else(|| anyhow!("{address:?} is not an email address"))
}

/// The expiry of an entry added now for `days` (none: until removed).
fn suppression_expiry(at: i64, days: Option<u32>) -> Result<Option<i64>> {
    use relayward_policy::suppression::MAX_DAYS;
    match days {
        None => Ok(None),
        Some(d) if (1..=MAX_DAYS).contains(&d) => Ok(Some(at + i64::from(d) * 86_400)),
        Some(_) => bail!("--days must be between 1 and {MAX_DAYS}"),
    }
}

/// A list as the API answers it (the local one serialized the same way): one table for both.
fn print_suppressions(list: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let rows = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            vec![
                text(&s["address"]),
                text(&s["source"]),
                s["created_at"]
                    .as_i64()
                    .map(table::time)
                    .unwrap_or_default(),
                match s["expires_at"].as_i64() {
                    Some(at) => table::time(at),
                    None => "until removed".into(),
                },
                text(&s["created_by"]),
                text(&s["reason"]),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &["ADDRESS", "SOURCE", "SINCE", "UNTIL", "BY", "REASON"],
        &rows,
    );
}

/// "tenant acme's list" or "the global list".
fn suppression_list_name(tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("tenant {t}'s list"),
        None => "the global list".into(),
    }
}

pub async fn suppression(config: &Config, cmd: SuppressionCmd) -> Result<()> {
    let store = open_store(config).await?;
    let scope = |tenant: Option<String>| {
        let store = store.clone();
        async move {
            match tenant {
                Some(t) => {
                    let t = tenant_of(&*store, &t).await?;
                    Ok::<_, anyhow::Error>((Some(t.id), Some(t.name)))
                }
                None => Ok((None, None)),
            }
        }
    };
    let now = relayward_core::now();
    match cmd {
        SuppressionCmd::List { tenant, json, .. } => {
            let (id, _) = scope(tenant).await?;
            let list = serde_json::to_value(store.list_suppressions(id, now).await?)?;
            if json {
                return print_json(&list);
            }
            print_suppressions(&list);
        }
        SuppressionCmd::Add {
            tenant,
            address,
            days,
            reason,
            ..
        } => {
            let (id, name) = scope(tenant).await?;
            let entry = relayward_core::Suppression {
                tenant_id: id,
                address: suppression_address(&address)?,
                source: relayward_core::SuppressionSource::Manual,
                reason: reason
                    .map(|r| r.trim().to_string())
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| relayward_policy::suppression::MANUAL_REASON.into()),
                created_at: now,
                created_by: actor(),
                expires_at: suppression_expiry(now, days)?,
            };
            let stored = store.add_suppression(&entry, &actor()).await?;
            println!(
                "{} suppressed on {} {}",
                stored.address,
                suppression_list_name(name.as_deref()),
                match stored.expires_at {
                    Some(at) => format!("until {}", table::time(at)),
                    None => "until removed".into(),
                }
            );
        }
        SuppressionCmd::Remove {
            tenant, address, ..
        } => {
            let (id, name) = scope(tenant).await?;
            let key = suppression_address(&address)?;
            let list = suppression_list_name(name.as_deref());
            if !store.remove_suppression(id, &key, now, &actor()).await? {
                bail!("{key} is not on {list}");
            }
            println!("{key} removed from {list}");
        }
    }
    Ok(())
}
