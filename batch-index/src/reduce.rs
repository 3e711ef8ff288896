//! The reduce phase: job `j` merges its partition (`part-<j>.bin`) of every
//! map job and writes one final shard per worker.
//!
//! Worker `w` of job `j` owns the accounts with [`Owner::of_account`] =
//! `(j, w)` (transactions: [`Owner::of_transaction`]). The job reads each map
//! job's manifest, verifies each partition's size and SHA-256 against it,
//! routes records to workers, merges all index names found, and writes
//! `accounts/<j>-<w>.shard` and `transactions/<j>-<w>.shard` ([`crate::table`]
//! format), `layout.json`, and finally `_SUCCESS/reduce-<j>.json`, all under
//! the build's generation directory `gen-<id>/`.
//!
//! Generations make rebuilds into the same root safe for running readers.
//! The id is a hash of the build's inputs (the map manifests, the shard
//! counts and the format version, [`reduce_generation`]), so every reduce
//! job of one build agrees on it without coordination, a rerun of a finished
//! job finds its `_SUCCESS` again, and a build with other inputs never
//! touches the objects of the generation being served. The reduce job that
//! finds every job's `_SUCCESS` of its generation present after writing its
//! own publishes the generation with one atomic put of the root
//! `layout.json` pointer ([`publish`]); jobs finishing at once may both
//! publish the same pointer, which is harmless. An index written before
//! generations existed has its shards and a format-1 `layout.json` directly
//! at the root: readers serve it as the generation [`LEGACY_GENERATION`].
//!
//! Before reading any partition, the job checks that the map jobs cover one
//! contiguous range of ledgers, each the whole range it was asked for
//! ([`check_coverage`]); it refuses an index with missing ledgers, naming the
//! first gap and the map job to rerun. The reduce manifest records the range
//! covered, which [`crate::IndexReader::covered`] exposes, and nothing about
//! how the generation was built, so every object of a generation depends
//! only on the ledgers it covers and its layout.
//!
//! With [`ReduceConfig::extend`] the job extends the generation the root
//! pointer publishes instead: it also merges that generation's shards of
//! its partition, the map jobs covering the ledgers right after it, and
//! writes a generation covering both (see [`crate::extend`]); the bytes are
//! those of a full rebuild over the whole range.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::account::Owner;
use crate::bitmap_encoding;
use crate::error::{Error, Result};
use crate::extend::{self, ExtensionStep};
use crate::manifest::{
    FileEntry, LedgerRange, MAP_FORMAT, MapManifest, REDUCE_FORMAT, ReduceManifest, read_json,
    to_json,
};
use crate::partial::{self, AccountSets};
use crate::store::StoreRoot;
use crate::table;
use crate::varint::{self, Cursor};

/// Format tag of a generation's `layout.json` (and of the root
/// `layout.json` of an index written before generations existed).
pub const LAYOUT_FORMAT: &str = "batch-index/1";
/// Format tag of the root `layout.json` pointer naming the served generation.
pub const POINTER_FORMAT: &str = "batch-index/2";
/// Path of the pointer (and of a generation's own layout, under its directory).
pub const LAYOUT_PATH: &str = "layout.json";
/// Generation name of an index written before generations existed (shards
/// at the root).
pub const LEGACY_GENERATION: &str = "legacy";

/// `layout.json`: how the final index is sharded. At the root of an index it
/// is the pointer ([`POINTER_FORMAT`], `generation` set) naming the
/// directory that holds the served generation; inside a generation (and at
/// the root of a legacy index) it is [`LAYOUT_FORMAT`] without `generation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// [`LAYOUT_FORMAT`] or [`POINTER_FORMAT`].
    pub format: String,
    /// Reduce jobs.
    pub reduce_job_count: u32,
    /// Workers per reduce job.
    pub worker_count: u32,
    /// The generation directory (`gen-<id>`) this pointer publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
}

/// Directory name of the generation whose inputs hash to `digest`.
fn generation_name(digest: &[u8]) -> String {
    format!("gen-{}", hex::encode(&digest[..8]))
}

