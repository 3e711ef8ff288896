//! Liveness and readiness probes, open to everyone.
//!
//! Readiness asks each port its readiness probe, concurrently, each bounded by
//! [`CHECK_TIMEOUT`]: [`RunStore::ping`] (by default a primary-key read of the nil id, where
//! `NotFound` means reachable), [`RunQueue::ping`] (RabbitMQ: a channel opened and closed on the
//! live connection) and [`ResultSink::ping`] (Kafka: the cluster metadata; files: a probe file in
//! the directory; Parquet: a listing of the prefix). None has a side effect a user can see. The
//! answer names each component `ok` or `unavailable`; why one failed is logged (with any URL
//! password replaced by `***`), not returned: the endpoint is unauthenticated.
//!
//! [`RunStore::ping`]: model_runner_core::ports::RunStore::ping
//! [`RunQueue::ping`]: model_runner_core::ports::RunQueue::ping
//! [`ResultSink::ping`]: model_runner_core::ports::ResultSink::ping

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use model_runner_core::redact::redact_urls_in;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;

/// How long each readiness check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `ok` or what failed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `unavailable`.
    pub status: String,
}

/// Result of the readiness checks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` when every check passed, else `unavailable`.
    pub status: String,
    /// `ok` or `unavailable`: the run store answered a read.
    pub store: String,
    /// `ok` or `unavailable`: the broker answered.
    pub queue: String,
    /// `ok` or `unavailable`: the result sink's destination answered.
    pub sink: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

fn verdict(ok: bool) -> String {
    if ok { "ok" } else { "unavailable" }.to_owned()
}

/// Runs one port's probe within [`CHECK_TIMEOUT`]; logs why it failed.
async fn check<E: Display>(component: &str, probe: impl Future<Output = Result<(), E>>) -> bool {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            let error = redact_urls_in(&e.to_string());
            tracing::warn!(component, %error, "readiness: check failed");
            false
        }
        Err(_) => {
            tracing::warn!(component, timeout = ?CHECK_TIMEOUT, "readiness: check timed out");
            false
        }
    }
}

/// Store, queue and sink are reachable.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A backend is unreachable", body = Readiness),
    ))]
pub async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Readiness>) {
    let deps = &state.deps;
    let (store, queue, sink) = tokio::join!(
        check("store", deps.store.ping()),
        check("queue", deps.queue.ping()),
        check("sink", deps.sink.ping()),
    );
    let ready = store && queue && sink;
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(Readiness {
            status: if ready { "ready" } else { "unavailable" }.into(),
            store: verdict(store),
            queue: verdict(queue),
            sink: verdict(sink),
        }),
    )
}
