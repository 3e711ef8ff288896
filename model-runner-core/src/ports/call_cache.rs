//! [`CallCache`]: answers of block-pinned contract calls, kept so that reading the same state
//! twice costs one request to the node; and [`CachedCalls`], the [`BlockSource`] wrapper that
//! puts a cache in front of any source without the worker or the models knowing.
//!
//! ```text
//! model ──call(req)──▶ CachedCalls ──get(key)──▶ CallCache ── hit ──▶ answer
//!                          │  miss
//!                          ▼
//!                     inner.call(req) ── Ok ──▶ put(key, answer) ──▶ answer
//!                                     └─ Err ─▶ the error, not stored
//! ```
//!
//! A call is pinned to a block hash (EIP-1898), so its answer never changes and the key
//! (chain, block hash, to, calldata) needs no expiry for correctness; adapters bound their size
//! (the in-process one by bytes, Redis by a TTL). The in-process adapter is
//! [`MemoryCallCache`](crate::memory::MemoryCallCache); Redis (shared by every worker) is in
//! `model-runner-adapters` (feature `redis`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alloy_primitives::{Address, B256, Bytes};
use async_trait::async_trait;

use crate::chain::{BlockRange, Chain};
use crate::data::{Block, BlockHead, BlockRef, CallRequest};
use crate::ports::{BlockSource, SourceError};

/// What identifies a call's answer: chain, block hash, contract and calldata.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallKey {
    /// Chain.
    pub chain: Chain,
    /// The block whose state was read.
    pub block_hash: B256,
    /// Contract.
    pub to: Address,
    /// ABI-encoded call data.
    pub data: Bytes,
}

impl CallKey {
    /// The key of `request` on `chain`.
    pub fn new(chain: &Chain, request: &CallRequest) -> Self {
        Self {
            chain: chain.clone(),
            block_hash: request.block_hash,
            to: request.to,
            data: request.data.clone(),
        }
    }
}

impl fmt::Display for CallKey {
    /// `chain:0xblockhash:0xto:0xdata`, lowercase: one string per key, for key-value stores.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{:#x}:{:#x}:{}",
            self.chain, self.block_hash, self.to, self.data
        )
    }
}

/// A call cache failure. [`CachedCalls`] never fails a call because of one: it logs it and
/// reads the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallCacheError {
    /// The cache server is unreachable or busy.
    #[error("call cache unavailable ({adapter}): {message}")]
    Unavailable {
        /// Adapter.
        adapter: &'static str,
        /// What happened (no secrets).
        message: String,
    },
    /// Any other backend failure.
    #[error("call cache {adapter}: {message}")]
    Backend {
        /// Adapter.
        adapter: &'static str,
        /// What happened (no secrets).
        message: String,
    },
}

/// Answers of contract calls by [`CallKey`].
///
/// # Contract
///
/// - `get` of a key MUST give the bytes last `put` for it, or `None` when it holds none (never
///   put, or forgotten: a cache MAY forget entries to stay within its bounds).
/// - Keys that differ in any of chain, block hash, contract or calldata MUST be distinct entries.
/// - Empty answers are answers: `put(k, [])` then `get(k)` MUST give `Some([])`.
#[async_trait]
pub trait CallCache: fmt::Debug + Send + Sync + 'static {
    /// The answer stored for `key`.
    async fn get(&self, key: &CallKey) -> Result<Option<Bytes>, CallCacheError>;
    /// Stores `answer` for `key`.
    async fn put(&self, key: &CallKey, answer: &Bytes) -> Result<(), CallCacheError>;
}

#[async_trait]
impl<T: CallCache + ?Sized> CallCache for Arc<T> {
    async fn get(&self, key: &CallKey) -> Result<Option<Bytes>, CallCacheError> {
        (**self).get(key).await
    }
    async fn put(&self, key: &CallKey, answer: &Bytes) -> Result<(), CallCacheError> {
        (**self).put(key, answer).await
    }
}

/// Calls answered from the cache and calls that went to the source, since the wrapper was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCacheStats {
    /// Answered from the cache.
    pub hits: u64,
    /// Sent to the source (including those that failed).
    pub misses: u64,
}

