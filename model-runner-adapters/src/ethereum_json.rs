//! The one decoder of Ethereum JSON: blocks, transactions, receipts and logs as JSON-RPC
//! responses (`eth_getBlockByNumber` with full transactions, `eth_getTransactionReceipt`,
//! `eth_getBlockReceipts`, `eth_getLogs`, bare results or whole responses) or as ethereum-etl
//! export rows (`blocks.json`, `transactions.json`, `receipts.json`, `logs.json`,
//! `token_transfers.json`).
//!
//! Input is turned into [`Row`]s, one per record, unjoined; each reader joins them its own way:
//! the file source ([`crate::file_source`]) and the JSON-RPC source (`jsonrpc`, feature
//! `jsonrpc`) join transactions, receipts and logs onto blocks, and batch-index takes
//! the participants of every row. Field names are accepted in either spelling (JSON-RPC
//! camelCase, ethereum-etl snake_case); quantities as `"0x1a"`, `"26"` or `26`; ethereum-etl's
//! bare integers beyond `u64` (wei values) stay exact.
//!
//! [`line_rows`] is the hot path of JSON-lines exports: an ethereum-etl log row is parsed
//! borrowed from its line, without building a [`Value`]; every other line goes through
//! [`value_rows`]. Bad input is a [`DecodeError`] naming the field, never a panic.

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256, Bytes, U256, hex};
use model_runner_core::{Block, Log, Receipt, Transaction};
use serde_json::Value;

/// One record decoded from Ethereum JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Row {
    /// A block header (`eth_getBlockByNumber`, ethereum-etl `blocks.json`), with its
    /// transactions when the response held them in full (their receipts are `None`; its
    /// `logs` are empty).
    Block(Block),
    /// A transaction on its own (ethereum-etl `transactions.json`, `eth_getTransactionByHash`).
    Transaction {
        /// The block holding it.
        block_number: u64,
        /// The transaction (its receipt is `None`).
        transaction: Transaction,
    },
    /// A receipt; the logs it holds follow it as [`Row::Log`]s.
    Receipt {
        /// The block of its transaction, when the row names it.
        block_number: Option<u64>,
        /// The transaction it is the receipt of.
        transaction_hash: B256,
        /// The receipt.
        receipt: Receipt,
    },
    /// A log (ethereum-etl `logs.json`, `eth_getLogs` items, a receipt's logs).
    Log(Log),
    /// An ethereum-etl `token_transfers.json` row (the same transfer is also a `Transfer` log).
    TokenTransfer {
        /// The block holding it.
        block_number: u64,
        /// The token contract.
        token: Address,
        /// The sender, when named.
        from: Option<Address>,
        /// The recipient, when named.
        to: Option<Address>,
    },
    /// A JSON-RPC error response (`{"error": ...}` without a result): its error object.
    RpcError(String),
    /// A JSON value that holds none of the above (e.g. `eth_newFilter`'s filter id).
    Other,
}

/// Input that is not valid Ethereum JSON; the message names the line and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

impl From<String> for DecodeError {
    fn from(message: String) -> Self {
        DecodeError(message)
    }
}

/// Decodes one JSON value (a JSON-RPC response, a bare result, a list of results, or an
/// ethereum-etl row), handing each record to `out` in order.
pub fn value_rows(v: &Value, out: &mut impl FnMut(Row)) -> Result<(), DecodeError> {
    rows(v, out).map_err(DecodeError)
}

/// Decodes one line of a JSON-lines file; a blank line holds no rows.
pub fn line_rows(line: &[u8], out: &mut impl FnMut(Row)) -> Result<(), DecodeError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    // The hot row of token-transfer exports: read in one pass by hand when it has the plain
    // shape ethereum-etl writes, else borrowed through serde; neither builds a `Value`.
    if let Some(log) = etl_log_line(line).or_else(|| EtlLog::read(line)) {
        out(Row::Log(log));
        return Ok(());
    }
    let text = std::str::from_utf8(line).map_err(|e| DecodeError(format!("not UTF-8: {e}")))?;
    let v = lossless_row(text).map_err(|e| DecodeError(e.to_string()))?;
    value_rows(&v, out)
}

