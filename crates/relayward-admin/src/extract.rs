//! Request extractors whose rejections are problem details naming the field at fault.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;
use crate::AppState;

/// A JSON request body (`application/json` or any `+json` type such as
/// `application/merge-patch+json`), read up to the body limit.
pub struct ApiJson<T>(pub T);

/// Like [`ApiJson`], but an empty body is `T::default()` (actions whose body is optional).
pub struct OptionalJson<T>(pub T);

fn is_json(req: &Request) -> bool {
    let Some(ct) = req.headers().get(CONTENT_TYPE) else {
        return false;
    };
    let Ok(ct) = ct.to_str() else { return false };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(state.config().body_limit)
        } else {
            ApiError::bad_request("body", format!("cannot read the request body: {rejection}"))
        }
    })
}

/// Parses `bytes` as `T`, naming the field of the first error. Every body of the API is an
/// object (serde would also take a struct from an array, by position: not here).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err(ApiError::bad_request("body", "the request body is empty")),
        Some(_) => {
            // Still tell malformed JSON apart from JSON of the wrong shape.
            return Err(match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(_) => ApiError::invalid("body", "the request body must be a JSON object"),
                Err(e) => ApiError::bad_request("body", format!("malformed JSON: {e}")),
            });
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(json_error(&path, &inner));
        }
    };
    de.end()
        .map_err(|e| ApiError::bad_request("body", format!("malformed JSON: {e}")))?;
    Ok(value)
}

fn json_error(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request("body", format!("malformed JSON: {e}"))
        }
        Category::Data => {
            let msg = e.to_string();
            let named = ["unknown field `", "missing field `"]
                .iter()
                .find_map(|p| msg.strip_prefix(p))
                .and_then(|rest| rest.split('`').next());
            // Unknown and missing fields: serde_path_to_error puts the unknown one in the path
            // already, the missing one not (its path is the parent's).
            let field = match (named, path) {
                (Some(name), "." | "") => name.to_string(),
                (Some(name), p) if p == name || p.ends_with(&format!(".{name}")) => p.to_string(),
                (Some(name), parent) => format!("{parent}.{name}"),
                (None, "." | "") => "body".to_string(),
                (None, p) => p.to_string(),
            };
            // serde_json appends " at line L column C": noise for a one-line body.
            let detail = match msg.rfind(" at line ") {
                Some(i) => msg[..i].to_string(),
                None => msg,
            };
            ApiError::invalid(field, detail)
        }
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(ApiError::unsupported_media_type());
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let json = is_json(&req);
        let has_type = req.headers().contains_key(CONTENT_TYPE);
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !json && has_type {
            return Err(ApiError::unsupported_media_type());
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// Path parameters; a value that does not parse is a 400 naming the parameter.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                use axum::extract::path::ErrorKind;
                let detail = e.body_text();
                Err(match e.into_kind() {
                    ErrorKind::ParseErrorAtKey {
                        key,
                        value,
                        expected_type,
                    } => ApiError::bad_request(
                        key.clone(),
                        format!("{key} {value:?} is not a valid {expected_type}"),
                    ),
                    ErrorKind::ParseErrorAtIndex {
                        index,
                        value,
                        expected_type,
                    } => {
                        let key = RawPathParams::from_request_parts(parts, state)
                            .await
                            .ok()
                            .and_then(|raw| raw.iter().nth(index).map(|(k, _)| k.to_string()))
                            .unwrap_or_else(|| "path".into());
                        ApiError::bad_request(
                            key.clone(),
                            format!("{key} {value:?} is not a valid {expected_type}"),
                        )
                    }
                    ErrorKind::ParseError {
                        value,
                        expected_type,
                    } => {
                        // A single parameter's error carries no key: find it by its value.
                        let key = RawPathParams::from_request_parts(parts, state)
                            .await
                            .ok()
                            .and_then(|raw| {
                                raw.iter()
                                    .find(|(_, v)| *v == value)
                                    .map(|(k, _)| k.to_string())
                            })
                            .unwrap_or_else(|| "path".into());
                        ApiError::bad_request(
                            key.clone(),
                            format!("{key} {value:?} is not a valid {expected_type}"),
                        )
                    }
                    ErrorKind::InvalidUtf8InPathParam { key } => {
                        ApiError::bad_request(key, "not valid UTF-8")
                    }
                    _ => ApiError::bad_request("path", detail),
                })
            }
            Err(other) => Err(ApiError::internal(format!("path parameters: {other}"))),
        }
    }
}

/// A query string; unknown parameters and values that do not parse are a 400 naming the
/// parameter.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize::<_, T>(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                let msg = e.into_inner().to_string();
                let named = ["unknown field `", "missing field `"]
                    .iter()
                    .find_map(|p| msg.strip_prefix(p))
                    .and_then(|rest| rest.split('`').next())
                    .map(str::to_string);
                let field = named.unwrap_or(if path == "." { "query".into() } else { path });
                let msg = msg
                    .replace("unknown field", "unknown parameter")
                    .replace("missing field", "missing parameter");
                ApiError::bad_request(field, msg)
            })
    }
}
