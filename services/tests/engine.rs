//! End-to-end tests of the engine on the embedded adapters (SQLite store, in-memory queue,
//! JSON-lines file sink, devnet blocks), including the fault cases: retries, dead letters,
//! a worker dying mid-run, and a restart of the whole process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use model_runner::{AllConfig, BackfillSpec, RealtimeSpec, run_all};
use model_runner_adapters::devnet::{DevnetConfig, DevnetSource};
use model_runner_adapters::file_sink::{FileSink, read_topic};
use model_runner_adapters::sqlite::SqliteRunStore;
use model_runner_core::clock::{Clock, SystemClock, TokioClock};
use model_runner_core::engine::{
    CancellationToken, EngineDeps, Enqueuer, EnqueuerConfig, RetryPolicy, Scheduler,
    SchedulerConfig, Worker, WorkerConfig,
};
use model_runner_core::memory::{MemoryRunQueue, MemoryRunStore};
use model_runner_core::models::{BlockStats, Erc20Transfers};
use model_runner_core::ports::CursorKey;
use model_runner_core::ports::{BlockSource, RunFilter, RunQueue, RunStore};
use model_runner_core::{
    Block, BlockRange, Chain, Model, ModelContext, ModelError, ModelKind, ModelRegistry, ModelRun,
    ModelSpec, Record, Routing, RunState, dead_letter_queue_name,
};

fn eth() -> Chain {
    Chain::new("ethereum").unwrap()
}

/// A light devnet (few logs a block) so debug-build tests stay quick.
fn devnet(block_time_ms: u64) -> Arc<DevnetSource> {
    Arc::new(DevnetSource::new(
        eth(),
        DevnetConfig {
            txs: 6,
            logs: 10,
            block_time: Duration::from_millis(block_time_ms),
            ..Default::default()
        },
    ))
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
        jitter: 0.1,
    }
}

fn worker_config(concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        concurrency,
        prefetch: 4,
        lease: Duration::from_millis(800),
        heartbeat: Duration::from_millis(200),
        retry: fast_retry(),
        env: "test".into(),
        shutdown_grace: Duration::from_secs(5),
        ..Default::default()
    }
}

async fn deps_with(
    store: Arc<dyn RunStore>,
    queue: Arc<dyn RunQueue>,
    sink_dir: &std::path::Path,
    source: Arc<dyn BlockSource>,
    models: ModelRegistry,
    clock: Arc<dyn Clock>,
) -> EngineDeps {
    EngineDeps {
        store,
        queue,
        sink: Arc::new(FileSink::open(sink_dir).await.unwrap()),
        sources: HashMap::from([(eth(), source)]),
        models: Arc::new(models),
        routing: Routing::default(),
        limits: Default::default(),
        clock,
    }
}

fn all_runs_filter() -> RunFilter {
    RunFilter {
        limit: 1000,
        ..Default::default()
    }
}

async fn all_runs(store: &dyn RunStore) -> Vec<ModelRun> {
    let mut filter = all_runs_filter();
    let mut out = Vec::new();
    loop {
        let page = store.list(&filter).await.unwrap();
        out.extend(page.runs);
        match page.next {
            Some(n) => filter.after = Some(n),
            None => return out,
        }
    }
}

/// Waits until `f` holds, failing after `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn sink_by_key(dir: &std::path::Path) -> BTreeMap<String, Record> {
    read_topic(&dir.join("test-ethereum-sink.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| (r.key.to_string(), r))
        .collect()
}

async fn direct(
    model: &dyn Model,
    source: Arc<dyn BlockSource>,
    range: BlockRange,
) -> BTreeMap<String, serde_json::Value> {
    let blocks = source.blocks(range).await.unwrap();
    let ctx = ModelContext {
        run_id: Default::default(),
        model: model.spec().name().to_owned(),
        model_version: model.spec().version().to_owned(),
        chain: eth(),
        range,
        source,
        notes: Default::default(),
    };
    model
        .run(&ctx, &blocks)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key.to_string(), r.payload.into_value()))
        .collect()
}

