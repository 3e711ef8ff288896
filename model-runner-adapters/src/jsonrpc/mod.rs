//! `http(s)://`: a [`BlockSource`] on Ethereum JSON-RPC nodes (feature `jsonrpc`), through
//! alloy's RPC client.
//!
//! # URL
//!
//! One node, or several separated by `|` (tried in order; the source stays on the one that
//! answers and moves to the next when it fails), each with optional settings after `#`:
//!
//! ```text
//! https://mainnet.infura.io/v3/KEY#rps=10&concurrency=2|https://user:pass@eth-node:8545
//! ```
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `rps` | 25 | requests per second to this URL at most (a batch is one request) |
//! | `concurrency` | 4 | requests in flight to this URL at most |
//! | `batch` | 25 | calls per batch request, and blocks per `eth_getBlockByNumber` batch (1: no batches) |
//! | `timeout_ms` | 30000 | time for one request, connecting included |
//!
//! The settings go in the fragment, which is never sent to the node, so they cannot clash with a
//! provider's own query parameters (`?apikey=...`); an unknown setting is an error naming it.
//! User info (`user:pass@`) is sent as HTTP basic authentication.
//!
//! # How a range is read
//!
//! `blocks(range)` makes attempts until every block of the range is read, checked and joined:
//!
//! 1. `eth_getBlockByNumber(n, true)` (full transactions) for the blocks still missing, in
//!    batches of `batch` blocks, `concurrency` batches at a time. A `null` block is
//!    [`SourceError::BlockNotFound`] (past the head), at once.
//! 2. Every block of the range must name the previous block's hash as its parent.
//! 3. Receipts: `eth_getBlockReceipts(n)` per block, batched; when the node says it lacks the
//!    method, batched `eth_getTransactionReceipt` per transaction from then on (for this URL).
//!    Every listed transaction needs exactly one receipt, and every receipt and log must name the
//!    block's hash.
//! 4. Blocks and receipts are joined by the file source's loader (the same JSON shapes), so
//!    both sources give identical blocks for the same responses.
//!
//! Blocks that passed all checks are kept across attempts; a broken parent link discards them
//! all (the chain changed while it was read), since which side is stale cannot be told.
//!
//! # Retries and errors
//!
//! A failure worth another attempt waits (exponential backoff with jitter, at least the node's
//! `Retry-After` up to [`JsonRpcOptions::max_retry_after`]) and retries on the next URL:
//! timeouts and connection failures, HTTP 408, 429 and 5xx, rate-limit and "header not found"
//! JSON-RPC errors, and a node that contradicts itself (a `null` or missing receipt for a
//! listed transaction, a receipt or log of another block hash, a broken parent link). After
//! [`JsonRpcOptions::retries`] retries the last one is [`SourceError::Unavailable`], so the
//! worker retries the run later: never a block with a receipt missing. Anything else (another
//! HTTP status, a JSON-RPC error such as a revert, an answer that does not parse) is a permanent
//! error at once, [`SourceError::Backend`] or [`SourceError::InvalidData`], saying what the node
//! answered. A batch (of blocks, receipts or calls) the node refuses as too large (HTTP 413, or
//! an error saying the batch is too large or holds too many calls, whether for the request or
//! as one error object for the whole batch) is sent again in halves, down to single requests:
//! a provider's batch limit below the URL's `batch` costs requests, not the run.
//!
//! `head` is `eth_getBlockByNumber("latest", false)` and `block_ref(n)` is
//! `eth_getBlockByNumber(n, false)` (the header alone; a `null` block is
//! [`SourceError::BlockNotFound`] at once), with the same retries. `call` is `eth_call` pinned to
//! the block's hash (EIP-1898, `{"blockHash": ...}`), with the same retries; a node that refuses
//! that parameter (ganache) is called by number and the block's hash checked after the call. A
//! revert is [`SourceError::Reverted`]. Every request is counted and timed in the source request
//! metrics by method.
//!
//! # Batched calls
//!
//! `calls(requests)` asks once for identical requests and sends the others as JSON-RPC batches
//! of `batch` calls, each batch one request under the URL's `rps` and `concurrency` limits
//! (module `calls`). Each call keeps its own answer: a revert is that call's
//! [`SourceError::Reverted`]; a call the node fails retryably (a rate-limit error on one element,
//! or the whole batch answered 429) is sent again, alone with the other failed calls of its
//! batch, with the same backoff and failover as any request; a permanent failure is that call's
//! error. On a node that refuses EIP-1898 parameters, a batch by number is followed by one batch
//! of `eth_getBlockByNumber(n, false)` for its blocks, to check their hashes after the calls.
//!
//! # Secrets
//!
//! Errors, logs and `Debug` show URLs only through the one redactor
//! ([`model_runner_core::redact`]): the password, path keys such as `/v3/KEY` and secret query
//! values as `***`. Texts that come back from a node (an error body may echo the request path)
//! have the same secrets removed.

