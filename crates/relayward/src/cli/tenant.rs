//! `relayward tenant`: tenants, their restriction state and the way back, their sender limits.

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use relayward_client::types::*;
use relayward_policy::limits::LimitAction;
use relayward_policy::unblock::{Attest, Attestation};

use super::print::{self, TenantShow};
use super::{actor, print_json, Admin};
use crate::table;

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

pub async fn run(admin: &Admin, cmd: TenantCmd) -> Result<()> {
    match cmd {
        TenantCmd::Add { name, admin_emails } => {
            let t = admin
                .create_tenant(&CreateTenant { name, admin_emails })
                .await?;
            println!("{}", t.id);
        }
        TenantCmd::List { json } => {
            let tenants = admin.tenants().await?;
            if json {
                return print_json(&tenants);
            }
            print::tenants(&tenants);
        }
        TenantCmd::Show { tenant, json } => {
            let tenant = admin.tenant_named(&tenant).await?;
            let id = tenant.id;
            let show = TenantShow {
                status: admin.status(id).await?,
                domains: admin.domains(id).await?,
                connectors: admin.connectors(id).await?,
                sender_limits: admin.sender_limits(id).await?,
                sender_restrictions: admin.sender_restrictions(id).await?,
                tenant,
            };
            if json {
                return print_json(&show);
            }
            print::tenant_show(&show);
        }
        TenantCmd::RequestUnblock(a) => request_unblock(admin, a).await?,
        TenantCmd::Unblock { tenant } => {
            let t = admin.tenant_named(&tenant).await?;
            let status = admin.unblock(t.id, &Unblock::default()).await?;
            let from = status
                .transitions
                .first()
                .map(|r| r.from.to_string())
                .unwrap_or_default();
            println!(
                "tenant {}: {from} -> {} until {}",
                t.name,
                status.state,
                status
                    .probation_until_ms
                    .map(table::time_ms)
                    .unwrap_or_default(),
            );
        }
        TenantCmd::Block { tenant, all, .. } => {
            let t = admin.tenant_named(&tenant).await?;
            let before = t.state;
            let status = admin
                .block(
                    t.id,
                    &Block {
                        scope: if all {
                            BlockScope::All
                        } else {
                            BlockScope::Unregistered
                        },
                        reason: format!("blocked by {} with `relayward tenant block`", actor()),
                    },
                )
                .await?;
            println!("tenant {}: {before} -> {}", t.name, status.state);
        }
        TenantCmd::SenderLimits(a) => sender_limits(admin, a).await?,
    }
    Ok(())
}

/// The attestations are the CLI's: the tenant admin states each fix with its flag. The checks
/// of the evidence are the relay's, answered by the API.
async fn request_unblock(admin: &Admin, a: RequestUnblockArgs) -> Result<()> {
    let t = admin.tenant_named(&a.tenant).await?;
    let refused = |items: Vec<String>| {
        anyhow!(
            "request-unblock for tenant {} refused: {}",
            t.name,
            items.join("; ")
        )
    };
    let given = Attestation {
        domains_registered: a.domains_registered,
        connectors_reviewed: a.connectors_reviewed,
        servers_secured: a.servers_secured,
        forwarded_domains: Vec::new(),
    };
    let not_attested: Vec<String> = Attest::ALL
        .into_iter()
        .filter(|item| !given.gives(*item))
        .map(|item| format!("attestation {} ({}) not given", flag(item), item.what()))
        .collect();
    if !not_attested.is_empty() {
        // Say what the evidence still asks for too, so that one answer lists everything.
        let status = admin.status(t.id).await?;
        let mut items: Vec<String> = status
            .checklist
            .first()
            .and_then(|item| item.strip_prefix("[ ] "))
            .filter(|_| status.state == relayward_core::TenantState::BlockedUnregistered)
            .map(|item| vec![item.to_string()])
            .unwrap_or_default();
        items.extend(not_attested);
        return Err(refused(items));
    }
    let request = RequestUnblock {
        comment: None,
        forwarded_domains: a.forwarded_domains,
    };
    let status = admin.request_unblock(t.id, &request).await.map_err(|e| {
        let e = e.to_string();
        match e.strip_prefix("request refused: ") {
            Some(items) => refused(vec![items.to_string()]),
            None => anyhow!(e),
        }
    })?;
    let (from, id) = status
        .transitions
        .first()
        .map(|r| (r.from.to_string(), r.id))
        .unwrap_or_default();
    println!(
        "tenant {}: {from} -> {} (transition {id}); unregistered senders stay refused until an operator runs `relayward tenant unblock {}`",
        t.name, status.state, t.name
    );
    Ok(())
}

/// The flag of `relayward tenant request-unblock` that states `item`.
fn flag(item: Attest) -> &'static str {
    match item {
        Attest::DomainsRegistered => "--domains-registered",
        Attest::ConnectorsReviewed => "--connectors-reviewed",
        Attest::ServersSecured => "--servers-secured",
    }
}

async fn sender_limits(admin: &Admin, a: SenderLimitsArgs) -> Result<()> {
    let t = admin.tenant_named(&a.tenant).await?;
    let action = a
        .action
        .as_deref()
        .map(|s| serde_json::from_value::<LimitAction>(serde_json::Value::String(s.into())))
        .transpose()?;
    let change = SetSenderLimits {
        external_recipients_per_hour: a.external_recipients_per_hour,
        recipients_per_day: a.recipients_per_day,
        messages_per_minute: a.messages_per_minute,
        action,
        reset: a.reset,
    };
    let changing = a.reset
        || change.action.is_some()
        || change.external_recipients_per_hour.is_some()
        || change.recipients_per_day.is_some()
        || change.messages_per_minute.is_some();
    let limits = if changing {
        admin.set_sender_limits(t.id, &change).await?
    } else {
        admin.sender_limits(t.id).await?
    };
    if a.json {
        return print_json(&limits);
    }
    println!(
        "tenant {}: {}{}",
        t.name,
        print::sender_limits(&limits),
        if limits.own { "" } else { " (defaults)" }
    );
    Ok(())
}
