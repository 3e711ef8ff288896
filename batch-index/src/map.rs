//! The map phase: one job reads its checkpoint range and writes the accounts
//! seen and the partial indexes, partitioned by reduce job, under `job_<i>/`.
//!
//! Flow: [`job_range`] (capped at `LAST_LEDGER`, then clamped to the latest ledger) → split by checkpoint →
//! `WORKER_COUNT` checkpoints in flight at once ([`collect`]) → partition each
//! account by [`Owner::of_account`] → write `accounts.txt`,
//! `accounts/part-<r>.bin`, `transactions/part-<r>.bin` → write `_SUCCESS`
//! last. A crash before `_SUCCESS` leaves files that no reducer accepts (it
//! requires the manifest and checks every file's SHA-256 against it); a rerun
//! overwrites them. A rerun of a finished job is a no-op unless `force`.
//!
//! The manifest records the range the job was asked for (`requested`) and the
//! range it read (`ledgers`). They differ when the range reaches past the
//! source's latest ledger: such a job is incomplete, reduce refuses it, and a
//! rerun redoes it once the source has grown.

use std::collections::BTreeMap;
use std::sync::Arc;

use fnv::FnvHashMap;
use futures::{StreamExt, TryStreamExt};
use roaring::RoaringBitmap;

use crate::account::{Account, Owner};
use crate::checkpoint::{job_range, split_by_checkpoint};
use crate::error::{Error, Result};
use crate::extract::Modules;
use crate::manifest::{FileEntry, LedgerRange, MAP_FORMAT, MapManifest, read_json, to_json};
use crate::partial::{AccountSets, encode_accounts, encode_transactions};
use crate::source::LedgerSource;
use crate::store::StoreRoot;
use crate::{ACCOUNT_INDEXES, partial};

/// Test hook (feature `crash-hook`, which only the crate's own tests turn on): when set to
/// `n`, the map process aborts right after writing its `n`-th output object (simulating a
/// crash mid-way). A build without the feature ignores the variable.
#[cfg(feature = "crash-hook")]
pub const CRASH_HOOK_ENV: &str = "BATCH_INDEX_CRASH_AFTER_OBJECTS";

/// Configuration of one map job.
#[derive(Debug, Clone)]
pub struct MapConfig {
    /// Job index.
    pub job: u32,
    /// First ledger of job 0 (`FIRST_CHECKPOINT`).
    pub first_ledger: u32,
    /// Ledgers per job (`BATCH_SIZE`), a multiple of the checkpoint span.
    pub batch_size: u32,
    /// Last ledger of the index (`LAST_LEDGER`): job ranges are capped at
    /// it, and a job starting past it is asked for nothing. `None`: every
    /// job is asked for its whole `BATCH_SIZE` ledgers.
    pub last_ledger: Option<u32>,
    /// Checkpoints processed concurrently (`WORKER_COUNT`).
    pub workers: u32,
    /// Reduce jobs to partition for (`REDUCE_JOB_COUNT`).
    pub reduce_jobs: u32,
    /// Outputs to build (`MODULES`).
    pub modules: Modules,
    /// Redo a job whose `_SUCCESS` exists.
    pub force: bool,
    /// Chain name recorded in the manifest.
    pub chain: String,
}

/// What a map job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOutcome {
    /// `_SUCCESS` already existed and `force` was off.
    AlreadyDone,
    /// `_SUCCESS` existed for an incomplete run of the job (its range
    /// reached past the source's latest ledger), and the source has not grown
    /// since: nothing to redo yet. Its manifest.
    StillIncomplete(Box<MapManifest>),
    /// The job ran; its manifest.
    Done(Box<MapManifest>),
}

/// Everything collected from a ledger range.
#[derive(Debug, Default)]
pub struct Collected {
    /// Per account, one checkpoint set per [`ACCOUNT_INDEXES`] entry.
    pub accounts: FnvHashMap<Account, [RoaringBitmap; 2]>,
    /// Transaction positions.
    pub transactions: BTreeMap<[u8; 32], u64>,
    /// Ledgers read.
    pub ledgers: u64,
}