mod calls;
mod endpoint;
mod range;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use alloy_json_rpc::RpcError;
use alloy_primitives::Bytes;
use alloy_transport::TransportError;
use alloy_transport::layers::{RateLimitRetryPolicy, RetryPolicy};
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use model_runner_core::ports::{BlockSource, SourceError};
use model_runner_core::{Block, BlockHead, BlockRange, BlockRef, CallRequest, Chain};
use serde_json::{Value, json};

use endpoint::{Endpoint, error_chain};

pub use endpoint::{DEFAULT_BATCH, DEFAULT_CONCURRENCY, DEFAULT_RPS, DEFAULT_TIMEOUT};

const ADAPTER: &str = "jsonrpc";

/// How a source retries (the per-URL settings are in the URL, see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonRpcOptions {
    /// Retries of one `head`, `block_ref`, `blocks`, `call` or chunk of `calls` (a batch's
    /// worth) after its first attempt (default 8: about 25 s to 45 s of backoff in all).
    pub retries: usize,
    /// The first backoff (default 250 ms); each next one doubles, plus up to as much jitter.
    pub min_backoff: Duration,
    /// The longest backoff (default 5 s).
    pub max_backoff: Duration,
    /// The longest `Retry-After` of a node that is honoured (default 60 s).
    pub max_retry_after: Duration,
}

