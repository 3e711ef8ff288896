//! Adapters chosen by URL: one `*_from_url` per port.
//!
//! | port | URLs |
//! |---|---|
//! | store | `memory://`, `sqlite://PATH` / `sqlite::memory:`, `postgres://...` (feature `postgres`) |
//! | queue | `memory://`, `amqp://...[?queue_type=quorum&delivery_limit=N&...]` / `amqps://...` (feature `rabbitmq`) |
//! | sink | `memory://`, `file://DIR`, `kafka://host:port[,host:port][?setting=value]` (feature `kafka`), `s3://bucket[/prefix]` / `parquet+file:///DIR` (feature `parquet`) |
//! | block source | `devnet://?...`, `file://PATH` |
//! | call cache | `memory://` (in-process, bounded), `redis://...` (feature `redis`) |
//! | progress board | `memory://` (in-process), `redis://...` (feature `redis`) |
//!
//! A scheme whose feature is not compiled in is an error that says which feature to enable.
//! Errors never contain a URL's password: see [`model_runner_core::redact`].

use std::sync::Arc;

use model_runner_core::Chain;
use model_runner_core::memory::{
    MemoryCallCache, MemoryProgressBoard, MemoryRunQueue, MemoryRunStore, MemorySink,
};
use model_runner_core::ports::{
    BlockSource, CallCache, CallCacheError, ProgressBoard, ProgressError, QueueError, ResultSink,
    RunQueue, RunStore, SinkError, SourceError, StoreError, StoreResult,
};

pub use model_runner_core::redact::redact_url;

fn scheme(url: &str) -> &str {
    url.split_once(':').map_or("", |(s, _)| s)
}

#[allow(dead_code)] // used only by feature-gated arms
fn disabled(feature: &str, url: &str) -> String {
    format!(
        "{} needs the `{feature}` feature, which this build does not have (rebuild with --features {feature})",
        redact_url(url)
    )
}

/// The run store at `url`; `migrate` applies schema migrations where the store has them.
/// With `migrate` false a SQLite store must already exist with its schema up to date (the error
/// says to run `model-runner migrate`); a PostgreSQL store is used as it is.
pub async fn store_from_url(url: &str, migrate: bool) -> StoreResult<Arc<dyn RunStore>> {
    let _ = migrate;
    match scheme(url) {
        "memory" => Ok(Arc::new(MemoryRunStore::new())),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(
            crate::sqlite::SqliteRunStore::connect_with(
                url,
                crate::sqlite::SqliteOptions { migrate },
            )
            .await?,
        )),
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(StoreError::InvalidInput(disabled("sqlite", url))),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(
            crate::postgres::PostgresRunStore::connect_with(
                url,
                crate::postgres::PostgresOptions {
                    migrate,
                    ..Default::default()
                },
            )
            .await?,
        )),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(StoreError::InvalidInput(disabled("postgres", url))),
        _ => Err(StoreError::InvalidInput(format!(
            "unsupported store URL {}: expected memory://, sqlite://PATH or postgres://...",
            redact_url(url)
        ))),
    }
}

/// The queue at `url`. `topology` names the queues to declare up front (brokers only).
///
/// An `amqp://` URL takes the adapter's options as query parameters, e.g.
/// `amqp://u:p@host/%2f?queue_type=quorum&delivery_limit=5&consumer_timeout_ms=21600000&prefetch=32`
/// (all of them: `rabbitmq::AmqpOptions::from_url`, feature
/// `rabbitmq`); an unknown or malformed parameter is an error naming it.
pub async fn queue_from_url(
    url: &str,
    topology: &[String],
) -> Result<Arc<dyn RunQueue>, QueueError> {
    let _ = topology;
    let invalid = |reason: String| QueueError::InvalidQueue {
        name: redact_url(url),
        reason,
    };
    match scheme(url) {
        "memory" => Ok(Arc::new(MemoryRunQueue::new())),
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => {
            let (url, options) = crate::rabbitmq::AmqpOptions::from_url(url)?;
            let q = crate::rabbitmq::AmqpRunQueue::connect(&url, options).await?;
            q.declare_topology(topology).await?;
            Ok(Arc::new(q))
        }
        #[cfg(not(feature = "rabbitmq"))]
        "amqp" | "amqps" => Err(invalid(disabled("rabbitmq", url))),
        _ => Err(invalid(
            "unsupported queue URL: expected memory:// or amqp://...".into(),
        )),
    }
}

/// The result sink at `url`.
pub async fn sink_from_url(url: &str) -> Result<Arc<dyn ResultSink>, SinkError> {
    match scheme(url) {
        "memory" => Ok(Arc::new(MemorySink::new())),
        "file" => Ok(Arc::new(crate::file_sink::FileSink::from_url(url).await?)),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Arc::new(crate::kafka::KafkaSink::from_url(url)?)),
        #[cfg(not(feature = "kafka"))]
        "kafka" => Err(SinkError::InvalidTopic {
            // The query may hold SASL credentials: leave it out.
            topic: redact_url(url.split('?').next().unwrap_or(url)),
            reason: disabled("kafka", url.split('?').next().unwrap_or(url)),
        }),
        #[cfg(feature = "parquet")]
        "s3" | "parquet+s3" | "parquet+file" => {
            Ok(Arc::new(crate::parquet::ParquetSink::from_url(url)?))
        }
        #[cfg(not(feature = "parquet"))]
        "s3" | "parquet+s3" | "parquet+file" => Err(SinkError::InvalidTopic {
            // The query may hold S3 credentials: leave it out.
            topic: redact_url(url.split('?').next().unwrap_or(url)),
            reason: disabled("parquet", url.split('?').next().unwrap_or(url)),
        }),
        _ => Err(SinkError::InvalidTopic {
            topic: redact_url(url),
            reason: "unsupported sink URL: expected file://DIR, memory://, kafka://host:port (feature `kafka`) or s3://bucket / parquet+file:///DIR (feature `parquet`)".into(),
        }),
    }
}

