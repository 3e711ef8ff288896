//! The Redis call cache against a real server found at `REDIS_URL` (`redis://127.0.0.1:6379`).
//! Unset: each test says it is not configured and passes. Set but unreachable: the tests fail.
//! Every test uses its own key prefix, so the tests run in parallel, also beside other
//! processes on the same server.
#![cfg(feature = "redis")]

use std::sync::{Arc, Mutex};

use alloy_primitives::{Address, B256, Bytes};
use async_trait::async_trait;
use model_runner_adapters::connect::call_cache_from_url;
use model_runner_adapters::redis_cache::RedisCallCache;
use model_runner_core::memory::MemoryBlockSource;
use model_runner_core::ports::{
    BlockSource, CachedCalls, CallCache, CallCacheError, CallCacheStats, CallKey, SourceError,
};
use model_runner_core::{Block, BlockHead, BlockRange, CallRequest, Chain};

/// `REDIS_URL`, or `None` (with a notice) when unset.
fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(u) => Some(u),
        Err(_) => {
            eprintln!(
                "REDIS_URL is not set: the Redis call cache test is not configured (CI sets it)"
            );
            None
        }
    }
}

/// `base` with a key prefix no other test uses.
fn isolated(base: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!(
        "{base}{sep}prefix=model-runner-test:{}&ttl_s=600",
        uuid::Uuid::new_v4()
    )
}

async fn connect(url: &str) -> RedisCallCache {
    RedisCallCache::connect(url)
        .await
        .unwrap_or_else(|e| panic!("REDIS_URL is set but the server does not answer: {e}"))
}

/// A worker's source: answers with the block hash's last byte and the calldata, counting
/// calls; calldata starting with 0xff reverts.
#[derive(Debug)]
struct Node {
    inner: MemoryBlockSource,
    calls: Mutex<usize>,
}

impl Node {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryBlockSource::new(Chain::new("ethereum").unwrap(), vec![]),
            calls: Mutex::new(0),
        })
    }
    fn requests(&self) -> usize {
        *self.calls.lock().unwrap()
    }
}

#[async_trait]
impl BlockSource for Node {
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
        *self.calls.lock().unwrap() += 1;
        if request.data.first() == Some(&0xff) {
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
        block: 9,
        block_hash: B256::with_last_byte(hash),
    }
}

#[tokio::test]
async fn redis_call_cache_conformance() {
    let Some(url) = redis_url() else { return };
    let cache = connect(&isolated(&url)).await;
    model_runner_core::conformance::call_cache::run_all(&cache).await;
}

/// Two workers, each with its own connection and node: what one read, the other gets from
/// Redis; another block hash is another entry; errors are not stored.
#[tokio::test]
async fn two_workers_share_answers_pinned_by_hash() {
    let Some(url) = redis_url() else { return };
    let url = isolated(&url);
    let (node_a, node_b) = (Node::new(), Node::new());
    let worker_a = CachedCalls::new(node_a.clone(), call_cache_from_url(&url).await.unwrap());
    let worker_b = CachedCalls::new(node_b.clone(), call_cache_from_url(&url).await.unwrap());

    let a = worker_a.call(&request(1, &[7, 7])).await.unwrap();
    assert_eq!(worker_b.call(&request(1, &[7, 7])).await.unwrap(), a);
    assert_eq!(worker_a.stats(), CallCacheStats { hits: 0, misses: 1 });
    assert_eq!(worker_b.stats(), CallCacheStats { hits: 1, misses: 0 });
    assert_eq!(
        (node_a.requests(), node_b.requests()),
        (1, 0),
        "one node request in all"
    );

    // The same call at another block hash (the same number on another branch): another entry.
    let other = worker_b.call(&request(2, &[7, 7])).await.unwrap();
    assert_ne!(other, a);
    assert_eq!(node_b.requests(), 1);
    assert_eq!(worker_a.call(&request(2, &[7, 7])).await.unwrap(), other);
    assert_eq!(worker_a.stats(), CallCacheStats { hits: 1, misses: 1 });

    // A revert is not stored: each worker asks its node every time.
    for _ in 0..2 {
        for w in [&worker_a, &worker_b] {
            let err = w.call(&request(1, &[0xff])).await.unwrap_err();
            assert!(matches!(err, SourceError::Reverted(_)), "{err:?}");
        }
    }
    assert_eq!((node_a.requests(), node_b.requests()), (3, 3));
    let raw = connect(&url).await;
    let key = CallKey::new(&Chain::new("ethereum").unwrap(), &request(1, &[0xff]));
    assert_eq!(
        raw.get(&key).await.unwrap(),
        None,
        "errors are never cached"
    );
    let key = CallKey::new(&Chain::new("ethereum").unwrap(), &request(1, &[7, 7]));
    assert_eq!(raw.get(&key).await.unwrap(), Some(a));
}

#[tokio::test]
async fn passwords_never_appear_in_errors() {
    // Port 1 on the loopback: nothing listens, the refusal is immediate.
    let err = RedisCallCache::connect("redis://runner:s3cret@127.0.0.1:1/0")
        .await
        .unwrap_err();
    assert!(matches!(err, CallCacheError::Unavailable { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");

    let err = RedisCallCache::connect("redis://runner:s3cret@127.0.0.1:1/0?ttl=5")
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("ttl"), "names the unknown parameter: {text}");
    assert!(!text.contains("s3cret"), "{text}");

    let err = call_cache_from_url("memcached://u:s3cret@h")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(
        err.to_string().contains("unsupported call cache URL"),
        "{err}"
    );
}
