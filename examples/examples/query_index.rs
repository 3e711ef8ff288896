//! Run with: `cargo run -p model-runner-examples --example query_index`
//!
//! Reading the batch index from code. It first builds an index, in this process, of 320 real
//! Stellar testnet ledgers (checkpoints 22033-22037, lighthorizon's layout, in
//! `batch-index/tests/fixtures/`) into a temporary directory — in production `batch-index run`
//! or the Kubernetes / AWS Batch jobs build it into S3 — then opens it with an `IndexReader`
//! (a local path or `s3://bucket/prefix`) and asks the questions an explorer asks: in which
//! checkpoints does an account appear, with payments only or any activity, where is its next
//! activity, and where is a transaction. The answers are checked against the ledgers as read by
//! hand (see `batch-index/tests/stellar_testnet.rs`).

use batch_index::extract::Modules;
use batch_index::local_build::build_single_process;
use batch_index::source::{ChainKind, SourceConfig, open_source};
use batch_index::store::StoreRoot;
use batch_index::{INDEX_ALL, INDEX_PAYMENTS, IndexReader};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ledgers = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../batch-index/tests/fixtures/stellar/testnet-lighthorizon");
    let dir = tempfile::tempdir()?;
    let target = dir.path().to_str().expect("a UTF-8 temporary path");

    // Build: 2 reduce partitions, 2 workers (what `batch-index run` does with one process).
    let source = open_source(
        StoreRoot::open(ledgers.to_str().expect("a UTF-8 path"))?,
        &SourceConfig {
            chain: ChainKind::Stellar,
            network_passphrase: "Test SDF Network ; September 2015".into(),
            ethereum_span: 64,
        },
    )
    .await?;
    build_single_process(source, &StoreRoot::open(target)?, 2, 2, Modules::ALL).await?;

    // Query.
    let reader = IndexReader::open(StoreRoot::open(target)?).await?;
    println!(
        "index covers ledgers {:?}",
        reader.snapshot().await?.covered()
    );
    let account = "GAIH3ULLFQ4DGSECF2AR555KZ4KNDGEKN4AFI4SU2M7B43MGK3QJZNSR";
    let all: Vec<u32> = reader
        .checkpoints(account, INDEX_ALL)
        .await?
        .iter()
        .collect();
    let payments: Vec<u32> = reader
        .checkpoints(account, INDEX_PAYMENTS)
        .await?
        .iter()
        .collect();
    let next = reader.next_active(account, INDEX_ALL, 22000).await?;
    println!(
        "{account}: active in checkpoints {all:?}, payments in {payments:?}, next active from 22000: {next:?}"
    );
    anyhow::ensure!(
        all.contains(&22033) && payments.contains(&22033),
        "account not found in 22033"
    );
    anyhow::ensure!(
        next == Some(all[0]),
        "next_active disagrees with checkpoints"
    );

    // The transaction source of a create_account is active, but not in a payment.
    let tx_source = "GAG5RK3LXGM22HAQD6THBFCL7P7OYBN2AWQNG6I3NVNGKJN5BUMKNKXA";
    anyhow::ensure!(
        !reader
            .checkpoints(tx_source, INDEX_PAYMENTS)
            .await?
            .contains(22033)
    );

    let tx = "a62686f6700911321724330a05240cdf0c2347fd1b0792df423095a01e5e5b32";
    let pos = reader
        .transaction(tx)
        .await?
        .ok_or_else(|| anyhow::anyhow!("transaction {tx} not indexed"))?;
    println!(
        "transaction {tx}: ledger {}, transaction {}, operation {}",
        pos.ledger(),
        pos.tx_index(),
        pos.op_index()
    );
    anyhow::ensure!((pos.ledger(), pos.tx_index(), pos.op_index()) == (1410048, 3, 0));
    // A malformed account (a bad checksum) is refused with what is wrong, not answered empty.
    let typo = "GBCKMB22U56BFQMAAWSZY2CLPTX6OJN7EDSQMHGG4JCPH5TKAZG5DWUX";
    match reader.checkpoints(typo, INDEX_ALL).await {
        Ok(set) => anyhow::bail!("a malformed account was answered: {set:?}"),
        Err(e) => println!("{e}"),
    }
    Ok(())
}
