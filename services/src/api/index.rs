//! The batch-index lookups: `GET /v1/index/accounts/{account}` and
//! `GET /v1/index/transactions/{hash}`, served when an index is attached with
//! [`ApiState::with_index`](super::ApiState::with_index).
//!
//! They are ordinary API routes: `routes` is merged into [`app`](super::app) before its
//! layers, so a lookup goes through the request timeout and the body limit, needs the read scope
//! ([`ReadAccess`]) and answers every failure with the one [`ApiError`] envelope. A bad query
//! parameter is `400 invalid_query` naming the parameter, a bad account `400 invalid_account`,
//! a bad hash `400 invalid_hash`; index storage failures are logged and answered `503`.
//!
//! The index may be rebuilt into the served root while the API runs: each request takes one
//! [`IndexSnapshot`](batch_index::reader::IndexSnapshot) (one generation) and answers its sets
//! and `covered` from it, and the reader moves to a new generation within its refresh interval
//! (see the batch-index README, "Rebuilding a served index").
//!
//! An account's checkpoints come in pages: `from` is the first checkpoint to include, `limit`
//! the page size ([`DEFAULT_CHECKPOINT_PAGE`], at most [`MAX_CHECKPOINT_PAGE`]), and `next` is
//! the `from` of the following page (null on the last one). Every answer carries `covered`, the
//! ledgers (blocks) the index holds, so a client can tell "no activity in this checkpoint" from
//! "not indexed yet".

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::ReadAccess;
use super::error::{ApiError, ErrorResponse, ReadRefusals};
use super::input::{Input, page_size, quoted};

/// Checkpoints per page when the request gives no `limit`.
pub const DEFAULT_CHECKPOINT_PAGE: u32 = 1000;
/// Largest `limit` of an account lookup.
pub const MAX_CHECKPOINT_PAGE: u32 = 10_000;

/// The index routes, merged into the API router when an index is served.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/index/accounts/{account}", get(account))
        .route("/v1/index/transactions/{hash}", get(transaction))
}

/// An index name.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum IndexName {
    /// Every participant of every transaction.
    #[serde(rename = "all/all")]
    All,
    /// Payment participants only.
    #[serde(rename = "all/payments")]
    Payments,
}

/// Query of `GET /v1/index/accounts/{account}`. Values are read as text and validated one by
/// one, so an error names its parameter.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AccountQuery {
    /// Index name: `all/all` (default; every participant) or `all/payments` (payment
    /// participants).
    #[param(value_type = Option<IndexName>)]
    pub index: Option<String>,
    /// First checkpoint to include (default 0): the `next` of the previous page.
    #[param(value_type = Option<u32>)]
    pub from: Option<String>,
    /// Most checkpoints in the answer, 1 to 10000 (default 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    pub limit: Option<String>,
}

/// The ledgers (Ethereum: blocks) the index holds, every one of them read: an account absent
/// from a checkpoint inside this range took no part there, one outside it is not indexed yet.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct IndexCoverage {
    /// First ledger (block) indexed.
    pub first: u32,
    /// Last ledger (block) indexed, inclusive.
    pub last: u32,
}

/// One page of the checkpoints in which an account takes part, in increasing order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccountCheckpoints {
    /// The account, as asked.
    pub account: String,
    /// The index searched.
    pub index: IndexName,
    /// The first checkpoint this page could include.
    pub from: u32,
    /// The page size asked for.
    pub limit: u32,
    /// The account's checkpoints at or after `from`, at most `limit` of them.
    pub checkpoints: Vec<u32>,
    /// Pass as `from` for the next page; null when this page is the last.
    pub next: Option<u32>,
    /// The ledgers the index holds (null when unknown).
    pub covered: Option<IndexCoverage>,
}

/// Where a transaction sits in the chain.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransactionPosition {
    /// The hash, as asked.
    pub hash: String,
    /// `ledger << 32 | tx_index << 12 | op_index`.
    pub toid: u64,
    /// Ledger (Ethereum: block).
    pub ledger: u32,
    /// Transaction index (Stellar: 1-based apply order; Ethereum: `transactionIndex`).
    pub tx_index: u32,
    /// Operation index (0 for the transaction itself).
    pub op_index: u32,
    /// The ledgers the index holds (null when unknown).
    pub covered: Option<IndexCoverage>,
}

fn bad_query(field: &str, message: String) -> ApiError {
    ApiError::bad_request("invalid_query", message).field(field)
}