impl Default for JsonRpcOptions {
    fn default() -> Self {
        Self {
            retries: 8,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// Ethereum JSON-RPC nodes of one chain. See the module docs.
pub struct JsonRpcSource {
    chain: Chain,
    endpoints: Vec<Endpoint>,
    /// The endpoint attempts go to; moves on when one fails with a retryable error.
    preferred: AtomicUsize,
    options: JsonRpcOptions,
}

impl std::fmt::Debug for JsonRpcSource {
    /// Redacted URLs only: the keys must not reach logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonRpcSource")
            .field("chain", &self.chain)
            .field("endpoints", &self.endpoints)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    /// Another attempt, on the next URL, may succeed. The message names the URL (redacted).
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// Returned as it is.
    Final(SourceError),
}

impl Failure {
    fn retry(message: String) -> Self {
        Self::Retry {
            message,
            after: None,
        }
    }

    /// The same failure, for another call of a batch that failed as a whole.
    fn copy(&self) -> Self {
        match self {
            Self::Retry { message, after } => Self::Retry {
                message: message.clone(),
                after: *after,
            },
            Self::Final(e) => Self::Final(copy_error(e)),
        }
    }
}

/// The same error (same variant and text), for each call of a batch that shares it.
fn copy_error(e: &SourceError) -> SourceError {
    match e {
        SourceError::BlockNotFound {
            number,
            source_name,
        } => SourceError::BlockNotFound {
            number: *number,
            source_name: source_name.clone(),
        },
        SourceError::Unsupported(m) => SourceError::Unsupported(m.clone()),
        SourceError::Reverted(m) => SourceError::Reverted(m.clone()),
        SourceError::InvalidData(m) => SourceError::InvalidData(m.clone()),
        SourceError::Unavailable { adapter, message } => SourceError::Unavailable {
            adapter,
            message: message.clone(),
        },
        SourceError::Backend { adapter, source } => SourceError::Backend {
            adapter,
            source: source.to_string().into(),
        },
        other => backend(other.to_string()),
    }
}

/// A failed attempt and the endpoint it was made on.
#[derive(Debug)]
struct Attempt {
    endpoint: usize,
    failure: Failure,
}

/// Classifies a failed request of `method` to `ep` (see "Retries and errors").
fn classify(ep: &Endpoint, method: &str, err: TransportError) -> Failure {
    let say = |what: &dyn std::fmt::Display| ep.scrub(&format!("{}: {method}: {what}", ep.shown));
    match &err {
        RpcError::Transport(kind) => {
            let message = say(&error_chain(kind));
            match kind.as_http_error() {
                Some(http) if http.status == 408 || http.status == 429 || http.status >= 500 => {
                    Failure::Retry {
                        message,
                        after: kind.retry_after(),
                    }
                }
                Some(_) => Failure::Final(backend(message)),
                None if kind.is_non_retryable() => Failure::Final(backend(message)),
                // Connection failures, timeouts, a batch answered in part.
                None => Failure::retry(message),
            }
        }
        RpcError::ErrorResp(payload) => {
            let message = say(&format_args!("error {}: {}", payload.code, payload.message));
            if payload.is_retry_err() {
                Failure::Retry {
                    message,
                    after: RateLimitRetryPolicy::default().backoff_hint(&err),
                }
            } else {
                Failure::Final(backend(message))
            }
        }
        RpcError::DeserError { err: e, text } => Failure::Final(SourceError::InvalidData(say(
            &format_args!("an answer that is not JSON-RPC ({e}): {text}"),
        ))),
        other => Failure::Final(backend(say(&error_chain(other)))),
    }
}

fn backend(message: String) -> SourceError {
    SourceError::Backend {
        adapter: ADAPTER,
        source: message.into(),
    }
}

/// Awaits `futures`, at most `concurrency` at a time, and concatenates their outputs in the
/// order of `futures` (a chunk of calls, a batch of requests: each gives its answers in order).
async fn buffered_in_order<T: Send>(
    futures: Vec<BoxFuture<'_, Vec<T>>>,
    concurrency: usize,
) -> Vec<T> {
    stream::iter(futures)
        .buffered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn hex(n: u64) -> String {
    format!("{n:#x}")
}

/// The number, hash and parent hash of a block as `eth_getBlockByNumber` gives it (`what` names
/// it in errors).
fn block_ref_of(ep: &Endpoint, b: &Value, what: &str) -> Result<BlockRef, Failure> {
    let bad = |field: &str| {
        Failure::Final(SourceError::InvalidData(
            ep.scrub(&format!("{}: {what} has no valid {field}: {b}", ep.shown)),
        ))
    };
    let field = |k: &str| b.get(k).and_then(Value::as_str);
    let number = field("number")
        .and_then(|n| u64::from_str_radix(n.trim_start_matches("0x"), 16).ok())
        .ok_or_else(|| bad("number"))?;
    let hash = field("hash")
        .and_then(|h| h.parse().ok())
        .ok_or_else(|| bad("hash"))?;
    let parent_hash = field("parentHash")
        .and_then(|h| h.parse().ok())
        .ok_or_else(|| bad("parentHash"))?;
    Ok(BlockRef {
        number,
        hash,
        parent_hash,
    })
}

impl JsonRpcSource {
    /// A source on the node(s) at `url`: `http(s)://...`, several separated by `|`, each with
    /// optional settings after `#` (see the module docs), retrying with the default options.
    pub fn new(chain: Chain, url: &str) -> Result<Self, SourceError> {
        Self::with_options(chain, url, JsonRpcOptions::default())
    }

    /// [`new`](Self::new) with these retry options.
    pub fn with_options(
        chain: Chain,
        url: &str,
        options: JsonRpcOptions,
    ) -> Result<Self, SourceError> {
        let endpoints = url
            .split('|')
            .map(|u| Endpoint::parse(&chain, u))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            chain,
            endpoints,
            preferred: AtomicUsize::new(0),
            options,
        })
    }

    /// The URLs, redacted, in the order they are tried.
    pub fn urls(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.shown.clone()).collect()
    }

    /// Runs `op` on the preferred endpoint until it succeeds, fails for good, or runs out of
    /// retries; a retryable failure moves the preference to the next endpoint.
    async fn retrying<'a, T, F, Fut>(&'a self, what: &str, mut op: F) -> Result<T, SourceError>
    where
        F: FnMut(&'a Endpoint) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let attempts = AtomicUsize::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.options.min_backoff)
            .with_max_delay(self.options.max_backoff)
            .with_max_times(self.options.retries)
            .with_jitter();
        let result = (|| {
            let i = self.preferred.load(Ordering::Relaxed) % self.endpoints.len();
            attempts.fetch_add(1, Ordering::Relaxed);
            let attempt = op(&self.endpoints[i]);
            async move {
                attempt.await.map_err(|failure| Attempt {
                    endpoint: i,
                    failure,
                })
            }
        })
        .retry(backoff)
        .when(|a: &Attempt| matches!(a.failure, Failure::Retry { .. }))
        .adjust(|a: &Attempt, delay| match (&a.failure, delay) {
            (
                Failure::Retry {
                    after: Some(after), ..
                },
                Some(delay),
            ) => Some(delay.max((*after).min(self.options.max_retry_after))),
            (_, delay) => delay,
        })
        .notify(|a: &Attempt, delay| self.retry_notice(what, a, delay))
        .await;
        match result {
            Ok(v) => Ok(v),
            Err(Attempt {
                failure: Failure::Final(e),
                ..
            }) => Err(e),
            Err(Attempt {
                failure: Failure::Retry { message, .. },
                ..
            }) => Err(SourceError::Unavailable {
                adapter: ADAPTER,
                message: format!(
                    "{what} of {}: gave up after {} attempts; the last: {message}",
                    self.chain,
                    attempts.load(Ordering::Relaxed)
                ),
            }),
        }
    }

