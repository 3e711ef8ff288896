//! The JSON-RPC block source against a node that misbehaves as providers do: a small HTTP
//! server in the test (127.0.0.1, port 0) answering with the real mainnet responses of
//! tests/fixtures/ethereum-etl (see its README) and the faults each test asks for: HTTP 429,
//! `null` receipts of a lagging node, receipts and logs of another block hash, a broken parent
//! link, no `eth_getBlockReceipts`, requests that never get an answer, a dead URL, error pages
//! that echo the request's secrets.
//!
//! No `ETH_RPC_URL` needed: these tests always run with the feature (a module of
//! tests/jsonrpc.rs, so CI's `--test jsonrpc` runs them).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{Address, B256, Bytes};
use axum::body::Bytes as Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use model_runner_adapters::file_source::FileBlockSource;
use model_runner_adapters::jsonrpc::{JsonRpcOptions, JsonRpcSource};
use model_runner_core::conformance::source::{CallSupport, SourceFacts, run_all};
use model_runner_core::memory::MemoryCallCache;
use model_runner_core::models::Erc20Transfers;
use model_runner_core::ports::{BlockSource, CachedCalls, CallCacheStats, SourceError};
use model_runner_core::{
    Block, BlockRange, BlockRef, CallRequest, Chain, Model, ModelContext, RunId,
};
use serde_json::{Value, json};

fn fixtures(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ethereum-etl")
        .join(sub)
}

fn eth() -> Chain {
    Chain::new("ethereum").unwrap()
}

/// The block with two ERC-20 transfers, and the transaction of the second one.
const BLOCK: u64 = 483_920;
const TRANSFER_TX: &str = "0xcea6f89720cc1d2f46cc7a935463ae0b99dd5fad9c91bb7357de5421511cee49";
/// The token whose `totalSupply()` the fixtures hold.
const TOKEN: &str = "0x86fa049857e0209aa7d9e616f7eb3b3b78ecfdb0";

/// Retries fast: the faults, not the clock, are under test.
fn fast() -> JsonRpcOptions {
    JsonRpcOptions {
        retries: 10,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        max_retry_after: Duration::from_millis(20),
    }
}

/// What the node gets wrong, each for a number of answers (`usize::MAX`: always).
#[derive(Default)]
struct Faults {
    /// Whole requests answered HTTP 429 (with `Retry-After: 1`).
    too_many: usize,
    /// Whole requests never answered.
    hang: usize,
    /// Answers for the receipt of this transaction that are `null` (with
    /// `eth_getBlockReceipts`: the whole block's receipts are `null`).
    null_receipt: Option<(B256, usize)>,
    /// Answers of `eth_getBlockReceipts` that leave out the receipt of this transaction.
    left_out_receipt: Option<(B256, usize)>,
    /// Receipts that name another block hash.
    receipt_of_other_block: usize,
    /// Receipts whose logs name another block hash.
    log_of_other_block: usize,
    /// Block answers of this number whose parent hash is another.
    broken_parent: Option<(u64, usize)>,
    /// Every request answered with this status and a body quoting the request (path, query and
    /// authorization header), as some error pages do.
    echo: Option<u16>,
    /// `eth_call`s (elements of a batch included) answered with a JSON-RPC rate-limit error
    /// (-32005, as Infura does), each once, by calldata.
    call_rate_limited: Vec<Bytes>,
    /// `eth_call` with an EIP-1898 `{"blockHash": ...}` parameter refused, as ganache does.
    refuse_block_hash: bool,
    /// Batches of more than this many calls refused whole: with HTTP 413 (`true`) or with a
    /// JSON-RPC error object `batch size too large` (`false`), as providers answer above their
    /// batch limit.
    max_batch: Option<(usize, bool)>,
}

fn take(n: &mut usize) -> bool {
    if *n == 0 {
        return false;
    }
    if *n != usize::MAX {
        *n -= 1;
    }
    true
}

/// What the node served.
#[derive(Default, Debug)]
struct Seen {
    /// Calls by method.
    calls: BTreeMap<String, usize>,
    /// Requests by answer: "429", "hang", "null receipt", ...
    faults: BTreeMap<&'static str, usize>,
    /// `path?query` and authorization of the last request.
    last: Option<(String, Option<String>)>,
    /// HTTP requests (a batch is one), faulty ones included.
    requests: usize,
    /// `eth_getBlockByNumber` calls asking for the header alone (`false`).
    headers_only: usize,
}

struct Node {
    blocks: BTreeMap<u64, Value>,
    receipts: HashMap<B256, Value>,
    calls: HashMap<(Address, Bytes), Value>,
    block_receipts: bool,
    faults: Mutex<Faults>,
    seen: Mutex<Seen>,
}

fn result_of(path: &Path) -> Value {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.get("result").cloned().unwrap_or(v)
}

