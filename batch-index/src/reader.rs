//! Queries over a finished index, safe across rebuilds into the same root.
//!
//! The root `layout.json` is a pointer naming the generation directory
//! (`gen-<id>/`) that holds the served shards (see [`crate::reduce`]); an
//! index written before generations existed is served as the generation
//! `legacy` (shards at the root). An [`IndexSnapshot`] is one opened
//! generation: its layout, coverage and footer cache, checked complete
//! (every reduce job wrote its `_SUCCESS`) when opened. A lookup hashes the
//! key to its shard, reads the shard's footer with one suffix range read
//! (then keeps it cached in the snapshot) and the one block that can hold
//! the key with a second range read: at most two range reads of one object
//! per lookup.
//!
//! [`IndexReader`] holds the current snapshot and re-reads the pointer when
//! the last read is older than its refresh interval ([`DEFAULT_REFRESH`]);
//! when the pointer names another generation it opens that one and swaps it
//! in whole. Footers are cached per snapshot, so a footer is never used with
//! another generation's files, and a caller that takes one snapshot
//! ([`IndexReader::snapshot`]) answers a whole request from one generation.
//!
//! Staleness bound: a lookup that starts more than the refresh interval
//! after the pointer was replaced answers from the new generation (the
//! pointer read that sets "last read" starts no earlier than that time).
//! A generation stays readable while a reader serves it: builds write new
//! generations beside it and never delete old ones;
//! [`crate::reduce::prune_generations`] deletes them only once the pointer
//! has named another one for longer than a grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use roaring::RoaringBitmap;

use crate::account::{Account, Owner};
use crate::error::{Error, Result};
use crate::manifest::{LedgerRange, ReduceManifest, read_json};
use crate::reduce::{
    LAYOUT_FORMAT, LAYOUT_PATH, LEGACY_GENERATION, Layout, POINTER_FORMAT, account_shard,
    decode_account_value, decode_index_names, reduce_success, transaction_shard,
};
use crate::store::StoreRoot;
use crate::table::{self, FOOTER_BUDGET, Footer};

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

/// How long [`IndexReader::open`] trusts the pointer it read before reading
/// it again: the staleness bound of a running reader after a rebuild.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

/// Reads a finished index and follows its rebuilds (see the module docs).
/// Clones share the current generation and its caches.
#[derive(Debug, Clone)]
pub struct IndexReader {
    root: StoreRoot,
    refresh: Duration,
    current: Arc<RwLock<Current>>,
    /// Held while the pointer is re-read, so one task reads it at a time.
    refreshing: Arc<tokio::sync::Mutex<()>>,
    range_reads: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug)]
struct Current {
    snapshot: Arc<IndexSnapshot>,
    /// When the pointer read that confirmed `snapshot` started.
    checked_at: tokio::time::Instant,
}

/// One generation of an index, opened: every answer of a snapshot comes
/// from the same set of shard files.
#[derive(Debug)]
pub struct IndexSnapshot {
    root: StoreRoot,
    generation: String,
    covered: Option<LedgerRange>,
    layout: Layout,
    footers: Mutex<HashMap<String, Arc<Footer>>>,
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
    /// Opens the index at `root`, re-reading its pointer at most every
    /// [`DEFAULT_REFRESH`].
    pub async fn open(root: StoreRoot) -> Result<Self> {
        Self::open_with_refresh(root, DEFAULT_REFRESH).await
    }

    /// Opens the index at `root`, re-reading its pointer when the last read
    /// is older than `refresh` (`Duration::ZERO`: before every lookup, one
    /// small extra read each).
    pub async fn open_with_refresh(root: StoreRoot, refresh: Duration) -> Result<Self> {
        let range_reads = Arc::default();
        let checked_at = tokio::time::Instant::now();
        let snapshot = Arc::new(IndexSnapshot::resolve(&root, &range_reads).await?);
        Ok(IndexReader {
            root,
            refresh,
            current: Arc::new(RwLock::new(Current {
                snapshot,
                checked_at,
            })),
            refreshing: Default::default(),
            range_reads,
        })
    }

