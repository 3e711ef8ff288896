//! [`ResultSink`]: where records leave the system.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::chain::{BlockRange, Chain};
use crate::model::{ModelVersion, PayloadError, Record, RecordSchema};
use crate::run::RunId;

/// The run attempt whose records one [`ResultSink::send_run`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// Where its records go (see [`check_topic`]), e.g. `prod-ethereum-sink`.
    pub topic: String,
    /// The run.
    pub run_id: RunId,
    /// Its model.
    pub model: String,
    /// The model version the records were made with.
    pub model_version: String,
    /// Its chain.
    pub chain: Chain,
    /// The blocks the run covered, whether or not each produced records.
    pub range: BlockRange,
}

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
    /// A record schema the sink cannot store: invalid, or different from the schema already
    /// declared for the same model version. Retrying does not help; fix the model (or bump its
    /// version when its schema changes).
    #[error("record schema of {model} {version} refused: {reason}")]
    InvalidSchema {
        /// Model name.
        model: String,
        /// Model version.
        version: String,
        /// Why.
        reason: String,
    },
    /// A record that does not match the schema declared for its model version. Like any error,
    /// the batch is not delivered; retrying does not help, since the model emits the record.
    #[error("record {key} does not match the declared schema of {model} {version}: {mismatch}")]
    SchemaMismatch {
        /// Model name.
        model: String,
        /// Model version.
        version: String,
        /// The record's key (`model:chain:block:position`).
        key: String,
        /// The field and what was expected and found (boxed: keeps every `Result` small).
        mismatch: Box<PayloadError>,
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

/// The one rule for a topic name that becomes a file name, an object path segment or a Kafka
/// topic: 1 to `max_len` characters of ASCII letters, digits, `-`, `_` and `.`, not starting
/// with `.` (so never `.` or `..`). `sink` names the sink in the refusal ("file", "Kafka").
pub fn check_topic(topic: &str, sink: &str, max_len: usize) -> Result<(), SinkError> {
    let ok = !topic.is_empty()
        && topic.len() <= max_len
        && !topic.starts_with('.')
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SinkError::InvalidTopic {
            topic: topic.chars().take(64).collect(),
            reason: format!(
                "a {sink} sink topic is 1-{max_len} characters of letters, digits, '-', '_' and '.', not starting with '.'"
            ),
        })
    }
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
///
/// ## Record schemas
///
/// Before sending records of a model version whose model declares a
/// [`RecordSchema`](crate::model::RecordSchema), the engine calls `declare_schema` for it
/// (the worker declares every registered model's schema when it starts, and again before its
/// first send if that failed). Records of a model version never declared are schemaless.
///
/// - `declare_schema` MUST be idempotent: declaring the same schema again succeeds.
/// - After `declare_schema`, records of that `(model, version)` that conform to the schema MUST
///   be accepted and read back unchanged, like any record; records of undeclared models MUST
///   still be accepted.
/// - A sink MAY ignore schemas (the default implementation does: JSON lines and Kafka carry the
///   payload as JSON). A sink that derives a storage schema from them (typed columns) MUST
///   refuse a schema it cannot store, or a different schema for an already declared
///   `(model, version)`, with [`SinkError::InvalidSchema`], and MUST refuse a nonconforming
///   record of a declared version with [`SinkError::SchemaMismatch`] naming the field, never
///   dropping or coercing it.
/// - `declare_schema` SHOULD be cheap (it runs at worker start): a sink that registers schemas
///   remotely returns [`SinkError::Unavailable`] when it cannot, and the declaration is retried.
///
/// ## Readiness
///
/// `ping` is the readiness probe behind `GET /readyz`. `flush` is no such probe: an idle
/// producer has nothing to flush and succeeds whether or not its broker is reachable.
///
/// - `ping` MUST return `Ok` only when the destination answered a request made by this call
///   (a broker's cluster metadata, an object store's listing, a directory accepting a new
///   file), and MUST fail (with [`SinkError::Unavailable`] when it cannot be reached)
///   otherwise.
/// - `ping` MUST NOT write records or change what a reader of any topic sees; a local sink MAY
///   create and remove a hidden probe file.
/// - `ping` SHOULD bound its own wait to a couple of seconds; callers MUST still bound it with
///   a timeout of their own.
/// - Its error MUST NOT contain secrets (passwords, SASL or TLS settings).
/// - A sink with nothing to check (in-memory) MAY keep the default, which is `Ok`.
#[async_trait]
pub trait ResultSink: fmt::Debug + Send + Sync + 'static {
    /// Sends a batch to `topic`, waiting for durability.
    async fn send(&self, topic: &str, records: &[Record]) -> Result<(), SinkError>;
    /// Sends every record one attempt of `run` produced (possibly none) to `run.topic`,
    /// waiting for durability: what the worker calls. Every record MUST belong to `run`. A sink
    /// that lays out its output per run (files per run) SHOULD name it by `run.range` rather
    /// than by the blocks that happened to produce records, and MAY record a run that produced
    /// none. The default sends the records with [`send`](Self::send).
    async fn send_run(&self, run: &RunOutput, records: &[Record]) -> Result<(), SinkError> {
        self.send(&run.topic, records).await
    }
    /// Makes everything sent so far durable.
    async fn flush(&self) -> Result<(), SinkError>;
    /// Declares the payload schema of `model` (a name at a version), before its records are
    /// sent. The default accepts and ignores it.
    async fn declare_schema(
        &self,
        model: ModelVersion<'_>,
        schema: &RecordSchema,
    ) -> Result<(), SinkError> {
        let _ = (model, schema);
        Ok(())
    }
    /// Readiness probe: whether the destination answers now (see the contract). The default,
    /// for sinks with nothing to check, is `Ok`.
    async fn ping(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// `Arc<S>` and `Box<S>` are sinks too, so wrappers compose.
macro_rules! forward_result_sink {
    ($($pointer:ident),*) => {$(
        #[async_trait]
        impl<T: ResultSink + ?Sized> ResultSink for $pointer<T> {
            async fn send(&self, topic: &str, records: &[Record]) -> Result<(), SinkError> {
                (**self).send(topic, records).await
            }
            async fn send_run(&self, run: &RunOutput, records: &[Record]) -> Result<(), SinkError> {
                (**self).send_run(run, records).await
            }
            async fn flush(&self) -> Result<(), SinkError> {
                (**self).flush().await
            }
            async fn declare_schema(
                &self,
                model: ModelVersion<'_>,
                schema: &RecordSchema,
            ) -> Result<(), SinkError> {
                (**self).declare_schema(model, schema).await
            }
            async fn ping(&self) -> Result<(), SinkError> {
                (**self).ping().await
            }
        }
    )*};
}
forward_result_sink!(Arc, Box);

#[cfg(test)]
mod tests {
    use super::check_topic;

    #[test]
    fn topics_are_plain_names() {
        for (topic, ok) in [
            ("prod-ethereum-sink", true),
            ("a.b_c-1", true),
            (&"x".repeat(20) as &str, true),
            (&"x".repeat(21), false),
            ("", false),
            (".", false),
            ("..", false),
            (".hidden", false),
            ("a/b", false),
            ("a b", false),
            ("é", false),
        ] {
            let got = check_topic(topic, "test", 20);
            assert_eq!(got.is_ok(), ok, "{topic:?}: {got:?}");
            if let Err(e) = got {
                assert!(e.to_string().contains("a test sink topic is 1-20"), "{e}");
            }
        }
    }
}