/// The generation of a reduce over `manifests` (map job `m` at index `m`)
/// into `reduce_jobs` × `workers` shards: a hash of those inputs and of the
/// crate's format version, so all reduce jobs of one build name the same
/// directory and a build with other inputs names another.
pub fn reduce_generation(manifests: &[MapManifest], reduce_jobs: u32, workers: u32) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "{LAYOUT_FORMAT} {} reduce {reduce_jobs} {workers}\n",
        env!("CARGO_PKG_VERSION")
    ));
    h.update(to_json(&manifests));
    generation_name(&h.finalize())
}

/// The generation of an extension of the generation whose reduce manifests
/// are `base` by the map jobs `manifests` (see [`crate::extend`]): a hash
/// of those inputs, never equal to a full build's name, and the same for
/// every base with the same content.
pub fn extension_generation(
    base: &[ReduceManifest],
    manifests: &[MapManifest],
    reduce_jobs: u32,
    workers: u32,
) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "{LAYOUT_FORMAT} {} extend {reduce_jobs} {workers}\n",
        env!("CARGO_PKG_VERSION")
    ));
    h.update(to_json(&base));
    h.update(to_json(&manifests));
    generation_name(&h.finalize())
}

/// The generation of a single-process build whose shards are `files`.
pub fn files_generation(files: &[FileEntry], covered: Option<LedgerRange>) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "{LAYOUT_FORMAT} {} single\n",
        env!("CARGO_PKG_VERSION")
    ));
    h.update(to_json(&(files, covered)));
    generation_name(&h.finalize())
}

/// Publishes `generation` (a directory under `target`) with one atomic put
/// of the root pointer if every reduce job of it has written its `_SUCCESS`;
/// returns whether it did. Idempotent: jobs that finish together may both
/// publish the same pointer.
pub async fn publish(
    target: &StoreRoot,
    generation: &str,
    reduce_jobs: u32,
    workers: u32,
) -> Result<bool> {
    let gen_root = target.child(generation);
    for j in 0..reduce_jobs {
        if gen_root.get_opt(&reduce_success(j)).await?.is_none() {
            return Ok(false);
        }
    }
    let pointer = Layout {
        format: POINTER_FORMAT.into(),
        reduce_job_count: reduce_jobs,
        worker_count: workers,
        generation: Some(generation.to_string()),
    };
    target.put(LAYOUT_PATH, to_json(&pointer)).await?;
    tracing::info!(generation, "published the index generation");
    Ok(true)
}

