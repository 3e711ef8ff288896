//! Request input that several endpoints share: [`ApiQuery`], axum's `Query` extractor whose
//! rejection is an [`ApiError`], and the parsing of values (chain names, page sizes) into what
//! the handlers use, each refusal naming its field.
//!
//! A query struct is deserialised as a whole first (`deny_unknown_fields`, every value read as
//! text), so an unknown or repeated parameter is refused here as `400 invalid_query` with the
//! parameter in `field`; each handler then parses its values one by one, so that a bad value is
//! refused with an error that names its parameter too.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use model_runner_core::Chain;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The query string of a request, as `T`; see the module docs.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(e) => {
                let text = e.body_text();
                let mut err =
                    ApiError::bad_request("invalid_query", format!("invalid query string: {text}"));
                // serde names an unknown, missing or repeated parameter in backticks.
                err.field = text.split('`').nth(1).map(str::to_owned);
                Err(err)
            }
        }
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
