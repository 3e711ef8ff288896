//! Run with: `cargo run -p model-runner-examples --example custom_model`
//!
//! A user model (`large_transfers`: ERC-20 transfers above a threshold) registered next to the
//! built-ins and run embedded over 500 devnet blocks: in-memory store and queue, records in a
//! memory sink. Swap the adapters for `SqliteRunStore`, `FileSink`, ... without touching the model.
//!
//! The model declares its record schema: the worker checks every payload against it, and the
//! Parquet sink (`parquet+file:///DIR`, `s3://...`) makes one typed column per field.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use model_runner_adapters::devnet::DevnetSource;
use model_runner_core::engine::{
    BackfillRequest, CancellationToken, EngineDeps, Enqueuer, EnqueuerConfig, Worker, WorkerConfig,
    submit_backfill,
};
use model_runner_core::memory::{MemoryRunQueue, MemoryRunStore, MemorySink};
use model_runner_core::models::decode_transfer;
use model_runner_core::ports::RunStore;
use model_runner_core::{
    Block, BlockRange, Chain, FieldType, Model, ModelContext, ModelError, ModelKind, Record,
    RecordSchema, Routing, RunMode, RunState, topic_name,
};

/// ERC-20 transfers of more than `min` base units.
#[derive(Debug)]
struct LargeTransfers {
    min: alloy_primitives::U256,
}

#[async_trait]
impl Model for LargeTransfers {
    fn name(&self) -> &str {
        "large_transfers"
    }
    fn version(&self) -> &str {
        "0.1.0"
    }
    fn kind(&self) -> ModelKind {
        ModelKind::Nonreads
    }
    /// Exactly the payload below; change the version when this changes.
    fn record_schema(&self) -> Option<RecordSchema> {
        Some(
            RecordSchema::new()
                .required(
                    "token",
                    FieldType::Hex,
                    "ERC-20 contract, checksummed 0x-hex",
                )
                .required("value", FieldType::BigInt, "amount in base units (uint256)"),
        )
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        let mut out = Vec::new();
        for block in blocks {
            for log in &block.logs {
                if let Some(t) = decode_transfer(log).filter(|t| t.value > self.min) {
                    out.push(ctx.record(
                        block,
                        log.log_index,
                        serde_json::json!({ "token": t.token.to_string(), "value": t.value.to_string() }),
                    ));
                }
            }
        }
        Ok(out)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let chain = Chain::new("ethereum")?;
    let mut models = model_runner_core::models::builtin();
    models.register(Arc::new(LargeTransfers {
        min: alloy_primitives::U256::from(10u64).pow(alloy_primitives::U256::from(25u64)),
    }))?;
    let sink = Arc::new(MemorySink::new());
    let deps = EngineDeps {
        store: Arc::new(MemoryRunStore::new()),
        queue: Arc::new(MemoryRunQueue::new()),
        sink: sink.clone(),
        sources: HashMap::from([(
            chain.clone(),
            Arc::new(DevnetSource::from_url(chain.clone(), "devnet://")?) as _,
        )]),
        models: Arc::new(models),
        routing: Routing::default(),
        limits: Default::default(),
    };
    let created = submit_backfill(
        &deps,
        BackfillRequest {
            model: "large_transfers".into(),
            chain: chain.clone(),
            range: BlockRange::new(0, 499)?,
            chunk_size: 50,
            mode: RunMode::Backfill,
            adhoc_queue: None,
            max_attempts: 3,
            idempotency_key: None,
        },
    )
    .await?;
    let stop = CancellationToken::new();
    let enqueuer =
        tokio::spawn(Enqueuer::new(deps.clone(), EnqueuerConfig::default()).run(stop.clone()));
    let worker = Worker::new(
        deps.clone(),
        WorkerConfig {
            queues: deps.routing.all_queues([&chain]),
            env: "example".into(),
            ..Default::default()
        },
    );
    let worker = tokio::spawn(worker.run(stop.clone()));
    loop {
        let mut done = 0;
        for r in &created.runs {
            done += usize::from(deps.store.get(r.id).await?.state == RunState::Succeeded);
        }
        if done == created.runs.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    enqueuer.await?;
    worker.await??;
    let records = sink.records(&topic_name("example", &chain));
    if let Some(schema) = sink.declared_schema("large_transfers", "0.1.0") {
        println!("declared schema: {}", serde_json::to_string(&schema)?);
    }
    println!(
        "{} runs succeeded, {} large transfers; first: {}",
        created.runs.len(),
        records.len(),
        records
            .first()
            .map(|r| r.payload.to_string())
            .unwrap_or_default()
    );
    Ok(())
}
