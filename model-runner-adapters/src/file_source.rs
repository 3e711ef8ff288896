//! `file://DIR`: a [`BlockSource`] over Ethereum data saved as files.
//!
//! Two formats are read, in any mix, from every `*.json` / `*.jsonl` file of `DIR` (or one file):
//!
//! - **JSON-RPC responses**, as saved from a node: `eth_getBlockByNumber` with full transactions
//!   (`{"jsonrpc":"2.0","result":{...}}` or the bare result), `eth_getTransactionReceipt`
//!   (receipt status, gas and logs), and `eth_getLogs`/`eth_getFilterLogs` arrays.
//! - **ethereum-etl JSON-lines exports**: `blocks.json`, `transactions.json`, `receipts.json`,
//!   `logs.json` (one object a line; the kind is taken from its `type` field or its columns).
//!
//! Everything is loaded at open and joined: transactions onto blocks, receipts onto
//! transactions by hash, logs onto blocks by number (deduplicated by log index). The head is the
//! highest block. A range with a missing block is `BlockNotFound`, never a partial answer.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use alloy_primitives::{Address, B256, Bytes, U256};
use async_trait::async_trait;
use model_runner_core::ports::{BlockSource, SourceError};
use model_runner_core::{Block, BlockHead, BlockRange, Chain, Log, Receipt, Transaction};
use serde_json::Value;

/// Blocks loaded from files.
#[derive(Debug)]
pub struct FileBlockSource {
    chain: Chain,
    origin: String,
    blocks: BTreeMap<u64, Block>,
}

fn bad(file: &Path, what: impl std::fmt::Display) -> SourceError {
    SourceError::InvalidData(format!("{}: {what}", file.display()))
}

/// A field as u64: `"0x1a"`, `"26"` or `26`.
fn quantity(v: &Value, field: &str) -> Result<Option<u64>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("field {field}: {n} is not a u64")),
        Some(Value::String(s)) => parse_u64(s)
            .map(Some)
            .ok_or_else(|| format!("field {field}: {s:?} is not a quantity")),
        Some(other) => Err(format!("field {field}: {other} is not a quantity")),
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn required(v: &Value, field: &str) -> Result<u64, String> {
    quantity(v, field)?.ok_or_else(|| format!("missing field {field}"))
}

fn big(v: &Value, field: &str) -> Result<Option<U256>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let parsed = match s.strip_prefix("0x") {
                Some(h) => U256::from_str_radix(h, 16),
                None => U256::from_str_radix(s, 10),
            };
            parsed
                .map(Some)
                .map_err(|_| format!("field {field}: {s:?} is not a number"))
        }
        Some(Value::Number(n)) => U256::from_str_radix(&n.to_string(), 10)
            .map(Some)
            .map_err(|_| format!("field {field}: {n} is not an integer")),
        Some(other) => Err(format!("field {field}: {other} is not a number")),
    }
}

fn small(v: &Value, field: &str) -> Result<Option<u128>, String> {
    big(v, field)?
        .map(|x| u128::try_from(x).map_err(|_| format!("field {field} overflows u128")))
        .transpose()
}

fn parsed<T: std::str::FromStr>(v: &Value, field: &str) -> Result<Option<T>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("field {field}: {s:?} is malformed")),
        Some(other) => Err(format!("field {field}: {other} is not a string")),
    }
}

fn need<T: std::str::FromStr>(v: &Value, field: &str) -> Result<T, String> {
    parsed(v, field)?.ok_or_else(|| format!("missing field {field}"))
}

/// The first of several field names present (JSON-RPC camelCase or ethereum-etl snake_case).
fn pick<'a>(v: &Value, names: &[&'a str]) -> &'a str {
    names
        .iter()
        .copied()
        .find(|n| v.get(*n).is_some_and(|x| !x.is_null()))
        .unwrap_or(names[0])
}

fn parse_log(v: &Value) -> Result<Log, String> {
    let topics = match v.get("topics") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or("malformed topic")
            })
            .collect::<Result<Vec<B256>, _>>()?,
        // ethereum-etl CSV-in-JSON style: "t0,t1,t2".
        Some(Value::String(s)) if !s.is_empty() => s
            .split(',')
            .map(|t| t.parse().map_err(|_| "malformed topic"))
            .collect::<Result<Vec<B256>, _>>()?,
        _ => Vec::new(),
    };
    Ok(Log {
        address: need(v, "address")?,
        topics,
        data: parsed::<Bytes>(v, "data")?.unwrap_or_default(),
        log_index: required(v, pick(v, &["logIndex", "log_index"]))?,
        transaction_hash: need(v, pick(v, &["transactionHash", "transaction_hash"]))?,
        transaction_index: required(v, pick(v, &["transactionIndex", "transaction_index"]))?,
        block_number: required(v, pick(v, &["blockNumber", "block_number"]))?,
    })
}

