//! `relayward queue`: spooled messages and the operator's operations on them.

use anyhow::Result;
use clap::Subcommand;
use relayward_client::types::QueueOperation;

use super::{print, print_json, Admin};

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Spooled messages
    List {
        #[arg(long)]
        json: bool,
    },
    /// One message: envelope and each recipient's status
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Attempt delivery now
    Retry { id: String },
    /// Stop delivery attempts until released
    Hold { id: String },
    /// Resume delivery attempts
    Release { id: String },
    /// Remove from the queue; the sender gets a DSN unless --no-dsn
    Delete {
        id: String,
        #[arg(long)]
        no_dsn: bool,
    },
}

pub async fn run(admin: &Admin, cmd: QueueCmd) -> Result<()> {
    let (id, op, name) = match cmd {
        QueueCmd::List { json } => {
            let messages = admin.queue().await?;
            if json {
                return print_json(&messages);
            }
            print::queue(&messages);
            return Ok(());
        }
        QueueCmd::Show { id, json } => {
            let m = admin.queued(&id).await?;
            if json {
                return print_json(&m);
            }
            print::message(&m);
            return Ok(());
        }
        QueueCmd::Retry { id } => (id, QueueOperation::Retry, "retry"),
        QueueCmd::Hold { id } => (id, QueueOperation::Hold, "hold"),
        QueueCmd::Release { id } => (id, QueueOperation::Release, "release"),
        QueueCmd::Delete { id, no_dsn } => (
            id,
            if no_dsn {
                QueueOperation::Delete
            } else {
                QueueOperation::Bounce
            },
            "delete",
        ),
    };
    let outcome = admin.queue_operation(&id, op).await?;
    if outcome.applied {
        println!("{id}: {name} done");
    } else {
        println!("{id}: {name} requested from the running relay");
    }
    Ok(())
}
