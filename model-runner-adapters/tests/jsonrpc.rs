//! The JSON-RPC block source against a real node (ganache here; `ETH_RPC_URL`).
//!
//! The test deploys two hand-assembled contracts: one whose constructor emits an ERC-20
//! `Transfer(from, to, 100)` log, one whose code returns 42, then reads the blocks back through
//! the source, runs `erc20_transfers` on them and calls the second contract with `eth_call`.
//! ganache has no `eth_getBlockReceipts`, so receipts come per transaction here; the faults a
//! node can have are in the `faults` module (tests/jsonrpc/faults.rs).

#![cfg(feature = "jsonrpc")]

#[path = "jsonrpc/node.rs"]
mod node;

#[path = "jsonrpc/faults.rs"]
mod faults;

use std::sync::Arc;

use alloy_primitives::{Address, Bytes, U256, hex};
use model_runner_adapters::jsonrpc::{JsonRpcOptions, JsonRpcSource};
use model_runner_core::conformance::source::{CallSupport, SourceFacts};
use model_runner_core::memory::MemoryCallCache;
use model_runner_core::models::{Erc20Balances, Erc20Transfers, TRANSFER_TOPIC};
use model_runner_core::ports::{BlockSource, CachedCalls, SourceError};
use model_runner_core::{BlockRange, CallRequest, Chain, Model, ModelContext, RunId};
use node::{node_url, rpc};
use serde_json::{Value, json};

