//! JSON request bodies with errors that name the problem.
//!
//! [`ApiJson`] reads the body (bounded by the router's body limit), checks the content type and
//! deserialises with `serde_path_to_error`, so a wrong type names its path (`range.start`) and an
//! unknown field names itself. [`OptionalJson`] also accepts an empty body.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::ApiState;
use super::error::ApiError;

/// A JSON body that must be present.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

/// A JSON body that may be empty or `null` (`None`).
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

async fn read_body(req: Request, state: &ApiState) -> Result<(HeaderMap, Bytes), ApiError> {
    let headers = req.headers().clone();
    let bytes = Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "request body is larger than the limit of {} bytes",
                    state.config.limits.max_body_bytes
                ),
            )
        } else {
            ApiError::bad_request("invalid_body", format!("cannot read request body: {e}"))
        }
    })?;
    Ok((headers, bytes))
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match mime.as_deref() {
        Some("application/json") => Ok(()),
        Some(m) if m.starts_with("application/") && m.ends_with("+json") => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a JSON body with `Content-Type: application/json`",
        )),
    }
}

/// Deserialises `bytes`, turning serde's error into a 400 that names the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !inner.is_data() {
            return ApiError::bad_request("malformed_json", format!("malformed JSON: {inner}"));
        }
        let message = inner.to_string();
        // serde names unknown and missing fields in backticks; the path is the field itself
        // (unknown) or its parent (missing).
        let named = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|rest| rest.split('`').next());
        let field = match (named, path.as_str()) {
            (Some(name), "." | "") => name.to_owned(),
            (Some(name), p) if p.rsplit('.').next() == Some(name) => p.to_owned(),
            (Some(name), parent) => format!("{parent}.{name}"),
            (None, p) => p.to_owned(),
        };
        let mut err = ApiError::bad_request("invalid_body", format!("invalid body: {message}"));
        if field != "." && !field.is_empty() {
            err = err.field(field);
        }
        err
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request("malformed_json", format!("malformed JSON: {e}")))?;
    Ok(value)
}

impl<T: DeserializeOwned> FromRequest<ApiState> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let (headers, bytes) = read_body(req, state).await?;
        check_content_type(&headers)?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<T: DeserializeOwned> FromRequest<ApiState> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let (headers, bytes) = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        check_content_type(&headers)?;
        // `null` is "no body" too, as the OpenAPI document (an optional, nullable body) says.
        parse_json::<Option<T>>(&bytes).map(OptionalJson)
    }
}
