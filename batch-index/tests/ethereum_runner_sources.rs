//! Ethereum blocks read through the model runner's block sources: a devnet
//! range and the runner's file source over real ethereum-etl exports index to
//! the checkpoints a brute-force scan of the same blocks (fetched directly
//! from the `BlockSource`) gives, in-process and through the CLI.

mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use alloy_primitives::{Address, B256, b256};
use batch_index::extract::Modules;
use batch_index::local_build::build_single_process;
use batch_index::source::{ChainKind, SourceConfig, open_source_url};
use batch_index::store::StoreRoot;
use batch_index::{INDEX_ALL, INDEX_PAYMENTS, IndexReader};
use model_runner_core::ports::BlockSource;
use model_runner_core::{Block, BlockRange};
use process::{assert_ok, assert_same_index, batch_index, final_index_files, fixture};

const TRANSFER: B256 = b256!("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef");

type Expected = BTreeMap<String, (BTreeSet<u64>, BTreeSet<u64>)>;

fn eth() -> model_runner_core::Chain {
    model_runner_core::Chain::new("ethereum").unwrap()
}

/// Independent scan with the documented rules: account → (blocks in all/all,
/// blocks in all/payments).
fn brute_force(blocks: &[Block]) -> Expected {
    let mut out = Expected::new();
    let mut add = |a: &Address, block: u64, payment: bool| {
        let e = out.entry(format!("{a:#x}").to_lowercase()).or_default();
        e.0.insert(block);
        if payment {
            e.1.insert(block);
        }
    };
    for b in blocks {
        for tx in &b.transactions {
            let pay = !tx.value.is_zero();
            add(&tx.from, b.number, pay);
            if let Some(to) = &tx.to {
                add(to, b.number, pay);
            }
            if let Some(c) = tx.receipt.as_ref().and_then(|r| r.contract_address) {
                add(&c, b.number, false);
            }
        }
        for log in &b.logs {
            add(&log.address, b.number, false);
            if log.topics.len() >= 3 && log.topics[0] == TRANSFER {
                for t in &log.topics[1..3] {
                    add(&Address::from_word(*t), b.number, true);
                }
            }
        }
    }
    out
}

fn cfg(span: u32) -> SourceConfig {
    SourceConfig {
        chain: ChainKind::Ethereum,
        network_passphrase: String::new(),
        ethereum_span: span,
    }
}

async fn check_accounts<'a>(
    reader: &IndexReader,
    expected: impl Iterator<Item = (&'a String, &'a (BTreeSet<u64>, BTreeSet<u64>))>,
    span: u64,
) -> usize {
    let cp = |blocks: &BTreeSet<u64>| -> BTreeSet<u32> {
        blocks.iter().map(|b| (1 + b / span) as u32).collect()
    };
    let mut n = 0;
    for (account, (all, pay)) in expected {
        let got_all: BTreeSet<u32> = reader
            .checkpoints(account, INDEX_ALL)
            .await
            .unwrap()
            .iter()
            .collect();
        let got_pay: BTreeSet<u32> = reader
            .checkpoints(account, INDEX_PAYMENTS)
            .await
            .unwrap()
            .iter()
            .collect();
        assert_eq!(got_all, cp(all), "{account} all/all");
        assert_eq!(got_pay, cp(pay), "{account} all/payments");
        n += 1;
    }
    n
}