/// The query's parameters, checked: index name, first checkpoint, page size.
fn parse_account_query(q: AccountQuery) -> Result<(IndexName, u32, u32), ApiError> {
    let index = match q.index.as_deref() {
        None | Some(batch_index::INDEX_ALL) => IndexName::All,
        Some(batch_index::INDEX_PAYMENTS) => IndexName::Payments,
        Some(other) => {
            return Err(bad_query(
                "index",
                format!(
                    "invalid index {}: expected `{}` or `{}`",
                    quoted(other),
                    batch_index::INDEX_ALL,
                    batch_index::INDEX_PAYMENTS
                ),
            ));
        }
    };
    let from = match q.from {
        None => 0,
        Some(f) => f.parse::<u32>().map_err(|_| {
            bad_query(
                "from",
                format!(
                    "invalid from {}: expected a checkpoint from 0 to {}",
                    quoted(&f),
                    u32::MAX
                ),
            )
        })?,
    };
    let limit = page_size(
        q.limit.as_deref(),
        DEFAULT_CHECKPOINT_PAGE,
        MAX_CHECKPOINT_PAGE,
        "limit",
        "invalid_query",
    )?;
    Ok((index, from, limit))
}

fn reader(state: &ApiState) -> Result<&batch_index::IndexReader, ApiError> {
    state
        .index
        .as_ref()
        .ok_or_else(|| ApiError::not_found("not_found", "no index is served"))
}

impl From<batch_index::manifest::LedgerRange> for IndexCoverage {
    fn from(r: batch_index::manifest::LedgerRange) -> Self {
        Self {
            first: r.first,
            last: r.last,
        }
    }
}

/// An index read failure: a missing shard is `404`, anything else `503` (details logged).
fn index_error(e: batch_index::Error) -> ApiError {
    match e {
        batch_index::Error::NotFound(_) => {
            tracing::warn!(error = %e, "index data not found");
            ApiError::not_found("not_found", "index data not found")
        }
        e => ApiError::unavailable("index", &e),
    }
}

/// Checkpoints in which an account takes part, one page at a time.
///
/// The page holds the account's checkpoints at or after `from`, at most `limit` of them, in
/// increasing order; pass `next` as `from` for the following page (null on the last page).
#[utoipa::path(
    get,
    path = "/v1/index/accounts/{account}",
    tag = "index",
    params(
        ("account" = String, Path, description = "A Stellar account (`G...` or muxed `M...`) or an Ethereum address (`0x...`)"),
        AccountQuery,
    ),
    responses(
        (status = 200, description = "A page of the account's checkpoints", body = AccountCheckpoints),
        (status = 400, description = "Invalid account (`invalid_account`) or query parameter (`invalid_query`, naming it in `field`)", body = ErrorResponse),
        (status = 404, description = "The index has no data for this account's shard", body = ErrorResponse),
        ReadRefusals,
    ),
)]
pub async fn account(
    State(state): State<ApiState>,
    _: ReadAccess,
    Input(Path(account)): Input<Path<String>>,
    Input(Query(query)): Input<Query<AccountQuery>>,
) -> Result<Json<AccountCheckpoints>, ApiError> {
    let (index, from, limit) = parse_account_query(query)?;
    if let Err(e) = account.parse::<batch_index::account::Account>() {
        return Err(ApiError::bad_request("invalid_account", e.to_string()).field("account"));
    }
    // One generation answers the whole request, even while the index is rebuilt.
    let reader = reader(&state)?.snapshot().await.map_err(index_error)?;
    let name = match index {
        IndexName::All => batch_index::INDEX_ALL,
        IndexName::Payments => batch_index::INDEX_PAYMENTS,
    };
    let set = reader
        .checkpoints(&account, name)
        .await
        .map_err(index_error)?;
    let mut rest = set.range(from..);
    let checkpoints: Vec<u32> = rest.by_ref().take(limit as usize).collect();
    Ok(Json(AccountCheckpoints {
        account,
        index,
        from,
        limit,
        checkpoints,
        next: rest.next(),
        covered: reader.covered().map(IndexCoverage::from),
    }))
}

/// Position of a transaction by hash.
#[utoipa::path(
    get,
    path = "/v1/index/transactions/{hash}",
    tag = "index",
    params(
        ("hash" = String, Path, description = "32-byte transaction hash in hex, optionally `0x`-prefixed"),
    ),
    responses(
        (status = 200, description = "The transaction's position", body = TransactionPosition),
        (status = 400, description = "Not a 32-byte hex hash (`invalid_hash`)", body = ErrorResponse),
        (status = 404, description = "The transaction is not in the index", body = ErrorResponse),
        ReadRefusals,
    ),
)]
pub async fn transaction(
    State(state): State<ApiState>,
    _: ReadAccess,
    Input(Path(hash)): Input<Path<String>>,
) -> Result<Json<TransactionPosition>, ApiError> {
    if let Err(e) = batch_index::reader::parse_tx_hash(&hash) {
        return Err(ApiError::bad_request("invalid_hash", e.to_string()).field("hash"));
    }
    let reader = reader(&state)?.snapshot().await.map_err(index_error)?;
    match reader.transaction(&hash).await.map_err(index_error)? {
        Some(p) => Ok(Json(TransactionPosition {
            toid: p.0,
            ledger: p.ledger(),
            tx_index: p.tx_index(),
            op_index: p.op_index(),
            covered: reader.covered().map(IndexCoverage::from),
            hash,
        })),
        None => Err(ApiError::not_found("not_found", "transaction not in the index").field("hash")),
    }
}
