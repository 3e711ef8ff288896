//! Chain data the models read: blocks with their transactions, receipts and logs.
//!
//! The types hold real Ethereum JSON-RPC data losslessly for the fields models use, and serve
//! every EVM chain (`ethereum`, `matic`, ...) unchanged: nothing in them is mainnet-specific.
//! Adapters turn wire formats (JSON-RPC responses, ethereum-etl exports) into these types.

use alloy_primitives::{Address, B256, Bytes, U256};
use serde::{Deserialize, Serialize};

/// The chain's head as a source sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHead {
    /// Latest block number.
    pub number: u64,
    /// Its hash.
    pub hash: B256,
}

/// Where a block sits in its chain: what the scheduler records of each realtime run's last
/// block, so it can tell when the node's chain no longer holds it (a reorg).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockRef {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Its parent's hash.
    pub parent_hash: B256,
}

/// A block with everything a model may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Parent hash.
    pub parent_hash: B256,
    /// Unix time in seconds.
    pub timestamp: u64,
    /// Fee recipient, if the source gives it.
    pub miner: Option<Address>,
    /// Gas used by all transactions.
    pub gas_used: u64,
    /// Gas limit.
    pub gas_limit: u64,
    /// EIP-1559 base fee, from London on.
    pub base_fee_per_gas: Option<u128>,
    /// Transactions in block order.
    pub transactions: Vec<Transaction>,
    /// Every log of the block, in log-index order.
    pub logs: Vec<Log>,
}

impl Block {
    /// A block with no transactions and no logs, that used no gas of a 30,000,000 limit, with
    /// no miner and no base fee: the start of a block made up in a test or an in-memory chain.
    /// Set what the block holds with struct update syntax:
    ///
    /// ```
    /// use alloy_primitives::B256;
    /// use model_runner_core::Block;
    ///
    /// let parent = Block::empty(6, B256::with_last_byte(6), B256::ZERO, 1_700_000_000);
    /// let block = Block {
    ///     gas_used: 21_000,
    ///     ..Block::empty(7, B256::with_last_byte(7), parent.hash, 1_700_000_012)
    /// };
    /// assert_eq!((block.parent_hash, block.logs.len()), (parent.hash, 0));
    /// ```
    pub fn empty(number: u64, hash: B256, parent_hash: B256, timestamp: u64) -> Self {
        Self {
            number,
            hash,
            parent_hash,
            timestamp,
            miner: None,
            gas_used: 0,
            gas_limit: 30_000_000,
            base_fee_per_gas: None,
            transactions: Vec::new(),
            logs: Vec::new(),
        }
    }
}

/// A transaction, with its receipt when the source has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Transaction hash.
    pub hash: B256,
    /// Position in the block.
    pub index: u64,
    /// Sender.
    pub from: Address,
    /// Recipient; `None` for contract creation.
    pub to: Option<Address>,
    /// Value in wei.
    pub value: U256,
    /// Gas limit.
    pub gas: u64,
    /// Gas price (legacy) or max fee.
    pub gas_price: Option<u128>,
    /// Sender nonce.
    pub nonce: u64,
    /// Call data.
    pub input: Bytes,
    /// The receipt, when loaded.
    pub receipt: Option<Receipt>,
}

/// The parts of a receipt that are not logs (logs live on [`Block::logs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// `Some(true)` on success (Byzantium on); `None` before status existed.
    pub status: Option<bool>,
    /// Gas used by this transaction.
    pub gas_used: u64,
    /// Gas used up to and including this transaction.
    pub cumulative_gas_used: u64,
    /// Created contract, if any.
    pub contract_address: Option<Address>,
    /// Effective gas price, from London on.
    pub effective_gas_price: Option<u128>,
}

/// An event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    /// Emitting contract.
    pub address: Address,
    /// Indexed topics; `topics[0]` is the event signature hash for non-anonymous events.
    pub topics: Vec<B256>,
    /// Non-indexed data.
    pub data: Bytes,
    /// Position in the block.
    pub log_index: u64,
    /// Transaction that emitted it.
    pub transaction_hash: B256,
    /// That transaction's position.
    pub transaction_index: u64,
    /// Block number.
    pub block_number: u64,
}

/// A contract read at a block (`eth_call`), for `reads` models.
///
/// The read is pinned to the block's hash (EIP-1898: `{"blockHash": ...}` as the block
/// parameter), so a reorg between loading the block and reading its state cannot mix state of
/// another branch into the run, and the answer for one request never changes: it may be cached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallRequest {
    /// Contract.
    pub to: Address,
    /// ABI-encoded call data.
    pub data: Bytes,
    /// Number of the block whose state is read (for messages, and sources that index by number).
    pub block: u64,
    /// Hash of that block: the state read is the state after this exact block.
    pub block_hash: B256,
}
