//! Ethereum blocks with receipts, from JSON files parsed with serde.
//!
//! Every `*.json` / `*.jsonl` object under the source root is read as a
//! stream of JSON values (one pretty-printed document or JSON lines):
//! - JSON-RPC responses (`{"result": ...}`) of `eth_getBlockByNumber` with
//!   full transactions and of `eth_getTransactionReceipt`;
//! - ethereum-etl export rows: transactions (`from_address`), logs
//!   (`log_index` + `topics`), receipts (`contract_address`) and token
//!   transfers (`token_address`).
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

use async_trait::async_trait;
use serde_json::Value;

use crate::account::Account;
use crate::checkpoint::CheckpointSpan;
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

/// An Ethereum source loaded from JSON files.
#[derive(Debug)]
pub struct EthereumSource {
    span: CheckpointSpan,
    blocks: BTreeMap<u64, BlockFacts>,
}

fn field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| v.get(*n).filter(|x| !x.is_null()))
}

/// Parses a JSON quantity: `"0x1f"`, `"31"` or `31`.
fn quantity(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

fn is_nonzero(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => s
            .trim_start_matches("0x")
            .trim_start_matches('0')
            .chars()
            .any(|c| c != '.'),
        _ => false,
    }
}

fn address(v: &Value, what: &str) -> Result<Account> {
    let s = v
        .as_str()
        .ok_or_else(|| Error::decode(what, format!("address is not a string: {v}")))?;
    s.parse::<Account>()
        .map_err(|e| Error::decode(what, e))
        .and_then(|a| match a {
            Account::Ethereum(_) => Ok(a),
            Account::Stellar(_) => Err(Error::decode(
                what,
                format!("`{s}` is not an Ethereum address"),
            )),
        })
}

/// The address held in the low 20 bytes of a 32-byte topic.
fn topic_address(v: &Value, what: &str) -> Result<Account> {
    let s = v
        .as_str()
        .ok_or_else(|| Error::decode(what, "topic is not a string"))?;
    let h = s.trim_start_matches("0x");
    // ASCII first: byte 24 of a topic with other characters may fall inside one.
    if h.len() != 64 || !h.is_ascii() {
        return Err(Error::decode(
            what,
            format!("topic `{s}` is not 32 bytes of hex"),
        ));
    }
    address(&Value::String(format!("0x{}", &h[24..])), what)
}

