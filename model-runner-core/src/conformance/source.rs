//! The [`BlockSource`] conformance suite. A source's data is whatever it serves, so the caller
//! passes [`SourceFacts`]: what the test knows about the source (a range it serves whole, blocks
//! it lacks, whether its blocks link and carry receipts, contract reads with known answers).
//!
//! Checked, for every source:
//!
//! - `chain` is the chain the source was made for.
//! - `head` is a block the source serves (same number and hash), and a block past the head is
//!   `BlockNotFound` unless the head has since moved past it.
//! - `blocks` returns every block of a range, ascending, numbered as asked, each block
//!   internally consistent (transactions in block order, logs in log-index order and of this
//!   block and of its transactions); single-block and boundary ranges agree with the whole.
//! - A range with a missing block (past the head, straddling the head, in a gap, before the
//!   first block) is `BlockNotFound` naming a block of the range, never a partial answer.
//! - The same block number gives the same block, also to concurrent readers.
//! - `call` answers as of the given block, or says `Unsupported`.

use std::collections::HashSet;
use std::sync::Arc;

use alloy_primitives::{Address, Bytes};

use crate::chain::{BlockRange, Chain};
use crate::data::{Block, CallRequest};
use crate::ports::{BlockSource, SourceError, check_whole_range};

/// How far past the head a block is asked for when it must not exist yet.
const FAR: u64 = 1_000_000;

/// What `call` of a source is expected to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallSupport {
    /// `call` MUST say [`SourceError::Unsupported`].
    Unsupported,
    /// `call` is supported: each request MUST give its answer (state as of the request's block).
    Known(Vec<(CallRequest, Bytes)>),
}

/// What a test knows about the source under test.
#[derive(Debug, Clone)]
pub struct SourceFacts {
    /// The chain the source was made for.
    pub chain: Chain,
    /// A range the source serves whole. It is read several times (and by 8 tasks at once), so
    /// keep it to at most a few hundred blocks.
    pub known: BlockRange,
    /// Blocks at or below the head that the source does not have (a gap, or numbers before its
    /// first block); may be empty.
    pub missing: Vec<u64>,
    /// Whether each block's `parent_hash` is the previous block's hash (real chains, devnets;
    /// not hand-made fixtures).
    pub linked: bool,
    /// Whether every transaction of the known range carries its receipt (the source has them),
    /// so the last receipt's cumulative gas MUST equal the block's gas used.
    pub receipts: bool,
    /// What `call` is expected to do.
    pub call: CallSupport,
}

/// Runs every case against `source`.
pub async fn run_all<S: BlockSource>(source: S, facts: &SourceFacts) {
    let source = Arc::new(source);
    chain_is_the_configured_one(&*source, facts).await;
    head_is_served(&*source).await;
    known_range_is_whole_and_consistent(&*source, facts).await;
    sub_ranges_agree_with_the_whole(&*source, facts).await;
    past_the_head_is_not_found(&*source).await;
    missing_blocks_are_not_found_never_partial(&*source, facts).await;
    same_number_same_block_concurrently(source.clone(), facts).await;
    call_reads_state_or_is_unsupported(&*source, facts).await;
    calls_answer_each_request_as_call_does(&*source, facts).await;
}

/// `blocks(range)`, failing the test with the contract rule on error.
async fn fetch(source: &impl BlockSource, range: BlockRange) -> Vec<Block> {
    source.blocks(range).await.unwrap_or_else(|e| {
        panic!("blocks({range:?}) of a range the source serves MUST succeed, got {e:?}")
    })
}

/// Asserts `got` is exactly the blocks of `range`, ascending, each well-formed.
fn assert_whole(range: BlockRange, got: &[Block], facts: Option<&SourceFacts>) {
    if let Err(e) = check_whole_range(range, got) {
        panic!(
            "blocks({range:?}) MUST return every block of the range, ascending, never a partial range: {e}"
        );
    }
    for b in got {
        assert_block_consistent(b, facts.is_some_and(|f| f.receipts));
    }
    let hashes: HashSet<_> = got.iter().map(|b| b.hash).collect();
    assert_eq!(
        hashes.len(),
        got.len(),
        "distinct blocks MUST have distinct hashes"
    );
    if facts.is_some_and(|f| f.linked) {
        for w in got.windows(2) {
            assert_eq!(
                w[1].parent_hash, w[0].hash,
                "block {} MUST link to block {} (parent hash)",
                w[1].number, w[0].number
            );
        }
    }
}

