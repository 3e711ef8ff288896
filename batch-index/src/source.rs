//! The port every chain source implements: which ledgers exist, and the
//! facts of one checkpoint's ledgers. Sources are chosen by `--chain` and the
//! source URL ([`open_source_url`]): object-store URLs (`file://`, paths,
//! `s3://`, `memory://`) are read through [`crate::store::StoreRoot`];
//! `devnet://`, `runner+file://` and `http(s)://` go through the model
//! runner's block sources ([`crate::runner_source`], Ethereum only).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use crate::checkpoint::{CheckpointPart, CheckpointSpan};
use crate::error::{Error, Result};
use crate::extract::{CheckpointFacts, Modules};
use crate::store::StoreRoot;

/// A source of ledgers (Stellar) or blocks (Ethereum).
#[async_trait]
pub trait LedgerSource: Debug + Send + Sync + 'static {
    /// Ledgers per checkpoint for this chain.
    fn span(&self) -> CheckpointSpan;

    /// First and last available ledger. MUST fail (not return a guess) when
    /// the source cannot be listed.
    async fn available(&self) -> Result<(u32, u32)>;

    /// Last available ledger; sources override it when it is cheaper than
    /// [`LedgerSource::available`] (a meta-archive reads `latest` instead of
    /// listing every ledger).
    async fn latest(&self) -> Result<u32> {
        Ok(self.available().await?.1)
    }

    /// Facts of the ledgers of `part` (all in its checkpoint, which the facts
    /// carry). MUST fail when a ledger of the part that the layout promises
    /// is missing or cannot be decoded.
    async fn checkpoint_facts(
        &self,
        part: CheckpointPart,
        modules: Modules,
    ) -> Result<CheckpointFacts>;
}

/// Which kind of chain a source holds (not `model_runner_core::Chain`, a chain's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// Stellar ledgers (meta-archive or data-lake layout).
    Stellar,
    /// Ethereum blocks and receipts (JSON-RPC responses or ethereum-etl rows).
    Ethereum,
}

impl std::str::FromStr for ChainKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "stellar" => Ok(ChainKind::Stellar),
            "ethereum" | "eth" => Ok(ChainKind::Ethereum),
            other => Err(Error::invalid(format!(
                "unknown chain `{other}`: expected `stellar` or `ethereum`"
            ))),
        }
    }
}

impl std::fmt::Display for ChainKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChainKind::Stellar => "stellar",
            ChainKind::Ethereum => "ethereum",
        })
    }
}

/// How to open a source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The chain.
    pub chain: ChainKind,
    /// Stellar network passphrase (checked against transaction hashes).
    pub network_passphrase: String,
    /// Checkpoint span for Ethereum (Stellar is always 64).
    pub ethereum_span: u32,
}

/// Opens the source at `root`.
pub async fn open_source(root: StoreRoot, cfg: &SourceConfig) -> Result<Arc<dyn LedgerSource>> {
    Ok(match cfg.chain {
        ChainKind::Stellar => {
            Arc::new(crate::stellar::StellarSource::open(root, &cfg.network_passphrase).await?)
        }
        ChainKind::Ethereum => Arc::new(
            crate::ethereum::EthereumSource::open(root, CheckpointSpan::new(cfg.ethereum_span)?)
                .await?,
        ),
    })
}

/// Opens the source named by `url`: a runner block source for `devnet://`,
/// `runner+file://DIR` and `http(s)://NODE` (Ethereum only), otherwise the
/// object-store source at `url` ([`open_source`]).
pub async fn open_source_url(url: &str, cfg: &SourceConfig) -> Result<Arc<dyn LedgerSource>> {
    if crate::runner_source::is_runner_url(url) {
        if cfg.chain != ChainKind::Ethereum {
            return Err(Error::invalid(format!(
                "`{}` is a runner block source, which serves Ethereum blocks: pass --chain ethereum (CHAIN=ethereum)",
                crate::store::redact_url(url)
            )));
        }
        let span = CheckpointSpan::new(cfg.ethereum_span)?;
        return Ok(Arc::new(crate::runner_source::RunnerBlockSource::from_url(
            url, span,
        )?));
    }
    open_source(StoreRoot::open(url)?, cfg).await
}
