//! The HTTP API: model-run CRUD, backfills, progress, with OpenAPI, auth and clear errors.
//!
//! [`app`] builds the axum [`Router`] over the engine's ports ([`EngineDeps`]); [`serve`] binds it
//! and runs until a shutdown token is cancelled. A request flows through the timeout middleware,
//! the body limit, then its handler: auth extractors ([`auth`]) run first, then path, query and
//! body extractors, each turning bad input into an [`ApiError`] that names the field; handlers
//! call the store or the engine's `submit_backfill` and map port errors into `ApiError` as well.
//!
//! | Method | Path | Scope |
//! |---|---|---|
//! | `POST` | `/v1/runs` | write |
//! | `GET` | `/v1/runs`, `/v1/runs/{id}` | read |
//! | `POST` | `/v1/runs/{id}/cancel`, `/v1/runs/{id}/retry` | write |
//! | `GET` | `/v1/models`, `/v1/chains/{chain}/progress` | read |
//! | `GET` | `/v1/abis`, `/v1/abis/{chain}/{address}` | read |
//! | `PUT`, `DELETE` | `/v1/abis/{chain}/{address}` | write |
//! | `GET` | `/healthz`, `/readyz`, `/openapi.json`, `/docs`, `/metrics` (with [`ApiState::with_metrics`]) | none |
//! | `GET` | `/v1/index/accounts/{account}`, `/v1/index/transactions/{hash}` (with an index) | read |

pub mod abis;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod error;
pub mod health;
pub mod index;
pub mod input;
pub mod openapi;
pub mod runs;
pub mod ui;
pub mod versions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use model_runner_core::engine::{CancellationToken, EngineDeps};
use model_runner_core::ports::ProgressBoard;

pub use auth::ApiAuth;
pub use error::ApiError;

/// Request limits.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest `limit` of `GET /v1/runs`.
    pub max_page_size: u32,
    /// Most blocks one submission may cover.
    pub max_blocks_per_submission: u64,
    /// Longest a request may take before it is answered `503 timeout`.
    pub request_timeout: Duration,
}

impl Default for ApiLimits {
    /// 64 KiB bodies, pages of up to 1000 runs, up to 1e9 blocks per submission, 30 s per
    /// request. (The most runs per submission is the engine's
    /// [`Limits::max_runs_per_backfill`](model_runner_core::engine::Limits::max_runs_per_backfill),
    /// which the CLI and the library enforce too.)
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_page_size: 1000,
            max_blocks_per_submission: 1_000_000_000,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// How the API behaves.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// Who may call it.
    pub auth: ApiAuth,
    /// Request limits.
    pub limits: ApiLimits,
}

/// What every handler gets: the ports and the configuration.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The engine's ports, models and routing.
    pub deps: EngineDeps,
    /// Auth and limits.
    pub config: Arc<ApiConfig>,
    openapi: Arc<String>,
    index: Option<batch_index::IndexReader>,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Where workers publish the live progress of running runs; `None`: views show the
    /// store's progress only.
    pub(crate) progress: Option<Arc<dyn ProgressBoard>>,
}

impl ApiState {
    /// State over `deps` with `config`.
    pub fn new(deps: EngineDeps, config: ApiConfig) -> Self {
        let openapi = Self::openapi_of(&deps, &config, false);
        Self {
            deps,
            config: Arc::new(config),
            openapi: Arc::new(openapi),
            index: None,
            metrics: None,
            progress: None,
        }
    }

    /// Shows the live progress of running runs from `board` (where workers publish it, see
    /// [`WorkerConfig::progress_board`](model_runner_core::engine::WorkerConfig::progress_board))
    /// in the `progress` of their views; the store's fields stay as they are.
    pub fn with_progress(mut self, board: Arc<dyn ProgressBoard>) -> Self {
        self.progress = Some(board);
        self
    }

