//! Run with: `cargo run -p model-runner-examples --example embed_in_axum`
//!
//! A worker, the scheduler, the enqueuer and the runs API inside an existing axum service: the
//! service keeps its own routes (`/hello`) and its own shutdown signal, and gains `/v1/runs`,
//! `/v1/models`, `/healthz` and `/openapi.json`. The example then acts as a client of its own
//! service: it submits a backfill of 300 devnet blocks over HTTP with a write token, follows
//! the runs until they succeed, and shuts everything down with the one signal.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use model_runner::api::{ApiAuth, ApiConfig, ApiState, app};
use model_runner_adapters::devnet::DevnetSource;
use model_runner_core::prelude::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let chain = Chain::new("ethereum")?;
    let runner = Runner::builder()
        .source(DevnetSource::from_url(chain.clone(), "devnet://")?)
        .build()?;

    // The application's router, with the runs API merged in. Writes need the token; reads too
    // (open_reads: false), with the same token.
    let token = "example-write-token";
    let api = app(ApiState::new(
        runner.deps().clone(),
        ApiConfig {
            auth: ApiAuth::new(token, "", false),
            ..Default::default()
        },
    ));
    let service = Router::new()
        .route("/hello", get(|| async { "my service" }))
        .merge(api);

    // One shutdown signal for the HTTP server and the runner's loops (a real service would
    // cancel it on SIGTERM).
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn({
        let stop = shutdown.clone();
        async move {
            axum::serve(listener, service)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    });
    let loops = tokio::spawn({
        let (runner, stop) = (runner.clone(), shutdown.clone());
        async move { runner.run(Parts::ALL, stop).await }
    });

    let http = reqwest::Client::new();
    let hello = http
        .get(format!("{base}/hello"))
        .send()
        .await?
        .text()
        .await?;
    anyhow::ensure!(hello == "my service", "own route answered {hello:?}");
    let submitted: serde_json::Value = http
        .post(format!("{base}/v1/runs"))
        .bearer_auth(token)
        .json(&serde_json::json!({
            "model": "erc20_transfers",
            "chain": "ethereum",
            "range": { "start": 0, "end": 299 },
            "chunk_size": 50,
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let ids: Vec<String> = serde_json::from_value(submitted["run_ids"].clone())?;
    anyhow::ensure!(ids.len() == 6, "expected 6 runs, got {submitted}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut records = 0;
    for id in &ids {
        loop {
            let run: serde_json::Value = http
                .get(format!("{base}/v1/runs/{id}"))
                .bearer_auth(token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            match run["state"].as_str() {
                Some("succeeded") => {
                    records += run["records_written"].as_u64().unwrap_or_default();
                    break;
                }
                Some("failed" | "cancelled" | "expired") => anyhow::bail!("run ended: {run}"),
                _ if tokio::time::Instant::now() > deadline => anyhow::bail!("run stuck: {run}"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    // Without the token the API refuses, with its JSON error envelope.
    let refused = http.get(format!("{base}/v1/runs")).send().await?;
    anyhow::ensure!(
        refused.status() == 401,
        "unauthenticated read got {}",
        refused.status()
    );

    shutdown.cancel();
    server.await??;
    loops.await??;
    anyhow::ensure!(records > 0, "the runs delivered no records");
    println!(
        "6 runs over 300 devnet blocks succeeded through the embedded API: {records} records; service shut down"
    );
    Ok(())
}
