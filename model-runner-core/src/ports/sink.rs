//! [`ResultSink`]: where records leave the system.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::model::Record;

/// A sink failure. Any error fails the run's attempt, which is then retried: records are never
/// dropped silently.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A topic name the sink refuses.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// Some records were not acknowledged; the batch MUST be sent again.
    #[error("delivery failed for {failed} of {total} records: {message}")]
    Delivery {
        /// Records not acknowledged.
        failed: usize,
        /// Records in the batch.
        total: usize,
        /// First cause.
        message: String,
    },
    /// The sink is unreachable; retry later.
    #[error("sink unavailable ({adapter}): {message}")]
    Unavailable {
        /// Adapter.
        adapter: &'static str,
        /// What happened (no secrets).
        message: String,
    },
    /// Any other backend failure.
    #[error("sink backend {adapter}: {source}")]
    Backend {
        /// Adapter.
        adapter: &'static str,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A destination for records, organised in topics (`<env>-<chain>-sink`).
///
/// # Contract
///
/// - `send` MUST return `Ok` only once every record of the batch is durable (acknowledged by the
///   broker, fsynced to disk, ...); on error, any subset may have been written and the caller
///   MUST send the batch again. Delivery is at-least-once: consumers deduplicate by
///   [`RecordKey`](crate::model::RecordKey), which is deterministic.
/// - Topics MUST be isolated.
/// - Records of one `send` SHOULD keep their order within a topic.
/// - An empty batch MUST succeed and write nothing.
/// - `flush` MUST make everything sent so far durable and MAY be called any number of times.
#[async_trait]
pub trait ResultSink: fmt::Debug + Send + Sync + 'static {
    /// Sends a batch to `topic`, waiting for durability.
    async fn send(&self, topic: &str, records: &[Record]) -> Result<(), SinkError>;
    /// Makes everything sent so far durable.
    async fn flush(&self) -> Result<(), SinkError>;
}

#[async_trait]
impl<T: ResultSink + ?Sized> ResultSink for Arc<T> {
    async fn send(&self, topic: &str, records: &[Record]) -> Result<(), SinkError> {
        (**self).send(topic, records).await
    }
    async fn flush(&self) -> Result<(), SinkError> {
        (**self).flush().await
    }
}

#[async_trait]
impl<T: ResultSink + ?Sized> ResultSink for Box<T> {
    async fn send(&self, topic: &str, records: &[Record]) -> Result<(), SinkError> {
        (**self).send(topic, records).await
    }
    async fn flush(&self) -> Result<(), SinkError> {
        (**self).flush().await
    }
}
