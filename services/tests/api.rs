//! Tests of the HTTP API through `app(...)` with `oneshot`: every endpoint and every error path.
//!
//! Each case is one `async fn(Store)` run on SQLite and, with the `postgres` feature, on the real
//! PostgreSQL at `DATABASE_URL` (each test in its own schema). `DATABASE_URL` unset: the
//! PostgreSQL variant says it is not configured and checks nothing; set but unreachable: it fails.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Utc;
use model_runner::api::{ApiAuth, ApiConfig, ApiLimits, ApiState, app};
use model_runner_adapters::devnet::{DevnetConfig, DevnetSource};
use model_runner_adapters::sqlite::SqliteRunStore;
use model_runner_core::engine::EngineDeps;
use model_runner_core::memory::{MemoryRunQueue, MemorySink};
use model_runner_core::ports::{
    CursorAdvance, CursorKey, LockLease, OutboxQuery, RunStore, RunStoreExt,
};
use model_runner_core::{
    BlockRange, Chain, ModelKind, NewRun, Routing, RunEvent, RunId, RunMode, RunState,
};
use serde_json::{Value, json};
use tower::ServiceExt;

const WRITE: &str = "write-token-1";
const READ: &str = "read-token-1";

fn eth() -> Chain {
    Chain::new("ethereum").unwrap()
}

/// Which store a case runs on.
#[derive(Debug, Clone, Copy)]
enum Store {
    Sqlite,
    /// PostgreSQL; every store of the case gets a schema starting with this prefix.
    #[cfg(feature = "postgres")]
    Postgres(&'static str),
}

#[cfg(feature = "postgres")]
fn database_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!(
                "DATABASE_URL is not set: this PostgreSQL API test is not configured and checks nothing"
            );
            None
        }
    }
}

/// Runs a case on PostgreSQL in schemas of its own, dropped afterwards.
#[cfg(feature = "postgres")]
async fn on_postgres<F: std::future::Future<Output = ()>>(case: impl FnOnce(Store) -> F) {
    let Some(url) = database_url() else { return };
    let prefix: &'static str =
        Box::leak(format!("api_test_{}", uuid::Uuid::now_v7().simple()).into_boxed_str());
    case(Store::Postgres(prefix)).await;
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("connect to drop schemas");
    let schemas: Vec<(String,)> = sqlx::query_as(
        "SELECT schema_name::text FROM information_schema.schemata WHERE schema_name LIKE $1",
    )
    .bind(format!("{}\\_%", prefix.replace('_', "\\_")))
    .fetch_all(&pool)
    .await
    .expect("list schemas");
    for (schema,) in schemas {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&pool)
        .await
        .expect("drop schema");
    }
}

/// A store for one test; `None` when the backend is not configured.
async fn open_store(kind: Store, dir: &std::path::Path) -> Option<Arc<dyn RunStore>> {
    match kind {
        Store::Sqlite => Some(Arc::new(
            SqliteRunStore::connect(&format!("sqlite://{}/runs.db", dir.display()))
                .await
                .unwrap(),
        )),
        #[cfg(feature = "postgres")]
        Store::Postgres(prefix) => {
            use model_runner_adapters::postgres::{PostgresOptions, PostgresRunStore};
            let url = database_url()?;
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let schema = format!("{prefix}_{n}");
            let store = PostgresRunStore::connect_with(
                &url,
                PostgresOptions {
                    schema: Some(schema),
                    max_connections: 4,
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("DATABASE_URL is set but the store cannot connect: {e}"));
            Some(Arc::new(store))
        }
    }
}

struct Api {
    app: Router,
    store: Arc<dyn RunStore>,
    _dir: tempfile::TempDir,
}

async fn api_with(kind: Store, config: ApiConfig) -> Option<Api> {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(kind, dir.path()).await?;
    let deps = EngineDeps {
        store: store.clone(),
        queue: Arc::new(MemoryRunQueue::new()),
        sink: Arc::new(MemorySink::new()),
        sources: HashMap::from([(
            eth(),
            Arc::new(DevnetSource::new(eth(), DevnetConfig::default()))
                as Arc<dyn model_runner_core::ports::BlockSource>,
        )]),
        models: Arc::new(model_runner_core::models::builtin()),
        routing: Routing::default(),
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    };
    Some(Api {
        app: app(ApiState::new(deps, config)),
        store,
        _dir: dir,
    })
}

fn config() -> ApiConfig {
    ApiConfig {
        auth: ApiAuth::new(WRITE, READ, false),
        limits: ApiLimits::default(),
    }
}

impl Api {
    /// Sends a request; `body` is sent as JSON when given.
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).unwrap()).await
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let response = self.app.clone().oneshot(req).await.unwrap();
        self.send_response(response).await
    }

    /// A response's status and body (JSON, or the text as a JSON string).
    async fn send_response(&self, response: axum::response::Response) -> (StatusCode, Value) {
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    async fn submit(&self, body: Value) -> (StatusCode, Value) {
        self.call("POST", "/v1/runs", Some(WRITE), Some(body)).await
    }

    /// Submits and returns the run ids.
    async fn submit_ok(&self, body: Value) -> Vec<String> {
        let (status, v) = self.submit(body).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["run_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_owned())
            .collect()
    }
}

/// Asserts an error response: status, code, field, and that the message contains `words`.
#[track_caller]
fn assert_error(
    got: &(StatusCode, Value),
    status: StatusCode,
    code: &str,
    field: Option<&str>,
    words: &str,
) {
    let (s, v) = got;
    assert_eq!(*s, status, "{v}");
    let e = &v["error"];
    assert_eq!(e["code"], code, "{v}");
    assert_eq!(e["field"].as_str(), field, "{v}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains(words),
        "message {message:?} does not contain {words:?}"
    );
}

fn backfill(start: u64, end: u64, chunk: u64) -> Value {
    json!({
        "model": "erc20_transfers",
        "chain": "ethereum",
        "range": {"start": start, "end": end},
        "chunk_size": chunk,
    })
}

/// Runs `$case` on every configured store.
macro_rules! on_every_store {
    ($($case:ident),+ $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn sqlite() {
                super::$case(super::Store::Sqlite).await;
            }
            #[cfg(feature = "postgres")]
            #[tokio::test]
            async fn postgres() {
                super::on_postgres(super::$case).await;
            }
        }
    )+};
}

