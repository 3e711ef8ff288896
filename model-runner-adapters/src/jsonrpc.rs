//! `http(s)://`: a [`BlockSource`] on an Ethereum JSON-RPC node (feature `jsonrpc`).
//!
//! Blocks are fetched with batched `eth_getBlockByNumber(n, true)` calls, receipts with batched
//! `eth_getTransactionReceipt` calls, and joined exactly like the saved responses of the file
//! source (the same code reads both). `call` is `eth_call` at the block. Connection failures,
//! HTTP 429 and 5xx answers are [`SourceError::Unavailable`] (the worker's retry policy applies);
//! JSON-RPC error objects are reported with their code and message. The URL's credentials never
//! appear in errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy_primitives::Bytes;
use async_trait::async_trait;
use model_runner_core::ports::{BlockSource, SourceError};
use model_runner_core::{Block, BlockHead, BlockRange, CallRequest, Chain};
use serde_json::{Value, json};

use crate::file_source::Loader;
use model_runner_core::redact::redact_url;

const ADAPTER: &str = "jsonrpc";
/// Blocks per batched request.
const BLOCK_BATCH: u64 = 25;
/// Receipts per batched request.
const RECEIPT_BATCH: usize = 200;

/// A JSON-RPC node.
#[derive(Debug)]
pub struct JsonRpcSource {
    chain: Chain,
    url: String,
    shown: String,
    client: reqwest::Client,
    ids: AtomicU64,
}

impl JsonRpcSource {
    /// A source on the node at `url` (`http://` or `https://`).
    pub fn new(chain: Chain, url: &str) -> Result<Self, SourceError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            SourceError::InvalidData(format!("invalid JSON-RPC URL {}: {e}", redact_url(url)))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(SourceError::InvalidData(format!(
                "invalid JSON-RPC URL {}: expected http:// or https://",
                redact_url(url)
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| SourceError::Backend {
                adapter: ADAPTER,
                source: Box::new(e),
            })?;
        Ok(Self {
            chain,
            url: url.to_owned(),
            shown: redact_url(url),
            client,
            ids: AtomicU64::new(1),
        })
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> SourceError {
        SourceError::Unavailable {
            adapter: ADAPTER,
            message: format!("{}: {what}", self.shown),
        }
    }

    /// Sends `calls` as one batch and returns their results in order; its latency and outcome
    /// are recorded under the batch's first method.
    async fn batch(&self, calls: &[(&str, Value)]) -> Result<Vec<Value>, SourceError> {
        let Some((method, _)) = calls.first() else {
            return Ok(Vec::new());
        };
        let started = std::time::Instant::now();
        let result = self.send_batch(calls).await;
        model_runner_core::engine::instruments::source_method(
            self.chain.as_str(),
            method,
            started.elapsed(),
            result.is_ok(),
        );
        result
    }

    async fn send_batch(&self, calls: &[(&str, Value)]) -> Result<Vec<Value>, SourceError> {
        let first = self.ids.fetch_add(calls.len() as u64, Ordering::Relaxed);
        let body: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, (m, p))| json!({"jsonrpc": "2.0", "id": first + i as u64, "method": m, "params": p}))
            .collect();
        let resp = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            // reqwest errors can carry the URL: show only our redacted form.
            .map_err(|e| self.unavailable(e.without_url()))?;
        let status = resp.status();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(self.unavailable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            return Err(SourceError::Backend {
                adapter: ADAPTER,
                source: format!("{}: HTTP {status}", self.shown).into(),
            });
        }
        let answers: Vec<Value> = resp.json().await.map_err(|e| {
            SourceError::InvalidData(format!("{}: {}", self.shown, e.without_url()))
        })?;
        let mut out = vec![Value::Null; calls.len()];
        for a in answers {
            let id = a.get("id").and_then(Value::as_u64).unwrap_or(0);
            let Some(slot) = id.checked_sub(first).filter(|i| *i < calls.len() as u64) else {
                continue;
            };
            if let Some(err) = a.get("error") {
                return Err(SourceError::Backend {
                    adapter: ADAPTER,
                    source: format!(
                        "{} answered {} with error {}: {}",
                        self.shown,
                        calls[slot as usize].0,
                        err.get("code").unwrap_or(&Value::Null),
                        err.get("message").and_then(Value::as_str).unwrap_or("")
                    )
                    .into(),
                });
            }
            out[slot as usize] = a.get("result").cloned().unwrap_or(Value::Null);
        }
        Ok(out)
    }
}

fn hex(n: u64) -> String {
    format!("{n:#x}")
}

#[async_trait]
impl BlockSource for JsonRpcSource {
    fn chain(&self) -> &Chain {
        &self.chain
    }

    async fn head(&self) -> Result<BlockHead, SourceError> {
        let r = self
            .batch(&[("eth_getBlockByNumber", json!(["latest", false]))])
            .await?;
        let b = &r[0];
        let field = |k: &str| {
            b.get(k).and_then(Value::as_str).ok_or_else(|| {
                SourceError::InvalidData(format!("{}: latest block has no {k}", self.shown))
            })
        };
        let number = field("number")?;
        Ok(BlockHead {
            number: u64::from_str_radix(number.trim_start_matches("0x"), 16).map_err(|_| {
                SourceError::InvalidData(format!("{}: bad block number {number:?}", self.shown))
            })?,
            hash: field("hash")?
                .parse()
                .map_err(|_| SourceError::InvalidData(format!("{}: bad block hash", self.shown)))?,
        })
    }

    async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
        let mut out = Vec::with_capacity(range.len().min(10_000) as usize);
        for chunk in range.chunks(BLOCK_BATCH).expect("non-zero batch") {
            let calls: Vec<(&str, Value)> = (chunk.start()..=chunk.end())
                .map(|n| ("eth_getBlockByNumber", json!([hex(n), true])))
                .collect();
            let blocks = self.batch(&calls).await?;
            let mut loader = Loader::default();
            let mut hashes = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                if b.is_null() {
                    return Err(SourceError::BlockNotFound {
                        number: chunk.start() + i as u64,
                        source_name: self.shown.clone(),
                    });
                }
                for tx in b
                    .get("transactions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(h) = tx.get("hash").and_then(Value::as_str) {
                        hashes.push(h.to_owned());
                    }
                }
                loader
                    .value(b)
                    .map_err(|e| SourceError::InvalidData(format!("{}: {e}", self.shown)))?;
            }
            for group in hashes.chunks(RECEIPT_BATCH) {
                let calls: Vec<(&str, Value)> = group
                    .iter()
                    .map(|h| ("eth_getTransactionReceipt", json!([h])))
                    .collect();
                for r in self.batch(&calls).await? {
                    loader
                        .value(&r)
                        .map_err(|e| SourceError::InvalidData(format!("{}: {e}", self.shown)))?;
                }
            }
            out.extend(loader.finish().into_values());
        }
        Ok(out)
    }

    async fn call(&self, request: &CallRequest) -> Result<Bytes, SourceError> {
        let r = self
            .batch(&[(
                "eth_call",
                json!([{"to": request.to, "data": request.data}, hex(request.block)]),
            )])
            .await?;
        r[0].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
            SourceError::InvalidData(format!("{}: eth_call returned {}", self.shown, r[0]))
        })
    }
}
