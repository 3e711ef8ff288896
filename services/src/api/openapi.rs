//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` attributes and the
//! views' `ToSchema` derives, and a docs page that renders it.
//!
//! The batch-index lookups (`GET /v1/index/...`, served when an index is attached with
//! [`ApiState::with_index`](super::ApiState::with_index)) are handled by `batch_index::http`,
//! which does not depend on utoipa: [`IndexDoc`] describes them from stubs in this file, and
//! the document lists them only when the index is served.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi as OpenApiDoc, PathItem};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorDetail, ErrorResponse};
use super::{catalog, health, runs};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "model-runner API",
        description = "Submit backfills, follow and control model runs, and see chain progress. \
Reads need a read or write bearer token unless reads are open; writes need a write token."
    ),
    paths(
        runs::submit,
        runs::list_runs,
        runs::get_run,
        runs::cancel,
        runs::retry,
        catalog::list_models,
        catalog::chain_progress,
        health::healthz,
        health::readyz,
    ),
    components(schemas(ErrorResponse, ErrorDetail)),
    modifiers(&BearerScheme),
    tags(
        (name = "runs", description = "Model runs"),
        (name = "models", description = "Registered models"),
        (name = "chains", description = "Chain progress"),
        (name = "health", description = "Probes"),
    )
)]
pub struct ApiDoc;

/// The batch-index lookups, merged into [`ApiDoc`] when an index is served.
#[derive(OpenApi)]
#[openapi(
    paths(index::account, index::transaction),
    components(schemas(
        index::AccountLookup,
        index::AccountCheckpoints,
        index::AccountNextActive,
        index::TransactionPosition,
        index::IndexCoverage,
        index::IndexError,
    )),
    tags((name = "index", description = "Account and transaction lookups in the batch-index account index")),
)]
pub struct IndexDoc;

/// Descriptions of the handlers of `batch_index::http` (the stubs are never called).
mod index {
    #![allow(dead_code)]

    use serde::Serialize;
    use utoipa::ToSchema;

    use super::super::error::ErrorResponse;

    /// The answer of an account lookup: every checkpoint, or with `from` the next one.
    #[derive(Serialize, ToSchema)]
    #[serde(untagged)]
    pub enum AccountLookup {
        /// Without `from`.
        All(AccountCheckpoints),
        /// With `from`.
        Next(AccountNextActive),
    }

    /// Every checkpoint in which the account appears in the index.
    #[derive(Serialize, ToSchema)]
    pub struct AccountCheckpoints {
        /// The account as given.
        pub account: String,
        /// The index searched.
        pub index: String,
        /// Checkpoints in ascending order (empty if the account never appears).
        pub checkpoints: Vec<u32>,
        /// The ledgers the index holds (null when unknown).
        pub covered: Option<IndexCoverage>,
    }

    /// The first checkpoint at or after `from` in which the account appears.
    #[derive(Serialize, ToSchema)]
    pub struct AccountNextActive {
        /// The account as given.
        pub account: String,
        /// The index searched.
        pub index: String,
        /// The `from` of the query.
        pub from: u32,
        /// That checkpoint, or null if there is none (in the ledgers `covered`).
        pub next: Option<u32>,
        /// The ledgers the index holds (null when unknown).
        pub covered: Option<IndexCoverage>,
    }

    /// Where a transaction is: its TOID and the parts of it.
    #[derive(Serialize, ToSchema)]
    pub struct TransactionPosition {
        /// The hash as given.
        pub hash: String,
        /// `ledger << 32 | tx_index << 12 | op_index`.
        pub toid: u64,
        /// Ledger (Stellar) or block (Ethereum).
        pub ledger: u32,
        /// Transaction index (Stellar: 1-based apply order; Ethereum: `transactionIndex`).
        pub tx_index: u32,
        /// Operation index (0 for the transaction itself).
        pub op_index: u32,
        /// The ledgers the index holds (null when unknown).
        pub covered: Option<IndexCoverage>,
    }

