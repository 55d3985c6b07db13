//! The web admin center: one HTML shell, ES modules and a style sheet, embedded in the binary
//! and served at `/` of the admin listener. The pages are drawn in the browser from the public
//! `/v1` API with the signed-in token, so they can do nothing the token could not do with curl,
//! and there is nothing to build: the files here are what the browser runs.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::problem::ApiError;

/// Scripts and styles from this origin only (no inline script or style, no `eval`), data from
/// the API only, never framed, no form posted anywhere by the browser itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("index.html");

/// `(name, content type, body)` of each file under `/assets/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("api.js"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_str!("ui.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("chart.js"),
    ),
    (
        "status.js",
        "text/javascript; charset=utf-8",
        include_str!("status.js"),
    ),
    (
        "tenant.js",
        "text/javascript; charset=utf-8",
        include_str!("tenant.js"),
    ),
    (
        "operator.js",
        "text/javascript; charset=utf-8",
        include_str!("operator.js"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("icon.svg")),
];

/// The names of the files served under `/assets/`.
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(name, _, _)| *name)
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    (StatusCode::OK, headers, body).into_response()
}

/// `GET /`: the shell; the pages are routed in the browser (`#/...`).
pub(crate) async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /assets/{file}`.
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => page(content_type, body),
        None => ApiError::not_found(format!("asset {file}")).into_response(),
    }
}