    /// Also serves `GET /metrics` (no auth, like `/healthz`): the process's Prometheus metrics
    /// from `handle`, plus `model_runner_runs{state}` counted in the store on each scrape.
    pub fn with_metrics(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Also serves the account index of `reader` (built by `batch-index`) at
    /// `GET /v1/index/accounts/{account}` and `GET /v1/index/transactions/{hash}`, with the same
    /// read scope as the other reads, and lists them in `/openapi.json`.
    pub fn with_index(mut self, reader: batch_index::IndexReader) -> Self {
        self.index = Some(reader);
        self.openapi = Arc::new(Self::openapi_of(&self.deps, &self.config, true));
        self
    }

    fn openapi_of(deps: &EngineDeps, config: &ApiConfig, index: bool) -> String {
        let mut chains: Vec<&str> = deps.sources.keys().map(|c| c.as_str()).collect();
        chains.sort_unstable();
        openapi::served_json(config.auth.open_reads, index, &deps.models.names(), &chains)
    }
}

/// The API's router.
pub fn app(state: ApiState) -> Router {
    let limits = state.config.limits.clone();
    let mut routes = Router::new()
        .route("/v1/runs", post(runs::submit).get(runs::list_runs))
        .route("/v1/runs/{id}", get(runs::get_run))
        .route("/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/v1/runs/{id}/retry", post(runs::retry))
        .route("/v1/models", get(catalog::list_models))
        .route("/v1/models/{name}/versions", get(versions::list_versions))
        .route("/v1/models/{name}/rerun", post(versions::rerun_model))
        .route("/v1/abis", get(abis::list_abis))
        .route(
            "/v1/abis/{chain}/{address}",
            put(abis::put_abi)
                .get(abis::get_abi)
                .delete(abis::delete_abi),
        )
        .route("/v1/chains/{chain}/progress", get(catalog::chain_progress))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(|| async { Html(openapi::DOCS_PAGE) }))
        .route("/metrics", get(crate::metrics::api_scrape))
        .merge(ui::routes());
    if state.index.is_some() {
        // Before the layers, so the lookups share the timeout and the body limit.
        routes = routes.merge(index::routes());
    }
    routes
        // After every route is added: it applies to the routes present when it is called.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            timeout,
        ))
        // A handler (or a model's code it calls) that panics answers the envelope's 500 and
        // logs the panic, instead of dropping the connection without a response.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        // One span per request (method, path), outermost, so every log line of a request
        // carries it; the response's status and latency are logged at debug.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                    )
                })
                .on_response(
                    tower_http::trace::DefaultOnResponse::new()
                        .level(tracing::Level::DEBUG)
                        .latency_unit(tower_http::LatencyUnit::Millis),
                ),
        )
        .with_state(state)
}

fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    ApiError::internal(&format_args!("handler panicked: {message}")).into_response()
}

async fn openapi_json(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.as_str().to_owned(),
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(
        "not_found",
        format!(
            "no route for {} {}; see /openapi.json",
            req.method(),
            req.uri().path().chars().take(200).collect::<String>()
        ),
    )
}

/// A known path with a method it does not serve; axum adds the `Allow` header.
async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; see /openapi.json",
            req.method(),
            req.uri().path().chars().take(200).collect::<String>()
        ),
    )
}

async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {}s", limit.as_secs_f64()),
        )
        .into_response(),
    }
}

/// Serves [`app`] on `addr` until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the API to {addr}"))?;
    serve_on(listener, state, shutdown).await
}

/// Serves [`app`] on a bound listener (tests bind `127.0.0.1:0`).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (write, read) = state.config.auth.token_counts();
    if write == 0 {
        tracing::warn!(
            "no API write tokens configured (set {}): every write will be refused",
            auth::WRITE_TOKENS_ENV
        );
    }
    tracing::info!(
        addr = %listener.local_addr()?,
        write_tokens = write,
        read_tokens = read,
        open_reads = state.config.auth.open_reads,
        "API listening"
    );
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the API")
}