    /// Logs a retry and moves to the next endpoint.
    fn retry_notice(&self, what: &str, a: &Attempt, delay: Duration) {
        let Failure::Retry { message, .. } = &a.failure else {
            return;
        };
        let n = self.endpoints.len();
        let next = (a.endpoint + 1) % n;
        if n > 1
            && self
                .preferred
                .compare_exchange(a.endpoint, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                chain = %self.chain,
                from = %self.endpoints[a.endpoint].shown,
                to = %self.endpoints[next].shown,
                retry_in_ms = delay.as_millis() as u64,
                error = %message,
                "JSON-RPC {what} failed; failing over to the next URL"
            );
        } else {
            tracing::debug!(
                chain = %self.chain,
                retry_in_ms = delay.as_millis() as u64,
                error = %message,
                "JSON-RPC {what} failed; retrying"
            );
        }
    }
}

#[async_trait]
impl BlockSource for JsonRpcSource {
    fn chain(&self) -> &Chain {
        &self.chain
    }

    async fn head(&self) -> Result<BlockHead, SourceError> {
        self.retrying("head", |ep| async move {
            let method = "eth_getBlockByNumber";
            let b = ep
                .call(method, json!(["latest", false]))
                .await
                .map_err(|e| classify(ep, method, e))?;
            let r = block_ref_of(ep, &b, "the latest block")?;
            Ok(BlockHead {
                number: r.number,
                hash: r.hash,
            })
        })
        .await
    }

    /// The header alone: `eth_getBlockByNumber(n, false)`.
    async fn block_ref(&self, number: u64) -> Result<BlockRef, SourceError> {
        self.retrying(&format!("block_ref {number}"), |ep| async move {
            let method = "eth_getBlockByNumber";
            let b = ep
                .call(method, json!([hex(number), false]))
                .await
                .map_err(|e| classify(ep, method, e))?;
            if b.is_null() {
                return Err(Failure::Final(SourceError::BlockNotFound {
                    number,
                    source_name: ep.shown.clone(),
                }));
            }
            let r = block_ref_of(ep, &b, &format!("block {number}"))?;
            if r.number != number {
                return Err(Failure::retry(format!(
                    "{}: asked for block {number}, got block {}",
                    ep.shown, r.number
                )));
            }
            Ok(r)
        })
        .await
    }

