//! Embedded pipeline throughput against the model alone.
//!
//! Run with: `cargo bench -p model-runner --bench pipeline [-- BLOCKS [RUN_BLOCKS [MODEL [SLOTS]]]]`
//!
//! Prints blocks modeled per second and runs per second for the model called directly in one
//! loop over devnet blocks (generated the same way, records built but not written), and for the
//! embedded pipeline (SQLite store, in-memory queue, JSON-lines file sink, devnet blocks,
//! scheduler + enqueuer + worker in one process) twice: with 1 worker slot, which does the same
//! work one run at a time like the direct loop, and with SLOTS worker slots (default: the
//! available parallelism). The 1-slot ratio is the pipeline's overhead (target: at least 50 %
//! of the direct loop for 100-block runs); the SLOTS ratio also counts runs executed side by
//! side, which the single-threaded direct loop does not do, so it can exceed 100 %.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model_runner::{AllConfig, BackfillSpec, run_all};
use model_runner_adapters::devnet::DevnetSource;
use model_runner_adapters::file_sink::FileSink;
use model_runner_adapters::sqlite::SqliteRunStore;
use model_runner_core::engine::{CancellationToken, EngineDeps, WorkerConfig};
use model_runner_core::memory::MemoryRunQueue;
use model_runner_core::ports::BlockSource;
use model_runner_core::{BlockRange, Chain, ModelContext, Routing};

/// The allocator of the `model-runner` binary, so both loops run as they would there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let blocks: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let run_blocks: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let model_name = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "erc20_transfers".into());
    let chain = Chain::new("ethereum").unwrap();
    let source = Arc::new(DevnetSource::from_url(chain.clone(), "devnet://").unwrap());
    let models = Arc::new(model_runner_core::models::builtin());
    let model = models.get(&model_name).unwrap();
    let range = BlockRange::new(0, blocks - 1).unwrap();

    // Direct: the model over the same blocks, loaded the same way, in one loop.
    let t = Instant::now();
    let mut direct_records = 0usize;
    for chunk in range.chunks(run_blocks).unwrap() {
        let bs = source.blocks(chunk).await.unwrap();
        let ctx = ModelContext {
            run_id: Default::default(),
            model: model_name.clone(),
            model_version: model.spec().version().into(),
            chain: chain.clone(),
            range: chunk,
            source: source.clone(),
            notes: Default::default(),
        };
        direct_records += model.run(&ctx, &bs).await.unwrap().len();
    }
    let direct = t.elapsed();

    let slots: usize = args
        .get(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let pipeline = |workers: usize| {
        let (source, models, chain, model_name) = (
            source.clone(),
            models.clone(),
            chain.clone(),
            model_name.clone(),
        );
        async move {
            let dir = tempfile::tempdir().unwrap();
            let store =
                SqliteRunStore::connect(&format!("sqlite://{}/runs.db", dir.path().display()))
                    .await
                    .unwrap();
            let deps = EngineDeps {
                store: Arc::new(store),
                queue: Arc::new(MemoryRunQueue::new()),
                sink: Arc::new(FileSink::open(dir.path().join("sink")).await.unwrap()),
                sources: HashMap::from([(chain.clone(), source as Arc<dyn BlockSource>)]),
                models,
                routing: Routing::default(),
                limits: Default::default(),
                clock: model_runner_core::clock::SystemClock::shared(),
            };
            let t = Instant::now();
            let summary = run_all(
                deps,
                AllConfig {
                    backfills: vec![BackfillSpec {
                        chain,
                        model: model_name,
                        range,
                    }],
                    chunk_size: run_blocks,
                    worker: WorkerConfig {
                        concurrency: workers,
                        prefetch: 4,
                        env: "bench".into(),
                        ..Default::default()
                    },
                    tick: Duration::from_millis(100),
                    progress: None,
                    ..Default::default()
                },
                CancellationToken::new(),
            )
            .await
            .unwrap();
            let elapsed = t.elapsed();
            assert!(summary.all_succeeded);
            assert_eq!(summary.records as usize, direct_records);
            elapsed
        }
    };
    let one_slot = pipeline(1).await;
    let n_slots = pipeline(slots).await;

    let runs = blocks.div_ceil(run_blocks) as f64;
    let bps = |d: Duration| blocks as f64 / d.as_secs_f64();
    let rps = |d: Duration| runs / d.as_secs_f64();
    println!(
        "model {model_name}, {blocks} devnet blocks (~150 txs, ~300 logs each), {run_blocks}-block runs, {direct_records} records"
    );
    let line = |label: &str, d: Duration, note: String| {
        println!(
            "{label:<26}{:>9.0} blocks/s  {:>7.1} runs/s  ({:.2} s{note})",
            bps(d),
            rps(d),
            d.as_secs_f64()
        );
    };
    line("direct model loop:", direct, ", 1 thread".into());
    let adapters = "sqlite + memory queue + file sink";
    line(
        "pipeline, 1 slot:",
        one_slot,
        format!(", 1 worker slot, {adapters}"),
    );
    line(
        &format!("pipeline, {slots} slots:"),
        n_slots,
        format!(", {slots} worker slots, {adapters}"),
    );
    let ratio = |label: String, d: Duration| {
        println!(
            "{label:<48}{:>4.0}%",
            100.0 * direct.as_secs_f64() / d.as_secs_f64()
        );
    };
    ratio("pipeline / direct, 1 slot (overhead):".into(), one_slot);
    ratio(
        format!("pipeline / direct, {slots} slots (with parallelism):"),
        n_slots,
    );
}
