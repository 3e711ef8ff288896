//! One attempt at reading a block range from one endpoint: blocks, parent links, receipts, the
//! checks that turn a node contradicting itself into a retryable failure, and the join into
//! [`Block`]s (steps 1 to 4 of the module docs).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use alloy_primitives::B256;
use futures::{StreamExt, TryStreamExt, stream};
use model_runner_core::ports::SourceError;
use model_runner_core::{Block, BlockRange};
use serde_json::{Value, json};

use super::endpoint::{Endpoint, method_missing};
use super::{Failure, classify, hex};
use crate::file_source::Loader;

/// The blocks of a range read and checked so far, kept across attempts.
#[derive(Default)]
pub(super) struct Progress(Mutex<BTreeMap<u64, Block>>);

/// A block as `eth_getBlockByNumber` gave it, before its receipts.
struct Header {
    number: u64,
    hash: B256,
    parent: B256,
    transactions: Vec<B256>,
    value: Value,
}

fn invalid(ep: &Endpoint, what: impl std::fmt::Display) -> Failure {
    Failure::Final(SourceError::InvalidData(
        ep.scrub(&format!("{}: {what}", ep.shown)),
    ))
}

fn hash_of(v: &Value, field: &str) -> Option<B256> {
    v.get(field)?.as_str()?.parse().ok()
}

/// Reads the blocks of `range` not in `progress` from `ep`; the whole range once all are in.
pub(super) async fn attempt(
    ep: &Endpoint,
    range: BlockRange,
    progress: &Progress,
) -> Result<Vec<Block>, Failure> {
    let missing: Vec<u64> = {
        let done = progress.0.lock().expect("progress lock");
        (range.start()..=range.end())
            .filter(|n| !done.contains_key(n))
            .collect()
    };
    let batches = batches(&missing, ep.batch);
    let headers: Vec<Header> = stream::iter(batches)
        .map(|b| headers(ep, b))
        .buffered(ep.concurrency)
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .flatten()
        .collect();
    check_links(ep, range, &headers, progress)?;

    // Receipts by batches of blocks; blocks that are complete are kept even if a batch fails.
    let mut groups: Vec<Vec<Header>> = Vec::new();
    for h in headers {
        match groups.last_mut() {
            Some(g) if g.len() < ep.batch => g.push(h),
            _ => groups.push(vec![h]),
        }
    }
    let results: Vec<Result<Vec<Block>, Failure>> = stream::iter(groups)
        .map(|hs| async move { complete(ep, &hs).await })
        .buffered(ep.concurrency)
        .collect()
        .await;
    let mut done = progress.0.lock().expect("progress lock");
    let mut failure = None;
    for r in results {
        match r {
            Ok(blocks) => done.extend(blocks.into_iter().map(|b| (b.number, b))),
            Err(f) => failure = failure.or(Some(f)),
        }
    }
    if let Some(f) = failure {
        return Err(f);
    }
    debug_assert_eq!(done.len() as u64, range.len());
    Ok(std::mem::take(&mut *done).into_values().collect())
}

/// `numbers` (ascending) as ranges of consecutive numbers of at most `size` blocks.
fn batches(numbers: &[u64], size: usize) -> Vec<BlockRange> {
    let mut out: Vec<BlockRange> = Vec::new();
    for &n in numbers {
        match out.last_mut() {
            Some(last) if last.end().checked_add(1) == Some(n) && (last.len() as usize) < size => {
                *last = BlockRange::new(last.start(), n).expect("ascending");
            }
            _ => out.push(BlockRange::single(n)),
        }
    }
    out
}

