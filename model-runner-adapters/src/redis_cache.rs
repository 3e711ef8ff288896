//! `redis://`: a [`CallCache`] in Redis (feature `redis`), so every worker of a deployment
//! shares the answers of block-pinned contract calls: one worker's `balanceOf` at a block is
//! every other worker's hit.
//!
//! # URL
//!
//! ```text
//! redis://[user:password@]host[:port][/db][?prefix=model-runner:call&ttl_s=604800]
//! rediss://...   (TLS is not compiled in: an error says so)
//! ```
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `prefix` | `model-runner:call` | key prefix; the key is `<prefix>:<chain>:<block hash>:<to>:<calldata>` |
//! | `ttl_s` | 604800 (7 days) | how long an answer is kept; answers never change (they are pinned to a block hash), the TTL only bounds memory |
//!
//! An unknown parameter is an error naming it. The password never appears in errors, logs or
//! `Debug`: the URL is read, connected and its failures described by the same code as the
//! other Redis adapters (`redis_connection`), through the one redactor
//! ([`model_runner_core::redact`]).

use std::fmt;
use std::time::Duration;

use alloy_primitives::Bytes;
use async_trait::async_trait;
use model_runner_core::ports::{CallCache, CallCacheError, CallKey};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::Deserialize;

use crate::redis_connection::Connected;
use crate::redis_error::{Failure, RedisPortError, command_error, connect_for};

const ADAPTER: &str = "redis";

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "model-runner:call";
/// Default time an answer is kept: 7 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    prefix: Option<String>,
    ttl_s: Option<u64>,
}

/// A [`CallCache`] on a Redis server. See the module docs.
#[derive(Clone)]
pub struct RedisCallCache {
    /// The URL as errors and `Debug` show it.
    shown: String,
    prefix: String,
    ttl_s: u64,
    connection: ConnectionManager,
}

impl fmt::Debug for RedisCallCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCallCache")
            .field("url", &self.shown)
            .field("prefix", &self.prefix)
            .field("ttl_s", &self.ttl_s)
            .finish_non_exhaustive()
    }
}

impl RedisCallCache {
    /// Connects to the server at `url` (see the module docs); an unreachable server is
    /// [`CallCacheError::Unavailable`] at once, so a misconfigured worker fails on start.
    /// The connection reconnects by itself afterwards.
    pub async fn connect(url: &str) -> Result<Self, CallCacheError> {
        let Connected {
            shown,
            params,
            connection,
        } = connect_for::<Params, CallCacheError>(url, "prefix=..., ttl_s=...").await?;
        Ok(Self {
            shown,
            prefix: params.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
            ttl_s: params.ttl_s.unwrap_or(DEFAULT_TTL.as_secs()).max(1),
            connection,
        })
    }

    /// The Redis key of `key`.
    pub fn redis_key(&self, key: &CallKey) -> String {
        format!("{}:{key}", self.prefix)
    }

    fn error(&self, what: &str, e: &redis::RedisError) -> CallCacheError {
        command_error(&self.shown, what, e)
    }
}

/// A wrong URL is a backend error here: the port has no variant of its own for it.
impl RedisPortError for CallCacheError {
    fn of(kind: Failure, message: String) -> Self {
        match kind {
            Failure::Unavailable => CallCacheError::Unavailable {
                adapter: ADAPTER,
                message,
            },
            Failure::Invalid | Failure::Backend => CallCacheError::Backend {
                adapter: ADAPTER,
                message,
            },
        }
    }
}

#[async_trait]
impl CallCache for RedisCallCache {
    async fn get(&self, key: &CallKey) -> Result<Option<Bytes>, CallCacheError> {
        let mut c = self.connection.clone();
        let v: Option<Vec<u8>> = c
            .get(self.redis_key(key))
            .await
            .map_err(|e| self.error("GET", &e))?;
        Ok(v.map(Bytes::from))
    }
    async fn put(&self, key: &CallKey, answer: &Bytes) -> Result<(), CallCacheError> {
        let mut c = self.connection.clone();
        c.set_ex::<_, _, ()>(self.redis_key(key), answer.as_ref(), self.ttl_s)
            .await
            .map_err(|e| self.error("SETEX", &e))
    }
}
