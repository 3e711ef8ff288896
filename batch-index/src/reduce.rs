//! The reduce phase: job `j` merges its partition (`part-<j>.bin`) of every
//! map job and writes one final shard per worker.
//!
//! Worker `w` of job `j` owns the accounts with [`Owner::of_account`] =
//! `(j, w)` (transactions: [`Owner::of_transaction`]). The job reads each map
//! job's manifest, verifies each partition's size and SHA-256 against it,
//! routes records to workers, merges all index names found, and writes
//! `accounts/<j>-<w>.shard` and `transactions/<j>-<w>.shard` ([`crate::table`]
//! format), `layout.json`, and finally `_SUCCESS/reduce-<j>.json`.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use crate::account::Owner;
use crate::bitmap_encoding;
use crate::error::{Error, Result};
use crate::manifest::{
    FileEntry, MAP_FORMAT, MapManifest, REDUCE_FORMAT, ReduceManifest, read_json, to_json,
};
use crate::partial::{self, AccountSets};
use crate::store::StoreRoot;
use crate::table;
use crate::varint;

/// Format tag of `layout.json`.
pub const LAYOUT_FORMAT: &str = "batch-index/1";

/// `layout.json`: how the final index is sharded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// [`LAYOUT_FORMAT`].
    pub format: String,
    /// Reduce jobs.
    pub reduce_job_count: u32,
    /// Workers per reduce job.
    pub worker_count: u32,
}

/// Configuration of one reduce job.
#[derive(Debug, Clone)]
pub struct ReduceConfig {
    /// Job index.
    pub job: u32,
    /// Map jobs to merge (`MAP_JOB_COUNT`).
    pub map_jobs: u32,
    /// Reduce jobs (`REDUCE_JOB_COUNT`).
    pub reduce_jobs: u32,
    /// Workers (shards) per reduce job (`WORKER_COUNT`).
    pub workers: u32,
    /// Redo a job whose `_SUCCESS` exists.
    pub force: bool,
}

/// What one worker's shard holds.
#[derive(Debug, Default, Clone)]
pub struct WorkerData {
    /// Accounts → index name → checkpoints.
    pub accounts: AccountSets,
    /// Transaction hash → position.
    pub transactions: BTreeMap<[u8; 32], u64>,
}

/// What a reduce job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReduceOutcome {
    /// `_SUCCESS` already existed and `force` was off.
    AlreadyDone,
    /// The job ran.
    Done(Box<ReduceManifest>),
}

/// Path of reduce job `job`'s manifest.
pub fn reduce_success(job: u32) -> String {
    format!("_SUCCESS/reduce-{job}.json")
}

/// Path of an account shard.
pub fn account_shard(owner: Owner) -> String {
    format!("accounts/{}-{}.shard", owner.job, owner.worker)
}

/// Path of a transaction shard.
pub fn transaction_shard(owner: Owner) -> String {
    format!("transactions/{}-{}.shard", owner.job, owner.worker)
}

/// Encodes an account shard: meta = index-name table, value = entries.
pub fn encode_account_shard(accounts: &AccountSets) -> Vec<u8> {
    let mut names: Vec<&String> = accounts.values().flat_map(|m| m.keys()).collect();
    names.sort();
    names.dedup();
    let mut meta = Vec::new();
    varint::put(&mut meta, names.len() as u64);
    for n in &names {
        varint::put(&mut meta, n.len() as u64);
        meta.extend_from_slice(n.as_bytes());
    }
    let records: Vec<(Vec<u8>, Vec<u8>)> = accounts
        .iter()
        .map(|(a, sets)| {
            let mut v = Vec::new();
            varint::put(&mut v, sets.len() as u64);
            for (name, set) in sets {
                let id = names.binary_search(&name).expect("collected above");
                varint::put(&mut v, id as u64);
                bitmap_encoding::encode(set, &mut v);
            }
            (a.as_bytes().to_vec(), v)
        })
        .collect();
    table::write(&meta, &records)
}

