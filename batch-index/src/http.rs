//! HTTP query endpoints for the API service (feature `http`):
//! `GET /v1/index/accounts/{account}?index=all/all&from=N` and
//! `GET /v1/index/transactions/{hash}`, over an [`IndexReader`].
//! Errors go through [`ApiError`], which gives a stable code and a message
//! without internals (storage details are logged, not returned).
//!
//! Every answer carries `covered: {first, last}`, the ledgers (blocks) the
//! index holds ([`IndexReader::covered`], null when unknown), so a client can
//! tell "no activity in this checkpoint" from "not indexed yet".

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::error::Error;
use crate::reader::IndexReader;

/// Client-facing error with a stable code.
#[derive(Debug)]
pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self.0 {
            Error::InvalidInput(m) => (StatusCode::BAD_REQUEST, "invalid_input", m.clone()),
            Error::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "not_found",
                "index data not found".to_string(),
            ),
            other => {
                tracing::error!(error = %other, "index query failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the index could not be read".to_string(),
                )
            }
        };
        (status, Json(json!({ "code": code, "message": message }))).into_response()
    }
}

/// Query string of the account endpoint.
#[derive(Debug, Deserialize)]
pub struct AccountQuery {
    /// Index name (default `all/all`).
    pub index: Option<String>,
    /// Only the first active checkpoint at or after this one.
    pub from: Option<u32>,
}

async fn account(
    State(reader): State<IndexReader>,
    Path(account): Path<String>,
    Query(q): Query<AccountQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let index = q.index.unwrap_or_else(|| crate::INDEX_ALL.to_string());
    let set = reader.checkpoints(&account, &index).await?;
    let covered = reader.covered();
    Ok(Json(match q.from {
        Some(from) => {
            json!({ "account": account, "index": index, "from": from, "next": set.range(from..).next(), "covered": covered })
        }
        None => {
            json!({ "account": account, "index": index, "checkpoints": set.iter().collect::<Vec<u32>>(), "covered": covered })
        }
    }))
}

async fn transaction(
    State(reader): State<IndexReader>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    Ok(match reader.transaction(&hash).await? {
        Some(p) => Json(json!({
            "hash": hash, "toid": p.0, "ledger": p.ledger(), "tx_index": p.tx_index(), "op_index": p.op_index(),
            "covered": reader.covered()
        }))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "code": "not_found", "message": "transaction not in the index" })),
        )
            .into_response(),
    })
}

/// The index routes, to be merged into the API service's router.
pub fn router(reader: IndexReader) -> Router {
    Router::new()
        .route("/v1/index/accounts/{account}", get(account))
        .route("/v1/index/transactions/{hash}", get(transaction))
        .with_state(reader)
}
