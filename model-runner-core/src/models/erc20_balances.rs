//! `erc20_balances`: a `reads` model. For every (token, holder) an ERC-20 `Transfer` touches in
//! a block (sender and recipient, never the zero address of mints and burns), the holder's
//! `balanceOf` as of that block, read with `eth_call` pinned to the block's hash.
//!
//! ```text
//! blocks ──decode_transfer──▶ distinct (block, token, holder), in log order
//!        ──one BlockSource::calls of every balanceOf──▶ one record each
//! ```
//!
//! A pair is read once per block however many transfers touch it in that block. All of a run's
//! reads go to the source as one [`BlockSource::calls`]: the JSON-RPC source sends them as
//! JSON-RPC batches within its per-node batch size, concurrency and rate limits, a
//! [`CachedCalls`](crate::ports::CachedCalls) wrapper answers repeats and passes on only the
//! misses, and a source without batches calls them concurrently ([`CALL_CONCURRENCY`]).
//!
//! # When a token does not answer
//!
//! Not every contract that emits a `Transfer` is an ERC-20 with a working `balanceOf`. A call
//! that reverts ([`SourceError::Reverted`]) or answers anything but one 32-byte word is recorded
//! with a `null` balance and the reason in `balance_error`; the run goes on. Any other source
//! error (the node unreachable, rate-limited, ...) fails the run's attempt, so it is retried:
//! a balance is never silently missing because the node was down.

use std::collections::HashSet;

use alloy_primitives::{Address, Bytes, U256};
use async_trait::async_trait;
use serde_json::json;

use crate::chain::ModelKind;
use crate::data::{Block, CallRequest};
use crate::model::{FieldType, Model, ModelContext, ModelError, ModelSpec, Record, RecordSchema};
use crate::models::decode_transfer;
use crate::ports::{BlockSource, SourceError};

/// Selector of `balanceOf(address)`.
const BALANCE_OF: [u8; 4] = [0x70, 0xa0, 0x82, 0x31];

/// `balanceOf` calls of one model run in flight at most on a source that does not batch them
/// (the default [`BlockSource::calls`]).
pub const CALL_CONCURRENCY: usize = crate::ports::CALLS_IN_FLIGHT;

/// The `erc20_balances` model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Erc20Balances;

/// One (block, token, holder) to read, with its position among the block's pairs.
struct Touched<'a> {
    block: &'a Block,
    position: u64,
    token: Address,
    holder: Address,
}

/// The distinct (token, holder) pairs of `block`'s ERC-20 transfers, in order of first touch.
fn touched(block: &Block) -> Vec<Touched<'_>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for t in block.logs.iter().filter_map(decode_transfer) {
        for holder in [t.from, t.to] {
            if holder != Address::ZERO && seen.insert((t.token, holder)) {
                out.push(Touched {
                    block,
                    position: out.len() as u64,
                    token: t.token,
                    holder,
                });
            }
        }
    }
    out
}

/// `balanceOf(holder)` calldata.
fn balance_of(holder: Address) -> Bytes {
    let mut data = Vec::with_capacity(36);
    data.extend_from_slice(&BALANCE_OF);
    data.extend_from_slice(holder.into_word().as_slice());
    data.into()
}

/// The balance, or why there is none; other source errors fail the run.
fn balance(answer: Result<Bytes, SourceError>) -> Result<Result<U256, String>, SourceError> {
    match answer {
        Ok(word) if word.len() == 32 => Ok(Ok(U256::from_be_slice(&word))),
        Ok(other) => Ok(Err(format!(
            "malformed answer: {} bytes, expected one 32-byte word",
            other.len()
        ))),
        Err(SourceError::Reverted(reason)) => Ok(Err(format!("reverted: {reason}"))),
        Err(e) => Err(e),
    }
}

/// The call reading `r`'s balance at its block, pinned to the block's hash.
fn request(r: &Touched<'_>) -> CallRequest {
    CallRequest {
        to: r.token,
        data: balance_of(r.holder),
        block: r.block.number,
        block_hash: r.block.hash,
    }
}

