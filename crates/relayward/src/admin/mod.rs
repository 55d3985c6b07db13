//! The admin HTTP API in the running relay: [`Control`] gives `relayward_admin` the
//! restriction states, sender restrictions and queue of this process, and [`start`] serves the
//! API on `[admin] address`.
//!
//! A change made through the API counts for the very next SMTP command: after every successful
//! request that changes something, the directory snapshot and the abuse detector's view are
//! brought up to the store's before the answer goes out (the same reload the store poll does).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::watch;

use crate::config::Config;
use crate::serve::DirectoryReload;

mod control;
pub use control::Control;

/// Binds `[admin] address` and serves the API until `shutdown`; returns the bound address
/// (`None` when the API is disabled).
pub(crate) async fn start(
    config: &Config,
    control: Control,
    reload: Arc<DirectoryReload>,
    shutdown: watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> Result<Option<SocketAddr>> {
    if !config.admin.enabled {
        return Ok(None);
    }
    let settings = settings(config);
    let store = control.store();
    let router = relayward_admin::router(store, Arc::new(control), settings).layer(
        axum::middleware::from_fn_with_state(reload, reload_after_change),
    );
    let listener = tokio::net::TcpListener::bind(config.admin.address)
        .await
        .with_context(|| format!("cannot listen on {} (admin API)", config.admin.address))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "admin API ready");
    tasks.push(tokio::spawn(relayward_admin::serve(
        listener, router, shutdown,
    )));
    Ok(Some(local))
}

/// The admin API's settings from the relay's configuration.
pub fn settings(config: &Config) -> relayward_admin::AdminConfig {
    relayward_admin::AdminConfig {
        dns_resolver: config.delivery.dns_resolver,
        metrics_public: config.admin.metrics_public,
        ..Default::default()
    }
}

/// After a successful change, the relay's view catches up before the client hears "done".
async fn reload_after_change(
    State(reload): State<Arc<DirectoryReload>>,
    request: Request,
    next: Next,
) -> Response {
    let changes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let response = next.run(request).await;
    if changes && response.status().is_success() {
        reload.if_changed().await;
        reload.announce();
    }
    response
}
