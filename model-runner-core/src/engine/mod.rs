//! The engine: three loops written against the ports.
//!
//! - [`Scheduler`] turns realtime subscriptions and expired leases into store changes (runs
//!   created `pending` in the outbox, expired runs sent back for retry); [`submit_backfill`]
//!   turns a backfill request into one run per chunk.
//! - [`Enqueuer`] relays the outbox: publishes due runs to their queues and marks them `queued`
//!   once the broker confirmed.
//! - [`Worker`] consumes queues, claims runs with a lease, executes models and delivers records.
//!
//! Each loop has a `run(self, shutdown)` that returns when `shutdown` is cancelled, so a
//! process can run any subset of them (`model-runner all` runs all three).

mod enqueuer;
mod group_commit;
pub mod instruments;
mod runner;
mod scheduler;
pub mod settlement;
mod versions;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::chain::Chain;
use crate::clock::Clock;
use crate::model::{ModelRegistry, RegistryError, SchemaError};
use crate::ports::{
    BlockSource, QueueError, ResultSink, RunQueue, RunStore, SinkError, SourceError, StoreError,
};
use crate::routing::{Routing, RoutingError};

pub use enqueuer::{Enqueuer, EnqueuerConfig};
pub use runner::{Parts, Runner, RunnerBuilder};
pub use scheduler::{
    BackfillRequest, DEFAULT_MAX_BLOCKS_PER_RUN, DEFAULT_MAX_REORG_DEPTH,
    DEFAULT_MAX_RUNS_PER_BACKFILL, RealtimeSubscription, Scheduler, SchedulerConfig,
    submit_backfill,
};
pub use tokio_util::sync::CancellationToken;
pub use versions::{RerunRequest, VersionCoverage, rerun, version_coverage};
pub use worker::{Worker, WorkerConfig, WorkerStats};

/// What every loop needs: the ports, the models and the routing.
#[derive(Debug, Clone)]
pub struct EngineDeps {
    /// Run state.
    pub store: Arc<dyn RunStore>,
    /// Broker.
    pub queue: Arc<dyn RunQueue>,
    /// Record destination.
    pub sink: Arc<dyn ResultSink>,
    /// One block source per chain.
    pub sources: HashMap<Chain, Arc<dyn BlockSource>>,
    /// Models by name.
    pub models: Arc<ModelRegistry>,
    /// Queue routing.
    pub routing: Routing,
    /// Limits every path that makes runs enforces.
    pub limits: Limits,
    /// The wall clock every loop decides by (leases, heartbeats, retry times, leadership, the
    /// outbox): [`SystemClock`](crate::clock::SystemClock) in production, a
    /// [`TokioClock`](crate::clock::TokioClock) in tests that pause time.
    pub clock: Arc<dyn Clock>,
}

/// Limits enforced wherever runs are made ([`submit_backfill`], realtime scheduling), so the
/// library, the API and the CLI refuse the same requests with the same words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most blocks one run may cover: a run's records are held until it is sent, so one
    /// run of a billion blocks would exhaust a worker. A backfill whose chunks would be larger
    /// is refused; realtime runs are cut at this size.
    pub max_blocks_per_run: u64,
    /// The most runs one backfill (or API submission) may create, so a typo cannot flood the
    /// store; the engine, the CLI and the API refuse larger ones with the same number.
    pub max_runs_per_backfill: u64,
}

impl Default for Limits {
    /// [`DEFAULT_MAX_BLOCKS_PER_RUN`] blocks per run, [`DEFAULT_MAX_RUNS_PER_BACKFILL`] runs per
    /// backfill.
    fn default() -> Self {
        Self {
            max_blocks_per_run: DEFAULT_MAX_BLOCKS_PER_RUN,
            max_runs_per_backfill: DEFAULT_MAX_RUNS_PER_BACKFILL,
        }
    }
}

impl EngineDeps {
    /// The source of `chain`, or an error naming the chains that have one.
    pub fn source(&self, chain: &Chain) -> Result<&Arc<dyn BlockSource>, EngineError> {
        self.sources.get(chain).ok_or_else(|| {
            let mut known: Vec<_> = self.sources.keys().map(Chain::to_string).collect();
            known.sort();
            EngineError::UnknownChain {
                chain: chain.to_string(),
                known: known.join(", "),
            }
        })
    }

    /// Validates the record schema of every registered model that declares one and declares it
    /// to the sink ([`ResultSink::declare_schema`]); returns how many were declared. The
    /// [`Worker`] calls this when it starts, so only code that sends records by other means
    /// needs to.
    pub async fn declare_schemas(&self) -> Result<usize, EngineError> {
        let mut declared = 0;
        for model in self.models.iter() {
            let spec = model.spec();
            let Some(schema) = spec.record_schema() else {
                continue;
            };
            schema
                .validate()
                .map_err(|error| EngineError::InvalidSchema {
                    model: spec.name().to_owned(),
                    error,
                })?;
            self.sink
                .declare_schema(spec.model_version(), schema)
                .await?;
            declared += 1;
        }
        Ok(declared)
    }
}

/// An engine failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Queue failure.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Block source failure.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Unknown or unsupported model.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Sink failure (declaring record schemas).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A model declares an invalid record schema.
    #[error("model {model}: {error}")]
    InvalidSchema {
        /// The model.
        model: String,
        /// What is wrong, naming the field.
        error: SchemaError,
    },
    /// Bad adhoc slot.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// A chain without a configured block source.
    #[error("unknown chain {chain:?}: block sources are configured for {known}")]
    UnknownChain {
        /// The chain.
        chain: String,
        /// Chains with a source.
        known: String,
    },
    /// Bad request.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A chain reorganisation deeper than the subscription's limit: the realtime subscription
    /// stops rather than rewrite that much history.
    #[error(
        "realtime {model} on {chain}: the node's chain no longer holds scheduled block {block}, and no recorded block within {max_depth} blocks of the cursor is on it: a reorganisation deeper than the limit (raise max_reorg_depth, --max-reorg-depth, only if the node is right)"
    )]
    ReorgTooDeep {
        /// The subscription's model.
        model: String,
        /// Its chain.
        chain: String,
        /// The newest scheduled block the node no longer has.
        block: u64,
        /// The limit.
        max_depth: u64,
    },
}

/// Exponential backoff with jitter between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the second attempt.
    pub base: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Relative jitter, `0.0..=1.0`: the delay is scaled by a random factor in `1 ± jitter`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 5 s, doubling, at most 10 minutes, ±20 %.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            max: Duration::from_secs(600),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The delay after attempt `attempt` (1-based) failed.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            rand::rng().random_range(1.0 - jitter..=1.0 + jitter)
        } else {
            1.0
        };
        exp.mul_f64(factor).min(self.max)
    }

    /// When the next attempt may start if attempt `attempt` failed at `now`.
    pub fn retry_at(&self, attempt: u32, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.delay(attempt)).unwrap_or(chrono::Duration::MAX)
    }
}

/// Test support: waits until `done` holds, polling every 5 ms on tokio's clock (so a test on
/// paused time does not wait at all), and fails the test naming `what` once `within` passed.
#[cfg(test)]
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.0,
        };
        let d: Vec<_> = (1..=8).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.delay(500), Duration::from_secs(60));
        let j = RetryPolicy { jitter: 0.2, ..p };
        for _ in 0..100 {
            let ms = j.delay(3).as_millis();
            assert!((3200..=4800).contains(&ms), "{ms}");
        }
    }
}
