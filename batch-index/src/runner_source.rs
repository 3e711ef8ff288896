//! Ethereum blocks (with receipts and logs) read through any of the model
//! runner's block sources ([`model_runner_core::ports::BlockSource`]):
//!
//! | URL | source |
//! | --- | --- |
//! | `devnet://?head=N&seed=S&...` | the runner's deterministic devnet ([`model_runner_adapters::devnet`]) |
//! | `runner+file:///DIR` | the runner's file source: `eth_getBlockByNumber` / `eth_getTransactionReceipt` / `eth_getLogs` responses and ethereum-etl `blocks.json`, `transactions.json`, `receipts.json`, `logs.json` ([`model_runner_adapters::file_source`]) |
//! | `http(s)://NODE` | a JSON-RPC node (feature `jsonrpc`) |
//!
//! Each checkpoint's blocks are fetched in ranges of at most
//! [`FETCH_CHUNK`] blocks and turned into participants by
//! [`crate::ethereum::block_facts`] (the rules of the JSON loader). Dense
//! sources (devnet, node) must hold every block up to their head: a missing
//! one fails the job. The file source holds the blocks it was given; only
//! those are read (a gap is not an error there, as with the JSON loader).
//!
//! Block numbers are `u64`; they meet the index format's 32-bit ledger field
//! only through [`crate::ethereum::index_ledger`], which refuses larger ones.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use model_runner_core::BlockRange;
use model_runner_core::ports::{BlockSource, SourceError, check_whole_range};

use crate::checkpoint::{CheckpointPart, CheckpointSpan};
use crate::error::{Error, Result};
use crate::ethereum::{block_facts, index_ledger};
use crate::extract::{CheckpointFacts, Modules};
use crate::source::LedgerSource;
use crate::store::redact_url;

/// Most blocks asked of the source in one call.
pub const FETCH_CHUNK: u64 = 64;

/// URL schemes served by the runner's block sources.
pub const RUNNER_SCHEMES: [&str; 4] = ["devnet", "runner+file", "http", "https"];

/// Whether `url` names a runner block source (see the module docs).
pub fn is_runner_url(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| RUNNER_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// The runner's chain name for the indexed chain.
fn runner_chain() -> model_runner_core::Chain {
    model_runner_core::Chain::new("ethereum").expect("`ethereum` is a valid chain name")
}

/// A [`LedgerSource`] over a runner [`BlockSource`].
#[derive(Debug)]
pub struct RunnerBlockSource {
    source: Arc<dyn BlockSource>,
    span: CheckpointSpan,
    origin: String,
    /// The blocks a sparse source holds (file source); `None` for dense ones.
    known: Option<BTreeSet<u64>>,
}

impl RunnerBlockSource {
    /// A dense source (every block from 0 to its head), named `origin` in errors.
    pub fn dense(source: Arc<dyn BlockSource>, span: CheckpointSpan, origin: &str) -> Self {
        RunnerBlockSource {
            source,
            span,
            origin: redact_url(origin),
            known: None,
        }
    }

    /// A source holding exactly `blocks`.
    pub fn sparse(
        source: Arc<dyn BlockSource>,
        span: CheckpointSpan,
        origin: &str,
        blocks: BTreeSet<u64>,
    ) -> Self {
        RunnerBlockSource {
            source,
            span,
            origin: redact_url(origin),
            known: Some(blocks),
        }
    }

    /// Opens `devnet://...`, `runner+file://DIR` or `http(s)://NODE`.
    pub fn from_url(url: &str, span: CheckpointSpan) -> Result<Self> {
        let chain = runner_chain();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| Error::invalid(format!("`{}` is not a URL", redact_url(url))))?;
        let err = |e: SourceError| source_error(&redact_url(url), e);
        match scheme.to_ascii_lowercase().as_str() {
            "runner+file" => {
                let file_url = format!("file://{rest}");
                let fs =
                    model_runner_adapters::file_source::FileBlockSource::from_url(chain, &file_url)
                        .map_err(err)?;
                let blocks: BTreeSet<u64> = fs.numbers().collect();
                Ok(Self::sparse(Arc::new(fs), span, url, blocks))
            }
            "devnet" | "http" | "https" => {
                let s = model_runner_adapters::connect::source_from_url(chain, url).map_err(err)?;
                Ok(Self::dense(s, span, url))
            }
            other => Err(Error::invalid(format!(
                "`{other}://` is not a runner block source: expected devnet://, runner+file://DIR or http(s)://NODE"
            ))),
        }
    }

    /// The underlying runner source (for checks against direct reads).
    pub fn block_source(&self) -> &Arc<dyn BlockSource> {
        &self.source
    }

    /// Block ranges to fetch for `first..=last` (`first <= last`, as in a [`CheckpointPart`]),
    /// each at most [`FETCH_CHUNK`] long.
    fn fetch_ranges(&self, first: u64, last: u64) -> Vec<BlockRange> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        match &self.known {
            None => runs.push((first, last)),
            Some(known) => {
                for &n in known.range(first..=last) {
                    match runs.last_mut() {
                        Some((_, b)) if *b + 1 == n => *b = n,
                        _ => runs.push((n, n)),
                    }
                }
            }
        }
        runs.into_iter()
            .flat_map(|(a, b)| {
                let run = BlockRange::new(a, b).expect("runs are built with a <= b");
                run.chunks(FETCH_CHUNK).expect("FETCH_CHUNK is not 0")
            })
            .collect()
    }
}

