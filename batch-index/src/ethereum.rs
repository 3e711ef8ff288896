//! Ethereum blocks with receipts, from JSON files.
//!
//! Every `*.json` / `*.jsonl` object under the source root (one JSON document
//! or JSON lines) is decoded by the runner's one Ethereum JSON decoder,
//! [`model_runner_adapters::ethereum_json`]:
//! - JSON-RPC responses (`{"result": ...}`) of `eth_getBlockByNumber` with
//!   full transactions, `eth_getTransactionReceipt` and `eth_getLogs`;
//! - ethereum-etl export rows: blocks, transactions, logs, receipts and token
//!   transfers.
//!
//! Each decoded record ([`Row`]) adds its participants to its own block; rows
//! are not joined, so a receipt or log counts without its transaction.
//! A JSON-RPC error response or a value holding no chain record is an error.
//!
//! Participants: `all/all` gets transaction `from`/`to`, created contracts,
//! log emitters and ERC-20/721 `Transfer` parties; `all/payments` gets
//! `from`/`to` of transactions moving ether (`value != 0`) and the `Transfer`
//! parties. Positions are `block << 32 | transactionIndex << 12`.
//! The whole source is loaded at open, which suits exports of a job's range
//! (not a whole chain in one prefix).
//!
//! Blocks from the runner's block sources (`model_runner_core::Block`, e.g.
//! `devnet://` or a node) go through [`block_facts`], which applies the same
//! rules; [`crate::runner_source`] wraps such a source.
//!
//! Block numbers are `u64` here. The index format keeps the ledger number in
//! the upper 32 bits of a TOID and 32-bit checkpoint ids, so a block above
//! `u32::MAX` is refused with an error ([`index_ledger`]) rather than wrapped;
//! Ethereum mainnet is at about 2^24.5.

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256};
use async_trait::async_trait;
use model_runner_adapters::ethereum_json::{self, Row};
use model_runner_core::{Log, Transaction};

use crate::account::Account;
use crate::checkpoint::{CheckpointPart, CheckpointSpan};
use crate::error::{Error, Result};
use crate::extract::{CheckpointFacts, IndexMask, MASK_ALL, MASK_PAYMENT, Modules, toid};
use crate::source::LedgerSource;
use crate::store::StoreRoot;

/// keccak256("Transfer(address,address,uint256)"), shared by ERC-20 and ERC-721.
pub const TRANSFER_TOPIC: &str =
    "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";

/// Facts of one block: participants with masks, and transactions.
#[derive(Debug, Default, Clone)]
pub struct BlockFacts {
    /// `(account, mask)` in discovery order (duplicates allowed).
    pub participants: Vec<(Account, IndexMask)>,
    /// `(hash, position)`.
    pub transactions: Vec<([u8; 32], u64)>,
}

impl BlockFacts {
    /// Adds this block to its checkpoint's `facts`: one more ledger read, and its participants
    /// and transactions as far as `modules` index them.
    pub fn add_to(&self, facts: &mut CheckpointFacts, modules: Modules) {
        facts.ledgers += 1;
        if modules.accounts {
            for (a, m) in &self.participants {
                facts.add(*a, *m);
            }
        }
        if modules.transactions {
            facts.transactions.extend_from_slice(&self.transactions);
        }
    }
}

/// An Ethereum source loaded from JSON files.
#[derive(Debug)]
pub struct EthereumSource {
    span: CheckpointSpan,
    blocks: BTreeMap<u64, BlockFacts>,
}

/// Block `block` as the index's 32-bit ledger number (TOID upper half,
/// checkpoint arithmetic); fails above `u32::MAX`.
pub fn index_ledger(block: u64) -> Result<u32> {
    u32::try_from(block).map_err(|_| {
        Error::invalid(format!(
            "block {block} is above the index format's 32-bit ledger field (TOID `ledger << 32`)"
        ))
    })
}

/// Position of transaction `index` of `block`: `block << 32 | index << 12`.
pub fn ethereum_toid(block: u64, index: u64, what: &str) -> Result<u64> {
    let ledger = index_ledger(block).map_err(|e| Error::decode(what, e))?;
    if index > 0xF_FFFF {
        return Err(Error::decode(
            what,
            format!("transaction index {index} does not fit the TOID's 20 bits"),
        ));
    }
    Ok(toid(ledger, index as u32, 0))
}

