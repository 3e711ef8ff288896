//! Liveness and readiness probes, open to everyone.
//!
//! Readiness checks what the ports allow without side effects: the store answers a primary-key
//! read (`get` of the nil id; `NotFound` means reachable), the sink answers `flush()`. The queue
//! port has no side-effect-free call (publishing would put a message on a real queue), so the
//! queue counts as ready once the process has built it: its adapter connected and declared the
//! topology at start-up. A `ping` on each port would make this exact.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use model_runner_core::RunId;
use model_runner_core::ports::StoreError;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::ApiState;

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// `ok` or `unavailable`.
    pub store: String,
    /// `ok` once the queue adapter is built (see the module docs).
    pub queue: String,
    /// `ok` or `unavailable`.
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

/// Store, queue and sink are reachable.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A backend is unreachable", body = Readiness),
    ))]
pub async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Readiness>) {
    let deps = &state.deps;
    let store = async {
        match tokio::time::timeout(CHECK_TIMEOUT, deps.store.get(RunId(Uuid::nil()))).await {
            Ok(Ok(_)) | Ok(Err(StoreError::NotFound { .. })) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: store check failed");
                false
            }
            Err(_) => false,
        }
    };
    let sink = async {
        match tokio::time::timeout(CHECK_TIMEOUT, deps.sink.flush()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: sink check failed");
                false
            }
            Err(_) => false,
        }
    };
    let (store, sink) = tokio::join!(store, sink);
    let ready = store && sink;
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(Readiness {
            status: if ready { "ready" } else { "unavailable" }.into(),
            store: verdict(store),
            queue: verdict(true),
            sink: verdict(sink),
        }),
    )
}
