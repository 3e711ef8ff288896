//! [`ApiPath`]: axum's `Path` extractor whose rejection is an [`ApiError`].
//!
//! A path segment is percent-decoded before a handler sees it; one whose escapes are not UTF-8
//! (`/v1/runs/%ff`) is refused by axum with a plain-text 400. Every path parameter is read
//! through this extractor instead, so that answer is the API's JSON error envelope, with the
//! stable code `invalid_path`, like every other bad input.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The path parameters of a route, as `T`; see the module docs.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(e) => Err(ApiError::new(
                e.status(),
                "invalid_path",
                format!("invalid path: {}", e.body_text()),
            )),
        }
    }
}