fn tx_hash(v: &Value, what: &str) -> Result<[u8; 32]> {
    let s = v
        .as_str()
        .ok_or_else(|| Error::decode(what, "hash is not a string"))?;
    let bytes = hex::decode(s.trim_start_matches("0x"))
        .map_err(|e| Error::decode(what, format!("bad hash `{s}`: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| Error::decode(what, format!("hash `{s}` is not 32 bytes")))
}

fn block_number(v: &Value, what: &str) -> Result<u64> {
    field(v, &["blockNumber", "block_number", "number"])
        .and_then(quantity)
        .ok_or_else(|| Error::decode(what, "missing block number"))
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

fn eth_account(a: &alloy_primitives::Address) -> Account {
    Account::Ethereum(a.0.0)
}

const TRANSFER_TOPIC_B256: alloy_primitives::B256 =
    alloy_primitives::b256!("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef");

/// Facts of one block from a runner block source, by the same rules as the
/// JSON loader: transaction `from`/`to` (payments when `value != 0`), the
/// receipt's created contract, log emitters, and `Transfer` topic parties.
pub fn block_facts(block: &model_runner_core::Block) -> Result<BlockFacts> {
    let what = format!("block {}", block.number);
    let mut out = BlockFacts::default();
    for tx in &block.transactions {
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
            .push((tx.hash.0, ethereum_toid(block.number, tx.index, &what)?));
    }
    for log in &block.logs {
        out.participants.push((eth_account(&log.address), MASK_ALL));
        if log.topics.len() >= 3 && log.topics[0] == TRANSFER_TOPIC_B256 {
            for t in &log.topics[1..3] {
                let mut a = [0u8; 20];
                a.copy_from_slice(&t.0[12..]);
                out.participants.push((Account::Ethereum(a), MASK_PAYMENT));
            }
        }
    }
    out.transactions.sort();
    out.transactions.dedup();
    Ok(out)
}

fn add_log(log: &Value, what: &str, out: &mut BlockFacts) -> Result<()> {
    if let Some(a) = field(log, &["address"]) {
        out.participants.push((address(a, what)?, MASK_ALL));
    }
    if let Some(Value::Array(topics)) = field(log, &["topics"]) {
        let is_transfer = topics.first().and_then(Value::as_str) == Some(TRANSFER_TOPIC);
        if is_transfer && topics.len() >= 3 {
            out.participants
                .push((topic_address(&topics[1], what)?, MASK_PAYMENT));
            out.participants
                .push((topic_address(&topics[2], what)?, MASK_PAYMENT));
        }
    }
    Ok(())
}

fn add_transaction(tx: &Value, block: u64, what: &str, out: &mut BlockFacts) -> Result<()> {
    let value_moves = field(tx, &["value"]).is_some_and(is_nonzero);
    let mask = if value_moves { MASK_PAYMENT } else { MASK_ALL };
    if let Some(from) = field(tx, &["from", "from_address"]) {
        out.participants.push((address(from, what)?, mask));
    }
    if let Some(to) = field(tx, &["to", "to_address"]) {
        out.participants.push((address(to, what)?, mask));
    }
    let hash = tx_hash(
        field(tx, &["hash"]).ok_or_else(|| Error::decode(what, "transaction without hash"))?,
        what,
    )?;
    let index = field(tx, &["transactionIndex", "transaction_index"])
        .and_then(quantity)
        .ok_or_else(|| Error::decode(what, "transaction without index"))?;
    out.transactions
        .push((hash, ethereum_toid(block, index, what)?));
    Ok(())
}

/// Adds one JSON value (RPC response or etl row) to `blocks`.
pub fn add_json_value(v: &Value, what: &str, blocks: &mut BTreeMap<u64, BlockFacts>) -> Result<()> {
    let v = match v.get("result") {
        Some(Value::Null) => return Ok(()),
        Some(r) => r,
        None if v.get("error").is_some() => {
            return Err(Error::decode(
                what,
                format!("JSON-RPC error response: {}", v["error"]),
            ));
        }
        None => v,
    };
    if let Some(Value::Array(txs)) = v.get("transactions") {
        // eth_getBlockByNumber with full transactions.
        let block = block_number(v, what)?;
        let facts = blocks.entry(block).or_default();
        for tx in txs {
            if tx.is_string() {
                return Err(Error::decode(
                    what,
                    "block has transaction hashes only: fetch it with full transactions (`true`)",
                ));
            }
            add_transaction(tx, block, what, facts)?;
        }
        return Ok(());
    }
    let block = block_number(v, what)?;
    let facts = blocks.entry(block).or_default();
    if v.get("transactionHash").is_some() && v.get("logs").is_some() {
        // eth_getTransactionReceipt.
        if let Some(c) = field(v, &["contractAddress"]) {
            facts.participants.push((address(c, what)?, MASK_ALL));
        }
        if let Some(Value::Array(logs)) = v.get("logs") {
            for log in logs {
                add_log(log, what, facts)?;
            }
        }
    } else if v.get("token_address").is_some() {
        facts
            .participants
            .push((address(&v["token_address"], what)?, MASK_ALL));
        for k in ["from_address", "to_address"] {
            if let Some(a) = field(v, &[k]) {
                facts.participants.push((address(a, what)?, MASK_PAYMENT));
            }
        }
    } else if v.get("from_address").is_some() {
        add_transaction(v, block, what, facts)?;
    } else if v.get("topics").is_some() {
        add_log(v, what, facts)?;
    } else if v.get("contract_address").is_some() {
        if let Some(c) = field(v, &["contract_address"]) {
            facts.participants.push((address(c, what)?, MASK_ALL));
        }
    } else {
        return Err(Error::decode(
            what,
            "unrecognised JSON: expected a block, receipt, or ethereum-etl transaction/log/receipt/token-transfer row",
        ));
    }
    Ok(())
}

/// Parses one file's bytes (a JSON document or JSON lines).
pub fn parse_file(name: &str, bytes: &[u8], blocks: &mut BTreeMap<u64, BlockFacts>) -> Result<()> {
    let stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    for (i, v) in stream.enumerate() {
        let v = v.map_err(|e| Error::decode(name, format!("invalid JSON: {e}")))?;
        add_json_value(&v, &format!("{name} (value {})", i + 1), blocks)?;
    }
    Ok(())
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
        checkpoint: u32,
        first: u32,
        last: u32,
        modules: Modules,
    ) -> Result<CheckpointFacts> {
        let mut facts = CheckpointFacts::new(checkpoint);
        for (_, b) in self.blocks.range(u64::from(first)..=u64::from(last)) {
            facts.ledgers += 1;
            if modules.accounts {
                for (a, m) in &b.participants {
                    facts.add(*a, *m);
                }
            }
            if modules.transactions {
                facts.transactions.extend_from_slice(&b.transactions);
            }
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
        let rows = br#"{"hash": "0x1111111111111111111111111111111111111111111111111111111111111111", "block_number": 5, "transaction_index": 2, "from_address": "0xAE2fc483527b8ef99eb5d9b44875f005ba1fae13", "to_address": null, "value": 0}
{"log_index": 0, "transaction_hash": "0x11", "block_number": 5, "address": "0xf4eced2f682ce333f96f2d8966c613ded8fc95dd", "topics": ["0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef", "0x0000000000000000000000001b63142628311395ceafeea5667e7c9026c862ca", "0x000000000000000000000000ac4df82fe37ea2187bc8c011a23d743b4f39019a"]}
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