/// Deletes the finished generations under `target` that the pointer does
/// not name and that no reader can still serve; returns their names.
///
/// A reader moves to the published generation within its refresh interval,
/// so once the pointer was put more than `grace` ago (by the store's clock,
/// compared with `now`), a generation whose every object is older than that
/// put stopped being served at least `grace` ago: choose `grace` above the
/// readers' refresh interval plus the longest request. Generations with a
/// missing `_SUCCESS` (a build may be writing them) and ones with an object
/// written after the put (a build about to publish) are kept, as are the
/// shards of a `legacy` root. Nothing is deleted while the pointer is
/// younger than `grace` or the root has no pointer. `_SUCCESS` manifests go
/// first, so a concurrent rerun cannot publish a half-deleted generation.
pub async fn prune_generations(
    target: &StoreRoot,
    grace: std::time::Duration,
    now: std::time::SystemTime,
) -> Result<Vec<String>> {
    let Some(pointer) = read_json::<Layout>(target, LAYOUT_PATH).await? else {
        return Ok(Vec::new());
    };
    let (Some(current), Some(published)) = (
        pointer
            .generation
            .filter(|_| pointer.format == POINTER_FORMAT),
        target.last_modified(LAYOUT_PATH).await?,
    ) else {
        return Ok(Vec::new());
    };
    if now.duration_since(published).unwrap_or_default() < grace {
        tracing::info!(
            current,
            "the pointer moved less than the grace period ago: nothing pruned"
        );
        return Ok(Vec::new());
    }
    let mut deleted = Vec::new();
    for name in target.list_dirs().await? {
        if !name.starts_with("gen-") || name == current {
            continue;
        }
        let gen_root = target.child(&name);
        let objects = gen_root.list_modified("").await?;
        let Some(layout) = read_json::<Layout>(&gen_root, LAYOUT_PATH).await? else {
            continue;
        };
        let finished = (0..layout.reduce_job_count)
            .all(|j| objects.iter().any(|(p, _, _)| *p == reduce_success(j)));
        if !finished || objects.iter().any(|(_, t, _)| *t >= published) {
            continue;
        }
        let (manifests, rest): (Vec<_>, Vec<_>) = objects
            .iter()
            .partition(|(p, _, _)| p.starts_with("_SUCCESS/"));
        for (p, _, _) in manifests.into_iter().chain(rest) {
            gen_root.delete(p).await?;
        }
        tracing::info!(generation = name, "pruned an unreferenced generation");
        deleted.push(name);
    }
    Ok(deleted)
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
    /// When set (`FIRST_CHECKPOINT`), the index must start at this ledger.
    pub first_ledger: Option<u32>,
    /// When set (`LAST_LEDGER`), the index must end at this ledger: map jobs
    /// that stop short of it (too small a `MAP_JOB_COUNT`) are refused.
    pub last_ledger: Option<u32>,
    /// Extend the index `target` publishes (`EXTEND_INDEX`) instead of
    /// building one from the map jobs alone: merge its shards with the map
    /// jobs, which must cover the ledgers right after it ([`crate::extend`]).
    /// `first_ledger` and `last_ledger` then describe the new map jobs.
    pub extend: bool,
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

/// Decodes an account shard's index-name table (its footer meta, written by
/// [`encode_account_shard`]).
pub fn decode_index_names(meta: &[u8]) -> std::result::Result<Vec<String>, String> {
    let mut c = Cursor::new(meta);
    let n = c.len(meta.len()).ok_or("bad name table")?;
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        let name = c.prefixed().ok_or("bad name table")?;
        names.push(String::from_utf8(name.to_vec()).map_err(|_| "index name is not UTF-8")?);
    }
    if !c.is_empty() {
        return Err("trailing bytes after the name table".into());
    }
    Ok(names)
}

/// Decodes one account's value in an account shard: its `(index name,
/// checkpoints)` entries, `names` being the shard's name table.
pub fn decode_account_value(
    names: &[String],
    value: &[u8],
) -> std::result::Result<Vec<(String, RoaringBitmap)>, String> {
    let mut c = Cursor::new(value);
    let k = c.len(names.len()).ok_or("bad entry count")?;
    let mut out = Vec::with_capacity(k);
    for _ in 0..k {
        let id = c.len(names.len().saturating_sub(1)).ok_or("bad index id")?;
        out.push((names[id].clone(), bitmap_encoding::decode(&mut c)?));
    }
    if !c.is_empty() {
        return Err("trailing bytes after the entries".into());
    }
    Ok(out)
}

/// Decodes a whole account shard into its records, in key order (an
/// extension reads the shards of the generation it extends).
pub fn decode_account_shard(
    bytes: &[u8],
) -> std::result::Result<Vec<partial::AccountRecord>, String> {
    let footer = table::Footer::parse(bytes)?;
    let names = decode_index_names(&footer.meta)?;
    let mut out = Vec::with_capacity(footer.record_count.min(1 << 24) as usize);
    for (key, value) in whole_table_records(bytes, &footer)? {
        let text = std::str::from_utf8(key).map_err(|_| "account key is not UTF-8")?;
        let sets =
            decode_account_value(&names, value).map_err(|e| format!("account `{text}`: {e}"))?;
        out.push((text.to_string(), sets));
    }
    Ok(out)
}

/// Decodes a whole transaction shard into `(hash, position)` records.
pub fn decode_transaction_shard(bytes: &[u8]) -> std::result::Result<Vec<([u8; 32], u64)>, String> {
    let footer = table::Footer::parse(bytes)?;
    whole_table_records(bytes, &footer)?
        .into_iter()
        .map(|(key, value)| {
            let h: [u8; 32] = key
                .try_into()
                .map_err(|_| "transaction key is not 32 bytes")?;
            let p: [u8; 8] = value
                .try_into()
                .map_err(|_| "transaction value is not 8 bytes")?;
            Ok((h, u64::from_be_bytes(p)))
        })
        .collect()
}

