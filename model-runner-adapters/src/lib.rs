//! # model-runner-adapters
//!
//! Adapters for the ports of `model-runner-core`, each behind a feature so the embedded default
//! build compiles no server client it does not use:
//!
//! | port | adapter | feature | URL |
//! |---|---|---|---|
//! | `RunStore` | SQLite (embedded) | `sqlite` (default) | `sqlite://path.db` |
//! | `RunStore` | PostgreSQL | `postgres` | `postgres://...` |
//! | `RunQueue` | RabbitMQ | `rabbitmq` | `amqp://...` |
//! | `ResultSink` | Kafka (rdkafka) | `kafka` | `kafka://host:port[,host:port][?librdkafka.setting=value]` |
//! | `ResultSink` | Parquet on object storage | `parquet` | `s3://bucket[/prefix]`, `parquet+file:///dir` |
//! | `CallCache` | Redis | `redis` | `redis://[user:pass@]host[:port][/db][?prefix=..&ttl_s=..]` |
//! | `ProgressBoard` | Redis | `redis` | `redis://[user:pass@]host[:port][/db][?prefix=..]` |

pub mod connect;
pub mod devnet;
pub mod ethereum_json;
pub mod file_sink;
pub mod file_source;
#[cfg(feature = "jsonrpc")]
pub mod jsonrpc;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "parquet")]
pub mod parquet;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis_cache;
#[cfg(feature = "redis")]
mod redis_connection;
#[cfg(feature = "redis")]
mod redis_error;
#[cfg(feature = "redis")]
pub mod redis_progress;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
