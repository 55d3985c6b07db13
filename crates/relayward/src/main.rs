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
    Serve {
        /// This node's name in a cluster (trace events, Received headers, GET /v1/nodes);
        /// default: `[server] node_name`, else the host name
        #[arg(long, value_name = "NAME")]
        node_name: Option<String>,
    },
    #[command(flatten)]
    Admin(cli::AdminCmd),
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
    let result = runtime.block_on(async move {
        match (cli.command, cli.server.as_deref()) {
            (Command::Serve { node_name }, None) => {
                let mut config = config;
                if let Some(name) = node_name {
                    relayward::cluster::check_node_name(&name)
                        .map_err(|e| anyhow::anyhow!("--node-name: {e}"))?;
                    config.server.node_name = Some(name);
                }
                serve::run(config).await
            }
            (Command::Serve { .. }, Some(_)) => {
                Err(anyhow::anyhow!("serve runs the relay here: drop --server"))
            }
            (Command::Srs(c), None) => relayward::forwarding::srs_command(&config, c).await,
            (Command::Srs(_), Some(_)) => Err(anyhow::anyhow!(
                "srs works with the local configuration and keys: drop --server"
            )),
            (Command::Admin(c), None) => {
                let admin = cli::local(&config).await?;
                cli::run(&admin, Some(&config), c).await
            }
            (Command::Admin(c), Some(url)) => {
                let admin = cli::remote(url, cli.token.clone())?;
                cli::run(&admin, None, c).await
            }
            (Command::CheckConfig, _) => unreachable!("answered above"),
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
