//! The testing kit (feature `testing`): blocks from fixture files or devnet, a model run on them
//! directly or through the whole pipeline on in-memory adapters, and assertions on the records.
//!
//! ```
//! use model_runner_adapters::testing::BlockBatch;
//! use model_runner_core::models::Erc20Transfers;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 20 blocks of the generated demo chain (or `BlockBatch::from_files` over saved JSON-RPC
//! // responses or an ethereum-etl export).
//! let batch = BlockBatch::devnet("ethereum", 100..=119).await?;
//! // The model alone, its records checked against its declared record schema...
//! let direct = batch.run(&Erc20Transfers).await?;
//! direct.assert_unique_keys();
//! // ...and the same model through scheduler, queue, worker and sink, in memory.
//! let piped = batch.pipeline(Erc20Transfers).await?;
//! assert_eq!(direct.payloads(), piped.payloads());
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;

use model_runner_core::engine::{
    BackfillRequest, EngineError, Runner, WorkerConfig, submit_backfill,
};
use model_runner_core::memory::{MemoryBlockSource, MemorySink};
use model_runner_core::ports::{BlockSource, SourceError, check_whole_range};
use model_runner_core::{
    Block, BlockRange, Chain, Model, ModelContext, ModelError, Record, RunId, RunMode, RunState,
    topic_name,
};

use crate::devnet::DevnetSource;
use crate::file_source::FileBlockSource;

/// Consecutive blocks of one chain, to run models on.
#[derive(Debug, Clone)]
pub struct BlockBatch {
    chain: Chain,
    blocks: Vec<Block>,
}