/// Step 1: `eth_getBlockByNumber(n, true)` for every block of `batch`, in one batch request.
async fn headers(ep: &Endpoint, batch: BlockRange) -> Result<Vec<Header>, Failure> {
    let method = "eth_getBlockByNumber";
    let answers = ep
        .batch(
            method,
            (batch.start()..=batch.end()).map(|n| json!([hex(n), true])),
        )
        .await
        .map_err(|e| classify(ep, method, e))?;
    let mut out = Vec::with_capacity(answers.len());
    for (number, answer) in (batch.start()..=batch.end()).zip(answers) {
        let value = answer.map_err(|e| classify(ep, method, e))?;
        if value.is_null() {
            return Err(Failure::Final(SourceError::BlockNotFound {
                number,
                source_name: ep.shown.clone(),
            }));
        }
        let said = value
            .get("number")
            .and_then(Value::as_str)
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok());
        if said != Some(number) {
            return Err(Failure::retry(format!(
                "{}: asked for block {number}, got block {said:?}",
                ep.shown
            )));
        }
        let (Some(hash), Some(parent)) = (hash_of(&value, "hash"), hash_of(&value, "parentHash"))
        else {
            return Err(invalid(
                ep,
                format_args!("block {number} has no hash or parentHash"),
            ));
        };
        let mut transactions = Vec::new();
        for tx in value
            .get("transactions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(h) = hash_of(tx, "hash") else {
                return Err(invalid(
                    ep,
                    format_args!(
                        "block {number} lists a transaction without its hash or only hashes (full transactions expected)"
                    ),
                ));
            };
            transactions.push(h);
        }
        out.push(Header {
            number,
            hash,
            parent,
            transactions,
            value,
        });
    }
    Ok(out)
}

/// Step 2: every block of `range` names the previous one as its parent, across what earlier
/// attempts read and this one. A broken link discards every kept block.
fn check_links(
    ep: &Endpoint,
    range: BlockRange,
    fresh: &[Header],
    progress: &Progress,
) -> Result<(), Failure> {
    let mut done = progress.0.lock().expect("progress lock");
    let fresh: HashMap<u64, (B256, B256)> = fresh
        .iter()
        .map(|h| (h.number, (h.hash, h.parent)))
        .collect();
    let link = |n: u64| {
        fresh
            .get(&n)
            .copied()
            .or_else(|| done.get(&n).map(|b| (b.hash, b.parent_hash)))
    };
    let mut broken = None;
    for n in range.start() + 1..=range.end() {
        let (Some((previous, _)), Some((_, parent))) = (link(n - 1), link(n)) else {
            continue;
        };
        if parent != previous {
            broken = Some(format!(
                "{}: block {n} names parent {parent}, but block {} is {previous} (the chain changed while it was read, or the node's backends disagree)",
                ep.shown,
                n - 1
            ));
            break;
        }
    }
    match broken {
        Some(message) => {
            done.clear();
            Err(Failure::retry(message))
        }
        None => Ok(()),
    }
}

/// Steps 3 and 4 for a batch of blocks: their receipts, checked, joined onto them.
async fn complete(ep: &Endpoint, headers: &[Header]) -> Result<Vec<Block>, Failure> {
    let busy: Vec<&Header> = headers
        .iter()
        .filter(|h| !h.transactions.is_empty())
        .collect();
    let mut receipts: Vec<Value> = Vec::new();
    let mut by_block = ep.receipts_by_block();
    if by_block && !busy.is_empty() {
        let method = "eth_getBlockReceipts";
        let answers = ep
            .batch(method, busy.iter().map(|h| json!([hex(h.number)])))
            .await
            .map_err(|e| classify(ep, method, e))?;
        for (h, answer) in busy.iter().zip(answers) {
            match answer {
                Ok(list) => receipts.extend(block_receipts(ep, h, list)?),
                Err(e) if method_missing(&e) => {
                    tracing::debug!(
                        endpoint = %ep.shown,
                        "no eth_getBlockReceipts: reading receipts per transaction"
                    );
                    ep.set_receipts_by_block(false);
                    by_block = false;
                    receipts.clear();
                    break;
                }
                Err(e) => return Err(classify(ep, method, e)),
            }
        }
        if by_block {
            ep.set_receipts_by_block(true);
        }
    }
    if !by_block {
        let method = "eth_getTransactionReceipt";
        let wanted: Vec<(&Header, B256)> = busy
            .iter()
            .flat_map(|h| h.transactions.iter().map(move |t| (*h, *t)))
            .collect();
        for group in wanted.chunks(ep.batch) {
            let answers = ep
                .batch(method, group.iter().map(|(_, t)| json!([t])))
                .await
                .map_err(|e| classify(ep, method, e))?;
            for ((h, tx), answer) in group.iter().zip(answers) {
                let r = answer.map_err(|e| classify(ep, method, e))?;
                if r.is_null() {
                    return Err(Failure::retry(format!(
                        "{}: the receipt of transaction {tx} of block {} is null (the node lags behind the block it served)",
                        ep.shown, h.number
                    )));
                }
                check_receipt(ep, h, &r, Some(*tx))?;
                receipts.push(r);
            }
        }
    }
    let mut loader = Loader::default();
    for h in headers {
        loader
            .value(&h.value)
            .map_err(|e| invalid(ep, format_args!("block {}: {e}", h.number)))?;
    }
    for r in &receipts {
        loader.value(r).map_err(|e| invalid(ep, e))?;
    }
    Ok(loader.finish().into_values().collect())
}

