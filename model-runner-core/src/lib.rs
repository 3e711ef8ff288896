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
//! adapter.

pub mod chain;
pub mod data;
pub mod engine;
pub mod memory;
pub mod model;
pub mod models;
pub mod ports;
pub mod redact;
pub mod routing;
pub mod run;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use chain::{BlockRange, Chain, ChainError, ModelKind, RunMode};
pub use data::{Block, BlockHead, CallRequest, Log, Receipt, Transaction};
pub use model::{
    FieldSpec, FieldType, Model, ModelContext, ModelError, ModelRegistry, PayloadError, Record,
    RecordKey, RecordSchema, SchemaError,
};
pub use routing::{Routing, adhoc_queue_name, dead_letter_queue_name, queue_name, topic_name};
pub use run::{ModelRun, NewRun, RunEvent, RunId, RunState, TransitionError};
