//! Coverage as a checked fact: a map job whose range reaches past the
//! source's latest ledger is incomplete, reduce refuses the index naming the
//! first missing ledgers, a rerun after the source grew completes the job,
//! and the final index states (and holds) every ledger of its range.

mod process;

use std::path::Path;
use std::sync::Arc;

use batch_index::extract::Modules;
use batch_index::local_build::build_single_process;
use batch_index::manifest::LedgerRange;
use batch_index::map::{MapConfig, MapOutcome, run_map};
use batch_index::reduce::{ReduceConfig, ReduceOutcome, run_reduce};
use batch_index::source::{ChainKind, LedgerSource, SourceConfig, open_source};
use batch_index::store::StoreRoot;
use batch_index::{Error, IndexReader};
use process::{TESTNET, assert_same_index, final_index_files, growing_source};

const FIRST: u32 = 1410048;
const LAST: u32 = 1410367;
const MAP_JOBS: u32 = 3;

fn root(dir: &Path) -> StoreRoot {
    StoreRoot::open(dir.to_str().unwrap()).unwrap()
}

async fn open(dir: &Path) -> Arc<dyn LedgerSource> {
    let cfg = SourceConfig {
        chain: ChainKind::Stellar,
        network_passphrase: TESTNET.into(),
        ethereum_span: 64,
    };
    open_source(root(dir), &cfg).await.unwrap()
}

fn map_cfg(job: u32) -> MapConfig {
    MapConfig {
        job,
        first_ledger: FIRST,
        batch_size: 128,
        last_ledger: Some(LAST),
        workers: 2,
        reduce_jobs: 2,
        modules: Modules::ALL,
        force: false,
        chain: "stellar".into(),
    }
}

fn reduce_cfg(job: u32) -> ReduceConfig {
    ReduceConfig {
        job,
        map_jobs: MAP_JOBS,
        reduce_jobs: 2,
        workers: 2,
        force: false,
        first_ledger: Some(FIRST),
        last_ledger: Some(LAST),
        extend: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduce_refuses_until_a_rerun_after_the_source_grew_covers_every_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("source");
    let idx = tmp.path().join("index");
    let target = root(&idx);

    // Jobs ask for 1410048-1410175, 1410176-1410303, 1410304-1410367, but
    // the source ends at 1410200 for now.
    growing_source(&src, 1410200);
    let source = open(&src).await;
    for job in 0..MAP_JOBS {
        run_map(source.clone(), &target, &map_cfg(job))
            .await
            .unwrap();
    }
    let err = run_reduce(&target, &target, &reduce_cfg(0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Incomplete(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "incomplete coverage: map jobs cover ledgers 1410048-1410200: ledgers 1410201-1410303 \
         are missing (map job 1 covered only 1410176-1410200 of 1410176-1410303; rerun it once \
         the source holds ledger 1410303)"
    );
    assert!(!process::reduce_success_exists(&idx, 0));

    // A rerun before the source grew is a no-op: the job stays incomplete.
    let MapOutcome::StillIncomplete(m1) =
        run_map(source.clone(), &target, &map_cfg(1)).await.unwrap()
    else {
        panic!("map job 1 is still incomplete");
    };
    assert_eq!(
        (m1.covered_range(), m1.requested_range()),
        (
            Some(LedgerRange {
                first: 1410176,
                last: 1410200
            }),
            Some(LedgerRange {
                first: 1410176,
                last: 1410303
            })
        )
    );

    // The source grows; job 1 is redone, job 0 (complete) is not. Job 2 is
    // not rerun yet: the gap moves to it, and the error names the ranges
    // on both sides.
    growing_source(&src, LAST);
    let source = open(&src).await;
    assert_eq!(
        run_map(source.clone(), &target, &map_cfg(0)).await.unwrap(),
        MapOutcome::AlreadyDone
    );
    let MapOutcome::Done(m1) = run_map(source.clone(), &target, &map_cfg(1)).await.unwrap() else {
        panic!("map job 1 must be redone once the source grew");
    };
    assert!(m1.is_complete(), "{m1:?}");
    let err = run_reduce(&target, &target, &reduce_cfg(1))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "incomplete coverage: map jobs cover ledgers 1410048-1410303: ledgers 1410304-1410367 \
         are missing (map job 2 covered none of 1410304-1410367; rerun it once the source \
         holds ledger 1410367)"
    );

    run_map(source.clone(), &target, &map_cfg(2)).await.unwrap();
    // Too few map jobs for the span the index is meant to have.
    let err = run_reduce(
        &target,
        &target,
        &ReduceConfig {
            map_jobs: 2,
            ..reduce_cfg(0)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "incomplete coverage: map jobs 0..2 cover ledgers 1410048-1410303: ledgers \
         1410304-1410367 are missing (no map job was asked for them: MAP_JOB_COUNT=2 is too \
         small to reach LAST_LEDGER=1410367)"
    );
    for job in 0..2 {
        let out = run_reduce(&target, &target, &reduce_cfg(job))
            .await
            .unwrap();
        let ReduceOutcome::Done(m) = out else {
            panic!("reduce {job} ran")
        };
        assert_eq!(
            m.covered,
            Some(LedgerRange {
                first: FIRST,
                last: LAST
            })
        );
    }
    let reader = IndexReader::open(target.clone()).await.unwrap();
    assert_eq!(
        reader.covered(),
        Some(LedgerRange {
            first: FIRST,
            last: LAST
        })
    );

    // Every ledger is in it: the shards equal those of a single-process
    // build over the whole (grown) source.
    let reference = tmp.path().join("reference");
    build_single_process(open(&src).await, &root(&reference), 2, 2, Modules::ALL)
        .await
        .unwrap();
    assert_same_index(
        &final_index_files(&reference),
        &final_index_files(&idx),
        "index after the source grew vs single-process build",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_of_an_index_from_old_manifests_has_unknown_coverage() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("source");
    growing_source(&src, LAST);
    let idx = tmp.path().join("index");
    build_single_process(open(&src).await, &root(&idx), 1, 1, Modules::ALL)
        .await
        .unwrap();
    // A reduce manifest written before `covered` existed.
    let path = process::generation_dir(&idx).join("_SUCCESS/reduce-0.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("covered");
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let reader = IndexReader::open(root(&idx)).await.unwrap();
    assert_eq!(reader.covered(), None);
}
