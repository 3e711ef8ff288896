//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` attributes and the
//! views' `ToSchema` derives, and a docs page that renders it.
//!
//! The batch-index lookups (`GET /v1/index/...`, served when an index is attached with
//! [`ApiState::with_index`](super::ApiState::with_index)) are described by [`IndexDoc`] from
//! their handlers in [`super::index`]; the document lists them only when the index is
//! served.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi as OpenApiDoc, PathItem};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorDetail, ErrorResponse};
use super::{abis, catalog, health, index, runs, versions};

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
        versions::list_versions,
        versions::rerun_model,
        catalog::chain_progress,
        abis::put_abi,
        abis::get_abi,
        abis::delete_abi,
        abis::list_abis,
        health::healthz,
        health::readyz,
    ),
    components(schemas(ErrorResponse, ErrorDetail)),
    modifiers(&Bearer),
    tags(
        (name = "runs", description = "Model runs"),
        (name = "models", description = "Registered models"),
        (name = "chains", description = "Chain progress"),
        (name = "abis", description = "The ABI registry: JSON ABIs per contract, decoded by the abi_events model"),
        (name = "health", description = "Probes"),
    )
)]
pub struct ApiDoc;

/// The batch-index lookups, merged into [`ApiDoc`] when an index is served.
#[derive(OpenApi)]
#[openapi(
    paths(index::account, index::transaction),
    components(schemas(
        index::AccountCheckpoints,
        index::IndexName,
        index::TransactionPosition,
        index::IndexCoverage,
    )),
    modifiers(&Bearer),
    tags((name = "index", description = "Account and transaction lookups in the batch-index account index")),
)]
pub struct IndexDoc;

/// The bearer scheme, and the scope each operation needs, by one rule: an operation under
/// `/v1/` takes a [`ReadAccess`](super::auth::ReadAccess) if it is a `GET` and a
/// [`WriteAccess`](super::auth::WriteAccess) otherwise; the probes take neither. The
/// `openapi_index` tests check every operation's requirement against what its handler refuses.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let PathItem {
                get,
                put,
                post,
                delete,
                patch,
                ..
            } = item;
            let scoped = [
                (get, "read"),
                (put, "write"),
                (post, "write"),
                (delete, "write"),
                (patch, "write"),
            ];
            for (op, scope) in scoped {
                if let Some(op) = op {
                    op.security = Some(vec![SecurityRequirement::new("bearer", [scope])]);
                }
            }
        }
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

/// The API reference page: renders every operation of `/openapi.json` with the project's own
/// script ([`ui::DOCS_JS`](super::ui::DOCS_JS), served at `/ui/assets/docs.js`); it loads
/// nothing from another host, so it works without internet access.
pub const DOCS_PAGE: &str = include_str!("ui/docs.html");
