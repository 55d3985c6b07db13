//! The administration commands. Each is written once, against [`Admin`] (the admin API as typed
//! calls), and prints with the one set of printers in [`print`]: on the relay's host the API runs
//! in this process on the local store (changes audited as `cli:<user>`); with `--server URL
//! --token T` (or RELAYWARD_URL and RELAYWARD_TOKEN) it is a relay's admin listener, and every
//! change is made and audited by that relay under the token's identity. An error the API answers
//! (RFC 9457 problem details) becomes its `detail`, on one line.
//!
//! Two commands work on the local host only: `domain dkim-key` (the key files live in the data
//! directory) and `srs` (the SRS secrets of the configuration).

mod client;
mod connector;
mod diagnose;
mod domain;
mod print;
mod queue;
mod records;
mod sender;
mod suppression;
mod tenant;
mod token;

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use relayward_store::Store;

pub use connector::{ConnectorAdd, ConnectorCmd};
pub use diagnose::DiagnoseArgs;
pub use domain::DomainCmd;
pub use queue::QueueCmd;
pub use records::{AuditArgs, NodeCmd, TraceArgs};
pub use relayward_client::Admin;
pub use sender::SenderCmd;
pub use suppression::SuppressionCmd;
pub use tenant::{RequestUnblockArgs, SenderLimitsArgs, TenantCmd};
pub use token::TokenCmd;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;

/// An administration command (everything but `serve`, `srs` and `check-config`).
#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Tenants
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Accepted (registered) domains
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Inbound connectors
    #[command(subcommand)]
    Connector(ConnectorCmd),
    /// Spooled messages
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Message trace search
    Trace(TraceArgs),
    /// Audit log of administrative changes
    Audit(AuditArgs),
    /// The decision the relay would take right now for a client and transaction, step by step
    Diagnose(DiagnoseArgs),
    /// Senders restricted by the per-sender limits
    #[command(subcommand)]
    Sender(SenderCmd),
    /// Suppression lists: recipients refused after hard bounces and complaints, per tenant and
    /// global
    #[command(subcommand)]
    Suppression(SuppressionCmd),
    /// Admin API tokens
    #[command(subcommand)]
    Token(TokenCmd),
    /// The relay nodes sharing this store (cluster mode)
    #[command(subcommand)]
    Node(NodeCmd),
}

/// Runs `cmd` against `admin`. `config` serves the commands that work on local files only.
pub async fn run(admin: &Admin, config: Option<&Config>, cmd: AdminCmd) -> Result<()> {
    match cmd {
        AdminCmd::Tenant(c) => tenant::run(admin, c).await,
        AdminCmd::Domain(DomainCmd::DkimKey(a)) => {
            let config = config.ok_or_else(|| {
                anyhow!("`domain dkim-key` keeps the key in the relay's data directory: run it on the relay's host without --server")
            })?;
            let store = open_store(config).await?;
            crate::dkim::domain_dkim_key(config, &*store, a).await
        }
        AdminCmd::Domain(c) => domain::run(admin, c).await,
        AdminCmd::Connector(c) => connector::run(admin, c).await,
        AdminCmd::Queue(c) => queue::run(admin, c).await,
        AdminCmd::Trace(a) => records::trace(admin, a).await,
        AdminCmd::Audit(a) => records::audit(admin, a).await,
        AdminCmd::Diagnose(a) => diagnose::run(admin, a).await,
        AdminCmd::Sender(c) => sender::run(admin, c).await,
        AdminCmd::Suppression(c) => suppression::run(admin, c).await,
        AdminCmd::Token(c) => token::run(admin, c).await,
        AdminCmd::Node(c) => records::node(admin, c).await,
    }
}

/// The audit actor of a command run on the relay's host.
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

/// The admin API in this process, on the local store and spool, the detector on `clock`.
pub async fn local_at(config: &Config, clock: Arc<dyn Clock>) -> Result<Admin> {
    let store = open_store(config).await?;
    let control = crate::admin::Control::offline(config, store.clone(), clock);
    let router = relayward_admin::local_router(
        store,
        Arc::new(control),
        crate::admin::settings(config),
        &actor(),
    );
    Ok(Admin::new(Arc::new(client::Local::new(router))))
}

/// [`local_at`] on the system clock.
pub async fn local(config: &Config) -> Result<Admin> {
    local_at(config, Arc::new(SystemClock)).await
}

/// The admin API at `server`, called with `token`.
pub fn remote(server: &str, token: Option<String>) -> Result<Admin> {
    Ok(Admin::new(Arc::new(relayward_client::Http::new(
        server, token,
    )?)))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