fn parse_tx(v: &Value) -> Result<(u64, Transaction), String> {
    Ok((
        required(v, pick(v, &["blockNumber", "block_number"]))?,
        Transaction {
            hash: need(v, "hash")?,
            index: required(v, pick(v, &["transactionIndex", "transaction_index"]))?,
            from: need(v, pick(v, &["from", "from_address"]))?,
            to: parsed(v, pick(v, &["to", "to_address"]))?,
            value: big(v, "value")?.unwrap_or_default(),
            gas: required(v, "gas")?,
            gas_price: small(v, pick(v, &["gasPrice", "gas_price"]))?,
            nonce: required(v, "nonce")?,
            input: parsed::<Bytes>(v, "input")?.unwrap_or_default(),
            receipt: None,
        },
    ))
}

fn parse_receipt(v: &Value) -> Result<(B256, Receipt), String> {
    Ok((
        need(v, pick(v, &["transactionHash", "transaction_hash"]))?,
        Receipt {
            status: quantity(v, "status")?.map(|s| s == 1),
            gas_used: required(v, pick(v, &["gasUsed", "gas_used"]))?,
            cumulative_gas_used: required(
                v,
                pick(v, &["cumulativeGasUsed", "cumulative_gas_used"]),
            )?,
            contract_address: parsed::<Address>(
                v,
                pick(v, &["contractAddress", "contract_address"]),
            )?,
            effective_gas_price: small(v, pick(v, &["effectiveGasPrice", "effective_gas_price"]))?,
        },
    ))
}

fn parse_block_header(v: &Value) -> Result<Block, String> {
    Ok(Block {
        number: required(v, "number")?,
        hash: need(v, "hash")?,
        parent_hash: need(v, pick(v, &["parentHash", "parent_hash"]))?,
        timestamp: required(v, "timestamp")?,
        miner: parsed(v, pick(v, &["miner", "author"]))?,
        gas_used: required(v, pick(v, &["gasUsed", "gas_used"]))?,
        gas_limit: required(v, pick(v, &["gasLimit", "gas_limit"]))?,
        base_fee_per_gas: small(v, pick(v, &["baseFeePerGas", "base_fee_per_gas"]))?,
        transactions: Vec::new(),
        logs: Vec::new(),
    })
}

/// Parses a flat JSON-lines row keeping integers beyond u64 exact: ethereum-etl writes wei
/// values as bare JSON integers, which a plain parse would round through `f64`.
fn lossless_row(line: &str) -> Result<Value, serde_json::Error> {
    let raw: BTreeMap<String, Box<serde_json::value::RawValue>> = match serde_json::from_str(line) {
        Ok(raw) => raw,
        // Not a flat object (e.g. an array): nothing to protect.
        Err(_) => return serde_json::from_str(line),
    };
    let mut row = serde_json::Map::new();
    for (k, v) in raw {
        let text = v.get();
        let value = if text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u64>().is_err() {
            Value::String(text.to_owned())
        } else {
            serde_json::from_str(text)?
        };
        row.insert(k, value);
    }
    Ok(Value::Object(row))
}

/// Joins JSON-RPC / ethereum-etl values into blocks; shared with the JSON-RPC source, which
/// receives the very same response shapes over HTTP.
#[derive(Default)]
pub(crate) struct Loader {
    blocks: BTreeMap<u64, Block>,
    txs: Vec<(u64, Transaction)>,
    receipts: HashMap<B256, Receipt>,
    logs: Vec<Log>,
}

impl Loader {
    /// One JSON value from a file: a JSON-RPC response, a bare result, or an etl row.
    pub(crate) fn value(&mut self, v: &Value) -> Result<(), String> {
        let v = v.get("result").unwrap_or(v);
        match v {
            Value::Array(items) => {
                for item in items {
                    self.value(item)?;
                }
            }
            Value::Object(o) => {
                let kind = o.get("type").and_then(Value::as_str).unwrap_or("");
                if o.contains_key("transactions") {
                    let mut block = parse_block_header(v)?;
                    for t in o["transactions"].as_array().into_iter().flatten() {
                        if t.is_string() {
                            return Err(format!(
                                "block {} lists transaction hashes only: save eth_getBlockByNumber with full transactions (second parameter true)",
                                block.number
                            ));
                        }
                        self.txs.push(parse_tx(t)?);
                    }
                    block.transactions.clear();
                    self.blocks.insert(block.number, block);
                } else if kind == "block" || o.contains_key("parent_hash") {
                    let block = parse_block_header(v)?;
                    self.blocks.insert(block.number, block);
                } else if o.contains_key("logs")
                    && (o.contains_key("transactionHash") || o.contains_key("transaction_hash"))
                {
                    let (hash, receipt) = parse_receipt(v)?;
                    self.receipts.insert(hash, receipt);
                    for l in o["logs"].as_array().into_iter().flatten() {
                        self.logs.push(parse_log(l)?);
                    }
                } else if kind == "log" || o.contains_key("topics") {
                    self.logs.push(parse_log(v)?);
                } else if kind == "receipt"
                    || o.contains_key("cumulative_gas_used")
                    || o.contains_key("cumulativeGasUsed")
                {
                    let (hash, receipt) = parse_receipt(v)?;
                    self.receipts.insert(hash, receipt);
                } else if kind == "transaction"
                    || o.contains_key("from_address")
                    || o.contains_key("input")
                {
                    self.txs.push(parse_tx(v)?);
                }
                // Anything else (e.g. eth_newFilter's filter id) carries no chain data.
            }
            _ => {}
        }
        Ok(())
    }