/// Every record of a table object, checked sorted, unique and as many as its
/// footer says.
fn whole_table_records<'a>(
    bytes: &'a [u8],
    footer: &table::Footer,
) -> std::result::Result<Vec<table::Record<'a>>, String> {
    let mut out: Vec<table::Record<'a>> = Vec::new();
    for range in footer.block_ranges() {
        let block = usize::try_from(range.start)
            .ok()
            .zip(usize::try_from(range.end).ok())
            .and_then(|(a, b)| bytes.get(a..b))
            .ok_or("block range outside the object")?;
        for record in table::block_records(block)? {
            if out.last().is_some_and(|last| last.0 >= record.0) {
                return Err("keys out of order".into());
            }
            out.push(record);
        }
    }
    if out.len() as u64 != footer.record_count {
        return Err(format!(
            "{} records where the footer says {}",
            out.len(),
            footer.record_count
        ));
    }
    Ok(out)
}

/// One encoded shard file of a reduce job: its entry and content.
pub type EncodedShard = (FileEntry, Vec<u8>);

/// Encodes the shards of `job` (one account and one transaction shard per
/// worker, in worker order).
pub async fn encode_shards(job: u32, workers: Vec<WorkerData>) -> Result<Vec<EncodedShard>> {
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
        files.push((FileEntry::of(&rel, &acc, n_acc), acc));
        let rel = transaction_shard(owner);
        files.push((FileEntry::of(&rel, &tx, n_tx), tx));
    }
    Ok(files)
}