fn eth_account(a: &Address) -> Account {
    Account::Ethereum(a.0.0)
}

const TRANSFER_TOPIC_B256: B256 =
    alloy_primitives::b256!("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef");

/// Facts of one block from a runner block source, by the same rules as the
/// JSON loader: transaction `from`/`to` (payments when `value != 0`), the
/// receipt's created contract, log emitters, and `Transfer` topic parties.
pub fn block_facts(block: &model_runner_core::Block) -> Result<BlockFacts> {
    let what = format!("block {}", block.number);
    let mut out = BlockFacts::default();
    for tx in &block.transactions {
        add_transaction(tx, block.number, &what, &mut out)?;
    }
    for log in &block.logs {
        add_log(log, &mut out);
    }
    out.transactions.sort();
    out.transactions.dedup();
    Ok(out)
}

/// `from`/`to` (payments when the transaction moves ether), the created
/// contract of its receipt, and its position.
fn add_transaction(tx: &Transaction, block: u64, what: &str, out: &mut BlockFacts) -> Result<()> {
    let mask = if tx.value.is_zero() {
        MASK_ALL
    } else {
        MASK_PAYMENT
    };
    out.participants.push((eth_account(&tx.from), mask));
    if let Some(to) = &tx.to {
        out.participants.push((eth_account(to), mask));
    }
    if let Some(c) = tx.receipt.as_ref().and_then(|r| r.contract_address) {
        out.participants.push((eth_account(&c), MASK_ALL));
    }
    out.transactions
        .push((tx.hash.0, ethereum_toid(block, tx.index, what)?));
    Ok(())
}

/// The emitter, and the parties of an ERC-20/721 `Transfer`.
fn add_log(log: &Log, out: &mut BlockFacts) {
    out.participants.push((eth_account(&log.address), MASK_ALL));
    if log.topics.len() >= 3 && log.topics[0] == TRANSFER_TOPIC_B256 {
        for t in &log.topics[1..3] {
            out.participants
                .push((eth_account(&Address::from_word(*t)), MASK_PAYMENT));
        }
    }
}

/// Adds one decoded record's participants (and transactions) to its block in
/// `blocks`; `what` names the input in errors.
pub fn add_row(row: Row, what: &str, blocks: &mut BTreeMap<u64, BlockFacts>) -> Result<()> {
    match row {
        Row::Block(block) => {
            let facts = blocks.entry(block.number).or_default();
            for tx in &block.transactions {
                add_transaction(tx, block.number, what, facts)?;
            }
        }
        Row::Transaction {
            block_number,
            transaction,
        } => add_transaction(
            &transaction,
            block_number,
            what,
            blocks.entry(block_number).or_default(),
        )?,
        Row::Receipt {
            block_number,
            receipt,
            ..
        } => {
            let block =
                block_number.ok_or_else(|| Error::decode(what, "receipt without block number"))?;
            let facts = blocks.entry(block).or_default();
            if let Some(c) = receipt.contract_address {
                facts.participants.push((eth_account(&c), MASK_ALL));
            }
        }
        Row::Log(log) => add_log(&log, blocks.entry(log.block_number).or_default()),
        Row::TokenTransfer {
            block_number,
            token,
            from,
            to,
        } => {
            let facts = blocks.entry(block_number).or_default();
            facts.participants.push((eth_account(&token), MASK_ALL));
            for a in [from, to].into_iter().flatten() {
                facts.participants.push((eth_account(&a), MASK_PAYMENT));
            }
        }
        Row::RpcError(e) => {
            return Err(Error::decode(what, format!("JSON-RPC error response: {e}")));
        }
        _ => {
            return Err(Error::decode(
                what,
                "unrecognised JSON: expected a block, receipt, log, or ethereum-etl block/transaction/log/receipt/token-transfer row",
            ));
        }
    }
    Ok(())
}

/// Parses one file's bytes (a JSON document or JSON lines) with
/// [`model_runner_adapters::ethereum_json::bytes_rows`] into `blocks`.
pub fn parse_file(name: &str, bytes: &[u8], blocks: &mut BTreeMap<u64, BlockFacts>) -> Result<()> {
    let mut failed = None;
    ethereum_json::bytes_rows(bytes, &mut |row| {
        if failed.is_none()
            && let Err(e) = add_row(row, name, blocks)
        {
            failed = Some(e);
        }
    })
    .map_err(|e| Error::decode(name, e))?;
    failed.map_or(Ok(()), Err)
}

