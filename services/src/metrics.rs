//! Prometheus metrics of a `model-runner` process: the engine's metrics
//! ([`model_runner_core::engine::instruments`] lists them) rendered in the Prometheus text
//! format, at `GET /metrics` on the API and on `--metrics-addr` for the other commands.

use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use model_runner_core::engine::CancellationToken;
use model_runner_core::engine::instruments::DURATION_BUCKETS;

/// Installs the process-wide Prometheus recorder on first call (durations as histograms with
/// [`DURATION_BUCKETS`]) and returns its handle; later calls return the same handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS)
        .context("configuring the metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The Prometheus text format of every metric recorded so far.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

/// `GET /metrics` serving `handle`.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(handle)
}

async fn scrape(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&handle),
    )
}

/// `GET /metrics` of the API ([`ApiState::with_metrics`](crate::api::ApiState::with_metrics)):
/// 404 without a metrics handle; with one, `model_runner_runs{state}` is counted in the store
/// first, then every metric is rendered.
pub(crate) async fn api_scrape(
    State(state): State<crate::api::ApiState>,
) -> Result<axum::response::Response, crate::api::ApiError> {
    let Some(handle) = &state.metrics else {
        return Err(crate::api::ApiError::not_found(
            "not_found",
            "metrics are not enabled on this server",
        ));
    };
    let counts = state
        .deps
        .store
        .count_by_state(&model_runner_core::ports::RunFilter::default())
        .await?;
    for s in model_runner_core::RunState::ALL {
        let n = counts.get(s).copied().unwrap_or(0);
        model_runner_core::engine::instruments::runs_in_state(s.as_str(), n);
    }
    Ok(scrape(State(handle.clone())).await.into_response())
}

/// Binds `addr` for [`serve`], so a taken or invalid address fails the command at once.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr} (--metrics-addr)"))
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(handle))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving metrics")
}
