//! [`MemoryBlockSource`]: a chain held in a vector, for tests and examples.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::chain::{BlockRange, Chain};
use crate::data::{Block, BlockHead};
use crate::ports::{BlockSource, SourceError};

/// A [`BlockSource`] over blocks held in memory; [`MemoryBlockSource::push`] grows the head.
#[derive(Debug)]
pub struct MemoryBlockSource {
    chain: Chain,
    blocks: Mutex<Vec<Block>>,
}

impl MemoryBlockSource {
    /// A source serving `blocks`, which MUST be consecutive and ascending.
    pub fn new(chain: Chain, blocks: Vec<Block>) -> Self {
        Self {
            chain,
            blocks: Mutex::new(blocks),
        }
    }

    /// A chain of empty blocks `numbers` (no transactions or logs), linked by parent hash, with
    /// made-up hashes and timestamps 12 s apart: enough to run models that look at block
    /// headers, and to try a pipeline.
    pub fn with_empty_blocks(chain: Chain, numbers: std::ops::RangeInclusive<u64>) -> Self {
        let hash =
            |n: u64| alloy_primitives::B256::left_padding_from(&n.wrapping_add(1).to_be_bytes());
        let blocks = numbers
            .map(|n| {
                let parent = match n {
                    0 => alloy_primitives::B256::ZERO,
                    n => hash(n - 1),
                };
                Block::empty(n, hash(n), parent, 1_700_000_000 + n * 12)
            })
            .collect();
        Self::new(chain, blocks)
    }

    /// Drops every block from number `from` on and appends `blocks` (which MUST start at
    /// `from`, or be empty): a chain reorganisation when they differ from the dropped ones, a
    /// node falling behind when `blocks` is empty.
    pub fn replace_from(&self, from: u64, blocks: Vec<Block>) {
        let mut chain = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        chain.retain(|b| b.number < from);
        chain.extend(blocks);
    }

    /// Appends a block (the next number).
    pub fn push(&self, block: Block) {
        self.blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(block);
    }
}

#[async_trait]
impl BlockSource for MemoryBlockSource {
    fn chain(&self) -> &Chain {
        &self.chain
    }

    async fn head(&self) -> Result<BlockHead, SourceError> {
        let blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        blocks
            .last()
            .map(|b| BlockHead {
                number: b.number,
                hash: b.hash,
            })
            .ok_or_else(|| SourceError::BlockNotFound {
                number: 0,
                source_name: "memory (empty)".into(),
            })
    }

    async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
        let blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let first = blocks.first().map_or(0, |b| b.number);
        let missing = |number| SourceError::BlockNotFound {
            number,
            source_name: "memory".into(),
        };
        if range.start() < first {
            return Err(missing(range.start()));
        }
        let lo = (range.start() - first) as usize;
        let hi = (range.end() - first) as usize;
        if hi >= blocks.len() {
            // The first block of the range past the head.
            return Err(missing(range.start().max(first + blocks.len() as u64)));
        }
        Ok(blocks[lo..=hi].to_vec())
    }
}