/// Writes the encoded shards of one reduce job and the generation's
/// `layout.json` under `target` (the generation directory); returns the
/// file entries. `worker_count` is the shards per reduce job.
pub async fn write_shards(
    target: &StoreRoot,
    reduce_jobs: u32,
    worker_count: u32,
    shards: Vec<EncodedShard>,
) -> Result<Vec<FileEntry>> {
    let mut files = Vec::new();
    for (entry, bytes) in shards {
        target.put(&entry.path, bytes).await?;
        files.push(entry);
    }
    let layout = Layout {
        format: LAYOUT_FORMAT.into(),
        reduce_job_count: reduce_jobs,
        worker_count,
        generation: None,
    };
    target.put(LAYOUT_PATH, to_json(&layout)).await?;
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
    let job = cfg.job;
    let manifests: Vec<MapManifest> = futures::stream::iter(0..cfg.map_jobs)
        .map(|m| read_map_manifest(source_root, m, cfg.reduce_jobs))
        .buffered(8)
        .try_collect()
        .await?;
    let maps_covered = check_coverage(&manifests)?;
    // A full reduce covers what its map jobs cover; an extension adds it to
    // the range of the generation it extends (its base).
    let (generation, covered, base) = if cfg.extend {
        let base = extend::open_base(target, cfg.reduce_jobs, cfg.workers).await?;
        match extend::plan_extension(base.covered, maps_covered)? {
            ExtensionStep::AlreadyCovered => {
                tracing::info!(
                    job = cfg.job,
                    generation = base.name,
                    covered = ?base.covered,
                    "the published index already holds the ledgers of these map jobs: \
                     the extension was published (or the index rebuilt) already"
                );
                return Ok(ReduceOutcome::AlreadyDone);
            }
            ExtensionStep::Extend { covered } => (
                extension_generation(&base.manifests, &manifests, cfg.reduce_jobs, cfg.workers),
                Some(covered),
                Some(base),
            ),
        }
    } else {
        (
            reduce_generation(&manifests, cfg.reduce_jobs, cfg.workers),
            maps_covered,
            None,
        )
    };
    let gen_root = target.child(&generation);
    let success = reduce_success(cfg.job);
    if gen_root.get_opt(&success).await?.is_some() {
        if !cfg.force {
            tracing::info!(
                job = cfg.job,
                generation,
                "reduce job already done; use --force to redo"
            );
            // The job that finished last may have stopped before publishing.
            publish(target, &generation, cfg.reduce_jobs, cfg.workers).await?;
            return Ok(ReduceOutcome::AlreadyDone);
        }
        gen_root.delete(&success).await?;
    }
    check_span(
        maps_covered,
        cfg.first_ledger,
        cfg.last_ledger,
        cfg.map_jobs,
    )?;
    let parts: Vec<Partition> = futures::stream::iter(manifests.iter().enumerate())
        .map(|(m, manifest)| read_map_partition(source_root, m as u32, manifest, job))
        .buffered(8)
        .try_collect()
        .await?;
    // Route records to their worker, then merge and encode each worker's
    // shard on its own blocking thread.
    let mut routed: Vec<Routed> = (0..cfg.workers).map(|_| Routed::default()).collect();
    if let Some(base) = &base {
        for (w, (accounts, txs)) in extend::read_base_shards(base, job)
            .await?
            .into_iter()
            .enumerate()
        {
            routed[w].0.extend(accounts);
            routed[w].1.extend(txs);
        }
    }
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
    let shards = encode_shards(job, merged).await?;
    let files = write_shards(&gen_root, cfg.reduce_jobs, cfg.workers, shards).await?;
    let manifest = ReduceManifest {
        format: REDUCE_FORMAT.into(),
        job,
        worker_count: cfg.workers,
        files,
        covered,
    };
    gen_root.put(&success, to_json(&manifest)).await?;
    publish(target, &generation, cfg.reduce_jobs, cfg.workers).await?;
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

/// Reads and checks map job `m`'s manifest.
async fn read_map_manifest(
    source_root: &StoreRoot,
    m: u32,
    reduce_jobs: u32,
) -> Result<MapManifest> {
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
    Ok(manifest)
}

async fn read_map_partition(
    source_root: &StoreRoot,
    m: u32,
    manifest: &MapManifest,
    job: u32,
) -> Result<Partition> {
    let job_root = source_root.child(&format!("job_{m}"));
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

/// Checks that the map jobs, `manifests[m]` being job `m`'s, cover one
/// contiguous range of ledgers without gaps or overlaps: each job was asked
/// for the range that follows its predecessor's and covered all of it.
/// Returns that range (from job 0's first ledger to the last one asked for),
/// `None` when no job was asked for any ledger.
///
/// Fails with [`Error::Incomplete`] naming the first missing ledgers and the
/// job to rerun, or with [`Error::InvalidInput`] when the jobs were planned
/// inconsistently (overlapping ranges, a hole no job was asked for, a job
/// asked for ledgers after one asked for none).
pub fn check_coverage(manifests: &[MapManifest]) -> Result<Option<LedgerRange>> {
    let mut covered_start: Option<u32> = None;
    let mut prev: Option<(usize, LedgerRange)> = None;
    let mut ended_at: Option<usize> = None;
    for (m, manifest) in manifests.iter().enumerate() {
        let Some(asked) = manifest.requested_range() else {
            ended_at.get_or_insert(m);
            continue;
        };
        if let Some(e) = ended_at {
            return Err(Error::invalid(format!(
                "map job {e} was asked for no ledgers but map job {m} was asked for {asked}: \
                 the jobs were run with different FIRST_CHECKPOINT, BATCH_SIZE or LAST_LEDGER"
            )));
        }
        if let Some((p, before)) = prev {
            let expected = u64::from(before.last) + 1;
            if u64::from(asked.first) < expected {
                return Err(Error::invalid(format!(
                    "map jobs {p} ({before}) and {m} ({asked}) overlap: \
                     the jobs were run with different FIRST_CHECKPOINT or BATCH_SIZE"
                )));
            }
            if u64::from(asked.first) > expected {
                return Err(Error::Incomplete(format!(
                    "{}: ledgers {expected}-{} are missing (no map job was asked for them: \
                     map job {p} was asked for {before} and map job {m} for {asked}; \
                     the jobs were run with different FIRST_CHECKPOINT or BATCH_SIZE)",
                    coverage_text(manifests, covered_start, expected as u32, m),
                    asked.first - 1
                )));
            }
        }
        let covered = manifest.covered_range();
        if let Some(c) = covered
            && (c.first != asked.first || c.last > asked.last)
        {
            return Err(Error::corrupt(
                format!("job_{m}/_SUCCESS"),
                format!("covers {c}, which is not a prefix of the range asked for, {asked}"),
            ));
        }
        if covered != Some(asked) {
            let (gap_first, how) = match covered {
                Some(c) => (c.last + 1, format!("covered only {c} of {asked}")),
                None => (asked.first, format!("covered none of {asked}")),
            };
            return Err(Error::Incomplete(format!(
                "{}: ledgers {gap_first}-{} are missing (map job {m} {how}; \
                 rerun it once the source holds ledger {})",
                coverage_text(
                    manifests,
                    covered_start.or(Some(asked.first)),
                    gap_first,
                    m + 1
                ),
                asked.last,
                asked.last
            )));
        }
        covered_start.get_or_insert(asked.first);
        prev = Some((m, asked));
    }
    Ok(covered_start
        .zip(prev)
        .map(|(first, (_, last))| LedgerRange {
            first,
            last: last.last,
        }))
}

/// Checks the range the map jobs cover against the span the index is meant
/// to have: it starts at `first` and ends at `last` when they are given.
pub fn check_span(
    covered: Option<LedgerRange>,
    first: Option<u32>,
    last: Option<u32>,
    map_jobs: u32,
) -> Result<()> {
    let text = |c: Option<LedgerRange>| c.map_or("no ledgers".into(), |c| format!("ledgers {c}"));
    if let (Some(f), Some(c)) = (first, covered)
        && c.first != f
    {
        return Err(Error::invalid(format!(
            "the map jobs cover {} but FIRST_CHECKPOINT={f}: they were run with another FIRST_CHECKPOINT",
            text(covered)
        )));
    }
    if let Some(l) = last {
        let start = covered.map(|c| c.last as u64 + 1).or(first.map(u64::from));
        match covered {
            Some(c) if c.last > l => {
                return Err(Error::invalid(format!(
                    "the map jobs cover {} but LAST_LEDGER={l}: they were run with another LAST_LEDGER",
                    text(covered)
                )));
            }
            Some(c) if c.last == l => {}
            _ => {
                return Err(Error::Incomplete(format!(
                    "map jobs 0..{map_jobs} cover {}: ledgers {}-{l} are missing (no map job was \
                     asked for them: MAP_JOB_COUNT={map_jobs} is too small to reach LAST_LEDGER={l})",
                    text(covered),
                    start.map_or("?".into(), |s| s.to_string()),
                )));
            }
        }
    }
    Ok(())
}

/// "map jobs cover ledgers A-B and C-D": the ledgers covered before the gap
/// (from `start` to `gap_first - 1`) and the covered ranges of jobs
/// `after..`, merged where contiguous.
fn coverage_text(
    manifests: &[MapManifest],
    start: Option<u32>,
    gap_first: u32,
    after: usize,
) -> String {
    let mut pieces: Vec<LedgerRange> = Vec::new();
    if let Some(s) = start.filter(|s| *s < gap_first) {
        pieces.push(LedgerRange {
            first: s,
            last: gap_first - 1,
        });
    }
    let mut later: Vec<LedgerRange> = Vec::new();
    for c in manifests[after..]
        .iter()
        .filter_map(MapManifest::covered_range)
    {
        match later.last_mut() {
            Some(l) if u64::from(l.last) + 1 == u64::from(c.first) => l.last = c.last,
            _ => later.push(c),
        }
    }
    pieces.extend(later);
    if pieces.is_empty() {
        return "map jobs cover no ledgers".into();
    }
    let list: Vec<String> = pieces.iter().map(ToString::to_string).collect();
    format!("map jobs cover ledgers {}", list.join(" and "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(m: u32, requested: Option<(u32, u32)>, covered: Option<(u32, u32)>) -> MapManifest {
        MapManifest {
            format: MAP_FORMAT.into(),
            job: m,
            chain: "stellar".into(),
            ledgers: covered,
            requested: requested.map(LedgerRange::from_pair),
            ledgers_read: 0,
            reduce_job_count: 1,
            index_names: vec![],
            accounts: 0,
            transactions: 0,
            files: vec![],
        }
    }

    #[test]
    fn coverage_names_the_first_gap_and_the_job_to_rerun() {
        let r = |a, b| Some((a, b));
        let jobs = vec![
            job(0, r(2, 63), r(2, 63)),
            job(1, r(64, 127), r(64, 127)),
            job(2, r(128, 191), r(128, 191)),
            job(3, r(192, 255), None),
            job(4, r(256, 319), r(256, 319)),
        ];
        assert_eq!(
            check_coverage(&jobs).unwrap_err().to_string(),
            "incomplete coverage: map jobs cover ledgers 2-191 and 256-319: ledgers 192-255 are \
             missing (map job 3 covered none of 192-255; rerun it once the source holds ledger 255)"
        );
        let mut done = jobs.clone();
        done[3] = job(3, r(192, 255), r(192, 255));
        assert_eq!(
            check_coverage(&done).unwrap(),
            Some(LedgerRange {
                first: 2,
                last: 319
            })
        );
        // Jobs asked for nothing (past LAST_LEDGER) may only come last.
        done.push(job(5, None, None));
        assert_eq!(check_coverage(&done).unwrap().unwrap().last, 319);
        done.push(job(6, r(320, 383), r(320, 383)));
        assert!(matches!(check_coverage(&done), Err(Error::InvalidInput(_))));
        // Overlapping plans and holes no job was asked for are refused.
        let overlap = vec![job(0, r(0, 127), r(0, 127)), job(1, r(64, 191), r(64, 191))];
        let e = check_coverage(&overlap).unwrap_err().to_string();
        assert!(e.contains("overlap"), "{e}");
        let hole = vec![job(0, r(0, 63), r(0, 63)), job(1, r(128, 191), r(128, 191))];
        let e = check_coverage(&hole).unwrap_err().to_string();
        assert!(
            e.contains("map jobs cover ledgers 0-63 and 128-191: ledgers 64-127 are missing"),
            "{e}"
        );
        // A covered range that is not a prefix of the asked one is corrupt.
        let bad = vec![job(0, r(0, 63), r(10, 63))];
        assert!(matches!(check_coverage(&bad), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn span_is_checked_against_first_checkpoint_and_last_ledger() {
        let c = Some(LedgerRange {
            first: 2,
            last: 319,
        });
        check_span(c, None, None, 5).unwrap();
        check_span(c, Some(2), Some(319), 5).unwrap();
        let e = check_span(c, Some(0), None, 5).unwrap_err().to_string();
        assert!(e.contains("FIRST_CHECKPOINT=0"), "{e}");
        let e = check_span(c, None, Some(300), 5).unwrap_err().to_string();
        assert!(e.contains("LAST_LEDGER=300"), "{e}");
        let e = check_span(c, None, Some(383), 5).unwrap_err();
        assert!(matches!(e, Error::Incomplete(_)), "{e}");
        assert!(e.to_string().contains("ledgers 320-383 are missing"), "{e}");
        let e = check_span(None, Some(2), Some(383), 0).unwrap_err();
        assert!(e.to_string().contains("ledgers 2-383 are missing"), "{e}");
    }

    #[test]
    fn manifests_written_before_requested_existed_still_read() {
        let old = r#"{"format":"batch-index/map/1","job":0,"chain":"stellar",
            "ledgers":[1410048,1410175],"ledgers_read":128,"reduce_job_count":1,
            "index_names":[],"accounts":0,"transactions":0,"files":[]}"#;
        let m: MapManifest = serde_json::from_str(old).unwrap();
        assert_eq!(m.requested, None);
        assert!(m.is_complete());
        assert_eq!(
            check_coverage(&[m]).unwrap(),
            Some(LedgerRange {
                first: 1410048,
                last: 1410175
            })
        );
        let old_reduce = r#"{"format":"batch-index/reduce/1","job":0,"map_job_count":1,
            "worker_count":1,"files":[]}"#;
        let r: ReduceManifest = serde_json::from_str(old_reduce).unwrap();
        assert_eq!(r.covered, None);
    }
}
