//! Operations endpoints beside the JSON API: `GET /metrics` (Prometheus text format),
//! `GET /healthz` (the process answers) and `GET /readyz` (listeners bound, store reachable,
//! spool writable). They are not part of `/v1` nor of its OpenAPI document.
//!
//! `/metrics` needs an operator token unless `metrics_public` is set; the probes need none
//! (they say nothing about tenants).

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::Caller;
use crate::problem::ApiError;
use crate::AppState;

/// The Prometheus text exposition format, version 0.0.4.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) async fn metrics(State(state): State<AppState>, mut parts: Parts) -> Response {
    if !state.config().metrics_public {
        match Caller::from_request_parts(&mut parts, &state).await {
            Ok(caller) => {
                if let Err(e) = caller.require_operator("read the metrics") {
                    return e.into_response();
                }
            }
            Err(e) => return e.into_response(),
        }
    }
    match state.control().metrics_text() {
        Some(text) => ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response(),
        None => ApiError::unavailable("metrics are kept by the running relay").into_response(),
    }
}

pub(crate) async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
        .into_response()
}

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Shown, but readiness does not depend on it: mail keeps flowing without it (the shared
    /// counters of a cluster).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    checks: Vec<Check>,
}

pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = vec![match state.store().directory_version().await {
        Ok(_) => Check {
            name: "store".into(),
            ok: true,
            detail: None,
            optional: false,
        },
        Err(e) => Check {
            name: "store".into(),
            ok: false,
            detail: Some(e.to_string()),
            optional: false,
        },
    }];
    checks.extend(state.control().readiness().await);
    let ready = checks.iter().all(|c| c.ok || c.optional);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(Readiness { ready, checks })).into_response()
}