/// One block holds its transactions in block order and its logs in log-index order, every log
/// of this block and (when the transactions are loaded) of one of its transactions.
fn assert_block_consistent(b: &Block, receipts: bool) {
    let n = b.number;
    assert!(
        b.transactions.windows(2).all(|w| w[0].index < w[1].index),
        "block {n}: transactions MUST be in block order"
    );
    assert!(
        b.logs.windows(2).all(|w| w[0].log_index < w[1].log_index),
        "block {n}: logs MUST be in log-index order, each once"
    );
    for l in &b.logs {
        assert_eq!(
            l.block_number, n,
            "block {n}: log {} belongs to another block",
            l.log_index
        );
        if !b.transactions.is_empty() {
            let tx = b
                .transactions
                .iter()
                .find(|t| t.hash == l.transaction_hash)
                .unwrap_or_else(|| {
                    panic!(
                        "block {n}: log {} names transaction {} the block does not hold",
                        l.log_index, l.transaction_hash
                    )
                });
            assert_eq!(
                tx.index, l.transaction_index,
                "block {n}: log {} has the wrong transaction index",
                l.log_index
            );
        }
    }
    if receipts {
        for t in &b.transactions {
            assert!(
                t.receipt.is_some(),
                "block {n}: transaction {} MUST carry its receipt (the source has receipts)",
                t.hash
            );
        }
        if let Some(last) = b.transactions.last().and_then(|t| t.receipt.as_ref()) {
            assert_eq!(
                last.cumulative_gas_used, b.gas_used,
                "block {n}: the receipts' cumulative gas MUST add up to the block's gas used \
                 (every transaction of the block)"
            );
        }
    }
}

/// Asserts `result` is `BlockNotFound` naming a block of `range`, never a partial answer.
fn assert_not_found(range: BlockRange, result: Result<Vec<Block>, SourceError>, why: &str) {
    match result {
        Err(SourceError::BlockNotFound { number, .. }) => assert!(
            range.contains(number),
            "blocks({range:?}): BlockNotFound MUST name a block of the range, named {number}"
        ),
        Err(other) => panic!("blocks({range:?}) ({why}) MUST be BlockNotFound, got {other:?}"),
        Ok(blocks) => panic!(
            "blocks({range:?}) ({why}) MUST be BlockNotFound, never partial: got {} blocks",
            blocks.len()
        ),
    }
}

/// The source says which chain it serves.
pub async fn chain_is_the_configured_one(source: &impl BlockSource, facts: &SourceFacts) {
    assert_eq!(
        source.chain(),
        &facts.chain,
        "chain() MUST be the chain the source was made for"
    );
}

/// The head is a block the source serves, with the same hash.
pub async fn head_is_served(source: &impl BlockSource) {
    let head = source.head().await.expect("head");
    let blocks = source
        .blocks(BlockRange::single(head.number))
        .await
        .unwrap_or_else(|e| panic!("head MUST be a block the source serves: {head:?}: {e:?}"));
    if let Err(e) = check_whole_range(BlockRange::single(head.number), &blocks) {
        panic!("a single-block range MUST give that one block: {e}");
    }
    // A live source may have replaced the head in between (a reorg): ask again before failing.
    if blocks[0].hash != head.hash {
        let again = source.head().await.expect("head");
        assert!(
            again.number != head.number || again.hash != head.hash,
            "head() and blocks() MUST agree on the head block's hash: {head:?} vs {}",
            blocks[0].hash
        );
    }
}

/// The known range comes back whole, ascending, consistent, and within the head.
pub async fn known_range_is_whole_and_consistent(source: &impl BlockSource, facts: &SourceFacts) {
    let got = fetch(source, facts.known).await;
    assert_whole(facts.known, &got, Some(facts));
    let head = source.head().await.expect("head");
    assert!(
        head.number >= facts.known.end(),
        "head MUST be the latest block the source serves: head {} but block {} is served",
        head.number,
        facts.known.end()
    );
}

/// Single-block and boundary ranges give the same blocks as the whole range.
pub async fn sub_ranges_agree_with_the_whole(source: &impl BlockSource, facts: &SourceFacts) {
    let known = facts.known;
    let whole = fetch(source, known).await;
    let (first, last) = (known.start(), known.end());
    let mut ranges = vec![
        BlockRange::single(first),
        BlockRange::single(last),
        BlockRange::new(first, first + (last - first) / 2).unwrap(),
        BlockRange::new(first + (last - first) / 2, last).unwrap(),
    ];
    if last > first {
        ranges.push(BlockRange::new(first + 1, last).unwrap());
        ranges.push(BlockRange::new(first, last - 1).unwrap());
    }
    for r in ranges {
        let got = fetch(source, r).await;
        assert_whole(r, &got, Some(facts));
        let offset = (r.start() - first) as usize;
        assert_eq!(
            got[..],
            whole[offset..offset + got.len()],
            "blocks({r:?}) MUST give the same blocks as the enclosing range {known:?}"
        );
    }
}