impl EthereumSource {
    /// Loads every `.json`/`.jsonl` object under `root`.
    pub async fn open(root: StoreRoot, span: CheckpointSpan) -> Result<Self> {
        let mut blocks = BTreeMap::new();
        let listed = root.list("").await?;
        let mut any = false;
        for (rel, _) in listed {
            if !(rel.ends_with(".json") || rel.ends_with(".jsonl")) {
                continue;
            }
            any = true;
            let bytes = root.get(&rel).await?;
            parse_file(&root.describe(&rel), &bytes, &mut blocks)?;
        }
        if !any {
            return Err(Error::NotFound(format!(
                "{}: no .json or .jsonl files",
                root.describe("")
            )));
        }
        for f in blocks.values_mut() {
            f.transactions.sort();
            f.transactions.dedup();
        }
        Ok(EthereumSource { span, blocks })
    }

    /// The loaded blocks (for brute-force checks).
    pub fn blocks(&self) -> &BTreeMap<u64, BlockFacts> {
        &self.blocks
    }
}

#[async_trait]
impl LedgerSource for EthereumSource {
    fn span(&self) -> CheckpointSpan {
        self.span
    }

    async fn available(&self) -> Result<(u32, u32)> {
        match (self.blocks.keys().next(), self.blocks.keys().next_back()) {
            (Some(a), Some(b)) => Ok((index_ledger(*a)?, index_ledger(*b)?)),
            _ => Err(Error::NotFound(
                "the Ethereum source holds no blocks".into(),
            )),
        }
    }

    async fn checkpoint_facts(
        &self,
        part: CheckpointPart,
        modules: Modules,
    ) -> Result<CheckpointFacts> {
        let numbers = u64::from(part.first())..=u64::from(part.last());
        let mut facts = CheckpointFacts::new(part.checkpoint());
        for (_, b) in self.blocks.range(numbers) {
            b.add_to(&mut facts, modules);
        }
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etl_rows_and_rejections() {
        let mut blocks = BTreeMap::new();
        let rows = br#"{"hash": "0x1111111111111111111111111111111111111111111111111111111111111111", "block_number": 5, "transaction_index": 2, "from_address": "0xAE2fc483527b8ef99eb5d9b44875f005ba1fae13", "to_address": null, "value": 0, "gas": 21000, "nonce": 1, "input": "0x"}
{"log_index": 0, "transaction_hash": "0x1111111111111111111111111111111111111111111111111111111111111111", "transaction_index": 2, "block_number": 5, "address": "0xf4eced2f682ce333f96f2d8966c613ded8fc95dd", "topics": ["0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef", "0x0000000000000000000000001b63142628311395ceafeea5667e7c9026c862ca", "0x000000000000000000000000ac4df82fe37ea2187bc8c011a23d743b4f39019a"]}
"#;
        parse_file("rows.json", rows, &mut blocks).unwrap();
        let b = &blocks[&5];
        assert_eq!(b.transactions[0].1, toid(5, 2, 0));
        let names: Vec<(String, u8)> = b
            .participants
            .iter()
            .map(|(a, m)| (a.to_string(), *m))
            .collect();
        assert_eq!(
            names,
            vec![
                (
                    "0xae2fc483527b8ef99eb5d9b44875f005ba1fae13".to_string(),
                    MASK_ALL
                ),
                (
                    "0xf4eced2f682ce333f96f2d8966c613ded8fc95dd".to_string(),
                    MASK_ALL
                ),
                (
                    "0x1b63142628311395ceafeea5667e7c9026c862ca".to_string(),
                    MASK_PAYMENT
                ),
                (
                    "0xac4df82fe37ea2187bc8c011a23d743b4f39019a".to_string(),
                    MASK_PAYMENT
                ),
            ]
        );
        let e = parse_file(
            "bad.json",
            b"{\"foo\": 1, \"block_number\": 1}",
            &mut blocks,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bad.json") && e.contains("unrecognised"), "{e}");
        let e = parse_file("trunc.json", b"{\"result\": ", &mut blocks)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trunc.json"), "{e}");
    }
}
