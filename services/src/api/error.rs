//! [`ApiError`]: the one error type of the HTTP API.
//!
//! Every failure a handler, an extractor or a middleware produces becomes an `ApiError`, rendered
//! as `{"error": {"code", "message", "field"}}`. `code` is stable (clients branch on it),
//! `message` names the problem in words, `field` points at the offending input when there is one.
//! Store and broker failures are logged (URL passwords redacted) and answered with a generic
//! message, so internals (SQL, URLs, hosts) never reach a client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use model_runner_core::engine::EngineError;
use model_runner_core::model::RegistryError;
use model_runner_core::ports::StoreError;
use model_runner_core::redact::redact_urls_in;
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

/// A failed request: status, stable code, message and the input field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `unknown_model`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault (`range.start`, `id`, `limit`, ...), if any.
    pub field: Option<String>,
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorDetail,
}

/// The error inside an [`ErrorResponse`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `unknown_model`, `invalid_body`, `conflict`.
    pub code: String,
    /// What went wrong, naming the offending input.
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
}

/// The refusals every operation that needs a read token may answer, listed in its
/// `#[utoipa::path]` beside its own responses.
#[derive(Debug, IntoResponses)]
pub enum ReadRefusals {
    /// No valid token (`unauthorized`).
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// A backend is unavailable (`unavailable`; run store, queue, block source or index) or the
    /// request took longer than the server allows (`timeout`).
    #[response(status = 503)]
    Unavailable(ErrorResponse),
}

/// The refusals every operation that needs a write token may answer.
#[derive(Debug, IntoResponses)]
pub enum WriteRefusals {
    /// No valid token (`unauthorized`).
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// A token that may only read (`forbidden`).
    #[response(status = 403)]
    Forbidden(ErrorResponse),
    /// A backend is unavailable (`unavailable`; run store, queue, block source or index) or the
    /// request took longer than the server allows (`timeout`).
    #[response(status = 503)]
    Unavailable(ErrorResponse),
}

/// The refusals of a request body, for every operation that reads one.
#[derive(Debug, IntoResponses)]
pub enum BodyRefusals {
    /// The body is larger than the server's limit (`body_too_large`).
    #[response(status = 413)]
    TooLarge(ErrorResponse),
    /// The body is not `application/json` (`unsupported_media_type`).
    #[response(status = 415)]
    NotJson(ErrorResponse),
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Names the field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// `400`: the input is invalid.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// `404`.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// `409`: the resource is not in a state that allows the request.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// `401`: no valid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// `403`: valid credentials without the needed scope.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// `503`: a backend failed; `detail` is logged (any URL in it redacted), never returned.
    pub fn unavailable(what: &str, detail: &dyn std::fmt::Display) -> Self {
        let error = redact_urls_in(&detail.to_string());
        tracing::error!(backend = what, %error, "API request failed on a backend");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the {what} is unavailable; retry later"),
        )
    }

    /// `500`: a failure that no input should cause; `detail` is logged (any URL in it
    /// redacted), never returned.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        let error = redact_urls_in(&detail.to_string());
        tracing::error!(%error, "API request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the details are in the service log",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { id } => {
                ApiError::not_found("run_not_found", format!("run {id} not found")).field("id")
            }
            StoreError::Conflict { message, .. } => ApiError::conflict(message),
            StoreError::Transition(t) => ApiError::conflict(t.to_string()),
            StoreError::InvalidInput(m) => ApiError::bad_request("invalid_input", m),
            e @ StoreError::Unavailable { .. } => ApiError::unavailable("run store", &e),
            e => ApiError::internal(&e),
        }
    }
}

impl From<crate::submission::InvalidField> for ApiError {
    fn from(e: crate::submission::InvalidField) -> Self {
        ApiError::bad_request(e.code, e.message).field(e.field)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::UnknownModel { .. } => {
                ApiError::bad_request("unknown_model", e.to_string()).field("model")
            }
            RegistryError::UnsupportedChain { .. } => {
                ApiError::bad_request("unsupported_chain", e.to_string()).field("chain")
            }
            _ => ApiError::internal(&e),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(s) => s.into(),
            EngineError::Registry(r) => r.into(),
            e @ EngineError::UnknownChain { .. } => {
                ApiError::bad_request("unknown_chain", e.to_string()).field("chain")
            }
            EngineError::Routing(r) => {
                ApiError::bad_request("invalid_adhoc_queue", r.to_string()).field("adhoc_queue")
            }
            EngineError::InvalidInput(m) => ApiError::bad_request("invalid_input", m),
            e @ EngineError::Queue(_) => ApiError::unavailable("queue", &e),
            e @ EngineError::Source(_) => ApiError::unavailable("block source", &e),
            e => ApiError::internal(&e),
        }
    }
}