/// A block past the head is `BlockNotFound` (unless the head has since reached it), as is a
/// range starting at or before the head and ending past it: never the part up to the head.
pub async fn past_the_head_is_not_found(source: &impl BlockSource) {
    let head = source.head().await.expect("head").number;
    let next = BlockRange::single(head.saturating_add(1));
    match source.blocks(next).await {
        Err(SourceError::BlockNotFound { number, .. }) => assert_eq!(number, next.start()),
        Err(other) => panic!("the block after the head MUST be BlockNotFound, got {other:?}"),
        Ok(blocks) => {
            assert_whole(next, &blocks, None);
            let now = source.head().await.expect("head").number;
            assert!(
                now >= next.start(),
                "block {} was served, so head MUST have reached it (head is {now})",
                next.start()
            );
        }
    }
    let far = head.saturating_add(FAR);
    assert_not_found(
        BlockRange::single(far),
        source.blocks(BlockRange::single(far)).await,
        "far past the head",
    );
    assert_not_found(
        BlockRange::single(u64::MAX),
        source.blocks(BlockRange::single(u64::MAX)).await,
        "the largest block number",
    );
    let straddle = BlockRange::new(head.saturating_sub(2), far).unwrap();
    assert_not_found(
        straddle,
        source.blocks(straddle).await,
        "a range running past the head",
    );
}

/// A range with a missing block below the head is `BlockNotFound`, never partial.
pub async fn missing_blocks_are_not_found_never_partial(
    source: &impl BlockSource,
    facts: &SourceFacts,
) {
    let head = source.head().await.expect("head").number;
    for &m in &facts.missing {
        assert!(
            m <= head,
            "facts: missing block {m} is past the head {head}"
        );
        let single = BlockRange::single(m);
        assert_not_found(single, source.blocks(single).await, "a missing block");
        // The missing block with served neighbours around it, where there are any.
        let around = BlockRange::new(m.saturating_sub(1), m.saturating_add(1).min(head)).unwrap();
        assert_not_found(around, source.blocks(around).await, "a range with a gap");
        // The missing block at the end of a range whose other blocks are known.
        if facts.known.end() < m {
            let r = BlockRange::new(facts.known.end(), m).unwrap();
            assert_not_found(r, source.blocks(r).await, "a range ending in a gap");
        }
        if facts.known.start() > m {
            let r = BlockRange::new(m, facts.known.start()).unwrap();
            assert_not_found(r, source.blocks(r).await, "a range starting in a gap");
        }
    }
}

/// Reading the same range again, and from 8 tasks at once, gives the same blocks.
pub async fn same_number_same_block_concurrently<S: BlockSource>(
    source: Arc<S>,
    facts: &SourceFacts,
) {
    let first = fetch(&*source, facts.known).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (s, range) = (source.clone(), facts.known);
            tokio::spawn(async move { s.blocks(range).await })
        })
        .collect();
    for t in tasks {
        let again = t
            .await
            .expect("task")
            .expect("concurrent blocks() of a served range MUST succeed");
        assert!(
            again == first,
            "the same block number MUST give the same block (concurrent readers of {:?})",
            facts.known
        );
    }
}

/// `call` answers as of the block asked (by hash), or says `Unsupported`.
pub async fn call_reads_state_or_is_unsupported(source: &impl BlockSource, facts: &SourceFacts) {
    match &facts.call {
        CallSupport::Unsupported => {
            let block = facts.known.end();
            let block_hash = fetch(source, BlockRange::single(block)).await[0].hash;
            let request = CallRequest {
                to: Address::repeat_byte(0x42),
                data: Bytes::from_static(&[0x12, 0x34, 0x56, 0x78]),
                block,
                block_hash,
            };
            let err = source
                .call(&request)
                .await
                .expect_err("a source that cannot call contracts MUST say Unsupported");
            assert!(
                matches!(err, SourceError::Unsupported(_)),
                "a source that cannot call contracts MUST say Unsupported, got {err:?}"
            );
        }
        CallSupport::Known(calls) => {
            for (request, want) in calls {
                let got = source
                    .call(request)
                    .await
                    .unwrap_or_else(|e| panic!("call {request:?}: {e:?}"));
                assert_eq!(
                    &got, want,
                    "call MUST read contract state as of block {} ({})",
                    request.block, request.block_hash
                );
            }
        }
    }
}

