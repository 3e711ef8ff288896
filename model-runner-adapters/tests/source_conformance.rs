//! The block source conformance suite against the file source (real mainnet fixtures, see
//! tests/fixtures/ethereum-etl/README.md) and the devnet source. The JSON-RPC source runs it in
//! tests/jsonrpc.rs, against a node.

use std::path::{Path, PathBuf};

use model_runner_adapters::devnet::DevnetSource;
use model_runner_adapters::file_source::FileBlockSource;
use model_runner_core::conformance::source::{CallSupport, SourceFacts, run_all};
use model_runner_core::{BlockRange, Chain};

fn fixtures(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ethereum-etl")
        .join(sub)
}

fn eth() -> Chain {
    Chain::new("ethereum").unwrap()
}

fn facts(known: BlockRange, missing: Vec<u64>, receipts: bool) -> SourceFacts {
    SourceFacts {
        chain: eth(),
        known,
        missing,
        linked: true,
        receipts,
        call: CallSupport::Unsupported,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_source_on_json_rpc_responses() {
    let source = FileBlockSource::open(eth(), fixtures("block_483920")).unwrap();
    run_all(
        source,
        &facts(BlockRange::single(483_920), vec![0, 483_919], true),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_source_on_ethereum_etl_exports() {
    let source = FileBlockSource::open(eth(), fixtures("blocks_17173049_17173050")).unwrap();
    run_all(
        source,
        &facts(
            BlockRange::new(17_173_049, 17_173_050).unwrap(),
            vec![17_173_048],
            false,
        ),
    )
    .await;
    let source = FileBlockSource::open(eth(), fixtures("etl_receipts_483920")).unwrap();
    run_all(
        source,
        &facts(BlockRange::single(483_920), vec![483_919], true),
    )
    .await;
}

fn copy_json(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// Blocks 483920 and 17173049..=17173050 in one directory: everything between is a gap, and a
/// range touching it is `BlockNotFound`, never the blocks around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_source_with_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    copy_json(&fixtures("block_483920"), dir.path());
    copy_json(&fixtures("blocks_17173049_17173050"), dir.path());
    let source = FileBlockSource::open(eth(), dir.path()).unwrap();
    run_all(
        source,
        &facts(
            BlockRange::new(17_173_049, 17_173_050).unwrap(),
            vec![483_919, 483_921, 10_000_000, 17_173_048],
            false,
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devnet_source() {
    // A head that stays put for the test.
    let still = DevnetSource::from_url(
        eth(),
        "devnet://?head=300&block_time_ms=3600000&txs=20&logs=40&seed=7",
    )
    .unwrap();
    run_all(
        still,
        &facts(BlockRange::new(260, 300).unwrap(), vec![], true),
    )
    .await;
    // Genesis and a full-size block, head moving every 20 ms while the suite runs.
    let moving = DevnetSource::from_url(eth(), "devnet://?head=50&block_time_ms=20").unwrap();
    run_all(
        moving,
        &facts(BlockRange::new(0, 30).unwrap(), vec![], true),
    )
    .await;
}
