//! Real mainnet data (ethereum-etl's test resources, see tests/fixtures/ethereum-etl/README.md):
//! the file source reads it and `erc20_transfers` gives exactly ethereum-etl's rows, which
//! conform to its declared record schema.

use std::path::PathBuf;
use std::sync::Arc;

use model_runner_adapters::file_source::FileBlockSource;
use model_runner_core::memory::MemoryBlockSource;
use model_runner_core::models::Erc20Transfers;
use model_runner_core::ports::BlockSource;
use model_runner_core::{Block, BlockRange, Chain, Log, Model, ModelContext, RunId};

fn fixtures(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ethereum-etl")
        .join(sub)
}

fn eth() -> Chain {
    Chain::new("ethereum").unwrap()
}

/// Runs erc20_transfers and renders ethereum-etl's token_transfers CSV.
async fn transfers_csv(source: Arc<dyn BlockSource>, blocks: &[Block]) -> Vec<String> {
    let range = BlockRange::new(blocks[0].number, blocks[blocks.len() - 1].number).unwrap();
    let ctx = ModelContext {
        run_id: RunId::new(),
        model: "erc20_transfers".into(),
        model_version: "1".into(),
        chain: eth(),
        range,
        source,
        notes: Default::default(),
    };
    let records = Erc20Transfers.run(&ctx, blocks).await.unwrap();
    // Real mainnet rows conform to the declared schema (the worker would refuse them otherwise).
    let spec = Erc20Transfers.spec();
    let schema = spec.record_schema().unwrap();
    for r in &records {
        schema
            .check(&r.payload)
            .unwrap_or_else(|e| panic!("{}: {e}", r.key));
    }
    let mut lines = vec![
        "token_address,from_address,to_address,value,transaction_hash,log_index,block_number"
            .to_owned(),
    ];
    for r in records {
        let p = &r.payload;
        let s = |k: &str| match &p[k] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        lines.push(
            [
                "token_address",
                "from_address",
                "to_address",
                "value",
                "transaction_hash",
                "log_index",
                "block_number",
            ]
            .map(s)
            .join(","),
        );
    }
    lines
}