/// `calls` gives one answer per request, in the requests' order, each what `call` gives (the
/// known calls forwards then backwards, so each is asked twice in one batch).
pub async fn calls_answer_each_request_as_call_does(
    source: &impl BlockSource,
    facts: &SourceFacts,
) {
    match &facts.call {
        CallSupport::Unsupported => {
            let block = facts.known.end();
            let block_hash = fetch(source, BlockRange::single(block)).await[0].hash;
            let requests: Vec<CallRequest> = (0..3u8)
                .map(|i| CallRequest {
                    to: Address::repeat_byte(0x42),
                    data: Bytes::from(vec![0x12, 0x34, 0x56, i]),
                    block,
                    block_hash,
                })
                .collect();
            let answers = source.calls(&requests).await;
            assert_eq!(answers.len(), 3, "calls MUST give one answer per request");
            for answer in answers {
                assert!(
                    matches!(answer, Err(SourceError::Unsupported(_))),
                    "a source that cannot call contracts MUST say Unsupported, got {answer:?}"
                );
            }
        }
        CallSupport::Known(calls) => {
            let order: Vec<&(CallRequest, Bytes)> =
                calls.iter().chain(calls.iter().rev()).collect();
            let requests: Vec<CallRequest> = order.iter().map(|(r, _)| r.clone()).collect();
            let answers = source.calls(&requests).await;
            assert_eq!(
                answers.len(),
                requests.len(),
                "calls MUST give one answer per request"
            );
            for ((request, want), got) in order.into_iter().zip(answers) {
                let got = got.unwrap_or_else(|e| panic!("calls, {request:?}: {e:?}"));
                assert_eq!(
                    &got, want,
                    "calls MUST answer each request in order, as call does (block {}, {})",
                    request.block, request.block_hash
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use alloy_primitives::B256;

    use super::*;
    use crate::data::{Log, Receipt, Transaction};
    use crate::memory::MemoryBlockSource;

    /// Blocks `first..=last`, linked, each with two transactions and a log of the second.
    fn chain(first: u64, last: u64) -> Vec<Block> {
        let hash = |n: u64| B256::from(alloy_primitives::U256::from(n.wrapping_add(1)));
        (first..=last)
            .map(|n| {
                let transactions: Vec<Transaction> = (0..2)
                    .map(|i| Transaction {
                        hash: B256::from(alloy_primitives::U256::from(n * 100 + i + 7)),
                        index: i,
                        from: Address::repeat_byte(1),
                        to: Some(Address::repeat_byte(2)),
                        value: alloy_primitives::U256::from(i),
                        gas: 30_000,
                        gas_price: Some(1),
                        nonce: i,
                        input: Bytes::new(),
                        receipt: Some(Receipt {
                            status: Some(true),
                            gas_used: 21_000,
                            cumulative_gas_used: 21_000 * (i + 1),
                            contract_address: None,
                            effective_gas_price: None,
                        }),
                    })
                    .collect();
                let logs = vec![Log {
                    address: Address::repeat_byte(3),
                    topics: vec![B256::repeat_byte(4)],
                    data: Bytes::new(),
                    log_index: 0,
                    transaction_hash: transactions[1].hash,
                    transaction_index: 1,
                    block_number: n,
                }];
                Block {
                    gas_used: 42_000,
                    transactions,
                    logs,
                    ..Block::empty(n, hash(n), hash(n.wrapping_sub(1)), 1_700_000_000 + n)
                }
            })
            .collect()
    }

    fn eth() -> Chain {
        Chain::new("ethereum").unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_source_conformance() {
        run_all(
            MemoryBlockSource::new(eth(), chain(100, 140)),
            &SourceFacts {
                chain: eth(),
                known: BlockRange::new(100, 140).unwrap(),
                missing: vec![0, 98, 99],
                linked: true,
                receipts: true,
                call: CallSupport::Unsupported,
            },
        )
        .await;
        run_all(
            MemoryBlockSource::new(eth(), chain(0, 0)),
            &SourceFacts {
                chain: eth(),
                known: BlockRange::single(0),
                missing: vec![],
                linked: true,
                receipts: true,
                call: CallSupport::Unsupported,
            },
        )
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "partial")]
    async fn a_partial_source_fails_the_suite() {
        /// Answers the blocks it has and silently drops the rest.
        #[derive(Debug)]
        struct Partial(MemoryBlockSource, Chain);
        #[async_trait::async_trait]
        impl BlockSource for Partial {
            fn chain(&self) -> &Chain {
                &self.1
            }
            async fn head(&self) -> Result<crate::data::BlockHead, SourceError> {
                self.0.head().await
            }
            async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
                let head = self.0.head().await?.number;
                if range.start() > head {
                    return Ok(vec![]);
                }
                self.0
                    .blocks(BlockRange::new(range.start(), range.end().min(head)).unwrap())
                    .await
            }
        }
        run_all(
            Partial(MemoryBlockSource::new(eth(), chain(0, 9)), eth()),
            &SourceFacts {
                chain: eth(),
                known: BlockRange::new(0, 9).unwrap(),
                missing: vec![],
                linked: true,
                receipts: true,
                call: CallSupport::Unsupported,
            },
        )
        .await;
    }
}
