//! Reads and ABI decoding: the figures issue 13 asks for.
//!
//! ```sh
//! ETH_RPC_URL=http://127.0.0.1:8545 cargo bench -p model-runner-adapters --features jsonrpc \
//!   --bench reads_and_decoding
//! ```
//!
//! 1. `abi_events` decoding on devnet blocks (no node needed): logs decoded per second into
//!    records (named, typed JSON fields) by the model's decoders, next to a plain loop over the
//!    same logs with `alloy-dyn-abi` decoding into `DynSolValue`s and nothing else.
//! 2. With `ETH_RPC_URL` (a local ganache or hardhat node; blocks are mined with `evm_mine` until
//!    the head reaches 300): blocks per second fetched by the JSON-RPC source with one request per
//!    call (`#batch=1&concurrency=1`) and with JSON-RPC batching (`#batch=50&concurrency=4`).
//! 3. With `ETH_RPC_URL`: `eth_call`s per second through the block-pinned call cache, cold (every
//!    call goes to the node) and warm (the same calls again, answered by the cache), one `call` at
//!    a time and as one `calls` batch.
//! 4. With `ETH_RPC_URL`: `eth_call`s per second of `BlockSource::calls` with one request per call
//!    (`#batch=1&concurrency=4`) and in JSON-RPC batches (`#batch=50&concurrency=4`), fresh
//!    calldata each round (nothing cached). On a node that refuses EIP-1898 block hashes
//!    (ganache), each request of calls is followed by one request for its blocks' headers.

use std::sync::Arc;
use std::time::Instant;

use alloy_dyn_abi::Specifier;
use alloy_primitives::{Address, B256, Bytes};
use model_runner_adapters::devnet::DevnetSource;
use model_runner_adapters::jsonrpc::JsonRpcSource;
use model_runner_core::memory::{MemoryBlockSource, MemoryCallCache};
use model_runner_core::models::TRANSFER_TOPIC;
use model_runner_core::models::abi_events::{ContractDecoders, decode_blocks};
use model_runner_core::ports::{BlockSource, CachedCalls, ContractAbi};
use model_runner_core::{BlockRange, CallRequest, Chain, ModelContext, RunId};

const ERC20_ABI: &str = include_str!("../../model-runner-core/testdata/erc20.abi.json");

fn eth() -> Chain {
    Chain::new("ethereum").expect("chain name")
}

fn per_second(n: usize, since: Instant) -> f64 {
    n as f64 / since.elapsed().as_secs_f64()
}

async fn decoding() {
    let source = DevnetSource::from_url(eth(), "devnet://").expect("devnet");
    let blocks = source
        .blocks(BlockRange::new(0, 199).expect("range"))
        .await
        .expect("devnet blocks");
    // Every contract that emits a Transfer gets the ERC-20 ABI.
    let mut tokens: Vec<Address> = blocks
        .iter()
        .flat_map(|b| &b.logs)
        .filter(|l| l.topics.first() == Some(&TRANSFER_TOPIC))
        .map(|l| l.address)
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    let abi: serde_json::Value = serde_json::from_str(ERC20_ABI).expect("ABI JSON");
    let abis: Vec<ContractAbi> = tokens
        .iter()
        .map(|t| ContractAbi {
            chain: eth(),
            address: *t,
            abi: abi.clone(),
            updated_at: chrono::Utc::now(),
        })
        .collect();
    let decoders = ContractDecoders::new(&abis).expect("decoders");
    let logs: usize = blocks
        .iter()
        .flat_map(|b| &b.logs)
        .filter(|l| decoders.knows(&l.address))
        .count();
    let ctx = ModelContext {
        run_id: RunId::new(),
        model: "abi_events".into(),
        model_version: "1".into(),
        chain: eth(),
        range: BlockRange::new(0, 199).expect("range"),
        source: Arc::new(MemoryBlockSource::new(eth(), blocks.clone())),
        notes: Default::default(),
    };
    let json_abi: alloy_json_abi::JsonAbi = serde_json::from_str(ERC20_ABI).expect("ABI");
    // The plain loop resolves each event's types once, as any decoder loop should.
    let events: Vec<(B256, alloy_dyn_abi::DynSolEvent)> = json_abi
        .events()
        .map(|e| (e.selector(), e.resolve().expect("resolvable event")))
        .collect();
    // Both over the same logs (every log of a contract with an ABI), best of 5 rounds.
    let (mut best_model, mut best_plain) = (0f64, 0f64);
    let (mut records, mut mismatched, mut decoded) = (0, 0, 0);
    for _ in 0..5 {
        let t = Instant::now();
        let (r, m) = decode_blocks(&ctx, &decoders, &blocks);
        best_model = best_model.max(per_second(logs, t));
        (records, mismatched) = (r.len(), m.len());
        let t = Instant::now();
        decoded = 0;
        for log in blocks
            .iter()
            .flat_map(|b| &b.logs)
            .filter(|l| tokens.binary_search(&l.address).is_ok())
        {
            let Some(topic0) = log.topics.first() else {
                continue;
            };
            if let Some((_, event)) = events.iter().find(|(selector, _)| selector == topic0)
                && event
                    .decode_log_parts(log.topics.iter().copied(), &log.data)
                    .is_ok()
            {
                decoded += 1;
            }
        }
        best_plain = best_plain.max(per_second(logs, t));
    }
    println!(
        "abi_events on 200 devnet blocks: {logs} logs of {} contracts with the ERC-20 ABI -> {records} records, {mismatched} logs that match no event of it; best of 5: {best_model:.0} logs/s into records (typed JSON); plain alloy-dyn-abi loop over the same logs ({decoded} decoded, nothing built): {best_plain:.0} logs/s; the model at {:.0}% of the loop",
        tokens.len(),
        100.0 * best_model / best_plain
    );
}

