//! `relayward connector`: inbound connectors.

use anyhow::Result;
use clap::{Args, Subcommand};
use relayward_client::types::*;

use super::{print, print_json, Admin};

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

pub async fn run(admin: &Admin, cmd: ConnectorCmd) -> Result<()> {
    let (tenant, name, change) = match cmd {
        ConnectorCmd::Add(a) => {
            let t = admin.tenant_named(&a.tenant).await?;
            let c = admin
                .create_connector(
                    t.id,
                    &CreateConnector {
                        name: a.name,
                        kind: a.kind,
                        ip_ranges: a.ips,
                        cert_name: a.cert_name,
                        auth_user: a.auth_user,
                        auth_password: a.auth_password,
                        require_tls: a.require_tls,
                        allow_unregistered: a.allow_unregistered,
                        restrict_domains_to_ips: a.restrict_domains_to_ips,
                        restrict_domains_to_cert: a.restrict_domains_to_cert,
                    },
                )
                .await?;
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            println!("{}", c.id);
            return Ok(());
        }
        ConnectorCmd::List { tenant, json } => {
            let t = admin.tenant_named(&tenant).await?;
            let list = admin.connectors(t.id).await?;
            if json {
                return print_json(&list);
            }
            print::connectors(&list);
            return Ok(());
        }
        ConnectorCmd::Delete { tenant, name } => {
            let t = admin.tenant_named(&tenant).await?;
            let c = admin.connector_named(&t, &name).await?;
            admin.delete_connector(t.id, c.id).await?;
            println!("connector {name} deleted");
            return Ok(());
        }
        ConnectorCmd::Disable { tenant, name } => (
            tenant,
            name,
            ChangeConnector {
                enabled: Some(false),
                ..Default::default()
            },
        ),
        ConnectorCmd::Enable { tenant, name } => (
            tenant,
            name,
            ChangeConnector {
                enabled: Some(true),
                ..Default::default()
            },
        ),
        ConnectorCmd::Block { tenant, name } => (
            tenant,
            name,
            ChangeConnector {
                blocked: Some(true),
                ..Default::default()
            },
        ),
        ConnectorCmd::Unblock { tenant, name } => (
            tenant,
            name,
            ChangeConnector {
                blocked: Some(false),
                ..Default::default()
            },
        ),
    };
    let t = admin.tenant_named(&tenant).await?;
    let c = admin.connector_named(&t, &name).await?;
    admin.change_connector(t.id, c.id, &change).await?;
    println!("connector {name} updated");
    Ok(())
}