/// A testing-kit failure, naming what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    /// A chain name, range or block list that cannot make a batch.
    #[error("invalid batch: {0}")]
    Invalid(String),
    /// The block source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The model failed.
    #[error("the model failed: {0}")]
    Model(#[from] ModelError),
    /// A record does not match the model's declared record schema.
    #[error("record {key}: {error}")]
    Schema {
        /// The record's key.
        key: String,
        /// What does not match.
        error: String,
    },
    /// The pipeline failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl BlockBatch {
    /// Blocks given in code; they MUST be consecutive and ascending.
    pub fn new(chain: &str, blocks: Vec<Block>) -> Result<Self, TestingError> {
        let chain = Chain::new(chain).map_err(|e| TestingError::Invalid(e.to_string()))?;
        let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
            return Err(TestingError::Invalid("no blocks".into()));
        };
        let whole = BlockRange::new(first.number, last.number)
            .map_err(|e| e.to_string())
            .and_then(|range| check_whole_range(range, &blocks).map_err(|e| e.to_string()));
        if let Err(e) = whole {
            return Err(TestingError::Invalid(format!(
                "blocks must be consecutive and ascending: {e}"
            )));
        }
        Ok(Self { chain, blocks })
    }

    /// Every block of fixture files: a directory (or one file) of saved JSON-RPC responses or
    /// an ethereum-etl export, as the `file://` source reads them.
    pub async fn from_files(chain: &str, path: impl AsRef<Path>) -> Result<Self, TestingError> {
        let chain_id = Chain::new(chain).map_err(|e| TestingError::Invalid(e.to_string()))?;
        let source = FileBlockSource::open(chain_id, path)?;
        let numbers: Vec<u64> = source.numbers().collect();
        let (first, last) = (numbers[0], numbers[numbers.len() - 1]);
        let range =
            BlockRange::new(first, last).map_err(|e| TestingError::Invalid(e.to_string()))?;
        Self::new(chain, source.blocks(range).await?)
    }

    /// Blocks `numbers` of the devnet chain with its default settings (`devnet://`).
    pub async fn devnet(chain: &str, numbers: RangeInclusive<u64>) -> Result<Self, TestingError> {
        Self::devnet_url(chain, "devnet://", numbers).await
    }

    /// Blocks `numbers` of a devnet chain configured by URL (`devnet://?seed=7&logs=50`).
    pub async fn devnet_url(
        chain: &str,
        url: &str,
        numbers: RangeInclusive<u64>,
    ) -> Result<Self, TestingError> {
        let chain_id = Chain::new(chain).map_err(|e| TestingError::Invalid(e.to_string()))?;
        let range = BlockRange::new(*numbers.start(), *numbers.end())
            .map_err(|e| TestingError::Invalid(e.to_string()))?;
        let source = DevnetSource::from_url(chain_id, url)?;
        Self::new(chain, source.blocks(range).await?)
    }

    /// The chain.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The blocks' range.
    pub fn range(&self) -> BlockRange {
        BlockRange::new(
            self.blocks[0].number,
            self.blocks[self.blocks.len() - 1].number,
        )
        .expect("a batch is non-empty and ascending")
    }

    /// Runs `model` on the whole batch directly (no store, queue or sink), as a worker would
    /// run one run of it, and checks every record against the model's record schema.
    pub async fn run(&self, model: &dyn Model) -> Result<Records, TestingError> {
        let spec = model.spec();
        let ctx = ModelContext {
            run_id: RunId::new(),
            model: spec.name().to_owned(),
            model_version: spec.version().to_owned(),
            chain: self.chain.clone(),
            range: self.range(),
            source: Arc::new(MemoryBlockSource::new(
                self.chain.clone(),
                self.blocks.clone(),
            )),
            notes: Default::default(),
        };
        let records = model.run(&ctx, &self.blocks).await?;
        if let Some(schema) = spec.record_schema() {
            for r in &records {
                schema
                    .check_payload(&r.payload)
                    .map_err(|e| TestingError::Schema {
                        key: r.key.to_string(),
                        error: e.to_string(),
                    })?;
            }
        }
        Ok(Records(records))
    }

    /// Runs `model` through the whole pipeline in memory: a backfill of the batch in runs of
    /// 10 blocks (one attempt each), the enqueuer, a worker and a memory sink; fails unless every
    /// run succeeded, with the first failed run's error.
    pub async fn pipeline(&self, model: impl Model + 'static) -> Result<Records, TestingError> {
        let name = model.spec().name().to_owned();
        let sink = Arc::new(MemorySink::new());
        let mut models = model_runner_core::ModelRegistry::new();
        models
            .register(Arc::new(model))
            .map_err(EngineError::from)?;
        let runner = Runner::builder()
            .models(models)
            .source(MemoryBlockSource::new(
                self.chain.clone(),
                self.blocks.clone(),
            ))
            .sink_arc(sink.clone())
            .worker_config(WorkerConfig {
                env: "test".into(),
                ..Default::default()
            })
            .build()?;
        // One attempt: a test wants the model's failure now, not after retry backoffs.
        let created = submit_backfill(
            runner.deps(),
            BackfillRequest {
                model: name,
                chain: self.chain.clone(),
                range: self.range(),
                chunk_size: 10,
                mode: RunMode::Backfill,
                adhoc_queue: None,
                max_attempts: 1,
                idempotency_key: None,
            },
        )
        .await?;
        let runs: Vec<RunId> = created.runs.iter().map(|r| r.id).collect();
        let settled = runner.run_until_done(&runs).await?;
        if let Some(bad) = settled.iter().find(|r| r.state != RunState::Succeeded) {
            return Err(TestingError::Invalid(format!(
                "run {} over {} ended {}: {}",
                bad.id,
                bad.range,
                bad.state,
                bad.last_error.as_deref().unwrap_or("no error recorded")
            )));
        }
        let mut records = sink.records(&topic_name("test", &self.chain));
        records.sort_by(|a, b| {
            (a.key.block_number, a.key.position).cmp(&(b.key.block_number, b.key.position))
        });
        Ok(Records(records))
    }
}

/// A model's records, in the order it emitted them (the pipeline's in key order).
#[derive(Debug, Clone, PartialEq)]
pub struct Records(pub Vec<Record>);

impl Records {
    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The payloads, in order.
    pub fn payloads(&self) -> Vec<&serde_json::Value> {
        self.0.iter().map(|r| r.payload.value()).collect()
    }

    /// The record at (block, position).
    pub fn at(&self, block: u64, position: u64) -> Option<&Record> {
        self.0
            .iter()
            .find(|r| r.key.block_number == block && r.key.position == position)
    }

    /// The values of one payload field, in order (`Null` where a record lacks it).
    pub fn field(&self, name: &str) -> Vec<serde_json::Value> {
        self.0
            .iter()
            .map(|r| r.payload.get(name).cloned().unwrap_or_default())
            .collect()
    }

    /// Panics, naming the key, if two records share a key (sinks deduplicate by key, so the
    /// second would silently replace the first).
    pub fn assert_unique_keys(&self) {
        let mut seen = HashSet::new();
        for r in &self.0 {
            assert!(
                seen.insert(r.key.to_string()),
                "duplicate record key {}",
                r.key
            );
        }
    }
}