    /// The ledgers (Ethereum: blocks) the index holds, every one of them read: an account
    /// with no checkpoint inside this range took no part there; a checkpoint outside it is
    /// not indexed yet.
    #[derive(Serialize, ToSchema)]
    pub struct IndexCoverage {
        /// First ledger (block) indexed.
        pub first: u32,
        /// Last ledger (block) indexed, inclusive.
        pub last: u32,
    }

    /// The error body of the index lookups (other errors, e.g. a missing token, are
    /// [`ErrorResponse`]s).
    #[derive(Serialize, ToSchema)]
    pub struct IndexError {
        /// `invalid_input`, `not_found` or `unavailable`.
        pub code: String,
        /// What went wrong (storage details are logged, not returned).
        pub message: String,
    }

    /// Checkpoints in which an account takes part.
    ///
    /// Without `from`, every checkpoint of the account in the index; with `from`, only the first
    /// one at or after it (`next`, null if none).
    #[utoipa::path(
        get,
        path = "/v1/index/accounts/{account}",
        tag = "index",
        params(
            ("account" = String, Path, description = "A Stellar account (`G...` or muxed `M...`) or an Ethereum address (`0x...`)"),
            ("index" = Option<String>, Query, description = "Index name: `all/all` (default; every participant) or `all/payments` (payment participants)"),
            ("from" = Option<u32>, Query, description = "Only the first checkpoint at or after this one"),
        ),
        responses(
            (status = 200, description = "The account's checkpoints", body = AccountLookup),
            (status = 400, description = "Invalid account or query (`invalid_input`)", body = IndexError),
            (status = 401, description = "No valid token", body = ErrorResponse),
            (status = 404, description = "The index has no data for this account's shard", body = IndexError),
            (status = 503, description = "The index could not be read", body = IndexError),
        ),
        security(("bearer" = ["read"]))
    )]
    pub fn account() {}

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
            (status = 400, description = "Not a 32-byte hex hash (`invalid_input`)", body = IndexError),
            (status = 401, description = "No valid token", body = ErrorResponse),
            (status = 404, description = "The transaction is not in the index", body = IndexError),
            (status = 503, description = "The index could not be read", body = IndexError),
        ),
        security(("bearer" = ["read"]))
    )]
    pub fn transaction() {}
}

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The document as served, as JSON: with open reads, `GET` operations also accept no
/// credentials; with `index`, it lists the batch-index lookups; a submission's `model` and
/// `chain` list the registered models and configured chains of this process.
pub fn served_json(open_reads: bool, index: bool, models: &[&str], chains: &[&str]) -> String {
    let mut doc =
        serde_json::to_value(document(open_reads, index)).expect("the document serialises");
    let submit = &mut doc["components"]["schemas"]["SubmitRuns"]["properties"];
    if submit.is_object() {
        submit["model"]["enum"] = serde_json::json!(models);
        submit["chain"]["enum"] = serde_json::json!(chains);
    }
    doc.to_string()
}

/// The document generated from the code: with open reads, `GET` operations also accept no
/// credentials; with `index`, it includes [`IndexDoc`].
pub fn document(open_reads: bool, index: bool) -> OpenApiDoc {
    let mut doc = ApiDoc::openapi();
    if index {
        doc.merge(IndexDoc::openapi());
    }
    if open_reads {
        for item in doc.paths.paths.values_mut() {
            let PathItem { get, .. } = item;
            if let Some(op) = get
                && let Some(security) = op.security.as_mut()
            {
                security.push(SecurityRequirement::default());
            }
        }
    }
    doc
}

/// A page that renders `/openapi.json` (Scalar, loaded from its CDN).
pub const DOCS_PAGE: &str = r#"<!doctype html>
<html>
<head>
<title>model-runner API</title>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
</head>
<body>
<noscript>The API description is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script id="api-reference" data-url="/openapi.json"></script>
<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
</body>
</html>
"#;
