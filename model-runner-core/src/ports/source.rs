//! [`BlockSource`]: where a chain's blocks come from.

use std::fmt;
use std::sync::Arc;

use alloy_primitives::Bytes;
use async_trait::async_trait;

use crate::chain::{BlockRange, Chain};
use crate::data::{Block, BlockHead, BlockRef, CallRequest};

/// A block source failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A block the source does not have (yet).
    #[error("block {number} not available from {source_name}")]
    BlockNotFound {
        /// Block number.
        number: u64,
        /// Which source.
        source_name: String,
    },
    /// The source cannot do this (e.g. `call` on a file source).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The contract call reverted (or the node refused to execute it): an answer about the
    /// contract's state, not a failure of the node; retrying gives the same answer.
    #[error("call reverted: {0}")]
    Reverted(String),
    /// Data that does not parse.
    #[error("invalid chain data: {0}")]
    InvalidData(String),
    /// The node is unreachable or rate-limits; retry later.
    #[error("chain source unavailable ({adapter}): {message}")]
    Unavailable {
        /// Adapter.
        adapter: &'static str,
        /// What happened (no secrets).
        message: String,
    },
    /// Any other backend failure.
    #[error("chain source {adapter}: {source}")]
    Backend {
        /// Adapter.
        adapter: &'static str,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// One chain's blocks, head and contract state.
///
/// # Contract
///
/// - `head` MUST return the latest block the source can serve.
/// - `blocks` MUST return every block of the range, ascending, each with all its transactions
///   and logs (and receipts when the source has them), or an error: never a partial range.
///   A block past the head is `BlockNotFound`.
/// - The same block number MUST give the same block until a reorg replaces it (then the hash
///   differs).
/// - `call` MUST read contract state as of the block whose hash is the request's `block_hash`
///   (EIP-1898), never of another block with the same number, or say `Unsupported`. A call the
///   contract refuses (it reverts) MUST be [`SourceError::Reverted`], so a reads model can record
///   it apart from a node that failed. A wrapper MAY cache answers by (chain, block hash, to,
///   data) ([`CachedCalls`](crate::ports::CachedCalls)): they never change. Errors are never cached.
#[async_trait]
pub trait BlockSource: fmt::Debug + Send + Sync + 'static {
    /// The chain this source serves.
    fn chain(&self) -> &Chain;
    /// The latest block.
    async fn head(&self) -> Result<BlockHead, SourceError>;
    /// The blocks of `range`.
    async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError>;
    /// Where block `number` of the source's current chain sits: its hash and parent hash. The
    /// scheduler asks this of each realtime run's last block and, after a reorg, walks back
    /// with it to the common ancestor. The default loads the whole block; a source that can
    /// read a header alone (JSON-RPC `eth_getBlockByNumber(n, false)`) SHOULD override it.
    /// A block past the head is `BlockNotFound`.
    async fn block_ref(&self, number: u64) -> Result<BlockRef, SourceError> {
        let blocks = self.blocks(BlockRange::single(number)).await?;
        let block = blocks.first().ok_or_else(|| SourceError::BlockNotFound {
            number,
            source_name: self.chain().to_string(),
        })?;
        Ok(BlockRef {
            number: block.number,
            hash: block.hash,
            parent_hash: block.parent_hash,
        })
    }
    /// Reads contract state (`eth_call`).
    async fn call(&self, request: &CallRequest) -> Result<Bytes, SourceError> {
        let _ = request;
        Err(SourceError::Unsupported(format!(
            "this {} source cannot call contracts",
            self.chain()
        )))
    }
}

#[async_trait]
impl<T: BlockSource + ?Sized> BlockSource for Arc<T> {
    fn chain(&self) -> &Chain {
        (**self).chain()
    }
    async fn head(&self) -> Result<BlockHead, SourceError> {
        (**self).head().await
    }
    async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
        (**self).blocks(range).await
    }
    async fn block_ref(&self, number: u64) -> Result<BlockRef, SourceError> {
        (**self).block_ref(number).await
    }
    async fn call(&self, request: &CallRequest) -> Result<Bytes, SourceError> {
        (**self).call(request).await
    }
}
