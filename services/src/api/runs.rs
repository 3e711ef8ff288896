//! `/v1/runs`: submit backfills and adhoc run sets, read runs, cancel and retry them.
//!
//! Submission validates the request (every check names its field), then hands it to the engine's
//! [`submit_backfill`], which creates one run per chunk atomically. Cancel and retry are
//! compare-and-set transitions through [`RunStore::transition`](model_runner_core::ports::RunStore),
//! re-read and retried a few times when a worker moves the run concurrently.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use model_runner_core::engine::{BackfillRequest, submit_backfill};
use model_runner_core::ports::{
    CreatedRuns, ProgressBoardExt, RunFilter, RunProgress, RunStoreExt, StoreError,
};
use model_runner_core::{BlockRange, ModelRun, RunEvent, RunId, RunMode, RunState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, IntoResponses, ToSchema};
use uuid::Uuid;

use super::ApiState;
use super::auth::{ReadAccess, WriteAccess};
use super::body::{ApiJson, OptionalJson};
use super::error::{ApiError, BodyRefusals, ErrorResponse, ReadRefusals, WriteRefusals};
use super::input::{self, Input};
use crate::submission;

/// The header that makes a resubmission return the first submission's runs.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The largest block number and chunk size a request may use: 2^53 - 1, the largest integer
/// every JSON client represents exactly.
pub const MAX_BLOCK: u64 = (1 << 53) - 1;

/// An inclusive block range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RangeView {
    /// First block (inclusive).
    #[schema(maximum = 9007199254740991_u64)]
    pub start: u64,
    /// Last block (inclusive), not before `start`.
    #[schema(maximum = 9007199254740991_u64)]
    pub end: u64,
}

/// A running run's live progress, as its worker last published it to the progress board
/// (`--progress`): between two heartbeats it is ahead of the run's `blocks_done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LiveProgressView {
    /// Blocks loaded and handed to the model so far by the current attempt.
    pub blocks_done: u64,
    /// Blocks of the run.
    pub blocks_total: u64,
    /// When the worker published it (the worker's clock).
    pub updated_at: DateTime<Utc>,
}

impl From<RunProgress> for LiveProgressView {
    fn from(p: RunProgress) -> Self {
        Self {
            blocks_done: p.blocks_done,
            blocks_total: p.blocks_total,
            updated_at: p.updated_at,
        }
    }
}

/// One model run, with its live progress.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    /// The run as stored.
    #[serde(flatten)]
    pub run: ModelRun,
    /// Live progress of a running run, from the progress board its worker publishes to;
    /// `null` when the run is not running, the API has no board, or the run's current attempt
    /// has published nothing yet (or its worker stopped publishing a lease ago).
    pub progress: Option<LiveProgressView>,
}

impl From<ModelRun> for RunView {
    /// The run without live progress.
    fn from(run: ModelRun) -> Self {
        Self {
            run,
            progress: None,
        }
    }
}

/// The longest the API waits for the progress board before answering without live progress.
const PROGRESS_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The views of `runs`, with the live progress of the running ones when the API has a
/// progress board. The board is a display aid: when it fails or is slow, the views are
/// answered without it (and the failure logged), never an error.
pub(crate) async fn views(state: &ApiState, runs: Vec<ModelRun>) -> Vec<RunView> {
    let live = match &state.progress {
        Some(board) if runs.iter().any(|r| r.state == RunState::Running) => {
            match tokio::time::timeout(PROGRESS_READ_WAIT, board.live(&runs)).await {
                Ok(Ok(live)) => live,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading live progress failed; answering without it");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(
                        "the progress board took longer than {PROGRESS_READ_WAIT:?}; answering without live progress"
                    );
                    Vec::new()
                }
            }
        }
        _ => Vec::new(),
    };
    let mut live = live.into_iter();
    runs.into_iter()
        .map(|run| {
            let mut view = RunView::from(run);
            view.progress = live.next().flatten().map(LiveProgressView::from);
            view
        })
        .collect()
}

