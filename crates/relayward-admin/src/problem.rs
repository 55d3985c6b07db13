//! Errors as RFC 9457 problem details (`application/problem+json`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use relayward_store::StoreError;

use crate::control::ControlError;
pub use relayward_api_types::problem::Problem;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer of the API.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    field: Option<String>,
    /// `WWW-Authenticate` challenge of a 401.
    challenge: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: String) -> Self {
        ApiError {
            status,
            slug,
            title,
            detail,
            field: None,
            challenge: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// No token (RFC 6750 section 3.1: no error code in the challenge).
    pub fn missing_token() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "this request needs an API token: send `Authorization: Bearer rw_<id>_<secret>`".into(),
        );
        e.challenge = Some("Bearer realm=\"relayward\"");
        e
    }

    /// A token that is malformed, unknown, revoked or whose secret does not match.
    pub fn invalid_token(detail: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail.into(),
        );
        e.challenge = Some("Bearer realm=\"relayward\", error=\"invalid_token\"");
        e
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            detail.into(),
        )
    }

    /// `what` is e.g. `tenant 12`. The same answer whether the object does not exist or belongs
    /// to another tenant.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not Found",
            format!("{what} not found"),
        )
    }

    /// Well-formed input with a value the API does not accept (422).
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Invalid input",
            detail.into(),
        )
        .with_field(field)
    }

    /// Input that cannot be parsed at all (400).
    pub fn bad_request(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail.into(),
        )
        .with_field(field)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail.into())
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
        .with_field("body")
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the request body must be JSON (Content-Type: application/json)".into(),
        )
        .with_field("body")
    }

    pub fn route_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not Found",
            format!("no route {path}; the API document is at /openapi.json"),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this route does not take that method; see /openapi.json".into(),
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail.into(),
        )
    }

    /// The details go to the log, not to the client.
    pub fn internal(log: impl std::fmt::Display) -> Self {
        tracing::error!(error = %log, "admin API internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the server could not complete the request; the details are in its log".into(),
        )
    }

    pub fn problem(&self) -> Problem {
        Problem {
            problem_type: format!("urn:relayward:problem:{}", self.slug),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            field: self.field.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.detail)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).expect("a problem serializes");
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(challenge) = self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(detail) => ApiError::conflict(detail),
            StoreError::Invalid(detail) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid input",
                detail,
            ),
            StoreError::Backend(detail) => ApiError::internal(format!("store: {detail}")),
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "admin API: store unavailable");
                ApiError::unavailable("the store (database) cannot be reached; try again later")
            }
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(what) => ApiError::not_found(what),
            ControlError::NotAllowed(detail) => ApiError::conflict(detail),
            ControlError::Invalid { field, detail } => ApiError::invalid(field, detail),
            ControlError::Unavailable(detail) => ApiError::unavailable(detail),
            ControlError::Internal(detail) => {
                ApiError::internal(format!("relay control: {detail}"))
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
