//! `relayward suppression`: a tenant's suppression list (TENANT) or the operator's global one
//! (`--global`).

use anyhow::{bail, Result};
use clap::Subcommand;
use relayward_client::types::AddSuppression;

use super::{print, print_json, Admin};
use crate::table;

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

/// The list's tenant id (none: the global list) and how to name the list.
async fn list(admin: &Admin, tenant: Option<String>) -> Result<(Option<i64>, String)> {
    Ok(match tenant {
        Some(t) => {
            let t = admin.tenant_named(&t).await?;
            (Some(t.id), format!("tenant {}'s list", t.name))
        }
        None => (None, "the global list".into()),
    })
}

pub async fn run(admin: &Admin, cmd: SuppressionCmd) -> Result<()> {
    match cmd {
        SuppressionCmd::List { tenant, json, .. } => {
            let (id, _) = list(admin, tenant).await?;
            let entries = admin.suppressions(id).await?;
            if json {
                return print_json(&entries);
            }
            print::suppressions(&entries);
        }
        SuppressionCmd::Add {
            tenant,
            address,
            days,
            reason,
            ..
        } => {
            let (id, name) = list(admin, tenant).await?;
            let stored = admin
                .add_suppression(
                    id,
                    &AddSuppression {
                        address,
                        reason,
                        days,
                    },
                )
                .await?;
            println!(
                "{} suppressed on {name} {}",
                stored.address,
                match stored.expires_at {
                    Some(at) => format!("until {}", table::time(at)),
                    None => "until removed".into(),
                }
            );
        }
        SuppressionCmd::Remove {
            tenant, address, ..
        } => {
            let (id, name) = list(admin, tenant).await?;
            let key = relayward_policy::suppression::parse_address_key(&address)
                .unwrap_or_else(|| address.clone());
            if !admin.remove_suppression(id, &key).await? {
                bail!("{key} is not on {name}");
            }
            println!("{key} removed from {name}");
        }
    }
    Ok(())
}