/// A [`BlockSource`] whose `call`s go through a [`CallCache`]; `head` and `blocks` go straight
/// to the inner source.
///
/// Only successful answers are stored: an error (a revert included) is returned and asked
/// again next time. A cache failure is logged and the call goes to the source.
pub struct CachedCalls<S> {
    inner: S,
    cache: Arc<dyn CallCache>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<S: BlockSource> CachedCalls<S> {
    /// `inner` with its calls cached in `cache`.
    pub fn new(inner: S, cache: Arc<dyn CallCache>) -> Self {
        Self {
            inner,
            cache,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> CallCacheStats {
        CallCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    fn count(&self, hit: bool) {
        let (counter, result) = if hit {
            (&self.hits, "hit")
        } else {
            (&self.misses, "miss")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            "model_runner_call_cache_total",
            "chain" => self.inner.chain().to_string(),
            "result" => result,
        )
        .increment(1);
    }
}

impl<S: fmt::Debug> fmt::Debug for CachedCalls<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedCalls")
            .field("inner", &self.inner)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: BlockSource> BlockSource for CachedCalls<S> {
    fn chain(&self) -> &Chain {
        self.inner.chain()
    }
    async fn head(&self) -> Result<BlockHead, SourceError> {
        self.inner.head().await
    }
    async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
        self.inner.blocks(range).await
    }
    async fn block_ref(&self, number: u64) -> Result<BlockRef, SourceError> {
        self.inner.block_ref(number).await
    }
    async fn call(&self, request: &CallRequest) -> Result<Bytes, SourceError> {
        let key = CallKey::new(self.inner.chain(), request);
        match self.cache.get(&key).await {
            Ok(Some(answer)) => {
                self.count(true);
                return Ok(answer);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "call cache read failed; asking the source"),
        }
        self.count(false);
        let answer = self.inner.call(request).await?;
        if let Err(e) = self.cache.put(&key, &answer).await {
            tracing::warn!(error = %e, "call cache write failed");
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::memory::{MemoryBlockSource, MemoryCallCache};

    /// Answers every call with the block hash's last byte and the calldata, counting calls;
    /// calldata starting with 0xff fails (a revert) while `fail` is set.
    #[derive(Debug)]
    struct Counting {
        inner: MemoryBlockSource,
        calls: Mutex<Vec<CallRequest>>,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl BlockSource for Counting {
        fn chain(&self) -> &Chain {
            self.inner.chain()
        }
        async fn head(&self) -> Result<BlockHead, SourceError> {
            self.inner.head().await
        }
        async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
            self.inner.blocks(range).await
        }
        async fn call(&self, request: &CallRequest) -> Result<Bytes, SourceError> {
            self.calls.lock().unwrap().push(request.clone());
            if request.data.first() == Some(&0xff) && self.fail.load(Ordering::SeqCst) {
                return Err(SourceError::Reverted("execution reverted".into()));
            }
            let mut out = vec![request.block_hash[31]];
            out.extend_from_slice(&request.data);
            Ok(out.into())
        }
    }

    fn request(hash: u8, data: &[u8]) -> CallRequest {
        CallRequest {
            to: Address::repeat_byte(0xAA),
            data: Bytes::copy_from_slice(data),
            block: 7,
            block_hash: B256::with_last_byte(hash),
        }
    }

    fn cached() -> CachedCalls<Arc<Counting>> {
        let chain = Chain::new("ethereum").unwrap();
        let inner = Arc::new(Counting {
            inner: MemoryBlockSource::new(chain, vec![]),
            calls: Mutex::new(vec![]),
            fail: true.into(),
        });
        CachedCalls::new(inner, Arc::new(MemoryCallCache::default()))
    }

    #[tokio::test]
    async fn a_repeated_call_is_answered_from_the_cache() {
        let source = cached();
        let first = source.call(&request(1, &[1, 2])).await.unwrap();
        for _ in 0..5 {
            assert_eq!(source.call(&request(1, &[1, 2])).await.unwrap(), first);
        }
        assert_eq!(first.as_ref(), [1, 1, 2]);
        assert_eq!(source.stats(), CallCacheStats { hits: 5, misses: 1 });
        assert_eq!(source.inner.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn calls_are_pinned_by_block_hash() {
        let source = cached();
        // Same number, same contract and calldata, two hashes (two branches): two entries.
        let a = source.call(&request(1, &[9])).await.unwrap();
        let b = source.call(&request(2, &[9])).await.unwrap();
        assert_ne!(a, b);
        assert_eq!(source.call(&request(1, &[9])).await.unwrap(), a);
        assert_eq!(source.call(&request(2, &[9])).await.unwrap(), b);
        assert_eq!(source.stats(), CallCacheStats { hits: 2, misses: 2 });
        // Other calldata at a cached hash is another entry too.
        source.call(&request(1, &[8])).await.unwrap();
        assert_eq!(source.stats().misses, 3);
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let source = cached();
        for _ in 0..3 {
            let err = source.call(&request(1, &[0xff])).await.unwrap_err();
            assert!(matches!(err, SourceError::Reverted(_)), "{err:?}");
        }
        assert_eq!(source.stats(), CallCacheStats { hits: 0, misses: 3 });
        // Once the call succeeds it is stored.
        source.inner.fail.store(false, Ordering::SeqCst);
        let ok = source.call(&request(1, &[0xff])).await.unwrap();
        assert_eq!(source.call(&request(1, &[0xff])).await.unwrap(), ok);
        assert_eq!(source.stats(), CallCacheStats { hits: 1, misses: 4 });
        assert_eq!(source.inner.calls.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_failing_cache_falls_back_to_the_source() {
        #[derive(Debug)]
        struct Down;
        #[async_trait]
        impl CallCache for Down {
            async fn get(&self, _: &CallKey) -> Result<Option<Bytes>, CallCacheError> {
                Err(CallCacheError::Unavailable {
                    adapter: "test",
                    message: "down".into(),
                })
            }
            async fn put(&self, _: &CallKey, _: &Bytes) -> Result<(), CallCacheError> {
                Err(CallCacheError::Unavailable {
                    adapter: "test",
                    message: "down".into(),
                })
            }
        }
        let plain = cached();
        let source = CachedCalls::new(plain.inner.clone(), Arc::new(Down));
        assert_eq!(
            source.call(&request(3, &[4])).await.unwrap().as_ref(),
            [3, 4]
        );
        assert_eq!(source.stats(), CallCacheStats { hits: 0, misses: 1 });
    }

    #[test]
    fn keys_print_every_component() {
        let key = CallKey::new(&Chain::new("ethereum").unwrap(), &request(1, &[0xAB]));
        assert_eq!(
            key.to_string(),
            format!(
                "ethereum:{:#x}:0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:0xab",
                B256::with_last_byte(1)
            )
        );
    }
}
