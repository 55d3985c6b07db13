//! `relayward trace` and `relayward audit`: what happened to mail, and who changed what.

use anyhow::Result;
use clap::Args;

use super::{print, print_json, Admin};

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

pub async fn trace(admin: &Admin, a: TraceArgs) -> Result<()> {
    let mut query = vec![("limit", a.limit.to_string())];
    if let Some(t) = &a.tenant {
        query.push(("tenant_id", admin.tenant_named(t).await?.id.to_string()));
    }
    let message_id = a.message_id.map(|m| {
        m.trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string()
    });
    for (k, v) in [
        ("sender", a.sender),
        ("recipient", a.recipient),
        ("message_id", message_id),
        ("queue_id", a.queue_id),
    ] {
        if let Some(v) = v {
            query.push((k, v));
        }
    }
    let mut events = admin.trace(query).await?.events;
    // A story reads oldest first.
    events.reverse();
    if a.json {
        return print_json(&events);
    }
    print::trace(&events);
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

pub async fn audit(admin: &Admin, a: AuditArgs) -> Result<()> {
    let mut query = vec![("limit", a.limit.to_string())];
    if let Some(t) = &a.tenant {
        query.push(("tenant_id", admin.tenant_named(t).await?.id.to_string()));
    }
    let entries = admin.audit(query).await?;
    if a.json {
        return print_json(&entries);
    }
    print::audit(&entries);
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum NodeCmd {
    /// The live relay nodes sharing this store: last heartbeat, version, queue depth
    List {
        #[arg(long)]
        json: bool,
    },
}

pub async fn node(admin: &Admin, c: NodeCmd) -> Result<()> {
    match c {
        NodeCmd::List { json } => {
            let nodes = admin.nodes().await?;
            if json {
                return print_json(&nodes);
            }
            print::nodes(&nodes);
            Ok(())
        }
    }
}
