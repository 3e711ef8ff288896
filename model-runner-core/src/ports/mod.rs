//! The ports: traits the engine is written against, each with its contract in MUST/SHOULD
//! words. Every adapter (in-memory here, SQLite/Postgres/RabbitMQ/Kafka/... in
//! `model-runner-adapters`) passes the port's conformance suite, which checks each MUST.
//!
//! Blob storage is not a port of ours: it is `Arc<dyn object_store::ObjectStore>` itself.

mod call_cache;
mod progress;
mod queue;
mod sink;
mod source;
mod store;

pub use call_cache::{CachedCalls, CallCache, CallCacheError, CallCacheStats, CallKey};
pub use progress::{
    ProgressBoard, ProgressBoardExt, ProgressError, ProgressResult, RunProgress, check_ttl,
};
pub use queue::{Consumer, Delivery, DeliveryHandle, QueueError, RunMessage, RunQueue};
pub use sink::{ResultSink, RunOutput, SinkError, check_topic};
pub use source::{BlockSource, CALLS_IN_FLIGHT, SourceError, check_whole_range};
pub use store::{
    ContractAbi, ContractRef, CreateRuns, CreatedRuns, CursorAdvance, CursorKey, CursorRewind,
    LockLease, OutboxQuery, RealtimeCursor, RunFilter, RunPage, RunStore, RunStoreExt,
    ScheduledBlocks, StoreError, StoreResult, Transition, cursor_conflict, idempotency_conflict,
    parse_abi, parse_address, same_batch, state_conflict, validate_batch, validate_cursor_runs,
};
