//! Admin commands for a relay running in the test's own process: the very code of `relayward
//! <command>` on the relay's host (the admin API in process, on the local store), on the clock
//! the test gives the detector.

use std::sync::Arc;

use clap::Parser;
use relayward::cli;
use relayward::clock::Clock;
use relayward::config::Config;

#[derive(Parser, Debug)]
struct Command {
    #[command(subcommand)]
    cmd: cli::AdminCmd,
}

/// `relayward <args>` on `config`'s store and spool.
pub async fn admin(config: &Config, clock: Arc<dyn Clock>, args: &[&str]) -> anyhow::Result<()> {
    let cmd = Command::try_parse_from(std::iter::once("relayward").chain(args.iter().copied()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let admin = cli::local_at(config, clock).await?;
    cli::run(&admin, Some(config), cmd.cmd).await
}

/// [`admin`], which must succeed.
pub async fn admin_ok(config: &Config, clock: Arc<dyn Clock>, args: &[&str]) {
    if let Err(e) = admin(config, clock, args).await {
        panic!("relayward {args:?}: {e:#}");
    }
}

/// Tenant `name` (its admin `admin@<name>.example`) with `<name>.example` verified and an
/// on-premises IP connector `onprem` for `ip` that may relay unregistered senders: a hybrid
/// server that forwards.
pub async fn hybrid_tenant(config: &Config, clock: Arc<dyn Clock>, name: &str, ip: &str) {
    let admin_email = format!("admin@{name}.example");
    let domain = format!("{name}.example");
    let cidr = format!("{ip}/32");
    for args in [
        vec!["tenant", "add", name, "--admin-email", &admin_email],
        vec!["domain", "add", name, &domain, "--verified"],
        vec![
            "connector",
            "add",
            name,
            "--name",
            "onprem",
            "--kind",
            "on-premises",
            "--ip",
            &cidr,
            "--allow-unregistered",
        ],
    ] {
        admin_ok(config, clock.clone(), &args).await;
    }
}
