//! `relayward diagnose`: the decision the relay would take right now for a client and
//! transaction, step by step, with the exact reply. Through a running relay's API it counts
//! that relay's live limits; on the local store, the standing sender restrictions.

use anyhow::Result;
use clap::Args;
use relayward_client::types::DiagnoseRequest;

use super::{print, print_json, Admin};

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

pub async fn run(admin: &Admin, a: DiagnoseArgs) -> Result<()> {
    let view = admin
        .diagnose(&DiagnoseRequest {
            ip: a.ip,
            cert_name: a.cert_name,
            auth_user: a.auth_user,
            tls: a.tls,
            from: a.from,
            to: a.to,
            header_from: a.header_from,
        })
        .await?;
    if a.json {
        return print_json(&view);
    }
    print::diagnosis(&view);
    Ok(())
}