/// `POST /v1/runs`: a backfill or adhoc run set.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRuns {
    /// Registered model name (see `GET /v1/models`).
    #[schema(example = "erc20_transfers", min_length = 1, max_length = 128)]
    pub model: String,
    /// Configured chain.
    #[schema(
        example = "ethereum",
        pattern = "^[a-z]([a-z0-9]|-[a-z0-9])*$",
        max_length = 32
    )]
    pub chain: String,
    /// Blocks to process, inclusive.
    pub range: RangeView,
    /// Blocks per run (default 100).
    #[schema(minimum = 1, maximum = 9007199254740991_u64, example = 100)]
    pub chunk_size: Option<u64>,
    /// `backfill` (default) or `adhoc`; `adhoc` when only `adhoc_queue` is given.
    pub mode: Option<RunMode>,
    /// For adhoc runs: the `backfill_N` pool (1-based); absent spreads over every pool.
    #[schema(minimum = 1)]
    pub adhoc_queue: Option<u32>,
    /// Attempts per run (default 3, at most 100).
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
}

/// The runs a submission created (or, for a repeated `Idempotency-Key`, had created).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubmittedRuns {
    /// `false` when an earlier submission with the same `Idempotency-Key` was returned.
    pub created: bool,
    /// Number of runs.
    pub count: usize,
    /// Their ids, in block order.
    pub run_ids: Vec<Uuid>,
}

impl From<CreatedRuns> for SubmittedRuns {
    fn from(c: CreatedRuns) -> Self {
        Self {
            created: c.created,
            count: c.runs.len(),
            run_ids: c.runs.iter().map(|r| r.id.0).collect(),
        }
    }
}

/// Longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )
        .field("Idempotency-Key")
    };
    let key = value.to_str().map_err(|_| bad())?.trim();
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(bad());
    }
    // Namespaced so an API key never collides with the keys the CLI derives.
    Ok(Some(format!("api:{key}")))
}

/// Submit a backfill or adhoc run set.
#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    request_body = SubmitRuns,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
        pattern = "^[!-~]([ -~]*[!-~])?$",
        description = "Resubmitting with the same key returns the first submission's runs")),
    responses(
        (status = 201, description = "Runs created", body = SubmittedRuns),
        (status = 200, description = "Same Idempotency-Key as an earlier submission: its runs", body = SubmittedRuns),
        (status = 400, description = "Invalid request", body = ErrorResponse),
        (status = 409, description = "Idempotency-Key used for different runs", body = ErrorResponse),
        WriteRefusals, BodyRefusals,
    ),
)]
pub async fn submit(
    State(state): State<ApiState>,
    _: WriteAccess,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SubmitRuns>,
) -> Result<(StatusCode, Json<SubmittedRuns>), ApiError> {
    let limits = &state.config.limits;
    let idempotency_key = idempotency_key(&headers)?;
    for (value, field) in [
        (req.range.start, "range.start"),
        (req.range.end, "range.end"),
        (req.chunk_size.unwrap_or(1), "chunk_size"),
    ] {
        if value > MAX_BLOCK {
            return Err(ApiError::bad_request(
                "invalid_range",
                format!("{field} {value} is larger than {MAX_BLOCK} (2^53 - 1)"),
            )
            .field(field));
        }
    }
    let chain = input::chain(&req.chain)?;
    let range = BlockRange::new(req.range.start, req.range.end)
        .map_err(|e| ApiError::bad_request("invalid_range", e.to_string()).field("range"))?;
    let chunk_size = submission::chunk_size(req.chunk_size)?;
    if range.len() > limits.max_blocks_per_submission {
        return Err(ApiError::bad_request(
            "range_too_large",
            format!(
                "range {range} has {} blocks, more than the {} allowed per submission; split it",
                range.len(),
                limits.max_blocks_per_submission
            ),
        )
        .field("range"));
    }
    let runs = range.len().div_ceil(chunk_size);
    let max_runs = state.deps.limits.max_runs_per_backfill;
    if runs > max_runs {
        return Err(ApiError::bad_request(
            "too_many_runs",
            format!(
                "range {range} in chunks of {chunk_size} blocks makes {runs} runs, more than the {max_runs} allowed per backfill; use larger chunks or split the range",
            ),
        )
        .field("chunk_size"));
    }
    let mode = match (req.mode, req.adhoc_queue) {
        (None, None) | (Some(RunMode::Backfill), None) => RunMode::Backfill,
        (None | Some(RunMode::Adhoc), _) => RunMode::Adhoc,
        (Some(RunMode::Backfill), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_adhoc_queue",
                "adhoc_queue is only valid with mode `adhoc`",
            )
            .field("adhoc_queue"));
        }
        (Some(RunMode::Realtime), _) => {
            return Err(ApiError::bad_request(
                "invalid_mode",
                "mode must be `backfill` or `adhoc`: realtime runs are created by the scheduler",
            )
            .field("mode"));
        }
    };
    let max_attempts = submission::max_attempts(req.max_attempts)?;
    let deps = &state.deps;
    deps.models.get_for(&req.model, &chain)?;
    deps.source(&chain)?;
    let created = submit_backfill(
        deps,
        BackfillRequest {
            model: req.model,
            chain,
            range,
            chunk_size,
            mode,
            adhoc_queue: req.adhoc_queue,
            max_attempts,
            idempotency_key,
        },
    )
    .await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(created.into())))
}