    async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
        let read = range::Progress::default();
        let read = &read;
        self.retrying(
            &format!("blocks {}..={}", range.start(), range.end()),
            |ep| range::attempt(ep, range, read),
        )
        .await
    }

    async fn call(&self, request: &CallRequest) -> Result<Bytes, SourceError> {
        self.retrying("eth_call", |ep| call_pinned(ep, request))
            .await
    }

    /// JSON-RPC batches (see "Batched calls" in the module docs).
    async fn calls(&self, requests: &[CallRequest]) -> Vec<Result<Bytes, SourceError>> {
        // Identical requests are asked once: `slot[i]` is request i's place in `distinct`.
        let mut seen: HashMap<&CallRequest, usize> = HashMap::new();
        let mut distinct: Vec<&CallRequest> = Vec::new();
        let slot: Vec<usize> = requests
            .iter()
            .map(|r| {
                *seen.entry(r).or_insert_with(|| {
                    distinct.push(r);
                    distinct.len() - 1
                })
            })
            .collect();
        // Chunks of the preferred URL's batch size, each retried on its own: a chunk is one
        // request unless some of its calls fail (or another URL takes smaller batches).
        let ep = &self.endpoints[self.preferred.load(Ordering::Relaxed) % self.endpoints.len()];
        // Boxed futures, collected first: the async-trait future must be `Send` for every
        // lifetime, which a stream mapping a closure cannot show the compiler.
        let chunks: Vec<BoxFuture<'_, Vec<Result<Bytes, SourceError>>>> = distinct
            .chunks(ep.batch)
            .map(|chunk| Box::pin(calls::chunk(self, chunk)) as BoxFuture<'_, _>)
            .collect();
        let answers = buffered_in_order(chunks, ep.concurrency).await;
        let mut answers: Vec<Option<Result<Bytes, SourceError>>> =
            answers.into_iter().map(Some).collect();
        let mut uses = vec![0usize; distinct.len()];
        for &s in &slot {
            uses[s] += 1;
        }
        slot.iter()
            .map(|&s| {
                uses[s] -= 1;
                if uses[s] == 0 {
                    answers[s].take().expect("one answer per distinct call")
                } else {
                    match answers[s].as_ref().expect("one answer per distinct call") {
                        Ok(b) => Ok(b.clone()),
                        Err(e) => Err(copy_error(e)),
                    }
                }
            })
            .collect()
    }
}

/// `eth_call` of `request` at its block hash (EIP-1898), on one endpoint.
///
/// A node that refuses the `{"blockHash": ...}` parameter as malformed (ganache) is called by
/// number from then on, and the answer is kept only if that number's block still has the
/// requested hash after the call: a reorg in between is a retryable error, never state of
/// another branch.
async fn call_pinned(ep: &Endpoint, request: &CallRequest) -> Result<Bytes, Failure> {
    let method = "eth_call";
    let tx = json!({"to": request.to, "data": request.data});
    let answer = if ep.calls_by_hash() {
        match ep
            .call(method, json!([tx, {"blockHash": request.block_hash}]))
            .await
        {
            Err(e) if endpoint::block_object_refused(&e) => {
                ep.set_calls_by_hash(false);
                tracing::info!(
                    url = %ep.shown,
                    "node refuses EIP-1898 block parameters; eth_call by number, checking the block hash"
                );
                None
            }
            Err(e) => return Err(classify_call(ep, e)),
            Ok(answer) => {
                ep.set_calls_by_hash(true);
                Some(answer)
            }
        }
    } else {
        None
    };
    let answer = match answer {
        Some(answer) => answer,
        None => {
            let answer = ep
                .call(method, json!([tx, hex(request.block)]))
                .await
                .map_err(|e| classify_call(ep, e))?;
            let b = ep
                .call("eth_getBlockByNumber", json!([hex(request.block), false]))
                .await
                .map_err(|e| classify(ep, "eth_getBlockByNumber", e))?;
            let hash = b.get("hash").and_then(Value::as_str);
            if hash.and_then(|h| h.parse().ok()) != Some(request.block_hash) {
                return Err(Failure::retry(format!(
                    "{}: eth_call by number: block {} is now {} (not {}): the chain moved",
                    ep.shown,
                    request.block,
                    hash.unwrap_or("missing"),
                    request.block_hash
                )));
            }
            answer
        }
    };
    call_answer(ep, answer)
}

/// The bytes of an `eth_call` answer.
fn call_answer(ep: &Endpoint, answer: Value) -> Result<Bytes, Failure> {
    answer.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
        Failure::Final(SourceError::InvalidData(
            ep.scrub(&format!("{}: eth_call returned {answer}", ep.shown)),
        ))
    })
}

/// [`classify`] for `eth_call`, where an execution error (geth's code 3 "execution reverted",
/// ganache's "VM Exception ... revert", "invalid opcode", "out of gas") is the contract's
/// answer: [`SourceError::Reverted`].
fn classify_call(ep: &Endpoint, err: TransportError) -> Failure {
    if let RpcError::ErrorResp(payload) = &err {
        let m = payload.message.to_ascii_lowercase();
        if payload.code == 3
            || ["revert", "vm exception", "invalid opcode", "out of gas"]
                .iter()
                .any(|s| m.contains(s))
        {
            return Failure::Final(SourceError::Reverted(
                ep.scrub(&format!("{}: {}", ep.shown, payload.message)),
            ));
        }
    }
    classify(ep, "eth_call", err)
}
