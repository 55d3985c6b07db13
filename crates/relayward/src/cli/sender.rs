//! `relayward sender`: senders restricted by the per-sender limits.

use anyhow::{bail, Result};
use clap::Subcommand;

use super::{print, print_json, Admin};

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

pub async fn run(admin: &Admin, cmd: SenderCmd) -> Result<()> {
    match cmd {
        SenderCmd::List { tenant, json } => {
            let mut all = Vec::new();
            for t in admin.tenants_in_view(tenant.as_deref()).await? {
                for r in admin.sender_restrictions(t.id).await? {
                    all.push((t.name.clone(), r));
                }
            }
            if json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|(tenant, r)| {
                        let mut v = serde_json::to_value(r).unwrap_or_default();
                        v["tenant"] = serde_json::Value::String(tenant.clone());
                        v
                    })
                    .collect();
                return print_json(&rows);
            }
            print::restrictions(&all);
        }
        SenderCmd::Unrestrict { address, tenant } => {
            let address = address.trim().trim_matches(['<', '>']).to_string();
            let mut lifted = 0;
            for t in admin.tenants_in_view(tenant.as_deref()).await? {
                if admin.lift_sender_restriction(t.id, &address).await? {
                    lifted += 1;
                    println!("{address}: restriction lifted (tenant {})", t.name);
                }
            }
            if lifted == 0 {
                bail!("{address} has no standing restriction");
            }
        }
    }
    Ok(())
}