/// Encodes a transaction shard: key = hash, value = position (u64 BE).
pub fn encode_transaction_shard(txs: &BTreeMap<[u8; 32], u64>) -> Vec<u8> {
    let records: Vec<(Vec<u8>, Vec<u8>)> = txs
        .iter()
        .map(|(h, p)| (h.to_vec(), p.to_be_bytes().to_vec()))
        .collect();
    table::write(b"", &records)
}

/// Writes the shards of `job` (one per worker) and `layout.json`; returns
/// the file entries.
pub async fn write_shards(
    target: &StoreRoot,
    job: u32,
    reduce_jobs: u32,
    workers: Vec<WorkerData>,
) -> Result<Vec<FileEntry>> {
    let worker_count = workers.len() as u32;
    let encoded = futures::future::try_join_all(workers.into_iter().map(|data| {
        tokio::task::spawn_blocking(move || {
            (
                encode_account_shard(&data.accounts),
                data.accounts.len() as u64,
                encode_transaction_shard(&data.transactions),
                data.transactions.len() as u64,
            )
        })
    }))
    .await
    .map_err(|e| Error::JobFailed(format!("reduce job {job}: encode task failed: {e}")))?;
    let mut files = Vec::new();
    for (w, (acc, n_acc, tx, n_tx)) in encoded.into_iter().enumerate() {
        let owner = Owner {
            job,
            worker: w as u32,
        };
        let rel = account_shard(owner);
        files.push(FileEntry::of(&rel, &acc, n_acc));
        target.put(&rel, acc).await?;
        let rel = transaction_shard(owner);
        files.push(FileEntry::of(&rel, &tx, n_tx));
        target.put(&rel, tx).await?;
    }
    let layout = Layout {
        format: LAYOUT_FORMAT.into(),
        reduce_job_count: reduce_jobs,
        worker_count,
    };
    target.put("layout.json", to_json(&layout)).await?;
    Ok(files)
}

/// Merges `sets` into `into`.
pub fn merge_sets(into: &mut BTreeMap<String, RoaringBitmap>, sets: Vec<(String, RoaringBitmap)>) {
    for (name, set) in sets {
        *into.entry(name).or_default() |= set;
    }
}

/// Runs reduce job `cfg.job`: reads `source_root/job_<m>/`, writes `target`.
pub async fn run_reduce(
    source_root: &StoreRoot,
    target: &StoreRoot,
    cfg: &ReduceConfig,
) -> Result<ReduceOutcome> {
    if cfg.map_jobs == 0 || cfg.reduce_jobs == 0 || cfg.workers == 0 {
        return Err(Error::invalid(
            "MAP_JOB_COUNT, REDUCE_JOB_COUNT and WORKER_COUNT must be at least 1",
        ));
    }
    if cfg.job >= cfg.reduce_jobs {
        return Err(Error::invalid(format!(
            "reduce job index {} is not below REDUCE_JOB_COUNT={}",
            cfg.job, cfg.reduce_jobs
        )));
    }
    let success = reduce_success(cfg.job);
    if target.get_opt(&success).await?.is_some() {
        if !cfg.force {
            tracing::info!(
                job = cfg.job,
                "reduce job already done; use --force to redo"
            );
            return Ok(ReduceOutcome::AlreadyDone);
        }
        target.delete(&success).await?;
    }
    let job = cfg.job;
    let parts: Vec<Partition> = futures::stream::iter(0..cfg.map_jobs)
        .map(|m| read_map_partition(source_root, m, job, cfg.reduce_jobs))
        .buffered(8)
        .try_collect()
        .await?;
    // Route records to their worker, then merge and encode each worker's
    // shard on its own blocking thread.
    let mut routed: Vec<Routed> = (0..cfg.workers).map(|_| Routed::default()).collect();
    for (m, (accounts, txs)) in parts.into_iter().enumerate() {
        for (text, sets) in accounts {
            let owner = Owner::of_account(&text, cfg.reduce_jobs, cfg.workers);
            if owner.job != job {
                return Err(Error::corrupt(
                    source_root.describe(&format!("job_{m}/accounts/part-{job}.bin")),
                    format!(
                        "account `{text}` belongs to reduce job {}, not {job}",
                        owner.job
                    ),
                ));
            }
            routed[owner.worker as usize].0.push((text, sets));
        }
        for (h, p) in txs {
            let owner = Owner::of_transaction(&h, cfg.reduce_jobs, cfg.workers);
            routed[owner.worker as usize].1.push((h, p));
        }
    }
    let merged = futures::future::try_join_all(
        routed
            .into_iter()
            .map(|r| tokio::task::spawn_blocking(move || merge_worker(r))),
    )
    .await
    .map_err(|e| Error::JobFailed(format!("reduce job {job}: merge task failed: {e}")))?;
    let files = write_shards(target, job, cfg.reduce_jobs, merged).await?;
    let manifest = ReduceManifest {
        format: REDUCE_FORMAT.into(),
        job,
        map_job_count: cfg.map_jobs,
        worker_count: cfg.workers,
        files,
    };
    target.put(&success, to_json(&manifest)).await?;
    Ok(ReduceOutcome::Done(Box::new(manifest)))
}

