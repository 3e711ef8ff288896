//! `redis://`: a [`ProgressBoard`] in Redis (feature `redis`), so the API and the CLI of any
//! process show the live progress of runs executing in every worker process.
//!
//! # URL
//!
//! ```text
//! redis://[user:password@]host[:port][/db][?prefix=model-runner:progress]
//! rediss://...   (TLS is not compiled in: an error says so)
//! ```
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `prefix` | `model-runner:progress` | key prefix; a run's key is `<prefix>:<run id>` |
//!
//! A run's entry is its [`RunProgress`] as JSON, written with `SET key value EX ttl` (the TTL
//! the worker gives, its lease, rounded up to whole seconds), so a dead worker's entries vanish
//! by themselves. Reads are `MGET`s of up to [`MGET_KEYS`] keys, pipelined in one round trip
//! whatever the number of runs. An entry that is not a progress (another program's key under
//! the prefix) reads as none, and is logged.
//!
//! An unknown parameter is an error naming it. The password never appears in errors, logs or
//! `Debug` (see `redis_connection`, shared with the call cache).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use model_runner_core::RunId;
use model_runner_core::ports::{
    ProgressBoard, ProgressError, ProgressResult, RunProgress, check_ttl,
};
use redis::aio::ConnectionManager;
use serde::Deserialize;

use crate::redis_connection::Connected;
use crate::redis_error::{Failure, RedisPortError, command_error, connect_for};

const ADAPTER: &str = "redis";

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "model-runner:progress";

/// The most keys one `MGET` of a read asks for; a read of more runs pipelines several.
pub const MGET_KEYS: usize = 512;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    prefix: Option<String>,
}

/// A [`ProgressBoard`] on a Redis server. See the module docs.
#[derive(Clone)]
pub struct RedisProgressBoard {
    /// The URL as errors and `Debug` show it.
    shown: String,
    prefix: String,
    connection: ConnectionManager,
}

impl fmt::Debug for RedisProgressBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisProgressBoard")
            .field("url", &self.shown)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisProgressBoard {
    /// Connects to the server at `url` (see the module docs); an unreachable server is
    /// [`ProgressError::Unavailable`] at once, a bad URL or parameter
    /// [`ProgressError::InvalidInput`]. The connection reconnects by itself afterwards.
    pub async fn connect(url: &str) -> ProgressResult<Self> {
        let Connected {
            shown,
            params,
            connection,
        } = connect_for::<Params, ProgressError>(url, "prefix=...").await?;
        Ok(Self {
            shown,
            prefix: params.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
            connection,
        })
    }

    /// The Redis key of `run`'s entry.
    pub fn redis_key(&self, run: RunId) -> String {
        format!("{}:{run}", self.prefix)
    }

    fn error(&self, what: &str, e: &redis::RedisError) -> ProgressError {
        command_error(&self.shown, what, e)
    }
}

impl RedisPortError for ProgressError {
    fn of(kind: Failure, message: String) -> Self {
        match kind {
            Failure::Invalid => ProgressError::InvalidInput(message),
            Failure::Unavailable => ProgressError::Unavailable {
                adapter: ADAPTER,
                message,
            },
            Failure::Backend => ProgressError::Backend {
                adapter: ADAPTER,
                message,
            },
        }
    }
}

#[async_trait]
impl ProgressBoard for RedisProgressBoard {
    /// One `SET … EX` per entry, pipelined: one round trip.
    async fn publish(&self, entries: &[(RunId, RunProgress)], ttl: Duration) -> ProgressResult<()> {
        check_ttl(ttl)?;
        if entries.is_empty() {
            return Ok(());
        }
        // Whole seconds, rounded up: an entry never vanishes before its TTL.
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let mut pipe = redis::pipe();
        for (run, progress) in entries {
            let value = serde_json::to_string(progress).map_err(|e| ProgressError::Backend {
                adapter: ADAPTER,
                message: format!("encoding the progress of run {run}: {e}"),
            })?;
            pipe.cmd("SET")
                .arg(self.redis_key(*run))
                .arg(value)
                .arg("EX")
                .arg(seconds)
                .ignore();
        }
        let mut c = self.connection.clone();
        pipe.query_async::<()>(&mut c)
            .await
            .map_err(|e| self.error("SET", &e))
    }

    async fn read(&self, runs: &[RunId]) -> ProgressResult<Vec<Option<RunProgress>>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for chunk in runs.chunks(MGET_KEYS) {
            let keys: Vec<String> = chunk.iter().map(|r| self.redis_key(*r)).collect();
            pipe.cmd("MGET").arg(keys);
        }
        let mut c = self.connection.clone();
        let answers: Vec<Vec<Option<String>>> = pipe
            .query_async(&mut c)
            .await
            .map_err(|e| self.error("MGET", &e))?;
        let values: Vec<Option<String>> = answers.into_iter().flatten().collect();
        if values.len() != runs.len() {
            return Err(ProgressError::Backend {
                adapter: ADAPTER,
                message: format!(
                    "{}: MGET of {} keys answered {} values",
                    self.shown,
                    runs.len(),
                    values.len()
                ),
            });
        }
        Ok(runs
            .iter()
            .zip(values)
            .map(|(run, value)| {
                let value = value?;
                serde_json::from_str(&value)
                    .inspect_err(|e| {
                        tracing::warn!(
                            run = %run,
                            key = %self.redis_key(*run),
                            error = %e,
                            "a progress entry in Redis is not a run progress; ignoring it"
                        )
                    })
                    .ok()
            })
            .collect())
    }
}