fn expected(path: PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn erc20_transfers_match_ethereum_etl_from_json_rpc_files() {
    let source = Arc::new(FileBlockSource::open(eth(), fixtures("block_483920")).unwrap());
    let head = source.head().await.unwrap();
    assert_eq!(head.number, 483_920);
    let blocks = source.blocks(BlockRange::single(483_920)).await.unwrap();
    let block = &blocks[0];
    assert_eq!(
        block.hash.to_string(),
        "0x246edb4b351d93c27926f4649bcf6c24366e2a7c7c718dc9158eea20c03bc6ae"
    );
    assert_eq!(block.transactions.len(), 4);
    assert!(
        block.transactions.iter().all(|t| t.receipt.is_some()),
        "receipts joined by hash"
    );
    let got = transfers_csv(source, &blocks).await;
    assert_eq!(
        got,
        expected(fixtures("block_483920/expected_token_transfers.csv"))
    );
}

#[tokio::test]
async fn erc20_transfers_match_ethereum_etl_on_exported_logs() {
    // logs.csv is ethereum-etl's own export; rows become Logs exactly as its extractor reads them.
    let text = std::fs::read_to_string(fixtures("etl_logs/logs.csv")).unwrap();
    let mut logs = Vec::new();
    for line in text.lines().skip(1) {
        let (head, topics) = match line.split_once(",\"") {
            Some((h, t)) => (h, t.trim_end_matches('"').to_owned()),
            None => {
                let i = line.rfind(',').unwrap();
                (&line[..i], line[i + 1..].to_owned())
            }
        };
        let f: Vec<&str> = head.split(',').collect();
        logs.push(Log {
            log_index: f[0].parse().unwrap(),
            transaction_hash: f[1].parse().unwrap(),
            transaction_index: f[2].parse().unwrap(),
            block_number: f[4].parse().unwrap(),
            address: f[5].parse().unwrap(),
            data: f[6].parse().unwrap(),
            topics: topics.split(',').map(|t| t.parse().unwrap()).collect(),
        });
    }
    let hash = "0x2753a045428f31dcbe9de1015da67972d172e0da8f9b773a85487774b15166f4"
        .parse()
        .unwrap();
    let block = Block {
        logs,
        ..Block::empty(1_452_581, hash, Default::default(), 0)
    };
    let source = Arc::new(MemoryBlockSource::new(eth(), vec![block.clone()]));
    let got = transfers_csv(source, &[block]).await;
    assert_eq!(
        got,
        expected(fixtures("etl_logs/expected_token_transfers.csv"))
    );
}

/// Receipts and logs from ethereum-etl's JSON-lines exports (`receipts.json`, `logs.json`)
/// joined onto the node's block: the same transfers as from the node's own receipts.
#[tokio::test]
async fn erc20_transfers_match_ethereum_etl_from_exported_receipts_and_logs() {
    let source = Arc::new(FileBlockSource::open(eth(), fixtures("etl_receipts_483920")).unwrap());
    let blocks = source.blocks(BlockRange::single(483_920)).await.unwrap();
    let block = &blocks[0];
    assert_eq!(block.transactions.len(), 4);
    let receipts: Vec<_> = block
        .transactions
        .iter()
        .map(|t| {
            t.receipt
                .as_ref()
                .expect("receipt joined from receipts.json")
        })
        .collect();
    // expected_receipts.json: transaction 3 used 21,000 gas, 143,706 cumulatively.
    let third = block
        .transactions
        .iter()
        .position(|t| t.index == 3)
        .unwrap();
    assert_eq!(
        (
            receipts[third].gas_used,
            receipts[third].cumulative_gas_used
        ),
        (21_000, 143_706)
    );
    // logs.json holds two logs; both are ERC-20 transfers.
    assert_eq!(block.logs.len(), 2);
    let got = transfers_csv(source, &blocks).await;
    assert_eq!(
        got,
        expected(fixtures("block_483920/expected_token_transfers.csv"))
    );
}

#[tokio::test]
async fn reads_ethereum_etl_json_lines_exports() {
    let source = FileBlockSource::open(eth(), fixtures("blocks_17173049_17173050")).unwrap();
    assert_eq!(source.head().await.unwrap().number, 17_173_050);
    let blocks = source
        .blocks(BlockRange::new(17_173_049, 17_173_050).unwrap())
        .await
        .unwrap();
    // blocks.json says 116 and 182 transactions.
    assert_eq!(blocks[0].transactions.len(), 116);
    assert_eq!(blocks[1].transactions.len(), 182);
    let b = &blocks[0];
    assert_eq!(b.timestamp, 1_683_029_999);
    let first = &b.transactions[0];
    assert_eq!(
        first.hash.to_string(),
        "0xeb107a40ba73a50c79a9f2026e902d758d1c5e5e211f7a7db1b294f88f118dd0"
    );
    assert_eq!(first.value.to::<u64>(), 1_642_894_143);
    assert!(b.transactions.windows(2).all(|w| w[0].index < w[1].index));
    // Values above u64::MAX survive (ethereum-etl writes them as bare JSON integers).
    let text =
        std::fs::read_to_string(fixtures("blocks_17173049_17173050/transactions.json")).unwrap();
    let big = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["value"].as_u64().is_none())
        .count();
    let parsed_big = blocks
        .iter()
        .flat_map(|b| &b.transactions)
        .filter(|t| t.value > alloy_primitives::U256::from(u64::MAX))
        .count();
    assert!(big > 0, "the fixture has values beyond u64");
    assert_eq!(parsed_big, big);
}

#[test]
fn bad_inputs_name_the_problem() {
    let err = FileBlockSource::open(eth(), "/nonexistent/blocks").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/blocks"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.json"),
        r#"{"result":{"number":"0xzz","transactions":[]}}"#,
    )
    .unwrap();
    let err = FileBlockSource::open(eth(), dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("b.json") && err.to_string().contains("number"),
        "{err}"
    );
    std::fs::write(dir.path().join("b.json"), "{}\n").unwrap();
    let err = FileBlockSource::open(eth(), dir.path()).unwrap_err();
    assert!(err.to_string().contains("no blocks found"), "{err}");
}
