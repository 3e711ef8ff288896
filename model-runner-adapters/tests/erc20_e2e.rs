//! End to end on a real node (ganache; `ETH_RPC_URL`): a real ERC-20 compiled from Solidity
//! (`tests/erc20/Token.sol`, its bytecode `Token.bin` and ABI `Token.abi` beside it) is deployed,
//! a few hundred transfers, approvals and `transferFrom`s are sent across as many blocks, and a
//! `Runner` follows the chain in realtime meanwhile (scheduler, enqueuer and worker, one
//! realtime subscription per model) through the JSON-RPC source. Then:
//!
//! - `erc20_transfers` equals the node's own `eth_getLogs` for the token, decoded here
//!   independently of the model;
//! - every `erc20_balances` record equals `balanceOf` read directly from the node at its block,
//!   and every (block, holder) a transfer touched has one;
//! - `abi_events` with the token's ABI gives the same transfers plus the approvals, with named
//!   arguments.

#![cfg(feature = "jsonrpc")]

#[path = "jsonrpc/node.rs"]
mod node;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, U256, hex, keccak256};
use model_runner_adapters::jsonrpc::JsonRpcSource;
use model_runner_core::engine::{CancellationToken, Parts, RealtimeSubscription, Runner};
use model_runner_core::engine::{SchedulerConfig, WorkerConfig};
use model_runner_core::memory::{MemoryRunStore, MemorySink};
use model_runner_core::models::builtin_with_store;
use model_runner_core::ports::{ContractRef, RunFilter, RunStore};
use model_runner_core::{Chain, RunState, topic_name};
use node::{node_url, rpc};
use serde_json::{Value, json};

const TOKEN_BIN: &str = include_str!("erc20/Token.bin");
const TOKEN_ABI: &str = include_str!("erc20/Token.abi");
const MODELS: [&str; 3] = ["erc20_transfers", "erc20_balances", "abi_events"];