#[async_trait]
impl Model for Erc20Balances {
    fn spec(&self) -> ModelSpec {
        use FieldType::{BigInt, Hex, String, UInt64};
        ModelSpec::new("erc20_balances", "1.0.0", ModelKind::Reads).with_schema(
            RecordSchema::new()
                .required("token_address", Hex, "token contract, lowercase 0x-hex")
                .required(
                    "holder_address",
                    Hex,
                    "account whose balance was read, lowercase 0x-hex",
                )
                .nullable(
                    "balance",
                    BigInt,
                    "balanceOf(holder) after the block (uint256, decimal); null when the call \
                 reverted or its answer was not one word",
                )
                .nullable(
                    "balance_error",
                    String,
                    "why balance is null; null when it is not",
                )
                .required("block_number", UInt64, "block number"),
        )
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        let reads: Vec<Touched<'_>> = blocks.iter().flat_map(touched).collect();
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        let requests: Vec<CallRequest> = reads.iter().map(request).collect();
        // One answer per request, in order: records come out in (block, position) order.
        let answers = ctx.source.calls(&requests).await;
        if answers.len() != requests.len() {
            return Err(SourceError::InvalidData(format!(
                "the source answered {} of {} balanceOf calls",
                answers.len(),
                requests.len()
            ))
            .into());
        }
        let balances = answers
            .into_iter()
            .map(balance)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(reads
            .iter()
            .zip(balances)
            .map(|(r, b)| {
                let (balance, error) = match b {
                    Ok(v) => (json!(v.to_string()), json!(null)),
                    Err(reason) => (json!(null), json!(reason)),
                };
                ctx.record(
                    r.block,
                    r.position,
                    json!({
                        "token_address": format!("{:#x}", r.token),
                        "holder_address": format!("{:#x}", r.holder),
                        "balance": balance,
                        "balance_error": error,
                        "block_number": r.block.number,
                    }),
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering::SeqCst;

    use alloy_primitives::B256;

    use super::*;
    use crate::chain::{BlockRange, Chain};
    use crate::data::Log;
    use crate::memory::MemoryBlockSource;
    use crate::models::TRANSFER_TOPIC;
    use crate::models::tests::FakeCalls;
    use crate::run::RunId;

    fn addr(b: u8) -> Address {
        Address::with_last_byte(b)
    }

    /// An ERC-20 transfer log of `token` from `from` to `to`.
    fn transfer(block: u64, log_index: u64, token: Address, from: Address, to: Address) -> Log {
        Log {
            address: token,
            topics: vec![TRANSFER_TOPIC, from.into_word(), to.into_word()],
            data: Bytes::from(U256::from(5).to_be_bytes::<32>().to_vec()),
            log_index,
            transaction_hash: B256::with_last_byte(1),
            transaction_index: 0,
            block_number: block,
        }
    }

    fn block(number: u64, logs: Vec<Log>) -> Block {
        let hash = B256::from(U256::from(number + 0xB00));
        Block {
            logs,
            ..Block::empty(number, hash, B256::ZERO, 1_700_000_000 + number)
        }
    }

    fn ctx(source: Arc<FakeCalls>, range: BlockRange) -> ModelContext {
        ModelContext {
            run_id: RunId::new(),
            model: "erc20_balances".into(),
            model_version: "1.0.0".into(),
            chain: Chain::new("ethereum").unwrap(),
            range,
            source,
            notes: Default::default(),
        }
    }

    #[tokio::test]
    async fn one_balance_per_distinct_pair_and_block() {
        let (token, other) = (addr(0xA0), addr(0xA1));
        let blocks = vec![
            block(
                10,
                vec![
                    // Mint: the zero address is no holder.
                    transfer(10, 0, token, Address::ZERO, addr(1)),
                    transfer(10, 1, token, addr(1), addr(2)),
                    // Same pairs again in the block: read once.
                    transfer(10, 2, token, addr(2), addr(1)),
                    // Same holder, another token: another pair.
                    transfer(10, 3, other, addr(1), addr(3)),
                ],
            ),
            // The same pair in the next block: read again, at that block.
            block(11, vec![transfer(11, 0, token, addr(1), Address::ZERO)]),
            block(12, vec![]),
        ];
        let source = Arc::new(FakeCalls::new(MemoryBlockSource::new(
            Chain::new("ethereum").unwrap(),
            blocks.clone(),
        )));
        let c = ctx(source.clone(), BlockRange::new(10, 12).unwrap());
        let records = Erc20Balances.run(&c, &blocks).await.unwrap();
        let got: Vec<(u64, u64, Address, Address, String)> = records
            .iter()
            .map(|r| {
                (
                    r.key.block_number,
                    r.key.position,
                    r.payload["token_address"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap(),
                    r.payload["holder_address"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap(),
                    r.payload["balance"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let want = |n, p, t, h: Address| (n, p, t, h, FakeCalls::balance(n, h).to_string());
        assert_eq!(
            got,
            vec![
                want(10, 0, token, addr(1)),
                want(10, 1, token, addr(2)),
                want(10, 2, other, addr(1)),
                want(10, 3, other, addr(3)),
                want(11, 0, token, addr(1)),
            ]
        );
        assert_eq!(source.calls.lock().unwrap().len(), 5, "one call per pair");
        for r in &records {
            assert_eq!(r.payload["balance_error"], serde_json::Value::Null);
            assert_eq!(
                r.block_hash,
                blocks[(r.key.block_number - 10) as usize].hash
            );
            Erc20Balances
                .spec()
                .record_schema()
                .unwrap()
                .check(&r.payload)
                .unwrap();
        }
    }

    /// On a source without batches of its own, the default `calls` reads concurrently.
    #[tokio::test]
    async fn calls_run_concurrently_within_the_bound() {
        let token = addr(0xA0);
        // 3 blocks of 20 transfers to distinct holders: 60 reads, more than the bound.
        let blocks: Vec<Block> = (1..=3)
            .map(|n| {
                block(
                    n,
                    (0..20)
                        .map(|i| transfer(n, i, token, Address::ZERO, addr(i as u8 + 1)))
                        .collect(),
                )
            })
            .collect();
        let source = Arc::new(FakeCalls::new(MemoryBlockSource::new(
            Chain::new("ethereum").unwrap(),
            blocks.clone(),
        )));
        let records = Erc20Balances
            .run(
                &ctx(source.clone(), BlockRange::new(1, 3).unwrap()),
                &blocks,
            )
            .await
            .unwrap();
        assert_eq!(records.len(), 60);
        assert_eq!(source.calls.lock().unwrap().len(), 60);
        assert_eq!(
            source.max_in_flight.load(SeqCst),
            CALL_CONCURRENCY,
            "calls go out concurrently, at most CALL_CONCURRENCY at once"
        );
        // Still in (block, position) order.
        let keys: Vec<(u64, u64)> = records
            .iter()
            .map(|r| (r.key.block_number, r.key.position))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
    }

    /// A source that batches: `calls` records each batch and answers through `FakeCalls`; a
    /// single `call` is a test failure.
    #[derive(Debug)]
    struct Batching {
        fake: FakeCalls,
        batches: std::sync::Mutex<Vec<Vec<CallRequest>>>,
    }

    #[async_trait]
    impl BlockSource for Batching {
        fn chain(&self) -> &Chain {
            self.fake.chain()
        }
        async fn head(&self) -> Result<crate::data::BlockHead, SourceError> {
            self.fake.head().await
        }
        async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
            self.fake.blocks(range).await
        }
        async fn call(&self, _: &CallRequest) -> Result<Bytes, SourceError> {
            panic!("the model reads balances with calls, not call by call")
        }
        async fn calls(&self, requests: &[CallRequest]) -> Vec<Result<Bytes, SourceError>> {
            self.batches.lock().unwrap().push(requests.to_vec());
            let mut out = Vec::new();
            for r in requests {
                out.push(self.fake.call(r).await);
            }
            out
        }
    }

    #[tokio::test]
    async fn a_run_reads_every_balance_in_one_batch_with_the_same_records() {
        let token = addr(0xA0);
        let blocks: Vec<Block> = (1..=3)
            .map(|n| {
                block(
                    n,
                    (0..20)
                        .map(|i| transfer(n, i, token, addr(0xF0), addr(i as u8 + 1)))
                        .collect(),
                )
            })
            .collect();
        let memory = || MemoryBlockSource::new(Chain::new("ethereum").unwrap(), blocks.clone());
        let range = BlockRange::new(1, 3).unwrap();
        // Call by call (the default `calls`) and batched: the same records.
        let mut c = ctx(Arc::new(FakeCalls::new(memory())), range);
        let one_by_one = Erc20Balances.run(&c, &blocks).await.unwrap();
        let batching = Arc::new(Batching {
            fake: FakeCalls::new(memory()),
            batches: Default::default(),
        });
        c.source = batching.clone();
        let batched = Erc20Balances.run(&c, &blocks).await.unwrap();
        assert_eq!(
            batched.len(),
            3 * 21,
            "20 recipients and the sender per block"
        );
        assert_eq!(batched, one_by_one);
        let batches = batching.batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 1, "one batch for the run");
        // In record order: each request is its record's (block, holder).
        assert_eq!(batches[0].len(), batched.len());
        for (request, record) in batches[0].iter().zip(&batched) {
            assert_eq!(request.block, record.key.block_number);
            assert_eq!(request.block_hash, record.block_hash);
            assert_eq!(
                format!("{:#x}", Address::from_slice(&request.data[16..36])),
                record.payload["holder_address"].as_str().unwrap()
            );
        }

        // A run without transfers asks nothing.
        let empty = vec![block(4, vec![])];
        let mut c = ctx(Arc::new(FakeCalls::new(memory())), BlockRange::single(4));
        c.source = batching.clone();
        assert!(Erc20Balances.run(&c, &empty).await.unwrap().is_empty());
        assert_eq!(batching.batches.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn reverts_and_malformed_answers_are_null_balances_with_a_reason() {
        let (good, reverts, malformed) = (addr(0xA0), addr(0xA1), addr(0xA2));
        let blocks = vec![block(
            5,
            vec![
                transfer(5, 0, good, Address::ZERO, addr(1)),
                transfer(5, 1, reverts, Address::ZERO, addr(1)),
                transfer(5, 2, malformed, Address::ZERO, addr(1)),
            ],
        )];
        let mut fake = FakeCalls::new(MemoryBlockSource::new(
            Chain::new("ethereum").unwrap(),
            blocks.clone(),
        ));
        fake.reverting.push(reverts);
        fake.malformed.push(malformed);
        let records = Erc20Balances
            .run(&ctx(Arc::new(fake), BlockRange::single(5)), &blocks)
            .await
            .unwrap();
        let rows: Vec<_> = records
            .iter()
            .map(|r| {
                (
                    r.payload["balance"].clone(),
                    r.payload["balance_error"].clone(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (json!("5001"), json!(null)),
                (json!(null), json!("reverted: execution reverted")),
                (
                    json!(null),
                    json!("malformed answer: 3 bytes, expected one 32-byte word")
                ),
            ]
        );
        let spec = Erc20Balances.spec();
        let schema = spec.record_schema().unwrap();
        for r in &records {
            schema.check(&r.payload).unwrap();
        }
    }

    #[tokio::test]
    async fn a_node_failure_fails_the_run() {
        // The plain memory source cannot call: that is no balance to record, but an error.
        let blocks = vec![block(
            5,
            vec![transfer(5, 0, addr(0xA0), Address::ZERO, addr(1))],
        )];
        let memory = || MemoryBlockSource::new(Chain::new("ethereum").unwrap(), blocks.clone());
        let mut c = ctx(Arc::new(FakeCalls::new(memory())), BlockRange::single(5));
        c.source = Arc::new(memory());
        let err = Erc20Balances.run(&c, &blocks).await.unwrap_err();
        assert!(
            matches!(err, ModelError::Source(SourceError::Unsupported(_))),
            "{err:?}"
        );
    }
}
