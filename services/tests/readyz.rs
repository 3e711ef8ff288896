//! `GET /readyz` over in-memory ports and small test doubles: every component `ok` is 200, and
//! a component whose readiness probe fails or hangs is 503 naming it, without leaking secrets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use model_runner::api::{ApiConfig, ApiState, app};
use model_runner_core::engine::EngineDeps;
use model_runner_core::memory::{MemoryRunQueue, MemoryRunStore, MemorySink};
use model_runner_core::ports::{
    Consumer, QueueError, ResultSink, RunMessage, RunQueue, RunStore, SinkError,
};
use model_runner_core::{Record, Routing};
use serde_json::{Value, json};
use tower::ServiceExt;

/// What a double's `ping` does.
#[derive(Debug, Clone, Copy)]
enum Ping {
    Fail,
    Hang,
}

impl Ping {
    async fn run<E>(self, error: E) -> Result<(), E> {
        match self {
            Ping::Fail => Err(error),
            Ping::Hang => std::future::pending().await,
        }
    }
}

/// An error message as an adapter might word it, with a password that must not be shown.
const LEAKY: &str = "cannot reach amqp://guest:hunter2@broker.internal:5672/%2f";

/// The in-memory queue, except that its broker is "down".
#[derive(Debug)]
struct DownQueue(MemoryRunQueue, Ping);

#[async_trait::async_trait]
impl RunQueue for DownQueue {
    async fn publish(&self, queue: &str, messages: &[RunMessage]) -> Result<(), QueueError> {
        self.0.publish(queue, messages).await
    }
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, QueueError> {
        self.0.consume(queue, prefetch).await
    }
    fn is_durable(&self) -> bool {
        false
    }
    async fn ping(&self) -> Result<(), QueueError> {
        self.1
            .run(QueueError::Unavailable {
                adapter: "test",
                message: LEAKY.into(),
            })
            .await
    }
}

/// The in-memory sink, except that its destination is "down".
#[derive(Debug)]
struct DownSink(MemorySink, Ping);

#[async_trait::async_trait]
impl ResultSink for DownSink {
    async fn send(&self, topic: &str, records: &[Record]) -> Result<(), SinkError> {
        self.0.send(topic, records).await
    }
    async fn flush(&self) -> Result<(), SinkError> {
        // What the old check asked: an idle producer flushes fine with its broker down.
        Ok(())
    }
    async fn ping(&self) -> Result<(), SinkError> {
        self.1
            .run(SinkError::Unavailable {
                adapter: "test",
                message: LEAKY.into(),
            })
            .await
    }
}

fn deps(
    store: Arc<dyn RunStore>,
    queue: Arc<dyn RunQueue>,
    sink: Arc<dyn ResultSink>,
) -> EngineDeps {
    EngineDeps {
        store,
        queue,
        sink,
        sources: HashMap::new(),
        models: Arc::new(model_runner_core::models::builtin()),
        routing: Routing::default(),
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    }
}

fn memory() -> EngineDeps {
    deps(
        Arc::new(MemoryRunStore::new()),
        Arc::new(MemoryRunQueue::new()),
        Arc::new(MemorySink::new()),
    )
}

async fn readyz(deps: EngineDeps) -> (StatusCode, Value, String) {
    let response = app(ApiState::new(deps, ApiConfig::default()))
        .oneshot(
            Request::builder()
                .uri("/readyz")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    (status, serde_json::from_str(&text).unwrap(), text)
}

#[tokio::test]
async fn memory_ports_are_ready() {
    let (status, v, _) = readyz(memory()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"status": "ready", "store": "ok", "queue": "ok", "sink": "ok"})
    );
}

#[tokio::test]
async fn a_queue_that_fails_its_ping_is_named() {
    let mut d = memory();
    d.queue = Arc::new(DownQueue(MemoryRunQueue::new(), Ping::Fail));
    let (status, v, text) = readyz(d).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(
        v,
        json!({"status": "unavailable", "store": "ok", "queue": "unavailable", "sink": "ok"})
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn a_sink_that_flushes_but_fails_its_ping_is_named() {
    let mut d = memory();
    let sink = Arc::new(DownSink(MemorySink::new(), Ping::Fail));
    sink.flush().await.unwrap();
    d.sink = sink;
    let (status, v, text) = readyz(d).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(
        v,
        json!({"status": "unavailable", "store": "ok", "queue": "ok", "sink": "unavailable"})
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn hanging_probes_are_bounded_and_each_is_named() {
    let d = deps(
        Arc::new(MemoryRunStore::new()),
        Arc::new(DownQueue(MemoryRunQueue::new(), Ping::Hang)),
        Arc::new(DownSink(MemorySink::new(), Ping::Hang)),
    );
    let started = Instant::now();
    let (status, v, _) = readyz(d).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(
        v,
        json!({"status": "unavailable", "store": "ok", "queue": "unavailable", "sink": "unavailable"})
    );
    // The checks run concurrently, each bounded by the same timeout.
    let bound = model_runner::api::health::CHECK_TIMEOUT;
    assert!(
        took >= bound && took < bound + Duration::from_secs(2),
        "{took:?}"
    );
}

/// The file sink's probe creates a file: a directory that is gone makes the sink unavailable.
#[tokio::test]
async fn a_file_sink_whose_directory_is_gone_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut d = memory();
    d.sink = model_runner_adapters::connect::sink_from_url(&format!("file://{}", out.display()))
        .await
        .unwrap();
    let (status, v, _) = readyz(d.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    std::fs::remove_dir_all(&out).unwrap();
    let (status, v, _) = readyz(d).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["sink"], "unavailable");
    assert_eq!(v["store"], "ok");
    assert_eq!(v["queue"], "ok");
}

/// The review finding: a Kafka sink with no reachable broker used to pass readiness, since an
/// idle producer flushes fine. Its metadata probe fails now.
#[cfg(feature = "kafka")]
#[tokio::test]
async fn a_kafka_sink_without_a_broker_is_unavailable() {
    let mut d = memory();
    d.sink = model_runner_adapters::connect::sink_from_url(
        "kafka://127.0.0.1:1?sasl.username=u&sasl.password=hunter2",
    )
    .await
    .unwrap();
    d.sink.flush().await.unwrap();
    let (status, v, text) = readyz(d).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(
        v,
        json!({"status": "unavailable", "store": "ok", "queue": "ok", "sink": "unavailable"})
    );
    assert!(!text.contains("hunter2"), "{text}");
}
