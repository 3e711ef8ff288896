//! Rebuilding an index into the root a running reader serves: every answer
//! comes from one whole generation (the old or the new one, never a mix or
//! an error), and once the pointer moved the reader answers from the new
//! generation within its refresh interval. An index written before
//! generations existed (shards at the root) is read as `legacy` and
//! replaced the same way.

mod process;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use batch_index::IndexReader;
use batch_index::extract::Modules;
use batch_index::local_build::build_single_process;
use batch_index::manifest::LedgerRange;
use batch_index::map::{MapConfig, run_map};
use batch_index::reader::TxPosition;
use batch_index::reduce::{ReduceConfig, ReduceOutcome, prune_generations, run_reduce};
use batch_index::source::{ChainKind, LedgerSource, SourceConfig, open_source};
use batch_index::store::StoreRoot;
use process::{TESTNET, generation_dir, growing_source, make_legacy};
use roaring::RoaringBitmap;

/// The old index holds the fixture's first 128 ledgers, the new one all 320.
const FIRST: u32 = 1410048;
const OLD_LATEST: u32 = 1410175;
const NEW_LATEST: u32 = 1410367;
/// Lookup tasks running during the rebuild.
const TASKS: usize = 4;
/// Bound on each task's rounds of lookups, so the loop ends even if the
/// rebuild never does (after it, the first round must answer new).
const MAX_ROUNDS: usize = 100_000;

fn root(dir: &Path) -> StoreRoot {
    StoreRoot::open(dir.to_str().unwrap()).unwrap()
}

async fn source(dir: &Path, latest: u32) -> Arc<dyn LedgerSource> {
    growing_source(dir, latest);
    let cfg = SourceConfig {
        chain: ChainKind::Stellar,
        network_passphrase: TESTNET.into(),
        ethereum_span: 64,
    };
    open_source(root(dir), &cfg).await.unwrap()
}

async fn build(src: &Path, latest: u32, target: &StoreRoot) {
    build_single_process(source(src, latest).await, target, 2, 2, Modules::ALL)
        .await
        .unwrap();
}

/// Everything one request could see of the keys: coverage, account sets and
/// transaction positions.
type AccountSets = Vec<(String, RoaringBitmap)>;

#[derive(Debug, Clone, PartialEq)]
struct Answer {
    covered: Option<LedgerRange>,
    accounts: Vec<AccountSets>,
    transactions: Vec<Option<TxPosition>>,
}

/// The answer for `keys`, all from one snapshot (as the API answers one
/// request).
async fn answer(
    reader: &IndexReader,
    keys: &(Vec<String>, Vec<String>),
) -> batch_index::Result<Answer> {
    let snap = reader.snapshot().await?;
    let mut accounts = Vec::new();
    for a in &keys.0 {
        accounts.push(snap.account_sets(a).await?);
    }
    let mut transactions = Vec::new();
    for h in &keys.1 {
        transactions.push(snap.transaction(h).await?);
    }
    Ok(Answer {
        covered: snap.covered(),
        accounts,
        transactions,
    })
}

/// Accounts and transactions of the new index whose answers differ between
/// the two indexes (a few of each).
async fn keys_that_changed(
    src: &Path,
    old: &IndexReader,
    new: &IndexReader,
) -> (Vec<String>, Vec<String>) {
    let collected = batch_index::map::collect(
        &source(src, NEW_LATEST).await,
        FIRST,
        NEW_LATEST,
        2,
        Modules::ALL,
        |_| {},
    )
    .await
    .unwrap();
    let (accounts, txs) = collected.into_account_sets();
    let mut changed_accounts = Vec::new();
    for a in accounts.keys() {
        if old.account_sets(a).await.unwrap() != new.account_sets(a).await.unwrap() {
            changed_accounts.push(a.clone());
        }
        if changed_accounts.len() == 6 {
            break;
        }
    }
    let mut changed_txs = Vec::new();
    for h in txs.keys().map(hex::encode) {
        if old.transaction(&h).await.unwrap() != new.transaction(&h).await.unwrap() {
            changed_txs.push(h);
        }
        if changed_txs.len() == 3 {
            break;
        }
    }
    assert!(
        !changed_accounts.is_empty() && !changed_txs.is_empty(),
        "the two fixture ranges must differ"
    );
    (changed_accounts, changed_txs)
}