    /// The generation to answer from: the current one, after re-reading the
    /// pointer if the last read is older than the refresh interval. Answer
    /// a whole request from one snapshot.
    pub async fn snapshot(&self) -> Result<Arc<IndexSnapshot>> {
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        let _one_reader = self.refreshing.lock().await;
        // Another task may have refreshed while this one waited.
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        self.refresh().await
    }

    /// Re-reads the pointer now and switches to the generation it names.
    pub async fn refresh(&self) -> Result<Arc<IndexSnapshot>> {
        let checked_at = tokio::time::Instant::now();
        let pointer = read_layout(&self.root).await?;
        let generation = generation_of(&self.root, &pointer)?;
        let current = self.current_snapshot();
        let snapshot = if current.generation == generation {
            current
        } else {
            let s = Arc::new(IndexSnapshot::open(&self.root, pointer, &self.range_reads).await?);
            tracing::info!(
                from = current.generation,
                to = s.generation,
                "index reader switched generation"
            );
            s
        };
        let mut c = self.current.write().expect("current generation");
        // Never go back to a snapshot older than one another task installed.
        if c.checked_at <= checked_at {
            *c = Current {
                snapshot: snapshot.clone(),
                checked_at,
            };
        }
        Ok(snapshot)
    }

    fn fresh(&self) -> Option<Arc<IndexSnapshot>> {
        let c = self.current.read().expect("current generation");
        (c.checked_at.elapsed() < self.refresh).then(|| c.snapshot.clone())
    }

    fn current_snapshot(&self) -> Arc<IndexSnapshot> {
        self.current
            .read()
            .expect("current generation")
            .snapshot
            .clone()
    }

    /// The generation last resolved (`gen-<id>`, or `legacy`).
    pub fn generation(&self) -> String {
        self.current_snapshot().generation.clone()
    }

    /// The ledgers the generation last resolved holds; see
    /// [`IndexSnapshot::covered`]. A request that also looks keys up should
    /// take both from one [`IndexReader::snapshot`].
    pub fn covered(&self) -> Option<LedgerRange> {
        self.current_snapshot().covered
    }

    /// The shard layout of the generation last resolved.
    pub fn layout(&self) -> Layout {
        self.current_snapshot().layout.clone()
    }

    /// Range reads of shard objects issued so far, over all generations (to
    /// check the two-read bound).
    pub fn range_reads(&self) -> u64 {
        self.range_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// All index sets of `account` (`G...`, `M...` or `0x...`).
    pub async fn account_sets(&self, account: &str) -> Result<Vec<(String, RoaringBitmap)>> {
        self.snapshot().await?.account_sets(account).await
    }

    /// Checkpoints in which `account` appears in `index` (empty if none).
    pub async fn checkpoints(&self, account: &str, index: &str) -> Result<RoaringBitmap> {
        self.snapshot().await?.checkpoints(account, index).await
    }

    /// First checkpoint `>= from` in which `account` appears in `index`.
    pub async fn next_active(&self, account: &str, index: &str, from: u32) -> Result<Option<u32>> {
        self.snapshot()
            .await?
            .next_active(account, index, from)
            .await
    }

    /// Position of a transaction by hash (hex, optional `0x`).
    pub async fn transaction(&self, hash: &str) -> Result<Option<TxPosition>> {
        self.snapshot().await?.transaction(hash).await
    }
}

/// Reads the root `layout.json`.
async fn read_layout(root: &StoreRoot) -> Result<Layout> {
    read_json(root, LAYOUT_PATH).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "no index at {}: layout.json is missing (has reduce run?)",
            root.describe("")
        ))
    })
}

/// The generation a root `layout.json` names.
fn generation_of(root: &StoreRoot, pointer: &Layout) -> Result<String> {
    match (pointer.format.as_str(), &pointer.generation) {
        (LAYOUT_FORMAT, None) => Ok(LEGACY_GENERATION.into()),
        (POINTER_FORMAT, Some(g))
            if g.starts_with("gen-")
                && g.len() > 4
                && g[4..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            Ok(g.clone())
        }
        _ => Err(Error::corrupt(
            root.describe(LAYOUT_PATH),
            format!(
                "unknown format `{}` or generation {:?}",
                pointer.format, pointer.generation
            ),
        )),
    }
}