/// Sends a contract-creation transaction and returns its receipt.
async fn deploy(url: &str, from: &str, code: &[u8]) -> Value {
    let hash = rpc(
        url,
        "eth_sendTransaction",
        json!([{"from": from, "data": format!("0x{}", hex::encode(code)), "gas": "0x100000"}]),
    )
    .await;
    // ganache mines each transaction at once; poll with a deadline in case it does not.
    for _ in 0..200 {
        let r = rpc(url, "eth_getTransactionReceipt", json!([hash])).await;
        if !r.is_null() {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("transaction {hash} was not mined");
}

#[tokio::test]
async fn reads_blocks_receipts_and_calls_from_a_node() {
    let Some(url) = node_url() else { return };
    let accounts = rpc(&url, "eth_accounts", json!([])).await;
    let from = accounts[0].as_str().unwrap().to_owned();
    let sender = Address::repeat_byte(0x11);
    let recipient = Address::repeat_byte(0x22);

    // Constructor: mstore(0, 100); log3(0, 32, Transfer, sender, recipient); stop.
    let mut emit = vec![0x60, 0x64, 0x60, 0x00, 0x52, 0x73];
    emit.extend_from_slice(recipient.as_slice());
    emit.push(0x73);
    emit.extend_from_slice(sender.as_slice());
    emit.push(0x7f);
    emit.extend_from_slice(TRANSFER_TOPIC.as_slice());
    emit.extend_from_slice(&[0x60, 0x20, 0x60, 0x00, 0xa3, 0x00]);
    let receipt = deploy(&url, &from, &emit).await;
    let block: u64 = u64::from_str_radix(
        receipt["blockNumber"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let token: Address = receipt["contractAddress"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Runtime `mstore(0, 42); return(0, 32)`, returned by its constructor.
    let runtime = hex!("602a60005260206000f3");
    let mut ret = vec![0x69];
    ret.extend_from_slice(&runtime);
    ret.extend_from_slice(&[0x60, 0x00, 0x52, 0x60, 0x0a, 0x60, 0x16, 0xf3]);
    let receipt2 = deploy(&url, &from, &ret).await;
    let answer: Address = receipt2["contractAddress"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let block2: u64 = u64::from_str_radix(
        receipt2["blockNumber"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();

    let source = Arc::new(JsonRpcSource::new(Chain::new("ethereum").unwrap(), &url).unwrap());
    let head = source.head().await.unwrap();
    assert!(head.number >= block2);
    let blocks = source
        .blocks(BlockRange::new(block, block2).unwrap())
        .await
        .unwrap();
    assert_eq!(blocks.len() as u64, block2 - block + 1);
    let b = &blocks[0];
    assert_eq!(b.number, block);
    assert_eq!(b.transactions.len(), 1);
    let tx = &b.transactions[0];
    assert_eq!(tx.to, None, "a contract creation");
    assert_eq!(tx.receipt.as_ref().unwrap().contract_address, Some(token));
    assert_eq!(b.logs.len(), 1);

    let ctx = ModelContext {
        run_id: RunId::new(),
        model: "erc20_transfers".into(),
        model_version: "1".into(),
        chain: Chain::new("ethereum").unwrap(),
        range: BlockRange::single(block),
        source: source.clone(),
        notes: Default::default(),
    };
    let records = Erc20Transfers.run(&ctx, &blocks[..1]).await.unwrap();
    assert_eq!(records.len(), 1);
    let p = &records[0].payload;
    assert_eq!(p["token_address"], format!("{token:#x}"));
    assert_eq!(p["from_address"], format!("{sender:#x}"));
    assert_eq!(p["to_address"], format!("{recipient:#x}"));
    assert_eq!(p["value"], "100");
    assert_eq!(records[0].block_hash, b.hash);

    let pinned = CallRequest {
        to: answer,
        data: Bytes::new(),
        block: block2,
        block_hash: blocks.last().unwrap().hash,
    };
    let out = source.call(&pinned).await.unwrap();
    assert_eq!(U256::from_be_slice(&out), U256::from(42));

    // Pinned to the hash: the same number with a hash of no block (another branch) is an
    // error, never the state of the block the node has at that number.
    let quick = JsonRpcSource::with_options(
        Chain::new("ethereum").unwrap(),
        &url,
        JsonRpcOptions {
            retries: 1,
            min_backoff: std::time::Duration::from_millis(1),
            max_backoff: std::time::Duration::from_millis(2),
            ..JsonRpcOptions::default()
        },
    )
    .unwrap();
    assert_eq!(quick.call(&pinned).await.unwrap(), out);
    let err = quick
        .call(&CallRequest {
            block_hash: alloy_primitives::B256::repeat_byte(0xEE),
            ..pinned.clone()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::Unavailable { .. }),
        "a call pinned to a hash the node does not have at that number: {err:?}"
    );

    let err = source
        .blocks(BlockRange::single(head.number + 1000))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::BlockNotFound { .. }), "{err}");
}

#[tokio::test]
async fn unreachable_nodes_and_bad_urls_are_clear() {
    let err = JsonRpcSource::new(Chain::new("ethereum").unwrap(), "ftp://node").unwrap_err();
    assert!(
        err.to_string().contains("expected http:// or https://"),
        "{err}"
    );
    // A closed port on loopback: Unavailable once the retries are spent, and the password is
    // not shown.
    let s = JsonRpcSource::with_options(
        Chain::new("ethereum").unwrap(),
        "http://user:s3cret@127.0.0.1:9/",
        JsonRpcOptions {
            retries: 2,
            min_backoff: std::time::Duration::from_millis(1),
            ..JsonRpcOptions::default()
        },
    )
    .unwrap();
    let err = s.head().await.unwrap_err();
    assert!(matches!(err, SourceError::Unavailable { .. }), "{err}");
    assert!(
        err.to_string().contains("gave up after 3 attempts"),
        "{err}"
    );
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

/// `block_ref` is the header the node serves (hash and parent as `blocks` reads them), and a
/// block past the head is `BlockNotFound`; a batch of calls at the head (to an address without
/// code: empty answers) gives one answer per call.
#[tokio::test]
async fn block_refs_and_batched_calls_on_the_node() {
    let Some(url) = node_url() else { return };
    while block_number(&url).await < 2 {
        rpc(&url, "evm_mine", json!([])).await;
    }
    let source = JsonRpcSource::new(Chain::new("ethereum").unwrap(), &url).unwrap();
    let head = source.head().await.unwrap();
    let blocks = source
        .blocks(BlockRange::new(head.number - 1, head.number).unwrap())
        .await
        .unwrap();
    for b in &blocks {
        let r = source.block_ref(b.number).await.unwrap();
        assert_eq!(
            (r.number, r.hash, r.parent_hash),
            (b.number, b.hash, b.parent_hash)
        );
    }
    let err = source.block_ref(head.number + 1_000_000).await.unwrap_err();
    assert!(matches!(err, SourceError::BlockNotFound { .. }), "{err:?}");

    let requests: Vec<CallRequest> = (0..60u8)
        .map(|i| CallRequest {
            to: Address::repeat_byte(0x5e),
            data: Bytes::from(vec![i]),
            block: head.number,
            block_hash: head.hash,
        })
        .collect();
    let answers = source.calls(&requests).await;
    assert_eq!(answers.len(), 60);
    for a in answers {
        assert_eq!(a.unwrap(), Bytes::new());
    }
}

/// The head number, as the node says.
async fn block_number(url: &str) -> u64 {
    let n = rpc(url, "eth_blockNumber", json!([])).await;
    u64::from_str_radix(n.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// The block source conformance suite on the node: a range of 36 blocks (two batches of the
/// source) around a block that deploys a contract returning 42, read back before and at that
/// block with `eth_call`.
#[tokio::test]
async fn block_source_conformance() {
    let Some(url) = node_url() else { return };
    // Enough blocks before the deployment for the range (ganache's `evm_mine` mines one).
    while block_number(&url).await < 30 {
        rpc(&url, "evm_mine", json!([])).await;
    }
    let accounts = rpc(&url, "eth_accounts", json!([])).await;
    // Its own account: the other test sends transactions from the first one at the same time,
    // and two senders sharing an account race for its nonce.
    let from = accounts[1].as_str().unwrap().to_owned();
    // Runtime `mstore(0, 42); return(0, 32)`, returned by its constructor.
    let mut code = vec![0x69];
    code.extend_from_slice(&hex!("602a60005260206000f3"));
    code.extend_from_slice(&[0x60, 0x00, 0x52, 0x60, 0x0a, 0x60, 0x16, 0xf3]);
    let receipt = deploy(&url, &from, &code).await;
    let deployed = u64::from_str_radix(
        receipt["blockNumber"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let answer: Address = receipt["contractAddress"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    while block_number(&url).await < deployed + 5 {
        rpc(&url, "evm_mine", json!([])).await;
    }
    let chain = Chain::new("ethereum").unwrap();
    let source = JsonRpcSource::new(chain.clone(), &url).unwrap();
    let hashes = source
        .blocks(BlockRange::new(deployed - 1, deployed).unwrap())
        .await
        .unwrap();
    let call = |block: u64| CallRequest {
        to: answer,
        data: Bytes::new(),
        block,
        block_hash: hashes[(block + 1 - deployed) as usize].hash,
    };
    model_runner_core::conformance::source::run_all(
        source,
        &SourceFacts {
            chain,
            known: BlockRange::new(deployed - 30, deployed + 5).unwrap(),
            missing: vec![],
            linked: true,
            receipts: true,
            call: CallSupport::Known(vec![
                (call(deployed - 1), Bytes::new()),
                (
                    call(deployed),
                    Bytes::from(U256::from(42).to_be_bytes::<32>().to_vec()),
                ),
            ]),
        },
    )
    .await;
}

/// `erc20_balances` on the node, through an in-process call cache: a token whose constructor
/// emits a transfer and whose `balanceOf(holder)` answers `uint(holder)`, read at the transfer's
/// block (pinned to its hash); a second run of the same block is answered by the cache alone.
#[tokio::test]
async fn erc20_balances_through_the_call_cache() {
    let Some(url) = node_url() else { return };
    let accounts = rpc(&url, "eth_accounts", json!([])).await;
    // Its own account: the other tests send from the first two at the same time.
    let from = accounts[2].as_str().unwrap().to_owned();
    let sender = Address::repeat_byte(0x33);
    let recipient = Address::repeat_byte(0x44);
    // Constructor: mstore(0, 100); log3(0, 32, Transfer, sender, recipient); then returns the
    // runtime `mstore(0, calldataload(4)); return(0, 32)`.
    let mut code = vec![0x60, 0x64, 0x60, 0x00, 0x52, 0x73];
    code.extend_from_slice(recipient.as_slice());
    code.push(0x73);
    code.extend_from_slice(sender.as_slice());
    code.push(0x7f);
    code.extend_from_slice(TRANSFER_TOPIC.as_slice());
    code.extend_from_slice(&[0x60, 0x20, 0x60, 0x00, 0xa3]);
    let runtime = hex!("600435600052 60206000f3");
    code.push(0x60 + runtime.len() as u8 - 1);
    code.extend_from_slice(&runtime);
    code.extend_from_slice(&[0x60, 0x00, 0x52, 0x60, runtime.len() as u8]);
    code.extend_from_slice(&[0x60, 32 - runtime.len() as u8, 0xf3]);
    let receipt = deploy(&url, &from, &code).await;
    let number = u64::from_str_radix(
        receipt["blockNumber"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let token: Address = receipt["contractAddress"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let chain = Chain::new("ethereum").unwrap();
    let source = Arc::new(CachedCalls::new(
        JsonRpcSource::new(chain.clone(), &url).unwrap(),
        Arc::new(MemoryCallCache::default()),
    ));
    let range = BlockRange::single(number);
    let blocks = source.blocks(range).await.unwrap();
    let ctx = ModelContext {
        run_id: RunId::new(),
        model: "erc20_balances".into(),
        model_version: "1.0.0".into(),
        chain,
        range,
        source: source.clone(),
        notes: Default::default(),
    };
    let records = Erc20Balances.run(&ctx, &blocks).await.unwrap();
    let rows: Vec<(Value, Value, Value)> = records
        .iter()
        .filter(|r| r.payload["token_address"] == format!("{token:#x}"))
        .map(|r| {
            (
                r.payload["holder_address"].clone(),
                r.payload["balance"].clone(),
                r.payload["balance_error"].clone(),
            )
        })
        .collect();
    let balance = |a: Address| json!(U256::from_be_slice(a.into_word().as_slice()).to_string());
    assert_eq!(
        rows,
        vec![
            (json!(format!("{sender:#x}")), balance(sender), Value::Null),
            (
                json!(format!("{recipient:#x}")),
                balance(recipient),
                Value::Null
            ),
        ]
    );
    assert_eq!(records[0].block_hash, blocks[0].hash);
    let first = source.stats();
    assert_eq!(first.hits, 0);
    assert_eq!(first.misses as usize, records.len());

    // The same block again: every balance from the cache, none from the node.
    assert_eq!(Erc20Balances.run(&ctx, &blocks).await.unwrap(), records);
    let second = source.stats();
    assert_eq!(second.misses, first.misses, "no request to the node");
    assert_eq!(second.hits as usize, records.len());
}