on_every_store!(
    submit_get_and_idempotency,
    submit_errors,
    body_errors,
    list_pagination_and_filters,
    list_errors,
    get_errors,
    cancel_paths,
    retry_paths,
    auth_paths,
    models_and_progress,
    versions_and_rerun,
    probes_openapi_and_fallback,
    million_block_backfill,
);

async fn submit_get_and_idempotency(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let (status, v) = api.submit(backfill(0, 999, 100)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["created"], true);
    assert_eq!(v["count"], 10);
    let ids = v["run_ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 10);

    let (status, run) = api
        .call(
            "GET",
            &format!("/v1/runs/{}", ids[3].as_str().unwrap()),
            Some(READ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["id"], ids[3]);
    assert_eq!(run["state"], "pending");
    assert_eq!(run["mode"], "backfill");
    assert_eq!(run["kind"], "nonreads");
    assert_eq!(run["range"], json!({"start": 300, "end": 399}));
    assert_eq!(run["attempt"], 1);
    assert_eq!(run["max_attempts"], 3);
    // The document describes the run as served: the core `ModelRun`, with `progress` beside it.
    let doc = serde_json::to_value(model_runner::api::openapi::document(false, false)).unwrap();
    let schemas = &doc["components"]["schemas"];
    let mut documented: Vec<&str> = schemas["RunView"]["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|part| match part["$ref"].as_str() {
            Some(r) => &schemas[r.trim_start_matches("#/components/schemas/")],
            None => part,
        })
        .flat_map(|part| part["properties"].as_object().unwrap().keys())
        .map(String::as_str)
        .collect();
    documented.sort_unstable();
    let mut served: Vec<&str> = run
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    served.sort_unstable();
    assert_eq!(served, documented);
    // What a pending run always has is required, not optional, in the document.
    let required: Vec<&str> = schemas["ModelRun"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for (member, value) in run.as_object().unwrap() {
        if !value.is_null() && member != "progress" {
            assert!(
                required.contains(&member.as_str()),
                "{member}: {required:?}"
            );
        }
    }

    // Adhoc, with an Idempotency-Key: a resubmission returns the same runs with 200.
    let adhoc = json!({
        "model": "block_stats", "chain": "ethereum", "range": {"start": 5, "end": 14},
        "chunk_size": 5, "adhoc_queue": 2, "max_attempts": 1,
    });
    let request = || {
        Request::builder()
            .method("POST")
            .uri("/v1/runs")
            .header(header::AUTHORIZATION, format!("Bearer {WRITE}"))
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header("Idempotency-Key", "adhoc-1")
            .body(Body::from(adhoc.to_string()))
            .unwrap()
    };
    let (status, first) = api.send(request()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["count"], 2);
    let (status, again) = api.send(request()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["created"], false);
    assert_eq!(again["run_ids"], first["run_ids"]);
    let id = first["run_ids"][1].as_str().unwrap();
    let (_, run) = api
        .call("GET", &format!("/v1/runs/{id}"), Some(READ), None)
        .await;
    assert_eq!(run["mode"], "adhoc");
    assert!(
        run["queue"].as_str().unwrap().contains("backfill_2"),
        "{run}"
    );
    assert_eq!(run["max_attempts"], 1);

    // The same key for different runs is a conflict.
    let other = Request::builder()
        .method("POST")
        .uri("/v1/runs")
        .header(header::AUTHORIZATION, format!("Bearer {WRITE}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", "adhoc-1")
        .body(Body::from(backfill(0, 9, 5).to_string()))
        .unwrap();
    let got = api.send(other).await;
    assert_error(&got, StatusCode::CONFLICT, "conflict", None, "adhoc-1");

    // A malformed key names the header.
    let bad_key = Request::builder()
        .method("POST")
        .uri("/v1/runs")
        .header(header::AUTHORIZATION, format!("Bearer {WRITE}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", "x".repeat(300))
        .body(Body::from(backfill(0, 9, 5).to_string()))
        .unwrap();
    let got = api.send(bad_key).await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
        Some("Idempotency-Key"),
        "Idempotency-Key",
    );
}

async fn submit_errors(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let with = |patch: Value| {
        let mut b = backfill(0, 99, 10);
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases: Vec<(Value, &str, Option<&str>, &str)> = vec![
        (
            with(json!({"model": "nope"})),
            "unknown_model",
            Some("model"),
            "unknown model \"nope\"",
        ),
        (
            with(json!({"chain": "bitcoin"})),
            "unknown_chain",
            Some("chain"),
            "unknown chain \"bitcoin\"",
        ),
        (
            with(json!({"chain": "Not A Chain"})),
            "invalid_chain",
            Some("chain"),
            "invalid chain name",
        ),
        (
            with(json!({"range": {"start": 10, "end": 5}})),
            "invalid_range",
            Some("range"),
            "start is after end",
        ),
        (
            with(json!({"range": {"start": 0, "end": u64::MAX}})),
            "invalid_range",
            Some("range.end"),
            "larger than 9007199254740991",
        ),
        (
            with(json!({"chunk_size": 1u64 << 53})),
            "invalid_range",
            Some("chunk_size"),
            "2^53 - 1",
        ),
        (
            with(json!({"range": {"start": 0, "end": 2_000_000_000u64}})),
            "range_too_large",
            Some("range"),
            "allowed per submission",
        ),
        (
            with(json!({"range": {"start": 0, "end": 999_999}, "chunk_size": 1})),
            "too_many_runs",
            Some("chunk_size"),
            "1000000 runs",
        ),
        (
            // The engine's cap, the one the CLI and the library refuse with too.
            with(json!({"range": {"start": 0, "end": 100_000}, "chunk_size": 1})),
            "too_many_runs",
            Some("chunk_size"),
            "100001 runs, more than the 100000 allowed per backfill",
        ),
        (
            with(json!({"chunk_size": 0})),
            "invalid_chunk_size",
            Some("chunk_size"),
            "at least 1",
        ),
        (
            with(json!({"max_attempts": 0})),
            "invalid_max_attempts",
            Some("max_attempts"),
            "between 1 and 100",
        ),
        (
            with(json!({"max_attempts": 101})),
            "invalid_max_attempts",
            Some("max_attempts"),
            "between 1 and 100",
        ),
        (
            with(json!({"mode": "realtime"})),
            "invalid_mode",
            Some("mode"),
            "scheduler",
        ),
        (
            with(json!({"mode": "backfill", "adhoc_queue": 1})),
            "invalid_adhoc_queue",
            Some("adhoc_queue"),
            "only valid with mode `adhoc`",
        ),
        (
            with(json!({"adhoc_queue": 99})),
            "invalid_adhoc_queue",
            Some("adhoc_queue"),
            "99",
        ),
    ];
    for (body, code, field, words) in cases {
        let got = api.submit(body).await;
        assert_error(&got, StatusCode::BAD_REQUEST, code, field, words);
    }
}

async fn body_errors(kind: Store) {
    let limits = ApiLimits {
        max_body_bytes: 1024,
        ..Default::default()
    };
    let Some(api) = api_with(kind, ApiConfig { limits, ..config() }).await else {
        return;
    };
    let raw = |content_type: Option<&str>, body: String| {
        let mut r = Request::builder()
            .method("POST")
            .uri("/v1/runs")
            .header(header::AUTHORIZATION, format!("Bearer {WRITE}"));
        if let Some(ct) = content_type {
            r = r.header(header::CONTENT_TYPE, ct);
        }
        r.body(Body::from(body)).unwrap()
    };
    let got = api
        .send(raw(Some("application/json"), "{\"model\": ".into()))
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "malformed_json",
        None,
        "malformed JSON",
    );
    let got = api
        .send(raw(
            Some("application/json"),
            format!("{} trailing", backfill(0, 9, 5)),
        ))
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "malformed_json",
        None,
        "malformed JSON",
    );
    let mut extra = backfill(0, 9, 5);
    extra["priority"] = json!(1);
    let got = api
        .send(raw(Some("application/json"), extra.to_string()))
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        Some("priority"),
        "unknown field `priority`",
    );
    let mut extra = backfill(0, 9, 5);
    extra["range"]["step"] = json!(1);
    let got = api
        .send(raw(Some("application/json"), extra.to_string()))
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        Some("range.step"),
        "unknown field `step`",
    );
    let got = api
        .send(raw(
            Some("application/json"),
            json!({"model": "erc20_transfers", "chain": "ethereum"}).to_string(),
        ))
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        Some("range"),
        "missing field `range`",
    );
    let mut wrong = backfill(0, 9, 5);
    wrong["range"]["start"] = json!(-1);
    let got = api
        .send(raw(Some("application/json"), wrong.to_string()))
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        Some("range.start"),
        "invalid value",
    );
    let got = api.send(raw(Some("application/json"), "null".into())).await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        None,
        "invalid type",
    );
    let got = api.send(raw(None, backfill(0, 9, 5).to_string())).await;
    assert_error(
        &got,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
        "application/json",
    );
    let got = api
        .send(raw(Some("text/plain"), backfill(0, 9, 5).to_string()))
        .await;
    assert_error(
        &got,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
        "application/json",
    );
    let mut big = backfill(0, 9, 5);
    big["model"] = json!("m".repeat(4096));
    let got = api
        .send(raw(Some("application/json"), big.to_string()))
        .await;
    assert_error(
        &got,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        None,
        "1024 bytes",
    );
    // Nothing was created by any of these.
    let (_, page) = api.call("GET", "/v1/runs", Some(READ), None).await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 0, "{page}");
}