/// A finished generation of an index, opened and checked: every reduce job
/// of it wrote its `_SUCCESS`, and they agree on the range covered.
#[derive(Debug, Clone)]
pub struct Generation {
    /// `gen-<id>`, or [`LEGACY_GENERATION`].
    pub name: String,
    /// The directory holding its shards (the index root for `legacy`).
    pub root: StoreRoot,
    /// Its shard layout ([`LAYOUT_FORMAT`]).
    pub layout: Layout,
    /// Reduce job `j`'s manifest at index `j`.
    pub manifests: Vec<ReduceManifest>,
    /// The ledgers it holds (see [`IndexSnapshot::covered`]).
    pub covered: Option<LedgerRange>,
}

impl Generation {
    /// Reads the pointer at `index_root` and opens the generation it names.
    pub async fn published(index_root: &StoreRoot) -> Result<Self> {
        let pointer = read_layout(index_root).await?;
        Self::open(index_root, pointer).await
    }

    /// Opens the generation `pointer` (the root `layout.json`) names and
    /// checks that every reduce job of it finished.
    async fn open(index_root: &StoreRoot, pointer: Layout) -> Result<Self> {
        let generation = generation_of(index_root, &pointer)?;
        let (root, layout) = if generation == LEGACY_GENERATION {
            (index_root.clone(), pointer)
        } else {
            let root = index_root.child(&generation);
            let layout: Layout = read_json(&root, LAYOUT_PATH).await?.ok_or_else(|| {
                Error::NotFound(format!(
                    "index generation {} named by {} has no layout.json",
                    root.describe(""),
                    index_root.describe(LAYOUT_PATH)
                ))
            })?;
            if (layout.reduce_job_count, layout.worker_count)
                != (pointer.reduce_job_count, pointer.worker_count)
            {
                return Err(Error::corrupt(
                    root.describe(LAYOUT_PATH),
                    "shard counts differ from the root layout.json's",
                ));
            }
            (root, layout)
        };
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
        let read: Vec<(u32, Option<ReduceManifest>)> =
            futures::stream::iter(0..layout.reduce_job_count)
                .map(|j| {
                    let root = root.clone();
                    async move { Ok::<_, Error>((j, read_json(&root, &reduce_success(j)).await?)) }
                })
                .buffered(16)
                .try_collect()
                .await?;
        let missing: Vec<u32> = read
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
        let manifests: Vec<ReduceManifest> = read.into_iter().filter_map(|(_, m)| m).collect();
        // Each reduce job checked the map jobs' coverage on its own; they
        // must agree on the range the index holds.
        let covered = manifests[0].covered;
        for (j, m) in manifests.iter().enumerate().skip(1) {
            if m.covered != covered {
                return Err(Error::corrupt(
                    root.describe(&reduce_success(j as u32)),
                    format!(
                        "covers {}, but reduce job 0 covers {}: the reduce jobs merged different map outputs",
                        m.covered.map_or("nothing".into(), |r| r.to_string()),
                        covered.map_or("nothing".into(), |r| r.to_string()),
                    ),
                ));
            }
        }
        Ok(Generation {
            name: generation,
            root,
            layout,
            manifests,
            covered,
        })
    }
}

impl IndexSnapshot {
    /// Reads the pointer at `root` and opens the generation it names.
    async fn resolve(
        root: &StoreRoot,
        range_reads: &Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<Self> {
        Ok(Self::of(Generation::published(root).await?, range_reads))
    }

    /// Opens the generation `pointer` (the root `layout.json`) names.
    async fn open(
        index_root: &StoreRoot,
        pointer: Layout,
        range_reads: &Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<Self> {
        Ok(Self::of(
            Generation::open(index_root, pointer).await?,
            range_reads,
        ))
    }

    fn of(g: Generation, range_reads: &Arc<std::sync::atomic::AtomicU64>) -> Self {
        IndexSnapshot {
            root: g.root,
            generation: g.name,
            covered: g.covered,
            layout: g.layout,
            footers: Default::default(),
            range_reads: range_reads.clone(),
        }
    }

    /// The generation (`gen-<id>`, or `legacy`).
    pub fn generation(&self) -> &str {
        &self.generation
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
        let names = decode_index_names(&footer.meta).map_err(bad)?;
        decode_account_value(&names, &value).map_err(bad)
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