impl Node {
    /// A node serving the `eth_getBlockByNumber` and `eth_getTransactionReceipt` responses of
    /// the fixture folders, and the `eth_call` answers of `eth_call_0x86fa`.
    fn new(dirs: &[&str], block_receipts: bool, faults: Faults) -> Arc<Self> {
        let mut blocks = BTreeMap::new();
        let mut receipts = HashMap::new();
        for dir in dirs {
            for entry in std::fs::read_dir(fixtures(dir)).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                if name.starts_with("web3_response.eth_getBlockByNumber") {
                    let b = result_of(&path);
                    let n = u64::from_str_radix(&b["number"].as_str().unwrap()[2..], 16).unwrap();
                    blocks.insert(n, b);
                } else if name.starts_with("web3_response.eth_getTransactionReceipt") {
                    let r = result_of(&path);
                    receipts.insert(r["transactionHash"].as_str().unwrap().parse().unwrap(), r);
                }
            }
        }
        let mut calls = HashMap::new();
        calls.insert(
            (TOKEN.parse().unwrap(), Bytes::from_static(&[0x18, 0x16, 0x0d, 0xdd])),
            result_of(&fixtures("eth_call_0x86fa").join(
                "web3_response.eth_call_data_0x18160ddd_to_0x86fa049857e0209aa7d9e616f7eb3b3b78ecfdb0_latest.json",
            )),
        );
        Arc::new(Self {
            blocks,
            receipts,
            calls,
            block_receipts,
            faults: Mutex::new(faults),
            seen: Mutex::new(Seen::default()),
        })
    }

    fn fault(&self, what: &'static str) {
        *self.seen.lock().unwrap().faults.entry(what).or_default() += 1;
    }

    fn calls(&self, method: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .calls
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().requests
    }

    fn faults(&self, what: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .faults
            .get(what)
            .copied()
            .unwrap_or(0)
    }

    /// A receipt as this node serves it now.
    fn receipt(&self, tx: B256) -> Value {
        let Some(r) = self.receipts.get(&tx) else {
            return Value::Null;
        };
        let mut f = self.faults.lock().unwrap();
        if let Some((t, n)) = &mut f.null_receipt
            && *t == tx
            && take(n)
        {
            drop(f);
            self.fault("null receipt");
            return Value::Null;
        }
        let mut r = r.clone();
        let other = json!(B256::repeat_byte(0xee));
        if take(&mut f.receipt_of_other_block) {
            r["blockHash"] = other.clone();
            drop(f);
            self.fault("receipt of another block");
        } else if take(&mut f.log_of_other_block) {
            for log in r["logs"].as_array_mut().unwrap() {
                log["blockHash"] = other.clone();
            }
            drop(f);
            self.fault("log of another block");
        }
        r
    }

    fn block(&self, n: u64) -> Value {
        let Some(b) = self.blocks.get(&n) else {
            return Value::Null;
        };
        let mut b = b.clone();
        let mut f = self.faults.lock().unwrap();
        if let Some((number, times)) = &mut f.broken_parent
            && *number == n
            && take(times)
        {
            b["parentHash"] = json!(B256::repeat_byte(0xbb));
            drop(f);
            self.fault("broken parent");
        }
        b
    }

    fn answer(&self, call: &Value) -> Value {
        let method = call["method"].as_str().unwrap_or_default().to_owned();
        *self
            .seen
            .lock()
            .unwrap()
            .calls
            .entry(method.clone())
            .or_default() += 1;
        let p = &call["params"];
        let result = match method.as_str() {
            "eth_getBlockByNumber" => {
                let mut b = match p[0].as_str().unwrap() {
                    "latest" => self.block(*self.blocks.keys().last().unwrap()),
                    n => self.block(u64::from_str_radix(&n[2..], 16).unwrap()),
                };
                // `false`: transactions as hashes, as nodes answer.
                if p[1] == json!(false) {
                    self.seen.lock().unwrap().headers_only += 1;
                    if let Some(txs) = b.get_mut("transactions").and_then(Value::as_array_mut) {
                        for tx in txs {
                            *tx = tx["hash"].clone();
                        }
                    }
                }
                b
            }
            "eth_getTransactionReceipt" => self.receipt(p[0].as_str().unwrap().parse().unwrap()),
            "eth_getBlockReceipts" if self.block_receipts => {
                let n = u64::from_str_radix(&p[0].as_str().unwrap()[2..], 16).unwrap();
                match self.blocks.get(&n) {
                    None => Value::Null,
                    Some(b) => {
                        let txs: Vec<B256> = b["transactions"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|t| t["hash"].as_str().unwrap().parse().unwrap())
                            .collect();
                        let left_out = {
                            let mut f = self.faults.lock().unwrap();
                            match &mut f.left_out_receipt {
                                Some((t, n)) if txs.contains(t) => take(n).then_some(*t),
                                _ => None,
                            }
                        };
                        if left_out.is_some() {
                            self.fault("left out receipt");
                        }
                        let list: Vec<Value> = txs
                            .into_iter()
                            .filter(|t| Some(*t) != left_out)
                            .map(|t| self.receipt(t))
                            .collect();
                        // A lagging node has none of the block's receipts.
                        if list.iter().any(Value::is_null) {
                            Value::Null
                        } else {
                            Value::Array(list)
                        }
                    }
                }
            }
            "eth_call" => {
                let to: Address = p[0]["to"].as_str().unwrap().parse().unwrap();
                let data: Bytes = p[0]["data"].as_str().unwrap().parse().unwrap();
                let error = |code: i64, message: &str| {
                    json!({"jsonrpc": "2.0", "id": call["id"],
                        "error": {"code": code, "message": message}})
                };
                if p[1].is_object() && self.faults.lock().unwrap().refuse_block_hash {
                    self.fault("block hash refused");
                    return error(-32700, "Cannot wrap a \"object\" as a json-rpc type");
                }
                let limited = {
                    let mut f = self.faults.lock().unwrap();
                    let at = f.call_rate_limited.iter().position(|d| *d == data);
                    at.map(|at| f.call_rate_limited.remove(at)).is_some()
                };
                if limited {
                    self.fault("call rate limited");
                    return error(-32005, "daily request count exceeded, request rate limited");
                }
                match self.calls.get(&(to, data)) {
                    Some(v) => v.clone(),
                    None => {
                        return json!({"jsonrpc": "2.0", "id": call["id"],
                            "error": {"code": 3, "message": "execution reverted"}});
                    }
                }
            }
            _ => {
                return json!({"jsonrpc": "2.0", "id": call["id"], "error": {"code": -32601,
                    "message": format!("The method {method} does not exist/is not available")}});
            }
        };
        json!({"jsonrpc": "2.0", "id": call["id"], "result": result})
    }
}

