//! The relayward admin HTTP API: JSON under `/v1`, its OpenAPI 3.1 document at `/openapi.json`,
//! errors as RFC 9457 problem details.
//!
//! Access is by bearer token (`rw_<id>_<secret>`): an operator token sees everything; a
//! tenant-admin token sees its own tenant only. Another tenant's objects answer 404, exactly as
//! objects that do not exist; collections and actions only the operator has answer 403.
//!
//! The binary wires it: [`router`] over the store and a [`RelayControl`] (the detector, sender
//! limits and queue of the running relay), then [`serve`] on a listener. The CLI creates the
//! first operator token with [`create_token`]. The same listener serves the web admin center
//! ([`web`]) at `/`, a client of this API.

mod api;
mod auth;
pub mod control;
pub mod dns;
mod extract;
pub mod health;
mod openapi;
pub mod problem;
mod validate;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method, Uri};
use axum::response::Response;
use axum::Router;
use relayward_store::Store;

pub use api::diagnose::{
    question as diagnose_question, DiagnoseRequest, DiagnoseStep, DiagnosisView,
};
pub use auth::{create_token, list_tokens, parse_token, revoke_token, token_actor, TokenInfo};
pub use control::{ControlError, RelayControl};
pub use openapi::openapi;
pub use problem::{ApiError, Problem};
pub use relayward_store::{ApiToken, TokenId, TokenScope};

/// The request and response bodies of the API (its own crate, shared with the clients).
pub use relayward_api_types as types;

use crate::auth::Verifier;
use crate::problem::ApiError as Error;

/// Settings of the admin API. `AdminConfig::default()` is a working configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// DNS server for domain verification (`delivery.dns_resolver`); `None`: the system's.
    pub dns_resolver: Option<SocketAddr>,
    /// Per DNS attempt.
    pub dns_timeout: Duration,
    pub dns_attempts: usize,
    /// Largest request body accepted (bytes); larger ones answer 413.
    pub body_limit: usize,
    /// `GET /metrics` without a token (a scraper on a trusted network); default: an operator
    /// token is needed.
    pub metrics_public: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            dns_resolver: None,
            dns_timeout: Duration::from_secs(3),
            dns_attempts: 2,
            body_limit: 64 * 1024,
            metrics_public: false,
        }
    }
}

struct Shared {
    store: Arc<dyn Store>,
    control: Arc<dyn RelayControl>,
    config: AdminConfig,
    verifier: Verifier,
}

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl AppState {
    pub(crate) fn store(&self) -> &dyn Store {
        &*self.0.store
    }

    pub(crate) fn control(&self) -> &dyn RelayControl {
        &*self.0.control
    }

    pub(crate) fn config(&self) -> &AdminConfig {
        &self.0.config
    }

    pub(crate) fn verifier(&self) -> &Verifier {
        &self.0.verifier
    }

    pub(crate) fn dns(&self) -> dns::DnsSettings {
        dns::DnsSettings {
            server: self.0.config.dns_resolver,
            timeout: self.0.config.dns_timeout,
            attempts: self.0.config.dns_attempts,
        }
    }
}

/// Every route of the API as `(method, path)`, in the path syntax of the OpenAPI document
/// (`/v1/tenants/{tenant_id}`). The router is built from the same table.
pub fn routes() -> Vec<(Method, &'static str)> {
    api::table()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect()
}

/// The admin API. Mount it on its own listener with [`serve`].
pub fn router(
    store: Arc<dyn Store>,
    control: Arc<dyn RelayControl>,
    config: AdminConfig,
) -> Router {
    let body_limit = config.body_limit;
    let state = AppState(Arc::new(Shared {
        store,
        control,
        config,
        verifier: Verifier::default(),
    }));
    let mut router = Router::new();
    for (_, path, method_router) in api::table() {
        router = router.route(path, method_router);
    }
    router
        .route("/metrics", axum::routing::get(health::metrics))
        .route("/healthz", axum::routing::get(health::healthz))
        .route("/readyz", axum::routing::get(health::readyz))
        .route("/", axum::routing::get(web::index))
        .route("/assets/{file}", axum::routing::get(web::asset))
        .fallback(|uri: Uri| async move { Error::route_not_found(uri.path()) })
        .method_not_allowed_fallback(|| async { Error::method_not_allowed() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::map_response(no_store))
        .with_state(state)
}

/// The admin API for the operator's commands on the relay's own host (`relayward` without
/// `--server`): the same routes, validation and audit as [`router`], every request made by the
/// operator and audited as `actor`. Never served on a listener: the CLI calls it in process.
pub fn local_router(
    store: Arc<dyn Store>,
    control: Arc<dyn RelayControl>,
    config: AdminConfig,
    actor: &str,
) -> Router {
    router(store, control, config).layer(axum::Extension(auth::LocalOperator(actor.into())))
}

/// Answers may carry tokens and tenant data: no cache keeps them.
async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Serves `router` on `listener` until `shutdown` turns `true` (or its sender is dropped), then
/// finishes the requests in flight and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}
