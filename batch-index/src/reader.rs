//! Queries over a finished index.
//!
//! [`IndexReader::open`] reads `layout.json` once and checks that every
//! reduce job wrote its `_SUCCESS` manifest. A lookup hashes the key to
//! its shard, reads the shard's footer with one suffix range read (then keeps
//! it cached) and the one block that can hold the key with a second range
//! read: at most two range reads of one object per lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use roaring::RoaringBitmap;

use crate::account::{Account, Owner};
use crate::bitmap_encoding;
use crate::error::{Error, Result};
use crate::manifest::{LedgerRange, ReduceManifest, read_json};
use crate::reduce::{LAYOUT_FORMAT, Layout, account_shard, reduce_success, transaction_shard};
use crate::store::StoreRoot;
use crate::table::{self, FOOTER_BUDGET, Footer};
use crate::varint::Cursor;

/// Position of a transaction: a TOID `ledger << 32 | tx_index << 12 | op_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TxPosition(pub u64);

impl TxPosition {
    /// Ledger (Stellar) or block (Ethereum).
    pub fn ledger(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// Transaction index (Stellar: 1-based apply order; Ethereum: `transactionIndex`).
    pub fn tx_index(self) -> u32 {
        ((self.0 >> 12) & 0xF_FFFF) as u32
    }
    /// Operation index (0 for the transaction itself).
    pub fn op_index(self) -> u32 {
        (self.0 & 0xFFF) as u32
    }
}

/// Reads a finished index.
#[derive(Debug, Clone)]
pub struct IndexReader {
    root: StoreRoot,
    covered: Option<LedgerRange>,
    layout: Layout,
    footers: Arc<Mutex<HashMap<String, Arc<Footer>>>>,
    range_reads: Arc<std::sync::atomic::AtomicU64>,
}

/// Parses a 32-byte transaction hash in hex (optional `0x`).
pub fn parse_tx_hash(s: &str) -> Result<[u8; 32]> {
    let h = s.trim().trim_start_matches("0x");
    let bytes = hex::decode(h)
        .map_err(|e| Error::invalid(format!("transaction hash `{s}` is not hex: {e}")))?;
    bytes.try_into().map_err(|_| {
        Error::invalid(format!(
            "transaction hash `{s}` must be 32 bytes (64 hex digits)"
        ))
    })
}

impl IndexReader {
    /// Opens the index at `root` (reads `layout.json`).
    pub async fn open(root: StoreRoot) -> Result<Self> {
        let layout: Layout = read_json(&root, "layout.json").await?.ok_or_else(|| {
            Error::NotFound(format!(
                "no index at {}: layout.json is missing (has reduce run?)",
                root.describe("")
            ))
        })?;
        if layout.format != LAYOUT_FORMAT
            || layout.reduce_job_count == 0
            || layout.worker_count == 0
        {
            return Err(Error::corrupt(
                root.describe("layout.json"),
                "unknown format or zero shards",
            ));
        }
        // Every reduce job must have finished: a crashed reducer may have
        // left some shards rewritten and others not.
        let manifests: Vec<(u32, Option<ReduceManifest>)> =
            futures::stream::iter(0..layout.reduce_job_count)
                .map(|j| {
                    let root = root.clone();
                    async move { Ok::<_, Error>((j, read_json(&root, &reduce_success(j)).await?)) }
                })
                .buffered(16)
                .try_collect()
                .await?;
        let missing: Vec<u32> = manifests
            .iter()
            .filter(|(_, m)| m.is_none())
            .map(|(j, _)| *j)
            .collect();
        if !missing.is_empty() {
            return Err(Error::NotFound(format!(
                "index at {} is incomplete: reduce job(s) {missing:?} have no {}",
                root.describe(""),
                reduce_success(missing[0])
            )));
        }
        // Each reduce job checked the map jobs' coverage on its own; they
        // must agree on the range the index holds.
        let mut covered = None;
        for (j, m) in manifests.iter().filter_map(|(j, m)| Some((j, m.as_ref()?))) {
            if *j == 0 {
                covered = m.covered;
            } else if m.covered != covered {
                return Err(Error::corrupt(
                    root.describe(&reduce_success(*j)),
                    format!(
                        "covers {}, but reduce job 0 covers {}: the reduce jobs merged different map outputs",
                        m.covered.map_or("nothing".into(), |r| r.to_string()),
                        covered.map_or("nothing".into(), |r| r.to_string()),
                    ),
                ));
            }
        }
        Ok(IndexReader {
            root,
            covered,
            layout,
            footers: Default::default(),
            range_reads: Default::default(),
        })
    }

