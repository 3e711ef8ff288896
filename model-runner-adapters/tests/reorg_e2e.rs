//! A chain reorganisation on a real node: a `Runner` follows a private ganache in realtime
//! through the JSON-RPC source while the test takes a snapshot (`evm_snapshot`), mines a branch
//! and waits for it to be modelled, then reverts to the snapshot (`evm_revert`) and mines a
//! longer, different branch. Then:
//!
//! - every run over the first branch is `superseded`, and the new branch is modelled by live
//!   runs that tile it once;
//! - every record of an orphaned block carries that block's hash, which the node no longer
//!   has at its number, and belongs to a superseded run: a consumer can drop it by either;
//! - every block of the new branch has its record, with the node's hash, from a live run.
//!
//! The node is the test's own (a ganache process on a free port), not the shared
//! `ETH_RPC_URL` node: reverting a shared node would rewind other tests' chains. It runs when
//! the node tests are configured (`ETH_RPC_URL` set, as in CI), and then fails if ganache cannot
//! be started: `GANACHE` names the executable, by default the one `.ci/run` installs in
//! `~/.cache/model-runner-tools`.

#![cfg(feature = "jsonrpc")]

#[path = "jsonrpc/node.rs"]
mod node;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model_runner_adapters::jsonrpc::JsonRpcSource;
use model_runner_core::engine::{
    CancellationToken, Parts, RealtimeSubscription, Runner, SchedulerConfig, WorkerConfig,
};
use model_runner_core::memory::{MemoryRunStore, MemorySink};
use model_runner_core::ports::{RunFilter, RunStore};
use model_runner_core::{Chain, ModelRun, RunId, RunState, topic_name};
use node::{node_url, rpc};
use serde_json::{Value, json};

/// A ganache process of the test's own, killed when dropped.
struct Ganache {
    child: Child,
    url: String,
}