async fn rpc(url: &str, method: &str, params: serde_json::Value) -> serde_json::Value {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let resp: serde_json::Value = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ETH_RPC_URL is set but the node does not answer: {e}"))
        .json()
        .await
        .expect("JSON-RPC response");
    resp["result"].clone()
}

async fn node(url: &str) {
    let head = |v: serde_json::Value| {
        u64::from_str_radix(v.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16).unwrap_or(0)
    };
    let mut number = head(rpc(url, "eth_blockNumber", serde_json::json!([])).await);
    while number < 300 {
        rpc(url, "evm_mine", serde_json::json!([])).await;
        number = head(rpc(url, "eth_blockNumber", serde_json::json!([])).await);
    }
    let range = BlockRange::new(1, 300).expect("range");
    for (label, settings) in [
        ("one request per call", "#batch=1&concurrency=1&rps=100000"),
        (
            "JSON-RPC batches of 50",
            "#batch=50&concurrency=4&rps=100000",
        ),
    ] {
        let source = JsonRpcSource::new(eth(), &format!("{url}{settings}")).expect("source");
        for round in 1..=2 {
            let t = Instant::now();
            let blocks = source.blocks(range).await.expect("blocks");
            println!(
                "blocks from the node, {label} (round {round}): {} blocks, {:.0} blocks/s",
                blocks.len(),
                per_second(blocks.len(), t)
            );
        }
    }
    let source = JsonRpcSource::new(eth(), &format!("{url}#batch=50&concurrency=4&rps=100000"))
        .expect("source");
    let head = source.head().await.expect("head");
    let cached = CachedCalls::new(source, Arc::new(MemoryCallCache::new(64 << 20)));
    // balanceOf(holder) on an address without code (the node answers 0x): 300 distinct calls.
    let calls: Vec<CallRequest> = (0..300u64).map(|i| balance_of_at(i, &head)).collect();
    for label in ["cold", "warm"] {
        let t = Instant::now();
        for c in &calls {
            cached.call(c).await.expect("eth_call");
        }
        println!(
            "eth_call through the call cache, one call at a time, {label}: {} calls, {:.0} calls/s",
            calls.len(),
            per_second(calls.len(), t)
        );
    }
    // The same through `calls`, on other calldata (so the cold round is cold).
    let batch: Vec<CallRequest> = (0..300u64)
        .map(|i| balance_of_at(1_000_000 + i, &head))
        .collect();
    for label in ["cold", "warm"] {
        let t = Instant::now();
        for answer in cached.calls(&batch).await {
            answer.expect("eth_call");
        }
        println!(
            "eth_call through the call cache, one calls batch, {label}: {} calls, {:.0} calls/s",
            batch.len(),
            per_second(batch.len(), t)
        );
    }

    // Batched against one request per call, both with 4 requests in flight.
    let mut next = 2_000_000u64;
    for (label, settings) in [
        ("one request per call", "#batch=1&concurrency=4&rps=100000"),
        (
            "JSON-RPC batches of 50",
            "#batch=50&concurrency=4&rps=100000",
        ),
    ] {
        let source = JsonRpcSource::new(eth(), &format!("{url}{settings}")).expect("source");
        for round in 1..=2 {
            let batch: Vec<CallRequest> = (next..next + 1000)
                .map(|i| balance_of_at(i, &head))
                .collect();
            next += 1000;
            let t = Instant::now();
            for answer in source.calls(&batch).await {
                answer.expect("eth_call");
            }
            println!(
                "eth_call with calls, {label} (round {round}): {} calls, {:.0} calls/s",
                batch.len(),
                per_second(batch.len(), t)
            );
        }
    }
}

/// `balanceOf(holder)` of an address without code (the node answers 0x) at `head`.
fn balance_of_at(holder: u64, head: &model_runner_core::BlockHead) -> CallRequest {
    let mut data = vec![0x70, 0xa0, 0x82, 0x31];
    data.extend_from_slice(B256::left_padding_from(&holder.to_be_bytes()).as_slice());
    CallRequest {
        to: Address::repeat_byte(0x42),
        data: Bytes::from(data),
        block: head.number,
        block_hash: head.hash,
    }
}

#[tokio::main]
async fn main() {
    decoding().await;
    match std::env::var("ETH_RPC_URL") {
        Ok(url) => node(&url).await,
        Err(_) => println!(
            "ETH_RPC_URL is not set: the node figures (blocks/s with and without batching, calls/s cold and warm, calls/s batched and not) need a local node, e.g. ganache"
        ),
    }
}
