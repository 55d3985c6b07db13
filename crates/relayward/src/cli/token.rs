//! `relayward token`: admin API tokens. On the relay's host (audited as `cli:<user>`) this is
//! how the first operator token is made.

use anyhow::Result;
use clap::Subcommand;
use relayward_client::types::{CreateToken, NewTokenScope};

use super::{print, print_json, Admin};

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

pub async fn run(admin: &Admin, cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create {
            operator: _,
            tenant,
            label,
        } => {
            let (request, what) = match &tenant {
                Some(t) => {
                    let t = admin.tenant_named(t).await?;
                    (
                        CreateToken {
                            scope: NewTokenScope::Tenant,
                            tenant_id: Some(t.id),
                            label: String::new(),
                        },
                        format!("tenant {}", t.name),
                    )
                }
                None => (
                    CreateToken {
                        scope: NewTokenScope::Operator,
                        tenant_id: None,
                        label: String::new(),
                    },
                    "operator".to_string(),
                ),
            };
            let request = CreateToken {
                label: label.unwrap_or_else(|| DEFAULT_LABEL.into()),
                ..request
            };
            let created = admin.create_token(&request).await?;
            println!(
                "token {} ({what}) created; it is shown only this once:",
                created.info.id
            );
            println!("{}", created.token);
        }
        TokenCmd::List { tenant, json } => {
            let tenant_id = match &tenant {
                Some(t) => Some(admin.tenant_named(t).await?.id),
                None => None,
            };
            let tokens = admin.tokens(tenant_id).await?;
            if json {
                return print_json(&tokens);
            }
            print::tokens(&tokens);
        }
        TokenCmd::Revoke { id } => {
            admin.revoke_token(id).await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}