/// The path of one run, `/v1/runs/{id}` and below. The id is read as text and parsed by
/// `RunPath::id()`, so a malformed one is `400 invalid_id` naming `id`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RunPath {
    /// Run id (UUID).
    #[param(value_type = Uuid)]
    pub id: String,
}

impl RunPath {
    /// The run id, checked.
    fn id(&self) -> Result<RunId, ApiError> {
        self.id
            .parse::<RunId>()
            .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).field("id"))
    }
}

/// The refusals of a [`RunPath`], for every operation on one run.
#[derive(Debug, IntoResponses)]
pub enum RunRefusals {
    /// Not a UUID
    #[response(status = 400)]
    InvalidId(ErrorResponse),
    /// No such run
    #[response(status = 404)]
    NotFound(ErrorResponse),
}

/// One run.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(RunPath),
    responses(
        (status = 200, description = "The run", body = RunView),
        RunRefusals, ReadRefusals,
    ),
)]
pub async fn get_run(
    State(state): State<ApiState>,
    _: ReadAccess,
    Input(Path(path)): Input<Path<RunPath>>,
) -> Result<Json<RunView>, ApiError> {
    let id = path.id()?;
    let run = state.deps.store.get(id).await?;
    let view = views(&state, vec![run]).await.pop();
    Ok(Json(view.expect("one view per run")))
}

/// Query of `GET /v1/runs`. Every field is optional; values are validated one by one so an
/// error names its parameter.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this model.
    #[param(min_length = 1, max_length = 128)]
    pub model: Option<String>,
    /// Only this chain.
    #[param(pattern = "^[a-z]([a-z0-9]|-[a-z0-9])*$", max_length = 32)]
    pub chain: Option<String>,
    /// Only this state.
    #[param(value_type = Option<RunState>)]
    pub state: Option<String>,
    /// Only this mode.
    #[param(value_type = Option<RunMode>)]
    pub mode: Option<String>,
    /// Only runs created at or after this RFC 3339 time.
    #[param(value_type = Option<DateTime<Utc>>)]
    pub since: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The `next` of the previous page.
    #[param(value_type = Option<Uuid>)]
    pub cursor: Option<String>,
}

/// One page of runs, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunPageView {
    /// The runs.
    pub runs: Vec<RunView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next: Option<String>,
}

fn parse_query(q: ListQuery, max_page: u32) -> Result<RunFilter, ApiError> {
    fn parsed<T: std::str::FromStr>(
        value: Option<String>,
        field: &'static str,
        code: &'static str,
    ) -> Result<Option<T>, ApiError>
    where
        T::Err: std::fmt::Display,
    {
        value
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| ApiError::bad_request(code, e.to_string()).field(field))
            })
            .transpose()
    }
    let limit = input::page_size(q.limit.as_deref(), 100, max_page, "limit", "invalid_limit")?;
    let since = q
        .since
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_since",
                        format!(
                            "invalid since {}: expected an RFC 3339 time such as 2026-01-31T12:00:00Z",
                            input::quoted(&s)
                        ),
                    )
                    .field("since")
                })
        })
        .transpose()?;
    let after = q
        .cursor
        .map(|c| {
            c.parse::<RunId>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_cursor",
                    "invalid cursor: pass the `next` value of the previous page unchanged",
                )
                .field("cursor")
            })
        })
        .transpose()?;
    if let Some(m) = &q.model
        && (m.is_empty() || m.len() > 128)
    {
        return Err(
            ApiError::bad_request("invalid_model", "model must be 1 to 128 characters")
                .field("model"),
        );
    }
    Ok(RunFilter {
        model: q.model,
        chain: parsed(q.chain, "chain", "invalid_chain")?,
        state: parsed(q.state, "state", "invalid_state")?,
        mode: parsed(q.mode, "mode", "invalid_mode")?,
        since,
        after,
        limit,
    })
}