/// Decodes one file's bytes: one JSON document (possibly pretty-printed), or JSON lines (an
/// error then names its 1-based line).
pub fn bytes_rows(bytes: &[u8], out: &mut impl FnMut(Row)) -> Result<(), DecodeError> {
    match serde_json::from_slice::<Value>(bytes) {
        // A one-row file whose bare integers went through `f64`: read again, exactly.
        Ok(Value::Object(o))
            if o.values()
                .any(|x| x.as_number().is_some_and(|n| n.is_f64())) =>
        {
            let text =
                std::str::from_utf8(bytes).map_err(|e| DecodeError(format!("not UTF-8: {e}")))?;
            let v = lossless_row(text).map_err(|e| DecodeError(e.to_string()))?;
            value_rows(&v, out)
        }
        Ok(v) => value_rows(&v, out),
        // Not one JSON document: JSON lines.
        Err(_) => {
            for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
                line_rows(line, out).map_err(|e| DecodeError(format!("line {}: {e}", i + 1)))?;
            }
            Ok(())
        }
    }
}

fn rows(v: &Value, out: &mut impl FnMut(Row)) -> Result<(), String> {
    let v = match v.get("result") {
        Some(r) => r,
        None => match v.get("error") {
            Some(e) => {
                out(Row::RpcError(e.to_string()));
                return Ok(());
            }
            None => v,
        },
    };
    let Value::Object(o) = v else {
        match v {
            Value::Array(items) => {
                for item in items {
                    rows(item, out)?;
                }
            }
            // `{"result": null}`: nothing there (yet).
            Value::Null => {}
            _ => out(Row::Other),
        }
        return Ok(());
    };
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
            block.transactions.push(parse_tx(t)?.1);
        }
        out(Row::Block(block));
    } else if kind == "block" || o.contains_key("parent_hash") {
        out(Row::Block(parse_block_header(v)?));
    } else if o.contains_key("logs")
        && (o.contains_key("transactionHash") || o.contains_key("transaction_hash"))
    {
        out(parse_receipt(v)?);
        for l in o["logs"].as_array().into_iter().flatten() {
            out(Row::Log(parse_log(l)?));
        }
    } else if kind == "log" || o.contains_key("topics") {
        out(Row::Log(parse_log(v)?));
    } else if kind == "receipt"
        || o.contains_key("cumulative_gas_used")
        || o.contains_key("cumulativeGasUsed")
    {
        out(parse_receipt(v)?);
    } else if kind == "token_transfer" || o.contains_key("token_address") {
        out(Row::TokenTransfer {
            block_number: required(v, pick(v, &["blockNumber", "block_number"]))?,
            token: need(v, "token_address")?,
            from: parsed(v, "from_address")?,
            to: parsed(v, "to_address")?,
        });
    } else if kind == "transaction" || o.contains_key("from_address") || o.contains_key("input") {
        let (block_number, transaction) = parse_tx(v)?;
        out(Row::Transaction {
            block_number,
            transaction,
        });
    } else {
        out(Row::Other);
    }
    Ok(())
}