async fn list_pagination_and_filters(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let before = Utc::now();
    let erc = api.submit_ok(backfill(0, 49, 10)).await;
    let stats = api
        .submit_ok(json!({"model": "block_stats", "chain": "ethereum", "range": {"start": 0, "end": 2}, "chunk_size": 1, "mode": "adhoc"}))
        .await;

    // Walk everything two at a time: every run once, in id order.
    let mut seen = Vec::new();
    let mut uri = "/v1/runs?limit=2".to_owned();
    loop {
        let (status, page) = api.call("GET", &uri, Some(READ), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let runs = page["runs"].as_array().unwrap();
        assert!(runs.len() <= 2);
        seen.extend(runs.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => uri = format!("/v1/runs?limit=2&cursor={next}"),
            None => break,
        }
    }
    let mut all: Vec<String> = erc.iter().chain(&stats).cloned().collect();
    all.sort();
    assert_eq!(seen, all);

    let ids = |page: &Value| -> Vec<String> {
        page["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, page) = api
        .call("GET", "/v1/runs?model=block_stats", Some(READ), None)
        .await;
    assert_eq!(ids(&page), stats);
    let (_, page) = api
        .call(
            "GET",
            "/v1/runs?mode=backfill&chain=ethereum",
            Some(READ),
            None,
        )
        .await;
    assert_eq!(ids(&page), erc);
    let (_, page) = api
        .call("GET", "/v1/runs?state=pending&limit=1000", Some(READ), None)
        .await;
    assert_eq!(ids(&page).len(), 8);
    let (_, page) = api
        .call("GET", "/v1/runs?state=running", Some(READ), None)
        .await;
    assert_eq!(ids(&page).len(), 0);
    let since = before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (_, page) = api
        .call(
            "GET",
            &format!("/v1/runs?since={}", since.replace('+', "%2B")),
            Some(READ),
            None,
        )
        .await;
    assert_eq!(ids(&page).len(), 8, "{page}");
    let (_, page) = api
        .call(
            "GET",
            "/v1/runs?since=2999-01-01T00:00:00Z",
            Some(READ),
            None,
        )
        .await;
    assert_eq!(ids(&page).len(), 0);
    let (_, page) = api
        .call("GET", "/v1/runs?model=unknown_model", Some(READ), None)
        .await;
    assert_eq!(ids(&page).len(), 0);
}

async fn list_errors(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let cases = [
        ("limit=0", "invalid_limit", Some("limit"), "1 to 1000"),
        ("limit=1001", "invalid_limit", Some("limit"), "1 to 1000"),
        ("limit=ten", "invalid_limit", Some("limit"), "\"ten\""),
        ("cursor=abc", "invalid_cursor", Some("cursor"), "next"),
        (
            "state=done",
            "invalid_state",
            Some("state"),
            "invalid run state \"done\"",
        ),
        (
            "mode=daily",
            "invalid_mode",
            Some("mode"),
            "invalid run mode \"daily\"",
        ),
        (
            "chain=ETH",
            "invalid_chain",
            Some("chain"),
            "invalid chain name",
        ),
        (
            "since=yesterday",
            "invalid_since",
            Some("since"),
            "RFC 3339",
        ),
        ("model=", "invalid_model", Some("model"), "1 to 128"),
        ("colour=red", "invalid_query", Some("colour"), "colour"),
    ];
    for (query, code, field, words) in cases {
        let got = api
            .call("GET", &format!("/v1/runs?{query}"), Some(READ), None)
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, code, field, words);
    }
}

async fn get_errors(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let got = api
        .call("GET", "/v1/runs/not-a-uuid", Some(READ), None)
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_id",
        Some("id"),
        "invalid run id \"not-a-uuid\"",
    );
    // Found by fuzz/fuzz_targets/api_request.rs: a path parameter whose percent-escapes are not
    // UTF-8 was refused by axum in plain text; it is the JSON error envelope like the rest.
    for (method, path, token) in [
        ("GET", "/v1/runs/%ff", READ),
        ("POST", "/v1/runs/%ff/cancel", WRITE),
        ("GET", "/v1/chains/%ed/progress", READ),
        ("GET", "/ui/assets/co.c%edest", READ),
    ] {
        let got = api.call(method, path, Some(token), None).await;
        assert_error(
            &got,
            StatusCode::BAD_REQUEST,
            "invalid_path",
            None,
            "Invalid UTF-8",
        );
    }
    let unknown = RunId::new();
    let got = api
        .call("GET", &format!("/v1/runs/{unknown}"), Some(READ), None)
        .await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "run_not_found",
        Some("id"),
        &unknown.to_string(),
    );
    for path in ["cancel", "retry"] {
        let got = api
            .call("POST", &format!("/v1/runs/xyz/{path}"), Some(WRITE), None)
            .await;
        assert_error(
            &got,
            StatusCode::BAD_REQUEST,
            "invalid_id",
            Some("id"),
            "invalid run id",
        );
        let got = api
            .call(
                "POST",
                &format!("/v1/runs/{unknown}/{path}"),
                Some(WRITE),
                None,
            )
            .await;
        assert_error(
            &got,
            StatusCode::NOT_FOUND,
            "run_not_found",
            Some("id"),
            "not found",
        );
    }
}