/// Runs matching the filters, oldest first, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of runs", body = RunPageView),
        (status = 400, description = "Invalid parameter", body = ErrorResponse),
        ReadRefusals,
    ),
)]
pub async fn list_runs(
    State(state): State<ApiState>,
    _: ReadAccess,
    Input(Query(q)): Input<Query<ListQuery>>,
) -> Result<Json<RunPageView>, ApiError> {
    let filter = parse_query(q, state.config.limits.max_page_size)?;
    let page = state.deps.store.list(&filter).await?;
    Ok(Json(RunPageView {
        runs: views(&state, page.runs).await,
        next: page.next.map(|n| n.to_string()),
    }))
}

/// Optional body of `POST /v1/runs/{id}/cancel`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    /// Why, recorded on the run (at most 500 characters).
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// Attempts at a compare-and-set before giving up on a run that keeps changing.
const CAS_ATTEMPTS: usize = 5;

/// Applies the event `make` returns for the run's current state, re-reading the run when a
/// concurrent change beats us.
async fn transition_current(
    state: &ApiState,
    id: RunId,
    make: impl Fn(&ModelRun) -> Result<RunEvent, ApiError>,
) -> Result<ModelRun, ApiError> {
    for _ in 0..CAS_ATTEMPTS {
        let run = state.deps.store.get(id).await?;
        let event = make(&run)?;
        match state
            .deps
            .store
            .transition(id, run.state, run.attempt, event)
            .await
        {
            Ok(run) => return Ok(run),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(format!(
        "run {id} kept changing state while being updated; try again"
    )))
}

/// Cancel a run that has not succeeded: pending, queued, running, or failed/expired (a retry
/// may still be due; cancelling is final).
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    params(RunPath),
    request_body(content = Option<CancelRun>, description = "Optional reason"),
    responses(
        (status = 200, description = "The cancelled run", body = RunView),
        (status = 400, description = "Not a UUID or invalid body", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 409, description = "The run already succeeded or was cancelled", body = ErrorResponse),
        WriteRefusals, BodyRefusals,
    ),
)]
pub async fn cancel(
    State(state): State<ApiState>,
    _: WriteAccess,
    Input(Path(path)): Input<Path<RunPath>>,
    OptionalJson(body): OptionalJson<CancelRun>,
) -> Result<Json<RunView>, ApiError> {
    let id = path.id()?;
    let reason = body.unwrap_or_default().reason;
    if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::bad_request(
            "invalid_reason",
            "reason must be at most 500 characters",
        )
        .field("reason"));
    }
    let run = transition_current(&state, id, |run| match run.state {
        RunState::Pending
        | RunState::Queued
        | RunState::Running
        | RunState::Failed
        | RunState::Expired => Ok(RunEvent::Cancel {
            reason: reason.clone(),
        }),
        s => Err(ApiError::conflict(format!(
            "run {id} is {s}: only pending, queued, running, failed or expired runs can be \
             cancelled"
        ))),
    })
    .await?;
    Ok(Json(run.into()))
}

/// Retry a failed or expired run now (granting one more attempt if none remain).
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/retry",
    tag = "runs",
    params(RunPath),
    responses(
        (status = 200, description = "The run, due for its next attempt", body = RunView),
        (status = 409, description = "The run is not failed or expired", body = ErrorResponse),
        RunRefusals, WriteRefusals,
    ),
)]
pub async fn retry(
    State(state): State<ApiState>,
    _: WriteAccess,
    Input(Path(path)): Input<Path<RunPath>>,
) -> Result<Json<RunView>, ApiError> {
    let id = path.id()?;
    let run = transition_current(&state, id, |run| match run.state {
        RunState::Failed | RunState::Expired => Ok(RunEvent::ScheduleRetry { at: Utc::now() }),
        s => Err(ApiError::conflict(format!(
            "run {id} is {s}: only failed or expired runs can be retried"
        ))),
    })
    .await?;
    Ok(Json(run.into()))
}
