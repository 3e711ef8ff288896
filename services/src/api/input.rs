//! Request input that several endpoints share: [`Input`], axum's `Path` and `Query` extractors
//! with their rejections answered as an [`ApiError`], and the parsing of values (chain names,
//! page sizes) into what the handlers use, each refusal naming its field.
//!
//! A path segment is percent-decoded before a handler sees it; one whose escapes are not UTF-8
//! (`/v1/runs/%ff`) is refused by axum with a plain-text 400. Every path parameter is read
//! through [`Input`] instead, so that answer is the API's JSON error envelope, with the stable
//! code `invalid_path`, like every other bad input.
//!
//! A query struct is deserialised as a whole first (`deny_unknown_fields`, every value read as
//! text), so an unknown or repeated parameter is refused here as `400 invalid_query` with the
//! parameter in `field`; each handler then parses its values one by one, so that a bad value is
//! refused with an error that names its parameter too.

use axum::extract::FromRequestParts;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::request::Parts;
use model_runner_core::Chain;

use super::error::ApiError;

/// The axum extractor `E` (`Path<T>` or `Query<T>`) with its rejection answered as an
/// [`ApiError`] (`invalid_path`, `invalid_query`); see the module docs.
#[derive(Debug, Clone)]
pub struct Input<E>(pub E);

impl<E, S> FromRequestParts<S> for Input<E>
where
    E: FromRequestParts<S>,
    ApiError: From<E::Rejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Input(E::from_request_parts(parts, state).await?))
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::new(
            e.status(),
            "invalid_path",
            format!("invalid path: {}", e.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        let text = e.body_text();
        let mut err =
            ApiError::bad_request("invalid_query", format!("invalid query string: {text}"));
        // serde names an unknown, missing or repeated parameter in backticks.
        err.field = text.split('`').nth(1).map(str::to_owned);
        err
    }
}

/// A chain name from the path, query or body; refused as `400 invalid_chain` naming `chain`.
pub(crate) fn chain(name: &str) -> Result<Chain, ApiError> {
    Chain::new(name)
        .map_err(|e| ApiError::bad_request("invalid_chain", e.to_string()).field("chain"))
}

/// At most 64 characters of a value, to quote it back in an error message.
pub(crate) fn quoted(value: &str) -> String {
    format!("{:?}", value.chars().take(64).collect::<String>())
}

/// A page size from the query: `default` when absent, else a number from 1 to `max`; anything
/// else is refused with `code`, naming `field`.
pub(crate) fn page_size(
    value: Option<&str>,
    default: u32,
    max: u32,
    field: &str,
    code: &'static str,
) -> Result<u32, ApiError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            code,
            format!(
                "invalid {field} {}: expected a page size from 1 to {max}",
                quoted(value)
            ),
        )
        .field(field)),
    }
}
