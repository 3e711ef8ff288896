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
//! `calls(reqs)` looks every key up first, answers the hits from the cache and sends only the
//! misses to the inner source, as one `inner.calls` (one JSON-RPC batch per chunk there); a
//! batch whose answers are all cached costs no request.
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
use futures::future::{BoxFuture, FutureExt};
use futures::{StreamExt, stream};

use crate::chain::Chain;
use crate::data::CallRequest;
use crate::ports::{BlockSource, CALLS_IN_FLIGHT, SourceError};

use super::source::block_source_reading;

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

    /// Counts `n` hits or misses.
    fn count(&self, hit: bool, n: u64) {
        if n == 0 {
            return;
        }
        let (counter, result) = if hit {
            (&self.hits, "hit")
        } else {
            (&self.misses, "miss")
        };
        counter.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(
            "model_runner_call_cache_total",
            "chain" => self.inner.chain().to_string(),
            "result" => result,
        )
        .increment(n);
    }

    /// The cached answer of `key`; a cache failure is logged and reads as a miss.
    async fn cached(&self, key: &CallKey) -> Option<Bytes> {
        match self.cache.get(key).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "call cache read failed; asking the source");
                None
            }
        }
    }

    /// Stores a successful answer; a cache failure is logged.
    async fn store(&self, key: &CallKey, answer: &Bytes) {
        if let Err(e) = self.cache.put(key, answer).await {
            tracing::warn!(error = %e, "call cache write failed");
        }
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

block_source_reading!(inner, impl[S: BlockSource] for CachedCalls<S> {
    async fn call(&self, request: &CallRequest) -> Result<Bytes, SourceError> {
        let key = CallKey::new(self.inner.chain(), request);
        if let Some(answer) = self.cached(&key).await {
            self.count(true, 1);
            return Ok(answer);
        }
        self.count(false, 1);
        let answer = self.inner.call(request).await?;
        self.store(&key, &answer).await;
        Ok(answer)
    }
    /// Cached answers from the cache; the misses to the inner source as one `calls`, and its
    /// successful answers stored.
    async fn calls(&self, requests: &[CallRequest]) -> Vec<Result<Bytes, SourceError>> {
        let keys: Vec<CallKey> = requests
            .iter()
            .map(|r| CallKey::new(self.inner.chain(), r))
            .collect();
        // Boxed futures, collected first: the async-trait future must be `Send` for every
        // lifetime, which a stream mapping a closure cannot show the compiler.
        let lookups: Vec<BoxFuture<'_, Option<Bytes>>> =
            keys.iter().map(|k| self.cached(k).boxed()).collect();
        let mut answers: Vec<Option<Result<Bytes, SourceError>>> = stream::iter(lookups)
            .buffered(CALLS_IN_FLIGHT)
            .map(|hit| hit.map(Ok))
            .collect()
            .await;
        let missed: Vec<usize> = (0..requests.len())
            .filter(|&i| answers[i].is_none())
            .collect();
        self.count(true, (requests.len() - missed.len()) as u64);
        self.count(false, missed.len() as u64);
        if !missed.is_empty() {
            let asked: Vec<CallRequest> = missed.iter().map(|&i| requests[i].clone()).collect();
            let fresh = self.inner.calls(&asked).await;
            let got = fresh.len();
            let stores: Vec<BoxFuture<'_, ()>> = missed
                .iter()
                .zip(&fresh)
                .filter_map(|(&i, answer)| {
                    let answer = answer.as_ref().ok()?;
                    Some(self.store(&keys[i], answer).boxed())
                })
                .collect();
            stream::iter(stores)
                .buffer_unordered(CALLS_IN_FLIGHT)
                .collect::<()>()
                .await;
            for (&i, answer) in missed.iter().zip(fresh) {
                answers[i] = Some(answer);
            }
            for &i in &missed[got.min(missed.len())..] {
                answers[i] = Some(Err(SourceError::InvalidData(format!(
                    "the source answered {got} of {} calls",
                    missed.len()
                ))));
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every request has an answer"))
            .collect()
    }
});

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
        /// The size of each `calls` the source got.
        batches: Mutex<Vec<usize>>,
        fail: std::sync::atomic::AtomicBool,
    }

    block_source_reading!(inner, impl for Counting {
        async fn call(&self, request: &CallRequest) -> Result<Bytes, SourceError> {
            self.calls.lock().unwrap().push(request.clone());
            if request.data.first() == Some(&0xff) && self.fail.load(Ordering::SeqCst) {
                return Err(SourceError::Reverted("execution reverted".into()));
            }
            let mut out = vec![request.block_hash[31]];
            out.extend_from_slice(&request.data);
            Ok(out.into())
        }
        async fn calls(&self, requests: &[CallRequest]) -> Vec<Result<Bytes, SourceError>> {
            self.batches.lock().unwrap().push(requests.len());
            let mut out = Vec::new();
            for r in requests {
                out.push(self.call(r).await);
            }
            out
        }
    });

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
            batches: Mutex::new(vec![]),
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

    /// The answers of `calls` as `Ok` bytes, or `"reverted"`.
    fn shown(answers: Vec<Result<Bytes, SourceError>>) -> Vec<Result<Vec<u8>, &'static str>> {
        answers
            .into_iter()
            .map(|a| match a {
                Ok(b) => Ok(b.to_vec()),
                Err(SourceError::Reverted(_)) => Err("reverted"),
                Err(e) => panic!("{e:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_sends_only_its_misses_as_one_batch_and_a_warm_batch_sends_nothing() {
        let source = cached();
        // Two of the five answers are cached already.
        source.call(&request(1, &[2])).await.unwrap();
        source.call(&request(1, &[4])).await.unwrap();
        let batch: Vec<CallRequest> = (1..=5).map(|i| request(1, &[i])).collect();
        let want: Vec<Result<Vec<u8>, &str>> = (1..=5).map(|i| Ok(vec![1, i])).collect();
        assert_eq!(shown(source.calls(&batch).await), want);
        assert_eq!(
            *source.inner.batches.lock().unwrap(),
            [3],
            "the three misses, in one batch"
        );
        let sent: Vec<Bytes> = source.inner.calls.lock().unwrap()[2..]
            .iter()
            .map(|r| r.data.clone())
            .collect();
        assert_eq!(sent, [[1u8], [3], [5]].map(|d| Bytes::copy_from_slice(&d)));
        assert_eq!(source.stats(), CallCacheStats { hits: 2, misses: 5 });

        // Warm: every answer from the cache, no request to the source.
        assert_eq!(shown(source.calls(&batch).await), want);
        assert_eq!(*source.inner.batches.lock().unwrap(), [3]);
        assert_eq!(source.inner.calls.lock().unwrap().len(), 5);
        assert_eq!(source.stats(), CallCacheStats { hits: 7, misses: 5 });
        assert!(source.calls(&[]).await.is_empty());
        assert_eq!(*source.inner.batches.lock().unwrap(), [3]);
    }

    #[tokio::test]
    async fn a_revert_in_a_batch_is_that_element_s_answer_and_is_not_cached() {
        let source = cached();
        let batch = [request(2, &[1]), request(2, &[0xff]), request(2, &[3])];
        for round in 0..2 {
            assert_eq!(
                shown(source.calls(&batch).await),
                [Ok(vec![2, 1]), Err("reverted"), Ok(vec![2, 3])],
                "round {round}"
            );
        }
        // The second round asked the source for the reverted call alone.
        assert_eq!(*source.inner.batches.lock().unwrap(), [3, 1]);
        assert_eq!(source.stats(), CallCacheStats { hits: 2, misses: 4 });
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
