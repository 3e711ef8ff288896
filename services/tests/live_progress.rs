//! Live progress in the API: a worker publishes a running run's blocks done to a progress
//! board, and `GET /v1/runs/{id}` and `GET /v1/runs` show it as `progress` while the run
//! runs; the store's fields stay as they are, a finished run shows none, and an API without a
//! board shows none. The OpenAPI document describes the field.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use model_runner::api::{ApiAuth, ApiConfig, ApiState, app};
use model_runner_core::engine::{CancellationToken, Parts, Runner, WorkerConfig};
use model_runner_core::memory::{MemoryBlockSource, MemoryProgressBoard};
use model_runner_core::model::{Model, ModelContext, ModelError, ModelRegistry, ModelSpec, Record};
use model_runner_core::ports::ProgressBoard;
use model_runner_core::{Block, BlockRange, Chain, ModelKind};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Holds every batch while `hold` is set.
#[derive(Debug, Default)]
struct Held {
    hold: AtomicBool,
}

#[async_trait]
impl Model for Held {
    fn spec(&self) -> ModelSpec {
        ModelSpec::new("held", "1", ModelKind::Nonreads)
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        while self.hold.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(blocks
            .iter()
            .map(|b| ctx.record(b, 0, json!({"n": b.number})))
            .collect())
    }
}

async fn get(app: &Router, uri: &str) -> Value {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {uri}");
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Polls `GET uri` until `done` holds, for at most ten seconds.
async fn get_until(app: &Router, uri: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = get(app, uri).await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {value:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn open_reads() -> ApiConfig {
    ApiConfig {
        auth: ApiAuth::new("", "", true),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_running_runs_view_shows_its_live_progress() {
    let board = Arc::new(MemoryProgressBoard::new());
    shows_live_progress(board.clone(), board).await;
}

/// The same with the worker and the API on two connections to Redis at `REDIS_URL`, as two
/// processes are (feature `redis`; unset: not configured, set but unreachable: fails).
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_running_runs_view_shows_progress_published_through_redis() {
    use model_runner_adapters::redis_progress::RedisProgressBoard;
    let Ok(redis) = std::env::var("REDIS_URL") else {
        eprintln!("REDIS_URL is not set: the Redis live progress API test is not configured");
        return;
    };
    let sep = if redis.contains('?') { '&' } else { '?' };
    let url = format!(
        "{redis}{sep}prefix=model-runner-test:api-progress:{}",
        uuid::Uuid::new_v4()
    );
    let connect = || async {
        RedisProgressBoard::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("REDIS_URL is set but the server does not answer: {e}"))
    };
    let (worker, api) = (connect().await, connect().await);
    shows_live_progress(Arc::new(worker), Arc::new(api)).await;
}

/// A worker publishing to `worker_board`, an API reading `api_board`: the running run's view
/// and the list show its live progress; queued and finished runs, and an API without a board,
/// show none.
async fn shows_live_progress(
    worker_board: Arc<dyn ProgressBoard>,
    api_board: Arc<dyn ProgressBoard>,
) {
    let chain = Chain::new("ethereum").unwrap();
    let model = Arc::new(Held::default());
    model.hold.store(true, Ordering::SeqCst);
    let runner = Runner::builder()
        .source(MemoryBlockSource::with_empty_blocks(chain.clone(), 0..=19))
        .models(ModelRegistry::new().with(model.clone()).unwrap())
        .worker_config(WorkerConfig {
            batch_blocks: 4,
            // Long heartbeats: the store's blocks_done stays behind the board's meanwhile.
            heartbeat: Duration::from_secs(3600),
            lease: Duration::from_secs(7200),
            concurrency: 1,
            ..Default::default()
        })
        .progress_board(worker_board)
        .build()
        .unwrap();
    let created = runner
        .backfill("held", &chain, BlockRange::new(0, 19).unwrap(), 10)
        .await
        .unwrap();
    let ids: Vec<String> = created.iter().map(|id| id.to_string()).collect();
    let with_board =
        app(ApiState::new(runner.deps().clone(), open_reads()).with_progress(api_board));
    let without_board = app(ApiState::new(runner.deps().clone(), open_reads()));
    let stop = CancellationToken::new();
    let loops = tokio::spawn({
        let (runner, stop) = (runner.clone(), stop.clone());
        async move { runner.run(Parts::ALL, stop).await }
    });

    // One run at a time (concurrency 1): it holds its first batch of 4 blocks, the other waits.
    let page = get_until(
        &with_board,
        "/v1/runs?limit=10",
        "a run's live progress in the list",
        |page| {
            page["runs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["progress"]["blocks_done"] == 4)
        },
    )
    .await;
    let runs = page["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{page:#}");
    let (running, waiting) = if runs[0]["progress"].is_null() {
        (&runs[1], &runs[0])
    } else {
        (&runs[0], &runs[1])
    };
    assert_ne!(waiting["state"], "running", "{page:#}");
    assert_eq!(
        waiting["progress"],
        Value::Null,
        "a run not running has none"
    );
    let first = running["id"].as_str().unwrap().to_owned();

    let view = get(&with_board, &format!("/v1/runs/{first}")).await;
    assert_eq!(view["state"], "running");
    assert_eq!(view["progress"]["blocks_done"], 4, "{view:#}");
    assert_eq!(view["progress"]["blocks_total"], 10, "{view:#}");
    let updated_at = view["progress"]["updated_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(updated_at).is_ok(),
        "{updated_at}"
    );
    assert_eq!(
        view["blocks_done"], 0,
        "the store's field is the heartbeats' (none yet): {view:#}"
    );

    let plain = get(&without_board, &format!("/v1/runs/{first}")).await;
    assert_eq!(plain["state"], "running");
    assert_eq!(
        plain["progress"],
        Value::Null,
        "an API without a board shows none"
    );

    // Finished runs show their store's progress, and no live progress.
    model.hold.store(false, Ordering::SeqCst);
    for id in &ids {
        let done = get_until(
            &with_board,
            &format!("/v1/runs/{id}"),
            "the run to succeed",
            |v| v["state"] == "succeeded",
        )
        .await;
        assert_eq!(done["blocks_done"], 10, "{done:#}");
        assert_eq!(done["progress"], Value::Null, "{done:#}");
    }
    stop.cancel();
    loops.await.unwrap().unwrap();
}

/// The document describes `progress` on a run: nullable, with the live fields.
#[tokio::test]
async fn the_openapi_document_describes_live_progress() {
    let doc = serde_json::to_value(model_runner::api::openapi::document(false, false)).unwrap();
    let schemas = &doc["components"]["schemas"];
    let live = &schemas["LiveProgressView"];
    for field in ["blocks_done", "blocks_total", "updated_at"] {
        assert!(live["properties"][field].is_object(), "{field}: {live:#}");
    }
    // A run is the core `ModelRun`, documented as it is, with `progress` beside it.
    let run_view = &schemas["RunView"];
    let parts = run_view["allOf"]
        .as_array()
        .unwrap_or_else(|| panic!("{run_view:#}"));
    assert!(
        parts
            .iter()
            .any(|p| p["$ref"] == "#/components/schemas/ModelRun"),
        "{run_view:#}"
    );
    let progress = parts
        .iter()
        .find_map(|p| p["properties"].get("progress"))
        .unwrap_or_else(|| panic!("{run_view:#}"));
    let progress = serde_json::to_string(progress).unwrap();
    assert!(progress.contains("LiveProgressView"), "{progress}");
    assert!(progress.contains("null"), "nullable: {progress}");
}