/// Records routed to one worker, before merging.
type Routed = (Vec<partial::AccountRecord>, Vec<([u8; 32], u64)>);

/// Merges one worker's records: sort by account (stable, so sets of the
/// same account are adjacent), fold, and bulk-build the sorted map.
fn merge_worker((mut accounts, txs): Routed) -> WorkerData {
    accounts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut folded: Vec<(String, BTreeMap<String, RoaringBitmap>)> =
        Vec::with_capacity(accounts.len());
    for (text, sets) in accounts {
        match folded.last_mut() {
            Some((last, into)) if *last == text => merge_sets(into, sets),
            _ => {
                let mut into = BTreeMap::new();
                merge_sets(&mut into, sets);
                folded.push((text, into));
            }
        }
    }
    let mut transactions = BTreeMap::new();
    for (h, p) in txs {
        let e = transactions.entry(h).or_insert(p);
        *e = (*e).min(p);
    }
    WorkerData {
        accounts: folded.into_iter().collect(),
        transactions,
    }
}

type Partition = (
    Vec<(String, Vec<(String, RoaringBitmap)>)>,
    Vec<([u8; 32], u64)>,
);

async fn read_map_partition(
    source_root: &StoreRoot,
    m: u32,
    job: u32,
    reduce_jobs: u32,
) -> Result<Partition> {
    let job_root = source_root.child(&format!("job_{m}"));
    let manifest: MapManifest = read_json(&job_root, "_SUCCESS").await?.ok_or_else(|| {
        Error::NotFound(format!(
            "map job {m} has not finished: {} is missing",
            job_root.describe("_SUCCESS")
        ))
    })?;
    if manifest.format != MAP_FORMAT {
        return Err(Error::corrupt(
            job_root.describe("_SUCCESS"),
            format!("unknown format `{}`", manifest.format),
        ));
    }
    if manifest.reduce_job_count != reduce_jobs {
        return Err(Error::invalid(format!(
            "map job {m} was partitioned for REDUCE_JOB_COUNT={} but this reduce runs with {reduce_jobs}",
            manifest.reduce_job_count
        )));
    }
    let mut accounts = Vec::new();
    let mut txs = Vec::new();
    for (kind, rel) in [
        ("accounts", format!("accounts/part-{job}.bin")),
        ("transactions", format!("transactions/part-{job}.bin")),
    ] {
        let Some(entry) = manifest.files.iter().find(|f| f.path == rel) else {
            continue; // module not built by this map job
        };
        let described = job_root.describe(&rel);
        let bytes = job_root.get(&rel).await?;
        entry.verify(&described, &bytes)?;
        let bytes = bytes.to_vec();
        let described2 = described.clone();
        if kind == "accounts" {
            accounts = tokio::task::spawn_blocking(move || partial::decode_accounts(&bytes))
                .await
                .map_err(|e| Error::corrupt(&described, e))?
                .map_err(|e| Error::corrupt(&described2, e))?;
        } else {
            txs =
                partial::decode_transactions(&bytes).map_err(|e| Error::corrupt(&described, e))?;
        }
    }
    Ok((accounts, txs))
}