    fn file(&mut self, path: &Path) -> Result<(), SourceError> {
        let bytes = std::fs::read(path).map_err(|e| bad(path, e))?;
        self.bytes(&bytes).map_err(|e| bad(path, e))
    }

    /// One file's content: one JSON document, or JSON lines.
    fn bytes(&mut self, bytes: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
        match serde_json::from_str::<Value>(text) {
            Ok(v) => self.value(&v),
            // Not one JSON document: JSON lines.
            Err(_) => {
                for (i, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let v = lossless_row(line).map_err(|e| format!("line {}: {e}", i + 1))?;
                    self.value(&v).map_err(|e| format!("line {}: {e}", i + 1))?;
                }
                Ok(())
            }
        }
    }

    pub(crate) fn finish(mut self) -> BTreeMap<u64, Block> {
        self.txs.sort_by_key(|(b, t)| (*b, t.index));
        self.txs.dedup_by_key(|(b, t)| (*b, t.index));
        for (number, mut tx) in self.txs {
            if let Some(block) = self.blocks.get_mut(&number) {
                tx.receipt = self.receipts.get(&tx.hash).cloned();
                block.transactions.push(tx);
            }
        }
        self.logs.sort_by_key(|l| (l.block_number, l.log_index));
        self.logs.dedup_by_key(|l| (l.block_number, l.log_index));
        for log in self.logs {
            if let Some(block) = self.blocks.get_mut(&log.block_number) {
                block.logs.push(log);
            }
        }
        self.blocks
    }
}

/// Parses one file's bytes, as [`FileBlockSource`] reads each file (one JSON document or JSON
/// lines, JSON-RPC responses or ethereum-etl rows), into the blocks it holds, joined. Bad input
/// is an error naming the line and field, never a panic.
pub fn parse_bytes(bytes: &[u8]) -> Result<Vec<Block>, SourceError> {
    let mut loader = Loader::default();
    loader.bytes(bytes).map_err(SourceError::InvalidData)?;
    Ok(loader.finish().into_values().collect())
}

impl FileBlockSource {
    /// Loads every block under `path` (a directory of files, or one file).
    pub fn open(chain: Chain, path: impl AsRef<Path>) -> Result<Self, SourceError> {
        let path = path.as_ref();
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut f: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| bad(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("json" | "jsonl")
                        )
                })
                .collect();
            f.sort();
            f
        } else if path.is_file() {
            vec![path.to_owned()]
        } else {
            return Err(bad(path, "no such file or directory"));
        };
        let mut loader = Loader::default();
        for f in &files {
            loader.file(f)?;
        }
        let blocks = loader.finish();
        if blocks.is_empty() {
            return Err(bad(
                path,
                "no blocks found (expected eth_getBlockByNumber responses or ethereum-etl blocks.json)",
            ));
        }
        Ok(Self {
            chain,
            origin: path.display().to_string(),
            blocks,
        })
    }

    /// From `file://PATH`.
    pub fn from_url(chain: Chain, url: &str) -> Result<Self, SourceError> {
        let path = url
            .strip_prefix("file://")
            .ok_or_else(|| SourceError::InvalidData(format!("not a file URL: {url:?}")))?;
        Self::open(chain, path)
    }

    /// Block numbers held.
    pub fn numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.keys().copied()
    }
}

#[async_trait]
impl BlockSource for FileBlockSource {
    fn chain(&self) -> &Chain {
        &self.chain
    }

    async fn head(&self) -> Result<BlockHead, SourceError> {
        let (_, b) = self
            .blocks
            .last_key_value()
            .expect("open refuses an empty source");
        Ok(BlockHead {
            number: b.number,
            hash: b.hash,
        })
    }

    async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
        let mut out = Vec::with_capacity(range.len().min(10_000) as usize);
        for n in range.start()..=range.end() {
            let b = self
                .blocks
                .get(&n)
                .ok_or_else(|| SourceError::BlockNotFound {
                    number: n,
                    source_name: format!("files at {}", self.origin),
                })?;
            out.push(b.clone());
        }
        Ok(out)
    }
}