impl Collected {
    /// Account sets keyed by text, empty sets dropped.
    pub fn into_account_sets(self) -> (AccountSets, BTreeMap<[u8; 32], u64>) {
        let mut out = AccountSets::new();
        for (a, sets) in self.accounts {
            let mut m = BTreeMap::new();
            for (name, set) in ACCOUNT_INDEXES.iter().zip(sets) {
                if !set.is_empty() {
                    m.insert(name.to_string(), set);
                }
            }
            if !m.is_empty() {
                out.insert(a.to_string(), m);
            }
        }
        (out, self.transactions)
    }
}

/// Reads `first..=last` checkpoint by checkpoint, `workers` at a time.
pub async fn collect(
    source: &Arc<dyn LedgerSource>,
    first: u32,
    last: u32,
    workers: u32,
    modules: Modules,
    mut on_checkpoint: impl FnMut(u32),
) -> Result<Collected> {
    let parts = split_by_checkpoint(source.span(), first, last);
    let mut acc = Collected::default();
    let mut stream = futures::stream::iter(parts)
        .map(|part| {
            let source = source.clone();
            async move { source.checkpoint_facts(part, modules).await }
        })
        .buffer_unordered(workers.max(1) as usize);
    while let Some(facts) = stream.try_next().await? {
        acc.ledgers += u64::from(facts.ledgers);
        for (account, mask) in facts.accounts {
            let sets = acc.accounts.entry(account).or_default();
            for (bit, set) in sets.iter_mut().enumerate() {
                if mask & (1 << bit) != 0 {
                    set.insert(facts.checkpoint);
                }
            }
        }
        for (h, p) in facts.transactions {
            let e = acc.transactions.entry(h).or_insert(p);
            *e = (*e).min(p);
        }
        on_checkpoint(facts.checkpoint);
    }
    Ok(acc)
}

/// Counts the objects a map job wrote and, with feature `crash-hook`, aborts the process at
/// the count `CRASH_HOOK_ENV` names.
struct CrashHook(Option<u64>, u64);