/// A 32-byte topic, `0x`-prefixed or not.
fn topic(s: &str) -> Result<B256, String> {
    s.parse()
        .map_err(|_| format!("topic {s:?} is not 32 bytes of hex"))
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

pub(crate) fn parse_u64(s: &str) -> Option<u64> {
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
            .map(|t| match t {
                Value::String(s) => topic(s),
                other => Err(format!("topic {other} is not a string")),
            })
            .collect::<Result<Vec<B256>, _>>()?,
        // ethereum-etl CSV-in-JSON style: "t0,t1,t2".
        Some(Value::String(s)) if !s.is_empty() => {
            s.split(',').map(topic).collect::<Result<Vec<B256>, _>>()?
        }
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

fn parse_receipt(v: &Value) -> Result<Row, String> {
    Ok(Row::Receipt {
        block_number: quantity(v, pick(v, &["blockNumber", "block_number"]))?,
        transaction_hash: need(v, pick(v, &["transactionHash", "transaction_hash"]))?,
        receipt: Receipt {
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
    })
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

/// An ethereum-etl `logs.json` row, borrowed from its line (`export_receipts_and_logs` writes
/// no `type`; `stream` writes `"type": "log"`).
#[derive(serde::Deserialize)]
struct EtlLog<'a> {
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    log_index: u64,
    transaction_hash: &'a str,
    transaction_index: u64,
    block_number: u64,
    address: &'a str,
    data: &'a str,
    topics: Vec<&'a str>,
}

impl EtlLog<'_> {
    /// The log of an ethereum-etl log row; `None` if the line is not one or a field does not
    /// parse (the general path then names it).
    fn read(line: &[u8]) -> Option<Log> {
        serde_json::from_slice::<EtlLog<'_>>(line)
            .ok()
            .filter(|row| row.kind.is_none_or(|k| k == "log"))?
            .to_log()
    }

    /// `None` if a field does not parse (the general path then names it).
    fn to_log(&self) -> Option<Log> {
        Some(Log {
            address: self.address.parse().ok()?,
            topics: self
                .topics
                .iter()
                .map(|t| t.parse().ok())
                .collect::<Option<Vec<B256>>>()?,
            data: self.data.parse().ok()?,
            log_index: self.log_index,
            transaction_hash: self.transaction_hash.parse().ok()?,
            transaction_index: self.transaction_index,
            block_number: self.block_number,
        })
    }
}

/// Reads an ethereum-etl `logs.json` row in one pass, allocating only the log's topics and
/// data. It takes the plain shape ethereum-etl writes: a flat object whose keys and values
/// are strings of printable ASCII without escapes, unsigned integers or `null`, the seven
/// [`EtlLog`] fields once each (`topics` an array of such strings, `type` absent or `"log"`),
/// and nothing but whitespace after it. For anything else it is `None` and [`line_rows`] reads
/// the line through serde: what this takes, [`EtlLog`] reads to the same [`Log`].
fn etl_log_line(line: &[u8]) -> Option<Log> {
    let mut c = Cursor { b: line, i: 0 };
    c.ws();
    c.eat(b'{')?;
    let (mut log_index, mut transaction_hash, mut transaction_index) = (None, None, None);
    let (mut block_number, mut address, mut data, mut topics) = (None, None, None, None);
    let mut kind_seen = false;
    loop {
        c.ws();
        let key = c.string()?;
        c.ws();
        c.eat(b':')?;
        c.ws();
        match key {
            b"log_index" => once(&mut log_index, c.uint())?,
            b"transaction_hash" => once(&mut transaction_hash, c.string())?,
            b"transaction_index" => once(&mut transaction_index, c.uint())?,
            b"block_number" => once(&mut block_number, c.uint())?,
            b"address" => once(&mut address, c.string())?,
            b"data" => once(&mut data, c.string())?,
            b"topics" => once(&mut topics, c.topics())?,
            b"type" => {
                if kind_seen || c.string()? != b"log" {
                    return None;
                }
                kind_seen = true;
            }
            _ => c.plain_value()?,
        }
        c.ws();
        match c.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    c.ws();
    if c.i != line.len() {
        return None;
    }
    Some(Log {
        address: Address::from(hex::decode_to_array(address?).ok()?),
        topics: topics?,
        data: hex::decode(data?).ok()?.into(),
        log_index: log_index?,
        transaction_hash: B256::from(hex::decode_to_array(transaction_hash?).ok()?),
        transaction_index: transaction_index?,
        block_number: block_number?,
    })
}

/// Fills a field's slot; `None` if it was filled already (serde's derive refuses a field given
/// twice too) or the value did not read.
fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

/// A read position in one JSON line, for [`etl_log_line`]; every reader is `None` on input
/// outside the plain shape it takes.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    /// Skips JSON whitespace (not every ASCII space: a form feed is not JSON).
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// A string of printable ASCII without escapes; its content.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = &self.b[self.i..];
        let len = memchr::memchr(b'"', rest)?;
        let s = &rest[..len];
        // Not short-circuiting, so it runs over many bytes at a time.
        let plain = !s.iter().fold(false, |odd, &c| {
            odd | !(b' '..=b'~').contains(&c) | (c == b'\\')
        });
        if !plain {
            return None;
        }
        self.i += len + 1;
        Some(s)
    }

    /// An unsigned integer as serde reads a `u64`: no sign, fraction, exponent or leading zero.
    fn uint(&mut self) -> Option<u64> {
        let digits = self.b[self.i..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let d = &self.b[self.i..self.i + digits];
        if d.is_empty() || (d[0] == b'0' && d.len() > 1) {
            return None;
        }
        let mut n: u64 = 0;
        for c in d {
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        }
        self.i += digits;
        if let Some(b'.' | b'e' | b'E') = self.b.get(self.i) {
            return None;
        }
        Some(n)
    }

    /// An array of topics: strings of 32 bytes of hex.
    fn topics(&mut self) -> Option<Vec<B256>> {
        self.eat(b'[')?;
        let mut topics = Vec::with_capacity(4);
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Some(topics);
        }
        loop {
            self.ws();
            topics.push(B256::from(hex::decode_to_array(self.string()?).ok()?));
            self.ws();
            match self.next()? {
                b',' => continue,
                b']' => return Some(topics),
                _ => return None,
            }
        }
    }

    /// The value of a field the log does not use: a plain string, an unsigned integer or `null`.
    fn plain_value(&mut self) -> Option<()> {
        match self.b.get(self.i)? {
            b'"' => self.string().map(drop),
            b'n' => {
                let null = self.b[self.i..].starts_with(b"null");
                self.i += 4;
                null.then_some(())
            }
            _ => self.uint().map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSFER: &str = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";

    fn decoded(input: &str) -> Result<Vec<String>, String> {
        let mut got = Vec::new();
        bytes_rows(input.as_bytes(), &mut |row| {
            got.push(match row {
                Row::Block(b) => format!("block {} txs {}", b.number, b.transactions.len()),
                Row::Transaction {
                    block_number,
                    transaction,
                } => format!(
                    "tx {block_number}/{} value {}",
                    transaction.index, transaction.value
                ),
                Row::Receipt {
                    block_number,
                    receipt,
                    ..
                } => format!("receipt {block_number:?} gas {}", receipt.gas_used),
                Row::Log(l) => format!(
                    "log {}/{} topics {}",
                    l.block_number,
                    l.log_index,
                    l.topics.len()
                ),
                Row::TokenTransfer {
                    block_number, to, ..
                } => format!("token transfer {block_number} to {}", to.is_some()),
                Row::RpcError(e) => format!("rpc error {e}"),
                Row::Other => "other".to_string(),
            })
        })
        .map_err(|e| e.to_string())?;
        Ok(got)
    }

    #[test]
    fn every_shape_decodes_to_its_rows() {
        let hash = "0x1111111111111111111111111111111111111111111111111111111111111111";
        let addr = "0xae2fc483527b8ef99eb5d9b44875f005ba1fae13";
        let etl_tx = format!(
            r#"{{"hash": "{hash}", "nonce": 1, "block_number": 5, "transaction_index": 2, "from_address": "{addr}", "to_address": null, "value": 1000000000000000000000000, "gas": 21000, "gas_price": 1, "input": "0x"}}"#
        );
        let etl_log = format!(
            r#"{{"log_index": 0, "transaction_hash": "{hash}", "transaction_index": 2, "block_number": 5, "address": "{addr}", "data": "0x", "topics": ["{TRANSFER}"]}}"#
        );
        let rpc_log = format!(
            r#"{{"address": "{addr}", "topics": [], "data": "0x", "logIndex": "0x1", "transactionHash": "{hash}", "transactionIndex": "0x0", "blockNumber": "0x6"}}"#
        );
        let rpc_receipt = format!(
            r#"{{"jsonrpc": "2.0", "id": 1, "result": {{"transactionHash": "{hash}", "blockNumber": "0x6", "gasUsed": "0x5208", "cumulativeGasUsed": "0x5208", "status": "0x1", "logs": [{rpc_log}]}}}}"#
        );
        let rpc_block = format!(
            r#"{{"result": {{"number": "0x6", "hash": "{hash}", "parentHash": "{hash}", "timestamp": "0x1", "gasUsed": "0x0", "gasLimit": "0x1", "transactions": []}}}}"#
        );
        let token = format!(
            r#"{{"token_address": "{addr}", "from_address": "{addr}", "to_address": "{addr}", "value": "7", "transaction_hash": "{hash}", "log_index": 3, "block_number": 9}}"#
        );
        type Case = (
            &'static str,
            String,
            Result<Vec<&'static str>, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "etl transaction, wei beyond u64",
                etl_tx.clone(),
                Ok(vec!["tx 5/2 value 1000000000000000000000000"]),
            ),
            (
                "etl log (borrowed fast path)",
                etl_log.clone(),
                Ok(vec!["log 5/0 topics 1"]),
            ),
            (
                "etl lines",
                format!("{etl_tx}\n\n{etl_log}\n"),
                Ok(vec![
                    "tx 5/2 value 1000000000000000000000000",
                    "log 5/0 topics 1",
                ]),
            ),
            (
                "rpc receipt then its logs",
                rpc_receipt,
                Ok(vec!["receipt Some(6) gas 21000", "log 6/1 topics 0"]),
            ),
            ("rpc block", rpc_block, Ok(vec!["block 6 txs 0"])),
            (
                "eth_getLogs list",
                format!(r#"{{"result": [{rpc_log}, {rpc_log}]}}"#),
                Ok(vec!["log 6/1 topics 0", "log 6/1 topics 0"]),
            ),
            (
                "token transfer",
                token,
                Ok(vec!["token transfer 9 to true"]),
            ),
            ("null result", r#"{"result": null}"#.into(), Ok(vec![])),
            (
                "rpc error",
                r#"{"error": {"code": -32000}}"#.into(),
                Ok(vec![r#"rpc error {"code":-32000}"#]),
            ),
            (
                "unknown object",
                r#"{"foo": 1, "block_number": 1}"#.into(),
                Ok(vec!["other"]),
            ),
            (
                "hashes-only block",
                format!(
                    r#"{{"number": "0x1", "hash": "{hash}", "parentHash": "{hash}", "timestamp": "0x1", "gasUsed": "0x0", "gasLimit": "0x1", "transactions": ["{hash}"]}}"#
                ),
                Err("hashes only"),
            ),
            (
                "non-hex topic",
                r#"{"blockNumber": "0x1", "topics": ["0x00000000000000000000000؞c4df82?e37eX2187gc8c011a23d743b4f39019a"]}"#.to_string(),
                Err("is not 32 bytes of hex"),
            ),
            (
                "bad quantity on line 2",
                format!(
                    "{etl_log}\n{{\"topics\": [], \"address\": \"{addr}\", \"log_index\": \"x\"}}"
                ),
                Err("line 2: field log_index"),
            ),
            ("truncated", r#"{"result": "#.into(), Err("line 1")),
        ];
        for (name, input, want) in cases {
            match (decoded(&input), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(e), Err(want)) => assert!(e.contains(want), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// The hand reader of log rows takes only lines serde's [`EtlLog`] reads, and reads them to
    /// the same log: checked on rows as ethereum-etl writes them and on every one-byte change,
    /// deletion and insertion of them.
    #[test]
    fn hand_read_log_rows_match_serde() {
        let hash = "0x9d0c316ce98a996b23d2d0bd6d0ea5ddc04ffcb0f5d5fad8ef73c57710fc73d4";
        let addr = "0x44afd15c77804afb472e0fa031ef58636f8a88ee";
        let lines = [
            format!(
                r#"{{"log_index": 0, "transaction_hash": "{hash}", "transaction_index": 0, "block_hash": "{hash}", "block_number": 18000000, "address": "{addr}", "data": "0x000000000000000000000000000000000000000000000000000000003842235f", "topics": ["{TRANSFER}", "{hash}", "{hash}"]}}"#
            ),
            format!(
                r#"{{"type":"log","log_index":12,"transaction_hash":"{hash}","transaction_index":3,"block_number":7,"address":"{addr}","data":"0x","topics":[],"extra":null,"n":5}}"#
            ),
            format!(
                "\t{{ \"topics\" : [ \"{TRANSFER}\" ] , \"data\" : \"\" , \"address\" : \"{addr}\" , \"block_number\" : 1 , \"transaction_index\" : 2 , \"transaction_hash\" : \"{hash}\" , \"log_index\" : 3 }}\r"
            ),
        ];
        let mut checked = 0;
        let mut check = |line: &[u8]| {
            if let Some(fast) = etl_log_line(line) {
                assert_eq!(
                    Some(fast),
                    EtlLog::read(line),
                    "{}",
                    String::from_utf8_lossy(line)
                );
                checked += 1;
            }
        };
        for line in &lines {
            let line = line.as_bytes();
            assert!(
                etl_log_line(line).is_some(),
                "{}",
                String::from_utf8_lossy(line)
            );
            check(line);
            for i in 0..line.len() {
                let mut cut = line.to_vec();
                cut.remove(i);
                check(&cut);
                for b in [
                    b'"', b'\\', b'0', b'7', b'a', b'x', b' ', b'\x0c', b',', b':', b'{', b'}',
                    b'[', b']', b'-', b'.', b'e', b'n', 0x01, 0xc3,
                ] {
                    let mut changed = line.to_vec();
                    changed[i] = b;
                    check(&changed);
                    changed.insert(i, b);
                    check(&changed);
                }
            }
        }
        // Most changes land in a hex digit or a number and still read.
        assert!(checked > 1000, "{checked}");
    }
}