    /// The ledgers (Ethereum: blocks) the index holds: every ledger of this
    /// range was read, so an account absent from a checkpoint inside it took
    /// no part there, while a checkpoint outside it is simply not indexed
    /// yet. `None` for an index with no ledgers, or one whose reduce
    /// manifests predate the field (its coverage is unknown).
    pub fn covered(&self) -> Option<LedgerRange> {
        self.covered
    }

    /// The shard layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Range reads issued so far (to check the two-read bound).
    pub fn range_reads(&self) -> u64 {
        self.range_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn footer(&self, rel: &str) -> Result<Arc<Footer>> {
        if let Some(f) = self.footers.lock().expect("footer cache").get(rel) {
            return Ok(f.clone());
        }
        self.range_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tail = self.root.get_suffix(rel, FOOTER_BUDGET as u64).await?;
        let f =
            Arc::new(Footer::parse(&tail).map_err(|e| Error::corrupt(self.root.describe(rel), e))?);
        self.footers
            .lock()
            .expect("footer cache")
            .insert(rel.to_string(), f.clone());
        Ok(f)
    }

    async fn lookup(&self, rel: &str, key: &[u8]) -> Result<Option<(Arc<Footer>, Vec<u8>)>> {
        let footer = self.footer(rel).await?;
        let Some(range) = footer.block_for(key) else {
            return Ok(None);
        };
        self.range_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let block = self.root.get_range(rel, range).await?;
        let value = table::find_in_block(&block, key)
            .map_err(|e| Error::corrupt(self.root.describe(rel), e))?;
        Ok(value.map(|v| (footer.clone(), v.to_vec())))
    }

    /// All index sets of `account` (`G...`, `M...` or `0x...`).
    pub async fn account_sets(&self, account: &str) -> Result<Vec<(String, RoaringBitmap)>> {
        let text = account.parse::<Account>()?.to_string();
        let owner = Owner::of_account(
            &text,
            self.layout.reduce_job_count,
            self.layout.worker_count,
        );
        let rel = account_shard(owner);
        let Some((footer, value)) = self.lookup(&rel, text.as_bytes()).await? else {
            return Ok(Vec::new());
        };
        let bad =
            |e: String| Error::corrupt(self.root.describe(&rel), format!("account `{text}`: {e}"));
        let mut mc = Cursor::new(&footer.meta);
        let n_names = mc
            .len(footer.meta.len())
            .ok_or_else(|| bad("bad name table".into()))?;
        let mut names = Vec::with_capacity(n_names);
        for _ in 0..n_names {
            let n = mc.prefixed().ok_or_else(|| bad("bad name table".into()))?;
            names.push(String::from_utf8_lossy(n).into_owned());
        }
        let mut c = Cursor::new(&value);
        let k = c
            .len(names.len())
            .ok_or_else(|| bad("bad entry count".into()))?;
        let mut out = Vec::with_capacity(k);
        for _ in 0..k {
            let id = c
                .len(names.len().saturating_sub(1))
                .ok_or_else(|| bad("bad index id".into()))?;
            let set = bitmap_encoding::decode(&mut c).map_err(bad)?;
            out.push((names[id].clone(), set));
        }
        Ok(out)
    }

    /// Checkpoints in which `account` appears in `index` (empty if none).
    pub async fn checkpoints(&self, account: &str, index: &str) -> Result<RoaringBitmap> {
        Ok(self
            .account_sets(account)
            .await?
            .into_iter()
            .find(|(n, _)| n == index)
            .map(|(_, s)| s)
            .unwrap_or_default())
    }

    /// First checkpoint `>= from` in which `account` appears in `index`.
    pub async fn next_active(&self, account: &str, index: &str, from: u32) -> Result<Option<u32>> {
        Ok(self.checkpoints(account, index).await?.range(from..).next())
    }

    /// Position of a transaction by hash (hex, optional `0x`).
    pub async fn transaction(&self, hash: &str) -> Result<Option<TxPosition>> {
        let h = parse_tx_hash(hash)?;
        let owner =
            Owner::of_transaction(&h, self.layout.reduce_job_count, self.layout.worker_count);
        let rel = transaction_shard(owner);
        match self.lookup(&rel, &h).await? {
            None => Ok(None),
            Some((_, v)) => {
                let b: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                    Error::corrupt(self.root.describe(&rel), "transaction value is not 8 bytes")
                })?;
                Ok(Some(TxPosition(u64::from_be_bytes(b))))
            }
        }
    }
}
