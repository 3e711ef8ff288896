//! The engine on a real RabbitMQ (`AMQP_URL`), where the bugs the in-memory queue once hid
//! live: a worker shutting down while another runs, and a worker receiving a run's message
//! before the enqueuer marked the run `queued`, on a quorum queue with a delivery limit. Each
//! test uses its own chain name, so its queues are its own. Unset `AMQP_URL`: not configured,
//! passes with a notice; set but unreachable: fails.
#![cfg(feature = "rabbitmq")]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use model_runner_adapters::rabbitmq::{AmqpOptions, AmqpRunQueue};
use model_runner_core::engine::{
    BackfillRequest, CancellationToken, EngineDeps, Worker, WorkerConfig, submit_backfill,
};
use model_runner_core::memory::{MemoryRunStore, MemorySink};
use model_runner_core::model::{Model, ModelContext, ModelError, ModelRegistry, ModelSpec, Record};
use model_runner_core::ports::{RunMessage, RunQueue, RunStore, RunStoreExt};
use model_runner_core::{
    Block, BlockRange, Chain, ModelKind, ModelRun, Routing, RunEvent, RunId, RunMode, RunState,
    dead_letter_queue_name,
};

fn amqp_url() -> Option<String> {
    match std::env::var("AMQP_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("AMQP_URL is not set: RabbitMQ engine test not configured, skipped");
            None
        }
    }
}