/// The answer of `eth_getBlockReceipts` for `h`: one receipt per listed transaction, each of
/// this block.
fn block_receipts(ep: &Endpoint, h: &Header, list: Value) -> Result<Vec<Value>, Failure> {
    let number = h.number;
    let Value::Array(list) = list else {
        return if list.is_null() {
            Err(Failure::retry(format!(
                "{}: no receipts for block {number} (the node lags behind the block it served)",
                ep.shown
            )))
        } else {
            Err(invalid(
                ep,
                format_args!("eth_getBlockReceipts of block {number} is not a list"),
            ))
        };
    };
    let mut seen: HashMap<B256, usize> = HashMap::new();
    for r in &list {
        if r.is_null() {
            return Err(Failure::retry(format!(
                "{}: a receipt of block {number} is null",
                ep.shown
            )));
        }
        if let Some(tx) = check_receipt(ep, h, r, None)? {
            *seen.entry(tx).or_default() += 1;
        }
    }
    if let Some(tx) = h
        .transactions
        .iter()
        .find(|t| seen.get(*t).copied() != Some(1))
    {
        return Err(Failure::retry(format!(
            "{}: the receipts of block {number} ({} for {} transactions) do not hold exactly one for transaction {tx}",
            ep.shown,
            list.len(),
            h.transactions.len()
        )));
    }
    if list.len() != h.transactions.len() {
        return Err(Failure::retry(format!(
            "{}: block {number} has {} transactions but {} receipts",
            ep.shown,
            h.transactions.len(),
            list.len()
        )));
    }
    Ok(list)
}

/// Checks a receipt of block `h` (of transaction `tx` when asked for one): its transaction is
/// listed in the block, and it and each of its logs name the block's hash. Returns its
/// transaction hash.
fn check_receipt(
    ep: &Endpoint,
    h: &Header,
    r: &Value,
    tx: Option<B256>,
) -> Result<Option<B256>, Failure> {
    let number = h.number;
    let Some(of) = hash_of(r, "transactionHash") else {
        return Err(invalid(
            ep,
            format_args!("a receipt of block {number} has no transactionHash"),
        ));
    };
    if tx.is_some_and(|t| t != of) || !h.transactions.contains(&of) {
        return Err(Failure::retry(format!(
            "{}: a receipt for transaction {of} is not one of block {number}'s",
            ep.shown
        )));
    }
    let named = hash_of(r, "blockHash");
    if named != Some(h.hash) {
        return Err(Failure::retry(format!(
            "{}: the receipt of transaction {of} names block hash {}, not block {number}'s {} (the node is on another branch or lags)",
            ep.shown,
            shown_hash(named),
            h.hash
        )));
    }
    for log in r
        .get("logs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let named = hash_of(log, "blockHash");
        if named != Some(h.hash) {
            return Err(Failure::retry(format!(
                "{}: a log of transaction {of} names block hash {}, not block {number}'s {}",
                ep.shown,
                shown_hash(named),
                h.hash
            )));
        }
    }
    Ok(Some(of))
}

fn shown_hash(h: Option<B256>) -> String {
    h.map_or_else(|| "(none)".to_owned(), |h| h.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_numbers_become_batches_of_consecutive_blocks() {
        let got: Vec<(u64, u64)> = batches(&[1, 2, 3, 4, 5, 7, 8, 10], 2)
            .iter()
            .map(|b| (b.start(), b.end()))
            .collect();
        assert_eq!(got, [(1, 2), (3, 4), (5, 5), (7, 8), (10, 10)]);
        assert!(batches(&[], 3).is_empty());
    }
}