fn quantity(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

fn word(a: Address) -> String {
    hex::encode(a.into_word())
}

fn amount(v: U256) -> String {
    hex::encode(v.to_be_bytes::<32>())
}

/// Sends a transaction and returns its receipt (ganache mines it at once; poll with a deadline
/// in case it does not); the transaction must succeed.
async fn send(url: &str, from: Address, to: Option<Address>, data: String) -> Value {
    let mut tx = json!({"from": format!("{from:#x}"), "data": data, "gas": "0x200000"});
    if let Some(to) = to {
        tx["to"] = json!(format!("{to:#x}"));
    }
    let hash = rpc(url, "eth_sendTransaction", json!([tx])).await;
    for _ in 0..400 {
        let r = rpc(url, "eth_getTransactionReceipt", json!([hash])).await;
        if !r.is_null() {
            assert_eq!(r["status"], "0x1", "transaction {hash} reverted: {r}");
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("transaction {hash} was not mined");
}

/// The address a 32-byte topic holds.
fn topic_address(topic: &Value) -> String {
    format!("0x{}", &topic.as_str().unwrap()[26..])
}

fn data_amount(data: &Value) -> String {
    U256::from_str_radix(data.as_str().unwrap().trim_start_matches("0x"), 16)
        .unwrap()
        .to_string()
}

/// Whether every block of `from..=to` is in a succeeded run of `model`, with no run failed for
/// good; panics on a run that ended badly.
async fn covered(store: &dyn RunStore, model: &str, from: u64, to: u64) -> bool {
    let page = store
        .list(&RunFilter {
            model: Some(model.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.next.is_none(), "more than 1000 runs of {model}");
    let mut blocks = BTreeSet::new();
    for run in &page.runs {
        assert!(
            !run.is_settled() || run.state == RunState::Succeeded,
            "{model} run {} ended {:?}: {:?}",
            run.id,
            run.state,
            run.last_error
        );
        if run.state == RunState::Succeeded {
            blocks.extend(run.range.start()..=run.range.end());
        }
    }
    (from..=to).all(|b| blocks.contains(&b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_erc20_followed_in_realtime_matches_the_node() {
    let Some(url) = node_url() else { return };
    let accounts: Vec<Address> = rpc(&url, "eth_accounts", json!([]))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    // Accounts 0-2 belong to tests/jsonrpc.rs, which may run against the same node.
    let (owner, spenders, funded) = (accounts[3], &accounts[4..6], &accounts[6..10]);
    let supply = U256::from(10u64).pow(U256::from(24u64));
    let deployed = send(
        &url,
        owner,
        None,
        format!("0x{}{}", TOKEN_BIN.trim(), amount(supply)),
    )
    .await;
    let token: Address = deployed["contractAddress"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let first = quantity(&deployed["blockNumber"]);

    let chain = Chain::new("ethereum").unwrap();
    let store: Arc<dyn RunStore> = Arc::new(MemoryRunStore::new());
    store
        .put_abi(
            ContractRef::new(&chain, token),
            serde_json::from_str(TOKEN_ABI).unwrap(),
        )
        .await
        .unwrap();
    let sink = Arc::new(MemorySink::new());
    let mut builder = Runner::builder()
        .source(JsonRpcSource::new(chain.clone(), &url).unwrap())
        .store_arc(store.clone())
        .sink_arc(sink.clone())
        .models(builtin_with_store(store.clone()))
        .scheduler_config(SchedulerConfig {
            tick: Duration::from_millis(100),
            ..Default::default()
        })
        .worker_config(WorkerConfig {
            env: "e2e".into(),
            ..Default::default()
        });
    for model in MODELS {
        builder = builder.subscribe(RealtimeSubscription {
            // ganache mines a block per transaction and none after the last: no depth to wait.
            confirmations: 0,
            start: Some(first),
            max_blocks_per_run: 20,
            ..RealtimeSubscription::new(model, chain.clone())
        });
    }
    let runner = builder.build().unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (runner, shutdown) = (runner.clone(), shutdown.clone());
        async move { runner.run(Parts::ALL, shutdown).await }
    });

    // A few hundred transactions, one block each, while the runner follows: the owner funds
    // four accounts, they pay each other and strangers, spenders get allowances and use them.
    let strangers: Vec<Address> = (1..=12u8).map(Address::repeat_byte).collect();
    let transfer = |to: Address, v: u64| format!("0xa9059cbb{}{}", word(to), amount(U256::from(v)));
    for (i, a) in funded.iter().enumerate() {
        send(&url, owner, Some(token), transfer(*a, 1_000_000 + i as u64)).await;
    }
    for i in 0..300u64 {
        let from = funded[(i % 4) as usize];
        match i % 10 {
            0 => {
                let spender = spenders[(i / 10 % 2) as usize];
                let data = format!("0x095ea7b3{}{}", word(spender), amount(U256::from(500 + i)));
                send(&url, from, Some(token), data).await;
            }
            1 => {
                // The spender draws on the owner's allowance (given once, at i = 0).
                let spender = spenders[(i / 10 % 2) as usize];
                let data = format!(
                    "0x23b872dd{}{}{}",
                    word(owner),
                    word(strangers[(i % 12) as usize]),
                    amount(U256::from(i))
                );
                send(&url, spender, Some(token), data).await;
            }
            _ => {
                let to = if i % 3 == 0 {
                    strangers[(i % 12) as usize]
                } else {
                    funded[((i + 1) % 4) as usize]
                };
                send(&url, from, Some(token), transfer(to, 1 + i % 97)).await;
            }
        }
        if i == 0 {
            // The owner lets both spenders draw on it for every `transferFrom` above.
            for spender in spenders {
                let data = format!(
                    "0x095ea7b3{}{}",
                    word(*spender),
                    amount(U256::from(1_000_000u64))
                );
                send(&url, owner, Some(token), data).await;
            }
        }
    }
    let last = quantity(&rpc(&url, "eth_blockNumber", json!([])).await);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    for model in MODELS {
        while !covered(store.as_ref(), model, first, last).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{model} did not cover blocks {first}-{last} in 180 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let records = sink.records(&topic_name("e2e", &chain));
    let in_range = |r: &&model_runner_core::Record| (first..=last).contains(&r.key.block_number);
    let of = |model: &str| -> Vec<model_runner_core::Record> {
        records
            .iter()
            .filter(|r| r.key.model == model)
            .filter(in_range)
            .cloned()
            .collect()
    };

    // The node's own logs of the token, decoded here.
    let logs = rpc(
        &url,
        "eth_getLogs",
        json!([{"address": format!("{token:#x}"), "fromBlock": format!("{first:#x}"), "toBlock": format!("{last:#x}")}]),
    )
    .await;
    let logs = logs.as_array().unwrap();
    let topic0 = |signature: &str| json!(format!("{:#x}", keccak256(signature)));
    let (transfer_topic, approval_topic) = (
        topic0("Transfer(address,address,uint256)"),
        topic0("Approval(address,address,uint256)"),
    );
    let transfers: BTreeSet<(u64, u64, String, String, String, String)> = logs
        .iter()
        .filter(|l| l["topics"][0] == transfer_topic)
        .map(|l| {
            (
                quantity(&l["blockNumber"]),
                quantity(&l["logIndex"]),
                l["transactionHash"].as_str().unwrap().to_owned(),
                topic_address(&l["topics"][1]),
                topic_address(&l["topics"][2]),
                data_amount(&l["data"]),
            )
        })
        .collect();
    let approvals = logs
        .iter()
        .filter(|l| l["topics"][0] == approval_topic)
        .count();
    assert!(transfers.len() > 250, "{} transfers", transfers.len());
    assert!(approvals >= 30, "{approvals} approvals");

    // erc20_transfers: exactly the node's transfers of the token.
    let modeled: BTreeSet<(u64, u64, String, String, String, String)> = of("erc20_transfers")
        .iter()
        .filter(|r| r.payload["token_address"] == format!("{token:#x}"))
        .map(|r| {
            let p = &r.payload;
            (
                p["block_number"].as_u64().unwrap(),
                p["log_index"].as_u64().unwrap(),
                p["transaction_hash"].as_str().unwrap().to_owned(),
                p["from_address"].as_str().unwrap().to_owned(),
                p["to_address"].as_str().unwrap().to_owned(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(modeled, transfers);

    // erc20_balances: one record per (block, holder) a transfer touched, each equal to
    // balanceOf read directly at that block.
    let mut touched = BTreeSet::new();
    for (block, _, _, from, to, _) in &transfers {
        for holder in [from, to] {
            if holder != &format!("{:#x}", Address::ZERO) {
                touched.insert((*block, holder.clone()));
            }
        }
    }
    let balances: BTreeMap<(u64, String), String> = of("erc20_balances")
        .iter()
        .filter(|r| r.payload["token_address"] == format!("{token:#x}"))
        .map(|r| {
            let p = &r.payload;
            assert_eq!(p["balance_error"], Value::Null, "{p}");
            (
                (
                    p["block_number"].as_u64().unwrap(),
                    p["holder_address"].as_str().unwrap().to_owned(),
                ),
                p["balance"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(balances.keys().cloned().collect::<BTreeSet<_>>(), touched);
    for ((block, holder), balance) in &balances {
        let holder: Address = holder.parse().unwrap();
        let answer = rpc(
            &url,
            "eth_call",
            json!([{"to": format!("{token:#x}"), "data": format!("0x70a08231{}", word(holder))}, format!("{block:#x}")]),
        )
        .await;
        assert_eq!(
            &data_amount(&answer),
            balance,
            "balanceOf({holder:#x}) at {block}"
        );
    }

    // abi_events: the same transfers by name, and the approvals.
    let events = of("abi_events");
    let decoded: BTreeSet<(u64, u64, String, String, String, String)> = events
        .iter()
        .filter(|r| r.payload["event"] == "Transfer")
        .map(|r| {
            let (p, args) = (&r.payload, &r.payload["args"]);
            assert_eq!(p["contract"], format!("{token:#x}"));
            (
                p["block_number"].as_u64().unwrap(),
                p["log_index"].as_u64().unwrap(),
                p["transaction_hash"].as_str().unwrap().to_owned(),
                args["from"].as_str().unwrap().to_owned(),
                args["to"].as_str().unwrap().to_owned(),
                args["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(decoded, transfers);
    let approved: Vec<&Value> = events
        .iter()
        .filter(|r| r.payload["event"] == "Approval")
        .map(|r| &r.payload["args"])
        .collect();
    assert_eq!(approved.len(), approvals);
    assert!(
        approved
            .iter()
            .all(|a| a["owner"].is_string() && a["spender"].is_string() && a["value"].is_string())
    );
    assert_eq!(events.len(), transfers.len() + approvals);
}
