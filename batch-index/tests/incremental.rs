//! Incremental indexing on the real testnet ledgers (lighthorizon fixture,
//! 1410048..1410367): an index built over a prefix of the source and then
//! extended as the source grows holds, object for object and byte for byte,
//! what a full build over the whole range writes; an extension that would
//! leave a gap, overlap the index, change its layout or merge a corrupted
//! shard is refused, naming what is wrong; a rerun once it is published
//! changes nothing.

mod process;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use batch_index::extract::Modules;
use batch_index::local_build::build_single_process;
use batch_index::manifest::LedgerRange;
use batch_index::map::{MapConfig, MapOutcome, run_map};
use batch_index::reduce::{ReduceConfig, ReduceOutcome, run_reduce};
use batch_index::source::{ChainKind, LedgerSource, SourceConfig, open_source};
use batch_index::store::StoreRoot;
use batch_index::{Error, INDEX_ALL, INDEX_PAYMENTS, IndexReader};
use process::{
    TESTNET, assert_ok, batch_index, generation_dir, generation_objects, growing_source,
    make_legacy, pointer,
};

const A: u32 = 1410048;
/// End of checkpoint 22033: the first extension starts on a checkpoint
/// boundary.
const B1: u32 = 1410111;
/// Inside checkpoint 22035 (1410176..1410239): the second extension starts
/// mid-checkpoint, so that checkpoint's sets come from the base and the
/// new map jobs.
const B2: u32 = 1410200;
const C: u32 = 1410367;

fn range(first: u32, last: u32) -> Option<LedgerRange> {
    Some(LedgerRange { first, last })
}

fn root(dir: &Path) -> StoreRoot {
    StoreRoot::open(dir.to_str().unwrap()).unwrap()
}

fn testnet() -> (&'static str, String) {
    ("NETWORK_PASSPHRASE", TESTNET.to_string())
}

/// `batch-index run` over the whole source: 2 reduce jobs of 2 shards.
fn run_full(src: &Path, dir: &Path, map_jobs: u32) {
    let out = batch_index(
        &[
            "run",
            "--source",
            src.to_str().unwrap(),
            "--target",
            dir.to_str().unwrap(),
            "--map-jobs",
            &map_jobs.to_string(),
            "--reduce-jobs",
            "2",
            "--workers",
            "2",
        ],
        &[testnet()],
    );
    assert_ok(&out, &format!("run M={map_jobs} into {}", dir.display()));
}

