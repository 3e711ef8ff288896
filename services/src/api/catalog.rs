//! What the process can run and how far it has got: `GET /v1/models` and
//! `GET /v1/chains/{chain}/progress`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use model_runner_core::ports::RunFilter;
use model_runner_core::{Chain, FieldSpec, FieldType, ModelKind, RunState};
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::ReadAccess;
use super::error::{ApiError, ErrorResponse, ReadRefusals};
use super::input::{self, Input};

/// How long the progress endpoint waits for a chain head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// A registered model.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelView {
    /// Name, as used in submissions.
    pub name: String,
    /// Reads or nonreads.
    pub kind: ModelKind,
    /// Version.
    pub version: String,
    /// Configured chains it can run on.
    pub chains: Vec<String>,
    /// The payload fields the model declares, in column order; `null` for a model whose
    /// payloads are schemaless.
    pub record_schema: Option<Vec<FieldView>>,
}

/// A declared payload field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldView {
    /// Payload key; typed sinks name the column `payload_<name>`.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Whether the field may be missing or null.
    pub nullable: bool,
    /// What it means (may be empty).
    pub description: String,
}

impl From<&FieldSpec> for FieldView {
    fn from(f: &FieldSpec) -> Self {
        Self {
            name: f.name.clone(),
            ty: f.ty,
            nullable: f.nullable,
            description: f.description.clone(),
        }
    }
}

/// The registered models.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    /// Sorted by name.
    pub models: Vec<ModelView>,
}

/// The registered models, with the configured chains each can run on and their declared
/// record schemas.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    responses(
        (status = 200, description = "Registered models", body = ModelList),
        ReadRefusals,
    ),
)]
pub async fn list_models(State(state): State<ApiState>, _: ReadAccess) -> Json<ModelList> {
    let mut configured: Vec<&Chain> = state.deps.sources.keys().collect();
    configured.sort();
    let models = state
        .deps
        .models
        .iter()
        .map(|m| {
            let m = m.spec();
            let supported = m.chains();
            ModelView {
                name: m.name().to_owned(),
                kind: m.kind(),
                version: m.version().to_owned(),
                chains: configured
                    .iter()
                    .filter(|c| supported.is_empty() || supported.contains(c))
                    .map(|c| c.to_string())
                    .collect(),
                record_schema: m
                    .record_schema()
                    .map(|s| s.fields().iter().map(FieldView::from).collect()),
            }
        })
        .collect();
    Json(ModelList { models })
}

/// A chain head.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HeadView {
    /// Latest block number.
    pub number: u64,
    /// Its hash.
    pub hash: String,
}

/// Realtime progress of one model.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelProgress {
    /// Model.
    pub model: String,
    /// Last block covered by a created realtime run.
    pub cursor: u64,
    /// Blocks between the head and the cursor; `null` when the head is unknown.
    pub lag: Option<u64>,
    /// When the cursor last moved.
    pub updated_at: DateTime<Utc>,
}

/// Number of runs per state.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct RunCounts {
    /// Pending.
    pub pending: u64,
    /// Queued.
    pub queued: u64,
    /// Running.
    pub running: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Expired.
    pub expired: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Superseded by a run over a reorganised chain's new branch.
    pub superseded: u64,
}

/// Where a chain has got to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChainProgress {
    /// Chain.
    pub chain: String,
    /// The head, or `null` when the block source did not answer.
    pub head: Option<HeadView>,
    /// Why the head is missing.
    pub head_error: Option<String>,
    /// Realtime cursor and lag per model.
    pub models: Vec<ModelProgress>,
    /// Runs of the chain by state (all modes).
    pub runs_by_state: RunCounts,
}

/// Head, realtime cursors and lag, and runs by state of a chain.
#[utoipa::path(
    get,
    path = "/v1/chains/{chain}/progress",
    tag = "chains",
    params(("chain" = String, Path, pattern = "^[a-z]([a-z0-9]|-[a-z0-9])*$", max_length = 32,
        description = "A configured chain, e.g. `ethereum`")),
    responses(
        (status = 200, description = "Progress", body = ChainProgress),
        (status = 400, description = "Invalid chain name", body = ErrorResponse),
        (status = 404, description = "Chain not configured", body = ErrorResponse),
        ReadRefusals,
    ),
)]
pub async fn chain_progress(
    State(state): State<ApiState>,
    _: ReadAccess,
    Input(Path(chain)): Input<Path<String>>,
) -> Result<Json<ChainProgress>, ApiError> {
    let chain = input::chain(&chain)?;
    let source = state
        .deps
        .source(&chain)
        .map_err(|e| ApiError::not_found("unknown_chain", e.to_string()).field("chain"))?;
    let (head, head_error) = match tokio::time::timeout(HEAD_TIMEOUT, source.head()).await {
        Ok(Ok(h)) => (
            Some(HeadView {
                number: h.number,
                hash: h.hash.to_string(),
            }),
            None,
        ),
        Ok(Err(e)) => {
            let error = model_runner_core::redact::redact_urls_in(&e.to_string());
            tracing::warn!(%chain, %error, "chain head unavailable");
            (
                None,
                Some("the block source did not return a head".to_owned()),
            )
        }
        Err(_) => (
            None,
            Some(format!(
                "the block source did not answer within {}s",
                HEAD_TIMEOUT.as_secs()
            )),
        ),
    };
    let head_number = head.as_ref().map(|h| h.number);
    let models = state
        .deps
        .store
        .cursors(Some(&chain))
        .await?
        .into_iter()
        .map(|c| ModelProgress {
            lag: head_number.map(|h| h.saturating_sub(c.block)),
            model: c.model,
            cursor: c.block,
            updated_at: c.updated_at,
        })
        .collect();
    let counts = state
        .deps
        .store
        .count_by_state(&RunFilter {
            chain: Some(chain.clone()),
            ..Default::default()
        })
        .await?;
    let mut runs_by_state = RunCounts::default();
    for (s, n) in counts {
        let slot = match s {
            RunState::Pending => &mut runs_by_state.pending,
            RunState::Queued => &mut runs_by_state.queued,
            RunState::Running => &mut runs_by_state.running,
            RunState::Succeeded => &mut runs_by_state.succeeded,
            RunState::Failed => &mut runs_by_state.failed,
            RunState::Expired => &mut runs_by_state.expired,
            RunState::Cancelled => &mut runs_by_state.cancelled,
            RunState::Superseded => &mut runs_by_state.superseded,
        };
        *slot += n;
    }
    Ok(Json(ChainProgress {
        chain: chain.to_string(),
        head,
        head_error,
        models,
        runs_by_state,
    }))
}