async fn check_transactions(reader: &IndexReader, blocks: &[Block], step: usize) {
    for b in blocks.iter().step_by(step) {
        for tx in b.transactions.iter().step_by(17) {
            let p = reader
                .transaction(&format!("{:#x}", tx.hash))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("transaction {:#x} missing", tx.hash));
            assert_eq!(
                (u64::from(p.ledger()), u64::from(p.tx_index())),
                (b.number, tx.index),
                "{:#x}",
                tx.hash
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_range_checkpoints_match_brute_force_over_the_block_source() {
    // Head fixed at 199 (one block per ~11 days of wall clock).
    let url = "devnet://?head=199&seed=7&block_time_ms=1000000000";
    let span = 64u32;

    let direct = model_runner_adapters::connect::source_from_url(eth(), url).unwrap();
    let blocks = direct
        .blocks(BlockRange::new(0, 199).unwrap())
        .await
        .unwrap();
    assert_eq!(blocks.len(), 200);
    let expected = brute_force(&blocks);
    assert!(expected.len() > 1000, "{} accounts", expected.len());
    assert!(expected.values().any(|(_, pay)| !pay.is_empty()));
    assert!(
        blocks
            .iter()
            .flat_map(|b| &b.transactions)
            .any(|t| t.to.is_none()),
        "devnet creates contracts"
    );

    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    let source = open_source_url(url, &cfg(span)).await.unwrap();
    assert_eq!(source.available().await.unwrap(), (0, 199));
    build_single_process(
        source,
        &StoreRoot::open(single.to_str().unwrap()).unwrap(),
        2,
        2,
        Modules::ALL,
    )
    .await
    .unwrap();
    let reader = IndexReader::open(StoreRoot::open(single.to_str().unwrap()).unwrap())
        .await
        .unwrap();
    // The hot accounts (most blocks) and a spread of the long tail.
    let mut by_activity: Vec<_> = expected.iter().collect();
    by_activity.sort_by_key(|(a, (all, _))| (std::cmp::Reverse(all.len()), (*a).clone()));
    let sample: Vec<_> = by_activity
        .iter()
        .take(50)
        .copied()
        .chain(by_activity.iter().step_by(37).copied())
        .collect();
    let checked = check_accounts(&reader, sample.into_iter(), u64::from(span)).await;
    assert!(checked > 100, "{checked}");
    // Hot accounts span all four checkpoints 1..=4 (blocks 0..=199, span 64).
    let hot = &by_activity[0].0;
    let cps: Vec<u32> = reader
        .checkpoints(hot, INDEX_ALL)
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(cps, vec![1, 2, 3, 4], "{hot}");
    check_transactions(&reader, &blocks, 23).await;

    // The CLI: map/reduce run over the same source gives the same bytes.
    let run = tmp.path().join("run");
    let out = batch_index(
        &[
            "run",
            "--source",
            url,
            "--target",
            run.to_str().unwrap(),
            "--map-jobs",
            "2",
            "--reduce-jobs",
            "2",
            "--workers",
            "2",
            "--chain",
            "ethereum",
            "--checkpoint-span",
            &span.to_string(),
        ],
        &[],
    );
    assert_ok(&out, "devnet run");
    assert_same_index(
        &final_index_files(&single),
        &final_index_files(&run),
        "devnet M=2 R=2 W=2",
    );
    let out = batch_index(
        &["query", "--target", run.to_str().unwrap(), "--account", hot],
        &[],
    );
    assert_ok(&out, "query");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 2 3 4");

    // A runner source with the Stellar chain is refused with a hint.
    let e = open_source_url(
        url,
        &SourceConfig {
            chain: ChainKind::Stellar,
            ..cfg(span)
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("--chain ethereum"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_file_source_over_ethereum_etl_exports_matches_brute_force() {
    let dir = fixture("ethereum-runner-file");
    let url = format!("runner+file://{}", dir.to_str().unwrap());
    let span = 1000u32;

    let direct: Arc<dyn BlockSource> =
        Arc::new(model_runner_adapters::file_source::FileBlockSource::open(eth(), &dir).unwrap());
    let mut blocks = Vec::new();
    for n in [483920u64, 17173049, 17173050] {
        blocks.extend(direct.blocks(BlockRange::single(n)).await.unwrap());
    }
    let expected = brute_force(&blocks);
    assert!(expected.len() > 50, "{} accounts", expected.len());
    // Block 483920's receipts and logs come from the etl exports.
    assert!(
        blocks[0]
            .logs
            .iter()
            .any(|l| l.topics.first() == Some(&TRANSFER))
    );

    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    let source = open_source_url(&url, &cfg(span)).await.unwrap();
    assert_eq!(source.available().await.unwrap(), (483920, 17173050));
    build_single_process(
        source,
        &StoreRoot::open(single.to_str().unwrap()).unwrap(),
        2,
        2,
        Modules::ALL,
    )
    .await
    .unwrap();
    let reader = IndexReader::open(StoreRoot::open(single.to_str().unwrap()).unwrap())
        .await
        .unwrap();
    let checked = check_accounts(&reader, expected.iter(), u64::from(span)).await;
    assert_eq!(checked, expected.len());
    check_transactions(&reader, &blocks, 1).await;
    let p = reader
        .transaction("0x04cbcb236043d8fb7839e07bbc7f5eed692fb2ca55d897f1101eac3e3ad4fab8")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p.ledger(), p.tx_index()), (483920, 0));

    // The same through the CLI (`build`), map/reduce over a sparse source.
    let built = tmp.path().join("built");
    let out = batch_index(
        &[
            "build",
            "--source",
            &url,
            "--target",
            built.to_str().unwrap(),
            "--reduce-jobs",
            "2",
            "--workers",
            "2",
            "--chain",
            "ethereum",
            "--checkpoint-span",
            &span.to_string(),
        ],
        &[],
    );
    assert_ok(&out, "runner+file build");
    assert_same_index(
        &final_index_files(&single),
        &final_index_files(&built),
        "runner+file build",
    );
}
