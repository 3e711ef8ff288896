//! [`MemoryCallCache`]: the in-process [`CallCache`], bounded by the bytes it holds.

use std::fmt;

use alloy_primitives::Bytes;
use async_trait::async_trait;

use crate::ports::{CallCache, CallCacheError, CallKey};

/// Default bound of a [`MemoryCallCache`]: 64 MiB of keys and answers (about 400 000
/// `balanceOf` answers).
pub const DEFAULT_CALL_CACHE_BYTES: u64 = 64 << 20;

/// A [`CallCache`] in this process's memory, holding at most a given number of bytes (keys
/// and answers); past it, the entries least likely to be asked again are dropped (moka's
/// TinyLFU). Shared only by the sources of this process: several workers share Redis instead.
#[derive(Clone)]
pub struct MemoryCallCache {
    entries: moka::sync::Cache<CallKey, Bytes>,
    max_bytes: u64,
}

impl MemoryCallCache {
    /// A cache of at most `max_bytes` of keys and answers.
    pub fn new(max_bytes: u64) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &CallKey, v: &Bytes| {
                // The fixed part of a key (hash, address, chain name) plus the variable parts.
                let weight = 64 + k.chain.as_str().len() + k.data.len() + v.len();
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .build();
        Self { entries, max_bytes }
    }

    /// Entries held (approximate while evictions are pending).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of keys and answers held (after pending evictions).
    pub fn weighted_bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

impl Default for MemoryCallCache {
    /// [`DEFAULT_CALL_CACHE_BYTES`].
    fn default() -> Self {
        Self::new(DEFAULT_CALL_CACHE_BYTES)
    }
}

impl fmt::Debug for MemoryCallCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCallCache")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl CallCache for MemoryCallCache {
    async fn get(&self, key: &CallKey) -> Result<Option<Bytes>, CallCacheError> {
        Ok(self.entries.get(key))
    }
    async fn put(&self, key: &CallKey, answer: &Bytes) -> Result<(), CallCacheError> {
        self.entries.insert(key.clone(), answer.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{Address, B256};

    use super::*;
    use crate::chain::Chain;

    fn key(n: u64) -> CallKey {
        CallKey {
            chain: Chain::new("ethereum").unwrap(),
            block_hash: B256::from(alloy_primitives::U256::from(n)),
            to: Address::repeat_byte(1),
            data: Bytes::from(vec![0x70; 36]),
        }
    }

    #[tokio::test]
    async fn memory_call_cache_conformance() {
        crate::conformance::call_cache::run_all(&MemoryCallCache::default()).await;
    }

    #[tokio::test]
    async fn stays_within_its_byte_bound() {
        let cache = MemoryCallCache::new(20_000);
        for n in 0..1_000 {
            cache.put(&key(n), &Bytes::from(vec![0; 32])).await.unwrap();
        }
        assert!(
            cache.weighted_bytes() <= 20_000,
            "{} bytes held",
            cache.weighted_bytes()
        );
        assert!(!cache.is_empty(), "a bounded cache still keeps entries");
        assert!(cache.len() < 1_000);
    }
}
