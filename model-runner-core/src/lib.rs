//! # model-runner-core
//!
//! The domain of model-runner and the ports it is built on.
//!
//! Data flows like this: the **scheduler** turns realtime subscriptions and backfills into
//! [`ModelRun`]s in a [`RunStore`](ports::RunStore) (state `pending`, the transactional outbox);
//! the **enqueuer** publishes pending runs to a [`RunQueue`](ports::RunQueue) named by
//! [`routing`] and marks them `queued`; a **worker** claims a run with a lease, loads its blocks
//! from a [`BlockSource`](ports::BlockSource), runs the [`Model`], sends the records to a
//! [`ResultSink`](ports::ResultSink) topic and marks the run `succeeded`.
//!
//! Every port has an in-memory adapter in [`memory`] (always compiled) and, behind the
//! `conformance` feature, a suite in `conformance` that checks its written contract against any
//! adapter. The `openapi` feature derives `utoipa::ToSchema` on the types an HTTP API serves as
//! they are ([`FieldType`]), so the API documents them instead of hand copies.
//!
//! Start from the [`prelude`] and a [`Runner`](engine::Runner): write a [`Model`], register it
//! beside the built-ins, and run it embedded. The ports default to the in-memory adapters; give
//! it a SQLite or PostgreSQL store, a RabbitMQ queue, a Kafka or Parquet sink and a JSON-RPC
//! source from `model-runner-adapters` without touching the model.
//!
//! ```
//! use model_runner_core::prelude::*;
//! use model_runner_core::memory::{MemoryBlockSource, MemorySink};
//! use std::sync::Arc;
//!
//! /// One record per block with an even number.
//! #[derive(Debug)]
//! struct EvenBlocks;
//!
//! #[async_trait]
//! impl Model for EvenBlocks {
//!     fn spec(&self) -> ModelSpec {
//!         ModelSpec::new("even_blocks", "1.0.0", ModelKind::Nonreads)
//!     }
//!     async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
//!         Ok(blocks
//!             .iter()
//!             .filter(|b| b.number % 2 == 0)
//!             .map(|b| ctx.record(b, 0, serde_json::json!({ "number": b.number })))
//!             .collect())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let chain = Chain::new("ethereum")?;
//! let sink = Arc::new(MemorySink::new());
//! let runner = Runner::builder()
//!     .source(MemoryBlockSource::with_empty_blocks(chain.clone(), 0..=99))
//!     .model(EvenBlocks)
//!     .sink_arc(sink.clone())
//!     .build()?;
//! let runs = runner.backfill("even_blocks", &chain, BlockRange::new(0, 99)?, 25).await?;
//! runner.run_until_done(&runs).await?;
//! // The worker's default environment is "dev": records go to the topic dev-ethereum-sink.
//! assert_eq!(sink.records(&topic_name("dev", &chain)).len(), 50);
//! # Ok(())
//! # }
//! ```

pub mod chain;
pub mod clock;
pub mod data;
pub mod engine;
pub mod memory;
pub mod model;
pub mod models;
pub mod ports;
pub mod redact;
pub mod routing;
pub mod run;
pub mod submission;

#[cfg(feature = "conformance")]
pub mod conformance;

/// The names a model author and an embedding application use most, in one import:
/// `use model_runner_core::prelude::*;`.
pub mod prelude {
    pub use crate::chain::{BlockRange, Chain, ModelKind, RunMode};
    pub use crate::data::{Block, BlockHead, BlockRef, CallRequest, Log, Receipt, Transaction};
    pub use crate::engine::{
        CancellationToken, EngineDeps, EngineError, Parts, RealtimeSubscription, Runner,
        RunnerBuilder,
    };
    pub use crate::model::{
        FieldType, Model, ModelContext, ModelError, ModelRegistry, ModelSpec, Payload, Record,
        RecordSchema,
    };
    pub use crate::ports::{BlockSource, ResultSink, RunQueue, RunStore, RunStoreExt};
    pub use crate::routing::topic_name;
    pub use crate::run::{ModelRun, RunId, RunState};
    pub use alloy_primitives::{Address, B256, Bytes, U256};
    pub use async_trait::async_trait;
}

/// The Ethereum primitives the chain types are made of ([`Block`]'s `U256`, `Address`, `B256`,
/// `Bytes`), re-exported so a model uses the same version without naming it in its manifest.
pub use alloy_primitives;
pub use chain::{BlockRange, Chain, ChainError, ModelKind, RunMode};
pub use data::{Block, BlockHead, BlockRef, CallRequest, Log, Receipt, Transaction};
pub use model::{
    FieldSpec, FieldType, Model, ModelContext, ModelError, ModelRegistry, ModelSpec, ModelVersion,
    Payload, PayloadError, PayloadWriter, Record, RecordKey, RecordSchema, RegisteredModel,
    SchemaError,
};
pub use routing::{Routing, adhoc_queue_name, dead_letter_queue_name, queue_name, topic_name};
pub use run::{ModelRun, NewRun, RunEvent, RunId, RunState, TransitionError};
