//! Load benchmark of the HTTP API over the network, on SQLite and (with the `postgres` feature
//! and `DATABASE_URL` set) on PostgreSQL.
//!
//! Run with: `cargo bench -p model-runner --bench api_load` (add `--features postgres` and
//! `DATABASE_URL=postgres://...` for PostgreSQL). Needs `wrk` (`apt-get install wrk`) and `curl`.
//!
//! Per store it serves `app(...)` on `127.0.0.1:0` in this process, then:
//! 1. submits a 1,000,000-block backfill (chunks of 100: 10,000 runs) with `curl` and prints the
//!    time per 1,000 runs;
//! 2. runs `wrk --latency` against `GET /v1/runs/{id}` and `POST /v1/runs` (one 100-block run
//!    per request) and prints requests per second and p50/p99 latency.
//!
//! Env: `WRK_DURATION` (default `10s`), `WRK_CONNECTIONS` (`16`), `WRK_THREADS` (`1`).

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use model_runner::api::{ApiAuth, ApiConfig, ApiState, serve_on};
use model_runner_adapters::devnet::{DevnetConfig, DevnetSource};
use model_runner_adapters::sqlite::SqliteRunStore;
use model_runner_core::engine::{CancellationToken, EngineDeps};
use model_runner_core::memory::{MemoryRunQueue, MemorySink};
use model_runner_core::ports::{BlockSource, RunStore};
use model_runner_core::{Chain, Routing};

const TOKEN: &str = "bench-write-token";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn bench_store(name: &str, store: Arc<dyn RunStore>) {
    let eth = Chain::new("ethereum").unwrap();
    let deps = EngineDeps {
        store,
        queue: Arc::new(MemoryRunQueue::new()),
        sink: Arc::new(MemorySink::new()),
        sources: HashMap::from([(
            eth.clone(),
            Arc::new(DevnetSource::new(eth, DevnetConfig::default())) as Arc<dyn BlockSource>,
        )]),
        models: Arc::new(model_runner_core::models::builtin()),
        routing: Routing::default(),
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    };
    let config = ApiConfig {
        auth: ApiAuth::new(TOKEN, "", false),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_on(
        listener,
        ApiState::new(deps, config),
        shutdown.clone(),
    ));

    // 1. A 1,000,000-block backfill through the API.
    let body = r#"{"model":"erc20_transfers","chain":"ethereum","range":{"start":1000000,"end":1999999},"chunk_size":100}"#;
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let url = format!("{base}/v1/runs");
        move || {
            Command::new("curl")
                .args(["-sS", "-X", "POST", &url])
                .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
                .args(["-H", "Content-Type: application/json", "-d", body])
                .output()
                .expect("running curl")
        }
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();
    let response: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the submission answers JSON");
    let count = response["count"].as_u64().expect("a count of created runs");
    let first_id = response["run_ids"][0].as_str().unwrap().to_owned();
    println!(
        "[{name}] POST /v1/runs 1,000,000 blocks / chunk 100: {count} runs created in {:.0} ms ({:.1} ms per 1,000 runs)",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e3 / (count as f64 / 1000.0)
    );

    // 2. wrk on one read and one write endpoint.
    let dir = tempfile::tempdir().unwrap();
    let post_script = dir.path().join("post.lua");
    std::fs::write(
        &post_script,
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"erc20_transfers","chain":"ethereum","range":{"start":0,"end":99},"chunk_size":100}'
"#,
    )
    .unwrap();
    let duration = env_or("WRK_DURATION", "10s");
    let connections = env_or("WRK_CONNECTIONS", "16");
    let threads = env_or("WRK_THREADS", "1");
    for (label, url, script) in [
        (
            "GET /v1/runs/{id}",
            format!("{base}/v1/runs/{first_id}"),
            None,
        ),
        (
            "POST /v1/runs (1 run each)",
            format!("{base}/v1/runs"),
            Some(post_script.clone()),
        ),
    ] {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "-t",
            &threads,
            "-c",
            &connections,
            "-d",
            &duration,
            "--latency",
        ])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
        if let Some(s) = &script {
            cmd.arg("-s").arg(s);
        }
        cmd.arg(&url);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("running wrk (apt-get install wrk)");
        let text = String::from_utf8_lossy(&out.stdout);
        let pick = |prefix: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(prefix))
                .map(|l| l.split_whitespace().last().unwrap_or("?").to_owned())
                .unwrap_or_else(|| "?".into())
        };
        let non_2xx = text
            .lines()
            .find(|l| l.contains("Non-2xx"))
            .map(|l| format!(", {}", l.trim()))
            .unwrap_or_default();
        println!(
            "[{name}] {label}: {} req/s, p50 {}, p99 {} (wrk -t{threads} -c{connections} -d{duration}{non_2xx})",
            pick("Requests/sec:"),
            pick("50%"),
            pick("99%"),
        );
    }
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteRunStore::connect(&format!("sqlite://{}/runs.db", dir.path().display()))
        .await
        .unwrap();
    bench_store("sqlite", Arc::new(sqlite)).await;

    #[cfg(feature = "postgres")]
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            use model_runner_adapters::postgres::{PostgresOptions, PostgresRunStore};
            let schema = format!("api_bench_{}", uuid::Uuid::now_v7().simple());
            let store = PostgresRunStore::connect_with(
                &url,
                PostgresOptions {
                    schema: Some(schema.clone()),
                    ..Default::default()
                },
            )
            .await
            .expect("DATABASE_URL is set but the store cannot connect");
            let pool = store.pool().clone();
            bench_store("postgres", Arc::new(store)).await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA \"{schema}\" CASCADE"
            )))
            .execute(&pool)
            .await
            .expect("dropping the benchmark schema");
        }
        _ => println!("[postgres] DATABASE_URL is not set: PostgreSQL not benchmarked"),
    }
}