/// Every block of `range` lies in exactly one succeeded run.
fn assert_exact_cover(runs: &[ModelRun], range: BlockRange) {
    let mut ranges: Vec<BlockRange> = runs
        .iter()
        .filter(|r| r.state == RunState::Succeeded)
        .map(|r| r.range)
        .collect();
    ranges.sort();
    assert_eq!(ranges.first().unwrap().start(), range.start());
    assert_eq!(ranges.last().unwrap().end(), range.end());
    for w in ranges.windows(2) {
        assert_eq!(
            w[0].end() + 1,
            w[1].start(),
            "gap or overlap between {} and {}",
            w[0],
            w[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_20000_devnet_blocks_with_several_workers() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteRunStore::connect(&format!("sqlite://{}/runs.db", dir.path().display()))
            .await
            .unwrap(),
    );
    let source = devnet(1000);
    let registry = model_runner_core::models::builtin();
    let deps = deps_with(
        store.clone(),
        Arc::new(MemoryRunQueue::new()),
        &dir.path().join("sink"),
        source.clone(),
        registry,
        // A throughput test on SQLite, several threads: the wall clock.
        SystemClock::shared(),
    )
    .await;
    let range = BlockRange::new(0, 19_999).unwrap();
    let created = model_runner_core::engine::submit_backfill(
        &deps,
        model_runner_core::engine::BackfillRequest {
            model: "erc20_transfers".into(),
            chain: eth(),
            range,
            chunk_size: 250,
            mode: model_runner_core::RunMode::Backfill,
            adhoc_queue: None,
            max_attempts: 3,
            idempotency_key: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(created.runs.len(), 80);

    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(
        Enqueuer::new(deps.clone(), EnqueuerConfig::default()).run(stop.clone()),
    ));
    tasks.push(tokio::spawn(
        Scheduler::new(
            deps.clone(),
            SchedulerConfig {
                tick: Duration::from_millis(100),
                ..Default::default()
            },
        )
        .run(stop.clone()),
    ));
    let queues = deps.routing.all_queues([&eth()]);
    let mut workers = Vec::new();
    for _ in 0..3 {
        let w = Worker::new(
            deps.clone(),
            WorkerConfig {
                queues: queues.clone(),
                ..worker_config(2)
            },
        );
        workers.push(w.stats());
        let s = stop.clone();
        tasks.push(tokio::spawn(async move { w.run(s).await.unwrap() }));
    }
    eventually(300, "every run to succeed", || {
        let store = store.clone();
        async move {
            store
                .count_by_state(&RunFilter::default())
                .await
                .unwrap()
                .get(&RunState::Succeeded)
                == Some(&80)
        }
    })
    .await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        workers
            .iter()
            .filter(|s| s.runs_succeeded.load(Ordering::Relaxed) > 0)
            .count()
            >= 2,
        "the work was shared"
    );

    let runs = all_runs(&*store).await;
    assert!(
        runs.iter()
            .all(|r| r.state == RunState::Succeeded && r.blocks_done == r.range.len())
    );
    assert_exact_cover(&runs, range);
    let got: BTreeMap<String, serde_json::Value> = sink_by_key(&dir.path().join("sink"))
        .into_iter()
        .map(|(k, r)| (k, r.payload.into_value()))
        .collect();
    let want = direct(&Erc20Transfers, source, range).await;
    assert!(want.len() > 20_000, "devnet has transfers: {}", want.len());
    assert_eq!(got.len(), want.len(), "no record missing or extra");
    assert!(
        got == want,
        "sink records equal a direct call of the model, key by key"
    );
    let records: u64 = runs.iter().map(|r| r.records_written).sum();
    assert_eq!(records as usize, want.len());
}

/// A model whose behaviour the test scripts: fail some attempts, panic, or hang.
#[derive(Debug, Default)]
struct Scripted {
    fail_first: bool,
    always_fail: bool,
    panic: bool,
    hang_first: AtomicBool,
    seen: Mutex<HashSet<u64>>,
    calls: AtomicUsize,
}

#[async_trait]
impl Model for Scripted {
    fn spec(&self) -> ModelSpec {
        ModelSpec::new("scripted", "1", ModelKind::Nonreads)
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.panic {
            panic!("scripted panic in block {}", ctx.range.start());
        }
        if self.always_fail {
            return Err(ModelError::Failed(format!(
                "bad data at block {}",
                ctx.range.start()
            )));
        }
        if self.fail_first && self.seen.lock().unwrap().insert(ctx.range.start()) {
            return Err(ModelError::Failed("transient: node timeout".into()));
        }
        if self.hang_first.swap(false, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        BlockStats.run(ctx, blocks).await
    }
}

async fn scripted_run(
    model: Scripted,
    blocks: u64,
) -> (
    EngineDeps,
    Arc<MemoryRunQueue>,
    tempfile::TempDir,
    Vec<ModelRun>,
) {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryRunQueue::new());
    let registry = ModelRegistry::new().with(Arc::new(model)).unwrap();
    // The store and the engine read tokio's clock: the callers pause it, so lease and retry
    // waits pass without the test waiting for them.
    let clock = TokioClock::shared();
    let deps = deps_with(
        Arc::new(MemoryRunStore::with_clock(clock.clone())),
        queue.clone(),
        dir.path(),
        devnet(1000),
        registry,
        clock,
    )
    .await;
    let summary = run_all(
        deps.clone(),
        AllConfig {
            backfills: vec![BackfillSpec {
                chain: eth(),
                model: "scripted".into(),
                range: BlockRange::new(0, blocks - 1).unwrap(),
            }],
            chunk_size: 10,
            worker: worker_config(3),
            tick: Duration::from_millis(50),
            max_attempts: 3,
            progress: None,
            ..Default::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let runs = all_runs(&*deps.store).await;
    assert_eq!(
        summary.backfill_runs.values().sum::<u64>(),
        runs.len() as u64
    );
    (deps, queue, dir, runs)
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_attempt_is_retried_and_succeeds() {
    let (_deps, _q, dir, runs) = scripted_run(
        Scripted {
            fail_first: true,
            ..Default::default()
        },
        50,
    )
    .await;
    assert_eq!(runs.len(), 5);
    for r in &runs {
        assert_eq!((r.state, r.attempt), (RunState::Succeeded, 2), "{r:?}");
    }
    assert_exact_cover(&runs, BlockRange::new(0, 49).unwrap());
    assert_eq!(
        sink_by_key(dir.path()).len(),
        50,
        "one block_stats record per block"
    );
}

#[tokio::test(start_paused = true)]
async fn a_model_that_always_fails_ends_failed_and_dead_lettered() {
    let (_deps, queue, dir, runs) = scripted_run(
        Scripted {
            always_fail: true,
            ..Default::default()
        },
        20,
    )
    .await;
    assert_eq!(runs.len(), 2);
    for r in &runs {
        assert_eq!(r.state, RunState::Failed);
        assert_eq!(r.attempt, 3, "every attempt used");
        assert_eq!(
            r.last_error.as_deref(),
            Some(
                format!(
                    "model scripted failed: bad data at block {}",
                    r.range.start()
                )
                .as_str()
            )
        );
    }
    let mut dead = queue
        .consume(&dead_letter_queue_name("ethereum_backfill_nonreads"), 10)
        .await
        .unwrap();
    let mut dead_ids = HashSet::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), dead.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            d.message.attempt, 3,
            "the last attempt's message is dead-lettered"
        );
        dead_ids.insert(d.message.run_id);
        d.ack().await.unwrap();
    }
    assert_eq!(dead_ids, runs.iter().map(|r| r.id).collect());
    assert!(sink_by_key(dir.path()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_model_fails_the_run_with_its_message() {
    let (_deps, _q, _dir, runs) = scripted_run(
        Scripted {
            panic: true,
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(runs[0].state, RunState::Failed);
    assert_eq!(
        runs[0].last_error.as_deref(),
        Some("model scripted panicked: scripted panic in block 0")
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_dropped_mid_run_is_replaced_and_nothing_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(Scripted {
        hang_first: AtomicBool::new(true),
        ..Default::default()
    });
    let registry = ModelRegistry::new().with(model.clone()).unwrap();
    // Time is paused: worker A's lease (800 ms) ends as soon as nothing else is left to do.
    let clock = TokioClock::shared();
    let deps = deps_with(
        Arc::new(MemoryRunStore::with_clock(clock.clone())),
        Arc::new(MemoryRunQueue::new()),
        dir.path(),
        devnet(1000),
        registry,
        clock,
    )
    .await;
    let range = BlockRange::new(0, 29).unwrap();
    model_runner_core::engine::submit_backfill(
        &deps,
        model_runner_core::engine::BackfillRequest {
            model: "scripted".into(),
            chain: eth(),
            range,
            chunk_size: 10,
            mode: model_runner_core::RunMode::Backfill,
            adhoc_queue: None,
            max_attempts: 3,
            idempotency_key: None,
        },
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let enq =
        tokio::spawn(Enqueuer::new(deps.clone(), EnqueuerConfig::default()).run(stop.clone()));
    let queues = vec!["ethereum_backfill_nonreads".to_owned()];
    // Worker A takes the first run and hangs in it; then it dies without acking or finishing.
    let a = tokio::spawn(
        Worker::new(
            deps.clone(),
            WorkerConfig {
                id: "worker-a".into(),
                queues: queues.clone(),
                ..worker_config(1)
            },
        )
        .run(stop.clone()),
    );
    eventually(30, "worker A to hold a run", || {
        let store = deps.store.clone();
        async move {
            let page = store
                .list(&RunFilter {
                    state: Some(RunState::Running),
                    ..Default::default()
                })
                .await
                .unwrap();
            page.runs
                .iter()
                .any(|r| r.lease_owner.as_deref() == Some("worker-a"))
        }
    })
    .await;
    // Holding a run is not yet hanging in it: until worker A's model call took the one hang,
    // worker B's first run would take it instead and hang forever (seen in CI).
    eventually(30, "worker A to hang in its model", || {
        let hung = !model.hang_first.load(Ordering::SeqCst);
        async move { hung }
    })
    .await;
    a.abort();
    assert!(a.await.unwrap_err().is_cancelled());
    let sched = tokio::spawn(
        Scheduler::new(
            deps.clone(),
            SchedulerConfig {
                tick: Duration::from_millis(50),
                retry: fast_retry(),
                ..Default::default()
            },
        )
        .run(stop.clone()),
    );
    let b = Worker::new(
        deps.clone(),
        WorkerConfig {
            id: "worker-b".into(),
            queues,
            ..worker_config(2)
        },
    );
    let b = tokio::spawn(b.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let runs = all_runs(&*deps.store).await;
        if runs.iter().all(|r| r.state == RunState::Succeeded) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for every run to succeed after the lease expired: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.cancel();
    b.await.unwrap().unwrap();
    sched.await.unwrap();
    enq.await.unwrap();
    let runs = all_runs(&*deps.store).await;
    let rerun: Vec<_> = runs.iter().filter(|r| r.attempt == 2).collect();
    assert_eq!(
        rerun.len(),
        1,
        "exactly the abandoned run needed a second attempt"
    );
    assert_exact_cover(&runs, range);
    let keys: HashSet<u64> = sink_by_key(dir.path())
        .values()
        .map(|r| r.key.block_number)
        .collect();
    assert_eq!(keys, (0..30).collect(), "no block missing from the sink");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_process_resumes_backfill_and_realtime_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/runs.db", dir.path().display());
    let source = devnet(40);
    let backfill = BackfillSpec {
        chain: eth(),
        model: "block_stats".into(),
        range: BlockRange::new(0, 399).unwrap(),
    };
    let config = || AllConfig {
        backfills: vec![backfill.clone()],
        realtime: vec![RealtimeSpec {
            chain: eth(),
            model: "erc20_transfers".into(),
            // The devnet head moves with the clock; no depth to wait for here.
            confirmations: Some(0),
            max_reorg_depth: None,
            max_blocks_per_run: None,
            queue: None,
        }],
        chunk_size: 10,
        worker: worker_config(2),
        tick: Duration::from_millis(50),
        progress: None,
        ..Default::default()
    };
    let start = |_: ()| async {
        let store: Arc<dyn RunStore> = Arc::new(SqliteRunStore::connect(&db).await.unwrap());
        deps_with(
            store,
            Arc::new(MemoryRunQueue::new()),
            &dir.path().join("sink"),
            source.clone(),
            model_runner_core::models::builtin(),
            // SQLite and the devnet head run on the wall clock: this test cannot pause time.
            SystemClock::shared(),
        )
        .await
    };

    // First life: stop once some backfill runs and some realtime runs are done.
    let deps = start(()).await;
    let stop = CancellationToken::new();
    let life = tokio::spawn(run_all(deps.clone(), config(), stop.clone()));
    eventually(60, "progress before the restart", || {
        let store = deps.store.clone();
        async move {
            let done = |m: &str| RunFilter {
                model: Some(m.into()),
                state: Some(RunState::Succeeded),
                limit: 1000,
                ..Default::default()
            };
            store.list(&done("block_stats")).await.unwrap().runs.len() >= 5
                && !store
                    .list(&done("erc20_transfers"))
                    .await
                    .unwrap()
                    .runs
                    .is_empty()
        }
    })
    .await;
    stop.cancel();
    life.await.unwrap().unwrap();
    let cursor_before = deps
        .store
        .cursor(CursorKey::new("erc20_transfers", &eth()))
        .await
        .unwrap()
        .unwrap();
    let backfill_before = all_runs(&*deps.store)
        .await
        .into_iter()
        .filter(|r| r.model == "block_stats")
        .count();
    drop(deps);

    // Second life: same store file, a fresh (empty) in-memory queue.
    let deps = start(()).await;
    let stop = CancellationToken::new();
    let life = tokio::spawn(run_all(deps.clone(), config(), stop.clone()));
    eventually(
        120,
        "the backfill to finish and realtime to move on",
        || {
            let store = deps.store.clone();
            async move {
                let counts = store
                    .count_by_state(&RunFilter {
                        model: Some("block_stats".into()),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                counts.get(&RunState::Succeeded) == Some(&40)
                    && store
                        .cursor(CursorKey::new("erc20_transfers", &eth()))
                        .await
                        .unwrap()
                        .unwrap()
                        > cursor_before
            }
        },
    )
    .await;
    stop.cancel();
    life.await.unwrap().unwrap();

    let runs = all_runs(&*deps.store).await;
    let backfill_runs: Vec<_> = runs
        .iter()
        .filter(|r| r.model == "block_stats")
        .cloned()
        .collect();
    assert_eq!(
        backfill_runs.len(),
        backfill_before,
        "the backfill resumed instead of starting over"
    );
    assert_exact_cover(&backfill_runs, backfill.range);
    // Realtime runs of both lives tile the chain from the first scheduled block, no gap, no overlap.
    let mut realtime: Vec<BlockRange> = runs
        .iter()
        .filter(|r| r.model == "erc20_transfers")
        .map(|r| r.range)
        .collect();
    realtime.sort();
    for w in realtime.windows(2) {
        assert_eq!(
            w[0].end() + 1,
            w[1].start(),
            "realtime cursor resumed exactly"
        );
    }
    let blocks: HashSet<u64> = sink_by_key(&dir.path().join("sink"))
        .values()
        .filter(|r| r.key.model == "block_stats")
        .map(|r| r.key.block_number)
        .collect();
    assert_eq!(
        blocks,
        (0..400).collect(),
        "every backfill block is in the sink"
    );
}