fn extend(src: &Path, dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "extend",
        "--source",
        src.to_str().unwrap(),
        "--target",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = batch_index(&args, &[testnet()]);
    assert_ok(&out, &format!("extend {extra:?}"));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts two indexes publish generations with the same objects, byte for
/// byte, and pointers that differ in the generation's name at most.
fn assert_same_generation(a: &Path, b: &Path, what: &str) {
    let (oa, ob) = (generation_objects(a), generation_objects(b));
    assert_eq!(
        oa.keys().collect::<Vec<_>>(),
        ob.keys().collect::<Vec<_>>(),
        "{what}: different objects"
    );
    assert!(
        oa.keys().any(|k| k.starts_with("_SUCCESS/"))
            && oa.keys().any(|k| k.starts_with("accounts/")),
        "{what}: {:?}",
        oa.keys()
    );
    for (k, v) in &oa {
        assert!(
            v == &ob[k],
            "{what}: {k} differs:\n{}\n---\n{}",
            String::from_utf8_lossy(&v[..v.len().min(600)]),
            String::from_utf8_lossy(&ob[k][..ob[k].len().min(600)])
        );
    }
    let (mut pa, mut pb) = (pointer(a), pointer(b));
    pa.as_object_mut().unwrap().remove("generation");
    pb.as_object_mut().unwrap().remove("generation");
    assert_eq!(pa, pb, "{what}: pointers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_extended_twice_holds_the_bytes_of_a_full_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("source");
    let idx = tmp.path().join("index");

    // The index of A..B1, built while the source ended there.
    growing_source(&src, B1);
    run_full(&src, &idx, 2);
    let reader = IndexReader::open_with_refresh(root(&idx), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(reader.covered(), range(A, B1));
    let first_generation = reader.generation();

    // The source grows to C; extend to B2 first (a checkpoint boundary), with
    // the index's own layout (2 reduce jobs of 2 shards, not given here).
    growing_source(&src, C);
    let out = extend(&src, &idx, &["--to", &B2.to_string(), "--map-jobs", "2"]);
    assert!(
        stderr(&out).contains("extended ledgers 1410048-1410111 to 1410048-1410200"),
        "{}",
        stderr(&out)
    );
    let snap = reader.snapshot().await.unwrap();
    assert_eq!(snap.covered(), range(A, B2));
    assert_ne!(snap.generation(), first_generation);
    // The new map jobs read only the new ledgers, into a root of their own.
    let maps: serde_json::Value = serde_json::from_slice(
        &std::fs::read(idx.join("extend-1410112-1410200/job_0/_SUCCESS")).unwrap(),
    )
    .unwrap();
    assert_eq!(maps["requested"]["first"], 1410112, "{maps}");
    let full_b2 = tmp.path().join("full-b2");
    let src_b2 = tmp.path().join("source-b2");
    growing_source(&src_b2, B2);
    run_full(&src_b2, &full_b2, 3);
    assert_same_generation(&idx, &full_b2, "A..B2: extension vs full run");

    // Then to the source's latest ledger, starting mid-checkpoint.
    let out = extend(&src, &idx, &["--map-jobs", "3", "--workers", "2"]);
    assert!(
        stderr(&out).contains("extended ledgers 1410048-1410200 to 1410048-1410367"),
        "{}",
        stderr(&out)
    );
    let full = tmp.path().join("full");
    run_full(&src, &full, 1);
    assert_same_generation(&idx, &full, "A..C: twice extended vs full run");
    let single = tmp.path().join("single");
    build_single_process(open(&src).await, &root(&single), 2, 2, Modules::ALL)
        .await
        .unwrap();
    assert_same_generation(
        &idx,
        &single,
        "A..C: twice extended vs single-process build",
    );

    // Readers follow; lookups of either part answer from the whole range.
    let snap = reader.snapshot().await.unwrap();
    assert_eq!(snap.covered(), range(A, C));
    let created = "GC4HPUZ3EEGOHMCS46DEMJ6UEGAJ7VF4FI5WSGJOFIAVT64YY64YSNEE";
    assert!(
        snap.checkpoints(created, INDEX_ALL)
            .await
            .unwrap()
            .contains(22033)
    );
    let merged = "GBKTMBXOXPYYONL6HWVLEGEPMWVRSREQ4AY2MD3HEBHHFMCVZPMKIWPQ";
    assert!(
        snap.checkpoints(merged, INDEX_PAYMENTS)
            .await
            .unwrap()
            .contains(22034)
    );

    // Nothing left to extend: no job runs and the pointer stays.
    let before = std::fs::read(idx.join("layout.json")).unwrap();
    let out = extend(&src, &idx, &[]);
    assert!(
        stderr(&out)
            .contains("the index already covers ledgers 1410048-1410367: nothing to extend"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(idx.join("layout.json")).unwrap(), before);
    // Earlier generations stay for readers that have not switched yet.
    let generations = std::fs::read_dir(&idx)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("gen-")
        })
        .count();
    assert_eq!(generations, 3);
}

async fn open(dir: &Path) -> Arc<dyn LedgerSource> {
    let cfg = SourceConfig {
        chain: ChainKind::Stellar,
        network_passphrase: TESTNET.into(),
        ethereum_span: 64,
    };
    open_source(root(dir), &cfg).await.unwrap()
}

/// Map jobs asked for `first..=C`, `batch` ledgers each, into `maps`.
async fn map_new_ledgers(src: &Path, maps: &StoreRoot, first: u32, batch: u32) -> u32 {
    let source = open(src).await;
    let jobs = (C - first + 1).div_ceil(batch);
    for job in 0..jobs {
        let out = run_map(
            source.clone(),
            maps,
            &MapConfig {
                job,
                first_ledger: first,
                batch_size: batch,
                last_ledger: Some(C),
                workers: 2,
                reduce_jobs: 2,
                modules: Modules::ALL,
                force: false,
                chain: "stellar".into(),
            },
        )
        .await
        .unwrap();
        assert!(matches!(out, MapOutcome::Done(m) if m.is_complete()));
    }
    jobs
}

fn extend_cfg(job: u32, map_jobs: u32, first: u32) -> ReduceConfig {
    ReduceConfig {
        job,
        map_jobs,
        reduce_jobs: 2,
        workers: 2,
        force: false,
        first_ledger: Some(first),
        last_ledger: Some(C),
        extend: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_must_follow_the_index_and_keep_its_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("source");
    let idx_dir = tmp.path().join("index");
    let idx = root(&idx_dir);
    growing_source(&src, B1);
    build_single_process(open(&src).await, &idx, 2, 2, Modules::ALL)
        .await
        .unwrap();
    let served = std::fs::read(idx_dir.join("layout.json")).unwrap();
    let unchanged = |what: &str| {
        assert_eq!(
            std::fs::read(idx_dir.join("layout.json")).unwrap(),
            served,
            "{what}: the pointer moved"
        );
    };
    growing_source(&src, C);

    // A gap after the index is refused, naming the missing ledgers.
    let gap = root(&tmp.path().join("maps-gap"));
    let jobs = map_new_ledgers(&src, &gap, 1410176, 64).await;
    let e = run_reduce(&gap, &idx, &extend_cfg(0, jobs, 1410176))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Incomplete(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "incomplete coverage: the index covers ledgers 1410048-1410111 and the new map jobs \
         cover 1410176-1410367: ledgers 1410112-1410175 are missing; run the map jobs with \
         FIRST_CHECKPOINT=1410112"
    );
    unchanged("gap");

    // Map jobs overlapping the index are refused.
    let overlap = root(&tmp.path().join("maps-overlap"));
    let jobs = map_new_ledgers(&src, &overlap, 1410080, 128).await;
    let e = run_reduce(&overlap, &idx, &extend_cfg(0, jobs, 1410080))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    assert!(
        e.to_string().contains(
            "the new map jobs cover 1410080-1410367, which overlaps or precedes the index's \
             1410048-1410111"
        ),
        "{e}"
    );
    unchanged("overlap");

    // The right map jobs, but another layout: refused.
    let maps = root(&tmp.path().join("maps"));
    let jobs = map_new_ledgers(&src, &maps, B1 + 1, 128).await;
    assert_eq!(jobs, 2);
    let e = run_reduce(
        &maps,
        &idx,
        &ReduceConfig {
            workers: 1,
            ..extend_cfg(0, jobs, B1 + 1)
        },
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("sharded for REDUCE_JOB_COUNT=2 WORKER_COUNT=2, but this extension runs with REDUCE_JOB_COUNT=2 WORKER_COUNT=1"),
        "{e}"
    );

    // A base shard that differs from its manifest is named, not merged.
    let shard = generation_dir(&idx_dir).join("accounts/0-1.shard");
    let good = std::fs::read(&shard).unwrap();
    let mut bad = good.clone();
    bad[0] ^= 0x01;
    std::fs::write(&shard, &bad).unwrap();
    let e = run_reduce(&maps, &idx, &extend_cfg(0, jobs, B1 + 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { path, .. } if path.ends_with("accounts/0-1.shard")),
        "{e}"
    );
    std::fs::write(&shard, &good).unwrap();
    unchanged("refusals");

    // The extension: published once both reduce jobs finished.
    let reader = IndexReader::open_with_refresh(idx.clone(), Duration::ZERO)
        .await
        .unwrap();
    let out = run_reduce(&maps, &idx, &extend_cfg(0, jobs, B1 + 1))
        .await
        .unwrap();
    let ReduceOutcome::Done(m) = out else {
        panic!("fresh extension job")
    };
    assert_eq!(m.covered, range(A, C));
    unchanged("one of two reduce jobs");
    assert_eq!(reader.snapshot().await.unwrap().covered(), range(A, B1));
    run_reduce(&maps, &idx, &extend_cfg(1, jobs, B1 + 1))
        .await
        .unwrap();
    assert_eq!(reader.snapshot().await.unwrap().covered(), range(A, C));
    let published = std::fs::read(idx_dir.join("layout.json")).unwrap();
    assert_ne!(published, served);

    // Reruns once it is published: nothing to do, the pointer stays.
    for job in 0..2 {
        let out = run_reduce(&maps, &idx, &extend_cfg(job, jobs, B1 + 1))
            .await
            .unwrap();
        assert_eq!(out, ReduceOutcome::AlreadyDone);
    }
    assert_eq!(
        std::fs::read(idx_dir.join("layout.json")).unwrap(),
        published
    );

    // Byte for byte the single-process build over A..C.
    let full_dir = tmp.path().join("full");
    build_single_process(open(&src).await, &root(&full_dir), 2, 2, Modules::ALL)
        .await
        .unwrap();
    assert_same_generation(
        &idx_dir,
        &full_dir,
        "library extension vs single-process build",
    );
}

/// An index written before generations (shards and `layout.json` at the
/// root, read as generation `legacy`) is extended like any other: its
/// shards are merged, the extension goes into a generation and the pointer
/// replaces the root `layout.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_without_generations_is_extended_into_one() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("source");
    let idx_dir = tmp.path().join("index");
    growing_source(&src, B2);
    build_single_process(open(&src).await, &root(&idx_dir), 2, 2, Modules::ALL)
        .await
        .unwrap();
    make_legacy(&idx_dir);
    let reader = IndexReader::open_with_refresh(root(&idx_dir), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(reader.generation(), "legacy");
    growing_source(&src, C);
    let out = extend(&src, &idx_dir, &["--map-jobs", "2", "--workers", "2"]);
    assert!(
        stderr(&out).contains("extended ledgers 1410048-1410200 to 1410048-1410367"),
        "{}",
        stderr(&out)
    );
    let snap = reader.snapshot().await.unwrap();
    assert!(
        snap.generation().starts_with("gen-"),
        "{}",
        snap.generation()
    );
    assert_eq!(snap.covered(), range(A, C));
    let full_dir = tmp.path().join("full");
    build_single_process(open(&src).await, &root(&full_dir), 2, 2, Modules::ALL)
        .await
        .unwrap();
    assert_same_generation(
        &idx_dir,
        &full_dir,
        "extended legacy index vs single-process build",
    );
}
