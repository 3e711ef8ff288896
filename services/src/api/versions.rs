//! Model versions: `GET /v1/models/{name}/versions` (which version covers which blocks) and
//! `POST /v1/models/{name}/rerun` (rerun an older version's blocks with the registered one).
//! The rules are the engine's ([`model_runner_core::engine::rerun`]); the CLI's `versions` and
//! `rerun` call the same functions.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use model_runner_core::BlockRange;
use model_runner_core::engine::{RerunRequest, rerun, version_coverage};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{ReadAccess, WriteAccess};
use super::body::ApiJson;
use super::error::{ApiError, BodyRefusals, ErrorResponse, ReadRefusals, WriteRefusals};
use super::input::{self, Input};
use super::runs::SubmittedRuns;
use crate::submission;

/// Longest model name.
const MAX_MODEL_NAME: usize = 128;

/// The blocks one version of a model produced records for, on one chain.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionView {
    /// Chain.
    pub chain: String,
    /// Model version.
    pub version: String,
    /// Disjoint, ascending ranges of its succeeded runs.
    pub ranges: Vec<BlockRange>,
    /// Blocks in them.
    pub blocks: u64,
}

/// Every version of a model that succeeded on some blocks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionList {
    /// By chain, then version.
    pub versions: Vec<VersionView>,
}

/// A rerun of an older version's blocks with the registered version.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRuns {
    /// The older version whose blocks are rerun.
    #[schema(example = "1.0.0", min_length = 1, max_length = 128)]
    pub from_version: String,
    /// Only this chain (default: every chain the older version ran on).
    #[schema(pattern = "^[a-z]([a-z0-9]|-[a-z0-9])*$", max_length = 32)]
    pub chain: Option<String>,
    /// Blocks per new run (default 100).
    #[schema(minimum = 1, maximum = 9007199254740991_u64)]
    pub chunk_size: Option<u64>,
    /// Attempts per run (default 3, at most 100).
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_MODEL_NAME {
        return Err(ApiError::bad_request(
            "invalid_model",
            format!("a model name is 1-{MAX_MODEL_NAME} characters"),
        )
        .field("name"));
    }
    Ok(())
}

/// Which versions of the model cover which blocks: the merged ranges of each version's
/// succeeded runs, per chain. A model that never ran has none.
#[utoipa::path(
    get,
    path = "/v1/models/{name}/versions",
    tag = "models",
    params(("name" = String, Path, description = "Model name", min_length = 1, max_length = 128)),
    responses(
        (status = 200, description = "The versions and their blocks", body = VersionList),
        (status = 400, description = "Invalid model name", body = ErrorResponse),
        ReadRefusals,
    ),
)]
pub async fn list_versions(
    State(state): State<ApiState>,
    _: ReadAccess,
    Input(Path(name)): Input<Path<String>>,
) -> Result<Json<VersionList>, ApiError> {
    check_name(&name)?;
    let versions = version_coverage(&*state.deps.store, &name).await?;
    Ok(Json(VersionList {
        versions: versions
            .into_iter()
            .map(|v| VersionView {
                chain: v.chain.to_string(),
                version: v.version,
                blocks: v.blocks,
                ranges: v.ranges,
            })
            .collect(),
    }))
}

/// Creates runs of the model's registered version over every block `from_version` produced
/// (each block once, less what the registered version covers or is about to), through the
/// outbox like a backfill; their records carry the registered version.
#[utoipa::path(
    post,
    path = "/v1/models/{name}/rerun",
    tag = "models",
    params(("name" = String, Path, description = "Model name", min_length = 1, max_length = 128)),
    request_body = RerunRuns,
    responses(
        (status = 201, description = "Runs created", body = SubmittedRuns),
        (status = 400, description = "Invalid request, unknown model or chain, or nothing to rerun", body = ErrorResponse),
        WriteRefusals, BodyRefusals,
    ),
)]
pub async fn rerun_model(
    State(state): State<ApiState>,
    _: WriteAccess,
    Input(Path(name)): Input<Path<String>>,
    ApiJson(req): ApiJson<RerunRuns>,
) -> Result<(StatusCode, Json<SubmittedRuns>), ApiError> {
    check_name(&name)?;
    if req.from_version.is_empty() || req.from_version.len() > MAX_MODEL_NAME {
        return Err(ApiError::bad_request(
            "invalid_version",
            format!("from_version is 1-{MAX_MODEL_NAME} characters"),
        )
        .field("from_version"));
    }
    let chain = req.chain.as_deref().map(input::chain).transpose()?;
    let chunk_size = submission::chunk_size(req.chunk_size)?;
    let max_attempts = submission::max_attempts(req.max_attempts)?;
    let created = rerun(
        &state.deps,
        RerunRequest {
            model: name,
            from_version: req.from_version,
            chain,
            chunk_size,
            max_attempts,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}