impl CrashHook {
    fn from_env() -> Self {
        #[cfg(feature = "crash-hook")]
        let at = std::env::var(CRASH_HOOK_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        #[cfg(not(feature = "crash-hook"))]
        let at = None;
        CrashHook(at, 0)
    }
    fn wrote_one(&mut self) {
        self.1 += 1;
        if self.0 == Some(self.1) {
            eprintln!("aborting after {} objects (test hook)", self.1);
            std::process::abort();
        }
    }
}

/// Runs map job `cfg.job`, writing under `target/job_<i>/`.
pub async fn run_map(
    source: Arc<dyn LedgerSource>,
    target: &StoreRoot,
    cfg: &MapConfig,
) -> Result<MapOutcome> {
    let span = source.span().ledgers();
    if cfg.batch_size == 0 || !cfg.batch_size.is_multiple_of(span) {
        return Err(Error::invalid(format!(
            "BATCH_SIZE={} must be a positive multiple of the checkpoint span ({span} ledgers)",
            cfg.batch_size
        )));
    }
    if cfg.reduce_jobs == 0 || cfg.workers == 0 {
        return Err(Error::invalid(
            "REDUCE_JOB_COUNT and WORKER_COUNT must be at least 1",
        ));
    }
    let job_root = target.child(&format!("job_{}", cfg.job));
    let requested = job_range(
        cfg.first_ledger,
        cfg.batch_size,
        cfg.job,
        cfg.last_ledger.unwrap_or(u32::MAX),
    )?
    .map(LedgerRange::from_pair);
    let mut latest = None;
    if let Some(done) = read_json::<MapManifest>(&job_root, "_SUCCESS").await? {
        if !cfg.force {
            if done.is_complete() && done.requested_range() == requested {
                tracing::info!(
                    job = cfg.job,
                    "map job already done (_SUCCESS exists); use --force to redo"
                );
                return Ok(MapOutcome::AlreadyDone);
            }
            // An incomplete job (its range reached past the source's latest
            // ledger) is redone once the source has grown.
            let now = source.latest().await?;
            let covered_to = done.covered_range().map(|c| c.last);
            let grew = covered_to.is_none_or(|c| now > c);
            if done.requested_range() == requested && !grew {
                tracing::warn!(
                    job = cfg.job,
                    latest = now,
                    "map job already done but incomplete: the source has not grown since"
                );
                return Ok(MapOutcome::StillIncomplete(Box::new(done)));
            }
            tracing::info!(
                job = cfg.job,
                latest = now,
                "redoing map job: it was incomplete (or asked for another range) and the source has grown"
            );
            latest = Some(now);
        }
        job_root.delete("_SUCCESS").await?;
    }
    let latest = match latest {
        Some(l) => l,
        None => source.latest().await?,
    };
    let range = match requested {
        Some(r) => job_range(r.first, r.last - r.first + 1, 0, latest)?,
        None => None,
    };
    if range.map(LedgerRange::from_pair) != requested {
        tracing::warn!(
            job = cfg.job,
            latest,
            ?requested,
            ?range,
            "map job range reaches past the source's latest ledger: the job is incomplete \
             until a rerun after the source grew"
        );
    }
    let collected = match range {
        Some((a, b)) => {
            tracing::info!(job = cfg.job, first = a, last = b, "map job range");
            collect(&source, a, b, cfg.workers, cfg.modules, |_| {}).await?
        }
        None => {
            tracing::info!(
                job = cfg.job,
                latest,
                "map job starts past the latest ledger: nothing to do"
            );
            Collected::default()
        }
    };
    let ledgers_read = collected.ledgers;
    let (accounts, transactions) = collected.into_account_sets();

    let r = cfg.reduce_jobs;
    let mut account_parts: Vec<AccountSets> = vec![AccountSets::new(); r as usize];
    let mut tx_parts: Vec<BTreeMap<[u8; 32], u64>> = vec![BTreeMap::new(); r as usize];
    let mut seen = String::new();
    let mut index_names: Vec<String> = Vec::new();
    let n_accounts = accounts.len() as u64;
    for (text, sets) in accounts {
        seen.push_str(&text);
        seen.push('\n');
        for n in sets.keys() {
            if !index_names.contains(n) {
                index_names.push(n.clone());
            }
        }
        let owner = Owner::of_account(&text, r, 1);
        account_parts[owner.job as usize].insert(text, sets);
    }
    index_names.sort();
    let n_tx = transactions.len() as u64;
    for (h, p) in transactions {
        tx_parts[Owner::of_transaction(&h, r, 1).job as usize].insert(h, p);
    }

    let mut hook = CrashHook::from_env();
    let mut files = Vec::new();
    let mut outputs: Vec<(String, Vec<u8>, u64)> =
        vec![("accounts.txt".into(), seen.into_bytes(), n_accounts)];
    for (i, part) in account_parts.iter().enumerate() {
        if cfg.modules.accounts {
            outputs.push((
                format!("accounts/part-{i}.bin"),
                encode_accounts(part),
                part.len() as u64,
            ));
        }
    }
    for (i, part) in tx_parts.iter().enumerate() {
        if cfg.modules.transactions {
            outputs.push((
                format!("transactions/part-{i}.bin"),
                encode_transactions(part),
                part.len() as u64,
            ));
        }
    }
    for (rel, bytes, records) in outputs {
        files.push(FileEntry::of(&rel, &bytes, records));
        job_root.put(&rel, bytes).await?;
        hook.wrote_one();
    }
    let manifest = MapManifest {
        format: MAP_FORMAT.into(),
        job: cfg.job,
        chain: cfg.chain.clone(),
        ledgers: range,
        requested,
        ledgers_read,
        reduce_job_count: r,
        index_names,
        accounts: n_accounts,
        transactions: n_tx,
        files,
    };
    job_root.put("_SUCCESS", to_json(&manifest)).await?;
    Ok(MapOutcome::Done(Box::new(manifest)))
}

/// Decodes an accounts partial, naming `described` on failure.
pub fn decode_accounts_named(described: &str, bytes: &[u8]) -> Result<Vec<partial::AccountRecord>> {
    partial::decode_accounts(bytes).map_err(|e| Error::corrupt(described, e))
}