async fn handle(
    State(node): State<Arc<Node>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    {
        let mut seen = node.seen.lock().unwrap();
        seen.last = Some((target.clone(), auth.clone()));
        seen.requests += 1;
    }
    let (echo, too_many, hang) = {
        let mut f = node.faults.lock().unwrap();
        let too_many = take(&mut f.too_many);
        (f.echo, too_many, !too_many && take(&mut f.hang))
    };
    if let Some(status) = echo {
        node.fault("echo");
        return (
            StatusCode::from_u16(status).unwrap(),
            format!("no route for POST {target} (authorization: {auth:?})"),
        )
            .into_response();
    }
    if too_many {
        node.fault("429");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "rate limited",
        )
            .into_response();
    }
    if hang {
        node.fault("hang");
        std::future::pending::<()>().await;
    }
    let request: Value = serde_json::from_slice(&body).unwrap();
    if let (Value::Array(calls), Some((max, http))) =
        (&request, node.faults.lock().unwrap().max_batch)
        && calls.len() > max
    {
        node.fault("batch too large");
        return if http {
            (StatusCode::PAYLOAD_TOO_LARGE, "request entity too large").into_response()
        } else {
            axum::Json(json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32600, "message": format!("batch size too large: {} > {max}", calls.len())}}))
            .into_response()
        };
    }
    let answer = match &request {
        Value::Array(calls) => Value::Array(calls.iter().map(|c| node.answer(c)).collect()),
        call => node.answer(call),
    };
    axum::Json(answer).into_response()
}