fn source_error(origin: &str, e: SourceError) -> Error {
    match e {
        SourceError::BlockNotFound { number, .. } => {
            Error::NotFound(format!("block {number} from {origin}"))
        }
        other => Error::Source {
            source_name: origin.to_string(),
            reason: other.to_string(),
        },
    }
}

#[async_trait]
impl LedgerSource for RunnerBlockSource {
    fn span(&self) -> CheckpointSpan {
        self.span
    }

    async fn available(&self) -> Result<(u32, u32)> {
        match &self.known {
            Some(known) => match (known.first(), known.last()) {
                (Some(a), Some(b)) => Ok((index_ledger(*a)?, index_ledger(*b)?)),
                _ => Err(Error::NotFound(format!("{}: no blocks", self.origin))),
            },
            None => Ok((0, self.latest().await?)),
        }
    }

    async fn latest(&self) -> Result<u32> {
        if let Some(last) = self.known.as_ref().and_then(|k| k.last()) {
            return index_ledger(*last);
        }
        let head = self
            .source
            .head()
            .await
            .map_err(|e| source_error(&self.origin, e))?;
        index_ledger(head.number)
    }

    async fn checkpoint_facts(
        &self,
        part: CheckpointPart,
        modules: Modules,
    ) -> Result<CheckpointFacts> {
        let mut facts = CheckpointFacts::new(part.checkpoint());
        for range in self.fetch_ranges(u64::from(part.first()), u64::from(part.last())) {
            let blocks = self
                .source
                .blocks(range)
                .await
                .map_err(|e| source_error(&self.origin, e))?;
            check_whole_range(range, &blocks).map_err(|e| source_error(&self.origin, e))?;
            for block in &blocks {
                block_facts(block)?.add_to(&mut facts, modules);
            }
        }
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model_runner_core::{Block, BlockHead, Chain};

    /// Answers every range without its last block: a node that has not reached it.
    #[derive(Debug)]
    struct Short(Arc<dyn BlockSource>);

    #[async_trait]
    impl BlockSource for Short {
        fn chain(&self) -> &Chain {
            self.0.chain()
        }
        async fn head(&self) -> std::result::Result<BlockHead, SourceError> {
            self.0.head().await
        }
        async fn blocks(&self, range: BlockRange) -> std::result::Result<Vec<Block>, SourceError> {
            let mut blocks = self.0.blocks(range).await?;
            blocks.pop();
            Ok(blocks)
        }
    }

    /// A short answer fails the part, naming the source and the blocks that came back: the
    /// index never lacks a block silently.
    #[tokio::test]
    async fn a_short_answer_fails_the_part() {
        let span = CheckpointSpan::new(100).unwrap();
        let whole = RunnerBlockSource::from_url("devnet://?head=300", span).unwrap();
        let short = RunnerBlockSource::dense(
            Arc::new(Short(whole.block_source().clone())),
            span,
            "devnet://?head=300",
        );
        let part = CheckpointPart::new(span, 100, 199).unwrap();
        assert!(whole.checkpoint_facts(part, Modules::ALL).await.is_ok());
        let e = short
            .checkpoint_facts(part, Modules::ALL)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Source { source_name, reason }
                if source_name == "devnet://?head=300"
                    && reason.contains("blocks 100-163: the source answered 63 blocks")),
            "{e}"
        );
    }

    #[test]
    fn schemes_and_fetch_ranges() {
        assert!(is_runner_url("devnet://?head=10"));
        assert!(is_runner_url("runner+file:///tmp/x"));
        assert!(is_runner_url("HTTPS://node"));
        assert!(!is_runner_url("file:///tmp/x"));
        assert!(!is_runner_url("s3://b/p"));
        assert!(!is_runner_url("/plain/path"));

        let span = CheckpointSpan::new(100).unwrap();
        let src = RunnerBlockSource::from_url("devnet://?head=10", span).unwrap();
        let r = |a, b| BlockRange::new(a, b).unwrap();
        assert_eq!(
            src.fetch_ranges(0, 150),
            vec![r(0, 63), r(64, 127), r(128, 150)]
        );
        let sparse = RunnerBlockSource::sparse(
            src.block_source().clone(),
            span,
            "runner+file:///x",
            [3, 4, 5, 9, 200].into_iter().collect(),
        );
        assert_eq!(sparse.fetch_ranges(0, 99), vec![r(3, 5), r(9, 9)]);
        assert_eq!(sparse.fetch_ranges(10, 99), vec![]);

        let e = RunnerBlockSource::from_url("devnet://?bogus=1", span)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