async fn cancel_paths(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let ids = api.submit_ok(backfill(0, 29, 10)).await;
    let (status, run) = api
        .call(
            "POST",
            &format!("/v1/runs/{}/cancel", ids[0]),
            Some(WRITE),
            Some(json!({"reason": "wrong range"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["state"], "cancelled");
    assert_eq!(run["last_error"], "cancelled: wrong range");
    let got = api
        .call(
            "POST",
            &format!("/v1/runs/{}/cancel", ids[0]),
            Some(WRITE),
            None,
        )
        .await;
    assert_error(
        &got,
        StatusCode::CONFLICT,
        "conflict",
        None,
        "is cancelled: only",
    );

    // A queued and a running run can be cancelled too; a succeeded one cannot.
    let (status, run) = api
        .call(
            "POST",
            &format!("/v1/runs/{}/cancel", ids[0]),
            Some(WRITE),
            Some(Value::Null),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a null body is no body: {run}"
    );
    let id1: RunId = ids[1].parse().unwrap();
    api.store
        .transition(id1, RunState::Pending, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    let (status, run) = api
        .call("POST", &format!("/v1/runs/{id1}/cancel"), Some(WRITE), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["state"], "cancelled");
    let id2: RunId = ids[2].parse().unwrap();
    let lease = Utc::now() + chrono::Duration::seconds(60);
    api.store
        .transition(id2, RunState::Pending, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    api.store.claim(id2, 1, "w", lease).await.unwrap();
    api.store
        .transition(
            id2,
            RunState::Running,
            1,
            RunEvent::Succeed {
                owner: "w".into(),
                blocks_done: 10,
                records_written: 0,
                notes: Default::default(),
            },
        )
        .await
        .unwrap();
    let got = api
        .call("POST", &format!("/v1/runs/{id2}/cancel"), Some(WRITE), None)
        .await;
    assert_error(&got, StatusCode::CONFLICT, "conflict", None, "is succeeded");

    let got = api
        .call(
            "POST",
            &format!("/v1/runs/{}/cancel", ids[0]),
            Some(WRITE),
            Some(json!({"why": "x"})),
        )
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        Some("why"),
        "unknown field `why`",
    );
    let got = api
        .call(
            "POST",
            &format!("/v1/runs/{}/cancel", ids[0]),
            Some(WRITE),
            Some(json!({"reason": "r".repeat(501)})),
        )
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_reason",
        Some("reason"),
        "500 characters",
    );
}

async fn retry_paths(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let ids = api
        .submit_ok(json!({"model": "erc20_transfers", "chain": "ethereum", "range": {"start": 0, "end": 1}, "chunk_size": 1, "max_attempts": 1}))
        .await;
    let got = api
        .call(
            "POST",
            &format!("/v1/runs/{}/retry", ids[0]),
            Some(WRITE),
            None,
        )
        .await;
    assert_error(
        &got,
        StatusCode::CONFLICT,
        "conflict",
        None,
        "is pending: only failed or expired runs can be retried",
    );

    // Fail it on its only attempt, then retry: one more attempt is granted, due now.
    let id: RunId = ids[0].parse().unwrap();
    let lease = Utc::now() + chrono::Duration::seconds(60);
    api.store
        .transition(id, RunState::Pending, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    api.store.claim(id, 1, "w", lease).await.unwrap();
    api.store
        .transition(
            id,
            RunState::Running,
            1,
            RunEvent::Fail {
                owner: "w".into(),
                error: "boom".into(),
                retry_at: None,
            },
        )
        .await
        .unwrap();
    let (status, run) = api
        .call("POST", &format!("/v1/runs/{id}/retry"), Some(WRITE), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["state"], "failed");
    assert_eq!(run["max_attempts"], 2);
    assert!(run["next_attempt_at"].is_string(), "{run}");
    let due = api
        .store
        .outbox(OutboxQuery {
            now: Utc::now() + chrono::Duration::seconds(1),
            limit: 10,
            skip_queues: &[],
        })
        .await
        .unwrap();
    assert!(
        due.iter().any(|r| r.id == id),
        "the retried run is due for publishing"
    );

    // A failed run due for a retry is not finished: cancelling it is the user's final word,
    // and the outbox no longer republishes it.
    let (status, run) = api
        .call(
            "POST",
            &format!("/v1/runs/{}/cancel", ids[0]),
            Some(WRITE),
            Some(json!({"reason": "not needed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["state"], "cancelled");
    assert_eq!(run["last_error"], "cancelled: not needed");
    assert!(run["next_attempt_at"].is_null(), "{run}");
    let due = api
        .store
        .outbox(OutboxQuery {
            now: Utc::now() + chrono::Duration::seconds(1),
            limit: 10,
            skip_queues: &[],
        })
        .await
        .unwrap();
    assert!(
        !due.iter().any(|r| r.id == id),
        "a cancelled run is not published again"
    );
    let got = api
        .call(
            "POST",
            &format!("/v1/runs/{}/retry", ids[0]),
            Some(WRITE),
            None,
        )
        .await;
    assert_error(&got, StatusCode::CONFLICT, "conflict", None, "is cancelled");
}

async fn auth_paths(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let body = backfill(0, 9, 5);
    let got = api.call("POST", "/v1/runs", None, Some(body.clone())).await;
    assert_error(
        &got,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
        "missing bearer token",
    );
    let got = api
        .call("POST", "/v1/runs", Some("guess"), Some(body.clone()))
        .await;
    assert_error(
        &got,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
        "invalid bearer token",
    );
    assert!(
        !got.1.to_string().contains("guess"),
        "the presented token is not echoed"
    );
    let got = api
        .call("POST", "/v1/runs", Some(READ), Some(body.clone()))
        .await;
    assert_error(
        &got,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
        "write token",
    );
    let basic = Request::builder()
        .method("GET")
        .uri("/v1/models")
        .header(header::AUTHORIZATION, "Basic dXNlcjpwYXNz")
        .body(Body::empty())
        .unwrap();
    let got = api.send(basic).await;
    assert_error(
        &got,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
        "malformed Authorization header",
    );
    // 401 carries the challenge.
    let response = api
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/v1/runs")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    // Writes are checked before the body is read.
    let got = api
        .call("POST", "/v1/runs", None, Some(json!({"nonsense": true})))
        .await;
    assert_eq!(got.0, StatusCode::UNAUTHORIZED);
    for path in ["cancel", "retry"] {
        let got = api
            .call(
                "POST",
                &format!("/v1/runs/{}/{path}", RunId::new()),
                Some(READ),
                None,
            )
            .await;
        assert_eq!(got.0, StatusCode::FORBIDDEN, "{}", got.1);
        let got = api
            .call(
                "POST",
                &format!("/v1/runs/{}/{path}", RunId::new()),
                None,
                None,
            )
            .await;
        assert_eq!(got.0, StatusCode::UNAUTHORIZED, "{}", got.1);
    }
    for uri in [
        "/v1/runs",
        "/v1/models",
        "/v1/chains/ethereum/progress",
        &format!("/v1/runs/{}", RunId::new()),
    ] {
        let got = api.call("GET", uri, None, None).await;
        assert_eq!(got.0, StatusCode::UNAUTHORIZED, "{uri}: {}", got.1);
        let got = api.call("GET", "/v1/models", Some(WRITE), None).await;
        assert_eq!(got.0, StatusCode::OK, "a write token also reads");
    }
    let (status, _) = api
        .call("POST", "/v1/runs", Some(WRITE), Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Open reads: GETs need no token, writes still do.
    let open = ApiConfig {
        auth: ApiAuth::new(WRITE, "", true),
        ..config()
    };
    let Some(api) = api_with(kind, open).await else {
        return;
    };
    let (status, _) = api.call("GET", "/v1/runs", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let got = api.call("POST", "/v1/runs", None, Some(body.clone())).await;
    assert_eq!(got.0, StatusCode::UNAUTHORIZED);
    let (_, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(
        doc["paths"]["/v1/runs"]["get"]["security"],
        json!([{"bearer": ["read"]}, {}])
    );
    assert_eq!(
        doc["paths"]["/v1/runs"]["post"]["security"],
        json!([{"bearer": ["write"]}])
    );

    // No tokens at all: every write is refused.
    let Some(api) = api_with(
        kind,
        ApiConfig {
            auth: ApiAuth::new("", "", false),
            ..config()
        },
    )
    .await
    else {
        return;
    };
    let got = api.call("POST", "/v1/runs", Some(""), Some(body)).await;
    assert_eq!(got.0, StatusCode::UNAUTHORIZED);
}

/// Runs of `block_stats` at an older version, driven to `succeeded` in the store as a worker
/// of that version would have.
async fn succeeded_old_runs(store: &Arc<dyn RunStore>, version: &str, ranges: &[(u64, u64)]) {
    use model_runner_core::ports::CreateRuns;
    use model_runner_core::{ModelKind, NewRun, RunEvent, RunMode, RunState};
    let created = store
        .create_runs(CreateRuns {
            runs: ranges
                .iter()
                .map(|(lo, hi)| NewRun {
                    model: "block_stats".into(),
                    model_version: version.into(),
                    chain: eth(),
                    range: BlockRange::new(*lo, *hi).unwrap(),
                    mode: RunMode::Backfill,
                    kind: ModelKind::Nonreads,
                    queue: "ethereum_backfill_nonreads".into(),
                    max_attempts: 3,
                })
                .collect(),
            idempotency_key: None,
        })
        .await
        .unwrap();
    let lease = Utc::now() + chrono::Duration::minutes(5);
    for run in created.runs {
        store
            .transition(run.id, RunState::Pending, 1, RunEvent::Enqueue)
            .await
            .unwrap();
        let start = RunEvent::Start {
            owner: "old-worker".into(),
            lease_until: lease,
        };
        store
            .transition(run.id, RunState::Queued, 1, start)
            .await
            .unwrap();
        let succeed = RunEvent::Succeed {
            owner: "old-worker".into(),
            blocks_done: run.range.len(),
            records_written: run.range.len(),
            notes: Default::default(),
        };
        store
            .transition(run.id, RunState::Running, 1, succeed)
            .await
            .unwrap();
    }
}

async fn versions_and_rerun(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let (status, v) = api
        .call("GET", "/v1/models/block_stats/versions", Some(READ), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"versions": []}));
    // Version 0.9.0 succeeded on 0-99 and 50-249 (overlapping).
    succeeded_old_runs(&api.store, "0.9.0", &[(0, 99), (50, 249)]).await;
    let (status, v) = api
        .call("GET", "/v1/models/block_stats/versions", Some(READ), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v["versions"],
        json!([{"chain": "ethereum", "version": "0.9.0", "ranges": [{"start": 0, "end": 249}], "blocks": 250}])
    );
    let rerun = |body: Value| {
        api.call(
            "POST",
            "/v1/models/block_stats/rerun",
            Some(WRITE),
            Some(body),
        )
    };
    let (status, v) = rerun(json!({"from_version": "0.9.0", "chunk_size": 100})).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["count"], 3);
    let mut ranges = Vec::new();
    for id in v["run_ids"].as_array().unwrap() {
        let (_, run) = api
            .call(
                "GET",
                &format!("/v1/runs/{}", id.as_str().unwrap()),
                Some(READ),
                None,
            )
            .await;
        assert_ne!(run["model_version"], "0.9.0", "{run}");
        assert_eq!(run["state"], "pending", "{run}");
        ranges.push(format!("{}-{}", run["range"]["start"], run["range"]["end"]));
    }
    assert_eq!(ranges, ["0-99", "100-199", "200-249"]);
    // Nothing left: the registered version is about to cover every block.
    assert_error(
        &rerun(json!({"from_version": "0.9.0"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        None,
        "already covered",
    );
    assert_error(
        &rerun(json!({"from_version": "0.1.0"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        None,
        "no succeeded runs of model block_stats version 0.1.0",
    );
    assert_error(
        &rerun(json!({"from_version": "0.9.0", "chain": "Not A Chain"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_chain",
        Some("chain"),
        "",
    );
    assert_error(
        &rerun(json!({"from_version": "0.9.0", "chunk_size": 0})).await,
        StatusCode::BAD_REQUEST,
        "invalid_chunk_size",
        Some("chunk_size"),
        "at least 1",
    );
    assert_error(
        &rerun(json!({"from_version": ""})).await,
        StatusCode::BAD_REQUEST,
        "invalid_version",
        Some("from_version"),
        "1-128",
    );
    let (status, v) = rerun(json!({"from_version": "0.9.0", "surprise": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = api
        .call(
            "POST",
            "/v1/models/no_such_model/rerun",
            Some(WRITE),
            Some(json!({"from_version": "0.9.0"})),
        )
        .await;
    assert!(status.is_client_error(), "{status} {v}");
    assert!(v.to_string().contains("no_such_model"), "{v}");
    // Reruns write: a read token may list versions but not rerun.
    let (status, _) = api
        .call(
            "POST",
            "/v1/models/block_stats/rerun",
            Some(READ),
            Some(json!({"from_version": "0.9.0"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn models_and_progress(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let (status, v) = api.call("GET", "/v1/models", Some(READ), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let models = v["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["block_stats", "erc20_balances", "erc20_transfers"]);
    for m in models {
        let reads = m["name"] == "erc20_balances";
        assert_eq!(m["kind"], if reads { "reads" } else { "nonreads" });
        assert!(!m["version"].as_str().unwrap().is_empty());
        assert_eq!(m["chains"], json!(["ethereum"]));
    }
    // The declared record schema, in column order.
    let fields = models[2]["record_schema"].as_array().unwrap();
    let names: Vec<&str> = fields.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "token_address",
            "from_address",
            "to_address",
            "value",
            "transaction_hash",
            "log_index",
            "block_number"
        ]
    );
    assert_eq!(
        fields[3],
        json!({"name": "value", "type": "bigint", "nullable": false,
               "description": "amount in the token's base unit (uint256)"})
    );
    assert_eq!(fields[5]["type"], "uint64");
    assert_eq!(models[0]["record_schema"][1]["type"], "hex");

    api.submit_ok(backfill(0, 29, 10)).await;
    let ids = api.submit_ok(backfill(100, 109, 10)).await;
    api.call(
        "POST",
        &format!("/v1/runs/{}/cancel", ids[0]),
        Some(WRITE),
        None,
    )
    .await;
    let realtime = NewRun {
        model: "block_stats".into(),
        model_version: "1".into(),
        chain: eth(),
        range: BlockRange::new(0, 41).unwrap(),
        mode: RunMode::Realtime,
        kind: ModelKind::Nonreads,
        queue: "ethereum_realtime_nonreads".into(),
        max_attempts: 3,
    };
    api.store
        .advance_cursor(CursorAdvance {
            key: CursorKey::new("block_stats", &eth()),
            expected: None,
            to: 41,
            runs: vec![realtime],
        })
        .await
        .unwrap();

    let (status, p) = api
        .call("GET", "/v1/chains/ethereum/progress", Some(READ), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["chain"], "ethereum");
    let head = p["head"]["number"].as_u64().unwrap();
    assert!(head >= 41, "{p}");
    assert!(p["head"]["hash"].as_str().unwrap().starts_with("0x"));
    assert_eq!(p["head_error"], Value::Null);
    assert_eq!(p["models"].as_array().unwrap().len(), 1, "{p}");
    assert_eq!(p["models"][0]["model"], "block_stats");
    assert_eq!(p["models"][0]["cursor"], 41);
    let lag = p["models"][0]["lag"].as_u64().unwrap();
    assert!(lag <= head - 41 + 1_000_000, "{p}");
    assert_eq!(
        p["runs_by_state"],
        json!({"pending": 4, "queued": 0, "running": 0, "succeeded": 0, "failed": 0, "expired": 0, "cancelled": 1, "superseded": 0})
    );

    let got = api
        .call("GET", "/v1/chains/bitcoin/progress", Some(READ), None)
        .await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "unknown_chain",
        Some("chain"),
        "ethereum",
    );
    let got = api
        .call("GET", "/v1/chains/BTC/progress", Some(READ), None)
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_chain",
        Some("chain"),
        "invalid chain name \"BTC\"",
    );
}

async fn probes_openapi_and_fallback(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let (status, v) = api.call("GET", "/healthz", None, None).await;
    assert_eq!((status, v), (StatusCode::OK, json!({"status": "ok"})));
    let (status, v) = api.call("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"status": "ready", "store": "ok", "queue": "ok", "sink": "ok"})
    );

    let (status, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/runs/{id}/cancel",
        "/v1/runs/{id}/retry",
        "/v1/models",
        "/v1/chains/{chain}/progress",
        "/healthz",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["ErrorResponse"].is_object());
    // Every /v1 operation documents the refusals any of them may answer, as the envelope; writes
    // also the read-only token's.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let mut refusals = vec!["401", "503"];
            if method != "get" {
                refusals.push("403");
            }
            for status in refusals {
                let body = &op["responses"][status]["content"]["application/json"]["schema"];
                assert_eq!(
                    body["$ref"], "#/components/schemas/ErrorResponse",
                    "{method} {path} {status}: {}",
                    op["responses"]
                );
            }
        }
    }
    let submit = &doc["components"]["schemas"]["SubmitRuns"]["properties"];
    assert_eq!(
        submit["model"]["enum"],
        json!(["block_stats", "erc20_balances", "erc20_transfers"])
    );
    assert_eq!(submit["chain"]["enum"], json!(["ethereum"]));

    let (status, page) = api.call("GET", "/docs", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.as_str().unwrap().contains("/openapi.json"));

    let got = api.call("GET", "/v2/whatever", None, None).await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
        "no route for GET /v2/whatever",
    );
    // A method a path does not serve: the same envelope, with the methods it does serve.
    let response = api
        .app
        .clone()
        .oneshot(
            Request::builder()
                .method("DELETE")
                .uri("/v1/runs")
                .header(header::AUTHORIZATION, format!("Bearer {WRITE}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let allow = response.headers()[header::ALLOW].to_str().unwrap();
    let mut allow: Vec<&str> = allow.split(',').collect();
    allow.sort_unstable();
    assert_eq!(allow, ["GET", "HEAD", "POST"]);
    let got = api.send_response(response).await;
    assert_error(
        &got,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
        "DELETE is not allowed on /v1/runs",
    );
}

/// A 1,000,000-block backfill in chunks of 100 makes 10,000 runs in one request.
async fn million_block_backfill(kind: Store) {
    let Some(api) = api_with(kind, config()).await else {
        return;
    };
    let (status, v) = api.submit(backfill(1_000_000, 1_999_999, 100)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["count"], 10_000);
    assert_eq!(v["run_ids"].as_array().unwrap().len(), 10_000);
    let counts = api.store.count_by_state(&Default::default()).await.unwrap();
    assert_eq!(counts.get(&RunState::Pending), Some(&10_000));
}

/// A store whose reads never answer, to exercise the request timeout; everything else is the
/// in-memory store.
#[derive(Debug)]
struct StuckStore(model_runner_core::memory::MemoryRunStore);

#[async_trait::async_trait]
impl RunStore for StuckStore {
    async fn create_runs(
        &self,
        batch: model_runner_core::ports::CreateRuns,
    ) -> Result<model_runner_core::ports::CreatedRuns, model_runner_core::ports::StoreError> {
        self.0.create_runs(batch).await
    }
    async fn get(
        &self,
        _id: RunId,
    ) -> Result<model_runner_core::ModelRun, model_runner_core::ports::StoreError> {
        std::future::pending().await
    }
    async fn list(
        &self,
        filter: &model_runner_core::ports::RunFilter,
    ) -> Result<model_runner_core::ports::RunPage, model_runner_core::ports::StoreError> {
        self.0.list(filter).await
    }
    async fn count_by_state(
        &self,
        filter: &model_runner_core::ports::RunFilter,
    ) -> Result<std::collections::BTreeMap<RunState, u64>, model_runner_core::ports::StoreError>
    {
        self.0.count_by_state(filter).await
    }
    async fn apply(
        &self,
        t: model_runner_core::ports::Transition,
    ) -> Result<model_runner_core::ModelRun, model_runner_core::ports::StoreError> {
        self.0.apply(t).await
    }
    async fn expired_leases(
        &self,
        now: chrono::DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<model_runner_core::ModelRun>, model_runner_core::ports::StoreError> {
        self.0.expired_leases(now, limit).await
    }
    async fn outbox(
        &self,
        query: OutboxQuery<'_>,
    ) -> Result<Vec<model_runner_core::ModelRun>, model_runner_core::ports::StoreError> {
        self.0.outbox(query).await
    }
    async fn cursor(
        &self,
        key: CursorKey<'_>,
    ) -> Result<Option<u64>, model_runner_core::ports::StoreError> {
        self.0.cursor(key).await
    }
    async fn cursors(
        &self,
        chain: Option<&Chain>,
    ) -> Result<Vec<model_runner_core::ports::RealtimeCursor>, model_runner_core::ports::StoreError>
    {
        self.0.cursors(chain).await
    }
    async fn advance_cursor(
        &self,
        advance: CursorAdvance<'_>,
    ) -> Result<Vec<model_runner_core::ModelRun>, model_runner_core::ports::StoreError> {
        self.0.advance_cursor(advance).await
    }
    async fn try_lock(
        &self,
        lease: LockLease<'_>,
    ) -> Result<bool, model_runner_core::ports::StoreError> {
        self.0.try_lock(lease).await
    }
}

#[tokio::test]
async fn a_stuck_store_times_out_with_503_and_fails_readiness() {
    let store: Arc<dyn RunStore> = Arc::new(StuckStore(Default::default()));
    let deps = EngineDeps {
        store: store.clone(),
        queue: Arc::new(MemoryRunQueue::new()),
        sink: Arc::new(MemorySink::new()),
        sources: HashMap::new(),
        models: Arc::new(model_runner_core::models::builtin()),
        routing: Routing::default(),
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    };
    let config = ApiConfig {
        limits: ApiLimits {
            request_timeout: std::time::Duration::from_millis(100),
            ..Default::default()
        },
        ..config()
    };
    let api = Api {
        app: app(ApiState::new(deps, config)),
        store,
        _dir: tempfile::tempdir().unwrap(),
    };
    let got = api
        .call(
            "GET",
            &format!("/v1/runs/{}", RunId::new()),
            Some(READ),
            None,
        )
        .await;
    assert_error(
        &got,
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        None,
        "longer than 0.1s",
    );
    let (status, v) = api.call("GET", "/readyz", None, None).await;
    // The request timeout (100 ms) answers before the 2 s bound of the readiness check.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
}

/// The batch-index lookups are served under the API's read scope when an index is attached.
#[tokio::test]
async fn index_endpoints_are_served_with_read_scope() {
    use batch_index::extract::Modules;
    use batch_index::local_build::build_single_process;
    use batch_index::source::{ChainKind, SourceConfig, open_source};
    use batch_index::store::StoreRoot;

    let tmp = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../batch-index/tests/fixtures/stellar/testnet-lighthorizon"
    );
    let cfg = SourceConfig {
        chain: ChainKind::Stellar,
        network_passphrase: "Test SDF Network ; September 2015".into(),
        ethereum_span: 64,
    };
    let source = open_source(StoreRoot::open(fixture).unwrap(), &cfg)
        .await
        .unwrap();
    let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
    build_single_process(source, &root, 1, 1, Modules::ALL)
        .await
        .unwrap();
    let reader = batch_index::IndexReader::open(root).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = model_runner_adapters::sqlite::SqliteRunStore::connect(&format!(
        "sqlite://{}/runs.db",
        dir.path().display()
    ))
    .await
    .unwrap();
    let deps = model_runner_core::engine::EngineDeps {
        store: std::sync::Arc::new(store),
        queue: std::sync::Arc::new(model_runner_core::memory::MemoryRunQueue::new()),
        sink: std::sync::Arc::new(model_runner_core::memory::MemorySink::new()),
        sources: Default::default(),
        models: std::sync::Arc::new(model_runner_core::models::builtin()),
        routing: Default::default(),
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    };
    let config = model_runner::api::ApiConfig {
        auth: model_runner::api::ApiAuth::new("writer", "reader", false),
        ..Default::default()
    };
    let app =
        model_runner::api::app(model_runner::api::ApiState::new(deps, config).with_index(reader));
    let acc = "GC4HPUZ3EEGOHMCS46DEMJ6UEGAJ7VF4FI5WSGJOFIAVT64YY64YSNEE";
    let path = format!("/v1/index/accounts/{acc}?index=all/payments");
    let request = |token: Option<&str>| {
        let mut b = axum::http::Request::get(&path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(axum::body::Body::empty()).unwrap()
    };
    use tower::ServiceExt;
    let denied = app.clone().oneshot(request(None)).await.unwrap();
    assert_eq!(denied.status(), 401, "index reads need the read scope");
    let ok = app.oneshot(request(Some("reader"))).await.unwrap();
    assert_eq!(ok.status(), 200);
    let body = axum::body::to_bytes(ok.into_body(), 1 << 20).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["checkpoints"].as_array().is_some_and(|c| !c.is_empty()),
        "{v}"
    );
}

/// A block source whose head panics: `GET /v1/chains/{chain}/progress` asks it.
#[derive(Debug)]
struct PanickingSource(Chain);

#[async_trait::async_trait]
impl model_runner_core::ports::BlockSource for PanickingSource {
    fn chain(&self) -> &Chain {
        &self.0
    }
    async fn head(
        &self,
    ) -> Result<model_runner_core::BlockHead, model_runner_core::ports::SourceError> {
        panic!("a source bug");
    }
    async fn blocks(
        &self,
        _: BlockRange,
    ) -> Result<Vec<model_runner_core::Block>, model_runner_core::ports::SourceError> {
        panic!("a source bug");
    }
}

/// A handler that panics answers the envelope's 500 (the connection was dropped without a
/// response before), and the next request is served as usual.
#[tokio::test]
async fn a_panicking_handler_answers_500_in_the_envelope() {
    let store: Arc<dyn RunStore> = Arc::new(model_runner_core::memory::MemoryRunStore::new());
    let deps = EngineDeps {
        store: store.clone(),
        queue: Arc::new(MemoryRunQueue::new()),
        sink: Arc::new(MemorySink::new()),
        sources: HashMap::from([(
            eth(),
            Arc::new(PanickingSource(eth())) as Arc<dyn model_runner_core::ports::BlockSource>,
        )]),
        models: Arc::new(model_runner_core::models::builtin()),
        routing: Routing::default(),
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    };
    let api = Api {
        app: app(ApiState::new(deps, config())),
        store,
        _dir: tempfile::tempdir().unwrap(),
    };
    let got = api
        .call("GET", "/v1/chains/ethereum/progress", Some(READ), None)
        .await;
    assert_error(
        &got,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        None,
        "internal error",
    );
    let (status, v) = api.call("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}