/// Serves `node` on 127.0.0.1 and returns its URL.
async fn serve(node: Arc<Node>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(handle).with_state(node);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A URL nothing listens on.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// The blocks the file source reads from the same responses.
async fn from_files(dir: &str, range: BlockRange) -> Vec<Block> {
    FileBlockSource::open(eth(), fixtures(dir))
        .unwrap()
        .blocks(range)
        .await
        .unwrap()
}

/// `erc20_transfers` of `blocks` as (transaction, value) pairs.
async fn transfers(source: Arc<dyn BlockSource>, blocks: &[Block]) -> Vec<(String, String)> {
    let ctx = ModelContext {
        run_id: RunId::new(),
        model: "erc20_transfers".into(),
        model_version: "1".into(),
        chain: eth(),
        range: BlockRange::single(blocks[0].number),
        source,
        notes: Default::default(),
    };
    Erc20Transfers
        .run(&ctx, blocks)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.payload["transaction_hash"].as_str().unwrap().to_owned(),
                r.payload["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// ethereum-etl's transfers of the block, as (transaction, value) pairs.
fn expected_transfers() -> Vec<(String, String)> {
    std::fs::read_to_string(fixtures("block_483920").join("expected_token_transfers.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[4].to_owned(), f[3].to_owned())
        })
        .collect()
}

/// The scenario: HTTP 429 twice, then `null` for one block's receipt three times, as a
/// lagging node behind a load balancer answers. The source retries through all of it and
/// returns every transfer (the old client "succeeded" with one missing), with and without
/// `eth_getBlockReceipts`.
#[tokio::test]
async fn rate_limits_and_a_lagging_node_are_retried_and_no_transfer_is_lost() {
    let want = from_files("block_483920", BlockRange::single(BLOCK)).await;
    assert_eq!(expected_transfers().len(), 2);
    for block_receipts in [false, true] {
        let node = Node::new(
            &["block_483920"],
            block_receipts,
            Faults {
                too_many: 2,
                null_receipt: Some((TRANSFER_TX.parse().unwrap(), 3)),
                ..Faults::default()
            },
        );
        let url = serve(node.clone()).await;
        let source = Arc::new(JsonRpcSource::with_options(eth(), &url, fast()).unwrap());
        let got = source.blocks(BlockRange::single(BLOCK)).await.unwrap();
        assert_eq!(node.faults("429"), 2);
        assert_eq!(
            node.faults("null receipt"),
            3,
            "block receipts: {block_receipts}"
        );
        assert_eq!(got, want, "the same block as the file source reads");
        assert!(got[0].transactions.iter().all(|t| t.receipt.is_some()));
        assert_eq!(transfers(source, &got).await, expected_transfers());
    }
}

/// A 429's `Retry-After` (1 s here) is waited out, above the backoff (1 ms here), up to
/// `max_retry_after`.
#[tokio::test]
async fn a_rate_limited_node_is_given_the_time_it_asks_for() {
    let node = Node::new(
        &["block_483920"],
        true,
        Faults {
            too_many: 2,
            ..Faults::default()
        },
    );
    let url = serve(node.clone()).await;
    let mut options = fast();
    options.max_retry_after = Duration::from_secs(5);
    let source = JsonRpcSource::with_options(eth(), &url, options).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(source.head().await.unwrap().number, BLOCK);
    assert_eq!(node.faults("429"), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two Retry-After: 1 answers, retried after {:?}",
        started.elapsed()
    );
}

/// A node that keeps lagging: after the retries, a retryable error naming the transaction,
/// never a block without its receipt. Per transaction its receipt is `null`; per block, the
/// list leaves it out.
#[tokio::test]
async fn a_receipt_that_stays_null_or_missing_is_a_retryable_error() {
    let tx: B256 = TRANSFER_TX.parse().unwrap();
    for (block_receipts, faults, says, fault) in [
        (
            false,
            Faults {
                null_receipt: Some((tx, usize::MAX)),
                ..Faults::default()
            },
            "is null",
            "null receipt",
        ),
        (
            true,
            Faults {
                left_out_receipt: Some((tx, usize::MAX)),
                ..Faults::default()
            },
            "do not hold exactly one for transaction",
            "left out receipt",
        ),
    ] {
        let node = Node::new(&["block_483920"], block_receipts, faults);
        let url = serve(node.clone()).await;
        let mut options = fast();
        options.retries = 3;
        let source = JsonRpcSource::with_options(eth(), &url, options).unwrap();
        let err = source.blocks(BlockRange::single(BLOCK)).await.unwrap_err();
        assert!(matches!(err, SourceError::Unavailable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("gave up after 4 attempts"), "{text}");
        assert!(text.contains(TRANSFER_TX) && text.contains(says), "{text}");
        assert_eq!(node.faults(fault), 4);
    }
}

/// Receipts or logs that name another block hash (a node on another branch) are retried, and
/// a retryable error if they persist.
#[tokio::test]
async fn receipts_and_logs_of_another_block_are_retryable() {
    let want = from_files("block_483920", BlockRange::single(BLOCK)).await;
    for block_receipts in [false, true] {
        // Twice, then right: retried through.
        let node = Node::new(
            &["block_483920"],
            block_receipts,
            Faults {
                receipt_of_other_block: 1,
                log_of_other_block: 1,
                ..Faults::default()
            },
        );
        let url = serve(node.clone()).await;
        let source = JsonRpcSource::with_options(eth(), &url, fast()).unwrap();
        assert_eq!(
            source.blocks(BlockRange::single(BLOCK)).await.unwrap(),
            want
        );
        assert_eq!(node.faults("receipt of another block"), 1);
        assert_eq!(node.faults("log of another block"), 1);

        // For good: a retryable error that says so.
        for (faults, says) in [
            (
                Faults {
                    receipt_of_other_block: usize::MAX,
                    ..Faults::default()
                },
                "the receipt of transaction",
            ),
            (
                Faults {
                    log_of_other_block: usize::MAX,
                    ..Faults::default()
                },
                "a log of transaction",
            ),
        ] {
            let node = Node::new(&["block_483920"], block_receipts, faults);
            let url = serve(node.clone()).await;
            let mut options = fast();
            options.retries = 2;
            let source = JsonRpcSource::with_options(eth(), &url, options).unwrap();
            let err = source.blocks(BlockRange::single(BLOCK)).await.unwrap_err();
            assert!(matches!(err, SourceError::Unavailable { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(says), "{text}");
            assert!(
                text.contains(&format!("{}", B256::repeat_byte(0xee))),
                "{text}"
            );
        }
    }
}

/// A block whose parent hash is not the previous block's hash is retryable, within one batch
/// and across batches, and no receipt is read for blocks that do not link.
#[tokio::test]
async fn a_broken_parent_link_is_retryable() {
    for batch in [25, 1] {
        let node = Node::new(
            &["blocks_47218_47219"],
            true,
            Faults {
                broken_parent: Some((47_219, usize::MAX)),
                ..Faults::default()
            },
        );
        let url = format!("{}#batch={batch}", serve(node.clone()).await);
        let mut options = fast();
        options.retries = 2;
        let source = JsonRpcSource::with_options(eth(), &url, options).unwrap();
        let err = source
            .blocks(BlockRange::new(47_218, 47_219).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, SourceError::Unavailable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("block 47219 names parent") && text.contains("but block 47218 is"),
            "{text}"
        );
        assert_eq!(node.faults("broken parent"), 3, "batch {batch}");
        assert_eq!(node.calls("eth_getBlockReceipts"), 0);
        assert_eq!(node.calls("eth_getTransactionReceipt"), 0);
    }
}

/// Without `eth_getBlockReceipts` the source reads receipts per transaction, and remembers it;
/// with it, one call per block.
#[tokio::test]
async fn receipts_fall_back_to_one_call_per_transaction() {
    let want = from_files("block_483920", BlockRange::single(BLOCK)).await;
    let txs = want[0].transactions.len();
    assert_eq!(txs, 4);

    let node = Node::new(&["block_483920"], false, Faults::default());
    let source = JsonRpcSource::new(eth(), &serve(node.clone()).await).unwrap();
    assert_eq!(
        source.blocks(BlockRange::single(BLOCK)).await.unwrap(),
        want
    );
    assert_eq!(
        source.blocks(BlockRange::single(BLOCK)).await.unwrap(),
        want
    );
    assert_eq!(
        node.calls("eth_getBlockReceipts"),
        1,
        "asked once, then remembered"
    );
    assert_eq!(node.calls("eth_getTransactionReceipt"), 2 * txs);

    let node = Node::new(&["block_483920"], true, Faults::default());
    let source = JsonRpcSource::new(eth(), &serve(node.clone()).await).unwrap();
    assert_eq!(
        source.blocks(BlockRange::single(BLOCK)).await.unwrap(),
        want
    );
    assert_eq!(node.calls("eth_getBlockReceipts"), 1);
    assert_eq!(node.calls("eth_getTransactionReceipt"), 0);
}

/// A request the node never answers times out and is retried.
#[tokio::test]
async fn timeouts_are_retried() {
    let node = Node::new(
        &["block_483920"],
        true,
        Faults {
            hang: 1,
            ..Faults::default()
        },
    );
    let url = format!("{}#timeout_ms=300", serve(node.clone()).await);
    let source = JsonRpcSource::with_options(eth(), &url, fast()).unwrap();
    let want = from_files("block_483920", BlockRange::single(BLOCK)).await;
    assert_eq!(
        source.blocks(BlockRange::single(BLOCK)).await.unwrap(),
        want
    );
    assert_eq!(node.faults("hang"), 1);
}

/// A dead URL or one answering 503 is left for the next URL of the list, which the source then
/// keeps using.
#[tokio::test]
async fn fails_over_from_a_dead_url_to_a_live_one() {
    let want = from_files("block_483920", BlockRange::single(BLOCK)).await;
    let live = Node::new(&["block_483920"], true, Faults::default());
    let live_url = serve(live.clone()).await;
    let broken = Node::new(
        &["block_483920"],
        true,
        Faults {
            echo: Some(503),
            ..Faults::default()
        },
    );
    let broken_url = serve(broken.clone()).await;
    let dead = dead_url().await;
    let source =
        JsonRpcSource::with_options(eth(), &format!("{dead}|{broken_url}|{live_url}"), fast())
            .unwrap();
    assert_eq!(source.urls(), [dead, broken_url, live_url]);
    assert_eq!(source.head().await.unwrap().number, BLOCK);
    assert_eq!(broken.faults("echo"), 1);
    assert_eq!(
        source.blocks(BlockRange::single(BLOCK)).await.unwrap(),
        want
    );
    assert_eq!(broken.faults("echo"), 1, "stays on the live URL");
    assert_eq!(live.calls("eth_getBlockByNumber"), 2);
}

/// The port's contract holds on real mainnet responses served over HTTP, `eth_call` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_source_conformance_on_mainnet_responses() {
    let node = Node::new(&["block_483920"], true, Faults::default());
    let source = JsonRpcSource::new(eth(), &serve(node).await).unwrap();
    let block_hash = source.blocks(BlockRange::single(BLOCK)).await.unwrap()[0].hash;
    let answer = result_of(&fixtures("eth_call_0x86fa").join(
        "web3_response.eth_call_data_0x18160ddd_to_0x86fa049857e0209aa7d9e616f7eb3b3b78ecfdb0_latest.json",
    ));
    run_all(
        source,
        &SourceFacts {
            chain: eth(),
            known: BlockRange::single(BLOCK),
            missing: vec![0, BLOCK - 1],
            linked: true,
            receipts: true,
            call: CallSupport::Known(vec![(
                CallRequest {
                    to: TOKEN.parse().unwrap(),
                    data: Bytes::from_static(&[0x18, 0x16, 0x0d, 0xdd]),
                    block: BLOCK,
                    block_hash,
                },
                answer.as_str().unwrap().parse().unwrap(),
            )]),
        },
    )
    .await;
}

/// `balanceOf(holder i)` calldata.
fn balance_of(i: u8) -> Bytes {
    let mut data = vec![0x70, 0xa0, 0x82, 0x31];
    data.extend_from_slice(Address::with_last_byte(i).into_word().as_slice());
    data.into()
}

/// The word the node answers for holder `i`.
fn word(i: u8) -> Bytes {
    Bytes::copy_from_slice(B256::with_last_byte(i).as_slice())
}

/// A node that also answers `balanceOf(holder i)` of the token with `word(i)`, for i in 1..=n
/// (any other calldata reverts).
fn balances_node(n: u8, faults: Faults) -> Arc<Node> {
    let mut node = Node::new(&["block_483920"], true, faults);
    let calls = &mut Arc::get_mut(&mut node).unwrap().calls;
    for i in 1..=n {
        calls.insert((TOKEN.parse().unwrap(), balance_of(i)), json!(word(i)));
    }
    node
}

/// `balanceOf(holder i)` of the token at the fixtures' block.
async fn balance_request(i: u8) -> CallRequest {
    let block = &from_files("block_483920", BlockRange::single(BLOCK)).await[0];
    CallRequest {
        to: TOKEN.parse().unwrap(),
        data: balance_of(i),
        block: BLOCK,
        block_hash: block.hash,
    }
}

/// Answers as `Ok(word)` or the error's variant.
fn shown(answers: Vec<Result<Bytes, SourceError>>) -> Vec<Result<Bytes, &'static str>> {
    answers
        .into_iter()
        .map(|a| {
            a.map_err(|e| match e {
                SourceError::Reverted(_) => "reverted",
                SourceError::Unavailable { .. } => "unavailable",
                other => panic!("{other:?}"),
            })
        })
        .collect()
}

/// N calls are one HTTP request; each keeps its own answer (a revert among good ones), in the
/// requests' order, and identical requests are asked once.
#[tokio::test]
async fn calls_go_to_the_node_as_one_batch_request() {
    let node = balances_node(10, Faults::default());
    let source = JsonRpcSource::with_options(eth(), &serve(node.clone()).await, fast()).unwrap();
    let mut requests = Vec::new();
    for i in 1..=10 {
        requests.push(balance_request(i).await);
    }
    // No balanceOf for holder 99: the contract reverts.
    requests.insert(4, balance_request(99).await);
    requests.push(balance_request(1).await);
    let mut want: Vec<Result<Bytes, &str>> = (1..=10).map(|i| Ok(word(i))).collect();
    want.insert(4, Err("reverted"));
    want.push(Ok(word(1)));

    assert_eq!(shown(source.calls(&requests).await), want);
    assert_eq!(node.requests(), 1, "one HTTP request for all the calls");
    assert_eq!(
        node.calls("eth_call"),
        11,
        "the repeated request asked once"
    );
    assert!(source.calls(&[]).await.is_empty());
    assert_eq!(node.requests(), 1);
}

/// Through the call cache: N reads of one block cost one request, the same batch again none,
/// and a batch with a few new reads one request holding those alone.
#[tokio::test]
async fn cached_calls_send_only_the_misses_as_one_request() {
    let node = balances_node(12, Faults::default());
    let source = CachedCalls::new(
        JsonRpcSource::with_options(eth(), &serve(node.clone()).await, fast()).unwrap(),
        Arc::new(MemoryCallCache::default()),
    );
    let mut requests = Vec::new();
    for i in 1..=10 {
        requests.push(balance_request(i).await);
    }
    let want: Vec<Result<Bytes, &str>> = (1..=10).map(|i| Ok(word(i))).collect();
    assert_eq!(shown(source.calls(&requests).await), want);
    assert_eq!(node.requests(), 1);
    assert_eq!(shown(source.calls(&requests).await), want);
    assert_eq!(node.requests(), 1, "a warm batch costs no request");
    assert_eq!(
        source.stats(),
        CallCacheStats {
            hits: 10,
            misses: 10
        }
    );

    requests.push(balance_request(11).await);
    requests.push(balance_request(12).await);
    let want: Vec<Result<Bytes, &str>> = (1..=12).map(|i| Ok(word(i))).collect();
    assert_eq!(shown(source.calls(&requests).await), want);
    assert_eq!(node.requests(), 2);
    assert_eq!(
        node.calls("eth_call"),
        12,
        "each call asked of the node once"
    );
}

/// Batches hold at most the URL's `batch` calls.
#[tokio::test]
async fn calls_are_sent_in_batches_of_the_url_s_size() {
    let node = balances_node(10, Faults::default());
    let url = format!("{}#batch=4&concurrency=1", serve(node.clone()).await);
    let source = JsonRpcSource::with_options(eth(), &url, fast()).unwrap();
    let mut requests = Vec::new();
    for i in 1..=10 {
        requests.push(balance_request(i).await);
    }
    let want: Vec<Result<Bytes, &str>> = (1..=10).map(|i| Ok(word(i))).collect();
    assert_eq!(shown(source.calls(&requests).await), want);
    assert_eq!(node.requests(), 3, "4 + 4 + 2 calls");
    assert_eq!(node.calls("eth_call"), 10);
}

/// A batch the node refuses as too large (HTTP 413, or a JSON-RPC error for the whole batch) is
/// sent again in halves until the node takes it: every call answered, none lost.
#[tokio::test]
async fn a_batch_refused_as_too_large_is_sent_in_halves() {
    for http in [true, false] {
        let node = balances_node(
            12,
            Faults {
                max_batch: Some((3, http)),
                ..Faults::default()
            },
        );
        let url = format!("{}#batch=12&concurrency=1", serve(node.clone()).await);
        let source = JsonRpcSource::with_options(eth(), &url, fast()).unwrap();
        let mut requests = Vec::new();
        for i in 1..=12 {
            requests.push(balance_request(i).await);
        }
        let want: Vec<Result<Bytes, &str>> = (1..=12).map(|i| Ok(word(i))).collect();
        assert_eq!(shown(source.calls(&requests).await), want, "http: {http}");
        assert_eq!(
            node.faults("batch too large"),
            3,
            "12 refused, then 6 and 6 refused, then four batches of 3 (http: {http})"
        );
        assert_eq!(node.requests(), 7, "http: {http}");
        assert_eq!(node.calls("eth_call"), 12, "http: {http}");
    }
}

/// A batch answered 429 is sent again whole; a call of a batch answered with a rate-limit error
/// is sent again alone, the others' answers kept.
#[tokio::test]
async fn a_rate_limited_batch_and_a_rate_limited_call_are_retried() {
    let node = balances_node(
        10,
        Faults {
            too_many: 1,
            call_rate_limited: vec![balance_of(3)],
            ..Faults::default()
        },
    );
    let source = JsonRpcSource::with_options(eth(), &serve(node.clone()).await, fast()).unwrap();
    let mut requests = Vec::new();
    for i in 1..=10 {
        requests.push(balance_request(i).await);
    }
    let want: Vec<Result<Bytes, &str>> = (1..=10).map(|i| Ok(word(i))).collect();
    assert_eq!(shown(source.calls(&requests).await), want);
    assert_eq!(node.faults("429"), 1);
    assert_eq!(node.faults("call rate limited"), 1);
    assert_eq!(
        node.requests(),
        3,
        "the 429, the batch of 10, the rate-limited call alone"
    );
    assert_eq!(node.calls("eth_call"), 11);

    // A call that stays rate-limited is Unavailable once the retries are spent; the others
    // are answered.
    let node = balances_node(
        3,
        Faults {
            call_rate_limited: vec![balance_of(2); 100],
            ..Faults::default()
        },
    );
    let mut options = fast();
    options.retries = 2;
    let source = JsonRpcSource::with_options(eth(), &serve(node.clone()).await, options).unwrap();
    let requests = [
        balance_request(1).await,
        balance_request(2).await,
        balance_request(3).await,
    ];
    let answers = source.calls(&requests).await;
    let text = answers[1].as_ref().unwrap_err().to_string();
    assert!(
        text.contains("gave up after 3 attempts") && text.contains("rate limited"),
        "{text}"
    );
    assert_eq!(
        shown(answers),
        [Ok(word(1)), Err("unavailable"), Ok(word(3))]
    );
    assert_eq!(node.requests(), 3);
    assert_eq!(node.calls("eth_call"), 5);
}

/// On a node that refuses `{"blockHash": ...}` (ganache), a batch goes by number and one batch
/// of headers checks the blocks' hashes after the calls; a hash of another branch is retried,
/// then Unavailable, never an answer about another block.
#[tokio::test]
async fn calls_by_number_check_the_block_hash_in_one_more_batch() {
    let node = balances_node(
        10,
        Faults {
            refuse_block_hash: true,
            ..Faults::default()
        },
    );
    let mut options = fast();
    options.retries = 1;
    let source = JsonRpcSource::with_options(eth(), &serve(node.clone()).await, options).unwrap();
    let mut requests = Vec::new();
    for i in 1..=10 {
        requests.push(balance_request(i).await);
    }
    requests.push(balance_request(99).await);
    let mut want: Vec<Result<Bytes, &str>> = (1..=10).map(|i| Ok(word(i))).collect();
    want.push(Err("reverted"));
    assert_eq!(shown(source.calls(&requests).await), want);
    assert_eq!(
        node.requests(),
        3,
        "refused by hash, by number, the block's header"
    );
    assert_eq!(node.faults("block hash refused"), 11);
    assert_eq!(node.seen.lock().unwrap().headers_only, 1);
    // Remembered: by number at once.
    assert_eq!(shown(source.calls(&requests).await), want);
    assert_eq!(node.requests(), 5);

    let mut other_branch = balance_request(1).await;
    other_branch.block_hash = B256::repeat_byte(0xcd);
    let answers = source
        .calls(&[other_branch, balance_request(2).await])
        .await;
    let text = answers[0].as_ref().unwrap_err().to_string();
    assert!(text.contains("the chain moved"), "{text}");
    assert_eq!(shown(answers), [Err("unavailable"), Ok(word(2))]);
}

/// `block_ref` reads the header alone (`eth_getBlockByNumber(n, false)`, no receipts), is
/// retried like every request, and a block past the head is `BlockNotFound` at once.
#[tokio::test]
async fn block_ref_reads_the_header_alone() {
    let want = from_files("block_483920", BlockRange::single(BLOCK)).await;
    let node = Node::new(
        &["block_483920"],
        true,
        Faults {
            too_many: 2,
            ..Faults::default()
        },
    );
    let source = JsonRpcSource::with_options(eth(), &serve(node.clone()).await, fast()).unwrap();
    assert_eq!(
        source.block_ref(BLOCK).await.unwrap(),
        BlockRef {
            number: BLOCK,
            hash: want[0].hash,
            parent_hash: want[0].parent_hash,
        }
    );
    assert_eq!(node.faults("429"), 2, "retried through two 429s");
    assert_eq!(node.calls("eth_getBlockByNumber"), 1);
    assert_eq!(
        node.seen.lock().unwrap().headers_only,
        1,
        "the header alone"
    );
    assert_eq!(node.calls("eth_getBlockReceipts"), 0);
    assert_eq!(node.calls("eth_getTransactionReceipt"), 0);

    let err = source.block_ref(BLOCK + 1).await.unwrap_err();
    assert!(
        matches!(err, SourceError::BlockNotFound { number, .. } if number == BLOCK + 1),
        "{err:?}"
    );
    assert_eq!(node.requests(), 4, "not retried");
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The URL's user info, path key and query key reach the node, and never an error, a log line
/// (at every level, the libraries' own included) or `Debug`: not from a node whose error pages
/// echo the request, nor from a dead URL, nor from a refused option.
#[tokio::test]
async fn url_secrets_never_appear_in_errors_or_logs() {
    const PASSWORD: &str = "pa55w0rd-x";
    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const API_KEY: &str = "hunter2-apikey";
    use base64::Engine as _;
    // The basic authentication the node gets: a secret too, should it echo it.
    let token = base64::engine::general_purpose::STANDARD.encode(format!("runner:{PASSWORD}"));
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut options = fast();
    options.retries = 2;
    let mut texts = Vec::new();
    for status in [500, 401] {
        let node = Node::new(
            &["block_483920"],
            true,
            Faults {
                echo: Some(status),
                ..Faults::default()
            },
        );
        let base = serve(node.clone()).await;
        let url = format!(
            "{}v3/{KEY}?apikey={API_KEY}&chain=1",
            base.replacen("http://", &format!("http://runner:{PASSWORD}@"), 1)
        );
        let source = JsonRpcSource::with_options(eth(), &url, options.clone()).unwrap();
        let err = source.head().await.unwrap_err();
        if status == 500 {
            assert!(matches!(err, SourceError::Unavailable { .. }), "{err:?}");
            assert_eq!(node.faults("echo"), 3, "retried");
        } else {
            assert!(matches!(err, SourceError::Backend { .. }), "{err:?}");
            assert!(err.to_string().contains("HTTP error 401"), "{err}");
            assert_eq!(node.faults("echo"), 1, "a permanent error is not retried");
        }
        // The node did get the credentials, and echoed them.
        let (target, auth) = node.seen.lock().unwrap().last.clone().unwrap();
        assert_eq!(target, format!("/v3/{KEY}?apikey={API_KEY}&chain=1"));
        assert_eq!(auth.as_deref(), Some(format!("Basic {token}").as_str()));
        assert!(
            err.to_string().contains("no route for POST /v3/***"),
            "{err}"
        );
        assert!(
            !err.to_string().contains(&token),
            "the echoed authorization: {err}"
        );
        texts.push(err.to_string());
        texts.push(format!("{err:?}"));
        texts.push(format!("{source:?}"));
    }
    let dead = dead_url()
        .await
        .replacen("http://", &format!("http://runner:{PASSWORD}@"), 1);
    let source = JsonRpcSource::with_options(
        eth(),
        &format!("{dead}v3/{KEY}?apikey={API_KEY}"),
        options.clone(),
    )
    .unwrap();
    let err = source.head().await.unwrap_err();
    assert!(matches!(err, SourceError::Unavailable { .. }), "{err:?}");
    texts.push(err.to_string());
    let err =
        JsonRpcSource::new(eth(), &format!("{dead}v3/{KEY}?apikey={API_KEY}#rsp=1")).unwrap_err();
    assert!(err.to_string().contains("rsp"), "{err}");
    texts.push(err.to_string());

    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!logged.is_empty(), "the retries were logged");
    texts.push(logged);
    for text in &texts {
        for secret in [PASSWORD, KEY, API_KEY, token.as_str()] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