/// A chain name of its own, so the test's queues are its own.
fn unique_chain() -> Chain {
    Chain::new(format!(
        "t{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    ))
    .unwrap()
}

/// One record per block; waits while `block` is set (a run that outlasts a shutdown grace).
#[derive(Debug, Default)]
struct Gate {
    block: AtomicBool,
}

#[async_trait]
impl Model for Gate {
    fn spec(&self) -> ModelSpec {
        ModelSpec::new("gate", "1", ModelKind::Nonreads)
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        while self.block.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(blocks
            .iter()
            .map(|b| ctx.record(b, 0, serde_json::json!({"n": b.number})))
            .collect())
    }
}

async fn setup(url: &str, gate: Arc<Gate>) -> (EngineDeps, Arc<AmqpRunQueue>, ModelRun) {
    let chain = unique_chain();
    let (base, options) = AmqpOptions::from_url(url).expect("AMQP_URL parses");
    let queue = Arc::new(
        AmqpRunQueue::connect(&base, options)
            .await
            .expect("AMQP_URL is set, so RabbitMQ MUST be reachable"),
    );
    let source = model_runner_adapters::devnet::DevnetSource::new(
        chain.clone(),
        model_runner_adapters::devnet::DevnetConfig {
            head: 1000,
            txs: 2,
            logs: 2,
            ..Default::default()
        },
    );
    let deps = EngineDeps {
        store: Arc::new(MemoryRunStore::new()),
        queue: queue.clone(),
        sink: Arc::new(MemorySink::new()),
        sources: HashMap::from([(chain.clone(), Arc::new(source) as _)]),
        models: Arc::new(ModelRegistry::new().with(gate).unwrap()),
        routing: Routing::default(),
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    };
    let run = submit_backfill(
        &deps,
        BackfillRequest {
            model: "gate".into(),
            chain,
            range: BlockRange::new(0, 9).unwrap(),
            chunk_size: 10,
            mode: RunMode::Backfill,
            adhoc_queue: None,
            max_attempts: 1,
            idempotency_key: None,
        },
    )
    .await
    .unwrap()
    .runs
    .remove(0);
    (deps, queue, run)
}

fn worker(deps: &EngineDeps, run: &ModelRun, id: &str) -> Worker {
    Worker::new(
        deps.clone(),
        WorkerConfig {
            id: id.into(),
            queues: vec![run.queue.clone()],
            heartbeat: Duration::from_millis(50),
            shutdown_grace: Duration::from_millis(200),
            env: "test".into(),
            ..Default::default()
        },
    )
}

async fn wait_for(deps: &EngineDeps, id: RunId, what: &str, done: impl Fn(&ModelRun) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let run = deps.store.get(id).await.unwrap();
        if done(&run) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Messages waiting in `queue`, read with a passive declare.
async fn ready(url: &str, queue: &str) -> u32 {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let q = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    q.message_count()
}

async fn delete_queues(url: &str, queues: &[String]) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    for q in queues {
        let _ = channel
            .queue_delete(q.as_str().into(), Default::default())
            .await;
    }
}

/// Worker 1 holds a run that outlasts its shutdown grace and is stopped while worker 2 runs.
/// Worker 1 must cancel its consumer (basic.cancel) but keep the channel until it has handed
/// the run back; then worker 2 finishes it. With the channel closed at once (as before), the
/// broker gave the message to worker 2, which dropped it (the run was still `running`), and
/// the hand-back's requeue failed on the closed channel: the run waited `queued` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_handed_back_at_shutdown_is_finished_by_the_other_worker() {
    let Some(url) = amqp_url() else { return };
    let gate = Arc::new(Gate::default());
    gate.block.store(true, Ordering::SeqCst);
    let (deps, queue, run) = setup(&url, gate.clone()).await;
    queue
        .publish(
            &run.queue,
            &[RunMessage {
                run_id: run.id,
                attempt: 1,
            }],
        )
        .await
        .unwrap();
    deps.store
        .transition(run.id, RunState::Pending, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    let stop1 = CancellationToken::new();
    let w1 = tokio::spawn(worker(&deps, &run, "w1").run(stop1.clone()));
    wait_for(&deps, run.id, "w1 to claim", |r| {
        r.state == RunState::Running
    })
    .await;
    let stop2 = CancellationToken::new();
    let w2 = worker(&deps, &run, "w2");
    let stats2 = w2.stats();
    let w2 = tokio::spawn(w2.run(stop2.clone()));
    stop1.cancel();
    w1.await.unwrap().unwrap();
    wait_for(&deps, run.id, "w2 to claim the handed-back run", |r| {
        r.state == RunState::Running && r.lease_owner.as_deref() == Some("w2")
    })
    .await;
    gate.block.store(false, Ordering::SeqCst);
    wait_for(&deps, run.id, "w2 to finish", |r| r.state.is_idle()).await;
    stop2.cancel();
    w2.await.unwrap().unwrap();
    let done = deps.store.get(run.id).await.unwrap();
    assert_eq!(
        (done.state, done.attempt),
        (RunState::Succeeded, 1),
        "{done:?}"
    );
    assert_eq!(stats2.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(ready(&url, &run.queue).await, 0);
    delete_queues(
        &url,
        &[run.queue.clone(), dead_letter_queue_name(&run.queue)],
    )
    .await;
}

/// A quorum queue with `delivery_limit=2`: the worker receives the run's message while the
/// run is still `pending` (the enqueuer publishes, then marks), and the mark comes a second
/// later. The worker must hold the delivery and retry its claim; requeueing it every 20 ms (as
/// before) spent the delivery limit in a few tries and the broker dead-lettered a healthy run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_ahead_of_its_mark_is_not_dead_lettered_by_a_delivery_limit() {
    let Some(url) = amqp_url() else { return };
    let url = format!(
        "{url}{}queue_type=quorum&delivery_limit=2",
        if url.contains('?') { '&' } else { '?' }
    );
    let (base, _) = AmqpOptions::from_url(&url).unwrap();
    let (deps, queue, run) = setup(&url, Arc::default()).await;
    queue
        .publish(
            &run.queue,
            &[RunMessage {
                run_id: run.id,
                attempt: 1,
            }],
        )
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let w = tokio::spawn(worker(&deps, &run, "w1").run(stop.clone()));
    // The enqueuer is slow to mark: the worker has had the message for a while by then.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    deps.store
        .transition(run.id, RunState::Pending, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    wait_for(&deps, run.id, "the run to finish", |r| r.state.is_idle()).await;
    stop.cancel();
    w.await.unwrap().unwrap();
    let done = deps.store.get(run.id).await.unwrap();
    assert_eq!(
        (done.state, done.attempt),
        (RunState::Succeeded, 1),
        "{done:?}"
    );
    let dead = dead_letter_queue_name(&run.queue);
    assert_eq!(ready(&base, &dead).await, 0, "nothing was dead-lettered");
    delete_queues(&base, &[run.queue.clone(), dead]).await;
}