impl Ganache {
    fn start() -> Self {
        let bin = std::env::var("GANACHE").unwrap_or_else(|_| {
            format!(
                "{}/.cache/model-runner-tools/node_modules/.bin/ganache",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--wallet.deterministic", "--logging.quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("the node tests are configured (ETH_RPC_URL) but ganache ({bin}) could not be started: {e}; set GANACHE to its path")
            });
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until the node answers.
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let client = reqwest::Client::new();
        loop {
            let answer = client
                .post(&self.url)
                .json(
                    &json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}),
                )
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "ganache did not start in 90 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Ganache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn quantity(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// Sends `wei` from `from` to `to`; ganache mines one block for it.
async fn pay(url: &str, from: &str, to: &str, wei: u64) {
    let tx = json!({"from": from, "to": to, "value": format!("{wei:#x}")});
    let hash = rpc(url, "eth_sendTransaction", json!([tx])).await;
    for _ in 0..400 {
        if !rpc(url, "eth_getTransactionReceipt", json!([hash]))
            .await
            .is_null()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("transaction {hash} was not mined");
}

/// The node's hash of each block of `from..=to`.
async fn hashes(url: &str, from: u64, to: u64) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for n in from..=to {
        let block = rpc(
            url,
            "eth_getBlockByNumber",
            json!([format!("{n:#x}"), false]),
        )
        .await;
        out.insert(n, block["hash"].as_str().unwrap().to_owned());
    }
    out
}

async fn runs(store: &dyn RunStore) -> Vec<ModelRun> {
    let page = store
        .list(&RunFilter {
            model: Some("block_stats".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.next.is_none());
    page.runs
}

/// Whether succeeded runs that are not superseded cover `from..=to`; panics on a run that
/// failed for good.
async fn covered(store: &dyn RunStore, from: u64, to: u64) -> bool {
    let mut blocks = BTreeSet::new();
    for run in runs(store).await {
        assert!(
            !run.is_settled() || matches!(run.state, RunState::Succeeded | RunState::Superseded),
            "run {} {} ended {}: {:?}",
            run.id,
            run.range,
            run.state,
            run.last_error
        );
        if run.state == RunState::Succeeded {
            blocks.extend(run.range.start()..=run.range.end());
        }
    }
    (from..=to).all(|b| blocks.contains(&b))
}

async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_on_a_real_node_supersedes_the_orphaned_runs_and_models_the_new_branch() {
    if node_url().is_none() {
        return;
    }
    let ganache = Ganache::start();
    ganache.ready().await;
    let url = ganache.url.clone();
    let accounts = rpc(&url, "eth_accounts", json!([])).await;
    let payer = accounts[0].as_str().unwrap().to_owned();
    let start = quantity(&rpc(&url, "eth_blockNumber", json!([])).await) + 1;

    let chain = Chain::new("ethereum").unwrap();
    let store: Arc<dyn RunStore> = Arc::new(MemoryRunStore::new());
    let sink = Arc::new(MemorySink::new());
    let runner = Runner::builder()
        .source(JsonRpcSource::new(chain.clone(), &url).unwrap())
        .store_arc(store.clone())
        .sink_arc(sink.clone())
        .scheduler_config(SchedulerConfig {
            tick: Duration::from_millis(100),
            ..Default::default()
        })
        .worker_config(WorkerConfig {
            env: "reorg".into(),
            ..Default::default()
        })
        .subscribe(RealtimeSubscription {
            // ganache mines a block per transaction: nothing to wait for, so every block of
            // the first branch is modelled before the reorganisation.
            confirmations: 0,
            start: Some(start),
            max_blocks_per_run: 2,
            ..RealtimeSubscription::new("block_stats", chain.clone())
        })
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (runner, shutdown) = (runner.clone(), shutdown.clone());
        async move { runner.run(Parts::ALL, shutdown).await }
    });

    // Branch A: six blocks, each paying A, modelled in full.
    let snapshot = rpc(&url, "evm_snapshot", json!([])).await;
    let a = "0x00000000000000000000000000000000000000aa";
    for i in 0..6 {
        pay(&url, &payer, a, 1 + i).await;
    }
    let (a_first, a_last) = (start, start + 5);
    wait_until("branch A to be modelled", || {
        covered(store.as_ref(), a_first, a_last)
    })
    .await;
    let a_hashes = hashes(&url, a_first, a_last).await;
    let a_runs: BTreeSet<RunId> = runs(store.as_ref()).await.iter().map(|r| r.id).collect();

    // The reorganisation: back to the snapshot, then branch B, longer, paying B.
    assert_eq!(
        rpc(&url, "evm_revert", json!([snapshot])).await,
        json!(true)
    );
    let b = "0x00000000000000000000000000000000000000bb";
    for i in 0..9 {
        pay(&url, &payer, b, 100 + i).await;
    }
    let b_last = start + 8;
    let canonical = hashes(&url, start, b_last).await;
    for (n, h) in &a_hashes {
        assert_ne!(&canonical[n], h, "block {n} is the same on both branches");
    }
    wait_until("branch B to be modelled", || async {
        let all = runs(store.as_ref()).await;
        all.iter()
            .filter(|r| a_runs.contains(&r.id))
            .all(|r| r.state == RunState::Superseded)
            && covered(store.as_ref(), start, b_last).await
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let all = runs(store.as_ref()).await;
    let state: BTreeMap<RunId, RunState> = all.iter().map(|r| (r.id, r.state)).collect();
    for run in all.iter().filter(|r| a_runs.contains(&r.id)) {
        assert_eq!(run.state, RunState::Superseded, "{}", run.range);
        assert!(
            run.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("superseded: chain reorganisation")),
            "{:?}",
            run.last_error
        );
    }
    let live: Vec<&ModelRun> = all
        .iter()
        .filter(|r| r.state != RunState::Superseded)
        .collect();
    let mut next = start;
    let mut live_ranges: Vec<_> = live.iter().map(|r| r.range).collect();
    live_ranges.sort_by_key(|r| r.start());
    for range in live_ranges {
        assert_eq!(range.start(), next, "live runs tile the chain once");
        next = range.end() + 1;
    }

    let records = sink.records(&topic_name("reorg", &chain));
    let mut orphaned = 0;
    let mut modelled: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for r in &records {
        let hash = r.block_hash.to_string();
        let n = r.key.block_number;
        assert_eq!(r.payload["block_hash"], json!(hash));
        if canonical.get(&n) != Some(&hash) {
            // An orphaned block's record: its hash is branch A's, and its run is superseded.
            orphaned += 1;
            assert_eq!(
                a_hashes.get(&n),
                Some(&hash),
                "block {n}: unknown hash {hash}"
            );
            assert_eq!(state[&r.run_id], RunState::Superseded, "block {n}");
        } else if state[&r.run_id] == RunState::Succeeded {
            modelled.entry(n).or_default().insert(hash);
        }
    }
    assert_eq!(orphaned, 6, "one block_stats record per orphaned block");
    for n in start..=b_last {
        assert_eq!(
            modelled.get(&n),
            Some(&BTreeSet::from([canonical[&n].clone()])),
            "block {n} of the new branch is modelled by a live run"
        );
    }
}
