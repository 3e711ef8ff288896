//! `GET /metrics` after an embedded backfill: the counters agree with what the run did (blocks
//! modeled, records in the sink, runs by state, attempts, queue waits). Its own test process:
//! the metrics recorder is process-wide.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use model_runner::api::{ApiConfig, ApiState, app};
use model_runner::{AdapterUrls, AllConfig, build_deps, run_all};
use model_runner_adapters::file_sink::read_topic;
use model_runner_core::engine::{CancellationToken, WorkerConfig};
use tower::ServiceExt;

/// `name{labels} value` lines of a Prometheus text page, by `name{labels}`.
fn samples(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_an_embedded_backfill() {
    let handle = model_runner::metrics::install().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let urls = AdapterUrls {
        store: "memory://".into(),
        queue: "memory://".into(),
        sink: format!("file://{}", dir.path().display()),
        chains: vec!["ethereum=devnet://?txs=20&logs=40".parse().unwrap()],
        migrate: true,
    };
    let deps = build_deps(&urls).await.unwrap();
    let summary = run_all(
        deps.clone(),
        AllConfig {
            backfills: vec!["ethereum:erc20_transfers:0-999".parse().unwrap()],
            chunk_size: 100,
            worker: WorkerConfig {
                env: "test".into(),
                ..Default::default()
            },
            progress: None,
            ..Default::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(summary.all_succeeded, "{summary:?}");
    let records = read_topic(&dir.path().join("test-ethereum-sink.jsonl"))
        .unwrap()
        .len() as f64;
    assert!(records > 0.0);

    let app = app(ApiState::new(deps, ApiConfig::default()).with_metrics(handle));
    let response = app
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    let page = String::from_utf8(body.to_vec()).unwrap();
    let got = samples(&page);
    let at = |key: &str| {
        *got.get(key)
            .unwrap_or_else(|| panic!("{key} is not in /metrics:\n{page}"))
    };
    let run = r#"chain="ethereum",model="erc20_transfers""#;
    assert_eq!(
        at(&format!("model_runner_blocks_modeled_total{{{run}}}")),
        1000.0
    );
    assert_eq!(
        at(&format!("model_runner_records_written_total{{{run}}}")),
        records
    );
    assert_eq!(at(r#"model_runner_runs{state="succeeded"}"#), 10.0);
    assert_eq!(at(r#"model_runner_runs{state="failed"}"#), 0.0);
    assert_eq!(
        at(&format!(
            "model_runner_run_duration_seconds_count{{{run},outcome=\"succeeded\"}}"
        )),
        10.0
    );
    assert_eq!(
        at(&format!("model_runner_queue_wait_seconds_count{{{run}}}")),
        10.0
    );
    assert_eq!(
        at(r#"model_runner_runs_enqueued_total{queue="ethereum_backfill_nonreads"}"#),
        10.0
    );
    assert_eq!(
        at(r#"model_runner_source_request_seconds_count{chain="ethereum",method="blocks"}"#),
        10.0
    );
    assert_eq!(
        at(r#"model_runner_sink_send_seconds_count{chain="ethereum"}"#),
        10.0
    );
    // Histograms have buckets, and no label is a run id.
    assert!(
        page.contains("model_runner_run_duration_seconds_bucket{"),
        "{page}"
    );
    assert!(!page.contains("run_id"), "{page}");
}
