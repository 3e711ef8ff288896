//! Run with: `cargo run -p model-runner-examples --example test_your_model`
//!
//! The testing kit (`model-runner-adapters`, feature `testing`) on real Ethereum mainnet blocks:
//! a user model (`token_volume`: per block and token, the number of ERC-20 transfers and the
//! value moved) is run on block 483920 as saved from a node (its `eth_getBlockByNumber` and
//! receipt responses, from ethereum-etl's test resources), directly and through the whole
//! in-memory pipeline, and its rows are checked against ethereum-etl's own `token_transfers` of
//! that block. The same few lines make a `#[tokio::test]` of your model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use alloy_primitives::{Address, U256};
use model_runner_adapters::testing::BlockBatch;
use model_runner_core::models::decode_transfer;
use model_runner_core::prelude::*;
use serde_json::json;

/// Per block and token: transfers and total value.
#[derive(Debug)]
struct TokenVolume;

#[async_trait]
impl Model for TokenVolume {
    fn spec(&self) -> ModelSpec {
        ModelSpec::new("token_volume", "1.0.0", ModelKind::Nonreads).with_schema(
            RecordSchema::new()
                .required("token", FieldType::Hex, "ERC-20 contract, lowercase 0x-hex")
                .required("transfers", FieldType::UInt64, "transfers in the block")
                .required("value", FieldType::BigInt, "total value moved, base units"),
        )
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        let mut out = Vec::new();
        for block in blocks {
            let mut per_token: BTreeMap<Address, (u64, U256)> = BTreeMap::new();
            for t in block.logs.iter().filter_map(decode_transfer) {
                let entry = per_token.entry(t.token).or_default();
                entry.0 += 1;
                entry.1 += t.value;
            }
            // Position: the token's rank in the block, so keys are deterministic.
            for (position, (token, (transfers, value))) in per_token.into_iter().enumerate() {
                out.push(ctx.record(
                    block,
                    position as u64,
                    json!({
                        "token": format!("{token:#x}"),
                        "transfers": transfers,
                        "value": value.to_string(),
                    }),
                ));
            }
        }
        Ok(out)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../model-runner-adapters/tests/fixtures/ethereum-etl/block_483920");
    let batch = BlockBatch::from_files("ethereum", &fixtures).await?;

    // ethereum-etl's token_transfers of the block, aggregated the same way.
    let csv = std::fs::read_to_string(fixtures.join("expected_token_transfers.csv"))?;
    let mut expected: BTreeMap<String, (u64, U256)> = BTreeMap::new();
    for row in csv.lines().skip(1) {
        let cols: Vec<&str> = row.split(',').collect();
        let entry = expected.entry(cols[0].to_owned()).or_default();
        entry.0 += 1;
        entry.1 += U256::from_str_radix(cols[3], 10)?;
    }

    // The model alone (records checked against its schema), then the whole pipeline.
    let direct = batch.run(&TokenVolume).await?;
    direct.assert_unique_keys();
    let piped = batch.pipeline(TokenVolume).await?;
    anyhow::ensure!(
        direct.payloads() == piped.payloads(),
        "the pipeline changed the records"
    );
    let got: BTreeMap<String, (u64, U256)> = direct
        .0
        .iter()
        .map(|r| {
            let p = &r.payload;
            Ok((
                p["token"].as_str().unwrap_or_default().to_owned(),
                (
                    p["transfers"].as_u64().unwrap_or_default(),
                    U256::from_str_radix(p["value"].as_str().unwrap_or_default(), 10)?,
                ),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(
        got == expected,
        "token_volume {got:?} differs from ethereum-etl's transfers {expected:?}"
    );
    println!(
        "block {}: {} token(s), {} transfer(s), matching ethereum-etl; records: {}",
        batch.range(),
        got.len(),
        got.values().map(|(n, _)| n).sum::<u64>(),
        serde_json::to_string(&direct.payloads())?
    );
    Ok(())
}
