//! `relayward`: the relay (`serve`) and its administration commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use relayward::{cli, config, serve};

#[derive(Parser, Debug)]
#[command(
    name = "relayward",
    version,
    about = "Multi-tenant outbound SMTP relay"
)]
struct Cli {
    /// Config file (default: ./relayward.toml if present, else the embedded defaults)
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Admin API URL (http://host:port): run the command through the API instead of on the
    /// local store
    #[arg(long, global = true, env = "RELAYWARD_URL", value_name = "URL")]
    server: Option<String>,
    /// Admin API token, with --server
    #[arg(
        long,
        global = true,
        env = "RELAYWARD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay
    Serve,
    /// Tenants
    #[command(subcommand)]
    Tenant(cli::TenantCmd),
    /// Accepted (registered) domains
    #[command(subcommand)]
    Domain(cli::DomainCmd),
    /// Inbound connectors
    #[command(subcommand)]
    Connector(cli::ConnectorCmd),
    /// Spooled messages
    #[command(subcommand)]
    Queue(cli::QueueCmd),
    /// Message trace search
    Trace(cli::TraceArgs),
    /// Audit log of administrative changes
    Audit(cli::AuditArgs),
    /// The decision the relay would take right now for a client and transaction, step by step
    Diagnose(cli::DiagnoseArgs),
    /// Senders restricted by the per-sender limits
    #[command(subcommand)]
    Sender(cli::SenderCmd),
    /// Suppression lists: recipients refused after hard bounces and complaints, per tenant and
    /// global
    #[command(subcommand)]
    Suppression(cli::SuppressionCmd),
    /// Admin API tokens
    #[command(subcommand)]
    Token(cli::remote::TokenCmd),
    /// SRS: the SRS domain's DKIM key, rewriting and reversing addresses by hand
    #[command(subcommand)]
    Srs(relayward::forwarding::SrsCmd),
    /// Validate the configuration and print the effective one, defaults included (secrets
    /// shown as "<set>")
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relayward: {e:#}");
            return ExitCode::from(1);
        }
    };
    if matches!(cli.command, Command::CheckConfig) {
        return match config.effective_toml() {
            Ok(text) => {
                print!("{text}");
                eprintln!(
                    "relayward: configuration {} is valid",
                    cli.config
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "(embedded defaults or ./relayward.toml)".into())
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("relayward: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relayward: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let remote = match cli.server.as_deref() {
        Some(url) => match cli::remote::Remote::new(url, cli.token.clone()) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("relayward: {e:#}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let result = runtime.block_on(async move {
        if let Some(r) = remote {
            return match cli.command {
                Command::Serve => Err(anyhow::anyhow!("serve runs the relay here: drop --server")),
                Command::Tenant(c) => r.tenant(c).await,
                Command::Domain(c) => r.domain(c).await,
                Command::Connector(c) => r.connector(c).await,
                Command::Queue(c) => r.queue(c).await,
                Command::Trace(a) => r.trace(a).await,
                Command::Audit(a) => r.audit(a).await,
                Command::Diagnose(a) => r.diagnose(a).await,
                Command::Sender(c) => r.sender(c).await,
                Command::Suppression(c) => r.suppression(c).await,
                Command::Token(c) => r.token(c).await,
                Command::CheckConfig => unreachable!("answered above"),
                Command::Srs(_) => Err(anyhow::anyhow!(
                    "srs works with the local configuration and keys: drop --server"
                )),
            };
        }
        match cli.command {
            Command::Serve => serve::run(config).await,
            Command::Tenant(c) => cli::tenant(&config, c).await,
            Command::Domain(c) => cli::domain(&config, c).await,
            Command::Connector(c) => cli::connector(&config, c).await,
            Command::Queue(c) => cli::queue(&config, c).await,
            Command::Trace(a) => cli::trace(&config, a).await,
            Command::Audit(a) => cli::audit(&config, a).await,
            Command::Diagnose(a) => cli::diagnose(&config, a).await,
            Command::Sender(c) => cli::sender(&config, c).await,
            Command::Suppression(c) => cli::suppression(&config, c).await,
            Command::Token(c) => cli::remote::token(&config, c).await,
            Command::Srs(c) => relayward::forwarding::srs_command(&config, c).await,
            Command::CheckConfig => unreachable!("answered above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined.
            eprintln!("relayward: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}