async fn rebuild_while_lookups_run(legacy: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (src_old, src_new) = (tmp.path().join("src-old"), tmp.path().join("src-new"));
    // Reference answers, from indexes of their own.
    let (ref_old, ref_new) = (tmp.path().join("ref-old"), tmp.path().join("ref-new"));
    build(&src_old, OLD_LATEST, &root(&ref_old)).await;
    build(&src_new, NEW_LATEST, &root(&ref_new)).await;
    let ref_old = IndexReader::open(root(&ref_old)).await.unwrap();
    let ref_new = IndexReader::open(root(&ref_new)).await.unwrap();
    let keys = Arc::new(keys_that_changed(&src_new, &ref_old, &ref_new).await);
    let old = answer(&ref_old, &keys).await.unwrap();
    let new = answer(&ref_new, &keys).await.unwrap();
    assert_ne!(old, new);

    // The served index starts as the old one.
    let served = tmp.path().join("served");
    build(&src_old, OLD_LATEST, &root(&served)).await;
    if legacy {
        make_legacy(&served);
    }
    // Refresh before every lookup: the most switches a rebuild can cause.
    let reader = IndexReader::open_with_refresh(root(&served), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        reader.generation() == "legacy",
        legacy,
        "{}",
        reader.generation()
    );
    assert_eq!(answer(&reader, &keys).await.unwrap(), old);

    let rebuilt = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (reader, keys, rebuilt) = (reader.clone(), keys.clone(), rebuilt.clone());
        let (old, new) = (old.clone(), new.clone());
        tasks.push(tokio::spawn(async move {
            let (mut saw_old, mut saw_new) = (0, 0);
            for _ in 0..MAX_ROUNDS {
                let done = rebuilt.load(Ordering::SeqCst);
                let got = answer(&reader, &keys)
                    .await
                    .map_err(|e| format!("lookup failed during the rebuild: {e}"))?;
                if got == new {
                    saw_new += 1;
                } else if got == old {
                    // Once the rebuild returned, its pointer is in place.
                    if done {
                        return Err("old answer after the rebuild published".to_string());
                    }
                    saw_old += 1;
                } else {
                    return Err(format!(
                        "an answer from neither generation: {got:?}\nold: {old:?}\nnew: {new:?}"
                    ));
                }
                if done && saw_new > 0 {
                    return Ok((saw_old, saw_new));
                }
            }
            Err(format!(
                "no answer from the new generation in {MAX_ROUNDS} lookups ({saw_old} old)"
            ))
        }));
    }
    build(&src_new, NEW_LATEST, &root(&served)).await;
    rebuilt.store(true, Ordering::SeqCst);
    let mut saw_old_total = 0;
    for t in tasks {
        let (saw_old, saw_new) = t.await.unwrap().unwrap();
        assert!(saw_new > 0, "{saw_old} old, {saw_new} new");
        saw_old_total += saw_old;
    }
    eprintln!("{saw_old_total} rounds answered from the old generation during the rebuild");
    assert_eq!(answer(&reader, &keys).await.unwrap(), new);
    assert!(reader.generation().starts_with("gen-"));
    // The old generation's files are still there for readers that have not
    // switched yet.
    if !legacy {
        let gens = std::fs::read_dir(&served)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("gen-")
            })
            .count();
        assert_eq!(gens, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_into_the_served_root_switches_readers_whole() {
    rebuild_while_lookups_run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_without_generations_is_read_and_replaced_whole() {
    rebuild_while_lookups_run(true).await;
}

/// A reader trusts the pointer it read for its refresh interval (here an
/// hour, so the test needs no clock), then `refresh` (what a lookup does once
/// the interval has passed) switches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_trusts_its_pointer_for_the_refresh_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let (src_old, src_new) = (tmp.path().join("src-old"), tmp.path().join("src-new"));
    let served = StoreRoot::open("memory:///served").unwrap();
    build(&src_old, OLD_LATEST, &served).await;
    let reader = IndexReader::open_with_refresh(served.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let old_generation = reader.generation();
    let old_covered = reader.snapshot().await.unwrap().covered();
    build(&src_new, NEW_LATEST, &served).await;
    let snap = reader.snapshot().await.unwrap();
    assert_eq!(snap.generation(), old_generation);
    assert_eq!(snap.covered(), old_covered);
    let snap = reader.refresh().await.unwrap();
    assert_ne!(snap.generation(), old_generation);
    assert_eq!(snap.covered().unwrap().last, NEW_LATEST);
    assert_eq!(
        reader.snapshot().await.unwrap().generation(),
        snap.generation()
    );
    // Building the old content again publishes its generation again: the
    // name is a hash of the content.
    build(&src_old, OLD_LATEST, &served).await;
    assert_eq!(reader.refresh().await.unwrap().generation(), old_generation);
    assert_eq!(reader.generation(), old_generation);
    assert_eq!(reader.covered(), old_covered);
}

/// Map jobs over `src` (ledgers `FIRST..=latest`, 128 per job) into `work`.
async fn map_all(src: &Path, latest: u32, work: &StoreRoot) -> u32 {
    let map_jobs = (latest - FIRST) / 128 + 1;
    let source = source(src, latest).await;
    for job in 0..map_jobs {
        let cfg = MapConfig {
            job,
            first_ledger: FIRST,
            batch_size: 128,
            last_ledger: Some(latest),
            workers: 2,
            reduce_jobs: 2,
            modules: Modules::ALL,
            force: false,
            chain: "stellar".into(),
        };
        run_map(source.clone(), work, &cfg).await.unwrap();
    }
    map_jobs
}

fn reduce_cfg(job: u32, map_jobs: u32, latest: u32) -> ReduceConfig {
    ReduceConfig {
        job,
        map_jobs,
        reduce_jobs: 2,
        workers: 2,
        force: false,
        first_ledger: Some(FIRST),
        last_ledger: Some(latest),
        extend: false,
    }
}

/// Distributed reduce jobs publish their generation only once all of them
/// finished; a rerun of a finished job publishes it if the last job stopped
/// between its `_SUCCESS` and the pointer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduce_publishes_once_every_job_of_the_generation_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let (src_old, src_new) = (tmp.path().join("src-old"), tmp.path().join("src-new"));
    let (work_old, work_new) = (
        root(&tmp.path().join("w-old")),
        root(&tmp.path().join("w-new")),
    );
    let served_dir = tmp.path().join("served");
    let served = root(&served_dir);

    let map_jobs = map_all(&src_old, OLD_LATEST, &work_old).await;
    let ReduceOutcome::Done(_) =
        run_reduce(&work_old, &served, &reduce_cfg(0, map_jobs, OLD_LATEST))
            .await
            .unwrap()
    else {
        panic!("reduce 0 ran")
    };
    assert!(
        !served_dir.join("layout.json").exists(),
        "published before reduce job 1 finished"
    );
    run_reduce(&work_old, &served, &reduce_cfg(1, map_jobs, OLD_LATEST))
        .await
        .unwrap();
    let reader = IndexReader::open_with_refresh(served.clone(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(reader.covered().unwrap().last, OLD_LATEST);
    let old_generation = reader.generation();
    let old_pointer = std::fs::read(served_dir.join("layout.json")).unwrap();

    // Rebuild from other map outputs: the served generation stays until the
    // last reduce job finished.
    let map_jobs = map_all(&src_new, NEW_LATEST, &work_new).await;
    run_reduce(&work_new, &served, &reduce_cfg(0, map_jobs, NEW_LATEST))
        .await
        .unwrap();
    assert_eq!(
        reader.snapshot().await.unwrap().generation(),
        old_generation
    );
    run_reduce(&work_new, &served, &reduce_cfg(1, map_jobs, NEW_LATEST))
        .await
        .unwrap();
    let snap = reader.snapshot().await.unwrap();
    assert_ne!(snap.generation(), old_generation);
    assert_eq!(snap.covered().unwrap().last, NEW_LATEST);

    // As if job 1 had stopped before its pointer put: its rerun is a no-op
    // that publishes.
    std::fs::write(served_dir.join("layout.json"), &old_pointer).unwrap();
    assert_eq!(
        reader.snapshot().await.unwrap().generation(),
        old_generation
    );
    let out = run_reduce(&work_new, &served, &reduce_cfg(1, map_jobs, NEW_LATEST))
        .await
        .unwrap();
    assert_eq!(out, ReduceOutcome::AlreadyDone);
    assert_eq!(
        reader.snapshot().await.unwrap().generation(),
        snap.generation()
    );
}

/// `prune_generations` deletes finished generations the pointer stopped
/// naming more than the grace period ago, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_only_finished_generations_no_longer_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (src_old, src_new) = (tmp.path().join("src-old"), tmp.path().join("src-new"));
    let served_dir = tmp.path().join("served");
    let served = root(&served_dir);
    build(&src_old, OLD_LATEST, &served).await;
    let old_generation = generation_dir(&served_dir);
    // A generation a build is still writing (no `_SUCCESS` yet).
    let unfinished = served_dir.join("gen-0123456789abcdef");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::copy(
        old_generation.join("layout.json"),
        unfinished.join("layout.json"),
    )
    .unwrap();
    build(&src_new, NEW_LATEST, &served).await;
    let new_generation = generation_dir(&served_dir);
    assert_ne!(old_generation, new_generation);

    let grace = Duration::from_secs(600);
    let now = std::time::SystemTime::now();
    // The pointer has just moved: readers may still serve the old one.
    let pruned = prune_generations(&served, grace, now).await.unwrap();
    assert!(pruned.is_empty(), "{pruned:?}");
    assert!(old_generation.exists());

    let pruned = prune_generations(&served, grace, now + grace + Duration::from_secs(1))
        .await
        .unwrap();
    let old_name = old_generation.file_name().unwrap().to_string_lossy();
    assert_eq!(pruned, vec![old_name.to_string()]);
    // (The local store leaves empty directories behind.)
    assert_eq!(
        files_under(&old_generation),
        0,
        "files of the pruned generation are left"
    );
    assert!(unfinished.join("layout.json").exists());
    let reader = IndexReader::open(served.clone()).await.unwrap();
    assert_eq!(reader.covered().unwrap().last, NEW_LATEST);

    // A root without generations has nothing to prune.
    let legacy = tmp.path().join("legacy");
    build(&src_old, OLD_LATEST, &root(&legacy)).await;
    make_legacy(&legacy);
    let later = now + Duration::from_secs(100_000);
    assert!(
        prune_generations(&root(&legacy), grace, later)
            .await
            .unwrap()
            .is_empty()
    );
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { files_under(&p) } else { 1 }
        })
        .sum()
    })
}