/// The block source of `chain` at `url`.
pub fn source_from_url(chain: Chain, url: &str) -> Result<Arc<dyn BlockSource>, SourceError> {
    match scheme(url) {
        "devnet" => Ok(Arc::new(crate::devnet::DevnetSource::from_url(chain, url)?)),
        "file" => Ok(Arc::new(crate::file_source::FileBlockSource::from_url(
            chain, url,
        )?)),
        #[cfg(feature = "jsonrpc")]
        "http" | "https" => Ok(Arc::new(crate::jsonrpc::JsonRpcSource::new(chain, url)?)),
        #[cfg(not(feature = "jsonrpc"))]
        "http" | "https" => Err(SourceError::Unsupported(disabled("jsonrpc", url))),
        _ => Err(SourceError::InvalidData(format!(
            "unsupported block source URL {} for chain {chain}: expected devnet://... or file://PATH",
            redact_url(url)
        ))),
    }
}

/// The call cache at `url`: `memory://` (this process only, bounded) or
/// `redis://...`/`rediss://...` (shared by every worker; feature `redis`).
pub async fn call_cache_from_url(url: &str) -> Result<Arc<dyn CallCache>, CallCacheError> {
    match scheme(url) {
        "memory" => Ok(Arc::new(MemoryCallCache::default())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(
            crate::redis_cache::RedisCallCache::connect(url).await?,
        )),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => Err(CallCacheError::Backend {
            adapter: "redis",
            message: disabled("redis", url),
        }),
        _ => Err(CallCacheError::Backend {
            adapter: "call cache",
            message: format!(
                "unsupported call cache URL {}: expected memory:// or redis://... (feature `redis`)",
                redact_url(url)
            ),
        }),
    }
}

/// The board of live run progress at `url`: `memory://` (workers and API of this process
/// only) or `redis://...`/`rediss://...` (shared by every process; feature `redis`).
pub async fn progress_board_from_url(url: &str) -> Result<Arc<dyn ProgressBoard>, ProgressError> {
    match scheme(url) {
        "memory" => Ok(Arc::new(MemoryProgressBoard::new())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(
            crate::redis_progress::RedisProgressBoard::connect(url).await?,
        )),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => Err(ProgressError::InvalidInput(disabled("redis", url))),
        _ => Err(ProgressError::InvalidInput(format!(
            "unsupported progress board URL {}: expected memory:// or redis://... (feature `redis`)",
            redact_url(url)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_leak() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/runs"),
            "postgres://app:***@db:5432/runs"
        );
        assert_eq!(redact_url("amqp://guest@mq/%2f"), "amqp://guest@mq/%2f");
        assert!(!redact_url("amqp://u:s3cret@[bad").contains("s3cret"));
    }

    #[tokio::test]
    async fn unknown_and_disabled_schemes_are_clear() {
        let err = store_from_url("mysql://u:pw@h/db", true).await.unwrap_err();
        assert!(err.to_string().contains("unsupported store URL"), "{err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
        let err = sink_from_url("gopher://bucket").await.unwrap_err();
        assert!(err.to_string().contains("unsupported sink URL"), "{err}");
        #[cfg(not(feature = "kafka"))]
        {
            let err = sink_from_url("kafka://h:9092?sasl.password=pw")
                .await
                .unwrap_err();
            assert!(err.to_string().contains("`kafka` feature"), "{err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
        #[cfg(not(feature = "parquet"))]
        {
            let err = sink_from_url("s3://bucket?aws_secret_access_key=pw")
                .await
                .unwrap_err();
            assert!(err.to_string().contains("`parquet` feature"), "{err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
        let err = source_from_url(Chain::new("ethereum").unwrap(), "ipfs://x").unwrap_err();
        assert!(err.to_string().contains("ethereum"), "{err}");
        #[cfg(not(feature = "rabbitmq"))]
        {
            let err = queue_from_url("amqp://guest:pw@localhost", &[])
                .await
                .unwrap_err();
            assert!(err.to_string().contains("`rabbitmq` feature"), "{err}");
            assert!(!err.to_string().contains("pw@"), "{err}");
        }
        assert!(store_from_url("memory://", true).await.is_ok());
    }

    #[tokio::test]
    async fn progress_board_urls_are_checked_without_leaking_passwords() {
        let err = progress_board_from_url("memcached://u:s3cret@h")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("unsupported progress board URL"),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cret"), "{err}");
        #[cfg(not(feature = "redis"))]
        {
            let err = progress_board_from_url("redis://u:s3cret@h:6379")
                .await
                .unwrap_err();
            assert!(err.to_string().contains("`redis` feature"), "{err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
        assert!(progress_board_from_url("memory://").await.is_ok());
    }
}
